//! Checks on a typed [`Config`], whichever way it was built.
//!
//! Loading converts types (a port is an integer from 1 to 65535); this module
//! checks meaning: ranges that keep the server usable, and consistency across
//! keys (unique app ids and keys, distinct ports).

use std::{collections::HashSet, ffi::OsStr, fmt::Display, path::Path, time::Duration};

use super::{
    ApnsAuth, AppConfig, Config, ConfigError, IncusConfig, RedisConfig, RedisMode, de::AppKeys,
    push::NO_APNS_BUILD,
};

/// `apps[<index>].<name>`.
pub(crate) fn app_key(index: usize, name: &str) -> String {
    format!("apps[{index}].{name}")
}

/// Smallest `server.max_message_bytes`: room for a subscribe with a presence
/// auth signature and channel data.
pub(crate) const MIN_MESSAGE_BYTES: usize = 1024;
/// Smallest `server.max_body_bytes`: room for a batch of events.
pub(crate) const MIN_BODY_BYTES: usize = 16 * 1024;
/// Smallest `server.max_header_bytes`: a browser's WebSocket upgrade request
/// with cookies needs several hundred bytes.
pub(crate) const MIN_HEADER_BYTES: usize = 1024;
/// Longest timeout accepted (one day, in seconds), far below where
/// `Instant` arithmetic could overflow.
pub(crate) const DAY: u64 = 86_400;
/// Most shards accepted.
pub(crate) const MAX_SHARDS: usize = 1024;
/// Longest channel or event name limit accepted, in characters.
pub(crate) const MAX_NAME_CHARS: usize = 1000;

/// Checks every rule and returns the first violation.
///
/// # Errors
///
/// [`ConfigError::Invalid`] naming the offending key, e.g.
/// `apps[1].secret: must not be empty`.
pub fn validate(config: &Config) -> Result<(), ConfigError> {
    config.server.check()?;
    if let Some(tls) = &config.tls {
        tls.check()?;
        let port = config.server.port;
        ensure!(tls.port != port, "tls.port", "must differ from server.port, both are {port}");
    }
    if let Some(redis) = &config.redis {
        validate_redis(redis)?;
    }
    validate_incus(&config.incus)?;
    let push = &config.incus.push;
    if config.redis.is_none() && (push.apns.is_some() || push.fcm.is_some()) {
        let key = if push.apns.is_some() { "incus.apns_enabled" } else { "incus.gcm_enabled" };
        let message = "push commands arrive only through Redis: configure redis (a redis \
            section, STAPES_REDIS_URL or incus.redis_enabled), or turn push off";
        return Err(ConfigError::invalid(key, message));
    }
    ensure!(!config.apps.is_empty(), "apps", "at least one app is required");
    let (mut ids, mut keys) = (HashSet::new(), HashSet::new());
    for (index, app) in config.apps.iter().enumerate() {
        validate_app(app, index)?;
        let (id, key, used) = (&app.id, &app.key, "is already used by another app");
        ensure!(ids.insert(id.as_str()), app_key(index, "id"), "{id:?} {used}");
        ensure!(keys.insert(key.as_str()), app_key(index, "key"), "{key:?} {used}");
    }
    Ok(())
}

fn validate_redis(redis: &RedisConfig) -> Result<(), ConfigError> {
    // Parsing only: nothing is connected until the bridge thread starts.
    // rediss:// is read as redis://: the bridge sets TLS up from
    // `uses_tls()` (io/bridge/link.rs), whatever the scheme.
    let plain_url = match redis.url.trim_start().strip_prefix("rediss://") {
        Some(rest) => format!("redis://{rest}"),
        None => redis.url.clone(),
    };
    let client = redis::Client::open(plain_url.as_str());
    if (!redis.url.is_empty() || redis.mode == RedisMode::Standalone)
        && let Err(e) = &client
    {
        bail!("redis.url", "expected redis://host[:port][/db] or unix:///path: {e}");
    }
    let (cluster, sentinel) = (redis.mode == RedisMode::Cluster, redis.mode == RedisMode::Sentinel);
    let db = client.map_or(0, |c| c.get_connection_info().redis_settings().db());
    let (nodes, url) = (!redis.nodes.is_empty(), !redis.url.is_empty());
    let why = "(the seed nodes), unless url is set";
    ensure!(!cluster || nodes || url, "redis.nodes", "is required with mode cluster {why}");
    let why = "names a database other than 0, which Redis Cluster does not have";
    ensure!(!cluster || db == 0, "redis.url", "{why}");
    let why = "(the sentinels' host:port)";
    ensure!(!sentinel || nodes, "redis.nodes", "is required with mode sentinel {why}");
    let (master, why) = (redis.sentinel_master.is_some(), "(the master's name)");
    ensure!(!sentinel || master, "redis.sentinel_master", "is required with mode sentinel {why}");
    let rediss = redis.url.trim_start().starts_with("rediss://");
    let why = "is false but redis.url is rediss://, which is TLS";
    ensure!(redis.tls != Some(false) || !rediss, "redis.tls", "{why}");
    redis.check()?;
    let why = "the two carry different formats";
    ensure!(
        redis.pusher_channel != redis.incus_channel,
        "redis.incus_channel",
        "must differ from redis.pusher_channel: {why}"
    );
    Ok(())
}

fn validate_app(app: &AppConfig, index: usize) -> Result<(), ConfigError> {
    let key = |name: &str| app_key(index, name);
    AppKeys::check(app, &format!("apps[{index}]"))?;
    let (id, app_key) = (&app.id, &app.key);
    ensure!(id.bytes().all(|b| b.is_ascii_digit()), key("id"), "must be digits only, got {id:?}");
    if let Some(bad) = app_key.chars().find(|&c| matches!(c, '/' | '?' | '#') || c.is_whitespace())
    {
        let why = "(it appears in URL paths)";
        bail!(key("key"), "must not contain {bad:?} {why}, got {app_key:?}");
    }
    let n = app.webhooks.len();
    ensure!(n <= MAX_WEBHOOKS, key("webhooks"), "at most {MAX_WEBHOOKS} URLs, got {n}");
    for (n, hook) in app.webhooks.iter().enumerate() {
        let url_key = key(&format!("webhooks[{n}].url"));
        let url = url::Url::parse(&hook.url).map_err(|e| {
            ConfigError::invalid(&url_key, format!("not a URL ({e}): {:?}", hook.url))
        })?;
        let scheme = url.scheme();
        let http = matches!(scheme, "http" | "https");
        ensure!(http, &url_key, "expected an http:// or https:// URL, got scheme {scheme:?}");
        ensure!(url.host_str().is_some_and(|h| !h.is_empty()), &url_key, "has no host");
    }
    Ok(())
}

/// Longest `webhook_delay_ms` and `webhook_batch_ms` accepted.
pub(crate) const MAX_WEBHOOK_WAIT_MS: u64 = 60_000;
/// Most webhook URLs per app.
pub(crate) const MAX_WEBHOOKS: usize = 10;

fn validate_incus(incus: &IncusConfig) -> Result<(), ConfigError> {
    incus.check()?;
    if incus.datadog_enabled {
        let why = "when datadog_enabled is true";
        ensure!(!incus.datadog_host.is_empty(), "incus.datadog_host", "must not be empty {why}");
        rule("incus.datadog_interval_secs", &incus.datadog_interval, timeout(1))?;
    }
    let push = &incus.push;
    push.check()?;
    if let Some(apns) = &push.apns {
        ensure!(!apns.builds.is_empty(), "incus.apns_enabled", "{NO_APNS_BUILD}");
        // apns_push_type has its reader's check only; the priority's reader
        // quotes the text, this check the typed value.
        let (priority, why) = (apns.priority, "expected 10 (now) or 5 (power-aware)");
        ensure!(matches!(priority, 5 | 10), "incus.apns_priority", "{why}, got {priority}");
        for build in &apns.builds {
            if let ApnsAuth::Token { key_id, team_id, .. } = &build.auth {
                apple_id(&format!("incus.{}", build.token_key("key_id")), key_id)?;
                apple_id(&format!("incus.{}", build.token_key("team_id")), team_id)?;
            }
        }
    }
    let no_project = push.fcm.as_ref().is_some_and(|fcm| fcm.project_id.is_empty());
    ensure!(!no_project, "incus.fcm_project_id", "must not be empty");
    Ok(())
}

/// An APNs key id or team id: ten ASCII letters or digits. The value is not
/// repeated in the error.
fn apple_id(key: &str, id: &str) -> Result<(), ConfigError> {
    let (len, what) = (id.chars().count(), "expected the 10 letters or digits Apple shows");
    ensure!(len == 10, key, "{what}, got {len} characters");
    ensure!(id.bytes().all(|b| b.is_ascii_alphanumeric()), key, "{what}, got other characters");
    Ok(())
}

/// `check` on `value`, its error naming `key`.
pub(crate) fn rule<T>(
    key: impl Into<String>,
    value: &T,
    check: impl Fn(&T) -> Result<(), String>,
) -> Result<(), ConfigError> {
    check(value).map_err(|message| ConfigError::invalid(key, message))
}

/// `message` unless `ok`.
fn holds(ok: bool, message: impl FnOnce() -> String) -> Result<(), String> {
    if ok { Ok(()) } else { Err(message()) }
}

/// A value of at least `min`.
pub(crate) fn at_least<T: PartialOrd + Display>(min: T) -> impl Fn(&T) -> Result<(), String> {
    move |v| holds(*v >= min, || format!("must be at least {min}, got {v}"))
}

/// A value from `min` to `max`.
/// At least `min` (said as such, as [`at_least`] says it) and at most `max`.
pub(crate) fn at_least_up_to<T: PartialOrd + Display>(
    min: T,
    max: T,
) -> impl Fn(&T) -> Result<(), String> {
    let low = at_least(min);
    move |v| {
        low(v)?;
        holds(*v <= max, || format!("must be at most {max}, got {v}"))
    }
}

pub(crate) fn range<T: PartialOrd + Display>(min: T, max: T) -> impl Fn(&T) -> Result<(), String> {
    move |v| holds(min <= *v && *v <= max, || format!("must be from {min} to {max}, got {v}"))
}

/// A time from `min` to `max` seconds.
pub(crate) fn seconds(min: u64, max: u64) -> impl Fn(&Duration) -> Result<(), String> {
    move |v| {
        let ok = *v >= Duration::from_secs(min) && *v <= Duration::from_secs(max);
        holds(ok, || format!("must be from {min} to {max} seconds, got {}", v.as_secs()))
    }
}

/// A time from `min` seconds to a [`DAY`].
pub(crate) fn timeout(min: u64) -> impl Fn(&Duration) -> Result<(), String> {
    seconds(min, DAY)
}

/// A time from `min` to `max` milliseconds.
pub(crate) fn millis(min: u64, max: u64) -> impl Fn(&Duration) -> Result<(), String> {
    move |v| {
        let (ms, range) = (v.as_millis(), u128::from(min)..=u128::from(max));
        holds(range.contains(&ms), || format!("expected {min} to {max} ms, got {ms}"))
    }
}

/// `check`, with `hint` after its message.
pub(crate) fn hint<T>(
    check: impl Fn(&T) -> Result<(), String>,
    hint: &str,
) -> impl Fn(&T) -> Result<(), String> {
    move |v| check(v).map_err(|message| message + hint)
}

/// A time from `min` to `max` milliseconds, the message in plain numbers.
pub(crate) fn ms_range(min: u64, max: u64) -> impl Fn(&Duration) -> Result<(), String> {
    move |v| range(min, max)(&u64::try_from(v.as_millis()).unwrap_or(u64::MAX))
}

/// `check` on the value, if there is one.
pub(crate) fn opt<T>(
    check: impl Fn(&T) -> Result<(), String>,
) -> impl Fn(&Option<T>) -> Result<(), String> {
    move |v| v.as_ref().map_or(Ok(()), &check)
}

/// A text or path that is not empty.
pub(crate) fn not_empty<T: AsRef<OsStr>>(v: &T) -> Result<(), String> {
    holds(!v.as_ref().is_empty(), || "must not be empty".to_owned())
}

/// `server.log`: a filter, so not blank.
pub(crate) fn log_filter(log: &impl AsRef<str>) -> Result<(), String> {
    holds(!log.as_ref().trim().is_empty(), || "must not be empty (e.g. info)".to_owned())
}

/// A file of PEM certificates: at least one, and nothing malformed.
pub(crate) fn pem_certificates(file: &impl AsRef<Path>) -> Result<(), String> {
    use rustls::pki_types::{CertificateDer, pem::PemObject};
    let (file, path) = (file.as_ref(), file.as_ref().display());
    let mut n = 0;
    for cert in
        CertificateDer::pem_file_iter(file).map_err(|e| format!("cannot read {path}: {e}"))?
    {
        cert.map_err(|e| format!("{path} is not PEM: {e}"))?;
        n += 1;
    }
    holds(n > 0, || format!("{path} holds no CERTIFICATE block"))
}

#[cfg(test)]
mod tests {
    use std::{path::PathBuf, sync::Arc};

    use super::*;
    use crate::config::{ServerConfig, TlsConfig};

    /// A change that breaks a valid config, and the error it must produce.
    type Case<T> = (fn(&mut T), &'static str);

    fn valid() -> Config {
        Config {
            server: ServerConfig::default(),
            tls: None,
            apps: vec![Arc::new(AppConfig::new("1", "key-1", "secret"))],
            redis: None,
            incus: crate::config::IncusConfig::default(),
            notes: Vec::new(),
        }
    }

    fn tls() -> TlsConfig {
        TlsConfig { port: 6002, cert_file: PathBuf::from("c"), key_file: PathBuf::from("k") }
    }

    fn check(change: impl FnOnce(&mut Config)) -> String {
        let mut config = valid();
        change(&mut config);
        match validate(&config) {
            Ok(()) => String::new(),
            Err(err) => err.to_string(),
        }
    }

    fn app(change: impl FnOnce(&mut AppConfig)) -> impl FnOnce(&mut Config) {
        move |config| {
            let mut second = AppConfig::new("2", "key-2", "secret");
            change(&mut second);
            config.apps.push(Arc::new(second));
        }
    }

    #[test]
    fn defaults_are_valid() {
        assert_eq!(check(|_| {}), "");
        assert_eq!(check(|c| c.tls = Some(tls())), "");
        assert_eq!(check(|c| c.server.shards = Some(4)), "");
        assert_eq!(check(|c| c.server.shutdown_grace = Duration::ZERO), "");
        assert_eq!(check(app(|a| a.max_connections = Some(1))), "");
    }

    #[test]
    fn server_errors_name_their_key() {
        let cases: Vec<Case<Config>> = vec![
            (
                (|c| c.server.write_timeout = Duration::ZERO),
                "server.write_timeout_secs: must be from 1 to 3600 seconds, got 0",
            ),
            (
                (|c| c.server.write_timeout = Duration::from_secs(3601)),
                "server.write_timeout_secs: must be from 1 to 3600 seconds, got 3601",
            ),
            ((|c| c.server.shards = Some(0)), "server.shards: must be from 1 to 1024, got 0"),
            ((|c| c.server.shards = Some(5000)), "server.shards: must be from 1 to 1024, got 5000"),
            (
                (|c| c.server.activity_timeout = Duration::ZERO),
                "server.activity_timeout_secs: must be from 1 to 86400 seconds, got 0",
            ),
            (
                (|c| c.server.pong_timeout = Duration::from_millis(500)),
                "server.pong_timeout_secs: must be from 1 to 86400 seconds, got 0",
            ),
            (
                (|c| c.server.http_idle_timeout = Duration::ZERO),
                "server.http_idle_timeout_secs: must be from 1 to 86400 seconds, got 0",
            ),
            (
                (|c| c.server.shutdown_grace = Duration::from_secs(100_000)),
                "server.shutdown_grace_secs: must be from 0 to 86400 seconds, got 100000",
            ),
            (
                (|c| c.server.max_connections = 0),
                "server.max_connections: must be at least 1, got 0",
            ),
            (
                (|c| c.server.max_message_bytes = 1023),
                "server.max_message_bytes: must be at least 1024, got 1023",
            ),
            (
                (|c| c.server.max_outbox_bytes = 0),
                "server.max_outbox_bytes: must be at least 1, got 0",
            ),
            (
                (|c| c.server.max_http_sessions = 0),
                "server.max_http_sessions: must be at least 1, got 0",
            ),
            (
                (|c| c.server.http_session_timeout = Duration::ZERO),
                "server.http_session_timeout_secs: must be from 1 to 86400 seconds, got 0",
            ),
            (
                (|c| c.server.max_header_bytes = 100),
                "server.max_header_bytes: must be at least 1024, got 100",
            ),
            (
                (|c| c.server.max_body_bytes = 16383),
                "server.max_body_bytes: must be at least 16384, got 16383",
            ),
            ((|c| c.server.log = " ".into()), "server.log: must not be empty (e.g. info)"),
        ];
        for (change, message) in cases {
            assert_eq!(check(change), message);
        }
    }

    #[test]
    fn tls_errors_name_their_key() {
        let with = |change: fn(&mut TlsConfig)| {
            move |c: &mut Config| {
                let mut t = tls();
                change(&mut t);
                c.tls = Some(t);
            }
        };
        assert_eq!(check(with(|t| t.port = 0)), "tls.port: must be from 1 to 65535, got 0");
        assert_eq!(
            check(with(|t| t.port = 6001)),
            "tls.port: must differ from server.port, both are 6001"
        );
        assert_eq!(
            check(with(|t| t.cert_file = PathBuf::new())),
            "tls.cert_file: must not be empty"
        );
        assert_eq!(check(with(|t| t.key_file = PathBuf::new())), "tls.key_file: must not be empty");
    }

    #[test]
    fn redis_errors_name_their_key() {
        let with = |change: fn(&mut RedisConfig)| {
            move |c: &mut Config| {
                let mut r = RedisConfig::new("redis://127.0.0.1:6379/0");
                change(&mut r);
                c.redis = Some(r);
            }
        };
        assert_eq!(check(with(|_| {})), "");
        assert_eq!(check(with(|r| r.url = "unix:///run/redis.sock".into())), "");
        assert!(check(with(|r| r.url = "http://x".into())).starts_with("redis.url: expected"));
        assert!(check(with(|r| r.url = String::new())).starts_with("redis.url: expected"));
        assert_eq!(
            check(with(|r| r.incus_queue = String::new())),
            "redis.incus_queue: must not be empty"
        );
        assert_eq!(
            check(with(|r| r.pusher_channel = "Incus".into())),
            "redis.incus_channel: must differ from redis.pusher_channel: the two carry \
             different formats"
        );
        assert_eq!(
            check(with(|r| r.instance = Some(String::new()))),
            "redis.instance: must not be empty"
        );
        assert_eq!(
            check(with(|r| r.reconnect_max = Duration::from_millis(5))),
            "redis.reconnect_max_ms: expected 100 to 600000 ms, got 5"
        );
    }

    #[test]
    fn app_errors_name_their_key() {
        let cases: Vec<Case<AppConfig>> = vec![
            (|a| a.id = String::new(), "apps[1].id: must not be empty"),
            (|a| a.id = "12a".into(), "apps[1].id: must be digits only, got \"12a\""),
            (|a| a.id = "1".into(), "apps[1].id: \"1\" is already used by another app"),
            (|a| a.key = String::new(), "apps[1].key: must not be empty"),
            (|a| a.key = "key-1".into(), "apps[1].key: \"key-1\" is already used by another app"),
            (|a| a.secret = String::new(), "apps[1].secret: must not be empty"),
            (
                |a| a.max_connections = Some(0),
                "apps[1].max_connections: must be at least 1, got 0; use null for unlimited",
            ),
            (|a| a.max_event_bytes = 0, "apps[1].max_event_bytes: must be at least 1, got 0"),
            (
                |a| a.max_presence_members = 0,
                "apps[1].max_presence_members: must be at least 1, got 0",
            ),
            (
                |a| a.max_presence_user_info_bytes = 0,
                "apps[1].max_presence_user_info_bytes: must be at least 1, got 0",
            ),
            (
                |a| a.max_presence_user_id_chars = 0,
                "apps[1].max_presence_user_id_chars: must be at least 1, got 0",
            ),
            (|a| a.client_event_rate = 0, "apps[1].client_event_rate: must be at least 1, got 0"),
            (
                |a| a.max_channel_name_chars = 0,
                "apps[1].max_channel_name_chars: must be from 1 to 1000, got 0",
            ),
            (
                |a| a.max_channel_name_chars = 1001,
                "apps[1].max_channel_name_chars: must be from 1 to 1000, got 1001",
            ),
            (
                |a| a.max_event_name_chars = 0,
                "apps[1].max_event_name_chars: must be from 1 to 1000, got 0",
            ),
            (
                |a| a.cache_ttl = Duration::ZERO,
                "apps[1].cache_ttl_secs: must be from 1 to 86400 seconds, got 0",
            ),
            (
                |a| a.authorized_timeout = Some(Duration::ZERO),
                "apps[1].authorized_timeout_secs: must be from 1 to 86400 seconds, got 0; \
                 use null to turn it off",
            ),
        ];
        for (change, message) in cases {
            assert_eq!(check(app(change)), message);
        }
        for bad in ["a/b", "a?b", "a#b", "a b", "a\tb"] {
            let message = check(app(|a| a.key = bad.into()));
            assert!(message.starts_with("apps[1].key: must not contain "), "{bad:?}: {message}");
        }
        assert_eq!(check(|c| c.apps.clear()), "apps: at least one app is required");
    }

    #[test]
    fn push_errors_name_their_key() {
        use crate::config::{ApnsAuth, ApnsBuild, ApnsConfig, FcmConfig};
        fn apns(change: impl FnOnce(&mut ApnsConfig)) -> impl FnOnce(&mut Config) {
            move |c| {
                let mut apns = ApnsConfig {
                    builds: vec![ApnsBuild {
                        name: "store".into(),
                        sandbox: false,
                        topic: Some("com.example.app".into()),
                        auth: ApnsAuth::Token {
                            key_file: PathBuf::from("k.p8"),
                            key_id: "ABC123DEFG".into(),
                            team_id: "TEAM123456".into(),
                            own: false,
                        },
                    }],
                    push_type: "alert".into(),
                    priority: 10,
                    expiration: Duration::ZERO,
                };
                change(&mut apns);
                c.incus.push.apns = Some(apns);
                c.redis = Some(crate::config::RedisConfig::new("redis://127.0.0.1:6379"));
            }
        }
        let token = |change: fn(&mut String, &mut String)| {
            move |a: &mut ApnsConfig| {
                if let ApnsAuth::Token { key_id, team_id, .. } = &mut a.builds[0].auth {
                    change(key_id, team_id);
                }
            }
        };
        assert_eq!(check(apns(|_| {})), "");
        assert_eq!(
            check(|c| {
                apns(|_| {})(c);
                c.redis = None;
            }),
            "incus.apns_enabled: push commands arrive only through Redis: configure redis (a \
             redis section, STAPES_REDIS_URL or incus.redis_enabled), or turn push off"
        );
        assert_eq!(check(apns(|a| a.priority = 5)), "");
        assert_eq!(
            check(apns(|a| a.builds.clear())),
            format!("incus.apns_enabled: {NO_APNS_BUILD}")
        );
        assert_eq!(
            check(apns(|a| a.priority = 1)),
            "incus.apns_priority: expected 10 (now) or 5 (power-aware), got 1"
        );
        assert_eq!(
            check(apns(token(|id, _| *id = "ABC123DEFGH".into()))),
            "incus.apns_key_id: expected the 10 letters or digits Apple shows, got 11 characters"
        );
        assert_eq!(
            check(apns(token(|_, team| *team = "TEAM 12345".into()))),
            "incus.apns_team_id: expected the 10 letters or digits Apple shows, got other \
             characters"
        );
        let cases: Vec<Case<Config>> = vec![
            ((|c| c.incus.push.queue = 0), "incus.push_queue: must be at least 1, got 0"),
            (
                (|c| c.incus.push.concurrency = 0),
                "incus.push_concurrency: must be at least 1, got 0",
            ),
            (
                (|c| c.incus.push.timeout = Duration::ZERO),
                "incus.push_timeout_secs: must be from 1 to 86400 seconds, got 0",
            ),
            (
                (|c| c.incus.push.retry_for = Duration::from_secs(86_401)),
                "incus.push_retry_secs: must be from 0 to 86400 seconds, got 86401",
            ),
            (
                (|c| {
                    c.redis = Some(crate::config::RedisConfig::new("redis://127.0.0.1:6379"));
                    c.incus.push.fcm = Some(FcmConfig {
                        project_id: String::new(),
                        service_account_file: PathBuf::from("sa.json"),
                        url: "https://fcm.googleapis.com".into(),
                        token_url: None,
                    });
                }),
                "incus.fcm_project_id: must not be empty",
            ),
        ];
        for (change, message) in cases {
            assert_eq!(check(change), message);
        }
        assert_eq!(check(|c| c.incus.push.retry_for = Duration::ZERO), "");
    }
}
