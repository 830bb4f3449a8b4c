//! Rings from every shard to one outside thread (the Redis bridge's uplink,
//! the webhook sender). Unlike the shard mesh, a full ring drops: a shard
//! pushes and moves on, because waiting or queueing without bound behind a
//! consumer that is stuck on Redis or a slow receiver would stall or bloat
//! the shard. The consumer takes from every ring in turn and is woken once
//! per batch.

use std::{future::poll_fn, sync::Arc, task::Poll};

use rtrb::{Consumer, Producer, RingBuffer};

use super::Doorbell;

/// A shard's end of one ring.
pub struct DropRing<T> {
    ring: Producer<T>,
    bell: Arc<Doorbell>,
    pushed: bool,
    dropped: u64,
}

impl<T> DropRing<T> {
    /// Queues `item`; the consumer is woken by [`DropRing::flush`]. A full
    /// ring drops the item: the error is the running count of drops, for the
    /// caller's log and counters.
    pub fn push(&mut self, item: T) -> Result<(), u64> {
        match self.ring.push(item) {
            Ok(()) => {
                self.pushed = true;
                Ok(())
            }
            Err(_) => {
                self.dropped += 1;
                Err(self.dropped)
            }
        }
    }

    /// Wakes the consumer if anything was pushed since the last flush.
    pub fn flush(&mut self) {
        if std::mem::take(&mut self.pushed) {
            self.bell.ring();
        }
    }
}

/// The consumer's end: every shard's ring.
pub struct FanIn<T> {
    rings: Vec<Consumer<T>>,
    bell: Arc<Doorbell>,
    next: usize,
}

impl<T> FanIn<T> {
    /// Completes once some ring holds an item.
    pub async fn ready(&self) {
        poll_fn(|cx| {
            self.bell.register(cx.waker());
            if self.rings.iter().any(|r| !r.is_empty()) { Poll::Ready(()) } else { Poll::Pending }
        })
        .await
    }

    /// Hands up to `budget` items to `take` and returns how many. Each call
    /// starts one ring further on, so a busy shard cannot starve the others
    /// of the budget; each shard's items keep their order.
    pub fn drain(&mut self, budget: usize, mut take: impl FnMut(T)) -> usize {
        let n = self.rings.len();
        let mut taken = 0;
        for i in 0..n {
            let ring = &mut self.rings[(self.next + i) % n];
            while taken < budget {
                let Ok(item) = ring.pop() else { break };
                take(item);
                taken += 1;
            }
        }
        if n > 0 {
            self.next = (self.next + 1) % n;
        }
        taken
    }
}

impl<K: Ord + Copy, T> FanIn<(K, T)> {
    /// Hands up to `budget` items to `take`, smallest key first across the
    /// rings (each ring's keys rising). With keys stamped by the shards as
    /// they hand over, two items from different shards keep the order in
    /// which they were handed over: a publisher that sends its next request
    /// to another shard after the reply to the first sees its events taken
    /// in its order.
    pub fn drain_in_order(&mut self, budget: usize, mut take: impl FnMut(T)) -> usize {
        let mut taken = 0;
        while taken < budget {
            let next = self
                .rings
                .iter()
                .enumerate()
                .filter_map(|(i, r)| r.peek().ok().map(|(key, _)| (*key, i)))
                .min();
            let Some((_, at)) = next else { break };
            let Ok((_, item)) = self.rings[at].pop() else { break };
            take(item);
            taken += 1;
        }
        taken
    }
}

/// One ring of `capacity` per shard that never drops: a full ring leaves
/// the item in the shard's outlet, as between shards, for what must not be
/// lost (the cluster's view); the shard sheds new work at its edges while
/// the outlet is long ([`super::Outlet::backlog`]).
pub fn fan_in_reliable<T>(shards: usize, capacity: usize) -> (Vec<super::Outlet<T>>, FanIn<T>) {
    let bell = Arc::new(Doorbell::default());
    let (outlets, rings) = (0..shards)
        .map(|_| {
            let (ring, consumer) = RingBuffer::new(capacity);
            (super::Outlet::new(ring, Arc::clone(&bell)), consumer)
        })
        .unzip();
    (outlets, FanIn { rings, bell, next: 0 })
}

/// One ring of `capacity` per shard, all ringing the consumer's one doorbell.
pub fn fan_in<T>(shards: usize, capacity: usize) -> (Vec<DropRing<T>>, FanIn<T>) {
    let bell = Arc::new(Doorbell::default());
    let (outlets, rings) = (0..shards)
        .map(|_| {
            let (ring, consumer) = RingBuffer::new(capacity);
            (DropRing { ring, bell: Arc::clone(&bell), pushed: false, dropped: 0 }, consumer)
        })
        .unzip();
    (outlets, FanIn { rings, bell, next: 0 })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_order_takes_the_smallest_stamp_first_across_rings() {
        let (mut outlets, mut inbox) = fan_in_reliable::<(u32, &str)>(3, 8);
        outlets[0].push((2, "b"));
        outlets[0].push((5, "e"));
        outlets[1].push((1, "a"));
        outlets[1].push((4, "d"));
        outlets[2].push((3, "c"));
        for o in &mut outlets {
            o.flush();
        }
        let mut got = Vec::new();
        assert_eq!(inbox.drain_in_order(4, |x| got.push(x)), 4);
        assert_eq!(got, ["a", "b", "c", "d"]);
        assert_eq!(inbox.drain_in_order(10, |x| got.push(x)), 1);
        assert_eq!(got.last(), Some(&"e"));
    }

    #[test]
    fn a_full_ring_drops_and_counts() {
        let (mut outlets, mut inbox) = fan_in::<u32>(1, 2);
        assert_eq!(outlets[0].push(1), Ok(()));
        assert_eq!(outlets[0].push(2), Ok(()));
        assert_eq!(outlets[0].push(3), Err(1));
        assert_eq!(outlets[0].push(4), Err(2));
        let mut got = Vec::new();
        assert_eq!(inbox.drain(10, |x| got.push(x)), 2);
        assert_eq!(got, [1, 2]);
        assert_eq!(outlets[0].push(5), Ok(()), "room again once drained");
    }

    #[test]
    fn draining_takes_turns_and_keeps_each_shards_order() {
        let (mut outlets, mut inbox) = fan_in::<(usize, u32)>(2, 16);
        for i in 0..4 {
            for (shard, outlet) in outlets.iter_mut().enumerate() {
                assert_eq!(outlet.push((shard, i)), Ok(()));
            }
        }
        let mut first = Vec::new();
        inbox.drain(3, |x| first.push(x));
        assert_eq!(first, [(0, 0), (0, 1), (0, 2)]);
        // The next call starts at shard 1, which the budget had starved.
        let mut second = Vec::new();
        inbox.drain(3, |x| second.push(x));
        assert_eq!(second, [(1, 0), (1, 1), (1, 2)]);
        let mut rest = Vec::new();
        inbox.drain(10, |x| rest.push(x));
        assert_eq!(rest, [(0, 3), (1, 3)]);
    }
}
