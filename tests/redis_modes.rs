//! The bridge and the cluster side in each Redis deployment `redis.mode`
//! names, against real `redis-server` processes each test starts on free
//! loopback ports: a TLS-only server (a throwaway CA made at test time),
//! a master with a replica and a sentinel (and a failover), and a
//! three-node Redis Cluster. Every wait is for an event or a state Redis
//! reports, never a fixed sleep.

#![allow(clippy::unwrap_used, clippy::disallowed_methods)]

mod common;

use std::net::TcpStream;

use common::*;
use serde_json::{Value, json};
use tungstenite::{Message, WebSocket};

const PUSHER: &str = "stapes:pusher";

/// A node on the test app, its `redis:` section's lines given.
fn node(redis_lines: &str) -> Server {
    let yaml = config("", "") + "redis:\n" + redis_lines + "  reconnect_max_ms: 200\n";
    Server::start_with(&yaml, &[])
}

fn subscribed(node: &Server, channel: &str) -> Client {
    let mut c = node.ws();
    let ok = c.subscribe(channel);
    assert_eq!(ok["event"], "pusher_internal:subscription_succeeded", "{ok}");
    c
}

fn publish_http(node: &Server, channel: &str, name: &str, data: &str) {
    let reply = trigger(node.port, &json!({"name": name, "channel": channel, "data": data}));
    assert_eq!(reply.status, 200, "{}", reply.body);
}

fn pusher_event(channel: &str, name: &str, data: &str) -> String {
    json!({"app_id": APP_ID, "channel": channel, "name": name, "data": data}).to_string()
}

/// The next event that is not a `subscription_count`.
fn next_event(c: &mut Client) -> Value {
    loop {
        let e = c.event();
        if e["event"] != "pusher_internal:subscription_count" {
            return e;
        }
    }
}

/// An Incus `/socket` client authenticated as `user`, registered once a
/// message it sends itself comes back.
fn incus_socket(node: &Server, user: &str) -> WebSocket<TcpStream> {
    let mut ws = node.ws_path("/socket");
    let auth = json!({"command": {"command": "authenticate", "user": user}});
    ws.send(Message::text(auth.to_string())).unwrap();
    ws.send(Message::text(incus_message(user, "in"))).unwrap();
    assert_eq!(incus_event(&mut ws), "in");
    ws
}

fn incus_message(user: &str, event: &str) -> String {
    json!({"command": {"command": "message", "user": user},
        "message": {"event": event, "data": {"n": 1}, "time": 1}})
    .to_string()
}

fn incus_event(ws: &mut WebSocket<TcpStream>) -> String {
    loop {
        if let Message::Text(t) = ws.read().unwrap() {
            let v: Value = serde_json::from_str(t.trim_end()).unwrap();
            return v["event"].as_str().unwrap().to_owned();
        }
    }
}

#[test]
fn tls_bridges_redis_events_and_joins_two_nodes() {
    let dir = std::env::temp_dir().join(format!("stapes-tls-{}", std::process::id()));
    let tls = TlsFiles::generate(&dir);
    let redis = Redis::start_tls(&tls);
    let lines = |name: &str| {
        format!("  url: {}\n  tls_ca_file: {}\n  instance: {name}\n", redis.url(), tls.ca.display())
    };
    let (a, b) = (node(&lines("tls-a")), node(&lines("tls-b")));
    let mut on_a = subscribed(&a, "news");
    let mut on_b = subscribed(&b, "news");
    wait_until("both bridges to subscribe over TLS", || redis.subscribers(PUSHER) >= 2);
    redis.publish(PUSHER, &pusher_event("news", "from-redis", "1"));
    for c in [&mut on_a, &mut on_b] {
        assert_eq!(next_event(c)["event"], "from-redis");
    }
    // The cluster side over the same TLS: A's subscriber is local, B's is
    // reached through Redis.
    publish_http(&a, "news", "from-a", "2");
    assert_eq!(next_event(&mut on_a)["event"], "from-a");
    assert_eq!(next_event(&mut on_b)["event"], "from-a");
    drop((a, b));
    let _ = std::fs::remove_dir_all(&dir);
}

/// A sentinel's answer for the master's port.
fn master_port(sentinel: &Redis) -> u16 {
    let (_, port): (String, u16) =
        sentinel.cmd(&["SENTINEL", "get-master-addr-by-name", "mymaster"]);
    port
}

#[test]
fn sentinel_mode_finds_the_master_and_follows_a_failover() {
    // The servers want a password, the sentinel has none (a common setup):
    // redis.password goes to both, and the sentinel, refusing it, is asked
    // without it.
    let master = Redis::start_with_password("s3cret");
    let replica = Redis::start_replica_of(&master);
    wait_until("the replica to sync", || {
        replica.cmd::<String>(&["INFO", "replication"]).contains("master_link_status:up")
    });
    let sentinel = Redis::start_sentinel(&master, "mymaster");
    wait_until("the sentinel to see the replica", || {
        sentinel.cmd::<Vec<redis::Value>>(&["SENTINEL", "REPLICAS", "mymaster"]).len() == 1
    });
    let lines = format!(
        "  mode: sentinel\n  nodes: [{}]\n  sentinel_master: mymaster\n  password: s3cret\n  \
         instance: s\n",
        sentinel.addr()
    );
    let stapes = node(&lines);
    let mut c = subscribed(&stapes, "news");
    let mut alice = incus_socket(&stapes, "alice");
    wait_until("the bridge to subscribe on the master", || master.subscribers(PUSHER) >= 1);
    master.publish(PUSHER, &pusher_event("news", "before", "1"));
    assert_eq!(next_event(&mut c)["event"], "before");
    master.rpush("Incus_Queue", &incus_message("alice", "list-before"));
    assert_eq!(incus_event(&mut alice), "list-before");

    // No replica is good enough until the sentinel has its INFO: asked
    // again until the failover starts.
    wait_until("the failover to start", || {
        let mut con = sentinel.con();
        redis::cmd("SENTINEL").arg("FAILOVER").arg("mymaster").query::<String>(&mut con).is_ok()
    });
    wait_until("the sentinel to name the replica", || master_port(&sentinel) == replica.port);
    wait_until("the replica to be promoted", || {
        let role: Vec<redis::Value> = replica.cmd(&["ROLE"]);
        matches!(role.first(), Some(redis::Value::BulkString(r)) if r == b"master")
    });
    // stapes subscribes again on the new master (the old one, demoted,
    // drops its clients), and its list consumer takes from there.
    wait_until("the bridge to subscribe on the new master", || replica.subscribers(PUSHER) >= 1);
    replica.publish(PUSHER, &pusher_event("news", "after", "2"));
    assert_eq!(next_event(&mut c)["event"], "after");
    replica.rpush("Incus_Queue", &incus_message("alice", "list-after"));
    assert_eq!(incus_event(&mut alice), "list-after");
}

#[test]
fn redis_cluster_mode_delivers_across_nodes_with_presence_and_the_incus_list() {
    let redis: Vec<Redis> = (0..3).map(|_| Redis::start_cluster_node()).collect();
    create_cluster(&redis);
    let seeds: Vec<String> = redis.iter().map(Redis::addr).collect();
    let lines = |name: &str, queue: &str| {
        format!(
            "  mode: cluster\n  nodes: [{}]\n  instance: {name}\n  incus_queue: {queue}\n",
            seeds.join(", ")
        )
    };
    // B takes its Incus commands from another list, so that A alone
    // consumes Incus_Queue: a list command reaches the sockets of the node
    // that took it only (as in Incus).
    let a = node(&lines("node-a", "Incus_Queue"));
    let b = node(&lines("node-b", "Incus_Queue_B"));
    let mut on_b = subscribed(&b, "news");
    let mut also_b = subscribed(&b, "other");
    let bridges = || redis.iter().map(|r| r.subscribers(PUSHER)).sum::<i64>();
    wait_until("both bridges to subscribe on a cluster node", || bridges() >= 2);

    // Cross-node: an HTTP publish on A reaches B's subscriber.
    publish_http(&a, "news", "from-a", "1");
    assert_eq!(next_event(&mut on_b)["event"], "from-a");
    // A Redis-published Pusher event, on any one node, reaches B.
    redis[2].publish(PUSHER, &pusher_event("other", "from-redis", "2"));
    assert_eq!(next_event(&mut also_b)["event"], "from-redis");

    // Presence: the roster spans the nodes, and either node's API says so.
    let mut u1 = a.ws();
    let ok = u1.join("presence-x", "u1");
    assert_eq!(ok["event"], "pusher_internal:subscription_succeeded", "{ok}");
    let mut u2 = b.ws();
    let roster = data_of(&u2.join("presence-x", "u2"));
    let mut ids: Vec<&str> =
        roster["presence"]["ids"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    ids.sort_unstable();
    assert_eq!(ids, ["u1", "u2"]);
    for node in [&a, &b] {
        let path = format!("/apps/{APP_ID}/channels/presence-x/users");
        let reply = get_signed(node.port, &path, &[], false);
        assert_eq!(reply.status, 200, "{}", reply.body);
        let users: Value = serde_json::from_str(&reply.body).unwrap();
        let mut ids: Vec<&str> =
            users["users"].as_array().unwrap().iter().map(|u| u["id"].as_str().unwrap()).collect();
        ids.sort_unstable();
        assert_eq!(ids, ["u1", "u2"]);
    }

    // The Incus list, pushed through a cluster client, reaches a socket on
    // A; the processing list shares the queue's slot and ends empty.
    let mut alice = incus_socket(&a, "alice");
    let cluster =
        redis::cluster::ClusterClient::new(redis.iter().map(Redis::url).collect::<Vec<_>>())
            .unwrap();
    let mut con = cluster.get_connection().unwrap();
    let _: i64 = redis::cmd("RPUSH")
        .arg("Incus_Queue")
        .arg(incus_message("alice", "from-list"))
        .query(&mut con)
        .unwrap();
    assert_eq!(incus_event(&mut alice), "from-list");
    let processing = "{Incus_Queue}:processing:node-a";
    let slot = |key: &str| redis[0].cmd::<i64>(&["CLUSTER", "KEYSLOT", key]);
    assert_eq!(slot(processing), slot("Incus_Queue"));
    wait_until("the processing list to empty", || {
        redis::cmd("LLEN").arg(processing).query::<i64>(&mut con).unwrap() == 0
    });
    // The shards' Incus bookkeeping (many keys, many slots) is written too.
    wait_until("alice in SocketClients", || {
        redis::cmd("SISMEMBER").arg("SocketClients").arg("alice").query::<bool>(&mut con).unwrap()
    });
    // Every command and script kept to one slot: Redis refused none.
    for node in [&a, &b] {
        let log = node.output();
        assert!(!log.contains("CROSSSLOT") && !log.contains("failed in redis"), "{log}");
        assert!(!log.contains("incus updates"), "{log}");
        assert_eq!(metric(node.port, "stapes_cluster_redis_errors_total"), Some(0), "{log}");
    }
}
