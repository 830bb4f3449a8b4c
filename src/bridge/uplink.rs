//! The rings from the shards to the bridge thread: what a shard wants
//! written to Redis (Incus bookkeeping and client messages to publish).
//! One bounded SPSC ring per shard, and the bridge's doorbell, which the
//! bridge's tokio task registers its waker with. A shard never waits on
//! Redis: a full ring drops the update, counted and logged, because the
//! alternative is unbounded memory on a shard whose Redis is gone.

use std::{sync::Arc, task::Poll};

use rtrb::{Consumer, Producer, RingBuffer};

use crate::{incus::RedisUpdate, mesh::Doorbell};

/// Updates one ring holds before a shard starts dropping them.
pub const UPLINK_CAPACITY: usize = 16 * 1024;

/// A shard's end.
pub struct Uplink {
    ring: Producer<RedisUpdate>,
    bell: Arc<Doorbell>,
    pushed: bool,
    /// Updates dropped because the ring was full.
    pub dropped: u64,
}

impl Uplink {
    /// Queues `update`; the bridge is woken by [`Uplink::flush`].
    pub fn push(&mut self, update: RedisUpdate) {
        match self.ring.push(update) {
            Ok(()) => self.pushed = true,
            Err(_) => {
                self.dropped += 1;
                if self.dropped.is_power_of_two() {
                    tracing::warn!(
                        total = self.dropped,
                        "the redis bridge is behind; dropped incus updates for redis"
                    );
                }
            }
        }
    }

    /// Wakes the bridge if anything was queued since the last flush.
    pub fn flush(&mut self) {
        if std::mem::take(&mut self.pushed) {
            self.bell.ring();
        }
    }
}

/// The bridge's end: every shard's ring.
pub struct UplinkInbox {
    rings: Vec<Consumer<RedisUpdate>>,
    bell: Arc<Doorbell>,
}

impl UplinkInbox {
    /// Completes once some ring holds an update.
    pub async fn ready(&self) {
        std::future::poll_fn(|cx| {
            self.bell.register(cx.waker());
            if self.rings.iter().any(|r| !r.is_empty()) { Poll::Ready(()) } else { Poll::Pending }
        })
        .await
    }

    /// Takes up to `budget` updates, ring by ring (order per shard is kept).
    pub fn drain(&mut self, budget: usize) -> Vec<RedisUpdate> {
        let mut out = Vec::new();
        for ring in &mut self.rings {
            while out.len() < budget {
                match ring.pop() {
                    Ok(update) => out.push(update),
                    Err(_) => break,
                }
            }
        }
        out
    }
}

/// One uplink per shard, and the bridge's inbox.
pub fn build(shards: usize) -> (Vec<Uplink>, UplinkInbox) {
    let bell = Arc::new(Doorbell::default());
    let mut rings = Vec::with_capacity(shards);
    let uplinks = (0..shards)
        .map(|_| {
            let (ring, consumer) = RingBuffer::new(UPLINK_CAPACITY);
            rings.push(consumer);
            Uplink { ring, bell: Arc::clone(&bell), pushed: false, dropped: 0 }
        })
        .collect();
    (uplinks, UplinkInbox { rings, bell })
}
