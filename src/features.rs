//! Probes every kernel feature sockwarden relies on, so a kernel that lacks
//! one is refused at startup with a sentence naming it, instead of failing
//! halfway through loading. `sockwarden features` prints the probe.
//!
//! Program types, map types and helpers are probed by libbpf (it loads a
//! trivial program or creates a small map). "Since" is the mainline version
//! that introduced the feature for that program type, where known.
//!
//! Some features are optional: sockwarden runs without them and closes
//! less (the BPF LSM, which refuses AF_PACKET sockets); `require` ignores
//! them.

use std::fmt::Write as _;
use std::path::Path;

use libbpf_rs::libbpf_sys as sys;

/// One feature and whether this kernel has it.
#[derive(Debug, Clone)]
pub struct Feature {
    pub name: &'static str,
    /// Mainline version that introduced it (for this program type), if known.
    pub since: Option<&'static str>,
    /// What sockwarden uses it for.
    pub used_for: &'static str,
    /// Ok(true) present, Ok(false) absent, Err(probe failure).
    pub present: Result<bool, String>,
    /// Startup refuses a kernel without it.
    pub required: bool,
}

enum Probe {
    Prog(sys::bpf_prog_type),
    /// A program type loaded for one attach point (libbpf has no probe for
    /// that: the kernel refuses an attach type it does not know at load).
    Attach(sys::bpf_prog_type, sys::bpf_attach_type),
    Map(sys::bpf_map_type),
    Helper(sys::bpf_prog_type, sys::bpf_func_id),
    Path(&'static str),
    /// A probe of its own.
    Fn(fn() -> Result<bool, String>),
}

/// Where securityfs lists the active LSMs.
const SECURITYFS: &str = "/sys/kernel/security";
/// statfs(2) f_type of securityfs.
const SECURITYFS_MAGIC: i64 = 0x7363_6673;

/// Whether the kernel has kTLS: the `tls` upper-layer protocol. Setting
/// TCP_ULP "tls" on an unconnected socket loads the module where it is one
/// and then fails with ENOTCONN (the ULP exists, the socket is not
/// connected); without kTLS it fails with ENOENT.
pub fn ktls_available() -> Result<bool, String> {
    use nix::sys::socket::{socket, AddressFamily, SockFlag, SockType};
    let fd = socket(
        AddressFamily::Inet,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(|e| format!("socket: {e}"))?;
    let name = b"tls";
    // SAFETY: a valid fd, and a byte buffer whose length is passed.
    let rc = unsafe {
        libc::setsockopt(
            std::os::fd::AsRawFd::as_raw_fd(&fd),
            libc::SOL_TCP,
            libc::TCP_ULP,
            name.as_ptr().cast(),
            name.len() as libc::socklen_t,
        )
    };
    let err = std::io::Error::last_os_error();
    match (rc, err.raw_os_error()) {
        (0, _) | (_, Some(libc::ENOTCONN)) => Ok(true),
        (_, Some(libc::ENOENT)) => Ok(false),
        _ => Err(format!("setsockopt(TCP_ULP, \"tls\"): {err}")),
    }
}

/// Whether an `lsm` list (/sys/kernel/security/lsm: comma-separated names,
/// in calling order) names the BPF LSM.
fn lsm_list_has_bpf(list: &str) -> bool {
    list.trim().split(',').any(|name| name.trim() == "bpf")
}

/// Whether the BPF LSM is among the LSMs the kernel runs: `bpf` is in
/// /sys/kernel/security/lsm (the `lsm=` boot parameter or CONFIG_LSM).
/// securityfs is mounted there first if it is not. Only then do BPF LSM
/// programs run: the program type loads and attaches on kernels built with
/// it even where it is not in the list, and then refuses nothing.
pub fn bpf_lsm_listed() -> Result<bool, String> {
    let dir = Path::new(SECURITYFS);
    let mounted = |p: &Path| {
        nix::sys::statfs::statfs(p).is_ok_and(|s| s.filesystem_type().0 == SECURITYFS_MAGIC)
    };
    if !mounted(dir) {
        nix::mount::mount(
            Some("none"),
            dir,
            Some("securityfs"),
            nix::mount::MsFlags::empty(),
            None::<&str>,
        )
        .map_err(|e| format!("mounting securityfs on {SECURITYFS}: {e}"))?;
    }
    let list = dir.join("lsm");
    match std::fs::read_to_string(&list) {
        Ok(text) => Ok(lsm_list_has_bpf(&text)),
        // No list: a kernel without CONFIG_SECURITY, hence without the BPF LSM.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(format!("reading {}: {e}", list.display())),
    }
}

/// Loads `r0 = 1; exit` as `prog_type` for `attach` (and the kernel function
/// `attach_btf_id`, 0 for none): 1 if the kernel takes it, 0 if it refuses
/// it as invalid, -errno otherwise.
fn probe_attach(
    prog_type: sys::bpf_prog_type,
    attach: sys::bpf_attach_type,
    attach_btf_id: u32,
) -> i32 {
    let mut mov = sys::bpf_insn {
        code: 0xb7, // BPF_ALU64 | BPF_MOV | BPF_K
        imm: 1,
        ..Default::default()
    };
    mov.set_dst_reg(0);
    if attach_btf_id != 0 {
        // An LSM program returns 0 or -errno.
        mov.imm = 0;
    }
    let exit = sys::bpf_insn {
        code: 0x95, // BPF_JMP | BPF_EXIT
        ..Default::default()
    };
    let insns = [mov, exit];
    let mut opts = sys::bpf_prog_load_opts {
        sz: size_of::<sys::bpf_prog_load_opts>() as _,
        expected_attach_type: attach,
        attach_btf_id,
        ..Default::default()
    };
    // SAFETY: the name and license are NUL-terminated literals, `insns`
    // and `opts` outlive the call and `opts.sz` is its size; the returned
    // descriptor is ours and closed right away.
    let fd = unsafe {
        sys::bpf_prog_load(
            prog_type,
            c"sw_probe".as_ptr(),
            c"GPL".as_ptr(),
            insns.as_ptr(),
            insns.len() as _,
            &mut opts,
        )
    };
    if fd >= 0 {
        // SAFETY: fd is a descriptor this function just received and owns.
        drop(unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) });
        1
    } else if fd == -libc::EINVAL {
        0
    } else {
        fd
    }
}

fn run(p: &Probe) -> Result<bool, String> {
    // SAFETY: the libbpf probes take a type id and an optional options
    // pointer (NULL is documented as "no options"); they only create and
    // close kernel objects of their own.
    let rc = unsafe {
        match *p {
            Probe::Prog(t) => sys::libbpf_probe_bpf_prog_type(t, std::ptr::null()),
            Probe::Attach(t, a) => probe_attach(t, a, 0),
            Probe::Map(t) => sys::libbpf_probe_bpf_map_type(t, std::ptr::null()),
            Probe::Helper(t, h) => sys::libbpf_probe_bpf_helper(t, h, std::ptr::null()),
            Probe::Path(path) => return Ok(Path::new(path).exists()),
            Probe::Fn(f) => return f(),
        }
    };
    probe_result(rc)
}

/// A libbpf-style probe's answer (1 present, 0 absent, -errno unknown).
fn probe_result(rc: i32) -> Result<bool, String> {
    match rc {
        1 => Ok(true),
        0 => Ok(false),
        e => Err(nix::errno::Errno::from_raw(-e).to_string()),
    }
}

/// Whether the kernel loads a BPF_PROG_TYPE_LSM program for the
/// socket_create hook (CONFIG_BPF_LSM: the hook's `bpf_lsm_socket_create`
/// is in the kernel's BTF); the error when the load fails otherwise than as
/// invalid (EPERM). It refuses anything only where [`bpf_lsm_listed`].
/// (libbpf's own probe of the type reads every error but the one it
/// expects, EPERM included, as "absent".)
pub fn lsm_program_type() -> Result<bool, String> {
    // SAFETY: btf__load_vmlinux_btf takes no arguments and returns a BTF
    // object we own (or NULL with errno set).
    let btf = unsafe { sys::btf__load_vmlinux_btf() };
    if btf.is_null() {
        return Err(format!(
            "loading the kernel's BTF: {}",
            std::io::Error::last_os_error()
        ));
    }
    // SAFETY: `btf` is the valid object loaded above and the name a
    // NUL-terminated literal; the object is freed once, right after.
    let id = unsafe {
        let id =
            sys::btf__find_by_name_kind(btf, c"bpf_lsm_socket_create".as_ptr(), sys::BTF_KIND_FUNC);
        sys::btf__free(btf);
        id
    };
    if id <= 0 {
        return Ok(false);
    }
    probe_result(probe_attach(
        sys::BPF_PROG_TYPE_LSM,
        sys::BPF_LSM_MAC,
        id as u32,
    ))
}

/// Every feature, probed now.
pub fn probe() -> Vec<Feature> {
    use sys::*;
    let table: &[(&'static str, Option<&'static str>, &'static str, Probe)] = &[
        (
            "kernel BTF (/sys/kernel/btf/vmlinux)",
            Some("5.4"),
            "CO-RE relocations",
            Probe::Path("/sys/kernel/btf/vmlinux"),
        ),
        (
            "program type cgroup_sock_addr",
            Some("4.17"),
            "connect4/connect6: the enforcement point",
            Probe::Prog(BPF_PROG_TYPE_CGROUP_SOCK_ADDR),
        ),
        (
            "program type sock_ops",
            Some("4.13"),
            "original destinations and the tuple map",
            Probe::Prog(BPF_PROG_TYPE_SOCK_OPS),
        ),
        (
            "program type sched_cls (tc)",
            Some("4.1"),
            "return path of the preserve source modes",
            Probe::Prog(BPF_PROG_TYPE_SCHED_CLS),
        ),
        (
            "attach type cgroup/sock_release",
            Some("5.9"),
            "giving back a closed socket's connection slot and original destination",
            Probe::Attach(BPF_PROG_TYPE_CGROUP_SOCK, BPF_CGROUP_INET_SOCK_RELEASE),
        ),
        (
            "attach type cgroup/sendmsg4, sendmsg6",
            Some("4.18"),
            "UDP sendto()/sendmsg() judged by rule",
            Probe::Attach(BPF_PROG_TYPE_CGROUP_SOCK_ADDR, BPF_CGROUP_UDP4_SENDMSG),
        ),
        (
            "attach type cgroup/sock_create",
            Some("4.10"),
            "raw and other inet sockets refused at socket()",
            Probe::Attach(BPF_PROG_TYPE_CGROUP_SOCK, BPF_CGROUP_INET_SOCK_CREATE),
        ),
        (
            "program type cgroup_skb",
            Some("4.10"),
            "the egress wall: packets of no allowed flow dropped",
            Probe::Prog(BPF_PROG_TYPE_CGROUP_SKB),
        ),
        (
            "helper skb_ancestor_cgroup_id in cgroup_skb",
            Some("4.19"),
            "the egress wall: policy cgroup of a packet's socket",
            Probe::Helper(BPF_PROG_TYPE_CGROUP_SKB, BPF_FUNC_skb_ancestor_cgroup_id),
        ),
        (
            "helper sk_fullsock in cgroup_skb",
            Some("5.1"),
            "the egress wall: a packet's socket type and protocol",
            Probe::Helper(BPF_PROG_TYPE_CGROUP_SKB, BPF_FUNC_sk_fullsock),
        ),
        (
            "program type sk_msg",
            Some("4.17"),
            "sockmap engine: workload bytes into the proxy's socket",
            Probe::Prog(BPF_PROG_TYPE_SK_MSG),
        ),
        (
            "map type hash",
            Some("3.19"),
            "policy cgroups, original destinations",
            Probe::Map(BPF_MAP_TYPE_HASH),
        ),
        (
            "map type array",
            Some("3.19"),
            "per-policy connection counts",
            Probe::Map(BPF_MAP_TYPE_ARRAY),
        ),
        (
            "map type per-CPU hash",
            Some("4.6"),
            "connect() and refusal counters",
            Probe::Map(BPF_MAP_TYPE_PERCPU_HASH),
        ),
        (
            "map type LRU hash",
            Some("4.10"),
            "tuple map, sockmap read reports",
            Probe::Map(BPF_MAP_TYPE_LRU_HASH),
        ),
        (
            "map type LPM trie",
            Some("4.11"),
            "policy rules by prefix",
            Probe::Map(BPF_MAP_TYPE_LPM_TRIE),
        ),
        (
            "map type socket storage",
            Some("5.2"),
            "per-socket roles and pending redirects",
            Probe::Map(BPF_MAP_TYPE_SK_STORAGE),
        ),
        (
            "map type sockhash",
            Some("4.18"),
            "sockmap engine: linked sockets",
            Probe::Map(BPF_MAP_TYPE_SOCKHASH),
        ),
        (
            "map type per-CPU array",
            Some("4.6"),
            "sockmap engine counters",
            Probe::Map(BPF_MAP_TYPE_PERCPU_ARRAY),
        ),
        (
            "map type ring buffer",
            Some("5.8"),
            "events: denied connects, redirects that never reached the listener",
            Probe::Map(BPF_MAP_TYPE_RINGBUF),
        ),
        (
            "helper ringbuf_reserve in cgroup_sock_addr",
            Some("5.8"),
            "events of denied connects and UDP sends",
            Probe::Helper(BPF_PROG_TYPE_CGROUP_SOCK_ADDR, BPF_FUNC_ringbuf_reserve),
        ),
        (
            "helper get_current_pid_tgid in cgroup_sock_addr",
            Some("6.1"),
            "the caller's pid in events of denied connects",
            Probe::Helper(
                BPF_PROG_TYPE_CGROUP_SOCK_ADDR,
                BPF_FUNC_get_current_pid_tgid,
            ),
        ),
        (
            "helper get_current_comm in cgroup_sock_addr",
            Some("6.1"),
            "the caller's command in events of denied connects",
            Probe::Helper(BPF_PROG_TYPE_CGROUP_SOCK_ADDR, BPF_FUNC_get_current_comm),
        ),
        (
            "helper get_current_comm in cgroup_sock",
            Some("6.1"),
            "events of redirects that never reached the listener (sock_release)",
            Probe::Helper(BPF_PROG_TYPE_CGROUP_SOCK, BPF_FUNC_get_current_comm),
        ),
        (
            "helper get_current_ancestor_cgroup_id in cgroup_sock_addr",
            None,
            "policy cgroup of the caller",
            Probe::Helper(
                BPF_PROG_TYPE_CGROUP_SOCK_ADDR,
                BPF_FUNC_get_current_ancestor_cgroup_id,
            ),
        ),
        (
            "helper set_retval in cgroup_sock_addr",
            Some("6.1"),
            "ECONNREFUSED past a policy's max_connections",
            Probe::Helper(BPF_PROG_TYPE_CGROUP_SOCK_ADDR, BPF_FUNC_set_retval),
        ),
        (
            "helper get_netns_cookie in cgroup_sock_addr",
            Some("5.7"),
            "workload namespace in the access log",
            Probe::Helper(BPF_PROG_TYPE_CGROUP_SOCK_ADDR, BPF_FUNC_get_netns_cookie),
        ),
        (
            "helper sk_storage_get in cgroup_sock_addr",
            None,
            "marking enforced sockets, pending redirects",
            Probe::Helper(BPF_PROG_TYPE_CGROUP_SOCK_ADDR, BPF_FUNC_sk_storage_get),
        ),
        (
            "helper sk_storage_get in cgroup_sock",
            None,
            "sock_release: what a closed socket holds",
            Probe::Helper(BPF_PROG_TYPE_CGROUP_SOCK, BPF_FUNC_sk_storage_get),
        ),
        (
            "helper get_socket_cookie in sock_ops",
            None,
            "tuple map values, sockmap keys",
            Probe::Helper(BPF_PROG_TYPE_SOCK_OPS, BPF_FUNC_get_socket_cookie),
        ),
        (
            "helper get_netns_cookie in sock_ops",
            Some("5.15"),
            "tuple map keys",
            Probe::Helper(BPF_PROG_TYPE_SOCK_OPS, BPF_FUNC_get_netns_cookie),
        ),
        (
            "helper sk_storage_get in sock_ops",
            None,
            "reading socket roles",
            Probe::Helper(BPF_PROG_TYPE_SOCK_OPS, BPF_FUNC_sk_storage_get),
        ),
        (
            "helper sock_ops_cb_flags_set",
            Some("4.16"),
            "the TCP state callback",
            Probe::Helper(BPF_PROG_TYPE_SOCK_OPS, BPF_FUNC_sock_ops_cb_flags_set),
        ),
        (
            "helper ktime_get_boot_ns in sock_ops",
            Some("5.8"),
            "TIME_WAIT ages",
            Probe::Helper(BPF_PROG_TYPE_SOCK_OPS, BPF_FUNC_ktime_get_boot_ns),
        ),
        (
            "helper sock_hash_update in sock_ops",
            Some("4.18"),
            "sockmap engine: linking sockets",
            Probe::Helper(BPF_PROG_TYPE_SOCK_OPS, BPF_FUNC_sock_hash_update),
        ),
        (
            "helper msg_redirect_hash in sk_msg",
            Some("4.18"),
            "sockmap engine: the redirect",
            Probe::Helper(BPF_PROG_TYPE_SK_MSG, BPF_FUNC_msg_redirect_hash),
        ),
        (
            "helper sk_storage_get in sk_msg",
            None,
            "sockmap engine: per-socket path",
            Probe::Helper(BPF_PROG_TYPE_SK_MSG, BPF_FUNC_sk_storage_get),
        ),
        (
            "helper skc_to_tcp_sock in sk_msg",
            None,
            "sockmap engine: the first message's path",
            Probe::Helper(BPF_PROG_TYPE_SK_MSG, BPF_FUNC_skc_to_tcp_sock),
        ),
        (
            "helper skc_lookup_tcp in tc",
            Some("5.2"),
            "return path of the preserve source modes",
            Probe::Helper(BPF_PROG_TYPE_SCHED_CLS, BPF_FUNC_skc_lookup_tcp),
        ),
    ];
    let optional: &[(&'static str, Option<&'static str>, &'static str, Probe)] = &[
        (
            "BPF LSM active (bpf in /sys/kernel/security/lsm)",
            Some("5.7"),
            "refuses AF_PACKET sockets from policy cgroups (without it, enforced workloads must not hold CAP_NET_RAW)",
            Probe::Fn(bpf_lsm_listed),
        ),
        (
            "program type lsm (lsm/socket_create)",
            Some("5.7"),
            "the AF_PACKET refusal (lsm/socket_create)",
            Probe::Fn(lsm_program_type),
        ),
        (
            "kTLS (TCP_ULP tls)",
            Some("4.13"),
            "reported only for now: intercepted and originated TLS bodies are copied through userspace (docs/tls.md)",
            Probe::Fn(ktls_available),
        ),
    ];
    let feature = |required| {
        move |(name, since, used_for, p): &(&'static str, _, &'static str, Probe)| Feature {
            name,
            since: *since,
            used_for,
            present: run(p),
            required,
        }
    };
    table
        .iter()
        .map(feature(true))
        .chain(optional.iter().map(feature(false)))
        .collect()
}

/// The probe as a table, for `sockwarden features`: the required features,
/// then (after a blank line) the optional ones.
pub fn table(features: &[Feature]) -> String {
    let mut out = String::new();
    for (required, title) in [
        (true, "FEATURE"),
        (false, "OPTIONAL FEATURE (sockwarden runs without it)"),
    ] {
        let rows: Vec<&Feature> = features.iter().filter(|f| f.required == required).collect();
        if rows.is_empty() {
            continue;
        }
        if !out.is_empty() {
            out.push('\n');
        }
        let _ = writeln!(
            out,
            "{:<60} {:<8} {:<7} USED FOR",
            title, "PRESENT", "SINCE"
        );
        for f in rows {
            let present = match &f.present {
                Ok(true) => "yes".to_string(),
                Ok(false) if f.required => "NO".to_string(),
                Ok(false) => "no".to_string(),
                Err(e) => format!("? ({e})"),
            };
            let _ = writeln!(
                out,
                "{:<60} {:<8} {:<7} {}",
                f.name,
                present,
                f.since.unwrap_or("-"),
                f.used_for
            );
        }
    }
    out
}

#[derive(Debug, thiserror::Error)]
#[error("this kernel lacks {name}{since}, which sockwarden needs for {used_for} (see `sockwarden features`)")]
pub struct MissingFeature {
    pub name: &'static str,
    pub since: String,
    pub used_for: &'static str,
}

/// The first required feature this kernel lacks, as an error; probe
/// failures (for example a lack of privilege) are left to the loader's own
/// errors.
pub fn require(features: &[Feature]) -> Result<(), MissingFeature> {
    match features
        .iter()
        .find(|f| f.required && matches!(f.present, Ok(false)))
    {
        Some(f) => Err(MissingFeature {
            name: f.name,
            since: f
                .since
                .map_or_else(String::new, |v| format!(" (Linux {v})")),
            used_for: f.used_for,
        }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_feature_is_one_sentence_naming_it() {
        let features = vec![
            Feature {
                name: "map type LPM trie",
                since: Some("4.11"),
                used_for: "policy rules by prefix",
                present: Ok(true),
                required: true,
            },
            Feature {
                name: "helper skc_lookup_tcp in tc",
                since: Some("5.2"),
                used_for: "return path of the preserve source modes",
                present: Ok(false),
                required: true,
            },
        ];
        let err = require(&features).unwrap_err().to_string();
        assert_eq!(
            err,
            "this kernel lacks helper skc_lookup_tcp in tc (Linux 5.2), which sockwarden needs \
             for return path of the preserve source modes (see `sockwarden features`)"
        );
        assert!(require(&features[..1]).is_ok());
        let t = table(&features);
        assert!(t.contains("NO"), "{t}");
    }

    #[test]
    fn an_optional_feature_never_stops_startup() {
        let lsm = Feature {
            name: "BPF LSM active (bpf in /sys/kernel/security/lsm)",
            since: Some("5.7"),
            used_for: "refuses AF_PACKET sockets from policy cgroups",
            present: Ok(false),
            required: false,
        };
        let btf = Feature {
            name: "kernel BTF (/sys/kernel/btf/vmlinux)",
            since: Some("5.4"),
            used_for: "CO-RE relocations",
            present: Ok(true),
            required: true,
        };
        let both = [btf, lsm];
        assert!(require(&both).is_ok());
        let t = table(&both);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 5, "{t}");
        assert!(lines[0].starts_with("FEATURE "), "{t}");
        assert!(lines[1].starts_with("kernel BTF"), "{t}");
        assert_eq!(lines[2], "", "{t}");
        assert!(lines[3].starts_with("OPTIONAL FEATURE "), "{t}");
        assert!(lines[4].contains(" no "), "{t}");
        assert!(!lines[4].contains("NO"), "{t}");
        assert!(
            lines[4].ends_with("refuses AF_PACKET sockets from policy cgroups"),
            "{t}"
        );
    }

    #[test]
    fn lsm_lists() {
        for (list, bpf) in [
            ("lockdown,capability,landlock,bpf\n", true),
            ("capability,bpf,apparmor", true),
            ("lockdown,capability,landlock,yama,apparmor\n", false),
            ("capability,bpfilter", false),
            ("", false),
        ] {
            assert_eq!(lsm_list_has_bpf(list), bpf, "{list:?}");
        }
    }
}
