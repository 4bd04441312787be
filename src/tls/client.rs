//! Upstream TLS: sockwarden's own verified connections to origins (for
//! intercepted and originated requests), one client configuration whose
//! session store lets every connection to a name resume.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::client::Resumption;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{AlertDescription, CertificateError, ClientConfig, PeerIncompatible, RootCertStore};
use tokio::io::{AsyncRead, AsyncWrite};

use super::ktls::{self, stream::KtlsStream};
use super::server::HTTP_1_1;

/// The longest cause put in a `sockwarden-error` header.
pub const MAX_CAUSE: usize = 256;

/// Names listed in a name mismatch cause before "and N more".
const MAX_NAMES: usize = 8;

/// Where the origins' certificates are verified from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Roots {
    /// The system's store (rustls-native-certs: SSL_CERT_FILE, SSL_CERT_DIR
    /// or the distribution's bundle).
    System,
    /// A PEM bundle file.
    Bundle(PathBuf),
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("no system root certificate could be loaded ({} skipped; errors: {})", skipped, errors.join("; "))]
    NoSystemRoots { skipped: usize, errors: Vec<String> },
    #[error("{}: {cause}", path.display())]
    Bundle { path: PathBuf, cause: String },
    #[error("building the upstream TLS client configuration: {0}")]
    Config(#[from] rustls::Error),
}

/// How many roots loaded, and what was skipped (reported at startup).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RootsReport {
    pub loaded: usize,
    /// Certificates found but not usable as roots.
    pub skipped: usize,
    /// Files or directories that could not be read.
    pub errors: Vec<String>,
}

/// Why an upstream handshake did not finish.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    /// No handshake within the deadline (answered 504).
    #[error("upstream TLS handshake timed out after {0:?}")]
    Timeout(Duration),
    /// TLS refused it (answered 502, `sockwarden-error: upstream TLS: <cause>`).
    #[error("upstream TLS: {cause}")]
    Failed { cause: String },
    /// The transport failed under the handshake.
    #[error("upstream TLS handshake: {0}")]
    Io(io::Error),
}

/// The upstream TLS client: one configuration for every origin.
pub struct UpstreamTls {
    config: Arc<ClientConfig>,
    report: RootsReport,
}

impl UpstreamTls {
    /// Loads the roots and builds the configuration: ring, TLS 1.2 and 1.3,
    /// ALPN `http/1.1`, the default in-memory resumption store, secret
    /// extraction enabled (for kTLS).
    pub fn new(roots: &Roots) -> Result<UpstreamTls, ClientError> {
        let (store, report) = match roots {
            Roots::System => {
                let found = rustls_native_certs::load_native_certs();
                let errors = found.errors.iter().map(ToString::to_string).collect();
                system_store(found.certs, errors)?
            }
            Roots::Bundle(path) => bundle_store(path, &read_bundle(path)?)?,
        };
        UpstreamTls::with_roots(store, report)
    }

    fn with_roots(store: RootCertStore, report: RootsReport) -> Result<UpstreamTls, ClientError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
            .with_root_certificates(store)
            .with_no_client_auth();
        config.alpn_protocols = vec![HTTP_1_1.to_vec()];
        config.resumption = Resumption::default();
        config.enable_secret_extraction = true;
        Ok(UpstreamTls {
            config: Arc::new(config),
            report,
        })
    }

    /// What loading the roots found.
    pub fn roots(&self) -> &RootsReport {
        &self.report
    }

    /// The handshake over `io` for `name` (SNI and verification), within
    /// `within`.
    pub async fn connect<IO: AsyncRead + AsyncWrite + Unpin>(
        &self,
        io: IO,
        name: ServerName<'static>,
        within: Duration,
    ) -> Result<tokio_rustls::client::TlsStream<IO>, HandshakeError> {
        let connector = tokio_rustls::TlsConnector::from(self.config.clone());
        match tokio::time::timeout(within, connector.connect(name, io)).await {
            Err(_) => Err(HandshakeError::Timeout(within)),
            Ok(Ok(stream)) => Ok(stream),
            Ok(Err(e)) => Err(classify(e)),
        }
    }

    /// [`UpstreamTls::connect`] on a socket prepared for kTLS
    /// ([`ktls::handshake::prepare`]): the session's record layer then goes
    /// to the kernel.
    pub async fn connect_kernel(
        &self,
        tcp: tokio::net::TcpStream,
        name: ServerName<'static>,
        within: Duration,
    ) -> Result<KtlsStream, HandshakeError> {
        ktls::handshake::connect(tcp, self.config.clone(), name, within)
            .await
            .map_err(|e| match e {
                ktls::handshake::Error::Timeout(d) => HandshakeError::Timeout(d),
                ktls::handshake::Error::Tls(e) => HandshakeError::Failed { cause: cause(&e) },
                ktls::handshake::Error::Io(e) => HandshakeError::Io(e),
                e @ ktls::handshake::Error::Install(_) => HandshakeError::Failed {
                    cause: header_safe(&e.to_string()),
                },
            })
    }
}

/// A TLS error inside tokio-rustls's io::Error becomes `Failed`.
fn classify(e: io::Error) -> HandshakeError {
    match e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    {
        Some(tls) => HandshakeError::Failed { cause: cause(tls) },
        None => HandshakeError::Io(e),
    }
}

/// The system's certificates as roots; `errors` are what could not be read.
fn system_store(
    certs: Vec<CertificateDer<'static>>,
    errors: Vec<String>,
) -> Result<(RootCertStore, RootsReport), ClientError> {
    let mut store = RootCertStore::empty();
    let (loaded, skipped) = store.add_parsable_certificates(certs);
    if loaded == 0 {
        return Err(ClientError::NoSystemRoots { skipped, errors });
    }
    let report = RootsReport {
        loaded,
        skipped,
        errors,
    };
    Ok((store, report))
}

fn read_bundle(path: &Path) -> Result<Vec<u8>, ClientError> {
    std::fs::read(path).map_err(|e| ClientError::Bundle {
        path: path.into(),
        cause: e.to_string(),
    })
}

fn bundle_store(path: &Path, pem: &[u8]) -> Result<(RootCertStore, RootsReport), ClientError> {
    let failed = |cause: String| ClientError::Bundle {
        path: path.into(),
        cause,
    };
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| failed(format!("not a PEM bundle: {e}")))?;
    let mut store = RootCertStore::empty();
    let (loaded, skipped) = store.add_parsable_certificates(certs);
    if loaded == 0 {
        return Err(failed(format!(
            "no usable CA certificate in it ({skipped} skipped)"
        )));
    }
    let report = RootsReport {
        loaded,
        skipped,
        errors: Vec::new(),
    };
    Ok((store, report))
}

/// What an upstream TLS failure is called in the 502's `sockwarden-error`
/// header and the access log: printable ASCII, at most [`MAX_CAUSE`] bytes.
pub fn cause(e: &rustls::Error) -> String {
    let text = match e {
        rustls::Error::InvalidCertificate(cert) => certificate_cause(cert),
        rustls::Error::AlertReceived(AlertDescription::NoApplicationProtocol)
        | rustls::Error::NoApplicationProtocol => "no application protocol".to_owned(),
        rustls::Error::AlertReceived(alert) if *alert != AlertDescription::ProtocolVersion => {
            format!("alert {} from origin", alert_name(*alert))
        }
        rustls::Error::AlertReceived(_)
        | rustls::Error::PeerIncompatible(
            PeerIncompatible::ServerDoesNotSupportTls12Or13
            | PeerIncompatible::ServerTlsVersionIsDisabledByOurConfig
            | PeerIncompatible::SupportedVersionsExtensionRequired
            | PeerIncompatible::Tls12NotOffered
            | PeerIncompatible::Tls12NotOfferedOrEnabled,
        ) => "protocol version".to_owned(),
        other => other.to_string(),
    };
    header_safe(&text)
}

fn certificate_cause(e: &CertificateError) -> String {
    match e {
        CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
            "certificate expired"
        }
        CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
            "certificate not yet valid"
        }
        CertificateError::UnknownIssuer => "unknown issuer",
        CertificateError::NotValidForNameContext { presented, .. } => {
            return name_mismatch(presented)
        }
        CertificateError::NotValidForName => "name mismatch",
        CertificateError::Revoked => "certificate revoked",
        CertificateError::BadSignature => "bad signature",
        other => return format!("certificate: {other}"),
    }
    .to_owned()
}

/// The names a certificate presented, as webpki spells them
/// (`DnsName("a.test")`, `IpAddress(192.0.2.1)`), written plainly.
fn name_mismatch(presented: &[String]) -> String {
    if presented.is_empty() {
        return "name mismatch: certificate names no host".to_owned();
    }
    let names: Vec<&str> = presented
        .iter()
        .take(MAX_NAMES)
        .map(|n| plain_name(n))
        .collect();
    let mut text = format!("name mismatch: certificate is for {}", names.join(", "));
    if presented.len() > MAX_NAMES {
        text.push_str(&format!(" and {} more", presented.len() - MAX_NAMES));
    }
    text
}

fn plain_name(name: &str) -> &str {
    let dns = name
        .strip_prefix("DnsName(\"")
        .and_then(|n| n.strip_suffix("\")"));
    let ip = || {
        name.strip_prefix("IpAddress(")
            .and_then(|n| n.strip_suffix(')'))
    };
    dns.or_else(ip).unwrap_or(name)
}

/// `HandshakeFailure` → `handshake_failure` (the RFC 8446 spelling).
fn alert_name(alert: AlertDescription) -> String {
    let Some(name) = alert.as_str() else {
        return format!("{}", u8::from(alert));
    };
    let mut out = String::with_capacity(name.len() + 4);
    for (i, c) in name.chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            out.push('_');
        }
        out.push(c.to_ascii_lowercase());
    }
    out
}

/// Printable ASCII only (an origin's certificate names end up in a header),
/// cut at [`MAX_CAUSE`].
fn header_safe(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c == ' ' || c.is_ascii_graphic() {
                c
            } else {
                '?'
            }
        })
        .take(MAX_CAUSE)
        .collect()
}

#[cfg(test)]
pub(crate) mod tests;
