//! What happens to a socket after the protocol has spoken: its writes (one
//! vectored write per turn), its deadlines, the linger after our close, and
//! the close that gives back what it held.

use super::*;

impl ShardLoop {
    /// Step 5: One write per socket that has something to write, the HTTP
    /// answers first, then sockets an earlier turn left, then those that
    /// gained frames in this one; at most [`WRITE_BUDGET`] sockets a turn
    /// besides those whose input was read since they were last written, in
    /// calls to the send ring of at most [`WRITE_BUDGET`] sockets each.
    ///
    /// Answers first: a publisher that has its answer sends its next event
    /// while the turn's fan-out is still being written. The budget: a
    /// fan-out to thousands of sockets is written over several turns, each
    /// of which reads the sockets again, so events that arrive meanwhile
    /// join the frames of the sockets not yet written and share their
    /// `writev` (one turn writing everything took a publisher's next event
    /// only once it was done, and wrote 3–4 frames per `writev` where the
    /// runtime before #11 wrote 8; with 64 sockets a turn, 10–26). A socket
    /// left over stays listed, so it is neither listed twice nor forgotten.
    /// Sockets that were read are outside the budget because what they
    /// wait for answers their own request, which no later event will join:
    /// with the budget alone, 500 clients connecting at once had their
    /// upgrades and subscriptions answered 16 a turn, each turn another
    /// `epoll_wait`. (Raising the budget by one per socket read instead gave
    /// a turn that read 32 publishers 32 more fan-out sockets to write,
    /// fewer frames per `writev`: fan-out to 1,000 with 32 publishers lost
    /// 6–18 % of its deliveries per CPU-second with one shard.)
    /// Writing can serve a pipelined request, which can queue more; a few
    /// rounds take those too, and what such a request sends other shards
    /// is handed off before the round that writes its answer, as the turn
    /// does for the requests it read. Returns true when something is
    /// left, so the next turn starts at once.
    pub(super) fn write(&mut self, now: Instant) -> bool {
        let mut left = std::mem::take(&mut self.dirty);
        let mut round = std::mem::take(&mut self.round);
        let mut more = std::mem::take(&mut self.spare);
        let mut budget = WRITE_BUDGET;
        let mut batch = std::mem::take(&mut self.batch);
        for _ in 0..WRITE_ROUNDS {
            if self.core.has_mesh_out() || self.core.has_cluster_out() {
                self.settle_and_hand_off(now);
            }
            round.clear();
            round.append(&mut self.writes);
            round.append(&mut left);
            self.core.take_dirty(&mut more);
            round.append(&mut more);
            self.incus.take_dirty(&mut more);
            round.append(&mut more);
            self.viewers.take_dirty(&mut more);
            round.append(&mut more);
            if round.is_empty() {
                break;
            }
            batch.clear();
            for &key in &round {
                if key < crate::proto::pusher::xhr::TOKEN && self.answer_due.take(key) {
                    batch.push(key);
                } else if budget > 0 {
                    budget -= 1;
                    batch.push(key);
                } else {
                    left.push(key);
                }
            }
            for chunk in batch.chunks(WRITE_BUDGET) {
                self.send_together(chunk, now);
                for &key in chunk {
                    if key >= crate::proto::pusher::xhr::TOKEN {
                        // An HTTP-transport session: its receiver, if any.
                        if let Some(socket) = self.receiver_socket(key) {
                            self.write_socket(socket, now);
                        }
                        continue;
                    }
                    self.write_socket(key, now);
                }
            }
            if budget == 0 {
                break;
            }
        }
        batch.clear();
        self.batch = batch;
        round.clear();
        self.round = round;
        self.spare = more;
        self.dirty = left;
        !self.dirty.is_empty()
            || !self.writes.is_empty()
            || self.core.has_work()
            || self.incus.has_work()
    }

    /// Sends what the plain WebSockets and HTTP answers among `keys` have
    /// to write in one system call (see [`SendRing`]), before
    /// [`ShardLoop::write_socket`] goes over each: a socket written whole
    /// here is then only found done, one left with bytes (its buffer
    /// filled) is written there as without the ring. A socket whose send
    /// failed is closed, as after a failed `writev`; so is one whose send
    /// is unknown because the ring itself failed (its bytes may have left,
    /// and sending them again would corrupt the stream), after which the
    /// shard writes without the ring. TLS, Incus, console and HTTP-transport
    /// sockets are left to [`ShardLoop::write_socket`].
    fn send_together(&mut self, keys: &[u32], now: Instant) {
        let Some(ring) = self.send_ring.as_mut() else { return };
        for &key in keys {
            if key >= crate::proto::pusher::xhr::TOKEN {
                continue;
            }
            let Some(conn) = self.conns.get_mut(key as usize) else { continue };
            if conn.write_blocked || conn.link.is_tls() {
                continue;
            }
            let out = conn.out.get();
            let fd = conn.fd();
            let added = match conn.phase {
                Phase::Http => ring.add(key, fd, out.into_iter()),
                Phase::Pusher { key: ck, .. } => match self.core.outbox(ck) {
                    Some(outbox) => ring.add(key, fd, out.into_iter().chain(outbox.frames())),
                    None => ring.add(key, fd, out.into_iter()),
                },
                _ => false,
            };
            if !added && ring.is_full() {
                break;
            }
        }
        if ring.len() < 2 {
            // One socket: its own `writev` costs the same.
            ring.clear();
            return;
        }
        let (conns, core, counters) = (&mut self.conns, &mut self.core, &self.counters);
        let mut failed = Vec::new();
        let healthy = ring.submit(|key, result| {
            let mut n = match result {
                Ok(n) => n,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                    ) =>
                {
                    return;
                }
                Err(_) => {
                    failed.push(key);
                    return;
                }
            };
            let Some(conn) = conns.get_mut(key as usize) else { return };
            if n > 0 {
                conn.stalled_since = None;
            }
            let from_out = n.min(conn.out.len());
            conn.out.advance(from_out);
            n -= from_out;
            if n == 0 {
                return;
            }
            let Phase::Pusher { key: ck, .. } = conn.phase else { return };
            let Some(outbox) = core.outbox(ck) else { return };
            let consumed = outbox.consume(n);
            if let Admitted::App(app) = conn.admitted
                && consumed.deliveries > 0
            {
                let counters = counters.app(app as usize);
                counters.messages_out.add(consumed.deliveries);
                counters.bytes_out.add(consumed.delivered_bytes);
            }
        });
        if !healthy {
            tracing::warn!(shard = self.id, "the send ring failed; writing without it");
            self.send_ring = None;
        }
        for key in failed {
            self.close(key, now);
        }
    }

    pub(super) fn write_socket(&mut self, key: u32, now: Instant) {
        let Some(conn) = self.conns.get_mut(key as usize) else { return };
        if conn.write_blocked {
            return;
        }
        if matches!(conn.phase, Phase::Xhr { .. }) {
            return self.write_xhr(key, now);
        }
        let mut outcome = if conn.has_out() { conn.write_out() } else { Ok((0, Written::Done)) };
        if let Ok((progress, Written::Done)) = outcome {
            let outbox = match &conn.phase {
                Phase::Pusher { key: ck, .. } => self.core.outbox(*ck),
                Phase::Incus { key: sk, .. } => self.incus.outbox(*sk),
                Phase::Console { key: vk, .. } => self.viewers.outbox(*vk),
                _ => None,
            };
            if let Some(outbox) = outbox {
                outbox.unlist();
                let result = conn.write_outbox(outbox);
                if let Ok((_, _, Written::Done)) = result {
                    // An idle connection's queue is given back now, not at
                    // the next tick, by when a second's worth of new
                    // connections would hold theirs at once (their blocks,
                    // freed between long-lived ones, stayed in the RSS).
                    outbox.release_unless_delivering();
                }
                outcome = result.map(|(n, consumed, written)| {
                    if let Admitted::App(app) = conn.admitted
                        && consumed.deliveries > 0
                    {
                        let counters = self.counters.app(app as usize);
                        counters.messages_out.add(consumed.deliveries);
                        counters.bytes_out.add(consumed.delivered_bytes);
                    }
                    (progress + n, written)
                });
            }
        }
        match outcome {
            Err(_) => self.close(key, now),
            Ok((progress, Written::Blocked)) => {
                conn.write_blocked = true;
                if let Phase::Pusher { key: ck, .. } = conn.phase
                    && let Some(outbox) = self.core.outbox(ck)
                {
                    outbox.set_writer_blocked(true);
                }
                if progress > 0 || conn.stalled_since.is_none() {
                    conn.stalled_since = Some(Tick::of(now));
                }
                self.rearm(key);
            }
            Ok((_, Written::Done)) => {
                conn.stalled_since = None;
                self.written(key, now);
            }
        }
    }

    /// Everything pending is written: what comes next for the socket.
    pub(super) fn written(&mut self, key: u32, now: Instant) {
        let Some(conn) = self.conns.get_mut(key as usize) else { return };
        let next_request = conn.readable || !conn.inbuf.is_empty();
        match &conn.phase {
            Phase::Http if conn.close_after_write => self.close(key, now),
            Phase::Http => {
                // A response makes room for the next request.
                self.rearm(key);
                if next_request {
                    self.serve_http(key, now);
                }
            }
            Phase::Finishing => self.linger(key, now),
            Phase::Pusher { key: ck, .. } => {
                let done =
                    self.core.outbox(*ck).is_none_or(|o| o.closing().is_some() && o.is_empty());
                if done {
                    self.linger(key, now);
                } else {
                    self.rearm(key);
                }
            }
            Phase::Incus { key: sk, .. } => {
                let sk = *sk;
                if self.incus.closing(sk) && self.incus.outbox(sk).is_none_or(|o| o.is_empty()) {
                    self.linger(key, now);
                } else {
                    self.rearm(key);
                }
            }
            Phase::Console { key: vk, .. } => {
                let vk = *vk;
                if self.viewers.closing(vk) && self.viewers.outbox(vk).is_none_or(|o| o.is_empty())
                {
                    self.linger(key, now);
                } else {
                    self.rearm(key);
                }
            }
            Phase::Api { .. } | Phase::Poll { .. } | Phase::Xhr { .. } | Phase::Lingering => {
                self.rearm(key)
            }
        }
    }

    /// After our close frame: forgets the protocol side, sends FIN, and
    /// waits briefly for the peer's close and FIN, discarding input.
    pub(super) fn linger(&mut self, key: u32, now: Instant) {
        self.forget_protocol(key, now);
        let Some(conn) = self.conns.get_mut(key as usize) else { return };
        conn.phase = Phase::Lingering;
        sock::shutdown(conn.fd(), libc::SHUT_WR);
        let readable = conn.readable;
        self.set_phase_deadline(key, Some(now + CLOSE_LINGER));
        if readable {
            self.on_input(key, now);
        }
    }

    /// Forgets what the protocol state holds for the socket.
    pub(super) fn forget_protocol(&mut self, key: u32, now: Instant) {
        let Some(conn) = self.conns.get_mut(key as usize) else { return };
        let generation = conn.generation;
        match std::mem::replace(&mut conn.phase, Phase::Lingering) {
            Phase::Xhr { slot, .. } => self.xhr.detach(slot, key, generation, now),
            Phase::Pusher { key: ck, .. } => {
                // A vacate or member removal this causes is delayed from now.
                self.core.set_now(now);
                self.core.remove(ck);
            }
            Phase::Incus { key: sk, .. } => {
                self.incus.remove(sk);
                self.counters.incus.ws_disconnect.inc();
            }
            Phase::Console { key: vk, .. } => self.forget_viewer(vk),
            Phase::Api { pending, .. } => {
                for id in pending.ids() {
                    self.by_query.remove(&id);
                }
                pending.cancel(&mut self.core);
            }
            Phase::Poll { id, .. } => {
                self.by_poll.remove(&id);
                self.incus.cancel_poll(id, now);
                self.counters.incus.lp_disconnect.inc();
            }
            phase @ (Phase::Http | Phase::Finishing | Phase::Lingering) => conn.phase = phase,
        }
    }

    /// Closes the socket now, whatever it was doing.
    pub(super) fn close(&mut self, key: u32, now: Instant) {
        self.forget_protocol(key, now);
        if !self.conns.contains(key as usize) {
            return;
        }
        let conn = self.conns.remove(key as usize);
        // The slot's next socket starts unread.
        self.answer_due.take(key);
        if conn.armed.is_some() {
            self.timers.disarmed();
            self.drop_stale_timers();
        }
        self.admission.release_socket();
        match conn.admitted {
            Admitted::App(app) => self.admission.release(app),
            Admitted::Node => self.admission.release_node(),
            Admitted::No => {}
        }
    }

    pub(super) fn set_phase_deadline(&mut self, key: u32, at: Option<Instant>) {
        if let Some(conn) = self.conns.get_mut(key as usize) {
            conn.phase_deadline = at.map(Tick::of);
        }
        self.rearm(key);
    }

    /// Arms the socket's earliest deadline, unless it is armed already.
    pub(super) fn rearm(&mut self, key: u32) {
        let write_timeout = self.write_timeout;
        let Some(conn) = self.conns.get_mut(key as usize) else { return };
        let stall =
            conn.stalled_since.filter(|_| conn.write_blocked).map(|s| s.after(write_timeout));
        let next = match (conn.phase_deadline, stall) {
            (Some(a), Some(b)) => Some(if a.reached(b) { a } else { b }),
            (a, b) => a.or(b),
        };
        if next != conn.armed {
            let was_armed = conn.armed.is_some();
            conn.armed = next;
            match next {
                // Any time within days of now tells the tick's wrap period.
                Some(at) => {
                    self.timers.arm(at.start(self.next_tick), key, conn.generation, was_armed)
                }
                None => self.timers.disarmed(),
            }
            self.drop_stale_timers();
        }
    }

    /// Rebuilds the timer heap without its stale entries once they crowd
    /// it: each upgraded connection leaves its HTTP idle deadline behind,
    /// and each keep-alive request the one before, 24 bytes each until the
    /// deadline's time, and the heap's room after (issue #14).
    pub(super) fn drop_stale_timers(&mut self) {
        if !self.timers.crowded() {
            return;
        }
        let conns = &self.conns;
        self.timers.retain(|at, key, generation| {
            conns
                .get(key as usize)
                .is_some_and(|c| c.generation == generation && c.armed == Some(Tick::of(at)))
        });
    }
}
