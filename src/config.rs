//! The YAML configuration: its shape, its defaults, and validation that
//! points at file, line, column and field path.
//!
//! Values that can be wrong on their own (a CIDR, a regex, a port, a cgroup
//! path) are checked while deserializing, so the YAML parser's location is
//! the value's own. Checks across values (duplicate policy names) use
//! [`serde_saphyr::Spanned`] to keep the location.

pub mod lint;

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;
use serde::de::{self, Deserializer};
use serde::{Deserialize, Serialize};
use serde_saphyr::{Location, Spanned};

use crate::bpf::limits::{MAX_POLICIES, MAX_RULE_PREFIXES};
use crate::proxy::http::is_token;
use crate::tls::names::NamePattern;

/// A configuration file that could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{file}: cannot read: {source}")]
    Read {
        file: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{file}:{line}:{column}: {field}: {message}")]
    Invalid {
        file: PathBuf,
        line: u64,
        column: u64,
        /// Field path, e.g. `policies[0].egress[1].to[0]`.
        field: String,
        message: String,
    },
}

/// Default pin path for maps and links.
pub const DEFAULT_PIN_PATH: &str = "/sys/fs/bpf/sockwarden";

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub proxy: ProxyConfig,
    #[serde(default)]
    pub admin: AdminConfig,
    #[serde(default)]
    pub bpf: BpfConfig,
    #[serde(default)]
    pub upstream: UpstreamConfig,
    #[serde(default)]
    pub access_log: AccessLogConfig,
    #[serde(default)]
    pub forwarding: ForwardingConfig,
    #[serde(default)]
    pub transparent: TransparentConfig,
    #[serde(default)]
    pub testing: TestingConfig,
    /// The node CA and upstream TLS settings (interception, origination).
    #[serde(default)]
    pub tls: TlsConfig,
    pub policies: Vec<Policy>,
}

/// TLS settings shared by every rule that terminates or originates TLS.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// The node CA that signs interception leaves (`sockwarden ca init`).
    /// Required when a rule has `tls.intercept`.
    #[serde(default)]
    pub ca: Option<CaFiles>,
    /// A PEM bundle of the roots upstream certificates must chain to;
    /// absent: the system's roots.
    #[serde(default)]
    pub upstream_roots: Option<PathBuf>,
    /// Most leaf certificates kept at once (least recently used go first).
    #[serde(
        default = "default_leaf_cache",
        deserialize_with = "leaf_cache_at_least_one"
    )]
    pub leaf_cache: usize,
    /// How long a leaf certificate is valid; renewed a day before it ends.
    #[serde(default = "default_leaf_lifetime", with = "humantime_serde")]
    pub leaf_lifetime: Duration,
    /// Longest TLS handshake, with the workload or the origin; past it the
    /// workload's connection is closed, or the request answered 504.
    #[serde(default = "default_handshake_timeout", with = "humantime_serde")]
    pub handshake_timeout: Duration,
    /// Hand the record layer of intercepted and originated connections to
    /// the kernel (kTLS) where it has the `tls` module, so bodies are
    /// spliced. Off by default: measured in the kernel matrix's VM, kTLS
    /// was slower than rustls's copy path (docs/performance.md).
    #[serde(default)]
    pub ktls: bool,
}

impl Default for TlsConfig {
    fn default() -> Self {
        TlsConfig {
            ca: None,
            upstream_roots: None,
            leaf_cache: default_leaf_cache(),
            leaf_lifetime: default_leaf_lifetime(),
            handshake_timeout: default_handshake_timeout(),
            ktls: false,
        }
    }
}

fn default_leaf_cache() -> usize {
    10_000
}

fn leaf_cache_at_least_one<'de, D: Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
    let n = i64::deserialize(d)?;
    match usize::try_from(n) {
        Ok(m) if m >= 1 => Ok(m),
        _ => Err(de::Error::custom(format!(
            "{n}: at least 1 leaf must be kept"
        ))),
    }
}

fn default_leaf_lifetime() -> Duration {
    Duration::from_secs(7 * 24 * 3600)
}

fn default_handshake_timeout() -> Duration {
    Duration::from_secs(10)
}

/// The node CA's certificate and key files (PEM).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CaFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// How body bytes move between the two sockets of an exchange.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Engine {
    /// splice on this kernel (see docs/performance.md).
    #[default]
    Auto,
    /// splice(2) through a pipe: kernel-side, with TCP backpressure.
    Splice,
    /// sk_msg moves node-local workloads' outgoing bytes straight into the
    /// proxy's socket; request bodies are then copied, response bodies
    /// spliced (see docs/performance.md).
    Sockmap,
    /// Userspace copy through the proxy's buffer.
    Copy,
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ForwardingConfig {
    #[serde(default)]
    pub engine: Engine,
    /// Pipe size per direction of a connection, for splice (bytes; the
    /// kernel rounds up to a power-of-two number of pages).
    #[serde(default = "default_pipe_size", deserialize_with = "pipe_size_in_range")]
    pub pipe_size: u32,
}

fn pipe_size_in_range<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    let n = i64::deserialize(d)?;
    match u32::try_from(n) {
        Ok(size) if (4096..=(256 << 20)).contains(&size) => Ok(size),
        _ => Err(de::Error::custom(format!(
            "{n} is out of range (4096 to 268435456 bytes)"
        ))),
    }
}

impl Default for ForwardingConfig {
    fn default() -> Self {
        ForwardingConfig {
            engine: Engine::Auto,
            pipe_size: default_pipe_size(),
        }
    }
}

/// 64 KiB pipes measured faster and cheaper than 1 MiB ones on this
/// kernel (docs/performance.md): a small pipe's pages stay in cache.
fn default_pipe_size() -> u32 {
    64 << 10
}

impl ForwardingConfig {
    /// The pipe sizes for bodies read from the workload (request bodies)
    /// and from the origin (response bodies); None where bodies are copied.
    /// Under sockmap the workload's socket may hold redirected bytes, which
    /// only recvmsg() returns (splice reads the TCP queue alone), so request
    /// bodies are copied there.
    pub fn pipe_sizes(&self) -> PipeSizes {
        let pipe = Some(self.pipe_size as usize);
        match self.engine {
            Engine::Auto | Engine::Splice => PipeSizes {
                requests: pipe,
                responses: pipe,
            },
            Engine::Sockmap => PipeSizes {
                requests: None,
                responses: pipe,
            },
            Engine::Copy => PipeSizes::default(),
        }
    }

    /// The engine `auto` stands for on this kernel: splice (the
    /// measurement that chose it is in docs/performance.md).
    pub fn resolved_engine(&self) -> Engine {
        match self.engine {
            Engine::Auto => Engine::Splice,
            e => e,
        }
    }

    /// Whether the sockmap programs are to be loaded.
    pub fn sockmap(&self) -> bool {
        self.engine == Engine::Sockmap
    }
}

/// Pipe sizes per body direction; None copies that direction.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PipeSizes {
    pub requests: Option<usize>,
    pub responses: Option<usize>,
}

/// Return-path setup for the preserve source modes (used only when a rule
/// or the global `upstream.source` asks for one).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TransparentConfig {
    /// Packet mark the tc program sets on return traffic (and its mask).
    #[serde(default = "default_transparent_mark")]
    pub mark: u32,
    /// Routing table holding `local default dev lo`, looked up for the mark.
    #[serde(default = "default_transparent_table")]
    pub route_table: u32,
    /// Interfaces to attach the tc program to; empty = every Ethernet-like
    /// interface of the proxy's namespace except loopback.
    #[serde(default)]
    pub interfaces: Vec<String>,
}

impl Default for TransparentConfig {
    fn default() -> Self {
        TransparentConfig {
            mark: default_transparent_mark(),
            route_table: default_transparent_table(),
            interfaces: Vec::new(),
        }
    }
}

fn default_transparent_mark() -> u32 {
    0x5357_0000
}

fn default_transparent_table() -> u32 {
    0x5357
}

/// Switches for the test suite only. Never set them in production: they
/// turn off protections so that tests can prove those protections matter.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TestingConfig {
    /// preserve-ip-port: skip the in-use tuple check before bind() (the
    /// EADDRNOTAVAIL fallback still applies). Off by default.
    #[serde(default)]
    pub skip_tuple_check: bool,
    /// Leave the cgroup_skb/egress wall unattached, so a test can show
    /// what it stops. Off by default.
    #[serde(default)]
    pub skip_egress_wall: bool,
    /// Start even where another instance's programs are attached at the
    /// cgroup root (the kernel tests run many instances at once, each on
    /// its own cgroups). Off by default.
    #[serde(default)]
    pub allow_other_enforcers: bool,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ProxyConfig {
    /// Where redirected connections go; must be reachable from the workloads.
    pub listen: SocketAddr,
    /// Optional IPv6 listener for IPv6 connects. Without it, IPv6 connects are
    /// redirected to the IPv4-mapped form of `listen` (dual-stack sockets).
    #[serde(default)]
    pub listen_v6: Option<SocketAddr>,
    /// How long a client connection may sit idle between requests.
    #[serde(default = "default_client_idle_timeout", with = "humantime_serde")]
    pub client_idle_timeout: Duration,
    /// On SIGTERM, how long requests in flight may take to finish before
    /// what is left is cut.
    #[serde(default = "default_drain_timeout", with = "humantime_serde")]
    pub drain_timeout: Duration,
    /// From the first byte of a request head to its end; past it, 408.
    #[serde(default = "default_request_head_timeout", with = "humantime_serde")]
    pub request_head_timeout: Duration,
    /// Most workload connections open at once; further ones are refused.
    /// None: derived from RLIMIT_NOFILE at start-up.
    #[serde(default, deserialize_with = "max_connections_at_least_one")]
    pub max_connections: Option<u32>,
}

fn max_connections_at_least_one<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
    let n = i64::deserialize(d)?;
    match u32::try_from(n) {
        Ok(m) if m >= 1 => Ok(Some(m)),
        _ => Err(de::Error::custom(format!(
            "{n} is out of range (1 to 4294967295 connections)"
        ))),
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    #[serde(default = "default_admin_listen")]
    pub listen: SocketAddr,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            listen: default_admin_listen(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BpfConfig {
    #[serde(default = "default_pin_path")]
    pub pin_path: PathBuf,
    /// The cgroup2 mount; auto-detected from /proc/self/mountinfo when absent.
    #[serde(default)]
    pub cgroup_root: Option<PathBuf>,
}

impl Default for BpfConfig {
    fn default() -> Self {
        BpfConfig {
            pin_path: default_pin_path(),
            cgroup_root: None,
        }
    }
}

/// Upstream connection settings: global defaults, overridable per rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    #[serde(default = "default_connect_timeout", with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Longest wait for a response head, and longest silence inside a body.
    #[serde(default = "default_request_timeout", with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Idle pooled connections are closed after this long.
    #[serde(default = "default_idle_timeout", with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// Retire a connection after this many requests; 0 = unlimited.
    #[serde(default)]
    pub max_requests_per_connection: u32,
    /// Which source address and port upstream connections leave from.
    #[serde(default)]
    pub source: SourceMode,
    #[serde(default)]
    pub retries: RetryPolicy,
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        UpstreamConfig {
            connect_timeout: default_connect_timeout(),
            request_timeout: default_request_timeout(),
            idle_timeout: default_idle_timeout(),
            max_requests_per_connection: 0,
            source: SourceMode::default(),
            retries: RetryPolicy::default(),
        }
    }
}

/// Source address of upstream connections.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum SourceMode {
    /// The node's address, a port the kernel picks.
    #[default]
    Node,
    /// The workload's IP, a port the kernel picks unique for the 4-tuple.
    PreserveIp,
    /// The workload's IP and port when the 4-tuple is free, else another port.
    PreserveIpPort,
}

impl SourceMode {
    pub fn is_transparent(self) -> bool {
        self != SourceMode::Node
    }
}

/// When a failed request is tried again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum RetryOn {
    /// The upstream connect failed: the request never left.
    ConnectFailure,
    /// The upstream connection closed or reset before any response byte.
    ResetBeforeResponse,
    /// The upstream answered 503.
    Status503,
}

/// `upstream.retries`: at most `attempts` retries on the `on` conditions,
/// with jittered exponential backoff starting at `backoff`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RetryPolicy {
    #[serde(default)]
    pub attempts: u32,
    #[serde(default = "default_retry_on", with = "retry_on_set")]
    pub on: RetryOnSet,
    #[serde(default = "default_backoff", with = "humantime_serde")]
    pub backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            attempts: 0,
            on: default_retry_on(),
            backoff: default_backoff(),
        }
    }
}

/// A set of [`RetryOn`] conditions.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RetryOnSet {
    pub connect_failure: bool,
    pub reset_before_response: bool,
    pub status_503: bool,
}

impl RetryOnSet {
    pub fn contains(self, on: RetryOn) -> bool {
        match on {
            RetryOn::ConnectFailure => self.connect_failure,
            RetryOn::ResetBeforeResponse => self.reset_before_response,
            RetryOn::Status503 => self.status_503,
        }
    }
}

fn default_retry_on() -> RetryOnSet {
    RetryOnSet {
        connect_failure: true,
        reset_before_response: true,
        status_503: false,
    }
}

fn default_backoff() -> Duration {
    Duration::from_millis(25)
}

/// (De)serializes a [`RetryOnSet`] as a list of condition names.
mod retry_on_set {
    use super::{RetryOn, RetryOnSet};
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<RetryOnSet, D::Error> {
        let mut set = RetryOnSet::default();
        for on in Vec::<RetryOn>::deserialize(d)? {
            match on {
                RetryOn::ConnectFailure => set.connect_failure = true,
                RetryOn::ResetBeforeResponse => set.reset_before_response = true,
                RetryOn::Status503 => set.status_503 = true,
            }
        }
        Ok(set)
    }

    pub fn serialize<S: Serializer>(set: &RetryOnSet, s: S) -> Result<S::Ok, S::Error> {
        let all = [
            RetryOn::ConnectFailure,
            RetryOn::ResetBeforeResponse,
            RetryOn::Status503,
        ];
        let on: Vec<RetryOn> = all.into_iter().filter(|o| set.contains(*o)).collect();
        on.serialize(s)
    }
}

/// Per-rule overrides of [`UpstreamConfig`]; absent fields inherit.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamOverride {
    #[serde(default, with = "humantime_serde")]
    pub connect_timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub request_timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub idle_timeout: Option<Duration>,
    #[serde(default)]
    pub max_requests_per_connection: Option<u32>,
    #[serde(default)]
    pub source: Option<SourceMode>,
    #[serde(default)]
    pub retries: Option<RetryPolicy>,
    /// Originate TLS: the workload speaks plain HTTP, sockwarden speaks
    /// HTTPS to the origin, with SNI from the request's Host.
    #[serde(default)]
    pub tls: Option<bool>,
    /// The origin's port for TLS origination (default 443).
    #[serde(default)]
    pub port: Option<Port>,
}

impl UpstreamOverride {
    /// The effective settings: these overrides on top of `base`.
    pub fn apply(&self, base: &UpstreamConfig) -> UpstreamConfig {
        UpstreamConfig {
            connect_timeout: self.connect_timeout.unwrap_or(base.connect_timeout),
            request_timeout: self.request_timeout.unwrap_or(base.request_timeout),
            idle_timeout: self.idle_timeout.unwrap_or(base.idle_timeout),
            max_requests_per_connection: self
                .max_requests_per_connection
                .unwrap_or(base.max_requests_per_connection),
            source: self.source.unwrap_or(base.source),
            retries: self.retries.unwrap_or(base.retries),
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AccessLogConfig {
    /// Where JSON access-log lines go: `stdout` (default), `off`, or a file path.
    #[serde(default)]
    pub path: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    #[serde(serialize_with = "ser_spanned")]
    pub name: Spanned<String>,
    pub cgroup: CgroupPath,
    pub egress: Vec<EgressRule>,
    /// Redirected connections this policy's sockets may hold open at once;
    /// past it connect() fails with ECONNREFUSED. Absent: an equal share
    /// of what the other policies' limits leave of the kernel's capacity.
    #[serde(default)]
    pub max_connections: Option<Spanned<u32>>,
    /// ICMP echo: ping sockets and raw ICMP sockets, echo requests only, to
    /// any destination. Off: socket() of either fails with EPERM.
    #[serde(default)]
    pub icmp: bool,
    /// `enforce` (the default) or `audit`: what enforce would refuse at
    /// connect() or deny at layer 7 is let through, logged with what would
    /// have denied it, and counted (`sockwarden_would_deny_total`).
    #[serde(default)]
    pub mode: PolicyMode,
}

/// Whether a policy's denials apply or are only reported.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PolicyMode {
    #[default]
    Enforce,
    Audit,
}

impl PolicyMode {
    pub fn as_str(self) -> &'static str {
        match self {
            PolicyMode::Enforce => "enforce",
            PolicyMode::Audit => "audit",
        }
    }
}

impl Config {
    /// Each policy's `max_connections`, as written (None where absent).
    /// `check`'s lints, one line each: `FILE:LINE:COLUMN: warning: FIELD:
    /// what is probably wrong` ([`lint`]).
    pub fn lints(&self, file: &Path) -> Vec<String> {
        let mut out = Vec::new();
        for (i, p) in self.policies.iter().enumerate() {
            for (j, r) in p.egress.iter().enumerate() {
                for (k, h) in r.http.iter().flatten().enumerate() {
                    let fields = [
                        (lint::Field::Method, "method", &h.method),
                        (lint::Field::Path, "path", &h.path),
                        (lint::Field::Host, "host", &h.host),
                    ];
                    for (field, name, pattern) in fields {
                        let Some(pattern) = pattern else { continue };
                        let at = pattern.location();
                        for w in lint::pattern(field, pattern) {
                            out.push(format!(
                                "{}:{}:{}: warning: policies[{i}].egress[{j}].http[{k}].{name}: {w}",
                                file.display(),
                                at.line(),
                                at.column()
                            ));
                        }
                    }
                }
            }
        }
        out
    }

    pub fn requested_connection_limits(&self) -> Vec<Option<u32>> {
        self.policies
            .iter()
            .map(|p| p.max_connections.as_ref().map(|m| m.value))
            .collect()
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct EgressRule {
    pub to: Vec<Cidr>,
    /// Empty or absent: every port.
    #[serde(default)]
    pub ports: Vec<PortRange>,
    /// The transport the rule allows: TCP (the default), UDP, or both.
    #[serde(default)]
    pub protocol: Protocol,
    /// Present: the rule is enforced at L7 through the proxy.
    #[serde(default)]
    pub http: Option<Vec<HttpRule>>,
    /// Present: the rule judges TLS by its ClientHello (pass-through by
    /// server name, or interception for its `http` entries).
    #[serde(default)]
    pub tls: Option<TlsRule>,
    #[serde(default)]
    pub upstream: Option<UpstreamOverride>,
}

impl EgressRule {
    /// The port TLS origination connects to (`upstream.tls: true`), if any.
    pub fn originate(&self) -> Option<u16> {
        let u = self.upstream.as_ref()?;
        u.tls
            .unwrap_or(false)
            .then(|| u.port.map_or(DEFAULT_TLS_PORT, |p| p.0))
    }
}

/// The port TLS origination connects to when `upstream.port` is absent.
pub const DEFAULT_TLS_PORT: u16 = 443;

/// What a rule allows of TLS.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TlsRule {
    /// SNI patterns (crate::tls::names). Without `intercept`: the names
    /// whose connections are spliced untouched. With it: the names
    /// intercepted (absent: every name).
    #[serde(default)]
    pub server_names: Vec<NamePattern>,
    /// Terminate TLS with a leaf from the node CA and judge the requests
    /// inside by `http`.
    #[serde(default)]
    pub intercept: bool,
    /// What an encrypted ClientHello (ECH) gets.
    #[serde(default)]
    pub ech: EchPolicy,
}

/// What a ClientHello with an `encrypted_client_hello` extension gets.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum EchPolicy {
    /// Refused with `access_denied`: the real name is hidden.
    #[default]
    Refuse,
    /// Judged by the outer (public) name, the one the network sees.
    Outer,
}

/// The transport an egress rule covers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    #[default]
    Tcp,
    Udp,
    Any,
}

impl Protocol {
    pub fn tcp(self) -> bool {
        matches!(self, Protocol::Tcp | Protocol::Any)
    }

    pub fn udp(self) -> bool {
        matches!(self, Protocol::Udp | Protocol::Any)
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HttpRule {
    #[serde(default)]
    pub method: Option<Pattern>,
    #[serde(default)]
    pub path: Option<Pattern>,
    #[serde(default)]
    pub host: Option<Pattern>,
    #[serde(default)]
    pub headers: Vec<HeaderMatch>,
    /// Protocols a request may upgrade to (`Upgrade`, RFC 9110 7.8), e.g.
    /// `websocket`. Empty: an Upgrade is removed and the request forwarded
    /// as a plain request. `h2c` is refused (RFC 9113 3.1 deprecates it).
    #[serde(default)]
    pub upgrade: Vec<UpgradeProtocol>,
}

/// A protocol name an `upgrade` list allows (a token, compared
/// case-insensitively with the name part of an offered protocol).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UpgradeProtocol(String);

impl UpgradeProtocol {
    pub fn parse(s: &str) -> Result<Self, String> {
        if !is_token(s) {
            return Err(format!(
                "invalid upgrade protocol {s:?}: expected a protocol name such as \"websocket\""
            ));
        }
        if s.eq_ignore_ascii_case("h2c") {
            return Err(
                "upgrade to h2c is never allowed: RFC 9113 3.1 deprecates it, and the HTTP/2 it starts cannot be judged by HTTP/1.1 rules".into(),
            );
        }
        Ok(UpgradeProtocol(s.to_ascii_lowercase()))
    }

    /// Whether an offered protocol (`name["/" version]`) is this one.
    pub fn allows(&self, offered: &str) -> bool {
        protocol_name(offered).eq_ignore_ascii_case(&self.0)
    }
}

/// The name part of an offered protocol, `name["/" version]` (RFC 9110 7.8).
pub fn protocol_name(offered: &str) -> &str {
    offered.split('/').next().unwrap_or(offered)
}

impl<'de> Deserialize<'de> for UpgradeProtocol {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        UpgradeProtocol::parse(&s).map_err(de::Error::custom)
    }
}

fn default_drain_timeout() -> Duration {
    Duration::from_secs(5)
}

fn default_client_idle_timeout() -> Duration {
    Duration::from_secs(300)
}
fn default_request_head_timeout() -> Duration {
    Duration::from_secs(10)
}
pub fn default_admin_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9901))
}
fn default_pin_path() -> PathBuf {
    PathBuf::from(DEFAULT_PIN_PATH)
}
fn default_connect_timeout() -> Duration {
    Duration::from_secs(2)
}
fn default_request_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_idle_timeout() -> Duration {
    Duration::from_secs(30)
}

fn ser_spanned<S: serde::Serializer>(v: &Spanned<String>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&v.value)
}

/// A destination prefix. A bare address means a single host. It keeps
/// where it was written, for checks across values.
#[derive(Debug, Clone, Copy)]
pub struct Cidr(pub IpNet, Location);

impl Cidr {
    /// Where the configuration writes it.
    pub fn at(&self) -> Location {
        self.1
    }
}

impl<'de> Deserialize<'de> for Cidr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let Spanned {
            value: s,
            referenced: at,
            ..
        } = Spanned::<String>::deserialize(d)?;
        let net = if s.contains('/') {
            s.parse::<IpNet>()
                .map_err(|_| de::Error::custom(format!("invalid CIDR {s:?}")))?
        } else {
            let ip = s.parse::<std::net::IpAddr>().map_err(|_| {
                de::Error::custom(format!("invalid CIDR {s:?} (expected e.g. 10.0.0.0/8)"))
            })?;
            IpNet::from(ip)
        };
        if net.trunc() != net {
            return Err(de::Error::custom(format!(
                "CIDR {s:?} has host bits set; did you mean {}?",
                net.trunc()
            )));
        }
        Ok(Cidr(net, at))
    }
}

impl Serialize for Cidr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&self.0)
    }
}

/// A TCP port, 1 to 65535.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Port(pub u16);

impl<'de> Deserialize<'de> for Port {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let n = i64::deserialize(d)?;
        match u16::try_from(n) {
            Ok(p) if p != 0 => Ok(Port(p)),
            _ => Err(de::Error::custom(format!(
                "port {n} is out of range (1 to 65535)"
            ))),
        }
    }
}

/// A port, 1 to 65535, or an inclusive range of them: `80`,
/// `"8000-8100"` or `{ from: 8000, to: 8100 }`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortRange {
    pub from: u16,
    pub to: u16,
}

impl PortRange {
    pub fn one(port: u16) -> PortRange {
        PortRange {
            from: port,
            to: port,
        }
    }

    /// Every port it names.
    pub fn each(self) -> std::ops::RangeInclusive<u16> {
        self.from..=self.to
    }

    /// A port or range written as text (`"8080"`, `"8000-8100"`).
    pub fn parse(text: &str) -> Result<PortRange, String> {
        let number = |t: &str| -> Result<i64, String> {
            t.trim().parse::<i64>().map_err(|_| {
                format!("invalid port {text:?}: expected a port (80), a range (\"8000-8100\") or {{ from: 8000, to: 8100 }}")
            })
        };
        match text.split_once('-') {
            Some((a, b)) => PortRange::range(number(a)?, number(b)?),
            None => PortRange::range(number(text)?, number(text)?),
        }
    }

    /// `from..=to`, checked.
    pub fn range(from: i64, to: i64) -> Result<PortRange, String> {
        let port = |n: i64| match u16::try_from(n) {
            Ok(p) if p != 0 => Ok(p),
            _ => Err(format!("port {n} is out of range (1 to 65535)")),
        };
        let (from, to) = (port(from)?, port(to)?);
        if from > to {
            return Err(format!(
                "port range {from}-{to} is empty: its first port is above its last"
            ));
        }
        Ok(PortRange { from, to })
    }
}

impl<'de> Deserialize<'de> for PortRange {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Range {
            from: i64,
            to: i64,
        }
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Written {
            Number(i64),
            Text(String),
            Range(Range),
        }
        let written = Written::deserialize(d).map_err(|_| {
            de::Error::custom(
                "expected a port (80), a range (\"8000-8100\") or { from: 8000, to: 8100 }",
            )
        })?;
        match written {
            Written::Number(n) => PortRange::range(n, n),
            Written::Text(t) => PortRange::parse(&t),
            Written::Range(r) => PortRange::range(r.from, r.to),
        }
        .map_err(de::Error::custom)
    }
}

impl Serialize for PortRange {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if self.from == self.to {
            s.serialize_u16(self.from)
        } else {
            s.collect_str(&format_args!("{}-{}", self.from, self.to))
        }
    }
}

/// The error of a pattern that does not compile, as the regex crate shows
/// it against the pattern as written (not the anchored form compiled): the
/// pattern, a caret under the fault, and what is wrong, on lines of their own.
fn regex_error(source: &str, anchored: &regex::Error) -> String {
    let detail = match regex::Regex::new(source) {
        Err(e) => e.to_string(),
        Ok(_) => anchored.to_string(),
    };
    let detail = detail
        .strip_prefix("regex parse error:")
        .unwrap_or(&detail)
        .trim_end();
    format!("invalid regex {source:?}:{detail}")
}

/// An [`AnchoredRegex`] with where it was written, for `check`'s lints.
#[derive(Clone)]
pub struct Pattern(Spanned<AnchoredRegex>);

impl Pattern {
    /// Where its text is in the file.
    pub fn location(&self) -> Location {
        self.0.referenced
    }
}

impl std::ops::Deref for Pattern {
    type Target = AnchoredRegex;
    fn deref(&self) -> &AnchoredRegex {
        &self.0.value
    }
}

impl fmt::Debug for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.value.fmt(f)
    }
}

impl<'de> Deserialize<'de> for Pattern {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Spanned::<AnchoredRegex>::deserialize(d).map(Pattern)
    }
}

impl Serialize for Pattern {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.value.serialize(s)
    }
}

/// A regex matched against the whole value, as in Cilium's HTTP rules.
#[derive(Clone)]
pub struct AnchoredRegex {
    pub source: String,
    pub regex: regex::Regex,
}

impl AnchoredRegex {
    pub fn new(source: &str) -> Result<Self, regex::Error> {
        let regex = regex::Regex::new(&format!("^(?:{source})$"))?;
        Ok(AnchoredRegex {
            source: source.to_string(),
            regex,
        })
    }

    pub fn is_match(&self, s: &str) -> bool {
        self.regex.is_match(s)
    }
}

impl fmt::Debug for AnchoredRegex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.source)
    }
}

impl<'de> Deserialize<'de> for AnchoredRegex {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        AnchoredRegex::new(&s).map_err(|e| de::Error::custom(regex_error(&s, &e)))
    }
}

impl Serialize for AnchoredRegex {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.source)
    }
}

/// A required request header: `name` (present) or `name: value` (exact value).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderMatch {
    /// Lowercase.
    pub name: String,
    pub value: Option<String>,
}

impl HeaderMatch {
    pub fn parse(s: &str) -> Result<Self, String> {
        let (name, value) = match s.split_once(':') {
            Some((n, v)) => (n.trim(), Some(v.trim().to_string())),
            None => (s.trim(), None),
        };
        if !is_token(name) {
            return Err(format!(
                "invalid header {s:?}: expected \"name\" or \"name: value\""
            ));
        }
        Ok(HeaderMatch {
            name: name.to_ascii_lowercase(),
            value,
        })
    }
}

impl<'de> Deserialize<'de> for HeaderMatch {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        HeaderMatch::parse(&s).map_err(de::Error::custom)
    }
}

impl Serialize for HeaderMatch {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match &self.value {
            Some(v) => s.collect_str(&format_args!("{}: {}", self.name, v)),
            None => s.serialize_str(&self.name),
        }
    }
}

/// A cgroup path relative to the cgroup2 mount, normalized to `/a/b`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct CgroupPath(String);

impl CgroupPath {
    pub fn parse(s: &str) -> Result<Self, String> {
        if s.starts_with("/sys/") || s.starts_with("/proc/") {
            return Err(format!(
                "cgroup {s:?} is not relative to the cgroup2 mount (write e.g. /system.slice/app.service)"
            ));
        }
        let parts: Vec<&str> = s.split('/').filter(|p| !p.is_empty()).collect();
        if parts.is_empty() {
            return Err("cgroup must name a cgroup below the root of the hierarchy".into());
        }
        if let Some(bad) = parts.iter().find(|p| **p == "." || **p == "..") {
            return Err(format!(
                "cgroup {s:?} is not relative to the cgroup2 mount: {bad:?} is not allowed"
            ));
        }
        Ok(CgroupPath(format!("/{}", parts.join("/"))))
    }

    /// The normalized path, starting with `/`.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The directory under a cgroup2 mount.
    pub fn under(&self, mount: &Path) -> PathBuf {
        mount.join(&self.0[1..])
    }

    /// Whether `other` (a normalized cgroup path) is this cgroup or below it.
    pub fn contains(&self, other: &str) -> bool {
        other == self.0
            || other
                .strip_prefix(&self.0)
                .is_some_and(|rest| rest.starts_with('/'))
    }
}

impl<'de> Deserialize<'de> for CgroupPath {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        CgroupPath::parse(&s).map_err(de::Error::custom)
    }
}

impl fmt::Display for CgroupPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What a list field holds, in the words of the configuration's own
/// examples (the last segment of a field path, indices dropped).
fn list_of(field: &str) -> Option<&'static str> {
    let last = field.rsplit('.').next()?.split('[').next()?;
    Some(match last {
        "policies" => "a list of policies (`- name: …`)",
        "egress" => "a list of rules (`- to: …`)",
        "to" => "a list of destinations ([\"10.0.0.0/8\", \"fd00::/8\"])",
        "ports" => "a list of ports ([80, 443, \"8000-8100\"])",
        "http" => "a list of http rules (`- method: GET`)",
        "headers" => "a list of headers ([\"x-team: analytics\"])",
        "upgrade" => "a list of protocols ([websocket])",
        "server_names" => "a list of server names ([\"*.example.com\"])",
        "interfaces" => "a list of interface names ([eth0])",
        _ => return None,
    })
}

/// The YAML parser's words for a shape mistake (mostly indentation), said
/// plainly for the field at `field`; other messages are left as they are.
fn plain_shape(field: &str, message: &str) -> String {
    let list = list_of(field);
    if message.contains("expected sequence start") {
        return match list {
            Some(what) => format!("expected {what}"),
            None => "expected a list (`- …` items, or [a, b])".to_string(),
        };
    }
    if message.contains("did not find expected '-' indicator") {
        let what = list.unwrap_or("a list");
        return format!(
            "expected {what}: this line is not a `- ` item at the indentation of the ones before it (check its indentation)"
        );
    }
    if message.contains("expected mapping start") {
        return "expected fields (`key: value` lines, or { key: value })".to_string();
    }
    message.to_string()
}

impl Config {
    /// Reads and validates a configuration file.
    pub fn load(file: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(file).map_err(|source| ConfigError::Read {
            file: file.to_path_buf(),
            source,
        })?;
        Config::parse(&text, file)
    }

    /// Parses and validates configuration text; `file` names it in errors.
    pub fn parse(text: &str, file: &Path) -> Result<Config, ConfigError> {
        let mut field = String::new();
        let parsed = serde_saphyr::with_deserializer_from_str(text, |de| {
            serde_path_to_error::deserialize::<_, Config>(de).map_err(|e| {
                field = e.path().to_string();
                // A Spanned value (a pattern) is a struct to the path: its
                // field is the one written.
                if let Some(f) = field.strip_suffix(".value") {
                    field = f.to_string();
                }
                e.into_inner()
            })
        });
        let config = parsed.map_err(|e| {
            let (line, column) = e.location().map_or((0, 0), |l| (l.line(), l.column()));
            ConfigError::Invalid {
                file: file.to_path_buf(),
                line,
                column,
                field: if field.is_empty() || field == "." {
                    "(document)".into()
                } else {
                    field.clone()
                },
                message: plain_shape(&field, &bare_message(&e)),
            }
        })?;
        config.validate(file)?;
        Ok(config)
    }

    fn validate(&self, file: &Path) -> Result<(), ConfigError> {
        let at = |span: &Spanned<String>, field: String, message: String| ConfigError::Invalid {
            file: file.to_path_buf(),
            line: span.referenced.line(),
            column: span.referenced.column(),
            field,
            message,
        };
        if self.policies.len() > MAX_POLICIES {
            let p = &self.policies[MAX_POLICIES];
            return Err(at(
                &p.name,
                format!("policies[{MAX_POLICIES}]"),
                format!("at most {MAX_POLICIES} policies are supported"),
            ));
        }
        for (i, p) in self.policies.iter().enumerate() {
            if p.name.value.trim().is_empty() {
                return Err(at(&p.name, format!("policies[{i}].name"), "empty".into()));
            }
            if let Some(j) = self.policies[..i]
                .iter()
                .position(|q| q.name.value == p.name.value)
            {
                return Err(at(
                    &p.name,
                    format!("policies[{i}].name"),
                    format!(
                        "duplicate policy name {:?} (also policies[{j}], line {})",
                        p.name.value,
                        self.policies[j].name.referenced.line()
                    ),
                ));
            }
            if let Some(j) = self.policies[..i].iter().position(|q| q.cgroup == p.cgroup) {
                return Err(at(
                    &p.name,
                    format!("policies[{i}].cgroup"),
                    format!(
                        "cgroup {} is already enforced by policy {:?}",
                        p.cgroup, self.policies[j].name.value
                    ),
                ));
            }
            for (k, rule) in p.egress.iter().enumerate() {
                if rule.to.is_empty() {
                    return Err(at(
                        &p.name,
                        format!("policies[{i}].egress[{k}].to"),
                        "at least one destination CIDR is required".into(),
                    ));
                }
                if let Some((field, message)) = rule_problem(rule, &self.tls) {
                    return Err(at(
                        &p.name,
                        format!("policies[{i}].egress[{k}].{field}"),
                        message.into(),
                    ));
                }
            }
        }
        self.validate_connection_limits(file)?;
        self.validate_rule_prefixes(file)
    }

    /// The kernel's rule map can hold every entry the policies need: refused
    /// at the destination whose prefix would be one entry too many.
    fn validate_rule_prefixes(&self, file: &Path) -> Result<(), ConfigError> {
        use crate::policy::{kernel::prefix_overflow, PolicySet};
        let Some(o) = prefix_overflow(&PolicySet::compile(self), MAX_RULE_PREFIXES) else {
            return Ok(());
        };
        let at = self
            .policies
            .get(o.policy)
            .and_then(|p| p.egress.get(o.rule))
            .and_then(|r| r.to.get(o.to))
            .map(Cidr::at);
        Err(ConfigError::Invalid {
            file: file.to_path_buf(),
            line: at.map_or(0, |l| l.line()),
            column: at.map_or(0, |l| l.column()),
            field: format!("policies[{}].egress[{}].to[{}]", o.policy, o.rule, o.to),
            message: format!(
                "this destination would be entry {} of the kernel's rule map ({}), which holds {MAX_RULE_PREFIXES}: each (policy, transport, port, distinct prefix) is one entry; merge prefixes or list fewer ports",
                MAX_RULE_PREFIXES + 1,
                crate::bpf::MapName::PolicyRules,
            ),
        })
    }

    fn validate_connection_limits(&self, file: &Path) -> Result<(), ConfigError> {
        use crate::policy::kernel::{connection_limits, LimitError, TRACKED_CONNS};
        let at = |loc: serde_saphyr::Location, i: usize, message: String| ConfigError::Invalid {
            file: file.to_path_buf(),
            line: loc.line(),
            column: loc.column(),
            field: format!("policies[{i}].max_connections"),
            message,
        };
        for (i, p) in self.policies.iter().enumerate() {
            if let Some(m) = p.max_connections.as_ref().filter(|m| m.value == 0) {
                return Err(at(m.referenced, i, "must be at least 1".into()));
            }
        }
        match connection_limits(&self.requested_connection_limits(), TRACKED_CONNS) {
            Ok(_) => Ok(()),
            Err(e) => {
                let (i, loc) = match e {
                    LimitError::OverCapacity { policy, .. } => (
                        policy,
                        self.policies[policy]
                            .max_connections
                            .as_ref()
                            .map_or(self.policies[policy].name.referenced, |m| m.referenced),
                    ),
                    LimitError::NoShareLeft { policy, .. } => {
                        (policy, self.policies[policy].name.referenced)
                    }
                };
                Err(at(loc, i, e.to_string()))
            }
        }
    }
}

/// What is wrong with an egress rule's L7 parts, if anything: the field
/// (under the rule) and the sentence.
fn rule_problem(rule: &EgressRule, tls: &TlsConfig) -> Option<(&'static str, &'static str)> {
    let originate = rule.upstream.as_ref().and_then(|u| u.tls).unwrap_or(false);
    let upstream_port = rule.upstream.as_ref().is_some_and(|u| u.port.is_some());
    let problem = match (&rule.tls, &rule.http) {
        _ if (rule.http.is_some() || rule.tls.is_some()) && rule.protocol != Protocol::Tcp => (
            "protocol",
            "http and tls rules judge TCP only: allow UDP in a separate rule (protocol: udp, without http or tls)",
        ),
        (Some(t), Some(_)) if !t.intercept => (
            "tls.intercept",
            "http rules on TLS need `intercept: true`: without it the connection is spliced untouched and its requests cannot be judged",
        ),
        (Some(t), None) if t.intercept => (
            "http",
            "interception judges the requests inside TLS by `http` entries: add them, or drop `intercept` to pass connections through by server name",
        ),
        (Some(t), None) if t.server_names.is_empty() => (
            "tls.server_names",
            "a pass-through rule needs at least one server name (or `intercept: true` and http rules)",
        ),
        (Some(t), _) if t.intercept && tls.ca.is_none() => (
            "tls.intercept",
            "interception needs the node CA: set tls.ca.cert and tls.ca.key (`sockwarden ca init` writes them)",
        ),
        (Some(_), _) if originate => (
            "upstream.tls",
            "an intercepted connection goes to the origin over TLS already; upstream.tls is for workloads that speak plain HTTP",
        ),
        (None, None) if originate => (
            "upstream.tls",
            "TLS origination needs http rules: without them the connection is not redirected to the proxy",
        ),
        _ if upstream_port && !originate => (
            "upstream.port",
            "upstream.port is the port of TLS origination: set upstream.tls: true",
        ),
        _ => return None,
    };
    Some(problem)
}

/// The parser's message without its own "error: line L column C: " prefix
/// (we print the location ourselves, with the file and field).
fn bare_message(e: &serde_saphyr::Error) -> String {
    let full = e.to_string();
    let first = full.lines().next().unwrap_or_default();
    let rest = first.strip_prefix("error: ").unwrap_or(first);
    match rest.strip_prefix("line ").and_then(|r| r.split_once(": ")) {
        Some((_, message)) => message.to_string(),
        None => rest.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shape_mistakes_are_said_in_plain_words() {
        let cases = [
            // `to:` at the indentation of `egress:`.
            (
                "    egress:\n    to: [\"10.0.0.0/8\"]\n",
                "t.yaml:5:11: policies[0].egress: expected a list of rules (`- to: …`)",
            ),
            // A rule written as fields, not as a list item.
            (
                "    egress:\n      to: [\"10.0.0.0/8\"]\n",
                "t.yaml:6:7: policies[0].egress: expected a list of rules (`- to: …`)",
            ),
            // A field of a rule one space short.
            (
                "    egress:\n      - to: [\"10.0.0.0/8\"]\n       ports: [80]\n",
                "t.yaml:7:8: policies[0].egress: expected a list of rules (`- to: …`): this line is not a `- ` item at the indentation of the ones before it (check its indentation)",
            ),
        ];
        for (tail, want) in cases {
            let text = format!("proxy: {{ listen: \"127.0.0.1:15001\" }}\npolicies:\n  - name: p\n    cgroup: /p\n{tail}");
            let e = Config::parse(&text, Path::new("t.yaml"))
                .unwrap_err()
                .to_string();
            assert_eq!(e, want, "{tail}");
        }
        assert_eq!(plain_shape("x", "unknown field `y`"), "unknown field `y`");
    }

    #[test]
    fn a_regex_error_shows_the_pattern_with_a_caret() {
        let e = AnchoredRegex::new("/data/(").unwrap_err();
        assert_eq!(
            regex_error("/data/(", &e),
            "invalid regex \"/data/(\":\n    /data/(\n          ^\nerror: unclosed group"
        );
    }

    #[test]
    fn lints_name_file_line_column_and_field() {
        let yaml = "proxy: { listen: \"127.0.0.1:15001\" }\npolicies:\n  - name: p\n    cgroup: /p\n    egress:\n      - to: [\"10.0.0.0/8\"]\n        http:\n          - { method: get, path: \"/api/v1.status\" }\n          - { method: GET }\n";
        let c = Config::parse(yaml, Path::new("lint.yaml")).expect("valid, lints or not");
        let lints = c.lints(Path::new("lint.yaml"));
        assert_eq!(lints.len(), 2, "{lints:?}");
        assert!(
            lints[0].starts_with("lint.yaml:8:23: warning: policies[0].egress[0].http[0].method: \"get\" matches none of"),
            "{}",
            lints[0]
        );
        assert!(
            lints[1].starts_with("lint.yaml:8:34: warning: policies[0].egress[0].http[0].path: \"/api/v1.status\" has an unescaped '.'"),
            "{}",
            lints[1]
        );
    }

    #[test]
    fn ports_are_ports_or_inclusive_ranges() {
        let cases: [(&str, Result<PortRange, &str>); 8] = [
            ("80", Ok(PortRange::one(80))),
            ("8000-8100", Ok(PortRange { from: 8000, to: 8100 })),
            (" 1 - 65535 ", Ok(PortRange { from: 1, to: 65535 })),
            ("443-443", Ok(PortRange::one(443))),
            ("90-80", Err("port range 90-80 is empty: its first port is above its last")),
            ("0-10", Err("port 0 is out of range (1 to 65535)")),
            ("80-90000", Err("port 90000 is out of range (1 to 65535)")),
            ("http", Err("invalid port \"http\": expected a port (80), a range (\"8000-8100\") or { from: 8000, to: 8100 }")),
        ];
        for (text, want) in cases {
            assert_eq!(
                PortRange::parse(text),
                want.map_err(str::to_string),
                "{text}"
            );
        }
        let yaml = "proxy: { listen: \"127.0.0.1:15001\" }\npolicies:\n  - name: p\n    cgroup: /p\n    egress:\n      - to: [\"10.0.0.0/8\"]\n        ports: [80, \"8000-8002\", { from: 9000, to: 9001 }, 80-90]\n";
        let c = Config::parse(yaml, Path::new("ports.yaml")).expect("ranges parse");
        assert_eq!(
            c.policies[0].egress[0].ports,
            vec![
                PortRange::one(80),
                PortRange {
                    from: 8000,
                    to: 8002
                },
                PortRange {
                    from: 9000,
                    to: 9001
                },
                PortRange { from: 80, to: 90 },
            ]
        );
        // Written back as it is written: a number, or "from-to".
        assert_eq!(
            serde_json::to_value(&c.policies[0].egress[0].ports).unwrap(),
            serde_json::json!([80, "8000-8002", "9000-9001", "80-90"])
        );
        let bad = yaml.replace("80-90", "{ from: 9, to: 1 }");
        let e = Config::parse(&bad, Path::new("ports.yaml"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("ports.yaml:7:")
                && e.contains("policies[0].egress[0].ports[3]")
                && e.contains("port range 9-1 is empty"),
            "{e}"
        );
    }

    const EXAMPLE: &str = r#"
proxy:
  listen: 10.77.0.1:15001
admin:
  listen: 127.0.0.1:9901
bpf:
  pin_path: /sys/fs/bpf/sockwarden
upstream:
  connect_timeout: 2s
  request_timeout: 30s
  idle_timeout: 30s
  max_requests_per_connection: 0
policies:
  - name: analytics
    cgroup: /sockwarden-test/analytics
    egress:
      - to: ["10.77.1.0/24", "fd77:1::/64"]
        ports: [80, 8080]
        http:
          - method: "GET|HEAD"
            path: "/data/.*"
            host: "origin\\.test(:[0-9]+)?"
            headers: ["x-team: analytics"]
        upstream:
          max_requests_per_connection: 100
      - to: ["10.77.1.10/32"]
        ports: [9000]
"#;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("test.yaml"))
    }

    #[test]
    fn the_documented_example_parses() {
        let c = parse(EXAMPLE).expect("example is valid");
        assert_eq!(c.proxy.listen, "10.77.0.1:15001".parse().unwrap());
        assert_eq!(c.upstream.connect_timeout, Duration::from_secs(2));
        assert_eq!(c.proxy.request_head_timeout, Duration::from_secs(10));
        assert_eq!(c.proxy.max_connections, None);
        assert!(!c.tls.ktls, "kTLS is opt-in");
        let p = &c.policies[0];
        assert_eq!(p.name.value, "analytics");
        assert_eq!(p.cgroup.as_str(), "/sockwarden-test/analytics");
        assert_eq!(p.egress[0].to.len(), 2);
        assert_eq!(
            p.egress[0].ports,
            vec![PortRange::one(80), PortRange::one(8080)]
        );
        let http = p.egress[0].http.as_ref().unwrap();
        assert!(http[0].method.as_ref().unwrap().is_match("HEAD"));
        assert!(!http[0].method.as_ref().unwrap().is_match("GETX"));
        assert_eq!(
            http[0].headers[0],
            HeaderMatch {
                name: "x-team".into(),
                value: Some("analytics".into())
            }
        );
        let eff = p.egress[0].upstream.unwrap().apply(&c.upstream);
        assert_eq!(eff.max_requests_per_connection, 100);
        assert_eq!(eff.idle_timeout, Duration::from_secs(30));
        assert!(p.egress[1].http.is_none());
    }

    /// (what to replace in EXAMPLE, with what, expected line, field, message fragment)
    #[test]
    fn invalid_files_name_line_column_field_and_cause() {
        let cases: &[(&str, &str, u64, &str, &str)] = &[
            (
                "\"10.77.1.0/24\"",
                "\"10.77.1.0/33\"",
                17,
                "policies[0].egress[0].to[0]",
                "invalid CIDR",
            ),
            (
                "\"10.77.1.0/24\"",
                "\"10.77.1.5/24\"",
                17,
                "policies[0].egress[0].to[0]",
                "host bits set",
            ),
            (
                "\"/data/.*\"",
                "\"/data/(\"",
                21,
                "policies[0].egress[0].http[0].path",
                "invalid regex",
            ),
            (
                "ports: [80, 8080]",
                "ports: [80, 80800]",
                18,
                "policies[0].egress[0].ports[1]",
                "out of range",
            ),
            (
                "ports: [9000]",
                "ports: [0]",
                27,
                "policies[0].egress[1].ports[0]",
                "out of range",
            ),
            (
                "    cgroup: /sockwarden-test/analytics",
                "    cgroup: ../escape",
                15,
                "policies[0].cgroup",
                "not relative",
            ),
            (
                "    cgroup: /sockwarden-test/analytics",
                "    cgroup: /sys/fs/cgroup/unified/x",
                15,
                "policies[0].cgroup",
                "not relative",
            ),
            (
                "  idle_timeout: 30s",
                "  idle_timeout: 30s\n  colour: blue",
                12,
                "upstream.colour",
                "unknown field",
            ),
            (
                "  max_requests_per_connection: 0\n",
                "  max_requests_per_connection: 0\nforwarding:\n  engine: zerocopy\n",
                14,
                "forwarding.engine",
                "unknown variant",
            ),
            (
                "  max_requests_per_connection: 0\n",
                "  max_requests_per_connection: 0\nforwarding:\n  pipe_size: 100\n",
                14,
                "forwarding.pipe_size",
                "out of range",
            ),
            (
                "  listen: 10.77.0.1:15001",
                "  listen: 10.77.0.1",
                3,
                "proxy.listen",
                "address",
            ),
            (
                "  listen: 10.77.0.1:15001",
                "  listen: 10.77.0.1:15001\n  max_connections: 0",
                4,
                "proxy.max_connections",
                "out of range",
            ),
            (
                "headers: [\"x-team: analytics\"]",
                "headers: [\"x team\"]",
                23,
                "policies[0].egress[0].http[0].headers[0]",
                "invalid header",
            ),
            (
                "ports: [9000]",
                "ports: [9000]\n        protocol: quic",
                28,
                "policies[0].egress[1].protocol",
                "unknown variant",
            ),
            (
                "ports: [80, 8080]",
                "ports: [80, 8080]\n        protocol: any",
                14,
                "policies[0].egress[0].protocol",
                "judge TCP only",
            ),
        ];
        for (from, to, line, field, fragment) in cases {
            assert!(EXAMPLE.contains(from), "case {from:?} does not apply");
            let text = EXAMPLE.replacen(from, to, 1);
            match parse(&text) {
                Err(ConfigError::Invalid {
                    line: l,
                    column,
                    field: f,
                    message,
                    ..
                }) => {
                    assert_eq!((l, f.as_str()), (*line, *field), "{to}: {message}");
                    assert!(column > 0, "{to}: no column");
                    assert!(
                        message.contains(fragment),
                        "{to}: {message:?} lacks {fragment:?}"
                    );
                }
                other => panic!("{to}: expected an error, got {other:?}"),
            }
        }
    }

    /// (top-level tls section, the rule's L7 parts, field under the rule or
    /// "" for valid, message fragment)
    #[test]
    fn tls_rules_are_checked_with_their_field() {
        let ca = "tls: { ca: { cert: /x/ca.crt, key: /x/ca.key } }\n";
        let cases: &[(&str, &str, &str, &str)] = &[
            ("", "tls: { server_names: [origin.test] }", "", ""),
            (ca, "tls: { intercept: true }\n        http: [{ method: GET }]", "", ""),
            ("", "upstream: { tls: true, port: 8443 }\n        http: [{ method: GET }]", "", ""),
            ("", "tls: { server_names: [\"a*.test\"] }", "tls.server_names[0]", "`*` must be a whole label"),
            ("", "tls: { server_names: [origin.test] }\n        protocol: any", "protocol", "TCP only"),
            ("", "tls: { server_names: [origin.test] }\n        http: [{ method: GET }]", "tls.intercept", "need `intercept: true`"),
            (ca, "tls: { intercept: true }", "http", "by `http` entries"),
            ("", "tls: {}", "tls.server_names", "at least one server name"),
            ("", "tls: { intercept: true }\n        http: [{ method: GET }]", "tls.intercept", "needs the node CA"),
            (ca, "tls: { intercept: true }\n        http: [{ method: GET }]\n        upstream: { tls: true }", "upstream.tls", "over TLS already"),
            ("", "upstream: { tls: true }", "upstream.tls", "needs http rules"),
            ("", "upstream: { port: 8443 }\n        http: [{ method: GET }]", "upstream.port", "set upstream.tls: true"),
            ("", "tls: { server_names: [origin.test], ech: maybe }", "tls.ech", "unknown variant"),
        ];
        for (top, l7, field, fragment) in cases {
            let text = format!(
                "proxy: {{ listen: \"10.77.0.1:15001\" }}\n{top}policies:\n  - name: p\n    cgroup: /t/p\n    egress:\n      - to: [\"10.0.0.0/8\"]\n        ports: [443]\n        {l7}\n"
            );
            match (parse(&text), *field) {
                (Ok(_), "") => {}
                (
                    Err(ConfigError::Invalid {
                        field: f, message, ..
                    }),
                    want,
                ) => assert!(
                    f == format!("policies[0].egress[0].{want}") && message.contains(fragment),
                    "{l7}: {f}: {message}"
                ),
                (other, _) => panic!("{l7}: got {other:?}"),
            }
        }
    }

    #[test]
    fn duplicate_policy_names_point_at_the_second() {
        let dup = format!("{EXAMPLE}  - name: analytics\n    cgroup: /other\n    egress: []\n");
        let err = parse(&dup).unwrap_err().to_string();
        assert!(
            err.starts_with("test.yaml:28:11: policies[1].name: duplicate policy name"),
            "{err}"
        );
    }

    #[test]
    fn connection_limits_are_checked_where_they_are_written() {
        let policy = |name: &str, limit: &str| {
            format!("  - name: {name}\n    cgroup: /{name}\n    egress: []\n{limit}")
        };
        let cases: &[(&str, &str, &str)] = &[
            (
                "    max_connections: 0\n",
                "test.yaml:31:22: policies[1].max_connections: must be at least 1",
                "",
            ),
            (
                "    max_connections: 65537\n",
                "test.yaml:31:22: policies[1].max_connections: the policies' max_connections add up to 65537 here",
                "",
            ),
            (
                "    max_connections: 65536\n",
                "test.yaml:14:11: policies[0].max_connections: the other policies' max_connections leave 0",
                "",
            ),
            (
                "    max_connections: 100\n",
                "",
                "    max_connections: -1\n",
            ),
        ];
        for (second, want, third) in cases {
            let text = format!(
                "{EXAMPLE}{}{}",
                policy("second", second),
                policy("third", third)
            );
            let err = parse(&text).map(|_| ()).unwrap_err().to_string();
            if want.is_empty() {
                assert!(
                    err.starts_with("test.yaml:35:22: policies[2].max_connections"),
                    "{err}"
                );
            } else {
                assert!(err.starts_with(want), "{err}");
            }
        }
        let text = format!(
            "{EXAMPLE}{}",
            policy("second", "    max_connections: 65535\n")
        );
        let c = parse(&text).expect("65535 leaves one for the first policy");
        assert_eq!(c.requested_connection_limits(), vec![None, Some(65535)]);
    }

    #[test]
    fn rule_prefixes_past_the_kernel_map_are_refused_where_they_are_written() {
        // 256 hosts on 256 ports: exactly the map's 65536 entries.
        let hosts: Vec<String> = (0..=255).map(|i| format!("\"10.0.0.{i}/32\"")).collect();
        let ports: Vec<String> = (1..=256).map(|p| p.to_string()).collect();
        assert_eq!(hosts.len() * ports.len(), MAX_RULE_PREFIXES);
        let config = |second: &str| {
            format!(
                "proxy: {{ listen: \"10.77.0.1:15001\" }}\npolicies:\n  - name: p\n    cgroup: /p\n    egress:\n      - to: [{}]\n        ports: [{}]\n{second}",
                hosts.join(", "),
                ports.join(", ")
            )
        };
        let cases: &[(&str, &str)] = &[
            // Nothing new: the same host and port again, another rule's verdict.
            (
                "      - to: [\"10.0.0.0/32\", \"10.0.0.7/32\"]\n        ports: [1]\n        http: [{ method: GET }]\n",
                "",
            ),
            // The second destination is the 65537th entry.
            (
                "      - to: [\"10.0.0.0/32\", \"10.0.1.0/32\"]\n        ports: [1]\n",
                "test.yaml:8:29: policies[0].egress[1].to[1]: this destination would be entry 65537 of the kernel's rule map (policy_rules), which holds 65536",
            ),
            // UDP to the same host is an entry of its own.
            (
                "      - to: [\"10.0.0.0/32\"]\n        ports: [1]\n        protocol: udp\n",
                "test.yaml:8:14: policies[0].egress[1].to[0]: this destination would be entry 65537",
            ),
            // So is a second policy's.
            (
                "  - name: q\n    cgroup: /q\n    egress:\n      - to: [\"10.0.0.0/32\"]\n",
                "test.yaml:11:14: policies[1].egress[0].to[0]: this destination would be entry 65537",
            ),
        ];
        for (second, want) in cases {
            match parse(&config(second)) {
                Ok(_) => assert!(want.is_empty(), "{second:?} parsed; wanted {want}"),
                Err(e) => {
                    let e = e.to_string();
                    assert!(!want.is_empty() && e.starts_with(want), "{second:?}: {e}");
                }
            }
        }
    }

    #[test]
    fn cgroup_paths_normalize_and_contain() {
        let p = CgroupPath::parse("a//b/").unwrap();
        assert_eq!(p.as_str(), "/a/b");
        assert!(p.contains("/a/b"));
        assert!(p.contains("/a/b/c"));
        assert!(!p.contains("/a/bc"));
        assert!(CgroupPath::parse("/").is_err());
    }

    #[test]
    fn error_display_is_file_line_column_field_message() {
        let text = EXAMPLE.replacen("\"fd77:1::/64\"", "\"fd77:1::/129\"", 1);
        let err = parse(&text).unwrap_err().to_string();
        assert!(
            err.starts_with("test.yaml:17:30: policies[0].egress[0].to[1]: invalid CIDR"),
            "{err}"
        );
    }
}
