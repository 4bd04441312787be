//! Kernel tier: `sockwarden status` and the CAP_NET_RAW watch of `run`, with
//! real processes in a policy cgroup. Whether AF_PACKET can be refused is
//! computed from /sys/kernel/security/lsm and a load of a BPF LSM program,
//! so the warnings are asserted present exactly where they must be: on this
//! project's development host (the BPF LSM is listed, but loading a BPF LSM
//! program fails with EPERM) and not in the kernel matrix's 6.1 guest
//! (Debian's CONFIG_LSM lists bpf, and its programs load).
//! Root is required; the test never skips.

use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use crate::cgroup::TestCgroup;
use crate::common::patience;
use crate::support::command_in;
use crate::sw::{bare_scene, Sockwarden, BIN};

/// Children killed and reaped when dropped (before their cgroup goes).
/// They sleep far longer than the test runs, even under emulation (the
/// kernel matrix's TCG guests take a minute for it).
struct Procs(Vec<Child>);

impl Drop for Procs {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Procs {
    /// `argv` in `cgroup`; returns its pid once it runs `sleep` (the
    /// wrappers exec it).
    fn spawn(&mut self, cgroup: &TestCgroup, argv: &[&str]) -> u32 {
        let child = command_in(None, Some(cgroup.path()), argv[0])
            .args(&argv[1..])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {argv:?}: {e}"));
        let pid = child.id();
        self.0.push(child);
        let deadline = Instant::now() + patience(Duration::from_secs(5));
        loop {
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            if comm.trim() == "sleep" {
                return pid;
            }
            assert!(
                Instant::now() < deadline,
                "{argv:?} did not exec sleep: {comm:?}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// A file removed when dropped.
struct TempFile(PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// What the test expects: AF_PACKET refused only where the BPF LSM is in
/// the active list and the kernel loads BPF LSM programs.
fn af_packet_refused() -> bool {
    let listed = std::fs::read_to_string("/sys/kernel/security/lsm")
        .map(|l| l.trim().split(',').any(|m| m == "bpf"))
        .unwrap_or(false);
    listed && sockwarden::features::lsm_program_type() == Ok(true)
}

/// `sockwarden status` in `netns` (where the admin listener is), or in
/// this test's own namespace.
fn status_in(netns: Option<&crate::netns::Netns>, config: &std::path::Path) -> String {
    let out = command_in(netns.map(|n| n.path()).as_deref(), None, BIN)
        .args(["status", "--config"])
        .arg(config)
        .output()
        .expect("run sockwarden status");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "status exited {:?}: {stdout}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

fn warned(report: &str, pid: u32) -> bool {
    report
        .lines()
        .any(|l| l.starts_with("warning: policy pods: ") && l.contains(&format!(" pid {pid} (")))
}

#[test]
fn status_counts_processes_and_warns_about_cap_net_raw() {
    let (tag, topo, cg) = bare_scene("status", "pods");
    let child = TestCgroup::new(&format!("{}/child", cg.rel()));
    let mut procs = Procs(Vec::new());
    // Root: holds CAP_NET_RAW.
    let holder = procs.spawn(&cg, &["sleep", "600"]);
    // Nobody, full bounding set, no_new_privs off: can gain it (ping's file
    // capability); in a cgroup below the policy's.
    let gainer = procs.spawn(
        &child,
        &[
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "sleep",
            "600",
        ],
    );
    // Nobody with no_new_privs: can never gain it.
    let nnp = procs.spawn(
        &cg,
        &[
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--no-new-privs",
            "sleep",
            "600",
        ],
    );
    // Root that dropped it from its bounding set before exec.
    let dropped = procs.spawn(
        &cg,
        &["capsh", "--drop=cap_net_raw", "--", "-c", "exec sleep 600"],
    );

    let body = format!(
        "policies:\n  - name: pods\n    cgroup: {}\n    egress:\n\
         \x20     - to: [\"10.77.1.0/24\"]\n        ports: [80]\n\
         \x20 - name: later\n    cgroup: /sockwarden-test-{tag}/later\n    egress:\n\
         \x20     - to: [\"10.77.1.0/24\"]\n        ports: [80]\n",
        cg.rel()
    );
    let refused = af_packet_refused();
    let check = |report: &str, pinned: bool| {
        assert!(report.contains("config "), "{report}");
        assert!(
            report.contains(&format!(
                "policy pods: cgroup {}: 4 processes, 2 hold or can gain CAP_NET_RAW\n",
                cg.rel()
            )),
            "{report}"
        );
        assert!(
            report.contains(&format!(
                "policy later: cgroup /sockwarden-test-{tag}/later: does not exist\n"
            )),
            "{report}"
        );
        assert!(
            report.contains(&format!(
                "warning: policy later: cgroup /sockwarden-test-{tag}/later does not exist: \
                 nothing is enforced for this policy until it is created"
            )),
            "{report}"
        );
        let links = report
            .lines()
            .find(|l| l.starts_with("links: "))
            .unwrap_or_else(|| panic!("no links line: {report}"));
        if pinned {
            assert!(
                links.contains("sw_connect4") && links.contains("sw_connect6"),
                "{links}"
            );
        } else {
            assert!(links.starts_with("links: none pinned"), "{links}");
        }
        assert_eq!(
            report.contains("AF_PACKET sockets from policy cgroups: refused"),
            refused,
            "{report}"
        );
        assert_eq!(
            warned(report, holder),
            !refused,
            "holder {holder}: {report}"
        );
        assert_eq!(
            warned(report, gainer),
            !refused,
            "gainer {gainer}: {report}"
        );
        assert!(!warned(report, nnp), "no_new_privs {nnp}: {report}");
        assert!(!warned(report, dropped), "dropped {dropped}: {report}");
        if !refused {
            assert!(
                report.contains(&format!(
                    "warning: policy pods: pid {holder} (sleep) holds CAP_NET_RAW and "
                )),
                "{report}"
            );
            assert!(
                report.contains(&format!("pid {gainer} (sleep) can gain CAP_NET_RAW")),
                "{report}"
            );
        }
    };

    // No sockwarden running: nothing pinned.
    let config = TempFile(PathBuf::from(format!("/tmp/sw-status-{tag}.yaml")));
    std::fs::write(
        &config.0,
        Sockwarden::config(&tag, std::path::Path::new("/tmp"), &body),
    )
    .expect("write config");
    let report = status_in(None, &config.0);
    check(&report, false);
    assert!(
        report.starts_with("not running: the admin listener 127.0.0.1:9901 did not answer"),
        "{report}"
    );

    // A running sockwarden: its links, its gauges and its startup warnings.
    let sw = Sockwarden::start(&topo.node, &tag, &body);
    let report = status_in(Some(&topo.node), &sw.dir.join("sockwarden.yaml"));
    check(&report, true);
    // From the admin listener: uptime, the configuration in force, each
    // policy's mode and cgroup state, the pool and what is in flight.
    assert!(
        report.starts_with("running: up ")
            && report.contains(", configuration generation 1, sha256:"),
        "{report}"
    );
    for line in [
        format!("  policy \"pods\" on cgroup {} (mode enforce): cgroup present, enforced\n", cg.rel()),
        format!("  policy \"later\" on cgroup /sockwarden-test-{tag}/later (mode enforce): cgroup missing: nothing enforced until it exists\n"),
        "    requests: 0 allowed, 0 denied, 0 errors; connects: 0 allowed, 0 redirected, 0 denied, 0 let through by audit; redirected connections open: 0 of ".to_string(),
        "  upstream connections: 0 open, 0 idle in the pool; workload connections in flight: 0\n".to_string(),
    ] {
        assert!(report.contains(&line), "{line:?} in:\n{report}");
    }
    assert_eq!(
        sw.metric("sockwarden_bpf_lsm_active"),
        if refused { 1.0 } else { 0.0 }
    );
    let series = "sockwarden_net_raw_processes{policy=\"pods\"}";
    let want = if refused { 0.0 } else { 2.0 };
    let deadline = Instant::now() + patience(Duration::from_secs(5));
    while sw.metric(series) != want && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(sw.metric(series), want, "{}", sw.stderr());
    assert_eq!(
        sw.metric("sockwarden_net_raw_processes{policy=\"later\"}"),
        0.0
    );
    // Which policy cgroups exist, as the watcher found them.
    assert_eq!(
        sw.metric("sockwarden_policy_cgroup_present{policy=\"pods\"}"),
        1.0
    );
    assert_eq!(
        sw.metric("sockwarden_policy_cgroup_present{policy=\"later\"}"),
        0.0
    );
    let log = sw.stderr();
    for (pid, expected) in [
        (holder, !refused),
        (gainer, !refused),
        (nnp, false),
        (dropped, false),
    ] {
        assert_eq!(
            log.contains(&format!("policy pods: pid {pid} (sleep) ")),
            expected,
            "pid {pid}: {log}"
        );
    }
    drop(procs);
}
