//! Chaos against the real binary: Redis and stapes SIGKILLed while the
//! Incus list is being taken, a consumer that never reads, and SIGTERM
//! under load. Every command carries a sequence number, so loss,
//! duplication and reordering are counted, not guessed. Nothing waits for
//! a fixed time: progress is seen in what the clients read, in Redis, or
//! in `/metrics`, each with a generous deadline.

#![allow(clippy::unwrap_used, clippy::disallowed_methods)]

mod common;

use std::{
    collections::BTreeSet,
    io::{ErrorKind, Read, Write},
    net::TcpStream,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread,
};

use common::*;
use serde_json::{Value, json};
use tungstenite::{Message, WebSocket};

type Ws = WebSocket<TcpStream>;

const QUEUE: &str = "Incus_Queue";
const INSTANCE: &str = "chaos";
const PROCESSING: &str = "Incus_Queue:processing:chaos";
const USER: &str = "alice";

/// Two shards with the bridge on `redis`, `extra` under `server:`.
fn yaml(redis: &Redis, extra: &str) -> String {
    config(extra, "")
        + "incus:\n  connection_timeout: 60\n"
        + &format!(
            "redis:\n  url: {}\n  instance: {INSTANCE}\n  reconnect_max_ms: 200\n",
            redis.url()
        )
}

fn start(yaml: &str) -> Server {
    Server::start_binary(yaml, &[("STAPES_LOG", "info")])
}

/// An Incus `/socket` client signed in as [`USER`].
fn incus_socket(port: u16) -> Ws {
    let mut ws = ws_connect(port, "/socket");
    send(&mut ws, json!({"command": {"command": "authenticate", "user": USER}}));
    ws
}

fn send(ws: &mut Ws, v: Value) {
    ws.send(Message::text(v.to_string())).unwrap();
}

fn message(event: &str, n: u64) -> Value {
    json!({"command": {"command": "message", "user": USER}, "message": {"event": event, "data": {"n": n}}})
}

/// Waits until the socket is registered: a message it sends to its own
/// user goes out through Redis and comes back only once it is.
fn ready(ws: &mut Ws) {
    send(ws, message("ready", 0));
    while let Some((event, _)) = recv(ws) {
        if event == "ready" {
            return;
        }
    }
    panic!("the socket closed before its own message came back");
}

/// The next message's event and `data.n`; `None` once the connection is
/// closed, reset or dead.
fn recv(ws: &mut Ws) -> Option<(String, u64)> {
    loop {
        match ws.read() {
            Ok(Message::Text(t)) => {
                let v: Value = serde_json::from_str(t.trim_end()).unwrap();
                let event = v["event"].as_str().unwrap_or_default().to_owned();
                return Some((event, v["data"]["n"].as_u64().unwrap_or(0)));
            }
            Ok(Message::Close(_)) => return None,
            Ok(_) => {}
            Err(tungstenite::Error::Io(e)) if e.kind() == ErrorKind::WouldBlock => {
                panic!("no message within {WAIT:?}")
            }
            Err(_) => return None,
        }
    }
}

/// Sequence numbers of `seq` messages, until `done` says enough or the
/// connection ends; `stop_at` as an event name ends it too.
fn read_seqs(ws: &mut Ws, stop_at: &str, mut done: impl FnMut(&[u64]) -> bool) -> Vec<u64> {
    let mut got = Vec::new();
    while !done(&got) {
        match recv(ws) {
            Some((event, n)) if event == "seq" => got.push(n),
            Some((event, _)) if event == stop_at => break,
            Some(_) => {}
            None => break,
        }
    }
    got
}

/// What a backend does: RPUSHes commands `seqs` (one pipeline).
fn push_commands(redis: &Redis, seqs: impl Iterator<Item = u64>) {
    let mut pipe = redis::pipe();
    for n in seqs {
        pipe.cmd("RPUSH").arg(QUEUE).arg(message("seq", n).to_string()).ignore();
    }
    let () = pipe.query(&mut redis.con()).unwrap();
}

/// The sequence numbers waiting in `list`, head first.
fn list_seqs(redis: &Redis, list: &str) -> Vec<u64> {
    let items: Vec<String> = redis.cmd(&["LRANGE", list, "0", "-1"]);
    items
        .iter()
        .map(|s| {
            serde_json::from_str::<Value>(s).unwrap()["message"]["data"]["n"].as_u64().unwrap()
        })
        .collect()
}

fn duplicates(seqs: &[u64]) -> Vec<u64> {
    let mut seen = BTreeSet::new();
    seqs.iter().copied().filter(|n| !seen.insert(*n)).collect()
}

#[test]
fn redis_sigkill_during_list_ingestion_loses_and_duplicates_nothing() {
    const N: u64 = 2_000;
    let mut redis = Redis::start_persistent();
    let server = start(&yaml(&redis, ""));
    let mut alice = incus_socket(server.port);
    ready(&mut alice);
    push_commands(&redis, 0..N / 2);
    let mut got = read_seqs(&mut alice, "", |got| got.len() >= 100);
    let waiting = redis.llen(QUEUE);
    assert!(waiting > 0, "the kill must land while the list is being taken");
    redis.kill();
    redis.restart();
    // Pushed after the restart, by a backend that found Redis back.
    push_commands(&redis, N / 2..N);
    push_commands_marker(&redis);
    got.extend(read_seqs(&mut alice, "end", |_| false));
    assert_eq!(duplicates(&got), Vec::<u64>::new(), "delivered twice");
    let missing: Vec<u64> = (0..N).filter(|n| !got.contains(n)).collect();
    assert_eq!(missing, Vec::<u64>::new(), "lost ({} were waiting at the kill)", waiting);
    assert!(got.windows(2).all(|w| w[0] < w[1]), "out of order");
    wait_until("the lists to be empty", || redis.llen(QUEUE) == 0 && redis.llen(PROCESSING) == 0);
    assert!(server.output().contains("redis list consumer lost"), "{}", server.output());
}

/// RPUSHes the `end` marker, which the list hands over after everything
/// pushed before it.
fn push_commands_marker(redis: &Redis) {
    redis.rpush(QUEUE, &message("end", 0).to_string());
}

#[test]
fn stapes_sigkill_during_list_ingestion_leaves_the_rest_to_the_next_run() {
    const N: u64 = 5_000;
    let redis = Redis::start();
    let yaml = yaml(&redis, "");
    let mut first = start(&yaml);
    let mut alice = incus_socket(first.port);
    ready(&mut alice);
    push_commands(&redis, 0..N);
    let mut before = read_seqs(&mut alice, "", |got| got.len() >= 100);
    first.kill();
    // What the killed node had already written is still readable.
    before.extend(read_seqs(&mut alice, "", |_| false));
    // Redis takes no writes until the next node's client is in, so that the
    // next node cannot hand commands to a user with no socket yet.
    let _: String = redis.cmd(&["CLIENT", "PAUSE", "60000", "WRITE"]);
    // A command taken but not finished is moved back to the queue's head.
    let mut left = list_seqs(&redis, PROCESSING);
    left.extend(list_seqs(&redis, QUEUE));
    assert!(!left.is_empty(), "the kill must land while the list is being taken");
    let second = start(&yaml);
    let mut alice = incus_socket(second.port);
    // Counted once the socket's second frame is handled, so after its
    // authenticate: Redis is not needed to know it is in.
    send(&mut alice, json!({"command": {"command": "setpage", "page": "/chaos"}}));
    wait_until("the new socket to be signed in", || {
        metric(second.port, "stapes_incus_commands_total{from=\"websocket\"}") >= Some(1)
    });
    let _: String = redis.cmd(&["CLIENT", "UNPAUSE"]);
    push_commands_marker(&redis);
    let after = read_seqs(&mut alice, "end", |_| false);

    // The guarantee (README, "Incus list"): whatever was still in the list,
    // queued or taken but not finished, is delivered by the next run, once
    // and in order; of the commands the killed node had taken, only the
    // one it was handing over may come twice; what it had handed over and
    // not yet written is lost with it.
    assert_eq!(after, left, "the next run delivers exactly what the list held");
    assert!(left.windows(2).all(|w| w[1] == w[0] + 1), "the list keeps its order: {left:?}");
    assert_eq!(left.last(), Some(&(N - 1)));
    assert!(before.windows(2).all(|w| w[0] < w[1]), "in order, once: {before:?}");
    let twice: Vec<u64> = before.iter().copied().filter(|n| left.contains(n)).collect();
    assert!(twice.len() <= 1 && twice.iter().all(|n| Some(n) == left.first()), "{twice:?}");
    let lost: Vec<u64> = (0..left[0]).filter(|n| !before.contains(n)).collect();
    eprintln!(
        "before the kill: {} delivered; in the list: {}; twice: {twice:?}; lost in memory: {lost:?}",
        before.len(),
        left.len()
    );
    wait_until("the lists to be empty", || redis.llen(QUEUE) == 0 && redis.llen(PROCESSING) == 0);
}

/// `VmRSS` of `pid`, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

fn slow_closes(port: u16) -> u64 {
    metric(port, &format!("stapes_slow_consumer_closes_total{{app=\"{APP_ID}\"}}")).unwrap_or(0)
}

#[test]
fn a_consumer_that_never_reads_is_closed_with_4100_and_costs_bounded_memory() {
    const BATCHES: u64 = 500;
    const PER_BATCH: u64 = 10;
    let server = start(&config("", ""));
    let pid = server.pid().unwrap();
    let mut slow = server.ws();
    slow.subscribe("flood");
    let mut fast = server.ws();
    fast.subscribe("flood");
    let seen = Arc::new(AtomicU64::new(0));
    let reader = {
        let seen = Arc::clone(&seen);
        thread::spawn(move || {
            let mut got = Vec::new();
            loop {
                let v = fast.event();
                if v["event"] == "end" {
                    return got;
                }
                let n: u64 = v["data"].as_str().unwrap()[..8].parse().unwrap();
                got.push(n);
                seen.store(n + 1, Ordering::Release);
            }
        })
    };
    let pad = "x".repeat(8000);
    let mut peak = 0;
    for b in 0..BATCHES {
        let batch: Vec<Value> = (0..PER_BATCH)
            .map(|i| {
                let n = b * PER_BATCH + i;
                json!({"name": "e", "channel": "flood", "data": format!("{n:08} {pad}")})
            })
            .collect();
        let body = json!({"batch": batch}).to_string();
        let path = format!("/apps/{APP_ID}/batch_events");
        let reply =
            post(server.port, &signed_path("POST", &path, body.as_bytes(), KEY, SECRET), &body);
        assert_eq!(reply.status, 200, "{}", reply.body);
        // Paced by the reader that keeps up, so only the other one falls
        // behind.
        wait_until("the reading client to keep up", || {
            seen.load(Ordering::Acquire) == (b + 1) * PER_BATCH
        });
        peak = peak.max(rss_kib(pid));
    }
    wait_until("the slow consumer to be closed", || slow_closes(server.port) >= 1);
    peak = peak.max(rss_kib(pid));
    assert_eq!(
        trigger(server.port, &json!({"name": "end", "channel": "flood", "data": "{}"})).status,
        200
    );
    let got = reader.join().unwrap();
    assert_eq!(got, (0..BATCHES * PER_BATCH).collect::<Vec<_>>(), "the reader gets every event");
    assert_eq!(slow_closes(server.port), 1, "only the one that never read");
    assert!(peak < 200 * 1024, "RSS peaked at {peak} KiB");

    // When it finally reads: what the kernel held, then (if the server
    // could still write it) pusher:error 4100 and the close frame.
    let mut last_error = None;
    let close = loop {
        match slow.ws.read() {
            Ok(Message::Text(t)) => {
                let v: Value = serde_json::from_str(&t).unwrap();
                if v["event"] == "pusher:error" {
                    last_error = v["data"]["code"].as_u64();
                }
            }
            Ok(Message::Close(frame)) => break frame.map(|f| u16::from(f.code)),
            Ok(_) => {}
            Err(tungstenite::Error::Io(e)) if e.kind() == ErrorKind::WouldBlock => {
                panic!("the slow consumer's connection was left open")
            }
            Err(_) => break None,
        }
    };
    if let Some(code) = close {
        assert_eq!((last_error, code), (Some(4100), 4100));
    }
    eprintln!("slow consumer: close {close:?}, pusher:error {last_error:?}, peak RSS {peak} KiB");
}

/// One HTTP trigger on a fresh connection, or `false` once the server is
/// gone (refused, reset or not answered with 200).
fn try_trigger(port: u16, name: &str) -> bool {
    let body = json!({"name": name, "channel": "load", "data": "{}"}).to_string();
    let path = format!("/apps/{APP_ID}/events");
    let target = signed_path("POST", &path, body.as_bytes(), KEY, SECRET);
    let raw = format!(
        "POST {target} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else { return false };
    let _ = s.set_read_timeout(Some(WAIT));
    if s.write_all(raw.as_bytes()).is_err() {
        return false;
    }
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    parse_reply(&out).status == 200
}

#[test]
fn sigterm_under_load_closes_everyone_with_4200_exits_0_and_loses_nothing_from_the_list() {
    const CLIENTS: usize = 200;
    const N: u64 = 20_000;
    let redis = Redis::start();
    let mut server = start(&yaml(&redis, ""));
    let port = server.port;
    let mut clients: Vec<Client> = (0..CLIENTS)
        .map(|_| {
            let mut c = server.ws();
            assert_eq!(c.subscribe("load")["event"], "pusher_internal:subscription_succeeded");
            c
        })
        .collect();
    let mut alice = incus_socket(port);
    ready(&mut alice);
    push_commands(&redis, 0..N);
    let received = Arc::new(AtomicU64::new(0));
    let incus = {
        let received = Arc::clone(&received);
        thread::spawn(move || {
            let got = read_seqs(&mut alice, "", |got| {
                received.store(got.len() as u64, Ordering::Release);
                false
            });
            (got, alice)
        })
    };
    let stop = Arc::new(AtomicBool::new(false));
    let published = Arc::new(AtomicU64::new(0));
    let publisher = {
        let (stop, published) = (Arc::clone(&stop), Arc::clone(&published));
        thread::spawn(move || {
            while !stop.load(Ordering::Acquire) && try_trigger(port, "tick") {
                published.fetch_add(1, Ordering::Release);
            }
        })
    };
    wait_until("traffic on both sides", || {
        received.load(Ordering::Acquire) >= 100 && published.load(Ordering::Acquire) >= 20
    });
    let stopping = thread::spawn(move || {
        let stopped = server.terminate();
        (stopped, server)
    });
    for (i, c) in clients.iter_mut().enumerate() {
        let mut error = None;
        let close = loop {
            match c.next() {
                Got::Event(v) if v["event"] == "pusher:error" => error = v["data"]["code"].as_u64(),
                Got::Event(v) => assert_eq!(v["event"], "tick", "client {i}"),
                Got::Close(code) => break code,
            }
        };
        assert_eq!((error, close), (Some(4200), Some(4200)), "client {i}");
    }
    stop.store(true, Ordering::Release);
    publisher.join().unwrap();
    let (stopped, server) = stopping.join().unwrap();
    assert!(stopped.success(), "exit status {stopped}\n{}", server.output());
    let (got, _alice) = incus.join().unwrap();

    // Every command is either delivered or still in Redis for the next run.
    let mut left = list_seqs(&redis, PROCESSING);
    left.extend(list_seqs(&redis, QUEUE));
    let lost: Vec<u64> = (0..N).filter(|n| !got.contains(n) && !left.contains(n)).collect();
    assert_eq!(lost, Vec::<u64>::new(), "taken from the list and never delivered");
    assert_eq!(duplicates(&got), Vec::<u64>::new());
    let twice: Vec<u64> = got.iter().copied().filter(|n| left.contains(n)).collect();
    assert_eq!(twice, Vec::<u64>::new(), "a graceful stop finishes what it took");
    assert!(!left.is_empty(), "SIGTERM must land while the list is being taken");
}
