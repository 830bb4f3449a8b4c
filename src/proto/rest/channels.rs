//! Channel queries of the HTTP API (spec §12.4): `GET /apps/{id}/channels`,
//! `GET /apps/{id}/channels/{name}` and `GET /apps/{id}/channels/{name}/users`.
//!
//! This module checks the query parameters and shapes the answers; the
//! numbers come from every shard ([`crate::proto::pusher::shard::Shard::start_list`]
//! and friends). Decisions:
//! * An unknown `info` attribute is a 400 naming it, rather than being
//!   ignored: a typo would otherwise look like a missing feature.
//! * `subscription_count` is reported for non-presence channels only, as in
//!   trigger responses; presence channels count users (`user_count`).
//! * `cache` (cache channels only) answers `"cache":{"data":…,"ttl":…}`
//!   with the cached event's `data` string and its whole seconds left
//!   (rounded up), or `"cache":null` when nothing is cached. It is refused
//!   on `GET /apps/{id}/channels`: the cache lives on each channel's owner
//!   shard, and a listing would have to ask them all for every channel.

use std::time::Duration;

use super::error::ApiError;
use crate::{
    core::json::push_json_str,
    proto::{
        http::request::parse_query,
        msg::ChannelCounts,
        pusher::{channel, channel::ChannelKind, messages},
    },
};

/// The attributes a channel query asked for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Info {
    /// `user_count`: unique users of a presence channel.
    pub user_count: bool,
    /// `subscription_count`: connections subscribed to a non-presence channel.
    pub subscription_count: bool,
    /// `cache`: the cached event of a cache channel.
    pub cache: bool,
}

/// A validated `GET /apps/{id}/channels`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListQuery {
    /// `filter_by_prefix`, empty when absent.
    pub prefix: String,
    /// Requested attributes.
    pub info: Info,
}

/// Decoded query parameters other than the signing ones.
fn params(query: &str) -> Result<Vec<(String, String)>, ApiError> {
    let all = parse_query(query).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    Ok(all.into_iter().filter(|(k, _)| !k.starts_with("auth_") && k != "body_md5").collect())
}

fn parse_info(value: Option<&str>) -> Result<Info, ApiError> {
    let mut info = Info::default();
    for attr in value.unwrap_or("").split(',').map(str::trim).filter(|a| !a.is_empty()) {
        match attr {
            "user_count" => info.user_count = true,
            "subscription_count" => info.subscription_count = true,
            "cache" => info.cache = true,
            other => {
                let mut shown = other.to_owned();
                shown.truncate(64);
                return Err(ApiError::BadRequest(format!(
                    "Unknown info attribute: {shown} (expected user_count, subscription_count \
                     or cache)"
                )));
            }
        }
    }
    Ok(info)
}

fn param<'a>(params: &'a [(String, String)], name: &str) -> Option<&'a str> {
    params.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

/// Checks the query of `GET /apps/{id}/channels`: `user_count` needs
/// `filter_by_prefix=presence-…` (spec §12.4).
pub fn parse_list(query: &str) -> Result<ListQuery, ApiError> {
    let params = params(query)?;
    let prefix = param(&params, "filter_by_prefix").unwrap_or("").to_owned();
    let info = parse_info(param(&params, "info"))?;
    if info.cache {
        return Err(ApiError::BadRequest(
            "info=cache is only available for one channel, on /channels/{name}".into(),
        ));
    }
    if info.user_count && !prefix.starts_with("presence-") {
        return Err(ApiError::BadRequest(
            "info=user_count is only allowed with filter_by_prefix=presence-".into(),
        ));
    }
    Ok(ListQuery { prefix, info })
}

/// `{"channels":{"<name>":{…}}}` for the occupied channels; `{}` per channel
/// unless attributes were asked for.
pub fn list_json(query: &ListQuery, channels: &[(Box<str>, ChannelCounts)]) -> String {
    let mut out = Vec::with_capacity(16 + channels.len() * 32);
    out.extend_from_slice(b"{\"channels\":{");
    for (i, (name, counts)) in channels.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        push_json_str(&mut out, name);
        out.push(b':');
        let presence = channel::classify(name).kind == ChannelKind::Presence;
        push_attrs(&mut out, query.info, presence, counts, None, None);
    }
    out.extend_from_slice(b"}}");
    String::from_utf8(out).unwrap_or_default()
}

fn push_attrs(
    out: &mut Vec<u8>,
    info: Info,
    presence: bool,
    counts: &ChannelCounts,
    occupied: Option<bool>,
    cache: Option<&CacheAttr>,
) {
    let mut fields = Vec::new();
    if let Some(occupied) = occupied {
        fields.push(format!("\"occupied\":{occupied}"));
    }
    if presence && info.user_count {
        fields.push(format!("\"user_count\":{}", counts.users.unwrap_or(0)));
    }
    if !presence && info.subscription_count {
        fields.push(format!("\"subscription_count\":{}", counts.subscriptions));
    }
    if info.cache {
        let mut field = b"\"cache\":".to_vec();
        match cache {
            Some(c) => {
                field.extend_from_slice(b"{\"data\":");
                push_json_str(&mut field, &c.data);
                field.extend_from_slice(format!(",\"ttl\":{}}}", c.ttl_secs).as_bytes());
            }
            None => field.extend_from_slice(b"null"),
        }
        fields.push(String::from_utf8(field).unwrap_or_default());
    }
    out.push(b'{');
    out.extend_from_slice(fields.join(",").as_bytes());
    out.push(b'}');
}

/// Checks the channel name (already percent-decoded) and query of
/// `GET /apps/{id}/channels/{name}`: an attribute the channel's kind lacks
/// is a 400 (spec §12.4). Returns whether the channel is a presence channel.
pub fn parse_channel(name: &str, query: &str, max_chars: usize) -> Result<(bool, Info), ApiError> {
    let flags =
        channel::validate(name, max_chars).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let params = params(query)?;
    let info = parse_info(param(&params, "info"))?;
    let presence = flags.kind == ChannelKind::Presence;
    if info.user_count && !presence {
        return Err(ApiError::BadRequest(format!(
            "info=user_count is only available for presence channels, not {name}"
        )));
    }
    if info.cache && !flags.cache {
        return Err(ApiError::BadRequest(format!(
            "info=cache is only available for cache channels, not {name}"
        )));
    }
    if info.subscription_count && presence {
        return Err(ApiError::BadRequest(format!(
            "info=subscription_count is not available for presence channels ({name}); \
             use user_count"
        )));
    }
    Ok((presence, info))
}

/// What `info=cache` reports of a cached event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheAttr {
    /// The event's `data` string.
    pub data: String,
    /// Whole seconds until it expires, rounded up.
    pub ttl_secs: u64,
}

impl CacheAttr {
    /// From the owner's answer: the cached frame and the time it has left.
    pub fn from_cached(frame: &[u8], left: Duration) -> Option<Self> {
        let (_, data) = messages::channel_event_parts(frame)?;
        let ttl_secs = left.as_secs() + u64::from(left.subsec_nanos() > 0);
        Some(Self { data, ttl_secs })
    }
}

/// `{"occupied":bool,…}` for one channel.
pub fn channel_json(
    info: Info,
    presence: bool,
    counts: &ChannelCounts,
    cache: Option<&CacheAttr>,
) -> String {
    let mut out = Vec::with_capacity(64);
    push_attrs(&mut out, info, presence, counts, Some(counts.subscriptions > 0), cache);
    String::from_utf8(out).unwrap_or_default()
}

/// Checks `GET /apps/{id}/channels/{name}/users`: presence channels only.
pub fn parse_users(name: &str, max_chars: usize) -> Result<(), ApiError> {
    let flags =
        channel::validate(name, max_chars).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    if flags.kind != ChannelKind::Presence {
        return Err(ApiError::BadRequest(format!(
            "Users can only be listed for presence channels, not {name}"
        )));
    }
    Ok(())
}

/// `{"users":[{"id":"…"},…]}`.
pub fn users_json(users: &[Box<str>]) -> String {
    let mut out = Vec::with_capacity(16 + users.len() * 16);
    out.extend_from_slice(b"{\"users\":[");
    for (i, id) in users.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(b"{\"id\":");
        push_json_str(&mut out, id);
        out.push(b'}');
    }
    out.extend_from_slice(b"]}");
    String::from_utf8(out).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;

    fn parse(s: &str) -> Value {
        serde_json::from_str(s).unwrap_or(Value::Null)
    }

    fn counts(subscriptions: usize, users: Option<usize>) -> ChannelCounts {
        ChannelCounts { subscriptions, users }
    }

    #[test]
    fn list_query_rules() {
        let q = parse_list("auth_key=k&filter_by_prefix=presence-&info=user_count");
        assert_eq!(
            q,
            Ok(ListQuery {
                prefix: "presence-".into(),
                info: Info { user_count: true, ..Info::default() }
            })
        );
        assert!(matches!(parse_list("info=user_count"), Err(ApiError::BadRequest(_))));
        assert!(matches!(
            parse_list("filter_by_prefix=private-&info=user_count"),
            Err(ApiError::BadRequest(_))
        ));
        let q = parse_list("info=subscription_count").map(|q| q.info.subscription_count);
        assert_eq!(q, Ok(true));
        let err = parse_list("info=members").err().map(|e| e.to_string());
        assert_eq!(
            err.as_deref(),
            Some(
                "Unknown info attribute: members (expected user_count, subscription_count or \
                 cache)"
            )
        );
        assert_eq!(parse_list("").map(|q| q.prefix), Ok(String::new()));
        assert_eq!(parse_list("filter_by_prefix=a%2Db").map(|q| q.prefix), Ok("a-b".into()));
    }

    #[test]
    fn list_shapes() {
        let q = parse_list("").expect("empty query is valid");
        assert_eq!(list_json(&q, &[]), r#"{"channels":{}}"#);
        let chans = [("a".into(), counts(2, None)), ("presence-p".into(), counts(3, Some(1)))];
        assert_eq!(parse(&list_json(&q, &chans)), json!({"channels":{"a":{},"presence-p":{}}}));
        let q = ListQuery {
            prefix: String::new(),
            info: Info { user_count: true, subscription_count: true, cache: false },
        };
        assert_eq!(
            parse(&list_json(&q, &chans)),
            json!({"channels":{"a":{"subscription_count":2},"presence-p":{"user_count":1}}})
        );
    }

    #[test]
    fn channel_query_rules_and_shapes() {
        assert_eq!(parse_channel("news", "", 200), Ok((false, Info::default())));
        assert!(matches!(
            parse_channel("news", "info=user_count", 200),
            Err(ApiError::BadRequest(_))
        ));
        assert!(matches!(
            parse_channel("presence-x", "info=subscription_count", 200),
            Err(ApiError::BadRequest(_))
        ));
        assert!(matches!(parse_channel("news", "info=cache", 200), Err(ApiError::BadRequest(_))));
        assert!(matches!(parse_list("info=cache"), Err(ApiError::BadRequest(_))));
        assert!(matches!(parse_channel("bad name", "", 200), Err(ApiError::BadRequest(_))));
        let (presence, info) =
            parse_channel("presence-x", "info=user_count", 200).expect("valid query");
        assert!(presence);
        assert_eq!(
            parse(&channel_json(info, presence, &counts(4, Some(2)), None)),
            json!({"occupied":true,"user_count":2})
        );
        let sub = Info { subscription_count: true, ..Info::default() };
        assert_eq!(
            parse(&channel_json(sub, false, &counts(0, None), None)),
            json!({"occupied":false,"subscription_count":0})
        );
        assert_eq!(
            channel_json(Info::default(), false, &counts(1, None), None),
            r#"{"occupied":true}"#
        );
    }

    #[test]
    fn cache_info_reports_data_and_ttl_or_null() {
        let (_, info) = parse_channel("private-cache-x", "info=cache", 200).expect("cache channel");
        assert!(info.cache);
        let (_, info) =
            parse_channel("presence-cache-x", "info=user_count,cache", 200).expect("both");
        assert!(info.cache && info.user_count);
        let frame = messages::channel_event("ev", "cache-x", "{\"a\":1}");
        let attr = CacheAttr::from_cached(&frame, Duration::from_millis(1500));
        assert_eq!(attr, Some(CacheAttr { data: "{\"a\":1}".into(), ttl_secs: 2 }));
        let info = Info { cache: true, ..Info::default() };
        assert_eq!(
            parse(&channel_json(info, false, &counts(1, None), attr.as_ref())),
            json!({"occupied":true,"cache":{"data":"{\"a\":1}","ttl":2}})
        );
        assert_eq!(
            parse(&channel_json(info, false, &counts(0, None), None)),
            json!({"occupied":false,"cache":null})
        );
    }

    #[test]
    fn users_rules_and_shape() {
        assert_eq!(parse_users("presence-x", 200), Ok(()));
        assert!(matches!(parse_users("private-x", 200), Err(ApiError::BadRequest(_))));
        assert_eq!(users_json(&[]), r#"{"users":[]}"#);
        assert_eq!(
            parse(&users_json(&["1".into(), "a\"b".into()])),
            json!({"users":[{"id":"1"},{"id":"a\"b"}]})
        );
    }
}
