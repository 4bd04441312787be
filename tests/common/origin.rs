//! A small HTTP/1.1 origin server for tests (std threads, one thread per
//! connection) and a minimal HTTP/1.1 response reader for test clients.
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
//! All sockets have 5 s read and write timeouts; the accept loop polls a
//! non-blocking listener every 20 ms and stops when the [`Origin`] is
//! dropped, which also shuts down and joins all connection threads.

use std::collections::HashSet;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{IpAddr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::netns::in_netns;

/// Read and write timeout of every socket here, stretched by [`super::patience`]: an idle keep-alive
/// connection is closed after this long, which tests that count connections
/// must not hit on a slow (emulated) machine.
pub fn io_timeout() -> Duration {
    super::patience(Duration::from_secs(5))
}

/// Largest `/data/<n>` body served.
pub const MAX_DATA: usize = 256 << 20;
/// Largest request head accepted.
const MAX_HEAD: usize = 64 << 10;
/// Largest request body accepted (read and counted or echoed).
const MAX_BODY: u64 = 256 << 20;
/// Most connection threads alive at once; further connections are closed.
const MAX_LIVE_CONNS: usize = 512;
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
struct Shared {
    shutdown: AtomicBool,
    requests: AtomicU64,
    /// Body bytes of large Content-Length responses accepted by sockets.
    body_bytes: AtomicU64,
    connections: AtomicU64,
    peers: Mutex<Vec<SocketAddr>>,
    last_head: Mutex<Option<String>>,
    conns: Mutex<Vec<(TcpStream, JoinHandle<()>)>>,
}

/// Locks `m`, taking the data of a poisoned lock too (a test thread
/// panicked: the test fails anyway).
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A running test origin. Dropping it stops the accept loop, shuts down
/// every open connection and joins all threads.
pub struct Origin {
    addr: SocketAddr,
    shared: Arc<Shared>,
    accept: Option<JoinHandle<()>>,
}

impl Origin {
    /// Binds `addr` (port 0 allowed) inside the network namespace file
    /// `netns` (or the current one) and starts serving. Panics if the bind
    /// fails.
    pub fn start(addr: SocketAddr, netns: Option<&Path>, cfg: OriginConfig) -> Origin {
        let bind =
            move || TcpListener::bind(addr).unwrap_or_else(|e| panic!("origin: bind {addr}: {e}"));
        let listener = match netns {
            Some(ns) => in_netns(ns, bind),
            None => bind(),
        };
        listener
            .set_nonblocking(true)
            .expect("origin: set_nonblocking");
        let addr = listener.local_addr().expect("origin: local_addr");
        let shared = Arc::new(Shared::default());
        let sh = shared.clone();
        let accept = std::thread::Builder::new()
            .name(format!("origin-{addr}"))
            .spawn(move || accept_loop(listener, cfg, sh))
            .expect("origin: spawn accept thread");
        Origin {
            addr,
            shared,
            accept: Some(accept),
        }
    }

    /// The bound address (with the real port).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Requests answered so far (counted just before each response is
    /// written), over all connections.
    pub fn requests(&self) -> u64 {
        self.shared.requests.load(Ordering::SeqCst)
    }

    /// Connections accepted so far.
    pub fn body_bytes_sent(&self) -> u64 {
        self.shared.body_bytes.load(Ordering::SeqCst)
    }

    pub fn connections(&self) -> u64 {
        self.shared.connections.load(Ordering::SeqCst)
    }

    /// Distinct peers seen, in accept order, deduplicated by IP (the first
    /// address seen for each IP is kept).
    pub fn peers(&self) -> Vec<SocketAddr> {
        lock(&self.shared.peers).clone()
    }

    /// The raw text of the last request head received (request line and
    /// header lines, including the final empty line).
    pub fn last_request_head(&self) -> Option<String> {
        lock(&self.shared.last_head).clone()
    }
}

impl Drop for Origin {
    fn drop(&mut self) {
        self.shared.shutdown.store(true, Ordering::SeqCst);
        if let Some(h) = self.accept.take() {
            let _ = h.join();
        }
        let conns = std::mem::take(&mut *lock(&self.shared.conns));
        for (s, _) in &conns {
            let _ = s.shutdown(Shutdown::Both);
        }
        for (_, h) in conns {
            let _ = h.join();
        }
    }
}

fn accept_loop(listener: TcpListener, cfg: OriginConfig, shared: Arc<Shared>) {
    let mut seen_ips = HashSet::<IpAddr>::new();
    while !shared.shutdown.load(Ordering::SeqCst) {
        let (stream, peer) = match listener.accept() {
            Ok(x) => x,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => {
                // WouldBlock (nothing pending) or a transient error.
                std::thread::sleep(Duration::from_millis(20));
                continue;
            }
        };
        shared.connections.fetch_add(1, Ordering::SeqCst);
        if seen_ips.insert(peer.ip()) {
            lock(&shared.peers).push(peer);
        }
        let mut conns = lock(&shared.conns);
        conns.retain(|(_, h)| !h.is_finished());
        if conns.len() >= MAX_LIVE_CONNS {
            continue; // drops (closes) the stream
        }
        let Ok(clone) = stream.try_clone() else {
            continue;
        };
        let (cfg, sh) = (cfg.clone(), shared.clone());
        let spawned = std::thread::Builder::new()
            .name(format!("origin-conn-{peer}"))
            .spawn(move || serve_conn(stream, &cfg, &sh));
        if let Ok(h) = spawned {
            conns.push((clone, h));
        }
    }
}

/// A parsed request head.
struct Request {
    method: String,
    path: String,
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    minor: u8,
    headers: Vec<(String, String)>,
}

impl Request {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Whether a comma-separated header (e.g. Connection) has `token`.
    fn has_token(&self, name: &str, token: &str) -> bool {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .flat_map(|(_, v)| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    }
}

fn bad(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

/// Reads one line (up to `limit` bytes) into `buf`; Ok(false) on EOF.
fn read_line_limited<R: BufRead>(r: &mut R, buf: &mut Vec<u8>, limit: usize) -> io::Result<bool> {
    let start = buf.len();
    let n = r.by_ref().take(limit as u64).read_until(b'\n', buf)?;
    if n == 0 {
        return Ok(false);
    }
    if buf[start..].last() != Some(&b'\n') {
        return Err(bad("line too long or truncated"));
    }
    Ok(true)
}

/// Reads a message head (up to and including the empty line), skipping
/// leading empty lines. Ok(None) on a clean EOF before any byte.
fn read_head<R: BufRead>(r: &mut R) -> io::Result<Option<Vec<u8>>> {
    let mut head = Vec::new();
    loop {
        let start = head.len();
        let left = MAX_HEAD.saturating_sub(start);
        if left == 0 {
            return Err(bad("head too large"));
        }
        if !read_line_limited(r, &mut head, left)? {
            return if head.is_empty() {
                Ok(None)
            } else {
                Err(io::ErrorKind::UnexpectedEof.into())
            };
        }
        let line = &head[start..];
        if line == b"\r\n" || line == b"\n" {
            if start == 0 {
                head.clear(); // tolerate empty lines before the request
                continue;
            }
            return Ok(Some(head));
        }
    }
}

fn parse_lines(text: &str) -> (Option<&str>, Vec<(String, String)>) {
    let mut lines = text.lines().map(|l| l.trim_end_matches('\r'));
    let first = lines.next();
    let headers = lines
        .take_while(|l| !l.is_empty())
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    (first, headers)
}

fn parse_request(text: &str) -> io::Result<Request> {
    let (first, headers) = parse_lines(text);
    let mut parts = first.unwrap_or("").split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(bad("bad request line"));
    };
    let minor = match version {
        "HTTP/1.1" => 1,
        "HTTP/1.0" => 0,
        _ => return Err(bad("unsupported HTTP version")),
    };
    let path = target.split('?').next().unwrap_or("").to_string();
    Ok(Request {
        method: method.to_string(),
        path,
        minor,
        headers,
    })
}

/// Where a body goes while it is read: kept (for echo) or only counted.
enum Sink {
    Keep(Vec<u8>),
    Count(u64),
}

impl Sink {
    fn take_from<R: Read>(&mut self, r: &mut R, n: u64) -> io::Result<()> {
        let got = match self {
            Sink::Keep(v) => r.take(n).read_to_end(v)? as u64,
            Sink::Count(c) => {
                let got = io::copy(&mut r.take(n), &mut io::sink())?;
                *c += got;
                got
            }
        };
        if got != n {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        Ok(())
    }

    fn len(&self) -> u64 {
        match self {
            Sink::Keep(v) => v.len() as u64,
            Sink::Count(c) => *c,
        }
    }
}

/// Reads a chunked body into `sink` (trailers are read and dropped).
fn read_chunked<R: BufRead>(r: &mut R, sink: &mut Sink) -> io::Result<()> {
    // Bounded: every chunk is at least one byte and the total is capped.
    loop {
        let mut line = Vec::new();
        if !read_line_limited(r, &mut line, 4096)? {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        let text = String::from_utf8_lossy(&line);
        let size_txt = text.split(';').next().unwrap_or("").trim();
        let size = u64::from_str_radix(size_txt, 16).map_err(|_| bad("bad chunk size"))?;
        if size == 0 {
            // Trailer section: lines until an empty one.
            for _ in 0..1024 {
                line.clear();
                if !read_line_limited(r, &mut line, 8192)? {
                    return Err(io::ErrorKind::UnexpectedEof.into());
                }
                if line == b"\r\n" || line == b"\n" {
                    return Ok(());
                }
            }
            return Err(bad("too many trailers"));
        }
        if sink.len().saturating_add(size) > MAX_BODY {
            return Err(bad("request body too large"));
        }
        sink.take_from(r, size)?;
        line.clear();
        if !read_line_limited(r, &mut line, 2)? || (line != b"\r\n" && line != b"\n") {
            return Err(bad("missing CRLF after chunk"));
        }
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

fn reason(code: u16) -> &'static str {
    match code {
        200 => "OK",
        201 => "Created",
        204 => "No Content",
        301 => "Moved Permanently",
        302 => "Found",
        304 => "Not Modified",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        413 => "Content Too Large",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Status",
    }
}

/// Routes a request to (status, body, content type).
fn route(req: &Request, body: Sink) -> (u16, Body, &'static str) {
    let m = req.method.as_str();
    let text = |s: String| Body::Bytes(s.into_bytes());
    if let Some(n) = req.path.strip_prefix("/data/") {
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
    if req.path == "/echo" && (m == "POST" || m == "PUT") {
        let b = match body {
            Sink::Keep(v) => v,
            Sink::Count(_) => Vec::new(),
        };
        return (200, Body::Bytes(b), "application/octet-stream");
    }
    if let Some(c) = req.path.strip_prefix("/status/") {
        if m == "GET" || m == "HEAD" {
            return match c.parse::<u16>() {
                Ok(c) if (200..=599).contains(&c) => {
                    (c, text(format!("status {c}\n")), "text/plain")
                }
                _ => (400, text("bad status code\n".into()), "text/plain"),
            };
        }
    }
    (200, text(format!("ok {m} {}", req.path)), "text/plain")
}

fn write_simple_error(w: &mut TcpStream, cfg: &OriginConfig, code: u16, msg: &str) {
    let v = if cfg.http10 { "HTTP/1.0" } else { "HTTP/1.1" };
    let resp = format!(
        "{v} {code} {}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{msg}",
        reason(code),
        msg.len()
    );
    let _ = w.write_all(resp.as_bytes());
}

fn serve_conn(stream: TcpStream, cfg: &OriginConfig, shared: &Shared) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(io_timeout()));
    let _ = stream.set_write_timeout(Some(io_timeout()));
    let _ = stream.set_nodelay(true);
    let Ok(read_half) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::with_capacity(64 << 10, read_half);
    let mut w = stream;
    for k in 1..=MAX_REQS_PER_CONN {
        if shared.shutdown.load(Ordering::SeqCst) {
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
        match serve_one(&mut reader, &mut w, cfg, shared, k) {
            Ok(true) => continue,
            Ok(false) => {
                if let Some(linger) = cfg.linger_after_close {
                    std::thread::sleep(linger.min(Duration::from_secs(5)));
                }
                break;
            }
            Err(e) => {
                if e.kind() == io::ErrorKind::InvalidData {
                    write_simple_error(&mut w, cfg, 400, &format!("{e}\n"));
                }
                break;
            }
        }
    }
    let _ = w.flush();
    let _ = w.shutdown(Shutdown::Write);
    // Drain briefly so a close with unread data does not turn into a RST
    // that could destroy the response in flight (bounded: 1 s, 64 KiB).
    let _ = reader
        .get_ref()
        .set_read_timeout(Some(Duration::from_millis(1000)));
    let _ = io::copy(&mut reader.by_ref().take(64 << 10), &mut io::sink());
}

/// Serves one request; Ok(true) to keep the connection, Ok(false) to close.
fn serve_one(
    reader: &mut BufReader<TcpStream>,
    w: &mut TcpStream,
    cfg: &OriginConfig,
    shared: &Shared,
    k: u32,
) -> io::Result<bool> {
    let Some(head) = read_head(reader)? else {
        return Ok(false);
    };
    let text = String::from_utf8_lossy(&head).into_owned();
    let req = parse_request(&text)?;
    *lock(&shared.last_head) = Some(text);

    // Request body.
    let chunked_req = req
        .header("transfer-encoding")
        .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
    let content_length = if chunked_req {
        None
    } else {
        match req.header("content-length") {
            Some(v) => Some(v.parse::<u64>().map_err(|_| bad("bad Content-Length"))?),
            None => None,
        }
    };
    if content_length.unwrap_or(0) > MAX_BODY {
        return Err(bad("request body too large"));
    }
    let has_body = chunked_req || content_length.unwrap_or(0) > 0;
    if has_body && req.minor == 1 && req.has_token("expect", "100-continue") {
        w.write_all(b"HTTP/1.1 100 Continue\r\n\r\n")?;
    }
    let mut sink = if req.path == "/echo" {
        Sink::Keep(Vec::new())
    } else {
        Sink::Count(0)
    };
    if chunked_req {
        read_chunked(reader, &mut sink)?;
    } else if let Some(n) = content_length {
        sink.take_from(reader, n)?;
    }

    // Connection management.
    let client_keep = if req.minor == 1 {
        !req.has_token("connection", "close")
    } else {
        req.has_token("connection", "keep-alive")
    };
    let close = !client_keep
        || cfg.http10
        || cfg.close_delimited
        || cfg.close_after.is_some_and(|n| k >= n);

    let head_only = req.method == "HEAD";
    let (status, body, ctype) = route(&req, sink);
    let no_body_status = status == 204 || status == 304;
    let chunked = cfg.chunked && !cfg.http10 && req.minor == 1 && !cfg.close_delimited;

    let version = if cfg.http10 { "HTTP/1.0" } else { "HTTP/1.1" };
    let mut h = format!(
        "{version} {status} {}\r\nServer: sockwarden-test-origin\r\nx-origin-request-count: {k}\r\n",
        reason(status)
    );
    if !no_body_status {
        h.push_str(&format!("Content-Type: {ctype}\r\n"));
        if chunked {
            h.push_str("Transfer-Encoding: chunked\r\n");
        } else if !cfg.close_delimited {
            h.push_str(&format!("Content-Length: {}\r\n", body.len()));
        }
    }
    if close {
        if !cfg.http10 {
            h.push_str("Connection: close\r\n");
        }
    } else if req.minor == 0 {
        h.push_str("Connection: keep-alive\r\n");
    }
    h.push_str("\r\n");

    shared.requests.fetch_add(1, Ordering::SeqCst);
    if head_only || no_body_status {
        w.write_all(h.as_bytes())?;
    } else if chunked {
        w.write_all(h.as_bytes())?;
        let n = body.len();
        let first = n / 2;
        for (start, len) in [(0, first), (first, n - first)] {
            if len > 0 {
                w.write_all(format!("{len:x}\r\n").as_bytes())?;
                body.write_range(w, start, len)?;
                w.write_all(b"\r\n")?;
            }
        }
        w.write_all(b"0\r\n\r\n")?;
    } else {
        let n = body.len();
        if n <= 16 << 10 {
            let mut all = h.into_bytes();
            body.write_range(&mut all, 0, n)?;
            w.write_all(&all)?;
        } else {
            w.write_all(h.as_bytes())?;
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

// ---------------------------------------------------------------------------
// Client side, for tests.

/// A response read by [`read_response`].
#[derive(Debug, Clone)]
pub struct Response {
    /// "HTTP/1.1" or "HTTP/1.0".
    pub version: String,
    pub status: u16,
    /// Header fields in order, names as received.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// The raw head text (status line and headers).
    pub head: String,
}

/// The value of the first field named `name` (case-insensitive).
pub fn find_header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

impl Response {
    /// The first header named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        find_header(&self.headers, name)
    }

    /// Whether the server announced `Connection: close`.
    pub fn connection_close(&self) -> bool {
        self.header("connection")
            .is_some_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case("close")))
    }
}

/// Reads one response from `r`. `head_request` tells that it answers a
/// HEAD (no body). 1xx, 204 and 304 have no body; otherwise the body is
/// chunked, Content-Length or read to EOF (at most 256 MiB). Interim 1xx
/// responses are returned as they are: call again for the final one.
pub fn read_response<R: BufRead>(r: &mut R, head_request: bool) -> io::Result<Response> {
    let head = read_head(r)?.ok_or(io::ErrorKind::UnexpectedEof)?;
    let text = String::from_utf8_lossy(&head).into_owned();
    let (first, headers) = parse_lines(&text);
    let first = first.unwrap_or("");
    let mut parts = first.splitn(3, ' ');
    let version = parts.next().unwrap_or("").to_string();
    let status: u16 = parts
        .next()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad(format!("bad status line {first:?}")))?;
    let mut resp = Response {
        version,
        status,
        headers,
        body: Vec::new(),
        head: text.clone(),
    };
    if head_request || (100..200).contains(&status) || status == 204 || status == 304 {
        return Ok(resp);
    }
    let mut sink = Sink::Keep(Vec::new());
    if resp
        .header("transfer-encoding")
        .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"))
    {
        read_chunked(r, &mut sink)?;
    } else if let Some(cl) = resp.header("content-length") {
        let n: u64 = cl.parse().map_err(|_| bad("bad Content-Length"))?;
        if n > MAX_BODY {
            return Err(bad("response body too large"));
        }
        sink.take_from(r, n)?;
    } else if let Sink::Keep(v) = &mut sink {
        r.take(MAX_BODY).read_to_end(v)?;
    }
    if let Sink::Keep(v) = sink {
        resp.body = v;
    }
    Ok(resp)
}

/// Connects with a 5 s connect timeout and 5 s read/write timeouts.
pub fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect_timeout(&addr, io_timeout())
        .unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    s.set_read_timeout(Some(io_timeout())).expect("timeout");
    s.set_write_timeout(Some(io_timeout())).expect("timeout");
    s
}

/// A one-shot `GET path` with `Connection: close`; panics on I/O errors.
pub fn get(addr: SocketAddr, path: &str) -> Response {
    let mut s = connect(addr);
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).expect("write request");
    let mut r = BufReader::new(s);
    read_response(&mut r, false).unwrap_or_else(|e| panic!("GET {path} from {addr}: {e}"))
}
