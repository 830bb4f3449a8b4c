//! The node-wide view the bridge keeps between its shards and Redis,
//! sans-IO: which shards have subscribers to each channel (to route the
//! channel's events from other nodes, and to subscribe to the channel's
//! Redis channel while any has), how many, and how many connections each
//! presence member has on the node. Each update says whether it changed
//! what the node tells the cluster.

use std::collections::HashMap;

use crate::core::AppIdx;

/// A channel of an app.
pub type ChannelKey = (AppIdx, Box<str>);

/// One channel's subscribers on this node, per shard.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Interest {
    per_shard: Vec<u32>,
    total: u32,
}

impl Interest {
    /// Subscriptions on the node.
    pub fn total(&self) -> u32 {
        self.total
    }

    /// Whether `shard` has subscribers.
    pub fn has(&self, shard: usize) -> bool {
        self.per_shard.get(shard).is_some_and(|n| *n > 0)
    }

    /// The shards that have subscribers.
    pub fn shards(&self) -> impl Iterator<Item = usize> + '_ {
        self.per_shard.iter().enumerate().filter(|(_, n)| **n > 0).map(|(i, _)| i)
    }
}

/// How an update changed a channel's place in the node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// The node's first subscriber: subscribe to the channel's events.
    First,
    /// The node's count changed, subscribers remain.
    Count,
    /// The node's last subscriber left: unsubscribe.
    Last,
    /// Nothing the cluster needs to hear (a leave never counted).
    None,
}

/// The node's channels, presence members and signed-in users.
#[derive(Debug, Default)]
pub struct NodeView {
    shards: usize,
    channels: HashMap<ChannelKey, Interest>,
    /// (app, channel, user) → the member's connections on this node.
    members: HashMap<(AppIdx, Box<str>, Box<str>), u32>,
}

impl NodeView {
    /// A view of a node of `shards` shards.
    pub fn new(shards: usize) -> Self {
        Self { shards, ..Self::default() }
    }

    /// A subscription on `shard` came (`delta` > 0) or went.
    pub fn subscribe(&mut self, app: AppIdx, channel: &str, shard: usize, delta: i32) -> Change {
        let key = (app, Box::<str>::from(channel));
        let interest = self.channels.entry(key.clone()).or_insert_with(|| Interest {
            per_shard: vec![0; self.shards.max(shard + 1)],
            total: 0,
        });
        if interest.per_shard.len() <= shard {
            interest.per_shard.resize(shard + 1, 0);
        }
        let before = interest.total;
        let slot = &mut interest.per_shard[shard];
        let now = (*slot as i64 + i64::from(delta)).max(0) as u32;
        let applied = now as i64 - *slot as i64;
        *slot = now;
        interest.total = (before as i64 + applied) as u32;
        let change = match (before, interest.total) {
            (0, 0) => Change::None,
            (0, _) => Change::First,
            (_, 0) => Change::Last,
            (a, b) if a == b => Change::None,
            _ => Change::Count,
        };
        if interest.total == 0 {
            self.channels.remove(&key);
        }
        change
    }

    /// The channel's subscribers on the node, if any.
    pub fn interest(&self, app: AppIdx, channel: &str) -> Option<&Interest> {
        // A borrowed key needs the owned type; the map is small per lookup.
        self.channels.get(&(app, channel.into()))
    }

    /// Every channel with subscribers on the node, with its count.
    pub fn channels(&self) -> impl Iterator<Item = (&ChannelKey, &Interest)> {
        self.channels.iter()
    }

    /// A connection joined a presence channel as `user`; true when it is
    /// the member's first connection on the node.
    pub fn join(&mut self, app: AppIdx, channel: &str, user: &str) -> bool {
        let n = self.members.entry((app, channel.into(), user.into())).or_insert(0);
        *n += 1;
        *n == 1
    }

    /// A connection of `user` left the presence channel; true when it was
    /// the member's last connection on the node.
    pub fn leave(&mut self, app: AppIdx, channel: &str, user: &str) -> bool {
        let key = (app, Box::<str>::from(channel), Box::<str>::from(user));
        let Some(n) = self.members.get_mut(&key) else { return false };
        *n -= 1;
        if *n == 0 {
            self.members.remove(&key);
            return true;
        }
        false
    }

    /// Every presence member the node holds.
    pub fn members(&self) -> impl Iterator<Item = (AppIdx, &str, &str)> {
        self.members.keys().map(|(a, c, u)| (*a, &**c, &**u))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_node_subscribes_on_the_first_subscriber_and_leaves_with_the_last() {
        let mut view = NodeView::new(2);
        assert_eq!(view.subscribe(0, "news", 0, 1), Change::First);
        assert_eq!(view.subscribe(0, "news", 1, 1), Change::Count);
        assert_eq!(view.subscribe(0, "news", 0, 1), Change::Count);
        let interest = view.interest(0, "news").expect("subscribed");
        assert_eq!((interest.total(), interest.shards().collect::<Vec<_>>()), (3, vec![0, 1]));
        assert_eq!(view.subscribe(0, "news", 1, -1), Change::Count);
        assert!(!view.interest(0, "news").expect("still").has(1));
        assert_eq!(view.subscribe(0, "news", 0, -1), Change::Count);
        assert_eq!(view.subscribe(0, "news", 0, -1), Change::Last);
        assert!(view.interest(0, "news").is_none());
        // A leave the node never counted changes nothing.
        assert_eq!(view.subscribe(0, "news", 0, -1), Change::None);
        assert_eq!(view.subscribe(1, "news", 0, 1), Change::First, "apps are apart");
    }

    #[test]
    fn a_member_counts_once_per_node_however_many_connections() {
        let mut view = NodeView::new(1);
        assert!(view.join(0, "presence-x", "u"));
        assert!(!view.join(0, "presence-x", "u"));
        assert!(view.join(0, "presence-x", "v"));
        assert!(!view.leave(0, "presence-x", "u"));
        assert!(view.leave(0, "presence-x", "u"));
        assert!(!view.leave(0, "presence-x", "u"), "not held any more");
        assert_eq!(view.members().count(), 1);
    }
}
