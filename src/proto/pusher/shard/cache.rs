//! Cache channels (spec §8) on their owner shard: the last event of each,
//! stored as it is broadcast, replayed to a new subscriber after its
//! `subscription_succeeded` (or `pusher:cache_miss`), and read for
//! `info=cache`.

use std::time::{Duration, Instant};

use bytes::Bytes;

use super::{Shard, SubState, is_authorizing};
use crate::{
    core::{AppIdx, ConnRef, HookKind, SocketId},
    proto::{
        cluster::{ClusterQuery, ClusterUp},
        index::owner_shard,
        msg::ShardMsg,
        pusher::{
            channel::{self, ChannelKind},
            messages,
            shard::{ShardEvent, queries::Gather},
        },
    },
};

impl Shard {
    /// On a cache channel's owner: an event published over the HTTP API or
    /// Redis is remembered, then broadcast (spec §8).
    pub(super) fn cache_publish(
        &mut self,
        app: AppIdx,
        channel: &str,
        frame: Bytes,
        exclude: Option<SocketId>,
        at: Instant,
    ) {
        let ttl = self.apps.get(app).cache_ttl;
        self.cache.store(app, channel, frame.clone(), at, ttl);
        self.broadcast(app, channel, frame, exclude);
    }

    /// On a cache channel's owner: answers an `info=cache` query.
    pub(super) fn answer_cache(
        &mut self,
        from: usize,
        id: u64,
        app: AppIdx,
        channel: &str,
        at: Instant,
    ) {
        let cached = self.cache_info(app, channel, at);
        self.send_to_shard(from, ShardMsg::CacheInfo { id, cached });
    }

    /// On a cache channel's owner: the cached frame, unless expired at `at`.
    pub(super) fn cached_frame(&self, app: AppIdx, channel: &str, at: Instant) -> Option<Bytes> {
        self.cache.get(app, channel, at).map(|c| c.frame.clone())
    }

    /// On a cache channel's owner: answers a subscriber with the cached
    /// event or a miss.
    pub(super) fn replay_to(&mut self, app: AppIdx, channel: Box<str>, conn: ConnRef, at: Instant) {
        let frame = self.cached_frame(app, &channel, at);
        if frame.is_none() && self.wants(app, HookKind::CacheMiss) {
            let event = ShardEvent::CacheMiss { app, channel: channel.clone() };
            // Subscribers arriving together share one webhook, as on Pusher;
            // the queue is drained every batch, so the scan stays short.
            if !self.events.contains(&event) {
                self.events.push(event);
            }
        }
        self.send_to_shard(
            conn.shard as usize,
            ShardMsg::CacheReplay { app, channel, conn, frame },
        );
    }

    /// On the subscriber's shard: the owner's replay completes a cache
    /// channel subscription (`subscription_succeeded`, then the cached event
    /// or `pusher:cache_miss`). A presence-cache subscription is already
    /// active (the owner's `PresenceJoined` came first) and only replays.
    pub(super) fn cache_replay(
        &mut self,
        app: AppIdx,
        channel: &str,
        me: ConnRef,
        frame: Option<Bytes>,
    ) {
        let Some(conn) = self.conns.get_mut(me.key as usize) else { return };
        if conn.generation != me.generation {
            return;
        }
        let Some(at) = conn.subs.iter().position(|s| &*s.channel == channel) else { return };
        let kind = channel::classify(channel).kind;
        let added = match conn.subs[at].state {
            SubState::Joining | SubState::Announcing => return,
            // Presence-cache: the owner replays right after its join verdict.
            SubState::Active if kind == ChannelKind::Presence => false,
            // Already completed by an earlier fetch (unsubscribed and
            // subscribed again while it was in flight): replay once only.
            SubState::Active => return,
            SubState::Fetching => {
                let (name, added) = self.index.subscribe(app, channel, me.key);
                let sub = &mut conn.subs[at];
                (sub.channel, sub.state) = (name, SubState::Active);
                if is_authorizing(kind) {
                    conn.session.authorize();
                }
                self.send(me.key, messages::subscription_succeeded(channel));
                added
            }
        };
        self.send(me.key, frame.unwrap_or_else(|| messages::cache_miss(channel)));
        // In a cluster the node's bridge counted it when it was asked.
        if added && !self.settings.cluster {
            self.count_subscription(app, channel, kind, 1);
        }
    }

    /// Starts asking a cache channel's owner for its cached event; the
    /// answer is an [`Answer::Cache`](super::queries::Answer::Cache).
    pub fn start_cache(&mut self, app: AppIdx, channel: &str, now: Instant) -> u64 {
        if self.settings.cluster {
            let id = self.new_query(1, Gather::Cache(None));
            let query = ClusterQuery::Cache(channel.into());
            self.up(ClusterUp::Query { from: self.id, id, app, query });
            return id;
        }
        let owner = owner_shard(app, channel, self.shards);
        if owner == self.id {
            let cached = self.cache_info(app, channel, now);
            return self.new_query(0, Gather::Cache(cached));
        }
        let id = self.new_query(1, Gather::Cache(None));
        let msg = ShardMsg::CacheQuery { from: self.id, id, app, channel: channel.into(), at: now };
        self.send_to_shard(owner, msg);
        id
    }

    pub(super) fn cache_info(
        &self,
        app: AppIdx,
        channel: &str,
        at: Instant,
    ) -> Option<(Bytes, Duration)> {
        self.cache.get(app, channel, at).map(|c| (c.frame.clone(), c.expires - at))
    }

    /// Cache entries held on this shard (expired ones until the next tick).
    pub fn cached_channels(&self) -> usize {
        self.cache.len()
    }
}
