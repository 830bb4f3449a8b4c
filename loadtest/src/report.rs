//! Merging worker reports into one outcome, the human summary, and the
//! Markdown table of several saved outcomes.

use std::fmt::Write as _;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::{
    coord::{Options, Scenario},
    progress::Point,
    worker::Report,
};

/// Percentiles of one latency distribution, in µs.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct Percentiles {
    pub count: u64,
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub max: u64,
}

impl Percentiles {
    fn of(h: &Histogram<u64>) -> Percentiles {
        Percentiles {
            count: h.len(),
            p50: h.value_at_quantile(0.50),
            p90: h.value_at_quantile(0.90),
            p99: h.value_at_quantile(0.99),
            max: h.max(),
        }
    }
}

/// The result of one scenario run.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Outcome {
    pub scenario: String,
    pub label: String,
    /// The settings that shaped the run.
    pub setup: String,
    pub connections: usize,
    pub subscribed: usize,
    pub failed: usize,
    /// Slowest worker, first attempt to last subscription.
    pub connect_secs: f64,
    pub connect_wall_secs: f64,
    pub connects_per_sec: f64,
    pub server_connect_cpu_secs: Option<f64>,
    pub server_rss_before: Option<u64>,
    pub server_rss_connected: Option<u64>,
    pub server_rss_after: Option<u64>,
    /// Server RSS growth per subscribed connection, bytes.
    pub rss_per_conn: Option<f64>,
    /// Kernel TCP memory growth per connection (both ends), bytes.
    pub tcp_mem_per_conn: Option<f64>,
    /// Kernel slab growth per connection (both ends), bytes.
    #[serde(default)]
    pub slab_per_conn: Option<f64>,
    pub events: u64,
    pub published: u64,
    pub publish_secs: f64,
    pub deliver_secs: f64,
    pub measure_secs: f64,
    pub expected: u64,
    pub delivered: u64,
    pub missing: u64,
    pub duplicates: u64,
    pub drops: u64,
    pub close_codes: Vec<(u16, u64)>,
    pub pings: u64,
    /// Per delivery.
    pub latency_us: Percentiles,
    /// Per event, its slowest subscriber.
    pub last_subscriber_us: Percentiles,
    pub server_cpu_secs: Option<f64>,
    pub deliveries_per_server_cpu_sec: Option<f64>,
    pub server_cpu_us_per_event: Option<f64>,
    /// Workers' and the coordinator's CPU during the measured phase, the
    /// workers' while connecting, and the workers' over the whole run.
    pub client_cpu_secs: f64,
    pub worker_connect_cpu_secs: f64,
    pub worker_cpu_secs_total: f64,
    /// Server and generator CPU in cores (CPU seconds per second) over the
    /// phase that was measured: publishing, or connecting when nothing is
    /// published.
    pub server_cores_busy: Option<f64>,
    pub generator_cores_busy: f64,
    /// What bounded the run, as far as CPU use tells.
    pub bound_by: String,
    pub churns: u64,
    pub join_us: Percentiles,
    /// Connecting's three waits: TCP connect, upgrade request to
    /// `connection_established`, subscribe to its success.
    #[serde(default)]
    pub connect_phases_us: [Percentiles; 3],
    pub member_added: u64,
    pub member_removed: u64,
    pub errors: Vec<String>,
    pub error_count: u64,
    /// The server measured, as host:port.
    #[serde(default)]
    pub target: String,
    /// When the run started, Unix milliseconds (orders a folder's results).
    #[serde(default)]
    pub started_ms: u64,
    /// Samples every 200 ms: counts, server CPU and memory, generator CPU.
    #[serde(default)]
    pub series: Vec<Point>,
    /// The distribution of per-delivery latency: (µs, fraction at or below).
    #[serde(default)]
    pub latency_cdf: Vec<(u64, f64)>,
    /// The same for each event's last subscriber.
    #[serde(default)]
    pub last_subscriber_cdf: Vec<(u64, f64)>,
    /// Server nodes the subscribers were spread over (`--nodes`; 0 or 1: one).
    #[serde(default)]
    pub nodes: usize,
    /// Each node's CPU seconds over the measured phase (several nodes only).
    #[serde(default)]
    pub node_cpu_secs: Vec<f64>,
    /// Each node's `stapes_cluster_events_received_total` growth over the
    /// measured phase, and what its subscribers needed.
    #[serde(default)]
    pub node_received: Vec<u64>,
    #[serde(default)]
    pub node_received_expected: Vec<u64>,
    /// Redis commands over the measured phase, per command (`--redis-info`).
    #[serde(default)]
    pub redis_commands: Vec<(String, u64)>,
    /// Redis CPU (sys + user) over the measured phase, seconds.
    #[serde(default)]
    pub redis_cpu_secs: Option<f64>,
}

impl Outcome {
    /// An outcome with the run's settings filled in.
    pub fn new(o: &Options, connections: usize, events: u64) -> Outcome {
        let scenario = format!("{:?}", o.scenario).to_lowercase();
        let rate = if o.rate == 0.0 { "max".to_string() } else { format!("{}/s", o.rate) };
        let setup = match o.scenario {
            Scenario::Hold => format!("{connections} connections, {} s", o.secs),
            Scenario::Fanout | Scenario::Redis => {
                format!("{connections} subscribers, {} B, {rate}", o.size)
            }
            Scenario::Sparse if o.pin_every > 0 && o.nodes.len() > 1 => format!(
                "{} channels x {} (every {} on one node), {} B, {rate}",
                o.channels, o.per_channel, o.pin_every, o.size
            ),
            Scenario::Sparse => {
                format!("{} channels x {}, {} B, {rate}", o.channels, o.per_channel, o.size)
            }
            Scenario::Presence => format!(
                "{} channels x {} members, {} churn/s",
                o.channels, o.per_channel, o.churn_rate
            ),
        };
        let setup = match o.nodes.len() {
            0 | 1 => setup,
            n => format!("{setup}, {n} nodes"),
        };
        Outcome {
            label: o.label.clone().unwrap_or_else(|| scenario.clone()),
            scenario,
            setup,
            connections,
            events,
            target: format!("{}:{}", o.host, o.port),
            started_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
            ..Outcome::default()
        }
    }

    /// Folds the workers' reports in.
    pub fn merge(&mut self, reports: &[Report], coordinator_cpu: f64) {
        let mut latency = hist();
        let mut join = hist();
        let mut phases = [hist(), hist(), hist()];
        let events = reports
            .iter()
            .map(|r| r.seq_max_us.len())
            .max()
            .unwrap_or(0)
            .min(self.published as usize);
        let mut last = vec![0u64; events];
        let mut got = vec![0u64; events];
        for r in reports {
            self.delivered += r.delivered;
            self.duplicates += r.duplicates;
            self.drops += r.drops;
            self.pings += r.pings;
            self.error_count += r.errors;
            self.errors.extend(r.error_samples.iter().take(3).cloned());
            self.churns += r.churns;
            self.member_added += r.member_added;
            self.member_removed += r.member_removed;
            self.worker_cpu_secs_total += r.cpu_secs;
            for &(code, n) in &r.close_codes {
                match self.close_codes.iter_mut().find(|(c, _)| *c == code) {
                    Some((_, m)) => *m += n,
                    None => self.close_codes.push((code, n)),
                }
            }
            for &(v, n) in &r.latency_us {
                let _ = latency.record_n(v, n);
            }
            for &(v, n) in &r.join_us {
                let _ = join.record_n(v, n);
            }
            for (h, dumped) in phases.iter_mut().zip(&r.connect_phases_us) {
                for &(v, n) in dumped {
                    let _ = h.record_n(v, n);
                }
            }
            for (i, slot) in last.iter_mut().enumerate() {
                *slot = (*slot).max(r.seq_max_us.get(i).copied().unwrap_or(0));
                got[i] += u64::from(r.seq_count.get(i).copied().unwrap_or(0));
            }
        }
        // Expected: every subscriber connected when publishing began, for
        // every event actually published (each worker counts its own).
        self.expected = reports.iter().map(|r| r.expected).sum();
        self.missing = self.expected.saturating_sub(self.delivered);
        let mut last_h = hist();
        for (i, &us) in last.iter().enumerate() {
            if got[i] > 0 {
                let _ = last_h.record(us.max(1));
            }
        }
        self.latency_us = Percentiles::of(&latency);
        self.last_subscriber_us = Percentiles::of(&last_h);
        self.latency_cdf = cdf(&latency);
        self.last_subscriber_cdf = cdf(&last_h);
        // Workers report running counts every 100 ms, so the last sample
        // may trail the final account by those deliveries.
        if let Some(last) = self.series.last_mut() {
            last.delivered = last.delivered.max(self.delivered);
        }
        self.join_us = Percentiles::of(&join);
        self.connect_phases_us = phases.each_ref().map(Percentiles::of);
        self.client_cpu_secs =
            self.worker_cpu_secs_total - self.worker_connect_cpu_secs + coordinator_cpu;
        let publishing = self.published > 0;
        let (server_cpu, client_cpu, wall) = if publishing {
            (self.server_cpu_secs, self.client_cpu_secs, self.measure_secs)
        } else {
            (self.server_connect_cpu_secs, self.worker_connect_cpu_secs, self.connect_wall_secs)
        };
        if wall > 0.0 {
            self.server_cores_busy = server_cpu.map(|c| c / wall);
            self.generator_cores_busy = client_cpu / wall;
        }
        if let Some(cpu) = self.server_cpu_secs {
            if cpu > 0.0 && self.delivered > 0 {
                self.deliveries_per_server_cpu_sec = Some(self.delivered as f64 / cpu);
            }
            if self.published > 0 {
                self.server_cpu_us_per_event = Some(cpu * 1e6 / self.published as f64);
            }
        }
        self.bound_by = self.bottleneck();
    }

    fn bottleneck(&self) -> String {
        let Some(server) = self.server_cores_busy else {
            return "unknown (no --pid)".into();
        };
        let generator = self.generator_cores_busy;
        let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1) as f64;
        let phase = if self.published > 0 { "publishing" } else { "connecting" };
        // Server and generator share the machine's cores: when together
        // they fill them, CPU is the bound, and if the generator took the
        // larger share the server's figures are floors.
        if server + generator >= 0.85 * cores {
            let floor =
                if generator > server { "; generator took more: figures are floors" } else { "" };
            format!("CPU while {phase} (server {server:.2}, generator {generator:.2} cores){floor}")
        } else {
            format!(
                "not CPU while {phase} (server {server:.2}, generator {generator:.2} cores): rate, window or latency"
            )
        }
    }
}

/// Points of a histogram's cumulative distribution, denser towards the
/// tail (HdrHistogram's quantile iteration, 5 steps per halving of what is
/// left): enough to draw it, a few dozen points whatever the count.
fn cdf(h: &Histogram<u64>) -> Vec<(u64, f64)> {
    if h.is_empty() {
        return Vec::new();
    }
    let mut points: Vec<(u64, f64)> = h
        .iter_quantiles(5)
        .map(|v| (h.highest_equivalent(v.value_iterated_to()), v.quantile_iterated_to()))
        .collect();
    points.dedup_by(|b, a| {
        a.0 == b.0 && {
            a.1 = a.1.max(b.1);
            true
        }
    });
    points
}

fn hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3).unwrap_or_else(|_| unreachable!("valid bounds"))
}

fn opt(v: Option<f64>, unit: &str) -> String {
    v.map(|v| format!("{v:.0}{unit}")).unwrap_or_else(|| "-".into())
}

pub fn ms(us: u64) -> String {
    format!("{:.2} ms", us as f64 / 1000.0)
}

/// The human summary of one outcome.
pub fn summary(o: &Outcome) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "== {} ({})", o.label, o.setup);
    let _ = writeln!(
        s,
        "connections: {} subscribed, {} failed, {:.2} s ({:.0}/s); server CPU for connecting {}",
        o.subscribed,
        o.failed,
        o.connect_secs,
        o.connects_per_sec,
        opt(o.server_connect_cpu_secs.map(|c| c * 1000.0), " ms")
    );
    let _ = writeln!(
        s,
        "server RSS per connection: {}; kernel TCP memory per connection (both ends): {}",
        opt(o.rss_per_conn, " B"),
        opt(o.tcp_mem_per_conn, " B")
    );
    if o.published > 0 || o.events > 0 {
        let _ = writeln!(
            s,
            "events: {} of {} published in {:.2} s; deliveries {} of {} expected, {} missing, {} duplicate",
            o.published, o.events, o.publish_secs, o.delivered, o.expected, o.missing, o.duplicates
        );
        let l = &o.latency_us;
        let t = &o.last_subscriber_us;
        let _ = writeln!(
            s,
            "latency per delivery: p50 {} p90 {} p99 {} max {}",
            ms(l.p50),
            ms(l.p90),
            ms(l.p99),
            ms(l.max)
        );
        let _ = writeln!(
            s,
            "latency to the last subscriber: p50 {} p90 {} p99 {} max {}",
            ms(t.p50),
            ms(t.p90),
            ms(t.p99),
            ms(t.max)
        );
        let _ = writeln!(
            s,
            "server CPU {}; {} deliveries per server CPU-second; {} of server CPU per event",
            opt(o.server_cpu_secs.map(|c| c * 1000.0), " ms"),
            opt(o.deliveries_per_server_cpu_sec, ""),
            opt(o.server_cpu_us_per_event, " µs")
        );
    }
    if !o.node_cpu_secs.is_empty() {
        let cpu: Vec<String> =
            o.node_cpu_secs.iter().map(|c| format!("{:.0}", c * 1000.0)).collect();
        let _ = writeln!(s, "server CPU per node: {} ms", cpu.join(" / "));
    }
    if !o.node_received.is_empty() {
        let _ = writeln!(
            s,
            "cluster events received per node: {:?}, expected {:?}{}",
            o.node_received,
            o.node_received_expected,
            if o.node_received == o.node_received_expected { "" } else { " MISMATCH" }
        );
    }
    if let (Some(cpu), true) = (o.redis_cpu_secs, o.published > 0) {
        let total: u64 = o.redis_commands.iter().map(|(_, n)| n).sum();
        let top: Vec<String> =
            o.redis_commands.iter().take(4).map(|(c, n)| format!("{c} {n}")).collect();
        let _ = writeln!(
            s,
            "redis: {:.2} commands per publish ({}), {:.1} µs CPU per publish",
            total as f64 / o.published as f64,
            top.join(", "),
            cpu * 1e6 / o.published as f64
        );
    }
    if o.connect_phases_us[0].count > 0 {
        let waits: Vec<String> = ["TCP", "upgrade", "subscribe"]
            .iter()
            .zip(&o.connect_phases_us)
            .filter(|(_, p)| p.count > 0)
            .map(|(name, p)| format!("{name} {} / {}", ms(p.p50), ms(p.p99)))
            .collect();
        let _ = writeln!(s, "connect waits p50 / p99: {}", waits.join(", "));
    }
    if o.churns > 0 {
        let j = &o.join_us;
        let _ = writeln!(
            s,
            "churn: {} leave+join, join p50 {} p99 {} max {}; member_added {} member_removed {}",
            o.churns,
            ms(j.p50),
            ms(j.p99),
            ms(j.max),
            o.member_added,
            o.member_removed
        );
    }
    let _ = writeln!(
        s,
        "drops {} {:?}; pings answered {}; errors {}; generator CPU {:.2} s; bound by: {}",
        o.drops, o.close_codes, o.pings, o.error_count, o.client_cpu_secs, o.bound_by
    );
    for e in o.errors.iter().take(5) {
        let _ = writeln!(s, "  error: {e}");
    }
    s
}

impl Outcome {
    /// Redis commands per published event, if measured.
    pub fn redis_commands_per_publish(&self) -> Option<f64> {
        (self.redis_cpu_secs.is_some() && self.published > 0).then(|| {
            self.redis_commands.iter().map(|(_, n)| n).sum::<u64>() as f64 / self.published as f64
        })
    }

    /// `PUBLISH` commands per published event, if measured.
    pub fn redis_publish_per_event(&self) -> Option<f64> {
        (self.redis_cpu_secs.is_some() && self.published > 0).then(|| {
            let n = self.redis_commands.iter().find(|(c, _)| c == "publish").map_or(0, |(_, n)| *n);
            n as f64 / self.published as f64
        })
    }

    /// Server CPU per delivery, µs.
    pub fn cpu_us_per_delivery(&self) -> Option<f64> {
        self.deliveries_per_server_cpu_sec.map(|d| 1e6 / d)
    }

    /// Every node received exactly the cluster events its subscribers needed.
    pub fn received_as_expected(&self) -> bool {
        self.node_received == self.node_received_expected
    }
}

fn load(f: &str) -> Result<Outcome, String> {
    let text = std::fs::read_to_string(f).map_err(|e| format!("{f}: {e}"))?;
    serde_json::from_str(&text).map_err(|e| format!("{f}: {e}"))
}

/// A Markdown table: each cluster run beside the same load on one node.
pub fn cluster_table(files: &[String]) -> Result<(), String> {
    if files.is_empty() || !files.len().is_multiple_of(2) {
        return Err("cluster-table: BASE CLUSTER pairs of --json results".into());
    }
    println!(
        "| run | setup | delivered (missing, dup) | deliveries per server CPU-s: 1 node / cluster | server CPU per delivery: extra | last subscriber p50 / p99: 1 node / cluster | redis commands per publish (PUBLISH alone) | redis CPU per publish | CPU per node | cluster events received per node (expected) |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for pair in files.chunks(2) {
        let (b, c) = (load(&pair[0])?, load(&pair[1])?);
        let extra = match (b.cpu_us_per_delivery(), c.cpu_us_per_delivery()) {
            (Some(b), Some(c)) if b > 0.0 => format!("{:+.0} %", (c / b - 1.0) * 100.0),
            _ => "-".into(),
        };
        let lat = |o: &Outcome| {
            format!("{} / {}", ms(o.last_subscriber_us.p50), ms(o.last_subscriber_us.p99))
        };
        let nodes: Vec<String> = c.node_cpu_secs.iter().map(|s| format!("{:.2}", s)).collect();
        let received: Vec<String> = c
            .node_received
            .iter()
            .zip(&c.node_received_expected)
            .map(|(r, e)| if r == e { format!("{r}") } else { format!("{r} ({e}!)") })
            .collect();
        println!(
            "| {} | {} | {} ({}, {}) | {} / {} | {} | {} ; {} | {} | {} | {} s | {} |",
            c.label,
            c.setup,
            c.delivered,
            c.missing,
            c.duplicates,
            opt(b.deliveries_per_server_cpu_sec, ""),
            opt(c.deliveries_per_server_cpu_sec, ""),
            extra,
            lat(&b),
            lat(&c),
            match (c.redis_commands_per_publish(), c.redis_publish_per_event()) {
                (Some(all), Some(publish)) => format!("{all:.2} ({publish:.2})"),
                _ => "-".into(),
            },
            c.redis_cpu_secs
                .filter(|_| c.published > 0)
                .map_or("-".into(), |s| format!("{:.1} µs", s * 1e6 / c.published as f64)),
            nodes.join(" / "),
            if c.received_as_expected() {
                received.join(" / ")
            } else {
                format!("{} MISMATCH", received.join(" / "))
            },
        );
    }
    Ok(())
}

/// One Markdown table from saved outcomes.
pub fn table(files: &[String]) -> Result<(), String> {
    println!(
        "| run | setup | connected | connects/s | RSS/conn | delivered (missing, dup) | per delivery p50 / p99 | last subscriber p50 / p99 | deliveries per server CPU-s | server CPU/event | drops | bound by |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
    for f in files {
        let text = std::fs::read_to_string(f).map_err(|e| format!("{f}: {e}"))?;
        let o: Outcome = serde_json::from_str(&text).map_err(|e| format!("{f}: {e}"))?;
        let pubs = o.published > 0;
        let dash = || "-".to_string();
        println!(
            "| {} | {} | {}/{} | {:.0} | {} | {} | {} | {} | {} | {} | {} | {} |",
            o.label,
            o.setup,
            o.subscribed,
            o.connections,
            o.connects_per_sec,
            opt(o.rss_per_conn, " B"),
            if pubs {
                format!("{} ({}, {})", o.delivered, o.missing, o.duplicates)
            } else {
                dash()
            },
            if pubs {
                format!("{} / {}", ms(o.latency_us.p50), ms(o.latency_us.p99))
            } else if o.churns > 0 {
                format!("join {} / {}", ms(o.join_us.p50), ms(o.join_us.p99))
            } else {
                dash()
            },
            if pubs {
                format!("{} / {}", ms(o.last_subscriber_us.p50), ms(o.last_subscriber_us.p99))
            } else {
                dash()
            },
            if pubs { opt(o.deliveries_per_server_cpu_sec, "") } else { dash() },
            if pubs { opt(o.server_cpu_us_per_event, " µs") } else { dash() },
            o.drops,
            o.bound_by
        );
    }
    Ok(())
}
