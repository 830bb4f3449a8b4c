//! Helpers for the threads the IO layer starts.

use std::{
    io, thread,
    time::{Duration, Instant},
};

/// Starts a named thread that logs where its creator logs: the creator's
/// tracing dispatcher (the process-wide one under `main`, a test's own when
/// a test runs the server) becomes the new thread's default.
///
/// # Errors
///
/// The OS error when the thread cannot be created.
pub fn spawn<T: Send + 'static>(
    name: impl Into<String>,
    f: impl FnOnce() -> T + Send + 'static,
) -> io::Result<thread::JoinHandle<T>> {
    let dispatch = tracing::dispatcher::get_default(Clone::clone);
    thread::Builder::new().name(name.into()).spawn(move || {
        let _logs = tracing::dispatcher::set_default(&dispatch);
        f()
    })
}

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
