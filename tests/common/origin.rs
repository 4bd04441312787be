//! A small HTTP/1.1 origin server for tests (std threads, one thread per
//! connection), reading and writing through [`super::h1`].
//!
//! Routes:
//! * `GET|HEAD /data/<n>` (n <= 256 MiB): n bytes of [`pattern`].
//! * `POST|PUT /echo`: the request body as the response body.
//! * `GET /status/<code>`: that status (200..=599) with a short body.
//! * anything else: 200 with body `ok <method> <path>`.
//!
//! Every response carries `x-origin-request-count: <k>`, the index of the
//! request on its connection (from 1). Request bodies (Content-Length or
//! chunked) are read and, except for `/echo`, discarded; `Expect:
//! 100-continue` gets an interim `100 Continue` first.
//!
//! Sockets have [`super::io_timeout`] read and write timeouts; dropping the
//! [`Origin`] stops it (see [`Server`]).

use std::collections::HashSet;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{IpAddr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::h1::{self, Framing, Head, HeadWriter, RequestLine};
use super::tls::TlsHalf;
use super::{io_timeout, lock, Server};

/// Largest `/data/<n>` body served.
const MAX_DATA: usize = 256 << 20;
/// Largest request body accepted (read and counted or echoed).
const MAX_BODY: u64 = 256 << 20;
/// Most requests served on one connection.
const MAX_REQS_PER_CONN: u32 = 1_000_000;

/// The body pattern of `/data/<n>`: byte i is `(i % 251) as u8`.
pub fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i % 251) as u8).collect()
}

/// How the origin frames and ends its responses. All off by default:
/// HTTP/1.1, Content-Length, keep-alive.
#[derive(Debug, Clone, Default)]
pub struct OriginConfig {
    /// After the Nth request on a connection, send that response with
    /// `Connection: close`, then close.
    pub close_after: Option<u32>,
    /// Send bodies with `Transfer-Encoding: chunked`, in 2 chunks (only to
    /// HTTP/1.1 clients, and not with `http10`).
    pub chunked: bool,
    /// No Content-Length: `Connection: close` and close after the body.
    pub close_delimited: bool,
    /// Answer with "HTTP/1.0" status lines, no keep-alive, and close.
    pub http10: bool,
    /// After deciding to close (e.g. `close_after`), keep the connection
    /// open this long before closing: the peer then closes first.
    pub linger_after_close: Option<Duration>,
    /// A server-side keep-alive timeout that fires just as the next request
    /// arrives: a request whose first byte comes after the connection was
    /// idle this long is not answered; the connection is closed instead
    /// (the idle-close race, made deterministic).
    pub idle_timeout: Option<Duration>,
}

#[derive(Default)]
pub(crate) struct Shared {
    requests: AtomicU64,
    /// Body bytes of large Content-Length responses accepted by sockets.
    body_bytes: AtomicU64,
    /// The peer of every connection served, in order.
    accepted: Mutex<Vec<SocketAddr>>,
}

/// A running test origin; dropping it stops it.
pub struct Origin {
    server: Server,
    shared: Arc<Shared>,
}

impl Origin {
    /// Serves on `listener` (bound by the caller, in whatever namespace).
    pub fn serve(listener: TcpListener, cfg: OriginConfig) -> Origin {
        let shared = Arc::new(Shared::default());
        let sh = shared.clone();
        let server = Server::start(listener, move |stream, stop| {
            if let Ok(peer) = stream.peer_addr() {
                lock(&sh.accepted).push(peer);
            }
            serve_conn(stream, &cfg, &sh, stop);
        });
        Origin { server, shared }
    }

    /// Serves HTTPS on `listener` with `tls` (see [`super::tls::TestCa`]).
    pub fn serve_tls(
        listener: TcpListener,
        cfg: OriginConfig,
        tls: Arc<rustls::ServerConfig>,
    ) -> Origin {
        let shared = Arc::new(Shared::default());
        let sh = shared.clone();
        let server = Server::start(listener, move |stream, stop| {
            if let Ok(peer) = stream.peer_addr() {
                lock(&sh.accepted).push(peer);
            }
            let _ = stream.set_read_timeout(Some(io_timeout()));
            let _ = stream.set_write_timeout(Some(io_timeout()));
            let _ = stream.set_nodelay(true);
            let Ok(half) = TlsHalf::new(tls.clone(), stream) else {
                return;
            };
            let mut reader = BufReader::with_capacity(64 << 10, half.clone());
            serve_requests(&mut reader, &mut half.clone(), &cfg, &sh, stop);
            half.close();
        });
        Origin { server, shared }
    }

    /// A TLS origin that answers each connection's first request with
    /// `pattern(2 * half)`, sending a TLS 1.3 KeyUpdate after the first
    /// `half` body bytes, then closes.
    pub fn serve_key_update(
        listener: TcpListener,
        tls: Arc<rustls::ServerConfig>,
        half: usize,
    ) -> Origin {
        let shared = Arc::new(Shared::default());
        let sh = shared.clone();
        let server = Server::start(listener, move |stream, _stop| {
            let _ = stream.set_read_timeout(Some(io_timeout()));
            let _ = stream.set_write_timeout(Some(io_timeout()));
            let Ok(half_tls) = TlsHalf::new(tls.clone(), stream) else {
                return;
            };
            let mut reader = BufReader::new(half_tls.clone());
            let mut line = String::new();
            // The head, line by line (bounded by the read timeout and size).
            while reader.read_line(&mut line).is_ok_and(|n| n > 2) && line.len() < 16 << 10 {}
            sh.requests.fetch_add(1, Ordering::SeqCst);
            let body = pattern(2 * half);
            let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len());
            let mut w = half_tls.clone();
            let sent = w.write_all(head.as_bytes()).is_ok()
                && w.write_all(&body[..half]).is_ok()
                && half_tls.key_update().is_ok()
                && w.write_all(&body[half..]).is_ok();
            if sent {
                half_tls.close();
            }
        });
        Origin { server, shared }
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.server.addr()
    }

    /// Requests answered so far (counted just before each response is
    /// written), over all connections.
    pub fn requests(&self) -> u64 {
        self.shared.requests.load(Ordering::SeqCst)
    }

    /// Body bytes of large (over 16 KiB) Content-Length responses accepted
    /// by the sockets so far: how far ahead of a slow client the origin got.
    pub fn body_bytes_sent(&self) -> u64 {
        self.shared.body_bytes.load(Ordering::SeqCst)
    }

    /// Connections served so far.
    pub fn connections(&self) -> u64 {
        self.peer_list().len() as u64
    }

    /// The peer of every connection served, in order.
    pub fn peer_list(&self) -> Vec<SocketAddr> {
        lock(&self.shared.accepted).clone()
    }

    /// Distinct peers seen, in order, deduplicated by IP (the first
    /// address seen for each IP is kept).
    pub fn peers(&self) -> Vec<SocketAddr> {
        let mut seen = HashSet::<IpAddr>::new();
        lock(&self.shared.accepted)
            .iter()
            .filter(|p| seen.insert(p.ip()))
            .copied()
            .collect()
    }
}

/// What a response body is.
enum Body {
    Bytes(Vec<u8>),
    /// `pattern(n)`, generated while writing.
    Pattern(usize),
}

impl Body {
    fn len(&self) -> usize {
        match self {
            Body::Bytes(b) => b.len(),
            Body::Pattern(n) => *n,
        }
    }

    /// Writes bytes `start..start+len` of the body.
    fn write_range<W: Write>(&self, w: &mut W, start: usize, len: usize) -> io::Result<()> {
        match self {
            Body::Bytes(b) => w.write_all(&b[start..start + len]),
            Body::Pattern(_) => write_pattern(w, start, len),
        }
    }
}

/// Counts body bytes as they are accepted by the socket, so a test can see
/// how far ahead of a slow client the origin got.
struct Counting<'a, W: Write> {
    inner: &'a mut W,
    sent: &'a AtomicU64,
}

impl<W: Write> Write for Counting<'_, W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.sent.fetch_add(n as u64, Ordering::SeqCst);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

fn write_pattern<W: Write>(w: &mut W, start: usize, len: usize) -> io::Result<()> {
    const STEP: usize = 251 * 261; // a multiple of 251, so blocks line up
    static BLOCK: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    let block = BLOCK.get_or_init(|| pattern(STEP + 251));
    let (mut pos, end) = (start, start + len);
    while pos < end {
        let off = pos % 251;
        let m = (end - pos).min(STEP);
        w.write_all(&block[off..off + m])?;
        pos += m;
    }
    Ok(())
}

/// Routes a request to (status, body, content type). `body` is the request
/// body when it was kept (for `/echo`).
fn route(req: &RequestLine, body: Vec<u8>) -> (u16, Body, &'static str) {
    let m = req.method.as_str();
    let path = req.target.split('?').next().unwrap_or("");
    let text = |s: String| Body::Bytes(s.into_bytes());
    if let Some(n) = path.strip_prefix("/data/") {
        if m == "GET" || m == "HEAD" {
            return match n.parse::<usize>() {
                Ok(n) if n <= MAX_DATA => (200, Body::Pattern(n), "application/octet-stream"),
                Ok(_) => (
                    413,
                    text(format!("at most {MAX_DATA} bytes\n")),
                    "text/plain",
                ),
                Err(_) => (400, text("bad size\n".into()), "text/plain"),
            };
        }
    }
    if path == "/echo" && (m == "POST" || m == "PUT") {
        return (200, Body::Bytes(body), "application/octet-stream");
    }
    if let Some(c) = path.strip_prefix("/status/") {
        if m == "GET" || m == "HEAD" {
            return match c.parse::<u16>() {
                Ok(c) if (200..=599).contains(&c) => {
                    (c, text(format!("status {c}\n")), "text/plain")
                }
                _ => (400, text("bad status code\n".into()), "text/plain"),
            };
        }
    }
    (200, text(format!("ok {m} {path}")), "text/plain")
}

fn write_simple_error<W: Write>(w: &mut W, cfg: &OriginConfig, code: u16, msg: &str) {
    let head = HeadWriter::response(u8::from(!cfg.http10), code)
        .field("Content-Type", "text/plain")
        .field("Content-Length", msg.len())
        .field("Connection", "close")
        .finish();
    let _ = w
        .write_all(&head)
        .and_then(|()| w.write_all(msg.as_bytes()));
}

fn serve_conn(stream: TcpStream, cfg: &OriginConfig, shared: &Shared, stop: &AtomicBool) {
    let _ = stream.set_read_timeout(Some(io_timeout()));
    let _ = stream.set_write_timeout(Some(io_timeout()));
    let _ = stream.set_nodelay(true);
    let Ok(read_half) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::with_capacity(64 << 10, read_half);
    let mut w = stream;
    serve_requests(&mut reader, &mut w, cfg, shared, stop);
    let _ = w.flush();
    let _ = w.shutdown(Shutdown::Write);
    // Drain briefly so a close with unread data does not turn into a RST
    // that could destroy the response in flight (bounded: 1 s, 64 KiB).
    let _ = reader
        .get_ref()
        .set_read_timeout(Some(Duration::from_millis(1000)));
    let _ = io::copy(&mut reader.by_ref().take(64 << 10), &mut io::sink());
}

/// Serves the requests of one connection, over any byte stream.
pub(crate) fn serve_requests<R: BufRead, W: Write>(
    reader: &mut R,
    w: &mut W,
    cfg: &OriginConfig,
    shared: &Shared,
    stop: &AtomicBool,
) {
    for k in 1..=MAX_REQS_PER_CONN {
        if stop.load(Ordering::SeqCst) {
            break;
        }
        if let Some(idle) = cfg.idle_timeout {
            let idle_since = Instant::now();
            if k > 1
                && matches!(reader.fill_buf(), Ok(b) if !b.is_empty())
                && idle_since.elapsed() >= idle
            {
                break;
            }
        }
        match serve_one(reader, w, cfg, shared, k) {
            Ok(true) => continue,
            Ok(false) => {
                if let Some(linger) = cfg.linger_after_close {
                    std::thread::sleep(linger.min(Duration::from_secs(5)));
                }
                break;
            }
            Err(e) => {
                if e.kind() == io::ErrorKind::InvalidData {
                    write_simple_error(w, cfg, 400, &format!("{e}\n"));
                }
                break;
            }
        }
    }
}

/// Reads the request's body, answering `Expect: 100-continue` first; kept
/// for `/echo`, otherwise only read.
fn read_request_body<R: BufRead, W: Write>(
    r: &mut R,
    w: &mut W,
    head: &Head,
    req: &RequestLine,
) -> io::Result<Vec<u8>> {
    let framing = head.request_framing()?;
    if framing != Framing::None
        && framing != Framing::Length(0)
        && req.minor == 1
        && head.has_token("expect", "100-continue")
    {
        w.write_all(&HeadWriter::response(1, 100).finish())?;
    }
    let keep = req.target.split('?').next() == Some("/echo");
    let mut body = Vec::new();
    h1::read_body(r, framing, MAX_BODY, |d| {
        if keep {
            body.extend_from_slice(d);
        }
    })?;
    Ok(body)
}

/// Serves one request; Ok(true) to keep the connection, Ok(false) to close.
fn serve_one<R: BufRead, W: Write>(
    reader: &mut R,
    w: &mut W,
    cfg: &OriginConfig,
    shared: &Shared,
    k: u32,
) -> io::Result<bool> {
    let Some(head) = h1::read_head(reader)? else {
        return Ok(false);
    };
    let req = head.request_line()?;
    let body = read_request_body(reader, w, &head, &req)?;

    // Connection management.
    let client_keep = if req.minor == 1 {
        !head.has_token("connection", "close")
    } else {
        head.has_token("connection", "keep-alive")
    };
    let close = !client_keep
        || cfg.http10
        || cfg.close_delimited
        || cfg.close_after.is_some_and(|n| k >= n);

    let head_only = req.method == "HEAD";
    let (status, body, ctype) = route(&req, body);
    let no_body_status = status == 204 || status == 304;
    let chunked = cfg.chunked && !cfg.http10 && req.minor == 1 && !cfg.close_delimited;

    let mut h = HeadWriter::response(u8::from(!cfg.http10), status)
        .field("Server", "sockwarden-test-origin")
        .field("x-origin-request-count", k);
    if !no_body_status {
        h = h.field("Content-Type", ctype);
        if chunked {
            h = h.field("Transfer-Encoding", "chunked");
        } else if !cfg.close_delimited {
            h = h.field("Content-Length", body.len());
        }
    }
    if close {
        if !cfg.http10 {
            h = h.field("Connection", "close");
        }
    } else if req.minor == 0 {
        h = h.field("Connection", "keep-alive");
    }
    let h = h.finish();

    shared.requests.fetch_add(1, Ordering::SeqCst);
    if head_only || no_body_status {
        w.write_all(&h)?;
    } else if chunked {
        w.write_all(&h)?;
        let n = body.len();
        let first = n / 2;
        for (start, len) in [(0, first), (first, n - first)] {
            let mut chunk = Vec::with_capacity(len);
            body.write_range(&mut chunk, start, len)?;
            h1::write_chunk(w, &chunk)?;
        }
        h1::write_last_chunk(w)?;
    } else {
        let n = body.len();
        if n <= 16 << 10 {
            let mut all = h;
            body.write_range(&mut all, 0, n)?;
            w.write_all(&all)?;
        } else {
            w.write_all(&h)?;
            let mut counted = Counting {
                inner: &mut *w,
                sent: &shared.body_bytes,
            };
            body.write_range(&mut counted, 0, n)?;
        }
    }
    w.flush()?;
    Ok(!close)
}
