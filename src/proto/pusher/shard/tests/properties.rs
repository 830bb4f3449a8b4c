//! Property tests: random sequences of connects, subscriptions (public,
//! private, presence), unsubscribes, publishes (HTTP API and client
//! events), closes and clock ticks, run on a node of 2 or 3 shards and
//! checked after every step against a model that knows nothing of shards,
//! owners or rings:
//! - each connection gets exactly the frames the model predicts: every
//!   event of a channel it is subscribed to once, in publish order (a burst
//!   of publishes from several shards keeps each shard's order), nothing
//!   from channels it left, never its own client events;
//! - node-wide subscription counts and presence rosters match;
//! - `channel_occupied`/`channel_vacated` and `member_added`/
//!   `member_removed` webhooks fire once per transition, vacates and
//!   removals after the app's delay and not at all when the channel or
//!   member is back within it.
//!
//! In the first property the rings move as in `Node::pump`, until the node
//! is quiet after each step (or after each burst). In the second they move
//! one message at a time in any order each ring's FIFO allows, interleaved
//! with the clients' steps (public and private channels, whose
//! subscriptions are local): each connection still gets exactly what the
//! shard it is on should deliver when each message arrives, events of one
//! channel from one shard in publish order, occupancy webhooks alternate
//! and settle to the truth, and counts match once the rings are quiet.

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;

use super::*;
use crate::core::{HookKind, WebhookConfig};

const DELAY_SECS: u64 = 2;
const CHANNELS: [&str; 4] = ["news", "private-a", "presence-p", "presence-q"];
const USERS: [&str; 3] = ["u1", "u2", "u3"];

/// One step. Numbers pick among what exists when the step runs (modulo its
/// count), so that a shrunk sequence stays meaningful and reads short.
#[derive(Debug, Clone)]
enum Op {
    Open {
        shard: usize,
    },
    Subscribe {
        conn: usize,
        channel: usize,
        user: usize,
    },
    Unsubscribe {
        conn: usize,
        channel: usize,
    },
    Publish {
        shard: usize,
        channel: usize,
        exclude: Option<usize>,
    },
    /// Several HTTP publishes, from any shards, before the rings move.
    Burst {
        publishes: Vec<(usize, usize)>,
    },
    ClientEvent {
        conn: usize,
        channel: usize,
    },
    Close {
        conn: usize,
    },
    Tick {
        secs: u64,
    },
}

/// Small numbers shrink to readable steps.
fn pick() -> impl Strategy<Value = usize> {
    0usize..8
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => pick().prop_map(|shard| Op::Open { shard }),
        5 => (pick(), pick(), pick())
            .prop_map(|(conn, channel, user)| Op::Subscribe { conn, channel, user }),
        2 => (pick(), pick())
            .prop_map(|(conn, channel)| Op::Unsubscribe { conn, channel }),
        3 => (pick(), pick(), proptest::option::weighted(0.3, pick()))
            .prop_map(|(shard, channel, exclude)| Op::Publish { shard, channel, exclude }),
        1 => proptest::collection::vec((pick(), pick()), 2..6)
            .prop_map(|publishes| Op::Burst { publishes }),
        2 => (pick(), pick())
            .prop_map(|(conn, channel)| Op::ClientEvent { conn, channel }),
        1 => pick().prop_map(|conn| Op::Close { conn }),
        1 => (1..=DELAY_SECS + 1).prop_map(|secs| Op::Tick { secs }),
    ]
}

fn app() -> AppConfig {
    let mut app = AppConfig::new("1", KEY, SECRET);
    app.client_events = true;
    // The rate limit is the session's, tested on its own; here it would
    // only refuse events the model expects.
    app.client_event_rate = 10_000;
    app.webhook_delay = Duration::from_secs(DELAY_SECS);
    app.webhooks = vec![WebhookConfig {
        url: "http://127.0.0.1:9/hooks".into(),
        event_types: [
            HookKind::ChannelOccupied,
            HookKind::ChannelVacated,
            HookKind::MemberAdded,
            HookKind::MemberRemoved,
        ]
        .into_iter()
        .collect(),
    }];
    app
}

fn quiet_node(shards: usize) -> Node {
    let mut node = node_with(shards, app());
    let quiet = Settings {
        // Ticks add up over a long sequence; pings are not what is tested.
        activity_timeout: Duration::from_secs(1 << 20),
        ..settings()
    };
    let apps = Arc::clone(node.shards[0].apps());
    node.shards =
        (0..shards).map(|i| Shard::new(i, shards, Arc::clone(&apps), quiet.clone())).collect();
    node.tick(0);
    node
}

/// What the model knows of one connection.
#[derive(Debug)]
struct MConn {
    c: C,
    socket_id: String,
    open: bool,
    /// Channel → the user id it is present as (presence channels).
    subs: BTreeMap<&'static str, Option<&'static str>>,
}

#[derive(Debug, Default)]
struct Model {
    now: u64,
    conns: Vec<MConn>,
    /// Occupancy webhook state per channel: announced occupied, and the
    /// time a held vacate is due.
    occupied: BTreeMap<&'static str, (bool, Option<u64>)>,
    /// The same for each (channel, user).
    members: BTreeMap<(&'static str, &'static str), (bool, Option<u64>)>,
    /// Presence rosters in order of arrival, as the API lists them.
    rosters: BTreeMap<&'static str, Vec<&'static str>>,
    next_event: u64,
}

/// What one step should leave: frames per connection (by model index) and
/// webhooks, each as a short readable line.
#[derive(Debug, Default)]
struct Expect {
    frames: BTreeMap<usize, Vec<String>>,
    hooks: Vec<String>,
    /// Bursts: checked for per-shard order rather than one global order.
    burst: bool,
}

impl Expect {
    fn frame(&mut self, conn: usize, line: String) {
        self.frames.entry(conn).or_default().push(line);
    }
}

impl Model {
    fn subscribers(&self, channel: &str) -> Vec<usize> {
        (0..self.conns.len())
            .filter(|&i| self.conns[i].open && self.conns[i].subs.contains_key(channel))
            .collect()
    }

    fn count(&self, channel: &str) -> usize {
        self.subscribers(channel).len()
    }

    /// Open connections present as `user` in `channel`.
    fn user_conns(&self, channel: &str, user: &str) -> usize {
        self.conns.iter().filter(|m| m.open && m.subs.get(channel) == Some(&Some(user))).count()
    }

    fn roster_line(&self, channel: &str) -> String {
        let mut ids = self.rosters.get(channel).cloned().unwrap_or_default();
        ids.sort_unstable();
        let ids = ids.join(",");
        format!("ok {channel} [{ids}]")
    }

    /// A subscription came (`+1`) or went: occupancy webhooks.
    fn occupancy(&mut self, channel: &'static str, before: usize, after: usize, e: &mut Expect) {
        let state = self.occupied.entry(channel).or_default();
        if before == 0 && after > 0 {
            if state.1.take().is_none() {
                state.0 = true;
                e.hooks.push(format!("channel_occupied {channel}"));
            }
        } else if before > 0 && after == 0 {
            state.1 = Some(self.now + DELAY_SECS);
        }
    }

    /// A user's first connection joined, or its last left.
    fn membership(
        &mut self,
        channel: &'static str,
        user: &'static str,
        joined: bool,
        e: &mut Expect,
    ) {
        let state = self.members.entry((channel, user)).or_default();
        if joined {
            if state.1.take().is_none() {
                state.0 = true;
                e.hooks.push(format!("member_added {channel} {user}"));
            }
            self.rosters.entry(channel).or_default().push(user);
        } else {
            state.1 = Some(self.now + DELAY_SECS);
            if let Some(r) = self.rosters.get_mut(channel) {
                r.retain(|u| *u != user);
            }
        }
    }

    fn leave(&mut self, i: usize, channel: &'static str, e: &mut Expect) {
        let before = self.count(channel);
        let Some(user) = self.conns[i].subs.remove(channel) else { return };
        self.occupancy(channel, before, before - 1, e);
        if let Some(user) = user
            && self.user_conns(channel, user) == 0
        {
            self.membership(channel, user, false, e);
            for s in self.subscribers(channel) {
                e.frame(s, format!("-{channel} {user}"));
            }
        }
    }

    fn publish_line(&mut self, from: usize, channel: &str) -> String {
        self.next_event += 1;
        format!("ev {channel} #{} s{from}", self.next_event)
    }

    fn tick(&mut self, secs: u64, e: &mut Expect) {
        self.now += secs;
        let now = self.now;
        for (channel, state) in &mut self.occupied {
            if state.1.is_some_and(|due| due <= now) {
                *state = (false, None);
                e.hooks.push(format!("channel_vacated {channel}"));
            }
        }
        for ((channel, user), state) in &mut self.members {
            if state.1.is_some_and(|due| due <= now) {
                *state = (false, None);
                e.hooks.push(format!("member_removed {channel} {user}"));
            }
        }
    }
}

/// A server frame as one line of the model's vocabulary.
fn line(frame: &Value) -> String {
    let event = frame["event"].as_str().unwrap_or_default();
    let channel = frame["channel"].as_str().unwrap_or_default();
    match event {
        "pusher_internal:subscription_succeeded" if channel.starts_with("presence-") => {
            let ids = data_of(frame)["presence"]["ids"].clone();
            let mut ids: Vec<&str> =
                ids.as_array().into_iter().flatten().filter_map(Value::as_str).collect();
            // Pusher promises no order of members.
            ids.sort_unstable();
            format!("ok {channel} [{}]", ids.join(","))
        }
        "pusher_internal:subscription_succeeded" => format!("ok {channel}"),
        "pusher_internal:member_added" => format!("+{channel} {}", data_of(frame)["user_id"]),
        "pusher_internal:member_removed" => format!("-{channel} {}", data_of(frame)["user_id"]),
        "pusher:connection_established" => event.into(),
        "pusher:error" => format!("error {}", frame["data"]["code"]),
        "" => format!("close {}", frame["close"]),
        _ if event.starts_with("client-") => {
            let from = frame["user_id"].as_str().map(|u| format!(" by {u}")).unwrap_or_default();
            format!("{event} {channel} {}{from}", frame["data"]["n"])
        }
        _ => format!("ev {channel} {}", frame["data"].as_str().unwrap_or_default()),
    }
    .replace('"', "")
}

fn hook_line(event: &ShardEvent) -> String {
    match event {
        ShardEvent::ChannelOccupied { channel, .. } => format!("channel_occupied {channel}"),
        ShardEvent::ChannelVacated { channel, .. } => format!("channel_vacated {channel}"),
        ShardEvent::MemberAdded { channel, user_id, .. } => {
            format!("member_added {channel} {user_id}")
        }
        ShardEvent::MemberRemoved { channel, user_id, .. } => {
            format!("member_removed {channel} {user_id}")
        }
        other => format!("unexpected {other:?}"),
    }
}

struct Run {
    node: Node,
    model: Model,
}

impl Run {
    fn new(shards: usize) -> Self {
        Self { node: quiet_node(shards), model: Model::default() }
    }

    fn now(&self) -> Instant {
        self.node.at(self.model.now)
    }

    /// The time every shard sees before a step, as the runtime sets it
    /// before each batch of ring messages.
    fn set_now(&mut self) {
        let now = self.now();
        for shard in &mut self.node.shards {
            shard.set_now(now);
        }
    }

    fn open_conns(&self) -> Vec<usize> {
        (0..self.model.conns.len()).filter(|&i| self.model.conns[i].open).collect()
    }

    fn pick_conn(&self, at: &usize) -> Option<usize> {
        let open = self.open_conns();
        (!open.is_empty()).then(|| open[at % open.len()])
    }

    fn step(&mut self, op: &Op) -> Result<(), TestCaseError> {
        self.set_now();
        let mut e = Expect::default();
        let shards = self.node.shards.len();
        let now = self.now();
        match op {
            Op::Open { shard } => {
                let shard = shard % shards;
                let key = self.node.shards[shard].open(0, 0, now, None);
                let c = C { shard, key };
                let socket_id = self.node.socket_id(c);
                self.model.conns.push(MConn { c, socket_id, open: true, subs: BTreeMap::new() });
                e.frame(self.model.conns.len() - 1, "pusher:connection_established".into());
            }
            Op::Subscribe { conn, channel, user } => {
                let Some(i) = self.pick_conn(conn) else { return Ok(()) };
                let channel = CHANNELS[channel % CHANNELS.len()];
                let user = USERS[user % USERS.len()];
                self.subscribe(i, channel, user, &mut e);
            }
            Op::Unsubscribe { conn, channel } => {
                let Some(i) = self.pick_conn(conn) else { return Ok(()) };
                let channel = CHANNELS[channel % CHANNELS.len()];
                let c = self.model.conns[i].c;
                let msg = json!({"event":"pusher:unsubscribe","data":{"channel":channel}});
                self.node.send_at(c, msg, now);
                self.model.leave(i, channel, &mut e);
            }
            Op::Publish { shard, channel, exclude } => {
                let from = shard % shards;
                let channel = CHANNELS[channel % CHANNELS.len()];
                // Any connection ever opened, closed ones included.
                let excluded = exclude.filter(|&x| x < self.model.conns.len());
                let socket = excluded.and_then(|x| self.model.conns[x].socket_id.parse().ok());
                let data = self.model.publish_line(from, channel);
                let payload = data.trim_start_matches(&format!("ev {channel} "));
                self.node.shards[from].publish(0, channel, "e", payload, socket, now);
                self.node.pump();
                for s in self.model.subscribers(channel) {
                    if Some(s) != excluded {
                        e.frame(s, data.clone());
                    }
                }
            }
            Op::Burst { publishes } => {
                e.burst = true;
                for (shard, channel) in publishes {
                    let from = shard % shards;
                    let channel = CHANNELS[channel % CHANNELS.len()];
                    let data = self.model.publish_line(from, channel);
                    let payload = data.trim_start_matches(&format!("ev {channel} "));
                    self.node.shards[from].publish(0, channel, "e", payload, None, now);
                    for s in self.model.subscribers(channel) {
                        e.frame(s, data.clone());
                    }
                }
                self.node.pump();
            }
            Op::ClientEvent { conn, channel } => {
                let Some(i) = self.pick_conn(conn) else { return Ok(()) };
                let channel = CHANNELS[channel % CHANNELS.len()];
                self.model.next_event += 1;
                let n = self.model.next_event;
                let c = self.model.conns[i].c;
                let msg = json!({"event":"client-x","channel":channel,"data":{"n":n}});
                self.node.send_at(c, msg, now);
                match self.model.conns[i].subs.get(channel) {
                    // Public channels take no client events (spec §6).
                    Some(_) if channel == "news" => e.frame(i, "error 4301".into()),
                    Some(user) => {
                        let by = user.map(|u| format!(" by {u}")).unwrap_or_default();
                        for s in self.model.subscribers(channel) {
                            if s != i {
                                e.frame(s, format!("client-x {channel} {n}{by}"));
                            }
                        }
                    }
                    None => e.frame(i, "error 4301".into()),
                }
            }
            Op::Close { conn } => {
                let Some(i) = self.pick_conn(conn) else { return Ok(()) };
                self.remove(i, &mut e);
            }
            Op::Tick { secs } => {
                self.model.tick(*secs, &mut e);
                self.node.tick(self.model.now);
            }
        }
        self.check(op, e)
    }

    /// Closes connection `i` outside the generated steps.
    fn close(&mut self, i: usize) -> Result<(), TestCaseError> {
        self.set_now();
        let mut e = Expect::default();
        self.remove(i, &mut e);
        self.check(&format!("closing conn {i} at the end"), e)
    }

    /// The socket is gone: the shard forgets the connection.
    fn remove(&mut self, i: usize, e: &mut Expect) {
        let c = self.model.conns[i].c;
        self.node.shards[c.shard].remove(c.key);
        self.node.pump();
        let channels: Vec<&'static str> = self.model.conns[i].subs.keys().copied().collect();
        for channel in channels {
            self.model.leave(i, channel, e);
        }
        self.model.conns[i].open = false;
    }

    fn subscribe(&mut self, i: usize, channel: &'static str, user: &'static str, e: &mut Expect) {
        let c = self.model.conns[i].c;
        let socket_id = self.model.conns[i].socket_id.clone();
        let now = self.now();
        let msg = if channel.starts_with("presence-") {
            let data = json!({"user_id": user, "user_info": {"name": user}}).to_string();
            let auth = sign(&format!("{socket_id}:{channel}:{data}"));
            json!({"event":"pusher:subscribe","data":{"channel":channel,"auth":auth,"channel_data":data}})
        } else if channel.starts_with("private-") {
            let auth = sign(&format!("{socket_id}:{channel}"));
            json!({"event":"pusher:subscribe","data":{"channel":channel,"auth":auth}})
        } else {
            json!({"event":"pusher:subscribe","data":{"channel":channel}})
        };
        self.node.send_at(c, msg, now);
        let presence = channel.starts_with("presence-");
        if self.model.conns[i].subs.contains_key(channel) {
            // Spec §5.3: confirmed again, counted once; a presence member
            // stays the user it joined as.
            let reply =
                if presence { self.model.roster_line(channel) } else { format!("ok {channel}") };
            e.frame(i, reply);
            return;
        }
        let before = self.model.count(channel);
        let member = presence.then_some(user);
        if let Some(user) = member
            && self.model.user_conns(channel, user) == 0
        {
            for s in self.model.subscribers(channel) {
                e.frame(s, format!("+{channel} {user}"));
            }
            self.model.membership(channel, user, true, e);
        }
        self.model.conns[i].subs.insert(channel, member);
        self.model.occupancy(channel, before, before + 1, e);
        let reply =
            if presence { self.model.roster_line(channel) } else { format!("ok {channel}") };
        e.frame(i, reply);
    }

    fn check(&mut self, op: &dyn std::fmt::Debug, mut e: Expect) -> Result<(), TestCaseError> {
        for i in 0..self.model.conns.len() {
            let m = &self.model.conns[i];
            let got: Vec<String> =
                if m.open { self.node.take(m.c).iter().map(line).collect() } else { Vec::new() };
            let mut want = e.frames.remove(&i).unwrap_or_default();
            if e.burst {
                check_burst(i, &got, &want)?;
            } else {
                // One step gives a connection at most one frame per
                // channel; channels have no order between them (a close
                // leaves them in any order).
                let mut got = got;
                got.sort();
                want.sort();
                prop_assert_eq!(&got, &want, "frames of conn {} after {:?}", i, op);
            }
        }
        let mut hooks = Vec::new();
        for shard in &mut self.node.shards {
            shard.drain_events(|ev| hooks.push(hook_line(&ev)));
        }
        hooks.sort();
        e.hooks.sort();
        prop_assert_eq!(hooks, e.hooks, "webhooks after {:?}", op);
        self.check_counts(op)
    }

    /// Node-wide counts and rosters, asked of a different shard each time.
    fn check_counts(&mut self, op: &dyn std::fmt::Debug) -> Result<(), TestCaseError> {
        let asker = self.model.conns.len() % self.node.shards.len();
        let id = self.node.shards[asker].start_query(0, &CHANNELS);
        self.node.pump();
        let counts = answer_counts(self.node.shards[asker].take_answer(id));
        for (channel, got) in CHANNELS.iter().zip(counts) {
            let want = self.model.count(channel);
            prop_assert_eq!(got.subscriptions, want, "subscriptions of {} after {:?}", channel, op);
            if channel.starts_with("presence-") {
                let mut users: Vec<String> =
                    self.node.users(asker, channel).iter().map(|u| u.to_string()).collect();
                let mut roster: Vec<String> = self
                    .model
                    .rosters
                    .get(channel)
                    .into_iter()
                    .flatten()
                    .map(|u| u.to_string())
                    .collect();
                users.sort();
                roster.sort();
                prop_assert_eq!(users, roster, "roster of {} after {:?}", channel, op);
            }
        }
        Ok(())
    }
}

/// A burst's frames: the same set as the model's, each once, and the
/// events of each (publishing shard, channel) in publish order.
fn check_burst(conn: usize, got: &[String], want: &[String]) -> Result<(), TestCaseError> {
    let got_set: BTreeSet<&String> = got.iter().collect();
    let want_set: BTreeSet<&String> = want.iter().collect();
    prop_assert_eq!(got.len(), got_set.len(), "conn {} got a duplicate: {:?}", conn, got);
    prop_assert_eq!(got_set, want_set, "frames of conn {} after a burst", conn);
    let sources: BTreeSet<&str> = want.iter().filter_map(|l| l.rsplit(' ').next()).collect();
    for source in sources {
        for channel in CHANNELS {
            let of = |lines: &[String]| -> Vec<String> {
                let (head, tail) = (format!("ev {channel} "), format!(" {source}"));
                lines
                    .iter()
                    .filter(|l| l.starts_with(&head) && l.ends_with(&tail))
                    .cloned()
                    .collect()
            };
            prop_assert_eq!(
                of(got),
                of(want),
                "order of {} from {} at conn {}",
                channel,
                source,
                conn
            );
        }
    }
    Ok(())
}

proptest! {
    #[test]
    fn every_subscriber_gets_each_event_once_in_order_and_webhooks_match_the_model(
        shards in 2usize..=3,
        ops in proptest::collection::vec(op(), 1..60),
    ) {
        let mut run = Run::new(shards);
        for op in &ops {
            run.step(op)?;
        }
        // Everyone leaves and the delay passes: every occupied channel and
        // every member is reported gone, once.
        while let Some(&i) = run.open_conns().first() {
            run.close(i)?;
        }
        run.step(&Op::Tick { secs: DELAY_SECS })?;
        for (channel, (occupied, due)) in &run.model.occupied {
            prop_assert!(!occupied && due.is_none(), "{} left occupied", channel);
        }
    }
}

/// Steps of the interleaved run: what clients and the API do, and the
/// rings moving one message at a time in any order a ring allows (each
/// ring is FIFO; rings are independent).
#[derive(Debug, Clone)]
enum Step {
    Open {
        shard: usize,
    },
    Subscribe {
        conn: usize,
        channel: usize,
    },
    Unsubscribe {
        conn: usize,
        channel: usize,
    },
    Publish {
        shard: usize,
        channel: usize,
        exclude: Option<usize>,
    },
    ClientEvent {
        conn: usize,
        channel: usize,
    },
    Close {
        conn: usize,
    },
    /// Moves the head of the `ring`th non-empty ring to its shard.
    Move {
        ring: usize,
    },
    Tick,
}

/// Channels whose subscriptions are local (no owner round trip).
const LOCAL: [&str; 2] = ["news", "private-a"];

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        2 => pick().prop_map(|shard| Step::Open { shard }),
        3 => (pick(), pick()).prop_map(|(conn, channel)| Step::Subscribe { conn, channel }),
        2 => (pick(), pick()).prop_map(|(conn, channel)| Step::Unsubscribe { conn, channel }),
        3 => (pick(), pick(), proptest::option::weighted(0.3, pick()))
            .prop_map(|(shard, channel, exclude)| Step::Publish { shard, channel, exclude }),
        2 => (pick(), pick()).prop_map(|(conn, channel)| Step::ClientEvent { conn, channel }),
        1 => pick().prop_map(|conn| Step::Close { conn }),
        8 => pick().prop_map(|ring| Step::Move { ring }),
        1 => Just(Step::Tick),
    ]
}

/// A node whose rings the test moves by hand.
struct Interleaved {
    node: Node,
    /// `from * shards + to`.
    rings: Vec<std::collections::VecDeque<ShardMsg>>,
    conns: Vec<MConn>,
    now: u64,
    next_event: u64,
    /// Frames each connection should have been sent since the last check.
    expect: BTreeMap<usize, Vec<String>>,
    /// Every event line each connection got, for the order check.
    history: BTreeMap<usize, Vec<String>>,
    /// Occupancy webhooks per channel, in the order raised.
    hooks: BTreeMap<String, Vec<&'static str>>,
}

impl Interleaved {
    fn new(shards: usize) -> Self {
        Self {
            node: quiet_node(shards),
            rings: (0..shards * shards).map(|_| Default::default()).collect(),
            conns: Vec::new(),
            now: 0,
            next_event: 0,
            expect: BTreeMap::new(),
            history: BTreeMap::new(),
            hooks: BTreeMap::new(),
        }
    }

    fn shards(&self) -> usize {
        self.node.shards.len()
    }

    /// What the shards queued for each other goes onto the rings.
    fn collect(&mut self) {
        let n = self.shards();
        for (from, shard) in self.node.shards.iter_mut().enumerate() {
            let rings = &mut self.rings;
            // As the event loop would find them: settled when nothing waits
            // in any ring to this shard.
            let settled = (0..n).all(|f| rings[f * n + from].is_empty());
            shard.drain_mesh_out(settled, |to, msg| rings[from * n + to].push_back(msg));
        }
    }

    fn pick_conn(&self, at: usize) -> Option<usize> {
        let open: Vec<usize> = (0..self.conns.len()).filter(|&i| self.conns[i].open).collect();
        (!open.is_empty()).then(|| open[at % open.len()])
    }

    /// Connections on `shard` subscribed to `channel`, but `exclude`.
    fn local_subscribers(&self, shard: usize, channel: &str, exclude: Option<usize>) -> Vec<usize> {
        (0..self.conns.len())
            .filter(|&i| {
                let m = &self.conns[i];
                m.open && m.c.shard == shard && m.subs.contains_key(channel) && Some(i) != exclude
            })
            .collect()
    }

    fn expect(&mut self, conns: Vec<usize>, line: &str) {
        for i in conns {
            self.expect.entry(i).or_default().push(line.to_owned());
        }
    }

    fn run(&mut self, step: &Step) -> Result<(), TestCaseError> {
        let now = self.node.at(self.now);
        for shard in &mut self.node.shards {
            shard.set_now(now);
        }
        let shards = self.shards();
        match *step {
            Step::Open { shard } => {
                let shard = shard % shards;
                let key = self.node.shards[shard].open(0, 0, now, None);
                let c = C { shard, key };
                let socket_id = self.node.socket_id(c);
                self.conns.push(MConn { c, socket_id, open: true, subs: BTreeMap::new() });
                self.expect(vec![self.conns.len() - 1], "pusher:connection_established");
            }
            Step::Subscribe { conn, channel } => {
                let Some(i) = self.pick_conn(conn) else { return Ok(()) };
                let channel = LOCAL[channel % LOCAL.len()];
                let (c, socket_id) = (self.conns[i].c, self.conns[i].socket_id.clone());
                let auth = if channel.starts_with("private-") {
                    sign(&format!("{socket_id}:{channel}"))
                } else {
                    String::new()
                };
                let msg =
                    json!({"event":"pusher:subscribe","data":{"channel":channel,"auth":auth}});
                self.node.shards[c.shard].handle_text(c.key, msg.to_string().as_bytes(), now);
                self.conns[i].subs.insert(channel, None);
                self.expect(vec![i], &format!("ok {channel}"));
            }
            Step::Unsubscribe { conn, channel } => {
                let Some(i) = self.pick_conn(conn) else { return Ok(()) };
                let channel = LOCAL[channel % LOCAL.len()];
                let c = self.conns[i].c;
                let msg = json!({"event":"pusher:unsubscribe","data":{"channel":channel}});
                self.node.shards[c.shard].handle_text(c.key, msg.to_string().as_bytes(), now);
                self.conns[i].subs.remove(channel);
            }
            Step::Publish { shard, channel, exclude } => {
                let from = shard % shards;
                let channel = LOCAL[channel % LOCAL.len()];
                let excluded = exclude.filter(|&x| x < self.conns.len());
                let socket = excluded.and_then(|x| self.conns[x].socket_id.parse().ok());
                self.next_event += 1;
                let payload = format!("#{} s{from}", self.next_event);
                self.node.shards[from].publish(0, channel, "e", &payload, socket, now);
                let local = self.local_subscribers(from, channel, excluded);
                self.expect(local, &format!("ev {channel} {payload}"));
            }
            Step::ClientEvent { conn, channel } => {
                let Some(i) = self.pick_conn(conn) else { return Ok(()) };
                let channel = LOCAL[channel % LOCAL.len()];
                self.next_event += 1;
                let n = self.next_event;
                let c = self.conns[i].c;
                let msg = json!({"event":"client-x","channel":channel,"data":{"n":n}});
                self.node.shards[c.shard].handle_text(c.key, msg.to_string().as_bytes(), now);
                if channel == "news" || !self.conns[i].subs.contains_key(channel) {
                    self.expect(vec![i], "error 4301");
                } else {
                    let local = self.local_subscribers(c.shard, channel, Some(i));
                    self.expect(local, &format!("client-x {channel} {n}"));
                }
            }
            Step::Close { conn } => {
                let Some(i) = self.pick_conn(conn) else { return Ok(()) };
                let c = self.conns[i].c;
                self.node.shards[c.shard].remove(c.key);
                self.conns[i].open = false;
                self.conns[i].subs.clear();
            }
            Step::Move { ring } => {
                let busy: Vec<usize> =
                    (0..self.rings.len()).filter(|&r| !self.rings[r].is_empty()).collect();
                if busy.is_empty() {
                    return Ok(());
                }
                let r = busy[ring % busy.len()];
                self.move_one(r);
            }
            Step::Tick => {
                self.now += 1;
                self.node.tick(self.now);
            }
        }
        self.collect();
        self.check(step)
    }

    /// Hands the head of ring `r` to its shard, expecting what a `Deliver`
    /// brings to the connections subscribed there at this moment.
    fn move_one(&mut self, r: usize) {
        let to = r % self.shards();
        let Some(msg) = self.rings[r].pop_front() else { return };
        if let ShardMsg::Deliver { channel, frame, exclude, .. } = &msg {
            let excluded = exclude
                .and_then(|id| self.conns.iter().position(|m| m.socket_id == id.to_string()));
            let line = line(&decode(frame));
            let local = self.local_subscribers(to, channel, excluded);
            self.expect(local, &line);
        }
        self.node.shards[to].handle_mesh(msg);
    }

    fn check(&mut self, step: &dyn std::fmt::Debug) -> Result<(), TestCaseError> {
        for i in 0..self.conns.len() {
            let c = self.conns[i].c;
            let got: Vec<String> = if self.conns[i].open {
                self.node.take(c).iter().map(line).collect()
            } else {
                Vec::new()
            };
            let want = self.expect.remove(&i).unwrap_or_default();
            prop_assert_eq!(&got, &want, "frames of conn {} after {:?}", i, step);
            self.history.entry(i).or_default().extend(got);
        }
        let mut raised = Vec::new();
        for shard in &mut self.node.shards {
            shard.drain_events(|e| raised.push(e));
        }
        for e in raised {
            let (channel, kind) = match e {
                ShardEvent::ChannelOccupied { channel, .. } => (channel, "occupied"),
                ShardEvent::ChannelVacated { channel, .. } => (channel, "vacated"),
                other => return Err(TestCaseError::fail(format!("unexpected {other:?}"))),
            };
            let seen = self.hooks.entry(channel.to_string()).or_default();
            let want = if seen.last() == Some(&"occupied") { "vacated" } else { "occupied" };
            prop_assert_eq!(
                kind,
                want,
                "{} webhooks alternate: {:?} after {:?}",
                channel,
                seen,
                step
            );
            seen.push(kind);
        }
        Ok(())
    }

    /// Moves every ring until all are empty.
    fn settle(&mut self) -> Result<(), TestCaseError> {
        for _ in 0..10_000 {
            let Some(r) = (0..self.rings.len()).find(|&r| !self.rings[r].is_empty()) else {
                return Ok(());
            };
            self.move_one(r);
            self.collect();
            self.check(&"settling")?;
        }
        Err(TestCaseError::fail("the rings did not settle"))
    }
}

proptest! {
    #[test]
    fn interleaved_rings_deliver_each_event_once_per_shard_order_and_occupancy_settles(
        shards in 2usize..=3,
        steps in proptest::collection::vec(step(), 1..80),
    ) {
        let mut run = Interleaved::new(shards);
        for step in &steps {
            run.run(step)?;
        }
        run.settle()?;
        // Node-wide counts, once the rings are quiet.
        let id = run.node.shards[0].start_query(0, &LOCAL);
        run.collect();
        run.settle()?;
        let counts = answer_counts(run.node.shards[0].take_answer(id));
        for (channel, got) in LOCAL.iter().zip(counts) {
            let want = run.conns.iter().filter(|m| m.open && m.subs.contains_key(channel)).count();
            prop_assert_eq!(got.subscriptions, want, "subscriptions of {}", channel);
            // Past the delay, the last occupancy webhook tells the truth.
            let last = run.hooks.get(*channel).and_then(|h| h.last().copied());
            if want > 0 {
                prop_assert_eq!(last, Some("occupied"), "{} is occupied", channel);
            }
        }
        // Events from one shard on one channel arrive in publish order.
        for (conn, lines) in &run.history {
            let mut last: BTreeMap<(String, String), u64> = BTreeMap::new();
            for l in lines.iter().filter(|l| l.starts_with("ev ")) {
                let parts: Vec<&str> = l.split(' ').collect();
                let n: u64 = parts[2].trim_start_matches('#').parse().map_err(|_| TestCaseError::fail(l.clone()))?;
                let key = (parts[1].to_owned(), parts[3].to_owned());
                let before = last.insert(key, n);
                prop_assert!(before.is_none_or(|b| b < n), "conn {} got {} out of order", conn, l);
            }
        }
        // Everyone leaves; past the delay every channel is vacated once.
        for i in 0..run.conns.len() {
            if run.conns[i].open {
                run.run(&Step::Close { conn: 0 })?;
            }
        }
        run.settle()?;
        for _ in 0..=DELAY_SECS {
            run.run(&Step::Tick)?;
        }
        for (channel, seen) in &run.hooks {
            prop_assert_eq!(seen.last(), Some(&"vacated"), "{} ends vacated", channel);
        }
    }
}
