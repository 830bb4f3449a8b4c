//! Pusher events arriving over Redis, sans-IO: one payload in, one framed
//! [`Publish`] out (or a [`PusherError`] saying why not).
//!
//! The payload is the HTTP API's trigger body plus the app:
//! `{"app_id": "1", "channel": "c" | "channels": [...], "name": "e",
//! "data": ..., "socket_id"?: "1.2"}`. `app_id` may be a string or an
//! integer. `data` is delivered verbatim when it is a string; any other JSON
//! value is delivered as its compact JSON text, so a backend can publish
//! `"data": {"id": 1}` without encoding twice (the HTTP API refuses that,
//! because Pusher does). `null` counts as missing. Everything else is checked
//! exactly as `POST /apps/{id}/events` checks it
//! ([`events::validate_fields`]).
//!
//! Cache channels (`cache-*` and its private, encrypted and presence forms)
//! are cached exactly as an HTTP API publish is: the event goes only to the
//! channel's owner shard as a [`ShardMsg::CachePublish`], which stores it and
//! broadcasts it to every shard, so a later subscriber gets it replayed.

use std::{fmt, time::Instant};

use bytes::Bytes;
use serde::{
    Deserialize, Deserializer,
    de::{self, Visitor},
};
use simd_json::{Buffers, OwnedValue, prelude::Writable};

use crate::{
    core::{AppIdx, Apps, SocketId, json},
    proto::{
        index::presence::owner_shard,
        msg::ShardMsg,
        pusher::{channel, messages},
        rest::{error::ApiError, events, events::Limits},
    },
};

/// Why a Redis payload was not published. Each is logged and counted by the
/// bridge; none stops it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PusherError {
    /// Not a JSON object of the expected shape; fix the publisher.
    #[error("invalid JSON: {0}")]
    Json(String),
    /// `app_id` is absent.
    #[error("missing required field app_id")]
    MissingApp,
    /// `app_id` names no configured app.
    #[error("unknown app {0:?}")]
    UnknownApp(String),
    /// The app is configured but disabled.
    #[error("app {0:?} is disabled")]
    Disabled(String),
    /// The HTTP API would refuse this event too; the message says why.
    #[error("{0}")]
    Invalid(ApiError),
}

/// One validated event, framed once per channel, ready for every shard.
#[derive(Debug)]
pub struct Publish {
    /// App of the channels.
    pub app: AppIdx,
    /// Connection not to deliver to.
    pub exclude: Option<SocketId>,
    /// Each channel with its complete WebSocket frame.
    pub frames: Vec<(Box<str>, Bytes)>,
}

impl Publish {
    /// The messages shard `shard` of `shards` gets: a handle on each frame,
    /// no copies. A plain channel's event goes to the shard only if
    /// `holds(i)` (the shard has subscribers of `frames[i]`'s channel; where
    /// that is not known, say true); a cache channel's only to its owner,
    /// which stores and then broadcasts it, so that a replay and a live
    /// event are ordered by the owner's rings as for an HTTP API publish.
    /// `at` starts the cache TTL.
    pub fn messages<'a>(
        &'a self,
        shard: usize,
        shards: usize,
        at: Instant,
        holds: impl Fn(usize) -> bool + 'a,
    ) -> impl Iterator<Item = ShardMsg> + 'a {
        self.frames.iter().enumerate().filter_map(move |(i, (name, frame))| {
            let (app, channel, frame, exclude) =
                (self.app, name.clone(), frame.clone(), self.exclude);
            if !channel::classify(name).cache {
                holds(i).then_some(ShardMsg::Deliver { app, channel, frame, exclude })
            } else if owner_shard(app, name, shards) == shard {
                Some(ShardMsg::CachePublish { app, channel, frame, exclude, at })
            } else {
                None
            }
        })
    }
}

/// Parses, validates and frames one payload. simd-json rewrites `payload`.
///
/// # Errors
///
/// A [`PusherError`] for anything the bridge must not publish.
pub fn parse(
    payload: &mut [u8],
    apps: &Apps,
    buffers: &mut Buffers,
) -> Result<Publish, PusherError> {
    let invalid = |e: &dyn std::fmt::Display| PusherError::Json(e.to_string());
    let tape = simd_json::Deserializer::from_slice_with_buffers(payload, buffers)
        .map_err(|e| invalid(&e))?
        .into_tape();
    // `data` is delivered as its JSON text, so a repeated key anywhere in
    // it is refused too.
    json::check_tape_unique_keys(&tape.0).map_err(|e| invalid(&e))?;
    let raw: RawEvent = tape.deserialize().map_err(|e| invalid(&e))?;
    let app_id = raw.app_id.ok_or(PusherError::MissingApp)?.0;
    let Some(idx) = apps.by_id(&app_id) else {
        return Err(PusherError::UnknownApp(app_id));
    };
    let app = apps.get(idx);
    if !app.enabled {
        return Err(PusherError::Disabled(app_id));
    }
    let limits = Limits {
        max_event_bytes: app.max_event_bytes,
        max_channel_name_chars: app.max_channel_name_chars,
        max_name_chars: app.max_event_name_chars,
        ..Limits::default()
    };
    let data = raw.data.map(|value| match value {
        OwnedValue::String(text) => text,
        other => other.encode(),
    });
    let trigger =
        events::validate_fields(raw.name, raw.channels, raw.channel, data, raw.socket_id, &limits)
            .map_err(PusherError::Invalid)?;
    let exclude = trigger.socket_id.as_deref().and_then(|s| s.parse::<SocketId>().ok());
    let frames = trigger
        .channels
        .iter()
        .map(|channel| {
            let frame = messages::channel_event(&trigger.name, channel, &trigger.data);
            (Box::<str>::from(channel.as_str()), frame)
        })
        .collect();
    Ok(Publish { app: idx, exclude, frames })
}

/// The payload as sent. Unknown fields are ignored, as the HTTP API does.
#[derive(Deserialize)]
#[serde(expecting = "a JSON object")]
struct RawEvent {
    app_id: Option<AppId>,
    name: Option<String>,
    channel: Option<String>,
    channels: Option<Vec<String>>,
    data: Option<OwnedValue>,
    socket_id: Option<String>,
}

/// `app_id` as a string or a non-negative integer: app ids are digits, and
/// backends differ in which of the two they send.
struct AppId(String);

impl<'de> Deserialize<'de> for AppId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(AppIdVisitor)
    }
}

struct AppIdVisitor;

impl Visitor<'_> for AppIdVisitor {
    type Value = AppId;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an app id (string or integer)")
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<AppId, E> {
        Ok(AppId(v.to_owned()))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<AppId, E> {
        Ok(AppId(v))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<AppId, E> {
        Ok(AppId(v.to_string()))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<AppId, E> {
        u64::try_from(v)
            .map(|v| AppId(v.to_string()))
            .map_err(|_| E::invalid_value(de::Unexpected::Signed(v), &self))
    }
}

#[cfg(test)]
// The tests make up the bridge's `Instant`.
#[allow(clippy::disallowed_methods)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::core::AppConfig;

    fn apps() -> Apps {
        let mut off = AppConfig::new("2", "k2", "s2");
        off.enabled = false;
        let mut small = AppConfig::new("3", "k3", "s3");
        small.max_event_bytes = 8;
        Apps::new(vec![Arc::new(AppConfig::new("1", "k1", "s1")), Arc::new(off), Arc::new(small)])
    }

    fn run(payload: &str) -> Result<Publish, PusherError> {
        parse(&mut payload.as_bytes().to_vec(), &apps(), &mut Buffers::default())
    }

    fn frame_json(frame: &Bytes) -> serde_json::Value {
        // Server frames are unmasked text frames with a 2-byte header below 126 bytes.
        assert_eq!(frame[0], 0x81);
        let len = usize::from(frame[1]);
        assert!(len < 126, "short frame expected");
        serde_json::from_slice(&frame[2..2 + len]).expect("frame payload is JSON")
    }

    #[test]
    fn repeated_keys_are_refused_at_any_depth() {
        let cases = [
            (
                r#"{"app_id":"1","channel":"a","name":"e","data":"d","channel":"b"}"#,
                r#"invalid JSON: duplicate key "channel" in the object at $"#,
            ),
            (
                r#"{"app_id":"1","channel":"a","name":"e","data":{"x":{"id":1,"id":2}}}"#,
                r#"invalid JSON: duplicate key "id" in the object at $.data.x"#,
            ),
            (
                r#"{"app_id":"1","app_id":"2","channel":"a","name":"e","data":"d"}"#,
                r#"invalid JSON: duplicate key "app_id" in the object at $"#,
            ),
        ];
        for (payload, expected) in cases {
            assert_eq!(run(payload).expect_err(payload).to_string(), expected);
        }
    }

    #[test]
    fn string_data_is_framed_once_per_channel() {
        let p = run(r#"{"app_id":"1","channels":["a","b","a"],"name":"ev","data":"{\"x\":1}","socket_id":"12.34"}"#)
            .expect("valid");
        assert_eq!(p.app, 0);
        assert_eq!(p.exclude, "12.34".parse().ok());
        let channels: Vec<&str> = p.frames.iter().map(|(c, _)| &**c).collect();
        assert_eq!(channels, ["a", "b"], "duplicates dropped as in the HTTP API");
        assert_eq!(
            frame_json(&p.frames[0].1),
            serde_json::json!({"event":"ev","channel":"a","data":"{\"x\":1}"})
        );
        let msgs: Vec<ShardMsg> = p.messages(0, 1, Instant::now(), |_| true).collect();
        assert_eq!(msgs.len(), 2);
        let ShardMsg::Deliver { frame, exclude, .. } = &msgs[1] else { panic!("deliver") };
        assert_eq!(frame.as_ptr(), p.frames[1].1.as_ptr(), "a handle, not a copy");
        assert!(exclude.is_some());
    }

    #[test]
    fn cache_channels_go_only_to_their_owner_as_cache_publishes() {
        let channels = ["cache-a", "presence-cache-c", "private-cache-b", "plain", "private-e"];
        let list = channels.map(|c| format!("\"{c}\"")).join(",");
        let payload = format!(r#"{{"app_id":"1","channels":[{list}],"name":"ev","data":"d"}}"#);
        let p = run(&payload).expect("valid");
        let (shards, at) = (3, Instant::now());
        let mut cached = Vec::new();
        for shard in 0..shards {
            let mut delivered = Vec::new();
            for msg in p.messages(shard, shards, at, |_| true) {
                match msg {
                    ShardMsg::Deliver { channel, .. } => delivered.push(channel),
                    ShardMsg::CachePublish { app, channel, at: when, .. } => {
                        assert_eq!(owner_shard(app, &channel, shards), shard);
                        assert_eq!(when, at);
                        cached.push(channel);
                    }
                    other => panic!("unexpected {other:?}"),
                }
            }
            assert_eq!(delivered, [Box::from("plain"), Box::from("private-e")], "shard {shard}");
        }
        cached.sort();
        assert_eq!(cached, channels[..3].iter().map(|&c| Box::from(c)).collect::<Vec<_>>());
        // Encrypted channels are published one at a time.
        let p =
            run(r#"{"app_id":"1","channel":"private-encrypted-cache-d","name":"ev","data":"d"}"#)
                .expect("valid");
        let owner = owner_shard(p.app, "private-encrypted-cache-d", shards);
        for shard in 0..shards {
            let msgs: Vec<_> = p.messages(shard, shards, at, |_| true).collect();
            if shard == owner {
                assert!(matches!(msgs[..], [ShardMsg::CachePublish { .. }]), "{msgs:?}");
            } else {
                assert!(msgs.is_empty(), "shard {shard}: {msgs:?}");
            }
        }
    }

    #[test]
    fn a_plain_channel_goes_only_to_the_shards_that_hold_it() {
        let p = run(r#"{"app_id":"1","channels":["a","b","cache-c"],"name":"ev","data":"d"}"#)
            .expect("valid");
        let (shards, at) = (2, Instant::now());
        // Shard 0 holds "a" only, shard 1 nothing: the cache channel's
        // owner stores it whatever the subscribers.
        let holds = |shard: usize| move |i: usize| shard == 0 && i == 0;
        let owner = owner_shard(p.app, "cache-c", shards);
        for shard in 0..shards {
            let mut got: Vec<Box<str>> = Vec::new();
            for msg in p.messages(shard, shards, at, holds(shard)) {
                match msg {
                    ShardMsg::Deliver { channel, .. } => got.push(channel),
                    ShardMsg::CachePublish { channel, .. } => {
                        got.push(format!("store {channel}").into())
                    }
                    other => panic!("unexpected {other:?}"),
                }
            }
            let mut want: Vec<Box<str>> = Vec::new();
            if shard == 0 {
                want.push("a".into());
            }
            if shard == owner {
                want.push("store cache-c".into());
            }
            assert_eq!(got, want, "shard {shard}");
        }
    }

    #[test]
    fn json_data_is_serialised_and_numeric_app_id_accepted() {
        let p =
            run(r#"{"app_id":1,"channel":"c","name":"ev","data":{"k":[1,true,null],"s":"q\""}}"#)
                .expect("valid");
        let v = frame_json(&p.frames[0].1);
        let data: serde_json::Value =
            serde_json::from_str(v["data"].as_str().expect("data is a string")).expect("json");
        assert_eq!(data, serde_json::json!({"k":[1,true,null],"s":"q\""}));
        assert_eq!(p.exclude, None);
        let p = run(r#"{"app_id":"1","channel":"c","name":"ev","data":42}"#).expect("valid");
        assert_eq!(frame_json(&p.frames[0].1)["data"], "42");
    }

    #[test]
    fn refusals_say_why() {
        let cases = [
            ("not json", "invalid JSON"),
            ("[1,2]", "invalid JSON"),
            (r#"{"app_id":{"x":1}}"#, "invalid JSON"),
            (r#"{"app_id":-1}"#, "invalid JSON"),
            (r#"{"channel":"c","name":"e","data":"d"}"#, "missing required field app_id"),
            (r#"{"app_id":"9","channel":"c","name":"e","data":"d"}"#, "unknown app \"9\""),
            (r#"{"app_id":"2","channel":"c","name":"e","data":"d"}"#, "app \"2\" is disabled"),
            (r#"{"app_id":"1","channel":"c","name":"e"}"#, "Missing required parameter: data"),
            (
                r#"{"app_id":"1","channel":"c","name":"e","data":null}"#,
                "Missing required parameter: data",
            ),
            (r#"{"app_id":"1","name":"e","data":"d"}"#, "Missing required parameter: channels"),
            (r#"{"app_id":"1","channel":"c","data":"d"}"#, "Missing required parameter: name"),
            (r#"{"app_id":"1","channel":"bad name","name":"e","data":"d"}"#, "channel"),
            (r#"{"app_id":"1","channel":"c","name":"e","data":"d","socket_id":"x"}"#, "socket_id"),
            (r#"{"app_id":"3","channel":"c","name":"e","data":"123456789"}"#, "Event too large"),
        ];
        for (payload, expected) in cases {
            let err = run(payload).expect_err(payload).to_string();
            assert!(err.contains(expected), "{payload}: {err}");
        }
    }

    #[test]
    fn at_most_100_channels() {
        let list = |n: usize| (0..n).map(|i| format!("\"c{i}\"")).collect::<Vec<_>>().join(",");
        let ok = format!(r#"{{"app_id":"1","channels":[{}],"name":"e","data":"d"}}"#, list(100));
        assert_eq!(run(&ok).expect("100 is fine").frames.len(), 100);
        let over = format!(r#"{{"app_id":"1","channels":[{}],"name":"e","data":"d"}}"#, list(101));
        let err = run(&over).expect_err("101 is too many");
        assert!(matches!(err, PusherError::Invalid(ApiError::BadRequest(_))), "{err}");
    }
}
