//! TLS for the tests' origins: a CA made in the test (rcgen), the origin
//! certificates it signs (good, expired, for the wrong name), rustls
//! configurations for the TLS origin, and a blocking byte stream over a
//! rustls server connection for the threaded origin.

use std::cell::RefCell;
use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::rc::Rc;
use std::sync::Arc;

use rcgen::{
    date_time_ymd, BasicConstraints, CertificateParams, CertifiedIssuer, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// Whether a certificate is valid now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Validity {
    Good,
    /// Ended in 2001.
    Expired,
}

/// A CA the test trusts (its PEM is handed to clients and to sockwarden).
pub struct TestCa {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl TestCa {
    pub fn new(name: &str) -> TestCa {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.not_before = date_time_ymd(2000, 1, 1);
        params.not_after = date_time_ymd(2100, 1, 1);
        let key = KeyPair::generate().expect("CA key");
        TestCa {
            issuer: CertifiedIssuer::self_signed(params, key).expect("CA certificate"),
        }
    }

    pub fn pem(&self) -> String {
        self.issuer.pem()
    }

    /// Writes the CA certificate (PEM) to `path`.
    pub fn write_pem(&self, path: &Path) {
        std::fs::write(path, self.pem()).expect("write CA PEM");
    }

    /// A leaf for `names` (DNS names or IP addresses): its chain and key.
    pub fn leaf(
        &self,
        names: &[&str],
        validity: Validity,
    ) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = CertificateParams::new(names.clone()).expect("leaf params");
        params.distinguished_name.push(
            DnType::CommonName,
            names.first().cloned().unwrap_or_default(),
        );
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        (params.not_before, params.not_after) = match validity {
            Validity::Good => (date_time_ymd(2020, 1, 1), date_time_ymd(2090, 1, 1)),
            Validity::Expired => (date_time_ymd(2000, 1, 1), date_time_ymd(2001, 1, 1)),
        };
        let key = KeyPair::generate().expect("leaf key");
        let cert = params
            .signed_by(&key, &self.issuer)
            .expect("leaf certificate");
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        (vec![cert.der().clone(), self.issuer.der().clone()], key)
    }

    /// A server configuration presenting a leaf for `names`, offering
    /// http/1.1 by ALPN.
    pub fn server_config(&self, names: &[&str], validity: Validity) -> Arc<rustls::ServerConfig> {
        let (chain, key) = self.leaf(names, validity);
        let mut config = rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .expect("server config");
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Arc::new(config)
    }
}

/// One rustls server connection over a blocking socket, shared by the
/// origin's reader and writer halves (one thread uses both).
#[derive(Clone)]
pub struct TlsHalf(Rc<RefCell<rustls::StreamOwned<rustls::ServerConnection, TcpStream>>>);

impl TlsHalf {
    pub fn new(config: Arc<rustls::ServerConfig>, sock: TcpStream) -> io::Result<TlsHalf> {
        let conn = rustls::ServerConnection::new(config).map_err(io::Error::other)?;
        Ok(TlsHalf(Rc::new(RefCell::new(rustls::StreamOwned::new(
            conn, sock,
        )))))
    }

    /// Sends a TLS 1.3 KeyUpdate (asking for the peer's too) and switches
    /// to the new sending keys.
    pub fn key_update(&self) -> io::Result<()> {
        let mut s = self.0.borrow_mut();
        s.conn.refresh_traffic_keys().map_err(io::Error::other)?;
        s.flush()
    }

    /// Sends close_notify, then the TCP FIN.
    pub fn close(&self) {
        let mut s = self.0.borrow_mut();
        s.conn.send_close_notify();
        let _ = s.flush();
        let _ = s.sock.shutdown(std::net::Shutdown::Write);
    }
}

impl Read for TlsHalf {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.borrow_mut().read(buf)
    }
}

impl Write for TlsHalf {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.borrow_mut().write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.0.borrow_mut().flush()
    }
}
