//! pusher-js's HTTP fallback transports on a shard's sockets
//! ([`crate::proto::pusher::xhr`]): requests routed to the session's owner
//! shard (the socket itself moves there, over the rings), sessions opened
//! as Pusher connections of the shard's state, their frames carried out by
//! the streaming response or poll attached, `xhr_send` bodies handed to the
//! state as client messages, and the sessions' expiry and heartbeats.

use super::*;
use crate::io::shard::conn::Handoff;
use crate::proto::{
    msg::Adoption,
    pusher::xhr::{self, Due, Kind, Receiver, Target, XhrError},
};

/// An answer with the transports' headers (CORS, no caching).
fn render(status: u16, body: &[u8], keep_alive: bool) -> Bytes {
    response::with_headers(status, xhr::HEADERS, xhr::CONTENT_TYPE, body, keep_alive)
}

/// An error with the transports' headers, so that the page's script can
/// read it.
fn render_error(status: u16, body: &[u8], keep_alive: bool) -> Bytes {
    response::with_headers(status, xhr::HEADERS, "text/plain; charset=utf-8", body, keep_alive)
}

fn render_preflight(status: u16, body: &[u8], keep_alive: bool) -> Bytes {
    response::with_headers(status, xhr::PREFLIGHT_HEADERS, "text/plain", body, keep_alive)
}

fn frames(body: Vec<u8>) -> Response {
    Response::custom(200, body.into(), render, false)
}

fn error(e: &XhrError) -> Response {
    Response::custom(e.status(), format!("{e}\n").into(), render_error, false)
}

impl ShardLoop {
    /// Serves a request on the transports' paths; false when the path is
    /// not theirs. The request is complete in the socket's input.
    pub(super) fn serve_xhr(
        &mut self,
        key: u32,
        req: &Request,
        head_len: usize,
        total: usize,
        now: Instant,
    ) -> bool {
        let Some(target) = xhr::route(xhr::DEFAULT_PATH, req.path()) else { return false };
        let target = match target {
            // A CORS preflight, answered on any shard.
            Ok(_) if req.method == Method::Options => {
                self.conns[key as usize].consumed(total, &mut self.spare_inbufs);
                let resp = Response::custom(204, Bytes::new(), render_preflight, false);
                self.respond(key, &resp, req.keep_alive, now);
                return true;
            }
            Ok(_) if req.method != Method::Post => Err(XhrError::Method),
            other => other,
        };
        let target = match target {
            Ok(target) => target,
            Err(e) => {
                self.conns[key as usize].consumed(total, &mut self.spare_inbufs);
                self.respond(key, &error(&e), req.keep_alive, now);
                return true;
            }
        };
        let owner = xhr::owner(target.base, self.shards);
        if owner != self.id {
            self.hand_over(key, owner, now);
            return true;
        }
        match target.kind {
            Kind::Send => {
                let sent = xhr::parse_send(&self.conns[key as usize].inbuf[head_len..total]);
                self.conns[key as usize].consumed(total, &mut self.spare_inbufs);
                let resp = match self.xhr_send(&target, sent, now) {
                    Ok(()) => Response::custom(204, Bytes::new(), render, false),
                    Err(e) => error(&e),
                };
                self.respond(key, &resp, req.keep_alive, now);
            }
            Kind::Streaming | Kind::Polling => {
                self.conns[key as usize].consumed(total, &mut self.spare_inbufs);
                self.xhr_receive(key, req, &target, now);
            }
        }
        true
    }

    /// Moves the socket to the shard that owns the session its request
    /// names; the request, still unread in its input, is served there.
    fn hand_over(&mut self, key: u32, owner: usize, now: Instant) {
        if self.links.outlets.get(owner).is_none_or(Option::is_none) {
            self.respond(key, &Response::text(503, "No such shard"), false, now);
            return;
        }
        let conn = self.conns.remove(key as usize);
        if conn.armed.is_some() {
            self.timers.disarmed();
        }
        self.poller.remove(conn.fd());
        let handoff = Handoff { stream: conn.stream, link: conn.link, inbuf: conn.inbuf };
        if let Some(outlet) = self.links.outlets[owner].as_mut() {
            outlet.push(ShardMsg::Adopt(Adoption(Box::new(handoff))));
        }
    }

    /// Takes a socket another shard handed over, and serves the request
    /// waiting in its input.
    pub(super) fn adopt(&mut self, adoption: Adoption, now: Instant) {
        let Ok(handoff) = adoption.0.downcast::<Handoff>() else { return };
        let Handoff { stream, link, inbuf } = *handoff;
        self.next_generation = self.next_generation.wrapping_add(1);
        let generation = self.next_generation;
        let entry = self.conns.vacant_entry();
        let key = entry.key() as u32;
        if let Err(e) = self.poller.add(stream.as_raw_fd(), token(key, generation)) {
            tracing::warn!("cannot watch a handed-over connection: {e}");
            self.admission.release_socket();
            return;
        }
        let mut conn = Conn::new(stream, generation, link);
        conn.inbuf = inbuf;
        // Bytes may have come since the other shard's last read; the new
        // set reports only what comes after, so look.
        conn.readable = true;
        entry.insert(conn);
        let idle = self.config.server.http_idle_timeout;
        self.set_phase_deadline(key, Some(now + idle));
        // Its input was read on the other shard, whose word on it came
        // through a ring; what may have caused it through another is read
        // first.
        self.catch_up_rings(now);
        self.serve_http(key, now);
    }

    /// `xhr_send`: each message to the session's connection, as a
    /// WebSocket's text frames would go.
    fn xhr_send(
        &mut self,
        target: &Target<'_>,
        sent: Result<Vec<String>, XhrError>,
        now: Instant,
    ) -> Result<(), XhrError> {
        let slot = self.xhr.find(target.base).ok_or(XhrError::UnknownSession)?;
        let messages = sent?;
        let ck = self.xhr.get(slot).ok_or(XhrError::UnknownSession)?.conn;
        let max = self.config.server.max_message_bytes;
        if messages.iter().any(|m| m.len() > max) {
            // As a WebSocket message too large: the session closes (1009).
            self.core.close(ck, CloseCode::WS_MESSAGE_TOO_BIG);
            return Ok(());
        }
        self.core.heard(ck, now);
        for message in &messages {
            self.core.handle_text(ck, message.as_bytes(), now);
        }
        Ok(())
    }

    /// `xhr_streaming` or `xhr`: opens the session if it is new, and
    /// attaches the request to carry its frames.
    fn xhr_receive(&mut self, key: u32, req: &Request, target: &Target<'_>, now: Instant) {
        let streaming = target.kind == Kind::Streaming;
        let (slot, open) = match self.xhr.find(target.base) {
            Some(slot) => (slot, false),
            None => match self.open_session(key, req, target, now) {
                Ok(slot) => (slot, true),
                Err(code) => {
                    // As over a WebSocket (spec §3.1): the session opens,
                    // says why in a pusher:error, and closes with the code.
                    let mut body = xhr::OPEN.to_vec();
                    let error = messages::error(Some(code.0), code.reason());
                    let close = codec::close_frame(code.0, code.reason());
                    xhr::encode([&error[..], &close[..]], &mut body);
                    self.respond(key, &frames(body), false, now);
                    return;
                }
            },
        };
        let generation = self.conns[key as usize].generation;
        let receiver = Receiver { socket: key, generation, streaming };
        if let Some(old) = self.xhr.attach(slot, receiver, now) {
            self.end_receiver(old, now);
        }
        let conn = &mut self.conns[key as usize];
        conn.phase = Phase::Xhr { slot, streaming, open, sent: 0, keep_alive: req.keep_alive };
        if streaming {
            conn.out.set(xhr::streaming_head().into());
        }
        self.set_phase_deadline(key, None);
        self.writes.push(key);
    }

    /// A new session: the app and protocol checks of a WebSocket
    /// handshake, the node's limits, then a connection in the Pusher state.
    fn open_session(
        &mut self,
        key: u32,
        req: &Request,
        target: &Target<'_>,
        now: Instant,
    ) -> Result<u32, CloseCode> {
        let tls = self.conns[key as usize].link.is_tls();
        let upgrade = handshake::Upgrade { path: target.app_path, query: req.query(), tls };
        let app = handshake::check(&self.apps, upgrade, self.config.server.allow_missing_protocol)?;
        if self.draining.is_some() {
            return Err(CloseCode::RECONNECT);
        }
        self.admission.admit_http_session(app).inspect_err(|code| {
            if *code == CloseCode::OVER_CAPACITY {
                self.counters.refused.inc();
            }
        })?;
        let slot = self.xhr.next_slot();
        let ck = self.core.open(xhr::TOKEN | slot, app, now, None);
        // A session's queue is emptied only by its client's polls, not by
        // the shard's writes: one that fills up is a slow client's, always.
        if let Some(outbox) = self.core.outbox(ck) {
            outbox.set_writer_blocked(true);
        }
        let inserted = self.xhr.insert(target.base, app, ck, now);
        self.counters.http_sessions_opened.inc();
        debug_assert_eq!(inserted, slot);
        Ok(inserted)
    }

    /// Ends a receiver a newer request of its session replaced: pusher-js
    /// opens one only after giving up the other, so its socket is closed.
    fn end_receiver(&mut self, old: Receiver, now: Instant) {
        if self.conns.get(old.socket as usize).is_some_and(|c| c.generation == old.generation) {
            self.close(old.socket, now);
        }
    }

    /// Forgets a session: the Pusher connection leaves everything it held,
    /// the node's counts give its room back.
    pub(super) fn remove_session(&mut self, slot: u32, now: Instant) {
        if let Some(session) = self.xhr.remove(slot) {
            self.core.set_now(now);
            self.core.remove(session.conn);
            self.admission.release_http_session(session.app);
            self.counters.http_sessions_closed.inc();
        }
    }

    /// The sockets to write for outbox `token` ([`xhr::TOKEN`] and up):
    /// the session's receiver, if one is attached.
    pub(super) fn receiver_socket(&self, token: u32) -> Option<u32> {
        let receiver = self.xhr.get(token - xhr::TOKEN)?.receiver()?;
        let conn = self.conns.get(receiver.socket as usize)?;
        (conn.generation == receiver.generation).then_some(receiver.socket)
    }

    /// Writes a receiver: what it has, then the session's frames (a poll
    /// takes them as its answer, a stream as one more chunk).
    pub(super) fn write_xhr(&mut self, key: u32, now: Instant) {
        loop {
            let Some(conn) = self.conns.get_mut(key as usize) else { return };
            let outcome = if conn.has_out() { conn.write_out() } else { Ok((0, Written::Done)) };
            match outcome {
                Err(_) => return self.close(key, now),
                Ok((progress, Written::Blocked)) => {
                    conn.write_blocked = true;
                    if progress > 0 || conn.stalled_since.is_none() {
                        conn.stalled_since = Some(Tick::of(now));
                    }
                    return self.rearm(key);
                }
                Ok((_, Written::Done)) => conn.stalled_since = None,
            }
            let Phase::Xhr { slot, streaming, open, sent, keep_alive } = conn.phase else {
                // The stream ended with the session's close.
                return self.written(key, now);
            };
            if sent > xhr::STREAM_LIMIT {
                // pusher-js lets this stream go and opens the next.
                return self.rearm(key);
            }
            let generation = conn.generation;
            let mut body = Vec::new();
            if open {
                body.extend_from_slice(xhr::OPEN);
            }
            let closed = self.pull(slot, &mut body);
            if body.is_empty() {
                return self.rearm(key);
            }
            let sent = sent + body.len();
            self.conns[key as usize].phase =
                Phase::Xhr { slot, streaming, open: false, sent, keep_alive };
            self.xhr.sent(slot, now);
            if !streaming {
                self.xhr.detach(slot, key, generation, now);
                if closed {
                    self.remove_session(slot, now);
                }
                return self.respond(key, &frames(body), keep_alive, now);
            }
            let mut out = Vec::with_capacity(body.len() + 16);
            xhr::chunk(&body, &mut out);
            let conn = &mut self.conns[key as usize];
            if closed {
                out.extend_from_slice(xhr::LAST_CHUNK);
                conn.phase = Phase::Http;
                conn.close_after_write = true;
                self.xhr.detach(slot, key, generation, now);
                self.remove_session(slot, now);
            }
            self.conns[key as usize].out.set(out.into());
        }
    }

    /// Moves the session's queued frames into `body` as lines; true when
    /// they ended with the session's close.
    fn pull(&mut self, slot: u32, body: &mut Vec<u8>) -> bool {
        let Some(session) = self.xhr.get(slot) else { return false };
        let (ck, app) = (session.conn, session.app);
        let Some(outbox) = self.core.outbox(ck) else { return false };
        outbox.unlist();
        let encoded = xhr::encode(outbox.frames().map(|f| &f[..]), body);
        let consumed = outbox.consume(encoded.consumed);
        if consumed.deliveries > 0 {
            let counters = self.counters.app(app as usize);
            counters.messages_out.add(consumed.deliveries);
            counters.bytes_out.add(consumed.delivered_bytes);
        }
        encoded.closed.is_some()
    }

    /// The sessions' clock: expiry of those whose client went away, and
    /// heartbeats for silent receivers.
    pub(super) fn xhr_tick(&mut self, now: Instant) {
        if self.xhr.is_empty() {
            return;
        }
        let mut due = Vec::new();
        self.xhr.tick(now, self.config.server.http_session_timeout, |d| due.push(d));
        for d in due {
            match d {
                Due::Expired(slot) => {
                    self.counters.http_sessions_expired.inc();
                    self.remove_session(slot, now);
                }
                Due::Heartbeat(slot, receiver) => self.heartbeat(slot, receiver, now),
            }
        }
    }

    fn heartbeat(&mut self, slot: u32, receiver: Receiver, now: Instant) {
        let key = receiver.socket;
        let Some(conn) = self.conns.get_mut(key as usize) else { return };
        if conn.generation != receiver.generation {
            return;
        }
        let busy = conn.has_out();
        let Phase::Xhr { streaming, keep_alive, ref mut sent, .. } = conn.phase else { return };
        if streaming {
            // A spent stream waits for its replacement (no byte may follow).
            if !busy && *sent <= xhr::STREAM_LIMIT {
                *sent += xhr::HEARTBEAT_FRAME.len();
                let mut out = Vec::new();
                xhr::chunk(xhr::HEARTBEAT_FRAME, &mut out);
                conn.out.set(out.into());
                self.writes.push(key);
            }
        } else {
            self.xhr.detach(slot, key, receiver.generation, now);
            self.respond(key, &frames(xhr::HEARTBEAT_FRAME.to_vec()), keep_alive, now);
        }
    }
}
