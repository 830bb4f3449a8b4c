//! The mobile push keys of `incus:` (Incus spec §2.3 and §9.5).
//!
//! [`set_incus`](super::file::set_incus) reads the keys that need one
//! another into [`PushKeys`], one at a time, from the file and then the
//! environment. Once every source is applied, [`PushKeys::resolve`] turns
//! them into [`PushConfig::apns`] and [`PushConfig::fcm`]: it pairs each
//! APNs build with its credentials, reads the FCM service account, and checks
//! that every file named exists and is readable. A platform that is off is
//! not checked beyond the types of its keys.
//!
//! Errors name files by their path, never by their contents.

use std::{
    io::Read,
    path::{Path, PathBuf},
    time::Duration,
};

use super::{APNS_BUILDS, ApnsAuth, ApnsBuild, ApnsConfig, ConfigError, FcmConfig, PushConfig};

/// Default `fcm_url`.
pub(crate) const DEFAULT_FCM_URL: &str = "https://fcm.googleapis.com";

/// The push keys that are resolved together, as set so far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PushKeys {
    /// `apns_enabled`.
    pub(crate) apns_enabled: bool,
    /// `apns_key_file`, the shared `.p8` key of token auth.
    pub(crate) key_file: Option<PathBuf>,
    /// `apns_key_id`.
    pub(crate) key_id: Option<String>,
    /// `apns_team_id`.
    pub(crate) team_id: Option<String>,
    /// `apns_<build>_*`, in the order of [`APNS_BUILDS`].
    pub(crate) builds: [BuildKeys; APNS_BUILDS.len()],
    /// `apns_push_type`.
    pub(crate) push_type: String,
    /// `apns_priority`.
    pub(crate) priority: u8,
    /// `apns_expiration_secs`.
    pub(crate) expiration: Duration,
    /// `gcm_enabled` (Incus's name).
    pub(crate) gcm_enabled: bool,
    /// `fcm_enabled` (its alias).
    pub(crate) fcm_enabled: bool,
    /// `fcm_project_id`.
    pub(crate) project_id: Option<String>,
    /// `fcm_service_account_file`.
    pub(crate) service_account_file: Option<PathBuf>,
    /// `fcm_url`, without a trailing `/`.
    pub(crate) fcm_url: String,
    /// `fcm_token_url`.
    pub(crate) token_url: Option<String>,
}

/// The keys of one APNs build.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct BuildKeys {
    /// `apns_<build>_cert`.
    pub(crate) cert: Option<PathBuf>,
    /// `apns_<build>_private_key`.
    pub(crate) private_key: Option<PathBuf>,
    /// `apns_<build>_topic`.
    pub(crate) topic: Option<String>,
    /// `apns_<build>_key_file`, the build's own `.p8` key of token auth.
    pub(crate) key_file: Option<PathBuf>,
    /// `apns_<build>_key_id`.
    pub(crate) key_id: Option<String>,
    /// `apns_<build>_team_id`.
    pub(crate) team_id: Option<String>,
}

impl Default for PushKeys {
    fn default() -> Self {
        Self {
            apns_enabled: false,
            key_file: None,
            key_id: None,
            team_id: None,
            builds: Default::default(),
            push_type: "alert".to_owned(),
            priority: 10,
            expiration: Duration::from_secs(86_400),
            gcm_enabled: false,
            fcm_enabled: false,
            project_id: None,
            service_account_file: None,
            fcm_url: DEFAULT_FCM_URL.to_owned(),
            token_url: None,
        }
    }
}

/// What `incus.apns_enabled` says when no build has credentials.
pub(crate) const NO_APNS_BUILD: &str = "is true but no APNs build has credentials: set \
     apns_key_file, apns_key_id, apns_team_id (or the build's own apns_<build>_key_file, \
     apns_<build>_key_id, apns_<build>_team_id) and apns_<build>_topic (token auth), or \
     apns_<build>_cert and apns_<build>_private_key (certificate auth), for at least one \
     build of store, enterprise, beta and development";

impl PushKeys {
    /// Sets `apns` and `fcm` of `push` from the keys: `None` for a platform
    /// that is off.
    ///
    /// # Errors
    ///
    /// [`ConfigError::Invalid`] naming the key: half a certificate pair,
    /// part of a token key trio (shared or a build's own), a topic without
    /// credentials, a build's own token key without a topic, a file that
    /// cannot be read, a service account that is not one, or no project id.
    /// An APNs config without builds is left to [`validate`](super::validate).
    pub(crate) fn resolve(&self, push: &mut PushConfig) -> Result<(), ConfigError> {
        push.apns = if self.apns_enabled { Some(self.apns()?) } else { None };
        push.fcm = if self.gcm_enabled || self.fcm_enabled { Some(self.fcm()?) } else { None };
        Ok(())
    }

    /// Each build's credentials: its certificate pair if set, else its own
    /// token key, else the shared token key.
    fn apns(&self) -> Result<ApnsConfig, ConfigError> {
        let shared = token(
            "apns_",
            self.key_file.as_deref(),
            self.key_id.as_deref(),
            self.team_id.as_deref(),
            false,
        )?;
        let mut builds = Vec::new();
        for (&name, keys) in APNS_BUILDS.iter().zip(&self.builds) {
            let key = |field: &str| format!("incus.apns_{name}_{field}");
            let prefix = format!("apns_{name}_");
            let own = token(
                &prefix,
                keys.key_file.as_deref(),
                keys.key_id.as_deref(),
                keys.team_id.as_deref(),
                true,
            )?;
            let auth = match (&keys.cert, &keys.private_key) {
                (Some(cert), Some(private_key)) => {
                    readable(&key("cert"), cert)?;
                    readable(&key("private_key"), private_key)?;
                    ApnsAuth::Certificate { cert_file: cert.clone(), key_file: private_key.clone() }
                }
                (Some(_), None) => {
                    return Err(ConfigError::invalid(
                        key("private_key"),
                        format!("is required with apns_{name}_cert: certificate auth needs both"),
                    ));
                }
                (None, Some(_)) => {
                    return Err(ConfigError::invalid(
                        key("cert"),
                        format!(
                            "is required with apns_{name}_private_key: certificate auth needs both"
                        ),
                    ));
                }
                (None, None) => match (&keys.topic, own, &shared) {
                    (None, None, _) => continue,
                    (None, Some(_), _) => {
                        return Err(ConfigError::invalid(
                            key("topic"),
                            format!(
                                "is required with apns_{name}_key_file, apns_{name}_key_id and \
                                 apns_{name}_team_id: token auth needs the app's bundle id"
                            ),
                        ));
                    }
                    (Some(_), Some(own), _) => own,
                    (Some(_), None, Some(shared)) => shared.clone(),
                    (Some(_), None, None) => {
                        return Err(ConfigError::invalid(
                            "incus.apns_key_file",
                            format!(
                                "is required: the {name} build has apns_{name}_topic but no \
                                 credentials; set apns_key_file, apns_key_id and apns_team_id \
                                 (token auth; or the build's own apns_{name}_key_file, \
                                 apns_{name}_key_id and apns_{name}_team_id), or \
                                 apns_{name}_cert and apns_{name}_private_key (certificate auth)"
                            ),
                        ));
                    }
                },
            };
            builds.push(ApnsBuild {
                name: name.to_owned(),
                sandbox: name == "development",
                topic: keys.topic.clone(),
                auth,
            });
        }
        Ok(ApnsConfig {
            builds,
            push_type: self.push_type.clone(),
            priority: self.priority,
            expiration: self.expiration,
        })
    }

    fn fcm(&self) -> Result<FcmConfig, ConfigError> {
        const KEY: &str = "incus.fcm_service_account_file";
        let Some(file) = &self.service_account_file else {
            return Err(ConfigError::invalid(
                KEY,
                "is required when gcm_enabled or fcm_enabled is true: the JSON key of a \
                 service account of the Firebase project",
            ));
        };
        let account = ServiceAccount::read(KEY, file)?;
        let project_id = match (&self.project_id, account.project_id) {
            (Some(id), _) => id.clone(),
            (None, Some(id)) => id,
            (None, None) => {
                return Err(ConfigError::invalid(
                    "incus.fcm_project_id",
                    format!("is required: {} has no project_id", file.display()),
                ));
            }
        };
        let token_url = match (&self.token_url, account.token_uri) {
            (Some(url), _) => Some(url.clone()),
            (None, Some(uri)) => {
                if !is_http_url(&uri) {
                    return Err(ConfigError::invalid(
                        KEY,
                        format!(
                            "the token_uri of {} is not an http:// or https:// URL",
                            file.display()
                        ),
                    ));
                }
                Some(uri)
            }
            (None, None) => None,
        };
        Ok(FcmConfig {
            project_id,
            service_account_file: file.clone(),
            url: self.fcm_url.clone(),
            token_url,
        })
    }
}

/// A token key trio, the shared one (`prefix` `apns_`) or a build's own
/// (`apns_<build>_`, `own`): `None` without any of the three keys, else all
/// three with the `.p8` file readable.
fn token(
    prefix: &str,
    key_file: Option<&Path>,
    key_id: Option<&str>,
    team_id: Option<&str>,
    own: bool,
) -> Result<Option<ApnsAuth>, ConfigError> {
    let name = |field: &str| format!("{prefix}{field}");
    match (key_file, key_id, team_id) {
        (None, None, None) => Ok(None),
        (Some(key_file), Some(key_id), Some(team_id)) => {
            readable(&format!("incus.{}", name("key_file")), key_file)?;
            Ok(Some(ApnsAuth::Token {
                key_file: key_file.to_owned(),
                key_id: key_id.to_owned(),
                team_id: team_id.to_owned(),
                own,
            }))
        }
        (key_file, key_id, team_id) => {
            let keys = [
                (name("key_file"), key_file.is_some()),
                (name("key_id"), key_id.is_some()),
                (name("team_id"), team_id.is_some()),
            ];
            let set: Vec<&str> =
                keys.iter().filter(|(_, set)| *set).map(|(k, _)| k.as_str()).collect();
            let missing = keys.iter().find(|(_, set)| !set).map_or(&keys[0].0, |(k, _)| k);
            Err(ConfigError::invalid(
                format!("incus.{missing}"),
                format!(
                    "is required with {}: token auth needs {}, {} and {}",
                    set.join(" and "),
                    keys[0].0,
                    keys[1].0,
                    keys[2].0
                ),
            ))
        }
    }
}

/// What the config needs from a service account key; the private key is
/// only checked for, never kept.
struct ServiceAccount {
    project_id: Option<String>,
    token_uri: Option<String>,
}

impl ServiceAccount {
    fn read(key: &str, file: &Path) -> Result<Self, ConfigError> {
        let path = file.display();
        let text = std::fs::read(file)
            .map_err(|e| ConfigError::invalid(key, format!("cannot read {path}: {e}")))?;
        // Only the position of a syntax error is shown: serde's messages
        // may quote the text.
        let json: serde_json::Value = serde_json::from_slice(&text).map_err(|e| {
            ConfigError::invalid(
                key,
                format!(
                    "{path} is not a service account key: not JSON (line {}, column {})",
                    e.line(),
                    e.column()
                ),
            )
        })?;
        let Some(fields) = json.as_object() else {
            return Err(ConfigError::invalid(
                key,
                format!("{path} is not a service account key: not a JSON object"),
            ));
        };
        let string = |name: &str| match fields.get(name) {
            None | Some(serde_json::Value::Null) => Ok(None),
            Some(serde_json::Value::String(s)) => Ok(Some(s.as_str())),
            Some(_) => Err(ConfigError::invalid(
                key,
                format!("{path} is not a service account key: {name} is not a string"),
            )),
        };
        for required in ["client_email", "private_key"] {
            if string(required)?.is_none_or(str::is_empty) {
                return Err(ConfigError::invalid(
                    key,
                    format!(
                        "{path} is not a service account key: it has no {required} (create \
                         one under Project settings, Service accounts in the Firebase console)"
                    ),
                ));
            }
        }
        let owned = |name: &str| -> Result<Option<String>, ConfigError> {
            Ok(string(name)?.filter(|s| !s.is_empty()).map(str::to_owned))
        };
        Ok(Self { project_id: owned("project_id")?, token_uri: owned("token_uri")? })
    }
}

/// Checks that `path` can be opened and read and is not empty.
fn readable(key: &str, path: &Path) -> Result<(), ConfigError> {
    let cannot = |reason: String| {
        ConfigError::invalid(key, format!("cannot read {}: {reason}", path.display()))
    };
    let mut first = [0_u8; 1];
    let n = std::fs::File::open(path)
        .and_then(|mut file| file.read(&mut first))
        .map_err(|e| cannot(e.to_string()))?;
    if n == 0 {
        return Err(cannot("the file is empty".to_owned()));
    }
    Ok(())
}

/// An `http://` or `https://` URL with a host.
pub(crate) fn is_http_url(value: &str) -> bool {
    let lower = value.get(..8).unwrap_or(value).to_ascii_lowercase();
    let prefixed = lower.starts_with("http://") || lower.starts_with("https://");
    prefixed
        && url::Url::parse(value).is_ok_and(|url| {
            matches!(url.scheme(), "http" | "https")
                && url.host_str().is_some_and(|h| !h.is_empty())
        })
}

/// `apns_<build>_<field>` as (index in [`APNS_BUILDS`], field), for the
/// fields `cert`, `private_key`, `topic`, `key_file`, `key_id`, `team_id`
/// and the legacy `url`.
pub(crate) fn apns_build_key(name: &str) -> Option<(usize, &str)> {
    let rest = name.strip_prefix("apns_")?;
    APNS_BUILDS.iter().enumerate().find_map(|(index, build)| {
        let field = rest.strip_prefix(build)?.strip_prefix('_')?;
        matches!(
            field,
            "cert" | "private_key" | "topic" | "key_file" | "key_id" | "team_id" | "url"
        )
        .then_some((index, field))
    })
}
