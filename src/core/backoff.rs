//! Reconnection pacing and link-state logging, sans-IO: the caller supplies
//! randomness and does the sleeping.

use std::time::Duration;

/// First wait after a failure; doubled per further failure up to the cap.
pub const MIN_DELAY: Duration = Duration::from_millis(100);

/// Capped exponential back-off with "equal jitter": each wait is between
/// half and all of the current step, so instances that lost Redis together
/// do not all come back in the same millisecond.
#[derive(Debug, Clone)]
pub struct Backoff {
    first: Duration,
    step: Duration,
    max: Duration,
}

impl Backoff {
    /// Starts at [`MIN_DELAY`] and never waits longer than `max`.
    pub fn new(max: Duration) -> Self {
        Self::starting_at(MIN_DELAY, max)
    }

    /// Starts at `first` and never waits longer than `max`.
    pub fn starting_at(first: Duration, max: Duration) -> Self {
        Self { first, step: first.min(max), max: max.max(Duration::from_millis(1)) }
    }

    /// The next wait; `random` is any uniformly random number.
    #[must_use]
    pub fn next_delay(&mut self, random: u64) -> Duration {
        let step = self.step;
        self.step = (self.step * 2).min(self.max);
        let half = step / 2;
        let spread = u64::try_from(half.as_micros()).unwrap_or(u64::MAX).max(1);
        half + Duration::from_micros(random % spread)
    }

    /// Back to the shortest wait, after a connection that worked.
    pub fn reset(&mut self) {
        self.step = self.first.min(self.max);
    }
}

/// Whether one Redis connection works, so that a change is logged once and
/// a retry loop against a dead server stays quiet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Link {
    /// Never connected yet.
    Starting,
    /// Connected and serving.
    Up,
    /// Lost or never reached; retrying.
    Down,
}

impl Link {
    /// Records a successful connection; true if that is news worth logging.
    #[must_use]
    pub fn connected(&mut self) -> bool {
        std::mem::replace(self, Link::Up) != Link::Up
    }

    /// Records a failure; true if that is news worth logging.
    #[must_use]
    pub fn failed(&mut self) -> bool {
        std::mem::replace(self, Link::Down) != Link::Down
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_with_jitter_up_to_the_cap() {
        let mut b = Backoff::new(Duration::from_secs(1));
        let mut steps = Vec::new();
        for _ in 0..8 {
            // The lowest and highest random values bound each wait.
            let mut lo = b.clone();
            let low = lo.next_delay(0);
            let high = b.next_delay(u64::MAX - 1);
            assert!(low <= high, "{low:?} {high:?}");
            steps.push(high);
        }
        assert!(steps[0] <= MIN_DELAY, "{steps:?}");
        assert!(steps[1] > MIN_DELAY / 2, "{steps:?}");
        assert!(steps.windows(2).all(|w| w[1] >= w[0] / 2), "{steps:?}");
        assert!(steps.iter().all(|d| *d <= Duration::from_secs(1)), "{steps:?}");
        assert!(steps[7] >= Duration::from_millis(500), "reaches the cap's range: {steps:?}");
        b.reset();
        assert!(b.next_delay(7) <= MIN_DELAY);
    }

    #[test]
    fn jitter_spreads_waits() {
        let mut seen = std::collections::HashSet::new();
        for r in 0..50u64 {
            let mut b = Backoff::new(Duration::from_secs(10));
            seen.insert(b.next_delay(r.wrapping_mul(0x9e37_79b9_7f4a_7c15)));
        }
        assert!(seen.len() > 10, "{seen:?}");
    }

    #[test]
    fn link_changes_are_reported_once() {
        let mut link = Link::Starting;
        assert!(link.failed());
        assert!(!link.failed());
        assert!(!link.failed());
        assert!(link.connected());
        assert!(!link.connected());
        assert!(link.failed());
        let mut link = Link::Starting;
        assert!(link.connected());
    }
}
