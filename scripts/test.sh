#!/usr/bin/env bash
# The whole test suite: installs what it needs, checks formatting and lints,
# then runs every tier (unit, loopback proxy, kernel with namespaces and
# cgroups). The kernel tier needs root and fails, never skips, without it.
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
echo "== cargo test"
cargo test --all-targets
