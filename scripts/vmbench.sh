#!/usr/bin/env bash
# The kTLS benchmark (scripts/bench.sh with BENCH_CASES=ktls) inside a VM of
# the kernel matrix, whose Debian kernel has kTLS (this host's has not):
# intercepted and originated 64 MiB downloads with kTLS against the same
# VM's copy path (tls.ktls: false), in one run. The guest's root is the
# host's (9p) and offline, so the packages bench.sh uses and the release
# binary are installed and built here first; the guest runs bench.sh
# (vmtests/guest.sh, SW_VMTEST_BENCH) and its table ends up in the output
# and in the VM's log.
#
# Usage: sudo scripts/vmbench.sh [NAME]   (a vmtest.toml target; default 6.1)
# Environment: ROUNDS (default 9) as in bench.sh; what scripts/vmtest.sh
# reads (SW_VMTEST_ACCEL, SW_VMTEST_TIMEOUT).
set -euo pipefail
cd "$(dirname "$0")/.."
[[ $(id -u) -eq 0 ]] || { echo "vmbench.sh: run as root" >&2; exit 1; }
scripts/setup.sh
packages=(haproxy nginx-light wrk openssl)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q '^install ok installed$' || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "vmbench.sh: installing ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  { apt-get update -qq && apt-get install -y -qq --no-install-recommends "${missing[@]}"; } >/dev/null
fi
cargo build --release --quiet
export SW_VMTEST_BENCH_ROUNDS=${ROUNDS:-9}
exec scripts/vmtest.sh "${1:-6.1}"
