//! The Incus `/socket` endpoint on a connection task: the HTTP checks of
//! Incus spec §5.3, the upgrade, then Incus frames both ways until the
//! socket closes. The same readiness-only loop as the Pusher WebSocket
//! (nothing in flight is ever cancelled), around [`IncusShard`] instead of
//! the Pusher shard state.

use std::{rc::Rc, time::Instant};

use bytes::Bytes;
use monoio::net::TcpStream;

use super::{Conn, Frames, unix_now};
use crate::{
    core::CloseCode,
    io::shard::ShardCtx,
    proto::{
        http::{
            request::{Method, Request},
            response,
        },
        incus::SockKey,
        ws::{codec::Decoder, handshake as ws_handshake, outbox::Outbox},
    },
};

/// The path Incus clients open.
pub(super) const PATH: &str = "/socket";

/// Forgets the socket however the task ends.
struct Registration {
    ctx: Rc<ShardCtx>,
    key: SockKey,
}

impl Frames for Registration {
    fn outbox<R>(&self, f: impl FnOnce(Option<&mut Outbox>) -> R) -> R {
        f(self.ctx.incus.borrow_mut().outbox(self.key))
    }

    fn message(&self, data: &[u8], now: Instant) {
        let now_unix = unix_now();
        self.ctx.with_incus(|incus| incus.handle_frame(self.key, data, now, now_unix));
    }

    fn ping(&self, pong: Bytes, _now: Instant) {
        self.ctx.with_incus(|incus| incus.send_raw(self.key, pong));
    }

    // Incus never tracked pongs.
    fn pong(&self, _now: Instant) {}

    fn close(&self, code: CloseCode) {
        self.ctx.with_incus(|incus| incus.close(self.key, code));
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.ctx.with_incus(|incus| incus.remove(self.key));
        self.ctx.admission.release_node();
        self.ctx.counters.incus.ws_disconnect.inc();
    }
}

/// Serves a request for [`PATH`]. Returns true when the connection goes on
/// with its next HTTP request (after a 405), false when it is finished.
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
    let used = registration.handle(&mut decoder, &mut conn.inbuf);
    conn.consumed(used);
    if !conn.drive(stream, &registration, &mut decoder).await {
        Box::pin(conn.linger(stream)).await;
    }
    drop(registration);
    false
}
