//! Kernel tier: the sockmap engine through the real binary. Workloads in
//! the enforced cgroup (one node-local, in the proxy's namespace, one in a
//! pod namespace) run the SHA-256 stress client as child processes of this
//! test binary (the in-cgroup client must be its own process), with sk_msg
//! moving their bytes into the proxy's sockets; then aborts mid-body leave
//! no socket and no map entry behind.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};

use crate::common::origin::OriginConfig;
use crate::common::stress::{self, StressOrigin};
use crate::common::wait_for;
use crate::netns::{listener_in, Netns};
use crate::support::command_in;
use crate::sw::{
    bare_scene, curl, curl_cut_short, established, map_entries, origin_at, scene, socket_memory,
    stdout, workload, Sockwarden,
};

/// The stress origin, as the workloads address it (in the origin namespace).
const ORIGIN: &str = "10.77.1.10:8080";

/// Set in the environment of the child that runs [`stress_client_child`].
const CHILD_ENV: &str = "SOCKWARDEN_STRESS_CHILD";

fn config(cgroup: &str) -> String {
    format!(
        "forwarding:\n  engine: sockmap\n\
         policies:\n  - name: stress\n    cgroup: {cgroup}\n    egress:\n\
         \x20     - to: [\"10.77.1.0/24\"]\n        ports: [8080]\n        http:\n\
         \x20         - method: \"GET|POST\"\n            upgrade: [echo]\n"
    )
}

/// Runs `clients` stress clients (seeds from `seed`, 5 connections of 100
/// exchanges each) in `netns` and the test cgroup, as a child process.
fn stress_child(netns: &Netns, cgroup: &Path, clients: u64, seed: u64) -> std::process::Child {
    let exe = std::env::current_exe().expect("test binary path");
    command_in(
        Some(&netns.path()),
        Some(cgroup),
        exe.to_str().expect("utf-8"),
    )
    .args([
        "--exact",
        "sockmap::stress_client_child",
        "--ignored",
        "--nocapture",
    ])
    .env(CHILD_ENV, format!("{ORIGIN} {clients} {seed}"))
    .stdout(std::process::Stdio::piped())
    .stderr(std::process::Stdio::piped())
    .spawn()
    .expect("spawn the in-cgroup stress client")
}

/// The child side of [`sockmap_stress_is_byte_exact`]: not a test of its
/// own (it only runs with the parameters that test passes).
#[test]
#[ignore = "run by sockmap_stress_is_byte_exact inside the enforced cgroup"]
fn stress_client_child() {
    let params = std::env::var(CHILD_ENV).unwrap_or_else(|_| {
        panic!("{CHILD_ENV} is not set: this runs only as a child of sockmap_stress_is_byte_exact")
    });
    let mut it = params.split(' ');
    let origin: SocketAddr = it.next().and_then(|s| s.parse().ok()).expect("origin");
    let clients: u64 = it.next().and_then(|s| s.parse().ok()).expect("clients");
    let seed: u64 = it.next().and_then(|s| s.parse().ok()).expect("seed");
    let verified = stress::clients(origin, clients, seed);
    println!("verified {verified}");
}

fn verified(out: &Output) -> usize {
    assert!(
        out.status.success(),
        "stress child failed: {}\n{}",
        stdout(out),
        String::from_utf8_lossy(&out.stderr)
    );
    stdout(out)
        .lines()
        .find_map(|l| l.strip_prefix("verified ")?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no count in {}", stdout(out)))
}

/// 2,000 SHA-256-verified exchanges (sizes 0 B to 64 MiB, uploads and
/// downloads, random splits, pipelining, keep-alive) from a node-local and
/// a pod workload at once, with sk_msg carrying the workloads' bytes.
#[test]
fn sockmap_stress_is_byte_exact() {
    let (tag, topo, cg) = bare_scene("smstress", "pod");
    let origin = StressOrigin::serve(listener_in(&topo.origin, ORIGIN));
    assert_eq!(origin.addr().to_string(), ORIGIN);
    let sw = Sockwarden::start(&topo.node, &tag, &config(cg.rel()));
    let started = Instant::now();
    let local = stress_child(&topo.node, cg.path(), 2, 1);
    let pod = stress_child(&topo.pod, cg.path(), 2, 7);
    let local = local.wait_with_output().expect("node-local child");
    let pod = pod.wait_with_output().expect("pod child");
    let total = verified(&local) + verified(&pod);
    assert_eq!(total, 2_000);
    let m = |s: &str| sw.metric(s);
    let redirected = m(r#"sockwarden_sockmap_bytes_total{path="redirect"}"#);
    let tcp = m(r#"sockwarden_sockmap_bytes_total{path="tcp"}"#);
    let first_redirect = m(r#"sockwarden_sockmap_connections_total{first_path="redirect"}"#);
    let first_tcp = m(r#"sockwarden_sockmap_connections_total{first_path="tcp"}"#);
    let limit = m(r#"sockwarden_sockmap_switches_to_tcp_total{reason="unread_limit"}"#);
    let spliced = m(r#"sockwarden_forwarded_bytes_total{direction="downstream",engine="splice"}"#);
    eprintln!(
        "sockmap: 2,000 verified exchanges in {:?}; workload bytes {redirected} redirected, \
         {tcp} through TCP; connections starting redirected {first_redirect}, through TCP \
         {first_tcp}; {limit} turned to TCP at the unread limit; {spliced} response bytes spliced",
        started.elapsed()
    );
    // 20 connections (2 clients of 5 connections per child).
    assert_eq!(first_redirect + first_tcp, 20.0, "every connection linked");
    assert!(
        first_redirect >= 15.0,
        "most connections redirect from the start"
    );
    assert!(redirected > 0.0);
    // Uploads of up to 64 MiB outrun the 256 KiB unread limit: the switch to
    // TCP happened, and the stress above proved it kept bytes in order.
    assert!(limit > 0.0, "no connection reached the unread limit");
    assert!(spliced > 0.0, "response bodies are spliced under sockmap");
}

/// IPv4 and IPv6, from the pod and from the node itself: every connection
/// is linked and redirected from its first message, and keep-alive
/// requests on it keep the redirect.
#[test]
fn sockmap_links_ipv4_and_ipv6_workloads() {
    let (tag, topo, origin4, cg) = scene("smv6", "pod", OriginConfig::default());
    let origin6 = origin_at(&topo, "[fd77:1::10]:80", OriginConfig::default());
    let policy = format!(
        "forwarding:\n  engine: sockmap\n\
         policies:\n  - name: v6\n    cgroup: {}\n    egress:\n\
         \x20     - to: [\"10.77.1.0/24\", \"fd77:1::/64\"]\n        ports: [80]\n        http:\n\
         \x20         - method: GET\n",
        cg.rel()
    );
    let sw = Sockwarden::start(&topo.node, &tag, &policy);
    let mut connections = 0.0;
    for ns in [&topo.pod, &topo.node] {
        for base in ["http://10.77.1.10", "http://[fd77:1::10]"] {
            // Three requests on one connection.
            let urls: Vec<String> = (1..=3)
                .map(|i| format!("{base}/data/{}", i * 1000))
                .collect();
            let mut args = vec!["-w", "%{http_code} "];
            for u in &urls {
                args.extend_from_slice(&["-o", "/dev/null", u.as_str()]);
            }
            let out = curl(ns, Some(&cg), &args);
            assert_eq!(stdout(&out), "200 200 200 ", "{base} from {}", ns.name());
            connections += 1.0;
        }
    }
    assert_eq!(origin4.requests(), 6);
    assert_eq!(origin6.requests(), 6);
    let m = |s: &str| sw.metric(s);
    assert_eq!(
        m(r#"sockwarden_sockmap_connections_total{first_path="redirect"}"#),
        connections,
        "every connection redirected from its first message"
    );
    assert_eq!(m(r#"sockwarden_sockmap_bytes_total{path="tcp"}"#), 0.0);
    assert!(m(r#"sockwarden_sockmap_messages_total{path="redirect"}"#) >= 12.0);
    assert_eq!(
        m(r#"sockwarden_sockmap_linked_sockets_total{side="proxy"}"#),
        connections
    );
}

/// An upload to an origin that never reads: once 256 KiB redirected bytes
/// are unread the workload's socket turns to TCP, whose window stops it, so
/// the proxy's socket queues stay bounded instead of holding the upload.
#[test]
fn sockmap_upload_to_a_stalled_origin_stays_bounded() {
    let (tag, topo, cg) = bare_scene("smbound", "pod");
    // Linux's default buffer maxima (this machine's tcp_rmem max is 32 MiB).
    for ns in [&topo.origin, &topo.node, &topo.pod] {
        ns.sysctl("net.ipv4.tcp_rmem", "4096 131072 6291456");
        ns.sysctl("net.ipv4.tcp_wmem", "4096 16384 4194304");
    }
    // Accepts, then never reads.
    let listener =
        crate::netns::in_netns(&topo.origin.path(), || std::net::TcpListener::bind(ORIGIN))
            .expect("bind the stalled origin");
    let held = std::thread::spawn(move || {
        let accepted = listener.accept();
        std::thread::sleep(Duration::from_secs(6));
        drop(accepted);
    });
    let sw = Sockwarden::start(&topo.node, &tag, &config(cg.rel()));
    let mut client = command_in(Some(&topo.pod.path()), Some(cg.path()), "bash")
        .args([
            "-c",
            &format!(
                "head -c 67108864 /dev/zero | curl -sS --max-time 4 -H 'Expect:' \
                 --data-binary @- -o /dev/null http://{ORIGIN}/data/upload"
            ),
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn the uploader");
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut peak = 0;
    while Instant::now() < deadline {
        peak = peak.max(socket_memory(&topo.node, sw.pid()));
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = client.wait();
    let _ = held.join();
    let limit = sw.metric(r#"sockwarden_sockmap_switches_to_tcp_total{reason="unread_limit"}"#);
    let redirected = sw.metric(r#"sockwarden_sockmap_bytes_total{path="redirect"}"#);
    eprintln!(
        "stalled upload: proxy socket queues peaked at {:.1} MiB; {redirected} bytes redirected",
        peak as f64 / 1048576.0
    );
    assert_eq!(limit, 1.0, "the upload turned to TCP at the unread limit");
    // Two sockets' buffers (6 MiB receive, 4 MiB send maxima) and 256 KiB.
    assert!(peak < 11 << 20, "proxy socket queues reached {peak} bytes");
}

/// A 101 tunnel from a linked workload: 1 MiB echoed intact (past the
/// 256 KiB unread limit, so through the switch to TCP as well).
#[test]
fn sockmap_tunnel_after_101_is_byte_exact() {
    let (tag, topo, cg) = bare_scene("smtunnel", "pod");
    let _origin = StressOrigin::serve(listener_in(&topo.origin, ORIGIN));
    let sw = Sockwarden::start(&topo.node, &tag, &config(cg.rel()));
    let (host, port) = ORIGIN.split_once(':').expect("host:port");
    let script = format!(
        r#"
import hashlib, socket, sys, threading
s = socket.create_connection(("{host}", {port}), timeout=30)
s.sendall(b"GET /data/echo HTTP/1.1\r\nHost: o\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n")
buf = b""
while b"\r\n\r\n" not in buf:
    d = s.recv(4096)
    if not d:
        sys.exit("EOF before the response head")
    buf += d
head, rest = buf.split(b"\r\n\r\n", 1)
if not head.startswith(b"HTTP/1.1 101"):
    sys.exit(head.decode())
data = bytes(i * 7 % 251 for i in range(1 << 20))
def send():
    for i in range(0, len(data), 1000):
        s.sendall(data[i:i + 1000])
    s.shutdown(socket.SHUT_WR)
t = threading.Thread(target=send)
t.start()
got = bytearray(rest)
while True:
    d = s.recv(65536)
    if not d:
        break
    got += d
t.join()
print(len(got), hashlib.sha256(got).digest() == hashlib.sha256(data).digest())
"#
    );
    let out = workload(&topo.pod, &cg, "python3", &["-c", &script]);
    assert_eq!(
        stdout(&out).trim(),
        "1048576 True",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(sw.metric(r#"sockwarden_sockmap_bytes_total{path="redirect"}"#) > 0.0);
    assert_eq!(
        sw.metric(r#"sockwarden_sockmap_switches_to_tcp_total{reason="unread_limit"}"#),
        1.0,
        "the tunnel's bytes came both redirected and through TCP"
    );
    let log = sw.access_log();
    assert_eq!(log.len(), 1, "{log:?}");
    assert_eq!(log[0]["status"], 101, "{log:?}");
}

/// Aborts mid-upload and mid-download under sockmap: flags DC, both sockets
/// closed, and the socket maps and the consumed-bytes map emptied.
#[test]
fn sockmap_aborts_leave_nothing_behind() {
    let (tag, topo, cg) = bare_scene("smabort", "pod");
    let _origin = StressOrigin::serve(listener_in(&topo.origin, ORIGIN));
    let sw = Sockwarden::start(&topo.node, &tag, &config(cg.rel()));
    let url_up = format!("http://{ORIGIN}/data/upload");
    let url_down = format!("http://{ORIGIN}/data/blob/3/67108864/c");
    // Leaves mid-upload: 64 MiB offered at 1 MB/s, given up after 0.5 s.
    let up = workload(
        &topo.pod,
        &cg,
        "bash",
        &[
            "-c",
            &format!(
                "head -c 67108864 /dev/zero | curl -sS --limit-rate 1M --max-time 0.5 \
                 -H 'Content-Length: 67108864' --data-binary @- -o /dev/null {url_up}"
            ),
        ],
    );
    assert!(!up.status.success(), "the upload should have been cut");
    // Leaves mid-download, from the node-local workload.
    let down = curl_cut_short(&topo.node, &cg, &url_down);
    assert!(!down.status.success(), "the download should have been cut");
    let leftovers = || {
        (
            established(&topo.node),
            map_entries(&sw.pin, "sk_workloads"),
            map_entries(&sw.pin, "sk_proxy"),
            map_entries(&sw.pin, "sk_consumed"),
            map_entries(&sw.pin, "orig_dsts"),
        )
    };
    assert_eq!(
        wait_for(Duration::from_secs(5), leftovers, |l| *l == (0, 0, 0, 0, 0)),
        (0, 0, 0, 0, 0),
        "(established sockets, sk_workloads, sk_proxy, sk_consumed, orig_dsts)"
    );
    let log = sw.access_log();
    assert_eq!(log.len(), 2, "{log:?}");
    for line in &log {
        assert!(
            line["flags"]
                .as_array()
                .is_some_and(|f| f.iter().any(|x| x == "DC")),
            "{line}"
        );
    }
    assert!(
        sw.metric(r#"sockwarden_sockmap_linked_sockets_total{side="proxy"}"#) >= 2.0,
        "both connections were linked"
    );
}
