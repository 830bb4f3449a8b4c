//! Counters for `GET /metrics` (Prometheus text) and the optional
//! DogStatsD sender that reports Incus's `incus.*` names (spec §10.1).
//!
//! Each shard (and the bridge thread) owns one counter block and is its
//! only writer: an event costs one relaxed add on a cache line no other
//! core writes. Readers (the `/metrics` handler on whichever shard got the
//! request, and the StatsD thread) sum the blocks. Like
//! [`crate::core::admission`], these atomics are the deliberate
//! exception to "rings are the only path between threads": they carry no
//! messages, only monotonically growing numbers that a reader may see a
//! moment late, and asking every shard over the rings for them would cost
//! a cross-core round trip per scrape for nothing more exact.
//!
//! Gauges are never stored: "connections open" is opened minus closed, so
//! a connection counted on one shard and closed on it never needs a
//! shared decrement.

use std::sync::{
    Arc,
    atomic::{AtomicBool, AtomicU64, Ordering},
};

/// One monotonically growing count with a single writer.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// Counts one event.
    #[inline]
    pub fn inc(&self) {
        self.add(1);
    }

    /// Counts `n` events at once (a fan-out adds its recipient count).
    #[inline]
    pub fn add(&self, n: u64) {
        // With one writer a load and a store would do, but fetch_add stays
        // exact for the spare slot of `ShardCounters::app`, which any thread
        // may reach, and costs little next to the refcount bump that every
        // delivery already makes.
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    /// The count so far.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Per-app Pusher counters. A cache line each, so that one shard's array
/// never shares a line with the next allocation, another shard's.
#[derive(Debug, Default)]
#[repr(align(64))]
pub struct AppCounters {
    /// WebSocket connections that completed the Pusher handshake.
    pub opened: Counter,
    /// Of those, connections that ended.
    pub closed: Counter,
    /// Text frames received from clients.
    pub messages_in: Counter,
    /// Event frames written to subscribers (one per recipient), counted
    /// when the socket took the whole frame.
    pub messages_out: Counter,
    /// Bytes of those frames.
    pub bytes_out: Counter,
    /// Connections closed with 4100 because their outbox passed
    /// `server.max_outbox_bytes` (slow consumers).
    pub slow_closed: Counter,
}

/// HTTP status classes counted separately: 1xx to 5xx.
pub const HTTP_CLASSES: usize = 5;

/// Incus counters (spec §10.1, the ones stapes has a meaning for).
#[derive(Debug, Default)]
pub struct IncusCounters {
    /// `/socket` WebSockets upgraded (`incus.websocket.connect`).
    pub ws_connect: Counter,
    /// `/socket` WebSockets ended (`incus.websocket.disconnect`).
    pub ws_disconnect: Counter,
    /// Long-polls accepted (`incus.longpoll.connect`).
    pub lp_connect: Counter,
    /// Long-polls answered or abandoned (`incus.longpoll.disconnect`).
    pub lp_disconnect: Counter,
    /// Client commands decoded, from sockets and polls (`incus.read`,
    /// `incus.command.websocket`).
    pub read: Counter,
    /// Messages queued to a socket or answered to a poll (`incus.write`).
    pub write: Counter,
    /// Messages routed to every socket (`incus.message.all`).
    pub message_all: Counter,
    /// Messages routed to a user (`incus.message.user`).
    pub message_user: Counter,
    /// Messages routed to a page (`incus.message.page`).
    pub message_page: Counter,
    /// Client commands refused as malformed: not JSON, a repeated key, a
    /// non-string field.
    pub client_refused: Counter,
}

/// Everything one shard counts; written only by that shard's thread.
/// Aligned to two cache lines (the pair adjacent-line prefetchers fetch),
/// so that blocks of neighbouring shards never share one.
#[derive(Debug)]
#[repr(align(128))]
pub struct ShardCounters {
    apps: Box<[AppCounters]>,
    http: [Counter; HTTP_CLASSES],
    /// Incus counters.
    pub incus: IncusCounters,
    /// Webhook events dropped because the webhook thread's ring was full.
    pub webhooks_dropped: Counter,
    /// Connections closed because a write made no progress for the write
    /// timeout (a peer that does not read).
    pub write_timeouts: Counter,
    /// Connections refused for want of room: past the socket budget (503)
    /// or the WebSocket limit (4100, or 503 for Incus).
    pub refused: Counter,
    /// HTTP-transport sessions (pusher-js's `xhr_streaming`/`xhr_polling`)
    /// opened on this shard.
    pub http_sessions_opened: Counter,
    /// HTTP-transport sessions ended on this shard, any way.
    pub http_sessions_closed: Counter,
    /// Of those, the sessions that ended because no request was open for
    /// `server.http_session_timeout_secs` (their client went away).
    pub http_sessions_expired: Counter,
}

impl ShardCounters {
    /// Counters for `apps` apps.
    pub fn new(apps: usize) -> Self {
        Self {
            apps: (0..apps).map(|_| AppCounters::default()).collect(),
            http: Default::default(),
            incus: IncusCounters::default(),
            webhooks_dropped: Counter::default(),
            write_timeouts: Counter::default(),
            refused: Counter::default(),
            http_sessions_opened: Counter::default(),
            http_sessions_closed: Counter::default(),
            http_sessions_expired: Counter::default(),
        }
    }

    /// The counters of app `index`; an index out of range (a test state
    /// built without apps) lands in a shared spare slot rather than panic.
    #[inline]
    pub fn app(&self, index: usize) -> &AppCounters {
        static SPARE: AppCounters = AppCounters {
            opened: Counter(AtomicU64::new(0)),
            closed: Counter(AtomicU64::new(0)),
            messages_in: Counter(AtomicU64::new(0)),
            messages_out: Counter(AtomicU64::new(0)),
            bytes_out: Counter(AtomicU64::new(0)),
            slow_closed: Counter(AtomicU64::new(0)),
        };
        self.apps.get(index).unwrap_or(&SPARE)
    }

    /// Counts one HTTP response with `status`.
    pub fn http_response(&self, status: u16) {
        let class = usize::from(status / 100).clamp(1, HTTP_CLASSES) - 1;
        self.http[class].inc();
    }
}

/// Counters of the Redis bridge thread, its only writer.
#[derive(Debug, Default)]
#[repr(align(128))]
pub struct BridgeCounters {
    /// Pusher events taken from Redis and handed to the shards.
    pub pusher_events: Counter,
    /// Channel events from Redis handed to a shard: one per channel per
    /// shard that has subscribers to it. A cache channel's events go
    /// through the cluster side, which stores them, and are not counted.
    pub pusher_handoffs: Counter,
    /// Pusher events from Redis refused (bad JSON, unknown app, …).
    pub pusher_refused: Counter,
    /// Events or commands dropped because a shard or queue was too far behind.
    pub shed: Counter,
    /// Incus commands from Redis that parsed (`incus.command.redis`).
    pub incus_commands: Counter,
    /// Incus commands from Redis that did not parse (`incus.jsonerror`).
    pub incus_json_errors: Counter,
    /// Envelopes marked as a client's that name a command other than
    /// `message`: refused, never run.
    pub incus_client_refused: Counter,
    /// Incus messages routed from Redis, by target: all, user, page.
    pub incus_message_all: Counter,
    /// See `incus_message_all`.
    pub incus_message_user: Counter,
    /// See `incus_message_all`.
    pub incus_message_page: Counter,
    /// Events this node published for the other nodes of a cluster.
    pub cluster_published: Counter,
    /// Events from other nodes handed to this node's subscribers.
    pub cluster_received: Counter,
    /// Messages on the cluster's Redis channels that were not a stapes
    /// node's (or a node of another version's): refused.
    pub cluster_refused: Counter,
    /// Cluster commands Redis refused or lost the connection for.
    pub cluster_redis_errors: Counter,
    /// Events not kept for the other nodes while Redis was away (the
    /// keeping was full).
    pub cluster_dropped: Counter,
    /// Silent nodes this node took out of the cluster's view.
    pub cluster_nodes_swept: Counter,
    /// A `redis:` section is configured (the bridge runs).
    pub redis_configured: AtomicBool,
    /// The bridge's pub/sub connection is up and subscribed.
    pub redis_connected: AtomicBool,
}

/// One push platform's counters. The push thread writes `sent`, `failed`,
/// `retried` and `reported`; the bridge (their producer) `refused` and
/// `dropped`.
#[derive(Debug, Default)]
#[repr(align(64))]
pub struct PlatformCounters {
    /// Notifications the service accepted, one per token.
    pub sent: Counter,
    /// Notifications that failed for good (token rejected, refused, or
    /// still failing when the retry time ran out), one per token.
    pub failed: Counter,
    /// Tries repeated after 429, 5xx or a timeout.
    pub retried: Counter,
    /// Push commands refused before sending (bad input, platform off).
    pub refused: Counter,
    /// Push jobs dropped because the push queue was full.
    pub dropped: Counter,
    /// Entries written to the platform's Redis error list.
    pub reported: Counter,
    /// Entries that could not be written (Redis away, or too many waiting).
    pub unreported: Counter,
}

/// The push counters, per platform.
#[derive(Debug, Default)]
pub struct PushCounters {
    /// APNs.
    pub ios: PlatformCounters,
    /// FCM.
    pub android: PlatformCounters,
}

impl PushCounters {
    /// The block of `platform`.
    pub fn of(&self, platform: super::Platform) -> &PlatformCounters {
        match platform {
            super::Platform::Ios => &self.ios,
            super::Platform::Android => &self.android,
        }
    }
}

/// Every counter block of the node, for the readers.
#[derive(Debug)]
pub struct Metrics {
    app_ids: Vec<Box<str>>,
    shards: Vec<Arc<ShardCounters>>,
    bridge: Arc<BridgeCounters>,
    push: Arc<PushCounters>,
}

impl Metrics {
    /// Blocks for `shards` shards and the apps named by `app_ids`, in
    /// app-index order.
    pub fn new(app_ids: Vec<Box<str>>, shards: usize) -> Self {
        let blocks = (0..shards).map(|_| Arc::new(ShardCounters::new(app_ids.len()))).collect();
        Self {
            app_ids,
            shards: blocks,
            bridge: Arc::new(BridgeCounters::default()),
            push: Arc::new(PushCounters::default()),
        }
    }

    /// The push counters.
    pub fn push(&self) -> Arc<PushCounters> {
        Arc::clone(&self.push)
    }

    /// Shard `id`'s block, to hand to that shard only.
    pub fn shard(&self, id: usize) -> Arc<ShardCounters> {
        Arc::clone(&self.shards[id])
    }

    /// The bridge thread's block.
    pub fn bridge(&self) -> Arc<BridgeCounters> {
        Arc::clone(&self.bridge)
    }

    /// False while a configured Redis bridge is not connected: what
    /// `GET /ready` answers besides draining.
    pub fn redis_ready(&self) -> bool {
        let b = &self.bridge;
        !b.redis_configured.load(Ordering::Relaxed) || b.redis_connected.load(Ordering::Relaxed)
    }

    /// The sums right now.
    pub fn snapshot(&self) -> Snapshot {
        let mut s = Snapshot {
            apps: self
                .app_ids
                .iter()
                .map(|id| AppSnapshot { id: id.clone(), ..AppSnapshot::default() })
                .collect(),
            ..Snapshot::default()
        };
        for shard in &self.shards {
            let mut open = 0;
            for (i, app) in s.apps.iter_mut().enumerate() {
                let c = shard.app(i);
                open += c.opened.get().saturating_sub(c.closed.get());
                app.opened += c.opened.get();
                app.closed += c.closed.get();
                app.messages_in += c.messages_in.get();
                app.messages_out += c.messages_out.get();
                app.bytes_out += c.bytes_out.get();
                app.slow_closed += c.slow_closed.get();
            }
            for (sum, c) in s.http.iter_mut().zip(&shard.http) {
                *sum += c.get();
            }
            let i = &shard.incus;
            s.incus.ws_connect += i.ws_connect.get();
            s.incus.ws_disconnect += i.ws_disconnect.get();
            s.incus.lp_connect += i.lp_connect.get();
            s.incus.lp_disconnect += i.lp_disconnect.get();
            s.incus.read += i.read.get();
            s.incus.write += i.write.get();
            s.incus.message_all += i.message_all.get();
            s.incus.message_user += i.message_user.get();
            s.incus.message_page += i.message_page.get();
            s.incus.client_refused += i.client_refused.get();
            s.webhooks_dropped += shard.webhooks_dropped.get();
            s.write_timeouts += shard.write_timeouts.get();
            s.refused += shard.refused.get();
            s.http_sessions_opened += shard.http_sessions_opened.get();
            s.http_sessions_closed += shard.http_sessions_closed.get();
            s.http_sessions_expired += shard.http_sessions_expired.get();
            open += i.ws_connect.get().saturating_sub(i.ws_disconnect.get());
            s.shard_connections.push(open);
        }
        let b = &self.bridge;
        s.redis_pusher_events = b.pusher_events.get();
        s.redis_pusher_handoffs = b.pusher_handoffs.get();
        s.redis_pusher_refused = b.pusher_refused.get();
        s.redis_shed = b.shed.get();
        s.redis = b
            .redis_configured
            .load(Ordering::Relaxed)
            .then(|| b.redis_connected.load(Ordering::Relaxed));
        s.cluster = ClusterSnapshot {
            published: b.cluster_published.get(),
            received: b.cluster_received.get(),
            refused: b.cluster_refused.get(),
            redis_errors: b.cluster_redis_errors.get(),
            dropped: b.cluster_dropped.get(),
            nodes_swept: b.cluster_nodes_swept.get(),
        };
        s.incus.redis_commands = b.incus_commands.get();
        s.incus.json_errors = b.incus_json_errors.get();
        s.incus.client_refused += b.incus_client_refused.get();
        s.incus.message_all += b.incus_message_all.get();
        s.incus.message_user += b.incus_message_user.get();
        s.incus.message_page += b.incus_message_page.get();
        for (sum, c) in
            [(&mut s.incus.ios, &self.push.ios), (&mut s.incus.android, &self.push.android)]
        {
            *sum = PlatformSnapshot {
                sent: c.sent.get(),
                failed: c.failed.get(),
                retried: c.retried.get(),
                refused: c.refused.get(),
                dropped: c.dropped.get(),
                reported: c.reported.get(),
                unreported: c.unreported.get(),
            };
        }
        s
    }
}

/// One app's sums.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct AppSnapshot {
    /// The app's id.
    pub id: Box<str>,
    /// See [`AppCounters::opened`].
    pub opened: u64,
    /// See [`AppCounters::closed`].
    pub closed: u64,
    /// See [`AppCounters::messages_in`].
    pub messages_in: u64,
    /// See [`AppCounters::messages_out`].
    pub messages_out: u64,
    /// See [`AppCounters::bytes_out`].
    pub bytes_out: u64,
    /// See [`AppCounters::slow_closed`].
    pub slow_closed: u64,
}

impl AppSnapshot {
    /// Connections open now.
    pub fn connections(&self) -> u64 {
        // Two loads are not one instant: a close counted between them
        // could briefly make closed exceed opened.
        self.opened.saturating_sub(self.closed)
    }
}

/// Incus sums of every shard and the bridge.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct IncusSnapshot {
    /// See [`IncusCounters::ws_connect`].
    pub ws_connect: u64,
    /// See [`IncusCounters::ws_disconnect`].
    pub ws_disconnect: u64,
    /// See [`IncusCounters::lp_connect`].
    pub lp_connect: u64,
    /// See [`IncusCounters::lp_disconnect`].
    pub lp_disconnect: u64,
    /// See [`IncusCounters::read`].
    pub read: u64,
    /// See [`IncusCounters::write`].
    pub write: u64,
    /// See [`BridgeCounters::incus_commands`].
    pub redis_commands: u64,
    /// See [`BridgeCounters::incus_json_errors`].
    pub json_errors: u64,
    /// Messages routed to every socket, by shards and the bridge.
    pub message_all: u64,
    /// Messages routed to a user, by shards and the bridge.
    pub message_user: u64,
    /// Messages routed to a page, by shards and the bridge.
    pub message_page: u64,
    /// Client commands refused: malformed on a shard
    /// ([`IncusCounters::client_refused`]), or a client's envelope naming a
    /// backend command on the bridge
    /// ([`BridgeCounters::incus_client_refused`]).
    pub client_refused: u64,
    /// APNs.
    pub ios: PlatformSnapshot,
    /// FCM.
    pub android: PlatformSnapshot,
}

/// One push platform's sums; see [`PlatformCounters`].
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PlatformSnapshot {
    /// See [`PlatformCounters::sent`].
    pub sent: u64,
    /// See [`PlatformCounters::failed`].
    pub failed: u64,
    /// See [`PlatformCounters::retried`].
    pub retried: u64,
    /// See [`PlatformCounters::refused`].
    pub refused: u64,
    /// See [`PlatformCounters::dropped`].
    pub dropped: u64,
    /// See [`PlatformCounters::reported`].
    pub reported: u64,
    /// See [`PlatformCounters::unreported`].
    pub unreported: u64,
}

impl IncusSnapshot {
    /// `/socket` clients connected now (`incus.client_count`).
    pub fn sockets(&self) -> u64 {
        self.ws_connect.saturating_sub(self.ws_disconnect)
    }

    /// Commands handled from every source (`incus.command`).
    pub fn commands(&self) -> u64 {
        self.read + self.redis_commands
    }

    /// Messages routed (`incus.message`).
    pub fn messages(&self) -> u64 {
        self.message_all + self.message_user + self.message_page
    }
}

/// The node's sums at one moment.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// Per app, in app-index order.
    pub apps: Vec<AppSnapshot>,
    /// Connections open per shard (Pusher and Incus WebSockets), in shard
    /// order: how evenly the kernel spreads them.
    pub shard_connections: Vec<u64>,
    /// HTTP responses by status class, 1xx first.
    pub http: [u64; HTTP_CLASSES],
    /// Incus.
    pub incus: IncusSnapshot,
    /// See [`ShardCounters::webhooks_dropped`].
    pub webhooks_dropped: u64,
    /// See [`ShardCounters::write_timeouts`].
    pub write_timeouts: u64,
    /// See [`ShardCounters::refused`].
    pub refused: u64,
    /// See [`ShardCounters::http_sessions_opened`].
    pub http_sessions_opened: u64,
    /// See [`ShardCounters::http_sessions_closed`].
    pub http_sessions_closed: u64,
    /// See [`ShardCounters::http_sessions_expired`].
    pub http_sessions_expired: u64,
    /// See [`BridgeCounters::pusher_events`].
    pub redis_pusher_events: u64,
    /// See [`BridgeCounters::pusher_handoffs`].
    pub redis_pusher_handoffs: u64,
    /// See [`BridgeCounters::pusher_refused`].
    pub redis_pusher_refused: u64,
    /// See [`BridgeCounters::shed`].
    pub redis_shed: u64,
    /// With Redis configured, whether the bridge is connected; `None`
    /// without Redis.
    pub redis: Option<bool>,
    /// The `cluster_*` counters of [`BridgeCounters`].
    pub cluster: ClusterSnapshot,
}

/// See the `cluster_*` fields of [`BridgeCounters`].
#[derive(Debug, Default, Clone, PartialEq, Eq)]
#[allow(missing_docs)]
pub struct ClusterSnapshot {
    pub published: u64,
    pub received: u64,
    pub refused: u64,
    pub redis_errors: u64,
    pub dropped: u64,
    pub nodes_swept: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_sums_every_shard_and_the_bridge() {
        let m = Metrics::new(vec!["a".into(), "b".into()], 3);
        for id in 0..3 {
            let s = m.shard(id);
            s.app(0).opened.add(id as u64 + 1);
            s.app(1).messages_out.add(10);
            s.incus.message_user.inc();
            s.http_response(200);
        }
        m.shard(2).app(0).closed.add(2);
        m.shard(0).http_response(404);
        m.shard(0).http_response(999);
        m.bridge().incus_message_user.inc();
        m.bridge().incus_commands.add(4);
        m.shard(1).incus.read.add(3);
        m.shard(2).incus.client_refused.inc();
        m.bridge().incus_client_refused.add(2);
        let s = m.snapshot();
        assert_eq!(s.apps[0].opened, 6);
        assert_eq!(s.apps[0].connections(), 4);
        assert_eq!(s.apps[1].messages_out, 30);
        assert_eq!(&*s.apps[1].id, "b");
        assert_eq!(s.http, [0, 3, 0, 1, 1]);
        assert_eq!(s.incus.message_user, 4);
        assert_eq!(s.incus.messages(), 4);
        assert_eq!(s.incus.commands(), 7);
        assert_eq!(s.incus.client_refused, 3);
        assert_eq!(s.shard_connections, [1, 2, 1]);
    }

    #[test]
    fn blocks_of_different_writers_never_share_a_cache_line() {
        assert_eq!(std::mem::align_of::<ShardCounters>(), 128);
        assert_eq!(std::mem::size_of::<AppCounters>() % 64, 0);
        let c = ShardCounters::new(3);
        let (first, last) = (c.app(0) as *const AppCounters, c.app(2) as *const AppCounters);
        assert_eq!(first as usize % 64, 0);
        assert_eq!(last as usize - first as usize, 2 * std::mem::size_of::<AppCounters>());
    }

    #[test]
    fn an_unknown_app_index_does_not_panic() {
        let c = ShardCounters::new(0);
        c.app(7).opened.inc();
        assert_eq!(Metrics::new(vec![], 1).snapshot().apps.len(), 0);
    }
}
