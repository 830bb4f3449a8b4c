#!/usr/bin/env bash
# The standard load run: builds stapes and stapes-load (release), then for
# each scenario starts a fresh stapes on a free loopback port, runs the
# scenario against it, stops it, and finally prints one Markdown table and
# writes OUT_DIR/report.html (charts of every scenario).
#
#   loadtest/run.sh [--quick] [--only PREFIX] [--skip PREFIX] [--server-bin PATH]
#                   [--baseline] [--target HOST:PORT [--target-pid PID]] [OUT_DIR]
#
#   OUT_DIR      where the results go (default: a new folder under /tmp): one
#                JSON per scenario, the server logs, run.txt, report.html
#   --quick      every scenario at a tenth of its size or less (about 30 s):
#                to try the tools, not to measure
#   --only       only the scenarios whose name starts with PREFIX (e.g. cluster)
#   --skip       leave out the scenarios whose name starts with PREFIX
#   --server-bin start this stapes binary instead of the one built from
#                this tree (e.g. an older commit's, to compare; it must
#                take STAPES_PORT, STAPES_SHARDS and STAPES_LOG)
#   --baseline   also run every hold, fanout and sparse scenario against a
#                fresh stapes-baseline (loadtest/baseline: the single-threaded
#                epoll yardstick server), right after stapes's run of it;
#                its results are labelled NAME@baseline, beside NAME in the
#                table and the report
#   --target     run the scenarios against a server already listening there
#                (any Pusher protocol 7 server with app 1 / app-key /
#                app-secret) instead of starting stapes; --target-pid gives
#                its process for CPU and memory. The redis and cluster
#                scenarios, which need stapes's bridge, are left out.
#
# The cluster scenarios run each load twice: on one node without Redis
# (NAME-1node), then spread over STAPES_CLUSTER_NODES (default 3) nodes,
# each with one shard, sharing a fresh redis-server; the publisher talks to
# the first node. `stapes-load cluster-table` then sets them side by side.
#
# Compare two runs, e.g. before and after a change, or stapes and another
# server:  target/release/stapes-load report --out cmp.html before=DIR1 after=DIR2
#
# Every scenario is bounded in events, seconds and connections, and every
# wait in stapes-load has a deadline, so the run ends by itself (about five
# minutes on a 2-core machine). Only loopback addresses are used.
# STAPES_SHARDS (default: every core) sets the server's shard count.
set -euo pipefail
cd "$(dirname "$0")/.."

quick=""
baseline=""
only=""
skip=""
remote=""
remote_pid=""
server_bin=""
out=""
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) quick=1 ;;
    --baseline) baseline=1 ;;
    --only) only="$2"; shift ;;
    --skip) skip="$2"; shift ;;
    --target) remote="$2"; shift ;;
    --target-pid) remote_pid="$2"; shift ;;
    --server-bin) server_bin="$2"; shift ;;
    -*) echo "run.sh: unknown option $1" >&2; exit 2 ;;
    *) out="$1" ;;
  esac
  shift
done
out="${out:-$(mktemp -d /tmp/stapes-load.XXXXXX)}"
mkdir -p "$out"
target="${CARGO_TARGET_DIR:-$PWD/target}"
cargo build --release --locked -p stapes -p stapes-load ${baseline:+-p stapes-baseline} >&2
server_bin="${server_bin:-$target/release/stapes}"
load_bin="$target/release/stapes-load"
baseline_bin="$target/release/stapes-baseline"

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

server_pid=""
redis_pid=""
node_pids=()
stop_server() {
  for pid in "$server_pid" "${node_pids[@]}" "$redis_pid"; do
    if [ -n "$pid" ]; then
      kill "$pid" 2>/dev/null || true
      wait "$pid" 2>/dev/null || true
    fi
  done
  server_pid=""
  redis_pid=""
  node_pids=()
}
trap stop_server EXIT

wait_port() {
  for _ in $(seq 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.05
  done
  echo "nothing listens on port $1" >&2
  return 1
}

# run NAME SCENARIO ARGS...: one scenario against a fresh server. The
# redis scenario also gets its own redis-server, and stapes its bridge.
run() {
  local name="$1"; shift
  if [ -n "$remote" ]; then
    [ "$1" = redis ] && return 0
    echo "== $name" >&2
    local pid_args=()
    [ -n "$remote_pid" ] && pid_args=(--pid "$remote_pid")
    "$load_bin" "$@" --host "${remote%:*}" --port "${remote##*:}" "${pid_args[@]}" \
      --label "$name" --json "$out/$name.json" >&2 || true
    return 0
  fi
  local port; port=$(free_port)
  local redis_env=()
  if [ "$1" = redis ]; then
    local rport; rport=$(free_port)
    redis-server --port "$rport" --bind 127.0.0.1 --save "" --appendonly no >"$out/$name.redis.log" 2>&1 &
    redis_pid=$!
    wait_port "$rport"
    redis_env=(STAPES_REDIS_URL="redis://127.0.0.1:$rport")
    set -- "$@" --redis "127.0.0.1:$rport"
  fi
  env "${redis_env[@]}" STAPES_PORT="$port" STAPES_SHARDS="${STAPES_SHARDS:-$(nproc)}" STAPES_LOG=warn \
    "$server_bin" >"$out/$name.server.log" 2>&1 &
  server_pid=$!
  wait_port "$port"
  if [ "$1" = redis ]; then
    # The bridge subscribes in the background: wait until it has.
    for _ in $(seq 100); do
      [ "$(redis-cli -p "$rport" pubsub numsub stapes:pusher Incus | grep -cx 1)" = 2 ] && break
      sleep 0.05
    done
  fi
  echo "== $name" >&2
  "$load_bin" "$@" --port "$port" --pid "$server_pid" --label "$name" --json "$out/$name.json" >&2 || true
  stop_server
}

# run_baseline NAME SCENARIO ARGS...: the same load against a fresh
# stapes-baseline, labelled NAME@baseline.
run_baseline() {
  local name="$1@baseline"; shift
  local port; port=$(free_port)
  "$baseline_bin" "$port" >"$out/$name.server.log" 2>&1 &
  server_pid=$!
  wait_port "$port"
  echo "== $name" >&2
  "$load_bin" "$@" --port "$port" --pid "$server_pid" --label "$name" --json "$out/$name.json" >&2 || true
  stop_server
}

names=()
# skipped NAME: whether --only or --skip leaves the scenario out.
skipped() {
  [[ "$1" != "$only"* ]] || { [ -n "$skip" ] && [[ "$1" == "$skip"* ]]; }
}
scenario() {
  skipped "$1" && return 0
  names+=("$1")
  run "$@"
  # The yardstick speaks public channels and the HTTP API only.
  if [ -n "$baseline" ] && [ -z "$remote" ] && [[ "$2" =~ ^(hold|fanout|sparse)$ ]]; then
    names+=("$1@baseline")
    run_baseline "$@"
  fi
}

# cluster NAME SCENARIO ARGS...: the load on one single-shard node without
# Redis (NAME-1node), then over the cluster's nodes (NAME).
cluster_pairs=()
cluster() {
  local name="$1"; shift
  [ -n "$remote" ] && return 0
  skipped "$name" && return 0
  names+=("$name-1node" "$name")
  cluster_pairs+=("$out/$name-1node.json" "$out/$name.json")
  STAPES_SHARDS=1 run "$name-1node" "$@"
  local rport; rport=$(free_port)
  redis-server --port "$rport" --bind 127.0.0.1 --save "" --appendonly no >"$out/$name.redis.log" 2>&1 &
  redis_pid=$!
  wait_port "$rport"
  local ports=() i port
  for i in $(seq "${STAPES_CLUSTER_NODES:-3}"); do
    port=$(free_port)
    STAPES_REDIS_URL="redis://127.0.0.1:$rport" STAPES_PORT="$port" STAPES_SHARDS=1 STAPES_LOG=warn \
      "$server_bin" >"$out/$name.node$i.log" 2>&1 &
    node_pids+=($!)
    ports+=("$port")
  done
  for port in "${ports[@]}"; do wait_port "$port"; done
  echo "== $name" >&2
  "$load_bin" "$@" --nodes "$(IFS=,; echo "${ports[*]}")" --pid "$(IFS=,; echo "${node_pids[*]}")" \
    --redis-info "127.0.0.1:$rport" --label "$name" --json "$out/$name.json" >&2 || true
  stop_server
}
if [ -n "$quick" ]; then
  scenario hold-2k          hold     --connections 2000 --secs 2
  scenario fanout-1k-max    fanout   --connections 1000 --events 500  --size 100
  scenario fanout-1k-100hz  fanout   --connections 1000 --events 200  --size 100 --rate 100
  scenario sparse-100x10    sparse   --channels 100 --per-channel 10 --events 1000 --size 100 --rate 500
  scenario presence-20x10   presence --channels 20 --per-channel 10 --churn-rate 100 --secs 2
  scenario redis-1sub       redis    --connections 1 --events 200 --size 100 --rate 100
  cluster  cluster-fanout-300-100hz fanout --connections 300 --events 200 --size 100 --rate 100
  cluster  cluster-sparse-30x6      sparse --channels 30 --per-channel 6 --events 300 --size 100 --rate 500 --pin-every 2
else
  scenario hold-19k         hold     --connections 19000 --channels 19000 --secs 5
  scenario fanout-10k-max   fanout   --connections 10000 --events 500  --size 100
  scenario fanout-1k-max    fanout   --connections 1000  --events 5000 --size 100
  scenario fanout-10k-20hz  fanout   --connections 10000 --events 200  --size 100 --rate 20
  scenario fanout-1k-100hz  fanout   --connections 1000  --events 1000 --size 100 --rate 100
  scenario sparse-1kx10     sparse   --channels 1000 --per-channel 10 --events 5000 --size 100 --rate 1000
  # One subscriber a channel (a user's private channel): a publish needs
  # no shard but the subscriber's (per-shard interest, README #14).
  scenario sparse-1kx1      sparse   --channels 1000 --per-channel 1  --events 5000 --size 100 --rate 1000
  scenario presence-100x10  presence --channels 100 --per-channel 10 --churn-rate 200 --secs 5
  scenario redis-1sub       redis    --connections 1 --events 1000 --size 100 --rate 100
  scenario redis-incus-1sub redis    --protocol incus --connections 1 --events 1000 --size 100 --rate 100
  cluster  cluster-fanout-9k-max    fanout --connections 9000 --events 500  --size 100
  cluster  cluster-fanout-1k-100hz  fanout --connections 1000 --events 1000 --size 100 --rate 100
  cluster  cluster-fanout-30-100hz   fanout --connections 30   --events 1000 --size 100 --rate 100
  cluster  cluster-sparse-1kx10     sparse --channels 1000 --per-channel 10 --events 5000 --size 100 --rate 1000 --pin-every 2
fi

if [ -n "$remote" ]; then
  what="server at $remote"
elif [ "$server_bin" != "$target/release/stapes" ]; then
  what="$("$server_bin" --version 2>/dev/null || echo stapes) at $server_bin"
else
  what="stapes $(git rev-parse --short HEAD)${STAPES_IO_DRIVER:+ (STAPES_IO_DRIVER=$STAPES_IO_DRIVER)}"
fi
[ -n "$baseline" ] && what="$what, beside stapes-baseline"
echo "$what, $(date -u +%Y-%m-%d), $(nproc) cores${quick:+, --quick}" >"$out/run.txt"
echo
echo "$(cat "$out/run.txt"), results in $out"
echo
files=()
for f in "${names[@]}"; do
  [ -f "$out/$f.json" ] && files+=("$out/$f.json")
done
"$load_bin" table "${files[@]}"
pairs=()
for ((i = 0; i < ${#cluster_pairs[@]}; i += 2)); do
  [ -f "${cluster_pairs[i]}" ] && [ -f "${cluster_pairs[i+1]}" ] &&
    pairs+=("${cluster_pairs[i]}" "${cluster_pairs[i+1]}")
done
if [ "${#pairs[@]}" -gt 0 ]; then
  echo
  "$load_bin" cluster-table "${pairs[@]}"
fi
"$load_bin" report --title "stapes-load: $what" --out "$out/report.html" "$out"
