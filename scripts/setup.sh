#!/usr/bin/env bash
# Installs every system package sockwarden's build, demo and tests need.
# Idempotent, and quiet when nothing is missing.
set -euo pipefail

packages=(
  clang-19 llvm-19        # BPF C compiler (Debian 12's default clang is 14)
  libelf-dev zlib1g-dev pkg-config   # libbpf-sys links libelf and zlib
  bpftool                 # vmlinux.h generation, map inspection in tests and docs
  iproute2                # network namespaces and veth for the demo and tests
  curl                    # the demo's and tests' unmodified HTTP client
  python3                 # the demo origins (http.server, ssl) and the kernel tier's urllib client
  python3-h11             # the independent HTTP/1 parser of tests/differential.rs
  dnsmasq-base            # a real resolver for the demo's and tests' DNS rules
  openssl ca-certificates # the demo's HTTPS origin certificate; system roots for upstream TLS
  systemd util-linux      # systemd-analyze verify on the unit; setpriv for the privilege tests
)

missing=()
for p in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q '^install ok installed$'; then
    missing+=("$p")
  fi
done

if ((${#missing[@]})); then
  if [[ $(id -u) -ne 0 ]]; then
    echo "setup.sh: missing packages (${missing[*]}) and not root: run as root to install them" >&2
    exit 1
  fi
  echo "setup.sh: installing ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  log=$(mktemp /tmp/sockwarden-setup.XXXXXX)
  if ! { apt-get update -qq && apt-get install -y -qq --no-install-recommends "${missing[@]}"; } >"$log" 2>&1; then
    cat "$log" >&2
    echo "setup.sh: installing packages failed (log above)" >&2
    exit 1
  fi
  rm -f "$log"
fi

if ! command -v cargo >/dev/null 2>&1; then
  echo "setup.sh: cargo is not on PATH; install a Rust toolchain (rustup) first" >&2
  exit 1
fi
