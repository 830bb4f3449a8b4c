//! `stapes-load`: a load generator for any Pusher-protocol server.
//!
//! The coordinator (this process) spawns worker processes that hold the
//! connections ([`worker`]), publishes over the signed HTTP API or through
//! Redis, reads the server's CPU time and memory from /proc, merges what
//! the workers saw, and prints a summary (and JSON with `--json`).
//!
//! Scenarios: `hold`, `fanout`, `sparse`, `presence`, `redis`; `fanout`
//! and `sparse` also over the nodes of a cluster (`--nodes`, [`cluster`]);
//! `table` turns saved JSON results into one Markdown table,
//! `cluster-table` sets cluster runs beside one node's, `report` makes an
//! HTML page with charts ([`html`]). Run without arguments for the options.

// A command-line tool: its output is stdout, and it measures wall time.
#![allow(clippy::print_stdout, clippy::disallowed_methods)]
// A binary: nothing is exported, so crate-private `pub` is the plain reading.
#![allow(unreachable_pub)]

mod cluster;
mod coord;
mod html;
mod procstat;
mod progress;
mod publish;
mod report;
mod wire;
mod worker;

use std::process::ExitCode;

const USAGE: &str = "\
stapes-load SCENARIO [--option value ...]

Scenarios
  hold       N subscribed connections held for T seconds, answering pings
  fanout     N subscribers on one channel; HTTP publishes at --rate (0 = as fast
             as delivery keeps up, with at most --window events not yet delivered)
  sparse     --channels K x --per-channel M subscribers; publishes spread over them
  presence   K presence channels x M members, then leave+join churn at --churn-rate
  redis      like fanout, but each event is PUBLISHed to Redis: to the Pusher
             bridge, or with --protocol incus as an Incus 'message to everyone'
  table F..  one Markdown table from saved --json results
  cluster-table BASE CLUSTER [BASE CLUSTER ...]
             a cluster run (--nodes) against the same load on one node: CPU per
             delivery, latency, Redis per publish, events received per node
  report [--out FILE] [--title TEXT] RUN [RUN...]
             an HTML page with charts (latency distribution, deliveries/s, server
             CPU and memory over time) per scenario; RUN is a results folder (as
             loadtest/run.sh writes) or one --json file, optionally NAME=RUN; two
             or more RUNs are shown side by side [--out: report.html in the first]

While a scenario runs, one progress line on stderr shows connections,
events sent and deliveries (rewritten in place on a terminal, a line
every 5 s and at each phase otherwise); --json keeps the samples behind
it (every 200 ms) for the report's charts.

Options (defaults in brackets)
  --host 127.0.0.1  --port 6001  --app-id 1  --key app-key  --secret app-secret
  --pid PID[,PID..]    server process(es), for CPU time and RSS (/proc), summed
  --connections N      hold, fanout, redis subscribers [1000]
  --channels K         sparse, presence, hold (connection i subscribes channel
                       i mod K) [1000 / 100 / 100]
  --per-channel M      sparse subscribers, presence members per channel [10]
  --events E           events to publish [1000]
  --rate R             events per second, 0 = flow-controlled maximum [0]
  --window W           max events published but not yet fully delivered, 1-64 [32]
  --publishers P       publishing connections, one request in flight each [4]
  --size B             event data bytes [100]
  --secs T             hold time, presence churn time [5]
  --churn-rate R       presence leave+join per second [200]
  --workers W          worker processes [2]
  --source-base IP     first loopback source address; worker i uses base+i [127.0.0.2]
                       ('none': let the kernel choose)
  --concurrency C      connection attempts in flight per worker [256]
  --drain-secs S       wait this long for the last deliveries [10]
  --redis HOST:PORT    redis scenario [127.0.0.1:6379]
  --redis-channel NAME redis scenario [stapes:pusher, or Incus with --protocol incus]
  --protocol P         pusher, or incus: clients on /socket, authenticated as u<n> [pusher]
  --nodes P1,P2,..     fanout, sparse over a cluster: subscribers spread over the
                       nodes on these ports, publisher on the first (give --pid
                       in the same order); each node's cluster events received
                       (/metrics) are checked against what its subscribers need
  --pin-every K        with --nodes: every K-th channel has all its subscribers
                       on one node, so the others must receive none of it [0]
  --redis-info H:P     Redis commands and CPU per publish (INFO, before/after)
  --json FILE          also write the result as JSON
  --label TEXT         a name for the result in tables
";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(scenario) = args.first() else {
        print!("{USAGE}");
        return ExitCode::from(2);
    };
    let result = match scenario.as_str() {
        // The coordinator hands a worker its plan as stdin's first line.
        "worker" => match worker::read_plan() {
            Ok(plan) => worker::run(plan).map_err(|e| e.to_string()),
            Err(e) => Err(format!("bad worker plan: {e}")),
        },
        "table" => report::table(&args[1..]),
        "cluster-table" => report::cluster_table(&args[1..]),
        "report" => html::command(&args[1..]),
        "-h" | "--help" | "help" => {
            print!("{USAGE}");
            Ok(())
        }
        _ => coord::Options::parse(&args).and_then(coord::run),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("stapes-load: {e}");
            ExitCode::FAILURE
        }
    }
}
