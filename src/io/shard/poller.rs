//! The shard's readiness set: one edge-triggered epoll instance that holds
//! every socket of the shard, listeners included.
//!
//! Why a set of our own instead of one runtime wait per socket: a wait per
//! socket is a future per socket, and a future per idle connection is most
//! of what an idle connection costs (a task and its state, several hundred
//! bytes). Here a connection is a slab entry and a registration in the
//! kernel; the shard's one event loop asks the set what is ready, once per
//! turn, and when it has nothing to do sleeps in the set itself
//! ([`Poller::wait`]) until the next deadline: the rings' doorbell is an
//! `eventfd` in the same set.
//!
//! Registrations are edge-triggered: an event says "something changed",
//! so the loop reads (or writes) until the socket says `EAGAIN`, or
//! remembers that it stopped early and comes back on the next turn.

use std::{
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
    time::Duration,
};

/// Readiness of one registered descriptor.
#[derive(Debug, Clone, Copy)]
pub struct Event {
    /// What the descriptor was registered with.
    pub token: u64,
    /// Input (or end of input, or an error) is waiting.
    pub readable: bool,
    /// The send buffer has room again.
    pub writable: bool,
    /// The peer shut its side, or the socket failed: reads must go on to
    /// the end of input, which no later edge will announce.
    pub closed: bool,
}

/// An epoll instance and the buffer its events are read into.
pub struct Poller {
    epoll: OwnedFd,
    events: Vec<libc::epoll_event>,
    /// Events [`Poller::wait`] took that the next [`Poller::poll`] hands out.
    waited: usize,
}

impl Poller {
    /// A set that hands out at most `batch` events per [`Poller::poll`].
    pub fn new(batch: usize) -> io::Result<Self> {
        // SAFETY: plain syscall; the descriptor is owned below.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a fresh descriptor nobody else owns.
        let epoll = unsafe { OwnedFd::from_raw_fd(fd) };
        let events = vec![libc::epoll_event { events: 0, u64: 0 }; batch.max(1)];
        Ok(Self { epoll, events, waited: 0 })
    }

    /// Sleeps until some descriptor is ready or `timeout` passes (rounded
    /// up to the millisecond, so a deadline is never woken for early). The
    /// events it took are kept for the next [`Poller::poll`], which then
    /// makes no system call of its own.
    pub fn wait(&mut self, timeout: Duration) {
        if self.waited > 0 {
            return;
        }
        let ms = timeout.as_nanos().div_ceil(1_000_000).min(i32::MAX as u128) as libc::c_int;
        let max = self.events.len() as libc::c_int;
        // SAFETY: the buffer holds `max` events and outlives the call.
        let n =
            unsafe { libc::epoll_wait(self.epoll.as_raw_fd(), self.events.as_mut_ptr(), max, ms) };
        // An interrupted or failed wait is a spurious wake-up: the next
        // poll asks again and reports any error.
        self.waited = usize::try_from(n).unwrap_or(0);
    }

    /// Adds `fd` for input and output, edge-triggered, reporting `token`.
    pub fn add(&self, fd: RawFd, token: u64) -> io::Result<()> {
        let flags = libc::EPOLLIN | libc::EPOLLOUT | libc::EPOLLRDHUP | libc::EPOLLET;
        let mut event = libc::epoll_event { events: flags as u32, u64: token };
        // SAFETY: `event` is valid for the call; the kernel copies it.
        let rc =
            unsafe { libc::epoll_ctl(self.epoll.as_raw_fd(), libc::EPOLL_CTL_ADD, fd, &mut event) };
        if rc < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
    }

    /// Removes `fd` (closing it does the same; this is for descriptors that
    /// stay open, such as a listener at shutdown).
    pub fn remove(&self, fd: RawFd) {
        let mut event = libc::epoll_event { events: 0, u64: 0 };
        // SAFETY: as in `add`; failure (already gone) is of no interest.
        unsafe { libc::epoll_ctl(self.epoll.as_raw_fd(), libc::EPOLL_CTL_DEL, fd, &mut event) };
    }

    /// The events ready now, without waiting; calls `f` for each.
    pub fn poll(&mut self, mut f: impl FnMut(Event)) -> io::Result<usize> {
        let n = if self.waited > 0 {
            std::mem::take(&mut self.waited)
        } else {
            let max = self.events.len() as libc::c_int;
            // SAFETY: the buffer holds `max` events and outlives the call.
            let n = unsafe {
                libc::epoll_wait(self.epoll.as_raw_fd(), self.events.as_mut_ptr(), max, 0)
            };
            if n < 0 {
                let err = io::Error::last_os_error();
                return if err.kind() == io::ErrorKind::Interrupted { Ok(0) } else { Err(err) };
            }
            n as usize
        };
        for event in &self.events[..n] {
            let flags = event.events as libc::c_int;
            let input = libc::EPOLLIN | libc::EPOLLRDHUP | libc::EPOLLHUP | libc::EPOLLERR;
            f(Event {
                token: event.u64,
                readable: flags & input != 0,
                writable: flags & (libc::EPOLLOUT | libc::EPOLLERR | libc::EPOLLHUP) != 0,
                closed: flags & (libc::EPOLLRDHUP | libc::EPOLLHUP | libc::EPOLLERR) != 0,
            });
        }
        Ok(n)
    }

    /// The largest batch [`Poller::poll`] hands out.
    pub fn batch(&self) -> usize {
        self.events.len()
    }
}

#[cfg(test)]
mod tests {
    use std::{
        io::Write,
        net::{TcpListener, TcpStream},
        os::fd::AsRawFd,
    };

    use super::*;

    #[test]
    fn reports_input_once_per_edge_with_its_token() {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let mut client = TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
        let (server, _) = listener.accept().expect("accept");
        server.set_nonblocking(true).expect("nonblocking");
        let mut poller = Poller::new(8).expect("epoll");
        poller.add(server.as_raw_fd(), 42).expect("add");
        // A fresh socket can take output at once.
        let mut seen = Vec::new();
        poller.poll(|e| seen.push(e)).expect("poll");
        assert!(seen.iter().any(|e| e.token == 42 && e.writable && !e.readable), "{seen:?}");
        client.write_all(b"x").expect("write");
        let mut readable = false;
        for _ in 0..1000 {
            poller.poll(|e| readable |= e.token == 42 && e.readable).expect("poll");
            if readable {
                break;
            }
            std::thread::yield_now();
        }
        assert!(readable, "input reported");
        // Edge-triggered: nothing new happened, so nothing is reported again.
        let mut again = 0;
        poller.poll(|_| again += 1).expect("poll");
        assert_eq!(again, 0);
    }

    /// A shard asleep in its set is woken by a ring from another thread
    /// through the doorbell's eventfd, and that wait's events are what the
    /// next poll hands out. The eventfd is never read, so the second round
    /// shows that each write is a new edge.
    #[test]
    fn a_parked_wait_is_woken_by_a_ring_from_another_thread() {
        let (mut shards, _) = crate::io::rings::build(2, 0);
        let mut poller = Poller::new(8).expect("epoll");
        poller.add(shards[1].inlets.doorbell().wake_fd().expect("eventfd"), 7).expect("add");
        let bell = shards[1].inlets.bell();
        let mut outlet = shards[0].outlets[1].take().expect("outlet to shard 1");
        for round in 0..2 {
            bell.park();
            assert!(shards[1].inlets.is_empty());
            let producer = std::thread::spawn(move || {
                outlet.push(crate::io::rings::ShardMsg::Test(round));
                outlet.flush();
                outlet
            });
            // Long enough that only the doorbell can end it within the test.
            poller.wait(Duration::from_secs(60));
            bell.unpark();
            outlet = producer.join().expect("producer");
            let mut tokens = Vec::new();
            assert_eq!(poller.poll(|e| tokens.push(e.token)).expect("poll"), 1, "round {round}");
            assert_eq!(tokens, [7]);
            assert_eq!(shards[1].inlets.drain(10, |_| {}), 1);
        }
    }
}
