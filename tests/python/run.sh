#!/usr/bin/env bash
# Run the official Python server SDK (`pusher` from PyPI, pinned in
# requirements.txt) against a stapes binary: STAPES_BIN, default
# <repo>/target/debug/stapes. The SDK lives in a venv next to this script
# (git-ignored), rebuilt when requirements.txt changes. Twice: on one node,
# then on two nodes sharing a redis-server (WebSocket clients on one, the
# SDK on the other); both must pass. STAPES_CONFORMANCE_NODES=1 or 2 runs
# only that mode.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=../stapes-bin.sh
. "$here/../stapes-bin.sh"

venv="$here/.venv"
if [ ! -x "$venv/bin/python" ] || [ "$here/requirements.txt" -nt "$venv/.installed" ]; then
  rm -rf "$venv"
  if ! python3 -m venv "$venv" >/dev/null 2>&1; then
    # Debian ships venv (and ensurepip) in a separate package.
    echo "== installing python3-venv"
    rm -rf "$venv"
    apt-get update -qq && apt-get install -y -qq python3 python3-venv >/dev/null
    python3 -m venv "$venv"
  fi
  "$venv/bin/pip" install -q --disable-pip-version-check -r "$here/requirements.txt"
  touch "$venv/.installed"
fi

modes="${STAPES_CONFORMANCE_NODES:-1 2}"
if [[ " $modes " == *" 2 "* ]] && ! command -v redis-server >/dev/null; then
  echo "run.sh: the two-node run needs redis-server on PATH" >&2
  exit 1
fi

status=0
for nodes in $modes; do
  echo "== Python SDK on $nodes node(s)"
  STAPES_CONFORMANCE_NODES=$nodes "$venv/bin/python" "$here/test_sdk.py" || status=1
done
exit "$status"
