//! One enforcer per node: before it attaches, `run` looks for sockwarden
//! programs another instance attached at the same cgroup. Two sets of
//! connect programs on one cgroup stack up: the second judges the first
//! one's rewritten destination (its proxy), denies it, and every
//! redirected connect fails. Taking over an earlier run's links (see
//! [`super::pins`]) is the only way two instances overlap.

use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use libbpf_rs::libbpf_sys;

/// The program whose presence marks a sockwarden at a cgroup.
const MARKER: &str = "sw_connect4";

/// A sockwarden program attached at the cgroup by another instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Foreign {
    pub prog_id: u32,
    /// Where its link is pinned, if it is pinned on this bpf filesystem.
    pub link_pin: Option<PathBuf>,
}

impl std::fmt::Display for Foreign {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{MARKER} (program id {})", self.prog_id)?;
        match &self.link_pin {
            Some(pin) => write!(f, " linked from {}", pin.display()),
            None => write!(f, " (its link is not pinned where sockwarden looks)"),
        }
    }
}

/// The sockwarden marker programs attached at a cgroup that are not `own`
/// (the programs of links this run takes over): `attached` is (program id,
/// name) of every program attached there for connect4, "" where the name
/// could not be read (reading another program's takes CAP_SYS_ADMIN, which
/// the systemd unit does not grant); `pinned` are the programs of marker
/// links pinned on the bpf filesystem (read without it): an unnamed program
/// is a marker when it is one of them.
pub fn foreign_ids(attached: &[(u32, String)], own: &[u32], pinned: &[u32]) -> Vec<u32> {
    attached
        .iter()
        .filter(|(id, name)| {
            (name == MARKER || (name.is_empty() && pinned.contains(id))) && !own.contains(id)
        })
        .map(|(id, _)| *id)
        .collect()
}

/// The programs attached directly at `cgroup` for cgroup/connect4, with
/// their names. Programs whose information cannot be read are named "".
fn attached_connect4(cgroup: &std::fs::File) -> std::io::Result<Vec<(u32, String)>> {
    const MAX: usize = 64;
    let mut ids = [0u32; MAX];
    let mut count = MAX as u32;
    let mut flags = 0u32;
    // SAFETY: the descriptor is open for the call; ids holds `count` u32s
    // and the kernel writes at most that many; flags is a valid u32.
    let ret = unsafe {
        libbpf_sys::bpf_prog_query(
            cgroup.as_raw_fd(),
            libbpf_sys::BPF_CGROUP_INET4_CONNECT,
            0,
            &mut flags,
            ids.as_mut_ptr(),
            &mut count,
        )
    };
    if ret < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let found = (count as usize).min(MAX);
    Ok(ids[..found].iter().map(|&id| (id, prog_name(id))).collect())
}

/// The name of program `id`, or "" when it cannot be read.
fn prog_name(id: u32) -> String {
    // SAFETY: a plain syscall wrapper; a non-negative result is a new
    // descriptor that this function then owns.
    let fd = unsafe { libbpf_sys::bpf_prog_get_fd_by_id(id) };
    if fd < 0 {
        return String::new();
    }
    // SAFETY: fd was just returned to us and nothing else owns it.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: bpf_prog_info is plain data; all-zero is its "ask for nothing
    // extra" value.
    let mut info: libbpf_sys::bpf_prog_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libbpf_sys::bpf_prog_info>() as u32;
    // SAFETY: info is `len` bytes long and lives across the call.
    let ret =
        unsafe { libbpf_sys::bpf_prog_get_info_by_fd(fd.as_fd().as_raw_fd(), &mut info, &mut len) };
    if ret < 0 {
        return String::new();
    }
    let name: Vec<u8> = info
        .name
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| c as u8)
        .collect();
    String::from_utf8_lossy(&name).into_owned()
}

/// Pinned sockwarden marker links on the bpf filesystem that holds
/// `pin_path`: (program id, pin), from `<mount>/*/links/sw_connect4` and
/// the same one level deeper.
fn pinned_markers(pin_path: &Path) -> Vec<(u32, PathBuf)> {
    let Some(mount) = pin_path.parent() else {
        return Vec::new();
    };
    let mut dirs = vec![mount.to_path_buf()];
    let mut found = Vec::new();
    for _depth in 0..2 {
        let mut next = Vec::new();
        for dir in &dirs {
            for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
                let path = entry.path();
                if !entry.file_type().is_ok_and(|t| t.is_dir()) {
                    continue;
                }
                let marker = path.join("links").join(MARKER);
                if let Ok(link) = libbpf_rs::Link::open(&marker) {
                    if let Ok(info) = link.info() {
                        found.push((info.prog_id, marker));
                    }
                }
                next.push(path);
            }
        }
        dirs = next;
    }
    found
}

/// The sockwarden programs another instance attached at `cgroup`.
pub fn find(cgroup: &std::fs::File, pin_path: &Path, own: &[u32]) -> std::io::Result<Vec<Foreign>> {
    let attached = attached_connect4(cgroup)?;
    let pins = pinned_markers(pin_path);
    let pinned: Vec<u32> = pins.iter().map(|(id, _)| *id).collect();
    let unnamed = attached
        .iter()
        .filter(|(id, name)| name.is_empty() && !pinned.contains(id) && !own.contains(id))
        .count();
    if unnamed > 0 {
        tracing::warn!(
            programs = unnamed,
            "connect4 programs attached at the cgroup root could not be named (that takes CAP_SYS_ADMIN): \
             another sockwarden among them is recognized only by its links pinned on this bpf filesystem"
        );
    }
    let foreign = foreign_ids(&attached, own, &pinned);
    Ok(foreign
        .into_iter()
        .map(|prog_id| Foreign {
            prog_id,
            link_pin: pins
                .iter()
                .find(|(id, _)| *id == prog_id)
                .map(|(_, p)| p.clone()),
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_other_instances_marker_programs_are_foreign() {
        let at = |list: &[(u32, &str)]| -> Vec<(u32, String)> {
            list.iter().map(|(i, n)| (*i, n.to_string())).collect()
        };
        /// (attached at the cgroup, this run's own, pinned markers' programs, foreign)
        type Case<'a> = (&'a [(u32, &'a str)], &'a [u32], &'a [u32], &'a [u32]);
        let cases: [Case; 9] = [
            // Nothing attached.
            (&[], &[], &[], &[]),
            // Another tool's connect4 program is none of sockwarden's business.
            (&[(7, "cilium_connect4")], &[], &[], &[]),
            // An earlier run's program, taken over: ours.
            (&[(9, "sw_connect4")], &[9], &[9], &[]),
            // Another instance's.
            (&[(9, "sw_connect4"), (12, "sw_connect4")], &[9], &[], &[12]),
            // Unreadable names are not guessed at...
            (&[(3, "")], &[], &[], &[]),
            // ... but a program a pinned marker link runs is a marker
            // (names unreadable without CAP_SYS_ADMIN).
            (&[(3, ""), (12, "")], &[], &[12], &[12]),
            (&[(9, ""), (12, "")], &[9], &[9, 12], &[12]),
            // A pin whose program is not attached here is nothing.
            (&[(3, "")], &[], &[12], &[]),
            // A name that says otherwise wins over a pin.
            (&[(12, "cilium_connect4")], &[], &[12], &[]),
        ];
        for (attached, own, pinned, want) in cases {
            assert_eq!(
                foreign_ids(&at(attached), own, pinned),
                want,
                "{attached:?} own {own:?} pinned {pinned:?}"
            );
        }
    }

    #[test]
    fn a_foreign_program_names_its_pin_or_says_it_has_none() {
        let pinned = Foreign {
            prog_id: 41,
            link_pin: Some(PathBuf::from("/sys/fs/bpf/other/links/sw_connect4")),
        };
        assert_eq!(
            pinned.to_string(),
            "sw_connect4 (program id 41) linked from /sys/fs/bpf/other/links/sw_connect4"
        );
        let unpinned = Foreign {
            prog_id: 5,
            link_pin: None,
        };
        assert_eq!(
            unpinned.to_string(),
            "sw_connect4 (program id 5) (its link is not pinned where sockwarden looks)"
        );
    }
}
