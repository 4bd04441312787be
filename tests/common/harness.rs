//! An in-process proxy on 127.0.0.1 for the loopback test tier: a private
//! two-worker tokio runtime, a [`KernelState`] that sends every connection
//! to one destination, a policy parsed from YAML, and the access log in a
//! temporary file.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use sockwarden::accesslog::AccessLog;
use sockwarden::bpf::OrigDst;
use sockwarden::config::{Config, PipeSizes};
use sockwarden::policy::PolicySet;
use sockwarden::proxy::{KernelState, Proxy, ProxySettings};
use tokio::sync::watch;

use super::origin::{Origin, OriginConfig};

/// The policy name the tests' configuration uses.
pub const POLICY: &str = "loopback-test";

/// How long a test waits for an access-log line.
pub const LOG_WAIT: Duration = Duration::from_secs(5);

// ---------------------------------------------------------------------------
// Harness.

/// Sends every connection to one fixed destination (or to none).
pub struct FixedOrigDst(Option<SocketAddr>);

impl KernelState for FixedOrigDst {
    fn take_orig_dst(&self, _peer: SocketAddr, _local: SocketAddr) -> Option<OrigDst> {
        self.0.map(|dst| OrigDst {
            dst,
            policy_id: 0,
            cgroup_id: 1,
        })
    }
}

/// The test configuration: one policy covering 127.0.0.0/8 with L7 rules.
/// `global_upstream` and `rule_upstream` are YAML flow mappings (or empty).
pub fn config_yaml(global_upstream: &str, rule_upstream: &str) -> String {
    let mut text = String::from("proxy: { listen: \"127.0.0.1:15001\" }\n");
    if !global_upstream.is_empty() {
        text.push_str(&format!("upstream: {global_upstream}\n"));
    }
    text.push_str(&format!(
        r#"policies:
  - name: {POLICY}
    cgroup: /sockwarden-loopback-test
    egress:
      - to: ["127.0.0.0/8"]
        http:
          - method: "GET|HEAD|POST|PUT"
            path: "/data/.*"
            upgrade: [echo, websocket]
          - method: "POST|PUT"
            path: "/echo"
          - method: "GET|HEAD"
            path: "/status/.*"
"#
    ));
    if !rule_upstream.is_empty() {
        text.push_str(&format!("        upstream: {rule_upstream}\n"));
    }
    text
}

/// A unique path for an access-log file.
pub fn temp_log_path() -> PathBuf {
    static N: AtomicU64 = AtomicU64::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    std::env::temp_dir().join(format!(
        "sockwarden-proxy-test-{}-{n}.log",
        std::process::id()
    ))
}

/// The proxy's own limits, for the tests of them.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub request_head_timeout: Duration,
    pub max_connections: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            request_head_timeout: Duration::from_secs(10),
            max_connections: 10_000,
        }
    }
}

/// A running proxy on 127.0.0.1 with its own runtime; stopped on drop.
pub struct Harness {
    rt: Option<tokio::runtime::Runtime>,
    pub addr: SocketAddr,
    shutdown: watch::Sender<bool>,
    task: Option<tokio::task::JoinHandle<()>>,
    log_path: PathBuf,
}

impl Harness {
    /// A proxy whose connections all go to `dst` (None: no original
    /// destination), with default upstream settings.
    pub fn start(dst: Option<SocketAddr>) -> Harness {
        Harness::with_config(dst, "", "")
    }

    pub fn with_config(
        dst: Option<SocketAddr>,
        global_upstream: &str,
        rule_upstream: &str,
    ) -> Harness {
        Harness::with_engine(dst, global_upstream, rule_upstream, Some(1 << 20))
    }

    /// The same, with the body engine chosen: Some(pipe size) for splice,
    /// None for copy.
    pub fn with_engine(
        dst: Option<SocketAddr>,
        global_upstream: &str,
        rule_upstream: &str,
        splice_pipe_size: Option<usize>,
    ) -> Harness {
        Harness::build(
            dst,
            &config_yaml(global_upstream, rule_upstream),
            splice_pipe_size,
            Limits::default(),
        )
    }

    /// A proxy with default upstream settings and `limits`.
    pub fn with_limits(dst: Option<SocketAddr>, limits: Limits) -> Harness {
        Harness::build(dst, &config_yaml("", ""), Some(1 << 20), limits)
    }

    /// A proxy whose connections all go to `dst`, configured by the YAML
    /// text `yaml` (its listen address is not used), with the body engine
    /// chosen as in [`Harness::with_engine`].
    pub fn with_yaml(
        dst: Option<SocketAddr>,
        yaml: &str,
        splice_pipe_size: Option<usize>,
    ) -> Harness {
        Harness::build(dst, yaml, splice_pipe_size, Limits::default())
    }

    fn build(
        dst: Option<SocketAddr>,
        yaml: &str,
        splice_pipe_size: Option<usize>,
        limits: Limits,
    ) -> Harness {
        let config = Config::parse(yaml, Path::new("proxy-test.yaml"))
            .unwrap_or_else(|e| panic!("test config: {e}\n{yaml}"));
        let policies = Arc::new(PolicySet::compile(&config));
        let log_path = temp_log_path();
        let _ = std::fs::remove_file(&log_path);
        let log = AccessLog::open(Some(log_path.to_str().expect("utf-8 temp path")))
            .expect("open access log");
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("tokio runtime");
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .expect("bind proxy listener");
        let addr = listener.local_addr().expect("proxy local_addr");
        let proxy = Proxy::new(
            policies,
            Arc::new(FixedOrigDst(dst)),
            log,
            ProxySettings {
                client_idle_timeout: Duration::from_secs(10),
                request_head_timeout: limits.request_head_timeout,
                max_connections: limits.max_connections,
                skip_tuple_check: false,
                pipes: PipeSizes {
                    requests: splice_pipe_size,
                    responses: splice_pipe_size,
                },
                sockmap: false,
            },
        );
        let (shutdown, rx) = watch::channel(false);
        let task = rt.spawn(proxy.serve(listener, rx));
        Harness {
            rt: Some(rt),
            addr,
            shutdown,
            task: Some(task),
            log_path,
        }
    }

    /// Every access-log line written so far, parsed.
    pub fn log_lines(&self) -> Vec<Value> {
        let text = std::fs::read_to_string(&self.log_path).unwrap_or_default();
        text.lines()
            // The writer may be in the middle of a line; skip partial ones.
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// The access log once it has at least `n` lines, waiting up to [`LOG_WAIT`].
    pub fn wait_log_lines(&self, n: usize) -> Vec<Value> {
        let deadline = Instant::now() + LOG_WAIT;
        loop {
            let lines = self.log_lines();
            if lines.len() >= n || Instant::now() >= deadline {
                return lines;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The first access-log line with `status`, waiting up to [`LOG_WAIT`].
    pub fn log_line_with_status(&self, status: u16) -> Value {
        let deadline = Instant::now() + LOG_WAIT;
        loop {
            if let Some(v) = self
                .log_lines()
                .into_iter()
                .find(|v| v["status"] == u64::from(status))
            {
                return v;
            }
            if Instant::now() >= deadline {
                panic!(
                    "no access-log line with status {status} within {LOG_WAIT:?}; lines: {:?}",
                    self.log_lines()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// A loopback origin with `cfg`, and a proxy whose every connection goes to it.
pub fn origin_and_proxy(cfg: OriginConfig) -> (Origin, Harness) {
    let origin = Origin::start("127.0.0.1:0".parse().unwrap(), None, cfg);
    let proxy = Harness::start(Some(origin.addr()));
    (origin, proxy)
}

impl Drop for Harness {
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
        if let Some(rt) = self.rt.take() {
            if let Some(task) = self.task.take() {
                let _ =
                    rt.block_on(async { tokio::time::timeout(Duration::from_secs(2), task).await });
            }
            rt.shutdown_timeout(Duration::from_secs(2));
        }
        let _ = std::fs::remove_file(&self.log_path);
    }
}
