//! The only path between threads: bounded SPSC rings, wired once at start-up.
//!
//! Every shard owns one [`Outlet`] to every other shard and one consumer end
//! from every other shard and from each external producer (the control thread,
//! later the Redis bridge). With `n` shards that is `n·(n-1)` shard rings plus
//! `n` per external producer: the cost of a full mesh, paid once.
//!
//! A producer pushes during a batch of work and rings each target's
//! [`Doorbell`] once when the batch ends ([`Outlet::flush`]), not once per
//! message. A full ring never blocks a producer, because blocking a shard on
//! another shard's ring can deadlock two shards that are feeding each other;
//! instead the message waits in the outlet's overflow queue and goes out on the
//! next flush. Callers at the edge (the HTTP API, client events) look at
//! [`Outlet::backlog`] to refuse new work while a target is that far behind,
//! which keeps the overflow bounded.

pub mod fanin;

use std::{
    collections::VecDeque,
    os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
    sync::{
        Arc, OnceLock,
        atomic::{AtomicBool, Ordering, fence},
    },
    task::Waker,
};

use atomic_waker::AtomicWaker;
use rtrb::{Consumer, Producer, RingBuffer};

pub use crate::proto::msg::ShardMsg;

/// Messages a ring holds before producers start queueing in their outlet.
pub const RING_CAPACITY: usize = 16 * 1024;

/// Wakes one consumer thread; shared by all of its producers.
///
/// Two kinds of consumer wait on it. An async task (the Redis bridge, the
/// webhook sender) registers its waker. A shard sleeps in `epoll_wait` on
/// its own readiness set and is woken through an `eventfd` in that set
/// ([`Doorbell::wake_fd`]), which a producer writes only while the shard is
/// parked: one system call per sleep at most, none while it is busy.
#[derive(Default)]
pub struct Doorbell {
    waker: AtomicWaker,
    parked: AtomicBool,
    wake_fd: OnceLock<OwnedFd>,
}

impl Doorbell {
    /// Registers the consumer's waker; call before checking the rings.
    pub fn register(&self, waker: &Waker) {
        self.waker.register(waker);
    }

    /// Wakes the consumer if it is parked. Cheap when it is not.
    pub fn ring(&self) {
        // Without an eventfd the consumer is an async task (or a shard not
        // yet started, which reads its rings on its first turn anyway).
        let Some(fd) = self.wake_fd.get() else {
            self.waker.wake();
            return;
        };
        // Pairs with the fence in `park`: either the consumer sees the
        // message this ring announces, or this sees it parked.
        fence(Ordering::SeqCst);
        if self.parked.load(Ordering::Relaxed) && self.parked.swap(false, Ordering::AcqRel) {
            let one: u64 = 1;
            // SAFETY: writes 8 bytes from a live u64 to our eventfd. It can
            // only fail with EAGAIN once the counter nears 2^64, which one
            // write per sleep never reaches; nothing to do then anyway.
            unsafe { libc::write(fd.as_raw_fd(), (&raw const one).cast(), 8) };
        }
    }

    /// Creates the `eventfd` a sleeping consumer is woken through and returns
    /// it, for the consumer to add to its readiness set (edge-triggered: each
    /// write is an edge, so it is never read).
    pub fn wake_fd(&self) -> std::io::Result<RawFd> {
        if let Some(fd) = self.wake_fd.get() {
            return Ok(fd.as_raw_fd());
        }
        // SAFETY: plain syscall; the descriptor is owned below.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: a fresh descriptor nobody else owns.
        let owned = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(self.wake_fd.get_or_init(|| owned).as_raw_fd())
    }

    /// The consumer is about to sleep: from now on a ring writes the
    /// `eventfd`. Check the rings after this and before sleeping.
    pub fn park(&self) {
        self.parked.store(true, Ordering::Relaxed);
        fence(Ordering::SeqCst);
    }

    /// The consumer is awake again (or decided not to sleep).
    pub fn unpark(&self) {
        self.parked.store(false, Ordering::Relaxed);
    }
}

/// The sending end of one ring, with its target's doorbell.
pub struct Outlet<T = ShardMsg> {
    ring: Producer<T>,
    bell: Arc<Doorbell>,
    overflow: VecDeque<T>,
    /// Raised, for the consumer to see, while `overflow` holds messages:
    /// an empty ring then does not mean that nothing was sent.
    overflowing: Arc<AtomicBool>,
    pushed_since_flush: bool,
}

impl<T> Outlet<T> {
    /// The sending end of `ring`, ringing `bell` when flushed.
    pub fn new(ring: Producer<T>, bell: Arc<Doorbell>) -> Self {
        Self::with_flag(ring, bell, Arc::default())
    }

    fn with_flag(ring: Producer<T>, bell: Arc<Doorbell>, overflowing: Arc<AtomicBool>) -> Self {
        Self { ring, bell, overflow: VecDeque::new(), overflowing, pushed_since_flush: false }
    }

    /// Queues a message for the target; it is visible to the target at once,
    /// but the target is only woken by [`Outlet::flush`].
    pub fn push(&mut self, msg: T) {
        if self.enqueue(msg) {
            self.pushed_since_flush = true;
        }
    }

    /// Queues a message the target need not be woken for: it reads it when
    /// something else wakes it, or before it relies on it (see
    /// [`Inlets::settled_pass`]). A ring half full is rung all the same, so
    /// that quiet messages cannot fill it.
    pub fn push_quiet(&mut self, msg: T) {
        if self.enqueue(msg) && self.ring.slots() < self.ring.buffer().capacity() / 2 {
            self.pushed_since_flush = true;
        }
    }

    /// Into the ring, or the overflow behind it; true when into the ring.
    fn enqueue(&mut self, msg: T) -> bool {
        if !self.overflow.is_empty() {
            self.overflow.push_back(msg);
            return false;
        }
        match self.ring.push(msg) {
            Ok(()) => true,
            Err(rtrb::PushError::Full(msg)) => {
                // Raised before the message can be relied on having been
                // sent (before this turn's replies are written).
                self.overflowing.store(true, Ordering::SeqCst);
                self.overflow.push_back(msg);
                false
            }
        }
    }

    /// Moves what it can from the overflow into the ring and rings the target
    /// if anything new reached it. Returns true while messages are left over.
    pub fn flush(&mut self) -> bool {
        let overflowed = !self.overflow.is_empty();
        while let Some(msg) = self.overflow.pop_front() {
            if let Err(rtrb::PushError::Full(msg)) = self.ring.push(msg) {
                self.overflow.push_front(msg);
                break;
            }
            self.pushed_since_flush = true;
        }
        if overflowed && self.overflow.is_empty() {
            // After the last of them is in the ring: a consumer that sees
            // the flag down finds them there.
            self.overflowing.store(false, Ordering::SeqCst);
        }
        if self.pushed_since_flush {
            self.pushed_since_flush = false;
            self.bell.ring();
        }
        !self.overflow.is_empty()
    }

    /// Messages waiting in this outlet because the ring was full.
    pub fn backlog(&self) -> usize {
        self.overflow.len()
    }
}

/// The receiving side of one thread: every ring that ends here.
pub struct Inlets {
    rings: Vec<Consumer<ShardMsg>>,
    /// Per ring, its producer's [`Outlet::overflowing`].
    overflowing: Vec<Arc<AtomicBool>>,
    bell: Arc<Doorbell>,
    next: usize,
}

impl Inlets {
    /// This thread's doorbell, to register the mesh task's waker with.
    pub fn doorbell(&self) -> &Doorbell {
        &self.bell
    }

    /// This thread's doorbell, shared, for a wait that outlives a borrow.
    pub fn bell(&self) -> Arc<Doorbell> {
        Arc::clone(&self.bell)
    }

    /// Takes up to `budget` messages, round-robin over the rings so that one
    /// busy producer cannot starve the others. Order per ring is kept.
    pub fn drain(&mut self, budget: usize, mut handle: impl FnMut(ShardMsg)) -> usize {
        let mut taken = 0;
        let rings = self.rings.len();
        let mut idle_rings = 0;
        while taken < budget && idle_rings < rings {
            let ring = &mut self.rings[self.next];
            self.next = (self.next + 1) % rings;
            match ring.pop() {
                Ok(msg) => {
                    idle_rings = 0;
                    taken += 1;
                    handle(msg);
                }
                Err(_) => idle_rings += 1,
            }
        }
        taken
    }

    /// True when no ring holds a message.
    pub fn is_empty(&self) -> bool {
        self.rings.iter().all(|r| r.is_empty())
    }

    /// One pass towards knowing that everything sent here before this call
    /// has been handled: takes up to `budget` messages as [`Inlets::drain`]
    /// does and returns how many, with whether the pass settles it (it took
    /// none and no producer held messages back in its overflow). A producer
    /// raises its flag before it could rely on a held-back message having
    /// been sent and lowers it only once the message is in the ring, so the
    /// flags are read first: seen down, whatever they held back is in the
    /// rings this pass then empties.
    pub fn settled_pass(&mut self, budget: usize, handle: impl FnMut(ShardMsg)) -> (usize, bool) {
        let held_back = self.overflowing.iter().any(|f| f.load(Ordering::SeqCst));
        let taken = self.drain(budget, handle);
        (taken, taken == 0 && !held_back)
    }
}

/// One shard's ends of the mesh.
pub struct ShardLinks {
    /// `outlets[j]` sends to shard `j`; `None` at this shard's own index.
    pub outlets: Vec<Option<Outlet>>,
    /// Everything addressed to this shard.
    pub inlets: Inlets,
}

/// An external producer's ends (a thread that is not a shard): one outlet per shard.
pub struct ExternalLinks {
    /// `outlets[j]` sends to shard `j`.
    pub outlets: Vec<Outlet>,
}

impl ExternalLinks {
    /// Sends one message to every shard and wakes them.
    pub fn broadcast(&mut self, mut make: impl FnMut() -> ShardMsg) {
        for outlet in &mut self.outlets {
            outlet.push(make());
            outlet.flush();
        }
    }
}

/// Builds the full mesh for `shards` shards plus `externals` external producers.
pub fn build(shards: usize, externals: usize) -> (Vec<ShardLinks>, Vec<ExternalLinks>) {
    build_with_capacity(shards, externals, RING_CAPACITY)
}

/// [`build`] with rings of `capacity` messages between shards (small ones
/// in tests fill up); rings from external producers keep [`RING_CAPACITY`].
pub fn build_with_capacity(
    shards: usize,
    externals: usize,
    capacity: usize,
) -> (Vec<ShardLinks>, Vec<ExternalLinks>) {
    let bells: Vec<Arc<Doorbell>> = (0..shards).map(|_| Arc::new(Doorbell::default())).collect();
    let mut consumers: Vec<Vec<Consumer<ShardMsg>>> = (0..shards).map(|_| Vec::new()).collect();
    let mut flags: Vec<Vec<Arc<AtomicBool>>> = (0..shards).map(|_| Vec::new()).collect();
    let mut outlets: Vec<Vec<Option<Outlet>>> = Vec::with_capacity(shards);
    for from in 0..shards {
        let mut row = Vec::with_capacity(shards);
        for (to, inbox) in consumers.iter_mut().enumerate() {
            if to == from {
                row.push(None);
                continue;
            }
            let (producer, consumer) = RingBuffer::new(capacity);
            inbox.push(consumer);
            row.push(Some(outlet(producer, &bells[to], &mut flags[to])));
        }
        outlets.push(row);
    }
    let externals = (0..externals)
        .map(|_| ExternalLinks {
            outlets: consumers
                .iter_mut()
                .enumerate()
                .map(|(to, inbox)| {
                    let (producer, consumer) = RingBuffer::new(RING_CAPACITY);
                    inbox.push(consumer);
                    outlet(producer, &bells[to], &mut flags[to])
                })
                .collect(),
        })
        .collect();
    let shards = outlets
        .into_iter()
        .zip(consumers.into_iter().zip(flags))
        .zip(bells)
        .map(|((outlets, (rings, overflowing)), bell)| ShardLinks {
            outlets,
            inlets: Inlets { rings, overflowing, bell, next: 0 },
        })
        .collect();
    (shards, externals)
}

/// An outlet to a shard, whose overflow flag joins that shard's `flags`
/// (in the order of its rings).
fn outlet(
    ring: Producer<ShardMsg>,
    bell: &Arc<Doorbell>,
    flags: &mut Vec<Arc<AtomicBool>>,
) -> Outlet {
    let flag = Arc::new(AtomicBool::new(false));
    flags.push(Arc::clone(&flag));
    Outlet::with_flag(ring, Arc::clone(bell), flag)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reads (and so resets) an eventfd's counter; `None` when it is zero.
    fn take_count(fd: RawFd) -> Option<u64> {
        let mut count = 0u64;
        // SAFETY: reads 8 bytes into a live u64 from an open eventfd.
        let n = unsafe { libc::read(fd, (&raw mut count).cast(), 8) };
        (n == 8).then_some(count)
    }

    #[test]
    fn a_doorbell_writes_its_eventfd_only_while_its_consumer_is_parked() {
        let (mut shards, mut ext) = build(2, 1);
        let fd = shards[1].inlets.doorbell().wake_fd().expect("eventfd");
        let bell = shards[1].inlets.bell();
        let out = shards[0].outlets[1].as_mut().expect("outlet to shard 1");
        // Awake: the message is seen at the consumer's next turn, no write.
        out.push(ShardMsg::Test(1));
        out.flush();
        assert_eq!(take_count(fd), None);
        // Parked: one write, however many producers ring before it wakes.
        bell.park();
        out.push(ShardMsg::Test(2));
        out.flush();
        ext[0].outlets[1].push(ShardMsg::Test(3));
        ext[0].outlets[1].flush();
        assert_eq!(take_count(fd), Some(1));
        // The ring that woke it unparked it.
        out.push(ShardMsg::Test(4));
        out.flush();
        assert_eq!(take_count(fd), None);
        assert_eq!(shards[1].inlets.drain(10, |_| {}), 4);
    }

    #[test]
    fn a_quiet_push_wakes_nobody_until_the_ring_is_half_full() {
        let (mut shards, _ext) = build_with_capacity(2, 0, 8);
        let fd = shards[1].inlets.doorbell().wake_fd().expect("eventfd");
        let bell = shards[1].inlets.bell();
        bell.park();
        let out = shards[0].outlets[1].as_mut().expect("outlet to shard 1");
        for i in 0..4 {
            out.push_quiet(ShardMsg::Test(i));
            out.flush();
            assert_eq!(take_count(fd), None, "message {i}");
        }
        // The fifth leaves fewer than half the slots free.
        out.push_quiet(ShardMsg::Test(4));
        out.flush();
        assert_eq!(take_count(fd), Some(1));
        assert_eq!(shards[1].inlets.drain(10, |_| {}), 5);
    }

    #[test]
    fn a_settled_pass_needs_empty_rings_and_nothing_held_back() {
        let (mut shards, mut ext) = build_with_capacity(2, 1, 2);
        let (left, right) = shards.split_at_mut(1);
        let (producer, consumer) = (&mut left[0], &mut right[0]);
        assert_eq!(consumer.inlets.settled_pass(10, |_| {}), (0, true));
        let out = producer.outlets[1].as_mut().expect("outlet to shard 1");
        for i in 0..3 {
            out.push(ShardMsg::Test(i));
        }
        assert_eq!(out.backlog(), 1);
        // The ring's two are taken, but the third waits in the overflow:
        // empty rings do not settle it.
        assert_eq!(consumer.inlets.settled_pass(10, |_| {}), (2, false));
        assert_eq!(consumer.inlets.settled_pass(10, |_| {}), (0, false));
        assert!(!producer.outlets[1].as_mut().expect("outlet").flush());
        assert_eq!(consumer.inlets.settled_pass(10, |_| {}), (1, false));
        assert_eq!(consumer.inlets.settled_pass(10, |_| {}), (0, true));
        // An external producer's overflow counts the same.
        for i in 0..(RING_CAPACITY as u64 + 1) {
            ext[0].outlets[1].push(ShardMsg::Test(i));
        }
        let (taken, settled) = consumer.inlets.settled_pass(usize::MAX, |_| {});
        assert_eq!((taken, settled), (RING_CAPACITY, false));
        ext[0].outlets[1].flush();
        assert_eq!(consumer.inlets.settled_pass(usize::MAX, |_| {}), (1, false));
        assert_eq!(consumer.inlets.settled_pass(usize::MAX, |_| {}), (0, true));
    }

    #[test]
    fn full_mesh_delivers_in_order_and_overflows_without_loss() {
        let (mut shards, mut ext) = build(3, 1);
        let out = shards[0].outlets[2].as_mut().expect("outlet to shard 2");
        for i in 0..(RING_CAPACITY + 10) {
            out.push(ShardMsg::Test(i as u64));
        }
        assert_eq!(out.backlog(), 10);
        let mut seen = Vec::new();
        shards[2].inlets.drain(usize::MAX, |m| {
            if let ShardMsg::Test(i) = m {
                seen.push(i)
            }
        });
        assert_eq!(seen.len(), RING_CAPACITY);
        let out = shards[0].outlets[2].as_mut().expect("outlet to shard 2");
        assert!(!out.flush());
        shards[2].inlets.drain(usize::MAX, |m| {
            if let ShardMsg::Test(i) = m {
                seen.push(i)
            }
        });
        assert_eq!(seen, (0..(RING_CAPACITY as u64 + 10)).collect::<Vec<_>>());
        ext[0].broadcast(|| ShardMsg::Test(7));
        for shard in &mut shards {
            assert_eq!(shard.inlets.drain(10, |_| {}), 1);
            assert!(shard.inlets.is_empty());
        }
    }
}
