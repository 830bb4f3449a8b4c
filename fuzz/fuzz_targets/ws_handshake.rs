//! The upgrade handshake: RFC 6455's half (`proto::ws::handshake`) on a
//! parsed request head, then Pusher's (`proto::pusher::handshake::check`:
//! app key from the path, protocol version from the query).
//!
//! Input: a request head, as a client sends it.
#![no_main]

mod common;

use libfuzzer_sys::fuzz_target;
use stapes::proto::{
    http::request::{Method, parse_head},
    pusher::handshake::{self, Upgrade},
    ws::handshake::{accept, is_upgrade},
};

fuzz_target!(|data: &[u8]| {
    let Ok(Some((req, _))) = parse_head(data, 8192) else { return };
    if let Ok(response) = accept(&req) {
        assert!(is_upgrade(&req), "accepted without Upgrade: websocket");
        assert_eq!(req.method, Method::Get);
        let text = std::str::from_utf8(&response).expect("the 101 is ASCII");
        assert!(text.starts_with("HTTP/1.1 101 Switching Protocols\r\n"));
        let accept_key = text
            .split("\r\n")
            .find_map(|line| line.strip_prefix("Sec-WebSocket-Accept: "))
            .expect("Sec-WebSocket-Accept is sent");
        // Base64 of a SHA-1: 28 symbols, one `=` of padding.
        assert_eq!(accept_key.len(), 28);
        assert!(accept_key.ends_with('=') && !accept_key.ends_with("=="));
        assert!(text.ends_with("\r\n\r\n") && text.matches("\r\n\r\n").count() == 1);
    }

    let apps = common::apps();
    let verdict = |tls: bool, allow_missing: bool| {
        handshake::check(
            &apps,
            Upgrade { path: req.path(), query: req.query(), tls },
            allow_missing,
        )
    };
    let strict = verdict(false, false);
    if let Ok(idx) = strict {
        let app = apps.get(idx);
        assert!(app.enabled, "a disabled app was accepted");
        let key = req.path().strip_prefix("/app/").expect("the path names the app");
        assert_eq!(key.trim_end_matches('/'), app.key, "another app's key");
    }
    // More lenient settings never refuse what stricter ones accept.
    for (tls, allow_missing) in [(true, false), (false, true), (true, true)] {
        if let Ok(idx) = strict {
            assert_eq!(verdict(tls, allow_missing), Ok(idx), "tls {tls} allow {allow_missing}");
        }
    }
});
