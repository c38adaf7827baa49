#!/usr/bin/env bash
# Installs what the tests need on a fresh Debian machine (as root) and runs every test.
# Used as-is by CI (.ci/run).
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages the tests use:
#   pkg-config, build-essential  C parts of crypto crates
#   chromium                     real-browser tests (driven by playwright-core)
#   firefox-esr                  real-browser tests (puppeteer-core over WebDriver BiDi)
#   systemd, strace              systemd-analyze verify/security; the syscall-filter check
#   nodejs, npm                  the browser tests' runner and bundler, the AsyncAPI parser
#                                (only if npm is absent)
#   python3, python3-venv        schemathesis and prometheus_client for the API checks
#                                (only if python3 cannot make a venv)
need_pkgs=()
for pkg in pkg-config build-essential chromium firefox-esr systemd strace; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need_pkgs+=("$pkg")
done
command -v npm >/dev/null || need_pkgs+=(nodejs npm)
python3 -c 'import ensurepip, venv' 2>/dev/null || need_pkgs+=(python3 python3-venv)
if [ ${#need_pkgs[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "missing packages: ${need_pkgs[*]} (run as root to install them)" >&2
    exit 1
  fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_pkgs[@]}"
fi

if ! command -v cargo >/dev/null; then
  echo "cargo not found: install Rust >= 1.89 with rustup (https://rustup.rs)" >&2
  exit 1
fi

# glommio locks memory for its io_uring rings; raise the limit where we may.
ulimit -l unlimited 2>/dev/null || true

echo "== format and lints"
cargo fmt --all --check
cargo clippy --workspace --all-targets --locked -- -D warnings

echo "== unit and integration tests"
cargo test --workspace --all-targets --locked

echo "== fuzz targets, a few seconds each (scripts/fuzz.sh; README: Development > Fuzzing)"
FUZZ_PROFILE=dev bash scripts/fuzz.sh "${FUZZ_SECONDS:-3}"

echo "== real-browser end-to-end tests (headless chromium and firefox-esr, mediasoup-client)"
cargo build --locked
(cd tests/e2e && npm ci --no-audit --no-fund && npm test)
