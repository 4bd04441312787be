#!/usr/bin/env bash
# sockwarden demo: real enforcement on this machine, then a full clean-up.
#
# Creates two network namespaces (a node and an origin, addresses that exist
# only inside them), a demo origin (python's http.server), a demo cgroup, and
# runs sockwarden with a demo policy. A workload process in the cgroup then
# makes an allowed request, a request denied at layer 7, and a connect()
# that policy refuses; it resolves a name through the resolver its DNS rule
# allows, and the other ways out (another resolver, QUIC, a raw socket) are
# closed; HTTPS is judged by server name (passed through whole) and, with
# the node CA, request by request inside TLS (interception); a process
# outside the cgroup is untouched; the metrics that counted all of it; a
# live reload that changes the http rule; finally sockwarden stops and its
# programs stay attached (fail closed) until `sockwarden detach` removes
# them. Run as root.
set -euo pipefail
cd "$(dirname "$0")/.."

[[ $(id -u) -eq 0 ]] || { echo "demo.sh: run as root (it creates namespaces, cgroups and eBPF programs)" >&2; exit 1; }
scripts/setup.sh
echo "== building sockwarden (release)"
cargo build --release --quiet
BIN=$PWD/target/release/sockwarden

NODE=swdemo-node
ORIGIN=swdemo-origin
MOUNT=$(findmnt -n -t cgroup2 -o TARGET | head -n1)
[[ -n $MOUNT ]] || { echo "demo.sh: no cgroup2 filesystem mounted" >&2; exit 1; }
CG_TOP=$MOUNT/sockwarden-demo
CG=$CG_TOP/analytics
PIN=/sys/fs/bpf/sockwarden-demo
WORK=$(mktemp -d /tmp/sockwarden-demo.XXXXXX)
SW_PID=
ORIGIN_PID=
TLS_PID=
DNS_PID=

cleanup() {
  set +e
  [[ -n $SW_PID ]] && kill -TERM "$SW_PID" 2>/dev/null && wait "$SW_PID" 2>/dev/null
  [[ -n $ORIGIN_PID ]] && kill "$ORIGIN_PID" 2>/dev/null && wait "$ORIGIN_PID" 2>/dev/null
  [[ -n $DNS_PID ]] && kill "$DNS_PID" 2>/dev/null && wait "$DNS_PID" 2>/dev/null
  [[ -n $TLS_PID ]] && kill "$TLS_PID" 2>/dev/null && wait "$TLS_PID" 2>/dev/null
  if [[ -d $CG ]]; then
    for p in $(cat "$CG/cgroup.procs" 2>/dev/null); do kill -9 "$p" 2>/dev/null; done
    rmdir "$CG" 2>/dev/null
  fi
  rmdir "$CG_TOP" 2>/dev/null
  ip netns del "$NODE" 2>/dev/null
  ip netns del "$ORIGIN" 2>/dev/null
  rm -rf "$PIN" "$WORK"
}
trap cleanup EXIT
cleanup
trap cleanup EXIT

in_node() { nsenter --net=/run/netns/$NODE "$@"; }
# Runs a command as a workload: in the node's namespace and the demo cgroup.
as_workload() { nsenter --net=/run/netns/$NODE sh -c 'echo $$ > "$0/cgroup.procs" && exec "$@"' "$CG" "$@"; }

echo "== topology: namespaces $NODE (proxy 10.77.0.1) and $ORIGIN (10.77.1.10)"
ip netns add "$NODE"
ip netns add "$ORIGIN"
ip -n "$NODE" link set lo up
ip -n "$ORIGIN" link set lo up
ip -n "$NODE" link add to-origin type veth peer name eth0 netns "$ORIGIN"
ip -n "$NODE" link set to-origin up
ip -n "$ORIGIN" link set eth0 up
ip -n "$NODE" addr add 10.77.0.1/32 dev lo
ip -n "$NODE" addr add 10.77.1.1/24 dev to-origin
ip -n "$ORIGIN" addr add 10.77.1.10/24 dev eth0
ip -n "$ORIGIN" addr add 10.77.1.53/24 dev eth0
ip -n "$ORIGIN" route add default via 10.77.1.1


echo "== demo origin: http://10.77.1.10/ (python http.server)"
mkdir -p "$WORK/www/data" "$WORK/www/admin"
printf 'region,revenue\nemea,42\n' > "$WORK/www/data/report.csv"
printf 'secret\n' > "$WORK/www/admin/keys.txt"
nsenter --net=/run/netns/$ORIGIN python3 -m http.server 80 --bind 10.77.1.10 --directory "$WORK/www" \
  >"$WORK/origin.log" 2>&1 &
ORIGIN_PID=$!
for _ in $(seq 1 100); do
  nsenter --net=/run/netns/$NODE curl -s -o /dev/null http://10.77.1.10/ && break
  kill -0 "$ORIGIN_PID" 2>/dev/null || { echo "the demo origin failed:" >&2; cat "$WORK/origin.log" >&2; exit 1; }
  sleep 0.1
done

echo "== demo HTTPS origin: https://10.77.1.10/ (python ssl, a certificate for origin.test, static.origin.test and 10.77.1.10 from a demo CA)"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj /CN=demo-origin-CA \
  -keyout "$WORK/origin-ca.key" -out "$WORK/origin-ca.crt" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=origin.test \
  -keyout "$WORK/origin.key" -out "$WORK/origin.csr" 2>/dev/null
printf 'subjectAltName=DNS:origin.test,DNS:static.origin.test,IP:10.77.1.10\nextendedKeyUsage=serverAuth\n' > "$WORK/origin.ext"
openssl x509 -req -in "$WORK/origin.csr" -CA "$WORK/origin-ca.crt" -CAkey "$WORK/origin-ca.key" -CAcreateserial \
  -days 2 -extfile "$WORK/origin.ext" -out "$WORK/origin.crt" 2>/dev/null
nsenter --net=/run/netns/$ORIGIN python3 -c '
import http.server, ssl, sys, functools
handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=sys.argv[1])
httpd = http.server.ThreadingHTTPServer(("10.77.1.10", 443), handler)
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(sys.argv[2], sys.argv[3])
httpd.socket = ctx.wrap_socket(httpd.socket, server_side=True)
httpd.serve_forever()
' "$WORK/www" "$WORK/origin.crt" "$WORK/origin.key" >"$WORK/tls-origin.log" 2>&1 &
TLS_PID=$!
for _ in $(seq 1 100); do
  in_node curl -sk -o /dev/null https://10.77.1.10/ && break
  kill -0 "$TLS_PID" 2>/dev/null || { echo "the demo HTTPS origin failed:" >&2; cat "$WORK/tls-origin.log" >&2; exit 1; }
  sleep 0.1
done
echo "== the node CA: sockwarden ca init"
"$BIN" ca init --cert "$WORK/node-ca.crt" --key "$WORK/node-ca.key" | sed 's/^/   /'

echo "== demo resolver: 10.77.1.53 (dnsmasq) answers origin.test = 10.77.1.10"
nsenter --net=/run/netns/$ORIGIN dnsmasq --keep-in-foreground --no-resolv --no-hosts \
  --listen-address=10.77.1.53 --bind-interfaces --address=/origin.test/10.77.1.10 \
  --pid-file="$WORK/dnsmasq.pid" --log-facility=- >"$WORK/dnsmasq.log" 2>&1 &
DNS_PID=$!

mkdir -p "$CG"
cat > "$WORK/sockwarden.yaml" <<YAML
proxy:
  listen: 10.77.0.1:15001
admin:
  listen: 127.0.0.1:9901
bpf:
  pin_path: $PIN
tls:
  ca: { cert: $WORK/node-ca.crt, key: $WORK/node-ca.key }
  upstream_roots: $WORK/origin-ca.crt    # the origin's CA (default: the system's roots)
policies:
  - name: analytics
    cgroup: /sockwarden-demo/analytics
    egress:
      - to: ["10.77.1.0/24"]
        ports: [80]
        http:
          - method: "GET|HEAD"
            path: "/data/.*"
            host: '(origin\.test|10\.77\.1\.10)'
      - to: ["10.77.1.10/32"]     # HTTPS passed through whole by server name
        ports: [443]
        tls: { server_names: ["static.origin.test"] }
      - to: ["10.77.1.10/32"]     # HTTPS intercepted: the http rules judge each request
        ports: [443]
        tls: { intercept: true, server_names: ["origin.test"] }
        http:
          - method: GET
            path: "/data/.*"
      - to: ["10.77.1.53/32"]     # the resolver: DNS needs its own rule
        ports: [53]
        protocol: any
YAML
echo "== policy ($WORK/sockwarden.yaml)"
sed 's/^/   /' "$WORK/sockwarden.yaml"
"$BIN" check --config "$WORK/sockwarden.yaml"

echo "== starting sockwarden"
# nsenter execs sockwarden, so $! is sockwarden itself.
nsenter --net=/run/netns/$NODE "$BIN" run --config "$WORK/sockwarden.yaml" >"$WORK/access.log" 2>"$WORK/sockwarden.err" &
SW_PID=$!
for _ in $(seq 1 100); do
  if in_node curl -sf -o /dev/null http://127.0.0.1:9901/readyz; then break; fi
  if ! kill -0 "$SW_PID" 2>/dev/null; then cat "$WORK/sockwarden.err" >&2; exit 1; fi
  sleep 0.1
done
in_node curl -sf http://127.0.0.1:9901/readyz >/dev/null || { echo "sockwarden did not become ready" >&2; cat "$WORK/sockwarden.err" >&2; exit 1; }

echo
echo "== 1. allowed: the workload GETs /data/report.csv"
as_workload curl -sS -i http://10.77.1.10/data/report.csv | sed 's/^/   /'
echo
echo "== 2. denied at layer 7: the workload GETs /admin/keys.txt"
as_workload curl -sS -i http://10.77.1.10/admin/keys.txt | sed 's/^/   /'
echo
echo "== 3. hostile input is read one way (docs/http.md)"
echo "   a) dot segments are resolved before the policy judges: /data/../admin/keys.txt is /admin/keys.txt"
as_workload curl -sS --path-as-is -o /dev/null -w '      HTTP %{http_code}\n' http://10.77.1.10/data/../admin/keys.txt
echo "   b) request smuggling: Content-Length and Transfer-Encoding together, a second request hidden in the body"
as_workload python3 -c '
import socket
s = socket.create_connection(("10.77.1.10", 80), timeout=5)
s.sendall(b"POST /data/x HTTP/1.1\r\nHost: 10.77.1.10\r\nContent-Length: 44\r\n"
          b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /admin/keys.txt HTTP/1.1\r\nHost: x\r\n\r\n")
reply = b""
while True:
    chunk = s.recv(4096)
    if not chunk:
        break
    reply += chunk
for line in reply.decode(errors="replace").split("\r\n"):
    if line.startswith(("HTTP/", "sockwarden-error")):
        print("     ", line)
print("      connection closed after it:", reply.count(b"HTTP/1.1 "), "response(s)")
'
echo "   c) an Upgrade no rule allows (h2c) is removed: the request is forwarded as a plain one (flag UPR)"
as_workload curl -sS -o /dev/null -w '      HTTP %{http_code}\n' -H 'Upgrade: h2c' \
  -H 'Connection: Upgrade, HTTP2-Settings' -H 'HTTP2-Settings: AAMAAABkAAQAoAAAAAIAAAAA' \
  http://10.77.1.10/data/report.csv
echo
echo "== 4. refused at connect(): the workload connects to port 8080, which no rule allows"
as_workload python3 -c '
import socket
try:
    socket.create_connection(("10.77.1.10", 8080), timeout=2)
    print("   connected (unexpected)")
except OSError as e:
    print("   connect() failed:", e)
'
echo
echo "== 5. no side doors: UDP by rule, no raw sockets (docs/configuration.md#semantics)"
cat > "$WORK/doors.py" <<'PY'
import socket, struct, sys

def query(resolver, name):
    # A DNS query for the A record of name, over UDP.
    q = struct.pack("!HHHHHH", 0x5157, 0x0100, 1, 0, 0, 0)
    q += b"".join(bytes([len(l)]) + l.encode() for l in name.split(".")) + b"\0"
    q += struct.pack("!HH", 1, 1)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(3)
    s.sendto(q, (resolver, 53))
    reply = s.recv(512)
    return socket.inet_ntoa(reply[-4:])

def attempt(what, f):
    try:
        print("     ", what + ":", f())
    except OSError as e:
        print("     ", what + ": refused:", e.strerror)

attempt("a) origin.test through the allowed resolver 10.77.1.53", lambda: query("10.77.1.53", "origin.test"))
attempt("b) the same through another resolver, 10.77.1.54", lambda: query("10.77.1.54", "origin.test"))
quic = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
attempt("c) QUIC (UDP) to 10.77.1.10:443, where http rules apply", lambda: quic.sendto(b"\xc0quic", ("10.77.1.10", 443)))
attempt("d) a raw socket, to make packets by hand", lambda: socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_TCP))
PY
as_workload python3 "$WORK/doors.py"
echo "   e) with the name resolved, curl goes to the origin over TCP, where the http rules judge it:"
as_workload curl -sS -o /dev/null -w '      HTTP %{http_code}\n' --resolve origin.test:80:10.77.1.10 http://origin.test/data/report.csv
echo
echo "== 6. HTTPS (docs/tls.md)"
R="--resolve origin.test:443:10.77.1.10 --resolve static.origin.test:443:10.77.1.10 --resolve other.origin.test:443:10.77.1.10"
echo "   a) static.origin.test is passed through: the workload sees the origin's own certificate; nothing is decrypted"
as_workload curl -sS $R --cacert "$WORK/origin-ca.crt" -o /dev/null -w '      HTTP %{http_code}, verified against the origin CA\n' https://static.origin.test/data/report.csv
echo "   b) a name no rule allows is refused at its ClientHello, with a TLS alert"
as_workload curl -sS $R --cacert "$WORK/origin-ca.crt" https://other.origin.test/ 2>&1 | sed 's/^/      /' || true
echo "   c) origin.test is intercepted (the workload trusts the node CA): /data/ allowed, /admin/ denied inside TLS"
as_workload curl -sS $R --cacert "$WORK/node-ca.crt" -o /dev/null -w '      HTTP %{http_code} /data/report.csv, verified against the node CA\n' https://origin.test/data/report.csv
as_workload curl -sS $R --cacert "$WORK/node-ca.crt" -i https://origin.test/admin/keys.txt | grep -E '^(HTTP|sockwarden)' | sed 's/^/      /'
echo "   d) a Host other than the SNI (domain fronting) is misdirected: 421"
as_workload curl -sS $R --cacert "$WORK/node-ca.crt" -H 'Host: static.origin.test' -o /dev/null -w '      HTTP %{http_code}\n' https://origin.test/data/report.csv
echo "   e) which path the intercepted connections' records took: copied through rustls (kTLS is opt-in, tls.ktls), and why:"
in_node curl -sS http://127.0.0.1:9901/metrics | grep -E '^sockwarden_ktls_connections_total' | sed 's/^/      /'
echo
echo "== 7. outside the cgroup nothing is touched: the same /admin request from the node"
in_node curl -sS -o /dev/null -w '   HTTP %{http_code} straight from the origin\n' http://10.77.1.10/admin/keys.txt
echo
echo "== 8. access log (one JSON line per proxied request; per connection for TLS passed through or refused)"
sed 's/^/   /' "$WORK/access.log"
echo
echo "== 9. metrics (http://127.0.0.1:9901/metrics in the node namespace)"
in_node curl -sS http://127.0.0.1:9901/metrics | grep -E '^sockwarden_(http_requests|http_rejected|http_upgrades_removed|connect_denied|connect_decisions|upstream_connections_opened|udp_decisions|sockets_refused|tls_|ktls_)' | grep -v ' 0$' | sed 's/^/   /'
echo
echo "== 10. live reload: the plain-HTTP rule now allows /admin/ instead of /data/ (sockwarden reload; SIGHUP does the same)"
sed -i '0,/path: "\/data\/\.\*"/s//path: "\/admin\/.*"/' "$WORK/sockwarden.yaml"
in_node "$BIN" reload --config "$WORK/sockwarden.yaml" | sed 's/^/   /'
as_workload curl -sS -o /dev/null -w '   /admin/keys.txt: HTTP %{http_code}\n' http://10.77.1.10/admin/keys.txt
as_workload curl -sS -o /dev/null -w '   /data/report.csv: HTTP %{http_code}\n' http://10.77.1.10/data/report.csv
echo

echo "== 11. stopped, still enforced (fail closed): SIGTERM drains the proxy and leaves the programs attached"
kill -TERM "$SW_PID" && wait "$SW_PID"
SW_PID=
tail -n 1 "$WORK/sockwarden.err" | sed 's/\x1b\[[0-9;]*m//g; s/^/   /'
echo "   the allowed request, with no proxy to check it:"
as_workload curl -sS -o /dev/null http://10.77.1.10/data/report.csv 2>&1 | sed 's/^/     /' || true
echo "   a connect() no rule allows:"
as_workload bash -c 'exec 3<>/dev/tcp/10.77.1.10/8080' 2>&1 | sed 's/^/     /' || true
echo
echo "== 12. removing enforcement is an explicit act: sockwarden detach"
"$BIN" detach --pin-path "$PIN" | sed 's/^/   /'
echo
echo "== cleaning up"
