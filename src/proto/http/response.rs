//! HTTP/1.1 responses.
//!
//! Every response is rendered into a single `Bytes` so the connection driver
//! can hand it to one write without further copying.

use bytes::{BufMut, Bytes, BytesMut};

use crate::core::json::push_decimal;

/// A response decided but not yet rendered: whether the connection stays
/// open is the connection's business (the request's keep-alive, a draining
/// server), so the bytes are made only when that is known.
#[derive(Debug, Clone)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Body.
    pub body: Bytes,
    style: Style,
}

/// How a [`Response`] is rendered.
#[derive(Debug, Clone, Copy)]
enum Style {
    Json,
    Text,
    Typed(&'static str),
    /// Rendered by a protocol with headers of its own (Incus's `/lp`);
    /// `closes` forces `Connection: close`.
    Custom {
        render: fn(u16, &[u8], bool) -> Bytes,
        closes: bool,
    },
}

impl Response {
    /// `200` with an `application/json` body.
    pub fn json(body: impl Into<Bytes>) -> Self {
        Self { status: 200, body: body.into(), style: Style::Json }
    }

    /// A `text/plain` response (a newline is added when missing).
    pub fn text(status: u16, body: &str) -> Self {
        let body = Bytes::copy_from_slice(body.as_bytes());
        Self { status, body, style: Style::Text }
    }

    /// `200` with a content type of its own.
    pub fn typed(content_type: &'static str, body: impl Into<Bytes>) -> Self {
        Self { status: 200, body: body.into(), style: Style::Typed(content_type) }
    }

    /// A response whose protocol renders it: `render(status, body,
    /// keep_alive)`; `closes` ends the connection after it whatever the
    /// request asked.
    pub fn custom(
        status: u16,
        body: Bytes,
        render: fn(u16, &[u8], bool) -> Bytes,
        closes: bool,
    ) -> Self {
        Self { status, body, style: Style::Custom { render, closes } }
    }

    /// Whether the connection must close after this response.
    pub fn forces_close(&self) -> bool {
        matches!(self.style, Style::Custom { closes: true, .. })
    }

    /// The bytes to write.
    pub fn render(&self, keep_alive: bool) -> Bytes {
        match self.style {
            Style::Json => json(self.status, &self.body, keep_alive),
            Style::Text => text(self.status, &String::from_utf8_lossy(&self.body), keep_alive),
            Style::Typed(content_type) => {
                response(self.status, content_type, &self.body, keep_alive)
            }
            Style::Custom { render, .. } => render(self.status, &self.body, keep_alive),
        }
    }
}

/// A complete HTTP/1.1 response: status line, Content-Type, Content-Length,
/// `Connection: close` when `keep_alive` is false, then the body.
///
/// 1xx and 204 responses carry no body, so for those the content type and
/// body are ignored and no Content-Length is sent (RFC 9110 §8.6).
pub fn response(status: u16, content_type: &str, body: &[u8], keep_alive: bool) -> Bytes {
    with_headers(status, &[], content_type, body, keep_alive)
}

/// A response with an `application/json` body.
pub fn json(status: u16, body: &[u8], keep_alive: bool) -> Bytes {
    response(status, "application/json", body, keep_alive)
}

/// A `text/plain; charset=utf-8` response; a trailing newline is added when
/// `body` lacks one so the message reads cleanly in a terminal.
pub fn text(status: u16, body: &str, keep_alive: bool) -> Bytes {
    let newline: &[u8] = if body.ends_with('\n') { b"" } else { b"\n" };
    render(status, &[], "text/plain; charset=utf-8", &[body.as_bytes(), newline], keep_alive)
}

/// Like [`response`] with extra header lines inserted after the status line.
///
/// Names and values are written verbatim: callers pass constants or values
/// they have already validated, never raw client input.
pub fn with_headers(
    status: u16,
    extra_headers: &[(&str, &str)],
    content_type: &str,
    body: &[u8],
    keep_alive: bool,
) -> Bytes {
    render(status, extra_headers, content_type, &[body], keep_alive)
}

/// The canonical reason phrase for `status` (empty for codes we never send,
/// which the status line tolerates).
pub fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        101 => "Switching Protocols",
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        204 => "No Content",
        301 => "Moved Permanently",
        302 => "Found",
        304 => "Not Modified",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        411 => "Length Required",
        413 => "Content Too Large",
        414 => "URI Too Long",
        415 => "Unsupported Media Type",
        422 => "Unprocessable Content",
        426 => "Upgrade Required",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        505 => "HTTP Version Not Supported",
        _ => "",
    }
}

fn render(
    status: u16,
    extra_headers: &[(&str, &str)],
    content_type: &str,
    body_parts: &[&[u8]],
    keep_alive: bool,
) -> Bytes {
    let bodyless = (100..200).contains(&status) || status == 204;
    let body_len: usize = if bodyless { 0 } else { body_parts.iter().map(|p| p.len()).sum() };
    let extra_len: usize = extra_headers.iter().map(|(n, v)| n.len() + v.len() + 4).sum();
    // Fixed text below is under 128 bytes; sizing once keeps this a single allocation.
    let mut out = BytesMut::with_capacity(
        128 + reason(status).len() + content_type.len() + extra_len + body_len,
    );

    out.put_slice(b"HTTP/1.1 ");
    push_decimal(&mut out, u64::from(status));
    out.put_u8(b' ');
    out.put_slice(reason(status).as_bytes());
    out.put_slice(b"\r\n");
    for (name, value) in extra_headers {
        out.put_slice(name.as_bytes());
        out.put_slice(b": ");
        out.put_slice(value.as_bytes());
        out.put_slice(b"\r\n");
    }
    if !bodyless {
        out.put_slice(b"Content-Type: ");
        out.put_slice(content_type.as_bytes());
        out.put_slice(b"\r\nContent-Length: ");
        push_decimal(&mut out, body_len as u64);
        out.put_slice(b"\r\n");
    }
    if !keep_alive {
        out.put_slice(b"Connection: close\r\n");
    }
    out.put_slice(b"\r\n");
    if !bodyless {
        for part in body_parts {
            out.put_slice(part);
        }
    }
    out.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(b: &Bytes) -> &str {
        std::str::from_utf8(b).expect("response is ASCII")
    }

    #[test]
    fn json_keep_alive() {
        let r = json(200, b"{}", true);
        assert_eq!(
            s(&r),
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"
        );
    }

    #[test]
    fn close_adds_connection_header() {
        let r = response(404, "text/html", b"x", false);
        assert_eq!(
            s(&r),
            "HTTP/1.1 404 Not Found\r\nContent-Type: text/html\r\nContent-Length: 1\r\nConnection: close\r\n\r\nx"
        );
    }

    #[test]
    fn text_appends_newline_once() {
        let r = text(400, "bad", true);
        assert!(s(&r).ends_with("Content-Length: 4\r\n\r\nbad\n"));
        assert!(s(&r).contains("Content-Type: text/plain; charset=utf-8\r\n"));
        let r = text(400, "bad\n", true);
        assert!(s(&r).ends_with("Content-Length: 4\r\n\r\nbad\n"));
        let r = text(200, "", true);
        assert!(s(&r).ends_with("Content-Length: 1\r\n\r\n\n"));
    }

    #[test]
    fn extra_headers_come_first() {
        let r = with_headers(426, &[("Sec-WebSocket-Version", "13")], "text/plain", b"", false);
        assert_eq!(
            s(&r),
            "HTTP/1.1 426 Upgrade Required\r\nSec-WebSocket-Version: 13\r\nContent-Type: text/plain\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        );
    }

    #[test]
    fn no_content_has_no_body_or_length() {
        let r = response(204, "application/json", b"ignored", true);
        assert_eq!(s(&r), "HTTP/1.1 204 No Content\r\n\r\n");
    }

    #[test]
    fn large_body_length() {
        let body = vec![b'a'; 1_234_567];
        let r = json(200, &body, true);
        assert!(s(&r).contains("Content-Length: 1234567\r\n"));
        assert!(r.ends_with(&body));
    }

    #[test]
    fn reasons() {
        assert_eq!(reason(431), "Request Header Fields Too Large");
        assert_eq!(reason(101), "Switching Protocols");
        assert_eq!(reason(299), "");
        let r = response(299, "a/b", b"", true);
        assert!(s(&r).starts_with("HTTP/1.1 299 \r\n"));
    }
}
