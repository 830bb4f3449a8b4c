//! The serde-facing shape of `config.yml` and its conversion to [`Config`].
//!
//! Sections are `#[serde(deny_unknown_fields)]` structs, so a misspelt key is
//! an error rather than a silently ignored setting. Leaf values are read as
//! text and converted by the `set_*` functions below, which the environment
//! overrides share: a bad value reads
//! `server.port: expected an integer from 1 to 65535, got "abc"` whether it
//! came from the file or from `STAPES_PORT`.

use std::{collections::HashMap, fmt, net::IpAddr, path::PathBuf, sync::Arc, time::Duration};

use serde::{
    Deserialize, Deserializer,
    de::{self, IgnoredAny, Visitor},
};

use super::{
    AppConfig, Config, ConfigError, IncusConfig, RedisConfig, ServerConfig, TlsConfig,
    WebhookConfig,
    push::{PushKeys, apns_build_key, is_http_url},
};
use crate::core::{HookKind, HookKinds};

/// TLS port used when a `tls:` section leaves `port` out.
pub(crate) const DEFAULT_TLS_PORT: u16 = 6002;

/// The whole file.
#[derive(Debug, Default, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a mapping with the keys server, tls, redis, incus and apps"
)]
pub(crate) struct RawConfig {
    server: Option<RawServer>,
    tls: Option<RawTls>,
    redis: Option<RawRedis>,
    incus: Option<RawIncus>,
    apps: Option<Vec<RawApp>>,
}

/// `incus:`. Keep `client_broadcasts` first (see [`RawServer`]).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a mapping for the incus section")]
struct RawIncus {
    client_broadcasts: Option<Text>,
    connection_timeout: Option<Text>,
    longpoll_killswitch: Option<Text>,
    mailbox_messages: Option<Text>,
    mailbox_ttl_secs: Option<Text>,
    presence_window_secs: Option<Text>,
    auth_timeout_secs: Option<Text>,
    ping_interval_secs: Option<Text>,
    client_commands_per_sec: Option<Text>,
    client_commands_burst: Option<Text>,
    max_lp_sessions: Option<Text>,
    datadog_enabled: Option<Text>,
    datadog_host: Option<Text>,
    datadog_port: Option<Text>,
    datadog_interval_secs: Option<Text>,
    // Incus keys that stapes sets elsewhere: aliases of other sections.
    listening_port: Option<Text>,
    log_level: Option<Text>,
    tls_enabled: Option<Text>,
    tls_port: Option<Text>,
    cert_file: Option<Text>,
    key_file: Option<Text>,
    redis_enabled: Option<Text>,
    redis_port_6379_tcp_addr: Option<Text>,
    redis_port_6379_tcp_port: Option<Text>,
    redis_message_channel: Option<Text>,
    redis_message_queue: Option<Text>,
    // Mobile push (see `push`).
    apns_enabled: Option<Text>,
    apns_key_file: Option<Text>,
    apns_key_id: Option<Text>,
    apns_team_id: Option<Text>,
    apns_store_cert: Option<Text>,
    apns_store_private_key: Option<Text>,
    apns_store_topic: Option<Text>,
    apns_store_key_file: Option<Text>,
    apns_store_key_id: Option<Text>,
    apns_store_team_id: Option<Text>,
    apns_enterprise_cert: Option<Text>,
    apns_enterprise_private_key: Option<Text>,
    apns_enterprise_topic: Option<Text>,
    apns_enterprise_key_file: Option<Text>,
    apns_enterprise_key_id: Option<Text>,
    apns_enterprise_team_id: Option<Text>,
    apns_beta_cert: Option<Text>,
    apns_beta_private_key: Option<Text>,
    apns_beta_topic: Option<Text>,
    apns_beta_key_file: Option<Text>,
    apns_beta_key_id: Option<Text>,
    apns_beta_team_id: Option<Text>,
    apns_development_cert: Option<Text>,
    apns_development_private_key: Option<Text>,
    apns_development_topic: Option<Text>,
    apns_development_key_file: Option<Text>,
    apns_development_key_id: Option<Text>,
    apns_development_team_id: Option<Text>,
    apns_push_type: Option<Text>,
    apns_priority: Option<Text>,
    apns_expiration_secs: Option<Text>,
    ios_push_sound: Option<Text>,
    ios_error_queue: Option<Text>,
    android_error_queue: Option<Text>,
    gcm_enabled: Option<Text>,
    fcm_enabled: Option<Text>,
    fcm_project_id: Option<Text>,
    fcm_service_account_file: Option<Text>,
    fcm_url: Option<Text>,
    fcm_token_url: Option<Text>,
    push_queue: Option<Text>,
    push_concurrency: Option<Text>,
    push_retry_secs: Option<Text>,
    push_timeout_secs: Option<Text>,
    pushormessage_connected: Option<Text>,
    // Incus keys for what stapes does differently or not at all: checked,
    // then ignored (the legacy push keys with a start-up warning).
    redis_activity_consumers: Option<Text>,
    redis_connection_pool_size: Option<Text>,
    apns_store_url: Option<Text>,
    apns_enterprise_url: Option<Text>,
    apns_beta_url: Option<Text>,
    apns_development_url: Option<Text>,
    apns_production_url: Option<Text>,
    apns_sandbox_url: Option<Text>,
    gcm_api_key: Option<Text>,
}

/// `server:`. Keep `host` first: [`unknown_key_path`] recognises the section
/// by the first name in serde's list of expected fields.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a mapping for the server section")]
struct RawServer {
    host: Option<Text>,
    port: Option<Text>,
    shards: Option<Text>,
    activity_timeout_secs: Option<Text>,
    pong_timeout_secs: Option<Text>,
    max_connections: Option<Text>,
    max_message_bytes: Option<Text>,
    max_outbox_bytes: Option<Text>,
    max_header_bytes: Option<Text>,
    max_body_bytes: Option<Text>,
    http_idle_timeout_secs: Option<Text>,
    shutdown_grace_secs: Option<Text>,
    allow_missing_protocol: Option<Text>,
    log: Option<Text>,
    webhook_ca_file: Option<Text>,
    metrics: Option<Text>,
}

/// `tls:`. Keep `port` first (see [`RawServer`]).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a mapping for the tls section")]
struct RawTls {
    port: Option<Text>,
    cert_file: Option<Text>,
    key_file: Option<Text>,
}

/// `redis:`. Keep `url` first (see [`RawServer`]).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a mapping for the redis section")]
struct RawRedis {
    url: Option<Text>,
    pusher_channel: Option<Text>,
    incus_channel: Option<Text>,
    incus_queue: Option<Text>,
    instance: Option<Text>,
    reconnect_max_ms: Option<Text>,
}

/// One entry of `apps:`. Keep `id` first (see [`RawServer`]).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a mapping for an app")]
struct RawApp {
    id: Option<Text>,
    key: Option<Text>,
    secret: Option<Text>,
    enabled: Option<Text>,
    client_events: Option<Text>,
    only_ssl: Option<Text>,
    max_connections: Option<Text>,
    max_event_bytes: Option<Text>,
    max_presence_members: Option<Text>,
    max_presence_user_info_bytes: Option<Text>,
    max_presence_user_id_chars: Option<Text>,
    client_event_rate: Option<Text>,
    max_channel_name_chars: Option<Text>,
    max_event_name_chars: Option<Text>,
    subscription_count: Option<Text>,
    cache_ttl_secs: Option<Text>,
    authorized_timeout_secs: Option<Text>,
    webhooks: Option<Vec<RawWebhook>>,
    webhook_delay_ms: Option<Text>,
    webhook_batch_ms: Option<Text>,
    webhook_batch_max: Option<Text>,
}

/// One entry of `apps[].webhooks`. Keep `event_types` first (see
/// [`RawServer`]): `url` would be taken for the redis section.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a mapping for a webhook")]
struct RawWebhook {
    event_types: Option<Vec<Text>>,
    url: Option<Text>,
}

/// One leaf value as its source text: `port: 6001`, `port: "6001"` and
/// `STAPES_PORT=6001` all arrive as the text `6001`, and the `set_*`
/// functions parse it. Reading the text rather than YAML's typed value keeps
/// an app id such as `0123` intact. `null`, `~` or nothing reads as `None`,
/// the same as leaving the key out.
#[derive(Debug)]
struct Text(String);

impl<'de> Deserialize<'de> for Text {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_str(TextVisitor)
    }
}

struct TextVisitor;

impl Visitor<'_> for TextVisitor {
    type Value = Text;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a single value (not a mapping or a list)")
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Text, E> {
        Ok(Text(v.to_owned()))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Text, E> {
        Ok(Text(v))
    }
}

/// Parses expanded YAML text into the raw structs. `file` names the source in
/// errors.
/// `original` is the text before `${VAR}` expansion (same lines), used to
/// point at a key without echoing expanded values, which may be secrets.
pub(crate) fn parse(text: &str, original: &str, file: &str) -> Result<RawConfig, ConfigError> {
    if text.lines().all(|line| {
        let line = line.trim_start();
        line.is_empty() || line.starts_with('#') || line == "---"
    }) {
        // An empty document: every key absent (and so, later, no apps).
        return Ok(RawConfig::default());
    }
    serde_saphyr::from_str::<RawConfig>(text).map_err(|err| yaml_error(text, original, file, &err))
}

/// Builds a [`Config`] from the file's values over the defaults, with the
/// push keys still to be resolved. Environment overrides, the push keys'
/// resolution and validation come after.
pub(crate) fn to_config(raw: RawConfig) -> Result<(Config, PushKeys), ConfigError> {
    let RawConfig { server, tls, redis, incus, apps } = raw;
    let mut config = Config {
        server: ServerConfig::default(),
        tls: None,
        apps: Vec::new(),
        redis: None,
        incus: IncusConfig::default(),
    };
    let mut push = PushKeys::default();
    let aliases = match incus {
        Some(incus) => incus_from_raw(incus, &mut config.incus, &mut push)?,
        None => IncusAliases::default(),
    };
    // Applied first, so that the stapes sections below win over them.
    aliases.apply(&mut config, redis.is_some(), tls.is_some())?;
    if let Some(server) = server {
        server_from_raw(server, &mut config.server)?;
    }
    if let Some(tls) = tls {
        config.tls = Some(tls_from_raw(tls)?);
    }
    if let Some(redis) = redis {
        config.redis = Some(redis_from_raw(redis)?);
    }
    for (index, app) in apps.unwrap_or_default().into_iter().enumerate() {
        config.apps.push(Arc::new(app_from_raw(app, index)?));
    }
    Ok((config, push))
}

fn server_from_raw(raw: RawServer, server: &mut ServerConfig) -> Result<(), ConfigError> {
    // Destructured so that a new field cannot be forgotten here.
    let RawServer {
        host,
        port,
        shards,
        activity_timeout_secs,
        pong_timeout_secs,
        max_connections,
        max_message_bytes,
        max_outbox_bytes,
        max_header_bytes,
        max_body_bytes,
        http_idle_timeout_secs,
        shutdown_grace_secs,
        allow_missing_protocol,
        log,
        webhook_ca_file,
        metrics,
    } = raw;
    let fields = [
        ("host", host),
        ("port", port),
        ("shards", shards),
        ("activity_timeout_secs", activity_timeout_secs),
        ("pong_timeout_secs", pong_timeout_secs),
        ("max_connections", max_connections),
        ("max_message_bytes", max_message_bytes),
        ("max_outbox_bytes", max_outbox_bytes),
        ("max_header_bytes", max_header_bytes),
        ("max_body_bytes", max_body_bytes),
        ("http_idle_timeout_secs", http_idle_timeout_secs),
        ("shutdown_grace_secs", shutdown_grace_secs),
        ("allow_missing_protocol", allow_missing_protocol),
        ("log", log),
        ("webhook_ca_file", webhook_ca_file),
        ("metrics", metrics),
    ];
    for (name, value) in fields {
        if let Some(Text(value)) = value {
            set_server(server, name, &value)?;
        }
    }
    Ok(())
}

fn tls_from_raw(raw: RawTls) -> Result<TlsConfig, ConfigError> {
    let RawTls { port, cert_file, key_file } = raw;
    let mut tls =
        TlsConfig { port: DEFAULT_TLS_PORT, cert_file: PathBuf::new(), key_file: PathBuf::new() };
    for (name, value) in [("port", port), ("cert_file", cert_file), ("key_file", key_file)] {
        match value {
            Some(Text(value)) => set_tls(&mut tls, name, &value)?,
            _ if name == "port" => {}
            _ => {
                return Err(ConfigError::invalid(
                    format!("tls.{name}"),
                    "is required when the tls section is present",
                ));
            }
        }
    }
    Ok(tls)
}

fn redis_from_raw(raw: RawRedis) -> Result<RedisConfig, ConfigError> {
    let RawRedis { url, pusher_channel, incus_channel, incus_queue, instance, reconnect_max_ms } =
        raw;
    let Some(Text(url)) = url else {
        return Err(ConfigError::invalid(
            "redis.url",
            "is required when the redis section is present",
        ));
    };
    let mut redis = RedisConfig::new(url);
    let fields = [
        ("pusher_channel", pusher_channel),
        ("incus_channel", incus_channel),
        ("incus_queue", incus_queue),
        ("instance", instance),
        ("reconnect_max_ms", reconnect_max_ms),
    ];
    for (name, value) in fields {
        if let Some(Text(value)) = value {
            set_redis(&mut redis, name, &value)?;
        }
    }
    Ok(redis)
}

/// The Incus keys of `incus:` that stand for settings of other sections.
#[derive(Debug, Default)]
struct IncusAliases {
    values: Vec<(&'static str, String)>,
}

impl IncusAliases {
    fn get(&self, name: &str) -> Option<&str> {
        self.values.iter().find(|(n, _)| *n == name).map(|(_, v)| v.as_str())
    }

    /// `listening_port` and `log_level` set the server's port and log;
    /// `tls_enabled` with its keys makes a `tls:` section and
    /// `redis_enabled` with its keys a `redis:` section, each only where the
    /// file has no such section (which then wins whole).
    fn apply(
        &self,
        config: &mut Config,
        has_redis: bool,
        has_tls: bool,
    ) -> Result<(), ConfigError> {
        if let Some(port) = self.get("listening_port") {
            set_server(&mut config.server, "port", port)
                .map_err(|_| invalid_alias("listening_port", port, "a port from 1 to 65535"))?;
        }
        if let Some(level) = self.get("log_level") {
            config.server.log = incus_log_level(level);
        }
        let enabled =
            |name: &str| self.get(name).is_some_and(|v| v.trim().eq_ignore_ascii_case("true"));
        if enabled("tls_enabled") && !has_tls {
            let mut tls = TlsConfig {
                port: 443,
                cert_file: self.get("cert_file").unwrap_or("cert.pem").into(),
                key_file: self.get("key_file").unwrap_or("key.pem").into(),
            };
            if let Some(port) = self.get("tls_port") {
                set_tls(&mut tls, "port", port)
                    .map_err(|_| invalid_alias("tls_port", port, "a port from 1 to 65535"))?;
            }
            config.tls = Some(tls);
        }
        if enabled("redis_enabled") && !has_redis {
            let host = self.get("redis_port_6379_tcp_addr").unwrap_or("127.0.0.1");
            let port = self.get("redis_port_6379_tcp_port").unwrap_or("6379");
            let port = port.trim().parse::<u16>().ok().filter(|&p| p != 0).ok_or_else(|| {
                invalid_alias("redis_port_6379_tcp_port", port, "a port from 1 to 65535")
            })?;
            let mut redis = RedisConfig::new(format!("redis://{}:{port}", host.trim()));
            if let Some(channel) = self.get("redis_message_channel") {
                redis.incus_channel = channel.to_owned();
            }
            if let Some(queue) = self.get("redis_message_queue") {
                redis.incus_queue = queue.to_owned();
            }
            config.redis = Some(redis);
        }
        Ok(())
    }
}

fn invalid_alias(name: &str, value: &str, expected: &str) -> ConfigError {
    ConfigError::invalid(format!("incus.{name}"), format!("expected {expected}, got {value:?}"))
}

/// Incus logs verbosely only for exactly `debug`.
pub(crate) fn incus_log_level(level: &str) -> String {
    if level.trim() == "debug" { "debug".to_owned() } else { "info".to_owned() }
}

fn incus_from_raw(
    raw: RawIncus,
    incus: &mut IncusConfig,
    push: &mut PushKeys,
) -> Result<IncusAliases, ConfigError> {
    let RawIncus {
        client_broadcasts,
        connection_timeout,
        longpoll_killswitch,
        mailbox_messages,
        mailbox_ttl_secs,
        presence_window_secs,
        auth_timeout_secs,
        ping_interval_secs,
        client_commands_per_sec,
        client_commands_burst,
        max_lp_sessions,
        datadog_enabled,
        datadog_host,
        datadog_port,
        datadog_interval_secs,
        listening_port,
        log_level,
        tls_enabled,
        tls_port,
        cert_file,
        key_file,
        redis_enabled,
        redis_port_6379_tcp_addr,
        redis_port_6379_tcp_port,
        redis_message_channel,
        redis_message_queue,
        apns_enabled,
        apns_key_file,
        apns_key_id,
        apns_team_id,
        apns_store_cert,
        apns_store_private_key,
        apns_store_topic,
        apns_store_key_file,
        apns_store_key_id,
        apns_store_team_id,
        apns_enterprise_cert,
        apns_enterprise_private_key,
        apns_enterprise_topic,
        apns_enterprise_key_file,
        apns_enterprise_key_id,
        apns_enterprise_team_id,
        apns_beta_cert,
        apns_beta_private_key,
        apns_beta_topic,
        apns_beta_key_file,
        apns_beta_key_id,
        apns_beta_team_id,
        apns_development_cert,
        apns_development_private_key,
        apns_development_topic,
        apns_development_key_file,
        apns_development_key_id,
        apns_development_team_id,
        apns_push_type,
        apns_priority,
        apns_expiration_secs,
        ios_push_sound,
        ios_error_queue,
        android_error_queue,
        gcm_enabled,
        fcm_enabled,
        fcm_project_id,
        fcm_service_account_file,
        fcm_url,
        fcm_token_url,
        push_queue,
        push_concurrency,
        push_retry_secs,
        push_timeout_secs,
        pushormessage_connected,
        redis_activity_consumers,
        redis_connection_pool_size,
        apns_store_url,
        apns_enterprise_url,
        apns_beta_url,
        apns_development_url,
        apns_production_url,
        apns_sandbox_url,
        gcm_api_key,
    } = raw;
    let fields = [
        ("client_broadcasts", client_broadcasts),
        ("connection_timeout", connection_timeout),
        ("longpoll_killswitch", longpoll_killswitch),
        ("mailbox_messages", mailbox_messages),
        ("mailbox_ttl_secs", mailbox_ttl_secs),
        ("presence_window_secs", presence_window_secs),
        ("auth_timeout_secs", auth_timeout_secs),
        ("ping_interval_secs", ping_interval_secs),
        ("client_commands_per_sec", client_commands_per_sec),
        ("client_commands_burst", client_commands_burst),
        ("max_lp_sessions", max_lp_sessions),
        ("datadog_enabled", datadog_enabled),
        ("datadog_host", datadog_host),
        ("datadog_port", datadog_port),
        ("datadog_interval_secs", datadog_interval_secs),
        ("apns_enabled", apns_enabled),
        ("apns_key_file", apns_key_file),
        ("apns_key_id", apns_key_id),
        ("apns_team_id", apns_team_id),
        ("apns_store_cert", apns_store_cert),
        ("apns_store_private_key", apns_store_private_key),
        ("apns_store_topic", apns_store_topic),
        ("apns_store_key_file", apns_store_key_file),
        ("apns_store_key_id", apns_store_key_id),
        ("apns_store_team_id", apns_store_team_id),
        ("apns_enterprise_cert", apns_enterprise_cert),
        ("apns_enterprise_private_key", apns_enterprise_private_key),
        ("apns_enterprise_topic", apns_enterprise_topic),
        ("apns_enterprise_key_file", apns_enterprise_key_file),
        ("apns_enterprise_key_id", apns_enterprise_key_id),
        ("apns_enterprise_team_id", apns_enterprise_team_id),
        ("apns_beta_cert", apns_beta_cert),
        ("apns_beta_private_key", apns_beta_private_key),
        ("apns_beta_topic", apns_beta_topic),
        ("apns_beta_key_file", apns_beta_key_file),
        ("apns_beta_key_id", apns_beta_key_id),
        ("apns_beta_team_id", apns_beta_team_id),
        ("apns_development_cert", apns_development_cert),
        ("apns_development_private_key", apns_development_private_key),
        ("apns_development_topic", apns_development_topic),
        ("apns_development_key_file", apns_development_key_file),
        ("apns_development_key_id", apns_development_key_id),
        ("apns_development_team_id", apns_development_team_id),
        ("apns_push_type", apns_push_type),
        ("apns_priority", apns_priority),
        ("apns_expiration_secs", apns_expiration_secs),
        ("ios_push_sound", ios_push_sound),
        ("ios_error_queue", ios_error_queue),
        ("android_error_queue", android_error_queue),
        ("gcm_enabled", gcm_enabled),
        ("fcm_enabled", fcm_enabled),
        ("fcm_project_id", fcm_project_id),
        ("fcm_service_account_file", fcm_service_account_file),
        ("fcm_url", fcm_url),
        ("fcm_token_url", fcm_token_url),
        ("push_queue", push_queue),
        ("push_concurrency", push_concurrency),
        ("push_retry_secs", push_retry_secs),
        ("push_timeout_secs", push_timeout_secs),
        ("pushormessage_connected", pushormessage_connected),
    ];
    for (name, value) in fields {
        if let Some(Text(value)) = value {
            set_incus(incus, push, name, &value)?;
        }
    }
    let mut aliases = IncusAliases::default();
    let alias_fields = [
        ("listening_port", listening_port),
        ("log_level", log_level),
        ("tls_enabled", tls_enabled),
        ("tls_port", tls_port),
        ("cert_file", cert_file),
        ("key_file", key_file),
        ("redis_enabled", redis_enabled),
        ("redis_port_6379_tcp_addr", redis_port_6379_tcp_addr),
        ("redis_port_6379_tcp_port", redis_port_6379_tcp_port),
        ("redis_message_channel", redis_message_channel),
        ("redis_message_queue", redis_message_queue),
    ];
    for (name, value) in alias_fields {
        if let Some(Text(value)) = value {
            if name.ends_with("_enabled") {
                bool_of(&format!("incus.{name}"), &value)?;
            }
            aliases.values.push((name, value));
        }
    }
    let ignored = [
        ("redis_activity_consumers", redis_activity_consumers),
        ("redis_connection_pool_size", redis_connection_pool_size),
        ("apns_store_url", apns_store_url),
        ("apns_enterprise_url", apns_enterprise_url),
        ("apns_beta_url", apns_beta_url),
        ("apns_development_url", apns_development_url),
        ("apns_production_url", apns_production_url),
        ("apns_sandbox_url", apns_sandbox_url),
        ("gcm_api_key", gcm_api_key),
    ];
    for (name, value) in ignored {
        if let Some(Text(value)) = value {
            set_incus(incus, push, name, &value)?;
        }
    }
    Ok(aliases)
}

fn app_from_raw(raw: RawApp, index: usize) -> Result<AppConfig, ConfigError> {
    let RawApp {
        id,
        key,
        secret,
        enabled,
        client_events,
        only_ssl,
        max_connections,
        max_event_bytes,
        max_presence_members,
        max_presence_user_info_bytes,
        max_presence_user_id_chars,
        client_event_rate,
        max_channel_name_chars,
        max_event_name_chars,
        subscription_count,
        cache_ttl_secs,
        authorized_timeout_secs,
        webhooks,
        webhook_delay_ms,
        webhook_batch_ms,
        webhook_batch_max,
    } = raw;
    let mut app = AppConfig::new("", "", "");
    for (name, value) in [("id", id), ("key", key), ("secret", secret)] {
        match value {
            Some(Text(value)) => set_app(&mut app, index, name, &value)?,
            _ => return Err(ConfigError::invalid(app_key(index, name), "is required")),
        }
    }
    let fields = [
        ("enabled", enabled),
        ("client_events", client_events),
        ("only_ssl", only_ssl),
        ("max_connections", max_connections),
        ("max_event_bytes", max_event_bytes),
        ("max_presence_members", max_presence_members),
        ("max_presence_user_info_bytes", max_presence_user_info_bytes),
        ("max_presence_user_id_chars", max_presence_user_id_chars),
        ("client_event_rate", client_event_rate),
        ("max_channel_name_chars", max_channel_name_chars),
        ("max_event_name_chars", max_event_name_chars),
        ("subscription_count", subscription_count),
        ("cache_ttl_secs", cache_ttl_secs),
        ("authorized_timeout_secs", authorized_timeout_secs),
        ("webhook_delay_ms", webhook_delay_ms),
        ("webhook_batch_ms", webhook_batch_ms),
        ("webhook_batch_max", webhook_batch_max),
    ];
    for (name, value) in fields {
        if let Some(Text(value)) = value {
            set_app(&mut app, index, name, &value)?;
        }
    }
    for (n, hook) in webhooks.unwrap_or_default().into_iter().enumerate() {
        app.webhooks.push(webhook_from_raw(hook, index, n)?);
    }
    Ok(app)
}

fn webhook_from_raw(raw: RawWebhook, app: usize, n: usize) -> Result<WebhookConfig, ConfigError> {
    let key = |name: &str| app_key(app, &format!("webhooks[{n}].{name}"));
    let url = match raw.url {
        Some(Text(url)) => url.trim().to_owned(),
        None => return Err(ConfigError::invalid(key("url"), "is required")),
    };
    let event_types = match raw.event_types {
        None => HookKinds::ALL,
        Some(names) if names.is_empty() => {
            return Err(ConfigError::invalid(
                key("event_types"),
                "names no event type; leave the key out to receive all of them",
            ));
        }
        Some(names) => {
            let mut set = HookKinds::NONE;
            for Text(name) in names {
                let kind = HookKind::parse(name.trim()).ok_or_else(|| {
                    let known = HookKinds::ALL.names().join(", ");
                    ConfigError::invalid(
                        key("event_types"),
                        format!("unknown event type {name:?}; expected one of {known}"),
                    )
                })?;
                set.insert(kind);
            }
            set
        }
    };
    Ok(WebhookConfig { url, event_types })
}

/// Sets `server.<name>` from the text `value`.
///
/// # Errors
///
/// [`ConfigError::Invalid`] if the value has the wrong type or `name` is not
/// a server key.
pub(crate) fn set_server(
    server: &mut ServerConfig,
    name: &str,
    value: &str,
) -> Result<(), ConfigError> {
    let key = format!("server.{name}");
    let key = key.as_str();
    match name {
        "host" => server.host = ip_addr(key, value)?,
        "port" => server.port = port(key, value)?,
        "shards" => server.shards = Some(usize_of(key, value)?).filter(|&n| n != 0),
        "activity_timeout_secs" => server.activity_timeout = secs(key, value)?,
        "pong_timeout_secs" => server.pong_timeout = secs(key, value)?,
        "max_connections" => server.max_connections = usize_of(key, value)?,
        "max_message_bytes" => server.max_message_bytes = usize_of(key, value)?,
        "max_outbox_bytes" => server.max_outbox_bytes = usize_of(key, value)?,
        "max_header_bytes" => server.max_header_bytes = usize_of(key, value)?,
        "max_body_bytes" => server.max_body_bytes = usize_of(key, value)?,
        "http_idle_timeout_secs" => server.http_idle_timeout = secs(key, value)?,
        "shutdown_grace_secs" => server.shutdown_grace = secs(key, value)?,
        "allow_missing_protocol" => server.allow_missing_protocol = bool_of(key, value)?,
        "log" => server.log = value.to_owned(),
        "webhook_ca_file" => {
            server.webhook_ca_file = Some(value.trim()).filter(|v| !v.is_empty()).map(Into::into);
        }
        "metrics" => server.metrics = bool_of(key, value)?,
        _ => return Err(ConfigError::invalid(key, "is not a server setting")),
    }
    Ok(())
}

/// Sets `tls.<name>` from the text `value`.
///
/// # Errors
///
/// [`ConfigError::Invalid`] if the value has the wrong type or `name` is not
/// a TLS key.
pub(crate) fn set_tls(tls: &mut TlsConfig, name: &str, value: &str) -> Result<(), ConfigError> {
    let key = format!("tls.{name}");
    let key = key.as_str();
    match name {
        "port" => tls.port = port(key, value)?,
        "cert_file" => tls.cert_file = value.into(),
        "key_file" => tls.key_file = value.into(),
        _ => return Err(ConfigError::invalid(key, "is not a tls setting")),
    }
    Ok(())
}

/// Sets `redis.<name>` from the text `value`.
///
/// # Errors
///
/// [`ConfigError::Invalid`] if the value has the wrong type or `name` is not
/// a redis key.
pub(crate) fn set_redis(
    redis: &mut RedisConfig,
    name: &str,
    value: &str,
) -> Result<(), ConfigError> {
    let key = format!("redis.{name}");
    let key = key.as_str();
    match name {
        "url" => redis.url = value.to_owned(),
        "pusher_channel" => redis.pusher_channel = value.to_owned(),
        "incus_channel" => redis.incus_channel = value.to_owned(),
        "incus_queue" => redis.incus_queue = value.to_owned(),
        "instance" => redis.instance = Some(value.to_owned()),
        "reconnect_max_ms" => {
            redis.reconnect_max = Duration::from_millis(int_in(key, value, 0, u64::MAX.into())?);
        }
        _ => return Err(ConfigError::invalid(key, "is not a redis setting")),
    }
    Ok(())
}

/// Sets `incus.<name>` from the text `value`. The push keys that depend on
/// one another go to `push`, resolved once every source is applied.
///
/// # Errors
///
/// [`ConfigError::Invalid`] if the value has the wrong type or `name` is not
/// an incus key.
pub(crate) fn set_incus(
    incus: &mut IncusConfig,
    push: &mut PushKeys,
    name: &str,
    value: &str,
) -> Result<(), ConfigError> {
    let key = format!("incus.{name}");
    let key = key.as_str();
    match name {
        "client_broadcasts" => incus.client_broadcasts = bool_of(key, value)?,
        "connection_timeout" => incus.connection_timeout = secs(key, value)?,
        "longpoll_killswitch" => incus.longpoll_killswitch = value.to_owned(),
        "mailbox_messages" => incus.mailbox_messages = usize_of(key, value)?,
        "mailbox_ttl_secs" => incus.mailbox_ttl = secs(key, value)?,
        "presence_window_secs" => incus.presence_window = secs(key, value)?,
        "auth_timeout_secs" => incus.auth_timeout = secs(key, value)?,
        "ping_interval_secs" => incus.ping_interval = secs(key, value)?,
        "client_commands_per_sec" => incus.client_commands_per_sec = usize_of(key, value)?,
        "client_commands_burst" => incus.client_commands_burst = usize_of(key, value)?,
        "max_lp_sessions" => incus.max_lp_sessions = usize_of(key, value)?,
        "datadog_enabled" => incus.datadog_enabled = bool_of(key, value)?,
        "datadog_host" => incus.datadog_host = value.trim().to_owned(),
        "datadog_port" => incus.datadog_port = port(key, value)?,
        "datadog_interval_secs" => incus.datadog_interval = secs(key, value)?,
        "apns_enabled" => push.apns_enabled = bool_of(key, value)?,
        "apns_key_file" => push.key_file = path_of(value),
        "apns_key_id" => push.key_id = text_of(value),
        "apns_team_id" => push.team_id = text_of(value),
        "apns_push_type" => {
            push.push_type = match value.trim() {
                t @ ("alert" | "background") => t.to_owned(),
                _ => {
                    return Err(ConfigError::invalid(
                        key,
                        format!("expected alert or background, got {value:?}"),
                    ));
                }
            };
        }
        "apns_priority" => {
            push.priority = match value.trim() {
                "10" => 10,
                "5" => 5,
                _ => {
                    return Err(ConfigError::invalid(
                        key,
                        format!("expected 10 (now) or 5 (power-aware), got {value:?}"),
                    ));
                }
            };
        }
        "apns_expiration_secs" => push.expiration = secs(key, value)?,
        "ios_push_sound" => incus.push.ios_push_sound = value.to_owned(),
        "ios_error_queue" => incus.push.ios_error_queue = value.to_owned(),
        "android_error_queue" => incus.push.android_error_queue = value.to_owned(),
        "gcm_enabled" => push.gcm_enabled = bool_of(key, value)?,
        "fcm_enabled" => push.fcm_enabled = bool_of(key, value)?,
        "fcm_project_id" => push.project_id = text_of(value),
        "fcm_service_account_file" => push.service_account_file = path_of(value),
        "fcm_url" => push.fcm_url = base_url(key, value)?,
        "fcm_token_url" => {
            push.token_url = text_of(value).map(|url| http_url(key, &url)).transpose()?;
        }
        "push_queue" => incus.push.queue = usize_of(key, value)?,
        "push_concurrency" => incus.push.concurrency = usize_of(key, value)?,
        "push_retry_secs" => incus.push.retry_for = secs(key, value)?,
        "push_timeout_secs" => incus.push.timeout = secs(key, value)?,
        "pushormessage_connected" => incus.push.connected_is_active = bool_of(key, value)?,
        "redis_activity_consumers" | "redis_connection_pool_size" => {
            usize_of(key, value)?;
        }
        "gcm_api_key" => {
            if !value.trim().is_empty() {
                ignore(
                    incus,
                    "gcm_api_key (the legacy GCM/FCM API is gone; set fcm_service_account_file)",
                );
            }
        }
        "apns_production_url" | "apns_sandbox_url" => ignore_gateway(incus, name, value),
        _ => match apns_build_key(name) {
            Some((_, "url")) => ignore_gateway(incus, name, value),
            Some((build, "cert")) => push.builds[build].cert = path_of(value),
            Some((build, "private_key")) => push.builds[build].private_key = path_of(value),
            Some((build, "key_file")) => push.builds[build].key_file = path_of(value),
            Some((build, "key_id")) => push.builds[build].key_id = text_of(value),
            Some((build, "team_id")) => push.builds[build].team_id = text_of(value),
            Some((build, _)) => push.builds[build].topic = text_of(value),
            None => return Err(ConfigError::invalid(key, "is not an incus setting")),
        },
    }
    Ok(())
}

/// Records an Incus key that is set but has no effect, for the start-up
/// warning: `entry` is the key and why.
fn ignore(incus: &mut IncusConfig, entry: &str) {
    if !incus.unsupported.iter().any(|e| e == entry) {
        incus.unsupported.push(entry.to_owned());
    }
}

/// The URLs of Apple's legacy binary gateway (`apns_<build>_url`,
/// `apns_production_url`, `apns_sandbox_url`): accepted, warned about when
/// set.
fn ignore_gateway(incus: &mut IncusConfig, name: &str, value: &str) {
    if !value.trim().is_empty() {
        let entry = format!("{name} (the legacy binary gateway is gone; stapes uses APNs HTTP/2)");
        ignore(incus, &entry);
    }
}

/// Trimmed text; empty means unset.
fn text_of(value: &str) -> Option<String> {
    Some(value.trim()).filter(|v| !v.is_empty()).map(str::to_owned)
}

/// A path; empty means unset.
fn path_of(value: &str) -> Option<PathBuf> {
    text_of(value).map(PathBuf::from)
}

/// A trimmed `http://` or `https://` URL.
/// An http(s) URL with no path: stapes appends `/v1/projects/…`, and a
/// base that already holds a path would turn every send into a 404, which
/// would read as a dead token.
fn base_url(key: &str, value: &str) -> Result<String, ConfigError> {
    let url = http_url(key, value)?;
    let url = url.trim_end_matches('/');
    let after_scheme = url.split_once("://").map_or("", |(_, rest)| rest);
    if after_scheme.contains(['/', '?', '#']) {
        return Err(ConfigError::invalid(
            key,
            format!(
                "expected a base URL without a path, like https://fcm.googleapis.com, got {value:?}"
            ),
        ));
    }
    Ok(url.to_owned())
}

fn http_url(key: &str, value: &str) -> Result<String, ConfigError> {
    let url = value.trim();
    if !is_http_url(url) {
        return Err(ConfigError::invalid(
            key,
            format!("expected an http:// or https:// URL, got {value:?}"),
        ));
    }
    Ok(url.to_owned())
}

/// Sets `apps[index].<name>` from the text `value`.
///
/// # Errors
///
/// [`ConfigError::Invalid`] if the value has the wrong type or `name` is not
/// an app key.
pub(crate) fn set_app(
    app: &mut AppConfig,
    index: usize,
    name: &str,
    value: &str,
) -> Result<(), ConfigError> {
    let key = app_key(index, name);
    let key = key.as_str();
    match name {
        "id" => app.id = value.to_owned(),
        "key" => app.key = value.to_owned(),
        "secret" => app.secret = value.to_owned(),
        "enabled" => app.enabled = bool_of(key, value)?,
        "client_events" => app.client_events = bool_of(key, value)?,
        "only_ssl" => app.only_ssl = bool_of(key, value)?,
        "max_connections" => app.max_connections = Some(usize_of(key, value)?),
        "max_event_bytes" => app.max_event_bytes = usize_of(key, value)?,
        "max_presence_members" => app.max_presence_members = usize_of(key, value)?,
        "max_presence_user_info_bytes" => {
            app.max_presence_user_info_bytes = usize_of(key, value)?;
        }
        "max_presence_user_id_chars" => app.max_presence_user_id_chars = usize_of(key, value)?,
        "client_event_rate" => {
            app.client_event_rate = int_in(key, value, 0, u32::MAX.into())?;
        }
        "max_channel_name_chars" => app.max_channel_name_chars = usize_of(key, value)?,
        "max_event_name_chars" => app.max_event_name_chars = usize_of(key, value)?,
        "subscription_count" => app.subscription_count = bool_of(key, value)?,
        "cache_ttl_secs" => app.cache_ttl = secs(key, value)?,
        "authorized_timeout_secs" => app.authorized_timeout = Some(secs(key, value)?),
        "webhook_delay_ms" => app.webhook_delay = millis(key, value)?,
        "webhook_batch_ms" => app.webhook_batch = millis(key, value)?,
        "webhook_batch_max" => app.webhook_batch_max = usize_of(key, value)?,
        _ => return Err(ConfigError::invalid(key, "is not an app setting")),
    }
    Ok(())
}

/// `apps[<index>].<name>`.
pub(crate) fn app_key(index: usize, name: &str) -> String {
    format!("apps[{index}].{name}")
}

fn port(key: &str, value: &str) -> Result<u16, ConfigError> {
    int_in(key, value, 1, u16::MAX.into())
}

fn usize_of(key: &str, value: &str) -> Result<usize, ConfigError> {
    int_in(key, value, 0, u64::MAX.into())
}

fn millis(key: &str, value: &str) -> Result<Duration, ConfigError> {
    int_in(key, value, 0, u64::MAX.into()).map(Duration::from_millis)
}

fn secs(key: &str, value: &str) -> Result<Duration, ConfigError> {
    int_in(key, value, 0, u64::MAX.into()).map(Duration::from_secs)
}

/// An integer in `min..=max` that fits `T`, in decimal.
fn int_in<T: TryFrom<i128>>(
    key: &str,
    value: &str,
    min: i128,
    max: i128,
) -> Result<T, ConfigError> {
    let n = value.trim().parse::<i128>().ok();
    n.filter(|n| (min..=max).contains(n)).and_then(|n| T::try_from(n).ok()).ok_or_else(|| {
        let range = if max > i128::from(u32::MAX) {
            format!("an integer of at least {min}")
        } else {
            format!("an integer from {min} to {max}")
        };
        ConfigError::invalid(key, format!("expected {range}, got {value:?}"))
    })
}

fn bool_of(key: &str, value: &str) -> Result<bool, ConfigError> {
    match value.trim() {
        v if v.eq_ignore_ascii_case("true") => Ok(true),
        v if v.eq_ignore_ascii_case("false") => Ok(false),
        _ => Err(ConfigError::invalid(key, format!("expected true or false, got {value:?}"))),
    }
}

fn ip_addr(key: &str, value: &str) -> Result<IpAddr, ConfigError> {
    value.trim().parse::<IpAddr>().map_err(|_| {
        ConfigError::invalid(
            key,
            format!("expected an IP address such as 127.0.0.1, 0.0.0.0 or ::, got {value:?}"),
        )
    })
}

/// Turns a serde-saphyr error into a [`ConfigError`], naming the full key
/// path of an unknown key, or else the key on the line the error points at.
fn yaml_error(text: &str, original: &str, file: &str, err: &serde_saphyr::Error) -> ConfigError {
    let err = err.without_snippet();
    if let serde_saphyr::Error::SerdeUnknownField { field, expected, .. } = err {
        return ConfigError::UnknownKey {
            file: file.to_owned(),
            key: unknown_key_path(text, field, expected),
        };
    }
    if let serde_saphyr::Error::DuplicateMappingKey { key: Some(key), location } = err {
        return ConfigError::Yaml {
            file: file.to_owned(),
            message: format!(
                "duplicate key \"{key}\" at line {}, column {}",
                location.line(),
                location.column()
            ),
        };
    }
    let rendered = err.to_string();
    let mut message = rendered.strip_prefix("error: ").unwrap_or(&rendered).to_owned();
    let key = err
        .location()
        .and_then(|at| usize::try_from(at.line()).ok()?.checked_sub(1))
        .and_then(|line| original.lines().nth(line))
        .and_then(key_on_line);
    if let Some(key) = key {
        message = format!("{message} (at key \"{key}\")");
    }
    ConfigError::Yaml { file: file.to_owned(), message }
}

/// The mapping key a line starts with, if it looks like `key: value`.
fn key_on_line(line: &str) -> Option<&str> {
    let line = line.trim_start().trim_start_matches("- ").trim_start();
    let (key, _) = line.split_once(':')?;
    let simple = !key.is_empty() && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    simple.then_some(key)
}

/// The path of an unknown `field`, found from the section it was rejected by.
/// serde lists a struct's fields in declaration order, so the first expected
/// name tells the sections apart.
fn unknown_key_path(text: &str, field: &str, expected: &[&str]) -> String {
    match expected.first().copied() {
        Some("host") => format!("server.{field}"),
        Some("port") => format!("tls.{field}"),
        Some("url") => format!("redis.{field}"),
        Some("event_types") => format!("apps[].webhooks[].{field}"),
        Some("client_broadcasts") => format!("incus.{field}"),
        Some("id") => match app_index_with_key(text, field) {
            Some(index) => app_key(index, field),
            None => format!("apps[].{field}"),
        },
        _ => field.to_owned(),
    }
}

/// Index of the first app that has `field` as a key. Parsing stops at the
/// first unknown key, so that app is the one the error is about.
fn app_index_with_key(text: &str, field: &str) -> Option<usize> {
    #[derive(Deserialize)]
    struct Apps {
        apps: Vec<HashMap<String, IgnoredAny>>,
    }
    let apps: Apps = serde_saphyr::from_str(text).ok()?;
    apps.apps.iter().position(|app| app.contains_key(field))
}
