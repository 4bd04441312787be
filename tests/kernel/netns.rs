//! Network namespaces for tests, and the node / origin / pod [`Topology`].
//!
//! Namespaces are managed with `ip netns` (bind mounts under /run/netns).
//! Code that must run inside a namespace uses [`in_netns`] (a fresh thread
//! that called setns) or [`crate::support::command_in`] (a child process), never
//! `ip netns exec`, because that remounts /sys and hides the cgroup2 and
//! bpf file systems. `ip netns exec` is used only for `sysctl`.

use std::fs::File;
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use nix::sched::{setns, CloneFlags};

use crate::support::run_checked;

/// The origin's address (origin namespace, `eth0`).
pub const ORIGIN_V4: &str = "10.77.1.10";
/// The origin's IPv6 address (origin namespace, `eth0`).
pub const ORIGIN_V6: &str = "fd77:1::10";
/// The pod's address (pod namespace, `eth0`).
pub const POD_V4: &str = "10.77.2.2";

/// Serializes `ip netns add/del` within this process: the first `add` makes
/// /run/netns a shared bind mount, which is racy when done concurrently.
static IP_NETNS_LOCK: Mutex<()> = Mutex::new(());

fn ip_netns_lock() -> std::sync::MutexGuard<'static, ()> {
    IP_NETNS_LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// A named network namespace (`ip netns add NAME`), deleted on drop.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates the namespace and brings its `lo` up. A stale namespace of
    /// the same name (left by a killed earlier run) is deleted first.
    pub fn new(name: &str) -> Netns {
        {
            let _g = ip_netns_lock();
            if Path::new("/run/netns").join(name).exists() {
                let _ = Command::new("ip").args(["netns", "del", name]).output();
            }
            run_checked(Command::new("ip").args(["netns", "add", name]));
        }
        // From here on Drop removes it, even if the next step panics.
        let ns = Netns {
            name: name.to_string(),
        };
        ns.run(&["link", "set", "lo", "up"]);
        ns
    }

    /// The namespace's name, as `ip netns` knows it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The namespace file (/run/netns/NAME), for setns.
    pub fn path(&self) -> PathBuf {
        Path::new("/run/netns").join(&self.name)
    }

    /// Runs `ip -n NAME args...`; panics with stderr on failure.
    pub fn run(&self, args: &[&str]) {
        run_checked(Command::new("ip").arg("-n").arg(&self.name).args(args));
    }

    /// Sets a sysctl inside the namespace
    /// (`ip netns exec NAME sysctl -qw key=value`); panics on failure.
    pub fn sysctl(&self, key: &str, value: &str) {
        run_checked(Command::new("ip").args([
            "netns",
            "exec",
            &self.name,
            "sysctl",
            "-qw",
            &format!("{key}={value}"),
        ]));
    }

    /// Runs `f` on a fresh thread inside this namespace (see [`in_netns`]).
    pub fn within<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        in_netns(&self.path(), f)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _g = ip_netns_lock();
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// Moves the calling thread into the network namespace at `path`
/// (setns(CLONE_NEWNET)). Only this thread changes namespace.
pub fn enter_netns_fd(path: &Path) -> std::io::Result<()> {
    let f = File::open(path)?;
    setns(&f, CloneFlags::CLONE_NEWNET).map_err(std::io::Error::from)
}

/// Runs `f` on a fresh thread that first entered the network namespace at
/// `ns`, joins it and returns its result (a panic in `f` is propagated).
/// Sockets created by `f` belong to that namespace and keep working from
/// any thread afterwards. Panics if the namespace cannot be entered.
pub fn in_netns<T: Send + 'static>(ns: &Path, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = ns.to_path_buf();
    let handle = std::thread::Builder::new()
        .name("in-netns".into())
        .spawn(move || {
            enter_netns_fd(&path).unwrap_or_else(|e| panic!("setns into {}: {e}", path.display()));
            f()
        })
        .expect("spawn in_netns thread");
    match handle.join() {
        Ok(v) => v,
        Err(p) => std::panic::resume_unwind(p),
    }
}

/// A TCP listener on `addr` inside `ns`; panics if the bind fails.
pub fn listener_in(ns: &Netns, addr: &str) -> TcpListener {
    let addr: SocketAddr = addr.parse().expect("listen address");
    ns.within(move || TcpListener::bind(addr))
        .unwrap_or_else(|e| panic!("bind {addr} in {}: {e}", ns.name()))
}

/// Three namespaces wired as a node with a pod and an origin behind it:
///
/// ```text
///   pod (eth0 10.77.2.2, fd77:2::2)
///     |  veth
///   node (to-pod 10.77.2.1, fd77:2::1; lo 10.77.0.1, fd77::1; forwarding on;
///     |   to-origin 10.77.1.1, fd77:1::1)
///     |  veth
///   origin (eth0 10.77.1.10, fd77:1::10)
/// ```
///
/// The pod and origin route everything via the node. Dropping the topology
/// deletes the three namespaces (and with them the veth pairs).
#[derive(Debug)]
pub struct Topology {
    pub node: Netns,
    pub origin: Netns,
    pub pod: Netns,
}

impl Topology {
    /// Builds the topology with namespaces `sw-{tag}-node`, `sw-{tag}-origin`
    /// and `sw-{tag}-pod` and checks pod -> origin TCP reachability over
    /// IPv4 and IPv6 (panics after 2 s if it does not work).
    pub fn new(tag: &str) -> Topology {
        let node = Netns::new(&format!("sw-{tag}-node"));
        let origin = Netns::new(&format!("sw-{tag}-origin"));
        let pod = Netns::new(&format!("sw-{tag}-pod"));
        let t = Topology { node, origin, pod };

        for ns in [&t.node, &t.origin, &t.pod] {
            ns.sysctl("net.ipv6.conf.all.disable_ipv6", "0");
            ns.sysctl("net.ipv6.conf.default.disable_ipv6", "0");
            // No duplicate address detection: link-local addresses (needed
            // for neighbour discovery) must be usable at once, not after
            // ~1-2 s of DAD.
            ns.sysctl("net.ipv6.conf.all.accept_dad", "0");
            ns.sysctl("net.ipv6.conf.default.accept_dad", "0");
        }
        let node = &t.node;
        let links = [
            (&t.origin, "to-origin", "10.77.1", "fd77:1", "10"),
            (&t.pod, "to-pod", "10.77.2", "fd77:2", "2"),
        ];
        // Links first: a veth's carrier comes up asynchronously (the
        // kernel's link watcher may take up to ~1 s), so start that early.
        for (peer, dev, ..) in links {
            node.run(&[
                "link",
                "add",
                dev,
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                peer.name(),
            ]);
            node.run(&["link", "set", dev, "up"]);
            peer.run(&["link", "set", "eth0", "up"]);
        }

        node.sysctl("net.ipv4.ip_forward", "1");
        node.sysctl("net.ipv6.conf.all.forwarding", "1");
        node.run(&["addr", "add", "10.77.0.1/32", "dev", "lo"]);
        node.run(&["-6", "addr", "add", "fd77::1/128", "dev", "lo", "nodad"]);

        for (peer, dev, v4, v6, host) in links {
            node.run(&["addr", "add", &format!("{v4}.1/24"), "dev", dev]);
            node.run(&[
                "-6",
                "addr",
                "add",
                &format!("{v6}::1/64"),
                "dev",
                dev,
                "nodad",
            ]);
            peer.run(&["addr", "add", &format!("{v4}.{host}/24"), "dev", "eth0"]);
            peer.run(&[
                "-6",
                "addr",
                "add",
                &format!("{v6}::{host}/64"),
                "dev",
                "eth0",
                "nodad",
            ]);
            peer.run(&["route", "add", "default", "via", &format!("{v4}.1")]);
            peer.run(&["-6", "route", "add", "default", "via", &format!("{v6}::1")]);
        }

        t.verify();
        t
    }

    /// Pod -> origin TCP connect over IPv4 and IPv6 to listeners bound in
    /// the origin namespace; retries for up to 2 s per family.
    fn verify(&self) {
        for ip in [ORIGIN_V4, ORIGIN_V6] {
            let ip: IpAddr = ip.parse().expect("constant address");
            let listener = self.origin.within(move || {
                TcpListener::bind(SocketAddr::new(ip, 0))
                    .unwrap_or_else(|e| panic!("topology check: bind {ip} in origin: {e}"))
            });
            let addr = listener.local_addr().expect("local_addr");
            if let Err(e) = self
                .pod
                .within(move || connect_retry(addr, Duration::from_secs(2)))
            {
                panic!(
                    "topology check: pod ({}) cannot TCP-connect to origin {addr} within 2 s: {e}",
                    self.pod.name()
                );
            }
        }
    }
}

/// TCP-connects to `addr` from the calling thread's namespace, retrying
/// (every 50 ms, each attempt with a timeout of at most 500 ms) until
/// `budget` is spent; the connection is closed again at once. Returns the
/// last error if no attempt succeeded.
pub fn connect_retry(addr: SocketAddr, budget: Duration) -> std::io::Result<()> {
    let deadline = Instant::now() + budget;
    let mut last;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let attempt = left
            .min(Duration::from_millis(500))
            .max(Duration::from_millis(10));
        match TcpStream::connect_timeout(&addr, attempt) {
            Ok(_) => return Ok(()),
            Err(e) => last = e,
        }
        if Instant::now() >= deadline {
            return Err(last);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
