//! The generated skeletons, and the one place that opens and loads them.

use std::mem::MaybeUninit;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use libbpf_rs::skel::{OpenSkel, SkelBuilder};
use libbpf_rs::{Link, OpenObject};

use super::pins::{link_cgroup, Previous};
use super::{BpfError, MapName, Programs};

#[allow(clippy::all, unsafe_op_in_unsafe_fn, non_camel_case_types, dead_code)]
mod connect {
    include!(concat!(env!("OUT_DIR"), "/connect.skel.rs"));
}

#[allow(clippy::all, unsafe_op_in_unsafe_fn, non_camel_case_types, dead_code)]
mod sockops {
    include!(concat!(env!("OUT_DIR"), "/sockops.skel.rs"));
}

#[allow(clippy::all, unsafe_op_in_unsafe_fn, non_camel_case_types, dead_code)]
mod release {
    include!(concat!(env!("OUT_DIR"), "/release.skel.rs"));
}

#[allow(clippy::all, unsafe_op_in_unsafe_fn, non_camel_case_types, dead_code)]
mod doors {
    include!(concat!(env!("OUT_DIR"), "/doors.skel.rs"));
}

#[allow(clippy::all, unsafe_op_in_unsafe_fn, non_camel_case_types, dead_code)]
mod lsm {
    include!(concat!(env!("OUT_DIR"), "/lsm.skel.rs"));
}

#[allow(clippy::all, unsafe_op_in_unsafe_fn, non_camel_case_types, dead_code)]
mod tc {
    include!(concat!(env!("OUT_DIR"), "/tc.skel.rs"));
}

/// The types of bpf/include/abi.h, as generated from the objects' BTF
/// (connect.bpf.c puts the enums no map names there).
pub mod types {
    pub use super::connect::types::*;
    pub use super::doors::types::sw_door_event;
    pub use super::sockops::types::sw_msg_counter;
}

/// Where a generation's maps are pinned: state under `state` (the pin
/// path: reused when already there, so counts, original destinations,
/// tuples and socket storage outlive a reload), policy under `policy` (the
/// pin path at start, a fresh directory for a reload's new generation).
#[derive(Clone, Copy)]
pub struct MapPins<'a> {
    pub state: &'a Path,
    pub policy: &'a Path,
}

/// Points each shared map of an open object at its pin (maps.h: every
/// object but tc's declares them all); libbpf's internal maps (`.rodata`)
/// are not pinned. libbpf reuses a map already pinned there and creates
/// (and pins) the others.
fn pin_maps(object: &mut OpenObject, pins: MapPins<'_>) -> Result<(), BpfError> {
    for mut map in object.maps_mut() {
        let Some(name) = map.name().to_str().and_then(MapName::from_name) else {
            continue;
        };
        let dir = if name.is_policy() {
            pins.policy
        } else {
            pins.state
        };
        let path = name.pin(dir);
        map.set_pin_path(&path)
            .map_err(|source| BpfError::Pin { path, source })?;
    }
    Ok(())
}

/// An IPv4 address as the kernel stores it (network order in memory).
fn ip4_be(addr: SocketAddr) -> u32 {
    match addr.ip() {
        IpAddr::V4(v4) => u32::from_ne_bytes(v4.octets()),
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map_or(0, |v4| u32::from_ne_bytes(v4.octets())),
    }
}

/// An IPv6 address (IPv4-mapped for IPv4) as four network-order words.
fn ip6_be(addr: SocketAddr) -> [u32; 4] {
    let octets = super::abi::addr16(addr.ip());
    let mut words = [0u32; 4];
    for (w, chunk) in words.iter_mut().zip(octets.chunks_exact(4)) {
        *w = u32::from_ne_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
    }
    words
}

fn load_err(object: &'static str) -> impl FnOnce(libbpf_rs::Error) -> BpfError {
    move |source| BpfError::Load { object, source }
}

fn pin_link(pin_path: &Path, name: &str, mut link: Link) -> Result<(PathBuf, Link), BpfError> {
    let path = super::pins::links_dir(pin_path).join(name);
    link.pin(&path).map_err(|source| BpfError::Pin {
        path: path.clone(),
        source,
    })?;
    Ok((path, link))
}

/// Pins a taken link (already pinned where the earlier run or generation
/// left it) at this run's path too: libbpf pins a link object once, so the
/// kernel object is pinned again through its descriptor. Its old pin goes
/// when the earlier run's directory is removed; the link stays pinned
/// throughout. A reload finds its own link pinned there already.
fn pin_taken_link(pin_path: &Path, name: &str, link: Link) -> Result<(PathBuf, Link), BpfError> {
    use std::os::fd::AsFd;
    let path = super::pins::links_dir(pin_path).join(name);
    let id = |l: &Link| l.info().ok().map(|i| i.id);
    if Link::open(&path).is_ok_and(|pinned| id(&pinned) == id(&link)) {
        return Ok((path, link));
    }
    super::pins::obj_pin(link.as_fd(), &path).map_err(|e| BpfError::Pin {
        path: path.clone(),
        source: libbpf_rs::Error::from(e),
    })?;
    Ok((path, link))
}

/// Attaches `prog` to the cgroup, or, where the earlier run left a link of
/// the same program on the same cgroup, moves that link onto `prog` in one
/// step (the kernel swaps the program under the link: each connect() runs
/// the old program or the new one, never neither).
fn attach_or_take(
    prog: &libbpf_rs::ProgramMut<'_>,
    name: &'static str,
    at: &AttachPoint<'_>,
    pin_path: &Path,
    previous: &mut Previous,
) -> Result<((PathBuf, Link), bool), BpfError> {
    let attach_err = |source| BpfError::Attach {
        program: name,
        cgroup: at.path.to_path_buf(),
        source,
    };
    if let Some(mut link) = previous.take_link(name, |l| link_cgroup(l) == Some(at.id)) {
        link.update_prog(prog).map_err(attach_err)?;
        return Ok((pin_taken_link(pin_path, name, link)?, true));
    }
    let link = prog.attach_cgroup(at.fd).map_err(attach_err)?;
    Ok((pin_link(pin_path, name, link)?, false))
}

/// The cgroup the programs attach to: its descriptor, id and path.
pub struct AttachPoint<'a> {
    pub fd: i32,
    pub id: u64,
    pub path: &'a Path,
}

/// What was attached: the pinned links, and how many of them were an
/// earlier run's, moved onto this run's programs.
pub struct Attached {
    pub links: Vec<(PathBuf, Link)>,
    pub taken: usize,
}

/// Loads every object (their shared maps pinned as `pins` says), runs
/// `before_attach` once the maps exist, then attaches every program to the
/// cgroup `at` and pins the links under `<pins.state>/links`, taking over the
/// links of `previous` where it has them. With `programs.sockmap` (the
/// proxy's network namespace cookie), sockops links sockets for the
/// sockmap engine and sw_msg is attached to sk_workloads.
pub fn load_and_attach(
    pins: MapPins<'_>,
    programs: &Programs,
    at: &AttachPoint<'_>,
    previous: &mut Previous,
    before_attach: impl FnOnce() -> Result<(), BpfError>,
) -> Result<Attached, BpfError> {
    let (proxy, sockmap) = (programs.proxy, programs.sockmap);
    let mut connect_obj = MaybeUninit::uninit();
    let mut open = connect::ConnectSkelBuilder::default()
        .open(&mut connect_obj)
        .map_err(load_err("connect.bpf.o"))?;
    pin_maps(open.open_object_mut(), pins)?;
    let rodata = open
        .maps
        .rodata_data
        .as_deref_mut()
        .ok_or(BpfError::NotLoaded)?;
    rodata.proxy_ip4 = ip4_be(proxy.v4);
    rodata.proxy_port4 = proxy.v4.port();
    rodata.proxy_ip6 = ip6_be(proxy.v6);
    rodata.proxy_port6 = proxy.v6.port();
    let connect = open.load().map_err(load_err("connect.bpf.o"))?;

    let mut sockops_obj = MaybeUninit::uninit();
    let mut open = sockops::SockopsSkelBuilder::default()
        .open(&mut sockops_obj)
        .map_err(load_err("sockops.bpf.o"))?;
    pin_maps(open.open_object_mut(), pins)?;
    let rodata = open
        .maps
        .rodata_data
        .as_deref_mut()
        .ok_or(BpfError::NotLoaded)?;
    rodata.sockmap_enabled = sockmap.is_some();
    rodata.proxy_netns_cookie = sockmap.unwrap_or(0);
    rodata.proxy_port4 = proxy.v4.port();
    rodata.proxy_port6 = proxy.v6.port();
    let sockops = open.load().map_err(load_err("sockops.bpf.o"))?;

    let mut release_obj = MaybeUninit::uninit();
    let mut open = release::ReleaseSkelBuilder::default()
        .open(&mut release_obj)
        .map_err(load_err("release.bpf.o"))?;
    pin_maps(open.open_object_mut(), pins)?;
    let release = open.load().map_err(load_err("release.bpf.o"))?;

    let mut doors_obj = MaybeUninit::uninit();
    let mut open = doors::DoorsSkelBuilder::default()
        .open(&mut doors_obj)
        .map_err(load_err("doors.bpf.o"))?;
    pin_maps(open.open_object_mut(), pins)?;
    let doors = open.load().map_err(load_err("doors.bpf.o"))?;

    let mut lsm_obj = MaybeUninit::uninit();
    let lsm = if programs.packet_lsm {
        let mut open = lsm::LsmSkelBuilder::default()
            .open(&mut lsm_obj)
            .map_err(load_err("lsm.bpf.o"))?;
        pin_maps(open.open_object_mut(), pins)?;
        Some(open.load().map_err(load_err("lsm.bpf.o"))?)
    } else {
        None
    };

    before_attach()?;

    // sw_msg first, so that no socket is linked without it. The attachment
    // lives as long as the (pinned) map.
    if sockmap.is_some() {
        use std::os::fd::{AsFd, AsRawFd};
        sockops
            .progs
            .sw_msg
            .attach_sockmap(sockops.maps.sk_workloads.as_fd().as_raw_fd())
            .map_err(|source| BpfError::AttachMap {
                program: "sw_msg",
                map: MapName::SkWorkloads,
                source,
            })?;
    }

    // sockops first: a connect() redirected before it is attached would
    // never have its original destination recorded; sock_release before
    // connect4/6: a socket counted before it is attached would never give
    // its slot back.
    let mut cgroup_progs = vec![
        ("sw_sockops", &sockops.progs.sw_sockops),
        ("sw_sock_release", &release.progs.sw_sock_release),
        ("sw_connect4", &connect.progs.sw_connect4),
        ("sw_connect6", &connect.progs.sw_connect6),
        ("sw_sendmsg4", &doors.progs.sw_sendmsg4),
        ("sw_sendmsg6", &doors.progs.sw_sendmsg6),
        ("sw_sock_create", &doors.progs.sw_sock_create),
    ];
    if programs.egress_wall {
        cgroup_progs.push(("sw_egress", &doors.progs.sw_egress));
    }
    let mut links = Vec::new();
    let mut taken = 0;
    for (name, prog) in cgroup_progs {
        let (link, was_taken) = attach_or_take(prog, name, at, pins.state, previous)?;
        links.push(link);
        taken += usize::from(was_taken);
    }
    // An LSM link cannot change its program: the new one is attached beside
    // the earlier run's (both refuse the same sockets) and that one goes in
    // Previous::finish.
    if let Some(lsm) = &lsm {
        let link =
            lsm.progs
                .sw_socket_create
                .attach_lsm()
                .map_err(|source| BpfError::AttachLsm {
                    program: "sw_socket_create",
                    source,
                })?;
        links.push(pin_link(pins.state, "sw_socket_create", link)?);
    }
    Ok(Attached { links, taken })
}

/// Loads the return-path tc program with `mark` and hands its descriptor to
/// `attach`; the program stays in the kernel through what `attach` attaches.
pub fn with_tc_program<R, E: From<BpfError>>(
    mark: u32,
    attach: impl FnOnce(std::os::fd::BorrowedFd<'_>) -> Result<R, E>,
) -> Result<R, E> {
    use std::os::fd::AsFd;
    let mut obj = MaybeUninit::uninit();
    let mut open = tc::TcSkelBuilder::default()
        .open(&mut obj)
        .map_err(load_err("tc.bpf.o"))?;
    open.maps
        .rodata_data
        .as_deref_mut()
        .ok_or(BpfError::NotLoaded)?
        .transparent_mark = mark;
    let skel = open.load().map_err(load_err("tc.bpf.o"))?;
    attach(skel.progs.sw_tc_ingress.as_fd())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bpf::abi::limits;

    /// The maps an object declares, (name, max_entries), without libbpf's
    /// internal ones. Opening parses the object; it needs no privileges.
    macro_rules! declared_maps {
        ($builder:ty) => {{
            let mut obj = MaybeUninit::uninit();
            let open = <$builder>::default()
                .open(&mut obj)
                .expect("opening the object");
            let mut maps: Vec<(String, u32)> = open
                .open_object()
                .maps()
                .map(|m| (m.name().to_string_lossy().into_owned(), m.max_entries()))
                .filter(|(name, _)| !name.contains('.'))
                .collect();
            maps.sort();
            maps
        }};
    }

    fn objects() -> Vec<(&'static str, Vec<(String, u32)>)> {
        vec![
            ("connect", declared_maps!(connect::ConnectSkelBuilder)),
            ("sockops", declared_maps!(sockops::SockopsSkelBuilder)),
            ("release", declared_maps!(release::ReleaseSkelBuilder)),
            ("doors", declared_maps!(doors::DoorsSkelBuilder)),
            ("lsm", declared_maps!(lsm::LsmSkelBuilder)),
            ("tc", declared_maps!(tc::TcSkelBuilder)),
        ]
    }

    #[test]
    fn every_shared_map_is_named_and_declared_once_for_all() {
        let mut all: Vec<&str> = MapName::ALL.iter().map(|m| m.as_str()).collect();
        all.sort_unstable();
        for (object, maps) in objects() {
            let names: Vec<&str> = maps.iter().map(|(n, _)| n.as_str()).collect();
            let want = if object == "tc" {
                Vec::new()
            } else {
                all.clone()
            };
            assert_eq!(names, want, "{object}.bpf.o");
        }
    }

    #[test]
    fn the_limits_userspace_checks_are_the_maps_sizes() {
        let (_, maps) = &objects()[0];
        let size = |name: MapName| {
            maps.iter()
                .find(|(n, _)| n == name.as_str())
                .map(|(_, max)| *max as usize)
        };
        let cases = [
            (MapName::PolicyRules, limits::MAX_RULE_PREFIXES),
            (MapName::PolicyConns, limits::MAX_POLICIES),
            (MapName::OrigDsts, limits::TRACKED_CONNS as usize),
        ];
        for (map, limit) in cases {
            assert_eq!(size(map), Some(limit), "{map}");
        }
    }
}
