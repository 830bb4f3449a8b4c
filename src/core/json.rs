//! Writing JSON by hand where a message is built once per publish: string
//! literals with the escapes JSON requires, and Go's HTML-safe variant that
//! Incus's wire format inherited from `encoding/json`.

use simd_json::{OwnedValue, prelude::Writable};

/// Appends `s` as a JSON string literal (quoted and escaped).
pub fn push_json_str(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    let bytes = s.as_bytes();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let escape: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0x00..=0x1f => {
                out.extend_from_slice(&bytes[start..i]);
                out.extend_from_slice(format!("\\u{b:04x}").as_bytes());
                start = i + 1;
                continue;
            }
            _ => continue,
        };
        out.extend_from_slice(&bytes[start..i]);
        out.extend_from_slice(escape);
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

/// A JSON string with Go's HTML-safe escapes.
pub fn write_str(text: &str, out: &mut String) {
    let quoted = OwnedValue::from(text).encode();
    if !quoted.contains(['<', '>', '&', '\u{2028}', '\u{2029}']) {
        out.push_str(&quoted);
        return;
    }
    for c in quoted.chars() {
        match c {
            '<' => out.push_str("\\u003c"),
            '>' => out.push_str("\\u003e"),
            '&' => out.push_str("\\u0026"),
            '\u{2028}' => out.push_str("\\u2028"),
            '\u{2029}' => out.push_str("\\u2029"),
            c => out.push(c),
        }
    }
}
