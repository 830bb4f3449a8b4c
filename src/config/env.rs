//! The environment's two ways in: `${VAR}` references in the file text, and
//! `STAPES_*` variables that override server-level keys.

use super::{
    ConfigError, IncusConfig, RedisConfig, ServerConfig, TlsConfig,
    file::{set_incus, set_redis, set_server, set_tls},
    push::PushKeys,
};

/// Environment variables that override a key, as (variable, key path).
///
/// The environment beats the file, which beats the defaults. An empty value
/// counts as unset. The three `STAPES_TLS_*` variables override the fields of
/// a `tls:` section; without one, all three must be set to enable TLS.
pub const ENV_OVERRIDES: &[(&str, &str)] = &[
    ("STAPES_HOST", "server.host"),
    ("STAPES_PORT", "server.port"),
    ("STAPES_SHARDS", "server.shards"),
    ("STAPES_LOG", "server.log"),
    ("STAPES_ACTIVITY_TIMEOUT_SECS", "server.activity_timeout_secs"),
    ("STAPES_PONG_TIMEOUT_SECS", "server.pong_timeout_secs"),
    ("STAPES_MAX_CONNECTIONS", "server.max_connections"),
    ("STAPES_MAX_MESSAGE_BYTES", "server.max_message_bytes"),
    ("STAPES_MAX_OUTBOX_BYTES", "server.max_outbox_bytes"),
    ("STAPES_MAX_HEADER_BYTES", "server.max_header_bytes"),
    ("STAPES_MAX_BODY_BYTES", "server.max_body_bytes"),
    ("STAPES_HTTP_IDLE_TIMEOUT_SECS", "server.http_idle_timeout_secs"),
    ("STAPES_SHUTDOWN_GRACE_SECS", "server.shutdown_grace_secs"),
    ("STAPES_ALLOW_MISSING_PROTOCOL", "server.allow_missing_protocol"),
    ("STAPES_WEBHOOK_CA_FILE", "server.webhook_ca_file"),
    ("STAPES_METRICS", "server.metrics"),
    ("STAPES_TLS_PORT", "tls.port"),
    ("STAPES_TLS_CERT_FILE", "tls.cert_file"),
    ("STAPES_TLS_KEY_FILE", "tls.key_file"),
    ("STAPES_REDIS_URL", "redis.url"),
    ("STAPES_REDIS_PUSHER_CHANNEL", "redis.pusher_channel"),
    ("STAPES_REDIS_INCUS_CHANNEL", "redis.incus_channel"),
    ("STAPES_REDIS_INCUS_QUEUE", "redis.incus_queue"),
    ("STAPES_REDIS_INSTANCE", "redis.instance"),
    ("STAPES_REDIS_RECONNECT_MAX_MS", "redis.reconnect_max_ms"),
];

/// Incus's own upper-case variables (Incus spec §2.3), as (variable, key
/// path). They apply only when the bridge is enabled (they never enable it),
/// and a `STAPES_*` variable for the same key wins.
/// `REDIS_PORT_6379_TCP_ADDR` and `REDIS_PORT_6379_TCP_PORT` (Docker link
/// names) replace the host and port of `redis.url`, unless
/// `STAPES_REDIS_URL` is set.
pub const INCUS_ENV: &[(&str, &str)] = &[
    ("REDIS_MESSAGE_CHANNEL", "redis.incus_channel"),
    ("REDIS_PORT_6379_TCP_ADDR", "redis.url"),
    ("REDIS_PORT_6379_TCP_PORT", "redis.url"),
];

/// Variables for the `incus:` keys, as (variable, key path): the
/// upper-case names of the Incus README first, then `STAPES_INCUS_*`
/// (which wins when both are set).
pub const INCUS_SECTION_ENV: &[(&str, &str)] = &[
    ("CLIENT_BROADCASTS", "incus.client_broadcasts"),
    ("CONNECTION_TIMEOUT", "incus.connection_timeout"),
    ("LONGPOLL_KILLSWITCH", "incus.longpoll_killswitch"),
    ("STAPES_INCUS_CLIENT_BROADCASTS", "incus.client_broadcasts"),
    ("STAPES_INCUS_CONNECTION_TIMEOUT", "incus.connection_timeout"),
    ("STAPES_INCUS_LONGPOLL_KILLSWITCH", "incus.longpoll_killswitch"),
    ("STAPES_INCUS_MAILBOX_MESSAGES", "incus.mailbox_messages"),
    ("STAPES_INCUS_MAILBOX_TTL_SECS", "incus.mailbox_ttl_secs"),
    ("STAPES_INCUS_PRESENCE_WINDOW_SECS", "incus.presence_window_secs"),
    ("STAPES_INCUS_AUTH_TIMEOUT_SECS", "incus.auth_timeout_secs"),
    ("STAPES_INCUS_PING_INTERVAL_SECS", "incus.ping_interval_secs"),
    ("STAPES_INCUS_CLIENT_COMMANDS_PER_SEC", "incus.client_commands_per_sec"),
    ("STAPES_INCUS_CLIENT_COMMANDS_BURST", "incus.client_commands_burst"),
    ("STAPES_INCUS_MAX_LP_SESSIONS", "incus.max_lp_sessions"),
    ("STAPES_INCUS_DATADOG_ENABLED", "incus.datadog_enabled"),
    ("STAPES_INCUS_DATADOG_HOST", "incus.datadog_host"),
    ("STAPES_INCUS_DATADOG_PORT", "incus.datadog_port"),
    ("STAPES_INCUS_DATADOG_INTERVAL_SECS", "incus.datadog_interval_secs"),
    ("STAPES_INCUS_APNS_ENABLED", "incus.apns_enabled"),
    ("STAPES_INCUS_APNS_KEY_FILE", "incus.apns_key_file"),
    ("STAPES_INCUS_APNS_KEY_ID", "incus.apns_key_id"),
    ("STAPES_INCUS_APNS_TEAM_ID", "incus.apns_team_id"),
    ("STAPES_INCUS_APNS_STORE_CERT", "incus.apns_store_cert"),
    ("STAPES_INCUS_APNS_STORE_PRIVATE_KEY", "incus.apns_store_private_key"),
    ("STAPES_INCUS_APNS_STORE_TOPIC", "incus.apns_store_topic"),
    ("STAPES_INCUS_APNS_STORE_KEY_FILE", "incus.apns_store_key_file"),
    ("STAPES_INCUS_APNS_STORE_KEY_ID", "incus.apns_store_key_id"),
    ("STAPES_INCUS_APNS_STORE_TEAM_ID", "incus.apns_store_team_id"),
    ("STAPES_INCUS_APNS_ENTERPRISE_CERT", "incus.apns_enterprise_cert"),
    ("STAPES_INCUS_APNS_ENTERPRISE_PRIVATE_KEY", "incus.apns_enterprise_private_key"),
    ("STAPES_INCUS_APNS_ENTERPRISE_TOPIC", "incus.apns_enterprise_topic"),
    ("STAPES_INCUS_APNS_ENTERPRISE_KEY_FILE", "incus.apns_enterprise_key_file"),
    ("STAPES_INCUS_APNS_ENTERPRISE_KEY_ID", "incus.apns_enterprise_key_id"),
    ("STAPES_INCUS_APNS_ENTERPRISE_TEAM_ID", "incus.apns_enterprise_team_id"),
    ("STAPES_INCUS_APNS_BETA_CERT", "incus.apns_beta_cert"),
    ("STAPES_INCUS_APNS_BETA_PRIVATE_KEY", "incus.apns_beta_private_key"),
    ("STAPES_INCUS_APNS_BETA_TOPIC", "incus.apns_beta_topic"),
    ("STAPES_INCUS_APNS_BETA_KEY_FILE", "incus.apns_beta_key_file"),
    ("STAPES_INCUS_APNS_BETA_KEY_ID", "incus.apns_beta_key_id"),
    ("STAPES_INCUS_APNS_BETA_TEAM_ID", "incus.apns_beta_team_id"),
    ("STAPES_INCUS_APNS_DEVELOPMENT_CERT", "incus.apns_development_cert"),
    ("STAPES_INCUS_APNS_DEVELOPMENT_PRIVATE_KEY", "incus.apns_development_private_key"),
    ("STAPES_INCUS_APNS_DEVELOPMENT_TOPIC", "incus.apns_development_topic"),
    ("STAPES_INCUS_APNS_DEVELOPMENT_KEY_FILE", "incus.apns_development_key_file"),
    ("STAPES_INCUS_APNS_DEVELOPMENT_KEY_ID", "incus.apns_development_key_id"),
    ("STAPES_INCUS_APNS_DEVELOPMENT_TEAM_ID", "incus.apns_development_team_id"),
    ("STAPES_INCUS_APNS_PUSH_TYPE", "incus.apns_push_type"),
    ("STAPES_INCUS_APNS_PRIORITY", "incus.apns_priority"),
    ("STAPES_INCUS_APNS_EXPIRATION_SECS", "incus.apns_expiration_secs"),
    ("STAPES_INCUS_IOS_PUSH_SOUND", "incus.ios_push_sound"),
    ("STAPES_INCUS_IOS_ERROR_QUEUE", "incus.ios_error_queue"),
    ("STAPES_INCUS_ANDROID_ERROR_QUEUE", "incus.android_error_queue"),
    ("STAPES_INCUS_GCM_ENABLED", "incus.gcm_enabled"),
    ("STAPES_INCUS_FCM_ENABLED", "incus.fcm_enabled"),
    ("STAPES_INCUS_FCM_PROJECT_ID", "incus.fcm_project_id"),
    ("STAPES_INCUS_FCM_SERVICE_ACCOUNT_FILE", "incus.fcm_service_account_file"),
    ("STAPES_INCUS_FCM_URL", "incus.fcm_url"),
    ("STAPES_INCUS_FCM_TOKEN_URL", "incus.fcm_token_url"),
    ("STAPES_INCUS_PUSH_QUEUE", "incus.push_queue"),
    ("STAPES_INCUS_PUSH_CONCURRENCY", "incus.push_concurrency"),
    ("STAPES_INCUS_PUSH_RETRY_SECS", "incus.push_retry_secs"),
    ("STAPES_INCUS_PUSH_TIMEOUT_SECS", "incus.push_timeout_secs"),
    ("STAPES_INCUS_PUSHORMESSAGE_CONNECTED", "incus.pushormessage_connected"),
];

/// The other upper-case variables of the Incus README, as (variable, what
/// they set). They sit below every `STAPES_*` variable: `LISTENING_PORT`
/// sets `server.port` and `LOG_LEVEL` `server.log` (`debug`, or else
/// `info`, as Incus reads it); `TLS_ENABLED=true` turns the TLS listener on
/// (port `TLS_PORT`, default 443; `CERT_FILE`, default `cert.pem`;
/// `KEY_FILE`, default `key.pem`), `TLS_ENABLED=false` off; the push
/// variables set their `incus:` keys (`GCM_API_KEY` is accepted and warned
/// about as ignored).
pub const INCUS_README_ENV: &[(&str, &str)] = &[
    ("LISTENING_PORT", "server.port"),
    ("LOG_LEVEL", "server.log"),
    ("TLS_ENABLED", "tls"),
    ("TLS_PORT", "tls.port"),
    ("CERT_FILE", "tls.cert_file"),
    ("KEY_FILE", "tls.key_file"),
    ("APNS_ENABLED", "incus.apns_enabled"),
    ("IOS_PUSH_SOUND", "incus.ios_push_sound"),
    ("GCM_ENABLED", "incus.gcm_enabled"),
    ("GCM_API_KEY", "incus.gcm_api_key"),
    ("ANDROID_ERROR_QUEUE", "incus.android_error_queue"),
];

/// Applies [`INCUS_README_ENV`]; call before the `STAPES_*` overrides so
/// that those win.
///
/// # Errors
///
/// [`ConfigError::Invalid`] naming the variable if a value is malformed.
pub(crate) fn apply_incus_readme_env(
    server: &mut ServerConfig,
    tls: &mut Option<TlsConfig>,
    incus: &mut IncusConfig,
    push: &mut PushKeys,
    env: &dyn Fn(&str) -> Option<String>,
    origins: &mut Origins,
) -> Result<(), ConfigError> {
    let get = |var: &str| lookup(env, var);
    if let Some(port) = get("LISTENING_PORT") {
        set_server(server, "port", &port).map_err(|e| e.with_origin("LISTENING_PORT"))?;
        origins.push(("server.port".to_owned(), "LISTENING_PORT"));
    }
    if let Some(level) = get("LOG_LEVEL") {
        server.log = super::file::incus_log_level(&level);
    }
    if let Some(enabled) = get("TLS_ENABLED") {
        let on = match enabled.trim() {
            v if v.eq_ignore_ascii_case("true") => true,
            v if v.eq_ignore_ascii_case("false") => false,
            _ => {
                let message = format!("expected true or false, got {enabled:?}");
                return Err(ConfigError::invalid("tls", message).with_origin("TLS_ENABLED"));
            }
        };
        if !on {
            *tls = None;
        } else if tls.is_none() {
            *tls = Some(TlsConfig {
                port: 443,
                cert_file: "cert.pem".into(),
                key_file: "key.pem".into(),
            });
        }
    }
    if let Some(tls) = tls {
        for (var, name) in
            [("TLS_PORT", "port"), ("CERT_FILE", "cert_file"), ("KEY_FILE", "key_file")]
        {
            if let Some(value) = get(var) {
                set_tls(tls, name, &value).map_err(|e| e.with_origin(var))?;
                origins.push((format!("tls.{name}"), var));
            }
        }
    }
    for &(var, path) in INCUS_README_ENV {
        let Some(name) = path.strip_prefix("incus.") else { continue };
        if let Some(value) = get(var) {
            set_incus(incus, push, name, &value).map_err(|e| e.with_origin(var))?;
            origins.push((path.to_owned(), var));
        }
    }
    Ok(())
}

/// Applies [`INCUS_SECTION_ENV`] in order, so a later variable for the
/// same key wins.
///
/// # Errors
///
/// [`ConfigError::Invalid`] naming the variable if a value is malformed.
pub(crate) fn apply_incus_overrides(
    incus: &mut IncusConfig,
    push: &mut PushKeys,
    env: &dyn Fn(&str) -> Option<String>,
    origins: &mut Origins,
) -> Result<(), ConfigError> {
    for &(var, path) in INCUS_SECTION_ENV {
        let Some(value) = lookup(env, var) else { continue };
        let name = path.trim_start_matches("incus.");
        set_incus(incus, push, name, &value).map_err(|err| err.with_origin(var))?;
        origins.retain(|(p, _)| p != path);
        origins.push((path.to_owned(), var));
    }
    Ok(())
}

/// Environment variables of the embedded default app (used only when no
/// file is given), as (variable, key path, default).
pub const EMBEDDED_APP_ENV: &[(&str, &str, &str)] = &[
    ("STAPES_APP_ID", "apps[0].id", "1"),
    ("STAPES_APP_KEY", "apps[0].key", "app-key"),
    ("STAPES_APP_SECRET", "apps[0].secret", "app-secret"),
    ("STAPES_APP_CLIENT_EVENTS", "apps[0].client_events", "false"),
];

/// Key paths set from the environment, with the variable each came from, so
/// that a validation error can name the variable.
pub(crate) type Origins = Vec<(String, &'static str)>;

/// Reads `var`, treating an empty value as unset.
pub(crate) fn lookup(env: &dyn Fn(&str) -> Option<String>, var: &str) -> Option<String> {
    env(var).filter(|value| !value.is_empty())
}

/// Applies [`ENV_OVERRIDES`] to `server` and `tls`, recording each key set
/// in `origins`.
///
/// # Errors
///
/// [`ConfigError::Invalid`] naming the variable if a value is malformed, or
/// if only some of the TLS variables are set and there is no `tls:` section.
pub(crate) fn apply_overrides(
    server: &mut ServerConfig,
    tls: &mut Option<TlsConfig>,
    env: &dyn Fn(&str) -> Option<String>,
    origins: &mut Origins,
) -> Result<(), ConfigError> {
    let mut tls_values = Vec::new();
    for &(var, path) in ENV_OVERRIDES {
        let Some(value) = lookup(env, var) else { continue };
        match path.split_once('.') {
            // Applied by `apply_redis_overrides`.
            Some(("redis", _)) => continue,
            Some(("server", name)) => {
                set_server(server, name, &value).map_err(|err| err.with_origin(var))?;
            }
            Some(("tls", name)) => tls_values.push((var, name, value)),
            _ => return Err(ConfigError::invalid(path, "has no environment override")),
        }
        origins.push((path.to_owned(), var));
    }
    if tls_values.is_empty() {
        return Ok(());
    }
    let tls = match tls {
        Some(tls) => tls,
        None => {
            let missing: Vec<&str> = ENV_OVERRIDES
                .iter()
                .filter(|(_, path)| path.starts_with("tls."))
                .map(|&(var, _)| var)
                .filter(|var| !tls_values.iter().any(|(set, _, _)| set == var))
                .collect();
            if !missing.is_empty() {
                let set: Vec<&str> = tls_values.iter().map(|(var, _, _)| *var).collect();
                return Err(ConfigError::invalid(
                    "tls",
                    format!(
                        "{} is set but {} is not; without a tls section in the file, \
                         STAPES_TLS_PORT, STAPES_TLS_CERT_FILE and STAPES_TLS_KEY_FILE \
                         must be set together",
                        set.join(", "),
                        missing.join(", "),
                    ),
                ));
            }
            tls.insert(TlsConfig { port: 0, cert_file: "".into(), key_file: "".into() })
        }
    };
    for (var, name, value) in tls_values {
        set_tls(tls, name, &value).map_err(|err| err.with_origin(var))?;
    }
    Ok(())
}

/// Applies the `STAPES_REDIS_*` part of [`ENV_OVERRIDES`], then
/// [`INCUS_ENV`] for keys no `STAPES_*` variable set.
///
/// Without a `redis:` section, `STAPES_REDIS_URL` alone enables the bridge.
///
/// # Errors
///
/// [`ConfigError::Invalid`] naming the variable if a value is malformed, or
/// if another `STAPES_REDIS_*` variable is set with neither a `redis:`
/// section nor `STAPES_REDIS_URL`.
pub(crate) fn apply_redis_overrides(
    redis: &mut Option<RedisConfig>,
    env: &dyn Fn(&str) -> Option<String>,
    origins: &mut Origins,
) -> Result<(), ConfigError> {
    let values: Vec<(&'static str, &'static str, String)> = ENV_OVERRIDES
        .iter()
        .filter_map(|&(var, path)| {
            let name = path.strip_prefix("redis.")?;
            lookup(env, var).map(|value| (var, name, value))
        })
        .collect();
    if redis.is_none() && !values.is_empty() {
        let Some((_, _, url)) = values.iter().find(|(_, name, _)| *name == "url") else {
            let set: Vec<&str> = values.iter().map(|(var, _, _)| *var).collect();
            return Err(ConfigError::invalid(
                "redis",
                format!(
                    "{} is set but STAPES_REDIS_URL is not; without a redis section in the \
                     file, STAPES_REDIS_URL enables the bridge",
                    set.join(", ")
                ),
            ));
        };
        *redis = Some(RedisConfig::new(url.clone()));
    }
    let Some(redis) = redis else { return Ok(()) };
    for &(var, name, ref value) in &values {
        set_redis(redis, name, value).map_err(|err| err.with_origin(var))?;
        origins.push((format!("redis.{name}"), var));
    }
    for &(var, path) in INCUS_ENV {
        let Some(name) = path.strip_prefix("redis.") else { continue };
        if values.iter().any(|(_, set, _)| *set == name) {
            continue;
        }
        let Some(value) = lookup(env, var) else { continue };
        if name == "url" {
            redis.url = url_with(&redis.url, var, &value).map_err(|err| err.with_origin(var))?;
        } else {
            set_redis(redis, name, &value).map_err(|err| err.with_origin(var))?;
        }
        origins.push((path.to_owned(), var));
    }
    Ok(())
}

/// `url` with its host (`…_ADDR`) or port (`…_PORT`) replaced by `value`.
fn url_with(url: &str, var: &str, value: &str) -> Result<String, ConfigError> {
    let invalid = |message: String| ConfigError::invalid("redis.url", message);
    let mut parsed =
        url::Url::parse(url).map_err(|e| invalid(format!("cannot apply {var} to {url:?}: {e}")))?;
    if !matches!(parsed.scheme(), "redis" | "rediss") {
        return Err(invalid(format!("{var} needs a redis:// URL, got {url:?}")));
    }
    if var.ends_with("_PORT") {
        let port =
            value.trim().parse::<u16>().ok().filter(|&p| p != 0).ok_or_else(|| {
                invalid(format!("expected a port from 1 to 65535, got {value:?}"))
            })?;
        parsed
            .set_port(Some(port))
            .map_err(|()| invalid(format!("cannot set the port of {url:?}")))?;
    } else {
        parsed
            .set_host(Some(value.trim()))
            .map_err(|e| invalid(format!("expected a host name or address, got {value:?}: {e}")))?;
    }
    Ok(parsed.into())
}

/// Expands `${VAR}` and `${VAR:-default}` in `text` from `env`.
///
/// `:-default` applies when the variable is unset or empty, as in the shell;
/// the default runs to the first `}`. `$${` writes a literal `${`. Lines whose
/// first non-blank character is `#` are comments and are left alone, so the
/// file can document the syntax. Values are inserted as text, before YAML
/// parsing: quote the reference (`"${VAR}"`) if the value may contain YAML
/// punctuation such as `: ` or ` #`.
///
/// # Errors
///
/// [`ConfigError::UnsetVariable`] for an unset variable without a default;
/// [`ConfigError::Expansion`] for an unterminated reference, a bad name, or
/// a value containing a line break (which would change the YAML structure).
pub(crate) fn expand(
    text: &str,
    file: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<String, ConfigError> {
    let mut out = String::with_capacity(text.len());
    for (index, line) in text.split_inclusive('\n').enumerate() {
        let line_no = index + 1;
        if line.trim_start().starts_with('#') {
            out.push_str(line);
            continue;
        }
        let error = |message: String| ConfigError::Expansion {
            file: file.to_owned(),
            line: line_no,
            message,
        };
        let mut rest = line;
        while let Some(dollar) = rest.find('$') {
            out.push_str(&rest[..dollar]);
            let after = &rest[dollar + 1..];
            if let Some(escaped) = after.strip_prefix("${") {
                out.push_str("${");
                rest = escaped;
                continue;
            }
            let Some(reference) = after.strip_prefix('{') else {
                out.push('$');
                rest = after;
                continue;
            };
            let Some(end) = reference.find('}') else {
                return Err(error("unterminated ${ (expected ${NAME} or ${NAME:-default})".into()));
            };
            let (name, default) = match reference[..end].split_once(":-") {
                Some((name, default)) => (name, Some(default)),
                None => (&reference[..end], None),
            };
            if !is_var_name(name) {
                return Err(error(format!(
                    "invalid variable name {name:?} in ${{…}} (letters, digits and _ only)"
                )));
            }
            let value = match (lookup(env, name), default) {
                (Some(value), _) => value,
                (None, Some(default)) => default.to_owned(),
                // Set but empty, and no default: the empty string.
                (None, None) if env(name).is_some() => String::new(),
                (None, None) => {
                    return Err(ConfigError::UnsetVariable {
                        file: file.to_owned(),
                        line: line_no,
                        var: name.to_owned(),
                    });
                }
            };
            if value.contains(['\n', '\r']) {
                return Err(error(format!("the value of {name} contains a line break")));
            }
            out.push_str(&value);
            rest = &reference[end + 1..];
        }
        out.push_str(rest);
    }
    Ok(out)
}

fn is_var_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "A" => Some("alpha".into()),
            "EMPTY" => Some(String::new()),
            "MULTI" => Some("x\ny".into()),
            _ => None,
        }
    }

    fn ok(text: &str) -> String {
        expand(text, "f.yml", &env).expect("expands")
    }

    fn err(text: &str) -> String {
        expand(text, "f.yml", &env).expect_err("fails").to_string()
    }

    #[test]
    fn expands_set_variables_and_defaults() {
        assert_eq!(ok("k: ${A}\n"), "k: alpha\n");
        assert_eq!(ok("k: ${A:-other}"), "k: alpha");
        assert_eq!(ok("k: ${UNSET:-dflt}"), "k: dflt");
        assert_eq!(ok("k: ${UNSET:-}"), "k: ");
        assert_eq!(ok("k: ${EMPTY:-dflt}"), "k: dflt", "empty counts as unset for :-");
        assert_eq!(ok("k: ${EMPTY}"), "k: ", "empty is still set");
        assert_eq!(ok("k: ${A}-${A}"), "k: alpha-alpha");
        assert_eq!(ok("k: \"pre${A}post\""), "k: \"prealphapost\"");
    }

    #[test]
    fn leaves_other_dollars_and_comment_lines() {
        assert_eq!(ok("k: a$b$ $"), "k: a$b$ $");
        assert_eq!(ok("k: $${A}"), "k: ${A}");
        assert_eq!(ok("  # see ${UNSET}\nk: 1\n"), "  # see ${UNSET}\nk: 1\n");
        assert_eq!(ok("k: ${A:-${B}"), "k: alpha", "default ends at the first }}");
    }

    #[test]
    fn unset_variable_names_it() {
        assert_eq!(
            err("a: 1\nk: ${MISSING}\n"),
            "f.yml:2: environment variable MISSING is not set \
             (write ${MISSING:-default} to give it a default)"
        );
    }

    #[test]
    fn malformed_references() {
        assert!(err("k: ${A").starts_with("f.yml:1: unterminated ${"));
        assert!(err("k: ${}").contains("invalid variable name \"\""));
        assert!(err("k: ${1X}").contains("invalid variable name \"1X\""));
        assert!(err("k: ${A B}").contains("invalid variable name \"A B\""));
        assert_eq!(err("k: ${MULTI}"), "f.yml:1: the value of MULTI contains a line break");
    }

    #[test]
    fn override_table_is_consistent() {
        let mut server = ServerConfig::default();
        let mut tls = TlsConfig { port: 1, cert_file: "c".into(), key_file: "k".into() };
        let mut redis = RedisConfig::new("redis://127.0.0.1");
        for &(var, path) in ENV_OVERRIDES {
            assert!(var.starts_with("STAPES_"), "{var}");
            let (section, name) = path.split_once('.').expect("section.key");
            assert_eq!(
                var,
                format!("STAPES_{}", path.replace("server.", "").to_uppercase().replace('.', "_"))
            );
            let value = match name {
                "host" => "::1",
                "log" | "cert_file" | "key_file" | "pusher_channel" | "incus_channel"
                | "incus_queue" | "instance" => "x",
                "url" => "redis://127.0.0.1:7",
                "reconnect_max_ms" => "700",
                "allow_missing_protocol" | "metrics" => "true",
                _ => "7",
            };
            let result = match section {
                "server" => set_server(&mut server, name, value),
                "tls" => set_tls(&mut tls, name, value),
                "redis" => set_redis(&mut redis, name, value),
                _ => panic!("unexpected section in {path}"),
            };
            assert!(result.is_ok(), "{var} -> {path}: {result:?}");
        }
    }

    #[test]
    fn incus_section_variables_are_named_after_their_key() {
        for &(var, path) in INCUS_SECTION_ENV {
            let name = path.strip_prefix("incus.").expect("an incus key");
            if var.starts_with("STAPES_") {
                assert_eq!(var, format!("STAPES_INCUS_{}", name.to_uppercase()));
            } else {
                assert_eq!(var, name.to_uppercase(), "Incus README names are the key's");
            }
        }
        for key in [
            "apns_enabled",
            "apns_store_topic",
            "apns_enterprise_key_file",
            "apns_beta_key_id",
            "apns_development_team_id",
            "fcm_enabled",
            "pushormessage_connected",
        ] {
            let var = format!("STAPES_INCUS_{}", key.to_uppercase());
            assert!(INCUS_SECTION_ENV.iter().any(|&(v, _)| v == var), "{var}");
        }
    }
}
