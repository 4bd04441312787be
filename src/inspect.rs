//! `sockwarden rules`: the kernel's rule table (the pinned policy_rules map
//! of a running instance) in the configuration's own terms. The table is a
//! pure function of the decoded entries and the policies' names.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use crate::config::Config;
use crate::policy::kernel::{ConnectVerdict, RuleEntry, Transport};
use crate::policy::PolicySet;

/// A policy as the table names it: by the configuration's name when there
/// is one for its id, else by id.
fn policy_name(names: &[String], id: u32) -> String {
    names
        .get(id as usize)
        .cloned()
        .unwrap_or_else(|| format!("#{id}"))
}

/// The table `sockwarden rules` prints: one line per kernel entry, sorted
/// by policy, protocol, port and destination, then per policy the line for
/// everything no entry covers (denied with EPERM), and a count.
/// `names[id]` is policy `id`'s name.
pub fn rules_table(mut entries: Vec<RuleEntry>, names: &[String]) -> String {
    entries.sort_by_key(|e| {
        (
            e.policy_id,
            e.transport,
            e.port,
            e.prefix_len,
            e.addr,
            e.verdict,
        )
    });
    let mut policies: Vec<u32> = entries.iter().map(|e| e.policy_id).collect();
    policies.extend(0..names.len() as u32);
    policies.sort_unstable();
    policies.dedup();
    let mut out = format!(
        "{:<20} {:<5} {:<44} {:<5} {}\n",
        "POLICY", "PROTO", "DESTINATION", "PORT", "VERDICT"
    );
    for id in policies {
        let name = policy_name(names, id);
        for e in entries.iter().filter(|e| e.policy_id == id) {
            let proto = match e.transport {
                Transport::Tcp => "tcp",
                Transport::Udp => "udp",
            };
            let port = match e.port {
                0 => "any".to_string(),
                p => p.to_string(),
            };
            let verdict = match e.verdict {
                ConnectVerdict::Allow => "allow",
                ConnectVerdict::Redirect => "redirect to proxy",
            };
            let _ = writeln!(
                out,
                "{:<20} {:<5} {:<44} {:<5} {verdict}",
                name,
                proto,
                e.destination().to_string(),
                port
            );
        }
        let _ = writeln!(
            out,
            "{:<20} {:<5} {:<44} {:<5} deny (EPERM)",
            name, "any", "anything else", "any"
        );
    }
    let _ = writeln!(out, "{} kernel entries", entries.len());
    out
}

/// `sockwarden rules [--config FILE | --pin-path DIR]`: with a
/// configuration, names come from the running instance (its policy ids,
/// which reloads keep by name), or from the configuration's order when it
/// does not answer; with only a pin path the policies are shown by id.
pub fn command(config: Option<PathBuf>, pin_path: Option<PathBuf>) -> ExitCode {
    let (pin_path, names) = match (config, pin_path) {
        (Some(c), _) => match Config::load(&c) {
            Ok(c) => {
                let running = crate::status::running::fetch(c.admin.listen)
                    .ok()
                    .and_then(|r| crate::reload::names_by_id(&r.config));
                let names = running.unwrap_or_else(|| {
                    PolicySet::compile(&c)
                        .policies
                        .into_iter()
                        .map(|p| p.name)
                        .collect()
                });
                (c.bpf.pin_path, names)
            }
            Err(e) => {
                eprintln!("{e}");
                return ExitCode::FAILURE;
            }
        },
        (None, Some(p)) => (p, Vec::new()),
        (None, None) => (PathBuf::from(crate::config::DEFAULT_PIN_PATH), Vec::new()),
    };
    crate::cli::show_pinned(Path::new(&pin_path), |maps| {
        rules_table(maps.rules(), &names)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bpf::abi::addr16;

    fn entry(
        policy_id: u32,
        transport: Transport,
        port: u16,
        net: &str,
        verdict: ConnectVerdict,
    ) -> RuleEntry {
        let net: ipnet::IpNet = net.parse().unwrap();
        let (addr, prefix_len) = match net {
            ipnet::IpNet::V4(n) => (addr16(n.network().into()), 96 + n.prefix_len()),
            ipnet::IpNet::V6(n) => (addr16(n.network().into()), n.prefix_len()),
        };
        RuleEntry {
            policy_id,
            transport,
            port,
            addr,
            prefix_len,
            verdict,
        }
    }

    #[test]
    fn the_table_speaks_the_configurations_terms() {
        use ConnectVerdict::*;
        use Transport::*;
        let entries = vec![
            entry(1, Udp, 53, "10.96.0.10/32", Allow),
            entry(0, Tcp, 80, "10.77.1.0/24", Redirect),
            entry(0, Tcp, 0, "fd77:1::/64", Allow),
            entry(0, Tcp, 80, "0.0.0.0/0", Allow),
        ];
        let names = vec!["pods".to_string(), "dns".to_string(), "empty".to_string()];
        let want = "\
POLICY               PROTO DESTINATION                                  PORT  VERDICT
pods                 tcp   fd77:1::/64                                  any   allow
pods                 tcp   0.0.0.0/0                                    80    allow
pods                 tcp   10.77.1.0/24                                 80    redirect to proxy
pods                 any   anything else                                any   deny (EPERM)
dns                  udp   10.96.0.10/32                                53    allow
dns                  any   anything else                                any   deny (EPERM)
empty                any   anything else                                any   deny (EPERM)
4 kernel entries
";
        assert_eq!(rules_table(entries.clone(), &names), want);
        // Without the configuration: policies by id, only those with entries.
        let by_id = rules_table(entries, &[]);
        assert!(
            by_id.contains("\n#1                   udp   10.96.0.10/32"),
            "{by_id}"
        );
        assert!(!by_id.contains("#2"), "{by_id}");
        assert_eq!(
            rules_table(Vec::new(), &[]),
            format!(
                "{:<20} {:<5} {:<44} {:<5} VERDICT\n0 kernel entries\n",
                "POLICY", "PROTO", "DESTINATION", "PORT"
            )
        );
    }
}
