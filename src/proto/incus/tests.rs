//! The Incus state machines driven by hand: several shards, a fake clock,
//! rings replaced by a loop that moves each shard's queued messages.

use std::time::{Duration, Instant};

use bytes::Bytes;

use super::{
    command::ClientMessage,
    state::{Counts, Settings},
    *,
};
use crate::core::CloseCode;

fn settings() -> Settings {
    Settings {
        client_broadcasts: true,
        lp_timeout: Duration::from_secs(10),
        mailbox_messages: 3,
        mailbox_ttl: Duration::from_secs(30),
        max_outbox_bytes: 64 * 1024,
        ping_interval: Duration::from_secs(20),
        auth_timeout: Duration::from_secs(60),
        redis: false,
        commands_per_sec: 10,
        commands_burst: 20,
        max_sessions: 1000,
        online_every: None,
    }
}

struct Node {
    shards: Vec<IncusShard>,
    now: Instant,
    unix: u64,
}

impl Node {
    fn new(n: usize) -> Node {
        Node::with(n, settings())
    }

    // The one clock read: the starting point of the fake clock.
    #[allow(clippy::disallowed_methods)]
    fn with(n: usize, settings: Settings) -> Node {
        let shards = (0..n).map(|id| IncusShard::new(id, n, settings.clone())).collect();
        Node { shards, now: Instant::now(), unix: 1_700_000_000 }
    }

    /// Moves queued messages between shards until none is left, as the
    /// rings would (FIFO per pair).
    fn pump(&mut self) {
        loop {
            let mut moved = Vec::new();
            for shard in &mut self.shards {
                shard.drain_mesh_out(|to, msg| moved.push((to, msg)));
            }
            if moved.is_empty() {
                return;
            }
            for (to, msg) in moved {
                self.shards[to].handle_mesh(msg, self.now);
            }
        }
    }

    fn advance(&mut self, secs: u64) {
        self.now += Duration::from_secs(secs);
        self.unix += secs;
        for shard in &mut self.shards {
            shard.tick(self.now);
        }
        self.pump();
    }

    /// An authenticated socket on `shard`.
    fn socket(&mut self, shard: usize, user: &str) -> SockKey {
        let now = self.now;
        let key = self.shards[shard].open(0, now);
        let auth = format!(r#"{{"command":{{"command":"authenticate","user":"{user}"}}}}"#);
        self.frame(shard, key, &auth);
        assert!(!self.shards[shard].closing(key), "authenticated");
        key
    }

    fn frame(&mut self, shard: usize, key: SockKey, text: &str) {
        let (now, unix) = (self.now, self.unix);
        self.shards[shard].handle_frame(key, text.as_bytes(), now, unix);
        self.pump();
    }

    /// Takes the socket's queued frames as text (`close:<code>` for a close).
    fn take(&mut self, shard: usize, key: SockKey) -> Vec<String> {
        let Some(outbox) = self.shards[shard].outbox(key) else { return vec![] };
        let frames: Vec<Bytes> = outbox.frames().cloned().collect();
        let total = frames.iter().map(Bytes::len).sum();
        outbox.consume(total);
        frames.iter().filter_map(|f| decode(f)).collect()
    }

    fn route(&mut self, shard: usize, target: Target, event: &str) {
        let json = format!(r#"{{"event":"{event}","data":{{}},"time":{}}}"#, self.unix);
        let now = self.now;
        self.shards[shard].route(target, message::frame_json(json.as_bytes()), now);
        self.pump();
    }

    fn poll(&mut self, shard: usize, user: &str, page: Option<&str>, cmd: Option<&str>) -> u64 {
        let (now, unix) = (self.now, self.unix);
        let id = self.shards[shard].start_poll(user, page, cmd.map(str::as_bytes), now, unix);
        self.pump();
        id
    }

    fn result(&mut self, shard: usize, id: u64) -> Option<PollResult> {
        self.shards[shard].take_poll(id)
    }
}

/// Payload of a server frame: text as is, close as `close:<code>`, pings skipped.
fn decode(frame: &[u8]) -> Option<String> {
    let len = usize::from(frame[1] & 0x7f);
    let start = match len {
        126 => 4,
        127 => 10,
        _ => 2,
    };
    let payload = &frame[start..];
    match frame[0] & 0x0f {
        0x1 => Some(String::from_utf8_lossy(payload).into_owned()),
        0x8 => Some(format!("close:{}", u16::from_be_bytes([payload[0], payload[1]]))),
        _ => None,
    }
}

fn event(text: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(text.trim_end()).expect("json");
    v["event"].as_str().expect("event").to_owned()
}

fn events(texts: &[String]) -> Vec<String> {
    texts.iter().map(|t| event(t)).collect()
}

fn body(result: Option<PollResult>) -> String {
    match result {
        Some(PollResult::Message(b)) => event(std::str::from_utf8(&b).expect("utf8")),
        other => panic!("expected a message, got {other:?}"),
    }
}

fn msg(event: &str, user: Option<&str>, page: Option<&str>) -> String {
    let mut command = serde_json::json!({"command": "message"});
    if let Some(u) = user {
        command["user"] = u.into();
    }
    if let Some(p) = page {
        command["page"] = p.into();
    }
    serde_json::json!({"command": command, "message": {"event": event, "data": {"x": 1}}})
        .to_string()
}

#[test]
fn target_rule_of_spec_6_2() {
    assert_eq!(Target::of(None, None), Target::All);
    assert_eq!(Target::of(None, Some("/p")), Target::Page("/p".into()));
    assert_eq!(Target::of(Some("u"), Some("")), Target::User { user: "u".into(), page: None });
    let t = Target::of(Some(""), Some("/p1"));
    assert!(!t.matches("alice", Some("/p1")), "an empty user matches nobody");
    assert!(Target::of(Some("alice"), Some("/p1")).matches("alice", Some("/p1")));
    assert!(!Target::of(Some("alice"), Some("/p2")).matches("alice", Some("/p1")));
    assert!(!Target::of(None, Some("/p2")).matches("alice", Some("/p1")));
    assert!(!Target::of(None, Some("/p")).matches("alice", None));
}

#[test]
fn format_is_incus_shape_with_server_time() {
    let mut raw = br#"{"event":"e1","data":{"x":1,"internal_url":"/g/a"},"time":5,"z":1}"#.to_vec();
    let value = simd_json::to_owned_value(&mut raw).expect("json");
    let d = format(Some(&value), 42).expect("formats");
    let text = std::str::from_utf8(&d.body).expect("utf8");
    let v: serde_json::Value = serde_json::from_str(text).expect("json");
    assert_eq!(v["event"], "e1");
    assert_eq!(v["time"], 42, "sender's time replaced");
    assert_eq!(v["internal_url"], "/g/a");
    assert_eq!(v["data"]["internal_url"], "/g/a");
    assert!(v.get("z").is_none());
    assert!(text.starts_with(r#"{"event":"e1","data":"#), "field order: {text}");
    assert!(text.contains(r#""time":42,"internal_url""#), "time before internal_url: {text}");
    assert_eq!(decode(&d.frame).expect("text"), format!("{text}\n"), "WS frame adds a newline");
    // Go's encoder: keys sorted, HTML-sensitive characters escaped.
    let mut raw = r#"{"event":"<e>","data":{"z":[{"b":1,"a":"x&y"}],"h":"<b>&\u2028","a":null}}"#
        .as_bytes()
        .to_vec();
    let value = simd_json::to_owned_value(&mut raw).expect("json");
    let d = format(Some(&value), 7).expect("formats");
    assert_eq!(
        std::str::from_utf8(&d.body).expect("utf8"),
        r#"{"event":"\u003ce\u003e","data":{"a":null,"h":"\u003cb\u003e\u0026\u2028","z":[{"a":"x\u0026y","b":1}]},"time":7}"#
    );
    for bad in [r#"{"event":7,"data":{}}"#, r#"{"event":"e","data":[1]}"#, r#"{"event":"e"}"#, "5"]
    {
        let mut raw = bad.as_bytes().to_vec();
        let value = simd_json::to_owned_value(&mut raw).expect("json");
        assert!(format(Some(&value), 1).is_err(), "{bad}");
    }
    assert!(format(None, 1).is_err());
}

#[test]
fn authentication_rules() {
    let mut node = Node::new(1);
    let bad = [
        "not json",
        r#"{"command":{"command":"message","user":"a"}}"#,
        r#"{"command":{"command":"authenticate"}}"#,
        r#"{"command":{"command":"authenticate","user":""}}"#,
        r#"{"command":{"command":"authenticate","user":5}}"#,
        "",
    ];
    for text in bad {
        let key = node.shards[0].open(0, node.now);
        node.frame(0, key, text);
        assert_eq!(node.take(0, key), ["close:1011"], "{text:?}");
    }
    // Any case, trailing bytes ignored.
    let key = node.shards[0].open(0, node.now);
    node.frame(0, key, r#"{"Command":{"command":"Authenticate","user":"tg"}} garbage"#);
    node.route(0, Target::of(Some("tg"), None), "hi");
    assert_eq!(events(&node.take(0, key)), ["hi"]);
    // A second authenticate changes nothing.
    node.frame(0, key, r#"{"command":{"command":"authenticate","user":"other"}}"#);
    node.route(0, Target::of(Some("other"), None), "no");
    node.route(0, Target::of(Some("tg"), None), "yes");
    assert_eq!(events(&node.take(0, key)), ["yes"]);
    // Undecodable input after authentication closes normally.
    node.frame(0, key, "not json");
    assert_eq!(node.take(0, key), ["close:1000"]);
}

#[test]
fn unauthenticated_sockets_time_out() {
    let mut node = Node::new(1);
    let key = node.shards[0].open(0, node.now);
    node.advance(59);
    assert!(node.take(0, key).is_empty());
    node.advance(1);
    assert_eq!(node.take(0, key), ["close:1011"]);
}

#[test]
fn every_routing_case_across_shards() {
    let mut node = Node::new(2);
    let alice = node.socket(0, "alice");
    let alice2 = node.socket(1, "alice");
    let bob = node.socket(1, "bob");
    node.frame(0, alice, r#"{"command":{"command":"setpage","page":"/p1"}}"#);
    node.frame(1, bob, r#"{"command":{"command":"setpage","page":"/p1"}}"#);
    // An empty or missing page is ignored: bob stays on /p1.
    node.frame(1, bob, r#"{"command":{"command":"setpage","page":""}}"#);
    node.frame(1, bob, r#"{"command":{"command":"setpage"}}"#);
    let cases: [(Option<&str>, Option<&str>, [bool; 3]); 8] = [
        (None, None, [true, true, true]),
        (None, Some("/p1"), [true, false, true]),
        (None, Some("/p2"), [false, false, false]),
        (Some("alice"), None, [true, true, false]),
        (Some("alice"), Some(""), [true, true, false]),
        (Some("alice"), Some("/p1"), [true, false, false]),
        (Some("alice"), Some("/p2"), [false, false, false]),
        (Some(""), Some("/p1"), [false, false, false]),
    ];
    for (i, (user, page, want)) in cases.into_iter().enumerate() {
        // From each shard in turn: the origin must not matter.
        node.route(i % 2, Target::of(user, page), &format!("m{i}"));
        let got = [node.take(0, alice), node.take(1, alice2), node.take(1, bob)];
        for (who, (frames, want)) in ["alice", "alice2", "bob"].iter().zip(got.iter().zip(want)) {
            let want: Vec<String> = if want { vec![format!("m{i}")] } else { vec![] };
            assert_eq!(events(frames), want, "case {i} ({user:?}, {page:?}) for {who}");
        }
    }
    // setpage moves the socket.
    node.frame(0, alice, r#"{"command":{"command":"setpage","page":"/p2"}}"#);
    node.route(0, Target::of(None, Some("/p1")), "old");
    node.route(0, Target::of(None, Some("/p2")), "new");
    assert_eq!(events(&node.take(0, alice)), ["new"]);
    // A closed socket is out of every index.
    node.shards[1].remove(bob);
    node.route(0, Target::All, "after");
    assert!(node.take(1, bob).is_empty());
    assert_eq!(node.shards[1].sockets(), 1);
}

#[test]
fn client_messages_follow_client_broadcasts() {
    let mut node = Node::new(2);
    let alice = node.socket(0, "alice");
    let bob = node.socket(1, "bob");
    node.frame(1, bob, &msg("from_bob", Some("alice"), None));
    assert_eq!(events(&node.take(0, alice)), ["from_bob"]);
    // Clients cannot push.
    node.frame(1, bob, r#"{"command":{"command":"push","push_type":"ios"}}"#);
    node.frame(1, bob, r#"{"command":{"command":"pushormessage","user":"alice"}}"#);
    assert!(node.take(0, alice).is_empty());

    let mut settings = settings();
    settings.client_broadcasts = false;
    let mut node = Node::with(2, settings);
    let alice = node.socket(0, "alice");
    let bob = node.socket(1, "bob");
    node.frame(1, bob, &msg("from_bob", Some("alice"), None));
    assert!(node.take(0, alice).is_empty());
    assert!(!node.shards[1].closing(bob));
}

#[test]
fn per_socket_order_is_publish_order() {
    let mut node = Node::new(3);
    let alice = node.socket(2, "alice");
    for i in 0..300 {
        let (now, shard) = (node.now, i % 3);
        let json = format!(r#"{{"event":"e{i}","data":{{}},"time":1}}"#);
        node.shards[shard].route(
            Target::of(Some("alice"), None),
            message::frame_json(json.as_bytes()),
            now,
        );
        // Messages from one origin stay in order even when pumped late.
        if i % 7 == 0 {
            node.pump();
        }
    }
    node.pump();
    let got = events(&node.take(2, alice));
    assert_eq!(got.len(), 300);
    // Order per origin shard is FIFO (what the rings guarantee).
    for origin in 0..3 {
        let seq: Vec<usize> = got
            .iter()
            .map(|e| e[1..].parse::<usize>().expect("n"))
            .filter(|n| n % 3 == origin)
            .collect();
        assert!(seq.windows(2).all(|w| w[0] < w[1]), "origin {origin}: {seq:?}");
    }
}

#[test]
fn slow_socket_is_closed_not_buffered() {
    let mut s = settings();
    s.max_outbox_bytes = 200;
    let mut node = Node::with(1, s);
    let alice = node.socket(0, "alice");
    let bob = node.socket(0, "bob");
    for i in 0..10 {
        node.route(0, Target::of(Some("alice"), None), &format!("e{i}"));
        node.take(0, bob);
    }
    assert!(node.shards[0].closing(alice));
    assert!(!node.shards[0].closing(bob));
    assert_eq!(node.shards[0].counts.slow_closed, 1);
}

#[test]
fn long_poll_waits_then_gets_one_message() {
    let mut node = Node::new(2);
    for shard in 0..2 {
        let user = format!("lp{shard}");
        let id = node.poll(shard, &user, None, None);
        assert_eq!(node.result(shard, id), None, "waits");
        node.route(1 - shard, Target::of(Some(&user), None), "first");
        assert_eq!(body(node.result(shard, id)), "first");
        assert_eq!(node.result(shard, id), None, "taken once");
    }
}

#[test]
fn long_poll_times_out_with_204() {
    let mut node = Node::new(2);
    let id = node.poll(1, "u", None, None);
    node.advance(9);
    assert_eq!(node.result(1, id), None);
    node.advance(1);
    assert_eq!(node.result(1, id), Some(PollResult::Timeout));
}

#[test]
fn mailbox_keeps_messages_between_polls_in_order() {
    let mut node = Node::new(2);
    let id = node.poll(0, "u", None, None);
    // Two at once while one poll waits: the poll gets the first, the
    // mailbox keeps the second (the original lost it).
    node.route(1, Target::of(Some("u"), None), "a");
    node.route(0, Target::All, "b");
    node.route(1, Target::of(Some("u"), None), "c");
    assert_eq!(body(node.result(0, id)), "a");
    let id = node.poll(1, "u", None, None);
    assert_eq!(body(node.result(1, id)), "b", "returns at once");
    let id = node.poll(0, "u", None, None);
    assert_eq!(body(node.result(0, id)), "c");
    let id = node.poll(0, "u", None, None);
    assert_eq!(node.result(0, id), None, "empty mailbox: waits");
}

#[test]
fn mailbox_is_bounded_and_expires() {
    let mut node = Node::new(2);
    let id = node.poll(0, "u", None, None);
    node.advance(10);
    assert_eq!(node.result(0, id), Some(PollResult::Timeout));
    for e in ["1", "2", "3", "4", "5"] {
        node.route(1, Target::of(Some("u"), None), e);
    }
    let counts: Counts = node.shards[owner_shard("u", 2)].counts.clone();
    assert_eq!(counts.mailbox_full, 2, "3 kept, the 2 oldest dropped and counted");
    let id = node.poll(1, "u", None, None);
    assert_eq!(body(node.result(1, id)), "3");
    // Messages older than the TTL are dropped, and counted.
    node.advance(20);
    let id = node.poll(1, "u", None, None);
    assert_eq!(body(node.result(1, id)), "4", "20 s old: still there");
    node.advance(10);
    node.route(0, Target::of(Some("u"), None), "late");
    let id = node.poll(1, "u", None, None);
    assert_eq!(body(node.result(1, id)), "late", "5 expired at 30 s");
    let owner = owner_shard("u", 2);
    assert_eq!(node.shards[owner].counts.mailbox_expired, 1);
    // The mailbox itself goes TTL after the last poll.
    node.advance(10);
    node.advance(30);
    assert_eq!(node.shards[owner].sessions(), 0);
    node.route(0, Target::of(Some("u"), None), "gone");
    let id = node.poll(0, "u", None, None);
    assert_eq!(node.result(0, id), None, "nothing was kept for a user who stopped polling");
}

#[test]
fn long_poll_page_and_broadcast_routing() {
    let mut node = Node::new(2);
    let id = node.poll(0, "u", Some("/pg"), None);
    node.route(1, Target::of(None, Some("/other")), "no");
    node.route(1, Target::of(Some("u"), Some("/other")), "no");
    node.route(1, Target::of(None, Some("/pg")), "yes");
    assert_eq!(body(node.result(0, id)), "yes");
    let id = node.poll(0, "u", Some("/pg"), None);
    assert_eq!(node.result(0, id), None, "the refused messages were not kept");
}

#[test]
fn long_poll_command_runs_after_the_poll_is_registered() {
    let mut node = Node::new(2);
    // A poll that messages its own user receives it (spec §5.4).
    let id = node.poll(1, "self", None, Some(&msg("me", Some("self"), None)));
    assert_eq!(body(node.result(1, id)), "me");
    // Lenient decoding: a numeric extra field still executes (behaviour 64).
    let target = node.poll(0, "lp6", None, None);
    let cmd = r#"{"command":{"command":"message","user":"lp6","x":1},"message":{"event":"via","data":{}}}"#;
    let sender = node.poll(1, "sender", None, Some(cmd));
    assert_eq!(body(node.result(0, target)), "via");
    assert_eq!(node.result(1, sender), None);
    // Garbage commands are ignored, the poll still waits.
    let id = node.poll(0, "g", None, Some("{nope"));
    assert_eq!(node.result(0, id), None);
}

#[test]
fn cancelled_poll_does_not_swallow_messages() {
    let mut node = Node::new(2);
    let id = node.poll(0, "u", None, None);
    node.shards[0].cancel_poll(id, node.now);
    node.pump();
    node.route(1, Target::of(Some("u"), None), "kept");
    let id = node.poll(1, "u", None, None);
    assert_eq!(body(node.result(1, id)), "kept");
}

#[test]
fn pings_and_shutdown() {
    let mut node = Node::new(1);
    let alice = node.socket(0, "alice");
    node.advance(1);
    let pinged = |node: &mut Node| {
        let outbox = node.shards[0].outbox(alice).expect("open");
        let n = outbox.frames().filter(|f| f[0] == 0x89).count();
        let total = outbox.frames().map(Bytes::len).sum();
        outbox.consume(total);
        n
    };
    assert_eq!(pinged(&mut node), 1, "first tick pings");
    node.advance(19);
    assert_eq!(pinged(&mut node), 0);
    node.advance(1);
    assert_eq!(pinged(&mut node), 1);
    let id = node.poll(0, "lp", None, None);
    node.shards[0].drain();
    assert_eq!(node.take(0, alice), ["close:1001"]);
    assert_eq!(node.result(0, id), Some(PollResult::Shutdown));
    let id = node.poll(0, "lp", None, None);
    assert_eq!(node.result(0, id), Some(PollResult::Shutdown), "no polls while draining");
    assert_eq!(CloseCode::GOING_AWAY.0, 1001);
}

#[test]
fn with_redis_the_bookkeeping_goes_to_the_bridge() {
    let mut s = settings();
    s.redis = true;
    let mut node = Node::with(1, s);
    let alice = node.socket(0, "alice");
    node.frame(0, alice, r#"{"command":{"command":"setpage","page":"/a"}}"#);
    node.frame(0, alice, r#"{"command":{"command":"setpage","page":"/b"}}"#);
    node.frame(0, alice, r#"{"command":{"command":"setpresence"},"message":{"presence":true}}"#);
    // A client message is published, not routed here: it comes back from
    // the channel to every node.
    let m = r#"{"command":{"user":"alice","command":"message"},"message":{"time":1,"event":"ev","data":{"b":2,"a":1}}}"#;
    node.frame(0, alice, m);
    assert!(node.take(0, alice).is_empty());
    node.shards[0].remove(alice);
    let mut got = Vec::new();
    node.shards[0].drain_redis_out(|u| got.push(u));
    let conn = crate::core::ConnRef { shard: 0, key: 0, generation: 1 };
    // Published as a client's message: Incus's envelope (keys sorted, the
    // sender's extra fields kept) marked with its origin.
    let RedisUpdate::ClientMessage(published) = &got[4] else { panic!("{got:?}") };
    assert_eq!(
        published.encode(),
        r#"{"command":{"command":"message","user":"alice"},"message":{"data":{"a":1,"b":2},"event":"ev","time":1},"origin":"client"}"#
    );
    assert_eq!(
        got,
        [
            RedisUpdate::SocketOpen { user: "alice".into() },
            RedisUpdate::Page { old: None, new: "/a".into() },
            RedisUpdate::Page { old: Some("/a".into()), new: "/b".into() },
            RedisUpdate::Presence { user: "alice".into(), conn: Some(conn), active: true },
            RedisUpdate::ClientMessage(ClientMessage {
                user: Some("alice".into()),
                page: None,
                message: simd_json::json!({"time": 1, "event": "ev", "data": {"b": 2, "a": 1}}),
            }),
            RedisUpdate::SocketClose {
                user: "alice".into(),
                conn: Some(conn),
                page: Some("/b".into())
            },
        ]
    );
    assert!(!node.shards[0].has_mesh_out());
    // A long-polling user is a socket client while their mailbox lives.
    node.poll(0, "lp", None, None);
    node.advance(10);
    node.advance(60);
    let mut got = Vec::new();
    node.shards[0].drain_redis_out(|u| got.push(u));
    assert_eq!(
        got,
        [
            RedisUpdate::SocketOpen { user: "lp".into() },
            RedisUpdate::SocketClose { user: "lp".into(), conn: None, page: None },
        ]
    );
    // The kill switch comes from the bridge.
    assert!(!node.shards[0].longpoll_off());
    node.shards[0].handle_mesh(IncusMsg::KillSwitch(true), node.now);
    assert!(node.shards[0].longpoll_off());
}

#[test]
fn poll_deadlines_fire_once_and_only_for_waiting_polls() {
    let mut node = Node::new(2);
    let first = node.poll(0, "u", None, None);
    let second = node.poll(1, "u", None, None);
    // Both wait: one message goes to both (every open poll, as every open
    // socket in the original).
    node.route(0, Target::of(Some("u"), None), "both");
    assert_eq!(body(node.result(0, first)), "both");
    assert_eq!(body(node.result(1, second)), "both");
    node.advance(5);
    let third = node.poll(0, "u", None, None);
    let cancelled = node.poll(1, "u", None, None);
    node.shards[1].cancel_poll(cancelled, node.now);
    node.pump();
    // The first two deadlines pass: nothing to answer any more.
    node.advance(5);
    assert_eq!(node.result(0, third), None, "third still has 5 s");
    node.advance(5);
    assert_eq!(node.result(0, third), Some(PollResult::Timeout));
    assert_eq!(node.result(1, cancelled), None);
    let lost: u64 = node.shards.iter().map(|s| s.counts.answers_lost).sum();
    assert_eq!(lost, 0);
    // The cancelled poll took nothing: the next message waits in the mailbox.
    node.route(1, Target::of(Some("u"), None), "kept");
    let next = node.poll(1, "u", None, None);
    assert_eq!(body(node.result(1, next)), "kept");
}

#[test]
fn an_answer_that_finds_its_poll_gone_goes_back_to_the_mailbox() {
    let mut node = Node::new(2);
    let user = (0..).map(|i| format!("u{i}")).find(|u| owner_shard(u, 2) == 0).expect("a user");
    let id = node.poll(1, &user, None, None);
    // The owner answers, but before the answer crosses the ring the
    // request goes away (the client aborted; incusjs does when its
    // WebSocket opens).
    let json = br#"{"event":"raced","data":{},"time":1}"#;
    node.shards[0].route(Target::of(Some(&user), None), message::frame_json(json), node.now);
    node.shards[1].cancel_poll(id, node.now);
    node.pump();
    assert_eq!(node.result(1, id), None);
    let next = node.poll(1, &user, None, None);
    assert_eq!(body(node.result(1, next)), "raced");
    let lost: u64 = node.shards.iter().map(|s| s.counts.answers_lost).sum();
    assert_eq!(lost, 0);
}

#[test]
fn socket_commands_are_rate_limited_per_socket() {
    let mut node = Node::new(2);
    let sender = node.socket(0, "sender");
    let other = node.socket(0, "other");
    let target = node.socket(1, "t");
    // The default burst (20) goes at once, the rest of the flood is dropped.
    for i in 0..50 {
        node.frame(0, sender, &msg(&format!("e{i}"), Some("t"), None));
    }
    assert_eq!(node.take(1, target).len(), 20);
    assert_eq!(node.shards[0].counts.rate_limited, 30);
    assert!(!node.shards[0].closing(sender), "dropped, not closed");
    // Another socket has its own budget.
    node.frame(0, other, &msg("o", Some("t"), None));
    assert_eq!(events(&node.take(1, target)), ["o"]);
    // Then 10 per second.
    node.advance(1);
    for i in 0..15 {
        node.frame(0, sender, &msg(&format!("l{i}"), Some("t"), None));
    }
    assert_eq!(node.take(1, target).len(), 10);
    assert_eq!(node.shards[0].counts.rate_limited, 35);
}

#[test]
fn long_poll_commands_are_rate_limited_per_user() {
    let mut node = Node::new(2);
    let target = node.socket(1, "t");
    for i in 0..25 {
        let id = node.poll(0, "lp", None, Some(&msg(&format!("e{i}"), Some("t"), None)));
        node.shards[0].cancel_poll(id, node.now);
        node.pump();
    }
    assert_eq!(node.take(1, target).len(), 20);
    assert_eq!(node.shards[0].counts.rate_limited, 5);
    // The budgets of users who went quiet are forgotten.
    node.advance(5);
    let id = node.poll(0, "lp", None, Some(&msg("again", Some("t"), None)));
    assert_eq!(events(&node.take(1, target)), ["again"]);
    node.shards[0].cancel_poll(id, node.now);
}

#[test]
fn client_commands_are_dropped_while_the_rings_are_backed_up() {
    let mut node = Node::new(2);
    let sender = node.socket(0, "sender");
    let target = node.socket(1, "t");
    node.shards[0].set_backlogged(true);
    node.frame(0, sender, &msg("shed", Some("t"), None));
    // setpresence never crosses shards (it goes to Redis, or nowhere).
    node.frame(0, sender, r#"{"command":{"command":"setpresence"},"message":{"presence":true}}"#);
    assert!(!node.shards[0].has_mesh_out(), "nothing added to the backlog");
    assert_eq!(node.shards[0].counts.backlog_shed, 1);
    node.shards[0].set_backlogged(false);
    node.frame(0, sender, &msg("kept", Some("t"), None));
    assert_eq!(events(&node.take(1, target)), ["kept"]);
}

#[test]
fn a_message_that_reached_a_cancelled_poll_goes_back_with_its_age() {
    let mut node = Node::new(2);
    let mut users = (0..).map(|i| format!("u{i}")).filter(|u| owner_shard(u, 2) == 0);
    let (kept, aged) = (users.next().expect("a user"), users.next().expect("a user"));
    // t0: both users' sessions exist; t10: a message for each is queued.
    for user in [&kept, &aged] {
        let id = node.poll(1, user, None, None);
        node.shards[1].cancel_poll(id, node.now);
    }
    node.advance(10);
    node.route(0, Target::of(Some(&kept), None), "kept");
    node.route(0, Target::of(Some(&aged), None), "aged");
    // A poll takes the message, but its request ends before it is written.
    let id = node.poll(1, &kept, None, None);
    node.shards[1].cancel_poll(id, node.now);
    node.pump();
    let id = node.poll(1, &kept, None, None);
    assert_eq!(body(node.result(1, id)), "kept", "given back, not dropped");
    // Given back again and again, it keeps its first time and expires 30 s
    // (the mailbox ttl) after t10, not after the last give-back.
    for _ in 0..3 {
        node.advance(9);
        let id = node.poll(1, &aged, None, None);
        node.shards[1].cancel_poll(id, node.now);
        node.pump();
    }
    node.advance(3);
    let id = node.poll(1, &aged, None, None);
    assert_eq!(node.result(1, id), None, "expired, not delivered");
    assert_eq!(node.shards[0].counts.mailbox_expired, 1);
    node.shards[1].cancel_poll(id, node.now);
}

#[test]
fn long_poll_sessions_are_capped_per_shard() {
    let mut s = settings();
    s.max_sessions = 2;
    let mut node = Node::with(2, s);
    let mut users = (0..).map(|i| format!("u{i}")).filter(|u| owner_shard(u, 2) == 0);
    let mut user = || users.next().expect("a user");
    let (a, b, c) = (user(), user(), user());
    let pa = node.poll(1, &a, None, None);
    let pb = node.poll(0, &b, None, None);
    // A third user on the same owner is refused with 503, from either shard.
    let pc = node.poll(1, &c, None, None);
    assert_eq!(node.result(1, pc), Some(PollResult::Full));
    let pc = node.poll(0, &c, None, None);
    assert_eq!(node.result(0, pc), Some(PollResult::Full));
    assert_eq!(node.shards[0].counts.sessions_full, 2);
    assert_eq!(node.shards[0].sessions(), 2);
    // Users with a session still poll.
    let again = node.poll(0, &a, None, None);
    node.route(1, Target::of(Some(&a), None), "to-a");
    assert_eq!(body(node.result(1, pa)), "to-a");
    assert_eq!(body(node.result(0, again)), "to-a");
    // Once a session expires there is room again.
    node.advance(10);
    assert_eq!(node.result(0, pb), Some(PollResult::Timeout));
    node.advance(31);
    assert_eq!(node.shards[0].sessions(), 0);
    let pc = node.poll(1, &c, None, None);
    assert_eq!(node.result(1, pc), None, "waiting");
    assert_eq!(node.shards[0].sessions(), 1);
}

#[test]
fn counters_count_reads_routes_and_socket_writes_where_they_happen() {
    let mut node = Node::new(2);
    let alice = node.socket(0, "alice");
    let _bob0 = node.socket(0, "bob");
    let _bob1 = node.socket(1, "bob");
    node.frame(
        0,
        alice,
        r#"{"command":{"command":"message","user":"bob"},"message":{"event":"e","data":{}}}"#,
    );
    node.route(1, Target::All, "everyone");
    let (c0, c1) = (&node.shards[0].counters().incus, &node.shards[1].counters().incus);
    // Authentication is not a command; the message is one read, on its shard.
    assert_eq!((c0.read.get(), c1.read.get()), (1, 0));
    assert_eq!((c0.message_user.get(), c1.message_all.get()), (1, 1));
    assert_eq!((c0.message_all.get(), c1.message_user.get()), (0, 0));
    // bob once on each shard; then everyone: alice and bob on 0, bob on 1.
    assert_eq!((c0.write.get(), c1.write.get()), (3, 2));
}

#[test]
fn shards_report_their_connected_users_for_the_online_marks() {
    let mut s = settings();
    s.redis = true;
    s.online_every = Some(Duration::from_secs(60));
    let mut node = Node::with(1, s);
    let alice = node.socket(0, "alice");
    let _alice2 = node.socket(0, "alice");
    let _bob = node.socket(0, "bob");
    node.poll(0, "lp", None, None);
    node.advance(1);
    let online = |node: &mut Node| {
        let mut users = Vec::new();
        node.shards[0].drain_redis_out(|u| {
            if let RedisUpdate::Online(list) = u {
                users.extend(list.into_iter().map(String::from));
            }
        });
        users.sort();
        users
    };
    // The first scan reports at once: each user once, polls included.
    assert_eq!(online(&mut node), ["alice", "bob", "lp"]);
    node.advance(30);
    assert!(online(&mut node).is_empty(), "not again before the interval");
    node.shards[0].remove(alice);
    node.advance(30);
    // alice still has a socket; lp's session ended with its mailbox (30 s).
    assert_eq!(online(&mut node), ["alice", "bob"]);
    // Off without the setting (no Redis, or pushormessage_connected: false).
    let mut node = Node::new(1);
    node.socket(0, "carol");
    node.advance(120);
    assert!(online(&mut node).is_empty());
}

#[test]
fn setpresence_goes_to_redis_only() {
    let on = r#"{"command":{"command":"setpresence"},"message":{"presence":true}}"#;
    let off = r#"{"command":{"command":"setpresence"},"message":{"presence":false}}"#;
    let odd = r#"{"command":{"command":"setpresence"},"message":{"presence":"yes"}}"#;
    let mut s = settings();
    s.redis = true;
    let mut node = Node::with(1, s);
    let a = node.socket(0, "a");
    let presence = |node: &mut Node| {
        let mut got = Vec::new();
        node.shards[0].drain_redis_out(|u| {
            if let RedisUpdate::Presence { conn, active, .. } = u {
                got.push((conn.is_some(), active));
            }
        });
        got
    };
    node.frame(0, a, on);
    node.frame(0, a, odd);
    node.frame(0, a, off);
    assert_eq!(presence(&mut node), [(true, true), (true, false)], "a non-boolean is ignored");
    // A long-poll's setpresence is the user's session's.
    node.poll(0, "lp", None, Some(on));
    assert_eq!(presence(&mut node), [(false, true)]);
    // Without Redis nothing reads presence, so nothing is kept.
    let mut node = Node::new(1);
    let a = node.socket(0, "a");
    node.frame(0, a, on);
    assert!(!node.shards[0].has_mesh_out());
    let mut any = false;
    node.shards[0].drain_redis_out(|_| any = true);
    assert!(!any);
}

/// Issue #15: a client frame that names `command` twice is refused before
/// anything reads it, from a socket (closed, as any malformed frame) and
/// from a long-poll's `command` (ignored), counted both times, and nothing
/// reaches Redis or another shard.
#[test]
fn client_commands_with_a_repeated_key_are_refused_and_counted() {
    let mut s = settings();
    s.redis = true;
    let mut node = Node::with(2, s);
    let exploit = r#"{"command":{"command":"message","command":"pushandroid","registration_ids":"tok"},"message":{"event":"e","data":{}}}"#;
    let mallory = node.socket(0, "mallory");
    node.shards[0].drain_redis_out(|_| {});
    node.frame(0, mallory, exploit);
    assert_eq!(node.take(0, mallory), ["close:1000"]);
    node.poll(1, "mallory-lp", None, Some(exploit));
    let mut published = Vec::new();
    for shard in &mut node.shards {
        shard.drain_redis_out(|u| published.push(u));
    }
    assert!(published.iter().all(|u| !matches!(u, RedisUpdate::ClientMessage(_))), "{published:?}");
    assert_eq!(node.shards[0].counts.refused, 1);
    assert_eq!(node.shards[1].counts.refused, 1);
    let refused: u64 = node.shards.iter().map(|s| s.counters().incus.client_refused.get()).sum();
    assert_eq!(refused, 2);
    // The same command sent once is a client's message, published as one.
    let honest = r#"{"command":{"command":"message","registration_ids":"tok"},"message":{"event":"e","data":{}}}"#;
    let alice = node.socket(0, "alice");
    node.frame(0, alice, honest);
    let mut published = Vec::new();
    node.shards[0].drain_redis_out(|u| published.push(u));
    let Some(RedisUpdate::ClientMessage(m)) = published.last() else { panic!("{published:?}") };
    assert!(m.encode().ends_with(r#","origin":"client"}"#));
    assert_eq!(node.shards[0].counts.refused, 1);
}
