#!/usr/bin/env bash
# WHIP and WHEP with aiortc, an independent WebRTC implementation, against the real binary:
# tests/aiortc/whip_whep.py publishes a synthetic video and audio over WHIP and views them
# over WHEP with a second aiortc peer (>= 30 decoded video frames within 20 s), then
# DELETEs both sessions.
# Usage: tests/aiortc/run.sh [CORELAY_BINARY]    (default: target/debug/corelay)
#
# Needs python3 with venv (Debian: python3 python3-venv) and, the first time, PyPI: the
# packages (tests/aiortc/requirements.txt, all binary wheels) are kept in
# target/aiortc-venv and reinstalled only when the pinned versions change. Bounded: the
# whole run stops after 150 s.
set -euo pipefail

# The whole run is bounded: rerun this script under timeout(1), which stops it and every
# process it started (the server included).
if [ -z "${AIORTC_RUN_BOUNDED:-}" ]; then
  rc=0
  AIORTC_RUN_BOUNDED=1 timeout --kill-after=5 150 bash "$0" "$@" || rc=$?
  if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
    echo "aiortc: FAIL: ran over 150 s" >&2
  fi
  exit "$rc"
fi

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
HERE="$ROOT/tests/aiortc"
BIN="${1:-$ROOT/target/debug/corelay}"
VENV="$ROOT/target/aiortc-venv"
SECONDS=0

say() { echo "aiortc: $*"; }
die() {
  echo "aiortc: FAIL: $*" >&2
  exit 1
}

[ -x "$BIN" ] || die "no server binary at $BIN (run cargo build first)"
BIN=$(cd "$(dirname "$BIN")" && pwd)/$(basename "$BIN")
command -v python3 >/dev/null || die "python3 not found (Debian: apt-get install python3 python3-venv)"

# --- the venv (one installer at a time: concurrent test runs share target/) ---
mkdir -p "$ROOT/target"
exec 9>"$ROOT/target/aiortc-venv.lock"
flock -w 100 9 || die "target/aiortc-venv.lock stayed taken for 100 s"
want=$(sha256sum <"$HERE/requirements.txt" | cut -d' ' -f1)
if [ ! -x "$VENV/bin/python" ] || [ "$(cat "$VENV/.requirements" 2>/dev/null)" != "$want" ]; then
  say "creating $VENV"
  rm -rf "$VENV"
  python3 -m venv "$VENV" || die "python3 -m venv failed (Debian: apt-get install python3-venv)"
  # --only-binary: every package has wheels; never fall back to building FFmpeg bindings.
  timeout 90 "$VENV/bin/pip" install --disable-pip-version-check -q --only-binary=:all: \
    -r "$HERE/requirements.txt" || die "pip install -r tests/aiortc/requirements.txt failed"
  echo "$want" >"$VENV/.requirements"
fi
exec 9>&-
say "venv ready after ${SECONDS}s"

# --- the server: 2 shards, a fixed secret, any free UDP ports ---
WORK=$(mktemp -d)
SERVER=""
cleanup() {
  if [ -n "$SERVER" ]; then
    kill "$SERVER" 2>/dev/null || true
    wait "$SERVER" 2>/dev/null || true
  fi
  rm -rf "$WORK"
}
trap cleanup EXIT
PORT=$("$VENV/bin/python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
BASE="http://127.0.0.1:$PORT"
export JWT_SECRET="aiortc-whip-whep-secret-0123456789abcdef"
env -u CORELAY_CONFIG -u LISTEN -u PORT -u CORELAY_TLS_CERT -u CORELAY_TLS_KEY \
  "$BIN" --listen "127.0.0.1:$PORT" --shards 2 --udp-port-base 0 --log-level info \
  >"$WORK/server.log" 2>&1 &
SERVER=$!
"$VENV/bin/python" - "$BASE" <<'EOF' || die "server not healthy within 20 s: $(tail -5 "$WORK/server.log")"
import sys, time, urllib.request
deadline = time.time() + 20
while time.time() < deadline:
    try:
        with urllib.request.urlopen(sys.argv[1] + "/health", timeout=2) as r:
            if r.status == 200:
                sys.exit(0)
    except OSError:
        pass
    time.sleep(0.1)
sys.exit(1)
EOF
say "server up on port $PORT"

status=0
timeout 60 "$VENV/bin/python" "$HERE/whip_whep.py" --base "$BASE" --secret "$JWT_SECRET" || status=$?

if ! kill -0 "$SERVER" 2>/dev/null; then
  echo "aiortc: FAIL: the server died" >&2
  status=1
elif grep -qi "panick" "$WORK/server.log"; then
  echo "aiortc: FAIL: the server panicked" >&2
  status=1
fi
if [ "$status" -ne 0 ]; then
  echo "aiortc: server log tail:" >&2
  tail -30 "$WORK/server.log" >&2
  say "FAILED after ${SECONDS}s"
  exit "$status"
fi
say "WHIP and WHEP with aiortc passed in ${SECONDS}s"
