//! Incus's DogStatsD metrics (spec §10.1): the `incus.*` counters as
//! deltas and the gauges as values, sent over UDP every interval from a
//! small thread of their own, so that no shard ever does socket work for
//! them.

use std::{
    net::{SocketAddr, ToSocketAddrs, UdpSocket},
    sync::{Arc, mpsc},
    thread,
    time::Duration,
};

use crate::core::counters::{IncusSnapshot, Metrics};

/// Why the sender could not start.
#[derive(Debug, thiserror::Error)]
pub enum StatsdError {
    /// `incus.datadog_host` did not resolve.
    #[error("incus.datadog_host: cannot resolve {host:?}: {source}")]
    Resolve {
        /// The host as configured.
        host: String,
        /// The resolver's error.
        source: std::io::Error,
    },
    /// The UDP socket or the thread could not be created.
    #[error("cannot start the statsd sender: {0}")]
    Io(#[from] std::io::Error),
}

/// A StatsD counter's name and how to read it.
type CounterName = (&'static str, fn(&IncusSnapshot) -> u64);

/// The `incus.*` lines for what changed from `before` to `now`; counters
/// that did not move are left out, gauges are always sent.
pub fn lines(before: &IncusSnapshot, now: &IncusSnapshot) -> Vec<String> {
    let counters: [CounterName; 28] = [
        ("incus.command", IncusSnapshot::commands),
        ("incus.command.websocket", |s| s.read),
        ("incus.command.redis", |s| s.redis_commands),
        ("incus.message", IncusSnapshot::messages),
        ("incus.message.all", |s| s.message_all),
        ("incus.message.user", |s| s.message_user),
        ("incus.message.page", |s| s.message_page),
        ("incus.read", |s| s.read),
        ("incus.write", |s| s.write),
        ("incus.websocket.connect", |s| s.ws_connect),
        ("incus.websocket.disconnect", |s| s.ws_disconnect),
        ("incus.longpoll.connect", |s| s.lp_connect),
        ("incus.longpoll.disconnect", |s| s.lp_disconnect),
        ("incus.jsonerror", |s| s.json_errors),
        // Incus counted each APNs send (`push`) and failure (`error`), each
        // GCM request (`push`), failed request (`error`) and request with a
        // failed id (`fail`). v1 sends one request per token, so `push` and
        // `error` count tokens here, and `fail` the pushes with a failed
        // token (entries written to the error list).
        ("incus.apns.push", |s| s.ios.sent + s.ios.failed),
        ("incus.apns.error", |s| s.ios.failed),
        ("incus.gcm.push", |s| s.android.sent + s.android.failed),
        ("incus.gcm.error", |s| s.android.failed),
        ("incus.gcm.fail", |s| s.android.reported),
        // stapes's own, per platform.
        ("incus.apns.retried", |s| s.ios.retried),
        ("incus.apns.refused", |s| s.ios.refused),
        ("incus.apns.dropped", |s| s.ios.dropped),
        ("incus.apns.reported", |s| s.ios.reported),
        ("incus.apns.unreported", |s| s.ios.unreported),
        ("incus.gcm.retried", |s| s.android.retried),
        ("incus.gcm.refused", |s| s.android.refused),
        ("incus.gcm.dropped", |s| s.android.dropped),
        ("incus.gcm.unreported", |s| s.android.unreported),
    ];
    let mut out = Vec::new();
    for (name, get) in counters {
        let delta = get(now).saturating_sub(get(before));
        if delta > 0 {
            out.push(format!("{name}:{delta}|c"));
        }
    }
    out.push(format!("incus.client_count:{}|g", now.sockets()));
    out
}

/// Packs lines into datagrams of at most `max` bytes, newline-separated
/// (DogStatsD reads several metrics per datagram).
fn datagrams(lines: &[String], max: usize) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for line in lines {
        match out.last_mut() {
            Some(last) if last.len() + 1 + line.len() <= max => {
                last.push('\n');
                last.push_str(line);
            }
            _ => out.push(line.clone()),
        }
    }
    out
}

/// The running sender; dropping it leaves the thread running until exit.
pub struct Statsd {
    stop: mpsc::Sender<()>,
    thread: thread::JoinHandle<()>,
}

impl Statsd {
    /// Resolves `host` once (as Incus did) and starts sending every
    /// `interval`. The first datagram carries `incus.startup:1|c`.
    pub fn start(
        metrics: Arc<Metrics>,
        host: &str,
        port: u16,
        interval: Duration,
    ) -> Result<Self, StatsdError> {
        let to: SocketAddr = (host, port)
            .to_socket_addrs()
            .and_then(|mut addrs| addrs.next().ok_or_else(|| std::io::Error::other("no address")))
            .map_err(|source| StatsdError::Resolve { host: host.to_owned(), source })?;
        let bind: SocketAddr = if to.is_ipv4() {
            ([0, 0, 0, 0], 0).into()
        } else {
            (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
        };
        let socket = UdpSocket::bind(bind)?;
        socket.connect(to)?;
        let (stop, stopped) = mpsc::channel();
        let thread = crate::io::threads::spawn("stapes-statsd", move || {
            run(&metrics, &socket, interval, &stopped)
        })?;
        tracing::info!(%to, ?interval, "sending incus.* metrics over statsd");
        Ok(Self { stop, thread })
    }

    /// Sends what changed since the last report, then ends the thread.
    pub fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.thread.join();
    }
}

fn run(metrics: &Metrics, socket: &UdpSocket, interval: Duration, stopped: &mpsc::Receiver<()>) {
    let mut before = IncusSnapshot::default();
    let mut first = true;
    loop {
        let last = !matches!(stopped.recv_timeout(interval), Err(mpsc::RecvTimeoutError::Timeout));
        let now = metrics.snapshot().incus;
        let mut report = lines(&before, &now);
        if std::mem::take(&mut first) {
            report.insert(0, "incus.startup:1|c".to_owned());
        }
        // 1432 bytes fit an Ethernet MTU with IPv6 and UDP headers.
        for datagram in datagrams(&report, 1432) {
            // A UDP send fails only locally (no route, buffer full); the
            // metrics are lost either way and the next report carries on.
            if let Err(e) = socket.send(datagram.as_bytes()) {
                tracing::debug!("statsd send failed: {e}");
            }
        }
        before = now;
        if last {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_deltas_and_gauges_values() {
        let before = IncusSnapshot { ws_connect: 2, read: 5, ..IncusSnapshot::default() };
        let now = IncusSnapshot {
            ws_connect: 5,
            ws_disconnect: 1,
            read: 5,
            redis_commands: 2,
            message_user: 1,
            ..IncusSnapshot::default()
        };
        assert_eq!(
            lines(&before, &now),
            [
                "incus.command:2|c",
                "incus.command.redis:2|c",
                "incus.message:1|c",
                "incus.message.user:1|c",
                "incus.websocket.connect:3|c",
                "incus.websocket.disconnect:1|c",
                "incus.client_count:4|g",
            ]
        );
        assert_eq!(lines(&now, &now), ["incus.client_count:4|g"]);
    }

    #[test]
    fn push_counters_under_incus_names() {
        use crate::core::counters::PlatformSnapshot;
        let now = IncusSnapshot {
            ios: PlatformSnapshot { sent: 5, failed: 2, retried: 3, ..PlatformSnapshot::default() },
            android: PlatformSnapshot {
                sent: 7,
                failed: 1,
                reported: 1,
                dropped: 4,
                ..PlatformSnapshot::default()
            },
            ..IncusSnapshot::default()
        };
        assert_eq!(
            lines(&IncusSnapshot::default(), &now),
            [
                "incus.apns.push:7|c",
                "incus.apns.error:2|c",
                "incus.gcm.push:8|c",
                "incus.gcm.error:1|c",
                "incus.gcm.fail:1|c",
                "incus.apns.retried:3|c",
                "incus.gcm.dropped:4|c",
                "incus.client_count:0|g",
            ]
        );
    }

    #[test]
    fn datagrams_pack_lines_up_to_the_limit() {
        let lines: Vec<String> = ["a:1|c", "b:2|c", "c:3|c"].map(String::from).into();
        assert_eq!(datagrams(&lines, 11), ["a:1|c\nb:2|c", "c:3|c"]);
        assert_eq!(datagrams(&lines, 100), ["a:1|c\nb:2|c\nc:3|c"]);
    }

    #[test]
    fn sends_startup_and_changes_to_a_local_receiver() {
        let receiver = UdpSocket::bind("127.0.0.1:0").expect("bind");
        receiver.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
        let port = receiver.local_addr().expect("addr").port();
        let metrics = Arc::new(Metrics::new(vec![], 1));
        metrics.shard(0).incus.ws_connect.add(3);
        let statsd =
            Statsd::start(Arc::clone(&metrics), "127.0.0.1", port, Duration::from_secs(3600))
                .expect("start");
        // The long interval means only the stop's final report goes out.
        statsd.stop();
        let mut buf = [0u8; 2048];
        let n = receiver.recv(&mut buf).expect("a datagram");
        let text = std::str::from_utf8(&buf[..n]).expect("utf-8");
        assert_eq!(text, "incus.startup:1|c\nincus.websocket.connect:3|c\nincus.client_count:3|g");
    }

    #[test]
    fn an_unresolvable_host_names_the_key() {
        let metrics = Arc::new(Metrics::new(vec![], 1));
        let err = Statsd::start(metrics, "no such host.invalid", 8125, Duration::from_secs(1))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.starts_with("incus.datadog_host:"), "{err}");
    }
}
