//! The loopback tier's HTTPS client: rustls over a blocking socket,
//! trusting one CA, with the ClientHello written whole or in pieces.

use std::io::{self, Write};
use std::net::TcpStream;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;

use crate::common::h1;
use crate::common::io_timeout;
use crate::common::tls::TestCa;

/// A fatal alert as a plaintext record, as the tests expect it on the wire
/// (RFC 8446 5.1, 6): written here, not taken from the code under test.
pub fn alert_bytes(d: rustls::AlertDescription) -> [u8; 7] {
    [0x15, 0x03, 0x03, 0x00, 0x02, 0x02, u8::from(d)]
}

/// A test CA's certificate, for a client's roots.
pub fn der_of(ca: &TestCa) -> CertificateDer<'static> {
    CertificateDer::from_pem_slice(ca.pem().as_bytes()).expect("test CA PEM")
}

/// A client configuration trusting the CA `root`, offering `alpn`.
pub fn client_config(root: &CertificateDer<'static>, alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(root.clone()).expect("test CA root");
    let mut config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

/// A blocking HTTPS client on one connection.
pub struct TlsClient {
    pub r: io::BufReader<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>,
}

impl TlsClient {
    /// Connects to `addr` and completes the handshake for `name` (a DNS
    /// name, or an IP address: then no SNI is sent).
    pub fn connect(
        addr: std::net::SocketAddr,
        name: &str,
        config: Arc<rustls::ClientConfig>,
    ) -> Result<TlsClient, rustls::Error> {
        let sock = TcpStream::connect_timeout(&addr, io_timeout())
            .unwrap_or_else(|e| panic!("connect {addr}: {e}"));
        TlsClient::over(sock, name, config, 0)
    }

    /// The same over a connected socket, the ClientHello written `piece`
    /// bytes at a time (0: at once).
    pub fn over(
        mut sock: TcpStream,
        name: &str,
        config: Arc<rustls::ClientConfig>,
        piece: usize,
    ) -> Result<TlsClient, rustls::Error> {
        let _ = sock.set_read_timeout(Some(io_timeout()));
        let _ = sock.set_write_timeout(Some(io_timeout()));
        let server =
            rustls::pki_types::ServerName::try_from(name.to_string()).expect("server name");
        let mut conn = rustls::ClientConnection::new(config, server)?;
        if piece > 0 {
            let mut hello = Vec::new();
            while conn.wants_write() {
                conn.write_tls(&mut hello).expect("ClientHello bytes");
            }
            for p in hello.chunks(piece) {
                sock.write_all(p).expect("write a piece of the ClientHello");
                std::thread::sleep(std::time::Duration::from_millis(2));
            }
        }
        let io_err = |e: io::Error| match e.into_inner() {
            Some(inner) => match inner.downcast::<rustls::Error>() {
                Ok(tls) => *tls,
                Err(other) => rustls::Error::General(other.to_string()),
            },
            None => rustls::Error::General("connection closed in the handshake".into()),
        };
        while conn.is_handshaking() {
            conn.complete_io(&mut sock).map_err(io_err)?;
        }
        Ok(TlsClient {
            r: io::BufReader::new(rustls::StreamOwned::new(conn, sock)),
        })
    }

    /// The protocol ALPN chose.
    pub fn alpn(&self) -> Option<Vec<u8>> {
        self.r.get_ref().conn.alpn_protocol().map(<[u8]>::to_vec)
    }

    /// Sends `GET path` with `Host: host` and reads the response.
    pub fn get(&mut self, path: &str, host: &str) -> io::Result<h1::Response> {
        let head = h1::HeadWriter::request("GET", path)
            .field("Host", host)
            .finish();
        self.r.get_mut().write_all(&head)?;
        self.r.get_mut().flush()?;
        h1::read_response(&mut self.r, false)
    }
}
