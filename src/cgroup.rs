//! The cgroup2 hierarchy: finding its mount, naming cgroups by id, and
//! keeping the kernel's policy_cgroups map in step with cgroups that come
//! and go.
//!
//! A policy may name a cgroup that does not exist yet (a systemd unit that
//! starts later). The watcher adds it to the kernel map when it appears:
//! inotify on the closest existing ancestor reports the mkdir, and a rescan
//! every [`RESCAN_INTERVAL`] backs inotify up. The window in which a process
//! in a brand-new cgroup is not yet enforced is the time from mkdir to the
//! watcher's map update: well under a millisecond to a few milliseconds with
//! inotify, at most [`RESCAN_INTERVAL`] if an event were lost.

use std::collections::HashMap;
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
use tokio::io::unix::AsyncFd;

use crate::bpf::{Maps, PolicyRef};
use crate::config::CgroupPath;
use crate::policy::{PolicyId, PolicySet};

/// Backstop rescan period for policy cgroups.
pub const RESCAN_INTERVAL: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error(
        "no cgroup2 filesystem is mounted (looked in /proc/self/mountinfo); set bpf.cgroup_root"
    )]
    NoCgroup2,
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a cgroup2 mount")]
    NotCgroup2 { path: PathBuf },
    #[error(
        "sockwarden's own process is in cgroup {own}, which policy {policy:?} enforces \
         (cgroup {cgroup}): its upstream connections would be redirected to itself. \
         Run sockwarden outside every enforced cgroup"
    )]
    SelfEnforced {
        own: String,
        policy: String,
        cgroup: String,
    },
    #[error("inotify: {0}")]
    Inotify(nix::Error),
}

/// statfs(2) f_type of cgroup2.
const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;

/// The cgroup2 mount point: `configured` if given (checked), else the first
/// cgroup2 mount in /proc/self/mountinfo.
pub fn cgroup2_root(configured: Option<&Path>) -> Result<PathBuf, CgroupError> {
    if let Some(p) = configured {
        let is_cgroup2 =
            nix::sys::statfs::statfs(p).is_ok_and(|s| s.filesystem_type().0 == CGROUP2_SUPER_MAGIC);
        return if is_cgroup2 {
            Ok(p.to_path_buf())
        } else {
            Err(CgroupError::NotCgroup2 {
                path: p.to_path_buf(),
            })
        };
    }
    let path = Path::new("/proc/self/mountinfo");
    let text = std::fs::read_to_string(path).map_err(|source| CgroupError::Read {
        path: path.into(),
        source,
    })?;
    find_cgroup2_mount(&text).ok_or(CgroupError::NoCgroup2)
}

/// First cgroup2 mount point in mountinfo text.
fn find_cgroup2_mount(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        let fstype = right.split_whitespace().next()?;
        let mount_point = left.split_whitespace().nth(4)?;
        (fstype == "cgroup2").then(|| PathBuf::from(unescape_mountinfo(mount_point)))
    })
}

/// mountinfo escapes space, tab, newline and backslash as octal.
fn unescape_mountinfo(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('\\') {
        out.push_str(&rest[..i]);
        let code = rest
            .get(i + 1..i + 4)
            .and_then(|o| u8::from_str_radix(o, 8).ok());
        match code {
            Some(c) => {
                out.push(char::from(c));
                rest = &rest[i + 4..];
            }
            None => {
                out.push('\\');
                rest = &rest[i + 1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// The cgroup2 path of this process (`/` for the root).
pub fn own_cgroup() -> Result<String, CgroupError> {
    let path = Path::new("/proc/self/cgroup");
    let text = std::fs::read_to_string(path).map_err(|source| CgroupError::Read {
        path: path.into(),
        source,
    })?;
    Ok(text
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .unwrap_or("/")
        .to_string())
}

/// Refuses to run inside a cgroup that a policy enforces.
pub fn check_not_self_enforced(
    own: &str,
    policies: &[(String, CgroupPath)],
) -> Result<(), CgroupError> {
    for (name, cgroup) in policies {
        if cgroup.contains(own) {
            return Err(CgroupError::SelfEnforced {
                own: own.to_string(),
                policy: name.clone(),
                cgroup: cgroup.to_string(),
            });
        }
    }
    Ok(())
}

/// The id of the cgroup at `dir` (its inode number in cgroup2), if it exists.
pub fn cgroup_id(dir: &Path) -> Option<u64> {
    std::fs::metadata(dir)
        .ok()
        .filter(|m| m.is_dir())
        .map(|m| m.ino())
}

/// `check`'s notes on the policy cgroups that do not exist on this host
/// (the host `check` runs on may not be the node the configuration is
/// for): one per missing cgroup, or one saying no cgroup2 mount was found.
pub fn missing_here(config: &crate::config::Config) -> Vec<String> {
    match cgroup2_root(config.bpf.cgroup_root.as_deref()) {
        Err(e) => vec![format!("policy cgroups not checked on this host: {e}")],
        Ok(root) => missing_notes(
            &root,
            config
                .policies
                .iter()
                .map(|p| (p.name.value.as_str(), &p.cgroup)),
            |dir| cgroup_id(dir).is_some(),
        ),
    }
}

/// The notes of [`missing_here`] given which directories exist.
fn missing_notes<'a>(
    root: &Path,
    policies: impl IntoIterator<Item = (&'a str, &'a CgroupPath)>,
    exists: impl Fn(&Path) -> bool,
) -> Vec<String> {
    policies
        .into_iter()
        .filter(|(_, cgroup)| !exists(&cgroup.under(root)))
        .map(|(name, cgroup)| {
            format!(
                "{} (on this host, under {})",
                missing_cgroup_warning(name, cgroup.as_str()),
                root.display()
            )
        })
        .collect()
}

/// An inotify instance as a raw descriptor, for tokio's reactor.
struct InotifyFd(Inotify);

impl AsRawFd for InotifyFd {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_fd().as_raw_fd()
    }
}

fn io_errno(e: &std::io::Error) -> nix::Error {
    nix::Error::from_raw(e.raw_os_error().unwrap_or(libc::EIO))
}

/// The warning for a policy whose cgroup does not exist: said at start-up,
/// by `status`, and (as a note) by `check`.
pub fn missing_cgroup_warning(policy: &str, cgroup: &str) -> String {
    format!(
        "policy {policy}: cgroup {cgroup} does not exist: nothing is enforced for this policy until it is created (a typo in the path?)"
    )
}

/// What the watcher warns about when a policy cgroup's id was `before`
/// and is `now` (None: no such cgroup); `first`: the first look, at
/// start-up. A cgroup removed and created again between two looks (a new
/// id) is enforced again at once: nothing to warn about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Absence {
    /// Missing at the first look, at start-up.
    MissingAtStart,
    /// It existed and is gone.
    Gone,
}

pub fn absence(first: bool, before: Option<u64>, now: Option<u64>) -> Option<Absence> {
    match (before, now) {
        (None, None) if first => Some(Absence::MissingAtStart),
        (Some(_), None) => Some(Absence::Gone),
        _ => None,
    }
}

/// One policy as the watcher follows it.
struct Watched {
    policy: PolicyRef,
    name: String,
    /// As the configuration writes it.
    cgroup: String,
    dir: PathBuf,
}

/// Keeps policy_cgroups in step with the policy cgroups that exist, and
/// says which do not: a warning at start-up and when one goes, and the
/// gauge `sockwarden_policy_cgroup_present`.
pub struct Watcher {
    root: PathBuf,
    policies: Vec<Watched>,
    /// Cgroup id currently in the kernel map for each policy.
    current: HashMap<PolicyId, u64>,
    /// Whether [`Watcher::sync`] has run.
    synced: bool,
    maps: Arc<Maps>,
}

/// Each policy's kernel reference and cgroup directory under `root`.
fn policy_dirs(root: &Path, policies: &PolicySet) -> Vec<(PolicyRef, PathBuf)> {
    policies
        .policies
        .iter()
        .map(|p| {
            let policy = PolicyRef {
                id: p.id,
                icmp: p.icmp,
                audit: p.audit,
            };
            (policy, p.cgroup.under(root))
        })
        .collect()
}

/// The policy_cgroups entries of the policy cgroups that exist now: written
/// before the programs attach, so none runs with an empty map (a connect
/// judged then would pass unenforced). The watcher keeps them current after.
pub fn present(root: &Path, policies: &PolicySet) -> Vec<(u64, PolicyRef)> {
    policy_dirs(root, policies)
        .into_iter()
        .filter_map(|(policy, dir)| cgroup_id(&dir).map(|id| (id, policy)))
        .collect()
}

impl Watcher {
    pub fn new(root: &Path, policies: &PolicySet, maps: Arc<Maps>) -> Watcher {
        Watcher {
            root: root.to_path_buf(),
            policies: policy_dirs(root, policies)
                .into_iter()
                .zip(&policies.policies)
                .map(|((policy, dir), p)| Watched {
                    policy,
                    name: p.name.clone(),
                    cgroup: p.cgroup.to_string(),
                    dir,
                })
                .collect(),
            current: HashMap::new(),
            synced: false,
            maps,
        }
    }

    /// Brings the kernel map in line with the filesystem. Returns the
    /// directories to watch: each policy cgroup's closest existing ancestor
    /// (to see it appear) or parent (to see it go).
    pub fn sync(&mut self) -> Vec<PathBuf> {
        let mut watch = Vec::new();
        let first = !std::mem::replace(&mut self.synced, true);
        for w in &self.policies {
            let (policy, dir) = (&w.policy, &w.dir);
            let id = &policy.id;
            let now = cgroup_id(dir);
            let before = self.current.get(id).copied();
            match absence(first, before, now) {
                Some(Absence::MissingAtStart) => {
                    tracing::warn!("{}", missing_cgroup_warning(&w.name, &w.cgroup));
                }
                Some(Absence::Gone) => tracing::warn!(
                    "policy {}: cgroup {} is gone: nothing is enforced for this policy until it is created again",
                    w.name,
                    w.cgroup
                ),
                None => {}
            }
            if now != before {
                if let Some(old) = before {
                    if let Err(e) = self.maps.remove_policy_cgroup(old) {
                        tracing::error!(error = %e, "removing a gone cgroup from policy_cgroups");
                    }
                    self.current.remove(id);
                    tracing::info!(cgroup = %dir.display(), "policy cgroup removed");
                }
                if let Some(new) = now {
                    match self.maps.set_policy_cgroup(new, *policy) {
                        Ok(()) => {
                            self.current.insert(*id, new);
                            tracing::info!(cgroup = %dir.display(), cgroup_id = new, "enforcing policy cgroup");
                        }
                        Err(e) => tracing::error!(error = %e, "adding a cgroup to policy_cgroups"),
                    }
                }
            }
            crate::metrics::policy_cgroup_present(&w.name, self.current.contains_key(id));
            let mut anchor = dir.parent();
            while let Some(a) = anchor {
                if a.is_dir() || a == self.root {
                    break;
                }
                anchor = a.parent();
            }
            if let Some(a) = anchor {
                watch.push(a.to_path_buf());
            }
        }
        watch
    }

    /// Runs until the task is dropped: inotify events and periodic rescans
    /// both trigger [`Watcher::sync`].
    pub async fn run(mut self) -> Result<(), CgroupError> {
        let inotify = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC)
            .map_err(CgroupError::Inotify)?;
        // SAFETY: InotifyFd owns the inotify descriptor and never closes or
        // replaces it while the AsyncFd exists.
        let fd = unsafe { AsyncFd::register(InotifyFd(inotify)) }
            .map_err(|e| CgroupError::Inotify(io_errno(&e.into_parts().1)))?;
        let mask = AddWatchFlags::IN_CREATE
            | AddWatchFlags::IN_DELETE
            | AddWatchFlags::IN_MOVED_TO
            | AddWatchFlags::IN_MOVED_FROM
            | AddWatchFlags::IN_ONLYDIR;
        let mut tick = tokio::time::interval(RESCAN_INTERVAL);
        loop {
            for dir in self.sync() {
                // Re-adding an existing watch only refreshes its mask.
                let _ = fd.get_ref().0.add_watch(&dir, mask);
            }
            tokio::select! {
                _ = tick.tick() => {}
                ready = fd.readable() => {
                    let mut guard = ready.map_err(|e| CgroupError::Inotify(io_errno(&e)))?;
                    // Drain; the events only say "look again".
                    while fd.get_ref().0.read_events().is_ok() {}
                    guard.clear_ready();
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_cgroup2_mount_in_hybrid_mountinfo() {
        let text = "\
25 30 0:23 / /sys rw,nosuid shared:7 - sysfs sysfs rw
35 26 0:30 / /sys/fs/cgroup ro shared:9 - tmpfs tmpfs ro,mode=755
36 35 0:31 / /sys/fs/cgroup/unified rw,nosuid shared:10 - cgroup2 cgroup2 rw
37 35 0:32 / /sys/fs/cgroup/systemd rw shared:11 - cgroup cgroup rw,name=systemd
";
        assert_eq!(
            find_cgroup2_mount(text),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        assert_eq!(
            find_cgroup2_mount("1 2 0:1 / /x rw - ext4 /dev/x rw\n"),
            None
        );
        assert_eq!(unescape_mountinfo("/a\\040b"), "/a b");
    }

    #[test]
    fn warns_about_a_missing_cgroup_at_start_and_when_it_goes() {
        use Absence::*;
        // (first look, id before, id now, warning)
        let cases = [
            (true, None, None, Some(MissingAtStart)),
            (false, None, None, None),
            (true, None, Some(7), None),
            (false, None, Some(7), None),
            (false, Some(7), None, Some(Gone)),
            (false, Some(7), Some(8), None),
            (false, Some(7), Some(7), None),
        ];
        for (first, before, now, want) in cases {
            assert_eq!(
                absence(first, before, now),
                want,
                "{first} {before:?} {now:?}"
            );
        }
        assert_eq!(
            missing_cgroup_warning("app", "/nc-tset/app"),
            "policy app: cgroup /nc-tset/app does not exist: nothing is enforced for this policy until it is created (a typo in the path?)"
        );
    }

    #[test]
    fn check_notes_name_each_missing_cgroup() {
        let here = CgroupPath::parse("/test/app").unwrap();
        let typo = CgroupPath::parse("/nc-tset/app").unwrap();
        let root = Path::new("/sys/fs/cgroup");
        let exists = |d: &Path| d == Path::new("/sys/fs/cgroup/test/app");
        let notes = missing_notes(root, [("app", &here), ("typo", &typo)], exists);
        assert_eq!(
            notes,
            ["policy typo: cgroup /nc-tset/app does not exist: nothing is enforced for this policy until it is created (a typo in the path?) (on this host, under /sys/fs/cgroup)"]
        );
        assert!(missing_notes(root, [("app", &here)], exists).is_empty());
    }

    #[test]
    fn refuses_to_enforce_itself() {
        let policies = vec![(
            "analytics".to_string(),
            CgroupPath::parse("/apps/analytics").unwrap(),
        )];
        assert!(check_not_self_enforced("/apps/analytics", &policies).is_err());
        assert!(check_not_self_enforced("/apps/analytics/worker", &policies).is_err());
        assert!(check_not_self_enforced("/apps/analytics2", &policies).is_ok());
        assert!(check_not_self_enforced("/", &policies).is_ok());
        let msg = check_not_self_enforced("/apps/analytics", &policies)
            .unwrap_err()
            .to_string();
        assert!(msg.contains("policy \"analytics\""), "{msg}");
    }
}
