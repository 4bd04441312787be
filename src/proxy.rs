//! The layer-7 proxy: accepts connections the kernel redirected, reads
//! request heads, asks the policy, and forwards what is allowed.
//!
//! One tokio task per downstream connection. The original destination comes
//! from an [`OrigDstSource`] (the kernel map in production), never from the
//! Host header.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::accesslog::AccessLog;
use crate::bpf::{Maps, OrigDst};
use crate::policy::PolicySet;

mod conn;
pub mod http;
mod stream;
pub mod upstream;

/// Where the proxy learns a connection's original destination.
pub trait OrigDstSource: Send + Sync + 'static {
    /// Takes the entry for the connection from `peer` accepted on `local`.
    fn take(&self, peer: SocketAddr, local: SocketAddr) -> Option<OrigDst>;
}

impl OrigDstSource for Maps {
    fn take(&self, peer: SocketAddr, local: SocketAddr) -> Option<OrigDst> {
        match self.take_orig_dst(peer, local) {
            Ok(found) => found,
            Err(e) => {
                tracing::error!(error = %e, "reading the original destination");
                None
            }
        }
    }
}

/// Settings of the downstream side.
#[derive(Debug, Clone, Copy)]
pub struct ProxySettings {
    pub client_idle_timeout: Duration,
}

pub struct Proxy {
    policies: Arc<PolicySet>,
    orig: Arc<dyn OrigDstSource>,
    pool: upstream::Pool,
    log: AccessLog,
    settings: ProxySettings,
    next_downstream_id: AtomicU64,
}

/// How often idle upstream connections are swept.
const SWEEP_INTERVAL: Duration = Duration::from_millis(500);

impl Proxy {
    pub fn new(
        policies: Arc<PolicySet>,
        orig: Arc<dyn OrigDstSource>,
        log: AccessLog,
        settings: ProxySettings,
    ) -> Arc<Proxy> {
        Arc::new(Proxy {
            policies,
            orig,
            pool: upstream::Pool::default(),
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
