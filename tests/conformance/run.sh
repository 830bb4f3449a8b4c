#!/usr/bin/env bash
# Run the conformance suite (real pusher-js + official pusher Node SDK)
# against a stapes binary: STAPES_BIN, default <repo>/target/debug/stapes.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo_root="$(cd "$here/../.." && pwd)"

bin="${STAPES_BIN:-$repo_root/target/debug/stapes}"
case "$bin" in
  /*) ;;
  *) bin="$PWD/$bin" ;; # a relative STAPES_BIN is taken from the caller's directory
esac
export STAPES_BIN="$bin"

cd "$here"

if [ ! -d node_modules ] || [ package-lock.json -nt node_modules ]; then
  npm ci --no-audit --no-fund
  touch node_modules
fi

if [ ! -x "$STAPES_BIN" ]; then
  echo "run.sh: stapes binary not found or not executable: $STAPES_BIN" >&2
  exit 1
fi

status=0
node --test --test-concurrency=1 --test-reporter=spec ./*.test.mjs || status=$?
exit "$status"
