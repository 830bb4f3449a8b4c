//! Frames waiting to be written to one WebSocket, whatever protocol queued
//! them (Pusher's shard core or Incus's state): bounded, refcounted frames
//! and a close that ends the stream.
//!
//! The writer is not woken per frame. An outbox that gains something while
//! its writer has not looked puts its token (the IO layer's handle for the
//! socket) on a [`Dirty`] list once; the shard's event loop takes that list
//! after each batch of work and writes each socket on it with one vectored
//! write. A publish to 10,000 subscribers so costs 10,000 pushes onto one
//! `Vec`, and a socket that gets 50 frames in a turn is listed once.

use bytes::Bytes;
use thin_vec::ThinVec;

use crate::core::CloseCode;

/// Tokens of the outboxes that gained frames (or a close) since the
/// writer last took them, each listed once.
#[derive(Debug, Default)]
pub struct Dirty(Vec<u32>);

impl Dirty {
    /// Moves the listed tokens into `into` (emptied first), leaving this list
    /// empty; the two buffers swap, so neither allocates in steady state.
    pub fn take(&mut self, into: &mut Vec<u32>) {
        into.clear();
        std::mem::swap(&mut self.0, into);
    }

    /// Whether nothing is listed.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// One frame waiting, and whether it counts as a delivery when written.
#[derive(Debug)]
struct Queued {
    frame: Bytes,
    delivery: bool,
    /// Bytes of the frame already written (it was cut at a write's end).
    sent: usize,
}

impl Queued {
    fn sent_before(&self) -> u64 {
        self.sent as u64
    }
}

/// What a write took off the front of an outbox.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Consumed {
    /// Event frames written to the end (deliveries to count).
    pub deliveries: u64,
    /// Their bytes, frame headers included.
    pub delivered_bytes: u64,
}

impl Consumed {
    /// Adds another write's count.
    pub fn add(&mut self, other: Consumed) {
        self.deliveries += other.deliveries;
        self.delivered_bytes += other.delivered_bytes;
    }
}

/// Frames taken off the front of a queue are compacted away once they are
/// at least this many and half of it.
const COMPACT_FRONT: usize = 16;

/// Frames waiting to be written to one connection.
///
/// The queue is a `ThinVec` read from `head`, not a `VecDeque`: one word
/// where a `VecDeque` is four, in every connection (issue #14). The
/// vector's length and capacity live in its block, beside the frames the
/// writer reads anyway. A write that takes everything empties it in one
/// `clear`; a frame taken off the front of the rest leaves an empty
/// [`Queued`] behind (its bytes are released at once) until the queue
/// empties, which resets it, or the taken ones are at least
/// [`COMPACT_FRONT`] and half of it, which moves the rest to the front.
#[derive(Debug)]
pub struct Outbox {
    queue: ThinVec<Queued>,
    /// Frames before this index are taken. 32 bits: a queue of 2^32 frames
    /// would hold hundreds of gigabytes.
    head: u32,
    /// The IO layer's handle for this socket, put on the [`Dirty`] list.
    token: u32,
    queued_bytes: usize,
    /// Already on the [`Dirty`] list; cleared by [`Outbox::unlist`].
    listed: bool,
    /// The front frame was partly written; it must be finished first.
    front_started: bool,
    /// A delivery was written since the last tick
    /// ([`Outbox::release_idle_capacity`]).
    delivered: bool,
    /// The socket's last write stopped at `EAGAIN` ([`Outbox::set_writer_blocked`]).
    writer_blocked: bool,
    closing: Option<CloseCode>,
}

impl Outbox {
    /// An empty outbox for the socket the IO layer knows as `token`.
    pub fn new(token: u32) -> Self {
        Self {
            queue: ThinVec::new(),
            head: 0,
            queued_bytes: 0,
            token,
            listed: false,
            front_started: false,
            delivered: false,
            writer_blocked: false,
            closing: None,
        }
    }

    /// Tells the outbox whether its socket's last write stopped at `EAGAIN`
    /// (the IO layer's view): see [`Outbox::push_unless_slow`].
    pub fn set_writer_blocked(&mut self, blocked: bool) {
        self.writer_blocked = blocked;
    }

    /// The IO layer's handle for this socket.
    pub fn token(&self) -> u32 {
        self.token
    }

    /// Marks the outbox as seen by its writer: the next frame lists it again.
    pub fn unlist(&mut self) {
        self.listed = false;
    }

    /// Frames to write, oldest first. Pass the number of bytes the socket
    /// took to [`Outbox::consume`].
    pub fn frames(&self) -> impl Iterator<Item = &Bytes> {
        self.waiting().iter().map(|q| &q.frame)
    }

    /// Whether nothing is waiting.
    pub fn is_empty(&self) -> bool {
        self.queue.len() == self.head as usize
    }

    fn waiting(&self) -> &[Queued] {
        self.queue.get(self.head as usize..).unwrap_or_default()
    }

    /// Takes the frames before `end` off the front, written.
    fn take_front(&mut self, end: usize) {
        if end >= self.queue.len() {
            self.queue.clear();
            self.head = 0;
            return;
        }
        for q in &mut self.queue[self.head as usize..end] {
            // Releases the frame's bytes now; the slot stays until the
            // queue empties or is compacted.
            q.frame = Bytes::new();
        }
        if end >= COMPACT_FRONT && 2 * end >= self.queue.len() {
            self.queue.drain(..end);
            self.head = 0;
        } else {
            // At most the queue's length, which a queue of 2^32 frames
            // (hundreds of gigabytes) would pass first.
            self.head = end as u32;
        }
    }

    fn pop_back(&mut self) -> Option<Queued> {
        if self.is_empty() {
            return None;
        }
        let back = self.queue.pop();
        if self.is_empty() {
            self.queue.clear();
            self.head = 0;
        }
        back
    }

    /// Bytes waiting.
    pub fn queued_bytes(&self) -> usize {
        self.queued_bytes
    }

    /// Drops `written` bytes from the front; returns the deliveries among
    /// the frames that are now written whole, which is when a delivery is
    /// counted (a frame cut off by a slow consumer's close never is).
    pub fn consume(&mut self, mut written: usize) -> Consumed {
        self.queued_bytes -= written;
        let mut done = Consumed::default();
        // Count the frames written whole, then let them go together: a
        // socket that took everything empties the queue in one `clear`.
        let start = self.head as usize;
        let mut end = start;
        let mut cut = false;
        while written > 0 {
            let Some(q) = self.queue.get_mut(end) else { break };
            if written >= q.frame.len() {
                written -= q.frame.len();
                if q.delivery {
                    done.deliveries += 1;
                    done.delivered_bytes += q.frame.len() as u64 + q.sent_before();
                }
                end += 1;
            } else {
                bytes::Buf::advance(&mut q.frame, written);
                q.sent += written;
                cut = true;
                written = 0;
            }
        }
        if end > start {
            self.take_front(end);
            self.front_started = false;
        }
        if cut {
            self.front_started = true;
        }
        self.delivered |= done.deliveries > 0;
        done
    }

    /// `Some(code)` once the connection is closing: everything queued
    /// (ending with the close frame) is still written, nothing new is added.
    pub fn closing(&self) -> Option<CloseCode> {
        self.closing
    }

    /// Queues a control frame (a reply, an error, a ping); gives it back
    /// when it would pass `limit` bytes.
    pub(crate) fn push(
        &mut self,
        frame: Bytes,
        limit: usize,
        dirty: &mut Dirty,
    ) -> Result<(), Bytes> {
        self.enqueue(frame, false, limit, dirty)
    }

    /// Queues a frame (a delivery when `delivery`), past `limit` too unless
    /// the socket is blocked. A full outbox whose socket took everything
    /// it was given is not a slow subscriber's: its shard has not written
    /// it yet, because publishers outpace the shard's writes. Closing such
    /// subscribers would punish the ones keeping up; instead the frame is
    /// kept and `Ok(true)` tells the caller to shed new work until the
    /// writes catch up. `Err` is a slow subscriber's outbox, full while its
    /// socket is.
    pub(crate) fn push_unless_slow(
        &mut self,
        frame: Bytes,
        delivery: bool,
        limit: usize,
        dirty: &mut Dirty,
    ) -> Result<bool, Bytes> {
        match self.enqueue(frame, delivery, limit, dirty) {
            Ok(()) => Ok(false),
            Err(frame) if self.writer_blocked => Err(frame),
            Err(frame) => self.enqueue(frame, delivery, usize::MAX, dirty).map(|()| true),
        }
    }

    fn enqueue(
        &mut self,
        frame: Bytes,
        delivery: bool,
        limit: usize,
        dirty: &mut Dirty,
    ) -> Result<(), Bytes> {
        if self.closing.is_some() {
            return Ok(());
        }
        if self.queued_bytes.saturating_add(frame.len()) > limit {
            return Err(frame);
        }
        self.queued_bytes += frame.len();
        self.queue.push(Queued { frame, delivery, sent: 0 });
        self.list(dirty);
        Ok(())
    }

    /// Ends the stream with `frames` (bypassing the size limit) and marks the
    /// outbox closing. Unstarted frames are dropped when `discard` is set.
    pub(crate) fn close(
        &mut self,
        code: CloseCode,
        discard: bool,
        frames: &[Bytes],
        dirty: &mut Dirty,
    ) {
        if self.closing.is_some() {
            return;
        }
        if discard {
            let keep = usize::from(self.front_started);
            while self.waiting().len() > keep {
                if let Some(q) = self.pop_back() {
                    self.queued_bytes -= q.frame.len();
                }
            }
        }
        for f in frames {
            self.queued_bytes += f.len();
            self.queue.push(Queued { frame: f.clone(), delivery: false, sent: 0 });
        }
        self.closing = Some(code);
        self.list(dirty);
    }

    /// At a tick: gives back the queue's capacity if nothing is queued and
    /// no delivery went out since the last tick, then starts counting anew.
    /// An outbox keeps its capacity between frames so that subscribers do
    /// not allocate per frame: one that hears about once a second (a
    /// channel of a sparse app) would otherwise give its queue back at
    /// every tick and take a new one with the next event.
    pub(crate) fn release_idle_capacity(&mut self) {
        self.release_unless_delivering();
        self.delivered = false;
    }

    /// Gives back the queue's capacity if nothing is queued and no delivery
    /// went out since the last tick: an outbox that carried only
    /// control frames (the handshake, a subscription's answer, a ping) is
    /// an idle connection's, and need not hold its queue until the tick;
    /// one that carries deliveries keeps it, so that a busy subscriber does
    /// not allocate per write. Whichever way the bytes left (one socket's
    /// `writev` or the shard's send ring), [`Outbox::consume`] saw them.
    pub fn release_unless_delivering(&mut self) {
        if !self.delivered && self.is_empty() && self.queue.capacity() > 0 {
            self.queue = ThinVec::new();
            self.head = 0;
        }
    }

    /// Capacity of the queue, for tests of the idle release.
    #[cfg(test)]
    pub(crate) fn capacity(&self) -> usize {
        self.queue.capacity()
    }

    fn list(&mut self, dirty: &mut Dirty) {
        if !self.listed {
            self.listed = true;
            dirty.0.push(self.token);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(outbox: &mut Outbox, dirty: &mut Dirty, delivery: bool) {
        for _ in 0..4 {
            let frame = Bytes::from_static(b"0123456789");
            assert_eq!(outbox.push_unless_slow(frame, delivery, 1 << 20, dirty), Ok(false));
        }
    }

    #[test]
    fn only_an_outbox_that_carried_no_delivery_gives_its_queue_back_once_written() {
        let mut dirty = Dirty::default();
        let mut outbox = Outbox::new(7);
        frames(&mut outbox, &mut dirty, false);
        assert_eq!(outbox.consume(40).deliveries, 0);
        outbox.release_unless_delivering();
        assert_eq!(outbox.capacity(), 0, "control frames only: an idle connection's queue");

        frames(&mut outbox, &mut dirty, true);
        // Written in two parts, as by the send ring then the socket's own
        // write: what counts is what the outbox saw, not the last write.
        assert_eq!(outbox.consume(25).deliveries, 2);
        assert_eq!(outbox.consume(15).deliveries, 2);
        outbox.release_unless_delivering();
        assert!(outbox.capacity() > 0, "a subscriber that carries deliveries keeps its queue");

        // A tick with a delivery since the last keeps it; the next gives it
        // back and starts over.
        outbox.release_idle_capacity();
        assert!(outbox.capacity() > 0, "it delivered within the last tick");
        outbox.release_idle_capacity();
        assert_eq!(outbox.capacity(), 0, "a whole tick without a delivery");
        frames(&mut outbox, &mut dirty, false);
        outbox.consume(40);
        outbox.release_unless_delivering();
        assert_eq!(outbox.capacity(), 0, "after the tick, control frames alone release it again");
    }

    #[derive(Debug, Clone)]
    enum Op {
        Push {
            len: usize,
            delivery: bool,
        },
        /// Write this share (in 1/256ths) of what is queued.
        Write {
            share: usize,
        },
        Close {
            discard: bool,
        },
        Tick,
    }

    fn op() -> impl proptest::strategy::Strategy<Value = Op> {
        use proptest::prelude::*;
        prop_oneof![
            6 => (1usize..40, any::<bool>()).prop_map(|(len, delivery)| Op::Push { len, delivery }),
            4 => (0usize..=256).prop_map(|share| Op::Write { share }),
            1 => any::<bool>().prop_map(|discard| Op::Close { discard }),
            1 => Just(Op::Tick),
        ]
    }

    proptest::proptest! {
        /// The queue read from `head` (with its reset, compaction and
        /// trimming at close) behaves as a `VecDeque` of frames would: the
        /// bytes waiting, their count, and the deliveries counted whole.
        #[test]
        fn the_queue_writes_what_a_plain_fifo_would(
            ops in proptest::collection::vec(op(), 1..200),
        ) {
            use std::collections::VecDeque;
            let mut dirty = Dirty::default();
            let mut outbox = Outbox::new(1);
            // The model: (frame bytes left, delivery, started) per frame.
            let mut model: VecDeque<(Vec<u8>, bool, bool)> = VecDeque::new();
            let mut closed = false;
            let mut next = 0u8;
            for op in ops {
                match op {
                    Op::Push { len, delivery } => {
                        let frame: Vec<u8> = (0..len)
                            .map(|_| {
                                next = next.wrapping_add(1);
                                next
                            })
                            .collect();
                        let bytes = Bytes::from(frame.clone());
                        let pushed = outbox.push_unless_slow(bytes, delivery, usize::MAX, &mut dirty);
                        proptest::prop_assert_eq!(pushed, Ok(false));
                        if !closed {
                            model.push_back((frame, delivery, false));
                        }
                    }
                    Op::Write { share } => {
                        let queued: usize = model.iter().map(|(f, ..)| f.len()).sum();
                        let n = queued * share / 256;
                        let mut want = 0;
                        let mut left = n;
                        while left > 0 {
                            let front = model.front_mut().expect("bytes queued");
                            if left >= front.0.len() {
                                left -= front.0.len();
                                want += u64::from(front.1);
                                model.pop_front();
                            } else {
                                front.0.drain(..left);
                                front.2 = true;
                                left = 0;
                            }
                        }
                        proptest::prop_assert_eq!(outbox.consume(n).deliveries, want);
                    }
                    Op::Close { discard } => {
                        if !closed {
                            if discard {
                                let keep = usize::from(model.front().is_some_and(|f| f.2));
                                model.truncate(keep);
                            }
                            model.push_back((vec![0xee, 0x01], false, false));
                            closed = true;
                        }
                        let bye = [Bytes::from_static(&[0xee, 0x01])];
                        outbox.close(CloseCode(4000), discard, &bye, &mut dirty);
                    }
                    Op::Tick => outbox.release_idle_capacity(),
                }
                let got: Vec<u8> = outbox.frames().flat_map(|f| f.iter().copied()).collect();
                let want: Vec<u8> = model.iter().flat_map(|(f, ..)| f.iter().copied()).collect();
                proptest::prop_assert_eq!(&got, &want);
                proptest::prop_assert_eq!(outbox.queued_bytes(), want.len());
                proptest::prop_assert_eq!(outbox.is_empty(), model.is_empty());
                proptest::prop_assert_eq!(outbox.frames().count(), model.len());
                // The taken front never outgrows the frames still waiting by much.
                let taken = outbox.head as usize;
                proptest::prop_assert!(taken < COMPACT_FRONT || 2 * taken < outbox.queue.len());
            }
        }
    }

    /// An outbox is in every connection (issue #14).
    #[test]
    fn an_outbox_is_four_words() {
        assert_eq!(std::mem::size_of::<Outbox>(), 32);
    }
}
