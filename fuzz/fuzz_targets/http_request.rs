//! HTTP/1.1 request heads (`proto::http::request::parse_head`) and form
//! query strings (`parse_query`, `percent_decode`), as read from any
//! client socket before anything else looks at the bytes.
//!
//! Input: one byte choosing the header limit, then the bytes received.
#![no_main]

mod common;

use libfuzzer_sys::fuzz_target;
use stapes::proto::http::request::{parse_head, parse_query, percent_decode};

fuzz_target!(|data: &[u8]| {
    let Some((&limit, buf)) = data.split_first() else { return };
    let max_header_bytes = 16 + usize::from(limit) * 32;

    if let Ok(Some((req, head_len))) = parse_head(buf, max_header_bytes) {
        assert!(head_len <= buf.len().min(max_header_bytes), "head longer than its window");
        // The head alone, without whatever followed it, is the same request.
        let again = parse_head(&buf[..head_len], max_header_bytes);
        assert_eq!(again, Ok(Some((req.clone(), head_len))), "head reparsed differently");
        // Cut short anywhere, it asks for more bytes: a head that arrives
        // in two reads must not be refused.
        let cut = usize::from(limit) % head_len;
        assert_eq!(parse_head(&buf[..cut], max_header_bytes), Ok(None), "prefix {cut} refused");
        assert!(!req.path().contains('?'), "query left in the path");
        assert!(req.path().len() + req.query().len() < head_len, "target longer than the head");
        assert!(req.version_minor <= 1);
        assert!(req.header("transfer-encoding").is_none(), "Transfer-Encoding accepted");
        if req.header("content-length").is_none() {
            assert_eq!(req.content_length, 0);
        }
        check_query(req.query());
        if let Ok(path) = percent_decode(req.path()) {
            assert!(path.len() <= req.path().len(), "decoding grew the path");
        }
    }

    if let Ok(text) = std::str::from_utf8(buf) {
        check_query(text);
        if let Ok(decoded) = percent_decode(text) {
            assert!(decoded.len() <= text.len());
            assert_eq!(percent_decode(&common::form_encode(&decoded)).as_deref(), Ok(&*decoded));
        }
    }
});

/// A query that decodes encodes back to one that decodes to the same
/// pairs, and decoding never makes a field longer.
fn check_query(query: &str) {
    let Ok(pairs) = parse_query(query) else { return };
    for (k, v) in &pairs {
        assert!(k.len() + v.len() <= query.len(), "decoding grew a field");
    }
    let encoded: Vec<String> = pairs
        .iter()
        .map(|(k, v)| format!("{}={}", common::form_encode(k), common::form_encode(v)))
        .collect();
    let again = parse_query(&encoded.join("&")).expect("an encoded query decodes");
    assert_eq!(pairs, again, "query round trip");
}
