//! Webhooks (spec §13) from the real server with two shards to a small
//! HTTP receiver in the test: every event type with its headers, signature
//! and body; the delayed, cancellable `channel_vacated`; retries after a
//! 500; a receiver that refuses connections not disturbing delivery; and
//! https:// receivers, trusted through `server.webhook_ca_file` or not.

#![allow(clippy::unwrap_used, clippy::disallowed_methods)]

mod common;

use std::{
    collections::HashMap,
    io::{BufReader, Read, Write},
    net::TcpListener,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
        mpsc,
    },
    thread,
    time::{Instant, SystemTime, UNIX_EPOCH},
};

use common::*;
use rustls::{
    ServerConfig, ServerConnection, StreamOwned,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
};
use serde_json::{Value, json};

/// One POST the receiver got.
#[derive(Debug, Clone)]
struct Hook {
    path: String,
    headers: HashMap<String, String>,
    body: Vec<u8>,
    status: u16,
}

impl Hook {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap()
    }
}

/// A loopback HTTP/1.1 server that records every request and answers 500
/// to the first `fail_first` of them, 200 afterwards.
struct Receiver {
    port: u16,
    rx: mpsc::Receiver<Hook>,
}

impl Receiver {
    fn start(fail_first: usize) -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let (tx, rx) = mpsc::channel();
        let seen = Arc::new(AtomicUsize::new(0));
        thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { return };
                let (tx, seen) = (tx.clone(), Arc::clone(&seen));
                thread::spawn(move || serve(stream, &tx, &seen, fail_first));
            }
        });
        Receiver { port, rx }
    }

    /// The same receiver behind TLS with the `localhost` fixture certificate.
    /// `connections` counts accepted TCP connections, handshakes that fail
    /// included.
    fn start_tls(connections: Arc<AtomicUsize>) -> Receiver {
        let fixture = |name: &str| format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
        let certs = CertificateDer::pem_file_iter(fixture("localhost.crt"))
            .unwrap()
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        let key = PrivateKeyDer::from_pem_file(fixture("localhost.key")).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .unwrap();
        let config = Arc::new(config);
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let (tx, rx) = mpsc::channel();
        let seen = Arc::new(AtomicUsize::new(0));
        thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { return };
                connections.fetch_add(1, Ordering::SeqCst);
                let conn = ServerConnection::new(Arc::clone(&config)).unwrap();
                let (tx, seen) = (tx.clone(), Arc::clone(&seen));
                // A failed handshake shows as a read error: `serve` returns.
                thread::spawn(move || serve(StreamOwned::new(conn, stream), &tx, &seen, 0));
            }
        });
        Receiver { port, rx }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// The name in the fixture certificate, so that it verifies.
    fn https_url(&self, path: &str) -> String {
        format!("https://localhost:{}{path}", self.port)
    }

    /// Requests until `done` says the list is complete, or panics after WAIT.
    fn collect_until(&self, mut done: impl FnMut(&[Hook]) -> bool) -> Vec<Hook> {
        let deadline = Instant::now() + WAIT;
        let mut got = Vec::new();
        while !done(&got) {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(hook) => got.push(hook),
                Err(_) => panic!("webhooks did not complete within {WAIT:?}; got {got:#?}"),
            }
        }
        got
    }
}

fn serve(
    stream: impl Read + Write,
    tx: &mpsc::Sender<Hook>,
    seen: &AtomicUsize,
    fail_first: usize,
) {
    let mut reader = BufReader::new(stream);
    while let Some(ReadRequest { path, headers, body, .. }) = read_request(&mut reader) {
        let status = if seen.fetch_add(1, Ordering::SeqCst) < fail_first { 500 } else { 200 };
        let reason = if status == 200 { "OK" } else { "Internal Server Error" };
        let _ = tx.send(Hook { path, headers, body, status });
        let reply = format!("HTTP/1.1 {status} {reason}\r\nContent-Length: 2\r\n\r\nok");
        if reader.get_mut().write_all(reply.as_bytes()).is_err() {
            return;
        }
    }
}

/// The events of every accepted request, in arrival order.
fn events(hooks: &[Hook]) -> Vec<Value> {
    hooks
        .iter()
        .filter(|h| h.status == 200)
        .flat_map(|h| h.json()["events"].as_array().unwrap().clone())
        .collect()
}

fn has(hooks: &[Hook], name: &str, channel: &str) -> bool {
    events(hooks).iter().any(|e| e["name"] == name && e["channel"] == channel)
}

fn unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64
}

fn start(app_extra: &str) -> Server {
    Server::start_with(&config("", app_extra), &[])
}

#[test]
fn every_event_type_arrives_signed_with_the_spec_body() {
    let receiver = Receiver::start(0);
    let server = start(&format!(
        "    webhook_delay_ms: 200\n    webhooks:\n      - url: {}\n",
        receiver.url("/hooks")
    ));
    let mut a = server.ws();
    let mut b = server.ws();
    a.join("presence-room", "u1");
    b.join("presence-room", "u2");
    let _member_added = a.event();
    a.send(json!({"event":"client-typing","channel":"presence-room","data":{"on":true}}));
    assert_eq!(b.event()["event"], "client-typing");
    assert_eq!(b.subscribe("cache-prices")["event"], "pusher_internal:subscription_succeeded");
    assert_eq!(b.event()["event"], "pusher:cache_miss");
    assert_eq!(b.subscribe("news")["event"], "pusher_internal:subscription_succeeded");
    drop(a);
    let hooks = receiver.collect_until(|h| {
        has(h, "channel_occupied", "news")
            && has(h, "subscription_count", "news")
            && has(h, "cache_miss", "cache-prices")
            && has(h, "client_event", "presence-room")
            && events(h).iter().filter(|e| e["name"] == "member_added").count() == 2
            && has(h, "member_removed", "presence-room")
    });
    for hook in &hooks {
        assert_eq!(hook.path, "/hooks");
        assert_eq!(hook.headers["content-type"], "application/json");
        assert_eq!(hook.headers["x-pusher-key"], KEY);
        let body = std::str::from_utf8(&hook.body).unwrap();
        assert_eq!(hook.headers["x-pusher-signature"], hmac_hex(SECRET, body));
        let json = hook.json();
        let time_ms = json["time_ms"].as_u64().unwrap();
        assert!(time_ms <= unix_ms() && time_ms + 60_000 > unix_ms(), "{json}");
        assert_eq!(json["events"].as_array().unwrap().len(), 1, "no batching by default");
    }
    let all = events(&hooks);
    let find = |name: &str| all.iter().find(|e| e["name"] == name).unwrap().clone();
    assert_eq!(find("channel_occupied").as_object().unwrap().len(), 2, "name and channel only");
    let client = find("client_event");
    assert_eq!(client["event"], "client-typing");
    assert_eq!(client["user_id"], "u1");
    assert!(client["socket_id"].as_str().unwrap().contains('.'));
    assert_eq!(
        serde_json::from_str::<Value>(client["data"].as_str().unwrap()).unwrap(),
        json!({"on":true})
    );
    assert_eq!(find("member_removed")["user_id"], "u1");
    let count = all.iter().find(|e| e["name"] == "subscription_count" && e["channel"] == "news");
    assert_eq!(count.unwrap()["subscription_count"], 1);
    assert!(
        !all.iter().any(|e| e["name"] == "subscription_count" && e["channel"] == "presence-room"),
        "never for presence channels"
    );
    let occupied: Vec<_> = all.iter().filter(|e| e["name"] == "channel_occupied").collect();
    assert_eq!(occupied.len(), 3, "presence-room, cache-prices and news, once each: {occupied:?}");
}

#[test]
fn vacated_waits_for_the_delay_and_is_dropped_when_the_channel_comes_back() {
    let receiver = Receiver::start(0);
    let server = start(&format!(
        "    webhook_delay_ms: 1500\n    webhooks:\n      - url: {}\n        event_types: [channel_occupied, channel_vacated]\n",
        receiver.url("/occupancy")
    ));
    let mut a = server.ws();
    a.subscribe("room");
    // Gone and back at once. One connection, so that both changes reach the
    // channel's owner shard in this order, over one ring.
    a.send(json!({"event":"pusher:unsubscribe","data":{"channel":"room"}}));
    a.subscribe("room");
    let left_at = unix_ms();
    a.send(json!({"event":"pusher:unsubscribe","data":{"channel":"room"}}));
    let hooks = receiver.collect_until(|h| has(h, "channel_vacated", "room"));
    let names: Vec<_> =
        events(&hooks).iter().map(|e| e["name"].as_str().unwrap().to_owned()).collect();
    assert_eq!(names, ["channel_occupied", "channel_vacated"]);
    let vacated_at = hooks.last().unwrap().json()["time_ms"].as_u64().unwrap();
    assert!(
        vacated_at >= left_at + 1500,
        "sent {} ms after the channel emptied, before the 1500 ms delay",
        vacated_at - left_at
    );
}

#[test]
fn a_500_is_retried_with_the_same_signed_body() {
    let receiver = Receiver::start(1);
    let server = start(&format!(
        "    webhooks:\n      - url: {}\n        event_types: [channel_occupied]\n",
        receiver.url("/flaky")
    ));
    let mut a = server.ws();
    a.subscribe("news");
    let hooks = receiver.collect_until(|h| h.iter().any(|h| h.status == 200));
    assert_eq!(hooks.len(), 2, "{hooks:#?}");
    assert_eq!(hooks[0].status, 500);
    assert_eq!(hooks[1].body, hooks[0].body, "the retry resends the same body");
    assert_eq!(hooks[1].headers["x-pusher-signature"], hooks[0].headers["x-pusher-signature"]);
    assert_eq!(events(&hooks), [json!({"name":"channel_occupied","channel":"news"})]);
}

#[test]
fn batching_puts_several_events_in_one_request() {
    let receiver = Receiver::start(0);
    let server = start(&format!(
        "    webhook_batch_ms: 300\n    webhook_batch_max: 10\n    webhooks:\n      - url: {}\n        event_types: [channel_occupied]\n",
        receiver.url("/batch")
    ));
    let mut a = server.ws();
    for n in 0..5 {
        a.subscribe(&format!("ch-{n}"));
    }
    let hooks = receiver.collect_until(|h| events(h).len() == 5);
    assert!(hooks.len() < 5, "{} requests for 5 events", hooks.len());
    let sig = hmac_hex(SECRET, std::str::from_utf8(&hooks[0].body).unwrap());
    assert_eq!(hooks[0].headers["x-pusher-signature"], sig);
}

#[test]
fn a_refusing_receiver_does_not_disturb_delivery() {
    // A port nothing listens on: every attempt is refused.
    let dead = free_port();
    let server = start(&format!("    webhooks:\n      - url: http://127.0.0.1:{dead}/nobody\n"));
    let mut subscriber = server.ws();
    let mut sender = server.ws();
    let mut churner = server.ws();
    subscriber.subscribe("private-chat");
    sender.subscribe("private-chat");
    for n in 0..200 {
        // Each one is an occupied/vacated pair and a count for the webhook.
        let ch = format!("churn-{n}");
        assert_eq!(churner.subscribe(&ch)["event"], "pusher_internal:subscription_succeeded");
        churner.send(json!({"event":"pusher:unsubscribe","data":{"channel":ch}}));
        let reply = trigger(
            server.port,
            &json!({"name":"tick","channel":"private-chat","data":n.to_string()}),
        );
        assert_eq!(reply.status, 200, "{}", reply.body);
    }
    for n in 0..200 {
        let got = subscriber.event();
        assert_eq!(got["event"], "tick");
        assert_eq!(got["data"], n.to_string());
    }
    // Client events still flow both ways.
    sender.send(json!({"event":"client-hi","channel":"private-chat","data":{}}));
    assert_eq!(subscriber.event()["event"], "client-hi");
}

#[test]
fn a_receiver_that_never_answers_does_not_delay_delivery() {
    // Accepts connections and holds them open without reading or answering.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let silent = listener.local_addr().unwrap().port();
    thread::spawn(move || {
        let mut held = Vec::new();
        for stream in listener.incoming() {
            held.push(stream);
        }
    });
    let server = start(&format!("    webhooks:\n      - url: http://127.0.0.1:{silent}/silent\n"));
    let mut subscriber = server.ws();
    let mut churner = server.ws();
    subscriber.subscribe("news");
    for n in 0..50 {
        let ch = format!("churn-{n}");
        assert_eq!(churner.subscribe(&ch)["event"], "pusher_internal:subscription_succeeded");
        let reply =
            trigger(server.port, &json!({"name":"tick","channel":"news","data":n.to_string()}));
        assert_eq!(reply.status, 200, "{}", reply.body);
        assert_eq!(subscriber.event()["data"], n.to_string());
    }
    // The webhook requests hang until their 10 s timeout and are retried;
    // the shards hand events over and never wait for them.
}

#[test]
fn an_https_receiver_behind_a_private_ca_gets_signed_webhooks() {
    let receiver = Receiver::start_tls(Arc::new(AtomicUsize::new(0)));
    let ca = format!("{}/tests/fixtures/localhost.crt", env!("CARGO_MANIFEST_DIR"));
    let yaml = config(
        &format!("  webhook_ca_file: {ca}\n"),
        &format!(
            "    webhooks:\n      - url: {}\n        event_types: [channel_occupied]\n",
            receiver.https_url("/secure")
        ),
    );
    let server = Server::start_with(&yaml, &[]);
    let mut a = server.ws();
    a.subscribe("news");
    a.subscribe("sports");
    let hooks = receiver.collect_until(|h| events(h).len() == 2);
    for hook in &hooks {
        assert_eq!(hook.path, "/secure");
        assert_eq!(hook.headers["x-pusher-key"], KEY);
        let body = std::str::from_utf8(&hook.body).unwrap();
        assert_eq!(hook.headers["x-pusher-signature"], hmac_hex(SECRET, body));
    }
    let channels: Vec<_> = events(&hooks).iter().map(|e| e["channel"].clone()).collect();
    assert_eq!(channels, ["news", "sports"]);
}

#[test]
fn an_untrusted_https_receiver_is_retried_and_does_not_disturb_delivery() {
    // No webhook_ca_file: the fixture certificate is trusted by nobody.
    let connections = Arc::new(AtomicUsize::new(0));
    let receiver = Receiver::start_tls(Arc::clone(&connections));
    let server = start(&format!(
        "    webhooks:\n      - url: {}\n        event_types: [channel_occupied]\n",
        receiver.https_url("/untrusted")
    ));
    let mut subscriber = server.ws();
    subscriber.subscribe("news");
    let deadline = Instant::now() + WAIT;
    let mut n = 0;
    // Delivery goes on while the webhook fails its handshakes and retries
    // (the first retry comes within a second).
    while connections.load(Ordering::SeqCst) < 2 {
        assert!(Instant::now() < deadline, "the failed webhook was not retried within {WAIT:?}");
        let reply =
            trigger(server.port, &json!({"name":"tick","channel":"news","data":n.to_string()}));
        assert_eq!(reply.status, 200, "{}", reply.body);
        assert_eq!(subscriber.event()["data"], n.to_string());
        n += 1;
        thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(receiver.rx.try_recv().is_err(), "no request may pass an untrusted handshake");
}

#[test]
fn a_missing_webhook_ca_file_stops_start_up_naming_the_key() {
    let port = free_port();
    let dir = std::env::temp_dir().join(format!("stapes-test-{}-{port}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("config.yml");
    std::fs::write(&path, config("  webhook_ca_file: /nonexistent/ca.pem\n", "")).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_stapes"))
        .arg("--config")
        .arg(&path)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("server.webhook_ca_file"), "{stderr}");
    assert!(stderr.contains("/nonexistent/ca.pem"), "{stderr}");
}
