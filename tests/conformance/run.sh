#!/usr/bin/env bash
# Run the conformance suite (real pusher-js + official pusher Node SDK)
# against a stapes binary: STAPES_BIN, default <repo>/target/debug/stapes.
# Twice: on one node, then on two nodes sharing a redis-server (clients on
# one, HTTP API calls on the other; see harness.mjs). Both must pass.
# STAPES_CONFORMANCE_NODES=1 or 2 runs only that mode.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=../stapes-bin.sh
. "$here/../stapes-bin.sh"

cd "$here"
npm_ready

modes="${STAPES_CONFORMANCE_NODES:-1 2}"
if [[ " $modes " == *" 2 "* ]] && ! command -v redis-server >/dev/null; then
  echo "run.sh: the two-node run needs redis-server on PATH" >&2
  exit 1
fi

status=0
for nodes in $modes; do
  echo "== conformance on $nodes node(s)"
  STAPES_CONFORMANCE_NODES=$nodes node --test --test-concurrency=1 --test-reporter=spec ./*.test.mjs || status=1
done
exit "$status"
