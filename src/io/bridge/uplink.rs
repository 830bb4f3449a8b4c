//! The rings from the shards to the bridge thread: what a shard wants
//! written to Redis (Incus bookkeeping and client messages to publish).
//! One bounded SPSC ring per shard, and the bridge's doorbell, which the
//! bridge's tokio task registers its waker with. A shard never waits on
//! Redis: a full ring drops the update, counted and logged, because the
//! alternative is unbounded memory on a shard whose Redis is gone.

use crate::{
    io::rings::fanin::{DropRing, FanIn, fan_in},
    proto::incus::RedisUpdate,
};

/// Updates one ring holds before a shard starts dropping them.
pub const UPLINK_CAPACITY: usize = 16 * 1024;

/// A shard's end.
pub type Uplink = DropRing<RedisUpdate>;

/// The bridge's end: every shard's ring.
pub type UplinkInbox = FanIn<RedisUpdate>;

/// One uplink per shard, and the bridge's inbox.
pub fn build(shards: usize) -> (Vec<Uplink>, UplinkInbox) {
    fan_in(shards, UPLINK_CAPACITY)
}
