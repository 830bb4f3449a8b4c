//! The Redis bridge: one OS thread running a current-thread tokio runtime
//! (redis-rs needs tokio; the shards run their own event loops), started only when
//! `redis:` is configured.
//!
//! It is the only producer of its own ring to every shard, built with the
//! rest of the mesh at start-up ([`crate::io::rings::build`]). Everything that
//! needs parsing is parsed here, once, and what reaches a shard is a
//! ready-to-write frame: the shards never see Redis, JSON from Redis, or a
//! lock.
//!
//! Its tasks share the thread (through `Rc`, never across threads):
//!
//! 1. **pub/sub**: one connection SUBSCRIBEd to `redis.pusher_channel` and
//!    `redis.incus_channel`. A Pusher event is checked like an HTTP API
//!    trigger, framed once per channel ([`crate::proto::redis::pusher`]) and pushed to every
//!    shard; an Incus command is parsed ([`crate::proto::incus::command`]) and handed to the
//!    [`crate::proto::incus::command::IncusRouter`]. Messages already waiting are taken as one
//!    batch, and each shard is woken once per batch.
//! 2. **list**: a dedicated connection (its own, because a blocking command
//!    holds the connection, STACK.md §6) that blocks in
//!    `BLMOVE <incus_queue> <processing> LEFT RIGHT`, hands the command to
//!    the router, then `LREM`s it from the processing list. On every
//!    (re)connect it first removes the command it handed over without an
//!    answer to its `LREM` (so a Redis restart delivers nothing twice), then
//!    moves whatever its processing list holds back to the head of the
//!    queue, so a command taken by a run that stopped before handling it is
//!    taken again: delivery is at least once across stapes crashes.
//! 3. **flush**: retries pushes that found a shard's ring full.
//! 4. **uplink**: writes what the shards sent over their uplink rings
//!    ([`uplink`]): Incus's `SocketClients`, `PageClients` and
//!    `ClientPresence:<uid>` (see `writer.rs`), and client messages to PUBLISH,
//!    one `MULTI`/`EXEC` per batch on its own connection.
//! 5. **presence**: answers `pushormessage` by reading
//!    `ClientPresence:<uid>` (and, with `incus.pushormessage_connected`,
//!    `stapes:online:<uid>`), in arrival order: the WebSocket part to the
//!    shards if the user is active, else the push part to the push thread.
//!    Push commands go to the push thread as they are decoded
//!    ([`crate::io::push`]); the bridge never waits for a push.
//! 6. **kill switch**: reads `TTL <incus.longpoll_killswitch>` every 5 s and
//!    tells every shard when it changes.
//!
//! Losing Redis stops nothing but this thread's input: each connection
//! retries with capped exponential back-off plus jitter ([`crate::core::backoff`]), logs
//! when it goes down and when it comes back, and subscribes again.

pub mod cluster;
pub mod uplink;
mod writer;

use std::{
    cell::{Cell, OnceCell, RefCell},
    collections::VecDeque,
    rc::Rc,
    sync::{Arc, atomic::Ordering},
    thread,
    time::{Duration, Instant},
};

use futures_util::{FutureExt, StreamExt};
use redis::RedisError;
use simd_json::Buffers;
use tokio::sync::{Notify, watch};
pub use writer::ONLINE_REFRESH;

use self::{
    uplink::UplinkInbox,
    writer::{IncusWriter, ONLINE_TTL_SECS, online_key},
};
use crate::{
    config::{IncusConfig, RedisConfig},
    core::{
        Apps,
        backoff::{Backoff, Link},
        counters::{BridgeCounters, PushCounters},
    },
    io::{
        push,
        push::PushHandle,
        redis_link::{LinkError, RedisLink},
        rings::{ExternalLinks, Outlet},
    },
    proto::{
        incus::{
            IncusMsg, Target,
            command::{
                Envelope, IncusError, IncusKind, IncusRouter, IncusSource, PresenceCheck,
                ShardRouter,
            },
            push::Decoded,
        },
        msg::ShardMsg,
    },
};

/// Pub/sub messages handled before the shards are woken.
const BATCH: usize = 256;
/// Messages waiting for one shard beyond which the bridge drops new events
/// for that shard rather than queue without bound: the shard is that far
/// behind, and Redis pub/sub cannot be asked to slow down.
const MAX_SHARD_BACKLOG: usize = 64 * 1024;
/// How long BLMOVE blocks in Redis before it is issued again. The wait is in
/// the server, not a poll: a command pushed meanwhile is returned at once.
const BLOCK_SECS: u64 = 5;
/// How often a quiet pub/sub connection is checked with a PING.
const KEEPALIVE: Duration = Duration::from_secs(15);
/// Part of [`Bridge::stop`]'s wait given to removing this node's online marks.
const STOP_BUDGET: Duration = Duration::from_millis(500);
/// Longest wait for a TCP connection and handshake to Redis, or for the
/// answer to a keep-alive PING.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Why the bridge could not start.
#[derive(Debug, thiserror::Error)]
pub enum BridgeError {
    /// The `redis:` section cannot be turned into connections
    /// (validation normally catches this first).
    #[error(transparent)]
    Link(#[from] LinkError),
    /// The thread could not be spawned.
    #[error("cannot start the redis bridge thread: {0}")]
    Thread(#[from] std::io::Error),
}

/// What the bridge thread is given at start-up.
pub struct BridgeInit {
    /// The `redis:` section.
    pub config: RedisConfig,
    /// Names this instance's processing list (`redis.instance` or its default).
    pub instance: String,
    /// The apps, to check `app_id`.
    pub apps: Arc<Apps>,
    /// One outlet per shard; this thread is their only producer.
    pub links: ExternalLinks,
    /// The shards' rings to this thread (Incus bookkeeping for Redis).
    pub uplink: Option<UplinkInbox>,
    /// The `incus:` section (kill switch key, presence window).
    pub incus: IncusConfig,
    /// The bridge's metrics; this thread is their only writer.
    pub counters: Arc<BridgeCounters>,
    /// The push thread's queue, when a push platform is enabled.
    pub push: Option<PushHandle>,
    /// Push counters: the bridge counts refusals there.
    pub push_counters: Arc<PushCounters>,
    /// The cluster side (present whenever Redis is: a node with Redis is a
    /// cluster of one or more).
    pub cluster: Option<cluster::ClusterInit>,
    /// The node's console viewers: events published on Redis are shown to
    /// them like API publishes.
    pub watch: Arc<crate::proto::console::Watch>,
}

/// The running bridge thread.
pub struct Bridge {
    stop: watch::Sender<bool>,
    thread: thread::JoinHandle<()>,
}

impl Bridge {
    /// Spawns the bridge thread. Connecting happens there, so a Redis that is
    /// down at start-up delays nothing.
    ///
    /// # Errors
    ///
    /// [`BridgeError`] if the `redis:` section is unusable or the thread
    /// cannot start.
    pub fn start(init: BridgeInit) -> Result<Self, BridgeError> {
        let conns = RedisLink::new(&init.config, CONNECT_TIMEOUT)?;
        init.counters.redis_configured.store(true, Ordering::Relaxed);
        let (stop, stopped) = watch::channel(false);
        let thread =
            crate::io::threads::spawn("stapes-bridge", move || thread_main(init, conns, stopped))?;
        Ok(Self { stop, thread })
    }

    /// True once the thread has ended, which before [`Bridge::stop`] means
    /// it panicked: the node goes on serving local traffic without Redis.
    pub fn has_ended(&self) -> bool {
        self.thread.is_finished()
    }

    /// Asks the thread to stop and waits for it until `deadline`. A list
    /// command caught mid-flight stays in the processing list for next time.
    pub fn stop(self, deadline: Instant) {
        let _ = self.stop.send(true);
        if crate::io::threads::join_until(self.thread, deadline).is_none() {
            tracing::warn!("the redis bridge did not stop in time");
        }
    }
}

/// The default `redis.instance`: `<hostname>:<port>`, stable across restarts
/// of the same service on the same host.
pub fn default_instance(port: u16) -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname NUL-terminates
    // within it or truncates, and we stop at the first NUL either way.
    let ok = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) } == 0;
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    let host = if ok { String::from_utf8_lossy(&buf[..end]).into_owned() } else { String::new() };
    let host = if host.is_empty() { "localhost".to_owned() } else { host };
    format!("{host}:{port}")
}

fn thread_main(init: BridgeInit, conns: RedisLink, mut stopped: watch::Receiver<bool>) {
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!("cannot build the redis bridge runtime: {e}; running without redis");
            return;
        }
    };
    let shards = init.links.outlets.len();
    let apps = init.apps.len();
    let cluster_init = init.cluster;
    let conns = Rc::new(conns);
    let processing = processing_list(&init.config.incus_queue, &init.instance, conns.is_cluster());
    let shared = Rc::new(Shared {
        config: init.config,
        apps: init.apps,
        links: RefCell::new(init.links),
        buffers: RefCell::new(Buffers::default()),
        router: RefCell::new(ShardRouter::new(shards, push::rules(&init.incus.push))),
        push: init.push,
        push_counters: init.push_counters,
        checks: RefCell::new(VecDeque::new()),
        checks_wanted: Notify::new(),
        flush_wanted: Notify::new(),
        shedding: Cell::new(false),
        counts: Counts::default(),
        metrics: init.counters,
        cluster: OnceCell::new(),
        console_seq: RefCell::new(vec![0; apps]),
        watch: init.watch,
    });
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async move {
        tracing::info!(
            pusher_channel = %shared.config.pusher_channel,
            incus_channel = %shared.config.incus_channel,
            incus_queue = %shared.config.incus_queue,
            %processing,
            "redis bridge starting"
        );
        let cluster = cluster_init.map(|c| {
            cluster::start(Rc::clone(&shared), Rc::clone(&conns), init.instance.clone(), c)
        });
        if let Some(cluster) = &cluster {
            let _ = shared.cluster.set(ClusterEnds {
                redis_cache: cluster.redis_cache.clone(),
                view: cluster.view(),
            });
        }
        tokio::task::spawn_local(pubsub_task(Rc::clone(&shared), Rc::clone(&conns)));
        tokio::task::spawn_local(queue_task(Rc::clone(&shared), Rc::clone(&conns), processing));
        tokio::task::spawn_local(flush_task(Rc::clone(&shared)));
        let writer = Rc::new(RefCell::new(IncusWriter::new(init.instance.clone(), &init.incus)));
        if let Some(inbox) = init.uplink {
            tokio::task::spawn_local(uplink_task(
                Rc::clone(&shared),
                Rc::clone(&conns),
                inbox,
                Rc::clone(&writer),
            ));
        }
        let window = init.incus.presence_window.as_secs();
        let connected = init.incus.push.connected_is_active;
        tokio::task::spawn_local(presence_task(
            Rc::clone(&shared),
            Rc::clone(&conns),
            window,
            connected,
        ));
        let killswitch = init.incus.longpoll_killswitch.clone();
        tokio::task::spawn_local(killswitch_task(
            Rc::clone(&shared),
            Rc::clone(&conns),
            killswitch,
        ));
        while !*stopped.borrow_and_update() {
            if stopped.changed().await.is_err() {
                break;
            }
        }
        if let Some(cluster) = &cluster {
            cluster.leave().await;
        }
        forget_online(&conns, &writer, STOP_BUDGET).await;
        let counts = &shared.counts;
        tracing::info!(
            published = counts.published.get(),
            pusher_refused = counts.pusher_rejected.get(),
            incus_refused = counts.incus_rejected.get(),
            incus_client_refused = counts.client_refused.get(),
            shed = counts.shed.get(),
            "redis bridge stopped"
        );
    });
}

/// The Incus list consumer's processing list. BLMOVE takes from the queue
/// into it, so on Redis Cluster both must hash to one slot: there the name
/// carries the queue's whole name as its hash tag, `{<queue>}:processing:<instance>`
/// (a queue name with braces is left as it is: its own hash tag, which it
/// must then have, decides the slot of both).
fn processing_list(queue: &str, instance: &str, cluster: bool) -> String {
    if cluster && !queue.contains('{') {
        format!("{{{queue}}}:processing:{instance}")
    } else {
        format!("{queue}:processing:{instance}")
    }
}

/// Counters, logged with each refusal so an operator sees the running total.
#[derive(Default)]
struct Counts {
    published: Cell<u64>,
    pusher_rejected: Cell<u64>,
    incus_rejected: Cell<u64>,
    client_refused: Cell<u64>,
    shed: Cell<u64>,
    /// `pushormessage` presence reads or publishes that Redis failed.
    presence_failed: Cell<u64>,
    /// Cluster commands Redis refused.
    cluster_errors: Cell<u64>,
    /// Messages on the cluster's channels that were not a node's.
    cluster_refused: Cell<u64>,
}

fn bump(counter: &Cell<u64>) -> u64 {
    let n = counter.get() + 1;
    counter.set(n);
    n
}

/// What the bridge's tasks share, on this one thread.
struct Shared {
    config: RedisConfig,
    apps: Arc<Apps>,
    links: RefCell<ExternalLinks>,
    buffers: RefCell<Buffers>,
    router: RefCell<ShardRouter>,
    /// The push thread's queue.
    push: Option<PushHandle>,
    push_counters: Arc<PushCounters>,
    /// `pushormessage` commands waiting for their presence read.
    checks: RefCell<VecDeque<PresenceCheck>>,
    checks_wanted: Notify,
    flush_wanted: Notify,
    shedding: Cell<bool>,
    counts: Counts,
    metrics: Arc<BridgeCounters>,
    /// The cluster side's ends, once it has started (with Redis, every
    /// node is a cluster node).
    cluster: OnceCell<ClusterEnds>,
    /// The node's console viewers.
    watch: Arc<crate::proto::console::Watch>,
    /// The bridge's numbers for the console events it raises, per app.
    console_seq: RefCell<Vec<u64>>,
}

/// What the pub/sub path needs of the cluster side.
struct ClusterEnds {
    /// Where Redis-published events of cache channels go (stored once for
    /// the cluster, not by an owner shard).
    redis_cache: tokio::sync::mpsc::UnboundedSender<cluster::RedisCacheEvent>,
    /// Which shards hold each channel, so that a Redis-published event
    /// wakes only those.
    view: Rc<RefCell<crate::proto::cluster::node::NodeView>>,
}

impl Shared {
    /// One pub/sub message; the shards are woken later, by [`Shared::flush`].
    fn on_pubsub(&self, channel: &str, mut payload: Vec<u8>) {
        if channel == self.config.pusher_channel {
            self.on_pusher(&mut payload);
        } else if channel == self.config.incus_channel {
            self.on_incus(&mut payload, IncusSource::Channel);
        }
    }

    fn on_pusher(&self, payload: &mut [u8]) {
        let parsed =
            crate::proto::redis::pusher::parse(payload, &self.apps, &mut self.buffers.borrow_mut());
        let publish = match parsed {
            Ok(publish) => publish,
            Err(e) => {
                self.metrics.pusher_refused.inc();
                crate::warn_throttled!(
                    bump(&self.counts.pusher_rejected),
                    "redis pusher event refused: {e}"
                );
                return;
            }
        };
        let mut links = self.links.borrow_mut();
        let (shards, at) = (links.outlets.len(), mono_now());
        let console = self.console_frames(&publish, shards);
        let ends = self.cluster.get();
        let publish = match ends {
            Some(ends) => Self::cache_to_cluster(publish, &ends.redis_cache),
            None => publish,
        };
        // Each plain channel's holders, looked up once: a shard without
        // subscribers is not woken for it. Without a cluster's view, every
        // shard gets every event.
        let view = ends.map(|ends| ends.view.borrow());
        let holders: Option<Vec<_>> = view.as_ref().map(|view| {
            publish.frames.iter().map(|(channel, _)| view.interest(publish.app, channel)).collect()
        });
        let holds = |shard: usize| {
            let holders = holders.as_deref();
            move |i: usize| {
                holders.is_none_or(|h| h.get(i).is_some_and(|c| c.is_some_and(|c| c.has(shard))))
            }
        };
        let (mut shed, mut handed) = (false, 0);
        for (shard, outlet) in links.outlets.iter_mut().enumerate() {
            let mut msgs = publish.messages(shard, shards, at, holds(shard)).peekable();
            let watched = !console.is_empty() && self.watch.on(shard, publish.app);
            if msgs.peek().is_none() && !watched {
                continue;
            }
            if outlet.backlog() > MAX_SHARD_BACKLOG {
                shed = true;
                continue;
            }
            for msg in msgs {
                outlet.push(msg);
                handed += 1;
            }
            if watched {
                for (seq, frame) in &console {
                    let (app, from, seq, frame) = (publish.app, shards as u16, *seq, frame.clone());
                    outlet.push(ShardMsg::Console { app, from, seq, frame });
                }
            }
        }
        bump(&self.counts.published);
        self.metrics.pusher_events.inc();
        self.metrics.pusher_handoffs.add(handed);
        if shed {
            let total = bump(&self.counts.shed);
            self.metrics.shed.inc();
            if !self.shedding.replace(true) {
                tracing::warn!(total, "a shard is too far behind; dropping redis events for it");
            }
        } else if self.shedding.replace(false) {
            tracing::info!("every shard keeps up again with redis events");
        }
    }

    /// A Redis-published event as console viewers see it, when its app has
    /// one: an `api_message` per channel, numbered by the bridge, which
    /// viewers know as source `shards` (one past the last shard).
    fn console_frames(
        &self,
        publish: &crate::proto::redis::pusher::Publish,
        shards: usize,
    ) -> Vec<(u64, bytes::Bytes)> {
        use crate::proto::{console::ConsoleEvent, pusher::messages, ws::codec};
        if !self.watch.any(publish.app) {
            return Vec::new();
        }
        let time_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        let mut seqs = self.console_seq.borrow_mut();
        let Some(next) = seqs.get_mut(publish.app as usize) else { return Vec::new() };
        publish
            .frames
            .iter()
            .filter_map(|(channel, frame)| {
                let (event, data) = messages::channel_event_parts(frame)?;
                let (channel, event, data) = (channel.clone(), event.into(), data.into());
                let json = ConsoleEvent::ApiMessage { channel, event, data }
                    .to_json(shards, *next, time_ms);
                let numbered = (*next, codec::text_frame(&json));
                *next += 1;
                Some(numbered)
            })
            .collect()
    }

    /// In a cluster, a Redis-published event's cache channels are the
    /// cluster side's; the rest goes to the shards as on a node alone.
    fn cache_to_cluster(
        mut publish: crate::proto::redis::pusher::Publish,
        to_cluster: &tokio::sync::mpsc::UnboundedSender<cluster::RedisCacheEvent>,
    ) -> crate::proto::redis::pusher::Publish {
        let (app, exclude) = (publish.app, publish.exclude);
        publish.frames.retain(|(channel, frame)| {
            if !crate::proto::pusher::channel::classify(channel).cache {
                return true;
            }
            let event = cluster::RedisCacheEvent {
                app,
                channel: channel.clone(),
                frame: frame.clone(),
                exclude,
            };
            let _ = to_cluster.send(event);
            false
        });
        publish
    }

    fn on_incus(&self, payload: &mut [u8], source: IncusSource) {
        match crate::proto::incus::command::parse(payload) {
            Ok(envelope) => {
                self.count_incus(&envelope);
                let mut links = self.links.borrow_mut();
                let mut shed = 0;
                let mut send = |to: usize, msg| {
                    if !push_incus(&mut links.outlets, to, msg) {
                        shed += 1;
                    }
                };
                let mut router = self.router.borrow_mut();
                router.route(envelope, source, unix_now(), &mut send);
                for _ in 0..shed {
                    self.shed_incus();
                }
                for decoded in router.take_pushes() {
                    self.dispatch_push(decoded, source.label());
                }
                let checks = router.take_checks();
                if !checks.is_empty() {
                    let mut queue = self.checks.borrow_mut();
                    for check in checks {
                        if queue.len() >= MAX_PRESENCE_CHECKS {
                            self.metrics.shed.inc();
                            crate::warn_throttled!(
                                bump(&self.counts.shed),
                                "too many pushormessage commands waiting; dropped one"
                            );
                            continue;
                        }
                        queue.push_back(check);
                    }
                    self.checks_wanted.notify_one();
                }
            }
            // A client's envelope that names a backend command: someone
            // tried to have every node run it (issue #15). Never run.
            Err(e @ IncusError::ClientCommand(_)) => {
                self.metrics.incus_client_refused.inc();
                crate::warn_throttled!(
                    bump(&self.counts.client_refused),
                    source = source.label(),
                    "incus client envelope refused: {e}"
                );
            }
            Err(e) => {
                self.metrics.incus_json_errors.inc();
                crate::warn_throttled!(
                    bump(&self.counts.incus_rejected),
                    source = source.label(),
                    "incus command refused: {e}"
                );
            }
        }
    }

    fn shed_incus(&self) {
        // Shedding comes in floods; the count says how many.
        crate::warn_throttled!(
            bump(&self.counts.shed),
            "a shard is too far behind; dropping incus messages for it"
        );
    }

    /// Counts a command from Redis for Incus's `incus.*` metrics.
    fn count_incus(&self, envelope: &Envelope) {
        let m = &self.metrics;
        m.incus_commands.inc();
        let (user, page) = match envelope {
            Envelope::Client(message) => (&message.user, &message.page),
            Envelope::Backend(command) if command.kind == IncusKind::Message => {
                (&command.user, &command.page)
            }
            Envelope::Backend(_) => return,
        };
        match Target::of(user.as_deref(), page.as_deref()) {
            Target::All => m.incus_message_all.inc(),
            Target::User { .. } => m.incus_message_user.inc(),
            Target::Page(_) => m.incus_message_page.inc(),
        }
    }

    /// Hands a decoded push to the push thread, or counts why not.
    fn dispatch_push(&self, decoded: Decoded, source: &str) {
        match (decoded, &self.push) {
            (Ok(job), Some(push)) => {
                push.submit(job);
            }
            // Decoding refuses pushes for a platform that is off, so this
            // is only a push thread that failed to start.
            (Ok(job), None) => {
                let platform = job.platform();
                let why = push::Refusal::Disabled(platform);
                push::refuse(&self.push_counters, platform, &why, source);
            }
            (Err((platform, why)), _) => push::refuse(&self.push_counters, platform, &why, source),
        }
    }

    /// Rings each shard that got something; asks the flush task to retry if
    /// a ring was full.
    fn flush(&self) {
        let mut backlog = false;
        for outlet in &mut self.links.borrow_mut().outlets {
            backlog |= outlet.flush();
        }
        if backlog {
            self.flush_wanted.notify_one();
        }
    }
}

async fn flush_task(shared: Rc<Shared>) {
    loop {
        shared.flush_wanted.notified().await;
        loop {
            let mut backlog = false;
            for outlet in &mut shared.links.borrow_mut().outlets {
                backlog |= outlet.flush();
            }
            if !backlog {
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
}

async fn pubsub_task(shared: Rc<Shared>, conns: Rc<RedisLink>) {
    let mut backoff = Backoff::new(shared.config.reconnect_max);
    let mut link = Link::Starting;
    let channels = [shared.config.pusher_channel.clone(), shared.config.incus_channel.clone()];
    loop {
        match subscribe(&conns, &channels).await {
            Ok(pubsub) => {
                if link.connected() {
                    tracing::info!(channels = ?channels, "redis pub/sub connected and subscribed");
                }
                backoff.reset();
                shared.metrics.redis_connected.store(true, Ordering::Relaxed);
                let why = serve_pubsub(&shared, pubsub).await;
                shared.metrics.redis_connected.store(false, Ordering::Relaxed);
                if link.failed() {
                    tracing::warn!("redis pub/sub connection lost ({why}); reconnecting");
                }
            }
            Err(e) => {
                if link.failed() {
                    tracing::warn!("redis pub/sub unavailable ({e}); retrying with back-off");
                } else {
                    tracing::debug!("redis pub/sub still unavailable: {e}");
                }
            }
        }
        tokio::time::sleep(backoff.next_delay(random())).await;
    }
}

/// Handles messages until the connection ends, and says why it ended.
///
/// A subscribed connection only ever receives, so a peer that vanished
/// without closing TCP would look like a quiet channel forever; a PING every
/// [`KEEPALIVE`] tells the two apart.
async fn serve_pubsub(shared: &Shared, pubsub: redis::aio::PubSub) -> String {
    let (mut sink, mut stream) = pubsub.split();
    let start = tokio::time::Instant::now() + KEEPALIVE;
    let mut keepalive = tokio::time::interval_at(start, KEEPALIVE);
    loop {
        tokio::select! {
            msg = stream.next() => {
                let Some(msg) = msg else { return "closed by the server".to_owned() };
                shared.on_pubsub(msg.get_channel_name(), msg.get_payload_bytes().to_vec());
                let mut ended = false;
                for _ in 1..BATCH {
                    match stream.next().now_or_never() {
                        Some(Some(msg)) => shared
                            .on_pubsub(msg.get_channel_name(), msg.get_payload_bytes().to_vec()),
                        Some(None) => {
                            ended = true;
                            break;
                        }
                        None => break,
                    }
                }
                shared.flush();
                if ended {
                    return "closed by the server".to_owned();
                }
            }
            _ = keepalive.tick() => {
                // In subscribed mode PING answers with an array, hence `Value`.
                match tokio::time::timeout(CONNECT_TIMEOUT, sink.ping::<redis::Value>()).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => return format!("keep-alive PING failed: {e}"),
                    Err(_) => return "no answer to a keep-alive PING".to_owned(),
                }
            }
        }
    }
}

async fn subscribe(
    conns: &RedisLink,
    channels: &[String],
) -> Result<redis::aio::PubSub, RedisError> {
    let mut pubsub = conns.pubsub().await?;
    pubsub.subscribe(channels).await?;
    Ok(pubsub)
}

async fn queue_task(shared: Rc<Shared>, conns: Rc<RedisLink>, processing: String) {
    let mut backoff = Backoff::new(shared.config.reconnect_max);
    let mut link = Link::Starting;
    // Outlives the connection: a command handed over whose LREM got no
    // answer is still in the processing list if Redis never ran the LREM.
    let mut unconfirmed = None;
    loop {
        let served =
            serve_queue(&shared, &conns, &processing, &mut link, &mut backoff, &mut unconfirmed);
        if let Err(e) = served.await {
            if link.failed() {
                tracing::warn!("redis list consumer lost ({e}); retrying with back-off");
            } else {
                tracing::debug!("redis list consumer still unavailable: {e}");
            }
        }
        tokio::time::sleep(backoff.next_delay(random())).await;
    }
}

/// Serves the Incus list on one connection until it fails.
///
/// `unconfirmed` is the command handed to the router whose `LREM` has not
/// been answered. Redis may have lost the connection (or died) before
/// running it; the command must then leave the processing list before the
/// rest is moved back to the queue, or it would be delivered twice.
async fn serve_queue(
    shared: &Shared,
    conns: &RedisLink,
    processing: &str,
    link: &mut Link,
    backoff: &mut Backoff,
    unconfirmed: &mut Option<Vec<u8>>,
) -> Result<(), RedisError> {
    let queue = shared.config.incus_queue.as_str();
    // No response timeout: BLMOVE legitimately answers only after
    // BLOCK_SECS, and redis-rs's default (500 ms) would fail it and leave
    // the connection blocked. A hung connection is caught below instead.
    let mut conn = conns.command(None).await?;
    if let Some(payload) = unconfirmed.as_deref() {
        let _: i64 =
            redis::cmd("LREM").arg(processing).arg(1).arg(payload).query_async(&mut conn).await?;
        *unconfirmed = None;
    }
    let mut requeued = 0u64;
    loop {
        // Newest first onto the head, so the queue keeps the original order.
        let moved: Option<Vec<u8>> = redis::cmd("LMOVE")
            .arg(processing)
            .arg(queue)
            .arg("RIGHT")
            .arg("LEFT")
            .query_async(&mut conn)
            .await?;
        if moved.is_none() {
            break;
        }
        requeued += 1;
    }
    if link.connected() {
        tracing::info!(queue, processing, "redis list consumer connected");
    }
    backoff.reset();
    if requeued > 0 {
        tracing::warn!(
            requeued,
            processing,
            "re-queued incus commands that were taken but not finished"
        );
    }
    let hung = Duration::from_secs(BLOCK_SECS + 10);
    loop {
        // Unlike pub/sub, the list keeps what is not taken yet: leave it
        // there while a shard or the push thread is behind rather than shed it.
        while any_backlog(&shared.links.borrow().outlets)
            || shared.push.as_ref().is_some_and(PushHandle::is_full)
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let mut blmove = redis::cmd("BLMOVE");
        blmove.arg(queue).arg(processing).arg("LEFT").arg("RIGHT").arg(BLOCK_SECS);
        let taken = tokio::time::timeout(hung, blmove.query_async::<Option<Vec<u8>>>(&mut conn))
            .await
            .map_err(|_| timed_out("waiting for BLMOVE"))??;
        let Some(payload) = taken else { continue };
        shared.on_incus(&mut payload.clone(), IncusSource::Queue);
        shared.flush();
        let payload = unconfirmed.insert(payload);
        let _: i64 = redis::cmd("LREM")
            .arg(processing)
            .arg(1)
            .arg(&payload[..])
            .query_async(&mut conn)
            .await?;
        *unconfirmed = None;
    }
}

/// Queues an Incus message for shard `to` unless that shard is already
/// [`MAX_SHARD_BACKLOG`] behind, as Pusher events are; false when dropped.
fn push_incus(outlets: &mut [Outlet], to: usize, msg: IncusMsg) -> bool {
    match outlets.get_mut(to) {
        Some(outlet) if outlet.backlog() > MAX_SHARD_BACKLOG => false,
        Some(outlet) => {
            outlet.push(ShardMsg::Incus(msg));
            true
        }
        None => true,
    }
}

/// Whether messages wait in an outlet because a shard's ring is full.
fn any_backlog(outlets: &[Outlet]) -> bool {
    outlets.iter().any(|o| o.backlog() > 0)
}

/// Updates written to Redis per round trip.
const UPLINK_BATCH: usize = 1024;
/// How often the long-poll kill switch key is read (Incus: every 5 s).
const KILLSWITCH_EVERY: Duration = Duration::from_secs(5);

/// Writes what the shards queued for Redis, in batches, one pipeline (a
/// MULTI/EXEC) per batch. While Redis is away the updates are dropped and
/// counted: the shards never wait, and nothing queues without bound.
async fn uplink_task(
    shared: Rc<Shared>,
    conns: Rc<RedisLink>,
    mut inbox: UplinkInbox,
    writer: Rc<RefCell<IncusWriter>>,
) {
    let mut conn = None;
    let mut link = Link::Starting;
    let mut dropped = 0u64;
    loop {
        inbox.ready().await;
        let mut updates = Vec::new();
        inbox.drain(UPLINK_BATCH, |update| updates.push(update));
        // The socket counts follow every update whether or not Redis takes
        // it, so an outage cannot leave a user counted here for good.
        let mut pipe = redis::pipe();
        // Redis Cluster runs a MULTI on one slot only, and these keys are
        // many; there each command goes on its own (see `redis_link::Conn`).
        if !conns.is_cluster() {
            pipe.atomic();
        }
        let n = updates.len();
        let now = unix_now();
        {
            let mut writer = writer.borrow_mut();
            for update in updates {
                writer.add(&mut pipe, update, &shared.config.incus_channel, now);
            }
        }
        if conn.is_none() {
            match conns.command(Some(CONNECT_TIMEOUT)).await {
                Ok(c) => {
                    if link.connected() {
                        tracing::info!("redis connection for incus updates ready");
                    }
                    conn = Some(c);
                }
                Err(e) => {
                    dropped += n as u64;
                    if link.failed() {
                        tracing::warn!(dropped, "redis unavailable for incus updates ({e})");
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            }
        }
        let Some(c) = conn.as_mut() else { continue };
        if let Err(e) = pipe.query_async::<()>(c).await {
            dropped += n as u64;
            conn = None;
            if link.failed() {
                tracing::warn!(dropped, "writing incus updates to redis failed ({e})");
            }
        }
    }
}

/// A stopping node's sockets close after its bridge is gone, so their
/// online marks are removed here, best effort, within `budget`.
async fn forget_online(conns: &RedisLink, writer: &RefCell<IncusWriter>, budget: Duration) {
    let mut pipe = redis::pipe();
    writer.borrow().forget_online(&mut pipe);
    if pipe.cmd_iter().next().is_none() {
        return;
    }
    let write = async {
        let mut conn = conns.command(Some(budget)).await?;
        pipe.query_async::<()>(&mut conn).await
    };
    match tokio::time::timeout(budget, write).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!("removing this node's online marks failed ({e})"),
        Err(_) => tracing::warn!("removing this node's online marks timed out"),
    }
}

/// Pending `pushormessage` presence reads beyond which new ones are dropped.
const MAX_PRESENCE_CHECKS: usize = 10_000;

/// Answers `pushormessage` from Redis (spec §9.3). A command from the
/// list reached this node only, so for an active user its WebSocket part is
/// published on the Incus channel as a `message` and every node, this one
/// included, delivers it to the user's sockets there; one from the channel
/// is decided by every node, each for its own sockets. The user is active if
/// `ClientPresence:<uid>` has a member scored within the presence window,
/// written by any node, as in Incus; and, with
/// `incus.pushormessage_connected: true` (not the default), also if any node marked
/// them online within [`ONLINE_TTL_SECS`] (a socket or long-poll session
/// open there). Active: the WebSocket part goes to every shard as a message
/// to the user. Not active, or Redis cannot say: the push part goes to the
/// push thread.
async fn presence_task(shared: Rc<Shared>, conns: Rc<RedisLink>, window: u64, connected: bool) {
    let mut conn = None;
    loop {
        shared.checks_wanted.notified().await;
        loop {
            let Some(check) = shared.checks.borrow_mut().pop_front() else { break };
            if conn.is_none() {
                conn = conns.command(Some(CONNECT_TIMEOUT)).await.ok();
            }
            let now = unix_now();
            let active = match conn.as_mut() {
                Some(c) => {
                    let mut pipe = redis::pipe();
                    pipe.cmd("ZRANGEBYSCORE")
                        .arg(format!("ClientPresence:{}", check.user))
                        .arg(now.saturating_sub(window))
                        .arg("+inf")
                        .arg("LIMIT")
                        .arg(0)
                        .arg(1);
                    if connected {
                        pipe.cmd("ZRANGEBYSCORE")
                            .arg(online_key(&check.user))
                            .arg(now.saturating_sub(ONLINE_TTL_SECS))
                            .arg("+inf")
                            .arg("LIMIT")
                            .arg(0)
                            .arg(1);
                    }
                    match pipe.query_async::<Vec<Vec<String>>>(c).await {
                        Ok(found) => found.iter().any(|members| !members.is_empty()),
                        Err(e) => {
                            conn = None;
                            crate::warn_throttled!(
                                bump(&shared.counts.presence_failed),
                                "incus pushormessage: reading presence failed ({e}); pushing"
                            );
                            false
                        }
                    }
                }
                None => false,
            };
            let PresenceCheck { user, page, websocket, republish, pushes } = check;
            if active && let (Some(json), Some(c)) = (&republish, conn.as_mut()) {
                let channel = shared.config.incus_channel.as_str();
                let published: Result<i64, RedisError> =
                    redis::cmd("PUBLISH").arg(channel).arg(json).query_async(c).await;
                match published {
                    Ok(_) => continue,
                    // Delivered here at least, as Incus would have.
                    Err(e) => {
                        conn = None;
                        crate::warn_throttled!(
                            bump(&shared.counts.presence_failed),
                            "incus pushormessage: publishing failed ({e})"
                        );
                    }
                }
            }
            match websocket.filter(|_| active) {
                Some(delivery) => {
                    let target = Target::User { user, page };
                    let shards = shared.links.borrow().outlets.len();
                    for to in 0..shards {
                        let msg = IncusMsg::Deliver {
                            target: target.clone(),
                            delivery: delivery.clone(),
                        };
                        if !push_incus(&mut shared.links.borrow_mut().outlets, to, msg) {
                            shared.shed_incus();
                        }
                    }
                    shared.flush();
                }
                None if pushes.is_empty() => {
                    tracing::debug!(%user, active, "incus pushormessage: nothing to deliver");
                }
                None => {
                    for decoded in pushes {
                        shared.dispatch_push(decoded, "pushormessage");
                    }
                }
            }
        }
    }
}

/// Reads the kill switch key every [`KILLSWITCH_EVERY`] and tells every
/// shard when it appears or goes (spec §5.6). On an error the last known
/// state stays, as in Incus.
async fn killswitch_task(shared: Rc<Shared>, conns: Rc<RedisLink>, key: String) {
    let mut conn = None;
    let mut on = false;
    loop {
        if conn.is_none() {
            conn = conns.command(Some(CONNECT_TIMEOUT)).await.ok();
        }
        if let Some(c) = conn.as_mut() {
            match redis::cmd("TTL").arg(&key).query_async::<i64>(c).await {
                Ok(ttl) => {
                    let now_on = ttl >= -1;
                    if now_on != on {
                        on = now_on;
                        shared
                            .links
                            .borrow_mut()
                            .broadcast(|| ShardMsg::Incus(IncusMsg::KillSwitch(on)));
                    }
                }
                Err(_) => conn = None,
            }
        }
        tokio::time::sleep(KILLSWITCH_EVERY).await;
    }
}

// The driver, like `runtime`, may read the clock; the parsers may not.
fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

// Same clock as the shards' `now`, so a cache TTL counts from the moment the
// bridge read the event.
fn mono_now() -> std::time::Instant {
    std::time::Instant::now()
}

fn timed_out(what: &str) -> RedisError {
    std::io::Error::new(std::io::ErrorKind::TimedOut, format!("redis timed out {what}")).into()
}

/// Jitter only; a failed OS source just means less spread.
fn random() -> u64 {
    getrandom::u64().unwrap_or_else(|_| u64::from(std::process::id()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::{rings, rings::RING_CAPACITY};

    #[test]
    fn the_processing_list_shares_the_queues_slot_on_a_cluster() {
        assert_eq!(processing_list("Incus_Queue", "h:1", false), "Incus_Queue:processing:h:1");
        assert_eq!(processing_list("Incus_Queue", "h:1", true), "{Incus_Queue}:processing:h:1");
        assert_eq!(processing_list("{q}x", "h:1", true), "{q}x:processing:h:1");
    }

    #[test]
    fn incus_messages_for_a_shard_that_is_behind_are_shed() {
        let (_shards, mut ext) = rings::build(2, 1);
        let outlets = &mut ext[0].outlets;
        assert!(!any_backlog(outlets));
        for _ in 0..RING_CAPACITY + 1 {
            assert!(push_incus(outlets, 0, IncusMsg::KillSwitch(true)));
        }
        assert!(any_backlog(outlets), "the list consumer pauses from the first message waiting");
        let mut shed = 0;
        for _ in 0..MAX_SHARD_BACKLOG + 10 {
            if !push_incus(outlets, 0, IncusMsg::KillSwitch(true)) {
                shed += 1;
            }
        }
        assert_eq!(outlets[0].backlog(), MAX_SHARD_BACKLOG + 1);
        assert_eq!(shed, 10);
        // The other shard keeps up and still gets everything.
        assert!(push_incus(outlets, 1, IncusMsg::KillSwitch(true)));
        assert_eq!(outlets[1].backlog(), 0);
    }
}
