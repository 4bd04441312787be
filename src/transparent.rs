//! The return path for the preserve source modes, without iptables or
//! nftables.
//!
//! Upstream sockets that leave from a workload's address (IP_TRANSPARENT)
//! need that address's return traffic delivered to them instead of being
//! forwarded to the workload. The tc ingress program (bpf/tc.bpf.c) marks
//! packets that a local non-listening socket owns, and two routing entries
//! per family deliver marked packets locally:
//!
//! ```text
//! ip rule add fwmark MARK/MARK lookup TABLE
//! ip route replace local default dev lo table TABLE
//! ```
//!
//! Everything is removed on shutdown, and leftovers of a killed run are
//! removed before setting up again.

use std::process::Command;

use libbpf_rs::{TcHook, TcHookBuilder, TC_INGRESS};

use crate::bpf::skel::with_tc_program;
use crate::config::TransparentConfig;

/// tc filter handle and priority of the return-path program.
const TC_HANDLE: u32 = 0x5357;
const TC_PRIORITY: u32 = 0x5357;
/// ARPHRD_ETHER: interfaces with an Ethernet header (veth, physical NICs).
const ARPHRD_ETHER: u16 = 1;

#[derive(Debug, thiserror::Error)]
pub enum TransparentError {
    #[error("preserve source modes need an interface to attach the return-path program to; found no Ethernet-like interface besides lo (set transparent.interfaces)")]
    NoInterfaces,
    #[error(
        "interface {0:?} (transparent.interfaces) does not exist in sockwarden's network namespace"
    )]
    UnknownInterface(String),
    #[error("listing interfaces: {0}")]
    Interfaces(nix::Error),
    #[error("attaching the return-path tc program to {iface}: {source}")]
    Attach {
        iface: String,
        source: libbpf_rs::Error,
    },
    #[error("loading the return-path tc program: {0}")]
    Load(#[from] crate::bpf::BpfError),
    #[error(
        "`ip {args}` failed: {detail} (preserve source modes need iproute2 and CAP_NET_ADMIN)"
    )]
    Ip { args: String, detail: String },
}

/// An interface the return-path program is attached to.
#[derive(Debug, Clone)]
struct Attached {
    name: String,
    hook: TcHook,
}

/// The installed return path; [`ReturnPath::remove`] undoes it.
#[derive(Debug)]
pub struct ReturnPath {
    attached: Vec<Attached>,
    mark: u32,
    table: u32,
}

fn ip(args: &[&str]) -> Result<(), TransparentError> {
    let fail = |detail: String| TransparentError::Ip {
        args: args.join(" "),
        detail,
    };
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| fail(e.to_string()))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(fail(
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        ))
    }
}

/// (name, ifindex) of the interfaces to attach to.
fn interfaces(wanted: &[String]) -> Result<Vec<(String, u32)>, TransparentError> {
    let mut found: Vec<(String, u32, bool)> = Vec::new();
    for ifa in nix::ifaddrs::getifaddrs().map_err(TransparentError::Interfaces)? {
        let Some(link) = ifa.address.as_ref().and_then(|a| a.as_link_addr()) else {
            continue;
        };
        if found.iter().any(|(n, _, _)| *n == ifa.interface_name) {
            continue;
        }
        let ether = link.hatype() == ARPHRD_ETHER;
        found.push((ifa.interface_name.clone(), link.ifindex() as u32, ether));
    }
    if wanted.is_empty() {
        let all: Vec<_> = found
            .into_iter()
            .filter(|(name, _, ether)| *ether && name != "lo")
            .map(|(n, i, _)| (n, i))
            .collect();
        return if all.is_empty() {
            Err(TransparentError::NoInterfaces)
        } else {
            Ok(all)
        };
    }
    wanted
        .iter()
        .map(|w| {
            found
                .iter()
                .find(|(n, _, _)| n == w)
                .map(|(n, i, _)| (n.clone(), *i))
                .ok_or_else(|| TransparentError::UnknownInterface(w.clone()))
        })
        .collect()
}

fn hook_for(ifindex: u32, prog_fd: std::os::fd::BorrowedFd<'_>) -> TcHook {
    TcHookBuilder::new(prog_fd)
        .ifindex(ifindex as i32)
        .replace(true)
        .handle(TC_HANDLE)
        .priority(TC_PRIORITY)
        .hook(TC_INGRESS)
}

impl ReturnPath {
    /// Removes what a killed run may have left, then installs the return path.
    pub fn install(cfg: &TransparentConfig) -> Result<ReturnPath, TransparentError> {
        let ifaces = interfaces(&cfg.interfaces)?;
        let mut path = ReturnPath {
            attached: Vec::new(),
            mark: cfg.mark,
            table: cfg.route_table,
        };
        path.remove_routing();
        if let Err(e) = path.install_inner(&ifaces) {
            path.remove();
            return Err(e);
        }
        Ok(path)
    }

    fn install_inner(&mut self, ifaces: &[(String, u32)]) -> Result<(), TransparentError> {
        let mark = format!("{:#x}/{:#x}", self.mark, self.mark);
        let table = self.table.to_string();
        for family in ["-4", "-6"] {
            ip(&[family, "rule", "add", "fwmark", &mark, "lookup", &table])?;
            let default = if family == "-4" { "0.0.0.0/0" } else { "::/0" };
            ip(&[
                family, "route", "replace", "local", default, "dev", "lo", "table", &table,
            ])?;
        }
        // Filters keep the program loaded once attached; the skeleton goes.
        // A fixed handle and priority with `replace` also replaces a filter
        // a killed run left behind.
        with_tc_program(self.mark, |prog| {
            for (name, ifindex) in ifaces {
                let mut hook = hook_for(*ifindex, prog);
                let hook = hook
                    .create()
                    .and_then(|mut h| h.attach())
                    .map_err(|source| TransparentError::Attach {
                        iface: name.clone(),
                        source,
                    })?;
                self.attached.push(Attached {
                    name: name.clone(),
                    hook,
                });
                tracing::info!(iface = %name, "return-path tc program attached");
            }
            Ok(())
        })
    }

    /// Deletes our rules (every copy) and flushes our table; errors mean
    /// "nothing there" and are ignored.
    fn remove_routing(&self) {
        let mark = format!("{:#x}/{:#x}", self.mark, self.mark);
        let table = self.table.to_string();
        for family in ["-4", "-6"] {
            // Bounded: a rule added many times by killed runs goes one per call.
            for _ in 0..16 {
                if ip(&[family, "rule", "del", "fwmark", &mark, "lookup", &table]).is_err() {
                    break;
                }
            }
            let _ = ip(&[family, "route", "flush", "table", &table]);
        }
    }

    /// Detaches the tc programs and removes the routing entries.
    pub fn remove(&mut self) {
        for a in self.attached.drain(..) {
            let mut hook = a.hook;
            if let Err(e) = hook.detach() {
                tracing::warn!(iface = %a.name, error = %e, "detaching the return-path tc program");
            }
        }
        self.remove_routing();
    }
}
