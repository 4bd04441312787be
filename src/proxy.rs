//! The layer-7 proxy: accepts connections the kernel redirected, reads
//! request heads, asks the policy, and forwards what is allowed.
//!
//! One tokio task per downstream connection. The original destination comes
//! from a [`KernelState`] (the kernel map in production), never from the
//! Host header.

// The data path stays readable: no function over 80 lines (threshold in
// clippy.toml; tables of tests excepted).
#![cfg_attr(not(test), warn(clippy::too_many_lines))]

use std::net::SocketAddr;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use nix::sys::socket::MsgFlags;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::accesslog::AccessLog;
use crate::bpf::{Maps, OrigDst};
use crate::config::PipeSizes;
use crate::live::Live;
use crate::metrics;
use crate::policy::PolicySet;
use crate::tls::TlsContext;

mod attempt;
mod body;
mod conn;
mod exchange;
pub mod http;
mod outcome;
pub mod retry;
mod splice;
mod stream;
mod tls;
mod transport;
pub mod upstream;

/// What the proxy needs from the kernel side (the pinned maps in
/// production; a stand-in in the loopback tests).
pub trait KernelState: Send + Sync + 'static {
    /// Takes the original destination of the connection from `peer`
    /// accepted on `local`.
    fn take_orig_dst(&self, peer: SocketAddr, local: SocketAddr) -> Option<OrigDst>;

    /// Marks an upstream socket before connect() so its tuple is tracked.
    fn mark_upstream(&self, _socket: BorrowedFd<'_>) {}

    /// Whether a socket in namespace `netns_cookie` holds `src -> dst`.
    fn tuple_in_use(&self, _netns_cookie: u64, _src: SocketAddr, _dst: SocketAddr) -> bool {
        false
    }

    /// Sockmap engine: the proxy has read `bytes` from the connection from
    /// `peer` accepted on `local`.
    fn report_consumed(&self, _peer: SocketAddr, _local: SocketAddr, _bytes: u64) {}

    /// Sockmap engine: that connection is over.
    fn forget_consumed(&self, _peer: SocketAddr, _local: SocketAddr) {}
}

impl KernelState for Maps {
    fn take_orig_dst(&self, peer: SocketAddr, local: SocketAddr) -> Option<OrigDst> {
        Maps::take_orig_dst(self, peer, local).unwrap_or_else(|e| {
            tracing::error!(error = %e, "reading the original destination");
            None
        })
    }

    fn mark_upstream(&self, socket: BorrowedFd<'_>) {
        if let Err(e) = Maps::mark_upstream(self, socket) {
            tracing::warn!(error = %e, "marking an upstream socket for tuple tracking");
        }
    }

    fn report_consumed(&self, peer: SocketAddr, local: SocketAddr, bytes: u64) {
        if let Err(e) = Maps::report_consumed(self, peer, local, bytes) {
            tracing::warn!(error = %e, "reporting bytes read to the sockmap engine");
        }
    }

    fn forget_consumed(&self, peer: SocketAddr, local: SocketAddr) {
        Maps::forget_consumed(self, peer, local);
    }

    fn tuple_in_use(&self, netns_cookie: u64, src: SocketAddr, dst: SocketAddr) -> bool {
        Maps::tuple_in_use(self, netns_cookie, src, dst).unwrap_or_else(|e| {
            // Unknown counts as taken: the fallback port is always safe.
            tracing::warn!(error = %e, "reading the tuple map");
            true
        })
    }
}

/// Settings of the proxy itself.
#[derive(Debug, Clone, Copy)]
pub struct ProxySettings {
    pub client_idle_timeout: Duration,
    /// From a request head's first byte to its end.
    pub request_head_timeout: Duration,
    /// From a ClientHello's first byte to the end of the TLS handshake.
    pub handshake_timeout: Duration,
    /// Most workload connections served at once; past it, new ones are
    /// answered 503 and closed at accept.
    pub max_connections: usize,
    /// Test-only: skip the in-use tuple check in preserve-ip-port.
    pub skip_tuple_check: bool,
    /// Per body direction, Some(pipe size): splice kernel-side; None: copy.
    pub pipes: PipeSizes,
    /// The sockmap engine is on: report bytes read from workloads.
    pub sockmap: bool,
}

pub struct Proxy {
    /// The policies in force: each request is judged by one snapshot.
    policies: Live<PolicySet>,
    kernel: Arc<dyn KernelState>,
    pool: upstream::Pool,
    budget: retry::Budget,
    /// The namespace the proxy's sockets live in (tuple map keys).
    netns_cookie: u64,
    log: AccessLog,
    settings: ProxySettings,
    next_downstream_id: AtomicU64,
    /// One permit per connection being served (`max_connections`).
    slots: Arc<Semaphore>,
    /// The 503 written to a connection refused at accept.
    refusal: Vec<u8>,
    /// Every downstream connection's task.
    tasks: Connections,
    /// Interception and origination.
    tls: TlsContext,
}

/// The downstream connection tasks, tracked so that shutdown can wait for
/// the requests in flight.
#[derive(Default)]
struct Connections {
    tracker: TaskTracker,
    /// Set when draining starts: connections take no new request.
    drain: CancellationToken,
    /// Set at the drain deadline: what is left is cut.
    cut: CancellationToken,
}

/// How a drain ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Drained {
    /// Connections that finished by themselves.
    pub finished: usize,
    /// Connections cut at the deadline.
    pub cut: usize,
}

impl Connections {
    fn spawn(&self, task: impl std::future::Future<Output = ()> + Send + 'static) {
        let cut = self.cut.clone();
        self.tracker.spawn(async move {
            tokio::select! {
                () = task => {}
                () = cut.cancelled() => {}
            }
        });
    }

    /// Resolves when draining starts.
    async fn draining(&self) {
        self.drain.cancelled().await
    }

    fn is_draining(&self) -> bool {
        self.drain.is_cancelled()
    }
}

/// How often idle upstream connections are swept.
const SWEEP_INTERVAL: Duration = Duration::from_millis(500);

impl Proxy {
    pub fn new(
        policies: Live<PolicySet>,
        kernel: Arc<dyn KernelState>,
        log: AccessLog,
        settings: ProxySettings,
        tls: TlsContext,
    ) -> Arc<Proxy> {
        Arc::new(Proxy {
            policies,
            kernel,
            pool: upstream::Pool::default(),
            budget: retry::Budget::default(),
            netns_cookie: upstream::own_netns_cookie(),
            log,
            settings,
            next_downstream_id: AtomicU64::new(1),
            slots: Arc::new(Semaphore::new(settings.max_connections)),
            refusal: refusal(settings.max_connections),
            tasks: Connections::default(),
            tls,
        })
    }

    /// Drains the connections: none takes a new request, in-flight ones
    /// may finish within `deadline`, and what is left then is cut and
    /// counted. Call it once the accept loops have stopped.
    pub async fn drain(&self, deadline: Duration) -> Drained {
        let tasks = &self.tasks;
        let open = tasks.tracker.len();
        tasks.drain.cancel();
        tasks.tracker.close();
        let cut = match tokio::time::timeout(deadline, tasks.tracker.wait()).await {
            Ok(()) => 0,
            Err(_) => {
                let left = tasks.tracker.len();
                tasks.cut.cancel();
                tasks.tracker.wait().await;
                metrics::connections_cut(left);
                left
            }
        };
        Drained {
            finished: open.saturating_sub(cut),
            cut,
        }
    }

    /// The policies in force now: one snapshot judges a whole request (or
    /// ClientHello), however a reload swaps them meanwhile.
    fn policies(&self) -> Arc<PolicySet> {
        self.policies.get()
    }

    /// Idle upstream connections held now.
    pub fn idle_upstreams(&self) -> usize {
        self.pool.idle_count()
    }

    /// Accepts and serves connections until `shutdown` turns true. A
    /// failed accept (EMFILE, ENFILE, ...) pauses accepting for a while
    /// (see [`accept_backoff`]); connections already accepted are served
    /// meanwhile, and accepting resumes by itself.
    pub async fn serve(
        self: Arc<Self>,
        listener: TcpListener,
        mut shutdown: watch::Receiver<bool>,
    ) {
        metrics::downstream_limit(self.settings.max_connections);
        let mut sweep = tokio::time::interval(SWEEP_INTERVAL);
        let mut failures = 0u32;
        let mut paused_until: Option<Instant> = None;
        let mut error_log = LogEvery::new(LOG_INTERVAL);
        let mut refusal_log = LogEvery::new(LOG_INTERVAL);
        loop {
            tokio::select! {
                accepted = listener.accept(), if paused_until.is_none() => match accepted {
                    Ok((stream, peer)) => {
                        failures = 0;
                        if !self.admit(stream, peer) {
                            if let Some(n) = refusal_log.tick(Instant::now(), 1) {
                                tracing::warn!(
                                    max_connections = self.settings.max_connections,
                                    refused_since_last_log = n,
                                    "connection limit reached: refusing new connections"
                                );
                            }
                        }
                    }
                    Err(e) => {
                        failures = failures.saturating_add(1);
                        let errno = metrics::Errno::of(&e);
                        metrics::accept_error(errno);
                        let pause = accept_backoff(failures);
                        if let Some(n) = error_log.tick(Instant::now(), 1) {
                            tracing::warn!(
                                error = %e,
                                errno = errno.as_str(),
                                failures_since_last_log = n,
                                pause_ms = pause.as_millis() as u64,
                                "accept failed; pausing the listener"
                            );
                        }
                        paused_until = Some(Instant::now() + pause);
                    }
                },
                () = sleep_until(paused_until), if paused_until.is_some() => paused_until = None,
                _ = sweep.tick() => self.pool.sweep(),
                _ = shutdown.changed() => {
                    if *shutdown.borrow() {
                        return;
                    }
                }
            }
        }
    }

    /// Serves an accepted connection if a slot is free; otherwise refuses
    /// it and returns false.
    fn admit(self: &Arc<Self>, stream: TcpStream, peer: SocketAddr) -> bool {
        let local = match stream.local_addr() {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(error = %e, "accepted socket has no local address");
                return true;
            }
        };
        let Ok(slot) = Arc::clone(&self.slots).try_acquire_owned() else {
            metrics::downstream_rejected(metrics::Rejected::MaxConnections);
            // The kernel's entry for this connection goes now, not when
            // the workload closes its socket.
            let _ = self.kernel.take_orig_dst(peer, local);
            // One non-blocking send into an empty send buffer: it never
            // waits. A client whose request already arrived may see a reset
            // instead (closing with unread bytes resets).
            let _ = nix::sys::socket::send(
                stream.as_raw_fd(),
                &self.refusal,
                MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL,
            );
            return false;
        };
        let _ = stream.set_nodelay(true);
        let id = self.next_downstream_id.fetch_add(1, Ordering::Relaxed);
        let proxy = Arc::clone(self);
        self.tasks.spawn(async move {
            proxy.handle(id, stream, peer, local).await;
            drop(slot);
        });
        true
    }
}

/// How often the accept loop logs failures and refusals at most.
const LOG_INTERVAL: Duration = Duration::from_secs(5);

/// The pause after `failures` consecutive failed accepts: 10 ms, doubling
/// up to 1 s. Long enough that a full fd table (EMFILE) does not spin the
/// loop, short enough that accepting resumes soon after fds are freed.
pub fn accept_backoff(failures: u32) -> Duration {
    const FIRST: Duration = Duration::from_millis(10);
    const MAX: Duration = Duration::from_secs(1);
    match failures {
        0 => Duration::ZERO,
        n => FIRST
            .checked_mul(1u32 << (n - 1).min(16))
            .map_or(MAX, |d| d.min(MAX)),
    }
}

/// The default `proxy.max_connections` for a soft RLIMIT_NOFILE of
/// `nofile`: a quarter of the fds (at most 1024) stays for listeners, maps,
/// pipes and pooled upstreams, and each connection gets two (its own and
/// its upstream's).
pub fn default_max_connections(nofile: u64) -> usize {
    let reserve = (nofile / 4).min(1024);
    usize::try_from((nofile - reserve) / 2)
        .unwrap_or(usize::MAX)
        .max(1)
}

/// The soft RLIMIT_NOFILE of this process.
pub fn nofile_limit() -> std::io::Result<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit into the struct we pass, which
    // lives for the call.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(lim.rlim_cur)
}

/// The response to a connection refused by the connection limit.
fn refusal(max: usize) -> Vec<u8> {
    let reason = format!("connection limit reached: proxy.max_connections = {max}");
    http::local_response(
        503,
        &[("sockwarden-error", &reason)],
        &format!("sockwarden: {reason}\n"),
        true,
    )
}

/// Rate-limits a log line: at most one per `every`, carrying how many
/// events it stands for.
struct LogEvery {
    every: Duration,
    last: Option<Instant>,
    pending: u64,
}

impl LogEvery {
    fn new(every: Duration) -> LogEvery {
        LogEvery {
            every,
            last: None,
            pending: 0,
        }
    }

    /// Records `n` events at `now`; Some(events since the last line) when a
    /// line is due.
    fn tick(&mut self, now: Instant, n: u64) -> Option<u64> {
        self.pending += n;
        let due = self
            .last
            .is_none_or(|last| now.duration_since(last) >= self.every);
        if !due {
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.pending))
    }
}

/// Sleeps until `at`; forever when None.
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stand-in kernel: every connection was redirected to `0`.
    struct Redirected(SocketAddr);

    impl KernelState for Redirected {
        fn take_orig_dst(&self, _peer: SocketAddr, _local: SocketAddr) -> Option<OrigDst> {
            Some(OrigDst {
                dst: self.0,
                policy_id: 0,
                cgroup_id: 1,
            })
        }
    }

    /// An origin on loopback answering each request with a 10-byte body
    /// whose second half comes `gap` after the first.
    async fn slow_origin(gap: Duration) -> SocketAddr {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind origin");
        let addr = listener.local_addr().expect("origin addr");
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut b = [0u8; 1024];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match s.read(&mut b).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&b[..n]),
                        }
                    }
                    let _ = s
                        .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nfirst")
                        .await;
                    tokio::time::sleep(gap).await;
                    let _ = s.write_all(b"_last").await;
                    let _ = s.read(&mut b).await;
                });
            }
        });
        addr
    }

    /// A proxy on loopback for `origin`; returns it, its address and its
    /// accept loop's shutdown switch.
    async fn proxy_for(origin: SocketAddr) -> (Arc<Proxy>, SocketAddr, watch::Sender<bool>) {
        let yaml = "proxy: { listen: \"127.0.0.1:15001\" }\npolicies:\n  - name: p\n    cgroup: /sockwarden-drain-test\n    egress:\n      - to: [\"127.0.0.0/8\"]\n        http:\n          - method: GET\n";
        let config = crate::config::Config::parse(yaml, std::path::Path::new("drain.yaml"))
            .expect("test config");
        let proxy = Proxy::new(
            Live::new(Arc::new(PolicySet::compile(&config))),
            Arc::new(Redirected(origin)),
            AccessLog::open(Some("off")).expect("no access log"),
            ProxySettings {
                client_idle_timeout: Duration::from_secs(10),
                request_head_timeout: Duration::from_secs(10),
                handshake_timeout: Duration::from_secs(10),
                max_connections: 16,
                skip_tuple_check: true,
                pipes: PipeSizes {
                    requests: None,
                    responses: None,
                },
                sockmap: false,
            },
            TlsContext::default(),
        );
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy addr");
        let (tx, rx) = watch::channel(false);
        tokio::spawn(Arc::clone(&proxy).serve(listener, rx));
        (proxy, addr, tx)
    }

    /// Sends one request and reads until the first body byte: the request
    /// is then in flight.
    async fn in_flight(proxy: SocketAddr) -> (TcpStream, Vec<u8>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut c = TcpStream::connect(proxy)
            .await
            .expect("connect to the proxy");
        c.write_all(b"GET /slow HTTP/1.1\r\nHost: origin\r\n\r\n")
            .await
            .expect("send request");
        let mut got = Vec::new();
        let mut b = [0u8; 1024];
        while !String::from_utf8_lossy(&got).contains("first") {
            let n = tokio::time::timeout(Duration::from_secs(5), c.read(&mut b))
                .await
                .expect("the response starts within 5 s")
                .expect("read");
            assert!(
                n > 0,
                "closed before the body: {:?}",
                String::from_utf8_lossy(&got)
            );
            got.extend_from_slice(&b[..n]);
        }
        (c, got)
    }

    /// A connection that has had one whole exchange and is kept alive.
    async fn served_once(proxy: SocketAddr) -> TcpStream {
        use tokio::io::AsyncReadExt;
        let (mut c, mut got) = in_flight(proxy).await;
        let mut b = [0u8; 1024];
        while !String::from_utf8_lossy(&got).ends_with("first_last") {
            let n = tokio::time::timeout(Duration::from_secs(5), c.read(&mut b))
                .await
                .expect("the response ends within 5 s")
                .expect("read");
            assert!(n > 0, "closed mid-response");
            got.extend_from_slice(&b[..n]);
        }
        c
    }

    /// Reads to EOF (within 10 s).
    async fn rest(mut c: TcpStream, mut got: Vec<u8>) -> String {
        use tokio::io::AsyncReadExt;
        let deadline = Duration::from_secs(10);
        tokio::time::timeout(deadline, c.read_to_end(&mut got))
            .await
            .expect("the proxy closes within 10 s")
            .expect("read to EOF");
        String::from_utf8_lossy(&got).into_owned()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn drain_lets_a_slow_response_finish_and_closes_idle_connections() {
        let origin = slow_origin(Duration::from_millis(500)).await;
        let (proxy, addr, accept) = proxy_for(origin).await;
        // A kept-alive connection between requests (it has served one) is
        // closed at once.
        let idle = served_once(addr).await;
        let (busy, got) = in_flight(addr).await;
        accept.send(true).expect("stop accepting");
        let started = Instant::now();
        let (drained, body, idle_end) = tokio::join!(
            proxy.drain(Duration::from_secs(5)),
            rest(busy, got),
            rest(idle, Vec::new())
        );
        assert!(
            body.ends_with("first_last"),
            "whole body delivered: {body:?}"
        );
        assert_eq!(
            idle_end, "",
            "the idle connection is closed, answered nothing"
        );
        assert_eq!(
            drained,
            Drained {
                finished: 2,
                cut: 0
            }
        );
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{:?}",
            started.elapsed()
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_request_begun_when_the_drain_starts_is_answered_and_says_close() {
        use tokio::io::AsyncWriteExt;
        let origin = slow_origin(Duration::from_millis(100)).await;
        let (proxy, addr, accept) = proxy_for(origin).await;
        let mut c = TcpStream::connect(addr).await.expect("connect");
        c.write_all(b"GET /slow HTTP/1.1\r\nHost: or")
            .await
            .expect("send half a head");
        tokio::time::sleep(Duration::from_millis(100)).await;
        accept.send(true).expect("stop accepting");
        let finish = async {
            tokio::time::sleep(Duration::from_millis(100)).await;
            c.write_all(b"igin\r\n\r\n").await.expect("send the rest");
            rest(c, Vec::new()).await
        };
        let (drained, got) = tokio::join!(proxy.drain(Duration::from_secs(5)), finish);
        assert_answered_with_close(drained, &got);
    }

    /// `got` is one whole 200 that says `Connection: close`, the drain
    /// finished its one connection, and cut none.
    fn assert_answered_with_close(drained: Drained, got: &str) {
        let (head, body) = got
            .split_once("\r\n\r\n")
            .expect("a whole response, not a reset");
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert!(
            head.to_ascii_lowercase().contains("\r\nconnection: close"),
            "the last response of a draining proxy says close: {head}"
        );
        assert_eq!(body, "first_last");
        assert_eq!(
            drained,
            Drained {
                finished: 1,
                cut: 0
            }
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_new_connection_that_has_not_spoken_yet_is_served_through_a_drain() {
        use tokio::io::AsyncWriteExt;
        let origin = slow_origin(Duration::from_millis(50)).await;
        let (proxy, addr, accept) = proxy_for(origin).await;
        // Accepted just before the drain (an upgrade's last connections);
        // its request is still on its way.
        let mut c = TcpStream::connect(addr).await.expect("connect");
        tokio::time::sleep(Duration::from_millis(100)).await;
        accept.send(true).expect("stop accepting");
        let finish = async {
            tokio::time::sleep(Duration::from_millis(200)).await;
            c.write_all(b"GET /late HTTP/1.1\r\nHost: origin\r\n\r\n")
                .await
                .expect("send the request");
            rest(c, Vec::new()).await
        };
        let (drained, got) = tokio::join!(proxy.drain(Duration::from_secs(5)), finish);
        assert_answered_with_close(drained, &got);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn drain_cuts_what_outlives_its_deadline() {
        let origin = slow_origin(Duration::from_secs(30)).await;
        let (proxy, addr, accept) = proxy_for(origin).await;
        let (busy, got) = in_flight(addr).await;
        accept.send(true).expect("stop accepting");
        let started = Instant::now();
        let (drained, body) =
            tokio::join!(proxy.drain(Duration::from_millis(300)), rest(busy, got));
        assert_eq!(
            drained,
            Drained {
                finished: 0,
                cut: 1
            }
        );
        assert!(!body.contains("_last"), "cut mid-body: {body:?}");
        let took = started.elapsed();
        assert!(
            took >= Duration::from_millis(300) && took < Duration::from_secs(3),
            "{took:?}"
        );
    }

    #[test]
    fn accept_backoff_doubles_from_10ms_to_1s() {
        let ms = Duration::from_millis;
        let cases = [
            (0, ms(0)),
            (1, ms(10)),
            (2, ms(20)),
            (3, ms(40)),
            (7, ms(640)),
            (8, ms(1000)),
            (40, ms(1000)),
            (u32::MAX, ms(1000)),
        ];
        for (failures, pause) in cases {
            assert_eq!(accept_backoff(failures), pause, "after {failures} failures");
        }
    }

    #[test]
    fn default_max_connections_fits_the_fd_limit() {
        // (soft RLIMIT_NOFILE, connections)
        let cases = [
            (1, 1),
            (16, 6),
            (1024, 384),
            (20_000, 9_488),
            (1 << 20, 523_776),
        ];
        for (nofile, max) in cases {
            let got = default_max_connections(nofile);
            assert_eq!(got, max, "nofile {nofile}");
            // Two fds per connection plus the reserve never exceed the limit.
            assert!(nofile < 2 || (got as u64) * 2 <= nofile, "nofile {nofile}");
        }
    }

    #[test]
    fn log_lines_are_rate_limited_and_count_what_they_stand_for() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut log = LogEvery::new(s(5));
        // (seconds after t0, events, expected line)
        let steps = [
            (0, 1, Some(1)),
            (1, 1, None),
            (4, 3, None),
            (5, 1, Some(5)),
            (6, 1, None),
            (20, 2, Some(3)),
        ];
        for (at, n, want) in steps {
            assert_eq!(log.tick(t0 + s(at), n), want, "at {at} s");
        }
    }
}
