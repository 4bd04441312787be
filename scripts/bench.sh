#!/usr/bin/env bash
# sockwarden benchmark: one run, one topology, every figure as a ratio
# against baselines measured in the same run.
#
# Topology (network namespaces made here, addresses only inside them):
#   workload (10.77.2.2) -- node (10.77.0.1, forwards) -- origin (10.77.1.10, nginx)
# Contenders, each in the node's position:
#   direct            no proxy: the workload's traffic is routed by the node
#   sockwarden        the workload in an enforced cgroup, redirected by eBPF;
#                     one instance per body engine (splice 1 MiB pipes, splice
#                     64 KiB pipes, copy, sockmap), each with its own cgroup
#                     and port
#   haproxy           HAProxy (Debian) as an HTTP reverse proxy on the node,
#                     plain, and with option splice-request/splice-response
#   NAME@node         the same contender with a node-local workload (in the
#                     node's namespace): direct, splice and sockmap
#   sockwarden-nowall the default engine (splice, 64 KiB pipes) with the
#                     cgroup_skb/egress wall left unattached
#                     (testing.skip_egress_wall): what the wall costs
#   sockwarden-previous  with BASELINE=<git rev>: that revision, built here
#                     (release, in a git worktree under the scratch directory,
#                     with a target directory of its own; both removed at the
#                     end, also on failure), or with SW_BENCH_PREVIOUS=BINARY
#                     another build; with the default engine, set up exactly
#                     as sockwarden-splice-64k; the ratios of splice-64k to it
#                     are printed after the table
# Every sockwarden attaches its programs at the cgroup2 root, so each one's
# egress wall sees every packet of the node. As on a real node (one
# sockwarden), only one instance, sockwarden-splice-64k, attaches its wall;
# the others skip it. Every packet of every contender thus crosses exactly
# one wall: the enforced path for splice-64k, the unenforced one for the
# rest.
# All contenders run at once and are measured round-robin, so the drifts of
# a shared machine hit every contender alike.
# Measures:
#   64 MiB GET throughput on one connection (median over ROUNDS rounds)
#   whole-machine CPU seconds per GiB (busy time from /proc/stat, softirq and
#   kernel workers included, summed over each contender's downloads), and
#   the CPU added over direct
#   1 KiB GETs over 50 keep-alive connections: requests/s, p50, p99 (wrk;
#   2 round-robin rounds of WRK_SECONDS each, averaged)
# Run as root. docs/performance.md records the method and the numbers.
# Environment: ROUNDS (25) and WRK_SECONDS (5) as above; BASELINE or
# SW_BENCH_PREVIOUS (not both); BASELINE_TARGET_DIR keeps the baseline's
# target directory (default: under the scratch directory, removed).
set -euo pipefail
cd "$(dirname "$0")/.."

[[ $(id -u) -eq 0 ]] || { echo "bench.sh: run as root" >&2; exit 1; }
ROUNDS=${ROUNDS:-25}
WRK_SECONDS=${WRK_SECONDS:-5}

scripts/setup.sh
missing=()
for p in haproxy nginx-light wrk; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q '^install ok installed$' || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "bench.sh: installing ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null 2>&1 \
    || { apt-get update -qq >/dev/null && apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null; }
fi

if [[ -n ${BASELINE:-} && -n ${SW_BENCH_PREVIOUS:-} ]]; then
  echo "bench.sh: set BASELINE or SW_BENCH_PREVIOUS, not both" >&2; exit 1
fi
if [[ -n ${BASELINE:-} ]]; then
  BASELINE_REV=$(git rev-parse --verify --quiet "$BASELINE^{commit}") \
    || { echo "bench.sh: BASELINE=$BASELINE is not a commit" >&2; exit 1; }
fi

echo "== building sockwarden (release)" >&2
cargo build --release --quiet
BIN=$PWD/target/release/sockwarden

WL=swbench-wl NODE=swbench-node ORIGIN=swbench-origin
MOUNT=$(findmnt -n -t cgroup2 -o TARGET | head -n1)
CG_TOP=$MOUNT/sockwarden-bench
PIN=/sys/fs/bpf/sockwarden-bench
WORK=$(mktemp -d /tmp/sockwarden-bench.XXXXXX)
PIDS=()

BASE_TREE=$WORK/baseline
cleanup() {
  # Options set here stay here: the first call, before the run, must not
  # turn errexit off for the rest of the script.
  local -
  set +e
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; wait "$p" 2>/dev/null; done
  if [[ -n ${BASELINE:-} ]]; then
    [[ -e $BASE_TREE/.git ]] && git worktree remove --force "$BASE_TREE"
    git worktree prune
  fi
  for cg in "$CG_TOP"/*/; do
    [[ -d $cg ]] || continue
    for p in $(cat "$cg/cgroup.procs" 2>/dev/null); do kill -9 "$p" 2>/dev/null; done
    rmdir "$cg" 2>/dev/null
  done
  rmdir "$CG_TOP" 2>/dev/null
  for ns in "$WL" "$NODE" "$ORIGIN"; do ip netns del "$ns" 2>/dev/null; done
  rm -rf "$PIN"-* "$WORK"
}
trap cleanup EXIT
cleanup
trap cleanup EXIT

# The baseline: BASELINE's revision, checked out and built beside this one.
if [[ -n ${BASELINE:-} ]]; then
  echo "== building the baseline, $BASELINE ($BASELINE_REV) (release)" >&2
  mkdir -p "$WORK"
  git worktree add --quiet --detach "$BASE_TREE" "$BASELINE_REV"
  base_target=$(realpath -m "${BASELINE_TARGET_DIR:-$WORK/baseline-target}")
  (cd "$BASE_TREE" && CARGO_TARGET_DIR=$base_target cargo build --release --quiet)
  SW_BENCH_PREVIOUS=$base_target/release/sockwarden
  PREVIOUS_IS="BASELINE=$BASELINE (${BASELINE_REV:0:12})"
elif [[ -n ${SW_BENCH_PREVIOUS:-} ]]; then
  PREVIOUS_IS="SW_BENCH_PREVIOUS=$SW_BENCH_PREVIOUS"
fi

in_ns() { local ns=$1; shift; nsenter --net=/run/netns/"$ns" "$@"; }
# Runs a command in the namespace and cgroup of contender $1: the workload
# namespace unless the name ends in @node (a node-local workload), and the
# contender's cgroup under the bench cgroup ("-": none, not enforced).
run_in() {
  local n=$1 ns=$WL cg=${CGROUP[$1]}; shift
  [[ $n == *@node ]] && ns=$NODE
  if [[ $cg == - ]]; then nsenter --net=/run/netns/$ns "$@"; return; fi
  nsenter --net=/run/netns/$ns sh -c 'echo $$ > "$0/cgroup.procs" && exec "$@"' "$CG_TOP/$cg" "$@"
}

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
cat > "$WORK/nginx/nginx.conf" <<NGINX
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
NGINX
# nsenter execs the program, so $! is the program itself.
nsenter --net=/run/netns/$ORIGIN nginx -c "$WORK/nginx/nginx.conf" -p "$WORK/nginx" &
PIDS+=($!)
for _ in $(seq 1 100); do in_ns "$WL" curl -sf -o /dev/null http://10.77.1.10/data/1k && break; sleep 0.1; done

start_sockwarden() {  # INDEX ENGINE PIPE CGROUP WALL(0|1|-: a build without one) [BINARY]
  local i=$1 bin=${6:-$BIN} testing="testing: { skip_egress_wall: true }"
  [[ $5 == 1 ]] && testing="testing: { skip_egress_wall: false }"
  [[ $5 == - ]] && testing=
  mkdir -p "$CG_TOP/$4"
  cat > "$WORK/sw$i.yaml" <<YAML
proxy: { listen: "10.77.0.1:1500$i" }
admin: { listen: "127.0.0.1:990$i" }
bpf: { pin_path: $PIN-$i }
access_log: { path: "off" }
forwarding: { engine: $2, pipe_size: $3 }
$testing
policies:
  - name: bench
    cgroup: /sockwarden-bench/$4
    egress:
      - to: ["10.77.1.0/24"]
        ports: [80]
        http:
          - method: GET
            path: "/data/.*"
YAML
  nsenter --net=/run/netns/$NODE "$bin" run --config "$WORK/sw$i.yaml" 2>"$WORK/sw$i.err" &
  PIDS+=($!)
  for _ in $(seq 1 100); do in_ns "$NODE" curl -sf -o /dev/null "http://127.0.0.1:990$i/readyz" && return; sleep 0.1; done
  cat "$WORK/sw$i.err" >&2; exit 1
}

start_haproxy() {  # PORT SPLICE(0|1)
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
    if [[ $2 == 1 ]]; then echo "  option splice-request"; echo "  option splice-response"; fi
    echo "frontend fe"
    echo "  bind 10.77.0.1:$1"
    echo "  default_backend be"
    echo "backend be"
    echo "  server origin 10.77.1.10:80"
  } > "$WORK/haproxy$1.cfg"
  nsenter --net=/run/netns/$NODE haproxy -db -f "$WORK/haproxy$1.cfg" 2>"$WORK/haproxy$1.err" &
  PIDS+=($!)
  for _ in $(seq 1 100); do in_ns "$WL" curl -sf -o /dev/null "http://10.77.0.1:$1/data/1k" && return; sleep 0.1; done
  cat "$WORK/haproxy$1.err" >&2; exit 1
}

start_sockwarden 1 splice 1048576 splice1m 0
start_sockwarden 2 splice 65536 splice64k 1
start_sockwarden 3 copy 65536 copy 0
start_sockwarden 4 sockmap 65536 sockmap 0
start_sockwarden 6 splice 65536 nowall 0
start_haproxy 8080 0
start_haproxy 8081 1
SW_INDEXES=(1 2 3 4 6)

# Contenders: cgroup ("-": none) and base URL.
# Names ending in @node run their workload in the node's own namespace
# (node-local), the others in the workload namespace behind a veth.
NAMES=(direct sockwarden-splice-1m sockwarden-splice-64k sockwarden-nowall sockwarden-copy sockwarden-sockmap
  haproxy haproxy-splice direct@node sockwarden-splice-64k@node sockwarden-sockmap@node)
declare -A CGROUP=([direct]=- [sockwarden-splice-1m]=splice1m [sockwarden-splice-64k]=splice64k [sockwarden-nowall]=nowall
  [sockwarden-copy]=copy [sockwarden-sockmap]=sockmap [haproxy]=- [haproxy-splice]=-
  [direct@node]=- [sockwarden-splice-64k@node]=splice64k [sockwarden-sockmap@node]=sockmap)
declare -A URL=([direct]=http://10.77.1.10 [sockwarden-splice-1m]=http://10.77.1.10
  [sockwarden-splice-64k]=http://10.77.1.10 [sockwarden-nowall]=http://10.77.1.10 [sockwarden-copy]=http://10.77.1.10
  [sockwarden-sockmap]=http://10.77.1.10 [haproxy]=http://10.77.0.1:8080
  [haproxy-splice]=http://10.77.0.1:8081 [direct@node]=http://10.77.1.10
  [sockwarden-splice-64k@node]=http://10.77.1.10 [sockwarden-sockmap@node]=http://10.77.1.10)
# The previous build beside this one (BASELINE's or SW_BENCH_PREVIOUS), with
# the default engine: same logging, threads and position as splice-64k.
if [[ -n ${SW_BENCH_PREVIOUS:-} ]]; then
  start_sockwarden 5 splice 65536 previous - "$SW_BENCH_PREVIOUS"
  SW_INDEXES+=(5)
  NAMES+=(sockwarden-previous)
  CGROUP[sockwarden-previous]=previous
  URL[sockwarden-previous]=http://10.77.1.10
fi

# Every contender must serve, and every sockwarden must really redirect.
for n in "${NAMES[@]}"; do
  code=$(run_in "$n" curl -s -o /dev/null -w '%{http_code}' "${URL[$n]}/data/1k" || true)
  [[ $code == 200 ]] || { echo "bench.sh: $n answered $code" >&2; exit 1; }
done
# The proxy counts a request just after the response is written: a scrape
# right after curl returns may be early, so look a few times.
proxied() {
  in_ns "$NODE" curl -s "http://127.0.0.1:990$1/metrics" \
    | grep -qE 'sockwarden_http_requests_total\{policy="bench",verdict="allowed",status="200"\} [1-9]'
}
for i in "${SW_INDEXES[@]}"; do
  for _ in $(seq 1 20); do proxied "$i" && continue 2; sleep 0.1; done
  echo "bench.sh: sockwarden $i did not proxy the check request" >&2; exit 1
done

busy_ticks() { awk '/^cpu /{print $2+$3+$4+$7+$8+$9}' /proc/stat; }
TICK=$(getconf CLK_TCK)
to_ms() { awk -v v="$1" 'BEGIN { if (v ~ /us$/) { sub(/us$/,"",v); print v/1000 } else if (v ~ /ms$/) { sub(/ms$/,"",v); print v } else { sub(/s$/,"",v); print v*1000 } }'; }
mean() { awk '{ s = 0; for (i = 1; i <= NF; i++) s += $i; printf "%.2f", s / NF }' <<<"$1"; }
median() { printf '%s\n' $1 | sort -n | awk '{a[NR]=$1} END{print a[int((NR+1)/2)]}'; }

declare -A SPEEDS TICKS TP CPU RPS P50 P99
echo "== 64 MiB downloads: $ROUNDS round-robin rounds" >&2
for _ in $(seq 1 "$ROUNDS"); do
  for n in "${NAMES[@]}"; do
    b0=$(busy_ticks)
    s=$(run_in "$n" curl -s -o /dev/null -w '%{speed_download}' --max-time 60 "${URL[$n]}/data/64m") \
      || { echo "bench.sh: $n: the 64 MiB download failed" >&2; exit 1; }
    b1=$(busy_ticks)
    SPEEDS[$n]="${SPEEDS[$n]:-} $s"
    TICKS[$n]=$(( ${TICKS[$n]:-0} + b1 - b0 ))
  done
done
for n in "${NAMES[@]}"; do
  TP[$n]=$(awk -v m="$(median "${SPEEDS[$n]}")" 'BEGIN { printf "%.0f", m / 1e6 }')
  CPU[$n]=$(awk -v t="${TICKS[$n]}" -v hz="$TICK" -v r="$ROUNDS" 'BEGIN { printf "%.3f", (t / hz) / (r * 64 / 1024) }')
done

echo "== 1 KiB GETs: wrk -t2 -c50, 2 round-robin rounds of ${WRK_SECONDS}s" >&2
for _ in 1 2; do
  for n in "${NAMES[@]}"; do
    out=$(run_in "$n" wrk -t2 -c50 -d"${WRK_SECONDS}s" --latency "${URL[$n]}/data/1k") \
      || { echo "bench.sh: $n: wrk failed" >&2; exit 1; }
    RPS[$n]="${RPS[$n]:-} $(awk '/^Requests\/sec/{print $2}' <<<"$out")"
    P50[$n]="${P50[$n]:-} $(to_ms "$(awk '$1=="50%"{print $2}' <<<"$out")")"
    P99[$n]="${P99[$n]:-} $(to_ms "$(awk '$1=="99%"{print $2}' <<<"$out")")"
  done
done
for n in "${NAMES[@]}"; do RPS[$n]=$(mean "${RPS[$n]}"); P50[$n]=$(mean "${P50[$n]}"); P99[$n]=$(mean "${P99[$n]}"); done

for i in "${SW_INDEXES[@]}"; do
  echo "sockwarden $i: $(in_ns "$NODE" curl -s "http://127.0.0.1:990$i/metrics" | grep -E '^sockwarden_(forwarded|sockmap)_bytes_total' | tr '\n' ' ')" >&2
done

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b == 0) print "-"; else printf "%.2f", a / b }'; }
added() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", a - b }'; }

echo
echo "sockwarden benchmark, $(uname -r), $(nproc) CPUs; 64 MiB: $ROUNDS round-robin rounds; 1 KiB: wrk -t2 -c50, 2 x ${WRK_SECONDS}s"
printf '%-28s %10s %8s %8s %9s %9s %8s %8s %10s %8s %8s %12s\n' \
  contender "64MiB MB/s" "x direct" "x ha-spl" "CPU-s/GiB" "added" "x ha-spl" "x ha" \
  "1KiB r/s" "x direct" "x ha" "p50/p99 ms"
add_spl=$(added "${CPU[haproxy-splice]}" "${CPU[direct]}")
add_ha=$(added "${CPU[haproxy]}" "${CPU[direct]}")
for n in "${NAMES[@]}"; do
  add=$(added "${CPU[$n]}" "${CPU[direct]}")
  printf '%-28s %10s %8s %8s %9s %9s %8s %8s %10s %8s %8s %12s\n' \
    "$n" "${TP[$n]}" "$(ratio "${TP[$n]}" "${TP[direct]}")" "$(ratio "${TP[$n]}" "${TP[haproxy-splice]}")" \
    "${CPU[$n]}" "$add" "$(ratio "$add" "$add_spl")" "$(ratio "$add" "$add_ha")" \
    "${RPS[$n]}" "$(ratio "${RPS[$n]}" "${RPS[direct]}")" "$(ratio "${RPS[$n]}" "${RPS[haproxy]}")" \
    "${P50[$n]}/${P99[$n]}"
done
echo
w=sockwarden-splice-64k o=sockwarden-nowall
echo "egress wall ($w with it / $o without): 64 MiB $(ratio "${TP[$w]}" "${TP[$o]}")x," \
  "CPU-s/GiB $(ratio "${CPU[$w]}" "${CPU[$o]}")x, 1 KiB r/s $(ratio "${RPS[$w]}" "${RPS[$o]}")x," \
  "p50 ${P50[$w]} vs ${P50[$o]} ms, p99 ${P99[$w]} vs ${P99[$o]} ms"
if [[ -n ${SW_BENCH_PREVIOUS:-} ]]; then
  w=sockwarden-splice-64k o=sockwarden-previous
  echo "this build against the previous one, $PREVIOUS_IS ($w / $o):" \
    "64 MiB $(ratio "${TP[$w]}" "${TP[$o]}")x, CPU-s/GiB $(ratio "${CPU[$w]}" "${CPU[$o]}")x," \
    "1 KiB r/s $(ratio "${RPS[$w]}" "${RPS[$o]}")x, p50 ${P50[$w]} vs ${P50[$o]} ms, p99 ${P99[$w]} vs ${P99[$o]} ms"
fi
