//! Node-wide numbers for the HTTP API (spec §12.4): channel counts, the
//! occupied-channel list and presence members. A query asks every shard
//! (or the owner) over the rings and gathers the answers; when the last one
//! is in, its id goes on the completed list ([`Shard::take_completed`]) and
//! the asker takes the result with [`Shard::take_answer`].

use std::{collections::BTreeMap, time::Duration};

use bytes::Bytes;

use super::Shard;
use crate::{
    core::AppIdx,
    proto::{
        cluster::{ClusterQuery, ClusterUp},
        index::owner_shard,
        msg::{ChannelCounts, ShardMsg},
    },
};

/// A query still waiting for answers.
pub(super) struct PendingQuery {
    remaining: usize,
    gather: Gather,
}

/// What a pending query has gathered so far.
pub(super) enum Gather {
    /// Counts of named channels, index-aligned with the request.
    Counts(Vec<ChannelCounts>),
    /// Occupied channels by name; sorted so answers are stable.
    List(BTreeMap<Box<str>, ChannelCounts>),
    /// Presence member ids, from the channel's owner.
    Users(Vec<Box<str>>),
    /// A cache channel's event and remaining TTL, from its owner.
    Cache(Option<(Bytes, Duration)>),
}

/// The result of a completed query.
#[derive(Debug)]
pub enum Answer {
    /// Node-wide counts of the asked channels, index-aligned with them
    /// ([`Shard::start_query`]).
    Counts(Vec<ChannelCounts>),
    /// Every occupied channel by name, with `users` set for presence
    /// channels ([`Shard::start_list`]).
    List(Vec<(Box<str>, ChannelCounts)>),
    /// A presence channel's unique member ids ([`Shard::start_users`]).
    Users(Vec<Box<str>>),
    /// A cache channel's frame and remaining TTL, `None` when nothing is
    /// cached ([`Shard::start_cache`]).
    Cache(Option<(Bytes, Duration)>),
}

fn merge_list(acc: &mut BTreeMap<Box<str>, ChannelCounts>, part: Vec<(Box<str>, ChannelCounts)>) {
    for (name, counts) in part {
        let entry = acc.entry(name).or_default();
        entry.subscriptions += counts.subscriptions;
        entry.users = entry.users.or(counts.users);
    }
}

impl Shard {
    /// Starts gathering node-wide counts for `channels`.
    pub fn start_query(&mut self, app: AppIdx, channels: &[&str]) -> u64 {
        if self.settings.cluster {
            let zeros = channels.iter().map(|_| ChannelCounts::default()).collect();
            let id = self.new_query(1, Gather::Counts(zeros));
            let query = ClusterQuery::Counts(channels.iter().map(|c| (*c).into()).collect());
            self.up(ClusterUp::Query { from: self.id, id, app, query });
            return id;
        }
        let counts = channels.iter().map(|c| self.local_counts(app, c)).collect();
        let id = self.new_query(self.shards - 1, Gather::Counts(counts));
        for to in 0..self.shards {
            if to != self.id {
                let channels = channels.iter().map(|c| (*c).into()).collect();
                self.send_to_shard(to, ShardMsg::Query { from: self.id, id, app, channels });
            }
        }
        id
    }

    /// In a cluster: a query answered once the events this shard handed
    /// over so far are with Redis ([`ClusterQuery::Sent`]); `None` alone,
    /// where delivery to the node's shards is already under way.
    pub fn start_sent(&mut self, app: AppIdx) -> Option<u64> {
        if !self.settings.cluster {
            return None;
        }
        let id = self.new_query(1, Gather::Counts(Vec::new()));
        self.up(ClusterUp::Query { from: self.id, id, app, query: ClusterQuery::Sent });
        Some(id)
    }

    /// Starts listing the node's occupied channels of `app` whose names
    /// start with `prefix`.
    pub fn start_list(&mut self, app: AppIdx, prefix: &str) -> u64 {
        if self.settings.cluster {
            let id = self.new_query(1, Gather::List(BTreeMap::new()));
            let query = ClusterQuery::List(prefix.into());
            self.up(ClusterUp::Query { from: self.id, id, app, query });
            return id;
        }
        let mut list = BTreeMap::new();
        merge_list(&mut list, self.local_list(app, prefix));
        let id = self.new_query(self.shards - 1, Gather::List(list));
        for to in 0..self.shards {
            if to != self.id {
                let msg = ShardMsg::ListChannels { from: self.id, id, app, prefix: prefix.into() };
                self.send_to_shard(to, msg);
            }
        }
        id
    }

    /// Starts asking a presence channel's owner for its member ids.
    pub fn start_users(&mut self, app: AppIdx, channel: &str) -> u64 {
        if self.settings.cluster {
            let id = self.new_query(1, Gather::Users(Vec::new()));
            let query = ClusterQuery::Users(channel.into());
            self.up(ClusterUp::Query { from: self.id, id, app, query });
            return id;
        }
        let owner = owner_shard(app, channel, self.shards);
        if owner == self.id {
            let users = self.rosters.user_ids(app, channel);
            return self.new_query(0, Gather::Users(users));
        }
        let id = self.new_query(1, Gather::Users(Vec::new()));
        let msg = ShardMsg::ListUsers { from: self.id, id, app, channel: channel.into() };
        self.send_to_shard(owner, msg);
        id
    }

    /// The query's result once every answer is in (and then only once);
    /// `None` while it waits, or for an unknown id.
    pub fn take_answer(&mut self, id: u64) -> Option<Answer> {
        if self.queries.get(&id)?.remaining > 0 {
            return None;
        }
        let gather = self.queries.remove(&id)?.gather;
        Some(match gather {
            Gather::Counts(counts) => Answer::Counts(counts),
            Gather::List(list) => {
                Answer::List(list.into_iter().filter(|(_, c)| c.subscriptions > 0).collect())
            }
            Gather::Users(users) => Answer::Users(users),
            Gather::Cache(cached) => Answer::Cache(cached),
        })
    }

    /// Whether every answer of query `id` is in.
    pub fn is_answered(&self, id: u64) -> bool {
        self.queries.get(&id).is_some_and(|q| q.remaining == 0)
    }

    /// Hands over the ids of the queries that completed since the last call.
    pub fn take_completed(&mut self, into: &mut Vec<u64>) {
        into.clear();
        std::mem::swap(&mut self.completed, into);
    }

    /// Forgets a query whose asker went away.
    pub fn cancel_query(&mut self, id: u64) {
        self.queries.remove(&id);
    }

    pub(super) fn new_query(&mut self, remaining: usize, gather: Gather) -> u64 {
        let id = self.next_query;
        self.next_query += 1;
        self.queries.insert(id, PendingQuery { remaining, gather });
        if remaining == 0 {
            self.completed.push(id);
        }
        id
    }

    /// Applies one shard's answer; lists the query as completed after the
    /// last one.
    pub(super) fn answered(&mut self, id: u64, merge: impl FnOnce(&mut Gather)) {
        let Some(pending) = self.queries.get_mut(&id) else { return };
        merge(&mut pending.gather);
        pending.remaining = pending.remaining.saturating_sub(1);
        if pending.remaining == 0 {
            self.completed.push(id);
        }
    }

    /// Another shard asks for this shard's part of some channels' counts.
    pub(super) fn answer_counts(
        &mut self,
        from: usize,
        id: u64,
        app: AppIdx,
        channels: &[Box<str>],
    ) {
        let counts = channels.iter().map(|c| self.local_counts(app, c)).collect();
        self.send_to_shard(from, ShardMsg::QueryReply { id, counts });
    }

    /// Another shard asks for this shard's part of a channel listing.
    pub(super) fn answer_list(&mut self, from: usize, id: u64, app: AppIdx, prefix: &str) {
        let channels = self.local_list(app, prefix);
        self.send_to_shard(from, ShardMsg::ChannelList { id, channels });
    }

    /// Another shard asks this owner for a presence channel's member ids.
    pub(super) fn answer_users(&mut self, from: usize, id: u64, app: AppIdx, channel: &str) {
        let users = self.rosters.user_ids(app, channel);
        self.send_to_shard(from, ShardMsg::UserList { id, users });
    }

    pub(super) fn query_reply(&mut self, id: u64, counts: Vec<ChannelCounts>) {
        self.answered(id, |gather| {
            if let Gather::Counts(acc) = gather {
                for (acc, part) in acc.iter_mut().zip(counts) {
                    acc.subscriptions += part.subscriptions;
                    acc.users = acc.users.or(part.users);
                }
            }
        });
    }

    pub(super) fn list_reply(&mut self, id: u64, channels: Vec<(Box<str>, ChannelCounts)>) {
        self.answered(id, |gather| {
            if let Gather::List(acc) = gather {
                merge_list(acc, channels);
            }
        });
    }

    pub(super) fn users_reply(&mut self, id: u64, users: Vec<Box<str>>) {
        self.answered(id, |gather| {
            if let Gather::Users(acc) = gather {
                *acc = users;
            }
        });
    }

    pub(super) fn cache_reply(&mut self, id: u64, cached: Option<(Bytes, Duration)>) {
        self.answered(id, |gather| {
            if let Gather::Cache(acc) = gather {
                *acc = cached;
            }
        });
    }

    pub(super) fn local_counts(&self, app: AppIdx, channel: &str) -> ChannelCounts {
        let owns = owner_shard(app, channel, self.shards) == self.id;
        let presence = channel.starts_with("presence-");
        ChannelCounts {
            subscriptions: self.index.count(app, channel),
            users: (owns && presence).then(|| self.rosters.user_count(app, channel)),
        }
    }

    /// This shard's part of a channel listing: local subscriptions, and the
    /// user counts of the presence channels it owns (which may have no local
    /// subscriber).
    pub(super) fn local_list(&self, app: AppIdx, prefix: &str) -> Vec<(Box<str>, ChannelCounts)> {
        let mut out: Vec<(Box<str>, ChannelCounts)> = self
            .index
            .channels_of(app)
            .filter(|(name, _)| name.starts_with(prefix))
            .map(|(name, n)| (name.into(), ChannelCounts { subscriptions: n, users: None }))
            .collect();
        for (name, users) in self.rosters.channels_of(app) {
            if name.starts_with(prefix) {
                let counts = ChannelCounts { subscriptions: 0, users: Some(users) };
                out.push((name.into(), counts));
            }
        }
        out
    }
}
