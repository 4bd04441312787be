//! The byte-level interface with the eBPF programs: the types of
//! bpf/include/abi.h (generated from the objects' BTF, never written twice),
//! viewed as bytes, and the builders and decoders between them and Rust
//! values. Pure: no map and no system call here.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use crate::policy::kernel::{ConnectVerdict, RuleEntry, Transport};
use crate::policy::PolicyId;

pub use super::skel::types::*;

/// The limits of abi.h's `enum sw_limit` that userspace checks against.
pub mod limits {
    use super::sw_limit as L;

    /// Policies one configuration may hold (policy ids index kernel arrays).
    pub const MAX_POLICIES: usize = L::SW_MAX_POLICIES.0 as usize;
    /// Entries of the kernel's rule map (policy_rules).
    pub const MAX_RULE_PREFIXES: usize = L::SW_MAX_RULE_PREFIXES.0 as usize;
    /// Redirected connections the kernel tracks (orig_dsts entries).
    pub const TRACKED_CONNS: u32 = L::SW_MAX_TRACKED_CONNS.0;
    /// Redirected bytes the proxy may leave unread before the sockmap engine
    /// turns a connection to TCP; the proxy reports its reads well within it.
    pub const MSG_UNREAD_LIMIT: u64 = L::SW_MSG_UNREAD_LIMIT.0 as u64;
}

/// Bits of a rule key's prefix taken by policy id, port and protocol.
pub const RULE_KEY_FIXED_BITS: u32 = sw_rule_bits::SW_RULE_KEY_FIXED_BITS.0;
/// Bits of an address in its 16-byte form: the longest address prefix.
pub const ADDR_BITS: u8 = sw_rule_bits::SW_ADDR_BITS.0 as u8;
/// Bits before an IPv4 address in its 16-byte form (`::ffff:`): an IPv4
/// prefix of length n is an address prefix of this + n.
pub const ADDR_V4_MAPPED_BITS: u8 = sw_rule_bits::SW_ADDR_V4_MAPPED_BITS.0 as u8;
const _: () = assert!(sw_rule_bits::SW_ADDR_BITS.0 == u128::BITS);
const _: () = assert!(sw_rule_bits::SW_ADDR_V4_MAPPED_BITS.0 + 32 == u128::BITS);

/// Plain-old-data ABI types that may be viewed as bytes.
///
/// # Safety
/// Implementors are `#[repr(C)]`, `Copy`, have no padding and accept any bit
/// pattern (abi.h asserts that each size is the sum of its fields; the impls
/// below check that the generated types have that size).
pub(super) unsafe trait Pod: Copy + Default {
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
    ($($t:ident = $size:ident),* $(,)?) => {$(
        const _: () = assert!(size_of::<$t>() == sw_abi_size::$size.0 as usize);
        // SAFETY: generated from abi.h, where the size is asserted equal to the
        // sum of the fields (no padding); fields are integers and byte arrays.
        unsafe impl Pod for $t {}
    )*};
}

pod!(
    sw_sock_info = SW_SIZEOF_SOCK_INFO,
    sw_tuple_key = SW_SIZEOF_TUPLE_KEY,
    sw_tuple_value = SW_SIZEOF_TUPLE_VALUE,
    sw_policy_ref = SW_SIZEOF_POLICY_REF,
    sw_rule_key = SW_SIZEOF_RULE_KEY,
    sw_rule_value = SW_SIZEOF_RULE_VALUE,
    sw_orig_dst = SW_SIZEOF_ORIG_DST,
    sw_conn_key = SW_SIZEOF_CONN_KEY,
    sw_counter_key = SW_SIZEOF_COUNTER_KEY,
    sw_policy_conns = SW_SIZEOF_POLICY_CONNS,
    sw_conn_counter_key = SW_SIZEOF_CONN_COUNTER_KEY,
    sw_event = SW_SIZEOF_EVENT,
    sw_event_bucket = SW_SIZEOF_EVENT_BUCKET,
);

/// 16-byte form of an address: IPv4 becomes ::ffff:a.b.c.d.
pub fn addr16(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    }
}

/// The address a 16-byte form holds (IPv4 for an IPv4-mapped one).
pub fn ip_from16(a: [u8; 16]) -> IpAddr {
    let v6 = Ipv6Addr::from(a);
    v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4)
}

/// What the kernel needs to know of the policy enforced on a cgroup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PolicyRef {
    pub id: PolicyId,
    /// ICMP echo sockets allowed.
    pub icmp: bool,
    /// `mode: audit`: a TCP connect() no rule allows is let through.
    pub audit: bool,
}

/// The policy_cgroups value of `policy`.
pub(super) fn policy_ref(policy: PolicyRef) -> sw_policy_ref {
    sw_policy_ref {
        policy_id: policy.id,
        icmp: u32::from(policy.icmp),
        audit: u32::from(policy.audit),
    }
}

/// The original destination of a redirected connection, as the kernel saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OrigDst {
    pub dst: SocketAddr,
    pub policy_id: PolicyId,
    /// The workload socket's own cgroup id.
    pub cgroup_id: u64,
}

pub(super) fn orig_dst(v: &sw_orig_dst) -> OrigDst {
    OrigDst {
        dst: SocketAddr::new(ip_from16(v.addr), v.port),
        policy_id: v.policy_id,
        cgroup_id: v.cgroup_id,
    }
}

/// The listener-side key of the connection from `peer` accepted on `local`
/// (orig_dsts, sk_proxy and sk_consumed).
pub(super) fn conn_key(peer: SocketAddr, local: SocketAddr) -> sw_conn_key {
    sw_conn_key {
        saddr: addr16(peer.ip()),
        daddr: addr16(local.ip()),
        sport: peer.port(),
        dport: local.port(),
    }
}

/// The policy_rules key and value of one rule entry.
pub(super) fn rule(e: &RuleEntry) -> (sw_rule_key, sw_rule_value) {
    let key = sw_rule_key {
        prefixlen: RULE_KEY_FIXED_BITS + u32::from(e.prefix_len),
        policy_id: e.policy_id,
        port: e.port,
        proto: e.transport.number(),
        addr: e.addr,
    };
    let verdict = match e.verdict {
        ConnectVerdict::Allow => sw_verdict::SW_VERDICT_ALLOW,
        ConnectVerdict::Redirect => sw_verdict::SW_VERDICT_REDIRECT,
    };
    (key, sw_rule_value { verdict })
}

/// A policy_rules entry read back: the inverse of [`rule`]. None for a key
/// no [`rule`] writes (a prefix shorter than the fixed bits or longer than
/// an address, an unknown protocol or verdict).
pub(super) fn rule_entry(key: &sw_rule_key, value: &sw_rule_value) -> Option<RuleEntry> {
    let prefix_len = key.prefixlen.checked_sub(RULE_KEY_FIXED_BITS)?;
    if prefix_len > u32::from(ADDR_BITS) {
        return None;
    }
    let transport = [Transport::Tcp, Transport::Udp]
        .into_iter()
        .find(|t| t.number() == key.proto)?;
    let verdict = match value.verdict {
        sw_verdict::SW_VERDICT_ALLOW => ConnectVerdict::Allow,
        sw_verdict::SW_VERDICT_REDIRECT => ConnectVerdict::Redirect,
        _ => return None,
    };
    Some(RuleEntry {
        policy_id: key.policy_id,
        transport,
        port: key.port,
        addr: key.addr,
        prefix_len: prefix_len as u8,
        verdict,
    })
}

/// What a record of the events ring buffer reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// connect() refused with EPERM: no rule allows the destination.
    ConnectDenied,
    /// A UDP sendto()/sendmsg() refused with EPERM.
    SendmsgDenied,
    /// A redirected connection closed without reaching the listener.
    Unreached,
    /// A TCP connect() no rule allows, let through by `mode: audit`.
    ConnectWouldDeny,
}

/// One record of the events ring buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelEvent {
    pub kind: EventKind,
    pub policy_id: PolicyId,
    /// The caller's cgroup (for [`EventKind::Unreached`], the socket's at
    /// connect()).
    pub cgroup_id: u64,
    pub netns_cookie: u64,
    /// Thread group id of the calling task (for [`EventKind::Unreached`],
    /// of the task that closed the socket).
    pub pid: u32,
    pub comm: String,
    /// The destination the workload asked for.
    pub dst: SocketAddr,
    pub transport: Transport,
}

/// Decodes a record of the events ring buffer; None for one of another
/// size, kind or protocol.
pub(super) fn kernel_event(bytes: &[u8]) -> Option<KernelEvent> {
    let e = sw_event::from_bytes(bytes)?;
    let kind = match e.kind {
        sw_event_kind::SW_EVENT_CONNECT_DENIED => EventKind::ConnectDenied,
        sw_event_kind::SW_EVENT_SENDMSG_DENIED => EventKind::SendmsgDenied,
        sw_event_kind::SW_EVENT_UNREACHED => EventKind::Unreached,
        sw_event_kind::SW_EVENT_CONNECT_WOULD_DENY => EventKind::ConnectWouldDeny,
        _ => return None,
    };
    let transport = [Transport::Tcp, Transport::Udp]
        .into_iter()
        .find(|t| t.number() == e.proto)?;
    let comm: Vec<u8> = e
        .comm
        .iter()
        .map(|c| *c as u8)
        .take_while(|c| *c != 0)
        .collect();
    Some(KernelEvent {
        kind,
        policy_id: e.policy_id,
        cgroup_id: e.cgroup_id,
        netns_cookie: e.netns_cookie,
        pid: e.pid,
        comm: String::from_utf8_lossy(&comm).into_owned(),
        dst: SocketAddr::new(ip_from16(e.addr), e.port),
        transport,
    })
}

/// Events of one policy the kernel did not send, summed over CPUs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EventDrops {
    /// The policy's token bucket was empty.
    pub rate_limit: u64,
    /// The ring buffer was full.
    pub ring_full: u64,
}

/// The sum of a policy's event_buckets values, one per CPU (values of
/// another size are skipped).
pub(super) fn event_drops(per_cpu: &[Vec<u8>]) -> EventDrops {
    per_cpu
        .iter()
        .filter_map(|b| sw_event_bucket::from_bytes(b))
        .fold(EventDrops::default(), |d, b| EventDrops {
            rate_limit: d.rate_limit + b.dropped_rate,
            ring_full: d.ring_full + b.dropped_full,
        })
}

/// The sock_roles value that marks one of the proxy's upstream sockets.
pub(super) fn upstream_sock() -> sw_sock_info {
    sw_sock_info {
        role: sw_sock_role::SW_ROLE_UPSTREAM,
        ..Default::default()
    }
}

pub(super) fn counter_key(policy_id: PolicyId, verdict: sw_verdict) -> sw_counter_key {
    sw_counter_key { policy_id, verdict }
}

pub(super) fn conn_counter_key(policy_id: PolicyId, event: sw_conn_event) -> sw_conn_counter_key {
    sw_conn_counter_key { policy_id, event }
}

/// The door_counters index of `event` of policy `policy_id`.
pub(super) fn door_index(policy_id: PolicyId, event: sw_door_event) -> u32 {
    policy_id * sw_door_event::SW_DOOR_EVENTS.0 + event.0
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

fn tcp_state_name(s: sw_tcp_state) -> &'static str {
    use sw_tcp_state as S;
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

/// The tuples key of `src -> dst` in network namespace `netns_cookie`.
pub(super) fn tuple_key(netns_cookie: u64, src: SocketAddr, dst: SocketAddr) -> sw_tuple_key {
    sw_tuple_key {
        netns_cookie,
        saddr: addr16(src.ip()),
        daddr: addr16(dst.ip()),
        sport: src.port(),
        dport: dst.port(),
        pad: 0,
    }
}

/// A tuples entry as of `now_ns` (CLOCK_BOOTTIME, the clock of its
/// `updated_ns`).
pub(super) fn tuple_entry(key: &sw_tuple_key, v: &sw_tuple_value, now_ns: u64) -> TupleEntry {
    TupleEntry {
        netns_cookie: key.netns_cookie,
        src: SocketAddr::new(ip_from16(key.saddr), key.sport),
        dst: SocketAddr::new(ip_from16(key.daddr), key.dport),
        state: tcp_state_name(v.state),
        role: match v.role {
            sw_sock_role::SW_ROLE_WORKLOAD => SockRole::Workload,
            sw_sock_role::SW_ROLE_UPSTREAM => SockRole::Upstream,
            _ => SockRole::Other,
        },
        cookie: v.cookie,
        age: Duration::from_nanos(now_ns.saturating_sub(v.updated_ns)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::kernel::Transport;

    /// Bytes in the order given, each field in host order as the kernel
    /// stores it.
    fn bytes(fields: &[&[u8]]) -> Vec<u8> {
        fields.concat()
    }

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    const V4_MAPPED_10_1_2_3: [u8; 16] = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 10, 1, 2, 3];
    const V6_FD00_1: [u8; 16] = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];

    #[test]
    fn addresses_round_trip_through_the_16_byte_form() {
        let cases: &[(&str, [u8; 16])] = &[
            ("10.1.2.3", V4_MAPPED_10_1_2_3),
            ("fd00::1", V6_FD00_1),
            ("0.0.0.0", {
                let mut a = [0; 16];
                a[10] = 0xff;
                a[11] = 0xff;
                a
            }),
            ("::", [0; 16]),
        ];
        for (ip, form) in cases {
            let ip: IpAddr = ip.parse().unwrap();
            assert_eq!(addr16(ip), *form, "{ip}");
            assert_eq!(ip_from16(*form), ip, "{ip}");
        }
        // An IPv4-mapped IPv6 address is read back as the IPv4 address.
        let mapped: IpAddr = "::ffff:10.1.2.3".parse().unwrap();
        assert_eq!(
            ip_from16(addr16(mapped)),
            "10.1.2.3".parse::<IpAddr>().unwrap()
        );
    }

    #[test]
    fn views_refuse_a_wrong_length() {
        let key = conn_key(sa("10.1.2.3:40000"), sa("10.77.0.1:15001"));
        let b = key.as_bytes();
        assert_eq!(b.len(), 36);
        assert!(sw_conn_key::from_bytes(&b[..35]).is_none());
        assert!(sw_conn_key::from_bytes(&[b, &[0]].concat()).is_none());
        assert_eq!(
            sw_conn_key::from_bytes(b).map(|k| k.as_bytes().to_vec()),
            Some(b.to_vec())
        );
    }

    #[test]
    fn conn_keys_are_the_listener_side_4_tuple() {
        let cases: &[(&str, &str, [u8; 16], [u8; 16])] = &[
            (
                "10.1.2.3:40000",
                "[fd00::1]:15001",
                V4_MAPPED_10_1_2_3,
                V6_FD00_1,
            ),
            (
                "[fd00::1]:40000",
                "10.1.2.3:15001",
                V6_FD00_1,
                V4_MAPPED_10_1_2_3,
            ),
        ];
        for (peer, local, saddr, daddr) in cases {
            let key = conn_key(sa(peer), sa(local));
            let want = bytes(&[
                saddr,
                daddr,
                &40000u16.to_ne_bytes(),
                &15001u16.to_ne_bytes(),
            ]);
            assert_eq!(key.as_bytes(), want.as_slice(), "{peer} on {local}");
        }
    }

    #[test]
    fn rule_keys_count_prefix_bits_from_the_policy_id_on() {
        type Case = (Transport, u16, u8, ConnectVerdict, u32, u16, sw_verdict);
        let cases: &[Case] = &[
            // An IPv4 /32 is a 128-bit address prefix: 64 + 128.
            (
                Transport::Tcp,
                80,
                128,
                ConnectVerdict::Redirect,
                192,
                6,
                sw_verdict::SW_VERDICT_REDIRECT,
            ),
            // An IPv4 /8: 64 + 96 + 8.
            (
                Transport::Udp,
                0,
                104,
                ConnectVerdict::Allow,
                168,
                17,
                sw_verdict::SW_VERDICT_ALLOW,
            ),
            // ::/0 matches on policy, port and protocol alone.
            (
                Transport::Tcp,
                443,
                0,
                ConnectVerdict::Allow,
                64,
                6,
                sw_verdict::SW_VERDICT_ALLOW,
            ),
        ];
        for (transport, port, prefix_len, verdict, prefixlen, proto, kernel_verdict) in cases {
            let e = RuleEntry {
                policy_id: 7,
                transport: *transport,
                port: *port,
                addr: V4_MAPPED_10_1_2_3,
                prefix_len: *prefix_len,
                verdict: *verdict,
            };
            let (key, value) = rule(&e);
            let want = bytes(&[
                &prefixlen.to_ne_bytes(),
                &7u32.to_ne_bytes(),
                &port.to_ne_bytes(),
                &proto.to_ne_bytes(),
                &V4_MAPPED_10_1_2_3,
            ]);
            assert_eq!(key.as_bytes(), want.as_slice(), "{e:?}");
            assert_eq!(value.as_bytes(), kernel_verdict.0.to_ne_bytes(), "{e:?}");
            let back = sw_rule_key::from_bytes(&want).unwrap();
            assert_eq!(
                (back.prefixlen, back.port, back.proto),
                (*prefixlen, *port, *proto)
            );
        }
    }

    #[test]
    fn rule_entries_read_back_from_their_keys() {
        let e = |transport, port, prefix_len, verdict| RuleEntry {
            policy_id: 3,
            transport,
            port,
            addr: V4_MAPPED_10_1_2_3,
            prefix_len,
            verdict,
        };
        for want in [
            e(Transport::Tcp, 80, 128, ConnectVerdict::Redirect),
            e(Transport::Udp, 0, 104, ConnectVerdict::Allow),
            e(Transport::Tcp, 443, 0, ConnectVerdict::Allow),
        ] {
            let (key, value) = rule(&want);
            assert_eq!(rule_entry(&key, &value), Some(want));
        }
        // Keys no configuration writes.
        let (key, value) = rule(&e(Transport::Tcp, 80, 128, ConnectVerdict::Allow));
        let bad_keys = [
            sw_rule_key {
                prefixlen: 63,
                ..key
            },
            sw_rule_key {
                prefixlen: 64 + 129,
                ..key
            },
            sw_rule_key { proto: 1, ..key },
        ];
        for k in bad_keys {
            assert_eq!(rule_entry(&k, &value), None, "{k:?}");
        }
        let deny = sw_rule_value {
            verdict: sw_verdict::SW_VERDICT_DENY,
        };
        assert_eq!(rule_entry(&key, &deny), None);
    }

    #[test]
    fn events_decode_from_the_ring_buffers_records() {
        let record = |kind: u32, proto: u16, addr: &[u8; 16], comm: &[u8; 16]| {
            bytes(&[
                &11u64.to_ne_bytes(), // cgroup id
                &12u64.to_ne_bytes(), // netns cookie
                &kind.to_ne_bytes(),
                &2u32.to_ne_bytes(),    // policy id
                &4321u32.to_ne_bytes(), // pid
                &8080u16.to_ne_bytes(),
                &proto.to_ne_bytes(),
                addr,
                comm,
            ])
        };
        let curl = *b"curl\0\0\0\0\0\0\0\0\0\0\0\0";
        let full = *b"0123456789abcdef";
        type Want = Option<(EventKind, Transport, &'static str, &'static str)>;
        let cases: &[(Vec<u8>, Want)] = &[
            (
                record(1, 6, &V4_MAPPED_10_1_2_3, &curl),
                Some((
                    EventKind::ConnectDenied,
                    Transport::Tcp,
                    "10.1.2.3:8080",
                    "curl",
                )),
            ),
            (
                record(2, 17, &V6_FD00_1, &full),
                Some((
                    EventKind::SendmsgDenied,
                    Transport::Udp,
                    "[fd00::1]:8080",
                    "0123456789abcdef",
                )),
            ),
            (
                record(3, 6, &V4_MAPPED_10_1_2_3, &curl),
                Some((
                    EventKind::Unreached,
                    Transport::Tcp,
                    "10.1.2.3:8080",
                    "curl",
                )),
            ),
            (record(0, 6, &V4_MAPPED_10_1_2_3, &curl), None),
            (record(1, 1, &V4_MAPPED_10_1_2_3, &curl), None),
            (
                record(1, 6, &V4_MAPPED_10_1_2_3, &curl)[..63].to_vec(),
                None,
            ),
        ];
        for (raw, want) in cases {
            let got = kernel_event(raw);
            let want = want.map(|(kind, transport, dst, comm)| KernelEvent {
                kind,
                policy_id: 2,
                cgroup_id: 11,
                netns_cookie: 12,
                pid: 4321,
                comm: comm.to_string(),
                dst: sa(dst),
                transport,
            });
            assert_eq!(got, want, "{raw:?}");
        }
    }

    #[test]
    fn event_drops_are_summed_over_cpus() {
        let bucket = |rate: u64, full: u64| {
            bytes(&[
                &5u64.to_ne_bytes(),
                &6u64.to_ne_bytes(),
                &rate.to_ne_bytes(),
                &full.to_ne_bytes(),
            ])
        };
        let per_cpu = vec![bucket(3, 0), bucket(4, 1), vec![0; 8]];
        assert_eq!(
            event_drops(&per_cpu),
            EventDrops {
                rate_limit: 7,
                ring_full: 1
            }
        );
        assert_eq!(event_drops(&[]), EventDrops::default());
    }

    #[test]
    fn values_userspace_writes_have_their_kernel_layout() {
        let cases: &[(&str, Vec<u8>, Vec<u8>)] = &[
            (
                "policy ref",
                policy_ref(PolicyRef {
                    id: 3,
                    icmp: true,
                    audit: false,
                })
                .as_bytes()
                .to_vec(),
                bytes(&[
                    &3u32.to_ne_bytes(),
                    &1u32.to_ne_bytes(),
                    &0u32.to_ne_bytes(),
                ]),
            ),
            (
                "policy ref in audit mode, without icmp",
                policy_ref(PolicyRef {
                    id: 255,
                    icmp: false,
                    audit: true,
                })
                .as_bytes()
                .to_vec(),
                bytes(&[
                    &255u32.to_ne_bytes(),
                    &0u32.to_ne_bytes(),
                    &1u32.to_ne_bytes(),
                ]),
            ),
            (
                "counter key",
                counter_key(2, sw_verdict::SW_VERDICT_DENY)
                    .as_bytes()
                    .to_vec(),
                bytes(&[&2u32.to_ne_bytes(), &0u32.to_ne_bytes()]),
            ),
            (
                "conn counter key",
                conn_counter_key(2, sw_conn_event::SW_CONN_UNACCEPTED)
                    .as_bytes()
                    .to_vec(),
                bytes(&[&2u32.to_ne_bytes(), &2u32.to_ne_bytes()]),
            ),
            (
                "door index",
                door_index(2, sw_door_event::SW_DOOR_SOCK_RAW)
                    .to_ne_bytes()
                    .to_vec(),
                (2u32 * 11 + 3).to_ne_bytes().to_vec(),
            ),
        ];
        for (what, got, want) in cases {
            assert_eq!(got, want, "{what}");
        }
        // The upstream mark: role first, everything else zero.
        let info = upstream_sock();
        let b = info.as_bytes();
        assert_eq!(&b[..4], 2u32.to_ne_bytes());
        assert!(b[4..].iter().all(|&x| x == 0));
    }

    #[test]
    fn orig_dsts_values_decode_to_the_original_destination() {
        let cases: &[([u8; 16], u16, &str)] = &[
            (V4_MAPPED_10_1_2_3, 8080, "10.1.2.3:8080"),
            (V6_FD00_1, 443, "[fd00::1]:443"),
        ];
        for (addr, port, want) in cases {
            let raw = bytes(&[
                addr,
                &port.to_ne_bytes(),
                &10u16.to_ne_bytes(), // family
                &4u32.to_ne_bytes(),  // policy id
                &77u64.to_ne_bytes(), // cgroup id
                &9u64.to_ne_bytes(),  // netns cookie
            ]);
            let v = sw_orig_dst::from_bytes(&raw).unwrap();
            assert_eq!(
                orig_dst(&v),
                OrigDst {
                    dst: sa(want),
                    policy_id: 4,
                    cgroup_id: 77
                }
            );
        }
    }

    #[test]
    fn tuple_entries_decode_with_their_age_and_role() {
        let key = tuple_key(5, sa("10.1.2.3:40000"), sa("[fd00::1]:80"));
        let key_bytes = bytes(&[
            &5u64.to_ne_bytes(),
            &V4_MAPPED_10_1_2_3,
            &V6_FD00_1,
            &40000u16.to_ne_bytes(),
            &80u16.to_ne_bytes(),
            &0u32.to_ne_bytes(),
        ]);
        assert_eq!(key.as_bytes(), key_bytes.as_slice());
        let key = sw_tuple_key::from_bytes(&key_bytes).unwrap();
        let secs = 1_000_000_000u64;
        // (state, role, updated, now, state name, role, age, in use)
        type Case = (u32, u32, u64, u64, &'static str, SockRole, u64, bool);
        let cases: &[Case] = &[
            (
                1,
                1,
                10 * secs,
                12 * secs,
                "ESTABLISHED",
                SockRole::Workload,
                2,
                true,
            ),
            (
                6,
                2,
                10 * secs,
                69 * secs,
                "TIME_WAIT",
                SockRole::Upstream,
                59,
                true,
            ),
            (
                6,
                2,
                10 * secs,
                70 * secs,
                "TIME_WAIT",
                SockRole::Upstream,
                60,
                false,
            ),
            // A clock read before the update (another CPU) is age 0.
            (7, 0, 10 * secs, 9 * secs, "CLOSE", SockRole::Other, 0, true),
            (12, 9, 0, 0, "UNKNOWN", SockRole::Other, 0, true),
        ];
        for (state, role, updated, now, name, want_role, age, in_use) in cases {
            let raw = bytes(&[
                &99u64.to_ne_bytes(),
                &updated.to_ne_bytes(),
                &state.to_ne_bytes(),
                &role.to_ne_bytes(),
            ]);
            let v = sw_tuple_value::from_bytes(&raw).unwrap();
            let e = tuple_entry(&key, &v, *now);
            let want = TupleEntry {
                netns_cookie: 5,
                src: sa("10.1.2.3:40000"),
                dst: sa("[fd00::1]:80"),
                state: name,
                role: *want_role,
                cookie: 99,
                age: Duration::from_secs(*age),
            };
            assert_eq!(e, want);
            assert_eq!(e.in_use(), *in_use, "{name} after {age} s");
        }
    }
}
