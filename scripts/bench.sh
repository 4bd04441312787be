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
# HTTPS cases (issue 12), a second table "HTTPS"; ratios against direct
# HTTPS and against each case's peer, measured in the same round-robin:
#   origin            the same nginx also serves HTTPS on 10.77.1.10:443 (and
#                     10.77.1.11:443, the address Squid's interception takes),
#                     keep-alive, the same /data files, session cache on,
#                     with a leaf for origin.test and both IPs (ECDSA P-256)
#                     from a bench CA made here with openssl
#   the name          origin.test: curl gets --resolve origin.test:PORT:IP and
#                     --cacert; wrk (which sends the URL's host as SNI and does
#                     not verify) resolves it through /etc/hosts, so every
#                     HTTPS client runs in a private mount namespace with a
#                     hosts file bound over /etc/hosts (the same wrapper for
#                     every HTTPS contender, direct included)
#   direct-https      the workload's client straight to the origin (routed)
#   sockwarden-tls-*  one sockwarden (splice, 64 KiB pipes, like splice-64k),
#                     three policies, each with its own cgroup:
#                     tls-pass: tls: { server_names: [origin.test] } on 443;
#                     tls-intercept: tls: { intercept: true } + GET /data/.*
#                     on 443, the node CA from `sockwarden ca init`, the
#                     client trusting it (--cacert), upstream verified
#                     against the bench CA (tls.upstream_roots);
#                     tls-originate: upstream: { tls: true, port: 443 } on a
#                     port-80 GET rule, the workload speaking plain HTTP
#   haproxy-tcp-sni   peer of pass-through: HAProxy mode tcp on 10.77.0.1:8443
#                     (placed as the HTTP HAProxy: the workload is pointed at
#                     the node), tcp-request inspect-delay 5s, accept on a
#                     ClientHello, req.ssl_sni ACL for origin.test (no default
#                     backend: another name is closed), splice-request and
#                     splice-response
#   squid-bump        peer of interception: Squid 5 (squid-openssl), an
#                     intercepting proxy (https_port ... intercept ssl-bump):
#                     wrk cannot use a proxy, so an explicit one could not be
#                     measured for 1 KiB; the workload's connects to
#                     10.77.1.11:443 are redirected on the node by nftables
#                     (nat prerouting, dnat to its port) to Squid, which finds the
#                     original destination by SO_ORIGINAL_DST. ssl_bump peek at
#                     step 1, stare at step 2, bump all (leaves mimic the
#                     origin's, generated by security_file_certgen from a bench
#                     CA for Squid, RSA 2048 as Squid's own leaves), upstream
#                     verified against the bench CA; no cache (cache deny all),
#                     access_log none, workers 2 (one per CPU, as HAProxy's
#                     and tokio's threads), otherwise Squid's defaults.
#                     Connection tracking is switched off (raw notrack) for
#                     everything on the node but Squid's redirected flows, so
#                     the other contenders do not pay for it; every packet of
#                     the node does cross that raw hook (present only when the
#                     HTTPS cases run)
#   haproxy-ssl-origin  peer of origination: HAProxy mode http on
#                     10.77.0.1:8082, server ... ssl verify required ca-file
#                     (the bench CA) sni str(origin.test), keep-alive and
#                     http-reuse always as the HTTP HAProxy
# squid-openssl, nftables and openssl join the packages installed here (a
# host where installing starts services gets the package's own Squid too;
# this one runs under its own service name, swbench).
# Every peer has no logging, as sockwarden (access_log off) and HAProxy;
# sockwarden and HAProxy run one thread per CPU, Squid one worker per CPU.
# The HTTPS sockwarden attaches the egress wall only when the HTTP cases do
# not run (BENCH_CASES=https), so every packet still crosses one wall.
# kTLS cases (BENCH_CASES=ktls, for a kernel with kTLS: scripts/vmbench.sh
# runs them in a VM of the kernel matrix), a table "kTLS":
#   sockwarden-tls-intercept, sockwarden-tls-originate  as above, kTLS on
#                     (tls.ktls default: the kernel does the record layer,
#                     bodies spliced)
#   *-copy            the same two policies on a second sockwarden, alike
#                     but for tls.ktls: false (rustls in userspace, bodies
#                     copied): the copy path, each case's peer
#   direct-https      as above
# No HAProxy or Squid, and no 1 KiB round (under emulation it measures the
# emulator): 64 MiB throughput and CPU only. The first sockwarden must have
# taken each check request's TLS to the kernel, or the run fails.
# Targets (issue 12) are printed beside the ratios, met or MISSED:
# pass-through >= 0.95x direct HTTPS throughput; interception >= 1.5x
# Squid's throughput and 1 KiB requests/s; kTLS >= 1.3x the copy path's
# 64 MiB throughput, intercepted and originated.
# Run as root. docs/performance.md records the method and the numbers.
# Environment: ROUNDS (25) and WRK_SECONDS (5) as above; BASELINE or
# SW_BENCH_PREVIOUS (not both; HTTP cases only); BASELINE_TARGET_DIR keeps
# the baseline's target directory (default: under the scratch directory,
# removed); BENCH_CASES: all (default, http and https), http, https or ktls
# (only those cases).
set -euo pipefail
cd "$(dirname "$0")/.."
# What is made here must be readable by the unprivileged servers, whatever
# umask this ran with (a VM's guest agent runs commands under 077).
umask 022

[[ $(id -u) -eq 0 ]] || { echo "bench.sh: run as root" >&2; exit 1; }
ROUNDS=${ROUNDS:-25}
WRK_SECONDS=${WRK_SECONDS:-5}
BENCH_CASES=${BENCH_CASES:-all}
case $BENCH_CASES in
  all) HTTP=1 HTTPS=1 KTLS=0 ;;
  http) HTTP=1 HTTPS=0 KTLS=0 ;;
  https) HTTP=0 HTTPS=1 KTLS=0 ;;
  ktls) HTTP=0 HTTPS=0 KTLS=1 ;;
  *) echo "bench.sh: BENCH_CASES=$BENCH_CASES: expected all, http, https or ktls" >&2; exit 1 ;;
esac
# The TLS origin and certificates serve both TLS modes.
TLS=$((HTTPS || KTLS))

scripts/setup.sh
missing=()
packages=(haproxy nginx-light wrk)
((HTTPS)) && packages+=(squid-openssl nftables)
((TLS)) && packages+=(openssl)
for p in "${packages[@]}"; do
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
if [[ -n ${BASELINE:-}${SW_BENCH_PREVIOUS:-} ]] && ((!HTTP)); then
  echo "bench.sh: BASELINE and SW_BENCH_PREVIOUS are measured in the HTTP cases: BENCH_CASES=$BENCH_CASES has none" >&2; exit 1
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
# Squid's service name names its IPC sockets (/run/squid) and shared memory
# (/dev/shm), which cleanup removes.
SQUID_SERVICE=swbench

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
    while read -r p; do kill -9 "$p" 2>/dev/null; done < "$cg/cgroup.procs"
    rmdir "$cg" 2>/dev/null
  done
  rmdir "$CG_TOP" 2>/dev/null
  # What the killed processes left in the namespaces (Squid's workers and
  # certificate helpers, nginx's worker) goes with them.
  for ns in "$WL" "$NODE" "$ORIGIN"; do
    for p in $(ip netns pids "$ns" 2>/dev/null); do kill -9 "$p" 2>/dev/null; done
    ip netns del "$ns" 2>/dev/null
  done
  rm -rf "$PIN"-* "$WORK"
  rm -f /run/squid/"$SQUID_SERVICE"-*.ipc /dev/shm/"$SQUID_SERVICE"-*
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
# contender's cgroup under the bench cgroup ("-": none, not enforced). An
# HTTPS contender's command sees its own /etc/hosts (HOSTS: the address of
# origin.test for it), in a private mount namespace.
run_in() {
  local n=$1 ns=$WL cg=${CGROUP[$1]} hosts=()
  shift
  [[ $n == *@node ]] && ns=$NODE
  # shellcheck disable=SC2016 # the inner shells expand these
  [[ -n ${HOSTS[$n]:-} ]] && hosts=(unshare --mount sh -c 'mount --bind "$0" /etc/hosts && exec "$@"' "$WORK/hosts-${HOSTS[$n]}")
  if [[ $cg == - ]]; then nsenter --net=/run/netns/$ns "${hosts[@]}" "$@"; return; fi
  # shellcheck disable=SC2016
  nsenter --net=/run/netns/$ns sh -c 'echo $$ > "$0/cgroup.procs" && exec "$@"' "$CG_TOP/$cg" "${hosts[@]}" "$@"
}

for ns in "$WL" "$NODE" "$ORIGIN"; do ip netns add "$ns"; ip -n "$ns" link set lo up; done
ip -n "$NODE" link add to-origin type veth peer name eth0 netns "$ORIGIN"
ip -n "$NODE" link add to-wl type veth peer name eth0 netns "$WL"
ip -n "$NODE" addr add 10.77.0.1/32 dev lo
ip -n "$NODE" addr add 10.77.1.1/24 dev to-origin
ip -n "$NODE" addr add 10.77.2.1/24 dev to-wl
ip -n "$ORIGIN" addr add 10.77.1.10/24 dev eth0
((TLS)) && ip -n "$ORIGIN" addr add 10.77.1.11/24 dev eth0
ip -n "$WL" addr add 10.77.2.2/24 dev eth0
for l in "$NODE to-origin" "$NODE to-wl" "$ORIGIN eth0" "$WL eth0"; do read -r ns dev <<<"$l"; ip -n "$ns" link set "$dev" up; done
ip -n "$ORIGIN" route add default via 10.77.1.1
ip -n "$WL" route add default via 10.77.2.1
ip netns exec "$NODE" sysctl -qw net.ipv4.ip_forward=1

# The HTTPS cases' certificates: the bench CA and the origin's leaf
# (ECDSA P-256), Squid's CA (RSA 2048), the node CA (`sockwarden ca init`);
# and one hosts file per address origin.test takes.
make_pki() {
  local d=$WORK/pki ec=(-newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes)
  mkdir -p "$d"
  openssl req -x509 "${ec[@]}" -days 2 -subj /CN=sockwarden-bench-ca -keyout "$d/bench-ca.key" \
    -out "$d/bench-ca.crt" -addext keyUsage=critical,keyCertSign,cRLSign 2>/dev/null
  openssl req -new "${ec[@]}" -subj /CN=origin.test -keyout "$d/origin.key" -out "$d/origin.csr" 2>/dev/null
  printf '%s\n' subjectAltName=DNS:origin.test,IP:10.77.1.10,IP:10.77.1.11 basicConstraints=critical,CA:FALSE \
    keyUsage=critical,digitalSignature extendedKeyUsage=serverAuth > "$d/origin.ext"
  openssl x509 -req -in "$d/origin.csr" -CA "$d/bench-ca.crt" -CAkey "$d/bench-ca.key" -set_serial 2 \
    -days 2 -extfile "$d/origin.ext" -out "$d/origin.crt" 2>/dev/null
  openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=sockwarden-bench-squid-ca \
    -keyout "$d/squid-ca.key" -out "$d/squid-ca.crt" -addext keyUsage=critical,keyCertSign,cRLSign 2>/dev/null
  "$BIN" ca init --cert "$d/node-ca.crt" --key "$d/node-ca.key" >/dev/null
  for ip in 10.77.1.10 10.77.1.11 10.77.0.1; do
    printf '127.0.0.1 localhost\n%s origin.test\n' "$ip" > "$WORK/hosts-$ip"
  done
}
TLS_SERVER=
if ((TLS)); then
  make_pki
  TLS_SERVER="server {
    listen 10.77.1.10:443 ssl; listen 10.77.1.11:443 ssl; root $WORK/www;
    ssl_certificate $WORK/pki/origin.crt; ssl_certificate_key $WORK/pki/origin.key;
    ssl_session_cache shared:bench:1m;
  }"
fi

# Origin: nginx with sendfile, long keep-alive (and HTTPS for those cases).
mkdir -p "$WORK/www/data" "$WORK/nginx"
# nginx's workers (and Squid) run unprivileged: the scratch directory
# (mktemp's 0700) must be searchable.
chmod 755 "$WORK"
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
  $TLS_SERVER
}
NGINX
# nsenter execs the program, so $! is the program itself.
nsenter --net=/run/netns/$ORIGIN nginx -c "$WORK/nginx/nginx.conf" -p "$WORK/nginx" &
PIDS+=($!)
for _ in $(seq 1 100); do in_ns "$WL" curl -sf -o /dev/null http://10.77.1.10/data/1k && break; sleep 0.1; done

# The HTTP cases' policy: GET /data/ to the origin's port 80.
http_policy() {  # CGROUP
  cat <<YAML
policies:
  - name: bench
    cgroup: /sockwarden-bench/$1
    egress:
      - to: ["10.77.1.0/24"]
        ports: [80]
        http:
          - method: GET
            path: "/data/.*"
YAML
}

# The HTTPS cases' policies, one per mode, each with its cgroup; SUFFIX
# names another set (policies and cgroups), KTLS is tls.ktls.
https_policies() {  # [SUFFIX [KTLS]]
  local d=$WORK/pki get='http: [{ method: GET, path: "/data/.*" }]' x=${1:-}
  cat <<YAML
tls:
  ca: { cert: $d/node-ca.crt, key: $d/node-ca.key }
  upstream_roots: $d/bench-ca.crt
  ktls: ${2:-true}
policies:
  - name: tls-pass$x
    cgroup: /sockwarden-bench/tlspass$x
    egress:
      - { to: ["10.77.1.0/24"], ports: [443], tls: { server_names: [origin.test] } }
  - name: tls-intercept$x
    cgroup: /sockwarden-bench/tlsintercept$x
    egress:
      - { to: ["10.77.1.0/24"], ports: [443], tls: { intercept: true }, $get }
  - name: tls-originate$x
    cgroup: /sockwarden-bench/tlsoriginate$x
    egress:
      - { to: ["10.77.1.0/24"], ports: [80], upstream: { tls: true, port: 443 }, $get }
YAML
}

# CGROUPS: the cgroups its policies name, space-separated; POLICIES: the
# configuration's policies (and tls) part (default: http_policy CGROUPS).
start_sockwarden() {  # INDEX ENGINE PIPE CGROUPS WALL(0|1|-: a build without one) [BINARY [POLICIES]]
  local i=$1 bin=${6:-$BIN} policies=${7:-$(http_policy "$4")} cg
  local fields=
  case $5 in 0) fields="skip_egress_wall: true" ;; 1) fields="skip_egress_wall: false" ;; esac
  # Several instances run at once, each on cgroups of its own: this build
  # refuses to start beside another unless told (older builds do not check).
  [[ $bin == "$BIN" ]] && fields="${fields:+$fields, }allow_other_enforcers: true"
  local testing=${fields:+"testing: { $fields }"}
  for cg in $4; do mkdir -p "$CG_TOP/$cg"; done
  cat > "$WORK/sw$i.yaml" <<YAML
proxy: { listen: "10.77.0.1:1500$i" }
admin: { listen: "127.0.0.1:990$i" }
bpf: { pin_path: $PIN-$i }
access_log: { path: "off" }
forwarding: { engine: $2, pipe_size: $3 }
$testing
$policies
YAML
  nsenter --net=/run/netns/$NODE "$bin" run --config "$WORK/sw$i.yaml" 2>"$WORK/sw$i.err" &
  PIDS+=($!)
  for _ in $(seq 1 100); do in_ns "$NODE" curl -sf -o /dev/null "http://127.0.0.1:990$i/readyz" && return; sleep 0.1; done
  cat "$WORK/sw$i.err" >&2; exit 1
}

# What every HAProxy's configuration starts with.
haproxy_head() {  # MODE(http|tcp)
  echo "global"
  echo "  maxconn 4096"
  echo "defaults"
  echo "  mode $1"
  echo "  timeout connect 2s"
  echo "  timeout client 60s"
  echo "  timeout server 60s"
}

# An HTTP HAProxy's configuration: SPLICE and the server line.
haproxy_http_cfg() {  # PORT SPLICE(0|1) SERVER
  haproxy_head http
  echo "  option http-keep-alive"
  echo "  http-reuse always"
  if [[ $2 == 1 ]]; then echo "  option splice-request"; echo "  option splice-response"; fi
  echo "frontend fe"
  echo "  bind 10.77.0.1:$1"
  echo "  default_backend be"
  echo "backend be"
  echo "  server origin $3"
}

# The pass-through peer: TCP, the ClientHello's SNI checked, then spliced.
haproxy_sni_cfg() {  # PORT
  haproxy_head tcp
  echo "  option splice-request"
  echo "  option splice-response"
  echo "frontend fe"
  echo "  bind 10.77.0.1:$1"
  echo "  tcp-request inspect-delay 5s"
  echo "  tcp-request content accept if { req.ssl_hello_type 1 }"
  echo "  use_backend be if { req.ssl_sni -i origin.test }"
  echo "backend be"
  echo "  server origin 10.77.1.10:443"
}

# Starts HAProxy on the node with $WORK/haproxyPORT.cfg and waits until the
# workload gets URL through it (curl's further arguments after it).
start_haproxy() {  # PORT URL [CURL ARGS...]
  local port=$1 url=$2; shift 2
  nsenter --net=/run/netns/$NODE haproxy -db -f "$WORK/haproxy$port.cfg" 2>"$WORK/haproxy$port.err" &
  PIDS+=($!)
  for _ in $(seq 1 100); do in_ns "$WL" curl -sf -o /dev/null "$@" "$url" && return; sleep 0.1; done
  cat "$WORK/haproxy$port.err" >&2; exit 1
}

# The interception peer: Squid bumping what nftables redirects to it.
squid_cfg() {
  local d=$WORK/pki s=$WORK/squid
  cat <<SQUID
workers 2
http_port 127.0.0.1:3128
https_port 10.77.0.1:3129 intercept ssl-bump tls-cert=$s/ca.crt tls-key=$s/ca.key generate-host-certificates=on dynamic_cert_mem_cache_size=4MB
sslcrtd_program /usr/lib/squid/security_file_certgen -s $s/ssl_db -M 4MB
sslcrtd_children 5
acl step1 at_step SslBump1
acl step2 at_step SslBump2
ssl_bump peek step1
ssl_bump stare step2
ssl_bump bump all
tls_outgoing_options cafile=$d/bench-ca.crt
acl origin dst 10.77.1.0/24
http_access allow origin
http_access deny all
cache deny all
access_log none
cache_log $s/cache.log
pid_filename $s/squid.pid
coredump_dir $s
hosts_file $WORK/hosts-10.77.1.11
dns_nameservers 127.0.0.1
pinger_enable off
shutdown_lifetime 1 seconds
SQUID
}

# Conntrack only for Squid's redirected flows; the redirect itself.
NFT_RULES='table ip swbench {
  chain raw_pre { type filter hook prerouting priority raw; iifname "to-wl" ip daddr 10.77.1.11 tcp dport 443 return; notrack; }
  chain raw_out { type filter hook output priority raw; ip saddr 10.77.0.1 tcp sport 3129 return; notrack; }
  chain nat_pre { type nat hook prerouting priority dstnat; iifname "to-wl" ip daddr 10.77.1.11 tcp dport 443 dnat to 10.77.0.1:3129; }
}'

start_squid() {
  local s=$WORK/squid
  mkdir -p "$s"
  cp "$WORK/pki/squid-ca.crt" "$s/ca.crt"
  cp "$WORK/pki/squid-ca.key" "$s/ca.key"
  /usr/lib/squid/security_file_certgen -c -s "$s/ssl_db" -M 4MB >/dev/null
  squid_cfg > "$s/squid.conf"
  chown -R proxy:proxy "$s"
  in_ns "$NODE" nft -f - <<<"$NFT_RULES"
  nsenter --net=/run/netns/$NODE squid -n "$SQUID_SERVICE" --foreground -f "$s/squid.conf" 2>"$s/squid.err" &
  PIDS+=($!)
  for _ in $(seq 1 150); do
    in_ns "$WL" curl -sf -o /dev/null --cacert "$s/ca.crt" --resolve origin.test:443:10.77.1.11 \
      https://origin.test/data/1k && return
    sleep 0.1
  done
  cat "$s/squid.err" "$s/cache.log" >&2; exit 1
}

NAMES=() HNAMES=() SW_INDEXES=()
declare -A CGROUP URL HOSTS CURL_ARGS PEER
if ((HTTP)); then
  start_sockwarden 1 splice 1048576 splice1m 0
  start_sockwarden 2 splice 65536 splice64k 1
  start_sockwarden 3 copy 65536 copy 0
  start_sockwarden 4 sockmap 65536 sockmap 0
  start_sockwarden 6 splice 65536 nowall 0
  haproxy_http_cfg 8080 0 10.77.1.10:80 > "$WORK/haproxy8080.cfg"
  start_haproxy 8080 http://10.77.0.1:8080/data/1k
  haproxy_http_cfg 8081 1 10.77.1.10:80 > "$WORK/haproxy8081.cfg"
  start_haproxy 8081 http://10.77.0.1:8081/data/1k
  SW_INDEXES=(1 2 3 4 6)

  # Contenders: cgroup ("-": none) and base URL.
  # Names ending in @node run their workload in the node's own namespace
  # (node-local), the others in the workload namespace behind a veth.
  NAMES=(direct sockwarden-splice-1m sockwarden-splice-64k sockwarden-nowall sockwarden-copy sockwarden-sockmap
    haproxy haproxy-splice direct@node sockwarden-splice-64k@node sockwarden-sockmap@node)
  CGROUP=([direct]=- [sockwarden-splice-1m]=splice1m [sockwarden-splice-64k]=splice64k [sockwarden-nowall]=nowall
    [sockwarden-copy]=copy [sockwarden-sockmap]=sockmap [haproxy]=- [haproxy-splice]=-
    [direct@node]=- [sockwarden-splice-64k@node]=splice64k [sockwarden-sockmap@node]=sockmap)
  URL=([direct]=http://10.77.1.10 [sockwarden-splice-1m]=http://10.77.1.10
    [sockwarden-splice-64k]=http://10.77.1.10 [sockwarden-nowall]=http://10.77.1.10 [sockwarden-copy]=http://10.77.1.10
    [sockwarden-sockmap]=http://10.77.1.10 [haproxy]=http://10.77.0.1:8080
    [haproxy-splice]=http://10.77.0.1:8081 [direct@node]=http://10.77.1.10
    [sockwarden-splice-64k@node]=http://10.77.1.10 [sockwarden-sockmap@node]=http://10.77.1.10)
fi
# The previous build beside this one (BASELINE's or SW_BENCH_PREVIOUS), with
# the default engine: same logging, threads and position as splice-64k.
if [[ -n ${SW_BENCH_PREVIOUS:-} ]]; then
  start_sockwarden 5 splice 65536 previous - "$SW_BENCH_PREVIOUS"
  SW_INDEXES+=(5)
  NAMES+=(sockwarden-previous)
  CGROUP[sockwarden-previous]=previous
  URL[sockwarden-previous]=http://10.77.1.10
fi

# The HTTPS cases (see the header): one sockwarden with three policies, the
# three peers; the wall is this sockwarden's only when no HTTP case runs.
if ((HTTPS)); then
  start_sockwarden 7 splice 65536 "tlspass tlsintercept tlsoriginate" $((!HTTP)) "$BIN" "$(https_policies)"
  SW_INDEXES+=(7)
  haproxy_sni_cfg 8443 > "$WORK/haproxy8443.cfg"
  start_haproxy 8443 https://origin.test:8443/data/1k --cacert "$WORK/pki/bench-ca.crt" \
    --resolve origin.test:8443:10.77.0.1
  haproxy_http_cfg 8082 0 "10.77.1.10:443 ssl verify required ca-file $WORK/pki/bench-ca.crt sni str(origin.test)" \
    > "$WORK/haproxy8082.cfg"
  start_haproxy 8082 http://10.77.0.1:8082/data/1k
  start_squid
  HNAMES=(direct-https sockwarden-tls-pass haproxy-tcp-sni sockwarden-tls-intercept squid-bump
    sockwarden-tls-originate haproxy-ssl-origin)
  CGROUP+=([direct-https]=- [sockwarden-tls-pass]=tlspass [haproxy-tcp-sni]=-
    [sockwarden-tls-intercept]=tlsintercept [squid-bump]=- [sockwarden-tls-originate]=tlsoriginate
    [haproxy-ssl-origin]=-)
  URL+=([direct-https]=https://origin.test [sockwarden-tls-pass]=https://origin.test
    [haproxy-tcp-sni]=https://origin.test:8443 [sockwarden-tls-intercept]=https://origin.test
    [squid-bump]=https://origin.test [sockwarden-tls-originate]=http://origin.test
    [haproxy-ssl-origin]=http://origin.test:8082)
  # The address origin.test takes for each (curl's --resolve, wrk's hosts).
  HOSTS=([direct-https]=10.77.1.10 [sockwarden-tls-pass]=10.77.1.10 [haproxy-tcp-sni]=10.77.0.1
    [sockwarden-tls-intercept]=10.77.1.10 [squid-bump]=10.77.1.11 [sockwarden-tls-originate]=10.77.1.10
    [haproxy-ssl-origin]=10.77.0.1)
  # Whom each client trusts: the origin's CA, the node CA, Squid's CA.
  p=$WORK/pki
  CURL_ARGS=([direct-https]="--cacert $p/bench-ca.crt" [sockwarden-tls-pass]="--cacert $p/bench-ca.crt"
    [haproxy-tcp-sni]="--cacert $p/bench-ca.crt" [sockwarden-tls-intercept]="--cacert $p/node-ca.crt"
    [squid-bump]="--cacert $WORK/squid/ca.crt")
  PEER=([sockwarden-tls-pass]=haproxy-tcp-sni [sockwarden-tls-intercept]=squid-bump
    [sockwarden-tls-originate]=haproxy-ssl-origin)
  for n in "${HNAMES[@]}"; do
    case ${URL[$n]} in
      *:[0-9]*) port=${URL[$n]##*:} ;;
      https:*) port=443 ;;
      *) port=80 ;;
    esac
    CURL_ARGS[$n]="${CURL_ARGS[$n]:-} --resolve origin.test:$port:${HOSTS[$n]}"
  done
fi
# The kTLS cases (see the header): kTLS on (7) against the copy path (8).
if ((KTLS)); then
  start_sockwarden 7 splice 65536 "tlspass tlsintercept tlsoriginate" 1 "$BIN" "$(https_policies)"
  start_sockwarden 8 splice 65536 "tlspass-copy tlsintercept-copy tlsoriginate-copy" 0 "$BIN" \
    "$(https_policies -copy false)"
  SW_INDEXES+=(7 8)
  HNAMES=(direct-https sockwarden-tls-intercept sockwarden-tls-intercept-copy
    sockwarden-tls-originate sockwarden-tls-originate-copy)
  p=$WORK/pki
  CGROUP+=([direct-https]=- [sockwarden-tls-intercept]=tlsintercept
    [sockwarden-tls-intercept-copy]=tlsintercept-copy [sockwarden-tls-originate]=tlsoriginate
    [sockwarden-tls-originate-copy]=tlsoriginate-copy)
  for n in "${HNAMES[@]}"; do
    case $n in
      *originate*) URL[$n]=http://origin.test CURL_ARGS[$n]="--resolve origin.test:80:10.77.1.10" ;;
      *intercept*) URL[$n]=https://origin.test CURL_ARGS[$n]="--cacert $p/node-ca.crt --resolve origin.test:443:10.77.1.10" ;;
      *) URL[$n]=https://origin.test CURL_ARGS[$n]="--cacert $p/bench-ca.crt --resolve origin.test:443:10.77.1.10" ;;
    esac
    HOSTS[$n]=10.77.1.10
  done
  PEER=([sockwarden-tls-intercept]=sockwarden-tls-intercept-copy
    [sockwarden-tls-originate]=sockwarden-tls-originate-copy)
fi
ALL=("${NAMES[@]}" "${HNAMES[@]}")

# curl as contender $1 sees it: its --cacert and --resolve, then the rest.
curl_as() {
  local n=$1 args
  shift
  read -ra args <<<"${CURL_ARGS[$n]:-}"
  run_in "$n" curl "${args[@]}" "$@"
}

# Every contender must serve, and every sockwarden must really redirect. An
# HTTPS client trusts only the CA of whoever ends its TLS, so these checks
# also prove that sockwarden and Squid intercept and the others do not.
for n in "${ALL[@]}"; do
  code=$(curl_as "$n" -s -o /dev/null -w '%{http_code}' "${URL[$n]}/data/1k" || true)
  [[ $code == 200 ]] || { echo "bench.sh: $n answered $code" >&2; exit 1; }
done
# The proxy counts a request just after the response is written: a scrape
# right after curl returns may be early, so look a few times. The HTTPS
# sockwarden must have spliced one pass-through connection and served one
# request of each of the other two policies.
proxied() {  # INDEX PATTERN...
  local m p
  m=$(in_ns "$NODE" curl -s "http://127.0.0.1:990$1/metrics")
  shift
  for p in "$@"; do grep -qE "$p" <<<"$m" || return 1; done
}
served() { echo "sockwarden_http_requests_total\{policy=\"$1\",verdict=\"allowed\",status=\"200\"\} [1-9]"; }
ktls_path() { echo "sockwarden_ktls_connections_total\{side=\"$1\",path=\"$2\",reason=\"$3\"\} [1-9]"; }
for i in "${SW_INDEXES[@]}"; do
  patterns=("$(served bench)")
  [[ $i == 7 ]] && patterns=("$(served tls-intercept)" "$(served tls-originate)")
  [[ $i == 7 ]] && ((HTTPS)) && patterns+=('sockwarden_tls_passthrough_connections_total\{policy="tls-pass"\} [1-9]')
  # kTLS must have taken both sides (or the copy instance's must not).
  [[ $i == 7 ]] && ((KTLS)) && patterns+=("$(ktls_path downstream ktls none)" "$(ktls_path upstream ktls none)")
  [[ $i == 8 ]] && patterns=("$(served tls-intercept-copy)" "$(served tls-originate-copy)"
    "$(ktls_path downstream copy disabled)" "$(ktls_path upstream copy disabled)")
  for _ in $(seq 1 20); do proxied "$i" "${patterns[@]}" && continue 2; sleep 0.1; done
  echo "bench.sh: sockwarden $i did not proxy the check requests (${patterns[*]})" >&2; exit 1
done

busy_ticks() { awk '/^cpu /{print $2+$3+$4+$7+$8+$9}' /proc/stat; }
TICK=$(getconf CLK_TCK)
to_ms() { awk -v v="$1" 'BEGIN { if (v ~ /us$/) { sub(/us$/,"",v); print v/1000 } else if (v ~ /ms$/) { sub(/ms$/,"",v); print v } else { sub(/s$/,"",v); print v*1000 } }'; }
mean() { awk '{ s = 0; for (i = 1; i <= NF; i++) s += $i; printf "%.2f", s / NF }' <<<"$1"; }
# shellcheck disable=SC2086 # $1: the figures, one word each
median() { printf '%s\n' $1 | sort -n | awk '{a[NR]=$1} END{print a[int((NR+1)/2)]}'; }

declare -A SPEEDS TICKS TP CPU RPS P50 P99
echo "== 64 MiB downloads: $ROUNDS round-robin rounds" >&2
for _ in $(seq 1 "$ROUNDS"); do
  for n in "${ALL[@]}"; do
    b0=$(busy_ticks)
    s=$(curl_as "$n" -s -o /dev/null -w '%{speed_download}' --max-time 60 "${URL[$n]}/data/64m") \
      || { echo "bench.sh: $n: the 64 MiB download failed" >&2; exit 1; }
    b1=$(busy_ticks)
    SPEEDS[$n]="${SPEEDS[$n]:-} $s"
    TICKS[$n]=$(( ${TICKS[$n]:-0} + b1 - b0 ))
  done
done
for n in "${ALL[@]}"; do
  TP[$n]=$(awk -v m="$(median "${SPEEDS[$n]}")" 'BEGIN { printf "%.0f", m / 1e6 }')
  CPU[$n]=$(awk -v t="${TICKS[$n]}" -v hz="$TICK" -v r="$ROUNDS" 'BEGIN { printf "%.3f", (t / hz) / (r * 64 / 1024) }')
done

((KTLS)) && WRK_ROUNDS=() || WRK_ROUNDS=(1 2)
((KTLS)) || echo "== 1 KiB GETs: wrk -t2 -c50, 2 round-robin rounds of ${WRK_SECONDS}s" >&2
for _ in "${WRK_ROUNDS[@]}"; do
  for n in "${ALL[@]}"; do
    out=$(run_in "$n" wrk -t2 -c50 -d"${WRK_SECONDS}s" --latency "${URL[$n]}/data/1k") \
      || { echo "bench.sh: $n: wrk failed" >&2; exit 1; }
    grep -q '^Requests/sec' <<<"$out" || { echo "bench.sh: $n: wrk printed no rate: $out" >&2; exit 1; }
    if grep -q 'Non-2xx or 3xx responses' <<<"$out"; then echo "bench.sh: $n: wrk got errors: $out" >&2; exit 1; fi
    if e=$(grep 'Socket errors' <<<"$out"); then echo "bench.sh: $n: wrk: $e" >&2; fi
    RPS[$n]="${RPS[$n]:-} $(awk '/^Requests\/sec/{print $2}' <<<"$out")"
    P50[$n]="${P50[$n]:-} $(to_ms "$(awk '$1=="50%"{print $2}' <<<"$out")")"
    P99[$n]="${P99[$n]:-} $(to_ms "$(awk '$1=="99%"{print $2}' <<<"$out")")"
  done
done
for n in "${ALL[@]}"; do
  if ((KTLS)); then RPS[$n]=- P50[$n]=- P99[$n]=-; continue; fi
  RPS[$n]=$(mean "${RPS[$n]}"); P50[$n]=$(mean "${P50[$n]}"); P99[$n]=$(mean "${P99[$n]}")
done

for i in "${SW_INDEXES[@]}"; do
  echo "sockwarden $i: $(in_ns "$NODE" curl -s "http://127.0.0.1:990$i/metrics" | grep -E '^sockwarden_((forwarded|sockmap)_bytes|tls_(passthrough_connections|handshakes)|ktls_(connections|records))_total' | tr '\n' ' ')" >&2
done

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b == 0) print "-"; else printf "%.2f", a / b }'; }
added() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", a - b }'; }

echo
echo "sockwarden benchmark, $(uname -r), $(nproc) CPUs; 64 MiB: $ROUNDS round-robin rounds; 1 KiB: wrk -t2 -c50, 2 x ${WRK_SECONDS}s"
if ((HTTP)); then
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
fi
if [[ -n ${SW_BENCH_PREVIOUS:-} ]]; then
  w=sockwarden-splice-64k o=sockwarden-previous
  echo "this build against the previous one, $PREVIOUS_IS ($w / $o):" \
    "64 MiB $(ratio "${TP[$w]}" "${TP[$o]}")x, CPU-s/GiB $(ratio "${CPU[$w]}" "${CPU[$o]}")x," \
    "1 KiB r/s $(ratio "${RPS[$w]}" "${RPS[$o]}")x, p50 ${P50[$w]} vs ${P50[$o]} ms, p99 ${P99[$w]} vs ${P99[$o]} ms"
fi

# A target of issue 12: "NAME >= MINx": met or MISSED, with the ratio.
target() {  # RATIO MIN WHAT
  awk -v r="$1" -v m="$2" -v w="$3" 'BEGIN { if (r == "-") print w " >= " m "x: no figure"
    else printf "%s %.2fx >= %sx: %s\n", w, r, m, (r + 0 >= m + 0 ? "met" : "MISSED") }'
}
# The issue's targets for contender $1, from its ratios.
targets_of() {  # NAME
  local n=$1 p=${PEER[$1]:-}
  if ((KTLS)); then
    case $n in
      sockwarden-tls-intercept | sockwarden-tls-originate)
        target "$(ratio "${TP[$n]}" "${TP[$p]}")" 1.3 "64MiB/copy" ;;
      *) echo "-" ;;
    esac
    return
  fi
  case $n in
    sockwarden-tls-pass) target "$(ratio "${TP[$n]}" "${TP[direct-https]}")" 0.95 "64MiB/direct" ;;
    sockwarden-tls-intercept)
      echo "$(target "$(ratio "${TP[$n]}" "${TP[$p]}")" 1.5 "64MiB/squid");" \
        "$(target "$(ratio "${RPS[$n]}" "${RPS[$p]}")" 1.5 "r/s/squid")" ;;
    *) echo "-" ;;
  esac
}
if ((TLS)); then
  echo
  if ((HTTPS)); then
    echo "HTTPS (x direct: over direct-https; x peer: over the case's peer:" \
      "tls-pass/haproxy-tcp-sni, tls-intercept/squid-bump, tls-originate/haproxy-ssl-origin)"
  else
    echo "kTLS (x direct: over direct-https; x peer: over the same case on the copy path, tls.ktls: false)"
  fi
  printf '%-26s %10s %8s %7s %9s %8s %7s %9s %8s %7s %12s  %s\n' \
    contender "64MiB MB/s" "x direct" "x peer" "CPU-s/GiB" "added" "x peer" \
    "1KiB r/s" "x direct" "x peer" "p50/p99 ms" "targets (issue 12)"
  d=direct-https
  for n in "${HNAMES[@]}"; do
    p=${PEER[$n]:-} add=$(added "${CPU[$n]}" "${CPU[$d]}") tp=- ap=- rp=-
    if [[ -n $p ]]; then
      tp=$(ratio "${TP[$n]}" "${TP[$p]}")
      ap=$(ratio "$add" "$(added "${CPU[$p]}" "${CPU[$d]}")")
      rp=$(ratio "${RPS[$n]}" "${RPS[$p]}")
    fi
    printf '%-26s %10s %8s %7s %9s %8s %7s %9s %8s %7s %12s  %s\n' \
      "$n" "${TP[$n]}" "$(ratio "${TP[$n]}" "${TP[$d]}")" "$tp" "${CPU[$n]}" "$add" "$ap" \
      "${RPS[$n]}" "$(ratio "${RPS[$n]}" "${RPS[$d]}")" "$rp" "${P50[$n]}/${P99[$n]}" "$(targets_of "$n")"
  done
fi
