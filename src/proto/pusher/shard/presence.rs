//! Presence on a channel's owner shard: the node-wide roster, the join
//! verdict (`subscription_succeeded` with the members, or full), and
//! `member_added`/`member_removed` with their webhooks.

use std::time::Instant;

use super::{Shard, SubState};
use crate::{
    core::{AppIdx, CloseCode, ConnRef, HookKind},
    proto::{
        cluster::ClusterUp,
        console::ConsoleEvent,
        index::Join,
        msg::{JoinOutcome, ShardMsg},
        pusher::{
            channel::{self, ChannelKind},
            messages,
            shard::ShardEvent,
        },
    },
};

impl Shard {
    /// On the owner shard: a member's connection left. The last connection
    /// of a user removes the member: `member_removed` to the channel, and
    /// the webhook held for the app's delay.
    pub(super) fn owner_leave(
        &mut self,
        app: AppIdx,
        channel: Box<str>,
        user_id: Box<str>,
        conn: ConnRef,
    ) {
        if !self.rosters.leave(app, &channel, &user_id, conn) {
            return;
        }
        let frame = messages::member_removed(&channel, &user_id);
        self.broadcast(app, &channel, frame, None);
        self.tap(app, || ConsoleEvent::MemberRemoved {
            channel: channel.clone(),
            user_id: user_id.clone(),
        });
        if !self.wants_members(app) {
            return;
        }
        match self.now {
            Some(now) => {
                let due = now + self.apps.get(app).webhook_delay;
                self.delayed.remove_member(app, channel, user_id, due);
            }
            // No clock seen yet: better undelayed than lost.
            None if self.wants(app, HookKind::MemberRemoved) => {
                self.events.push(ShardEvent::MemberRemoved { app, channel, user_id })
            }
            None => {}
        }
    }

    /// On the owner shard: records a join and answers the joining shard.
    /// `member_added` goes out before the answer, so the joiner (not yet in
    /// any index) never sees its own arrival.
    pub(super) fn owner_join(
        &mut self,
        app: AppIdx,
        channel: Box<str>,
        user_id: &str,
        user_info: Option<Box<str>>,
        conn: ConnRef,
        at: Instant,
    ) {
        let max = self.apps.get(app).max_presence_members;
        let added_info = user_info.clone();
        let mut replay = false;
        let outcome = match self.rosters.join(app, &channel, user_id, user_info, conn, max) {
            Join::Full => JoinOutcome::Full,
            join => {
                if join == Join::Added {
                    let frame = messages::member_added(&channel, user_id, added_info.as_deref());
                    self.broadcast(app, &channel, frame, None);
                    self.tap(app, || ConsoleEvent::MemberAdded {
                        channel: channel.clone(),
                        user_id: user_id.into(),
                    });
                    if self.wants_members(app)
                        && !self.delayed.rejoined(app, &channel, user_id)
                        && self.wants(app, HookKind::MemberAdded)
                    {
                        let (channel, user_id) = (channel.clone(), user_id.into());
                        self.events.push(ShardEvent::MemberAdded { app, channel, user_id });
                    }
                }
                let snapshot = self.rosters.snapshot_json(app, &channel);
                replay = channel::classify(&channel).cache;
                JoinOutcome::Joined(messages::presence_subscription_succeeded(&channel, &snapshot))
            }
        };
        let cache_channel = replay.then(|| channel.clone());
        self.send_to_shard(
            conn.shard as usize,
            ShardMsg::PresenceJoined { app, channel, conn, outcome },
        );
        // Right behind the verdict on the same ring, so the joiner gets the
        // replay after its member list and before any later event.
        if let Some(channel) = cache_channel {
            self.replay_to(app, channel, conn, at);
        }
    }

    /// On the joining connection's shard: the owner's verdict.
    pub(super) fn joined(&mut self, app: AppIdx, channel: &str, me: ConnRef, outcome: JoinOutcome) {
        let Some(conn) = self.conns.get_mut(me.key as usize) else { return };
        if conn.generation != me.generation {
            return;
        }
        let Some(at) = conn.subs.iter().position(|s| &*s.channel == channel) else { return };
        match outcome {
            JoinOutcome::Joined(frame) => {
                let mut added = false;
                if let SubState::Joining = conn.subs[at].state {
                    let (name, new) = self.index.subscribe(app, channel, me.key);
                    let sub = &mut conn.subs[at];
                    (sub.channel, sub.state) = (name, SubState::Active);
                    added = new;
                }
                conn.session.authorize();
                self.send(me.key, frame);
                if added && !self.settings.cluster {
                    self.count_subscription(app, channel, ChannelKind::Presence, 1);
                }
            }
            JoinOutcome::Full => {
                conn.subs.swap_remove(at);
                self.interest.remove(app, channel);
                if self.settings.cluster {
                    // The node counted the subscription when it was asked.
                    let (shard, channel) = (self.id as u16, channel.into());
                    self.up(ClusterUp::Sub { app, channel, shard, delta: -1, conn: None });
                }
                let max = self.apps.get(app).max_presence_members;
                let msg =
                    format!("Cannot join {channel}: the channel has its maximum of {max} members");
                self.send(me.key, messages::error(Some(CloseCode::OVER_CAPACITY.0), &msg));
            }
        }
    }
}
