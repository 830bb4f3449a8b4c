//! What the real binary writes to stderr when clients and Redis send
//! hostile or broken input (issue #15, defect 4): text a client chose
//! cannot start a line of its own or reach the terminal raw, and a flood of
//! bad messages is logged at the 1st, 2nd, 4th, 8th… while the counters
//! count every one.

#![allow(clippy::unwrap_used, clippy::disallowed_methods)]

mod common;

use common::*;
use serde_json::json;
use tungstenite::Message;

/// A user id that, written raw, would end its log line and start one that
/// looks like stapes's own, in red.
const FORGED_USER: &str = "evil\n2026-01-01T00:00:00.000000Z  INFO stapes: FORGED line\x1b[31m";

#[test]
fn a_user_id_cannot_forge_log_lines() {
    // At debug, every line that names the user is written.
    let server = Server::start_logged(&config("", ""), &[("STAPES_LOG", "debug")]);
    let mut ws = server.ws_path("/socket");
    let auth = json!({"command": {"command": "authenticate", "user": FORGED_USER}});
    ws.send(Message::text(auth.to_string())).unwrap();
    // Refused (not JSON), logged with the user, and the socket closed.
    ws.send(Message::text(r#"{"command":"#)).unwrap();
    loop {
        match ws.read() {
            Ok(Message::Close(_)) | Err(_) => break,
            Ok(_) => {}
        }
    }
    let out = server.output();
    let named: Vec<&str> = out.lines().filter(|l| l.contains("FORGED")).collect();
    assert_eq!(named.len(), 1, "one event, one line:\n{out}");
    let escaped = r"user=evil\n2026-01-01T00:00:00.000000Z  INFO stapes: FORGED line\x1b[31m ";
    assert!(named[0].contains(escaped), "the user id, escaped: {}", named[0]);
    assert!(!out.lines().any(|l| l.starts_with("2026-01-01")), "a forged line:\n{out}");
    assert!(!out.contains('\x1b'), "a raw escape reached the log:\n{out}");
}

#[test]
fn a_thousand_bad_redis_messages_log_ten_warnings_and_count_a_thousand() {
    let redis = Redis::start();
    let yaml = config("", "")
        + &format!(
            "redis:\n  url: {}\n  instance: log-test\n  reconnect_max_ms: 200\n",
            redis.url()
        );
    let server = Server::start_logged(&yaml, &[]);
    let port = server.port;
    wait_until("the bridge to subscribe", || {
        redis.subscribers("stapes:pusher") == 1 && redis.subscribers("Incus") == 1
    });
    let mut pipe = redis::pipe();
    for i in 0..1000 {
        // Broken JSON with a raw newline in it, and a repeated key.
        pipe.cmd("PUBLISH").arg("stapes:pusher").arg(format!("not json {i}\nFORGED")).ignore();
        let repeated = format!(r#"{{"command":{{"command":"message","user":"u{i}","user":"v"}}}}"#);
        pipe.cmd("PUBLISH").arg("Incus").arg(repeated).ignore();
    }
    pipe.query::<()>(&mut redis.con()).unwrap();
    wait_until("1,000 refusals on each channel", || {
        metric(port, "stapes_redis_events_refused_total") == Some(1000)
            && metric(port, "stapes_incus_json_errors_total") == Some(1000)
    });
    let out = server.output();
    let powers: Vec<String> = (0..10).map(|p| format!("total={}", 1u64 << p)).collect();
    for what in ["redis pusher event refused", "incus command refused"] {
        let lines: Vec<&str> = out.lines().filter(|l| l.contains(what)).collect();
        let totals: Vec<&str> = lines
            .iter()
            .map(|l| l.split(' ').find(|w| w.starts_with("total=")).unwrap_or_default())
            .collect();
        assert_eq!(totals, powers, "{what}: warned at 1, 2, 4 … 512 only:\n{}", lines.join("\n"));
        assert!(lines.iter().all(|l| l.contains(" WARN ")), "{}", lines.join("\n"));
    }
    assert!(!out.lines().any(|l| l.starts_with("FORGED")), "a payload forged a line:\n{out}");
}
