//! The handshake that ends in a kTLS socket: rustls's unbuffered API
//! driven over the TCP socket one record at a time, then the secrets set
//! with TLS_TX and TLS_RX.
//!
//! Reading whole records, and no further, is what makes the handoff exact:
//! rustls never holds ciphertext past the last handshake record, so the
//! first byte the kernel decrypts is the first byte after it.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use nix::sys::socket::{setsockopt, sockopt};
use rustls::client::{ClientConnectionData, UnbufferedClientConnection};
use rustls::kernel::KernelConnection;
use rustls::pki_types::ServerName;
use rustls::server::{ServerConnectionData, UnbufferedServerConnection};
use rustls::unbuffered::{
    ConnectionState, EncodeError, UnbufferedConnectionCommon, UnbufferedStatus,
};
use rustls::{ClientConfig, ExtractedSecrets, ProtocolVersion, ServerConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::crypto_info;
use super::stream::{KtlsStream, Peer};
use crate::metrics::TlsSide;

/// The largest record a peer may send: 2^14 bytes of plaintext plus
/// TLS 1.2's allowance for expansion (RFC 5246 6.2.3).
const MAX_RECORD: usize = (1 << 14) + 2048;

/// Why a kTLS handshake did not end in a kTLS socket.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// TLS refused it (the alert rustls chose has been sent).
    #[error("{0}")]
    Tls(rustls::Error),
    #[error("{0}")]
    Io(io::Error),
    /// The handshake ended, but the kernel did not take the keys.
    #[error("the kernel did not take the session's keys: {0}")]
    Install(String),
    #[error("timed out after {0:?}")]
    Timeout(Duration),
}

/// Sets TCP_ULP "tls" on `tcp`, before the handshake: a refusal leaves the
/// socket as it was, for the userspace TLS path.
pub fn prepare(tcp: &TcpStream) -> io::Result<()> {
    setsockopt(tcp, sockopt::TcpUlp::default(), b"tls").map_err(io::Error::from)
}

/// The server side: terminates the workload's TLS on `tcp` (prepared).
pub async fn accept(
    tcp: TcpStream,
    config: Arc<ServerConfig>,
    within: Duration,
) -> Result<KtlsStream, Error> {
    let conn = UnbufferedServerConnection::new(config).map_err(Error::Tls)?;
    established(tcp, conn, within).await
}

/// The client side: sockwarden's TLS to an origin on `tcp` (prepared), for
/// `name`.
pub async fn connect(
    tcp: TcpStream,
    config: Arc<ClientConfig>,
    name: ServerName<'static>,
    within: Duration,
) -> Result<KtlsStream, Error> {
    let conn = UnbufferedClientConnection::new(config, name).map_err(Error::Tls)?;
    established(tcp, conn, within).await
}

/// The handshake, handed over and installed, within `within`.
async fn established<C: Unbuffered>(
    tcp: TcpStream,
    conn: C,
    within: Duration,
) -> Result<KtlsStream, Error> {
    let run = async move {
        let mut tcp = tcp;
        let (secrets, kernel, info) = hand_over(&mut tcp, conn).await?;
        install(&tcp, info.version, &secrets)?;
        Ok(KtlsStream::new(tcp, C::peer(kernel), C::SIDE, info))
    };
    match tokio::time::timeout(within, run).await {
        Ok(r) => r,
        Err(_) => Err(Error::Timeout(within)),
    }
}

/// A finished handshake, handed over: the secrets for the kernel, what
/// rustls keeps, and what the log reports.
type Handed<D> = (ExtractedSecrets, KernelConnection<D>, Info);

/// The handshake on `tcp`, which then holds every byte after it.
pub(super) async fn hand_over<C: Unbuffered>(
    tcp: &mut TcpStream,
    mut conn: C,
) -> Result<Handed<C::Data>, Error> {
    drive(tcp, &mut conn).await?;
    let info = Info::of(conn.common());
    let (secrets, kernel) = conn.into_kernel().map_err(Error::Tls)?;
    Ok((secrets, kernel, info))
}

/// What the access log reports of a finished handshake.
#[derive(Debug, Clone)]
pub struct Info {
    pub version: ProtocolVersion,
    pub alpn: Option<Vec<u8>>,
}

impl Info {
    fn of<D>(conn: &UnbufferedConnectionCommon<D>) -> Info {
        Info {
            // Complete handshakes have a version.
            version: conn
                .protocol_version()
                .unwrap_or(ProtocolVersion::Unknown(0)),
            alpn: conn.alpn_protocol().map(<[u8]>::to_vec),
        }
    }
}

/// Hands both directions' secrets to the kernel.
fn install(
    tcp: &TcpStream,
    version: ProtocolVersion,
    secrets: &ExtractedSecrets,
) -> Result<(), Error> {
    let (tx_seq, tx) = &secrets.tx;
    let (rx_seq, rx) = &secrets.rx;
    let unsupported = || Error::Install("a cipher suite kTLS does not know".into());
    let tx = crypto_info(version, *tx_seq, tx).ok_or_else(unsupported)?;
    let rx = crypto_info(version, *rx_seq, rx).ok_or_else(unsupported)?;
    setsockopt(tcp, sockopt::TcpTlsTx, &tx).map_err(|e| Error::Install(format!("TLS_TX: {e}")))?;
    setsockopt(tcp, sockopt::TcpTlsRx, &rx).map_err(|e| Error::Install(format!("TLS_RX: {e}")))
}

/// rustls's two unbuffered sides, driven by one loop.
pub(super) trait Unbuffered {
    type Data;
    /// Which side of the proxy this is.
    const SIDE: TlsSide;
    fn process<'c, 'i>(
        &'c mut self,
        incoming: &'i mut [u8],
    ) -> UnbufferedStatus<'c, 'i, Self::Data>;
    fn common(&self) -> &UnbufferedConnectionCommon<Self::Data>;
    fn into_kernel(self)
        -> Result<(ExtractedSecrets, KernelConnection<Self::Data>), rustls::Error>;
    fn peer(kernel: KernelConnection<Self::Data>) -> Peer;
}

macro_rules! unbuffered {
    ($conn:ty, $data:ty, $side:expr, $peer:path) => {
        impl Unbuffered for $conn {
            type Data = $data;
            const SIDE: TlsSide = $side;
            fn process<'c, 'i>(
                &'c mut self,
                incoming: &'i mut [u8],
            ) -> UnbufferedStatus<'c, 'i, Self::Data> {
                self.process_tls_records(incoming)
            }
            fn common(&self) -> &UnbufferedConnectionCommon<Self::Data> {
                self
            }
            fn into_kernel(
                self,
            ) -> Result<(ExtractedSecrets, KernelConnection<Self::Data>), rustls::Error> {
                self.dangerous_into_kernel_connection()
            }
            fn peer(kernel: KernelConnection<Self::Data>) -> Peer {
                $peer(kernel)
            }
        }
    };
}

unbuffered!(
    UnbufferedServerConnection,
    ServerConnectionData,
    TlsSide::Downstream,
    Peer::Server
);
unbuffered!(
    UnbufferedClientConnection,
    ClientConnectionData,
    TlsSide::Upstream,
    Peer::Client
);

/// What the loop does after one state.
enum Next {
    Read,
    Write,
    Again,
    /// rustls may send data: the end, unless (a TLS 1.3 server, which may
    /// send before the client's Finished) it is still handshaking.
    Traffic,
}

/// Runs the handshake to its end: both sides' Finished processed and
/// whatever rustls sends after it (a server's TLS 1.3 tickets) written.
async fn drive<C: Unbuffered>(tcp: &mut TcpStream, conn: &mut C) -> Result<(), Error> {
    let mut incoming: Vec<u8> = Vec::with_capacity(MAX_RECORD + 5);
    let mut outgoing: Vec<u8> = Vec::new();
    // Bounded: each turn reads, writes, or encodes one queued record, and
    // the handshake's deadline bounds the reads.
    loop {
        let UnbufferedStatus { discard, state } = conn.process(&mut incoming);
        let next = match state {
            Err(e) => {
                incoming.drain(..discard);
                send_alert(tcp, conn, &mut incoming).await;
                return Err(Error::Tls(e));
            }
            Ok(ConnectionState::EncodeTlsData(mut enc)) => {
                let at = outgoing.len();
                outgoing.resize(at + MAX_RECORD + 5, 0);
                let n = match enc.encode(&mut outgoing[at..]) {
                    Ok(n) => n,
                    Err(EncodeError::InsufficientSize(need)) => {
                        outgoing.resize(at + need.required_size, 0);
                        enc.encode(&mut outgoing[at..]).map_err(encode_error)?
                    }
                    Err(e) => return Err(encode_error(e)),
                };
                outgoing.truncate(at + n);
                Next::Again
            }
            Ok(ConnectionState::TransmitTlsData(t)) => {
                t.done();
                Next::Write
            }
            Ok(ConnectionState::BlockedHandshake) => Next::Read,
            Ok(ConnectionState::WriteTraffic(_)) => Next::Traffic,
            Ok(ConnectionState::ReadTraffic(_) | ConnectionState::ReadEarlyData(_)) => {
                return Err(Error::Tls(rustls::Error::General(
                    "application data inside the handshake".into(),
                )))
            }
            Ok(ConnectionState::PeerClosed | ConnectionState::Closed) => {
                return Err(Error::Io(io::ErrorKind::UnexpectedEof.into()))
            }
            Ok(_) => {
                return Err(Error::Tls(rustls::Error::General(
                    "an unexpected handshake state".into(),
                )))
            }
        };
        incoming.drain(..discard);
        match next {
            Next::Again => {}
            Next::Write => {
                tcp.write_all(&outgoing).await.map_err(Error::Io)?;
                outgoing.clear();
            }
            Next::Traffic if !conn.common().is_handshaking() => return Ok(()),
            Next::Read | Next::Traffic => read_record(tcp, &mut incoming).await?,
        }
    }
}

fn encode_error(e: EncodeError) -> Error {
    Error::Tls(rustls::Error::General(format!(
        "encoding a handshake record: {e}"
    )))
}

/// After a failure, the alert rustls queued, best effort.
async fn send_alert<C: Unbuffered>(tcp: &mut TcpStream, conn: &mut C, incoming: &mut [u8]) {
    let UnbufferedStatus { state, .. } = conn.process(incoming);
    let Ok(ConnectionState::EncodeTlsData(mut enc)) = state else {
        return;
    };
    let mut out = vec![0u8; 64];
    if let Ok(n) = enc.encode(&mut out) {
        let _ = tcp.write_all(&out[..n]).await;
    }
}

/// Appends exactly one record from `tcp` to `incoming`.
async fn read_record(tcp: &mut TcpStream, incoming: &mut Vec<u8>) -> Result<(), Error> {
    let mut header = [0u8; 5];
    tcp.read_exact(&mut header).await.map_err(Error::Io)?;
    let len = usize::from(u16::from_be_bytes([header[3], header[4]]));
    if len > MAX_RECORD {
        return Err(Error::Tls(rustls::Error::InvalidMessage(
            rustls::InvalidMessage::MessageTooLarge,
        )));
    }
    let at = incoming.len();
    incoming.extend_from_slice(&header);
    incoming.resize(at + 5 + len, 0);
    tcp.read_exact(&mut incoming[at + 5..])
        .await
        .map_err(Error::Io)?;
    Ok(())
}
