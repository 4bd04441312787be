//! The loopback tier (tests/README.md): the proxy core in this process on
//! 127.0.0.1 with a stand-in for the kernel side, test origins and clients
//! on loopback. No root, no namespaces, no cgroups, no eBPF:
//! `cargo test --test loopback` runs it anywhere.
//!
//! Support: [`common`] (shared with the kernel tier: the HTTP/1 codec, the
//! origins, the stress workload), [`harness`] (the in-process proxy, the
//! loopback origins and client) and [`corpus`] (the smuggling corpus).

#[path = "../common/mod.rs"]
mod common;
mod corpus;
mod harness;
mod tls_client;

mod differential;
mod forwarding;
mod fuzz_regressions;
mod h1_codec;
mod http_rules;
mod intercept;
mod proxy;
mod retries;
mod smuggling;
mod tls;
