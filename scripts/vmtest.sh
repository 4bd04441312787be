#!/usr/bin/env bash
# The kernel matrix: the kernel tier (the test target `kernel`, tests/kernel/)
# and the real binary on each Debian kernel of
# vmtests/vmtest.toml, one VM at a time under vmtest; also records every
# program's verifier instruction count per kernel in vmtests/verifier/.
# Installs what it needs; downloads and builds are cached in
# /var/cache/sockwarden-vmtest. See vmtests/README.md.
#
# Usage: sudo scripts/vmtest.sh [NAME...]   (target names; default: all)
# Environment: SW_VMTEST_ACCEL=kvm|tcg overrides the accelerator choice;
#              SW_VMTEST_TIMEOUT bounds each VM in seconds (default 3600);
#              SW_VMTEST_THREADS is the tests' --test-threads in the guest
#              (default 1: under TCG two at a time were no faster, and
#              their timing assertions failed more often);
#              SOCKWARDEN_TEST_PATIENCE stretches the tests' waits (default 4);
#              SW_VMTEST_FILTER runs only the tests whose names match (libtest
#              filters, space-separated; names are module::test, e.g.
#              bodies::a_slow_reader_holds_the_origin_back), e.g.
#              SW_VMTEST_FILTER=slow_reader.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
cache=/var/cache/sockwarden-vmtest
export SW_VMTEST_CACHE=$cache
vmtest_version=0.18.0

scripts/setup.sh
if [[ $(id -u) -ne 0 ]]; then
  echo "vmtest.sh: run as root: it installs packages and the guests create namespaces, cgroups and eBPF programs" >&2
  exit 1
fi

packages=(
  qemu-system-x86 # the VMs
  qemu-guest-agent # vmtest drives the guest through it (from the host's root)
  busybox-static cpio # the initramfs that mounts the 9p root
  kmod xz-utils zstd # depmod and modprobe for the Debian kernels' modules
)
missing=()
for p in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q '^install ok installed$'; then
    missing+=("$p")
  fi
done
if ((${#missing[@]})); then
  echo "vmtest.sh: installing ${missing[*]}" >&2
  log=$(mktemp /tmp/sockwarden-vmtest.XXXXXX)
  if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"; } >"$log" 2>&1; then
    cat "$log" >&2
    echo "vmtest.sh: installing packages failed (log above)" >&2
    exit 1
  fi
  rm -f "$log"
fi
# The guests bind their kernel's modules onto /lib/modules, which must exist
# in the (shared) root; hosts without modules of their own lack it.
install -d /lib/modules

vmtest=$cache/vmtest/bin/vmtest
if [[ $("$vmtest" --version 2>/dev/null) != "vmtest $vmtest_version" ]]; then
  echo "vmtest.sh: cargo install vmtest $vmtest_version" >&2
  timeout 1800 cargo install --quiet --locked --root "$cache/vmtest" --version "$vmtest_version" vmtest
fi

# Targets: name and Debian suite, from vmtest.toml.
mapfile -t all < <(python3 -c '
import sys, tomllib
with open(sys.argv[1], "rb") as f:
    for t in tomllib.load(f)["target"]:
        print(t["name"], t["debian_suite"])' vmtests/vmtest.toml)
declare -A suite_of=()
names=()
for line in "${all[@]}"; do
  suite_of[${line% *}]=${line#* }
  names+=("${line% *}")
done
if (($#)); then
  for n in "$@"; do
    [[ -v suite_of[$n] ]] || {
      echo "vmtest.sh: no target $n in vmtests/vmtest.toml (targets: ${names[*]})" >&2
      exit 1
    }
  done
  names=("$@")
fi

# KVM where the CPU offers hardware virtualization to this machine; a
# /dev/kvm without it (a paravirtual KVM such as kvm_pvm) cannot run
# vmtest's `-cpu host` guests, so TCG then.
if [[ -n ${SW_VMTEST_ACCEL:-} ]]; then
  accel=$SW_VMTEST_ACCEL
  why="SW_VMTEST_ACCEL"
elif [[ -w /dev/kvm ]] && grep -qwE 'vmx|svm' /proc/cpuinfo; then
  accel=kvm
  why="/dev/kvm with hardware virtualization"
else
  accel=tcg
  why="no /dev/kvm with vmx/svm: $([[ -e /sys/module/kvm_pvm ]] && echo "paravirtual kvm_pvm" || echo "no hardware virtualization")"
fi
[[ $accel == kvm || $accel == tcg ]] || {
  echo "vmtest.sh: SW_VMTEST_ACCEL must be kvm or tcg, not $accel" >&2
  exit 1
}
export SW_VMTEST_ACCEL=$accel
echo "vmtest.sh: accelerator: $accel ($why)"

echo "vmtest.sh: building the binary and the kernel tier's test executable"
build=$(cargo test --no-run --test kernel --message-format=json)
SW_VMTEST_BIN=$(python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["target"]["kind"] == ["bin"] and m["target"]["name"] == "sockwarden":
        print(m["executable"])' <<<"$build")
SW_VMTEST_TESTS=$(python3 -c '
import json, sys
print(" ".join(m["executable"] for m in map(json.loads, sys.stdin)
               if m.get("reason") == "compiler-artifact" and m["target"]["kind"] == ["test"]
               and m["target"]["name"] == "kernel"))' <<<"$build")
export SW_VMTEST_BIN SW_VMTEST_TESTS
export SW_VMTEST_THREADS=${SW_VMTEST_THREADS:-1}
# Waits in the tests (readiness, exits, keep-alive timeouts of the test
# origins) stretch by this factor under emulation; measured bounds do not.
export SOCKWARDEN_TEST_PATIENCE=${SOCKWARDEN_TEST_PATIENCE:-4}
[[ -x $SW_VMTEST_BIN && $(wc -w <<<"$SW_VMTEST_TESTS") -eq 1 ]] || {
  echo "vmtest.sh: could not find the binary and the kernel tier's test executable in cargo's output" >&2
  exit 1
}

mkdir -p "$cache/logs" vmtests/verifier
rows=()
total_passed=0
total_failed=0
status=0
for name in "${names[@]}"; do
  vmtests/kernel.sh "$name" "${suite_of[$name]}"
  log=$cache/logs/$name.log
  echo "== $name: $(cat "$cache/kernels/$name/package") ($accel); log: $log"
  started=$SECONDS
  rc=0
  # The log has everything; shown as it runs is the guest command's output
  # (not the kernel's console messages, nor the serial console's prompt).
  timeout --kill-after=30 "${SW_VMTEST_TIMEOUT:-3600}" \
    "$vmtest" -c "$repo/vmtests/vmtest.toml" -f "^${name//./\\.}\$" 2>&1 |
    tee "$log" | sed -u -n -E '/^===> Running command/,${/^\[ *[0-9]+\.[0-9]+\] |root@\(none\)/d;p}' || rc=$?
  wall=$((SECONDS - started))
  result=$(grep -aE "^vmtest-result $name: [0-9]+ passed, [0-9]+ failed$" "$log" | tail -n 1 || true)
  if [[ $result =~ ([0-9]+)\ passed,\ ([0-9]+)\ failed ]]; then
    passed=${BASH_REMATCH[1]}
    failed=${BASH_REMATCH[2]}
  else
    echo "vmtest.sh: $name gave no test result (vmtest exit $rc); the end of its log:"
    tail -n 40 "$log"
    passed=0
    failed=1
  fi
  if ((rc != 0 || failed != 0)); then
    status=1
  fi
  total_passed=$((total_passed + passed))
  total_failed=$((total_failed + failed))
  rows+=("$(printf '%-6s %-26s %6s %6s %7s' "$name" "$(cat "$cache/kernels/$name/release")" "$passed" "$failed" "$((wall / 60))m$((wall % 60))s")")
done

host_file=vmtests/verifier/host-$(uname -r | cut -d. -f1,2).txt
vmtests/verifier.py "$SW_VMTEST_BIN" "$host_file" "host: $(uname -r)" >/dev/null
echo "vmtest.sh: verifier counts in vmtests/verifier/ (host: $host_file)"

echo
echo "accelerator: $accel"
printf '%-6s %-26s %6s %6s %7s\n' kernel release passed failed wall
printf '%s\n' "${rows[@]}"
echo "vmtest: $total_passed passed, $total_failed failed"
exit "$status"
