//! One shard: a pinned thread whose event loop (`event_loop`) owns the
//! shard's listeners, sockets, rings and protocol state
//! ([`crate::proto::pusher::shard::Shard`], [`crate::proto::incus::IncusShard`]).
//!
//! The pieces: the readiness set every socket of the shard is in
//! ([`poller`]), one connection as the loop holds it ([`conn`]), socket
//! reads and writes with or without TLS ([`sock`]), a turn's plain writes
//! in one system call ([`send_ring`]), connection deadlines
//! ([`timers`]), listening sockets ([`listener`]), and the node-wide
//! connection counts ([`admission`]).

pub mod conn;
mod event_loop;
pub mod listener;
pub mod poller;
mod send_ring;
pub mod sock;
pub mod timers;

use std::{net::TcpListener as StdListener, sync::Arc};

pub use self::event_loop::{MAX_MESH_BACKLOG, SCRATCH_BYTES};
use crate::core::admission::Admission;
use crate::{
    config::Config,
    core::{Apps, counters::Metrics},
    io::{bridge::uplink::Uplink, rings::ShardLinks, webhooks::HookOutlet},
};

/// How the shards write (`STAPES_IO_DRIVER`). Readiness is always one
/// epoll set per shard; the choice is whether a turn's writes go out in one
/// `io_uring_enter` on the shard's send ring or one `writev` per socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoDriver {
    /// io_uring, falling back to `writev` where the kernel refuses io_uring.
    Auto,
    /// `writev` only (for comparison, or hosts where io_uring misbehaves).
    Epoll,
}

impl IoDriver {
    /// Reads `STAPES_IO_DRIVER`: `auto` (default), `uring` (same as auto)
    /// or `epoll`.
    pub fn from_env(value: Option<&str>) -> Result<Self, UnknownDriver> {
        match value.map(str::trim) {
            None | Some("" | "auto" | "uring" | "io_uring") => Ok(IoDriver::Auto),
            Some("epoll" | "legacy") => Ok(IoDriver::Epoll),
            Some(other) => Err(UnknownDriver(other.to_owned())),
        }
    }
}

/// `STAPES_IO_DRIVER` has an unknown value.
#[derive(Debug, thiserror::Error)]
#[error("STAPES_IO_DRIVER: expected auto, uring or epoll, got {0:?}")]
pub struct UnknownDriver(pub String);

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
    pub driver: IoDriver,
    /// This shard's ring to the webhook thread, when some app has webhooks.
    pub hooks: Option<HookOutlet>,
    /// This shard's ring to the bridge's cluster side, when the node is
    /// part of a cluster.
    pub cluster: Option<crate::io::bridge::cluster::ClusterOutlet>,
    /// The node's console viewers, per shard and app.
    pub watch: Arc<crate::proto::console::Watch>,
}

/// The shard thread's body: pins, then serves until shutdown.
pub fn run(init: ShardInit) -> std::io::Result<()> {
    if let Some(cpu) = init.cpu
        && let Err(e) = pin_to(cpu)
    {
        tracing::warn!(shard = init.id, cpu, "could not pin shard: {e}");
    }
    if init.config.server.batch_scheduling
        && let Err(e) = batch_policy()
    {
        tracing::warn!(shard = init.id, "could not set SCHED_BATCH: {e}");
    }
    event_loop::run(init)
}

/// Puts the calling thread under `SCHED_BATCH`: woken, it no longer
/// preempts the thread running on its core. With the load generator on the
/// same two cores, a shard preempted it at nearly every packet and handled
/// a few sockets per wake-up; under `SCHED_BATCH` connecting 19,000 took
/// two shards 380–450 ms of CPU instead of 500–510 (see the README's
/// connect row).
fn batch_policy() -> std::io::Result<()> {
    // SAFETY: sched_setscheduler only reads the parameter, whose one field
    // must be 0 for SCHED_BATCH; pid 0 is the calling thread.
    let rc = unsafe {
        let param = libc::sched_param { sched_priority: 0 };
        libc::sched_setscheduler(0, libc::SCHED_BATCH, &param)
    };
    if rc < 0 { Err(std::io::Error::last_os_error()) } else { Ok(()) }
}

/// Builds the send ring a shard would build, and drops it: `Ok` when the
/// shards will write through io_uring here (for `stapes doctor`).
pub fn probe_send_ring() -> std::io::Result<()> {
    send_ring::SendRing::new(event_loop::WRITE_BUDGET).map(drop)
}

/// Binds the calling thread to one CPU.
fn pin_to(cpu: usize) -> std::io::Result<()> {
    if cpu >= libc::CPU_SETSIZE as usize {
        return Err(std::io::Error::from(std::io::ErrorKind::InvalidInput));
    }
    // SAFETY: an all-zero cpu_set_t is the empty set, `cpu` is within it
    // (checked above), and sched_setaffinity only reads the set.
    let rc = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set)
    };
    if rc < 0 { Err(std::io::Error::last_os_error()) } else { Ok(()) }
}
