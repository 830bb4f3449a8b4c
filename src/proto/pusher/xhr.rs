//! pusher-js's HTTP fallback transports, `xhr_streaming` and `xhr_polling`,
//! sans-IO: which session a request names, the SockJS-style frames its
//! answers carry, the body of an `xhr_send`, and the node's table of
//! sessions with their receivers, expiry and heartbeats (time passed in).
//!
//! # The wire, as pusher-js 8 speaks it
//! The client picks a session (`{server}/{id}`: a number below 1000 and 8
//! base-32 characters) and posts, under its `httpPath` (`/pusher` unless
//! set), to `{httpPath}/app/{key}/{server}/{id}/{kind}?protocol=7&…`:
//! - `xhr_streaming`: one long response; each line a frame;
//! - `xhr`: one frame batch per response, then the client polls again;
//! - `xhr_send`: a JSON array of strings, each one Pusher message.
//!
//! Frames are lines: `o` (the session is open), `a[…]` (a JSON array of
//! strings, each one Pusher message as a WebSocket would carry it), `h`
//! (heartbeat) and `c[code,"reason"]` (closed, with a Pusher close code,
//! which pusher-js treats as the WebSocket close code).
//!
//! # Sessions
//! A session is a Pusher connection like any other in
//! [`crate::proto::pusher::shard::Shard`]: same state machine, same
//! outbox (its bound is the session's queue; overflowing it closes the
//! session with 4100), same activity checks. Only its frames travel
//! differently: the IO layer takes them out of the outbox when a receiver
//! (a streaming response, or a poll) is attached, and [`encode`] turns the
//! WebSocket frames into lines. A session belongs to one shard of the node,
//! [`owner`] of its path, so that every request of it meets the same state.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use slab::Slab;

use crate::core::{AppIdx, ConnKey};

/// The `httpPath` pusher-js uses for its HTTP transports unless told
/// otherwise.
pub const DEFAULT_PATH: &str = "/pusher";

/// Outbox tokens at and above this are sessions of [`XhrSessions`] (the
/// slot is below it), not sockets.
pub const TOKEN: u32 = 1 << 31;

/// Output silence after which a receiver gets an `h` frame: a streaming
/// response so that proxies keep it, a poll so that it ends and the client
/// asks again.
pub const HEARTBEAT: Duration = Duration::from_secs(25);

/// The open frame.
pub const OPEN: &[u8] = b"o\n";
/// The heartbeat frame.
pub const HEARTBEAT_FRAME: &[u8] = b"h\n";

/// Which request of a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `xhr_streaming`: a receiver that stays open.
    Streaming,
    /// `xhr`: a receiver that ends after one batch.
    Polling,
    /// `xhr_send`: messages from the client.
    Send,
}

/// What an HTTP-transport path names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Target<'a> {
    /// `/app/{key}`, as a WebSocket's path would be.
    pub app_path: &'a str,
    /// `{server}/{id}`.
    pub session: &'a str,
    /// `{httpPath}/app/{key}/{server}/{id}`: what [`owner`] hashes.
    pub base: &'a str,
    /// The request.
    pub kind: Kind,
}

/// Why an HTTP-transport request is refused before it reaches a session.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum XhrError {
    /// The path is under the prefix but is not
    /// `/app/{key}/{server}/{session}/{xhr_streaming|xhr|xhr_send}`.
    #[error(
        "Not an HTTP transport path: expected {{path}}/app/{{key}}/{{server}}/{{session}}/{{xhr_streaming|xhr|xhr_send}}"
    )]
    BadPath,
    /// `xhr_send` for a session this node does not have (never opened,
    /// expired or closed).
    #[error("Session not found")]
    UnknownSession,
    /// An `xhr_send` body that is not a JSON array of strings.
    #[error("Bad xhr_send body: expected a JSON array of strings")]
    BadBody,
    /// A method other than POST (or OPTIONS, answered as a CORS preflight).
    #[error("Method not allowed: the HTTP transports use POST")]
    Method,
}

impl XhrError {
    /// The HTTP status to answer with.
    pub fn status(&self) -> u16 {
        match self {
            XhrError::BadPath | XhrError::UnknownSession => 404,
            XhrError::BadBody => 400,
            XhrError::Method => 405,
        }
    }
}

/// Reads a request path under `prefix` (`httpPath`): `None` when the path
/// is not under it, so that other routes may have it.
pub fn route<'a>(prefix: &str, path: &'a str) -> Option<Result<Target<'a>, XhrError>> {
    let rest = path.strip_prefix(prefix)?;
    if !rest.starts_with("/app/") {
        return None;
    }
    Some(parse(path, rest).ok_or(XhrError::BadPath))
}

fn parse<'a>(path: &'a str, rest: &'a str) -> Option<Target<'a>> {
    let mut parts = rest.rsplitn(4, '/');
    let kind = match parts.next()? {
        "xhr_streaming" => Kind::Streaming,
        "xhr" => Kind::Polling,
        "xhr_send" => Kind::Send,
        _ => return None,
    };
    let id = parts.next()?;
    let server = parts.next()?;
    let app_path = parts.next()?;
    let server_ok = (1..=3).contains(&server.len()) && server.bytes().all(|b| b.is_ascii_digit());
    let id_ok = (1..=64).contains(&id.len())
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    let key = app_path.strip_prefix("/app/")?;
    if !server_ok || !id_ok || key.is_empty() || key.contains('/') {
        return None;
    }
    let base_len = path.len() - rest.len() + app_path.len() + 1 + server.len() + 1 + id.len();
    let session_start = path.len() - rest.len() + app_path.len() + 1;
    Some(Target {
        app_path,
        session: &path[session_start..base_len],
        base: &path[..base_len],
        kind,
    })
}

/// The shard of `shards` that owns the session at `base` ([`Target::base`]).
pub fn owner(base: &str, shards: usize) -> usize {
    crate::proto::index::owner_shard(0, base, shards)
}

/// The messages of an `xhr_send` body: a JSON array of strings, each one
/// Pusher message. `[]` (pusher-js's heartbeat) is no message.
pub fn parse_send(body: &[u8]) -> Result<Vec<String>, XhrError> {
    serde_json::from_slice(body).map_err(|_| XhrError::BadBody)
}

/// What [`encode`] took from an outbox.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Encoded {
    /// Bytes of WebSocket frames taken (to consume from the outbox).
    pub consumed: usize,
    /// Messages written into the `a` frame.
    pub messages: usize,
    /// The session's close frame was among them, with its code; nothing
    /// after it was taken.
    pub closed: Option<u16>,
}

/// Turns WebSocket frames (as an outbox holds them, each whole) into lines:
/// one `a[…]` for every text frame, then `c[code,"reason"]` if a close
/// frame came. Other control frames are dropped.
pub fn encode<'a>(frames: impl IntoIterator<Item = &'a [u8]>, out: &mut Vec<u8>) -> Encoded {
    let mut done = Encoded::default();
    let mut close = None;
    for frame in frames {
        done.consumed += frame.len();
        match unframe(frame) {
            Some(Unframed::Text(text)) => {
                out.extend_from_slice(if done.messages == 0 { b"a[" } else { b"," });
                push_ascii_json_str(out, &String::from_utf8_lossy(text));
                done.messages += 1;
            }
            Some(Unframed::Close(code, reason)) => {
                close = Some((code, reason));
                break;
            }
            None => {}
        }
    }
    if done.messages > 0 {
        out.extend_from_slice(b"]\n");
    }
    if let Some((code, reason)) = close {
        close_frame(code, &String::from_utf8_lossy(reason), out);
        done.closed = Some(code);
    }
    done
}

/// Appends `s` as a JSON string in ASCII only: everything outside
/// printable ASCII is a `\uXXXX` escape (UTF-16, as JSON has it), so that
/// a stream's byte count is the length of pusher-js's `responseText`
/// ([`STREAM_LIMIT`]).
pub fn push_ascii_json_str(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    for c in s.chars() {
        match c {
            '"' => out.extend_from_slice(b"\\\""),
            '\\' => out.extend_from_slice(b"\\\\"),
            ' '..='~' => out.push(c as u8),
            _ => {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    const HEX: &[u8; 16] = b"0123456789abcdef";
                    out.extend_from_slice(b"\\u");
                    for shift in [12, 8, 4, 0] {
                        out.push(HEX[usize::from((*unit >> shift) & 0xF)]);
                    }
                }
            }
        }
    }
    out.push(b'"');
}

/// Body bytes after which pusher-js gives up a stream and opens the next
/// one for the same session, once it has read every line (its
/// `MAX_BUFFER_LENGTH`, counted in characters of `responseText`, which
/// [`push_ascii_json_str`] makes equal to bytes). A stream that has
/// passed it is sent nothing more: what it would carry could arrive after
/// the client let it go, and is kept for the next stream instead.
pub const STREAM_LIMIT: usize = 256 * 1024;

/// Appends `c[code,"reason"]\n`.
pub fn close_frame(code: u16, reason: &str, out: &mut Vec<u8>) {
    out.extend_from_slice(format!("c[{code},").as_bytes());
    push_ascii_json_str(out, reason);
    out.extend_from_slice(b"]\n");
}

enum Unframed<'a> {
    Text(&'a [u8]),
    Close(u16, &'a [u8]),
}

/// Reads one whole unmasked server frame.
fn unframe(frame: &[u8]) -> Option<Unframed<'_>> {
    let (&first, &second) = (frame.first()?, frame.get(1)?);
    let header = match second & 0x7F {
        126 => 4,
        127 => 10,
        _ => 2,
    };
    let payload = frame.get(header..)?;
    match first & 0x0F {
        0x1 => Some(Unframed::Text(payload)),
        0x8 => {
            let code = match payload {
                [a, b, ..] => u16::from_be_bytes([*a, *b]),
                _ => 1000,
            };
            Some(Unframed::Close(code, payload.get(2..).unwrap_or_default()))
        }
        _ => None,
    }
}

/// Wraps `data` as one HTTP/1.1 chunk.
pub fn chunk(data: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(format!("{:x}\r\n", data.len()).as_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
}

/// The end of a chunked body.
pub const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

/// Header lines of every HTTP-transport answer: any origin may call (the
/// page that loads pusher-js is rarely served by this server), nothing may
/// be cached.
pub const HEADERS: &[(&str, &str)] =
    &[("Access-Control-Allow-Origin", "*"), ("Cache-Control", "no-store, no-cache")];

/// The content type of the frames.
pub const CONTENT_TYPE: &str = "application/javascript; charset=UTF-8";

/// The head of an `xhr_streaming` answer: 200, chunked, kept open.
pub fn streaming_head() -> Vec<u8> {
    let mut head = b"HTTP/1.1 200 OK\r\nContent-Type: ".to_vec();
    head.extend_from_slice(CONTENT_TYPE.as_bytes());
    head.extend_from_slice(b"\r\nTransfer-Encoding: chunked\r\n");
    for (name, value) in HEADERS {
        head.extend_from_slice(format!("{name}: {value}\r\n").as_bytes());
    }
    head.extend_from_slice(b"\r\n");
    head
}

/// Header lines of the answer to a CORS preflight (`OPTIONS`).
pub const PREFLIGHT_HEADERS: &[(&str, &str)] = &[
    ("Access-Control-Allow-Origin", "*"),
    ("Access-Control-Allow-Methods", "POST, OPTIONS"),
    ("Access-Control-Allow-Headers", "Content-Type"),
    ("Access-Control-Max-Age", "86400"),
];

/// A request attached to a session to carry its frames out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Receiver {
    /// The IO layer's socket key.
    pub socket: u32,
    /// The socket's generation, to tell it from a later socket in its slot.
    pub generation: u32,
    /// A streaming response (else a poll).
    pub streaming: bool,
}

/// One session.
#[derive(Debug)]
pub struct XhrSession {
    /// Its app.
    pub app: AppIdx,
    /// Its connection in the shard's Pusher state.
    pub conn: ConnKey,
    base: Box<str>,
    receiver: Option<Receiver>,
    /// Since when no receiver has been attached.
    idle_since: Option<Instant>,
    /// When a receiver was last given something (or attached).
    last_out: Instant,
}

impl XhrSession {
    /// The attached receiver.
    pub fn receiver(&self) -> Option<Receiver> {
        self.receiver
    }
}

/// Something a tick found due.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Due {
    /// The session had no receiver for the whole expiry time: remove it.
    Expired(u32),
    /// The receiver got nothing for [`HEARTBEAT`]: give it an `h`.
    Heartbeat(u32, Receiver),
}

/// A shard's HTTP-transport sessions, by slot (the outbox token less
/// [`TOKEN`]) and by path.
#[derive(Debug, Default)]
pub struct XhrSessions {
    slots: Slab<XhrSession>,
    /// Keyed by client text: SipHash, never Fx (tests/layers.rs).
    by_base: HashMap<Box<str>, u32>,
}

impl XhrSessions {
    /// The session at `base` ([`Target::base`]), if this shard has it.
    pub fn find(&self, base: &str) -> Option<u32> {
        self.by_base.get(base).copied()
    }

    /// A session by slot.
    pub fn get(&self, slot: u32) -> Option<&XhrSession> {
        self.slots.get(slot as usize)
    }

    /// Sessions held.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Whether none are held.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// The slot the next [`XhrSessions::insert`] takes, for the outbox token
    /// the Pusher state needs before the session exists.
    pub fn next_slot(&self) -> u32 {
        self.slots.vacant_key() as u32
    }

    /// Adds a session with no receiver yet; returns its slot.
    pub fn insert(&mut self, base: &str, app: AppIdx, conn: ConnKey, now: Instant) -> u32 {
        let base: Box<str> = base.into();
        let slot = self.slots.insert(XhrSession {
            app,
            conn,
            base: base.clone(),
            receiver: None,
            idle_since: Some(now),
            last_out: now,
        }) as u32;
        self.by_base.insert(base, slot);
        slot
    }

    /// Attaches `receiver`; returns the one it replaces, which the IO
    /// layer ends (pusher-js opens a new receiver only once it gave up the
    /// old one).
    pub fn attach(&mut self, slot: u32, receiver: Receiver, now: Instant) -> Option<Receiver> {
        let session = self.slots.get_mut(slot as usize)?;
        session.idle_since = None;
        session.last_out = now;
        session.receiver.replace(receiver).filter(|old| *old != receiver)
    }

    /// Detaches the receiver if it is `socket`/`generation` (a poll that
    /// was answered, a request whose client went away); the expiry clock
    /// starts.
    pub fn detach(&mut self, slot: u32, socket: u32, generation: u32, now: Instant) {
        let Some(session) = self.slots.get_mut(slot as usize) else { return };
        if session.receiver.is_some_and(|r| r.socket == socket && r.generation == generation) {
            session.receiver = None;
            session.idle_since = Some(now);
        }
    }

    /// Notes that the receiver was just given something.
    pub fn sent(&mut self, slot: u32, now: Instant) {
        if let Some(session) = self.slots.get_mut(slot as usize) {
            session.last_out = now;
        }
    }

    /// Forgets a session; returns it.
    pub fn remove(&mut self, slot: u32) -> Option<XhrSession> {
        let session = self.slots.try_remove(slot as usize)?;
        self.by_base.remove(&session.base);
        Some(session)
    }

    /// Hands `due` what is due at `now`: sessions without a receiver for
    /// `expiry`, receivers silent for [`HEARTBEAT`] (whose clock restarts).
    pub fn tick(&mut self, now: Instant, expiry: Duration, mut due: impl FnMut(Due)) {
        for (slot, session) in &mut self.slots {
            let slot = slot as u32;
            match (session.receiver, session.idle_since) {
                (None, Some(since)) if since + expiry <= now => due(Due::Expired(slot)),
                (Some(receiver), _) if session.last_out + HEARTBEAT <= now => {
                    session.last_out = now;
                    due(Due::Heartbeat(slot, receiver));
                }
                _ => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    // The fake clock needs one real instant to count from.
    #![allow(clippy::disallowed_methods)]
    use super::*;
    use crate::proto::ws::codec;

    const BASE: &str = "/pusher/app/key/123/abcdefgh";

    #[test]
    fn routes_the_three_requests_of_pusher_js() {
        for (suffix, kind) in
            [("xhr_streaming", Kind::Streaming), ("xhr", Kind::Polling), ("xhr_send", Kind::Send)]
        {
            let path = format!("{BASE}/{suffix}");
            let target = route(DEFAULT_PATH, &path).expect("under the prefix").expect("valid");
            assert_eq!(target.kind, kind);
            assert_eq!(target.app_path, "/app/key");
            assert_eq!(target.session, "123/abcdefgh");
            assert_eq!(target.base, BASE);
        }
    }

    #[test]
    fn other_paths_are_left_to_other_routes_and_bad_ones_refused() {
        assert_eq!(route(DEFAULT_PATH, "/apps/1/events"), None);
        assert_eq!(route(DEFAULT_PATH, "/app/key"), None);
        assert_eq!(route(DEFAULT_PATH, "/pusherx/app/key/1/a/xhr"), None);
        for bad in [
            "/pusher/app/key/123/abcdefgh/xhr_nope",
            "/pusher/app/key/123/abcdefgh",
            "/pusher/app/key/abc/abcdefgh/xhr",
            "/pusher/app/key/1234/abcdefgh/xhr",
            "/pusher/app/key/123/ab.cd/xhr",
            "/pusher/app//123/abcdefgh/xhr",
            "/pusher/app/a/b/123/abcdefgh/xhr",
        ] {
            assert_eq!(route(DEFAULT_PATH, bad), Some(Err(XhrError::BadPath)), "{bad}");
        }
        assert_eq!(XhrError::BadPath.status(), 404);
        assert_eq!(XhrError::BadBody.status(), 400);
    }

    #[test]
    fn every_request_of_a_session_has_the_same_owner() {
        let owners: Vec<usize> =
            (0..50).map(|i| owner(&format!("/pusher/app/key/{i}/abcdefgh"), 4)).collect();
        assert!(owners.iter().all(|&o| o < 4));
        assert!(owners.iter().any(|&o| o != owners[0]), "sessions spread over shards");
        let streaming = route(DEFAULT_PATH, "/pusher/app/key/7/zz/xhr_streaming")
            .expect("under")
            .expect("valid");
        let send =
            route(DEFAULT_PATH, "/pusher/app/key/7/zz/xhr_send").expect("under").expect("valid");
        assert_eq!(owner(streaming.base, 4), owner(send.base, 4));
    }

    #[test]
    fn send_bodies_are_arrays_of_strings() {
        assert_eq!(parse_send(b"[]"), Ok(vec![]));
        assert_eq!(
            parse_send(br#"["{\"event\":\"pusher:ping\",\"data\":{}}"]"#),
            Ok(vec![r#"{"event":"pusher:ping","data":{}}"#.to_owned()])
        );
        for bad in [&b""[..], b"{}", b"[1]", b"[\"a\"", b"\"a\""] {
            assert_eq!(parse_send(bad), Err(XhrError::BadBody));
        }
    }

    #[test]
    fn text_frames_become_one_array_and_a_close_ends_the_batch() {
        let a = codec::text_frame(br#"{"event":"a","data":"x\"y"}"#);
        let long = "z".repeat(300);
        let b = codec::text_frame(long.as_bytes());
        let ping = codec::ping_frame();
        let close = codec::close_frame(4100, "Over capacity");
        let after = codec::text_frame(b"never");
        let frames = [&a[..], &b, &ping, &close, &after];
        let mut out = Vec::new();
        let done = encode(frames, &mut out);
        let expected = format!(
            "a[\"{{\\\"event\\\":\\\"a\\\",\\\"data\\\":\\\"x\\\\\\\"y\\\"}}\",\"{long}\"]\n\
             c[4100,\"Over capacity\"]\n"
        );
        assert_eq!(String::from_utf8(out).expect("utf-8"), expected);
        assert_eq!(done.messages, 2);
        assert_eq!(done.closed, Some(4100));
        assert_eq!(done.consumed, a.len() + b.len() + ping.len() + close.len());
    }

    #[test]
    fn an_array_element_parses_back_to_the_message() {
        let message = r#"{"event":"e","channel":"c","data":"{\"k\":\"\u2028\\n\"}"}"#;
        let frame = codec::text_frame(message.as_bytes());
        let mut out = Vec::new();
        encode([&frame[..]], &mut out);
        let line = std::str::from_utf8(&out).expect("utf-8");
        let line = line.strip_prefix('a').expect("an a frame").trim_end();
        let parsed: Vec<String> = serde_json::from_str(line).expect("JSON");
        assert_eq!(parsed, vec![message.to_owned()]);
    }

    #[test]
    fn frames_are_ascii_whatever_the_messages_hold() {
        let message = "{\"data\":\"é ✓ 😀 \\u0001\"}\u{7f}";
        let frame = codec::text_frame(message.as_bytes());
        let mut out = Vec::new();
        encode([&frame[..]], &mut out);
        assert!(out.is_ascii(), "{}", String::from_utf8_lossy(&out));
        let line = std::str::from_utf8(&out).expect("utf-8");
        let line = line.strip_prefix('a').expect("an a frame").trim_end();
        let parsed: Vec<String> = serde_json::from_str(line).expect("JSON");
        assert_eq!(parsed, vec![message.to_owned()]);
        let mut close = Vec::new();
        close_frame(4000, "ü", &mut close);
        assert_eq!(close, b"c[4000,\"\\u00fc\"]\n");
    }

    #[test]
    fn nothing_to_encode_writes_nothing() {
        let mut out = Vec::new();
        assert_eq!(encode(std::iter::empty(), &mut out), Encoded::default());
        assert!(out.is_empty());
    }

    #[test]
    fn chunks_carry_their_hex_length() {
        let mut out = Vec::new();
        chunk(&[b'x'; 26], &mut out);
        assert_eq!(&out[..4], b"1a\r\n");
        assert!(out.ends_with(b"x\r\n"));
        let head = String::from_utf8(streaming_head()).expect("utf-8");
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"));
        assert!(head.contains("Transfer-Encoding: chunked\r\n"));
        assert!(head.ends_with("\r\n\r\n"));
    }

    fn receiver(socket: u32, streaming: bool) -> Receiver {
        Receiver { socket, generation: 1, streaming }
    }

    #[test]
    fn a_session_without_receiver_expires_and_one_with_a_receiver_does_not() {
        let t0 = Instant::now();
        let expiry = Duration::from_secs(10);
        let mut sessions = XhrSessions::default();
        let slot = sessions.insert(BASE, 0, 7, t0);
        assert_eq!(sessions.find(BASE), Some(slot));
        let due_at = |sessions: &mut XhrSessions, at| {
            let mut due = Vec::new();
            sessions.tick(at, expiry, |d| due.push(d));
            due
        };
        assert_eq!(due_at(&mut sessions, t0 + Duration::from_secs(9)), vec![]);
        // A poll attached at 9 s holds the session past its expiry.
        assert_eq!(sessions.attach(slot, receiver(3, false), t0 + Duration::from_secs(9)), None);
        assert_eq!(due_at(&mut sessions, t0 + Duration::from_secs(20)), vec![]);
        // Answered at 21 s: the clock restarts then.
        sessions.detach(slot, 3, 1, t0 + Duration::from_secs(21));
        assert_eq!(due_at(&mut sessions, t0 + Duration::from_secs(30)), vec![]);
        assert_eq!(due_at(&mut sessions, t0 + Duration::from_secs(31)), vec![Due::Expired(slot)]);
        let gone = sessions.remove(slot).expect("held");
        assert_eq!((gone.app, gone.conn), (0, 7));
        assert_eq!(sessions.find(BASE), None);
        assert!(sessions.is_empty());
    }

    #[test]
    fn a_silent_receiver_gets_heartbeats_every_interval() {
        let t0 = Instant::now();
        let mut sessions = XhrSessions::default();
        let slot = sessions.insert(BASE, 0, 1, t0);
        let stream = receiver(5, true);
        sessions.attach(slot, stream, t0);
        let mut due = Vec::new();
        sessions.tick(t0 + HEARTBEAT - Duration::from_millis(1), HEARTBEAT, |d| due.push(d));
        assert!(due.is_empty());
        sessions.tick(t0 + HEARTBEAT, HEARTBEAT, |d| due.push(d));
        assert_eq!(due, vec![Due::Heartbeat(slot, stream)]);
        // Output restarts the clock.
        sessions.sent(slot, t0 + HEARTBEAT + Duration::from_secs(20));
        due.clear();
        sessions.tick(t0 + HEARTBEAT * 2, HEARTBEAT, |d| due.push(d));
        assert!(due.is_empty());
    }

    #[test]
    fn a_new_receiver_replaces_the_old_and_a_stale_detach_is_ignored() {
        let t0 = Instant::now();
        let mut sessions = XhrSessions::default();
        let slot = sessions.insert(BASE, 0, 1, t0);
        assert_eq!(sessions.attach(slot, receiver(1, true), t0), None);
        assert_eq!(sessions.attach(slot, receiver(2, true), t0), Some(receiver(1, true)));
        // The old socket going away does not detach the new one.
        sessions.detach(slot, 1, 1, t0);
        assert_eq!(sessions.get(slot).and_then(XhrSession::receiver), Some(receiver(2, true)));
        sessions.detach(slot, 2, 1, t0);
        assert_eq!(sessions.get(slot).and_then(XhrSession::receiver), None);
    }
}
