//! Connection deadlines: each connection has at most one armed at a time
//! (its request's idle time, a write that makes no progress, a close that
//! lingers, a long-poll that waits too long), kept in one heap per shard.
//!
//! Entries are never removed early: a connection that moves its deadline
//! pushes a new entry, and an entry that no longer matches its
//! connection's current deadline (or generation) is skipped when it comes
//! due. That keeps re-arming to one push, at the cost of stale entries.
//! Those would stay until their time came (a connection's HTTP idle
//! deadline outlives its upgrade by most of a minute, one entry per idle
//! WebSocket), so once they outnumber the armed ones the heap is rebuilt
//! without them ([`Timers::crowded`], [`Timers::retain`]).

use std::{cmp::Reverse, collections::BinaryHeap, time::Instant};

/// Deadlines of the shard's connections, earliest first.
#[derive(Debug, Default)]
pub struct Timers {
    heap: BinaryHeap<Reverse<(Instant, u32, u32)>>,
    /// Connections with a deadline armed, as the callers report them.
    armed: usize,
}

/// Stale entries tolerated beyond the armed ones, so that a small heap is
/// not rebuilt at every disarm.
const SLACK: usize = 64;

impl Timers {
    /// Arms a deadline for the connection `key` of generation `generation`;
    /// `was_armed` says whether it replaces one the connection had.
    pub fn arm(&mut self, at: Instant, key: u32, generation: u32, was_armed: bool) {
        self.heap.push(Reverse((at, key, generation)));
        if !was_armed {
            self.armed += 1;
        }
    }

    /// A connection's armed deadline is no longer wanted (disarmed, fired,
    /// or the connection is gone); its entry, if still held, is stale.
    pub fn disarmed(&mut self) {
        self.armed = self.armed.saturating_sub(1);
    }

    /// Whether stale entries outnumber the armed ones enough to rebuild.
    pub fn crowded(&self) -> bool {
        self.heap.len() > 2 * self.armed + SLACK
    }

    /// Keeps the entries `live(at, key, generation)` says are current,
    /// and gives back the room of the others.
    pub fn retain(&mut self, mut live: impl FnMut(Instant, u32, u32) -> bool) {
        self.heap.retain(|Reverse((at, key, generation))| live(*at, *key, *generation));
        self.heap.shrink_to_fit();
        // Recounted, so a caller's missed report costs at most one early
        // rebuild.
        self.armed = self.heap.len();
    }

    /// The earliest entry, if any (possibly stale).
    pub fn next(&self) -> Option<Instant> {
        self.heap.peek().map(|Reverse((at, _, _))| *at)
    }

    /// Takes the next entry due at `now`.
    pub fn pop_due(&mut self, now: Instant) -> Option<(Instant, u32, u32)> {
        match self.heap.peek() {
            Some(Reverse((at, _, _))) if *at <= now => self.heap.pop().map(|Reverse(e)| e),
            _ => None,
        }
    }

    /// Entries held, stale ones included.
    pub fn len(&self) -> usize {
        self.heap.len()
    }

    /// Whether no entry is held.
    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn due_entries_come_out_earliest_first() {
        #[allow(clippy::disallowed_methods)]
        let t0 = Instant::now();
        let mut timers = Timers::default();
        timers.arm(t0 + Duration::from_secs(3), 1, 1, false);
        timers.arm(t0 + Duration::from_secs(1), 2, 1, false);
        timers.arm(t0 + Duration::from_secs(2), 3, 7, false);
        assert_eq!(timers.next(), Some(t0 + Duration::from_secs(1)));
        assert_eq!(timers.pop_due(t0), None);
        let at = t0 + Duration::from_secs(2);
        assert_eq!(timers.pop_due(at).map(|e| e.1), Some(2));
        assert_eq!(timers.pop_due(at).map(|(_, k, g)| (k, g)), Some((3, 7)));
        assert_eq!(timers.pop_due(at), None);
        assert_eq!(timers.len(), 1);
    }

    #[test]
    fn stale_entries_are_dropped_once_they_crowd_the_heap() {
        #[allow(clippy::disallowed_methods)]
        let t0 = Instant::now();
        let mut timers = Timers::default();
        let at = t0 + Duration::from_secs(60);
        for key in 0..1000 {
            timers.arm(at, key, 1, false);
        }
        assert!(!timers.crowded());
        // All but the first ten disarm, as upgraded connections do.
        for _ in 10..1000 {
            timers.disarmed();
        }
        assert!(timers.crowded());
        timers.retain(|_, key, _| key < 10);
        assert_eq!(timers.len(), 10);
        assert!(!timers.crowded());
        let due: Vec<u32> = std::iter::from_fn(|| timers.pop_due(at).map(|e| e.1)).collect();
        assert_eq!(due.len(), 10);
        assert!(due.iter().all(|&key| key < 10));
    }
}
