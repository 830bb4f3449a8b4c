//! The client side of the wire, without sockets: the WebSocket opening
//! request, server frame parsing, masked client frames, the Pusher messages
//! the generator sends, the payload that carries a sequence number and a
//! send time, and the signed HTTP API request.

use hmac::{Hmac, KeyInit, Mac};
use md5::{Digest, Md5};
use sha2::Sha256;

/// The WebSocket opening request: to a Pusher app key, or to Incus's
/// `/socket` when `key` is `None`.
pub fn upgrade_request(host: &str, port: u16, key: Option<&str>) -> Vec<u8> {
    let path = match key {
        Some(key) => format!("/app/{key}?protocol=7&client=stapes-load&version=0.1.0"),
        None => "/socket".to_string(),
    };
    format!(
        "GET {path} HTTP/1.1\r\n\
         Host: {host}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: c3RhcGVzLWxvYWQtMDAwMA==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    .into_bytes()
}

/// Incus's first frame on `/socket` (incus.md §5.3); no reply comes.
pub fn incus_authenticate(user: &str) -> String {
    serde_json::json!({ "command": { "command": "authenticate", "user": user } }).to_string()
}

/// An Incus backend command that sends one message to every socket
/// (incus.md §5.1, §6.2); Incus wants `data` to be an object.
pub fn incus_broadcast(data: &str) -> String {
    serde_json::json!({
        "command": { "command": "message" },
        "message": { "event": "load", "data": { "stamp": data } }
    })
    .to_string()
}

/// Where the HTTP response head ends, and whether it is `101`.
pub fn upgrade_response(buf: &[u8]) -> Option<Result<usize, String>> {
    let end = memchr::memmem::find(buf, b"\r\n\r\n")? + 4;
    let head = &buf[..end];
    if head.starts_with(b"HTTP/1.1 101") {
        Some(Ok(end))
    } else {
        let line = head.split(|&b| b == b'\r').next().unwrap_or_default();
        Some(Err(String::from_utf8_lossy(line).into_owned()))
    }
}

/// One server frame's header, as far as the client cares.
#[derive(Debug, PartialEq, Eq)]
pub struct Frame {
    /// FIN bit.
    pub fin: bool,
    /// Opcode.
    pub opcode: u8,
    /// Payload start in the buffer.
    pub start: usize,
    /// Payload end in the buffer.
    pub end: usize,
    /// Masking key, if the server (wrongly) masked.
    pub mask: Option<[u8; 4]>,
}

/// Parses one frame at the front of `buf`; `None` until it is complete.
pub fn parse_frame(buf: &[u8]) -> Option<Frame> {
    if buf.len() < 2 {
        return None;
    }
    let fin = buf[0] & 0x80 != 0;
    let opcode = buf[0] & 0x0f;
    let masked = buf[1] & 0x80 != 0;
    let (len, mut at) = match buf[1] & 0x7f {
        126 => (u16::from_be_bytes([*buf.get(2)?, *buf.get(3)?]) as usize, 4),
        127 => {
            let b: [u8; 8] = buf.get(2..10)?.try_into().ok()?;
            (usize::try_from(u64::from_be_bytes(b)).ok()?, 10)
        }
        n => (n as usize, 2),
    };
    let mask = if masked {
        let m: [u8; 4] = buf.get(at..at + 4)?.try_into().ok()?;
        at += 4;
        Some(m)
    } else {
        None
    };
    let end = at.checked_add(len)?;
    (buf.len() >= end).then_some(Frame { fin, opcode, start: at, end, mask })
}

/// A masked client frame. The mask only has to defeat proxy cache
/// poisoning (RFC 6455 §10.3); a load generator on loopback has no such
/// intermediary, so a per-frame counter is enough.
pub fn client_frame(opcode: u8, payload: &[u8], mask_seed: u32) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 14);
    out.push(0x80 | opcode);
    match payload.len() {
        n if n < 126 => out.push(0x80 | n as u8),
        n if n <= 0xffff => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    let mask = mask_seed.wrapping_mul(0x9e37_79b9).to_be_bytes();
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    out
}

/// Marks the generator's own events so a receiver finds the sequence and
/// send time without parsing the JSON around them.
pub const MARK: &[u8] = b"#sl:";

/// Event data: `#sl:<seq>:<sent ns>:` padded with `x` to `size` bytes.
pub fn payload(seq: u64, sent_ns: u64, size: usize) -> String {
    let mut s = format!("#sl:{seq}:{sent_ns}:");
    while s.len() < size {
        s.push('x');
    }
    s
}

/// Finds the sequence and send time in a received frame.
pub fn find_stamp(frame: &[u8]) -> Option<(u64, u64)> {
    let at = memchr::memmem::find(frame, MARK)? + MARK.len();
    let rest = &frame[at..];
    let (seq, used) = digits(rest)?;
    let (sent, _) = digits(rest.get(used + 1..)?)?;
    Some((seq, sent))
}

fn digits(b: &[u8]) -> Option<(u64, usize)> {
    let n = b.iter().take_while(|c| c.is_ascii_digit()).count();
    if n == 0 || n > 19 {
        return None;
    }
    let v = b[..n].iter().fold(0u64, |v, c| v * 10 + u64::from(c - b'0'));
    Some((v, n))
}

/// `pusher:subscribe`, with auth (and channel data) when the channel needs it.
pub fn subscribe(channel: &str, auth: Option<&str>, channel_data: Option<&str>) -> String {
    let mut data = serde_json::json!({ "channel": channel });
    if let Some(a) = auth {
        data["auth"] = a.into();
    }
    if let Some(d) = channel_data {
        data["channel_data"] = d.into();
    }
    serde_json::json!({ "event": "pusher:subscribe", "data": data }).to_string()
}

/// `pusher:unsubscribe`.
pub fn unsubscribe(channel: &str) -> String {
    serde_json::json!({ "event": "pusher:unsubscribe", "data": { "channel": channel } }).to_string()
}

/// `pusher:pong`.
pub const PONG: &str = r#"{"event":"pusher:pong","data":{}}"#;

fn hmac_hex(secret: &str, msg: &str) -> String {
    // HMAC takes keys of any length, so this cannot fail.
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(secret.as_bytes())
        .unwrap_or_else(|_| unreachable!("HMAC accepts any key length"));
    mac.update(msg.as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

/// The `auth` value an app's auth endpoint would return.
pub fn channel_auth(
    key: &str,
    secret: &str,
    socket_id: &str,
    channel: &str,
    data: Option<&str>,
) -> String {
    let msg = match data {
        Some(d) => format!("{socket_id}:{channel}:{d}"),
        None => format!("{socket_id}:{channel}"),
    };
    format!("{key}:{}", hmac_hex(secret, &msg))
}

/// A signed `POST /apps/{id}/events` (Pusher HTTP API, auth_version 1.0).
pub fn signed_post(
    host: &str,
    port: u16,
    app_id: &str,
    key: &str,
    secret: &str,
    body: &str,
    unix: u64,
) -> Vec<u8> {
    let path = format!("/apps/{app_id}/events");
    let md5 = hex::encode(Md5::digest(body.as_bytes()));
    let query = format!("auth_key={key}&auth_timestamp={unix}&auth_version=1.0&body_md5={md5}");
    let sig = hmac_hex(secret, &format!("POST\n{path}\n{query}"));
    format!(
        "POST {path}?{query}&auth_signature={sig} HTTP/1.1\r\nHost: {host}:{port}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Status and total length of one complete HTTP response at the front of
/// `buf` (Content-Length bodies only, which is what Pusher servers send).
pub fn http_response(buf: &[u8]) -> Option<Result<(u16, usize), String>> {
    let head_end = memchr::memmem::find(buf, b"\r\n\r\n")? + 4;
    let head = std::str::from_utf8(&buf[..head_end]).ok()?;
    let status = head.get(9..12).and_then(|s| s.parse::<u16>().ok());
    let Some(status) = status else {
        return Some(Err(format!("bad status line: {}", head.lines().next().unwrap_or(""))));
    };
    let mut len = 0usize;
    for line in head.lines() {
        if let Some((name, value)) = line.split_once(':')
            && name.eq_ignore_ascii_case("content-length")
        {
            len = value.trim().parse().unwrap_or(0);
        }
    }
    (buf.len() >= head_end + len).then_some(Ok((status, head_end + len)))
}

/// A Redis `PUBLISH` in RESP.
pub fn redis_publish(channel: &str, message: &str) -> Vec<u8> {
    format!(
        "*3\r\n$7\r\nPUBLISH\r\n${}\r\n{channel}\r\n${}\r\n{message}\r\n",
        channel.len(),
        message.len()
    )
    .into_bytes()
}

/// Which sequence numbers one connection has seen, over a sliding window
/// of 128: publishers in parallel may reorder events by up to the
/// in-flight window, so "not greater than the last" would call a reordered
/// event a duplicate.
#[derive(Debug, Default, Clone, Copy)]
pub struct SeqWindow {
    base: u64,
    mask: u128,
}

impl SeqWindow {
    /// Records `seq`; false if it was seen already (or is older than the window).
    pub fn insert(&mut self, seq: u64) -> bool {
        if seq < self.base {
            return false;
        }
        let mut off = seq - self.base;
        if off >= 128 {
            let shift = off - 127;
            self.mask = if shift >= 128 { 0 } else { self.mask >> shift };
            self.base += shift;
            off = 127;
        }
        let bit = 1u128 << off;
        if self.mask & bit != 0 {
            return false;
        }
        self.mask |= bit;
        let run = self.mask.trailing_ones();
        if run > 0 {
            self.mask = if run >= 128 { 0 } else { self.mask >> run };
            self.base += u64::from(run);
        }
        true
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn seq_window_allows_reordering_and_catches_repeats() {
        let mut w = SeqWindow::default();
        assert!(w.insert(1));
        assert!(w.insert(0));
        assert!(!w.insert(1));
        assert!(!w.insert(0));
        assert!(w.insert(5));
        assert!(w.insert(3));
        assert!(!w.insert(5));
        assert!(w.insert(1000), "a gap is not a duplicate");
        assert!(!w.insert(1000));
        assert!(w.insert(999));
        assert!(!w.insert(3), "older than the window");
    }

    use super::*;

    #[test]
    fn frames_round_trip_through_unmasking() {
        let f = client_frame(1, b"hello", 7);
        let h = parse_frame(&f).expect("complete");
        let m = h.mask.expect("client frames are masked");
        let text: Vec<u8> =
            f[h.start..h.end].iter().enumerate().map(|(i, b)| b ^ m[i % 4]).collect();
        assert_eq!(text, b"hello");
        assert!(parse_frame(&f[..f.len() - 1]).is_none());
        let long = client_frame(1, &[b'a'; 70_000], 1);
        let h = parse_frame(&long).expect("complete");
        assert_eq!(h.end - h.start, 70_000);
    }

    #[test]
    fn stamp_is_found_inside_a_pusher_event() {
        let data = payload(42, 123_456_789, 100);
        assert_eq!(data.len(), 100);
        let frame = serde_json::json!({"event":"e","channel":"c","data":data}).to_string();
        assert_eq!(find_stamp(frame.as_bytes()), Some((42, 123_456_789)));
        assert_eq!(find_stamp(br#"{"event":"pusher:ping"}"#), None);
    }

    #[test]
    fn signature_matches_the_spec_worked_example() {
        // pusher.md §12.2: POST /apps/3/events with this body, key and secret.
        let body = r#"{"name":"foo","channels":["project-3"],"data":"{\"some\":\"data\"}"}"#;
        let req = signed_post(
            "h",
            1,
            "3",
            "278d425bdf160c739803",
            "7ad3773142a6692b25b8",
            body,
            1353088179,
        );
        let text = String::from_utf8(req).expect("ascii");
        assert!(text.contains("body_md5=ec365a775a4cd0599faeb73354201b6f"), "{text}");
        assert!(
            text.contains(
                "auth_signature=da454824c97ba181a32ccc17a72625ba02771f50b50e1e7430e47a1f3f457e6c"
            ),
            "{text}"
        );
    }

    #[test]
    fn http_responses_wait_for_their_body() {
        let r = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}";
        assert_eq!(http_response(r), Some(Ok((200, r.len()))));
        assert_eq!(http_response(&r[..r.len() - 1]), None);
    }
}
