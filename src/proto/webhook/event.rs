//! Webhook event types, the per-URL filter, and the JSON a receiver gets
//! (spec §13), sans-IO.

use serde_json::{Map, Value, value::RawValue};

use crate::{
    core::{AppIdx, HookKind},
    proto::pusher::shard::ShardEvent,
};

impl ShardEvent {
    /// Which webhook event this is.
    pub fn kind(&self) -> HookKind {
        match self {
            ShardEvent::CacheMiss { .. } => HookKind::CacheMiss,
            ShardEvent::ChannelOccupied { .. } => HookKind::ChannelOccupied,
            ShardEvent::ChannelVacated { .. } => HookKind::ChannelVacated,
            ShardEvent::MemberAdded { .. } => HookKind::MemberAdded,
            ShardEvent::MemberRemoved { .. } => HookKind::MemberRemoved,
            ShardEvent::ClientEvent { .. } => HookKind::ClientEvent,
            ShardEvent::SubscriptionCount { .. } => HookKind::SubscriptionCount,
        }
    }

    /// The app the event belongs to.
    pub fn app(&self) -> AppIdx {
        match self {
            ShardEvent::CacheMiss { app, .. }
            | ShardEvent::ChannelOccupied { app, .. }
            | ShardEvent::ChannelVacated { app, .. }
            | ShardEvent::MemberAdded { app, .. }
            | ShardEvent::MemberRemoved { app, .. }
            | ShardEvent::ClientEvent { app, .. }
            | ShardEvent::SubscriptionCount { app, .. } => *app,
        }
    }

    /// The event as one element of the body's `events` array.
    pub fn to_json(&self) -> Value {
        let mut obj = Map::new();
        obj.insert("name".into(), self.kind().name().into());
        let text = |s: &str| Value::String(s.to_owned());
        match self {
            ShardEvent::CacheMiss { channel, .. }
            | ShardEvent::ChannelOccupied { channel, .. }
            | ShardEvent::ChannelVacated { channel, .. } => {
                obj.insert("channel".into(), text(channel));
            }
            ShardEvent::MemberAdded { channel, user_id, .. }
            | ShardEvent::MemberRemoved { channel, user_id, .. } => {
                obj.insert("channel".into(), text(channel));
                obj.insert("user_id".into(), text(user_id));
            }
            ShardEvent::ClientEvent { channel, event, data, socket_id, user_id, .. } => {
                obj.insert("channel".into(), text(channel));
                obj.insert("event".into(), text(event));
                obj.insert("data".into(), Value::String(data_text(data)));
                obj.insert("socket_id".into(), Value::String(socket_id.to_string()));
                if let Some(user_id) = user_id {
                    obj.insert("user_id".into(), text(user_id));
                }
            }
            ShardEvent::SubscriptionCount { channel, count, .. } => {
                obj.insert("channel".into(), text(channel));
                obj.insert("subscription_count".into(), (*count).into());
            }
        }
        Value::Object(obj)
    }
}

/// A client event's `data` as the string the webhook carries: a JSON string
/// is unwrapped, anything else is its compact JSON text, the same rule the
/// HTTP API applies to event data.
fn data_text(raw: &str) -> String {
    match serde_json::from_str::<Value>(raw) {
        Ok(Value::String(s)) => s,
        Ok(other) => other.to_string(),
        Err(_) => raw.to_owned(),
    }
}

/// The request body for `events`, created at `time_ms` (Unix milliseconds):
/// `{"time_ms":…,"events":[…]}`.
pub fn body(time_ms: u64, events: &[Box<RawValue>]) -> Vec<u8> {
    let mut out = Vec::with_capacity(32 + events.iter().map(|e| e.get().len() + 1).sum::<usize>());
    out.extend_from_slice(b"{\"time_ms\":");
    out.extend_from_slice(time_ms.to_string().as_bytes());
    out.extend_from_slice(b",\"events\":[");
    for (i, e) in events.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(e.get().as_bytes());
    }
    out.extend_from_slice(b"]}");
    out
}

/// `X-Pusher-Signature`: hex HMAC-SHA256 of the raw body with the app secret.
pub fn signature(secret: &str, body: &[u8]) -> String {
    use hmac::{KeyInit, Mac};
    // HMAC takes keys of any length, so this cannot fail.
    let mut mac = match hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()) {
        Ok(mac) => mac,
        Err(_) => return String::new(),
    };
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::SocketId;

    #[test]
    fn events_render_as_the_spec_shapes() {
        let ch: Box<str> = "presence-room".into();
        let cases = [
            (
                ShardEvent::ChannelOccupied { app: 0, channel: ch.clone() },
                r#"{"channel":"presence-room","name":"channel_occupied"}"#,
            ),
            (
                ShardEvent::MemberRemoved { app: 0, channel: ch.clone(), user_id: "7".into() },
                r#"{"channel":"presence-room","name":"member_removed","user_id":"7"}"#,
            ),
            (
                ShardEvent::SubscriptionCount { app: 0, channel: "news".into(), count: 3 },
                r#"{"channel":"news","name":"subscription_count","subscription_count":3}"#,
            ),
            (
                ShardEvent::ClientEvent {
                    app: 0,
                    channel: ch,
                    event: "client-typing".into(),
                    data: r#"{"a":1}"#.into(),
                    socket_id: SocketId { hi: 12, lo: 34 },
                    user_id: Some("7".into()),
                },
                r#"{"channel":"presence-room","data":"{\"a\":1}","event":"client-typing","name":"client_event","socket_id":"12.34","user_id":"7"}"#,
            ),
        ];
        for (event, json) in cases {
            assert_eq!(event.to_json().to_string(), json);
        }
        let quoted = ShardEvent::ClientEvent {
            app: 0,
            channel: "private-a".into(),
            event: "client-x".into(),
            data: r#""hello""#.into(),
            socket_id: SocketId { hi: 1, lo: 2 },
            user_id: None,
        };
        assert_eq!(quoted.to_json()["data"], "hello");
        assert!(quoted.to_json().get("user_id").is_none());
    }

    #[test]
    fn body_and_signature() {
        let events: Vec<Box<RawValue>> = ["{\"name\":\"a\"}", "{\"name\":\"b\"}"]
            .iter()
            .map(|s| RawValue::from_string((*s).to_owned()).expect("json"))
            .collect();
        let body = body(1_700_000_000_123, &events);
        assert_eq!(
            std::str::from_utf8(&body).expect("utf8"),
            r#"{"time_ms":1700000000123,"events":[{"name":"a"},{"name":"b"}]}"#
        );
        // Computed independently: printf '%s' 'hello' | openssl dgst -sha256 -hmac secret
        assert_eq!(
            signature("secret", b"hello"),
            "88aab3ede8d3adf94d26ab90d3bafd4a2083070c3bcce9c014ee04a443847c0b"
        );
    }
}
