//! Kernel tier: a tenant flooding connect() against its policy's
//! `max_connections`, and the kernel state a redirect leaves behind (none,
//! once its socket is closed). Root is required; without it these tests
//! fail, they never skip. Each test builds its own namespaces, cgroups and
//! pin path and removes them even when it fails.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, ChildStdout, Stdio};
use std::time::{Duration, Instant};

use crate::cgroup::TestCgroup;
use crate::common::origin::OriginConfig;
use crate::common::patience;
use crate::netns::Netns;
use crate::support::command_in;
use crate::sw::{curl_status, map_entries, scene, tcp_connect, Sockwarden};

/// A workload that opens connections to `HOST PORT` and holds them.
///
/// Phase 1 opens until HOLD are held (or as many attempts failed), then
/// prints a JSON line. Phase 2 keeps calling connect() as fast as it can,
/// closing each failed socket at once and holding any that succeeds, until
/// a line arrives on stdin, HAMMER attempts were made or 60 s passed, and
/// prints another. It then holds everything until stdin closes, closes every
/// socket, prints "closed" and exits. With MODE "nb" connects are
/// non-blocking (EINPROGRESS counts as held). Errors are counted by errno
/// name.
const FLOODER: &str = r#"
import errno, json, select, socket, sys, time
host, port, hold, hammer, mode = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
held, errors = [], {}
def attempt():
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if mode == "nb":
        s.setblocking(False)
    try:
        s.connect((host, port))
    except BlockingIOError:
        pass
    except OSError as e:
        s.close()
        name = errno.errorcode.get(e.errno, str(e.errno))
        errors[name] = errors.get(name, 0) + 1
        return
    held.append(s)
def report():
    print(json.dumps({"held": len(held), "errors": errors}), flush=True)
attempts = 0
while len(held) < hold and attempts < 2 * hold:
    attempt()
    attempts += 1
report()
deadline, attempts = time.monotonic() + 60, 0
while attempts < hammer and time.monotonic() < deadline:
    if select.select([sys.stdin], [], [], 0)[0]:
        sys.stdin.readline()
        break
    attempt()
    attempts += 1
report()
sys.stdin.read()
for s in held:
    s.close()
print("closed", flush=True)
"#;

/// A running [`FLOODER`] in a namespace and cgroup.
struct Flooder {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
}

/// One of the flooder's reports.
#[derive(Debug)]
struct Report {
    held: u64,
    errors: serde_json::Map<String, serde_json::Value>,
}

impl Report {
    fn errors(&self, name: &str) -> u64 {
        self.errors.get(name).and_then(|v| v.as_u64()).unwrap_or(0)
    }

    fn total_errors(&self) -> u64 {
        self.errors.values().filter_map(|v| v.as_u64()).sum()
    }
}

impl Flooder {
    fn spawn(ns: &Netns, cg: &TestCgroup, hold: u32, hammer: u32, mode: &str) -> Flooder {
        let mut child = command_in(Some(&ns.path()), Some(cg.path()), "python3")
            .args(["-c", FLOODER, "10.77.1.10", "80"])
            .args([hold.to_string(), hammer.to_string(), mode.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn the flooder");
        let stdin = child.stdin.take();
        let stdout = BufReader::new(child.stdout.take().expect("flooder stdout"));
        Flooder {
            child,
            stdin,
            stdout,
        }
    }

    /// The next line; the flooder bounds every phase in time, so this returns.
    fn line(&mut self) -> String {
        let mut line = String::new();
        self.stdout
            .read_line(&mut line)
            .expect("read flooder output");
        assert!(!line.is_empty(), "the flooder exited early");
        line
    }

    fn report(&mut self) -> Report {
        let line = self.line();
        let v: serde_json::Value =
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("flooder said {line:?}: {e}"));
        Report {
            held: v["held"].as_u64().expect("held"),
            errors: v["errors"].as_object().cloned().unwrap_or_default(),
        }
    }

    /// Ends phase 2.
    fn stop_hammering(&mut self) {
        let stdin = self.stdin.as_mut().expect("stdin open");
        stdin.write_all(b"stop\n").expect("write to the flooder");
        stdin.flush().expect("flush to the flooder");
    }

    /// Closes every held socket and waits for the flooder to exit.
    fn close_all(&mut self) {
        drop(self.stdin.take());
        assert_eq!(self.line(), "closed\n");
        let deadline = Instant::now() + patience(Duration::from_secs(10));
        while self.child.try_wait().expect("wait flooder").is_none() {
            assert!(Instant::now() < deadline, "the flooder did not exit");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Flooder {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A policy allowing GET /data/* to the origin, limited to `limit`
/// redirected connections (none: the default share).
fn policy(name: &str, cgroup: &str, limit: Option<u32>) -> String {
    let limit = limit.map_or(String::new(), |l| format!("    max_connections: {l}\n"));
    format!(
        "  - name: {name}\n    cgroup: {cgroup}\n{limit}    egress:\n\
         \x20     - to: [\"10.77.1.0/24\", \"fd77:1::/64\"]\n        ports: [80]\n        http:\n\
         \x20         - method: GET\n            path: \"/data/.*\"\n"
    )
}

/// Waits until `series` reads `want` (the kernel's counts change when
/// sockets are released, which the workload's exit may still be doing).
fn wait_metric(sw: &Sockwarden, series: &str, want: f64) {
    let deadline = Instant::now() + patience(Duration::from_secs(5));
    loop {
        let got = sw.metric(series);
        if got == want {
            return;
        }
        assert!(Instant::now() < deadline, "{series} is {got}, not {want}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn orig_dsts(pin: &Path) -> usize {
    map_entries(pin, "orig_dsts")
}

#[test]
fn a_flooding_tenant_is_refused_past_its_limit_and_the_other_is_served() {
    const LIMIT: u32 = 40;
    const VICTIM_REQUESTS: usize = 20;
    let (tag, topo, origin, flood_cg) = scene("flood", "flood", OriginConfig::default());
    let calm_cg = TestCgroup::new(&format!("/sockwarden-test-{tag}/calm"));
    let body = format!(
        "policies:\n{}{}",
        policy("flood", flood_cg.rel(), Some(LIMIT)),
        policy("calm", calm_cg.rel(), None)
    );
    let sw = Sockwarden::start(&topo.node, &tag, &body);
    let m = |s: &str| sw.metric(s);
    assert_eq!(
        m(r#"sockwarden_redirected_connections_limit{policy="flood"}"#),
        f64::from(LIMIT)
    );
    assert_eq!(
        m(r#"sockwarden_redirected_connections_limit{policy="calm"}"#),
        65536.0 - f64::from(LIMIT),
        "the default is what the explicit limits leave"
    );

    // Phase 1: the flooder takes its whole share; phase 2 hammers on.
    let mut flooder = Flooder::spawn(&topo.node, &flood_cg, LIMIT, 200_000, "block");
    let full = flooder.report();
    assert_eq!(full.held, u64::from(LIMIT), "{full:?}");
    assert_eq!(full.total_errors(), 0, "{full:?}");

    // The other tenant, while the flood goes on: every request reaches its
    // original destination and succeeds.
    let started = Instant::now();
    for i in 0..VICTIM_REQUESTS {
        assert_eq!(
            curl_status(&topo.node, Some(&calm_cg), &[], "http://10.77.1.10/data/10"),
            "200",
            "victim request {i}"
        );
    }
    let victim_took = started.elapsed();
    flooder.stop_hammering();
    let flood = flooder.report();
    let refused = flood.errors("ECONNREFUSED");
    eprintln!(
        "{VICTIM_REQUESTS} victim requests in {victim_took:?} while the flooder made {refused} refused connects"
    );
    assert_eq!(
        flood.held,
        u64::from(LIMIT),
        "nothing past the limit: {flood:?}"
    );
    assert_eq!(
        flood.total_errors(),
        refused,
        "only ECONNREFUSED: {flood:?}"
    );
    assert!(refused > 100, "the flood was a flood: {flood:?}");

    // Counted in the kernel, per policy and reason, exactly.
    assert_eq!(
        m(r#"sockwarden_connect_refused_total{policy="flood",reason="connection_limit"}"#),
        refused as f64
    );
    assert_eq!(
        m(r#"sockwarden_connect_refused_total{policy="calm",reason="connection_limit"}"#),
        0.0
    );
    assert_eq!(
        m(r#"sockwarden_connect_decisions_total{policy="flood",verdict="redirected"}"#),
        f64::from(LIMIT),
        "refused connects are not redirects"
    );
    assert_eq!(
        m(r#"sockwarden_redirected_connections{policy="flood"}"#),
        f64::from(LIMIT)
    );
    assert_eq!(
        m(r#"sockwarden_http_requests_total{policy="calm",verdict="allowed",status="200"}"#),
        VICTIM_REQUESTS as f64
    );
    assert_eq!(m("sockwarden_original_destination_missing_total"), 0.0);
    assert_eq!(origin.requests(), VICTIM_REQUESTS as u64);
    let calm_lines: Vec<_> = sw
        .access_log()
        .into_iter()
        .filter(|l| l["policy"] == "calm")
        .collect();
    assert_eq!(calm_lines.len(), VICTIM_REQUESTS);
    assert!(
        calm_lines
            .iter()
            .all(|l| l["original_dst"] == "10.77.1.10:80" && l["status"] == 200),
        "{calm_lines:?}"
    );

    // Closed: every slot is back and no original destination is left.
    flooder.close_all();
    wait_metric(
        &sw,
        r#"sockwarden_redirected_connections{policy="flood"}"#,
        0.0,
    );
    wait_metric(
        &sw,
        r#"sockwarden_redirected_connections{policy="calm"}"#,
        0.0,
    );
    assert_eq!(orig_dsts(&sw.pin), 0);
    // The slots are reusable.
    assert_eq!(
        curl_status(
            &topo.node,
            Some(&flood_cg),
            &[],
            "http://10.77.1.10/data/10"
        ),
        "200"
    );
}

#[test]
fn connections_the_proxy_never_accepts_hold_their_slot_until_closed() {
    const LIMIT: u32 = 8;
    const EXTRA: u32 = 5;
    let (tag, topo, _origin, cg) = scene("pending", "pending", OriginConfig::default());
    let sw = Sockwarden::start(
        &topo.node,
        &tag,
        &format!("policies:\n{}", policy("pending", cg.rel(), Some(LIMIT))),
    );
    // The pod's gateway now has a MAC nobody owns: its SYNs to the proxy
    // are lost, so the proxy never accepts these connections.
    topo.pod.run(&[
        "neigh",
        "replace",
        "10.77.2.1",
        "lladdr",
        "02:00:00:00:57:01",
        "dev",
        "eth0",
        "nud",
        "permanent",
    ]);
    let mut flooder = Flooder::spawn(&topo.pod, &cg, LIMIT, EXTRA, "nb");
    let pending = flooder.report();
    assert_eq!(pending.held, u64::from(LIMIT), "{pending:?}");
    assert_eq!(pending.total_errors(), 0, "{pending:?}");
    let past = flooder.report();
    assert_eq!(past.held, u64::from(LIMIT), "{past:?}");
    assert_eq!(past.errors("ECONNREFUSED"), u64::from(EXTRA), "{past:?}");
    assert_eq!(past.total_errors(), u64::from(EXTRA), "{past:?}");

    // IPv6 connects share the policy's slots, and are refused the same way.
    let v6 = tcp_connect(&topo.pod, Some(&cg), "fd77:1::10", 80);
    assert!(v6.contains("Connection refused"), "{v6}");

    // Pending: in the kernel's count and in orig_dsts, never evicted.
    let m = |s: &str| sw.metric(s);
    assert_eq!(orig_dsts(&sw.pin), LIMIT as usize);
    assert_eq!(
        m(r#"sockwarden_redirected_connections{policy="pending"}"#),
        f64::from(LIMIT)
    );
    assert_eq!(
        m(r#"sockwarden_connect_refused_total{policy="pending",reason="connection_limit"}"#),
        f64::from(EXTRA + 1)
    );
    assert_eq!(
        m(r#"sockwarden_redirects_unaccepted_total{policy="pending"}"#),
        0.0
    );
    assert_eq!(
        m(r#"sockwarden_redirects_unreached_total{policy="pending"}"#),
        0.0,
        "counted when the socket is released, not while it waits"
    );

    flooder.close_all();
    wait_metric(
        &sw,
        r#"sockwarden_redirected_connections{policy="pending"}"#,
        0.0,
    );
    assert_eq!(orig_dsts(&sw.pin), 0, "closing removed every entry");
    assert_eq!(
        m(r#"sockwarden_redirects_unaccepted_total{policy="pending"}"#),
        f64::from(LIMIT)
    );
    // Their SYNs were lost: none reached the listener either. (The refused
    // ones were never redirected, so they are not counted.)
    assert_eq!(
        m(r#"sockwarden_redirects_unreached_total{policy="pending"}"#),
        f64::from(LIMIT)
    );
    assert_eq!(m(r#"sockwarden_downstream_connections_total"#), 0.0);
}
