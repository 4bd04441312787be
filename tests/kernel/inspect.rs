//! Kernel tier: problems that must not be silent, and inspection. A policy
//! whose cgroup does not exist (named at start-up, by the gauge, then
//! enforced once created); a loopback `proxy.listen` that workloads in a
//! pod cannot reach (counted, logged once with its cause); denied connects
//! and UDP sends as `connect_denied` access-log lines, rate-limited in the
//! kernel with the drops counted; `sockwarden rules`. Root is required;
//! the tests never skip.

use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;
use std::process::Stdio;
use std::time::Duration;

use crate::cgroup::TestCgroup;
use crate::common::origin::OriginConfig;
use crate::common::wait_for;
use crate::netns::Netns;
use crate::support::command_in;
use crate::sw::{bare_scene, scene, tcp_connect, Sockwarden, BIN};

/// The kernel's rate limit on events (abi.h: SW_EVENT_BURST per policy and CPU).
const EVENT_BURST: usize = 20;

/// The network namespace cookie of `ns`, as the kernel reports it.
fn netns_cookie(ns: &Netns) -> u64 {
    ns.within(|| {
        let s = std::net::UdpSocket::bind("0.0.0.0:0").expect("socket in the namespace");
        sockwarden::proxy::upstream::netns_cookie(s.as_fd()).expect("SO_NETNS_COOKIE")
    })
}

/// Runs a `bash -c` script as a workload (in `ns` and `cgroup`) that
/// prints its pid first; returns (pid, stderr).
fn workload_pid(ns: &Netns, cgroup: &TestCgroup, script: &str) -> (u32, String) {
    let o = command_in(Some(&ns.path()), Some(cgroup.path()), "bash")
        .args(["-c", &format!("echo $$; {script}")])
        .stdin(Stdio::null())
        .output()
        .expect("run workload");
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    let pid = out
        .lines()
        .next()
        .and_then(|l| l.trim().parse().ok())
        .unwrap_or_else(|| panic!("no pid in {out:?}"));
    (pid, String::from_utf8_lossy(&o.stderr).into_owned())
}

/// `sockwarden ARGS...`: (success, stdout, stderr).
fn sockwarden(args: &[&str]) -> (bool, String, String) {
    let o = std::process::Command::new(BIN)
        .args(args)
        .output()
        .expect("run sockwarden");
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[test]
fn a_missing_policy_cgroup_is_named_then_enforced_once_created() {
    let (tag, topo, _origin, cg) = scene("missing", "app", OriginConfig::default());
    let later = format!("/sockwarden-test-{tag}/later");
    let body = format!(
        "policies:\n  - name: later\n    cgroup: {later}\n    egress:\n\
         \x20     - to: [\"10.77.1.0/24\"]\n        ports: [80]\n"
    );
    let sw = Sockwarden::start(&topo.node, &tag, &body);
    let warning = format!(
        "policy later: cgroup {later} does not exist: nothing is enforced for this policy until it is created"
    );
    let log = sw.stderr();
    assert_eq!(log.matches(&warning).count(), 1, "{log}");
    let present = "sockwarden_policy_cgroup_present{policy=\"later\"}";
    assert_eq!(sw.metric(present), 0.0);

    // `check` says so too, as a note about this host.
    let file = sw.dir.join("sockwarden.yaml");
    let (ok, _, stderr) = sockwarden(&["check", "--config", file.to_str().expect("utf-8")]);
    assert!(ok, "{stderr}");
    assert!(
        stderr.contains(&format!("note: {warning}")),
        "check: {stderr}"
    );

    // Created: the watcher enforces it and the gauge says so.
    let created = TestCgroup::new(&later);
    let got = wait_for(Duration::from_secs(5), || sw.metric(present), |v| *v == 1.0);
    assert_eq!(got, 1.0, "{}", sw.stderr());
    assert!(
        tcp_connect(&topo.pod, Some(&created), "10.77.1.10", 81)
            .contains("Operation not permitted"),
        "a port no rule allows"
    );
    assert_eq!(
        tcp_connect(&topo.pod, Some(&created), "10.77.1.10", 80),
        "ok"
    );
    // Removed again: back to 0, and said.
    drop(created);
    let got = wait_for(Duration::from_secs(5), || sw.metric(present), |v| *v == 0.0);
    assert_eq!(got, 0.0, "{}", sw.stderr());
    let gone = format!(
        "policy later: cgroup {later} is gone: nothing is enforced for this policy until it is created again"
    );
    assert!(sw.stderr().contains(&gone), "{}", sw.stderr());
    // No policy covers the scene's own cgroup: it is untouched.
    assert!(!tcp_connect(&topo.pod, Some(&cg), "10.77.1.10", 81).contains("not permitted"));
}

#[test]
fn a_loopback_listener_unreachable_from_a_pod_is_counted_and_logged_once() {
    let (tag, topo, _origin, cg) = scene("loopback", "pods", OriginConfig::default());
    let body = format!(
        "policies:\n  - name: pods\n    cgroup: {}\n    egress:\n\
         \x20     - to: [\"10.77.1.0/24\"]\n        ports: [80]\n        http: [{{ method: GET }}]\n",
        cg.rel()
    );
    let dir = std::path::PathBuf::from(format!("/tmp/sw-test-{tag}"));
    let config = Sockwarden::config(&tag, &dir, &body).replace(
        "  listen: 10.77.0.1:15001\n  listen_v6: \"[fd77::1]:15001\"\n",
        "  listen: 127.0.0.1:15001\n",
    );
    assert!(config.contains("listen: 127.0.0.1:15001"), "{config}");
    let sw = Sockwarden::spawn_config(&topo.node, &tag, &tag, &config, None);
    sw.wait_ready();
    let warning =
        "proxy.listen 127.0.0.1:15001 is a loopback address: workloads in other network namespaces";
    assert!(sw.stderr().contains(warning), "start-up: {}", sw.stderr());
    let (ok, _, stderr) = sockwarden(&[
        "check",
        "--config",
        sw.dir.join("sockwarden.yaml").to_str().expect("utf-8"),
    ]);
    assert!(
        ok && stderr.contains(&format!("warning: {warning}")),
        "check: {stderr}"
    );

    // Each redirected connect from the pod lands on the pod's own loopback.
    for _ in 0..3 {
        let got = tcp_connect(&topo.pod, Some(&cg), "10.77.1.10", 80);
        assert!(got.contains("Connection refused"), "{got}");
    }
    let series = "sockwarden_redirects_unreached_total{policy=\"pods\"}";
    let n = wait_for(Duration::from_secs(5), || sw.metric(series), |v| *v >= 3.0);
    assert_eq!(n, 3.0);
    let line = format!(
        "proxy.listen 127.0.0.1:15001 is loopback; workloads in network namespace cookie {} cannot reach it",
        netns_cookie(&topo.pod)
    );
    let log = wait_for(
        Duration::from_secs(5),
        || sw.stderr(),
        |l| l.contains(&line),
    );
    assert_eq!(log.matches(&line).count(), 1, "logged once: {log}");
    assert_eq!(
        log.matches("never reached the proxy's listener").count(),
        1,
        "{log}"
    );
}

#[test]
fn a_denied_connect_and_a_denied_send_leave_one_line_each() {
    let (tag, topo, _origin, cg) = scene("denied", "pods", OriginConfig::default());
    let body = format!(
        "policies:\n  - name: pods\n    cgroup: {}\n    egress:\n\
         \x20     - to: [\"10.77.1.0/24\"]\n        ports: [80]\n",
        cg.rel()
    );
    let sw = Sockwarden::start(&topo.node, &tag, &body);
    let (tcp_pid, err) = workload_pid(&topo.pod, &cg, "exec 3<>/dev/tcp/10.77.1.10/81");
    assert!(err.contains("Operation not permitted"), "{err}");
    let (udp_pid, err) = workload_pid(
        &topo.pod,
        &cg,
        "exec python3 -c \"import socket; socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b'x', ('10.77.1.10', 9999))\"",
    );
    assert!(err.contains("PermissionError"), "{err}");
    // Allowed: no line.
    assert_eq!(tcp_connect(&topo.pod, Some(&cg), "10.77.1.10", 80), "ok");

    let lines = wait_for(
        Duration::from_secs(5),
        || sw.event_log("connect_denied"),
        |l| l.len() >= 2,
    );
    assert_eq!(lines.len(), 2, "{lines:?}");
    let cgroup_id = std::fs::metadata(cg.path()).expect("cgroup").ino();
    let netns = netns_cookie(&topo.pod);
    let want = [
        ("connect", "tcp", tcp_pid, "bash", 81),
        ("sendmsg", "udp", udp_pid, "python3", 9999),
    ];
    for (line, (call, protocol, pid, comm, port)) in lines.iter().zip(want) {
        let expect = serde_json::json!({
            "time": line["time"], "kind": "connect_denied", "call": call,
            "policy": "pods", "cgroup": cg.rel(), "cgroup_id": cgroup_id,
            "pid": pid, "comm": comm, "protocol": protocol,
            "destination": "10.77.1.10", "port": port, "netns_cookie": netns,
        });
        assert_eq!(line, &expect);
        assert!(
            line["time"].as_str().is_some_and(|t| t.ends_with('Z')),
            "{line}"
        );
    }
    assert_eq!(
        sw.metric("sockwarden_kernel_events_dropped_total{policy=\"pods\",reason=\"rate_limit\"}"),
        0.0
    );
}

#[test]
fn a_flood_of_denied_connects_is_rate_limited_and_the_drops_counted() {
    let (tag, topo, cg) = bare_scene("deniedflood", "pods");
    let body = format!(
        "policies:\n  - name: pods\n    cgroup: {}\n    egress:\n\
         \x20     - to: [\"10.77.1.0/24\"]\n        ports: [80]\n",
        cg.rel()
    );
    let sw = Sockwarden::start(&topo.node, &tag, &body);
    const N: usize = 500;
    let script = format!(
        "import socket\nn = 0\nfor _ in range({N}):\n    s = socket.socket()\n    try:\n        s.connect(('10.77.1.10', 81))\n    except PermissionError:\n        n += 1\n    s.close()\nprint(n)\n"
    );
    let o = command_in(Some(&topo.pod.path()), Some(cg.path()), "python3")
        .args(["-c", &script])
        .output()
        .expect("run python3");
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).trim(),
        N.to_string(),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let dropped = |reason: &str| {
        sw.metric(&format!(
            "sockwarden_kernel_events_dropped_total{{policy=\"pods\",reason=\"{reason}\"}}"
        )) as usize
    };
    // Every denied connect is either a line or counted as dropped.
    let (lines, rate, full) = wait_for(
        Duration::from_secs(5),
        || {
            (
                sw.event_log("connect_denied").len(),
                dropped("rate_limit"),
                dropped("ring_full"),
            )
        },
        |(l, r, f)| l + r + f >= N,
    );
    assert_eq!(
        lines + rate + full,
        N,
        "lines {lines}, rate_limit {rate}, ring_full {full}"
    );
    assert_eq!(full, 0, "the ring never filled");
    assert!(
        lines >= EVENT_BURST,
        "a full bucket sends its burst: {lines}"
    );
    assert!(rate > 0 && lines < N, "rate-limited: {lines} lines");
    assert_eq!(
        sw.metric("sockwarden_connect_denied_total{policy=\"pods\"}") as usize,
        N
    );
}

#[test]
fn rules_prints_the_kernel_table_in_the_configurations_terms() {
    let (tag, topo, cg) = bare_scene("rules", "pods");
    let body = format!(
        "policies:\n  - name: pods\n    cgroup: {}\n    egress:\n\
         \x20     - to: [\"10.77.1.0/24\"]\n        ports: [80]\n        http: [{{ method: GET }}]\n\
         \x20     - to: [\"fd77:1::/64\"]\n\
         \x20     - to: [\"10.96.0.10/32\"]\n        ports: [53]\n        protocol: udp\n\
         \x20 - name: other\n    cgroup: /sockwarden-test-{tag}/other\n    egress:\n\
         \x20     - to: [\"0.0.0.0/0\"]\n        ports: [443]\n",
        cg.rel()
    );
    let sw = Sockwarden::start(&topo.node, &tag, &body);
    let config = sw.dir.join("sockwarden.yaml");
    let (ok, stdout, stderr) = sockwarden(&["rules", "--config", config.to_str().expect("utf-8")]);
    assert!(ok, "{stderr}");
    let want = "\
POLICY               PROTO DESTINATION                                  PORT  VERDICT
pods                 tcp   fd77:1::/64                                  any   allow
pods                 tcp   10.77.1.0/24                                 80    redirect to proxy
pods                 udp   10.96.0.10/32                                53    allow
pods                 any   anything else                                any   deny (EPERM)
other                tcp   0.0.0.0/0                                    443   allow
other                any   anything else                                any   deny (EPERM)
4 kernel entries
";
    assert_eq!(stdout, want);
    // By pin path alone: the same table, policies by id.
    let (ok, by_id, stderr) = sockwarden(&["rules", "--pin-path", sw.pin.to_str().expect("utf-8")]);
    assert!(ok, "{stderr}");
    assert_eq!(
        by_id,
        want.replace("pods ", "#0   ").replace("other", "#1   ")
    );
}
