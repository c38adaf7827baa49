#!/usr/bin/env bash
# Installs corelay as a systemd service: binary, config, environment file with a secret,
# system user, unit. Safe to run again (upgrades the binary and the unit, keeps the
# config and the secret).
#
#   sudo systemd/install.sh [--binary PATH]
#   DESTDIR=/tmp/stage systemd/install.sh      # stage into a directory, no root needed
#
# With DESTDIR set, every path is prefixed with it and nothing outside it is touched: no
# user is created and systemctl is not called (the script says so).
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
repo="$(dirname "$here")"
binary="$repo/target/release/corelay"

usage() {
  sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'
  exit "${1:-0}"
}

while [ $# -gt 0 ]; do
  case "$1" in
    --binary) binary="${2:?--binary needs a path}"; shift 2 ;;
    --binary=*) binary="${1#--binary=}"; shift ;;
    -h|--help) usage 0 ;;
    *) echo "install.sh: unknown argument: $1" >&2; usage 2 ;;
  esac
done

dest="${DESTDIR:-}"
dest="${dest%/}"
staged() { [ -n "$dest" ]; }

if ! staged && [ "$(id -u)" -ne 0 ]; then
  echo "install.sh: run as root (or set DESTDIR to stage into a directory)" >&2
  exit 1
fi
if [ ! -x "$binary" ]; then
  echo "install.sh: no executable at $binary: build it (cargo build --release) or pass --binary PATH" >&2
  exit 1
fi

bin_path="$dest/usr/local/bin/corelay"
etc="$dest/etc/corelay"
unit_path="$dest/etc/systemd/system/corelay.service"
say() { echo "install.sh: $*"; }

# 1. The service user: a system account with no home and no shell.
if staged; then
  say "DESTDIR set: not creating the corelay user"
elif getent passwd corelay >/dev/null; then
  say "user corelay exists"
else
  useradd --system --user-group --no-create-home --home-dir /nonexistent \
    --shell /usr/sbin/nologin --comment "corelay WebRTC SFU" corelay
  say "created system user corelay"
fi

# 2. The binary: replaced on every run (that is the upgrade). install(1) writes a new file
# and renames it, so a running corelay keeps its old copy until restarted.
install -D -m 0755 "$binary" "$bin_path"
say "installed $bin_path"

# 3. The config: written once, then the operator's. The example is refreshed every time so
# new keys show up after an upgrade.
install -d -m 0755 "$etc"
install -m 0644 "$here/corelay.toml.example" "$etc/corelay.toml.example"
if [ -e "$etc/corelay.toml" ]; then
  say "kept $etc/corelay.toml (compare with corelay.toml.example for new keys)"
else
  install -m 0644 "$here/corelay.toml.example" "$etc/corelay.toml"
  say "installed $etc/corelay.toml"
fi

# 4. The environment file with the token secret: root-only, created once; a secret that
# is already there is never replaced (that would invalidate every token).
env_file="$etc/corelay.env"
umask 077
if [ ! -e "$env_file" ]; then
  install -m 0600 "$here/corelay.env.example" "$env_file"
  say "installed $env_file"
fi
if grep -Eq '^[[:space:]]*JWT_SECRET=[^[:space:]]+' "$env_file"; then
  say "kept the JWT_SECRET in $env_file"
else
  # 48 random bytes, base64 without characters that need quoting: about 64 characters.
  secret="$(head -c 48 /dev/urandom | base64 | tr -d '\n/+=')"
  if grep -Eq '^[[:space:]]*JWT_SECRET=' "$env_file"; then
    sed -i "s|^[[:space:]]*JWT_SECRET=.*|JWT_SECRET=$secret|" "$env_file"
  else
    printf 'JWT_SECRET=%s\n' "$secret" >>"$env_file"
  fi
  say "generated a random JWT_SECRET in $env_file"
fi
chmod 0600 "$env_file"
umask 022

# 5. The unit, replaced on every run like the binary (local changes belong in drop-ins).
install -D -m 0644 "$here/corelay.service" "$unit_path"
say "installed $unit_path"

if staged; then
  say "DESTDIR set: not running systemctl daemon-reload"
elif [ -d /run/systemd/system ]; then
  systemctl daemon-reload
  say "systemctl daemon-reload done"
else
  say "systemd is not running here: run 'systemctl daemon-reload' where it is"
fi

cat <<EOF

Next steps:
  1. Edit $etc/corelay.toml: server.listen (e.g. 0.0.0.0:3001) and udp.announced_ip
     (the address clients reach).
  2. Tune the host (as root):
       install -m 0644 $repo/tuning/99-corelay.conf /etc/sysctl.d/ && sysctl --system
       corelay tune-check --config /etc/corelay/corelay.toml
  3. Open the firewall: TCP for server.listen, UDP udp.port_base .. port_base+shards-1.
  4. Start it:   systemctl enable --now corelay
     Watch it:   systemctl status corelay; journalctl -u corelay -f
     Tokens:     set -a; . /etc/corelay/corelay.env; corelay token --user alice --room demo
  Upgrade later: rebuild, run this script again, then systemctl restart corelay.
EOF
