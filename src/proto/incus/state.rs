//! One shard's Incus state, sans-IO: its `/socket` connections indexed by
//! user and page, the long-poll sessions of the users it owns,
//! the polls started here that wait for an owner's answer, and the messages
//! it has for other shards. Time comes in as arguments.

use std::{
    collections::{HashMap, VecDeque},
    sync::Arc,
    time::{Duration, Instant},
};

use bytes::Bytes;
use rustc_hash::FxHashMap;
use simd_json::prelude::*;
use slab::Slab;

use super::{Delivery, IncusMsg, RedisUpdate, Target, format, message::FormatError, owner_shard};
use crate::{
    core::{CloseCode, ConnRef, counters::ShardCounters},
    proto::{
        incus::{
            command as envelope,
            command::{ClientMessage, IncusCommand, IncusError, IncusKind},
        },
        ws::{
            codec,
            outbox::{Dirty, Outbox},
        },
    },
};

/// Settings taken from the `incus:` and `server:` config sections.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Whether clients may send `message` commands (`client_broadcasts`).
    pub client_broadcasts: bool,
    /// How long a poll waits before answering 204 (`connection_timeout`).
    pub lp_timeout: Duration,
    /// Messages kept per long-polling user between polls.
    pub mailbox_messages: usize,
    /// Longest a message waits in a mailbox, and how long a mailbox lives
    /// after the user's last poll.
    pub mailbox_ttl: Duration,
    /// Bytes queued for one socket before it is closed as too slow.
    pub max_outbox_bytes: usize,
    /// Time between the pings every socket gets (the original: 20 s).
    pub ping_interval: Duration,
    /// Longest a socket may stay connected without authenticating.
    pub auth_timeout: Duration,
    /// Whether the Redis bridge runs: client messages are then published
    /// there instead of routed here, and the bookkeeping goes to Redis.
    pub redis: bool,
    /// Client commands allowed per second, per socket and per long-polling
    /// user (`client_commands_per_sec`).
    pub commands_per_sec: u32,
    /// Client commands allowed at once (`client_commands_burst`).
    pub commands_burst: u32,
    /// Long-poll sessions one shard owns at most (`max_lp_sessions`).
    pub max_sessions: usize,
    /// With Redis and `pushormessage_connected`: how often the shard tells
    /// the bridge which users have a socket or long-poll session here, so
    /// that `stapes:online:<uid>` is re-marked from what the shard holds,
    /// not from counts that a dropped update could leave wrong.
    pub online_every: Option<Duration>,
}

/// Users per [`RedisUpdate::Online`] (one uplink ring slot each).
const ONLINE_CHUNK: usize = 1024;

/// A token bucket held as the time its next token is due (GCRA), so a
/// socket pays one `Instant` for it rather than a count and a timestamp.
#[derive(Debug, Clone, Copy)]
struct RateLimit {
    due: Instant,
}

impl RateLimit {
    fn new(now: Instant) -> Self {
        Self { due: now }
    }

    /// Takes a token if one is left: `burst` at once, then `per_sec`.
    fn take(&mut self, now: Instant, per_sec: u32, burst: u32) -> bool {
        let interval = Duration::from_secs(1) / per_sec.max(1);
        let due = self.due.max(now);
        if due.duration_since(now) > interval * (burst.max(1) - 1) {
            return false;
        }
        self.due = due + interval;
        true
    }

    /// Whether the bucket is full again, so forgetting it changes nothing.
    fn idle(&self, now: Instant) -> bool {
        self.due <= now
    }
}

/// A `/socket` connection on this shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SockKey {
    key: u32,
    generation: u32,
}

/// How a poll ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PollResult {
    /// A message body (200).
    Message(Bytes),
    /// Nothing within `connection_timeout` (204).
    Timeout,
    /// The server is going down (503).
    Shutdown,
    /// The owner has `max_lp_sessions` sessions and this user has none
    /// (503).
    Full,
}

/// What was dropped or refused, for the logs (every drop is counted).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Counts {
    /// Mailbox messages dropped because the mailbox was full.
    pub mailbox_full: u64,
    /// Mailbox messages dropped because nobody polled in time.
    pub mailbox_expired: u64,
    /// Sweeps that found a user's messages expired (one per user and
    /// sweep, however many messages): what the log is throttled by.
    pub mailbox_expiries: u64,
    /// Messages that could not be formatted.
    pub unformattable: u64,
    /// Sockets closed because their outbox overflowed.
    pub slow_closed: u64,
    /// Poll answers that found their poll gone (shutdown).
    pub answers_lost: u64,
    /// Client commands dropped over `client_commands_per_sec`.
    pub rate_limited: u64,
    /// Client commands dropped because the rings to other shards were
    /// too far behind.
    pub backlog_shed: u64,
    /// Polls refused because this shard had `max_lp_sessions` sessions.
    pub sessions_full: u64,
    /// Client commands refused as malformed (not JSON, a repeated key, a
    /// non-string field).
    pub refused: u64,
}

#[derive(Debug)]
struct Socket {
    generation: u32,
    user: Option<Box<str>>,
    page: Option<Box<str>>,
    outbox: Outbox,
    limit: RateLimit,
}

/// A long-polling user, on their owner shard.
#[derive(Debug)]
struct Session {
    page: Option<Box<str>>,
    mailbox: VecDeque<(Instant, Bytes)>,
    /// Polls waiting: (shard, poll id, deadline).
    waiting: Vec<(usize, u64, Instant)>,
    last_poll: Instant,
}

#[derive(Debug)]
struct Wait {
    user: Box<str>,
    result: Option<PollResult>,
    /// When a message result first reached the owner.
    at: Instant,
}

/// Polls started on this shard, and those whose outcome is in.
#[derive(Debug, Default)]
struct Waits {
    polls: FxHashMap<u64, Wait>,
    /// Answered since [`IncusShard::take_completed`].
    completed: Vec<u64>,
}

impl Waits {
    /// Records the outcome of poll `id`, or gives it back when the poll is
    /// gone or already has one: the first outcome stands, and a message
    /// that finds no taker goes back to the caller, to be kept.
    fn complete(
        &mut self,
        id: u64,
        result: PollResult,
        at: Option<Instant>,
    ) -> Result<(), PollResult> {
        let Some(wait) = self.polls.get_mut(&id).filter(|w| w.result.is_none()) else {
            return Err(result);
        };
        if let Some(at) = at {
            wait.at = at;
        }
        wait.result = Some(result);
        self.completed.push(id);
        Ok(())
    }
}

/// Where a client command came from.
enum Origin {
    Socket(SockKey),
    LongPoll,
}

/// One shard's Incus state.
#[derive(Debug)]
pub struct IncusShard {
    id: usize,
    shards: usize,
    settings: Settings,
    sockets: Slab<Socket>,
    next_generation: u32,
    by_user: HashMap<Box<str>, Vec<u32>>,
    by_page: HashMap<Box<str>, Vec<u32>>,
    sessions: HashMap<Box<str>, Session>,
    waits: Waits,
    next_wait: u64,
    /// Outboxes that gained frames since [`IncusShard::take_dirty`].
    dirty: Dirty,
    mesh_out: Vec<(usize, IncusMsg)>,
    redis_out: Vec<RedisUpdate>,
    /// Sockets not yet authenticated, oldest first.
    unauthenticated: VecDeque<(Instant, SockKey)>,
    /// Waiting polls' deadlines, earliest first: (deadline, user, shard, poll).
    poll_deadlines: VecDeque<(Instant, Box<str>, usize, u64)>,
    last_scan: Option<Instant>,
    last_ping: Option<Instant>,
    last_online: Option<Instant>,
    /// Command budgets of long-polling users whose requests land here.
    lp_limits: HashMap<Box<str>, RateLimit>,
    /// Whether this shard's outlets hold more than the runtime allows;
    /// client commands that would add to them are dropped meanwhile.
    backlogged: bool,
    draining: bool,
    killswitch: bool,
    /// Drops and refusals so far.
    pub counts: Counts,
    /// The shard's metrics; this thread is their only writer.
    counters: Arc<ShardCounters>,
}

impl IncusShard {
    /// Shard `id` of `shards`.
    pub fn new(id: usize, shards: usize, settings: Settings) -> Self {
        Self {
            id,
            shards: shards.max(1),
            settings,
            sockets: Slab::new(),
            next_generation: 0,
            by_user: HashMap::default(),
            by_page: HashMap::default(),
            sessions: HashMap::default(),
            waits: Waits::default(),
            next_wait: 0,
            dirty: Dirty::default(),
            mesh_out: Vec::new(),
            redis_out: Vec::new(),
            unauthenticated: VecDeque::new(),
            poll_deadlines: VecDeque::new(),
            last_scan: None,
            last_ping: None,
            last_online: None,
            lp_limits: HashMap::default(),
            backlogged: false,
            draining: false,
            killswitch: false,
            counts: Counts::default(),
            counters: Arc::new(ShardCounters::new(0)),
        }
    }

    /// Counts into `counters` (the node's block for this shard) instead of
    /// the private block [`IncusShard::new`] made.
    pub fn set_counters(&mut self, counters: Arc<ShardCounters>) {
        self.counters = counters;
    }

    /// This shard's counters.
    pub fn counters(&self) -> &ShardCounters {
        &self.counters
    }

    /// Sockets on this shard.
    pub fn sockets(&self) -> usize {
        self.sockets.len()
    }

    /// Polls started here that have not handed over their answer yet; a
    /// draining shard waits for them as for sockets.
    pub fn pending_polls(&self) -> usize {
        self.waits.polls.len()
    }

    /// Long-poll sessions this shard owns.
    pub fn sessions(&self) -> usize {
        self.sessions.len()
    }

    /// Registers a new, not yet authenticated socket; `token` is the IO
    /// layer's handle for it, which [`IncusShard::take_dirty`] hands back.
    pub fn open(&mut self, token: u32, now: Instant) -> SockKey {
        self.next_generation = self.next_generation.wrapping_add(1);
        let generation = self.next_generation;
        let socket = Socket {
            generation,
            user: None,
            page: None,
            outbox: Outbox::new(token),
            limit: RateLimit::new(now),
        };
        let key = SockKey { key: self.sockets.insert(socket) as u32, generation };
        self.unauthenticated.push_back((now, key));
        key
    }

    fn socket(&mut self, key: SockKey) -> Option<&mut Socket> {
        self.sockets.get_mut(key.key as usize).filter(|s| s.generation == key.generation)
    }

    /// The socket's outbox, `None` once it is gone.
    pub fn outbox(&mut self, key: SockKey) -> Option<&mut Outbox> {
        self.socket(key).map(|s| &mut s.outbox)
    }

    /// Whether the socket is gone or closing.
    pub fn closing(&mut self, key: SockKey) -> bool {
        self.socket(key).is_none_or(|s| s.outbox.closing().is_some())
    }

    /// Queues a control frame (a pong) for the socket.
    pub fn send_raw(&mut self, key: SockKey, frame: Bytes) {
        let limit = self.settings.max_outbox_bytes;
        let Self { sockets, dirty, .. } = self;
        if let Some(s) =
            sockets.get_mut(key.key as usize).filter(|s| s.generation == key.generation)
            && s.outbox.push(frame, limit, dirty).is_err()
        {
            self.slow(key);
        }
    }

    /// Starts closing the socket with `code`.
    pub fn close(&mut self, key: SockKey, code: CloseCode) {
        let Self { sockets, dirty, .. } = self;
        if let Some(s) =
            sockets.get_mut(key.key as usize).filter(|s| s.generation == key.generation)
        {
            // Incus sends its close frames without a reason; an abnormal
            // close drops what has not started to go out.
            let discard = code != CloseCode::NORMAL;
            s.outbox.close(code, discard, &[codec::close_frame(code.0, "")], dirty);
        }
    }

    fn slow(&mut self, key: SockKey) {
        self.counts.slow_closed += 1;
        crate::warn_throttled!(self.counts.slow_closed, "incus socket too slow; closing it");
        self.close(key, CloseCode::OVER_CAPACITY);
    }

    /// Forgets a socket whose task ended.
    pub fn remove(&mut self, key: SockKey) {
        if self.socket(key).is_none() {
            return;
        }
        let socket = self.sockets.remove(key.key as usize);
        if let Some(user) = &socket.user
            && self.settings.redis
        {
            let conn = self.conn_ref(key);
            let page = socket.page.clone();
            let close = RedisUpdate::SocketClose { user: user.clone(), conn: Some(conn), page };
            self.redis_out.push(close);
        }
        if let Some(user) = &socket.user {
            unindex(&mut self.by_user, user, key.key);
        }
        if let Some(page) = &socket.page {
            unindex(&mut self.by_page, page, key.key);
        }
    }

    fn conn_ref(&self, key: SockKey) -> ConnRef {
        ConnRef { shard: self.id as u16, key: key.key, generation: key.generation }
    }

    /// One text or binary frame from the socket. The first must
    /// authenticate (else close 1011); after that, undecodable input closes
    /// with 1000, as in the original.
    pub fn handle_frame(&mut self, key: SockKey, text: &[u8], now: Instant, now_unix: u64) {
        let (per_sec, burst) = (self.settings.commands_per_sec, self.settings.commands_burst);
        let Some(socket) = self.socket(key) else { return };
        if socket.outbox.closing().is_some() {
            return;
        }
        let parsed = parse_first(text, false);
        let Some(user) = socket.user.clone() else {
            match parsed {
                Ok(cmd) if cmd.kind == IncusKind::Other("authenticate".into()) => {
                    match cmd.user.filter(|u| !u.is_empty()) {
                        Some(user) => {
                            let user: Box<str> = user.into();
                            socket.user = Some(user.clone());
                            if self.settings.redis {
                                self.redis_out.push(RedisUpdate::SocketOpen { user: user.clone() });
                            }
                            self.by_user.entry(user).or_default().push(key.key);
                        }
                        None => self.close(key, CloseCode::INCUS_AUTH_FAILED),
                    }
                }
                _ => self.close(key, CloseCode::INCUS_AUTH_FAILED),
            }
            return;
        };
        if !socket.limit.take(now, per_sec, burst) {
            self.rate_limited(&user);
            return;
        }
        match parsed {
            Ok(cmd) => self.client_command(Origin::Socket(key), &user, cmd, now, now_unix),
            // Nothing to act on, but nothing malformed either.
            Err(IncusError::NoCommand | IncusError::Undeliverable) => {
                tracing::debug!(%user, "incus client frame ignored");
            }
            Err(e) => {
                self.refused(&user, "socket", &e);
                self.close(key, CloseCode::NORMAL);
            }
        }
    }

    /// A client command that is not one: not JSON, a repeated key (the
    /// shape of an attempt to smuggle a second command past the check), a
    /// non-string field. Counted, and logged by the shared throttle.
    fn refused(&mut self, user: &str, from: &'static str, e: &IncusError) {
        self.counts.refused += 1;
        self.counters.incus.client_refused.inc();
        crate::warn_throttled!(self.counts.refused, %user, from, "incus client command refused: {e}");
    }

    fn rate_limited(&mut self, user: &str) {
        self.counts.rate_limited += 1;
        // A flooding client would otherwise flood the log as well.
        crate::warn_throttled!(
            self.counts.rate_limited,
            %user,
            "incus client commands over the rate limit; dropped"
        );
    }

    /// Set by the runtime after each flush: whether this shard's outlets to
    /// other shards are beyond their allowed backlog.
    pub fn set_backlogged(&mut self, backlogged: bool) {
        self.backlogged = backlogged;
    }

    /// A client's command, from a socket or a poll's `command` parameter
    /// (spec §6.3). Only `message`, `setpage` and `setpresence` do
    /// anything; clients cannot trigger pushes.
    fn client_command(
        &mut self,
        origin: Origin,
        user: &str,
        cmd: IncusCommand,
        now: Instant,
        now_unix: u64,
    ) {
        self.counters.incus.read.inc();
        // The rate limit bounds each client, not their sum: this keeps the
        // outlets' overflow queues bounded whatever the number of clients.
        let crosses_shards = matches!(&cmd.kind, IncusKind::Message);
        if self.backlogged && crosses_shards {
            self.counts.backlog_shed += 1;
            crate::warn_throttled!(
                self.counts.backlog_shed,
                %user,
                "other shards too far behind; incus client command dropped"
            );
            return;
        }
        match (&cmd.kind, origin) {
            (IncusKind::Message, _) if self.settings.client_broadcasts && self.settings.redis => {
                // Every node, this one included, routes it from the channel,
                // as a client's message whatever it says (see `command`).
                if let Some(message) = ClientMessage::from_command(cmd) {
                    self.redis_out.push(RedisUpdate::ClientMessage(message));
                }
            }
            (IncusKind::Message, _) if self.settings.client_broadcasts => {
                match format(cmd.message.as_ref(), now_unix) {
                    Ok(delivery) => {
                        let target = Target::of(cmd.user.as_deref(), cmd.page.as_deref());
                        self.route(target, delivery, now);
                    }
                    Err(e) => self.unformattable(&e),
                }
            }
            (IncusKind::Other(name), Origin::Socket(key)) if name == "setpage" => {
                let Some(page) = cmd.page.filter(|p| !p.is_empty()) else { return };
                let Some(socket) = self.socket(key) else { return };
                let page: Box<str> = page.into();
                let old = socket.page.replace(page.clone());
                if let Some(old) = &old {
                    unindex(&mut self.by_page, old, key.key);
                }
                if self.settings.redis {
                    self.redis_out.push(RedisUpdate::Page { old, new: page.clone() });
                }
                self.by_page.entry(page).or_default().push(key.key);
            }
            // Presence is read only by `pushormessage`, which comes only from
            // Redis, so it lives only there (`ClientPresence:<uid>`, written
            // by the bridge); without Redis nothing would ever read it.
            (IncusKind::Other(name), origin) if name == "setpresence" && self.settings.redis => {
                let presence = cmd.message.as_ref().and_then(|m| m.get("presence"));
                let Some(active) = presence.and_then(|p| p.as_bool()) else { return };
                let conn = match origin {
                    Origin::Socket(key) => {
                        if self.socket(key).is_none() {
                            return;
                        }
                        Some(self.conn_ref(key))
                    }
                    Origin::LongPoll => None,
                };
                self.redis_out.push(RedisUpdate::Presence { user: user.into(), conn, active });
            }
            (kind, _) => {
                tracing::debug!(%user, command = kind.label(), "incus client command ignored");
            }
        }
    }

    fn unformattable(&mut self, e: &FormatError) {
        self.counts.unformattable += 1;
        tracing::debug!(total = self.counts.unformattable, "incus message not delivered: {e}");
    }

    /// Delivers a message everywhere: to every other shard over the rings
    /// (the same bytes, refcounted) and here.
    pub fn route(&mut self, target: Target, delivery: Delivery, now: Instant) {
        let incus = &self.counters.incus;
        match target {
            Target::All => incus.message_all.inc(),
            Target::User { .. } => incus.message_user.inc(),
            Target::Page(_) => incus.message_page.inc(),
        }
        for shard in (0..self.shards).filter(|&s| s != self.id) {
            let msg = IncusMsg::Deliver { target: target.clone(), delivery: delivery.clone() };
            self.mesh_out.push((shard, msg));
        }
        self.deliver_local(&target, &delivery, now);
    }

    fn deliver_local(&mut self, target: &Target, delivery: &Delivery, now: Instant) {
        let limit = self.settings.max_outbox_bytes;
        // Only the rare socket that overflows is remembered: the fan-out
        // itself allocates nothing per recipient.
        let mut slow = Vec::new();
        let mut written = 0u64;
        let Self { sockets, by_user, by_page, dirty, .. } = self;
        let mut offer_socket = |k: u32, socket: &mut Socket| {
            let Some(user) = socket.user.as_deref() else { return };
            if target.matches(user, socket.page.as_deref()) {
                if socket.outbox.push(delivery.frame.clone(), limit, dirty).is_err() {
                    slow.push(SockKey { key: k, generation: socket.generation });
                } else {
                    written += 1;
                }
            }
        };
        let index = match target {
            Target::All => {
                for (k, socket) in sockets.iter_mut() {
                    offer_socket(k as u32, socket);
                }
                None
            }
            Target::User { user, .. } => by_user.get(user),
            Target::Page(page) => by_page.get(page),
        };
        for &k in index.into_iter().flatten() {
            if let Some(socket) = sockets.get_mut(k as usize) {
                offer_socket(k, socket);
            }
        }
        self.counters.incus.write.add(written);
        for key in slow {
            self.slow(key);
        }
        let Self { sessions, settings, counts, waits, mesh_out, id, .. } = self;
        let mut offer = |user: &str, session: &mut Session| {
            if session.waiting.is_empty() {
                if session.mailbox.len() >= settings.mailbox_messages {
                    session.mailbox.pop_front();
                    counts.mailbox_full += 1;
                    crate::warn_throttled!(
                        counts.mailbox_full,
                        %user,
                        "incus long-poll mailbox full; dropped its oldest message"
                    );
                }
                if settings.mailbox_messages > 0 {
                    session.mailbox.push_back((now, delivery.body.clone()));
                }
            } else {
                for (from, poll, _) in session.waiting.drain(..) {
                    let result = PollResult::Message(delivery.body.clone());
                    answer(*id, waits, mesh_out, counts, user, from, poll, result, now);
                }
            }
        };
        match target {
            Target::User { user, page } => {
                if let Some(session) = sessions.get_mut(user)
                    && (page.is_none() || *page == session.page)
                {
                    offer(user, session);
                }
            }
            Target::All => {
                for (user, session) in sessions.iter_mut() {
                    offer(user, session);
                }
            }
            Target::Page(page) => {
                for (user, session) in sessions.iter_mut() {
                    if session.page.as_ref() == Some(page) {
                        offer(user, session);
                    }
                }
            }
        }
    }

    /// Starts a long-poll for `user`: registers it with the user's owner,
    /// then runs the request's `command` (spec §5.4). Its id is listed by
    /// [`IncusShard::take_completed`] once the outcome is in, which
    /// [`IncusShard::take_poll`] then hands over.
    pub fn start_poll(
        &mut self,
        user: &str,
        page: Option<&str>,
        command: Option<&[u8]>,
        now: Instant,
        now_unix: u64,
    ) -> u64 {
        let id = self.next_wait;
        self.next_wait += 1;
        self.waits.polls.insert(id, Wait { user: user.into(), result: None, at: now });
        if self.draining {
            self.complete(id, PollResult::Shutdown);
            return id;
        }
        let command = match command.map(|c| parse_first(c, true)) {
            Some(Ok(cmd)) => Some(cmd),
            Some(Err(IncusError::NoCommand | IncusError::Undeliverable)) => {
                tracing::debug!(%user, "incus long-poll command ignored");
                None
            }
            Some(Err(e)) => {
                self.refused(user, "longpoll", &e);
                None
            }
            None => None,
        };
        // A `setpage` in the command moves this poll to that page.
        let setpage = command.as_ref().and_then(|c| match &c.kind {
            IncusKind::Other(name) if name == "setpage" => c.page.clone(),
            _ => None,
        });
        let page = setpage.as_deref().or(page).filter(|p| !p.is_empty()).map(Into::into);
        let command = match command {
            Some(cmd) => {
                let (per_sec, burst) =
                    (self.settings.commands_per_sec, self.settings.commands_burst);
                let limit = self.lp_limits.entry(user.into()).or_insert(RateLimit::new(now));
                if limit.take(now, per_sec, burst) {
                    Some(cmd)
                } else {
                    self.rate_limited(user);
                    None
                }
            }
            None => None,
        };
        // Registered first, so that a message the command sends to this very
        // user finds the poll waiting (every ring is FIFO).
        self.send_to_owner(IncusMsg::Poll { user: user.into(), page, from: self.id, id }, now);
        if let Some(cmd) = command {
            self.client_command(Origin::LongPoll, user, cmd, now, now_unix);
        }
        id
    }

    /// The poll's outcome once known (and then only once); `None` while it
    /// waits, or for an unknown id.
    pub fn take_poll(&mut self, id: u64) -> Option<PollResult> {
        self.waits.polls.get(&id)?.result.as_ref()?;
        self.waits.polls.remove(&id).and_then(|w| w.result)
    }

    /// Whether output waits to be taken: dirty outboxes, answered polls,
    /// messages for other shards or updates for Redis.
    pub fn has_work(&self) -> bool {
        !self.dirty.is_empty()
            || !self.waits.completed.is_empty()
            || self.has_mesh_out()
            || !self.redis_out.is_empty()
    }

    /// Hands over the ids of the polls answered since the last call.
    pub fn take_completed(&mut self, into: &mut Vec<u64>) {
        into.clear();
        std::mem::swap(&mut self.waits.completed, into);
    }

    /// Hands over the tokens of the sockets whose outboxes gained frames (or
    /// a close) since the last call.
    pub fn take_dirty(&mut self, into: &mut Vec<u32>) {
        self.dirty.take(into);
    }

    /// The poll's request is gone: tell the owner to stop holding it, or
    /// give back the message it got but can no longer return.
    pub fn cancel_poll(&mut self, id: u64, now: Instant) {
        let Some(wait) = self.waits.polls.remove(&id) else { return };
        let msg = match wait.result {
            None => IncusMsg::PollCancel { user: wait.user, from: self.id, id },
            Some(PollResult::Message(body)) => {
                IncusMsg::Requeue { user: wait.user, body, at: wait.at }
            }
            Some(PollResult::Timeout | PollResult::Shutdown | PollResult::Full) => return,
        };
        self.send_to_owner(msg, now);
    }

    fn complete(&mut self, id: u64, result: PollResult) {
        // Only called for polls without an outcome, with no message in hand.
        let _ = self.waits.complete(id, result, None);
    }

    /// Sends `msg` to the owner of its user, or handles it here.
    fn send_to_owner(&mut self, msg: IncusMsg, now: Instant) {
        let user = match &msg {
            IncusMsg::Poll { user, .. }
            | IncusMsg::PollCancel { user, .. }
            | IncusMsg::Requeue { user, .. } => user,
            IncusMsg::Deliver { .. } | IncusMsg::PollDone { .. } | IncusMsg::KillSwitch(_) => {
                return;
            }
        };
        let owner = owner_shard(user, self.shards);
        if owner == self.id {
            self.handle_mesh(msg, now);
        } else {
            self.mesh_out.push((owner, msg));
        }
    }

    /// A message from another shard or the bridge.
    pub fn handle_mesh(&mut self, msg: IncusMsg, now: Instant) {
        match msg {
            IncusMsg::Deliver { target, delivery } => self.deliver_local(&target, &delivery, now),
            IncusMsg::Poll { user, page, from, id } => self.owner_poll(user, page, from, id, now),
            IncusMsg::PollCancel { user, from, id } => {
                if let Some(session) = self.sessions.get_mut(&user) {
                    session.waiting.retain(|&(f, i, _)| (f, i) != (from, id));
                }
            }
            IncusMsg::PollDone { id, user, result, at } => {
                if let Err(PollResult::Message(body)) = self.waits.complete(id, result, Some(at)) {
                    // The request went away while the answer was on its way:
                    // the message goes back to the front of the mailbox.
                    self.send_to_owner(IncusMsg::Requeue { user, body, at }, now);
                }
            }
            IncusMsg::Requeue { user, body, at } => {
                let max = self.settings.mailbox_messages;
                match self.sessions.get_mut(&user) {
                    Some(session) if session.waiting.is_empty() && session.mailbox.len() < max => {
                        session.mailbox.push_front((at, body));
                    }
                    Some(session) if !session.waiting.is_empty() => {
                        let waiting = std::mem::take(&mut session.waiting);
                        let (waits, out, counts) =
                            (&mut self.waits, &mut self.mesh_out, &mut self.counts);
                        for (from, poll, _) in waiting {
                            answer(
                                self.id,
                                waits,
                                out,
                                counts,
                                &user,
                                from,
                                poll,
                                PollResult::Message(body.clone()),
                                at,
                            );
                        }
                    }
                    _ => {
                        self.counts.answers_lost += 1;
                        crate::warn_throttled!(
                            self.counts.answers_lost,
                            %user,
                            "incus long-poll answer lost: its request ended and the mailbox is full or gone"
                        );
                    }
                }
            }
            IncusMsg::KillSwitch(on) => {
                if self.killswitch != on && self.id == 0 {
                    tracing::warn!(on, "incus long-poll kill switch changed");
                }
                self.killswitch = on;
            }
        }
    }

    fn owner_poll(
        &mut self,
        user: Box<str>,
        page: Option<Box<str>>,
        from: usize,
        id: u64,
        now: Instant,
    ) {
        let deadline = now + self.settings.lp_timeout;
        if !self.sessions.contains_key(&user) {
            // Each new user= costs a session for mailbox_ttl; the cap keeps
            // a stream of made-up ids from growing the map without bound.
            if self.sessions.len() >= self.settings.max_sessions {
                self.counts.sessions_full += 1;
                crate::warn_throttled!(
                    self.counts.sessions_full,
                    "incus long-poll sessions at max_lp_sessions; refused"
                );
                let (waits, out, counts) = (&mut self.waits, &mut self.mesh_out, &mut self.counts);
                answer(self.id, waits, out, counts, &user, from, id, PollResult::Full, now);
                return;
            }
            if self.settings.redis {
                self.redis_out.push(RedisUpdate::SocketOpen { user: user.clone() });
            }
        }
        let session = self.sessions.entry(user.clone()).or_insert_with(|| Session {
            page: None,
            mailbox: VecDeque::new(),
            waiting: Vec::new(),
            last_poll: now,
        });
        session.page = page;
        session.last_poll = now;
        let ttl = self.settings.mailbox_ttl;
        while session.mailbox.front().is_some_and(|(at, _)| now.duration_since(*at) >= ttl) {
            session.mailbox.pop_front();
            self.counts.mailbox_expired += 1;
        }
        match session.mailbox.pop_front() {
            Some((at, body)) => {
                let (waits, out, counts) = (&mut self.waits, &mut self.mesh_out, &mut self.counts);
                answer(self.id, waits, out, counts, &user, from, id, PollResult::Message(body), at);
            }
            None => {
                session.waiting.push((from, id, deadline));
                self.poll_deadlines.push_back((deadline, user, from, id));
            }
        }
    }

    /// Time-driven work: pings, the authentication deadline, poll
    /// timeouts, mailbox and presence expiry.
    pub fn tick(&mut self, now: Instant) {
        let ping =
            self.last_ping.is_none_or(|at| now.duration_since(at) >= self.settings.ping_interval);
        if ping {
            self.last_ping = Some(now);
        }
        // Sockets in the order they opened, so the first one still in
        // time ends the scan.
        while let Some(&(opened, key)) = self.unauthenticated.front() {
            if now.duration_since(opened) < self.settings.auth_timeout {
                break;
            }
            self.unauthenticated.pop_front();
            if self.socket(key).is_some_and(|s| s.user.is_none()) {
                self.close(key, CloseCode::INCUS_AUTH_FAILED);
            }
        }
        if ping {
            let limit = self.settings.max_outbox_bytes;
            let mut slow = Vec::new();
            for (k, s) in &mut self.sockets {
                if s.user.is_some()
                    && s.outbox.push(codec::ping_frame(), limit, &mut self.dirty).is_err()
                {
                    slow.push(SockKey { key: k as u32, generation: s.generation });
                }
            }
            for key in slow {
                self.slow(key);
            }
        }
        // Every poll waits the same time, so deadlines come in queue order.
        while let Some((deadline, _, _, _)) = self.poll_deadlines.front() {
            if *deadline > now {
                break;
            }
            let Some((_, user, from, poll)) = self.poll_deadlines.pop_front() else { break };
            let Some(session) = self.sessions.get_mut(&user) else { continue };
            let before = session.waiting.len();
            session.waiting.retain(|&(f, p, _)| (f, p) != (from, poll));
            if session.waiting.len() < before {
                let (waits, out, counts) = (&mut self.waits, &mut self.mesh_out, &mut self.counts);
                answer(self.id, waits, out, counts, &user, from, poll, PollResult::Timeout, now);
            }
        }
        // Expiry needs no more precision than a second.
        if self.last_scan.is_some_and(|at| now.duration_since(at) < Duration::from_secs(1)) {
            return;
        }
        self.last_scan = Some(now);
        let ttl = self.settings.mailbox_ttl;
        let redis = self.settings.redis;
        let Self { sessions, counts, redis_out, .. } = self;
        sessions.retain(|user, session| {
            let before = session.mailbox.len();
            session.mailbox.retain(|(at, _)| now.duration_since(*at) < ttl);
            let expired =
                session.waiting.is_empty() && now.duration_since(session.last_poll) >= ttl;
            let dropped =
                before - session.mailbox.len() + if expired { session.mailbox.len() } else { 0 };
            if dropped > 0 {
                counts.mailbox_expired += dropped as u64;
                counts.mailbox_expiries += 1;
                crate::warn_throttled!(
                    counts.mailbox_expiries,
                    %user,
                    dropped,
                    messages = counts.mailbox_expired,
                    "incus long-poll messages expired before the next poll"
                );
            }
            if expired && redis {
                let user = user.clone();
                redis_out.push(RedisUpdate::SocketClose { user, conn: None, page: None });
            }
            !expired
        });
        self.lp_limits.retain(|_, limit| !limit.idle(now));
        self.report_online(now);
    }

    /// Every `online_every`, the users with a socket here or a long-poll
    /// session owned here, for the bridge to re-mark.
    fn report_online(&mut self, now: Instant) {
        let Some(every) = self.settings.online_every else { return };
        if self.last_online.is_some_and(|at| now.duration_since(at) < every) {
            return;
        }
        self.last_online = Some(now);
        let mut users: Vec<Box<str>> = self.by_user.keys().cloned().collect();
        users.extend(self.sessions.keys().filter(|u| !self.by_user.contains_key(*u)).cloned());
        while !users.is_empty() {
            let rest = users.split_off(users.len().min(ONLINE_CHUNK));
            self.redis_out.push(RedisUpdate::Online(std::mem::replace(&mut users, rest)));
        }
    }

    /// Shutdown: every socket gets close 1001, every waiting poll 503.
    pub fn drain(&mut self) {
        self.draining = true;
        let keys: Vec<SockKey> = self
            .sockets
            .iter()
            .map(|(k, s)| SockKey { key: k as u32, generation: s.generation })
            .collect();
        for key in keys {
            self.close(key, CloseCode::GOING_AWAY);
        }
        let ids: Vec<u64> = self.waits.polls.keys().copied().collect();
        for id in ids {
            self.complete(id, PollResult::Shutdown);
        }
    }

    /// Hands over the messages queued for other shards.
    pub fn drain_mesh_out(&mut self, mut send: impl FnMut(usize, IncusMsg)) {
        for (to, msg) in self.mesh_out.drain(..) {
            send(to, msg);
        }
    }

    /// Hands over what is queued for Redis.
    pub fn drain_redis_out(&mut self, mut send: impl FnMut(RedisUpdate)) {
        for update in self.redis_out.drain(..) {
            send(update);
        }
    }

    /// Whether messages wait for other shards or for the bridge.
    pub fn has_mesh_out(&self) -> bool {
        !self.mesh_out.is_empty() || !self.redis_out.is_empty()
    }

    /// Whether the kill switch (spec §5.6) has turned long-polling off.
    pub fn longpoll_off(&self) -> bool {
        self.killswitch
    }
}

/// Answers poll `poll` of shard `from`: here if it is this shard, else over
/// the rings.
#[allow(clippy::too_many_arguments)]
fn answer(
    me: usize,
    waits: &mut Waits,
    mesh_out: &mut Vec<(usize, IncusMsg)>,
    counts: &mut Counts,
    user: &str,
    from: usize,
    poll: u64,
    result: PollResult,
    at: Instant,
) {
    if from != me {
        mesh_out.push((from, IncusMsg::PollDone { id: poll, user: user.into(), result, at }));
        return;
    }
    match waits.complete(poll, result, Some(at)) {
        Ok(()) => {}
        Err(PollResult::Message(_)) => {
            counts.answers_lost += 1;
            crate::warn_throttled!(
                counts.answers_lost,
                "incus long-poll answer arrived after its request ended"
            );
        }
        Err(_) => {}
    }
}

fn unindex(index: &mut HashMap<Box<str>, Vec<u32>>, name: &str, key: u32) {
    if let Some(keys) = index.get_mut(name) {
        keys.retain(|&k| k != key);
        if keys.is_empty() {
            index.remove(name);
        }
    }
}

/// Parses the first JSON value of a client frame; the original ignores
/// whatever follows it (spec §5.1).
pub fn parse_first(text: &[u8], lenient: bool) -> Result<IncusCommand, IncusError> {
    let mut values =
        serde_json::Deserializer::from_slice(text).into_iter::<serde::de::IgnoredAny>();
    let end = match values.next() {
        Some(Ok(_)) => values.byte_offset(),
        Some(Err(e)) => return Err(IncusError::Json(e.to_string())),
        None => return Err(IncusError::Json("empty frame".into())),
    };
    let mut first = text[..end].to_vec();
    envelope::parse_client(&mut first, lenient)
}
