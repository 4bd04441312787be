//! What the kernel reports through the events ring buffer
//! (bpf/include/events.h), read by `run`:
//!
//! - a connect() or UDP send refused with EPERM becomes one access-log line
//!   with `"kind":"connect_denied"` ([`denied_line`]). The access log, not
//!   the diagnostic log: it is already the JSON record of every access
//!   decision (a request's 403 is there), shipped and queried by the same
//!   pipeline, with a bounded queue that never makes anyone wait;
//! - a redirected connection that never reached the listener is logged once
//!   per likely cause, in the diagnostic log ([`unreached_cause`]): it is a
//!   fault of the node's setup, not an access decision. Each one is counted
//!   in `sockwarden_redirects_unreached_total` by the kernel.
//!
//! The kernel rate-limits events per policy and counts what it did not send
//! (`sockwarden_kernel_events_dropped_total`). The reader is a task on the
//! ring buffer's epoll descriptor (AsyncFd); decoding and every decision
//! are pure functions here and in [`crate::bpf::abi`].

use std::collections::HashSet;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use libbpf_rs::RingBuffer;
use tokio::io::unix::AsyncFd;

use crate::accesslog::{AccessLog, DeniedConnect};
use crate::bpf::abi::{EventKind, KernelEvent};
use crate::bpf::{BpfError, Maps};
use crate::config::Config;
use crate::policy::kernel::Transport;
use crate::policy::PolicySet;

/// How often the ring is read even without a wake-up (a backstop).
const BACKSTOP: Duration = Duration::from_secs(1);

/// The access-log line of a denied connect or send; None for another kind
/// of event.
pub fn denied_line(
    e: &KernelEvent,
    policies: &PolicySet,
    now: SystemTime,
) -> Option<DeniedConnect> {
    let (kind, call) = match e.kind {
        EventKind::ConnectDenied => ("connect_denied", "connect"),
        EventKind::SendmsgDenied => ("connect_denied", "sendmsg"),
        // mode: audit let it through; no egress rule allows it.
        EventKind::ConnectWouldDeny => ("connect_would_deny", "connect"),
        EventKind::Unreached => return None,
    };
    let policy = policies.get(e.policy_id);
    Some(DeniedConnect {
        time: now,
        kind,
        call,
        policy: policy.map(|p| p.name.clone()),
        cgroup: policy.map(|p| p.cgroup.to_string()),
        cgroup_id: e.cgroup_id,
        pid: e.pid,
        comm: e.comm.clone(),
        protocol: match e.transport {
            Transport::Tcp => "tcp",
            Transport::Udp => "udp",
        },
        destination: e.dst.ip().to_string(),
        port: e.dst.port(),
        netns_cookie: e.netns_cookie,
    })
}

/// The likely reason redirected connections never reached the listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Cause {
    /// The listener is on loopback and the workload in another namespace:
    /// its connect went to its own namespace's loopback.
    LoopbackListener,
    /// The workload is in another namespace; the listener is not loopback.
    OtherNamespace,
    /// The workload shares the proxy's namespace.
    SameNamespace,
}

/// Why a redirected connection of `e` never reached the proxy listening on
/// `listen` (the listener of the destination's family), with the sentence
/// that says so; `own_netns` is the proxy's network namespace cookie.
pub fn unreached_cause(e: &KernelEvent, listen: SocketAddr, own_netns: u64) -> (Cause, String) {
    let ns = e.netns_cookie;
    let what = format!(
        "a redirected connect() to {} (pid {} {:?}) never reached the proxy's listener; \
         each one is counted in sockwarden_redirects_unreached_total",
        e.dst, e.pid, e.comm
    );
    if ns == own_netns {
        let text = format!(
            "proxy.listen {listen}: {what}: the workload shares sockwarden's network namespace, \
             so the listener refused or did not answer (its accept backlog full?)"
        );
        (Cause::SameNamespace, text)
    } else if listen.ip().is_loopback() {
        let text = format!(
            "proxy.listen {listen} is loopback; workloads in network namespace cookie {ns} \
             cannot reach it ({what}): listen on an address of the node that they route to"
        );
        (Cause::LoopbackListener, text)
    } else {
        let text = format!(
            "proxy.listen {listen}: workloads in network namespace cookie {ns} cannot reach it \
             ({what}): check their route to it and any firewall between"
        );
        (Cause::OtherNamespace, text)
    }
}

/// Where the kernel sends a redirect of `dst`: `listen` for IPv4,
/// `listen_v6` (or `listen`) for IPv6.
fn listener_for(dst: SocketAddr, listen: SocketAddr, listen_v6: Option<SocketAddr>) -> SocketAddr {
    if dst.is_ipv4() {
        listen
    } else {
        listen_v6.unwrap_or(listen)
    }
}

/// The ring buffer, and its epoll descriptor for tokio's reactor. The
/// buffer is not Sync (its callback is mutable state); the mutex makes the
/// reader task Send, and only that task ever takes it.
struct Ring {
    epoll_fd: RawFd,
    buffer: Mutex<RingBuffer<'static>>,
}

impl AsRawFd for Ring {
    fn as_raw_fd(&self) -> RawFd {
        self.epoll_fd
    }
}

/// Starts reading the events ring buffer: denied connects go to `log`,
/// unreached redirects to the diagnostic log (once per cause). The task
/// ends with the runtime.
pub fn spawn(
    maps: &Maps,
    policies: crate::live::Live<PolicySet>,
    config: &Config,
    log: AccessLog,
) -> Result<(), BpfError> {
    let (listen, listen_v6) = (config.proxy.listen, config.proxy.listen_v6);
    let own_netns = crate::proxy::upstream::own_netns_cookie();
    let mut said = HashSet::new();
    let ring = maps.event_ring(move |e| {
        // The policies in force when the event is read: ids are stable
        // across reloads, so its policy keeps its name.
        let policies = policies.get();
        if let Some(line) = denied_line(&e, &policies, SystemTime::now()) {
            log.write_denied(line);
            return;
        }
        let (cause, text) = unreached_cause(&e, listener_for(e.dst, listen, listen_v6), own_netns);
        if said.insert(cause) {
            let policy = policies.get(e.policy_id).map_or("?", |p| p.name.as_str());
            tracing::warn!(policy, netns_cookie = e.netns_cookie, "{text}");
        }
    })?;
    let ring = Ring {
        epoll_fd: ring.epoll_fd(),
        buffer: Mutex::new(ring),
    };
    // SAFETY: Ring owns the ring buffer whose epoll descriptor it names; the
    // buffer closes it only when dropped, which is after the AsyncFd that
    // owns the Ring has deregistered it.
    let ring = unsafe { AsyncFd::register(ring) }.map_err(|e| BpfError::Map {
        map: crate::bpf::MapName::Events,
        op: "watch ring buffer",
        source: libbpf_rs::Error::from(e.into_parts().1),
    })?;
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(BACKSTOP);
        loop {
            tokio::select! {
                ready = ring.readable() => match ready {
                    // Cleared before reading: a record that lands after
                    // the read wakes the task again.
                    Ok(mut guard) => guard.clear_ready(),
                    Err(e) => {
                        tracing::error!(error = %e, "waiting on the events ring buffer; kernel events are no longer read");
                        return;
                    }
                },
                _ = tick.tick() => {}
            }
            let buffer = ring.get_ref().buffer.lock();
            let buffer = buffer.unwrap_or_else(|poisoned| poisoned.into_inner());
            if let Err(e) = buffer.consume() {
                tracing::warn!(error = %e, "reading the events ring buffer");
            }
        }
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn event(kind: EventKind, dst: &str, transport: Transport, netns: u64) -> KernelEvent {
        KernelEvent {
            kind,
            policy_id: 0,
            cgroup_id: 4242,
            netns_cookie: netns,
            pid: 77,
            comm: "curl".into(),
            dst: dst.parse().unwrap(),
            transport,
        }
    }

    fn policies() -> PolicySet {
        let text = "proxy: { listen: \"10.77.0.1:15001\" }\npolicies:\n  - name: pods\n    cgroup: /kubepods/pods\n    egress:\n      - to: [\"10.0.0.0/8\"]\n        ports: [80]\n";
        PolicySet::compile(&Config::parse(text, Path::new("t.yaml")).unwrap())
    }

    #[test]
    fn denied_events_become_connect_denied_lines() {
        let set = policies();
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let cases = [
            (
                event(EventKind::ConnectDenied, "10.77.1.10:81", Transport::Tcp, 9),
                Some(serde_json::json!({
                    "time": "2027-01-15T08:00:00.000Z", "kind": "connect_denied",
                    "call": "connect", "policy": "pods", "cgroup": "/kubepods/pods",
                    "cgroup_id": 4242, "pid": 77, "comm": "curl", "protocol": "tcp",
                    "destination": "10.77.1.10", "port": 81, "netns_cookie": 9
                })),
            ),
            (
                event(
                    EventKind::ConnectWouldDeny,
                    "10.77.1.10:82",
                    Transport::Tcp,
                    9,
                ),
                Some(serde_json::json!({
                    "time": "2027-01-15T08:00:00.000Z", "kind": "connect_would_deny",
                    "call": "connect", "policy": "pods", "cgroup": "/kubepods/pods",
                    "cgroup_id": 4242, "pid": 77, "comm": "curl", "protocol": "tcp",
                    "destination": "10.77.1.10", "port": 82, "netns_cookie": 9
                })),
            ),
            (
                event(
                    EventKind::SendmsgDenied,
                    "[fd77:1::10]:53",
                    Transport::Udp,
                    9,
                ),
                Some(serde_json::json!({
                    "time": "2027-01-15T08:00:00.000Z", "kind": "connect_denied",
                    "call": "sendmsg", "policy": "pods", "cgroup": "/kubepods/pods",
                    "cgroup_id": 4242, "pid": 77, "comm": "curl", "protocol": "udp",
                    "destination": "fd77:1::10", "port": 53, "netns_cookie": 9
                })),
            ),
            (
                event(EventKind::Unreached, "10.77.1.10:80", Transport::Tcp, 9),
                None,
            ),
        ];
        for (e, want) in cases {
            let got = denied_line(&e, &set, t).map(|l| serde_json::to_value(l).unwrap());
            assert_eq!(got, want, "{e:?}");
        }
        // A policy id the configuration does not have: no name, still a line.
        let mut e = event(EventKind::ConnectDenied, "10.0.0.1:1", Transport::Tcp, 9);
        e.policy_id = 9;
        let line = denied_line(&e, &set, t).unwrap();
        assert_eq!((line.policy, line.cgroup), (None, None));
    }

    #[test]
    fn unreached_redirects_are_explained_by_namespace_and_listener() {
        let sa = |s: &str| s.parse::<SocketAddr>().unwrap();
        let own = 1;
        // (listener, event namespace, cause, start of the sentence)
        let cases = [
            (
                "127.0.0.1:15001",
                5,
                Cause::LoopbackListener,
                "proxy.listen 127.0.0.1:15001 is loopback; workloads in network namespace cookie 5 cannot reach it (",
            ),
            (
                "[::1]:15001",
                5,
                Cause::LoopbackListener,
                "proxy.listen [::1]:15001 is loopback; workloads in network namespace cookie 5",
            ),
            (
                "10.77.0.1:15001",
                5,
                Cause::OtherNamespace,
                "proxy.listen 10.77.0.1:15001: workloads in network namespace cookie 5 cannot reach it (",
            ),
            (
                "127.0.0.1:15001",
                own,
                Cause::SameNamespace,
                "proxy.listen 127.0.0.1:15001: a redirected connect() to 10.77.1.10:80 (pid 77 \"curl\") never reached",
            ),
        ];
        for (listen, ns, cause, start) in cases {
            let e = event(EventKind::Unreached, "10.77.1.10:80", Transport::Tcp, ns);
            let (got, text) = unreached_cause(&e, sa(listen), own);
            assert_eq!(got, cause, "{listen} {ns}");
            assert!(text.starts_with(start), "{text}");
            assert!(
                text.contains("sockwarden_redirects_unreached_total"),
                "{text}"
            );
        }
        let (v4, v6) = (sa("10.77.0.1:15001"), sa("[fd77::1]:15001"));
        assert_eq!(listener_for(sa("10.0.0.1:80"), v4, Some(v6)), v4);
        assert_eq!(listener_for(sa("[fd00::1]:80"), v4, Some(v6)), v6);
        assert_eq!(listener_for(sa("[fd00::1]:80"), v4, None), v4);
    }
}
