//! WebSocket opening handshake (sans-IO).
//!
//! Server side of RFC 6455 §4.2. No subprotocols and no extensions are
//! negotiated: Pusher clients need neither, and declining
//! permessage-deflate keeps the codec free of RSV bits.

use bytes::{BufMut, Bytes, BytesMut};
use tungstenite::handshake::derive_accept_key;

use crate::proto::http::{
    request::{Method, Request},
    response,
};

/// Why an upgrade request was refused. In every case send
/// [`HandshakeError::response`] and close the connection.
#[derive(thiserror::Error, Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandshakeError {
    /// Upgrade requested with a method other than GET. Answer 400.
    #[error("websocket upgrade requires GET")]
    NotGet,
    /// HTTP/1.0 cannot upgrade. Answer 400.
    #[error("websocket upgrade requires HTTP/1.1")]
    OldHttp,
    /// `Connection` lacks the `upgrade` token. Answer 400.
    #[error("missing `Connection: Upgrade`")]
    NoConnectionUpgrade,
    /// `Upgrade` lacks the `websocket` token. Answer 400.
    #[error("missing `Upgrade: websocket`")]
    NotWebSocket,
    /// `Sec-WebSocket-Version` is absent or not 13. Answer 426 advertising
    /// version 13 so the client can retry with it.
    #[error("unsupported websocket version (only 13)")]
    UnsupportedVersion,
    /// `Sec-WebSocket-Key` is absent or not base64 of 16 bytes. Answer 400.
    #[error("missing or invalid Sec-WebSocket-Key")]
    BadKey,
}

impl HandshakeError {
    /// The complete HTTP response refusing the upgrade (connection closes).
    pub fn response(&self) -> Bytes {
        let body = self.to_string();
        match self {
            Self::UnsupportedVersion => response::with_headers(
                426,
                &[("Sec-WebSocket-Version", "13")],
                "text/plain; charset=utf-8",
                format!("{body}\n").as_bytes(),
                false,
            ),
            _ => response::text(400, &body, false),
        }
    }
}

/// Whether the request asks to become a WebSocket (`Upgrade: websocket`,
/// case-insensitive, possibly among other tokens). Route on this, then call
/// [`accept`] for the full validation.
pub fn is_upgrade(req: &Request) -> bool {
    req.header_has_token("upgrade", "websocket")
}

/// Validates a WebSocket upgrade request and returns the complete
/// `101 Switching Protocols` response to write before switching the
/// connection to the frame codec.
pub fn accept(req: &Request) -> Result<Bytes, HandshakeError> {
    if req.method != Method::Get {
        return Err(HandshakeError::NotGet);
    }
    if req.version_minor < 1 {
        return Err(HandshakeError::OldHttp);
    }
    if !req.header_has_token("connection", "upgrade") {
        return Err(HandshakeError::NoConnectionUpgrade);
    }
    if !is_upgrade(req) {
        return Err(HandshakeError::NotWebSocket);
    }
    if req.header("sec-websocket-version").map(str::trim) != Some("13") {
        return Err(HandshakeError::UnsupportedVersion);
    }
    let key = req
        .header("sec-websocket-key")
        .map(str::trim)
        .filter(|k| is_base64_of_16_bytes(k))
        .ok_or(HandshakeError::BadKey)?;

    let accept_key = derive_accept_key(key.as_bytes());
    const HEAD: &[u8] =
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: ";
    let mut out = BytesMut::with_capacity(HEAD.len() + accept_key.len() + 4);
    out.put_slice(HEAD);
    out.put_slice(accept_key.as_bytes());
    out.put_slice(b"\r\n\r\n");
    Ok(out.freeze())
}

/// 16 bytes encode to 22 base64 symbols plus `==`.
fn is_base64_of_16_bytes(key: &str) -> bool {
    let b = key.as_bytes();
    b.len() == 24
        && b[22..] == *b"=="
        && b[..22].iter().all(|&c| c.is_ascii_alphanumeric() || c == b'+' || c == b'/')
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::http::request::parse_head;

    const RFC_KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

    fn req(raw: &str) -> Request {
        match parse_head(raw.as_bytes(), 8192) {
            Ok(Some((r, _))) => r,
            other => panic!("bad test request: {other:?}"),
        }
    }

    fn upgrade_with(replace: &str, with: &str) -> Request {
        let raw = "GET /app/key?protocol=7 HTTP/1.1\r\nHost: x\r\nConnection: keep-alive, Upgrade\r\n\
                   Upgrade: WebSocket\r\nSec-WebSocket-Version: 13\r\n\
                   Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
                   Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\r\n";
        req(&raw.replacen(replace, with, 1))
    }

    #[test]
    fn rfc_example_accepted() {
        let r = upgrade_with("", "");
        assert!(is_upgrade(&r));
        let resp = accept(&r).expect("valid upgrade");
        let text = std::str::from_utf8(&resp).expect("ascii");
        // The accept value for the RFC 6455 §1.3 sample key.
        assert_eq!(
            text,
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n"
        );
        assert!(!text.contains("Extensions"));
        // The response head parses as one complete HTTP response with no body.
        let mut headers = [httparse::EMPTY_HEADER; 8];
        let mut parsed = httparse::Response::new(&mut headers);
        assert_eq!(parsed.parse(&resp).expect("parses"), httparse::Status::Complete(resp.len()));
        assert_eq!(parsed.code, Some(101));
    }

    #[test]
    fn not_an_upgrade() {
        assert!(!is_upgrade(&req("GET / HTTP/1.1\r\nHost: x\r\n\r\n")));
        assert!(!is_upgrade(&req("GET / HTTP/1.1\r\nUpgrade: h2c\r\n\r\n")));
        assert!(is_upgrade(&req("GET / HTTP/1.1\r\nUpgrade: h2c, websocket\r\n\r\n")));
    }

    #[test]
    fn rejections() {
        let cases = [
            ("GET /app", "POST /app", HandshakeError::NotGet),
            ("HTTP/1.1", "HTTP/1.0", HandshakeError::OldHttp),
            ("keep-alive, Upgrade", "keep-alive", HandshakeError::NoConnectionUpgrade),
            ("Connection: keep-alive, Upgrade\r\n", "", HandshakeError::NoConnectionUpgrade),
            ("Upgrade: WebSocket", "Upgrade: h2c", HandshakeError::NotWebSocket),
            ("Version: 13", "Version: 8", HandshakeError::UnsupportedVersion),
            ("Sec-WebSocket-Version: 13\r\n", "", HandshakeError::UnsupportedVersion),
            ("Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n", "", HandshakeError::BadKey),
            (RFC_KEY, "dGhlIHNhbXBsZSBub25jZQ", HandshakeError::BadKey),
            (RFC_KEY, "dGhlIHNhbXBsZSBub25jZQ=a", HandshakeError::BadKey),
            (RFC_KEY, "dGhlIHNhbXBsZSBub25j*Q==", HandshakeError::BadKey),
            (RFC_KEY, "dGhlIHNhbXBsZSBub25jZSBub25jZQ==", HandshakeError::BadKey),
        ];
        for (from, to, want) in cases {
            assert_eq!(accept(&upgrade_with(from, to)), Err(want), "{from} -> {to}");
        }
    }

    #[test]
    fn error_responses() {
        let r = HandshakeError::UnsupportedVersion.response();
        let text = std::str::from_utf8(&r).expect("ascii");
        assert!(text.starts_with("HTTP/1.1 426 Upgrade Required\r\n"));
        assert!(text.contains("\r\nSec-WebSocket-Version: 13\r\n"));
        assert!(text.contains("\r\nConnection: close\r\n"));

        let r = HandshakeError::BadKey.response();
        let text = std::str::from_utf8(&r).expect("ascii");
        assert!(text.starts_with("HTTP/1.1 400 Bad Request\r\n"));
        assert!(text.contains("\r\nConnection: close\r\n"));
        assert!(text.ends_with("Sec-WebSocket-Key\n"));
    }
}
