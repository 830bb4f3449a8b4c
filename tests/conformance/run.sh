#!/usr/bin/env bash
# Run the conformance suite (real pusher-js + official pusher Node SDK)
# against a stapes binary: STAPES_BIN, default <repo>/target/debug/stapes.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=../stapes-bin.sh
. "$here/../stapes-bin.sh"

cd "$here"

if [ ! -d node_modules ] || [ package-lock.json -nt node_modules ]; then
  npm ci --no-audit --no-fund
  touch node_modules
fi

status=0
node --test --test-concurrency=1 --test-reporter=spec ./*.test.mjs || status=$?
exit "$status"
