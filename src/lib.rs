//! sockwarden: an eBPF-first HTTP/1.1 egress policy enforcer.
//!
//! The kernel side (bpf/) intercepts connect() of processes in policy
//! cgroups; this crate loads it, keeps its maps, and runs the layer-7 proxy
//! the kernel redirects to. See docs/ARCHITECTURE.md.

pub mod accesslog;
pub mod admin;
pub mod bpf;
pub mod caps;
pub mod cgroup;
pub mod cli;
pub mod config;
pub mod events;
pub mod features;
pub mod handoff;
pub mod inspect;
pub mod live;
pub mod metrics;
pub mod notify;
pub mod policy;
pub mod proxy;
pub mod reload;
pub mod run;
pub mod status;
pub mod tls;
pub mod transparent;
