//! The connect()-time view of a [`PolicySet`]: entries for the kernel's
//! longest-prefix-match map, and each policy's connection limit, computed as
//! pure functions.
//!
//! The kernel looks up (policy, transport, port, address) and (policy,
//! transport, any-port, address) and takes the stronger verdict. A
//! longest-prefix lookup returns only the most specific entry, so each
//! entry's verdict already includes every less specific entry of the same
//! (policy, transport, port) that contains it. UDP entries only allow; the
//! kernel refuses UDP where the TCP entries redirect (see
//! [`super::UdpVerdict::Quic`]).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ipnet::IpNet;

use super::{PolicyId, PolicySet, UdpVerdict};
use crate::bpf::abi::{addr16, ADDR_BITS, ADDR_V4_MAPPED_BITS};

/// Connect-time verdict; order matters (stronger is greater).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum ConnectVerdict {
    Allow,
    Redirect,
}

/// The transport of a kernel rule entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Transport {
    Tcp,
    Udp,
}

impl Transport {
    /// Its IANA protocol number, as the kernel's key carries it
    /// (enum sw_rule_proto).
    pub fn number(self) -> u16 {
        use crate::bpf::abi::sw_rule_proto as P;
        let proto = match self {
            Transport::Tcp => P::SW_PROTO_TCP,
            Transport::Udp => P::SW_PROTO_UDP,
        };
        proto.0 as u16
    }
}

/// One entry of the kernel's policy_rules map.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RuleEntry {
    pub policy_id: PolicyId,
    pub transport: Transport,
    /// 0 = every port.
    pub port: u16,
    /// Address in the 16-byte form (IPv4-mapped for IPv4).
    pub addr: [u8; 16],
    /// Prefix length over `addr` (IPv4 prefixes + [`ADDR_V4_MAPPED_BITS`]).
    pub prefix_len: u8,
    pub verdict: ConnectVerdict,
}

impl RuleEntry {
    /// The destination prefix as the configuration writes it: an IPv4
    /// CIDR for an IPv4-mapped prefix of at least [`ADDR_V4_MAPPED_BITS`]
    /// bits (IPv4's 0.0.0.0/0 and IPv6's ::ffff:0:0/96 are one entry),
    /// else IPv6.
    pub fn destination(&self) -> IpNet {
        let v6 = std::net::Ipv6Addr::from(self.addr);
        match v6.to_ipv4_mapped() {
            Some(v4) if self.prefix_len >= ADDR_V4_MAPPED_BITS => {
                ipnet::Ipv4Net::new(v4, self.prefix_len - ADDR_V4_MAPPED_BITS)
                    .map(IpNet::V4)
                    .unwrap_or_else(|_| IpNet::V4(ipnet::Ipv4Net::from(v4)))
            }
            _ => ipnet::Ipv6Net::new(v6, self.prefix_len.min(ADDR_BITS))
                .map(IpNet::V6)
                .unwrap_or_else(|_| IpNet::V6(ipnet::Ipv6Net::from(v6))),
        }
    }
}

/// An address prefix in the 16-byte form: (address, prefix length).
type Prefix = ([u8; 16], u8);

fn prefix16(net: &IpNet) -> Prefix {
    match net {
        IpNet::V4(n) => (
            addr16(IpAddr::V4(n.network())),
            ADDR_V4_MAPPED_BITS + n.prefix_len(),
        ),
        IpNet::V6(n) => (addr16(IpAddr::V6(n.network())), n.prefix_len()),
    }
}

fn contains(outer: &Prefix, inner: &Prefix) -> bool {
    if outer.1 > inner.1 {
        return false;
    }
    let a = u128::from_be_bytes(outer.0);
    let b = u128::from_be_bytes(inner.0);
    let mask = if outer.1 == 0 {
        0
    } else {
        u128::MAX << (ADDR_BITS - outer.1)
    };
    a & mask == b & mask
}

/// Where a kernel entry's prefix is written in the configuration: policy,
/// rule (`egress[]`) and destination (`to[]`) indexes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PrefixOrigin {
    pub policy: usize,
    pub rule: usize,
    pub to: usize,
}

/// (policy, transport, port): the entries the kernel looks up together.
type Group = (PolicyId, Transport, u16);

/// Every (group, prefix, verdict) the rules name, in configuration order,
/// with where each is written. Distinct (group, prefix) pairs are exactly
/// the kernel's entries.
fn rule_prefixes(
    set: &PolicySet,
) -> impl Iterator<Item = (PrefixOrigin, Group, Prefix, ConnectVerdict)> + '_ {
    set.policies.iter().enumerate().flat_map(|(p, policy)| {
        policy.rules.iter().enumerate().flat_map(move |(r, rule)| {
            // Config validation keeps http rules TCP-only.
            let verdict = if rule.l7() {
                ConnectVerdict::Redirect
            } else {
                ConnectVerdict::Allow
            };
            let ports: Vec<u16> = if rule.ports.is_empty() {
                vec![0]
            } else {
                rule.ports.clone()
            };
            let transports = [
                (rule.protocol.tcp(), Transport::Tcp),
                (rule.protocol.udp(), Transport::Udp),
            ];
            transports
                .into_iter()
                .filter(|(on, _)| *on)
                .flat_map(move |(_, transport)| {
                    ports.clone().into_iter().flat_map(move |port| {
                        rule.nets.iter().enumerate().map(move |(to, net)| {
                            let origin = PrefixOrigin {
                                policy: p,
                                rule: r,
                                to,
                            };
                            let group = (policy.id, transport, port);
                            (origin, group, prefix16(net), verdict)
                        })
                    })
                })
        })
    })
}

/// All entries for the kernel map, merged as described in the module docs.
pub fn rule_entries(set: &PolicySet) -> Vec<RuleEntry> {
    // (policy, transport, port) -> prefix -> strongest verdict of the rules naming it.
    let mut groups: BTreeMap<Group, BTreeMap<Prefix, ConnectVerdict>> = BTreeMap::new();
    for (_, group, prefix, verdict) in rule_prefixes(set) {
        let v = groups
            .entry(group)
            .or_default()
            .entry(prefix)
            .or_insert(verdict);
        *v = (*v).max(verdict);
    }
    let mut out = Vec::new();
    for ((policy_id, transport, port), prefixes) in &groups {
        for (prefix, verdict) in prefixes {
            let merged = prefixes
                .iter()
                .filter(|(outer, _)| contains(outer, prefix))
                .map(|(_, v)| *v)
                .max()
                .unwrap_or(*verdict);
            out.push(RuleEntry {
                policy_id: *policy_id,
                transport: *transport,
                port: *port,
                addr: prefix.0,
                prefix_len: prefix.1,
                verdict: merged,
            });
        }
    }
    out
}

/// Where the rules first need more than `capacity` kernel entries: the
/// destination whose prefix would be entry `capacity + 1` of
/// [`rule_entries`]. None when they all fit.
pub fn prefix_overflow(set: &PolicySet, capacity: usize) -> Option<PrefixOrigin> {
    let mut seen = BTreeSet::new();
    rule_prefixes(set)
        .find(|(_, group, prefix, _)| seen.insert((*group, *prefix)) && seen.len() > capacity)
        .map(|(origin, ..)| origin)
}

/// Connections the kernel tracks for the proxy (orig_dsts entries): the
/// policies' limits add up to at most this, so that map can never be full.
pub use crate::bpf::limits::TRACKED_CONNS;

/// Why the policies' `max_connections` cannot all be honoured.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LimitError {
    /// The explicit limits up to and including policy `policy` add up to
    /// more than the capacity.
    #[error("the policies' max_connections add up to {total} here, more than the {capacity} connections the kernel tracks")]
    OverCapacity {
        policy: usize,
        total: u64,
        capacity: u32,
    },
    /// Too little is left for the policies without a limit; `policy` is
    /// the first of them.
    #[error("the other policies' max_connections leave {left} of the kernel's {capacity} tracked connections for {sharing} policies without one")]
    NoShareLeft {
        policy: usize,
        left: u32,
        sharing: usize,
        capacity: u32,
    },
}

/// Each policy's connection limit: its own `max_connections` if it has one,
/// otherwise an equal share of what the explicit ones leave of `capacity`.
/// The limits never add up to more than `capacity`.
pub fn connection_limits(requested: &[Option<u32>], capacity: u32) -> Result<Vec<u32>, LimitError> {
    let mut total = 0u64;
    for (policy, limit) in requested.iter().enumerate() {
        total += u64::from(limit.unwrap_or(0));
        if total > u64::from(capacity) {
            return Err(LimitError::OverCapacity {
                policy,
                total,
                capacity,
            });
        }
    }
    // total <= capacity, checked above.
    let left = capacity - total as u32;
    let sharing = requested.iter().filter(|l| l.is_none()).count();
    let share = match u32::try_from(sharing) {
        Ok(0) => 0,
        Ok(n) if left / n > 0 => left / n,
        _ => {
            return Err(LimitError::NoShareLeft {
                policy: requested.iter().position(Option::is_none).unwrap_or(0),
                left,
                sharing,
                capacity,
            })
        }
    };
    Ok(requested.iter().map(|l| l.unwrap_or(share)).collect())
}

/// What the kernel's sw_rule_verdict computes, from `entries` alone: used
/// to check that the merged entries agree with the rules they came from.
pub fn kernel_verdict(
    entries: &[RuleEntry],
    policy_id: PolicyId,
    transport: Transport,
    ip: IpAddr,
    port: u16,
) -> Option<ConnectVerdict> {
    let target: Prefix = (addr16(ip), ADDR_BITS);
    let lpm = |p: u16| {
        entries
            .iter()
            .filter(|e| e.policy_id == policy_id && e.transport == transport && e.port == p)
            .filter(|e| contains(&(e.addr, e.prefix_len), &target))
            .max_by_key(|e| e.prefix_len)
            .map(|e| e.verdict)
    };
    lpm(port).max(lpm(0))
}

/// What the kernel's sw_udp_verdict computes, from `entries` alone.
pub fn kernel_udp_verdict(
    entries: &[RuleEntry],
    policy_id: PolicyId,
    ip: IpAddr,
    port: u16,
) -> UdpVerdict {
    let tcp = kernel_verdict(entries, policy_id, Transport::Tcp, ip, port);
    let udp = kernel_verdict(entries, policy_id, Transport::Udp, ip, port);
    match (tcp, udp) {
        (Some(ConnectVerdict::Redirect), _) => UdpVerdict::Quic,
        (_, Some(ConnectVerdict::Allow)) => UdpVerdict::Allow,
        _ => UdpVerdict::Deny,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use std::net::SocketAddr;
    use std::path::Path;

    const CONFIG: &str = r#"
proxy: { listen: "10.77.0.1:15001" }
policies:
  - name: p
    cgroup: /t/p
    egress:
      - to: ["10.0.0.0/8"]
        ports: [80]
      - to: ["10.1.0.0/16", "fd00::/8"]
        ports: [80, 443]
        http: [{ method: GET }]
      - to: ["10.1.2.3/32"]
        ports: [80]
      - to: ["192.168.0.0/16"]
      - to: ["192.168.7.0/24"]
        ports: [8080]
        http: [{ path: "/x" }]
      - to: ["10.53.0.53/32", "fd53::53/128"]
        ports: [53]
        protocol: any
      - to: ["10.1.0.0/16"]
        protocol: udp
      - to: ["172.16.0.0/12"]
        ports: [5000]
        protocol: udp
"#;

    fn set() -> PolicySet {
        PolicySet::compile(&Config::parse(CONFIG, Path::new("t.yaml")).unwrap())
    }

    /// The reference semantics: strongest verdict of every covering rule.
    fn reference(set: &PolicySet, dst: SocketAddr) -> Option<ConnectVerdict> {
        set.policies[0]
            .rules
            .iter()
            .filter(|r| r.covers(dst))
            .map(|r| {
                if r.l7() {
                    ConnectVerdict::Redirect
                } else {
                    ConnectVerdict::Allow
                }
            })
            .max()
    }

    #[test]
    fn entries_read_back_as_the_configured_destinations() {
        let cases = [
            ("10.1.2.0/24", "10.1.2.0/24"),
            ("0.0.0.0/0", "0.0.0.0/0"),
            ("10.1.2.3/32", "10.1.2.3/32"),
            ("fd00::/8", "fd00::/8"),
            ("::/0", "::/0"),
            ("fd00::1/128", "fd00::1/128"),
            // One kernel entry, read as IPv4.
            ("::ffff:0:0/96", "0.0.0.0/0"),
            ("::ffff:10.0.0.0/104", "10.0.0.0/8"),
            // Shorter than the mapped prefix: IPv6.
            ("::ffff:0:0/95", "::fffe:0:0/95"),
        ];
        for (net, want) in cases {
            let n: IpNet = net.parse().unwrap();
            let (addr, prefix_len) = prefix16(&n);
            let e = RuleEntry {
                policy_id: 0,
                transport: Transport::Tcp,
                port: 0,
                addr,
                prefix_len,
                verdict: ConnectVerdict::Allow,
            };
            assert_eq!(e.destination().to_string(), want, "{net}");
        }
    }

    #[test]
    fn merged_entries_agree_with_the_rules() {
        let s = set();
        let entries = rule_entries(&s);
        let dsts = [
            "10.9.9.9:80",
            "10.1.9.9:80",
            "10.1.2.3:80",
            "10.1.2.3:443",
            "10.9.9.9:443",
            "11.0.0.1:80",
            "[fd00::1]:443",
            "[fe00::1]:443",
            "192.168.1.1:1",
            "192.168.7.7:8080",
            "192.168.7.7:8081",
            "192.169.0.1:8080",
            "10.53.0.53:53",
            "10.53.0.53:54",
            "[fd53::53]:53",
            "10.1.7.7:9999",
            "172.16.1.1:5000",
            "172.31.1.1:5001",
        ];
        for d in dsts {
            let dst: SocketAddr = d.parse().unwrap();
            assert_eq!(
                kernel_verdict(&entries, 0, Transport::Tcp, dst.ip(), dst.port()),
                reference(&s, dst),
                "{d}"
            );
            assert_eq!(
                kernel_udp_verdict(&entries, 0, dst.ip(), dst.port()),
                s.udp_verdict(0, dst),
                "UDP {d}"
            );
        }
    }

    #[test]
    fn udp_is_allowed_by_udp_rules_only_and_never_where_http_rules_govern() {
        let s = set();
        let cases = [
            // protocol: any allows both.
            (
                "10.53.0.53:53",
                UdpVerdict::Allow,
                Some(ConnectVerdict::Allow),
            ),
            (
                "[fd53::53]:53",
                UdpVerdict::Allow,
                Some(ConnectVerdict::Allow),
            ),
            // TCP-only rules (the default) allow no UDP.
            ("10.9.9.9:80", UdpVerdict::Deny, Some(ConnectVerdict::Allow)),
            (
                "192.168.1.1:1",
                UdpVerdict::Deny,
                Some(ConnectVerdict::Allow),
            ),
            // protocol: udp allows no TCP.
            ("10.1.7.7:9999", UdpVerdict::Allow, None),
            ("172.16.1.1:5000", UdpVerdict::Allow, None),
            ("172.16.1.1:5001", UdpVerdict::Deny, None),
            // 10.1/16 allows UDP on every port, but http rules govern
            // 10.1/16 ports 80 and 443: QUIC there is refused.
            (
                "10.1.9.9:443",
                UdpVerdict::Quic,
                Some(ConnectVerdict::Redirect),
            ),
            (
                "10.1.2.3:80",
                UdpVerdict::Quic,
                Some(ConnectVerdict::Redirect),
            ),
            ("10.1.9.9:444", UdpVerdict::Allow, None),
            ("11.0.0.1:53", UdpVerdict::Deny, None),
        ];
        for (d, udp, tcp) in cases {
            let dst: SocketAddr = d.parse().unwrap();
            assert_eq!(s.udp_verdict(0, dst), udp, "UDP {d}");
            assert_eq!(reference(&s, dst), tcp, "TCP {d}");
        }
    }

    #[test]
    fn connection_limits_share_what_explicit_ones_leave() {
        use LimitError::*;
        type Case = (&'static [Option<u32>], u32, Result<Vec<u32>, LimitError>);
        let cases: &[Case] = &[
            (&[], 100, Ok(vec![])),
            (&[None], 100, Ok(vec![100])),
            (&[None, None, None], 100, Ok(vec![33, 33, 33])),
            (&[Some(10), None, None], 100, Ok(vec![10, 45, 45])),
            (&[Some(60), Some(40)], 100, Ok(vec![60, 40])),
            (&[Some(1), Some(2)], 100, Ok(vec![1, 2])),
            (
                &[Some(60), Some(30), Some(20), Some(1)],
                100,
                Err(OverCapacity {
                    policy: 2,
                    total: 110,
                    capacity: 100,
                }),
            ),
            (
                &[Some(99), None, None],
                100,
                Err(NoShareLeft {
                    policy: 1,
                    left: 1,
                    sharing: 2,
                    capacity: 100,
                }),
            ),
            (
                &[None, Some(100)],
                100,
                Err(NoShareLeft {
                    policy: 0,
                    left: 0,
                    sharing: 1,
                    capacity: 100,
                }),
            ),
            (
                &[Some(u32::MAX), Some(u32::MAX)],
                u32::MAX,
                Err(OverCapacity {
                    policy: 1,
                    total: 2 * u64::from(u32::MAX),
                    capacity: u32::MAX,
                }),
            ),
        ];
        for (requested, capacity, want) in cases {
            let got = connection_limits(requested, *capacity);
            assert_eq!(&got, want, "{requested:?} of {capacity}");
            if let Ok(limits) = got {
                assert!(limits.iter().map(|l| u64::from(*l)).sum::<u64>() <= u64::from(*capacity));
            }
        }
    }

    #[test]
    fn prefix_overflow_points_at_the_first_entry_past_the_capacity() {
        let config = r#"
proxy: { listen: "10.77.0.1:15001" }
policies:
  - name: a
    cgroup: /t/a
    egress:
      - to: ["10.0.0.0/8", "10.0.0.0/8", "fd00::/8"]
        ports: [80, 443]
      - to: ["10.0.0.0/8"]
        ports: [443, 80]
        http: [{ method: GET }]
      - to: ["192.168.0.0/16", "::ffff:192.168.0.0/112"]
        protocol: any
  - name: b
    cgroup: /t/b
    egress:
      - to: ["10.0.0.0/8"]
        ports: [80]
"#;
        let policies = PolicySet::compile(&Config::parse(config, Path::new("t.yaml")).unwrap());
        let at = |policy, rule, to| Some(PrefixOrigin { policy, rule, to });
        // Entry n + 1 in configuration order, for capacity n. Repeats (the
        // same prefix again, the second rule's prefixes, an IPv4-mapped
        // IPv6 form of an IPv4 prefix) are no new entries; each port and
        // transport of a rule is; so is each policy.
        let cases = [
            (0, at(0, 0, 0)), // TCP port 80, 10/8
            (1, at(0, 0, 2)), // TCP port 80, fd00::/8
            (2, at(0, 0, 0)), // TCP port 443, 10/8
            (3, at(0, 0, 2)), // TCP port 443, fd00::/8
            (4, at(0, 2, 0)), // TCP any port, 192.168/16
            (5, at(0, 2, 0)), // UDP any port, 192.168/16
            (6, at(1, 0, 0)), // policy b
            (7, None),
            (65536, None),
        ];
        for (capacity, want) in cases {
            assert_eq!(
                prefix_overflow(&policies, capacity),
                want,
                "capacity {capacity}"
            );
        }
        // The count is what rule_entries writes.
        let written = rule_entries(&policies).len();
        assert_eq!(written, 7);
        for capacity in 0..10 {
            assert_eq!(
                prefix_overflow(&policies, capacity).is_none(),
                written <= capacity,
                "capacity {capacity}"
            );
        }
        let written = rule_entries(&set()).len();
        assert_eq!(prefix_overflow(&set(), written), None);
        assert!(prefix_overflow(&set(), written - 1).is_some());
    }

    #[test]
    fn more_specific_allow_inherits_a_containing_redirect() {
        let entries = rule_entries(&set());
        let e = entries
            .iter()
            .find(|e| e.port == 80 && e.prefix_len == 128)
            .expect("10.1.2.3/32 entry");
        assert_eq!(e.verdict, ConnectVerdict::Redirect);
        assert_eq!(&e.addr[10..], &[0xff, 0xff, 10, 1, 2, 3]);
    }
}
