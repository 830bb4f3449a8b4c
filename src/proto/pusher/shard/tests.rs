//! Several shards driven by hand, with a fake clock and the rings replaced
//! by a loop that moves messages until the node is quiet.

// The fake clock needs one real instant to count from.
#![allow(clippy::disallowed_methods)]

use std::time::{Duration, Instant};

use hmac::{KeyInit, Mac};
use serde_json::{Value, json};

use super::*;
use crate::{
    core::{AppConfig, SocketId},
    proto::msg::ChannelCounts,
};

const KEY: &str = "key";
const SECRET: &str = "secret";

struct Node {
    shards: Vec<Shard>,
    t0: Instant,
}

fn settings() -> Settings {
    Settings {
        activity_timeout: Duration::from_secs(120),
        pong_timeout: Duration::from_secs(30),
        max_outbox_bytes: 64 * 1024,
        cluster: false,
    }
}

fn node_with(n: usize, app: AppConfig) -> Node {
    let mut other = AppConfig::new("2", "other-key", "other-secret");
    other.client_events = false;
    let apps = Arc::new(Apps::new(vec![Arc::new(app), Arc::new(other)]));
    Node {
        shards: (0..n).map(|i| Shard::new(i, n, Arc::clone(&apps), settings())).collect(),
        t0: Instant::now(),
    }
}

fn node(n: usize) -> Node {
    let mut app = AppConfig::new("1", KEY, SECRET);
    app.client_events = true;
    node_with(n, app)
}

/// A connection in the simulated node.
#[derive(Clone, Copy, Debug)]
struct C {
    shard: usize,
    key: ConnKey,
}

fn sign(msg: &str) -> String {
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(SECRET.as_bytes()).expect("key");
    mac.update(msg.as_bytes());
    format!("{KEY}:{}", hex::encode(mac.finalize().into_bytes()))
}

impl Node {
    fn at(&self, secs: u64) -> Instant {
        self.t0 + Duration::from_secs(secs)
    }

    fn tick(&mut self, secs: u64) {
        let now = self.at(secs);
        for shard in &mut self.shards {
            shard.handle_tick(now);
        }
    }

    fn open(&mut self, shard: usize) -> C {
        let key = self.shards[shard].open(0, 0, self.t0, None);
        let c = C { shard, key };
        let hello = self.take(c);
        assert_eq!(hello[0]["event"], "pusher:connection_established");
        c
    }

    fn socket_id(&self, c: C) -> String {
        self.shards[c.shard].conn(c.key).expect("open").session.socket_id.to_string()
    }

    /// Moves mesh messages between shards until none are left.
    fn pump(&mut self) {
        for _ in 0..100 {
            let mut moved = Vec::new();
            for (id, shard) in self.shards.iter_mut().enumerate() {
                // As the event loop would find its rings: settled unless a
                // shard drained before it this round left it a message.
                let settled = !moved.iter().any(|(to, _)| *to == id);
                shard.drain_mesh_out(settled, |to, msg| moved.push((to, msg)));
            }
            if moved.is_empty() {
                return;
            }
            for (to, msg) in moved {
                self.shards[to].handle_mesh(msg);
            }
        }
        panic!("mesh did not settle");
    }

    fn send_at(&mut self, c: C, msg: Value, now: Instant) {
        self.shards[c.shard].handle_text(c.key, msg.to_string().as_bytes(), now);
        self.pump();
    }

    fn send(&mut self, c: C, msg: Value) {
        let now = self.t0;
        self.send_at(c, msg, now);
    }

    /// Everything queued for `c`, decoded, emptying its outbox.
    fn take(&mut self, c: C) -> Vec<Value> {
        let Some(outbox) = self.shards[c.shard].outbox(c.key) else { return Vec::new() };
        let frames: Vec<Bytes> = outbox.frames().cloned().collect();
        let total: usize = frames.iter().map(Bytes::len).sum();
        outbox.consume(total);
        frames.iter().map(|f| decode(f)).collect()
    }

    fn subscribe(&mut self, c: C, channel: &str) -> Vec<Value> {
        let auth = if channel.starts_with("private-") {
            sign(&format!("{}:{channel}", self.socket_id(c)))
        } else {
            String::new()
        };
        self.send(c, json!({"event":"pusher:subscribe","data":{"channel":channel,"auth":auth}}));
        self.take(c)
    }

    fn join(&mut self, c: C, channel: &str, user_id: &str) -> Vec<Value> {
        let data = json!({"user_id": user_id, "user_info": {"name": user_id}}).to_string();
        let auth = sign(&format!("{}:{channel}:{data}", self.socket_id(c)));
        self.send(
            c,
            json!({"event":"pusher:subscribe","data":{"channel":channel,"auth":auth,"channel_data":data}}),
        );
        self.take(c)
    }
}

/// Decodes one server frame (unmasked) to its JSON, or a close frame to
/// `{"close": code}`.
fn decode(frame: &[u8]) -> Value {
    let (len, at) = match frame[1] {
        126 => (u16::from_be_bytes([frame[2], frame[3]]) as usize, 4),
        127 => panic!("test frames are small"),
        n => (n as usize, 2),
    };
    let payload = &frame[at..at + len];
    if frame[0] == 0x88 {
        return json!({"close": u16::from_be_bytes([payload[0], payload[1]])});
    }
    serde_json::from_slice(payload).expect("server frames are JSON")
}

fn data_of(v: &Value) -> Value {
    match &v["data"] {
        Value::String(s) => serde_json::from_str(s).expect("data string holds JSON"),
        other => other.clone(),
    }
}

fn events(frames: &[Value]) -> Vec<&str> {
    frames.iter().map(|f| f["event"].as_str().unwrap_or("close")).collect()
}

#[test]
fn publish_reaches_subscribers_on_every_shard_once_and_honours_exclusion() {
    let mut node = node(3);
    let subs: Vec<C> = (0..3).map(|s| node.open(s)).collect();
    let outsider = node.open(1);
    for &c in &subs {
        let reply = node.subscribe(c, "news");
        assert_eq!(events(&reply), ["pusher_internal:subscription_succeeded"]);
        assert_eq!(reply[0]["channel"], "news");
    }
    node.shards[1].publish(0, "news", "update", "{\"n\":1}", None, node.t0);
    node.pump();
    for &c in &subs {
        let got = node.take(c);
        assert_eq!(got, vec![json!({"event":"update","channel":"news","data":"{\"n\":1}"})]);
    }
    assert!(node.take(outsider).is_empty());
    let excluded: SocketId = node.socket_id(subs[2]).parse().expect("socket id");
    node.shards[0].publish(0, "news", "update", "x", Some(excluded), node.t0);
    node.pump();
    assert_eq!(node.take(subs[0]).len(), 1);
    assert_eq!(node.take(subs[1]).len(), 1);
    assert!(node.take(subs[2]).is_empty(), "socket_id exclusion");
    node.shards[0].publish(1, "news", "update", "x", None, node.t0);
    node.pump();
    assert!(node.take(subs[0]).is_empty(), "apps do not share channels");
}

/// The `Deliver`s shard `from` hands over for one publish, by target.
fn deliveries_from(node: &mut Node, from: usize, channel: &str, settled: bool) -> Vec<usize> {
    node.shards[from].publish(0, channel, "update", "{}", None, node.t0);
    let mut to_shards = Vec::new();
    node.shards[from].drain_mesh_out(settled, |to, msg| {
        if let ShardMsg::Deliver { .. } = msg {
            to_shards.push(to);
        }
    });
    to_shards
}

#[test]
fn a_publish_crosses_only_to_shards_holding_the_channel_once_settled() {
    let mut node = node(3);
    let (a, b) = (node.open(0), node.open(1));
    node.subscribe(a, "private-a");
    // Nobody elsewhere: the publish stays on its shard, unless the caller
    // could not settle its rings, when it goes everywhere as before.
    assert_eq!(deliveries_from(&mut node, 0, "private-a", true), Vec::<usize>::new());
    assert_eq!(deliveries_from(&mut node, 0, "private-a", false), [1, 2]);
    // A channel nobody holds goes nowhere from any shard.
    assert_eq!(deliveries_from(&mut node, 2, "private-a-nobody", true), Vec::<usize>::new());
    // Shard 1 gains a subscriber: once its word is in, publishes reach it,
    // and the event itself arrives.
    node.subscribe(b, "private-a");
    assert_eq!(deliveries_from(&mut node, 2, "private-a", true), [0, 1]);
    node.take(a);
    node.shards[2].publish(0, "private-a", "update", "{}", None, node.t0);
    node.pump();
    assert_eq!(events(&node.take(a)), ["update"]);
    assert_eq!(events(&node.take(b)), ["update"]);
    // Leaving, by unsubscribe or by disconnect, is announced too.
    node.send(b, json!({"event":"pusher:unsubscribe","data":{"channel":"private-a"}}));
    assert_eq!(deliveries_from(&mut node, 0, "private-a", true), Vec::<usize>::new());
    node.subscribe(b, "private-a");
    node.shards[1].remove(b.key);
    node.pump();
    assert_eq!(deliveries_from(&mut node, 0, "private-a", true), Vec::<usize>::new());
    assert_eq!(deliveries_from(&mut node, 1, "private-a", true), [0]);
}

#[test]
fn a_subscription_is_announced_ahead_of_its_presence_join_and_cache_fetch() {
    for (prefix, asks) in [("presence-", "PresenceJoin"), ("cache-", "CacheFetch")] {
        let mut node = node(2);
        let channel = owned_by(0, 2, prefix);
        let c = node.open(1);
        let now = node.t0;
        let data = json!({"user_id": "u1"}).to_string();
        let auth = sign(&format!("{}:{channel}:{data}", node.socket_id(c)));
        let msg = json!({"event":"pusher:subscribe","data":{"channel":channel,"auth":auth,"channel_data":data}});
        node.shards[1].handle_text(c.key, msg.to_string().as_bytes(), now);
        let mut order = Vec::new();
        node.shards[1].drain_mesh_out(true, |to, msg| {
            assert_eq!(to, 0);
            order.push(format!("{msg:?}").split([' ', '{']).next().unwrap_or_default().to_owned());
        });
        // On one ring, in this order: the owner knows the shard holds the
        // channel before anything it sends the joiner after the join.
        assert_eq!(order, ["Interest", asks], "{prefix}");
    }
}

#[test]
fn duplicate_subscribe_is_confirmed_again_but_counted_once() {
    let mut node = node(2);
    let c = node.open(0);
    node.subscribe(c, "news");
    let again = node.subscribe(c, "news");
    assert_eq!(events(&again), ["pusher_internal:subscription_succeeded"]);
    node.shards[1].publish(0, "news", "e", "d", None, node.t0);
    node.pump();
    assert_eq!(node.take(c).len(), 1, "delivered once");
    assert_eq!(node.shards[0].index.count(0, "news"), 1);
}

#[test]
fn private_channels_need_a_valid_signature_and_failures_keep_the_connection() {
    let mut node = node(1);
    let c = node.open(0);
    node.send(
        c,
        json!({"event":"pusher:subscribe","data":{"channel":"private-a","auth":"key:00"}}),
    );
    let reply = node.take(c);
    assert_eq!(events(&reply), ["pusher:error"]);
    assert_eq!(reply[0]["data"]["code"], Value::Null);
    assert!(node.shards[0].conn(c.key).expect("still open").outbox.closing().is_none());
    let ok = node.subscribe(c, "private-a");
    assert_eq!(events(&ok), ["pusher_internal:subscription_succeeded"]);
}

#[test]
fn presence_has_one_member_per_user_across_shards() {
    let mut node = node(2);
    let a1 = node.open(0);
    let a2 = node.open(1);
    let b = node.open(1);
    let ch = "presence-room";
    let first = node.join(a1, ch, "alice");
    let data = data_of(&first[0]);
    assert_eq!(first[0]["event"], "pusher_internal:subscription_succeeded");
    assert_eq!(data["presence"]["count"], 1);
    assert_eq!(data["presence"]["hash"]["alice"]["name"], "alice");
    let second_tab = node.join(a2, ch, "alice");
    assert_eq!(data_of(&second_tab[0])["presence"]["count"], 1, "same user, one member");
    assert!(node.take(a1).is_empty(), "no member_added for a second tab");
    let bob = node.join(b, ch, "bob");
    let data = data_of(&bob[0]);
    assert_eq!(data["presence"]["count"], 2);
    assert_eq!(data["presence"]["ids"], json!(["alice", "bob"]));
    assert!(events(&bob).iter().all(|e| *e != "pusher_internal:member_added"), "not to the joiner");
    for alice in [a1, a2] {
        let got = node.take(alice);
        assert_eq!(events(&got), ["pusher_internal:member_added"]);
        assert_eq!(data_of(&got[0])["user_id"], "bob");
    }
    // Closing one of alice's tabs removes no member; closing the other does.
    node.shards[0].remove(a1.key);
    node.pump();
    assert!(node.take(b).is_empty());
    node.send(a2, json!({"event":"pusher:unsubscribe","data":{"channel":ch}}));
    let gone = node.take(b);
    assert_eq!(events(&gone), ["pusher_internal:member_removed"]);
    assert_eq!(data_of(&gone[0])["user_id"], "alice");
}

#[test]
fn presence_member_limit_refuses_new_users_only() {
    let mut app = AppConfig::new("1", KEY, SECRET);
    app.max_presence_members = 1;
    let mut node = node_with(2, app);
    let (a, a2, b) = (node.open(0), node.open(1), node.open(1));
    node.join(a, "presence-x", "alice");
    let again = node.join(a2, "presence-x", "alice");
    assert_eq!(events(&again), ["pusher_internal:subscription_succeeded"]);
    let refused = node.join(b, "presence-x", "bob");
    assert_eq!(events(&refused), ["pusher:error"]);
    assert_eq!(refused[0]["data"]["code"], 4100);
    node.shards[0].publish(0, "presence-x", "e", "d", None, node.t0);
    node.pump();
    assert!(node.take(b).is_empty(), "the refused connection is not subscribed");
    assert_eq!(events(&node.take(a)), ["e"]);
    node.shards[1].remove(b.key);
    node.pump();
    assert!(node.take(a).is_empty(), "a refused join leaves no member_removed");
}

#[test]
fn client_events_reach_others_only_with_user_id_on_presence() {
    let mut node = node(2);
    let (a, b) = (node.open(0), node.open(1));
    node.join(a, "presence-chat", "alice");
    node.join(b, "presence-chat", "bob");
    node.take(a);
    node.send(a, json!({"event":"client-typing","channel":"presence-chat","data":{"k":1}}));
    assert!(node.take(a).is_empty(), "never echoed");
    let got = node.take(b);
    assert_eq!(
        got,
        vec![
            json!({"event":"client-typing","channel":"presence-chat","data":{"k":1},"user_id":"alice"})
        ]
    );
}

#[test]
fn client_events_are_refused_when_not_allowed() {
    let mut node = node(1);
    let (a, b) = (node.open(0), node.open(0));
    node.subscribe(a, "private-x");
    node.subscribe(b, "private-x");
    node.subscribe(a, "public");
    let cases = [
        json!({"event":"client-x","channel":"public","data":{}}),
        json!({"event":"client-x","channel":"private-other","data":{}}),
        json!({"event":"client-x","data":{}}),
    ];
    for case in cases {
        node.send(a, case.clone());
        let reply = node.take(a);
        assert_eq!(events(&reply), ["pusher:error"], "{case}");
        assert_eq!(reply[0]["data"]["code"], 4301, "{case}");
    }
    let big = "x".repeat(10 * 1024 + 1);
    node.send(a, json!({"event":"client-x","channel":"private-x","data":big}));
    assert_eq!(node.take(a)[0]["data"]["code"], 4301, "size limit");
    assert!(node.take(b).is_empty());
    // Apps with client events off refuse them.
    let other = node.shards[0].open(0, 1, node.t0, None);
    let o = C { shard: 0, key: other };
    node.take(o);
    node.send(o, json!({"event":"client-x","channel":"private-x","data":{}}));
    assert_eq!(node.take(o)[0]["data"]["code"], 4301);
}

#[test]
fn client_event_rate_limit_is_ten_per_second_and_refills() {
    let mut node = node(1);
    let (a, b) = (node.open(0), node.open(0));
    node.subscribe(a, "private-x");
    node.subscribe(b, "private-x");
    let t = node.at(10);
    for _ in 0..15 {
        node.send_at(a, json!({"event":"client-x","channel":"private-x","data":{}}), t);
    }
    assert_eq!(node.take(b).len(), 10);
    let errors = node.take(a);
    assert_eq!(errors.len(), 5);
    assert!(errors.iter().all(|e| e["data"]["code"] == 4301));
    assert!(node.shards[0].conn(a.key).expect("kept").outbox.closing().is_none());
    node.send_at(
        a,
        json!({"event":"client-x","channel":"private-x","data":{}}),
        t + Duration::from_millis(150),
    );
    assert_eq!(node.take(b).len(), 1, "a token refills every 100 ms");
}

#[test]
fn silence_is_pinged_then_closed_with_4201_and_any_frame_counts_as_life() {
    let mut node = node(1);
    let c = node.open(0);
    node.tick(119);
    assert!(node.take(c).is_empty());
    node.tick(120);
    assert_eq!(events(&node.take(c)), ["pusher:ping"]);
    let t = node.at(125);
    node.send_at(c, json!({"event":"pusher:pong","data":{}}), t);
    node.tick(160);
    assert!(node.take(c).is_empty(), "the pong reset the clock");
    node.tick(245);
    assert_eq!(events(&node.take(c)), ["pusher:ping"]);
    node.tick(274);
    assert!(node.take(c).is_empty());
    node.tick(275);
    let bye = node.take(c);
    assert_eq!(bye[0]["data"]["code"], 4201);
    assert_eq!(bye[1], json!({"close": 4201}));
    assert_eq!(
        node.shards[0].conn(c.key).expect("closing").outbox.closing(),
        Some(CloseCode::PONG_NOT_RECEIVED)
    );
}

#[test]
fn pusher_ping_gets_pong_and_bad_input_gets_errors_without_closing() {
    let mut node = node(1);
    let c = node.open(0);
    node.send(c, json!({"event":"pusher:ping","data":{}}));
    assert_eq!(events(&node.take(c)), ["pusher:pong"]);
    for bad in [
        "not json",
        "{\"event\":5}",
        "{\"event\":\"pusher:subscribe\"}",
        "{\"event\":\"what\"}",
        "[]",
    ] {
        node.shards[0].handle_text(c.key, bad.as_bytes(), node.t0);
        let reply = node.take(c);
        assert_eq!(events(&reply), ["pusher:error"], "{bad}");
    }
    node.send(c, json!({"event":"pusher:subscribe","data":{"channel":"bad name!"}}));
    assert_eq!(events(&node.take(c)), ["pusher:error"]);
    node.send(c, json!({"event":"pusher:subscribe","data":{"channel":"x".repeat(201)}}));
    assert_eq!(events(&node.take(c)), ["pusher:error"]);
    // data may also arrive as a JSON string holding the object (spec §2.3).
    node.send(c, json!({"event":"pusher:subscribe","data":"{\"channel\":\"news\"}"}));
    assert_eq!(events(&node.take(c)), ["pusher_internal:subscription_succeeded"]);
    // Escapes in the names (which the parse cannot borrow) mean what they say.
    let escaped = r#"{"event":"pusher:sub\u0073cribe","data":{"channel":"n\u0065ws-2"}}"#;
    node.shards[0].handle_text(c.key, escaped.as_bytes(), node.t0);
    let reply = node.take(c);
    assert_eq!(events(&reply), ["pusher_internal:subscription_succeeded"]);
    assert_eq!(reply[0]["channel"], "news-2");
    assert!(node.shards[0].conn(c.key).expect("open").outbox.closing().is_none());
}

/// While `refuse(shard, true)` holds, what would add to the rings (a
/// client event, a subscription) is refused and reaches no one, leaving is
/// not; once `refuse(shard, false)`, the same requests go through.
fn refuses_what_would_add_to_the_rings(refuse: fn(&mut Shard, bool)) {
    let mut node = node(2);
    let (a, b) = (node.open(0), node.open(1));
    for channel in ["private-x", "private-y"] {
        node.subscribe(a, channel);
        node.subscribe(b, channel);
    }
    refuse(&mut node.shards[0], true);
    assert!(node.shards[0].refusing());
    // Handed to the shard without moving its mesh, so that what it queued
    // for the other shard can be seen.
    let event = json!({"event":"client-x","channel":"private-x","data":{}}).to_string();
    node.shards[0].handle_text(a.key, event.as_bytes(), node.t0);
    assert!(!node.shards[0].has_mesh_out(), "nothing was queued for the other shard");
    let got = node.take(a);
    assert_eq!(got[0]["event"], "pusher:error");
    assert_eq!(got[0]["data"]["code"], 4301, "{got:?}");
    node.send(a, json!({"event":"pusher:subscribe","data":{"channel":"sports"}}));
    let got = node.take(a);
    assert_eq!(got[0]["event"], "pusher:error", "{got:?}");
    assert!(got[0]["data"]["message"].as_str().is_some_and(|m| m.contains("busy")), "{got:?}");
    assert!(!node.shards[0].has_mesh_out(), "nothing was queued for the other shard");
    assert!(node.take(b).is_empty(), "the refused client event reached no one");
    assert_eq!(node.shards[0].shed_total(), 2);
    // Leaving is never refused.
    node.send(a, json!({"event":"pusher:unsubscribe","data":{"channel":"private-x"}}));
    assert_eq!(node.shards[0].index.count(0, "private-x"), 0);
    // Once the cause is gone, the same requests go through.
    refuse(&mut node.shards[0], false);
    assert!(!node.shards[0].refusing());
    node.send(a, json!({"event":"pusher:subscribe","data":{"channel":"sports"}}));
    assert_eq!(node.take(a)[0]["event"], "pusher_internal:subscription_succeeded");
    node.send(a, json!({"event":"client-x","channel":"private-y","data":{}}));
    assert_eq!(events(&node.take(b)), ["client-x"]);
}

/// The rings to other shards hold too much: more would only pile up.
#[test]
fn a_backlogged_shard_refuses_what_would_add_to_its_rings_but_lets_clients_leave() {
    refuses_what_would_add_to_the_rings(Shard::set_backlogged);
}

/// The IO layer could not read its rings to the end after the input at
/// hand: a client event or subscription in it could overtake a message
/// still on its way.
#[test]
fn a_shard_with_unsettled_rings_refuses_what_would_add_to_them() {
    refuses_what_would_add_to_the_rings(Shard::set_unsettled);
}

#[test]
fn a_slow_consumer_is_closed_with_4100_and_its_queue_dropped() {
    let mut node = node(1);
    let (slow, fine) = (node.open(0), node.open(0));
    node.subscribe(slow, "news");
    node.subscribe(fine, "news");
    // Its socket is full: the IO layer says so.
    node.shards[0].outbox(slow.key).expect("open").set_writer_blocked(true);
    let data = "x".repeat(1000);
    for _ in 0..100 {
        node.shards[0].publish(0, "news", "e", &data, None, node.t0);
        let n = node.take(fine).len();
        assert_eq!(n, 1);
    }
    let outbox = node.shards[0].outbox(slow.key).expect("open");
    assert_eq!(outbox.closing(), Some(CloseCode::OVER_CAPACITY));
    assert!(outbox.queued_bytes() < 1024, "the backlog was dropped, not kept");
    let frames = node.take(slow);
    assert_eq!(frames.last(), Some(&json!({"close": 4100})));
    assert!(!node.shards[0].behind(), "a slow subscriber is not the shard falling behind");
}

/// A full outbox whose socket took all it was given means the shard has
/// not written it yet: publishers outpace the shard. The subscriber keeps
/// every event and stays open; the shard refuses new work until told its
/// writes caught up.
#[test]
fn a_shard_behind_its_publishers_keeps_subscribers_and_refuses_new_work() {
    let mut node = node(1);
    let (a, b) = (node.open(0), node.open(0));
    node.subscribe(a, "private-x");
    node.subscribe(b, "private-x");
    let data = "x".repeat(1000);
    // Twice the outbox limit (64 KiB in these settings), nothing written.
    for _ in 0..130 {
        node.shards[0].publish(0, "private-x", "e", &data, None, node.t0);
    }
    assert!(node.shards[0].behind());
    let outbox = node.shards[0].outbox(a.key).expect("open");
    assert_eq!(outbox.closing(), None);
    assert!(outbox.queued_bytes() > 130 * 1000, "every event kept");
    node.send(a, json!({"event":"client-x","channel":"private-x","data":{}}));
    let got = node.take(a);
    assert_eq!(got.len(), 131, "130 events and one refusal");
    assert_eq!(got[130]["event"], "pusher:error");
    assert_eq!(got[130]["data"]["code"], 4301, "{:?}", got[130]);
    assert_eq!(node.take(b).len(), 130, "the refused client event reached no one");
    // Written out (taken above): the IO layer says so, and work is let in.
    node.shards[0].caught_up();
    node.send(a, json!({"event":"client-x","channel":"private-x","data":{}}));
    assert!(node.take(a).is_empty());
    assert_eq!(events(&node.take(b)), ["client-x"]);
}

#[test]
fn queries_sum_subscriptions_and_take_users_from_the_owner() {
    let mut node = node(2);
    let cs: Vec<C> = (0..4).map(|i| node.open(i % 2)).collect();
    for (i, &c) in cs.iter().enumerate() {
        node.subscribe(c, "news");
        node.join(c, "presence-p", if i < 2 { "u1" } else { "u2" });
    }
    let id = node.shards[1].start_query(0, &["news", "presence-p", "empty"]);
    node.pump();
    let counts = answer_counts(node.shards[1].take_answer(id));
    assert_eq!(counts[0], ChannelCounts { subscriptions: 4, users: None });
    assert_eq!(counts[1].subscriptions, 4);
    assert_eq!(counts[1].users, Some(2));
    assert_eq!(counts[2], ChannelCounts { subscriptions: 0, users: None });
}

#[test]
fn closing_all_sends_4200_then_the_close_frame() {
    let mut node = node(1);
    let c = node.open(0);
    node.shards[0].close_all(CloseCode::RECONNECT);
    let bye = node.take(c);
    assert_eq!(bye[0]["event"], "pusher:error");
    assert_eq!(bye[0]["data"]["code"], 4200);
    assert_eq!(bye[1], json!({"close": 4200}));
    node.shards[0].publish(0, "news", "e", "d", None, node.t0);
    node.send(c, json!({"event":"pusher:ping"}));
    assert!(node.take(c).is_empty(), "nothing after the close");
}

impl Node {
    /// Signs `c` in with `user_data`, returning what it was sent.
    fn signin(&mut self, c: C, user_data: &str) -> Vec<Value> {
        let auth = sign(&format!("{}::user::{user_data}", self.socket_id(c)));
        self.send(c, json!({"event":"pusher:signin","data":{"auth":auth,"user_data":user_data}}));
        self.take(c)
    }

    fn list(&mut self, shard: usize, prefix: &str) -> Vec<(Box<str>, ChannelCounts)> {
        let id = self.shards[shard].start_list(0, prefix);
        self.pump();
        match self.shards[shard].take_answer(id) {
            Some(Answer::List(list)) => list,
            other => panic!("all shards answered with a list: {other:?}"),
        }
    }

    fn users(&mut self, shard: usize, channel: &str) -> Vec<Box<str>> {
        let id = self.shards[shard].start_users(0, channel);
        self.pump();
        match self.shards[shard].take_answer(id) {
            Some(Answer::Users(users)) => users,
            other => panic!("the owner answered with users: {other:?}"),
        }
    }
}

#[test]
fn channel_list_merges_every_shard_and_takes_users_from_owners() {
    let mut node = node(3);
    let cs: Vec<C> = (0..6).map(|i| node.open(i % 3)).collect();
    for (i, &c) in cs.iter().enumerate() {
        node.subscribe(c, "news");
        node.join(c, "presence-p", if i < 3 { "u1" } else { "u2" });
    }
    node.subscribe(cs[2], "private-x");
    node.join(cs[4], "presence-q", "u9");
    for asker in 0..3 {
        let all = node.list(asker, "");
        let names: Vec<&str> = all.iter().map(|(n, _)| &**n).collect();
        assert_eq!(names, ["news", "presence-p", "presence-q", "private-x"], "asked on {asker}");
        assert_eq!(all[0].1, ChannelCounts { subscriptions: 6, users: None });
        assert_eq!(all[1].1, ChannelCounts { subscriptions: 6, users: Some(2) });
        assert_eq!(all[2].1, ChannelCounts { subscriptions: 1, users: Some(1) });
        assert_eq!(all[3].1.subscriptions, 1);
    }
    let presence = node.list(1, "presence-");
    assert_eq!(presence.len(), 2);
    assert!(node.list(0, "nothing-").is_empty());
    // Leaving empties the channel everywhere; a query never shows it again.
    node.send(cs[4], json!({"event":"pusher:unsubscribe","data":{"channel":"presence-q"}}));
    node.send(cs[2], json!({"event":"pusher:unsubscribe","data":{"channel":"private-x"}}));
    let names: Vec<Box<str>> = node.list(2, "").into_iter().map(|(n, _)| n).collect();
    assert_eq!(names, ["news".into(), "presence-p".into()] as [Box<str>; 2]);
}

#[test]
fn presence_users_are_unique_and_asked_of_the_owner() {
    let mut node = node(3);
    let cs: Vec<C> = (0..5).map(|i| node.open(i % 3)).collect();
    for (i, &c) in cs.iter().enumerate() {
        node.join(c, "presence-p", ["a", "b", "a", "c", "b"][i]);
    }
    for asker in 0..3 {
        let mut users = node.users(asker, "presence-p");
        users.sort();
        assert_eq!(users, ["a".into(), "b".into(), "c".into()] as [Box<str>; 3]);
    }
    node.shards[cs[3].shard].remove(cs[3].key);
    node.pump();
    assert_eq!(node.users(0, "presence-p").len(), 2);
    assert!(node.users(1, "presence-empty").is_empty());
}

#[test]
fn signin_is_verified_and_answered_with_the_same_user_data() {
    let mut node = node(2);
    let c = node.open(0);
    let data = r#"{"id":"u1","user_info":{"name":"One"}}"#;
    let got = node.signin(c, data);
    assert_eq!(events(&got), ["pusher:signin_success"]);
    assert_eq!(data_of(&got[0])["user_data"], data);
    // A bad signature is an error, and the connection stays.
    let other = node.open(1);
    let bad = format!("{KEY}:{}", "0".repeat(64));
    node.send(other, json!({"event":"pusher:signin","data":{"auth":bad,"user_data":data}}));
    let got = node.take(other);
    assert_eq!(events(&got), ["pusher:error"]);
    assert!(got[0]["data"]["message"].as_str().unwrap_or("").contains("Invalid signature"));
    // Signing in as someone else on the same connection is refused.
    let got = node.signin(c, r#"{"id":"u2"}"#);
    assert_eq!(events(&got), ["pusher:error"]);
    // The same user again is confirmed again.
    assert_eq!(events(&node.signin(c, data)), ["pusher:signin_success"]);
    // user_data with a numeric id is refused.
    assert_eq!(events(&node.signin(other, r#"{"id":5}"#)), ["pusher:error"]);
}

#[test]
fn server_to_user_channel_only_for_that_user_and_publishable() {
    let mut node = node(2);
    let (me, stranger, other_tab) = (node.open(0), node.open(1), node.open(1));
    node.signin(me, r#"{"id":"u1"}"#);
    node.signin(other_tab, r#"{"id":"u1"}"#);
    node.signin(stranger, r#"{"id":"u2"}"#);
    let ch = "#server-to-user-u1";
    assert_eq!(events(&node.subscribe(me, ch)), ["pusher_internal:subscription_succeeded"]);
    assert_eq!(events(&node.subscribe(other_tab, ch)), ["pusher_internal:subscription_succeeded"]);
    assert_eq!(events(&node.subscribe(stranger, ch)), ["pusher:error"]);
    let anonymous = node.open(0);
    assert_eq!(events(&node.subscribe(anonymous, ch)), ["pusher:error"]);
    node.shards[1].publish(0, ch, "hello", "{}", None, node.t0);
    node.pump();
    assert_eq!(events(&node.take(me)), ["hello"]);
    assert_eq!(events(&node.take(other_tab)), ["hello"]);
    assert!(node.take(stranger).is_empty());
}

#[test]
fn signed_in_connection_joins_presence_without_channel_data() {
    let mut node = node(2);
    let (c, watcher) = (node.open(0), node.open(1));
    node.join(watcher, "presence-room", "w");
    node.signin(c, r#"{"id":"u1","user_info":{"name":"One"}}"#);
    let channel = "presence-room";
    let auth = sign(&format!("{}:{channel}", node.socket_id(c)));
    node.send(c, json!({"event":"pusher:subscribe","data":{"channel":channel,"auth":auth}}));
    let got = node.take(c);
    assert_eq!(events(&got), ["pusher_internal:subscription_succeeded"]);
    let presence = &data_of(&got[0])["presence"];
    assert_eq!(presence["count"], 2);
    assert_eq!(presence["hash"]["u1"], json!({"name":"One"}));
    let added = node.take(watcher);
    assert_eq!(data_of(&added[0])["user_id"], "u1");
    // Without a sign-in, channel_data stays required.
    let anonymous = node.open(1);
    let auth = sign(&format!("{}:{channel}", node.socket_id(anonymous)));
    node.send(
        anonymous,
        json!({"event":"pusher:subscribe","data":{"channel":channel,"auth":auth}}),
    );
    assert_eq!(events(&node.take(anonymous)), ["pusher:error"]);
}

#[test]
fn terminate_closes_the_users_signed_in_connections_on_every_shard() {
    let mut node = node(3);
    let tabs: Vec<C> = (0..3).map(|s| node.open(s)).collect();
    for &t in &tabs {
        node.signin(t, r#"{"id":"u1"}"#);
    }
    let other = node.open(1);
    node.signin(other, r#"{"id":"u2"}"#);
    // Present as u1 through channel_data only: not signed in, not affected.
    let presence_only = node.open(2);
    node.join(presence_only, "presence-x", "u1");
    node.shards[0].terminate_user(0, "u1");
    node.pump();
    for &t in &tabs {
        let got = node.take(t);
        assert_eq!(got[0]["event"], "pusher:error");
        assert_eq!(got[0]["data"]["code"], 4009);
        assert_eq!(got.last(), Some(&json!({"close": 4009})));
    }
    assert!(node.take(other).is_empty());
    assert!(node.take(presence_only).is_empty());
    node.shards[0].terminate_user(1, "u2");
    node.pump();
    assert!(node.take(other).is_empty(), "other apps' users are separate");
}

#[test]
fn watchlist_reports_initial_online_users_then_changes() {
    let mut node = node(3);
    let early = node.open(1);
    node.signin(early, r#"{"id":"a"}"#);
    let watcher = node.open(0);
    let got = node.signin(watcher, r#"{"id":"w","watchlist":["a","b","c"]}"#);
    assert_eq!(events(&got), ["pusher:signin_success", "pusher_internal:watchlist_events"]);
    assert_eq!(data_of(&got[1]), json!({"events":[{"name":"online","user_ids":["a"]}]}));
    // b comes online in two tabs: announced once.
    let (b1, b2) = (node.open(2), node.open(1));
    node.signin(b1, r#"{"id":"b"}"#);
    node.signin(b2, r#"{"id":"b"}"#);
    let got = node.take(watcher);
    assert_eq!(got.len(), 1);
    assert_eq!(data_of(&got[0]), json!({"events":[{"name":"online","user_ids":["b"]}]}));
    // Offline only when the last tab goes.
    node.shards[b1.shard].remove(b1.key);
    node.pump();
    assert!(node.take(watcher).is_empty());
    node.shards[b2.shard].remove(b2.key);
    node.pump();
    let got = node.take(watcher);
    assert_eq!(data_of(&got[0]), json!({"events":[{"name":"offline","user_ids":["b"]}]}));
    // A departed watcher is no longer told anything (and nothing breaks).
    node.shards[watcher.shard].remove(watcher.key);
    node.pump();
    let c = node.open(2);
    node.signin(c, r#"{"id":"c"}"#);
    for shard in &node.shards {
        assert!(!shard.has_mesh_out());
    }
}

#[test]
fn watchlist_over_100_ids_keeps_the_first_100_with_4302() {
    let mut node = node(2);
    let ids: Vec<String> = (0..101).map(|i| format!("u{i}")).collect();
    let last = node.open(1);
    node.signin(last, r#"{"id":"u100"}"#);
    let first = node.open(1);
    node.signin(first, r#"{"id":"u0"}"#);
    let c = node.open(0);
    let data = json!({"id":"w","watchlist":ids}).to_string();
    let got = node.signin(c, &data);
    assert_eq!(events(&got)[..2], ["pusher:signin_success", "pusher:error"]);
    assert_eq!(got[1]["data"]["code"], 4302);
    let online: Vec<Value> = got[2..]
        .iter()
        .flat_map(|f| data_of(f)["events"][0]["user_ids"].as_array().cloned().unwrap_or_default())
        .collect();
    assert_eq!(online, vec![json!("u0")], "u100 is past the limit and not watched");
}

fn counting_node(n: usize) -> Node {
    let mut app = AppConfig::new("1", KEY, SECRET);
    app.subscription_count = true;
    node_with(n, app)
}

fn counts_seen(frames: &[Value]) -> Vec<u64> {
    frames
        .iter()
        .filter(|f| f["event"] == "pusher_internal:subscription_count")
        .map(|f| data_of(f)["subscription_count"].as_u64().expect("a number"))
        .collect()
}

#[test]
fn subscription_count_follows_the_node_wide_count() {
    let mut node = counting_node(3);
    let (a, b) = (node.open(0), node.open(1));
    let got = node.subscribe(a, "news");
    assert_eq!(
        events(&got),
        ["pusher_internal:subscription_succeeded", "pusher_internal:subscription_count"]
    );
    assert_eq!(got[1]["channel"], "news");
    assert_eq!(counts_seen(&got), [1]);
    assert_eq!(counts_seen(&node.subscribe(b, "news")), [2]);
    assert_eq!(counts_seen(&node.take(a)), [2]);
    // A repeated subscribe changes nothing.
    assert_eq!(counts_seen(&node.subscribe(b, "news")), Vec::<u64>::new());
    assert!(node.take(a).is_empty());
    node.send(b, json!({"event":"pusher:unsubscribe","data":{"channel":"news"}}));
    assert_eq!(counts_seen(&node.take(a)), [1]);
    // A disconnect counts as leaving.
    let c = node.open(2);
    node.subscribe(c, "news");
    node.take(a);
    node.shards[2].remove(c.key);
    node.pump();
    assert_eq!(counts_seen(&node.take(a)), [1]);
    // Never for presence channels.
    let got = node.join(a, "presence-p", "u");
    assert_eq!(events(&got), ["pusher_internal:subscription_succeeded"]);
}

#[test]
fn subscription_count_is_off_by_default() {
    let mut node = node(2);
    let a = node.open(0);
    assert_eq!(events(&node.subscribe(a, "news")), ["pusher_internal:subscription_succeeded"]);
}

#[test]
fn subscription_count_above_100_goes_out_at_most_every_5_seconds() {
    let mut node = counting_node(2);
    let first = node.open(0);
    node.subscribe(first, "busy");
    for i in 1..100 {
        let c = node.open(i % 2);
        node.subscribe(c, "busy");
    }
    assert_eq!(counts_seen(&node.take(first)).last(), Some(&100));
    // 101 and 102 arrive within the interval: held back.
    for i in 0..2 {
        let c = node.open(i);
        node.subscribe(c, "busy");
    }
    assert!(counts_seen(&node.take(first)).is_empty());
    node.tick(4);
    node.pump();
    assert!(counts_seen(&node.take(first)).is_empty(), "not before 5 s");
    node.tick(5);
    node.pump();
    assert_eq!(counts_seen(&node.take(first)), [102], "one count, the latest");
    node.tick(11);
    node.pump();
    assert!(counts_seen(&node.take(first)).is_empty(), "nothing new, nothing sent");
}

#[test]
fn idle_connections_hold_no_spare_queue_or_subscription_room() {
    let mut n = node(1);
    let c = n.open(0);
    n.subscribe(c, "news");
    let conn = n.shards[0].conn(c.key).expect("open");
    assert!(matches!(conn.subs, Subs::One(_)), "one subscription, held in place");
    assert!(conn.outbox.capacity() > 0, "frames were queued since the last tick");
    n.tick(1);
    let conn = n.shards[0].conn(c.key).expect("open");
    assert_eq!(conn.outbox.capacity(), 0, "an empty outbox gives its queue back at a tick");
    // And it still delivers afterwards.
    n.shards[0].publish(0, "news", "e", "{}", None, n.t0);
    n.pump();
    let got = n.take(c);
    assert_eq!(got[0]["event"], "e");
}

#[test]
fn a_preface_leaves_ahead_of_connection_established() {
    let mut n = node(1);
    let preface = Bytes::from_static(b"HTTP/1.1 101 Switching Protocols\r\n\r\n");
    let key = n.shards[0].open(0, 0, n.t0, Some(preface.clone()));
    let outbox = n.shards[0].outbox(key).expect("open");
    let frames: Vec<Bytes> = outbox.frames().cloned().collect();
    assert_eq!(frames.len(), 2);
    assert_eq!(frames[0], preface);
    assert_eq!(decode(&frames[1])["event"], "pusher:connection_established");
}

/// A channel named `<prefix><n>` whose owner is shard `owner` of `shards`.
fn owned_by(owner: usize, shards: usize, prefix: &str) -> String {
    (0..)
        .map(|n| format!("{prefix}{n}"))
        .find(|name| owner_shard(0, name, shards) == owner)
        .expect("some name hashes to every shard")
}

impl Node {
    fn publish_at(&mut self, shard: usize, channel: &str, data: &str, secs: u64) {
        let now = self.at(secs);
        self.shards[shard].publish(0, channel, "state", data, None, now);
        self.pump();
    }

    fn subscribe_at(&mut self, c: C, channel: &str, secs: u64) -> Vec<Value> {
        let now = self.at(secs);
        let msg = json!({"event":"pusher:subscribe","data":{"channel":channel,"auth":""}});
        self.send_at(c, msg, now);
        self.take(c)
    }

    fn cache_of(&mut self, shard: usize, channel: &str, secs: u64) -> Option<(Value, Duration)> {
        let now = self.at(secs);
        let id = self.shards[shard].start_cache(0, channel, now);
        self.pump();
        let cached = match self.shards[shard].take_answer(id) {
            Some(Answer::Cache(cached)) => cached,
            other => panic!("the owner answered with its cache: {other:?}"),
        };
        cached.map(|(frame, left)| (decode(&frame), left))
    }

    fn cache_misses(&mut self) -> Vec<(usize, String)> {
        let mut out = Vec::new();
        for (i, shard) in self.shards.iter_mut().enumerate() {
            shard.drain_events(|event| {
                if let ShardEvent::CacheMiss { channel, .. } = event {
                    out.push((i, channel.into()));
                }
            });
        }
        out
    }
}

#[test]
fn cache_channel_replays_the_last_api_event_after_subscription_succeeded_across_shards() {
    let mut node = node(3);
    // Publisher on shard 0, owner shard 1, subscriber on shard 2.
    let ch = owned_by(1, 3, "cache-");
    node.publish_at(0, &ch, "{\"v\":1}", 0);
    node.publish_at(2, &ch, "{\"v\":2}", 1);
    let c = node.open(2);
    let got = node.subscribe_at(c, &ch, 2);
    assert_eq!(events(&got), ["pusher_internal:subscription_succeeded", "state"]);
    assert_eq!(got[1]["channel"], ch.as_str());
    assert_eq!(data_of(&got[1]), json!({"v":2}), "the last event, not the first");
    assert_eq!(node.cache_misses(), []);

    // Later publishes arrive live, once; client events are never cached.
    node.publish_at(0, &ch, "{\"v\":3}", 3);
    let got = node.take(c);
    assert_eq!(events(&got), ["state"]);
    assert_eq!(data_of(&got[0]), json!({"v":3}));
    let late = node.open(0);
    let got = node.subscribe_at(late, &ch, 4);
    assert_eq!(data_of(&got[1]), json!({"v":3}));
}

#[test]
fn cache_miss_is_sent_to_the_subscriber_and_raised_on_the_owner() {
    // Raised for the cache_miss webhook, so only for an app that has one.
    let mut node = node_with(2, webhooks::hooked_app(&[crate::core::HookKind::CacheMiss]));
    let ch = owned_by(1, 2, "private-cache-");
    let c = node.open(0);
    let got = node.subscribe(c, &ch);
    assert_eq!(events(&got), ["pusher_internal:subscription_succeeded", "pusher:cache_miss"]);
    assert_eq!(got[1], json!({"event":"pusher:cache_miss","channel":ch}));
    assert_eq!(node.cache_misses(), [(1, ch.clone())]);
    assert_eq!(node.cache_misses(), [], "drained");
    // A plain channel with a similar name is not a cache channel.
    let got = node.subscribe(c, "news-cache-1");
    assert_eq!(events(&got), ["pusher_internal:subscription_succeeded"]);
}

#[test]
fn cached_events_expire_after_the_app_ttl_and_are_dropped_from_memory() {
    let mut app = AppConfig::new("1", KEY, SECRET);
    app.cache_ttl = Duration::from_secs(60);
    let mut node = node_with(2, app);
    let ch = owned_by(0, 2, "cache-");
    node.publish_at(1, &ch, "old", 0);
    assert_eq!(node.shards[0].cached_channels(), 1);
    let c = node.open(1);
    let got = node.subscribe_at(c, &ch, 59);
    assert_eq!(events(&got), ["pusher_internal:subscription_succeeded", "state"]);
    let (_, left) = node.cache_of(1, &ch, 59).expect("still cached");
    assert_eq!(left, Duration::from_secs(1));

    let late = node.open(1);
    let got = node.subscribe_at(late, &ch, 60);
    assert_eq!(events(&got), ["pusher_internal:subscription_succeeded", "pusher:cache_miss"]);
    assert_eq!(node.cache_of(1, &ch, 60), None);
    node.tick(60);
    assert_eq!(node.shards[0].cached_channels(), 0, "expired entries are swept");
}

#[test]
fn cache_query_asks_the_owner_for_the_event_and_its_ttl() {
    let mut node = node(3);
    let ch = owned_by(2, 3, "cache-");
    assert_eq!(node.cache_of(0, &ch, 0), None);
    node.publish_at(1, &ch, "{\"price\":3}", 10);
    let (frame, left) = node.cache_of(0, &ch, 70).expect("cached on the owner");
    assert_eq!(frame["event"], "state");
    assert_eq!(frame["data"], "{\"price\":3}");
    assert_eq!(left, Duration::from_secs(30 * 60 - 60));
    // The owner answers itself without the mesh.
    assert!(node.cache_of(2, &ch, 70).is_some());
}

#[test]
fn presence_cache_replays_after_the_member_list() {
    let mut node = node(2);
    let ch = owned_by(1, 2, "presence-cache-");
    let a = node.open(0);
    let got = node.join(a, &ch, "u1");
    assert_eq!(events(&got), ["pusher_internal:subscription_succeeded", "pusher:cache_miss"]);
    node.publish_at(0, &ch, "score", 0);
    assert_eq!(events(&node.take(a)), ["state"]);
    let b = node.open(0);
    let got = node.join(b, &ch, "u2");
    assert_eq!(events(&got), ["pusher_internal:subscription_succeeded", "state"]);
    assert_eq!(got[1]["data"], "score");
    assert_eq!(events(&node.take(a)), ["pusher_internal:member_added"]);
}

#[test]
fn unsubscribing_before_the_replay_arrives_leaves_nothing_behind() {
    let mut node = node(2);
    let ch = owned_by(1, 2, "cache-");
    let c = node.open(0);
    let msg = json!({"event":"pusher:subscribe","data":{"channel":ch,"auth":""}});
    node.shards[0].handle_text(c.key, msg.to_string().as_bytes(), node.t0);
    let msg = json!({"event":"pusher:unsubscribe","data":{"channel":ch}});
    node.shards[0].handle_text(c.key, msg.to_string().as_bytes(), node.t0);
    node.pump();
    assert_eq!(node.take(c), Vec::<Value>::new());
    node.publish_at(1, &ch, "x", 1);
    assert_eq!(node.take(c), Vec::<Value>::new());
    let id = node.shards[0].start_query(0, &[&ch]);
    node.pump();
    let counts = answer_counts(node.shards[0].take_answer(id));
    assert_eq!(counts, [ChannelCounts { subscriptions: 0, users: None }]);
}

fn authorized_node(n: usize) -> Node {
    let mut app = AppConfig::new("1", KEY, SECRET);
    app.authorized_timeout = Some(Duration::from_secs(30));
    node_with(n, app)
}

#[test]
fn authorized_connections_close_the_unauthorized_with_4009_at_the_deadline() {
    let mut node = authorized_node(2);
    let idle = node.open(0);
    let public_only = node.open(1);
    node.subscribe(public_only, "news");
    let signed_in = node.open(0);
    node.signin(signed_in, r#"{"id":"7"}"#);
    let private = node.open(1);
    node.subscribe(private, "private-cache-x");
    let presence = node.open(0);
    node.join(presence, "presence-room", "u1");
    node.tick(29);
    for c in [idle, public_only, signed_in, private, presence] {
        assert_eq!(node.take(c), Vec::<Value>::new(), "not due before 30 s");
    }
    node.tick(30);
    for c in [idle, public_only] {
        let got = node.take(c);
        assert_eq!(
            got,
            [
                json!({"event":"pusher:error","data":{"code":4009,"message":AUTHORIZATION_TIMEOUT}}),
                json!({"close":4009})
            ]
        );
    }
    for c in [signed_in, private, presence] {
        assert_eq!(node.take(c), Vec::<Value>::new(), "authorized connections stay");
    }
}

#[test]
fn authorized_connections_are_off_by_default() {
    let mut node = node(1);
    let c = node.open(0);
    node.tick(100_000);
    assert_eq!(events(&node.take(c)), ["pusher:ping"]);
}

#[test]
fn a_publish_racing_a_cache_subscription_is_seen_exactly_once() {
    // "Subscribe" and "publish" both leave their shards before the owner has
    // seen either, in both orders, from the subscriber's shard and another.
    // The subscriber gets the event exactly once, as the replay or live,
    // after `subscription_succeeded`; a miss only ever comes before it.
    for publisher in [0, 1] {
        for publish_first in [false, true] {
            let mut node = node(3);
            let ch = owned_by(2, 3, "cache-");
            let c = node.open(0);
            let subscribe = json!({"event":"pusher:subscribe","data":{"channel":ch,"auth":""}});
            let subscribe = subscribe.to_string();
            let t0 = node.t0;
            if publish_first {
                node.shards[publisher].publish(0, &ch, "state", "v1", None, t0);
            }
            node.shards[0].handle_text(c.key, subscribe.as_bytes(), t0);
            if !publish_first {
                node.shards[publisher].publish(0, &ch, "state", "v1", None, t0);
            }
            node.pump();
            let got = node.take(c);
            let got = events(&got);
            let case = format!("publisher={publisher} publish_first={publish_first}: {got:?}");
            assert_eq!(got[0], "pusher_internal:subscription_succeeded", "{case}");
            assert_eq!(got.iter().filter(|e| **e == "state").count(), 1, "{case}");
            assert_eq!(got.last(), Some(&"state"), "{case}");
            if publisher == 0 {
                // One ring from the subscriber's shard to the owner keeps
                // the order, so the outcome is known.
                let miss = usize::from(!publish_first);
                assert_eq!(got.len(), 2 + miss, "{case}");
            }
        }
    }
}

mod cluster;
mod properties;
mod webhooks;

#[test]
fn a_resubscribe_while_a_cache_fetch_is_in_flight_replays_once() {
    let mut node = node(2);
    let ch = owned_by(1, 2, "cache-");
    node.publish_at(1, &ch, "{\"v\":1}", 0);
    let c = node.open(0);
    let sub = json!({"event":"pusher:subscribe","data":{"channel":ch,"auth":""}}).to_string();
    let unsub = json!({"event":"pusher:unsubscribe","data":{"channel":ch}}).to_string();
    // Both fetches leave before either answer comes back.
    for msg in [&sub, &unsub, &sub] {
        node.shards[0].handle_text(c.key, msg.as_bytes(), node.t0);
    }
    node.pump();
    let got = node.take(c);
    let replays = got.iter().filter(|m| m["event"] == "state").count();
    assert_eq!(replays, 1, "{got:?}");
    let confirmations =
        got.iter().filter(|m| m["event"] == "pusher_internal:subscription_succeeded");
    assert_eq!(confirmations.count(), 1, "{got:?}");
}

#[test]
fn counters_follow_connections_frames_and_deliveries_per_shard_and_app() {
    let mut node = node(2);
    let a = node.open(0);
    let b = node.open(1);
    let gone = node.open(1);
    node.shards[1].remove(gone.key);
    node.subscribe(a, "news");
    node.subscribe(b, "news");
    node.shards[0].publish(0, "news", "update", "x", None, node.t0);
    node.pump();
    let (s0, s1) = (node.shards[0].counters().app(0), node.shards[1].counters().app(0));
    assert_eq!((s0.opened.get(), s0.closed.get()), (1, 0));
    assert_eq!((s1.opened.get(), s1.closed.get()), (2, 1));
    assert_eq!((s0.messages_in.get(), s1.messages_in.get()), (1, 1));
    // A delivery counts when it is written whole: the event is one, the
    // replies and errors before it are not.
    for (shard, c) in [(0, a), (1, b)] {
        let outbox = node.shards[shard].outbox(c.key).expect("open");
        let frame_len = outbox.queued_bytes();
        let half = outbox.consume(frame_len / 2);
        assert_eq!(half.deliveries, 0, "half a frame is not a delivery");
        let rest = outbox.consume(frame_len - frame_len / 2);
        assert_eq!((rest.deliveries, rest.delivered_bytes), (1, frame_len as u64));
    }
}

/// The counts a completed query answered with.
fn answer_counts(answer: Option<Answer>) -> Vec<ChannelCounts> {
    match answer {
        Some(Answer::Counts(counts)) => counts,
        other => panic!("all shards answered with counts: {other:?}"),
    }
}

#[test]
fn subscriptions_stay_in_place_until_a_second_and_return_there_at_one() {
    let sub = |name: &str| Sub { channel: name.into(), user_id: None, state: SubState::Active };
    let names = |subs: &Subs| subs.iter().map(|s| s.channel.to_string()).collect::<Vec<_>>();
    let mut subs = Subs::None;
    subs.push(sub("a"));
    assert!(matches!(subs, Subs::One(_)));
    subs.push(sub("b"));
    subs.push(sub("c"));
    assert_eq!(names(&subs), ["a", "b", "c"]);
    assert_eq!(&*subs.swap_remove(0).channel, "a");
    assert_eq!(names(&subs), ["c", "b"]);
    assert_eq!(&*subs.swap_remove(1).channel, "b");
    assert!(matches!(subs, Subs::One(_)), "back in place: {subs:?}");
    subs.push(sub("d"));
    let all: Vec<_> = subs.into_iter().map(|s| s.channel.to_string()).collect();
    assert_eq!(all, ["c", "d"]);
    let mut one = Subs::None;
    one.push(sub("e"));
    assert_eq!(&*one.swap_remove(0).channel, "e");
    assert!(one.is_empty());
}

/// What an idle connection costs the shard's state, in place: issue #14
/// counts bytes per idle connection, and these are most of them. A field
/// that grows one of them should be a rare one behind a pointer.
#[test]
fn per_connection_state_stays_small() {
    use std::mem::size_of;
    eprintln!(
        "Conn {} Session {} Outbox {} Sub {}",
        size_of::<Conn>(),
        size_of::<Session>(),
        size_of::<Outbox>(),
        size_of::<Sub>()
    );
    // With the first subscription in place (`Subs`), which no longer
    // takes a block of its own.
    assert!(size_of::<Conn>() <= 128, "Conn: {}", size_of::<Conn>());
    assert!(size_of::<Subs>() <= size_of::<Sub>(), "Subs: {}", size_of::<Subs>());
    assert!(size_of::<Session>() <= 56, "Session: {}", size_of::<Session>());
    assert!(size_of::<Sub>() <= 24, "Sub: {}", size_of::<Sub>());
}
