//! An in-process proxy on 127.0.0.1 for the loopback test tier: a private
//! two-worker tokio runtime, a [`KernelState`] that sends every connection
//! to one destination, a policy parsed from YAML, and the access log in a
//! temporary file. Also the tier's origins (bound on 127.0.0.1) and its
//! blocking client.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use sockwarden::accesslog::AccessLog;
use sockwarden::bpf::OrigDst;
use sockwarden::config::{Config, PipeSizes};
use sockwarden::policy::PolicySet;
use sockwarden::proxy::{KernelState, Proxy, ProxySettings};
use sockwarden::tls::TlsContext;
use tokio::sync::watch;

use crate::common::h1::{self, Response};
use crate::common::origin::{Origin, OriginConfig};
use crate::common::stress::StressOrigin;
use crate::common::{io_timeout, wait_for};

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
        let policies = sockwarden::live::Live::new(Arc::new(PolicySet::compile(&config)));
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
                handshake_timeout: config.tls.handshake_timeout,
                max_connections: limits.max_connections,
                skip_tuple_check: false,
                pipes: PipeSizes {
                    requests: splice_pipe_size,
                    responses: splice_pipe_size,
                },
                sockmap: false,
            },
            TlsContext::from_config(&config).unwrap_or_else(|e| panic!("test TLS: {e}")),
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

    /// A client connection to the proxy.
    pub fn connect(&self) -> Client {
        Client::connect(self.addr)
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
        wait_for(LOG_WAIT, || self.log_lines(), |lines| lines.len() >= n)
    }

    /// The first access-log line with `status`, waiting up to [`LOG_WAIT`].
    pub fn log_line_with_status(&self, status: u16) -> Value {
        self.log_line_where(&format!("status {status}"), |v| {
            v["status"] == u64::from(status)
        })
    }

    /// The first access-log line whose flags include `flag`, waiting up to
    /// [`LOG_WAIT`].
    pub fn log_line_with_flag(&self, flag: &str) -> Value {
        self.log_line_where(&format!("flag {flag}"), |v| flags(v).contains(&flag))
    }

    fn log_line_where(&self, what: &str, found: impl Fn(&Value) -> bool) -> Value {
        let lines = wait_for(
            LOG_WAIT,
            || self.log_lines(),
            |lines| lines.iter().any(&found),
        );
        match lines.iter().find(|v| found(v)) {
            Some(line) => line.clone(),
            None => panic!("no access-log line with {what} within {LOG_WAIT:?}; lines: {lines:?}"),
        }
    }
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

/// The flags of an access-log line.
pub fn flags(line: &Value) -> Vec<&str> {
    line["flags"]
        .as_array()
        .unwrap_or_else(|| panic!("no flags array in {line}"))
        .iter()
        .map(|f| f.as_str().expect("flag is a string"))
        .collect()
}

/// Asserts an access-log line's flags are exactly `want`.
pub fn assert_flags(line: &Value, want: &[&str]) {
    assert_eq!(flags(line), want, "flags of {line}");
}

/// A listener on an ephemeral port of 127.0.0.1.
pub fn loopback_listener() -> TcpListener {
    TcpListener::bind("127.0.0.1:0").expect("bind on 127.0.0.1")
}

/// A test origin with `cfg` on 127.0.0.1.
pub fn origin(cfg: OriginConfig) -> Origin {
    Origin::serve(loopback_listener(), cfg)
}

/// The stress origin on 127.0.0.1.
pub fn stress_origin() -> StressOrigin {
    StressOrigin::serve(loopback_listener())
}

/// A loopback origin with `cfg`, and a proxy whose every connection goes to it.
pub fn origin_and_proxy(cfg: OriginConfig) -> (Origin, Harness) {
    let origin = origin(cfg);
    let proxy = Harness::start(Some(origin.addr()));
    (origin, proxy)
}

/// A loopback address nothing listens on.
pub fn closed_port() -> SocketAddr {
    // The listener is dropped at once: nothing listens there any more.
    loopback_listener().local_addr().expect("addr")
}

/// Asserts `resp` is a response of the proxy's own with `status`, and
/// returns its `sockwarden-error` (the reason it names).
pub fn proxy_error(resp: &Response, status: u16) -> &str {
    assert_eq!(resp.status, status, "{resp}");
    resp.head
        .field("sockwarden-error")
        .unwrap_or_else(|| panic!("no sockwarden-error header: {resp}"))
}

/// A blocking test client on one connection, with [`io_timeout`]s.
pub struct Client {
    pub w: TcpStream,
    pub r: BufReader<TcpStream>,
}

impl Client {
    pub fn connect(addr: SocketAddr) -> Client {
        let w = TcpStream::connect_timeout(&addr, io_timeout())
            .unwrap_or_else(|e| panic!("connect {addr}: {e}"));
        Client::over(w)
    }

    /// A client whose socket is bound to `ip` (any 127.0.0.0/8 address is
    /// this host's) before it connects to `addr`.
    pub fn connect_from(ip: std::net::Ipv4Addr, addr: SocketAddr) -> Client {
        use nix::sys::socket::{
            bind, connect, socket, AddressFamily, SockFlag, SockType, SockaddrIn,
        };
        use std::os::fd::AsRawFd;
        let SocketAddr::V4(to) = addr else {
            panic!("connect_from: {addr} is not IPv4");
        };
        let fd = socket(
            AddressFamily::Inet,
            SockType::Stream,
            SockFlag::SOCK_CLOEXEC,
            None,
        )
        .expect("socket");
        bind(
            fd.as_raw_fd(),
            &SockaddrIn::from(std::net::SocketAddrV4::new(ip, 0)),
        )
        .unwrap_or_else(|e| panic!("bind {ip}: {e}"));
        connect(fd.as_raw_fd(), &SockaddrIn::from(to))
            .unwrap_or_else(|e| panic!("connect {addr} from {ip}: {e}"));
        Client::over(TcpStream::from(fd))
    }

    fn over(w: TcpStream) -> Client {
        w.set_read_timeout(Some(io_timeout())).expect("timeout");
        w.set_write_timeout(Some(io_timeout())).expect("timeout");
        let r = BufReader::new(w.try_clone().expect("clone client socket"));
        Client { w, r }
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.w.write_all(bytes).expect("write to proxy");
    }

    /// The next response (the final one or an interim 1xx).
    pub fn response(&mut self) -> Response {
        self.read_response(false)
    }

    /// The next response; `head_request`: it answers a HEAD (or a 101).
    pub fn read_response(&mut self, head_request: bool) -> Response {
        h1::read_response(&mut self.r, head_request)
            .unwrap_or_else(|e| panic!("reading a response: {e}"))
    }

    /// Sends `GET path` (keep-alive) and reads the response.
    pub fn get(&mut self, path: &str) -> Response {
        self.send(
            &h1::HeadWriter::request("GET", path)
                .field("Host", "origin.test")
                .finish(),
        );
        self.response()
    }

    /// Everything until the peer closes (bounded by the read timeout).
    pub fn rest(&mut self) -> Vec<u8> {
        let mut out = Vec::new();
        let _ = self.r.read_to_end(&mut out);
        out
    }

    /// Asserts the proxy closed the connection: the next read is EOF.
    pub fn expect_eof(&mut self) {
        let mut byte = [0u8; 1];
        match self.r.read(&mut byte) {
            Ok(0) => {}
            Ok(_) => panic!("expected EOF, got more bytes: {:?}", self.r.buffer()),
            Err(e) => panic!("expected EOF, got error {e}"),
        }
    }
}

/// A buffered reader that keeps every byte consumed from it, so a test
/// origin reading through [`h1`] knows the exact bytes a message came as.
/// Bytes read ahead but not consumed are in [`Recording::unread`].
pub struct Recording<R> {
    inner: BufReader<R>,
    consumed: Vec<u8>,
}

impl<R: Read> Recording<R> {
    pub fn new(inner: R) -> Recording<R> {
        Recording {
            inner: BufReader::new(inner),
            consumed: Vec::new(),
        }
    }

    /// Every byte consumed so far.
    pub fn consumed(&self) -> &[u8] {
        &self.consumed
    }

    /// Bytes read from the source but not consumed yet.
    pub fn unread(&self) -> &[u8] {
        self.inner.buffer()
    }
}

impl<R: Read> Read for Recording<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let available = self.fill_buf()?;
        let n = available.len().min(buf.len());
        buf[..n].copy_from_slice(&available[..n]);
        self.consume(n);
        Ok(n)
    }
}

impl<R: Read> BufRead for Recording<R> {
    fn fill_buf(&mut self) -> std::io::Result<&[u8]> {
        self.inner.fill_buf()
    }

    fn consume(&mut self, n: usize) {
        self.consumed.extend_from_slice(&self.inner.buffer()[..n]);
        self.inner.consume(n);
    }
}
