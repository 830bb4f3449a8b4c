//! Connection deadlines: each connection has at most one armed at a time
//! (its request's idle time, a write that makes no progress, a close that
//! lingers, a long-poll that waits too long), kept in one heap per shard.
//!
//! Entries are never removed early: a connection that moves its deadline
//! pushes a new entry, and an entry that no longer matches its
//! connection's current deadline (or generation) is skipped when it comes
//! due. That keeps re-arming to one push, at the cost of stale entries
//! that leave the heap when their time comes.

use std::{cmp::Reverse, collections::BinaryHeap, time::Instant};

/// Deadlines of the shard's connections, earliest first.
#[derive(Debug, Default)]
pub struct Timers {
    heap: BinaryHeap<Reverse<(Instant, u32, u32)>>,
}

impl Timers {
    /// Arms a deadline for the connection `key` of generation `generation`.
    pub fn arm(&mut self, at: Instant, key: u32, generation: u32) {
        self.heap.push(Reverse((at, key, generation)));
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
        timers.arm(t0 + Duration::from_secs(3), 1, 1);
        timers.arm(t0 + Duration::from_secs(1), 2, 1);
        timers.arm(t0 + Duration::from_secs(2), 3, 7);
        assert_eq!(timers.next(), Some(t0 + Duration::from_secs(1)));
        assert_eq!(timers.pop_due(t0), None);
        let at = t0 + Duration::from_secs(2);
        assert_eq!(timers.pop_due(at).map(|e| e.1), Some(2));
        assert_eq!(timers.pop_due(at).map(|(_, k, g)| (k, g)), Some((3, 7)));
        assert_eq!(timers.pop_due(at), None);
        assert_eq!(timers.len(), 1);
    }
}
