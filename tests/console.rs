//! The debug console (`server.console`): the page, and the viewer's
//! WebSocket at `/console/stream` (signed like the HTTP API), against an
//! in-process server with two shards.
#![allow(clippy::unwrap_used, clippy::disallowed_methods)]

mod common;

use common::*;
use serde_json::{Value, json};
use std::{
    io::{Read, Write},
    net::TcpStream,
    time::Instant,
};
use tungstenite::{Message, WebSocket};

const APP_B: &str = "2002";
const KEY_B: &str = "key-b";
const SECRET_B: &str = "secret-b";

fn console_config(extra_server: &str) -> String {
    let app_b = format!("  - id: \"{APP_B}\"\n    key: {KEY_B}\n    secret: {SECRET_B}\n");
    config(&format!("  console: true\n{extra_server}"), &app_b)
}

/// `/console/stream?…` signed for `app_id` with `key` and `secret`.
fn stream_path(app_id: &str, key: &str, secret: &str) -> String {
    let mut params = [
        format!("app_id={app_id}"),
        format!("auth_key={key}"),
        format!("auth_timestamp={}", now_unix()),
        "auth_version=1.0".to_owned(),
    ];
    params.sort();
    let query = params.join("&");
    let sig = hmac_hex(secret, &format!("GET\n/console/stream\n{query}"));
    format!("/console/stream?{query}&auth_signature={sig}")
}

/// The status of a WebSocket upgrade of `path` (its head only: an
/// accepted stream stays open).
fn upgrade(port: u16, path: &str) -> u16 {
    let raw = format!(
        "GET {path} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    s.write_all(raw.as_bytes()).unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") && s.read(&mut byte).unwrap() == 1 {
        head.push(byte[0]);
    }
    parse_reply(&head).status
}

/// The next message on the viewer's stream that is not the counters
/// (which come every second, so the read timeout alone would never fire).
fn next_event(ws: &mut WebSocket<TcpStream>) -> Value {
    let deadline = Instant::now() + WAIT;
    while Instant::now() < deadline {
        let v = event(ws);
        if v["type"] != "stats" {
            return v;
        }
    }
    panic!("no event but the counters for {WAIT:?}");
}

/// Reads until an event matching `wanted`, returning those before it.
fn until(ws: &mut WebSocket<TcpStream>, wanted: impl Fn(&Value) -> bool) -> Vec<Value> {
    let mut before = Vec::new();
    loop {
        let v = next_event(ws);
        if wanted(&v) {
            return before;
        }
        before.push(v);
    }
}

fn publish_b(port: u16, channel: &str, name: &str) {
    let body = json!({"name": name, "channel": channel, "data": "{}"}).to_string();
    let path = format!("/apps/{APP_B}/events");
    let reply = post(port, &signed_path("POST", &path, body.as_bytes(), KEY_B, SECRET_B), &body);
    assert_eq!(reply.status, 200, "{}", reply.body);
}

#[test]
fn off_by_default() {
    let server = Server::start();
    let page = http(server.port, b"GET /console HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    assert_eq!(page.status, 404);
    let path = stream_path(APP_ID, KEY, SECRET);
    let raw = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    assert_eq!(http(server.port, raw.as_bytes()).status, 404);
    assert_eq!(upgrade(server.port, &path), 404, "not taken for a Pusher upgrade either");
}

#[test]
fn the_page_is_served_when_on() {
    let server = Server::start_with(&console_config(""), &[]);
    let page = http(server.port, b"GET /console HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    assert_eq!(page.status, 200);
    assert!(page.headers.to_ascii_lowercase().contains("content-type: text/html"));
    assert!(page.body.contains("/console/stream"), "the page opens the stream");
}

#[test]
fn the_stream_needs_the_apps_secret() {
    let server = Server::start_with(&console_config(""), &[]);
    let unsigned = format!("/console/stream?app_id={APP_ID}&auth_key={KEY}");
    assert_eq!(upgrade(server.port, &unsigned), 401);
    let wrong_secret = stream_path(APP_ID, KEY, "not-the-secret");
    assert_eq!(upgrade(server.port, &wrong_secret), 401);
    // App B's own credentials sign nothing for app A.
    let other_app = stream_path(APP_ID, KEY_B, SECRET_B);
    assert_eq!(upgrade(server.port, &other_app), 401);
    assert_eq!(upgrade(server.port, &stream_path("9999", KEY, SECRET)), 404);
    // The same request, signed, is upgraded.
    assert_eq!(upgrade(server.port, &stream_path(APP_ID, KEY, SECRET)), 101);
}

#[test]
fn a_viewer_sees_its_app_and_nothing_else() {
    let server = Server::start_with(&console_config(""), &[]);
    let mut viewer_a = server.ws_path(&stream_path(APP_ID, KEY, SECRET));
    let mut viewer_b = server.ws_path(&stream_path(APP_B, KEY_B, SECRET_B));
    // The first counters arrive at once.
    let stats = event(&mut viewer_a);
    assert_eq!(stats["type"], "stats", "{stats}");
    assert!(stats["missed"] == 0, "{stats}");

    // Several connections, so that both shards raise events (the kernel
    // spreads them); each one's events reach the viewer wherever it is.
    let mut clients: Vec<Client> = (0..4).map(|_| server.ws()).collect();
    for client in &mut clients {
        let ok = client.subscribe("private-news");
        assert_eq!(ok["event"], "pusher_internal:subscription_succeeded");
    }
    let reply = trigger(
        server.port,
        &json!({"name":"headline","channel":"private-news","data":"{\"n\":1}"}),
    );
    assert_eq!(reply.status, 200, "{}", reply.body);
    let seen = until(&mut viewer_a, |v| v["type"] == "api_message");
    for client in &clients {
        let id = &client.socket_id;
        for kind in ["connected", "subscribed"] {
            assert!(
                seen.iter().any(|v| v["type"] == kind && v["socket_id"] == id.as_str()),
                "{kind} of {id} in {seen:?}"
            );
        }
    }
    let occupied: Vec<_> = seen.iter().filter(|v| v["type"] == "occupied").collect();
    assert_eq!(occupied.len(), 1, "{seen:?}");
    assert_eq!(occupied[0]["channel"], "private-news");
    for client in &mut clients {
        let got = client.event();
        assert_eq!(got["event"], "headline");
    }

    // Client events too, with their data.
    clients[0].send(json!({"event":"client-typing","channel":"private-news","data":{"who":"me"}}));
    let client_event = next_event(&mut viewer_a);
    assert_eq!(client_event["type"], "client_event", "{client_event}");
    assert_eq!(client_event["socket_id"], clients[0].socket_id.as_str());
    assert_eq!(client_event["data"], "{\"who\":\"me\"}");

    // Presence members come and go.
    let mut member = server.ws();
    let joined = member.join("presence-room", "user-1");
    assert_eq!(joined["event"], "pusher_internal:subscription_succeeded", "{joined}");
    until(&mut viewer_a, |v| v["type"] == "member_added" && v["user_id"] == "user-1");
    drop(member);
    until(&mut viewer_a, |v| v["type"] == "member_removed" && v["user_id"] == "user-1");

    // Viewer B saw none of it: its first event is the marker on its own app.
    publish_b(server.port, "b-channel", "marker");
    let first = next_event(&mut viewer_b);
    assert_eq!((&first["type"], &first["event"]), (&json!("api_message"), &json!("marker")));
    // And viewer A never sees B's marker: the next thing it sees is A's.
    clients.truncate(0);
    let rest = until(&mut viewer_a, |v| v["type"] == "vacated");
    assert!(rest.iter().all(|v| v["event"] != "marker"), "{rest:?}");
}

#[test]
fn the_page_publishes_through_its_stream() {
    let server = Server::start_with(&console_config(""), &[]);
    let mut viewer = server.ws_path(&stream_path(APP_ID, KEY, SECRET));
    let mut client = server.ws();
    client.subscribe("tests");
    let publish = json!({"name":"from-console","channel":"tests","data":"{\"ok\":true}"});
    viewer.send(Message::text(publish.to_string())).unwrap();
    let got = client.event();
    assert_eq!((&got["event"], &got["channel"]), (&json!("from-console"), &json!("tests")));
    assert_eq!(data_of(&got), json!({"ok": true}));
    // The reply, and the publish as an event like any other.
    let mut seen: Vec<Value> = Vec::new();
    for kind in ["published", "api_message"] {
        if !seen.iter().any(|v| v["type"] == kind) {
            seen.extend(until(&mut viewer, |v| v["type"] == kind));
        }
    }
    assert!(seen.iter().all(|v| v["type"] != "error"), "{seen:?}");
    viewer.send(Message::text(json!({"name":"x","data":"y"}).to_string())).unwrap();
    let error = until(&mut viewer, |v| v["type"] == "error");
    assert!(error.is_empty() || error.iter().all(|v| v["type"] != "published"));
}

#[test]
fn a_viewer_that_does_not_read_is_told_what_it_missed() {
    let server = Server::start_with(&console_config("  max_outbox_bytes: 65536\n"), &[]);
    let mut viewer = server.ws_path(&stream_path(APP_ID, KEY, SECRET));
    assert_eq!(event(&mut viewer)["type"], "stats");
    // Far more than the socket buffers and the viewer's outbox hold,
    // while the viewer reads nothing.
    let data = "x".repeat(8000);
    let (calls, per_call) = (300, 10);
    let batch: Vec<Value> = (0..per_call)
        .map(|_| json!({"name":"bulk","channel":"nobody-listens","data":data}))
        .collect();
    let body = json!({ "batch": batch }).to_string();
    let path = format!("/apps/{APP_ID}/batch_events");
    for _ in 0..calls {
        let reply =
            post(server.port, &signed_path("POST", &path, body.as_bytes(), KEY, SECRET), &body);
        assert_eq!(reply.status, 200, "{}", reply.body);
    }
    // Reading now: every event either arrives or is counted as missed.
    let published = calls * per_call;
    let mut received = 0;
    let deadline = Instant::now() + SLOW;
    loop {
        assert!(Instant::now() < deadline, "received {received} of {published}, missed too few");
        let v = event(&mut viewer);
        match v["type"].as_str() {
            Some("api_message") => received += 1,
            Some("stats") => {
                let missed = v["missed"].as_u64().unwrap() as usize;
                if received + missed >= published {
                    assert!(missed > 0, "nothing was dropped: {v}");
                    assert_eq!(received + missed, published, "{v}");
                    break;
                }
            }
            _ => {}
        }
    }
}

#[test]
fn events_published_on_redis_are_shown() {
    let redis = Redis::start();
    let yaml = console_config("") + &format!("redis:\n  url: {}\n", redis.url());
    let server = Server::start_with(&yaml, &[]);
    let mut viewer = server.ws_path(&stream_path(APP_ID, KEY, SECRET));
    wait_until("the bridge to subscribe", || redis.subscribers("stapes:pusher") >= 1);
    let payload = json!({"app_id": APP_ID, "channels": ["a", "b"], "name": "from-redis", "data": "{\"r\":1}"});
    redis.publish("stapes:pusher", &payload.to_string());
    let mut channels = Vec::new();
    while channels.len() < 2 {
        let v = next_event(&mut viewer);
        assert_eq!((&v["type"], &v["event"]), (&json!("api_message"), &json!("from-redis")), "{v}");
        assert_eq!(v["data"], "{\"r\":1}");
        channels.push(v["channel"].as_str().unwrap().to_owned());
    }
    channels.sort();
    assert_eq!(channels, ["a", "b"]);
    // Another app's viewer sees none of app A's events: its first is the
    // marker on its own app.
    let mut viewer_b = server.ws_path(&stream_path(APP_B, KEY_B, SECRET_B));
    redis.publish("stapes:pusher", &payload.to_string());
    let marker = json!({"app_id": APP_B, "channel": "m", "name": "marker", "data": "m"});
    redis.publish("stapes:pusher", &marker.to_string());
    assert_eq!(next_event(&mut viewer_b)["event"], "marker");
}
