//! TLS for HTTPS egress: reading the workload's ClientHello, the node CA
//! and the leaves it signs for interception, and the upstream TLS client.
//! [`TlsContext`] is what the proxy holds of them, built from the
//! configuration at start-up.

use std::num::NonZeroUsize;
use std::sync::Arc;
use std::time::Duration;

use crate::config::Config;

pub mod alert;
pub mod ca;
pub mod client;
pub mod hello;
pub mod ktls;
pub mod leaf;
pub mod names;
pub mod server;

/// A leaf is renewed this long before it ends (at most a quarter of its
/// lifetime).
const RENEW_BEFORE: Duration = Duration::from_secs(24 * 3600);

/// The TLS state the proxy serves with.
#[derive(Default)]
pub struct TlsContext {
    /// Present when a rule intercepts or originates TLS.
    pub upstream: Option<client::UpstreamTls>,
    /// Present when a rule intercepts TLS.
    pub intercept: Option<Interception>,
    /// Whether terminated and originated sessions go to the kernel.
    pub ktls: ktls::Ktls,
}

/// What terminating workloads' TLS needs.
pub struct Interception {
    pub leaves: leaf::LeafCache,
    pub shared: server::ServerShared,
}

/// Why the TLS state could not be built, with the field to fix.
#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    #[error("tls.ca: {0}")]
    Ca(#[from] ca::CaError),
    #[error("tls.leaf_cache, tls.leaf_lifetime: {0}")]
    Leaves(#[from] leaf::LeafError),
    #[error("tls: {0}")]
    Server(#[from] server::ServerError),
    #[error("tls.upstream_roots: {0}")]
    Roots(#[from] client::ClientError),
}

impl TlsContext {
    /// Loads what the rules need: the upstream client (and its roots) for
    /// interception and origination, the CA and leaf cache for
    /// interception; nothing when no rule terminates or originates TLS.
    pub fn from_config(config: &Config) -> Result<TlsContext, TlsSetupError> {
        let rules = || config.policies.iter().flat_map(|p| &p.egress);
        let intercepts = rules().any(|r| r.tls.as_ref().is_some_and(|t| t.intercept));
        let originates = rules().any(|r| r.originate().is_some());
        let mut ctx = TlsContext::default();
        if intercepts || originates {
            let kernel = crate::features::ktls_available();
            ctx.ktls = ktls::Ktls::decide(config.tls.ktls, &kernel);
        }
        if intercepts || originates {
            let roots = config
                .tls
                .upstream_roots
                .clone()
                .map_or(client::Roots::System, client::Roots::Bundle);
            ctx.upstream = Some(client::UpstreamTls::new(&roots)?);
        }
        if let (true, Some(files)) = (intercepts, &config.tls.ca) {
            let ca = Arc::new(ca::Ca::load(&files.cert, &files.key)?);
            let lifetime = config.tls.leaf_lifetime;
            let settings = leaf::LeafSettings {
                // Validated with the configuration (at least 1).
                capacity: NonZeroUsize::new(config.tls.leaf_cache).unwrap_or(NonZeroUsize::MIN),
                lifetime,
                renew_before: RENEW_BEFORE.min(lifetime / 4),
            };
            ctx.intercept = Some(Interception {
                leaves: leaf::LeafCache::new(ca, settings)?,
                shared: server::ServerShared::new(server::DEFAULT_SESSIONS)?,
            });
        }
        Ok(ctx)
    }
}
