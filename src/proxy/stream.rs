//! A TCP stream with a read buffer: heads are parsed from the buffer, and
//! bodies are forwarded from it and then from the socket.
//!
//! Two body engines: `copy` passes bytes through this buffer; `splice`
//! moves them kernel-side (src/proxy/splice.rs). Either way, bytes that
//! arrived in the same read as a head are written from the buffer first,
//! and a head is written before its body, so the peer sees them in order;
//! a body ends exactly at its framing's last byte, so the next head is
//! parsed intact.

use std::io;
use std::time::Duration;

use std::os::fd::AsRawFd;

use bytes::BufMut;
use nix::sys::socket::MsgFlags;
use tokio::io::{AsyncReadExt, AsyncWriteExt, Interest};
use tokio::net::TcpStream;
use tokio::time::timeout;

use super::http::{BodyFraming, ChunkError, ChunkedScanner, HeadError};
use super::splice::{splice_stream, splice_tunnel, Pipe, SpliceError};

/// Read size for heads and bodies.
const READ_CHUNK: usize = 64 * 1024;

/// Longest chunk-size line or trailer line read exactly; longer ones are
/// read in pieces and rejected by the chunk scanner.
const MAX_LINE: usize = 4096 + 2;

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

/// How long a head read may wait: one deadline before the head's first
/// byte, and (for request heads) another from that byte to the head's end,
/// so that a connection idle between requests may wait long while a head,
/// once started, must finish soon.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeadWait {
    /// Longest wait for the head's first byte.
    pub idle: Duration,
    /// Silence for `idle` before any byte is a quiet end (Ok(None)), not a
    /// timeout.
    pub idle_is_eof: bool,
    /// Longest time from the head's first byte to its end; None: the
    /// `idle` deadline covers the whole head.
    pub head: Option<Duration>,
}

impl HeadWait {
    /// The deadline that applies to a wait that began at `since` and whose
    /// head's first byte arrived at `first_byte`, and whether reaching it
    /// is a quiet end rather than a timeout.
    pub fn deadline(
        &self,
        since: tokio::time::Instant,
        first_byte: Option<tokio::time::Instant>,
    ) -> (tokio::time::Instant, bool) {
        match (first_byte, self.head) {
            (None, _) => (since + self.idle, self.idle_is_eof),
            (Some(_), None) => (since + self.idle, false),
            (Some(t), Some(head)) => (t + head, false),
        }
    }
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
    #[error("writing the body: the receiver took no bytes for {0:?}")]
    WriteTimeout(Duration),
}

impl BodyError {
    /// True when the failure is on the sending (source) side.
    pub fn is_source_side(&self) -> bool {
        !matches!(self, BodyError::Write(_) | BodyError::WriteTimeout(_))
    }

    /// True when the body made no progress for the body timeout.
    pub fn is_stall(&self) -> bool {
        matches!(self, BodyError::Timeout(_) | BodyError::WriteTimeout(_))
    }
}

/// Longest a head or local reply may wait for the peer to take any byte.
pub const HEAD_WRITE_STALL: Duration = Duration::from_secs(30);

/// Writes all of `bytes`, failing when the peer takes no byte for `stall`
/// (a receiver that stops reading cannot hold the proxy forever).
async fn write_within(
    stream: &mut TcpStream,
    bytes: &[u8],
    stall: Duration,
) -> Result<(), BodyError> {
    let mut rest = bytes;
    while !rest.is_empty() {
        match timeout(stall, stream.write(rest)).await {
            Err(_) => return Err(BodyError::WriteTimeout(stall)),
            Ok(Ok(0)) => return Err(BodyError::Write(io::ErrorKind::WriteZero.into())),
            Ok(Ok(n)) => rest = &rest[n..],
            Ok(Err(e)) => return Err(BodyError::Write(e)),
        }
    }
    Ok(())
}

/// Where a body goes.
pub enum Dest<'a> {
    Stream(&'a mut BufStream),
    /// Read and dropped (a denied request's body).
    Discard,
}

/// Body bytes forwarded, by engine, and read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Forwarded {
    /// Written through the proxy's buffer (bytes that came with a head,
    /// framing lines, or everything with the copy engine).
    pub copied: u64,
    /// Moved kernel-side with splice(2).
    pub spliced: u64,
    /// Read from the source: the same as written, except for a chunked
    /// body, whose framing lines are written in canonical form.
    pub read: u64,
}

impl Forwarded {
    pub fn total(&self) -> u64 {
        self.copied + self.spliced
    }
}

pub struct BufStream {
    stream: TcpStream,
    buf: Vec<u8>,
    /// Start of unconsumed bytes in `buf`.
    pos: usize,
    /// Some(pipe size): bodies read from this stream are spliced.
    pipe_size: Option<usize>,
    /// The pipe, created on the first splice and reused for later bodies.
    pipe: Option<Pipe>,
    /// Bytes read from the socket into the buffer so far.
    read_total: u64,
    /// The socket is linked for the sockmap engine: see [`BufStream::linked`].
    linked: bool,
}

impl BufStream {
    /// `pipe_size`: Some to splice bodies read from this stream.
    pub fn new(stream: TcpStream, pipe_size: Option<usize>) -> Self {
        BufStream {
            stream,
            buf: Vec::with_capacity(READ_CHUNK),
            pos: 0,
            pipe_size,
            pipe: None,
            read_total: 0,
            linked: false,
        }
    }

    /// Marks the socket as (possibly) linked for the sockmap engine. Its
    /// recvmsg() returns redirected bytes and stops there, even when bytes
    /// that came through TCP wait behind them, so a short read does not
    /// mean the socket is drained; tokio's `read` assumes it does and would
    /// wait for a wake-up that never comes. Reads then only stop waiting on
    /// EAGAIN.
    pub fn linked(mut self) -> Self {
        self.linked = true;
        self
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

    /// If the next `n` bytes are all buffered, appends them to `out`,
    /// consumes them and returns true.
    pub fn take_buffered(&mut self, n: u64, out: &mut Vec<u8>) -> bool {
        match usize::try_from(n) {
            Ok(n) if n <= self.buffered().len() => {
                out.extend_from_slice(&self.buf[self.pos..self.pos + n]);
                self.consume(n);
                true
            }
            _ => false,
        }
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
        // Read into spare capacity: no zeroing of the 64 KiB read area.
        self.buf.reserve(READ_CHUNK);
        let spare = self.buf.capacity() - self.buf.len();
        let mut limited = (&mut self.buf).limit(spare.min(READ_CHUNK));
        let n = if self.linked {
            read_until_eagain(&self.stream, &mut limited).await?
        } else {
            self.stream.read_buf(&mut limited).await?
        };
        self.read_total += n as u64;
        Ok(n)
    }

    /// Bytes read from the socket into the buffer so far (not those
    /// spliced past it).
    pub fn read_total(&self) -> u64 {
        self.read_total
    }

    /// Reads one head and returns it with its length in bytes. Ok(None):
    /// the peer closed before sending any byte of it, or (with
    /// `idle_is_eof`) was silent for `wait`. `wait` covers the whole head.
    pub async fn read_head<T>(
        &mut self,
        parse: HeadParser<T>,
        wait: Duration,
        idle_is_eof: bool,
    ) -> Result<Option<(T, usize)>, HeadReadError> {
        let wait = HeadWait {
            idle: wait,
            idle_is_eof,
            head: None,
        };
        self.read_head_within(parse, wait).await
    }

    /// [`BufStream::read_head`] with separate deadlines before and after
    /// the head's first byte (see [`HeadWait`]).
    pub async fn read_head_within<T>(
        &mut self,
        parse: HeadParser<T>,
        wait: HeadWait,
    ) -> Result<Option<(T, usize)>, HeadReadError> {
        let since = tokio::time::Instant::now();
        let mut first_byte = None;
        loop {
            if !self.buffered().is_empty() {
                first_byte.get_or_insert_with(tokio::time::Instant::now);
                if let Some((head, n)) = parse(self.buffered())? {
                    self.consume(n);
                    return Ok(Some((head, n)));
                }
            }
            let (deadline, quiet) = wait.deadline(since, first_byte);
            match tokio::time::timeout_at(deadline, self.fill()).await {
                Err(_) if quiet => return Ok(None),
                Err(_) => return Err(HeadReadError::Timeout),
                Ok(Ok(0)) if first_byte.is_none() => return Ok(None),
                Ok(Ok(0)) => return Err(HeadReadError::Truncated),
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return Err(HeadReadError::Io(e)),
            }
        }
    }

    /// Writes a head or a local reply; fails when the peer takes no byte
    /// for [`HEAD_WRITE_STALL`].
    pub async fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        write_within(&mut self.stream, bytes, HEAD_WRITE_STALL)
            .await
            .map_err(|e| match e {
                BodyError::Write(e) => e,
                other => io::Error::new(io::ErrorKind::TimedOut, other.to_string()),
            })
    }

    /// Forwards one body framed by `framing` to `dst` (or discards it),
    /// waiting at most `idle` for each read. Bytes already buffered (those
    /// that came with the head) are written first, from userspace; with the
    /// splice engine the rest moves kernel-side.
    pub async fn forward_body(
        &mut self,
        mut dst: Dest<'_>,
        framing: BodyFraming,
        idle: Duration,
    ) -> Result<Forwarded, BodyError> {
        let mut done = Forwarded::default();
        match framing {
            BodyFraming::None => {}
            BodyFraming::Length(len) => {
                let mut left = len;
                while left > 0 {
                    if self.buffered().is_empty() {
                        if let Some(n) = self.splice_to(&mut dst, Some(left), idle).await? {
                            done.spliced += n;
                            done.read += n;
                            left -= n;
                            if left > 0 {
                                return Err(BodyError::Truncated { missing: left });
                            }
                            break;
                        }
                        if self.fill_body(idle).await? == 0 {
                            return Err(BodyError::Truncated { missing: left });
                        }
                    }
                    let n = self
                        .buffered()
                        .len()
                        .min(usize::try_from(left).unwrap_or(usize::MAX));
                    self.send_buffered(&mut dst, n, idle).await?;
                    done.copied += n as u64;
                    done.read += n as u64;
                    left -= n as u64;
                }
            }
            BodyFraming::Chunked => {
                done = self
                    .forward_chunked(dst, ChunkedScanner::new(), idle)
                    .await?;
            }
            BodyFraming::UntilClose => loop {
                let n = self.buffered().len();
                if n > 0 {
                    self.send_buffered(&mut dst, n, idle).await?;
                    done.copied += n as u64;
                    done.read += n as u64;
                }
                if let Some(n) = self.splice_to(&mut dst, None, idle).await? {
                    done.spliced += n;
                    done.read += n;
                    break;
                }
                if self.fill_body(idle).await? == 0 {
                    break;
                }
            },
        }
        Ok(done)
    }

    /// Forwards a chunked body through `scanner`, which decides what is
    /// written of its framing (canonical lines, or none when de-chunking);
    /// chunk data is copied or spliced as it is.
    pub async fn forward_chunked(
        &mut self,
        mut dst: Dest<'_>,
        mut scanner: ChunkedScanner,
        idle: Duration,
    ) -> Result<Forwarded, BodyError> {
        let mut done = Forwarded::default();
        let mut canonical = Vec::new();
        loop {
            if !self.buffered().is_empty() {
                canonical.clear();
                let n = scanner.feed(self.buffered(), &mut canonical)?;
                self.consume(n);
                done.read += n as u64;
                if let Dest::Stream(out) = &mut dst {
                    write_within(&mut out.stream, &canonical, idle).await?;
                }
                done.copied += canonical.len() as u64;
                if scanner.is_done() {
                    break;
                }
            }
            let data = scanner.data_remaining();
            if data > 0 && self.buffered().is_empty() {
                if let Some(n) = self.splice_to(&mut dst, Some(data), idle).await? {
                    scanner.skip_data(n);
                    done.spliced += n;
                    done.read += n;
                    if n < data {
                        return Err(BodyError::Truncated { missing: data - n });
                    }
                    continue;
                }
            }
            // Framing lines are read exactly, so chunk data stays in
            // the kernel for the splice engine.
            let read = if self.pipe_size.is_some() {
                self.fill_line(idle).await?
            } else {
                self.fill_body(idle).await?
            };
            if read == 0 {
                return Err(BodyError::Truncated { missing: data });
            }
        }
        Ok(done)
    }

    /// With the splice engine and a stream destination, moves `limit` bytes
    /// (None: until EOF) kernel-side and returns Some(moved); otherwise None.
    async fn splice_to(
        &mut self,
        dst: &mut Dest<'_>,
        limit: Option<u64>,
        idle: Duration,
    ) -> Result<Option<u64>, BodyError> {
        let (Some(size), Dest::Stream(out)) = (self.pipe_size, dst) else {
            return Ok(None);
        };
        if self.pipe.is_none() {
            self.pipe = Some(Pipe::new(size).map_err(BodyError::Read)?);
        }
        let Some(pipe) = self.pipe.as_mut() else {
            return Ok(None);
        };
        let moved = splice_stream(&self.stream, &out.stream, pipe, limit, idle).await;
        match moved {
            Ok(n) => Ok(Some(n)),
            Err(e) => {
                // Bytes stranded in the pipe belong to a body that failed:
                // the pipe cannot be reused.
                self.pipe = None;
                Err(match e {
                    SpliceError::Read(e) => BodyError::Read(e),
                    SpliceError::Write(e) => BodyError::Write(e),
                    SpliceError::Timeout { writing: false } => BodyError::Timeout(idle),
                    SpliceError::Timeout { writing: true } => BodyError::WriteTimeout(idle),
                })
            }
        }
    }

    /// Reads exactly one line (up to and including LF, at most
    /// [`MAX_LINE`] bytes) into the buffer, leaving what follows in the
    /// socket. Returns the bytes read; 0 at EOF.
    async fn fill_line(&mut self, idle: Duration) -> Result<usize, BodyError> {
        let mut peek = [0u8; MAX_LINE];
        loop {
            let peeked = self.stream.try_io(Interest::READABLE, || {
                nix::sys::socket::recv(
                    self.stream.as_raw_fd(),
                    &mut peek,
                    MsgFlags::MSG_PEEK | MsgFlags::MSG_DONTWAIT,
                )
                .map_err(io::Error::from)
            });
            match peeked {
                Ok(0) => return Ok(0),
                Ok(n) => {
                    // Through the LF, or everything peeked if the line is
                    // longer (the chunk scanner then rejects it).
                    let take = peek[..n]
                        .iter()
                        .position(|&b| b == b'\n')
                        .map_or(n, |i| i + 1);
                    let len = self.buf.len();
                    self.buf.resize(len + take, 0);
                    let got = self
                        .stream
                        .try_read(&mut self.buf[len..])
                        .map_err(BodyError::Read)?;
                    self.buf.truncate(len + got);
                    self.read_total += got as u64;
                    return Ok(got);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    match timeout(idle, self.stream.readable()).await {
                        Err(_) => return Err(BodyError::Timeout(idle)),
                        Ok(r) => r.map_err(BodyError::Read)?,
                    }
                }
                Err(e) => return Err(BodyError::Read(e)),
            }
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

    async fn send_buffered(
        &mut self,
        dst: &mut Dest<'_>,
        n: usize,
        idle: Duration,
    ) -> Result<(), BodyError> {
        if let Dest::Stream(out) = dst {
            write_within(&mut out.stream, &self.buf[self.pos..self.pos + n], idle).await?;
        }
        self.consume(n);
        Ok(())
    }

    /// Flushes and half-closes the write side.
    pub async fn shutdown(&mut self) {
        let _ = self.stream.shutdown().await;
    }
}

/// One read that leaves tokio's readiness set after a short read: it is
/// cleared on EAGAIN only.
async fn read_until_eagain(stream: &TcpStream, buf: &mut impl BufMut) -> io::Result<usize> {
    loop {
        stream.readable().await?;
        match stream.try_read_buf(buf) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            r => return r,
        }
    }
}

/// [`read_until_eagain`] for tunnels: a linked stream as AsyncRead.
struct LinkedStream(TcpStream);

impl tokio::io::AsyncRead for LinkedStream {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        loop {
            std::task::ready!(self.0.poll_read_ready(cx))?;
            match self.0.try_read(buf.initialize_unfilled()) {
                Ok(n) => {
                    buf.advance(n);
                    return std::task::Poll::Ready(Ok(()));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return std::task::Poll::Ready(Err(e)),
            }
        }
    }
}

impl tokio::io::AsyncWrite for LinkedStream {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<io::Result<usize>> {
        std::pin::Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

/// Joins two connections after a protocol upgrade (101), first delivering
/// bytes each side already had buffered, then with the connections' engine
/// (splice, or a userspace copy).
pub async fn tunnel(a: BufStream, b: BufStream, idle: Duration) -> io::Result<(u64, u64)> {
    let (pipe_size, linked) = (a.pipe_size, a.linked);
    let (mut a, a_rest) = a.into_parts();
    let (mut b, b_rest) = b.into_parts();
    b.write_all(&a_rest).await?;
    a.write_all(&b_rest).await?;
    let (ab, ba) = match pipe_size {
        Some(size) => splice_tunnel(&a, &b, size, idle).await?,
        None if linked => tokio::io::copy_bidirectional(&mut LinkedStream(a), &mut b).await?,
        None => tokio::io::copy_bidirectional(&mut a, &mut b).await?,
    };
    Ok((ab + a_rest.len() as u64, ba + b_rest.len() as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn which_head_deadline_applies() {
        let t0 = tokio::time::Instant::now();
        let s = Duration::from_secs;
        let request = HeadWait {
            idle: s(300),
            idle_is_eof: true,
            head: Some(s(10)),
        };
        let response = HeadWait {
            idle: s(30),
            idle_is_eof: false,
            head: None,
        };
        // (wait, first byte after t0, expected deadline after t0, quiet)
        let cases = [
            // Idle between requests: the idle timeout, then a quiet close.
            (request, None, s(300), true),
            // A head started at once must end 10 s later.
            (request, Some(s(0)), s(10), false),
            // A head started late gets its full 10 s from its first byte,
            // even past the idle deadline.
            (request, Some(s(295)), s(305), false),
            (request, Some(s(20)), s(30), false),
            // Response heads: one deadline for the whole head, a timeout.
            (response, None, s(30), false),
            (response, Some(s(29)), s(30), false),
        ];
        for (wait, first, deadline, quiet) in cases {
            let got = wait.deadline(t0, first.map(|d| t0 + d));
            assert_eq!(got, (t0 + deadline, quiet), "{wait:?} first byte {first:?}");
        }
    }
}
