//! The sockwarden binary under test, and workload helpers: shared by the
//! kernel-tier test files.

use std::io::{BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Output, Stdio};
use std::time::{Duration, Instant};

use crate::cgroup::TestCgroup;
use crate::common::h1::{self, HeadWriter};
use crate::common::origin::{Origin, OriginConfig};
use crate::common::{metric_value, patience};
use crate::netns::{in_netns, listener_in, Netns, Topology};
use crate::support::{command_in, require_root, run_checked, unique_tag};

pub const BIN: &str = env!("CARGO_BIN_EXE_sockwarden");
pub const ADMIN: &str = "127.0.0.1:9901";

/// A running `sockwarden run` inside a node namespace.
pub struct Sockwarden {
    pub child: Option<Child>,
    node: PathBuf,
    pub pin: PathBuf,
    pub dir: PathBuf,
    /// Whether dropping it removes the pins (not once it handed them over
    /// to a process that took over).
    owns_pins: bool,
}

/// How the binary is run: through `launcher` (a program and its arguments
/// that end by running the binary; empty: the binary itself), with `env`
/// added, and with `extra` after `run --config FILE`.
#[derive(Default)]
pub struct Launch<'a> {
    pub launcher: &'a [&'a str],
    pub env: &'a [(&'a str, &'a std::ffi::OsStr)],
    pub extra: &'a [&'a str],
}

impl Sockwarden {
    /// The configuration: proxy, admin, pins and access log set up for the
    /// test topology, then `body` (other top-level sections and `policies`).
    /// Indented lines at the start of `body` are more fields of `proxy`.
    /// Tests run many instances at once, each on cgroups of its own, so the
    /// one-enforcer check is off (`testing.allow_other_enforcers`) unless
    /// `body` sets that field itself.
    pub fn config(tag: &str, dir: &Path, body: &str) -> String {
        let split = body
            .split_inclusive('\n')
            .take_while(|l| l.starts_with("  "))
            .map(str::len)
            .sum();
        let (proxy, body) = body.split_at(split);
        let body = if body.contains("allow_other_enforcers") {
            body.to_string()
        } else if let Some(at) = body.find("testing:\n") {
            let (before, after) = body.split_at(at + "testing:\n".len());
            format!("{before}  allow_other_enforcers: true\n{after}")
        } else {
            format!("testing:\n  allow_other_enforcers: true\n{body}")
        };
        format!(
            "proxy:\n  listen: 10.77.0.1:15001\n  listen_v6: \"[fd77::1]:15001\"\n{proxy}\
             admin:\n  listen: {ADMIN}\n\
             bpf:\n  pin_path: /sys/fs/bpf/sw-test-{tag}\n\
             access_log:\n  path: {}/access.log\n\
             {body}",
            dir.display()
        )
    }

    /// Starts sockwarden in `node` with `body` (see [`Sockwarden::config`])
    /// and waits until /readyz answers.
    pub fn start(node: &Netns, tag: &str, body: &str) -> Sockwarden {
        let sw = Self::spawn(node, tag, tag, body, None);
        sw.wait_ready();
        sw
    }

    /// Spawns without waiting. `tag` names the pin path, `run` the
    /// directory holding config, logs and access log.
    pub fn spawn(
        node: &Netns,
        tag: &str,
        run: &str,
        body: &str,
        cgroup: Option<&Path>,
    ) -> Sockwarden {
        Self::spawn_with(node, tag, run, body, cgroup, &[], &[])
    }

    /// [`Sockwarden::spawn`] through `launcher` (a program and its
    /// arguments that end by running the binary, e.g. `setpriv ... --`;
    /// empty: the binary itself) with `env` added to the environment.
    pub fn spawn_with(
        node: &Netns,
        tag: &str,
        run: &str,
        body: &str,
        cgroup: Option<&Path>,
        launcher: &[&str],
        env: &[(&str, &std::ffi::OsStr)],
    ) -> Sockwarden {
        let dir = PathBuf::from(format!("/tmp/sw-test-{run}"));
        let config = Self::config(tag, &dir, body);
        let how = Launch {
            launcher,
            env,
            ..Launch::default()
        };
        Self::launch(node, (tag, run), &config, cgroup, how)
    }

    /// Spawns `run --take-over` (an upgrade of the instance running with
    /// pin path `tag`), with `body` as [`Sockwarden::config`] makes it.
    pub fn spawn_taking_over(node: &Netns, tag: &str, run: &str, body: &str) -> Sockwarden {
        let dir = PathBuf::from(format!("/tmp/sw-test-{run}"));
        let config = Self::config(tag, &dir, body);
        let how = Launch {
            extra: &["--take-over"],
            ..Launch::default()
        };
        Self::launch(node, (tag, run), &config, None, how)
    }

    /// After this instance handed over to one that took over: its drop
    /// leaves the pins (now the other one's) alone.
    pub fn handed_over(&mut self) {
        self.owns_pins = false;
    }

    /// Spawns without waiting, with `config` as the whole configuration
    /// (its pin path must be `/sys/fs/bpf/sw-test-{tag}`, which drop
    /// removes). `run` names the directory holding config and logs.
    pub fn spawn_config(
        node: &Netns,
        tag: &str,
        run: &str,
        config: &str,
        cgroup: Option<&Path>,
    ) -> Sockwarden {
        Self::launch(node, (tag, run), config, cgroup, Launch::default())
    }

    /// Writes `text` as the configuration and runs the binary on it (see
    /// [`Sockwarden::spawn_with`] and [`Sockwarden::spawn_config`]).
    fn launch(
        node: &Netns,
        (tag, run): (&str, &str),
        text: &str,
        cgroup: Option<&Path>,
        how: Launch<'_>,
    ) -> Sockwarden {
        let dir = PathBuf::from(format!("/tmp/sw-test-{run}"));
        std::fs::create_dir_all(&dir).expect("test dir");
        let config = dir.join("sockwarden.yaml");
        std::fs::write(&config, text).expect("write config");
        let (program, args) = match how.launcher.split_first() {
            Some((program, args)) => (*program, [args, &[BIN]].concat()),
            None => (BIN, Vec::new()),
        };
        let child = command_in(Some(&node.path()), cgroup, program)
            .args(args)
            .envs(how.env.iter().copied())
            .args(["run", "--config"])
            .arg(&config)
            .args(how.extra)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("stderr")).expect("stderr file"))
            .spawn()
            .expect("spawn sockwarden");
        Sockwarden {
            child: Some(child),
            node: node.path(),
            pin: PathBuf::from(format!("/sys/fs/bpf/sw-test-{tag}")),
            dir,
            owns_pins: true,
        }
    }

    /// Rewrites the configuration file with `body` (as [`Sockwarden::config`]
    /// for pin path `tag`).
    pub fn rewrite(&self, tag: &str, body: &str) {
        let text = Self::config(tag, &self.dir, body);
        std::fs::write(self.dir.join("sockwarden.yaml"), text).expect("rewrite config");
    }

    /// `sockwarden reload --config <its file>`, run in its namespace.
    pub fn reload(&self) -> Output {
        command_in(Some(&self.node), None, BIN)
            .args(["reload", "--config"])
            .arg(self.dir.join("sockwarden.yaml"))
            .output()
            .expect("run sockwarden reload")
    }

    /// The process id of the running binary.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// The diagnostic log (plain text: colour is for terminals only).
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.join("stderr")).unwrap_or_default()
    }

    /// Every line of the access log, parsed.
    fn access_log_lines(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(self.dir.join("access.log"))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).expect("access log line is JSON"))
            .collect()
    }

    /// The access log's request lines (those without a `kind`).
    pub fn access_log(&self) -> Vec<serde_json::Value> {
        self.access_log_lines()
            .into_iter()
            .filter(|l| l.get("kind").is_none())
            .collect()
    }

    /// The access log's lines of one `kind` of kernel event:
    /// `connect_denied` (connects and sends the kernel refused) or
    /// `connect_would_deny` (connects `mode: audit` let through).
    pub fn event_log(&self, kind: &str) -> Vec<serde_json::Value> {
        self.access_log_lines()
            .into_iter()
            .filter(|l| l["kind"] == kind)
            .collect()
    }

    pub fn wait_ready(&self) {
        let deadline = Instant::now() + patience(Duration::from_secs(15));
        while Instant::now() < deadline {
            if self.admin_get("/readyz").is_some_and(|(s, _)| s == 200) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("sockwarden did not become ready:\n{}", self.stderr());
    }

    /// GET on the admin listener (inside the node namespace).
    pub fn admin_get(&self, path: &str) -> Option<(u16, String)> {
        let path = path.to_string();
        in_netns(&self.node, move || {
            let addr: SocketAddr = ADMIN.parse().expect("admin addr");
            let mut s = TcpStream::connect_timeout(&addr, patience(Duration::from_secs(2))).ok()?;
            s.set_read_timeout(Some(patience(Duration::from_secs(5))))
                .ok()?;
            let req = HeadWriter::request("GET", &path)
                .field("Host", "admin")
                .field("Connection", "close")
                .finish();
            s.write_all(&req).ok()?;
            let r = h1::read_response(&mut BufReader::new(s), false).ok()?;
            Some((r.status, String::from_utf8_lossy(&r.body).into_owned()))
        })
    }

    /// The value of one exported series, e.g.
    /// `sockwarden_connect_denied_total{policy="p"}`; 0 when absent.
    pub fn metric(&self, series: &str) -> f64 {
        let (status, body) = self.admin_get("/metrics").expect("metrics reachable");
        assert_eq!(status, 200);
        metric_value(&body, series)
    }

    /// Panics unless every series has its value.
    pub fn assert_metrics(&self, want: &[(&str, f64)]) {
        let (status, body) = self.admin_get("/metrics").expect("metrics reachable");
        assert_eq!(status, 200);
        for (series, value) in want {
            assert_eq!(metric_value(&body, series), *value, "{series}");
        }
    }

    /// A field of /proc/PID/status (`State`, `VmRSS`); empty if absent.
    pub fn status_field(&self, field: &str) -> String {
        let text =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap_or_default();
        text.lines()
            .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
            .map(|v| v.trim().to_string())
            .unwrap_or_default()
    }

    /// A field of /proc/PID/status in KiB (`VmRSS`, `VmHWM`); 0 if absent.
    pub fn status_kib(&self, field: &str) -> u64 {
        let v = self.status_field(field);
        v.trim_end_matches("kB").trim().parse().unwrap_or(0)
    }

    /// (open fds, of which sockets) of the process.
    pub fn fds(&self) -> (usize, usize) {
        let mut fds = 0;
        let mut sockets = 0;
        if let Ok(dir) = std::fs::read_dir(format!("/proc/{}/fd", self.pid())) {
            for e in dir.flatten() {
                fds += 1;
                let target = std::fs::read_link(e.path()).unwrap_or_default();
                if target.to_string_lossy().starts_with("socket:") {
                    sockets += 1;
                }
            }
        }
        (fds, sockets)
    }

    /// Entries in the pinned map `name` (bpftool).
    pub fn map_len(&self, name: &str) -> usize {
        map_entries(&self.pin, name)
    }

    /// SIGTERM and wait; returns the exit status.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        let child = self.child.as_ref().expect("running");
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        self.wait_exit(Duration::from_secs(10))
    }

    /// Waits for the process to exit on its own (`limit` stretched by
    /// [`patience`]).
    pub fn wait_exit(&mut self, limit: Duration) -> std::process::ExitStatus {
        let limit = patience(limit);
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

    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Sockwarden {
    fn drop(&mut self) {
        // A clean stop first (it removes its lock file); SIGKILL if that
        // does not finish within 5 s. Either way enforcement stays: the pins
        // are removed below.
        if let Some(child) = self.child.as_ref() {
            let pid = nix::unistd::Pid::from_raw(child.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            let deadline = Instant::now() + patience(Duration::from_secs(5));
            while Instant::now() < deadline {
                match self.child.as_mut().map(|c| c.try_wait()) {
                    Some(Ok(None)) => std::thread::sleep(Duration::from_millis(20)),
                    _ => break,
                }
            }
        }
        self.kill();
        // What `sockwarden detach` does, done here so it happens even when
        // the binary cannot run. Unlinking pinned links detaches them; the
        // maps go with the programs. An interrupted takeover leaves the
        // earlier pins set aside beside the pin path.
        let mut dirs = if self.owns_pins {
            vec![self.pin.clone()]
        } else {
            Vec::new()
        };
        if let (true, Some(parent), Some(name)) =
            (self.owns_pins, self.pin.parent(), self.pin.file_name())
        {
            let prefix = format!("{}-previous-", name.to_string_lossy());
            dirs.extend(
                std::fs::read_dir(parent)
                    .into_iter()
                    .flatten()
                    .flatten()
                    .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
                    .map(|e| e.path()),
            );
        }
        for dir in dirs {
            let _ = std::fs::remove_dir_all(dir.join("links"));
            let _ = std::fs::remove_dir_all(&dir);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
        if self.owns_pins {
            let lock = self.pin.to_string_lossy().replace('/', "_");
            let _ = std::fs::remove_file(format!("/run/sockwarden/{lock}.lock"));
            let _ = std::fs::remove_file(format!("/run/sockwarden/{lock}.handoff"));
        }
    }
}

/// Starts the Python `script` as a workload in `netns` and `cgroup`, in
/// the background, with `stop` (a file whose creation tells it to finish)
/// as its argument; its stdout is piped, for `wait_with_output`.
pub fn background_workload(
    netns: &Netns,
    cgroup: &TestCgroup,
    script: &str,
    stop: &Path,
) -> std::process::Child {
    command_in(Some(&netns.path()), Some(cgroup.path()), "python3")
        .args(["-c", script])
        .arg(stop)
        .stdout(Stdio::piped())
        .spawn()
        .expect("start a background workload")
}

/// Stops a [`background_workload`] that prints `{"counts": {...},
/// "errors": [...]}` (by creating `stop`) and returns its counts; panics,
/// naming them, if it reported errors.
pub fn finish_load(
    load: std::process::Child,
    stop: &Path,
) -> serde_json::Map<String, serde_json::Value> {
    std::fs::write(stop, b"").expect("stop the load");
    let o = load.wait_with_output().expect("load output");
    let got: serde_json::Value = serde_json::from_slice(&o.stdout).expect("the load prints JSON");
    assert_eq!(
        got["errors"],
        serde_json::json!([]),
        "no request failed, no connection refused or dropped: {got}"
    );
    got["counts"].as_object().expect("counts").clone()
}

/// Runs `program args` as a workload: in `netns` and `cgroup`.
pub fn workload(netns: &Netns, cgroup: &TestCgroup, program: &str, args: &[&str]) -> Output {
    command_in(Some(&netns.path()), Some(cgroup.path()), program)
        .args(args)
        .output()
        .expect("run workload")
}

/// The same, outside any policy cgroup.
pub fn outsider(netns: &Netns, program: &str, args: &[&str]) -> Output {
    command_in(Some(&netns.path()), None, program)
        .args(args)
        .output()
        .expect("run outsider")
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// A TCP connect() from `netns`, in `cgroup` if given, through bash's
/// /dev/tcp: "ok", or bash's error text (strerror, e.g. "Operation not
/// permitted").
pub fn tcp_connect(netns: &Netns, cgroup: Option<&TestCgroup>, host: &str, port: u16) -> String {
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

/// `curl -sS --max-time 10 ARGS...` in `netns`, in `cgroup` if given.
pub fn curl(netns: &Netns, cgroup: Option<&TestCgroup>, args: &[&str]) -> Output {
    let mut all = vec!["-sS", "--max-time", "10"];
    all.extend_from_slice(args);
    match cgroup {
        Some(cg) => workload(netns, cg, "curl", &all),
        None => outsider(netns, "curl", &all),
    }
}

/// The lowercased response head of a GET with the team header.
pub fn curl_head(netns: &Netns, cgroup: &TestCgroup, url: &str) -> String {
    let args = ["-D", "-", "-o", "/dev/null", "-H", "x-team: analytics", url];
    stdout(&curl(netns, Some(cgroup), &args)).to_ascii_lowercase()
}

/// curl printing the status code; extra args before the URL.
pub fn curl_status(
    netns: &Netns,
    cgroup: Option<&TestCgroup>,
    extra: &[&str],
    url: &str,
) -> String {
    curl_write_out(netns, cgroup, "%{http_code}", extra, url)
}

/// The status of a GET of `path` from the origin at 10.77.1.10, as a
/// workload in `cgroup` asks for it.
pub fn origin_get(netns: &Netns, cgroup: &TestCgroup, path: &str) -> String {
    curl_status(
        netns,
        Some(cgroup),
        &[],
        &format!("http://10.77.1.10{path}"),
    )
}

/// curl printing `write_out` (e.g. `%{http_code} %{local_port}`), the body
/// dropped; extra args before the URL.
pub fn curl_write_out(
    netns: &Netns,
    cgroup: Option<&TestCgroup>,
    write_out: &str,
    extra: &[&str],
    url: &str,
) -> String {
    let mut args = vec!["-o", "/dev/null", "-w", write_out];
    args.extend_from_slice(extra);
    args.push(url);
    stdout(&curl(netns, cgroup, &args))
}

/// A download the workload gives up half a second into, at 1 MB/s: the
/// client leaves mid-body. Returns curl's output (it fails).
pub fn curl_cut_short(netns: &Netns, cgroup: &TestCgroup, url: &str) -> Output {
    let args = [
        "-sS",
        "--limit-rate",
        "1M",
        "--max-time",
        "0.5",
        "-o",
        "/dev/null",
        url,
    ];
    workload(netns, cgroup, "curl", &args)
}

/// The usual kernel-test scene: (tag, a fresh topology, an origin on
/// 10.77.1.10:80 in its namespace, and a workload cgroup
/// `/sockwarden-test-<tag>/<leaf>`). Requires root.
pub fn scene(
    test: &str,
    leaf: &str,
    origin: OriginConfig,
) -> (String, Topology, Origin, TestCgroup) {
    let (tag, topo, cg) = bare_scene(test, leaf);
    let origin = origin_at(&topo, "10.77.1.10:80", origin);
    (tag, topo, origin, cg)
}

/// A scene without an origin: (tag, topology, workload cgroup). Requires root.
pub fn bare_scene(test: &str, leaf: &str) -> (String, Topology, TestCgroup) {
    require_root();
    let tag = unique_tag(test);
    let topo = Topology::new(&tag);
    let cg = TestCgroup::new(&format!("/sockwarden-test-{tag}/{leaf}"));
    (tag, topo, cg)
}

/// Another origin in the scene's origin namespace.
pub fn origin_at(topo: &Topology, addr: &str, cfg: OriginConfig) -> Origin {
    Origin::serve(listener_in(&topo.origin, addr), cfg)
}

/// Socket memory (receive + send queues) of `pid`'s TCP sockets in `ns`,
/// from `ss -tmp` (skmem r and w fields).
pub fn socket_memory(ns: &Netns, pid: u32) -> u64 {
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", ns.name(), "ss", "-Htmpn"])
        .output()
        .expect("ss");
    let text = String::from_utf8_lossy(&out.stdout);
    let mut total = 0;
    let mut mine = false;
    for line in text.lines() {
        if line.contains("users:") {
            mine = line.contains(&format!("pid={pid},"));
        }
        if let (true, Some(i)) = (mine, line.find("skmem:(")) {
            for field in line[i + 7..].split([',', ')']) {
                for key in ["r", "w"] {
                    if let Some(v) = field.strip_prefix(key).and_then(|v| v.parse::<u64>().ok()) {
                        total += v;
                    }
                }
            }
        }
    }
    total
}

/// `bpftool -j ARGS...`, its JSON output parsed; panics if it fails.
pub fn bpftool(args: &[&str]) -> serde_json::Value {
    let out = run_checked(std::process::Command::new("bpftool").arg("-j").args(args));
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("bpftool {args:?} JSON: {e}: {}", stdout(&out)))
}

/// The entries of a pinned map, from `bpftool map dump` (as an operator
/// would see them).
pub fn map_dump(pin: &Path, map: &str) -> Vec<serde_json::Value> {
    let path = pin.join(map);
    let dump = bpftool(&[
        "map",
        "dump",
        "pinned",
        path.to_str().expect("utf-8 pin path"),
    ]);
    dump.as_array().cloned().unwrap_or_default()
}

/// The number of entries in a pinned map.
pub fn map_entries(pin: &Path, map: &str) -> usize {
    map_dump(pin, map).len()
}

/// The `key` or `value` of a map entry of [`map_dump`], with field names
/// where bpftool has the map's BTF.
pub fn entry_part<'a>(entry: &'a serde_json::Value, part: &str) -> &'a serde_json::Value {
    let formatted = &entry["formatted"][part];
    if formatted.is_null() {
        &entry[part]
    } else {
        formatted
    }
}

/// After a transfer ended: no established socket left in `node` (within
/// 5 s), no original destination and no open tuple left in `sw`'s maps.
pub fn assert_nothing_left(node: &Netns, sw: &Sockwarden) {
    let left = crate::common::wait_for(Duration::from_secs(5), || established(node), |n| *n == 0);
    assert_eq!(left, 0, "both proxy sockets closed");
    assert_eq!(
        map_dump(&sw.pin, "orig_dsts"),
        Vec::<serde_json::Value>::new()
    );
    let open: Vec<_> = map_dump(&sw.pin, "tuples")
        .into_iter()
        .filter(|e| entry_part(e, "value")["state"] != "SW_TCP_TIME_WAIT")
        .collect();
    assert!(open.is_empty(), "tuples still open: {open:?}");
}

/// Established TCP sockets in a namespace.
pub fn established(ns: &Netns) -> usize {
    let out = std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            ns.name(),
            "ss",
            "-Htn",
            "state",
            "established",
        ])
        .output()
        .expect("ss");
    String::from_utf8_lossy(&out.stdout).lines().count()
}
