//! Policy evaluation: pure functions of (policy, original destination,
//! request head), and the kernel's connect()-time view of the same rules.
//!
//! Semantics, shared by both sides:
//! - a rule *covers* a destination when one of its CIDRs contains the
//!   address and its ports (none = all) contain the port;
//! - connect(): redirected to the proxy if any covering rule has `http`,
//!   allowed untouched if only rules without `http` cover it, EPERM if none;
//! - a request: allowed if a covering rule has no `http` (L4 allows all) or
//!   one of a covering rule's `http` entries matches; otherwise 403;
//! - only rules whose `protocol` includes TCP cover TCP, and only those
//!   that include UDP cover UDP: a UDP datagram is allowed if such a rule
//!   covers it and no `http` rule does (QUIC there would bypass the HTTP
//!   rules; the client falls back to TCP), EPERM otherwise.

use std::net::{IpAddr, SocketAddr};

use ipnet::IpNet;

use crate::config::{
    protocol_name, Config, EchPolicy, HttpRule, Protocol, TlsRule, UpstreamConfig,
};

pub mod kernel;

/// The port a resolver answers on.
const DNS_PORT: u16 = 53;

/// Index of a policy in the configuration; the id the kernel maps carry.
pub type PolicyId = u32;

/// What a request needs to be matched.
#[derive(Debug, Clone, Copy)]
pub struct RequestView<'a> {
    pub method: &'a str,
    pub path: &'a str,
    /// Host header (or absolute-form authority), if any.
    pub host: Option<&'a str>,
    /// Header fields as (name, value); names compared case-insensitively.
    pub headers: &'a [(&'a str, &'a [u8])],
}

#[derive(Debug, Clone)]
pub struct CompiledRule {
    pub nets: Vec<IpNet>,
    /// Empty: every port.
    pub ports: Vec<u16>,
    pub protocol: Protocol,
    pub http: Option<Vec<HttpRule>>,
    pub tls: Option<TlsRule>,
    /// TLS origination: the origin's port (`upstream.tls: true`).
    pub originate: Option<u16>,
    pub upstream: UpstreamConfig,
}

impl CompiledRule {
    /// Whether the rule is judged in the proxy (connect() is redirected).
    pub fn l7(&self) -> bool {
        self.http.is_some() || self.tls.is_some()
    }

    /// Whether the rule judges the requests of `channel`: plain-HTTP rules
    /// those in the clear, interception rules (whose names admit the SNI)
    /// those inside TLS; L4-only rules judge both.
    fn judges(&self, channel: Channel<'_>) -> bool {
        match (&self.tls, channel) {
            (None, Channel::Plain) => true,
            (None, Channel::Intercepted { .. }) => self.http.is_none(),
            (Some(_), Channel::Plain) => false,
            (Some(t), Channel::Intercepted { sni }) => t.intercept && admits(t, sni),
        }
    }

    /// Whether a TCP connection to `dst` is covered.
    pub fn covers(&self, dst: SocketAddr) -> bool {
        self.protocol.tcp() && self.covers_address(dst)
    }

    fn covers_address(&self, dst: SocketAddr) -> bool {
        let ip = canonical_ip(dst.ip());
        self.covers_port(dst.port()) && self.nets.iter().any(|n| n.contains(&ip))
    }

    fn covers_port(&self, port: u16) -> bool {
        self.ports.is_empty() || self.ports.contains(&port)
    }
}

/// Whether an interception rule's names admit `sni`: every name when it
/// lists none; a client without SNI always (it gets a leaf for the
/// destination IP, and its Host must name that IP).
fn admits(t: &TlsRule, sni: Option<&str>) -> bool {
    match sni {
        Some(name) => t.server_names.is_empty() || t.server_names.iter().any(|p| p.matches(name)),
        None => true,
    }
}

/// Where a request was read: in the clear, or inside TLS the proxy
/// terminated (with the client's SNI, if it sent one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Channel<'a> {
    Plain,
    Intercepted { sni: Option<&'a str> },
}

/// What the proxy does with a connection that opens with a ClientHello.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsVerdict {
    /// Splice it untouched to the original destination, for its whole life
    /// (allowed by rule `rule`: by name, or at L4).
    PassThrough {
        rule: usize,
    },
    /// Terminate it and judge its requests ([`Channel::Intercepted`]).
    Intercept,
    Refuse(TlsDenial),
}

/// Why a ClientHello is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsDenial {
    /// No rule covering the destination judges TLS (its rules are plain http).
    NoTlsRule,
    /// Pass-through rules need a name, and the client sent no SNI.
    NoServerName,
    /// The SNI matches no rule.
    NameNotAllowed,
    /// An encrypted ClientHello, and no rule admitting its outer name
    /// accepts ECH (`ech: outer`).
    Encrypted,
}

impl TlsDenial {
    pub fn describe(self) -> &'static str {
        match self {
            TlsDenial::NoTlsRule => {
                "no tls rule covers this destination (its http rules judge plain HTTP only)"
            }
            TlsDenial::NoServerName => {
                "the ClientHello names no server (SNI) and pass-through rules need one"
            }
            TlsDenial::NameNotAllowed => "no tls rule allows this server name",
            TlsDenial::Encrypted => {
                "encrypted ClientHello (ECH) and no rule takes its outer name (ech: outer)"
            }
        }
    }

    /// The label value of `sockwarden_tls_denied_total{reason}`.
    pub fn label(self) -> &'static str {
        match self {
            TlsDenial::NoTlsRule => "no_tls_rule",
            TlsDenial::NoServerName => "no_sni",
            TlsDenial::NameNotAllowed => "name_not_allowed",
            TlsDenial::Encrypted => "ech",
        }
    }
}

/// What a ClientHello shows that policy judges.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HelloView<'a> {
    pub sni: Option<&'a str>,
    pub ech: bool,
}

/// What happens to a UDP datagram (connect() or sendmsg()) from a policy cgroup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UdpVerdict {
    Allow,
    /// No rule allows UDP there: EPERM.
    Deny,
    /// An `http` rule governs the destination and port: EPERM.
    Quic,
}

#[derive(Debug, Clone)]
pub struct CompiledPolicy {
    /// Its id in the kernel's maps: stable across reloads for a policy that
    /// keeps its name (see [`assign_ids`]).
    pub id: PolicyId,
    pub name: String,
    pub cgroup: crate::config::CgroupPath,
    pub rules: Vec<CompiledRule>,
    /// Redirected connections its sockets may hold open (kernel-enforced).
    pub max_connections: u32,
    /// ICMP echo sockets allowed (`icmp: true`).
    pub icmp: bool,
    /// `mode: audit`: denials are reported and let through.
    pub audit: bool,
}

/// The outcome of evaluating one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Allowed by rule `rule` of the policy: by its http entry `entry`, or
    /// (None) by a rule without http.
    Allow {
        rule: usize,
        entry: Option<usize>,
    },
    Deny {
        reason: DenyReason,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DenyReason {
    /// No rule covers the destination at all (the kernel should not have
    /// redirected it; happens only across a configuration change).
    NoRuleForDestination,
    /// Rules cover the destination, but no `http` entry matches the request.
    NoHttpRuleMatched,
}

impl DenyReason {
    pub fn describe(&self) -> &'static str {
        match self {
            DenyReason::NoRuleForDestination => "no egress rule covers this destination",
            DenyReason::NoHttpRuleMatched => "no http rule matches this request",
        }
    }
}

/// The warning for each loopback listener when some rule redirects
/// (`redirects`): workloads in other network namespaces cannot reach it.
/// Whether they live in one the configuration cannot say, so it is a
/// warning, not an error.
fn loopback_listen_warnings(listen: &[SocketAddr], redirects: bool) -> Vec<String> {
    listen
        .iter()
        .filter(|a| redirects && a.ip().is_loopback())
        .map(|a| {
            format!(
                "proxy.listen {a} is a loopback address: workloads in other network namespaces (containers, pods) cannot reach it, and their redirected connects fail with ECONNREFUSED; listen on an address of the node that they route to (fine only if every enforced workload shares the node's network namespace)"
            )
        })
        .collect()
}

/// Every policy of a configuration, compiled, in configuration order; each
/// knows its kernel [`PolicyId`].
#[derive(Debug, Clone)]
pub struct PolicySet {
    pub policies: Vec<CompiledPolicy>,
    /// Where redirected connects go (`proxy.listen`, `proxy.listen_v6`):
    /// the warnings name a loopback one.
    pub listen: Vec<SocketAddr>,
}

/// The kernel ids of a new configuration's policies (`names`, in order),
/// given those in force (`previous`: name and id). A policy that keeps its
/// name keeps its id: its open connections' count, its counters and the
/// connections it accepted go on being its own. A new name gets the lowest
/// id that no policy in force has and that `busy` does not hold (a removed
/// policy's id while sockets it redirected are still open), so no count or
/// counter of one policy is taken for another's. None when the ids run out.
pub fn assign_ids(
    previous: &[(&str, PolicyId)],
    names: &[&str],
    busy: impl Fn(PolicyId) -> bool,
) -> Option<Vec<PolicyId>> {
    let kept = |name: &str| previous.iter().find(|(n, _)| *n == name).map(|(_, id)| *id);
    let mut taken: Vec<PolicyId> = names.iter().filter_map(|n| kept(n)).collect();
    let mut out = Vec::with_capacity(names.len());
    for name in names {
        let id = match kept(name) {
            Some(id) => id,
            None => {
                let free = (0..crate::bpf::limits::MAX_POLICIES as PolicyId).find(|id| {
                    !taken.contains(id) && !previous.iter().any(|(_, p)| p == id) && !busy(*id)
                })?;
                taken.push(free);
                free
            }
        };
        out.push(id);
    }
    Some(out)
}

impl PolicySet {
    pub fn compile(config: &Config) -> PolicySet {
        let ids: Vec<PolicyId> = (0..config.policies.len() as PolicyId).collect();
        Self::compile_with_ids(config, &ids)
    }

    /// The policies of `config` with the kernel ids `ids` (one per policy,
    /// in order; see [`assign_ids`]).
    pub fn compile_with_ids(config: &Config, ids: &[PolicyId]) -> PolicySet {
        // Validated with the configuration; a policy without a limit would
        // get 0 (every redirect refused: fail closed).
        let limits =
            kernel::connection_limits(&config.requested_connection_limits(), kernel::TRACKED_CONNS)
                .unwrap_or_default();
        let policies = config
            .policies
            .iter()
            .enumerate()
            .map(|(i, p)| CompiledPolicy {
                id: ids[i],
                max_connections: limits.get(i).copied().unwrap_or(0),
                icmp: p.icmp,
                audit: p.mode == crate::config::PolicyMode::Audit,
                name: p.name.value.clone(),
                cgroup: p.cgroup.clone(),
                rules: p
                    .egress
                    .iter()
                    .map(|r| CompiledRule {
                        nets: r.to.iter().map(|c| canonical_net(c.0)).collect(),
                        ports: {
                            // Ranges expanded: the kernel matches ports exactly.
                            let mut ports: Vec<u16> =
                                r.ports.iter().flat_map(|p| p.each()).collect();
                            ports.sort_unstable();
                            ports.dedup();
                            ports
                        },
                        protocol: r.protocol,
                        http: r.http.clone(),
                        tls: r.tls.clone(),
                        originate: r.originate(),
                        upstream: r
                            .upstream
                            .map_or(config.upstream, |o| o.apply(&config.upstream)),
                    })
                    .collect(),
            })
            .collect();
        PolicySet {
            policies,
            listen: std::iter::once(config.proxy.listen)
                .chain(config.proxy.listen_v6)
                .collect(),
        }
    }

    pub fn get(&self, id: PolicyId) -> Option<&CompiledPolicy> {
        self.policies.iter().find(|p| p.id == id)
    }

    /// The rule a request that policy `id` would deny goes through under
    /// `mode: audit` (for its upstream settings): the first that covers
    /// `dst`, if any. None when the policy is not in audit mode.
    pub fn audited(&self, id: PolicyId, dst: SocketAddr) -> Option<Option<&CompiledRule>> {
        let p = self.get(id).filter(|p| p.audit)?;
        Some(p.rules.iter().find(|r| r.covers(dst)))
    }

    /// Whether a rule takes a preserve source mode, whose replies need the
    /// return path (its own or inherited from `upstream.source`).
    pub fn needs_return_path(&self) -> bool {
        self.policies
            .iter()
            .flat_map(|p| &p.rules)
            .any(|r| r.upstream.source.is_transparent())
    }

    /// (name, id) of every policy.
    pub fn ids(&self) -> Vec<(&str, PolicyId)> {
        self.policies
            .iter()
            .map(|p| (p.name.as_str(), p.id))
            .collect()
    }

    /// Each id's max_connections, index = id (ids no policy has: 0, so a
    /// socket charged to one is refused).
    pub fn limits(&self) -> Vec<u32> {
        let len = self
            .policies
            .iter()
            .map(|p| p.id as usize + 1)
            .max()
            .unwrap_or(0);
        let mut out = vec![0; len];
        for p in &self.policies {
            out[p.id as usize] = p.max_connections;
        }
        out
    }

    /// Rule `rule` of policy `id` (what a decision names).
    pub fn rule(&self, id: PolicyId, rule: usize) -> Option<&CompiledRule> {
        self.get(id).and_then(|p| p.rules.get(rule))
    }

    /// What in the policies is probably a mistake, one sentence each: a
    /// policy whose `http` rules name hosts while no rule of it allows DNS
    /// (UDP port 53), so its workloads cannot resolve those names.
    pub fn warnings(&self) -> Vec<String> {
        let redirects = self.policies.iter().flat_map(|p| &p.rules).any(|r| r.l7());
        let mut out = loopback_listen_warnings(&self.listen, redirects);
        for p in &self.policies {
            let hosts: Vec<String> = p
                .rules
                .iter()
                .flat_map(|r| r.http.iter().flatten())
                .filter_map(|h| h.host.as_ref().map(|re| format!("{re:?}")))
                .collect();
            let dns = p
                .rules
                .iter()
                .any(|r| r.protocol.udp() && r.covers_port(DNS_PORT));
            if !hosts.is_empty() && !dns {
                out.push(format!(
                    "policy {:?}: its http rules name hosts ({}) but no rule allows DNS (UDP port 53), so its workloads cannot resolve them; add a rule for the resolver, e.g. {{ to: [\"10.96.0.10/32\"], ports: [53], protocol: any }}",
                    p.name,
                    hosts.join(", ")
                ));
            }
        }
        out
    }

    /// What policy `id` does with a UDP datagram to `dst` (the kernel
    /// decides this; this is its reference).
    pub fn udp_verdict(&self, id: PolicyId, dst: SocketAddr) -> UdpVerdict {
        let Some(policy) = self.get(id) else {
            return UdpVerdict::Deny;
        };
        if policy.rules.iter().any(|r| r.l7() && r.covers(dst)) {
            UdpVerdict::Quic
        } else if policy
            .rules
            .iter()
            .any(|r| r.protocol.udp() && r.covers_address(dst))
        {
            UdpVerdict::Allow
        } else {
            UdpVerdict::Deny
        }
    }

    /// Evaluates a request to `dst` made by a workload under policy `id`.
    pub fn evaluate(
        &self,
        id: PolicyId,
        dst: SocketAddr,
        channel: Channel<'_>,
        req: &RequestView<'_>,
    ) -> Decision {
        let Some(policy) = self.get(id) else {
            return Decision::Deny {
                reason: DenyReason::NoRuleForDestination,
            };
        };
        let mut covered = false;
        for (i, rule) in policy.rules.iter().enumerate() {
            if !rule.covers(dst) {
                continue;
            }
            covered = true;
            if !rule.judges(channel) {
                continue;
            }
            match &rule.http {
                None => {
                    return Decision::Allow {
                        rule: i,
                        entry: None,
                    }
                }
                Some(entries) => {
                    if let Some(e) = entries.iter().position(|h| http_rule_matches(h, req)) {
                        return Decision::Allow {
                            rule: i,
                            entry: Some(e),
                        };
                    }
                }
            }
        }
        Decision::Deny {
            reason: if covered {
                DenyReason::NoHttpRuleMatched
            } else {
                DenyReason::NoRuleForDestination
            },
        }
    }
}

impl PolicySet {
    /// What policy `id` does with a ClientHello to `dst`: an L4 rule or a
    /// pass-through name passes it through (allowing everything, they win
    /// over interception), else an interception rule intercepts it, else
    /// it is refused with the most specific reason.
    pub fn tls_verdict(&self, id: PolicyId, dst: SocketAddr, hello: HelloView<'_>) -> TlsVerdict {
        let Some(policy) = self.get(id) else {
            return TlsVerdict::Refuse(TlsDenial::NoTlsRule);
        };
        let covering = || {
            policy
                .rules
                .iter()
                .enumerate()
                .filter(|(_, r)| r.covers(dst))
        };
        if let Some((rule, _)) = covering().find(|(_, r)| !r.l7()) {
            return TlsVerdict::PassThrough { rule };
        }
        let tls_rules = || covering().filter_map(|(i, r)| r.tls.as_ref().map(|t| (i, t)));
        let takes = |t: &TlsRule| !hello.ech || t.ech == EchPolicy::Outer;
        let named = |t: &TlsRule| {
            hello
                .sni
                .is_some_and(|n| t.server_names.iter().any(|p| p.matches(n)))
        };
        let pass = tls_rules().find(|(_, t)| !t.intercept && takes(t) && named(t));
        if let Some((rule, _)) = pass {
            return TlsVerdict::PassThrough { rule };
        }
        if tls_rules().any(|(_, t)| t.intercept && takes(t) && admits(t, hello.sni)) {
            return TlsVerdict::Intercept;
        }
        let admitting = |t: &TlsRule| named(t) || (t.intercept && admits(t, hello.sni));
        TlsVerdict::Refuse(if tls_rules().next().is_none() {
            TlsDenial::NoTlsRule
        } else if hello.ech && tls_rules().any(|(_, t)| admitting(t)) {
            TlsDenial::Encrypted
        } else if hello.sni.is_none() {
            TlsDenial::NoServerName
        } else {
            TlsDenial::NameNotAllowed
        })
    }

    /// The protocols of `offered` that the allowing rule lets a request
    /// upgrade to, in the order offered: those its http entry lists; for a
    /// rule without http (everything allowed), all of them. Never h2c.
    pub fn allowed_upgrades(
        &self,
        id: PolicyId,
        rule: usize,
        entry: Option<usize>,
        offered: &[String],
    ) -> Vec<String> {
        let Some(rule) = self.rule(id, rule) else {
            return Vec::new();
        };
        let listed = match (&rule.http, entry) {
            (Some(entries), Some(e)) => match entries.get(e) {
                Some(h) => Some(h.upgrade.as_slice()),
                None => return Vec::new(),
            },
            (None, _) => None,
            (Some(_), None) => return Vec::new(),
        };
        offered
            .iter()
            .filter(|p| {
                !protocol_name(p).eq_ignore_ascii_case("h2c")
                    && listed.is_none_or(|l| l.iter().any(|u| u.allows(p)))
            })
            .cloned()
            .collect()
    }
}

fn http_rule_matches(rule: &HttpRule, req: &RequestView<'_>) -> bool {
    if let Some(m) = &rule.method {
        if !m.is_match(req.method) {
            return false;
        }
    }
    if let Some(p) = &rule.path {
        if !p.is_match(req.path) {
            return false;
        }
    }
    if let Some(h) = &rule.host {
        // Host names are case-insensitive; match the lowercase form.
        match req.host {
            Some(host) if h.is_match(&host.to_ascii_lowercase()) => {}
            _ => return false,
        }
    }
    rule.headers.iter().all(|want| {
        req.headers.iter().any(|(name, value)| {
            name.eq_ignore_ascii_case(&want.name)
                && want
                    .value
                    .as_ref()
                    .is_none_or(|v| value.trim_ascii() == v.as_bytes())
        })
    })
}

/// The host of a validated `uri-host [":" port]` authority: without its
/// port, an IPv6 literal without brackets.
pub fn authority_host(authority: &str) -> &str {
    if let Some(rest) = authority.strip_prefix('[') {
        return rest.split_once(']').map_or(rest, |(h, _)| h);
    }
    authority.split_once(':').map_or(authority, |(h, _)| h)
}

/// Whether a request inside intercepted TLS names the server its
/// connection was made for: the SNI, or (a client that sent none) the
/// original destination's IP. Otherwise the request is misdirected (421,
/// RFC 9110 15.5.20), or a Host/SNI pair could front one name with another.
pub fn host_fits_tls(host: Option<&str>, sni: Option<&str>, dst: IpAddr) -> bool {
    let Some(host) = host.map(authority_host) else {
        return false;
    };
    match sni {
        Some(name) => host.trim_end_matches('.').eq_ignore_ascii_case(name),
        None => host
            .parse::<IpAddr>()
            .is_ok_and(|ip| canonical_ip(ip) == canonical_ip(dst)),
    }
}

/// IPv4-mapped IPv6 addresses are IPv4 addresses.
pub fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    }
}

fn canonical_net(net: IpNet) -> IpNet {
    match net {
        IpNet::V6(v6) if v6.prefix_len() >= 96 => match v6.addr().to_ipv4_mapped() {
            Some(v4) => IpNet::new(IpAddr::V4(v4), v6.prefix_len() - 96).unwrap_or(net),
            None => net,
        },
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn the_return_path_is_needed_by_a_preserve_source_own_or_inherited() {
        let config = |upstream: &str, rule: &str| {
            let yaml = format!("proxy: {{ listen: \"10.0.0.1:15001\" }}\n{upstream}policies:\n  - name: p\n    cgroup: /p\n    egress:\n      - {{ to: [\"10.0.0.0/8\"], http: [{{ method: GET }}]{rule} }}\n");
            PolicySet::compile(&Config::parse(&yaml, std::path::Path::new("t.yaml")).expect(&yaml))
        };
        let cases = [
            ("", "", false),
            ("", ", upstream: { source: preserve-ip-port }", true),
            ("upstream: { source: preserve-ip }\n", "", true),
            (
                "upstream: { source: preserve-ip }\n",
                ", upstream: { source: node }",
                false,
            ),
        ];
        for (upstream, rule, want) in cases {
            assert_eq!(
                config(upstream, rule).needs_return_path(),
                want,
                "{upstream:?} {rule:?}"
            );
        }
    }

    #[test]
    fn a_reload_keeps_each_kept_name_s_id_and_gives_new_names_free_ones() {
        let busy_none = |_| false;
        // (in force, new names, busy ids, want)
        type Case<'a> = (
            &'a [(&'a str, PolicyId)],
            &'a [&'a str],
            &'a [PolicyId],
            Option<Vec<PolicyId>>,
        );
        let cases: [Case; 6] = [
            // Unchanged, reordered: each name keeps its id.
            (&[("a", 0), ("b", 1)], &["b", "a"], &[], Some(vec![1, 0])),
            // Appended: the lowest id nobody holds.
            (
                &[("a", 0), ("b", 1)],
                &["a", "b", "c"],
                &[],
                Some(vec![0, 1, 2]),
            ),
            // Removed in the middle: its id is not given to a newcomer at once.
            (
                &[("a", 0), ("b", 1), ("c", 2)],
                &["a", "c", "d"],
                &[],
                Some(vec![0, 2, 3]),
            ),
            // A removed policy's id, once idle, and not in force, is free.
            (
                &[("a", 0), ("c", 2)],
                &["a", "c", "d"],
                &[],
                Some(vec![0, 2, 1]),
            ),
            // ... but not while sockets it redirected are open.
            (
                &[("a", 0), ("c", 2)],
                &["a", "c", "d"],
                &[1],
                Some(vec![0, 2, 3]),
            ),
            // Start: nothing in force.
            (&[], &["x", "y"], &[], Some(vec![0, 1])),
        ];
        for (previous, names, busy, want) in cases {
            let got = assign_ids(previous, names, |id| busy.contains(&id));
            assert_eq!(got, want, "{previous:?} -> {names:?} busy {busy:?}");
        }
        // Out of ids.
        let full: Vec<(String, PolicyId)> = (0..crate::bpf::limits::MAX_POLICIES as PolicyId)
            .map(|i| (format!("p{i}"), i))
            .collect();
        let full: Vec<(&str, PolicyId)> = full.iter().map(|(n, i)| (n.as_str(), *i)).collect();
        assert_eq!(assign_ids(&full, &["new"], busy_none), None);
    }

    const CONFIG: &str = r#"
proxy: { listen: "10.77.0.1:15001" }
policies:
  - name: analytics
    cgroup: /t/analytics
    egress:
      - to: ["10.77.1.0/24", "fd77:1::/64"]
        ports: [80, 8080]
        http:
          - method: "GET|HEAD"
            path: "/data/.*"
            host: "origin\\.test(:[0-9]+)?"
            headers: ["x-team: analytics"]
          - method: POST
            path: /upload
          - path: /ws
            upgrade: [websocket, WebSocket-Extra]
        upstream: { max_requests_per_connection: 100 }
      - to: ["10.77.1.10/32"]
        ports: [9000]
      - to: ["10.77.9.0/24"]
  - name: other
    cgroup: /t/other
    egress: []
"#;

    fn set() -> PolicySet {
        PolicySet::compile(&Config::parse(CONFIG, Path::new("t.yaml")).unwrap())
    }

    #[test]
    fn a_loopback_listener_is_warned_about_where_rules_redirect() {
        let warned = |listen: &[&str], redirects| {
            let listen: Vec<SocketAddr> = listen.iter().map(|a| a.parse().unwrap()).collect();
            loopback_listen_warnings(&listen, redirects)
        };
        let cases: &[(&[&str], bool, usize)] = &[
            (&["127.0.0.1:15001"], true, 1),
            (&["127.0.0.1:15001"], false, 0),
            (&["10.77.0.1:15001"], true, 0),
            (&["10.77.0.1:15001", "[::1]:15001"], true, 1),
            (&["127.0.0.2:15001", "[::1]:15001"], true, 2),
        ];
        for (listen, redirects, n) in cases {
            assert_eq!(
                warned(listen, *redirects).len(),
                *n,
                "{listen:?} {redirects}"
            );
        }
        assert!(warned(&["127.0.0.1:15001"], true)[0]
            .starts_with("proxy.listen 127.0.0.1:15001 is a loopback address: workloads in other network namespaces"));
        // Compiled from a configuration: an http rule redirects.
        let text = "proxy: { listen: \"127.0.0.1:15001\" }\npolicies:\n  - name: p\n    cgroup: /t/p\n    egress:\n      - to: [\"10.0.0.0/8\"]\n        http: [{ method: GET }]\n";
        let w = PolicySet::compile(&Config::parse(text, Path::new("t.yaml")).unwrap()).warnings();
        assert_eq!(w.len(), 1, "{w:?}");
    }

    #[test]
    fn a_policy_naming_hosts_without_a_dns_rule_is_warned_about() {
        let policy = |rules: &str| {
            let text = format!(
                "proxy: {{ listen: \"10.77.0.1:15001\" }}\npolicies:\n  - name: p\n    cgroup: /t/p\n    egress:\n{rules}"
            );
            PolicySet::compile(&Config::parse(&text, Path::new("t.yaml")).unwrap()).warnings()
        };
        let named = "      - to: [\"10.0.0.0/8\"]\n        ports: [443]\n        http: [{ host: \"api\\\\.example\\\\.com\" }]\n";
        let cases = [
            // (extra rules, warned)
            ("", true),
            (
                "      - to: [\"10.96.0.10/32\"]\n        ports: [53]\n        protocol: any\n",
                false,
            ),
            (
                "      - to: [\"10.96.0.10/32\"]\n        ports: [53]\n        protocol: udp\n",
                false,
            ),
            (
                "      - to: [\"10.96.0.10/32\"]\n        protocol: udp\n",
                false,
            ),
            // TCP only to the resolver, or UDP to another port: no DNS.
            (
                "      - to: [\"10.96.0.10/32\"]\n        ports: [53]\n",
                true,
            ),
            (
                "      - to: [\"10.96.0.10/32\"]\n        ports: [5353]\n        protocol: udp\n",
                true,
            ),
        ];
        for (extra, warned) in cases {
            let w = policy(&format!("{named}{extra}"));
            assert_eq!(!w.is_empty(), warned, "{extra:?}: {w:?}");
            if warned {
                assert!(
                    w[0].contains(r#"policy "p""#) && w[0].contains("api"),
                    "{w:?}"
                );
            }
        }
        // No host named, no warning.
        assert!(
            policy("      - to: [\"10.0.0.0/8\"]\n        http: [{ method: GET }]\n").is_empty()
        );
    }

    fn req<'a>(
        method: &'a str,
        path: &'a str,
        host: Option<&'a str>,
        headers: &'a [(&'a str, &'a [u8])],
    ) -> RequestView<'a> {
        RequestView {
            method,
            path,
            host,
            headers,
        }
    }

    #[test]
    fn request_decisions() {
        let s = set();
        let team: &[(&str, &[u8])] = &[("X-Team", b" analytics ")];
        let wrong_team: &[(&str, &[u8])] = &[("x-team", b"finance")];
        let allow = |rule, entry| Decision::Allow { rule, entry };
        let l7_deny = Decision::Deny {
            reason: DenyReason::NoHttpRuleMatched,
        };
        let no_rule = Decision::Deny {
            reason: DenyReason::NoRuleForDestination,
        };
        let cases: Vec<(&str, RequestView<'_>, Decision)> = vec![
            (
                "10.77.1.10:80",
                req("GET", "/data/x", Some("origin.test"), team),
                allow(0, Some(0)),
            ),
            (
                "10.77.1.10:8080",
                req("HEAD", "/data/", Some("Origin.TEST:8080"), team),
                allow(0, Some(0)),
            ),
            (
                "[fd77:1::10]:80",
                req("GET", "/data/x", Some("origin.test"), team),
                allow(0, Some(0)),
            ),
            (
                "[::ffff:10.77.1.10]:80",
                req("GET", "/data/x", Some("origin.test"), team),
                allow(0, Some(0)),
            ),
            (
                "10.77.1.10:80",
                req("GET", "/data/x", Some("origin.test"), wrong_team),
                l7_deny.clone(),
            ),
            (
                "10.77.1.10:80",
                req("GET", "/data/x", Some("origin.test"), &[]),
                l7_deny.clone(),
            ),
            (
                "10.77.1.10:80",
                req("GET", "/data/x", Some("evil.test"), team),
                l7_deny.clone(),
            ),
            (
                "10.77.1.10:80",
                req("GET", "/data/x", None, team),
                l7_deny.clone(),
            ),
            (
                "10.77.1.10:80",
                req("GETS", "/data/x", Some("origin.test"), team),
                l7_deny.clone(),
            ),
            (
                "10.77.1.10:80",
                req("GET", "/etc/data/x", Some("origin.test"), team),
                l7_deny.clone(),
            ),
            (
                "10.77.1.10:80",
                req("POST", "/upload", None, &[]),
                allow(0, Some(1)),
            ),
            (
                "10.77.1.10:80",
                req("POST", "/upload/more", None, &[]),
                l7_deny.clone(),
            ),
            (
                "10.77.1.10:9000",
                req("DELETE", "/anything", None, &[]),
                allow(1, None),
            ),
            (
                "10.77.1.11:9000",
                req("GET", "/", None, &[]),
                no_rule.clone(),
            ),
            (
                "10.77.9.1:12345",
                req("PUT", "/x", None, &[]),
                allow(2, None),
            ),
            (
                "10.77.2.1:80",
                req("GET", "/data/x", Some("origin.test"), team),
                no_rule.clone(),
            ),
        ];
        for (dst, r, want) in cases {
            let got = s.evaluate(0, dst.parse().unwrap(), Channel::Plain, &r);
            assert_eq!(got, want, "{dst} {r:?}");
        }
        assert_eq!(
            s.evaluate(
                1,
                "10.77.1.10:80".parse().unwrap(),
                Channel::Plain,
                &req("GET", "/", None, &[])
            ),
            no_rule
        );
        assert_eq!(
            s.evaluate(
                7,
                "10.77.1.10:80".parse().unwrap(),
                Channel::Plain,
                &req("GET", "/", None, &[])
            ),
            no_rule
        );
    }

    const TLS_CONFIG: &str = r#"
proxy: { listen: "10.77.0.1:15001" }
tls: { ca: { cert: /x/ca.crt, key: /x/ca.key } }
policies:
  - name: s3
    cgroup: /t/s3
    egress:
      - to: ["10.77.5.0/24"]
        ports: [443]
        tls: { server_names: ["*.s3.amazonaws.com", "origin.test"] }
      - to: ["10.77.5.0/24"]
        ports: [443]
        tls: { intercept: true, server_names: ["api.test", "**.inspect.test"] }
        http: [{ method: GET, path: "/ok/.*" }]
      - to: ["10.77.6.0/24"]
        ports: [443]
        tls: { intercept: true, ech: outer }
        http: [{ path: "/6/.*" }]
      - to: ["10.77.7.0/24"]
        ports: [443]
        http: [{ method: GET }]
      - to: ["10.77.8.0/24"]
        ports: [443]
      - to: ["10.77.8.0/24"]
        ports: [443]
        tls: { server_names: ["x.test"], ech: outer }
      - to: ["10.77.9.0/24"]
        ports: [80]
        upstream: { tls: true }
        http: [{ method: GET }]
"#;

    fn tls_set() -> PolicySet {
        PolicySet::compile(&Config::parse(TLS_CONFIG, Path::new("t.yaml")).unwrap())
    }

    #[test]
    fn tls_verdict_table() {
        let s = tls_set();
        use TlsDenial::*;
        let pass = |rule| TlsVerdict::PassThrough { rule };
        let cases: &[(&str, Option<&str>, bool, TlsVerdict)] = &[
            (
                "10.77.5.1:443",
                Some("bucket.s3.amazonaws.com"),
                false,
                pass(0),
            ),
            ("10.77.5.1:443", Some("origin.test"), false, pass(0)),
            (
                "10.77.5.1:443",
                Some("a.b.s3.amazonaws.com"),
                false,
                TlsVerdict::Refuse(NameNotAllowed),
            ),
            (
                "10.77.5.1:443",
                Some("api.test"),
                false,
                TlsVerdict::Intercept,
            ),
            (
                "10.77.5.1:443",
                Some("a.b.inspect.test"),
                false,
                TlsVerdict::Intercept,
            ),
            (
                "10.77.5.1:443",
                Some("inspect.test"),
                false,
                TlsVerdict::Refuse(NameNotAllowed),
            ),
            // No SNI: pass-through refuses it, interception takes it (IP leaf).
            ("10.77.5.1:443", None, false, TlsVerdict::Intercept),
            (
                "10.77.5.1:443",
                Some("bucket.s3.amazonaws.com"),
                true,
                TlsVerdict::Refuse(Encrypted),
            ),
            (
                "10.77.5.1:443",
                Some("nobody.test"),
                true,
                TlsVerdict::Refuse(NameNotAllowed),
            ),
            (
                "10.77.5.1:8443",
                Some("origin.test"),
                false,
                TlsVerdict::Refuse(NoTlsRule),
            ),
            (
                "10.77.6.1:443",
                Some("any.test"),
                true,
                TlsVerdict::Intercept,
            ),
            ("10.77.6.1:443", None, false, TlsVerdict::Intercept),
            (
                "10.77.7.1:443",
                Some("x.test"),
                false,
                TlsVerdict::Refuse(NoTlsRule),
            ),
            // An L4 rule allows everything: it wins, SNI or not.
            ("10.77.8.1:443", None, false, pass(4)),
            ("10.77.8.1:443", Some("y.test"), true, pass(4)),
            (
                "10.77.9.1:80",
                Some("x.test"),
                false,
                TlsVerdict::Refuse(NoTlsRule),
            ),
            (
                "10.99.0.1:443",
                Some("x.test"),
                false,
                TlsVerdict::Refuse(NoTlsRule),
            ),
        ];
        for (dst, sni, ech, want) in cases {
            let hello = HelloView {
                sni: *sni,
                ech: *ech,
            };
            let got = s.tls_verdict(0, dst.parse().unwrap(), hello);
            assert_eq!(got, *want, "{dst} {sni:?} ech={ech}");
        }
        let hello = HelloView {
            sni: None,
            ech: false,
        };
        assert_eq!(
            s.tls_verdict(0, "10.77.9.1:443".parse().unwrap(), hello),
            TlsVerdict::Refuse(NoTlsRule)
        );
        assert_eq!(
            tls_set().tls_verdict(5, "10.77.8.1:443".parse().unwrap(), hello),
            TlsVerdict::Refuse(NoTlsRule)
        );
    }

    /// A pass-through name without SNI: the reason names the missing SNI.
    #[test]
    fn a_missing_sni_is_named_where_only_names_pass() {
        let s = tls_set();
        let hello = HelloView {
            sni: None,
            ech: false,
        };
        let mut only_names = s.clone();
        only_names.policies[0]
            .rules
            .retain(|r| r.tls.as_ref().is_some_and(|t| !t.intercept));
        assert_eq!(
            only_names.tls_verdict(0, "10.77.5.1:443".parse().unwrap(), hello),
            TlsVerdict::Refuse(TlsDenial::NoServerName)
        );
    }

    #[test]
    fn requests_are_judged_by_the_rules_of_their_channel() {
        let s = tls_set();
        let api = Channel::Intercepted {
            sni: Some("api.test"),
        };
        let no_sni = Channel::Intercepted { sni: None };
        let unmatched = Decision::Deny {
            reason: DenyReason::NoHttpRuleMatched,
        };
        let allow = |rule, entry| Decision::Allow { rule, entry };
        let cases: &[(&str, Channel<'_>, &str, Decision)] = &[
            ("10.77.5.1:443", api, "/ok/a", allow(1, Some(0))),
            ("10.77.5.1:443", api, "/no", unmatched.clone()),
            // Names the rule does not intercept: its entries do not apply.
            (
                "10.77.5.1:443",
                Channel::Intercepted {
                    sni: Some("other.test"),
                },
                "/ok/a",
                unmatched.clone(),
            ),
            // Plain HTTP to a port of tls rules: none judges it.
            ("10.77.5.1:443", Channel::Plain, "/ok/a", unmatched.clone()),
            ("10.77.6.1:443", no_sni, "/6/x", allow(2, Some(0))),
            // Plain http rules do not judge requests inside TLS.
            ("10.77.7.1:443", api, "/", unmatched.clone()),
            ("10.77.7.1:443", Channel::Plain, "/", allow(3, Some(0))),
            ("10.77.8.1:443", Channel::Plain, "/", allow(4, None)),
            ("10.77.9.1:80", Channel::Plain, "/", allow(6, Some(0))),
        ];
        for (dst, channel, path, want) in cases {
            let r = req("GET", path, None, &[]);
            let got = s.evaluate(0, dst.parse().unwrap(), *channel, &r);
            assert_eq!(got, *want, "{dst} {channel:?} {path}");
        }
        let rule = |i: usize| &s.policies[0].rules[i];
        assert_eq!((rule(6).originate, rule(0).originate), (Some(443), None));
        assert_eq!(
            s.udp_verdict(0, "10.77.5.1:443".parse().unwrap()),
            UdpVerdict::Quic,
            "QUIC would bypass the SNI rules"
        );
    }

    #[test]
    fn host_must_name_the_tls_server() {
        let v4: IpAddr = "10.77.5.1".parse().unwrap();
        let v6: IpAddr = "fd77::1".parse().unwrap();
        let cases: &[(Option<&str>, Option<&str>, IpAddr, bool)] = &[
            (Some("origin.test"), Some("origin.test"), v4, true),
            (Some("ORIGIN.test:443"), Some("origin.test"), v4, true),
            (Some("origin.test."), Some("origin.test"), v4, true),
            (Some("other.test"), Some("origin.test"), v4, false),
            (Some("a.origin.test"), Some("origin.test"), v4, false),
            (None, Some("origin.test"), v4, false),
            (Some("10.77.5.1"), None, v4, true),
            (Some("10.77.5.1:443"), None, v4, true),
            (Some("10.77.5.2"), None, v4, false),
            (Some("origin.test"), None, v4, false),
            (Some("[fd77::1]:443"), None, v6, true),
            (Some("[fd77::2]"), None, v6, false),
            (Some("10.77.5.1"), Some("origin.test"), v4, false),
        ];
        for (host, sni, dst, want) in cases {
            assert_eq!(
                host_fits_tls(*host, *sni, *dst),
                *want,
                "{host:?} {sni:?} {dst}"
            );
        }
    }

    /// RFC 9110 7.8: only listed protocols pass; h2c never (RFC 9113 3.1).
    #[test]
    fn allowed_upgrades_table() {
        let s = set();
        let offer = |list: &[&str]| list.iter().map(|p| p.to_string()).collect::<Vec<_>>();
        // (rule, entry, offered, allowed)
        type Case = (
            usize,
            Option<usize>,
            &'static [&'static str],
            &'static [&'static str],
        );
        let cases: &[Case] = &[
            // The /ws entry lists websocket.
            (0, Some(2), &["websocket"], &["websocket"]),
            (0, Some(2), &["WebSocket/13"], &["WebSocket/13"]),
            (0, Some(2), &["h2c", "websocket"], &["websocket"]),
            (
                0,
                Some(2),
                &["websocket-extra", "irc"],
                &["websocket-extra"],
            ),
            // Entries without an upgrade list allow none.
            (0, Some(0), &["websocket"], &[]),
            // A rule without http allows any protocol but h2c.
            (2, None, &["irc", "H2C", "websocket"], &["irc", "websocket"]),
            // Out-of-range indexes allow nothing.
            (0, Some(9), &["websocket"], &[]),
            (9, None, &["websocket"], &[]),
            (0, None, &["websocket"], &[]),
        ];
        for (rule, entry, offered, want) in cases {
            let got = s.allowed_upgrades(0, *rule, *entry, &offer(offered));
            assert_eq!(got, offer(want), "rule {rule} entry {entry:?} {offered:?}");
        }
        let err = Config::parse(
            &CONFIG.replace("upgrade: [websocket, WebSocket-Extra]", "upgrade: [h2c]"),
            Path::new("t.yaml"),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("h2c is never allowed"), "{err}");
        assert!(err.starts_with("t.yaml:"), "{err}");
    }

    #[test]
    fn rule_overrides_apply_on_top_of_globals() {
        let s = set();
        assert_eq!(
            s.policies[0].rules[0].upstream.max_requests_per_connection,
            100
        );
        assert_eq!(
            s.policies[0].rules[1].upstream.max_requests_per_connection,
            0
        );
    }
}
