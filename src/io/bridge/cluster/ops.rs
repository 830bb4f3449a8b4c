//! What the shards' updates become in Redis ([`Cluster::take`]), and what
//! the replies mean ([`Cluster::apply`]), or what the node answers alone
//! when Redis could not take them ([`Cluster::degraded`]).

use std::{collections::HashMap, time::Duration};

use bytes::Bytes;
use redis::{Cmd, RedisError, Value};

use super::{
    Cluster, CountSent, Held, Live, MAX_KEPT_PUBLISHES, Waiter,
    reply::{array, bytes, cached_frame, counts, int, text},
    scripts,
};
use crate::{
    core::{AppIdx, ConnRef, HookKind, SocketId},
    proto::{
        cluster::{
            ClusterQuery, ClusterUp,
            envelope::{Body, Envelope},
            keys,
            node::Change,
        },
        index::{owner_shard, presence::snapshot_json_of},
        msg::{ChannelCounts, JoinOutcome, ShardMsg},
        pusher::{
            channel::{self, ChannelKind},
            messages,
            shard::{SUBSCRIPTION_COUNT_INTERVAL, SUBSCRIPTION_COUNT_THROTTLE_ABOVE, ShardEvent},
        },
    },
};

/// Redis commands run together and what their replies mean.
pub(super) struct Op {
    pub(super) cmds: Vec<Cmd>,
    pub(super) then: Then,
}

impl Op {
    fn one(cmd: Cmd, then: Then) -> Self {
        Self { cmds: vec![cmd], then }
    }
}

/// What an operation's replies are for.
pub(super) enum Then {
    /// Nothing to read.
    Nothing,
    /// An event for the other nodes: kept if Redis could not take it.
    Publish {
        name: String,
        payload: Bytes,
    },
    Subs {
        app: AppIdx,
        channel: Box<str>,
        waiting: Vec<ConnRef>,
        fetches: Vec<ConnRef>,
        token: String,
    },
    Join {
        app: AppIdx,
        channel: Box<str>,
        user: Box<str>,
        info: Option<Box<str>>,
        conn: ConnRef,
    },
    Leave {
        app: AppIdx,
        channel: Box<str>,
        user: Box<str>,
        token: String,
    },
    Signed {
        app: AppIdx,
        user: Box<str>,
        online: bool,
    },
    Watch {
        watcher: ConnRef,
        users: Vec<Box<str>>,
    },
    Counts {
        from: usize,
        id: u64,
        app: AppIdx,
        channels: Vec<Box<str>>,
    },
    List {
        from: usize,
        id: u64,
    },
    Users {
        from: usize,
        id: u64,
    },
    CacheInfo {
        from: usize,
        id: u64,
    },
    Fetch {
        app: AppIdx,
        channel: Box<str>,
        conn: ConnRef,
        seen: u64,
    },
    Confirm {
        event: ShardEvent,
    },
}

/// A subscription count to run a script for: the node's total after the
/// whole batch, and who waits for it.
struct SubsWanted {
    app: AppIdx,
    channel: Box<str>,
    waiting: Vec<ConnRef>,
    fetches: Vec<ConnRef>,
}

impl Cluster {
    /// Takes one batch from the shards into operations.
    pub(super) fn take(&self, batch: Vec<ClusterUp>, ops: &mut Vec<Op>) {
        // A channel's subscription changes within a batch: one script, with
        // the node's count after all of them.
        let mut subs: Vec<SubsWanted> = Vec::new();
        let wanted = |subs: &mut Vec<SubsWanted>, app: AppIdx, channel: Box<str>| -> usize {
            match subs.iter().position(|s| s.app == app && s.channel == channel) {
                Some(at) => at,
                None => {
                    subs.push(SubsWanted {
                        app,
                        channel,
                        waiting: Vec::new(),
                        fetches: Vec::new(),
                    });
                    subs.len() - 1
                }
            }
        };
        for msg in batch {
            match msg {
                ClusterUp::Sub { app, channel, shard, delta, conn } => {
                    let change =
                        self.view.borrow_mut().subscribe(app, &channel, usize::from(shard), delta);
                    self.interest_changed(app, &channel, change);
                    if change == Change::None && conn.is_none() {
                        continue;
                    }
                    let at = wanted(&mut subs, app, channel);
                    subs[at].waiting.extend(conn);
                }
                ClusterUp::CacheFetch { app, channel, conn } => {
                    let at = wanted(&mut subs, app, channel);
                    subs[at].fetches.push(conn);
                }
                ClusterUp::Publish { app, channel, frame, exclude } => {
                    let op = self.publish_op(app, &channel, frame, exclude);
                    match op.then {
                        // Events kept while Redis was away go first.
                        Then::Publish { name, payload } if !self.kept.borrow().is_empty() => {
                            self.keep(name, payload);
                        }
                        then => ops.push(Op { cmds: op.cmds, then }),
                    }
                }
                ClusterUp::Join { app, channel, user_id, user_info, conn, again } => {
                    if !again && self.view.borrow_mut().join(app, &channel, &user_id) {
                        let key = (app, channel.clone(), user_id.clone());
                        self.infos.borrow_mut().insert(key, user_info.clone());
                    }
                    ops.push(self.join_op(app, channel, user_id, user_info, conn));
                }
                ClusterUp::Leave { app, channel, user_id, .. } => {
                    if self.view.borrow_mut().leave(app, &channel, &user_id) {
                        self.infos.borrow_mut().remove(&(app, channel.clone(), user_id.clone()));
                        ops.push(self.leave_op(app, channel, user_id, &self.node));
                    }
                }
                ClusterUp::SignedIn { app, user_id, online } => {
                    let key = (app, user_id.clone());
                    if online {
                        self.signed.borrow_mut().insert(key);
                    } else {
                        self.signed.borrow_mut().remove(&key);
                    }
                    ops.push(self.signed_op(app, user_id, online, &self.node));
                }
                ClusterUp::Watch { app, user_ids, watcher } => {
                    let mut cmd = redis::cmd("HMGET");
                    cmd.arg(keys::online(self.app_id(app)));
                    for user in &user_ids {
                        cmd.arg(&**user);
                    }
                    ops.push(Op::one(cmd, Then::Watch { watcher, users: user_ids }));
                }
                ClusterUp::Terminate { app, user_id } => {
                    ops.push(self.control_op(app, Body::Terminate(user_id)));
                }
                ClusterUp::Query { from, id, app, query } => {
                    ops.push(self.query_op(from, id, app, query))
                }
                ClusterUp::CachePublish { app, channel, frame, exclude } => {
                    ops.push(self.cache_publish_op(app, &channel, frame, exclude));
                }
            }
        }
        for SubsWanted { app, channel, waiting, fetches } in subs {
            let total = self.view.borrow().interest(app, &channel).map_or(0, |i| i.total());
            ops.push(self.subs_op(app, channel, total, waiting, fetches, &self.node));
        }
    }

    /// The node's first subscriber of a channel subscribes it to the
    /// channel's events; its last one unsubscribes it.
    fn interest_changed(&self, app: AppIdx, channel: &str, change: Change) {
        let name = keys::event_channel(self.app_id(app), channel);
        let key = (app, Box::<str>::from(channel));
        match change {
            Change::First => {
                if channel::classify(channel).cache {
                    let live = Live { count: 0, seq: 0, frame: Bytes::new() };
                    self.live.borrow_mut().insert(key, live);
                }
                self.ensure_subscribed(&name);
            }
            Change::Last => {
                self.live.borrow_mut().remove(&key);
                self.counts_sent.borrow_mut().remove(&key);
                self.unsubscribe(&name);
            }
            Change::Count | Change::None => {}
        }
    }

    pub(super) fn subs_op(
        &self,
        app: AppIdx,
        channel: Box<str>,
        node_total: u32,
        waiting: Vec<ConnRef>,
        fetches: Vec<ConnRef>,
        node: &str,
    ) -> Op {
        let id = self.app_id(app);
        let token = self.token();
        let keys = [keys::node_subs(id, node), keys::totals(id), keys::vacating(id)];
        let mut cmd = eval(scripts::SUBSCRIPTIONS, &keys);
        cmd.arg(&*channel).arg(node_total).arg(&token);
        Op::one(cmd, Then::Subs { app, channel, waiting, fetches, token })
    }

    pub(super) fn join_op(
        &self,
        app: AppIdx,
        channel: Box<str>,
        user: Box<str>,
        info: Option<Box<str>>,
        conn: ConnRef,
    ) -> Op {
        let id = self.app_id(app);
        let max = self.shared.apps.get(app).max_presence_members;
        let mut cmd = eval(scripts::JOIN, &presence_keys(id, &channel, &self.node));
        cmd.arg(&*channel)
            .arg(&*user)
            .arg(info.as_deref().unwrap_or(""))
            .arg(max)
            .arg(keys::member_field(&channel, &user));
        Op::one(cmd, Then::Join { app, channel, user, info, conn })
    }

    pub(super) fn leave_op(
        &self,
        app: AppIdx,
        channel: Box<str>,
        user: Box<str>,
        node: &str,
    ) -> Op {
        let id = self.app_id(app);
        let token = self.token();
        let mut cmd = eval(scripts::LEAVE, &presence_keys(id, &channel, node));
        cmd.arg(&*channel).arg(&*user).arg(keys::member_field(&channel, &user)).arg(&token);
        Op::one(cmd, Then::Leave { app, channel, user, token })
    }

    pub(super) fn signed_op(&self, app: AppIdx, user: Box<str>, online: bool, node: &str) -> Op {
        let id = self.app_id(app);
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(scripts::SIGNED)
            .arg(2)
            .arg(keys::online(id))
            .arg(keys::node_signed(id, node))
            .arg(&*user)
            .arg(if online { "1" } else { "0" });
        Op::one(cmd, Then::Signed { app, user, online })
    }

    /// An event for the other nodes that have subscribers to the channel.
    fn publish_op(
        &self,
        app: AppIdx,
        channel: &str,
        frame: Bytes,
        exclude: Option<SocketId>,
    ) -> Op {
        let name = keys::event_channel(self.app_id(app), channel);
        let envelope =
            Envelope { node: self.node.clone(), body: Body::Event { exclude, seq: 0, frame } };
        publish(name, envelope.encode())
    }

    fn control_op(&self, app: AppIdx, body: Body) -> Op {
        let name = keys::control_channel(self.app_id(app));
        publish(name, Envelope { node: self.node.clone(), body }.encode())
    }

    fn cache_publish_op(
        &self,
        app: AppIdx,
        channel: &str,
        frame: Bytes,
        exclude: Option<SocketId>,
    ) -> Op {
        let id = self.app_id(app);
        let envelope = Envelope {
            node: self.node.clone(),
            body: Body::Event { exclude, seq: 0, frame: frame.clone() },
        };
        let encoded = envelope.encode();
        // The script writes the sequence number into the 8 bytes before
        // the frame.
        let head = encoded.len() - frame.len() - 8;
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(scripts::CACHE_PUBLISH)
            .arg(2)
            .arg(keys::cache_seq(id))
            .arg(keys::cache(id, channel))
            .arg(channel)
            .arg(self.cache_ttl_ms(app))
            .arg(keys::event_channel(id, channel))
            .arg(&encoded[..head])
            .arg(&frame[..]);
        Op::one(cmd, Then::Nothing)
    }

    /// Stores a Redis-published cache event if this node holds (or can
    /// take) the store lease.
    pub(super) fn cache_store_op(&self, app: AppIdx, channel: &str, frame: &Bytes) -> Op {
        let id = self.app_id(app);
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(scripts::CACHE_STORE)
            .arg(3)
            .arg(keys::cache_seq(id))
            .arg(keys::cache(id, channel))
            .arg(keys::store_lease(id))
            .arg(channel)
            .arg(self.cache_ttl_ms(app))
            .arg(&frame[..])
            .arg(&*self.node)
            .arg(super::LEASE.as_millis() as u64);
        Op::one(cmd, Then::Nothing)
    }

    fn cache_ttl_ms(&self, app: AppIdx) -> u64 {
        u64::try_from(self.shared.apps.get(app).cache_ttl.as_millis()).unwrap_or(u64::MAX).max(1)
    }

    /// A cache channel subscriber's fetch; `seen` is how many events this
    /// node had handed over on the channel when it was sent.
    pub(super) fn fetch_op(&self, app: AppIdx, channel: Box<str>, conn: ConnRef) -> Op {
        let seen = self.live.borrow().get(&(app, channel.clone())).map_or(0, |l| l.count);
        let mut cmd = redis::cmd("GET");
        cmd.arg(keys::cache(self.app_id(app), &channel));
        Op::one(cmd, Then::Fetch { app, channel, conn, seen })
    }

    fn query_op(&self, from: usize, id: u64, app: AppIdx, query: ClusterQuery) -> Op {
        let app_id = self.app_id(app);
        match query {
            ClusterQuery::Counts(channels) => {
                let mut cmd = redis::cmd("EVAL");
                cmd.arg(scripts::COUNTS)
                    .arg(1)
                    .arg(keys::totals(app_id))
                    .arg(keys::members_prefix(app_id));
                for c in &channels {
                    cmd.arg(&**c);
                }
                Op::one(cmd, Then::Counts { from, id, app, channels })
            }
            ClusterQuery::List(prefix) => {
                let mut cmd = redis::cmd("EVAL");
                cmd.arg(scripts::LIST)
                    .arg(1)
                    .arg(keys::totals(app_id))
                    .arg(keys::members_prefix(app_id))
                    .arg(&*prefix);
                Op::one(cmd, Then::List { from, id })
            }
            ClusterQuery::Users(channel) => {
                let mut cmd = redis::cmd("HKEYS");
                cmd.arg(keys::members(app_id, &channel));
                Op::one(cmd, Then::Users { from, id })
            }
            ClusterQuery::Cache(channel) => {
                let key = keys::cache(app_id, &channel);
                let mut get = redis::cmd("GET");
                get.arg(&key);
                let mut ttl = redis::cmd("PTTL");
                ttl.arg(&key);
                Op { cmds: vec![get, ttl], then: Then::CacheInfo { from, id } }
            }
            // No command: the operations before it in the batch have their
            // replies by the time any operation is applied.
            ClusterQuery::Sent => {
                Op { cmds: Vec::new(), then: Then::Counts { from, id, app, channels: Vec::new() } }
            }
        }
    }

    /// A frame for the channel's subscribers everywhere: this node's now,
    /// the others' through Redis.
    fn broadcast(&self, app: AppIdx, channel: &str, frame: Bytes, ops: &mut Vec<Op>) {
        self.deliver_own(app, channel, &frame);
        ops.push(self.publish_op(app, channel, frame, None));
    }

    fn wants(&self, app: AppIdx, kind: HookKind) -> bool {
        let app = self.shared.apps.get(app);
        !app.webhooks.is_empty() && app.webhook_kinds().contains(kind)
    }

    /// Hands a webhook event to the webhook thread.
    pub(super) fn raise(&self, event: ShardEvent) {
        if !self.wants(event.app(), event.kind()) {
            return;
        }
        let mut hooks = self.hooks.borrow_mut();
        let Some(outlet) = hooks.as_mut() else { return };
        let time_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        if let Err(dropped) = outlet.push(crate::io::webhooks::Outgoing { time_ms, event }) {
            crate::warn_throttled!(dropped, "webhook ring full; cluster webhook events dropped");
        }
        // Cluster webhooks are few (transitions, not messages): wake the
        // sender for each.
        outlet.flush();
    }

    /// Holds a webhook for the app's delay; it goes if `hash[field]` still
    /// holds `token` then.
    fn hold(&self, hash: String, field: String, token: String, event: ShardEvent) {
        if !self.wants(event.app(), event.kind()) {
            return;
        }
        let delay = self.shared.apps.get(event.app()).webhook_delay;
        let due = tokio::time::Instant::now() + delay;
        self.held.borrow_mut().push(Held { due, hash, field, token, event });
    }

    /// Applies the replies of one operation; may add operations (the
    /// publishes of what it decided) for the next round.
    pub(super) fn apply(&self, then: Then, replies: Vec<Value>, ops: &mut Vec<Op>) {
        let first = replies.first().unwrap_or(&Value::Nil);
        match then {
            Then::Nothing => {}
            Then::Publish { .. } => self.shared.metrics.cluster_published.inc(),
            Then::Subs { app, channel, waiting, fetches, token } => {
                let items = array(first);
                let transition = items.first().map_or(0, int);
                let total = items.get(1).map_or(0, int);
                let name = keys::event_channel(self.app_id(app), &channel);
                for conn in waiting {
                    let msg = ShardMsg::SubReady { app, channel: channel.clone(), conn };
                    self.when_subscribed(&name, Waiter::Msg(usize::from(conn.shard), msg));
                }
                for conn in fetches {
                    self.when_subscribed(
                        &name,
                        Waiter::Fetch { app, channel: channel.clone(), conn },
                    );
                }
                self.counted(app, &channel, transition, total, token, ops);
            }
            Then::Join { app, channel, user, info, conn } => {
                self.joined(app, channel, user, info, conn, array(first), ops);
            }
            Then::Leave { app, channel, user, token } => {
                if int(first) == 1 {
                    self.removed(app, &channel, &user, token, ops);
                }
            }
            Then::Signed { app, user, online } => {
                if int(first) == 1 {
                    let shards = self.shared.links.borrow().outlets.len();
                    let owner = owner_shard(app, &user, shards);
                    self.to_shard(
                        owner,
                        ShardMsg::ClusterUser { app, user_id: user.clone(), online },
                    );
                    let body = if online { Body::Online(user) } else { Body::Offline(user) };
                    ops.push(self.control_op(app, body));
                }
            }
            Then::Watch { watcher, users } => {
                let online: Vec<Box<str>> = array(first)
                    .iter()
                    .zip(users)
                    .filter(|(v, _)| int(v) > 0)
                    .map(|(_, u)| u)
                    .collect();
                if !online.is_empty() {
                    let msg = ShardMsg::Watchlist { watcher, online: true, user_ids: online };
                    self.to_shard(usize::from(watcher.shard), msg);
                }
            }
            Then::Counts { from, id, channels, .. } => {
                let items = array(first);
                let counts = (0..channels.len())
                    .map(|i| match (items.get(2 * i), items.get(2 * i + 1)) {
                        (Some(subs), Some(users)) => counts(subs, users),
                        _ => ChannelCounts::default(),
                    })
                    .collect();
                self.to_shard(from, ShardMsg::QueryReply { id, counts });
            }
            Then::List { from, id } => {
                let channels = array(first)
                    .chunks_exact(3)
                    .filter_map(|c| Some((text(&c[0])?.into_boxed_str(), counts(&c[1], &c[2]))))
                    .collect();
                self.to_shard(from, ShardMsg::ChannelList { id, channels });
            }
            Then::Users { from, id } => {
                let users =
                    array(first).iter().filter_map(text).map(String::into_boxed_str).collect();
                self.to_shard(from, ShardMsg::UserList { id, users });
            }
            Then::CacheInfo { from, id } => {
                let ttl = replies.get(1).map_or(0, int);
                let cached = bytes(first)
                    .and_then(cached_frame)
                    .filter(|_| ttl > 0)
                    .map(|(_, frame)| (frame, Duration::from_millis(ttl.unsigned_abs())));
                self.to_shard(from, ShardMsg::CacheInfo { id, cached });
            }
            Then::Fetch { app, channel, conn, seen } => {
                let stored = bytes(first).and_then(cached_frame);
                self.replay(app, channel, conn, seen, stored);
            }
            Then::Confirm { event } => {
                if int(first) == 1 {
                    self.raise(event);
                }
            }
        }
    }

    /// A presence verdict from [`scripts::JOIN`]: `{-1}` full, else
    /// `{added, id1, info1, …}`.
    #[allow(clippy::too_many_arguments)]
    fn joined(
        &self,
        app: AppIdx,
        channel: Box<str>,
        user: Box<str>,
        info: Option<Box<str>>,
        conn: ConnRef,
        items: &[Value],
        ops: &mut Vec<Op>,
    ) {
        let added = items.first().map_or(0, int);
        tracing::debug!(%channel, %user, added, "presence join");
        let shard = usize::from(conn.shard);
        if added < 0 {
            // The node counted the connection when it asked; it is not in.
            if self.view.borrow_mut().leave(app, &channel, &user) {
                self.infos.borrow_mut().remove(&(app, channel.clone(), user));
            }
            let outcome = JoinOutcome::Full;
            self.to_shard(shard, ShardMsg::PresenceJoined { app, channel, conn, outcome });
            return;
        }
        if added > 0 {
            let frame = messages::member_added(&channel, &user, info.as_deref());
            self.broadcast(app, &channel, frame, ops);
            // 2: back within the removal delay; its removal was never sent.
            if added == 1 {
                self.raise(ShardEvent::MemberAdded {
                    app,
                    channel: channel.clone(),
                    user_id: user,
                });
            }
        }
        let members: Vec<(String, String)> = items
            .get(1..)
            .unwrap_or_default()
            .chunks_exact(2)
            .filter_map(|kv| Some((text(&kv[0])?, text(&kv[1])?)))
            .collect();
        let snapshot = snapshot_json_of(
            members
                .iter()
                .map(|(id, info)| (id.as_str(), (!info.is_empty()).then_some(info.as_str()))),
        );
        let frame = messages::presence_subscription_succeeded(&channel, &snapshot);
        let name = keys::event_channel(self.app_id(app), &channel);
        let cache = channel::classify(&channel).cache.then(|| channel.clone());
        let msg =
            ShardMsg::PresenceJoined { app, channel, conn, outcome: JoinOutcome::Joined(frame) };
        self.when_subscribed(&name, Waiter::Msg(shard, msg));
        // A presence cache channel replays after the member list, as alone.
        if let Some(channel) = cache {
            self.when_subscribed(&name, Waiter::Fetch { app, channel, conn });
        }
    }

    /// Answers a cache channel's fetch: the stored event, unless this node
    /// handed a newer one to its subscribers while the fetch was out.
    fn replay(
        &self,
        app: AppIdx,
        channel: Box<str>,
        conn: ConnRef,
        seen: u64,
        stored: Option<(u64, Bytes)>,
    ) {
        let frame = {
            let mut live = self.live.borrow_mut();
            match live.get_mut(&(app, channel.clone())) {
                Some(entry) if entry.count > seen => {
                    if let Some((seq, _)) = stored {
                        entry.seq = entry.seq.max(seq);
                    }
                    Some(entry.frame.clone())
                }
                Some(entry) => stored.map(|(seq, frame)| {
                    // The event itself may still be on its way here: it is
                    // the replay's, not a new one.
                    entry.seq = entry.seq.max(seq);
                    frame
                }),
                None => stored.map(|(_, frame)| frame),
            }
        };
        if frame.is_none() {
            self.raise(ShardEvent::CacheMiss { app, channel: channel.clone() });
        }
        self.to_shard(usize::from(conn.shard), ShardMsg::CacheReplay { app, channel, conn, frame });
    }

    /// A subscription count reached Redis: webhooks for the cluster's
    /// transitions, and `subscription_count` to the subscribers.
    fn counted(
        &self,
        app: AppIdx,
        channel: &str,
        transition: i64,
        total: i64,
        token: String,
        ops: &mut Vec<Op>,
    ) {
        match transition {
            1 => self.raise(ShardEvent::ChannelOccupied { app, channel: channel.into() }),
            2 => {
                // Goes when due unless the channel was occupied again
                // meanwhile (which clears the held token).
                let hash = keys::vacating(self.app_id(app));
                let event = ShardEvent::ChannelVacated { app, channel: channel.into() };
                self.hold(hash, channel.to_owned(), token, event);
            }
            // Said again (a rejoin): the subscribers have this count.
            -1 => return,
            _ => {}
        }
        let kind = channel::classify(channel).kind;
        let Ok(total) = usize::try_from(total) else { return };
        if total == 0 || matches!(kind, ChannelKind::Presence | ChannelKind::ServerToUser) {
            return;
        }
        let to_clients = self.shared.apps.get(app).subscription_count;
        if !to_clients && !self.wants(app, HookKind::SubscriptionCount) {
            return;
        }
        let now = tokio::time::Instant::now();
        if total > SUBSCRIPTION_COUNT_THROTTLE_ABOVE {
            let mut sent = self.counts_sent.borrow_mut();
            let key = (app, Box::<str>::from(channel));
            match sent.get_mut(&key) {
                Some(last) if now < last.at + SUBSCRIPTION_COUNT_INTERVAL => {
                    last.pending = Some(total);
                    return;
                }
                Some(last) => *last = CountSent { at: now, pending: None },
                None => {
                    sent.insert(key, CountSent { at: now, pending: None });
                }
            }
        }
        self.emit_count(app, channel, total, ops);
    }

    /// Sends a count: to the subscribers everywhere, and to the webhook.
    fn emit_count(&self, app: AppIdx, channel: &str, total: usize, ops: &mut Vec<Op>) {
        if self.shared.apps.get(app).subscription_count {
            self.broadcast(app, channel, messages::subscription_count(channel, total), ops);
        }
        self.raise(ShardEvent::SubscriptionCount { app, channel: channel.into(), count: total });
    }

    /// Sends the throttled counts whose interval has passed.
    pub(super) fn flush_counts(&self, ops: &mut Vec<Op>) {
        let now = tokio::time::Instant::now();
        let due: Vec<((AppIdx, Box<str>), usize)> = self
            .counts_sent
            .borrow_mut()
            .iter_mut()
            .filter(|(_, s)| s.pending.is_some() && now >= s.at + SUBSCRIPTION_COUNT_INTERVAL)
            .filter_map(|(k, s)| {
                s.at = now;
                Some((k.clone(), s.pending.take()?))
            })
            .collect();
        for ((app, channel), total) in due {
            self.emit_count(app, &channel, total, ops);
        }
    }

    /// A member's last connection anywhere left.
    fn removed(&self, app: AppIdx, channel: &str, user: &str, token: String, ops: &mut Vec<Op>) {
        self.broadcast(app, channel, messages::member_removed(channel, user), ops);
        let event =
            ShardEvent::MemberRemoved { app, channel: channel.into(), user_id: user.into() };
        let hash = keys::leaving(self.app_id(app));
        self.hold(hash, keys::member_field(channel, user), token, event);
    }

    /// Redis could not take an operation: answer from what this node holds.
    pub(super) fn degraded(&self, then: Then) {
        match then {
            Then::Publish { name, payload } => self.keep(name, payload),
            Then::Subs { app, channel, waiting, fetches, .. } => {
                for conn in waiting {
                    let msg = ShardMsg::SubReady { app, channel: channel.clone(), conn };
                    self.release(Waiter::Msg(usize::from(conn.shard), msg));
                }
                for conn in fetches {
                    self.replay(app, channel.clone(), conn, 0, None);
                }
            }
            Then::Join { app, channel, user, info, conn } => {
                let frame = {
                    let infos = self.infos.borrow();
                    let mut members: HashMap<&str, Option<&str>> = infos
                        .iter()
                        .filter(|((a, c, _), _)| *a == app && *c == channel)
                        .map(|((_, _, u), i)| (&**u, i.as_deref()))
                        .collect();
                    members.insert(&user, info.as_deref());
                    let members: Vec<(&str, Option<&str>)> = members.into_iter().collect();
                    let snapshot = snapshot_json_of(members.iter().copied());
                    messages::presence_subscription_succeeded(&channel, &snapshot)
                };
                let outcome = JoinOutcome::Joined(frame);
                let msg = ShardMsg::PresenceJoined { app, channel, conn, outcome };
                self.to_shard(usize::from(conn.shard), msg);
            }
            Then::Counts { from, id, app, channels } => {
                let view = self.view.borrow();
                let counts = channels
                    .iter()
                    .map(|c| ChannelCounts {
                        subscriptions: view.interest(app, c).map_or(0, |i| i.total() as usize),
                        users: None,
                    })
                    .collect();
                self.to_shard(from, ShardMsg::QueryReply { id, counts });
            }
            Then::List { from, id } => {
                self.to_shard(from, ShardMsg::ChannelList { id, channels: Vec::new() });
            }
            Then::Users { from, id } => {
                self.to_shard(from, ShardMsg::UserList { id, users: Vec::new() })
            }
            Then::CacheInfo { from, id } => {
                self.to_shard(from, ShardMsg::CacheInfo { id, cached: None })
            }
            Then::Fetch { app, channel, conn, seen } => self.replay(app, channel, conn, seen, None),
            Then::Nothing
            | Then::Leave { .. }
            | Then::Signed { .. }
            | Then::Watch { .. }
            | Then::Confirm { .. } => {}
        }
    }

    /// Keeps an event Redis could not take, to send when it is back.
    fn keep(&self, name: String, payload: Bytes) {
        let mut kept = self.kept.borrow_mut();
        if kept.len() >= MAX_KEPT_PUBLISHES {
            self.shared.metrics.cluster_dropped.inc();
            return;
        }
        kept.push_back((name, payload));
    }
}

/// The keys of [`scripts::JOIN`] and [`scripts::LEAVE`].
fn presence_keys(app_id: &str, channel: &str, node: &str) -> [String; 4] {
    [
        keys::members(app_id, channel),
        keys::holders(app_id, channel),
        keys::node_presence(app_id, node),
        keys::leaving(app_id),
    ]
}

/// `EVAL script numkeys keys…`; the caller adds the arguments.
fn eval(script: &str, keys: &[String]) -> Cmd {
    let mut cmd = redis::cmd("EVAL");
    cmd.arg(script).arg(keys.len()).arg(keys);
    cmd
}

/// A PUBLISH whose payload is kept if Redis cannot take it.
pub(super) fn publish(name: String, payload: Bytes) -> Op {
    let mut cmd = redis::cmd("PUBLISH");
    cmd.arg(&name).arg(&payload[..]);
    Op::one(cmd, Then::Publish { name, payload })
}

/// The error that means the connection, not the command, failed. READONLY
/// counts: the server was a master and is now a replica (a Sentinel
/// failover), so the connection must be made again, to the new master.
pub(super) fn is_connection_error(e: &RedisError) -> bool {
    e.is_io_error()
        || e.is_connection_dropped()
        || e.is_timeout()
        || e.is_connection_refusal()
        || e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::ReadOnly)
}
