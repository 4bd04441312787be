//! The kernel tier (tests/README.md): the real binary, real eBPF programs,
//! real cgroups and network namespaces. Every test builds its own topology
//! (node, origin and pod namespaces, addresses that exist only inside
//! them), its own cgroups and its own pin path, and removes them even when
//! it fails. Root is required: without it every test fails saying so, none
//! skips. `scripts/vmtest.sh` runs this target on each kernel of the
//! matrix.
//!
//! Support: [`common`] (shared with the loopback tier: the HTTP/1 codec,
//! the origins, the stress workload), [`support`] (root, unique names,
//! processes in a namespace and cgroup), [`netns`], [`cgroup`] and [`sw`]
//! (the binary under test and workload helpers).

mod cgroup;
#[path = "../common/mod.rs"]
mod common;
mod netns;
mod support;
mod sw;

mod audit;
mod bodies;
mod drain;
mod enforcement;
mod flood;
mod https;
mod incident;
mod inspect;
mod lifecycle;
mod limits;
mod reload;
mod service;
mod side_doors;
mod sockmap;
mod status;
mod upgrade;
