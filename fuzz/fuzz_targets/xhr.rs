//! pusher-js's HTTP transports: a request path through `xhr::route`, and
//! an `xhr_send` body through `xhr::parse_send`; the messages read are then
//! framed as the shard frames them and turned into the transport's lines
//! by `xhr::encode`, which must give back exactly those messages, in
//! ASCII, followed by a close line.
//!
//! Input: the path, a newline, then the body.
#![no_main]

use libfuzzer_sys::fuzz_target;
use stapes::proto::{pusher::xhr, ws::codec};

fuzz_target!(|data: &[u8]| {
    let split = data.iter().position(|&b| b == b'\n').unwrap_or(data.len());
    let (path, body) = (&data[..split], data.get(split + 1..).unwrap_or_default());
    if let Ok(path) = std::str::from_utf8(path)
        && let Some(Ok(target)) = xhr::route("/pusher", path)
    {
        assert!(path.starts_with(target.base), "the base is where the path starts");
        assert!(target.base.ends_with(target.session), "the session ends the base");
        assert!(target.app_path.starts_with("/app/") && !target.app_path[5..].contains('/'));
        assert!(xhr::owner(target.base, 3) < 3);
    }
    let Ok(messages) = xhr::parse_send(body) else { return };
    let reason = messages.first().map_or("", String::as_str);
    let mut frames: Vec<bytes::Bytes> =
        messages.iter().map(|m| codec::text_frame(m.as_bytes())).collect();
    frames.push(codec::close_frame(4100, reason));
    // A frame after the close is never taken.
    frames.push(codec::text_frame(b"after the close"));
    let mut out = Vec::new();
    let done = xhr::encode(frames.iter().map(|f| &f[..]), &mut out);
    assert_eq!(done.messages, messages.len());
    assert_eq!(done.closed, Some(4100));
    let taken: usize = frames[..frames.len() - 1].iter().map(|f| f.len()).sum();
    assert_eq!(done.consumed, taken, "every frame up to the close, nothing after");
    assert!(out.is_ascii(), "the lines are ASCII, so bytes count as pusher-js's characters");
    let text = std::str::from_utf8(&out).expect("ASCII");
    let mut lines = text.split_terminator('\n');
    if !messages.is_empty() {
        let line = lines.next().expect("an a line");
        let array = line.strip_prefix('a').expect("an a frame");
        let again: Vec<String> = serde_json::from_str(array).expect("a JSON array of strings");
        assert_eq!(again, messages);
    }
    let close = lines.next().and_then(|l| l.strip_prefix('c')).expect("a c line");
    let (code, said): (u16, String) = serde_json::from_str(close).expect("[code, reason]");
    assert_eq!(code, 4100);
    assert!(reason.starts_with(&said), "the reason, cut to fit a close frame");
    assert_eq!(lines.next(), None);
});
