//! Which processes of a cgroup hold CAP_NET_RAW, or can gain it; and which
//! of the capabilities the eBPF side needs this process lacks.
//!
//! CAP_NET_RAW opens AF_PACKET sockets, which bypass every cgroup inet
//! hook: where the BPF LSM cannot refuse them, a process in a policy cgroup
//! that holds the capability (or can gain it) can leave unenforced.
//!
//! The decision is a pure function of a thread's capability sets as
//! /proc/TID/status shows them; the walk over a cgroup subtree and /proc is
//! the edge. Capabilities are per thread, so every thread of a process is
//! read and the strongest finding is the process's.

use std::path::{Path, PathBuf};

/// CAP_NET_RAW's bit in the capability sets (linux/capability.h).
pub const CAP_NET_RAW: u32 = 13;

/// A capability the eBPF side needs (linux/capability.h bit numbers).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Cap {
    /// Program types and maps of networking: cgroup sock_addr, sock,
    /// sock_ops, sk_msg, tc, sockhash; cgroup attachments; netlink.
    NetAdmin = 12,
    /// Stands in for every other one here (the kernel lets it).
    SysAdmin = 21,
    /// BPF LSM programs; helpers that read kernel memory (skc_to_*).
    Perfmon = 38,
    /// Any program load or map creation (with unprivileged BPF disabled,
    /// Debian's default).
    Bpf = 39,
}

impl Cap {
    pub fn name(self) -> &'static str {
        match self {
            Cap::NetAdmin => "CAP_NET_ADMIN",
            Cap::SysAdmin => "CAP_SYS_ADMIN",
            Cap::Perfmon => "CAP_PERFMON",
            Cap::Bpf => "CAP_BPF",
        }
    }

    fn bit(self) -> u64 {
        1 << self as u32
    }
}

/// The capabilities of `needs` that a thread with the `effective` set does
/// not hold. CAP_SYS_ADMIN counts as each of them, as the kernel's checks
/// (bpf_token_capable, capable() in the older paths) accept it for all.
pub fn lacking(needs: &[Cap], effective: u64) -> Vec<Cap> {
    if effective & Cap::SysAdmin.bit() != 0 {
        return Vec::new();
    }
    needs
        .iter()
        .copied()
        .filter(|c| effective & c.bit() == 0)
        .collect()
}

/// "CAP_BPF", "CAP_BPF and CAP_NET_ADMIN", "CAP_BPF, CAP_NET_ADMIN and
/// CAP_PERFMON".
pub fn names(caps: &[Cap]) -> String {
    let names: Vec<&str> = caps.iter().map(|c| c.name()).collect();
    match names.split_last() {
        None => String::new(),
        Some((last, [])) => (*last).to_string(),
        Some((last, rest)) => format!("{} and {last}", rest.join(", ")),
    }
}

/// This thread's effective capability set (/proc/thread-self/status).
pub fn own_effective() -> Result<u64, CapsError> {
    let path = Path::new("/proc/thread-self/status");
    let text = std::fs::read_to_string(path).map_err(|source| CapsError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(parse_status(&text, path)?.effective)
}

/// Cgroup levels below the policy cgroup that are walked.
pub const MAX_DEPTH: usize = 32;
/// Cgroup directories walked per policy cgroup, at most.
pub const MAX_CGROUPS: usize = 10_000;

#[derive(Debug, thiserror::Error)]
pub enum CapsError {
    #[error("{path}: no {field} line")]
    MissingField { path: PathBuf, field: &'static str },
    #[error("{path}: {field}: {value:?} is not a hexadecimal capability set")]
    BadSet {
        path: PathBuf,
        field: &'static str,
        value: String,
    },
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The capability fields of one thread's /proc status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ProcCaps {
    pub inheritable: u64,
    pub permitted: u64,
    pub effective: u64,
    pub ambient: u64,
    pub bounding: u64,
    pub no_new_privs: bool,
}

/// How a process comes to CAP_NET_RAW. Ordered: holding is the stronger.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Why {
    /// It can gain it at execve(): the capability is in its bounding (or
    /// inheritable) set and no_new_privs is off, so a file capability
    /// (Debian's ping has cap_net_raw+ep) or a set-user-ID-root program
    /// grants it.
    CanGain,
    /// It is in the permitted, effective or ambient set now.
    Holds,
}

impl Why {
    /// The phrase of the warnings: "pid 1 (x) {phrase}".
    pub fn phrase(self) -> &'static str {
        match self {
            Why::Holds => "holds CAP_NET_RAW",
            Why::CanGain => {
                "can gain CAP_NET_RAW (no_new_privs is off: a program with that file capability or set-user-ID root grants it)"
            }
        }
    }
}

/// Parses the capability fields of /proc/PID/status text (`path` names it
/// in errors). `NoNewPrivs` is absent before Linux 4.10: read as off.
pub fn parse_status(text: &str, path: &Path) -> Result<ProcCaps, CapsError> {
    let field = |name: &'static str| -> Option<&str> {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
            .map(str::trim)
    };
    let set = |name: &'static str| -> Result<u64, CapsError> {
        let value = field(name).ok_or_else(|| CapsError::MissingField {
            path: path.to_path_buf(),
            field: name,
        })?;
        u64::from_str_radix(value, 16).map_err(|_| CapsError::BadSet {
            path: path.to_path_buf(),
            field: name,
            value: value.to_string(),
        })
    };
    Ok(ProcCaps {
        inheritable: set("CapInh")?,
        permitted: set("CapPrm")?,
        effective: set("CapEff")?,
        ambient: set("CapAmb")?,
        bounding: set("CapBnd")?,
        no_new_privs: field("NoNewPrivs").is_some_and(|v| v != "0"),
    })
}

/// Whether a thread with these sets holds CAP_NET_RAW or can gain it.
///
/// At execve() the new permitted set is (inheritable & file inheritable) |
/// (file permitted & bounding) | ambient, and a root or set-user-ID-root
/// program counts as having every file capability; no_new_privs stops any
/// gain. So a thread that has the bit in neither its bounding nor its
/// inheritable set, or has no_new_privs, can never hold it again.
pub fn can_use_net_raw(caps: &ProcCaps) -> Option<Why> {
    let bit = 1u64 << CAP_NET_RAW;
    if (caps.permitted | caps.effective | caps.ambient) & bit != 0 {
        Some(Why::Holds)
    } else if !caps.no_new_privs && (caps.bounding | caps.inheritable) & bit != 0 {
        Some(Why::CanGain)
    } else {
        None
    }
}

/// One process of a cgroup subtree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Process {
    pub pid: u32,
    /// Its name (`Name:` in /proc/PID/status: the main thread's comm).
    pub comm: String,
    /// The strongest finding over its threads.
    pub net_raw: Option<Why>,
}

/// Every process of a cgroup and its descendants.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Scan {
    pub processes: Vec<Process>,
    /// The walk stopped at [`MAX_CGROUPS`] directories or [`MAX_DEPTH`]
    /// levels: cgroups below were not read.
    pub truncated: bool,
}

impl Scan {
    /// The processes that hold or can gain CAP_NET_RAW.
    pub fn net_raw(&self) -> impl Iterator<Item = (&Process, Why)> {
        self.processes
            .iter()
            .filter_map(|p| p.net_raw.map(|w| (p, w)))
    }
}

/// Reads a file that may vanish with its process or cgroup: None then.
fn read_gone_ok(path: &Path) -> Result<Option<String>, CapsError> {
    match std::fs::read_to_string(path) {
        Ok(t) => Ok(Some(t)),
        // ESRCH: the process exited between open and read.
        Err(e)
            if e.kind() == std::io::ErrorKind::NotFound
                || e.raw_os_error() == Some(libc::ESRCH) =>
        {
            Ok(None)
        }
        Err(source) => Err(CapsError::Read {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// `dir` and the cgroups below it but those in `skip` and theirs, bounded;
/// the flag says the bound cut it.
fn subtree(dir: &Path, skip: &[PathBuf]) -> (Vec<PathBuf>, bool) {
    let mut all = vec![dir.to_path_buf()];
    let mut level = vec![dir.to_path_buf()];
    for _ in 0..MAX_DEPTH {
        let mut next = Vec::new();
        for d in &level {
            let Ok(entries) = std::fs::read_dir(d) else {
                continue;
            };
            for e in entries.flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) && !skip.contains(&e.path()) {
                    if all.len() + next.len() >= MAX_CGROUPS {
                        all.extend(next);
                        return (all, true);
                    }
                    next.push(e.path());
                }
            }
        }
        if next.is_empty() {
            return (all, false);
        }
        all.extend(next.iter().cloned());
        level = next;
    }
    // Levels left below the deepest one read.
    let deeper = level.iter().any(|d| {
        std::fs::read_dir(d).is_ok_and(|mut es| {
            es.any(|e| e.is_ok_and(|e| e.file_type().is_ok_and(|t| t.is_dir())))
        })
    });
    (all, deeper)
}

/// One process: its name and the strongest finding over its threads; None
/// if it exited meanwhile.
fn process(pid: u32) -> Result<Option<Process>, CapsError> {
    let main = PathBuf::from(format!("/proc/{pid}/status"));
    let Some(text) = read_gone_ok(&main)? else {
        return Ok(None);
    };
    let comm = text
        .lines()
        .find_map(|l| l.strip_prefix("Name:"))
        .map(|n| n.trim().to_string())
        .unwrap_or_default();
    let mut net_raw = can_use_net_raw(&parse_status(&text, &main)?);
    let tasks = PathBuf::from(format!("/proc/{pid}/task"));
    let entries = match std::fs::read_dir(&tasks) {
        Ok(es) => es,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(CapsError::Read {
                path: tasks,
                source,
            })
        }
    };
    for e in entries.flatten() {
        if e.file_name().to_str() == Some(&pid.to_string()) {
            continue;
        }
        let path = e.path().join("status");
        if let Some(text) = read_gone_ok(&path)? {
            net_raw = net_raw.max(can_use_net_raw(&parse_status(&text, &path)?));
        }
    }
    Ok(Some(Process { pid, comm, net_raw }))
}

/// Every process in the cgroup directory `dir` and its descendants (from
/// their `cgroup.procs`), but the subtrees in `skip`, with what each can do
/// with CAP_NET_RAW. Processes and cgroups that go away during the walk are
/// left out.
pub fn scan(dir: &Path, skip: &[PathBuf]) -> Result<Scan, CapsError> {
    let (dirs, truncated) = subtree(dir, skip);
    let mut processes = Vec::new();
    for d in dirs {
        let Some(procs) = read_gone_ok(&d.join("cgroup.procs"))? else {
            continue;
        };
        // 0: a process outside this reader's pid namespace.
        for pid in procs.lines().filter_map(|l| l.trim().parse::<u32>().ok()) {
            if pid == 0 {
                continue;
            }
            if let Some(p) = process(pid)? {
                processes.push(p);
            }
        }
    }
    // A threaded cgroup lists the processes of its threads too.
    processes.sort_by_key(|p| p.pid);
    processes.dedup_by_key(|p| p.pid);
    Ok(Scan {
        processes,
        truncated,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(prm: &str, eff: &str, amb: &str, bnd: &str, nnp: Option<&str>) -> String {
        let mut s = format!(
            "Name:\tsleep\nUmask:\t0022\nState:\tS (sleeping)\nTgid:\t42\n\
             CapInh:\t0000000000000000\nCapPrm:\t{prm}\nCapEff:\t{eff}\nCapBnd:\t{bnd}\nCapAmb:\t{amb}\n"
        );
        if let Some(n) = nnp {
            s.push_str(&format!("NoNewPrivs:\t{n}\nSeccomp:\t0\n"));
        }
        s
    }

    const ALL: &str = "000001ffffffffff";
    const NONE: &str = "0000000000000000";
    /// Every capability but CAP_NET_RAW.
    const NO_RAW: &str = "000001ffffffdfff";
    /// CAP_NET_RAW alone.
    const RAW: &str = "0000000000002000";

    #[test]
    fn lacking_capabilities() {
        use Cap::*;
        let unit = Bpf.bit() | NetAdmin.bit() | Perfmon.bit();
        for (needs, effective, want) in [
            (&[Bpf, NetAdmin][..], 0, vec![Bpf, NetAdmin]),
            (&[Bpf, NetAdmin], unit, vec![]),
            (&[Bpf, NetAdmin], unit & !NetAdmin.bit(), vec![NetAdmin]),
            (&[Bpf, Perfmon], unit & !Perfmon.bit(), vec![Perfmon]),
            (&[Bpf, NetAdmin, Perfmon], SysAdmin.bit(), vec![]),
            (&[Bpf], 1 << CAP_NET_RAW, vec![Bpf]),
            (&[], 0, vec![]),
        ] {
            assert_eq!(lacking(needs, effective), want, "{needs:?} {effective:x}");
        }
    }

    #[test]
    fn capability_names() {
        use Cap::*;
        for (caps, want) in [
            (&[][..], ""),
            (&[Bpf], "CAP_BPF"),
            (&[Bpf, NetAdmin], "CAP_BPF and CAP_NET_ADMIN"),
            (
                &[Bpf, NetAdmin, Perfmon],
                "CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON",
            ),
        ] {
            assert_eq!(names(caps), want);
        }
    }

    #[test]
    fn own_effective_set_is_this_threads() {
        let text = std::fs::read_to_string("/proc/self/status").expect("status");
        let want = parse_status(&text, Path::new("/proc/self/status"))
            .expect("parse")
            .effective;
        assert_eq!(own_effective().expect("own"), want);
    }

    #[test]
    fn status_fields_are_parsed() {
        let p = Path::new("/proc/42/status");
        let caps = parse_status(&status(ALL, RAW, NONE, NO_RAW, Some("1")), p).unwrap();
        assert_eq!(
            caps,
            ProcCaps {
                inheritable: 0,
                permitted: 0x1ff_ffff_ffff,
                effective: 0x2000,
                ambient: 0,
                bounding: 0x1ff_ffff_dfff,
                no_new_privs: true,
            }
        );
        // Before Linux 4.10 there is no NoNewPrivs line.
        let caps = parse_status(&status(NONE, NONE, NONE, ALL, None), p).unwrap();
        assert!(!caps.no_new_privs);

        let missing = parse_status("Name:\tx\nCapInh:\t0\n", p).unwrap_err();
        assert_eq!(missing.to_string(), "/proc/42/status: no CapPrm line");
        let bad = parse_status(&status("xyz", NONE, NONE, ALL, None), p).unwrap_err();
        assert_eq!(
            bad.to_string(),
            "/proc/42/status: CapPrm: \"xyz\" is not a hexadecimal capability set"
        );
    }

    #[test]
    fn net_raw_table() {
        let caps = |permitted, effective, ambient, bounding, inheritable, nnp| ProcCaps {
            inheritable,
            permitted,
            effective,
            ambient,
            bounding,
            no_new_privs: nnp,
        };
        let raw = 1u64 << CAP_NET_RAW;
        let all = 0x1ff_ffff_ffffu64;
        let no_raw = all & !raw;
        let table: &[(&str, ProcCaps, Option<Why>)] = &[
            ("root", caps(all, all, 0, all, 0, false), Some(Why::Holds)),
            (
                "root with no_new_privs still holds what it has",
                caps(all, all, 0, all, 0, true),
                Some(Why::Holds),
            ),
            (
                "permitted only (not effective): can raise it any time",
                caps(raw, 0, 0, all, 0, true),
                Some(Why::Holds),
            ),
            ("effective", caps(0, raw, 0, 0, 0, true), Some(Why::Holds)),
            ("ambient", caps(0, 0, raw, 0, 0, true), Some(Why::Holds)),
            (
                "unprivileged user, full bounding set: ping's file capability",
                caps(0, 0, 0, all, 0, false),
                Some(Why::CanGain),
            ),
            (
                "unprivileged user with no_new_privs",
                caps(0, 0, 0, all, 0, true),
                None,
            ),
            (
                "dropped from the bounding set (capsh --drop)",
                caps(no_raw, no_raw, 0, no_raw, 0, false),
                None,
            ),
            (
                "inheritable kept, bounding dropped: a file inheritable bit grants it",
                caps(0, 0, 0, no_raw, raw, false),
                Some(Why::CanGain),
            ),
            (
                "inheritable kept, with no_new_privs",
                caps(0, 0, 0, no_raw, raw, true),
                None,
            ),
            (
                "other capabilities only",
                caps(no_raw, no_raw, no_raw, no_raw, no_raw, false),
                None,
            ),
        ];
        for (what, c, want) in table {
            assert_eq!(can_use_net_raw(c), *want, "{what}");
        }
        assert!(Why::Holds > Why::CanGain);
        assert_eq!(None.max(Some(Why::CanGain)), Some(Why::CanGain));
    }

    #[test]
    fn scans_this_process_in_proc() {
        // The edge against the real /proc: this test process and its threads.
        let me = std::process::id();
        let p = process(me).unwrap().expect("this process exists");
        assert_eq!(p.pid, me);
        assert!(!p.comm.is_empty());
        let text = std::fs::read_to_string("/proc/self/status").unwrap();
        let mine = can_use_net_raw(&parse_status(&text, Path::new("/proc/self/status")).unwrap());
        assert!(p.net_raw >= mine);
        // A pid that cannot exist (above PID_MAX_LIMIT) is gone, not an error.
        assert_eq!(process(4_194_305).unwrap(), None);
    }

    #[test]
    fn a_missing_cgroup_scans_empty() {
        let s = scan(Path::new("/nonexistent/sockwarden-cgroup"), &[]).unwrap();
        assert_eq!(s, Scan::default());
    }
}
