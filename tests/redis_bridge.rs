//! The Redis bridge against a real `redis-server` that each test starts on
//! its own free loopback port (never the system Redis), with stapes on two
//! shards pointed at it. Waits have generous deadlines; no assertion is
//! about how long something took.

#![allow(clippy::unwrap_used, clippy::disallowed_methods)]

mod common;

use common::*;
use serde_json::{Value, json};

const PUSHER: &str = "stapes:pusher";
const QUEUE: &str = "Incus_Queue";
const INSTANCE: &str = "test-instance";
const PROCESSING: &str = "Incus_Queue:processing:test-instance";
/// Logged at debug for each routed Incus `message` command.
const ROUTED: &str = "incus message routed";

/// stapes with the bridge on, its log (level info, debug for the bridge)
/// kept by the harness.
struct Stapes {
    port: u16,
    server: Server,
}

impl Stapes {
    fn start(redis: &Redis) -> Stapes {
        Stapes::start_at(&redis.url())
    }

    fn start_at(redis_url: &str) -> Stapes {
        let yaml =
            config("", "  - id: \"2002\"\n    key: off-key\n    secret: s\n    enabled: false\n")
                + &format!(
                    "redis:\n  url: {redis_url}\n  instance: {INSTANCE}\n  reconnect_max_ms: 500\n"
                );
        let log = ("STAPES_LOG", "info,stapes::io::bridge=debug,stapes::proto::incus=debug");
        let server = Server::start_with(&yaml, &[log]);
        Stapes { port: server.port, server }
    }

    /// A graceful stop, and how it ended.
    fn terminate(&mut self) -> Stopped {
        self.server.terminate()
    }

    fn log(&self) -> String {
        self.server.output()
    }

    fn alive(&mut self) -> bool {
        self.server.alive()
    }

    fn client(&self, channel: &str) -> Client {
        let mut c = Client::connect(self.port, &format!("/app/{KEY}?protocol=7"));
        assert_eq!(c.subscribe(channel)["event"], "pusher_internal:subscription_succeeded");
        c
    }

    /// A connected client that has not subscribed yet.
    fn ws_client(&self) -> Client {
        Client::connect(self.port, &format!("/app/{KEY}?protocol=7"))
    }

    fn clients(&self, n: usize, channel: &str) -> Vec<Client> {
        (0..n).map(|_| self.client(channel)).collect()
    }
}

fn event(name: &str, channel: &str, data: &str) -> Value {
    json!({"event": name, "channel": channel, "data": data})
}

fn incus_message(event: &str) -> String {
    json!({"command":{"command":"message","user":"alice"},"message":{"event":event,"data":{"n":1}}})
        .to_string()
}

#[test]
fn pusher_event_reaches_every_shard_and_respects_socket_id() {
    let redis = Redis::start();
    let stapes = Stapes::start(&redis);
    // Sixteen connections: the kernel spreads them over both shards.
    let mut clients = stapes.clients(16, "news");
    wait_until("the bridge to subscribe", || redis.subscribers(PUSHER) >= 1);

    let payload =
        json!({"app_id": APP_ID, "channel": "news", "name": "update", "data": "{\"n\":1}"});
    redis.publish(PUSHER, &payload.to_string());
    for c in &mut clients {
        assert_eq!(c.event(), event("update", "news", "{\"n\":1}"));
    }

    // A JSON (non-string) data value arrives as its JSON text; an integer app id works.
    let payload = json!({"app_id": APP_ID.parse::<u64>().unwrap(), "channels": ["news", "other"],
        "name": "obj", "data": {"k": [1, 2]}});
    redis.publish(PUSHER, &payload.to_string());
    for c in &mut clients {
        let got = c.event();
        assert_eq!(got["event"], "obj");
        assert_eq!(data_of(&got), json!({"k": [1, 2]}));
    }

    // Excluded socket: everyone else gets "skip"; the excluded one's next
    // event is the marker that follows it on the same ordered path.
    let skip = clients[5].socket_id.clone();
    let payload = json!({"app_id": APP_ID, "channel": "news", "name": "skip", "data": "x", "socket_id": skip});
    redis.publish(PUSHER, &payload.to_string());
    let marker = json!({"app_id": APP_ID, "channel": "news", "name": "marker", "data": "m"});
    redis.publish(PUSHER, &marker.to_string());
    for (i, c) in clients.iter_mut().enumerate() {
        if i != 5 {
            assert_eq!(c.event()["event"], "skip", "client {i}");
        }
        assert_eq!(c.event()["event"], "marker", "client {i}");
    }
}

#[test]
fn a_redis_event_is_handed_only_to_the_shards_with_subscribers() {
    let redis = Redis::start();
    let stapes = Stapes::start(&redis);
    // Every connection subscribes to "wide", one also to "solo".
    let mut solo = stapes.client("wide");
    assert_eq!(solo.subscribe("solo")["event"], "pusher_internal:subscription_succeeded");
    let mut wide = stapes.clients(15, "wide");
    wait_until("the bridge to subscribe", || redis.subscribers(PUSHER) >= 1);
    let holding = (0..2)
        .filter(|s| {
            metric(stapes.port, &format!("stapes_shard_connections{{shard=\"{s}\"}}")) > Some(0)
        })
        .count() as u64;
    assert!(holding >= 1);
    let handoffs = || metric(stapes.port, "stapes_redis_event_handoffs_total");
    assert_eq!(handoffs(), Some(0));

    let publish = |channels: &[&str], name: &str| {
        let payload = json!({"app_id": APP_ID, "channels": channels, "name": name, "data": "d"});
        redis.publish(PUSHER, &payload.to_string());
    };
    publish(&["solo"], "one");
    publish(&["nobody"], "none");
    publish(&["wide"], "all");
    publish(&["nobody", "solo", "wide"], "mixed");
    for name in ["one", "all", "mixed", "mixed"] {
        assert_eq!(solo.event()["event"], name);
    }
    for c in &mut wide {
        assert_eq!(c.event()["event"], "all");
        assert_eq!(c.event()["event"], "mixed");
    }
    // Counted before the shards were woken, so final now: "solo" reached
    // one shard twice, "wide" every shard with a connection twice, and
    // "nobody" none.
    assert_eq!(handoffs(), Some(2 + 2 * holding));
    assert_eq!(metric(stapes.port, "stapes_redis_events_total"), Some(4));
}

#[test]
fn bad_input_is_refused_and_logged_without_harm() {
    let redis = Redis::start();
    let mut stapes = Stapes::start(&redis);
    let mut clients = stapes.clients(4, "news");
    wait_until("the bridge to subscribe", || redis.subscribers(PUSHER) >= 1);
    let long = "x".repeat(20_000);
    let bad = [
        "not json at all".to_owned(),
        "{\"app_id\":".to_owned(),
        "[1,2,3]".to_owned(),
        json!({"app_id": "999", "channel": "news", "name": "e", "data": "d"}).to_string(),
        json!({"app_id": "2002", "channel": "news", "name": "e", "data": "d"}).to_string(),
        json!({"app_id": APP_ID, "channel": "bad channel!", "name": "e", "data": "d"}).to_string(),
        json!({"app_id": APP_ID, "channel": "news", "name": "e", "data": long}).to_string(),
        json!({"app_id": APP_ID, "channel": "news", "name": "e", "data": "d", "socket_id": "nope"})
            .to_string(),
    ];
    for payload in &bad {
        redis.publish(PUSHER, payload);
    }
    redis.publish("Incus", "{broken");
    redis.publish("Incus", r#"{"command":{"command":"message","x":1}}"#);
    let good = json!({"app_id": APP_ID, "channel": "news", "name": "good", "data": "ok"});
    redis.publish(PUSHER, &good.to_string());
    for c in &mut clients {
        assert_eq!(c.event(), event("good", "news", "ok"), "bad payloads delivered nothing");
    }
    assert!(stapes.alive());
    wait_until("refusals to be logged", || {
        let log = stapes.log();
        log.matches("redis pusher event refused").count() == bad.len()
            && log.matches("incus command refused").count() == 2
    });
    let log = stapes.log();
    assert!(
        log.contains("unknown app \\\"999\\\"") || log.contains("unknown app \"999\""),
        "{log}"
    );
    assert!(log.contains("total=8"), "refusals are counted: {log}");
    let health = http(stapes.port, b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    assert_eq!(health.status, 200);
}

#[test]
fn incus_list_survives_a_restart_and_ends_empty() {
    let redis = Redis::start();
    // Left by a previous run that took it but stopped before handling it.
    let _: i64 = redis.cmd(&["RPUSH", PROCESSING, &incus_message("leftover")]);
    // Pushed while stapes is down.
    let _: i64 = redis.cmd(&["RPUSH", QUEUE, &incus_message("queued")]);
    let _: i64 = redis.cmd(&["RPUSH", QUEUE, r#"{"command":{"command":5}}"#]);
    let stapes = Stapes::start(&redis);
    wait_until("the queue and the processing list to drain", || {
        redis.llen(QUEUE) == 0 && redis.llen(PROCESSING) == 0
    });
    wait_until("both commands to reach the router", || stapes.log().matches(ROUTED).count() == 2);
    let log = stapes.log();
    assert!(log.contains("re-queued incus commands"), "{log}");
    assert!(log.contains("command.command must be a string"), "{log}");
    assert!(log.contains("source=\"queue\"") || log.contains("source=queue"), "{log}");

    // While running: a push is taken at once (BLMOVE is waiting) and cleared.
    let _: i64 = redis.cmd(&["RPUSH", QUEUE, &incus_message("live")]);
    wait_until("the live command to be handled", || stapes.log().matches(ROUTED).count() == 3);
    wait_until("the lists to be empty again", || {
        redis.llen(QUEUE) == 0 && redis.llen(PROCESSING) == 0
    });

    // The Incus channel goes to the same router.
    wait_until("the bridge to subscribe to Incus", || redis.subscribers("Incus") >= 1);
    redis.publish("Incus", &incus_message("published"));
    wait_until("the channel command to be handled", || stapes.log().matches(ROUTED).count() == 4);

    // Stopping while BLMOVE waits loses nothing and leaves nothing behind.
    let mut stapes = stapes;
    assert!(stapes.terminate().success(), "{}", stapes.log());
    assert_eq!((redis.llen(QUEUE), redis.llen(PROCESSING)), (0, 0));
    assert!(stapes.log().contains("redis bridge stopped"), "{}", stapes.log());
}

#[test]
fn redis_outage_keeps_local_traffic_and_recovers() {
    let mut redis = Redis::start();
    let mut stapes = Stapes::start(&redis);
    let mut clients = stapes.clients(6, "news");
    wait_until("the bridge to subscribe", || redis.subscribers(PUSHER) >= 1);
    let publish = |redis: &Redis, name: &str| {
        let payload = json!({"app_id": APP_ID, "channel": "news", "name": name, "data": "r"});
        redis.publish(PUSHER, &payload.to_string());
    };
    publish(&redis, "before");
    for c in &mut clients {
        assert_eq!(c.event()["event"], "before");
    }

    redis.stop();
    wait_until("the bridge to notice", || stapes.log().contains("redis pub/sub connection lost"));
    // Local traffic goes on: HTTP API triggers and new WebSockets.
    let reply = trigger(stapes.port, &json!({"name": "local", "channel": "news", "data": "l"}));
    assert_eq!(reply.status, 200, "{}", reply.body);
    for c in &mut clients {
        assert_eq!(c.event()["event"], "local");
    }
    let mut late = stapes.client("news");
    assert!(stapes.alive());

    redis.restart();
    wait_until("the bridge to subscribe again", || redis.subscribers(PUSHER) >= 1);
    publish(&redis, "after");
    for c in clients.iter_mut().chain(std::iter::once(&mut late)) {
        assert_eq!(c.event()["event"], "after");
    }
    // The list consumer came back too.
    let _: i64 = redis.cmd(&["RPUSH", QUEUE, &incus_message("after")]);
    wait_until("the list to be consumed after the restart", || {
        redis.llen(QUEUE) == 0 && redis.llen(PROCESSING) == 0 && stapes.log().contains(ROUTED)
    });
    let log = stapes.log();
    assert_eq!(log.matches("redis pub/sub connection lost").count(), 1, "logged once: {log}");
    assert!(
        log.matches("redis pub/sub unavailable").count() <= 1,
        "a retry loop does not log each attempt: {log}"
    );
}

#[test]
fn starts_without_redis_and_connects_when_it_appears() {
    let port = free_port();
    let mut stapes = Stapes::start_at(&format!("redis://127.0.0.1:{port}"));
    let mut c = stapes.client("news");
    let reply = trigger(stapes.port, &json!({"name": "local", "channel": "news", "data": "l"}));
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(c.event()["event"], "local");
    wait_until("the failure to be logged", || stapes.log().contains("redis pub/sub unavailable"));
    assert!(stapes.alive());

    let redis = Redis::start_on(port);
    wait_until("the bridge to subscribe", || redis.subscribers(PUSHER) >= 1);
    let payload = json!({"app_id": APP_ID, "channel": "news", "name": "late", "data": "d"});
    redis.publish(PUSHER, &payload.to_string());
    assert_eq!(c.event()["event"], "late");
    let log = stapes.log();
    assert_eq!(log.matches("redis pub/sub unavailable").count(), 1, "logged once: {log}");
    assert!(log.contains("redis pub/sub connected"), "{log}");
}

#[test]
fn cache_channel_events_from_redis_are_replayed_to_later_subscribers() {
    let redis = Redis::start();
    let stapes = Stapes::start(&redis);
    let channels = ["cache-prices", "private-cache-desk", "presence-cache-floor"];
    // A live subscriber per channel: once it has the event, the channel's
    // owner has stored it (it stores before it broadcasts).
    let mut live: Vec<Client> = channels.iter().map(|_| stapes.ws_client()).collect();
    for (c, channel) in live.iter_mut().zip(channels) {
        if channel.starts_with("presence-") {
            c.join(channel, "watcher");
        } else {
            assert_eq!(c.subscribe(channel)["event"], "pusher_internal:subscription_succeeded");
        }
        assert_eq!(c.event()["event"], "pusher:cache_miss", "{channel}: nothing cached yet");
    }
    wait_until("the bridge to subscribe", || redis.subscribers(PUSHER) >= 1);

    // One publish to a plain and three cache channels, then a later one to
    // the first cache channel: the replay is the last event.
    let payload = json!({"app_id": APP_ID, "channels": ["news", "cache-prices",
        "private-cache-desk", "presence-cache-floor"], "name": "tick", "data": "1"});
    redis.publish(PUSHER, &payload.to_string());
    let payload = json!({"app_id": APP_ID, "channel": "cache-prices", "name": "tick", "data": "2"});
    redis.publish(PUSHER, &payload.to_string());
    for (c, channel) in live.iter_mut().zip(channels) {
        assert_eq!(c.event(), event("tick", channel, "1"));
    }
    assert_eq!(live[0].event(), event("tick", "cache-prices", "2"));

    // Several late subscribers, so that both shards replay.
    for n in 0..6 {
        for (channel, data) in [("cache-prices", "2"), ("private-cache-desk", "1")] {
            let mut late = stapes.ws_client();
            assert_eq!(late.subscribe(channel)["event"], "pusher_internal:subscription_succeeded");
            assert_eq!(late.event(), event("tick", channel, data), "late subscriber {n}");
        }
        let mut late = stapes.ws_client();
        let joined = late.join("presence-cache-floor", &format!("late-{n}"));
        assert_eq!(joined["event"], "pusher_internal:subscription_succeeded");
        assert_eq!(late.event(), event("tick", "presence-cache-floor", "1"));
    }
    // A cache channel nobody published to still misses.
    let mut late = stapes.ws_client();
    late.subscribe("cache-empty");
    assert_eq!(late.event()["event"], "pusher:cache_miss");
}

#[test]
fn bridge_counts_reach_metrics() {
    let redis = Redis::start();
    let stapes = Stapes::start(&redis);
    let mut client = stapes.client("news");
    wait_until("the bridge to subscribe", || {
        redis.subscribers(PUSHER) >= 1 && redis.subscribers("Incus") >= 1
    });
    let good = json!({"app_id": APP_ID, "channel": "news", "name": "update", "data": "x"});
    redis.publish(PUSHER, &good.to_string());
    redis.publish(PUSHER, "not json");
    redis.publish(PUSHER, &good.to_string());
    for _ in 0..2 {
        assert_eq!(client.event(), event("update", "news", "x"));
    }
    redis.publish("Incus", &incus_message("hi"));
    redis.publish("Incus", "{broken");
    redis.publish("Incus", r#"{"command":{"command":"pushios","user":"alice"},"message":{}}"#);
    let want = [
        ("stapes_redis_events_total", 2),
        ("stapes_redis_events_refused_total", 1),
        ("stapes_incus_commands_total{from=\"redis\"}", 2),
        ("stapes_incus_json_errors_total", 1),
        ("stapes_incus_messages_total{target=\"user\"}", 1),
        ("stapes_push_refused_total{platform=\"ios\"}", 1),
        ("stapes_deliveries_total{app=\"1001\"}", 2),
    ];
    wait_until("the bridge's counts in /metrics", || {
        want.iter().all(|&(series, n)| metric(stapes.port, series) == Some(n))
    });
}

#[test]
fn ready_answers_503_until_redis_is_connected_and_again_when_it_goes() {
    let ready = |port: u16| {
        http(port, b"GET /ready HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").status
    };
    // Without Redis there is nothing to wait for, and no Redis gauge.
    let alone = Server::start();
    assert_eq!(ready(alone.port), 200);
    assert_eq!(metric(alone.port, "stapes_redis_connected"), None);

    // Redis configured but not there yet: alive, not ready.
    let port = free_port();
    let stapes = Stapes::start_at(&format!("redis://127.0.0.1:{port}"));
    assert_eq!(http(stapes.port, b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n").status, 200);
    assert_eq!(ready(stapes.port), 503);
    assert_eq!(metric(stapes.port, "stapes_redis_connected"), Some(0));
    let mut redis = Redis::start_on(port);
    wait_until("ready once the bridge is connected", || ready(stapes.port) == 200);
    assert_eq!(metric(stapes.port, "stapes_redis_connected"), Some(1));
    redis.stop();
    wait_until("not ready once Redis is gone", || ready(stapes.port) == 503);
    assert_eq!(metric(stapes.port, "stapes_redis_connected"), Some(0));
}
