//! Kernel tier: the outage sockwarden exists for, reproduced. The workload
//! (pod), the node (proxy) and the origin each live in their own network
//! namespace; see ../shared/DESIGN.md for the story.

use std::process::Output;
use std::time::{Duration, Instant};

use crate::cgroup::TestCgroup;
use crate::common::origin::OriginConfig;
use crate::common::wait_for;
use crate::netns::Topology;
use crate::support::{require_root, unique_tag};
use crate::sw::{
    bare_scene, curl_status, curl_write_out, entry_part, map_dump, origin_at, scene, stdout,
    workload, Sockwarden, BIN,
};

fn policy(cgroup: &str, extra_rule: &str) -> String {
    format!(
        "policies:\n  - name: incident\n    cgroup: {cgroup}\n    egress:\n\
         \x20     - to: [\"10.77.1.0/24\"]\n        ports: [80]\n        http:\n\
         \x20         - method: \"GET|HEAD\"\n{extra_rule}"
    )
}

/// One curl in the pod, one keep-alive connection, `n` sequential GETs of
/// `path`; prints `write_out` for each.
fn curl_many(
    topo: &Topology,
    cg: &TestCgroup,
    sw: &Sockwarden,
    name: &str,
    n: usize,
    path: &str,
    write_out: &str,
) -> std::thread::JoinHandle<Output> {
    let mut cfg = format!("silent\nwrite-out = \"{write_out}\\n\"\n");
    for _ in 0..n {
        cfg.push_str(&format!(
            "url = \"http://10.77.1.10{path}\"\noutput = \"/dev/null\"\n"
        ));
    }
    let file = sw.dir.join(format!("{name}.curl"));
    std::fs::write(&file, cfg).expect("curl config");
    let ns = topo.pod.path();
    let cg = cg.path().to_path_buf();
    std::thread::spawn(move || {
        crate::support::command_in(Some(&ns), Some(&cg), "curl")
            .args(["--config", file.to_str().expect("utf-8 path")])
            .output()
            .expect("curl")
    })
}

struct IncidentRun {
    client_errors: usize,
    eaddrnotavail: f64,
    fallbacks: f64,
    origin_peers: Vec<std::net::SocketAddr>,
    /// Origin connections that came from another port than any of the
    /// workload's connections.
    other_ports: usize,
    upstream_opened: f64,
}

/// 4 keep-alive connections × 2,500 requests, preserve-ip-port, against an
/// origin that closes every connection after 100 requests and keeps the old
/// one half-open for a while (so the proxy closes first and its side of the
/// tuple sits in FIN_WAIT/TIME_WAIT when the next connection wants it).
fn incident(skip_tuple_check: bool) -> IncidentRun {
    const CONNS: usize = 4;
    const PER_CONN: usize = 2_500;
    let tag = unique_tag(if skip_tuple_check {
        "inc-skip"
    } else {
        "incident"
    });
    let topo = Topology::new(&tag);
    let origin = origin_at(
        &topo,
        "10.77.1.10:80",
        OriginConfig {
            close_after: Some(100),
            linger_after_close: Some(Duration::from_millis(300)),
            ..OriginConfig::default()
        },
    );
    let cg = TestCgroup::new(&format!("/sockwarden-test-{tag}/pod"));
    let body = format!(
        "upstream:\n  source: preserve-ip-port\ntesting:\n  skip_tuple_check: {skip_tuple_check}\n{}",
        policy(cg.rel(), "")
    );
    let sw = Sockwarden::start(&topo.node, &tag, &body);

    let clients: Vec<_> = (0..CONNS)
        .map(|i| {
            curl_many(
                &topo,
                &cg,
                &sw,
                &format!("c{i}"),
                PER_CONN,
                "/data/64",
                "%{http_code} %{local_port}",
            )
        })
        .collect();
    let mut statuses = Vec::new();
    for c in clients {
        let out = c.join().expect("curl thread");
        statuses.extend(stdout(&out).lines().map(str::to_string).collect::<Vec<_>>());
    }
    assert_eq!(statuses.len(), CONNS * PER_CONN, "every request answered");
    let client_errors = statuses.iter().filter(|s| !s.starts_with("200 ")).count();
    let client_ports: std::collections::HashSet<u16> = statuses
        .iter()
        .filter_map(|s| s.split(' ').nth(1)?.parse().ok())
        .collect();
    assert_eq!(
        client_ports.len(),
        CONNS,
        "one connection per curl: {client_ports:?}"
    );
    let other_ports = origin
        .peer_list()
        .iter()
        .filter(|p| !client_ports.contains(&p.port()))
        .count();
    assert_eq!(origin.requests(), (CONNS * PER_CONN) as u64);
    IncidentRun {
        client_errors,
        eaddrnotavail: sw
            .metric(r#"sockwarden_upstream_connect_failures_total{errno="EADDRNOTAVAIL"}"#),
        fallbacks: sw.metric("sockwarden_source_port_fallbacks_total"),
        origin_peers: origin.peers(),
        other_ports,
        upstream_opened: sw.metric("sockwarden_upstream_connections_opened_total"),
    }
}

#[test]
fn incident_scenario_preserve_ip_port_has_no_errors() {
    require_root();
    let run = incident(false);
    assert_eq!(run.client_errors, 0, "client-visible errors");
    assert_eq!(
        run.eaddrnotavail, 0.0,
        "the tuple check avoids EADDRNOTAVAIL"
    );
    // Each client connection reconnects 24 times after its first 100; most
    // of those find the old tuple still held. A fallback is counted once
    // per upstream connection bound to another port, never per request:
    // exactly the origin's connections from a port no workload used.
    eprintln!(
        "incident: {} upstream connections, {} fallbacks",
        run.upstream_opened, run.fallbacks
    );
    assert!(run.fallbacks > 0.0, "fallbacks: {}", run.fallbacks);
    assert_eq!(
        run.fallbacks, run.other_ports as f64,
        "fallbacks against the origin's view"
    );
    assert!(
        run.fallbacks < run.upstream_opened,
        "{} of {}",
        run.fallbacks,
        run.upstream_opened
    );
    let ips: Vec<_> = run
        .origin_peers
        .iter()
        .map(|p| p.ip().to_string())
        .collect();
    assert_eq!(
        ips,
        vec!["10.77.2.2".to_string()],
        "the origin sees only the workload's IP"
    );
}

#[test]
fn incident_scenario_without_the_tuple_check_hits_eaddrnotavail() {
    require_root();
    let run = incident(true);
    // The test-only switch turns the check off: the collision is real...
    assert!(
        run.eaddrnotavail > 0.0,
        "EADDRNOTAVAIL count: {}",
        run.eaddrnotavail
    );
    assert_eq!(run.fallbacks, 0.0);
    assert!(
        run.other_ports > 0,
        "the EADDRNOTAVAIL retries left from other ports"
    );
    // ...and the one retry on a fresh port still hides it from the client.
    assert_eq!(run.client_errors, 0);
}

#[test]
fn idle_race_costs_the_client_nothing() {
    let (tag, topo, origin, cg) = scene(
        "idlerace",
        "pod",
        OriginConfig {
            idle_timeout: Some(Duration::from_millis(200)),
            ..OriginConfig::default()
        },
    );
    let sw = Sockwarden::start(&topo.node, &tag, &policy(cg.rel(), ""));
    // A request every ~200 ms (jittered around the origin's idle timeout),
    // each on a new client connection, so each reuses the pooled upstream.
    let script = "for i in $(seq 1 40); do \
        curl -s -o /dev/null -w '%{http_code}\\n' --max-time 10 http://10.77.1.10/data/8; \
        sleep 0.$((180 + RANDOM % 40)); done";
    let out = workload(&topo.pod, &cg, "bash", &["-c", script]);
    let statuses: Vec<String> = stdout(&out).lines().map(str::to_string).collect();
    assert_eq!(statuses.len(), 40);
    assert!(statuses.iter().all(|s| s == "200"), "{statuses:?}");
    let races = sw.metric(r#"sockwarden_upstream_retries_total{reason="idle_race"}"#);
    eprintln!(
        "idle race: {} origin connections, {races} idle-race retries",
        origin.connections()
    );
    assert!(races > 0.0, "the race happened and was retried");
    assert_eq!(
        origin.requests(),
        40,
        "every request was answered exactly once"
    );
}

#[test]
fn down_origin_stays_within_the_retry_budget() {
    const CLIENTS: usize = 8;
    const PER_CLIENT: usize = 25;
    let (tag, topo, cg) = bare_scene("down", "pod");
    // Nothing listens on 10.77.1.10:80: every connect is refused.
    let body = format!(
        "upstream:\n  retries:\n    attempts: 3\n    on: [connect-failure]\n    backoff: 50ms\n{}",
        policy(cg.rel(), "")
    );
    let sw = Sockwarden::start(&topo.node, &tag, &body);

    let started = Instant::now();
    let clients: Vec<_> = (0..CLIENTS)
        .map(|i| {
            let write_out = "%{http_code} %header{sockwarden-error}";
            curl_many(
                &topo,
                &cg,
                &sw,
                &format!("down{i}"),
                PER_CLIENT,
                "/data/8",
                write_out,
            )
        })
        .collect();
    let mut lines = Vec::new();
    for c in clients {
        lines.extend(
            stdout(&c.join().expect("curl"))
                .lines()
                .map(str::to_string)
                .collect::<Vec<_>>(),
        );
    }
    let took = started.elapsed();
    let n = (CLIENTS * PER_CLIENT) as f64;
    assert_eq!(lines.len(), CLIENTS * PER_CLIENT);
    for l in &lines {
        assert!(l.starts_with("503 ") && l.contains("ECONNREFUSED"), "{l}");
    }
    // A retried request's 503 names every attempt.
    assert!(
        lines
            .iter()
            .any(|l| l
                .contains("attempts: connect failed: ECONNREFUSED; connect failed: ECONNREFUSED")),
        "{lines:?}"
    );
    let attempts = sw.metric(r#"sockwarden_upstream_connect_failures_total{errno="ECONNREFUSED"}"#);
    let retries = sw.metric(r#"sockwarden_upstream_retries_total{reason="connect_failure"}"#);
    let exhausted = sw.metric("sockwarden_upstream_retry_budget_exhausted_total");
    eprintln!("down origin: {n} requests, {attempts} connect attempts, {retries} retries, {exhausted} refused by the budget, in {took:?}");
    assert_eq!(attempts, n + retries, "one connect per attempt");
    // Without a budget a down origin sees (1 + 3) × the requests.
    assert!(attempts < 2.0 * n, "attempts {attempts} for {n} requests");
    assert!(exhausted > 0.0, "the budget refused retries");
    // At most 3 retries at a time, each holding its slot for at least half
    // the 50 ms base backoff.
    let bound = 3.0 * took.as_secs_f64() / 0.025 + 3.0;
    assert!(
        retries <= bound,
        "{retries} retries in {took:?} exceed the budget's {bound}"
    );
    // The access log: attempts per request add up, and exactly the
    // requests that were retried carry URX.
    let log = sw.access_log();
    assert_eq!(log.len(), CLIENTS * PER_CLIENT);
    let logged: u64 = log
        .iter()
        .map(|l| l["upstream_attempts"].as_u64().unwrap_or(0))
        .sum();
    assert_eq!(logged as f64, attempts);
    for l in &log {
        let retried = l["upstream_attempts"].as_u64() > Some(1);
        let urx = l["flags"]
            .as_array()
            .is_some_and(|f| f.iter().any(|x| x == "URX"));
        assert_eq!(retried, urx, "{l}");
    }
}

#[test]
fn bpftool_shows_the_upstream_tuple_open_and_in_time_wait() {
    let (tag, topo, _origin, cg) = scene("bpftool", "pod", OriginConfig::default());
    let body = policy(
        cg.rel(),
        "        upstream:\n          max_requests_per_connection: 2\n",
    );
    let sw = Sockwarden::start(&topo.node, &tag, &body);
    let get = || {
        let status = curl_status(&topo.pod, Some(&cg), &[], "http://10.77.1.10/data/8");
        assert_eq!(status, "200");
    };
    let origin: Vec<u64> = vec![0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 255, 255, 10, 77, 1, 10];
    let upstream_state = || -> Option<String> {
        map_dump(&sw.pin, "tuples").iter().find_map(|e| {
            let (key, value) = (entry_part(e, "key"), entry_part(e, "value"));
            let daddr: Vec<u64> = serde_json::from_value(key["daddr"].clone()).ok()?;
            (daddr == origin && key["dport"] == 80 && value["role"] == "SW_ROLE_UPSTREAM")
                .then(|| value["state"].as_str().unwrap_or_default().to_string())
        })
    };
    get(); // the upstream connection stays pooled: ESTABLISHED
    assert_eq!(upstream_state().as_deref(), Some("SW_TCP_ESTABLISHED"));
    get(); // second request: max_requests reached, the proxy closes first
    let state = wait_for(Duration::from_secs(5), upstream_state, |s| {
        s.as_deref() == Some("SW_TCP_TIME_WAIT")
    });
    assert_eq!(state.as_deref(), Some("SW_TCP_TIME_WAIT"));
    // The same map, for operators without bpftool.
    let out = std::process::Command::new(BIN)
        .args(["tuples", "--pin-path"])
        .arg(&sw.pin)
        .output()
        .expect("sockwarden tuples");
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.lines().any(|l| l.contains("10.77.1.10:80")
            && l.contains("TIME_WAIT")
            && l.contains("upstream")),
        "{table}"
    );
}

#[test]
fn preserve_ip_leaves_from_the_workload_ip_with_a_kernel_port() {
    let (tag, topo, origin, cg) = scene("pip", "pod", OriginConfig::default());
    let body = format!("upstream:\n  source: preserve-ip\n{}", policy(cg.rel(), ""));
    let sw = Sockwarden::start(&topo.node, &tag, &body);
    let out = curl_write_out(
        &topo.pod,
        Some(&cg),
        "%{http_code} %{local_port}",
        &[],
        "http://10.77.1.10/data/8",
    );
    let (status, client_port) = out.split_once(' ').expect("status and port");
    assert_eq!(status, "200");
    let peers = origin.peers();
    assert_eq!(peers.len(), 1);
    assert_eq!(peers[0].ip().to_string(), "10.77.2.2");
    assert_ne!(
        peers[0].port().to_string(),
        client_port,
        "preserve-ip keeps the IP only"
    );
    assert_eq!(sw.metric("sockwarden_source_port_fallbacks_total"), 0.0);
}

#[test]
fn refuses_a_preserve_mode_it_cannot_set_up() {
    let (tag, topo, cg) = bare_scene("noif", "pod");
    let body = format!(
        "upstream:\n  source: preserve-ip-port\ntransparent:\n  interfaces: [nope0]\n{}",
        policy(cg.rel(), "")
    );
    let mut sw = Sockwarden::spawn(&topo.node, &tag, &tag, &body, None);
    let status = sw.wait_exit(Duration::from_secs(10));
    assert_eq!(status.code(), Some(1));
    let err = sw.stderr();
    assert!(
        err.contains("setting up the return path for upstream.source preserve modes")
            && err.contains("interface \"nope0\" (transparent.interfaces) does not exist"),
        "{err}"
    );
    assert!(!sw.pin.exists(), "nothing left attached");
}
