//! `GET /ready` while a node drains: the load balancer is told to stop
//! sending it traffic while its clients are still being let go. (Redis's
//! part of readiness is in tests/redis_bridge.rs.)

#![allow(clippy::unwrap_used, clippy::disallowed_methods)]

mod common;

use std::{
    io::{Read, Write},
    net::TcpStream,
};

use common::*;

/// One request on `conn`: the reply's status, or `None` when the node
/// closed the connection instead of answering.
fn ask(conn: &mut TcpStream) -> Option<u16> {
    conn.write_all(b"GET /ready HTTP/1.1\r\nHost: x\r\n\r\n").ok()?;
    let mut buf = vec![0u8; 1024];
    let n = conn.read(&mut buf).ok().filter(|n| *n > 0)?;
    Some(parse_reply(&buf[..n]).status)
}

#[test]
fn a_draining_node_is_never_ready() {
    let mut server = Server::start();
    let mut kept = TcpStream::connect(("127.0.0.1", server.port)).unwrap();
    kept.set_read_timeout(Some(WAIT)).unwrap();
    assert_eq!(ask(&mut kept), Some(200));
    // A client that keeps the drain going until it answers the close.
    let mut client = server.ws();
    server.begin_stop();
    let goodbye = client.event();
    assert_eq!(goodbye["event"], "pusher:error", "{goodbye}");
    assert_eq!(data_of(&goodbye)["code"], 4200, "{goodbye}");
    // Draining: a kept connection is answered 503 or closed, and a new
    // one is refused (the listeners are gone) or answered 503.
    assert_ne!(ask(&mut kept), Some(200));
    if let Ok(mut fresh) = TcpStream::connect(("127.0.0.1", server.port)) {
        fresh.set_read_timeout(Some(WAIT)).unwrap();
        assert_ne!(ask(&mut fresh), Some(200));
    }
    drop(client);
    assert!(server.terminate().success());
}
