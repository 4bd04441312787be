//! The decisions, table-tested; and the unbuffered handshake over real
//! loopback sockets (no kTLS needed): it hands over exactly at the end of
//! the handshake, with secrets the kernel would take.

use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;
use rustls::{CipherSuite, SupportedCipherSuite};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};

use super::handshake::hand_over;
use super::*;
use crate::tls::client::tests::{origin_ca, roots_of};

const V12: ProtocolVersion = ProtocolVersion::TLSv1_2;
const V13: ProtocolVersion = ProtocolVersion::TLSv1_3;

#[test]
fn the_start_up_decision() {
    let cases: [(bool, Result<bool, String>, Ktls); 4] = [
        (true, Ok(true), Ktls::On),
        (true, Ok(false), Ktls::Off(CopyReason::Kernel)),
        (
            true,
            Err("socket: EMFILE".into()),
            Ktls::Off(CopyReason::Kernel),
        ),
        (false, Ok(true), Ktls::Off(CopyReason::Disabled)),
    ];
    for (wanted, kernel, want) in cases {
        assert_eq!(Ktls::decide(wanted, &kernel), want, "{wanted} {kernel:?}");
    }
}

/// Judges one record with nothing pending; returns what is left pending.
fn judge(version: ProtocolVersion, typ: u8, payload: &[u8]) -> (Control, Vec<u8>) {
    let mut pending = Vec::new();
    let c = control(version, typ, payload, &mut pending);
    (c, pending)
}

fn fatal(c: &Control) -> bool {
    matches!(c, Control::Fatal(_))
}

#[test]
fn alerts() {
    let cases: [(ProtocolVersion, &[u8], Option<Control>); 8] = [
        (V13, &[1, 0], Some(Control::CloseNotify)),
        (V13, &[2, 0], Some(Control::CloseNotify)),
        (V12, &[1, 0], Some(Control::CloseNotify)),
        (V13, &[1, 90], Some(Control::Ignore(Kind::Alert))),
        (V12, &[1, 100], Some(Control::Ignore(Kind::Alert))),
        // TLS 1.3: every other alert is fatal, whatever its level says.
        (V13, &[1, 100], None),
        (V12, &[2, 40], None),
        (V13, &[1], None),
    ];
    for (version, payload, want) in cases {
        let (got, _) = judge(version, ALERT, payload);
        match want {
            Some(w) => assert_eq!(got, w, "{version:?} {payload:?}"),
            None => assert!(fatal(&got), "{version:?} {payload:?}: {got:?}"),
        }
    }
    let (got, _) = judge(V13, ALERT, &[2, 40]);
    assert_eq!(
        got,
        Control::Fatal("alert HandshakeFailure from the peer".into())
    );
}

/// A handshake message: type, 24-bit length, body.
fn message(typ: u8, body: &[u8]) -> Vec<u8> {
    let len = u32::try_from(body.len()).unwrap().to_be_bytes();
    let mut m = vec![typ, len[1], len[2], len[3]];
    m.extend_from_slice(body);
    m
}

#[test]
fn post_handshake_messages() {
    let ticket = message(4, b"a ticket body");
    let mut two = ticket.clone();
    two.extend(message(24, &[1]));
    let cases: [(ProtocolVersion, Vec<u8>, Option<Control>); 9] = [
        (
            V13,
            ticket.clone(),
            Some(Control::Messages(vec![Message::Ticket(
                b"a ticket body".to_vec(),
            )])),
        ),
        (
            V13,
            two,
            Some(Control::Messages(vec![
                Message::Ticket(b"a ticket body".to_vec()),
                Message::KeyUpdate { requested: true },
            ])),
        ),
        (
            V13,
            message(24, &[0]),
            Some(Control::Messages(vec![Message::KeyUpdate {
                requested: false,
            }])),
        ),
        (V13, message(24, &[2]), None),
        (V13, message(24, &[]), None),
        // HelloRequest: TLS 1.2 only, declined by ignoring it.
        (V12, message(0, &[]), Some(Control::Ignore(Kind::Other))),
        (V13, message(0, &[]), None),
        // No tickets or key updates after a TLS 1.2 handshake.
        (V12, ticket, None),
        (V13, message(1, b"a second ClientHello"), None),
    ];
    for (version, payload, want) in cases {
        let (got, _) = judge(version, HANDSHAKE, &payload);
        match want {
            Some(w) => assert_eq!(got, w, "{version:?} {payload:?}"),
            None => assert!(fatal(&got), "{version:?} {payload:?}: {got:?}"),
        }
    }
}

/// A message split across records, at every point, comes out whole once,
/// and nothing stays pending.
#[test]
fn messages_split_across_records() {
    let whole = message(4, &[7u8; 300]);
    for cut in 0..=whole.len() {
        let mut pending = Vec::new();
        let first = control(V13, HANDSHAKE, &whole[..cut], &mut pending);
        let second = control(V13, HANDSHAKE, &whole[cut..], &mut pending);
        let found: Vec<Message> = [first, second]
            .into_iter()
            .flat_map(|c| match c {
                Control::Messages(m) => m,
                other => panic!("cut {cut}: {other:?}"),
            })
            .collect();
        assert_eq!(found, vec![Message::Ticket(vec![7u8; 300])], "cut {cut}");
        assert!(pending.is_empty(), "cut {cut}");
    }
}

#[test]
fn other_records_and_oversized_messages_are_fatal() {
    for typ in [CHANGE_CIPHER_SPEC, APPLICATION_DATA, 99] {
        assert!(fatal(&judge(V13, typ, &[1]).0), "{typ}");
    }
    // A message announcing more than the bound, fed in records.
    let mut pending = Vec::new();
    let head = [4u8, 0x10, 0, 0];
    assert_eq!(
        control(V13, HANDSHAKE, &head, &mut pending),
        Control::Messages(vec![])
    );
    let filler = vec![0u8; 16 << 10];
    let mut last = Control::Messages(vec![]);
    for _ in 0..8 {
        last = control(V13, HANDSHAKE, &filler, &mut pending);
        if fatal(&last) {
            break;
        }
    }
    assert!(fatal(&last), "{last:?}");
    assert!(pending.len() <= MAX_HANDSHAKE_MESSAGE);
}

/// A loopback pair: (server side, client side).
async fn pair() -> (TcpStream, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (client, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
    (accepted.expect("accept").0, client.expect("connect"))
}

fn provider_with(suite: SupportedCipherSuite) -> Arc<rustls::crypto::CryptoProvider> {
    let mut provider = rustls::crypto::ring::default_provider();
    provider.cipher_suites = vec![suite];
    Arc::new(provider)
}

/// The origin's side of a test: a leaf for "origin.test", one suite.
fn configs(suite: SupportedCipherSuite) -> (Arc<rustls::ServerConfig>, Arc<rustls::ClientConfig>) {
    let ca = origin_ca("kTLS test CA");
    let mut params = rcgen::CertificateParams::new(vec!["origin.test".into()]).expect("params");
    params.not_before = rcgen::date_time_ymd(2020, 1, 1);
    let key = rcgen::KeyPair::generate().expect("key");
    let cert = params.signed_by(&key, &ca).expect("sign");
    let der = rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into());
    let versions: &[&rustls::SupportedProtocolVersion] = match suite {
        SupportedCipherSuite::Tls12(_) => &[&rustls::version::TLS12],
        SupportedCipherSuite::Tls13(_) => &[&rustls::version::TLS13],
    };
    let mut server = rustls::ServerConfig::builder_with_provider(provider_with(suite))
        .with_protocol_versions(versions)
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(vec![cert.der().clone()], der)
        .expect("server config");
    server.enable_secret_extraction = true;
    let mut client = rustls::ClientConfig::builder_with_provider(provider_with(suite))
        .with_protocol_versions(versions)
        .expect("versions")
        .with_root_certificates(roots_of(&[ca.der()]))
        .with_no_client_auth();
    client.enable_secret_extraction = true;
    (Arc::new(server), Arc::new(client))
}

fn server_conn(config: &Arc<rustls::ServerConfig>) -> rustls::server::UnbufferedServerConnection {
    rustls::server::UnbufferedServerConnection::new(config.clone()).expect("server")
}

fn client_conn(
    config: &Arc<rustls::ClientConfig>,
    name: ServerName<'static>,
) -> rustls::client::UnbufferedClientConnection {
    rustls::client::UnbufferedClientConnection::new(config.clone(), name).expect("client")
}

/// The key and IV lengths the kernel's structure for `info` carries.
fn shape(info: &nix::sys::socket::sockopt::TlsCryptoInfo) -> (u16, u16, usize) {
    use nix::sys::socket::sockopt::TlsCryptoInfo as T;
    match info {
        T::Aes128Gcm(i) => (i.info.version, i.info.cipher_type, i.key.len()),
        T::Aes256Gcm(i) => (i.info.version, i.info.cipher_type, i.key.len()),
        T::Chacha20Poly1305(i) => (i.info.version, i.info.cipher_type, i.key.len()),
    }
}

/// Every suite rustls's ring provider offers, both versions: our
/// unbuffered server against a tokio-rustls client, then our unbuffered
/// client against a tokio-rustls server. The first application record
/// written right after the handshake is still whole in the socket (the
/// handshake read nothing past its last record), and the secrets map to
/// the kernel's structure for that cipher.
#[tokio::test]
async fn the_handshake_hands_over_at_the_last_handshake_record() {
    let patience = Duration::from_secs(10);
    let cipher = |c: CipherSuite| match c {
        CipherSuite::TLS13_AES_128_GCM_SHA256
        | CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256 => libc::TLS_CIPHER_AES_GCM_128,
        CipherSuite::TLS13_AES_256_GCM_SHA384
        | CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384 => libc::TLS_CIPHER_AES_GCM_256,
        _ => libc::TLS_CIPHER_CHACHA20_POLY1305,
    };
    let suites: Vec<SupportedCipherSuite> = rustls::crypto::ring::default_provider()
        .cipher_suites
        .into_iter()
        // The test leaf is ECDSA.
        .filter(|s| !format!("{:?}", s.suite()).contains("_RSA_"))
        .collect();
    assert_eq!(suites.len(), 6, "{suites:?}");
    for suite in suites {
        let (server_config, client_config) = configs(suite);
        let tls13 = matches!(suite, SupportedCipherSuite::Tls13(_));
        let version = if tls13 {
            libc::TLS_1_3_VERSION
        } else {
            libc::TLS_1_2_VERSION
        };
        let want = (
            version,
            cipher(suite.suite()),
            if cipher(suite.suite()) == libc::TLS_CIPHER_AES_GCM_128 {
                16
            } else {
                32
            },
        );

        // Ours as the server.
        let (mut ours, theirs) = pair().await;
        let name = ServerName::try_from("origin.test").expect("name");
        let client = async {
            let connector = tokio_rustls::TlsConnector::from(client_config.clone());
            let mut tls = connector
                .connect(name.clone(), theirs)
                .await
                .expect("client handshake");
            tls.write_all(b"first request").await.expect("write");
            tls.flush().await.expect("flush");
            tls
        };
        let (handed, _client) = tokio::time::timeout(patience, async {
            tokio::join!(hand_over(&mut ours, server_conn(&server_config)), client)
        })
        .await
        .expect("in time");
        let (secrets, _kernel, info) = handed.expect("server handshake");
        assert_eq!(info.version, if tls13 { V13 } else { V12 });
        let rx = crypto_info(info.version, secrets.rx.0, &secrets.rx.1).expect("rx info");
        assert_eq!(shape(&rx), want, "{suite:?}");
        // Under TLS 1.2 the client's Finished was record 0 of these keys;
        // under TLS 1.3 it was under the handshake's.
        let read = u64::from(!tls13);
        assert_eq!(
            secrets.rx.0, read,
            "{suite:?}: no application record read yet"
        );
        // What is left in the socket: one application data record.
        let mut header = [0u8; 5];
        tokio::time::timeout(patience, ours.read_exact(&mut header))
            .await
            .expect("in time")
            .expect("the record is there");
        assert_eq!(header[0], APPLICATION_DATA, "{suite:?}: {header:?}");
        let len = usize::from(u16::from_be_bytes([header[3], header[4]]));
        assert!(len > b"first request".len(), "{suite:?}: {len}");

        // Ours as the client.
        let (theirs, mut ours) = pair().await;
        let server = async {
            let acceptor = tokio_rustls::TlsAcceptor::from(server_config.clone());
            let mut tls = acceptor.accept(theirs).await.expect("server handshake");
            tls.write_all(b"first response").await.expect("write");
            tls.flush().await.expect("flush");
            tls
        };
        let (handed, _server) = tokio::time::timeout(patience, async {
            tokio::join!(
                hand_over(&mut ours, client_conn(&client_config, name)),
                server
            )
        })
        .await
        .expect("in time");
        let (secrets, _kernel, info) = handed.expect("client handshake");
        let tx = crypto_info(info.version, secrets.tx.0, &secrets.tx.1).expect("tx info");
        assert_eq!(shape(&tx), want, "{suite:?}");
        // TLS 1.3 servers send tickets after the handshake: the kernel
        // takes them as handshake records, before the response.
        let mut header = [0u8; 5];
        tokio::time::timeout(patience, ours.read_exact(&mut header))
            .await
            .expect("in time")
            .expect("a record is there");
        assert_eq!(header[0], APPLICATION_DATA, "{suite:?}: {header:?}");
    }
}
