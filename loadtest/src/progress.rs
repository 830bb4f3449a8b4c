//! What the coordinator shows while a scenario runs: one line of counts
//! (connections, events sent, deliveries, the server's CPU and memory),
//! rewritten in place on a terminal and printed now and then otherwise;
//! and the samples behind it, kept as the run's time series.

use std::io::Write as _;

use serde::{Deserialize, Serialize};

/// One sample of the run, taken every [`crate::coord::SAMPLE_EVERY`].
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Point {
    /// Seconds since the workers were started.
    pub t: f64,
    /// What the run was doing: connecting, settling, holding, churning,
    /// publishing, draining.
    pub phase: String,
    /// Connections subscribed so far.
    pub subscribed: u64,
    /// Connections that failed so far.
    pub failed: u64,
    /// Events the server accepted so far.
    pub published: u64,
    /// Deliveries so far, all workers.
    pub delivered: u64,
    /// Server CPU time since it started, seconds (with `--pid`).
    pub server_cpu_secs: Option<f64>,
    /// Server resident memory, bytes (with `--pid`).
    pub server_rss_bytes: Option<u64>,
    /// CPU time of the generator (coordinator and workers) so far, seconds.
    pub generator_cpu_secs: Option<f64>,
}

/// The totals a line is measured against.
#[derive(Debug, Clone, Copy)]
pub struct Totals {
    /// Connections the scenario opens.
    pub connections: u64,
    /// Events it publishes (0 for hold and presence).
    pub events: u64,
}

/// The progress line for `now`; rates come from the step since `prev`.
pub fn line(now: &Point, prev: Option<&Point>, totals: Totals) -> String {
    let mut s = format!(
        "[{:6.1}s] {:<10} | connected {}/{}",
        now.t,
        now.phase,
        group(now.subscribed),
        group(totals.connections)
    );
    if now.failed > 0 {
        s += &format!(" ({} failed)", group(now.failed));
    }
    if totals.events > 0 {
        s += &format!(" | sent {}/{}", group(now.published), group(totals.events));
    }
    if totals.events > 0 || now.delivered > 0 {
        s += &format!(" | delivered {}", group(now.delivered));
        if let Some(p) = prev.filter(|p| now.t > p.t) {
            let rate = now.delivered.saturating_sub(p.delivered) as f64 / (now.t - p.t);
            s += &format!(" ({}/s)", group(rate.round() as u64));
        }
    }
    let cores = prev.zip(now.server_cpu_secs).and_then(|(p, cpu)| {
        let before = p.server_cpu_secs?;
        (now.t > p.t).then(|| (cpu - before) / (now.t - p.t))
    });
    match (cores, now.server_rss_bytes) {
        (Some(c), Some(rss)) => s += &format!(" | server {c:.2} cores, {} MiB", rss >> 20),
        (None, Some(rss)) => s += &format!(" | server {} MiB", rss >> 20),
        _ => {}
    }
    s
}

/// 1234567 as "1,234,567".
pub fn group(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Writes progress lines to stderr: on a terminal one line rewritten in
/// place (`\r`), otherwise a plain line at each phase change and every
/// [`Printer::PLAIN_EVERY_SECS`], so a log keeps a few lines, not hundreds.
pub struct Printer {
    tty: bool,
    last_plain: Option<(f64, String)>,
    shown: bool,
}

impl Printer {
    /// Seconds between plain lines when stderr is not a terminal.
    pub const PLAIN_EVERY_SECS: f64 = 5.0;

    /// A printer for a terminal (`tty`) or a pipe or file.
    pub fn new(tty: bool) -> Printer {
        Printer { tty, last_plain: None, shown: false }
    }

    /// Shows `now`.
    pub fn show(&mut self, now: &Point, prev: Option<&Point>, totals: Totals) {
        let text = line(now, prev, totals);
        let mut err = std::io::stderr().lock();
        if self.tty {
            let _ = write!(err, "\r{text}\x1b[K");
            self.shown = true;
        } else if self.plain_due(now) {
            let _ = writeln!(err, "{text}");
            self.last_plain = Some((now.t, now.phase.clone()));
        }
        let _ = err.flush();
    }

    fn plain_due(&self, now: &Point) -> bool {
        match &self.last_plain {
            None => true,
            Some((t, phase)) => *phase != now.phase || now.t - t >= Self::PLAIN_EVERY_SECS,
        }
    }

    /// Ends the display with the final counts on a line of their own.
    pub fn finish(&mut self, last: &Point, prev: Option<&Point>, totals: Totals) {
        let text = line(last, prev, totals);
        let mut err = std::io::stderr().lock();
        if self.tty && self.shown {
            let _ = writeln!(err, "\r{text}\x1b[K");
        } else {
            let _ = writeln!(err, "{text}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point(t: f64, phase: &str, subscribed: u64, published: u64, delivered: u64) -> Point {
        Point {
            t,
            phase: phase.into(),
            subscribed,
            published,
            delivered,
            server_cpu_secs: Some(t * 0.5),
            server_rss_bytes: Some(64 << 20),
            ..Point::default()
        }
    }

    #[test]
    fn a_line_has_every_count() {
        let totals = Totals { connections: 10_000, events: 500 };
        let prev = point(1.0, "publishing", 10_000, 100, 1_000_000);
        let now = point(1.5, "publishing", 10_000, 150, 1_400_000);
        assert_eq!(
            line(&now, Some(&prev), totals),
            "[   1.5s] publishing | connected 10,000/10,000 | sent 150/500 | delivered 1,400,000 (800,000/s) | server 0.50 cores, 64 MiB"
        );
        let connecting = Point { failed: 3, ..point(0.2, "connecting", 1234, 0, 0) };
        assert_eq!(
            line(&connecting, None, Totals { connections: 19_000, events: 0 }),
            "[   0.2s] connecting | connected 1,234/19,000 (3 failed) | server 64 MiB"
        );
    }

    #[test]
    fn digits_are_grouped() {
        assert_eq!(group(0), "0");
        assert_eq!(group(999), "999");
        assert_eq!(group(1000), "1,000");
        assert_eq!(group(12_345_678), "12,345,678");
    }

    #[test]
    fn plain_lines_come_at_phase_changes_and_every_few_seconds() {
        let mut p = Printer::new(false);
        let at = |t: f64, phase: &str| point(t, phase, 0, 0, 0);
        assert!(p.plain_due(&at(0.0, "connecting")));
        p.last_plain = Some((0.0, "connecting".into()));
        assert!(!p.plain_due(&at(4.9, "connecting")));
        assert!(p.plain_due(&at(5.0, "connecting")));
        assert!(p.plain_due(&at(1.0, "publishing")));
    }
}
