#!/usr/bin/env bash
# The whole test suite: installs what it needs, checks formatting and lints,
# then runs every tier of tests/README.md: unit (cargo test --lib --bins),
# loopback (--test loopback) and kernel (--test kernel, namespaces, cgroups
# and eBPF). The kernel tier needs root and fails, never skips, without it.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh
if [[ $(id -u) -ne 0 ]]; then
  echo "test.sh: run as root: the kernel tier creates network namespaces, cgroups and eBPF programs" >&2
  exit 1
fi

echo "== cargo fmt --check"
cargo fmt --check
echo "== cargo clippy --all-targets -- -D warnings"
cargo clippy --all-targets --quiet -- -D warnings
echo "== scripts/check-dashboards.sh (the Grafana dashboard and the alert rules against docs/metrics.md, promtool)"
scripts/check-dashboards.sh
# Every test target is a tier run below; a new one must join them here
# and in tests/README.md.
shopt -s nullglob
targets=$(for t in tests/*.rs tests/*/main.rs; do t=${t#tests/}; t=${t%/main.rs}; echo "${t%.rs}"; done | sort | tr '\n' ' ')
shopt -u nullglob
if [[ $targets != "kernel loopback " ]]; then
  echo "test.sh: test targets are: $targets(expected: kernel loopback); add a new one to test.sh and tests/README.md" >&2
  exit 1
fi
echo "== unit tier: cargo test --lib --bins"
cargo test --lib --bins
echo "== loopback tier: cargo test --test loopback"
cargo test --test loopback
echo "== kernel tier: cargo test --test kernel"
cargo test --test kernel
