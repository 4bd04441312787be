#!/usr/bin/env bash
# The command of every target in vmtest.toml: runs inside the guest, in
# vmtests/ of the host's checkout (the host's root is the guest's root, over
# 9p). Records the verifier counts into verifier/NAME.txt, then runs the
# kernel-tier test executables that scripts/vmtest.sh built on the host,
# and ends with one line the host reads:
#
#   vmtest-result NAME: P passed, F failed
#
# Usage: guest.sh NAME. vmtest hands the host's environment to the command;
# scripts/vmtest.sh puts there:
#   SW_VMTEST_CACHE    the cache (kernels/NAME/{release,package})
#   SW_VMTEST_BIN      the sockwarden binary
#   SW_VMTEST_TESTS    the test executables, space-separated
#   SW_VMTEST_THREADS  libtest's --test-threads
#   SW_VMTEST_FILTER   libtest name filters (optional: every test if unset)
#   SW_VMTEST_BENCH_ROUNDS  set by scripts/vmbench.sh: run the kTLS benchmark
#                      (bench.sh, BENCH_CASES=ktls, this many rounds) instead
set -euo pipefail

name=$1
kdir=$SW_VMTEST_CACHE/kernels/$name
release=$(uname -r)
if [[ $release != "$(cat "$kdir/release")" ]]; then
  echo "guest: booted $release, expected $(cat "$kdir/release")" >&2
  exit 1
fi
# /tmp is the host's /tmp over 9p: the tests get a tmpfs of their own. The
# checkout and the executables, if they live under the host's /tmp, are
# bound back in at the same paths.
repo=$(cd .. && pwd)
read -ra tests <<<"$SW_VMTEST_TESTS"
mkdir /mnt/host-tmp
mount --bind /tmp /mnt/host-tmp
mount -t tmpfs -o mode=1777 tmpfs /tmp
mapfile -t dirs < <(dirname "$SW_VMTEST_BIN" "${tests[@]}")
for path in "$repo" "${dirs[@]}"; do
  if [[ $path == /tmp/* && ! -e $path ]]; then
    mkdir -p "$path"
    mount --bind "/mnt/host-tmp/${path#/tmp/}" "$path"
  fi
done
echo "guest: kernel $release, $(nproc) CPUs, $(($(awk '/^MemTotal:/ {print $2}' /proc/meminfo) / 1024)) MiB"

cd "$repo"
vmtests/verifier.py "$SW_VMTEST_BIN" "vmtests/verifier/$name.txt" "$name: $release ($(cat "$kdir/package"))"

# scripts/vmbench.sh: the kTLS benchmark instead of the tests (its table is
# the output; one "test", passed when bench.sh succeeded).
if [[ -n ${SW_VMTEST_BENCH_ROUNDS:-} ]]; then
  rc=0
  BENCH_CASES=ktls ROUNDS=$SW_VMTEST_BENCH_ROUNDS scripts/bench.sh || rc=$?
  echo "vmtest-result $name: $((rc == 0)) passed, $((rc != 0)) failed"
  exit "$rc"
fi

# Debian's kernels build kTLS (the tls module, loaded on first use): the
# HTTPS tests must see it taken, not fall back to copying.
export SW_EXPECT_KTLS=1

passed=0
failed=0
for test in "${tests[@]}"; do
  log=/tmp/$(basename "$test").log
  echo "guest: running $test"
  rc=0
  # The limits module (10,000 connections, EMFILE at accept) measures the
  # proxy's userspace limits, the same on every kernel, with bounds an
  # emulated guest cannot meet: it runs on the host (scripts/test.sh) only.
  # One executable holds the whole tier: about 35 min under TCG.
  # shellcheck disable=SC2086 # SW_VMTEST_FILTER: libtest name filters, split on spaces
  timeout --kill-after=10 3300 "$test" --test-threads="$SW_VMTEST_THREADS" --skip limits:: --skip reload::fifty_reloads ${SW_VMTEST_FILTER:-} 2>&1 | tee "$log" || rc=$?
  result=$(grep '^test result:' "$log" | tail -n 1 || true)
  if [[ $result =~ ([0-9]+)\ passed\;\ ([0-9]+)\ failed ]]; then
    passed=$((passed + BASH_REMATCH[1]))
    failed=$((failed + BASH_REMATCH[2]))
  fi
  if ((rc != 0)) && [[ $result != *" failed;"* || $result == *" 0 failed;"* ]]; then
    echo "guest: $test exited with status $rc before reporting a failed test; counted as one failure"
    failed=$((failed + 1))
  fi
done
echo "vmtest-result $name: $passed passed, $failed failed"
((failed == 0))
