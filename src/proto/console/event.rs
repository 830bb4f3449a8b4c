//! What the console shows: one record per thing that happened in an app,
//! and its JSON as the page receives it.

use crate::core::{SocketId, json::push_json_str};

/// Something that happened in an app, as a console viewer sees it. Raised
/// by the shard where it happened, and only while the app has a viewer
/// somewhere on the node ([`super::Watch::any`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConsoleEvent {
    /// A Pusher connection opened.
    Connected {
        /// Its socket id.
        socket_id: SocketId,
    },
    /// A Pusher connection closed.
    Disconnected {
        /// Its socket id.
        socket_id: SocketId,
    },
    /// A connection asked for a channel and passed its checks.
    Subscribed {
        /// The connection.
        socket_id: SocketId,
        /// The channel.
        channel: Box<str>,
    },
    /// A connection left a channel (unsubscribed or closed).
    Unsubscribed {
        /// The connection.
        socket_id: SocketId,
        /// The channel.
        channel: Box<str>,
    },
    /// A channel's first subscription, node-wide (raised on its owner).
    Occupied {
        /// The channel.
        channel: Box<str>,
    },
    /// A channel's last subscription went (raised on its owner, at once:
    /// the webhook's delay does not apply to the console).
    Vacated {
        /// The channel.
        channel: Box<str>,
    },
    /// A user's first connection joined a presence channel.
    MemberAdded {
        /// The channel.
        channel: Box<str>,
        /// The member.
        user_id: Box<str>,
    },
    /// A user's last connection left a presence channel.
    MemberRemoved {
        /// The channel.
        channel: Box<str>,
        /// The member.
        user_id: Box<str>,
    },
    /// A client event, raised on the sender's shard.
    ClientEvent {
        /// The channel.
        channel: Box<str>,
        /// The event name.
        event: Box<str>,
        /// `data` as the client sent it (JSON text).
        data: Box<str>,
        /// The sender.
        socket_id: SocketId,
        /// The sender's member id, on presence channels.
        user_id: Option<Box<str>>,
    },
    /// An event published from the server side (the HTTP API or the
    /// console's own form), raised on the shard that took it.
    ApiMessage {
        /// The channel.
        channel: Box<str>,
        /// The event name.
        event: Box<str>,
        /// The event's data, as published (a string).
        data: Box<str>,
    },
}

impl ConsoleEvent {
    /// The `type` the page filters on.
    pub fn kind(&self) -> &'static str {
        match self {
            ConsoleEvent::Connected { .. } => "connected",
            ConsoleEvent::Disconnected { .. } => "disconnected",
            ConsoleEvent::Subscribed { .. } => "subscribed",
            ConsoleEvent::Unsubscribed { .. } => "unsubscribed",
            ConsoleEvent::Occupied { .. } => "occupied",
            ConsoleEvent::Vacated { .. } => "vacated",
            ConsoleEvent::MemberAdded { .. } => "member_added",
            ConsoleEvent::MemberRemoved { .. } => "member_removed",
            ConsoleEvent::ClientEvent { .. } => "client_event",
            ConsoleEvent::ApiMessage { .. } => "api_message",
        }
    }

    /// The JSON object the page receives: `type`, the event's own fields,
    /// and where and when it happened (`shard`, its `seq` there, and
    /// `time_ms`, Unix milliseconds).
    pub fn to_json(&self, shard: usize, seq: u64, time_ms: u64) -> Vec<u8> {
        let mut out = Vec::with_capacity(128);
        out.extend_from_slice(b"{\"type\":");
        push_json_str(&mut out, self.kind());
        let field = |out: &mut Vec<u8>, name: &str, value: &str| {
            out.extend_from_slice(b",\"");
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(b"\":");
            push_json_str(out, value);
        };
        match self {
            ConsoleEvent::Connected { socket_id } | ConsoleEvent::Disconnected { socket_id } => {
                field(&mut out, "socket_id", &socket_id.to_string());
            }
            ConsoleEvent::Subscribed { socket_id, channel }
            | ConsoleEvent::Unsubscribed { socket_id, channel } => {
                field(&mut out, "socket_id", &socket_id.to_string());
                field(&mut out, "channel", channel);
            }
            ConsoleEvent::Occupied { channel } | ConsoleEvent::Vacated { channel } => {
                field(&mut out, "channel", channel);
            }
            ConsoleEvent::MemberAdded { channel, user_id }
            | ConsoleEvent::MemberRemoved { channel, user_id } => {
                field(&mut out, "channel", channel);
                field(&mut out, "user_id", user_id);
            }
            ConsoleEvent::ClientEvent { channel, event, data, socket_id, user_id } => {
                field(&mut out, "channel", channel);
                field(&mut out, "event", event);
                field(&mut out, "data", data);
                field(&mut out, "socket_id", &socket_id.to_string());
                if let Some(user_id) = user_id {
                    field(&mut out, "user_id", user_id);
                }
            }
            ConsoleEvent::ApiMessage { channel, event, data } => {
                field(&mut out, "channel", channel);
                field(&mut out, "event", event);
                field(&mut out, "data", data);
            }
        }
        out.extend_from_slice(
            format!(",\"shard\":{shard},\"seq\":{seq},\"time_ms\":{time_ms}}}").as_bytes(),
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &[u8]) -> serde_json::Value {
        serde_json::from_slice(json).expect("valid JSON")
    }

    #[test]
    fn api_message_carries_its_data_as_a_string() {
        let event = ConsoleEvent::ApiMessage {
            channel: "my-channel".into(),
            event: "my-event".into(),
            data: "{\"a\":\"<\\\"x\\\">\"}".into(),
        };
        let v = parse(&event.to_json(1, 7, 1_700_000_000_000));
        assert_eq!(v["type"], "api_message");
        assert_eq!(v["channel"], "my-channel");
        assert_eq!(v["event"], "my-event");
        assert_eq!(v["data"], "{\"a\":\"<\\\"x\\\">\"}");
        assert_eq!((v["shard"].as_u64(), v["seq"].as_u64()), (Some(1), Some(7)));
        assert_eq!(v["time_ms"].as_u64(), Some(1_700_000_000_000));
    }

    #[test]
    fn client_event_names_its_sender_and_member() {
        let socket_id: SocketId = "12.34".parse().expect("socket id");
        let event = ConsoleEvent::ClientEvent {
            channel: "presence-room".into(),
            event: "client-typing".into(),
            data: "{}".into(),
            socket_id,
            user_id: Some("u\n1".into()),
        };
        let v = parse(&event.to_json(0, 0, 0));
        assert_eq!(v["type"], "client_event");
        assert_eq!(v["socket_id"], "12.34");
        assert_eq!(v["user_id"], "u\n1");
        let connected = parse(&ConsoleEvent::Connected { socket_id }.to_json(0, 1, 2));
        assert_eq!(connected["type"], "connected");
        assert_eq!(connected["socket_id"], "12.34");
        assert!(connected.get("channel").is_none());
    }
}
