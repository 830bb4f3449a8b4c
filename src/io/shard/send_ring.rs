//! A turn's socket writes in one system call: one `sendmsg` per socket,
//! submitted together through an io_uring of the shard's own, and reaped
//! before the call returns.
//!
//! Why: a turn of a sparse or light load writes a frame or two to each of
//! a few dozen sockets, and on loopback each `writev` returns to user space
//! just after waking a reader, which is where the scheduler preempts the
//! shard (`perf record`: 10 % of a shard's time was spent switching back
//! in after `writev`). One `io_uring_enter` for the turn makes one such
//! return, and one syscall entry instead of dozens.
//!
//! Why this stays synchronous: each `sendmsg` carries `MSG_DONTWAIT` on a
//! non-blocking socket, so the kernel completes it inline (bytes taken, or
//! `EAGAIN`) instead of waiting for room; `submit_and_wait` returns with
//! every completion in, so the frames the `iovec`s point at are only
//! borrowed for the call, exactly as by `writev`. Nothing stays in flight,
//! so there is nothing to cancel (STACK.md pitfall 2) and no buffer to pin.

use std::{io, os::fd::RawFd};

use bytes::Bytes;
use io_uring::{IoUring, opcode, types};

use super::sock::MAX_IOVECS;

/// The shard's send ring and the scratch its submissions point into.
pub(crate) struct SendRing {
    ring: IoUring,
    /// The frames of every socket in the batch, socket after socket. Its
    /// capacity is fixed at creation, so the pointers into it that the
    /// headers hold stay valid while the batch is built.
    iovecs: Vec<libc::iovec>,
    /// One header per socket: its first iovec and how many.
    headers: Vec<libc::msghdr>,
    /// Per socket: who it is, its descriptor, and where its iovecs start.
    entries: Vec<(u32, RawFd, usize)>,
    /// Per socket, its completion, as they are reaped.
    results: Vec<Option<io::Result<usize>>>,
    /// Sockets one batch can carry.
    sockets: usize,
}

impl std::fmt::Debug for SendRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SendRing").field("queued", &self.entries.len()).finish()
    }
}

impl SendRing {
    /// A ring for batches of up to `sockets` sockets (the write step's
    /// per-turn budget), or the kernel's refusal (io_uring disabled or
    /// filtered, or too old to say it has `sendmsg`, which
    /// [`SendRing::LACKS_SENDMSG`] marks): the shard then writes with
    /// `writev` alone.
    pub(crate) fn new(sockets: usize) -> io::Result<Self> {
        let ring = IoUring::new(u32::try_from(sockets).unwrap_or(u32::MAX))?;
        let mut probe = io_uring::Probe::new();
        // Asking needs Linux 5.6; an older kernel's ring is not used.
        let knows_sendmsg = ring.submitter().register_probe(&mut probe).is_ok()
            && probe.is_supported(opcode::SendMsg::CODE);
        if !knows_sendmsg {
            return Err(io::Error::other(Self::LACKS_SENDMSG));
        }
        Ok(Self {
            ring,
            iovecs: Vec::with_capacity(sockets * MAX_IOVECS),
            headers: Vec::with_capacity(sockets),
            entries: Vec::with_capacity(sockets),
            results: Vec::with_capacity(sockets),
            sockets,
        })
    }

    /// The refusal of a kernel whose io_uring cannot be asked for, or lacks,
    /// `IORING_OP_SENDMSG`.
    pub(crate) const LACKS_SENDMSG: &str =
        "this kernel's io_uring has no sendmsg (Linux 5.6 or later has)";

    /// Whether the batch has no room for another socket.
    pub(crate) fn is_full(&self) -> bool {
        self.entries.len() == self.sockets
    }

    /// Starts a new batch.
    pub(crate) fn clear(&mut self) {
        self.iovecs.clear();
        self.headers.clear();
        self.entries.clear();
    }

    /// Sockets in the batch.
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    /// Adds socket `key`'s frames (at most [`MAX_IOVECS`]); false when the
    /// batch is full or there is nothing to send.
    ///
    /// The frames must stay alive and unchanged until [`SendRing::submit`]
    /// has returned: the batch holds their addresses.
    pub(crate) fn add<'a>(
        &mut self,
        key: u32,
        fd: RawFd,
        frames: impl Iterator<Item = &'a Bytes>,
    ) -> bool {
        if self.is_full() {
            return false;
        }
        let start = self.iovecs.len();
        for frame in frames.filter(|f| !f.is_empty()).take(MAX_IOVECS) {
            self.iovecs
                .push(libc::iovec { iov_base: frame.as_ptr() as *mut _, iov_len: frame.len() });
        }
        if self.iovecs.len() == start {
            return false;
        }
        self.entries.push((key, fd, start));
        true
    }

    /// Sends the batch in one `io_uring_enter` and calls `done` with each
    /// socket's key and result (bytes taken, or the error; `EAGAIN` when
    /// its buffer was full). Every socket is reported once; the batch is
    /// then empty. Returns false when the ring itself failed: the sockets
    /// it could not report on got an error, and the ring should not be used
    /// again.
    pub(crate) fn submit(&mut self, mut done: impl FnMut(u32, io::Result<usize>)) -> bool {
        let count = self.entries.len();
        if count == 0 {
            return true;
        }
        for (i, &(_, _, start)) in self.entries.iter().enumerate() {
            let end = self.entries.get(i + 1).map_or(self.iovecs.len(), |e| e.2);
            // SAFETY: an all-zero msghdr is valid (no name, no control data).
            let mut header: libc::msghdr = unsafe { std::mem::zeroed() };
            header.msg_iov = self.iovecs[start..end].as_ptr() as *mut _;
            header.msg_iovlen = end - start;
            self.headers.push(header);
        }
        let mut queued = 0;
        {
            let mut sq = self.ring.submission();
            for (i, &(_, fd, _)) in self.entries.iter().enumerate() {
                let entry = opcode::SendMsg::new(types::Fd(fd), &raw const self.headers[i])
                    .flags((libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL) as u32)
                    .build()
                    .user_data(i as u64);
                // SAFETY: the header and the iovecs and frames it points at
                // live until every completion is reaped below.
                if unsafe { sq.push(&entry) }.is_err() {
                    break;
                }
                queued += 1;
            }
        }
        let results = &mut self.results;
        results.clear();
        results.resize_with(count, || None);
        let mut reaped = 0;
        let mut failed = None;
        while reaped < queued {
            if let Err(e) = self.ring.submit_and_wait(queued - reaped) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                // The ring itself failed: nothing more can be known of the
                // sends, so every unreported socket gets the error.
                failed = Some(e);
                break;
            }
            for cqe in self.ring.completion() {
                let i = cqe.user_data() as usize;
                let result = cqe.result();
                if let Some(slot) = results.get_mut(i) {
                    *slot = Some(if result < 0 {
                        Err(io::Error::from_raw_os_error(-result))
                    } else {
                        Ok(result as usize)
                    });
                    reaped += 1;
                }
            }
        }
        for (i, &(key, _, _)) in self.entries.iter().enumerate() {
            let result = match results[i].take() {
                Some(result) => result,
                // Not queued (the submission queue was full, which the
                // batch's size rules out): nothing was sent.
                None if i >= queued => Err(io::ErrorKind::WouldBlock.into()),
                None => Err(failed.as_ref().map_or_else(
                    || io::ErrorKind::Other.into(),
                    |e| io::Error::new(e.kind(), e.to_string()),
                )),
            };
            done(key, result);
        }
        self.results.clear();
        self.clear();
        failed.is_none()
    }
}

#[cfg(test)]
mod tests {
    use std::{io::Read, os::fd::AsRawFd, os::unix::net::UnixStream};

    use super::*;

    fn pair() -> (UnixStream, UnixStream) {
        let (a, b) = UnixStream::pair().expect("socketpair");
        a.set_nonblocking(true).expect("non-blocking");
        b.set_nonblocking(true).expect("non-blocking");
        (a, b)
    }

    fn drain(peer: &mut UnixStream) -> Vec<u8> {
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        while let Ok(n) = peer.read(&mut buf) {
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
        }
        got
    }

    #[test]
    fn each_socket_gets_its_frames_in_order_and_a_full_one_says_so() {
        let Ok(mut ring) = SendRing::new(8) else {
            // io_uring refused here (disabled or filtered): the shard
            // writes with writev, which the other tests cover.
            return;
        };
        let (a, mut a_peer) = pair();
        let (b, mut b_peer) = pair();
        let (full, mut full_peer) = pair();
        // Fill `full` until the kernel takes no more.
        let chunk = [7u8; 4096];
        let mut filled = 0;
        while let Ok(n) = sock_write(full.as_raw_fd(), &chunk) {
            filled += n;
        }
        let a_frames = [Bytes::from_static(b"one "), Bytes::new(), Bytes::from_static(b"two")];
        let b_frames = [Bytes::from_static(b"three")];
        let full_frames = [Bytes::from_static(b"lost?")];
        assert!(ring.add(1, a.as_raw_fd(), a_frames.iter()));
        assert!(!ring.add(9, b.as_raw_fd(), [Bytes::new()].iter()), "nothing to send");
        assert!(ring.add(2, b.as_raw_fd(), b_frames.iter()));
        assert!(ring.add(3, full.as_raw_fd(), full_frames.iter()));
        let mut reported = Vec::new();
        assert!(ring.submit(|key, result| reported.push((key, result.map_err(|e| e.kind())))));
        assert_eq!(reported, vec![(1, Ok(7)), (2, Ok(5)), (3, Err(io::ErrorKind::WouldBlock))],);
        assert_eq!(ring.len(), 0, "the batch is empty again");
        assert_eq!(drain(&mut a_peer), b"one two");
        assert_eq!(drain(&mut b_peer), b"three");
        assert_eq!(drain(&mut full_peer).len(), filled, "only the filler arrived");
    }

    #[test]
    fn a_send_to_a_gone_peer_is_reported_as_its_error() {
        let Ok(mut ring) = SendRing::new(8) else { return };
        let (a, mut a_peer) = pair();
        let (gone, gone_peer) = pair();
        drop(gone_peer);
        let frames = [Bytes::from_static(b"hello")];
        assert!(ring.add(1, gone.as_raw_fd(), frames.iter()));
        assert!(ring.add(2, a.as_raw_fd(), frames.iter()));
        let mut reported = Vec::new();
        assert!(ring.submit(|key, result| reported.push((key, result.map_err(|e| e.kind())))));
        assert_eq!(reported, vec![(1, Err(io::ErrorKind::BrokenPipe)), (2, Ok(5))]);
        assert_eq!(drain(&mut a_peer), b"hello", "the other socket is not held up");
    }

    #[test]
    fn a_batch_holds_at_most_its_sockets_and_iovecs() {
        let Ok(mut ring) = SendRing::new(8) else { return };
        let (a, mut a_peer) = pair();
        let frames: Vec<Bytes> = (0..MAX_IOVECS + 5).map(|i| Bytes::from(vec![i as u8])).collect();
        for key in 0..8 {
            assert!(ring.add(key, a.as_raw_fd(), frames.iter().take(1)));
        }
        assert!(!ring.add(99, a.as_raw_fd(), frames.iter()), "full");
        ring.clear();
        assert!(ring.add(0, a.as_raw_fd(), frames.iter()));
        let mut sent = 0;
        assert!(ring.submit(|_, result| sent = result.expect("room")));
        assert_eq!(sent, MAX_IOVECS, "the frames past the limit wait for the next write");
        assert_eq!(drain(&mut a_peer).len(), MAX_IOVECS);
    }

    fn sock_write(fd: RawFd, bytes: &[u8]) -> io::Result<usize> {
        super::super::sock::writev(fd, std::iter::once(&Bytes::copy_from_slice(bytes)))
    }
}
