//! What a connection's bytes travel over: any async byte stream, and the
//! TCP socket under it where there is one.
//!
//! Heads, framing and copied bodies need only the byte stream. The
//! kernel-side engines (splice, exact line reads with MSG_PEEK, reads of a
//! sockmap-linked socket, the splice tunnel) need the socket itself, and are
//! used only where every transport involved has one; any other transport
//! copies. A TLS session in userspace has none; a kTLS socket is a TCP
//! socket whose kernel does the TLS, and has one.

use tokio::io::{AsyncRead, AsyncWrite, DuplexStream};
use tokio::net::TcpStream;

/// A byte stream a [`super::stream::BufStream`] reads and writes.
pub trait Transport: AsyncRead + AsyncWrite + Unpin + Send + 'static {
    /// The TCP socket whose bytes are this stream's own, if any: the
    /// kernel can move them without changing them.
    fn tcp(&self) -> Option<&TcpStream>;
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
