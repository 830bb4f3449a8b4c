//! One shard's protocol state, sans-IO: its connections, its channel index,
//! the presence rosters it owns, and what it has to tell other shards.
//!
//! The runtime feeds it client frames, mesh messages and clock ticks, and
//! carries out what it leaves behind: bytes queued in connection
//! [`Outbox`]es (whose writers it wakes) and messages queued per target
//! shard ([`Shard::drain_mesh_out`]). Nothing here blocks, reads the clock or
//! touches a socket, so several shards can be driven by hand in a unit test.
//!
//! # Fan-out
//! A published event is framed once ([`messages`]); each local subscriber
//! gets a clone of the same [`Bytes`] (a refcount bump) in its outbox, and
//! each other shard gets one `Deliver` carrying the same handle.

use std::{
    collections::{BTreeMap, HashMap},
    sync::Arc,
    task::Waker,
    time::{Duration, Instant},
};

use bytes::Bytes;
use rustc_hash::FxHashMap;
use slab::Slab;

use super::{
    auth::{PresenceMember, SignedInUser},
    channel::{self, ChannelFlags, ChannelKind},
    delayed::{Delayed, Due},
    messages,
    session::{Command, MAX_WATCHLIST, Rejection, Session, Timeout},
};
pub use crate::proto::ws::outbox::Outbox;
use crate::{
    core::{
        AppIdx, Apps, CloseCode, ConnRef, HookKind, SocketId, counters::ShardCounters,
        socket_id::SocketIdSource,
    },
    proto::{
        index::{
            ChanId, ChannelIndex, ConnKey, EventCache, Join, PresenceRosters, UserRegistry,
            owner_shard,
        },
        msg::{ChannelCounts, JoinOutcome, ShardMsg},
        ws::codec,
    },
};

/// Local subscribers from which a frame that arrived from another shard is
/// copied once before the fan-out.
const LOCAL_COPY_THRESHOLD: usize = 64;

/// Subscriptions one connection may hold; a client past it gets a
/// `pusher:error`, so that one socket cannot grow the index without bound.
pub const MAX_SUBSCRIPTIONS_PER_CONNECTION: usize = 1000;

/// Subscribers above which `subscription_count` goes out at most once per
/// [`SUBSCRIPTION_COUNT_INTERVAL`] (spec §11).
pub const SUBSCRIPTION_COUNT_THROTTLE_ABOVE: usize = 100;

/// Least time between two `subscription_count` broadcasts of a busy channel.
pub const SUBSCRIPTION_COUNT_INTERVAL: Duration = Duration::from_secs(5);

/// Node-wide subscription count of one channel, kept by its owner shard.
#[derive(Debug, Default)]
struct SubCount {
    total: usize,
    last_sent: Option<Instant>,
    /// A change is waiting for the throttle interval to pass.
    pending: bool,
}

/// Something the shard noticed that a webhook reports (spec §13). Raised
/// only for apps with a webhook that wants the kind, and node-wide ones
/// (occupancy, members, counts, cache misses) only on the channel's owner,
/// so each happens once per node. The runtime drains them with
/// [`Shard::drain_events`] after each batch of work and on every tick.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ShardEvent {
    /// A subscriber of a cache channel found nothing cached and was sent
    /// `pusher:cache_miss` (spec §8). Raised on the channel's owner, once
    /// per subscriber: the `cache_miss` webhook should fold repeats of a
    /// channel (Pusher de-duplicates simultaneous subscribers).
    CacheMiss {
        /// App of the channel.
        app: AppIdx,
        /// Channel name.
        channel: Box<str>,
    },
    /// The channel's first subscription, node-wide.
    ChannelOccupied {
        /// App of the channel.
        app: AppIdx,
        /// Channel name.
        channel: Box<str>,
    },
    /// The channel stayed empty for the app's `webhook_delay`.
    ChannelVacated {
        /// App of the channel.
        app: AppIdx,
        /// Channel name.
        channel: Box<str>,
    },
    /// A user's first connection joined a presence channel.
    MemberAdded {
        /// App of the channel.
        app: AppIdx,
        /// Channel name.
        channel: Box<str>,
        /// Member id.
        user_id: Box<str>,
    },
    /// A user's last connection left and stayed away for `webhook_delay`.
    MemberRemoved {
        /// App of the channel.
        app: AppIdx,
        /// Channel name.
        channel: Box<str>,
        /// Member id.
        user_id: Box<str>,
    },
    /// A connection sent a client event, raised on the sender's shard.
    ClientEvent {
        /// App of the channel.
        app: AppIdx,
        /// Channel name.
        channel: Box<str>,
        /// Event name (`client-…`).
        event: Box<str>,
        /// `data` as the client sent it (JSON text).
        data: Box<str>,
        /// The sender.
        socket_id: SocketId,
        /// The sender's member id, on presence channels.
        user_id: Option<Box<str>>,
    },
    /// A non-presence channel's node-wide subscription count, at the same
    /// moments (and throttling) as `pusher_internal:subscription_count`.
    SubscriptionCount {
        /// App of the channel.
        app: AppIdx,
        /// Channel name.
        channel: Box<str>,
        /// Subscriptions node-wide.
        count: usize,
    },
}

/// Shard-wide settings, taken from the server config.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Silence before the server pings.
    pub activity_timeout: Duration,
    /// Time a pinged client has to answer.
    pub pong_timeout: Duration,
    /// Bytes a connection may have queued before it is dropped as too slow.
    pub max_outbox_bytes: usize,
}

#[derive(Debug)]
enum SubState {
    /// Subscribed: in the index under `chan`.
    Active { chan: ChanId },
    /// Presence join sent to the owner, waiting for its verdict.
    Joining,
    /// Cache channel: waiting for the owner's cached event (or miss), which
    /// completes the subscription (spec §8).
    Fetching,
}

#[derive(Debug)]
struct Sub {
    channel: Box<str>,
    /// The user id this connection is present as, on presence channels.
    user_id: Option<Box<str>>,
    state: SubState,
}

/// One connection in the shard.
#[derive(Debug)]
pub struct Conn {
    /// Protocol state.
    pub session: Session,
    /// Frames to write.
    pub outbox: Outbox,
    generation: u32,
    subs: Vec<Sub>,
    /// Registered with the user's owner shard as signed in.
    signed_in: bool,
    /// User ids this connection watches (spec §10.3).
    watchlist: Vec<Box<str>>,
}

struct PendingQuery {
    remaining: usize,
    gather: Gather,
    waker: Option<Waker>,
}

/// What a pending query has gathered so far.
enum Gather {
    /// Counts of named channels, index-aligned with the request.
    Counts(Vec<ChannelCounts>),
    /// Occupied channels by name; sorted so answers are stable.
    List(BTreeMap<Box<str>, ChannelCounts>),
    /// Presence member ids, from the channel's owner.
    Users(Vec<Box<str>>),
    /// A cache channel's event and remaining TTL, from its owner.
    Cache(Option<(Bytes, Duration)>),
}

/// The sans-IO state of one shard.
pub struct Shard {
    id: usize,
    shards: usize,
    apps: Arc<Apps>,
    settings: Settings,
    conns: Slab<Conn>,
    next_generation: u32,
    by_socket: FxHashMap<SocketId, ConnKey>,
    index: ChannelIndex,
    rosters: PresenceRosters,
    users: UserRegistry,
    /// Node-wide subscription counts of the channels this shard owns.
    sub_counts: HashMap<(AppIdx, Box<str>), SubCount>,
    /// Channels in `sub_counts` with a throttled change to send.
    sub_counts_pending: Vec<(AppIdx, Box<str>)>,
    /// The latest time any input carried. Mesh messages carry none, and
    /// throttling the counts they change needs one; it is at most one tick
    /// old, which only ever delays a throttled count, never hastens it.
    now: Option<Instant>,
    /// Last published events of the cache channels this shard owns.
    cache: EventCache,
    /// Noticed since the last [`Shard::drain_events`].
    events: Vec<ShardEvent>,
    /// `channel_vacated`/`member_removed` webhooks waiting out their delay.
    delayed: Delayed,
    socket_ids: SocketIdSource,
    mesh_out: Vec<Vec<ShardMsg>>,
    queries: HashMap<u64, PendingQuery>,
    next_query: u64,
    /// This shard's counters; this thread is their only writer.
    counters: Arc<ShardCounters>,
}

impl Shard {
    /// Shard `id` of `shards`.
    pub fn new(id: usize, shards: usize, apps: Arc<Apps>, settings: Settings) -> Self {
        let index = ChannelIndex::new(apps.len());
        let cache = EventCache::new(apps.len());
        let apps_len = apps.len();
        Self {
            id,
            shards,
            apps,
            settings,
            conns: Slab::new(),
            next_generation: 0,
            by_socket: FxHashMap::default(),
            index,
            rosters: PresenceRosters::default(),
            users: UserRegistry::default(),
            sub_counts: HashMap::new(),
            sub_counts_pending: Vec::new(),
            now: None,
            cache,
            events: Vec::new(),
            delayed: Delayed::default(),
            socket_ids: SocketIdSource::default(),
            mesh_out: (0..shards).map(|_| Vec::new()).collect(),
            queries: HashMap::new(),
            next_query: 0,
            counters: Arc::new(ShardCounters::new(apps_len)),
        }
    }

    /// Counts into `counters` (the node's block for this shard) instead of
    /// the private block [`Shard::new`] made.
    pub fn set_counters(&mut self, counters: Arc<ShardCounters>) {
        self.counters = counters;
    }

    /// This shard's counters.
    pub fn counters(&self) -> &ShardCounters {
        &self.counters
    }

    /// This shard's index.
    pub fn id(&self) -> usize {
        self.id
    }

    /// The apps.
    pub fn apps(&self) -> &Arc<Apps> {
        &self.apps
    }

    /// Connections open on this shard.
    pub fn connections(&self) -> usize {
        self.conns.len()
    }

    /// A connection by key.
    pub fn conn(&self, key: ConnKey) -> Option<&Conn> {
        self.conns.get(key as usize)
    }

    /// A connection's outbox, for its writer.
    pub fn outbox(&mut self, key: ConnKey) -> Option<&mut Outbox> {
        self.conns.get_mut(key as usize).map(|c| &mut c.outbox)
    }

    /// Accepts a connection that passed the handshake: registers it and
    /// queues `pusher:connection_established`.
    pub fn open(&mut self, app: AppIdx, now: Instant) -> ConnKey {
        self.open_after(app, now, None)
    }

    /// [`Shard::open`], with `preface` (the transport's HTTP 101 response)
    /// queued ahead of `connection_established`, so that both leave in one
    /// write: a loopback send costs a few microseconds of kernel time, a
    /// third of a connect's server CPU.
    pub fn open_after(&mut self, app: AppIdx, now: Instant, preface: Option<Bytes>) -> ConnKey {
        self.now = Some(now);
        let socket_id = self.socket_ids.next_id();
        self.next_generation = self.next_generation.wrapping_add(1);
        let rate = self.apps.get(app).client_event_rate;
        let mut session = Session::new(socket_id, app, rate, now);
        if let Some(timeout) = self.apps.get(app).authorized_timeout {
            session.require_authorization(now + timeout);
        }
        let key = self.conns.insert(Conn {
            session,
            outbox: Outbox::default(),
            generation: self.next_generation,
            subs: Vec::new(),
            signed_in: false,
            watchlist: Vec::new(),
        }) as ConnKey;
        self.by_socket.insert(socket_id, key);
        self.counters.app(app as usize).opened.inc();
        if let Some(preface) = preface {
            self.send(key, preface);
        }
        let hello =
            messages::connection_established(socket_id, self.settings.activity_timeout.as_secs());
        self.send(key, hello);
        key
    }

    /// Forgets a connection whose socket is gone: leaves every channel and
    /// tells presence owners. Call exactly once per [`Shard::open`].
    pub fn remove(&mut self, key: ConnKey) {
        if !self.conns.contains(key as usize) {
            return;
        }
        let conn = self.conns.remove(key as usize);
        self.by_socket.remove(&conn.session.socket_id);
        let me = self.conn_ref(key, conn.generation);
        let app = conn.session.app;
        self.counters.app(app as usize).closed.inc();
        for sub in conn.subs {
            self.leave(app, key, me, sub);
        }
        if let Some(user) = conn.session.user.filter(|_| conn.signed_in) {
            let owner = owner_shard(app, &user.id, self.shards);
            self.send_to_shard(owner, ShardMsg::UserOffline { app, user_id: user.id, conn: me });
        }
        for (owner, user_ids) in by_owner(app, conn.watchlist, self.shards) {
            self.send_to_shard(owner, ShardMsg::Unwatch { app, user_ids, watcher: me });
        }
    }

    /// Records liveness without a message (WebSocket ping/pong frames).
    pub fn heard(&mut self, key: ConnKey, now: Instant) {
        if let Some(conn) = self.conns.get_mut(key as usize) {
            conn.session.heard(now);
        }
    }

    /// Queues a frame that is not a Pusher message (a WebSocket pong).
    pub fn send_raw(&mut self, key: ConnKey, frame: Bytes) {
        self.send(key, frame);
    }

    /// Handles one text message from a client.
    pub fn handle_text(&mut self, key: ConnKey, text: &[u8], now: Instant) {
        self.now = Some(now);
        let Some(conn) = self.conns.get_mut(key as usize) else { return };
        if conn.outbox.closing().is_some() {
            return;
        }
        self.counters.app(conn.session.app as usize).messages_in.inc();
        let app = Arc::clone(self.apps.get(conn.session.app));
        match conn.session.handle_text(now, &app, text) {
            Ok(cmd) => self.execute(key, cmd, now),
            Err(rejection) => self.reject(key, &rejection),
        }
    }

    fn execute(&mut self, key: ConnKey, cmd: Command, now: Instant) {
        match cmd {
            Command::Ping => self.send(key, messages::pong()),
            Command::Nothing => {}
            Command::Subscribe { channel, flags, member } => {
                self.subscribe(key, channel, flags, member, now)
            }
            Command::Unsubscribe { channel } => self.unsubscribe(key, &channel),
            Command::ClientEvent { event, channel, data } => {
                self.client_event(key, &event, &channel, data.get().as_bytes())
            }
            Command::Signin { user_data, user } => self.signin(key, &user_data, user),
        }
    }

    fn reject(&mut self, key: ConnKey, rejection: &Rejection) {
        self.send(key, messages::error(rejection.code, &rejection.message));
    }

    fn subscribe(
        &mut self,
        key: ConnKey,
        channel: String,
        flags: ChannelFlags,
        member: Option<PresenceMember>,
        now: Instant,
    ) {
        let Some(conn) = self.conns.get_mut(key as usize) else { return };
        let app = conn.session.app;
        let me = ConnRef { shard: self.id as u16, key, generation: conn.generation };
        let existing = conn.subs.iter().find(|s| *s.channel == *channel);
        match (existing, flags.kind) {
            // Spec §5.3: a repeated subscribe is confirmed again, never counted twice.
            (Some(Sub { state: SubState::Active { .. }, user_id, .. }), ChannelKind::Presence) => {
                let user_id = user_id.clone().unwrap_or_default();
                self.send_to_owner(
                    app,
                    &channel,
                    ShardMsg::PresenceJoin {
                        app,
                        channel: channel.as_str().into(),
                        user_id,
                        user_info: None,
                        conn: me,
                        at: now,
                    },
                );
                return;
            }
            (Some(Sub { state: SubState::Active { .. }, .. }), _) => {
                self.send(key, messages::subscription_succeeded(&channel));
                return;
            }
            (Some(Sub { state: SubState::Joining | SubState::Fetching, .. }), _) => return,
            (None, _) => {}
        }
        if conn.subs.len() >= MAX_SUBSCRIPTIONS_PER_CONNECTION {
            let msg = format!(
                "Cannot subscribe to {channel}: a connection may hold {MAX_SUBSCRIPTIONS_PER_CONNECTION} subscriptions"
            );
            self.send(key, messages::error(None, &msg));
            return;
        }
        // Most connections hold one subscription: room for exactly one, not
        // the four a first push reserves (160 bytes per idle connection).
        if conn.subs.capacity() == 0 {
            conn.subs.reserve_exact(1);
        }
        match (flags.kind, member) {
            (ChannelKind::Presence, Some(member)) => {
                let user_id: Box<str> = member.user_id.into();
                conn.subs.push(Sub {
                    channel: channel.as_str().into(),
                    user_id: Some(user_id.clone()),
                    state: SubState::Joining,
                });
                let owner = owner_shard(app, &channel, self.shards);
                self.send_to_shard(
                    owner,
                    ShardMsg::PresenceJoin {
                        app,
                        channel: channel.into(),
                        user_id,
                        user_info: member.user_info.map(Into::into),
                        conn: me,
                        at: now,
                    },
                );
            }
            _ if flags.cache => {
                // The owner answers with the replay; the subscription
                // completes then, so that no live event overtakes it.
                conn.subs.push(Sub {
                    channel: channel.as_str().into(),
                    user_id: None,
                    state: SubState::Fetching,
                });
                let msg = ShardMsg::CacheFetch {
                    app,
                    channel: channel.as_str().into(),
                    conn: me,
                    at: now,
                };
                self.send_to_owner(app, &channel, msg);
            }
            _ => {
                let (chan, added) = self.index.subscribe(app, &channel, key);
                conn.subs.push(Sub {
                    channel: channel.as_str().into(),
                    user_id: None,
                    state: SubState::Active { chan },
                });
                if is_authorizing(flags.kind) {
                    conn.session.authorize();
                }
                self.send(key, messages::subscription_succeeded(&channel));
                // After the confirmation, so the new subscriber hears its
                // count only once it knows it is subscribed.
                if added {
                    self.count_subscription(app, &channel, flags.kind, 1);
                }
            }
        }
    }

    fn unsubscribe(&mut self, key: ConnKey, channel: &str) {
        let Some(conn) = self.conns.get_mut(key as usize) else { return };
        let Some(at) = conn.subs.iter().position(|s| &*s.channel == channel) else { return };
        let sub = conn.subs.swap_remove(at);
        let (app, generation) = (conn.session.app, conn.generation);
        let me = self.conn_ref(key, generation);
        self.leave(app, key, me, sub);
    }

    /// Undoes one subscription: the index entry, and the presence membership.
    fn leave(&mut self, app: AppIdx, key: ConnKey, me: ConnRef, sub: Sub) {
        if let SubState::Active { chan } = sub.state {
            self.index.unsubscribe(chan, key);
            let kind = channel::classify(&sub.channel).kind;
            self.count_subscription(app, &sub.channel, kind, -1);
        }
        if let Some(user_id) = sub.user_id {
            let channel = sub.channel;
            self.send_to_owner(
                app,
                &channel.clone(),
                ShardMsg::PresenceLeave { app, channel, user_id, conn: me },
            );
        }
    }

    fn client_event(&mut self, key: ConnKey, event: &str, channel: &str, data: &[u8]) {
        let Some(conn) = self.conns.get(key as usize) else { return };
        let sub = conn
            .subs
            .iter()
            .find(|s| &*s.channel == channel && matches!(s.state, SubState::Active { .. }));
        let Some(sub) = sub else {
            let msg = format!("Client event rejected: not subscribed to {channel}");
            self.send(key, messages::error(Some(CloseCode::CLIENT_EVENT_REJECTED.0), &msg));
            return;
        };
        let (app, socket_id) = (conn.session.app, conn.session.socket_id);
        let frame = messages::client_event(event, channel, data, sub.user_id.as_deref());
        if self.wants(app, HookKind::ClientEvent) {
            self.events.push(ShardEvent::ClientEvent {
                app,
                channel: channel.into(),
                event: event.into(),
                data: String::from_utf8_lossy(data).into(),
                socket_id,
                user_id: sub.user_id.clone(),
            });
        }
        self.broadcast(app, channel, frame, Some(socket_id));
    }

    /// Whether some webhook of `app` wants `kind` (spec §13).
    fn wants(&self, app: AppIdx, kind: HookKind) -> bool {
        let app = self.apps.get(app);
        !app.webhooks.is_empty() && app.webhook_kinds().contains(kind)
    }

    /// Occupancy (and its delayed vacate) is tracked when either event is
    /// wanted, so that a quick return suppresses both halves.
    fn wants_occupancy(&self, app: AppIdx) -> bool {
        self.wants(app, HookKind::ChannelOccupied) || self.wants(app, HookKind::ChannelVacated)
    }

    fn wants_members(&self, app: AppIdx) -> bool {
        self.wants(app, HookKind::MemberAdded) || self.wants(app, HookKind::MemberRemoved)
    }

    /// Publishes an event from the HTTP API (or any server-side source) to
    /// every subscriber of `channel` on every shard. On a cache channel the
    /// event goes through the channel's owner, which remembers it (spec §8).
    pub fn publish(
        &mut self,
        app: AppIdx,
        channel: &str,
        event: &str,
        data: &str,
        exclude: Option<SocketId>,
        now: Instant,
    ) {
        self.now = Some(now);
        let frame = messages::channel_event(event, channel, data);
        if channel::classify(channel).cache {
            let msg =
                ShardMsg::CachePublish { app, channel: channel.into(), frame, exclude, at: now };
            self.send_to_owner(app, channel, msg);
        } else {
            self.broadcast(app, channel, frame, exclude);
        }
    }

    /// On a cache channel's owner: the cached frame, unless expired at `at`.
    fn cached_frame(&self, app: AppIdx, channel: &str, at: Instant) -> Option<Bytes> {
        self.cache.get(app, channel, at).map(|c| c.frame.clone())
    }

    /// On a cache channel's owner: answers a subscriber with the cached
    /// event or a miss.
    fn replay_to(&mut self, app: AppIdx, channel: Box<str>, conn: ConnRef, at: Instant) {
        let frame = self.cached_frame(app, &channel, at);
        if frame.is_none() && self.wants(app, HookKind::CacheMiss) {
            let event = ShardEvent::CacheMiss { app, channel: channel.clone() };
            // Subscribers arriving together share one webhook, as on Pusher;
            // the queue is drained every batch, so the scan stays short.
            if !self.events.contains(&event) {
                self.events.push(event);
            }
        }
        self.send_to_shard(
            conn.shard as usize,
            ShardMsg::CacheReplay { app, channel, conn, frame },
        );
    }

    /// On the subscriber's shard: the owner's replay completes a cache
    /// channel subscription (`subscription_succeeded`, then the cached event
    /// or `pusher:cache_miss`). A presence-cache subscription is already
    /// active (the owner's `PresenceJoined` came first) and only replays.
    fn cache_replay(&mut self, app: AppIdx, channel: &str, me: ConnRef, frame: Option<Bytes>) {
        let Some(conn) = self.conns.get_mut(me.key as usize) else { return };
        if conn.generation != me.generation {
            return;
        }
        let Some(at) = conn.subs.iter().position(|s| &*s.channel == channel) else { return };
        let kind = channel::classify(channel).kind;
        let added = match conn.subs[at].state {
            SubState::Joining => return,
            // Presence-cache: the owner replays right after its join verdict.
            SubState::Active { .. } if kind == ChannelKind::Presence => false,
            // Already completed by an earlier fetch (unsubscribed and
            // subscribed again while it was in flight): replay once only.
            SubState::Active { .. } => return,
            SubState::Fetching => {
                let (chan, added) = self.index.subscribe(app, channel, me.key);
                conn.subs[at].state = SubState::Active { chan };
                if is_authorizing(kind) {
                    conn.session.authorize();
                }
                self.send(me.key, messages::subscription_succeeded(channel));
                added
            }
        };
        self.send(me.key, frame.unwrap_or_else(|| messages::cache_miss(channel)));
        if added {
            self.count_subscription(app, channel, kind, 1);
        }
    }

    /// Starts asking a cache channel's owner for its cached event; poll the
    /// answer with [`Shard::poll_cache`].
    pub fn start_cache(&mut self, app: AppIdx, channel: &str, now: Instant) -> u64 {
        let owner = owner_shard(app, channel, self.shards);
        if owner == self.id {
            let cached = self.cache_info(app, channel, now);
            return self.new_query(0, Gather::Cache(cached));
        }
        let id = self.new_query(1, Gather::Cache(None));
        let msg = ShardMsg::CacheQuery { from: self.id, id, app, channel: channel.into(), at: now };
        self.send_to_shard(owner, msg);
        id
    }

    /// The cached frame of the channel and its remaining TTL, once the owner
    /// has answered; `Some(None)` when nothing is cached.
    pub fn poll_cache(&mut self, id: u64, waker: &Waker) -> Option<Option<(Bytes, Duration)>> {
        match self.poll_gather(id, waker)? {
            Gather::Cache(cached) => Some(cached),
            _ => Some(None),
        }
    }

    fn cache_info(&self, app: AppIdx, channel: &str, at: Instant) -> Option<(Bytes, Duration)> {
        self.cache.get(app, channel, at).map(|c| (c.frame.clone(), c.expires - at))
    }

    /// Hands every [`ShardEvent`] noticed since the last call to `f`.
    pub fn drain_events(&mut self, f: impl FnMut(ShardEvent)) {
        self.events.drain(..).for_each(f);
    }

    /// Whether [`Shard::drain_events`] has anything.
    pub fn has_events(&self) -> bool {
        !self.events.is_empty()
    }

    /// Tells the state the time without other input, so that what mesh
    /// messages schedule (webhook delays, count throttles) counts from now
    /// rather than from the last tick.
    pub fn set_now(&mut self, now: Instant) {
        self.now = Some(now);
    }

    /// Cache entries held on this shard (expired ones until the next tick).
    pub fn cached_channels(&self) -> usize {
        self.cache.len()
    }

    /// Local fan-out plus one `Deliver` per other shard, all sharing `frame`.
    fn broadcast(&mut self, app: AppIdx, channel: &str, frame: Bytes, exclude: Option<SocketId>) {
        for (to, out) in self.mesh_out.iter_mut().enumerate() {
            if to != self.id {
                out.push(ShardMsg::Deliver {
                    app,
                    channel: channel.into(),
                    frame: frame.clone(),
                    exclude,
                });
            }
        }
        self.deliver_local(app, channel, &frame, exclude, false);
    }

    fn deliver_local(
        &mut self,
        app: AppIdx,
        channel: &str,
        frame: &Bytes,
        exclude: Option<SocketId>,
        remote: bool,
    ) {
        let Some(chan) = self.index.lookup(app, channel) else { return };
        let Some(channel) = self.index.get(chan) else { return };
        // A frame built on another shard shares its refcount with that
        // shard's subscribers; for a large fan-out one local copy is cheaper
        // than bouncing that cache line between cores (STACK.md pitfall 14).
        let local;
        let frame = if remote && channel.subscribers.len() >= LOCAL_COPY_THRESHOLD {
            local = Bytes::copy_from_slice(frame);
            &local
        } else {
            frame
        };
        let skip = exclude.and_then(|id| self.by_socket.get(&id).copied());
        let limit = self.settings.max_outbox_bytes;
        let mut delivered = 0u64;
        for &key in &channel.subscribers {
            if Some(key) == skip {
                continue;
            }
            let Some(conn) = self.conns.get_mut(key as usize) else { continue };
            if conn.outbox.push(frame.clone(), limit).is_err() {
                slow_consumer(&mut conn.outbox);
            } else {
                delivered += 1;
            }
        }
        // Once per fan-out, not per recipient: the counter's cache line
        // is touched once however large the channel.
        let counters = self.counters.app(app as usize);
        counters.messages_out.add(delivered);
        counters.bytes_out.add(delivered * frame.len() as u64);
    }

    /// Handles a message from another shard or an external producer.
    pub fn handle_mesh(&mut self, msg: ShardMsg) {
        match msg {
            ShardMsg::Deliver { app, channel, frame, exclude } => {
                self.deliver_local(app, &channel, &frame, exclude, true)
            }
            ShardMsg::PresenceJoin { app, channel, user_id, user_info, conn, at } => {
                self.owner_join(app, channel, &user_id, user_info, conn, at)
            }
            ShardMsg::PresenceLeave { app, channel, user_id, conn } => {
                if self.rosters.leave(app, &channel, &user_id, conn) {
                    let frame = messages::member_removed(&channel, &user_id);
                    self.broadcast(app, &channel, frame, None);
                    if self.wants_members(app) {
                        match self.now {
                            Some(now) => {
                                let due = now + self.apps.get(app).webhook_delay;
                                self.delayed.remove_member(app, channel, user_id, due);
                            }
                            // No clock seen yet: better undelayed than lost.
                            None if self.wants(app, HookKind::MemberRemoved) => self
                                .events
                                .push(ShardEvent::MemberRemoved { app, channel, user_id }),
                            None => {}
                        }
                    }
                }
            }
            ShardMsg::PresenceJoined { app, channel, conn, outcome } => {
                self.joined(app, &channel, conn, outcome)
            }
            ShardMsg::Query { from, id, app, channels } => {
                let counts = channels.iter().map(|c| self.local_counts(app, c)).collect();
                self.send_to_shard(from, ShardMsg::QueryReply { id, counts });
            }
            ShardMsg::QueryReply { id, counts } => self.query_reply(id, counts),
            ShardMsg::ListChannels { from, id, app, prefix } => {
                let channels = self.local_list(app, &prefix);
                self.send_to_shard(from, ShardMsg::ChannelList { id, channels });
            }
            ShardMsg::ChannelList { id, channels } => self.list_reply(id, channels),
            ShardMsg::ListUsers { from, id, app, channel } => {
                let users = self.rosters.user_ids(app, &channel);
                self.send_to_shard(from, ShardMsg::UserList { id, users });
            }
            ShardMsg::UserList { id, users } => self.users_reply(id, users),
            ShardMsg::SubscriptionDelta { app, channel, delta } => {
                self.owner_count(app, channel, delta)
            }
            ShardMsg::TerminateUser { app, user_id } => self.terminate_local(app, &user_id),
            ShardMsg::UserOnline { app, user_id, conn } => {
                if self.users.sign_in(app, &user_id, conn) {
                    self.announce_user(app, &user_id, true);
                }
            }
            ShardMsg::UserOffline { app, user_id, conn } => {
                if self.users.sign_out(app, &user_id, conn) {
                    self.announce_user(app, &user_id, false);
                }
            }
            ShardMsg::Watch { app, user_ids, watcher } => {
                let mut online = Vec::new();
                for id in user_ids {
                    self.users.watch(app, &id, watcher);
                    if self.users.is_online(app, &id) {
                        online.push(id);
                    }
                }
                if !online.is_empty() {
                    let msg = ShardMsg::Watchlist { watcher, online: true, user_ids: online };
                    self.send_to_shard(watcher.shard as usize, msg);
                }
            }
            ShardMsg::Unwatch { app, user_ids, watcher } => {
                for id in user_ids {
                    self.users.unwatch(app, &id, watcher);
                }
            }
            ShardMsg::Watchlist { watcher, online, user_ids } => {
                self.watchlist_event(watcher, online, &user_ids)
            }
            ShardMsg::CachePublish { app, channel, frame, exclude, at } => {
                let ttl = self.apps.get(app).cache_ttl;
                self.cache.store(app, &channel, frame.clone(), at, ttl);
                self.broadcast(app, &channel, frame, exclude);
            }
            ShardMsg::CacheFetch { app, channel, conn, at } => {
                self.replay_to(app, channel, conn, at)
            }
            ShardMsg::CacheReplay { app, channel, conn, frame } => {
                self.cache_replay(app, &channel, conn, frame)
            }
            ShardMsg::CacheQuery { from, id, app, channel, at } => {
                let cached = self.cache_info(app, &channel, at);
                self.send_to_shard(from, ShardMsg::CacheInfo { id, cached });
            }
            ShardMsg::CacheInfo { id, cached } => self.answered(id, |gather| {
                if let Gather::Cache(acc) = gather {
                    *acc = cached;
                }
            }),
            ShardMsg::Shutdown => {}
            // The runtime hands these to the shard's Incus state instead.
            ShardMsg::Incus(_) => {}
            #[cfg(test)]
            ShardMsg::Test(_) => {}
        }
    }

    /// On the owner shard: records a join and answers the joining shard.
    /// `member_added` goes out before the answer, so the joiner (not yet in
    /// any index) never sees its own arrival.
    fn owner_join(
        &mut self,
        app: AppIdx,
        channel: Box<str>,
        user_id: &str,
        user_info: Option<Box<str>>,
        conn: ConnRef,
        at: Instant,
    ) {
        let max = self.apps.get(app).max_presence_members;
        let added_info = user_info.clone();
        let mut replay = false;
        let outcome = match self.rosters.join(app, &channel, user_id, user_info, conn, max) {
            Join::Full => JoinOutcome::Full,
            join => {
                if join == Join::Added {
                    let frame = messages::member_added(&channel, user_id, added_info.as_deref());
                    self.broadcast(app, &channel, frame, None);
                    if self.wants_members(app)
                        && !self.delayed.rejoined(app, &channel, user_id)
                        && self.wants(app, HookKind::MemberAdded)
                    {
                        let (channel, user_id) = (channel.clone(), user_id.into());
                        self.events.push(ShardEvent::MemberAdded { app, channel, user_id });
                    }
                }
                let snapshot = self.rosters.snapshot_json(app, &channel);
                replay = channel::classify(&channel).cache;
                JoinOutcome::Joined(messages::presence_subscription_succeeded(&channel, &snapshot))
            }
        };
        let cache_channel = replay.then(|| channel.clone());
        self.send_to_shard(
            conn.shard as usize,
            ShardMsg::PresenceJoined { app, channel, conn, outcome },
        );
        // Right behind the verdict on the same ring, so the joiner gets the
        // replay after its member list and before any later event.
        if let Some(channel) = cache_channel {
            self.replay_to(app, channel, conn, at);
        }
    }

    /// On the joining connection's shard: the owner's verdict.
    fn joined(&mut self, app: AppIdx, channel: &str, me: ConnRef, outcome: JoinOutcome) {
        let Some(conn) = self.conns.get_mut(me.key as usize) else { return };
        if conn.generation != me.generation {
            return;
        }
        let Some(at) = conn.subs.iter().position(|s| &*s.channel == channel) else { return };
        match outcome {
            JoinOutcome::Joined(frame) => {
                let mut added = false;
                if let SubState::Joining = conn.subs[at].state {
                    let (chan, new) = self.index.subscribe(app, channel, me.key);
                    conn.subs[at].state = SubState::Active { chan };
                    added = new;
                }
                conn.session.authorize();
                self.send(me.key, frame);
                if added {
                    self.count_subscription(app, channel, ChannelKind::Presence, 1);
                }
            }
            JoinOutcome::Full => {
                conn.subs.swap_remove(at);
                let max = self.apps.get(app).max_presence_members;
                let msg =
                    format!("Cannot join {channel}: the channel has its maximum of {max} members");
                self.send(me.key, messages::error(Some(CloseCode::OVER_CAPACITY.0), &msg));
            }
        }
    }

    fn local_counts(&self, app: AppIdx, channel: &str) -> ChannelCounts {
        let owns = owner_shard(app, channel, self.shards) == self.id;
        let presence = channel.starts_with("presence-");
        ChannelCounts {
            subscriptions: self.index.count(app, channel),
            users: (owns && presence).then(|| self.rosters.user_count(app, channel)),
        }
    }

    /// Starts gathering node-wide counts for `channels`; poll the result with
    /// [`Shard::poll_query`].
    pub fn start_query(&mut self, app: AppIdx, channels: &[&str]) -> u64 {
        let counts = channels.iter().map(|c| self.local_counts(app, c)).collect();
        let id = self.new_query(self.shards - 1, Gather::Counts(counts));
        for to in 0..self.shards {
            if to != self.id {
                self.send_to_shard(
                    to,
                    ShardMsg::Query {
                        from: self.id,
                        id,
                        app,
                        channels: channels.iter().map(|c| (*c).into()).collect(),
                    },
                );
            }
        }
        id
    }

    /// The merged counts once every shard has answered.
    pub fn poll_query(&mut self, id: u64, waker: &Waker) -> Option<Vec<ChannelCounts>> {
        match self.poll_gather(id, waker)? {
            Gather::Counts(counts) => Some(counts),
            _ => Some(Vec::new()),
        }
    }

    /// Starts listing the node's occupied channels of `app` whose names
    /// start with `prefix`; poll the result with [`Shard::poll_list`].
    pub fn start_list(&mut self, app: AppIdx, prefix: &str) -> u64 {
        let mut list = BTreeMap::new();
        merge_list(&mut list, self.local_list(app, prefix));
        let id = self.new_query(self.shards - 1, Gather::List(list));
        for to in 0..self.shards {
            if to != self.id {
                let msg = ShardMsg::ListChannels { from: self.id, id, app, prefix: prefix.into() };
                self.send_to_shard(to, msg);
            }
        }
        id
    }

    /// Every occupied channel (at least one subscription on some shard), by
    /// name, once every shard has answered. `users` is set for presence
    /// channels.
    pub fn poll_list(&mut self, id: u64, waker: &Waker) -> Option<Vec<(Box<str>, ChannelCounts)>> {
        match self.poll_gather(id, waker)? {
            Gather::List(list) => {
                Some(list.into_iter().filter(|(_, c)| c.subscriptions > 0).collect())
            }
            _ => Some(Vec::new()),
        }
    }

    /// Starts asking a presence channel's owner for its member ids; poll the
    /// result with [`Shard::poll_users`].
    pub fn start_users(&mut self, app: AppIdx, channel: &str) -> u64 {
        let owner = owner_shard(app, channel, self.shards);
        if owner == self.id {
            let users = self.rosters.user_ids(app, channel);
            return self.new_query(0, Gather::Users(users));
        }
        let id = self.new_query(1, Gather::Users(Vec::new()));
        let msg = ShardMsg::ListUsers { from: self.id, id, app, channel: channel.into() };
        self.send_to_shard(owner, msg);
        id
    }

    /// The unique user ids of the channel once its owner has answered.
    pub fn poll_users(&mut self, id: u64, waker: &Waker) -> Option<Vec<Box<str>>> {
        match self.poll_gather(id, waker)? {
            Gather::Users(users) => Some(users),
            _ => Some(Vec::new()),
        }
    }

    /// Forgets a query whose asker went away.
    pub fn cancel_query(&mut self, id: u64) {
        self.queries.remove(&id);
    }

    fn new_query(&mut self, remaining: usize, gather: Gather) -> u64 {
        let id = self.next_query;
        self.next_query += 1;
        self.queries.insert(id, PendingQuery { remaining, gather, waker: None });
        id
    }

    fn poll_gather(&mut self, id: u64, waker: &Waker) -> Option<Gather> {
        let pending = self.queries.get_mut(&id)?;
        if pending.remaining > 0 {
            pending.waker = Some(waker.clone());
            return None;
        }
        self.queries.remove(&id).map(|q| q.gather)
    }

    /// Applies one shard's answer; wakes the asker after the last one.
    fn answered(&mut self, id: u64, merge: impl FnOnce(&mut Gather)) {
        let Some(pending) = self.queries.get_mut(&id) else { return };
        merge(&mut pending.gather);
        pending.remaining = pending.remaining.saturating_sub(1);
        if pending.remaining == 0
            && let Some(w) = pending.waker.take()
        {
            w.wake();
        }
    }

    fn query_reply(&mut self, id: u64, counts: Vec<ChannelCounts>) {
        self.answered(id, |gather| {
            if let Gather::Counts(acc) = gather {
                for (acc, part) in acc.iter_mut().zip(counts) {
                    acc.subscriptions += part.subscriptions;
                    acc.users = acc.users.or(part.users);
                }
            }
        });
    }

    fn list_reply(&mut self, id: u64, channels: Vec<(Box<str>, ChannelCounts)>) {
        self.answered(id, |gather| {
            if let Gather::List(acc) = gather {
                merge_list(acc, channels);
            }
        });
    }

    fn users_reply(&mut self, id: u64, users: Vec<Box<str>>) {
        self.answered(id, |gather| {
            if let Gather::Users(acc) = gather {
                *acc = users;
            }
        });
    }

    /// This shard's part of a channel listing: local subscriptions, and the
    /// user counts of the presence channels it owns (which may have no local
    /// subscriber).
    fn local_list(&self, app: AppIdx, prefix: &str) -> Vec<(Box<str>, ChannelCounts)> {
        let mut out: Vec<(Box<str>, ChannelCounts)> = self
            .index
            .channels_of(app)
            .filter(|(name, _)| name.starts_with(prefix))
            .map(|(name, n)| (name.into(), ChannelCounts { subscriptions: n, users: None }))
            .collect();
        for (name, users) in self.rosters.channels_of(app) {
            if name.starts_with(prefix) {
                let counts = ChannelCounts { subscriptions: 0, users: Some(users) };
                out.push((name.into(), counts));
            }
        }
        out
    }

    /// Tells the channel's owner that a local subscription came or went, for
    /// apps with `subscription_count` on. Presence channels count users
    /// instead (spec §11), and server-to-user channels are internal.
    /// The owner also needs the count for occupancy webhooks, presence
    /// channels included.
    fn count_subscription(&mut self, app: AppIdx, channel: &str, kind: ChannelKind, delta: i32) {
        let counted = match kind {
            ChannelKind::ServerToUser => false,
            ChannelKind::Presence => self.wants_occupancy(app),
            _ => {
                self.apps.get(app).subscription_count
                    || self.wants_counts(app)
                    || self.wants_occupancy(app)
            }
        };
        if !counted {
            return;
        }
        let msg = ShardMsg::SubscriptionDelta { app, channel: channel.into(), delta };
        self.send_to_owner(app, channel, msg);
    }

    /// On the owner: applies a change and broadcasts the new count, at once
    /// up to 100 subscribers, else at most once per 5 s (spec §11).
    fn owner_count(&mut self, app: AppIdx, channel: Box<str>, delta: i32) {
        let occupancy = self.wants_occupancy(app);
        let key = (app, channel);
        let entry = self.sub_counts.entry(key.clone()).or_default();
        let before = entry.total;
        entry.total = entry.total.saturating_add_signed(delta as isize);
        if before == 0 && entry.total > 0 && occupancy {
            // A held vacate means the receiver never saw the channel empty.
            if !self.delayed.reoccupied(app, &key.1) && self.wants(app, HookKind::ChannelOccupied) {
                self.events.push(ShardEvent::ChannelOccupied { app, channel: key.1.clone() });
            }
        }
        let Some(entry) = self.sub_counts.get_mut(&key) else { return };
        if entry.total == 0 {
            // Nobody is left to tell.
            self.sub_counts.remove(&key);
            match self.now {
                Some(now) if occupancy => {
                    let due = now + self.apps.get(app).webhook_delay;
                    self.delayed.vacate(app, key.1, due);
                }
                // No clock seen yet: better undelayed than lost.
                None if self.wants(app, HookKind::ChannelVacated) => {
                    self.events.push(ShardEvent::ChannelVacated { app, channel: key.1 });
                }
                _ => {}
            }
            return;
        }
        let due = match (entry.last_sent, self.now) {
            _ if entry.total <= SUBSCRIPTION_COUNT_THROTTLE_ABOVE => true,
            (Some(last), Some(now)) => now >= last + SUBSCRIPTION_COUNT_INTERVAL,
            _ => true,
        };
        if due {
            entry.last_sent = self.now;
            let total = entry.total;
            self.emit_count(app, &key.1, total);
        } else if !entry.pending {
            entry.pending = true;
            self.sub_counts_pending.push(key);
        }
    }

    /// Sends the throttled counts whose interval has passed.
    fn flush_sub_counts(&mut self, now: Instant) {
        if self.sub_counts_pending.is_empty() {
            return;
        }
        let pending = std::mem::take(&mut self.sub_counts_pending);
        for key in pending {
            let Some(entry) = self.sub_counts.get_mut(&key) else { continue };
            if entry.last_sent.is_some_and(|last| now < last + SUBSCRIPTION_COUNT_INTERVAL) {
                self.sub_counts_pending.push(key);
                continue;
            }
            entry.pending = false;
            entry.last_sent = Some(now);
            let total = entry.total;
            self.emit_count(key.0, &key.1, total);
        }
    }

    /// `subscription_count` webhooks follow the counts of the channels
    /// whose subscribers are told theirs: never presence (spec §11, §13).
    fn wants_counts(&self, app: AppIdx) -> bool {
        self.wants(app, HookKind::SubscriptionCount)
    }

    /// Sends a count that is due: to the subscribers, and to the webhook.
    fn emit_count(&mut self, app: AppIdx, channel: &str, total: usize) {
        if channel::classify(channel).kind == ChannelKind::Presence {
            return;
        }
        if self.apps.get(app).subscription_count {
            let frame = messages::subscription_count(channel, total);
            self.broadcast(app, channel, frame, None);
        }
        if self.wants_counts(app) {
            let channel = channel.into();
            self.events.push(ShardEvent::SubscriptionCount { app, channel, count: total });
        }
    }

    /// Closes every connection signed in as `user_id`, on every shard, with
    /// 4009 (spec §10.5). Connections that only joined presence channels
    /// under that id are not signed in and stay.
    pub fn terminate_user(&mut self, app: AppIdx, user_id: &str) {
        for to in 0..self.shards {
            if to != self.id {
                self.send_to_shard(to, ShardMsg::TerminateUser { app, user_id: user_id.into() });
            }
        }
        self.terminate_local(app, user_id);
    }

    fn terminate_local(&mut self, app: AppIdx, user_id: &str) {
        // A scan rather than a user index: termination is rare, and this
        // keeps sign-in free of per-shard bookkeeping.
        for (_, conn) in self.conns.iter_mut() {
            let session = &conn.session;
            if session.app == app && session.user.as_ref().is_some_and(|u| &*u.id == user_id) {
                close_outbox(&mut conn.outbox, CloseCode::UNAUTHORIZED, true);
            }
        }
    }

    fn signin(&mut self, key: ConnKey, user_data: &str, user: SignedInUser) {
        self.send(key, messages::signin_success(user_data));
        if user.watchlist_truncated {
            let msg = format!(
                "Watchlist limit exceeded: only the first {MAX_WATCHLIST} user ids are watched"
            );
            self.send(key, messages::error(Some(CloseCode::WATCHLIST_LIMIT.0), &msg));
        }
        let Some(conn) = self.conns.get_mut(key as usize) else { return };
        // A repeated sign-in (same user, the session refuses another) is
        // confirmed again but registered once.
        if conn.signed_in {
            return;
        }
        conn.signed_in = true;
        let watchlist: Vec<Box<str>> = user.watchlist.into_iter().map(Into::into).collect();
        conn.watchlist.clone_from(&watchlist);
        let (app, generation) = (conn.session.app, conn.generation);
        let me = self.conn_ref(key, generation);
        let owner = owner_shard(app, &user.id, self.shards);
        self.send_to_shard(owner, ShardMsg::UserOnline { app, user_id: user.id.into(), conn: me });
        for (owner, user_ids) in by_owner(app, watchlist, self.shards) {
            self.send_to_shard(owner, ShardMsg::Watch { app, user_ids, watcher: me });
        }
    }

    /// On a user's owner shard: tells the user's watchers it went online or
    /// offline.
    fn announce_user(&mut self, app: AppIdx, user_id: &str, online: bool) {
        let watchers = self.users.watchers(app, user_id).to_vec();
        for watcher in watchers {
            let user_ids = vec![user_id.into()];
            self.send_to_shard(
                watcher.shard as usize,
                ShardMsg::Watchlist { watcher, online, user_ids },
            );
        }
    }

    /// On a watcher's shard: passes a watchlist change to the connection.
    fn watchlist_event(&mut self, watcher: ConnRef, online: bool, user_ids: &[Box<str>]) {
        let Some(conn) = self.conns.get(watcher.key as usize) else { return };
        if conn.generation != watcher.generation {
            return;
        }
        let ids: Vec<&str> = user_ids.iter().map(|id| &**id).collect();
        self.send(watcher.key, messages::watchlist_event(online, &ids));
    }

    /// Runs the liveness clock over every connection: pings the silent ones
    /// and closes those that did not answer (4201).
    pub fn handle_tick(&mut self, now: Instant) {
        self.now = Some(now);
        self.flush_sub_counts(now);
        let events = &mut self.events;
        self.delayed.take_due(now, |due| {
            events.push(match due {
                Due::Vacated { app, channel } => ShardEvent::ChannelVacated { app, channel },
                Due::Removed { app, channel, user_id } => {
                    ShardEvent::MemberRemoved { app, channel, user_id }
                }
            })
        });
        self.cache.sweep(now);
        let (activity, pong) = (self.settings.activity_timeout, self.settings.pong_timeout);
        for (_, conn) in self.conns.iter_mut() {
            if conn.outbox.closing().is_some() {
                continue;
            }
            if conn.session.authorization_overdue(now) {
                close_with(&mut conn.outbox, CloseCode::UNAUTHORIZED, AUTHORIZATION_TIMEOUT, true);
                continue;
            }
            // An outbox keeps its queue's capacity between frames so busy
            // connections do not allocate per frame; one found empty at a
            // tick is idle, and gives it back.
            conn.outbox.release_idle_capacity();
            match conn.session.handle_timeout(now, activity, pong) {
                Timeout::None => {}
                Timeout::Ping => {
                    let limit = self.settings.max_outbox_bytes;
                    if conn.outbox.push(messages::ping(), limit).is_err() {
                        slow_consumer(&mut conn.outbox);
                    }
                }
                Timeout::Close => {
                    close_outbox(&mut conn.outbox, CloseCode::PONG_NOT_RECEIVED, false)
                }
            }
        }
    }

    /// Closes a connection: `pusher:error` with a Pusher code, then the close
    /// frame. Frames not yet started are dropped.
    pub fn close(&mut self, key: ConnKey, code: CloseCode) {
        if let Some(conn) = self.conns.get_mut(key as usize) {
            close_outbox(&mut conn.outbox, code, true);
        }
    }

    /// Closes every connection with 4200 (shutdown).
    pub fn close_all(&mut self, code: CloseCode) {
        for (_, conn) in self.conns.iter_mut() {
            close_outbox(&mut conn.outbox, code, true);
        }
    }

    /// Hands every message queued for other shards to `send(target, msg)`.
    pub fn drain_mesh_out(&mut self, mut send: impl FnMut(usize, ShardMsg)) {
        for (to, queue) in self.mesh_out.iter_mut().enumerate() {
            for msg in queue.drain(..) {
                send(to, msg);
            }
        }
    }

    /// Whether anything waits in [`Shard::drain_mesh_out`].
    pub fn has_mesh_out(&self) -> bool {
        self.mesh_out.iter().any(|v| !v.is_empty())
    }

    fn conn_ref(&self, key: ConnKey, generation: u32) -> ConnRef {
        ConnRef { shard: self.id as u16, key, generation }
    }

    fn send(&mut self, key: ConnKey, frame: Bytes) {
        let limit = self.settings.max_outbox_bytes;
        if let Some(conn) = self.conns.get_mut(key as usize)
            && conn.outbox.push(frame, limit).is_err()
        {
            slow_consumer(&mut conn.outbox);
        }
    }

    fn send_to_owner(&mut self, app: AppIdx, channel: &str, msg: ShardMsg) {
        self.send_to_shard(owner_shard(app, channel, self.shards), msg);
    }

    /// Queues `msg` for shard `to`, or handles it here when `to` is us.
    fn send_to_shard(&mut self, to: usize, msg: ShardMsg) {
        if to == self.id {
            self.handle_mesh(msg);
        } else {
            self.mesh_out[to].push(msg);
        }
    }
}

/// Groups user ids by their owner shard, so that one message per owner
/// carries them.
fn by_owner(app: AppIdx, ids: Vec<Box<str>>, shards: usize) -> Vec<(usize, Vec<Box<str>>)> {
    let mut groups: Vec<(usize, Vec<Box<str>>)> = Vec::new();
    for id in ids {
        let owner = owner_shard(app, &id, shards);
        match groups.iter_mut().find(|(o, _)| *o == owner) {
            Some((_, group)) => group.push(id),
            None => groups.push((owner, vec![id])),
        }
    }
    groups
}

fn merge_list(acc: &mut BTreeMap<Box<str>, ChannelCounts>, part: Vec<(Box<str>, ChannelCounts)>) {
    for (name, counts) in part {
        let entry = acc.entry(name).or_default();
        entry.subscriptions += counts.subscriptions;
        entry.users = entry.users.or(counts.users);
    }
}

/// A consumer that cannot keep up is closed with 4100, a reconnect-after-
/// back-off code: its queue is dropped rather than allowed to grow.
fn slow_consumer(outbox: &mut Outbox) {
    close_outbox(outbox, CloseCode::OVER_CAPACITY, true);
}

/// Whether a successful subscription to a channel of this kind makes the
/// connection authorized (spec §10.4: private- and presence- channels,
/// cache and encrypted variants included).
fn is_authorizing(kind: ChannelKind) -> bool {
    matches!(kind, ChannelKind::Private | ChannelKind::PrivateEncrypted | ChannelKind::Presence)
}

/// The `pusher:error` message of a connection closed for not becoming
/// authorized in time (spec §10.4; the text peers use).
pub const AUTHORIZATION_TIMEOUT: &str = "Connection not authorized within timeout";

/// Like [`close_outbox`], with a message more specific than the code's
/// reason in the `pusher:error`.
fn close_with(outbox: &mut Outbox, code: CloseCode, message: &str, discard: bool) {
    let error = messages::error(Some(code.0), message);
    let close = codec::close_frame(code.0, code.reason());
    outbox.close(code, discard, &[error, close]);
}

/// Pusher codes are announced in a `pusher:error` first (spec §3.1), which
/// pusher-js reads; RFC 6455 codes (1xxx) only get the close frame.
fn close_outbox(outbox: &mut Outbox, code: CloseCode, discard: bool) {
    let close = codec::close_frame(code.0, code.reason());
    if code.0 < 4000 {
        outbox.close(code, discard, &[close]);
    } else {
        let error = messages::error(Some(code.0), code.reason());
        outbox.close(code, discard, &[error, close]);
    }
}

#[cfg(test)]
mod tests;
