//! `GET /metrics` and the Incus StatsD output of a real stapes with two
//! shards. Counts are asserted exactly; where a count changes after the
//! client already saw its effect (a close is counted when the server's
//! task ends), the test polls until it holds, and only the failure has a
//! deadline.

#![allow(clippy::unwrap_used, clippy::disallowed_methods)]

mod common;

use std::{
    collections::HashMap,
    net::UdpSocket,
    time::{Duration, Instant},
};

use common::*;
use serde_json::json;
use tungstenite::Message;

fn scrape(port: u16) -> HttpReply {
    http(port, b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
}

/// The value of the sample written exactly as `series` (name plus labels).
fn sample(text: &str, series: &str) -> Option<u64> {
    text.lines().find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// Scrapes until every `(series, value)` holds, or fails with the last scrape.
fn wait_for(port: u16, want: &[(&str, u64)]) -> String {
    let deadline = Instant::now() + WAIT;
    loop {
        let reply = scrape(port);
        assert_eq!(reply.status, 200, "{}", reply.headers);
        let text = reply.body;
        if want.iter().all(|&(series, value)| sample(&text, series) == Some(value)) {
            return text;
        }
        if Instant::now() > deadline {
            let got: Vec<_> = want.iter().map(|&(s, _)| (s, sample(&text, s))).collect();
            panic!("wanted {want:?}, got {got:?} in\n{text}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The raw text of the next text frame.
fn next_text(ws: &mut tungstenite::WebSocket<std::net::TcpStream>) -> String {
    loop {
        match ws.read().unwrap() {
            Message::Text(t) => return t.as_str().to_owned(),
            Message::Close(c) => panic!("closed: {c:?}"),
            _ => {}
        }
    }
}

#[test]
fn pusher_counts_are_exact_across_shards() {
    let other_app = "  - id: \"2002\"\n    key: other-key\n    secret: other-secret\n";
    let server = Server::start_with(&config("", other_app), &[]);
    let port = server.port;
    // The kernel spreads sockets over the two shards' listeners by a hash
    // of their ports: open until each shard holds some (a handshake is
    // counted before connection_established leaves, so a scrape after it
    // sees it), and at least eight.
    let mut subscribers: Vec<Client> = Vec::new();
    let on_shard = |text: &str, shard: u8| {
        sample(text, &format!("stapes_shard_connections{{shard=\"{shard}\"}}")).unwrap_or(0)
    };
    loop {
        let mut c = server.ws();
        assert_eq!(c.subscribe("metrics")["event"], "pusher_internal:subscription_succeeded");
        subscribers.push(c);
        let text = scrape(port).body;
        if subscribers.len() >= 8 && on_shard(&text, 0) > 0 && on_shard(&text, 1) > 0 {
            break;
        }
        assert!(subscribers.len() < 64, "every connection went to one shard\n{text}");
    }
    let n = subscribers.len() as u64;
    let leaver = server.ws();
    drop(leaver);
    let text = wait_for(
        port,
        &[
            ("stapes_connections_opened_total{app=\"1001\"}", n + 1),
            ("stapes_connections_closed_total{app=\"1001\"}", 1),
        ],
    );
    assert_eq!(sample(&text, "stapes_connections{app=\"1001\"}"), Some(n));
    assert_eq!(on_shard(&text, 0) + on_shard(&text, 1), n);
    assert_eq!(sample(&text, "stapes_connections{app=\"2002\"}"), Some(0));
    assert_eq!(sample(&text, "stapes_client_messages_total{app=\"1001\"}"), Some(n));
    assert_eq!(sample(&text, "stapes_deliveries_total{app=\"1001\"}"), Some(0));

    for n in 0..2 {
        let reply =
            trigger(port, &json!({"name": "tick", "channel": "metrics", "data": n.to_string()}));
        assert_eq!(reply.status, 200, "{}", reply.body);
    }
    let mut frame_bytes = 0;
    for c in &mut subscribers {
        for _ in 0..2 {
            let text = next_text(&mut c.ws);
            assert!(text.contains("\"tick\""), "{text}");
            // Short payloads: a two-byte WebSocket header.
            frame_bytes += text.len() as u64 + 2;
        }
    }
    // A refused request counts as a 4xx, not as a publish.
    let refused = post(port, &format!("/apps/{APP_ID}/events?auth_key={KEY}"), "{}");
    assert_eq!(refused.status, 401, "{}", refused.body);

    let reply = scrape(port);
    assert!(reply.headers.contains("text/plain; version=0.0.4"), "{}", reply.headers);
    let text = reply.body;
    assert!(text.contains("# TYPE stapes_deliveries_total counter\n"), "{text}");
    assert_eq!(sample(&text, "stapes_deliveries_total{app=\"1001\"}"), Some(2 * n));
    assert_eq!(sample(&text, "stapes_delivered_bytes_total{app=\"1001\"}"), Some(frame_bytes));
    assert_eq!(sample(&text, "stapes_deliveries_total{app=\"2002\"}"), Some(0));
    assert_eq!(sample(&text, "stapes_http_requests_total{status=\"2xx\"}"), Some(2));
    assert_eq!(sample(&text, "stapes_http_requests_total{status=\"4xx\"}"), Some(1));
    // Scrapes are not API requests.
    assert_eq!(sample(&scrape(port).body, "stapes_http_requests_total{status=\"2xx\"}"), Some(2));
}

#[test]
fn metrics_can_be_switched_off() {
    let server = Server::start_with(&config("  metrics: false\n", ""), &[]);
    assert_eq!(scrape(server.port).status, 404);
}

#[test]
fn incus_counts_reach_metrics_and_statsd() {
    let statsd = UdpSocket::bind("127.0.0.1:0").unwrap();
    statsd.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    let statsd_port = statsd.local_addr().unwrap().port();
    let incus = format!(
        "incus:\n  connection_timeout: 1\n  datadog_enabled: true\n  datadog_host: 127.0.0.1\n  datadog_port: {statsd_port}\n  datadog_interval_secs: 1\n"
    );
    let server = Server::start_with(&(config("", "") + &incus), &[]);
    let port = server.port;
    let socket = |user: &str| {
        let mut ws = server.ws_path("/socket");
        let auth = json!({"command": {"command": "authenticate", "user": user}});
        ws.send(Message::text(auth.to_string())).unwrap();
        ws
    };
    let mut alice = socket("alice");
    let mut bob = socket("bob");
    // Bob's own message to himself proves his authentication is done
    // before Alice writes to him (frames on one socket stay in order).
    let to = |user: &str, event: &str| json!({"command": {"command": "message", "user": user}, "message": {"event": event, "data": {}, "time": 1}});
    bob.send(Message::text(to("bob", "ready").to_string())).unwrap();
    assert!(next_text(&mut bob).contains("\"ready\""));
    alice.send(Message::text(to("bob", "hello").to_string())).unwrap();
    assert!(next_text(&mut bob).contains("\"hello\""));
    // A poll with nothing to deliver ends with 204 after connection_timeout.
    let lp = || http(port, b"GET /lp?user=carol HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    let poll = lp();
    assert_eq!(poll.status, 204, "{}", poll.headers);
    // Carol now has a mailbox: the message waits there for her next poll,
    // or answers a poll already waiting; either way one poll gets it.
    alice.send(Message::text(to("carol", "for-carol").to_string())).unwrap();
    let mut polls = 1;
    loop {
        let poll = lp();
        polls += 1;
        if poll.status == 200 {
            assert!(poll.body.contains("for-carol"), "{}", poll.body);
            break;
        }
        assert_eq!(poll.status, 204, "{}", poll.headers);
        assert!(polls < 10, "the message never reached a poll");
    }
    let text = wait_for(
        port,
        &[
            ("stapes_incus_websocket_connects_total", 2),
            ("stapes_incus_reads_total", 3),
            ("stapes_incus_writes_total", 3),
            ("stapes_incus_longpoll_connects_total", polls),
            ("stapes_incus_longpoll_disconnects_total", polls),
        ],
    );
    assert_eq!(sample(&text, "stapes_incus_sockets"), Some(2));
    assert_eq!(sample(&text, "stapes_incus_messages_total{target=\"user\"}"), Some(3));
    assert_eq!(sample(&text, "stapes_incus_commands_total{from=\"websocket\"}"), Some(3));

    // Counters arrive as deltas over several reports: sum them until
    // they add up, keeping the last gauge.
    let want: HashMap<&str, u64> = [
        ("incus.startup", 1),
        ("incus.websocket.connect", 2),
        ("incus.read", 3),
        ("incus.command", 3),
        ("incus.command.websocket", 3),
        ("incus.message", 3),
        ("incus.message.user", 3),
        ("incus.write", 3),
        ("incus.longpoll.connect", polls),
        ("incus.longpoll.disconnect", polls),
    ]
    .into();
    let mut sums: HashMap<String, u64> = HashMap::new();
    let mut client_count = None;
    let deadline = Instant::now() + WAIT;
    let mut buf = [0u8; 2048];
    while want.iter().any(|(k, v)| sums.get(*k) != Some(v)) || client_count != Some(2) {
        assert!(Instant::now() < deadline, "wanted {want:?}, got {sums:?}, gauge {client_count:?}");
        let Ok(n) = statsd.recv(&mut buf) else { continue };
        for line in std::str::from_utf8(&buf[..n]).unwrap().lines() {
            let (name, rest) = line.split_once(':').unwrap();
            let (value, kind) = rest.split_once('|').unwrap();
            let value: u64 = value.parse().unwrap();
            assert!(name.starts_with("incus."), "{line}");
            match kind {
                "c" => *sums.entry(name.to_owned()).or_default() += value,
                "g" => {
                    assert_eq!(name, "incus.client_count");
                    client_count = Some(value);
                }
                other => panic!("unexpected type {other} in {line}"),
            }
        }
    }
    for (name, value) in &sums {
        if let Some(expected) = want.get(name.as_str()) {
            assert_eq!(value, expected, "{name}");
        } else {
            panic!("unexpected counter {name}={value}");
        }
    }
}
