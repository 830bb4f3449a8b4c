//! The cluster side's tasks: the main loop (shard updates, fetches, held
//! webhooks, the heartbeat), the pub/sub connection, and taking a node in
//! or out of the cluster's view.

use std::{collections::HashSet, rc::Rc};

use bytes::Bytes;
use futures_util::{FutureExt, StreamExt, future::join_all};
use redis::{RedisError, Value};
use tokio::sync::mpsc;

use super::{
    BATCH, Cluster, ClusterInbox, DEAD_AFTER, HEARTBEAT, Held, LEASE, PubsubCmd, REJOIN_WAIT,
    RedisCacheEvent, Subscription,
    ops::{Op, Then, is_connection_error, publish},
    reply::{array, int, text},
    scripts,
};
use crate::{
    core::{
        AppIdx, ConnRef,
        backoff::{Backoff, Link},
    },
    io::{
        bridge::{CONNECT_TIMEOUT, KEEPALIVE, bump, random},
        redis_link::{Conn, RedisLink},
    },
    proto::{
        cluster::{
            envelope::{Body, Envelope},
            keys,
        },
        index::owner_shard,
        msg::ShardMsg,
    },
};

async fn connect(conns: &RedisLink) -> Result<Conn, RedisError> {
    conns.command(Some(CONNECT_TIMEOUT)).await
}

/// The cluster's command connection, made again when lost.
struct Commands {
    conns: Rc<RedisLink>,
    conn: Option<Conn>,
}

impl Commands {
    /// The connection, connecting if there is none (and then asking for
    /// the node's state to be said again).
    async fn get(&mut self, cluster: &Cluster) -> Option<Conn> {
        if self.conn.is_none() {
            let Ok(mut conn) = connect(&self.conns).await else { return None };
            // In the view before writing anything under this node's name:
            // a node that dies before its first heartbeat must still be
            // found silent and swept, or what it wrote stays forever.
            if register(cluster, &mut conn).await.is_err() {
                return None;
            }
            self.conn = Some(conn);
            cluster.reannounce.set(true);
        }
        self.conn.clone()
    }

    fn lost(&mut self, cluster: &Cluster, e: &RedisError) {
        if self.conn.take().is_some() {
            tracing::warn!("redis lost for the cluster ({e}); serving this node's clients alone");
            cluster.shared.metrics.cluster_redis_errors.inc();
        }
        cluster.reannounce.set(true);
    }
}

async fn register(cluster: &Cluster, conn: &mut Conn) -> Result<(), RedisError> {
    beat_cmd(cluster).query_async::<Value>(conn).await.map(drop)
}

fn beat_cmd(cluster: &Cluster) -> redis::Cmd {
    let mut cmd = redis::cmd("EVAL");
    cmd.arg(scripts::BEAT)
        .arg(1)
        .arg(keys::nodes())
        .arg(&*cluster.node)
        .arg(DEAD_AFTER.as_millis() as u64);
    cmd
}

/// Runs operations, each command on its own but all sent at once (a
/// multiplexed connection pipelines them, in order), and applies the
/// replies; the operations those add run in the next round.
async fn execute(cluster: &Cluster, link: &mut Commands, mut ops: Vec<Op>) {
    while !ops.is_empty() {
        let Some(conn) = link.get(cluster).await else {
            for op in ops.drain(..) {
                cluster.degraded(op.then);
            }
            cluster.shared.flush();
            return;
        };
        let batch = std::mem::take(&mut ops);
        let sent = batch.iter().flat_map(|op| op.cmds.iter()).map(|cmd| {
            let mut conn = conn.clone();
            async move { cmd.query_async::<Value>(&mut conn).await }
        });
        let mut replies = join_all(sent).await.into_iter();
        let mut lost = None;
        for op in batch {
            let mut values = Vec::with_capacity(op.cmds.len());
            let mut failed = None;
            for _ in 0..op.cmds.len() {
                match replies.next() {
                    Some(Ok(v)) => values.push(v),
                    Some(Err(e)) => {
                        if is_connection_error(&e) {
                            lost = Some(e);
                        } else {
                            failed = Some(e);
                        }
                        values.push(Value::Nil);
                    }
                    None => values.push(Value::Nil),
                }
            }
            if lost.is_some() {
                cluster.degraded(op.then);
                continue;
            }
            if let Some(e) = failed {
                // A refused command (a script error, a foreign value of the
                // wrong type): counted and answered as without Redis.
                cluster.shared.metrics.cluster_redis_errors.inc();
                crate::warn_throttled!(
                    bump(&cluster.shared.counts.cluster_errors),
                    "a cluster command failed in redis: {e}"
                );
                cluster.degraded(op.then);
                continue;
            }
            cluster.apply(op.then, values, &mut ops);
        }
        if let Some(e) = lost {
            link.lost(cluster, &e);
        }
        cluster.shared.flush();
    }
}

/// The cluster's main loop.
pub(super) async fn main_task(
    cluster: Rc<Cluster>,
    conns: Rc<RedisLink>,
    mut inbox: ClusterInbox,
    mut redis_cache: mpsc::UnboundedReceiver<RedisCacheEvent>,
) {
    let mut link = Commands { conns, conn: None };
    let mut heartbeat = tokio::time::interval(HEARTBEAT);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut status = Link::Starting;
    loop {
        let next_held = cluster.held.borrow().iter().map(|h| h.due).min();
        tokio::select! {
            () = inbox.ready() => {
                let mut batch = Vec::new();
                inbox.drain_in_order(BATCH, |m| batch.push(m));
                let mut ops = Vec::new();
                cluster.take(batch, &mut ops);
                execute(&cluster, &mut link, ops).await;
            }
            () = cluster.fetches_wanted.notified() => {
                let fetches = std::mem::take(&mut *cluster.fetches.borrow_mut());
                let ops = fetches
                    .into_iter()
                    .map(|(app, channel, conn)| cluster.fetch_op(app, channel, conn))
                    .collect();
                execute(&cluster, &mut link, ops).await;
            }
            Some(first) = redis_cache.recv() => {
                let mut events = vec![first];
                while let Ok(more) = redis_cache.try_recv() {
                    events.push(more);
                }
                let mut ops = Vec::new();
                for RedisCacheEvent { app, channel, frame, exclude } in events {
                    ops.push(cluster.cache_store_op(app, &channel, &frame));
                    cluster.deliver_cached(app, &channel, 0, frame, exclude);
                }
                cluster.shared.flush();
                execute(&cluster, &mut link, ops).await;
            }
            () = sleep_until(next_held) => {
                let now = tokio::time::Instant::now();
                let due: Vec<Held> = {
                    let mut held = cluster.held.borrow_mut();
                    let (due, later) = held.drain(..).partition(|h| h.due <= now);
                    *held = later;
                    due
                };
                let ops = due
                    .into_iter()
                    .map(|h| {
                        let mut cmd = redis::cmd("EVAL");
                        cmd.arg(scripts::CONFIRM).arg(1).arg(&h.hash).arg(&h.field).arg(&h.token);
                        Op { cmds: vec![cmd], then: Then::Confirm { event: h.event } }
                    })
                    .collect();
                execute(&cluster, &mut link, ops).await;
            }
            _ = heartbeat.tick() => {
                let mut ops = Vec::new();
                cluster.flush_counts(&mut ops);
                execute(&cluster, &mut link, ops).await;
                let Some(mut conn) = link.get(&cluster).await else {
                    if status.failed() {
                        tracing::warn!("redis unavailable for the cluster; serving this node's clients alone");
                    }
                    continue;
                };
                if cluster.reannounce.get() && cluster.pubsub_up.get() {
                    // A node that was never in the view (a first start) or
                    // fell out of it: make Redis hold what this node holds.
                    match rejoin(&cluster, &mut link, &mut conn).await {
                        Ok(()) => {
                            cluster.reannounce.set(false);
                            if status.connected() {
                                tracing::info!(node = %cluster.node, "in the cluster");
                            }
                        }
                        Err(e) => link.lost(&cluster, &e),
                    }
                    continue;
                }
                if let Err(e) = beat(&cluster, &mut link, &mut conn).await {
                    link.lost(&cluster, &e);
                }
            }
        }
    }
}

async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Says this node is alive (returning Redis's time of it); takes out the nodes that stopped saying so;
/// keeps the store lease; reads the other nodes' connections for the
/// apps' quotas.
async fn beat(
    cluster: &Rc<Cluster>,
    link: &mut Commands,
    conn: &mut Conn,
) -> Result<u64, RedisError> {
    if !cluster.pubsub_up.get() {
        // Alive means reachable: without pub/sub this node hears nothing,
        // and the others should take it out.
        return Ok(0);
    }
    let reply: Value = beat_cmd(cluster).query_async(conn).await?;
    let items = array(&reply);
    let names = |at: usize| -> Vec<String> {
        items.get(at).map(array).unwrap_or_default().iter().filter_map(text).collect()
    };
    let (dead, live) = (names(1), names(2));
    tracing::debug!(?dead, ?live, "heartbeat");
    if items.get(3).map_or(1, int) == 0 {
        cluster.reannounce.set(true);
    }
    *cluster.peers.borrow_mut() = live.into_iter().filter(|n| **n != *cluster.node).collect();
    for node in dead {
        if *node == *cluster.node {
            continue;
        }
        // One node sweeps; the lock outlives a sweep by far.
        let got: Option<String> = redis::cmd("SET")
            .arg(keys::sweep_lock(&node))
            .arg(&*cluster.node)
            .arg("NX")
            .arg("PX")
            .arg(60_000)
            .query_async(conn)
            .await?;
        if got.is_some() {
            tracing::warn!(%node, "a node stopped answering; taking it out of the cluster");
            cluster.shared.metrics.cluster_nodes_swept.inc();
            sweep(cluster, link, conn, &node).await?;
        }
    }
    // Kept while this node is alive, so the storing node changes only
    // when one dies (its sweeper frees the lease).
    for app in 0..cluster.shared.apps.len() {
        let _: i64 = redis::cmd("EVAL")
            .arg(scripts::LEASE)
            .arg(1)
            .arg(keys::store_lease(cluster.app_id(app as AppIdx)))
            .arg(&*cluster.node)
            .arg(LEASE.as_millis() as u64)
            .query_async(conn)
            .await?;
    }
    quotas(cluster, conn).await?;
    Ok(items.first().map_or(0, |v| u64::try_from(int(v)).unwrap_or(0)))
}

/// Says this node's connections of each app with a quota, and reads the
/// other nodes' (checked at each handshake, so a quota holds across the
/// cluster within one heartbeat).
async fn quotas(cluster: &Rc<Cluster>, conn: &mut Conn) -> Result<(), RedisError> {
    let apps = cluster.shared.apps.len();
    for app in 0..apps {
        let app = app as AppIdx;
        if cluster.shared.apps.get(app).max_connections.is_none() {
            continue;
        }
        let key = keys::conns(cluster.app_id(app));
        let mine = cluster.admission.app_connections(app);
        let (_, all): ((), Vec<(String, u64)>) = redis::pipe()
            .cmd("HSET")
            .arg(&key)
            .arg(&*cluster.node)
            .arg(mine)
            .cmd("HGETALL")
            .arg(&key)
            .query_async(conn)
            .await?;
        let others: u64 = all.iter().filter(|(n, _)| **n != *cluster.node).map(|(_, c)| *c).sum();
        cluster.admission.set_elsewhere(app, usize::try_from(others).unwrap_or(usize::MAX));
    }
    Ok(())
}

/// Takes a node out of the cluster's view as if every connection it held
/// had closed: its subscriptions, presence members and sign-ins leave (with
/// the webhooks and events that go with them), then its name.
async fn sweep(
    cluster: &Rc<Cluster>,
    link: &mut Commands,
    conn: &mut Conn,
    node: &str,
) -> Result<(), RedisError> {
    let held = held_by(cluster, conn, node).await?;
    let mut ops = Vec::new();
    for (app, channels, members, signed) in held {
        for (channel, _) in channels {
            ops.push(cluster.subs_op(app, channel.into(), 0, Vec::new(), Vec::new(), node));
        }
        for (channel, user) in members {
            ops.push(cluster.leave_op(app, channel.into(), user.into(), node));
        }
        for user in signed {
            ops.push(cluster.signed_op(app, user.into(), false, node));
        }
        let mut hdel = redis::cmd("HDEL");
        hdel.arg(keys::conns(cluster.app_id(app))).arg(node);
        ops.push(Op { cmds: vec![hdel], then: Then::Nothing });
    }
    for app in 0..cluster.shared.apps.len() {
        let lease = keys::store_lease(cluster.app_id(app as AppIdx));
        let mut release = redis::cmd("EVAL");
        release.arg(scripts::RELEASE).arg(1).arg(lease).arg(node);
        ops.push(Op { cmds: vec![release], then: Then::Nothing });
    }
    let mut zrem = redis::cmd("ZREM");
    zrem.arg(keys::nodes()).arg(node);
    ops.push(Op { cmds: vec![zrem], then: Then::Nothing });
    execute(cluster, link, ops).await;
    Ok(())
}

/// What Redis says a node holds, per app: channels with its counts,
/// presence memberships, signed-in users.
type NodeState = Vec<(AppIdx, Vec<(String, i64)>, Vec<(String, String)>, Vec<String>)>;

async fn held_by(
    cluster: &Rc<Cluster>,
    conn: &mut Conn,
    node: &str,
) -> Result<NodeState, RedisError> {
    let mut out = Vec::new();
    for app in 0..cluster.shared.apps.len() {
        let app = app as AppIdx;
        let id = cluster.app_id(app);
        let (channels, members, signed): (Vec<(String, i64)>, Vec<String>, Vec<String>) =
            redis::pipe()
                .cmd("HGETALL")
                .arg(keys::node_subs(id, node))
                .cmd("SMEMBERS")
                .arg(keys::node_presence(id, node))
                .cmd("SMEMBERS")
                .arg(keys::node_signed(id, node))
                .query_async(conn)
                .await?;
        let members = members
            .into_iter()
            .filter_map(|f| f.split_once('\n').map(|(c, u)| (c.to_owned(), u.to_owned())))
            .collect();
        out.push((app, channels, members, signed));
    }
    Ok(out)
}

/// Makes Redis hold exactly what this node holds: what it holds is said
/// again (idempotently), what Redis holds for it beyond that (left while
/// Redis was away, or left by an earlier run under the same name) is taken
/// out. Then the events kept meanwhile go.
async fn rejoin(
    cluster: &Rc<Cluster>,
    link: &mut Commands,
    conn: &mut Conn,
) -> Result<(), RedisError> {
    let node = cluster.node.clone();
    let held = held_by(cluster, conn, &node).await?;
    let mut ops = Vec::new();
    for (app, channels, members, signed) in held {
        for (channel, _) in channels {
            if cluster.view.borrow().interest(app, &channel).is_none() {
                ops.push(cluster.subs_op(app, channel.into(), 0, Vec::new(), Vec::new(), &node));
            }
        }
        for (channel, user) in members {
            let key = (app, Box::<str>::from(channel.as_str()), Box::<str>::from(user.as_str()));
            if !cluster.infos.borrow().contains_key(&key) {
                ops.push(cluster.leave_op(app, key.1, key.2, &node));
            }
        }
        for user in signed {
            if !cluster.signed.borrow().contains(&(app, Box::<str>::from(user.as_str()))) {
                ops.push(cluster.signed_op(app, user.into(), false, &node));
            }
        }
    }
    let channels: Vec<(AppIdx, Box<str>, u32)> =
        cluster.view.borrow().channels().map(|((a, c), i)| (*a, c.clone(), i.total())).collect();
    for (app, channel, total) in channels {
        ops.push(cluster.subs_op(app, channel, total, Vec::new(), Vec::new(), &node));
    }
    let members: Vec<_> = cluster
        .infos
        .borrow()
        .iter()
        .map(|((a, c, u), i)| (*a, c.clone(), u.clone(), i.clone()))
        .collect();
    for (app, channel, user, info) in members {
        // Nobody waits for this verdict: the shards ignore a verdict for
        // a connection they do not have.
        let nobody = ConnRef { shard: u16::MAX, key: u32::MAX, generation: 0 };
        ops.push(cluster.join_op(app, channel, user, info, nobody));
    }
    let signed: Vec<(AppIdx, Box<str>)> = cluster.signed.borrow().iter().cloned().collect();
    for (app, user) in signed {
        ops.push(cluster.signed_op(app, user, true, &node));
    }
    execute(cluster, link, ops).await;
    // The node is back in the view; say so before the kept events wait for
    // the others to do the same.
    let peers_before: Vec<String> = cluster.peers.borrow().clone();
    let rejoined_ms = beat(cluster, link, conn).await?;
    *cluster.peers.borrow_mut() = peers_before;
    send_kept(cluster, link, conn, rejoined_ms).await;
    Ok(())
}

/// Sends the events kept while Redis was away, once every node that was
/// alive before has said it is alive again since this node rejoined (a
/// node says so only once subscribed again), or after [`REJOIN_WAIT`].
async fn send_kept(cluster: &Rc<Cluster>, link: &mut Commands, conn: &mut Conn, rejoined_ms: u64) {
    if cluster.kept.borrow().is_empty() {
        return;
    }
    let deadline = tokio::time::Instant::now() + REJOIN_WAIT;
    let peers: Vec<String> = cluster.peers.borrow().clone();
    while tokio::time::Instant::now() < deadline {
        let mut zscores = redis::pipe();
        for peer in &peers {
            zscores.cmd("ZSCORE").arg(keys::nodes()).arg(peer);
        }
        let scores: Result<Vec<Option<u64>>, RedisError> = zscores.query_async(conn).await;
        match scores {
            Ok(scores) if scores.iter().all(|s| s.is_some_and(|at| at >= rejoined_ms)) => break,
            Ok(_) => tokio::time::sleep(HEARTBEAT / 4).await,
            Err(_) => break,
        }
    }
    let kept: Vec<(String, Bytes)> = cluster.kept.borrow_mut().drain(..).collect();
    tracing::info!(events = kept.len(), "sending the events kept while redis was away");
    let ops = kept.into_iter().map(|(name, payload)| publish(name, payload)).collect();
    execute(cluster, link, ops).await;
}

/// Takes this node out of the view as it stops.
pub(super) async fn leave(cluster: &Rc<Cluster>, conns: &Rc<RedisLink>) {
    let mut link = Commands { conns: Rc::clone(conns), conn: None };
    let Some(mut conn) = link.get(cluster).await else { return };
    let node = cluster.node.clone();
    if let Err(e) = sweep(cluster, &mut link, &mut conn, &node).await {
        tracing::warn!("could not leave the cluster: {e}");
    }
}

/// The node's pub/sub: the channels it has subscribers to, and the apps'
/// control channels.
pub(super) async fn pubsub_task(
    cluster: Rc<Cluster>,
    conns: Rc<RedisLink>,
    mut cmds: mpsc::UnboundedReceiver<PubsubCmd>,
) {
    let mut backoff = Backoff::new(cluster.shared.config.reconnect_max);
    let mut status = Link::Starting;
    let controls: Vec<String> = (0..cluster.shared.apps.len())
        .map(|a| keys::control_channel(cluster.app_id(a as AppIdx)))
        .collect();
    loop {
        cluster.pubsub_trying.set(true);
        let connected = conns.pubsub().await;
        let subscribed = match connected {
            Ok(pubsub) => subscribe_all(&cluster, pubsub, &controls).await,
            Err(e) => Err(e),
        };
        let (mut sink, mut stream, names) = match subscribed {
            Ok(up) => up,
            Err(e) => {
                cluster.pubsub_trying.set(false);
                release_pending(&cluster);
                if status.failed() {
                    tracing::warn!("cluster pub/sub unavailable ({e}); retrying with back-off");
                }
                tokio::time::sleep(backoff.next_delay(random())).await;
                continue;
            }
        };
        // Commands sent while down are covered by what was subscribed.
        while cmds.try_recv().is_ok() {}
        // No await since the last name was checked: nothing listed since
        // is missing.
        cluster.pubsub_up.set(true);
        cluster.pubsub_trying.set(false);
        for name in &names {
            cluster.subscribed(name);
        }
        if status.connected() {
            tracing::info!("cluster pub/sub connected");
        }
        backoff.reset();
        // A peer that vanished without closing TCP looks like quiet
        // channels; a PING now and then tells the two apart.
        let start = tokio::time::Instant::now() + KEEPALIVE;
        let mut keepalive = tokio::time::interval_at(start, KEEPALIVE);
        loop {
            tokio::select! {
                _ = keepalive.tick() => {
                    // In subscribed mode PING answers with an array.
                    let pong = tokio::time::timeout(CONNECT_TIMEOUT, sink.ping::<Value>()).await;
                    if !matches!(pong, Ok(Ok(_))) {
                        break;
                    }
                }
                cmd = cmds.recv() => match cmd {
                    Some(PubsubCmd::Subscribe(name)) => {
                        if sink.subscribe(&name).await.is_err() { break; }
                        cluster.subscribed(&name);
                    }
                    Some(PubsubCmd::Unsubscribe(name)) => {
                        // Subscribed again meanwhile: keep it.
                        if cluster.subs.borrow().contains_key(&name) { continue; }
                        if sink.unsubscribe(&name).await.is_err() { break; }
                    }
                    None => return,
                },
                msg = stream.next() => {
                    let Some(msg) = msg else { break };
                    let payload = Bytes::copy_from_slice(msg.get_payload_bytes());
                    on_message(&cluster, msg.get_channel_name(), payload);
                    // What else is in: handed over with it, the shards woken
                    // once for the lot.
                    let mut ended = false;
                    for _ in 1..BATCH {
                        match stream.next().now_or_never() {
                            Some(Some(msg)) => {
                                let payload = Bytes::copy_from_slice(msg.get_payload_bytes());
                                on_message(&cluster, msg.get_channel_name(), payload);
                            }
                            Some(None) => {
                                ended = true;
                                break;
                            }
                            None => break,
                        }
                    }
                    cluster.shared.flush();
                    if ended {
                        break;
                    }
                }
            }
        }
        cluster.pubsub_up.set(false);
        // This node heard nothing for a while: the others may have taken it
        // out, and what it holds must be said again.
        cluster.reannounce.set(true);
        release_pending(&cluster);
        if status.failed() {
            tracing::warn!("cluster pub/sub lost; serving this node's clients alone");
        }
        tokio::time::sleep(backoff.next_delay(random())).await;
    }
}

type PubsubSink = redis::aio::PubSubSink;
type PubsubStream = redis::aio::PubSubStream;

/// Subscribes a new pub/sub connection to the control channels and every
/// channel listed, including those listed while it subscribes.
async fn subscribe_all(
    cluster: &Cluster,
    pubsub: redis::aio::PubSub,
    controls: &[String],
) -> Result<(PubsubSink, PubsubStream, Vec<String>), RedisError> {
    let (mut sink, stream) = pubsub.split();
    sink.subscribe(controls).await?;
    let mut done: HashSet<String> = HashSet::new();
    loop {
        let new: Vec<String> = {
            let subs = cluster.subs.borrow();
            subs.keys().filter(|n| !done.contains(*n)).cloned().collect()
        };
        if new.is_empty() {
            return Ok((sink, stream, done.into_iter().collect()));
        }
        for chunk in new.chunks(512) {
            sink.subscribe(chunk).await?;
        }
        done.extend(new);
    }
}

/// Waiters cannot wait for a connection that is gone or never came: they
/// are served as without Redis.
fn release_pending(cluster: &Cluster) {
    let pending: Vec<String> = cluster
        .subs
        .borrow()
        .iter()
        .filter(|(_, s)| matches!(s, Subscription::Pending(_)))
        .map(|(n, _)| n.clone())
        .collect();
    for name in pending {
        cluster.subscribed(&name);
    }
}

/// One message from another node (or this node's own cache store).
fn on_message(cluster: &Cluster, name: &str, payload: Bytes) {
    let envelope = match Envelope::decode(payload) {
        Ok(e) => e,
        Err(e) => {
            cluster.shared.metrics.cluster_refused.inc();
            crate::warn_throttled!(
                bump(&cluster.shared.counts.cluster_refused),
                channel = name,
                "cluster message refused: {e}"
            );
            return;
        }
    };
    let own = envelope.node == cluster.node;
    tracing::debug!(channel = name, from = %envelope.node, "cluster message");
    if let Some((app_id, channel)) = keys::parse_event_channel(name) {
        let Some(app) = cluster.shared.apps.by_id(app_id) else { return };
        let Body::Event { exclude, seq, frame } = envelope.body else { return };
        if seq > 0 {
            // A cache channel's store: this node's own come back this way too.
            cluster.shared.metrics.cluster_received.inc();
            cluster.deliver_cached(app, channel, seq, frame, exclude);
        } else if !own {
            cluster.shared.metrics.cluster_received.inc();
            cluster.deliver_local(app, channel, &frame, exclude);
        }
        return;
    }
    let Some(app) = keys::parse_control_channel(name).and_then(|id| cluster.shared.apps.by_id(id))
    else {
        return;
    };
    if own {
        return;
    }
    let shards = cluster.shared.links.borrow().outlets.len();
    match envelope.body {
        Body::Terminate(user_id) => {
            for shard in 0..shards {
                cluster.to_shard(shard, ShardMsg::TerminateUser { app, user_id: user_id.clone() });
            }
        }
        Body::Online(user_id) => {
            let owner = owner_shard(app, &user_id, shards);
            cluster.to_shard(owner, ShardMsg::ClusterUser { app, user_id, online: true });
        }
        Body::Offline(user_id) => {
            let owner = owner_shard(app, &user_id, shards);
            cluster.to_shard(owner, ShardMsg::ClusterUser { app, user_id, online: false });
        }
        Body::Event { .. } => {}
    }
}
