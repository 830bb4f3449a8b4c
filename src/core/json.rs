//! JSON helpers shared by every layer: the one strict policy applied to
//! every document a client or Redis sends ([`check_unique_keys`]), and
//! writing JSON by hand where a message is built once per publish: string
//! literals with the escapes JSON requires, and Go's HTML-safe variant that
//! Incus's wire format inherited from `encoding/json`.
//!
//! # Why duplicate keys are refused
//!
//! RFC 8259 leaves a repeated key's meaning to each implementation, and
//! they disagree: simd-json keeps both and its lookups find the first,
//! serde_json's `Map`, JavaScript's `JSON.parse` and Go's struct decoding
//! keep the last, and Go decoding into a map it already holds merges the
//! two. A document that means one thing to the code that checks it and
//! another to the code (or the node, or the client) that acts on it is how
//! a checked `message` became a `pushandroid` (issue #15). So every JSON
//! document stapes reads from a client (Pusher frames and their `data`,
//! `channel_data` and `user_data`, HTTP API bodies, Incus frames and
//! long-poll `command`s) or from Redis (Pusher events, Incus envelopes) is
//! refused if any object in it, at any depth, repeats a key. Strings are
//! opaque: JSON inside a string is checked only where stapes itself parses
//! it.

use std::{borrow::Cow, collections::HashSet, fmt::Write as _};

use bytes::BufMut;
use simd_json::{Node, OwnedValue, prelude::Writable};
use smallvec::SmallVec;

/// An object that repeats a key, found by [`check_unique_keys`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("duplicate key {key:?} in the object at {path}")]
pub struct DuplicateKey {
    /// The repeated key, decoded, cut to [`SHOWN_CHARS`] characters.
    pub key: String,
    /// Where the object is, as `$`, `$.command`, `$.batch[2]`, or
    /// `$["odd key"]`.
    pub path: String,
}

/// Longest key (or path segment) an error quotes, in characters: the text
/// is the sender's, and it goes back to them and into the log.
pub const SHOWN_CHARS: usize = 64;

/// Objects with more keys than this are checked with a hash set instead of
/// a linear scan, so a huge object costs linear time, not quadratic.
const LINEAR_KEYS: usize = 16;

/// Open containers, and keys of open objects, that the checks hold without
/// allocating: a subscribe frame has two objects and three to five keys, a
/// publish body one object and three to five.
type Frames<'a> = SmallVec<[Frame<'a>; 4]>;
type Keys<'a> = SmallVec<[Cow<'a, [u8]>; 8]>;

/// Checks that no object in `json`, at any depth, has the same key twice
/// (compared after unescaping, so `"a"` and `"\u0061"` are the same key).
///
/// Run it on the bytes a decoder is about to read (before simd-json
/// rewrites them in place). It is a scan of the structure only, with no
/// allocation for keys without escapes; it does not validate the rest of
/// the syntax, which is the decoder's job, so on malformed input its answer
/// is meaningless but it always ends and never panics.
///
/// # Errors
///
/// [`DuplicateKey`] naming the first repeated key and where its object is.
pub fn check_unique_keys(json: &[u8]) -> Result<(), DuplicateKey> {
    let mut frames = Frames::new();
    // The keys of every open object, outermost first: a nested object's
    // keys are pushed after its parent's and dropped when it closes.
    let mut keys = Keys::new();
    let mut expect_key = false;
    let mut i = 0;
    while let Some(&byte) = json.get(i) {
        match byte {
            b'{' | b'[' => {
                let object = byte == b'{';
                frames.push(Frame::new(object, &keys, 0));
                expect_key = object;
            }
            b'}' | b']' => {
                if let Some(frame) = frames.pop() {
                    keys.truncate(frame.keys_from);
                }
                expect_key = false;
            }
            b',' => match frames.last_mut() {
                Some(frame) if frame.object => expect_key = true,
                Some(frame) => frame.index += 1,
                None => {}
            },
            b'"' => {
                // Unterminated: the decoder refuses it.
                let Some(end) = string_end(json, i + 1) else { return Ok(()) };
                if expect_key && let Some(frame) = frames.last_mut() {
                    let key = unescape(&json[i..=end]);
                    if frame.contains(&keys, &key) {
                        return Err(duplicate(&frames, &keys, &key));
                    }
                    frame.add(&mut keys, key);
                    expect_key = false;
                }
                i = end + 1;
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    Ok(())
}

/// [`check_unique_keys`] for a document simd-json has already parsed into
/// a tape (keys already unescaped): a walk over its nodes, no second pass
/// over the bytes. Decode with `simd_json::Deserializer::from_slice_with_buffers`,
/// check `into_tape()`, then deserialize the same tape.
///
/// # Errors
///
/// [`DuplicateKey`] naming the first repeated key and where its object is,
/// exactly as [`check_unique_keys`] names it.
pub fn check_tape_unique_keys(nodes: &[Node<'_>]) -> Result<(), DuplicateKey> {
    let mut frames = Frames::new();
    let mut keys = Keys::new();
    for node in nodes {
        // An object's members alternate key and value.
        if let Some(frame) = frames.last_mut()
            && frame.object
            && frame.at_key
        {
            // A tape simd-json built has a string here; anything else is
            // not ours to judge.
            let Node::String(key) = node else { return Ok(()) };
            let key = Cow::Borrowed(key.as_bytes());
            if frame.contains(&keys, &key) {
                return Err(duplicate(&frames, &keys, &key));
            }
            frame.add(&mut keys, key);
            frame.at_key = false;
            continue;
        }
        match *node {
            Node::Object { len, .. } | Node::Array { len, .. } if len > 0 => {
                let object = matches!(node, Node::Object { .. });
                frames.push(Frame::new(object, &keys, len));
                continue;
            }
            Node::Object { .. } | Node::Array { .. } | Node::String(_) | Node::Static(_) => {}
        }
        // A value ended, and with it maybe the containers it closes.
        while let Some(frame) = frames.last_mut() {
            frame.left -= 1;
            if frame.left > 0 {
                frame.index += 1;
                frame.at_key = frame.object;
                break;
            }
            if let Some(done) = frames.pop() {
                keys.truncate(done.keys_from);
            }
        }
    }
    Ok(())
}

/// One open object or array.
struct Frame<'a> {
    object: bool,
    /// Where this object's keys start in the shared key list.
    keys_from: usize,
    /// An array's current element, for the error's path.
    index: usize,
    /// This object's keys once it has more than [`LINEAR_KEYS`].
    set: Option<HashSet<Cow<'a, [u8]>>>,
    /// On a tape: members not yet complete, and whether an object's next
    /// node is a key.
    left: usize,
    at_key: bool,
}

impl<'a> Frame<'a> {
    fn new(object: bool, keys: &[Cow<'a, [u8]>], left: usize) -> Self {
        Self { object, keys_from: keys.len(), index: 0, set: None, left, at_key: object }
    }

    fn contains(&self, keys: &[Cow<'a, [u8]>], key: &[u8]) -> bool {
        match &self.set {
            Some(set) => set.contains(key),
            None => keys[self.keys_from..].iter().any(|k| **k == *key),
        }
    }

    /// Adds `key` to this object's keys, making the set when the object
    /// grows past [`LINEAR_KEYS`].
    fn add(&mut self, keys: &mut Keys<'a>, key: Cow<'a, [u8]>) {
        if let Some(set) = &mut self.set {
            set.insert(key.clone());
        } else if keys.len() - self.keys_from >= LINEAR_KEYS {
            let mut set: HashSet<Cow<'a, [u8]>> = keys[self.keys_from..].iter().cloned().collect();
            set.insert(key.clone());
            self.set = Some(set);
        }
        keys.push(key);
    }
}

/// The index of the quote closing the string whose content starts at
/// `from`, skipping escaped characters.
fn string_end(json: &[u8], from: usize) -> Option<usize> {
    let mut i = from;
    loop {
        let at = i + quote_or_backslash(json.get(i..)?)?;
        if json[at] == b'"' {
            return Some(at);
        }
        i = at + 2;
    }
}

/// The first `"` or `\` in `bytes`, eight bytes at a time: string
/// content is most of a document, and this is the scan's inner loop.
fn quote_or_backslash(bytes: &[u8]) -> Option<usize> {
    const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
    const HIGHS: u64 = u64::from_ne_bytes([0x80; 8]);
    const QUOTES: u64 = u64::from_ne_bytes([b'"'; 8]);
    const BACKSLASHES: u64 = u64::from_ne_bytes([b'\\'; 8]);
    // A byte of `x` is zero where the word matched; the lowest flagged
    // byte of this classic test is always a true zero.
    let zero = |x: u64| x.wrapping_sub(ONES) & !x & HIGHS;
    let mut chunks = bytes.chunks_exact(8);
    for (n, chunk) in chunks.by_ref().enumerate() {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        let word = u64::from_le_bytes(word);
        let found = zero(word ^ QUOTES) | zero(word ^ BACKSLASHES);
        if found != 0 {
            return Some(n * 8 + (found.trailing_zeros() / 8) as usize);
        }
    }
    let rest = chunks.remainder();
    let at = rest.iter().position(|&b| b == b'"' || b == b'\\')?;
    Some(bytes.len() - rest.len() + at)
}

/// A key's content, unescaped only when it has escapes. `quoted` includes
/// both quotes. An escape the decoder would refuse leaves the raw bytes.
fn unescape(quoted: &[u8]) -> Cow<'_, [u8]> {
    let inner = &quoted[1..quoted.len() - 1];
    if !inner.contains(&b'\\') {
        return Cow::Borrowed(inner);
    }
    match serde_json::from_slice::<String>(quoted) {
        Ok(text) => Cow::Owned(text.into_bytes()),
        Err(_) => Cow::Borrowed(inner),
    }
}

/// The error for `key` repeated in the innermost open object.
#[cold]
fn duplicate(frames: &[Frame<'_>], keys: &[Cow<'_, [u8]>], key: &[u8]) -> DuplicateKey {
    let mut path = String::from("$");
    // Each open container but the innermost says where the next one sits:
    // an object by its latest key, an array by its current index.
    for pair in frames.windows(2) {
        let (parent, child) = (&pair[0], &pair[1]);
        if parent.object {
            let name = child.keys_from.checked_sub(1).and_then(|k| keys.get(k));
            push_segment(&mut path, name.map_or(&[][..], |k| &k[..]));
        } else {
            let _ = write!(path, "[{}]", parent.index);
        }
    }
    DuplicateKey { key: shown(key), path }
}

fn push_segment(path: &mut String, key: &[u8]) {
    let plain = !key.is_empty()
        && key.len() <= SHOWN_CHARS
        && key.iter().all(|b| b.is_ascii_alphanumeric() || *b == b'_');
    if plain {
        path.push('.');
        path.push_str(&String::from_utf8_lossy(key));
    } else {
        let _ = write!(path, "[{:?}]", shown(key));
    }
}

fn shown(key: &[u8]) -> String {
    String::from_utf8_lossy(key).chars().take(SHOWN_CHARS).collect()
}

/// Appends `s` as a JSON string literal (quoted and escaped): `"`, `\`
/// and the control characters, `\n`, `\r` and `\t` by name and the others as
/// `\u00xx`. Every event's `data` passes through here once per publish,
/// so runs that need no escape are found eight bytes at a time
/// (`first_to_escape`) and copied whole.
pub fn push_json_str(out: &mut impl BufMut, s: &str) {
    out.put_u8(b'"');
    let bytes = s.as_bytes();
    let mut copied = 0;
    while let Some(run) = first_to_escape(&bytes[copied..]) {
        let at = copied + run;
        out.put_slice(&bytes[copied..at]);
        match bytes[at] {
            b'"' => out.put_slice(b"\\\""),
            b'\\' => out.put_slice(b"\\\\"),
            b'\n' => out.put_slice(b"\\n"),
            b'\r' => out.put_slice(b"\\r"),
            b'\t' => out.put_slice(b"\\t"),
            control => {
                const HEX: &[u8; 16] = b"0123456789abcdef";
                out.put_slice(b"\\u00");
                out.put_u8(HEX[usize::from(control >> 4)]);
                out.put_u8(HEX[usize::from(control & 0xf)]);
            }
        }
        copied = at + 1;
    }
    out.put_slice(&bytes[copied..]);
    out.put_u8(b'"');
}

/// The first byte of `bytes` a JSON string may not carry as it is: `"`,
/// `\` or a control character (below 0x20); eight bytes at a time, as in
/// [`quote_or_backslash`].
fn first_to_escape(bytes: &[u8]) -> Option<usize> {
    const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
    const HIGHS: u64 = u64::from_ne_bytes([0x80; 8]);
    const SPACES: u64 = u64::from_ne_bytes([0x20; 8]);
    const QUOTES: u64 = u64::from_ne_bytes([b'"'; 8]);
    const BACKSLASHES: u64 = u64::from_ne_bytes([b'\\'; 8]);
    // Flags bytes of `x` below `n` (up to 0x80); as with the zero test,
    // the lowest flagged byte is always a true one.
    let below = |x: u64, n: u64| x.wrapping_sub(n) & !x & HIGHS;
    let mut chunks = bytes.chunks_exact(8);
    for (n, chunk) in chunks.by_ref().enumerate() {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        let word = u64::from_le_bytes(word);
        let found =
            below(word, SPACES) | below(word ^ QUOTES, ONES) | below(word ^ BACKSLASHES, ONES);
        if found != 0 {
            return Some(n * 8 + (found.trailing_zeros() / 8) as usize);
        }
    }
    let rest = chunks.remainder();
    let at = rest.iter().position(|&b| b < 0x20 || b == b'"' || b == b'\\')?;
    Some(bytes.len() - rest.len() + at)
}

/// Appends `n` in decimal, without the formatting machinery (JSON
/// numbers, HTTP lengths).
pub fn push_decimal(out: &mut impl BufMut, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.put_slice(&digits[at..]);
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Both checks, which must agree on valid JSON.
    fn dup(json: &str) -> Option<(String, String)> {
        let bytes = check_unique_keys(json.as_bytes()).err();
        let mut copy = json.as_bytes().to_vec();
        let tape = simd_json::to_tape(&mut copy).expect("valid JSON");
        let walked = check_tape_unique_keys(&tape.0).err();
        assert_eq!(bytes, walked, "{json}");
        bytes.map(|e| (e.key, e.path))
    }

    fn pair(key: &str, path: &str) -> Option<(String, String)> {
        Some((key.to_owned(), path.to_owned()))
    }

    #[test]
    fn the_issue_15_envelope_is_refused_naming_key_and_place() {
        let exploit = r#"{"command":{"command":"message","command":"pushandroid","registration_ids":"t"},"message":{"event":"e","data":{}}}"#;
        let err = check_unique_keys(exploit.as_bytes()).expect_err("duplicate");
        assert_eq!(err.to_string(), r#"duplicate key "command" in the object at $.command"#);
    }

    #[test]
    fn duplicates_are_found_at_any_depth_and_only_within_one_object() {
        assert_eq!(dup(r#"{"a":1,"a":2}"#), pair("a", "$"));
        assert_eq!(dup(r#"{"a":{"b":[1,{"c":1,"d":{},"c":2}]}}"#), pair("c", "$.a.b[1]"));
        assert_eq!(dup(r#"{"batch":[{},{},{"name":"x","name":"y"}]}"#), pair("name", "$.batch[2]"));
        assert_eq!(dup(r#"[[1],[2,{"x":0,"x":0}]]"#), pair("x", "$[1][1]"));
        assert_eq!(dup(r#"{"odd key":{"":1,"":2}}"#), pair("", r#"$["odd key"]"#));
        // Empty containers close at once, in both checks.
        assert_eq!(dup(r#"{"a":{},"b":[],"c":[[],{}],"a":1}"#), pair("a", "$"));
        assert_eq!(dup(r#"[{},[],[[]],{"x":{},"y":[{}],"x":0}]"#), pair("x", "$[3]"));
        assert_eq!(dup(r#"{"a":[1,[2,{"b":[],"b":[]}]]}"#), pair("b", "$.a[1][1]"));
        // The same key in sibling objects, at another depth, or as a value.
        for ok in [
            r#"{"a":{"a":{"a":1}},"b":{"a":2}}"#,
            r#"[{"a":1},{"a":1}]"#,
            r#"{"a":"a","b":"a","c":["a","a"]}"#,
            r#"{"a":1,"A":2}"#,
            r#""just a string""#,
            "3",
            "{}",
            "[]",
        ] {
            assert_eq!(dup(ok), None, "{ok}");
        }
    }

    #[test]
    fn keys_compare_unescaped_and_strings_hide_structure() {
        assert_eq!(dup(r#"{"a":1,"\u0061":2}"#), pair("a", "$"));
        assert_eq!(dup(r#"{"\"q":1,"\u0022q":2}"#), pair("\"q", "$"));
        assert_eq!(dup(r#"{"\\":1,"\u005c":2}"#), pair("\\", "$"));
        // Braces, quotes and commas inside strings are not structure.
        assert_eq!(dup(r#"{"a":"}{\"a\":1,","b":"\\","a":2}"#), pair("a", "$"));
        assert_eq!(dup(r#"{"a\"b":1,"a":2,"b":"{\"a\":1,\"a\":2}"}"#), None);
    }

    #[test]
    fn large_objects_are_checked_in_linear_time() {
        let keys: Vec<String> = (0..20_000).map(|i| format!("\"k{i}\":{i}")).collect();
        let unique = format!("{{{}}}", keys.join(","));
        assert_eq!(dup(&unique), None);
        let repeated = format!("{{{},\"k19999\":0}}", keys.join(","));
        assert_eq!(dup(&repeated), pair("k19999", "$"));
        // Past the linear scan, a duplicate of an early key is still found.
        let early = format!("{{{},\"k3\":0}}", keys[..40].join(","));
        assert_eq!(dup(&early), pair("k3", "$"));
    }

    #[test]
    fn long_keys_are_cut_in_the_error() {
        let key = "x".repeat(500);
        let (key, path) =
            dup(&format!("{{\"{key}\":{{\"{key}\":1,\"{key}\":2}}}}")).expect("duplicate");
        assert_eq!(key.len(), SHOWN_CHARS);
        assert_eq!(path, format!("$[{:?}]", "x".repeat(SHOWN_CHARS)));
    }

    #[test]
    fn the_word_scan_finds_the_first_quote_or_backslash() {
        for len in 0..40 {
            for at in 0..len {
                for special in [b'"', b'\\'] {
                    let mut bytes = vec![b'a'; len];
                    // Bytes that differ from the targets by one bit or sit
                    // just above them must not match.
                    for (i, b) in bytes.iter_mut().enumerate() {
                        *b = [b'#', b'!', b']', b'\x80', 0xa2, b'a'][i % 6];
                    }
                    bytes[at] = special;
                    if at + 1 < len {
                        bytes[at + 1] = b'"';
                    }
                    assert_eq!(quote_or_backslash(&bytes), Some(at), "{len} {at}");
                }
            }
            assert_eq!(quote_or_backslash(&vec![b'x'; len]), None);
        }
    }

    /// What [`push_json_str`] must write, one byte at a time.
    fn escaped_bytewise(s: &str) -> String {
        let mut out = String::from("\"");
        for c in s.chars() {
            match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                '\t' => out.push_str("\\t"),
                c if u32::from(c) < 0x20 => out.push_str(&format!("\\u{:04x}", u32::from(c))),
                c => out.push(c),
            }
        }
        out.push('"');
        out
    }

    #[test]
    fn strings_are_escaped_wherever_the_special_byte_sits() {
        let specials = ['"', '\\', '\n', '\r', '\t', '\0', '\x08', '\x0c', '\x1f'];
        // Around the targets: one bit off, just above, and UTF-8 whose
        // bytes carry a target's low seven bits (0xa2, 0xdc) or sit high.
        let fillers = ['#', '!', ']', ' ', '\x7f', 'é', '¢', 'ǜ', '\u{10ffff}'];
        for len in 0..24 {
            for at in 0..=len {
                for (n, special) in specials.iter().enumerate() {
                    let mut s: String =
                        (0..len).map(|i| fillers[(i + n) % fillers.len()]).collect();
                    let cut = s.char_indices().nth(at).map_or(s.len(), |(i, _)| i);
                    s.insert(cut, *special);
                    let mut out = Vec::new();
                    push_json_str(&mut out, &s);
                    let out = String::from_utf8(out).expect("UTF-8 in, UTF-8 out");
                    assert_eq!(out, escaped_bytewise(&s), "{s:?}");
                    let back: String = serde_json::from_str(&out).expect("a JSON string");
                    assert_eq!(back, s);
                }
            }
        }
        for b in 0..0x80u8 {
            let s = char::from(b).to_string().repeat(9);
            let mut out = bytes::BytesMut::new();
            push_json_str(&mut out, &s);
            assert_eq!(&out[..], escaped_bytewise(&s).as_bytes(), "byte {b:#x}");
        }
    }

    #[test]
    fn decimals_are_written_without_formatting() {
        for n in [0, 7, 10, 99, 100, 12_345, u64::from(u32::MAX), u64::MAX] {
            let mut out = Vec::new();
            push_decimal(&mut out, n);
            assert_eq!(out, n.to_string().into_bytes());
        }
    }

    #[test]
    fn malformed_input_never_panics() {
        let sample = br#"{"a":[1,{"b":"c\"\\","d":{"e":null}}],"f":"\u00e9","g":{"h":[]}}"#;
        for end in 0..=sample.len() {
            let _ = check_unique_keys(&sample[..end]);
            let _ = check_unique_keys(&sample[end..]);
        }
        for junk in
            [&b"}}]]"[..], b"\"\\", b"{\"a\\", b"{\"a\":1,\"a\"", b"{,,\"a\",\"a\"", b"\xff{"]
        {
            let _ = check_unique_keys(junk);
        }
    }
}
