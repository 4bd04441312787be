//! Every metric sockwarden exports: names, descriptions, and the small
//! functions that record them. Names live here and nowhere else.
//!
//! Label values are bounded: policy names come from the configuration,
//! statuses are three-digit codes, reasons and errno names are fixed sets.

pub mod process;

use metrics::{
    counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram, Unit,
};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::bpf::{limits::MSG_UNREAD_LIMIT, DoorEvent};
use crate::policy::TlsDenial;
use crate::proxy::retry::RetryReason;

pub const HTTP_REQUESTS: &str = "sockwarden_http_requests_total";
pub const CONNECT_DENIED: &str = "sockwarden_connect_denied_total";
pub const CONNECT_DECISIONS: &str = "sockwarden_connect_decisions_total";
pub const CONNECT_REFUSED: &str = "sockwarden_connect_refused_total";
pub const REDIRECTED_CONNECTIONS: &str = "sockwarden_redirected_connections";
pub const REDIRECTED_CONNECTIONS_LIMIT: &str = "sockwarden_redirected_connections_limit";
pub const REDIRECTS_UNACCEPTED: &str = "sockwarden_redirects_unaccepted_total";
pub const REDIRECTS_UNREACHED: &str = "sockwarden_redirects_unreached_total";
pub const KERNEL_EVENTS_DROPPED: &str = "sockwarden_kernel_events_dropped_total";
pub const POLICY_CGROUP_PRESENT: &str = "sockwarden_policy_cgroup_present";
pub const UPSTREAM_OPENED: &str = "sockwarden_upstream_connections_opened_total";
pub const UPSTREAM_CLOSED: &str = "sockwarden_upstream_connections_closed_total";
pub const UPSTREAM_CONNECT_FAILURES: &str = "sockwarden_upstream_connect_failures_total";
pub const DOWNSTREAM_ACCEPTED: &str = "sockwarden_downstream_connections_total";
pub const DOWNSTREAM_ACTIVE: &str = "sockwarden_downstream_connections_active";
pub const ORIG_DST_MISSING: &str = "sockwarden_original_destination_missing_total";
pub const ACCESS_LOG_DROPPED: &str = "sockwarden_access_log_dropped_total";
pub const UPSTREAM_RETRIES: &str = "sockwarden_upstream_retries_total";
pub const RETRY_BUDGET_EXHAUSTED: &str = "sockwarden_upstream_retry_budget_exhausted_total";
pub const CONNECTIONS_CUT: &str = "sockwarden_downstream_connections_cut_total";
pub const CONFIG_RELOADS: &str = "sockwarden_config_reloads_total";
pub const WOULD_DENY: &str = "sockwarden_would_deny_total";
pub const UPSTREAM_IDLE: &str = "sockwarden_upstream_idle_connections";
pub const START_TIME: &str = "sockwarden_start_time_seconds";
pub const BUILD_INFO: &str = "sockwarden_build_info";
pub const REQUEST_DURATION: &str = "sockwarden_request_duration_seconds";
pub const UPSTREAM_CONNECT_DURATION: &str = "sockwarden_upstream_connect_duration_seconds";
pub const FIRST_BYTE: &str = "sockwarden_first_byte_seconds";
pub const TLS_HANDSHAKE_DURATION: &str = "sockwarden_tls_handshake_duration_seconds";

/// The buckets of every latency histogram (seconds): from half a
/// millisecond, a node-local exchange, to 30 s, past every default timeout
/// but the idle ones.
pub const LATENCY_BUCKETS: [f64; 15] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];
pub const SOURCE_PORT_FALLBACKS: &str = "sockwarden_source_port_fallbacks_total";
pub const TUPLES_EXPIRED: &str = "sockwarden_tuples_expired_total";
pub const FORWARDED_BYTES: &str = "sockwarden_forwarded_bytes_total";
pub const SOCKMAP_BYTES: &str = "sockwarden_sockmap_bytes_total";
pub const SOCKMAP_MESSAGES: &str = "sockwarden_sockmap_messages_total";
pub const SOCKMAP_CONNECTIONS: &str = "sockwarden_sockmap_connections_total";
pub const SOCKMAP_TO_TCP: &str = "sockwarden_sockmap_switches_to_tcp_total";
pub const SOCKMAP_LINKED: &str = "sockwarden_sockmap_linked_sockets_total";
pub const HTTP_REJECTED: &str = "sockwarden_http_rejected_total";
pub const UPGRADES_REMOVED: &str = "sockwarden_http_upgrades_removed_total";
pub const DOWNSTREAM_LIMIT: &str = "sockwarden_downstream_connections_limit";
pub const DOWNSTREAM_REJECTED: &str = "sockwarden_downstream_rejected_total";
pub const ACCEPT_ERRORS: &str = "sockwarden_accept_errors_total";
pub const TIMEOUTS: &str = "sockwarden_timeouts_total";
pub const UDP_DECISIONS: &str = "sockwarden_udp_decisions_total";
pub const SOCKETS_REFUSED: &str = "sockwarden_sockets_refused_total";
pub const EGRESS_DROPPED: &str = "sockwarden_egress_dropped_packets_total";
pub const NET_RAW_PROCESSES: &str = "sockwarden_net_raw_processes";
pub const BPF_LSM_ACTIVE: &str = "sockwarden_bpf_lsm_active";
pub const TLS_DENIED: &str = "sockwarden_tls_denied_total";
pub const TLS_PASSTHROUGH: &str = "sockwarden_tls_passthrough_connections_total";
pub const TLS_HANDSHAKES: &str = "sockwarden_tls_handshakes_total";
pub const KTLS_CONNECTIONS: &str = "sockwarden_ktls_connections_total";
pub const KTLS_RECORDS: &str = "sockwarden_ktls_records_total";
pub const TLS_LEAVES: &str = "sockwarden_tls_leaf_certificates";
pub const TLS_LEAVES_ISSUED: &str = "sockwarden_tls_leaf_certificates_issued_total";

/// Installs the global recorder and describes every metric.
pub fn install() -> Result<PrometheusHandle, metrics_exporter_prometheus::BuildError> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &LATENCY_BUCKETS)?
        .install_recorder()?;
    process::describe();
    start_time(std::time::SystemTime::now());
    describe_histogram!(
        REQUEST_DURATION,
        Unit::Seconds,
        "requests from the head read to the response complete, by policy and verdict (allowed, denied, error)"
    );
    describe_histogram!(
        UPSTREAM_CONNECT_DURATION,
        Unit::Seconds,
        "new upstream TCP connections: from connect() to established (failures are not observed: see sockwarden_upstream_connect_failures_total)"
    );
    describe_histogram!(
        FIRST_BYTE,
        Unit::Seconds,
        "forwarded requests: from the request head read to the response head written to the workload, by policy"
    );
    describe_histogram!(
        TLS_HANDSHAKE_DURATION,
        Unit::Seconds,
        "TLS handshakes the proxy took part in, by side (downstream: with the workload; upstream: with the origin) and result"
    );
    describe_counter!(
        HTTP_REQUESTS,
        "HTTP requests handled by the proxy, by policy, verdict (allowed, denied, error) and response status"
    );
    describe_counter!(
        CONNECT_DENIED,
        "connect() calls refused with EPERM by policy, counted in the kernel"
    );
    describe_counter!(
        CONNECT_DECISIONS,
        "connect() decisions taken in the kernel, by policy and verdict (allowed, redirected, denied)"
    );
    describe_counter!(
        CONNECT_REFUSED,
        "connect() calls that would have been redirected, refused with ECONNREFUSED in the kernel, by policy and reason (connection_limit: the policy's max_connections sockets were open; socket_storage: no socket storage for the redirect's state)"
    );
    describe_counter!(
        UDP_DECISIONS,
        "UDP connect() and sendmsg() calls with a destination from policy cgroups, judged in the kernel, by policy and verdict (allow; deny: no UDP rule, EPERM; quic: an http rule governs that destination and port, EPERM)"
    );
    describe_counter!(
        SOCKETS_REFUSED,
        "socket() calls from policy cgroups refused with EPERM in the kernel, by policy and kind (raw: a raw socket; icmp: an ICMP socket without icmp: true; protocol: another inet protocol such as SCTP; packet: AF_PACKET, by the BPF LSM)"
    );
    describe_counter!(
        EGRESS_DROPPED,
        "packets of policy cgroups' sockets dropped by the cgroup_skb/egress wall, by policy and reason (forged: another protocol than its socket's, e.g. TCP from a raw socket; udp: UDP no rule allows; icmp: ICMP not allowed; protocol: a socket with no allowed flow)"
    );
    describe_gauge!(
        REDIRECTED_CONNECTIONS,
        "Redirected workload sockets open now, by policy, counted in the kernel (from connect() until the workload closes the socket)"
    );
    describe_gauge!(
        REDIRECTED_CONNECTIONS_LIMIT,
        "The policy's max_connections: redirected sockets it may hold open at once"
    );
    describe_counter!(
        REDIRECTS_UNACCEPTED,
        "Redirected connections the workload closed before the proxy accepted them; the kernel removed their original destination"
    );
    describe_counter!(
        REDIRECTS_UNREACHED,
        "Redirected connections that never reached the proxy's listener: the workload's socket closed without its handshake with the listener done (refused, timed out, unroutable, or given up); counted in the kernel"
    );
    describe_counter!(
        KERNEL_EVENTS_DROPPED,
        "Kernel events (denied connects and UDP sends, redirects that never reached the listener) not sent to userspace, by policy and reason (rate_limit: the policy's per-CPU token bucket was empty; ring_full: the ring buffer was full)"
    );
    describe_gauge!(
        POLICY_CGROUP_PRESENT,
        "1 when the policy's cgroup exists and is enforced, 0 while it does not exist (nothing is enforced for the policy); kept current by the cgroup watcher"
    );
    describe_counter!(UPSTREAM_OPENED, "Upstream connections opened");
    describe_counter!(
        UPSTREAM_CLOSED,
        "Upstream connections closed, by reason (server_close, connection_close_header, max_requests, idle_timeout, unsolicited_bytes, error)"
    );
    describe_counter!(
        UPSTREAM_CONNECT_FAILURES,
        "Failed upstream connection attempts, by errno name"
    );
    describe_counter!(DOWNSTREAM_ACCEPTED, "Connections accepted from workloads");
    describe_gauge!(DOWNSTREAM_ACTIVE, "Workload connections open now");
    describe_gauge!(
        DOWNSTREAM_LIMIT,
        "proxy.max_connections: most workload connections open at once"
    );
    describe_counter!(
        DOWNSTREAM_REJECTED,
        "Workload connections closed at accept, by reason (max_connections)"
    );
    describe_counter!(
        ACCEPT_ERRORS,
        "Failed accept() calls on the proxy listener, by errno name (EMFILE, ENFILE, ...); the listener backs off and retries"
    );
    describe_counter!(
        TIMEOUTS,
        "Exchanges cut by a timeout, by timeout (request_head: 408; client_hello: a TLS ClientHello not complete within tls.handshake_timeout, closed; request_body, response_body: no body progress within the body timeout)"
    );
    describe_counter!(
        ORIG_DST_MISSING,
        "Accepted connections with no original destination in the kernel map (not redirected by sockwarden)"
    );
    describe_counter!(
        ACCESS_LOG_DROPPED,
        "Access-log lines dropped because the writer fell behind"
    );
    describe_counter!(
        UPSTREAM_RETRIES,
        "Upstream retries, by reason (connect_failure, reset_before_response, status_503, idle_race)"
    );
    describe_counter!(
        RETRY_BUDGET_EXHAUSTED,
        "Retries not made because concurrent retries were at max(3, 20% of active upstream requests)"
    );
    describe_counter!(
        SOURCE_PORT_FALLBACKS,
        "preserve-ip-port upstream connections opened from another port because the in-use tuple map held the workload's 4-tuple"
    );
    describe_counter!(
        CONNECTIONS_CUT,
        "downstream connections cut at shutdown because they were still busy at the drain deadline"
    );
    describe_gauge!(
        UPSTREAM_IDLE,
        "upstream connections idle in the pool, ready for reuse (read at each scrape)"
    );
    describe_gauge!(
        BUILD_INFO,
        "always 1: the running build's version, commit and compiler, as labels"
    );
    gauge!(
        BUILD_INFO,
        "version" => env!("CARGO_PKG_VERSION"),
        "commit" => env!("SOCKWARDEN_COMMIT"),
        "rustc" => env!("SOCKWARDEN_RUSTC")
    )
    .set(1.0);
    describe_gauge!(
        START_TIME,
        "when this sockwarden process started, in seconds since the Unix epoch (uptime: time() - this)"
    );
    describe_counter!(
        WOULD_DENY,
        "what a policy in mode: audit let through that enforce mode would have refused, by policy and stage: connect (a TCP connect() no rule allows, counted by the kernel), http (a request no http rule matches), tls (a ClientHello no tls rule admits)"
    );
    describe_counter!(
        CONFIG_RELOADS,
        "configuration reloads (SIGHUP or sockwarden reload), by result: ok (in force), invalid (the file did not validate), rejected (it changes what only a restart can), failed (the kernel refused the new generation); anything but ok leaves the configuration in force whole"
    );
    describe_counter!(
        TUPLES_EXPIRED,
        "TIME_WAIT entries removed from the in-use tuple map after the TIME_WAIT period"
    );
    describe_counter!(
        FORWARDED_BYTES,
        "Bytes forwarded past the heads, by direction (upstream: request bodies and tunnels' workload-to-origin bytes; downstream: response bodies and tunnels' origin-to-workload bytes; tunnels are upgraded connections and TLS passed through) and engine (splice: kernel-side, copy: through the proxy's buffer)"
    );
    describe_counter!(
        SOCKMAP_BYTES,
        "sockmap engine: bytes sent by linked workload sockets, by path (redirect: straight into the proxy's socket by sk_msg; tcp: through the TCP stack)"
    );
    describe_counter!(
        SOCKMAP_MESSAGES,
        "sockmap engine: sendmsg() pieces of linked workload sockets, by path (redirect, tcp)"
    );
    describe_counter!(
        SOCKMAP_CONNECTIONS,
        "sockmap engine: linked workload connections by the path their first message took (redirect; tcp: the proxy's socket was not linked yet)"
    );
    describe_counter!(
        SOCKMAP_TO_TCP,
        format!("sockmap engine: redirected connections turned to TCP, by reason (unread_limit: the proxy had {} KiB unread; proxy_socket_closed)", MSG_UNREAD_LIMIT / 1024)
    );
    describe_counter!(
        SOCKMAP_LINKED,
        "sockmap engine: sockets entered in the kernel's socket maps, by side (workload, proxy)"
    );
    describe_counter!(
        HTTP_REJECTED,
        "Heads refused by the proxy's HTTP checks, by side (request: answered 4xx/5xx; response: answered 502) and reason"
    );
    describe_counter!(
        UPGRADES_REMOVED,
        "Requests forwarded without (some of) the Upgrade protocols they offered, because the matching rule does not allow them, by policy"
    );
    describe_gauge!(
        NET_RAW_PROCESSES,
        "Processes in the policy's cgroups that hold or can gain CAP_NET_RAW (and so could open AF_PACKET sockets) while AF_PACKET cannot be refused (the BPF LSM is not active or cannot load programs); 0 where it can; counted every 10 s"
    );
    describe_gauge!(
        BPF_LSM_ACTIVE,
        "1 when the BPF LSM is active (bpf in /sys/kernel/security/lsm) and the kernel loads BPF LSM programs, so AF_PACKET sockets from policy cgroups can be refused; else 0"
    );
    describe_counter!(
        TLS_DENIED,
        "Connections that opened with a TLS ClientHello answered with an alert and closed, by policy and reason (no_tls_rule, no_sni, name_not_allowed, ech: access_denied or unrecognized_name by policy; decode_error: the ClientHello does not parse; no_application_protocol: an intercepted client offers only protocols other than http/1.1, such as h2; unavailable: no leaf certificate could be made)"
    );
    describe_counter!(
        TLS_HANDSHAKES,
        "TLS handshakes the proxy made, by side (downstream: with a workload whose TLS it intercepts; upstream: with an origin, for interception and origination) and result (ok; failed; timeout: not done within tls.handshake_timeout)"
    );
    describe_counter!(
        KTLS_CONNECTIONS,
        "TLS connections the proxy terminated or originated (handshake done), by side and by which path their records took: ktls (the kernel encrypts and decrypts; bodies move with the splice engine) or copy (rustls in userspace; bodies copied), with the reason for copy (disabled: tls.ktls is false; kernel: no tls upper-layer protocol in this kernel; socket: the kernel refused TCP_ULP on this socket) and none for ktls"
    );
    describe_counter!(
        KTLS_RECORDS,
        "Records that are not application data which kTLS sockets delivered apart after the handshake, by side, record (session_ticket, key_update, close_notify, alert, other) and result (ok: handled and the connection went on or ended cleanly; failed: the connection was ended, for example a key update on a kernel without kTLS rekey)"
    );
    describe_gauge!(
        TLS_LEAVES,
        "Leaf certificates in the interception cache now (bounded by tls.leaf_cache)"
    );
    describe_counter!(
        TLS_LEAVES_ISSUED,
        "Leaf certificates signed by the node CA for interception (first issues and renewals)"
    );
    describe_counter!(
        TLS_PASSTHROUGH,
        "TLS connections passed through by their server name (or an L4 rule), spliced whole to the origin, by policy"
    );
    Ok(handle)
}

/// Why a ClientHello was answered with an alert.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsRefusal {
    Denied(TlsDenial),
    DecodeError,
    /// The client offers only protocols other than http/1.1 (ALPN).
    NoApplicationProtocol,
    /// Interception is not set up, or its leaf could not be made.
    Unavailable,
}

impl TlsRefusal {
    pub fn as_str(self) -> &'static str {
        match self {
            TlsRefusal::Denied(d) => d.label(),
            TlsRefusal::DecodeError => "decode_error",
            TlsRefusal::NoApplicationProtocol => "no_application_protocol",
            TlsRefusal::Unavailable => "unavailable",
        }
    }
}

/// One TLS connection's record path: kTLS, or copied for `reason`.
pub fn ktls_connection(side: TlsSide, path: Result<(), crate::tls::ktls::CopyReason>) {
    let (path, reason) = match path {
        Ok(()) => ("ktls", "none"),
        Err(r) => ("copy", r.as_str()),
    };
    counter!(KTLS_CONNECTIONS, "side" => side.as_str(), "path" => path, "reason" => reason)
        .increment(1);
}

/// A record a kTLS socket delivered apart, handled (`ok`) or not.
pub fn ktls_record(side: TlsSide, kind: crate::tls::ktls::Kind, ok: bool) {
    let result = if ok { "ok" } else { "failed" };
    counter!(KTLS_RECORDS, "side" => side.as_str(), "record" => kind.as_str(), "result" => result)
        .increment(1);
}

pub fn tls_refused(policy: &str, why: TlsRefusal) {
    counter!(TLS_DENIED, "policy" => policy.to_string(), "reason" => why.as_str()).increment(1);
}

/// Which side of the proxy a TLS handshake was with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsSide {
    Downstream,
    Upstream,
}

/// How a TLS handshake ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handshake {
    Ok,
    Failed,
    Timeout,
}

impl Handshake {
    /// The result of an upstream handshake.
    pub fn of<T>(r: &Result<T, crate::tls::client::HandshakeError>) -> Handshake {
        match r {
            Ok(_) => Handshake::Ok,
            Err(crate::tls::client::HandshakeError::Timeout(_)) => Handshake::Timeout,
            Err(_) => Handshake::Failed,
        }
    }
}

impl TlsSide {
    pub fn as_str(self) -> &'static str {
        match self {
            TlsSide::Downstream => "downstream",
            TlsSide::Upstream => "upstream",
        }
    }
}

/// A TLS handshake that ended `result` after `took`.
pub fn tls_handshake(side: TlsSide, result: Handshake, took: std::time::Duration) {
    let side = side.as_str();
    let result = match result {
        Handshake::Ok => "ok",
        Handshake::Failed => "failed",
        Handshake::Timeout => "timeout",
    };
    counter!(TLS_HANDSHAKES, "side" => side, "result" => result).increment(1);
    histogram!(TLS_HANDSHAKE_DURATION, "side" => side, "result" => result)
        .record(took.as_secs_f64());
}

/// The interception cache's size, and leaves issued ever.
pub fn tls_leaves(cached: usize, issued: u64) {
    gauge!(TLS_LEAVES).set(cached as f64);
    counter!(TLS_LEAVES_ISSUED).absolute(issued);
}

pub fn tls_passthrough(policy: &str) {
    counter!(TLS_PASSTHROUGH, "policy" => policy.to_string()).increment(1);
}

pub fn net_raw_processes(policy: &str, n: usize) {
    gauge!(NET_RAW_PROCESSES, "policy" => policy.to_string()).set(n as f64);
}

pub fn bpf_lsm_active(active: bool) {
    gauge!(BPF_LSM_ACTIVE).set(if active { 1.0 } else { 0.0 });
}

/// Which message of an exchange a head belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Request,
    Response,
}

/// A head refused by the HTTP checks; `reason` is a fixed name
/// ([`crate::proxy::http::HeadError::kind`]).
pub fn http_rejected(side: Side, reason: &'static str) {
    let side = match side {
        Side::Request => "request",
        Side::Response => "response",
    };
    counter!(HTTP_REJECTED, "side" => side, "reason" => reason).increment(1);
}

pub fn upgrade_removed(policy: &str) {
    counter!(UPGRADES_REMOVED, "policy" => policy.to_string()).increment(1);
}

/// Which way body bytes went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Workload to origin (request bodies).
    Upstream,
    /// Origin to workload (response bodies).
    Downstream,
}

pub fn forwarded(direction: Direction, copied: u64, spliced: u64) {
    let dir = match direction {
        Direction::Upstream => "upstream",
        Direction::Downstream => "downstream",
    };
    if copied > 0 {
        counter!(FORWARDED_BYTES, "direction" => dir, "engine" => "copy").increment(copied);
    }
    if spliced > 0 {
        counter!(FORWARDED_BYTES, "direction" => dir, "engine" => "splice").increment(spliced);
    }
}

pub fn upstream_retry(reason: RetryReason) {
    counter!(UPSTREAM_RETRIES, "reason" => reason.as_str()).increment(1);
}

pub fn retry_budget_exhausted() {
    counter!(RETRY_BUDGET_EXHAUSTED).increment(1);
}

pub fn source_port_fallback() {
    counter!(SOURCE_PORT_FALLBACKS).increment(1);
}

pub fn tuples_expired(n: usize) {
    counter!(TUPLES_EXPIRED).increment(n as u64);
}

/// Why an upstream connection was closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// The server closed it (EOF while idle or after a response).
    ServerClose,
    /// The server said `Connection: close` (or HTTP/1.0 without keep-alive).
    ConnectionCloseHeader,
    /// max_requests_per_connection (or the server's Keep-Alive max) reached.
    MaxRequests,
    IdleTimeout,
    /// Bytes arrived past a response's framing: never read as the next response.
    UnsolicitedBytes,
    Error,
}

impl CloseReason {
    pub fn as_str(self) -> &'static str {
        match self {
            CloseReason::ServerClose => "server_close",
            CloseReason::ConnectionCloseHeader => "connection_close_header",
            CloseReason::MaxRequests => "max_requests",
            CloseReason::IdleTimeout => "idle_timeout",
            CloseReason::UnsolicitedBytes => "unsolicited_bytes",
            CloseReason::Error => "error",
        }
    }
}

/// What became of a request: the `verdict` label of
/// `sockwarden_http_requests_total` and the access log's `verdict`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// Policy allowed it and it was forwarded.
    Allowed,
    /// Policy denied it (403).
    Denied,
    /// The proxy answered it itself: bad request, upstream failure, ...
    Error,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Allowed => "allowed",
            Verdict::Denied => "denied",
            Verdict::Error => "error",
        }
    }
}

/// `sockwarden_http_requests_total` for one policy, with the handles a
/// connection has used kept, so a request costs no registry lookup.
pub struct RequestCounter {
    policy: String,
    handles: Vec<((Verdict, u16), metrics::Counter)>,
}

impl RequestCounter {
    pub fn new(policy: &str) -> RequestCounter {
        RequestCounter {
            policy: policy.to_string(),
            handles: Vec::new(),
        }
    }

    pub fn record(&mut self, verdict: Verdict, status: u16) {
        let key = (verdict, status);
        if let Some((_, c)) = self.handles.iter().find(|(k, _)| *k == key) {
            c.increment(1);
            return;
        }
        let c = counter!(HTTP_REQUESTS, "policy" => self.policy.clone(), "verdict" => verdict.as_str(), "status" => status.to_string());
        c.increment(1);
        self.handles.push((key, c));
    }
}

/// A new upstream connection, `took` from connect() to established.
pub fn upstream_opened(took: std::time::Duration) {
    counter!(UPSTREAM_OPENED).increment(1);
    histogram!(UPSTREAM_CONNECT_DURATION).record(took.as_secs_f64());
}

/// A request's whole duration.
pub fn request_duration(policy: &str, verdict: Verdict, took: std::time::Duration) {
    histogram!(REQUEST_DURATION, "policy" => policy.to_string(), "verdict" => verdict.as_str())
        .record(took.as_secs_f64());
}

/// A forwarded request's time to the first response byte.
pub fn first_byte(policy: &str, took: std::time::Duration) {
    histogram!(FIRST_BYTE, "policy" => policy.to_string()).record(took.as_secs_f64());
}

pub fn upstream_closed(reason: CloseReason) {
    counter!(UPSTREAM_CLOSED, "reason" => reason.as_str()).increment(1);
}

pub fn upstream_connect_failure(errno: Errno) {
    counter!(UPSTREAM_CONNECT_FAILURES, "errno" => errno.as_str()).increment(1);
}

pub fn downstream_accepted() {
    counter!(DOWNSTREAM_ACCEPTED).increment(1);
    gauge!(DOWNSTREAM_ACTIVE).increment(1.0);
}

pub fn downstream_closed() {
    gauge!(DOWNSTREAM_ACTIVE).decrement(1.0);
}

pub fn connections_cut(n: usize) {
    counter!(CONNECTIONS_CUT).increment(n as u64);
}

pub fn upstream_idle(n: usize) {
    gauge!(UPSTREAM_IDLE).set(n as f64);
}

fn start_time(t: std::time::SystemTime) {
    let secs = t
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    gauge!(START_TIME).set(secs);
}

/// Where a policy in audit mode let through what enforce mode would deny.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuditStage {
    Connect,
    Http,
    Tls,
}

impl AuditStage {
    pub fn label(self) -> &'static str {
        match self {
            AuditStage::Connect => "connect",
            AuditStage::Http => "http",
            AuditStage::Tls => "tls",
        }
    }
}

/// One more request or ClientHello let through by `mode: audit`.
pub fn would_deny(policy: &str, stage: AuditStage) {
    counter!(WOULD_DENY, "policy" => policy.to_string(), "stage" => stage.label()).increment(1);
}

/// The kernel's total of connects let through by `mode: audit`.
pub fn would_deny_connects(policy: &str, total: u64) {
    counter!(WOULD_DENY, "policy" => policy.to_string(), "stage" => AuditStage::Connect.label())
        .absolute(total);
}

/// How a reload ended (`sockwarden_config_reloads_total{result}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReloadResult {
    Ok,
    Invalid,
    Rejected,
    Failed,
}

impl ReloadResult {
    pub const ALL: [ReloadResult; 4] = [
        ReloadResult::Ok,
        ReloadResult::Invalid,
        ReloadResult::Rejected,
        ReloadResult::Failed,
    ];

    pub fn label(self) -> &'static str {
        match self {
            ReloadResult::Ok => "ok",
            ReloadResult::Invalid => "invalid",
            ReloadResult::Rejected => "rejected",
            ReloadResult::Failed => "failed",
        }
    }
}

pub fn config_reload(result: ReloadResult) {
    counter!(CONFIG_RELOADS, "result" => result.label()).increment(1);
}

/// Every reload result's series, at 0, so a rate() works before the first.
pub fn config_reloads_init() {
    for r in ReloadResult::ALL {
        counter!(CONFIG_RELOADS, "result" => r.label()).increment(0);
    }
}

pub fn downstream_limit(max: usize) {
    gauge!(DOWNSTREAM_LIMIT).set(max as f64);
}

/// Why a workload connection was closed at accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejected {
    MaxConnections,
}

pub fn downstream_rejected(why: Rejected) {
    let reason = match why {
        Rejected::MaxConnections => "max_connections",
    };
    counter!(DOWNSTREAM_REJECTED, "reason" => reason).increment(1);
}

pub fn accept_error(errno: Errno) {
    counter!(ACCEPT_ERRORS, "errno" => errno.as_str()).increment(1);
}

/// Which timeout cut an exchange.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Timeout {
    RequestHead,
    ClientHello,
    RequestBody,
    ResponseBody,
}

pub fn timeout(which: Timeout) {
    let label = match which {
        Timeout::RequestHead => "request_head",
        Timeout::ClientHello => "client_hello",
        Timeout::RequestBody => "request_body",
        Timeout::ResponseBody => "response_body",
    };
    counter!(TIMEOUTS, "timeout" => label).increment(1);
}

pub fn orig_dst_missing() {
    counter!(ORIG_DST_MISSING).increment(1);
}

pub fn access_log_dropped() {
    counter!(ACCESS_LOG_DROPPED).increment(1);
}

/// The exported series of a door event: (metric, label, label value).
pub fn door_series(event: DoorEvent) -> (&'static str, &'static str, &'static str) {
    match event {
        DoorEvent::SW_DOOR_UDP_ALLOWED => (UDP_DECISIONS, "verdict", "allow"),
        DoorEvent::SW_DOOR_UDP_DENIED => (UDP_DECISIONS, "verdict", "deny"),
        DoorEvent::SW_DOOR_UDP_QUIC => (UDP_DECISIONS, "verdict", "quic"),
        DoorEvent::SW_DOOR_SOCK_RAW => (SOCKETS_REFUSED, "kind", "raw"),
        DoorEvent::SW_DOOR_SOCK_ICMP => (SOCKETS_REFUSED, "kind", "icmp"),
        DoorEvent::SW_DOOR_SOCK_PROTOCOL => (SOCKETS_REFUSED, "kind", "protocol"),
        DoorEvent::SW_DOOR_SOCK_PACKET => (SOCKETS_REFUSED, "kind", "packet"),
        DoorEvent::SW_DOOR_DROP_FORGED => (EGRESS_DROPPED, "reason", "forged"),
        DoorEvent::SW_DOOR_DROP_UDP => (EGRESS_DROPPED, "reason", "udp"),
        DoorEvent::SW_DOOR_DROP_ICMP => (EGRESS_DROPPED, "reason", "icmp"),
        // SW_DOOR_DROP_PROTOCOL, the last event (the type is the C enum's
        // integer, so the match cannot be exhaustive).
        _ => (EGRESS_DROPPED, "reason", "protocol"),
    }
}

/// A connect() decision the kernel counts (label `verdict`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectDecision {
    Allowed,
    Redirected,
    Denied,
}

/// The kernel's total of `decision` for `policy`; the denied ones are also
/// `sockwarden_connect_denied_total`.
pub fn connect_decisions(policy: &str, decision: ConnectDecision, total: u64) {
    let verdict = match decision {
        ConnectDecision::Allowed => "allowed",
        ConnectDecision::Redirected => "redirected",
        ConnectDecision::Denied => {
            counter!(CONNECT_DENIED, "policy" => policy.to_string()).absolute(total);
            "denied"
        }
    };
    counter!(CONNECT_DECISIONS, "policy" => policy.to_string(), "verdict" => verdict)
        .absolute(total);
}

/// Why the kernel refused a connect() that would have been redirected
/// (label `reason`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectRefusal {
    /// The policy's max_connections sockets were open.
    ConnectionLimit,
    /// No socket storage for the redirect's state.
    SocketStorage,
}

pub fn connect_refused(policy: &str, why: ConnectRefusal, total: u64) {
    let reason = match why {
        ConnectRefusal::ConnectionLimit => "connection_limit",
        ConnectRefusal::SocketStorage => "socket_storage",
    };
    counter!(CONNECT_REFUSED, "policy" => policy.to_string(), "reason" => reason).absolute(total);
}

/// A policy's redirected sockets open now, and its max_connections.
pub fn redirected_connections(policy: &str, open: u64, limit: u64) {
    gauge!(REDIRECTED_CONNECTIONS, "policy" => policy.to_string()).set(open as f64);
    gauge!(REDIRECTED_CONNECTIONS_LIMIT, "policy" => policy.to_string()).set(limit as f64);
}

pub fn redirects_unaccepted(policy: &str, total: u64) {
    counter!(REDIRECTS_UNACCEPTED, "policy" => policy.to_string()).absolute(total);
}

pub fn redirects_unreached(policy: &str, total: u64) {
    counter!(REDIRECTS_UNREACHED, "policy" => policy.to_string()).absolute(total);
}

/// Why the kernel did not send an event (label `reason`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventDrop {
    /// The policy's token bucket on that CPU was empty.
    RateLimit,
    /// The ring buffer was full.
    RingFull,
}

pub fn kernel_events_dropped(policy: &str, why: EventDrop, total: u64) {
    let reason = match why {
        EventDrop::RateLimit => "rate_limit",
        EventDrop::RingFull => "ring_full",
    };
    counter!(KERNEL_EVENTS_DROPPED, "policy" => policy.to_string(), "reason" => reason)
        .absolute(total);
}

/// Whether a policy's cgroup exists (and is in the kernel's map) now.
pub fn policy_cgroup_present(policy: &str, present: bool) {
    gauge!(POLICY_CGROUP_PRESENT, "policy" => policy.to_string()).set(f64::from(u8::from(present)));
}

/// The kernel's total of a door event of `policy` (UDP decisions, socket
/// refusals, egress drops).
pub fn door_events(policy: &str, event: DoorEvent, total: u64) {
    let (metric, label, value) = door_series(event);
    counter!(metric, "policy" => policy.to_string(), label => value).absolute(total);
}

/// The path of a linked workload socket's bytes under the sockmap engine
/// (labels `path`, `first_path`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SockmapPath {
    Redirect,
    Tcp,
}

impl SockmapPath {
    fn as_str(self) -> &'static str {
        match self {
            SockmapPath::Redirect => "redirect",
            SockmapPath::Tcp => "tcp",
        }
    }
}

/// What linked workload sockets sent by `path` so far: messages and bytes.
pub fn sockmap_sent(path: SockmapPath, msgs: u64, bytes: u64) {
    counter!(SOCKMAP_MESSAGES, "path" => path.as_str()).absolute(msgs);
    counter!(SOCKMAP_BYTES, "path" => path.as_str()).absolute(bytes);
}

/// Linked connections whose first message took `path`.
pub fn sockmap_first_path(path: SockmapPath, total: u64) {
    counter!(SOCKMAP_CONNECTIONS, "first_path" => path.as_str()).absolute(total);
}

/// Why a redirected connection turned to TCP (label `reason`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SockmapSwitch {
    UnreadLimit,
    ProxySocketClosed,
}

pub fn sockmap_to_tcp(why: SockmapSwitch, total: u64) {
    let reason = match why {
        SockmapSwitch::UnreadLimit => "unread_limit",
        SockmapSwitch::ProxySocketClosed => "proxy_socket_closed",
    };
    counter!(SOCKMAP_TO_TCP, "reason" => reason).absolute(total);
}

/// Which sockets the kernel entered in its socket maps (label `side`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SockmapSide {
    Workload,
    Proxy,
}

pub fn sockmap_linked(side: SockmapSide, total: u64) {
    let side = match side {
        SockmapSide::Workload => "workload",
        SockmapSide::Proxy => "proxy",
    };
    counter!(SOCKMAP_LINKED, "side" => side).absolute(total);
}

/// An errno by its symbolic name (`ECONNREFUSED`): the `errno` label of
/// the metrics that have one, and the name in `sockwarden-error` headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Errno(&'static str);

impl Errno {
    pub const ETIMEDOUT: Errno = Errno("ETIMEDOUT");
    pub const EADDRNOTAVAIL: Errno = Errno("EADDRNOTAVAIL");
    pub const ECONNREFUSED: Errno = Errno("ECONNREFUSED");

    /// The errno of `err` (`EOTHER` for one not named here, `EUNKNOWN` for
    /// an error that carries none).
    pub fn of(err: &std::io::Error) -> Errno {
        use nix::errno::Errno as E;
        Errno(match err.raw_os_error().map(E::from_raw) {
            Some(E::ECONNREFUSED) => "ECONNREFUSED",
            Some(E::ECONNRESET) => "ECONNRESET",
            Some(E::ETIMEDOUT) => "ETIMEDOUT",
            Some(E::EHOSTUNREACH) => "EHOSTUNREACH",
            Some(E::ENETUNREACH) => "ENETUNREACH",
            Some(E::EADDRNOTAVAIL) => "EADDRNOTAVAIL",
            Some(E::EADDRINUSE) => "EADDRINUSE",
            Some(E::EPERM) => "EPERM",
            Some(E::EACCES) => "EACCES",
            Some(E::EPIPE) => "EPIPE",
            Some(E::EMFILE) => "EMFILE",
            Some(E::ENFILE) => "ENFILE",
            Some(E::ENOBUFS) => "ENOBUFS",
            Some(E::ENETDOWN) => "ENETDOWN",
            Some(E::EINVAL) => "EINVAL",
            Some(_) => "EOTHER",
            None if err.kind() == std::io::ErrorKind::TimedOut => "ETIMEDOUT",
            None => "EUNKNOWN",
        })
    }

    pub fn as_str(self) -> &'static str {
        self.0
    }
}

impl std::fmt::Display for Errno {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_door_event_has_its_own_series() {
        let series: Vec<_> = crate::bpf::DOOR_EVENTS
            .iter()
            .map(|e| door_series(*e))
            .collect();
        for (i, s) in series.iter().enumerate() {
            assert!(!series[..i].contains(s), "{s:?} twice");
        }
        assert_eq!(
            door_series(DoorEvent::SW_DOOR_DROP_PROTOCOL),
            (EGRESS_DROPPED, "reason", "protocol")
        );
        // The kernel's order: each event's value is its index.
        for (i, e) in crate::bpf::DOOR_EVENTS.iter().enumerate() {
            assert_eq!(e.0 as usize, i);
        }
    }

    #[test]
    fn errno_names_are_symbolic() {
        let e = std::io::Error::from_raw_os_error(libc::ECONNREFUSED);
        assert_eq!(Errno::of(&e), Errno::ECONNREFUSED);
        let e = std::io::Error::from_raw_os_error(libc::EADDRNOTAVAIL);
        assert_eq!(Errno::of(&e).as_str(), "EADDRNOTAVAIL");
        let e = std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timeout");
        assert_eq!(Errno::of(&e), Errno::ETIMEDOUT);
        let e = std::io::Error::from_raw_os_error(libc::ENOEXEC);
        assert_eq!(Errno::of(&e).as_str(), "EOTHER");
        let e = std::io::Error::other("no errno");
        assert_eq!(Errno::of(&e).as_str(), "EUNKNOWN");
    }
}
