#!/usr/bin/env bash
# sockwarden benchmark: one run, one topology, every figure as a ratio
# against a baseline measured in the same run.
#
# Topology (network namespaces made here, addresses only inside them):
#   workload (10.77.2.2) -- node (10.77.0.1, forwards) -- origin (10.77.1.10, nginx)
# Contenders, each in the node's position:
#   direct            no proxy: the workload's traffic is routed by the node
#   sockwarden        the workload in an enforced cgroup, redirected by eBPF,
#                     one run per body engine (splice 1 MiB pipes, splice
#                     64 KiB pipes, copy)
#   haproxy           HAProxy (Debian) as an HTTP reverse proxy on the node,
#                     plain, and with option splice-request/splice-response
# Measures:
#   64 MiB GET throughput on one connection (median of RUNS)
#   whole-machine CPU seconds per GiB (busy time from /proc/stat, softirq and
#   kernel workers included), and the CPU added over direct
#   1 KiB GETs over 50 keep-alive connections: requests/s, p50, p99 (wrk)
# Run as root. Prints a table; docs/performance.md records method and numbers.
set -euo pipefail
cd "$(dirname "$0")/.."

[[ $(id -u) -eq 0 ]] || { echo "bench.sh: run as root" >&2; exit 1; }
RUNS=${RUNS:-5}
WRK_SECONDS=${WRK_SECONDS:-10}

scripts/setup.sh
missing=()
for p in haproxy nginx-light wrk; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q '^install ok installed$' || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "bench.sh: installing ${missing[*]}" >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null 2>&1 \
    || { apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null; }
fi
# Debian starts the services it installs; this benchmark runs its own.
systemctl stop nginx haproxy >/dev/null 2>&1 || true
pkill -x nginx >/dev/null 2>&1 || true
pkill -x haproxy >/dev/null 2>&1 || true

echo "== building sockwarden (release)" >&2
cargo build --release --quiet
BIN=$PWD/target/release/sockwarden

WL=swbench-wl NODE=swbench-node ORIGIN=swbench-origin
MOUNT=$(findmnt -n -t cgroup2 -o TARGET | head -n1)
CG_TOP=$MOUNT/sockwarden-bench
CG=$CG_TOP/wl
PIN=/sys/fs/bpf/sockwarden-bench
WORK=$(mktemp -d /tmp/sockwarden-bench.XXXXXX)
PIDS=()

cleanup() {
  set +e
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; wait "$p" 2>/dev/null; done
  if [[ -d $CG ]]; then
    for p in $(cat "$CG/cgroup.procs" 2>/dev/null); do kill -9 "$p" 2>/dev/null; done
    rmdir "$CG" 2>/dev/null
  fi
  rmdir "$CG_TOP" 2>/dev/null
  for ns in "$WL" "$NODE" "$ORIGIN"; do ip netns del "$ns" 2>/dev/null; done
  rm -rf "$PIN" "$WORK"
}
trap cleanup EXIT
cleanup
trap cleanup EXIT

in_ns() { local ns=$1; shift; nsenter --net=/run/netns/"$ns" "$@"; }
# Runs a command as an enforced workload: workload namespace, bench cgroup.
as_workload() { nsenter --net=/run/netns/$WL sh -c 'echo $$ > "$0/cgroup.procs" && exec "$@"' "$CG" "$@"; }

for ns in "$WL" "$NODE" "$ORIGIN"; do ip netns add "$ns"; ip -n "$ns" link set lo up; done
ip -n "$NODE" link add to-origin type veth peer name eth0 netns "$ORIGIN"
ip -n "$NODE" link add to-wl type veth peer name eth0 netns "$WL"
ip -n "$NODE" addr add 10.77.0.1/32 dev lo
ip -n "$NODE" addr add 10.77.1.1/24 dev to-origin
ip -n "$NODE" addr add 10.77.2.1/24 dev to-wl
ip -n "$ORIGIN" addr add 10.77.1.10/24 dev eth0
ip -n "$WL" addr add 10.77.2.2/24 dev eth0
for l in "$NODE to-origin" "$NODE to-wl" "$ORIGIN eth0" "$WL eth0"; do set -- $l; ip -n "$1" link set "$2" up; done
ip -n "$ORIGIN" route add default via 10.77.1.1
ip -n "$WL" route add default via 10.77.2.1
ip netns exec "$NODE" sysctl -qw net.ipv4.ip_forward=1

# Origin: nginx with sendfile, long keep-alive.
mkdir -p "$WORK/www/data" "$WORK/nginx"
head -c $((64 << 20)) /dev/zero > "$WORK/www/data/64m"
head -c 1024 /dev/zero > "$WORK/www/data/1k"
cat > "$WORK/nginx/nginx.conf" <<EOF
daemon off;
worker_processes 1;
pid $WORK/nginx/nginx.pid;
error_log $WORK/nginx/error.log;
events { worker_connections 1024; }
http {
  access_log off;
  sendfile on;
  tcp_nopush on;
  keepalive_requests 1000000;
  keepalive_timeout 60s;
  client_body_temp_path $WORK/nginx;
  proxy_temp_path $WORK/nginx;
  fastcgi_temp_path $WORK/nginx;
  uwsgi_temp_path $WORK/nginx;
  scgi_temp_path $WORK/nginx;
  server { listen 10.77.1.10:80; root $WORK/www; }
}
EOF
nsenter --net=/run/netns/$ORIGIN nginx -c "$WORK/nginx/nginx.conf" -p "$WORK/nginx" &
PIDS+=($!)
for _ in $(seq 1 100); do in_ns "$WL" curl -sf -o /dev/null http://10.77.1.10/data/1k && break; sleep 0.1; done

mkdir -p "$CG"

busy_ticks() { awk '/^cpu /{print $2+$3+$4+$7+$8+$9}' /proc/stat; }
TICK=$(getconf CLK_TCK)

# throughput RUNNER URL -> prints "MB/s CPU-s/GiB"
throughput() {
  local runner=$1 url=$2 speeds=() b0 b1
  b0=$(busy_ticks)
  for _ in $(seq 1 "$RUNS"); do
    speeds+=("$($runner curl -s -o /dev/null -w '%{speed_download}' --max-time 60 "$url")")
  done
  b1=$(busy_ticks)
  local median
  median=$(printf '%s\n' "${speeds[@]}" | sort -n | awk '{a[NR]=$1} END{print a[int((NR+1)/2)]}')
  awk -v m="$median" -v db=$((b1 - b0)) -v t="$TICK" -v n="$RUNS" \
    'BEGIN { printf "%.0f %.3f\n", m / 1e6, (db / t) / (n * 64 / 1024) }'
}

# rps RUNNER URL -> prints "req/s p50_ms p99_ms"
rps() {
  local runner=$1 url=$2 out
  out=$($runner wrk -t2 -c50 -d"${WRK_SECONDS}s" --latency "$url")
  local r p50 p99
  r=$(awk '/^Requests\/sec/{print $2}' <<<"$out")
  p50=$(awk '$1=="50%"{print $2}' <<<"$out")
  p99=$(awk '$1=="99%"{print $2}' <<<"$out")
  echo "$r $(to_ms "$p50") $(to_ms "$p99")"
}
to_ms() { awk -v v="$1" 'BEGIN { if (v ~ /us$/) { sub(/us$/,"",v); print v/1000 } else if (v ~ /ms$/) { sub(/ms$/,"",v); print v } else { sub(/s$/,"",v); print v*1000 } }'; }

direct_runner() { in_ns "$WL" "$@"; }

declare -A TP CPU RPS P50 P99
measure() {  # NAME RUNNER BASEURL
  local name=$1 runner=$2 base=$3
  echo "== measuring $name" >&2
  read -r TP[$name] CPU[$name] < <(throughput "$runner" "$base/data/64m")
  read -r RPS[$name] P50[$name] P99[$name] < <(rps "$runner" "$base/data/1k")
}

measure direct direct_runner http://10.77.1.10

start_sockwarden() {  # ENGINE PIPE
  cat > "$WORK/sw.yaml" <<EOF
proxy: { listen: "10.77.0.1:15001" }
admin: { listen: "127.0.0.1:9901" }
bpf: { pin_path: $PIN }
access_log: { path: "off" }
forwarding: { engine: $1, pipe_size: $2 }
policies:
  - name: bench
    cgroup: /sockwarden-bench/wl
    egress:
      - to: ["10.77.1.0/24"]
        ports: [80]
        http:
          - method: GET
            path: "/data/.*"
EOF
  # nsenter execs the program, so $! is the program itself.
  nsenter --net=/run/netns/$NODE "$BIN" run --config "$WORK/sw.yaml" 2>"$WORK/sw.err" &
  SW=$!
  PIDS+=("$SW")
  for _ in $(seq 1 100); do in_ns "$NODE" curl -sf -o /dev/null http://127.0.0.1:9901/readyz && return; sleep 0.1; done
  cat "$WORK/sw.err" >&2; exit 1
}
stop_pid() { kill "$1"; wait "$1" 2>/dev/null || true; }

for variant in "splice 1048576 sockwarden-splice-1m" "splice 65536 sockwarden-splice-64k" "copy 1048576 sockwarden-copy"; do
  set -- $variant
  start_sockwarden "$1" "$2"
  measure "$3" as_workload http://10.77.1.10
  in_ns "$NODE" curl -s http://127.0.0.1:9901/metrics | grep '^sockwarden_forwarded_bytes_total' >&2 || true
  stop_pid "$SW"
done

start_haproxy() {  # SPLICE(0|1)
  {
    echo "global"
    echo "  maxconn 4096"
    echo "defaults"
    echo "  mode http"
    echo "  timeout connect 2s"
    echo "  timeout client 60s"
    echo "  timeout server 60s"
    echo "  option http-keep-alive"
    echo "  http-reuse always"
    if [[ $1 == 1 ]]; then echo "  option splice-request"; echo "  option splice-response"; fi
    echo "frontend fe"
    echo "  bind 10.77.0.1:8080"
    echo "  default_backend be"
    echo "backend be"
    echo "  server origin 10.77.1.10:80"
  } > "$WORK/haproxy.cfg"
  nsenter --net=/run/netns/$NODE haproxy -db -f "$WORK/haproxy.cfg" 2>"$WORK/haproxy.err" &
  HA=$!
  PIDS+=("$HA")
  for _ in $(seq 1 100); do in_ns "$WL" curl -sf -o /dev/null http://10.77.0.1:8080/data/1k && return; sleep 0.1; done
  cat "$WORK/haproxy.err" >&2; exit 1
}
start_haproxy 0; measure haproxy direct_runner http://10.77.0.1:8080; stop_pid "$HA"
start_haproxy 1; measure haproxy-splice direct_runner http://10.77.0.1:8080; stop_pid "$HA"

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b == 0) print "-"; else printf "%.2f", a / b }'; }
added() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", a - b }'; }

echo
echo "sockwarden benchmark — $(uname -r), $(nproc) CPUs, $RUNS runs of 64 MiB, wrk -c50 ${WRK_SECONDS}s of 1 KiB"
printf '%-22s %9s %8s %8s %9s %10s %9s %9s %9s %8s %8s %10s\n' \
  contender "64MiB MB/s" "x direct" "x ha-spl" "CPU-s/GiB" "added CPU" "x ha-spl" "x ha" \
  "1KiB r/s" "x direct" "x ha" "p50/p99 ms"
for name in direct sockwarden-splice-1m sockwarden-splice-64k sockwarden-copy haproxy haproxy-splice; do
  add=$(added "${CPU[$name]}" "${CPU[direct]}")
  add_spl=$(added "${CPU[haproxy-splice]}" "${CPU[direct]}")
  add_ha=$(added "${CPU[haproxy]}" "${CPU[direct]}")
  printf '%-22s %9s %8s %8s %9s %10s %9s %9s %9s %8s %8s %10s\n' \
    "$name" "${TP[$name]}" "$(ratio "${TP[$name]}" "${TP[direct]}")" "$(ratio "${TP[$name]}" "${TP[haproxy-splice]}")" \
    "${CPU[$name]}" "$add" "$(ratio "$add" "$add_spl")" "$(ratio "$add" "$add_ha")" \
    "${RPS[$name]}" "$(ratio "${RPS[$name]}" "${RPS[direct]}")" "$(ratio "${RPS[$name]}" "${RPS[haproxy]}")" \
    "${P50[$name]}/${P99[$name]}"
done
