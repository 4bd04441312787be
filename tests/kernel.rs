//! Kernel tier: the real binary, real eBPF programs, real cgroups and
//! network namespaces. Every test builds its own topology (node, origin and
//! pod namespaces, addresses that exist only inside them), its own cgroups
//! and its own pin path, and removes them even when it fails. Root is
//! required; without it these tests fail, they never skip.

mod common;

use std::io::{BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Output, Stdio};
use std::time::{Duration, Instant};

use common::cgroup::TestCgroup;
use common::netns::{in_netns, Netns, Topology};
use common::origin::{read_response, Origin, OriginConfig};
use common::{command_in, require_root, unique_tag};

const BIN: &str = env!("CARGO_BIN_EXE_sockwarden");
const ADMIN: &str = "127.0.0.1:9901";

/// A running `sockwarden run` inside a node namespace.
struct Sockwarden {
    child: Option<Child>,
    node: PathBuf,
    pin: PathBuf,
    dir: PathBuf,
}

impl Sockwarden {
    fn config(tag: &str, dir: &Path, policies: &str) -> String {
        format!(
            "proxy:\n  listen: 10.77.0.1:15001\n  listen_v6: \"[fd77::1]:15001\"\n\
             admin:\n  listen: {ADMIN}\n\
             bpf:\n  pin_path: /sys/fs/bpf/sw-test-{tag}\n\
             access_log:\n  path: {}/access.log\n\
             policies:\n{policies}",
            dir.display()
        )
    }

    /// Starts sockwarden in `node` with `policies` (YAML list items) and
    /// waits until /readyz answers.
    fn start(node: &Netns, tag: &str, policies: &str) -> Sockwarden {
        let sw = Self::spawn(node, tag, tag, policies, None);
        sw.wait_ready();
        sw
    }

    /// Spawns without waiting. `tag` names the pin path, `run` the
    /// directory holding config, logs and access log.
    fn spawn(
        node: &Netns,
        tag: &str,
        run: &str,
        policies: &str,
        cgroup: Option<&Path>,
    ) -> Sockwarden {
        let dir = PathBuf::from(format!("/tmp/sw-test-{run}"));
        std::fs::create_dir_all(&dir).expect("test dir");
        let config = dir.join("sockwarden.yaml");
        std::fs::write(&config, Self::config(tag, &dir, policies)).expect("write config");
        let child = command_in(Some(&node.path()), cgroup, BIN)
            .args(["run", "--config"])
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("stderr")).expect("stderr file"))
            .spawn()
            .expect("spawn sockwarden");
        Sockwarden {
            child: Some(child),
            node: node.path(),
            pin: PathBuf::from(format!("/sys/fs/bpf/sw-test-{tag}")),
            dir,
        }
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.join("stderr")).unwrap_or_default()
    }

    fn access_log(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(self.dir.join("access.log"))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).expect("access log line is JSON"))
            .collect()
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if self.admin_get("/readyz").is_some_and(|(s, _)| s == 200) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("sockwarden did not become ready:\n{}", self.stderr());
    }

    /// GET on the admin listener (inside the node namespace).
    fn admin_get(&self, path: &str) -> Option<(u16, String)> {
        let path = path.to_string();
        in_netns(&self.node, move || {
            let addr: SocketAddr = ADMIN.parse().expect("admin addr");
            let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
            s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
            write!(
                s,
                "GET {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n"
            )
            .ok()?;
            let r = read_response(&mut BufReader::new(s), false).ok()?;
            Some((r.status, String::from_utf8_lossy(&r.body).into_owned()))
        })
    }

    /// The value of one exported series, e.g.
    /// `sockwarden_connect_denied_total{policy="p"}`; 0 when absent.
    fn metric(&self, series: &str) -> f64 {
        let (status, body) = self.admin_get("/metrics").expect("metrics reachable");
        assert_eq!(status, 200);
        body.lines()
            .find_map(|l| {
                l.strip_prefix(series)?
                    .strip_prefix(' ')?
                    .trim()
                    .parse()
                    .ok()
            })
            .unwrap_or(0.0)
    }

    /// SIGTERM and wait; returns the exit status.
    fn stop(&mut self) -> std::process::ExitStatus {
        let child = self.child.as_ref().expect("running");
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        self.wait_exit(Duration::from_secs(10))
    }

    /// Waits for the process to exit on its own.
    fn wait_exit(&mut self, limit: Duration) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("running");
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "sockwarden did not exit within {limit:?}:\n{}",
                    self.stderr()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Sockwarden {
    fn drop(&mut self) {
        self.kill();
        // Unlinking pinned links detaches them; the maps go with the programs.
        let _ = std::fs::remove_dir_all(self.pin.join("links"));
        let _ = std::fs::remove_dir_all(&self.pin);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Runs `program args` as a workload: in `netns` and `cgroup`.
fn workload(netns: &Netns, cgroup: &TestCgroup, program: &str, args: &[&str]) -> Output {
    command_in(Some(&netns.path()), Some(cgroup.path()), program)
        .args(args)
        .output()
        .expect("run workload")
}

/// The same, outside any policy cgroup.
fn outsider(netns: &Netns, program: &str, args: &[&str]) -> Output {
    command_in(Some(&netns.path()), None, program)
        .args(args)
        .output()
        .expect("run outsider")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// A TCP connect() from `netns`, in `cgroup` if given, through bash's
/// /dev/tcp: "ok", or bash's error text (strerror, e.g. "Operation not
/// permitted").
fn tcp_connect(netns: &Netns, cgroup: Option<&TestCgroup>, host: &str, port: u16) -> String {
    let script = format!("exec 3<>/dev/tcp/{host}/{port}");
    let o = match cgroup {
        Some(cg) => workload(netns, cg, "bash", &["-c", &script]),
        None => outsider(netns, "bash", &["-c", &script]),
    };
    if o.status.success() {
        "ok".into()
    } else {
        String::from_utf8_lossy(&o.stderr).into_owned()
    }
}

/// The lowercased response head of a GET with the team header.
fn curl_head(netns: &Netns, cgroup: &TestCgroup, url: &str) -> String {
    let args = [
        "-sS",
        "-D",
        "-",
        "-o",
        "/dev/null",
        "--max-time",
        "10",
        "-H",
        "x-team: analytics",
        url,
    ];
    stdout(&workload(netns, cgroup, "curl", &args)).to_ascii_lowercase()
}

/// curl printing the status code; extra args before the URL.
fn curl_status(netns: &Netns, cgroup: Option<&TestCgroup>, extra: &[&str], url: &str) -> String {
    let mut args = vec![
        "-sS",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "--max-time",
        "10",
    ];
    args.extend_from_slice(extra);
    args.push(url);
    let o = match cgroup {
        Some(cg) => workload(netns, cg, "curl", &args),
        None => outsider(netns, "curl", &args),
    };
    stdout(&o)
}

fn policy(name: &str, cgroup: &str) -> String {
    format!(
        "  - name: {name}\n    cgroup: {cgroup}\n    egress:\n\
         \x20     - to: [\"10.77.1.0/24\", \"fd77:1::/64\"]\n        ports: [80, 8080]\n        http:\n\
         \x20         - method: \"GET|HEAD\"\n            path: \"/data/.*\"\n            headers: [\"x-team: analytics\"]\n\
         \x20     - to: [\"10.77.1.10/32\"]\n        ports: [9000]\n"
    )
}

#[test]
fn allowed_denied_refused_and_untouched() {
    require_root();
    let tag = unique_tag("basic");
    let topo = Topology::new(&tag);
    let origin = Origin::start(
        "10.77.1.10:80".parse().unwrap(),
        Some(&topo.origin.path()),
        OriginConfig::default(),
    );
    let l4_origin = Origin::start(
        "10.77.1.10:9000".parse().unwrap(),
        Some(&topo.origin.path()),
        OriginConfig::default(),
    );
    let cg = TestCgroup::new(&format!("/sockwarden-test-{tag}/analytics"));
    let mut sw = Sockwarden::start(&topo.node, &tag, &policy("analytics", cg.rel()));
    let team = ["-H", "x-team: analytics"];

    // Allowed at L7.
    let o = workload(
        &topo.node,
        &cg,
        "curl",
        &[
            "-sS",
            "--max-time",
            "10",
            "-H",
            "x-team: analytics",
            "http://10.77.1.10/data/1000",
        ],
    );
    assert_eq!(
        o.stdout,
        common::origin::pattern(1000),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    // Denied at L7: wrong path, and missing header.
    let head = curl_head(&topo.node, &cg, "http://10.77.1.10/private");
    assert!(head.starts_with("http/1.1 403"), "{head}");
    assert!(head.contains("sockwarden-denied: analytics"), "{head}");
    assert_eq!(
        curl_status(&topo.node, Some(&cg), &[], "http://10.77.1.10/data/1"),
        "403"
    );
    // The keep-alive connection stays usable after a 403: two URLs, one connection.
    let o = workload(
        &topo.node,
        &cg,
        "curl",
        &[
            "-sS",
            "--max-time",
            "10",
            "-H",
            "x-team: analytics",
            "-w",
            "%{http_code} %{num_connects}\n",
            "-o",
            "/dev/null",
            "http://10.77.1.10/private",
            "-o",
            "/dev/null",
            "http://10.77.1.10/data/5",
        ],
    );
    assert_eq!(
        stdout(&o),
        "403 1\n200 0\n",
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    // Refused at connect(): no rule covers port 81, nor 10.77.3.1.
    assert!(
        tcp_connect(&topo.node, Some(&cg), "10.77.1.10", 81).contains("Operation not permitted")
    );
    assert!(tcp_connect(&topo.node, Some(&cg), "10.77.3.1", 80).contains("Operation not permitted"));
    // L4-only rule: allowed, not redirected (no access-log line, no proxy).
    assert_eq!(
        curl_status(
            &topo.node,
            Some(&cg),
            &[],
            "http://10.77.1.10:9000/anything"
        ),
        "200"
    );
    assert_eq!(l4_origin.requests(), 1);
    // UDP is never touched, even to a destination no rule allows.
    let o = workload(
        &topo.node,
        &cg,
        "bash",
        &["-c", "exec 3<>/dev/udp/10.77.1.99/53"],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // Nothing listens on 8080: the proxy answers 503 and names the errno.
    let head = curl_head(&topo.node, &cg, "http://10.77.1.10:8080/data/1");
    assert!(head.starts_with("http/1.1 503"), "{head}");
    assert!(
        head.contains("sockwarden-error: upstream connect failed: econnrefused"),
        "{head}"
    );
    // Outside the cgroup nothing is touched: /private reaches the origin.
    assert_eq!(
        curl_status(&topo.node, None, &team, "http://10.77.1.10/private"),
        "200"
    );
    assert!(tcp_connect(&topo.node, None, "10.77.1.10", 81).contains("Connection refused"));

    // Metrics equal what this test did.
    let m = |s: &str| sw.metric(s);
    assert_eq!(
        m(r#"sockwarden_http_requests_total{policy="analytics",verdict="allowed",status="200"}"#),
        2.0
    );
    assert_eq!(
        m(r#"sockwarden_http_requests_total{policy="analytics",verdict="denied",status="403"}"#),
        3.0
    );
    assert_eq!(
        m(r#"sockwarden_connect_denied_total{policy="analytics"}"#),
        2.0
    );
    assert_eq!(
        m(r#"sockwarden_connect_decisions_total{policy="analytics",verdict="allowed"}"#),
        1.0
    );
    assert_eq!(
        m(r#"sockwarden_connect_decisions_total{policy="analytics",verdict="redirected"}"#),
        5.0
    );
    assert_eq!(
        m(r#"sockwarden_http_requests_total{policy="analytics",verdict="error",status="503"}"#),
        1.0
    );
    assert_eq!(
        m(r#"sockwarden_upstream_connect_failures_total{errno="ECONNREFUSED"}"#),
        1.0
    );
    assert_eq!(
        m("sockwarden_upstream_connections_opened_total"),
        1.0,
        "the second allowed request reused the pooled connection"
    );
    assert_eq!(
        origin.requests(),
        3,
        "2 allowed through the proxy + 1 from outside"
    );

    // The access log names policy, cgroup, destination, verdict, flags.
    let log = sw.access_log();
    assert_eq!(log.len(), 6, "{log:?}");
    let failed = log.iter().find(|l| l["status"] == 503).expect("503 line");
    assert_eq!(failed["flags"], serde_json::json!(["UF"]));
    assert_eq!(failed["reason"], "upstream connect failed: ECONNREFUSED");
    let denied = log
        .iter()
        .find(|l| l["path"] == "/private")
        .expect("denied line");
    assert_eq!(denied["status"], 403);
    assert_eq!(denied["policy"], "analytics");
    assert_eq!(denied["cgroup"], cg.rel());
    assert_eq!(denied["cgroup_id"], cg.id());
    assert_eq!(denied["original_dst"], "10.77.1.10:80");
    assert_eq!(denied["flags"], serde_json::json!(["RBAC"]));
    let allowed = log
        .iter()
        .find(|l| l["path"] == "/data/1000")
        .expect("allowed line");
    assert_eq!(allowed["status"], 200);
    assert_eq!(allowed["upstream_attempts"], 1);
    assert!(allowed["upstream_id"].as_u64().is_some());
    assert!(allowed["bytes_sent"].as_u64().unwrap() > 1000);

    // Admin API.
    assert_eq!(sw.admin_get("/healthz").map(|r| r.0), Some(200));
    let (status, dump) = sw.admin_get("/config_dump").expect("config_dump");
    assert_eq!(status, 200);
    let dump: serde_json::Value = serde_json::from_str(&dump).expect("config_dump is JSON");
    assert_eq!(dump["policies"][0]["name"], "analytics");
    assert_eq!(
        dump["policies"][0]["egress"][0]["ports"],
        serde_json::json!([80, 8080])
    );
    assert_eq!(dump["upstream"]["connect_timeout"], "2s");

    let status = sw.stop();
    assert!(status.success(), "exit {status:?}: {}", sw.stderr());
    assert!(!sw.pin.exists(), "pins removed on exit");
    // Detached: the same connect() now reaches the origin namespace (refused there).
    assert!(tcp_connect(&topo.node, Some(&cg), "10.77.1.10", 81).contains("Connection refused"));
}

#[test]
fn workload_in_its_own_namespace_ipv4_and_ipv6() {
    require_root();
    let tag = unique_tag("pod");
    let topo = Topology::new(&tag);
    let origin4 = Origin::start(
        "10.77.1.10:80".parse().unwrap(),
        Some(&topo.origin.path()),
        OriginConfig::default(),
    );
    let origin6 = Origin::start(
        "[fd77:1::10]:80".parse().unwrap(),
        Some(&topo.origin.path()),
        OriginConfig::default(),
    );
    let cg = TestCgroup::new(&format!("/sockwarden-test-{tag}/pod"));
    let sw = Sockwarden::start(&topo.node, &tag, &policy("pod", cg.rel()));
    let team = ["-H", "x-team: analytics"];

    assert_eq!(
        curl_status(&topo.pod, Some(&cg), &team, "http://10.77.1.10/data/10"),
        "200"
    );
    assert_eq!(
        curl_status(&topo.pod, Some(&cg), &team, "http://[fd77:1::10]/data/10"),
        "200"
    );
    assert_eq!(
        curl_status(&topo.pod, Some(&cg), &team, "http://[fd77:1::10]/private"),
        "403"
    );
    assert!(tcp_connect(&topo.pod, Some(&cg), "fd77:1::10", 81).contains("Operation not permitted"));
    assert_eq!(origin4.requests(), 1);
    assert_eq!(origin6.requests(), 1);
    let log = sw.access_log();
    assert_eq!(log.len(), 3, "{log:?}");
    assert!(log
        .iter()
        .any(|l| l["original_dst"] == "[fd77:1::10]:80" && l["status"] == 200));
    assert!(log
        .iter()
        .all(|l| l["client"].as_str().unwrap().contains("fd77:2::2")
            || l["client"].as_str().unwrap().starts_with("10.77.2.2")));
    assert_eq!(
        sw.metric(r#"sockwarden_connect_denied_total{policy="pod"}"#),
        1.0
    );
}

#[test]
fn origin_closing_every_100_requests_causes_no_errors() {
    require_root();
    let tag = unique_tag("s3");
    let topo = Topology::new(&tag);
    let origin = Origin::start(
        "10.77.1.10:80".parse().unwrap(),
        Some(&topo.origin.path()),
        OriginConfig {
            close_after: Some(100),
            ..OriginConfig::default()
        },
    );
    let cg = TestCgroup::new(&format!("/sockwarden-test-{tag}/s3"));
    let sw = Sockwarden::start(&topo.node, &tag, &policy("s3", cg.rel()));

    // One curl, one keep-alive connection, 10,000 sequential requests.
    const N: usize = 10_000;
    let mut cfg = String::from(
        "header = \"x-team: analytics\"\nsilent\nwrite-out = \"%{http_code} %{num_connects}\\n\"\n",
    );
    for i in 0..N {
        cfg.push_str(&format!(
            "url = \"http://10.77.1.10/data/{}\"\noutput = \"/dev/null\"\n",
            16 + i % 7
        ));
    }
    let cfg_path = sw.dir.join("curl.cfg");
    std::fs::write(&cfg_path, cfg).unwrap();
    let started = Instant::now();
    let o = workload(
        &topo.node,
        &cg,
        "curl",
        &["--config", cfg_path.to_str().unwrap()],
    );
    let took = started.elapsed();
    let out = stdout(&o);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), N, "{}", String::from_utf8_lossy(&o.stderr));
    let errors = lines.iter().filter(|l| !l.starts_with("200 ")).count();
    let client_connects: u32 = lines.iter().map(|l| l[4..].parse::<u32>().unwrap()).sum();
    assert_eq!(errors, 0, "client-visible errors");
    assert_eq!(client_connects, 1, "the client kept one connection");
    assert_eq!(origin.requests(), N as u64);
    assert_eq!(origin.connections(), (N / 100) as u64);
    assert_eq!(
        sw.metric("sockwarden_upstream_connections_opened_total"),
        (N / 100) as f64
    );
    assert_eq!(
        sw.metric(
            r#"sockwarden_upstream_connections_closed_total{reason="connection_close_header"}"#
        ),
        (N / 100) as f64
    );
    assert_eq!(
        sw.metric(r#"sockwarden_http_requests_total{policy="s3",verdict="allowed",status="200"}"#),
        N as f64
    );
    eprintln!("10,000 requests through the proxy in {took:?}");
}

#[test]
fn cgroup_created_later_is_enforced_without_restart() {
    require_root();
    let tag = unique_tag("later");
    let topo = Topology::new(&tag);
    let parent = TestCgroup::new(&format!("/sockwarden-test-{tag}"));
    let rel = format!("{}/unit/worker", parent.rel());
    let sw = Sockwarden::start(&topo.node, &tag, &policy("later", &rel));
    assert!(!parent.path().join("unit").exists());

    let cg = TestCgroup::new(&rel);
    let created = Instant::now();
    let mut window = None;
    while created.elapsed() < Duration::from_secs(3) {
        if tcp_connect(&topo.node, Some(&cg), "10.77.1.10", 81).contains("Operation not permitted")
        {
            window = Some(created.elapsed());
            break;
        }
    }
    let window = window.expect("the new cgroup was never enforced");
    eprintln!("enforced {window:?} after mkdir");
    assert!(
        window < Duration::from_millis(900),
        "enforcement took {window:?}: inotify did not fire"
    );
    assert!(sw.stderr().contains("enforcing policy cgroup"));
}

#[test]
fn refuses_to_run_inside_an_enforced_cgroup() {
    require_root();
    let tag = unique_tag("self");
    let node = Netns::new(&format!("sw-{tag}-node"));
    node.run(&["addr", "add", "10.77.0.1/32", "dev", "lo"]);
    node.run(&["addr", "add", "fd77::1/128", "dev", "lo", "nodad"]);
    let cg = TestCgroup::new(&format!("/sockwarden-test-{tag}/self"));
    let mut sw = Sockwarden::spawn(
        &node,
        &tag,
        &tag,
        &policy("self", cg.rel()),
        Some(cg.path()),
    );
    let status = sw.wait_exit(Duration::from_secs(10));
    assert_eq!(status.code(), Some(1), "{status:?}");
    let err = sw.stderr();
    assert!(
        err.contains("sockwarden's own process is in cgroup"),
        "{err}"
    );
    assert!(!sw.pin.exists(), "nothing loaded");
}

#[test]
fn a_killed_run_fails_closed_and_the_next_run_cleans_up() {
    require_root();
    let tag = unique_tag("kill");
    let topo = Topology::new(&tag);
    let cg = TestCgroup::new(&format!("/sockwarden-test-{tag}/app"));
    let mut first = Sockwarden::start(&topo.node, &tag, &policy("app", cg.rel()));
    first.kill();
    assert!(first.child.is_none());
    // Killed: links stay pinned, so the policy still holds (fail closed).
    assert!(first.pin.join("links/sw_connect4").exists());
    assert!(
        tcp_connect(&topo.node, Some(&cg), "10.77.1.10", 81).contains("Operation not permitted")
    );

    let mut second = Sockwarden::start(&topo.node, &tag, &policy("app", cg.rel()));
    assert!(
        second
            .stderr()
            .contains("removed leftovers of an earlier run"),
        "{}",
        second.stderr()
    );
    // A second instance on the same pin path is refused while one runs.
    let third_run = format!("{tag}-third");
    let mut third = Sockwarden::spawn(&topo.node, &tag, &third_run, &policy("app", cg.rel()), None);
    let status = third.wait_exit(Duration::from_secs(10));
    assert_eq!(status.code(), Some(1));
    assert!(
        third.stderr().contains("another sockwarden is running"),
        "{}",
        third.stderr()
    );
    assert!(
        second.pin.exists(),
        "the refused instance left the running one's pins alone"
    );

    let status = second.stop();
    assert!(status.success(), "{}", second.stderr());
    assert!(!second.pin.exists());
    assert!(
        tcp_connect(&topo.node, Some(&cg), "10.77.1.10", 81).contains("Connection refused"),
        "detached after a clean exit"
    );
    drop(first);
}
