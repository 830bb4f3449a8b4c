//! TLS: the rustls server settings, built once at start-up and shared
//! read-only by every shard. Each connection runs its own rustls session
//! over the same non-blocking socket I/O as plain connections
//! ([`crate::io::shard::sock::Link`]).

use std::{path::PathBuf, sync::Arc};

use rustls::{
    ServerConfig,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
};

use crate::config::TlsConfig;

/// Why TLS could not be set up; each names the config key to fix.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The certificate file is missing or holds no PEM certificate.
    #[error("tls.cert_file: cannot load certificates from {path}: {reason}")]
    Cert {
        /// File named by the config.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// The key file is missing or holds no PEM private key.
    #[error("tls.key_file: cannot load a private key from {path}: {reason}")]
    Key {
        /// File named by the config.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// rustls refused the key: one it cannot use, or one that does not
    /// match the certificate.
    #[error("tls.key_file: the key in {path} does not fit tls.cert_file: {reason}")]
    KeyRefused {
        /// File named by the config.
        path: PathBuf,
        /// What rustls said.
        reason: String,
    },
    /// rustls refused the settings.
    #[error("tls: {0}")]
    Rustls(#[from] rustls::Error),
}

/// Loads the certificate chain and key and builds the server settings.
pub fn server_config(cfg: &TlsConfig) -> Result<Arc<ServerConfig>, TlsError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&cfg.cert_file)
        .and_then(|it| it.collect::<Result<_, _>>())
        .map_err(|e| TlsError::Cert { path: cfg.cert_file.clone(), reason: e.to_string() })?;
    if certs.is_empty() {
        return Err(TlsError::Cert {
            path: cfg.cert_file.clone(),
            reason: "no CERTIFICATE block".into(),
        });
    }
    let key = PrivateKeyDer::from_pem_file(&cfg.key_file)
        .map_err(|e| TlsError::Key { path: cfg.key_file.clone(), reason: e.to_string() })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| TlsError::KeyRefused { path: cfg.key_file.clone(), reason: e.to_string() })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}
