//! Kernel tier: the stop paths. SIGTERM and SIGKILL alike leave the
//! programs attached (fail closed): connects that need the proxy are
//! refused, connects no rule allows are denied, L4 rules keep working. The
//! next start takes the attached links over without a moment unjudged; only
//! `sockwarden detach` removes enforcement, and it says what it removed. A
//! second instance on another pin path refuses to start beside the first.

use std::time::Duration;

use crate::cgroup::TestCgroup;
use crate::common::origin::{Origin, OriginConfig};
use crate::netns::Topology;
use crate::sw::{
    background_workload, bare_scene, curl_status, origin_at, scene, tcp_connect, Sockwarden, BIN,
};

/// GET through the proxy to 10.77.1.0/24:80; L4 to 10.77.1.10:9000.
/// Nothing allows 10.77.1.10:9001.
fn policy(cgroup: &str) -> String {
    format!(
        "policies:\n  - name: life\n    cgroup: {cgroup}\n    egress:\n\
         \x20     - {{ to: [\"10.77.1.0/24\"], ports: [80], http: [{{ method: GET }}] }}\n\
         \x20     - {{ to: [\"10.77.1.10/32\"], ports: [9000] }}\n"
    )
}

/// `sockwarden detach --pin-path` for `sw`'s pin path: (exit code, stdout, stderr).
fn detach(sw: &Sockwarden) -> (Option<i32>, String, String) {
    let out = std::process::Command::new(BIN)
        .arg("detach")
        .arg("--pin-path")
        .arg(&sw.pin)
        .output()
        .expect("run sockwarden detach");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// What the workload sees at each door while no sockwarden runs after
/// `sw` stopped: everything still judged.
fn assert_enforced_without_a_proxy(topo: &Topology, cg: &TestCgroup, origin: &Origin) {
    let served = origin.requests();
    let at = |port| tcp_connect(&topo.node, Some(cg), "10.77.1.10", port);
    assert!(
        at(80).contains("Connection refused"),
        "an L7-governed connect is redirected to a proxy that is not there"
    );
    assert!(at(9001).contains("Operation not permitted"), "denied");
    assert_eq!(at(9000), "ok", "an L4 rule keeps working");
    assert_eq!(
        tcp_connect(&topo.node, None, "10.77.1.10", 80),
        "ok",
        "processes outside policy cgroups are untouched"
    );
    let code = curl_status(&topo.node, Some(cg), &[], "http://10.77.1.10/data/10");
    assert_eq!(code, "000", "no response without the proxy");
    assert_eq!(
        origin.requests(),
        served,
        "no request reached the origin unchecked"
    );
}

/// Stops `sw` with `signal`, then checks it failed closed and that
/// `detach` (and only detach) removes enforcement.
fn stop_fails_closed(test: &str, kill: bool) {
    let (tag, topo, origin, cg) = scene(test, "app", OriginConfig::default());
    let _l4 = origin_at(&topo, "10.77.1.10:9000", OriginConfig::default());
    // Listening where no rule allows: a bypass would connect.
    let _denied = origin_at(&topo, "10.77.1.10:9001", OriginConfig::default());
    let mut sw = Sockwarden::start(&topo.node, &tag, &policy(cg.rel()));
    let code = curl_status(&topo.node, Some(&cg), &[], "http://10.77.1.10/data/10");
    assert_eq!(code, "200", "{}", sw.stderr());
    if kill {
        sw.kill();
    } else {
        let status = sw.stop();
        assert!(status.success(), "exit {status:?}: {}", sw.stderr());
        assert!(
            sw.stderr().contains("enforcement stays in place"),
            "{}",
            sw.stderr()
        );
    }
    assert!(
        sw.pin.join("links/sw_connect4").exists(),
        "links stay pinned"
    );
    assert_enforced_without_a_proxy(&topo, &cg, &origin);

    let (code, out, err) = detach(&sw);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(
        out.contains(&format!("removed pins under {}", sw.pin.display()))
            && out.contains("sw_connect4")
            && out.contains("sw_egress"),
        "{out}"
    );
    assert!(!sw.pin.exists(), "detach removed the pins");
    assert_eq!(
        tcp_connect(&topo.node, Some(&cg), "10.77.1.10", 9001),
        "ok",
        "detached: nothing judges the workload any more"
    );
    let (code, out, _) = detach(&sw);
    assert_eq!(code, Some(0));
    assert!(out.starts_with("nothing to detach"), "{out}");
}

#[test]
fn sigterm_drains_and_leaves_enforcement_in_place() {
    stop_fails_closed("life-term", false);
}

#[test]
fn sigkill_leaves_enforcement_in_place() {
    stop_fails_closed("life-kill", true);
}

/// A workload that connect()s to 10.77.1.10:9001 (denied, but listening)
/// every 2 ms until `stop` exists (at most 120 s); prints the outcome
/// counts as JSON, e.g. {"EPERM": 812}.
const PROBE: &str = r#"
import errno, json, os, socket, sys, time
stop, counts, deadline = sys.argv[1], {}, time.time() + 120
started = False
while time.time() < deadline and not os.path.exists(stop):
    s = socket.socket()
    s.settimeout(1)
    try:
        s.connect(("10.77.1.10", 9001))
        k = "connected"
    except OSError as e:
        k = errno.errorcode.get(e.errno, str(e.errno))
    finally:
        s.close()
    counts[k] = counts.get(k, 0) + 1
    if not started:
        open(stop + ".started", "w").close()
        started = True
    time.sleep(0.002)
print(json.dumps(counts))
"#;

#[test]
fn each_start_takes_over_without_a_moment_unjudged() {
    let (tag, topo, _origin, cg) = scene("life-takeover", "app", OriginConfig::default());
    let _denied = origin_at(&topo, "10.77.1.10:9001", OriginConfig::default());
    let mut first = Sockwarden::start(&topo.node, &tag, &policy(cg.rel()));
    let stop = first.dir.join("probe.stop");
    let probe = background_workload(&topo.node, &cg, PROBE, &stop);
    // The probe is connecting before anything is stopped (an emulated
    // guest takes seconds to start Python).
    let started = stop.with_extension("stop.started");
    let up = crate::common::wait_for(Duration::from_secs(30), || started.exists(), |up| *up);
    assert!(up, "the probe did not start");
    // SIGTERM, start; SIGKILL, start: each start finds the earlier run's
    // programs attached and moves their links onto its own.
    let status = first.stop();
    assert!(status.success(), "{}", first.stderr());
    std::thread::sleep(Duration::from_millis(200));
    let mut second = Sockwarden::spawn(
        &topo.node,
        &tag,
        &format!("{tag}-2"),
        &policy(cg.rel()),
        None,
    );
    second.wait_ready();
    second.kill();
    std::thread::sleep(Duration::from_millis(200));
    let third = Sockwarden::spawn(
        &topo.node,
        &tag,
        &format!("{tag}-3"),
        &policy(cg.rel()),
        None,
    );
    third.wait_ready();
    std::thread::sleep(Duration::from_millis(300));
    std::fs::write(&stop, b"").expect("stop the probe");
    let out = probe.wait_with_output().expect("probe output");
    let counts: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("the probe prints JSON");

    for (run, sw) in [("second", &second), ("third", &third)] {
        let log = sw.stderr();
        assert!(
            log.contains("an earlier run's programs were still enforcing")
                && log.contains("taken_over=8"),
            "the {run} start took the links over:\n{log}"
        );
    }
    let map = counts.as_object().expect("counts");
    assert_eq!(
        map.keys().collect::<Vec<_>>(),
        ["EPERM"],
        "every connect denied: {counts}"
    );
    assert!(counts["EPERM"].as_u64().unwrap_or(0) > 50, "{counts}");
    let code = curl_status(&topo.node, Some(&cg), &[], "http://10.77.1.10/data/10");
    assert_eq!(code, "200", "the last run enforces and proxies");
    let parent = third.pin.parent().expect("pin parent").to_path_buf();
    let name = third
        .pin
        .file_name()
        .expect("pin name")
        .to_string_lossy()
        .into_owned();
    let aside: Vec<_> = std::fs::read_dir(parent)
        .expect("bpffs")
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with(&format!("{name}-previous-"))
        })
        .collect();
    assert!(
        aside.is_empty(),
        "the earlier runs' pins are gone: {aside:?}"
    );
    drop(first);
}

#[test]
fn detach_refuses_while_sockwarden_runs() {
    let (tag, topo, cg) = bare_scene("life-busy", "app");
    let sw = Sockwarden::start(&topo.node, &tag, &policy(cg.rel()));
    let (code, out, err) = detach(&sw);
    assert_eq!(code, Some(1), "{out}{err}");
    assert!(
        err.contains("a sockwarden is running with pin path"),
        "{err}"
    );
    assert!(sw.pin.join("links/sw_connect4").exists(), "nothing removed");
}

#[test]
fn a_second_enforcer_on_another_pin_path_is_refused() {
    let (tag, topo, cg) = bare_scene("life-one", "app");
    let first = Sockwarden::start(&topo.node, &tag, &policy(cg.rel()));
    let (other, other_topo, other_cg) = bare_scene("life-two", "app");
    let body = format!(
        "testing:\n  allow_other_enforcers: false\n{}",
        policy(other_cg.rel())
    );
    let mut second = Sockwarden::spawn(&other_topo.node, &other, &other, &body, None);
    let status = second.wait_exit(Duration::from_secs(15));
    assert_eq!(status.code(), Some(1), "{}", second.stderr());
    let err = second.stderr();
    assert!(
        err.contains("sockwarden programs of another instance are attached at cgroup")
            && err.contains(&format!(
                "linked from {}/links/sw_connect4",
                first.pin.display()
            ))
            && err.contains("A node has one enforcer"),
        "{err}"
    );
    assert!(
        !second.pin.exists(),
        "the refused instance attached nothing"
    );
    assert!(
        tcp_connect(&topo.node, Some(&cg), "10.77.1.10", 9001).contains("Operation not permitted"),
        "the first instance still enforces"
    );
}
