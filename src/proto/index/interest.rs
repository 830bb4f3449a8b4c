//! Which other shards hold subscribers of which channels, so that a publish
//! crosses only to the shards that need it (issue #14). Without it every
//! publish woke every other shard, so on a host of many cores an event for a
//! channel with one subscriber cost one wake-up per core.
//!
//! A channel hashes to one of [`BUCKETS`] buckets. Each shard counts its own
//! subscriptions per bucket, in any state (one that waits for its presence
//! owner's verdict or its cache replay counts from the moment it is asked
//! for), and tells every other shard when a bucket's count leaves zero or
//! returns to it, once per turn for all the buckets that changed in it
//! ([`Interest::take_changes`]: one ring slot per turn, not per
//! subscription, as ring slots, once touched, stay in memory); every shard
//! keeps one bit per bucket for each other shard. Buckets, not names, so
//! that the messages carry two bytes a channel and the memory is fixed:
//! 128 KiB of counts per shard and 8 KiB of bits per other shard, touched
//! only as buckets fill. Channels that share a bucket only make a publish
//! cross where it need not, never the other way round.
//!
//! The bits lag behind the shards they describe, by whatever sits in the
//! rings. A shard announces a bucket before it confirms the subscription to
//! its client and before it sends a presence join or cache fetch to the
//! channel's owner (the same ring, in order), so a publish that the
//! subscriber must hear was caused by something that happened after the
//! announcement entered the rings. The publishing shard may therefore trust
//! the bits only once it has looked at its rings again after the input that
//! caused the publish and found them empty: the caller says so with
//! `settled` ([`crate::proto::pusher::shard::Shard::drain_mesh_out`]); otherwise the
//! publish crosses to every shard, as before.

use std::sync::Arc;

use super::channel_hash;
use crate::core::AppIdx;

/// Buckets per shard; a power of two.
pub const BUCKETS: usize = 1 << 16;

const WORD_BITS: usize = u64::BITS as usize;

/// One shard's view of which buckets it and the other shards hold.
#[derive(Debug)]
pub struct Interest {
    /// This shard's subscriptions per bucket; empty on a node of one shard.
    /// A count that reaches `u16::MAX` stays there: the bucket is then
    /// always held, which costs only needless crossings.
    local: Box<[u16]>,
    /// Per shard, one bit per bucket it holds; empty for this shard.
    remote: Vec<Box<[u64]>>,
    /// Buckets whose count left or reached zero since
    /// [`Interest::take_changes`].
    changed: Vec<u16>,
}

impl Interest {
    /// Shard `id` of `shards`. One shard keeps nothing.
    pub fn new(id: usize, shards: usize) -> Self {
        if shards <= 1 {
            return Self { local: Box::default(), remote: Vec::new(), changed: Vec::new() };
        }
        // Zeroed allocations: the pages are only made real as buckets fill.
        let remote = (0..shards)
            .map(|s| if s == id { Box::default() } else { vec![0u64; BUCKETS / WORD_BITS].into() })
            .collect();
        Self { local: vec![0u16; BUCKETS].into(), remote, changed: Vec::new() }
    }

    /// The bucket of `channel` of `app`.
    pub fn bucket(app: AppIdx, channel: &str) -> u16 {
        // FNV-1a's high bits hardly move with a name's last bytes
        // (`private-user-1`, `-2`, ... shared 1,048 buckets in 10,000):
        // mixed first, as in MurmurHash3's finaliser.
        let mut h = channel_hash(app, channel);
        h ^= h >> 33;
        h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
        h ^= h >> 33;
        (h >> 48) as u16
    }

    /// A local subscription to `channel` begins.
    pub fn add(&mut self, app: AppIdx, channel: &str) {
        let bucket = Self::bucket(app, channel);
        let Some(count) = self.local.get_mut(usize::from(bucket)) else { return };
        let was = *count;
        *count = was.saturating_add(1);
        if was == 0 {
            self.changed.push(bucket);
        }
    }

    /// A local subscription to `channel` ended.
    pub fn remove(&mut self, app: AppIdx, channel: &str) {
        let bucket = Self::bucket(app, channel);
        let Some(count) = self.local.get_mut(usize::from(bucket)) else { return };
        if *count == u16::MAX || *count == 0 {
            return;
        }
        *count -= 1;
        if *count == 0 {
            self.changed.push(bucket);
        }
    }

    /// Whether [`Interest::take_changes`] has anything.
    pub fn has_changes(&self) -> bool {
        !self.changed.is_empty()
    }

    /// What the other shards must be told: each bucket that changed since
    /// the last call, once, with whether this shard holds it now. One list
    /// for every other shard, which must get it ahead of anything else this
    /// shard queued for it since the last call (a presence join, a cache
    /// fetch): a bucket is then never reported empty while a subscription
    /// in it waits on an answer, only held early, which costs nothing.
    pub fn take_changes(&mut self) -> Option<Arc<[(u16, bool)]>> {
        if self.changed.is_empty() {
            return None;
        }
        self.changed.sort_unstable();
        self.changed.dedup();
        let local = &self.local;
        let changes = self.changed.drain(..).map(|b| (b, local[usize::from(b)] > 0)).collect();
        Some(changes)
    }

    /// Shard `from` says whether it holds `bucket`.
    pub fn note(&mut self, from: usize, bucket: u16, held: bool) {
        let Some(bits) = self.remote.get_mut(from) else { return };
        let (word, bit) = (usize::from(bucket) / WORD_BITS, usize::from(bucket) % WORD_BITS);
        let Some(word) = bits.get_mut(word) else { return };
        if held {
            *word |= 1 << bit;
        } else {
            *word &= !(1 << bit);
        }
    }

    /// Whether shard `shard` said it holds `bucket`, as far as its messages
    /// have arrived.
    pub fn held_by(&self, shard: usize, bucket: u16) -> bool {
        let (word, bit) = (usize::from(bucket) / WORD_BITS, usize::from(bucket) % WORD_BITS);
        self.remote
            .get(shard)
            .and_then(|bits| bits.get(word))
            // A shard this one keeps no bits for is assumed to hold all.
            .is_none_or(|w| w & (1 << bit) != 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn changes(interest: &mut Interest) -> Vec<(u16, bool)> {
        interest.take_changes().map(|c| c.to_vec()).unwrap_or_default()
    }

    #[test]
    fn a_bucket_is_announced_when_its_first_subscription_begins_and_its_last_ends() {
        let mut interest = Interest::new(0, 2);
        let bucket = Interest::bucket(0, "news");
        interest.add(0, "news");
        assert_eq!(changes(&mut interest), [(bucket, true)]);
        interest.add(0, "news");
        interest.remove(0, "news");
        assert_eq!(changes(&mut interest), []);
        interest.remove(0, "news");
        assert_eq!(changes(&mut interest), [(bucket, false)]);
        // An unmatched end changes nothing (and does not wrap).
        interest.remove(0, "news");
        assert_eq!(changes(&mut interest), []);
        // Several changes of one bucket go out once, as it ends up.
        interest.add(0, "news");
        interest.remove(0, "news");
        interest.add(0, "news");
        let other = Interest::bucket(1, "news");
        interest.add(1, "news");
        let mut expected = vec![(bucket, true), (other, true)];
        expected.sort_unstable();
        assert_eq!(changes(&mut interest), expected);
        interest.remove(0, "news");
        interest.add(0, "news");
        interest.remove(0, "news");
        assert_eq!(changes(&mut interest), [(bucket, false)]);
    }

    #[test]
    fn a_saturated_bucket_stays_held() {
        let mut interest = Interest::new(0, 2);
        let bucket = Interest::bucket(1, "big");
        for _ in 0..u16::MAX as usize + 10 {
            interest.add(1, "big");
        }
        assert_eq!(changes(&mut interest), [(bucket, true)]);
        for _ in 0..u16::MAX as usize + 10 {
            interest.remove(1, "big");
        }
        assert_eq!(changes(&mut interest), [], "never announced empty again");
    }

    #[test]
    fn bits_follow_what_other_shards_say() {
        let mut interest = Interest::new(1, 3);
        let bucket = Interest::bucket(0, "private-a");
        assert!(!interest.held_by(0, bucket) && !interest.held_by(2, bucket));
        interest.note(2, bucket, true);
        assert!(interest.held_by(2, bucket) && !interest.held_by(0, bucket));
        assert!(!interest.held_by(2, bucket.wrapping_add(1)));
        interest.note(2, bucket, false);
        assert!(!interest.held_by(2, bucket));
        // Nothing is kept about the shard itself, nor on a one-shard node:
        // a shard nothing is known of is taken to hold every bucket.
        assert!(interest.held_by(1, bucket));
        let alone = Interest::new(0, 1);
        assert!(alone.held_by(5, bucket));
        let mut alone = alone;
        alone.add(0, "news");
        assert!(alone.take_changes().is_none(), "a lone shard announces nothing");
    }

    #[test]
    fn buckets_spread_channel_names() {
        let used: std::collections::HashSet<u16> =
            (0..10_000).map(|i| Interest::bucket(0, &format!("private-user-{i}"))).collect();
        // 10,000 names in 65,536 buckets: about 9,300 distinct if uniform.
        assert!(used.len() > 9_000, "{} buckets", used.len());
    }
}
