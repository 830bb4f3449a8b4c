//! The last API-published event of each cache channel (spec §8), kept on the
//! channel's owner shard.
//!
//! Memory stays bounded by what was published within one TTL: every entry
//! sits once in its app's expiry queue, and [`EventCache::sweep`] (run on the
//! shard's tick) drops the entries whose time has passed. A channel
//! republished before it expires keeps its single queue slot: when the slot
//! comes up, the entry is put back at the end with its newer deadline instead
//! of being dropped. So a hot channel costs one entry however often it is
//! published, and a burst of one-off channels is gone one TTL later.
//!
//! Channel names come from clients and API callers, so the map keeps std's
//! randomised SipHash.

use std::{
    collections::{HashMap, VecDeque},
    time::{Duration, Instant},
};

use bytes::Bytes;

use crate::core::AppIdx;

/// One cached event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cached {
    /// The complete WebSocket frame of the event, as first published: a
    /// replay is a refcount bump, not a re-encoding.
    pub frame: Bytes,
    /// When the entry stops being served.
    pub expires: Instant,
}

/// Cached events of the channels one shard owns, per app.
#[derive(Debug)]
pub struct EventCache {
    entries: Vec<HashMap<Box<str>, Cached>>,
    /// Channel names in the order their entries were created (or requeued),
    /// with the deadline they had then. One app has one TTL, so each queue is
    /// in deadline order up to requeued entries, which only ever come due
    /// later than recorded, never earlier.
    expiry: Vec<VecDeque<(Instant, Box<str>)>>,
}

impl EventCache {
    /// An empty cache for `apps` apps.
    pub fn new(apps: usize) -> Self {
        Self {
            entries: (0..apps).map(|_| HashMap::new()).collect(),
            expiry: (0..apps).map(|_| VecDeque::new()).collect(),
        }
    }

    /// Remembers `frame` as the channel's last event until `now + ttl`.
    pub fn store(&mut self, app: AppIdx, channel: &str, frame: Bytes, now: Instant, ttl: Duration) {
        let expires = now + ttl;
        let entries = &mut self.entries[app as usize];
        if let Some(entry) = entries.get_mut(channel) {
            *entry = Cached { frame, expires };
            return;
        }
        let name: Box<str> = channel.into();
        entries.insert(name.clone(), Cached { frame, expires });
        self.expiry[app as usize].push_back((expires, name));
    }

    /// The channel's cached event, unless it has expired.
    pub fn get(&self, app: AppIdx, channel: &str, now: Instant) -> Option<&Cached> {
        self.entries[app as usize].get(channel).filter(|c| c.expires > now)
    }

    /// Drops every entry that expired by `now`; returns how many.
    pub fn sweep(&mut self, now: Instant) -> usize {
        let mut dropped = 0;
        for (entries, queue) in self.entries.iter_mut().zip(&mut self.expiry) {
            while let Some((due, _)) = queue.front() {
                if *due > now {
                    break;
                }
                let Some((_, name)) = queue.pop_front() else { break };
                match entries.get(&name) {
                    Some(entry) if entry.expires > now => {
                        let expires = entry.expires;
                        queue.push_back((expires, name));
                    }
                    _ => {
                        entries.remove(&name);
                        dropped += 1;
                    }
                }
            }
        }
        dropped
    }

    /// Entries held, expired or not.
    pub fn len(&self) -> usize {
        self.entries.iter().map(HashMap::len).sum()
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    // The fake clock needs one real instant to count from.
    #![allow(clippy::disallowed_methods)]

    use super::*;

    const TTL: Duration = Duration::from_secs(60);

    fn frame(s: &'static str) -> Bytes {
        Bytes::from_static(s.as_bytes())
    }

    #[test]
    fn serves_the_last_event_until_its_ttl() {
        let t0 = Instant::now();
        let mut cache = EventCache::new(2);
        assert!(cache.get(0, "cache-a", t0).is_none());
        cache.store(0, "cache-a", frame("one"), t0, TTL);
        cache.store(0, "cache-a", frame("two"), t0 + Duration::from_secs(10), TTL);
        let got = cache.get(0, "cache-a", t0 + Duration::from_secs(65)).map(|c| c.frame.clone());
        assert_eq!(got, Some(frame("two")));
        assert!(cache.get(1, "cache-a", t0).is_none(), "apps are separate");
        assert!(cache.get(0, "cache-a", t0 + Duration::from_secs(70)).is_none());
    }

    #[test]
    fn sweep_drops_expired_entries_and_keeps_republished_ones() {
        let t0 = Instant::now();
        let mut cache = EventCache::new(1);
        cache.store(0, "cache-old", frame("x"), t0, TTL);
        cache.store(0, "cache-hot", frame("y"), t0, TTL);
        cache.store(0, "cache-hot", frame("z"), t0 + Duration::from_secs(30), TTL);
        assert_eq!(cache.sweep(t0 + Duration::from_secs(59)), 0);
        assert_eq!(cache.sweep(t0 + TTL), 1);
        assert_eq!(cache.len(), 1);
        assert!(cache.get(0, "cache-hot", t0 + TTL).is_some());
        assert_eq!(cache.sweep(t0 + Duration::from_secs(90)), 1);
        assert!(cache.is_empty());
        assert_eq!(cache.expiry[0].len(), 0, "no queue slot outlives its entry");
    }

    #[test]
    fn many_publishes_to_one_channel_take_one_queue_slot() {
        let t0 = Instant::now();
        let mut cache = EventCache::new(1);
        for i in 0..1000 {
            cache.store(0, "cache-hot", frame("x"), t0 + Duration::from_millis(i), TTL);
        }
        assert_eq!(cache.len(), 1);
        assert_eq!(cache.expiry[0].len(), 1);
    }
}
