//! The Incus `/socket` endpoint on a connection task: the HTTP checks of
//! Incus spec §5.3, the upgrade, then Incus frames both ways until the
//! socket closes. The same readiness-only loop as the Pusher WebSocket
//! (nothing in flight is ever cancelled), around [`IncusShard`] instead of
//! the Pusher shard state.

use std::{future::poll_fn, pin::pin, rc::Rc, task::Poll};

use monoio::net::TcpStream;

use super::{Conn, Flush, Read, unix_now};
use crate::{
    http::{
        request::{Method, Request},
        response,
    },
    incus::{IncusShard, SockKey},
    protocol::CloseCode,
    runtime::shard::ShardCtx,
    ws::{
        codec::{self, Decoder, WsEvent},
        handshake as ws_handshake,
    },
};

/// The path Incus clients open.
pub(super) const PATH: &str = "/socket";

/// Forgets the socket however the task ends.
struct Registration {
    ctx: Rc<ShardCtx>,
    key: SockKey,
}

impl Drop for Registration {
    #[allow(clippy::disallowed_methods)]
    fn drop(&mut self) {
        let now = std::time::Instant::now();
        self.ctx.with_incus(|incus| incus.remove(self.key, now));
        self.ctx.admission.release_node();
        self.ctx.counters.incus.ws_disconnect.inc();
    }
}

/// Serves a request for [`PATH`]. Returns true when the connection goes on
/// with its next HTTP request (after a 405), false when it is finished.
#[allow(clippy::disallowed_methods)]
pub(super) async fn serve(conn: &mut Conn, stream: &TcpStream, req: &Request) -> bool {
    if req.method != Method::Get {
        let keep_alive = req.keep_alive && !conn.ctx.draining();
        let reply = response::text(405, "Method not allowed", keep_alive);
        return conn.write_all(stream, reply).await.is_ok() && keep_alive;
    }
    let Ok(accept) = ws_handshake::accept(req) else {
        let reply = response::text(400, "Not a websocket handshake", false);
        let _ = conn.write_all(stream, reply).await;
        return false;
    };
    // Incus sockets count against `server.max_connections` like Pusher ones.
    if conn.ctx.admission.admit_node().is_err() {
        let reply = response::text(503, "Over capacity", false);
        let _ = conn.write_all(stream, reply).await;
        return false;
    }
    if conn.write_all(stream, accept).await.is_err() {
        conn.ctx.admission.release_node();
        return false;
    }
    let ctx = Rc::clone(&conn.ctx);
    let key = ctx.with_incus(|incus| incus.open(std::time::Instant::now()));
    ctx.counters.incus.ws_connect.inc();
    let registration = Registration { ctx: Rc::clone(&ctx), key };
    if ctx.draining() {
        ctx.with_incus(|incus| incus.close(key, CloseCode::GOING_AWAY));
    }
    let mut decoder = Decoder::new(ctx.config.server.max_message_bytes);
    // Bytes that came with the upgrade request are frames already.
    let used = handle_frames(&ctx, key, &mut decoder, &mut conn.inbuf);
    conn.consumed(used);
    let mut readable = pin!(stream.readable(false));
    // Boxed and made only when a write blocks (rare), as in the Pusher
    // loop: inline, this future would cost every idle socket 104 bytes.
    let mut writable = None;
    let mut peer_gone = false;
    let mut close_deadline = None;
    loop {
        let write_blocked = match flush(conn, key) {
            Ok(Flush::Blocked) => true,
            Ok(Flush::Idle) => false,
            Ok(Flush::CloseSent) => break,
            Err(_) => {
                peer_gone = true;
                break;
            }
        };
        // A peer that stopped reading gets a bounded time to take our close.
        if write_blocked && close_deadline.is_none() && ctx.with_incus(|i| i.closing(key)) {
            close_deadline = Some(Box::pin(monoio::time::sleep(super::CLOSE_LINGER)));
        }
        enum Wake {
            Readable(std::io::Result<()>),
            Writable(std::io::Result<()>),
            Outbox,
            GiveUp,
        }
        let wake = poll_fn(|cx| {
            if let Poll::Ready(r) = readable.as_mut().poll(cx) {
                return Poll::Ready(Wake::Readable(r));
            }
            if let Some(deadline) = close_deadline.as_mut()
                && deadline.as_mut().poll(cx).is_ready()
            {
                return Poll::Ready(Wake::GiveUp);
            }
            let mut incus = ctx.incus.borrow_mut();
            if write_blocked {
                let w = writable.get_or_insert_with(|| Box::pin(stream.writable(false)));
                if let Poll::Ready(r) = w.as_mut().poll(cx) {
                    return Poll::Ready(Wake::Writable(r));
                }
                if close_deadline.is_none() && incus.closing(key) {
                    return Poll::Ready(Wake::Outbox);
                }
            }
            let Some(outbox) = incus.outbox(key) else { return Poll::Ready(Wake::Outbox) };
            if !write_blocked && (!outbox.is_empty() || outbox.closing().is_some()) {
                return Poll::Ready(Wake::Outbox);
            }
            outbox.register(cx.waker());
            Poll::Pending
        })
        .await;
        match wake {
            Wake::Readable(r) => {
                readable.set(stream.readable(false));
                if r.is_err() {
                    peer_gone = true;
                    break;
                }
                match conn.read_some() {
                    Ok(Read::Data) => {
                        let used = handle_frames(&ctx, key, &mut decoder, &mut conn.inbuf);
                        conn.consumed(used);
                    }
                    Ok(Read::Idle) => {}
                    Ok(Read::Eof) | Err(_) => {
                        peer_gone = true;
                        break;
                    }
                }
            }
            Wake::Writable(r) => {
                writable = None;
                if r.is_err() {
                    peer_gone = true;
                    break;
                }
            }
            // Written on the next turn, so one turn's messages share a
            // writev (see ShardCtx::next_turn).
            Wake::Outbox => conn.ctx.next_turn().await,
            Wake::GiveUp => {
                peer_gone = true;
                break;
            }
        }
    }
    if !peer_gone {
        Box::pin(conn.linger(stream)).await;
    }
    drop(registration);
    false
}

/// Writes the outbox until it is empty or the socket pushes back.
fn flush(conn: &mut Conn, key: SockKey) -> std::io::Result<Flush> {
    let mut incus = conn.ctx.incus.borrow_mut();
    let Some(outbox) = incus.outbox(key) else { return Ok(Flush::CloseSent) };
    loop {
        if outbox.is_empty() {
            if !conn.link.flush(conn.fd)? {
                return Ok(Flush::Blocked);
            }
            return Ok(if outbox.closing().is_some() { Flush::CloseSent } else { Flush::Idle });
        }
        let n = conn.link.write(conn.fd, outbox.frames())?;
        if n == 0 {
            return Ok(Flush::Blocked);
        }
        outbox.consume(n);
    }
}

/// Decodes and handles every complete frame at the front of `buf`; returns
/// the bytes used. A framing error queues its close and ends decoding.
#[allow(clippy::disallowed_methods)]
fn handle_frames(ctx: &ShardCtx, key: SockKey, decoder: &mut Decoder, buf: &mut [u8]) -> usize {
    let now = std::time::Instant::now();
    let now_unix = unix_now();
    let mut used = 0;
    loop {
        match decoder.decode(&mut buf[used..]) {
            Ok(None) => return used,
            Ok(Some((event, n))) => {
                used += n;
                match event {
                    WsEvent::Text(text) | WsEvent::Binary(text) => {
                        ctx.with_incus(|incus| incus.handle_frame(key, text, now, now_unix));
                    }
                    WsEvent::Ping(payload) => {
                        let pong = codec::pong_frame(payload);
                        ctx.with_incus(|incus| incus.send_raw(key, pong));
                    }
                    WsEvent::Pong => {}
                    WsEvent::Close(code) => {
                        let code = code.map_or(CloseCode::NORMAL, CloseCode);
                        let code = if code.is_close_code() { code } else { CloseCode::NORMAL };
                        ctx.with_incus(|incus: &mut IncusShard| incus.close(key, code));
                        return used;
                    }
                }
            }
            Err(e) => {
                ctx.with_incus(|incus| incus.close(key, CloseCode(e.close_code())));
                return buf.len();
            }
        }
    }
}
