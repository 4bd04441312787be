//! The pin path's lifecycle: the bpf filesystem under it, the lock that says
//! a live instance owns it, and removing what an earlier run left there.
//!
//! Every map is pinned as `<pin path>/<map name>` ([`super::MapName::pin`])
//! and every link as `<pin path>/links/<program name>`.
//!
//! Pins outlive the process on purpose: after a stop (SIGTERM) or a crash
//! (SIGKILL) the programs stay attached and enforce (fail closed). The next
//! start sets the earlier run's pins aside ([`set_aside`]), loads its own,
//! and moves each attached link onto its new program in one step
//! (`bpf_link_update`), so no connect() runs unjudged in between; then
//! [`Previous::finish`] removes what is left of the earlier run. Only
//! [`detach`] (`sockwarden detach`) removes enforcement.

use std::path::{Path, PathBuf};

use super::BpfError;

/// statfs(2) f_type of bpffs.
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// Directory of the per-pin-path instance locks.
const LOCK_DIR: &str = "/run/sockwarden";

/// Where the links are pinned under `pin_path`.
pub fn links_dir(pin_path: &Path) -> PathBuf {
    pin_path.join("links")
}

/// The lock file of `pin_path`: one per pin path, under [`LOCK_DIR`].
fn lock_file(pin_path: &Path) -> PathBuf {
    let name = pin_path.to_string_lossy().replace('/', "_");
    Path::new(LOCK_DIR).join(format!("{name}.lock"))
}

/// Makes sure the directory holding `pin_path` is on a bpf filesystem,
/// mounting one there if it is not (as hosts without systemd need). Checking
/// and mounting happen under a host-wide lock, so two instances starting
/// together cannot stack two mounts (which would hide the first one's pins).
pub(super) fn ensure_bpffs(pin_path: &Path) -> Result<(), BpfError> {
    use nix::fcntl::{Flock, FlockArg};
    let parent = pin_path.parent().unwrap_or(Path::new("/"));
    let on_bpffs =
        |p: &Path| nix::sys::statfs::statfs(p).is_ok_and(|s| s.filesystem_type().0 == BPF_FS_MAGIC);
    if on_bpffs(parent) {
        return Ok(());
    }
    let lock_path = Path::new(LOCK_DIR).join("bpffs-mount.lock");
    let _lock = open_lock_file(&lock_path)
        .and_then(|f| {
            Flock::lock(f, FlockArg::LockExclusive)
                .map_err(|(_, e)| std::io::Error::from_raw_os_error(e as i32))
        })
        .map_err(|source| BpfError::CreateDir {
            path: lock_path.clone(),
            source,
        })?;
    if on_bpffs(parent) {
        return Ok(());
    }
    nix::mount::mount(
        Some("bpf"),
        parent,
        Some("bpf"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    )
    .map_err(|source| BpfError::BpfFs {
        path: parent.to_path_buf(),
        source,
    })?;
    tracing::info!(path = %parent.display(), "mounted a bpf filesystem");
    Ok(())
}

fn open_lock_file(path: &Path) -> std::io::Result<std::fs::File> {
    std::fs::create_dir_all(LOCK_DIR)?;
    std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
}

/// Takes the lock that says "a live sockwarden owns this pin path", so a
/// second instance cannot mistake the first one's pins for leftovers.
pub fn lock_pin_path(pin_path: &Path) -> Result<PinLock, BpfError> {
    use nix::fcntl::{Flock, FlockArg};
    use std::os::unix::fs::MetadataExt;
    let path = lock_file(pin_path);
    let create_err = |source| BpfError::CreateDir {
        path: path.clone(),
        source,
    };
    // The owner removes the file on shutdown, so a lock taken on a file that
    // was unlinked meanwhile proves nothing: check the path still names it.
    // Bounded: each retry means another instance just shut down.
    for _ in 0..8 {
        let file = open_lock_file(&path).map_err(create_err)?;
        let lock =
            Flock::lock(file, FlockArg::LockExclusiveNonblock).map_err(|_| BpfError::InUse {
                pin_path: pin_path.to_path_buf(),
                lock: path.clone(),
            })?;
        let held = lock.metadata().map_err(create_err)?.ino();
        if std::fs::metadata(&path).is_ok_and(|m| m.ino() == held) {
            return Ok(PinLock { path, _flock: lock });
        }
    }
    Err(BpfError::InUse {
        pin_path: pin_path.to_path_buf(),
        lock: path,
    })
}

/// Proof that this process owns a pin path; released when dropped.
#[derive(Debug)]
pub struct PinLock {
    path: PathBuf,
    _flock: nix::fcntl::Flock<std::fs::File>,
}

impl Drop for PinLock {
    /// Removes the lock file while still holding the lock; the flock goes
    /// with the file descriptor right after.
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Where an earlier run's pins are set aside: `<pin path>-previous-<tag>`
/// beside the pin path (on the same bpf filesystem, so a rename moves them;
/// bpffs refuses dots in names with EPERM, they are reserved there).
fn aside_prefix(pin_path: &Path) -> String {
    format!(
        "{}-previous-",
        pin_path.file_name().unwrap_or_default().to_string_lossy()
    )
}

/// The directories of earlier runs set aside beside `pin_path` (more than
/// one only if a takeover was itself interrupted), oldest name first.
fn aside_dirs(pin_path: &Path) -> Vec<PathBuf> {
    let (Some(parent), prefix) = (pin_path.parent(), aside_prefix(pin_path)) else {
        return Vec::new();
    };
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(parent)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
        .map(|e| e.path())
        .collect();
    dirs.sort();
    dirs
}

/// An earlier run's (or generation's) links, open (still attached), and
/// the directories that hold their pins.
#[derive(Debug, Default)]
pub struct Previous {
    /// (program name, link), in the order found; a name may appear twice
    /// after an interrupted takeover.
    links: Vec<(String, libbpf_rs::Link)>,
    dirs: Vec<PathBuf>,
    /// Links whose pin was removed to make room for their successor's
    /// (a link that cannot change its program), with that pin's path.
    unpinned: Vec<(String, PathBuf)>,
}

/// Pins the kernel object behind `fd` at `path` (what libbpf does for a
/// link only once per link object).
pub(super) fn obj_pin(fd: std::os::fd::BorrowedFd<'_>, path: &Path) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    use std::os::unix::ffi::OsStrExt;
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    // SAFETY: the descriptor is open for the call, and c_path is a
    // NUL-terminated string that outlives it.
    let ret = unsafe { libbpf_rs::libbpf_sys::bpf_obj_pin(fd.as_raw_fd(), c_path.as_ptr()) };
    if ret < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// The cgroup a link attaches its program to, if it is a cgroup link
/// (whose program a `BPF_LINK_UPDATE` can change).
pub(super) fn link_cgroup(link: &libbpf_rs::Link) -> Option<u64> {
    match link.info().ok()?.info {
        libbpf_rs::query::LinkTypeInfo::Cgroup(c) => Some(c.cgroup_id),
        _ => None,
    }
}

impl Previous {
    /// The links this run pinned under `pin_path`, for a reload to move
    /// onto its new generation. A link that cannot change its program
    /// loses its pin now (its descriptor, held here, keeps it attached) so
    /// that its successor can be pinned there; [`Previous::restore`] puts
    /// it back if the reload fails.
    pub fn pinned(pin_path: &Path) -> Result<Previous, BpfError> {
        let mut own = Previous::default();
        let dir = links_dir(pin_path);
        let mut paths: Vec<PathBuf> = std::fs::read_dir(&dir)
            .map_err(|source| BpfError::Leftovers {
                path: dir.clone(),
                source,
            })?
            .flatten()
            .map(|e| e.path())
            .collect();
        paths.sort();
        for path in paths {
            let name = path
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned();
            let Ok(link) = libbpf_rs::Link::open(&path) else {
                continue;
            };
            if link_cgroup(&link).is_none() {
                std::fs::remove_file(&path).map_err(|source| BpfError::Leftovers {
                    path: path.clone(),
                    source,
                })?;
                own.unpinned.push((name.clone(), path));
            }
            own.links.push((name, link));
        }
        Ok(own)
    }

    /// After a failed reload: pins again the links [`Previous::pinned`]
    /// unpinned, so that they stay attached after this value is dropped.
    pub fn restore(&self) {
        use std::os::fd::AsFd;
        for (name, path) in &self.unpinned {
            let Some((_, link)) = self.links.iter().find(|(n, _)| n == name) else {
                continue;
            };
            if let Err(e) = obj_pin(link.as_fd(), path) {
                tracing::error!(path = %path.display(), error = %e, "pinning a link again after a failed reload; it detaches when sockwarden exits");
            }
        }
    }

    /// Whether an earlier run left anything.
    pub fn is_empty(&self) -> bool {
        self.dirs.is_empty()
    }

    /// How many of the earlier run's links are attached.
    pub fn link_count(&self) -> usize {
        self.links.len()
    }

    /// The programs the earlier run's links run now.
    pub fn prog_ids(&self) -> Vec<u32> {
        self.links
            .iter()
            .filter_map(|(_, link)| link.info().ok().map(|i| i.prog_id))
            .collect()
    }

    /// The earlier run's link for `program` that `fits`, if it has one:
    /// taken, so the caller can move it onto its new program.
    pub fn take_link(
        &mut self,
        program: &str,
        fits: impl Fn(&libbpf_rs::Link) -> bool,
    ) -> Option<libbpf_rs::Link> {
        let i = self
            .links
            .iter()
            .position(|(name, link)| name == program && fits(link))?;
        Some(self.links.remove(i).1)
    }

    /// Removes the earlier run's pins. Links not taken are detached with
    /// them (their pins go, and their descriptors close here); maps go with
    /// the programs that used them.
    pub fn finish(self) -> Result<(), BpfError> {
        let Previous { links, dirs, .. } = self;
        drop(links);
        for dir in dirs {
            remove_pins(&dir)?;
        }
        Ok(())
    }
}

/// Sets an earlier run's pins aside so this run can pin its own at
/// `pin_path`, keeping them pinned (so attached) until [`Previous::finish`]:
/// if this process dies before that, the next start finds them again.
pub fn set_aside(pin_path: &Path) -> Result<Previous, BpfError> {
    let err = |source| BpfError::Leftovers {
        path: pin_path.to_path_buf(),
        source,
    };
    if pin_path.exists() {
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        let aside = pin_path.with_file_name(format!("{}{stamp}", aside_prefix(pin_path)));
        std::fs::rename(pin_path, &aside).map_err(err)?;
    }
    let mut previous = Previous::default();
    for dir in aside_dirs(pin_path) {
        let links = links_dir(&dir);
        let mut names: Vec<PathBuf> = match std::fs::read_dir(&links) {
            Ok(rd) => rd.flatten().map(|e| e.path()).collect(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(err(e)),
        };
        names.sort();
        for path in names {
            let name = path.file_name().unwrap_or_default().to_string_lossy();
            match libbpf_rs::Link::open(&path) {
                Ok(link) => previous.links.push((name.into_owned(), link)),
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "an earlier run's pin is not a link; it is removed");
                }
            }
        }
        previous.dirs.push(dir);
    }
    Ok(previous)
}

/// Moves a reload's policy maps from `next` to their places under
/// `pin_path`, each rename replacing the old pin in one step, then removes
/// `next`.
pub fn promote(next: &Path, pin_path: &Path) -> Result<(), BpfError> {
    let err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| BpfError::Leftovers { path, source }
    };
    for entry in std::fs::read_dir(next).map_err(err(next))?.flatten() {
        let to = pin_path.join(entry.file_name());
        std::fs::rename(entry.path(), &to).map_err(err(&to))?;
    }
    std::fs::remove_dir(next).map_err(err(next))
}

/// What [`detach`] removed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Detached {
    /// The pinned links removed (program names): each detached its program.
    pub links: Vec<String>,
    /// The pin directories removed, with their maps.
    pub dirs: Vec<PathBuf>,
}

/// Removes enforcement: every link and map pinned under `pin_path`, and
/// any earlier run's pins set aside beside it. Refuses while a live
/// sockwarden owns the pin path (it takes the same lock `run` does).
pub fn detach(pin_path: &Path) -> Result<Detached, BpfError> {
    let _lock = lock_pin_path(pin_path)?;
    let mut out = Detached::default();
    let mut dirs = aside_dirs(pin_path);
    if pin_path.exists() {
        dirs.push(pin_path.to_path_buf());
    }
    for dir in dirs {
        let mut names: Vec<String> = std::fs::read_dir(links_dir(&dir))
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        remove_pins(&dir)?;
        out.links.extend(names);
        out.dirs.push(dir);
    }
    Ok(out)
}

/// Removes pins (links first, which detaches them) under `pin_path`.
/// Returns whether anything was there.
pub fn remove_pins(pin_path: &Path) -> Result<bool, BpfError> {
    if !pin_path.exists() {
        return Ok(false);
    }
    std::fs::remove_dir_all(links_dir(pin_path))
        .or_else(|e| match e.kind() {
            std::io::ErrorKind::NotFound => Ok(()),
            _ => Err(e),
        })
        .and_then(|()| std::fs::remove_dir_all(pin_path))
        .map_err(|source| BpfError::Leftovers {
            path: pin_path.to_path_buf(),
            source,
        })?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_pin_path_has_its_own_lock_file() {
        let cases = [
            (
                "/sys/fs/bpf/sockwarden",
                "/run/sockwarden/_sys_fs_bpf_sockwarden.lock",
            ),
            (
                "/sys/fs/bpf/sw-test-1",
                "/run/sockwarden/_sys_fs_bpf_sw-test-1.lock",
            ),
            ("relative/pins", "/run/sockwarden/relative_pins.lock"),
        ];
        for (pin_path, want) in cases {
            assert_eq!(
                lock_file(Path::new(pin_path)),
                Path::new(want),
                "{pin_path}"
            );
        }
    }

    /// A scratch directory under the system temp dir, removed on drop.
    struct Scratch(PathBuf);

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn leftovers_are_removed_links_and_all() {
        let scratch = Scratch(
            std::env::temp_dir().join(format!("sockwarden-pins-test-{}", std::process::id())),
        );
        let pin_path = scratch.0.join("pins");
        // Nothing there yet.
        assert!(!remove_pins(&pin_path).unwrap());
        std::fs::create_dir_all(links_dir(&pin_path)).unwrap();
        std::fs::write(links_dir(&pin_path).join("sw_connect4"), b"").unwrap();
        std::fs::write(super::super::MapName::Tuples.pin(&pin_path), b"").unwrap();
        assert!(remove_pins(&pin_path).unwrap());
        assert!(!pin_path.exists());
        assert!(!remove_pins(&pin_path).unwrap());
    }
}
