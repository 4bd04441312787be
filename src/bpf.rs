//! Loading, attaching, pinning and reading sockwarden's eBPF programs.
//!
//! Programs are attached to the root of the cgroup2 hierarchy with bpf_links
//! that are pinned under `<pin_path>/links/`, and every map is pinned by name
//! under `<pin_path>/`. Pinned links keep enforcement in place if the process
//! dies (fail closed: redirected connects are refused instead of bypassing
//! policy); the next start removes such leftovers before loading.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsRawFd, BorrowedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use libbpf_rs::{Link, MapCore, MapFlags, MapHandle};

use crate::policy::kernel::{addr16, ConnectVerdict, RuleEntry};
use crate::policy::PolicyId;

pub(crate) mod skel;

pub use skel::abi;

/// statfs(2) f_type of bpffs.
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

#[derive(Debug, thiserror::Error)]
pub enum BpfError {
    #[error("{path} is not a bpf filesystem and mounting one there failed: {source}")]
    BpfFs { path: PathBuf, source: nix::Error },
    #[error("removing leftovers of an earlier run under {path}: {source}")]
    Leftovers {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("creating {path}: {source}")]
    CreateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("loading eBPF object {object}: {source} (a verifier rejection is explained in the log above; otherwise sockwarden lacks privileges: it needs root, or CAP_BPF, CAP_NET_ADMIN and CAP_SYS_ADMIN)")]
    Load {
        object: &'static str,
        source: libbpf_rs::Error,
    },
    #[error("opening cgroup {path}: {source}")]
    Cgroup {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("attaching {program} to cgroup {cgroup}: {source}")]
    Attach {
        program: &'static str,
        cgroup: PathBuf,
        source: libbpf_rs::Error,
    },
    #[error("attaching {program} to the BPF LSM hook: {source}")]
    AttachLsm {
        program: &'static str,
        source: libbpf_rs::Error,
    },
    #[error("attaching {program} to map {map}: {source}")]
    AttachMap {
        program: &'static str,
        map: &'static str,
        source: libbpf_rs::Error,
    },
    #[error("pinning {path}: {source}")]
    Pin {
        path: PathBuf,
        source: libbpf_rs::Error,
    },
    #[error("another sockwarden is running with pin path {pin_path} (it holds {lock}); stop it or give this one another bpf.pin_path")]
    InUse { pin_path: PathBuf, lock: PathBuf },
    #[error("eBPF objects loaded without their maps")]
    NotLoaded,
    #[error("map {map}: {op}: {source}")]
    Map {
        map: &'static str,
        op: &'static str,
        source: libbpf_rs::Error,
    },
}

/// Plain-old-data ABI types that may be viewed as bytes.
///
/// # Safety
/// Implementors are `#[repr(C)]`, `Copy`, have no padding and accept any bit
/// pattern (the C header asserts the sizes; so do the impls below).
unsafe trait Pod: Copy + Default {
    fn as_bytes(&self) -> &[u8] {
        // SAFETY: Pod types are repr(C) without padding: every byte is initialized.
        unsafe { std::slice::from_raw_parts((self as *const Self).cast::<u8>(), size_of::<Self>()) }
    }

    fn from_bytes(bytes: &[u8]) -> Option<Self> {
        if bytes.len() != size_of::<Self>() {
            return None;
        }
        // SAFETY: the length matches and any bit pattern is a valid value.
        Some(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<Self>()) })
    }
}

macro_rules! pod {
    ($($t:ty = $size:expr),* $(,)?) => {$(
        const _: () = assert!(size_of::<$t>() == $size);
        // SAFETY: generated from abi.h, where the size is asserted equal to the
        // sum of the fields (no padding); fields are integers and byte arrays.
        unsafe impl Pod for $t {}
    )*};
}

pod!(
    abi::sw_sock_info = 96,
    abi::sw_tuple_key = 48,
    abi::sw_tuple_value = 24,
    abi::sw_policy_ref = 8,
    abi::sw_rule_key = 28,
    abi::sw_rule_value = 4,
    abi::sw_orig_dst = 40,
    abi::sw_conn_key = 36,
    abi::sw_counter_key = 8,
    abi::sw_policy_conns = 16,
    abi::sw_conn_counter_key = 8,
);

/// What the kernel needs to know of the policy enforced on a cgroup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PolicyRef {
    pub id: PolicyId,
    /// ICMP echo sockets allowed.
    pub icmp: bool,
}

/// The original destination of a redirected connection, as the kernel saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OrigDst {
    pub dst: SocketAddr,
    pub policy_id: PolicyId,
    /// The workload socket's own cgroup id.
    pub cgroup_id: u64,
}

/// Where the proxy listens, as the kernel redirects to it.
#[derive(Debug, Clone, Copy)]
pub struct ProxyTarget {
    pub v4: SocketAddr,
    pub v6: SocketAddr,
}

/// What is loaded and attached besides the programs that always are.
#[derive(Debug, Clone, Copy)]
pub struct Programs {
    pub proxy: ProxyTarget,
    /// The sockmap engine: the proxy's network namespace cookie.
    pub sockmap: Option<u64>,
    /// The cgroup_skb/egress wall (off only under `testing.skip_egress_wall`).
    pub egress_wall: bool,
    /// lsm/socket_create, which refuses AF_PACKET sockets (where the BPF LSM is active).
    pub packet_lsm: bool,
}

/// The error for operation `op` on map `map`.
fn map_error(map: &'static str, op: &'static str) -> impl FnOnce(libbpf_rs::Error) -> BpfError {
    move |source| BpfError::Map { map, op, source }
}

fn ip_from16(a: [u8; 16]) -> IpAddr {
    let v6 = Ipv6Addr::from(a);
    v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4)
}

/// Handles on the pinned maps userspace reads and writes at run time.
#[derive(Debug)]
pub struct Maps {
    policy_cgroups: MapHandle,
    policy_rules: MapHandle,
    orig_dsts: MapHandle,
    policy_conns: MapHandle,
    conn_counters: MapHandle,
    verdict_counters: MapHandle,
    sock_roles: MapHandle,
    tuples: MapHandle,
    msg_counters: MapHandle,
    door_counters: MapHandle,
    sk_consumed: MapHandle,
}

/// How long a tuple stays in TIME_WAIT after an active close (Linux's fixed
/// TCP_TIMEWAIT_LEN).
pub const TIME_WAIT: Duration = Duration::from_secs(60);

/// Whose socket holds a tuple.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SockRole {
    Workload,
    Upstream,
    Other,
}

/// One entry of the in-use tuple map.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TupleEntry {
    pub netns_cookie: u64,
    pub src: SocketAddr,
    pub dst: SocketAddr,
    /// TCP state name (ESTABLISHED, TIME_WAIT, ...).
    pub state: &'static str,
    pub role: SockRole,
    pub cookie: u64,
    /// Time since the last state change.
    pub age: Duration,
}

impl TupleEntry {
    /// Whether the tuple is still held: every state but a TIME_WAIT older
    /// than [`TIME_WAIT`].
    pub fn in_use(&self) -> bool {
        self.state != "TIME_WAIT" || self.age < TIME_WAIT
    }
}

fn tcp_state_name(s: abi::sw_tcp_state) -> &'static str {
    use abi::sw_tcp_state as S;
    match s {
        S::SW_TCP_ESTABLISHED => "ESTABLISHED",
        S::SW_TCP_SYN_SENT => "SYN_SENT",
        S::SW_TCP_SYN_RECV => "SYN_RECV",
        S::SW_TCP_FIN_WAIT1 => "FIN_WAIT1",
        S::SW_TCP_FIN_WAIT2 => "FIN_WAIT2",
        S::SW_TCP_TIME_WAIT => "TIME_WAIT",
        S::SW_TCP_CLOSE => "CLOSE",
        S::SW_TCP_CLOSE_WAIT => "CLOSE_WAIT",
        S::SW_TCP_LAST_ACK => "LAST_ACK",
        S::SW_TCP_LISTEN => "LISTEN",
        S::SW_TCP_CLOSING => "CLOSING",
        _ => "UNKNOWN",
    }
}

/// CLOCK_BOOTTIME, the clock of bpf_ktime_get_boot_ns().
fn boot_ns() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME)
        .map(|t| t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64)
        .unwrap_or(0)
}

fn tuple_key(netns_cookie: u64, src: SocketAddr, dst: SocketAddr) -> abi::sw_tuple_key {
    abi::sw_tuple_key {
        netns_cookie,
        saddr: addr16(src.ip()),
        daddr: addr16(dst.ip()),
        sport: src.port(),
        dport: dst.port(),
        pad: 0,
    }
}

impl Maps {
    fn open(pin_path: &Path) -> Result<Maps, BpfError> {
        let open = |name: &'static str| {
            MapHandle::from_pinned_path(pin_path.join(name)).map_err(map_error(name, "open pinned"))
        };
        Ok(Maps {
            policy_cgroups: open("policy_cgroups")?,
            policy_rules: open("policy_rules")?,
            orig_dsts: open("orig_dsts")?,
            policy_conns: open("policy_conns")?,
            conn_counters: open("conn_counters")?,
            verdict_counters: open("verdict_counters")?,
            sock_roles: open("sock_roles")?,
            tuples: open("tuples")?,
            msg_counters: open("msg_counters")?,
            door_counters: open("door_counters")?,
            sk_consumed: open("sk_consumed")?,
        })
    }

    /// Opens the maps of a running instance, for `sockwarden tuples`.
    pub fn open_pinned(pin_path: &Path) -> Result<Maps, BpfError> {
        Maps::open(pin_path)
    }

    /// Marks a socket as one of the proxy's upstream sockets, so its tuple
    /// is tracked from connect() on. Call before connect().
    pub fn mark_upstream(&self, socket: BorrowedFd<'_>) -> Result<(), BpfError> {
        let info = abi::sw_sock_info {
            role: abi::sw_sock_role::SW_ROLE_UPSTREAM,
            ..Default::default()
        };
        self.sock_roles
            .update(
                &socket.as_raw_fd().to_ne_bytes(),
                info.as_bytes(),
                MapFlags::ANY,
            )
            .map_err(map_error("sock_roles", "update"))
    }

    /// Whether a socket in namespace `netns_cookie` holds `src -> dst`.
    pub fn tuple_in_use(
        &self,
        netns_cookie: u64,
        src: SocketAddr,
        dst: SocketAddr,
    ) -> Result<bool, BpfError> {
        let key = tuple_key(netns_cookie, src, dst);
        let value = self
            .tuples
            .lookup(key.as_bytes(), MapFlags::ANY)
            .map_err(map_error("tuples", "lookup"))?;
        Ok(value
            .as_deref()
            .and_then(abi::sw_tuple_value::from_bytes)
            .is_some_and(|v| entry(&key, &v, boot_ns()).in_use()))
    }

    /// Every entry of the in-use tuple map, with its raw key.
    fn tuple_entries(&self) -> Vec<(Vec<u8>, TupleEntry)> {
        let now = boot_ns();
        self.tuples
            .keys()
            .filter_map(|k| {
                let key = abi::sw_tuple_key::from_bytes(&k)?;
                let v = self.tuples.lookup(&k, MapFlags::ANY).ok()??;
                let value = abi::sw_tuple_value::from_bytes(&v)?;
                let e = entry(&key, &value, now);
                Some((k, e))
            })
            .collect()
    }

    /// Every entry of the in-use tuple map.
    pub fn tuples(&self) -> Vec<TupleEntry> {
        self.tuple_entries().into_iter().map(|(_, e)| e).collect()
    }

    /// Deletes TIME_WAIT entries older than [`TIME_WAIT`]; returns how many.
    pub fn expire_tuples(&self) -> usize {
        self.tuple_entries()
            .iter()
            .filter(|(k, e)| !e.in_use() && self.tuples.delete(k).is_ok())
            .count()
    }

    /// Enforces `policy` on the cgroup with id `cgroup_id`.
    pub fn set_policy_cgroup(&self, cgroup_id: u64, policy: PolicyRef) -> Result<(), BpfError> {
        let v = abi::sw_policy_ref {
            policy_id: policy.id,
            icmp: u32::from(policy.icmp),
        };
        self.policy_cgroups
            .update(&cgroup_id.to_ne_bytes(), v.as_bytes(), MapFlags::ANY)
            .map_err(map_error("policy_cgroups", "update"))
    }

    pub fn remove_policy_cgroup(&self, cgroup_id: u64) -> Result<(), BpfError> {
        match self.policy_cgroups.delete(&cgroup_id.to_ne_bytes()) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == libbpf_rs::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(map_error("policy_cgroups", "delete")(source)),
        }
    }

    fn write_rules(&self, entries: &[RuleEntry]) -> Result<(), BpfError> {
        for e in entries {
            let key = abi::sw_rule_key {
                prefixlen: 64 + u32::from(e.prefix_len),
                policy_id: e.policy_id,
                port: e.port,
                proto: e.transport.number(),
                addr: e.addr,
            };
            let value = abi::sw_rule_value {
                verdict: match e.verdict {
                    ConnectVerdict::Allow => abi::sw_verdict::SW_VERDICT_ALLOW,
                    ConnectVerdict::Redirect => abi::sw_verdict::SW_VERDICT_REDIRECT,
                },
            };
            self.policy_rules
                .update(key.as_bytes(), value.as_bytes(), MapFlags::ANY)
                .map_err(map_error("policy_rules", "update"))?;
        }
        Ok(())
    }

    fn counter_key(policy_id: PolicyId, verdict: abi::sw_verdict) -> abi::sw_counter_key {
        abi::sw_counter_key { policy_id, verdict }
    }

    fn conn_counter_key(
        policy_id: PolicyId,
        event: abi::sw_conn_event,
    ) -> abi::sw_conn_counter_key {
        abi::sw_conn_counter_key { policy_id, event }
    }

    /// Creates every per-CPU counter key of `policies` policies, zeroed.
    fn init_counters(&self, policies: usize) -> Result<(), BpfError> {
        let ncpu = libbpf_rs::num_possible_cpus()
            .map_err(map_error("verdict_counters", "count possible CPUs"))?;
        let zeros = vec![0u64.to_ne_bytes().to_vec(); ncpu];
        let zero = |map: &MapHandle, name: &'static str, key: &[u8]| {
            map.update_percpu(key, &zeros, MapFlags::ANY)
                .map_err(map_error(name, "initialize"))
        };
        for id in 0..policies as PolicyId {
            for v in VERDICTS {
                let key = Self::counter_key(id, v);
                zero(&self.verdict_counters, "verdict_counters", key.as_bytes())?;
            }
            for e in CONN_EVENTS {
                let key = Self::conn_counter_key(id, e);
                zero(&self.conn_counters, "conn_counters", key.as_bytes())?;
            }
        }
        Ok(())
    }

    /// Writes each policy's connection limit (index = policy id), with no
    /// connection counted yet. Only before the programs are attached: the
    /// write replaces the kernel's count.
    fn write_limits(&self, limits: &[u32]) -> Result<(), BpfError> {
        for (id, limit) in limits.iter().enumerate() {
            let value = abi::sw_policy_conns {
                in_flight: 0,
                limit: u64::from(*limit),
            };
            self.policy_conns
                .update(
                    &(id as PolicyId).to_ne_bytes(),
                    value.as_bytes(),
                    MapFlags::ANY,
                )
                .map_err(map_error("policy_conns", "update"))?;
        }
        Ok(())
    }

    /// A policy's open redirected connections, its limit, and what happened
    /// to redirects besides the verdict, as the kernel counted them.
    pub fn conn_counts(&self, policy_id: PolicyId) -> Result<ConnCounts, BpfError> {
        use abi::sw_conn_event as E;
        let read = |e| {
            let key = Self::conn_counter_key(policy_id, e);
            percpu_sum(&self.conn_counters, "conn_counters", key.as_bytes())
        };
        let slots = self
            .policy_conns
            .lookup(&policy_id.to_ne_bytes(), MapFlags::ANY)
            .map_err(map_error("policy_conns", "lookup"))?
            .as_deref()
            .and_then(abi::sw_policy_conns::from_bytes)
            .unwrap_or_default();
        Ok(ConnCounts {
            in_flight: slots.in_flight,
            limit: slots.limit,
            refused_limit: read(E::SW_CONN_REFUSED_LIMIT)?,
            refused_storage: read(E::SW_CONN_REFUSED_STORAGE)?,
            unaccepted: read(E::SW_CONN_UNACCEPTED)?,
        })
    }

    /// connect() decisions so far for a policy: (allowed, redirected, denied).
    pub fn connect_counts(&self, policy_id: PolicyId) -> Result<ConnectCounts, BpfError> {
        let read = |v| {
            let key = Self::counter_key(policy_id, v);
            percpu_sum(&self.verdict_counters, "verdict_counters", key.as_bytes())
        };
        Ok(ConnectCounts {
            allowed: read(abi::sw_verdict::SW_VERDICT_ALLOW)?,
            redirected: read(abi::sw_verdict::SW_VERDICT_REDIRECT)?,
            denied: read(abi::sw_verdict::SW_VERDICT_DENY)?,
        })
    }

    /// What the door programs counted so far for a policy, one count per
    /// event of [`DOOR_EVENTS`] (sums over CPUs).
    pub fn door_counts(&self, policy_id: PolicyId) -> Result<Vec<(DoorEvent, u64)>, BpfError> {
        DOOR_EVENTS
            .iter()
            .map(|e| {
                let index = policy_id * DoorEvent::SW_DOOR_EVENTS.0 + e.0;
                let n = percpu_sum(&self.door_counters, "door_counters", &index.to_ne_bytes())?;
                Ok((*e, n))
            })
            .collect()
    }

    /// What the sockmap engine's programs did so far (sums over CPUs).
    pub fn msg_counts(&self) -> Result<MsgCounts, BpfError> {
        use abi::sw_msg_counter as C;
        let read = |c: C| percpu_sum(&self.msg_counters, "msg_counters", &c.0.to_ne_bytes());
        Ok(MsgCounts {
            redirected_msgs: read(C::SW_MSG_REDIRECTED_MSGS)?,
            redirected_bytes: read(C::SW_MSG_REDIRECTED_BYTES)?,
            tcp_msgs: read(C::SW_MSG_TCP_MSGS)?,
            tcp_bytes: read(C::SW_MSG_TCP_BYTES)?,
            first_redirect: read(C::SW_MSG_FIRST_REDIRECT)?,
            first_tcp: read(C::SW_MSG_FIRST_TCP)?,
            unread_limit: read(C::SW_MSG_SWITCH_TCP)?,
            peer_gone: read(C::SW_MSG_PEER_GONE)?,
            linked_workloads: read(C::SW_MSG_LINKED_WORKLOADS)?,
            linked_proxy: read(C::SW_MSG_LINKED_PROXY)?,
        })
    }

    /// Tells the sockmap engine that the proxy has read `bytes` from the
    /// connection from `peer` accepted on `local`.
    pub fn report_consumed(
        &self,
        peer: SocketAddr,
        local: SocketAddr,
        bytes: u64,
    ) -> Result<(), BpfError> {
        self.sk_consumed
            .update(
                conn_key(peer, local).as_bytes(),
                &bytes.to_ne_bytes(),
                MapFlags::ANY,
            )
            .map_err(map_error("sk_consumed", "update"))
    }

    /// Forgets what was reported for a connection (absent is fine).
    pub fn forget_consumed(&self, peer: SocketAddr, local: SocketAddr) {
        let _ = self.sk_consumed.delete(conn_key(peer, local).as_bytes());
    }

    /// Takes (reads and deletes) the original destination of the connection
    /// the listener accepted from `peer` on `local`.
    pub fn take_orig_dst(
        &self,
        peer: SocketAddr,
        local: SocketAddr,
    ) -> Result<Option<OrigDst>, BpfError> {
        // One operation, so that exactly one of the proxy and sock_release
        // (the workload closing at the same moment) removes the entry.
        let key = conn_key(peer, local);
        let value = self
            .orig_dsts
            .lookup_and_delete(key.as_bytes())
            .map_err(map_error("orig_dsts", "lookup and delete"))?;
        let Some(od) = value.as_deref().and_then(abi::sw_orig_dst::from_bytes) else {
            return Ok(None);
        };
        Ok(Some(OrigDst {
            dst: SocketAddr::new(ip_from16(od.addr), od.port),
            policy_id: od.policy_id,
            cgroup_id: od.cgroup_id,
        }))
    }
}

/// The listener-side key of the connection from `peer` accepted on `local`.
fn conn_key(peer: SocketAddr, local: SocketAddr) -> abi::sw_conn_key {
    abi::sw_conn_key {
        saddr: addr16(peer.ip()),
        daddr: addr16(local.ip()),
        sport: peer.port(),
        dport: local.port(),
    }
}

/// The sum over CPUs of a per-CPU u64 counter (0 if the key is absent).
fn percpu_sum(map: &MapHandle, name: &'static str, key: &[u8]) -> Result<u64, BpfError> {
    let per_cpu = map
        .lookup_percpu(key, MapFlags::ANY)
        .map_err(map_error(name, "lookup"))?;
    Ok(per_cpu
        .unwrap_or_default()
        .iter()
        .filter_map(|b| b.as_slice().try_into().ok().map(u64::from_ne_bytes))
        .sum())
}

fn entry(key: &abi::sw_tuple_key, v: &abi::sw_tuple_value, now_ns: u64) -> TupleEntry {
    TupleEntry {
        netns_cookie: key.netns_cookie,
        src: SocketAddr::new(ip_from16(key.saddr), key.sport),
        dst: SocketAddr::new(ip_from16(key.daddr), key.dport),
        state: tcp_state_name(v.state),
        role: match v.role {
            abi::sw_sock_role::SW_ROLE_WORKLOAD => SockRole::Workload,
            abi::sw_sock_role::SW_ROLE_UPSTREAM => SockRole::Upstream,
            _ => SockRole::Other,
        },
        cookie: v.cookie,
        age: Duration::from_nanos(now_ns.saturating_sub(v.updated_ns)),
    }
}

const VERDICTS: [abi::sw_verdict; 3] = [
    abi::sw_verdict::SW_VERDICT_DENY,
    abi::sw_verdict::SW_VERDICT_ALLOW,
    abi::sw_verdict::SW_VERDICT_REDIRECT,
];

const CONN_EVENTS: [abi::sw_conn_event; 3] = [
    abi::sw_conn_event::SW_CONN_REFUSED_LIMIT,
    abi::sw_conn_event::SW_CONN_REFUSED_STORAGE,
    abi::sw_conn_event::SW_CONN_UNACCEPTED,
];

/// What the door programs count per policy (enum sw_door_event).
pub use abi::sw_door_event as DoorEvent;

/// Every door event, in the kernel's order (index = its value).
pub const DOOR_EVENTS: [DoorEvent; 11] = [
    DoorEvent::SW_DOOR_UDP_ALLOWED,
    DoorEvent::SW_DOOR_UDP_DENIED,
    DoorEvent::SW_DOOR_UDP_QUIC,
    DoorEvent::SW_DOOR_SOCK_RAW,
    DoorEvent::SW_DOOR_SOCK_ICMP,
    DoorEvent::SW_DOOR_SOCK_PROTOCOL,
    DoorEvent::SW_DOOR_SOCK_PACKET,
    DoorEvent::SW_DOOR_DROP_FORGED,
    DoorEvent::SW_DOOR_DROP_UDP,
    DoorEvent::SW_DOOR_DROP_ICMP,
    DoorEvent::SW_DOOR_DROP_PROTOCOL,
];
const _: () = assert!(DOOR_EVENTS.len() == DoorEvent::SW_DOOR_EVENTS.0 as usize);

/// One policy's redirected connections as the kernel counts them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConnCounts {
    /// Redirected sockets open now.
    pub in_flight: u64,
    /// The policy's max_connections.
    pub limit: u64,
    /// connect() calls refused because `in_flight` was at `limit`.
    pub refused_limit: u64,
    /// connect() calls refused because the socket got no storage.
    pub refused_storage: u64,
    /// Connections the workload closed before the proxy accepted them.
    pub unaccepted: u64,
}

/// Kernel-side connect() decisions of one policy.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConnectCounts {
    pub allowed: u64,
    pub redirected: u64,
    pub denied: u64,
}

/// The sockmap engine's kernel-side counters (see enum sw_msg_counter).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MsgCounts {
    pub redirected_msgs: u64,
    pub redirected_bytes: u64,
    pub tcp_msgs: u64,
    pub tcp_bytes: u64,
    /// Connections whose first message was redirected.
    pub first_redirect: u64,
    /// Connections whose first message went through TCP.
    pub first_tcp: u64,
    /// Redirect -> TCP because SW_MSG_UNREAD_LIMIT was reached.
    pub unread_limit: u64,
    /// Redirect -> TCP because the proxy's socket was gone.
    pub peer_gone: u64,
    pub linked_workloads: u64,
    pub linked_proxy: u64,
}

/// Loaded and attached programs, with their pinned maps and links.
#[derive(Debug)]
pub struct Kernel {
    pin_path: PathBuf,
    maps: Arc<Maps>,
    links: Vec<(PathBuf, Link)>,
    /// Held while this process owns `pin_path`; the last field, so dropped last.
    _lock: PinLock,
}

/// Makes sure the directory holding `pin_path` is on a bpf filesystem,
/// mounting one there if it is not (as hosts without systemd need). Checking
/// and mounting happen under a host-wide lock, so two instances starting
/// together cannot stack two mounts (which would hide the first one's pins).
fn ensure_bpffs(pin_path: &Path) -> Result<(), BpfError> {
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

/// Directory of the per-pin-path instance locks.
const LOCK_DIR: &str = "/run/sockwarden";

/// Takes the lock that says "a live sockwarden owns this pin path", so a
/// second instance cannot mistake the first one's pins for leftovers.
pub fn lock_pin_path(pin_path: &Path) -> Result<PinLock, BpfError> {
    use nix::fcntl::{Flock, FlockArg};
    use std::os::unix::fs::MetadataExt;
    let name = pin_path.to_string_lossy().replace('/', "_");
    let path = Path::new(LOCK_DIR).join(format!("{name}.lock"));
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

/// Removes pins (links first, which detaches them) left by an earlier run.
/// Returns whether anything was there.
pub fn remove_pins(pin_path: &Path) -> Result<bool, BpfError> {
    if !pin_path.exists() {
        return Ok(false);
    }
    std::fs::remove_dir_all(pin_path.join("links"))
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

impl Kernel {
    /// Loads every object, writes the static policy (`limits`: each
    /// policy's max_connections, index = policy id), attaches to the root
    /// of `cgroup_root` and pins everything under `pin_path`.
    pub fn load(
        lock: PinLock,
        pin_path: &Path,
        cgroup_root: &Path,
        programs: &Programs,
        rules: &[RuleEntry],
        limits: &[u32],
    ) -> Result<Kernel, BpfError> {
        ensure_bpffs(pin_path)?;
        if remove_pins(pin_path)? {
            tracing::warn!(path = %pin_path.display(), "removed leftovers of an earlier run");
        }
        let links_dir = pin_path.join("links");
        std::fs::create_dir_all(&links_dir).map_err(|source| BpfError::CreateDir {
            path: links_dir.clone(),
            source,
        })?;
        let cgroup = std::fs::File::open(cgroup_root).map_err(|source| BpfError::Cgroup {
            path: cgroup_root.to_path_buf(),
            source,
        })?;
        let mut maps = None;
        let links =
            skel::load_and_attach(pin_path, programs, cgroup.as_raw_fd(), cgroup_root, || {
                // Maps exist (and are pinned) once the objects are loaded: fill
                // them before any program runs.
                let m = Maps::open(pin_path)?;
                m.write_rules(rules)?;
                m.write_limits(limits)?;
                m.init_counters(limits.len())?;
                maps = Some(m);
                Ok(())
            })?;
        let maps = maps.ok_or(BpfError::NotLoaded)?;
        Ok(Kernel {
            pin_path: pin_path.to_path_buf(),
            maps: Arc::new(maps),
            links,
            _lock: lock,
        })
    }

    pub fn maps(&self) -> Arc<Maps> {
        Arc::clone(&self.maps)
    }

    /// Detaches every program and removes every pin.
    pub fn shutdown(mut self) -> Result<(), BpfError> {
        for (path, mut link) in self.links.drain(..) {
            if let Err(e) = link.unpin() {
                tracing::warn!(path = %path.display(), error = %e, "unpinning link");
            }
        }
        remove_pins(&self.pin_path).map(|_| ())
    }
}
