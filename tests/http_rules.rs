//! Loopback tests of what the proxy forwards: the Upgrade policy, the
//! normalized target, Host and chunk framing, and what an origin's extra
//! bytes may not do. No root, no namespaces.
//!
//! Each test's origin is a scripted std listener that records the raw bytes
//! of every connection, so the assertions are about the bytes the origin
//! really received.

mod common;

use std::io::{BufReader, ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::harness::Harness;
use common::origin::{self, read_response};

/// What a scripted origin does after it has read a request.
#[derive(Clone, Copy)]
enum Then {
    /// Writes the reply, then records what else arrives for a moment.
    Reply(&'static [u8]),
    /// Writes the reply, then echoes everything back until EOF.
    ReplyThenEcho(&'static [u8]),
}

/// One origin connection as seen from the origin.
struct Seen {
    /// Bytes up to and including the end marker.
    request: String,
    /// Bytes that arrived after it.
    after: Vec<u8>,
}

/// Accepts connections one at a time for at most 10 s; on each, reads until
/// the bytes end with `until` (bounded: 1 MiB, 5 s), acts on `then`, and
/// reports what it saw.
fn scripted_origin(until: &'static [u8], then: Then) -> (SocketAddr, mpsc::Receiver<Seen>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind scripted origin");
    let addr = listener.local_addr().expect("origin address");
    listener
        .set_nonblocking(true)
        .expect("nonblocking listener");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            let mut s = match listener.accept() {
                Ok((s, _)) => s,
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                }
                Err(_) => return,
            };
            let _ = s.set_nonblocking(false);
            let _ = s.set_read_timeout(Some(Duration::from_millis(100)));
            let request = read_until(&mut s, until, Duration::from_secs(5));
            let (reply, echo) = match then {
                Then::Reply(r) => (r, false),
                Then::ReplyThenEcho(r) => (r, true),
            };
            let _ = s.write_all(reply);
            let after = if echo {
                echo_until_eof(&mut s);
                Vec::new()
            } else {
                read_until(&mut s, b"\0never\0", Duration::from_millis(300))
            };
            let seen = Seen {
                request: String::from_utf8_lossy(&request).into_owned(),
                after,
            };
            if tx.send(seen).is_err() {
                return;
            }
        }
    });
    (addr, rx)
}

/// Reads until the bytes end with `marker`, EOF, 1 MiB or `wait`.
fn read_until(s: &mut TcpStream, marker: &[u8], wait: Duration) -> Vec<u8> {
    let deadline = Instant::now() + wait;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline && got.len() < 1 << 20 && !got.ends_with(marker) {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => break,
        }
    }
    got
}

/// Echoes until EOF (bounded: 5 s).
fn echo_until_eof(s: &mut TcpStream) {
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        match s.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => {
                if s.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => return,
        }
    }
}

/// The next connection the origin saw (waits up to 5 s).
fn seen(rx: &mpsc::Receiver<Seen>) -> Seen {
    rx.recv_timeout(Duration::from_secs(5))
        .expect("the origin saw a connection")
}

/// A client connection: writes `bytes`, returns the reader.
fn send(proxy: &Harness, bytes: &[u8]) -> (TcpStream, BufReader<TcpStream>) {
    let mut w = origin::connect(proxy.addr);
    w.write_all(bytes).expect("write to the proxy");
    let r = BufReader::new(w.try_clone().expect("clone client socket"));
    (w, r)
}

/// Reads to EOF (bounded by the client socket's timeout).
fn rest(r: &mut BufReader<TcpStream>) -> Vec<u8> {
    let mut out = Vec::new();
    let _ = r.read_to_end(&mut out);
    out
}

/// Issue 9's bypass: an allowed request offering h2c (no rule allows an
/// upgrade to it) reached the origin with its Upgrade header; the origin's
/// 101 made a raw tunnel, and the next, denied, request rode through it.
/// Now the Upgrade is removed (RFC 9110 7.8, RFC 9113 3.1), a 101 is a 502,
/// and the denied request never reaches the origin.
#[test]
fn h2c_upgrade_is_removed_and_an_unasked_101_is_a_502() {
    let (addr, rx) = scripted_origin(
        b"\r\n\r\n",
        Then::Reply(
            b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n",
        ),
    );
    let proxy = Harness::start(Some(addr));
    let (_w, mut r) = send(
        &proxy,
        b"GET /data/1 HTTP/1.1\r\nHost: origin.test\r\nUpgrade: h2c\r\n\
          Connection: Upgrade, HTTP2-Settings\r\nHTTP2-Settings: AAMAAABkAAQAoAAAAAIAAAAA\r\n\r\n\
          GET /denied/secret HTTP/1.1\r\nHost: origin.test\r\n\r\n",
    );
    let resp = read_response(&mut r, false).expect("a response");
    assert_eq!(resp.status, 502, "{}", resp.head);
    let why = resp.header("sockwarden-error").expect("sockwarden-error");
    assert!(why.contains("101"), "{why}");
    assert!(resp.connection_close(), "{}", resp.head);
    assert!(rest(&mut r).is_empty(), "nothing after the 502");
    let conn = seen(&rx);
    assert!(
        conn.request
            .starts_with("GET /data/1 HTTP/1.1\r\nHost: origin.test\r\n"),
        "{}",
        conn.request
    );
    let lower = conn.request.to_ascii_lowercase();
    assert!(
        !lower.contains("upgrade") && !lower.contains("http2-settings"),
        "{}",
        conn.request
    );
    assert!(
        !String::from_utf8_lossy(&conn.after).contains("denied"),
        "the denied request reached the origin: {:?}",
        String::from_utf8_lossy(&conn.after)
    );
    let line = proxy.log_line_with_status(502);
    let flags = line["flags"].to_string();
    assert!(flags.contains("UPR") && flags.contains("UPE"), "{line}");
}

/// An upgrade the rule lists (`upgrade: [echo, websocket]` on /data/.*) is
/// forwarded, the 101 to it tunnels; h2c offered beside it is still removed.
#[test]
fn an_allowed_upgrade_tunnels_and_h2c_beside_it_is_removed() {
    let (addr, rx) = scripted_origin(
        b"\r\n\r\n",
        Then::ReplyThenEcho(
            b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
        ),
    );
    let proxy = Harness::start(Some(addr));
    let (mut w, mut r) = send(
        &proxy,
        b"GET /data/ws HTTP/1.1\r\nHost: origin.test\r\nUpgrade: h2c, websocket\r\n\
          Connection: Upgrade\r\nSec-WebSocket-Key: k\r\n\r\n",
    );
    let resp = read_response(&mut r, true).expect("a response");
    assert_eq!(resp.status, 101, "{}", resp.head);
    assert_eq!(resp.header("upgrade"), Some("websocket"), "{}", resp.head);
    w.write_all(b"ping over the tunnel")
        .expect("write through the tunnel");
    let mut echoed = [0u8; 20];
    r.read_exact(&mut echoed).expect("echo through the tunnel");
    assert_eq!(&echoed, b"ping over the tunnel");
    w.shutdown(Shutdown::Write).expect("half-close the tunnel");
    let conn = seen(&rx);
    assert!(
        conn.request
            .contains("\r\nUpgrade: websocket\r\nConnection: upgrade\r\n"),
        "{}",
        conn.request
    );
    assert!(!conn.request.contains("h2c"), "{}", conn.request);
    assert!(
        conn.request.contains("Sec-WebSocket-Key: k\r\n"),
        "{}",
        conn.request
    );
}

/// A 101 to a protocol the client did not offer is a 502 (RFC 9110 15.2.2).
#[test]
fn a_101_to_another_protocol_is_a_502() {
    let (addr, _rx) = scripted_origin(
        b"\r\n\r\n",
        Then::Reply(
            b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n",
        ),
    );
    let proxy = Harness::start(Some(addr));
    let (_w, mut r) = send(
        &proxy,
        b"GET /data/ws HTTP/1.1\r\nHost: o\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
    );
    let resp = read_response(&mut r, false).expect("a response");
    assert_eq!(resp.status, 502, "{}", resp.head);
    assert!(resp.connection_close(), "{}", resp.head);
}

/// RFC 9112 3.2.2: a proxy replaces Host with the absolute-form target's
/// authority; the origin gets origin-form.
#[test]
fn absolute_form_is_forwarded_in_origin_form_with_its_host() {
    let (addr, rx) = scripted_origin(
        b"\r\n\r\n",
        Then::Reply(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"),
    );
    let proxy = Harness::start(Some(addr));
    let (_w, mut r) = send(
        &proxy,
        b"GET http://allowed.example:8080/data/a/../b?q=1 HTTP/1.1\r\nHost: decoy.example\r\n\r\n",
    );
    let resp = read_response(&mut r, false).expect("a response");
    assert_eq!(resp.status, 200, "{}", resp.head);
    let conn = seen(&rx);
    assert!(
        conn.request
            .starts_with("GET /data/b?q=1 HTTP/1.1\r\nHost: allowed.example:8080\r\n"),
        "{}",
        conn.request
    );
    assert!(!conn.request.contains("decoy"), "{}", conn.request);
}

/// RFC 3986 5.2.4: dot segments are resolved before the policy judges the
/// path, so `/data/../secret` is `/secret`, which no rule allows.
#[test]
fn dot_segments_cannot_walk_out_of_an_allowed_prefix() {
    let (addr, rx) = scripted_origin(
        b"\r\n\r\n",
        Then::Reply(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"),
    );
    let proxy = Harness::start(Some(addr));
    for target in [
        "/data/../secret",
        "/data/%2e%2e/secret",
        "/data/.%2E/secret",
    ] {
        let (_w, mut r) = send(
            &proxy,
            format!("GET {target} HTTP/1.1\r\nHost: o\r\nConnection: close\r\n\r\n").as_bytes(),
        );
        let resp = read_response(&mut r, false).expect("a response");
        assert_eq!(resp.status, 403, "{target}: {}", resp.head);
    }
    for target in [
        "/data%2f..%2fsecret",
        "/data/..;/secret",
        "/data\\..\\secret",
    ] {
        let (_w, mut r) = send(
            &proxy,
            format!("GET {target} HTTP/1.1\r\nHost: o\r\n\r\n").as_bytes(),
        );
        let resp = read_response(&mut r, false).expect("a response");
        assert_eq!(resp.status, 400, "{target}: {}", resp.head);
    }
    assert!(
        rx.recv_timeout(Duration::from_millis(300)).is_err(),
        "nothing reached the origin"
    );
}

/// RFC 9112 7.1: chunk framing leaves canonical (size lines without
/// leading zeros or extensions), and trailer fields that must not be
/// trailers are dropped (RFC 9110 6.5.1); Content-Length leaves canonical.
#[test]
fn request_framing_leaves_canonical() {
    let (addr, rx) = scripted_origin(
        b"\r\n0\r\nX-Checksum: 1\r\n\r\n",
        Then::Reply(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"),
    );
    let proxy = Harness::start(Some(addr));
    let (_w, mut r) = send(
        &proxy,
        b"POST /echo HTTP/1.1\r\nHost: o\r\nTransfer-Encoding: Chunked\r\n\r\n\
          005;name=\"v;1\"\r\nhello\r\n0\r\nContent-Length: 5\r\nHost: evil\r\nX-Checksum: 1\r\n\r\n",
    );
    let resp = read_response(&mut r, false).expect("a response");
    assert_eq!(resp.status, 200, "{}", resp.head);
    let conn = seen(&rx);
    assert_eq!(
        conn.request,
        "POST /echo HTTP/1.1\r\nHost: o\r\nTransfer-Encoding: chunked\r\n\r\n\
         5\r\nhello\r\n0\r\nX-Checksum: 1\r\n\r\n"
    );

    let (addr, rx) = scripted_origin(
        b"0123456789",
        Then::Reply(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"),
    );
    let proxy = Harness::start(Some(addr));
    let (_w, mut r) = send(
        &proxy,
        b"POST /echo HTTP/1.1\r\nHost: o\r\nContent-Length: 010\r\n\r\n0123456789",
    );
    assert_eq!(
        read_response(&mut r, false).expect("a response").status,
        200
    );
    assert_eq!(
        seen(&rx).request,
        "POST /echo HTTP/1.1\r\nHost: o\r\nContent-Length: 10\r\n\r\n0123456789"
    );
}

/// Bytes past a response's framing (here a body on a HEAD response that
/// looks like a second response) are never read as the next response: the
/// upstream connection is closed, and the next request gets its own.
#[test]
fn bytes_after_a_response_are_never_the_next_response() {
    let (addr, rx) = scripted_origin(
        b"\r\n\r\n",
        Then::Reply(
            b"HTTP/1.1 200 OK\r\nContent-Length: 46\r\n\r\n\
              HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nsmuggled",
        ),
    );
    let proxy = Harness::start(Some(addr));
    let mut w = origin::connect(proxy.addr);
    let mut r = BufReader::new(w.try_clone().expect("clone"));
    w.write_all(b"HEAD /data/1 HTTP/1.1\r\nHost: o\r\n\r\n")
        .expect("write");
    let head = read_response(&mut r, true).expect("the HEAD response");
    assert_eq!(head.status, 200, "{}", head.head);
    assert!(head.body.is_empty());
    w.write_all(b"GET /data/2 HTTP/1.1\r\nHost: o\r\n\r\n")
        .expect("write");
    let next = read_response(&mut r, false).expect("the GET response");
    assert_ne!(
        next.body, b"smuggled",
        "the smuggled response was delivered"
    );
    assert!(seen(&rx).request.starts_with("HEAD /data/1 "));
    assert!(
        seen(&rx).request.starts_with("GET /data/2 "),
        "the GET went out on a new upstream connection"
    );
}

/// RFC 9112 6.1: no Transfer-Encoding to an HTTP/1.0 client. A chunked
/// response (from an origin that should not have sent one) reaches it
/// decoded and delimited by the close, under both engines.
#[test]
fn an_http10_client_gets_a_chunked_body_decoded() {
    for pipe in [None, Some(1 << 20)] {
        let (addr, _rx) = scripted_origin(
            b"\r\n\r\n",
            Then::Reply(
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\
                  5;x=y\r\nhello\r\n7\r\n, world\r\n0\r\nX-Trailer: t\r\n\r\n",
            ),
        );
        let proxy = Harness::with_engine(Some(addr), "", "", pipe);
        let (_w, mut r) = send(&proxy, b"GET /data/1 HTTP/1.0\r\nHost: o\r\n\r\n");
        let got = String::from_utf8(rest(&mut r)).expect("utf-8");
        let (head, body) = got.split_once("\r\n\r\n").expect("a head");
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{pipe:?}: {got:?}");
        assert!(
            !head.to_ascii_lowercase().contains("transfer-encoding"),
            "{pipe:?}: {got:?}"
        );
        assert!(head.contains("Connection: close"), "{pipe:?}: {got:?}");
        assert_eq!(body, "hello, world", "{pipe:?}");
    }
}
