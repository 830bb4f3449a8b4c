//! The Pusher HTTP API (spec §12), sans-IO: one request in, a response out
//! at once or a [`Pending`] answer that waits for node-wide numbers.
//!
//! Publishing happens on the shard that got the request
//! ([`Shard::publish`]). Channel counts, channel lists and presence members
//! need every shard (or a channel's owner): the handler starts a query on
//! the shard ([`Shard::start_query`] and friends) and returns a [`Pending`]
//! that names the query ids. The IO layer parks the connection until the
//! shard lists those ids as completed ([`Shard::take_completed`]), then
//! calls [`Pending::finish`] for the response.

use std::time::Instant;

use crate::{
    core::{AppIdx, SocketId},
    proto::{
        http::{
            request::{Method, Request, parse_query, percent_decode},
            response::Response,
        },
        msg::ChannelCounts,
        pusher::{
            channel::{self, ChannelKind},
            shard::{Answer, Shard},
        },
        rest::{
            channels::{self as rest_channels, CacheAttr, Info, ListQuery},
            error::ApiError,
            events::{self, InfoAttr, Limits},
            signature::{self, SignedRequest},
        },
    },
};

/// Most channels one trigger may name (spec §12.4).
const MAX_CHANNELS: usize = 100;
/// Most events in one `batch_events` call (spec §12.4).
const MAX_BATCH: usize = 10;

/// One request for the API, with what the handler needs from outside.
pub struct Call<'a> {
    /// The request head.
    pub req: &'a Request,
    /// The body; mutable because the JSON parser works in place.
    pub body: &'a mut [u8],
    /// Now, for what publishing schedules (cache TTLs, webhook delays).
    pub now: Instant,
    /// Now in Unix seconds, for the signature's timestamp window.
    pub now_unix: u64,
    /// The shard's rings to the other shards are too far behind: publishes
    /// are refused with 503 rather than queued without bound.
    pub busy: bool,
}

/// What a request came to.
#[derive(Debug)]
pub enum Handled {
    /// The response, ready.
    Done(Response),
    /// Waiting for the queries it names.
    Waiting(Pending),
}

/// A request waiting for node-wide numbers.
#[derive(Debug)]
pub struct Pending {
    first: u64,
    second: Option<u64>,
    then: Then,
}

/// How the answers become the response.
#[derive(Debug)]
enum Then {
    /// A publish with `info`: one query over every listed channel of every
    /// event that asked, in order.
    Info { batch: bool, wanted: Vec<Wanted> },
    /// `GET /channels`.
    List(ListQuery),
    /// `GET /channels/{name}`: counts first, the cached event second.
    Channel { info: Info, presence: bool },
    /// `GET /channels/{name}/users`.
    Users,
    /// A publish without `info`, answered once its events are sent.
    Sent,
}

/// One event's `info`: its channels and the attributes asked for.
#[derive(Debug)]
struct Wanted {
    channels: Vec<String>,
    info: Vec<InfoAttr>,
}

impl Pending {
    /// The query ids this request waits for.
    pub fn ids(&self) -> impl Iterator<Item = u64> {
        std::iter::once(self.first).chain(self.second)
    }

    /// The response once every query has its answers; `None` until then.
    pub fn finish(&self, shard: &mut Shard) -> Option<Response> {
        if !self.ids().all(|id| shard.is_answered(id)) {
            return None;
        }
        let first = shard.take_answer(self.first);
        let second = self.second.and_then(|id| shard.take_answer(id));
        Some(match (&self.then, first) {
            (Then::Info { batch, wanted }, Some(Answer::Counts(counts))) => {
                Response::json(info_json(*batch, wanted, &counts))
            }
            (Then::List(query), Some(Answer::List(list))) => {
                Response::json(rest_channels::list_json(query, &list))
            }
            (Then::Channel { info, presence }, Some(Answer::Counts(counts))) => {
                let counts = counts.first().copied().unwrap_or_default();
                let cache = match second {
                    Some(Answer::Cache(cached)) => {
                        cached.and_then(|(frame, left)| CacheAttr::from_cached(&frame, left))
                    }
                    _ => None,
                };
                Response::json(rest_channels::channel_json(
                    *info,
                    *presence,
                    &counts,
                    cache.as_ref(),
                ))
            }
            (Then::Sent, Some(_)) => Response::json(&b"{}"[..]),
            (Then::Users, Some(Answer::Users(users))) => {
                Response::json(rest_channels::users_json(&users))
            }
            // A query answered with another kind cannot happen; an empty
            // 500 is better than a panic if it ever does.
            _ => Response::text(500, "Internal error"),
        })
    }

    /// Forgets the queries of a request whose client went away.
    pub fn cancel(&self, shard: &mut Shard) {
        for id in self.ids() {
            shard.cancel_query(id);
        }
    }
}

/// Handles one Pusher API request (anything that is not a WebSocket
/// upgrade, Incus's paths or `/metrics`).
pub fn handle(shard: &mut Shard, call: Call<'_>) -> Handled {
    let Some(route) = route(call.req.path()) else {
        return Handled::Done(Response::text(404, "Not found"));
    };
    let handled = match (route, call.req.method) {
        (Route::Health, Method::Get) => Ok(Handled::Done(Response::text(200, "OK"))),
        (Route::Events(app), Method::Post) => publish(shard, call, app, false),
        (Route::BatchEvents(app), Method::Post) => publish(shard, call, app, true),
        (Route::Channels(app), Method::Get) => list_channels(shard, &call, app),
        (Route::Channel(app, name), Method::Get) => channel_info(shard, &call, app, name),
        (Route::ChannelUsers(app, name), Method::Get) => channel_users(shard, &call, app, name),
        (Route::TerminateUser(app, user), Method::Post) => terminate_user(shard, &call, app, user),
        (Route::TerminateUserByKey(user), Method::Post) => match app_of_key(shard, call.req) {
            Some(app) => terminate_user(shard, &call, &app, user),
            None => Err(ApiError::NotFound("Unknown auth_key".into())),
        },
        _ => Err(ApiError::MethodNotAllowed),
    };
    handled.unwrap_or_else(|e| Handled::Done(Response::text(e.status(), e.message())))
}

enum Route<'a> {
    Events(&'a str),
    BatchEvents(&'a str),
    Channels(&'a str),
    Channel(&'a str, &'a str),
    ChannelUsers(&'a str, &'a str),
    TerminateUser(&'a str, &'a str),
    /// `POST /users/{user_id}/terminate_connections`, without the app: the
    /// path pusher-http-python builds (spec §12.4). The app is the one whose
    /// key signed the request.
    TerminateUserByKey(&'a str),
    Health,
}

fn route(path: &str) -> Option<Route<'_>> {
    if path == "/health" || path == "/" {
        return Some(Route::Health);
    }
    if let Some(rest) = path.strip_prefix("/users/") {
        let mut parts = rest.split('/');
        return match (parts.next(), parts.next(), parts.next()) {
            (Some(user), Some("terminate_connections"), None) if !user.is_empty() => {
                Some(Route::TerminateUserByKey(user))
            }
            _ => None,
        };
    }
    let rest = path.strip_prefix("/apps/")?;
    let (app_id, endpoint) = rest.split_once('/')?;
    let mut parts = endpoint.split('/');
    match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some("events"), None, None, None) => Some(Route::Events(app_id)),
        (Some("batch_events"), None, None, None) => Some(Route::BatchEvents(app_id)),
        (Some("channels"), None, None, None) => Some(Route::Channels(app_id)),
        (Some("channels"), Some(name), None, None) if !name.is_empty() => {
            Some(Route::Channel(app_id, name))
        }
        (Some("channels"), Some(name), Some("users"), None) if !name.is_empty() => {
            Some(Route::ChannelUsers(app_id, name))
        }
        (Some("users"), Some(user), Some("terminate_connections"), None) if !user.is_empty() => {
            Some(Route::TerminateUser(app_id, user))
        }
        _ => None,
    }
}

fn publish(
    shard: &mut Shard,
    call: Call<'_>,
    app_id: &str,
    batch: bool,
) -> Result<Handled, ApiError> {
    let idx = authenticate(shard, call.req, call.body, "POST", app_id, call.now_unix)?;
    let app = shard.apps().get(idx);
    let limits = Limits {
        max_event_bytes: app.max_event_bytes,
        max_channels: MAX_CHANNELS,
        max_batch: MAX_BATCH,
        max_name_chars: app.max_event_name_chars,
        max_channel_name_chars: app.max_channel_name_chars,
    };
    let triggers = if batch {
        events::parse_batch(call.body, &limits)?
    } else {
        vec![events::parse_trigger(call.body, &limits)?]
    };
    if call.busy {
        return Err(ApiError::Unavailable("Server busy, retry later".into()));
    }
    for t in &triggers {
        let exclude = t.socket_id.as_deref().and_then(|s| s.parse::<SocketId>().ok());
        for ch in &t.channels {
            shard.publish(idx, ch, &t.name, &t.data, exclude, call.now);
        }
    }
    if triggers.iter().all(|t| t.info.is_empty()) {
        // In a cluster the answer waits until the events are with Redis: a
        // publisher's next request, to any node, then comes after them.
        return Ok(match shard.start_sent(idx) {
            Some(first) => Handled::Waiting(Pending { first, second: None, then: Then::Sent }),
            None => Handled::Done(Response::json(&b"{}"[..])),
        });
    }
    let wanted: Vec<Wanted> = triggers
        .into_iter()
        .map(|t| Wanted {
            channels: if t.info.is_empty() { Vec::new() } else { t.channels },
            info: t.info,
        })
        .collect();
    let names: Vec<&str> =
        wanted.iter().flat_map(|w| w.channels.iter().map(String::as_str)).collect();
    let first = shard.start_query(idx, &names);
    Ok(Handled::Waiting(Pending { first, second: None, then: Then::Info { batch, wanted } }))
}

/// The `info` answer of a publish (spec §12.4): for `events`, a
/// `{"channels":{…}}` object over the unique channels; for
/// `batch_events`, `{"batch":[…]}` with one attribute object per event,
/// index-aligned with the request (`{}` for an event without `info`).
/// `user_count` only for presence channels, `subscription_count` only for
/// the others.
fn info_json(batch: bool, wanted: &[Wanted], counts: &[ChannelCounts]) -> String {
    let mut counts = counts.iter();
    let mut out = String::from(if batch { "{\"batch\":[" } else { "{\"channels\":{" });
    let mut seen: Vec<&str> = Vec::new();
    for (i, w) in wanted.iter().enumerate() {
        if batch && i > 0 {
            out.push(',');
        }
        if batch && w.channels.is_empty() {
            out.push_str("{}");
        }
        for name in &w.channels {
            let c = counts.next().copied().unwrap_or_default();
            let attrs = attributes(name, &w.info, &c);
            if batch {
                out.push_str(&attrs);
                // A batch event names one channel; its attributes are the entry.
                continue;
            }
            if seen.contains(&name.as_str()) {
                continue;
            }
            if !seen.is_empty() {
                out.push(',');
            }
            seen.push(name);
            out.push_str(&serde_json::to_string(name).unwrap_or_default());
            out.push(':');
            out.push_str(&attrs);
        }
    }
    out.push_str(if batch { "]}" } else { "}}" });
    out
}

fn attributes(name: &str, info: &[InfoAttr], counts: &ChannelCounts) -> String {
    let presence = channel::classify(name).kind == ChannelKind::Presence;
    let mut fields = Vec::new();
    if presence && info.contains(&InfoAttr::UserCount) {
        fields.push(format!("\"user_count\":{}", counts.users.unwrap_or(0)));
    }
    if !presence && info.contains(&InfoAttr::SubscriptionCount) {
        fields.push(format!("\"subscription_count\":{}", counts.subscriptions));
    }
    format!("{{{}}}", fields.join(","))
}

/// Finds the app named in the path and checks the request's signature.
fn authenticate(
    shard: &Shard,
    req: &Request,
    body: &[u8],
    method: &str,
    app_id: &str,
    now_unix: u64,
) -> Result<AppIdx, ApiError> {
    let apps = shard.apps();
    let idx =
        apps.by_id(app_id).ok_or_else(|| ApiError::NotFound(format!("Unknown app {app_id}")))?;
    let app = apps.get(idx);
    let signed = SignedRequest { method, path: req.path(), query: req.query(), body };
    signature::verify(&signed, &app.key, &app.secret, now_unix)?;
    if !app.enabled {
        return Err(ApiError::Forbidden("Application disabled".into()));
    }
    Ok(idx)
}

/// The id of the app whose key is the request's `auth_key`, for the routes
/// that name no app; the signature is still checked against that app.
fn app_of_key(shard: &Shard, req: &Request) -> Option<String> {
    let params = parse_query(req.query()).ok()?;
    let key = params.iter().find(|(k, _)| k == "auth_key").map(|(_, v)| v.as_str())?;
    let apps = shard.apps();
    let idx = apps.by_key(key)?;
    Some(apps.get(idx).id.clone())
}

/// A path segment as the client meant it (`%23server-to-user-1` is `#…`).
fn segment(raw: &str) -> Result<String, ApiError> {
    percent_decode(raw).map_err(|e| ApiError::BadRequest(e.to_string()))
}

/// `GET /apps/{id}/channels` (spec §12.4).
fn list_channels(shard: &mut Shard, call: &Call<'_>, app_id: &str) -> Result<Handled, ApiError> {
    let idx = authenticate(shard, call.req, call.body, "GET", app_id, call.now_unix)?;
    let query = rest_channels::parse_list(call.req.query())?;
    let first = shard.start_list(idx, &query.prefix);
    Ok(Handled::Waiting(Pending { first, second: None, then: Then::List(query) }))
}

/// `GET /apps/{id}/channels/{name}` (spec §12.4).
fn channel_info(
    shard: &mut Shard,
    call: &Call<'_>,
    app_id: &str,
    name: &str,
) -> Result<Handled, ApiError> {
    let idx = authenticate(shard, call.req, call.body, "GET", app_id, call.now_unix)?;
    let name = segment(name)?;
    let max = shard.apps().get(idx).max_channel_name_chars;
    let (presence, info) = rest_channels::parse_channel(&name, call.req.query(), max)?;
    let first = shard.start_query(idx, &[&name]);
    let second = info.cache.then(|| shard.start_cache(idx, &name, call.now));
    Ok(Handled::Waiting(Pending { first, second, then: Then::Channel { info, presence } }))
}

/// `GET /apps/{id}/channels/{name}/users` (spec §12.4).
fn channel_users(
    shard: &mut Shard,
    call: &Call<'_>,
    app_id: &str,
    name: &str,
) -> Result<Handled, ApiError> {
    let idx = authenticate(shard, call.req, call.body, "GET", app_id, call.now_unix)?;
    let name = segment(name)?;
    rest_channels::parse_users(&name, shard.apps().get(idx).max_channel_name_chars)?;
    let first = shard.start_users(idx, &name);
    Ok(Handled::Waiting(Pending { first, second: None, then: Then::Users }))
}

/// `POST /apps/{id}/users/{user_id}/terminate_connections` (spec §10.5):
/// every shard closes the user's signed-in connections.
fn terminate_user(
    shard: &mut Shard,
    call: &Call<'_>,
    app_id: &str,
    user: &str,
) -> Result<Handled, ApiError> {
    let idx = authenticate(shard, call.req, call.body, "POST", app_id, call.now_unix)?;
    let user = segment(user)?;
    shard.terminate_user(idx, &user);
    Ok(Handled::Done(Response::json(&b"{}"[..])))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(subscriptions: usize, users: Option<usize>) -> ChannelCounts {
        ChannelCounts { subscriptions, users }
    }

    #[test]
    fn routes_are_exact() {
        assert!(matches!(route("/apps/1/events"), Some(Route::Events("1"))));
        assert!(matches!(route("/apps/1/channels/a/users"), Some(Route::ChannelUsers("1", "a"))));
        assert!(matches!(
            route("/users/u/terminate_connections"),
            Some(Route::TerminateUserByKey("u"))
        ));
        assert!(route("/apps/1/events/x").is_none());
        assert!(route("/apps/1/channels//users").is_none());
        assert!(route("/users/u/terminate_connections/x").is_none());
    }

    #[test]
    fn events_info_covers_each_unique_channel() {
        let wanted = vec![Wanted {
            channels: vec!["news".into(), "presence-r".into(), "news".into()],
            info: vec![InfoAttr::UserCount, InfoAttr::SubscriptionCount],
        }];
        let json =
            info_json(false, &wanted, &[counts(6, None), counts(3, Some(2)), counts(6, None)]);
        assert_eq!(
            json,
            r#"{"channels":{"news":{"subscription_count":6},"presence-r":{"user_count":2}}}"#
        );
    }

    #[test]
    fn batch_info_is_index_aligned_attribute_objects() {
        let wanted = vec![
            Wanted { channels: vec!["news".into()], info: vec![InfoAttr::SubscriptionCount] },
            Wanted { channels: Vec::new(), info: Vec::new() },
            Wanted { channels: vec!["presence-r".into()], info: vec![InfoAttr::UserCount] },
        ];
        let json = info_json(true, &wanted, &[counts(6, None), counts(1, Some(1))]);
        assert_eq!(json, r#"{"batch":[{"subscription_count":6},{},{"user_count":1}]}"#);
    }
}
