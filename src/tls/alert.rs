//! TLS alerts the proxy answers with before any handshake: a connection it
//! refuses after reading the ClientHello gets one fatal alert and a
//! closed write side.
//!
//! Before the handshake there are no keys, so the alert is a plaintext
//! record (RFC 8446 5.1, 6): content type alert (21), record version
//! 0x0303, length 2, level fatal (2), the description. The descriptions
//! the proxy uses: `UnrecognisedName` (no SNI), `AccessDenied` (SNI not
//! allowed), `DecodeError` (a hello that does not parse),
//! `NoApplicationProtocol` (no offered ALPN protocol sockwarden speaks),
//! `InternalError`.

use rustls::AlertDescription;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// Content type of an alert record.
const CONTENT_ALERT: u8 = 21;
/// AlertLevel fatal.
const FATAL: u8 = 2;

/// A fatal alert `d` as a plaintext TLS record.
pub fn alert_record(d: AlertDescription) -> [u8; 7] {
    [CONTENT_ALERT, 0x03, 0x03, 0x00, 0x02, FATAL, u8::from(d)]
}

/// Writes the fatal alert `d` to `stream` and shuts its write side down
/// (the peer reads the alert, then EOF). The caller then drops the stream.
pub async fn send_alert(stream: &mut TcpStream, d: AlertDescription) -> std::io::Result<()> {
    stream.write_all(&alert_record(d)).await?;
    stream.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::hello::tests::{pair, rustls_client};
    use rustls::{ServerConfig, ServerConnection};
    use std::sync::Arc;
    use tokio::io::AsyncReadExt;

    /// The alerts the proxy sends, with their codes (RFC 8446 6, RFC 7301).
    const USED: [(AlertDescription, u8); 5] = [
        (AlertDescription::UnrecognisedName, 112),
        (AlertDescription::AccessDenied, 49),
        (AlertDescription::DecodeError, 50),
        (AlertDescription::NoApplicationProtocol, 120),
        (AlertDescription::InternalError, 80),
    ];

    #[test]
    fn records_for_each_alert() {
        for (d, code) in USED {
            assert_eq!(alert_record(d), [21, 3, 3, 0, 2, 2, code], "{d:?}");
        }
    }

    /// A rustls server (ring, self-signed certificate) offering `alpn`.
    fn rustls_server(alpn: &[&[u8]]) -> ServerConnection {
        let key = rcgen::generate_simple_self_signed(vec!["origin.test".to_owned()])
            .expect("certificate");
        let der = rustls::pki_types::PrivateKeyDer::try_from(key.signing_key.serialize_der())
            .expect("key");
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_no_client_auth()
            .with_single_cert(vec![key.cert.der().clone()], der)
            .expect("config");
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        ServerConnection::new(Arc::new(config)).expect("server")
    }

    /// What a rustls server writes after reading `input`.
    fn server_answer(mut server: ServerConnection, mut input: &[u8]) -> Vec<u8> {
        while !input.is_empty() {
            server.read_tls(&mut input).expect("read_tls");
        }
        assert!(server.process_new_packets().is_err(), "input accepted");
        let mut out = Vec::new();
        while server.wants_write() {
            server.write_tls(&mut out).expect("write_tls");
        }
        out
    }

    #[test]
    fn same_bytes_as_rustls_sends() {
        // A ClientHello with an empty body: decode_error.
        let garbage = [0x16, 0x03, 0x01, 0x00, 0x04, 0x01, 0x00, 0x00, 0x00];
        let sent = server_answer(rustls_server(&[]), &garbage);
        assert_eq!(sent, alert_record(AlertDescription::DecodeError));
        // A client offering only h2 to a server of http/1.1 (TLS 1.2: under
        // 1.3 rustls refuses after its ServerHello, so encrypted).
        let mut client = rustls_client("origin.test", &[b"h2"], &[&rustls::version::TLS12]);
        let mut hello = Vec::new();
        client.write_tls(&mut hello).expect("hello");
        let sent = server_answer(rustls_server(&[b"http/1.1"]), &hello);
        let ours = alert_record(AlertDescription::NoApplicationProtocol);
        assert_eq!(sent, ours);
    }

    #[test]
    fn rustls_clients_read_each_alert() {
        for (d, _) in USED {
            let mut client = rustls_client("origin.test", &[], &[&rustls::version::TLS13]);
            client.write_tls(&mut Vec::new()).expect("hello");
            client
                .read_tls(&mut &alert_record(d)[..])
                .expect("read_tls");
            let got = client.process_new_packets().map(|_| ());
            assert_eq!(got, Err(rustls::Error::AlertReceived(d)));
        }
    }

    #[tokio::test]
    async fn send_alert_then_eof() {
        let (mut client, mut server) = pair().await;
        send_alert(&mut server, AlertDescription::AccessDenied)
            .await
            .expect("send");
        let mut got = Vec::new();
        let read = tokio::time::timeout(
            std::time::Duration::from_secs(10),
            client.read_to_end(&mut got),
        );
        read.await.expect("EOF in time").expect("read");
        assert_eq!(got, [21, 3, 3, 0, 2, 2, 49]);
    }
}
