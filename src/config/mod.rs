//! Typed configuration: what `config.yml` and the environment may set.
//!
//! Each key is one field of the structs below, read with serde; `config.yml`
//! at the repo root documents every key, default, unit and variable.
//! [`load_file`] and [`embedded_default`] stack the sources, lowest first:
//! the defaults, the Incus keys of `incus:` that stand for other sections,
//! the file (or the embedded demo app), Incus's README variables, then
//! `STAPES_*`. An IPÊ file is first turned into these keys (`ipe.rs`), and
//! its deployments' variables take the place of Incus's. Then the push keys
//! are resolved (credential files read) and [`validate()`] checks each
//! key's range and meaning across keys. Any failure stops start-up with
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

/// Declares a section of keys from one line per key,
/// `field["key"]: Type = default, "reader", check;`: its struct, its
/// [`Default`], its key names (`KEYS`, behind unknown-key errors and the
/// variables) and the checks of single keys (`check`, which [`validate()`]
/// runs). The key is the field's name unless given; the reader is the
/// field's `deserialize_with`; the check, if any, a rule of `validate.rs`.
/// Fields after `+` are no keys: they are resolved from other keys.
macro_rules! section {
    (
        $(#[$meta:meta])*
        $vis:vis struct $name:ident($section:literal) {
            $($(#[doc = $doc:literal])* $field:ident $([$key:literal])?:
            $ty:ty = $default:expr, $read:literal $(, $check:expr)?;)*
        } $(+ {$($(#[doc = $sdoc:literal])* $sfield:ident: $sty:ty = $sdefault:expr;)*})?
    ) => {
        $(#[$meta])*
        $vis struct $name {
            $($(#[doc = $doc])* $(#[serde(rename = $key)])? #[serde(deserialize_with = $read)]
            $vis $field: $ty,)*
            $($($(#[doc = $sdoc])* #[serde(skip)] $vis $sfield: $sty,)*)?
        }

        impl Default for $name {
            fn default() -> Self {
                Self { $($field: $default,)* $($($sfield: $sdefault,)*)? }
            }
        }

        impl $name {
            /// The keys of the section, as the file names them.
            pub(crate) const KEYS: &[&str] = &[$(key!($field $($key)?)),*];

            /// Checks each key's value on its own.
            #[allow(dead_code, reason = "not every section has single-key checks")]
            pub(crate) fn check(&self) -> Result<(), ConfigError> {
                $({
                    let _key = key!($field $($key)?);
                    $(validate::rule(format!("{}.{_key}", $section), &self.$field, $check)?;)?
                })*
                Ok(())
            }
        }
    };
}

/// The key of a [`section!`] field: the one given, else the field's name.
macro_rules! key {
    ($field:ident) => {
        stringify!($field)
    };
    ($field:ident $key:literal) => {
        $key
    };
}

mod de;
mod error;
mod ipe;
mod load;
mod push;
mod validate;

use de::leaf;
pub use error::ConfigError;
pub use ipe::IPE_ENV;
pub(crate) use load::expand;
pub use load::{Env, Format, embedded_default, env_vars, load_file};
pub use validate::validate;
use validate::{
    MAX_SHARDS, MIN_BODY_BYTES, MIN_HEADER_BYTES, MIN_MESSAGE_BYTES, at_least, at_least_up_to,
    log_filter, millis, not_empty, opt, pem_certificates, range, seconds, timeout,
};

pub use crate::core::app::{AppConfig, WebhookConfig};

/// A default in whole seconds.
const fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

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

section! {
    /// Server-wide settings (`server:`).
    #[derive(Debug, Clone, Deserialize)]
    #[serde(default, deny_unknown_fields, expecting = "a mapping for the server section")]
    pub struct ServerConfig("server") {
        /// Address of the plain listener. Default `127.0.0.1`.
        host: IpAddr = IpAddr::from([127, 0, 0, 1]), "leaf";
        /// Port of the plain listener (HTTP API and WebSocket); 0 lets the
        /// kernel pick a free one (the log names it). Default 6001.
        port: u16 = 6001, "de::any_port";
        /// Shards (pinned runtimes); `None` (0 in the file) is one per core.
        shards: Option<usize> = None, "de::shards", opt(range(1, MAX_SHARDS));
        /// `activity_timeout` announced to clients, and the idle time before a
        /// ping (`activity_timeout_secs`). Default 120 s.
        activity_timeout["activity_timeout_secs"]: Duration = secs(120), "leaf", timeout(1);
        /// Time a pinged connection has to answer before 4201. Default 30 s.
        pong_timeout["pong_timeout_secs"]: Duration = secs(30), "leaf", timeout(1);
        /// Node-wide connections; beyond it WebSockets get 4100. Default 100,000.
        max_connections: usize = 100_000, "leaf", at_least(1);
        /// Largest WebSocket message; larger closes with 1009. Default 64 KiB.
        max_message_bytes: usize = 64 * 1024, "leaf",
            // The frame decoder keeps the limit in 32 bits.
            at_least_up_to(MIN_MESSAGE_BYTES, u32::MAX as usize);
        /// Bytes queued for one connection before it is closed with 4100 as a
        /// slow consumer. Default 1 MiB.
        max_outbox_bytes: usize = 1024 * 1024, "leaf", at_least(1);
        /// Largest HTTP request head; larger gets 431/400. Default 8 KiB.
        max_header_bytes: usize = 8 * 1024, "leaf", at_least(MIN_HEADER_BYTES);
        /// Largest HTTP request body; larger gets 413. Default 256 KiB.
        max_body_bytes: usize = 256 * 1024, "leaf", at_least(MIN_BODY_BYTES);
        /// Idle time before a keep-alive HTTP connection (or one that never
        /// finishes its request head) is closed. Default 30 s.
        http_idle_timeout["http_idle_timeout_secs"]: Duration = secs(30), "leaf", timeout(1);
        /// Longest a graceful shutdown waits for connections to drain. Default 5 s.
        shutdown_grace["shutdown_grace_secs"]: Duration = secs(5), "leaf", timeout(0);
        /// Longest a write to a peer may make no progress before the connection
        /// is closed (`write_timeout_secs`). Default 30 s; at most an hour: a
        /// peer that takes nothing for longer is gone, and its queued bytes
        /// are memory held for nobody.
        write_timeout["write_timeout_secs"]: Duration = secs(30), "leaf", seconds(1, 3600);
        /// Take a missing `protocol` query parameter as 7 (pusher-js always
        /// sends it); `false` closes with 4008. Default true.
        allow_missing_protocol: bool = true, "leaf";
        /// Log filter, e.g. `info` or `stapes=debug`. Default `info`.
        log: String = "info".to_owned(), "leaf", log_filter;
        /// PEM CA certificates trusted for `https://` webhook URLs besides the
        /// system's, for receivers behind a private CA. Default none.
        webhook_ca_file: Option<PathBuf> = None, "leaf";
        /// Serve `GET /metrics` (Prometheus text) on the plain listener, to
        /// anyone who can reach it. Default true.
        metrics: bool = true, "leaf";
        /// HTTP-transport sessions (pusher-js's `xhr_streaming` and
        /// `xhr_polling`) open on this node at most; beyond it a new session is
        /// closed with 4100. They count towards `max_connections` too. Default
        /// 10,000.
        max_http_sessions: usize = 10_000, "leaf", at_least(1);
        /// How long an HTTP-transport session lives with no receiving request
        /// (stream or poll) open, before it is closed as gone
        /// (`http_session_timeout_secs`). Default 15 s.
        http_session_timeout["http_session_timeout_secs"]: Duration = secs(15), "leaf", timeout(1);
        /// Serve the debug console: the page at `GET /console` and its
        /// WebSocket at `/console/stream`, which is signed with an app's key
        /// and secret. Default false (both paths are 404).
        console: bool = false, "leaf";
        /// Have the kernel hand over a new connection only once its first
        /// bytes have arrived (`TCP_DEFER_ACCEPT`), so that accepting it and
        /// reading its request take one wake-up of its shard instead of
        /// two. Default true.
        defer_accept: bool = true, "leaf";
        /// Run the shard threads under Linux's `SCHED_BATCH` policy, so that
        /// a shard woken by new input does not preempt whatever runs on its
        /// core but takes its turn when that thread's slice ends, and finds
        /// more input waiting. Default true.
        batch_scheduling: bool = true, "leaf";
    }
}

section! {
    /// The TLS listener (`tls:`), on a second port of the same host.
    #[derive(Debug, Clone, Deserialize)]
    #[serde(default, deny_unknown_fields, expecting = "a mapping for the tls section")]
    pub struct TlsConfig("tls") {
        /// Port of the TLS listener. Default 6002.
        port: u16 = 6002, "leaf", range(1, u16::MAX);
        /// PEM certificate chain. Required.
        cert_file: PathBuf = PathBuf::new(), "leaf", not_empty;
        /// PEM private key (PKCS#8, PKCS#1 or SEC1). Required.
        key_file: PathBuf = PathBuf::new(), "leaf", not_empty;
    }
}

section! {
    /// The Redis bridge (`redis:`): Pusher events published on a Redis
    /// channel, and Incus commands from a channel and a list.
    #[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
    #[serde(default, deny_unknown_fields, expecting = "a mapping for the redis section")]
    pub struct RedisConfig("redis") {
        /// `redis://[user:password@]host[:port][/db]` or `unix:///path`. Required.
        url: String = String::new(), "leaf";
        /// Channel of Pusher events. Default [`RedisConfig::DEFAULT_PUSHER_CHANNEL`].
        pusher_channel: String = Self::DEFAULT_PUSHER_CHANNEL.to_owned(), "leaf", not_empty;
        /// Incus pub/sub channel (Incus `redis_message_channel`). Default `Incus`.
        incus_channel: String = "Incus".to_owned(), "leaf", not_empty;
        /// Incus command list (Incus `redis_message_queue`). Default `Incus_Queue`.
        incus_queue: String = "Incus_Queue".to_owned(), "leaf", not_empty;
        /// Names this instance's processing list, `<incus_queue>:processing:<instance>`,
        /// which a restarted instance must find again. `None` means
        /// `<hostname>:<server.port>`.
        instance: Option<String> = None, "leaf", opt(not_empty);
        /// Longest wait between reconnection attempts: from 100 ms (below, a
        /// Redis outage turns into a connection storm) to ten minutes (above,
        /// recovery takes longer than anyone would wait). Default 10 s.
        reconnect_max["reconnect_max_ms"]: Duration = secs(10), "de::millis", millis(100, 600_000);
        /// How the Redis deployment is reached. Default [`RedisMode::Standalone`].
        mode: RedisMode = RedisMode::Standalone, "leaf";
        /// `host:port` seeds: the cluster's nodes ([`RedisMode::Cluster`]) or the
        /// sentinels ([`RedisMode::Sentinel`]); unused standalone. A list, or
        /// comma-separated text (as in a variable). Default empty.
        nodes: Vec<String> = Vec::new(), "de::host_ports";
        /// The master's name the sentinels know; required with
        /// [`RedisMode::Sentinel`].
        sentinel_master: Option<String> = None, "leaf";
        /// Password for every connection, `url`'s and those to `nodes`; `None`
        /// uses the one in `url`, if any. Never shown in errors or logs.
        password: Option<String> = None, "leaf";
        /// TLS to Redis, for `url`, `nodes` and sentinels alike, as set; `None`
        /// (the default) means TLS iff `url` is `rediss://`, which
        /// [`RedisConfig::uses_tls`] resolves.
        tls: Option<bool> = None, "leaf";
        /// PEM CA certificates trusted for Redis's certificate instead of the
        /// system's store; checked at load to exist and hold a certificate.
        tls_ca_file: Option<PathBuf> = None, "leaf", opt(pem_certificates);
    }
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
        Self { url: url.into(), ..Self::default() }
    }

    /// Whether connections to Redis use TLS: `tls` if set, else whether
    /// `url` is `rediss://`.
    pub fn uses_tls(&self) -> bool {
        self.tls.unwrap_or_else(|| self.url.trim_start().starts_with("rediss://"))
    }
}

section! {
    /// Incus settings (`incus:`, Incus spec §2.3), under Incus's own key
    /// names. The section is shared with [`PushConfig`] and the credentials
    /// that [`PushConfig::apns`] and [`PushConfig::fcm`] are resolved from.
    #[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
    #[serde(default, expecting = "a mapping for the incus section")]
    pub struct IncusConfig("incus") {
        /// Whether clients may send `message` commands to others. Default true.
        client_broadcasts: bool = true, "leaf";
        /// How long a long-poll waits before answering 204. Default 60 s (Incus's
        /// sample config; its code default, 60000 s, is a unit-change leftover).
        /// Incus refuses 0 too (it exits): a poll must be able to wait.
        connection_timeout: Duration = secs(60), "leaf", timeout(1);
        /// Redis key whose existence turns `/lp` off with 503. Default
        /// `longpoll_killswitch`.
        longpoll_killswitch: String = "longpoll_killswitch".to_owned(), "leaf", not_empty;
        /// Messages kept per long-polling user between two polls. Default 32.
        mailbox_messages: usize = 32, "leaf", range(0, 10_000);
        /// Longest a message waits for the next poll, and a mailbox outlives
        /// its user's last poll (`mailbox_ttl_secs`). Default 60 s.
        mailbox_ttl["mailbox_ttl_secs"]: Duration = secs(60), "leaf", timeout(1);
        /// How long `setpresence true` counts as present. Default 60 s.
        presence_window["presence_window_secs"]: Duration = secs(60), "leaf", timeout(1);
        /// Time a `/socket` client has to authenticate. Default 60 s.
        auth_timeout["auth_timeout_secs"]: Duration = secs(60), "leaf", timeout(1);
        /// Time between the pings every `/socket` client gets. Default 20 s.
        ping_interval["ping_interval_secs"]: Duration = secs(20), "leaf", timeout(1);
        /// Commands per second of one `/socket` client, or one long-polling
        /// user on one shard, once its burst is spent. Default 10.
        client_commands_per_sec: usize = 10, "leaf", range(1, 100_000);
        /// Commands accepted at once before the rate applies. Default 20.
        client_commands_burst: usize = 20, "leaf", range(1, 100_000);
        /// Long-poll users one shard keeps a mailbox for; a new one beyond it
        /// gets 503. Default 100000.
        max_lp_sessions: usize = 100_000, "leaf", range(1, 100_000_000);
        /// Send the `incus.*` metrics over DogStatsD. Default false.
        datadog_enabled: bool = false, "leaf";
        /// StatsD host name or address, resolved at start-up. Default `127.0.0.1`.
        datadog_host: String = "127.0.0.1".to_owned(), "de::trimmed";
        /// UDP port of the StatsD agent. Default 8125.
        datadog_port: u16 = 8125, "leaf";
        /// Time between two reports of the change since the last. Default 10 s.
        datadog_interval["datadog_interval_secs"]: Duration = secs(10), "leaf";
    } + {
        /// Incus keys set that have no effect, each with why, e.g.
        /// `gcm_api_key (the legacy GCM/FCM API is gone; …)`; start-up warns.
        unsupported: Vec<String> = Vec::new();
        /// Mobile push: APNs and FCM (Incus spec §9).
        push: PushConfig = PushConfig::default();
    }
}

section! {
    /// Mobile push (`incus:` keys, Incus spec §2.3 and §9.5): the platforms
    /// that are on, with their credentials, and the push thread's limits.
    #[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
    #[serde(default)]
    pub struct PushConfig("incus") {
        /// `aps.sound` of every iOS push. Default `bingbong.aiff`, as Incus.
        ios_push_sound: String = "bingbong.aiff".to_owned(), "leaf";
        /// Redis list of the Android tokens FCM refused.
        android_error_queue: String = "Incus_Android_Error_Queue".to_owned(), "leaf";
        /// Redis list of the iOS tokens APNs refused.
        ios_error_queue: String = "Incus_iOS_Error_Queue".to_owned(), "leaf";
        /// Push jobs waiting beyond which new ones are dropped. Default 10000.
        queue["push_queue"]: usize = 10_000, "leaf", at_least(1);
        /// Requests in flight at once, per platform. Default 64.
        concurrency["push_concurrency"]: usize = 64, "leaf", at_least(1);
        /// Longest a notification is retried after 429, 5xx or a timeout
        /// (`push_retry_secs`). Default 60 s.
        retry_for["push_retry_secs"]: Duration = secs(60), "leaf", timeout(0);
        /// Longest one request to APNs, FCM or the token endpoint may take
        /// (`push_timeout_secs`). Default 10 s.
        timeout["push_timeout_secs"]: Duration = secs(10), "leaf", timeout(1);
        /// `pushormessage` also takes a user connected by any socket, anywhere,
        /// as active, not only one who sent `setpresence true`
        /// (`pushormessage_connected`). Default false: Incus's rule.
        connected_is_active["pushormessage_connected"]: bool = false, "leaf";
    } + {
        /// iOS push through APNs over HTTP/2 (`apns_enabled`). Default off.
        apns: Option<ApnsConfig> = None;
        /// Android push through FCM HTTP v1 (`gcm_enabled` or `fcm_enabled`).
        fcm: Option<FcmConfig> = None;
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
