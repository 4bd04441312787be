#!/usr/bin/env bash
# qemu_command of every target in vmtest.toml.
#
# vmtest passes `-enable-kvm -cpu host` whenever /dev/kvm exists. Where the
# guest cannot run under that KVM (a paravirtual one such as kvm_pvm, which
# fails with an MSR assertion or hangs), scripts/vmtest.sh sets
# SW_VMTEST_ACCEL=tcg and this wrapper swaps those flags for multi-threaded
# TCG. QEMU also gets SIGKILL when vmtest dies (timeout, ^C), so no VM
# outlives a run.
set -euo pipefail

args=()
if [[ ${SW_VMTEST_ACCEL:-} == tcg ]]; then
  while (($#)); do
    case $1 in
    -enable-kvm) shift ;;
    -cpu) shift 2 ;;
    *)
      args+=("$1")
      shift
      ;;
    esac
  done
  args+=(-accel "tcg,thread=multi" -cpu max)
else
  args=("$@")
fi
exec setpriv --pdeathsig KILL qemu-system-x86_64 "${args[@]}"
