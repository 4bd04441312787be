//! A TCP stream with a read buffer: heads are parsed from the buffer, and
//! bodies are forwarded from it and then from the socket.
//!
//! Body forwarding here is the `copy` engine: bytes pass through this
//! buffer. Bytes that arrived in the same read as a head always take this
//! path, so the forwarded head reaches the peer before any body byte.

use std::io;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

use super::http::{BodyFraming, ChunkError, ChunkedScanner, HeadError};

/// Read size for heads and bodies.
const READ_CHUNK: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum HeadReadError {
    #[error("{0}")]
    Head(#[from] HeadError),
    #[error("connection closed in the middle of a head")]
    Truncated,
    #[error("timed out waiting for a head")]
    Timeout,
    #[error("{0}")]
    Io(#[from] io::Error),
}

/// A head parser: Ok(Some((head, length))) once a whole head is buffered.
pub type HeadParser<T> = fn(&[u8]) -> Result<Option<(T, usize)>, HeadError>;

/// Which side of a body transfer failed.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("reading the body: {0}")]
    Read(io::Error),
    #[error("body ended early: connection closed with {missing} bytes missing")]
    Truncated { missing: u64 },
    #[error("no body bytes for {0:?}")]
    Timeout(Duration),
    #[error("bad chunked body: {0}")]
    Chunk(#[from] ChunkError),
    #[error("writing the body: {0}")]
    Write(io::Error),
}

impl BodyError {
    /// True when the failure is on the sending (source) side.
    pub fn is_source_side(&self) -> bool {
        !matches!(self, BodyError::Write(_))
    }
}

/// Where a body goes.
pub enum Dest<'a> {
    Stream(&'a mut BufStream),
    /// Read and dropped (a denied request's body).
    Discard,
}

pub struct BufStream {
    stream: TcpStream,
    buf: Vec<u8>,
    /// Start of unconsumed bytes in `buf`.
    pos: usize,
}

impl BufStream {
    pub fn new(stream: TcpStream) -> Self {
        BufStream {
            stream,
            buf: Vec::with_capacity(READ_CHUNK),
            pos: 0,
        }
    }

    pub fn get_ref(&self) -> &TcpStream {
        &self.stream
    }

    pub fn into_parts(self) -> (TcpStream, Vec<u8>) {
        let rest = self.buf[self.pos..].to_vec();
        (self.stream, rest)
    }

    /// Unconsumed bytes already read from the socket.
    pub fn buffered(&self) -> &[u8] {
        &self.buf[self.pos..]
    }

    fn consume(&mut self, n: usize) {
        self.pos += n;
        if self.pos == self.buf.len() {
            self.buf.clear();
            self.pos = 0;
        }
    }

    /// Reads more bytes into the buffer; Ok(0) at EOF.
    async fn fill(&mut self) -> io::Result<usize> {
        if self.pos > 0 && self.pos == self.buf.len() {
            self.buf.clear();
            self.pos = 0;
        }
        let len = self.buf.len();
        self.buf.resize(len + READ_CHUNK, 0);
        let r = self.stream.read(&mut self.buf[len..]).await;
        let n = *r.as_ref().unwrap_or(&0);
        self.buf.truncate(len + n);
        r
    }

    /// Reads one head and returns it with its length in bytes. Ok(None):
    /// the peer closed before sending any byte of it, or (with
    /// `idle_is_eof`) was silent for `wait`.
    pub async fn read_head<T>(
        &mut self,
        parse: HeadParser<T>,
        wait: Duration,
        idle_is_eof: bool,
    ) -> Result<Option<(T, usize)>, HeadReadError> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if !self.buffered().is_empty() {
                if let Some((head, n)) = parse(self.buffered())? {
                    self.consume(n);
                    return Ok(Some((head, n)));
                }
            }
            let started = self.buffered().is_empty();
            match tokio::time::timeout_at(deadline, self.fill()).await {
                Err(_) if started && idle_is_eof => return Ok(None),
                Err(_) => return Err(HeadReadError::Timeout),
                Ok(Ok(0)) if started => return Ok(None),
                Ok(Ok(0)) => return Err(HeadReadError::Truncated),
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return Err(HeadReadError::Io(e)),
            }
        }
    }

    pub async fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes).await
    }

    /// Forwards one body framed by `framing` to `dst` (or discards it),
    /// waiting at most `idle` for each read. Returns the bytes forwarded.
    pub async fn forward_body(
        &mut self,
        dst: Dest<'_>,
        framing: BodyFraming,
        idle: Duration,
    ) -> Result<u64, BodyError> {
        match framing {
            BodyFraming::None => Ok(0),
            BodyFraming::Length(n) => self.forward_length(dst, n, idle).await,
            BodyFraming::Chunked => self.forward_chunked(dst, idle).await,
            BodyFraming::UntilClose => self.forward_until_close(dst, idle).await,
        }
    }

    /// Reads more, mapping EOF to `eof`.
    async fn fill_body(&mut self, idle: Duration) -> Result<usize, BodyError> {
        match timeout(idle, self.fill()).await {
            Err(_) => Err(BodyError::Timeout(idle)),
            Ok(Err(e)) => Err(BodyError::Read(e)),
            Ok(Ok(n)) => Ok(n),
        }
    }

    async fn send_buffered(&mut self, dst: &mut Dest<'_>, n: usize) -> Result<(), BodyError> {
        if let Dest::Stream(out) = dst {
            out.stream
                .write_all(&self.buf[self.pos..self.pos + n])
                .await
                .map_err(BodyError::Write)?;
        }
        self.consume(n);
        Ok(())
    }

    async fn forward_length(
        &mut self,
        mut dst: Dest<'_>,
        len: u64,
        idle: Duration,
    ) -> Result<u64, BodyError> {
        let mut left = len;
        while left > 0 {
            if self.buffered().is_empty() && self.fill_body(idle).await? == 0 {
                return Err(BodyError::Truncated { missing: left });
            }
            let n = self
                .buffered()
                .len()
                .min(usize::try_from(left).unwrap_or(usize::MAX));
            self.send_buffered(&mut dst, n).await?;
            left -= n as u64;
        }
        Ok(len)
    }

    async fn forward_chunked(
        &mut self,
        mut dst: Dest<'_>,
        idle: Duration,
    ) -> Result<u64, BodyError> {
        let mut scanner = ChunkedScanner::new();
        let mut total = 0u64;
        loop {
            if !self.buffered().is_empty() {
                let n = scanner.feed(self.buffered())?;
                self.send_buffered(&mut dst, n).await?;
                total += n as u64;
                if scanner.is_done() {
                    return Ok(total);
                }
            }
            if self.fill_body(idle).await? == 0 {
                return Err(BodyError::Truncated { missing: 0 });
            }
        }
    }

    async fn forward_until_close(
        &mut self,
        mut dst: Dest<'_>,
        idle: Duration,
    ) -> Result<u64, BodyError> {
        let mut total = 0u64;
        loop {
            let n = self.buffered().len();
            if n > 0 {
                self.send_buffered(&mut dst, n).await?;
                total += n as u64;
            }
            if self.fill_body(idle).await? == 0 {
                return Ok(total);
            }
        }
    }

    /// Flushes and half-closes the write side.
    pub async fn shutdown(&mut self) {
        let _ = self.stream.shutdown().await;
    }
}

/// Splices two connections together after a protocol upgrade (101), first
/// delivering bytes each side already had buffered.
pub async fn tunnel(a: BufStream, b: BufStream) -> io::Result<(u64, u64)> {
    let (mut a, a_rest) = a.into_parts();
    let (mut b, b_rest) = b.into_parts();
    b.write_all(&a_rest).await?;
    a.write_all(&b_rest).await?;
    let (ab, ba) = tokio::io::copy_bidirectional(&mut a, &mut b).await?;
    Ok((ab + a_rest.len() as u64, ba + b_rest.len() as u64))
}
