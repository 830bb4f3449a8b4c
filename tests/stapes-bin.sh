# Sourced by the SDK runners (tests/conformance/run.sh, tests/browser/run.sh,
# tests/python/run.sh):
# resolves STAPES_BIN (default <repo>/target/debug/stapes, a relative path
# taken from the caller's directory), exports it, and stops if it is not an
# executable. Expects $here (the runner's directory, two levels below the
# repository root).
repo_root="$(cd "$here/../.." && pwd)"
bin="${STAPES_BIN:-$repo_root/target/debug/stapes}"
case "$bin" in
  /*) ;;
  *) bin="$PWD/$bin" ;;
esac
export STAPES_BIN="$bin"
if [ ! -x "$STAPES_BIN" ]; then
  echo "$(basename "$0"): stapes binary not found or not executable: $STAPES_BIN" >&2
  exit 1
fi

# npm_ready: installs the runner's Node packages (in the current directory)
# when they are missing or older than the lock file.
npm_ready() {
  if [ ! -d node_modules ] || [ package-lock.json -nt node_modules ]; then
    npm ci --no-audit --no-fund
    touch node_modules
  fi
}
