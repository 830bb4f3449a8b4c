//! When to try a push again, sans-IO: exponential back-off with full
//! jitter from [`FIRST`] doubling to [`CAP`], never sooner than the
//! service's `Retry-After`, and never past the notification's deadline
//! (`push_retry_secs` after it was first tried).

use std::time::Duration;

/// Wait before the first retry (before jitter).
pub const FIRST: Duration = Duration::from_millis(500);
/// Longest wait between two tries (before jitter).
pub const CAP: Duration = Duration::from_secs(30);

/// The retry state of one notification.
#[derive(Debug, Clone)]
pub struct Retry {
    retries: u32,
    /// Time left from the first try, counted down by [`Retry::next`].
    budget: Duration,
}

impl Retry {
    /// A notification that may be retried for `retry_for`.
    pub fn new(retry_for: Duration) -> Self {
        Self { retries: 0, budget: retry_for }
    }

    /// Retries so far.
    pub fn retries(&self) -> u32 {
        self.retries
    }

    /// The wait before the next try, or `None` when that would pass the
    /// deadline. `spent` is the time the failed try took; `retry_after`
    /// the service's `Retry-After`; `random` any random number (jitter).
    pub fn next(
        &mut self,
        spent: Duration,
        retry_after: Option<Duration>,
        random: u64,
    ) -> Option<Duration> {
        self.budget = self.budget.checked_sub(spent)?;
        let ceiling = FIRST.saturating_mul(1 << self.retries.min(16)).min(CAP);
        // Full jitter: anywhere up to the ceiling, so that many tokens failing
        // together do not come back together.
        let jitter = ceiling.mul_f64(random as f64 / u64::MAX as f64);
        let wait = jitter.max(retry_after.unwrap_or_default());
        self.budget = self.budget.checked_sub(wait)?;
        self.retries += 1;
        Some(wait)
    }
}

/// `Retry-After` as delay-seconds (FCM and Google send that form); an
/// HTTP date is read as no hint.
pub fn parse_retry_after(value: &str) -> Option<Duration> {
    value.trim().parse::<u64>().ok().map(Duration::from_secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backs_off_exponentially_within_the_deadline() {
        let mut retry = Retry::new(Duration::from_secs(60));
        // The largest jitter each time: the ceilings themselves.
        let mut waits = Vec::new();
        while let Some(wait) = retry.next(Duration::ZERO, None, u64::MAX) {
            waits.push(wait.as_millis());
        }
        // The next one (30 s, the cap) would end past the 60 s deadline.
        assert_eq!(waits, [500, 1000, 2000, 4000, 8000, 16000]);
        assert_eq!(retry.retries(), 6);
        let mut retry = Retry::new(Duration::from_secs(600));
        let late: Vec<u128> = (0..9)
            .filter_map(|_| retry.next(Duration::ZERO, None, u64::MAX))
            .map(|w| w.as_millis())
            .collect();
        assert_eq!(late[6..], [30000, 30000, 30000], "capped");
        // Half the jitter range, half the ceiling.
        let half = Retry::new(Duration::from_secs(9)).next(Duration::ZERO, None, u64::MAX / 2);
        assert_eq!(half.map(|w| w.as_millis()), Some(250));
        // Jitter 0 gives no wait at all, and a zero budget no retry.
        assert_eq!(
            Retry::new(Duration::from_secs(1)).next(Duration::ZERO, None, 0),
            Some(Duration::ZERO)
        );
        assert_eq!(Retry::new(Duration::ZERO).next(Duration::from_millis(1), None, 0), None);
    }

    #[test]
    fn retry_after_is_honoured_and_counts_against_the_deadline() {
        let mut retry = Retry::new(Duration::from_secs(10));
        let hint = Some(Duration::from_secs(4));
        assert_eq!(retry.next(Duration::from_secs(1), hint, 0), Some(Duration::from_secs(4)));
        // 10 - 1 - 4 = 5 s left: another 4 s fits, then nothing does.
        assert_eq!(retry.next(Duration::ZERO, hint, 0), Some(Duration::from_secs(4)));
        assert_eq!(retry.next(Duration::ZERO, hint, 0), None);
        assert_eq!(parse_retry_after(" 7 "), Some(Duration::from_secs(7)));
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"), None);
    }
}
