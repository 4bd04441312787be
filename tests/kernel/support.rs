//! What every kernel-tier test needs first: root (checked, never
//! skipped), unique names for its namespaces and cgroups, and processes
//! started inside a namespace and a cgroup.

use std::collections::hash_map::DefaultHasher;
use std::fs::{File, OpenOptions};
use std::hash::{Hash, Hasher};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU64, Ordering};

/// Panics unless the test runs with euid 0. Tests that need root never
/// silently skip: a skipped test would look like a passing one.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    if euid != 0 {
        panic!(
            "this test needs root (it creates network namespaces, cgroups and eBPF programs); run it as root"
        );
    }
}

/// A short (at most 8 characters, `[0-9a-z]`) tag that is unique per
/// process and call, for namespace and cgroup names.
///
/// It is the process id in base 36 followed by base-36 digits of a hash of
/// `test` and a process-wide call counter (so two calls with the same name
/// in one process still differ).
pub fn unique_tag(test: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let mut h = DefaultHasher::new();
    test.hash(&mut h);
    n.hash(&mut h);
    let mut tag = base36(u64::from(std::process::id()));
    // pid_max is at most 2^22 (5 base-36 digits), so at least 3 hash digits.
    tag.truncate(5);
    let hash = base36(h.finish());
    let want = 8 - tag.len();
    // base36 of a u64 has up to 13 digits; take the low-order ones.
    let hash = format!("{hash:0>13}");
    tag.push_str(&hash[hash.len() - want..]);
    tag
}

fn base36(mut v: u64) -> String {
    const DIGITS: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut out = Vec::new();
    loop {
        out.push(DIGITS[(v % 36) as usize]);
        v /= 36;
        if v == 0 {
            break;
        }
    }
    out.reverse();
    String::from_utf8(out).expect("ascii")
}

/// A [`Command`] for `program` whose child process, after fork and
/// **before exec** (via [`CommandExt::pre_exec`]), enters the network
/// namespace `netns` (setns(CLONE_NEWNET) on an fd opened by the parent) and
/// joins the cgroup directory `cgroup` (writes "0" to its `cgroup.procs`).
/// Because both happen before exec, the program itself runs unmodified
/// inside them from its very first instruction: every socket it opens
/// belongs to `netns`, and eBPF cgroup programs attached to `cgroup` see it.
///
/// Unlike `ip netns exec`, this does not remount /sys, so the child still
/// sees the cgroup2 and bpf file systems.
///
/// Panics if the namespace file or `cgroup.procs` cannot be opened.
pub fn command_in(netns: Option<&Path>, cgroup: Option<&Path>, program: &str) -> Command {
    let ns_fd: Option<OwnedFd> = netns.map(|p| {
        File::open(p)
            .unwrap_or_else(|e| panic!("command_in: open netns {}: {e}", p.display()))
            .into()
    });
    let procs_fd: Option<OwnedFd> = cgroup.map(|p| {
        let procs = p.join("cgroup.procs");
        OpenOptions::new()
            .write(true)
            .open(&procs)
            .unwrap_or_else(|e| panic!("command_in: open {}: {e}", procs.display()))
            .into()
    });
    let mut cmd = Command::new(program);
    // SAFETY: the closure runs in the forked child before exec, where only
    // async-signal-safe operations are allowed. It performs only the raw
    // `setns` and `write` system calls on file descriptors opened by the
    // parent (kept alive by the closure, which the Command owns) and reads
    // errno; it does not allocate or take locks.
    unsafe {
        cmd.pre_exec(move || {
            if let Some(fd) = &ns_fd {
                if libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            if let Some(fd) = &procs_fd {
                let buf = b"0";
                if libc::write(fd.as_raw_fd(), buf.as_ptr().cast(), buf.len()) != 1 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    cmd
}

/// Runs a command to completion; panics with its stderr if it fails.
pub fn run_checked(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    if !out.status.success() {
        panic!(
            "{cmd:?} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim(),
            String::from_utf8_lossy(&out.stdout).trim()
        );
    }
    out
}
