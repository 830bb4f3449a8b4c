//! Points in time as 32-bit millisecond counts, for state that every
//! connection carries: an `Instant` takes 16 bytes, a [`Tick`] 4 (issue
//! #14: a Pusher connection holds four times).
//!
//! A tick counts milliseconds from a process-wide epoch, a day before the
//! first `Instant` ever converted (the protocol layers do not read the
//! clock, so the epoch comes from the time they are given), and wraps
//! every 49.7 days. So ticks are only compared by their distance: a
//! [`Tick`] is right about any span under 24.8 days, and the spans kept
//! (silence before a ping, a deadline in seconds) are minutes at most.

use std::{
    num::NonZeroU32,
    sync::OnceLock,
    time::{Duration, Instant},
};

/// Instants this far before the first one converted still convert
/// exactly; a test's clock may start a little before its first tick.
const EPOCH_MARGIN: Duration = Duration::from_secs(24 * 3600);

static EPOCH: OnceLock<Instant> = OnceLock::new();

/// A point in time to the millisecond, wrapping every 2^32 ms. Never
/// zero, so that an `Option<Tick>` takes 4 bytes too: the one millisecond
/// in 49.7 days whose count is 0 reads as 1 (a time taken in it counts
/// from a millisecond later).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tick(NonZeroU32);

impl Tick {
    fn new(count: u32) -> Self {
        Self(NonZeroU32::new(count).unwrap_or(NonZeroU32::MIN))
    }

    fn get(self) -> u32 {
        self.0.get()
    }

    /// The millisecond `at` falls in.
    pub fn of(at: Instant) -> Self {
        let epoch = *EPOCH.get_or_init(|| at.checked_sub(EPOCH_MARGIN).unwrap_or(at));
        // Truncated on purpose: ticks wrap, and only distances count.
        Self::new(at.saturating_duration_since(epoch).as_millis() as u32)
    }

    /// Milliseconds from `self` to `later`; 0 if `later` is earlier.
    pub fn millis_until(self, later: Self) -> u32 {
        let d = later.get().wrapping_sub(self.get());
        if (d as i32) < 0 { 0 } else { d }
    }

    /// Whether `now` is `span` or more after `self`, to the millisecond:
    /// `span` counts in whole milliseconds, rounded up.
    pub fn passed(self, span: Duration, now: Self) -> bool {
        u64::from(self.millis_until(now)) >= ceil_millis(span)
    }

    /// `span` after `self` (rounded up to the millisecond).
    pub fn after(self, span: Duration) -> Self {
        Self::new(self.get().wrapping_add(ceil_millis(span) as u32))
    }

    /// `span` before `self` (rounded up to the millisecond).
    pub fn before(self, span: Duration) -> Self {
        Self::new(self.get().wrapping_sub(ceil_millis(span) as u32))
    }

    /// The `Instant` this tick's millisecond starts at, in the wrap period
    /// nearest `near` (anything within 24.8 days of it): for a timer that
    /// sleeps until a tick.
    pub fn start(self, near: Instant) -> Instant {
        let epoch = *EPOCH.get_or_init(|| near.checked_sub(EPOCH_MARGIN).unwrap_or(near));
        let near_ms = near.saturating_duration_since(epoch).as_millis() as u64;
        // Signed on purpose: the tick may lie before `near` or after it.
        let d = self.get().wrapping_sub(near_ms as u32) as i32;
        epoch + Duration::from_millis(near_ms.saturating_add_signed(i64::from(d)))
    }

    /// Whether `now` is at or past `self`.
    pub fn reached(self, now: Self) -> bool {
        // The distance read as signed: a deadline up to 24.8 days ahead is
        // in the future.
        now.get().wrapping_sub(self.get()) as i32 >= 0
    }
}

fn ceil_millis(span: Duration) -> u64 {
    let ms = span.as_millis();
    let ms = if span.subsec_nanos().is_multiple_of(1_000_000) { ms } else { ms + 1 };
    u64::try_from(ms).unwrap_or(u64::MAX)
}

#[cfg(test)]
// The tests make up their `Instant`s.
#[allow(clippy::disallowed_methods)]
mod tests {
    use super::*;

    #[test]
    fn spans_and_deadlines_compare_to_the_millisecond() {
        let t0 = Instant::now();
        let (a, b) = (Tick::of(t0), Tick::of(t0 + Duration::from_secs(120)));
        assert_eq!(a.millis_until(b), 120_000);
        assert!(a.passed(Duration::from_secs(120), b));
        assert!(!a.passed(Duration::from_millis(120_001), b));
        assert!(a.after(Duration::from_secs(120)).reached(b));
        assert!(!a.after(Duration::from_millis(120_001)).reached(b));
        assert!(!b.reached(a));
        assert_eq!(b.millis_until(a), 0);
        assert_eq!(b.before(Duration::from_secs(120)), a);
    }

    #[test]
    fn a_tick_starts_at_its_millisecond_from_either_side() {
        let t0 = Instant::now();
        let at = t0 + Duration::from_micros(7_500_300);
        let tick = Tick::of(at);
        for near in [t0, at, at + Duration::from_secs(3600)] {
            let start = tick.start(near);
            assert!(start <= at && at - start < Duration::from_millis(1));
            assert_eq!(Tick::of(start), tick);
        }
    }

    #[test]
    fn ticks_wrap_without_breaking_comparisons() {
        let before = Tick::new(u32::MAX - 500);
        let after = Tick::new(499);
        assert_eq!(before.millis_until(after), 1000);
        assert!(before.passed(Duration::from_secs(1), after));
        assert!(before.after(Duration::from_secs(1)).reached(after));
        assert!(!before.after(Duration::from_millis(1001)).reached(after));
        assert_eq!(std::mem::size_of::<Option<Tick>>(), 4);
    }
}
