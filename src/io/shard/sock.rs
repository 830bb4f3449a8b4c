//! Socket I/O by readiness: the connection task waits for io_uring (or epoll)
//! to report a socket readable or writable, then moves bytes with plain
//! non-blocking syscalls.
//!
//! Why not io_uring's own read and write operations: a pending read must own
//! its buffer until it completes, so every idle connection would pin one
//! (STACK.md pitfall 6), and cancelling a pending read can lose bytes the
//! kernel already took (pitfall 2). A readiness wait owns nothing and is safe
//! to cancel, so one task per connection can wait for "readable" and "new
//! frames queued" at once, and all connections of a shard share one read
//! buffer. Writes go out as one `writev` over the frames queued since the
//! last write, or, for a turn's plain sockets together, as one `sendmsg`
//! each through the shard's send ring (`send_ring`), which completes them
//! inline and so keeps the same semantics.

use std::{
    io::{self, IoSlice, Read, Write},
    os::fd::RawFd,
    sync::Arc,
};

use bytes::Bytes;
use rustls::{ServerConfig, ServerConnection};

/// Frames passed to one `writev`; Linux allows 1024, and a write of 64
/// frames already fills a socket buffer.
pub const MAX_IOVECS: usize = 64;

/// Plaintext bytes handed to rustls before its output is written, so that a
/// slow TLS peer's backlog stays in our bounded outbox, not in rustls.
const TLS_PENDING_LIMIT: usize = 64 * 1024;

/// `read(2)` on a non-blocking socket.
pub fn read(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: `buf` is valid for `buf.len()` writable bytes.
    let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 { Err(io::Error::last_os_error()) } else { Ok(n as usize) }
}

/// `writev(2)` of `frames` on a non-blocking socket.
pub fn writev<'a>(fd: RawFd, frames: impl Iterator<Item = &'a Bytes>) -> io::Result<usize> {
    let mut slices: [IoSlice<'_>; MAX_IOVECS] = [IoSlice::new(&[]); MAX_IOVECS];
    let mut count = 0;
    for (slot, frame) in slices.iter_mut().zip(frames) {
        *slot = IoSlice::new(frame);
        count += 1;
    }
    if count == 0 {
        return Ok(0);
    }
    // SAFETY: IoSlice is ABI-compatible with iovec, and the first `count`
    // slices borrow live frames.
    let n = unsafe { libc::writev(fd, slices.as_ptr().cast(), count as libc::c_int) };
    if n < 0 { Err(io::Error::last_os_error()) } else { Ok(n as usize) }
}

/// `shutdown(2)`; errors (an already dead socket) are of no interest.
pub fn shutdown(fd: RawFd, how: libc::c_int) {
    // SAFETY: plain syscall on an fd we own.
    unsafe { libc::shutdown(fd, how) };
}

/// The byte stream under the protocol: the socket itself, or TLS over it.
pub enum Link {
    /// Plain TCP.
    Plain,
    /// TLS, with rustls as a sans-IO engine over the same non-blocking socket.
    Tls(Box<ServerConnection>),
}

/// What a read produced.
#[derive(Debug, PartialEq, Eq)]
pub enum ReadOutcome {
    /// `n` plaintext bytes are at the start of the scratch buffer.
    Data(usize),
    /// Nothing now; wait for readiness again.
    WouldBlock,
    /// The peer closed its side.
    Eof,
}

impl Link {
    /// A server-side TLS session, or the reason it could not start.
    pub fn tls(config: &Arc<ServerConfig>) -> Result<Self, rustls::Error> {
        Ok(Link::Tls(Box::new(ServerConnection::new(Arc::clone(config))?)))
    }

    /// Whether this is a TLS link.
    pub fn is_tls(&self) -> bool {
        matches!(self, Link::Tls(_))
    }

    /// Reads what is available into `scratch` as plaintext.
    pub fn read(&mut self, fd: RawFd, scratch: &mut [u8]) -> io::Result<ReadOutcome> {
        match self {
            Link::Plain => match read(fd, scratch) {
                Ok(0) => Ok(ReadOutcome::Eof),
                Ok(n) => Ok(ReadOutcome::Data(n)),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(ReadOutcome::WouldBlock),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(ReadOutcome::WouldBlock),
                Err(e) => Err(e),
            },
            Link::Tls(tls) => read_tls(tls, fd, scratch),
        }
    }

    /// Writes as much of `frames` as the socket takes; returns how many
    /// plaintext bytes were taken (0 with `WouldBlock` pending means wait).
    pub fn write<'a>(
        &mut self,
        fd: RawFd,
        frames: impl Iterator<Item = &'a Bytes>,
    ) -> io::Result<usize> {
        match self {
            Link::Plain => match writev(fd, frames) {
                Ok(n) => Ok(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(0),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(0),
                Err(e) => Err(e),
            },
            Link::Tls(tls) => {
                // Only top rustls up once the socket has taken everything it
                // had, so at most TLS_PENDING_LIMIT waits inside rustls.
                flush_tls(tls, fd)?;
                if tls.wants_write() {
                    return Ok(0);
                }
                let mut taken = 0;
                for frame in frames {
                    if taken >= TLS_PENDING_LIMIT {
                        break;
                    }
                    tls.writer().write_all(frame)?;
                    taken += frame.len();
                }
                flush_tls(tls, fd)?;
                Ok(taken)
            }
        }
    }

    /// Whether bytes are waiting inside the link itself (TLS records rustls
    /// produced but the socket has not taken yet).
    pub fn has_pending(&self) -> bool {
        match self {
            Link::Plain => false,
            Link::Tls(tls) => tls.wants_write(),
        }
    }

    /// Writes bytes waiting inside the link; returns true when none are left.
    pub fn flush(&mut self, fd: RawFd) -> io::Result<bool> {
        match self {
            Link::Plain => Ok(true),
            Link::Tls(tls) => {
                flush_tls(tls, fd)?;
                Ok(!tls.wants_write())
            }
        }
    }
}

struct FdIo(RawFd);

impl Read for FdIo {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        read(self.0, buf)
    }
}

impl Write for FdIo {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        // SAFETY: `buf` is valid for `buf.len()` readable bytes.
        let n = unsafe { libc::write(self.0, buf.as_ptr().cast(), buf.len()) };
        if n < 0 { Err(io::Error::last_os_error()) } else { Ok(n as usize) }
    }

    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        let count = bufs.len().min(MAX_IOVECS);
        // SAFETY: IoSlice is ABI-compatible with iovec.
        let n = unsafe { libc::writev(self.0, bufs.as_ptr().cast(), count as libc::c_int) };
        if n < 0 { Err(io::Error::last_os_error()) } else { Ok(n as usize) }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn flush_tls(tls: &mut ServerConnection, fd: RawFd) -> io::Result<()> {
    while tls.wants_write() {
        match tls.write_tls(&mut FdIo(fd)) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn read_tls(tls: &mut ServerConnection, fd: RawFd, scratch: &mut [u8]) -> io::Result<ReadOutcome> {
    let mut eof = false;
    loop {
        match tls.read_tls(&mut FdIo(fd)) {
            Ok(0) => {
                eof = true;
                break;
            }
            Ok(_) => {
                let state = tls
                    .process_new_packets()
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
                if state.plaintext_bytes_to_read() > 0 {
                    break;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    // Handshake messages and alerts rustls wants to send go out now.
    flush_tls(tls, fd)?;
    match tls.reader().read(scratch) {
        Ok(0) => Ok(ReadOutcome::Eof),
        Ok(n) => Ok(ReadOutcome::Data(n)),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
            Ok(if eof { ReadOutcome::Eof } else { ReadOutcome::WouldBlock })
        }
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(ReadOutcome::Eof),
        Err(e) => Err(e),
    }
}
