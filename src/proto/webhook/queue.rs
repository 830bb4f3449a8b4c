//! One webhook URL's queue of events waiting to be POSTed, sans-IO: what
//! goes into the next request, and when (spec §13 batching).
//!
//! Without batching each event is its own request. With a batch window,
//! an event waits at most that long for others to join it, and a request
//! carries at most `max_events`. The queue has a hard bound: a receiver that
//! is down for minutes costs at most [`MAX_QUEUED`] events of memory, and
//! what does not fit is dropped and counted.

use std::{
    collections::VecDeque,
    time::{Duration, Instant},
};

use serde_json::value::RawValue;

/// Events one URL may have waiting; newer ones are dropped beyond it.
pub const MAX_QUEUED: usize = 10_000;

/// What the sender should do next for this URL.
#[derive(Debug)]
pub enum Next {
    /// POST these events as one body, stamped with the first one's time
    /// (Unix milliseconds), when it was raised rather than when sent.
    Send(u64, Vec<Box<RawValue>>),
    /// Nothing is due before this instant (a batch window is open).
    WaitUntil(Instant),
    /// Nothing waits.
    Idle,
}

impl PartialEq for Next {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Next::Send(t, a), Next::Send(u, b)) => {
                t == u && a.iter().map(|e| e.get()).eq(b.iter().map(|e| e.get()))
            }
            (Next::WaitUntil(a), Next::WaitUntil(b)) => a == b,
            (Next::Idle, Next::Idle) => true,
            _ => false,
        }
    }
}

/// Events waiting for one URL.
#[derive(Debug)]
pub struct Queue {
    window: Duration,
    max_events: usize,
    limit: usize,
    waiting: VecDeque<(Instant, u64, Box<RawValue>)>,
    dropped: u64,
}

impl Queue {
    /// `window` zero means one event per request.
    pub fn new(window: Duration, max_events: usize) -> Self {
        Self::with_limit(window, max_events, MAX_QUEUED)
    }

    /// [`Queue::new`] with another bound, for tests.
    pub fn with_limit(window: Duration, max_events: usize, limit: usize) -> Self {
        Self { window, max_events: max_events.max(1), limit, waiting: VecDeque::new(), dropped: 0 }
    }

    /// Queues an event raised at `at` (`time_ms` in Unix milliseconds).
    /// False, and counted, when the queue is full.
    pub fn push(&mut self, at: Instant, time_ms: u64, event: Box<RawValue>) -> bool {
        if self.waiting.len() >= self.limit {
            self.dropped += 1;
            return false;
        }
        self.waiting.push_back((at, time_ms, event));
        true
    }

    /// The next body to send at `now`, or when to look again.
    pub fn next(&mut self, now: Instant) -> Next {
        let Some(&(first, time_ms, _)) = self.waiting.front() else { return Next::Idle };
        let take = if self.window.is_zero() { 1 } else { self.max_events };
        let full = self.waiting.len() >= take;
        if !full && now < first + self.window {
            return Next::WaitUntil(first + self.window);
        }
        let n = take.min(self.waiting.len());
        Next::Send(time_ms, self.waiting.drain(..n).map(|(_, _, e)| e).collect())
    }

    /// Events dropped because the queue was full, since start-up.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Events waiting.
    pub fn len(&self) -> usize {
        self.waiting.len()
    }

    /// Whether nothing waits.
    pub fn is_empty(&self) -> bool {
        self.waiting.is_empty()
    }
}

#[cfg(test)]
mod tests {
    // The fake clock needs one real instant to count from.
    #![allow(clippy::disallowed_methods)]

    use super::*;

    fn ev(n: u32) -> Box<RawValue> {
        RawValue::from_string(format!("{{\"n\":{n}}}")).expect("json")
    }

    fn sent(next: Next) -> Vec<String> {
        match next {
            Next::Send(_, events) => events.iter().map(|e| e.get().to_owned()).collect(),
            other => panic!("expected a body, got {other:?}"),
        }
    }

    #[test]
    fn without_a_window_every_event_is_its_own_request() {
        let t0 = Instant::now();
        let mut q = Queue::new(Duration::ZERO, 50);
        assert_eq!(q.next(t0), Next::Idle);
        assert!(q.push(t0, 0, ev(1)));
        assert!(q.push(t0, 0, ev(2)));
        assert_eq!(sent(q.next(t0)), [r#"{"n":1}"#]);
        assert_eq!(sent(q.next(t0)), [r#"{"n":2}"#]);
        assert_eq!(q.next(t0), Next::Idle);
    }

    #[test]
    fn a_window_holds_events_until_it_closes_or_the_batch_is_full() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut q = Queue::new(ms(100), 3);
        q.push(t0, 111, ev(1));
        q.push(t0 + ms(10), 121, ev(2));
        assert_eq!(q.next(t0 + ms(50)), Next::WaitUntil(t0 + ms(100)));
        let batch = vec![ev(1), ev(2)];
        assert_eq!(q.next(t0 + ms(100)), Next::Send(111, batch), "stamped with the first");
        for n in 3..=7 {
            q.push(t0 + ms(200), 0, ev(n));
        }
        // Full batches leave at once; the rest waits for its window.
        assert_eq!(sent(q.next(t0 + ms(200))).len(), 3);
        assert_eq!(q.next(t0 + ms(200)), Next::WaitUntil(t0 + ms(300)));
        assert_eq!(sent(q.next(t0 + ms(300))), [r#"{"n":6}"#, r#"{"n":7}"#]);
    }

    #[test]
    fn a_full_queue_drops_and_counts() {
        let t0 = Instant::now();
        let mut q = Queue::with_limit(Duration::ZERO, 1, 2);
        assert!(q.push(t0, 0, ev(1)));
        assert!(q.push(t0, 0, ev(2)));
        assert!(!q.push(t0, 0, ev(3)));
        assert_eq!((q.len(), q.dropped()), (2, 1));
        q.next(t0);
        assert!(q.push(t0, 0, ev(4)));
    }
}
