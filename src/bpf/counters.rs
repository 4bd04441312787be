//! The kernel's per-CPU counters: their keys created at load, read summed
//! over CPUs, and copied into the exported metrics (whose names and labels
//! [`crate::metrics`] owns).

use super::abi::{self, Pod};
use super::{BpfError, Maps};
use crate::metrics::{
    self, ConnectDecision, ConnectRefusal, EventDrop, SockmapPath, SockmapSide, SockmapSwitch,
};
use crate::policy::{PolicyId, PolicySet};

/// What the door programs count per policy (enum sw_door_event).
pub use abi::sw_door_event as DoorEvent;

/// Every door event, in the kernel's order (index = its value).
pub const DOOR_EVENTS: [DoorEvent; DoorEvent::SW_DOOR_EVENTS.0 as usize] = [
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

/// Every verdict_counters verdict of a policy.
const VERDICTS: [abi::sw_verdict; abi::sw_verdict::SW_VERDICT_MAX.0 as usize] = [
    abi::sw_verdict::SW_VERDICT_DENY,
    abi::sw_verdict::SW_VERDICT_ALLOW,
    abi::sw_verdict::SW_VERDICT_REDIRECT,
    abi::sw_verdict::SW_VERDICT_WOULD_DENY,
];

/// Every conn_counters event of a policy.
const CONN_EVENTS: [abi::sw_conn_event; abi::sw_conn_event::SW_CONN_EVENTS.0 as usize] = [
    abi::sw_conn_event::SW_CONN_REFUSED_LIMIT,
    abi::sw_conn_event::SW_CONN_REFUSED_STORAGE,
    abi::sw_conn_event::SW_CONN_UNACCEPTED,
    abi::sw_conn_event::SW_CONN_UNREACHED,
];

/// One policy's redirected connections as the kernel counts them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct ConnCounts {
    /// Redirected sockets open now.
    in_flight: u64,
    /// The policy's max_connections.
    limit: u64,
    /// connect() calls refused because `in_flight` was at `limit`.
    refused_limit: u64,
    /// connect() calls refused because the socket got no storage.
    refused_storage: u64,
    /// Connections the workload closed before the proxy accepted them.
    unaccepted: u64,
    /// Connections closed without their handshake with the listener done.
    unreached: u64,
}

/// Kernel-side connect() decisions of one policy.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct ConnectCounts {
    allowed: u64,
    redirected: u64,
    denied: u64,
    /// Let through by `mode: audit`: no rule allows them.
    would_deny: u64,
}

/// The sockmap engine's kernel-side counters (see enum sw_msg_counter).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct MsgCounts {
    redirected_msgs: u64,
    redirected_bytes: u64,
    tcp_msgs: u64,
    tcp_bytes: u64,
    /// Connections whose first message was redirected.
    first_redirect: u64,
    /// Connections whose first message went through TCP.
    first_tcp: u64,
    /// Redirect -> TCP because SW_MSG_UNREAD_LIMIT was reached.
    unread_limit: u64,
    /// Redirect -> TCP because the proxy's socket was gone.
    peer_gone: u64,
    linked_workloads: u64,
    linked_proxy: u64,
}

impl Maps {
    /// Creates every per-CPU counter of the policies `ids`, zeroed (a new
    /// policy's counters start at 0, whatever an earlier holder of its id
    /// counted).
    pub(super) fn init_counters(&self, ids: &[PolicyId]) -> Result<(), BpfError> {
        let ncpu = libbpf_rs::num_possible_cpus()
            .map_err(self.verdict_counters.error("count possible CPUs"))?;
        let zeros = vec![0u64.to_ne_bytes().to_vec(); ncpu];
        for &id in ids {
            for e in DOOR_EVENTS {
                let index = id * DoorEvent::SW_DOOR_EVENTS.0 + e.0;
                self.door_counters
                    .zero_percpu(&index.to_ne_bytes(), &zeros)?;
            }
            for v in VERDICTS {
                let key = abi::counter_key(id, v);
                self.verdict_counters.zero_percpu(key.as_bytes(), &zeros)?;
            }
            for e in CONN_EVENTS {
                let key = abi::conn_counter_key(id, e);
                self.conn_counters.zero_percpu(key.as_bytes(), &zeros)?;
            }
        }
        Ok(())
    }

    /// Redirected sockets of policy `id` open now (0 if unreadable).
    pub fn in_flight(&self, id: PolicyId) -> u64 {
        self.conn_counts(id).map_or(0, |c| c.in_flight)
    }

    /// A policy's open redirected connections, its limit, and what happened
    /// to redirects besides the verdict, as the kernel counted them.
    fn conn_counts(&self, policy_id: PolicyId) -> Result<ConnCounts, BpfError> {
        use abi::sw_conn_event as E;
        let read = |e| {
            let key = abi::conn_counter_key(policy_id, e);
            self.conn_counters.percpu_sum(key.as_bytes())
        };
        let slots = self
            .policy_conns
            .lookup(&policy_id.to_ne_bytes())?
            .as_deref()
            .and_then(abi::sw_policy_conns::from_bytes)
            .unwrap_or_default();
        let limit = self
            .policy_limits
            .lookup(&policy_id.to_ne_bytes())?
            .and_then(|v| Some(u64::from_ne_bytes(v.get(..8)?.try_into().ok()?)))
            .unwrap_or(0);
        Ok(ConnCounts {
            in_flight: slots.in_flight,
            limit,
            refused_limit: read(E::SW_CONN_REFUSED_LIMIT)?,
            refused_storage: read(E::SW_CONN_REFUSED_STORAGE)?,
            unaccepted: read(E::SW_CONN_UNACCEPTED)?,
            unreached: read(E::SW_CONN_UNREACHED)?,
        })
    }

    /// connect() decisions so far for a policy.
    fn connect_counts(&self, policy_id: PolicyId) -> Result<ConnectCounts, BpfError> {
        let read = |v| {
            let key = abi::counter_key(policy_id, v);
            self.verdict_counters.percpu_sum(key.as_bytes())
        };
        Ok(ConnectCounts {
            allowed: read(abi::sw_verdict::SW_VERDICT_ALLOW)?,
            redirected: read(abi::sw_verdict::SW_VERDICT_REDIRECT)?,
            denied: read(abi::sw_verdict::SW_VERDICT_DENY)?,
            would_deny: read(abi::sw_verdict::SW_VERDICT_WOULD_DENY)?,
        })
    }

    /// What the door programs counted so far for a policy, one count per
    /// event of [`DOOR_EVENTS`] (sums over CPUs).
    fn door_counts(&self, policy_id: PolicyId) -> Result<Vec<(DoorEvent, u64)>, BpfError> {
        DOOR_EVENTS
            .iter()
            .map(|e| {
                let index = abi::door_index(policy_id, *e);
                Ok((*e, self.door_counters.percpu_sum(&index.to_ne_bytes())?))
            })
            .collect()
    }

    /// The events of a policy the kernel did not send (sums over CPUs).
    fn event_drops(&self, policy_id: PolicyId) -> Result<abi::EventDrops, BpfError> {
        let per_cpu = self.event_buckets.percpu(&policy_id.to_ne_bytes())?;
        Ok(abi::event_drops(&per_cpu))
    }

    /// What the sockmap engine's programs did so far (sums over CPUs).
    fn msg_counts(&self) -> Result<MsgCounts, BpfError> {
        use abi::sw_msg_counter as C;
        let read = |c: C| self.msg_counters.percpu_sum(&c.0.to_ne_bytes());
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
}

/// Copies the kernel's per-CPU counters (connect() decisions, connection
/// limits, the other doors, the sockmap engine) into the exported ones.
pub fn refresh_metrics(maps: &Maps, policies: &PolicySet) {
    match maps.msg_counts() {
        Ok(c) => record_sockmap(&c),
        Err(e) => tracing::warn!(error = %e, "reading sockmap counters"),
    }
    for p in &policies.policies {
        let id = p.id;
        match maps.conn_counts(id) {
            Ok(c) => record_conns(&p.name, &c),
            Err(e) => tracing::warn!(error = %e, "reading kernel connection counters"),
        }
        match maps.door_counts(id) {
            Ok(c) => record_doors(&p.name, &c),
            Err(e) => tracing::warn!(error = %e, "reading kernel door counters"),
        }
        match maps.connect_counts(id) {
            Ok(c) => record_connect(&p.name, &c),
            Err(e) => tracing::warn!(error = %e, "reading kernel counters"),
        }
        match maps.event_drops(id) {
            Ok(d) => record_event_drops(&p.name, &d),
            Err(e) => tracing::warn!(error = %e, "reading kernel event drops"),
        }
    }
}

fn record_connect(policy: &str, c: &ConnectCounts) {
    for (decision, n) in [
        (ConnectDecision::Allowed, c.allowed),
        (ConnectDecision::Redirected, c.redirected),
        (ConnectDecision::Denied, c.denied),
    ] {
        metrics::connect_decisions(policy, decision, n);
    }
    metrics::would_deny_connects(policy, c.would_deny);
}

fn record_conns(policy: &str, c: &ConnCounts) {
    metrics::redirected_connections(policy, c.in_flight, c.limit);
    metrics::connect_refused(policy, ConnectRefusal::ConnectionLimit, c.refused_limit);
    metrics::connect_refused(policy, ConnectRefusal::SocketStorage, c.refused_storage);
    metrics::redirects_unaccepted(policy, c.unaccepted);
    metrics::redirects_unreached(policy, c.unreached);
}

fn record_event_drops(policy: &str, d: &abi::EventDrops) {
    metrics::kernel_events_dropped(policy, EventDrop::RateLimit, d.rate_limit);
    metrics::kernel_events_dropped(policy, EventDrop::RingFull, d.ring_full);
}

fn record_doors(policy: &str, counts: &[(DoorEvent, u64)]) {
    for (event, n) in counts {
        metrics::door_events(policy, *event, *n);
    }
}

fn record_sockmap(c: &MsgCounts) {
    metrics::sockmap_sent(SockmapPath::Redirect, c.redirected_msgs, c.redirected_bytes);
    metrics::sockmap_sent(SockmapPath::Tcp, c.tcp_msgs, c.tcp_bytes);
    metrics::sockmap_first_path(SockmapPath::Redirect, c.first_redirect);
    metrics::sockmap_first_path(SockmapPath::Tcp, c.first_tcp);
    metrics::sockmap_to_tcp(SockmapSwitch::UnreadLimit, c.unread_limit);
    metrics::sockmap_to_tcp(SockmapSwitch::ProxySocketClosed, c.peer_gone);
    metrics::sockmap_linked(SockmapSide::Workload, c.linked_workloads);
    metrics::sockmap_linked(SockmapSide::Proxy, c.linked_proxy);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The exposition lines (no comments) of what `record` exports.
    fn exported(record: impl FnOnce()) -> Vec<String> {
        let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        ::metrics::with_local_recorder(&recorder, record);
        let mut lines: Vec<String> = handle
            .render()
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .map(str::to_string)
            .collect();
        lines.sort();
        lines
    }

    #[test]
    fn each_kernel_count_becomes_its_series() {
        let connect = ConnectCounts {
            allowed: 1,
            redirected: 2,
            denied: 3,
            would_deny: 10,
        };
        let conns = ConnCounts {
            in_flight: 4,
            limit: 5,
            refused_limit: 6,
            refused_storage: 7,
            unaccepted: 8,
            unreached: 9,
        };
        let msgs = MsgCounts {
            redirected_msgs: 11,
            redirected_bytes: 12,
            tcp_msgs: 13,
            tcp_bytes: 14,
            first_redirect: 15,
            first_tcp: 16,
            unread_limit: 17,
            peer_gone: 18,
            linked_workloads: 19,
            linked_proxy: 20,
        };
        type Case = (&'static str, Box<dyn FnOnce()>, &'static [&'static str]);
        let cases: Vec<Case> = vec![
            (
                "connect",
                Box::new(move || record_connect("p", &connect)),
                &[
                    r#"sockwarden_connect_decisions_total{policy="p",verdict="allowed"} 1"#,
                    r#"sockwarden_connect_decisions_total{policy="p",verdict="denied"} 3"#,
                    r#"sockwarden_connect_decisions_total{policy="p",verdict="redirected"} 2"#,
                    r#"sockwarden_connect_denied_total{policy="p"} 3"#,
                    r#"sockwarden_would_deny_total{policy="p",stage="connect"} 10"#,
                ],
            ),
            (
                "conns",
                Box::new(move || record_conns("p", &conns)),
                &[
                    r#"sockwarden_connect_refused_total{policy="p",reason="connection_limit"} 6"#,
                    r#"sockwarden_connect_refused_total{policy="p",reason="socket_storage"} 7"#,
                    r#"sockwarden_redirected_connections_limit{policy="p"} 5"#,
                    r#"sockwarden_redirected_connections{policy="p"} 4"#,
                    r#"sockwarden_redirects_unaccepted_total{policy="p"} 8"#,
                    r#"sockwarden_redirects_unreached_total{policy="p"} 9"#,
                ],
            ),
            (
                "event drops",
                Box::new(|| {
                    record_event_drops(
                        "p",
                        &abi::EventDrops {
                            rate_limit: 24,
                            ring_full: 25,
                        },
                    )
                }),
                &[
                    r#"sockwarden_kernel_events_dropped_total{policy="p",reason="rate_limit"} 24"#,
                    r#"sockwarden_kernel_events_dropped_total{policy="p",reason="ring_full"} 25"#,
                ],
            ),
            (
                "doors",
                Box::new(|| {
                    record_doors(
                        "p",
                        &[
                            (DoorEvent::SW_DOOR_UDP_QUIC, 21),
                            (DoorEvent::SW_DOOR_SOCK_PACKET, 22),
                            (DoorEvent::SW_DOOR_DROP_PROTOCOL, 23),
                        ],
                    )
                }),
                &[
                    r#"sockwarden_egress_dropped_packets_total{policy="p",reason="protocol"} 23"#,
                    r#"sockwarden_sockets_refused_total{policy="p",kind="packet"} 22"#,
                    r#"sockwarden_udp_decisions_total{policy="p",verdict="quic"} 21"#,
                ],
            ),
            (
                "sockmap",
                Box::new(move || record_sockmap(&msgs)),
                &[
                    r#"sockwarden_sockmap_bytes_total{path="redirect"} 12"#,
                    r#"sockwarden_sockmap_bytes_total{path="tcp"} 14"#,
                    r#"sockwarden_sockmap_connections_total{first_path="redirect"} 15"#,
                    r#"sockwarden_sockmap_connections_total{first_path="tcp"} 16"#,
                    r#"sockwarden_sockmap_linked_sockets_total{side="proxy"} 20"#,
                    r#"sockwarden_sockmap_linked_sockets_total{side="workload"} 19"#,
                    r#"sockwarden_sockmap_messages_total{path="redirect"} 11"#,
                    r#"sockwarden_sockmap_messages_total{path="tcp"} 13"#,
                    r#"sockwarden_sockmap_switches_to_tcp_total{reason="proxy_socket_closed"} 18"#,
                    r#"sockwarden_sockmap_switches_to_tcp_total{reason="unread_limit"} 17"#,
                ],
            ),
        ];
        for (what, record, want) in cases {
            assert_eq!(exported(record), *want, "{what}");
        }
    }

    #[test]
    fn a_later_refresh_sets_the_kernels_total() {
        let lines = exported(|| {
            let c = |denied| ConnectCounts {
                denied,
                ..Default::default()
            };
            record_connect("p", &c(5));
            record_connect("p", &c(9));
        });
        assert!(
            lines.contains(&r#"sockwarden_connect_denied_total{policy="p"} 9"#.to_string()),
            "{lines:?}"
        );
    }
}
