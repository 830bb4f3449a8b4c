//! HTTP/1.1 request parsing (sans-IO).
//!
//! Only what a Pusher-compatible server needs: a request head, a
//! Content-Length framed body (never chunked), and form-style query strings.

/// Most headers a request may carry; more is answered with 431.
pub const MAX_HEADERS: usize = 64;

/// Request method. Methods we never route on collapse into `Other`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// `GET`
    Get,
    /// `POST`
    Post,
    /// `PUT`
    Put,
    /// `DELETE`
    Delete,
    /// `HEAD`
    Head,
    /// `OPTIONS`
    Options,
    /// Any other (syntactically valid) method.
    Other,
}

impl Method {
    fn from_token(token: &str) -> Self {
        // Methods are case-sensitive (RFC 9110 §9.1): `get` is not `GET`.
        match token {
            "GET" => Self::Get,
            "POST" => Self::Post,
            "PUT" => Self::Put,
            "DELETE" => Self::Delete,
            "HEAD" => Self::Head,
            "OPTIONS" => Self::Options,
            _ => Self::Other,
        }
    }
}

/// A parsed request head.
///
/// Its text (path, query, header names and values) sits end to end in one
/// string, which with the header boundaries makes two allocations per
/// request instead of two per header: every connection starts with one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// The request method.
    pub method: Method,
    /// Path, query, then each header's name and value.
    text: String,
    path_end: u32,
    query_end: u32,
    /// Where each header's name and value end in `text`, in arrival order.
    header_ends: Vec<(u32, u32)>,
    /// Body length from Content-Length; 0 when absent.
    pub content_length: usize,
    /// Whether the connection may carry another request after this one.
    pub keep_alive: bool,
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub version_minor: u8,
}

impl Request {
    /// Request target up to (not including) any `?`, still percent-encoded.
    pub fn path(&self) -> &str {
        &self.text[..self.path_end as usize]
    }

    /// Raw query string without the `?`; empty when there is none.
    pub fn query(&self) -> &str {
        &self.text[self.path_end as usize..self.query_end as usize]
    }

    /// Header fields in arrival order, names as sent.
    pub fn headers(&self) -> impl Iterator<Item = (&str, &str)> {
        self.header_spans().map(|(start, name_end, value_end)| {
            (&self.text[start..name_end], &self.text[name_end..value_end])
        })
    }

    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.values_of(name).next()
    }

    /// Whether any `name` header lists `token` in its comma-separated value
    /// (both compared case-insensitively), e.g. `Connection: keep-alive, Upgrade`.
    pub fn header_has_token(&self, name: &str, token: &str) -> bool {
        self.values_of(name).any(|v| has_token(v.as_bytes(), token))
    }

    /// Where each header's name starts and its name and value end in `text`.
    fn header_spans(&self) -> impl Iterator<Item = (usize, usize, usize)> {
        let starts = std::iter::once(self.query_end).chain(self.header_ends.iter().map(|e| e.1));
        starts.zip(&self.header_ends).map(|(start, &(name_end, value_end))| {
            (start as usize, name_end as usize, value_end as usize)
        })
    }

    /// The values of every `name` header. Names are compared as bytes, and
    /// only a match is sliced as text: a connect asks for four headers, and
    /// a browser sends a dozen.
    fn values_of<'s>(&'s self, name: &str) -> impl Iterator<Item = &'s str> {
        let bytes = self.text.as_bytes();
        self.header_spans()
            .filter(move |&(start, name_end, _)| {
                bytes[start..name_end].eq_ignore_ascii_case(name.as_bytes())
            })
            .map(|(_, name_end, value_end)| &self.text[name_end..value_end])
    }
}

/// Why a request head or query string was rejected. Every variant is final
/// for the request: answer with [`RequestError::status`] and the Display text,
/// then close the connection (the byte stream can no longer be trusted).
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
pub enum RequestError {
    /// The head exceeds the configured limit or has more than
    /// [`MAX_HEADERS`] fields. Answer 431 and close without reading further.
    #[error("request header fields too large")]
    HeadTooLarge,
    /// The head is not valid HTTP/1.x. Answer 400 and close.
    #[error("malformed request: {0}")]
    Malformed(&'static str),
    /// The request uses Transfer-Encoding (e.g. chunked); only
    /// Content-Length bodies are accepted. Answer 411 and close.
    #[error("a Content-Length body is required; Transfer-Encoding is not supported")]
    LengthRequired,
    /// Content-Length is not a decimal number or several values disagree.
    /// Answer 400 and close: the body boundary is unknown.
    #[error("invalid Content-Length")]
    BadContentLength,
    /// A percent-escape is malformed or decodes to invalid UTF-8. Answer 400;
    /// the connection itself is still in sync and may be kept.
    #[error("invalid percent-encoding")]
    BadEncoding,
}

impl RequestError {
    /// The HTTP status to answer with.
    pub fn status(&self) -> u16 {
        match self {
            Self::HeadTooLarge => 431,
            Self::LengthRequired => 411,
            Self::Malformed(_) | Self::BadContentLength | Self::BadEncoding => 400,
        }
    }
}

/// Parses a request head from the front of `buf`.
///
/// `Ok(None)`: the head is incomplete and still within `max_header_bytes`;
/// read more and call again with the grown buffer. `Ok(Some((req, head_len)))`:
/// the body (if any) starts at `buf[head_len]`.
pub fn parse_head(
    buf: &[u8],
    max_header_bytes: usize,
) -> Result<Option<(Request, usize)>, RequestError> {
    // Looking only at the allowed prefix bounds the parsing work per call,
    // and a head cut short at the limit is by definition too large.
    let window = &buf[..buf.len().min(max_header_bytes)];
    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut slots);
    let head_len = match parsed.parse(window) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() >= max_header_bytes => {
            return Err(RequestError::HeadTooLarge);
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(RequestError::HeadTooLarge),
        Err(e) => return Err(RequestError::Malformed(httparse_reason(e))),
    };

    let method = Method::from_token(parsed.method.unwrap_or_default());
    let target = parsed.path.unwrap_or_default();
    let version_minor = parsed.version.unwrap_or_default();
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p, q),
        None => (target, ""),
    };

    // Offsets into the head are 32 bits; a head past 4 GiB is too large anyway.
    let offset = |len: usize| u32::try_from(len).map_err(|_| RequestError::HeadTooLarge);
    // Gathered as bytes and checked as UTF-8 once, at the end: the path and
    // the names are already text, so only a value can fail the check.
    let mut text = Vec::with_capacity(
        target.len() + parsed.headers.iter().map(|h| h.name.len() + h.value.len()).sum::<usize>(),
    );
    text.extend_from_slice(path.as_bytes());
    let path_end = offset(text.len())?;
    text.extend_from_slice(query.as_bytes());
    let query_end = offset(text.len())?;
    let mut header_ends = Vec::with_capacity(parsed.headers.len());
    let mut content_length: Option<usize> = None;
    let mut connection_close = false;
    let mut connection_keep_alive = false;
    for h in parsed.headers.iter() {
        let value = h.value;
        if h.name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(RequestError::LengthRequired);
        }
        if h.name.eq_ignore_ascii_case("content-length") {
            // A list like `5, 5` or repeated fields are tolerated only when
            // every value agrees (RFC 9110 §8.6); anything else is smuggling bait.
            for item in value.split(|&b| b == b',') {
                let n = parse_decimal(trim_ows(item)).ok_or(RequestError::BadContentLength)?;
                match content_length {
                    Some(prev) if prev != n => return Err(RequestError::BadContentLength),
                    _ => content_length = Some(n),
                }
            }
        } else if h.name.eq_ignore_ascii_case("connection") {
            connection_close |= has_token(value, "close");
            connection_keep_alive |= has_token(value, "keep-alive");
        }
        text.extend_from_slice(h.name.as_bytes());
        let name_end = offset(text.len())?;
        text.extend_from_slice(value);
        header_ends.push((name_end, offset(text.len())?));
    }
    let text = String::from_utf8(text)
        .map_err(|_| RequestError::Malformed("header value is not UTF-8"))?;

    let keep_alive = if version_minor >= 1 {
        !connection_close
    } else {
        connection_keep_alive && !connection_close
    };

    Ok(Some((
        Request {
            method,
            text,
            path_end,
            query_end,
            header_ends,
            content_length: content_length.unwrap_or(0),
            keep_alive,
            version_minor,
        },
        head_len,
    )))
}

/// Percent-decodes a form-style query string into `(key, value)` pairs,
/// in order; `+` means space, a field without `=` has an empty value and
/// empty fields (`a=1&&b=2`) are skipped.
pub fn parse_query(query: &str) -> Result<Vec<(String, String)>, RequestError> {
    query
        .split('&')
        .filter(|field| !field.is_empty())
        .map(|field| {
            let (k, v) = field.split_once('=').unwrap_or((field, ""));
            Ok((decode(k, true)?, decode(v, true)?))
        })
        .collect()
}

/// Percent-decodes `s` (`+` stays a `+`: that rule belongs to query strings
/// only). The result must be UTF-8.
pub fn percent_decode(s: &str) -> Result<String, RequestError> {
    decode(s, false)
}

fn decode(s: &str, plus_is_space: bool) -> Result<String, RequestError> {
    let bytes = s.as_bytes();
    if !bytes.iter().any(|&b| b == b'%' || (plus_is_space && b == b'+')) {
        return Ok(s.to_owned());
    }
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hi = bytes.get(i + 1).copied().and_then(hex_value);
                let lo = bytes.get(i + 2).copied().and_then(hex_value);
                match (hi, lo) {
                    (Some(hi), Some(lo)) => out.push(hi << 4 | lo),
                    _ => return Err(RequestError::BadEncoding),
                }
                i += 3;
            }
            b'+' if plus_is_space => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).map_err(|_| RequestError::BadEncoding)
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Strict 1*DIGIT: `usize::from_str` would also take a leading `+`.
fn parse_decimal(s: &[u8]) -> Option<usize> {
    if s.is_empty() {
        return None;
    }
    s.iter().try_fold(0usize, |n, &b| {
        let digit = b.checked_sub(b'0').filter(|d| *d <= 9)?;
        n.checked_mul(10)?.checked_add(usize::from(digit))
    })
}

/// Whether the comma-separated list `value` holds `token`, ignoring ASCII
/// case and the optional whitespace (spaces and tabs, RFC 9110 §5.6.1)
/// around each element.
fn has_token(value: &[u8], token: &str) -> bool {
    value.split(|&b| b == b',').any(|t| trim_ows(t).eq_ignore_ascii_case(token.as_bytes()))
}

fn trim_ows(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

fn httparse_reason(e: httparse::Error) -> &'static str {
    match e {
        httparse::Error::HeaderName => "invalid header name",
        httparse::Error::HeaderValue => "invalid header value",
        httparse::Error::NewLine => "invalid line ending",
        httparse::Error::Status => "invalid status",
        httparse::Error::Token => "invalid token",
        httparse::Error::TooManyHeaders => "too many headers",
        httparse::Error::Version => "unsupported HTTP version",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(raw: &str) -> Result<Option<(Request, usize)>, RequestError> {
        parse_head(raw.as_bytes(), 8192)
    }

    fn req(raw: &str) -> Request {
        match parse(raw) {
            Ok(Some((r, _))) => r,
            other => panic!("expected a complete request, got {other:?}"),
        }
    }

    #[test]
    fn basic_get() {
        let raw = "GET /app/key?protocol=7&client=js HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n\r\nrest";
        let (r, n) = parse(raw).expect("ok").expect("complete");
        assert_eq!(n, raw.len() - 4);
        assert_eq!(r.method, Method::Get);
        assert_eq!(r.path(), "/app/key");
        assert_eq!(r.query(), "protocol=7&client=js");
        assert_eq!(r.version_minor, 1);
        assert_eq!(r.header("host"), Some("x"));
        assert_eq!(r.header("UPGRADE"), Some("websocket"));
        assert_eq!(r.header("missing"), None);
        assert_eq!(r.content_length, 0);
        assert!(r.keep_alive);
    }

    #[test]
    fn every_header_keeps_its_place_and_value() {
        let r = req("GET /p?q=1 HTTP/1.1\r\nA: 1\r\nEmpty:\r\na: two words \r\nX-Long: é\r\n\r\n");
        let headers: Vec<_> = r.headers().collect();
        assert_eq!(headers, [("A", "1"), ("Empty", ""), ("a", "two words"), ("X-Long", "é")]);
        assert_eq!((r.path(), r.query()), ("/p", "q=1"));
        assert_eq!(r.header("a"), Some("1"), "the first of a repeated header");
        let bare = req("GET / HTTP/1.1\r\n\r\n");
        assert_eq!((bare.path(), bare.query(), bare.headers().count()), ("/", "", 0));
    }

    #[test]
    fn methods() {
        for (m, want) in [
            ("GET", Method::Get),
            ("POST", Method::Post),
            ("PUT", Method::Put),
            ("DELETE", Method::Delete),
            ("HEAD", Method::Head),
            ("OPTIONS", Method::Options),
            ("PATCH", Method::Other),
            ("get", Method::Other),
        ] {
            assert_eq!(req(&format!("{m} / HTTP/1.1\r\n\r\n")).method, want);
        }
    }

    #[test]
    fn incomplete_at_every_prefix() {
        let raw = b"POST /apps/1/events HTTP/1.1\r\nContent-Length: 2\r\n\r\n";
        for end in 0..raw.len() {
            assert_eq!(parse_head(&raw[..end], 8192), Ok(None), "prefix {end}");
        }
        let (r, n) = parse_head(raw, 8192).expect("ok").expect("complete");
        assert_eq!(n, raw.len());
        assert_eq!(r.content_length, 2);
    }

    #[test]
    fn head_size_limit() {
        let raw = b"GET / HTTP/1.1\r\nX-Pad: aaaaaaaa\r\n\r\n";
        let exact = raw.len();
        assert!(matches!(parse_head(raw, exact), Ok(Some((_, n))) if n == exact));
        assert_eq!(parse_head(raw, exact - 1), Err(RequestError::HeadTooLarge));
        // Incomplete but already at the limit: it can only end up too large.
        assert_eq!(parse_head(&raw[..exact - 1], exact - 1), Err(RequestError::HeadTooLarge));
        assert_eq!(parse_head(&raw[..exact - 2], exact - 1), Ok(None));
        // A body after a head that fits does not count against the limit.
        let mut with_body = raw.to_vec();
        with_body.extend_from_slice(&[b'x'; 100]);
        assert!(matches!(parse_head(&with_body, exact), Ok(Some((_, n))) if n == exact));
        assert_eq!(RequestError::HeadTooLarge.status(), 431);
    }

    #[test]
    fn too_many_headers() {
        let mut raw = String::from("GET / HTTP/1.1\r\n");
        for i in 0..MAX_HEADERS {
            raw.push_str(&format!("X-{i}: v\r\n"));
        }
        let ok = format!("{raw}\r\n");
        assert_eq!(req(&ok).headers().count(), MAX_HEADERS);
        raw.push_str("X-last: v\r\n\r\n");
        assert_eq!(parse(&raw), Err(RequestError::HeadTooLarge));
    }

    #[test]
    fn malformed() {
        for raw in [
            "GET / HTTP/2.0\r\n\r\n",
            "GET\r\n\r\n",
            "GET / HTTP/1.1\r\nBad Name: x\r\n\r\n",
            "\u{1}GET / HTTP/1.1\r\n\r\n",
        ] {
            let e = parse(raw).expect_err(raw);
            assert!(matches!(e, RequestError::Malformed(_)), "{raw:?}: {e:?}");
            assert_eq!(e.status(), 400);
        }
        let mut raw = b"GET / HTTP/1.1\r\nX: ".to_vec();
        raw.extend_from_slice(&[0xff, 0xfe]);
        raw.extend_from_slice(b"\r\n\r\n");
        assert!(matches!(parse_head(&raw, 8192), Err(RequestError::Malformed(_))));
    }

    #[test]
    fn chunked_rejected() {
        for te in ["chunked", "gzip, chunked", "identity"] {
            let raw = format!("POST / HTTP/1.1\r\nTransfer-Encoding: {te}\r\n\r\n");
            assert_eq!(parse(&raw), Err(RequestError::LengthRequired));
        }
        let raw = "POST / HTTP/1.1\r\nContent-Length: 3\r\ntransfer-encoding: chunked\r\n\r\n";
        let e = parse(raw).expect_err("TE with CL");
        assert_eq!(e.status(), 411);
    }

    #[test]
    fn content_length_rules() {
        let cl = |v: &str| parse(&format!("POST / HTTP/1.1\r\nContent-Length: {v}\r\n\r\n"));
        assert!(matches!(cl("0"), Ok(Some((r, _))) if r.content_length == 0));
        assert!(matches!(cl("12345"), Ok(Some((r, _))) if r.content_length == 12345));
        assert!(matches!(cl("7, 7"), Ok(Some((r, _))) if r.content_length == 7));
        for bad in ["", "+5", "-1", "0x10", "5 5", "5,6", "99999999999999999999999", "5,"] {
            assert_eq!(cl(bad), Err(RequestError::BadContentLength), "{bad:?}");
        }
        let dup_same = "POST / HTTP/1.1\r\nContent-Length: 4\r\nContent-Length: 4\r\n\r\n";
        assert_eq!(req(dup_same).content_length, 4);
        let dup_diff = "POST / HTTP/1.1\r\nContent-Length: 4\r\ncontent-length: 5\r\n\r\n";
        assert_eq!(parse(dup_diff), Err(RequestError::BadContentLength));
    }

    #[test]
    fn keep_alive_matrix() {
        let ka = |version: &str, conn: Option<&str>| {
            let conn = conn.map(|c| format!("Connection: {c}\r\n")).unwrap_or_default();
            req(&format!("GET / HTTP/1.{version}\r\n{conn}\r\n"))
        };
        assert!(ka("1", None).keep_alive);
        assert!(ka("1", Some("keep-alive")).keep_alive);
        assert!(ka("1", Some("Upgrade")).keep_alive);
        assert!(!ka("1", Some("close")).keep_alive);
        assert!(!ka("1", Some("Keep-Alive, CLOSE")).keep_alive);
        assert!(!ka("0", None).keep_alive);
        assert!(ka("0", Some("Keep-Alive")).keep_alive);
        assert!(ka("0", Some("foo, keep-alive")).keep_alive);
        assert!(!ka("0", Some("close")).keep_alive);
        assert!(!ka("0", Some("keep-alive-ish")).keep_alive);
        assert_eq!(ka("0", None).version_minor, 0);
    }

    #[test]
    fn header_tokens() {
        let r = req("GET / HTTP/1.1\r\nConnection: keep-alive\r\nConnection: Upgrade\r\n\r\n");
        assert!(r.header_has_token("connection", "upgrade"));
        assert!(r.header_has_token("CONNECTION", "Keep-Alive"));
        assert!(!r.header_has_token("connection", "close"));
        assert_eq!(r.header("connection"), Some("keep-alive"));
        let spaced = req("GET / HTTP/1.1\r\nConnection: keep-alive ,\tUpgrade\t, x\r\n\r\n");
        assert!(spaced.header_has_token("connection", "upgrade"));
        assert!(spaced.header_has_token("connection", "keep-alive"));
        assert!(spaced.header_has_token("connection", "x"));
        assert!(!spaced.header_has_token("connection", "upgrade\t"));
        assert!(!spaced.header_has_token("connection", ""));
        assert!(!spaced.header_has_token("upgrade", "upgrade"), "another header's value");
        assert_eq!(spaced.header("CONNECTION"), Some("keep-alive ,\tUpgrade\t, x"));
        assert_eq!(spaced.header("connectio"), None);
    }

    #[test]
    fn header_values_must_be_utf8() {
        let head = b"GET / HTTP/1.1\r\nHost: a\r\nX-Name: caf\xe9\r\n\r\n";
        assert_eq!(
            parse_head(head, 8192),
            Err(RequestError::Malformed("header value is not UTF-8"))
        );
        let head = "GET / HTTP/1.1\r\nX-Name: caf\u{e9}\r\n\r\n";
        assert_eq!(req(head).header("x-name"), Some("caf\u{e9}"));
    }

    #[test]
    fn query_decoding() {
        let q = parse_query("auth_key=k&channels=a%2Cb&name=hello+world&x=%E2%9C%93&flag&&e=")
            .expect("valid");
        let want = [
            ("auth_key", "k"),
            ("channels", "a,b"),
            ("name", "hello world"),
            ("x", "\u{2713}"),
            ("flag", ""),
            ("e", ""),
        ];
        let got: Vec<(&str, &str)> = q.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        assert_eq!(got, want);
        assert_eq!(parse_query(""), Ok(vec![]));
        assert_eq!(parse_query("a%3Db=c%3d"), Ok(vec![("a=b".to_owned(), "c=".to_owned())]));
        for bad in ["a=%zz", "a=%", "a=%4", "%g1=1", "a=%ff"] {
            assert_eq!(parse_query(bad), Err(RequestError::BadEncoding), "{bad:?}");
        }
    }

    #[test]
    fn percent_decode_keeps_plus() {
        assert_eq!(percent_decode("a+b%20c").as_deref(), Ok("a+b c"));
        assert_eq!(percent_decode("plain").as_deref(), Ok("plain"));
        assert_eq!(percent_decode("%zz"), Err(RequestError::BadEncoding));
        assert_eq!(RequestError::BadEncoding.status(), 400);
    }
}
