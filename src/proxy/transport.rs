//! What a connection's bytes travel over: any async byte stream, and the
//! TCP socket under it where there is one.
//!
//! Heads, framing and copied bodies need only the byte stream. The
//! kernel-side engines (splice, exact line reads with MSG_PEEK, reads of a
//! sockmap-linked socket, the splice tunnel) need the socket itself, and are
//! used only where every transport involved has one; any other transport
//! copies. A TLS session in userspace has none; a kTLS socket is a TCP
//! socket whose kernel does the TLS, and has one.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, DuplexStream, ReadBuf};
use tokio::net::TcpStream;

use crate::tls::ktls::stream::{KtlsStream, Session};

/// A byte stream a [`super::stream::BufStream`] reads and writes.
pub trait Transport: AsyncRead + AsyncWrite + Unpin + Send + 'static {
    /// The TCP socket whose bytes are this stream's own, if any: the
    /// kernel can move them without changing them.
    fn tcp(&self) -> Option<&TcpStream>;

    /// The kTLS session on [`Transport::tcp`], if the kernel does its TLS:
    /// the kernel paths then hand it the records that are not data.
    fn kernel_tls(&self) -> Option<&Session> {
        None
    }
}

impl Transport for KtlsStream {
    fn tcp(&self) -> Option<&TcpStream> {
        Some(KtlsStream::tcp(self))
    }

    fn kernel_tls(&self) -> Option<&Session> {
        Some(self.session())
    }
}

impl Transport for TcpStream {
    fn tcp(&self) -> Option<&TcpStream> {
        Some(self)
    }
}

/// In-memory streams: the no-root tests run the stream and body paths over
/// them.
impl Transport for DuplexStream {
    fn tcp(&self) -> Option<&TcpStream> {
        None
    }
}

/// An upstream connection's transport: TCP, or TLS the proxy originates
/// (interception and `upstream.tls`) over TCP, in rustls or in the kernel.
pub enum UpStream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
    Ktls(Box<KtlsStream>),
}

impl UpStream {
    /// Whether the kernel does its TLS; None: plain TCP.
    pub fn ktls(&self) -> Option<bool> {
        match self {
            UpStream::Plain(_) => None,
            UpStream::Tls(_) => Some(false),
            UpStream::Ktls(_) => Some(true),
        }
    }

    /// The TCP socket under it, TLS or not (for liveness peeks).
    pub fn socket(&self) -> &TcpStream {
        match self {
            UpStream::Plain(s) => s,
            UpStream::Tls(s) => s.get_ref().0,
            UpStream::Ktls(s) => s.tcp(),
        }
    }
}

impl Transport for UpStream {
    fn tcp(&self) -> Option<&TcpStream> {
        match self {
            UpStream::Plain(s) => Some(s),
            UpStream::Ktls(s) => Some(s.tcp()),
            UpStream::Tls(_) => None,
        }
    }

    fn kernel_tls(&self) -> Option<&Session> {
        match self {
            UpStream::Ktls(s) => Some(s.session()),
            UpStream::Plain(_) | UpStream::Tls(_) => None,
        }
    }
}

/// The workload's side of an intercepted connection.
impl Transport for tokio_rustls::server::TlsStream<TcpStream> {
    fn tcp(&self) -> Option<&TcpStream> {
        None
    }
}

macro_rules! delegate {
    ($self:ident, $s:ident => $e:expr) => {
        match $self.get_mut() {
            UpStream::Plain($s) => $e,
            UpStream::Tls($s) => $e,
            UpStream::Ktls($s) => $e,
        }
    };
}

impl AsyncRead for UpStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        delegate!(self, s => Pin::new(s).poll_read(cx, buf))
    }
}

impl AsyncWrite for UpStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        delegate!(self, s => Pin::new(s).poll_write(cx, buf))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        delegate!(self, s => Pin::new(s).poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        delegate!(self, s => Pin::new(s).poll_shutdown(cx))
    }
}
