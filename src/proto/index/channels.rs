//! Channel → local subscribers.
//!
//! Subscribers are an insertion-ordered set of slab keys: iteration for
//! fan-out is a walk over a dense array, and removal is O(1) by swapping.
//! Channel names come from clients, so the name map keeps std's randomised
//! SipHash; connection keys are ours, so their set uses the cheaper Fx hash.

use std::{collections::HashMap, hash::BuildHasherDefault};

use indexmap::IndexSet;
use rustc_hash::FxHasher;
use slab::Slab;

use crate::core::AppIdx;
pub use crate::core::ConnKey;

/// A channel's key in the index; stable while the channel has subscribers.
pub type ChanId = u32;

/// The local subscribers of one channel.
pub type Subscribers = IndexSet<ConnKey, BuildHasherDefault<FxHasher>>;

/// One channel with at least one local subscriber.
#[derive(Debug)]
pub struct Channel {
    /// Owning app.
    pub app: AppIdx,
    /// Full channel name.
    pub name: Box<str>,
    /// Local connections subscribed (subscription succeeded).
    pub subscribers: Subscribers,
}

/// Every occupied channel of one shard, per app.
#[derive(Debug)]
pub struct ChannelIndex {
    by_name: Vec<HashMap<Box<str>, ChanId>>,
    channels: Slab<Channel>,
}

impl ChannelIndex {
    /// An empty index for `apps` apps.
    pub fn new(apps: usize) -> Self {
        Self { by_name: (0..apps).map(|_| HashMap::new()).collect(), channels: Slab::new() }
    }

    /// Gives back the room of channels that are gone (after a fall in
    /// connections); ids of live channels stay valid.
    pub fn shrink_to_fit(&mut self) {
        for names in &mut self.by_name {
            names.shrink_to_fit();
        }
        self.channels.shrink_to_fit();
    }

    /// Adds `conn` to the channel, creating it. Returns the channel id and
    /// whether the connection was newly added.
    pub fn subscribe(&mut self, app: AppIdx, name: &str, conn: ConnKey) -> (ChanId, bool) {
        let names = &mut self.by_name[app as usize];
        let id = match names.get(name) {
            Some(&id) => id,
            None => {
                let id = self.channels.insert(Channel {
                    app,
                    name: name.into(),
                    subscribers: Subscribers::default(),
                }) as ChanId;
                names.insert(name.into(), id);
                id
            }
        };
        let added = self.channels[id as usize].subscribers.insert(conn);
        (id, added)
    }

    /// Removes `conn` from the channel; frees the channel when it empties.
    /// Returns the number of local subscribers left.
    pub fn unsubscribe(&mut self, id: ChanId, conn: ConnKey) -> usize {
        let Some(channel) = self.channels.get_mut(id as usize) else { return 0 };
        channel.subscribers.swap_remove(&conn);
        let left = channel.subscribers.len();
        if left == 0 {
            let channel = self.channels.remove(id as usize);
            self.by_name[channel.app as usize].remove(&channel.name);
        }
        left
    }

    /// The channel's id, if it has local subscribers.
    pub fn lookup(&self, app: AppIdx, name: &str) -> Option<ChanId> {
        self.by_name.get(app as usize)?.get(name).copied()
    }

    /// The channel behind an id.
    pub fn get(&self, id: ChanId) -> Option<&Channel> {
        self.channels.get(id as usize)
    }

    /// Local subscriber count of a channel by name.
    pub fn count(&self, app: AppIdx, name: &str) -> usize {
        self.lookup(app, name).and_then(|id| self.get(id)).map_or(0, |c| c.subscribers.len())
    }

    /// The channels of `app` with local subscribers, and how many each has.
    pub fn channels_of(&self, app: AppIdx) -> impl Iterator<Item = (&str, usize)> {
        self.by_name.get(app as usize).into_iter().flatten().filter_map(|(name, &id)| {
            self.channels.get(id as usize).map(|c| (&**name, c.subscribers.len()))
        })
    }

    /// Number of occupied channels on this shard.
    pub fn len(&self) -> usize {
        self.channels.len()
    }

    /// True when no channel has a local subscriber.
    pub fn is_empty(&self) -> bool {
        self.channels.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shrinking_after_a_fall_keeps_the_live_channels() {
        let mut idx = ChannelIndex::new(1);
        let ids: Vec<ChanId> = (0..1000).map(|i| idx.subscribe(0, &format!("c{i}"), i).0).collect();
        // The one left is the first: the slab's tail is free to give back.
        for (i, id) in ids.iter().enumerate().skip(1) {
            idx.unsubscribe(*id, i as ConnKey);
        }
        idx.shrink_to_fit();
        assert_eq!(idx.len(), 1);
        assert_eq!(idx.lookup(0, "c0"), Some(ids[0]));
        assert_eq!(idx.count(0, "c0"), 1);
        let (again, added) = idx.subscribe(0, "c1", 1);
        assert!(added);
        assert_eq!(idx.lookup(0, "c1"), Some(again));
    }

    #[test]
    fn subscribe_is_idempotent_and_channels_free_when_empty() {
        let mut idx = ChannelIndex::new(2);
        let (a, added) = idx.subscribe(0, "news", 1);
        assert!(added);
        assert_eq!(idx.subscribe(0, "news", 1), (a, false));
        let (_, added) = idx.subscribe(0, "news", 2);
        assert!(added);
        assert_eq!(idx.count(0, "news"), 2);
        assert_eq!(idx.count(1, "news"), 0, "apps are separate namespaces");
        assert_eq!(idx.unsubscribe(a, 1), 1);
        assert_eq!(idx.unsubscribe(a, 2), 0);
        assert!(idx.lookup(0, "news").is_none());
        assert!(idx.is_empty());
    }
}
