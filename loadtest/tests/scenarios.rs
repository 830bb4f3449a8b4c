//! Every scenario of stapes-load, small, against a real stapes with two
//! shards (and a real redis-server for the redis scenario), and the ones
//! the yardstick server (loadtest/baseline) is measured with against it:
//! the generator must account for every delivery, or its figures mean
//! nothing. These tests assert counts only, never timings.

#![allow(clippy::unwrap_used, clippy::disallowed_methods, missing_docs)]

use std::{
    net::{TcpListener, TcpStream},
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn wait_port(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "nothing listens on {port}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A binary of the workspace (package and binary named alike), built by
/// the same cargo that runs this test, beside stapes-load.
fn workspace_bin(name: &str) -> PathBuf {
    let load = PathBuf::from(env!("CARGO_BIN_EXE_stapes-load"));
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .args(["build", "--quiet", "-p", name, "--bin", name])
        .status()
        .expect("run cargo build");
    assert!(status.success(), "cargo build -p {name} failed");
    load.with_file_name(name)
}

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_stapes(port: u16, redis: Option<u16>) -> Proc {
    let mut cmd = Command::new(workspace_bin("stapes"));
    cmd.env("STAPES_PORT", port.to_string())
        .env("STAPES_SHARDS", "2")
        .env("STAPES_LOG", "warn")
        .stdout(Stdio::null());
    if let Some(r) = redis {
        cmd.env("STAPES_REDIS_URL", format!("redis://127.0.0.1:{r}"));
    }
    let child = Proc(cmd.spawn().expect("start stapes"));
    wait_port(port);
    child
}

fn start_baseline(port: u16) -> Proc {
    let child = Proc(
        Command::new(workspace_bin("stapes-baseline"))
            .arg(port.to_string())
            .stderr(Stdio::null())
            .spawn()
            .expect("start stapes-baseline"),
    );
    wait_port(port);
    child
}

fn load(port: u16, pid: u32, args: &[&str]) -> Value {
    let dir = std::env::temp_dir().join(format!("stapes-load-test-{}-{port}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let json = dir.join("out.json");
    let (v, _) = load_to(&json, port, pid, args);
    let _ = std::fs::remove_dir_all(&dir);
    v
}

/// Runs a scenario with `--json json`; its result and its stderr.
fn load_to(json: &std::path::Path, port: u16, pid: u32, args: &[&str]) -> (Value, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_stapes-load"))
        .args(args)
        .args(["--port", &port.to_string(), "--pid", &pid.to_string(), "--json"])
        .arg(json)
        .output()
        .expect("run stapes-load");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "stapes-load failed: {stderr}");
    let v: Value = serde_json::from_str(&std::fs::read_to_string(json).unwrap()).unwrap();
    (v, stderr)
}

fn assert_complete(v: &Value, subscribers: u64, events: u64) {
    assert_eq!(v["subscribed"], subscribers, "{v:#}");
    assert_eq!(v["failed"], 0, "{v:#}");
    assert_eq!(v["published"], events, "{v:#}");
    assert_eq!(v["expected"], v["delivered"], "{v:#}");
    assert_eq!(v["missing"], 0, "{v:#}");
    assert_eq!(v["duplicates"], 0, "{v:#}");
    assert_eq!(v["drops"], 0, "{v:#}");
    assert_eq!(v["last_subscriber_us"]["count"], events, "every event reached someone: {v:#}");
}

#[test]
fn fanout_flow_controlled_and_fixed_rate_deliver_everything_once() {
    let port = free_port();
    let server = start_stapes(port, None);
    let v = load(
        port,
        server.0.id(),
        &["fanout", "--connections", "40", "--events", "200", "--window", "8"],
    );
    assert_complete(&v, 40, 200);
    assert_eq!(v["delivered"], 40 * 200);
    assert!(v["server_cpu_secs"].is_number(), "server CPU read from /proc: {v:#}");
    let v = load(
        port,
        server.0.id(),
        &["fanout", "--connections", "10", "--events", "20", "--rate", "200", "--workers", "1"],
    );
    assert_complete(&v, 10, 20);
    assert_eq!(v["delivered"], 10 * 20);
}

#[test]
fn sparse_spreads_events_over_channels() {
    let port = free_port();
    let server = start_stapes(port, None);
    let v = load(
        port,
        server.0.id(),
        &["sparse", "--channels", "10", "--per-channel", "3", "--events", "50"],
    );
    assert_complete(&v, 30, 50);
    // Each event reaches only its own channel's three subscribers.
    assert_eq!(v["delivered"], 3 * 50);
}

/// The baseline is only a yardstick if it is correct: every delivery of
/// the scenarios it is measured with arrives once.
#[test]
fn baseline_delivers_every_fanout_sparse_and_hold_event_once() {
    let port = free_port();
    let server = start_baseline(port);
    let v = load(
        port,
        server.0.id(),
        &["fanout", "--connections", "40", "--events", "200", "--window", "8"],
    );
    assert_complete(&v, 40, 200);
    assert_eq!(v["delivered"], 40 * 200);
    let v = load(
        port,
        server.0.id(),
        &["fanout", "--connections", "10", "--events", "20", "--rate", "200", "--workers", "1"],
    );
    assert_complete(&v, 10, 20);
    let v = load(
        port,
        server.0.id(),
        &[
            "sparse",
            "--channels",
            "10",
            "--per-channel",
            "3",
            "--events",
            "100",
            "--publishers",
            "4",
            "--window",
            "16",
        ],
    );
    assert_complete(&v, 30, 100);
    assert_eq!(v["delivered"], 3 * 100);
    let v = load(port, server.0.id(), &["hold", "--connections", "100", "--secs", "0.2"]);
    assert_eq!(v["subscribed"], 100, "{v:#}");
    assert_eq!(v["drops"], 0, "{v:#}");
    assert!(v["rss_per_conn"].is_number(), "{v:#}");
}

#[test]
fn hold_and_presence_churn() {
    let port = free_port();
    let server = start_stapes(port, None);
    let v = load(port, server.0.id(), &["hold", "--connections", "100", "--secs", "0.2"]);
    assert_eq!(v["subscribed"], 100, "{v:#}");
    assert_eq!(v["drops"], 0, "{v:#}");
    assert!(v["rss_per_conn"].is_number(), "{v:#}");
    let v = load(
        port,
        server.0.id(),
        &[
            "presence",
            "--channels",
            "2",
            "--per-channel",
            "4",
            "--churn-rate",
            "40",
            "--secs",
            "0.5",
        ],
    );
    assert_eq!(v["subscribed"], 8, "{v:#}");
    assert_eq!(v["drops"], 0, "{v:#}");
    assert_eq!(v["error_count"], 0, "{v:#}");
    assert!(v["churns"].as_u64().unwrap() > 0, "{v:#}");
    // Every rejoin is seen by the channel's three other members.
    assert!(v["member_added"].as_u64().unwrap() >= v["churns"].as_u64().unwrap(), "{v:#}");
}

#[test]
fn redis_published_events_reach_subscribers() {
    let rport = free_port();
    let _redis = Proc(
        Command::new("redis-server")
            .args([
                "--port",
                &rport.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server must be installed (scripts/test installs it)"),
    );
    wait_port(rport);
    let port = free_port();
    let server = start_stapes(port, Some(rport));
    // The bridge subscribes in the background: wait until Redis counts it.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = Command::new("redis-cli")
            .args(["-p", &rport.to_string(), "pubsub", "numsub", "stapes:pusher"])
            .output()
            .expect("redis-cli");
        if String::from_utf8_lossy(&out.stdout).lines().last() == Some("1") {
            break;
        }
        assert!(Instant::now() < deadline, "the bridge never subscribed");
        std::thread::sleep(Duration::from_millis(20));
    }
    let redis = format!("127.0.0.1:{rport}");
    let v = load(
        port,
        server.0.id(),
        &["redis", "--redis", &redis, "--connections", "6", "--events", "30", "--rate", "300"],
    );
    assert_complete(&v, 6, 30);
}

fn start_redis() -> (Proc, u16) {
    let rport = free_port();
    let redis = Proc(
        Command::new("redis-server")
            .args([
                "--port",
                &rport.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server must be installed (scripts/test installs it)"),
    );
    wait_port(rport);
    (redis, rport)
}

#[test]
fn cluster_spreads_subscribers_and_each_node_receives_only_its_channels() {
    let (_redis, rport) = start_redis();
    let nodes: Vec<(Proc, u16)> = (0..3)
        .map(|_| {
            let port = free_port();
            (start_stapes(port, Some(rport)), port)
        })
        .collect();
    let ports = nodes.iter().map(|(_, p)| p.to_string()).collect::<Vec<_>>().join(",");
    let pids = nodes.iter().map(|(n, _)| n.0.id().to_string()).collect::<Vec<_>>().join(",");
    let redis = format!("127.0.0.1:{rport}");
    let dir = std::env::temp_dir().join(format!("stapes-load-cluster-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let run = |args: &[&str]| -> Value {
        let json = dir.join("out.json");
        let out = Command::new(env!("CARGO_BIN_EXE_stapes-load"))
            .args(args)
            .args(["--nodes", &ports, "--pid", &pids, "--redis-info", &redis, "--json"])
            .arg(&json)
            .output()
            .expect("run stapes-load");
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "stapes-load failed: {stderr}");
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap()
    };

    // One channel, three subscribers per node: the two other nodes get every event.
    let v = run(&["fanout", "--connections", "9", "--events", "40", "--rate", "400"]);
    assert_complete(&v, 9, 40);
    assert_eq!(v["delivered"], 9 * 40);
    assert_eq!(v["node_received"], serde_json::json!([0, 40, 40]), "{v:#}");
    assert_eq!(v["node_received_expected"], v["node_received"], "{v:#}");
    assert_eq!(v["node_cpu_secs"].as_array().unwrap().len(), 3, "{v:#}");
    let publishes = v["redis_commands"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c[0] == "publish")
        .map(|c| c[1].as_u64().unwrap());
    assert!(publishes >= Some(40), "one PUBLISH per event at least: {v:#}");

    // Six channels x 3, every 2nd on one node: channel 0 on node 0,
    // channel 2 on node 1, channel 4 on node 2; the others on all three.
    let v = run(&[
        "sparse",
        "--channels",
        "6",
        "--per-channel",
        "3",
        "--events",
        "60",
        "--rate",
        "600",
        "--pin-every",
        "2",
    ]);
    assert_complete(&v, 18, 60);
    assert_eq!(v["delivered"], 3 * 60);
    // 10 events per channel. Node 1: channels 1, 2, 3, 5; node 2: 1, 3, 4, 5.
    assert_eq!(v["node_received"], serde_json::json!([0, 40, 40]), "{v:#}");
    assert_eq!(v["node_received_expected"], v["node_received"], "{v:#}");
    let _ = std::fs::remove_dir_all(&dir);
}

fn grouped(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn ms(us: &Value) -> String {
    format!("{:.2} ms", us.as_u64().unwrap() as f64 / 1000.0)
}

#[test]
fn progress_and_report_show_what_the_json_holds() {
    let port = free_port();
    let server = start_stapes(port, None);
    let dir = std::env::temp_dir().join(format!("stapes-load-report-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let (first, stderr) = load_to(
        &dir.join("fanout-a.json"),
        port,
        server.0.id(),
        &["fanout", "--connections", "30", "--events", "100", "--label", "fanout-small"],
    );
    assert_complete(&first, 30, 100);
    // Not a terminal: plain progress lines, the last with the final counts.
    let last = stderr.lines().rfind(|l| l.contains("| connected ")).unwrap_or_default();
    assert!(last.contains("| connected 30/30 | sent 100/100 | delivered 3,000"), "{stderr}");
    assert!(!stderr.contains('\r'), "{stderr}");
    // The samples behind it are in the JSON: every 200 ms, the last one final.
    let series = first["series"].as_array().unwrap();
    assert!(!series.is_empty(), "{first:#}");
    assert_eq!(series.last().unwrap()["delivered"], 3000, "{first:#}");
    assert!(series.last().unwrap()["server_rss_bytes"].as_u64().unwrap() > 0, "{first:#}");
    assert!(!first["last_subscriber_cdf"].as_array().unwrap().is_empty(), "{first:#}");

    // One run: the figures of the JSON are in the page, and every chart is drawn.
    let report = dir.join("one.html");
    let out = Command::new(env!("CARGO_BIN_EXE_stapes-load"))
        .args(["report", "--out"])
        .arg(&report)
        .arg(dir.join("fanout-a.json"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let html = std::fs::read_to_string(&report).unwrap();
    let p99 = ms(&first["last_subscriber_us"]["p99"]);
    assert!(html.contains(&format!("<td>last subscriber p99</td><td>{p99}</td>")), "{p99}\n{html}");
    let delivered = grouped(first["delivered"].as_u64().unwrap());
    assert!(html.contains(&format!("<td>delivered</td><td>{delivered}</td>")), "{html}");
    assert_eq!(html.matches("<svg").count(), 5, "{html}");
    assert!(!html.contains("class=\"nodata\""), "{html}");

    // Two runs side by side: both figures on one row, both named.
    let (second, _) = load_to(
        &dir.join("fanout-b.json"),
        port,
        server.0.id(),
        &["fanout", "--connections", "20", "--events", "50", "--label", "fanout-small"],
    );
    let out = Command::new(env!("CARGO_BIN_EXE_stapes-load"))
        .args(["report", "--out"])
        .arg(dir.join("two.html"))
        .arg(format!("before={}", dir.join("fanout-a.json").display()))
        .arg(format!("after={}", dir.join("fanout-b.json").display()))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let html = std::fs::read_to_string(dir.join("two.html")).unwrap();
    let row = format!(
        "<td>delivered</td><td>{}</td><td>{}</td>",
        grouped(first["delivered"].as_u64().unwrap()),
        grouped(second["delivered"].as_u64().unwrap())
    );
    assert!(html.contains(&row), "{row}\n{html}");
    for name in ["before", "after"] {
        assert!(html.contains(&format!(">\n{name}\n</text>")), "legend {name}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
