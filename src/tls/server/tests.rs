//! Interception: a rustls client trusting the node CA against a server
//! configured by `intercept_config` with a leaf from the cache, over
//! `tokio::io::duplex`.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use rustls::pki_types::ServerName;
use rustls::{ClientConfig, HandshakeKind};
use tokio::io::AsyncReadExt as _;

use super::*;
use crate::tls::ca::test_ca;
use crate::tls::client::tests::{roots_of, serve};
use crate::tls::leaf::{LeafCache, LeafName, LeafSettings};

const PATIENCE: Duration = Duration::from_secs(10);

struct Scene {
    cache: LeafCache,
    shared: ServerShared,
    client: Arc<ClientConfig>,
}

fn scene(alpn: &[&[u8]]) -> Scene {
    let ca = Arc::new(test_ca());
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut client = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots_of(&[ca.cert_der()]))
        .with_no_client_auth();
    client.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Scene {
        cache: LeafCache::new(ca, LeafSettings::default()).expect("cache"),
        shared: ServerShared::new(DEFAULT_SESSIONS).expect("shared"),
        client: Arc::new(client),
    }
}

type Outcome = (
    std::io::Result<tokio_rustls::client::TlsStream<tokio::io::DuplexStream>>,
    tokio::task::JoinHandle<std::io::Result<()>>,
);

/// One intercepted handshake: the server presents the leaf for `leaf`,
/// the client connects to `server_name`.
async fn intercept(scene: &Scene, leaf: &LeafName, server_name: ServerName<'static>) -> Outcome {
    let key = scene.cache.get(leaf).expect("leaf");
    let (io, server) = serve(intercept_config(key, &scene.shared));
    let connector = tokio_rustls::TlsConnector::from(scene.client.clone());
    let client = tokio::time::timeout(PATIENCE, connector.connect(server_name, io))
        .await
        .expect("client in time");
    (client, server)
}

/// The server's handshake result, once the client is gone.
async fn server_result(
    server: tokio::task::JoinHandle<std::io::Result<()>>,
) -> std::io::Result<()> {
    let server = tokio::time::timeout(PATIENCE, server)
        .await
        .expect("server in time");
    server.expect("server task")
}

/// The TLS error inside tokio-rustls's io::Error.
fn tls_error(e: &std::io::Error) -> Option<&rustls::Error> {
    e.get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
}

async fn read_ok(tls: &mut tokio_rustls::client::TlsStream<tokio::io::DuplexStream>) {
    let mut ok = [0u8; 2];
    tls.read_exact(&mut ok).await.expect("read");
    assert_eq!(&ok, b"ok");
}

#[tokio::test]
async fn intercepted_by_name_verifies_and_speaks_http11() {
    let scene = scene(&[b"h2", b"http/1.1"]);
    let name = ServerName::try_from("origin.test").expect("name");
    let (client, server) = intercept(&scene, &LeafName::Dns("origin.test".into()), name).await;
    let mut tls = client.expect("verified handshake");
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(HTTP_1_1));
    read_ok(&mut tls).await;
    drop(tls);
    server_result(server).await.expect("server handshake");
}

#[tokio::test]
async fn intercepted_by_ip() {
    let scene = scene(&[b"http/1.1"]);
    let ip = IpAddr::V4(Ipv4Addr::new(10, 1, 2, 3));
    let (client, _) = intercept(&scene, &LeafName::Ip(ip), ServerName::from(ip)).await;
    let mut tls = client.expect("handshake by IP");
    read_ok(&mut tls).await;
}

#[tokio::test]
async fn leaf_for_another_name_is_refused_by_the_client() {
    let scene = scene(&[b"http/1.1"]);
    let name = ServerName::try_from("other.test").expect("name");
    let (client, _) = intercept(&scene, &LeafName::Dns("origin.test".into()), name).await;
    let err = client.expect_err("refused");
    let want = rustls::CertificateError::NotValidForNameContext {
        expected: ServerName::try_from("other.test").expect("name"),
        presented: vec![r#"DnsName("origin.test")"#.to_owned()],
    };
    assert_eq!(
        tls_error(&err),
        Some(&rustls::Error::InvalidCertificate(want)),
        "{err}"
    );
}

#[tokio::test]
async fn h2_only_client_gets_no_application_protocol() {
    let scene = scene(&[b"h2"]);
    let name = ServerName::try_from("origin.test").expect("name");
    let (client, server) = intercept(&scene, &LeafName::Dns("origin.test".into()), name).await;
    let server_err = server_result(server).await.expect_err("server refused");
    let tls = server_err
        .get_ref()
        .and_then(|e| e.downcast_ref::<rustls::Error>());
    assert!(
        matches!(tls, Some(rustls::Error::NoApplicationProtocol)),
        "{server_err}"
    );
    let client_err = client.expect_err("client refused");
    let tls = client_err
        .get_ref()
        .and_then(|e| e.downcast_ref::<rustls::Error>());
    assert!(
        matches!(
            tls,
            Some(rustls::Error::AlertReceived(
                rustls::AlertDescription::NoApplicationProtocol
            ))
        ),
        "{client_err}"
    );
}

#[tokio::test]
async fn clients_resume_across_configs() {
    let scene = scene(&[b"http/1.1"]);
    let leaf = LeafName::Dns("origin.test".into());
    let mut kinds = Vec::new();
    for _ in 0..2 {
        let name = ServerName::try_from("origin.test").expect("name");
        let (client, _) = intercept(&scene, &leaf, name).await;
        let mut tls = client.expect("handshake");
        read_ok(&mut tls).await;
        kinds.push(tls.get_ref().1.handshake_kind());
    }
    assert_eq!(
        kinds,
        [Some(HandshakeKind::Full), Some(HandshakeKind::Resumed)]
    );
}

#[test]
fn alpn_decisions() {
    let cases: [(&[&[u8]], bool); 6] = [
        (&[], true),
        (&[b"http/1.1"], true),
        (&[b"h2", b"http/1.1"], true),
        (&[b"h2"], false),
        (&[b"http/1.0"], false),
        (&[b"HTTP/1.1"], false),
    ];
    for (offered, want) in cases {
        let offered: Vec<Vec<u8>> = offered.iter().map(|p| p.to_vec()).collect();
        assert_eq!(alpn_acceptable(&offered), want, "{offered:?}");
    }
}
