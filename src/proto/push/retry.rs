//! When to try a push again, sans-IO: the bridge's capped exponential
//! back-off ([`Backoff`]: each wait between half and all of a step that
//! doubles from [`FIRST`] to [`CAP`]), never sooner than the service's
//! `Retry-After`, and never past the notification's deadline
//! (`push_retry_secs` after it was first tried).

use std::time::Duration;

use crate::core::backoff::Backoff;

/// The first step (the wait is between half and all of it).
pub const FIRST: Duration = Duration::from_millis(500);
/// The longest step.
pub const CAP: Duration = Duration::from_secs(30);

/// The retry state of one notification.
#[derive(Debug, Clone)]
pub struct Retry {
    backoff: Backoff,
    retries: u32,
    /// Time left from the first try, counted down by [`Retry::next`].
    budget: Duration,
}

impl Retry {
    /// A notification that may be retried for `retry_for`.
    pub fn new(retry_for: Duration) -> Self {
        Self { backoff: Backoff::starting_at(FIRST, CAP), retries: 0, budget: retry_for }
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
        let wait = self.backoff.next_delay(random).max(retry_after.unwrap_or_default());
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
        // The least jitter each time: half of each step.
        let mut waits = Vec::new();
        while let Some(wait) = retry.next(Duration::ZERO, None, 0) {
            waits.push(wait.as_millis());
        }
        // 250 + … + 8000 = 15750, then two 15 s waits; a third would pass 60 s.
        assert_eq!(waits, [250, 500, 1000, 2000, 4000, 8000, 15000, 15000]);
        assert_eq!(retry.retries(), 8);
        // The most jitter stays within the step.
        let mut retry = Retry::new(Duration::from_secs(600));
        for step in [500, 1000, 2000] {
            let wait = retry.next(Duration::ZERO, None, u64::MAX - 1).map(|w| w.as_millis());
            assert!(wait.is_some_and(|w| w > step / 2 && w <= step), "{wait:?} for {step}");
        }
        // A zero budget, or a try that used it up, leaves no retry.
        assert_eq!(Retry::new(Duration::ZERO).next(Duration::from_millis(1), None, 0), None);
        let mut retry = Retry::new(Duration::from_secs(1));
        assert_eq!(
            retry.next(Duration::from_millis(900), None, 0),
            None,
            "250 ms do not fit in 100"
        );
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
