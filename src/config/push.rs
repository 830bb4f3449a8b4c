//! The mobile push keys of `incus:` (Incus spec §2.3 and §9.5) that need
//! one another. Once every source is stacked, [`PushKeys::resolve`] turns
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

use serde::{Deserialize, Deserializer};

use super::{
    APNS_BUILDS, ApnsAuth, ApnsBuild, ApnsConfig, ConfigError, FcmConfig, PushConfig,
    de::{leaf, parsed},
};

section! {
    /// The push keys resolved together; each build's keys, `apns_<build>_<field>`
    /// for the fields of [`BUILD_FIELDS`], are read by name.
    #[derive(Debug, Deserialize)]
    #[serde(default)]
    pub(crate) struct PushKeys("incus") {
        apns_enabled: bool = false, "leaf";
        apns_key_file: Option<String> = None, "leaf";
        apns_key_id: Option<String> = None, "leaf";
        apns_team_id: Option<String> = None, "leaf";
        apns_push_type: String = "alert".to_owned(), "push_type";
        apns_priority: u8 = 10, "priority";
        apns_expiration_secs: Duration = Duration::from_secs(86_400), "leaf";
        gcm_enabled: bool = false, "leaf";
        fcm_enabled: bool = false, "leaf";
        fcm_project_id: Option<String> = None, "leaf";
        fcm_service_account_file: Option<PathBuf> = None, "leaf";
        fcm_url: String = "https://fcm.googleapis.com".to_owned(), "base_url";
        fcm_token_url: Option<String> = None, "http_url";
    } + {
        /// `apns_<build>_*`, in the order of [`APNS_BUILDS`]; filled by name.
        builds: [BuildKeys; APNS_BUILDS.len()] = Default::default();
    }
}

/// The fields of one APNs build's keys, `apns_<build>_<field>`.
pub(crate) const BUILD_FIELDS: [&str; 6] =
    ["cert", "private_key", "topic", "key_file", "key_id", "team_id"];

/// The keys of one APNs build, in the order of [`BUILD_FIELDS`].
pub(crate) type BuildKeys = [Option<String>; BUILD_FIELDS.len()];

fn push_type<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    parsed(d, |v| match v.trim() {
        t @ ("alert" | "background") => Ok(t.to_owned()),
        _ => Err(format!("expected alert or background, got {v:?}")),
    })
}

fn priority<'de, D: Deserializer<'de>>(d: D) -> Result<u8, D::Error> {
    parsed(d, |v| match v.trim() {
        "10" => Ok(10),
        "5" => Ok(5),
        _ => Err(format!("expected 10 (now) or 5 (power-aware), got {v:?}")),
    })
}

/// An http(s) URL with no path: stapes appends `/v1/projects/…`, and a
/// base that already holds a path would turn every send into a 404, which
/// would read as a dead token. A trailing `/` is dropped.
fn base_url<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    parsed(d, |value| {
        let url = checked_url(value)?.trim_end_matches('/').to_owned();
        let why = "expected a base URL without a path, like https://fcm.googleapis.com";
        let path = url.split_once("://").is_some_and(|(_, rest)| rest.contains(['/', '?', '#']));
        if path { Err(format!("{why}, got {value:?}")) } else { Ok(url) }
    })
}

fn http_url<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    parsed(d, |value| checked_url(value).map(Some))
}

fn checked_url(value: &str) -> Result<String, String> {
    let url = value.trim();
    let why = || format!("expected an http:// or https:// URL, got {value:?}");
    if is_http_url(url) { Ok(url.to_owned()) } else { Err(why()) }
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
    /// An APNs config without builds is left to [`validate()`](super::validate()).
    pub(crate) fn resolve(&self, push: &mut PushConfig) -> Result<(), ConfigError> {
        push.apns = if self.apns_enabled { Some(self.apns()?) } else { None };
        push.fcm = if self.gcm_enabled || self.fcm_enabled { Some(self.fcm()?) } else { None };
        Ok(())
    }

    /// Each build's credentials: its certificate pair if set, else its own
    /// token key, else the shared token key.
    fn apns(&self) -> Result<ApnsConfig, ConfigError> {
        let trio = [&self.apns_key_file, &self.apns_key_id, &self.apns_team_id];
        let shared = token("apns_", trio.map(Option::as_deref), false)?;
        let mut builds = Vec::new();
        for (&name, keys) in APNS_BUILDS.iter().zip(&self.builds) {
            let key = |field: &str| format!("incus.apns_{name}_{field}");
            let [cert, private_key, topic, key_file, key_id, team_id] =
                keys.each_ref().map(Option::as_deref);
            let own = token(&format!("apns_{name}_"), [key_file, key_id, team_id], true)?;
            let both = "certificate auth needs both";
            let auth = match (cert, private_key, topic, own, &shared) {
                (Some(cert), Some(private_key), ..) => {
                    readable(&key("cert"), cert)?;
                    readable(&key("private_key"), private_key)?;
                    ApnsAuth::Certificate { cert_file: cert.into(), key_file: private_key.into() }
                }
                (Some(_), None, ..) => {
                    bail!(key("private_key"), "is required with apns_{name}_cert: {both}")
                }
                (None, Some(_), ..) => {
                    bail!(key("cert"), "is required with apns_{name}_private_key: {both}")
                }
                (None, None, None, None, _) => continue,
                (None, None, None, Some(_), _) => bail!(
                    key("topic"),
                    "is required with apns_{name}_key_file, apns_{name}_key_id and \
                     apns_{name}_team_id: token auth needs the app's bundle id"
                ),
                (None, None, Some(_), Some(own), _) => own,
                (None, None, Some(_), None, Some(shared)) => shared.clone(),
                (None, None, Some(_), None, None) => bail!(
                    "incus.apns_key_file",
                    "is required: the {name} build has apns_{name}_topic but no \
                     credentials; set apns_key_file, apns_key_id and apns_team_id \
                     (token auth; or the build's own apns_{name}_key_file, \
                     apns_{name}_key_id and apns_{name}_team_id), or \
                     apns_{name}_cert and apns_{name}_private_key (certificate auth)"
                ),
            };
            let (name, sandbox, topic) = (name.to_owned(), name == "development", keys[2].clone());
            builds.push(ApnsBuild { name, sandbox, topic, auth });
        }
        Ok(ApnsConfig {
            builds,
            push_type: self.apns_push_type.clone(),
            priority: self.apns_priority,
            expiration: self.apns_expiration_secs,
        })
    }

    fn fcm(&self) -> Result<FcmConfig, ConfigError> {
        const KEY: &str = "incus.fcm_service_account_file";
        let Some(file) = &self.fcm_service_account_file else {
            bail!(
                KEY,
                "is required when gcm_enabled or fcm_enabled is true: the JSON key of a \
                 service account of the Firebase project"
            );
        };
        let [project_id, token_uri] =
            service_account(file).map_err(|message| ConfigError::invalid(KEY, message))?;
        let Some(project_id) = self.fcm_project_id.clone().or(project_id) else {
            bail!("incus.fcm_project_id", "is required: {} has no project_id", file.display());
        };
        let uri = self.fcm_token_url.is_some() || token_uri.as_deref().is_none_or(is_http_url);
        let why = "is not an http:// or https:// URL";
        ensure!(uri, KEY, "the token_uri of {} {why}", file.display());
        let (url, token_url) = (self.fcm_url.clone(), self.fcm_token_url.clone().or(token_uri));
        Ok(FcmConfig { project_id, service_account_file: file.clone(), url, token_url })
    }
}

/// A token key trio, the shared one (`prefix` `apns_`) or a build's own
/// (`apns_<build>_`, `own`): `None` without any of the three keys, else all
/// three with the `.p8` file readable.
fn token(
    prefix: &str,
    trio: [Option<&str>; 3],
    own: bool,
) -> Result<Option<ApnsAuth>, ConfigError> {
    let names = ["key_file", "key_id", "team_id"].map(|field| format!("{prefix}{field}"));
    match trio {
        [None, None, None] => Ok(None),
        [Some(key_file), Some(key_id), Some(team_id)] => {
            readable(&format!("incus.{}", names[0]), key_file)?;
            let (key_file, key_id, team_id) = (key_file.into(), key_id.into(), team_id.into());
            Ok(Some(ApnsAuth::Token { key_file, key_id, team_id, own }))
        }
        _ => {
            let keys = || names.iter().zip(trio);
            let set: Vec<&str> = keys().filter(|(_, v)| v.is_some()).map(|(n, _)| &**n).collect();
            let missing = keys().find(|(_, v)| v.is_none()).map_or(&names[0], |(n, _)| n);
            let ([a, b, c], set) = (&names, set.join(" and "));
            bail!(
                format!("incus.{missing}"),
                "is required with {set}: token auth needs {a}, {b} and {c}"
            )
        }
    }
}

/// The project id and token URI of the service account key in `file`, which
/// must have a client email and a private key; the key is only checked for,
/// never kept.
fn service_account(file: &Path) -> Result<[Option<String>; 2], String> {
    let path = file.display();
    let not = |why: String| format!("{path} is not a service account key: {why}");
    let text = std::fs::read(file).map_err(|e| format!("cannot read {path}: {e}"))?;
    // Only the position of a syntax error is shown: serde's messages may
    // quote the text.
    let json: serde_json::Value = serde_json::from_slice(&text)
        .map_err(|e| not(format!("not JSON (line {}, column {})", e.line(), e.column())))?;
    let fields = json.as_object().ok_or_else(|| not("not a JSON object".to_owned()))?;
    let string = |name: &str| match fields.get(name) {
        None | Some(serde_json::Value::Null) => Ok(""),
        Some(serde_json::Value::String(s)) => Ok(s.as_str()),
        Some(_) => Err(not(format!("{name} is not a string"))),
    };
    for required in ["client_email", "private_key"] {
        if string(required)?.is_empty() {
            return Err(not(format!(
                "it has no {required} (create one under Project settings, Service accounts in \
                 the Firebase console)"
            )));
        }
    }
    let owned = |name| string(name).map(|s| Some(s.to_owned()).filter(|s| !s.is_empty()));
    Ok([owned("project_id")?, owned("token_uri")?])
}

/// Checks that `path` can be opened and read and is not empty.
fn readable(key: &str, path: impl AsRef<Path>) -> Result<(), ConfigError> {
    let path = path.as_ref();
    let mut first = [0_u8; 1];
    let read = std::fs::File::open(path).and_then(|mut file| file.read(&mut first));
    let why = match read {
        Ok(0) => "the file is empty".to_owned(),
        Ok(_) => return Ok(()),
        Err(e) => e.to_string(),
    };
    bail!(key, "cannot read {}: {why}", path.display())
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::config::{
        Env,
        load::tests::{MINIMAL, env_of, err, load, ok},
    };

    fn load_err(text: &str, env: &Env) -> String {
        load(text, env).expect_err("an error").to_string()
    }

    /// A file under the temp dir with a name no other test uses, removed on
    /// drop.
    struct TempFile(std::path::PathBuf);

    impl TempFile {
        fn new(tag: &str, contents: &str) -> Self {
            use std::sync::atomic::{AtomicUsize, Ordering};
            static NEXT: AtomicUsize = AtomicUsize::new(0);
            let n = NEXT.fetch_add(1, Ordering::Relaxed);
            let name = format!("stapes-config-test-{}-{n}-{tag}", std::process::id());
            let path = std::env::temp_dir().join(name);
            std::fs::write(&path, contents).expect("temp file written");
            Self(path)
        }

        fn path(&self) -> &str {
            self.0.to_str().expect("UTF-8 temp path")
        }
    }

    impl Drop for TempFile {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    /// A fake PKCS#8 PEM body: what must never show in an error or a log.
    const FAKE_KEY: &str = "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n";

    fn p8() -> TempFile {
        TempFile::new("AuthKey.p8", FAKE_KEY)
    }

    fn service_account(fields: &str) -> TempFile {
        TempFile::new("service-account.json", &format!("{{{fields}}}"))
    }

    /// The fields of a service account key, with fake values.
    const ACCOUNT: &str = r#""type":"service_account","client_email":"push@demo.iam.gserviceaccount.com","private_key":"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n""#;

    /// An `incus:` section with `keys`, and Redis on (push needs it).
    fn incus(keys: &str) -> String {
        format!("incus:\n  redis_enabled: true\n{keys}{MINIMAL}")
    }

    #[test]
    fn push_defaults_and_thread_keys() {
        use crate::config::PushConfig;
        let push = ok(MINIMAL).incus.push;
        assert_eq!(push, PushConfig::default());
        assert_eq!((push.apns, push.fcm), (None, None));
        assert_eq!(push.ios_push_sound, "bingbong.aiff");
        assert_eq!(push.ios_error_queue, "Incus_iOS_Error_Queue");
        assert_eq!(push.android_error_queue, "Incus_Android_Error_Queue");
        assert_eq!((push.queue, push.concurrency), (10_000, 64));
        assert_eq!(
            (push.retry_for, push.timeout),
            (Duration::from_secs(60), Duration::from_secs(10))
        );
        assert!(!push.connected_is_active, "Incus's rule by default");
        let text = incus(
            "  ios_push_sound: ding.aiff\n  ios_error_queue: IQ\n  android_error_queue: AQ\n  \
             push_queue: 5\n  push_concurrency: 2\n  push_retry_secs: 0\n  push_timeout_secs: 3\n  \
             pushormessage_connected: true\n",
        );
        let push = ok(&text).incus.push;
        assert_eq!(
            push,
            PushConfig {
                apns: None,
                fcm: None,
                ios_push_sound: "ding.aiff".into(),
                android_error_queue: "AQ".into(),
                ios_error_queue: "IQ".into(),
                queue: 5,
                concurrency: 2,
                retry_for: Duration::ZERO,
                timeout: Duration::from_secs(3),
                connected_is_active: true,
            }
        );
        for (keys, message) in [
            ("  push_queue: 0\n", "incus.push_queue: must be at least 1, got 0"),
            ("  push_concurrency: 0\n", "incus.push_concurrency: must be at least 1, got 0"),
            (
                "  push_timeout_secs: 0\n",
                "incus.push_timeout_secs: must be from 1 to 86400 seconds, got 0",
            ),
            (
                "  pushormessage_connected: 1\n",
                r#"incus.pushormessage_connected: expected true or false, got "1""#,
            ),
        ] {
            assert_eq!(err(&incus(keys), &[]), message, "{keys}");
        }
        // An empty list name turns that error list off.
        for keys in ["  ios_error_queue: \"\"\n", "  android_error_queue: \"\"\n"] {
            let push = ok(&incus(keys)).incus.push;
            assert!(push.ios_error_queue.is_empty() || push.android_error_queue.is_empty());
        }
    }

    #[test]
    fn apns_token_auth() {
        use crate::config::{ApnsAuth, ApnsBuild, ApnsConfig};
        let key = p8();
        let text = incus(&format!(
            "  apns_enabled: true\n  apns_key_file: {}\n  apns_key_id: ABC123DEFG\n  \
             apns_team_id: TEAM123456\n  apns_store_topic: com.example.app\n  \
             apns_development_topic: com.example.app.dev\n  apns_push_type: background\n  \
             apns_priority: 5\n  apns_expiration_secs: 0\n",
            key.path()
        ));
        let config = ok(&text);
        let token = ApnsAuth::Token {
            key_file: key.0.clone(),
            key_id: "ABC123DEFG".into(),
            team_id: "TEAM123456".into(),
            own: false,
        };
        let expected = ApnsConfig {
            builds: vec![
                ApnsBuild {
                    name: "store".into(),
                    sandbox: false,
                    topic: Some("com.example.app".into()),
                    auth: token.clone(),
                },
                ApnsBuild {
                    name: "development".into(),
                    sandbox: true,
                    topic: Some("com.example.app.dev".into()),
                    auth: token,
                },
            ],
            push_type: "background".into(),
            priority: 5,
            expiration: Duration::ZERO,
        };
        assert_eq!(config.incus.push.apns, Some(expected));
        assert_eq!(config.incus.push.fcm, None);
        assert!(config.incus.unsupported.is_empty());
        // The defaults of the APNs keys.
        let text = incus(&format!(
            "  apns_enabled: true\n  apns_key_file: {}\n  apns_key_id: ABC123DEFG\n  \
             apns_team_id: TEAM123456\n  apns_beta_topic: com.example.beta\n",
            key.path()
        ));
        let apns = ok(&text).incus.push.apns.expect("apns on");
        assert_eq!(
            (apns.push_type.as_str(), apns.priority, apns.expiration),
            ("alert", 10, Duration::from_secs(86_400))
        );
        assert_eq!(apns.builds.len(), 1);
        assert_eq!((apns.builds[0].name.as_str(), apns.builds[0].sandbox), ("beta", false));
        // Off: the keys are kept out of the config.
        let text = text.replace("apns_enabled: true", "apns_enabled: false");
        assert_eq!(ok(&text).incus.push.apns, None);
    }

    #[test]
    fn apns_certificate_auth_wins_over_token() {
        use crate::config::ApnsAuth;
        let (key, cert, cert_key) = (p8(), TempFile::new("cert.pem", "CERT"), p8());
        let dev_cert = TempFile::new("dev-cert.pem", "CERT");
        let text = incus(&format!(
            "  apns_enabled: true\n  apns_key_file: {key}\n  apns_key_id: ABC123DEFG\n  \
             apns_team_id: TEAM123456\n  apns_store_cert: {cert}\n  apns_store_private_key: {ck}\n  \
             apns_store_topic: com.example.app\n  apns_enterprise_topic: com.example.ent\n  \
             apns_development_cert: {dev}\n  apns_development_private_key: {ck}\n",
            key = key.path(),
            cert = cert.path(),
            ck = cert_key.path(),
            dev = dev_cert.path(),
        ));
        let apns = ok(&text).incus.push.apns.expect("apns on");
        let builds: Vec<(&str, bool, Option<&str>)> =
            apns.builds.iter().map(|b| (b.name.as_str(), b.sandbox, b.topic.as_deref())).collect();
        assert_eq!(
            builds,
            [
                ("store", false, Some("com.example.app")),
                ("enterprise", false, Some("com.example.ent")),
                ("development", true, None),
            ]
        );
        let certificate = |file: &TempFile| ApnsAuth::Certificate {
            cert_file: file.0.clone(),
            key_file: cert_key.0.clone(),
        };
        assert_eq!(apns.builds[0].auth, certificate(&cert), "a certificate wins over the token");
        assert!(
            matches!(&apns.builds[1].auth, ApnsAuth::Token { key_file, .. } if *key_file == key.0)
        );
        assert_eq!(apns.builds[2].auth, certificate(&dev_cert));
        // Certificates alone need no token keys.
        let text = incus(&format!(
            "  apns_enabled: true\n  apns_beta_cert: {}\n  apns_beta_private_key: {}\n",
            cert.path(),
            cert_key.path()
        ));
        let apns = ok(&text).incus.push.apns.expect("apns on");
        assert_eq!(apns.builds.len(), 1);
        assert_eq!(apns.builds[0].auth, certificate(&cert));
    }

    #[test]
    fn apns_token_key_per_build() {
        use crate::config::ApnsAuth;
        let (shared, ent, cert, cert_key) = (p8(), p8(), TempFile::new("cert.pem", "CERT"), p8());
        let own_trio = format!(
            "  apns_enterprise_key_file: {}\n  apns_enterprise_key_id: ENT4567890\n  \
             apns_enterprise_team_id: ENTTEAM999\n",
            ent.path()
        );
        let text = incus(&format!(
            "  apns_enabled: true\n  apns_key_file: {}\n  apns_key_id: ABC123DEFG\n  \
             apns_team_id: TEAM123456\n  apns_store_topic: com.example.app\n{own_trio}  \
             apns_enterprise_topic: com.example.ent\n",
            shared.path()
        ));
        let apns = ok(&text).incus.push.apns.expect("apns on");
        let auths: Vec<(&str, &ApnsAuth)> =
            apns.builds.iter().map(|b| (b.name.as_str(), &b.auth)).collect();
        assert_eq!(
            auths,
            [
                (
                    "store",
                    &ApnsAuth::Token {
                        key_file: shared.0.clone(),
                        key_id: "ABC123DEFG".into(),
                        team_id: "TEAM123456".into(),
                        own: false,
                    }
                ),
                (
                    "enterprise",
                    &ApnsAuth::Token {
                        key_file: ent.0.clone(),
                        key_id: "ENT4567890".into(),
                        team_id: "ENTTEAM999".into(),
                        own: true,
                    }
                ),
            ]
        );
        assert_eq!(apns.builds[0].token_key("key_id"), "apns_key_id");
        assert_eq!(apns.builds[1].token_key("key_id"), "apns_enterprise_key_id");
        // A build's own trio needs no shared one.
        let text = incus(&format!(
            "  apns_enabled: true\n{own_trio}  apns_enterprise_topic: com.example.ent\n"
        ));
        let apns = ok(&text).incus.push.apns.expect("apns on");
        assert_eq!(apns.builds.len(), 1);
        assert!(matches!(
            &apns.builds[0].auth,
            ApnsAuth::Token { key_file, own: true, .. } if *key_file == ent.0
        ));
        // The certificate pair beats the build's own trio.
        let text = incus(&format!(
            "  apns_enabled: true\n{own_trio}  apns_enterprise_cert: {}\n  \
             apns_enterprise_private_key: {}\n  apns_enterprise_topic: com.example.ent\n",
            cert.path(),
            cert_key.path()
        ));
        let apns = ok(&text).incus.push.apns.expect("apns on");
        assert_eq!(
            apns.builds[0].auth,
            ApnsAuth::Certificate { cert_file: cert.0.clone(), key_file: cert_key.0.clone() }
        );
        // STAPES_INCUS_APNS_<BUILD>_* override one key of the trio.
        let other = p8();
        let text = incus(&format!(
            "  apns_enabled: true\n{own_trio}  apns_enterprise_topic: com.example.ent\n"
        ));
        let vars = [
            ("STAPES_INCUS_APNS_ENTERPRISE_KEY_FILE", other.path()),
            ("STAPES_INCUS_APNS_ENTERPRISE_TEAM_ID", "OTHERTEAM1"),
        ];
        let env = env_of(&vars);
        let apns = load(&text, &env).expect("loads").incus.push.apns.expect("apns on");
        assert_eq!(
            apns.builds[0].auth,
            ApnsAuth::Token {
                key_file: other.0.clone(),
                key_id: "ENT4567890".into(),
                team_id: "OTHERTEAM1".into(),
                own: true,
            }
        );
        let env = env_of(&[("STAPES_INCUS_APNS_ENTERPRISE_KEY_ID", "short")]);
        assert_eq!(
            load_err(&text, &env),
            "incus.apns_enterprise_key_id: expected the 10 letters or digits Apple shows, got 5 \
             characters (from STAPES_INCUS_APNS_ENTERPRISE_KEY_ID)"
        );
        // The environment alone can give a build its trio and topic.
        let vars = [
            ("STAPES_INCUS_APNS_ENABLED", "true"),
            ("STAPES_INCUS_APNS_BETA_KEY_FILE", other.path()),
            ("STAPES_INCUS_APNS_BETA_KEY_ID", "BETA456789"),
            ("STAPES_INCUS_APNS_BETA_TEAM_ID", "BETATEAM12"),
            ("STAPES_INCUS_APNS_BETA_TOPIC", "com.example.beta"),
        ];
        let env = env_of(&vars);
        let apns = load(&incus(""), &env).expect("loads").incus.push.apns.expect("apns on");
        assert_eq!(apns.builds[0].name, "beta");
        assert!(matches!(
            &apns.builds[0].auth,
            ApnsAuth::Token { key_id, own: true, .. } if key_id == "BETA456789"
        ));
    }

    #[test]
    fn apns_per_build_token_errors_name_the_build_key() {
        let (shared, ent, cert) = (p8(), p8(), TempFile::new("cert.pem", "CERT"));
        let shared_trio = format!(
            "  apns_key_file: {}\n  apns_key_id: ABC123DEFG\n  apns_team_id: TEAM123456\n  \
             apns_store_topic: com.example.app\n",
            shared.path()
        );
        let own_trio = format!(
            "  apns_enterprise_key_file: {}\n  apns_enterprise_key_id: ENT4567890\n  \
             apns_enterprise_team_id: ENTTEAM999\n",
            ent.path()
        );
        let topic = "  apns_enterprise_topic: com.example.ent\n";
        let missing = std::env::temp_dir().join("stapes-config-test-no-such-file.p8");
        let missing = missing.to_str().expect("UTF-8 temp path");
        let cases = [
            (
                format!("{shared_trio}  apns_enterprise_key_file: {}\n{topic}", ent.path()),
                "incus.apns_enterprise_key_id: is required with apns_enterprise_key_file: token \
                 auth needs apns_enterprise_key_file, apns_enterprise_key_id and \
                 apns_enterprise_team_id"
                    .to_owned(),
            ),
            (
                format!(
                    "{shared_trio}  apns_development_key_id: DEV4567890\n  \
                     apns_development_key_file: {}\n  apns_development_topic: t\n",
                    ent.path()
                ),
                "incus.apns_development_team_id: is required with apns_development_key_file and \
                 apns_development_key_id: token auth needs apns_development_key_file, \
                 apns_development_key_id and apns_development_team_id"
                    .to_owned(),
            ),
            (
                "  apns_beta_team_id: BETATEAM12\n  apns_beta_topic: t\n".to_owned(),
                "incus.apns_beta_key_file: is required with apns_beta_team_id: token auth needs \
                 apns_beta_key_file, apns_beta_key_id and apns_beta_team_id"
                    .to_owned(),
            ),
            // A partial trio is an error even when a certificate wins.
            (
                format!(
                    "  apns_enterprise_key_id: ENT4567890\n  apns_enterprise_cert: {c}\n  \
                     apns_enterprise_private_key: {c}\n",
                    c = cert.path()
                ),
                "incus.apns_enterprise_key_file: is required with apns_enterprise_key_id: token \
                 auth needs apns_enterprise_key_file, apns_enterprise_key_id and \
                 apns_enterprise_team_id"
                    .to_owned(),
            ),
            (
                format!("{shared_trio}{own_trio}"),
                "incus.apns_enterprise_topic: is required with apns_enterprise_key_file, \
                 apns_enterprise_key_id and apns_enterprise_team_id: token auth needs the app's \
                 bundle id"
                    .to_owned(),
            ),
            (
                format!("{}{topic}", own_trio.replace("ENT4567890", "ENT45678")),
                "incus.apns_enterprise_key_id: expected the 10 letters or digits Apple shows, got \
                 8 characters"
                    .to_owned(),
            ),
            (
                format!("{shared_trio}{}{topic}", own_trio.replace("ENTTEAM999", "ENT_TEAM_9")),
                "incus.apns_enterprise_team_id: expected the 10 letters or digits Apple shows, \
                 got other characters"
                    .to_owned(),
            ),
            (
                format!("{shared_trio}{}{topic}", own_trio.replace(ent.path(), missing)),
                format!(
                    "incus.apns_enterprise_key_file: cannot read {missing}: No such file or \
                     directory (os error 2)"
                ),
            ),
        ];
        for (keys, message) in &cases {
            let text = incus(&format!("  apns_enabled: true\n{keys}"));
            assert_eq!(&err(&text, &[]), message, "{keys}");
            // Only an enabled platform is checked.
            let off = text.replace("apns_enabled: true", "apns_enabled: false");
            assert_eq!(ok(&off).incus.push.apns, None, "{keys}");
        }
    }

    #[test]
    fn apns_errors_name_their_key() {
        let (key, cert) = (p8(), TempFile::new("cert.pem", "CERT"));
        let empty = TempFile::new("empty.pem", "");
        let token = format!(
            "  apns_key_file: {}\n  apns_key_id: ABC123DEFG\n  apns_team_id: TEAM123456\n",
            key.path()
        );
        let missing = std::env::temp_dir().join("stapes-config-test-no-such-file.p8");
        let missing = missing.to_str().expect("UTF-8 temp path");
        let cases = [
            (
                format!("  apns_store_cert: {}\n", cert.path()),
                "incus.apns_store_private_key: is required with apns_store_cert: certificate \
                 auth needs both"
                    .to_owned(),
            ),
            (
                format!("  apns_beta_private_key: {}\n", key.path()),
                "incus.apns_beta_cert: is required with apns_beta_private_key: certificate \
                 auth needs both"
                    .to_owned(),
            ),
            (
                "  apns_store_topic: com.example.app\n".to_owned(),
                "incus.apns_key_file: is required: the store build has apns_store_topic but no \
                 credentials; set apns_key_file, apns_key_id and apns_team_id (token auth; or the \
                 build's own apns_store_key_file, apns_store_key_id and apns_store_team_id), or \
                 apns_store_cert and apns_store_private_key (certificate auth)"
                    .to_owned(),
            ),
            (
                format!(
                    "  apns_key_file: {}\n  apns_team_id: TEAM123456\n  apns_store_topic: t\n",
                    key.path()
                ),
                "incus.apns_key_id: is required with apns_key_file and apns_team_id: token auth \
                 needs apns_key_file, apns_key_id and apns_team_id"
                    .to_owned(),
            ),
            (
                "  apns_key_id: ABC123DEFG\n  apns_store_topic: t\n".to_owned(),
                "incus.apns_key_file: is required with apns_key_id: token auth needs \
                 apns_key_file, apns_key_id and apns_team_id"
                    .to_owned(),
            ),
            (
                format!("{}  apns_store_topic: t\n", token.replace("ABC123DEFG", "ABC123DEF")),
                "incus.apns_key_id: expected the 10 letters or digits Apple shows, got 9 \
                 characters"
                    .to_owned(),
            ),
            (
                format!("{}  apns_store_topic: t\n", token.replace("TEAM123456", "TEAM-12345")),
                "incus.apns_team_id: expected the 10 letters or digits Apple shows, got other \
                 characters"
                    .to_owned(),
            ),
            (String::new(), format!("incus.apns_enabled: {}", NO_APNS_BUILD)),
            (token.clone(), format!("incus.apns_enabled: {}", NO_APNS_BUILD)),
            (
                format!("{}  apns_store_topic: t\n", token.replace(key.path(), missing)),
                format!(
                    "incus.apns_key_file: cannot read {missing}: No such file or directory \
                     (os error 2)"
                ),
            ),
            (
                format!("  apns_store_cert: {missing}\n  apns_store_private_key: {}\n", key.path()),
                format!(
                    "incus.apns_store_cert: cannot read {missing}: No such file or directory \
                     (os error 2)"
                ),
            ),
            (
                format!(
                    "  apns_development_cert: {}\n  apns_development_private_key: {}\n",
                    cert.path(),
                    empty.path()
                ),
                format!(
                    "incus.apns_development_private_key: cannot read {}: the file is empty",
                    empty.path()
                ),
            ),
        ];
        for (keys, message) in &cases {
            let text = incus(&format!("  apns_enabled: true\n{keys}"));
            assert_eq!(&err(&text, &[]), message, "{keys}");
            // Only an enabled platform is checked.
            let off = text.replace("apns_enabled: true", "apns_enabled: false");
            assert_eq!(ok(&off).incus.push.apns, None, "{keys}");
        }
        for (keys, message) in [
            (
                "  apns_priority: 7\n",
                r#"incus.apns_priority: expected 10 (now) or 5 (power-aware), got "7""#,
            ),
            (
                "  apns_push_type: voip\n",
                r#"incus.apns_push_type: expected alert or background, got "voip""#,
            ),
            (
                "  apns_expiration_secs: -1\n",
                r#"incus.apns_expiration_secs: expected an integer of at least 0, got "-1""#,
            ),
            ("  apns_enabled: yes\n", r#"incus.apns_enabled: expected true or false, got "yes""#),
        ] {
            assert_eq!(err(&incus(keys), &[]), message, "{keys}");
        }
    }

    #[test]
    fn fcm_from_a_service_account() {
        use crate::config::FcmConfig;
        let file = service_account(&format!(
            r#"{ACCOUNT},"project_id":"demo-project","token_uri":"https://oauth2.example.com/token""#
        ));
        let text =
            incus(&format!("  gcm_enabled: true\n  fcm_service_account_file: {}\n", file.path()));
        let config = ok(&text);
        assert_eq!(
            config.incus.push.fcm,
            Some(FcmConfig {
                project_id: "demo-project".into(),
                service_account_file: file.0.clone(),
                url: "https://fcm.googleapis.com".into(),
                token_url: Some("https://oauth2.example.com/token".into()),
            })
        );
        assert_eq!(config.incus.push.apns, None);
        let debug = format!("{config:?}");
        assert!(!debug.contains("AAAA") && !debug.contains("BEGIN PRIVATE"), "{debug}");
        // fcm_enabled is an alias; the keys win over the file.
        let text = incus(&format!(
            "  gcm_enabled: false\n  fcm_enabled: true\n  fcm_service_account_file: {}\n  \
             fcm_project_id: mine\n  fcm_url: http://127.0.0.1:9000//\n  \
             fcm_token_url: http://127.0.0.1:9001/token\n",
            file.path()
        ));
        let fcm = ok(&text).incus.push.fcm.expect("fcm on");
        assert_eq!(fcm.project_id, "mine");
        assert_eq!(fcm.url, "http://127.0.0.1:9000", "trailing / dropped");
        assert_eq!(fcm.token_url.as_deref(), Some("http://127.0.0.1:9001/token"));
        // Without token_uri in the file nor fcm_token_url: the push module's default.
        let bare = service_account(&format!(r#"{ACCOUNT},"project_id":"p""#));
        let text =
            incus(&format!("  fcm_enabled: true\n  fcm_service_account_file: {}\n", bare.path()));
        let fcm = ok(&text).incus.push.fcm.expect("fcm on");
        assert_eq!((fcm.project_id.as_str(), fcm.token_url), ("p", None));
        // Without project_id in the file, fcm_project_id is needed.
        let anonymous = service_account(ACCOUNT);
        let text = incus(&format!(
            "  fcm_enabled: true\n  fcm_service_account_file: {}\n",
            anonymous.path()
        ));
        assert_eq!(
            err(&text, &[]),
            format!("incus.fcm_project_id: is required: {} has no project_id", anonymous.path())
        );
        let with_id = text.replace("  fcm_enabled", "  fcm_project_id: given\n  fcm_enabled");
        let fcm = ok(&with_id).incus.push.fcm.expect("fcm on");
        assert_eq!(fcm.project_id, "given");
    }

    #[test]
    fn fcm_errors_name_their_key_and_hide_the_file() {
        let not_json = TempFile::new("key.pem", FAKE_KEY);
        let no_key = service_account(r#""client_email":"a@b","project_id":"p""#);
        let number_key =
            service_account(r#""client_email":"a@b","private_key":12345678,"project_id":"p""#);
        let no_email = service_account(
            r#""private_key":"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n""#,
        );
        let list = TempFile::new("list.json", r#"["AAAA"]"#);
        let bad_uri = service_account(&format!(r#"{ACCOUNT},"project_id":"p","token_uri":"AAAA""#));
        let missing = std::env::temp_dir().join("stapes-config-test-no-such-account.json");
        let missing = missing.to_str().expect("UTF-8 temp path");
        let file_key = "incus.fcm_service_account_file";
        let cases = [
            (
                None,
                format!(
                    "{file_key}: is required when gcm_enabled or fcm_enabled is true: the JSON \
                     key of a service account of the Firebase project"
                ),
            ),
            (
                Some(missing),
                format!(
                    "{file_key}: cannot read {missing}: No such file or directory (os error 2)"
                ),
            ),
            (
                Some(not_json.path()),
                format!(
                    "{file_key}: {} is not a service account key: not JSON (line 1, column 2)",
                    not_json.path()
                ),
            ),
            (
                Some(list.path()),
                format!(
                    "{file_key}: {} is not a service account key: not a JSON object",
                    list.path()
                ),
            ),
            (
                Some(no_key.path()),
                format!(
                    "{file_key}: {} is not a service account key: it has no private_key (create \
                     one under Project settings, Service accounts in the Firebase console)",
                    no_key.path()
                ),
            ),
            (
                Some(no_email.path()),
                format!(
                    "{file_key}: {} is not a service account key: it has no client_email (create \
                     one under Project settings, Service accounts in the Firebase console)",
                    no_email.path()
                ),
            ),
            (
                Some(number_key.path()),
                format!(
                    "{file_key}: {} is not a service account key: private_key is not a string",
                    number_key.path()
                ),
            ),
            (
                Some(bad_uri.path()),
                format!(
                    "{file_key}: the token_uri of {} is not an http:// or https:// URL",
                    bad_uri.path()
                ),
            ),
        ];
        for (file, message) in cases {
            let file =
                file.map(|f| format!("  fcm_service_account_file: {f}\n")).unwrap_or_default();
            let text = incus(&format!("  gcm_enabled: true\n{file}"));
            let err = err(&text, &[]);
            assert_eq!(err, message);
            assert!(!err.contains("AAAA") && !err.contains("12345678"), "{err}");
            // Only an enabled platform is checked.
            let off = text.replace("gcm_enabled: true", "gcm_enabled: false");
            assert_eq!(ok(&off).incus.push.fcm, None);
        }
        for (keys, message) in [
            (
                "  fcm_url: ftp://x\n",
                r#"incus.fcm_url: expected an http:// or https:// URL, got "ftp://x""#,
            ),
            (
                "  fcm_url: fcm.googleapis.com\n",
                r#"incus.fcm_url: expected an http:// or https:// URL, got "fcm.googleapis.com""#,
            ),
            (
                "  fcm_url: https://fcm.googleapis.com/v1\n",
                "incus.fcm_url: expected a base URL without a path, like \
                 https://fcm.googleapis.com, got \"https://fcm.googleapis.com/v1\"",
            ),
            (
                "  fcm_token_url: https://\n",
                r#"incus.fcm_token_url: expected an http:// or https:// URL, got "https://""#,
            ),
            ("  fcm_enabled: on\n", r#"incus.fcm_enabled: expected true or false, got "on""#),
        ] {
            assert_eq!(err(&incus(keys), &[]), message, "{keys}");
        }
    }

    #[test]
    fn push_keys_from_the_environment() {
        let key = p8();
        let account = service_account(&format!(r#"{ACCOUNT},"project_id":"p""#));
        let text = incus(&format!(
            "  apns_enabled: true\n  apns_key_file: {}\n  apns_key_id: ABC123DEFG\n  \
             apns_team_id: TEAM123456\n  apns_store_topic: t\n  apns_priority: 10\n",
            key.path()
        ));
        // STAPES_INCUS_<KEY> beats the file.
        let env = env_of(&[("STAPES_INCUS_APNS_PRIORITY", "5")]);
        let apns = load(&text, &env).expect("loads").incus.push.apns.expect("apns on");
        assert_eq!(apns.priority, 5);
        let env = env_of(&[("STAPES_INCUS_APNS_PRIORITY", "1")]);
        assert_eq!(
            load_err(&text, &env),
            r#"incus.apns_priority: expected 10 (now) or 5 (power-aware), got "1" (from STAPES_INCUS_APNS_PRIORITY)"#
        );
        let env = env_of(&[("STAPES_INCUS_APNS_KEY_ID", "short")]);
        assert_eq!(
            load_err(&text, &env),
            "incus.apns_key_id: expected the 10 letters or digits Apple shows, got 5 characters \
             (from STAPES_INCUS_APNS_KEY_ID)"
        );
        let env = env_of(&[("STAPES_INCUS_PUSH_QUEUE", "0")]);
        assert_eq!(
            load_err(MINIMAL, &env),
            "incus.push_queue: must be at least 1, got 0 (from STAPES_INCUS_PUSH_QUEUE)"
        );
        // Incus's README variables, below STAPES_*.
        let vars = [
            ("GCM_ENABLED", "true"),
            ("STAPES_INCUS_FCM_SERVICE_ACCOUNT_FILE", account.path()),
            ("IOS_PUSH_SOUND", "ding.aiff"),
            ("ANDROID_ERROR_QUEUE", "Readme_Queue"),
            ("STAPES_INCUS_ANDROID_ERROR_QUEUE", "Stapes_Queue"),
            ("GCM_API_KEY", "AIzaLegacy"),
        ];
        let env = env_of(&vars);
        let c = load(&incus(""), &env).expect("loads");
        let fcm = c.incus.push.fcm.expect("GCM_ENABLED turns FCM on");
        assert_eq!((fcm.project_id.as_str(), fcm.service_account_file), ("p", account.0.clone()));
        assert_eq!(c.incus.push.apns, None);
        assert_eq!(c.incus.push.ios_push_sound, "ding.aiff");
        assert_eq!(c.incus.push.android_error_queue, "Stapes_Queue");
        assert_eq!(
            c.incus.unsupported,
            ["gcm_api_key (the legacy GCM/FCM API is gone; set fcm_service_account_file)"]
        );
        let env = env_of(&[("GCM_ENABLED", "true")]);
        assert!(
            load_err(MINIMAL, &env).starts_with("incus.fcm_service_account_file: is required"),
            "{}",
            load_err(MINIMAL, &env)
        );
        let env = env_of(&[("GCM_ENABLED", "maybe")]);
        assert_eq!(
            load_err(MINIMAL, &env),
            r#"incus.gcm_enabled: expected true or false, got "maybe" (from GCM_ENABLED)"#
        );
        let env = env_of(&[("APNS_ENABLED", "true")]);
        assert_eq!(
            load_err(MINIMAL, &env),
            format!("incus.apns_enabled: {} (from APNS_ENABLED)", NO_APNS_BUILD)
        );
        let env = env_of(&[("APNS_ENABLED", "true"), ("STAPES_INCUS_APNS_ENABLED", "false")]);
        assert_eq!(load(MINIMAL, &env).expect("STAPES_ wins").incus.push.apns, None);
    }
}
