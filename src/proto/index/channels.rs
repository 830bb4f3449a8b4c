//! Channel → local subscribers.
//!
//! Sized for many idle connections, most channels having one subscriber
//! on a shard: a channel is one entry in its app's name map, its name an
//! `ArcStr` (a counted string behind one word, its length in its block)
//! that the subscriptions naming it share (one copy of the name per
//! shard, not one per subscription plus two in here), and its first
//! few subscribers sit in the entry itself. A wider channel keeps its
//! subscribers in a dense array, walked for fan-out, beside a map of where
//! each sits, so that removal stays O(1).
//!
//! Channel names come from clients, so the name map keeps std's randomised
//! SipHash; connection keys are ours, so their position map uses the cheaper
//! Fx hash.

use std::collections::{HashMap, hash_map::Entry};

use arcstr::ArcStr;
use rustc_hash::FxHashMap;

use crate::core::AppIdx;
pub use crate::core::ConnKey;

/// Subscribers a channel holds in place before they move to the heap: as
/// many as fit in the room of the heap variant's pointer and length.
const INLINE: usize = 3;

/// The local subscribers of one channel, in no particular order.
#[derive(Debug)]
pub enum Subscribers {
    /// Up to [`INLINE`] keys, in place.
    Few {
        /// Keys in use at the front of `keys`.
        len: u8,
        /// The keys.
        keys: [ConnKey; INLINE],
    },
    /// More than [`INLINE`] at some point.
    Many(Box<Many>),
}

/// A wide channel's subscribers.
#[derive(Debug, Default)]
pub struct Many {
    keys: Vec<ConnKey>,
    /// Where each key sits in `keys`.
    at: FxHashMap<ConnKey, u32>,
}

impl Subscribers {
    fn one(key: ConnKey) -> Self {
        let mut keys = [0; INLINE];
        keys[0] = key;
        Subscribers::Few { len: 1, keys }
    }

    /// The keys, for a walk over them.
    pub fn as_slice(&self) -> &[ConnKey] {
        match self {
            Subscribers::Few { len, keys } => &keys[..usize::from(*len)],
            Subscribers::Many(many) => &many.keys,
        }
    }

    /// How many there are.
    pub fn len(&self) -> usize {
        self.as_slice().len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Adds `key`; false if it was there already.
    fn insert(&mut self, key: ConnKey) -> bool {
        match self {
            Subscribers::Few { len, keys } => {
                let n = usize::from(*len);
                if keys[..n].contains(&key) {
                    return false;
                }
                if n < INLINE {
                    keys[n] = key;
                    *len += 1;
                    return true;
                }
                let mut many = Box::<Many>::default();
                for &k in keys[..n].iter().chain(std::iter::once(&key)) {
                    many.at.insert(k, many.keys.len() as u32);
                    many.keys.push(k);
                }
                *self = Subscribers::Many(many);
                true
            }
            Subscribers::Many(many) => {
                let next = many.keys.len() as u32;
                match many.at.entry(key) {
                    Entry::Occupied(_) => false,
                    Entry::Vacant(slot) => {
                        slot.insert(next);
                        many.keys.push(key);
                        true
                    }
                }
            }
        }
    }

    /// Removes `key` if present, moving the last key into its place.
    fn remove(&mut self, key: ConnKey) {
        match self {
            Subscribers::Few { len, keys } => {
                let n = usize::from(*len);
                if let Some(i) = keys[..n].iter().position(|&k| k == key) {
                    keys[i] = keys[n - 1];
                    *len -= 1;
                }
            }
            Subscribers::Many(many) => {
                let Some(i) = many.at.remove(&key) else { return };
                let i = i as usize;
                many.keys.swap_remove(i);
                if let Some(&moved) = many.keys.get(i) {
                    many.at.insert(moved, i as u32);
                }
            }
        }
    }
}

impl<'a> IntoIterator for &'a Subscribers {
    type Item = &'a ConnKey;
    type IntoIter = std::slice::Iter<'a, ConnKey>;

    fn into_iter(self) -> Self::IntoIter {
        self.as_slice().iter()
    }
}

/// Every occupied channel of one shard, per app.
#[derive(Debug)]
pub struct ChannelIndex {
    by_name: Vec<HashMap<ArcStr, Subscribers>>,
}

impl ChannelIndex {
    /// An empty index for `apps` apps.
    pub fn new(apps: usize) -> Self {
        Self { by_name: (0..apps).map(|_| HashMap::new()).collect() }
    }

    /// Gives back the room of channels that are gone (after a fall in
    /// connections).
    pub fn shrink_to_fit(&mut self) {
        for names in &mut self.by_name {
            names.shrink_to_fit();
        }
    }

    /// Adds `conn` to the channel, creating it. Returns the channel's name
    /// as the index holds it, for the subscription to share, and whether
    /// the connection was newly added.
    pub fn subscribe(&mut self, app: AppIdx, name: &str, conn: ConnKey) -> (ArcStr, bool) {
        let names = &mut self.by_name[app as usize];
        // Two lookups when the channel exists: std's map hands out a key
        // and its value mutably together only through `entry`, which
        // would take a new name per subscription.
        if let Some((shared, _)) = names.get_key_value(name) {
            let shared = ArcStr::clone(shared);
            let added = names.get_mut(name).is_some_and(|subs| subs.insert(conn));
            return (shared, added);
        }
        let shared: ArcStr = ArcStr::from(name);
        names.insert(ArcStr::clone(&shared), Subscribers::one(conn));
        (shared, true)
    }

    /// Removes `conn` from the channel; frees the channel when it empties.
    /// Returns the number of local subscribers left.
    pub fn unsubscribe(&mut self, app: AppIdx, name: &str, conn: ConnKey) -> usize {
        let Some(names) = self.by_name.get_mut(app as usize) else { return 0 };
        let Some(subs) = names.get_mut(name) else { return 0 };
        subs.remove(conn);
        let left = subs.len();
        if left == 0 {
            names.remove(name);
        }
        left
    }

    /// The channel's local subscribers, if it has any.
    pub fn lookup(&self, app: AppIdx, name: &str) -> Option<&Subscribers> {
        self.by_name.get(app as usize)?.get(name)
    }

    /// Local subscriber count of a channel by name.
    pub fn count(&self, app: AppIdx, name: &str) -> usize {
        self.lookup(app, name).map_or(0, Subscribers::len)
    }

    /// The channels of `app` with local subscribers, and how many each has.
    pub fn channels_of(&self, app: AppIdx) -> impl Iterator<Item = (&str, usize)> {
        self.by_name
            .get(app as usize)
            .into_iter()
            .flatten()
            .map(|(name, subs)| (&**name, subs.len()))
    }

    /// Number of occupied channels on this shard.
    pub fn len(&self) -> usize {
        self.by_name.iter().map(HashMap::len).sum()
    }

    /// True when no channel has a local subscriber.
    pub fn is_empty(&self) -> bool {
        self.by_name.iter().all(HashMap::is_empty)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shrinking_after_a_fall_keeps_the_live_channels() {
        let mut idx = ChannelIndex::new(1);
        for i in 0..1000 {
            idx.subscribe(0, &format!("c{i}"), i);
        }
        for i in 1..1000 {
            idx.unsubscribe(0, &format!("c{i}"), i);
        }
        idx.shrink_to_fit();
        assert_eq!(idx.len(), 1);
        assert_eq!(idx.count(0, "c0"), 1);
        let (name, added) = idx.subscribe(0, "c1", 1);
        assert!(added);
        assert_eq!(&*name, "c1");
        assert_eq!(idx.count(0, "c1"), 1);
    }

    #[test]
    fn subscribe_is_idempotent_and_channels_free_when_empty() {
        let mut idx = ChannelIndex::new(2);
        let (a, added) = idx.subscribe(0, "news", 1);
        assert!(added);
        let (again, added) = idx.subscribe(0, "news", 1);
        assert!(!added);
        assert!(ArcStr::ptr_eq(&a, &again), "subscriptions share the index's name");
        let (_, added) = idx.subscribe(0, "news", 2);
        assert!(added);
        assert_eq!(idx.count(0, "news"), 2);
        assert_eq!(idx.count(1, "news"), 0, "apps are separate namespaces");
        assert_eq!(idx.unsubscribe(0, "news", 1), 1);
        assert_eq!(idx.unsubscribe(0, "news", 2), 0);
        assert!(idx.lookup(0, "news").is_none());
        assert!(idx.is_empty());
        assert_eq!(idx.unsubscribe(0, "news", 2), 0, "an unknown channel is no error");
    }

    /// A channel's entry in the name map holds its name and this.
    #[test]
    fn subscribers_fit_in_two_words() {
        assert!(std::mem::size_of::<Subscribers>() <= 16);
    }

    /// Subscribers move from in place to the heap and back down to none,
    /// through every removal position, against a plain model.
    #[test]
    fn subscribers_match_a_model_across_the_inline_limit() {
        let mut idx = ChannelIndex::new(1);
        let mut model: Vec<ConnKey> = Vec::new();
        let check = |idx: &ChannelIndex, model: &[ConnKey]| {
            let mut got: Vec<ConnKey> =
                idx.lookup(0, "wide").map(|s| s.as_slice().to_vec()).unwrap_or_default();
            got.sort_unstable();
            let mut want = model.to_vec();
            want.sort_unstable();
            assert_eq!(got, want);
        };
        for key in 0..(INLINE as ConnKey + 5) {
            assert!(idx.subscribe(0, "wide", key).1);
            assert!(!idx.subscribe(0, "wide", key).1, "a repeat is not added twice");
            model.push(key);
            check(&idx, &model);
        }
        // Front, back and middle removals, then whatever is left.
        for key in [0, INLINE as ConnKey + 4, 3, 1, 5, 2, 4, 6, 7] {
            idx.unsubscribe(0, "wide", key);
            model.retain(|&k| k != key);
            check(&idx, &model);
        }
        assert!(idx.is_empty());
        for key in [9, 8] {
            idx.subscribe(0, "few", key);
        }
        idx.unsubscribe(0, "few", 9);
        assert_eq!(idx.lookup(0, "few").map(Subscribers::as_slice), Some(&[8][..]));
    }
}
