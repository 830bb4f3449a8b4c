//! `server.write_timeout_secs` reaches the shards' event loop: a subscriber
//! that stops reading is closed, and counted, once its writes have made no
//! progress for that long.

#![allow(clippy::unwrap_used, clippy::disallowed_methods)]

mod common;

use std::time::Instant;

use common::{Server, WAIT, config, metric, trigger};
use serde_json::json;

#[test]
fn a_peer_that_takes_nothing_is_closed_after_the_configured_write_timeout() {
    // A large outbox, so that the stall, not the slow-consumer limit, ends it.
    let server = Server::start_with(
        &config("  write_timeout_secs: 1\n  max_outbox_bytes: 268435456\n", ""),
        &[],
    );
    let mut client = server.ws();
    // Stays open, unread, until the end.
    let ok = client.subscribe("flood");
    assert_eq!(ok["event"], "pusher_internal:subscription_succeeded", "{ok}");
    // The client reads no more. Publish until the kernel's buffers are full
    // and a write stalls, then until the stall is counted: with the default
    // of 30 s, nothing would be counted within WAIT (10 s).
    let data = "x".repeat(8000);
    let deadline = Instant::now() + WAIT;
    while metric(server.port, "stapes_write_timeouts_total").unwrap_or(0) == 0 {
        assert!(Instant::now() < deadline, "no write timeout within {WAIT:?}");
        for _ in 0..32 {
            let reply = trigger(server.port, &json!({"name":"e","channel":"flood","data":data}));
            assert_eq!(reply.status, 200, "{}", reply.body);
        }
    }
}
