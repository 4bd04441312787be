//! The intercepting server side: the TLS configuration a workload's
//! connection is terminated with, one per leaf, all sharing one session
//! cache and one ticketer so clients resume across connections.

use std::sync::Arc;

use rustls::server::{ClientHello, ResolvesServerCert, ServerSessionMemoryCache};
use rustls::sign::{CertifiedKey, SingleCertAndKey};
use rustls::ServerConfig;

/// The only application protocol the proxy speaks.
pub const HTTP_1_1: &[u8] = b"http/1.1";

/// Sessions kept for stateful resumption when not told otherwise.
pub const DEFAULT_SESSIONS: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("building the intercepting TLS server configuration: {0}")]
    Config(#[from] rustls::Error),
}

/// What every intercepting configuration shares: the ring provider, TLS 1.2
/// and 1.3, ALPN `http/1.1`, the session cache and the ticketer.
pub struct ServerShared {
    template: ServerConfig,
}

/// The template's resolver, always replaced before a handshake.
#[derive(Debug)]
struct NoCert;

impl ResolvesServerCert for NoCert {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        None
    }
}

impl ServerShared {
    /// `sessions`: how many sessions the stateful cache holds (TLS 1.3
    /// tickets are stateless and need no room).
    pub fn new(sessions: usize) -> Result<ServerShared, ServerError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut template = ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(NoCert));
        template.alpn_protocols = vec![HTTP_1_1.to_vec()];
        template.session_storage = ServerSessionMemoryCache::new(sessions);
        template.ticketer = rustls::crypto::ring::Ticketer::new()?;
        // kTLS takes the traffic secrets after the handshake.
        template.enable_secret_extraction = true;
        Ok(ServerShared { template })
    }
}

/// The configuration to terminate one connection with `leaf` (from
/// `LeafCache::get`).
pub fn intercept_config(leaf: Arc<CertifiedKey>, shared: &ServerShared) -> Arc<ServerConfig> {
    let mut config = shared.template.clone();
    config.cert_resolver = Arc::new(SingleCertAndKey::from(leaf));
    Arc::new(config)
}

/// Whether a client offering `offered` (its ALPN list) can be served: it
/// offered none, or `http/1.1` is among them. The caller answers the others
/// with the alert no_application_protocol (as rustls does in the handshake).
pub fn alpn_acceptable(offered: &[Vec<u8>]) -> bool {
    offered.is_empty() || offered.iter().any(|p| p == HTTP_1_1)
}

#[cfg(test)]
mod tests;
