//! The process's file limit, and how the server divides it.
//!
//! Every connection is a file descriptor, and so are the listeners, the
//! shards' own descriptors (epoll sets, io_uring rings, eventfds), Redis,
//! webhook and push connections, and any file read at start-up. When the
//! process runs out, `accept` fails with `EMFILE` and new clients wait in
//! the listen backlog until they give up, publishers included. So the
//! server plans its budget from `RLIMIT_NOFILE` at start-up:
//!
//! - a **reserve** for everything that is not a client socket;
//! - room for **HTTP** beyond the WebSockets, so that a node full of
//!   subscribers still takes the API calls of its publishers;
//! - **WebSockets** up to what is left (or `server.max_connections`, if
//!   lower): beyond it a Pusher client is refused with 4100 and an Incus
//!   one with 503;
//! - past the whole socket budget, a new connection is answered 503 and
//!   closed at once.
//!
//! The kernel's descriptor table is then sized for that budget at once
//! ([`presize_descriptor_table`]), so that it never grows while clients
//! connect.

use std::{
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
};

/// Descriptors kept for what is not a client socket, besides the parts
/// counted by [`Needs`]: the process's own files, the listeners, logs.
const BASE_RESERVE: usize = 64;
/// Descriptors each shard holds for itself (epoll set, io_uring ring,
/// eventfd doorbell, the spare descriptor for refusing at `EMFILE`).
const PER_SHARD: usize = 8;
/// Redis connections of the bridge and the push thread, with room to
/// reconnect while an old one is closing.
const REDIS: usize = 16;
/// The most descriptors the table is sized for at start-up: 32 MiB of
/// kernel memory at 8 bytes a slot. A larger budget (a raised `fs.nr_open`
/// and `server.max_connections`) grows the table past it as usual.
const MAX_PRESIZED: usize = 1 << 22;

/// What the server will open besides client sockets.
#[derive(Debug, Clone, Copy, Default)]
pub struct Needs {
    /// Shards.
    pub shards: usize,
    /// Whether the Redis bridge runs.
    pub redis: bool,
    /// Webhook URLs (one keep-alive connection each, plus one reconnecting).
    pub webhook_urls: usize,
    /// Push requests in flight per platform, when push is on (FCM's pooled
    /// connections; APNs multiplexes one per build).
    pub push_concurrency: usize,
}

/// How the file limit is shared out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    /// The process's limit on open files.
    pub limit: usize,
    /// Client sockets, WebSocket or HTTP, that may be open at once.
    pub sockets: usize,
    /// WebSockets (Pusher and Incus) that may be open at once.
    pub websockets: usize,
    /// Descriptors open at the configured peak: the reserve, every
    /// WebSocket and the room kept for HTTP (at most `limit`).
    pub peak: usize,
}

impl Budget {
    /// Shares `limit` out for `needs`, with WebSockets capped at
    /// `max_connections`.
    pub fn plan(limit: usize, needs: Needs, max_connections: usize) -> Budget {
        let reserve = BASE_RESERVE
            + needs.shards * PER_SHARD
            + if needs.redis { REDIS } else { 0 }
            + 2 * needs.webhook_urls
            + 2 * needs.push_concurrency;
        let sockets = limit.saturating_sub(reserve);
        // A twentieth for HTTP, between 16 and 256 sockets: enough for a
        // fleet of publishers with keep-alive, little next to the clients.
        let http = (sockets / 20).clamp(16, 256).min(sockets);
        let websockets = sockets.saturating_sub(http).min(max_connections);
        let peak = (limit - sockets + websockets + http).min(limit);
        Budget { limit, sockets, websockets, peak }
    }
}

/// Raises the soft limit on open files to the hard limit, and returns the
/// limit in force.
///
/// # Errors
///
/// The OS error when the limit cannot be read.
pub fn raise_file_limit() -> io::Result<usize> {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: `limit` is a valid rlimit for the call to fill.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    if limit.rlim_cur < limit.rlim_max {
        let raised = libc::rlimit { rlim_cur: limit.rlim_max, rlim_max: limit.rlim_max };
        // SAFETY: as above; raising the soft limit up to the hard one is
        // always allowed.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            limit = raised;
        }
    }
    Ok(usize::try_from(limit.rlim_cur).unwrap_or(usize::MAX))
}

/// Grows the process's descriptor table now to hold `descriptors` (at
/// most [`MAX_PRESIZED`]); the table never shrinks, so no later `accept`
/// grows it.
///
/// Why: the kernel doubles the table when a descriptor beyond it is
/// opened, and in a process with more than one thread each doubling waits
/// for an RCU grace period (`synchronize_rcu` in `expand_files`) inside
/// the `accept4` that needed it. The shard making that call sleeps, with
/// all its connections, for the grace period: 10 to 28 ms here, seven
/// times on the way to 19,000 connections (256 slots to 32,768), which
/// was the long tail of the connect waits (README, the connect row). The
/// cost is the table's 8 bytes a slot of kernel memory from the start
/// instead of at the peak.
///
/// # Errors
///
/// The OS error when the table cannot grow (`ENOMEM`), or `EINVAL` when
/// `descriptors` is beyond the process's file limit.
pub fn presize_descriptor_table(descriptors: usize) -> io::Result<()> {
    let Some(highest) = descriptors.min(MAX_PRESIZED).checked_sub(1) else {
        return Ok(());
    };
    let highest = libc::c_int::try_from(highest).map_err(|_| io::ErrorKind::InvalidInput)?;
    // SAFETY: plain syscall; the descriptor is owned below.
    let probe = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
    if probe < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor nobody else owns.
    let probe = unsafe { OwnedFd::from_raw_fd(probe) };
    // F_DUPFD takes the lowest free slot at or above `highest`, so the
    // table grows to hold that slot; closing the copy keeps the table.
    // SAFETY: `probe` is open for the call.
    let copy = unsafe { libc::fcntl(probe.as_raw_fd(), libc::F_DUPFD_CLOEXEC, highest) };
    if copy < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the copy is ours alone; dropping it closes it.
    drop(unsafe { OwnedFd::from_raw_fd(copy) });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Slots in this process's descriptor table (`FDSize` in
    /// `/proc/self/status`).
    fn table_size() -> usize {
        let status = std::fs::read_to_string("/proc/self/status").expect("status");
        let line = status.lines().find_map(|l| l.strip_prefix("FDSize:")).expect("FDSize line");
        line.trim().parse().expect("a number")
    }

    #[test]
    fn the_descriptor_table_is_grown_to_the_size_asked_for_and_kept() {
        let limit = raise_file_limit().expect("limit");
        let want = limit.min(1 << 14);
        let before = table_size();
        assert!(before < want, "the table already holds {before} of the {want} asked for");
        presize_descriptor_table(want).expect("presized");
        let after = table_size();
        assert!(after >= want, "{before} -> {after}, asked for {want}");
        // The copy that grew it is closed again.
        // SAFETY: F_GETFD only asks whether the slot is open.
        let open = unsafe { libc::fcntl((want - 1) as libc::c_int, libc::F_GETFD) };
        assert_eq!(open, -1, "slot {} left open", want - 1);
        if limit < MAX_PRESIZED {
            assert!(presize_descriptor_table(limit + 1).is_err(), "beyond the file limit");
        }
    }

    #[test]
    fn the_budget_keeps_a_reserve_and_room_for_http() {
        let needs = Needs { shards: 2, redis: false, webhook_urls: 0, push_concurrency: 0 };
        let b = Budget::plan(20_000, needs, 100_000);
        assert_eq!(b.sockets, 20_000 - 64 - 16);
        assert_eq!(b.websockets, b.sockets - 256, "HTTP keeps 256 sockets");
        assert_eq!(b.peak, 20_000, "every descriptor may be in use at the peak");
        // The configured limit wins when it is lower.
        let capped = Budget::plan(20_000, needs, 500);
        assert_eq!(capped.websockets, 500);
        assert_eq!(capped.peak, 64 + 16 + 500 + 256, "reserve, WebSockets and HTTP room");
    }

    #[test]
    fn what_the_server_opens_besides_clients_is_set_aside() {
        let plain = Needs { shards: 2, ..Needs::default() };
        let busy = Needs { shards: 2, redis: true, webhook_urls: 3, push_concurrency: 64 };
        let (a, b) =
            (Budget::plan(20_000, plain, usize::MAX), Budget::plan(20_000, busy, usize::MAX));
        assert_eq!(a.sockets - b.sockets, REDIS + 6 + 128);
    }

    #[test]
    fn a_small_limit_still_leaves_some_of_each() {
        let needs = Needs { shards: 2, ..Needs::default() };
        let b = Budget::plan(300, needs, 100_000);
        assert_eq!(b.sockets, 300 - 80);
        assert_eq!(b.websockets, b.sockets - 16);
        let none = Budget::plan(50, needs, 100_000);
        assert_eq!((none.sockets, none.websockets), (0, 0));
    }
}
