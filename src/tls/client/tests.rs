//! Real handshakes over `tokio::io::duplex` against a tokio-rustls origin
//! whose certificates are made here with rcgen; the helpers are shared with
//! the interception tests.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, SanType};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::sign::CertifiedKey;
use rustls::{AlertDescription, CertificateError, HandshakeKind, PeerIncompatible, RootCertStore};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _, DuplexStream};

use super::*;

const DAY: Duration = Duration::from_secs(86_400);
const PATIENCE: Duration = Duration::from_secs(10);

/// A self-signed test CA for origins.
pub(crate) fn origin_ca(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::default();
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let key = KeyPair::generate().expect("key");
    CertifiedIssuer::self_signed(params, key).expect("CA")
}

/// An origin certificate for `sans`, valid from `from` to `to`.
fn origin_cert(
    ca: &CertifiedIssuer<'static, KeyPair>,
    sans: Vec<SanType>,
    from: SystemTime,
    to: SystemTime,
) -> Arc<CertifiedKey> {
    let mut params = CertificateParams::default();
    params.subject_alt_names = sans;
    params.not_before = from.into();
    params.not_after = to.into();
    let key = KeyPair::generate().expect("key");
    let cert = params.signed_by(&key, ca).expect("sign");
    let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    let signing = rustls::crypto::ring::sign::any_supported_type(&der).expect("signing key");
    Arc::new(CertifiedKey::new(vec![cert.der().clone()], signing))
}

fn dns(name: &str) -> SanType {
    SanType::DnsName(name.try_into().expect("ia5"))
}

fn valid_now(ca: &CertifiedIssuer<'static, KeyPair>, sans: Vec<SanType>) -> Arc<CertifiedKey> {
    let now = SystemTime::now();
    origin_cert(ca, sans, now - DAY, now + DAY)
}

fn origin_config(key: Arc<CertifiedKey>) -> Arc<rustls::ServerConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(rustls::sign::SingleCertAndKey::from(key)));
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(config)
}

/// Roots holding exactly `certs`.
pub(crate) fn roots_of(certs: &[&CertificateDer<'static>]) -> RootCertStore {
    let mut store = RootCertStore::empty();
    for cert in certs {
        store.add((*cert).clone()).expect("root");
    }
    store
}

/// Runs a TLS server over the far end of a new duplex pair: on a finished
/// handshake it writes `ok` and reads until the client goes. Returns the
/// near end and the server's handshake result.
pub(crate) fn serve(
    config: Arc<rustls::ServerConfig>,
) -> (
    DuplexStream,
    tokio::task::JoinHandle<Result<(), std::io::Error>>,
) {
    let (near, far) = tokio::io::duplex(64 * 1024);
    let server = tokio::spawn(async move {
        let mut tls = tokio_rustls::TlsAcceptor::from(config).accept(far).await?;
        tls.write_all(b"ok").await?;
        tls.flush().await?;
        let mut rest = Vec::new();
        let _ = tls.read_to_end(&mut rest).await;
        Ok(())
    });
    (near, server)
}

fn upstream(store: RootCertStore) -> UpstreamTls {
    UpstreamTls::with_roots(store, RootsReport::default()).expect("client config")
}

fn name(n: &str) -> ServerName<'static> {
    ServerName::try_from(n.to_owned()).expect("server name")
}

/// One handshake of `client` to an origin presenting `key`.
async fn handshake(
    client: &UpstreamTls,
    key: Arc<CertifiedKey>,
    server_name: ServerName<'static>,
) -> Result<tokio_rustls::client::TlsStream<DuplexStream>, HandshakeError> {
    let (io, _server) = serve(origin_config(key));
    client.connect(io, server_name, PATIENCE).await
}

fn failed_cause(
    result: Result<tokio_rustls::client::TlsStream<DuplexStream>, HandshakeError>,
) -> String {
    match result {
        Err(HandshakeError::Failed { cause }) => cause,
        Err(other) => panic!("not a TLS failure: {other}"),
        Ok(_) => panic!("the handshake succeeded"),
    }
}

#[tokio::test]
async fn good_certificate_negotiates_http11() {
    let ca = origin_ca("origin CA");
    let client = upstream(roots_of(&[ca.der()]));
    let key = valid_now(&ca, vec![dns("origin.test")]);
    let mut tls = handshake(&client, key, name("origin.test"))
        .await
        .expect("handshake");
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    let mut ok = [0u8; 2];
    tls.read_exact(&mut ok).await.expect("read");
    assert_eq!(&ok, b"ok");
}

#[tokio::test]
async fn certificate_failures_are_named() {
    let ca = origin_ca("origin CA");
    let other = origin_ca("another CA");
    let now = SystemTime::now();
    let client = upstream(roots_of(&[ca.der()]));
    let cases: Vec<(Arc<CertifiedKey>, &str)> = vec![
        (
            origin_cert(&ca, vec![dns("origin.test")], now - 3 * DAY, now - DAY),
            "certificate expired",
        ),
        (
            origin_cert(&ca, vec![dns("origin.test")], now + DAY, now + 3 * DAY),
            "certificate not yet valid",
        ),
        (
            valid_now(&ca, vec![dns("a.test"), dns("b.test")]),
            "name mismatch: certificate is for a.test, b.test",
        ),
        (
            valid_now(&other, vec![dns("origin.test")]),
            "unknown issuer",
        ),
    ];
    for (key, want) in cases {
        let got = failed_cause(handshake(&client, key, name("origin.test")).await);
        assert_eq!(got, want);
    }
}

#[tokio::test]
async fn bundle_roots_of_another_ca_refuse_the_origin() {
    let ca = origin_ca("origin CA");
    let other = origin_ca("another CA");
    let path = std::env::temp_dir().join(format!("sockwarden-bundle-{}.pem", std::process::id()));
    std::fs::write(&path, other.pem()).expect("write bundle");
    let client = UpstreamTls::new(&Roots::Bundle(path.clone()));
    std::fs::remove_file(&path).expect("remove bundle");
    let client = client.expect("bundle");
    assert_eq!(client.roots().loaded, 1);
    let key = valid_now(&ca, vec![dns("origin.test")]);
    let got = failed_cause(handshake(&client, key, name("origin.test")).await);
    assert_eq!(got, "unknown issuer");
}

#[tokio::test]
async fn ip_san_verifies_by_ip_server_name() {
    let ca = origin_ca("origin CA");
    let client = upstream(roots_of(&[ca.der()]));
    let ip = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7));
    let key = valid_now(&ca, vec![SanType::IpAddress(ip)]);
    let tls = handshake(&client, key.clone(), ServerName::from(ip)).await;
    assert!(tls.is_ok(), "by IP: {:?}", tls.err());
    let other = ServerName::from(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 8)));
    let got = failed_cause(handshake(&client, key, other).await);
    assert_eq!(got, "name mismatch: certificate is for 192.0.2.7");
}

#[tokio::test]
async fn second_connection_resumes() {
    let ca = origin_ca("origin CA");
    let client = upstream(roots_of(&[ca.der()]));
    let config = origin_config(valid_now(&ca, vec![dns("origin.test")]));
    let mut kinds = Vec::new();
    for _ in 0..2 {
        let (io, _server) = serve(config.clone());
        let mut tls = client
            .connect(io, name("origin.test"), PATIENCE)
            .await
            .expect("handshake");
        // Reading the server's first bytes takes in its session tickets.
        let mut ok = [0u8; 2];
        tls.read_exact(&mut ok).await.expect("read");
        kinds.push(tls.get_ref().1.handshake_kind());
    }
    assert_eq!(
        kinds,
        [Some(HandshakeKind::Full), Some(HandshakeKind::Resumed)]
    );
}

#[tokio::test(start_paused = true)]
async fn silent_origin_times_out() {
    let ca = origin_ca("origin CA");
    let client = upstream(roots_of(&[ca.der()]));
    let (io, _silent) = tokio::io::duplex(64 * 1024);
    let within = Duration::from_secs(5);
    let result = client.connect(io, name("origin.test"), within).await;
    assert!(
        matches!(result, Err(HandshakeError::Timeout(d)) if d == within),
        "{result:?}"
    );
}

#[tokio::test]
async fn origin_closing_is_an_io_error() {
    let ca = origin_ca("origin CA");
    let client = upstream(roots_of(&[ca.der()]));
    let (io, gone) = tokio::io::duplex(64 * 1024);
    drop(gone);
    let result = client.connect(io, name("origin.test"), PATIENCE).await;
    assert!(matches!(result, Err(HandshakeError::Io(_))), "{result:?}");
}

#[test]
fn causes_table() {
    let now = UnixTime::now();
    let cert = rustls::Error::InvalidCertificate;
    let cases: Vec<(rustls::Error, &str)> = vec![
        (cert(CertificateError::Expired), "certificate expired"),
        (
            cert(CertificateError::ExpiredContext {
                time: now,
                not_after: now,
            }),
            "certificate expired",
        ),
        (
            cert(CertificateError::NotValidYet),
            "certificate not yet valid",
        ),
        (
            cert(CertificateError::NotValidYetContext {
                time: now,
                not_before: now,
            }),
            "certificate not yet valid",
        ),
        (cert(CertificateError::UnknownIssuer), "unknown issuer"),
        (
            cert(CertificateError::NotValidForNameContext {
                expected: name("c.test"),
                presented: vec![
                    r#"DnsName("a.test")"#.into(),
                    "IpAddress(192.0.2.1)".into(),
                    "DirectoryName".into(),
                ],
            }),
            "name mismatch: certificate is for a.test, 192.0.2.1, DirectoryName",
        ),
        (
            cert(CertificateError::NotValidForNameContext {
                expected: name("c.test"),
                presented: vec![],
            }),
            "name mismatch: certificate names no host",
        ),
        (cert(CertificateError::NotValidForName), "name mismatch"),
        (cert(CertificateError::Revoked), "certificate revoked"),
        (cert(CertificateError::BadSignature), "bad signature"),
        (
            rustls::Error::AlertReceived(AlertDescription::HandshakeFailure),
            "alert handshake_failure from origin",
        ),
        (
            rustls::Error::AlertReceived(AlertDescription::ProtocolVersion),
            "protocol version",
        ),
        (
            rustls::Error::AlertReceived(AlertDescription::Unknown(250)),
            "alert 250 from origin",
        ),
        (
            rustls::Error::PeerIncompatible(PeerIncompatible::ServerDoesNotSupportTls12Or13),
            "protocol version",
        ),
        (
            rustls::Error::NoApplicationProtocol,
            "no application protocol",
        ),
        (
            rustls::Error::AlertReceived(AlertDescription::NoApplicationProtocol),
            "no application protocol",
        ),
        (rustls::Error::DecryptError, "cannot decrypt peer's message"),
    ];
    for (error, want) in cases {
        assert_eq!(cause(&error), want, "{error:?}");
    }
}

#[test]
fn causes_are_header_safe_and_bounded() {
    let presented: Vec<String> = (0..20).map(|i| format!("h{i}.test\r\nx: y")).collect();
    let error = rustls::Error::InvalidCertificate(CertificateError::NotValidForNameContext {
        expected: name("c.test"),
        presented,
    });
    let got = cause(&error);
    assert!(
        got.starts_with("name mismatch: certificate is for h0.test??x: y, h1.test"),
        "{got}"
    );
    assert!(got.len() <= MAX_CAUSE, "{}", got.len());
    assert!(
        got.bytes().all(|b| b == b' ' || b.is_ascii_graphic()),
        "{got}"
    );
    let few: Vec<String> = (0..10).map(|i| format!("h{i}")).collect();
    let error = rustls::Error::InvalidCertificate(CertificateError::NotValidForNameContext {
        expected: name("c.test"),
        presented: few,
    });
    assert!(
        cause(&error).ends_with("h7 and 2 more"),
        "{}",
        cause(&error)
    );
}

#[test]
fn system_roots_count_what_failed() {
    let ca = origin_ca("system CA");
    let junk = || CertificateDer::from(vec![1, 2, 3]);
    let unreadable = vec!["/etc/ssl/certs/x.pem: permission denied".to_owned()];
    let (_, report) =
        system_store(vec![ca.der().clone(), junk()], unreadable.clone()).expect("one usable root");
    assert_eq!(
        report,
        RootsReport {
            loaded: 1,
            skipped: 1,
            errors: unreadable.clone()
        }
    );
    let err = system_store(vec![junk()], unreadable).expect_err("no usable root");
    assert_eq!(
        err.to_string(),
        "no system root certificate could be loaded (1 skipped; errors: /etc/ssl/certs/x.pem: permission denied)"
    );
}

#[test]
fn bundle_errors_name_the_file() {
    let path = Path::new("/etc/ssl/bundle.pem");
    let cases: Vec<(&[u8], &str)> = vec![
        (
            b"",
            "/etc/ssl/bundle.pem: no usable CA certificate in it (0 skipped)",
        ),
        (
            b"-----BEGIN CERTIFICATE-----\nAAEC\n-----END CERTIFICATE-----\n",
            "/etc/ssl/bundle.pem: no usable CA certificate in it (1 skipped)",
        ),
        (
            b"-----BEGIN CERTIFICATE-----\n!!!\n-----END CERTIFICATE-----\n",
            "/etc/ssl/bundle.pem: not a PEM bundle",
        ),
    ];
    for (pem, want) in cases {
        let err = bundle_store(path, pem).expect_err("refused").to_string();
        assert!(err.starts_with(want), "{err}");
    }
    let missing = UpstreamTls::new(&Roots::Bundle("/nonexistent/bundle.pem".into()))
        .err()
        .expect("missing");
    assert!(
        missing.to_string().starts_with("/nonexistent/bundle.pem: "),
        "{missing}"
    );
}
