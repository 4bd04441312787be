//! `sockwarden status`, and the CAP_NET_RAW watch of `sockwarden run`.
//!
//! AF_PACKET sockets bypass every cgroup inet hook. Where the BPF LSM is
//! active sockwarden refuses them from policy cgroups; elsewhere a process
//! in a policy cgroup that holds CAP_NET_RAW (or can gain it) can leave
//! unenforced, and both `status` and `run` say so, naming the process.
//!
//! What to warn about and how the report reads are pure functions of what
//! [`gather`] and [`caps::scan`] found.

pub mod running;

use std::collections::HashSet;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::caps::{self, Scan};
use crate::config::{CgroupPath, Config};
use crate::policy::PolicySet;

/// How often `run` counts the processes that hold or can gain CAP_NET_RAW.
pub const NET_RAW_INTERVAL: Duration = Duration::from_secs(10);

/// Why AF_PACKET sockets cannot be refused here, as the clause of the
/// warnings; None when they can: the BPF LSM is known to be active
/// (`lsm`, [`crate::features::bpf_lsm_listed`]) and the kernel is known to
/// load BPF LSM programs (`program`, [`crate::features::lsm_program_type`]).
/// An active LSM that cannot load programs refuses nothing.
pub fn why_packet_open(
    lsm: &Result<bool, String>,
    program: &Result<bool, String>,
) -> Option<String> {
    match (lsm, program) {
        (Ok(false), _) => Some("the BPF LSM is not active".into()),
        (Err(e), _) => Some(format!("the BPF LSM is not known to be active ({e})")),
        (Ok(true), Ok(true)) => None,
        (Ok(true), Ok(false)) => {
            Some("the BPF LSM is active but this kernel does not load BPF LSM programs".into())
        }
        (Ok(true), Err(e)) => Some(format!(
            "the BPF LSM is active but loading a BPF LSM program failed ({e})"
        )),
    }
}

/// What a policy cgroup looked like.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CgroupState {
    /// No such directory (yet): nothing in it to enforce.
    Missing,
    Scanned(Scan),
    /// The cgroup2 mount was not found, or the walk failed.
    Unreadable(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyStatus {
    pub name: String,
    pub cgroup: String,
    pub state: CgroupState,
}

/// Everything `status` reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    pub config: PathBuf,
    pub pin_path: PathBuf,
    /// Names of the links pinned under `<pin_path>/links` (empty: none).
    pub links: Result<Vec<String>, String>,
    pub cgroup_root: Result<PathBuf, String>,
    /// [`crate::features::bpf_lsm_listed`].
    pub lsm: Result<bool, String>,
    /// [`crate::features::lsm_program_type`].
    pub lsm_program: Result<bool, String>,
    pub policies: Vec<PolicyStatus>,
}

/// The cgroups of other policies strictly below `policies[i]`'s: their
/// processes belong to those (the deepest policy cgroup decides).
pub fn nested(policies: &[CgroupPath], i: usize) -> Vec<&CgroupPath> {
    let own = &policies[i];
    policies
        .iter()
        .filter(|c| c.as_str() != own.as_str() && own.contains(c.as_str()))
        .collect()
}

/// Scans policy `i`'s cgroup under the cgroup2 mount `root`.
fn scan_policy(root: &Path, cgroups: &[CgroupPath], i: usize) -> CgroupState {
    let dir = cgroups[i].under(root);
    if !dir.is_dir() {
        return CgroupState::Missing;
    }
    let skip: Vec<PathBuf> = nested(cgroups, i)
        .into_iter()
        .map(|c| c.under(root))
        .collect();
    match caps::scan(&dir, &skip) {
        Ok(s) => CgroupState::Scanned(s),
        Err(e) => CgroupState::Unreadable(e.to_string()),
    }
}

/// Names in the pinned links directory; none when it does not exist.
fn pinned_links(pin_path: &Path) -> Result<Vec<String>, String> {
    let dir = crate::bpf::pins::links_dir(pin_path);
    let entries = match std::fs::read_dir(&dir) {
        Ok(es) => es,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(format!("reading {}: {e}", dir.display())),
    };
    let mut names: Vec<String> = entries
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    Ok(names)
}

/// Reads the pins, the features the doors depend on and every policy
/// cgroup (the edge of `status`).
pub fn gather(config_path: &Path, config: &Config) -> Status {
    let cgroup_root =
        crate::cgroup::cgroup2_root(config.bpf.cgroup_root.as_deref()).map_err(|e| e.to_string());
    let cgroups: Vec<CgroupPath> = config.policies.iter().map(|p| p.cgroup.clone()).collect();
    let policies = config
        .policies
        .iter()
        .enumerate()
        .map(|(i, p)| PolicyStatus {
            name: p.name.value.clone(),
            cgroup: p.cgroup.to_string(),
            state: match &cgroup_root {
                Ok(root) => scan_policy(root, &cgroups, i),
                Err(e) => CgroupState::Unreadable(e.clone()),
            },
        })
        .collect();
    Status {
        config: config_path.to_path_buf(),
        pin_path: config.bpf.pin_path.clone(),
        links: pinned_links(&config.bpf.pin_path),
        cgroup_root,
        lsm: crate::features::bpf_lsm_listed(),
        lsm_program: crate::features::lsm_program_type(),
        policies,
    }
}

/// The warning about one process, without the `warning: ` prefix;
/// `open` is [`why_packet_open`]'s clause.
pub fn net_raw_warning(
    policy: &str,
    process: &caps::Process,
    why: caps::Why,
    open: &str,
) -> String {
    format!(
        "policy {policy}: pid {} ({}) {} and {open}: it can open AF_PACKET sockets, which bypass every cgroup hook",
        process.pid,
        process.comm,
        why.phrase()
    )
}

/// The processes of a scan to warn about: every one that holds or can gain
/// CAP_NET_RAW, unless AF_PACKET sockets are refused (`open` is None).
pub fn net_raw_warnings(policy: &str, scan: &Scan, open: Option<&str>) -> Vec<String> {
    let Some(open) = open else {
        return Vec::new();
    };
    scan.net_raw()
        .map(|(p, why)| net_raw_warning(policy, p, why, open))
        .collect()
}

/// Every warning of a status, in policy order, without the prefix.
pub fn warnings(status: &Status) -> Vec<String> {
    let open = why_packet_open(&status.lsm, &status.lsm_program);
    let mut out = Vec::new();
    for p in &status.policies {
        match &p.state {
            CgroupState::Missing => {
                out.push(crate::cgroup::missing_cgroup_warning(&p.name, &p.cgroup));
            }
            CgroupState::Unreadable(e) => out.push(format!(
                "policy {}: cgroup {} was not checked for CAP_NET_RAW: {e}",
                p.name, p.cgroup
            )),
            CgroupState::Scanned(scan) => {
                out.extend(net_raw_warnings(&p.name, scan, open.as_deref()));
                if scan.truncated {
                    out.push(format!(
                        "policy {}: cgroup {} has more than {} cgroups or {} levels below it: processes past them were not checked",
                        p.name,
                        p.cgroup,
                        caps::MAX_CGROUPS,
                        caps::MAX_DEPTH
                    ));
                }
            }
        }
    }
    out
}

fn yes_no(r: &Result<bool, String>) -> String {
    match r {
        Ok(true) => "yes".into(),
        Ok(false) => "no".into(),
        Err(e) => format!("unknown ({e})"),
    }
}

fn plural(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// The report `sockwarden status` prints.
pub fn report(s: &Status) -> String {
    let mut out = format!(
        "config {}: {}, pins under {}\n",
        s.config.display(),
        plural(s.policies.len(), "policy", "policies"),
        s.pin_path.display()
    );
    let links_dir = crate::bpf::pins::links_dir(&s.pin_path);
    let _ = match &s.links {
        Ok(names) if names.is_empty() => writeln!(
            out,
            "links: none pinned under {} (sockwarden is not running with this pin path)",
            links_dir.display()
        ),
        Ok(names) => writeln!(
            out,
            "links: {} pinned under {}: {}",
            names.len(),
            links_dir.display(),
            names.join(", ")
        ),
        Err(e) => writeln!(out, "links: unknown ({e})"),
    };
    let _ = match &s.lsm {
        Ok(true) => writeln!(out, "BPF LSM: active (bpf is in /sys/kernel/security/lsm)"),
        Ok(false) => writeln!(
            out,
            "BPF LSM: not active (bpf is not in /sys/kernel/security/lsm)"
        ),
        Err(e) => writeln!(out, "BPF LSM: unknown ({e})"),
    };
    let _ = writeln!(
        out,
        "BPF LSM programs (lsm/socket_create) load: {}",
        yes_no(&s.lsm_program)
    );
    let _ = match why_packet_open(&s.lsm, &s.lsm_program) {
        None => writeln!(
            out,
            "AF_PACKET sockets from policy cgroups: refused by the BPF LSM while sockwarden runs"
        ),
        Some(why) => writeln!(
            out,
            "AF_PACKET sockets from policy cgroups: not refused: {why}; enforced workloads must not hold CAP_NET_RAW"
        ),
    };
    let _ = match &s.cgroup_root {
        Ok(root) => writeln!(out, "cgroup2: {}", root.display()),
        Err(e) => writeln!(out, "cgroup2: not found ({e})"),
    };
    for p in &s.policies {
        let _ = match &p.state {
            CgroupState::Missing => writeln!(
                out,
                "policy {}: cgroup {}: does not exist",
                p.name, p.cgroup
            ),
            CgroupState::Unreadable(e) => writeln!(
                out,
                "policy {}: cgroup {}: unreadable ({e})",
                p.name, p.cgroup
            ),
            CgroupState::Scanned(scan) => {
                let raw = scan.net_raw().count();
                writeln!(
                    out,
                    "policy {}: cgroup {}: {}, {} or can gain CAP_NET_RAW",
                    p.name,
                    p.cgroup,
                    plural(scan.processes.len(), "process", "processes"),
                    plural(raw, "holds", "hold"),
                )
            }
        };
    }
    for w in warnings(s) {
        let _ = writeln!(out, "warning: {w}");
    }
    out
}

/// (policy index, pid, why): one warned process.
type Warned = (usize, u32, caps::Why);

/// The warnings of `now` not given for the same process (and reason) in
/// the round before.
pub fn newly_warned<'a>(before: &HashSet<Warned>, now: &'a [(Warned, String)]) -> Vec<&'a str> {
    now.iter()
        .filter(|(key, _)| !before.contains(key))
        .map(|(_, text)| text.as_str())
        .collect()
}

/// [`why_packet_open`] on this kernel, probed now (the program probe parses
/// the kernel's BTF: a blocking call).
pub fn packet_door() -> Option<String> {
    why_packet_open(
        &crate::features::bpf_lsm_listed(),
        &crate::features::lsm_program_type(),
    )
}

/// `run`'s watch, given [`packet_door`]'s answer (`open`, the one that
/// decided whether the LSM program was loaded): the BPF LSM gauge once (the
/// LSM list is fixed at boot),
/// then, unless AF_PACKET can be refused, every [`NET_RAW_INTERVAL`] each
/// policy's count of processes that hold or can gain CAP_NET_RAW, with a
/// warning the first time each is seen.
pub async fn watch_net_raw(policies: Arc<PolicySet>, root: PathBuf, open: Option<String>) {
    crate::metrics::bpf_lsm_active(open.is_none());
    for p in &policies.policies {
        crate::metrics::net_raw_processes(&p.name, 0);
    }
    let Some(open) = open else {
        tracing::info!("BPF LSM active: AF_PACKET sockets from policy cgroups can be refused");
        return;
    };
    tracing::warn!(
        "AF_PACKET sockets from policy cgroups are not refused: {open}; enforced workloads must not hold CAP_NET_RAW"
    );
    let cgroups: Arc<Vec<CgroupPath>> =
        Arc::new(policies.policies.iter().map(|p| p.cgroup.clone()).collect());
    let mut warned = HashSet::new();
    let mut tick = tokio::time::interval(NET_RAW_INTERVAL);
    loop {
        tick.tick().await;
        let (root, cgroups) = (root.clone(), Arc::clone(&cgroups));
        let Ok(scans) = tokio::task::spawn_blocking(move || {
            (0..cgroups.len())
                .map(|i| scan_policy(&root, &cgroups, i))
                .collect::<Vec<_>>()
        })
        .await
        else {
            tracing::warn!("the CAP_NET_RAW scan stopped");
            continue;
        };
        let mut now = Vec::new();
        for (i, (p, state)) in policies.policies.iter().zip(&scans).enumerate() {
            match state {
                CgroupState::Missing => crate::metrics::net_raw_processes(&p.name, 0),
                CgroupState::Unreadable(e) => {
                    tracing::warn!(policy = %p.name, error = %e, "checking processes for CAP_NET_RAW");
                }
                CgroupState::Scanned(scan) => {
                    crate::metrics::net_raw_processes(&p.name, scan.net_raw().count());
                    now.extend(scan.net_raw().map(|(process, why)| {
                        (
                            (i, process.pid, why),
                            net_raw_warning(&p.name, process, why, &open),
                        )
                    }));
                }
            }
        }
        for text in newly_warned(&warned, &now) {
            tracing::warn!("{text}");
        }
        warned = now.into_iter().map(|(key, _)| key).collect();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::caps::{Process, Why};

    fn process(pid: u32, comm: &str, net_raw: Option<Why>) -> Process {
        Process {
            pid,
            comm: comm.into(),
            net_raw,
        }
    }

    fn scan(processes: Vec<Process>) -> Scan {
        Scan {
            processes,
            truncated: false,
        }
    }

    fn status(lsm: Result<bool, String>, policies: Vec<PolicyStatus>) -> Status {
        Status {
            config: "/etc/sockwarden/config.yaml".into(),
            pin_path: "/sys/fs/bpf/sockwarden".into(),
            links: Ok(vec!["sw_connect4".into(), "sw_connect6".into()]),
            cgroup_root: Ok("/sys/fs/cgroup/unified".into()),
            lsm,
            lsm_program: Ok(true),
            policies,
        }
    }

    fn pods(state: CgroupState) -> PolicyStatus {
        PolicyStatus {
            name: "pods".into(),
            cgroup: "/kubepods/pods".into(),
            state,
        }
    }

    #[test]
    fn when_af_packet_is_open() {
        let yes = || Ok(true);
        let no = || Ok(false);
        let err = |e: &str| Err(e.to_string());
        type Probe = Result<bool, String>;
        let table: &[(Probe, Probe, Option<&str>)] = &[
            (yes(), yes(), None),
            (no(), yes(), Some("the BPF LSM is not active")),
            (no(), err("EPERM"), Some("the BPF LSM is not active")),
            (
                err("mounting securityfs on /sys/kernel/security: EPERM"),
                yes(),
                Some("the BPF LSM is not known to be active (mounting securityfs on /sys/kernel/security: EPERM)"),
            ),
            (
                yes(),
                no(),
                Some("the BPF LSM is active but this kernel does not load BPF LSM programs"),
            ),
            (
                yes(),
                err("Operation not permitted (os error 1)"),
                Some("the BPF LSM is active but loading a BPF LSM program failed (Operation not permitted (os error 1))"),
            ),
        ];
        for (lsm, program, want) in table {
            assert_eq!(
                why_packet_open(lsm, program).as_deref(),
                *want,
                "{lsm:?} {program:?}"
            );
        }
    }

    #[test]
    fn who_is_warned_about() {
        let s = scan(vec![
            process(1234, "sleep", Some(Why::Holds)),
            process(1235, "sh", Some(Why::CanGain)),
            process(1236, "app", None),
        ]);
        assert!(net_raw_warnings("pods", &s, None).is_empty());
        let w = net_raw_warnings("pods", &s, Some("the BPF LSM is not active"));
        assert_eq!(
            w,
            [
                "policy pods: pid 1234 (sleep) holds CAP_NET_RAW and the BPF LSM is not active: \
                 it can open AF_PACKET sockets, which bypass every cgroup hook",
                "policy pods: pid 1235 (sh) can gain CAP_NET_RAW (no_new_privs is off: a program \
                 with that file capability or set-user-ID root grants it) and the BPF LSM is not \
                 active: it can open AF_PACKET sockets, which bypass every cgroup hook"
            ]
        );
    }

    #[test]
    fn report_lists_pins_features_policies_then_warnings() {
        let s = status(
            Ok(false),
            vec![
                pods(CgroupState::Scanned(scan(vec![
                    process(1234, "sleep", Some(Why::Holds)),
                    process(1236, "app", None),
                ]))),
                PolicyStatus {
                    name: "later".into(),
                    cgroup: "/system.slice/later.service".into(),
                    state: CgroupState::Missing,
                },
            ],
        );
        assert_eq!(
            report(&s),
            "config /etc/sockwarden/config.yaml: 2 policies, pins under /sys/fs/bpf/sockwarden\n\
             links: 2 pinned under /sys/fs/bpf/sockwarden/links: sw_connect4, sw_connect6\n\
             BPF LSM: not active (bpf is not in /sys/kernel/security/lsm)\n\
             BPF LSM programs (lsm/socket_create) load: yes\n\
             AF_PACKET sockets from policy cgroups: not refused: the BPF LSM is not active; \
             enforced workloads must not hold CAP_NET_RAW\n\
             cgroup2: /sys/fs/cgroup/unified\n\
             policy pods: cgroup /kubepods/pods: 2 processes, 1 holds or can gain CAP_NET_RAW\n\
             policy later: cgroup /system.slice/later.service: does not exist\n\
             warning: policy pods: pid 1234 (sleep) holds CAP_NET_RAW and the BPF LSM is not \
             active: it can open AF_PACKET sockets, which bypass every cgroup hook\n\
             warning: policy later: cgroup /system.slice/later.service does not exist: nothing \
             is enforced for this policy until it is created (a typo in the path?)\n"
        );
    }

    /// Asserts that `report` has every fragment and, unless `warns`, no
    /// warning.
    fn assert_report(report: &str, fragments: &[&str], warns: bool) {
        for f in fragments {
            assert!(report.contains(f), "{f:?} not in:\n{report}");
        }
        assert_eq!(report.contains("warning:"), warns, "{report}");
    }

    #[test]
    fn report_variants() {
        let one = pods(CgroupState::Scanned(scan(vec![process(
            7,
            "sleep",
            Some(Why::Holds),
        )])));
        let mut s = status(Ok(true), vec![one]);
        s.links = Ok(Vec::new());
        assert_report(
            &report(&s),
            &[
                "config /etc/sockwarden/config.yaml: 1 policy,",
                "links: none pinned under /sys/fs/bpf/sockwarden/links",
                "BPF LSM: active (bpf is in /sys/kernel/security/lsm)\n",
                "AF_PACKET sockets from policy cgroups: refused by the BPF LSM while sockwarden runs\n",
                ": 1 process, 1 holds or can gain CAP_NET_RAW\n",
            ],
            false,
        );

        s.lsm_program = Err("EPERM: Operation not permitted".into());
        assert_report(
            &report(&s),
            &[
                "BPF LSM programs (lsm/socket_create) load: unknown (EPERM: Operation not permitted)\n",
                "warning: policy pods: pid 7 (sleep) holds CAP_NET_RAW and the BPF LSM is active but loading a BPF LSM program failed",
            ],
            true,
        );

        s.lsm = Err("reading /sys/kernel/security/lsm: EIO".into());
        s.cgroup_root = Err("no cgroup2 filesystem is mounted".into());
        s.policies[0].state = CgroupState::Unreadable("no cgroup2 filesystem is mounted".into());
        assert_report(
            &report(&s),
            &[
                "BPF LSM: unknown (reading /sys/kernel/security/lsm: EIO)\n",
                "cgroup2: not found (no cgroup2 filesystem is mounted)\n",
                "policy pods: cgroup /kubepods/pods: unreadable (",
                "warning: policy pods: cgroup /kubepods/pods was not checked for CAP_NET_RAW: no cgroup2",
            ],
            true,
        );

        s.policies[0].state = CgroupState::Scanned(Scan {
            processes: Vec::new(),
            truncated: true,
        });
        let w = warnings(&s);
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(
            w[0].contains("more than 10000 cgroups or 32 levels"),
            "{w:?}"
        );
    }

    #[test]
    fn nested_policy_cgroups_are_left_to_their_policy() {
        let c = |s: &str| CgroupPath::parse(s).unwrap();
        let cgroups = vec![
            c("/pods"),
            c("/pods/db"),
            c("/podsx"),
            c("/other"),
            c("/pods"),
        ];
        let names = |i| -> Vec<&str> { nested(&cgroups, i).iter().map(|c| c.as_str()).collect() };
        assert_eq!(names(0), ["/pods/db"]);
        assert!(names(1).is_empty());
        assert!(names(2).is_empty());
        assert!(names(3).is_empty());
    }

    #[test]
    fn each_process_is_warned_about_once() {
        let w = |key: Warned| (key, format!("{key:?}"));
        let table: &[(&[Warned], &[Warned], &[Warned])] = &[
            (&[], &[(0, 10, Why::Holds)], &[(0, 10, Why::Holds)]),
            (&[(0, 10, Why::Holds)], &[(0, 10, Why::Holds)], &[]),
            (
                &[(0, 10, Why::CanGain)],
                &[(0, 10, Why::Holds), (1, 11, Why::CanGain)],
                &[(0, 10, Why::Holds), (1, 11, Why::CanGain)],
            ),
            (
                &[(0, 10, Why::Holds)],
                &[(1, 10, Why::Holds)],
                &[(1, 10, Why::Holds)],
            ),
            (&[(0, 10, Why::Holds)], &[], &[]),
        ];
        for (before, now, want) in table {
            let before: HashSet<Warned> = before.iter().copied().collect();
            let now: Vec<_> = now.iter().copied().map(w).collect();
            let want: Vec<String> = want.iter().map(|k| format!("{k:?}")).collect();
            assert_eq!(newly_warned(&before, &now), want, "{before:?} -> {now:?}");
        }
    }
}
