//! The smuggling corpus (tests/corpus/, written by tests/tools/gen_corpus.py)
//! and what running it through a real [`Harness`] proxy on loopback shows:
//! the responses the client got, and every request a [`RecordingOrigin`]
//! read from the bytes the proxy forwarded.
//!
//! The recording origin is the judge of what "reached the origin": it reads
//! the upstream byte stream as a strict RFC 9112 server would (CRLF only,
//! exactly one Content-Length or `Transfer-Encoding: chunked`), so a request
//! smuggled past the proxy shows up as a request here.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::Deserialize;

use super::harness::Harness;
use super::origin::lock;

/// The corpus policy: any method on `/allowed.*` for any host, on
/// `/hostonly.*` only for host `good.test`; everything else is denied.
pub const POLICY_YAML: &str = r#"proxy: { listen: "127.0.0.1:15001" }
policies:
  - name: corpus
    cgroup: /sockwarden-corpus-test
    egress:
      - to: ["127.0.0.0/8"]
        http:
          - method: "[A-Z]+"
            path: "/allowed.*"
          - method: "[A-Z]+"
            path: "/hostonly.*"
            host: "good\\.test(:[0-9]+)?"
"#;

/// How long the client waits, after it has every response it expects, for
/// one more (which would be a failure) before it stops reading.
const QUIET: Duration = Duration::from_millis(300);
/// Upper bound on one vector's exchange.
const VECTOR_DEADLINE: Duration = Duration::from_secs(10);
/// Largest head or body the recording origin reads.
const ORIGIN_MAX: usize = 1 << 20;

#[derive(Debug, Deserialize)]
pub struct Manifest {
    pub requests: Vec<RequestVector>,
    pub responses: Vec<ResponseVector>,
}

/// What the origin must receive for one forwarded request.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct Forwarded {
    pub method: String,
    pub target: String,
    pub headers: Vec<(String, String)>,
    /// The exact bytes after the head (chunked framing included), as latin-1.
    pub body: String,
}

/// One request the proxy answers.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Expect {
    Forward(Forwarded),
    Reject(u16),
}

#[derive(Debug, Deserialize)]
pub struct RequestVector {
    pub id: String,
    pub file: String,
    pub class: String,
    pub rfc: String,
    pub source: String,
    pub expect: Vec<Expect>,
    pub max_forwarded: usize,
    /// Why h11's reading may differ (a documented choice).
    #[serde(default)]
    pub differential: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct ResponseExpect {
    pub status: u16,
    pub body: String,
    /// Fields the client must get (name case-insensitive, exact value).
    pub headers: Vec<(String, String)>,
    pub absent: Vec<String>,
    /// Whether the upstream connection carries the next request (None:
    /// either is right).
    pub reused: Option<bool>,
}

#[derive(Debug, Deserialize)]
pub struct ResponseVector {
    pub id: String,
    pub file: String,
    pub class: String,
    pub rfc: String,
    pub source: String,
    pub method: String,
    /// Extra request fields (CRLF-terminated lines) the client sends.
    pub request_headers: String,
    pub expect: ResponseExpect,
}

/// tests/corpus.
pub fn corpus_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/corpus")
}

/// The manifest, parsed; panics if it is missing or malformed.
pub fn manifest() -> Manifest {
    let path = corpus_dir().join("manifest.json");
    let text =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("parse {}: {e}", path.display()))
}

/// The raw bytes of a vector file (relative to tests/corpus).
pub fn vector_bytes(file: &str) -> Vec<u8> {
    let path = corpus_dir().join(file);
    std::fs::read(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// Bytes as latin-1 text (one char per byte), the corpus's body encoding.
pub fn latin1(bytes: &[u8]) -> String {
    bytes.iter().map(|&b| char::from(b)).collect()
}

// ---------------------------------------------------------------------------
// The recording origin.

/// A request the recording origin read from the proxy.
#[derive(Debug, Clone)]
pub struct Seen {
    /// Index of the upstream connection it came on (from 0).
    pub conn: usize,
    pub method: String,
    pub target: String,
    /// Fields in order, names as received, values as latin-1.
    pub headers: Vec<(String, String)>,
    /// The bytes after the head as received (chunked framing included).
    pub body: Vec<u8>,
    /// The whole request arrived; false: the connection ended inside it.
    pub complete: bool,
}

impl Seen {
    /// The first field named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        super::origin::find_header(&self.headers, name)
    }

    /// Method, target, fields sorted by lowercased name (Connection left
    /// out), body: the comparable form of [`Forwarded`].
    pub fn normalized(&self) -> Forwarded {
        normalize(&Forwarded {
            method: self.method.clone(),
            target: self.target.clone(),
            headers: self.headers.clone(),
            body: latin1(&self.body),
        })
    }
}

/// Field names lowercased, fields sorted by name (stable: same-name order
/// kept), Connection fields left out.
pub fn normalize(f: &Forwarded) -> Forwarded {
    let mut headers: Vec<(String, String)> = f
        .headers
        .iter()
        .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
        .filter(|(k, _)| k != "connection")
        .collect();
    headers.sort_by(|a, b| a.0.cmp(&b.0));
    Forwarded {
        headers,
        ..f.clone()
    }
}

/// What the origin answers: to every request (Record) a `200` with an empty
/// body, or (Raw) these bytes as they are.
#[derive(Clone)]
pub enum Answer {
    Record,
    Raw(Arc<Vec<u8>>),
}

#[derive(Default)]
struct RecShared {
    stop: AtomicBool,
    next_conn: AtomicUsize,
    seen: Mutex<Vec<Seen>>,
    errors: Mutex<Vec<String>>,
    conns: Mutex<Vec<(TcpStream, JoinHandle<()>)>>,
}

/// A loopback origin that records every request it reads.
pub struct RecordingOrigin {
    addr: SocketAddr,
    shared: Arc<RecShared>,
    accept: Option<JoinHandle<()>>,
}

impl RecordingOrigin {
    pub fn start(answer: Answer) -> RecordingOrigin {
        let listener = TcpListener::bind("127.0.0.1:0").expect("recording origin: bind");
        listener
            .set_nonblocking(true)
            .expect("recording origin: nonblocking");
        let addr = listener.local_addr().expect("recording origin: local_addr");
        let shared = Arc::new(RecShared::default());
        let sh = shared.clone();
        let accept = std::thread::spawn(move || {
            while !sh.stop.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((s, _)) => {
                        let conn = sh.next_conn.fetch_add(1, Ordering::Relaxed);
                        let Ok(handle) = s.try_clone() else { continue };
                        let sh2 = sh.clone();
                        let answer = answer.clone();
                        let t = std::thread::spawn(move || serve(s, conn, answer, sh2));
                        lock(&sh.conns).push((handle, t));
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(5))
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        RecordingOrigin {
            addr,
            shared,
            accept: Some(accept),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting, closes every connection, joins every thread, and
    /// returns what was read (requests, and framing errors in what the
    /// proxy sent).
    pub fn finish(mut self) -> (Vec<Seen>, Vec<String>, usize) {
        self.stop();
        let seen = std::mem::take(&mut *lock(&self.shared.seen));
        let errors = std::mem::take(&mut *lock(&self.shared.errors));
        (seen, errors, self.shared.next_conn.load(Ordering::Relaxed))
    }

    fn stop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        if let Some(a) = self.accept.take() {
            let _ = a.join();
        }
        let conns = std::mem::take(&mut *lock(&self.shared.conns));
        for (s, _) in &conns {
            let _ = s.shutdown(Shutdown::Both);
        }
        for (_, t) in conns {
            let _ = t.join();
        }
    }
}

impl Drop for RecordingOrigin {
    fn drop(&mut self) {
        self.stop();
    }
}

/// One connection of the recording origin.
fn serve(s: TcpStream, conn: usize, answer: Answer, sh: Arc<RecShared>) {
    let timeout = super::patience(Duration::from_secs(5));
    let _ = s.set_read_timeout(Some(timeout));
    let _ = s.set_write_timeout(Some(timeout));
    let Ok(mut w) = s.try_clone() else { return };
    let mut r = BufReader::new(s);
    loop {
        let mut seen = Seen {
            conn,
            method: String::new(),
            target: String::new(),
            headers: Vec::new(),
            body: Vec::new(),
            complete: false,
        };
        match read_request(&mut r, &mut seen) {
            Ok(false) => return,
            Ok(true) => {
                seen.complete = true;
                lock(&sh.seen).push(seen);
            }
            Err(e) => {
                if !seen.method.is_empty() {
                    lock(&sh.seen).push(seen);
                }
                if e.kind() == io::ErrorKind::InvalidData {
                    lock(&sh.errors).push(format!("connection {conn}: {e}"));
                }
                return;
            }
        }
        let out: &[u8] = match &answer {
            Answer::Record => b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n",
            Answer::Raw(bytes) => bytes,
        };
        if w.write_all(out).is_err() {
            return;
        }
    }
}

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

/// One CRLF-terminated line (without its CRLF); a bare CR or LF is invalid.
fn read_line<R: BufRead>(r: &mut R, max: usize) -> io::Result<Vec<u8>> {
    let mut line = Vec::new();
    r.take(max as u64 + 2).read_until(b'\n', &mut line)?;
    if !line.ends_with(b"\n") {
        return Err(if line.len() > max {
            invalid(format!("line longer than {max}"))
        } else {
            io::ErrorKind::UnexpectedEof.into()
        });
    }
    line.pop();
    if line.pop() != Some(b'\r') {
        return Err(invalid("bare LF line ending".into()));
    }
    if line.contains(&b'\r') {
        return Err(invalid("bare CR".into()));
    }
    Ok(line)
}

/// Reads one request into `seen`. Ok(false): clean EOF before any byte.
fn read_request<R: BufRead>(r: &mut R, seen: &mut Seen) -> io::Result<bool> {
    if r.fill_buf()?.is_empty() {
        return Ok(false);
    }
    let mut head = Vec::new();
    loop {
        let line = read_line(r, ORIGIN_MAX)?;
        let end = line.is_empty();
        head.extend_from_slice(&line);
        head.extend_from_slice(b"\r\n");
        if end {
            break;
        }
        if head.len() > ORIGIN_MAX {
            return Err(invalid("head too large".into()));
        }
    }
    let mut storage = [httparse::EMPTY_HEADER; 256];
    let mut req = httparse::Request::new(&mut storage);
    match req.parse(&head) {
        Ok(httparse::Status::Complete(_)) => {}
        other => return Err(invalid(format!("unparseable forwarded head {other:?}"))),
    }
    seen.method = req.method.unwrap_or("").to_string();
    seen.target = req.path.unwrap_or("").to_string();
    seen.headers = req
        .headers
        .iter()
        .map(|h| (h.name.to_string(), latin1(h.value)))
        .collect();
    let te: Vec<&str> = named(&seen.headers, "transfer-encoding");
    let cl: Vec<&str> = named(&seen.headers, "content-length");
    if !te.is_empty() {
        if te != ["chunked"] || !cl.is_empty() {
            return Err(invalid(format!(
                "ambiguous framing forwarded: TE {te:?} CL {cl:?}"
            )));
        }
        read_chunked_wire(r, &mut seen.body)?;
    } else if !cl.is_empty() {
        let n = match cl.as_slice() {
            [one] if !one.is_empty() && one.bytes().all(|b| b.is_ascii_digit()) => {
                one.parse::<usize>().map_err(|e| invalid(e.to_string()))?
            }
            _ => {
                return Err(invalid(format!(
                    "ambiguous Content-Length forwarded: {cl:?}"
                )))
            }
        };
        if n > ORIGIN_MAX {
            return Err(invalid("body too large".into()));
        }
        let mut body = vec![0; n];
        let got = read_up_to(r, &mut body)?;
        seen.body = body[..got].to_vec();
        if got < n {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
    }
    Ok(true)
}

fn named<'a>(headers: &'a [(String, String)], name: &str) -> Vec<&'a str> {
    headers
        .iter()
        .filter(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
        .collect()
}

/// Reads until `buf` is full or EOF; returns how much was read.
fn read_up_to<R: Read>(r: &mut R, buf: &mut [u8]) -> io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..])? {
            0 => break,
            n => got += n,
        }
    }
    Ok(got)
}

/// Reads a chunked body as RFC 9112 7.1 allows (extensions skipped, but
/// every line CRLF-terminated), appending its wire bytes to `wire`.
fn read_chunked_wire<R: BufRead>(r: &mut R, wire: &mut Vec<u8>) -> io::Result<()> {
    loop {
        let line = read_line(r, 8192)?;
        wire.extend_from_slice(&line);
        wire.extend_from_slice(b"\r\n");
        let digits: Vec<u8> = line
            .iter()
            .copied()
            .take_while(u8::is_ascii_hexdigit)
            .collect();
        let size = std::str::from_utf8(&digits)
            .ok()
            .and_then(|d| u64::from_str_radix(d, 16).ok())
            .ok_or_else(|| invalid(format!("bad chunk line {:?}", latin1(&line))))?;
        if size == 0 {
            loop {
                let t = read_line(r, 8192)?;
                wire.extend_from_slice(&t);
                wire.extend_from_slice(b"\r\n");
                if t.is_empty() {
                    return Ok(());
                }
            }
        }
        if wire.len() as u64 + size > ORIGIN_MAX as u64 {
            return Err(invalid("body too large".into()));
        }
        let mut data = vec![0; size as usize + 2];
        let got = read_up_to(r, &mut data)?;
        wire.extend_from_slice(&data[..got]);
        if got < data.len() {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        if !data.ends_with(b"\r\n") {
            return Err(invalid("chunk data not followed by CRLF".into()));
        }
    }
}

// ---------------------------------------------------------------------------
// The client side.

/// A response the client read.
#[derive(Debug, Clone)]
pub struct ClientResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    /// The exact bytes after the head.
    pub body: Vec<u8>,
}

impl ClientResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        super::origin::find_header(&self.headers, name)
    }

    /// A response the proxy wrote itself (an error or a policy denial).
    pub fn is_local(&self) -> bool {
        self.header("sockwarden-error").is_some() || self.header("sockwarden-denied").is_some()
    }
}

/// Parses the responses in `bytes` (interim 1xx other than 101 skipped).
/// `head_request`: the first response answers a HEAD. Returns the complete
/// responses and the bytes left over (an incomplete response, or garbage).
pub fn parse_responses(mut bytes: &[u8], head_request: bool) -> (Vec<ClientResponse>, Vec<u8>) {
    let mut out = Vec::new();
    loop {
        let mut storage = [httparse::EMPTY_HEADER; 128];
        let mut resp = httparse::Response::new(&mut storage);
        let n = match resp.parse(bytes) {
            Ok(httparse::Status::Complete(n)) => n,
            _ => return (out, bytes.to_vec()),
        };
        let status = resp.code.unwrap_or(0);
        let headers: Vec<(String, String)> = resp
            .headers
            .iter()
            .map(|h| (h.name.to_string(), latin1(h.value)))
            .collect();
        let rest = &bytes[n..];
        if (100..200).contains(&status) && status != 101 {
            bytes = rest;
            continue;
        }
        let no_body =
            (head_request && out.is_empty()) || status == 101 || status == 204 || status == 304;
        let te = named(&headers, "transfer-encoding");
        let cl = named(&headers, "content-length");
        let body_len = if no_body {
            Some(0)
        } else if te.last().is_some_and(|t| t.eq_ignore_ascii_case("chunked")) {
            chunked_wire_len(rest)
        } else if !te.is_empty() {
            Some(rest.len())
        } else if let [one] = cl.as_slice() {
            one.parse::<usize>().ok().filter(|&l| l <= rest.len())
        } else {
            Some(rest.len())
        };
        let Some(len) = body_len else {
            return (out, bytes.to_vec());
        };
        out.push(ClientResponse {
            status,
            headers,
            body: rest[..len].to_vec(),
        });
        bytes = &rest[len..];
        if bytes.is_empty() {
            return (out, Vec::new());
        }
    }
}

/// The length of the complete chunked body at the start of `b`, if complete.
fn chunked_wire_len(b: &[u8]) -> Option<usize> {
    let mut r = io::Cursor::new(b);
    let mut wire = Vec::new();
    read_chunked_wire(&mut r, &mut wire).ok()?;
    Some(wire.len())
}

/// Writes `bytes` to `addr` and reads until the peer closes, or until
/// `want` complete responses arrived and nothing more came for [`QUIET`],
/// or [`VECTOR_DEADLINE`]. Returns everything read and whether the peer
/// closed.
pub fn exchange(
    addr: SocketAddr,
    bytes: &[u8],
    want: usize,
    head_request: bool,
) -> (Vec<u8>, bool) {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect proxy");
    s.set_read_timeout(Some(Duration::from_millis(50)))
        .expect("read timeout");
    s.set_write_timeout(Some(Duration::from_secs(5)))
        .expect("write timeout");
    // The proxy may close before reading everything (a rejection): a
    // failed write is part of the outcome, not an error of the test.
    let _ = s.write_all(bytes);
    let deadline = Instant::now() + super::patience(VECTOR_DEADLINE);
    let mut got = Vec::new();
    let mut last = Instant::now();
    let mut buf = [0u8; 16384];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return (got, true),
            Ok(n) => {
                got.extend_from_slice(&buf[..n]);
                last = Instant::now();
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                if parse_responses(&got, head_request).0.len() >= want && last.elapsed() >= QUIET {
                    return (got, false);
                }
            }
            // A reset after a rejection: the proxy closed with unread input.
            Err(_) => return (got, true),
        }
        if Instant::now() >= deadline {
            return (got, false);
        }
    }
}

/// What one request vector did.
#[derive(Debug)]
pub struct Observation {
    pub responses: Vec<ClientResponse>,
    /// Bytes after the last complete response.
    pub leftover: Vec<u8>,
    pub closed: bool,
    /// Requests the origin read (complete or not), in order.
    pub seen: Vec<Seen>,
    /// Framing errors in what the proxy forwarded.
    pub origin_errors: Vec<String>,
}

impl Observation {
    /// The complete requests the origin read.
    pub fn forwarded(&self) -> Vec<&Seen> {
        self.seen.iter().filter(|s| s.complete).collect()
    }

    /// Whether the proxy ended the exchange with a rejection of its own
    /// (other than a policy denial).
    pub fn rejected(&self) -> bool {
        self.responses.last().is_some_and(|r| {
            r.is_local() && r.header("sockwarden-denied").is_none() && r.status != 403
        })
    }
}

/// Runs `bytes` through a fresh proxy (splice engine when `splice`, else
/// copy) in front of a fresh recording origin.
pub fn run_request(bytes: &[u8], want: usize, splice: bool) -> Observation {
    let origin = RecordingOrigin::start(Answer::Record);
    let proxy = Harness::with_yaml(Some(origin.addr()), POLICY_YAML, splice.then_some(1 << 20));
    let (got, closed) = exchange(proxy.addr, bytes, want, false);
    drop(proxy);
    let (seen, origin_errors, _) = origin.finish();
    let (responses, leftover) = parse_responses(&got, false);
    Observation {
        responses,
        leftover,
        closed,
        seen,
        origin_errors,
    }
}

/// The invariants that hold for every request vector, whatever its
/// expectation: no request for `/denied` (nor `/hostonly` for another host)
/// reached the origin, even incompletely; at most `max_forwarded` complete
/// requests did; everything forwarded was unambiguous. Returns the
/// violations.
pub fn invariant_violations(obs: &Observation, max_forwarded: usize) -> Vec<String> {
    let mut v = Vec::new();
    for s in &obs.seen {
        let path = s.target.split('?').next().unwrap_or("");
        if path.starts_with("/denied") || !path.starts_with('/') {
            v.push(format!("origin read a request for {:?}", s.target));
        }
        if path.starts_with("/hostonly")
            && !s
                .header("host")
                .is_some_and(|h| h == "good.test" || h.starts_with("good.test:"))
        {
            v.push(format!(
                "origin read /hostonly for host {:?}",
                s.header("host")
            ));
        }
    }
    let n = obs.forwarded().len();
    if n > max_forwarded {
        v.push(format!(
            "origin read {n} complete requests, the client sent {max_forwarded} allowed ones"
        ));
    }
    v.extend(obs.origin_errors.iter().map(|e| format!("origin: {e}")));
    v
}
