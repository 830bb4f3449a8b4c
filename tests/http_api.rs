//! The HTTP API of the real server: signing, limits, status codes, bodies.

#![allow(clippy::unwrap_used)]

mod common;

use std::{
    io::{Read, Write},
    net::TcpStream,
};

use common::*;
use serde_json::{Value, json};

fn body_json(r: &HttpReply) -> Value {
    serde_json::from_str(&r.body).unwrap_or_else(|_| panic!("not JSON: {:?}", r.body))
}

#[test]
fn trigger_and_batch_answer_exactly_empty_objects() {
    let server = Server::start();
    let r = trigger(server.port, &json!({"name":"e","channels":["a","b"],"data":"x"}));
    assert_eq!((r.status, r.body.as_str()), (200, "{}"));
    assert!(
        r.headers.to_ascii_lowercase().contains("content-type: application/json"),
        "{}",
        r.headers
    );
    let body = json!({"batch":[{"name":"e","channel":"a","data":"1"},{"name":"e","channel":"b","data":"2"}]})
        .to_string();
    let path = format!("/apps/{APP_ID}/batch_events");
    let r = post(server.port, &signed_path("POST", &path, body.as_bytes(), KEY, SECRET), &body);
    assert_eq!((r.status, r.body.as_str()), (200, "{}"));
}

/// Six connections (spread over both shards) on `news`; the first four
/// also in `presence-room`, as users u1, u1, u2, u2.
fn news_and_presence_room(server: &Server) -> Vec<Client> {
    let mut subs: Vec<Client> = (0..6).map(|_| server.ws()).collect();
    for c in &mut subs {
        c.subscribe("news");
    }
    for (i, c) in subs.iter_mut().enumerate().take(4) {
        c.join("presence-room", if i < 2 { "u1" } else { "u2" });
    }
    subs
}

#[test]
fn info_reports_counts_across_shards() {
    let server = Server::start();
    let _subs = news_and_presence_room(&server);
    let r = trigger(
        server.port,
        &json!({"name":"e","channels":["news","presence-room"],"data":"x","info":"user_count,subscription_count"}),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        body_json(&r),
        json!({"channels":{"news":{"subscription_count":6},"presence-room":{"user_count":2}}})
    );
    let body = json!({"batch":[{"name":"e","channel":"news","data":"1","info":"subscription_count"},{"name":"e","channel":"news","data":"2"}]}).to_string();
    let path = format!("/apps/{APP_ID}/batch_events");
    let r = post(server.port, &signed_path("POST", &path, body.as_bytes(), KEY, SECRET), &body);
    // Spec §12.4: one attribute object per event, index-aligned with the
    // request (Pusher's HTTP API reference), not a `channels` map each.
    assert_eq!(body_json(&r), json!({"batch":[{"subscription_count":6},{}]}));
}

#[test]
fn signing_failures_are_401_and_unknown_apps_404() {
    let server = Server::start();
    let body = json!({"name":"e","channel":"a","data":"x"}).to_string();
    let path = format!("/apps/{APP_ID}/events");
    let wrong_secret = signed_path("POST", &path, body.as_bytes(), KEY, "nope");
    assert_eq!(post(server.port, &wrong_secret, &body).status, 401);
    let good = signed_path("POST", &path, body.as_bytes(), KEY, SECRET);
    assert_eq!(
        post(server.port, &good, "{\"name\":\"e\",\"channel\":\"a\",\"data\":\"y\"}").status,
        401,
        "tampered body"
    );
    assert_eq!(post(server.port, &path, &body).status, 401, "unsigned");
    let other = "/apps/999/events";
    let r = post(server.port, &signed_path("POST", other, body.as_bytes(), KEY, SECRET), &body);
    assert_eq!(r.status, 404);
    assert!(r.headers.to_ascii_lowercase().contains("text/plain"), "{}", r.headers);
}

#[test]
fn bad_bodies_are_400_and_oversized_data_413() {
    let server = Server::start();
    let cases = [
        (json!({"channel":"a","data":"x"}), 400),
        (json!({"name":"e","data":"x"}), 400),
        (json!({"name":"e","channel":"bad name","data":"x"}), 400),
        (
            json!({"name":"e","channels":(0..101).map(|i| format!("c{i}")).collect::<Vec<_>>(),"data":"x"}),
            400,
        ),
        (json!({"name":"e","channel":"a","data":"x".repeat(10 * 1024 + 1)}), 413),
    ];
    for (body, status) in cases {
        let r = trigger(server.port, &body);
        assert_eq!(r.status, status, "{body}: {}", r.body);
        assert!(!r.body.is_empty(), "errors explain themselves");
    }
    let path = format!("/apps/{APP_ID}/events");
    let r = post(server.port, &signed_path("POST", &path, b"{nope", KEY, SECRET), "{nope");
    assert_eq!(r.status, 400);
    let batch: Vec<Value> =
        (0..11).map(|i| json!({"name":"e","channel":format!("c{i}"),"data":"x"})).collect();
    let body = json!({ "batch": batch }).to_string();
    let path = format!("/apps/{APP_ID}/batch_events");
    let r = post(server.port, &signed_path("POST", &path, body.as_bytes(), KEY, SECRET), &body);
    assert_eq!(r.status, 400, "{}", r.body);
}

#[test]
fn malformed_http_gets_plain_text_errors() {
    let server = Server::start();
    let r = http(server.port, b"NONSENSE\r\n\r\n");
    assert_eq!(r.status, 400);
    let r = http(server.port, b"GET /nowhere HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    assert_eq!(r.status, 404);
    let r = http(
        server.port,
        format!("GET /apps/{APP_ID}/events HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .as_bytes(),
    );
    assert_eq!(r.status, 405);
    let huge = format!("GET / HTTP/1.1\r\nHost: x\r\nX-Pad: {}\r\n\r\n", "a".repeat(10_000));
    let r = http(server.port, huge.as_bytes());
    assert!(r.status == 431 || r.status == 400, "{}", r.status);
    let r = http(
        server.port,
        format!(
            "POST /apps/{APP_ID}/events HTTP/1.1\r\nHost: x\r\nContent-Length: 999999999\r\n\r\n"
        )
        .as_bytes(),
    );
    assert_eq!(r.status, 413);
    let r = http(
        server.port,
        format!(
            "POST /apps/{APP_ID}/events HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        .as_bytes(),
    );
    assert_eq!(r.status, 411);
}

#[test]
fn keep_alive_serves_several_requests_on_one_connection() {
    let server = Server::start();
    let mut s = TcpStream::connect(("127.0.0.1", server.port)).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    for i in 0..3 {
        let body = json!({"name":"e","channel":"a","data":i.to_string()}).to_string();
        let path = format!("/apps/{APP_ID}/events");
        let req = format!(
            "POST {} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            signed_path("POST", &path, body.as_bytes(), KEY, SECRET),
            body.len()
        );
        s.write_all(req.as_bytes()).unwrap();
        let mut buf = Vec::new();
        let mut chunk = [0u8; 1024];
        while !String::from_utf8_lossy(&buf).ends_with("{}") {
            let n = s.read(&mut chunk).unwrap();
            assert!(n > 0, "closed after {i} requests");
            buf.extend_from_slice(&chunk[..n]);
        }
        assert_eq!(parse_reply(&buf).status, 200);
    }
}

#[test]
fn a_disabled_app_is_403() {
    let apps = "  - id: \"2\"\n    key: off-key\n    secret: off-secret\n    enabled: false\n";
    let server = Server::start_with(&config("", apps), &[]);
    let body = json!({"name":"e","channel":"a","data":"x"}).to_string();
    let r = post(
        server.port,
        &signed_path("POST", "/apps/2/events", body.as_bytes(), "off-key", "off-secret"),
        &body,
    );
    assert_eq!(r.status, 403);
}

#[test]
fn channel_queries_count_every_shard() {
    let server = Server::start();
    let mut subs = news_and_presence_room(&server);
    subs[5].subscribe("private-x");
    let base = format!("/apps/{APP_ID}/channels");
    let get = |path: &str, extra: &[(&str, &str)]| {
        let r = get_signed(server.port, path, extra, false);
        (r.status, r.body)
    };
    let json_of = |(status, body): (u16, String)| {
        assert_eq!(status, 200, "{body}");
        serde_json::from_str::<Value>(&body).unwrap()
    };
    assert_eq!(
        json_of(get(&base, &[])),
        json!({"channels":{"news":{},"presence-room":{},"private-x":{}}})
    );
    assert_eq!(
        json_of(get(&base, &[("info", "subscription_count"), ("filter_by_prefix", "n")])),
        json!({"channels":{"news":{"subscription_count":6}}})
    );
    assert_eq!(
        json_of(get(&base, &[("filter_by_prefix", "presence-"), ("info", "user_count")])),
        json!({"channels":{"presence-room":{"user_count":2}}})
    );
    let none = get(&base, &[("filter_by_prefix", "nothing-")]);
    assert_eq!(none, (200, r#"{"channels":{}}"#.to_owned()), "empty channels is an object");
    // body_md5 of the empty body is accepted on GET.
    assert_eq!(get_signed(server.port, &base, &[], true).status, 200);
    for bad in [&[("info", "user_count")][..], &[("info", "members")][..]] {
        let (status, body) = get(&base, bad);
        assert_eq!(status, 400, "{bad:?}: {body}");
        assert!(!body.is_empty());
    }

    let one = |name: &str, extra: &[(&str, &str)]| get(&format!("{base}/{name}"), extra);
    assert_eq!(
        json_of(one("news", &[("info", "subscription_count")])),
        json!({"occupied":true,"subscription_count":6})
    );
    assert_eq!(
        json_of(one("presence-room", &[("info", "user_count")])),
        json!({"occupied":true,"user_count":2})
    );
    assert_eq!(json_of(one("empty", &[])), json!({"occupied":false}));
    assert_eq!(one("news", &[("info", "user_count")]).0, 400);
    assert_eq!(one("presence-room", &[("info", "subscription_count")]).0, 400);

    let users = json_of(one("presence-room/users", &[]));
    let mut ids: Vec<&str> =
        users["users"].as_array().unwrap().iter().map(|u| u["id"].as_str().unwrap()).collect();
    ids.sort_unstable();
    assert_eq!(ids, ["u1", "u2"]);
    assert_eq!(one("news/users", &[]).0, 400);

    // Unsigned or wrongly signed GETs are refused like POSTs.
    let r = http(
        server.port,
        format!("GET {base} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
    );
    assert_eq!(r.status, 401);
    drop(subs);
}

/// A request that arrives in two writes is answered: after a read that
/// emptied the socket, the rest raises a new edge (the shard stops reading
/// at a short read instead of asking again for `EAGAIN`).
#[test]
fn a_request_in_pieces_is_answered() {
    let server = Server::start();
    let mut s = TcpStream::connect(("127.0.0.1", server.port)).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(10))).unwrap();
    s.write_all(b"GET /health HTTP/1.1\r\n").unwrap();
    s.flush().unwrap();
    s.write_all(b"Host: x\r\n\r\n").unwrap();
    let mut reply = [0u8; 256];
    let n = s.read(&mut reply).unwrap();
    let reply = String::from_utf8_lossy(&reply[..n]);
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
}

/// A peer that sends part of a request and shuts its side is closed at
/// once, long before `http_idle_timeout_secs` (30 s): its end of file is
/// read even when the data and the FIN came in one readiness edge, where
/// a short read alone would say the socket is empty.
#[test]
fn a_peer_that_shuts_its_side_mid_request_is_closed_at_once() {
    let server = Server::start();
    for _ in 0..20 {
        let mut s = TcpStream::connect(("127.0.0.1", server.port)).unwrap();
        s.set_read_timeout(Some(std::time::Duration::from_secs(10))).unwrap();
        s.write_all(b"GET /health HTTP/1.1\r\nHost").unwrap();
        s.shutdown(std::net::Shutdown::Write).unwrap();
        let mut rest = Vec::new();
        // Ok: closed (end of file or reset); a timeout means it was held.
        match s.read_to_end(&mut rest) {
            Ok(_) => {}
            Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}"),
        }
    }
}
