//! The HTTP API as served by a shard: routing, and the glue between the
//! sans-IO request checks ([`crate::proto::rest`]) and the shard state.

use std::{
    future::poll_fn,
    task::{Poll, Waker},
    time::Instant,
};

use bytes::Bytes;

use super::ShardCtx;
use crate::{
    core::{AppIdx, SocketId},
    proto::{
        http::{
            request::{Method, Request, percent_decode},
            response,
        },
        msg::ChannelCounts,
        pusher::{channel, channel::ChannelKind, shard::Shard},
        rest::{
            channels as rest_channels,
            error::ApiError,
            events,
            events::{InfoAttr, Limits, Trigger},
            signature,
            signature::SignedRequest,
        },
    },
};

/// Messages waiting in this shard's outlets beyond which publishes are
/// refused with 503: another shard is that far behind, and accepting more
/// would only grow its backlog.
pub(crate) const MAX_MESH_BACKLOG: usize = 64 * 1024;

/// A response waiting for its keep-alive decision.
pub(crate) struct Response {
    status: u16,
    json: bool,
    body: Bytes,
    /// Rendered by Incus's rules instead ([`super::incus_api`]).
    incus: Option<super::incus_api::Style>,
    /// A content type of its own (`/metrics`), instead of JSON or text.
    content_type: Option<&'static str>,
}

impl Response {
    fn json(body: impl Into<Bytes>) -> Self {
        Self { status: 200, json: true, body: body.into(), incus: None, content_type: None }
    }

    fn text(status: u16, body: &str) -> Self {
        let body = Bytes::copy_from_slice(body.as_bytes());
        Self { status, json: false, body, incus: None, content_type: None }
    }

    fn typed(content_type: &'static str, body: impl Into<Bytes>) -> Self {
        let body = body.into();
        Self { status: 200, json: false, body, incus: None, content_type: Some(content_type) }
    }

    /// A response rendered the way Incus renders it.
    pub(crate) fn incus(status: u16, body: Bytes, style: super::incus_api::Style) -> Self {
        Self { status, json: false, body, incus: Some(style), content_type: None }
    }

    /// Whether the connection must close after this response.
    pub(crate) fn forces_close(&self) -> bool {
        self.incus == Some(super::incus_api::Style::LongPollClose)
    }

    pub(crate) fn into_bytes(self, keep_alive: bool) -> Bytes {
        if let Some(style) = self.incus {
            super::incus_api::render(style, self.status, &self.body, keep_alive)
        } else if let Some(content_type) = self.content_type {
            response::response(self.status, content_type, &self.body, keep_alive)
        } else if self.json {
            response::json(self.status, &self.body, keep_alive)
        } else {
            let text = String::from_utf8_lossy(&self.body);
            response::text(self.status, &text, keep_alive)
        }
    }
}

impl From<ApiError> for Response {
    fn from(e: ApiError) -> Self {
        Response::text(e.status(), e.message())
    }
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
        return match rest.split('/').collect::<Vec<_>>()[..] {
            [user, "terminate_connections"] if !user.is_empty() => {
                Some(Route::TerminateUserByKey(user))
            }
            _ => None,
        };
    }
    let rest = path.strip_prefix("/apps/")?;
    let (app_id, endpoint) = rest.split_once('/')?;
    match endpoint.split('/').collect::<Vec<_>>()[..] {
        ["events"] => Some(Route::Events(app_id)),
        ["batch_events"] => Some(Route::BatchEvents(app_id)),
        ["channels"] => Some(Route::Channels(app_id)),
        ["channels", name] if !name.is_empty() => Some(Route::Channel(app_id, name)),
        ["channels", name, "users"] if !name.is_empty() => Some(Route::ChannelUsers(app_id, name)),
        ["users", user, "terminate_connections"] if !user.is_empty() => {
            Some(Route::TerminateUser(app_id, user))
        }
        _ => None,
    }
}

/// Handles one HTTP API request. `body` is mutable because the JSON parser
/// works in place.
pub(crate) async fn handle(
    ctx: &ShardCtx,
    req: &Request,
    body: &mut [u8],
    tls: bool,
    now_unix: u64,
) -> Response {
    // Incus's paths, exact as its router matched them; none starts with /app.
    match req.path.as_str() {
        "/lp" => return super::incus_api::long_poll(ctx, req, body, now_unix).await,
        "/ping" => return super::incus_api::ping(),
        "/metrics" if !tls && ctx.config.server.metrics => return metrics(ctx, req),
        _ => {}
    }
    let response = pusher_api(ctx, req, body, now_unix).await;
    ctx.counters.http_response(response.status);
    response
}

/// `GET /metrics`: every shard's counters, summed, as Prometheus text.
/// Scrapes are not counted as API requests, so that a scrape reads the
/// same numbers whether or not another scrape came first.
fn metrics(ctx: &ShardCtx, req: &Request) -> Response {
    if req.method != Method::Get {
        return Response::text(405, "Method not allowed");
    }
    let text = crate::io::metrics::prometheus::render(&ctx.metrics.snapshot());
    Response::typed(crate::io::metrics::prometheus::CONTENT_TYPE, text)
}

async fn pusher_api(ctx: &ShardCtx, req: &Request, body: &mut [u8], now_unix: u64) -> Response {
    let Some(route) = route(&req.path) else {
        return Response::text(404, "Not found");
    };
    let result = match (route, &req.method) {
        (Route::Health, Method::Get) => Ok(Response::text(200, "OK")),
        (Route::Events(app), Method::Post) => publish(ctx, req, body, app, false, now_unix).await,
        (Route::BatchEvents(app), Method::Post) => {
            publish(ctx, req, body, app, true, now_unix).await
        }
        (Route::Channels(app), Method::Get) => list_channels(ctx, req, body, app, now_unix).await,
        (Route::Channel(app, name), Method::Get) => {
            channel_info(ctx, req, body, app, name, now_unix).await
        }
        (Route::ChannelUsers(app, name), Method::Get) => {
            channel_users(ctx, req, body, app, name, now_unix).await
        }
        (Route::TerminateUser(app, user), Method::Post) => {
            terminate_user(ctx, req, body, app, user, now_unix)
        }
        (Route::TerminateUserByKey(user), Method::Post) => match app_of_key(ctx, req) {
            Some(app) => terminate_user(ctx, req, body, &app, user, now_unix),
            None => Err(ApiError::NotFound("Unknown auth_key".into())),
        },
        _ => Err(ApiError::MethodNotAllowed),
    };
    result.unwrap_or_else(Response::from)
}

async fn publish(
    ctx: &ShardCtx,
    req: &Request,
    body: &mut [u8],
    app_id: &str,
    batch: bool,
    now_unix: u64,
) -> Result<Response, ApiError> {
    let idx = ctx
        .apps
        .by_id(app_id)
        .ok_or_else(|| ApiError::NotFound(format!("Unknown app {app_id}")))?;
    let app = ctx.apps.get(idx);
    let signed = SignedRequest { method: "POST", path: &req.path, query: &req.query, body };
    signature::verify(&signed, &app.key, &app.secret, now_unix)?;
    if !app.enabled {
        return Err(ApiError::Forbidden("Application disabled".into()));
    }
    let limits = Limits {
        max_event_bytes: app.max_event_bytes,
        max_channels: 100,
        max_batch: 10,
        max_name_chars: app.max_event_name_chars,
        max_channel_name_chars: app.max_channel_name_chars,
    };
    let triggers = if batch {
        events::parse_batch(body, &limits)?
    } else {
        vec![events::parse_trigger(body, &limits)?]
    };
    if ctx.mesh_backlog() > MAX_MESH_BACKLOG {
        return Err(ApiError::Unavailable("Server busy, retry later".into()));
    }
    let now = Instant::now();
    ctx.with_core(|core| {
        for t in &triggers {
            let exclude = t.socket_id.as_deref().and_then(|s| s.parse::<SocketId>().ok());
            for ch in &t.channels {
                core.publish(idx, ch, &t.name, &t.data, exclude, now);
            }
        }
    });
    if triggers.iter().all(|t| t.info.is_empty()) {
        return Ok(Response::json(&b"{}"[..]));
    }
    let mut infos = Vec::with_capacity(triggers.len());
    for t in &triggers {
        infos.push(if t.info.is_empty() { String::from("{}") } else { info(ctx, idx, t).await });
    }
    let body = if batch {
        format!("{{\"batch\":[{}]}}", infos.join(","))
    } else {
        infos.pop().unwrap_or_default()
    };
    Ok(Response::json(body))
}

/// Finds the app named in the path and checks the request's signature.
fn authenticate(
    ctx: &ShardCtx,
    req: &Request,
    body: &[u8],
    method: &str,
    app_id: &str,
    now_unix: u64,
) -> Result<AppIdx, ApiError> {
    let idx = ctx
        .apps
        .by_id(app_id)
        .ok_or_else(|| ApiError::NotFound(format!("Unknown app {app_id}")))?;
    let app = ctx.apps.get(idx);
    let signed = SignedRequest { method, path: &req.path, query: &req.query, body };
    signature::verify(&signed, &app.key, &app.secret, now_unix)?;
    if !app.enabled {
        return Err(ApiError::Forbidden("Application disabled".into()));
    }
    Ok(idx)
}

/// The id of the app whose key is the request's `auth_key`, for the routes
/// that name no app; the signature is still checked against that app.
fn app_of_key(ctx: &ShardCtx, req: &Request) -> Option<String> {
    let params = crate::proto::http::request::parse_query(&req.query).ok()?;
    let key = params.iter().find(|(k, _)| k == "auth_key").map(|(_, v)| v.as_str())?;
    let idx = ctx.apps.by_key(key)?;
    Some(ctx.apps.get(idx).id.clone())
}

/// A path segment as the client meant it (`%23server-to-user-1` is `#…`).
fn segment(raw: &str) -> Result<String, ApiError> {
    percent_decode(raw).map_err(|e| ApiError::BadRequest(e.to_string()))
}

/// `GET /apps/{id}/channels` (spec §12.4).
async fn list_channels(
    ctx: &ShardCtx,
    req: &Request,
    body: &[u8],
    app_id: &str,
    now_unix: u64,
) -> Result<Response, ApiError> {
    let idx = authenticate(ctx, req, body, "GET", app_id, now_unix)?;
    let query = rest_channels::parse_list(&req.query)?;
    let id = ctx.with_core(|core| core.start_list(idx, &query.prefix));
    let list = gather(ctx, id, |core, id, waker| core.poll_list(id, waker)).await;
    Ok(Response::json(rest_channels::list_json(&query, &list)))
}

/// `GET /apps/{id}/channels/{name}` (spec §12.4).
async fn channel_info(
    ctx: &ShardCtx,
    req: &Request,
    body: &[u8],
    app_id: &str,
    name: &str,
    now_unix: u64,
) -> Result<Response, ApiError> {
    let idx = authenticate(ctx, req, body, "GET", app_id, now_unix)?;
    let name = segment(name)?;
    let max = ctx.apps.get(idx).max_channel_name_chars;
    let (presence, info) = rest_channels::parse_channel(&name, &req.query, max)?;
    let counts = query(ctx, idx, &[&name]).await;
    let counts = counts.first().copied().unwrap_or_default();
    let cache = if info.cache {
        let id = ctx.with_core(|core| core.start_cache(idx, &name, Instant::now()));
        let cached = gather(ctx, id, |core, id, waker| core.poll_cache(id, waker)).await;
        cached.and_then(|(frame, left)| rest_channels::CacheAttr::from_cached(&frame, left))
    } else {
        None
    };
    Ok(Response::json(rest_channels::channel_json(info, presence, &counts, cache.as_ref())))
}

/// `GET /apps/{id}/channels/{name}/users` (spec §12.4).
async fn channel_users(
    ctx: &ShardCtx,
    req: &Request,
    body: &[u8],
    app_id: &str,
    name: &str,
    now_unix: u64,
) -> Result<Response, ApiError> {
    let idx = authenticate(ctx, req, body, "GET", app_id, now_unix)?;
    let name = segment(name)?;
    rest_channels::parse_users(&name, ctx.apps.get(idx).max_channel_name_chars)?;
    let id = ctx.with_core(|core| core.start_users(idx, &name));
    let users = gather(ctx, id, |core, id, waker| core.poll_users(id, waker)).await;
    Ok(Response::json(rest_channels::users_json(&users)))
}

/// `POST /apps/{id}/users/{user_id}/terminate_connections` (spec §10.5):
/// every shard closes the user's signed-in connections.
fn terminate_user(
    ctx: &ShardCtx,
    req: &Request,
    body: &[u8],
    app_id: &str,
    user: &str,
    now_unix: u64,
) -> Result<Response, ApiError> {
    let idx = authenticate(ctx, req, body, "POST", app_id, now_unix)?;
    let user = segment(user)?;
    ctx.with_core(|core| core.terminate_user(idx, &user));
    Ok(Response::json(&b"{}"[..]))
}

/// `{"channels":{…}}` for one trigger's `info` (spec §12.4): `user_count`
/// for presence channels, `subscription_count` for the others.
async fn info(ctx: &ShardCtx, app: AppIdx, t: &Trigger) -> String {
    let names: Vec<&str> = t.channels.iter().map(String::as_str).collect();
    let counts = query(ctx, app, &names).await;
    let mut out = String::from("{\"channels\":{");
    for (i, (name, counts)) in names.iter().zip(counts).enumerate() {
        if i > 0 {
            out.push(',');
        }
        let presence = channel::classify(name).kind == ChannelKind::Presence;
        let mut fields = Vec::new();
        if presence && t.info.contains(&InfoAttr::UserCount) {
            fields.push(format!("\"user_count\":{}", counts.users.unwrap_or(0)));
        }
        if !presence && t.info.contains(&InfoAttr::SubscriptionCount) {
            fields.push(format!("\"subscription_count\":{}", counts.subscriptions));
        }
        out.push_str(&serde_json::to_string(name).unwrap_or_default());
        out.push_str(":{");
        out.push_str(&fields.join(","));
        out.push('}');
    }
    out.push_str("}}");
    out
}

/// Node-wide counts for `channels`, gathered from every shard.
async fn query(ctx: &ShardCtx, app: AppIdx, channels: &[&str]) -> Vec<ChannelCounts> {
    let id = ctx.with_core(|core| core.start_query(app, channels));
    gather(ctx, id, |core, id, waker| core.poll_query(id, waker)).await
}

/// Waits for the answer to query `id`, started on this shard's core.
async fn gather<T>(
    ctx: &ShardCtx,
    id: u64,
    poll: impl Fn(&mut Shard, u64, &Waker) -> Option<T>,
) -> T {
    let guard = QueryGuard { ctx, id };
    let answer = poll_fn(|cx| match poll(&mut ctx.core.borrow_mut(), id, cx.waker()) {
        Some(answer) => Poll::Ready(answer),
        None => Poll::Pending,
    })
    .await;
    std::mem::forget(guard);
    answer
}

/// Forgets the query if the request is dropped while waiting.
struct QueryGuard<'a> {
    ctx: &'a ShardCtx,
    id: u64,
}

impl Drop for QueryGuard<'_> {
    fn drop(&mut self) {
        if let Ok(mut core) = self.ctx.core.try_borrow_mut() {
            core.cancel_query(self.id);
        }
    }
}
