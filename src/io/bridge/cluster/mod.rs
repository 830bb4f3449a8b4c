//! The cluster side of the bridge: what makes nodes that share a Redis one
//! server. It runs on the bridge thread, beside the Incus tasks, and is the
//! only thing that talks to Redis for the Pusher side.
//!
//! - **From the shards** ([`ClusterUp`], one reliable ring each): each batch
//!   becomes one round of pipelined Redis commands ([`ops`]): PUBLISHes of
//!   local events on the channels' Redis channels, and the scripts of
//!   [`scripts`] that keep the cluster's view (subscription counts,
//!   presence, signed-in users) and say when something changed for the
//!   whole cluster.
//! - **From the other nodes** (pub/sub, [`tasks`]): events of the channels
//!   this node has subscribers to, handed as they came to the shards that
//!   have them; the apps' user events (terminate, online, offline).
//! - **Time**: a heartbeat every [`HEARTBEAT`]; a node silent for
//!   [`DEAD_AFTER`] is taken out of the view by the first node to notice
//!   (its subscriptions, members and sign-ins leave as if they closed);
//!   webhooks held for the app's delay are confirmed against Redis before
//!   they go; the app quotas' counts of the other nodes are read.
//!
//! Redis lost: the node serves its own clients alone (subscriptions and
//! presence joins are answered from what the node holds; events published
//! meanwhile are kept, up to [`MAX_KEPT_PUBLISHES`]). Redis back: the node
//! makes Redis hold exactly what it holds again (the scripts are
//! idempotent), subscribes again, and sends what it kept once the other
//! nodes are back too.

mod ops;
mod reply;
mod scripts;
mod tasks;

use std::{
    cell::{Cell, RefCell},
    collections::{HashMap, HashSet, VecDeque},
    rc::Rc,
    sync::Arc,
    time::{Duration, Instant},
};

use bytes::Bytes;
use tokio::sync::{Notify, mpsc};

use super::{Shared, random};
use crate::{
    core::{AppIdx, ConnRef, SocketId, admission::Admission},
    io::{
        redis_link::RedisLink,
        rings::{Outlet, fanin::FanIn},
        webhooks::HookOutlet,
    },
    proto::{
        cluster::{ClusterUp, keys, node::NodeView},
        msg::ShardMsg,
        pusher::shard::ShardEvent,
    },
};

/// Messages one shard's ring to the bridge holds before the shard queues
/// them in its outlet (and sheds new work at its edges).
pub const RING_CAPACITY: usize = 16 * 1024;
/// Updates taken from the shards per Redis round trip.
const BATCH: usize = 1024;
/// How often a node says it is alive.
pub const HEARTBEAT: Duration = Duration::from_secs(2);
/// Silence after which a node is taken out of the cluster's view. A node
/// killed without a word stops counting within this plus one heartbeat.
pub const DEAD_AFTER: Duration = Duration::from_secs(10);
/// Events kept while Redis is away, sent when it is back; more are dropped
/// and counted.
pub const MAX_KEPT_PUBLISHES: usize = 10_000;
/// Longest wait, after Redis came back, for the nodes that were alive to
/// say so again (they subscribe first) before the kept events go out: a
/// node silent that long is taken out of the view anyway.
const REJOIN_WAIT: Duration = DEAD_AFTER;
/// How long the store lease lasts without being renewed.
const LEASE: Duration = Duration::from_secs(6);
/// Longest a stopping node spends taking itself out of the view.
pub const LEAVE_BUDGET: Duration = Duration::from_secs(1);

/// A shard's end of its ring to the bridge: each update with the time the
/// shard handed it over, so that the bridge takes updates from different
/// shards in the order they happened ([`FanIn::drain_in_order`]).
pub type ClusterOutlet = Outlet<(Instant, ClusterUp)>;
/// The bridge's end of every shard's ring.
pub type ClusterInbox = FanIn<(Instant, ClusterUp)>;

/// One reliable ring per shard (see [`crate::io::rings::fanin::fan_in_reliable`]).
pub fn rings(shards: usize) -> (Vec<ClusterOutlet>, ClusterInbox) {
    crate::io::rings::fanin::fan_in_reliable(shards, RING_CAPACITY)
}

/// What the cluster side is given at start-up.
pub struct ClusterInit {
    /// Every shard's ring to the bridge.
    pub inbox: ClusterInbox,
    /// The bridge's ring to the webhook thread, when some app has webhooks.
    pub hooks: Option<HookOutlet>,
    /// The node's connection counts, for the apps' quotas.
    pub admission: Arc<Admission>,
}

/// Where one Redis channel of this node's pub/sub stands.
enum Subscription {
    /// SUBSCRIBE sent; these wait for it.
    Pending(Vec<Waiter>),
    /// Subscribed (or, with Redis away, as good as it gets).
    Ready,
}

/// What waits for a channel's subscription.
enum Waiter {
    /// A message for a shard: a subscriber's `SubReady`, a presence verdict.
    Msg(usize, ShardMsg),
    /// A cache channel subscriber's fetch, to run once subscribed.
    Fetch { app: AppIdx, channel: Box<str>, conn: ConnRef },
}

/// Commands for the pub/sub task.
enum PubsubCmd {
    Subscribe(String),
    Unsubscribe(String),
}

/// A webhook held for the app's delay, confirmed against Redis when due.
struct Held {
    due: tokio::time::Instant,
    hash: String,
    field: String,
    token: String,
    event: ShardEvent,
}

/// The last event a node handed its shards on a cache channel it has
/// subscribers to.
struct Live {
    /// Events handed so far; a fetch that saw fewer is out of date.
    count: u64,
    /// The highest store sequence number handed or replayed.
    seq: u64,
    frame: Bytes,
}

/// When a busy channel's `subscription_count` last went out, and the
/// count still to send when its interval has passed.
struct CountSent {
    at: tokio::time::Instant,
    pending: Option<usize>,
}

/// A presence member of a channel: app, channel, user id.
type MemberKey = (AppIdx, Box<str>, Box<str>);

/// The cluster side's state, on the bridge thread.
struct Cluster {
    node: Box<str>,
    shared: Rc<Shared>,
    /// Shared with the bridge's Redis `pusher` channel, which delivers
    /// through it too.
    view: Rc<RefCell<NodeView>>,
    /// Redis channel name → where its subscription stands.
    subs: RefCell<HashMap<String, Subscription>>,
    /// The pub/sub connection is subscribed to everything in `subs`.
    pubsub_up: Cell<bool>,
    /// A pub/sub connection is being made (not yet up, not yet failed).
    pubsub_trying: Cell<bool>,
    to_pubsub: mpsc::UnboundedSender<PubsubCmd>,
    /// Presence members held here, with their `user_info`, for answering
    /// while Redis is away and saying them again when it is back.
    infos: RefCell<HashMap<MemberKey, Option<Box<str>>>>,
    /// Users signed in on this node (as said to Redis).
    signed: RefCell<HashSet<(AppIdx, Box<str>)>>,
    /// Cache channels with subscribers here: the last event handed over.
    live: RefCell<HashMap<(AppIdx, Box<str>), Live>>,
    /// Fetches whose channel is subscribed, to run.
    fetches: RefCell<Vec<(AppIdx, Box<str>, ConnRef)>>,
    fetches_wanted: Notify,
    counts_sent: RefCell<HashMap<(AppIdx, Box<str>), CountSent>>,
    held: RefCell<Vec<Held>>,
    /// Events to publish once Redis is back: Redis channel and payload.
    kept: RefCell<VecDeque<(String, Bytes)>>,
    hooks: RefCell<Option<HookOutlet>>,
    next_token: Cell<u64>,
    /// Set when the command connection was lost: say everything again.
    reannounce: Cell<bool>,
    /// The other live nodes, as of the last heartbeat.
    peers: RefCell<Vec<String>>,
    admission: Arc<Admission>,
}

/// An event of a cache channel published through Redis's `pusher`
/// channel, which every node receives: each hands it to its own
/// subscribers, and the node holding the store lease stores it.
pub(super) struct RedisCacheEvent {
    pub(super) app: AppIdx,
    pub(super) channel: Box<str>,
    pub(super) frame: Bytes,
    pub(super) exclude: Option<SocketId>,
}

/// The bridge's handle on its cluster side.
pub(super) struct ClusterHandle {
    cluster: Rc<Cluster>,
    conns: Rc<RedisLink>,
    /// Where the bridge's pub/sub hands [`RedisCacheEvent`]s.
    pub(super) redis_cache: mpsc::UnboundedSender<RedisCacheEvent>,
}

impl ClusterHandle {
    /// Which of this node's shards have subscribers to each channel. A
    /// subscriber is confirmed only after its shard's count is in it (the
    /// bridge answers every cluster subscription), so an event routed by it
    /// reaches everyone who has heard `subscription_succeeded`.
    pub(super) fn view(&self) -> Rc<RefCell<NodeView>> {
        Rc::clone(&self.cluster.view)
    }

    /// Takes this node out of the cluster's view before it stops, so that
    /// the other nodes need not wait for its silence.
    pub(super) async fn leave(&self) {
        let left = tasks::leave(&self.cluster, &self.conns);
        if tokio::time::timeout(LEAVE_BUDGET, left).await.is_err() {
            tracing::warn!(
                "could not leave the cluster in time; the others take this node out when it \
                 stays silent"
            );
        }
    }
}

/// Starts the cluster side's tasks on the bridge thread.
pub(super) fn start(
    shared: Rc<Shared>,
    conns: Rc<RedisLink>,
    node: String,
    init: ClusterInit,
) -> ClusterHandle {
    let shards = shared.links.borrow().outlets.len();
    let (to_pubsub, pubsub_cmds) = mpsc::unbounded_channel();
    let cluster = Rc::new(Cluster {
        node: node.into(),
        shared,
        view: Rc::new(RefCell::new(NodeView::new(shards))),
        subs: RefCell::new(HashMap::new()),
        pubsub_up: Cell::new(false),
        pubsub_trying: Cell::new(true),
        to_pubsub,
        infos: RefCell::new(HashMap::new()),
        signed: RefCell::new(HashSet::new()),
        live: RefCell::new(HashMap::new()),
        fetches: RefCell::new(Vec::new()),
        fetches_wanted: Notify::new(),
        counts_sent: RefCell::new(HashMap::new()),
        held: RefCell::new(Vec::new()),
        kept: RefCell::new(VecDeque::new()),
        hooks: RefCell::new(init.hooks),
        next_token: Cell::new(random()),
        reannounce: Cell::new(false),
        peers: RefCell::new(Vec::new()),
        admission: init.admission,
    });
    let (redis_cache, redis_cache_events) = mpsc::unbounded_channel();
    tokio::task::spawn_local(tasks::pubsub_task(
        Rc::clone(&cluster),
        Rc::clone(&conns),
        pubsub_cmds,
    ));
    let main =
        tasks::main_task(Rc::clone(&cluster), Rc::clone(&conns), init.inbox, redis_cache_events);
    tokio::task::spawn_local(main);
    ClusterHandle { cluster, conns, redis_cache }
}

impl Cluster {
    fn app_id(&self, app: AppIdx) -> &str {
        &self.shared.apps.get(app).id
    }

    /// A token naming one held webhook of this node.
    fn token(&self) -> String {
        let n = self.next_token.get().wrapping_add(1);
        self.next_token.set(n);
        format!("{}:{n}", self.node)
    }

    fn to_shard(&self, shard: usize, msg: ShardMsg) {
        if let Some(outlet) = self.shared.links.borrow_mut().outlets.get_mut(shard) {
            outlet.push(msg);
        }
    }

    /// A frame to this node's shards that have subscribers to the channel.
    fn deliver_local(&self, app: AppIdx, channel: &str, frame: &Bytes, exclude: Option<SocketId>) {
        let view = self.view.borrow();
        let Some(interest) = view.interest(app, channel) else { return };
        for shard in interest.shards() {
            let msg =
                ShardMsg::Deliver { app, channel: channel.into(), frame: frame.clone(), exclude };
            self.to_shard(shard, msg);
        }
    }

    /// A frame the cluster side makes itself (a count, a member's arrival)
    /// to this node's subscribers of the channel.
    fn deliver_own(&self, app: AppIdx, channel: &str, frame: &Bytes) {
        let shards: Vec<usize> = match self.view.borrow().interest(app, channel) {
            Some(interest) => interest.shards().collect(),
            None => return,
        };
        let exclude = None;
        let name = keys::event_channel(self.app_id(app), channel);
        let mut subs = self.subs.borrow_mut();
        // The node's first subscribers are told they are in only once
        // Redis is subscribed; what this node sends them meanwhile (their
        // own subscription count) goes after that, not before, where the
        // shard would not yet have them.
        let mut waiters = match subs.get_mut(&name) {
            Some(Subscription::Pending(waiters)) => Some(waiters),
            _ => None,
        };
        for shard in shards {
            let msg =
                ShardMsg::Deliver { app, channel: channel.into(), frame: frame.clone(), exclude };
            match waiters.as_mut() {
                Some(waiters) => waiters.push(Waiter::Msg(shard, msg)),
                None => self.to_shard(shard, msg),
            }
        }
    }

    /// Makes sure this node is subscribed to a Redis channel.
    fn ensure_subscribed(&self, name: &str) {
        let mut subs = self.subs.borrow_mut();
        if subs.contains_key(name) {
            return;
        }
        if self.pubsub_up.get() {
            subs.insert(name.to_owned(), Subscription::Pending(Vec::new()));
            let _ = self.to_pubsub.send(PubsubCmd::Subscribe(name.to_owned()));
        } else if self.pubsub_trying.get() {
            // The connection being made subscribes to everything listed
            // before it counts as up; until then, wait for it (a
            // subscriber told it is subscribed must get what follows).
            subs.insert(name.to_owned(), Subscription::Pending(Vec::new()));
        } else {
            // Redis is away: serve this node's clients alone; the next
            // connection subscribes to everything listed.
            subs.insert(name.to_owned(), Subscription::Ready);
        }
    }

    fn unsubscribe(&self, name: &str) {
        let removed = self.subs.borrow_mut().remove(name);
        if let Some(Subscription::Pending(waiters)) = removed {
            // Nobody is left to want them, but answer anyway.
            for waiter in waiters {
                self.release(waiter);
            }
        }
        if self.pubsub_up.get() {
            let _ = self.to_pubsub.send(PubsubCmd::Unsubscribe(name.to_owned()));
        }
    }

    /// Runs `waiter` once the channel's subscription is ready.
    fn when_subscribed(&self, name: &str, waiter: Waiter) {
        if let Some(Subscription::Pending(waiters)) = self.subs.borrow_mut().get_mut(name) {
            waiters.push(waiter);
            return;
        }
        self.release(waiter);
    }

    fn release(&self, waiter: Waiter) {
        match waiter {
            Waiter::Msg(shard, msg) => self.to_shard(shard, msg),
            Waiter::Fetch { app, channel, conn } => {
                self.fetches.borrow_mut().push((app, channel, conn));
                self.fetches_wanted.notify_one();
            }
        }
    }

    /// The pub/sub task confirmed a subscription (or gave up on it).
    fn subscribed(&self, name: &str) {
        let waiters = match self.subs.borrow_mut().get_mut(name) {
            Some(state @ Subscription::Pending(_)) => {
                match std::mem::replace(state, Subscription::Ready) {
                    Subscription::Pending(waiters) => waiters,
                    Subscription::Ready => Vec::new(),
                }
            }
            _ => Vec::new(),
        };
        for waiter in waiters {
            self.release(waiter);
        }
        self.shared.flush();
    }

    /// Hands a cache channel's event to this node's subscribers, unless
    /// they had it (a store this node replayed already, or its own store
    /// coming back). `seq` 0: an event with no store number.
    fn deliver_cached(
        &self,
        app: AppIdx,
        channel: &str,
        seq: u64,
        frame: Bytes,
        exclude: Option<SocketId>,
    ) {
        {
            let mut live = self.live.borrow_mut();
            let Some(entry) = live.get_mut(&(app, Box::<str>::from(channel))) else { return };
            if seq > 0 && seq <= entry.seq {
                return;
            }
            entry.seq = entry.seq.max(seq);
            entry.count += 1;
            entry.frame = frame.clone();
        }
        self.deliver_local(app, channel, &frame, exclude);
    }
}
