//! Incus's plain HTTP endpoints on a shard: `/lp` (long-poll, Incus spec
//! §5.4) and `/ping` (§5.5), with Incus's statuses and headers. The poll
//! itself is decided by the user's owner shard ([`crate::proto::incus`]); this
//! side only waits for the answer.

use std::{
    future::poll_fn,
    pin::pin,
    task::Poll,
    time::{Duration, Instant},
};

use bytes::Bytes;

use super::{Either, ShardCtx, api::Response, first};
use crate::proto::{
    http::{
        request::{Request, parse_query},
        response,
    },
    incus::PollResult,
};

/// Extra wait, beyond `connection_timeout`, before a poll whose owner
/// never answered gives up on its own: only a wedged shard gets here.
const OWNER_GRACE: Duration = Duration::from_secs(10);

const CACHE_CONTROL: &str =
    "private, no-store, no-cache, must-revalidate, post-check=0, pre-check=0";

/// How a response is rendered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Style {
    /// `/lp`: JSON with the CORS and no-cache headers, `Connection` always said.
    LongPoll,
    /// `/lp` refused by the kill switch: the connection closes after it.
    LongPollClose,
    /// `/ping`: `text/plain` exactly as given, no newline added.
    Plain,
}

/// Renders an Incus response.
pub(crate) fn render(style: Style, status: u16, body: &[u8], keep_alive: bool) -> Bytes {
    match style {
        Style::Plain => response::response(status, "text/plain; charset=utf-8", body, keep_alive),
        Style::LongPoll | Style::LongPollClose => {
            let keep_alive = keep_alive && style == Style::LongPoll;
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
    }
}

/// `/ping`, any method: `200 OK`, body `OK`.
pub(crate) fn ping() -> Response {
    Response::incus(200, Bytes::from_static(b"OK"), Style::Plain)
}

/// `/lp`, any method. `user`, `page` and `command` come from the query
/// string or a form body (the body wins, as with Go's `FormValue`).
pub(crate) async fn long_poll(
    ctx: &ShardCtx,
    req: &Request,
    body: &[u8],
    now_unix: u64,
) -> Response {
    let reply = |status: u16, body: Bytes| Response::incus(status, body, Style::LongPoll);
    if ctx.incus.borrow().longpoll_off() {
        return Response::incus(503, Bytes::new(), Style::LongPollClose);
    }
    let mut params = parse_query(&req.query).unwrap_or_default();
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
        return reply(200, Bytes::new());
    }
    if ctx.draining() {
        return reply(503, Bytes::new());
    }
    let page = (!page.is_empty()).then_some(page);
    let command = (!command.is_empty()).then_some(command.as_bytes());
    ctx.counters.incus.lp_connect.inc();
    // Counted however the poll ends, a client that left included.
    let _ended = LongPollEnded(ctx);
    let id =
        ctx.with_incus(|incus| incus.start_poll(user, page, command, Instant::now(), now_unix));
    let guard = PollGuard { ctx, id };
    let limit = ctx.config.incus.connection_timeout + OWNER_GRACE;
    let outcome = {
        let answer = pin!(poll_fn(|cx| match ctx.incus.borrow_mut().poll_result(id, cx.waker()) {
            Some(result) => Poll::Ready(result),
            None => Poll::Pending,
        }));
        let timeout = pin!(monoio::time::sleep(limit));
        first(answer, timeout).await
    };
    drop(guard);
    match outcome {
        Either::Left(PollResult::Message(body)) => {
            ctx.counters.incus.write.inc();
            reply(200, body)
        }
        Either::Left(PollResult::Timeout) | Either::Right(()) => reply(204, Bytes::new()),
        Either::Left(PollResult::Shutdown | PollResult::Full) => reply(503, Bytes::new()),
    }
}

struct LongPollEnded<'a>(&'a ShardCtx);

impl Drop for LongPollEnded<'_> {
    fn drop(&mut self) {
        self.0.counters.incus.lp_disconnect.inc();
    }
}

/// Withdraws the poll from its owner if the request ends without an
/// answer (a no-op once answered).
struct PollGuard<'a> {
    ctx: &'a ShardCtx,
    id: u64,
}

impl Drop for PollGuard<'_> {
    fn drop(&mut self) {
        if self.ctx.incus.try_borrow_mut().is_ok() {
            self.ctx.with_incus(|incus| incus.cancel_poll(self.id, Instant::now()));
        }
    }
}
