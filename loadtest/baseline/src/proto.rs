//! The wire formats, without sockets: HTTP request heads, the Pusher API
//! signature, WebSocket frames and the few Pusher messages the server
//! sends.

use std::borrow::Cow;

use base64::Engine;
use hmac::{Hmac, KeyInit, Mac};
use md5::Md5;
use serde::Deserialize;
use serde_json::value::RawValue;
use sha1::{Digest, Sha1};
use sha2::Sha256;

/// The one app's (id `1`) publishing endpoint.
pub(crate) const EVENTS_PATH: &str = "/apps/1/events";
/// Its key.
pub(crate) const APP_KEY: &str = "app-key";
/// Its secret.
pub(crate) const APP_SECRET: &str = "app-secret";
/// Seconds a signed request's timestamp may differ from our clock.
const MAX_CLOCK_SKEW: u64 = 600;
/// Longest client frame payload; larger ones close the connection (1009).
pub(crate) const MAX_FRAME: usize = 64 * 1024;

/// One complete HTTP request head.
pub(crate) struct Head<'a> {
    pub(crate) method: &'a str,
    pub(crate) target: &'a str,
    pub(crate) content_length: usize,
    pub(crate) upgrade_websocket: bool,
    pub(crate) ws_key: Option<&'a str>,
    /// Bytes of the head, blank line included.
    pub(crate) len: usize,
}

/// Parses the head at the front of `buf`: `None` until it is complete,
/// `Some(Err)` if it is not HTTP/1.1 we understand.
pub(crate) fn parse_head(buf: &[u8]) -> Option<Result<Head<'_>, ()>> {
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let Ok(text) = std::str::from_utf8(&buf[..end - 4]) else {
        return Some(Err(()));
    };
    let mut lines = text.split("\r\n");
    let mut first = lines.next().unwrap_or_default().split(' ');
    let (Some(method), Some(target), Some(_version)) = (first.next(), first.next(), first.next())
    else {
        return Some(Err(()));
    };
    let mut head = Head {
        method,
        target,
        content_length: 0,
        upgrade_websocket: false,
        ws_key: None,
        len: end,
    };
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            return Some(Err(()));
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            let Ok(n) = value.parse() else {
                return Some(Err(()));
            };
            head.content_length = n;
        } else if name.eq_ignore_ascii_case("upgrade") {
            head.upgrade_websocket = value.eq_ignore_ascii_case("websocket");
        } else if name.eq_ignore_ascii_case("sec-websocket-key") {
            head.ws_key = Some(value);
        }
    }
    Some(Ok(head))
}

/// The `101` answer to a WebSocket opening request with key `key`.
pub(crate) fn switching_protocols(out: &mut Vec<u8>, key: &str) {
    let mut sha = Sha1::new();
    sha.update(key.as_bytes());
    sha.update(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    let accept = base64::engine::general_purpose::STANDARD.encode(sha.finalize());
    out.extend_from_slice(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: ",
    );
    out.extend_from_slice(accept.as_bytes());
    out.extend_from_slice(b"\r\n\r\n");
}

/// A complete HTTP response with a body.
pub(crate) fn response(out: &mut Vec<u8>, status: &str, body: &str) {
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_bytes());
    out.extend_from_slice(b"\r\nContent-Type: application/json\r\nContent-Length: ");
    out.extend_from_slice(body.len().to_string().as_bytes());
    out.extend_from_slice(b"\r\n\r\n");
    out.extend_from_slice(body.as_bytes());
}

/// Checks a Pusher API request's signature (auth_version 1.0): `mac` is
/// the app secret's keyed HMAC, cloned per request so the key schedule is
/// computed once.
pub(crate) fn signature_ok(
    mac: &Hmac<Sha256>,
    method: &str,
    path: &str,
    query: &str,
    body: &[u8],
    now_unix: u64,
) -> bool {
    let mut params: Vec<(&str, &str)> =
        query.split('&').filter_map(|p| p.split_once('=')).collect();
    params.sort_unstable_by(|a, b| a.0.cmp(b.0));
    let get = |k: &str| params.iter().find(|p| p.0 == k).map(|p| p.1);
    if get("auth_key") != Some(APP_KEY) {
        return false;
    }
    let fresh = get("auth_timestamp")
        .and_then(|t| t.parse::<u64>().ok())
        .is_some_and(|t| t.abs_diff(now_unix) <= MAX_CLOCK_SKEW);
    if !fresh {
        return false;
    }
    if !body.is_empty() && get("body_md5") != Some(hex::encode(Md5::digest(body)).as_str()) {
        return false;
    }
    let Some(Ok(sig)) = get("auth_signature").map(hex::decode) else {
        return false;
    };
    let mut mac = mac.clone();
    mac.update(method.as_bytes());
    mac.update(b"\n");
    mac.update(path.as_bytes());
    mac.update(b"\n");
    let mut first = true;
    for (k, v) in params.iter().filter(|p| p.0 != "auth_signature") {
        if !first {
            mac.update(b"&");
        }
        first = false;
        mac.update(k.as_bytes());
        mac.update(b"=");
        mac.update(v.as_bytes());
    }
    mac.verify_slice(&sig).is_ok()
}

/// The app secret's HMAC state.
pub(crate) fn app_mac() -> Hmac<Sha256> {
    // HMAC takes keys of any length.
    <Hmac<Sha256> as KeyInit>::new_from_slice(APP_SECRET.as_bytes())
        .unwrap_or_else(|_| unreachable!("HMAC accepts any key length"))
}

/// The body of `POST /apps/{id}/events`.
#[derive(Deserialize)]
pub(crate) struct Trigger<'a> {
    #[serde(borrow)]
    pub(crate) name: &'a RawValue,
    #[serde(borrow)]
    pub(crate) data: &'a RawValue,
    #[serde(borrow, default)]
    pub(crate) channel: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub(crate) channels: Vec<Cow<'a, str>>,
}

/// A client's Pusher message.
#[derive(Deserialize)]
pub(crate) struct ClientMessage<'a> {
    #[serde(borrow)]
    pub(crate) event: Cow<'a, str>,
    #[serde(borrow, default)]
    pub(crate) data: Option<&'a RawValue>,
}

/// `data` of `pusher:subscribe` and `pusher:unsubscribe`.
#[derive(Deserialize)]
pub(crate) struct ChannelData<'a> {
    #[serde(borrow)]
    pub(crate) channel: Cow<'a, str>,
}

/// Appends an unmasked, final frame header of `opcode` for `len` bytes.
pub(crate) fn frame_header(out: &mut Vec<u8>, opcode: u8, len: usize) {
    out.push(0x80 | opcode);
    if len < 126 {
        out.push(len as u8);
    } else if len <= 0xffff {
        out.push(126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
}

/// Appends a text frame.
pub(crate) fn text_frame(out: &mut Vec<u8>, payload: &[u8]) {
    frame_header(out, 1, payload.len());
    out.extend_from_slice(payload);
}

/// Appends `s` as a JSON string.
pub(crate) fn json_str(out: &mut Vec<u8>, s: &str) {
    // Writing a &str to a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, s);
}

/// `{"event":<name>,"channel":"<channel>","data":<data>}` with `name` and
/// `data` already JSON.
pub(crate) fn event_json(out: &mut Vec<u8>, name: &str, channel: &str, data: &str) {
    out.extend_from_slice(b"{\"event\":");
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b",\"channel\":");
    json_str(out, channel);
    out.extend_from_slice(b",\"data\":");
    out.extend_from_slice(data.as_bytes());
    out.push(b'}');
}

/// One client frame at the front of a buffer.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Frame {
    /// Not complete yet.
    Partial,
    /// A complete frame: FIN, opcode, payload range (unmasked in place).
    Whole { fin: bool, opcode: u8, start: usize, end: usize },
    /// Close with this code.
    Bad(u16),
}

/// Parses and unmasks one client frame at the front of `buf`.
pub(crate) fn client_frame(buf: &mut [u8]) -> Frame {
    if buf.len() < 2 {
        return Frame::Partial;
    }
    let (fin, opcode) = (buf[0] & 0x80 != 0, buf[0] & 0x0f);
    if buf[0] & 0x70 != 0 || buf[1] & 0x80 == 0 {
        // Reserved bits without an extension, or an unmasked client frame.
        return Frame::Bad(1002);
    }
    let (len, at) = match buf[1] & 0x7f {
        126 if buf.len() >= 4 => (u64::from(u16::from_be_bytes([buf[2], buf[3]])), 4),
        127 if buf.len() >= 10 => {
            let mut b = [0u8; 8];
            b.copy_from_slice(&buf[2..10]);
            (u64::from_be_bytes(b), 10)
        }
        126 | 127 => return Frame::Partial,
        n => (u64::from(n), 2),
    };
    if len > MAX_FRAME as u64 {
        return Frame::Bad(1009);
    }
    let start = at + 4;
    let end = start + len as usize;
    if buf.len() < end {
        return Frame::Partial;
    }
    let mask = [buf[at], buf[at + 1], buf[at + 2], buf[at + 3]];
    for (i, b) in buf[start..end].iter_mut().enumerate() {
        *b ^= mask[i & 3];
    }
    Frame::Whole { fin, opcode, start, end }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn accept_key_matches_rfc6455_example() {
        let mut out = Vec::new();
        switching_protocols(&mut out, "dGhlIHNhbXBsZSBub25jZQ==");
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"), "{text}");
    }

    #[test]
    fn signature_of_the_spec_example_is_accepted_and_a_changed_one_is_not() {
        // pusher.md §12.2's worked example, with its own key and secret.
        let body = br#"{"name":"foo","channels":["project-3"],"data":"{\"some\":\"data\"}"}"#;
        let mac = <Hmac<Sha256> as KeyInit>::new_from_slice(b"7ad3773142a6692b25b8").unwrap();
        let q = |sig: &str| {
            format!(
                "auth_key={APP_KEY}&auth_timestamp=1353088179&auth_version=1.0&body_md5=ec365a775a4cd0599faeb73354201b6f&auth_signature={sig}"
            )
        };
        // The example's key is not ours, so recompute with our key name in the query.
        let mut m = mac.clone();
        let msg = format!(
            "POST\n/apps/3/events\nauth_key={APP_KEY}&auth_timestamp=1353088179&auth_version=1.0&body_md5=ec365a775a4cd0599faeb73354201b6f"
        );
        m.update(msg.as_bytes());
        let sig = hex::encode(m.finalize().into_bytes());
        let now = 1353088179;
        assert!(signature_ok(&mac, "POST", "/apps/3/events", &q(&sig), body, now));
        let mut bad = sig.clone().into_bytes();
        bad[0] = if bad[0] == b'0' { b'1' } else { b'0' };
        let bad = String::from_utf8(bad).unwrap();
        assert!(!signature_ok(&mac, "POST", "/apps/3/events", &q(&bad), body, now));
        assert!(!signature_ok(&mac, "POST", "/apps/3/events", &q(&sig), b"{}", now));
        assert!(!signature_ok(&mac, "POST", "/apps/3/events", &q(&sig), body, now + 601));
    }

    #[test]
    fn client_frames_unmask_and_limits_hold() {
        let mask = [1u8, 2, 3, 4];
        let mut f = vec![0x81, 0x80 | 5];
        f.extend_from_slice(&mask);
        f.extend(b"hello".iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        assert_eq!(client_frame(&mut f[..6]), Frame::Partial);
        assert_eq!(client_frame(&mut f), Frame::Whole { fin: true, opcode: 1, start: 6, end: 11 });
        assert_eq!(&f[6..11], b"hello");
        assert_eq!(client_frame(&mut [0x81, 5, 0, 0, 0, 0, 0]), Frame::Bad(1002));
        let mut big = vec![0x81, 0x80 | 127];
        big.extend_from_slice(&(1u64 << 20).to_be_bytes());
        assert_eq!(client_frame(&mut big), Frame::Bad(1009));
    }

    #[test]
    fn heads_wait_for_the_blank_line() {
        let req = b"POST /apps/1/events?a=b HTTP/1.1\r\nHost: x\r\nContent-Length: 12\r\n\r\n";
        assert!(parse_head(&req[..req.len() - 1]).is_none());
        let head = parse_head(req).unwrap().unwrap();
        assert_eq!(
            (head.method, head.target, head.content_length),
            ("POST", "/apps/1/events?a=b", 12)
        );
        assert_eq!(head.len, req.len());
    }
}
