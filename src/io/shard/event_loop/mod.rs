//! One shard's event loop: the body of the shard's pinned thread, which
//! owns every piece of the shard's state by value (its sockets, the Pusher
//! and Incus state machines, its rings, its timers) and moves them along in
//! turns. Nothing is shared, so nothing is behind a `RefCell` or a lock.
//!
//! # A turn, in priority order
//! 1. **Rings**: messages from other shards, the bridge and the control
//!    thread, at most [`MESH_BUDGET`] of them.
//! 2. **Sockets**: what the poller reports ready (at most its batch), plus
//!    the sockets a previous turn left with input unread; new connections
//!    are accepted here, [`ACCEPT_BATCH`] at a time per listener (with
//!    `server.defer_accept`, the default, each comes with its first bytes,
//!    read by the next turn without a sleep between). Input is acted on
//!    only once the rings have been read to the end after it was read
//!    (`catch_up_rings`).
//! 3. **Timers**: connection deadlines, the Pusher tick (1 s) and the
//!    Incus tick (250 ms).
//! 4. **Answers**: HTTP requests whose queries or long-polls completed.
//! 5. **Hand-offs**: messages for other shards into their rings (each
//!    woken once), cluster updates to the bridge, webhook events to the
//!    webhook thread, Incus bookkeeping to the bridge; none of them ever
//!    waits.
//! 6. **Writes**: HTTP answers first, then the sockets that gained frames,
//!    each with one vectored write, at most [`WRITE_BUDGET`] sockets a
//!    turn besides those answering what it read: a wide fan-out is
//!    written over several turns that read the sockets in between, so the
//!    events that arrive meanwhile share one system call per socket with
//!    it, while answers are not held back. Then a second hand-off, of what
//!    the writes caused (closes).
//!
//! **Causal order across shards**: a client that had an answer from one
//! shard and then asks another must find the first request's effects
//! there. So every message a request caused is in the rings before its
//! answer is written (step 5 comes before step 6; a request served while
//! writing is handed off before the round that writes its answer), and
//! every request is acted on after the rings were read to the end
//! following its read. Without the second half, a publish read after the
//! rings could reach this shard's subscribers before an event another
//! shard had already confirmed to the same publisher.
//!
//! A turn that used a whole budget goes round again at once; otherwise the
//! loop sleeps in `epoll_wait` on the poller's set until a socket is ready,
//! a ring rings (the doorbell's `eventfd` is in the set) or the next
//! deadline comes, and the events that wait returned start the next turn.
//!
//! Why not a runtime's wait: until 2026-12 the loop was the one task of a
//! monoio runtime, which slept in `io_uring_enter` on an io_uring poll of
//! the set and was woken across threads through monoio's waker. Each wake
//! then cost the poll's re-arm, the waker's hand-off and a second,
//! non-blocking `epoll_wait` to learn what was ready; a connect, which
//! takes about three turns on a quiet shard, paid it three times. Sleeping
//! in the set itself took server CPU to connect 19,000 from a median of
//! 880 to 710 ms with two shards (eight alternated pairs, seven lower);
//! sparse traffic, whose cost is its sends, did not move.

mod console;
mod http;
mod lifecycle;
mod xhr;

use std::{
    io,
    net::TcpListener as StdListener,
    os::fd::{AsRawFd, RawFd},
    sync::Arc,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use bytes::{Bytes, BytesMut};
use rustc_hash::FxHashMap;
use slab::Slab;

use super::{
    ShardInit,
    conn::{Admitted, Conn, KeyMarks, Phase, SpareInBufs, Written, peek_gone},
    listener,
    poller::{Event, Poller},
    send_ring::SendRing,
    sock::{self, Link},
    timers::Timers,
};
use crate::{
    config::Config,
    core::admission::Admission,
    core::{
        Apps, CloseCode, Tick,
        counters::{Metrics, ShardCounters},
    },
    io::{
        bridge::{cluster::ClusterOutlet, uplink::Uplink},
        metrics::prometheus,
        rings::ShardLinks,
        webhooks::{HookOutlet, Outgoing},
    },
    proto::{
        console::{ViewerKey, Viewers, Watch},
        http::{
            request::{self, Method, Request},
            response::{self, Response},
        },
        incus::{self, IncusShard, http::LongPoll},
        msg::ShardMsg,
        pusher::{
            handshake, messages,
            shard::{Answer, Shard},
            xhr::XhrSessions,
        },
        rest::{
            api::{self, Call, Handled},
            error::ApiError,
        },
        ws::{
            codec::{self, Decoder, WsEvent},
            handshake as ws_handshake,
        },
    },
};

/// Ring messages handled in one turn.
const MESH_BUDGET: usize = 4096;

/// Passes over the rings a turn makes at most to settle them before its
/// publishes cross ([`ShardLoop::settle_rings`]).
const SETTLE_PASSES: usize = 4;
/// Connections accepted per listener in one turn.
const ACCEPT_BATCH: usize = 256;
/// Poller events handled in one turn.
const EVENT_BATCH: usize = 1024;
/// Size of the read buffer all sockets of a shard share.
pub const SCRATCH_BYTES: usize = 64 * 1024;
/// How long a closing connection may take to send its own close frame and
/// FIN after ours, before the socket is dropped anyway.
const CLOSE_LINGER: Duration = Duration::from_secs(2);
/// Extra wait, beyond `connection_timeout`, before a poll whose owner
/// never answered gives up on its own: only a wedged shard gets here.
const OWNER_GRACE: Duration = Duration::from_secs(10);
/// The Pusher clock: pings, pong timeouts, throttled counts, webhook delays.
const TICK: Duration = Duration::from_secs(1);
/// Connections a shard must have lost since its peak (and at least half of
/// them) before it asks the allocator to give memory back.
const TRIM_AFTER_CLOSES: usize = 1_000;
/// The Incus clock: poll timeouts, mailbox expiry, pings. More often than
/// the Pusher one, so a poll's 204 comes close to `connection_timeout`.
const INCUS_TICK: Duration = Duration::from_millis(250);
/// Messages waiting in this shard's outlets beyond which publishes are
/// refused with 503 and client traffic that would add to them is shed:
/// another shard is that far behind.
pub const MAX_MESH_BACKLOG: usize = 64 * 1024;
/// Requests one socket may have served in one turn.
const REQUESTS_PER_TURN: usize = 16;
/// Rounds of writes in one turn (see [`ShardLoop::write`]).
const WRITE_ROUNDS: usize = 4;
/// Sockets written in one turn, answers to what was read aside; the rest
/// are written in the next turns, after the rings and sockets have
/// been read again (see [`ShardLoop::write`]). Also the most sockets one
/// send-ring call takes. 16 since the send ring made a turn's writes one
/// system call: full-rate fan-out to 1,000 gained about 15 % over 64
/// (median of 3–5 interleaved runs each), to 10,000 it is the same.
pub(super) const WRITE_BUDGET: usize = 16;
/// Poller tokens at and above this belong to listeners.
const LISTENER_TOKEN: u64 = u64::MAX - 16;
/// The poller token of the rings' doorbell.
const BELL_TOKEN: u64 = u64::MAX;

/// A listening socket of the shard.
struct Listener {
    socket: StdListener,
    tls: bool,
    /// A batch ended before `EAGAIN`: more connections may be waiting.
    ready: bool,
}

/// The shard: its state machines, its sockets, its rings.
struct ShardLoop {
    /// How long a write may wait for a peer that takes nothing before the
    /// connection is closed (`server.write_timeout_secs`).
    write_timeout: Duration,
    id: usize,
    /// Number of shards.
    shards: usize,
    core: Shard,
    /// pusher-js's HTTP-transport sessions this shard owns.
    xhr: XhrSessions,
    incus: IncusShard,
    config: Arc<Config>,
    apps: Arc<Apps>,
    admission: Arc<Admission>,
    counters: Arc<ShardCounters>,
    metrics: Arc<Metrics>,
    tls: Option<Arc<rustls::ServerConfig>>,
    conns: Slab<Conn>,
    next_generation: u32,
    poller: Poller,
    listeners: Vec<Listener>,
    scratch: Box<[u8]>,
    /// Input blocks the connections gave back, for the next reads.
    spare_inbufs: SpareInBufs,
    links: ShardLinks,
    hooks: Option<HookOutlet>,
    uplink: Option<Uplink>,
    /// In a cluster: this shard's reliable ring to the bridge.
    cluster: Option<ClusterOutlet>,
    timers: Timers,
    /// Sockets whose input a turn left unread.
    carry: Vec<(u32, u32)>,
    /// Sockets with HTTP bytes to write.
    writes: Vec<u32>,
    /// Sockets listed for writing that a turn's budget left for the next.
    dirty: Vec<u32>,
    /// The sockets a write round writes now (scratch, kept for its buffer).
    batch: Vec<u32>,
    /// Sockets read since they were last written: what they have to write
    /// answers their own request, and skips the write budget.
    answer_due: KeyMarks,
    /// Scratch lists, kept to reuse their buffers.
    round: Vec<u32>,
    spare: Vec<u32>,
    events: Vec<Event>,
    completed: Vec<u64>,
    /// Which socket waits for which query or poll.
    by_query: FxHashMap<u64, u32>,
    by_poll: FxHashMap<u64, u32>,
    draining: Option<Instant>,
    next_tick: Instant,
    next_incus_tick: Instant,
    /// Messages waiting in the outlets, as of the last hand-off.
    backlog: usize,
    /// A descriptor held only to be closed when `accept` says `EMFILE`.
    spare_fd: Option<std::fs::File>,
    /// Most connections held since the allocator last gave memory back.
    conns_peak: usize,
    /// The debug console's viewers on this shard.
    viewers: Viewers,
    /// The node's console viewers, per shard and app.
    watch: Arc<Watch>,
    /// Channel lists the console asked for, by query id, with their app.
    console_queries: FxHashMap<u64, crate::core::AppIdx>,
    /// Sockets other shards handed over, taken from the rings and not yet
    /// served ([`ShardLoop::take_handovers`]).
    adopted: Vec<crate::proto::msg::Adoption>,
    /// The control thread said to shut down; acted on with the adoptions.
    shutdown_asked: bool,
    /// Sends a turn's writes in one system call; `None` where io_uring is
    /// unavailable or the epoll driver was asked for.
    send_ring: Option<SendRing>,
}

/// The shard thread's body once it is pinned: serves until told to stop
/// and drained, or until the grace period ends.
pub(super) fn run(init: ShardInit) -> io::Result<()> {
    let mut shard = ShardLoop::new(init)?;
    let doorbell = shard.links.inlets.bell();
    loop {
        let now = Instant::now();
        let busy = shard.turn(now);
        if shard.done(now) {
            break;
        }
        if busy {
            // A whole budget was used: go round again at once (the loop
            // reads its sockets and rings itself each turn, so there is
            // nothing to yield to).
            continue;
        }
        let wake = shard.next_wake(now);
        // Parked before the rings are looked at, so that a message pushed
        // after the look finds the shard parked and writes its eventfd.
        doorbell.park();
        if shard.links.inlets.is_empty() {
            shard.poller.wait(wake.saturating_duration_since(Instant::now()));
        }
        doorbell.unpark();
    }
    tracing::info!(shard = shard.id, left = shard.core.connections(), "shard stopped");
    Ok(())
}

/// A descriptor to give up when the process runs out of them.
fn spare_descriptor() -> Option<std::fs::File> {
    std::fs::File::open("/dev/null").ok()
}

fn token(key: u32, generation: u32) -> u64 {
    (u64::from(generation) << 32) | u64::from(key)
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

impl ShardLoop {
    fn new(init: ShardInit) -> io::Result<Self> {
        let server = &init.config.server;
        let settings = crate::proto::pusher::shard::Settings {
            activity_timeout: server.activity_timeout,
            pong_timeout: server.pong_timeout,
            max_outbox_bytes: server.max_outbox_bytes,
            cluster: init.cluster.is_some(),
        };
        let incus_config = &init.config.incus;
        let incus_settings = incus::state::Settings {
            client_broadcasts: incus_config.client_broadcasts,
            lp_timeout: incus_config.connection_timeout,
            mailbox_messages: incus_config.mailbox_messages,
            mailbox_ttl: incus_config.mailbox_ttl,
            max_outbox_bytes: server.max_outbox_bytes,
            ping_interval: incus_config.ping_interval,
            auth_timeout: incus_config.auth_timeout,
            redis: init.uplink.is_some(),
            commands_per_sec: u32::try_from(incus_config.client_commands_per_sec)
                .unwrap_or(u32::MAX),
            commands_burst: u32::try_from(incus_config.client_commands_burst).unwrap_or(u32::MAX),
            max_sessions: incus_config.max_lp_sessions,
            online_every: (init.uplink.is_some() && incus_config.push.connected_is_active)
                .then_some(crate::io::bridge::ONLINE_REFRESH),
        };
        let counters = init.metrics.shard(init.id);
        let mut core = Shard::new(init.id, init.shards, Arc::clone(&init.apps), settings);
        core.set_counters(Arc::clone(&counters));
        core.set_watch(Arc::clone(&init.watch));
        let viewers = Viewers::new(init.shards, init.apps.len(), server.max_outbox_bytes);
        let mut incus = IncusShard::new(init.id, init.shards, incus_settings);
        incus.set_counters(Arc::clone(&counters));
        let poller = Poller::new(EVENT_BATCH)?;
        let mut listeners = vec![Listener { socket: init.plain, tls: false, ready: false }];
        if let Some(secure) = init.secure {
            listeners.push(Listener { socket: secure, tls: true, ready: false });
        }
        for (i, l) in listeners.iter().enumerate() {
            l.socket.set_nonblocking(true)?;
            poller.add(l.socket.as_raw_fd(), LISTENER_TOKEN + i as u64)?;
        }
        poller.add(init.links.inlets.doorbell().wake_fd()?, BELL_TOKEN)?;
        let now = Instant::now();
        Ok(Self {
            write_timeout: init.config.server.write_timeout,
            id: init.id,
            core,
            incus,
            config: init.config,
            apps: init.apps,
            admission: init.admission,
            counters,
            metrics: init.metrics,
            tls: init.tls,
            conns: Slab::new(),
            next_generation: 0,
            poller,
            listeners,
            scratch: vec![0; SCRATCH_BYTES].into_boxed_slice(),
            spare_inbufs: SpareInBufs::default(),
            links: init.links,
            hooks: init.hooks,
            uplink: init.uplink,
            cluster: init.cluster,
            timers: Timers::default(),
            carry: Vec::new(),
            writes: Vec::new(),
            dirty: Vec::new(),
            batch: Vec::new(),
            answer_due: KeyMarks::default(),
            round: Vec::new(),
            spare: Vec::new(),
            events: Vec::with_capacity(EVENT_BATCH),
            completed: Vec::new(),
            by_query: FxHashMap::default(),
            by_poll: FxHashMap::default(),
            draining: None,
            next_tick: now + TICK,
            next_incus_tick: now + INCUS_TICK,
            backlog: 0,
            spare_fd: spare_descriptor(),
            conns_peak: 0,
            viewers,
            watch: init.watch,
            console_queries: FxHashMap::default(),
            adopted: Vec::new(),
            shutdown_asked: false,
            shards: init.shards,
            xhr: XhrSessions::default(),
            send_ring: match init.driver {
                super::IoDriver::Auto => SendRing::new(WRITE_BUDGET)
                    .inspect(|_| tracing::info!(shard = init.id, "io driver: io_uring"))
                    .inspect_err(|e| {
                        tracing::info!(
                            shard = init.id,
                            "io driver: epoll (io_uring unavailable: {e})"
                        );
                    })
                    .ok(),
                super::IoDriver::Epoll => {
                    tracing::info!(
                        shard = init.id,
                        "io driver: epoll (chosen by STAPES_IO_DRIVER)"
                    );
                    None
                }
            },
        })
    }

    /// One turn; returns true when some budget ran out, so the next turn
    /// should start at once.
    fn turn(&mut self, now: Instant) -> bool {
        // A shard behind its publishers leaves its rings unread until its
        // writes catch up, so that what other shards send it piles up in
        // their outlets, whose backlog has them refuse publishes (503)
        // rather than this shard closing subscribers that keep up.
        let mut busy = !self.core.behind() && self.drain_rings(now, false).0 == MESH_BUDGET;
        self.take_handovers(now);
        busy |= self.poll_sockets(now);
        self.run_timers(now);
        self.answer_requests(now);
        // Handed over before the replies go out, so that a client that
        // reads a reply and then asks another shard finds its first
        // request's messages already in the rings (an HTTP publisher's
        // events keep their order; that shard reads its rings after the
        // request, see `catch_up_rings`). Writing can close sockets, whose
        // updates go in the second hand-off.
        self.settle_and_hand_off(now);
        let writing = self.write(now);
        if !writing {
            self.core.caught_up();
        }
        busy |= writing;
        self.hand_off(false);
        // Taken in this turn's later reads of the rings: the next turn
        // hands off what serving them publishes before it answers them.
        busy | self.take_handovers(now)
    }

    /// Hands this turn's messages for other threads over, leaving out the
    /// publishes other shards need not see when the rings settle first.
    fn settle_and_hand_off(&mut self, now: Instant) {
        let settled = self.core.crosses() && self.settle_rings(now);
        self.hand_off(settled);
    }

    /// Reads the rings after input was read and before it is handled.
    ///
    /// Input can be caused by a message already in the rings: a publisher
    /// that had its 200 from another shard, which put the event in the
    /// rings before answering, and then publishes here. Handled before that
    /// message, its publish would reach this shard's subscribers first. So
    /// the rings are read until they settle, after the read and before the
    /// input is acted on; whatever the input's sender saw happen had by
    /// then been put in them (or, held back in a full ring's overflow,
    /// keeps them from settling). When they do not settle, what the input
    /// would publish is refused (see [`Shard::set_unsettled`]). Every read
    /// of input to act on calls it (`read_input`), as does an adopted
    /// socket, whose input another shard read.
    fn catch_up_rings(&mut self, now: Instant) {
        // A shard behind its publishers leaves its rings unread (see
        // `turn`) and refuses publishes anyway.
        let settled = !self.core.behind() && self.settle_rings(now);
        self.core.set_unsettled(!settled);
    }

    /// Before this turn's publishes go to other shards: reads the rings
    /// again until a pass finds them empty with nothing held back, so that
    /// every shard's word on which channels it holds that could matter to
    /// them is in (see [`crate::proto::index::Interest`]). False when that
    /// takes too long or the shard is leaving its rings unread; the
    /// publishes then go to every shard.
    fn settle_rings(&mut self, now: Instant) -> bool {
        if self.core.behind() {
            return false;
        }
        // A pass that took messages may have made more publishes, whose
        // causes came in after it looked: look again.
        for _ in 0..SETTLE_PASSES {
            let (taken, settled) = self.drain_rings(now, true);
            if taken == 0 {
                return settled;
            }
        }
        false
    }

    /// Serves the sockets other shards handed over and acts on a shutdown,
    /// both taken from the rings: not where the rings are read, which can
    /// be in the middle of handling a socket's input (`catch_up_rings`),
    /// since serving an adopted socket handles its input too. True when
    /// there was any.
    fn take_handovers(&mut self, now: Instant) -> bool {
        if self.adopted.is_empty() && !self.shutdown_asked {
            return false;
        }
        for socket in std::mem::take(&mut self.adopted) {
            self.adopt(socket, now);
        }
        if std::mem::take(&mut self.shutdown_asked) {
            self.begin_drain(now);
        }
        true
    }

    /// Step 1: Messages from the rings: how many, and, when `settling`,
    /// whether the pass found them settled ([`crate::io::rings::Inlets::settled_pass`]).
    fn drain_rings(&mut self, now: Instant, settling: bool) -> (usize, bool) {
        if !settling && self.links.inlets.is_empty() {
            return (0, false);
        }
        // Webhook delays and count throttles these schedule count from now.
        self.core.set_now(now);
        let (core, incus, adopted, viewers, shutdown) = (
            &mut self.core,
            &mut self.incus,
            &mut self.adopted,
            &mut self.viewers,
            &mut self.shutdown_asked,
        );
        let handle = |msg| match msg {
            ShardMsg::Shutdown => *shutdown = true,
            ShardMsg::Adopt(socket) => adopted.push(socket),
            ShardMsg::Incus(msg) => incus.handle_mesh(msg, now),
            ShardMsg::Console { app, from, seq, frame } => {
                viewers.deliver(app, usize::from(from), seq, &frame)
            }
            msg => core.handle_mesh(msg),
        };
        let (taken, settled) = if settling {
            self.links.inlets.settled_pass(MESH_BUDGET, handle)
        } else {
            (self.links.inlets.drain(MESH_BUDGET, handle), false)
        };
        (taken, settled)
    }

    /// Step 2: Ready sockets and new connections.
    fn poll_sockets(&mut self, now: Instant) -> bool {
        let mut events = std::mem::take(&mut self.events);
        events.clear();
        let polled = match self.poller.poll(|e| events.push(e)) {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!(shard = self.id, "poller failed: {e}");
                0
            }
        };
        let carried = std::mem::take(&mut self.carry);
        for &Event { token, readable, writable, closed } in &events {
            if token == BELL_TOKEN {
                // Only a wake-up: the rings are read at the start of each turn.
                continue;
            }
            if token >= LISTENER_TOKEN {
                if let Some(l) = self.listeners.get_mut((token - LISTENER_TOKEN) as usize) {
                    l.ready = true;
                }
                continue;
            }
            let (key, generation) = (token as u32, (token >> 32) as u32);
            let Some(conn) = self.conns.get_mut(key as usize) else { continue };
            if conn.generation != generation {
                continue;
            }
            if writable && conn.write_blocked {
                conn.write_blocked = false;
                if let Phase::Pusher { key: ck, .. } = conn.phase
                    && let Some(outbox) = self.core.outbox(ck)
                {
                    outbox.set_writer_blocked(false);
                }
                self.writes.push(key);
            }
            conn.peer_closed |= closed;
            if readable {
                conn.readable = true;
                self.on_input(key, now);
            }
        }
        self.events = events;
        for (key, generation) in carried {
            if self
                .conns
                .get(key as usize)
                .is_some_and(|c| c.generation == generation && c.readable)
            {
                self.on_input(key, now);
            }
        }
        let mut busy = polled == self.poller.batch() || !self.carry.is_empty();
        for i in 0..self.listeners.len() {
            if self.listeners[i].ready && self.draining.is_none() {
                busy |= self.accept(i, now);
            }
        }
        busy
    }

    /// Accepts up to [`ACCEPT_BATCH`] connections; true when more may wait.
    fn accept(&mut self, index: usize, now: Instant) -> bool {
        let fd = self.listeners[index].socket.as_raw_fd();
        let tls = self.listeners[index].tls;
        for _ in 0..ACCEPT_BATCH {
            match listener::accept(fd) {
                Ok(stream) => self.open(stream, tls, now),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.listeners[index].ready = false;
                    return false;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE)) => {
                    // Out of descriptors despite the budget (another part
                    // of the process took them): free the spare one to
                    // accept and refuse a client, rather than leave the
                    // backlog to time out.
                    self.refuse_with_spare(fd);
                    return false;
                }
                Err(e) => {
                    // ENOBUFS and the like: try again next turn.
                    tracing::warn!(shard = self.id, "accept failed: {e}");
                    return false;
                }
            }
        }
        true
    }

    fn open(&mut self, stream: std::net::TcpStream, tls: bool, now: Instant) {
        if !self.admission.admit_socket() {
            self.refuse(&stream);
            return;
        }
        let link = match (&self.tls, tls) {
            (Some(config), true) => match Link::tls(config) {
                Ok(link) => link,
                Err(e) => {
                    tracing::warn!("cannot start TLS session: {e}");
                    self.admission.release_socket();
                    return;
                }
            },
            _ => Link::Plain,
        };
        self.next_generation = self.next_generation.wrapping_add(1);
        let generation = self.next_generation;
        let entry = self.conns.vacant_entry();
        let key = entry.key() as u32;
        if let Err(e) = self.poller.add(stream.as_raw_fd(), token(key, generation)) {
            tracing::warn!("cannot watch a new connection: {e}");
            self.admission.release_socket();
            return;
        }
        entry.insert(Conn::new(stream, generation, link));
        let idle = self.config.server.http_idle_timeout;
        self.set_phase_deadline(key, Some(now + idle));
        // Not read in this turn even when the deferred accept brought its
        // request: its readiness starts the next turn without a sleep, and
        // reading it here saved nothing measurable (server CPU to connect
        // 19,000 with two shards 340–350 against 340–360 ms, four
        // alternated pairs; with one, 310–340 against 300–330 ms).
    }

    /// Answers a connection the node has no room for with a 503 and closes
    /// it: a client that is refused at once can go elsewhere, one left in
    /// the backlog waits for its own timeout. A TLS client sees a closed
    /// connection (no handshake is started for it).
    fn refuse(&mut self, stream: &std::net::TcpStream) {
        self.counters.refused.inc();
        crate::warn_throttled!(
            self.counters.refused.get(),
            shard = self.id,
            "no room for another connection; refused with 503"
        );
        let reply = response::text(503, "Over capacity", false);
        // Best effort on a fresh socket, whose buffer takes this at once.
        let _ = sock::writev(stream.as_raw_fd(), std::iter::once(&reply));
        // A deferred accept brings the request with the connection: closing
        // with it unread would send a reset, which can reach the client
        // before it has read the 503. A few reads at most: a client that
        // keeps sending is not worth the shard's time.
        let mut stream = stream;
        for _ in 0..4 {
            if !matches!(std::io::Read::read(&mut stream, &mut self.scratch), Ok(1..)) {
                break;
            }
        }
    }

    /// `accept` failed for want of descriptors: the spare one makes room to
    /// take one client off the backlog and refuse it.
    fn refuse_with_spare(&mut self, listener: RawFd) {
        self.spare_fd = None;
        if let Ok(stream) = listener::accept(listener) {
            self.refuse(&stream);
        }
        self.spare_fd = spare_descriptor();
    }

    /// Reads what the socket has into its input buffer, then catches up
    /// with the rings before that input is acted on (`catch_up_rings`);
    /// true at end of file.
    fn read_input(&mut self, key: u32, now: Instant) -> bool {
        let Some(conn) = self.conns.get_mut(key as usize) else { return true };
        let eof = conn.read_some(&mut self.scratch, &mut self.spare_inbufs);
        self.answer_due.set(key);
        self.catch_up_rings(now);
        eof
    }

    /// A socket has input (or its peer left).
    fn on_input(&mut self, key: u32, now: Instant) {
        let Some(conn) = self.conns.get_mut(key as usize) else { return };
        match &conn.phase {
            Phase::Http => {
                if conn.has_out() {
                    // Answer the request before reading the next one: a
                    // client that sends without reading gets no further.
                    return;
                }
                if self.read_input(key, now) {
                    self.close(key, now);
                    return;
                }
                self.serve_http(key, now);
            }
            Phase::Api { .. } | Phase::Finishing => {}
            Phase::Xhr { .. } => {
                // As a long-poll: a client that gave up its request (pusher-js
                // aborts it to open the next) is noticed while it waits.
                if peek_gone(conn.fd()) == Some(true) {
                    self.close(key, now);
                }
            }
            Phase::Poll { id, .. } => {
                let id = *id;
                // A client that closes its poll (incusjs does when its
                // WebSocket opens) is noticed while the poll waits, and the
                // poll is withdrawn; data (a pipelined request, TLS records)
                // waits for the answer.
                if peek_gone(conn.fd()) == Some(true) {
                    self.incus.cancel_poll(id, now);
                    self.close(key, now);
                }
            }
            Phase::Pusher { .. } | Phase::Incus { .. } | Phase::Console { .. } => {
                let eof = self.read_input(key, now);
                self.decode_frames(key, now);
                if eof {
                    self.close(key, now);
                }
            }
            Phase::Lingering => {
                let eof = conn.read_some(&mut self.scratch, &mut self.spare_inbufs);
                conn.inbuf.clear();
                if eof {
                    self.close(key, now);
                }
            }
        }
        if let Some(conn) = self.conns.get(key as usize)
            && conn.readable
            && matches!(
                conn.phase,
                Phase::Http
                    | Phase::Pusher { .. }
                    | Phase::Incus { .. }
                    | Phase::Console { .. }
                    | Phase::Lingering
            )
            && !conn.has_out()
        {
            self.carry.push((key, conn.generation));
        }
    }

    /// Handles every complete WebSocket frame in the socket's input.
    fn decode_frames(&mut self, key: u32, now: Instant) {
        let Some(conn) = self.conns.get_mut(key as usize) else { return };
        let now_unix = unix_now();
        let max = self.config.server.max_message_bytes;
        let used = match &mut conn.phase {
            Phase::Pusher { key: ck, decoder } => {
                let ck = *ck;
                let core = &mut self.core;
                let closing =
                    |core: &mut Shard| core.conn(ck).is_none_or(|c| c.outbox.closing().is_some());
                decode_all(decoder, &mut conn.inbuf, max, |event| {
                    if closing(core) {
                        return false;
                    }
                    match event {
                        Frame::Message(data) => core.handle_text(ck, data, now),
                        Frame::Ping(pong) => {
                            core.heard(ck, now);
                            core.send_raw(ck, pong);
                        }
                        Frame::Pong => core.heard(ck, now),
                        Frame::Close(code) => core.close(ck, code),
                    }
                    true
                })
            }
            Phase::Incus { key: sk, decoder } => {
                let sk = *sk;
                let incus = &mut self.incus;
                decode_all(decoder, &mut conn.inbuf, max, |event| {
                    if incus.closing(sk) {
                        return false;
                    }
                    match event {
                        Frame::Message(data) => incus.handle_frame(sk, data, now, now_unix),
                        Frame::Ping(pong) => incus.send_raw(sk, pong),
                        // Incus never tracked pongs.
                        Frame::Pong => {}
                        Frame::Close(code) => incus.close(sk, code),
                    }
                    true
                })
            }
            Phase::Console { key: vk, decoder } => {
                let vk = *vk;
                let mut texts = Vec::new();
                let mut close = None;
                let viewers = &mut self.viewers;
                let used = decode_all(decoder, &mut conn.inbuf, max, |event| {
                    if viewers.closing(vk) || close.is_some() {
                        return false;
                    }
                    match event {
                        Frame::Message(data) => texts.push(data.to_vec()),
                        Frame::Ping(pong) => viewers.send(vk, pong),
                        Frame::Pong => {}
                        Frame::Close(code) => close = Some(code),
                    }
                    true
                });
                conn.consumed(used, &mut self.spare_inbufs);
                for text in texts {
                    self.console_message(vk, &text, now);
                }
                if let Some(code) = close {
                    self.viewers.close(vk, code);
                }
                return;
            }
            _ => return,
        };
        conn.consumed(used, &mut self.spare_inbufs);
    }

    /// Step 3: Due deadlines and the protocol clocks.
    fn run_timers(&mut self, now: Instant) {
        while let Some((at, key, generation)) = self.timers.pop_due(now) {
            let Some(conn) = self.conns.get_mut(key as usize) else { continue };
            if conn.generation != generation || conn.armed != Some(Tick::of(at)) {
                continue;
            }
            conn.armed = None;
            self.timers.disarmed();
            if conn.write_blocked
                && conn
                    .stalled_since
                    .is_some_and(|since| since.after(self.write_timeout).reached(Tick::of(now)))
            {
                self.counters.write_timeouts.inc();
                crate::warn_throttled!(
                    self.counters.write_timeouts.get(),
                    shard = self.id,
                    "a peer took nothing for the write timeout; closed it"
                );
                self.close(key, now);
                continue;
            }
            if conn.phase_deadline.is_some_and(|d| d.reached(Tick::of(now))) {
                conn.phase_deadline = None;
                match &conn.phase {
                    Phase::Poll { id, keep_alive } => {
                        let (id, keep_alive) = (*id, *keep_alive);
                        self.by_poll.remove(&id);
                        self.incus.cancel_poll(id, now);
                        self.counters.incus.lp_disconnect.inc();
                        self.respond(key, &incus::http::answer(None), keep_alive, now);
                    }
                    // An idle or trickling request, or the end of a linger.
                    _ => self.close(key, now),
                }
                continue;
            }
            self.rearm(key);
        }
        if now >= self.next_tick {
            self.next_tick = now + TICK;
            self.core.handle_tick(now);
            self.console_tick();
            self.xhr_tick(now);
            self.trim_after_churn();
        }
        if now >= self.next_incus_tick {
            self.next_incus_tick = now + INCUS_TICK;
            self.incus.tick(now);
        }
    }

    /// Gives freed memory back to the kernel once connections have fallen
    /// well below their peak: glibc keeps what 20,000 closed connections
    /// freed in its arenas (31 MB held at rest, measured for #15), where
    /// the next peak may be hours away. At most once per fall, from the
    /// one-second tick, so its cost (a walk of the arenas) never meets a
    /// busy turn twice.
    fn trim_after_churn(&mut self) {
        let live = self.conns.len();
        self.conns_peak = self.conns_peak.max(live);
        if self.conns_peak - live < TRIM_AFTER_CLOSES || live > self.conns_peak / 2 {
            return;
        }
        self.conns_peak = live;
        self.conns.shrink_to_fit();
        self.core.shrink_to_fit();
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        // SAFETY: malloc_trim takes no pointer and may run on any thread.
        unsafe {
            libc::malloc_trim(0);
        }
    }

    /// Step 4: Requests whose answers came in.
    fn answer_requests(&mut self, now: Instant) {
        let mut completed = std::mem::take(&mut self.completed);
        self.core.take_completed(&mut completed);
        for id in completed.drain(..) {
            if self.console_stats(id) {
                continue;
            }
            let Some(key) = self.by_query.remove(&id) else { continue };
            let Some(conn) = self.conns.get_mut(key as usize) else { continue };
            let Phase::Api { pending, keep_alive } = &conn.phase else { continue };
            let keep_alive = *keep_alive;
            let Some(resp) = pending.finish(&mut self.core) else {
                // Waits for its other query; listed again when it completes.
                self.by_query.insert(id, key);
                continue;
            };
            for other in pending.ids() {
                self.by_query.remove(&other);
            }
            self.counters.http_response(resp.status);
            self.respond(key, &resp, keep_alive, now);
        }
        self.incus.take_completed(&mut completed);
        for id in completed.drain(..) {
            let Some(key) = self.by_poll.remove(&id) else {
                // Its request is gone: give the message back.
                self.incus.cancel_poll(id, now);
                continue;
            };
            let result = self.incus.take_poll(id);
            let Some(conn) = self.conns.get(key as usize) else { continue };
            let Phase::Poll { keep_alive, .. } = conn.phase else { continue };
            if matches!(result, Some(incus::PollResult::Message(_))) {
                self.counters.incus.write.inc();
            }
            self.counters.incus.lp_disconnect.inc();
            self.respond(key, &incus::http::answer(result), keep_alive, now);
        }
        self.completed = completed;
    }

    /// Step 6: Hands what the turn produced to the other threads;
    /// `settled` as [`Shard::drain_mesh_out`] takes it.
    fn hand_off(&mut self, settled: bool) {
        self.flush_console();
        let links = &mut self.links;
        self.core.drain_mesh_out(settled, |to, msg| {
            if let Some(outlet) = links.outlets[to].as_mut() {
                match msg {
                    // Needed by the target only before it next decides
                    // where a publish goes, and it looks then.
                    ShardMsg::Interest { .. } => outlet.push_quiet(msg),
                    msg => outlet.push(msg),
                }
            }
        });
        self.incus.drain_mesh_out(|to, msg| {
            if let Some(outlet) = links.outlets[to].as_mut() {
                outlet.push(ShardMsg::Incus(msg));
            }
        });
        let uplink = &mut self.uplink;
        self.incus.drain_redis_out(|update| {
            if let Some(uplink) = uplink.as_mut()
                && let Err(total) = uplink.push(update)
            {
                crate::warn_throttled!(
                    total,
                    "the redis bridge is behind; dropped incus updates for redis"
                );
            }
        });
        if let Some(uplink) = self.uplink.as_mut() {
            uplink.flush();
        }
        self.flush_events();
        let mut waiting = 0;
        if let Some(cluster) = self.cluster.as_mut() {
            // Never dropped: the shard refuses new work at its edges while
            // this backs up, as for its rings to other shards.
            // Stamped after the turn's work and before its replies are
            // written (see `turn`): what a client did after reading a reply
            // is stamped later, on whichever shard.
            let at = Instant::now();
            self.core.drain_cluster_out(|msg| cluster.push((at, msg)));
            cluster.flush();
            waiting += cluster.backlog();
        }
        for outlet in self.links.outlets.iter_mut().flatten() {
            outlet.flush();
            waiting += outlet.backlog();
        }
        self.backlog = waiting;
        self.incus.set_backlogged(waiting > MAX_MESH_BACKLOG);
        self.core.set_backlogged(waiting > MAX_MESH_BACKLOG);
    }

    /// Hands the webhook events the state raised to the webhook thread's
    /// ring, without waiting: a full ring drops them, counted and logged.
    fn flush_events(&mut self) {
        if !self.core.has_events() {
            return;
        }
        let Some(outlet) = self.hooks.as_mut() else {
            // No app has webhooks, so the state raises none; drop strays.
            self.core.drain_events(|_| {});
            return;
        };
        let time_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        let shard = self.id;
        let lost = &self.counters.webhooks_dropped;
        self.core.drain_events(|event| {
            if let Err(dropped) = outlet.push(Outgoing { time_ms, event }) {
                lost.inc();
                crate::warn_throttled!(dropped, shard, "webhook ring full; events dropped");
            }
        });
        outlet.flush();
    }

    /// Stops accepting and says goodbye to every client: 4200 to Pusher
    /// sockets, 1001 to Incus sockets, 503 to waiting polls.
    fn begin_drain(&mut self, now: Instant) {
        if self.draining.is_some() {
            return;
        }
        self.draining = Some(now + self.config.server.shutdown_grace);
        for l in self.listeners.drain(..) {
            self.poller.remove(l.socket.as_raw_fd());
        }
        self.core.close_all(CloseCode::RECONNECT);
        self.incus.drain();
        let viewers: Vec<ViewerKey> = self.viewers.each().map(|(vk, _, _)| vk).collect();
        for vk in viewers {
            self.viewers.close(vk, CloseCode::GOING_AWAY);
        }
    }

    /// Whether the shard is finished: drained of WebSockets, polls and
    /// lingering closes, or out of grace.
    fn done(&self, now: Instant) -> bool {
        let Some(deadline) = self.draining else { return false };
        if now >= deadline {
            return true;
        }
        self.conns.iter().all(|(_, c)| matches!(c.phase, Phase::Http) && !c.has_out())
    }

    /// When the loop must run again if nothing wakes it sooner.
    fn next_wake(&self, now: Instant) -> Instant {
        let mut wake = self.next_tick.min(self.next_incus_tick);
        if let Some(at) = self.timers.next() {
            wake = wake.min(at);
        }
        if let Some(deadline) = self.draining {
            wake = wake.min(deadline);
        }
        wake.max(now)
    }
}

/// A decoded WebSocket frame, as both protocols handle it.
enum Frame<'a> {
    Message(&'a [u8]),
    Ping(Bytes),
    Pong,
    Close(CloseCode),
}

/// Decodes and handles every complete frame at the front of `buf` while
/// `handle` says to go on; returns the bytes used. Input bad enough to end
/// the connection queues the close (1002, 1007 or 1009) and stops decoding.
fn decode_all(
    decoder: &mut Decoder,
    buf: &mut [u8],
    max_message_bytes: usize,
    mut handle: impl FnMut(Frame<'_>) -> bool,
) -> usize {
    let mut used = 0;
    loop {
        match decoder.decode(&mut buf[used..], max_message_bytes) {
            Ok(None) => return used,
            Ok(Some((event, n))) => {
                used += n;
                let go_on = match event {
                    WsEvent::Text(data) | WsEvent::Binary(data) => handle(Frame::Message(data)),
                    WsEvent::Ping(payload) => handle(Frame::Ping(codec::pong_frame(payload))),
                    WsEvent::Pong => handle(Frame::Pong),
                    WsEvent::Close(code) => {
                        // Echo the client's close (RFC 6455 §5.5.1).
                        let code = code.map_or(CloseCode::NORMAL, CloseCode);
                        let code = if code.is_close_code() { code } else { CloseCode::NORMAL };
                        handle(Frame::Close(code));
                        return used;
                    }
                };
                if !go_on {
                    // Closing: nothing after the close can be handled.
                    return buf.len();
                }
            }
            Err(e) => {
                handle(Frame::Close(CloseCode(e.close_code())));
                // Nothing after a framing error can be trusted; drop it.
                return buf.len();
            }
        }
    }
}

impl std::fmt::Debug for ShardLoop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShardLoop").field("id", &self.id).field("conns", &self.conns.len()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::{rings, shard::IoDriver};

    fn shard(id: usize, links: ShardLinks) -> ShardLoop {
        watched_shard(id, links, Arc::new(Watch::new(2, 1)))
    }

    fn watched_shard(id: usize, links: ShardLinks, watch: Arc<Watch>) -> ShardLoop {
        let config =
            Arc::new(crate::config::embedded_default(&Default::default()).expect("default config"));
        let apps = Arc::new(Apps::new(config.apps.clone()));
        let plain = listener::reuseport("127.0.0.1:0".parse().expect("addr"), false).expect("bind");
        ShardLoop::new(ShardInit {
            id,
            shards: 2,
            cpu: None,
            admission: Arc::new(Admission::new(&apps, 100, 100)),
            metrics: Arc::new(Metrics::new(vec!["1".into()], 2)),
            apps,
            config,
            tls: None,
            plain,
            secure: None,
            links,
            uplink: None,
            driver: IoDriver::Auto,
            hooks: None,
            cluster: None,
            watch,
        })
        .expect("shard")
    }

    /// Two shards whose rings to each other are full at once still both
    /// make progress: each turn drains its own rings before it offers the
    /// other shard more, and never waits for room (the earlier runtime
    /// slept in a loop on a full ring without draining its own).
    #[test]
    fn shards_backlogged_toward_each_other_both_drain() {
        let (links, mut control) = rings::build_with_capacity(2, 1, 8);
        let mut shards: Vec<ShardLoop> =
            links.into_iter().enumerate().map(|(id, l)| shard(id, l)).collect();
        let control = &mut control[0];
        // Each query's answer goes to the other shard: 500 each way.
        for id in 0..500 {
            for (to, from) in [(0, 1), (1, 0)] {
                let query = ShardMsg::Query { from, id, app: 0, channels: Vec::new() };
                control.outlets[to].push(query);
            }
        }
        let mut both_full = false;
        let mut settled = false;
        for _ in 0..100_000 {
            for outlet in &mut control.outlets {
                outlet.flush();
            }
            let now = Instant::now();
            for s in &mut shards {
                s.turn(now);
            }
            both_full |= shards.iter().all(|s| s.backlog > 0);
            settled = control.outlets.iter().all(|o| o.backlog() == 0)
                && shards.iter().all(|s| s.backlog == 0 && s.links.inlets.is_empty());
            if settled {
                break;
            }
        }
        assert!(both_full, "the rings between the shards filled both ways");
        assert!(settled, "both shards drained everything");
    }

    /// An event raised on one shard reaches a console viewer on the other,
    /// over the rings; once nobody watches, nothing is raised or sent.
    #[test]
    fn console_events_reach_a_viewer_on_another_shard() {
        let (links, _control) = rings::build_with_capacity(2, 1, 64);
        let watch = Arc::new(Watch::new(2, 1));
        let mut shards: Vec<ShardLoop> = links
            .into_iter()
            .enumerate()
            .map(|(id, l)| watched_shard(id, l, Arc::clone(&watch)))
            .collect();
        // A viewer of app 0 on shard 1; its socket token names no socket,
        // so what it is sent stays in its outbox.
        let viewer = shards[1].viewers.open(7, 0);
        watch.add(1, 0);
        let now = Instant::now();
        let publish_and_settle = |shards: &mut Vec<ShardLoop>, event: &str| {
            shards[0].core.publish(0, "news", event, "{}", None, now);
            for _ in 0..4 {
                for s in shards.iter_mut() {
                    s.turn(now);
                }
            }
        };
        publish_and_settle(&mut shards, "headline");
        let frames = |s: &mut ShardLoop| -> Vec<String> {
            let outbox = s.viewers.outbox(viewer).expect("viewer");
            outbox.frames().map(|f| String::from_utf8_lossy(f).into_owned()).collect()
        };
        let got = frames(&mut shards[1]);
        assert_eq!(got.len(), 1, "{got:?}");
        assert!(got[0].contains(r#""type":"api_message""#), "{}", got[0]);
        assert!(got[0].contains(r#""event":"headline""#) && got[0].contains(r#""shard":0"#));
        assert_eq!(shards[1].viewers.missed(viewer), Some(0));

        watch.remove(1, 0);
        publish_and_settle(&mut shards, "unwatched");
        assert_eq!(frames(&mut shards[1]).len(), 1, "nothing more once nobody watches");
    }

    /// Runs turns of both shards until `done` says so (at most a bounded
    /// number of rounds, each one turn of each shard).
    fn drive(shards: &mut [ShardLoop], mut done: impl FnMut(&[ShardLoop]) -> bool) -> bool {
        for _ in 0..10_000 {
            let now = Instant::now();
            for s in shards.iter_mut() {
                s.turn(now);
            }
            if done(shards) {
                return true;
            }
            std::thread::yield_now();
        }
        false
    }

    /// A request for an HTTP-transport session that lands on a shard other
    /// than the session's owner moves, socket and all, to the owner, which
    /// opens the session and answers on the same socket; the next request,
    /// sent to the first shard again, reaches the same session there.
    #[test]
    fn a_session_request_on_the_wrong_shard_is_served_by_its_owner() {
        use std::io::{Read, Write};

        use crate::proto::pusher::xhr;

        let (links, _control) = rings::build_with_capacity(2, 1, 64);
        let mut shards: Vec<ShardLoop> =
            links.into_iter().enumerate().map(|(id, l)| shard(id, l)).collect();
        let base = (0..1000)
            .map(|i| format!("/pusher/app/app-key/{i}/session"))
            .find(|b| xhr::owner(b, 2) == 1)
            .expect("a session shard 1 owns");
        let at_shard_0 = shards[0].listeners[0].socket.local_addr().expect("address");
        // Sends one request to shard 0's listener and returns everything
        // written back until the server closes the socket.
        let exchange = |shards: &mut Vec<ShardLoop>, request: String| {
            let mut client = std::net::TcpStream::connect(at_shard_0).expect("connect");
            client.write_all(request.as_bytes()).expect("write");
            client.set_nonblocking(true).expect("nonblocking");
            let mut reply = Vec::new();
            let finished = drive(shards, |_| {
                let mut buf = [0u8; 4096];
                match client.read(&mut buf) {
                    Ok(0) => true,
                    Ok(n) => {
                        reply.extend_from_slice(&buf[..n]);
                        false
                    }
                    Err(_) => false,
                }
            });
            assert!(finished, "the answer came and the socket closed");
            String::from_utf8(reply).expect("utf-8")
        };
        let poll = |path: String| {
            format!(
                "POST {path}?protocol=7 HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            )
        };
        let first = exchange(&mut shards, poll(format!("{base}/xhr")));
        assert!(first.starts_with("HTTP/1.1 200"), "{first}");
        let body = first.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or_default();
        assert!(
            body.starts_with("o\na[\"{\\\"event\\\":\\\"pusher:connection_established"),
            "{body}"
        );
        assert_eq!((shards[0].xhr.len(), shards[1].xhr.len()), (0, 1));
        assert_eq!(shards[1].core.connections(), 1);
        // The session is there for the next request, whichever shard took it.
        let ping = r#"["{\"event\":\"pusher:ping\",\"data\":{}}"]"#;
        let send = format!(
            "POST {base}/xhr_send HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{ping}",
            ping.len()
        );
        let reply = exchange(&mut shards, send);
        assert!(reply.starts_with("HTTP/1.1 204"), "{reply}");
        let second = exchange(&mut shards, poll(format!("{base}/xhr")));
        assert!(second.contains("a[\"{\\\"event\\\":\\\"pusher:pong"), "{second}");
        assert!(!second.contains("\r\n\r\no\n"), "no second open frame: {second}");
    }
}
