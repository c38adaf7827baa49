#!/usr/bin/env bash
# Builds the coverage-guided fuzz targets in fuzz/ (libFuzzer through libfuzzer-sys, on the
# stable toolchain, no sanitizer) and runs each for a bounded time.
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]    each target SECONDS seconds (default 20)
#
# New inputs libFuzzer finds go to $FUZZ_DIR/corpus/<target> (FUZZ_DIR defaults to
# $CARGO_TARGET_DIR/fuzz, else target/fuzz), never into the seeds in fuzz/corpus/. A crash,
# a leak check or a timeout writes the input to $FUZZ_DIR/artifacts/<target>/ and makes the
# script exit non-zero once every target ran. Extra libFuzzer flags: FUZZ_FLAGS="-jobs=2 ...".
# FUZZ_PROFILE=dev builds unoptimized (about three times faster to build, several times
# slower to run: what CI uses for its short run); the default is release.
set -euo pipefail
cd "$(dirname "$0")/.."

secs=${1:-20}
shift || true
if [ $# -gt 0 ]; then
  targets=("$@")
else
  targets=()
  for f in fuzz/fuzz_targets/*.rs; do targets+=("$(basename "$f" .rs)"); done
fi

host=$(rustc -vV | sed -n 's/^host: //p')
fuzz_dir=${FUZZ_DIR:-${CARGO_TARGET_DIR:-$PWD/target}/fuzz}
# Coverage instrumentation without a sanitizer: what cargo-fuzz passes, minus -Zsanitizer,
# all stable flags. `--target` keeps them off build scripts and proc macros.
export RUSTFLAGS="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares --cfg fuzzing"
export CARGO_TARGET_DIR=$fuzz_dir
profile=${FUZZ_PROFILE:-release}
case $profile in
  release) out=release ;;
  dev) out=debug ;;
  *) echo "FUZZ_PROFILE must be release or dev" >&2; exit 2 ;;
esac
started=$(date +%s)
echo "== fuzz: building ${#targets[@]} targets ($profile, coverage-instrumented)"
bins=()
for t in "${targets[@]}"; do bins+=(--bin "$t"); done
cargo build --manifest-path fuzz/Cargo.toml --locked --profile "$profile" --target "$host" "${bins[@]}"
echo "== fuzz: built in $(($(date +%s) - started)) s; ${secs} s a target"

failed=()
summary=()
for t in "${targets[@]}"; do
  corpus=$fuzz_dir/corpus/$t
  artifacts=$fuzz_dir/artifacts/$t
  mkdir -p "$corpus" "$artifacts"
  log=$fuzz_dir/$t.log
  status=0
  # shellcheck disable=SC2086
  "$fuzz_dir/$host/$out/$t" -max_total_time="$secs" -timeout=20 -rss_limit_mb=2048 \
    -print_final_stats=1 -artifact_prefix="$artifacts/" ${FUZZ_FLAGS:-} \
    "$corpus" "fuzz/corpus/$t" >"$log" 2>&1 || status=$?
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  speed=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
  cov=$(grep -oE 'cov: [0-9]+ ft: [0-9]+' "$log" | tail -1 || true)
  line="$t: ${runs:-?} runs, ${speed:-?} exec/s, ${cov:-no coverage line}"
  if [ $status -ne 0 ]; then
    failed+=("$t")
    line="$line, FAILED (exit $status; input in $artifacts/)"
    grep -E 'panicked at|ERROR: libFuzzer|SUMMARY' "$log" | head -5 >&2 || true
  fi
  echo "$line"
  summary+=("$line")
done

echo "== fuzz: done in $(($(date +%s) - started)) s"
if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzz targets failed: ${failed[*]} (logs in $fuzz_dir/<target>.log)" >&2
  exit 1
fi
