//! Kernel tier: issue 10, "no side doors". UDP by rule (connected and
//! unconnected, IPv4 and IPv6), echo replies, DNS through a real resolver,
//! QUIC-style UDP to an HTTP port, raw and ICMP sockets, a forged TCP SYN
//! from a raw ICMP socket with IP_HDRINCL, AF_PACKET, and processes outside
//! policy cgroups left alone.
//!
//! Clients are small python3 programs ([`CLIENT`]) run in the pod namespace,
//! in the policy cgroup or outside it (the control: the same client gets
//! through without enforcement). Servers run in the origin namespace: UDP
//! echo servers on threads of this process, dnsmasq, and a raw-socket SYN
//! sniffer ([`SNIFFER`]). Every process is bounded by `timeout` and killed
//! with its process group when the test ends, passed or failed. Root is
//! required; without it these tests fail, they never skip.

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, UdpSocket};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::cgroup::TestCgroup;
use crate::common::lock;
use crate::common::patience;
use crate::netns::{Netns, Topology, POD_V4};
use crate::support::{command_in, require_root, run_checked};
use crate::sw::{bare_scene, outsider, stdout, tcp_connect, workload, Sockwarden, BIN};

/// The test client. `python3 -c CLIENT OP ARGS... [-- OP ARGS...]...` runs
/// the operations in turn (one process for many: under emulation a python
/// start costs seconds), prints one result line each and exits 0 whatever
/// happened; errors are errno names (`EPERM`).
///
/// * `udp HOST PORT PAYLOAD`: connect() a UDP socket, send, await the echo:
///   `reply PAYLOAD from ADDR`, `noreply`, `connect ERR` or `send ERR`.
/// * `sendto PAYLOAD HOST PORT [HOST PORT]...`: one unconnected socket,
///   sendto() each destination in turn and await its echo; the results
///   joined by "; ".
/// * `flow HOST PORT COUNT`: connect(), then COUNT datagrams of 8 to 8,000
///   bytes, each awaited and compared: `echoed N of COUNT`.
/// * `dns SERVER NAME udp|tcp`: a hand-built A query; `A ADDR`, `rcode N`,
///   `noreply`, `sendto ERR` or `connect ERR`.
/// * `socket FAMILY TYPE PROTO` (FAMILY 4, 6 or packet): `ok` or ERR.
/// * `icmp raw|ping HOST TYPE`: an ICMP(v6) message of TYPE from a raw or
///   ping socket; for an echo request the reply is awaited (`reply from
///   ADDR`, `noreply`), otherwise `sent`; or `socket ERR`, `sendto ERR`.
/// * `forge SRC DST PORT SEQ`: a raw ICMP socket with IP_HDRINCL sends a
///   hand-made IPv4 + TCP SYN (sequence number SEQ, correct checksums):
///   `sent`, `socket ERR`, `setsockopt ERR` or `sendto ERR`.
///
/// Every wait is bounded: socket timeouts of 2 s times
/// SOCKWARDEN_TEST_PATIENCE.
const CLIENT: &str = r#"
import errno, os, socket, struct, sys, time

try:
    PATIENCE = max(1, int(os.environ.get("SOCKWARDEN_TEST_PATIENCE", "1")))
except ValueError:
    PATIENCE = 1
WAIT = 2.0 * PATIENCE

def name(e):
    if isinstance(e, socket.timeout):
        return "timeout"
    return errno.errorcode.get(e.errno, str(e.errno))

def family(host):
    return socket.AF_INET6 if ":" in host else socket.AF_INET

def checksum(data):
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack("!%dH" % (len(data) // 2), data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF

def reply(s):
    try:
        data, peer = s.recvfrom(65535)
    except socket.timeout:
        return "noreply"
    return "reply %s from %s" % (data.decode(errors="replace"), peer[0])

def connected(host, port):
    s = socket.socket(family(host), socket.SOCK_DGRAM)
    s.settimeout(WAIT)
    s.connect((host, int(port)))
    return s

def udp(host, port, payload):
    try:
        s = connected(host, port)
    except OSError as e:
        return "connect " + name(e)
    try:
        s.send(payload.encode())
    except OSError as e:
        return "send " + name(e)
    return reply(s)

def sendto(payload, *dests):
    s = socket.socket(family(dests[0]), socket.SOCK_DGRAM)
    s.settimeout(WAIT)
    out = []
    for host, port in zip(dests[::2], dests[1::2]):
        try:
            s.sendto(payload.encode(), (host, int(port)))
        except OSError as e:
            out.append("sendto " + name(e))
            continue
        out.append(reply(s))
    return "; ".join(out)

def flow(host, port, count):
    try:
        s = connected(host, port)
    except OSError as e:
        return "connect " + name(e)
    good = 0
    for i in range(int(count)):
        size = (8, 512, 1400, 4000, 8000)[i % 5]
        data = (("%06d " % i).encode() * 1200)[:size]
        try:
            s.send(data)
            if s.recv(65535) == data:
                good += 1
        except OSError:
            pass
    return "echoed %d of %s" % (good, count)

def dns(server, qname, transport):
    query = struct.pack("!HHHHHH", 0x5357, 0x0100, 1, 0, 0, 0)
    for label in qname.split("."):
        query += bytes([len(label)]) + label.encode()
    query += b"\0" + struct.pack("!HH", 1, 1)
    if transport == "tcp":
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.settimeout(WAIT)
        try:
            s.connect((server, 53))
        except OSError as e:
            return "connect " + name(e)
        s.sendall(struct.pack("!H", len(query)) + query)
        resp = b""
        while len(resp) < 2 or len(resp) < 2 + struct.unpack("!H", resp[:2])[0]:
            chunk = s.recv(4096)
            if not chunk:
                return "short answer"
            resp += chunk
        resp = resp[2:]
    else:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.settimeout(WAIT)
        try:
            s.sendto(query, (server, 53))
        except OSError as e:
            return "sendto " + name(e)
        try:
            resp = s.recv(4096)
        except socket.timeout:
            return "noreply"
    qid, flags, qdcount, ancount = struct.unpack("!HHHH", resp[:8])
    if qid != 0x5357:
        return "wrong id"
    if flags & 0xF:
        return "rcode %d" % (flags & 0xF)
    def skip_name(i):
        while resp[i] != 0:
            if resp[i] & 0xC0 == 0xC0:
                return i + 2
            i += 1 + resp[i]
        return i + 1
    i = 12
    for _ in range(qdcount):
        i = skip_name(i) + 4
    for _ in range(ancount):
        i = skip_name(i)
        rtype, _, _, rdlen = struct.unpack("!HHIH", resp[i:i + 10])
        i += 10
        if rtype == 1 and rdlen == 4:
            return "A " + socket.inet_ntoa(resp[i:i + 4])
        i += rdlen
    return "no A record"

FAMILIES = {"4": socket.AF_INET, "6": socket.AF_INET6, "packet": socket.AF_PACKET}
TYPES = {"stream": socket.SOCK_STREAM, "dgram": socket.SOCK_DGRAM,
         "raw": socket.SOCK_RAW, "seqpacket": socket.SOCK_SEQPACKET}

def sock(fam, typ, proto):
    try:
        socket.socket(FAMILIES[fam], TYPES[typ], int(proto)).close()
    except OSError as e:
        return name(e)
    return "ok"

def icmp(kind, host, msg_type):
    v6 = ":" in host
    proto = socket.IPPROTO_ICMPV6 if v6 else socket.IPPROTO_ICMP
    typ = socket.SOCK_RAW if kind == "raw" else socket.SOCK_DGRAM
    try:
        s = socket.socket(family(host), typ, proto)
    except OSError as e:
        return "socket " + name(e)
    s.settimeout(WAIT)
    payload = b"sockwarden-side-doors"
    msg = struct.pack("!BBHHH", int(msg_type), 0, 0, 0x5357, 1) + payload
    if not v6:
        # The kernel sums ICMPv6 and ping sockets itself; raw ICMP is ours.
        msg = msg[:2] + struct.pack("!H", checksum(msg)) + msg[4:]
    try:
        s.sendto(msg, (host, 0))
    except OSError as e:
        return "sendto " + name(e)
    if int(msg_type) != (128 if v6 else 8):
        return "sent"
    want = 129 if v6 else 0
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        try:
            data, peer = s.recvfrom(65535)
        except socket.timeout:
            break
        if typ == socket.SOCK_RAW and not v6:
            data = data[(data[0] & 15) * 4:]
        if len(data) >= 8 and data[0] == want and data[8:] == payload:
            return "reply from " + peer[0]
    return "noreply"

def forge(src, dst, port, seq):
    try:
        s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    except OSError as e:
        return "socket " + name(e)
    try:
        s.setsockopt(socket.IPPROTO_IP, socket.IP_HDRINCL, 1)
    except OSError as e:
        return "setsockopt " + name(e)
    saddr, daddr = socket.inet_aton(src), socket.inet_aton(dst)
    tcp = struct.pack("!HHIIBBHHH", 40000, int(port), int(seq), 0, 5 << 4, 0x02, 64240, 0, 0)
    pseudo = saddr + daddr + struct.pack("!BBH", 0, socket.IPPROTO_TCP, len(tcp))
    tcp = tcp[:16] + struct.pack("!H", checksum(pseudo + tcp)) + tcp[18:]
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), 0x5357, 0, 64,
                     socket.IPPROTO_TCP, 0, saddr, daddr)
    ip = ip[:10] + struct.pack("!H", checksum(ip)) + ip[12:]
    try:
        s.sendto(ip + tcp, (dst, 0))
    except OSError as e:
        return "sendto " + name(e)
    return "sent"

OPS = {"udp": udp, "sendto": sendto, "flow": flow, "dns": dns, "socket": sock,
       "icmp": icmp, "forge": forge}
ops = [[]]
for arg in sys.argv[1:]:
    if arg == "--":
        ops.append([])
    else:
        ops[-1].append(arg)
for op in ops:
    try:
        result = OPS[op[0]](*op[1:])
    except OSError as e:
        result = "error " + name(e)
    print(result, flush=True)
"#;

/// Records TCP SYNs that reach its namespace: `python3 -c SNIFFER PORT SEQ
/// LINGER` prints `ready` once its raw socket (IPPROTO_TCP: a copy of every
/// TCP segment the namespace receives) is open, then `syn from ADDR` for the
/// first SYN to PORT with sequence number SEQ, and `done` when it saw one or
/// LINGER seconds after a line (or the end) of its standard input: the
/// sender is done, so the window does not depend on how long the sender
/// took to start.
const SNIFFER: &str = r#"
import select, socket, struct, sys, time
port, seq, linger = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_TCP)
print("ready", flush=True)
watch, deadline = [s, sys.stdin], None
while deadline is None or time.monotonic() < deadline:
    ready = select.select(watch, [], [], 0.1)[0]
    if sys.stdin in ready:
        sys.stdin.readline()
        watch.remove(sys.stdin)
        deadline = time.monotonic() + linger
    if s not in ready:
        continue
    data = s.recv(65535)
    ihl = (data[0] & 15) * 4
    if len(data) < ihl + 14:
        continue
    dport, got = struct.unpack("!2xHI", data[ihl:ihl + 8])
    if dport == port and got == seq and data[ihl + 13] & 0x02:
        print("syn from " + socket.inet_ntoa(data[12:16]), flush=True)
        break
print("done", flush=True)
"#;

// ---------------------------------------------------------------------------
// Processes, servers and clients.

/// A child process leading its own process group; the whole group is
/// SIGKILLed and the child reaped when this is dropped (`timeout` wrappers
/// would otherwise leave their command running).
struct ProcessGroup(Child);

impl ProcessGroup {
    fn spawn(mut cmd: Command) -> ProcessGroup {
        cmd.process_group(0);
        ProcessGroup(cmd.spawn().unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}")))
    }
}

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        if let Ok(pid) = i32::try_from(self.0.id()) {
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `timeout` arguments bounding a command to `secs` seconds (stretched by
/// [`patience`]), SIGKILL 2 s after the SIGTERM.
fn bounded(secs: u64) -> [String; 3] {
    [
        "-k".into(),
        "2".into(),
        patience(Duration::from_secs(secs)).as_secs().to_string(),
    ]
}

/// Runs [`CLIENT`] once for `ops` (each an operation and its arguments,
/// separated by spaces) in `ns`: in `cg` (a workload) or, with None,
/// outside any policy cgroup. Returns a result line per operation; panics
/// if the client did not exit 0 (a crash or the time bound, not an errno:
/// those are results).
fn clients<S: AsRef<str>>(ns: &Netns, cg: Option<&TestCgroup>, ops: &[S]) -> Vec<String> {
    let limit = bounded(20 + 5 * ops.len() as u64);
    let mut full: Vec<&str> = limit.iter().map(String::as_str).collect();
    full.extend(["python3", "-c", CLIENT]);
    for (i, op) in ops.iter().enumerate() {
        if i > 0 {
            full.push("--");
        }
        full.extend(op.as_ref().split_whitespace());
    }
    let ops: Vec<&str> = ops.iter().map(AsRef::as_ref).collect();
    let o = match cg {
        Some(cg) => workload(ns, cg, "timeout", &full),
        None => outsider(ns, "timeout", &full),
    };
    let out = stdout(&o);
    let lines: Vec<String> = out.lines().map(str::to_string).collect();
    assert!(
        o.status.success() && lines.len() == ops.len(),
        "client {ops:?} failed ({}): {out}{}",
        o.status,
        String::from_utf8_lossy(&o.stderr)
    );
    lines
}

/// Runs `cases` (an operation and the result it must give) as one
/// [`clients`] call and checks every result.
fn expect(ns: &Netns, cg: Option<&TestCgroup>, cases: &[(&str, &str)]) {
    let ops: Vec<&str> = cases.iter().map(|&(op, _)| op).collect();
    let results = clients(ns, cg, &ops);
    let who = match cg {
        Some(cg) => format!("in {}", cg.rel()),
        None => "outside policy cgroups".to_string(),
    };
    for ((op, want), got) in cases.iter().zip(&results) {
        assert_eq!(got, want, "{op} {who}");
    }
}

/// [`clients`] with one operation: its result.
fn client(ns: &Netns, cg: Option<&TestCgroup>, op: &str) -> String {
    clients(ns, cg, &[op]).remove(0)
}

/// UDP echo servers in a namespace, on threads of this process: each
/// datagram is recorded and sent back to its sender. Stopped and joined on
/// drop (and each thread ends by itself after 5 minutes at most).
struct UdpEcho {
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Vec<String>>>,
    threads: Vec<JoinHandle<()>>,
}

impl UdpEcho {
    fn start(ns: &Netns, addrs: &[&str]) -> UdpEcho {
        let mut echo = UdpEcho {
            stop: Arc::new(AtomicBool::new(false)),
            seen: Arc::new(Mutex::new(Vec::new())),
            threads: Vec::new(),
        };
        for a in addrs {
            let addr: SocketAddr = a.parse().expect("echo address");
            let sock = ns
                .within(move || UdpSocket::bind(addr))
                .unwrap_or_else(|e| panic!("bind UDP echo {addr}: {e}"));
            sock.set_read_timeout(Some(Duration::from_millis(50)))
                .expect("UDP echo read timeout");
            let (stop, seen) = (echo.stop.clone(), echo.seen.clone());
            echo.threads
                .push(std::thread::spawn(move || echo_loop(&sock, &stop, &seen)));
        }
        echo
    }

    /// Every payload received so far, as text.
    fn seen(&self) -> Vec<String> {
        lock(&self.seen).clone()
    }
}

fn echo_loop(sock: &UdpSocket, stop: &AtomicBool, seen: &Mutex<Vec<String>>) {
    let deadline = Instant::now() + Duration::from_secs(300);
    let mut buf = vec![0u8; 65536];
    while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
        if let Ok((n, peer)) = sock.recv_from(&mut buf) {
            lock(seen).push(String::from_utf8_lossy(&buf[..n]).into_owned());
            let _ = sock.send_to(&buf[..n], peer);
        }
    }
}

impl Drop for UdpEcho {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// A [`SNIFFER`] in `ns`, started and ready.
struct Sniffer {
    proc: ProcessGroup,
    out: BufReader<ChildStdout>,
}

impl Sniffer {
    fn start(ns: &Netns, port: u16, seq: u32) -> Sniffer {
        let linger = patience(Duration::from_secs(1)).as_secs();
        let mut cmd = command_in(Some(&ns.path()), None, "timeout");
        cmd.args(bounded(60))
            .args(["python3", "-c", SNIFFER])
            .args([port.to_string(), seq.to_string(), linger.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped());
        let mut proc = ProcessGroup::spawn(cmd);
        let out = BufReader::new(proc.0.stdout.take().expect("sniffer stdout"));
        let mut s = Sniffer { proc, out };
        let first = s.line();
        assert_eq!(first, "ready", "the sniffer did not start");
        s
    }

    /// The next line ("" at end of file: the process is bounded in time).
    fn line(&mut self) -> String {
        let mut l = String::new();
        let _ = self.out.read_line(&mut l);
        l.trim().to_string()
    }

    /// Called once the packet was sent: `syn from ADDR` if the SYN arrived
    /// (by the end of the linger), else None.
    fn finish(mut self) -> Option<String> {
        // Closing stdin starts the linger.
        drop(self.proc.0.stdin.take());
        let line = self.line();
        line.starts_with("syn from ").then_some(line)
    }
}

/// A forged SYN sent by [`CLIENT`] `forge` from the pod (in `cg`, or as an
/// outsider) to ORIGIN:port, watched by a [`Sniffer`] in the origin
/// namespace: (the client's result, what the sniffer saw).
fn forge_syn(
    topo: &crate::netns::Topology,
    cg: Option<&TestCgroup>,
    port: u16,
    seq: u32,
) -> (String, Option<String>) {
    let sniffer = Sniffer::start(&topo.origin, port, seq);
    let sent = client(
        &topo.pod,
        cg,
        &format!("forge {POD_V4} 10.77.1.10 {port} {seq}"),
    );
    (sent, sniffer.finish())
}

/// dnsmasq answering `origin.test` with 10.77.1.10 on `addr`:53 (UDP and
/// TCP) in `ns`, foreground, no upstream, no hosts file, no config file.
fn dnsmasq(ns: &Netns, addr: &str) -> ProcessGroup {
    let mut cmd = command_in(Some(&ns.path()), None, "timeout");
    cmd.args(bounded(180))
        .args([
            "dnsmasq",
            "-k",
            "--conf-file=/dev/null",
            "--no-resolv",
            "--no-hosts",
            "--address=/origin.test/10.77.1.10",
            "--bind-interfaces",
            "--pid-file=",
            "--user=root",
        ])
        .arg(format!("--listen-address={addr}"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    ProcessGroup::spawn(cmd)
}

/// Adds `addrs` (CIDR, IPv4 or IPv6) to the origin namespace's eth0.
fn add_origin_addresses(origin: &Netns, addrs: &[&str]) {
    for a in addrs {
        if a.contains(':') {
            origin.run(&["-6", "addr", "add", a, "dev", "eth0", "nodad"]);
        } else {
            origin.run(&["addr", "add", a, "dev", "eth0"]);
        }
    }
}

// ---------------------------------------------------------------------------
// Configuration and metrics.

/// The `policies:` section with these entries (see [`policy`]).
fn config(entries: &[String]) -> String {
    format!("policies:\n{}", entries.concat())
}

/// One entry of `policies:`: `extra` fields at the policy's level (e.g.
/// `icmp: true`) and `egress` rules, each a YAML flow mapping.
fn policy(name: &str, cg: &TestCgroup, extra: &[&str], egress: &[&str]) -> String {
    let mut s = format!("  - name: {name}\n    cgroup: {}\n", cg.rel());
    for e in extra {
        s.push_str(&format!("    {e}\n"));
    }
    s.push_str("    egress:\n");
    for r in egress {
        s.push_str(&format!("      - {r}\n"));
    }
    s
}

/// A TCP rule for the origin's port 80: a policy that allows no UDP.
const PORT_80: &str = r#"{ to: ["10.77.1.10/32"], ports: [80] }"#;

/// What a [`Doors`] scene has besides its policy's name.
#[derive(Default)]
struct Spec<'a> {
    /// A `testing:` section (or "") before `policies:`.
    testing: &'a str,
    /// Addresses (CIDR) added to the origin namespace's eth0 first.
    origin_addrs: &'a [&'a str],
    /// Where UDP echo servers listen in the origin namespace.
    echo: &'a [&'a str],
    /// Fields of the policy (e.g. `icmp: true`) and its rules, as in [`policy`].
    extra: &'a [&'a str],
    egress: &'a [&'a str],
}

impl<'a> Spec<'a> {
    /// UDP echo servers at `echo` and a policy of the rules `egress`.
    fn new(echo: &'a [&'a str], egress: &'a [&'a str]) -> Spec<'a> {
        Spec {
            echo,
            egress,
            ..Spec::default()
        }
    }
}

/// A scene: topology, a workload cgroup, UDP echo servers in the origin
/// namespace and sockwarden enforcing one policy on that cgroup. Dropped in
/// field order: sockwarden first, the namespaces last.
struct Doors {
    sw: Sockwarden,
    echo: UdpEcho,
    cg: TestCgroup,
    topo: Topology,
}

impl Doors {
    /// The scene of test and policy `name`. Requires root.
    fn start(name: &str, spec: Spec) -> Doors {
        let (tag, topo, cg) = bare_scene(name, name);
        add_origin_addresses(&topo.origin, spec.origin_addrs);
        let echo = UdpEcho::start(&topo.origin, spec.echo);
        let body = config(&[policy(name, &cg, spec.extra, spec.egress)]);
        let sw = Sockwarden::start(&topo.node, &tag, &format!("{}{body}", spec.testing));
        Doors { sw, echo, cg, topo }
    }
}

const UDP_DECISIONS: &str = "sockwarden_udp_decisions_total";
const SOCKETS_REFUSED: &str = "sockwarden_sockets_refused_total";
const EGRESS_DROPPED: &str = "sockwarden_egress_dropped_packets_total";

/// Every issue-10 metric with its second label and that label's values.
const DOOR_SERIES: [(&str, &str, &[&str]); 3] = [
    (UDP_DECISIONS, "verdict", &["allow", "deny", "quic"]),
    (
        SOCKETS_REFUSED,
        "kind",
        &["raw", "icmp", "protocol", "packet"],
    ),
    (
        EGRESS_DROPPED,
        "reason",
        &["forged", "udp", "icmp", "protocol"],
    ),
];

/// The series name `metric{policy="P",label="value"}`.
fn series(metric: &str, policy: &str, label: &str, value: &str) -> String {
    format!(r#"{metric}{{policy="{policy}",{label}="{value}"}}"#)
}

fn udp_decisions(sw: &Sockwarden, policy: &str, verdict: &str) -> f64 {
    sw.metric(&series(UDP_DECISIONS, policy, "verdict", verdict))
}

fn sockets_refused(sw: &Sockwarden, policy: &str, kind: &str) -> f64 {
    sw.metric(&series(SOCKETS_REFUSED, policy, "kind", kind))
}

fn egress_dropped(sw: &Sockwarden, policy: &str, reason: &str) -> f64 {
    sw.metric(&series(EGRESS_DROPPED, policy, "reason", reason))
}

/// Panics unless the egress wall dropped no packet of `policy`.
fn assert_nothing_dropped(sw: &Sockwarden, policy: &str) {
    let (metric, label, reasons) = DOOR_SERIES[2];
    for reason in reasons {
        assert_eq!(
            sw.metric(&series(metric, policy, label, reason)),
            0.0,
            "{reason}"
        );
    }
}

/// Panics unless every issue-10 series of `policy` is exported, at 0.
fn assert_door_series_at_zero(sw: &Sockwarden, policy: &str) {
    let (status, body) = sw.admin_get("/metrics").expect("metrics reachable");
    assert_eq!(status, 200);
    for (metric, label, values) in DOOR_SERIES {
        for value in values {
            let name = series(metric, policy, label, value);
            let line = body
                .lines()
                .find_map(|l| l.strip_prefix(&name)?.strip_prefix(' '));
            assert_eq!(
                line.map(str::trim),
                Some("0"),
                "{name} is not exported at 0 from start-up"
            );
        }
    }
}

// ---------------------------------------------------------------------------
// 1. UDP by rule.

#[test]
fn udp_by_rule_connected_and_unconnected_ipv4_and_ipv6() {
    let d = Doors::start(
        "udp",
        Spec {
            origin_addrs: &["10.77.1.11/24", "10.77.1.12/24", "fd77:1::11/64"],
            echo: &[
                "10.77.1.10:7",
                "10.77.1.11:7",
                "10.77.1.12:7",
                "10.77.1.10:8",
                "10.77.1.10:9000",
                "[fd77:1::10]:7",
                "[fd77:1::11]:7",
                "[fd77:1::10]:8",
            ],
            egress: &[
                r#"{ to: ["10.77.1.10/32", "10.77.1.11/32", "fd77:1::10/128", "fd77:1::11/128"], ports: [7], protocol: udp }"#,
                r#"{ to: ["10.77.1.10/32"], ports: [9000] }"#,
            ],
            ..Spec::default()
        },
    );
    let (topo, cg, echo, sw) = (&d.topo, &d.cg, &d.echo, &d.sw);
    assert_door_series_at_zero(sw, "udp");
    let pod = &topo.pod;

    expect(
        pod,
        Some(cg),
        &[
            // Connected: connect() is judged...
            ("udp 10.77.1.10 7 c4", "reply c4 from 10.77.1.10"),
            ("udp fd77:1::10 7 c6", "reply c6 from fd77:1::10"),
            // ... refused: a port no rule covers, an address, an IPv6 port,
            // and a TCP-only rule (the default protocol).
            ("udp 10.77.1.10 8 denied-port", "connect EPERM"),
            ("udp 10.77.1.12 7 denied-address", "connect EPERM"),
            ("udp fd77:1::10 8 denied-v6-port", "connect EPERM"),
            ("udp 10.77.1.10 9000 denied-tcp-rule", "connect EPERM"),
            // Unconnected: every sendto() is judged, so one socket reaches
            // two allowed destinations, and is refused the others.
            (
                "sendto u4 10.77.1.10 7 10.77.1.11 7",
                "reply u4 from 10.77.1.10; reply u4 from 10.77.1.11",
            ),
            (
                "sendto u6 fd77:1::10 7 fd77:1::11 7",
                "reply u6 from fd77:1::10; reply u6 from fd77:1::11",
            ),
            (
                "sendto mixed 10.77.1.10 7 10.77.1.12 7 10.77.1.10 8",
                "reply mixed from 10.77.1.10; sendto EPERM; sendto EPERM",
            ),
            ("sendto denied-v6 fd77:1::10 8", "sendto EPERM"),
        ],
    );
    // A UDP rule does not allow TCP.
    assert!(
        tcp_connect(pod, Some(cg), "10.77.1.10", 7).contains("Operation not permitted"),
        "TCP to a protocol: udp rule's destination"
    );

    // Control: the refused destinations answer a process outside the cgroup.
    expect(
        pod,
        None,
        &[
            ("udp 10.77.1.10 8 o1", "reply o1 from 10.77.1.10"),
            ("udp 10.77.1.12 7 o2", "reply o2 from 10.77.1.12"),
            ("sendto o3 fd77:1::10 8", "reply o3 from fd77:1::10"),
            ("udp 10.77.1.10 9000 o4", "reply o4 from 10.77.1.10"),
        ],
    );

    // Nothing refused reached a server; what was allowed did.
    let seen = echo.seen();
    assert!(!seen.iter().any(|p| p.starts_with("denied")), "{seen:?}");
    assert_eq!(seen.iter().filter(|p| *p == "mixed").count(), 1, "{seen:?}");
    for p in ["c4", "c6", "u4", "u6"] {
        assert!(seen.iter().any(|s| s == p), "{p} not received: {seen:?}");
    }
    // Counted per call: connect() 2 allowed + 4 denied, sendto() 5 allowed
    // + 3 denied; the outsider's calls are not counted.
    assert_eq!(udp_decisions(sw, "udp", "allow"), 7.0);
    assert_eq!(udp_decisions(sw, "udp", "deny"), 7.0);
    assert_eq!(udp_decisions(sw, "udp", "quic"), 0.0);
}

// ---------------------------------------------------------------------------
// 2. Echo replies on an allowed flow.

#[test]
fn udp_echo_replies_on_an_allowed_flow_come_back() {
    let d = Doors::start(
        "echo",
        Spec::new(
            &["10.77.1.10:7", "[fd77:1::10]:7"],
            &[r#"{ to: ["10.77.1.10/32", "fd77:1::10/128"], ports: [7], protocol: udp }"#],
        ),
    );
    let (topo, cg, sw) = (&d.topo, &d.cg, &d.sw);
    // 100 datagrams of 8 to 8,000 bytes (larger ones leave as IP
    // fragments) per family, each echoed back byte for byte: nothing of an
    // allowed flow is dropped on the way out, and its replies come in.
    expect(
        &topo.pod,
        Some(cg),
        &[
            ("flow 10.77.1.10 7 100", "echoed 100 of 100"),
            ("flow fd77:1::10 7 100", "echoed 100 of 100"),
            ("sendto once 10.77.1.10 7", "reply once from 10.77.1.10"),
        ],
    );
    assert_eq!(udp_decisions(sw, "echo", "allow"), 3.0);
    assert_eq!(udp_decisions(sw, "echo", "deny"), 0.0);
    assert_nothing_dropped(sw, "echo");
}

// ---------------------------------------------------------------------------
// 3. DNS through the allowed resolver only.

#[test]
fn dns_through_the_allowed_resolver_only() {
    let d = Doors::start(
        "dns",
        Spec {
            origin_addrs: &["10.77.1.53/24", "10.77.1.54/24"],
            ..Spec::new(
                &[],
                &[r#"{ to: ["10.77.1.53/32"], ports: [53], protocol: any }"#],
            )
        },
    );
    let (topo, cg, sw) = (&d.topo, &d.cg, &d.sw);
    let _allowed = dnsmasq(&topo.origin, "10.77.1.53");
    let _other = dnsmasq(&topo.origin, "10.77.1.54");
    let lookups = |cg: Option<&TestCgroup>, queries: &[[&str; 2]]| {
        let ops: Vec<String> = queries
            .iter()
            .map(|[server, transport]| format!("dns {server} origin.test {transport}"))
            .collect();
        clients(&topo.pod, cg, &ops)
    };
    let both = [["10.77.1.53", "udp"], ["10.77.1.54", "udp"]];

    // Both resolvers answer a process outside the cgroup, over UDP and TCP
    // (the control; also the wait for dnsmasq to listen).
    let deadline = Instant::now() + patience(Duration::from_secs(10));
    loop {
        let answers = lookups(None, &both);
        if answers == ["A 10.77.1.10", "A 10.77.1.10"] {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "dnsmasq does not answer: {answers:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        lookups(None, &[["10.77.1.53", "tcp"], ["10.77.1.54", "tcp"]]),
        ["A 10.77.1.10", "A 10.77.1.10"]
    );

    // The workload resolves through .53 only; protocol: any allows TCP too.
    let results = lookups(
        Some(cg),
        &[
            ["10.77.1.53", "udp"],
            ["10.77.1.53", "tcp"],
            ["10.77.1.54", "udp"],
            ["10.77.1.54", "tcp"],
        ],
    );
    assert_eq!(
        results,
        [
            "A 10.77.1.10",
            "A 10.77.1.10",
            "sendto EPERM",
            "connect EPERM"
        ]
    );

    assert_eq!(udp_decisions(sw, "dns", "allow"), 1.0);
    assert_eq!(udp_decisions(sw, "dns", "deny"), 1.0);
    assert_eq!(
        sw.metric(r#"sockwarden_connect_decisions_total{policy="dns",verdict="allowed"}"#),
        1.0
    );
    assert_eq!(
        sw.metric(r#"sockwarden_connect_denied_total{policy="dns"}"#),
        1.0
    );
}

// ---------------------------------------------------------------------------
// 4. QUIC-style UDP to a port with HTTP rules.

/// Debian 12's curl (7.88) is built without HTTP/3 (no ngtcp2 or quiche),
/// so the QUIC client here is a plain UDP sender to port 443: what a QUIC
/// client's first Initial packet is to the kernel.
#[test]
fn quic_style_udp_to_an_http_port_is_refused() {
    let d = Doors::start(
        "quic",
        Spec::new(
            &["10.77.1.10:443", "10.77.1.10:4433"],
            &[
                r#"{ to: ["10.77.1.0/24"], ports: [443], http: [{ method: GET }] }"#,
                r#"{ to: ["10.77.1.0/24"], protocol: udp }"#,
            ],
        ),
    );
    let (topo, cg, echo, sw) = (&d.topo, &d.cg, &d.echo, &d.sw);
    let pod = &topo.pod;

    // UDP to the http port is refused though a UDP rule covers it; another
    // port passes.
    expect(
        pod,
        Some(cg),
        &[
            ("udp 10.77.1.10 443 quic-connect", "connect EPERM"),
            ("sendto quic-sendto 10.77.1.10 443", "sendto EPERM"),
            (
                "udp 10.77.1.10 4433 other-port",
                "reply other-port from 10.77.1.10",
            ),
        ],
    );
    // The fallback a QUIC client makes: TCP to 443 is redirected to the proxy.
    assert_eq!(tcp_connect(pod, Some(cg), "10.77.1.10", 443), "ok");
    // Control: outside the cgroup UDP 443 gets through.
    assert_eq!(
        client(pod, None, "udp 10.77.1.10 443 outsider"),
        "reply outsider from 10.77.1.10"
    );

    let seen = echo.seen();
    assert!(!seen.iter().any(|p| p.starts_with("quic")), "{seen:?}");
    assert_eq!(udp_decisions(sw, "quic", "quic"), 2.0);
    assert_eq!(udp_decisions(sw, "quic", "allow"), 1.0);
    assert_eq!(udp_decisions(sw, "quic", "deny"), 0.0);
    assert_eq!(
        sw.metric(r#"sockwarden_connect_decisions_total{policy="quic",verdict="redirected"}"#),
        1.0
    );
}

// ---------------------------------------------------------------------------
// 5. Raw and ICMP sockets.

#[test]
fn raw_sockets_refused_and_icmp_only_with_icmp_true() {
    let (tag, topo, pinger) = bare_scene("raw", "pinger");
    let plain = TestCgroup::new(&format!("/sockwarden-test-{tag}/plain"));
    // Ping sockets for every group (root's included) in the pod namespace.
    topo.pod.sysctl("net.ipv4.ping_group_range", "0 2147483647");
    let body = config(&[
        policy("pinger", &pinger, &["icmp: true"], &[PORT_80]),
        policy("plain", &plain, &[], &[PORT_80]),
    ]);
    let sw = Sockwarden::start(&topo.node, &tag, &body);
    assert_door_series_at_zero(&sw, "pinger");
    assert_door_series_at_zero(&sw, "plain");
    let pod = &topo.pod;

    // One list of attempts, made outside any policy cgroup (the control),
    // under icmp: true, and without it:
    // - an echo request from a raw and from a ping socket, IPv4 and IPv6;
    // - raw TCP sockets, IPv4 and IPv6;
    // - other inet protocols: UDP-Lite and SCTP (where the kernel has them,
    //   as the control shows);
    // - TCP, UDP and MPTCP sockets, created as they would be outside.
    let echoes = [
        ("raw", "10.77.1.10", "8"),
        ("ping", "10.77.1.10", "8"),
        ("raw", "fd77:1::10", "128"),
        ("ping", "fd77:1::10", "128"),
    ];
    let raw_tcp = [["4", "raw", "6"], ["6", "raw", "6"]];
    let others = [["4", "dgram", "136"], ["4", "stream", "132"]];
    let normal = [
        ["4", "stream", "6"],
        ["6", "stream", "6"],
        ["4", "dgram", "17"],
        ["6", "dgram", "17"],
        ["4", "stream", "262"],
    ];
    let mut ops: Vec<String> = echoes
        .iter()
        .map(|(kind, host, request)| format!("icmp {kind} {host} {request}"))
        .collect();
    for [family, kind, proto] in raw_tcp.iter().chain(&others).chain(&normal) {
        ops.push(format!("socket {family} {kind} {proto}"));
    }
    let outside = clients(pod, None, &ops);
    let icmp = clients(pod, Some(&pinger), &ops);
    let no_icmp = clients(pod, Some(&plain), &ops);
    let (raw_at, others_at, normal_at) = (
        echoes.len(),
        echoes.len() + raw_tcp.len(),
        echoes.len() + raw_tcp.len() + others.len(),
    );

    for (i, (kind, host, _)) in echoes.iter().enumerate() {
        let reply = format!("reply from {host}");
        assert_eq!(outside[i], reply, "outsider, {kind} {host}");
        assert_eq!(icmp[i], reply, "icmp: true, {kind} {host}");
        assert_eq!(no_icmp[i], "socket EPERM", "no icmp: true, {kind} {host}");
    }
    for i in raw_at..others_at {
        assert_eq!(outside[i], "ok", "outsider, {:?}", ops[i]);
        assert_eq!(icmp[i], "EPERM", "icmp: true, {:?}", ops[i]);
        assert_eq!(no_icmp[i], "EPERM", "no icmp: true, {:?}", ops[i]);
    }
    let available = outside[others_at..normal_at]
        .iter()
        .filter(|r| *r == "ok")
        .count();
    assert!(
        available >= 1,
        "this kernel offers neither UDP-Lite nor SCTP: no other inet protocol to refuse: {:?}",
        &outside[others_at..normal_at]
    );
    for i in others_at..ops.len() {
        let want = if i < normal_at && outside[i] == "ok" {
            "EPERM"
        } else {
            &outside[i]
        };
        assert_eq!(icmp[i], want, "icmp: true, {:?}", ops[i]);
        assert_eq!(no_icmp[i], want, "no icmp: true, {:?}", ops[i]);
    }
    // MPTCP (262, the last) may be compiled out; the others exist everywhere.
    for i in normal_at..ops.len() - 1 {
        assert_eq!(outside[i], "ok", "{:?}", ops[i]);
    }

    let available = available as f64;
    assert_eq!(sockets_refused(&sw, "pinger", "raw"), 2.0);
    assert_eq!(sockets_refused(&sw, "pinger", "icmp"), 0.0);
    assert_eq!(sockets_refused(&sw, "pinger", "protocol"), available);
    assert_eq!(sockets_refused(&sw, "plain", "icmp"), 4.0);
    assert_eq!(sockets_refused(&sw, "plain", "raw"), 2.0);
    assert_eq!(sockets_refused(&sw, "plain", "protocol"), available);
}

// ---------------------------------------------------------------------------
// 6. A hand-made TCP SYN from a raw ICMP socket.

/// The policy of the forged-SYN tests: ICMP allowed, TCP only to port 80;
/// `testing` is a `testing:` section or "".
fn forger_spec(testing: &str) -> Spec<'_> {
    Spec {
        testing,
        extra: &["icmp: true"],
        egress: &[PORT_80],
        ..Spec::default()
    }
}

#[test]
fn a_forged_syn_from_a_raw_icmp_socket_is_dropped_by_the_wall() {
    let d = Doors::start("forger", forger_spec(""));
    let (topo, cg, sw) = (&d.topo, &d.cg, &d.sw);
    assert!(
        tcp_connect(&topo.pod, Some(cg), "10.77.1.10", 9).contains("Operation not permitted"),
        "no rule allows TCP to port 9"
    );

    // Control: the same packet from outside the cgroup reaches the origin
    // (the sniffer and the forging work).
    let (sent, seen) = forge_syn(topo, None, 9, 0x5357_0001);
    assert_eq!(sent, "sent");
    assert_eq!(seen.as_deref(), Some("syn from 10.77.2.2"));

    // The wall drops it on the way out, and the sender hears of it.
    let (sent, seen) = forge_syn(topo, Some(cg), 9, 0x5357_0002);
    assert_eq!(seen, None, "the forged SYN reached the origin ({sent})");
    assert_eq!(sent, "sendto EPERM");
    assert!(egress_dropped(sw, "forger", "forged") >= 1.0);

    // ICMP other than an echo request does not pass the wall either; the
    // echo the policy allows does.
    expect(
        &topo.pod,
        Some(cg),
        &[
            ("icmp raw 10.77.1.10 13", "sendto EPERM"),
            ("icmp raw 10.77.1.10 8", "reply from 10.77.1.10"),
        ],
    );
    assert!(egress_dropped(sw, "forger", "icmp") >= 1.0);
}

#[test]
fn a_forged_syn_arrives_when_the_wall_is_not_attached() {
    let d = Doors::start(
        "forger",
        forger_spec("testing:\n  skip_egress_wall: true\n"),
    );
    let (topo, cg, sw) = (&d.topo, &d.cg, &d.sw);
    // The socket() hook alone lets the raw ICMP socket be made; only the
    // wall stands between it and a hand-made TCP packet.
    let (sent, seen) = forge_syn(topo, Some(cg), 9, 0x5357_0003);
    assert_eq!(sent, "sent");
    assert_eq!(seen.as_deref(), Some("syn from 10.77.2.2"));
    assert_eq!(egress_dropped(sw, "forger", "forged"), 0.0);
}

// ---------------------------------------------------------------------------
// 7. Processes outside policy cgroups.

#[test]
fn processes_outside_policy_cgroups_are_untouched() {
    let d = Doors::start(
        "pods",
        Spec::new(&["10.77.1.10:9999", "[fd77:1::10]:9999"], &[PORT_80]),
    );
    let (topo, cg, sw) = (&d.topo, &d.cg, &d.sw);
    let pod = &topo.pod;

    // The policy holds for its cgroup in this namespace...
    expect(
        pod,
        Some(cg),
        &[
            ("udp 10.77.1.10 9999 w", "connect EPERM"),
            ("socket 4 raw 6", "EPERM"),
            ("icmp raw 10.77.1.10 8", "socket EPERM"),
        ],
    );
    // ... and a process of the same namespace outside it goes anywhere.
    expect(
        pod,
        None,
        &[
            ("udp 10.77.1.10 9999 o4", "reply o4 from 10.77.1.10"),
            ("sendto o6 fd77:1::10 9999", "reply o6 from fd77:1::10"),
            ("socket 4 raw 6", "ok"),
            ("socket 6 raw 6", "ok"),
            ("icmp raw 10.77.1.10 8", "reply from 10.77.1.10"),
            ("icmp raw 10.77.1.10 13", "sent"),
        ],
    );
    let (sent, seen) = forge_syn(topo, None, 9, 0x5357_0004);
    assert_eq!(sent, "sent");
    assert_eq!(seen.as_deref(), Some("syn from 10.77.2.2"));

    // Only the workload's calls were counted; nothing was dropped.
    assert_eq!(udp_decisions(sw, "pods", "deny"), 1.0);
    assert_eq!(udp_decisions(sw, "pods", "allow"), 0.0);
    assert_eq!(sockets_refused(sw, "pods", "raw"), 1.0);
    assert_eq!(sockets_refused(sw, "pods", "icmp"), 1.0);
    assert_nothing_dropped(sw, "pods");
}

// ---------------------------------------------------------------------------
// 8. AF_PACKET.

/// The active LSMs (/sys/kernel/security/lsm). securityfs is mounted for
/// the read if it is not, and unmounted again.
fn active_lsms() -> Vec<String> {
    let dir = Path::new("/sys/kernel/security");
    let file = dir.join("lsm");
    let mounted_here = !file.exists();
    if mounted_here {
        run_checked(
            Command::new("mount")
                .args(["-t", "securityfs", "securityfs"])
                .arg(dir),
        );
    }
    let text = std::fs::read_to_string(&file);
    if mounted_here {
        let _ = Command::new("umount").arg(dir).output();
    }
    let text = text.unwrap_or_else(|e| panic!("read {}: {e}", file.display()));
    text.trim().split(',').map(str::to_string).collect()
}

/// Whether this kernel loads BPF LSM programs, as bpftool's own probe
/// finds (`bpf` may be listed as active while loading is refused: on the
/// development host, loading any LSM program fails with EPERM).
fn lsm_programs_load() -> bool {
    let o = Command::new("bpftool")
        .args(["-j", "feature", "probe", "kernel"])
        .output()
        .expect("run bpftool feature probe");
    let v: serde_json::Value = serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("bpftool feature probe JSON: {e}: {}", stdout(&o)));
    v["program_types"]["have_lsm_prog_type"] == true
}

#[test]
fn af_packet_sockets_from_policy_cgroups() {
    require_root();
    let lsms = active_lsms();
    let lsm_refuses = lsms.iter().any(|m| m == "bpf") && lsm_programs_load();
    let d = Doors::start("packet", Spec::new(&[], &[PORT_80]));
    let (topo, cg, sw) = (&d.topo, &d.cg, &d.sw);
    let packet = "socket packet raw 0";
    // Control: outside the cgroup AF_PACKET works.
    assert_eq!(client(&topo.pod, None, packet), "ok");

    if lsm_refuses {
        assert_eq!(
            client(&topo.pod, Some(cg), packet),
            "EPERM",
            "the BPF LSM is active here (lsm: {}) and loads programs",
            lsms.join(",")
        );
        assert_eq!(sockets_refused(sw, "packet", "packet"), 1.0);
        return;
    }
    // Nothing can refuse AF_PACKET here: the door is open...
    assert_eq!(client(&topo.pod, Some(cg), packet), "ok");
    assert_eq!(sockets_refused(sw, "packet", "packet"), 0.0);
    // ... and `sockwarden status` names the process in the policy cgroup
    // that could use it (root: it holds CAP_NET_RAW).
    let mut sleeper = command_in(Some(&topo.pod.path()), Some(cg.path()), "sleep");
    sleeper.arg("30");
    let sleeper = ProcessGroup::spawn(sleeper);
    let o = Command::new(BIN)
        .args(["status", "--config"])
        .arg(sw.dir.join("sockwarden.yaml"))
        .output()
        .expect("run sockwarden status");
    let report = format!("{}{}", stdout(&o), String::from_utf8_lossy(&o.stderr));
    let pid = sleeper.0.id().to_string();
    assert!(
        report.lines().any(|l| l.contains("CAP_NET_RAW")
            && l.split(|c: char| !c.is_ascii_digit()).any(|n| n == pid)),
        "no CAP_NET_RAW warning naming pid {pid} (sleep 30 in the policy cgroup):\n{report}"
    );
}
