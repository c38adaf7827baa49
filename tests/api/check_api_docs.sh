#!/usr/bin/env bash
# Checks the API documents a running corelay serves, with real validators:
#   - /openapi.json: schemathesis (every check) against the live server;
#   - /asyncapi: the official AsyncAPI 3.0.0 JSON Schema (npm @asyncapi/specs), the
#     official parser's rules (npm @asyncapi/parser), and live WebSocket traffic checked
#     against the document's messages (check_asyncapi.py).
# Usage: tests/api/check_api_docs.sh [CORELAY_BINARY]    (default: target/debug/corelay)
#
# Needs python3 with venv and npm (Debian: python3 python3-venv npm) and, the first time,
# PyPI and the npm registry: the tools are kept in target/api-venv and target/api-node and
# reinstalled only when their pinned versions change. Bounded: well under 3 minutes.
set -euo pipefail

# The whole run is bounded: rerun this script under timeout(1), which stops it and every
# process it started (the server included) after 240 s.
if [ -z "${CHECK_API_DOCS_BOUNDED:-}" ]; then
  rc=0
  CHECK_API_DOCS_BOUNDED=1 timeout --kill-after=5 240 bash "$0" "$@" || rc=$?
  if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
    echo "check_api_docs: FAIL: ran over 240 s" >&2
  fi
  exit "$rc"
fi

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
HERE="$ROOT/tests/api"
BIN="${1:-$ROOT/target/debug/corelay}"
VENV="$ROOT/target/api-venv"
NODE_DIR="$ROOT/target/api-node"
NODE_PACKAGES="@asyncapi/parser@3.6.3 @asyncapi/specs@6.11.1"
SECONDS=0

say() { echo "check_api_docs: $*"; }
die() {
  echo "check_api_docs: FAIL: $*" >&2
  exit 1
}

[ -x "$BIN" ] || die "no server binary at $BIN (run cargo build first)"
BIN=$(cd "$(dirname "$BIN")" && pwd)/$(basename "$BIN")
command -v python3 >/dev/null || die "python3 not found (Debian: apt-get install python3 python3-venv)"
command -v npm >/dev/null || die "npm not found (Debian: apt-get install npm)"

# --- tools (one installer at a time: concurrent test runs share target/) ---
mkdir -p "$ROOT/target"
exec 9>"$ROOT/target/api-tools.lock"
flock -w 120 9 || die "target/api-tools.lock stayed taken for 120 s"

want=$(cat "$HERE/requirements.txt" | sha256sum | cut -d' ' -f1)
if [ ! -x "$VENV/bin/python" ] || [ "$(cat "$VENV/.requirements" 2>/dev/null)" != "$want" ]; then
  say "creating $VENV"
  rm -rf "$VENV"
  python3 -m venv "$VENV" || die "python3 -m venv failed (Debian: apt-get install python3-venv)"
  timeout 100 "$VENV/bin/pip" install --disable-pip-version-check -q -r "$HERE/requirements.txt" ||
    die "pip install -r tests/api/requirements.txt failed"
  echo "$want" >"$VENV/.requirements"
fi

if [ "$(cat "$NODE_DIR/.packages" 2>/dev/null)" != "$NODE_PACKAGES" ]; then
  say "installing $NODE_PACKAGES into $NODE_DIR"
  rm -rf "$NODE_DIR"
  mkdir -p "$NODE_DIR"
  echo '{"private": true}' >"$NODE_DIR/package.json"
  # shellcheck disable=SC2086 # the package list splits on purpose
  (cd "$NODE_DIR" && timeout 60 npm install --silent --no-audit --no-fund --save-exact $NODE_PACKAGES) ||
    die "npm install $NODE_PACKAGES failed"
  echo "$NODE_PACKAGES" >"$NODE_DIR/.packages"
fi
exec 9>&-
SCHEMA="$NODE_DIR/node_modules/@asyncapi/specs/schemas/3.0.0-without-\$id.json"
[ -f "$SCHEMA" ] || die "no AsyncAPI 3.0.0 schema at $SCHEMA"
say "tools ready after ${SECONDS}s"

# --- the server: 2 shards, a secret (so tokens work), login on (so POST /login is served) ---
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
export JWT_SECRET="api-docs-check-secret-0123456789"
# No per-address caps or session rates: schemathesis's many requests from one address are
# a documentation check, not an attack (tests/hostile_rates.rs checks the limits).
env -u CORELAY_CONFIG "$BIN" --listen "127.0.0.1:$PORT" --port "$PORT" --shards 2 --udp-port-base 0 \
  --login true --log-level warn --connections-per-ip 0 --sessions-per-ip-per-s 0 \
  --sessions-per-token-per-s 0 >"$WORK/server.log" 2>&1 &
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

# --- OpenAPI: schemathesis ---
# The WebSocket endpoints are tested as HTTP: schemathesis cannot hold a valid token, so
# they answer 401/426/400 (the 101 upgrade itself is covered by tests/p2p_relay.rs and by
# check_asyncapi.py). The run happens in $WORK so that nothing lands in the source tree.
say "schemathesis on $BASE/openapi.json"
run_schemathesis() {
  (cd "$WORK" && PYTHONPATH="$HERE" SCHEMATHESIS_HOOKS=sdp_hooks timeout 150 "$VENV/bin/schemathesis" --config-file "$HERE/schemathesis.toml" \
    run "$BASE/openapi.json" --checks all --phases examples,coverage,fuzzing \
    --max-examples 150 --workers 2 --generation-database none --request-timeout 10 \
    --no-color --output-truncate false) 2>&1 | tee "$WORK/schemathesis.log"
  return "${PIPESTATUS[0]}"
}
if ! run_schemathesis; then
  # CPython 3.11's ast module sometimes fails inside hypothesis while it describes a
  # strategy ("AST constructor recursion depth mismatch"): a tool crash, not a finding.
  # Only then is the run repeated once; any real violation fails at once.
  if grep -q "AST constructor recursion depth mismatch" "$WORK/schemathesis.log" &&
    ! grep -qE "^- ST[0-9]" "$WORK/schemathesis.log"; then
    say "schemathesis crashed inside hypothesis (CPython ast bug); running it again"
    run_schemathesis || status=1
  else
    status=1
  fi
  if [ "$status" -ne 0 ]; then
    if grep -qE "^- ST[0-9]|Failures|FAILURES" "$WORK/schemathesis.log"; then
      echo "check_api_docs: FAIL: schemathesis found violations (above)" >&2
    else
      echo "check_api_docs: FAIL: schemathesis did not finish (over 150 s, or it crashed: above)" >&2
    fi
  fi
fi

# --- AsyncAPI: official schema, official parser, live traffic ---
"$VENV/bin/python" - "$BASE" "$WORK/asyncapi.json" <<'EOF' || die "cannot fetch /asyncapi"
import sys, urllib.request
with urllib.request.urlopen(sys.argv[1] + "/asyncapi", timeout=10) as r:
    open(sys.argv[2], "wb").write(r.read())
EOF
say "@asyncapi/parser on /asyncapi"
if ! NODE_PATH="$NODE_DIR/node_modules" timeout 60 node "$HERE/asyncapi_parser.cjs" "$WORK/asyncapi.json"; then
  echo "check_api_docs: FAIL: @asyncapi/parser rejects /asyncapi (above)" >&2
  status=1
fi
say "official schema and live traffic on /asyncapi"
if ! timeout 60 "$VENV/bin/python" "$HERE/check_asyncapi.py" "$BASE" "$SCHEMA" "$BIN"; then
  echo "check_api_docs: FAIL: /asyncapi violations (above)" >&2
  status=1
fi

say "/metrics through prometheus_client's parser, /latency as JSON"
if ! timeout 30 "$VENV/bin/python" - "$BASE" <<'EOF'
import json, sys, urllib.request
from prometheus_client.parser import text_string_to_metric_families
base = sys.argv[1]
with urllib.request.urlopen(base + "/metrics", timeout=10) as r:
    families = {f.name: f for f in text_string_to_metric_families(r.read().decode())}
for name in ("corelay_rtp_packets_forwarded", "corelay_connections", "corelay_forward_latency_microseconds"):
    if name not in families:
        sys.exit(f"/metrics lacks {name}: {sorted(families)}")
shards = {s.labels["shard"] for s in families["corelay_connections"].samples}
if shards != {"0", "1"}:
    sys.exit(f"/metrics: shard labels {shards}")
with urllib.request.urlopen(base + "/latency", timeout=10) as r:
    lat = json.load(r)
for h in ("forwardUs", "joinMs", "requestUs", "loopLagUs"):
    for k in ("count", "min", "p50", "p90", "p99", "p99.9", "max"):
        if k not in lat["merged"][h]:
            sys.exit(f"/latency merged.{h} lacks {k}")
print(f"metrics: {len(families)} families parse; latency: 4 histograms")
EOF
then
  echo "check_api_docs: FAIL: /metrics or /latency" >&2
  status=1
fi

# --- the server must have survived all of it ---
if ! kill -0 "$SERVER" 2>/dev/null; then
  echo "check_api_docs: FAIL: the server died: $(tail -20 "$WORK/server.log")" >&2
  status=1
elif grep -qi "panic" "$WORK/server.log"; then
  echo "check_api_docs: FAIL: the server panicked: $(grep -i -A5 panic "$WORK/server.log" | head -20)" >&2
  status=1
fi

if [ "$status" -ne 0 ]; then
  say "FAILED after ${SECONDS}s"
  exit "$status"
fi
say "all API document checks passed in ${SECONDS}s"
