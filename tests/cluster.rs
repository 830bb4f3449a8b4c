//! Several stapes nodes sharing one Redis behave as one server (issue #12):
//! three nodes in this process (and one binary, where a SIGKILL is the
//! point) on a `redis-server` the test starts on a free loopback port.
//! Clients connect to one node, API calls go to another, and what they see
//! must not depend on the node. "Nothing arrived" is proven with a marker
//! sent after, never by waiting.

#![allow(clippy::unwrap_used, clippy::disallowed_methods)]

mod common;

use std::{
    collections::HashMap,
    io::{BufReader, Write},
    net::TcpListener,
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use common::*;
use serde_json::{Value, json};

/// The config of one node: the test app (with `app_extra` lines), and the
/// shared Redis under the instance name `name`.
fn node_yaml(redis: &Redis, name: &str, app_extra: &str) -> String {
    format!(
        "server:\n  host: 127.0.0.1\n  port: 6001\n  shards: 2\napps:\n  - id: \"{APP_ID}\"\n    \
         key: {KEY}\n    secret: {SECRET}\n    client_events: true\n{app_extra}redis:\n  url: {}\n  \
         instance: {name}\n  reconnect_max_ms: 500\n",
        redis.url()
    )
}

fn nodes(redis: &Redis, n: usize, app_extra: &str) -> Vec<Server> {
    (0..n)
        .map(|i| Server::start_with(&node_yaml(redis, &format!("node-{i}"), app_extra), &[]))
        .collect()
}

fn subscribed(node: &Server, channel: &str) -> Client {
    let mut c = node.ws();
    let ok = c.subscribe(channel);
    assert_eq!(ok["event"], "pusher_internal:subscription_succeeded", "{ok}");
    c
}

fn publish(node: &Server, channel: &str, name: &str, data: &str) {
    let reply = trigger(node.port, &json!({"name": name, "channel": channel, "data": data}));
    assert_eq!(reply.status, 200, "{}", reply.body);
}

fn api(node: &Server, path: &str, query: &[(&str, &str)]) -> Value {
    let reply = get_signed(node.port, &format!("/apps/{APP_ID}{path}"), query, false);
    assert_eq!(reply.status, 200, "{path}: {}", reply.body);
    serde_json::from_str(&reply.body).unwrap()
}

fn signin(c: &mut Client, user_data: &str) -> Value {
    let auth = sign_auth(&format!("{}::user::{user_data}", c.socket_id));
    c.send(json!({"event":"pusher:signin","data":{"auth":auth,"user_data":user_data}}));
    c.event()
}

/// The next event that is not a `subscription_count` (which nodes send as
/// their counts change, in an order across nodes that is not the point).
fn next_event(c: &mut Client) -> Value {
    loop {
        let e = c.event();
        if e["event"] != "pusher_internal:subscription_count" {
            return e;
        }
    }
}

/// Redis's count of calls of `command` so far.
fn redis_calls(redis: &Redis, command: &str) -> u64 {
    let info: String = redis.cmd(&["INFO", "commandstats"]);
    let prefix = format!("cmdstat_{command}:calls=");
    info.lines().find_map(|l| l.strip_prefix(&prefix)?.split(',').next()?.parse().ok()).unwrap_or(0)
}

#[test]
fn events_reach_every_subscriber_on_every_node_once_and_in_order() {
    let redis = Redis::start();
    let nodes = nodes(&redis, 3, "");
    let mut subs: Vec<Client> =
        nodes.iter().flat_map(|n| [subscribed(n, "news"), subscribed(n, "news")]).collect();
    // Three publishers, one through each node, taking turns: each one's
    // order is the order everyone sees (README, "Running a cluster": a
    // node's own subscribers are served at once, so two publishers' events
    // may interleave differently on different nodes).
    for i in 0..60 {
        publish(&nodes[i % 3], "news", "tick", &format!("{} {i}", i % 3));
    }
    for node in &nodes {
        publish(node, "news", "done", "");
    }
    for (at, c) in subs.iter_mut().enumerate() {
        let mut seen: Vec<Vec<usize>> = vec![Vec::new(); 3];
        let mut done = 0;
        while done < 3 {
            let e = c.event();
            if e["event"] == "done" {
                done += 1;
                continue;
            }
            let data = e["data"].as_str().unwrap();
            let (publisher, i) = data.split_once(' ').unwrap();
            seen[publisher.parse::<usize>().unwrap()].push(i.parse().unwrap());
        }
        // Each publisher's "done" comes after its ticks: by the last one,
        // every tick is in, each once and in its publisher's order.
        for (p, got) in seen.iter().enumerate() {
            let sent: Vec<usize> = (0..60).filter(|i| i % 3 == p).collect();
            assert_eq!(*got, sent, "subscriber {at}, publisher {p}");
        }
    }
    // One publisher through several nodes, each request after the last
    // one's answer: subscribers on a node it did not use see its order too
    // (a publish is answered once Redis has it).
    let mut far = subscribed(&nodes[2], "far");
    for i in 0..30 {
        publish(&nodes[i % 2], "far", "tick", &i.to_string());
    }
    for i in 0..30 {
        assert_eq!(far.event()["data"], i.to_string());
    }
}

#[test]
fn a_publish_costs_one_redis_publish_and_reaches_only_nodes_with_subscribers() {
    let redis = Redis::start();
    let nodes = nodes(&redis, 3, "");
    let mut b = subscribed(&nodes[1], "only-b");
    let received = "stapes_cluster_events_received_total";
    let before = redis_calls(&redis, "publish");
    for i in 0..100 {
        publish(&nodes[0], "only-b", "tick", &i.to_string());
    }
    for i in 0..100 {
        assert_eq!(b.event()["data"], i.to_string());
    }
    // One PUBLISH per event, whatever the number of nodes.
    assert_eq!(redis_calls(&redis, "publish") - before, 100);
    assert_eq!(metric(nodes[1].port, received), Some(100));
    // Node 2 has no subscriber: it was never sent the channel's traffic.
    assert_eq!(metric(nodes[2].port, received), Some(0));
    assert_eq!(metric(nodes[0].port, "stapes_cluster_events_published_total"), Some(100));
}

#[test]
fn client_events_and_server_to_user_events_cross_nodes() {
    let redis = Redis::start();
    let nodes = nodes(&redis, 2, "");
    let mut a = subscribed(&nodes[0], "private-chat");
    let mut b = subscribed(&nodes[1], "private-chat");
    a.send(json!({"event":"client-hi","channel":"private-chat","data":{"n":1}}));
    let got = b.event();
    assert_eq!(
        (got["event"].as_str(), data_of(&got)["n"].as_u64()),
        (Some("client-hi"), Some(1)),
        "{got}"
    );
    // The sender does not get its own event: the marker comes first.
    publish(&nodes[1], "private-chat", "marker", "");
    assert_eq!(a.event()["event"], "marker");
    assert_eq!(b.event()["event"], "marker");

    let mut user = nodes[1].ws();
    assert_eq!(signin(&mut user, r#"{"id":"u1"}"#)["event"], "pusher:signin_success");
    // As pusher-js does after signing in (spec §10.3); the SDKs' sendToUser
    // publishes on the channel through another node.
    let ok = user.subscribe("#server-to-user-u1");
    assert_eq!(ok["event"], "pusher_internal:subscription_succeeded", "{ok}");
    publish(&nodes[0], "#server-to-user-u1", "note", "{\"x\":1}");
    let got = user.event();
    assert_eq!(
        (got["event"].as_str(), got["channel"].as_str()),
        (Some("note"), Some("#server-to-user-u1")),
        "{got}"
    );
}

#[test]
fn the_http_api_sees_the_whole_cluster_from_any_node() {
    let redis = Redis::start();
    let nodes = nodes(&redis, 3, "");
    let _news = [
        subscribed(&nodes[0], "news"),
        subscribed(&nodes[0], "news"),
        subscribed(&nodes[1], "news"),
    ];
    let mut members = Vec::new();
    for (node, user) in [(1, "u1"), (2, "u2"), (0, "u2")] {
        let mut c = nodes[node].ws();
        let ok = c.join("presence-room", user);
        assert_eq!(ok["event"], "pusher_internal:subscription_succeeded", "{ok}");
        members.push(c);
    }
    for node in &nodes {
        let news = api(node, "/channels/news", &[("info", "subscription_count")]);
        assert_eq!(news, json!({"occupied": true, "subscription_count": 3}));
        // Presence channels count users, not connections (spec §12.3).
        let room = api(node, "/channels/presence-room", &[("info", "user_count")]);
        assert_eq!(room, json!({"occupied": true, "user_count": 2}));
        let list =
            api(node, "/channels", &[("filter_by_prefix", "presence-"), ("info", "user_count")]);
        assert_eq!(list, json!({"channels": {"presence-room": {"user_count": 2}}}));
        let all = api(node, "/channels", &[]);
        assert_eq!(all, json!({"channels": {"news": {}, "presence-room": {}}}));
        let users = api(node, "/channels/presence-room/users", &[]);
        let mut ids: Vec<&str> =
            users["users"].as_array().unwrap().iter().map(|u| u["id"].as_str().unwrap()).collect();
        ids.sort_unstable();
        assert_eq!(ids, ["u1", "u2"]);
        assert_eq!(api(node, "/channels/empty", &[]), json!({"occupied": false}));
    }
}

#[test]
fn presence_rosters_span_nodes_and_members_come_and_go_once() {
    let redis = Redis::start();
    let nodes = nodes(&redis, 3, "");
    let mut first = nodes[0].ws();
    let roster = data_of(&first.join("presence-room", "u1"));
    assert_eq!(roster["presence"]["ids"], json!(["u1"]));
    let mut second = nodes[1].ws();
    let roster = data_of(&second.join("presence-room", "u2"));
    let mut ids: Vec<&str> =
        roster["presence"]["ids"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    ids.sort_unstable();
    assert_eq!(ids, ["u1", "u2"], "{roster}");
    assert_eq!(roster["presence"]["hash"]["u1"], json!({"name": "u1"}));
    let added = first.event();
    assert_eq!(
        (added["event"].as_str(), data_of(&added)["user_id"].as_str()),
        (Some("pusher_internal:member_added"), Some("u2"))
    );

    // u1 again, on a third node: already a member, nobody hears of it.
    let mut again = nodes[2].ws();
    assert_eq!(
        again.join("presence-room", "u1")["event"],
        "pusher_internal:subscription_succeeded"
    );
    publish(&nodes[2], "presence-room", "marker", "");
    assert_eq!(first.event()["event"], "marker");
    assert_eq!(second.event()["event"], "marker");
    assert_eq!(again.event()["event"], "marker");

    // Its first connection leaves: u1 is still in, through the other one.
    drop(first);
    publish(&nodes[0], "presence-room", "marker-2", "");
    assert_eq!(second.event()["event"], "marker-2");
    drop(again);
    let removed = second.event();
    assert_eq!(
        (removed["event"].as_str(), data_of(&removed)["user_id"].as_str()),
        (Some("pusher_internal:member_removed"), Some("u1")),
        "{removed}"
    );
    wait_until("u1 gone from the roster", || {
        api(&nodes[2], "/channels/presence-room", &[("info", "user_count")])["user_count"] == 1
    });
}

#[test]
fn max_presence_members_holds_across_the_cluster() {
    let redis = Redis::start();
    let nodes = nodes(&redis, 2, "    max_presence_members: 2\n");
    let mut a = nodes[0].ws();
    assert_eq!(a.join("presence-full", "u1")["event"], "pusher_internal:subscription_succeeded");
    let mut b = nodes[1].ws();
    assert_eq!(b.join("presence-full", "u2")["event"], "pusher_internal:subscription_succeeded");
    let mut c = nodes[1].ws();
    let refused = c.join("presence-full", "u3");
    assert_eq!(refused["event"], "pusher:error", "{refused}");
    // A member already in may open another connection.
    let mut again = nodes[0].ws();
    assert_eq!(
        again.join("presence-full", "u2")["event"],
        "pusher_internal:subscription_succeeded"
    );
    // The refused one took no place: after u1 leaves, u3 fits.
    drop(a);
    let removed = next_event(&mut b);
    assert_eq!(removed["event"], "pusher_internal:member_removed", "{removed}");
    let mut d = nodes[0].ws();
    assert_eq!(d.join("presence-full", "u3")["event"], "pusher_internal:subscription_succeeded");
}

#[test]
fn subscription_counts_are_the_clusters() {
    let redis = Redis::start();
    let nodes = nodes(&redis, 2, "    subscription_count: true\n");
    let mut a = subscribed(&nodes[0], "news");
    let count = |c: &mut Client| {
        let e = c.event();
        assert_eq!(e["event"], "pusher_internal:subscription_count", "{e}");
        data_of(&e)["subscription_count"].as_u64().unwrap()
    };
    assert_eq!(count(&mut a), 1);
    let mut b = subscribed(&nodes[1], "news");
    assert_eq!(count(&mut a), 2);
    assert_eq!(count(&mut b), 2);
    drop(b);
    assert_eq!(count(&mut a), 1);
}

#[test]
fn watchlists_and_terminations_cross_nodes() {
    let redis = Redis::start();
    let nodes = nodes(&redis, 3, "");
    let mut watcher = nodes[0].ws();
    assert_eq!(
        signin(&mut watcher, r#"{"id":"w","watchlist":["u2"]}"#)["event"],
        "pusher:signin_success"
    );
    let mut u2 = nodes[1].ws();
    assert_eq!(signin(&mut u2, r#"{"id":"u2"}"#)["event"], "pusher:signin_success");
    let online = watcher.event();
    assert_eq!(online["event"], "pusher_internal:watchlist_events", "{online}");
    assert_eq!(data_of(&online)["events"], json!([{"name": "online", "user_ids": ["u2"]}]));
    // A second connection of u2 elsewhere changes nothing for the watcher.
    let mut u2_again = nodes[2].ws();
    assert_eq!(signin(&mut u2_again, r#"{"id":"u2"}"#)["event"], "pusher:signin_success");
    // A watcher signing in later hears at once who is online anywhere.
    let mut late = nodes[2].ws();
    assert_eq!(
        signin(&mut late, r#"{"id":"w2","watchlist":["u2"]}"#)["event"],
        "pusher:signin_success"
    );
    let online = late.event();
    assert_eq!(data_of(&online)["events"], json!([{"name": "online", "user_ids": ["u2"]}]));

    let path = format!("/apps/{APP_ID}/users/u2/terminate_connections");
    let reply = post(nodes[0].port, &signed_path("POST", &path, b"{}", KEY, SECRET), "{}");
    assert_eq!(reply.status, 200, "{}", reply.body);
    for c in [&mut u2, &mut u2_again] {
        loop {
            match c.next() {
                Got::Close(code) => {
                    assert_eq!(code, Some(4009));
                    break;
                }
                Got::Event(e) => assert_eq!(e["event"], "pusher:error", "{e}"),
            }
        }
    }
    // Offline once, after the last of u2's connections, and nothing before.
    let offline = watcher.event();
    assert_eq!(
        data_of(&offline)["events"],
        json!([{"name": "offline", "user_ids": ["u2"]}]),
        "{offline}"
    );
    assert_eq!(data_of(&late.event())["events"], json!([{"name": "offline", "user_ids": ["u2"]}]));
}

#[test]
fn a_cache_channel_replays_its_last_event_on_any_node() {
    let redis = Redis::start();
    let nodes = nodes(&redis, 3, "");
    publish(&nodes[0], "cache-prices", "price", "{\"p\":1}");
    publish(&nodes[0], "cache-prices", "price", "{\"p\":2}");
    let mut late = subscribed(&nodes[1], "cache-prices");
    let replay = late.event();
    assert_eq!(
        (replay["event"].as_str(), replay["data"].as_str()),
        (Some("price"), Some("{\"p\":2}")),
        "{replay}"
    );
    let info = api(&nodes[2], "/channels/cache-prices", &[("info", "cache")]);
    assert_eq!(info["cache"]["data"], "{\"p\":2}", "{info}");
    // Live events after the replay: each once.
    publish(&nodes[2], "cache-prices", "price", "{\"p\":3}");
    publish(&nodes[0], "cache-prices", "done", "");
    assert_eq!(late.event()["data"], "{\"p\":3}");
    assert_eq!(late.event()["event"], "done");
    let mut empty = nodes[2].ws();
    assert_eq!(empty.subscribe("cache-empty")["event"], "pusher_internal:subscription_succeeded");
    assert_eq!(empty.event()["event"], "pusher:cache_miss");
    // A Redis-published event of a cache channel is stored once and
    // delivered once on each node.
    let mut other = subscribed(&nodes[0], "cache-prices");
    assert_eq!(other.event()["event"], "done");
    let payload =
        json!({"app_id": APP_ID, "channel": "cache-prices", "name": "price", "data": "{\"p\":4}"});
    redis.publish("stapes:pusher", &payload.to_string());
    assert_eq!(late.event()["data"], "{\"p\":4}");
    assert_eq!(other.event()["data"], "{\"p\":4}");
    wait_until("the Redis-published event stored", || {
        api(&nodes[1], "/channels/cache-prices", &[("info", "cache")])["cache"]["data"]
            == "{\"p\":4}"
    });
    publish(&nodes[1], "cache-prices", "end", "");
    assert_eq!(late.event()["event"], "end");
    assert_eq!(other.event()["event"], "end");
}

/// A loopback webhook receiver: each POST's events, answered 200.
fn hook_receiver() -> (u16, mpsc::Receiver<Value>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { return };
            let tx = tx.clone();
            thread::spawn(move || {
                let mut writer = stream.try_clone().unwrap();
                let mut reader = BufReader::new(stream);
                while let Some(request) = read_request(&mut reader) {
                    let body: Value = serde_json::from_slice(&request.body).unwrap();
                    for event in body["events"].as_array().unwrap() {
                        let _ = tx.send(event.clone());
                    }
                    let ok = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";
                    if writer.write_all(ok).is_err() {
                        return;
                    }
                }
            });
        }
    });
    (port, rx)
}

#[test]
fn webhooks_are_sent_once_per_cluster() {
    let redis = Redis::start();
    let (port, hooks) = hook_receiver();
    let extra = format!(
        "    webhook_delay_ms: 0\n    webhooks:\n      - url: http://127.0.0.1:{port}/hooks\n"
    );
    let nodes = nodes(&redis, 3, &extra);
    let news = [subscribed(&nodes[0], "news"), subscribed(&nodes[1], "news")];
    let mut members = Vec::new();
    for node in [0, 2] {
        let mut c = nodes[node].ws();
        assert_eq!(
            c.join("presence-room", "u1")["event"],
            "pusher_internal:subscription_succeeded"
        );
        members.push(c);
    }
    drop(news);
    drop(members);
    let mut markers = Vec::new();
    for (i, node) in nodes.iter().enumerate() {
        markers.push(subscribed(node, &format!("marker-{i}")));
    }
    // Each node's webhooks go in order, so its marker comes after anything
    // it raised before; all three markers in means nothing is still coming.
    let mut seen: HashMap<(String, String), usize> = HashMap::new();
    let deadline = Instant::now() + SLOW;
    while (0..3)
        .any(|i| !seen.contains_key(&("channel_occupied".to_owned(), format!("marker-{i}"))))
    {
        let left = deadline.saturating_duration_since(Instant::now());
        let event = hooks.recv_timeout(left).expect("webhooks");
        let key = (
            event["name"].as_str().unwrap().to_owned(),
            event["channel"].as_str().unwrap().to_owned(),
        );
        *seen.entry(key).or_default() += 1;
    }
    let count = |name: &str, channel: &str| {
        seen.get(&(name.to_owned(), channel.to_owned())).copied().unwrap_or(0)
    };
    assert_eq!(count("channel_occupied", "news"), 1, "{seen:?}");
    assert_eq!(count("channel_vacated", "news"), 1, "{seen:?}");
    assert_eq!(count("channel_occupied", "presence-room"), 1, "{seen:?}");
    assert_eq!(count("member_added", "presence-room"), 1, "{seen:?}");
    assert_eq!(count("member_removed", "presence-room"), 1, "{seen:?}");
    assert_eq!(count("channel_vacated", "presence-room"), 1, "{seen:?}");
}

#[test]
fn an_apps_quota_holds_across_the_cluster() {
    let redis = Redis::start();
    let nodes = nodes(&redis, 2, "    max_connections: 3\n");
    let _held = [nodes[0].ws(), nodes[0].ws(), nodes[1].ws()];
    // Each node learns the others' counts at its heartbeat.
    wait_until("node 1 refusing the app's fourth connection", || {
        let mut ws = nodes[1].ws_path(&format!("/app/{KEY}?protocol=7"));
        match next(&mut ws) {
            Got::Event(e) if e["event"] == "pusher:error" => {
                assert_eq!(data_of(&e)["code"], 4004, "{e}");
                true
            }
            _ => false,
        }
    });
}

#[test]
fn foreign_messages_on_the_clusters_channels_are_counted_and_ignored() {
    let redis = Redis::start();
    let nodes = nodes(&redis, 2, "");
    let mut c = subscribed(&nodes[1], "news");
    redis.publish(&format!("stapes:ev:{{{APP_ID}:news}}"), "not a node's message");
    redis.publish(&format!("stapes:ctl:{{{APP_ID}}}"), "\u{0}\u{1}");
    publish(&nodes[0], "news", "after", "");
    assert_eq!(c.event()["event"], "after");
    wait_until("both refusals counted", || {
        metric(nodes[1].port, "stapes_cluster_messages_refused_total") == Some(2)
    });
}

#[test]
fn a_killed_node_is_taken_out_of_the_cluster() {
    let redis = Redis::start();
    let mut killed =
        Server::start_binary(&node_yaml(&redis, "doomed", "    subscription_count: true\n"), &[]);
    let survivor =
        Server::start_with(&node_yaml(&redis, "survivor", "    subscription_count: true\n"), &[]);
    let mut watcher = survivor.ws();
    assert_eq!(
        watcher.join("presence-room", "stays")["event"],
        "pusher_internal:subscription_succeeded"
    );
    let mut doomed = killed.ws();
    assert_eq!(
        doomed.join("presence-room", "goes")["event"],
        "pusher_internal:subscription_succeeded"
    );
    let _news = subscribed(&killed, "news");
    assert_eq!(next_event(&mut watcher)["event"], "pusher_internal:member_added");
    killed.kill();
    // The stated bound: silent for 10 s, found at the next 2 s heartbeat.
    // The deadline is twice that, for a loaded machine.
    let bound = Duration::from_secs(12);
    let start = Instant::now();
    watcher.ws.get_ref().set_read_timeout(Some(bound * 2)).unwrap();
    let removed = next_event(&mut watcher);
    assert_eq!(
        (removed["event"].as_str(), data_of(&removed)["user_id"].as_str()),
        (Some("pusher_internal:member_removed"), Some("goes")),
        "{removed}"
    );
    eprintln!("member_removed {:?} after the kill", start.elapsed());
    assert_eq!(api(&survivor, "/channels/news", &[]), json!({"occupied": false}));
    let room = api(&survivor, "/channels/presence-room", &[("info", "user_count")]);
    assert_eq!(room, json!({"occupied": true, "user_count": 1}));
    // A new node under the dead one's name starts clean.
    let restarted = Server::start_with(&node_yaml(&redis, "doomed", ""), &[]);
    assert_eq!(api(&restarted, "/channels/news", &[]), json!({"occupied": false}));
}

#[test]
fn a_restarted_node_leaves_no_ghosts() {
    let redis = Redis::start();
    let mut old = Server::start_binary(&node_yaml(&redis, "phoenix", ""), &[]);
    let other = Server::start_with(&node_yaml(&redis, "other", ""), &[]);
    let mut watcher = other.ws();
    assert_eq!(
        watcher.join("presence-room", "stays")["event"],
        "pusher_internal:subscription_succeeded"
    );
    let mut ghost = old.ws();
    assert_eq!(
        ghost.join("presence-room", "ghost")["event"],
        "pusher_internal:subscription_succeeded"
    );
    assert_eq!(next_event(&mut watcher)["event"], "pusher_internal:member_added");
    old.kill();
    // Back at once under the same name, long before the others would
    // notice the silence: its earlier members are taken out as it joins.
    let _new = Server::start_with(&node_yaml(&redis, "phoenix", ""), &[]);
    let removed = next_event(&mut watcher);
    assert_eq!(data_of(&removed)["user_id"], "ghost", "{removed}");
    assert_eq!(api(&other, "/channels/presence-room", &[("info", "user_count")])["user_count"], 1);
}

#[test]
fn after_a_redis_restart_nodes_converge_and_kept_events_arrive_in_order() {
    let mut redis = Redis::start();
    let nodes = nodes(&redis, 2, "");
    let mut sub = subscribed(&nodes[1], "news");
    let mut member = nodes[1].ws();
    assert_eq!(
        member.join("presence-room", "u1")["event"],
        "pusher_internal:subscription_succeeded"
    );
    for i in 0..10 {
        publish(&nodes[0], "news", "tick", &i.to_string());
    }
    for i in 0..10 {
        assert_eq!(sub.event()["data"], i.to_string());
    }
    redis.stop();
    // Redis is away: each node keeps serving, and node 0 keeps its events.
    for i in 10..20 {
        publish(&nodes[0], "news", "tick", &i.to_string());
    }
    let mut alone = subscribed(&nodes[0], "news");
    redis.restart();
    for i in 20..30 {
        publish(&nodes[0], "news", "tick", &i.to_string());
    }
    for i in 10..30 {
        assert_eq!(sub.event()["data"], i.to_string(), "in order, none lost, none twice");
    }
    for i in 20..30 {
        assert_eq!(alone.event()["data"], i.to_string());
    }
    // Redis came back empty; the nodes said again what they hold.
    wait_until("the counts restored", || {
        api(&nodes[0], "/channels/news", &[("info", "subscription_count")])["subscription_count"]
            == 2
            && api(&nodes[0], "/channels/presence-room", &[("info", "user_count")])["user_count"]
                == 1
    });
    publish(&nodes[0], "news", "done", "");
    assert_eq!(sub.event()["event"], "done");
    assert_eq!(alone.event()["event"], "done");
}
