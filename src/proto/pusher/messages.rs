//! Server → client messages, each built once into a ready-to-send WebSocket
//! frame (spec §2: `data` is a JSON *string* on the way out).

use bytes::{BufMut, Bytes};

use crate::{
    core::{
        SocketId,
        json::{push_decimal, push_json_str},
    },
    proto::ws::codec::{TextFrame, text_frame},
};

/// A frame holding `{"event":…,"channel":…,"data":` so far, with room for
/// about `rest` more bytes.
fn event_start(event: &str, channel: Option<&str>, rest: usize) -> TextFrame {
    let mut frame =
        TextFrame::with_capacity(32 + event.len() + channel.map_or(0, |c| c.len() + 12) + rest);
    let out = frame.payload();
    out.put_slice(b"{\"event\":");
    push_json_str(out, event);
    if let Some(channel) = channel {
        out.put_slice(b",\"channel\":");
        push_json_str(out, channel);
    }
    out.put_slice(b",\"data\":");
    frame
}

/// `{"event":…,"channel":…,"data":<data_json>}` framed; `data_json` is already
/// a JSON value (a string literal for server-side events).
fn event_frame(
    event: &str,
    channel: Option<&str>,
    data_json: &[u8],
    user_id: Option<&str>,
) -> Bytes {
    let rest = data_json.len() + user_id.map_or(0, |u| u.len() + 14);
    let mut frame = event_start(event, channel, rest);
    let out = frame.payload();
    out.put_slice(data_json);
    if let Some(user_id) = user_id {
        out.put_slice(b",\"user_id\":");
        push_json_str(out, user_id);
    }
    out.put_u8(b'}');
    frame.finish()
}

/// An event whose `data` is a string, escaped straight into the frame.
fn string_data_frame(event: &str, channel: Option<&str>, data: &str) -> Bytes {
    let mut frame = event_start(event, channel, data.len() + 8);
    let out = frame.payload();
    push_json_str(out, data);
    out.put_u8(b'}');
    frame.finish()
}

/// `pusher:connection_established` (spec §3.2). Its `data` is written
/// already escaped: it holds only digits besides its own quotes, and every
/// connection gets one.
pub fn connection_established(socket_id: SocketId, activity_timeout_secs: u64) -> Bytes {
    let mut frame = event_start("pusher:connection_established", None, 96);
    let out = frame.payload();
    out.put_slice(br#""{\"socket_id\":\""#);
    push_decimal(out, socket_id.hi);
    out.put_u8(b'.');
    push_decimal(out, socket_id.lo);
    out.put_slice(br#"\",\"activity_timeout\":"#);
    push_decimal(out, activity_timeout_secs);
    out.put_slice(b"}\"}");
    frame.finish()
}

/// `pusher:error` with `{"message","code"}` as an object (spec §2.4).
pub fn error(code: Option<u16>, message: &str) -> Bytes {
    let mut data = Vec::with_capacity(message.len() + 32);
    data.extend_from_slice(b"{\"code\":");
    match code {
        Some(code) => push_decimal(&mut data, u64::from(code)),
        None => data.extend_from_slice(b"null"),
    }
    data.extend_from_slice(b",\"message\":");
    push_json_str(&mut data, message);
    data.push(b'}');
    event_frame("pusher:error", None, &data, None)
}

/// `pusher:pong`, the answer to `pusher:ping`.
pub fn pong() -> Bytes {
    event_frame("pusher:pong", None, b"{}", None)
}

/// `pusher:ping`, sent after `activity_timeout` of silence (spec §3.3).
pub fn ping() -> Bytes {
    event_frame("pusher:ping", None, b"{}", None)
}

/// `pusher_internal:subscription_succeeded` for a non-presence channel.
pub fn subscription_succeeded(channel: &str) -> Bytes {
    event_frame("pusher_internal:subscription_succeeded", Some(channel), b"\"{}\"", None)
}

/// `pusher_internal:subscription_succeeded` for a presence channel; `presence`
/// is the JSON object `{"ids":…,"hash":…,"count":…}`.
pub fn presence_subscription_succeeded(channel: &str, presence: &str) -> Bytes {
    let data = format!("{{\"presence\":{presence}}}");
    string_data_frame("pusher_internal:subscription_succeeded", Some(channel), &data)
}

/// `pusher_internal:member_added` (spec §6).
pub fn member_added(channel: &str, user_id: &str, user_info: Option<&str>) -> Bytes {
    let mut data = Vec::with_capacity(32 + user_id.len() + user_info.map_or(0, str::len));
    data.extend_from_slice(b"{\"user_id\":");
    push_json_str(&mut data, user_id);
    if let Some(info) = user_info {
        data.extend_from_slice(b",\"user_info\":");
        data.extend_from_slice(info.as_bytes());
    }
    data.push(b'}');
    let data = String::from_utf8_lossy(&data);
    string_data_frame("pusher_internal:member_added", Some(channel), &data)
}

/// `pusher_internal:member_removed` (spec §6).
pub fn member_removed(channel: &str, user_id: &str) -> Bytes {
    let mut data = Vec::with_capacity(16 + user_id.len());
    data.extend_from_slice(b"{\"user_id\":");
    push_json_str(&mut data, user_id);
    data.push(b'}');
    let data = String::from_utf8_lossy(&data);
    string_data_frame("pusher_internal:member_removed", Some(channel), &data)
}

/// An event published over the HTTP API: `data` is passed through verbatim
/// as a string (spec §12.4).
pub fn channel_event(event: &str, channel: &str, data: &str) -> Bytes {
    string_data_frame(event, Some(channel), data)
}

/// `pusher:cache_miss`: a cache channel had no event to replay (spec §8).
/// It carries no `data`, as in Pusher's docs.
pub fn cache_miss(channel: &str) -> Bytes {
    let mut out = Vec::with_capacity(48 + channel.len());
    out.extend_from_slice(b"{\"event\":\"pusher:cache_miss\",\"channel\":");
    push_json_str(&mut out, channel);
    out.push(b'}');
    text_frame(&out)
}

/// The event name and `data` string of a frame built by [`channel_event`].
/// The HTTP API's `info=cache` reads them back from the cached frame rather
/// than have the cache keep a second copy of every event.
pub fn channel_event_parts(frame: &[u8]) -> Option<(String, String)> {
    #[derive(serde::Deserialize)]
    struct Parts {
        event: String,
        data: String,
    }
    // Server frames are unmasked; the 7-bit length says how long the header is.
    let header = match frame.get(1)? & 0x7f {
        126 => 4,
        127 => 10,
        _ => 2,
    };
    let parts: Parts = serde_json::from_slice(frame.get(header..)?).ok()?;
    Some((parts.event, parts.data))
}

/// A client event relayed to the channel's other subscribers (spec §9):
/// `data_json` is the sender's `data` value as it arrived (object or string),
/// `user_id` is set on presence channels.
pub fn client_event(event: &str, channel: &str, data_json: &[u8], user_id: Option<&str>) -> Bytes {
    event_frame(event, Some(channel), data_json, user_id)
}

/// `pusher:signin_success` echoing the `user_data` string as received
/// (spec §10.1).
pub fn signin_success(user_data: &str) -> Bytes {
    let mut data = Vec::with_capacity(16 + user_data.len());
    data.extend_from_slice(b"{\"user_data\":");
    push_json_str(&mut data, user_data);
    data.push(b'}');
    let data = String::from_utf8_lossy(&data);
    string_data_frame("pusher:signin_success", None, &data)
}

/// `pusher_internal:subscription_count` (spec §11).
pub fn subscription_count(channel: &str, count: usize) -> Bytes {
    let data = format!("{{\"subscription_count\":{count}}}");
    string_data_frame("pusher_internal:subscription_count", Some(channel), &data)
}

/// `pusher_internal:watchlist_events` with one `online` or `offline` entry
/// (spec §10.3).
pub fn watchlist_event(online: bool, user_ids: &[&str]) -> Bytes {
    let mut data = Vec::with_capacity(48 + user_ids.len() * 16);
    data.extend_from_slice(b"{\"events\":[{\"name\":");
    data.extend_from_slice(if online { b"\"online\"" } else { b"\"offline\"" });
    data.extend_from_slice(b",\"user_ids\":[");
    for (i, id) in user_ids.iter().enumerate() {
        if i > 0 {
            data.push(b',');
        }
        push_json_str(&mut data, id);
    }
    data.extend_from_slice(b"]}]}");
    let data = String::from_utf8_lossy(&data);
    string_data_frame("pusher_internal:watchlist_events", None, &data)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payload(frame: &Bytes) -> serde_json::Value {
        let len = frame[1] as usize;
        assert!(len < 126, "test frames are short");
        serde_json::from_slice(&frame[2..2 + len]).expect("valid JSON")
    }

    #[test]
    fn connection_established_double_encodes_data() {
        let v = payload(&connection_established(SocketId { hi: 12, lo: 34 }, 120));
        assert_eq!(v["event"], "pusher:connection_established");
        let data: serde_json::Value =
            serde_json::from_str(v["data"].as_str().expect("string data")).expect("JSON in data");
        assert_eq!(data["socket_id"], "12.34");
        assert_eq!(data["activity_timeout"], 120);
    }

    #[test]
    fn connection_established_is_written_exactly() {
        let frame = connection_established(SocketId { hi: u64::MAX, lo: 0 }, 7);
        let want = r#"{"event":"pusher:connection_established","data":"{\"socket_id\":\"18446744073709551615.0\",\"activity_timeout\":7}"}"#;
        assert_eq!(frame, text_frame(want.as_bytes()));
    }

    #[test]
    fn cache_miss_has_channel_and_no_data() {
        let v = payload(&cache_miss("cache-x"));
        assert_eq!(v, serde_json::json!({"event":"pusher:cache_miss","channel":"cache-x"}));
    }

    #[test]
    fn channel_event_parts_read_back_any_frame_length() {
        for len in [3, 200, 70_000] {
            let data = "d".repeat(len) + "\"";
            let frame = channel_event("ev", "cache-x", &data);
            assert_eq!(channel_event_parts(&frame), Some(("ev".into(), data)));
        }
        assert_eq!(channel_event_parts(b""), None);
        assert_eq!(channel_event_parts(&cache_miss("c")), None);
    }

    #[test]
    fn error_data_is_an_object_with_code() {
        let v = payload(&error(Some(4301), "slow \"down\""));
        assert_eq!(v["data"]["code"], 4301);
        assert_eq!(v["data"]["message"], "slow \"down\"");
        assert_eq!(payload(&error(None, "x"))["data"]["code"], serde_json::Value::Null);
    }

    #[test]
    fn strings_are_escaped() {
        let mut out = Vec::new();
        push_json_str(&mut out, "a\"b\\c\n\u{1}é");
        let back: String = serde_json::from_slice(&out).expect("valid literal");
        assert_eq!(back, "a\"b\\c\n\u{1}é");
    }

    #[test]
    fn member_events_carry_user_data_as_string() {
        let v = payload(&member_added("presence-a", "7", Some("{\"n\":1}")));
        let data: serde_json::Value =
            serde_json::from_str(v["data"].as_str().expect("string")).expect("json");
        assert_eq!(data["user_id"], "7");
        assert_eq!(data["user_info"]["n"], 1);
        let v = payload(&member_removed("presence-a", "7"));
        assert_eq!(v["channel"], "presence-a");
    }

    #[test]
    fn user_frames() {
        let v = payload(&signin_success("{\"id\":\"1\"}"));
        assert_eq!(v["event"], "pusher:signin_success");
        let data: serde_json::Value =
            serde_json::from_str(v["data"].as_str().expect("string")).expect("json");
        assert_eq!(data["user_data"], "{\"id\":\"1\"}");
        let v = payload(&subscription_count("news", 3));
        assert_eq!(v["data"], "{\"subscription_count\":3}");
        let v = payload(&watchlist_event(false, &["a", "b"]));
        let data: serde_json::Value =
            serde_json::from_str(v["data"].as_str().expect("string")).expect("json");
        assert_eq!(data, serde_json::json!({"events":[{"name":"offline","user_ids":["a","b"]}]}));
    }

    #[test]
    fn client_events_keep_object_data_and_add_user_id() {
        let v = payload(&client_event("client-x", "presence-a", b"{\"k\":2}", Some("u1")));
        assert_eq!(v["data"]["k"], 2);
        assert_eq!(v["user_id"], "u1");
    }
}
