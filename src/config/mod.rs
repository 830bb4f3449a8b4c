//! Typed configuration: what `config.yml` and the environment may set.
//!
//! Every field has a default (documented in `config.yml` at the repo root, which
//! mirrors these structs one to one). Loading, `${VAR}` expansion, environment
//! overrides and validation live in the submodules; a config that fails any of
//! them stops start-up with a [`ConfigError`] naming the offending key.
//!
//! - [`load_file`] reads `config.yml`: `${VAR}` expansion on the raw text,
//!   YAML into `deny_unknown_fields` structs, [`ENV_OVERRIDES`], the push
//!   keys resolved into [`PushConfig`] (credential files read), [`validate()`].
//! - [`embedded_default`] is the no-file start: one demo app from
//!   `STAPES_APP_*`, server defaults, the same overrides and validation.
//!
//! Precedence is environment, then file, then the defaults below.

use std::{net::IpAddr, path::PathBuf, sync::Arc, time::Duration};

mod env;
mod error;
mod file;
mod load;
mod push;
mod validate;

pub use env::{EMBEDDED_APP_ENV, ENV_OVERRIDES, INCUS_ENV, INCUS_README_ENV, INCUS_SECTION_ENV};
pub use error::ConfigError;
pub use load::{embedded_default, load_file};
pub use validate::validate;

pub use crate::core::app::{AppConfig, WebhookConfig};

/// The whole server configuration, immutable once the shards start.
#[derive(Debug, Clone)]
pub struct Config {
    /// Listener, runtime and limit settings shared by every app.
    pub server: ServerConfig,
    /// Optional TLS listener (a second port); `None` serves plain text only.
    pub tls: Option<TlsConfig>,
    /// The apps this instance serves; never empty after validation.
    pub apps: Vec<Arc<AppConfig>>,
    /// Optional Redis bridge; `None` (the default) runs without Redis at all.
    pub redis: Option<RedisConfig>,
    /// The Incus endpoints (`/socket`, `/lp`, `/ping`), always served.
    pub incus: IncusConfig,
}

/// Incus settings (`incus:` in `config.yml`, Incus spec §2.3). Key names
/// are Incus's own, so an Incus `config.yml` carries over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IncusConfig {
    /// Whether clients may send `message` commands to other clients.
    /// Default true, as in Incus.
    pub client_broadcasts: bool,
    /// How long a long-poll waits for a message before answering 204.
    /// Default 60 s (Incus's sample config; its code default, 60000 s, is
    /// a leftover of a unit change).
    pub connection_timeout: Duration,
    /// Redis key whose existence turns `/lp` off with 503 (needs Redis).
    /// Default `longpoll_killswitch`.
    pub longpoll_killswitch: String,
    /// Messages kept per long-polling user between two polls. Default 32.
    pub mailbox_messages: usize,
    /// Longest a message waits for the next poll, and how long a user's
    /// mailbox outlives their last poll. Default 60 s.
    pub mailbox_ttl: Duration,
    /// How long `setpresence true` counts as present. Default 60 s.
    pub presence_window: Duration,
    /// Time a `/socket` client has to authenticate. Default 60 s.
    pub auth_timeout: Duration,
    /// Time between the pings every `/socket` client gets. Default 20 s.
    pub ping_interval: Duration,
    /// Commands one `/socket` client, or one long-polling user on one
    /// shard, may send per second once its burst is spent; the excess is
    /// dropped and counted. Default 10.
    pub client_commands_per_sec: usize,
    /// Commands accepted at once before `client_commands_per_sec` applies.
    /// Default 20.
    pub client_commands_burst: usize,
    /// Long-poll users one shard keeps a session (mailbox) for; a poll for
    /// a new user beyond it is answered 503. Default 100000.
    pub max_lp_sessions: usize,
    /// Send the `incus.*` metrics over DogStatsD (`datadog_enabled`).
    /// Default false.
    pub datadog_enabled: bool,
    /// Where they go: a host name or address, resolved once at start-up.
    /// Default `127.0.0.1`.
    pub datadog_host: String,
    /// UDP port of the StatsD agent (fixed at 8125 in Incus). Default 8125.
    pub datadog_port: u16,
    /// Time between two reports: counters are sent as the change since the
    /// last report. Default 10 s.
    pub datadog_interval: Duration,
    /// Incus keys set in the config that stapes accepts but ignores, each
    /// as the key and why, e.g. `gcm_api_key (the legacy GCM/FCM API is
    /// gone; set fcm_service_account_file)`; start-up warns about each.
    pub unsupported: Vec<String>,
    /// Mobile push: APNs and FCM (Incus spec §9, keys in `incus:`).
    pub push: PushConfig,
}

/// Mobile push settings (`incus:` keys, Incus spec §2.3 and §9.5): which
/// platforms are on, their credentials, and the limits of the push thread.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushConfig {
    /// iOS push through APNs over HTTP/2 (`apns_enabled`). Default off.
    pub apns: Option<ApnsConfig>,
    /// Android push through FCM HTTP v1 (`gcm_enabled` or `fcm_enabled`).
    /// Default off.
    pub fcm: Option<FcmConfig>,
    /// `aps.sound` of every iOS push (`ios_push_sound`). Default
    /// `bingbong.aiff`, as Incus.
    pub ios_push_sound: String,
    /// Redis list receiving Android tokens FCM refused
    /// (`android_error_queue`). Default `Incus_Android_Error_Queue`.
    pub android_error_queue: String,
    /// Redis list receiving iOS tokens APNs refused (`ios_error_queue`).
    /// Default `Incus_iOS_Error_Queue`.
    pub ios_error_queue: String,
    /// Push jobs waiting for the push thread beyond which new ones are
    /// dropped and counted (`push_queue`). Default 10000.
    pub queue: usize,
    /// Requests in flight at once, per platform (`push_concurrency`).
    /// Default 64.
    pub concurrency: usize,
    /// Longest one notification is retried after 429, 5xx or a timeout
    /// before it counts as failed (`push_retry_secs`). Default 60 s.
    pub retry_for: Duration,
    /// Longest one request to APNs, FCM or the token endpoint may take
    /// (`push_timeout_secs`). Default 10 s.
    pub timeout: Duration,
    /// `pushormessage` also treats a user connected by any socket (any
    /// shard, any instance sharing Redis) as active, not only one who sent
    /// `setpresence` within the window (`pushormessage_connected`).
    /// Default false: Incus's rule, presence only.
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
    /// The builds that have credentials; a push for any other build is
    /// refused. Never empty.
    pub builds: Vec<ApnsBuild>,
    /// `apns-push-type` unless the command says otherwise
    /// (`apns_push_type`): `alert` or `background`. Default `alert`.
    pub push_type: String,
    /// `apns-priority` unless the command says otherwise (`apns_priority`):
    /// 10 (now) or 5 (power-aware). Default 10.
    pub priority: u8,
    /// How long APNs keeps a notification for a device that is offline
    /// (`apns_expiration_secs`), sent as the absolute `apns-expiration`;
    /// 0 sends `0` (deliver now or never, as Incus did). Default 86400 s.
    pub expiration: Duration,
}

/// One build's APNs destination and credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApnsBuild {
    /// `store`, `enterprise`, `beta` or `development`.
    pub name: String,
    /// `development` goes to the sandbox, the others to production.
    pub sandbox: bool,
    /// `apns-topic`, the app's bundle id (`apns_<build>_topic`); required
    /// with token auth, optional with a certificate (whose subject then
    /// names the app).
    pub topic: Option<String>,
    /// How this build signs in to APNs.
    pub auth: ApnsAuth,
}

impl ApnsBuild {
    /// The `incus:` key (without `incus.`) this build's token `field`
    /// (`key_file`, `key_id` or `team_id`) came from: `apns_<build>_<field>`
    /// when the build has its own token key, else the shared
    /// `apns_<field>`. For errors.
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
    /// Token auth: the `.p8` key, its 10-character id and the team id,
    /// either the build's own (`apns_<build>_key_file`,
    /// `apns_<build>_key_id`, `apns_<build>_team_id`) or the shared ones
    /// (`apns_key_file`, `apns_key_id`, `apns_team_id`).
    Token {
        /// PKCS#8 PEM file of the P-256 key.
        key_file: PathBuf,
        /// Key id.
        key_id: String,
        /// Team id.
        team_id: String,
        /// Whether the three came from the build's own keys rather than
        /// the shared ones.
        own: bool,
    },
    /// Certificate auth: the build's PEM client certificate
    /// (`apns_<build>_cert`) and its PKCS#8 PEM key
    /// (`apns_<build>_private_key`).
    Certificate {
        /// PEM certificate chain.
        cert_file: PathBuf,
        /// PEM private key (PKCS#8).
        key_file: PathBuf,
    },
}

/// FCM HTTP v1 settings, present when `gcm_enabled` (or `fcm_enabled`) is
/// true.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FcmConfig {
    /// Firebase project id (`fcm_project_id`); default: the service
    /// account's `project_id`.
    pub project_id: String,
    /// The service account key, JSON (`fcm_service_account_file`).
    pub service_account_file: PathBuf,
    /// Base URL of the FCM API (`fcm_url`). Default
    /// `https://fcm.googleapis.com`; `http://` is allowed for local mocks.
    pub url: String,
    /// OAuth2 token endpoint (`fcm_token_url`). Default: the service
    /// account's `token_uri`, else `https://oauth2.googleapis.com/token`.
    pub token_url: Option<String>,
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

/// Server-wide settings (`server:` in `config.yml`).
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Address of the plain listener. Default `127.0.0.1`.
    pub host: IpAddr,
    /// Port of the plain listener (HTTP API and WebSocket). Default 6001.
    pub port: u16,
    /// Number of shards (pinned runtimes); `None` means one per available core.
    pub shards: Option<usize>,
    /// `activity_timeout` announced in `connection_established`, and the idle
    /// time after which the server pings. Default 120 s.
    pub activity_timeout: Duration,
    /// How long a pinged connection has to answer before it is closed with
    /// 4201. Default 30 s.
    pub pong_timeout: Duration,
    /// Node-wide connection limit; beyond it new WebSockets get 4100. Default 100,000.
    pub max_connections: usize,
    /// Largest WebSocket message accepted; larger closes with 1009. Default 64 KiB.
    pub max_message_bytes: usize,
    /// Bytes queued for one connection before it counts as a slow consumer and
    /// is closed with 4100. Default 1 MiB.
    pub max_outbox_bytes: usize,
    /// Largest HTTP request head; larger gets 431/400. Default 8 KiB.
    pub max_header_bytes: usize,
    /// Largest HTTP request body; larger gets 413. Default 256 KiB.
    pub max_body_bytes: usize,
    /// Idle time after which a keep-alive HTTP connection (or one that never
    /// finishes its request head) is closed. Default 30 s.
    pub http_idle_timeout: Duration,
    /// Longest a graceful shutdown waits for connections to drain. Default 5 s.
    pub shutdown_grace: Duration,
    /// Accept requests whose `protocol` query parameter is missing, treating
    /// them as protocol 7 (pusher-js always sends it). `false` closes with 4008.
    /// Default true.
    pub allow_missing_protocol: bool,
    /// Log filter, e.g. `info` or `stapes=debug`. Default `info`.
    pub log: String,
    /// PEM file of extra CA certificates trusted for `https://` webhook
    /// URLs, on top of the system's; for receivers behind a private CA.
    /// Default none.
    pub webhook_ca_file: Option<PathBuf>,
    /// Serve `GET /metrics` (Prometheus text) on the plain listener, to
    /// anyone who can reach it. Default true.
    pub metrics: bool,
}

/// TLS listener settings (`tls:` in `config.yml`).
#[derive(Debug, Clone)]
pub struct TlsConfig {
    /// Port of the TLS listener (same host as the plain one).
    pub port: u16,
    /// PEM certificate chain.
    pub cert_file: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key_file: PathBuf,
}

/// The Redis bridge (`redis:` in `config.yml`): Pusher events published on
/// a Redis channel, and Incus commands from a channel and a list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisConfig {
    /// `redis://[user:password@]host[:port][/db]` or `unix:///path`. Required.
    pub url: String,
    /// Channel carrying Pusher events `{app_id, channel(s), name, data,
    /// socket_id?}`. Default [`RedisConfig::DEFAULT_PUSHER_CHANNEL`].
    pub pusher_channel: String,
    /// Incus pub/sub channel (Incus `redis_message_channel`). Default `Incus`.
    pub incus_channel: String,
    /// Incus command list (Incus `redis_message_queue`). Default `Incus_Queue`.
    pub incus_queue: String,
    /// Names this instance's processing list, `<incus_queue>:processing:<instance>`.
    /// It must stay the same across restarts, so that a restarted instance
    /// finds what it had taken but not handled. `None` means
    /// `<hostname>:<server.port>`.
    pub instance: Option<String>,
    /// Longest wait between reconnection attempts. Default 10 s.
    pub reconnect_max: Duration,
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
        }
    }
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
            allow_missing_protocol: true,
            webhook_ca_file: None,
            log: "info".to_owned(),
            metrics: true,
        }
    }
}
