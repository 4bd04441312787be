//! The connect()-time view of a [`PolicySet`]: entries for the kernel's
//! longest-prefix-match map, computed as a pure function.
//!
//! The kernel looks up (policy, port, address) and (policy, any-port,
//! address) and takes the stronger verdict. A longest-prefix lookup returns
//! only the most specific entry, so each entry's verdict already includes
//! every less specific entry of the same (policy, port) that contains it.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;

use super::{PolicyId, PolicySet};

/// Connect-time verdict; order matters (stronger is greater).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum ConnectVerdict {
    Allow,
    Redirect,
}

/// One entry of the kernel's policy_rules map.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RuleEntry {
    pub policy_id: PolicyId,
    /// 0 = every port.
    pub port: u16,
    /// Address in the 16-byte form (IPv4-mapped for IPv4).
    pub addr: [u8; 16],
    /// Prefix length over `addr` (IPv4 prefixes + 96).
    pub prefix_len: u8,
    pub verdict: ConnectVerdict,
}

/// 16-byte form of an address: IPv4 becomes ::ffff:a.b.c.d.
pub fn addr16(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    }
}

/// An address prefix in the 16-byte form: (address, prefix length).
type Prefix = ([u8; 16], u8);

fn prefix16(net: &IpNet) -> Prefix {
    match net {
        IpNet::V4(n) => (addr16(IpAddr::V4(n.network())), n.prefix_len() + 96),
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
        u128::MAX << (128 - u32::from(outer.1))
    };
    a & mask == b & mask
}

/// All entries for the kernel map, merged as described in the module docs.
pub fn rule_entries(set: &PolicySet) -> Vec<RuleEntry> {
    // (policy, port) -> prefix -> strongest verdict of the rules naming it.
    let mut groups: BTreeMap<(PolicyId, u16), BTreeMap<Prefix, ConnectVerdict>> = BTreeMap::new();
    for (id, policy) in set.policies.iter().enumerate() {
        let id = id as PolicyId;
        for rule in &policy.rules {
            let verdict = if rule.http.is_some() {
                ConnectVerdict::Redirect
            } else {
                ConnectVerdict::Allow
            };
            let ports: Vec<u16> = if rule.ports.is_empty() {
                vec![0]
            } else {
                rule.ports.clone()
            };
            for port in ports {
                let group = groups.entry((id, port)).or_default();
                for net in &rule.nets {
                    let v = group.entry(prefix16(net)).or_insert(verdict);
                    *v = (*v).max(verdict);
                }
            }
        }
    }
    let mut out = Vec::new();
    for ((policy_id, port), prefixes) in &groups {
        for (prefix, verdict) in prefixes {
            let merged = prefixes
                .iter()
                .filter(|(outer, _)| contains(outer, prefix))
                .map(|(_, v)| *v)
                .max()
                .unwrap_or(*verdict);
            out.push(RuleEntry {
                policy_id: *policy_id,
                port: *port,
                addr: prefix.0,
                prefix_len: prefix.1,
                verdict: merged,
            });
        }
    }
    out
}

/// What the kernel computes for a connect(), from `entries` alone: used to
/// check that the merged entries agree with the rules they came from.
pub fn kernel_verdict(
    entries: &[RuleEntry],
    policy_id: PolicyId,
    ip: IpAddr,
    port: u16,
) -> Option<ConnectVerdict> {
    let target: Prefix = (addr16(ip), 128);
    let lpm = |p: u16| {
        entries
            .iter()
            .filter(|e| e.policy_id == policy_id && e.port == p)
            .filter(|e| contains(&(e.addr, e.prefix_len), &target))
            .max_by_key(|e| e.prefix_len)
            .map(|e| e.verdict)
    };
    lpm(port).max(lpm(0))
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
                if r.http.is_some() {
                    ConnectVerdict::Redirect
                } else {
                    ConnectVerdict::Allow
                }
            })
            .max()
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
        ];
        for d in dsts {
            let dst: SocketAddr = d.parse().unwrap();
            assert_eq!(
                kernel_verdict(&entries, 0, dst.ip(), dst.port()),
                reference(&s, dst),
                "{d}"
            );
        }
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
