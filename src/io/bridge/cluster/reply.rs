//! Reading Redis replies without trusting them: whatever another program
//! (or an older node) left on the shared Redis reads as "nothing" rather
//! than failing.

use bytes::Bytes;
use redis::Value;

use crate::proto::ws::codec;

/// The reply's integer (0 for anything else).
pub(super) fn int(v: &Value) -> i64 {
    match v {
        Value::Int(n) => *n,
        Value::BulkString(b) => {
            std::str::from_utf8(b).ok().and_then(|s| s.parse().ok()).unwrap_or(0)
        }
        Value::SimpleString(s) => s.parse().unwrap_or(0),
        _ => 0,
    }
}

/// The reply's items (none for anything else).
pub(super) fn array(v: &Value) -> &[Value] {
    match v {
        Value::Array(items) | Value::Set(items) => items,
        _ => &[],
    }
}

/// The reply as text, if it is UTF-8 text.
pub(super) fn text(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    }
}

/// The reply's bytes, if it is a string.
pub(super) fn bytes(v: &Value) -> Option<&[u8]> {
    match v {
        Value::BulkString(b) => Some(b),
        _ => None,
    }
}

/// A stored cache value, `<seq> <frame>`, as its sequence number and
/// frame; `None` unless the frame is a WebSocket text frame.
pub(super) fn cached_frame(value: &[u8]) -> Option<(u64, Bytes)> {
    let space = value.iter().position(|b| *b == b' ')?;
    let seq = std::str::from_utf8(&value[..space]).ok()?.parse().ok()?;
    let frame = &value[space + 1..];
    codec::is_text_frame(frame).then(|| (seq, Bytes::copy_from_slice(frame)))
}

/// Channel counts from [`super::scripts::COUNTS`]-shaped numbers: the
/// subscriptions, and the users when not negative.
pub(super) fn counts(subs: &Value, users: &Value) -> crate::proto::msg::ChannelCounts {
    let users = int(users);
    crate::proto::msg::ChannelCounts {
        subscriptions: usize::try_from(int(subs)).unwrap_or(0),
        users: usize::try_from(users).ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn foreign_values_read_as_nothing() {
        assert_eq!(int(&Value::Nil), 0);
        assert_eq!(int(&Value::BulkString(b"12".to_vec())), 12);
        assert_eq!(int(&Value::BulkString(b"x".to_vec())), 0);
        assert!(array(&Value::Int(3)).is_empty());
        assert_eq!(text(&Value::BulkString(vec![0xff])), None);
        assert_eq!(cached_frame(b"no-space"), None);
        assert_eq!(cached_frame(b"7 not a frame"), None);
        assert_eq!(cached_frame(b"x \x81\x01a"), None);
        let (seq, frame) = cached_frame(b"7 \x81\x01a").expect("a frame");
        assert_eq!((seq, &frame[..]), (7, &b"\x81\x01a"[..]));
        let c = counts(&Value::Int(3), &Value::Int(-1));
        assert_eq!((c.subscriptions, c.users), (3, None));
    }
}
