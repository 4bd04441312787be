//! Kernel tier: the real binary, real eBPF programs, real cgroups and
//! network namespaces. Every test builds its own topology (node, origin and
//! pod namespaces, addresses that exist only inside them), its own cgroups
//! and its own pin path, and removes them even when it fails. Root is
//! required; without it these tests fail, they never skip.

use std::time::{Duration, Instant};

use crate::cgroup::TestCgroup;
use crate::common::origin::OriginConfig;
use crate::netns::{Netns, Topology};
use crate::support::{require_root, unique_tag};
use crate::sw::{
    bare_scene, curl, curl_head, curl_status, origin_at, outsider, scene, stdout, tcp_connect,
    workload, Sockwarden,
};

fn policy(name: &str, cgroup: &str) -> String {
    format!(
        "policies:\n  - name: {name}\n    cgroup: {cgroup}\n    egress:\n\
         \x20     - to: [\"10.77.1.0/24\", \"fd77:1::/64\"]\n        ports: [80, 8080]\n        http:\n\
         \x20         - method: \"GET|HEAD\"\n            path: \"/data/.*\"\n            headers: [\"x-team: analytics\"]\n\
         \x20     - to: [\"10.77.1.10/32\"]\n        ports: [9000]\n"
    )
}

#[test]
fn allowed_denied_refused_and_untouched() {
    let (tag, topo, origin, cg) = scene("basic", "analytics", OriginConfig::default());
    let l4_origin = origin_at(&topo, "10.77.1.10:9000", OriginConfig::default());
    let mut sw = Sockwarden::start(&topo.node, &tag, &policy("analytics", cg.rel()));
    let team = ["-H", "x-team: analytics"];

    // Allowed at L7.
    let o = curl(
        &topo.node,
        Some(&cg),
        &[team[0], team[1], "http://10.77.1.10/data/1000"],
    );
    assert_eq!(
        o.stdout,
        crate::common::origin::pattern(1000),
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
    let o = curl(
        &topo.node,
        Some(&cg),
        &[
            team[0],
            team[1],
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
            &format!("http://{}/anything", l4_origin.addr())
        ),
        "200"
    );
    assert_eq!(l4_origin.requests(), 1);
    // UDP needs a UDP rule (tests/side_doors.rs covers UDP in depth); outside
    // the cgroup the same connect() works.
    let udp = "exec 3<>/dev/udp/10.77.1.99/53";
    let o = workload(&topo.node, &cg, "bash", &["-c", udp]);
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("Operation not permitted"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let o = outsider(&topo.node, "bash", &["-c", udp]);
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
    sw.assert_metrics(&[
        (
            r#"sockwarden_http_requests_total{policy="analytics",verdict="allowed",status="200"}"#,
            2.0,
        ),
        (
            r#"sockwarden_http_requests_total{policy="analytics",verdict="denied",status="403"}"#,
            3.0,
        ),
        (
            r#"sockwarden_connect_denied_total{policy="analytics"}"#,
            2.0,
        ),
        (
            r#"sockwarden_udp_decisions_total{policy="analytics",verdict="deny"}"#,
            1.0,
        ),
        (
            r#"sockwarden_connect_decisions_total{policy="analytics",verdict="allowed"}"#,
            1.0,
        ),
        (
            r#"sockwarden_connect_decisions_total{policy="analytics",verdict="redirected"}"#,
            5.0,
        ),
        (
            r#"sockwarden_http_requests_total{policy="analytics",verdict="error",status="503"}"#,
            1.0,
        ),
        (
            r#"sockwarden_upstream_connect_failures_total{errno="ECONNREFUSED"}"#,
            1.0,
        ),
        // The second allowed request reused the pooled connection.
        ("sockwarden_upstream_connections_opened_total", 1.0),
        // The latency histograms count the same events.
        (
            r#"sockwarden_request_duration_seconds_count{policy="analytics",verdict="allowed"}"#,
            2.0,
        ),
        (
            r#"sockwarden_request_duration_seconds_count{policy="analytics",verdict="denied"}"#,
            3.0,
        ),
        (
            r#"sockwarden_request_duration_seconds_count{policy="analytics",verdict="error"}"#,
            1.0,
        ),
        (
            r#"sockwarden_first_byte_seconds_count{policy="analytics"}"#,
            2.0,
        ),
        ("sockwarden_upstream_connect_duration_seconds_count", 1.0),
        (
            r#"sockwarden_request_duration_seconds_bucket{policy="analytics",verdict="allowed",le="+Inf"}"#,
            2.0,
        ),
    ]);
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

    // Admin API: an index, health, the configuration in force and what it resolved to.
    let (status, index) = sw.admin_get("/").expect("index");
    assert_eq!(status, 200);
    for endpoint in [
        "/metrics",
        "/healthz",
        "/readyz",
        "/config_dump",
        "POST /reload",
    ] {
        assert!(index.contains(endpoint), "{endpoint} in {index}");
    }
    assert_eq!(sw.admin_get("/healthz").map(|r| r.0), Some(200));
    let (_, metrics) = sw.admin_get("/metrics").expect("metrics");
    let build = format!(
        "sockwarden_build_info{{version=\"{}\",commit=\"",
        env!("CARGO_PKG_VERSION")
    );
    assert!(metrics.contains(&build), "{build} in /metrics");
    // The process's own CPU, memory and descriptors.
    let fds = sw.metric("process_open_fds");
    assert!(fds >= 5.0, "open fds: {fds}");
    assert!(sw.metric("process_resident_memory_bytes") > 1e6);
    assert!(sw.metric("process_max_fds") >= fds);
    let (status, dump) = sw.admin_get("/config_dump").expect("config_dump");
    assert_eq!(status, 200);
    let dump: serde_json::Value = serde_json::from_str(&dump).expect("config_dump is JSON");
    assert_eq!(dump["policies"][0]["name"], "analytics");
    assert_eq!(
        dump["policies"][0]["egress"][0]["ports"],
        serde_json::json!([80, 8080])
    );
    assert_eq!(dump["upstream"]["connect_timeout"], "2s");
    assert_eq!(
        dump["bpf"]["cgroup_root"],
        serde_json::Value::Null,
        "as configured"
    );
    assert_eq!(dump["forwarding"]["engine"], "auto", "as configured");
    let mount = crate::cgroup::cgroup2_mount();
    assert_eq!(dump["resolved"]["cgroup_root"], mount.display().to_string());
    assert_eq!(dump["resolved"]["forwarding_engine"], "splice");

    let status = sw.stop();
    assert!(status.success(), "exit {status:?}: {}", sw.stderr());
    // Stopped, still enforced (lifecycle:: covers the stop paths).
    assert!(
        sw.pin.join("links/sw_connect4").exists(),
        "links stay pinned"
    );
    assert!(
        tcp_connect(&topo.node, Some(&cg), "10.77.1.10", 81).contains("Operation not permitted")
    );
}

#[test]
fn workload_in_its_own_namespace_ipv4_and_ipv6() {
    let (tag, topo, origin4, cg) = scene("pod", "pod", OriginConfig::default());
    let origin6 = origin_at(&topo, "[fd77:1::10]:80", OriginConfig::default());
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
    let (tag, topo, origin, cg) = scene(
        "s3",
        "s3",
        OriginConfig {
            close_after: Some(100),
            ..OriginConfig::default()
        },
    );
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
fn a_killed_run_fails_closed_and_the_next_run_takes_over() {
    let (tag, topo, cg) = bare_scene("kill", "app");
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
            .contains("an earlier run's programs were still enforcing"),
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
    assert!(
        tcp_connect(&topo.node, Some(&cg), "10.77.1.10", 81).contains("Operation not permitted"),
        "still enforced after a clean exit"
    );
    drop(first);
}

/// `sockwarden features`: its output, and its table.
fn features() -> (std::process::Output, String) {
    require_root();
    let out = std::process::Command::new(crate::sw::BIN)
        .arg("features")
        .output()
        .expect("sockwarden features");
    let table = stdout(&out);
    (out, table)
}

#[test]
fn the_feature_probe_finds_everything_on_this_kernel() {
    let (out, table) = features();
    assert!(
        out.status.success(),
        "{table}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The required features; the optional ones follow a blank line.
    let rows: Vec<&str> = table
        .lines()
        .skip(1)
        .take_while(|l| !l.is_empty())
        .collect();
    assert!(rows.len() >= 19, "{table}");
    for row in rows {
        assert!(row.contains(" yes "), "{row}");
    }
}

/// The kTLS probe agrees with the kernel: after it ran (it loads the `tls`
/// module where there is one), `tcp_available_ulp` lists `tls` exactly when
/// `features` says kTLS is present. This host's kernel has none; Debian's
/// kernels in the matrix do.
#[test]
fn the_ktls_probe_agrees_with_the_kernel() {
    let (_, table) = features();
    let row = table
        .lines()
        .find(|l| l.starts_with("kTLS"))
        .unwrap_or_else(|| panic!("no kTLS row: {table}"));
    let ulps = std::fs::read_to_string("/proc/sys/net/ipv4/tcp_available_ulp").unwrap_or_default();
    let listed = ulps.split_whitespace().any(|u| u == "tls");
    assert_eq!(
        row.contains(" yes "),
        listed,
        "{row} vs tcp_available_ulp {ulps:?}"
    );
}

#[test]
fn the_debug_log_traces_each_decision() {
    let (tag, topo, _origin, cg) = scene("debug", "analytics", OriginConfig::default());
    let env = [("SOCKWARDEN_LOG", std::ffi::OsStr::new("debug"))];
    let sw = Sockwarden::spawn_with(
        &topo.node,
        &tag,
        &tag,
        &policy("analytics", cg.rel()),
        None,
        &[],
        &env,
    );
    sw.wait_ready();
    let team = ["-H", "x-team: analytics"];
    let status = curl_status(&topo.node, Some(&cg), &team, "http://10.77.1.10/data/10");
    assert_eq!(status, "200");
    let log = crate::common::wait_for(
        Duration::from_secs(5),
        || sw.stderr(),
        |l| l.contains("judged a request"),
    );
    for line in [
        "classified a redirected connection",
        "opening=\"plain HTTP\"",
        "body engine",
        "judged a request",
        "decision=Allow",
        "opening a new upstream connection",
        "chose the upstream source",
    ] {
        assert!(log.contains(line), "{line:?} in the debug log:\n{log}");
    }
}
