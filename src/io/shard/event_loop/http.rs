//! HTTP on a shard's sockets: requests read and routed (the Pusher API,
//! Incus's `/lp` and `/ping`, `/metrics`, pusher-js's HTTP transports under
//! `/pusher/app/`, served in `xhr`), responses queued, and the two
//! WebSocket upgrades (Pusher's `/app/{key}`, Incus's `/socket`).

use super::*;
use crate::proto::console;

impl ShardLoop {
    /// Serves the HTTP requests complete in the socket's input, until one
    /// must wait (for its answer, for its response to be written, or for
    /// more bytes).
    pub(super) fn serve_http(&mut self, key: u32, now: Instant) {
        let server = &self.config.server;
        let (max_head, max_body) = (server.max_header_bytes, server.max_body_bytes);
        // Bounded, so one pipelining client cannot hold the turn.
        for _ in 0..REQUESTS_PER_TURN {
            let Some(conn) = self.conns.get_mut(key as usize) else { return };
            if !matches!(conn.phase, Phase::Http) || conn.has_out() {
                return;
            }
            let parsed = match request::parse_head(&conn.inbuf, max_head) {
                Ok(parsed) => parsed,
                Err(e) => {
                    let reply = response::text(e.status(), &e.to_string(), false);
                    self.reply(key, reply, false);
                    return;
                }
            };
            let complete = parsed.filter(|(req, head_len)| {
                req.content_length > max_body || conn.inbuf.len() >= head_len + req.content_length
            });
            let Some((req, head_len)) = complete else {
                // Need more bytes: read them if there are any.
                if !conn.readable {
                    return;
                }
                if self.read_input(key, now) {
                    self.close(key, now);
                    return;
                }
                continue;
            };
            if req.content_length > max_body {
                let msg = format!("Request body larger than {max_body} bytes");
                self.reply(key, response::text(413, &msg, false), false);
                return;
            }
            self.dispatch(key, &req, head_len, head_len + req.content_length, now);
        }
        if let Some(conn) = self.conns.get(key as usize) {
            self.carry.push((key, conn.generation));
        }
    }

    /// Routes one complete request.
    pub(super) fn dispatch(
        &mut self,
        key: u32,
        req: &Request,
        head_len: usize,
        total: usize,
        now: Instant,
    ) {
        if req.path() == "/socket" {
            self.conns[key as usize].consumed(total, &mut self.spare_inbufs);
            self.upgrade_incus(key, req, now);
            return;
        }
        if req.path() == console::STREAM_PATH {
            self.conns[key as usize].consumed(head_len, &mut self.spare_inbufs);
            if self.config.server.console {
                self.upgrade_console(key, req, now);
            } else {
                self.reply(key, response::text(404, "Not found", false), false);
            }
            return;
        }
        if ws_handshake::is_upgrade(req) {
            self.conns[key as usize].consumed(head_len, &mut self.spare_inbufs);
            self.upgrade_pusher(key, req, now);
            return;
        }
        if self.serve_xhr(key, req, head_len, total, now) {
            return;
        }
        let draining = self.draining.is_some();
        let busy = self.core.refusing();
        let tls = self.conns[key as usize].link.is_tls();
        let outcome = match req.path() {
            "/ping" => Ok(incus::http::ping()),
            "/ready" => Ok(self.readiness(req)),
            "/metrics" if !tls && self.config.server.metrics => Ok(self.metrics_page(req)),
            console::PAGE_PATH if self.config.server.console => Ok(self.console_page(req)),
            "/lp" => {
                let body = &self.conns[key as usize].inbuf[head_len..total];
                match incus::http::long_poll(&mut self.incus, req, body, draining, now, unix_now())
                {
                    LongPoll::Done(resp) => Ok(resp),
                    LongPoll::Waiting(id) => Err(Phase::Poll { id, keep_alive: req.keep_alive }),
                }
            }
            _ => {
                let body = &mut self.conns[key as usize].inbuf[head_len..total];
                let call = Call { req, body, now, now_unix: unix_now(), busy };
                match api::handle(&mut self.core, call) {
                    Handled::Done(resp) => {
                        self.counters.http_response(resp.status);
                        Ok(resp)
                    }
                    Handled::Waiting(pending) => {
                        Err(Phase::Api { pending: Box::new(pending), keep_alive: req.keep_alive })
                    }
                }
            }
        };
        self.conns[key as usize].consumed(total, &mut self.spare_inbufs);
        match outcome {
            Ok(resp) => self.respond(key, &resp, req.keep_alive, now),
            Err(phase) => {
                let deadline = match &phase {
                    Phase::Poll { id, .. } => {
                        self.by_poll.insert(*id, key);
                        Some(now + self.config.incus.connection_timeout + OWNER_GRACE)
                    }
                    Phase::Api { pending, .. } => {
                        for id in pending.ids() {
                            self.by_query.insert(id, key);
                        }
                        None
                    }
                    _ => None,
                };
                self.conns[key as usize].phase = phase;
                self.set_phase_deadline(key, deadline);
            }
        }
    }

    /// `GET /ready`: 200 when this node should get traffic, 503 while it
    /// drains or while its configured Redis is not connected (a node
    /// without Redis would serve its own clients but miss the backends'
    /// events). `/health` stays the liveness check.
    pub(super) fn readiness(&self, req: &Request) -> Response {
        if !matches!(req.method, Method::Get | Method::Head) {
            return Response::text(405, "Method not allowed");
        }
        if self.draining.is_some() {
            return Response::text(503, "Draining");
        }
        if !self.metrics.redis_ready() {
            return Response::text(503, "Redis not connected");
        }
        Response::text(200, "Ready")
    }

    /// `GET /metrics`: every shard's counters, summed, as Prometheus text.
    /// Scrapes are not counted as API requests, so that a scrape reads the
    /// same numbers whether or not another scrape came first.
    pub(super) fn metrics_page(&self, req: &Request) -> Response {
        if req.method != Method::Get {
            return Response::text(405, "Method not allowed");
        }
        let text = prometheus::render(&self.metrics.snapshot());
        Response::typed(prometheus::CONTENT_TYPE, text)
    }

    /// Queues a response for the socket, keeping it open after when the
    /// request allows it and the server is not stopping.
    pub(super) fn respond(&mut self, key: u32, resp: &Response, keep_alive: bool, now: Instant) {
        let keep_alive = keep_alive && self.draining.is_none() && !resp.forces_close();
        self.reply(key, resp.render(keep_alive), keep_alive);
        if let Some(conn) = self.conns.get_mut(key as usize) {
            conn.phase = Phase::Http;
        }
        let idle = self.config.server.http_idle_timeout;
        self.set_phase_deadline(key, Some(now + idle));
    }

    /// Queues raw HTTP bytes; the socket closes after them unless
    /// `keep_alive`.
    pub(super) fn reply(&mut self, key: u32, bytes: Bytes, keep_alive: bool) {
        let Some(conn) = self.conns.get_mut(key as usize) else { return };
        conn.out.set(bytes);
        conn.close_after_write = !keep_alive;
        self.writes.push(key);
    }

    /// Incus's `/socket`: the HTTP checks of Incus spec §5.3, then the
    /// upgrade.
    pub(super) fn upgrade_incus(&mut self, key: u32, req: &Request, now: Instant) {
        if req.method != Method::Get {
            let keep_alive = req.keep_alive && self.draining.is_none();
            self.reply(key, response::text(405, "Method not allowed", keep_alive), keep_alive);
            return;
        }
        let Ok(accept) = ws_handshake::accept(req) else {
            self.reply(key, response::text(400, "Not a websocket handshake", false), false);
            return;
        };
        // Incus sockets count against `server.max_connections` like Pusher ones.
        if self.admission.admit_node().is_err() {
            self.counters.refused.inc();
            self.reply(key, response::text(503, "Over capacity", false), false);
            return;
        }
        let sk = self.incus.open(key, now);
        self.counters.incus.ws_connect.inc();
        if self.draining.is_some() {
            self.incus.close(sk, CloseCode::GOING_AWAY);
        }
        let conn = &mut self.conns[key as usize];
        conn.admitted = Admitted::Node;
        conn.out.set(accept);
        conn.phase = Phase::Incus { key: sk, decoder: Decoder::new() };
        self.writes.push(key);
        self.set_phase_deadline(key, None);
        // Bytes that came with the upgrade request are frames already.
        self.decode_frames(key, now);
    }

    /// Completes the WebSocket handshake and the Pusher one after it.
    pub(super) fn upgrade_pusher(&mut self, key: u32, req: &Request, now: Instant) {
        let accept = match ws_handshake::accept(req) {
            Ok(accept) => accept,
            Err(e) => {
                self.reply(key, e.response(), false);
                return;
            }
        };
        let tls = self.conns[key as usize].link.is_tls();
        let upgrade = handshake::Upgrade { path: req.path(), query: req.query(), tls };
        let admitted =
            handshake::check(&self.apps, upgrade, self.config.server.allow_missing_protocol)
                .and_then(
                    |app| if self.draining.is_some() { Err(CloseCode::RECONNECT) } else { Ok(app) },
                )
                .and_then(|app| self.admission.admit(app).map(|()| app));
        match admitted {
            Ok(app) => {
                // The 101 leaves with connection_established, in one write.
                let ck = self.core.open(key, app, now, Some(accept));
                let conn = &mut self.conns[key as usize];
                conn.admitted = Admitted::App(app);
                conn.phase = Phase::Pusher { key: ck, decoder: Decoder::new() };
                if conn.write_blocked
                    && let Some(outbox) = self.core.outbox(ck)
                {
                    outbox.set_writer_blocked(true);
                }
                self.set_phase_deadline(key, None);
                self.decode_frames(key, now);
            }
            Err(code) => {
                if code == CloseCode::OVER_CAPACITY {
                    self.counters.refused.inc();
                }
                // Spec §3.1: the reason goes first as a pusher:error, which
                // pusher-js maps through the same table as the close code.
                let mut bye = BytesMut::from(&accept[..]);
                bye.extend_from_slice(&messages::error(Some(code.0), code.reason()));
                bye.extend_from_slice(&codec::close_frame(code.0, code.reason()));
                let conn = &mut self.conns[key as usize];
                conn.out.set(bye.freeze());
                conn.phase = Phase::Finishing;
                self.writes.push(key);
                self.set_phase_deadline(key, None);
            }
        }
    }
}
