//! pusher-js's HTTP fallback transports (`xhr_streaming`, `xhr_polling`)
//! over raw HTTP against the in-process server on two shards: the frames,
//! a session's requests reaching its owner shard whichever shard accepted
//! them, the queue between polls, its overflow, expiry, limits and bad
//! input.

#![allow(clippy::unwrap_used)]

mod common;

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::TcpStream,
};

use common::*;
use serde_json::{Value, json};

fn base(session: &str) -> String {
    format!("/pusher/app/{KEY}/{session}")
}

fn request(port: u16, method: &str, path: &str, body: &str) -> HttpReply {
    let raw = format!(
        "{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    http(port, raw.as_bytes())
}

/// One poll, answered once.
fn poll(port: u16, session: &str) -> HttpReply {
    let path = format!("{}/xhr?protocol=7&client=js&version=8.6.0&t=1&n=1", base(session));
    request(port, "POST", &path, "")
}

/// `xhr_send` of Pusher messages.
fn send(port: u16, session: &str, messages: &[Value]) -> HttpReply {
    let strings: Vec<String> = messages.iter().map(Value::to_string).collect();
    let body = serde_json::to_string(&strings).unwrap();
    request(port, "POST", &format!("{}/xhr_send?t=1&n=2", base(session)), &body)
}

/// The frames of a body, one per line; `a` frames are expanded into the
/// Pusher messages they carry, parsed.
#[derive(Debug, PartialEq)]
enum Frame {
    Open,
    Heartbeat,
    Message(Value),
    Close(u16, String),
}

fn frames(body: &str) -> Vec<Frame> {
    let mut out = Vec::new();
    for line in body.lines() {
        out.extend(parse_line(line));
    }
    out
}

fn parse_line(line: &str) -> Vec<Frame> {
    match line.split_at(1) {
        ("o", "") => vec![Frame::Open],
        ("h", "") => vec![Frame::Heartbeat],
        ("a", rest) => {
            let strings: Vec<String> = serde_json::from_str(rest).unwrap();
            strings.iter().map(|s| Frame::Message(serde_json::from_str(s).unwrap())).collect()
        }
        ("c", rest) => {
            let (code, reason): (u16, String) = serde_json::from_str(rest).unwrap();
            vec![Frame::Close(code, reason)]
        }
        _ => panic!("not a frame: {line:?}"),
    }
}

fn messages(frames: &[Frame]) -> Vec<&Value> {
    frames
        .iter()
        .filter_map(|f| match f {
            Frame::Message(m) => Some(m),
            _ => None,
        })
        .collect()
}

/// Polls until the session has sent `n` messages; returns them.
fn poll_messages(port: u16, session: &str, n: usize) -> Vec<Value> {
    let mut got = Vec::new();
    while got.len() < n {
        let reply = poll(port, session);
        assert_eq!(reply.status, 200, "{}", reply.body);
        for frame in frames(&reply.body) {
            match frame {
                Frame::Message(m) => got.push(m),
                Frame::Heartbeat => {}
                other => panic!("unexpected {other:?} after {got:?}"),
            }
        }
    }
    got
}

/// Opens a polling session: `o`, then `connection_established`.
fn open_polling(port: u16, session: &str) -> String {
    let reply = poll(port, session);
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert!(
        reply.headers.to_ascii_lowercase().contains("access-control-allow-origin: *"),
        "{}",
        reply.headers
    );
    let got = frames(&reply.body);
    assert_eq!(got.first(), Some(&Frame::Open), "{}", reply.body);
    let established = match got.get(1) {
        Some(Frame::Message(m)) => m.clone(),
        _ => poll_messages(port, session, 1).remove(0),
    };
    assert_eq!(established["event"], "pusher:connection_established");
    let data: Value = serde_json::from_str(established["data"].as_str().unwrap()).unwrap();
    data["socket_id"].as_str().unwrap().to_owned()
}

fn subscribe(port: u16, session: &str, channel: &str) {
    let msg = json!({"event": "pusher:subscribe", "data": {"channel": channel}});
    assert_eq!(send(port, session, &[msg]).status, 204);
}

/// An `xhr_streaming` response being read, chunk by chunk.
struct Stream {
    reader: BufReader<TcpStream>,
    pending: std::collections::VecDeque<Frame>,
    /// Body bytes read (chunk framing excluded): what pusher-js's
    /// `responseText` would hold.
    body_bytes: usize,
}

impl Stream {
    fn open(port: u16, session: &str) -> Stream {
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(WAIT)).unwrap();
        let path = format!("{}/xhr_streaming?protocol=7&client=js&version=8.6.0", base(session));
        let raw = format!("POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n");
        s.write_all(raw.as_bytes()).unwrap();
        let mut reader = BufReader::new(s);
        let mut head = String::new();
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            if line == "\r\n" || line.is_empty() {
                break;
            }
            head.push_str(&line);
        }
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert!(head.to_ascii_lowercase().contains("transfer-encoding: chunked"), "{head}");
        Stream { reader, pending: Default::default(), body_bytes: 0 }
    }

    /// The next frame; `None` at the end of the body.
    fn next(&mut self) -> Option<Frame> {
        self.next_counted().map(|(frame, _)| frame)
    }

    /// The next frame, and the body bytes read so far when it was read.
    fn next_counted(&mut self) -> Option<(Frame, usize)> {
        while self.pending.is_empty() {
            let mut size = String::new();
            self.reader.read_line(&mut size).unwrap();
            let size = usize::from_str_radix(size.trim(), 16).unwrap();
            let mut data = vec![0; size + 2];
            self.reader.read_exact(&mut data).unwrap();
            if size == 0 {
                return None;
            }
            self.body_bytes += size;
            let text = String::from_utf8(data[..size].to_vec()).unwrap();
            for line in text.lines() {
                self.pending.extend(parse_line(line));
            }
        }
        self.pending.pop_front().map(|frame| (frame, self.body_bytes))
    }

    fn message(&mut self) -> Value {
        match self.next() {
            Some(Frame::Message(m)) => m,
            other => panic!("expected a message, got {other:?}"),
        }
    }
}

#[test]
fn polling_sessions_subscribe_receive_and_answer_pings_on_either_shard() {
    let server = Server::start();
    // Sessions whose owners differ, each request on a new connection the
    // kernel gives either shard: every request must reach its owner.
    for i in 0..6 {
        let session = format!("{i}/polling{i}");
        open_polling(server.port, &session);
        subscribe(server.port, &session, "news");
        let ok = poll_messages(server.port, &session, 1);
        assert_eq!(ok[0]["event"], "pusher_internal:subscription_succeeded");
        assert_eq!(ok[0]["channel"], "news");
        let r = trigger(server.port, &json!({"name": "hello", "channels": ["news"], "data": "x"}));
        assert_eq!(r.status, 200);
        let event = poll_messages(server.port, &session, 1);
        assert_eq!((&event[0]["event"], &event[0]["data"]), (&json!("hello"), &json!("x")));
        let ping = json!({"event": "pusher:ping", "data": {}});
        assert_eq!(send(server.port, &session, &[ping]).status, 204);
        assert_eq!(poll_messages(server.port, &session, 1)[0]["event"], "pusher:pong");
        // Leave: later triggers go to the next session only.
        let unsub = json!({"event": "pusher:unsubscribe", "data": {"channel": "news"}});
        assert_eq!(send(server.port, &session, &[unsub]).status, 204);
    }
}

#[test]
fn streaming_sessions_carry_frames_as_they_come() {
    let server = Server::start();
    let mut stream = Stream::open(server.port, "12/streamaa");
    assert_eq!(stream.next(), Some(Frame::Open));
    assert_eq!(stream.message()["event"], "pusher:connection_established");
    let ping = json!({"event": "pusher:ping", "data": {}});
    assert_eq!(send(server.port, "12/streamaa", &[ping]).status, 204);
    assert_eq!(stream.message()["event"], "pusher:pong");
    subscribe(server.port, "12/streamaa", "news");
    assert_eq!(stream.message()["event"], "pusher_internal:subscription_succeeded");
    for n in 0..20 {
        let body = json!({"name": "tick", "channels": ["news"], "data": n.to_string()});
        assert_eq!(trigger(server.port, &body).status, 200);
    }
    for n in 0..20 {
        let m = stream.message();
        assert_eq!((&m["event"], &m["data"]), (&json!("tick"), &json!(n.to_string())));
    }
}

#[test]
fn private_channels_and_client_events_over_polling() {
    let server = Server::start();
    let session = "3/privpoll";
    let socket_id = open_polling(server.port, session);
    let channel = "private-room";
    let auth = sign_auth(&format!("{socket_id}:{channel}"));
    let msg = json!({"event": "pusher:subscribe", "data": {"channel": channel, "auth": auth}});
    assert_eq!(send(server.port, session, &[msg]).status, 204);
    assert_eq!(
        poll_messages(server.port, session, 1)[0]["event"],
        "pusher_internal:subscription_succeeded"
    );
    // A WebSocket client on the same channel hears the session's client
    // event, and the session hears the WebSocket's.
    let mut ws = server.ws();
    assert_eq!(ws.subscribe(channel)["event"], "pusher_internal:subscription_succeeded");
    let from_http = json!({"event": "client-hi", "channel": channel, "data": {"from": "http"}});
    assert_eq!(send(server.port, session, &[from_http]).status, 204);
    let got = ws.event();
    assert_eq!((&got["event"], &got["data"]["from"]), (&json!("client-hi"), &json!("http")));
    ws.send(json!({"event": "client-hi", "channel": channel, "data": {"from": "ws"}}));
    let got = poll_messages(server.port, session, 1);
    assert_eq!(got[0]["event"], "client-hi");
    assert_eq!(got[0]["data"]["from"], "ws");
}

#[test]
fn events_queued_between_polls_all_arrive_in_order() {
    let server = Server::start();
    let session = "9/queued";
    open_polling(server.port, session);
    subscribe(server.port, session, "q");
    assert_eq!(
        poll_messages(server.port, session, 1)[0]["event"],
        "pusher_internal:subscription_succeeded"
    );
    for n in 0..200 {
        let body = json!({"name": "e", "channels": ["q"], "data": n.to_string()});
        assert_eq!(trigger(server.port, &body).status, 200);
    }
    let got = poll_messages(server.port, session, 200);
    let data: Vec<String> = got.iter().map(|m| m["data"].as_str().unwrap().to_owned()).collect();
    let expected: Vec<String> = (0..200).map(|n: i32| n.to_string()).collect();
    assert_eq!(data, expected);
}

#[test]
fn a_session_whose_queue_overflows_is_closed_with_4100() {
    let server = Server::start_with(&config("  max_outbox_bytes: 4096\n", ""), &[]);
    let session = "5/overflow";
    open_polling(server.port, session);
    subscribe(server.port, session, "big");
    assert_eq!(
        poll_messages(server.port, session, 1)[0]["event"],
        "pusher_internal:subscription_succeeded"
    );
    let data = "x".repeat(1000);
    for _ in 0..8 {
        let body = json!({"name": "e", "channels": ["big"], "data": data});
        assert_eq!(trigger(server.port, &body).status, 200);
    }
    // The queue's frames are dropped for the error and the close.
    let reply = poll(server.port, session);
    let got = frames(&reply.body);
    let error = messages(&got);
    assert_eq!(error.len(), 1, "{}", reply.body);
    assert_eq!(error[0]["event"], "pusher:error");
    assert_eq!(error[0]["data"]["code"], 4100);
    assert!(matches!(got.last(), Some(Frame::Close(4100, _))), "{}", reply.body);
    // The session is gone.
    assert_eq!(send(server.port, session, &[]).status, 404);
}

#[test]
fn a_session_without_receiver_expires() {
    let server = Server::start_with(&config("  http_session_timeout_secs: 1\n", ""), &[]);
    let session = "1/expiring";
    open_polling(server.port, session);
    // Known right after its poll was answered…
    assert_eq!(send(server.port, session, &[]).status, 204);
    assert_eq!(metric(server.port, "stapes_http_sessions"), Some(1));
    assert_eq!(metric(server.port, "stapes_connections{app=\"1001\"}"), Some(1));
    // …and gone once no request was open for the timeout.
    wait_until("the session to expire", || send(server.port, session, &[]).status == 404);
    assert_eq!(metric(server.port, "stapes_http_sessions"), Some(0));
    assert_eq!(metric(server.port, "stapes_http_sessions_expired_total"), Some(1));
    assert_eq!(metric(server.port, "stapes_connections{app=\"1001\"}"), Some(0));
    // A poll now opens a new session (pusher-js then sees a second `o` and
    // reconnects).
    assert_eq!(frames(&poll(server.port, session).body).first(), Some(&Frame::Open));
}

#[test]
fn refusals_come_as_a_pusher_error_and_a_close_frame() {
    let server = Server::start_with(&config("  max_http_sessions: 1\n", ""), &[]);
    let path = "/pusher/app/no-such-key/1/nokey/xhr?protocol=7";
    let reply = request(server.port, "POST", path, "");
    let got = frames(&reply.body);
    assert_eq!(got[0], Frame::Open, "{}", reply.body);
    assert_eq!(messages(&got)[0]["data"]["code"], 4001);
    assert!(matches!(got.last(), Some(Frame::Close(4001, _))));
    let path = format!("/pusher/app/{KEY}/1/badproto/xhr?protocol=99");
    let got = frames(&request(server.port, "POST", &path, "").body);
    assert!(matches!(got.last(), Some(Frame::Close(4007, _))), "{got:?}");
    // One session per node: the second is refused with 4100.
    open_polling(server.port, "1/first");
    let got = frames(&poll(server.port, "2/second").body);
    assert_eq!(messages(&got)[0]["data"]["code"], 4100);
    assert!(matches!(got.last(), Some(Frame::Close(4100, _))));
}

#[test]
fn bad_paths_methods_and_bodies_get_clear_errors() {
    let server = Server::start();
    let session = "4/badinput";
    open_polling(server.port, session);
    let sent =
        |body: &str| request(server.port, "POST", &format!("{}/xhr_send", base(session)), body);
    for body in ["", "{}", "[1,2]", "[\"unterminated"] {
        let r = sent(body);
        assert_eq!(r.status, 400, "{body:?}: {}", r.body);
        assert!(r.body.contains("JSON array of strings"), "{}", r.body);
    }
    let r = send(server.port, "4/neveropened", &[]);
    assert_eq!((r.status, r.body.trim()), (404, "Session not found"));
    let r = request(server.port, "POST", &format!("{}/xhr_nope", base(session)), "");
    assert_eq!(r.status, 404);
    assert!(r.body.contains("Not an HTTP transport path"), "{}", r.body);
    let r = request(server.port, "GET", &format!("{}/xhr", base(session)), "");
    assert_eq!(r.status, 405);
    // A CORS preflight is answered for any origin.
    let r = request(server.port, "OPTIONS", &format!("{}/xhr_send", base(session)), "");
    assert_eq!(r.status, 204);
    let headers = r.headers.to_ascii_lowercase();
    assert!(headers.contains("access-control-allow-origin: *"), "{headers}");
    assert!(headers.contains("access-control-allow-methods: post"), "{headers}");
    assert!(headers.contains("access-control-allow-headers: content-type"), "{headers}");
    // The session is still fine.
    assert_eq!(send(server.port, session, &[]).status, 204);
}

#[test]
fn a_new_stream_replaces_the_old_and_frames_are_not_repeated_or_lost() {
    let server = Server::start();
    let session = "8/restream";
    let mut first = Stream::open(server.port, session);
    assert_eq!(first.next(), Some(Frame::Open));
    assert_eq!(first.message()["event"], "pusher:connection_established");
    subscribe(server.port, session, "r");
    assert_eq!(first.message()["event"], "pusher_internal:subscription_succeeded");
    drop(first);
    // Events while no stream is open wait in the queue.
    for n in 0..3 {
        let body = json!({"name": "e", "channels": ["r"], "data": n.to_string()});
        assert_eq!(trigger(server.port, &body).status, 200);
    }
    let mut second = Stream::open(server.port, session);
    for n in 0..3 {
        let m = second.message();
        assert_eq!(m["data"], n.to_string(), "no second `o`, nothing lost: {m}");
    }
    // Closing the session (unsubscribe is not a close; a bad client event
    // rate is not needed): shut the server down, which closes with 4200.
    server.begin_stop();
    let mut rest = Vec::new();
    while let Some(f) = second.next() {
        rest.push(f);
    }
    assert!(matches!(rest.last(), Some(Frame::Close(4200, _))), "{rest:?}");
}

#[test]
fn a_message_over_max_message_bytes_closes_the_session_with_1009() {
    let server = Server::start_with(&config("  max_message_bytes: 1024\n", ""), &[]);
    let session = "6/toolarge";
    open_polling(server.port, session);
    let big = json!({"event": "client-x", "channel": "c", "data": "y".repeat(2000)});
    assert_eq!(send(server.port, session, &[big]).status, 204);
    let got = frames(&poll(server.port, session).body);
    assert!(matches!(got.last(), Some(Frame::Close(1009, _))), "{got:?}");
    assert_eq!(send(server.port, session, &[]).status, 404);
}

/// pusher-js opens a new stream once the old one carried 256 KiB and it
/// read every line of it, without telling the server; a byte sent on the
/// old stream after that would be lost. So the server sends nothing past
/// that mark, and the new stream gets the rest: every event arrives once.
#[test]
fn a_stream_past_pusher_js_buffer_limit_gets_nothing_more_and_the_next_gets_the_rest() {
    let server = Server::start();
    let session = "10/bigstream";
    let mut first = Stream::open(server.port, session);
    assert_eq!(first.next(), Some(Frame::Open));
    assert_eq!(first.message()["event"], "pusher:connection_established");
    subscribe(server.port, session, "bulk");
    assert_eq!(first.message()["event"], "pusher_internal:subscription_succeeded");
    // 60 events of 10 KB (with non-ASCII text, escaped on the wire):
    // well past 256 KiB.
    let data = "é".repeat(1000) + &"x".repeat(8000);
    for n in 0..60 {
        let body = json!({"name": "e", "channels": ["bulk"], "data": format!("{n}:{data}")});
        assert_eq!(trigger(server.port, &body).status, 200);
    }
    let mut got = Vec::new();
    // Read as pusher-js does: every frame, until the body passed the mark.
    loop {
        match first.next_counted() {
            Some((Frame::Message(m), read)) => {
                got.push(m["data"].as_str().unwrap().split(':').next().unwrap().to_owned());
                if read > 256 * 1024 && first.pending.is_empty() {
                    break;
                }
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(got.len() < 60, "the first stream stopped at the mark: {}", got.len());
    drop(first);
    let mut second = Stream::open(server.port, session);
    while got.len() < 60 {
        got.push(second.message()["data"].as_str().unwrap().split(':').next().unwrap().to_owned());
    }
    let expected: Vec<String> = (0..60).map(|n: i32| n.to_string()).collect();
    assert_eq!(got, expected);
}
