//! One shard: a pinned thread running a monoio runtime that owns its
//! listeners, its connections and its [`crate::proto::pusher::shard::Shard`] state.
//!
//! Tasks on a shard, and what each one does:
//! 1. the **mesh task** drains this shard's rings, hands each message to the
//!    shard state, then moves what the state queued for other shards into
//!    their rings and rings each target's doorbell once per batch;
//! 2. one **acceptor** per listener takes connections in batches;
//! 3. one **connection task** per socket reads, feeds the state, and writes
//!    its outbox ([`super::conn`]);
//! 4. the **tick task** runs the liveness clock once a second;
//! 5. the **Incus tick task** runs [`crate::proto::incus::IncusShard::tick`] four
//!    times a second (poll timeouts, mailbox expiry, pings).
//!
//! All of them share the state through `Rc<RefCell<…>>` on this one thread;
//! no borrow is ever held across an `.await`.

pub mod admission;
pub(crate) mod api;
pub mod conn;
pub(crate) mod incus_api;
pub mod listener;
pub mod sock;

use std::{
    cell::{Cell, RefCell},
    future::{Future, poll_fn},
    net::TcpListener as StdListener,
    os::fd::AsRawFd,
    pin::pin,
    rc::Rc,
    sync::Arc,
    task::{Poll, Waker},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use monoio::net::TcpListener;

use self::admission::Admission;
use crate::{
    config::Config,
    core::{
        Apps, CloseCode,
        counters::{Metrics, ShardCounters},
    },
    io::{
        bridge::uplink::Uplink,
        rings::ShardLinks,
        webhooks::{HookOutlet, Outgoing},
    },
    proto::{
        incus,
        incus::IncusShard,
        msg::ShardMsg,
        pusher::shard::{Settings, Shard},
    },
};

/// Which io driver the shards use (`STAPES_IO_DRIVER`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Runtime {
    /// io_uring, falling back to epoll where the kernel refuses io_uring.
    Auto,
    /// epoll only (for comparison, or hosts where io_uring misbehaves).
    Epoll,
}

impl Runtime {
    /// Reads `STAPES_IO_DRIVER`: `auto` (default), `uring` (same as auto)
    /// or `epoll`.
    pub fn from_env(value: Option<&str>) -> Result<Self, UnknownDriver> {
        match value.map(str::trim) {
            None | Some("" | "auto" | "uring" | "io_uring") => Ok(Runtime::Auto),
            Some("epoll" | "legacy") => Ok(Runtime::Epoll),
            Some(other) => Err(UnknownDriver(other.to_owned())),
        }
    }
}

/// `STAPES_IO_DRIVER` has an unknown value.
#[derive(Debug, thiserror::Error)]
#[error("STAPES_IO_DRIVER: expected auto, uring or epoll, got {0:?}")]
pub struct UnknownDriver(pub String);

/// Mesh messages handled before the mesh task yields to connections.
const MESH_BUDGET: usize = 4096;
/// Connections accepted per readiness event before other tasks get a turn.
const ACCEPT_BATCH: usize = 256;
/// Size of the read buffer all connections of a shard share.
pub const SCRATCH_BYTES: usize = 64 * 1024;

/// Everything one shard's tasks share.
pub struct ShardCtx {
    /// Protocol state.
    pub core: RefCell<Shard>,
    /// Incus state (`/socket`, `/lp`).
    pub incus: RefCell<IncusShard>,
    /// Server config.
    pub config: Arc<Config>,
    /// Apps.
    pub apps: Arc<Apps>,
    /// Node-wide connection counters.
    pub admission: Arc<Admission>,
    /// This shard's metrics, written only here.
    pub counters: Arc<ShardCounters>,
    /// Every shard's metrics, read by `/metrics`.
    pub metrics: Arc<Metrics>,
    /// TLS settings, when a TLS port is configured.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// The read buffer every connection task reads into, one at a time.
    pub scratch: RefCell<Box<[u8]>>,
    links: RefCell<ShardLinks>,
    /// This shard's ring to the webhook thread, when some app has webhooks.
    hooks: RefCell<Option<HookOutlet>>,
    uplink: RefCell<Option<Uplink>>,
    mesh_waker: RefCell<Option<Waker>>,
    draining: Cell<bool>,
    drain_wakers: RefCell<Vec<Waker>>,
    /// Connections waiting for the loop's next turn to write, and the turn
    /// count that releases them (see [`ShardCtx::next_turn`]).
    turn_waiters: RefCell<Vec<Waker>>,
    turn: Cell<u64>,
    turn_waker: RefCell<Option<Waker>>,
}

impl ShardCtx {
    /// Runs `f` on the shard state, then makes sure anything it queued for
    /// other shards gets moved to the rings.
    pub fn with_core<R>(&self, f: impl FnOnce(&mut Shard) -> R) -> R {
        let out = f(&mut self.core.borrow_mut());
        let core = self.core.borrow();
        if (core.has_mesh_out() || core.has_events())
            && let Some(w) = self.mesh_waker.borrow().as_ref()
        {
            w.wake_by_ref();
        }
        out
    }

    /// Completes on the event loop's next turn, after the I/O completions
    /// now pending have been handled. A connection woken by its outbox waits
    /// for this before writing, so the publishes and ring batches of one
    /// turn share one `writev` per connection. One shard task (`turn_task`)
    /// waits out the turn for everyone: any wait future of its own (a
    /// `Sleep` is 640 bytes) would be too much to keep in every connection's
    /// future.
    pub async fn next_turn(&self) {
        let mut waiting_for = None;
        poll_fn(|cx| match waiting_for {
            Some(turn) if self.turn.get() != turn => Poll::Ready(()),
            Some(_) => Poll::Pending,
            None => {
                waiting_for = Some(self.turn.get());
                let mut waiters = self.turn_waiters.borrow_mut();
                if waiters.is_empty()
                    && let Some(w) = self.turn_waker.borrow().as_ref()
                {
                    w.wake_by_ref();
                }
                waiters.push(cx.waker().clone());
                Poll::Pending
            }
        })
        .await
    }

    /// Runs `f` on the Incus state, then wakes the mesh task if it queued
    /// messages for other shards.
    pub fn with_incus<R>(&self, f: impl FnOnce(&mut IncusShard) -> R) -> R {
        let out = f(&mut self.incus.borrow_mut());
        if self.incus.borrow().has_mesh_out()
            && let Some(w) = self.mesh_waker.borrow().as_ref()
        {
            w.wake_by_ref();
        }
        out
    }

    /// Whether the shard is shutting down.
    pub fn draining(&self) -> bool {
        self.draining.get()
    }

    /// Completes when the shard starts shutting down.
    pub async fn drained(&self) {
        poll_fn(|cx| {
            if self.draining.get() {
                return Poll::Ready(());
            }
            self.drain_wakers.borrow_mut().push(cx.waker().clone());
            Poll::Pending
        })
        .await
    }

    fn begin_drain(&self) {
        if self.draining.replace(true) {
            return;
        }
        for w in self.drain_wakers.borrow_mut().drain(..) {
            w.wake();
        }
        self.with_core(|core| core.close_all(CloseCode::RECONNECT));
        self.with_incus(IncusShard::drain);
    }

    /// Messages waiting in this shard's outlets because a ring was full.
    pub fn mesh_backlog(&self) -> usize {
        self.links.borrow().outlets.iter().flatten().map(|o| o.backlog()).sum()
    }

    /// Hands the webhook events the state raised to the webhook thread's
    /// ring, without waiting: a full ring drops them, counted and logged.
    fn flush_events(&self) {
        let mut core = self.core.borrow_mut();
        if !core.has_events() {
            return;
        }
        let mut hooks = self.hooks.borrow_mut();
        let Some(outlet) = hooks.as_mut() else {
            // No app has webhooks, so the state raises none; drop strays.
            core.drain_events(|_| {});
            return;
        };
        let time_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        let shard = core.id();
        let lost = &self.counters.webhooks_dropped;
        core.drain_events(|event| {
            if let Err(dropped) = outlet.push(Outgoing { time_ms, event }) {
                lost.inc();
                if dropped.is_power_of_two() {
                    tracing::warn!(shard, dropped, "webhook ring full; events dropped");
                }
            }
        });
        outlet.flush();
    }

    /// Moves queued cross-shard messages into the rings and rings doorbells.
    /// Returns true while some ring was full and messages wait in an outlet.
    fn flush_mesh(&self) -> bool {
        let mut links = self.links.borrow_mut();
        self.core.borrow_mut().drain_mesh_out(|to, msg| {
            if let Some(outlet) = links.outlets[to].as_mut() {
                outlet.push(msg);
            }
        });
        let mut incus = self.incus.borrow_mut();
        incus.drain_mesh_out(|to, msg| {
            if let Some(outlet) = links.outlets[to].as_mut() {
                outlet.push(ShardMsg::Incus(msg));
            }
        });
        let mut uplink = self.uplink.borrow_mut();
        incus.drain_redis_out(|update| {
            if let Some(uplink) = uplink.as_mut()
                && let Err(total) = uplink.push(update)
                && total.is_power_of_two()
            {
                tracing::warn!(
                    total,
                    "the redis bridge is behind; dropped incus updates for redis"
                );
            }
        });
        if let Some(uplink) = uplink.as_mut() {
            uplink.flush();
        }
        let mut backlog = false;
        let mut waiting = 0;
        for outlet in links.outlets.iter_mut().flatten() {
            backlog |= outlet.flush();
            waiting += outlet.backlog();
        }
        incus.set_backlogged(waiting > api::MAX_MESH_BACKLOG);
        backlog
    }
}

/// What a shard thread is given at start-up.
pub struct ShardInit {
    /// Shard index.
    pub id: usize,
    /// Number of shards.
    pub shards: usize,
    /// CPU to pin to, if any.
    pub cpu: Option<usize>,
    /// Config.
    pub config: Arc<Config>,
    /// Apps.
    pub apps: Arc<Apps>,
    /// Counters.
    pub admission: Arc<Admission>,
    /// Every shard's metrics; this shard writes only its own block.
    pub metrics: Arc<Metrics>,
    /// TLS settings.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Plain listener.
    pub plain: StdListener,
    /// TLS listener, when TLS is on.
    pub secure: Option<StdListener>,
    /// This shard's ends of the mesh.
    pub links: ShardLinks,
    /// This shard's ring to the Redis bridge, when Redis is on.
    pub uplink: Option<Uplink>,
    /// Which io driver to build.
    pub driver: Runtime,
    /// This shard's ring to the webhook thread, when some app has webhooks.
    pub hooks: Option<HookOutlet>,
}

/// The shard thread's body: pins, builds the runtime, serves until shutdown.
pub fn run(init: ShardInit) -> std::io::Result<()> {
    if let Some(cpu) = init.cpu
        && let Err(e) = monoio::utils::bind_to_cpu_set([cpu])
    {
        tracing::warn!(shard = init.id, cpu, "could not pin shard: {e:?}");
    }
    let id = init.id;
    match init.driver {
        Runtime::Auto => {
            let rt = monoio::RuntimeBuilder::<monoio::FusionDriver>::new()
                .with_entries(4096)
                .enable_timer()
                .build()?;
            match rt {
                monoio::FusionRuntime::Uring(mut rt) => {
                    tracing::info!(shard = id, "io driver: io_uring");
                    rt.block_on(shard_main(init))
                }
                monoio::FusionRuntime::Legacy(mut rt) => {
                    tracing::info!(shard = id, "io driver: epoll (io_uring unavailable)");
                    rt.block_on(shard_main(init))
                }
            }
        }
        Runtime::Epoll => {
            let mut rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
                .with_entries(4096)
                .enable_timer()
                .build()?;
            tracing::info!(shard = id, "io driver: epoll (chosen by STAPES_IO_DRIVER)");
            rt.block_on(shard_main(init))
        }
    }
}

async fn shard_main(init: ShardInit) -> std::io::Result<()> {
    let server = &init.config.server;
    let settings = Settings {
        activity_timeout: server.activity_timeout,
        pong_timeout: server.pong_timeout,
        max_outbox_bytes: server.max_outbox_bytes,
    };
    let grace = server.shutdown_grace;
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
        commands_per_sec: u32::try_from(incus_config.client_commands_per_sec).unwrap_or(u32::MAX),
        commands_burst: u32::try_from(incus_config.client_commands_burst).unwrap_or(u32::MAX),
        max_sessions: incus_config.max_lp_sessions,
        online_every: (init.uplink.is_some() && incus_config.push.connected_is_active)
            .then_some(crate::io::bridge::ONLINE_REFRESH),
    };
    let counters = init.metrics.shard(init.id);
    let mut core = Shard::new(init.id, init.shards, Arc::clone(&init.apps), settings);
    core.set_counters(Arc::clone(&counters));
    let mut incus = IncusShard::new(init.id, init.shards, incus_settings);
    incus.set_counters(Arc::clone(&counters));
    let ctx = Rc::new(ShardCtx {
        core: RefCell::new(core),
        incus: RefCell::new(incus),
        config: init.config,
        apps: init.apps,
        admission: init.admission,
        counters,
        metrics: init.metrics,
        tls: init.tls,
        scratch: RefCell::new(vec![0; SCRATCH_BYTES].into_boxed_slice()),
        links: RefCell::new(init.links),
        hooks: RefCell::new(init.hooks),
        uplink: RefCell::new(init.uplink),
        mesh_waker: RefCell::new(None),
        draining: Cell::new(false),
        drain_wakers: RefCell::new(Vec::new()),
        turn_waiters: RefCell::new(Vec::new()),
        turn: Cell::new(0),
        turn_waker: RefCell::new(None),
    });
    let plain = TcpListener::from_std(init.plain)?;
    let secure = init.secure.map(TcpListener::from_std).transpose()?;
    monoio::spawn(mesh_task(Rc::clone(&ctx)));
    monoio::spawn(tick_task(Rc::clone(&ctx)));
    monoio::spawn(turn_task(Rc::clone(&ctx)));
    monoio::spawn(incus_tick_task(Rc::clone(&ctx)));
    monoio::spawn(accept_task(Rc::clone(&ctx), plain, false));
    if let Some(secure) = secure {
        monoio::spawn(accept_task(Rc::clone(&ctx), secure, true));
    }
    ctx.drained().await;
    let deadline = Instant::now() + grace;
    let busy = |ctx: &ShardCtx| {
        let incus = ctx.incus.borrow();
        ctx.core.borrow().connections() + incus.sockets() + incus.pending_polls()
    };
    while busy(&ctx) > 0 && Instant::now() < deadline {
        monoio::time::sleep(Duration::from_millis(20)).await;
    }
    let left = ctx.core.borrow().connections();
    tracing::info!(shard = ctx.core.borrow().id(), left, "shard stopped");
    Ok(())
}

async fn mesh_task(ctx: Rc<ShardCtx>) {
    loop {
        poll_fn(|cx| {
            *ctx.mesh_waker.borrow_mut() = Some(cx.waker().clone());
            let links = ctx.links.borrow();
            links.inlets.doorbell().register(cx.waker());
            let core = ctx.core.borrow();
            if !links.inlets.is_empty()
                || core.has_mesh_out()
                || core.has_events()
                || ctx.incus.borrow().has_mesh_out()
            {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
        .await;
        let mut shutdown = false;
        let taken = {
            let mut links = ctx.links.borrow_mut();
            let mut core = ctx.core.borrow_mut();
            let mut incus = ctx.incus.borrow_mut();
            let now = Instant::now();
            // Webhook delays scheduled by these messages count from now.
            if !links.inlets.is_empty() {
                core.set_now(now);
            }
            links.inlets.drain(MESH_BUDGET, |msg| match msg {
                ShardMsg::Shutdown => shutdown = true,
                ShardMsg::Incus(msg) => incus.handle_mesh(msg, now),
                msg => core.handle_mesh(msg),
            })
        };
        if shutdown {
            ctx.begin_drain();
        }
        ctx.flush_events();
        let mut backlog = ctx.flush_mesh();
        // monoio 0.2.4 re-polls a self-woken task first (STACK.md pitfall 3),
        // so a busy mesh task waits a turn to let connections write.
        if taken == MESH_BUDGET {
            ctx.next_turn().await;
        }
        while backlog {
            monoio::time::sleep(Duration::from_millis(1)).await;
            backlog = ctx.flush_mesh();
        }
    }
}

/// Releases the connections waiting in [`ShardCtx::next_turn`], one turn
/// after the first of them arrived.
async fn turn_task(ctx: Rc<ShardCtx>) {
    let bell = match TurnBell::new() {
        Ok(bell) => Some(bell),
        Err(e) => {
            tracing::warn!("no turn doorbell ({e}); writes wait for the 1 ms timer instead");
            None
        }
    };
    let mut released = Vec::new();
    loop {
        poll_fn(|cx| {
            if ctx.turn_waiters.borrow().is_empty() {
                *ctx.turn_waker.borrow_mut() = Some(cx.waker().clone());
                Poll::Pending
            } else {
                Poll::Ready(())
            }
        })
        .await;
        match &bell {
            Some(bell) => bell.ring_and_wait().await,
            None => monoio::time::sleep(Duration::ZERO).await,
        }
        ctx.turn.set(ctx.turn.get().wrapping_add(1));
        // Swap rather than drain in place: a released task may queue again.
        std::mem::swap(&mut released, &mut *ctx.turn_waiters.borrow_mut());
        for w in released.drain(..) {
            w.wake();
        }
    }
}

/// A socket pair the shard writes to itself: waiting for it to be readable
/// completes on the driver's next poll, which is exactly one turn of the
/// event loop. A timer would do the same only at its 1 ms resolution,
/// adding a millisecond to every delivery on a quiet server.
struct TurnBell {
    ring: std::os::unix::net::UnixStream,
    wait: monoio::net::UnixStream,
}

impl TurnBell {
    fn new() -> std::io::Result<Self> {
        let (ring, wait) = std::os::unix::net::UnixStream::pair()?;
        ring.set_nonblocking(true)?;
        wait.set_nonblocking(true)?;
        Ok(Self { ring, wait: monoio::net::UnixStream::from_std(wait)? })
    }

    async fn ring_and_wait(&self) {
        use std::io::Write;
        // A full socket still reads as readable, so a failed write is fine.
        let _ = (&self.ring).write(&[1]);
        let _ = self.wait.readable(false).await;
        let mut sink = [0u8; 64];
        // SAFETY: reading into a valid local buffer from our own socket.
        let _ = unsafe { libc::read(self.wait.as_raw_fd(), sink.as_mut_ptr().cast(), sink.len()) };
    }
}

async fn tick_task(ctx: Rc<ShardCtx>) {
    loop {
        monoio::time::sleep(Duration::from_secs(1)).await;
        ctx.with_core(|core| core.handle_tick(Instant::now()));
        ctx.flush_events();
    }
}

/// Incus poll timeouts and expiries are checked more often than the
/// Pusher clock, so that a poll's 204 comes close to `connection_timeout`.
async fn incus_tick_task(ctx: Rc<ShardCtx>) {
    loop {
        monoio::time::sleep(Duration::from_millis(250)).await;
        ctx.with_incus(|incus| incus.tick(Instant::now()));
    }
}

async fn accept_task(ctx: Rc<ShardCtx>, listener: TcpListener, tls: bool) {
    let fd = listener.as_raw_fd();
    loop {
        // A readiness wait is safe to abandon, unlike an accept in flight
        // (STACK.md pitfall 4), so shutdown can simply stop waiting.
        let ready = {
            let readable = pin!(listener.readable(false));
            let drained = pin!(ctx.drained());
            first(readable, drained).await
        };
        match ready {
            Either::Right(()) => return,
            Either::Left(Err(e)) => {
                tracing::warn!("listener readiness failed: {e}");
                monoio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
            Either::Left(Ok(())) => {}
        }
        for _ in 0..ACCEPT_BATCH {
            match listener::accept(fd) {
                Ok(stream) => {
                    let _ = stream.set_nodelay(true);
                    match monoio::net::TcpStream::from_std(stream) {
                        Ok(stream) => {
                            monoio::spawn(conn::serve(Rc::clone(&ctx), stream, tls));
                        }
                        Err(e) => tracing::warn!("cannot register connection: {e}"),
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // EMFILE/ENFILE/ENOBUFS: back off instead of spinning.
                    tracing::warn!("accept failed: {e}");
                    monoio::time::sleep(Duration::from_millis(50)).await;
                    break;
                }
            }
        }
    }
}

/// Which of two futures finished first.
pub enum Either<A, B> {
    /// The first.
    Left(A),
    /// The second.
    Right(B),
}

/// Polls both futures and returns the first output; the other is dropped,
/// so only pass futures that are safe to abandon (readiness waits, timers,
/// local signals).
pub async fn first<A: Future, B: Future>(
    mut a: std::pin::Pin<&mut A>,
    mut b: std::pin::Pin<&mut B>,
) -> Either<A::Output, B::Output> {
    poll_fn(|cx| {
        if let Poll::Ready(x) = a.as_mut().poll(cx) {
            return Poll::Ready(Either::Left(x));
        }
        if let Poll::Ready(y) = b.as_mut().poll(cx) {
            return Poll::Ready(Either::Right(y));
        }
        Poll::Pending
    })
    .await
}
