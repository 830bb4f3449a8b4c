//! `channel_vacated` and `member_removed` webhooks held back on the owner
//! shard (spec §13): Pusher waits a few seconds and drops the event when the
//! channel or member comes back meanwhile, so a page reload does not look
//! like leaving and joining. Sans-IO: deadlines are computed from the time
//! the caller passes in, and [`Delayed::take_due`] runs on the shard's tick.

use std::{collections::HashMap, time::Instant};

use crate::core::AppIdx;

/// Pending vacates and member removals of the channels one shard owns.
#[derive(Debug, Default)]
pub struct Delayed {
    vacates: HashMap<(AppIdx, Box<str>), Instant>,
    removals: HashMap<(AppIdx, Box<str>, Box<str>), Instant>,
}

/// A held-back event whose delay has passed.
#[derive(Debug, PartialEq, Eq)]
pub enum Due {
    /// The channel stayed empty.
    Vacated {
        /// App of the channel.
        app: AppIdx,
        /// Channel name.
        channel: Box<str>,
    },
    /// The member stayed away.
    Removed {
        /// App of the channel.
        app: AppIdx,
        /// Channel name.
        channel: Box<str>,
        /// Member id.
        user_id: Box<str>,
    },
}

impl Delayed {
    /// Holds `channel_vacated` until `due`; a later vacate of the same
    /// channel replaces the deadline.
    pub fn vacate(&mut self, app: AppIdx, channel: Box<str>, due: Instant) {
        self.vacates.insert((app, channel), due);
    }

    /// The channel is occupied again: drops a held vacate. True if there was
    /// one, in which case the channel never looked empty to the receiver and
    /// `channel_occupied` must not go out either.
    pub fn reoccupied(&mut self, app: AppIdx, channel: &str) -> bool {
        // Keys are owned; the lookup allocates only on this (rare) path.
        self.vacates.remove(&(app, Box::from(channel))).is_some()
    }

    /// Holds `member_removed` until `due`.
    pub fn remove_member(
        &mut self,
        app: AppIdx,
        channel: Box<str>,
        user_id: Box<str>,
        due: Instant,
    ) {
        self.removals.insert((app, channel, user_id), due);
    }

    /// The member joined again: drops a held removal. True if there was one;
    /// then `member_added` must not go out either.
    pub fn rejoined(&mut self, app: AppIdx, channel: &str, user_id: &str) -> bool {
        if self.removals.is_empty() {
            return false;
        }
        self.removals.remove(&(app, Box::from(channel), Box::from(user_id))).is_some()
    }

    /// Hands out every event due at `now`, in deadline order.
    pub fn take_due(&mut self, now: Instant, mut f: impl FnMut(Due)) {
        if self.vacates.is_empty() && self.removals.is_empty() {
            return;
        }
        let mut due: Vec<(Instant, Due)> = Vec::new();
        self.vacates.retain(|(app, channel), at| {
            let keep = *at > now;
            if !keep {
                due.push((*at, Due::Vacated { app: *app, channel: channel.clone() }));
            }
            keep
        });
        self.removals.retain(|(app, channel, user_id), at| {
            let keep = *at > now;
            if !keep {
                let (channel, user_id) = (channel.clone(), user_id.clone());
                due.push((*at, Due::Removed { app: *app, channel, user_id }));
            }
            keep
        });
        due.sort_by_key(|(at, _)| *at);
        due.into_iter().for_each(|(_, d)| f(d));
    }

    /// Events held back now.
    pub fn len(&self) -> usize {
        self.vacates.len() + self.removals.len()
    }

    /// Whether nothing is held back.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    // The fake clock needs one real instant to count from.
    #![allow(clippy::disallowed_methods)]

    use std::time::Duration;

    use super::*;

    #[test]
    fn fires_at_the_deadline_and_cancels_on_return() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut d = Delayed::default();
        d.vacate(0, "a".into(), t0 + s(3));
        d.vacate(0, "b".into(), t0 + s(3));
        d.remove_member(0, "p".into(), "u1".into(), t0 + s(2));
        let mut fired = Vec::new();
        d.take_due(t0 + s(1), |e| fired.push(e));
        assert!(fired.is_empty());
        assert!(d.reoccupied(0, "b"));
        assert!(!d.reoccupied(0, "b"), "a vacate is dropped only once");
        assert!(!d.reoccupied(1, "a"), "apps are separate");
        assert!(!d.rejoined(0, "p", "u2"));
        d.take_due(t0 + s(3), |e| fired.push(e));
        assert_eq!(
            fired,
            [
                Due::Removed { app: 0, channel: "p".into(), user_id: "u1".into() },
                Due::Vacated { app: 0, channel: "a".into() },
            ]
        );
        assert!(d.is_empty());
    }
}
