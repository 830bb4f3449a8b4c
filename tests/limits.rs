//! At the open-file limit: the real binary under a small `ulimit -n`
//! refuses what it has no room for at once and cleanly (WebSockets with
//! 4100, other connections with 503), keeps room for the HTTP API, and goes
//! on serving the clients it has.

#![allow(clippy::unwrap_used, clippy::disallowed_methods)]

mod common;

use std::{
    io::{Read, Write},
    net::TcpStream,
};

use common::*;
use serde_json::json;

/// Small enough to reach in a test, large enough for the server's reserve.
const OPEN_FILES: u64 = 300;

#[test]
fn at_the_file_limit_new_clients_are_refused_and_publishers_still_served() {
    let mut server = Server::start_binary_limited(&config("", ""), &[], Some(OPEN_FILES));
    let port = server.port;
    let log = server.output();
    assert!(log.contains("server.max_connections is more than this process can open"), "{log}");

    // WebSockets until the node refuses one: refused with the reason and
    // the close code, never left waiting.
    let mut clients = Vec::new();
    let refused = loop {
        let mut ws = ws_connect(port, &format!("/app/{KEY}?protocol=7"));
        let first = event(&mut ws);
        if first["event"] == "pusher:error" {
            break (first, next(&mut ws));
        }
        assert_eq!(first["event"], "pusher:connection_established");
        clients.push(Client { socket_id: String::new(), ws });
        assert!(clients.len() < OPEN_FILES as usize, "never refused: {}", server.output());
    };
    assert_eq!(refused.0["data"]["code"], 4100, "{}", refused.0);
    assert_eq!(refused.1, Got::Close(Some(4100)));
    assert!(clients.len() > OPEN_FILES as usize / 2, "most of the budget is for clients");
    for c in &mut clients {
        c.subscribe("news");
    }

    // The HTTP API still has room: a publish reaches every client.
    let r = trigger(port, &json!({"name": "e", "channel": "news", "data": "one"}));
    assert_eq!(r.status, 200, "{}", r.body);
    for c in &mut clients {
        assert_eq!(c.event()["data"], "one");
    }

    // Plain connections past the whole budget get a 503 at once.
    let mut held = Vec::new();
    let answer = loop {
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(WAIT)).unwrap();
        // A refused connection is answered before it asks (the 503 may
        // already be waiting); an admitted one answers the health check.
        // Either way the first reply tells which, with no race on when
        // the server got to the accept.
        let _ = s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n");
        let mut reply = [0u8; 256];
        let n = s.read(&mut reply).unwrap_or(0);
        let reply = String::from_utf8_lossy(&reply[..n]).into_owned();
        if !reply.starts_with("HTTP/1.1 200") {
            break reply;
        }
        held.push(s);
        assert!(held.len() < OPEN_FILES as usize, "never refused");
    };
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    let refusals = server.output();
    assert!(refusals.contains("refused with 503"), "{refusals}");

    // Those that got in are still served once room is made.
    drop(held);
    wait_until("room for a publisher again", || {
        trigger(port, &json!({"name": "e", "channel": "news", "data": "two"})).status == 200
    });
    for c in &mut clients {
        assert_eq!(c.event()["data"], "two");
    }
    assert!(server.terminate().success());
}

/// The kernel's descriptor table is sized for the whole budget at start-up,
/// so that no `accept` has to grow it (which, in a process with several
/// threads, waits for an RCU grace period: a stalled shard).
#[test]
fn the_descriptor_table_is_sized_for_the_budget_at_start_up() {
    const LIMIT: u64 = 5_000;
    let mut server = Server::start_binary_limited(&config("", ""), &[], Some(LIMIT));
    let pid = server.pid().expect("a process");
    let slots: u64 = status_field(pid, "FDSize").parse().unwrap();
    // The default max_connections is above this limit, so every
    // descriptor the process may open is budgeted; a server that had not
    // sized its table would hold a few hundred slots here (256).
    assert!(slots >= LIMIT, "FDSize {slots} for a budget of {LIMIT}");
    assert!(server.terminate().success());
}
