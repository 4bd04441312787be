#!/usr/bin/env bash
# Runs each cargo-fuzz target for FUZZ_SECONDS (default 60) and prints, per
# target, executions, exec/s and coverage (cov/ft from libFuzzer's final
# stats). Exits non-zero on any crash, timeout (hang) or leak, naming the
# artifact. Installs cargo-fuzz into FUZZ_CACHE if it is missing; needs the
# nightly toolchain (`cargo +nightly`).
#
#   scripts/fuzz.sh                 all targets, 60 s each
#   FUZZ_SECONDS=600 scripts/fuzz.sh chunked config
#
# The committed seeds (fuzz/corpus/<target>, written by
# tests/tools/gen_corpus.py) are copied to a work corpus under
# fuzz/target/work-corpus/<target> that keeps growing between runs; the
# committed ones stay small.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=${FUZZ_SECONDS:-60}
timeout=${FUZZ_TIMEOUT:-10}     # seconds one input may take before it is a hang
cache=${FUZZ_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/sockwarden-fuzz}
targets=("$@")
if ((${#targets[@]} == 0)); then
  targets=(request_head response_head chunked config client_hello ktls_control)
fi

if ! cargo +nightly --version >/dev/null 2>&1; then
  echo "fuzz.sh: the nightly toolchain is missing (rustup toolchain install nightly)" >&2
  exit 1
fi
export PATH="$cache/bin:$PATH"
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "fuzz.sh: installing cargo-fuzz into $cache" >&2
  cargo install --locked --quiet cargo-fuzz --root "$cache"
fi

start=$(date +%s)
for t in "${targets[@]}"; do
  (cd fuzz && cargo +nightly fuzz build "$t")
done
echo "fuzz.sh: built in $(($(date +%s) - start)) s"

status=0
printf '%-14s %12s %9s %7s %7s %s\n' target executions exec/s cov ft result
for t in "${targets[@]}"; do
  work=fuzz/target/work-corpus/$t
  mkdir -p "$work" "fuzz/artifacts/$t"
  cp -n fuzz/corpus/"$t"/* "$work"/ 2>/dev/null || true
  log=fuzz/target/fuzz-$t.log
  rc=0
  (cd fuzz && cargo +nightly fuzz run "$t" "../$work" -- \
    -max_total_time="$seconds" -timeout="$timeout" -rss_limit_mb=2048 \
    -print_final_stats=1 -detect_leaks=1) >"$log" 2>&1 || rc=$?
  # The last "#N ... cov: C ft: F ... exec/s: E" status line.
  line=$(grep -E '^#[0-9]+.*cov: [0-9]+' "$log" | tail -1 || true)
  execs=$(grep -oE 'stat::number_of_executed_units: *[0-9]+' "$log" | grep -oE '[0-9]+$' || true)
  rate=$(grep -oE 'stat::average_exec_per_sec: *[0-9]+' "$log" | grep -oE '[0-9]+$' || true)
  cov=$(grep -oE 'cov: [0-9]+' <<<"$line" | grep -oE '[0-9]+' || true)
  ft=$(grep -oE 'ft: [0-9]+' <<<"$line" | grep -oE '[0-9]+' || true)
  result=ok
  if ((rc != 0)); then
    status=1
    artifact=$(grep -oE 'Test unit written to [^ ]+' "$log" | tail -1 | sed 's/Test unit written to //' || true)
    kind=$(grep -oE 'ERROR: libFuzzer: [a-z-]+|deadly signal|panicked at' "$log" | head -1 || true)
    result="FAILED ($kind) artifact: ${artifact:-?} log: $log"
  fi
  printf '%-14s %12s %9s %7s %7s %s\n' "$t" "${execs:-?}" "${rate:-?}" "${cov:-?}" "${ft:-?}" "$result"
done
echo "fuzz.sh: total $(($(date +%s) - start)) s"
exit "$status"
