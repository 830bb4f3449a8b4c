#!/usr/bin/env bash
# Installs stapes as a systemd service, from this repository:
#
#   deploy/install.sh                 build (cargo install) and install, as root
#   STAPES_BIN=path deploy/install.sh install this binary instead of building
#   DESTDIR=dir deploy/install.sh     stage everything under dir (packaging,
#                                     tests): no user, no chown, no systemctl
#
# What goes where:
#   /usr/local/bin/stapes                  the binary
#   /etc/stapes/config.yml                 the reference config.yml, if none is there
#   /etc/stapes/stapes.env                 environment and secrets, if none is there
#   /etc/systemd/system/stapes.service     the unit (deploy/stapes.service)
#   /usr/local/share/doc/stapes/README.md  the documentation the unit links
# and a system user and group `stapes` that owns nothing but reads
# /etc/stapes. An existing config.yml or stapes.env is never overwritten.
set -euo pipefail
cd "$(dirname "$0")/.."

dest="${DESTDIR:-}"
prefix=/usr/local
conf="$dest/etc/stapes"

if [ -z "$dest" ] && [ "$(id -u)" != 0 ]; then
  echo "install.sh: run as root (or set DESTDIR to stage the files)" >&2
  exit 1
fi

if [ -n "${STAPES_BIN:-}" ]; then
  install -D -m 0755 "$STAPES_BIN" "$dest$prefix/bin/stapes"
else
  cargo install --locked --path . --root "$dest$prefix"
fi

if [ -z "$dest" ] && ! id stapes >/dev/null 2>&1; then
  useradd --system --user-group --no-create-home --home-dir /nonexistent \
    --shell /usr/sbin/nologin --comment "stapes realtime server" stapes
fi

# Readable by the service's group, writable by root alone: stapes itself
# never writes to /etc/stapes (the unit makes the whole file system
# read-only to it).
owner=()
[ -z "$dest" ] && owner=(-o root -g stapes)
install -d -m 0750 "${owner[@]}" "$conf"
[ -e "$conf/config.yml" ] || install -m 0640 "${owner[@]}" config.yml "$conf/config.yml"
[ -e "$conf/stapes.env" ] || install -m 0640 "${owner[@]}" deploy/stapes.env "$conf/stapes.env"
install -D -m 0644 deploy/stapes.service "$dest/etc/systemd/system/stapes.service"
install -D -m 0644 README.md "$dest$prefix/share/doc/stapes/README.md"

if [ -n "$dest" ]; then
  echo "staged under $dest"
  exit 0
fi
if [ -d /run/systemd/system ]; then
  systemctl daemon-reload
fi
echo "installed. Next:"
echo "  edit /etc/stapes/config.yml (apps, server.host) and /etc/stapes/stapes.env (secrets)"
echo "  stapes doctor --config /etc/stapes/config.yml    # can this host hold server.max_connections?"
echo "  systemctl enable --now stapes"
