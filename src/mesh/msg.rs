//! What travels on the rings. Payloads are pre-framed [`Bytes`], so a message
//! fanned out to many shards is encoded once and shared by refcount.

use bytes::Bytes;

use crate::protocol::{AppIdx, ConnRef, SocketId};

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
    /// Stop accepting, say goodbye to every connection, drain, exit.
    Shutdown,
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
