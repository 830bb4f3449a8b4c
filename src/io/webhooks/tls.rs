//! The TLS client settings for `https://` webhook URLs: the system's CA
//! store plus the operator's `server.webhook_ca_file`, on rustls with the
//! ring provider (the listener's stack; no second TLS library).

use std::{path::Path, sync::Arc};

use rustls::{
    ClientConfig, RootCertStore,
    pki_types::{CertificateDer, pem::PemObject},
};

use super::WebhookError;

/// Reads `server.webhook_ca_file`. Called at start-up whether or not a
/// webhook is configured, so a typo in the path stops the server at once
/// instead of surfacing as failed deliveries later.
///
/// # Errors
///
/// [`WebhookError::CaFile`] if the file cannot be read, holds no
/// certificate, or holds one rustls cannot use as a trust anchor.
pub fn load_ca_file(path: &Path) -> Result<Vec<CertificateDer<'static>>, WebhookError> {
    let fail = |reason: String| WebhookError::CaFile { path: path.to_owned(), reason };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<_, _>>())
        .map_err(|e| fail(e.to_string()))?;
    if certs.is_empty() {
        return Err(fail("no CERTIFICATE block".into()));
    }
    // Parsed here rather than by the first handshake: a broken anchor would
    // otherwise only show as "unknown issuer" on every delivery.
    let mut probe = RootCertStore::empty();
    for cert in &certs {
        probe.add(cert.clone()).map_err(|e| fail(format!("unusable certificate: {e}")))?;
    }
    Ok(certs)
}

/// Client settings trusting the system's roots and `extra`.
///
/// The system store is read once, here. If it is missing or empty only
/// `extra` is trusted, and that is logged: a container without
/// ca-certificates can still reach receivers behind a private CA.
///
/// # Errors
///
/// [`WebhookError::Tls`] if rustls refuses the protocol versions.
pub fn client_config(extra: Vec<CertificateDer<'static>>) -> Result<ClientConfig, WebhookError> {
    let mut roots = RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for e in &native.errors {
        tracing::warn!("reading the system's CA certificates: {e}");
    }
    let (system, ignored) = roots.add_parsable_certificates(native.certs);
    if ignored > 0 {
        tracing::debug!(ignored, "system CA certificates rustls cannot use");
    }
    let private = extra.len();
    for cert in extra {
        // `load_ca_file` checked each one already.
        let _ = roots.add(cert);
    }
    if roots.is_empty() {
        tracing::warn!(
            "no CA certificates found (install ca-certificates or set \
             server.webhook_ca_file); https:// webhooks will fail"
        );
    } else {
        tracing::debug!(system, private, "CA certificates for https:// webhooks");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    // No ALPN here: hyper-rustls sets it from the HTTP versions enabled on
    // the connector (and panics if it is already set).
    Ok(ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
    }

    #[test]
    fn the_fixture_certificate_loads_as_a_ca() {
        let certs = load_ca_file(&fixture("localhost.crt")).expect("loads");
        assert_eq!(certs.len(), 1);
        assert!(client_config(certs).is_ok());
    }

    #[test]
    fn a_missing_or_certificate_less_file_names_the_key() {
        let missing = load_ca_file(&fixture("no-such.crt")).expect_err("missing");
        assert!(missing.to_string().starts_with("server.webhook_ca_file: "), "{missing}");
        // A key file is PEM, but holds no certificate.
        let key = load_ca_file(&fixture("localhost.key")).expect_err("no certificate");
        assert!(key.to_string().contains("no CERTIFICATE block"), "{key}");
    }
}
