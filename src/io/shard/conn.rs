//! One socket as the shard's event loop holds it: a slab entry with the
//! stream, its TLS session if any, the bytes read but not yet consumed,
//! the HTTP bytes not yet written, and the phase it is in. There is no
//! task and no future per connection; the loop (`event_loop`)
//! moves each one along when the poller, the rings, a timer or the
//! protocol state says it has something to do.
//!
//! The phases, in the order a connection goes through them:
//!
//! ```text
//!   Http ──request──► Http            (keep-alive)
//!     │  └──query / long-poll──► Api / Poll ──answer──► Http
//!     │  └──xhr_streaming / xhr──► Xhr ──poll answered, or stream closed──► Http
//!     │  └──a session another shard owns──► handed to that shard (Http there)
//!     ├──upgrade──► Pusher / Incus / Console ──close frame written──► Lingering ──► closed
//!     └──refused upgrade──► Finishing ──written──► Lingering ──► closed
//! ```

use std::{
    io,
    net::TcpStream,
    os::fd::{AsRawFd, RawFd},
};

use bytes::{Buf, Bytes, BytesMut};

use super::sock::{Link, ReadOutcome};
use crate::{
    core::{AppIdx, ConnKey, Tick},
    proto::{
        console::ViewerKey,
        incus::SockKey,
        rest::api::Pending,
        ws::{
            codec::Decoder,
            outbox::{Consumed, Outbox},
        },
    },
};

/// Reads in a row from one socket before other sockets get a turn.
pub const READS_PER_TURN: usize = 4;

/// What a connection is doing.
#[derive(Debug)]
pub enum Phase {
    /// Reading HTTP requests (keep-alive), or writing a response.
    Http,
    /// An HTTP API request waits for node-wide answers.
    Api {
        /// What it waits for; boxed, as the largest variant would make
        /// every connection's phase as large.
        pending: Box<Pending>,
        /// Whether the request allows another one after it.
        keep_alive: bool,
    },
    /// An Incus long-poll waits for its owner's answer.
    Poll {
        /// The poll's id on this shard's Incus state.
        id: u64,
        /// Whether the request allows another one after it.
        keep_alive: bool,
    },
    /// A Pusher WebSocket.
    Pusher {
        /// The connection in the shard's Pusher state.
        key: ConnKey,
        /// Frames in progress.
        decoder: Decoder,
    },
    /// An Incus WebSocket (`/socket`).
    Incus {
        /// The socket in the shard's Incus state.
        key: SockKey,
        /// Frames in progress.
        decoder: Decoder,
    },
    /// A debug console viewer's WebSocket (`/console/stream`).
    Console {
        /// The viewer in the shard's console viewers.
        key: ViewerKey,
        /// Frames in progress.
        decoder: Decoder,
    },
    /// A request of an HTTP-transport session (pusher-js's `xhr_streaming`
    /// or `xhr` poll) attached to carry the session's frames out.
    Xhr {
        /// The session's slot in the shard's sessions.
        slot: u32,
        /// A streaming response (else a poll, answered once).
        streaming: bool,
        /// The open frame is still to go out first.
        open: bool,
        /// Body bytes a stream has carried, against
        /// [`crate::proto::pusher::xhr::STREAM_LIMIT`].
        sent: usize,
        /// Whether the request allows another one after it.
        keep_alive: bool,
    },
    /// Writing a last reply (a refused upgrade), then lingering.
    Finishing,
    /// Our side is shut (FIN sent): input is read and dropped until the
    /// peer's FIN or the linger deadline, so that unread input does not
    /// make the kernel answer with a reset that destroys our last bytes.
    Lingering,
}

/// Which connection count to give back when the socket closes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admitted {
    /// Not counted (plain HTTP).
    No,
    /// A Pusher WebSocket of this app.
    App(AppIdx),
    /// An Incus socket, counted against the node only.
    Node,
}

/// One socket of the shard.
pub struct Conn {
    /// The socket; dropping it closes the descriptor and removes it from
    /// the poller.
    pub stream: TcpStream,
    /// Tells this connection from an earlier one in the same slab slot.
    pub generation: u32,
    /// Plain, or TLS over the socket.
    pub link: Link,
    /// Received bytes not yet consumed: a partial request or frame. Empty
    /// (and unallocated) while the connection is idle.
    pub inbuf: InBuf,
    /// HTTP bytes not yet written (a response, a handshake reply).
    pub out: OutBytes,
    /// Close the socket once `out` is written (a `Connection: close`
    /// response, an error before the upgrade).
    pub close_after_write: bool,
    /// The phase.
    pub phase: Phase,
    /// Input may be waiting unread (the poller is edge-triggered, so this
    /// stays set until a read says `EAGAIN`).
    pub readable: bool,
    /// The poller said the peer shut its side (or the socket failed), so a
    /// short read is no sign that input ended: read on until end of file.
    pub peer_closed: bool,
    /// The last write hit `EAGAIN`; the next one waits for the poller.
    pub write_blocked: bool,
    // Times are ticks, not `Instant`s: 4 bytes with the option instead of
    // 16, in every idle connection (issue #14).
    /// Since when writes have been blocked without progress, for the
    /// write deadline.
    pub stalled_since: Option<Tick>,
    /// The phase's own deadline: the request's idle time, the long-poll's
    /// limit, the linger's end.
    pub phase_deadline: Option<Tick>,
    /// The deadline in the timer heap, if any; entries that do not match
    /// it are stale.
    pub armed: Option<Tick>,
    /// What to give back to the admission counts at close.
    pub admitted: Admitted,
}

/// A socket between requests, moving to another shard (the owner of the
/// HTTP-transport session its next request names): what the other shard's
/// loop needs to go on serving it.
pub struct Handoff {
    /// The socket.
    pub stream: TcpStream,
    /// Plain, or its TLS session.
    pub link: Link,
    /// Received bytes not yet consumed, the request among them.
    pub inbuf: InBuf,
}

/// Received bytes not yet consumed. A pointer, not a 32-byte `BytesMut`,
/// in every connection (issue #14); the block exists only while bytes
/// wait, and goes back to the shard's [`SpareInBufs`] when they are used.
/// (A `ThinVec<u8>`, one allocation instead of two, appends byte by byte:
/// about 2,200 instructions more per connect by callgrind.)
#[derive(Debug, Default)]
pub struct InBuf(Option<Box<BytesMut>>);

impl InBuf {
    /// Appends `bytes`, taking a block from `spare` if none is held.
    pub fn extend_from_slice(&mut self, bytes: &[u8], spare: &mut SpareInBufs) {
        if bytes.is_empty() {
            return;
        }
        self.0.get_or_insert_with(|| spare.take()).extend_from_slice(bytes);
    }

    /// Drops `n` consumed bytes from the front; once none wait, the block
    /// goes to `spare`.
    pub fn consume(&mut self, n: usize, spare: &mut SpareInBufs) {
        if let Some(bytes) = &mut self.0 {
            if n < bytes.len() {
                bytes.advance(n);
            } else if let Some(block) = self.0.take() {
                spare.give(block);
            }
        }
    }

    /// Drops every byte waiting.
    pub fn clear(&mut self) {
        self.0 = None;
    }
}

impl std::ops::Deref for InBuf {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        self.0.as_deref().map_or(&[], |bytes| &bytes[..])
    }
}

impl std::ops::DerefMut for InBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        self.0.as_deref_mut().map_or(&mut [], |bytes| &mut bytes[..])
    }
}

/// Input blocks that connections gave back, for the next ones to fill: a
/// connect reads twice (its request, then its subscribe) and an API request
/// once, and each read used to allocate a block and its buffer and free
/// both when the bytes were used. A few are kept, small ones only, so what
/// the shard holds stays small whatever its traffic was.
#[derive(Debug, Default)]
#[expect(clippy::vec_box, reason = "the boxes are what is reused, with their buffers")]
pub struct SpareInBufs(Vec<Box<BytesMut>>);

impl SpareInBufs {
    /// Blocks kept at most.
    const KEPT: usize = 32;
    /// Largest buffer kept, in bytes: a request head or a few frames.
    const KEPT_CAPACITY: usize = 4096;

    fn take(&mut self) -> Box<BytesMut> {
        self.0.pop().unwrap_or_default()
    }

    fn give(&mut self, mut block: Box<BytesMut>) {
        if self.0.len() >= Self::KEPT {
            return;
        }
        block.clear();
        // `capacity` counts only what lies past a consumed front, which the
        // next append takes back without allocating (the block owns its
        // buffer alone). Whether the whole buffer is larger than kept is
        // what reclaiming more than that would tell: it succeeds only then,
        // and changes nothing when it fails.
        if !block.try_reclaim(Self::KEPT_CAPACITY + 1) {
            self.0.push(block);
        }
    }
}

/// One bit per slab key: which sockets were read since they were last
/// written (see `ShardLoop::write`). Kept beside the slab, not in each
/// socket, whose entry is in every idle connection's bytes (issue #14).
#[derive(Debug, Default)]
pub struct KeyMarks(Vec<u64>);

impl KeyMarks {
    /// Marks `key`.
    pub fn set(&mut self, key: u32) {
        let (word, bit) = (key as usize / 64, key % 64);
        if word >= self.0.len() {
            self.0.resize(word + 1, 0);
        }
        self.0[word] |= 1 << bit;
    }

    /// Whether `key` was marked; unmarks it.
    pub fn take(&mut self, key: u32) -> bool {
        let (word, bit) = (key as usize / 64, key % 64);
        let Some(w) = self.0.get_mut(word) else { return false };
        let was = *w & (1 << bit) != 0;
        *w &= !(1 << bit);
        was
    }
}

/// HTTP bytes waiting to be written. A pointer, not a 32-byte `Bytes`, in
/// every connection (issue #14): an upgraded connection has none once its
/// handshake reply is out, and an HTTP one only until its answer is.
#[derive(Debug, Default)]
pub struct OutBytes(Option<Box<Bytes>>);

impl OutBytes {
    /// Replaces what waits with `bytes`.
    pub fn set(&mut self, bytes: Bytes) {
        self.0 = (!bytes.is_empty()).then(|| Box::new(bytes));
    }

    /// The bytes waiting, if any.
    pub fn get(&self) -> Option<&Bytes> {
        self.0.as_deref()
    }

    /// How many bytes wait.
    pub fn len(&self) -> usize {
        self.0.as_ref().map_or(0, |b| b.len())
    }

    /// Whether nothing waits.
    pub fn is_empty(&self) -> bool {
        self.0.is_none()
    }

    /// Drops `n` written bytes from the front, and the block once none wait.
    pub fn advance(&mut self, n: usize) {
        advance_boxed(&mut self.0, n);
    }
}

/// Drops `n` bytes from the front of a boxed buffer, and the box once it
/// is empty, so that an idle connection holds no block.
fn advance_boxed<B: Buf>(slot: &mut Option<Box<B>>, n: usize) {
    if let Some(bytes) = slot.as_mut() {
        if n >= bytes.remaining() {
            *slot = None;
        } else {
            bytes.advance(n);
        }
    }
}

/// How far a write got.
#[derive(Debug, PartialEq, Eq)]
pub enum Written {
    /// Everything pending is written.
    Done,
    /// The socket took what it could; wait for it.
    Blocked,
}

impl Conn {
    /// A freshly accepted socket.
    pub fn new(stream: TcpStream, generation: u32, link: Link) -> Self {
        Self {
            stream,
            generation,
            link,
            inbuf: InBuf::default(),
            out: OutBytes::default(),
            close_after_write: false,
            phase: Phase::Http,
            readable: false,
            peer_closed: false,
            write_blocked: false,
            stalled_since: None,
            phase_deadline: None,
            armed: None,
            admitted: Admitted::No,
        }
    }

    /// The socket's descriptor.
    pub fn fd(&self) -> RawFd {
        self.stream.as_raw_fd()
    }

    /// Reads what the socket has, at most [`READS_PER_TURN`] times, into
    /// `inbuf` through the shard's shared `scratch` buffer. Returns whether
    /// the peer ended its side (or the socket failed).
    pub fn read_some(&mut self, scratch: &mut [u8], spare: &mut SpareInBufs) -> bool {
        let fd = self.fd();
        for _ in 0..READS_PER_TURN {
            match self.link.read(fd, scratch) {
                Ok(ReadOutcome::Data(n)) => {
                    self.inbuf.extend_from_slice(&scratch[..n], spare);
                    // A plain socket that gave less than was asked for is
                    // empty: input that comes later raises a new edge (the
                    // poller's wake-up runs for every arrival), so the read
                    // that would only say `EAGAIN` is skipped, one system
                    // call per request or frame. Not so once the peer shut
                    // its side, whose end of file no later edge announces,
                    // nor for TLS, whose plaintext says nothing of the socket.
                    if n < scratch.len() && !self.peer_closed && !self.link.is_tls() {
                        self.readable = false;
                        return false;
                    }
                }
                Ok(ReadOutcome::WouldBlock) => {
                    self.readable = false;
                    return false;
                }
                Ok(ReadOutcome::Eof) | Err(_) => {
                    self.readable = false;
                    return true;
                }
            }
        }
        // Stopped early: more may wait, and the edge will not come again.
        false
    }

    /// Drops `n` consumed bytes from the front of `inbuf`, and gives its
    /// buffer to `spare` once it is empty, so that an idle connection holds
    /// none.
    pub fn consumed(&mut self, n: usize, spare: &mut SpareInBufs) {
        self.inbuf.consume(n, spare);
    }

    /// Writes `out` (HTTP bytes) as far as the socket takes it; returns how
    /// many bytes left and whether anything is still waiting.
    pub fn write_out(&mut self) -> io::Result<(usize, Written)> {
        let fd = self.fd();
        let mut written = 0;
        while let Some(out) = self.out.get() {
            let n = self.link.write(fd, std::iter::once(out))?;
            if n == 0 {
                return Ok((written, Written::Blocked));
            }
            written += n;
            self.out.advance(n);
        }
        let done = if self.link.flush(fd)? { Written::Done } else { Written::Blocked };
        Ok((written, done))
    }

    /// Writes the outbox's frames as far as the socket takes them, with
    /// one vectored write per call of the link; returns how many bytes
    /// left, the deliveries now written whole, and whether anything is
    /// still waiting.
    pub fn write_outbox(&mut self, outbox: &mut Outbox) -> io::Result<(usize, Consumed, Written)> {
        let fd = self.fd();
        let mut written = 0;
        let mut consumed = Consumed::default();
        loop {
            if outbox.is_empty() {
                let done = if self.link.flush(fd)? { Written::Done } else { Written::Blocked };
                return Ok((written, consumed, done));
            }
            let n = self.link.write(fd, outbox.frames())?;
            if n == 0 {
                return Ok((written, consumed, Written::Blocked));
            }
            written += n;
            consumed.add(outbox.consume(n));
        }
    }

    /// Whether bytes wait to be written outside any outbox.
    pub fn has_out(&self) -> bool {
        !self.out.is_empty() || self.link.has_pending()
    }
}

/// Completes when the peer has closed its side (or the socket failed),
/// without consuming anything: `Some(true)` for gone, `Some(false)` for
/// data waiting (a pipelined request, or TLS records), `None` for nothing.
pub fn peek_gone(fd: RawFd) -> Option<bool> {
    let mut byte = 0u8;
    // SAFETY: one writable byte; MSG_PEEK leaves the data in the socket.
    let n =
        unsafe { libc::recv(fd, (&raw mut byte).cast(), 1, libc::MSG_PEEK | libc::MSG_DONTWAIT) };
    match n {
        0 => Some(true),
        n if n > 0 => Some(false),
        _ => {
            let err = io::Error::last_os_error().kind();
            if matches!(err, io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted) {
                None
            } else {
                Some(true)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A socket's slab entry is in every idle connection's bytes (issue #14).
    #[test]
    fn a_socket_stays_small() {
        use std::mem::size_of;
        eprintln!(
            "Conn {} Phase {} Link {}",
            size_of::<Conn>(),
            size_of::<Phase>(),
            size_of::<Link>()
        );
        assert!(size_of::<Conn>() <= 80, "Conn: {}", size_of::<Conn>());
        assert!(size_of::<Phase>() <= 24, "Phase: {}", size_of::<Phase>());
    }

    #[test]
    fn key_marks_are_taken_once() {
        let mut marks = KeyMarks::default();
        assert!(!marks.take(5), "nothing marked");
        for key in [0, 63, 64, 1000] {
            marks.set(key);
        }
        assert!(!marks.take(1), "a neighbour of marked keys");
        for key in [0, 63, 64, 1000] {
            assert!(marks.take(key), "{key}");
            assert!(!marks.take(key), "{key} taken twice");
        }
        assert!(!marks.take(u32::MAX), "far past the end");
    }

    #[test]
    fn used_input_blocks_serve_the_next_reads() {
        let mut spare = SpareInBufs::default();
        let mut first = InBuf::default();
        first.extend_from_slice(b"GET / HTTP/1.1\r\n\r\n", &mut spare);
        first.extend_from_slice(b"more", &mut spare);
        let block: *const BytesMut = &**first.0.as_ref().expect("a block");
        first.consume(6, &mut spare);
        assert_eq!(&*first, b"HTTP/1.1\r\n\r\nmore", "a partial consume keeps the rest");
        assert!(spare.0.is_empty());
        first.consume(first.len(), &mut spare);
        assert!(first.0.is_none(), "an idle connection holds no block");
        assert_eq!(spare.0.len(), 1);

        // The next connection's read fills the same block and buffer, from
        // its start again.
        let mut second = InBuf::default();
        let text = [b'x'; 24];
        second.extend_from_slice(&text, &mut spare);
        assert_eq!(&*second, &text[..]);
        assert!(std::ptr::eq(block, &**second.0.as_ref().expect("a block")));
        assert!(spare.0.is_empty());

        // A block whose buffer grew past the kept size is freed instead.
        second.extend_from_slice(&[b'y'; SpareInBufs::KEPT_CAPACITY], &mut spare);
        second.consume(10, &mut spare);
        second.consume(second.len(), &mut spare);
        assert!(spare.0.is_empty(), "a large buffer is not kept");

        // And no more than KEPT blocks are.
        let mut many: Vec<InBuf> = (0..SpareInBufs::KEPT + 5).map(|_| InBuf::default()).collect();
        for buf in &mut many {
            buf.extend_from_slice(b"frame", &mut SpareInBufs::default());
        }
        for buf in &mut many {
            buf.consume(5, &mut spare);
        }
        assert_eq!(spare.0.len(), SpareInBufs::KEPT);
    }
}
