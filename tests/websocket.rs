//! The real server on free ports, spoken to over raw WebSockets.

#![allow(clippy::unwrap_used)]

mod common;

use std::{
    io::{Read, Write},
    net::TcpStream,
};

use common::*;
use serde_json::{Value, json};
use tungstenite::Message;

fn socket_id_ok(s: &str) -> bool {
    let Some((a, b)) = s.split_once('.') else { return false };
    !a.is_empty() && !b.is_empty() && a.bytes().chain(b.bytes()).all(|c| c.is_ascii_digit())
}

/// Pusher and Incus WebSockets open on each shard, from `/metrics`.
fn shard_connections(port: u16) -> Vec<u64> {
    (0..)
        .map_while(|shard| metric(port, &format!("stapes_shard_connections{{shard=\"{shard}\"}}")))
        .collect()
}

/// A new connection on each shard, told apart by the per-shard gauge (no
/// other connection opens or closes meanwhile), and the extra ones opened
/// on the way, kept open so that the gauge stays put.
fn one_per_shard(server: &Server) -> (Vec<Client>, Vec<Client>) {
    let shards = shard_connections(server.port).len();
    let mut on: Vec<Option<Client>> = (0..shards).map(|_| None).collect();
    let mut extra = Vec::new();
    while on.iter().any(Option::is_none) {
        let before = shard_connections(server.port);
        // Counted before connection_established is queued, which ws() reads.
        let c = server.ws();
        let after = shard_connections(server.port);
        let shard = (0..shards).find(|&s| after[s] > before[s]).unwrap();
        match &mut on[shard] {
            slot @ None => *slot = Some(c),
            Some(_) => extra.push(c),
        }
    }
    (on.into_iter().flatten().collect(), extra)
}

#[test]
fn connection_established_gives_a_socket_id_and_activity_timeout() {
    let server = Server::start();
    let mut ws =
        server.ws_path(&format!("/app/{KEY}?protocol=7&client=js&version=8.4.0&flash=false"));
    let hello = event(&mut ws);
    assert_eq!(hello["event"], "pusher:connection_established");
    let data = data_of(&hello);
    assert!(socket_id_ok(data["socket_id"].as_str().unwrap()), "{data}");
    assert_eq!(data["activity_timeout"], 120);
    let other = server.ws();
    assert_ne!(other.socket_id, data["socket_id"].as_str().unwrap());
}

#[test]
fn refused_handshakes_send_the_error_then_close_with_the_same_code() {
    let apps = "  - id: \"2\"\n    key: off-key\n    secret: s\n    enabled: false\n  - id: \"3\"\n    key: tls-key\n    secret: s\n    only_ssl: true\n  - id: \"4\"\n    key: one-key\n    secret: s\n    max_connections: 1\n";
    let server = Server::start_with(&config("", apps), &[]);
    let port = server.port;
    let cases = [
        ("/app/nope?protocol=7", 4001),
        ("/app/off-key?protocol=7", 4003),
        ("/app/tls-key?protocol=7", 4000),
        ("/somewhere", 4005),
        (&format!("/app/{KEY}?protocol=abc") as &str, 4006),
        (&format!("/app/{KEY}?protocol=3") as &str, 4007),
    ];
    for (path, code) in cases {
        let mut ws = server.ws_path(path);
        let err = event(&mut ws);
        assert_eq!(err["event"], "pusher:error", "{path}");
        assert_eq!(err["data"]["code"], code, "{path}");
        assert_eq!(next(&mut ws), Got::Close(Some(code)), "{path}");
    }
    let _first = Client::connect(port, "/app/one-key?protocol=7");
    let mut second = server.ws_path("/app/one-key?protocol=7");
    assert_eq!(event(&mut second)["data"]["code"], 4004);
    assert_eq!(next(&mut second), Got::Close(Some(4004)));
    // A missing protocol is accepted as 7 by default (pusher-js always sends it).
    Client::connect(port, &format!("/app/{KEY}"));
}

#[test]
fn node_capacity_refuses_with_4100() {
    let server = Server::start_with(&config("  max_connections: 2", ""), &[]);
    let _a = server.ws();
    let _b = server.ws();
    let mut c = server.ws_path(&format!("/app/{KEY}?protocol=7"));
    assert_eq!(event(&mut c)["data"]["code"], 4100);
    assert_eq!(next(&mut c), Got::Close(Some(4100)));
}

#[test]
fn trigger_reaches_subscribers_on_both_shards_and_respects_socket_id() {
    let server = Server::start();
    let mut clients: Vec<Client> = (0..8).map(|_| server.ws()).collect();
    for c in &mut clients {
        let ok = c.subscribe("news");
        assert_eq!(ok["event"], "pusher_internal:subscription_succeeded");
        assert_eq!(ok["channel"], "news");
    }
    let reply =
        trigger(server.port, &json!({"name":"update","channels":["news"],"data":"{\"n\":1}"}));
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.body, "{}");
    for c in &mut clients {
        assert_eq!(c.event(), json!({"event":"update","channel":"news","data":"{\"n\":1}"}));
    }
    let skip = clients[3].socket_id.clone();
    // "Nothing else came" needs a marker on the same way as the excluded
    // event: requests on one HTTP connection are handled by one shard in
    // order, and events of one batch are framed in order; a marker sent on
    // another connection may be handled by another shard and overtake.
    let events = format!("/apps/{APP_ID}/events");
    let excluded = json!({"name":"e","channel":"news","data":"x","socket_id":skip}).to_string();
    let marker = json!({"name":"marker","channel":"news","data":"m"}).to_string();
    let mut http = TcpStream::connect(("127.0.0.1", server.port)).unwrap();
    http.set_read_timeout(Some(WAIT)).unwrap();
    for body in [&excluded, &marker] {
        let target = signed_path("POST", &events, body.as_bytes(), KEY, SECRET);
        let req = format!(
            "POST {target} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        http.write_all(req.as_bytes()).unwrap();
        assert_eq!(read_reply(&mut http).status, 200);
    }
    let batch = json!({"batch":[
        {"name":"e2","channel":"news","data":"x","socket_id":skip},
        {"name":"marker2","channel":"news","data":"m"},
    ]})
    .to_string();
    let path = format!("/apps/{APP_ID}/batch_events");
    for (sent, excluded_got) in [(None, "marker"), (Some(batch), "marker2")] {
        if let Some(body) = sent {
            let reply =
                post(server.port, &signed_path("POST", &path, body.as_bytes(), KEY, SECRET), &body);
            assert_eq!(reply.status, 200, "{}", reply.body);
        }
        for (i, c) in clients.iter_mut().enumerate() {
            let want: &[&str] = match (i, excluded_got) {
                (3, m) => &[m][..],
                (_, "marker") => &["e", "marker"][..],
                (_, _) => &["e2", "marker2"][..],
            };
            let got: Vec<Value> = want.iter().map(|_| c.event()["event"].clone()).collect();
            assert_eq!(got, want, "client {i}; client 3 is excluded");
        }
    }
}

/// One HTTP response off a keep-alive connection (Content-Length framed).
fn read_reply(s: &mut TcpStream) -> HttpReply {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut byte).unwrap();
        buf.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&buf).to_ascii_lowercase();
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .map_or(0, |v| v.trim().parse().unwrap());
    let mut body = vec![0; len];
    s.read_exact(&mut body).unwrap();
    buf.extend(body);
    parse_reply(&buf)
}

#[test]
fn presence_members_are_shared_across_shards() {
    let server = Server::start();
    // Several tabs per user so that both shards hold some of them.
    let mut alice: Vec<Client> = (0..4).map(|_| server.ws()).collect();
    let first = alice[0].join("presence-room", "alice");
    assert_eq!(data_of(&first)["presence"]["count"], 1);
    for tab in alice.iter_mut().skip(1) {
        let ok = tab.join("presence-room", "alice");
        assert_eq!(data_of(&ok)["presence"]["count"], 1);
    }
    let mut bob = server.ws();
    let ok = bob.join("presence-room", "bob");
    let presence = &data_of(&ok)["presence"];
    assert_eq!(presence["count"], 2);
    assert_eq!(presence["hash"]["alice"]["name"], "alice");
    for tab in &mut alice {
        let added = tab.event();
        assert_eq!(added["event"], "pusher_internal:member_added");
        assert_eq!(data_of(&added)["user_id"], "bob");
    }
    // Closing three of alice's four tabs removes nothing; the last one does.
    for mut tab in alice.drain(1..) {
        tab.ws.close(None).unwrap();
        let _ = tab.next();
    }
    wait_until("the closed tabs to be gone", || {
        shard_connections(server.port).iter().sum::<u64>() == 2
    });
    // Markers on the member_removed path: a join from each shard reaches the
    // channel's owner after that shard's leaves, and the owner's broadcast
    // reaches bob in order.
    let (mut markers, _extra) = one_per_shard(&server);
    for (shard, m) in markers.iter_mut().enumerate() {
        m.join("presence-room", &format!("marker{shard}"));
    }
    let mut added: Vec<String> = (0..markers.len())
        .map(|_| {
            let e = bob.event();
            assert_eq!(e["event"], "pusher_internal:member_added", "{e}");
            data_of(&e)["user_id"].as_str().unwrap().to_owned()
        })
        .collect();
    added.sort();
    assert_eq!(added, (0..markers.len()).map(|s| format!("marker{s}")).collect::<Vec<_>>());
    alice[0].send(json!({"event":"pusher:unsubscribe","data":{"channel":"presence-room"}}));
    let removed = bob.event();
    assert_eq!(removed["event"], "pusher_internal:member_removed");
    assert_eq!(data_of(&removed)["user_id"], "alice");
}

#[test]
fn client_events_go_to_the_others_only() {
    let server = Server::start();
    let mut a = server.ws();
    let mut b = server.ws();
    let mut c = server.ws();
    for x in [&mut a, &mut b, &mut c] {
        x.subscribe("private-chat");
    }
    a.send(json!({"event":"client-hi","channel":"private-chat","data":{"text":"hey"}}));
    for x in [&mut b, &mut c] {
        assert_eq!(
            x.event(),
            json!({"event":"client-hi","channel":"private-chat","data":{"text":"hey"}})
        );
    }
    // A ping after it is answered on the same shard, after the fan-out
    // that would have echoed it.
    a.send(json!({"event":"pusher:ping","data":{}}));
    assert_eq!(a.event()["event"], "pusher:pong", "never echoed to the sender");
}

#[test]
fn bad_input_gets_pusher_errors_and_the_connection_stays() {
    let server = Server::start();
    let mut c = server.ws();
    for bad in
        ["{nope", "{\"event\":\"pusher:subscribe\",\"data\":{}}", "{\"event\":\"unknown\"}", "42"]
    {
        c.ws.send(Message::text(bad)).unwrap();
        let err = c.event();
        assert_eq!(err["event"], "pusher:error", "{bad}");
    }
    c.send(json!({"event":"pusher:ping","data":{}}));
    assert_eq!(c.event()["event"], "pusher:pong");
    c.send(json!({"event":"pusher:subscribe","data":{"channel":"private-x","auth":"test-key:deadbeef"}}));
    assert_eq!(c.event()["event"], "pusher:error");
    assert_eq!(c.subscribe("private-x")["event"], "pusher_internal:subscription_succeeded");
}

#[test]
fn an_oversized_message_closes_with_1009() {
    let server = Server::start_with(&config("  max_message_bytes: 4096", ""), &[]);
    let mut c = server.ws();
    let big = format!("{{\"event\":\"pusher:ping\",\"data\":\"{}\"}}", "x".repeat(8000));
    let _ = c.ws.send(Message::text(big));
    assert_eq!(c.next(), Got::Close(Some(1009)));
}

#[test]
fn an_unmasked_client_frame_closes_with_1002() {
    let server = Server::start();
    let c = server.ws();
    let mut raw: TcpStream = c.ws.into_inner();
    // A text frame without the mask bit.
    raw.write_all(&[0x81, 0x02, b'{', b'}']).unwrap();
    let mut ws =
        tungstenite::WebSocket::from_raw_socket(raw, tungstenite::protocol::Role::Client, None);
    assert_eq!(next(&mut ws), Got::Close(Some(1002)));
}

#[test]
fn a_silent_connection_is_pinged_then_closed_with_4201() {
    let extra = "  activity_timeout_secs: 1\n  pong_timeout_secs: 1";
    let server = Server::start_with(&config(extra, ""), &[]);
    let mut c = server.ws();
    let ping = c.event();
    assert_eq!(ping["event"], "pusher:ping");
    let err = c.event();
    assert_eq!(err["data"]["code"], 4201);
    assert_eq!(c.next(), Got::Close(Some(4201)));
}

#[test]
fn a_client_that_answers_pings_stays_connected() {
    let extra = "  activity_timeout_secs: 1\n  pong_timeout_secs: 1";
    let server = Server::start_with(&config(extra, ""), &[]);
    let mut c = server.ws();
    for _ in 0..3 {
        assert_eq!(c.event()["event"], "pusher:ping");
        c.send(json!({"event":"pusher:pong","data":{}}));
    }
    c.send(json!({"event":"pusher:ping","data":{}}));
    let mut got = c.event();
    if got["event"] == "pusher:ping" {
        got = c.event();
    }
    assert_eq!(got["event"], "pusher:pong");
}

#[test]
fn sigterm_says_4200_to_every_client_and_exits() {
    // The real binary: SIGTERM is the process's business.
    let mut server = Server::start_binary(&config("", ""), &[]);
    let mut clients: Vec<Client> = (0..6).map(|_| server.ws()).collect();
    let status = server.terminate();
    assert!(status.success(), "{status}");
    for c in &mut clients {
        let err = c.event();
        assert_eq!(err["event"], "pusher:error");
        assert_eq!(err["data"]["code"], 4200);
        assert_eq!(c.next(), Got::Close(Some(4200)));
    }
}

#[test]
fn the_epoll_driver_serves_the_same_protocol() {
    let server = Server::start_with(&config("", ""), &[("STAPES_IO_DRIVER", "epoll")]);
    let mut a = server.ws();
    let mut b = server.ws();
    a.subscribe("news");
    b.subscribe("news");
    let reply = trigger(server.port, &json!({"name":"e","channel":"news","data":"d"}));
    assert_eq!(reply.status, 200);
    assert_eq!(a.event()["data"], "d");
    assert_eq!(b.event()["data"], "d");
}

#[test]
fn a_client_that_stops_reading_is_cut_off_and_others_keep_receiving() {
    let extra = "  max_outbox_bytes: 262144";
    let server = Server::start_with(&config(extra, ""), &[]);
    let port = server.port;
    let mut slow = server.ws();
    slow.subscribe("firehose");
    let mut fast = server.ws();
    fast.subscribe("firehose");
    let data = "x".repeat(10_000);
    let batch: Vec<serde_json::Value> =
        (0..10).map(|_| json!({"name":"e","channel":"firehose","data":data})).collect();
    let body = json!({ "batch": batch }).to_string();
    let path = format!("/apps/{APP_ID}/batch_events");
    // 30 MB: more than the loopback socket buffers and the outbox together.
    let rounds = 300;
    for _ in 0..rounds {
        let r = post(port, &signed_path("POST", &path, body.as_bytes(), KEY, SECRET), &body);
        assert_eq!(r.status, 200, "{}", r.body);
        for _ in 0..10 {
            assert_eq!(fast.event()["event"], "e");
        }
    }
    // The slow client, reading again, gets what fit in the buffers, then
    // the reason and the close: its queue was dropped, not its goodbye.
    let mut received = 0;
    let mut error = None;
    let end = loop {
        match slow.ws.read() {
            Ok(Message::Text(t)) => {
                let v: Value = serde_json::from_str(&t).unwrap();
                match v["event"].as_str() {
                    Some("e") => received += 1,
                    Some("pusher:error") => error = Some(v["data"]["code"].clone()),
                    _ => {}
                }
            }
            Ok(Message::Close(frame)) => break frame.map(|f| u16::from(f.code)),
            Ok(_) => {}
            Err(e) => panic!("the stream ended without a close frame: {e}"),
        }
    };
    assert!(received < rounds * 10, "the slow client was cut off ({received} delivered)");
    assert_eq!(error, Some(json!(4100)), "pusher:error 4100 before the close");
    assert_eq!(end, Some(4100));
    // Counted: the close, and only the events that were written.
    assert_eq!(
        metric(port, &format!("stapes_slow_consumer_closes_total{{app=\"{APP_ID}\"}}")),
        Some(1)
    );
    let deliveries = metric(port, &format!("stapes_deliveries_total{{app=\"{APP_ID}\"}}"));
    assert_eq!(deliveries, Some(rounds as u64 * 10 + received as u64));
}

/// Signs `c` in as `user_data`; returns the reply.
fn signin(c: &mut Client, user_data: &str) -> Value {
    let auth = sign_auth(&format!("{}::user::{user_data}", c.socket_id));
    c.send(json!({"event":"pusher:signin","data":{"auth":auth,"user_data":user_data}}));
    c.event()
}

#[test]
fn signed_in_users_get_their_server_to_user_channel_and_can_be_terminated() {
    let server = Server::start();
    let mut tabs: Vec<Client> = (0..4).map(|_| server.ws()).collect();
    for c in &mut tabs {
        let ok = signin(c, r#"{"id":"u1"}"#);
        assert_eq!(ok["event"], "pusher:signin_success", "{ok}");
        assert_eq!(data_of(&ok)["user_data"], r#"{"id":"u1"}"#);
        let sub = c.subscribe("#server-to-user-u1");
        assert_eq!(sub["event"], "pusher_internal:subscription_succeeded", "{sub}");
    }
    let mut other = server.ws();
    signin(&mut other, r#"{"id":"u2"}"#);
    let refused = other.subscribe("#server-to-user-u1");
    assert_eq!(refused["event"], "pusher:error", "{refused}");

    // sendToUser is a trigger on the user's channel.
    let r =
        trigger(server.port, &json!({"name":"note","channel":"#server-to-user-u1","data":"hi"}));
    assert_eq!((r.status, r.body.as_str()), (200, "{}"));
    for c in &mut tabs {
        let got = c.event();
        assert_eq!((got["event"].as_str(), got["data"].as_str()), (Some("note"), Some("hi")));
    }

    let path = format!("/apps/{APP_ID}/users/u1/terminate_connections");
    let r = post(server.port, &signed_path("POST", &path, b"{}", KEY, SECRET), "{}");
    assert_eq!((r.status, r.body.as_str()), (200, "{}"));
    for c in &mut tabs {
        let err = c.event();
        assert_eq!(err["event"], "pusher:error");
        assert_eq!(err["data"]["code"], 4009);
        assert_eq!(c.next(), Got::Close(Some(4009)));
    }
    // The other user is untouched.
    other.send(json!({"event":"pusher:ping","data":{}}));
    assert_eq!(other.event()["event"], "pusher:pong");
}

/// A fan-out to more sockets than a shard writes in one turn (64) is
/// written over several turns, reading the sockets between them: every
/// subscriber still gets every event, once and in order.
#[test]
fn a_fan_out_wider_than_one_turns_writes_reaches_everyone_in_order() {
    let yaml = config("", "").replace("shards: 2", "shards: 1");
    let server = Server::start_with(&yaml, &[]);
    let mut subs: Vec<Client> = (0..300).map(|_| server.ws()).collect();
    for c in &mut subs {
        c.subscribe("wide");
    }
    for i in 0..3 {
        let r =
            trigger(server.port, &json!({"name": "e", "channel": "wide", "data": i.to_string()}));
        assert_eq!(r.status, 200, "{}", r.body);
    }
    for (n, c) in subs.iter_mut().enumerate() {
        for i in 0..3 {
            let ev = c.event();
            assert_eq!(ev["data"], i.to_string(), "subscriber {n}: {ev}");
        }
    }
    // Nothing more: a marker sent after proves no event came twice.
    let r = trigger(server.port, &json!({"name": "end", "channel": "wide", "data": "end"}));
    assert_eq!(r.status, 200, "{}", r.body);
    for c in &mut subs {
        assert_eq!(c.event()["event"], "end");
    }
}

/// Publishers far faster than the node can write (pipelined triggers on
/// many connections) fill the outboxes of subscribers that read all they
/// get. Those subscribers are not slow, so none is closed: each receives
/// every event whose trigger was answered 200, in order, and the
/// publishers are told 503 for what the node could not take. Whether the
/// node falls behind at all depends on the machine; the assertions hold
/// either way.
fn publishers_outpacing_delivery(shards: usize) {
    const SUBSCRIBERS: usize = 12;
    const PUBLISHERS: usize = 16;
    const EACH: usize = 150;
    // One shard, or two: the default config's `shards: 2` is replaced.
    let server_keys = format!("server:\n  max_outbox_bytes: 65536\n  shards: {shards}\n");
    let yaml = config("", "").replace("  shards: 2\n", "").replacen("server:\n", &server_keys, 1);
    let server = Server::start_with(&yaml, &[]);
    let port = server.port;
    let readers: Vec<_> = (0..SUBSCRIBERS)
        .map(|_| {
            let mut c = server.ws();
            c.subscribe("flood");
            std::thread::spawn(move || {
                let mut got = Vec::new();
                loop {
                    match c.ws.read() {
                        Ok(Message::Text(t)) => {
                            let v: Value = serde_json::from_str(&t).unwrap();
                            match v["event"].as_str() {
                                Some("e") => got.push(v["data"].as_str().unwrap()[..11].to_owned()),
                                Some("end") => return Ok(got),
                                _ => return Err(format!("unexpected {t}")),
                            }
                        }
                        Ok(Message::Close(f)) => return Err(format!("closed: {f:?}")),
                        Ok(_) => {}
                        Err(e) => return Err(format!("read failed: {e}")),
                    }
                }
            })
        })
        .collect();
    let pad = "x".repeat(2000);
    let path = format!("/apps/{APP_ID}/events");
    let publishers: Vec<_> = (0..PUBLISHERS)
        .map(|p| {
            let pad = pad.clone();
            let path = path.clone();
            std::thread::spawn(move || {
                let mut raw = Vec::new();
                let mut ids = Vec::new();
                for i in 0..EACH {
                    let id = format!("p{p:03}-e{i:05}");
                    let body = json!({"name":"e","channel":"flood","data":format!("{id}{pad}")})
                        .to_string();
                    let target = signed_path("POST", &path, body.as_bytes(), KEY, SECRET);
                    raw.extend_from_slice(
                        format!("POST {target} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", body.len())
                            .as_bytes(),
                    );
                    ids.push(id);
                }
                let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
                s.set_read_timeout(Some(WAIT)).unwrap();
                let mut w = s.try_clone().unwrap();
                let writer = std::thread::spawn(move || w.write_all(&raw).unwrap());
                let statuses = read_replies(&mut s, EACH);
                writer.join().unwrap();
                ids.into_iter().zip(statuses).collect::<Vec<_>>()
            })
        })
        .collect();
    let mut accepted = Vec::new();
    let mut refused = 0;
    for p in publishers {
        for (id, status) in p.join().unwrap() {
            match status {
                200 => accepted.push(id),
                503 => refused += 1,
                other => panic!("trigger {id} answered {other}"),
            }
        }
    }
    // The marker comes after every accepted event; the node may still be
    // catching up, in which case it says 503 until it has.
    loop {
        let r = trigger(port, &json!({"name":"end","channel":"flood","data":"{}"}));
        if r.status == 200 {
            break;
        }
        assert_eq!(r.status, 503, "{}", r.body);
        // A retry's pause, not a wait for a condition: each attempt is a
        // new connection, and a tight loop would pile up closed sockets.
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    accepted.sort();
    for r in readers {
        let mut got = r.join().unwrap().unwrap_or_else(|e| {
            panic!("a subscriber that reads everything lost its stream ({refused} refused): {e}")
        });
        // Ids sort in each publisher's sending order.
        let arrived = got.clone();
        got.sort();
        for p in 0..PUBLISHERS {
            let prefix = format!("p{p:03}");
            let mine: Vec<_> = arrived.iter().filter(|id| id.starts_with(&prefix)).collect();
            assert!(mine.windows(2).all(|w| w[0] < w[1]), "publisher {p}'s events out of order");
        }
        assert_eq!(got, accepted, "every accepted event, once ({refused} refused)");
    }
    assert_eq!(
        metric(port, &format!("stapes_slow_consumer_closes_total{{app=\"{APP_ID}\"}}")),
        Some(0)
    );
}

/// Status codes of `n` pipelined HTTP replies, in order.
fn read_replies(s: &mut TcpStream, n: usize) -> Vec<u16> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 65536];
    let mut statuses = Vec::new();
    while statuses.len() < n {
        let k = s.read(&mut chunk).unwrap();
        assert!(k > 0, "the connection closed after {} replies", statuses.len());
        buf.extend_from_slice(&chunk[..k]);
        while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            let length: usize = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length").then(|| v.trim().parse().ok())?
                })
                .unwrap_or(0);
            if buf.len() < end + 4 + length {
                break;
            }
            statuses.push(head.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0));
            buf.drain(..end + 4 + length);
        }
    }
    statuses
}

#[test]
fn publishers_outpacing_one_shard_are_refused_not_its_subscribers() {
    publishers_outpacing_delivery(1);
}

#[test]
fn publishers_outpacing_two_shards_are_refused_not_their_subscribers() {
    publishers_outpacing_delivery(2);
}
