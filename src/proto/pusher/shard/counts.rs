//! `subscription_count` (spec §11) on a channel's owner shard: the node-wide
//! count each shard's subscriptions add to, broadcast to the subscribers
//! (at once up to 100, then at most every 5 s) and raised as a webhook;
//! occupancy (`channel_occupied`/`channel_vacated`) follows the same count.

use std::time::{Duration, Instant};

use super::Shard;
use crate::{
    core::{AppIdx, HookKind},
    proto::{
        console::ConsoleEvent,
        msg::ShardMsg,
        pusher::{
            channel::{self, ChannelKind},
            messages,
            shard::ShardEvent,
        },
    },
};

/// Subscribers above which `subscription_count` goes out at most once per
/// [`SUBSCRIPTION_COUNT_INTERVAL`] (spec §11).
pub const SUBSCRIPTION_COUNT_THROTTLE_ABOVE: usize = 100;

/// Least time between two `subscription_count` broadcasts of a busy channel.
pub const SUBSCRIPTION_COUNT_INTERVAL: Duration = Duration::from_secs(5);

/// Node-wide subscription count of one channel, kept by its owner shard.
#[derive(Debug, Default)]
pub(super) struct SubCount {
    total: usize,
    last_sent: Option<Instant>,
    /// A change is waiting for the throttle interval to pass.
    pending: bool,
}

impl Shard {
    /// Tells the channel's owner that a local subscription came or went, for
    /// apps with `subscription_count` on. Presence channels count users
    /// instead (spec §11), and server-to-user channels are internal.
    /// The owner also needs the count for occupancy webhooks, presence
    /// channels included.
    pub(super) fn count_subscription(
        &mut self,
        app: AppIdx,
        channel: &str,
        kind: ChannelKind,
        delta: i32,
    ) {
        let counted = match kind {
            ChannelKind::ServerToUser => false,
            ChannelKind::Presence => self.wants_occupancy(app) || self.watched(app),
            _ => {
                self.apps.get(app).subscription_count
                    || self.wants_counts(app)
                    || self.wants_occupancy(app)
                    || self.watched(app)
            }
        };
        if !counted {
            return;
        }
        let msg = ShardMsg::SubscriptionDelta { app, channel: channel.into(), delta };
        self.send_to_owner(app, channel, msg);
    }

    /// On the owner: applies a change and broadcasts the new count, at once
    /// up to 100 subscribers, else at most once per 5 s (spec §11).
    pub(super) fn owner_count(&mut self, app: AppIdx, channel: Box<str>, delta: i32) {
        let occupancy = self.wants_occupancy(app);
        let key = (app, channel);
        let entry = self.sub_counts.entry(key.clone()).or_default();
        let before = entry.total;
        entry.total = entry.total.saturating_add_signed(delta as isize);
        let after = entry.total;
        if before == 0 && entry.total > 0 && occupancy {
            // A held vacate means the receiver never saw the channel empty.
            if !self.delayed.reoccupied(app, &key.1) && self.wants(app, HookKind::ChannelOccupied) {
                self.events.push(ShardEvent::ChannelOccupied { app, channel: key.1.clone() });
            }
        }
        if before == 0 && after > 0 {
            self.tap(app, || ConsoleEvent::Occupied { channel: key.1.clone() });
        } else if before > 0 && after == 0 {
            self.tap(app, || ConsoleEvent::Vacated { channel: key.1.clone() });
        }
        let Some(entry) = self.sub_counts.get_mut(&key) else { return };
        if entry.total == 0 {
            // Nobody is left to tell.
            self.sub_counts.remove(&key);
            match self.now {
                Some(now) if occupancy => {
                    let due = now + self.apps.get(app).webhook_delay;
                    self.delayed.vacate(app, key.1, due);
                }
                // No clock seen yet: better undelayed than lost.
                None if self.wants(app, HookKind::ChannelVacated) => {
                    self.events.push(ShardEvent::ChannelVacated { app, channel: key.1 });
                }
                _ => {}
            }
            return;
        }
        let due = match (entry.last_sent, self.now) {
            _ if entry.total <= SUBSCRIPTION_COUNT_THROTTLE_ABOVE => true,
            (Some(last), Some(now)) => now >= last + SUBSCRIPTION_COUNT_INTERVAL,
            _ => true,
        };
        if due {
            entry.last_sent = self.now;
            let total = entry.total;
            self.emit_count(app, &key.1, total);
        } else if !entry.pending {
            entry.pending = true;
            self.sub_counts_pending.push(key);
        }
    }

    /// Sends the throttled counts whose interval has passed.
    pub(super) fn flush_sub_counts(&mut self, now: Instant) {
        if self.sub_counts_pending.is_empty() {
            return;
        }
        let pending = std::mem::take(&mut self.sub_counts_pending);
        for key in pending {
            let Some(entry) = self.sub_counts.get_mut(&key) else { continue };
            if entry.last_sent.is_some_and(|last| now < last + SUBSCRIPTION_COUNT_INTERVAL) {
                self.sub_counts_pending.push(key);
                continue;
            }
            entry.pending = false;
            entry.last_sent = Some(now);
            let total = entry.total;
            self.emit_count(key.0, &key.1, total);
        }
    }

    /// `subscription_count` webhooks follow the counts of the channels
    /// whose subscribers are told theirs: never presence (spec §11, §13).
    pub(super) fn wants_counts(&self, app: AppIdx) -> bool {
        self.wants(app, HookKind::SubscriptionCount)
    }

    /// Sends a count that is due: to the subscribers, and to the webhook.
    pub(super) fn emit_count(&mut self, app: AppIdx, channel: &str, total: usize) {
        if channel::classify(channel).kind == ChannelKind::Presence {
            return;
        }
        if self.apps.get(app).subscription_count {
            let frame = messages::subscription_count(channel, total);
            self.broadcast(app, channel, frame, None);
        }
        if self.wants_counts(app) {
            let channel = channel.into();
            self.events.push(ShardEvent::SubscriptionCount { app, channel, count: total });
        }
    }
}
