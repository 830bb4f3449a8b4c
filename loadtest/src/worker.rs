//! One worker process: holds its share of the connections on a single
//! thread, records what arrives, and talks to the coordinator by JSON lines
//! (commands on stdin, reports on stdout). A process holds at most 20,000
//! open files here, so large runs are spread over several workers, each
//! connecting from its own loopback source address.

use std::{
    cell::{Cell, RefCell},
    net::{IpAddr, SocketAddr},
    os::fd::AsRawFd,
    rc::Rc,
    time::Duration,
};

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::{TcpSocket, TcpStream},
    sync::{Semaphore, mpsc},
};

use crate::{
    procstat::{mono_ns, own_cpu_secs},
    wire,
};

/// What one worker is asked to do.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Plan {
    /// Worker number (for logs).
    pub index: usize,
    /// Server host (an IP address).
    pub host: String,
    /// Server port.
    pub port: u16,
    /// Local address to connect from, if any.
    pub source: Option<String>,
    /// App key.
    pub key: String,
    /// App secret, to sign private and presence subscriptions as an auth endpoint would.
    pub secret: String,
    /// Connections this worker opens.
    pub connections: usize,
    /// Global number of this worker's first connection.
    pub first_conn: usize,
    /// Every channel of the run; connection `g` subscribes `channels[g % len]`.
    pub channels: Vec<String>,
    /// Events the run will publish; event `s` goes to `channels[s % len]`.
    pub events: u64,
    /// Connection attempts in flight at once.
    pub concurrency: usize,
    /// Limit for one connection to be subscribed.
    pub connect_timeout_ms: u64,
    /// Report delivery progress (for flow-controlled publishing).
    pub progress: bool,
    /// Speak Incus on `/socket` (authenticate as `u<g>`) instead of Pusher.
    #[serde(default)]
    pub incus: bool,
    /// Ports of the cluster's nodes, when there are several: connection `g`
    /// goes to the node [`node_of`] gives it, instead of to `port`.
    #[serde(default)]
    pub nodes: Vec<u16>,
    /// With several nodes, every `pin_every`-th channel has all its
    /// subscribers on one node (0: none); see [`node_of`].
    #[serde(default)]
    pub pin_every: usize,
}

impl Plan {
    fn port_of(&self, g: usize) -> u16 {
        match self.nodes.len() {
            0 => self.port,
            n => self.nodes[node_of(g, self.channels.len(), n, self.pin_every)],
        }
    }
}

/// The node (index into the node list) that connection `g` connects to.
/// Connection `g` subscribes channel `c = g % channels` as its channel's
/// `j = g / channels`-th subscriber. Subscribers of a channel go round the
/// nodes (`j % nodes`), so one channel's subscribers, and a single
/// channel's fan-out, spread evenly; a pinned channel (`c % pin_every ==
/// 0`) keeps all of them on node `(c / pin_every) % nodes`, so the other
/// nodes must receive none of its events. Coordinator and workers share
/// this one rule.
pub fn node_of(g: usize, channels: usize, nodes: usize, pin_every: usize) -> usize {
    let channels = channels.max(1);
    if nodes <= 1 {
        return 0;
    }
    let (c, j) = (g % channels, g / channels);
    if pin_every > 0 && c % pin_every == 0 { (c / pin_every) % nodes } else { j % nodes }
}

/// What a worker says on stdout.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Line {
    /// All connections tried.
    Ready {
        /// Connections subscribed.
        subscribed: usize,
        /// Connections that failed to connect or subscribe.
        failed: usize,
        /// First few failure reasons.
        errors: Vec<String>,
        /// From the first attempt to the last subscription.
        connect_secs: f64,
        /// This worker's CPU time so far: the cost of connecting.
        cpu_secs: f64,
    },
    /// Events `0..complete` reached every subscriber of this worker.
    Progress {
        /// Length of the fully delivered prefix.
        complete: u64,
    },
    /// Running counts for the progress line and the time series, sent
    /// every [`COUNTS_EVERY`] while they change.
    Counts {
        /// Connections subscribed so far.
        subscribed: usize,
        /// Connections that failed so far.
        failed: usize,
        /// Stamped events received so far, duplicates excluded.
        delivered: u64,
    },
    /// Churn finished.
    Churned,
    /// The final account.
    Report(Box<Report>),
}

/// A worker's final account.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Report {
    /// Stamped events received, duplicates excluded.
    pub delivered: u64,
    /// Stamped events received again on one connection.
    pub duplicates: u64,
    /// Deliveries this worker should have had.
    pub expected: u64,
    /// Connections closed after they were subscribed.
    pub drops: u64,
    /// Close codes seen on dropped connections, with counts.
    pub close_codes: Vec<(u16, u64)>,
    /// Server pings answered.
    pub pings: u64,
    /// `pusher:error` and other failures after connecting.
    pub errors: u64,
    /// First few of them.
    pub error_samples: Vec<String>,
    /// Publish→receive latency per delivery, µs: (value, count).
    pub latency_us: Vec<(u64, u64)>,
    /// Deliveries per event.
    pub seq_count: Vec<u32>,
    /// Slowest delivery per event, µs.
    pub seq_max_us: Vec<u64>,
    /// Unsubscribe+subscribe round trips during churn, µs.
    pub join_us: Vec<(u64, u64)>,
    /// The first subscribe's three waits, µs: TCP connect, upgrade request
    /// to `connection_established`, subscribe to its success.
    #[serde(default)]
    pub connect_phases_us: [Vec<(u64, u64)>; 3],
    /// Churns completed.
    pub churns: u64,
    /// `pusher_internal:member_added` received.
    pub member_added: u64,
    /// `pusher_internal:member_removed` received.
    pub member_removed: u64,
    /// This worker's CPU time.
    pub cpu_secs: f64,
}

/// How often a worker reports its running counts.
pub const COUNTS_EVERY: Duration = Duration::from_millis(100);

struct State {
    report: Report,
    /// Connections subscribed and failed so far.
    subscribed: usize,
    failed: usize,
    latency: Histogram<u64>,
    join: Histogram<u64>,
    connect_phases: [Histogram<u64>; 3],
    /// Subscribed connections of this worker per channel.
    chan_subs: Vec<u32>,
    complete: u64,
    close_codes: Vec<(u16, u64)>,
}

impl State {
    fn error(&mut self, e: String) {
        self.report.errors += 1;
        if self.report.error_samples.len() < 5 {
            self.report.error_samples.push(e);
        }
    }

    fn advance(&mut self) -> u64 {
        let n = self.chan_subs.len().max(1) as u64;
        while self.complete < self.report.seq_count.len() as u64 {
            let want = self.chan_subs[(self.complete % n) as usize];
            if self.report.seq_count[self.complete as usize] < want {
                break;
            }
            self.complete += 1;
        }
        self.complete
    }
}

fn histogram() -> Histogram<u64> {
    // 1 µs to 10 minutes at 3 significant digits; these bounds are valid.
    Histogram::new_with_bounds(1, 600_000_000, 3).unwrap_or_else(|_| unreachable!("valid bounds"))
}

fn dump(h: &Histogram<u64>) -> Vec<(u64, u64)> {
    h.iter_recorded().map(|v| (v.value_iterated_to(), v.count_at_value())).collect()
}

/// Runs a worker to completion.
/// Reads the plan from stdin's first line (the commands follow it).
pub fn read_plan() -> Result<Plan, String> {
    let mut line = String::new();
    std::io::stdin().read_line(&mut line).map_err(|e| e.to_string())?;
    serde_json::from_str(&line).map_err(|e| e.to_string())
}

pub fn run(plan: Plan) -> std::io::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, work(plan))
}

fn say(line: &Line) {
    if let Ok(s) = serde_json::to_string(line) {
        println!("{s}");
    }
}

async fn work(plan: Plan) -> std::io::Result<()> {
    let plan = Rc::new(plan);
    let st = Rc::new(RefCell::new(State {
        report: Report {
            seq_count: vec![0; plan.events as usize],
            seq_max_us: vec![0; plan.events as usize],
            ..Report::default()
        },
        latency: histogram(),
        join: histogram(),
        connect_phases: [histogram(), histogram(), histogram()],
        subscribed: 0,
        failed: 0,
        chan_subs: vec![0; plan.channels.len()],
        complete: 0,
        close_codes: Vec::new(),
    }));
    {
        let st = st.clone();
        tokio::task::spawn_local(async move {
            let mut last = (0, 0, 0);
            loop {
                tokio::time::sleep(COUNTS_EVERY).await;
                let now = {
                    let s = st.borrow();
                    (s.subscribed, s.failed, s.report.delivered)
                };
                if now != last {
                    last = now;
                    let (subscribed, failed, delivered) = now;
                    say(&Line::Counts { subscribed, failed, delivered });
                }
            }
        });
    }
    let sem = Rc::new(Semaphore::new(plan.concurrency.max(1)));
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<Result<(), String>>();
    let mut churners = Vec::with_capacity(plan.connections);
    let started = std::time::Instant::now();
    for i in 0..plan.connections {
        let (tx, rx) = mpsc::unbounded_channel::<()>();
        churners.push(tx);
        tokio::task::spawn_local(connection(
            plan.first_conn + i,
            plan.clone(),
            st.clone(),
            sem.clone(),
            done_tx.clone(),
            rx,
        ));
    }
    drop(done_tx);
    let (mut subscribed, mut failed, mut errors) = (0, 0, Vec::new());
    let mut last_ok = started;
    while subscribed + failed < plan.connections {
        match done_rx.recv().await {
            Some(Ok(())) => {
                subscribed += 1;
                st.borrow_mut().subscribed = subscribed;
                last_ok = std::time::Instant::now();
            }
            Some(Err(e)) => {
                failed += 1;
                st.borrow_mut().failed = failed;
                if errors.len() < 5 {
                    errors.push(e);
                }
            }
            None => break,
        }
    }
    say(&Line::Ready {
        subscribed,
        failed,
        errors,
        connect_secs: (last_ok - started).as_secs_f64(),
        cpu_secs: own_cpu_secs(),
    });
    // Subscribers connected when publishing starts are the ones owed every event.
    let owed: Vec<u32> = st.borrow().chan_subs.clone();

    if plan.progress {
        let st = st.clone();
        tokio::task::spawn_local(async move {
            let mut last = u64::MAX;
            loop {
                tokio::time::sleep(Duration::from_millis(5)).await;
                let c = st.borrow_mut().advance();
                if c != last {
                    last = c;
                    say(&Line::Progress { complete: c });
                }
            }
        });
    }

    let mut stdin = BufReader::new(tokio::io::stdin()).lines();
    while let Some(cmd) = stdin.next_line().await? {
        let mut words = cmd.split_whitespace();
        match words.next() {
            Some("churn") => {
                let per_sec: f64 = words.next().and_then(|w| w.parse().ok()).unwrap_or(100.0);
                let secs: f64 = words.next().and_then(|w| w.parse().ok()).unwrap_or(5.0);
                churn(&churners, per_sec, secs).await;
                say(&Line::Churned);
            }
            Some("stop") => {
                // The coordinator says how many events it managed to publish.
                let published: u64 =
                    words.next().and_then(|w| w.parse().ok()).unwrap_or(plan.events);
                let n = owed.len().max(1) as u64;
                st.borrow_mut().report.expected = (0..published.min(plan.events))
                    .map(|q| u64::from(owed[(q % n) as usize]))
                    .sum();
                break;
            }
            None => break,
            Some(other) => st.borrow_mut().error(format!("unknown command {other}")),
        }
    }
    let mut s = st.borrow_mut();
    s.report.latency_us = dump(&s.latency);
    s.report.join_us = dump(&s.join);
    s.report.connect_phases_us = s.connect_phases.each_ref().map(dump);
    s.report.close_codes = std::mem::take(&mut s.close_codes);
    s.report.cpu_secs = own_cpu_secs();
    let report = std::mem::take(&mut s.report);
    say(&Line::Report(Box::new(report)));
    Ok(())
}

/// Asks connections, round robin, to leave and rejoin at `per_sec` for `secs`.
async fn churn(churners: &[mpsc::UnboundedSender<()>], per_sec: f64, secs: f64) {
    if churners.is_empty() || per_sec <= 0.0 {
        return;
    }
    let total = (per_sec * secs).ceil() as usize;
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / per_sec));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    for i in 0..total {
        tick.tick().await;
        let _ = churners[i % churners.len()].send(());
    }
}

async fn open(plan: &Plan, port: u16) -> Result<TcpStream, String> {
    let ip: IpAddr = plan.host.parse().map_err(|e| format!("host {}: {e}", plan.host))?;
    let sock = TcpSocket::new_v4().map_err(|e| e.to_string())?;
    if let Some(src) = &plan.source {
        let src: IpAddr = src.parse().map_err(|e| format!("source {src}: {e}"))?;
        // Choose the port at connect time from the whole 4-tuple space, so
        // one source address is not limited to one set of ephemeral ports.
        let on: libc::c_int = 1;
        // SAFETY: valid socket fd, option value of the right size.
        unsafe {
            libc::setsockopt(
                sock.as_raw_fd(),
                libc::IPPROTO_IP,
                libc::IP_BIND_ADDRESS_NO_PORT,
                (&on as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        sock.bind(SocketAddr::new(src, 0)).map_err(|e| format!("bind {src}: {e}"))?;
    }
    let stream =
        sock.connect(SocketAddr::new(ip, port)).await.map_err(|e| format!("connect: {e}"))?;
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

/// One connection: handshake, subscribe, then read until the worker exits.
async fn connection(
    g: usize,
    plan: Rc<Plan>,
    st: Rc<RefCell<State>>,
    sem: Rc<Semaphore>,
    done: mpsc::UnboundedSender<Result<(), String>>,
    mut churn: mpsc::UnboundedReceiver<()>,
) {
    let chan_idx = g % plan.channels.len().max(1);
    let channel = plan.channels.get(chan_idx).cloned().unwrap_or_default();
    let permit = sem.acquire().await;
    let limit = Duration::from_millis(plan.connect_timeout_ms);
    let mut conn = match tokio::time::timeout(limit, Conn::establish(g, &plan, &channel)).await {
        Ok(Ok((c, phases))) => {
            let mut s = st.borrow_mut();
            for (h, us) in s.connect_phases.iter_mut().zip(phases) {
                if let Some(us) = us {
                    let _ = h.record(us.max(1));
                }
            }
            c
        }
        Ok(Err(e)) => {
            let _ = done.send(Err(e));
            return;
        }
        Err(_) => {
            let _ = done.send(Err("timed out connecting and subscribing".into()));
            return;
        }
    };
    drop(permit);
    st.borrow_mut().chan_subs[chan_idx] += 1;
    let _ = done.send(Ok(()));
    let joined = Cell::new(None::<u64>);
    let mut seen = wire::SeqWindow::default();
    loop {
        tokio::select! {
            msg = conn.next_text() => match msg {
                Ok(Msg::Text(t)) => {
                    let pong = record(&st, &mut seen, &joined, conn.text(&t));
                    if pong && conn.send_text(wire::PONG).await.is_err() {
                        break;
                    }
                }
                Ok(Msg::Ping(payload)) => {
                    st.borrow_mut().report.pings += 1;
                    if conn.send_frame(10, &payload).await.is_err() {
                        break;
                    }
                }
                Ok(Msg::Close(code)) => {
                    let mut s = st.borrow_mut();
                    s.report.drops += 1;
                    match s.close_codes.iter_mut().find(|(c, _)| *c == code) {
                        Some((_, n)) => *n += 1,
                        None => s.close_codes.push((code, 1)),
                    }
                    break;
                }
                Err(_) => {
                    st.borrow_mut().report.drops += 1;
                    break;
                }
            },
            Some(()) = churn.recv() => {
                if joined.get().is_some() {
                    continue;
                }
                joined.set(Some(mono_ns()));
                let sub = conn.subscribe_msg(g, &plan, &channel);
                if conn.send_text(&wire::unsubscribe(&channel)).await.is_err()
                    || conn.send_text(&sub).await.is_err()
                {
                    break;
                }
            }
        }
    }
    st.borrow_mut().chan_subs[chan_idx] -= 1;
}

/// Accounts for one text message; true when it is a `pusher:ping` to answer.
fn record(
    st: &RefCell<State>,
    seen: &mut wire::SeqWindow,
    joined: &Cell<Option<u64>>,
    text: &[u8],
) -> bool {
    let mut s = st.borrow_mut();
    if let Some((seq, sent)) = wire::find_stamp(text) {
        let us = mono_ns().saturating_sub(sent) / 1000;
        if !seen.insert(seq) {
            s.report.duplicates += 1;
            return false;
        }
        s.report.delivered += 1;
        let _ = s.latency.record(us.max(1));
        if let Some(c) = s.report.seq_count.get_mut(seq as usize) {
            *c += 1;
            let m = &mut s.report.seq_max_us[seq as usize];
            *m = (*m).max(us);
        }
        return false;
    }
    match event_name(text).as_deref() {
        Some("pusher:ping") => {
            s.report.pings += 1;
            return true;
        }
        Some("pusher_internal:subscription_succeeded") => {
            if let Some(t0) = joined.take() {
                let _ = s.join.record((mono_ns().saturating_sub(t0) / 1000).max(1));
                s.report.churns += 1;
            }
        }
        Some("pusher_internal:member_added") => s.report.member_added += 1,
        Some("pusher_internal:member_removed") => s.report.member_removed += 1,
        Some("pusher:error") | Some("pusher:subscription_error") => {
            s.error(String::from_utf8_lossy(text).into_owned());
        }
        _ => {}
    }
    false
}

fn event_name(text: &[u8]) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(text).ok()?;
    Some(v.get("event")?.as_str()?.to_owned())
}

enum Msg {
    /// A text message, read with [`Conn::text`] before the next call.
    Text(Text),
    /// A WebSocket ping's payload, to be answered by the caller: answering
    /// inside `next_text` could be cut mid-write when a `select!` drops it.
    Ping(Vec<u8>),
    Close(u16),
}

/// Where a message's text is: in the read buffer (the usual, unfragmented
/// case, read in place) or reassembled from fragments.
#[derive(Clone)]
enum Text {
    InBuf(std::ops::Range<usize>),
    Reassembled,
}

struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
    /// Bytes of `buf` already consumed.
    at: usize,
    frag: Vec<u8>,
    assembled: Vec<u8>,
    socket_id: String,
    mask_seed: u32,
}

impl Conn {
    /// Connects and subscribes; also returns how long each of the three
    /// round trips waited, µs: TCP connect, upgrade request to
    /// `connection_established` (to the 101 for Incus), subscribe to its
    /// success (none for Incus, which answers nothing).
    async fn establish(
        g: usize,
        plan: &Plan,
        channel: &str,
    ) -> Result<(Conn, [Option<u64>; 3]), String> {
        let us = |from: u64, to: u64| Some(to.saturating_sub(from) / 1000);
        let port = plan.port_of(g);
        let t0 = mono_ns();
        let mut stream = open(plan, port).await?;
        let t1 = mono_ns();
        let mut t2 = t1;
        let mut t3 = t1;
        stream
            .write_all(&wire::upgrade_request(
                &plan.host,
                port,
                (!plan.incus).then_some(plan.key.as_str()),
            ))
            .await
            .map_err(|e| e.to_string())?;
        let mut buf = Vec::with_capacity(1024);
        let head = loop {
            if let Some(r) = wire::upgrade_response(&buf) {
                break r.map_err(|line| format!("upgrade refused: {line}"))?;
            }
            if stream.read_buf(&mut buf).await.map_err(|e| e.to_string())? == 0 {
                return Err("closed during the upgrade".into());
            }
        };
        let mut conn = Conn {
            stream,
            buf,
            at: head,
            frag: Vec::new(),
            assembled: Vec::new(),
            socket_id: String::new(),
            mask_seed: g as u32,
        };
        if plan.incus {
            let upgraded = mono_ns();
            // Incus answers nothing on success: the socket is live once sent.
            conn.send_text(&wire::incus_authenticate(&format!("u{g}")))
                .await
                .map_err(|e| e.to_string())?;
            return Ok((conn, [us(t0, t1), us(t1, upgraded), None]));
        }
        loop {
            let text = match conn.next_text().await.map_err(|e| e.to_string())? {
                Msg::Text(t) => conn.text(&t).to_vec(),
                Msg::Ping(p) => {
                    conn.send_frame(10, &p).await.map_err(|e| e.to_string())?;
                    continue;
                }
                Msg::Close(code) => return Err(format!("closed with {code} before subscribing")),
            };
            let v: serde_json::Value = serde_json::from_slice(&text).map_err(|e| e.to_string())?;
            match v.get("event").and_then(|e| e.as_str()) {
                Some("pusher:connection_established") => {
                    t2 = mono_ns();
                    let data = v.get("data").and_then(|d| d.as_str()).unwrap_or("{}");
                    let d: serde_json::Value =
                        serde_json::from_str(data).map_err(|e| e.to_string())?;
                    conn.socket_id =
                        d.get("socket_id").and_then(|s| s.as_str()).unwrap_or("").to_owned();
                    let sub = conn.subscribe_msg(g, plan, channel);
                    conn.send_text(&sub).await.map_err(|e| e.to_string())?;
                    t3 = mono_ns();
                }
                Some("pusher_internal:subscription_succeeded") => {
                    return Ok((conn, [us(t0, t1), us(t1, t2), us(t3, mono_ns())]));
                }
                Some("pusher:error") | Some("pusher:subscription_error") => {
                    return Err(String::from_utf8_lossy(&text).into_owned());
                }
                _ => {}
            }
        }
    }

    fn subscribe_msg(&self, g: usize, plan: &Plan, channel: &str) -> String {
        if channel.starts_with("presence-") {
            let data = format!(r#"{{"user_id":"u{g}"}}"#);
            let auth =
                wire::channel_auth(&plan.key, &plan.secret, &self.socket_id, channel, Some(&data));
            wire::subscribe(channel, Some(&auth), Some(&data))
        } else if channel.starts_with("private-") {
            let auth = wire::channel_auth(&plan.key, &plan.secret, &self.socket_id, channel, None);
            wire::subscribe(channel, Some(&auth), None)
        } else {
            wire::subscribe(channel, None, None)
        }
    }

    async fn send_text(&mut self, text: &str) -> std::io::Result<()> {
        self.send_frame(1, text.as_bytes()).await
    }

    async fn send_frame(&mut self, opcode: u8, payload: &[u8]) -> std::io::Result<()> {
        self.mask_seed = self.mask_seed.wrapping_add(1);
        self.stream.write_all(&wire::client_frame(opcode, payload, self.mask_seed)).await
    }

    fn text(&self, t: &Text) -> &[u8] {
        match t {
            Text::InBuf(r) => &self.buf[r.clone()],
            Text::Reassembled => &self.assembled,
        }
    }

    /// The next complete message. Cancel-safe: bytes read stay in `buf`.
    async fn next_text(&mut self) -> std::io::Result<Msg> {
        loop {
            while let Some(f) = wire::parse_frame(&self.buf[self.at..]) {
                let (start, end) = (self.at + f.start, self.at + f.end);
                if let Some(m) = f.mask {
                    for (i, b) in self.buf[start..end].iter_mut().enumerate() {
                        *b ^= m[i % 4];
                    }
                }
                self.at = end;
                match f.opcode {
                    0..=2 if f.fin && self.frag.is_empty() => {
                        return Ok(Msg::Text(Text::InBuf(start..end)));
                    }
                    0..=2 => {
                        self.frag.extend_from_slice(&self.buf[start..end]);
                        if f.fin {
                            self.assembled = std::mem::take(&mut self.frag);
                            return Ok(Msg::Text(Text::Reassembled));
                        }
                    }
                    8 => {
                        let p = &self.buf[start..end];
                        let code =
                            if p.len() >= 2 { u16::from_be_bytes([p[0], p[1]]) } else { 1005 };
                        return Ok(Msg::Close(code));
                    }
                    9 => return Ok(Msg::Ping(self.buf[start..end].to_vec())),
                    _ => {}
                }
            }
            if self.at > 0 {
                self.buf.drain(..self.at);
                self.at = 0;
            }
            if self.buf.capacity() - self.buf.len() < 512 {
                self.buf.reserve(4096);
            }
            if self.stream.read_buf(&mut self.buf).await? == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
        }
    }
}
