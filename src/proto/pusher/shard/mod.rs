//! One shard's Pusher state, sans-IO: its connections, its channel index,
//! what it owns for the whole node, and what it has to tell other shards.
//!
//! The IO layer feeds it client frames (`handle_text`), ring messages
//! (`handle_mesh`) and clock ticks (`handle_tick`), always with the time,
//! and carries out what it leaves behind, each taken with a method of its
//! own after a batch of work:
//! - frames queued in connection [`Outbox`]es, and the tokens of the
//!   sockets that gained some ([`Shard::take_dirty`]);
//! - messages for other shards ([`Shard::drain_mesh_out`]);
//! - webhook events ([`Shard::drain_events`]);
//! - queries that have every answer ([`Shard::take_completed`]).
//!
//! Nothing here blocks, reads the clock or touches a socket, so several
//! shards can be driven by hand in a unit test.
//!
//! The pieces, one file each: subscriptions and fan-out (`delivery`),
//! the presence rosters a channel's owner keeps (`presence`), the cache
//! channels' last events on their owner (`cache`), node-wide counts and
//! the HTTP API's queries (`queries`), `subscription_count` on the owner
//! (`counts`), webhook events (`hooks`), and signed-in users,
//! watchlists and termination (`users`).
//!
//! # Owners
//! What must be decided once per node lives on one shard, picked by a hash
//! ([`owner_shard`]): a channel's presence roster, subscription count,
//! occupancy and cached event on the channel's owner; a user's sign-ins and
//! watchers on the user's owner. Everything else is per shard.
//!
//! # Fan-out
//! A published event is framed once ([`messages`]); each local subscriber
//! gets a clone of the same [`Bytes`] (a refcount bump) in its outbox, and
//! each other shard gets one `Deliver` carrying the same handle.

mod cache;
mod counts;
mod delivery;
mod hooks;
mod presence;
mod queries;
mod users;

use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, Instant},
};

use arcstr::ArcStr;
use bytes::Bytes;
use slab::Slab;
use thin_vec::ThinVec;

use super::{
    channel::ChannelKind,
    delayed::{Delayed, Due},
    messages,
    session::{Command, Rejection, Session, Timeout},
};
pub use crate::proto::ws::outbox::{Dirty, Outbox};
use crate::{
    core::{
        AppIdx, Apps, CloseCode, ConnRef,
        counters::{AppCounters, ShardCounters},
        socket_id::SocketIdSource,
    },
    proto::cluster::ClusterUp,
    proto::{
        console::{ConsoleEvent, Watch},
        index::{
            ChannelIndex, ConnKey, EventCache, Interest, PresenceRosters, UserRegistry, owner_shard,
        },
        msg::ShardMsg,
        ws::codec,
    },
};
use counts::SubCount;
pub use counts::{SUBSCRIPTION_COUNT_INTERVAL, SUBSCRIPTION_COUNT_THROTTLE_ABOVE};
pub use hooks::ShardEvent;
pub use queries::Answer;
use queries::PendingQuery;

/// What a client refused for a full ring is told.
const BUSY: &str = "the server is busy, try again later";

/// Subscriptions one connection may hold; a client past it gets a
/// `pusher:error`, so that one socket cannot grow the index without bound.
pub const MAX_SUBSCRIPTIONS_PER_CONNECTION: usize = 1000;

/// Shard-wide settings, taken from the server config.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Silence before the server pings.
    pub activity_timeout: Duration,
    /// Time a pinged client has to answer.
    pub pong_timeout: Duration,
    /// Bytes a connection may have queued before it is dropped as too slow.
    pub max_outbox_bytes: usize,
    /// Part of a cluster of nodes: what must be decided once is decided in
    /// Redis by the node's bridge, which the shard tells through
    /// [`Shard::drain_cluster_out`], instead of by owner shards.
    pub cluster: bool,
}

#[derive(Debug)]
enum SubState {
    /// Subscribed: in the index.
    Active,
    /// Presence join sent to the owner, waiting for its verdict.
    Joining,
    /// Cache channel: waiting for the owner's cached event (or miss), which
    /// completes the subscription (spec §8).
    Fetching,
    /// In a cluster: waiting for the node to hold the subscription in the
    /// cluster's view ([`ShardMsg::SubReady`]).
    Announcing,
}

#[derive(Debug)]
struct Sub {
    /// The name as the index holds it once subscribed (shared, not a copy).
    channel: ArcStr,
    /// The user id this connection is present as, on presence channels
    /// (one word, as the name: issue #14).
    user_id: Option<ArcStr>,
    state: SubState,
}

/// A connection's subscriptions: the first in place, more in a vector.
/// Most connections hold one, which then costs no allocation of its own
/// (a 48 B block beside a 24 B vector was 32 B more per idle connection,
/// issue #14). The vector is a `ThinVec`, one word, so that the enum
/// needs no tag beside a `Sub`. Read as a slice.
#[derive(Debug, Default)]
enum Subs {
    #[default]
    None,
    One(Sub),
    Many(ThinVec<Sub>),
}

impl Subs {
    fn push(&mut self, sub: Sub) {
        match std::mem::take(self) {
            Subs::None => *self = Subs::One(sub),
            Subs::One(first) => {
                // Room for four, as a vector's first push makes.
                let mut many = ThinVec::with_capacity(4);
                many.extend([first, sub]);
                *self = Subs::Many(many);
            }
            Subs::Many(mut many) => {
                many.push(sub);
                *self = Subs::Many(many);
            }
        }
    }

    /// Removes the one at `at`, the last taking its place (as
    /// `Vec::swap_remove`).
    fn swap_remove(&mut self, at: usize) -> Sub {
        match std::mem::take(self) {
            Subs::One(only) if at == 0 => only,
            Subs::Many(mut many) if at < many.len() => {
                let sub = many.swap_remove(at);
                // Back in place once one is left, giving the vector back.
                *self = match many.len() {
                    1 => many.pop().map_or(Subs::None, Subs::One),
                    _ => Subs::Many(many),
                };
                sub
            }
            // Out of range, as a vector's would be: the callers only pass
            // positions they found.
            other => {
                let len = other.len();
                panic!("swap_remove index (is {at}) should be < len (is {len})")
            }
        }
    }
}

impl std::ops::Deref for Subs {
    type Target = [Sub];

    fn deref(&self) -> &[Sub] {
        match self {
            Subs::None => &[],
            Subs::One(sub) => std::slice::from_ref(sub),
            Subs::Many(many) => many,
        }
    }
}

impl std::ops::DerefMut for Subs {
    fn deref_mut(&mut self) -> &mut [Sub] {
        match self {
            Subs::None => &mut [],
            Subs::One(sub) => std::slice::from_mut(sub),
            Subs::Many(many) => many,
        }
    }
}

impl IntoIterator for Subs {
    type Item = Sub;
    type IntoIter = std::iter::Chain<std::option::IntoIter<Sub>, thin_vec::IntoIter<Sub>>;

    fn into_iter(self) -> Self::IntoIter {
        let (one, many) = match self {
            Subs::None => (None, ThinVec::new()),
            Subs::One(sub) => (Some(sub), ThinVec::new()),
            Subs::Many(many) => (None, many),
        };
        one.into_iter().chain(many)
    }
}

/// One connection in the shard.
#[derive(Debug)]
pub struct Conn {
    /// Protocol state.
    pub session: Session,
    /// Frames to write.
    pub outbox: Outbox,
    generation: u32,
    subs: Subs,
    /// Registered with the user's owner shard as signed in.
    signed_in: bool,
    /// User ids this connection watches (spec §10.3), each with whether
    /// the connection was last told it is online. One word where a boxed
    /// slice is two, in every connection (issue #14).
    watchlist: ThinVec<(Box<str>, bool)>,
}

/// The sans-IO state of one shard.
pub struct Shard {
    id: usize,
    shards: usize,
    apps: Arc<Apps>,
    settings: Settings,
    conns: Slab<Conn>,
    next_generation: u32,
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
    /// Which buckets of channels the other shards hold subscribers in.
    interest: Interest,
    /// `mesh_out` holds a publish's `Deliver` to a shard that, as far as
    /// this one knows, holds no subscriber of its channel ([`Shard::crosses`]).
    crossing: bool,
    queries: HashMap<u64, PendingQuery>,
    next_query: u64,
    /// Queries with every answer in, until [`Shard::take_completed`].
    completed: Vec<u64>,
    /// Outboxes that gained frames since [`Shard::take_dirty`].
    dirty: Dirty,
    /// The rings to other shards are too far behind ([`Shard::set_backlogged`]).
    backlogged: bool,
    /// A subscriber that keeps up was queued past its outbox limit since
    /// [`Shard::caught_up`] ([`Shard::behind`]).
    behind: bool,
    /// How many times the shard fell behind and caught up again.
    behind_spells: u64,
    /// Input about to be handled may follow messages still on their way in
    /// the rings ([`Shard::set_unsettled`]).
    unsettled: bool,
    /// For the node's bridge, in a cluster ([`Shard::drain_cluster_out`]).
    cluster_out: Vec<ClusterUp>,
    /// Requests refused while backlogged.
    shed: u64,
    /// This shard's counters; this thread is their only writer.
    counters: Arc<ShardCounters>,
    /// Which apps have console viewers, node-wide.
    watch: Arc<Watch>,
    /// Console events raised since [`Shard::drain_console`].
    console_out: Vec<(AppIdx, ConsoleEvent)>,
}

impl Shard {
    /// Gives back the room of connections and channels that are gone,
    /// after a fall in connections; keys of live ones stay valid.
    pub fn shrink_to_fit(&mut self) {
        self.conns.shrink_to_fit();
        self.index.shrink_to_fit();
    }

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
            interest: Interest::new(id, shards),
            crossing: false,
            queries: HashMap::new(),
            next_query: 0,
            completed: Vec::new(),
            dirty: Dirty::default(),
            backlogged: false,
            behind: false,
            behind_spells: 0,
            unsettled: false,
            cluster_out: Vec::new(),
            shed: 0,
            counters: Arc::new(ShardCounters::new(apps_len)),
            watch: Arc::new(Watch::new(shards, apps_len)),
            console_out: Vec::new(),
        }
    }

    /// Reads the node's console viewers from `watch` instead of the
    /// private, empty one [`Shard::new`] made.
    pub fn set_watch(&mut self, watch: Arc<Watch>) {
        self.watch = watch;
    }

    /// Raises a console event for `app`, built only when the app has a
    /// console viewer on the node.
    fn tap(&mut self, app: AppIdx, event: impl FnOnce() -> ConsoleEvent) {
        if self.watch.any(app) {
            self.console_out.push((app, event()));
        }
    }

    /// Whether some console viewer watches `app`.
    fn watched(&self, app: AppIdx) -> bool {
        self.watch.any(app)
    }

    /// Hands every console event raised since the last call to `f`.
    pub fn drain_console(&mut self, f: impl FnMut((AppIdx, ConsoleEvent))) {
        self.console_out.drain(..).for_each(f);
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
    /// queues `pusher:connection_established`, after `preface` (the
    /// transport's HTTP 101 response) when given, so that both leave in one
    /// write: a loopback send costs a few microseconds of kernel time, a
    /// third of a connect's server CPU. `token` is the IO layer's handle for
    /// the socket, which [`Shard::take_dirty`] hands back.
    pub fn open(
        &mut self,
        token: u32,
        app: AppIdx,
        now: Instant,
        preface: Option<Bytes>,
    ) -> ConnKey {
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
            outbox: Outbox::new(token),
            generation: self.next_generation,
            subs: Subs::None,
            signed_in: false,
            watchlist: ThinVec::new(),
        }) as ConnKey;
        self.counters.app(app as usize).opened.inc();
        self.tap(app, || ConsoleEvent::Connected { socket_id });
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
        let me = self.conn_ref(key, conn.generation);
        let app = conn.session.app;
        self.counters.app(app as usize).closed.inc();
        let socket_id = conn.session.socket_id;
        for sub in conn.subs {
            self.leave(app, key, me, sub, socket_id);
        }
        self.tap(app, || ConsoleEvent::Disconnected { socket_id });
        if let Some(user) = conn.session.user.filter(|_| conn.signed_in) {
            let owner = owner_shard(app, &user.id, self.shards);
            self.send_to_shard(owner, ShardMsg::UserOffline { app, user_id: user.id, conn: me });
        }
        let watched = conn.watchlist.into_iter().map(|(id, _)| id).collect();
        for (owner, user_ids) in users::by_owner(app, watched, self.shards) {
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
            // Both add to the rings: shed while they are too far behind.
            // Leaving (unsubscribe, close) is never refused, and can only
            // undo what was let in, so the backlog stays bounded.
            Command::Subscribe { channel, .. } if self.refusing() => {
                self.shed();
                let msg = format!("Cannot subscribe to {channel}: {BUSY}");
                self.send(key, messages::error(None, &msg));
            }
            Command::ClientEvent { .. } if self.refusing() => {
                self.shed();
                let msg = format!("Client event rejected: {BUSY}");
                self.send(key, messages::error(Some(CloseCode::CLIENT_EVENT_REJECTED.0), &msg));
            }
            Command::Subscribe { channel, flags, member } => {
                self.subscribe(key, &channel, flags, member, now)
            }
            Command::Unsubscribe { channel } => self.unsubscribe(key, &channel),
            Command::ClientEvent { event, channel, data } => {
                self.client_event(key, &event, &channel, data.as_bytes())
            }
            Command::Signin { user_data, user } => self.signin(key, &user_data, user),
        }
    }

    /// Tells the state whether this shard's rings to the others hold more
    /// than the IO layer allows; meanwhile subscriptions and client events,
    /// which would add to them, are refused.
    pub fn set_backlogged(&mut self, backlogged: bool) {
        self.backlogged = backlogged;
    }

    /// Whether this shard fell behind its publishers: a subscriber whose
    /// socket takes all it is given was queued past `max_outbox_bytes`
    /// (see [`Outbox::push_unless_slow`]). Until [`Shard::caught_up`], the
    /// shard refuses what adds to its queues, as when backlogged, and the
    /// IO layer answers publishes 503 and leaves its rings unread.
    pub fn behind(&self) -> bool {
        self.behind
    }

    /// The IO layer wrote everything that was queued.
    pub fn caught_up(&mut self) {
        if std::mem::take(&mut self.behind) {
            self.behind_spells += 1;
            crate::warn_throttled!(
                self.behind_spells,
                shard = self.id,
                "publishers outpaced this shard's writes; it refused publishes (503), client \
                 events and subscriptions until it had written what it had queued"
            );
        }
    }

    /// Tells the state whether the rings could be read to the end after the
    /// input it is about to be given was read. When not (this shard leaves
    /// them unread while behind, another shard holds messages for it back
    /// in an overflow, or they kept filling while read), that input may
    /// have been sent after its sender saw the effect of a message not yet
    /// handled here; what it would publish could then overtake that
    /// message, so it is refused, as when backlogged.
    pub fn set_unsettled(&mut self, unsettled: bool) {
        self.unsettled = unsettled;
    }

    /// Whether what adds to the rings or the outboxes is refused: the rings
    /// to other shards are too far behind, this shard fell behind its
    /// publishers, or its own rings could not be settled before the input
    /// at hand. The IO layer answers publishes 503 meanwhile.
    pub fn refusing(&self) -> bool {
        self.backlogged || self.behind || self.unsettled
    }

    /// Whether messages for the node's bridge wait in
    /// [`Shard::drain_cluster_out`].
    pub fn has_cluster_out(&self) -> bool {
        !self.cluster_out.is_empty()
    }

    /// Requests refused because the rings, or the shard's own writes, were
    /// too far behind.
    pub fn shed_total(&self) -> u64 {
        self.shed
    }

    fn shed(&mut self) {
        self.shed += 1;
        crate::warn_throttled!(
            self.shed,
            shard = self.id,
            "rings to other shards, or this shard's writes, are behind; refusing subscriptions \
             and client events"
        );
    }

    fn reject(&mut self, key: ConnKey, rejection: &Rejection) {
        self.send(key, messages::error(rejection.code, &rejection.message));
    }

    /// Tells the state the time without other input, so that what mesh
    /// messages schedule (webhook delays, count throttles) counts from now
    /// rather than from the last tick.
    pub fn set_now(&mut self, now: Instant) {
        self.now = Some(now);
    }

    /// Handles a message from another shard or an external producer.
    pub fn handle_mesh(&mut self, msg: ShardMsg) {
        match msg {
            ShardMsg::Deliver { app, channel, frame, exclude } => {
                self.deliver_local(app, &channel, &frame, exclude, true)
            }
            ShardMsg::Interest { from, changes } => {
                for &(bucket, held) in changes.iter() {
                    self.interest.note(usize::from(from), bucket, held);
                }
            }
            ShardMsg::PresenceJoin { app, channel, user_id, user_info, conn, at } => {
                self.owner_join(app, channel, &user_id, user_info, conn, at)
            }
            ShardMsg::PresenceLeave { app, channel, user_id, conn } => {
                self.owner_leave(app, channel, user_id, conn)
            }
            ShardMsg::PresenceJoined { app, channel, conn, outcome } => {
                self.joined(app, &channel, conn, outcome)
            }
            ShardMsg::Query { from, id, app, channels } => {
                self.answer_counts(from, id, app, &channels)
            }
            ShardMsg::QueryReply { id, counts } => self.query_reply(id, counts),
            ShardMsg::ListChannels { from, id, app, prefix } => {
                self.answer_list(from, id, app, &prefix)
            }
            ShardMsg::ChannelList { id, channels } => self.list_reply(id, channels),
            ShardMsg::ListUsers { from, id, app, channel } => {
                self.answer_users(from, id, app, &channel)
            }
            ShardMsg::UserList { id, users } => self.users_reply(id, users),
            ShardMsg::SubscriptionDelta { app, channel, delta } => {
                self.owner_count(app, channel, delta)
            }
            ShardMsg::TerminateUser { app, user_id } => self.terminate_local(app, &user_id),
            ShardMsg::UserOnline { app, user_id, conn } => self.user_online(app, &user_id, conn),
            ShardMsg::UserOffline { app, user_id, conn } => self.user_offline(app, &user_id, conn),
            ShardMsg::Watch { app, user_ids, watcher } => self.watch(app, user_ids, watcher),
            ShardMsg::Unwatch { app, user_ids, watcher } => self.unwatch(app, user_ids, watcher),
            ShardMsg::Watchlist { watcher, online, user_ids } => {
                self.watchlist_event(watcher, online, &user_ids)
            }
            ShardMsg::CachePublish { app, channel, frame, exclude, at } => {
                self.cache_publish(app, &channel, frame, exclude, at)
            }
            ShardMsg::CacheFetch { app, channel, conn, at } => {
                self.replay_to(app, channel, conn, at)
            }
            ShardMsg::CacheReplay { app, channel, conn, frame } => {
                self.cache_replay(app, &channel, conn, frame)
            }
            ShardMsg::CacheQuery { from, id, app, channel, at } => {
                self.answer_cache(from, id, app, &channel, at)
            }
            ShardMsg::CacheInfo { id, cached } => self.cache_reply(id, cached),
            ShardMsg::SubReady { app, channel, conn } => self.sub_ready(app, &channel, conn),
            ShardMsg::ClusterUser { app, user_id, online } => {
                self.announce_user(app, &user_id, online)
            }
            // The runtime takes these: sockets, not protocol state.
            ShardMsg::Shutdown | ShardMsg::Adopt(_) => {}
            // The runtime hands these to the shard's console viewers.
            ShardMsg::Console { .. } => {}
            // The runtime hands these to the shard's Incus state instead.
            ShardMsg::Incus(_) => {}
            #[cfg(test)]
            ShardMsg::Test(_) => {}
        }
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
                let (code, message) = (CloseCode::UNAUTHORIZED, AUTHORIZATION_TIMEOUT);
                close_with(&mut conn.outbox, code, message, true, &mut self.dirty);
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
                    match conn.outbox.push_unless_slow(
                        messages::ping(),
                        false,
                        limit,
                        &mut self.dirty,
                    ) {
                        Ok(past_limit) => self.behind |= past_limit,
                        Err(_) => {
                            let counters = self.counters.app(conn.session.app as usize);
                            slow_consumer(&mut conn.outbox, &mut self.dirty, counters);
                        }
                    }
                }
                Timeout::Close => {
                    let code = CloseCode::PONG_NOT_RECEIVED;
                    close_outbox(&mut conn.outbox, code, false, &mut self.dirty)
                }
            }
        }
    }

    /// Closes a connection: `pusher:error` with a Pusher code, then the close
    /// frame. Frames not yet started are dropped.
    pub fn close(&mut self, key: ConnKey, code: CloseCode) {
        if let Some(conn) = self.conns.get_mut(key as usize) {
            close_outbox(&mut conn.outbox, code, true, &mut self.dirty);
        }
    }

    /// Closes every connection with 4200 (shutdown).
    pub fn close_all(&mut self, code: CloseCode) {
        for (_, conn) in self.conns.iter_mut() {
            close_outbox(&mut conn.outbox, code, true, &mut self.dirty);
        }
    }

    /// Hands every message queued for other shards to `send(target, msg)`.
    ///
    /// `settled`: every message other shards had put in this shard's rings
    /// when the input behind this turn's publishes arrived has been handled
    /// (the caller looked at the rings after that input and found them
    /// empty, none overflowing). Only then is a publish's `Deliver` to a
    /// shard that holds no subscriber in the channel's bucket left out; see
    /// [`Interest`] for why that cannot lose an event.
    pub fn drain_mesh_out(&mut self, settled: bool, mut send: impl FnMut(usize, ShardMsg)) {
        let filter = std::mem::take(&mut self.crossing) && settled;
        let changes = self.interest.take_changes();
        for (to, queue) in self.mesh_out.iter_mut().enumerate() {
            if let Some(changes) = changes.as_ref().filter(|_| to != self.id) {
                let from = self.id as u16;
                send(to, ShardMsg::Interest { from, changes: Arc::clone(changes) });
            }
            for msg in queue.drain(..) {
                if filter
                    && let ShardMsg::Deliver { app, channel, .. } = &msg
                    && !self.interest.held_by(to, Interest::bucket(*app, channel))
                {
                    continue;
                }
                send(to, msg);
            }
        }
    }

    /// Whether a publish's `Deliver`s wait in [`Shard::drain_mesh_out`] that
    /// it could leave out, so that the caller should settle its rings first.
    pub fn crosses(&self) -> bool {
        self.crossing
    }

    /// Whether anything waits in [`Shard::drain_mesh_out`].
    pub fn has_mesh_out(&self) -> bool {
        self.mesh_out.iter().any(|v| !v.is_empty()) || self.interest.has_changes()
    }

    fn conn_ref(&self, key: ConnKey, generation: u32) -> ConnRef {
        ConnRef { shard: self.id as u16, key, generation }
    }

    fn send(&mut self, key: ConnKey, frame: Bytes) {
        let limit = self.settings.max_outbox_bytes;
        let Some(conn) = self.conns.get_mut(key as usize) else { return };
        match conn.outbox.push_unless_slow(frame, false, limit, &mut self.dirty) {
            Ok(past_limit) => self.behind |= past_limit,
            Err(_) => {
                let counters = self.counters.app(conn.session.app as usize);
                slow_consumer(&mut conn.outbox, &mut self.dirty, counters);
            }
        }
    }

    /// Whether output waits to be taken: dirty outboxes, completed
    /// queries, messages for other shards or webhook events.
    pub fn has_work(&self) -> bool {
        !self.dirty.is_empty()
            || !self.completed.is_empty()
            || self.has_mesh_out()
            || !self.events.is_empty()
            || !self.cluster_out.is_empty()
    }

    /// Hands every message for the node's bridge to `send`, in order.
    pub fn drain_cluster_out(&mut self, mut send: impl FnMut(ClusterUp)) {
        for msg in self.cluster_out.drain(..) {
            send(msg);
        }
    }

    /// Queues a message for the node's bridge.
    fn up(&mut self, msg: ClusterUp) {
        self.cluster_out.push(msg);
    }

    /// Hands over the tokens of the sockets whose outboxes gained frames (or
    /// a close) since the last call; each must be written, and its outbox
    /// [`Outbox::unlist`]ed when the writer looks at it.
    pub fn take_dirty(&mut self, into: &mut Vec<u32>) {
        self.dirty.take(into);
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

/// A consumer that cannot keep up is closed with 4100, a reconnect-after-
/// back-off code: its queue is dropped rather than allowed to grow.
fn slow_consumer(outbox: &mut Outbox, dirty: &mut Dirty, counters: &AppCounters) {
    counters.slow_closed.inc();
    crate::warn_throttled!(
        counters.slow_closed.get(),
        "a connection could not keep up (outbox full); closed it with 4100"
    );
    close_outbox(outbox, CloseCode::OVER_CAPACITY, true, dirty);
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
fn close_with(
    outbox: &mut Outbox,
    code: CloseCode,
    message: &str,
    discard: bool,
    dirty: &mut Dirty,
) {
    let error = messages::error(Some(code.0), message);
    let close = codec::close_frame(code.0, code.reason());
    outbox.close(code, discard, &[error, close], dirty);
}

/// Pusher codes are announced in a `pusher:error` first (spec §3.1), which
/// pusher-js reads; RFC 6455 codes (1xxx) only get the close frame.
fn close_outbox(outbox: &mut Outbox, code: CloseCode, discard: bool, dirty: &mut Dirty) {
    let close = codec::close_frame(code.0, code.reason());
    if code.0 < 4000 {
        outbox.close(code, discard, &[close], dirty);
    } else {
        let error = messages::error(Some(code.0), code.reason());
        outbox.close(code, discard, &[error, close], dirty);
    }
}

#[cfg(test)]
mod tests;
