//! The debug console on a shard's sockets: the page, the viewers'
//! WebSockets, the events the shard raised handed to every viewer of the
//! app on any shard, the counters once a second, and publishes from the
//! page. None of it ever waits: viewers' outboxes drop what does not fit,
//! and events for other shards are dropped while the rings are behind
//! (each viewer counts what it missed, [`crate::proto::console`]).

use super::*;
use crate::{
    core::AppIdx,
    proto::{
        console::{self, ConsoleEvent},
        rest::console as access,
    },
};

/// Messages waiting in this shard's outlets beyond which console events
/// are not sent to other shards: the rings are for delivery first.
const CONSOLE_BACKLOG: usize = MAX_MESH_BACKLOG / 4;

impl ShardLoop {
    /// `GET /console`: the page.
    pub(super) fn console_page(&self, req: &Request) -> Response {
        if !matches!(req.method, Method::Get | Method::Head) {
            return Response::text(405, "Method not allowed");
        }
        Response::typed("text/html; charset=utf-8", console::PAGE)
    }

    /// `/console/stream`: checks the signature, then upgrades the socket to
    /// a viewer of the app.
    pub(super) fn upgrade_console(&mut self, key: u32, req: &Request, now: Instant) {
        if req.method != Method::Get {
            let keep_alive = req.keep_alive && self.draining.is_none();
            self.reply(key, response::text(405, "Method not allowed", keep_alive), keep_alive);
            return;
        }
        let app = match access::authorize(&self.apps, req.path(), req.query(), unix_now()) {
            Ok(app) => app,
            Err(e) => {
                self.reply(key, response::text(e.status(), &e.to_string(), false), false);
                return;
            }
        };
        let Ok(accept) = ws_handshake::accept(req) else {
            self.reply(key, response::text(400, "Not a websocket handshake", false), false);
            return;
        };
        if self.draining.is_some() {
            self.reply(key, response::text(503, "Draining", false), false);
            return;
        }
        if self.admission.admit_node().is_err() {
            self.counters.refused.inc();
            self.reply(key, response::text(503, "Over capacity", false), false);
            return;
        }
        let vk = self.viewers.open(key, app);
        self.watch.add(self.id, app);
        let conn = &mut self.conns[key as usize];
        conn.admitted = Admitted::Node;
        conn.out.set(accept);
        conn.phase = Phase::Console { key: vk, decoder: Decoder::new() };
        self.writes.push(key);
        self.set_phase_deadline(key, None);
        // The first counters at once, not after up to a second.
        self.start_console_stats(app);
        self.decode_frames(key, now);
    }

    /// A frame from the page: a publish, in the HTTP API's body format.
    pub(super) fn console_message(&mut self, vk: ViewerKey, text: &[u8], now: Instant) {
        let Some(app) = self.viewers.app(vk) else { return };
        let result = access::publish_request(&self.apps, app, text);
        let result = match result {
            Ok(_) if self.backlog > MAX_MESH_BACKLOG => {
                Err(ApiError::Unavailable("Server busy, retry later".into()))
            }
            other => other,
        };
        if let Ok(trigger) = &result {
            for channel in &trigger.channels {
                self.core.publish(app, channel, &trigger.name, &trigger.data, None, now);
            }
        }
        let reply = access::publish_reply(result.as_ref());
        self.viewers.send(vk, codec::text_frame(&reply));
    }

    /// Forgets a viewer whose socket is done.
    pub(super) fn forget_viewer(&mut self, vk: ViewerKey) {
        if let Some(app) = self.viewers.remove(vk) {
            self.watch.remove(self.id, app);
        }
    }

    /// Hands the console events the shard raised to this shard's viewers
    /// and to the other shards with viewers of the app.
    pub(super) fn flush_console(&mut self) {
        let mut events: Vec<(AppIdx, ConsoleEvent)> = Vec::new();
        self.core.drain_console(|e| events.push(e));
        if events.is_empty() {
            return;
        }
        let time_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        let behind = self.backlog > CONSOLE_BACKLOG;
        for (app, event) in events {
            let (seq, frame) = self.viewers.stamp(app, &event, self.id, time_ms);
            self.viewers.deliver(app, self.id, seq, &frame);
            if behind {
                // The viewers elsewhere see the gap in this shard's numbers.
                continue;
            }
            let from = self.id as u16;
            for (to, outlet) in self.links.outlets.iter_mut().enumerate() {
                if let Some(outlet) = outlet.as_mut()
                    && to != self.id
                    && self.watch.on(to, app)
                {
                    outlet.push(ShardMsg::Console { app, from, seq, frame: frame.clone() });
                }
            }
        }
    }

    /// Once a second: asks the node for the channels of each app this
    /// shard has viewers of; the answer sends the counters.
    pub(super) fn console_tick(&mut self) {
        // The counters wait while the rings are behind: they are for delivery.
        if self.viewers.is_empty() || self.backlog > CONSOLE_BACKLOG {
            return;
        }
        let mut apps: Vec<AppIdx> = self.viewers.each().map(|(_, app, _)| app).collect();
        apps.sort_unstable();
        apps.dedup();
        for app in apps {
            if !self.console_queries.values().any(|&a| a == app) {
                self.start_console_stats(app);
            }
        }
    }

    fn start_console_stats(&mut self, app: AppIdx) {
        let id = self.core.start_list(app, "");
        self.console_queries.insert(id, app);
    }

    /// A channel list the console asked for is in: sends each viewer of its
    /// app the counters. Returns false when the query is not the console's.
    pub(super) fn console_stats(&mut self, id: u64) -> bool {
        let Some(app) = self.console_queries.remove(&id) else { return false };
        let channels = match self.core.take_answer(id) {
            Some(Answer::List(list)) => list.len(),
            _ => 0,
        };
        let snapshot = self.metrics.snapshot();
        let (connections, messages_out) =
            snapshot.apps.get(app as usize).map_or((0, 0), |a| (a.connections(), a.messages_out));
        let viewers: Vec<(ViewerKey, u64)> =
            self.viewers.each().filter(|&(_, a, _)| a == app).map(|(k, _, m)| (k, m)).collect();
        for (vk, missed) in viewers {
            let json = console::stats_json(connections, channels, messages_out, missed);
            self.viewers.send(vk, codec::text_frame(&json));
        }
        true
    }
}
