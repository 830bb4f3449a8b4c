#!/usr/bin/env bash
# Browser tests: every *.test.mjs here, with the real pusher-js in headless
# Chromium (Debian's chromium package, driven by playwright-core) against a
# stapes binary: STAPES_BIN, default <repo>/target/debug/stapes.
# CHROMIUM overrides the browser, default /usr/bin/chromium; STAPES_ARTIFACTS
# is where screenshots go (default <repo>/target/test-artifacts).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=../stapes-bin.sh
. "$here/../stapes-bin.sh"

cd "$here"
npm_ready

export CHROMIUM="${CHROMIUM:-/usr/bin/chromium}"
if [ ! -x "$CHROMIUM" ]; then
  echo "run.sh: no browser at $CHROMIUM (apt-get install chromium)" >&2
  exit 1
fi

node --test --test-concurrency=1 --test-reporter=spec ./*.test.mjs
