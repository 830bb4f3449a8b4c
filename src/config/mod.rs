//! Typed configuration: what `config.yml` and the environment may set.
//!
//! Each key is one field of the structs below, read with serde; `config.yml`
//! at the repo root documents every key, default, unit and variable.
//! [`load_file`] and [`embedded_default`] stack the sources, lowest first:
//! the defaults, the Incus keys of `incus:` that stand for other sections,
//! the file (or the embedded demo app), Incus's README variables, then
//! `STAPES_*`. An IPÊ file is first turned into these keys (`ipe.rs`), and
//! its deployments' variables take the place of Incus's. Then the push keys are resolved (credential files read) and
//! [`validate()`] checks meaning across keys. Any failure stops start-up with
//! a [`ConfigError`] naming the key, and the variable it came from.
//!
//! # Libraries, and why
//!
//! - **figment2** 0.11 (the maintained fork of figment 0.10, whose last
//!   release is from 2024) stacks the sources. Each value keeps the source
//!   it came from, so an error names the key path and the variable, and a
//!   key set from the environment is found again for [`validate()`]'s errors.
//!   Its `Env` provider is not used: it reads the process environment, where
//!   tests pass a table, and maps names by prefix, where each section has
//!   its own; a variable here is a one-key source named after it.
//! - **serde-saphyr** parses the YAML (serde_yaml and serde_yml are
//!   unmaintained), with options that keep `0123` and `yes` as text. Its
//!   figment provider is not used because it takes no options, nor its
//!   `${VAR}` expansion: that expands only unquoted values (or, in its
//!   Compose mode, blanks unset variables and expands a bare `$NAME`),
//!   while `secret: "${APP_SECRET}"`, references in flow mappings, an error
//!   for an unset variable and a literal `$` in a secret are all promised.
//!   So `${VAR}` stays a small textual pass of ours, before parsing.
//! - **clap** (in `main.rs`) reads the command line.

use std::{net::IpAddr, path::PathBuf, sync::Arc, time::Duration};

use serde::Deserialize;

/// Returns (from the enclosing function) a [`ConfigError::Invalid`] for
/// `key`, with the formatted message.
macro_rules! bail {
    ($key:expr, $($message:tt)+) => {
        return Err(ConfigError::invalid($key, format!($($message)+)))
    };
}

/// [`bail!`] unless `ok` holds.
macro_rules! ensure {
    ($ok:expr, $key:expr, $($message:tt)+) => {
        if !$ok {
            bail!($key, $($message)+);
        }
    };
}

mod de;
mod error;
mod ipe;
mod load;
mod push;
mod validate;

use de::{leaf, millis, secs};
pub use error::ConfigError;
pub use ipe::IPE_ENV;
pub(crate) use load::expand;
pub use load::{Env, Format, embedded_default, env_vars, load_file};
pub use validate::validate;

pub use crate::core::app::{AppConfig, WebhookConfig};

/// The whole server configuration, immutable once the shards start.
#[derive(Debug, Clone, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a mapping with the keys server, tls, redis, incus and apps"
)]
pub struct Config {
    /// Listener, runtime and limit settings shared by every app.
    #[serde(default)]
    pub server: ServerConfig,
    /// Optional TLS listener (a second port); `None` serves plain text only.
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    /// The apps this instance serves; never empty after validation.
    #[serde(default, deserialize_with = "de::apps")]
    pub apps: Vec<Arc<AppConfig>>,
    /// Optional Redis bridge; `None` (the default) runs without Redis at all.
    #[serde(default)]
    pub redis: Option<RedisConfig>,
    /// The Incus endpoints (`/socket`, `/lp`, `/ping`), always served.
    #[serde(default)]
    pub incus: IncusConfig,
    /// What the file set that stapes ignores, each with why, for the
    /// start-up log (IPÊ's `profiling`).
    #[serde(skip)]
    pub notes: Vec<String>,
}

/// Server-wide settings (`server:`).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields, expecting = "a mapping for the server section")]
pub struct ServerConfig {
    /// Address of the plain listener. Default `127.0.0.1`.
    #[serde(deserialize_with = "leaf")]
    pub host: IpAddr,
    /// Port of the plain listener (HTTP API and WebSocket); 0 lets the
    /// kernel pick a free one (the log names it). Default 6001.
    #[serde(deserialize_with = "de::any_port")]
    pub port: u16,
    /// Shards (pinned runtimes); `None` (0 in the file) is one per core.
    #[serde(deserialize_with = "de::shards")]
    pub shards: Option<usize>,
    /// `activity_timeout` announced to clients, and the idle time before a
    /// ping (`activity_timeout_secs`). Default 120 s.
    #[serde(rename = "activity_timeout_secs", deserialize_with = "secs")]
    pub activity_timeout: Duration,
    /// Time a pinged connection has to answer before 4201. Default 30 s.
    #[serde(rename = "pong_timeout_secs", deserialize_with = "secs")]
    pub pong_timeout: Duration,
    /// Node-wide connections; beyond it WebSockets get 4100. Default 100,000.
    #[serde(deserialize_with = "leaf")]
    pub max_connections: usize,
    /// Largest WebSocket message; larger closes with 1009. Default 64 KiB.
    #[serde(deserialize_with = "leaf")]
    pub max_message_bytes: usize,
    /// Bytes queued for one connection before it is closed with 4100 as a
    /// slow consumer. Default 1 MiB.
    #[serde(deserialize_with = "leaf")]
    pub max_outbox_bytes: usize,
    /// Largest HTTP request head; larger gets 431/400. Default 8 KiB.
    #[serde(deserialize_with = "leaf")]
    pub max_header_bytes: usize,
    /// Largest HTTP request body; larger gets 413. Default 256 KiB.
    #[serde(deserialize_with = "leaf")]
    pub max_body_bytes: usize,
    /// Idle time before a keep-alive HTTP connection (or one that never
    /// finishes its request head) is closed. Default 30 s.
    #[serde(rename = "http_idle_timeout_secs", deserialize_with = "secs")]
    pub http_idle_timeout: Duration,
    /// Longest a graceful shutdown waits for connections to drain. Default 5 s.
    #[serde(rename = "shutdown_grace_secs", deserialize_with = "secs")]
    pub shutdown_grace: Duration,
    /// Longest a write to a peer may make no progress before the connection
    /// is closed (`write_timeout_secs`). Default 30 s.
    #[serde(rename = "write_timeout_secs", deserialize_with = "secs")]
    pub write_timeout: Duration,
    /// Take a missing `protocol` query parameter as 7 (pusher-js always
    /// sends it); `false` closes with 4008. Default true.
    #[serde(deserialize_with = "leaf")]
    pub allow_missing_protocol: bool,
    /// Log filter, e.g. `info` or `stapes=debug`. Default `info`.
    #[serde(deserialize_with = "leaf")]
    pub log: String,
    /// PEM CA certificates trusted for `https://` webhook URLs besides the
    /// system's, for receivers behind a private CA. Default none.
    #[serde(deserialize_with = "leaf")]
    pub webhook_ca_file: Option<PathBuf>,
    /// Serve `GET /metrics` (Prometheus text) on the plain listener, to
    /// anyone who can reach it. Default true.
    #[serde(deserialize_with = "leaf")]
    pub metrics: bool,
    /// HTTP-transport sessions (pusher-js's `xhr_streaming` and
    /// `xhr_polling`) open on this node at most; beyond it a new session is
    /// closed with 4100. They count towards `max_connections` too. Default
    /// 10,000.
    #[serde(deserialize_with = "leaf")]
    pub max_http_sessions: usize,
    /// How long an HTTP-transport session lives with no receiving request
    /// (stream or poll) open, before it is closed as gone
    /// (`http_session_timeout_secs`). Default 15 s.
    #[serde(rename = "http_session_timeout_secs", deserialize_with = "secs")]
    pub http_session_timeout: Duration,
    /// Serve the debug console: the page at `GET /console` and its
    /// WebSocket at `/console/stream`, which is signed with an app's key
    /// and secret. Default false (both paths are 404).
    #[serde(deserialize_with = "leaf")]
    pub console: bool,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            host: IpAddr::from([127, 0, 0, 1]),
            port: 6001,
            shards: None,
            activity_timeout: Duration::from_secs(120),
            pong_timeout: Duration::from_secs(30),
            max_connections: 100_000,
            max_message_bytes: 64 * 1024,
            max_outbox_bytes: 1024 * 1024,
            max_header_bytes: 8 * 1024,
            max_body_bytes: 256 * 1024,
            http_idle_timeout: Duration::from_secs(30),
            shutdown_grace: Duration::from_secs(5),
            write_timeout: Duration::from_secs(30),
            allow_missing_protocol: true,
            webhook_ca_file: None,
            log: "info".to_owned(),
            metrics: true,
            max_http_sessions: 10_000,
            http_session_timeout: Duration::from_secs(15),
            console: false,
        }
    }
}

/// The TLS listener (`tls:`), on a second port of the same host.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields, expecting = "a mapping for the tls section")]
pub struct TlsConfig {
    /// Port of the TLS listener. Default 6002.
    #[serde(deserialize_with = "leaf")]
    pub port: u16,
    /// PEM certificate chain. Required.
    #[serde(deserialize_with = "leaf")]
    pub cert_file: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1). Required.
    #[serde(deserialize_with = "leaf")]
    pub key_file: PathBuf,
}

impl Default for TlsConfig {
    fn default() -> Self {
        Self { port: 6002, cert_file: PathBuf::new(), key_file: PathBuf::new() }
    }
}

/// The Redis bridge (`redis:`): Pusher events published on a Redis
/// channel, and Incus commands from a channel and a list.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields, expecting = "a mapping for the redis section")]
pub struct RedisConfig {
    /// `redis://[user:password@]host[:port][/db]` or `unix:///path`. Required.
    #[serde(deserialize_with = "leaf")]
    pub url: String,
    /// Channel of Pusher events. Default [`RedisConfig::DEFAULT_PUSHER_CHANNEL`].
    #[serde(deserialize_with = "leaf")]
    pub pusher_channel: String,
    /// Incus pub/sub channel (Incus `redis_message_channel`). Default `Incus`.
    #[serde(deserialize_with = "leaf")]
    pub incus_channel: String,
    /// Incus command list (Incus `redis_message_queue`). Default `Incus_Queue`.
    #[serde(deserialize_with = "leaf")]
    pub incus_queue: String,
    /// Names this instance's processing list, `<incus_queue>:processing:<instance>`,
    /// which a restarted instance must find again. `None` means
    /// `<hostname>:<server.port>`.
    #[serde(deserialize_with = "leaf")]
    pub instance: Option<String>,
    /// Longest wait between reconnection attempts. Default 10 s.
    #[serde(rename = "reconnect_max_ms", deserialize_with = "millis")]
    pub reconnect_max: Duration,
    /// How the Redis deployment is reached. Default [`RedisMode::Standalone`].
    #[serde(deserialize_with = "leaf")]
    pub mode: RedisMode,
    /// `host:port` seeds: the cluster's nodes ([`RedisMode::Cluster`]) or the
    /// sentinels ([`RedisMode::Sentinel`]); unused standalone. A list, or
    /// comma-separated text (as in a variable). Default empty.
    #[serde(deserialize_with = "de::host_ports")]
    pub nodes: Vec<String>,
    /// The master's name the sentinels know; required with
    /// [`RedisMode::Sentinel`].
    #[serde(deserialize_with = "leaf")]
    pub sentinel_master: Option<String>,
    /// Password for every connection, `url`'s and those to `nodes`; `None`
    /// uses the one in `url`, if any. Never shown in errors or logs.
    #[serde(deserialize_with = "leaf")]
    pub password: Option<String>,
    /// TLS to Redis, for `url`, `nodes` and sentinels alike, as set; `None`
    /// (the default) means TLS iff `url` is `rediss://`, which
    /// [`RedisConfig::uses_tls`] resolves.
    #[serde(deserialize_with = "leaf")]
    pub tls: Option<bool>,
    /// PEM CA certificates trusted for Redis's certificate instead of the
    /// system's store; checked at load to exist and hold a certificate.
    #[serde(deserialize_with = "leaf")]
    pub tls_ca_file: Option<PathBuf>,
}

/// How the bridge reaches Redis (`redis.mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RedisMode {
    /// One server (or a proxy) at `url`.
    #[default]
    Standalone,
    /// Redis Cluster, discovered from `nodes` (or `url`); database 0 only.
    Cluster,
    /// The master named `sentinel_master`, found through the sentinels at `nodes`.
    Sentinel,
}

impl RedisConfig {
    /// Default Pusher bridge channel: namespaced so that it cannot collide
    /// with an application's own channels.
    pub const DEFAULT_PUSHER_CHANNEL: &str = "stapes:pusher";

    /// A bridge to `url` with every other field at its default.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            pusher_channel: Self::DEFAULT_PUSHER_CHANNEL.to_owned(),
            incus_channel: "Incus".to_owned(),
            incus_queue: "Incus_Queue".to_owned(),
            instance: None,
            reconnect_max: Duration::from_secs(10),
            mode: RedisMode::Standalone,
            nodes: Vec::new(),
            sentinel_master: None,
            password: None,
            tls: None,
            tls_ca_file: None,
        }
    }

    /// Whether connections to Redis use TLS: `tls` if set, else whether
    /// `url` is `rediss://`.
    pub fn uses_tls(&self) -> bool {
        self.tls.unwrap_or_else(|| self.url.trim_start().starts_with("rediss://"))
    }
}

impl Default for RedisConfig {
    fn default() -> Self {
        Self::new("")
    }
}

/// Incus settings (`incus:`, Incus spec §2.3), under Incus's own key
/// names. The section is shared with [`PushConfig`] and the credentials
/// that [`PushConfig::apns`] and [`PushConfig::fcm`] are resolved from.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, expecting = "a mapping for the incus section")]
pub struct IncusConfig {
    /// Whether clients may send `message` commands to others. Default true.
    #[serde(deserialize_with = "leaf")]
    pub client_broadcasts: bool,
    /// How long a long-poll waits before answering 204. Default 60 s (Incus's
    /// sample config; its code default, 60000 s, is a unit-change leftover).
    #[serde(deserialize_with = "secs")]
    pub connection_timeout: Duration,
    /// Redis key whose existence turns `/lp` off with 503. Default
    /// `longpoll_killswitch`.
    #[serde(deserialize_with = "leaf")]
    pub longpoll_killswitch: String,
    /// Messages kept per long-polling user between two polls. Default 32.
    #[serde(deserialize_with = "leaf")]
    pub mailbox_messages: usize,
    /// Longest a message waits for the next poll, and a mailbox outlives
    /// its user's last poll (`mailbox_ttl_secs`). Default 60 s.
    #[serde(rename = "mailbox_ttl_secs", deserialize_with = "secs")]
    pub mailbox_ttl: Duration,
    /// How long `setpresence true` counts as present. Default 60 s.
    #[serde(rename = "presence_window_secs", deserialize_with = "secs")]
    pub presence_window: Duration,
    /// Time a `/socket` client has to authenticate. Default 60 s.
    #[serde(rename = "auth_timeout_secs", deserialize_with = "secs")]
    pub auth_timeout: Duration,
    /// Time between the pings every `/socket` client gets. Default 20 s.
    #[serde(rename = "ping_interval_secs", deserialize_with = "secs")]
    pub ping_interval: Duration,
    /// Commands per second of one `/socket` client, or one long-polling
    /// user on one shard, once its burst is spent. Default 10.
    #[serde(deserialize_with = "leaf")]
    pub client_commands_per_sec: usize,
    /// Commands accepted at once before the rate applies. Default 20.
    #[serde(deserialize_with = "leaf")]
    pub client_commands_burst: usize,
    /// Long-poll users one shard keeps a mailbox for; a new one beyond it
    /// gets 503. Default 100000.
    #[serde(deserialize_with = "leaf")]
    pub max_lp_sessions: usize,
    /// Send the `incus.*` metrics over DogStatsD. Default false.
    #[serde(deserialize_with = "leaf")]
    pub datadog_enabled: bool,
    /// StatsD host name or address, resolved at start-up. Default `127.0.0.1`.
    #[serde(deserialize_with = "de::trimmed")]
    pub datadog_host: String,
    /// UDP port of the StatsD agent. Default 8125.
    #[serde(deserialize_with = "leaf")]
    pub datadog_port: u16,
    /// Time between two reports of the change since the last. Default 10 s.
    #[serde(rename = "datadog_interval_secs", deserialize_with = "secs")]
    pub datadog_interval: Duration,
    /// Incus keys set that have no effect, each with why, e.g.
    /// `gcm_api_key (the legacy GCM/FCM API is gone; …)`; start-up warns.
    #[serde(skip)]
    pub unsupported: Vec<String>,
    /// Mobile push: APNs and FCM (Incus spec §9).
    #[serde(skip)]
    pub push: PushConfig,
}

impl Default for IncusConfig {
    fn default() -> Self {
        Self {
            client_broadcasts: true,
            connection_timeout: Duration::from_secs(60),
            longpoll_killswitch: "longpoll_killswitch".to_owned(),
            mailbox_messages: 32,
            mailbox_ttl: Duration::from_secs(60),
            presence_window: Duration::from_secs(60),
            auth_timeout: Duration::from_secs(60),
            ping_interval: Duration::from_secs(20),
            client_commands_per_sec: 10,
            client_commands_burst: 20,
            max_lp_sessions: 100_000,
            datadog_enabled: false,
            datadog_host: "127.0.0.1".to_owned(),
            datadog_port: 8125,
            datadog_interval: Duration::from_secs(10),
            unsupported: Vec::new(),
            push: PushConfig::default(),
        }
    }
}

/// Mobile push (`incus:` keys, Incus spec §2.3 and §9.5): the platforms
/// that are on, with their credentials, and the push thread's limits.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct PushConfig {
    /// iOS push through APNs over HTTP/2 (`apns_enabled`). Default off.
    #[serde(skip)]
    pub apns: Option<ApnsConfig>,
    /// Android push through FCM HTTP v1 (`gcm_enabled` or `fcm_enabled`).
    #[serde(skip)]
    pub fcm: Option<FcmConfig>,
    /// `aps.sound` of every iOS push. Default `bingbong.aiff`, as Incus.
    #[serde(deserialize_with = "leaf")]
    pub ios_push_sound: String,
    /// Redis list of the Android tokens FCM refused.
    #[serde(deserialize_with = "leaf")]
    pub android_error_queue: String,
    /// Redis list of the iOS tokens APNs refused.
    #[serde(deserialize_with = "leaf")]
    pub ios_error_queue: String,
    /// Push jobs waiting beyond which new ones are dropped. Default 10000.
    #[serde(rename = "push_queue", deserialize_with = "leaf")]
    pub queue: usize,
    /// Requests in flight at once, per platform. Default 64.
    #[serde(rename = "push_concurrency", deserialize_with = "leaf")]
    pub concurrency: usize,
    /// Longest a notification is retried after 429, 5xx or a timeout
    /// (`push_retry_secs`). Default 60 s.
    #[serde(rename = "push_retry_secs", deserialize_with = "secs")]
    pub retry_for: Duration,
    /// Longest one request to APNs, FCM or the token endpoint may take
    /// (`push_timeout_secs`). Default 10 s.
    #[serde(rename = "push_timeout_secs", deserialize_with = "secs")]
    pub timeout: Duration,
    /// `pushormessage` also takes a user connected by any socket, anywhere,
    /// as active, not only one who sent `setpresence true`
    /// (`pushormessage_connected`). Default false: Incus's rule.
    #[serde(rename = "pushormessage_connected", deserialize_with = "leaf")]
    pub connected_is_active: bool,
}

impl Default for PushConfig {
    fn default() -> Self {
        Self {
            apns: None,
            fcm: None,
            ios_push_sound: "bingbong.aiff".to_owned(),
            android_error_queue: "Incus_Android_Error_Queue".to_owned(),
            ios_error_queue: "Incus_iOS_Error_Queue".to_owned(),
            queue: 10_000,
            concurrency: 64,
            retry_for: Duration::from_secs(60),
            timeout: Duration::from_secs(10),
            connected_is_active: false,
        }
    }
}

/// The APNs builds Incus knows, in the order its keys are listed.
pub const APNS_BUILDS: [&str; 4] = ["store", "enterprise", "beta", "development"];

/// APNs settings, present when `apns_enabled` is true.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApnsConfig {
    /// The builds with credentials; others are refused. Never empty.
    pub builds: Vec<ApnsBuild>,
    /// Default `apns-push-type`, `alert` or `background` (`apns_push_type`).
    pub push_type: String,
    /// Default `apns-priority`, 10 or 5 (`apns_priority`).
    pub priority: u8,
    /// How long APNs keeps a notification for an offline device
    /// (`apns_expiration_secs`); 0 is now or never, as Incus did.
    pub expiration: Duration,
}

/// One build's APNs destination and credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApnsBuild {
    /// `store`, `enterprise`, `beta` or `development`.
    pub name: String,
    /// `development` goes to the sandbox, the others to production.
    pub sandbox: bool,
    /// `apns-topic`, the bundle id (`apns_<build>_topic`); optional with a
    /// certificate, whose subject then names the app.
    pub topic: Option<String>,
    /// How this build signs in to APNs.
    pub auth: ApnsAuth,
}

impl ApnsBuild {
    /// The key (without `incus.`) of this build's token `field`, for
    /// errors: `apns_<build>_<field>` for its own token key, else `apns_<field>`.
    pub fn token_key(&self, field: &str) -> String {
        match &self.auth {
            ApnsAuth::Token { own: true, .. } => format!("apns_{}_{field}", self.name),
            _ => format!("apns_{field}"),
        }
    }
}

/// APNs credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApnsAuth {
    /// Token auth: the `.p8` key, its id and the team id, the build's own
    /// (`apns_<build>_key_file`, …) or the shared ones (`apns_key_file`, …).
    Token {
        /// PKCS#8 PEM file of the P-256 key.
        key_file: PathBuf,
        /// Key id.
        key_id: String,
        /// Team id.
        team_id: String,
        /// Whether the three are the build's own.
        own: bool,
    },
    /// Certificate auth (`apns_<build>_cert`, `apns_<build>_private_key`).
    Certificate {
        /// PEM certificate chain.
        cert_file: PathBuf,
        /// PEM private key (PKCS#8).
        key_file: PathBuf,
    },
}

/// FCM HTTP v1 settings, present when `gcm_enabled` or `fcm_enabled` is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FcmConfig {
    /// Firebase project (`fcm_project_id`); default: the service account's.
    pub project_id: String,
    /// The service account key, JSON (`fcm_service_account_file`).
    pub service_account_file: PathBuf,
    /// Base URL of the FCM API (`fcm_url`); `http://` for local mocks.
    pub url: String,
    /// OAuth2 token endpoint (`fcm_token_url`); default: the service
    /// account's `token_uri`, else Google's.
    pub token_url: Option<String>,
}
