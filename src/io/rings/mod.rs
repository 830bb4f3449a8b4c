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

use std::{collections::VecDeque, sync::Arc, task::Waker};

use atomic_waker::AtomicWaker;
use rtrb::{Consumer, Producer, RingBuffer};

pub use crate::proto::msg::ShardMsg;

/// Messages a ring holds before producers start queueing in their outlet.
pub const RING_CAPACITY: usize = 16 * 1024;

/// Wakes one consumer thread's mesh task; shared by all of its producers.
#[derive(Default)]
pub struct Doorbell(AtomicWaker);

impl Doorbell {
    /// Registers the consumer's waker; call before checking the rings.
    pub fn register(&self, waker: &Waker) {
        self.0.register(waker);
    }

    /// Wakes the consumer if it is parked. Cheap when it is not.
    pub fn ring(&self) {
        self.0.wake();
    }
}

/// The sending end of one ring, with its target's doorbell.
pub struct Outlet<T = ShardMsg> {
    ring: Producer<T>,
    bell: Arc<Doorbell>,
    overflow: VecDeque<T>,
    pushed_since_flush: bool,
}

impl<T> Outlet<T> {
    /// The sending end of `ring`, ringing `bell` when flushed.
    pub fn new(ring: Producer<T>, bell: Arc<Doorbell>) -> Self {
        Self { ring, bell, overflow: VecDeque::new(), pushed_since_flush: false }
    }

    /// Queues a message for the target; it is visible to the target at once,
    /// but the target is only woken by [`Outlet::flush`].
    pub fn push(&mut self, msg: T) {
        if !self.overflow.is_empty() {
            self.overflow.push_back(msg);
            return;
        }
        match self.ring.push(msg) {
            Ok(()) => self.pushed_since_flush = true,
            Err(rtrb::PushError::Full(msg)) => self.overflow.push_back(msg),
        }
    }

    /// Moves what it can from the overflow into the ring and rings the target
    /// if anything new reached it. Returns true while messages are left over.
    pub fn flush(&mut self) -> bool {
        while let Some(msg) = self.overflow.pop_front() {
            if let Err(rtrb::PushError::Full(msg)) = self.ring.push(msg) {
                self.overflow.push_front(msg);
                break;
            }
            self.pushed_since_flush = true;
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
            row.push(Some(outlet(producer, &bells[to])));
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
                    outlet(producer, &bells[to])
                })
                .collect(),
        })
        .collect();
    let shards = outlets
        .into_iter()
        .zip(consumers)
        .zip(bells)
        .map(|((outlets, rings), bell)| ShardLinks {
            outlets,
            inlets: Inlets { rings, bell, next: 0 },
        })
        .collect();
    (shards, externals)
}

fn outlet(ring: Producer<ShardMsg>, bell: &Arc<Doorbell>) -> Outlet {
    Outlet::new(ring, Arc::clone(bell))
}

#[cfg(test)]
mod tests {
    use super::*;

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
