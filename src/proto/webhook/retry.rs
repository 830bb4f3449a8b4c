//! When a failed webhook POST is tried again, as a pure function: the
//! sender supplies the randomness and does the sleeping.
//!
//! Spec §13: anything but a 2xx is retried with exponential back-off for up
//! to five minutes. The steps double from [`FIRST_STEP`] to [`MAX_STEP`];
//! each wait is between half and all of its step ("equal jitter"), so the
//! bodies that one outage failed together do not all come back at once.

use std::time::Duration;

/// The step of the first retry.
pub const FIRST_STEP: Duration = Duration::from_secs(1);
/// The longest step.
pub const MAX_STEP: Duration = Duration::from_secs(60);
/// How long after its first attempt a body is still retried.
pub const BUDGET: Duration = Duration::from_secs(5 * 60);

/// The wait before retry number `retry` (0 for the first) of a body first
/// tried `elapsed` ago, or `None` once that retry would start after
/// [`BUDGET`]. `random` is any uniformly random number.
pub fn next_delay(retry: u32, elapsed: Duration, random: u64) -> Option<Duration> {
    let step = FIRST_STEP.saturating_mul(1u32.checked_shl(retry.min(31)).unwrap_or(u32::MAX));
    let step = step.min(MAX_STEP);
    let half = step / 2;
    let spread = u64::try_from(half.as_millis()).unwrap_or(u64::MAX).max(1);
    let delay = half + Duration::from_millis(random % spread);
    (elapsed + delay <= BUDGET).then_some(delay)
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOW: u64 = 0;
    const HIGH: u64 = u64::MAX;

    #[test]
    fn steps_double_up_to_the_cap_with_bounded_jitter() {
        let s = Duration::from_secs;
        let ms = Duration::from_millis;
        let expected_steps = [1, 2, 4, 8, 16, 32, 60, 60, 60];
        for (retry, step) in expected_steps.into_iter().enumerate() {
            let retry = retry as u32;
            let low = next_delay(retry, Duration::ZERO, LOW).expect("within budget");
            assert_eq!(low, s(step) / 2, "retry {retry}");
            let top = u64::try_from((s(step) / 2).as_millis()).expect("small") - 1;
            assert_eq!(next_delay(retry, Duration::ZERO, top), Some(s(step) - ms(1)));
            for random in [1, 12_345, 999_999_999, HIGH] {
                let d = next_delay(retry, Duration::ZERO, random).expect("within budget");
                assert!(d >= s(step) / 2 && d < s(step), "retry {retry}: {d:?}");
            }
        }
        assert_eq!(next_delay(0, Duration::ZERO, 499), Some(ms(999)));
        assert_eq!(next_delay(u32::MAX, Duration::ZERO, LOW), Some(s(30)));
    }

    #[test]
    fn stops_once_the_next_try_would_pass_five_minutes() {
        for random in [LOW, HIGH, 7, 31_337] {
            let mut elapsed = Duration::ZERO;
            let mut retries = 0;
            while let Some(d) = next_delay(retries, elapsed, random) {
                elapsed += d;
                retries += 1;
                assert!(retries < 100, "the schedule must end");
            }
            assert!(elapsed <= BUDGET, "{elapsed:?}");
            // The slowest schedule (full steps: 1+2+…+32 = 63 s, then 60 s
            // steps) still retries at least 8 times; the fastest at most 14.
            assert!((8..=14).contains(&retries), "random {random}: {retries} retries");
        }
        assert_eq!(next_delay(0, BUDGET, LOW), None);
        assert_eq!(
            next_delay(0, BUDGET - Duration::from_millis(500), LOW),
            Some(Duration::from_millis(500))
        );
    }
}
