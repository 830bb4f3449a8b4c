//! Webhook events (spec §13) as the shard raises them: only for apps with
//! a webhook that wants the kind, node-wide ones only on the channel's
//! owner. Sending them is the IO layer's.

use super::Shard;
use crate::core::{AppIdx, HookKind, SocketId};

/// Something the shard noticed that a webhook reports (spec §13). Raised
/// only for apps with a webhook that wants the kind, and node-wide ones
/// (occupancy, members, counts, cache misses) only on the channel's owner,
/// so each happens once per node. The runtime drains them with
/// [`Shard::drain_events`] after each batch of work and on every tick.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ShardEvent {
    /// A subscriber of a cache channel found nothing cached and was sent
    /// `pusher:cache_miss` (spec §8). Raised on the channel's owner, once
    /// per subscriber: the `cache_miss` webhook should fold repeats of a
    /// channel (Pusher de-duplicates simultaneous subscribers).
    CacheMiss {
        /// App of the channel.
        app: AppIdx,
        /// Channel name.
        channel: Box<str>,
    },
    /// The channel's first subscription, node-wide.
    ChannelOccupied {
        /// App of the channel.
        app: AppIdx,
        /// Channel name.
        channel: Box<str>,
    },
    /// The channel stayed empty for the app's `webhook_delay`.
    ChannelVacated {
        /// App of the channel.
        app: AppIdx,
        /// Channel name.
        channel: Box<str>,
    },
    /// A user's first connection joined a presence channel.
    MemberAdded {
        /// App of the channel.
        app: AppIdx,
        /// Channel name.
        channel: Box<str>,
        /// Member id.
        user_id: Box<str>,
    },
    /// A user's last connection left and stayed away for `webhook_delay`.
    MemberRemoved {
        /// App of the channel.
        app: AppIdx,
        /// Channel name.
        channel: Box<str>,
        /// Member id.
        user_id: Box<str>,
    },
    /// A connection sent a client event, raised on the sender's shard.
    ClientEvent {
        /// App of the channel.
        app: AppIdx,
        /// Channel name.
        channel: Box<str>,
        /// Event name (`client-…`).
        event: Box<str>,
        /// `data` as the client sent it (JSON text).
        data: Box<str>,
        /// The sender.
        socket_id: SocketId,
        /// The sender's member id, on presence channels.
        user_id: Option<Box<str>>,
    },
    /// A non-presence channel's node-wide subscription count, at the same
    /// moments (and throttling) as `pusher_internal:subscription_count`.
    SubscriptionCount {
        /// App of the channel.
        app: AppIdx,
        /// Channel name.
        channel: Box<str>,
        /// Subscriptions node-wide.
        count: usize,
    },
}

impl Shard {
    /// Whether some webhook of `app` wants `kind` (spec §13).
    pub(super) fn wants(&self, app: AppIdx, kind: HookKind) -> bool {
        let app = self.apps.get(app);
        !app.webhooks.is_empty() && app.webhook_kinds().contains(kind)
    }

    /// Occupancy (and its delayed vacate) is tracked when either event is
    /// wanted, so that a quick return suppresses both halves.
    pub(super) fn wants_occupancy(&self, app: AppIdx) -> bool {
        self.wants(app, HookKind::ChannelOccupied) || self.wants(app, HookKind::ChannelVacated)
    }

    pub(super) fn wants_members(&self, app: AppIdx) -> bool {
        self.wants(app, HookKind::MemberAdded) || self.wants(app, HookKind::MemberRemoved)
    }

    /// Hands every [`ShardEvent`] noticed since the last call to `f`.
    pub fn drain_events(&mut self, f: impl FnMut(ShardEvent)) {
        self.events.drain(..).for_each(f);
    }

    /// Whether [`Shard::drain_events`] has anything.
    pub fn has_events(&self) -> bool {
        !self.events.is_empty()
    }
}
