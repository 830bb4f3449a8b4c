//! `stapes-baseline`: a yardstick for stapes-load, not a product. One
//! thread, one edge-triggered epoll loop, plain non-blocking `read` and
//! `send`: the minimal Pusher server issue #14 compared stapes with, so that
//! stapes's figures can be set against a second server measured in the same
//! run. It knows one app (id `1`, key `app-key`, secret `app-secret`),
//! public channels only, `pusher:ping`, and the signed
//! `POST /apps/1/events`; nothing else (no presence, no client events, no
//! activity timeout).
//!
//! Writes are batched per loop turn: whatever a turn produces for a socket
//! is appended to its buffer and sent with one `send` after all of the
//! turn's events are handled; what the kernel does not take waits for
//! `EPOLLOUT`.
//!
//! Usage: `stapes-baseline [PORT]` (else `$BASELINE_PORT`, else
//! `$STAPES_PORT`, else 6001); it listens on 127.0.0.1 only.

// The server's one line of output is its startup notice, on stderr.
#![allow(clippy::disallowed_methods)]

mod proto;

use std::{io, os::raw::c_int};

use rustc_hash::FxHashMap;

use proto::Frame;

/// The shared read buffer: one per process, so an idle socket holds none.
const READ_BUF: usize = 64 * 1024;
/// Longest request head, and longest body of a publish.
const MAX_HEAD: usize = 16 * 1024;
const MAX_BODY: usize = 1024 * 1024;
/// Readiness events taken per `epoll_wait`.
const EVENTS: usize = 1024;

/// One socket's state, in a table indexed by its fd.
#[derive(Default)]
struct Conn {
    /// Upgraded to WebSocket.
    ws: bool,
    /// In the turn's list of sockets to write.
    dirty: bool,
    /// The kernel refused bytes: wait for `EPOLLOUT` before sending again.
    blocked: bool,
    /// Bytes of an incomplete request or frame; empty (unallocated) otherwise.
    input: Vec<u8>,
    /// Bytes to send; unallocated once sent.
    out: Vec<u8>,
    /// Channels subscribed, as indexes into `Server::channels`.
    subs: Vec<u32>,
}

/// A channel's subscribers, by fd. An emptied channel keeps its name
/// entry: the yardstick's channels are a fixed set per run.
struct Channel {
    subs: Vec<c_int>,
}

struct Server {
    epoll: c_int,
    listener: c_int,
    conns: Vec<Option<Conn>>,
    by_name: FxHashMap<Box<str>, u32>,
    channels: Vec<Channel>,
    /// Sockets with bytes to send this turn: HTTP answers (sent first, as
    /// uWS writes a response when its handler returns, before the loop's
    /// end drains the fan-out) and WebSockets.
    dirty_http: Vec<c_int>,
    dirty: Vec<c_int>,
    read_buf: Vec<u8>,
    /// Scratch for building one published event's frame.
    json: Vec<u8>,
    frame: Vec<u8>,
    mac: hmac::Hmac<sha2::Sha256>,
    next_socket: u64,
}

/// Why input processing ended the connection.
enum End {
    /// Close at once (the peer went away or broke the protocol).
    Now,
}

fn main() {
    let port = std::env::args()
        .nth(1)
        .or_else(|| std::env::var("BASELINE_PORT").ok())
        .or_else(|| std::env::var("STAPES_PORT").ok())
        .map_or(Ok(6001), |p| p.parse::<u16>())
        .unwrap_or_else(|e| {
            eprintln!("stapes-baseline: bad port: {e}");
            std::process::exit(2)
        });
    if let Err(e) = serve(port) {
        eprintln!("stapes-baseline: {e}");
        std::process::exit(1);
    }
}

fn check(r: c_int) -> io::Result<c_int> {
    if r < 0 { Err(io::Error::last_os_error()) } else { Ok(r) }
}

fn setsockopt_int(fd: c_int, level: c_int, name: c_int, value: c_int) {
    // SAFETY: a valid fd and an option value of the size given. A failure
    // leaves the default, which is still correct.
    unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&value as *const c_int).cast(),
            size_of::<c_int>() as libc::socklen_t,
        );
    }
}

fn serve(port: u16) -> io::Result<()> {
    // Up to the hard limit of open files: every connection is one.
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: `lim` is a valid rlimit to fill and then to set.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
    // SAFETY: plain socket calls on values we own; errors are checked.
    let listener = unsafe {
        check(libc::socket(
            libc::AF_INET,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        ))?
    };
    setsockopt_int(listener, libc::SOL_SOCKET, libc::SO_REUSEADDR, 1);
    let addr = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: port.to_be(),
        sin_addr: libc::in_addr { s_addr: u32::from_be_bytes([127, 0, 0, 1]).to_be() },
        sin_zero: [0; 8],
    };
    // SAFETY: `addr` is a sockaddr_in of the length given.
    unsafe {
        check(libc::bind(
            listener,
            (&addr as *const libc::sockaddr_in).cast(),
            size_of::<libc::sockaddr_in>() as libc::socklen_t,
        ))?;
        check(libc::listen(listener, 4096))?;
    }
    // SAFETY: creating an epoll instance has no preconditions.
    let epoll = unsafe { check(libc::epoll_create1(libc::EPOLL_CLOEXEC))? };
    let mut ev = libc::epoll_event { events: libc::EPOLLIN as u32, u64: listener as u64 };
    // SAFETY: valid epoll and listener fds, a valid event.
    unsafe { check(libc::epoll_ctl(epoll, libc::EPOLL_CTL_ADD, listener, &mut ev))? };
    eprintln!("stapes-baseline: listening on 127.0.0.1:{port}");
    let mut server = Server {
        epoll,
        listener,
        conns: Vec::new(),
        by_name: FxHashMap::default(),
        channels: Vec::new(),
        dirty_http: Vec::new(),
        dirty: Vec::new(),
        read_buf: vec![0; READ_BUF],
        json: Vec::with_capacity(1024),
        frame: Vec::with_capacity(1024),
        mac: proto::app_mac(),
        next_socket: 0,
    };
    server.run()
}

impl Server {
    fn run(&mut self) -> io::Result<()> {
        let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; EVENTS];
        loop {
            // SAFETY: `events` has room for EVENTS entries.
            let n =
                unsafe { libc::epoll_wait(self.epoll, events.as_mut_ptr(), EVENTS as c_int, -1) };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            for ev in &events[..n as usize] {
                let (fd, flags) = (ev.u64 as c_int, ev.events);
                if fd == self.listener {
                    self.accept_all();
                    continue;
                }
                if flags & libc::EPOLLERR as u32 != 0 {
                    self.close(fd);
                    continue;
                }
                if flags & libc::EPOLLOUT as u32 != 0 {
                    self.writable(fd);
                }
                let hup = flags & (libc::EPOLLRDHUP | libc::EPOLLHUP) as u32 != 0;
                if flags & libc::EPOLLIN as u32 != 0 || hup {
                    self.readable(fd, hup);
                }
            }
            self.flush();
        }
    }

    fn accept_all(&mut self) {
        loop {
            // SAFETY: a listening socket; the peer address is not wanted.
            let fd = unsafe {
                libc::accept4(
                    self.listener,
                    std::ptr::null_mut(),
                    std::ptr::null_mut(),
                    libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                )
            };
            if fd < 0 {
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::WouldBlock && e.kind() != io::ErrorKind::Interrupted {
                    // Out of files: the pending connections wait for the next edge.
                    eprintln!("stapes-baseline: accept: {e}");
                }
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return;
            }
            setsockopt_int(fd, libc::IPPROTO_TCP, libc::TCP_NODELAY, 1);
            let mut ev = libc::epoll_event {
                events: (libc::EPOLLIN | libc::EPOLLOUT | libc::EPOLLRDHUP | libc::EPOLLET) as u32,
                u64: fd as u64,
            };
            // SAFETY: valid fds and event.
            if unsafe { libc::epoll_ctl(self.epoll, libc::EPOLL_CTL_ADD, fd, &mut ev) } < 0 {
                // SAFETY: the fd is ours and nothing else refers to it.
                unsafe { libc::close(fd) };
                continue;
            }
            let i = fd as usize;
            if self.conns.len() <= i {
                self.conns.resize_with(i + 1, || None);
            }
            self.conns[i] = Some(Conn::default());
        }
    }

    /// `EPOLLOUT`: the kernel has room again for a socket that had to wait.
    fn writable(&mut self, fd: c_int) {
        if let Some(Some(c)) = self.conns.get_mut(fd as usize)
            && c.blocked
        {
            c.blocked = false;
            if !c.out.is_empty() && !c.dirty {
                c.dirty = true;
                if c.ws { &mut self.dirty } else { &mut self.dirty_http }.push(fd);
            }
        }
    }

    fn readable(&mut self, fd: c_int, hup: bool) {
        let Some(mut c) = self.conns.get_mut(fd as usize).and_then(Option::take) else {
            return;
        };
        let mut buf = std::mem::take(&mut self.read_buf);
        let mut end = None;
        loop {
            // SAFETY: `buf` has `buf.len()` writable bytes.
            let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
            if n < 0 {
                let e = io::Error::last_os_error();
                match e.kind() {
                    io::ErrorKind::WouldBlock => break,
                    io::ErrorKind::Interrupted => continue,
                    _ => {
                        end = Some(End::Now);
                        break;
                    }
                }
            }
            if n == 0 {
                end = Some(End::Now);
                break;
            }
            let n = n as usize;
            let r = if c.input.is_empty() {
                let r = self.input(fd, &mut c, &mut buf[..n]);
                if let Ok(used) = r
                    && used < n
                {
                    c.input.extend_from_slice(&buf[used..n]);
                }
                r
            } else {
                let mut input = std::mem::take(&mut c.input);
                input.extend_from_slice(&buf[..n]);
                let r = self.input(fd, &mut c, &mut input);
                if let Ok(used) = r {
                    input.drain(..used);
                    if !input.is_empty() {
                        c.input = input;
                    }
                }
                r
            };
            if let Err(e) = r {
                end = Some(e);
                break;
            }
            if c.input.len() > MAX_HEAD + MAX_BODY {
                end = Some(End::Now);
                break;
            }
            // A short read emptied the socket: the next bytes bring a new
            // edge. Unless the peer has shut its side, whose edge this was.
            if n < buf.len() && !hup {
                break;
            }
        }
        self.read_buf = buf;
        match end {
            None => self.conns[fd as usize] = Some(c),
            Some(End::Now) => {
                // Whatever was queued for it goes out first, best effort.
                if !c.out.is_empty() {
                    send_once(fd, &c.out);
                }
                self.drop_conn(fd, c);
            }
        }
    }

    /// Handles complete requests or frames at the front of `buf`; returns
    /// how many bytes were used.
    fn input(&mut self, fd: c_int, c: &mut Conn, buf: &mut [u8]) -> Result<usize, End> {
        let mut at = 0;
        while !c.ws {
            let Some(head) = proto::parse_head(&buf[at..]) else {
                if buf.len() - at > MAX_HEAD {
                    return Err(End::Now);
                }
                return Ok(at);
            };
            let Ok(head) = head else {
                proto::response(&mut c.out, "400 Bad Request", "{\"error\":\"bad request\"}");
                return Err(End::Now);
            };
            if head.content_length > MAX_BODY {
                proto::response(&mut c.out, "413 Payload Too Large", "{\"error\":\"too large\"}");
                return Err(End::Now);
            }
            let total = head.len + head.content_length;
            if buf.len() - at < total {
                return Ok(at);
            }
            let body = &buf[at + head.len..at + total];
            self.request(fd, c, &head, body);
            at += total;
        }
        while at < buf.len() {
            match proto::client_frame(&mut buf[at..]) {
                Frame::Partial => break,
                Frame::Bad(code) => {
                    close_frame(&mut c.out, code);
                    return Err(End::Now);
                }
                Frame::Whole { fin, opcode, start, end } => {
                    let payload = &buf[at + start..at + end];
                    at += end;
                    match (opcode, fin) {
                        (1, true) => self.message(fd, c, payload),
                        (8, _) => {
                            close_frame(&mut c.out, 1000);
                            return Err(End::Now);
                        }
                        (9, true) if payload.len() <= 125 => {
                            proto::frame_header(&mut c.out, 10, payload.len());
                            c.out.extend_from_slice(payload);
                            self.mark(fd, c);
                        }
                        (10, true) => {}
                        // Fragmented and binary messages: not part of the protocol's use here.
                        _ => {
                            close_frame(&mut c.out, 1003);
                            return Err(End::Now);
                        }
                    }
                }
            }
        }
        Ok(at)
    }

    /// Queues `fd` for this turn's sends.
    fn mark(&mut self, fd: c_int, c: &mut Conn) {
        if !c.dirty {
            c.dirty = true;
            if c.ws { &mut self.dirty } else { &mut self.dirty_http }.push(fd);
        }
    }

    fn request(&mut self, fd: c_int, c: &mut Conn, head: &proto::Head<'_>, body: &[u8]) {
        let (path, query) = head.target.split_once('?').unwrap_or((head.target, ""));
        let app_path = path.strip_prefix("/app/");
        match (head.method, path) {
            ("GET", _) if app_path.is_some() => {
                let key = app_path.unwrap_or_default();
                match head.ws_key {
                    Some(ws_key) if head.upgrade_websocket && key == proto::APP_KEY => {
                        proto::switching_protocols(&mut c.out, ws_key);
                        self.next_socket += 1;
                        let data = format!(
                            "{{\"socket_id\":\"{}.{}\",\"activity_timeout\":120}}",
                            self.next_socket, fd
                        );
                        self.json.clear();
                        self.json.extend_from_slice(
                            b"{\"event\":\"pusher:connection_established\",\"data\":",
                        );
                        proto::json_str(&mut self.json, &data);
                        self.json.push(b'}');
                        proto::text_frame(&mut c.out, &self.json);
                        c.ws = true;
                    }
                    _ if key != proto::APP_KEY => {
                        proto::response(&mut c.out, "404 Not Found", "{\"error\":\"unknown app\"}")
                    }
                    _ => proto::response(
                        &mut c.out,
                        "400 Bad Request",
                        "{\"error\":\"not a websocket upgrade\"}",
                    ),
                }
            }
            ("GET", "/ready") => proto::response(&mut c.out, "200 OK", "{}"),
            ("POST", _) if path == proto::EVENTS_PATH => {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs());
                if !proto::signature_ok(&self.mac, "POST", path, query, body, now) {
                    proto::response(
                        &mut c.out,
                        "401 Unauthorized",
                        "{\"error\":\"bad signature\"}",
                    );
                } else if self.publish(body) {
                    proto::response(&mut c.out, "200 OK", "{}");
                } else {
                    proto::response(&mut c.out, "400 Bad Request", "{\"error\":\"bad event\"}");
                }
            }
            _ => proto::response(&mut c.out, "404 Not Found", "{\"error\":\"not found\"}"),
        }
        self.mark(fd, c);
    }

    /// Frames the event once per channel and appends it to every
    /// subscriber's buffer; false if the body is not an event.
    fn publish(&mut self, body: &[u8]) -> bool {
        let Ok(t) = serde_json::from_slice::<proto::Trigger<'_>>(body) else {
            return false;
        };
        if !t.name.get().starts_with('"') {
            return false;
        }
        let one = t.channel.as_deref().into_iter();
        for channel in one.chain(t.channels.iter().map(|c| c.as_ref())) {
            let Some(&id) = self.by_name.get(channel) else {
                continue;
            };
            let Server { channels, conns, dirty, json, frame, .. } = self;
            let subs = &channels[id as usize].subs;
            if subs.is_empty() {
                continue;
            }
            json.clear();
            proto::event_json(json, t.name.get(), channel, t.data.get());
            frame.clear();
            proto::text_frame(frame, json);
            for &s in subs {
                if let Some(Some(c)) = conns.get_mut(s as usize) {
                    c.out.extend_from_slice(frame);
                    if !c.dirty {
                        c.dirty = true;
                        dirty.push(s);
                    }
                }
            }
        }
        true
    }

    /// One text message from a client.
    fn message(&mut self, fd: c_int, c: &mut Conn, payload: &[u8]) {
        let Ok(m) = serde_json::from_slice::<proto::ClientMessage<'_>>(payload) else {
            return;
        };
        match m.event.as_ref() {
            "pusher:ping" => {
                proto::text_frame(&mut c.out, br#"{"event":"pusher:pong","data":{}}"#);
                self.mark(fd, c);
            }
            "pusher:subscribe" => {
                let Some(d) = m
                    .data
                    .and_then(|d| serde_json::from_str::<proto::ChannelData<'_>>(d.get()).ok())
                else {
                    return;
                };
                let channel = d.channel.as_ref();
                self.json.clear();
                if channel.starts_with("private-") || channel.starts_with("presence-") {
                    self.json.extend_from_slice(
                        b"{\"event\":\"pusher:subscription_error\",\"channel\":",
                    );
                    proto::json_str(&mut self.json, channel);
                    self.json.extend_from_slice(
                        br#","data":{"type":"Unsupported","error":"only public channels","status":403}}"#,
                    );
                } else {
                    self.subscribe(fd, c, channel);
                    self.json.extend_from_slice(
                        b"{\"event\":\"pusher_internal:subscription_succeeded\",\"channel\":",
                    );
                    proto::json_str(&mut self.json, channel);
                    self.json.extend_from_slice(br#","data":"{}"}"#);
                }
                proto::text_frame(&mut c.out, &self.json);
                self.mark(fd, c);
            }
            "pusher:unsubscribe" => {
                let Some(d) = m
                    .data
                    .and_then(|d| serde_json::from_str::<proto::ChannelData<'_>>(d.get()).ok())
                else {
                    return;
                };
                if let Some(&id) = self.by_name.get(d.channel.as_ref())
                    && let Some(i) = c.subs.iter().position(|&s| s == id)
                {
                    c.subs.swap_remove(i);
                    self.leave(fd, id);
                }
            }
            _ => {}
        }
    }

    fn subscribe(&mut self, fd: c_int, c: &mut Conn, channel: &str) {
        let id = match self.by_name.get(channel) {
            Some(&id) => id,
            None => {
                let id = self.channels.len() as u32;
                self.channels.push(Channel { subs: Vec::new() });
                self.by_name.insert(channel.into(), id);
                id
            }
        };
        if !c.subs.contains(&id) {
            c.subs.push(id);
            self.channels[id as usize].subs.push(fd);
        }
    }

    fn leave(&mut self, fd: c_int, id: u32) {
        let subs = &mut self.channels[id as usize].subs;
        if let Some(i) = subs.iter().position(|&s| s == fd) {
            subs.swap_remove(i);
        }
        if subs.is_empty() {
            *subs = Vec::new();
        }
    }

    /// One `send` per socket with pending bytes, HTTP answers first; the
    /// rest waits for `EPOLLOUT`.
    fn flush(&mut self) {
        let mut http = std::mem::take(&mut self.dirty_http);
        self.flush_list(&mut http);
        self.dirty_http = http;
        let mut ws = std::mem::take(&mut self.dirty);
        self.flush_list(&mut ws);
        self.dirty = ws;
    }

    fn flush_list(&mut self, list: &mut Vec<c_int>) {
        for &fd in list.iter() {
            let Some(Some(c)) = self.conns.get_mut(fd as usize) else {
                continue;
            };
            c.dirty = false;
            if c.blocked || c.out.is_empty() {
                continue;
            }
            // SAFETY: `c.out` is `c.out.len()` readable bytes.
            let n = unsafe {
                libc::send(
                    fd,
                    c.out.as_ptr().cast(),
                    c.out.len(),
                    libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT,
                )
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted) {
                    c.blocked = true;
                } else {
                    self.close(fd);
                }
            } else if n as usize == c.out.len() {
                // An idle socket holds no buffer.
                c.out = Vec::new();
            } else {
                c.out.drain(..n as usize);
                c.blocked = true;
            }
        }
        list.clear();
    }

    fn close(&mut self, fd: c_int) {
        if let Some(c) = self.conns.get_mut(fd as usize).and_then(Option::take) {
            self.drop_conn(fd, c);
        }
    }

    /// Leaves the connection's channels and closes its socket.
    fn drop_conn(&mut self, fd: c_int, c: Conn) {
        for &id in &c.subs {
            self.leave(fd, id);
        }
        // SAFETY: the fd is ours; closing it also takes it out of the epoll set.
        unsafe { libc::close(fd) };
    }
}

/// A close frame with `code`.
fn close_frame(out: &mut Vec<u8>, code: u16) {
    proto::frame_header(out, 8, 2);
    out.extend_from_slice(&code.to_be_bytes());
}

/// One non-blocking send, its result ignored: for last words before a close.
fn send_once(fd: c_int, bytes: &[u8]) {
    // SAFETY: `bytes` is readable for its length.
    unsafe {
        libc::send(fd, bytes.as_ptr().cast(), bytes.len(), libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT)
    };
}
