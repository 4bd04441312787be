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
//!
//! A probe the kernel refuses for want of privilege is not a missing
//! feature: EPERM or EACCES, or an "unknown" answer while this process
//! lacks a capability the kernel checks first (it hides program types and
//! helpers from those who may not use them), is reported as "not
//! permitted", naming the capabilities the effective set lacks
//! ([`classify`]).

use std::fmt::Write as _;
use std::path::Path;

use libbpf_rs::libbpf_sys as sys;

use crate::caps::{self, Cap};

/// One feature and whether this kernel has it.
#[derive(Debug, Clone)]
pub struct Feature {
    pub name: &'static str,
    /// Mainline version that introduced it (for this program type), if known.
    pub since: Option<&'static str>,
    /// What sockwarden uses it for.
    pub used_for: &'static str,
    pub present: Presence,
    /// Startup refuses a kernel without it.
    pub required: bool,
}

/// What a probe found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Presence {
    Present,
    /// Refused as unknown or invalid, every capability the probe needs held.
    Missing,
    /// Refused for want of privilege: `lacking` are the capabilities of
    /// `needs` this process does not hold. Empty: it holds them all and was
    /// refused anyway (`errno`), by the kernel's lockdown, a security
    /// module or a system call filter.
    NotPermitted {
        needs: &'static [Cap],
        lacking: Vec<Cap>,
        errno: Option<nix::errno::Errno>,
    },
    /// The probe failed otherwise.
    Unknown(String),
}

/// The kernel's own "not supported" (include/linux/errno.h), which libc
/// does not name.
const ENOTSUPP: i32 = 524;

/// A probe's answer (1 present, 0 or -EINVAL/-E2BIG/-EOPNOTSUPP/-ENOTSUPP
/// refused as unknown, -EPERM/-EACCES refused, any other -errno a failure)
/// judged against the capabilities it `needs` and the `effective` set.
pub fn classify(rc: i32, needs: &'static [Cap], effective: u64) -> Presence {
    let lacking = caps::lacking(needs, effective);
    match -rc {
        -1 => Presence::Present,
        libc::EPERM | libc::EACCES => Presence::NotPermitted {
            needs,
            lacking,
            errno: Some(nix::errno::Errno::from_raw(-rc)),
        },
        0 | libc::EINVAL | libc::E2BIG | libc::EOPNOTSUPP | ENOTSUPP => {
            if lacking.is_empty() {
                Presence::Missing
            } else {
                Presence::NotPermitted {
                    needs,
                    lacking,
                    errno: None,
                }
            }
        }
        e => Presence::Unknown(nix::errno::Errno::from_raw(e).to_string()),
    }
}

impl Presence {
    /// The PRESENT cell of `sockwarden features`.
    fn cell(&self, required: bool) -> String {
        match self {
            Presence::Present => "yes".into(),
            Presence::Missing if required => "NO".into(),
            Presence::Missing => "no".into(),
            Presence::NotPermitted { lacking, .. } if !lacking.is_empty() => format!(
                "not permitted (needs {}: run as root or under the unit)",
                caps::names(lacking)
            ),
            Presence::NotPermitted { needs, errno, .. } => format!(
                "not permitted ({} although {} {} held: the kernel's lockdown, a security module or a system call filter)",
                errno.map_or_else(|| "refused".into(), |e| format!("{e:?}")),
                caps::names(needs),
                if needs.len() == 1 { "is" } else { "are" }
            ),
            Presence::Unknown(e) => format!("? ({e})"),
        }
    }
}

enum Probe {
    Prog(sys::bpf_prog_type),
    /// A program type loaded for one attach point (libbpf has no probe for
    /// that: the kernel refuses an attach type it does not know at load).
    Attach(sys::bpf_prog_type, sys::bpf_attach_type),
    Map(sys::bpf_map_type),
    Helper(sys::bpf_prog_type, sys::bpf_func_id),
    Path(&'static str),
    /// A probe of its own, answering as the others (1, 0, -errno), and the
    /// capabilities it needs.
    Fn(fn() -> Result<i32, String>, &'static [Cap]),
}

/// What loading a program of type `t` takes (kernel/bpf/syscall.c:
/// is_net_admin_prog_type, is_perfmon_prog_type; cgroup_skb is the one of
/// ours open to CAP_BPF alone).
fn prog_needs(t: sys::bpf_prog_type) -> &'static [Cap] {
    match t {
        sys::BPF_PROG_TYPE_CGROUP_SKB => &[Cap::Bpf],
        sys::BPF_PROG_TYPE_LSM => &[Cap::Bpf, Cap::Perfmon],
        _ => &[Cap::Bpf, Cap::NetAdmin],
    }
}

/// The capabilities a probe needs: its program type's; CAP_PERFMON more
/// for the helpers that hand out kernel pointers (net/core/filter.c:
/// bpf_sk_base_func_proto gates skc_to_* on it); CAP_NET_ADMIN more for
/// socket maps (kernel/bpf/syscall.c: map_create).
fn needs(p: &Probe) -> &'static [Cap] {
    match *p {
        Probe::Prog(t) | Probe::Attach(t, _) => prog_needs(t),
        Probe::Helper(_, sys::BPF_FUNC_skc_to_tcp_sock) => &[Cap::Bpf, Cap::NetAdmin, Cap::Perfmon],
        // Measured (6.18): the verifier refuses get_current_comm in cgroup
        // programs without CAP_PERFMON (service::each_capability_… test).
        Probe::Helper(_, sys::BPF_FUNC_get_current_comm) => {
            &[Cap::Bpf, Cap::NetAdmin, Cap::Perfmon]
        }
        Probe::Helper(t, _) => prog_needs(t),
        Probe::Map(sys::BPF_MAP_TYPE_SOCKHASH) => &[Cap::Bpf, Cap::NetAdmin],
        Probe::Map(_) => &[Cap::Bpf],
        Probe::Path(_) => &[],
        Probe::Fn(_, needs) => needs,
    }
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
/// it as invalid, -errno otherwise (EPERM among them: libbpf's own probe of
/// a program type reads every failure as absent).
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

/// A program type as libbpf probes it: cgroup_sock_addr needs an attach
/// type at load.
fn probe_prog(t: sys::bpf_prog_type) -> i32 {
    let attach = match t {
        sys::BPF_PROG_TYPE_CGROUP_SOCK_ADDR => sys::BPF_CGROUP_INET4_CONNECT,
        _ => 0,
    };
    probe_attach(t, attach, 0)
}

fn run(p: &Probe, effective: u64) -> Presence {
    let rc = match *p {
        Probe::Prog(t) => probe_prog(t),
        Probe::Attach(t, a) => probe_attach(t, a, 0),
        // SAFETY: libbpf's probe takes a type id and an optional options
        // pointer (NULL is documented as "no options"); it only creates
        // and closes a map of its own.
        Probe::Map(t) => unsafe { sys::libbpf_probe_bpf_map_type(t, std::ptr::null()) },
        // libbpf's helper probe reads a load refused before the verifier
        // ran (EPERM, no log) as "supported": the program type is loaded
        // first, so a refusal is seen as one.
        Probe::Helper(t, h) => match probe_prog(t) {
            // SAFETY: as for the map probe; it loads and closes a program.
            1 => unsafe { sys::libbpf_probe_bpf_helper(t, h, std::ptr::null()) },
            refused => refused,
        },
        Probe::Path(path) => i32::from(Path::new(path).exists()),
        Probe::Fn(f, _) => match f() {
            Ok(rc) => rc,
            Err(e) => return Presence::Unknown(e),
        },
    };
    classify(rc, needs(p), effective)
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
    lsm_probe().and_then(probe_result)
}

/// [`lsm_program_type`]'s load as a probe answer (1, 0, -errno).
fn lsm_probe() -> Result<i32, String> {
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
        return Ok(0);
    }
    Ok(probe_attach(
        sys::BPF_PROG_TYPE_LSM,
        sys::BPF_LSM_MAC,
        id as u32,
    ))
}

/// Every feature, probed now, judged against this thread's effective
/// capabilities (unreadable: all held, so only EPERM and EACCES say "not
/// permitted").
pub fn probe() -> Vec<Feature> {
    use sys::*;
    let effective = caps::own_effective().unwrap_or(u64::MAX);
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
            Probe::Fn(|| bpf_lsm_listed().map(i32::from), &[]),
        ),
        (
            "program type lsm (lsm/socket_create)",
            Some("5.7"),
            "the AF_PACKET refusal (lsm/socket_create)",
            Probe::Fn(lsm_probe, &[Cap::Bpf, Cap::Perfmon]),
        ),
        (
            "kTLS (TCP_ULP tls)",
            Some("4.13"),
            "reported only for now: intercepted and originated TLS bodies are copied through userspace (docs/tls.md)",
            // Without CAP_NET_ADMIN the kernel does not load the module.
            Probe::Fn(|| ktls_available().map(i32::from), &[Cap::NetAdmin]),
        ),
    ];
    let feature = |required| {
        move |(name, since, used_for, p): &(&'static str, _, &'static str, Probe)| Feature {
            name,
            since: *since,
            used_for,
            present: run(p, effective),
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
            let _ = writeln!(
                out,
                "{:<60} {:<8} {:<7} {}",
                f.name,
                f.present.cell(f.required),
                f.since.unwrap_or("-"),
                f.used_for
            );
        }
    }
    out
}

#[derive(Debug, thiserror::Error)]
pub enum FeatureError {
    #[error("this kernel lacks {name}{since}, which sockwarden needs for {used_for} (see `sockwarden features`)")]
    Missing {
        name: &'static str,
        since: String,
        used_for: &'static str,
    },
    #[error("not permitted: {name} needs {lacking}, which this process lacks (sockwarden needs it for {used_for}); run sockwarden as root or under its systemd unit, sockwarden.service (see `sockwarden features`)")]
    Lacking {
        name: &'static str,
        lacking: String,
        used_for: &'static str,
    },
    #[error("not permitted: {name} was refused ({errno}) although this process holds {needs} (sockwarden needs it for {used_for}): the kernel's lockdown, a security module or a system call filter refuses it (see `sockwarden features`)")]
    Refused {
        name: &'static str,
        errno: String,
        needs: String,
        used_for: &'static str,
    },
}

/// The first required feature this kernel lacks or this process may not
/// use, as an error; other probe failures are left to the loader's own
/// errors.
pub fn require(features: &[Feature]) -> Result<(), FeatureError> {
    for f in features.iter().filter(|f| f.required) {
        let (name, used_for) = (f.name, f.used_for);
        return Err(match &f.present {
            Presence::Present | Presence::Unknown(_) => continue,
            Presence::Missing => FeatureError::Missing {
                name,
                since: f
                    .since
                    .map_or_else(String::new, |v| format!(" (Linux {v})")),
                used_for,
            },
            Presence::NotPermitted { lacking, .. } if !lacking.is_empty() => {
                FeatureError::Lacking {
                    name,
                    lacking: caps::names(lacking),
                    used_for,
                }
            }
            Presence::NotPermitted { needs, errno, .. } => FeatureError::Refused {
                name,
                errno: errno.map_or_else(|| "refused".into(), |e| format!("{e:?}")),
                needs: caps::names(needs),
                used_for,
            },
        });
    }
    Ok(())
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
                present: Presence::Present,
                required: true,
            },
            Feature {
                name: "helper skc_lookup_tcp in tc",
                since: Some("5.2"),
                used_for: "return path of the preserve source modes",
                present: Presence::Missing,
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
            present: Presence::Missing,
            required: false,
        };
        let btf = Feature {
            name: "kernel BTF (/sys/kernel/btf/vmlinux)",
            since: Some("5.4"),
            used_for: "CO-RE relocations",
            present: Presence::Present,
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
    fn probe_answers_are_classified() {
        use Cap::*;
        const NET: &[Cap] = &[Bpf, NetAdmin];
        let all = u64::MAX;
        let unit = (1 << Bpf as u32) | (1 << NetAdmin as u32) | (1 << Perfmon as u32);
        let no_net = unit & !(1 << NetAdmin as u32);
        let not_permitted = |lacking: Vec<Cap>, errno| Presence::NotPermitted {
            needs: NET,
            lacking,
            errno,
        };
        for (rc, effective, want) in [
            (1, all, Presence::Present),
            // Success is success, whatever the set says.
            (1, 0, Presence::Present),
            (0, all, Presence::Missing),
            (-libc::EINVAL, unit, Presence::Missing),
            (-libc::E2BIG, unit, Presence::Missing),
            (-libc::EOPNOTSUPP, unit, Presence::Missing),
            (-ENOTSUPP, unit, Presence::Missing),
            // Unknown, but without what the kernel checks first: not a
            // missing feature.
            (0, 0, not_permitted(vec![Bpf, NetAdmin], None)),
            (-libc::EINVAL, no_net, not_permitted(vec![NetAdmin], None)),
            (
                -libc::EPERM,
                0,
                not_permitted(vec![Bpf, NetAdmin], Some(nix::errno::Errno::EPERM)),
            ),
            (
                -libc::EACCES,
                no_net,
                not_permitted(vec![NetAdmin], Some(nix::errno::Errno::EACCES)),
            ),
            // Refused with everything held: lockdown, a security module.
            (
                -libc::EPERM,
                unit,
                not_permitted(vec![], Some(nix::errno::Errno::EPERM)),
            ),
            // CAP_SYS_ADMIN stands in for the rest.
            (0, 1 << SysAdmin as u32, Presence::Missing),
            (
                -libc::ENOMEM,
                unit,
                Presence::Unknown("ENOMEM: Out of memory".into()),
            ),
        ] {
            assert_eq!(classify(rc, NET, effective), want, "{rc} {effective:x}");
        }
    }

    #[test]
    fn probes_need_what_the_kernel_checks() {
        use sys::*;
        use Cap::*;
        for (probe, want) in [
            (
                Probe::Prog(BPF_PROG_TYPE_CGROUP_SOCK_ADDR),
                &[Bpf, NetAdmin][..],
            ),
            (Probe::Prog(BPF_PROG_TYPE_SOCK_OPS), &[Bpf, NetAdmin]),
            (Probe::Prog(BPF_PROG_TYPE_SK_MSG), &[Bpf, NetAdmin]),
            (Probe::Prog(BPF_PROG_TYPE_CGROUP_SKB), &[Bpf]),
            (
                Probe::Attach(BPF_PROG_TYPE_CGROUP_SOCK, BPF_CGROUP_INET_SOCK_RELEASE),
                &[Bpf, NetAdmin],
            ),
            (
                Probe::Helper(BPF_PROG_TYPE_SK_MSG, BPF_FUNC_skc_to_tcp_sock),
                &[Bpf, NetAdmin, Perfmon],
            ),
            (
                Probe::Helper(BPF_PROG_TYPE_CGROUP_SKB, BPF_FUNC_sk_fullsock),
                &[Bpf],
            ),
            (
                Probe::Helper(BPF_PROG_TYPE_CGROUP_SOCK_ADDR, BPF_FUNC_get_current_comm),
                &[Bpf, NetAdmin, Perfmon],
            ),
            (Probe::Map(BPF_MAP_TYPE_HASH), &[Bpf]),
            (Probe::Map(BPF_MAP_TYPE_SOCKHASH), &[Bpf, NetAdmin]),
            (Probe::Path("/sys/kernel/btf/vmlinux"), &[]),
            (Probe::Fn(lsm_probe, &[Bpf, Perfmon]), &[Bpf, Perfmon]),
        ] {
            assert_eq!(needs(&probe), want);
        }
    }

    #[test]
    fn not_permitted_names_the_capability() {
        let feature = |present| Feature {
            name: "program type cgroup_sock_addr",
            since: Some("4.17"),
            used_for: "connect4/connect6: the enforcement point",
            present,
            required: true,
        };
        let unprivileged = [feature(Presence::NotPermitted {
            needs: &[Cap::Bpf, Cap::NetAdmin],
            lacking: vec![Cap::Bpf, Cap::NetAdmin],
            errno: Some(nix::errno::Errno::EPERM),
        })];
        let t = table(&unprivileged);
        assert!(
            t.lines().nth(1).is_some_and(|l| l.starts_with(
                "program type cgroup_sock_addr                                \
                 not permitted (needs CAP_BPF and CAP_NET_ADMIN: run as root or under the unit) 4.17 "
            )),
            "{t}"
        );
        assert_eq!(
            require(&unprivileged).unwrap_err().to_string(),
            "not permitted: program type cgroup_sock_addr needs CAP_BPF and CAP_NET_ADMIN, which \
             this process lacks (sockwarden needs it for connect4/connect6: the enforcement point); \
             run sockwarden as root or under its systemd unit, sockwarden.service (see `sockwarden features`)"
        );
        let locked = [feature(Presence::NotPermitted {
            needs: &[Cap::Bpf, Cap::NetAdmin],
            lacking: vec![],
            errno: Some(nix::errno::Errno::EPERM),
        })];
        assert!(
            table(&locked).contains(
                "not permitted (EPERM although CAP_BPF and CAP_NET_ADMIN are held: the kernel's lockdown, a security module or a system call filter)"
            ),
            "{}",
            table(&locked)
        );
        assert_eq!(
            require(&locked).unwrap_err().to_string(),
            "not permitted: program type cgroup_sock_addr was refused (EPERM) although this process \
             holds CAP_BPF and CAP_NET_ADMIN (sockwarden needs it for connect4/connect6: the \
             enforcement point): the kernel's lockdown, a security module or a system call filter refuses it (see `sockwarden features`)"
        );
        // An unknown failure is left to the loader; a missing feature after
        // a refused one is still reported, in table order.
        let mut later = feature(Presence::Missing);
        later.name = "map type LPM trie";
        let unknown = [feature(Presence::Unknown("EIO".into())), later];
        assert!(require(&unknown)
            .unwrap_err()
            .to_string()
            .starts_with("this kernel lacks map type LPM trie (Linux 4.17)"));
        assert!(require(&unknown[..1]).is_ok());
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
