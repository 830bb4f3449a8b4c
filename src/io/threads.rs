//! Helpers for the threads the IO layer starts.

use std::{
    thread,
    time::{Duration, Instant},
};

/// Waits for `thread` until `deadline`: its result if it ended in time,
/// `None` if it is still running (it is left to the process's exit).
pub fn join_until<T>(
    thread: thread::JoinHandle<T>,
    deadline: Instant,
) -> Option<thread::Result<T>> {
    while !thread.is_finished() && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(10));
    }
    thread.is_finished().then(|| thread.join())
}
