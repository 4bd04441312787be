//! Loading, attaching, pinning and reading sockwarden's eBPF programs.
//!
//! Programs are attached to the root of the cgroup2 hierarchy with bpf_links
//! that are pinned under `<pin_path>/links/`, and every map is pinned by name
//! under `<pin_path>/`. Pinned links keep enforcement in place when the
//! process stops or dies (fail closed: connects that need the proxy are
//! refused, L4 rules keep working); the next start takes the links over,
//! swapping each one's program in place ([`pins`]), and only `sockwarden
//! detach` removes them.
//!
//! - [`abi`]: the types of bpf/include/abi.h (generated), their byte views,
//!   the key and value builders and decoders, and the shared limits;
//! - [`maps`]: the name of every map, and typed access to the pinned maps;
//! - [`counters`]: the kernel's per-CPU counters, read and exported;
//! - [`pins`]: the bpf filesystem, the pin-path lock, removing leftovers;
//! - `skel`: the generated skeletons, opened, loaded and attached.

use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use libbpf_rs::Link;

use crate::policy::kernel::RuleEntry;

pub mod abi;
pub mod counters;
pub mod enforcers;
pub mod maps;
pub mod pins;
pub(crate) mod skel;

pub use abi::{limits, OrigDst, PolicyRef, SockRole, TupleEntry};
pub use counters::{DoorEvent, DOOR_EVENTS};
pub use maps::{MapName, Maps};
pub use pins::{detach, lock_pin_path, Detached, PinLock};

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
        map: MapName,
        source: libbpf_rs::Error,
    },
    #[error("pinning {path}: {source}")]
    Pin {
        path: PathBuf,
        source: libbpf_rs::Error,
    },
    #[error("another sockwarden is running with pin path {pin_path} (it holds {lock}); stop it or give this one another bpf.pin_path")]
    InUse { pin_path: PathBuf, lock: PathBuf },
    #[error("sockwarden programs of another instance are attached at cgroup {cgroup}: {found}. A node has one enforcer: two sets of connect programs on one cgroup judge each other's redirects and refuse them. Stop that instance, then `sockwarden detach --pin-path <its pin path>` removes its enforcement (or start this one with its bpf.pin_path, which takes its programs over)")]
    OtherEnforcer { cgroup: PathBuf, found: String },
    #[error("looking for other sockwarden instances at cgroup {cgroup}: {source}")]
    Query {
        cgroup: PathBuf,
        source: std::io::Error,
    },
    #[error("eBPF objects loaded without their maps")]
    NotLoaded,
    #[error("map {map}: {op}: {source}")]
    Map {
        map: MapName,
        op: &'static str,
        source: libbpf_rs::Error,
    },
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
    /// Refuse to attach where another instance's programs are attached
    /// (off only under `testing.allow_other_enforcers`).
    pub exclusive: bool,
}

/// Loaded and attached programs, with their pinned maps and links. Dropping
/// it leaves them attached and pinned: enforcement outlives the process.
#[derive(Debug)]
pub struct Kernel {
    pin_path: PathBuf,
    /// The cgroup the programs are attached to, and its id.
    cgroup: (std::fs::File, u64, PathBuf),
    maps: Arc<Maps>,
    _links: Vec<(PathBuf, Link)>,
    /// How many links an earlier run left attached were taken over.
    pub taken_over: usize,
    /// Held while this process owns `pin_path`; the last field, so dropped
    /// last. None once handed over ([`Kernel::release`]).
    _lock: Option<PinLock>,
}

/// What a generation's maps hold before any of its programs runs.
pub struct StaticPolicy<'a> {
    /// The rule map's entries.
    pub rules: &'a [RuleEntry],
    /// The policy cgroups that exist now (cgroup id, policy).
    pub cgroups: &'a [(u64, PolicyRef)],
    /// Each policy's max_connections, index = policy id.
    pub limits: &'a [u32],
    /// The policies whose counters start now (at 0).
    pub new_ids: &'a [crate::policy::PolicyId],
}

/// How a start finds the pin path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// Alone: what an earlier run left is taken over with fresh maps.
    Fresh,
    /// From a running instance that handed over (`run --take-over`): its
    /// state maps are shared, as a reload shares them.
    TakeOver,
}

/// Where a reload builds its generation's policy maps, under the pin path.
const NEXT_DIR: &str = "next";

/// Loads a generation of the programs whose maps are pinned as `pins`
/// says, fills its policy maps, and attaches it at `at`: each hook's link
/// in `previous` moves onto the new program, the others are made.
fn generation(
    pins: skel::MapPins<'_>,
    programs: &Programs,
    at: &skel::AttachPoint<'_>,
    previous: &mut pins::Previous,
    policy: StaticPolicy<'_>,
) -> Result<(skel::Attached, Maps), BpfError> {
    let StaticPolicy {
        rules,
        cgroups,
        limits,
        new_ids,
    } = policy;
    let mut maps = None;
    let attached = skel::load_and_attach(pins, programs, at, previous, || {
        // Maps exist (and are pinned) once the objects are loaded: fill the
        // policy ones before any program of this generation runs.
        let m = Maps::open_in(pins.state, pins.policy)?;
        m.write_rules(rules)?;
        for (id, policy) in cgroups {
            m.set_policy_cgroup(*id, *policy)?;
        }
        m.write_limits(limits)?;
        m.init_counters(new_ids)?;
        maps = Some(m);
        Ok(())
    })?;
    Ok((attached, maps.ok_or(BpfError::NotLoaded)?))
}

impl Kernel {
    /// Loads every object, writes the static policy, attaches to the root
    /// of `cgroup_root` and pins everything under `pin_path`. What an
    /// earlier run left there stays attached until this run's programs
    /// replace it (each link's program swapped in place), then is removed.
    pub fn load(
        lock: PinLock,
        (pin_path, start): (&Path, Start),
        cgroup_root: &Path,
        programs: &Programs,
        policy: StaticPolicy<'_>,
    ) -> Result<Kernel, BpfError> {
        pins::ensure_bpffs(pin_path)?;
        let mut previous = match start {
            Start::Fresh => pins::set_aside(pin_path)?,
            Start::TakeOver => pins::Previous::pinned(pin_path)?,
        };
        let cgroup_err = |source| BpfError::Cgroup {
            path: cgroup_root.to_path_buf(),
            source,
        };
        let cgroup = std::fs::File::open(cgroup_root).map_err(cgroup_err)?;
        if programs.exclusive {
            let foreign =
                enforcers::find(&cgroup, pin_path, &previous.prog_ids()).map_err(|source| {
                    BpfError::Query {
                        cgroup: cgroup_root.to_path_buf(),
                        source,
                    }
                })?;
            if !foreign.is_empty() {
                let found: Vec<String> = foreign.iter().map(ToString::to_string).collect();
                return Err(BpfError::OtherEnforcer {
                    cgroup: cgroup_root.to_path_buf(),
                    found: found.join("; "),
                });
            }
        }
        let links_dir = pins::links_dir(pin_path);
        std::fs::create_dir_all(&links_dir).map_err(|source| BpfError::CreateDir {
            path: links_dir.clone(),
            source,
        })?;
        let id = {
            use std::os::unix::fs::MetadataExt;
            cgroup.metadata().map(|m| m.ino())
        }
        .map_err(cgroup_err)?;
        let at = skel::AttachPoint {
            fd: cgroup.as_raw_fd(),
            id,
            path: cgroup_root,
        };
        if start == Start::TakeOver {
            let mut kernel = Kernel {
                pin_path: pin_path.to_path_buf(),
                cgroup: (cgroup, id, cgroup_root.to_path_buf()),
                maps: Arc::new(Maps::open_pinned(pin_path)?),
                _links: Vec::new(),
                taken_over: previous.link_count(),
                _lock: Some(lock),
            };
            kernel.next_generation(programs, previous, policy)?;
            return Ok(kernel);
        }
        let pins = skel::MapPins {
            state: pin_path,
            policy: pin_path,
        };
        let (attached, maps) = generation(pins, programs, &at, &mut previous, policy)?;
        if !previous.is_empty() {
            tracing::info!(
                path = %pin_path.display(),
                attached = previous.link_count() + attached.taken,
                taken_over = attached.taken,
                "an earlier run's programs were still enforcing: their links now run this run's programs, and their pins are removed"
            );
        }
        previous.finish()?;
        Ok(Kernel {
            pin_path: pin_path.to_path_buf(),
            cgroup: (cgroup, id, cgroup_root.to_path_buf()),
            maps: Arc::new(maps),
            _links: attached.links,
            taken_over: attached.taken,
            _lock: Some(lock),
        })
    }

    /// A reload: a new generation of programs with policy maps of its own
    /// (built beside the ones in force, under `<pin path>/next`) and the
    /// state maps of this one, then each hook's link moved onto its new
    /// program in one step. Each connect() is judged by the old generation
    /// or the new one, whole; nothing is unjudged in between. On an error
    /// before the links move, the generation in force stays, whole.
    pub fn reload(
        &mut self,
        programs: &Programs,
        policy: StaticPolicy<'_>,
    ) -> Result<(), BpfError> {
        let own = pins::Previous::pinned(&self.pin_path)?;
        self.next_generation(programs, own, policy)
    }

    /// The generation after the one whose links are `own` (this process's,
    /// or a process's that handed over): see [`Kernel::reload`].
    fn next_generation(
        &mut self,
        programs: &Programs,
        mut own: pins::Previous,
        policy: StaticPolicy<'_>,
    ) -> Result<(), BpfError> {
        let next = self.pin_path.join(NEXT_DIR);
        pins::remove_pins(&next)?;
        std::fs::create_dir_all(&next).map_err(|source| BpfError::CreateDir {
            path: next.clone(),
            source,
        })?;
        let at = skel::AttachPoint {
            fd: self.cgroup.0.as_raw_fd(),
            id: self.cgroup.1,
            path: &self.cgroup.2,
        };
        let pins = skel::MapPins {
            state: &self.pin_path,
            policy: &next,
        };
        let (attached, _) = match generation(pins, programs, &at, &mut own, policy) {
            Ok(g) => g,
            Err(e) => {
                own.restore();
                return Err(e);
            }
        };
        // The old generation's links that did not move (the LSM's, which
        // cannot change its program) go now.
        drop(own);
        pins::promote(&next, &self.pin_path)?;
        self.maps = Arc::new(Maps::open_pinned(&self.pin_path)?);
        self._links = attached.links;
        Ok(())
    }

    pub fn maps(&self) -> Arc<Maps> {
        Arc::clone(&self.maps)
    }

    /// Gives up the pin lock after a handoff: the process that took over
    /// owns the pins from now on, and this one must not touch them.
    pub fn release(&mut self) {
        self._lock = None;
    }
}
