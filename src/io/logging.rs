//! The log: `server.log`'s filter, and one line per event on stderr with
//! every control character in it escaped.
//!
//! Much of what stapes logs is chosen by whoever is on the other end: Incus
//! user ids and pages, channel names, Redis payloads quoted in an error. A
//! user id holding `\n` would otherwise start a forged line of its own, and
//! one holding `ESC [` would drive the terminal of whoever tails the log.
//! Rather than trust every call site to quote its fields, the escaping is
//! done once, on the formatted event: [`OneLine`] wraps the formatter and
//! rewrites, in every field and the message alike, each control character
//! (C0, DEL, C1), the Unicode line and paragraph separators and the
//! bidirectional controls as a visible escape (`\n`, `\r`, `\t`, `\x1b`,
//! `\u{2028}`), then ends the event with the one newline it is allowed.
//! Backslashes are left alone, so a literal `\n` in a user id reads the same
//! as an escaped newline: ambiguous to a reader, but it cannot forge a line.

use std::{fmt, str::FromStr};

use tracing::{Event, Subscriber};
use tracing_subscriber::{
    filter::{ParseError, Targets},
    fmt::{
        FmtContext, FormatEvent, FormatFields, MakeWriter,
        format::{self, Writer},
    },
    layer::SubscriberExt as _,
    registry::LookupSpan,
    util::SubscriberInitExt as _,
};

/// Why logging could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum LoggingError {
    /// `server.log` is not a filter (`info`, `stapes=debug,warn`, …); fix
    /// the configuration.
    #[error("{0}")]
    Filter(#[from] ParseError),
    /// A logger was already installed in this process; a bug, not a
    /// configuration error.
    #[error("logging was already set up: {0}")]
    AlreadySet(#[from] tracing_subscriber::util::TryInitError),
}

/// Installs the process's logger: events passing `filter` (the syntax of
/// `server.log`) go to stderr, one line each, without colours, escaped by
/// [`OneLine`].
///
/// # Errors
///
/// [`LoggingError`] if the filter does not parse or a logger is already set.
pub fn init(filter: &str) -> Result<(), LoggingError> {
    let filter = Targets::from_str(filter)?;
    tracing_subscriber::registry().with(layer(std::io::stderr)).with(filter).try_init()?;
    Ok(())
}

/// The formatting layer writing to `writer`: what [`init`] installs, apart
/// from the filter.
pub fn layer<S, W>(writer: W) -> impl tracing_subscriber::Layer<S>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    tracing_subscriber::fmt::layer()
        .with_writer(writer)
        .with_ansi(false)
        .event_format(OneLine(format::format().with_ansi(false)))
}

/// A formatter that runs the one it wraps and escapes what it writes, so
/// that one event is exactly one line (see the module's documentation).
#[derive(Debug, Clone)]
pub struct OneLine<F>(pub F);

impl<S, N, F> FormatEvent<S, N> for OneLine<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let mut escaping = Escaping { out: &mut writer, newline: false };
        self.0.format_event(ctx, Writer::new(&mut escaping), event)?;
        // The formatter's own final newline was held back; this is the
        // event's one line break, whatever the formatter wrote.
        writer.write_str("\n")
    }
}

/// Passes text through with every character [`escaped`] would change
/// rewritten, holding back a newline until more text shows it was not the
/// last character.
struct Escaping<'a, W: fmt::Write> {
    out: &'a mut W,
    newline: bool,
}

impl<W: fmt::Write> fmt::Write for Escaping<'_, W> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        if s.is_empty() {
            return Ok(());
        }
        if std::mem::take(&mut self.newline) {
            self.out.write_str("\\n")?;
        }
        let mut start = 0;
        for (i, c) in s.char_indices() {
            if !needs_escape(c) {
                continue;
            }
            self.out.write_str(&s[start..i])?;
            start = i + c.len_utf8();
            if c == '\n' && start == s.len() {
                self.newline = true;
            } else {
                escaped(c, self.out)?;
            }
        }
        self.out.write_str(&s[start..])
    }
}

/// Control characters (C0, DEL, C1: `char::is_control`), the line and
/// paragraph separators some viewers break lines at, and the bidirectional
/// controls that can make a line read in another order than it was
/// written.
fn needs_escape(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{2028}' | '\u{2029}' | '\u{061c}' | '\u{200e}' | '\u{200f}')
        || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// Writes `c` as an escape: Rust's for `\n`, `\r` and `\t`, `\xNN` for the
/// other ASCII controls (as tracing-subscriber writes ESC), `\u{NNNN}`
/// for the rest.
fn escaped(c: char, out: &mut impl fmt::Write) -> fmt::Result {
    match c {
        '\n' => out.write_str("\\n"),
        '\r' => out.write_str("\\r"),
        '\t' => out.write_str("\\t"),
        c if c.is_ascii() => write!(out, "\\x{:02x}", c as u32),
        c => write!(out, "\\u{{{:x}}}", c as u32),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    /// Everything the layer wrote, shared with the test.
    #[derive(Clone, Default)]
    struct Capture(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Capture {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().map_err(|_| std::io::Error::other("poisoned"))?.extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'w> MakeWriter<'w> for Capture {
        type Writer = Capture;
        fn make_writer(&'w self) -> Capture {
            self.clone()
        }
    }

    fn logged(emit: impl FnOnce()) -> String {
        let capture = Capture::default();
        let subscriber = tracing_subscriber::registry().with(layer(capture.clone()));
        tracing::subscriber::with_default(subscriber, emit);
        let bytes = capture.0.lock().expect("not poisoned").clone();
        String::from_utf8(bytes).expect("the log is UTF-8")
    }

    #[test]
    fn every_field_and_the_message_stay_on_one_line() {
        let user =
            "mallory\n2026-01-01T00:00:00Z  INFO forged: ok\x1b[31m\r\t\u{85}\u{2028}\u{202e}";
        let out = logged(|| {
            tracing::warn!(%user, debug = ?user, "refused {user}\n");
            tracing::info!("second");
        });
        let lines: Vec<&str> = out.split_inclusive('\n').collect();
        assert_eq!(lines.len(), 2, "{out}");
        assert!(lines[1].contains("second"), "{out}");
        let escaped =
            r"mallory\n2026-01-01T00:00:00Z  INFO forged: ok\x1b[31m\r\t\u{85}\u{2028}\u{202e}";
        // The message (its own trailing newline included) and the Display
        // field are escaped here; the Debug field was already by `?`.
        assert!(lines[0].contains(&format!("refused {escaped}\\n user={escaped} ")), "{out}");
        assert!(lines[0].contains(&format!("debug={user:?}")), "{out}");
        assert!(!out.contains('\x1b') && !out.contains('\r') && !out.contains('\u{2028}'));
    }

    #[test]
    fn plain_text_passes_unchanged() {
        let out = logged(|| tracing::warn!(channel = "private-a", "über ✓ \\n stays"));
        assert_eq!(out.lines().count(), 1);
        assert!(out.ends_with("über ✓ \\n stays channel=\"private-a\"\n"), "{out}");
    }
}
