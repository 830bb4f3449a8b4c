//! The thread-per-core topology: listeners and rings built on the main
//! thread, one pinned shard thread per core, and the main thread left to
//! wait for signals and tell the shards to stop.

// The runtime is where the clock is read; everything below it takes `now`.
#![allow(clippy::disallowed_methods)]

use std::{
    net::SocketAddr,
    sync::Arc,
    thread,
    time::{Duration, Instant},
};

use signal_hook::{
    consts::{SIGINT, SIGTERM},
    iterator::Signals,
};

pub use crate::io::shard::{Runtime, UnknownDriver};
use crate::{
    config::Config,
    core::{Apps, counters::Metrics},
    io::{
        bridge,
        bridge::{Bridge, BridgeError, BridgeInit},
        metrics::statsd::{Statsd, StatsdError},
        push::{PushError, PushService},
        rings, shard, tls,
        tls::TlsError,
        webhooks,
        webhooks::{WebhookError, Webhooks},
    },
    proto::msg::ShardMsg,
};

/// Why the server could not start or stopped abnormally.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// A listening port could not be bound (in use, or no permission).
    #[error("cannot listen on {addr} (server.port / tls.port): {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// The TLS certificate or key could not be loaded.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// `STAPES_IO_DRIVER` has an unknown value.
    #[error(transparent)]
    Driver(#[from] UnknownDriver),
    /// Signal handlers or threads could not be set up.
    #[error("cannot start: {0}")]
    Io(#[from] std::io::Error),
    /// The Redis bridge could not start.
    #[error(transparent)]
    Bridge(#[from] BridgeError),
    /// The webhook thread could not start.
    #[error(transparent)]
    Webhooks(#[from] WebhookError),
    /// Push could not start (a credential file, the thread).
    #[error(transparent)]
    Push(#[from] PushError),
    /// The StatsD sender could not start.
    #[error(transparent)]
    Statsd(#[from] StatsdError),
    /// A shard stopped on its own; the node is no longer whole.
    #[error("shard {0} stopped unexpectedly: {1}")]
    ShardDied(usize, String),
}

/// Runs the server until SIGTERM or SIGINT, then shuts down gracefully:
/// no new connections, `pusher:error` 4200 and close 4200 to every client,
/// and at most `server.shutdown_grace` (plus a second) to drain.
pub fn run(config: Config, driver: Runtime) -> Result<(), RunError> {
    // Registered first, so a signal during start-up is not fatal by default.
    let mut signals = Signals::new([SIGTERM, SIGINT])?;
    let config = Arc::new(config);
    let server = &config.server;
    let shards = server
        .shards
        .unwrap_or_else(|| thread::available_parallelism().map_or(1, |n| n.get()))
        .max(1);
    let apps = Arc::new(Apps::new(config.apps.clone()));
    let admission = Arc::new(shard::admission::Admission::new(&apps, server.max_connections));
    let app_ids = config.apps.iter().map(|a| a.id.as_str().into()).collect();
    let metrics = Arc::new(Metrics::new(app_ids, shards));
    let tls_config = config.tls.as_ref().map(tls::server_config).transpose()?;
    let plain_addr = SocketAddr::new(server.host, server.port);
    let secure_addr = config.tls.as_ref().map(|t| SocketAddr::new(server.host, t.port));
    let bind = |addr: SocketAddr| {
        shard::listener::reuseport(addr).map_err(|source| RunError::Bind { addr, source })
    };
    // External producers: the control ring, plus the bridge's when Redis is on.
    let (links, mut control) = rings::build(shards, 1 + usize::from(config.redis.is_some()));
    let bridge_links = if config.redis.is_some() { control.pop() } else { None };
    let (mut uplinks, uplink_inbox) = if config.redis.is_some() {
        let (uplinks, inbox) = bridge::uplink::build(shards);
        (uplinks.into_iter().map(Some).collect(), Some(inbox))
    } else {
        ((0..shards).map(|_| None).collect::<Vec<_>>(), None)
    };
    let cpus = allowed_cpus();
    let webhooks_on = config.apps.iter().any(|a| !a.webhooks.is_empty());
    let (mut hook_outlets, hook_inlets) = if webhooks_on {
        let (outlets, inlets) = webhooks::rings(shards);
        (outlets.into_iter().map(Some).collect(), Some(inlets))
    } else {
        ((0..shards).map(|_| None).collect::<Vec<_>>(), None)
    };
    // Read even with no webhook configured, so that a bad path stops start-up.
    let hook_roots =
        server.webhook_ca_file.as_deref().map(webhooks::tls::load_ca_file).transpose()?;
    let webhooks = hook_inlets
        .map(|inlets| Webhooks::start(Arc::clone(&apps), inlets, hook_roots.unwrap_or_default()))
        .transpose()?;
    // Push commands come only from Redis; credentials were checked when
    // the config loaded, and are loaded here, so a bad key stops start-up.
    let push_counters = metrics.push();
    // Validation refused push without Redis, where its commands come from.
    let push = match &config.redis {
        Some(redis) => {
            let client = redis::Client::open(redis.url.as_str()).map_err(BridgeError::Url)?;
            PushService::start(&config.incus.push, client, Arc::clone(&push_counters))?
        }
        None => None,
    };
    let (push, push_handle) = push.unzip();
    let mut handles = Vec::with_capacity(shards);
    for (id, links) in links.into_iter().enumerate() {
        let init = shard::ShardInit {
            id,
            shards,
            cpu: (!cpus.is_empty()).then(|| cpus[id % cpus.len()]),
            config: Arc::clone(&config),
            apps: Arc::clone(&apps),
            admission: Arc::clone(&admission),
            metrics: Arc::clone(&metrics),
            tls: tls_config.clone(),
            plain: bind(plain_addr)?,
            secure: secure_addr.map(bind).transpose()?,
            links,
            uplink: uplinks[id].take(),
            driver,
            hooks: hook_outlets[id].take(),
        };
        let handle = thread::Builder::new()
            .name(format!("stapes-shard-{id}"))
            .spawn(move || shard::run(init))?;
        handles.push(handle);
    }
    let bridge = match (&config.redis, bridge_links) {
        (Some(redis), Some(links)) => Some(Bridge::start(BridgeInit {
            config: redis.clone(),
            instance: redis
                .instance
                .clone()
                .unwrap_or_else(|| bridge::default_instance(server.port)),
            apps: Arc::clone(&apps),
            links,
            uplink: uplink_inbox,
            incus: config.incus.clone(),
            counters: metrics.bridge(),
            push: push_handle,
            push_counters,
        })?),
        _ => None,
    };
    // Last, so that `incus.startup` goes out only once everything else started.
    let incus = &config.incus;
    let statsd = incus
        .datadog_enabled
        .then(|| {
            let (host, port) = (&incus.datadog_host, incus.datadog_port);
            Statsd::start(Arc::clone(&metrics), host, port, incus.datadog_interval)
        })
        .transpose()?;
    tracing::info!(
        shards,
        plain = %plain_addr,
        tls = ?secure_addr,
        apps = apps.len(),
        redis = config.redis.is_some(),
        webhooks = webhooks_on,
        "stapes listening"
    );
    for ignored in &config.incus.unsupported {
        tracing::warn!("ignoring incus.{ignored}");
    }
    let mut control = control.pop();
    let mut bridge_ended = false;
    loop {
        if let Some(signal) = signals.pending().next() {
            tracing::info!(signal, "shutting down");
            break;
        }
        if let Some(id) = handles.iter().position(|h| h.is_finished()) {
            let handle = handles.swap_remove(id);
            let why = match handle.join() {
                Ok(Ok(())) => "exited".to_owned(),
                Ok(Err(e)) => e.to_string(),
                Err(_) => "panicked".to_owned(),
            };
            if let Some(bridge) = bridge {
                bridge.stop(Instant::now() + Duration::from_secs(1));
            }
            if let Some(control) = control.as_mut() {
                control.broadcast(|| ShardMsg::Shutdown);
            }
            return Err(RunError::ShardDied(id, why));
        }
        if !bridge_ended && bridge.as_ref().is_some_and(Bridge::has_ended) {
            bridge_ended = true;
            tracing::error!("the redis bridge thread ended; serving local traffic without redis");
        }
        thread::sleep(Duration::from_millis(50));
    }
    // Stopped first, so nothing new reaches shards that are saying goodbye.
    if let Some(bridge) = bridge {
        bridge.stop(Instant::now() + Duration::from_secs(1));
    }
    if let Some(control) = control.as_mut() {
        control.broadcast(|| ShardMsg::Shutdown);
    }
    let deadline = Instant::now() + server.shutdown_grace + Duration::from_secs(1);
    while handles.iter().any(|h| !h.is_finished()) && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(20));
    }
    for handle in handles {
        if handle.is_finished() {
            if let Ok(Err(e)) = handle.join() {
                tracing::warn!("shard ended with an error: {e}");
            }
        } else {
            tracing::warn!("a shard did not stop within the grace period");
        }
    }
    if let Some(push) = push {
        push.stop(Instant::now() + Duration::from_secs(1));
    }
    // Last, so that the shards' final events had their chance to go out.
    if let Some(webhooks) = webhooks {
        webhooks.stop(Instant::now() + Duration::from_secs(1));
    }
    if let Some(statsd) = statsd {
        statsd.stop();
    }
    tracing::info!("stopped");
    Ok(())
}

/// The CPUs this process may run on, to pin shard `i` to the `i`-th.
fn allowed_cpus() -> Vec<usize> {
    // SAFETY: cpu_set_t is plain data; sched_getaffinity fills it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return Vec::new();
        }
        (0..libc::CPU_SETSIZE as usize).filter(|&cpu| libc::CPU_ISSET(cpu, &set)).collect()
    }
}
