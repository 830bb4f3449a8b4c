//! The coordinator: spawns workers, runs one scenario, measures the server.

use std::{
    cell::{Cell, RefCell},
    net::Ipv4Addr,
    process::Stdio,
    rc::Rc,
    time::{Duration, Instant},
};

use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
    process::{Child, ChildStdin, Command},
    sync::Notify,
};

use crate::{
    procstat::{self, Sample, mono_ns},
    progress::{Point, Printer, Totals},
    publish::Publisher,
    report::{self, Outcome},
    worker::{Line, Plan, Report},
};

/// How often the coordinator samples the run (progress line, time series).
pub const SAMPLE_EVERY: Duration = Duration::from_millis(200);

/// Which scenario.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scenario {
    /// Subscribed connections held.
    Hold,
    /// One channel, many subscribers.
    Fanout,
    /// Many channels, few subscribers each.
    Sparse,
    /// Presence joins and leaves.
    Presence,
    /// Fan-out with events published through Redis.
    Redis,
}

/// Parsed command line.
#[derive(Debug, Clone)]
pub struct Options {
    pub scenario: Scenario,
    pub host: String,
    pub port: u16,
    pub app_id: String,
    pub key: String,
    pub secret: String,
    /// Server processes (one per node), for CPU time and RSS.
    pub pids: Vec<u32>,
    pub connections: usize,
    pub channels: usize,
    pub per_channel: usize,
    pub events: u64,
    pub rate: f64,
    pub window: u64,
    pub publishers: usize,
    pub size: usize,
    pub secs: f64,
    pub churn_rate: f64,
    pub workers: usize,
    pub source_base: Option<Ipv4Addr>,
    pub concurrency: usize,
    pub drain_secs: f64,
    pub redis: String,
    pub redis_channel: String,
    pub incus: bool,
    pub json: Option<String>,
    pub label: Option<String>,
    /// Ports of several nodes of one cluster: subscribers spread over them,
    /// the publisher on the first (empty: one server on `port`).
    pub nodes: Vec<u16>,
    /// Every `pin_every`-th channel has its subscribers on one node only.
    pub pin_every: usize,
    /// Redis whose `INFO` is read before and after the publishing phase.
    pub redis_info: Option<String>,
}

impl Options {
    /// Reads `SCENARIO --name value ...`.
    pub fn parse(args: &[String]) -> Result<Options, String> {
        let scenario = match args.first().map(String::as_str) {
            Some("hold") => Scenario::Hold,
            Some("fanout") => Scenario::Fanout,
            Some("sparse") => Scenario::Sparse,
            Some("presence") => Scenario::Presence,
            Some("redis") => Scenario::Redis,
            other => return Err(format!("unknown scenario {other:?}; run with --help")),
        };
        let mut o = Options {
            scenario,
            host: "127.0.0.1".into(),
            port: 6001,
            app_id: "1".into(),
            key: "app-key".into(),
            secret: "app-secret".into(),
            pids: Vec::new(),
            connections: 1000,
            channels: match scenario {
                Scenario::Presence | Scenario::Hold => 100,
                _ => 1000,
            },
            per_channel: 10,
            events: 1000,
            rate: 0.0,
            window: 32,
            publishers: 4,
            size: 100,
            secs: 5.0,
            churn_rate: 200.0,
            workers: 2,
            source_base: Some(Ipv4Addr::new(127, 0, 0, 2)),
            concurrency: 256,
            drain_secs: 10.0,
            redis: "127.0.0.1:6379".into(),
            redis_channel: String::new(),
            incus: false,
            json: None,
            label: None,
            nodes: Vec::new(),
            pin_every: 0,
            redis_info: None,
        };
        let mut it = args[1..].iter();
        while let Some(name) = it.next() {
            let value = it.next().ok_or_else(|| format!("{name} needs a value"))?;
            let num = |what: &str| -> Result<f64, String> {
                value
                    .parse::<f64>()
                    .ok()
                    .filter(|v| v.is_finite() && *v >= 0.0)
                    .ok_or_else(|| format!("{what}: not a number: {value}"))
            };
            match name.as_str() {
                "--host" => o.host = value.clone(),
                "--port" => o.port = value.parse().map_err(|_| format!("--port: {value}"))?,
                "--app-id" => o.app_id = value.clone(),
                "--key" => o.key = value.clone(),
                "--secret" => o.secret = value.clone(),
                "--pid" => o.pids = list(value).map_err(|_| format!("--pid: {value}"))?,
                "--nodes" => o.nodes = list(value).map_err(|_| format!("--nodes: {value}"))?,
                "--pin-every" => o.pin_every = num(name)? as usize,
                "--redis-info" => o.redis_info = Some(value.clone()),
                "--connections" => o.connections = num(name)? as usize,
                "--channels" => o.channels = num(name)? as usize,
                "--per-channel" => o.per_channel = num(name)? as usize,
                "--events" => o.events = num(name)? as u64,
                "--rate" => o.rate = num(name)?,
                // Receivers tell duplicates over a 128-event window (wire::SeqWindow).
                "--window" => o.window = (num(name)? as u64).clamp(1, 64),
                "--publishers" => o.publishers = (num(name)? as usize).clamp(1, 64),
                "--size" => o.size = num(name)? as usize,
                "--secs" => o.secs = num(name)?,
                "--churn-rate" => o.churn_rate = num(name)?,
                "--workers" => o.workers = (num(name)? as usize).clamp(1, 64),
                "--source-base" if value == "none" => o.source_base = None,
                "--source-base" => {
                    o.source_base =
                        Some(value.parse().map_err(|_| format!("--source-base: {value}"))?)
                }
                "--concurrency" => o.concurrency = (num(name)? as usize).max(1),
                "--drain-secs" => o.drain_secs = num(name)?,
                "--redis" => o.redis = value.clone(),
                "--redis-channel" => o.redis_channel = value.clone(),
                "--protocol" => {
                    o.incus = match value.as_str() {
                        "pusher" => false,
                        "incus" => true,
                        _ => return Err(format!("--protocol: pusher or incus, got {value}")),
                    }
                }
                "--json" => o.json = Some(value.clone()),
                "--label" => o.label = Some(value.clone()),
                _ => return Err(format!("unknown option {name}; run with --help")),
            }
        }
        if let Some(&first) = o.nodes.first() {
            if !matches!(o.scenario, Scenario::Fanout | Scenario::Sparse) {
                return Err("--nodes works with fanout and sparse".into());
            }
            o.port = first;
        }
        if o.redis_channel.is_empty() {
            o.redis_channel = if o.incus { "Incus" } else { "stapes:pusher" }.into();
        }
        if o.incus && !matches!(o.scenario, Scenario::Hold | Scenario::Redis) {
            return Err(
                "--protocol incus works with hold and redis (Incus has no HTTP publish)".into()
            );
        }
        if o.host.parse::<std::net::IpAddr>().is_err() {
            return Err(format!("--host must be an IP address, got {}", o.host));
        }
        Ok(o)
    }

    /// How many nodes the subscribers spread over.
    pub fn node_count(&self) -> usize {
        self.nodes.len().max(1)
    }

    fn channel_names(&self) -> Vec<String> {
        match self.scenario {
            Scenario::Hold => (0..self.channels.max(1)).map(|i| format!("hold-{i}")).collect(),
            Scenario::Fanout | Scenario::Redis => vec!["fanout".into()],
            Scenario::Sparse => (0..self.channels.max(1)).map(|i| format!("sparse-{i}")).collect(),
            Scenario::Presence => {
                (0..self.channels.max(1)).map(|i| format!("presence-churn-{i}")).collect()
            }
        }
    }

    fn total_connections(&self) -> usize {
        match self.scenario {
            Scenario::Sparse | Scenario::Presence => self.channels.max(1) * self.per_channel,
            _ => self.connections,
        }
    }

    fn publishes(&self) -> bool {
        matches!(self.scenario, Scenario::Fanout | Scenario::Sparse | Scenario::Redis)
    }
}

/// What the coordinator knows of one worker.
#[derive(Default)]
struct Seen {
    ready: Option<(usize, usize, Vec<String>, f64)>,
    connect_cpu: f64,
    complete: u64,
    churned: bool,
    report: Option<Report>,
    exited: bool,
    /// The worker's running counts: subscribed, failed, delivered.
    counts: (usize, usize, u64),
}

/// What the sampler reads and the scenario writes while it runs.
struct Live {
    phase: Cell<&'static str>,
    /// Events the server accepted so far.
    published: Rc<Cell<u64>>,
    stop: Cell<bool>,
    points: RefCell<Vec<Point>>,
}

impl Live {
    fn phase(&self, phase: &'static str) {
        self.phase.set(phase);
    }
}

struct Worker {
    child: Child,
    stdin: ChildStdin,
}

/// Runs one scenario and prints its outcome.
pub fn run(o: Options) -> Result<(), String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let local = tokio::task::LocalSet::new();
    let outcome = local.block_on(&rt, scenario(&o))?;
    print!("{}", report::summary(&outcome));
    if let Some(path) = &o.json {
        let text = serde_json::to_string_pretty(&outcome).map_err(|e| e.to_string())?;
        std::fs::write(path, text).map_err(|e| format!("{path}: {e}"))?;
    }
    Ok(())
}

/// A comma-separated list of numbers.
fn list<T: std::str::FromStr>(value: &str) -> Result<Vec<T>, T::Err> {
    value.split(',').map(|v| v.trim().parse()).collect()
}

/// The server's CPU and RSS: every node's summed, if all can be read.
fn server(o: &Options) -> Option<Sample> {
    servers(&o.pids)
}

fn servers(pids: &[u32]) -> Option<Sample> {
    if pids.is_empty() {
        return None;
    }
    pids.iter().try_fold(Sample::default(), |acc, &p| {
        let s = procstat::sample(p)?;
        Some(Sample { cpu_secs: acc.cpu_secs + s.cpu_secs, rss_bytes: acc.rss_bytes + s.rss_bytes })
    })
}

/// Each node's CPU seconds, where readable.
fn node_cpu(o: &Options) -> Vec<Option<f64>> {
    o.pids.iter().map(|&p| procstat::sample(p).map(|s| s.cpu_secs)).collect()
}

/// Each node's cluster events received so far.
async fn nodes_received(o: &Options) -> Result<Vec<u64>, String> {
    let mut out = Vec::with_capacity(o.nodes.len());
    for &port in &o.nodes {
        out.push(crate::cluster::events_received(&o.host, port).await?);
    }
    Ok(out)
}

async fn scenario(o: &Options) -> Result<Outcome, String> {
    let channels = o.channel_names();
    let total = o.total_connections();
    let events = if o.publishes() { o.events } else { 0 };
    let rss_before = server(o);
    let tcp_before = procstat::tcp_mem_bytes();
    let slab_before = procstat::slab_bytes();
    let live = Rc::new(Live {
        phase: Cell::new("connecting"),
        published: Rc::new(Cell::new(0)),
        stop: Cell::new(false),
        points: RefCell::new(Vec::new()),
    });
    let mut worker_pids = Vec::new();

    let seen: Rc<RefCell<Vec<Seen>>> =
        Rc::new(RefCell::new((0..o.workers).map(|_| Seen::default()).collect()));
    let notify = Rc::new(Notify::new());
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut workers = Vec::new();
    let per = total.div_ceil(o.workers);
    let connect_cpu_before = server(o);
    let connect_started = Instant::now();
    for w in 0..o.workers {
        let first = w * per;
        let n = per.min(total.saturating_sub(first));
        let plan = Plan {
            index: w,
            host: o.host.clone(),
            port: o.port,
            source: o.source_base.map(|b| Ipv4Addr::from(u32::from(b) + w as u32).to_string()),
            key: o.key.clone(),
            secret: o.secret.clone(),
            connections: n,
            first_conn: first,
            channels: channels.clone(),
            events,
            concurrency: o.concurrency,
            connect_timeout_ms: 30_000,
            progress: o.publishes(),
            incus: o.incus,
            nodes: o.nodes.clone(),
            pin_every: o.pin_every,
        };
        // The plan goes in as stdin's first line: with one channel per
        // connection its list passes the kernel's 128 KiB limit on one
        // argument.
        let mut plan = serde_json::to_string(&plan).map_err(|e| e.to_string())?;
        plan.push('\n');
        let mut child = Command::new(&exe)
            .arg("worker")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("spawn worker: {e}"))?;
        let (Some(mut stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            return Err("worker pipes missing".into());
        };
        stdin.write_all(plan.as_bytes()).await.map_err(|e| format!("worker plan: {e}"))?;
        let (seen, notify) = (seen.clone(), notify.clone());
        tokio::task::spawn_local(async move {
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let Ok(line) = serde_json::from_str::<Line>(&line) else { continue };
                let mut s = seen.borrow_mut();
                match line {
                    Line::Ready { subscribed, failed, errors, connect_secs, cpu_secs } => {
                        s[w].ready = Some((subscribed, failed, errors, connect_secs));
                        s[w].connect_cpu = cpu_secs;
                    }
                    Line::Progress { complete } => s[w].complete = complete,
                    Line::Counts { subscribed, failed, delivered } => {
                        s[w].counts = (subscribed, failed, delivered);
                    }
                    Line::Churned => s[w].churned = true,
                    Line::Report(r) => s[w].report = Some(*r),
                }
                drop(s);
                notify.notify_waiters();
            }
            seen.borrow_mut()[w].exited = true;
            notify.notify_waiters();
        });
        worker_pids.extend(child.id());
        workers.push(Worker { child, stdin });
    }
    let totals = Totals { connections: total as u64, events };
    let sampler = tokio::task::spawn_local(sample(
        o.pids.clone(),
        worker_pids,
        totals,
        connect_started,
        live.clone(),
        seen.clone(),
    ));

    // Every wait below is bounded: by the connect timeout of each
    // connection, the drain limit, or an explicit deadline.
    let all_ready = |s: &Vec<Seen>| s.iter().all(|w| w.ready.is_some() || w.exited);
    wait_until(&seen, &notify, Duration::from_secs(120), all_ready).await?;
    let connect_wall = connect_started.elapsed().as_secs_f64();
    let connect_cpu_after = server(o);

    let mut out = Outcome::new(o, total, events);
    {
        let s = seen.borrow();
        for w in s.iter() {
            if let Some((sub, failed, errors, secs)) = &w.ready {
                out.subscribed += sub;
                out.failed += failed;
                out.connect_secs = out.connect_secs.max(*secs);
                out.errors.extend(errors.iter().take(3).cloned());
            }
            out.worker_connect_cpu_secs += w.connect_cpu;
        }
    }
    out.connect_wall_secs = connect_wall;
    out.connects_per_sec =
        if out.connect_secs > 0.0 { out.subscribed as f64 / out.connect_secs } else { 0.0 };
    if let (Some(a), Some(b)) = (connect_cpu_before, connect_cpu_after) {
        out.server_connect_cpu_secs = Some(b.cpu_secs - a.cpu_secs);
    }

    // Let the server settle before reading its memory (allocator, task state).
    live.phase("settling");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let at_rest = server(o);
    let tcp_after = procstat::tcp_mem_bytes();
    let slab_after = procstat::slab_bytes();
    if let (Some(a), Some(b)) = (rss_before, at_rest) {
        out.server_rss_before = Some(a.rss_bytes);
        out.server_rss_connected = Some(b.rss_bytes);
        if out.subscribed > 0 {
            out.rss_per_conn =
                Some((b.rss_bytes as f64 - a.rss_bytes as f64) / out.subscribed as f64);
        }
    }
    out.tcp_mem_per_conn = (out.subscribed > 0)
        .then(|| (tcp_after as f64 - tcp_before as f64) / out.subscribed as f64);
    if let (Some(a), Some(b)) = (slab_before, slab_after) {
        out.slab_per_conn =
            (out.subscribed > 0).then(|| (b as f64 - a as f64) / out.subscribed as f64);
    }

    let multi = o.nodes.len() > 1;
    let received_before = if multi { Some(nodes_received(o).await?) } else { None };
    let redis_before = match &o.redis_info {
        Some(addr) => Some(crate::cluster::RedisStats::read(addr).await?),
        None => None,
    };
    let own_before = procstat::own_cpu_secs();
    let measure_started = Instant::now();
    let nodes_before = node_cpu(o);
    let cpu_before = server(o);
    match o.scenario {
        Scenario::Hold => {
            live.phase("holding");
            tokio::time::sleep(Duration::from_secs_f64(o.secs)).await
        }
        Scenario::Presence => {
            live.phase("churning");
            let per_worker = o.churn_rate / o.workers as f64;
            for w in workers.iter_mut() {
                let cmd = format!("churn {per_worker} {}\n", o.secs);
                w.stdin.write_all(cmd.as_bytes()).await.map_err(|e| e.to_string())?;
            }
            let deadline = Duration::from_secs_f64(o.secs + o.drain_secs);
            wait_until(&seen, &notify, deadline, |s| s.iter().all(|w| w.churned || w.exited))
                .await?;
            // Joins still in flight when the last churn was sent.
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        Scenario::Fanout | Scenario::Sparse | Scenario::Redis => {
            live.phase("publishing");
            let publish_started = Instant::now();
            let (published, publish_error) =
                publish(o, &channels, &seen, &notify, live.published.clone()).await;
            out.publish_secs = publish_started.elapsed().as_secs_f64();
            out.published = published;
            if let Some(e) = publish_error {
                out.errors.push(e);
            }
            live.phase("draining");
            // Wait for the last deliveries (bounded by --drain-secs).
            let deadline = Duration::from_secs_f64(o.drain_secs);
            let _ = wait_until(&seen, &notify, deadline, |s| {
                s.iter().all(|w| w.complete >= published || w.exited)
            })
            .await;
            out.deliver_secs = publish_started.elapsed().as_secs_f64();
        }
    }
    let cpu_after = server(o);
    let nodes_after = node_cpu(o);
    out.measure_secs = measure_started.elapsed().as_secs_f64();
    out.nodes = o.node_count();
    if o.pids.len() > 1 {
        out.node_cpu_secs = nodes_before
            .iter()
            .zip(&nodes_after)
            .map(|(a, b)| a.zip(*b).map_or(0.0, |(a, b)| b - a))
            .collect();
    }
    if let (Some(addr), Some(before)) = (&o.redis_info, redis_before) {
        let after = crate::cluster::RedisStats::read(addr).await?;
        out.redis_commands = after.since(&before);
        out.redis_cpu_secs = Some(after.cpu_secs - before.cpu_secs);
    }
    if let Some(before) = received_before {
        // The last events may still be on their way from Redis to a node
        // whose subscribers all got them through its shards already: wait
        // (bounded) for the counters to settle.
        let want = crate::cluster::expected_received(
            total,
            channels.len(),
            o.nodes.len(),
            o.pin_every,
            out.published,
        );
        let deadline = Instant::now() + Duration::from_secs(2);
        let mut got;
        loop {
            let now = nodes_received(o).await?;
            got = now.iter().zip(&before).map(|(a, b)| a.saturating_sub(*b)).collect::<Vec<_>>();
            if got == want || Instant::now() > deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        out.node_received = got;
        out.node_received_expected = want;
    }
    if let (Some(a), Some(b)) = (cpu_before, cpu_after) {
        out.server_cpu_secs = Some(b.cpu_secs - a.cpu_secs);
        out.server_rss_after = Some(b.rss_bytes);
    }
    let coordinator_cpu = procstat::own_cpu_secs() - own_before;
    // The last sample, taken now, closes the series and the progress line.
    live.stop.set(true);
    let mut printer = sampler.await.map_err(|e| format!("sampler: {e}"))?;
    out.series = live.points.take();

    for w in workers.iter_mut() {
        let _ = w.stdin.write_all(format!("stop {}\n", out.published).as_bytes()).await;
    }
    wait_until(&seen, &notify, Duration::from_secs(60), |s| {
        s.iter().all(|w| w.report.is_some() || w.exited)
    })
    .await?;
    for mut w in workers {
        let _ = tokio::time::timeout(Duration::from_secs(10), w.child.wait()).await;
    }
    let reports: Vec<Report> =
        seen.borrow_mut().iter_mut().filter_map(|w| w.report.take()).collect();
    if reports.len() < o.workers {
        out.errors.push(format!(
            "{} of {} workers sent no report",
            o.workers - reports.len(),
            o.workers
        ));
    }
    out.merge(&reports, coordinator_cpu);
    // The final line, once the workers' reports made the counts exact.
    if let Some(last) = out.series.last() {
        let prev = out.series.len().checked_sub(1 + STEPS_PER_RATE).map(|i| &out.series[i]);
        printer.finish(last, prev, totals);
    }
    Ok(out)
}

async fn wait_until(
    seen: &Rc<RefCell<Vec<Seen>>>,
    notify: &Rc<Notify>,
    limit: Duration,
    done: impl Fn(&Vec<Seen>) -> bool,
) -> Result<(), String> {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let woken = notify.notified();
        if done(&seen.borrow()) {
            return Ok(());
        }
        if tokio::time::timeout_at(deadline, woken).await.is_err() {
            return Err(format!("gave up waiting after {} s", limit.as_secs()));
        }
    }
}

/// Publishes `o.events` events from `o.publishers` connections at once;
/// returns how many were accepted and the first error, if any.
async fn publish(
    o: &Options,
    channels: &[String],
    seen: &Rc<RefCell<Vec<Seen>>>,
    notify: &Rc<Notify>,
    accepted: Rc<Cell<u64>>,
) -> (u64, Option<String>) {
    let next = Rc::new(Cell::new(0u64));
    let failure: Rc<RefCell<Option<String>>> = Rc::default();
    let mut tasks = Vec::new();
    let start = tokio::time::Instant::now();
    for index in 0..o.publishers {
        let (o, channels, seen, notify) =
            (o.clone(), channels.to_vec(), seen.clone(), notify.clone());
        let (next, accepted, failure) = (next.clone(), accepted.clone(), failure.clone());
        tasks.push(tokio::task::spawn_local(async move {
            let slot = Slot { start, index };
            if let Err(e) = publisher(&o, slot, &channels, &seen, &notify, &next, &accepted).await {
                failure.borrow_mut().get_or_insert(e);
                // Stop the others too: the run is over.
                next.set(o.events);
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let e = failure.borrow_mut().take();
    (accepted.get(), e)
}

/// A publisher's place in the schedule.
#[derive(Clone, Copy)]
struct Slot {
    start: tokio::time::Instant,
    index: usize,
}

async fn publisher(
    o: &Options,
    slot: Slot,
    channels: &[String],
    seen: &Rc<RefCell<Vec<Seen>>>,
    notify: &Rc<Notify>,
    next: &Cell<u64>,
    accepted: &Cell<u64>,
) -> Result<(), String> {
    let mut publisher = match o.scenario {
        Scenario::Redis => Publisher::redis(&o.redis, &o.redis_channel, &o.app_id, o.incus).await?,
        _ => {
            Publisher::http(&o.host, o.port, (o.app_id.clone(), o.key.clone(), o.secret.clone()))
                .await?
        }
    };
    // At a fixed rate each publisher takes every P-th slot of the schedule,
    // offset by its index: started together, the publishers would send
    // their events in bursts of P and the latency would measure the bursts.
    let mut tick = (o.rate > 0.0).then(|| {
        let first = slot.start + Duration::from_secs_f64(slot.index as f64 / o.rate);
        let period = Duration::from_secs_f64(o.publishers as f64 / o.rate);
        let mut t = tokio::time::interval_at(first, period);
        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        t
    });
    let limit = Duration::from_secs_f64(o.drain_secs);
    loop {
        if let Some(t) = tick.as_mut() {
            t.tick().await;
        }
        let seq = next.get();
        if seq >= o.events {
            return Ok(());
        }
        next.set(seq + 1);
        let window_open = |s: &Vec<Seen>| s.iter().all(|w| w.exited || w.complete + o.window > seq);
        if wait_until(seen, notify, limit, window_open).await.is_err() {
            return Err(format!(
                "deliveries stalled at event {seq}: nothing completed for {} s",
                o.drain_secs
            ));
        }
        let channel = &channels[(seq % channels.len() as u64) as usize];
        let data = crate::wire::payload(seq, mono_ns(), o.size);
        publisher.send(channel, &data).await?;
        accepted.set(accepted.get() + 1);
    }
}

/// Progress rates are over this many samples (one second).
const STEPS_PER_RATE: usize = 5;

/// Samples the run every [`SAMPLE_EVERY`] until `live.stop`: the counts the
/// workers last reported, the events published, the server's CPU and
/// memory, the generator's CPU. Each sample goes to the progress line and
/// into the series; the last one is taken after `stop` is set, and the
/// printer is handed back for the final line.
async fn sample(
    server_pids: Vec<u32>,
    worker_pids: Vec<u32>,
    totals: Totals,
    started: Instant,
    live: Rc<Live>,
    seen: Rc<RefCell<Vec<Seen>>>,
) -> Printer {
    use std::io::IsTerminal as _;
    let mut printer = Printer::new(std::io::stderr().is_terminal());
    loop {
        let last = live.stop.get();
        let (subscribed, failed, delivered) =
            seen.borrow().iter().fold((0, 0, 0), |(a, b, c), w| {
                (a + w.counts.0 as u64, b + w.counts.1 as u64, c + w.counts.2)
            });
        let server = servers(&server_pids);
        let workers: Option<f64> =
            worker_pids.iter().map(|&p| procstat::sample(p).map(|s| s.cpu_secs)).sum();
        let point = Point {
            t: started.elapsed().as_secs_f64(),
            phase: live.phase.get().to_owned(),
            subscribed,
            failed,
            published: live.published.get(),
            delivered,
            server_cpu_secs: server.map(|s| s.cpu_secs),
            server_rss_bytes: server.map(|s| s.rss_bytes),
            generator_cpu_secs: workers.map(|w| w + procstat::own_cpu_secs()),
        };
        {
            let mut points = live.points.borrow_mut();
            let prev = points.len().checked_sub(STEPS_PER_RATE).map(|i| &points[i]);
            if !last {
                printer.show(&point, prev, totals);
            }
            points.push(point);
        }
        if last {
            return printer;
        }
        tokio::time::sleep(SAMPLE_EVERY).await;
    }
}
