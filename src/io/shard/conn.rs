//! The task behind one socket: HTTP requests until (maybe) a WebSocket
//! upgrade, then Pusher frames both ways until the connection closes.
//!
//! One task does both directions. It waits for whichever comes first of
//! "socket readable", "frames queued in the outbox" and (when the socket
//! pushed back) "socket writable"; each of those waits is a readiness
//! notification or a local wake-up, so dropping the ones that lost the race
//! loses nothing ([`super::io`]).

use std::{
    future::poll_fn,
    os::fd::{AsRawFd, RawFd},
    pin::pin,
    rc::Rc,
    task::Poll,
    time::{Duration, Instant},
};

use bytes::{Buf, Bytes, BytesMut};
use monoio::net::TcpStream;

use super::{
    Either, ShardCtx, api, first,
    sock::{self, Link, ReadOutcome},
};
use crate::{
    core::{AppIdx, CloseCode},
    proto::{
        http::{request, response},
        index::ConnKey,
        pusher::{handshake, messages},
        ws::{
            codec,
            codec::{Decoder, WsEvent},
            handshake as ws_handshake,
            outbox::Outbox,
        },
    },
};

mod incus_ws;

/// How long a closing connection may take to send its own close frame and
/// FIN after ours, before the socket is dropped anyway.
const CLOSE_LINGER: Duration = Duration::from_secs(2);
/// Reads in a row from one socket before other connections get a turn.
const READS_PER_WAKE: usize = 4;

/// Serves one accepted socket to the end.
pub async fn serve(ctx: Rc<ShardCtx>, stream: TcpStream, tls: bool) {
    let link = match (&ctx.tls, tls) {
        (Some(config), true) => match Link::tls(config) {
            Ok(link) => link,
            Err(e) => {
                tracing::warn!("cannot start TLS session: {e}");
                return;
            }
        },
        _ => Link::Plain,
    };
    let fd = stream.as_raw_fd();
    let mut conn = Conn { ctx, fd, link, inbuf: BytesMut::new() };
    // The HTTP phase and the closing linger are boxed so that their state
    // is freed when they end: a WebSocket task that lives for hours then
    // carries only what the WebSocket loop needs.
    if let Some(ws) = Box::pin(conn.http(&stream)).await {
        conn.websocket(&stream, ws).await;
    }
}

/// The connection's state apart from the stream itself, which readiness
/// futures borrow while the state changes.
struct Conn {
    ctx: Rc<ShardCtx>,
    fd: RawFd,
    link: Link,
    /// Received bytes not yet consumed (a partial request or frame); empty
    /// and unallocated while the connection is idle.
    inbuf: BytesMut,
}

/// A connection that completed the Pusher handshake.
struct Upgraded {
    key: ConnKey,
    app: AppIdx,
}

/// Removes the connection from the shard and the counters however the task
/// ends, including when the runtime drops it at shutdown.
struct Registration {
    ctx: Rc<ShardCtx>,
    key: ConnKey,
    app: AppIdx,
}

impl Drop for Registration {
    fn drop(&mut self) {
        // A vacate or member removal this causes is delayed from now, not
        // from the shard's last input.
        self.ctx.with_core(|core| {
            core.set_now(Instant::now());
            core.remove(self.key)
        });
        self.ctx.admission.release(self.app);
    }
}

/// The protocol behind an upgraded socket: where its frames wait and what
/// handles those that arrive. Pusher's shard core and Incus's state differ
/// only here; [`Conn::drive`] is the loop both run.
pub(super) trait Frames {
    /// Runs `f` on the socket's outbox, `None` once the protocol forgot it.
    fn outbox<R>(&self, f: impl FnOnce(Option<&mut Outbox>) -> R) -> R;
    /// A complete text or binary message.
    fn message(&self, data: &[u8], now: Instant);
    /// A ping, with the pong that answers it.
    fn ping(&self, pong: Bytes, now: Instant);
    /// A pong.
    fn pong(&self, now: Instant);
    /// Starts closing with `code` (the peer's, echoed, or ours for bad input).
    fn close(&self, code: CloseCode);

    /// Decodes and handles every complete frame at the front of `buf`;
    /// returns the bytes used. Input bad enough to end the connection
    /// queues the close (1002, 1007 or 1009) and stops decoding.
    fn handle(&self, decoder: &mut Decoder, buf: &mut [u8]) -> usize {
        let now = Instant::now();
        let mut used = 0;
        loop {
            match decoder.decode(&mut buf[used..]) {
                Ok(None) => return used,
                Ok(Some((event, n))) => {
                    used += n;
                    match event {
                        WsEvent::Text(data) | WsEvent::Binary(data) => self.message(data, now),
                        WsEvent::Ping(payload) => self.ping(codec::pong_frame(payload), now),
                        WsEvent::Pong => self.pong(now),
                        WsEvent::Close(code) => {
                            // Echo the client's close (RFC 6455 §5.5.1).
                            let code = code.map_or(CloseCode::NORMAL, CloseCode);
                            self.close(if code.is_close_code() { code } else { CloseCode::NORMAL });
                            return used;
                        }
                    }
                }
                Err(e) => {
                    self.close(CloseCode(e.close_code()));
                    // Nothing after a framing error can be trusted; drop it.
                    return buf.len();
                }
            }
        }
    }
}

/// Whether the protocol has started closing the socket (or forgotten it).
fn closing<F: Frames>(frames: &F) -> bool {
    frames.outbox(|outbox| outbox.is_none_or(|o| o.closing().is_some()))
}

impl Frames for Registration {
    fn outbox<R>(&self, f: impl FnOnce(Option<&mut Outbox>) -> R) -> R {
        f(self.ctx.core.borrow_mut().outbox(self.key))
    }

    fn message(&self, data: &[u8], now: Instant) {
        self.ctx.with_core(|core| core.handle_text(self.key, data, now));
    }

    fn ping(&self, pong: Bytes, now: Instant) {
        self.ctx.with_core(|core| {
            core.heard(self.key, now);
            core.send_raw(self.key, pong);
        });
    }

    fn pong(&self, now: Instant) {
        self.ctx.with_core(|core| core.heard(self.key, now));
    }

    fn close(&self, code: CloseCode) {
        self.ctx.with_core(|core| core.close(self.key, code));
    }
}

enum Read {
    Data,
    Idle,
    Eof,
}

impl Conn {
    /// Reads what the socket has into `inbuf`.
    fn read_some(&mut self) -> std::io::Result<Read> {
        let mut scratch = self.ctx.scratch.borrow_mut();
        let mut got = false;
        for _ in 0..READS_PER_WAKE {
            match self.link.read(self.fd, &mut scratch)? {
                ReadOutcome::Data(n) => {
                    self.inbuf.extend_from_slice(&scratch[..n]);
                    got = true;
                    if n < scratch.len() {
                        break;
                    }
                }
                ReadOutcome::WouldBlock => break,
                ReadOutcome::Eof => return Ok(if got { Read::Data } else { Read::Eof }),
            }
        }
        Ok(if got { Read::Data } else { Read::Idle })
    }

    fn consumed(&mut self, n: usize) {
        self.inbuf.advance(n);
        if self.inbuf.is_empty() {
            self.inbuf = BytesMut::new();
        }
    }

    /// Reads what the socket has and handles every complete frame. Frames
    /// are decoded in the shard's shared buffer where they landed; only a
    /// partial frame at the end is copied into this connection's `inbuf`.
    fn read_frames<F: Frames>(
        &mut self,
        frames: &F,
        decoder: &mut Decoder,
    ) -> std::io::Result<Read> {
        let ctx = Rc::clone(&self.ctx);
        let mut scratch = ctx.scratch.borrow_mut();
        let mut got = false;
        for _ in 0..READS_PER_WAKE {
            let n = match self.link.read(self.fd, &mut scratch)? {
                ReadOutcome::Data(n) => n,
                ReadOutcome::WouldBlock => break,
                ReadOutcome::Eof => return Ok(if got { Read::Data } else { Read::Eof }),
            };
            got = true;
            if self.inbuf.is_empty() {
                let used = frames.handle(decoder, &mut scratch[..n]);
                if used < n {
                    self.inbuf.extend_from_slice(&scratch[used..n]);
                }
            } else {
                self.inbuf.extend_from_slice(&scratch[..n]);
                let used = frames.handle(decoder, &mut self.inbuf);
                self.consumed(used);
            }
            if n < scratch.len() {
                break;
            }
        }
        Ok(if got { Read::Data } else { Read::Idle })
    }

    /// Writes `bytes` completely, waiting for the socket as needed.
    async fn write_all(&mut self, stream: &TcpStream, bytes: Bytes) -> std::io::Result<()> {
        let mut bytes = bytes;
        while !bytes.is_empty() || self.link.has_pending() {
            let n = if bytes.is_empty() {
                0
            } else {
                self.link.write(self.fd, std::iter::once(&bytes))?
            };
            bytes.advance(n);
            if bytes.is_empty() && self.link.flush(self.fd)? {
                return Ok(());
            }
            if n == 0 {
                stream.writable(false).await?;
            }
        }
        Ok(())
    }

    /// Serves HTTP requests; returns the upgraded connection, or `None` when
    /// the connection is finished.
    async fn http(&mut self, stream: &TcpStream) -> Option<Upgraded> {
        let server = &self.ctx.config.server;
        let (max_head, max_body, idle) =
            (server.max_header_bytes, server.max_body_bytes, server.http_idle_timeout);
        // One deadline per request, not per read: a client trickling bytes
        // gets no more time than an idle one.
        let mut deadline = Instant::now() + idle;
        loop {
            match request::parse_head(&self.inbuf, max_head) {
                Ok(Some((req, head_len))) => {
                    if req.content_length > max_body {
                        let msg = format!("Request body larger than {max_body} bytes");
                        let _ = self.write_all(stream, response::text(413, &msg, false)).await;
                        return None;
                    }
                    let total = head_len + req.content_length;
                    if self.inbuf.len() >= total {
                        // Incus's WebSocket path answers its own HTTP errors.
                        if req.path == incus_ws::PATH {
                            self.consumed(total);
                            if Box::pin(incus_ws::serve(self, stream, &req)).await {
                                deadline = Instant::now() + idle;
                                continue;
                            }
                            return None;
                        }
                        if ws_handshake::is_upgrade(&req) {
                            self.consumed(head_len);
                            return self.upgrade(stream, &req).await;
                        }
                        let now_unix = unix_now();
                        let tls = self.link.is_tls();
                        let fd = self.fd;
                        let resp = {
                            let body = &mut self.inbuf[head_len..total];
                            // Boxed: the API future is large and rare, and inline it
                            // would grow every connection task, WebSockets included.
                            let mut api =
                                Box::pin(api::handle(&self.ctx, &req, body, tls, now_unix));
                            if req.path == "/lp" {
                                // A long-poll waits up to a minute: notice a client
                                // that left, so its poll stops holding the user's
                                // messages (dropping it withdraws the poll).
                                let gone = pin!(peer_gone(stream, fd));
                                match first(api.as_mut(), gone).await {
                                    Either::Left(resp) => resp,
                                    Either::Right(()) => return None,
                                }
                            } else {
                                api.await
                            }
                        };
                        self.consumed(total);
                        let keep_alive =
                            req.keep_alive && !self.ctx.draining() && !resp.forces_close();
                        if self.write_all(stream, resp.into_bytes(keep_alive)).await.is_err()
                            || !keep_alive
                        {
                            return None;
                        }
                        deadline = Instant::now() + idle;
                        continue;
                    }
                }
                Ok(None) => {}
                Err(e) => {
                    let _ = self
                        .write_all(stream, response::text(e.status(), &e.to_string(), false))
                        .await;
                    return None;
                }
            }
            // Need more bytes: wait for them, but not forever (slow or idle
            // clients must not pin a connection).
            let left = deadline.saturating_duration_since(Instant::now());
            let ready = {
                let readable = pin!(stream.readable(false));
                let timeout = pin!(monoio::time::sleep(left));
                first(readable, timeout).await
            };
            match ready {
                Either::Left(Ok(())) => match self.read_some() {
                    Ok(Read::Data | Read::Idle) => {}
                    Ok(Read::Eof) | Err(_) => return None,
                },
                Either::Left(Err(_)) | Either::Right(()) => return None,
            }
        }
    }

    /// Completes the WebSocket handshake and the Pusher one after it.
    async fn upgrade(&mut self, stream: &TcpStream, req: &request::Request) -> Option<Upgraded> {
        let accept = match ws_handshake::accept(req) {
            Ok(accept) => accept,
            Err(e) => {
                let _ = self.write_all(stream, e.response()).await;
                return None;
            }
        };
        let ctx = Rc::clone(&self.ctx);
        let upgrade =
            handshake::Upgrade { path: &req.path, query: &req.query, tls: self.link.is_tls() };
        let admitted =
            handshake::check(&ctx.apps, upgrade, ctx.config.server.allow_missing_protocol)
                .and_then(|app| if ctx.draining() { Err(CloseCode::RECONNECT) } else { Ok(app) })
                .and_then(|app| ctx.admission.admit(app).map(|()| app));
        match admitted {
            Ok(app) => {
                // The 101 leaves with connection_established, in one write.
                let key = ctx.with_core(|core| core.open_after(app, Instant::now(), Some(accept)));
                Some(Upgraded { key, app })
            }
            Err(code) => {
                // Spec §3.1: the reason goes first as a pusher:error, which
                // pusher-js maps through the same table as the close code.
                let mut bye = BytesMut::from(&accept[..]);
                bye.extend_from_slice(&messages::error(Some(code.0), code.reason()));
                bye.extend_from_slice(&codec::close_frame(code.0, code.reason()));
                if self.write_all(stream, bye.freeze()).await.is_ok() {
                    self.linger(stream).await;
                }
                None
            }
        }
    }

    /// Runs an upgraded connection until it closes.
    async fn websocket(&mut self, stream: &TcpStream, ws: Upgraded) {
        let registration = Registration { ctx: Rc::clone(&self.ctx), key: ws.key, app: ws.app };
        let mut decoder = Decoder::new(self.ctx.config.server.max_message_bytes);
        // Bytes that arrived with the upgrade request are frames already.
        if !self.inbuf.is_empty() {
            let used = registration.handle(&mut decoder, &mut self.inbuf);
            self.consumed(used);
        }
        if !self.drive(stream, &registration, &mut decoder).await {
            Box::pin(self.linger(stream)).await;
        }
        drop(registration);
    }

    /// Writes and reads an upgraded socket until it closes, for whichever
    /// protocol `frames` stands for. Returns true when the peer is gone
    /// (nothing left to linger for).
    pub(super) async fn drive<F: Frames>(
        &mut self,
        stream: &TcpStream,
        frames: &F,
        decoder: &mut Decoder,
    ) -> bool {
        let mut readable = pin!(stream.readable(false));
        // Boxed and made only when a write blocks (rare): kept inline, this
        // future would cost every idle connection its 104 bytes.
        let mut writable = None;
        let mut close_deadline = None;
        loop {
            // 1. Write what is queued.
            let write_blocked = match self.flush(frames) {
                Ok(Flush::Blocked) => true,
                Ok(Flush::Idle) => false,
                Ok(Flush::CloseSent) => return false,
                Err(_) => return true,
            };
            // A closing connection whose peer stopped reading would wait for
            // "writable" forever; it gets CLOSE_LINGER to take the close frame.
            if write_blocked && close_deadline.is_none() && closing(frames) {
                close_deadline = Some(Box::pin(monoio::time::sleep(CLOSE_LINGER)));
            }
            // 2. Wait for input, for output to write, or for the socket to drain.
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
                if write_blocked {
                    let w = writable.get_or_insert_with(|| Box::pin(stream.writable(false)));
                    if let Poll::Ready(r) = w.as_mut().poll(cx) {
                        return Poll::Ready(Wake::Writable(r));
                    }
                    // More frames only matter once the socket drains, but a
                    // close must start its deadline now.
                    if close_deadline.is_none() && closing(frames) {
                        return Poll::Ready(Wake::Outbox);
                    }
                }
                frames.outbox(|outbox| {
                    let Some(outbox) = outbox else { return Poll::Ready(Wake::Outbox) };
                    if !write_blocked && (!outbox.is_empty() || outbox.closing().is_some()) {
                        return Poll::Ready(Wake::Outbox);
                    }
                    outbox.register(cx.waker());
                    Poll::Pending
                })
            })
            .await;
            match wake {
                Wake::Readable(r) => {
                    readable.set(stream.readable(false));
                    if r.is_err() {
                        return true;
                    }
                    match self.read_frames(frames, decoder) {
                        Ok(Read::Data | Read::Idle) => {}
                        Ok(Read::Eof) | Err(_) => return true,
                    }
                }
                Wake::Writable(r) => {
                    writable = None;
                    if r.is_err() {
                        return true;
                    }
                }
                // Write on the loop's next turn, not now, so the publishes
                // and ring batches of this turn share one writev per
                // connection: about twice the deliveries per server CPU-second at
                // full rate (README, Performance).
                Wake::Outbox => self.ctx.next_turn().await,
                Wake::GiveUp => return true,
            }
        }
    }

    /// Writes the outbox until it is empty or the socket pushes back.
    fn flush<F: Frames>(&mut self, frames: &F) -> std::io::Result<Flush> {
        let (link, fd) = (&mut self.link, self.fd);
        frames.outbox(|outbox| {
            let Some(outbox) = outbox else { return Ok(Flush::CloseSent) };
            loop {
                if outbox.is_empty() {
                    if !link.flush(fd)? {
                        return Ok(Flush::Blocked);
                    }
                    return Ok(if outbox.closing().is_some() {
                        Flush::CloseSent
                    } else {
                        Flush::Idle
                    });
                }
                let n = link.write(fd, outbox.frames())?;
                if n == 0 {
                    return Ok(Flush::Blocked);
                }
                outbox.consume(n);
            }
        })
    }

    /// After our close frame: send FIN, then wait briefly for the client's
    /// close and FIN, discarding input, so the kernel does not answer unread
    /// data with a reset that could destroy our close frame in flight.
    async fn linger(&mut self, stream: &TcpStream) {
        sock::shutdown(self.fd, libc::SHUT_WR);
        let deadline = Instant::now() + CLOSE_LINGER;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            let ready = {
                let readable = pin!(stream.readable(false));
                let timeout = pin!(monoio::time::sleep(left));
                first(readable, timeout).await
            };
            match ready {
                Either::Left(Ok(())) => match self.read_some() {
                    Ok(Read::Data | Read::Idle) => self.inbuf.clear(),
                    Ok(Read::Eof) | Err(_) => return,
                },
                Either::Left(Err(_)) | Either::Right(()) => return,
            }
        }
    }
}

enum Flush {
    /// Everything written.
    Idle,
    /// The socket is full; wait for it.
    Blocked,
    /// The close frame is out.
    CloseSent,
}

/// Completes when the peer has closed its side (or the socket failed),
/// without consuming anything: a readiness wait, then a one-byte peek. Data
/// (a pipelined request, or TLS records) ends the watch without an answer.
async fn peer_gone(stream: &TcpStream, fd: RawFd) {
    loop {
        if stream.readable(false).await.is_err() {
            return;
        }
        let mut byte = 0u8;
        // SAFETY: one writable byte; MSG_PEEK leaves the data in the socket.
        let n = unsafe {
            libc::recv(fd, (&raw mut byte).cast(), 1, libc::MSG_PEEK | libc::MSG_DONTWAIT)
        };
        match n {
            0 => return,
            n if n > 0 => return std::future::pending().await,
            _ => {
                let err = std::io::Error::last_os_error().kind();
                if !matches!(err, std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted)
                {
                    return;
                }
            }
        }
    }
}

fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}
