//! Loopback tests of the proxy core: no root, no namespaces, no eBPF.
//!
//! Each test starts its own [`sockwarden::proxy::Proxy`] on 127.0.0.1 (a
//! private two-worker tokio runtime), with a [`sockwarden::proxy::KernelState`]
//! that sends every connection to one test origin, a policy parsed from
//! YAML, and the access log in a temporary file. Clients are blocking std
//! sockets.

use std::io::{BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::common::h1::{self, Response};
use crate::common::origin::{pattern, OriginConfig};
use crate::common::{lock, Patient};
use crate::harness::{
    assert_flags, closed_port, loopback_listener, origin, origin_and_proxy, proxy_error, Client,
    Harness, Limits, POLICY,
};

/// Asserts a 200 whose body is `pattern(n)`.
fn assert_data(resp: &Response, n: usize) {
    assert_eq!(resp.status, 200, "{resp}");
    assert_eq!(resp.body.len(), n, "body length of /data/{n}");
    assert!(
        resp.body == pattern(n),
        "body of /data/{n} differs from the pattern"
    );
}

/// Asserts a proxy-generated error: status, a `sockwarden-error` header,
/// `connection: close`, and the connection closed after it.
fn assert_error_and_closed(client: &mut Client, status: u16) -> Response {
    let resp = client.response();
    proxy_error(&resp, status);
    assert!(
        resp.head.has_token("connection", "close"),
        "no Connection: close: {resp}"
    );
    client.expect_eof();
    resp
}

// ---------------------------------------------------------------------------
// Raw origins: misbehaving servers on std sockets.

/// A listener whose connections each get `handler` on their own thread.
/// Stops (and joins every thread) when dropped.
struct RawOrigin {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    accepted: Arc<AtomicU64>,
    accept: Option<JoinHandle<()>>,
}

/// What a raw origin does with a connection: `Conn` reads through short
/// timeouts until the origin stops.
type Handler = fn(Conn<'_>);

/// One raw-origin connection.
struct Conn<'a> {
    s: &'a TcpStream,
    stop: &'a AtomicBool,
}

impl Conn<'_> {
    /// The socket, read until the origin stops or 10 s passed.
    fn reader(&self) -> BufReader<Patient<&TcpStream, impl Fn(Instant) -> bool + '_>> {
        let _ = self.s.set_read_timeout(Some(Duration::from_millis(50)));
        let deadline = Instant::now() + Duration::from_secs(10);
        let stop = self.stop;
        BufReader::new(Patient {
            inner: self.s,
            give_up: move |_| stop.load(Ordering::SeqCst) || Instant::now() >= deadline,
        })
    }

    /// Reads one request head; false if the peer closed or the origin
    /// stopped first.
    fn read_head(&self) -> bool {
        matches!(h1::read_head(&mut self.reader()), Ok(Some(_)))
    }

    /// Reads and drops everything until EOF or the origin stops.
    fn drain(&self) {
        let _ = std::io::copy(&mut self.reader(), &mut std::io::sink());
    }

    fn write(&self, bytes: &[u8]) {
        let mut s = self.s;
        let _ = s.write_all(bytes);
    }
}

impl RawOrigin {
    fn start(handler: Handler) -> RawOrigin {
        let listener = loopback_listener();
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("raw origin addr");
        let stop = Arc::new(AtomicBool::new(false));
        let accepted = Arc::new(AtomicU64::new(0));
        let (st, acc) = (stop.clone(), accepted.clone());
        let accept = std::thread::spawn(move || {
            let conns: Mutex<Vec<JoinHandle<()>>> = Mutex::new(Vec::new());
            // Bounded: the test suite never needs a raw origin for this long.
            let deadline = Instant::now() + Duration::from_secs(60);
            while !st.load(Ordering::SeqCst) && Instant::now() < deadline {
                match listener.accept() {
                    Ok((s, _)) => {
                        acc.fetch_add(1, Ordering::SeqCst);
                        let _ = s.set_nonblocking(false);
                        let st2 = st.clone();
                        let h = std::thread::spawn(move || handler(Conn { s: &s, stop: &st2 }));
                        lock(&conns).push(h);
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
            for h in conns.into_inner().unwrap_or_else(|e| e.into_inner()) {
                let _ = h.join();
            }
        });
        RawOrigin {
            addr,
            stop,
            accepted,
            accept: Some(accept),
        }
    }

    /// A raw origin with `handler` and a proxy in front of it.
    fn behind_proxy(handler: Handler) -> (RawOrigin, Harness) {
        let origin = RawOrigin::start(handler);
        let proxy = Harness::start(Some(origin.addr));
        (origin, proxy)
    }

    fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for RawOrigin {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.accept.take() {
            let _ = h.join();
        }
    }
}

/// Accepts and never answers.
fn silent_handler(c: Conn<'_>) {
    c.drain();
}

/// Answers every request with bytes that are not HTTP.
fn garbage_handler(c: Conn<'_>) {
    if c.read_head() {
        c.write(b"garbage\r\n\r\n");
        let _ = c.s.shutdown(Shutdown::Write);
        c.drain();
    }
}

/// Serves exactly one response per connection (Content-Length, no
/// Connection header), then closes.
fn one_shot_handler(c: Conn<'_>) {
    if c.read_head() {
        c.write(b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\none-shot");
    }
    // Returning closes the socket (nothing unread: a FIN, not a RST).
}

/// Sends a response head promising 100 bytes, 10 of them, then stalls.
fn stalled_body_handler(c: Conn<'_>) {
    if c.read_head() {
        c.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789");
        c.drain();
    }
}

// ---------------------------------------------------------------------------
// Tests.

#[test]
fn allowed_get_returns_the_body_byte_exact() {
    let (_origin, proxy) = origin_and_proxy(OriginConfig::default());
    let mut c = proxy.connect();
    for n in [0usize, 1, 65535, 65536, 1 << 20] {
        let resp = c.get(&format!("/data/{n}"));
        assert_data(&resp, n);
        assert_eq!(
            resp.head.field("content-length"),
            Some(n.to_string().as_str())
        );
        assert!(!resp.head.has_token("connection", "close"), "{resp}");
    }
    let line = proxy.log_line_with_status(200);
    assert_eq!(line["verdict"], "allowed", "{line}");
    assert_eq!(line["policy"], POLICY, "{line}");
    assert_eq!(line["upstream_attempts"], 1, "{line}");
    assert_flags(&line, &[]);
}

#[test]
fn keep_alive_reuses_one_upstream_connection() {
    let (origin, proxy) = origin_and_proxy(OriginConfig::default());
    let mut c = proxy.connect();
    for i in 1..=20usize {
        let resp = c.get(&format!("/data/{}", i * 100));
        assert_data(&resp, i * 100);
        assert_eq!(
            resp.head.field("x-origin-request-count"),
            Some(i.to_string().as_str()),
            "request {i} should be the {i}th on the upstream connection"
        );
    }
    assert_eq!(origin.connections(), 1);
    assert_eq!(origin.requests(), 20);
}

#[test]
fn pipelined_requests_are_answered_in_order() {
    let (_origin, proxy) = origin_and_proxy(OriginConfig::default());
    let mut c = proxy.connect();
    let sizes = [1000usize, 70_000, 5];
    let batch: String = sizes
        .iter()
        .map(|n| format!("GET /data/{n} HTTP/1.1\r\nHost: origin.test\r\n\r\n"))
        .collect();
    c.send(batch.as_bytes());
    for (i, n) in sizes.iter().enumerate() {
        let resp = c.response();
        assert_data(&resp, *n);
        assert_eq!(
            resp.head.field("x-origin-request-count"),
            Some((i + 1).to_string().as_str())
        );
    }
    // The connection is still usable.
    assert_data(&c.get("/data/7"), 7);
}

#[test]
fn http10_client_closes_unless_keep_alive() {
    let (_origin, proxy) = origin_and_proxy(OriginConfig::default());

    // Without keep-alive: one response, then the proxy closes.
    let mut c = proxy.connect();
    c.send(b"GET /data/300 HTTP/1.0\r\nHost: origin.test\r\n\r\n");
    let resp = c.response();
    assert_data(&resp, 300);
    assert!(resp.head.has_token("connection", "close"), "{resp}");
    c.expect_eof();

    // With keep-alive: the connection stays and serves a second request.
    let mut c = proxy.connect();
    for n in [400usize, 500] {
        let req = format!(
            "GET /data/{n} HTTP/1.0\r\nHost: origin.test\r\nConnection: keep-alive\r\n\r\n"
        );
        c.send(req.as_bytes());
        let resp = c.response();
        assert_data(&resp, n);
        assert_eq!(
            resp.head.field("connection"),
            Some("keep-alive"),
            "{}",
            resp.head
        );
    }
}

#[test]
fn framing_errors_get_their_status_and_close() {
    let (origin, proxy) = origin_and_proxy(OriginConfig::default());
    let big_head = format!(
        "GET /data/1 HTTP/1.1\r\nHost: origin.test\r\nX-Big: {}\r\n\r\n",
        "a".repeat(66 << 10)
    );
    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        (
            "invalid head",
            b"GET /data/1 HTTP/1.1\r\nBad Header\r\n\r\n".to_vec(),
            400,
        ),
        ("head over 64 KiB", big_head.into_bytes(), 431),
        (
            "Content-Length with Transfer-Encoding",
            b"POST /echo HTTP/1.1\r\nHost: o\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
                .to_vec(),
            400,
        ),
        (
            "conflicting Content-Lengths",
            b"POST /echo HTTP/1.1\r\nHost: o\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!".to_vec(),
            400,
        ),
        (
            "Transfer-Encoding: gzip, chunked",
            b"POST /echo HTTP/1.1\r\nHost: o\r\nTransfer-Encoding: gzip, chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
                .to_vec(),
            501,
        ),
    ];
    for (name, request, status) in cases {
        let mut c = proxy.connect();
        c.send(&request);
        let resp = c.response();
        assert_eq!(resp.status, status, "{name}: {resp}");
        assert!(!proxy_error(&resp, status).is_empty(), "{name}: {resp}");
        assert!(resp.head.has_token("connection", "close"), "{name}: {resp}");
        c.expect_eof();
    }
    // Nothing of these reached the origin.
    assert_eq!(origin.requests(), 0);
    for status in [400, 431, 501] {
        assert_flags(&proxy.log_line_with_status(status), &["DPE"]);
    }
}

#[test]
fn denied_request_gets_403_and_keeps_the_connection() {
    let (origin, proxy) = origin_and_proxy(OriginConfig::default());
    let mut c = proxy.connect();

    let resp = c.get("/private");
    assert_eq!(resp.status, 403, "{resp}");
    assert_eq!(resp.head.field("sockwarden-denied"), Some(POLICY));
    let body = String::from_utf8_lossy(&resp.body);
    assert!(
        body.contains(&format!("{POLICY:?}")),
        "body {body:?} does not name the policy"
    );
    assert!(!resp.head.has_token("connection", "close"), "{resp}");
    assert_data(&c.get("/data/123"), 123);

    // A denied request with a small body: the body is drained, the
    // connection stays in sync.
    c.send(b"POST /private HTTP/1.1\r\nHost: origin.test\r\nContent-Length: 11\r\n\r\nhello world");
    let resp = c.response();
    assert_eq!(resp.status, 403, "{resp}");
    assert_eq!(resp.head.field("sockwarden-denied"), Some(POLICY));
    assert!(!resp.head.has_token("connection", "close"), "{resp}");
    assert_data(&c.get("/data/456"), 456);

    assert_eq!(
        origin.requests(),
        2,
        "denied requests must not reach the origin"
    );
    let line = proxy.log_line_with_status(403);
    assert_eq!(line["verdict"], "denied", "{line}");
    assert_flags(&line, &["RBAC"]);
}

#[test]
fn expect_100_continue_is_relayed() {
    let (_origin, proxy) = origin_and_proxy(OriginConfig::default());
    let mut c = proxy.connect();
    let body = b"the body after 100-continue";
    c.send(
        format!(
            "POST /echo HTTP/1.1\r\nHost: origin.test\r\nExpect: 100-continue\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .as_bytes(),
    );
    let interim = c.response();
    assert_eq!(interim.status, 100, "{interim}");
    assert_eq!(interim.head.start, "HTTP/1.1 100 Continue", "{interim}");
    c.send(body);
    let resp = c.response();
    assert_eq!(resp.status, 200, "{resp}");
    assert_eq!(resp.body, body);
    // Still usable.
    assert_data(&c.get("/data/10"), 10);
}

#[test]
fn chunked_and_close_delimited_bodies() {
    // A chunked request body, written in small pieces.
    let (first, proxy) = origin_and_proxy(OriginConfig::default());
    let mut c = proxy.connect();
    let chunks: [&[u8]; 4] = [b"hello", b", ", b"chunked ", b"world!"];
    let mut wire =
        b"POST /echo HTTP/1.1\r\nHost: origin.test\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    for chunk in chunks {
        wire.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        wire.extend_from_slice(chunk);
        wire.extend_from_slice(b"\r\n");
    }
    wire.extend_from_slice(b"0\r\n\r\n");
    for piece in wire.chunks(7) {
        c.send(piece);
        std::thread::sleep(Duration::from_millis(3));
    }
    let resp = c.response();
    assert_eq!(resp.status, 200, "{resp}");
    assert_eq!(resp.body, b"hello, chunked world!");
    assert_data(&c.get("/data/33"), 33);
    drop(first);

    // A chunked response.
    let chunked = origin(OriginConfig {
        chunked: true,
        ..OriginConfig::default()
    });
    let proxy = Harness::start(Some(chunked.addr()));
    let mut c = proxy.connect();
    for n in [100_001usize, 3] {
        let resp = c.get(&format!("/data/{n}"));
        assert_eq!(
            resp.head.field("transfer-encoding"),
            Some("chunked"),
            "{}",
            resp.head
        );
        assert_eq!(resp.head.field("content-length"), None, "{resp}");
        assert_data(&resp, n);
    }
    assert_eq!(chunked.connections(), 1);

    // A close-delimited response: the proxy closes the client after it.
    let until_close = origin(OriginConfig {
        close_delimited: true,
        ..OriginConfig::default()
    });
    let proxy = Harness::start(Some(until_close.addr()));
    let mut c = proxy.connect();
    let resp = c.get("/data/200000");
    assert_eq!(resp.head.field("content-length"), None, "{resp}");
    assert_eq!(resp.head.field("transfer-encoding"), None, "{resp}");
    assert!(resp.head.has_token("connection", "close"), "{resp}");
    assert_data(&resp, 200_000);
    c.expect_eof();
}

#[test]
fn origin_closing_after_100_requests_causes_no_errors() {
    let (origin, proxy) = origin_and_proxy(OriginConfig {
        close_after: Some(100),
        ..OriginConfig::default()
    });
    let mut c = proxy.connect();
    let started = Instant::now();
    let mut failures = Vec::new();
    for i in 0..10_000usize {
        let n = i % 300;
        let resp = c.get(&format!("/data/{n}"));
        if resp.status != 200 || resp.body != pattern(n) {
            failures.push((i, resp.status, resp.head.clone()));
            if failures.len() >= 10 {
                break;
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "too slow: {i} requests in {:?}",
            started.elapsed()
        );
    }
    assert!(failures.is_empty(), "failed requests: {failures:?}");
    assert_eq!(origin.requests(), 10_000);
    assert_eq!(origin.connections(), 100);

    // The access log agrees: 10,000 clean exchanges over 100 upstream
    // connections of 100 requests each.
    let lines = proxy.wait_log_lines(10_000);
    assert_eq!(lines.len(), 10_000);
    let mut per_upstream = std::collections::BTreeMap::<u64, u32>::new();
    for line in &lines {
        assert_eq!(line["status"], 200, "{line}");
        assert_flags(line, &[]);
        assert_eq!(line["upstream_attempts"], 1, "{line}");
        let id = line["upstream_id"]
            .as_u64()
            .unwrap_or_else(|| panic!("{line}"));
        *per_upstream.entry(id).or_default() += 1;
    }
    assert_eq!(per_upstream.len(), 100, "upstream connections in the log");
    assert!(
        per_upstream.values().all(|&n| n == 100),
        "requests per upstream connection: {per_upstream:?}"
    );
}

#[test]
fn connect_failure_is_503_with_uf() {
    let proxy = Harness::start(Some(closed_port()));
    let mut c = proxy.connect();
    let resp = c.get("/data/1");
    assert_eq!(
        proxy_error(&resp, 503),
        "upstream connect failed: ECONNREFUSED"
    );
    // A failed connect without a request body keeps the client connection.
    assert!(!resp.head.has_token("connection", "close"), "{resp}");
    assert_eq!(c.get("/data/2").status, 503);
    let line = proxy.log_line_with_status(503);
    assert_flags(&line, &["UF"]);
    assert_eq!(line["verdict"], "error", "{line}");
    assert_eq!(line["upstream_attempts"], 1, "{line}");
}

#[test]
fn upstream_timeout_is_504_with_ut() {
    let origin = RawOrigin::start(silent_handler);
    let proxy = Harness::with_config(Some(origin.addr), "{ request_timeout: 300ms }", "");
    let mut c = proxy.connect();
    let started = Instant::now();
    let resp = c.get("/data/1");
    let waited = started.elapsed();
    let err = proxy_error(&resp, 504);
    assert!(err.contains("timeout"), "{err:?}");
    assert!(
        waited >= Duration::from_millis(250) && waited < Duration::from_secs(3),
        "answered after {waited:?}, expected about 300ms"
    );
    assert_flags(&proxy.log_line_with_status(504), &["UT"]);
    assert_eq!(origin.accepted(), 1);
}

#[test]
fn bad_upstream_response_is_502_with_upe() {
    let (_origin, proxy) = RawOrigin::behind_proxy(garbage_handler);
    let resp = proxy.connect().get("/data/1");
    let err = proxy_error(&resp, 502);
    assert!(err.starts_with("bad upstream response"), "{err:?}");
    assert_flags(&proxy.log_line_with_status(502), &["UPE"]);
}

#[test]
fn idle_upstream_closed_by_server_is_not_reused() {
    let (origin, proxy) = RawOrigin::behind_proxy(one_shot_handler);
    let mut c = proxy.connect();
    let first = c.get("/data/1");
    assert_eq!(first.status, 200, "{first}");
    assert_eq!(first.body, b"one-shot");
    std::thread::sleep(Duration::from_millis(200));
    let second = c.get("/data/1");
    assert_eq!(second.status, 200, "{second}");
    assert_eq!(second.body, b"one-shot");
    assert_eq!(
        origin.accepted(),
        2,
        "the second request needs a new upstream connection"
    );
}

#[test]
fn max_requests_per_connection_retires_upstreams() {
    let origin = origin(OriginConfig::default());
    let proxy = Harness::with_config(
        Some(origin.addr()),
        "",
        "{ max_requests_per_connection: 3 }",
    );
    let mut c = proxy.connect();
    for i in 0..9usize {
        let resp = c.get(&format!("/data/{}", i + 1));
        assert_data(&resp, i + 1);
        assert_eq!(
            resp.head.field("x-origin-request-count"),
            Some((i % 3 + 1).to_string().as_str())
        );
    }
    assert_eq!(origin.connections(), 3);
}

#[test]
fn no_original_destination_is_421() {
    let proxy = Harness::start(None);
    let mut c = proxy.connect();
    c.send(b"GET /data/1 HTTP/1.1\r\nHost: origin.test\r\n\r\n");
    let resp = assert_error_and_closed(&mut c, 421);
    let err = proxy_error(&resp, 421);
    assert!(err.contains("no original destination"), "{resp}");
    assert_flags(&proxy.log_line_with_status(421), &["NR"]);
}

/// The harness itself: a closed proxy refuses connections after drop, so
/// tests cannot pass against a leftover listener.
#[test]
fn harness_stops_the_proxy_on_drop() {
    let (_origin, proxy) = origin_and_proxy(OriginConfig::default());
    let addr = proxy.addr;
    assert_data(&proxy.connect().get("/data/5"), 5);
    drop(proxy);
    let refused = TcpStream::connect_timeout(&addr, Duration::from_secs(1));
    assert!(
        refused.is_err(),
        "proxy still listening on {addr} after drop"
    );
}

// ---------------------------------------------------------------------------
// Limits: slow clients and the connection limit.

#[test]
fn a_started_head_must_finish_within_the_head_timeout() {
    let origin = origin(OriginConfig::default());
    let limits = Limits {
        request_head_timeout: Duration::from_millis(500),
        ..Limits::default()
    };
    let proxy = Harness::with_limits(Some(origin.addr()), limits);
    let mut c = proxy.connect();
    // Idle between requests longer than the head timeout: still served
    // (the idle wait is client_idle_timeout, 10 s in the harness).
    assert_data(&c.get("/data/5"), 5);
    std::thread::sleep(Duration::from_millis(1200));
    assert_data(&c.get("/data/6"), 6);
    // A head that starts and stalls gets 408 after the head timeout.
    c.send(b"GET /data/7 HTTP/1.1\r\nHost: origin.test\r\n");
    let started = Instant::now();
    let resp = assert_error_and_closed(&mut c, 408);
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(450) && waited < Duration::from_secs(3),
        "408 after {waited:?}, expected about 500ms"
    );
    let err = proxy_error(&resp, resp.status);
    assert!(err.starts_with("request head timeout"), "{err:?}");
    assert_flags(&proxy.log_line_with_status(408), &["HT"]);
    // Trickling bytes does not extend it: one byte every 100 ms.
    let mut c = proxy.connect();
    let started = Instant::now();
    for b in b"GET /data/8 HTTP/1.1\r\nHost: origin.test\r\nX-Slow: "
        .iter()
        .take(20)
    {
        if c.w.write_all(&[*b]).is_err() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_error_and_closed(&mut c, 408);
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
}

/// A raw origin with `handler` behind a proxy whose body timeout is
/// 400 ms, a client that has sent `request` through it, and when it did.
fn with_400ms_timeout(handler: Handler, request: &[u8]) -> (RawOrigin, Harness, Client, Instant) {
    let origin = RawOrigin::start(handler);
    let proxy = Harness::with_config(Some(origin.addr), "", "{ request_timeout: 400ms }");
    let mut c = proxy.connect();
    c.send(request);
    (origin, proxy, c, Instant::now())
}

const STALLED_UPLOAD: &[u8] =
    b"POST /echo HTTP/1.1\r\nHost: origin.test\r\nContent-Length: 100\r\n\r\n0123456789";

#[test]
fn a_stalled_request_body_is_cut_with_si_and_dc() {
    let (_origin, proxy, mut c, started) = with_400ms_timeout(silent_handler, STALLED_UPLOAD);
    // The proxy gives up on the body and closes; nothing is answered.
    c.expect_eof();
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(350) && waited < Duration::from_secs(3),
        "closed after {waited:?}, expected about 400ms"
    );
    let line = proxy.log_line_with_flag("SI");
    assert_flags(&line, &["SI", "DC"]);
    let reason = line["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("no body bytes"), "{line}");
}

#[test]
fn a_stalled_response_body_is_cut_with_si_and_uc() {
    let get = b"GET /data/1 HTTP/1.1\r\nHost: origin.test\r\n\r\n";
    let (_origin, proxy, mut c, started) = with_400ms_timeout(stalled_body_handler, get);
    let mut got = Vec::new();
    // The head and the 10 bytes arrive, then the connection ends early.
    let _ = c.r.read_to_end(&mut got);
    let waited = started.elapsed();
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 200"), "{text:?}");
    assert!(text.ends_with("0123456789"), "{text:?}");
    assert!(waited < Duration::from_secs(3), "closed after {waited:?}");
    let line = proxy.log_line_with_flag("SI");
    assert_flags(&line, &["SI", "UC"]);
}

/// The largest value of this host's `net.ipv4.tcp_rmem` or `tcp_wmem`.
fn tcp_mem_max(name: &str) -> u64 {
    let path = format!("/proc/sys/net/ipv4/{name}");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {path}: {e}"));
    text.split_whitespace()
        .nth(2)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{path} has no maximum: {text:?}"))
}

/// A client that stops reading a large response cannot hold the proxy: the
/// write side stalls for the body timeout and the exchange is cut, SI with
/// DC (the client's side), under both engines. Nor does the proxy read
/// ahead of it: the origin got no further than the buffers on the path.
#[test]
fn a_client_that_stops_reading_is_cut_with_si_and_dc() {
    const BODY: u64 = 256 << 20;
    // Two send and two receive buffers (origin and proxy upstream, proxy
    // downstream and client), and the proxy's pipe or copy buffer.
    let path_buffers = 2 * (tcp_mem_max("tcp_rmem") + tcp_mem_max("tcp_wmem")) + (1 << 20);
    let origin = origin(OriginConfig::default());
    for pipe in [None, Some(1 << 20)] {
        let proxy =
            Harness::with_engine(Some(origin.addr()), "", "{ request_timeout: 400ms }", pipe);
        let before = origin.body_bytes_sent();
        let mut c = proxy.connect();
        c.send(format!("GET /data/{BODY} HTTP/1.1\r\nHost: origin.test\r\n\r\n").as_bytes());
        // Never read: the proxy fills the sockets' buffers and stalls.
        let line = proxy.log_line_with_flag("SI");
        assert_flags(&line, &["SI", "DC"]);
        let reason = line["reason"].as_str().unwrap_or_default();
        assert!(
            reason.is_empty(),
            "a client-side cut names no upstream cause: {line}"
        );
        let sent = line["bytes_sent"].as_u64().unwrap_or_default();
        assert!(
            sent < BODY,
            "engine {pipe:?}: the whole body was sent: {line}"
        );
        let from_origin = origin.body_bytes_sent() - before;
        assert!(
            from_origin <= path_buffers.min(BODY - 1),
            "engine {pipe:?}: the origin sent {from_origin} bytes, more than the path's \
             {path_buffers} bytes of buffers"
        );
    }
}

/// With the default source (node) an upstream connection leaves from the
/// proxy's own address, whatever the workload's: clients on two other
/// loopback addresses share one pooled upstream connection, the origin
/// sees only 127.0.0.1, and the access log names each client.
#[test]
fn the_node_source_leaves_from_the_proxy_address_and_is_shared() {
    let (origin, proxy) = origin_and_proxy(OriginConfig::default());
    let clients = ["127.0.0.2", "127.0.0.3"];
    for ip in clients {
        let mut c = Client::connect_from(ip.parse().expect("address"), proxy.addr);
        assert_data(&c.get("/data/3"), 3);
    }
    let peers: Vec<String> = origin.peers().iter().map(|p| p.ip().to_string()).collect();
    assert_eq!(peers, ["127.0.0.1"]);
    assert_eq!(origin.connections(), 1, "one pooled upstream connection");
    let log = proxy.wait_log_lines(2);
    for (line, ip) in log.iter().zip(clients) {
        let client = line["client"].as_str().unwrap_or_default();
        assert!(client.starts_with(&format!("{ip}:")), "{line}");
    }
}

#[test]
fn past_max_connections_new_connections_get_503_and_the_others_are_served() {
    let origin = origin(OriginConfig::default());
    let limits = Limits {
        max_connections: 2,
        ..Limits::default()
    };
    let proxy = Harness::with_limits(Some(origin.addr()), limits);
    let mut a = proxy.connect();
    let mut b = proxy.connect();
    assert_data(&a.get("/data/1"), 1);
    assert_data(&b.get("/data/2"), 2);
    // The third is refused at once, with a 503 naming the limit.
    let mut c = proxy.connect();
    let resp = assert_error_and_closed(&mut c, 503);
    let err = proxy_error(&resp, resp.status);
    assert!(err.contains("max_connections = 2"), "{err:?}");
    // The others keep being served.
    assert_data(&a.get("/data/3"), 3);
    assert_data(&b.get("/data/4"), 4);
    // A freed slot is taken by the next connection.
    drop(a);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut d = proxy.connect();
        d.send(b"GET /data/5 HTTP/1.1\r\nHost: origin.test\r\n\r\n");
        let resp = d.response();
        if resp.status == 200 {
            break;
        }
        assert_eq!(resp.status, 503, "{resp}");
        assert!(
            Instant::now() < deadline,
            "the freed slot was not reused within 5 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
