//! TLS for HTTPS egress: reading the workload's ClientHello, the node CA
//! and the leaves it signs for interception, and the upstream TLS client.

pub mod alert;
pub mod ca;
pub mod client;
pub mod hello;
pub mod leaf;
pub mod names;
pub mod server;
