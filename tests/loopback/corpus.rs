//! The smuggling corpus (tests/corpus/, written by tests/tools/gen_corpus.py)
//! and what running it through a real [`Harness`] proxy on loopback shows:
//! the responses the client got, and every request a [`RecordingOrigin`]
//! read from the bytes the proxy forwarded.
//!
//! The recording origin is the judge of what "reached the origin": it reads
//! the upstream byte stream as a strict RFC 9112 server would (CRLF only,
//! exactly one Content-Length or `Transfer-Encoding: chunked`), so a request
//! smuggled past the proxy shows up as a request here.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Deserialize;

use crate::common::h1::{self, Framing, Head};
use crate::common::{io_timeout, lock, patience, Server};
use crate::harness::{loopback_listener, Harness, Recording};

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
/// Largest body the recording origin reads.
const ORIGIN_MAX: u64 = 1 << 20;

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
    pub head: Head,
    /// The bytes after the head as received (chunked framing included).
    pub body: Vec<u8>,
    /// The whole request arrived; false: the connection ended inside it.
    pub complete: bool,
}

impl Seen {
    /// Method, target, fields sorted by lowercased name (Connection left
    /// out), body: the comparable form of [`Forwarded`].
    pub fn normalized(&self) -> Forwarded {
        normalize(&Forwarded {
            method: self.method.clone(),
            target: self.target.clone(),
            headers: self.head.fields.clone(),
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
    next_conn: AtomicUsize,
    seen: Mutex<Vec<Seen>>,
    errors: Mutex<Vec<String>>,
}

/// A loopback origin that records every request it reads.
pub struct RecordingOrigin {
    server: Server,
    shared: Arc<RecShared>,
}

impl RecordingOrigin {
    pub fn start(answer: Answer) -> RecordingOrigin {
        let shared = Arc::new(RecShared::default());
        let sh = shared.clone();
        let server = Server::start(loopback_listener(), move |s, _| {
            let conn = sh.next_conn.fetch_add(1, Ordering::Relaxed);
            serve(s, conn, &answer, &sh);
        });
        RecordingOrigin { server, shared }
    }

    pub fn addr(&self) -> SocketAddr {
        self.server.addr()
    }

    /// Stops, closing every connection and joining every thread, and
    /// returns what was read: the requests, the framing errors in what the
    /// proxy sent, and how many connections came.
    pub fn finish(self) -> (Vec<Seen>, Vec<String>, usize) {
        let RecordingOrigin { server, shared } = self;
        drop(server);
        let seen = std::mem::take(&mut *lock(&shared.seen));
        let errors = std::mem::take(&mut *lock(&shared.errors));
        (seen, errors, shared.next_conn.load(Ordering::Relaxed))
    }
}

/// One connection of the recording origin.
fn serve(s: TcpStream, conn: usize, answer: &Answer, sh: &RecShared) {
    let _ = s.set_read_timeout(Some(io_timeout()));
    let _ = s.set_write_timeout(Some(io_timeout()));
    let Ok(mut w) = s.try_clone() else { return };
    let mut r = Recording::new(s);
    loop {
        let head = match h1::read_head(&mut r) {
            Ok(Some(head)) => head,
            Ok(None) => return,
            Err(e) => {
                if e.kind() == io::ErrorKind::InvalidData {
                    lock(&sh.errors).push(format!("connection {conn}: unreadable head: {e}"));
                }
                return;
            }
        };
        let (seen, result) = read_request(&mut r, conn, head);
        if let Some(seen) = seen {
            lock(&sh.seen).push(seen);
        }
        if let Err(e) = result {
            if e.kind() == io::ErrorKind::InvalidData {
                lock(&sh.errors).push(format!("connection {conn}: {e}"));
            }
            return;
        }
        let out: &[u8] = match answer {
            Answer::Record => b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n",
            Answer::Raw(bytes) => bytes,
        };
        if w.write_all(out).is_err() {
            return;
        }
    }
}

/// The rest of a request after `head`: what was seen of it (None if its
/// start line was unreadable), and whether it was read whole.
fn read_request(
    r: &mut Recording<TcpStream>,
    conn: usize,
    head: Head,
) -> (Option<Seen>, io::Result<()>) {
    let line = match head.request_line() {
        Ok(line) => line,
        Err(e) => return (None, Err(e)),
    };
    let mut seen = Seen {
        conn,
        method: line.method,
        target: line.target,
        head,
        body: Vec::new(),
        complete: false,
    };
    let start = r.consumed().len();
    let result = seen
        .head
        .request_framing()
        .and_then(|framing| h1::read_body(r, framing, ORIGIN_MAX, |_| {}));
    seen.body = r.consumed()[start..].to_vec();
    seen.complete = result.is_ok();
    (Some(seen), result)
}

// ---------------------------------------------------------------------------
// The client side.

/// A response the client read.
#[derive(Debug, Clone)]
pub struct ClientResponse {
    pub status: u16,
    pub head: Head,
    /// The exact bytes after the head.
    pub body: Vec<u8>,
}

impl ClientResponse {
    /// A response the proxy wrote itself (an error or a policy denial).
    pub fn is_local(&self) -> bool {
        self.head.field("sockwarden-error").is_some()
            || self.head.field("sockwarden-denied").is_some()
    }
}

/// Parses the responses in `bytes` (interim 1xx other than 101 skipped).
/// `head_request`: the first response answers a HEAD. Returns the complete
/// responses and the bytes left over (an incomplete response, or garbage).
pub fn parse_responses(mut bytes: &[u8], head_request: bool) -> (Vec<ClientResponse>, Vec<u8>) {
    let mut out = Vec::new();
    while let Ok(Some((head, n))) = h1::parse_head(bytes) {
        let Ok(status) = head.status() else { break };
        let rest = &bytes[n..];
        if (100..200).contains(&status) && status != 101 {
            bytes = rest;
            continue;
        }
        let framing = head.response_framing(head_request && out.is_empty());
        let Some(len) = framing.ok().and_then(|f| body_len(rest, f)) else {
            break;
        };
        out.push(ClientResponse {
            status,
            head,
            body: rest[..len].to_vec(),
        });
        bytes = &rest[len..];
    }
    (out, bytes.to_vec())
}

/// How many bytes at the start of `b` are a complete body framed by
/// `framing` (None: it is incomplete or malformed).
fn body_len(b: &[u8], framing: Framing) -> Option<usize> {
    let mut r = io::Cursor::new(b);
    h1::read_body(&mut r, framing, u64::MAX, |_| {}).ok()?;
    usize::try_from(r.position()).ok()
}

/// Writes `bytes` to `addr` and reads until the peer closes, or until
/// `want` complete responses arrived and nothing more came for [`QUIET`],
/// or [`VECTOR_DEADLINE`]. Returns everything read.
pub fn exchange(addr: SocketAddr, bytes: &[u8], want: usize, head_request: bool) -> Vec<u8> {
    let mut s = TcpStream::connect_timeout(&addr, io_timeout()).expect("connect proxy");
    s.set_read_timeout(Some(Duration::from_millis(50)))
        .expect("read timeout");
    s.set_write_timeout(Some(io_timeout()))
        .expect("write timeout");
    // The proxy may close before reading everything (a rejection): a
    // failed write is part of the outcome, not an error of the test.
    let _ = s.write_all(bytes);
    let deadline = Instant::now() + patience(VECTOR_DEADLINE);
    let mut got = Vec::new();
    let mut last = Instant::now();
    let mut buf = [0u8; 16384];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return got,
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
                    return got;
                }
            }
            // A reset after a rejection: the proxy closed with unread input.
            Err(_) => return got,
        }
        if Instant::now() >= deadline {
            return got;
        }
    }
}

/// What one request vector did.
#[derive(Debug)]
pub struct Observation {
    pub responses: Vec<ClientResponse>,
    /// Bytes after the last complete response.
    pub leftover: Vec<u8>,
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
            r.is_local() && r.head.field("sockwarden-denied").is_none() && r.status != 403
        })
    }
}

/// Runs `bytes` through a fresh proxy (splice engine when `splice`, else
/// copy) in front of a fresh recording origin.
pub fn run_request(bytes: &[u8], want: usize, splice: bool) -> Observation {
    let origin = RecordingOrigin::start(Answer::Record);
    let proxy = Harness::with_yaml(Some(origin.addr()), POLICY_YAML, splice.then_some(1 << 20));
    let got = exchange(proxy.addr, bytes, want, false);
    drop(proxy);
    let (seen, origin_errors, _) = origin.finish();
    let (responses, leftover) = parse_responses(&got, false);
    Observation {
        responses,
        leftover,
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
                .head
                .field("host")
                .is_some_and(|h| h == "good.test" || h.starts_with("good.test:"))
        {
            v.push(format!(
                "origin read /hostonly for host {:?}",
                s.head.field("host")
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
