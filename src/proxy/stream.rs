//! A byte stream with a read buffer: heads are parsed from the buffer, and
//! bodies are forwarded from it and then from the stream.
//!
//! Where a body ends is decided by its cursor (src/proxy/body.rs); the
//! engines here only do what it answers. Two engines: `copy` passes bytes
//! through this buffer; `splice` moves them kernel-side
//! (src/proxy/splice.rs), where both ends are TCP sockets
//! (src/proxy/transport.rs). Either way, bytes that arrived in the same read
//! as a head are written from the buffer first, and a head is written
//! before its body, so the peer sees them in order; a body ends exactly at
//! its framing's last byte, so the next head is parsed intact. With the
//! splice engine, chunked framing lines are read exactly (MSG_PEEK, then a
//! read of that line), so chunk data stays in the kernel. Every read waits
//! at most the body's idle time, every write fails when the receiver takes
//! nothing for as long.

use std::io;
use std::os::fd::AsRawFd;
use std::time::Duration;

use bytes::buf::Limit;
use bytes::BufMut;
use nix::sys::socket::MsgFlags;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, Interest};
use tokio::net::TcpStream;
use tokio::time::timeout;

pub use super::body::Forwarded;
use super::body::{BodyCursor, FramingError, Step};
use super::http::{BodyFraming, ChunkError, ChunkedScanner, HeadError};
use super::splice::{splice_stream, splice_tunnel, Pipe, SpliceError};
use super::transport::Transport;
use crate::tls::ktls::stream::{is_control_stop, Session, Taken};

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

impl From<FramingError> for BodyError {
    fn from(e: FramingError) -> Self {
        match e {
            FramingError::Truncated { missing } => BodyError::Truncated { missing },
            FramingError::Chunk(e) => BodyError::Chunk(e),
        }
    }
}

/// Longest a head or local reply may wait for the peer to take any byte.
pub const HEAD_WRITE_STALL: Duration = Duration::from_secs(30);

/// Writes all of `bytes`, failing when the peer takes no byte for `stall`
/// (a receiver that stops reading cannot hold the proxy forever).
async fn write_within<W: AsyncWrite + Unpin + ?Sized>(
    stream: &mut W,
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

/// The stream a body is written to, whatever its transport. [`Dest`] holds
/// it as a trait object, so one `Dest` type serves every pair of transports
/// and a discarded body needs to name none.
pub trait Sink: Send {
    /// The stream to write the body's bytes to.
    fn writer(&mut self) -> &mut dyn Transport;
    /// Its TCP socket, where the kernel can move bytes into it.
    fn tcp(&self) -> Option<&TcpStream>;
}

/// Where a body goes.
pub enum Dest<'a> {
    Stream(&'a mut dyn Sink),
    /// Read and dropped (a denied request's body).
    Discard,
}

impl Dest<'_> {
    fn tcp(&self) -> Option<&TcpStream> {
        match self {
            Dest::Stream(s) => s.tcp(),
            Dest::Discard => None,
        }
    }
}

/// Bytes read from the stream and not yet consumed.
struct Buffer {
    bytes: Vec<u8>,
    /// Start of unconsumed bytes in `bytes`.
    pos: usize,
    /// Bytes read into the buffer so far.
    read_total: u64,
}

impl Buffer {
    fn unconsumed(&self) -> &[u8] {
        &self.bytes[self.pos..]
    }

    fn consume(&mut self, n: usize) {
        self.pos += n;
        if self.pos == self.bytes.len() {
            self.bytes.clear();
            self.pos = 0;
        }
    }

    /// Room for one read, in spare capacity: no zeroing of the 64 KiB
    /// read area.
    fn room(&mut self) -> Limit<&mut Vec<u8>> {
        self.bytes.reserve(READ_CHUNK);
        let spare = self.bytes.capacity() - self.bytes.len();
        (&mut self.bytes).limit(spare.min(READ_CHUNK))
    }

    /// One read from `stream`; Ok(0) at EOF.
    async fn read_from<R: AsyncRead + Unpin>(&mut self, stream: &mut R) -> io::Result<usize> {
        let n = stream.read_buf(&mut self.room()).await?;
        self.read_total += n as u64;
        Ok(n)
    }

    /// One read from a sockmap-linked socket (see [`BufStream::linked`]).
    async fn read_linked(&mut self, tcp: &TcpStream) -> io::Result<usize> {
        let n = read_until_eagain(tcp, &mut self.room()).await?;
        self.read_total += n as u64;
        Ok(n)
    }

    /// Reads exactly one line (up to and including LF, at most
    /// [`MAX_LINE`] bytes) from `tcp`, leaving what follows in the socket.
    /// Returns the bytes read; 0 at EOF.
    async fn read_line(&mut self, via: Kernel<'_>, idle: Duration) -> Result<usize, BodyError> {
        let tcp = via.src;
        let mut peek = [0u8; MAX_LINE];
        // Bounded: each turn reads, takes one kTLS record, or waits `idle`.
        loop {
            let peeked = tcp.try_io(Interest::READABLE, || {
                nix::sys::socket::recv(
                    tcp.as_raw_fd(),
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
                    let len = self.bytes.len();
                    self.bytes.resize(len + take, 0);
                    let got = tcp
                        .try_read(&mut self.bytes[len..])
                        .map_err(BodyError::Read)?;
                    self.bytes.truncate(len + got);
                    self.read_total += got as u64;
                    return Ok(got);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    match timeout(idle, tcp.readable()).await {
                        Err(_) => return Err(BodyError::Timeout(idle)),
                        Ok(r) => r.map_err(BodyError::Read)?,
                    }
                }
                Err(e) => match via.session {
                    Some(session) if is_control_stop(&e) => {
                        if session.take(tcp).map_err(BodyError::Read)? == Taken::End {
                            return Ok(0);
                        }
                    }
                    _ => return Err(BodyError::Read(e)),
                },
            }
        }
    }
}

/// A body's kernel path: splice(2) from its source's socket to its
/// destination's through a pipe of `pipe_size`.
#[derive(Clone, Copy)]
struct Kernel<'s> {
    src: &'s TcpStream,
    /// The source's kTLS session, which takes the records that stop a
    /// splice or a peek.
    session: Option<&'s Session>,
    dst: &'s TcpStream,
    pipe_size: usize,
}

impl Kernel<'_> {
    /// Moves `limit` bytes (None: until EOF) through the stream's pipe,
    /// made on first use; returns the bytes moved, fewer only at EOF.
    async fn splice(
        self,
        pipe: &mut Option<Pipe>,
        limit: Option<u64>,
        idle: Duration,
    ) -> Result<u64, BodyError> {
        let mut owned = match pipe.take() {
            Some(p) => p,
            None => Pipe::new(self.pipe_size).map_err(BodyError::Read)?,
        };
        // A pipe goes back only after a splice that ended cleanly: bytes
        // stranded in it belong to a body that failed.
        let mut moved = 0;
        // Bounded: each turn moves bytes or takes one kTLS record, and
        // `idle` bounds each splice's waits.
        loop {
            let rest = limit.map(|l| l - moved);
            let s = splice_stream(self.src, self.dst, &mut owned, rest, idle)
                .await
                .map_err(|e| match e {
                    SpliceError::Read(e) => BodyError::Read(e),
                    SpliceError::Write(e) => BodyError::Write(e),
                    SpliceError::Timeout { writing: false } => BodyError::Timeout(idle),
                    SpliceError::Timeout { writing: true } => BodyError::WriteTimeout(idle),
                })?;
            moved += s.moved;
            if !s.control {
                break;
            }
            let Some(session) = self.session else {
                return Err(BodyError::Read(io::Error::from_raw_os_error(libc::EINVAL)));
            };
            if session.take(self.src).map_err(BodyError::Read)? == Taken::End {
                break;
            }
        }
        *pipe = Some(owned);
        Ok(moved)
    }
}

/// A buffered byte stream (a TCP socket unless said otherwise).
pub struct BufStream<T: Transport = TcpStream> {
    stream: T,
    buf: Buffer,
    /// Some(pipe size): bodies read from this stream are spliced where the
    /// destination is a TCP socket too.
    pipe_size: Option<usize>,
    /// The pipe, created on the first splice and reused for later bodies.
    pipe: Option<Pipe>,
    /// The socket is linked for the sockmap engine: see [`BufStream::linked`].
    linked: bool,
}

impl<T: Transport> Sink for BufStream<T> {
    fn writer(&mut self) -> &mut dyn Transport {
        &mut self.stream
    }

    fn tcp(&self) -> Option<&TcpStream> {
        self.stream.tcp()
    }
}

impl<T: Transport> BufStream<T> {
    /// `pipe_size`: Some to splice bodies read from this stream.
    pub fn new(stream: T, pipe_size: Option<usize>) -> Self {
        BufStream {
            stream,
            buf: Buffer {
                bytes: Vec::with_capacity(READ_CHUNK),
                pos: 0,
                read_total: 0,
            },
            pipe_size,
            pipe: None,
            linked: false,
        }
    }

    /// Marks the socket as (possibly) linked for the sockmap engine. Its
    /// recvmsg() returns redirected bytes and stops there, even when bytes
    /// that came through TCP wait behind them, so a short read does not
    /// mean the socket is drained; tokio's `read` assumes it does and would
    /// wait for a wake-up that never comes. Reads then only stop waiting on
    /// EAGAIN. (A transport without a TCP socket is read as usual.)
    pub fn linked(mut self) -> Self {
        self.linked = true;
        self
    }

    pub fn get_ref(&self) -> &T {
        &self.stream
    }

    pub fn into_parts(self) -> (T, Vec<u8>) {
        let rest = self.buffered().to_vec();
        (self.stream, rest)
    }

    /// Unconsumed bytes already read from the stream.
    pub fn buffered(&self) -> &[u8] {
        self.buf.unconsumed()
    }

    /// If the next `n` bytes are all buffered, appends them to `out`,
    /// consumes them and returns true.
    pub fn take_buffered(&mut self, n: u64, out: &mut Vec<u8>) -> bool {
        match usize::try_from(n) {
            Ok(n) if n <= self.buffered().len() => {
                out.extend_from_slice(&self.buffered()[..n]);
                self.buf.consume(n);
                true
            }
            _ => false,
        }
    }

    /// Reads more bytes into the buffer; Ok(0) at EOF.
    async fn fill(&mut self) -> io::Result<usize> {
        match self.stream.tcp() {
            Some(tcp) if self.linked => self.buf.read_linked(tcp).await,
            _ => self.buf.read_from(&mut self.stream).await,
        }
    }

    /// Bytes read from the stream into the buffer so far (not those
    /// spliced past it).
    pub fn read_total(&self) -> u64 {
        self.buf.read_total
    }

    /// Waits until the peer has sent something (bytes or EOF): a TCP
    /// socket's readiness; with another transport, a read into the buffer.
    /// Safe to cancel, as a tokio read is.
    pub async fn readable(&mut self) -> io::Result<()> {
        match self.stream.tcp() {
            Some(tcp) => tcp.readable().await,
            None => self.fill().await.map(drop),
        }
    }

    /// Reads one head and returns it with its length in bytes. Ok(None):
    /// the peer closed before sending any byte of it, or (with
    /// `idle_is_eof`) was silent for `wait`. `wait` covers the whole head.
    pub async fn read_head<H>(
        &mut self,
        parse: HeadParser<H>,
        wait: Duration,
        idle_is_eof: bool,
    ) -> Result<Option<(H, usize)>, HeadReadError> {
        let wait = HeadWait {
            idle: wait,
            idle_is_eof,
            head: None,
        };
        self.read_head_within(parse, wait).await
    }

    /// [`BufStream::read_head`] with separate deadlines before and after
    /// the head's first byte (see [`HeadWait`]).
    pub async fn read_head_within<H>(
        &mut self,
        parse: HeadParser<H>,
        wait: HeadWait,
    ) -> Result<Option<(H, usize)>, HeadReadError> {
        let since = tokio::time::Instant::now();
        let mut first_byte = None;
        loop {
            if !self.buffered().is_empty() {
                first_byte.get_or_insert_with(tokio::time::Instant::now);
                if let Some((head, n)) = parse(self.buffered())? {
                    self.buf.consume(n);
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
        dst: Dest<'_>,
        framing: BodyFraming,
        idle: Duration,
    ) -> Result<Forwarded, BodyError> {
        self.forward(dst, BodyCursor::new(framing), idle).await
    }

    /// Forwards a chunked body through `scanner`, which decides what is
    /// written of its framing (canonical lines, or none when de-chunking);
    /// chunk data is copied or spliced as it is.
    pub async fn forward_chunked(
        &mut self,
        dst: Dest<'_>,
        scanner: ChunkedScanner,
        idle: Duration,
    ) -> Result<Forwarded, BodyError> {
        self.forward(dst, BodyCursor::chunked(scanner), idle).await
    }

    /// Executes `cursor`'s steps until the body is done: the kernel path is
    /// offered where this stream splices and both ends are TCP sockets.
    async fn forward(
        &mut self,
        mut dst: Dest<'_>,
        mut cursor: BodyCursor,
        idle: Duration,
    ) -> Result<Forwarded, BodyError> {
        loop {
            let kernel = match (self.pipe_size, self.stream.tcp(), dst.tcp()) {
                (Some(pipe_size), Some(src), Some(dst)) => Some(Kernel {
                    src,
                    session: self.stream.kernel_tls(),
                    dst,
                    pipe_size,
                }),
                _ => None,
            };
            match cursor.next(self.buf.unconsumed(), kernel)? {
                Step::Write { consume, bytes } => {
                    if let Dest::Stream(out) = &mut dst {
                        write_within(out.writer(), bytes, idle).await?;
                    }
                    self.buf.consume(consume);
                    cursor.written();
                }
                Step::Move { via, limit } => {
                    let n = via.splice(&mut self.pipe, limit, idle).await?;
                    cursor.moved(n);
                }
                Step::ReadLine(via) => {
                    let n = self.buf.read_line(via, idle).await?;
                    cursor.read(n);
                }
                Step::Fill => {
                    let n = match timeout(idle, self.fill()).await {
                        Err(_) => return Err(BodyError::Timeout(idle)),
                        Ok(r) => r.map_err(BodyError::Read)?,
                    };
                    cursor.read(n);
                }
                Step::Done => return Ok(cursor.forwarded()),
            }
        }
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

/// [`read_until_eagain`] for tunnels: a linked stream as AsyncRead (a
/// transport without a TCP socket is read as it is).
struct LinkedStream<T>(T);

impl<T: Transport> AsyncRead for LinkedStream<T> {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        let this = self.get_mut();
        let Some(tcp) = this.0.tcp() else {
            return std::pin::Pin::new(&mut this.0).poll_read(cx, buf);
        };
        loop {
            std::task::ready!(tcp.poll_read_ready(cx))?;
            match tcp.try_read(buf.initialize_unfilled()) {
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

impl<T: Transport> AsyncWrite for LinkedStream<T> {
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

/// Bytes one direction of a tunnel moved.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Moved {
    /// Through the proxy's memory.
    pub copied: u64,
    /// Kernel-side (splice).
    pub spliced: u64,
}

impl Moved {
    pub fn total(self) -> u64 {
        self.copied + self.spliced
    }
}

/// What a tunnel moved each way, and how it ended.
#[derive(Debug)]
pub struct Tunneled {
    /// First side to second.
    pub forth: Moved,
    /// Second side to first.
    pub back: Moved,
    pub end: io::Result<()>,
}

/// Joins two connections (after a protocol upgrade, or a TLS connection
/// passed through), first delivering bytes each side already had
/// buffered, then with the connections' engine: splice where it is on and
/// both are TCP sockets, else a userspace copy.
pub async fn tunnel<A: Transport, B: Transport>(
    a: BufStream<A>,
    b: BufStream<B>,
    idle: Duration,
) -> Tunneled {
    let (pipe_size, linked) = (a.pipe_size, a.linked);
    let (mut a, a_rest) = a.into_parts();
    let (mut b, b_rest) = b.into_parts();
    let mut t = Tunneled {
        forth: Moved::default(),
        back: Moved::default(),
        end: Ok(()),
    };
    if let Err(e) = b.write_all(&a_rest).await {
        t.end = Err(e);
        return t;
    }
    t.forth.copied = a_rest.len() as u64;
    if let Err(e) = a.write_all(&b_rest).await {
        t.end = Err(e);
        return t;
    }
    t.back.copied = b_rest.len() as u64;
    // kTLS sockets copy: a tunnel's records that are not data would stop
    // the splice in either direction.
    let plain = a.kernel_tls().is_none() && b.kernel_tls().is_none();
    let copied = match (pipe_size, a.tcp(), b.tcp()) {
        (Some(size), Some(ta), Some(tb)) if plain => {
            let (forth, back, end) = splice_tunnel(ta, tb, size, idle).await;
            (t.forth.spliced, t.back.spliced, t.end) = (forth, back, end);
            return t;
        }
        _ if linked => tokio::io::copy_bidirectional(&mut LinkedStream(a), &mut b).await,
        _ => tokio::io::copy_bidirectional(&mut a, &mut b).await,
    };
    match copied {
        Ok((forth, back)) => {
            t.forth.copied += forth;
            t.back.copied += back;
        }
        Err(e) => t.end = Err(e),
    }
    t
}

#[cfg(test)]
mod tests;
