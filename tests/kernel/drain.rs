//! Kernel tier: SIGTERM drains the proxy. A response in flight when
//! sockwarden is told to stop is delivered whole if it ends within the
//! drain deadline (`proxy.drain_timeout`, 5 s by default); one that would
//! outlive it is cut then. Either way the process exits 0, and says how
//! many connections finished and how many were cut.

use std::time::{Duration, Instant};

use crate::common::origin::OriginConfig;
use crate::common::{patience, wait_for};
use crate::support::command_in;
use crate::sw::{scene, stdout, Sockwarden};

/// `proxy.drain_timeout`'s default.
const DRAIN_DEADLINE: Duration = Duration::from_secs(5);

/// Downloads `bytes` from the origin at `rate` (curl's --limit-rate) in
/// the pod while sockwarden (with `proxy`: more `proxy` fields, indented)
/// is stopped 1 s into the body; returns curl's "status size" line, how
/// long the stop took, and sockwarden's log.
fn stop_during_download(
    test: &str,
    (bytes, rate): (u64, &str),
    proxy: &str,
) -> (String, Duration, String) {
    let (tag, topo, origin, cg) = scene(test, "pod", OriginConfig::default());
    // Linux's default buffer maxima (this machine raises tcp_rmem to 32 MiB):
    // the path then buffers about 22 MiB, so a larger body can only arrive
    // whole if the proxy keeps forwarding after SIGTERM.
    for ns in [&topo.origin, &topo.node, &topo.pod] {
        ns.sysctl("net.ipv4.tcp_rmem", "4096 131072 6291456");
        ns.sysctl("net.ipv4.tcp_wmem", "4096 16384 4194304");
    }
    let policy = format!(
        "{proxy}policies:\n  - {{ name: drain, cgroup: {}, egress: [{{ to: [\"10.77.1.0/24\"], ports: [80], http: [{{ method: GET }}] }}] }}\n",
        cg.rel()
    );
    let mut sw = Sockwarden::start(&topo.node, &tag, &policy);
    let url = format!("http://10.77.1.10/data/{bytes}");
    let (ns, cgroup) = (topo.pod.path(), cg.path().to_path_buf());
    let rate = rate.to_string();
    let curl = std::thread::spawn(move || {
        command_in(Some(&ns), Some(&cgroup), "curl")
            .args(["-s", "-o", "/dev/null", "--max-time", "30", "--limit-rate"])
            .args([rate.as_str(), "-w", "%{http_code} %{size_download}", &url])
            .output()
            .expect("curl")
    });
    // 1 s into the body (an emulated guest may take a while to start curl).
    let sending = wait_for(
        Duration::from_secs(10),
        || origin.body_bytes_sent(),
        |&n| n > 0,
    );
    assert!(sending > 0, "the download never started");
    std::thread::sleep(Duration::from_secs(1));
    let started = Instant::now();
    let status = sw.stop();
    let took = started.elapsed();
    let log = sw.stderr();
    assert!(status.success(), "sockwarden exit: {status}\n{log}");
    let out = curl.join().expect("curl thread");
    (stdout(&out), took, log)
}

#[test]
fn sigterm_lets_a_response_in_flight_finish() {
    // 24 MiB at 8 MiB/s: 2 s left when the stop begins.
    let (curl, took, log) = stop_during_download("drain-ok", (24 << 20, "8M"), "");
    assert_eq!(curl, format!("200 {}", 24 << 20), "the whole body arrived");
    assert!(log.contains("finished=1 cut=0"), "drain outcome:\n{log}");
    assert!(
        took < DRAIN_DEADLINE + Duration::from_secs(4),
        "stop took {took:?}"
    );
}

#[test]
fn sigterm_cuts_a_response_that_outlives_the_drain_deadline() {
    // 64 MiB at 1 MiB/s: a minute left when the stop begins, and a drain
    // deadline shorter than the default.
    let deadline = Duration::from_secs(3);
    let (curl, took, log) = stop_during_download(
        "drain-cut",
        (64 << 20, "1M"),
        &format!("  drain_timeout: {}s\n", deadline.as_secs()),
    );
    let size: u64 = curl
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("curl output {curl:?}"));
    assert!(size < 64 << 20, "cut short: {curl}");
    assert!(log.contains("finished=0 cut=1"), "drain outcome:\n{log}");
    assert!(took >= deadline, "waited the deadline out: {took:?}");
    let bound = patience(deadline + Duration::from_secs(2));
    assert!(took < bound, "no longer than the deadline: {took:?}");
}
