//! What travels on the rings. Payloads are pre-framed [`Bytes`], so a message
//! fanned out to many shards is encoded once and shared by refcount.

use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::core::{AppIdx, ConnRef, SocketId};

/// A client socket moving between shards, opaque to the protocol: the IO
/// layer puts its own connection in and takes it out on the other side.
pub struct Adoption(pub Box<dyn std::any::Any + Send>);

impl std::fmt::Debug for Adoption {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Adoption")
    }
}

/// A message to one shard.
#[derive(Debug)]
pub enum ShardMsg {
    /// Write `frame` to every local subscriber of `channel`, except the
    /// connection with socket id `exclude`.
    Deliver {
        /// App of the channel.
        app: AppIdx,
        /// Channel name.
        channel: Box<str>,
        /// The complete WebSocket frame, shared by every recipient.
        frame: Bytes,
        /// The sender, for client events and `socket_id` exclusion.
        exclude: Option<SocketId>,
    },
    /// Shard `from` now holds (or no longer holds) subscriptions in these
    /// channel buckets ([`crate::proto::index::Interest`]). Sent without
    /// waking the target, which reads it before it next decides where a
    /// publish goes.
    Interest {
        /// The announcing shard.
        from: u16,
        /// Buckets, each with whether `from` now holds it; one list shared
        /// by every target.
        changes: std::sync::Arc<[(u16, bool)]>,
    },
    /// To a presence channel's owner shard: `conn` subscribes as `user_id`.
    PresenceJoin {
        /// App of the channel.
        app: AppIdx,
        /// Channel name.
        channel: Box<str>,
        /// Member id.
        user_id: Box<str>,
        /// `user_info` as compact JSON, if any.
        user_info: Option<Box<str>>,
        /// The joining connection.
        conn: ConnRef,
        /// When it subscribed; a presence-cache replay is checked against it.
        at: Instant,
    },
    /// To a presence channel's owner shard: `conn` left (unsubscribed or
    /// disconnected). Sent exactly once per `PresenceJoin` that was not
    /// refused.
    PresenceLeave {
        /// App of the channel.
        app: AppIdx,
        /// Channel name.
        channel: Box<str>,
        /// Member id.
        user_id: Box<str>,
        /// The leaving connection.
        conn: ConnRef,
    },
    /// From the owner back to the joining connection's shard.
    PresenceJoined {
        /// App of the channel.
        app: AppIdx,
        /// Channel name.
        channel: Box<str>,
        /// The joining connection.
        conn: ConnRef,
        /// The owner's verdict.
        outcome: JoinOutcome,
    },
    /// Asks a shard for its part of some channels' counts.
    Query {
        /// Shard to answer.
        from: usize,
        /// Query id on the asking shard.
        id: u64,
        /// App of the channels.
        app: AppIdx,
        /// Channel names.
        channels: Vec<Box<str>>,
    },
    /// One shard's answer to a [`ShardMsg::Query`], index-aligned with its channels.
    QueryReply {
        /// Query id on the asking shard.
        id: u64,
        /// Counts per channel.
        counts: Vec<ChannelCounts>,
    },
    /// Asks a shard for the occupied channels of `app` whose names start
    /// with `prefix`.
    ListChannels {
        /// Shard to answer.
        from: usize,
        /// Query id on the asking shard.
        id: u64,
        /// App of the channels.
        app: AppIdx,
        /// Name prefix; empty for every channel.
        prefix: Box<str>,
    },
    /// One shard's answer to a [`ShardMsg::ListChannels`]: its local
    /// subscriptions, plus user counts of the presence channels it owns.
    ChannelList {
        /// Query id on the asking shard.
        id: u64,
        /// Channel name and this shard's part of its counts.
        channels: Vec<(Box<str>, ChannelCounts)>,
    },
    /// Asks a presence channel's owner for the ids of its members.
    ListUsers {
        /// Shard to answer.
        from: usize,
        /// Query id on the asking shard.
        id: u64,
        /// App of the channel.
        app: AppIdx,
        /// Channel name.
        channel: Box<str>,
    },
    /// The owner's answer to a [`ShardMsg::ListUsers`].
    UserList {
        /// Query id on the asking shard.
        id: u64,
        /// Unique user ids.
        users: Vec<Box<str>>,
    },
    /// Close the connections signed in as `user_id` (spec §10.5).
    TerminateUser {
        /// App of the user.
        app: AppIdx,
        /// User id.
        user_id: Box<str>,
    },
    /// To a user's owner shard: `conn` signed in as `user_id`.
    UserOnline {
        /// App of the user.
        app: AppIdx,
        /// User id.
        user_id: Box<str>,
        /// The signed-in connection.
        conn: ConnRef,
    },
    /// To a user's owner shard: signed-in `conn` is gone.
    UserOffline {
        /// App of the user.
        app: AppIdx,
        /// User id.
        user_id: Box<str>,
        /// The departed connection.
        conn: ConnRef,
    },
    /// To the owner shard of every id in `user_ids`: `watcher` watches them
    /// (spec §10.3). The owner answers with a [`ShardMsg::Watchlist`] of
    /// those already online.
    Watch {
        /// App of the users.
        app: AppIdx,
        /// Watched user ids, all owned by the receiving shard.
        user_ids: Vec<Box<str>>,
        /// The watching connection.
        watcher: ConnRef,
    },
    /// To the owner shard of every id in `user_ids`: `watcher` is gone.
    Unwatch {
        /// App of the users.
        app: AppIdx,
        /// Watched user ids, all owned by the receiving shard.
        user_ids: Vec<Box<str>>,
        /// The departed connection.
        watcher: ConnRef,
    },
    /// To a watcher's shard: some watched users went online or offline.
    Watchlist {
        /// The watching connection.
        watcher: ConnRef,
        /// Online (true) or offline.
        online: bool,
        /// The users concerned.
        user_ids: Vec<Box<str>>,
    },
    /// To a channel's owner shard: the sender's local subscriber count of a
    /// channel with `subscription_count` enabled changed by `delta`.
    SubscriptionDelta {
        /// App of the channel.
        app: AppIdx,
        /// Channel name.
        channel: Box<str>,
        /// +1 for a subscription, -1 for an unsubscription.
        delta: i32,
    },
    /// To a cache channel's owner shard: an event published over the HTTP
    /// API, which the owner remembers and then broadcasts (spec §8). Routing
    /// every cached publish through the owner orders it with the replays.
    CachePublish {
        /// App of the channel.
        app: AppIdx,
        /// Channel name.
        channel: Box<str>,
        /// The complete WebSocket frame, cached and delivered as is.
        frame: Bytes,
        /// `socket_id` exclusion of the publish.
        exclude: Option<SocketId>,
        /// When it was published; the TTL counts from here.
        at: Instant,
    },
    /// To a cache channel's owner: `conn` is subscribing; the owner answers
    /// with a [`ShardMsg::CacheReplay`].
    CacheFetch {
        /// App of the channel.
        app: AppIdx,
        /// Channel name.
        channel: Box<str>,
        /// The subscribing connection.
        conn: ConnRef,
        /// When it subscribed.
        at: Instant,
    },
    /// From a cache channel's owner to a subscribing connection's shard: the
    /// event to replay, or `None` for `pusher:cache_miss`.
    CacheReplay {
        /// App of the channel.
        app: AppIdx,
        /// Channel name.
        channel: Box<str>,
        /// The subscribing connection.
        conn: ConnRef,
        /// The cached frame.
        frame: Option<Bytes>,
    },
    /// Asks a cache channel's owner for its cached event (`info=cache`).
    CacheQuery {
        /// Shard to answer.
        from: usize,
        /// Query id on the asking shard.
        id: u64,
        /// App of the channel.
        app: AppIdx,
        /// Channel name.
        channel: Box<str>,
        /// When the question was asked.
        at: Instant,
    },
    /// The owner's answer to a [`ShardMsg::CacheQuery`]: the cached frame and
    /// the time it has left.
    CacheInfo {
        /// Query id on the asking shard.
        id: u64,
        /// Frame and remaining TTL, if something is cached.
        cached: Option<(Bytes, Duration)>,
    },
    /// From the node's bridge, in a cluster: the node holds `conn`'s
    /// subscription in the cluster's view; it completes.
    SubReady {
        /// App of the channel.
        app: AppIdx,
        /// Channel name.
        channel: Box<str>,
        /// The subscribing connection.
        conn: ConnRef,
    },
    /// From the node's bridge to a user's owner shard, in a cluster: the
    /// user's first signed-in connection anywhere arrived (or its last one
    /// left); its watchers on this node are told.
    ClusterUser {
        /// App of the user.
        app: AppIdx,
        /// User id.
        user_id: Box<str>,
        /// Online (true) or offline.
        online: bool,
    },
    /// Incus routing, long-poll and presence traffic ([`crate::proto::incus`]).
    Incus(crate::proto::incus::IncusMsg),
    /// A console event another shard raised for `app`, numbered `seq` there
    /// and framed once ([`crate::proto::console`]), for this shard's viewers.
    Console {
        /// The app it happened in.
        app: AppIdx,
        /// The shard that raised it.
        from: u16,
        /// Its number among that shard's events of the app.
        seq: u64,
        /// The WebSocket frame the viewers get.
        frame: Bytes,
    },
    /// Stop accepting, say goodbye to every connection, drain, exit.
    Shutdown,
    /// A client socket handed to the shard that owns the HTTP-transport
    /// session its request names ([`crate::proto::pusher::xhr::owner`]).
    Adopt(Adoption),
    /// A payload for the ring tests.
    #[cfg(test)]
    Test(u64),
}

/// The owner's verdict on a presence join.
#[derive(Debug)]
pub enum JoinOutcome {
    /// Subscribed; the frame is the `subscription_succeeded` with the member list.
    Joined(Bytes),
    /// The channel is at its member limit.
    Full,
}

/// One shard's view of one channel.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ChannelCounts {
    /// Connections subscribed on this shard.
    pub subscriptions: usize,
    /// Unique users, reported only by the channel's presence owner.
    pub users: Option<usize>,
}
