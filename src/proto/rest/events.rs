//! Trigger and batch trigger bodies (spec §12.4): JSON decoding and every
//! check that must pass before anything is published.
//!
//! Decoding: the `parse_*` entry points use simd-json with scratch buffers
//! kept per thread (shards are threads, so they are reused without locking).
//! `benches/protocol.rs` (`trigger_parse`) measured, on bodies whose `data`
//! is a JSON-encoded object as the SDKs send it (escape-heavy): 200 B ~0.55 µs
//! both; 2 KB 3.2 µs simd-json vs 5.2 µs serde_json; 10 KB 14 µs vs 26 µs.
//! serde_json wins only when `data` has almost no escapes (10 KB plain text:
//! 2.3 µs vs 8.8 µs), which is not what SDKs send, so simd-json it is. Both
//! decoders are public; [`parse_trigger_json`] also suits an immutable body.

use std::{cell::RefCell, fmt};

use serde::{
    Deserialize, Deserializer,
    de::{self, IgnoredAny, MapAccess, SeqAccess, Visitor},
};
use simd_json::Buffers;

use super::error::ApiError;
use crate::{
    core::json,
    proto::pusher::{channel, channel::ChannelKind},
};

/// Extra information a trigger asks for in its response (spec §12.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InfoAttr {
    /// `user_count`: unique users, for presence channels.
    UserCount,
    /// `subscription_count`: connections, for non-presence channels.
    SubscriptionCount,
}

/// One validated event to publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trigger {
    /// Event name, valid per spec §4.3.
    pub name: String,
    /// Valid channel names, duplicates removed, in request order; 1..=max.
    pub channels: Vec<String>,
    /// The payload, delivered verbatim (spec §12.4).
    pub data: String,
    /// Connection to exclude, already checked to match `^\d+\.\d+$`.
    pub socket_id: Option<String>,
    /// Requested response attributes, without duplicates, in request order.
    pub info: Vec<InfoAttr>,
}

/// Per-request limits (spec §12.5 gives the defaults, see [`Limits::default`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest `data`, in bytes (10240).
    pub max_event_bytes: usize,
    /// Most channels in one trigger (100).
    pub max_channels: usize,
    /// Most events in one batch (10).
    pub max_batch: usize,
    /// Longest event name, in characters (200).
    pub max_name_chars: usize,
    /// Longest channel name, in characters (200).
    pub max_channel_name_chars: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_event_bytes: 10 * 1024,
            max_channels: 100,
            max_batch: 10,
            max_name_chars: 200,
            max_channel_name_chars: 200,
        }
    }
}

/// A trigger as sent, before validation. Unknown fields are ignored.
#[derive(Deserialize)]
#[serde(expecting = "a JSON object")]
struct RawTrigger {
    name: Option<String>,
    channels: Option<Vec<String>>,
    channel: Option<String>,
    data: Option<Data>,
    socket_id: Option<String>,
    info: Option<String>,
}

#[derive(Deserialize)]
#[serde(expecting = "a JSON object")]
struct RawBatch {
    batch: Option<Vec<RawTrigger>>,
}

/// `data` as received: Pusher requires a string; anything else is kept only
/// as its kind so the error can say what was sent.
enum Data {
    Text(String),
    Other(&'static str),
}

impl<'de> Deserialize<'de> for Data {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(DataVisitor)
    }
}

struct DataVisitor;

impl<'de> Visitor<'de> for DataVisitor {
    type Value = Data;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string")
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Data, E> {
        Ok(Data::Text(v.to_owned()))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Data, E> {
        Ok(Data::Text(v))
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Data, E> {
        Ok(Data::Other("a boolean"))
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Data, E> {
        Ok(Data::Other("a number"))
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Data, E> {
        Ok(Data::Other("a number"))
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Data, E> {
        Ok(Data::Other("a number"))
    }
    fn visit_unit<E: de::Error>(self) -> Result<Data, E> {
        Ok(Data::Other("null"))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Data, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(Data::Other("an object"))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Data, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Data::Other("an array"))
    }
}

thread_local! {
    /// simd-json scratch space, reused by every parse on this thread.
    static BUFFERS: RefCell<Buffers> = RefCell::new(Buffers::default());
}

/// Decodes with simd-json, reusing this thread's buffers.
fn decode_simd_local<T: for<'de> Deserialize<'de>>(body: &mut [u8]) -> Result<T, ApiError> {
    BUFFERS.with(|b| match b.try_borrow_mut() {
        Ok(mut buffers) => decode_simd(body, &mut buffers),
        // Only reachable if a parse re-entered another; use fresh buffers.
        Err(_) => decode_simd(body, &mut Buffers::default()),
    })
}

fn decode_simd<T: for<'de> Deserialize<'de>>(
    body: &mut [u8],
    buffers: &mut Buffers,
) -> Result<T, ApiError> {
    let tape = simd_json::Deserializer::from_slice_with_buffers(body, buffers)
        .map_err(invalid_json)?
        .into_tape();
    // On the tape simd-json built anyway: no second pass over the body.
    json::check_tape_unique_keys(&tape.0).map_err(invalid_json)?;
    tape.deserialize().map_err(invalid_json)
}

fn decode_json<T: for<'de> Deserialize<'de>>(body: &[u8]) -> Result<T, ApiError> {
    json::check_unique_keys(body).map_err(invalid_json)?;
    serde_json::from_slice(body).map_err(invalid_json)
}

fn invalid_json(e: impl fmt::Display) -> ApiError {
    ApiError::BadRequest(format!("Invalid JSON body: {e}"))
}

/// Parses and validates a `POST /apps/{id}/events` body (spec §12.4).
/// simd-json rewrites `body` in place. Errors: 400 for anything invalid,
/// 413 when `data` is over [`Limits::max_event_bytes`].
pub fn parse_trigger(body: &mut [u8], limits: &Limits) -> Result<Trigger, ApiError> {
    validate(decode_simd_local(body)?, limits, false)
}

/// [`parse_trigger`] with caller-owned simd-json buffers.
pub fn parse_trigger_with(
    body: &mut [u8],
    limits: &Limits,
    buffers: &mut Buffers,
) -> Result<Trigger, ApiError> {
    validate(decode_simd(body, buffers)?, limits, false)
}

/// [`parse_trigger`] decoding with serde_json, for an immutable body.
pub fn parse_trigger_json(body: &[u8], limits: &Limits) -> Result<Trigger, ApiError> {
    validate(decode_json(body)?, limits, false)
}

/// Parses and validates a `POST /apps/{id}/batch_events` body
/// `{"batch":[{name, channel, data, socket_id?, info?}, …]}` (spec §12.4).
///
/// All or nothing: the first invalid event fails the whole batch, so nothing
/// from a bad batch is published (spec §12.3). More than
/// [`Limits::max_batch`] events → 400 "Batch too large". Each event takes a
/// single `channel` (`channels` → 400), so `info` answers stay one object per
/// event. An empty batch is valid and publishes nothing.
pub fn parse_batch(body: &mut [u8], limits: &Limits) -> Result<Vec<Trigger>, ApiError> {
    validate_batch(decode_simd_local(body)?, limits)
}

/// [`parse_batch`] with caller-owned simd-json buffers.
pub fn parse_batch_with(
    body: &mut [u8],
    limits: &Limits,
    buffers: &mut Buffers,
) -> Result<Vec<Trigger>, ApiError> {
    validate_batch(decode_simd(body, buffers)?, limits)
}

/// [`parse_batch`] decoding with serde_json, for an immutable body.
pub fn parse_batch_json(body: &[u8], limits: &Limits) -> Result<Vec<Trigger>, ApiError> {
    validate_batch(decode_json(body)?, limits)
}

/// Runs the checks of [`parse_trigger`] on fields another transport has
/// already decoded (the Redis bridge), so both accept exactly the same
/// events. `data` is the payload text; `info` is not available here.
pub fn validate_fields(
    name: Option<String>,
    channels: Option<Vec<String>>,
    channel: Option<String>,
    data: Option<String>,
    socket_id: Option<String>,
    limits: &Limits,
) -> Result<Trigger, ApiError> {
    let raw =
        RawTrigger { name, channels, channel, data: data.map(Data::Text), socket_id, info: None };
    validate(raw, limits, false)
}

fn validate_batch(raw: RawBatch, limits: &Limits) -> Result<Vec<Trigger>, ApiError> {
    let Some(batch) = raw.batch else {
        return Err(bad("Missing required parameter: batch"));
    };
    if batch.len() > limits.max_batch {
        return Err(ApiError::BadRequest(format!(
            "Batch too large: {} events, at most {} allowed",
            batch.len(),
            limits.max_batch
        )));
    }
    batch
        .into_iter()
        .enumerate()
        .map(|(i, t)| validate(t, limits, true).map_err(|e| in_batch(i, e)))
        .collect()
}

/// Prefixes an event's error with its index, keeping the status.
fn in_batch(index: usize, e: ApiError) -> ApiError {
    match e {
        ApiError::BadRequest(m) => ApiError::BadRequest(format!("batch[{index}]: {m}")),
        ApiError::PayloadTooLarge(m) => ApiError::PayloadTooLarge(format!("batch[{index}]: {m}")),
        other => other,
    }
}

fn bad(msg: &str) -> ApiError {
    ApiError::BadRequest(msg.to_owned())
}

/// The checks of spec §12.4, in order; the first failure is returned.
fn validate(raw: RawTrigger, limits: &Limits, in_batch: bool) -> Result<Trigger, ApiError> {
    let name = raw.name.ok_or_else(|| bad("Missing required parameter: name"))?;
    channel::validate_event_name(&name, limits.max_name_chars)
        .map_err(|e| ApiError::BadRequest(e.to_string()))?;

    let data = match raw.data {
        None => return Err(bad("Missing required parameter: data")),
        Some(Data::Other(kind)) => {
            return Err(ApiError::BadRequest(format!(
                "data must be a string, not {kind}: JSON-encode the payload before triggering"
            )));
        }
        Some(Data::Text(data)) => data,
    };
    // The PHP SDK's tests look for "content of this event" (spec §12.3).
    if data.len() > limits.max_event_bytes {
        return Err(ApiError::PayloadTooLarge(format!(
            "Event too large: the content of this event is {} bytes, the limit is {} bytes",
            data.len(),
            limits.max_event_bytes
        )));
    }

    let channels = channels(raw.channels, raw.channel, limits, in_batch)?;

    if let Some(id) = &raw.socket_id
        && !is_socket_id(id)
    {
        return Err(ApiError::BadRequest(format!(
            "Invalid socket_id '{}': expected digits.digits",
            id.escape_debug()
        )));
    }

    let info = match &raw.info {
        Some(list) => parse_info(list)?,
        None => Vec::new(),
    };
    Ok(Trigger { name, channels, data, socket_id: raw.socket_id, info })
}

/// `channels` or `channel` (PHP sends `channel` for one, spec §12.4), 1..=max
/// valid names, duplicates dropped keeping the first. An encrypted channel
/// must be alone: SDKs refuse to mix them and we answer 400 (spec §7).
fn channels(
    many: Option<Vec<String>>,
    one: Option<String>,
    limits: &Limits,
    in_batch: bool,
) -> Result<Vec<String>, ApiError> {
    let mut channels = match (many, one) {
        (Some(_), Some(_)) => return Err(bad("Give either channel or channels, not both")),
        (None, None) if in_batch => return Err(bad("Missing required parameter: channel")),
        (None, None) => return Err(bad("Missing required parameter: channels")),
        (Some(_), None) if in_batch => {
            return Err(bad("Batch events take a single channel, not channels"));
        }
        (Some(many), None) => many,
        (None, Some(one)) => vec![one],
    };
    // Bounded before any per-name work; duplicates still count here.
    if channels.is_empty() || channels.len() > limits.max_channels {
        return Err(ApiError::BadRequest(format!(
            "channels must list 1 to {} channels, got {}",
            limits.max_channels,
            channels.len()
        )));
    }
    for name in &channels {
        channel::validate(name, limits.max_channel_name_chars)
            .map_err(|e| ApiError::BadRequest(e.to_string()))?;
    }
    // Quadratic, but n <= max_channels (100) and usually 1.
    let mut i = 1;
    while i < channels.len() {
        if channels[..i].contains(&channels[i]) {
            channels.remove(i);
        } else {
            i += 1;
        }
    }
    if channels.len() > 1
        && channels.iter().any(|c| channel::classify(c).kind == ChannelKind::PrivateEncrypted)
    {
        return Err(bad("Encrypted channels cannot be triggered together with other channels: \
             send one request per private-encrypted- channel"));
    }
    Ok(channels)
}

/// `^\d+\.\d+$` (spec §3.2).
fn is_socket_id(id: &str) -> bool {
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    id.split_once('.').is_some_and(|(a, b)| digits(a) && digits(b))
}

/// `info`: comma-separated `user_count` / `subscription_count` (spec §12.4).
/// Whitespace around items is tolerated; empty items are skipped.
fn parse_info(list: &str) -> Result<Vec<InfoAttr>, ApiError> {
    let mut out = Vec::new();
    for item in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let attr = match item {
            "user_count" => InfoAttr::UserCount,
            "subscription_count" => InfoAttr::SubscriptionCount,
            other => {
                return Err(ApiError::BadRequest(format!(
                    "Unknown info attribute '{}': expected user_count or subscription_count",
                    other.escape_debug()
                )));
            }
        };
        if !out.contains(&attr) {
            out.push(attr);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `body` through all three decoders and checks they agree.
    fn trigger(body: &str) -> Result<Trigger, ApiError> {
        trigger_limits(body, &Limits::default())
    }

    fn trigger_limits(body: &str, limits: &Limits) -> Result<Trigger, ApiError> {
        let json = parse_trigger_json(body.as_bytes(), limits);
        let simd = parse_trigger(&mut body.as_bytes().to_vec(), limits);
        let with = parse_trigger_with(&mut body.as_bytes().to_vec(), limits, &mut Buffers::new(16));
        match (&json, &simd, &with) {
            // Syntax error texts differ between the libraries.
            (Err(ApiError::BadRequest(a)), Err(ApiError::BadRequest(b)), Err(_))
                if a.starts_with("Invalid JSON") =>
            {
                assert!(b.starts_with("Invalid JSON"), "{b}");
            }
            _ => {
                assert_eq!(json, simd, "{body}");
                assert_eq!(simd, with, "{body}");
            }
        }
        json
    }

    fn batch(body: &str) -> Result<Vec<Trigger>, ApiError> {
        let limits = Limits::default();
        let json = parse_batch_json(body.as_bytes(), &limits);
        let simd = parse_batch(&mut body.as_bytes().to_vec(), &limits);
        let with = parse_batch_with(&mut body.as_bytes().to_vec(), &limits, &mut Buffers::new(16));
        if !matches!(&json, Err(ApiError::BadRequest(m)) if m.starts_with("Invalid JSON")) {
            assert_eq!(json, simd, "{body}");
            assert_eq!(simd, with, "{body}");
        }
        json
    }

    fn bad_request(r: Result<Trigger, ApiError>) -> String {
        match r {
            Err(ApiError::BadRequest(m)) => m,
            other => panic!("expected 400, got {other:?}"),
        }
    }

    #[test]
    fn spec_example_body() {
        let t = trigger(r#"{"name":"foo","channels":["project-3"],"data":"{\"some\":\"data\"}"}"#);
        assert_eq!(
            t,
            Ok(Trigger {
                name: "foo".into(),
                channels: vec!["project-3".into()],
                data: r#"{"some":"data"}"#.into(),
                socket_id: None,
                info: vec![],
            })
        );
    }

    #[test]
    fn single_channel_socket_id_and_info() {
        let t = trigger(
            r#"{"name":"e","channel":"presence-x","data":"d","socket_id":"123.456",
                "info":"user_count, subscription_count,user_count","other":{"ignored":[1]}}"#,
        );
        assert_eq!(
            t,
            Ok(Trigger {
                name: "e".into(),
                channels: vec!["presence-x".into()],
                data: "d".into(),
                socket_id: Some("123.456".into()),
                info: vec![InfoAttr::UserCount, InfoAttr::SubscriptionCount],
            })
        );
        let empty_info = trigger(r#"{"name":"e","channel":"c","data":"","info":""}"#);
        assert_eq!(empty_info.map(|t| t.info), Ok(vec![]));
    }

    #[test]
    fn missing_fields() {
        let m = bad_request(trigger(r#"{"channel":"c","data":"d"}"#));
        assert_eq!(m, "Missing required parameter: name");
        let m = bad_request(trigger(r#"{"name":"e","channel":"c"}"#));
        assert_eq!(m, "Missing required parameter: data");
        let m = bad_request(trigger(r#"{"name":"e","channel":"c","data":null}"#));
        assert_eq!(m, "Missing required parameter: data");
        let m = bad_request(trigger(r#"{"name":"e","data":"d"}"#));
        assert_eq!(m, "Missing required parameter: channels");
    }

    #[test]
    fn data_must_be_a_string() {
        for (data, kind) in [
            (r#"{"a":[1,{"b":2}]}"#, "an object"),
            ("[1,2]", "an array"),
            ("5", "a number"),
            ("-5", "a number"),
            ("1.5", "a number"),
            ("true", "a boolean"),
        ] {
            let body = format!(r#"{{"name":"e","channel":"c","data":{data}}}"#);
            let m = bad_request(trigger(&body));
            assert!(m.contains(&format!("data must be a string, not {kind}")), "{m}");
        }
    }

    #[test]
    fn data_size_limit() {
        let limits = Limits::default();
        let body = |n: usize| format!(r#"{{"name":"e","channel":"c","data":"{}"}}"#, "x".repeat(n));
        assert!(trigger(&body(10 * 1024)).is_ok());
        // PHP's test sends 11 KB and expects 413 (spec §12.4).
        match trigger_limits(&body(11 * 1024), &limits) {
            Err(e @ ApiError::PayloadTooLarge(_)) => {
                assert_eq!(e.status(), 413);
                assert!(e.message().contains("content of this event"), "{}", e.message());
            }
            other => panic!("expected 413, got {other:?}"),
        }
        // The limit counts the decoded string: 10240 escaped quotes are
        // 20480 body bytes but 10240 data bytes.
        let escaped =
            format!(r#"{{"name":"e","channel":"c","data":"{}"}}"#, r#"\""#.repeat(10 * 1024));
        assert_eq!(trigger(&escaped).map(|t| t.data.len()), Ok(10 * 1024));
    }

    #[test]
    fn names_are_validated() {
        let m = bad_request(trigger(r#"{"name":"","channel":"c","data":"d"}"#));
        assert_eq!(m, "Event name must not be empty");
        let long = format!(r#"{{"name":"{}","channel":"c","data":"d"}}"#, "e".repeat(201));
        assert!(bad_request(trigger(&long)).contains("Event name too long"));
        let m = bad_request(trigger(r#"{"name":"e","channels":["ok","x y"],"data":"d"}"#));
        assert!(m.starts_with("Invalid channel name 'x y'"), "{m}");
        let m = bad_request(trigger(r#"{"name":"e","channel":"","data":"d"}"#));
        assert_eq!(m, "Channel name must not be empty");
        // The HTTP API accepts server-to-user channels (spec §4.2).
        let t = trigger(r##"{"name":"e","channel":"#server-to-user-7","data":"d"}"##);
        assert_eq!(t.map(|t| t.channels), Ok(vec!["#server-to-user-7".to_owned()]));
        // Wrong JSON types for names are syntax-level errors.
        assert!(bad_request(trigger(r#"{"name":5,"channel":"c","data":"d"}"#)).contains("JSON"));
    }

    #[test]
    fn channel_count_and_duplicates() {
        let list = |n: usize| {
            let names: Vec<String> = (0..n).map(|i| format!(r#""c{i}""#)).collect();
            format!(r#"{{"name":"e","channels":[{}],"data":"d"}}"#, names.join(","))
        };
        assert_eq!(trigger(&list(100)).map(|t| t.channels.len()), Ok(100));
        assert!(bad_request(trigger(&list(101))).contains("1 to 100"));
        assert!(bad_request(trigger(&list(0))).contains("1 to 100"));
        let t = trigger(r#"{"name":"e","channels":["b","a","b","c","a"],"data":"d"}"#);
        assert_eq!(t.map(|t| t.channels), Ok(vec!["b".into(), "a".into(), "c".into()]));
        let m = bad_request(trigger(r#"{"name":"e","channels":["a"],"channel":"a","data":"d"}"#));
        assert_eq!(m, "Give either channel or channels, not both");
    }

    #[test]
    fn encrypted_channel_must_be_alone() {
        let ok = trigger(r#"{"name":"e","channels":["private-encrypted-a"],"data":"d"}"#);
        assert!(ok.is_ok());
        // A duplicate of itself is still one channel.
        let dup = trigger(
            r#"{"name":"e","channels":["private-encrypted-a","private-encrypted-a"],"data":"d"}"#,
        );
        assert!(dup.is_ok());
        let m = bad_request(trigger(
            r#"{"name":"e","channels":["private-encrypted-a","public"],"data":"d"}"#,
        ));
        assert!(m.starts_with("Encrypted channels cannot"), "{m}");
    }

    #[test]
    fn socket_id_format() {
        for ok in ["1.2", "123456.7890123"] {
            let body = format!(r#"{{"name":"e","channel":"c","data":"d","socket_id":"{ok}"}}"#);
            assert!(trigger(&body).is_ok(), "{ok}");
        }
        for bad in ["", "1", "1.", ".1", "1.2.3", "a.1", "1.2 ", "-1.2", "1,2"] {
            let body = format!(r#"{{"name":"e","channel":"c","data":"d","socket_id":"{bad}"}}"#);
            assert!(bad_request(trigger(&body)).starts_with("Invalid socket_id"), "{bad}");
        }
    }

    #[test]
    fn unknown_info_attribute() {
        let m = bad_request(trigger(r#"{"name":"e","channel":"c","data":"d","info":"cache"}"#));
        assert!(m.starts_with("Unknown info attribute 'cache'"), "{m}");
    }

    #[test]
    fn invalid_json() {
        for body in ["", "{", "[]", "\"x\"", r#"{"name":"e",}"#, "\u{0}"] {
            let m = bad_request(trigger(body));
            assert!(m.starts_with("Invalid JSON body"), "{body:?}: {m}");
        }
    }

    #[test]
    fn repeated_keys_are_refused_at_any_depth_by_every_decoder() {
        let cases = [
            (
                r#"{"name":"e","channel":"c","data":"d","name":"f"}"#,
                r#"duplicate key "name" in the object at $"#,
            ),
            // Ignored fields are checked too: the policy is the document's.
            (
                r#"{"name":"e","channel":"c","data":"d","x":{"y":[{"z":1,"z":2}]}}"#,
                r#"duplicate key "z" in the object at $.x.y[0]"#,
            ),
        ];
        for (body, why) in cases {
            assert_eq!(bad_request(trigger(body)), format!("Invalid JSON body: {why}"));
        }
        let body = r#"{"batch":[{"name":"a","channel":"c","data":"1"},{"name":"b","channel":"c","channel":"d","data":"2"}]}"#;
        let expected = r#"Invalid JSON body: duplicate key "channel" in the object at $.batch[1]"#;
        assert_eq!(batch(body), Err(ApiError::BadRequest(expected.into())));
        // `data` is a string delivered as it is: what it holds is the app's.
        assert!(trigger(r#"{"name":"e","channel":"c","data":"{\"a\":1,\"a\":2}"}"#).is_ok());
    }

    #[test]
    fn first_error_wins() {
        // Bad name and oversized data: the name is reported.
        let body = format!(r#"{{"name":"","channel":"x y","data":"{}"}}"#, "x".repeat(20000));
        assert_eq!(bad_request(trigger(&body)), "Event name must not be empty");
    }

    #[test]
    fn batch_ok() {
        let b = batch(
            r#"{"batch":[{"name":"a","channel":"c1","data":"1"},
                         {"name":"b","channel":"presence-c2","data":"2","socket_id":"1.2","info":"user_count"}]}"#,
        );
        assert_eq!(
            b,
            Ok(vec![
                Trigger {
                    name: "a".into(),
                    channels: vec!["c1".into()],
                    data: "1".into(),
                    socket_id: None,
                    info: vec![],
                },
                Trigger {
                    name: "b".into(),
                    channels: vec!["presence-c2".into()],
                    data: "2".into(),
                    socket_id: Some("1.2".into()),
                    info: vec![InfoAttr::UserCount],
                },
            ])
        );
        assert_eq!(batch(r#"{"batch":[]}"#), Ok(vec![]));
    }

    #[test]
    fn batch_limits() {
        let events = |n: usize| {
            let e: Vec<String> =
                (0..n).map(|i| format!(r#"{{"name":"e","channel":"c{i}","data":"d"}}"#)).collect();
            format!(r#"{{"batch":[{}]}}"#, e.join(","))
        };
        assert_eq!(batch(&events(10)).map(|b| b.len()), Ok(10));
        match batch(&events(11)) {
            Err(ApiError::BadRequest(m)) => assert!(m.starts_with("Batch too large"), "{m}"),
            other => panic!("expected 400, got {other:?}"),
        }
        let big = format!(
            r#"{{"batch":[{{"name":"e","channel":"c","data":"d"}},{{"name":"e","channel":"c","data":"{}"}}]}}"#,
            "x".repeat(11 * 1024)
        );
        match batch(&big) {
            Err(e @ ApiError::PayloadTooLarge(_)) => {
                assert!(e.message().starts_with("batch[1]: "), "{}", e.message());
                assert!(e.message().contains("content of this event"));
            }
            other => panic!("expected 413, got {other:?}"),
        }
    }

    #[test]
    fn batch_errors() {
        let cases = [
            (r#"{}"#, "Missing required parameter: batch"),
            (
                r#"{"batch":[{"name":"e","data":"d"}]}"#,
                "batch[0]: Missing required parameter: channel",
            ),
            (
                r#"{"batch":[{"name":"e","channel":"c","data":"d"},{"name":"e","channels":["c"],"data":"d"}]}"#,
                "batch[1]: Batch events take a single channel, not channels",
            ),
            (
                r#"{"batch":[{"name":"e","channel":"c","data":{"x":1}}]}"#,
                "batch[0]: data must be a string, not an object: JSON-encode the payload before triggering",
            ),
        ];
        for (body, want) in cases {
            assert_eq!(batch(body), Err(ApiError::BadRequest(want.into())), "{body}");
        }
        assert!(matches!(batch(r#"{"batch":{}}"#), Err(ApiError::BadRequest(_))));
    }
}
