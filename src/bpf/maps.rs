//! The pinned maps: one name for each (bpf/include/maps.h declares them),
//! and typed access to the ones userspace reads and writes at run time.

use std::net::SocketAddr;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::path::{Path, PathBuf};

use libbpf_rs::{MapCore, MapFlags, MapHandle, RingBuffer, RingBufferBuilder};

use super::abi::{self, KernelEvent, Pod, PolicyRef, TupleEntry};
use super::{BpfError, OrigDst};
use crate::policy::kernel::RuleEntry;

/// Every map the objects share, pinned as `<pin path>/<name>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum MapName {
    PolicyCgroups,
    PolicyRules,
    OrigDsts,
    PolicyConns,
    PolicyLimits,
    ConnCounters,
    VerdictCounters,
    DoorCounters,
    SockRoles,
    Tuples,
    SkWorkloads,
    SkProxy,
    SkConsumed,
    MsgCounters,
    Events,
    EventBuckets,
}

impl MapName {
    pub const ALL: [MapName; 16] = [
        MapName::PolicyCgroups,
        MapName::PolicyRules,
        MapName::OrigDsts,
        MapName::PolicyConns,
        MapName::PolicyLimits,
        MapName::ConnCounters,
        MapName::VerdictCounters,
        MapName::DoorCounters,
        MapName::SockRoles,
        MapName::Tuples,
        MapName::SkWorkloads,
        MapName::SkProxy,
        MapName::SkConsumed,
        MapName::MsgCounters,
        MapName::Events,
        MapName::EventBuckets,
    ];

    /// Its name in the objects (maps.h), in bpftool and under the pin path.
    pub fn as_str(self) -> &'static str {
        match self {
            MapName::PolicyCgroups => "policy_cgroups",
            MapName::PolicyRules => "policy_rules",
            MapName::OrigDsts => "orig_dsts",
            MapName::PolicyConns => "policy_conns",
            MapName::PolicyLimits => "policy_limits",
            MapName::ConnCounters => "conn_counters",
            MapName::VerdictCounters => "verdict_counters",
            MapName::DoorCounters => "door_counters",
            MapName::SockRoles => "sock_roles",
            MapName::Tuples => "tuples",
            MapName::SkWorkloads => "sk_workloads",
            MapName::SkProxy => "sk_proxy",
            MapName::SkConsumed => "sk_consumed",
            MapName::MsgCounters => "msg_counters",
            MapName::Events => "events",
            MapName::EventBuckets => "event_buckets",
        }
    }

    /// The map an object names `name`; None for libbpf's internal maps
    /// (`.rodata`, ...).
    pub fn from_name(name: &str) -> Option<MapName> {
        MapName::ALL.into_iter().find(|m| m.as_str() == name)
    }

    /// Where it is pinned under `pin_path`.
    pub fn pin(self, pin_path: &Path) -> PathBuf {
        pin_path.join(self.as_str())
    }

    /// Whether it holds policy (which cgroups, which rules, which limits),
    /// made anew by each generation, rather than state that outlives one
    /// (counts, original destinations, tuples, socket storage, counters).
    pub fn is_policy(self) -> bool {
        matches!(
            self,
            MapName::PolicyCgroups | MapName::PolicyRules | MapName::PolicyLimits
        )
    }
}

impl std::fmt::Display for MapName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One opened pinned map; its name goes into every error.
#[derive(Debug)]
pub(super) struct Pinned {
    name: MapName,
    map: MapHandle,
}

impl Pinned {
    fn open(pin_path: &Path, name: MapName) -> Result<Pinned, BpfError> {
        let map = MapHandle::from_pinned_path(name.pin(pin_path))
            .map_err(|source| map_error(name, "open pinned", source))?;
        Ok(Pinned { name, map })
    }

    pub(super) fn error(&self, op: &'static str) -> impl FnOnce(libbpf_rs::Error) -> BpfError {
        let name = self.name;
        move |source| map_error(name, op, source)
    }

    fn update(&self, key: &[u8], value: &[u8]) -> Result<(), BpfError> {
        self.map
            .update(key, value, MapFlags::ANY)
            .map_err(self.error("update"))
    }

    pub(super) fn lookup(&self, key: &[u8]) -> Result<Option<Vec<u8>>, BpfError> {
        self.map
            .lookup(key, MapFlags::ANY)
            .map_err(self.error("lookup"))
    }

    /// Deletes `key`; false if it was not there.
    fn delete(&self, key: &[u8]) -> Result<bool, BpfError> {
        match self.map.delete(key) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == libbpf_rs::ErrorKind::NotFound => Ok(false),
            Err(source) => Err(map_error(self.name, "delete", source)),
        }
    }

    /// Reads and deletes `key` in one operation.
    fn take(&self, key: &[u8]) -> Result<Option<Vec<u8>>, BpfError> {
        self.map
            .lookup_and_delete(key)
            .map_err(self.error("lookup and delete"))
    }

    /// Every (key, value) now in the map; entries that go while it is read
    /// are left out.
    fn entries(&self) -> impl Iterator<Item = (Vec<u8>, Vec<u8>)> + '_ {
        self.map
            .keys()
            .filter_map(|k| Some((k.clone(), self.map.lookup(&k, MapFlags::ANY).ok()??)))
    }

    /// The values of `key` in a per-CPU map, one per CPU (none if the key
    /// is absent).
    pub(super) fn percpu(&self, key: &[u8]) -> Result<Vec<Vec<u8>>, BpfError> {
        let per_cpu = self
            .map
            .lookup_percpu(key, MapFlags::ANY)
            .map_err(self.error("lookup"))?;
        Ok(per_cpu.unwrap_or_default())
    }

    /// The sum over CPUs of a per-CPU u64 counter (0 if the key is absent).
    pub(super) fn percpu_sum(&self, key: &[u8]) -> Result<u64, BpfError> {
        Ok(self
            .percpu(key)?
            .iter()
            .filter_map(|b| b.as_slice().try_into().ok().map(u64::from_ne_bytes))
            .sum())
    }

    /// Creates a per-CPU u64 counter at 0 on every CPU (`zeros`: one
    /// 8-byte zero per possible CPU).
    pub(super) fn zero_percpu(&self, key: &[u8], zeros: &[Vec<u8>]) -> Result<(), BpfError> {
        self.map
            .update_percpu(key, zeros, MapFlags::ANY)
            .map_err(self.error("initialize"))
    }
}

fn map_error(map: MapName, op: &'static str, source: libbpf_rs::Error) -> BpfError {
    BpfError::Map { map, op, source }
}

/// Handles on the pinned maps userspace reads and writes at run time.
#[derive(Debug)]
pub struct Maps {
    policy_cgroups: Pinned,
    policy_rules: Pinned,
    orig_dsts: Pinned,
    pub(super) policy_conns: Pinned,
    pub(super) policy_limits: Pinned,
    pub(super) conn_counters: Pinned,
    pub(super) verdict_counters: Pinned,
    sock_roles: Pinned,
    tuples: Pinned,
    pub(super) msg_counters: Pinned,
    pub(super) door_counters: Pinned,
    sk_consumed: Pinned,
    events: Pinned,
    pub(super) event_buckets: Pinned,
}

/// CLOCK_BOOTTIME, the clock of bpf_ktime_get_boot_ns().
fn boot_ns() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME)
        .map(|t| t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64)
        .unwrap_or(0)
}

impl Maps {
    /// Opens the maps pinned under `pin_path`: at load, and those of a
    /// running instance for `sockwarden tuples`.
    pub fn open_pinned(pin_path: &Path) -> Result<Maps, BpfError> {
        Self::open_in(pin_path, pin_path)
    }

    /// Opens a generation's maps: the state ones under `state`, the policy
    /// ones under `policy` ([`MapName::is_policy`]).
    pub(super) fn open_in(state: &Path, policy: &Path) -> Result<Maps, BpfError> {
        let open =
            |name: MapName| Pinned::open(if name.is_policy() { policy } else { state }, name);
        Ok(Maps {
            policy_cgroups: open(MapName::PolicyCgroups)?,
            policy_rules: open(MapName::PolicyRules)?,
            orig_dsts: open(MapName::OrigDsts)?,
            policy_conns: open(MapName::PolicyConns)?,
            policy_limits: open(MapName::PolicyLimits)?,
            conn_counters: open(MapName::ConnCounters)?,
            verdict_counters: open(MapName::VerdictCounters)?,
            sock_roles: open(MapName::SockRoles)?,
            tuples: open(MapName::Tuples)?,
            msg_counters: open(MapName::MsgCounters)?,
            door_counters: open(MapName::DoorCounters)?,
            sk_consumed: open(MapName::SkConsumed)?,
            events: open(MapName::Events)?,
            event_buckets: open(MapName::EventBuckets)?,
        })
    }

    /// A reader of the events ring buffer that hands each record to
    /// `on_event`, decoded (records that do not decode are skipped). Its
    /// `epoll_fd` turns readable when records wait; `consume` reads them.
    pub fn event_ring(
        &self,
        mut on_event: impl FnMut(KernelEvent) + 'static,
    ) -> Result<RingBuffer<'static>, BpfError> {
        let mut builder = RingBufferBuilder::new();
        builder
            .add(&self.events.map, move |bytes: &[u8]| {
                if let Some(e) = abi::kernel_event(bytes) {
                    on_event(e);
                }
                0
            })
            .map_err(self.events.error("open ring buffer"))?;
        builder
            .build()
            .map_err(self.events.error("open ring buffer"))
    }

    /// Every entry of the rule map, decoded (entries no configuration
    /// writes are left out).
    pub fn rules(&self) -> Vec<RuleEntry> {
        self.policy_rules
            .entries()
            .filter_map(|(k, v)| {
                abi::rule_entry(
                    &abi::sw_rule_key::from_bytes(&k)?,
                    &abi::sw_rule_value::from_bytes(&v)?,
                )
            })
            .collect()
    }

    /// Marks a socket as one of the proxy's upstream sockets, so its tuple
    /// is tracked from connect() on. Call before connect().
    pub fn mark_upstream(&self, socket: BorrowedFd<'_>) -> Result<(), BpfError> {
        self.sock_roles.update(
            &socket.as_raw_fd().to_ne_bytes(),
            abi::upstream_sock().as_bytes(),
        )
    }

    /// Whether a socket in namespace `netns_cookie` holds `src -> dst`.
    pub fn tuple_in_use(
        &self,
        netns_cookie: u64,
        src: SocketAddr,
        dst: SocketAddr,
    ) -> Result<bool, BpfError> {
        let key = abi::tuple_key(netns_cookie, src, dst);
        let value = self.tuples.lookup(key.as_bytes())?;
        Ok(value
            .as_deref()
            .and_then(abi::sw_tuple_value::from_bytes)
            .is_some_and(|v| abi::tuple_entry(&key, &v, boot_ns()).in_use()))
    }

    /// Every entry of the in-use tuple map, with its raw key.
    fn tuple_entries(&self) -> Vec<(Vec<u8>, TupleEntry)> {
        let now = boot_ns();
        self.tuples
            .entries()
            .filter_map(|(k, v)| {
                let key = abi::sw_tuple_key::from_bytes(&k)?;
                let value = abi::sw_tuple_value::from_bytes(&v)?;
                Some((k, abi::tuple_entry(&key, &value, now)))
            })
            .collect()
    }

    /// Every entry of the in-use tuple map.
    pub fn tuples(&self) -> Vec<TupleEntry> {
        self.tuple_entries().into_iter().map(|(_, e)| e).collect()
    }

    /// Deletes TIME_WAIT entries older than [`abi::TIME_WAIT`]; returns how many.
    pub fn expire_tuples(&self) -> usize {
        self.tuple_entries()
            .iter()
            .filter(|(k, e)| !e.in_use() && self.tuples.delete(k).is_ok_and(|gone| gone))
            .count()
    }

    /// Enforces `policy` on the cgroup with id `cgroup_id`.
    pub fn set_policy_cgroup(&self, cgroup_id: u64, policy: PolicyRef) -> Result<(), BpfError> {
        self.policy_cgroups
            .update(&cgroup_id.to_ne_bytes(), abi::policy_ref(policy).as_bytes())
    }

    pub fn remove_policy_cgroup(&self, cgroup_id: u64) -> Result<(), BpfError> {
        self.policy_cgroups
            .delete(&cgroup_id.to_ne_bytes())
            .map(|_| ())
    }

    pub(super) fn write_rules(&self, entries: &[RuleEntry]) -> Result<(), BpfError> {
        for e in entries {
            let (key, value) = abi::rule(e);
            self.policy_rules.update(key.as_bytes(), value.as_bytes())?;
        }
        Ok(())
    }

    /// Writes each policy's connection limit (index = policy id) into this
    /// generation's policy_limits; the open sockets' count (policy_conns)
    /// is state and is not touched.
    pub(super) fn write_limits(&self, limits: &[u32]) -> Result<(), BpfError> {
        for (id, limit) in limits.iter().enumerate() {
            self.policy_limits
                .update(&(id as u32).to_ne_bytes(), &u64::from(*limit).to_ne_bytes())?;
        }
        Ok(())
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
            .update(abi::conn_key(peer, local).as_bytes(), &bytes.to_ne_bytes())
    }

    /// Forgets what was reported for a connection (absent is fine).
    pub fn forget_consumed(&self, peer: SocketAddr, local: SocketAddr) {
        let _ = self
            .sk_consumed
            .delete(abi::conn_key(peer, local).as_bytes());
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
        let key = abi::conn_key(peer, local);
        let value = self.orig_dsts.take(key.as_bytes())?;
        Ok(value
            .as_deref()
            .and_then(abi::sw_orig_dst::from_bytes)
            .map(|v| abi::orig_dst(&v)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn map_names_are_unique_and_read_back() {
        for (i, m) in MapName::ALL.iter().enumerate() {
            assert_eq!(MapName::from_name(m.as_str()), Some(*m));
            assert!(
                !MapName::ALL[..i].iter().any(|o| o.as_str() == m.as_str()),
                "{m} twice"
            );
        }
        let cases = [
            (".rodata", None),
            ("tuple", None),
            ("tuples", Some(MapName::Tuples)),
        ];
        for (name, want) in cases {
            assert_eq!(MapName::from_name(name), want, "{name}");
        }
        assert_eq!(
            MapName::OrigDsts.pin(Path::new("/sys/fs/bpf/sw")),
            Path::new("/sys/fs/bpf/sw/orig_dsts")
        );
    }

    #[test]
    fn map_errors_name_the_map() {
        let e = map_error(
            MapName::PolicyRules,
            "update",
            libbpf_rs::Error::from_raw_os_error(libc::E2BIG),
        );
        assert!(
            e.to_string().starts_with("map policy_rules: update: "),
            "{e}"
        );
    }
}
