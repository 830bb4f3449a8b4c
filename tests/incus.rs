//! Incus endpoints of a real stapes (two shards) spoken to raw: `/socket`
//! with a tungstenite client, `/lp` and `/ping` over plain TCP, and the
//! Redis inputs against a `redis-server` the test starts on a free loopback
//! port. No assertion depends on timing: ordering between connections is
//! pinned with marker messages, and long-poll timeouts only decide whether
//! a 204 comes, never how fast.

#![allow(clippy::unwrap_used, clippy::disallowed_methods)]

mod common;

use std::{
    io::{Read, Write},
    net::TcpStream,
    thread,
    time::{Duration, Instant},
};

use common::*;
use serde_json::{Value, json};
use tungstenite::{Message, WebSocket};

type Ws = WebSocket<TcpStream>;

fn start(extra: &str) -> Server {
    let yaml = config("", "") + "incus:\n  connection_timeout: 1\n" + extra;
    Server::start_with(&yaml, &[])
}

fn socket(port: u16, user: &str) -> Ws {
    let mut ws = ws_connect(port, "/socket");
    send(&mut ws, json!({"command": {"command": "authenticate", "user": user}}));
    ws
}

fn send(ws: &mut Ws, v: Value) {
    ws.send(Message::text(v.to_string())).unwrap();
}

fn message(event: &str, user: Option<&str>, page: Option<&str>) -> Value {
    let mut command = json!({"command": "message"});
    if let Some(u) = user {
        command["user"] = u.into();
    }
    if let Some(p) = page {
        command["page"] = p.into();
    }
    json!({"command": command, "message": {"event": event, "data": {"n": 1}, "time": 1}})
}

/// The next delivered message; its frame must end with the newline Incus adds.
fn recv(ws: &mut Ws) -> Value {
    loop {
        match ws.read().unwrap() {
            Message::Text(t) => {
                assert!(t.ends_with('\n'), "{t:?}");
                return serde_json::from_str(t.trim_end()).unwrap();
            }
            Message::Binary(_) => panic!("binary frame"),
            Message::Close(c) => panic!("closed: {c:?}"),
            _ => {}
        }
    }
}

/// Events received up to (not including) `marker`.
fn until(ws: &mut Ws, marker: &str) -> Vec<String> {
    let mut got = Vec::new();
    loop {
        let v = recv(ws);
        let event = v["event"].as_str().unwrap().to_owned();
        if event == marker {
            return got;
        }
        got.push(event);
    }
}

/// The close code the server sends next.
fn close_code(ws: &mut Ws) -> Option<u16> {
    loop {
        match ws.read() {
            Ok(Message::Close(c)) => return c.map(|c| u16::from(c.code)),
            Ok(Message::Text(t)) => panic!("expected a close, got {t}"),
            Ok(_) => {}
            Err(e) => panic!("expected a close, got {e}"),
        }
    }
}

/// Sets the socket's page, and waits until it took effect: a message the
/// socket then sends to itself on that page comes back only once it has.
fn set_page(ws: &mut Ws, user: &str, page: &str) {
    send(ws, json!({"command": {"command": "setpage", "page": page}}));
    send(ws, message("page-set", Some(user), Some(page)));
    assert_eq!(until(ws, "page-set"), Vec::<String>::new());
}

fn request(port: u16, raw: &str) -> HttpReply {
    http(port, raw.as_bytes())
}

fn get(port: u16, path: &str) -> HttpReply {
    request(port, &format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"))
}

fn poll(port: u16, query: &str) -> HttpReply {
    get(port, &format!("/lp?{query}"))
}

fn form_poll(port: u16, form: &str) -> HttpReply {
    request(
        port,
        &format!(
            "POST /lp HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{form}",
            form.len()
        ),
    )
}

fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn header<'a>(reply: &'a HttpReply, name: &str) -> Option<&'a str> {
    reply.headers.lines().find_map(|line| {
        let (n, v) = line.split_once(':')?;
        n.eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

fn assert_lp_headers(reply: &HttpReply) {
    assert_eq!(header(reply, "access-control-allow-origin"), Some("*"), "{}", reply.headers);
    assert_eq!(header(reply, "content-type"), Some("application/json"), "{}", reply.headers);
    assert_eq!(
        header(reply, "cache-control"),
        Some("private, no-store, no-cache, must-revalidate, post-check=0, pre-check=0")
    );
}

fn event_of(body: &str) -> String {
    let v: Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{body:?}: {e}"));
    v["event"].as_str().unwrap().to_owned()
}

#[test]
fn http_surface() {
    let server = start("");
    let port = server.port;
    for method in ["GET", "POST"] {
        let r = request(
            port,
            &format!("{method} /ping HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
        );
        assert_eq!((r.status, r.body.as_str()), (200, "OK"));
        assert_eq!(header(&r, "content-type"), Some("text/plain; charset=utf-8"));
    }
    for path in ["/socket/", "/lp/", "/nothing"] {
        assert_eq!(get(port, path).status, 404, "{path}");
    }
    let r = request(port, "POST /socket HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    assert_eq!((r.status, r.body.as_str()), (405, "Method not allowed\n"));
    let r = get(port, "/socket");
    assert_eq!((r.status, r.body.as_str()), (400, "Not a websocket handshake\n"));
    let r = request(
        port,
        "GET /socket HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 8\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    );
    assert_eq!((r.status, r.body.as_str()), (400, "Not a websocket handshake\n"));
    // The Pusher paths are untouched.
    assert_eq!(get(port, "/health").status, 200);
}

#[test]
fn authentication_failures_close_with_1011() {
    let server = start("");
    let bad = [
        json!({"command": {"command": "message", "user": "a"}}).to_string(),
        json!({"command": {"command": "authenticate"}}).to_string(),
        json!({"command": {"command": "authenticate", "user": ""}}).to_string(),
        json!({"command": {"command": "authenticate", "user": 5}}).to_string(),
        "not json".to_owned(),
    ];
    for text in bad {
        let mut ws = ws_connect(server.port, "/socket");
        ws.send(Message::text(text.clone())).unwrap();
        assert_eq!(close_code(&mut ws), Some(1011), "{text}");
    }
    // Binary frames, any case, trailing bytes: all accepted.
    let mut ws = ws_connect(server.port, "/socket");
    let auth = r#"{"command":{"command":"Authenticate","user":"tg"}} trailing"#;
    ws.send(Message::binary(auth.as_bytes().to_vec())).unwrap();
    send(&mut ws, message("self", Some("tg"), None));
    assert_eq!(recv(&mut ws)["event"], "self");
    // Undecodable input after authentication: close 1000.
    ws.send(Message::text("not json")).unwrap();
    assert_eq!(close_code(&mut ws), Some(1000));
}

#[test]
fn every_routing_case_over_websockets() {
    let server = start("");
    let port = server.port;
    // Several connections per user, so that the kernel spreads them over
    // both shards and deliveries cross shards.
    let mut a_p1 = socket(port, "alice");
    let mut a_other = socket(port, "alice");
    let mut a_none = socket(port, "alice");
    let mut b_p1 = socket(port, "bob");
    let mut sender = socket(port, "carol");
    set_page(&mut a_p1, "alice", "/p1");
    set_page(&mut a_other, "alice", "/p2");
    set_page(&mut b_p1, "bob", "/p1");
    let mut all = [&mut a_p1, &mut a_other, &mut a_none, &mut b_p1, &mut sender];
    let cases: [(Option<&str>, Option<&str>, [bool; 5]); 9] = [
        (None, None, [true, true, true, true, true]),
        (None, Some("/p1"), [true, false, false, true, false]),
        (None, Some("/nowhere"), [false; 5]),
        (Some("alice"), None, [true, true, true, false, false]),
        (Some("alice"), Some(""), [true, true, true, false, false]),
        (Some("alice"), Some("/p1"), [true, false, false, false, false]),
        (Some("alice"), Some("/p3"), [false; 5]),
        (Some(""), Some("/p1"), [false; 5]),
        (Some("nobody"), None, [false; 5]),
    ];
    for (i, (user, page, want)) in cases.into_iter().enumerate() {
        let event = format!("case{i}");
        let marker = format!("sync{i}");
        // Both from one socket: every receiver sees them in this order.
        send(all[4], message(&event, user, page));
        send(all[4], message(&marker, None, None));
        for (n, ws) in all.iter_mut().enumerate() {
            let expect: Vec<String> = if want[n] { vec![event.clone()] } else { vec![] };
            assert_eq!(until(ws, &marker), expect, "case {i} {user:?} {page:?}, socket {n}");
        }
    }
    // Message shape: server time, sender fields dropped, internal_url copied.
    let before = now_unix();
    let mut m = message("shape", Some("bob"), None);
    m["message"]["data"] = json!({"internal_url": "/gallery/abc", "x": 1});
    m["message"]["extra"] = json!("dropped");
    send(all[4], m);
    let raw = loop {
        match all[3].read().unwrap() {
            Message::Text(t) => break t.to_string(),
            _ => continue,
        }
    };
    let v: Value = serde_json::from_str(raw.trim_end()).unwrap();
    // Byte for byte what Incus sent (spec behaviour 33): keys sorted,
    // server time, internal_url copied last, newline.
    let time = v["time"].as_u64().unwrap();
    assert_eq!(
        raw,
        format!(
            "{{\"event\":\"shape\",\"data\":{{\"internal_url\":\"/gallery/abc\",\"x\":1}},\"time\":{time},\"internal_url\":\"/gallery/abc\"}}\n"
        )
    );
    assert_eq!(v["data"], json!({"internal_url": "/gallery/abc", "x": 1}));
    assert_eq!(v["internal_url"], "/gallery/abc");
    assert!(v["time"].as_u64().unwrap() >= before);
    assert_eq!(v.as_object().unwrap().len(), 4);
}

#[test]
fn per_socket_order_and_client_broadcasts_off() {
    // A burst past the default command rate limit, which is not under test.
    let server = start("  client_commands_burst: 1000\n");
    let mut alice = socket(server.port, "alice");
    let mut bob = socket(server.port, "bob");
    for i in 0..300 {
        send(&mut bob, message(&format!("e{i}"), Some("alice"), None));
    }
    for i in 0..300 {
        assert_eq!(recv(&mut alice)["event"], format!("e{i}"));
    }

    // One shard, so that routing to alice is done while bob's frame is
    // handled, with no ring between: the pongs below are then markers.
    let yaml = config("", "").replace("shards: 2", "shards: 1")
        + "incus:\n  connection_timeout: 1\n  client_broadcasts: false\n";
    let server = Server::start_with(&yaml, &[]);
    let mut alice = socket(server.port, "alice");
    let mut bob = socket(server.port, "bob");
    send(&mut bob, message("nope", Some("alice"), None));
    // Pushes from clients are ignored too; the socket stays open.
    send(&mut bob, json!({"command": {"command": "push", "push_type": "ios"}}));
    send(&mut bob, json!({"command": {"command": "setpage", "page": "/x"}}));
    // bob's pong: his frames were handled, and anything they sent alice is
    // in her queue; her pong comes after it.
    for ws in [&mut bob, &mut alice] {
        ws.send(Message::Ping(b"hello".to_vec().into())).unwrap();
        loop {
            match ws.read().unwrap() {
                Message::Pong(p) => {
                    assert_eq!(&p[..], b"hello");
                    break;
                }
                Message::Text(t) => panic!("nothing should be delivered: {t}"),
                _ => {}
            }
        }
    }
}

#[test]
fn long_poll_statuses_and_headers() {
    let server = start("");
    let port = server.port;
    let r = poll(port, "");
    assert_eq!((r.status, r.body.as_str()), (200, ""));
    assert_eq!(header(&r, "content-length"), Some("0"));
    assert_lp_headers(&r);
    let r = poll(port, "user=lp1");
    assert_eq!((r.status, r.body.as_str()), (204, ""));
    assert_lp_headers(&r);
    let r = request(port, "PUT /lp?user=x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    assert_eq!(r.status, 204, "any method polls");
    // keep-alive is said explicitly.
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    s.write_all(b"GET /lp HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut buf = [0u8; 1024];
    let n = s.read(&mut buf).unwrap();
    let head = String::from_utf8_lossy(&buf[..n]);
    assert!(head.contains("Connection: keep-alive"), "{head}");
}

#[test]
fn long_poll_gets_messages_without_loss() {
    let server = start("");
    let port = server.port;
    // The first poll opens the user's mailbox; from then on nothing sent to
    // the user is lost between polls, whatever the timing.
    assert_eq!(poll(port, "user=lp").status, 204);
    let mut bob = socket(port, "bob");
    for e in ["one", "two", "three"] {
        send(&mut bob, message(e, Some("lp"), None));
    }
    // bob also messages himself last: once it is back, the three are routed.
    send(&mut bob, message("routed", Some("bob"), None));
    assert_eq!(recv(&mut bob)["event"], "routed");
    for e in ["one", "two", "three"] {
        let r = poll(port, "user=lp");
        assert_eq!(r.status, 200);
        assert_eq!(header(&r, "content-length"), Some(r.body.len().to_string().as_str()));
        assert!(!r.body.ends_with('\n'));
        assert_lp_headers(&r);
        assert_eq!(event_of(&r.body), e);
    }
    assert_eq!(poll(port, "user=lp").status, 204, "mailbox empty");

    // A waiting poll gets a message sent through another poll's command
    // (the original's end-to-end test), and the sender's poll still waits.
    assert_eq!(form_poll(port, "user=foo").status, 204, "opens foo's mailbox");
    let waiting = thread::spawn(move || form_poll(port, "user=foo"));
    let cmd = message("foobar", Some("foo"), None).to_string();
    let sender = poll(port, &format!("user=baz&command={}", enc(&cmd)));
    assert_eq!(sender.status, 204);
    let r = waiting.join().unwrap();
    // Whether the waiting poll or the mailbox took it, it is not lost.
    let event = if r.status == 200 { event_of(&r.body) } else { poll_message(port, "user=foo") };
    assert_eq!(event, "foobar");

    // A poll the client abandons (incusjs aborts its poll when its
    // WebSocket opens) does not swallow the next message.
    assert_eq!(poll(port, "user=ab").status, 204);
    let polls = long_polls(port);
    let mut aborted = TcpStream::connect(("127.0.0.1", port)).unwrap();
    aborted.write_all(b"GET /lp?user=ab HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    // The poll is waiting (counted as it is registered) before it goes
    // away, so the message below meets an abandoned poll, not none.
    wait_until("the poll to wait", || long_polls(port) > polls);
    drop(aborted);
    send(&mut bob, message("after-abort", Some("ab"), None));
    assert_eq!(poll_message(port, "user=ab"), "after-abort");

    // Page routing for polls.
    assert_eq!(form_poll(port, "user=lp4&page=%2Fpg").status, 204);
    send(&mut bob, message("to-page", None, Some("/pg")));
    send(&mut bob, message("routed2", Some("bob"), None));
    assert_eq!(recv(&mut bob)["event"], "routed2");
    let r = poll(port, "user=lp4&page=%2Fpg");
    assert_eq!(event_of(&r.body), "to-page");
}

#[test]
fn bad_input_never_crashes() {
    let server = start("");
    let port = server.port;
    let mut victim = socket(port, "v");
    let garbage: [&[u8]; 8] = [
        b"{",
        b"[]",
        b"null",
        br#"{"command":null}"#,
        br#"{"command":{"command":"message"},"message":{"event":"e","data":[1]}}"#,
        br#"{"command":{"command":"setpresence"},"message":{"presence":"yes"}}"#,
        br#"{"command":{"command":"setpage","page":5}}"#,
        b"\xff\xfe",
    ];
    for g in garbage {
        let mut ws = socket(port, "g");
        let _ = ws.send(Message::binary(g.to_vec()));
        let mut ws2 = ws_connect(port, "/socket");
        let _ = ws2.send(Message::binary(g.to_vec()));
        let r = poll(port, &format!("user=g&command={}", enc(&String::from_utf8_lossy(g))));
        assert!([200, 204].contains(&r.status));
    }
    let mut raw = TcpStream::connect(("127.0.0.1", port)).unwrap();
    raw.write_all(b"GET /lp?user=%ZZ&command=%%% HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut out = Vec::new();
    raw.set_read_timeout(Some(WAIT)).unwrap();
    let _ = raw.read_to_end(&mut out);
    // Still serving, and the victim still receives.
    let mut sender = socket(port, "s");
    send(&mut sender, message("alive", Some("v"), None));
    assert_eq!(recv(&mut victim)["event"], "alive");
    assert_eq!(get(port, "/ping").body, "OK");
}

#[test]
fn shutdown_answers_polls_503_and_closes_sockets_1001() {
    let yaml = config("", "") + "incus:\n  connection_timeout: 60\n";
    let mut server = Server::start_with(&yaml, &[]);
    let port = server.port;
    let mut ws = socket(port, "alice");
    send(&mut ws, message("ready", Some("alice"), None));
    assert_eq!(recv(&mut ws)["event"], "ready");
    // A poll waiting when the shard starts draining is answered 503.
    let mut lp = TcpStream::connect(("127.0.0.1", port)).unwrap();
    lp.set_read_timeout(Some(WAIT)).unwrap();
    lp.write_all(b"GET /lp?user=w HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    wait_until("the poll to wait", || long_polls(port) >= 1);
    assert!(server.terminate().success());
    assert_eq!(close_code(&mut ws), Some(1001));
    let mut out = Vec::new();
    let _ = lp.read_to_end(&mut out);
    let r = parse_reply(&out);
    assert_eq!(r.status, 503, "{}", r.headers);
    assert_eq!(header(&r, "connection"), Some("close"));
}

/// Long-polls accepted so far (counted as each starts waiting).
fn long_polls(port: u16) -> u64 {
    metric(port, "stapes_incus_longpoll_connects_total").unwrap_or(0)
}

/// Polls until a message comes (a 204 just means it is still on its way).
fn poll_message(port: u16, query: &str) -> String {
    for _ in 0..20 {
        let r = poll(port, query);
        if r.status == 200 {
            return event_of(&r.body);
        }
        assert_eq!(r.status, 204);
    }
    panic!("no message for {query}");
}

// ---------------------------------------------------------------- Redis

#[test]
fn redis_commands_reach_sockets_polls_and_presence() {
    let redis = Redis::start();
    // Incus's own pushormessage rule, presence only (the default, spelt
    // out): being connected does not count.
    let yaml = config("", "")
        + "incus:\n  connection_timeout: 1\n  pushormessage_connected: false\n"
        + &format!(
            "redis:\n  url: redis://127.0.0.1:{}\n  instance: incus-test\n  reconnect_max_ms: 200\n",
            redis.port
        );
    let server = Server::start_with(&yaml, &[]);
    let port = server.port;
    let deadline = Instant::now() + Duration::from_secs(30);
    while redis.subscribers("Incus") < 1 {
        assert!(Instant::now() < deadline, "bridge did not subscribe");
        thread::sleep(Duration::from_millis(20));
    }
    let mut alices: Vec<Ws> = (0..4).map(|_| socket(port, "alice")).collect();
    let mut bob = socket(port, "bob");
    // Pin the sockets' registration: a self-message comes back once each is in.
    for ws in alices.iter_mut() {
        send(ws, message("in", Some("alice"), None));
    }
    for ws in alices.iter_mut() {
        assert_eq!(until(ws, "in").len(), 0);
        // Three more "in" from the other sockets may follow; skip them.
    }
    send(&mut bob, message("bob-in", Some("bob"), None));
    assert_eq!(recv(&mut bob)["event"], "bob-in");
    let publish = |v: &Value| redis.publish("Incus", &v.to_string());
    publish(&message("from-redis", Some("alice"), None));
    publish(&json!({"command": {"command": "push", "push_type": "ios"}, "message": {}}));
    publish(&json!({"command": {"command": "message", "x": 1}}));
    redis.rpush("Incus_Queue", &message("from-list", Some("alice"), None).to_string());
    publish(&message("done", None, None));
    for ws in alices.iter_mut() {
        let got: Vec<String> = until(ws, "done").into_iter().filter(|e| e != "in").collect();
        // The list is consumed by another connection: its message may come
        // before or after the channel's "done", so it is read below.
        assert!(got == ["from-redis"] || got == ["from-redis", "from-list"], "{got:?}");
        if got.len() == 1 {
            assert_eq!(recv(ws)["event"], "from-list");
        }
    }
    assert_eq!(until(&mut bob, "done"), Vec::<String>::new());

    // pushormessage: present (setpresence, written to Redis from the
    // bridge) → the websocket part is delivered.
    let pom = |user: &str, event: &str| {
        json!({"command": {"command": "pushormessage", "user": user},
            "message": {"websocket": {"event": event, "data": {"w": 2}}, "push": {}}})
    };
    send(&mut bob, json!({"command": {"command": "setpresence"}, "message": {"presence": true}}));
    // Written to Redis once a self-message sent after it is back (one
    // uplink ring, one connection, in order).
    send(&mut bob, message("presence-set", Some("bob"), None));
    assert_eq!(until(&mut bob, "presence-set"), Vec::<String>::new());
    publish(&pom("bob", "ws3"));
    assert_eq!(recv(&mut bob)["event"], "ws3");

    // Presence is read from Redis, so another node's setpresence counts:
    // carol is connected here but marked present only by "another node".
    // dave is connected but not present: his pushormessage takes the push
    // path (no platform enabled: refused and counted, nothing delivered).
    // Presence reads are answered in order, so carol's delivery proves
    // dave's was decided first.
    let mut carol = socket(port, "carol");
    let mut dave = socket(port, "dave");
    for (ws, user) in [(&mut carol, "carol"), (&mut dave, "dave")] {
        send(ws, message("in", Some(user), None));
        assert_eq!(recv(ws)["event"], "in");
    }
    let now = now_unix().to_string();
    let _: i64 = redis.cmd(&["ZADD", "ClientPresence:carol", &now, "other-node:7"]);
    publish(&pom("dave", "not-for-dave"));
    publish(&pom("carol", "from-presence"));
    assert_eq!(recv(&mut carol)["event"], "from-presence");
    publish(&message("dave-done", Some("dave"), None));
    assert_eq!(until(&mut dave, "dave-done"), Vec::<String>::new());

    // Long-poll receives from Redis (the original's end-to-end test).
    assert_eq!(poll(port, "user=bar").status, 204);
    publish(&message("foobar", Some("bar"), None));
    // Mailbox: the message waits even if it arrived before this poll.
    assert_eq!(poll_message(port, "user=bar"), "foobar");

    // Incus's bookkeeping keys, written by the bridge thread.
    let wait = |what: &str, f: &dyn Fn() -> bool| {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !f() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            thread::sleep(Duration::from_millis(20));
        }
    };
    let int = |args: &[&str]| -> i64 { redis.cmd(args) };
    wait("SocketClients", &|| int(&["SISMEMBER", "SocketClients", "bob"]) == 1);
    // A long-polling user counts while their mailbox lives.
    wait("a long-poll user", &|| int(&["SISMEMBER", "SocketClients", "bar"]) == 1);
    let ttl = int(&["TTL", "ClientPresence:bob"]);
    assert!((1..=60).contains(&ttl), "presence expires within its window, not in 56 years: {ttl}");
    assert_eq!(int(&["ZCARD", "ClientPresence:bob"]), 1);
    let mut bob2 = socket(port, "bob");
    set_page(&mut bob2, "bob", "/x");
    wait("PageClients", &|| int(&["HINCRBY", "PageClients", "/x", "0"]) == 1);
    drop(bob2);
    wait("the page count to go", &|| int(&["HEXISTS", "PageClients", "/x"]) == 0);
    assert_eq!(int(&["SISMEMBER", "SocketClients", "bob"]), 1, "bob has another socket");
    drop(bob);
    wait("bob to leave", &|| int(&["SISMEMBER", "SocketClients", "bob"]) == 0);
    assert_eq!(int(&["ZCARD", "ClientPresence:bob"]), 0);

    // The long-poll kill switch.
    let _: () = redis.cmd(&["SET", "longpoll_killswitch", "1"]);
    wait("the kill switch", &|| {
        let r = poll(port, "user=k");
        r.status == 503 && header(&r, "connection") == Some("close")
    });
    int(&["DEL", "longpoll_killswitch"]);
    wait("long-polling to come back", &|| poll(port, "user=k").status == 204);
    drop(server);
}

#[test]
fn incus_sockets_count_against_max_connections() {
    let yaml = config("  max_connections: 2\n", "") + "incus:\n  connection_timeout: 1\n";
    let server = Server::start_with(&yaml, &[]);
    let port = server.port;
    let mut held: Vec<Ws> = (0..2).map(|i| socket(server.port, &format!("u{i}"))).collect();
    for (i, ws) in held.iter_mut().enumerate() {
        send(ws, message("in", Some(&format!("u{i}")), None));
        assert_eq!(recv(ws)["event"], "in");
    }
    let r = request(
        port,
        "GET /socket HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    );
    assert_eq!(r.status, 503, "{}", r.headers);
    // A Pusher connection is refused too: the limit is node-wide.
    let mut pusher = ws_connect(port, &format!("/app/{KEY}?protocol=7"));
    let Got::Event(refusal) = next(&mut pusher) else { panic!("expected pusher:error") };
    assert_eq!(refusal["data"]["code"], 4100);
    assert_eq!(next(&mut pusher), Got::Close(Some(4100)));
    drop(held);
}

#[test]
fn connect_disconnect_storm_while_broadcasting() {
    let server = start("  client_commands_burst: 1000\n");
    let port = server.port;
    let churn: Vec<_> = (0..4)
        .map(|t| {
            thread::spawn(move || {
                for i in 0..50 {
                    let user = format!("churn{t}-{i}");
                    let mut ws = socket(port, &user);
                    send(&mut ws, json!({"command": {"command": "setpage", "page": "/storm"}}));
                    send(&mut ws, json!({"command": {"command": "setpresence"}, "message": {"presence": true}}));
                    if i % 2 == 0 {
                        let _ = ws.close(None);
                    }
                    // Odd ones just vanish without a close frame.
                }
            })
        })
        .collect();
    let mut sender = socket(port, "sender");
    for i in 0..300 {
        let (user, page) = match i % 3 {
            0 => (None, None),
            1 => (None, Some("/storm")),
            _ => (Some("sender"), None),
        };
        send(&mut sender, message(&format!("b{i}"), user, page));
    }
    for t in churn {
        t.join().unwrap();
    }
    // The sender got every broadcast and every message to itself, in order.
    let mine: Vec<String> = (0..300).filter(|i| i % 3 != 1).map(|i| format!("b{i}")).collect();
    let mut got = Vec::new();
    while got.len() < mine.len() {
        got.push(recv(&mut sender)["event"].as_str().unwrap().to_owned());
    }
    assert_eq!(got, mine);
    let mut fresh = socket(port, "fresh");
    send(&mut fresh, message("still-up", Some("fresh"), None));
    assert_eq!(recv(&mut fresh)["event"], "still-up");
}
