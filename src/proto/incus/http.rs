//! Incus's plain HTTP endpoints, sans-IO: `/lp` (long-poll, Incus spec
//! §5.4) and `/ping` (§5.5), with Incus's statuses and headers. The poll
//! itself is decided by the user's owner shard ([`IncusShard::start_poll`]);
//! the IO layer parks the request until the poll's id is listed by
//! [`IncusShard::take_completed`], then renders [`answer`].

use std::time::Instant;

use bytes::Bytes;

use super::{IncusShard, PollResult};
use crate::proto::http::{
    request::{Request, parse_query},
    response::{self, Response},
};

const CACHE_CONTROL: &str =
    "private, no-store, no-cache, must-revalidate, post-check=0, pre-check=0";

/// What a `/lp` request came to.
#[derive(Debug)]
pub enum LongPoll {
    /// Answered at once (no user, shutting down, the kill switch).
    Done(Response),
    /// Waiting for poll `id` on this shard's [`IncusShard`].
    Waiting(u64),
}

/// `/ping`, any method: `200 OK`, body `OK`.
pub fn ping() -> Response {
    Response::custom(200, Bytes::from_static(b"OK"), render_plain, false)
}

/// `/lp`, any method. `user`, `page` and `command` come from the query
/// string or a form body (the body wins, as with Go's `FormValue`).
pub fn long_poll(
    incus: &mut IncusShard,
    req: &Request,
    body: &[u8],
    draining: bool,
    now: Instant,
    now_unix: u64,
) -> LongPoll {
    if incus.longpoll_off() {
        return LongPoll::Done(Response::custom(503, Bytes::new(), render_long_poll, true));
    }
    let mut params = parse_query(req.query()).unwrap_or_default();
    let form = req
        .header("content-type")
        .is_some_and(|t| t.trim().starts_with("application/x-www-form-urlencoded"));
    if form && let Ok(text) = std::str::from_utf8(body) {
        params.extend(parse_query(text).unwrap_or_default());
    }
    // The last occurrence wins, so body fields beat the query string.
    let get = |name: &str| {
        params.iter().rev().find(|(k, _)| k == name).map(|(_, v)| v.as_str()).unwrap_or("")
    };
    let (user, page, command) = (get("user"), get("page"), get("command"));
    if user.is_empty() {
        // Incus's answer; incusjs reads an empty 200 as "nothing yet".
        return LongPoll::Done(reply(200, Bytes::new()));
    }
    if draining {
        return LongPoll::Done(reply(503, Bytes::new()));
    }
    let page = (!page.is_empty()).then_some(page);
    let command = (!command.is_empty()).then_some(command.as_bytes());
    incus.counters().incus.lp_connect.inc();
    LongPoll::Waiting(incus.start_poll(user, page, command, now, now_unix))
}

/// The response to a poll with this outcome; `None` (the owner never
/// answered in time) is a timeout too.
pub fn answer(result: Option<PollResult>) -> Response {
    match result {
        Some(PollResult::Message(body)) => reply(200, body),
        Some(PollResult::Timeout) | None => reply(204, Bytes::new()),
        Some(PollResult::Shutdown | PollResult::Full) => reply(503, Bytes::new()),
    }
}

fn reply(status: u16, body: Bytes) -> Response {
    Response::custom(status, body, render_long_poll, false)
}

/// `/ping`: `text/plain` exactly as given, no newline added.
fn render_plain(status: u16, body: &[u8], keep_alive: bool) -> Bytes {
    response::response(status, "text/plain; charset=utf-8", body, keep_alive)
}

/// `/lp`: JSON with the CORS and no-cache headers, `Connection` always said.
fn render_long_poll(status: u16, body: &[u8], keep_alive: bool) -> Bytes {
    let mut headers = vec![("Access-Control-Allow-Origin", "*")];
    // A 204 carries no Content-Type of its own; Incus sends it anyway.
    if status == 204 {
        headers.push(("Content-Type", "application/json"));
    }
    headers.push(("Cache-Control", CACHE_CONTROL));
    if keep_alive {
        headers.push(("Connection", "keep-alive"));
    }
    response::with_headers(status, &headers, "application/json", body, keep_alive)
}
