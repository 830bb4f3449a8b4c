//! Many nodes as one server, sans-IO: what a shard tells its node's bridge
//! when the node is part of a cluster ([`ClusterUp`]), the messages nodes
//! exchange over Redis pub/sub ([`envelope`]), where the shared state lives
//! in Redis ([`keys`]), and the node-wide bookkeeping the bridge keeps
//! between its shards and Redis ([`node`]).
//!
//! # Who decides what
//!
//! On a single node, what must be decided once per node lives on an owner
//! shard (a hash of the name). In a cluster it must be decided once per
//! cluster, so the decision moves to Redis: the node's bridge aggregates its
//! shards (a channel's subscriptions on the node, a user's connections on
//! the node) and, on a node-level change, runs one Redis script that updates
//! the cluster's view atomically and says whether the change was a
//! cluster-level transition (the channel's first subscriber anywhere, a
//! member's last connection anywhere). The node that observes a transition
//! raises its webhook, so each is raised once per cluster.
//!
//! # Delivery
//!
//! A shard delivers a publish to its own subscribers and its node's other
//! shards as on a single node, and hands it to the bridge once
//! ([`ClusterUp::Publish`]); the bridge PUBLISHes it on the channel's Redis
//! channel, which only nodes with a subscriber to the channel are
//! subscribed to. A receiving node's bridge skips its own messages and
//! hands the frame, as it came, to those of its shards that have
//! subscribers.

pub mod envelope;
pub mod keys;
pub mod node;

use bytes::Bytes;

use crate::core::{AppIdx, ConnRef, SocketId};

/// What a shard tells its node's bridge, in a cluster. Never dropped: the
/// shard queues it and refuses new work at its edges while the queue is
/// long (as for its rings to other shards).
#[derive(Debug)]
pub enum ClusterUp {
    /// A subscription came (`delta` +1, with the connection to answer once
    /// the cluster knows it) or went (−1).
    Sub {
        /// App of the channel.
        app: AppIdx,
        /// Channel name.
        channel: Box<str>,
        /// The shard, for routing the channel's events from other nodes.
        shard: u16,
        /// +1 or −1.
        delta: i32,
        /// The subscribing connection, answered with [`crate::proto::msg::ShardMsg::SubReady`].
        conn: Option<ConnRef>,
    },
    /// An event published on this node, for the other nodes.
    Publish {
        /// App of the channel.
        app: AppIdx,
        /// Channel name.
        channel: Box<str>,
        /// The complete WebSocket frame.
        frame: Bytes,
        /// The sender's connection that must not get it.
        exclude: Option<SocketId>,
    },
    /// A connection joins a presence channel as `user_id`.
    Join {
        /// App of the channel.
        app: AppIdx,
        /// Channel name.
        channel: Box<str>,
        /// Member id.
        user_id: Box<str>,
        /// `user_info` as compact JSON, if any.
        user_info: Option<Box<str>>,
        /// The joining connection, answered with `PresenceJoined`.
        conn: ConnRef,
        /// A repeated subscribe of a connection already in: answer with the
        /// members, count nothing.
        again: bool,
    },
    /// A connection that had joined leaves (unsubscribed or closed).
    Leave {
        /// App of the channel.
        app: AppIdx,
        /// Channel name.
        channel: Box<str>,
        /// Member id.
        user_id: Box<str>,
        /// The leaving connection.
        conn: ConnRef,
    },
    /// A user's first signed-in connection on this node (from the user's
    /// owner shard), or its last one leaving.
    SignedIn {
        /// App of the user.
        app: AppIdx,
        /// User id.
        user_id: Box<str>,
        /// In (true) or out.
        online: bool,
    },
    /// A watcher wants to know which of `user_ids` are online anywhere.
    Watch {
        /// App of the users.
        app: AppIdx,
        /// Watched user ids.
        user_ids: Vec<Box<str>>,
        /// The watching connection, answered with `Watchlist`.
        watcher: ConnRef,
    },
    /// Close the user's signed-in connections on every other node.
    Terminate {
        /// App of the user.
        app: AppIdx,
        /// User id.
        user_id: Box<str>,
    },
    /// A question of the HTTP API about the whole cluster.
    Query {
        /// Shard to answer.
        from: usize,
        /// Query id on that shard.
        id: u64,
        /// App of the question.
        app: AppIdx,
        /// What is asked.
        query: ClusterQuery,
    },
    /// An event for a cache channel: stored in Redis, then sent to every
    /// node, this one included, so that stores and replays keep one order.
    CachePublish {
        /// App of the channel.
        app: AppIdx,
        /// Channel name.
        channel: Box<str>,
        /// The complete WebSocket frame.
        frame: Bytes,
        /// The sender's connection that must not get it.
        exclude: Option<SocketId>,
    },
    /// A subscriber of a cache channel wants the last event (or a miss).
    CacheFetch {
        /// App of the channel.
        app: AppIdx,
        /// Channel name.
        channel: Box<str>,
        /// The subscribing connection, answered with `CacheReplay`.
        conn: ConnRef,
    },
}

/// What the HTTP API asks of the cluster.
#[derive(Debug)]
pub enum ClusterQuery {
    /// Subscription counts (and user counts of presence channels) of
    /// these channels, index-aligned; answered with `QueryReply`.
    Counts(Vec<Box<str>>),
    /// Occupied channels whose name starts with the prefix; answered with
    /// `ChannelList`.
    List(Box<str>),
    /// A presence channel's member ids; answered with `UserList`.
    Users(Box<str>),
    /// A cache channel's event and TTL; answered with `CacheInfo`.
    Cache(Box<str>),
    /// Nothing to count: answered with an empty `QueryReply` once every
    /// event the shard handed over before it is with Redis (or kept to be
    /// sent in order), so that an HTTP publish is answered only when a
    /// publish that follows it, through any node, comes after it.
    Sent,
}
