//! Kernel tier: sockwarden as a systemd service, without systemd as PID 1.
//! The notification protocol against a fake `NOTIFY_SOCKET` bound by the
//! test; the unit (deploy/systemd/sockwarden.service) through `systemd-analyze
//! verify`; scripts/install.sh into a DESTDIR; and privileges: the unit's
//! capability set enforces, each capability of it is needed (the run
//! without it is refused naming it), and an unprivileged user is told what
//! it lacks, never that the kernel lacks a feature. Root is required; no
//! test skips.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use crate::common::origin::OriginConfig;
use crate::common::{patience, wait_for};
use crate::support::{require_root, unique_tag};
use crate::sw::{curl_status, scene, stdout, tcp_connect, Sockwarden, BIN};

const UNIT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/deploy/systemd/sockwarden.service"
);
const REPO: &str = env!("CARGO_MANIFEST_DIR");

/// A policy for the scene's pod: GET to the origin through the proxy.
fn policy(cgroup: &str) -> String {
    format!(
        "policies:\n  - {{ name: svc, cgroup: {cgroup}, egress: [{{ to: [\"10.77.1.0/24\"], ports: [80], http: [{{ method: GET }}] }}] }}\n"
    )
}

/// A directory of its own, removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new(what: &str) -> Scratch {
        let dir = PathBuf::from(format!("/tmp/sw-{what}-{}", unique_tag(what)));
        std::fs::create_dir_all(&dir).expect("scratch dir");
        // Searchable by the unprivileged runs (a test runner's umask may be 077).
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `sockwarden run` in `node` with `body` (pins named by `tag`, files in
/// the directory named by `run`), through `launcher` (empty: directly),
/// `env` added.
fn spawn(
    node: &crate::netns::Netns,
    (tag, run): (&str, &str),
    body: &str,
    launcher: &[String],
    env: &[(&str, &std::ffi::OsStr)],
) -> Sockwarden {
    let launcher: Vec<&str> = launcher.iter().map(String::as_str).collect();
    Sockwarden::spawn_with(node, tag, run, body, None, &launcher, env)
}

/// The next datagram, or a panic after `wait` (stretched by [`patience`]).
fn datagram(socket: &UnixDatagram, wait: Duration, log: impl Fn() -> String) -> String {
    socket
        .set_read_timeout(Some(patience(wait)))
        .expect("timeout");
    let mut buf = [0u8; 4096];
    match socket.recv(&mut buf) {
        Ok(n) => String::from_utf8_lossy(&buf[..n]).into_owned(),
        Err(e) => panic!("no notification within {wait:?}: {e}\n{}", log()),
    }
}

#[test]
fn systemd_is_told_ready_once_enforcing_reloading_and_stopping() {
    let (tag, topo, _origin, cg) = scene("service-notify", "pod", OriginConfig::default());
    let scratch = Scratch::new("notify");
    let path = scratch.0.join("notify");
    let socket = UnixDatagram::bind(&path).expect("bind the fake NOTIFY_SOCKET");
    let env = [("NOTIFY_SOCKET", path.as_os_str())];
    let mut sw = spawn(&topo.node, (&tag, &tag), &policy(cg.rel()), &[], &env);
    let ready = datagram(&socket, Duration::from_secs(20), || sw.stderr());
    // At the moment READY=1 arrives, not after a poll: ready and enforcing.
    assert_eq!(
        sw.admin_get("/readyz").map(|(status, _)| status),
        Some(200),
        "/readyz when READY=1 arrived"
    );
    assert_eq!(
        curl_status(&topo.pod, Some(&cg), &[], "http://10.77.1.10/data/100"),
        "200",
        "a redirected GET when READY=1 arrived"
    );
    assert_eq!(
        ready,
        "READY=1\nSTATUS=enforcing 1 policy, proxy on 10.77.0.1:15001\n"
    );
    let logged = wait_for(
        Duration::from_secs(5),
        || sw.access_log().len(),
        |&n| n >= 1,
    );
    assert_eq!(logged, 1, "the GET went through the proxy");
    // Nothing else was sent meanwhile.
    socket.set_nonblocking(true).expect("nonblocking");
    let mut buf = [0u8; 64];
    assert!(socket.recv(&mut buf).is_err(), "one notification at start");
    socket.set_nonblocking(false).expect("blocking");

    // A reload (what systemctl reload sends): RELOADING=1, then READY=1.
    let pid = nix::unistd::Pid::from_raw(sw.pid() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGHUP).expect("SIGHUP");
    let reloading = datagram(&socket, Duration::from_secs(10), || sw.stderr());
    let (head, usec) = reloading
        .split_once("MONOTONIC_USEC=")
        .unwrap_or_else(|| panic!("no MONOTONIC_USEC in {reloading:?}"));
    assert_eq!(head, "RELOADING=1\n");
    let (usec, rest) = usec.split_once('\n').expect("a line");
    assert!(usec.parse::<u64>().is_ok_and(|u| u > 0), "{usec:?}");
    assert_eq!(rest, "STATUS=reloading the configuration (SIGHUP)\n");
    let ready = datagram(&socket, Duration::from_secs(10), || sw.stderr());
    assert_eq!(
        ready,
        "READY=1\nSTATUS=enforcing 1 policy, proxy on 10.77.0.1:15001\n"
    );

    let status = sw.stop();
    let stopping = datagram(&socket, Duration::from_secs(5), || sw.stderr());
    assert_eq!(
        stopping,
        "STOPPING=1\nSTATUS=stopping (SIGTERM): draining connections\n"
    );
    assert!(status.success(), "exit: {status}\n{}", sw.stderr());
}

/// The unit's capabilities (`CAP_BPF`...), checked to be both its bounding
/// and its ambient set.
fn unit_caps() -> Vec<String> {
    let unit = std::fs::read_to_string(UNIT).expect("the unit");
    let set = |key: &str| -> Vec<String> {
        unit.lines()
            .find_map(|l| l.strip_prefix(key))
            .unwrap_or_else(|| panic!("no {key} in the unit"))
            .split_whitespace()
            .map(str::to_string)
            .collect()
    };
    let bounding = set("CapabilityBoundingSet=");
    assert_eq!(
        bounding,
        set("AmbientCapabilities="),
        "the unit's bounding and ambient sets"
    );
    bounding
}

/// `caps` in setpriv's form: `-all,+bpf,+net_admin`.
fn setpriv_caps(caps: &[String]) -> String {
    let mut arg = String::from("-all");
    for c in caps {
        let name = c.strip_prefix("CAP_").expect("CAP_ name").to_lowercase();
        arg.push_str(&format!(",+{name}"));
    }
    arg
}

/// setpriv arguments that run the rest as root with exactly `caps`
/// (bounding, inheritable, ambient: the unit's way) and no_new_privs.
fn as_root_with(caps: &[String]) -> Vec<String> {
    let set = setpriv_caps(caps);
    vec![
        "setpriv".into(),
        format!("--bounding-set={set}"),
        format!("--inh-caps={set}"),
        format!("--ambient-caps={set}"),
        "--no-new-privs".into(),
        "--".into(),
    ]
}

/// setpriv arguments that run the rest as nobody, no groups, no capabilities.
fn as_nobody() -> Vec<String> {
    [
        "setpriv",
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        "--",
    ]
    .map(String::from)
    .to_vec()
}

/// `launcher... BIN args...`, bounded in time.
fn run_bin(launcher: &[String], bin: &Path, args: &[&str]) -> Output {
    let mut child = Command::new(&launcher[0])
        .args(&launcher[1..])
        .arg(bin)
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    let pid = child.id();
    let gone = wait_for(
        Duration::from_secs(20),
        || child.try_wait().expect("wait").is_some(),
        |&exited| exited,
    );
    if !gone {
        let _ = child.kill();
    }
    let out = child.wait_with_output().expect("output");
    assert!(gone, "pid {pid} {args:?} did not exit:\n{}", text(&out));
    out
}

fn text(out: &Output) -> String {
    format!("{}{}", stdout(out), String::from_utf8_lossy(&out.stderr))
}

/// The unit's set enforces: a redirected GET is allowed, a POST denied by
/// the proxy, a connect outside every rule refused with EPERM; and after a
/// stop, the next start under it takes the earlier run's links over (what
/// `Restart=` and `systemctl restart` do).
#[test]
fn the_units_capability_set_enforces() {
    let (tag, topo, _origin, cg) = scene("service-caps", "pod", OriginConfig::default());
    let caps = unit_caps();
    let launcher = as_root_with(&caps);
    let enforces = || {
        let url = "http://10.77.1.10/data/100";
        assert_eq!(curl_status(&topo.pod, Some(&cg), &[], url), "200");
        assert_eq!(
            curl_status(&topo.pod, Some(&cg), &["-X", "POST"], url),
            "403"
        );
        assert!(
            tcp_connect(&topo.pod, Some(&cg), "10.77.1.10", 9000)
                .contains("Operation not permitted"),
            "a connect no rule allows"
        );
    };
    let mut sw = spawn(&topo.node, (&tag, &tag), &policy(cg.rel()), &launcher, &[]);
    sw.wait_ready();
    let effective = sw.status_field("CapEff");
    let want = caps
        .iter()
        .map(|c| match c.as_str() {
            "CAP_NET_ADMIN" => 1u64 << 12,
            "CAP_PERFMON" => 1 << 38,
            "CAP_BPF" => 1 << 39,
            other => panic!("a capability this test does not know: {other}"),
        })
        .sum::<u64>();
    assert_eq!(effective, format!("{want:016x}"), "{caps:?}");
    enforces();

    let status = sw.stop();
    assert!(status.success(), "{}", sw.stderr());
    let run = format!("{tag}-2");
    let again = spawn(&topo.node, (&tag, &run), &policy(cg.rel()), &launcher, &[]);
    again.wait_ready();
    let log = again.stderr();
    assert!(
        log.contains("an earlier run's programs were still enforcing")
            && log.contains("taken_over=8"),
        "the restart took the links over:\n{log}"
    );
    enforces();
}

/// The unit's set also sets up what the preserve source modes need
/// (IP_TRANSPARENT sockets, the tc program, `ip rule` and `ip route` for
/// the return path): the origin sees the workload's address and port.
#[test]
fn the_units_capability_set_runs_the_preserve_source_modes() {
    let (tag, topo, origin, cg) = scene("service-pip", "pod", OriginConfig::default());
    let launcher = as_root_with(&unit_caps());
    let body = format!(
        "upstream:\n  source: preserve-ip-port\n{}",
        policy(cg.rel())
    );
    let sw = spawn(&topo.node, (&tag, &tag), &body, &launcher, &[]);
    sw.wait_ready();
    let out = crate::sw::curl_write_out(
        &topo.pod,
        Some(&cg),
        "%{http_code} %{local_port}",
        &[],
        "http://10.77.1.10/data/8",
    );
    assert_eq!(
        out.split_once(' ').map(|(s, _)| s),
        Some("200"),
        "{out}\n{}",
        sw.stderr()
    );
    let peers = origin.peers();
    assert_eq!(peers.len(), 1);
    assert_eq!(
        format!("{} {}", peers[0].ip(), peers[0].port()),
        format!("10.77.2.2 {}", out.split_once(' ').expect("port").1),
        "the workload's own address and port"
    );
}

/// One enforcer per node holds under the unit's set too, which cannot read
/// another instance's program names (that takes CAP_SYS_ADMIN): a second
/// instance on another pin path recognizes the first by its pinned links
/// and refuses to start, naming them.
#[test]
fn the_units_capability_set_still_refuses_a_second_enforcer() {
    let (tag, topo, _origin, cg) = scene("service-one", "pod", OriginConfig::default());
    let first = Sockwarden::start(&topo.node, &tag, &policy(cg.rel()));
    let (other, other_topo, _other_origin, other_cg) =
        scene("service-two", "pod", OriginConfig::default());
    let body = format!(
        "testing:\n  allow_other_enforcers: false\n{}",
        policy(other_cg.rel())
    );
    let launcher = as_root_with(&unit_caps());
    let mut second = spawn(&other_topo.node, (&other, &other), &body, &launcher, &[]);
    let status = second.wait_exit(Duration::from_secs(15));
    let err = second.stderr();
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(
        err.contains("sockwarden programs of another instance are attached at cgroup")
            && err.contains(&format!(
                "linked from {}/links/sw_connect4",
                first.pin.display()
            )),
        "{err}"
    );
    assert!(
        !second.pin.exists(),
        "the refused instance attached nothing"
    );
}

/// For runs with fewer privileges (root checked first): a scratch
/// directory holding a copy of the binary `nobody` can run and a
/// configuration it can read (its path).
fn unprivileged_files(what: &str) -> (Scratch, PathBuf, String) {
    require_root();
    let tag = unique_tag(what);
    let scratch = Scratch::new(what);
    let bin = scratch.0.join("sockwarden");
    std::fs::copy(BIN, &bin).expect("copy the binary");
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let config = scratch.0.join("config.yaml");
    let body = Sockwarden::config(&tag, &scratch.0, &policy("/sockwarden-test-nowhere/pod"));
    std::fs::write(&config, body).expect("config");
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let config = config.to_str().expect("utf-8").to_string();
    (scratch, bin, config)
}

/// The row of `features`' table for `name`.
fn row<'a>(table: &'a str, name: &str) -> &'a str {
    table
        .lines()
        .find(|l| l.starts_with(name))
        .unwrap_or_else(|| panic!("no row {name}:\n{table}"))
}

#[test]
fn without_privilege_features_and_run_name_the_capability() {
    let (_scratch, bin, config) = unprivileged_files("nopriv");
    let config = config.as_str();

    let out = run_bin(&as_nobody(), &bin, &["features"]);
    let table = stdout(&out);
    assert!(!out.status.success(), "{}", text(&out));
    for name in [
        "program type cgroup_sock_addr",
        "program type sock_ops",
        "attach type cgroup/sock_release",
    ] {
        assert!(
            row(&table, name).contains(
                " not permitted (needs CAP_BPF and CAP_NET_ADMIN: run as root or under the unit) "
            ),
            "{table}"
        );
    }
    assert!(
        row(&table, "map type hash").contains(" not permitted (needs CAP_BPF: "),
        "{table}"
    );
    assert!(
        row(&table, "kernel BTF").contains(" yes "),
        "files are not privileges: {table}"
    );
    assert!(
        !table.lines().any(|l| l.contains(" NO ")),
        "nothing is called missing: {table}"
    );
    let refusal = "sockwarden: not permitted: program type cgroup_sock_addr needs CAP_BPF and \
                   CAP_NET_ADMIN, which this process lacks";
    assert!(
        String::from_utf8_lossy(&out.stderr).starts_with(refusal),
        "{}",
        text(&out)
    );

    let out = run_bin(&as_nobody(), &bin, &["run", "--config", config]);
    assert!(!out.status.success(), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(refusal), "{err}");
    assert!(!err.contains("this kernel lacks"), "{err}");
}

#[test]
fn each_capability_of_the_unit_is_needed_and_named_when_missing() {
    let (_scratch, bin, config) = unprivileged_files("minus");
    let config = config.as_str();
    let caps = unit_caps();
    let out = run_bin(&as_root_with(&caps), &bin, &["features"]);
    assert!(out.status.success(), "the unit's set: {}", text(&out));
    for cap in &caps {
        let fewer: Vec<String> = caps.iter().filter(|c| *c != cap).cloned().collect();
        let launcher = as_root_with(&fewer);
        let out = run_bin(&launcher, &bin, &["features"]);
        assert!(!out.status.success(), "without {cap}: {}", text(&out));
        let table = stdout(&out);
        // The first feature refused for want of `cap`, in the table's
        // order (which one that is depends on the kernel: 6.18's verifier
        // wants CAP_PERFMON for get_current_comm in cgroup programs, 6.1's
        // first for skc_to_tcp_sock).
        let needs = format!(" not permitted (needs {cap}: run as root or under the unit) ");
        let first = table
            .lines()
            .find(|l| l.contains(&needs))
            .unwrap_or_else(|| panic!("without {cap}, no row names it:\n{table}"));
        let first = first.split("  ").next().unwrap_or(first).trim();
        let refusal =
            format!("sockwarden: not permitted: {first} needs {cap}, which this process lacks");
        assert!(
            !table.lines().any(|l| l.contains(" NO ")),
            "without {cap}, nothing is called missing: {table}"
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.starts_with(&refusal), "without {cap}: {err}");

        let out = run_bin(&launcher, &bin, &["run", "--config", config]);
        assert!(!out.status.success(), "without {cap}: {}", text(&out));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(&refusal), "without {cap}: {err}");
    }
}

/// `systemd-analyze verify` on the unit, its ExecStart pointed at the
/// binary under test (verify checks that the program exists).
#[test]
fn the_unit_passes_systemd_analyze_verify() {
    require_root();
    let scratch = Scratch::new("unit");
    let unit = std::fs::read_to_string(UNIT).expect("the unit");
    let exec = "ExecStart=/usr/local/bin/sockwarden run --config /etc/sockwarden/config.yaml";
    assert!(unit.lines().any(|l| l == exec), "{unit}");
    for line in [
        "Type=notify",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "Restart=on-failure",
    ] {
        assert!(unit.lines().any(|l| l == line), "{line} in the unit");
    }
    assert!(
        !unit.lines().any(|l| l.starts_with("ExecStopPost=")),
        "a stop must leave enforcement in place"
    );
    let copy = scratch.0.join("sockwarden.service");
    let here = format!("ExecStart={BIN} run --config /etc/sockwarden/config.yaml");
    std::fs::write(&copy, unit.replace(exec, &here)).expect("copy");
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&copy)
        .output()
        .expect("systemd-analyze");
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "systemd-analyze verify: {}",
        text(&out)
    );
    // The check has teeth: an ExecStart that is not there fails it.
    std::fs::write(
        &copy,
        unit.replace(exec, "ExecStart=/nonexistent/sockwarden run"),
    )
    .expect("copy");
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&copy)
        .output()
        .expect("systemd-analyze");
    assert!(!out.status.success(), "{}", text(&out));
}

fn install(dest: &Path, args: &[&str]) -> Output {
    let out = Command::new(format!("{REPO}/scripts/install.sh"))
        .args(args)
        .env("DESTDIR", dest)
        .env("SOCKWARDEN_BIN", BIN)
        .output()
        .expect("install.sh");
    assert!(out.status.success(), "install.sh {args:?}: {}", text(&out));
    out
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o7777
}

#[test]
fn install_puts_binary_unit_and_a_valid_example_config_and_uninstall_removes_them() {
    require_root();
    let scratch = Scratch::new("install");
    let dest = scratch.0.join("root");
    let out = install(&dest, &[]);
    let said = stdout(&out);
    assert!(
        said.contains("not running systemctl daemon-reload"),
        "{said}"
    );
    let bin = dest.join("usr/local/bin/sockwarden");
    let unit = dest.join("etc/systemd/system/sockwarden.service");
    let config = dest.join("etc/sockwarden/config.yaml");
    assert_eq!(mode(&bin), 0o755);
    assert_eq!(mode(&unit), 0o644);
    assert_eq!(mode(&config), 0o644);
    let generated = [
        "usr/local/share/man/man1/sockwarden.1",
        "usr/local/share/man/man1/sockwarden-run.1",
        "usr/local/share/bash-completion/completions/sockwarden",
        "usr/local/share/zsh/site-functions/_sockwarden",
        "usr/local/share/fish/vendor_completions.d/sockwarden.fish",
    ]
    .map(|p| dest.join(p));
    for g in &generated {
        assert_eq!(mode(g), 0o644, "{}", g.display());
    }
    let same = |a: &Path, b: &str| {
        std::fs::read(a).expect("installed") == std::fs::read(b).expect("source")
    };
    assert!(same(&bin, BIN), "the binary given");
    assert!(same(&unit, UNIT), "the unit");
    assert!(
        same(&config, &format!("{REPO}/deploy/config.yaml")),
        "the example"
    );
    let check = Command::new(&bin)
        .args(["check", "--config"])
        .arg(&config)
        .output()
        .expect("check");
    assert!(
        check.status.success(),
        "the example config: {}",
        text(&check)
    );
    assert!(
        stdout(&check).contains("valid: 1 policies"),
        "{}",
        text(&check)
    );

    // An existing configuration is never replaced, nor removed once edited.
    std::fs::write(&config, "# edited\n").expect("edit");
    let said = stdout(&install(&dest, &[]));
    assert!(said.contains("kept"), "{said}");
    assert_eq!(
        std::fs::read_to_string(&config).expect("config"),
        "# edited\n"
    );
    let said = stdout(&install(&dest, &["--uninstall"]));
    assert!(
        said.contains("not detaching"),
        "DESTDIR is not this system: {said}"
    );
    assert!(!bin.exists() && !unit.exists(), "{said}");
    assert!(generated.iter().all(|g| !g.exists()), "{said}");
    assert!(config.exists(), "the edited config stays: {said}");

    // The unchanged example goes with the rest.
    std::fs::remove_file(&config).expect("rm");
    install(&dest, &[]);
    install(&dest, &["--uninstall"]);
    assert!(!config.exists() && !bin.exists() && !unit.exists());
}
