//! The composition root: builds the rings, starts one pinned shard thread
//! per core and the threads beside them (Redis bridge, push, webhooks,
//! StatsD), then waits for the [`Shutdown`] signal and drains.
//!
//! The server is a library function in mini-redis's shape:
//! [`run`]`(listeners, config, shutdown)`. The caller binds the sockets
//! ([`Listeners::bind`], port 0 included) and decides when to stop; `main`
//! turns SIGTERM and SIGINT into [`Shutdown::trigger`], and a test triggers
//! it when it is done.

// The runtime is where the clock is read; everything below it takes `now`.
#![allow(clippy::disallowed_methods)]

use std::{
    net::{SocketAddr, TcpListener},
    sync::{Arc, Condvar, Mutex},
    thread,
    time::{Duration, Instant},
};

pub use crate::io::shard::{IoDriver, UnknownDriver};
use crate::{
    config::Config,
    core::{Apps, counters::Metrics},
    io::{
        bridge,
        bridge::{Bridge, BridgeError, BridgeInit},
        limits,
        metrics::statsd::{Statsd, StatsdError},
        push::{PushError, PushService},
        redis_link::RedisLink,
        rings, shard, threads, tls,
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

/// The listening sockets a server serves: one per shard per port, all on
/// the same port through `SO_REUSEPORT`, so the kernel spreads connections
/// over the shards. Bound by the caller, so that a test can bind port 0
/// and know the port before the server starts.
pub struct Listeners {
    plain: Vec<TcpListener>,
    secure: Vec<TcpListener>,
    driver: IoDriver,
}

impl Listeners {
    /// Binds `server.host:server.port` (and `tls.port` when TLS is on) once
    /// per shard. A port of 0 picks a free one, shared by every shard.
    ///
    /// # Errors
    ///
    /// [`RunError::Bind`] when a port is taken or not ours to bind.
    pub fn bind(config: &Config) -> Result<Self, RunError> {
        let server = &config.server;
        let shards = server
            .shards
            .unwrap_or_else(|| thread::available_parallelism().map_or(1, |n| n.get()))
            .max(1);
        let bind_all = |port: u16| -> Result<Vec<TcpListener>, RunError> {
            let mut addr = SocketAddr::new(server.host, port);
            let mut out = Vec::with_capacity(shards);
            for _ in 0..shards {
                let listener = shard::listener::reuseport(addr, server.defer_accept)
                    .map_err(|source| RunError::Bind { addr, source })?;
                addr = listener.local_addr()?;
                out.push(listener);
            }
            Ok(out)
        };
        let plain = bind_all(server.port)?;
        let secure = config.tls.as_ref().map(|t| bind_all(t.port)).transpose()?.unwrap_or_default();
        Ok(Self { plain, secure, driver: IoDriver::Auto })
    }

    /// Drives the sockets with `driver` instead of the default (io_uring,
    /// falling back to epoll).
    #[must_use]
    pub fn with_driver(mut self, driver: IoDriver) -> Self {
        self.driver = driver;
        self
    }

    /// The plain listener's address (its port, when bound to port 0).
    pub fn plain_addr(&self) -> Option<SocketAddr> {
        self.plain.first().and_then(|l| l.local_addr().ok())
    }

    /// The TLS listener's address, when TLS is on.
    pub fn tls_addr(&self) -> Option<SocketAddr> {
        self.secure.first().and_then(|l| l.local_addr().ok())
    }
}

/// Tells a running server to stop: clone it, hand one to [`run`], and call
/// [`Shutdown::trigger`] on another from any thread.
#[derive(Clone, Default)]
pub struct Shutdown(Arc<(Mutex<bool>, Condvar)>);

impl Shutdown {
    /// A signal nobody has given yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Asks the server to stop: no new connections, goodbyes to every
    /// client, a drain of at most `server.shutdown_grace`.
    pub fn trigger(&self) {
        let (flag, wake) = &*self.0;
        *flag.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = true;
        wake.notify_all();
    }

    /// Whether [`Shutdown::trigger`] was called.
    pub fn is_triggered(&self) -> bool {
        *self.0.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Waits up to `timeout` for the trigger; true once triggered.
    fn wait(&self, timeout: Duration) -> bool {
        let (flag, wake) = &*self.0;
        let guard = flag.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let (guard, _) = wake
            .wait_timeout_while(guard, timeout, |triggered| !*triggered)
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *guard
    }
}

/// Runs the server on `listeners` until `shutdown` is triggered, then shuts
/// down gracefully: no new connections, `pusher:error` 4200 and close 4200
/// to every client, and at most `server.shutdown_grace` (plus a second) to
/// drain. Every thread it starts logs to the caller's tracing dispatcher.
///
/// # Errors
///
/// [`RunError`] when a part cannot start (TLS files, threads, Redis URL,
/// push credentials) or a shard stops on its own.
pub fn run(listeners: Listeners, config: Config, shutdown: Shutdown) -> Result<(), RunError> {
    let config = Arc::new(config);
    let server = &config.server;
    let shards = listeners.plain.len().max(1);
    let driver = listeners.driver;
    let apps = Arc::new(Apps::new(config.apps.clone()));
    let budget = file_budget(&config, shards)?;
    let admission = Arc::new(
        crate::core::admission::Admission::new(&apps, budget.websockets, budget.sockets)
            .with_max_http_sessions(config.server.max_http_sessions),
    );
    let app_ids = config.apps.iter().map(|a| a.id.as_str().into()).collect();
    let metrics = Arc::new(Metrics::new(app_ids, shards));
    let tls_config = config.tls.as_ref().map(tls::server_config).transpose()?;
    let plain_addr = listeners.plain_addr();
    let secure_addr = listeners.tls_addr();
    let mut plain = listeners.plain.into_iter();
    let mut secure = listeners.secure.into_iter();
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
    // With Redis the node is part of a cluster (of one, perhaps): what must
    // be decided once for the cluster, its bridge decides through Redis.
    let clustered = config.redis.is_some();
    let (mut cluster_outlets, cluster_inbox) = if clustered {
        let (outlets, inbox) = bridge::cluster::rings(shards);
        (outlets.into_iter().map(Some).collect(), Some(inbox))
    } else {
        ((0..shards).map(|_| None).collect::<Vec<_>>(), None)
    };
    // The bridge raises the cluster's webhooks through a ring of its own.
    let (mut hook_outlets, hook_inlets, bridge_hooks) = if webhooks_on {
        let (mut outlets, inlets) = webhooks::rings(shards + usize::from(clustered));
        let bridge_hooks = if clustered { outlets.pop() } else { None };
        (outlets.into_iter().map(Some).collect(), Some(inlets), bridge_hooks)
    } else {
        ((0..shards).map(|_| None).collect::<Vec<_>>(), None, None)
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
            let conns =
                RedisLink::new(redis, bridge::CONNECT_TIMEOUT).map_err(BridgeError::Link)?;
            PushService::start(&config.incus.push, conns, Arc::clone(&push_counters))?
        }
        None => None,
    };
    let (push, push_handle) = push.unzip();
    let watch = Arc::new(crate::proto::console::Watch::new(shards, apps.len()));
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
            plain: plain.next().ok_or_else(|| std::io::Error::other("no listener for a shard"))?,
            secure: secure.next(),
            links,
            uplink: uplinks[id].take(),
            driver,
            hooks: hook_outlets[id].take(),
            cluster: cluster_outlets[id].take(),
            watch: Arc::clone(&watch),
        };
        let handle = threads::spawn(format!("stapes-shard-{id}"), move || shard::run(init))?;
        handles.push(handle);
    }
    let bridge = match (&config.redis, bridge_links) {
        (Some(redis), Some(links)) => Some(Bridge::start(BridgeInit {
            config: redis.clone(),
            // The bound port, not the configured one: port 0 binds anew.
            instance: redis.instance.clone().unwrap_or_else(|| {
                bridge::default_instance(plain_addr.map_or(server.port, |a| a.port()))
            }),
            apps: Arc::clone(&apps),
            links,
            uplink: uplink_inbox,
            incus: config.incus.clone(),
            counters: metrics.bridge(),
            push: push_handle,
            push_counters,
            cluster: cluster_inbox.map(|inbox| bridge::cluster::ClusterInit {
                inbox,
                hooks: bridge_hooks,
                admission: Arc::clone(&admission),
            }),
            watch: Arc::clone(&watch),
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
        plain = ?plain_addr,
        tls = ?secure_addr,
        apps = apps.len(),
        redis = config.redis.is_some(),
        webhooks = webhooks_on,
        "stapes listening"
    );
    for note in &config.notes {
        tracing::info!("ignoring {note}");
    }
    for ignored in &config.incus.unsupported {
        tracing::warn!("ignoring incus.{ignored}");
    }
    let mut control = control.pop();
    let mut bridge_ended = false;
    loop {
        if shutdown.wait(Duration::from_millis(50)) {
            tracing::info!("shutting down");
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

/// Shares the process's file limit out (see [`crate::io::limits`]), sizes
/// the descriptor table for it, and warns once when
/// `server.max_connections` is more than it allows.
fn file_budget(config: &Config, shards: usize) -> Result<limits::Budget, RunError> {
    let limit = limits::raise_file_limit()?;
    let push = &config.incus.push;
    let needs = limits::Needs {
        shards,
        redis: config.redis.is_some(),
        webhook_urls: config.apps.iter().map(|a| a.webhooks.len()).sum(),
        push_concurrency: if push.apns.is_some() || push.fcm.is_some() {
            push.concurrency
        } else {
            0
        },
    };
    let max = config.server.max_connections;
    let budget = limits::Budget::plan(limit, needs, max);
    if let Err(e) = limits::presize_descriptor_table(budget.peak) {
        tracing::warn!(
            descriptors = budget.peak,
            "could not size the descriptor table at start-up: {e}; it grows as clients connect, \
             and each growth stalls the shard that accepts for an RCU grace period"
        );
    }
    if budget.websockets < max {
        tracing::warn!(
            max_connections = max,
            open_files = limit,
            websockets = budget.websockets,
            sockets = budget.sockets,
            "server.max_connections is more than this process can open (RLIMIT_NOFILE): \
             WebSockets beyond the budget are refused with 4100, other connections with 503; \
             raise the limit (ulimit -n, LimitNOFILE) to serve more"
        );
    }
    Ok(budget)
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
