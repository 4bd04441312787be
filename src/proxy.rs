//! The layer-7 proxy: accepts connections the kernel redirected, reads
//! request heads, asks the policy, and forwards what is allowed.
//!
//! One tokio task per downstream connection. The original destination comes
//! from a [`KernelState`] (the kernel map in production), never from the
//! Host header.

use std::net::SocketAddr;
use std::os::fd::BorrowedFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::accesslog::AccessLog;
use crate::bpf::{Maps, OrigDst};
use crate::config::PipeSizes;
use crate::policy::PolicySet;

mod conn;
pub mod http;
pub mod retry;
mod splice;
mod stream;
pub mod upstream;

/// What the proxy needs from the kernel side (the pinned maps in
/// production; a stand-in in the loopback tests).
pub trait KernelState: Send + Sync + 'static {
    /// Takes the original destination of the connection from `peer`
    /// accepted on `local`.
    fn take_orig_dst(&self, peer: SocketAddr, local: SocketAddr) -> Option<OrigDst>;

    /// Marks an upstream socket before connect() so its tuple is tracked.
    fn mark_upstream(&self, _socket: BorrowedFd<'_>) {}

    /// Whether a socket in namespace `netns_cookie` holds `src -> dst`.
    fn tuple_in_use(&self, _netns_cookie: u64, _src: SocketAddr, _dst: SocketAddr) -> bool {
        false
    }

    /// Sockmap engine: the proxy has read `bytes` from the connection from
    /// `peer` accepted on `local`.
    fn report_consumed(&self, _peer: SocketAddr, _local: SocketAddr, _bytes: u64) {}

    /// Sockmap engine: that connection is over.
    fn forget_consumed(&self, _peer: SocketAddr, _local: SocketAddr) {}
}

impl KernelState for Maps {
    fn take_orig_dst(&self, peer: SocketAddr, local: SocketAddr) -> Option<OrigDst> {
        Maps::take_orig_dst(self, peer, local).unwrap_or_else(|e| {
            tracing::error!(error = %e, "reading the original destination");
            None
        })
    }

    fn mark_upstream(&self, socket: BorrowedFd<'_>) {
        if let Err(e) = Maps::mark_upstream(self, socket) {
            tracing::warn!(error = %e, "marking an upstream socket for tuple tracking");
        }
    }

    fn report_consumed(&self, peer: SocketAddr, local: SocketAddr, bytes: u64) {
        if let Err(e) = Maps::report_consumed(self, peer, local, bytes) {
            tracing::warn!(error = %e, "reporting bytes read to the sockmap engine");
        }
    }

    fn forget_consumed(&self, peer: SocketAddr, local: SocketAddr) {
        Maps::forget_consumed(self, peer, local);
    }

    fn tuple_in_use(&self, netns_cookie: u64, src: SocketAddr, dst: SocketAddr) -> bool {
        Maps::tuple_in_use(self, netns_cookie, src, dst).unwrap_or_else(|e| {
            // Unknown counts as taken: the fallback port is always safe.
            tracing::warn!(error = %e, "reading the tuple map");
            true
        })
    }
}

/// Settings of the proxy itself.
#[derive(Debug, Clone, Copy)]
pub struct ProxySettings {
    pub client_idle_timeout: Duration,
    /// Test-only: skip the in-use tuple check in preserve-ip-port.
    pub skip_tuple_check: bool,
    /// Per body direction, Some(pipe size): splice kernel-side; None: copy.
    pub pipes: PipeSizes,
    /// The sockmap engine is on: report bytes read from workloads.
    pub sockmap: bool,
}

pub struct Proxy {
    policies: Arc<PolicySet>,
    kernel: Arc<dyn KernelState>,
    pool: upstream::Pool,
    budget: retry::Budget,
    /// The namespace the proxy's sockets live in (tuple map keys).
    netns_cookie: u64,
    log: AccessLog,
    settings: ProxySettings,
    next_downstream_id: AtomicU64,
}

/// How often idle upstream connections are swept.
const SWEEP_INTERVAL: Duration = Duration::from_millis(500);

impl Proxy {
    pub fn new(
        policies: Arc<PolicySet>,
        kernel: Arc<dyn KernelState>,
        log: AccessLog,
        settings: ProxySettings,
    ) -> Arc<Proxy> {
        Arc::new(Proxy {
            policies,
            kernel,
            pool: upstream::Pool::default(),
            budget: retry::Budget::default(),
            netns_cookie: upstream::own_netns_cookie(),
            log,
            settings,
            next_downstream_id: AtomicU64::new(1),
        })
    }

    /// Idle upstream connections held now.
    pub fn idle_upstreams(&self) -> usize {
        self.pool.idle_count()
    }

    /// Accepts and serves connections until `shutdown` turns true.
    pub async fn serve(
        self: Arc<Self>,
        listener: TcpListener,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let mut sweep = tokio::time::interval(SWEEP_INTERVAL);
        loop {
            tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((stream, peer)) => {
                        let local = match stream.local_addr() {
                            Ok(a) => a,
                            Err(e) => {
                                tracing::warn!(error = %e, "accepted socket has no local address");
                                continue;
                            }
                        };
                        let _ = stream.set_nodelay(true);
                        let id = self.next_downstream_id.fetch_add(1, Ordering::Relaxed);
                        tokio::spawn(Arc::clone(&self).handle(id, stream, peer, local));
                    }
                    Err(e) => {
                        // EMFILE and friends: back off instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                },
                _ = sweep.tick() => self.pool.sweep(),
                _ = shutdown.changed() => {
                    if *shutdown.borrow() {
                        return;
                    }
                }
            }
        }
    }
}
