//! cgroup v2 directories for tests.
//!
//! The cgroup2 mount is found in /proc/self/mountinfo (on this machine it
//! is /sys/fs/cgroup/unified, not /sys/fs/cgroup).

use std::fs;
use std::io::ErrorKind;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// The mount point of the (first) cgroup2 file system, from
/// /proc/self/mountinfo. Panics with a clear message if there is none.
pub fn cgroup2_mount() -> PathBuf {
    let info = fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_else(|e| panic!("cannot read /proc/self/mountinfo: {e}"));
    for line in info.lines() {
        // "<id> <parent> <maj:min> <root> <mount point> <opts> [optional...] - <fstype> <source> <superopts>"
        let Some((pre, post)) = line.split_once(" - ") else {
            continue;
        };
        if post.split(' ').next() != Some("cgroup2") {
            continue;
        }
        if let Some(mp) = pre.split(' ').nth(4) {
            return PathBuf::from(unescape_mountinfo(mp));
        }
    }
    panic!(
        "no cgroup2 file system is mounted (none in /proc/self/mountinfo); \
         mount one, e.g. `mount -t cgroup2 none /sys/fs/cgroup`"
    );
}

/// Undoes mountinfo's octal escapes (`\040` for a space, etc.).
fn unescape_mountinfo(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() {
            let oct = &b[i + 1..i + 4];
            if oct.iter().all(|c| (b'0'..=b'7').contains(c)) {
                let v = oct
                    .iter()
                    .fold(0u32, |acc, c| acc * 8 + u32::from(c - b'0'));
                out.push(v as u8);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A cgroup v2 directory `<mount>/<rel>`, created (mkdir -p) by
/// [`TestCgroup::new`]. Dropping it SIGKILLs every process in it and its
/// descendants, removes them all (deepest first), and removes the parent
/// directories that `new` created, if they are empty.
#[derive(Debug)]
pub struct TestCgroup {
    path: PathBuf,
    rel: String,
    /// Directories `new` created, shallowest first (the last one is `path`).
    created: Vec<PathBuf>,
}

impl TestCgroup {
    /// Creates `<cgroup2 mount>/<rel>` and any missing parents. `rel` may
    /// have a leading '/'; it must not contain `..`.
    pub fn new(rel: &str) -> TestCgroup {
        let trimmed = rel.trim_matches('/');
        assert!(
            !trimmed.is_empty() && !trimmed.split('/').any(|c| c == ".." || c == "."),
            "TestCgroup::new: bad relative path {rel:?}"
        );
        let mount = cgroup2_mount();
        let mut cur = mount.clone();
        let mut created = Vec::new();
        for comp in trimmed.split('/').filter(|c| !c.is_empty()) {
            cur.push(comp);
            match fs::create_dir(&cur) {
                Ok(()) => created.push(cur.clone()),
                Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
                Err(e) => {
                    // Undo what was made so far before panicking.
                    let partial = TestCgroup {
                        path: cur.clone(),
                        rel: String::new(),
                        created,
                    };
                    drop(partial);
                    panic!("TestCgroup::new: mkdir {}: {e}", cur.display());
                }
            }
        }
        TestCgroup {
            path: cur,
            rel: format!("/{trimmed}"),
            created,
        }
    }

    /// The directory of this cgroup.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The path relative to the cgroup2 mount, with a leading "/" (as in
    /// /proc/PID/cgroup).
    pub fn rel(&self) -> &str {
        &self.rel
    }

    /// The cgroup id: the inode number of the directory (what
    /// `bpf_get_current_cgroup_id()` returns for processes in it).
    pub fn id(&self) -> u64 {
        fs::metadata(&self.path)
            .unwrap_or_else(|e| panic!("stat {}: {e}", self.path.display()))
            .ino()
    }
}

fn read_procs(dir: &Path) -> Vec<i32> {
    fs::read_to_string(dir.join("cgroup.procs"))
        .map(|s| s.lines().filter_map(|l| l.trim().parse().ok()).collect())
        .unwrap_or_default()
}

/// `dir` and every cgroup directory below it, deepest first. Bounded in
/// depth and count.
fn subtree_deepest_first(dir: &Path) -> Vec<PathBuf> {
    const MAX_DEPTH: usize = 32;
    const MAX_DIRS: usize = 10_000;
    let mut levels: Vec<Vec<PathBuf>> = vec![vec![dir.to_path_buf()]];
    let mut total = 1;
    while levels.len() < MAX_DEPTH && total < MAX_DIRS {
        let mut next = Vec::new();
        for d in levels.last().expect("non-empty") {
            let Ok(rd) = fs::read_dir(d) else { continue };
            for ent in rd.flatten() {
                if ent.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                    next.push(ent.path());
                }
            }
        }
        if next.is_empty() {
            break;
        }
        total += next.len();
        levels.push(next);
    }
    levels.into_iter().rev().flatten().collect()
}

/// SIGKILLs every process in `dirs` (except the caller itself), repeating
/// every 10 ms until all are empty or `deadline` passes.
fn kill_all(dirs: &[PathBuf], deadline: Instant) {
    let me = std::process::id() as i32;
    loop {
        let mut any = false;
        for d in dirs {
            for p in read_procs(d) {
                if p > 1 && p != me {
                    any = true;
                    let _ = kill(Pid::from_raw(p), Signal::SIGKILL);
                }
            }
        }
        if !any || Instant::now() >= deadline {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// rmdir with retries (a just-killed process may keep the cgroup busy for a
/// moment) until `deadline`.
fn rmdir_retry(dir: &Path, deadline: Instant) {
    loop {
        match fs::remove_dir(dir) {
            Ok(()) => return,
            Err(e) if e.kind() == ErrorKind::NotFound => return,
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
            Err(_) => return,
        }
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        let dirs = subtree_deepest_first(&self.path);
        kill_all(&dirs, Instant::now() + Duration::from_secs(2));
        let deadline = Instant::now() + Duration::from_secs(1);
        for d in &dirs {
            rmdir_retry(d, deadline);
        }
        // Parents created by new(), deepest first; only removed if empty
        // (rmdir fails otherwise), never the mount itself.
        for d in self.created.iter().rev() {
            if *d != self.path {
                let _ = fs::remove_dir(d);
            }
        }
    }
}
