//! Loopback tests of what the proxy forwards: the Upgrade policy, the
//! normalized target, Host and chunk framing, and what an origin's extra
//! bytes may not do. No root, no namespaces.
//!
//! Each test's origin is a scripted one that records the exact bytes of
//! every request, so the assertions are about the bytes the origin really
//! received.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::{mpsc, Mutex};
use std::time::{Duration, Instant};

use crate::common::{h1, lock, Patient, Server};
use crate::harness::{flags, loopback_listener, proxy_error, Client, Harness, Recording};

/// What a scripted origin does after it has read a request.
#[derive(Clone, Copy)]
enum Then {
    /// Writes the reply, then records what else arrives for a moment.
    Reply(&'static [u8]),
    /// Writes the reply, then echoes everything back until EOF.
    ReplyThenEcho(&'static [u8]),
}

/// One origin connection as seen from the origin (shown as its request).
struct Seen {
    /// The bytes of the request, as they came.
    request: String,
    /// Bytes that arrived after it.
    after: Vec<u8>,
}

impl std::fmt::Display for Seen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.request)
    }
}

/// An origin that serves one connection at a time: it reads one request
/// through [`h1`] (keeping its exact bytes), acts on `then`, and reports
/// what it saw. Stopped when the returned server is dropped.
fn scripted_origin(then: Then) -> (Server, mpsc::Receiver<Seen>) {
    let (tx, rx) = mpsc::channel();
    let one_at_a_time = Mutex::new(());
    let server = Server::start(loopback_listener(), move |s, _| {
        let _turn = lock(&one_at_a_time);
        let _ = s.set_read_timeout(Some(Duration::from_millis(100)));
        let mut r = Recording::new(patient(&s, Duration::from_secs(5)));
        let _ = h1::read_head(&mut r).and_then(|head| match head {
            Some(head) => h1::read_body(&mut r, head.request_framing()?, 1 << 20, |_| {}),
            None => Ok(()),
        });
        let request = String::from_utf8_lossy(r.consumed()).into_owned();
        let mut after = r.unread().to_vec();
        let mut w = &s;
        let _ = w.write_all(match then {
            Then::Reply(reply) | Then::ReplyThenEcho(reply) => reply,
        });
        if let Then::ReplyThenEcho(_) = then {
            // Everything back until EOF (bounded: 5 s).
            let _ = w.write_all(&after);
            after.clear();
            let _ = std::io::copy(&mut patient(&s, Duration::from_secs(5)), &mut w);
        } else {
            let _ = patient(&s, Duration::from_millis(300)).read_to_end(&mut after);
        }
        let _ = tx.send(Seen { request, after });
    });
    (server, rx)
}

/// `s` read through its short timeouts until `wait` has passed.
fn patient(s: &TcpStream, wait: Duration) -> Patient<&TcpStream, impl Fn(Instant) -> bool> {
    let deadline = Instant::now() + wait;
    Patient {
        inner: s,
        give_up: move |_| Instant::now() >= deadline,
    }
}

/// A scripted origin behind a proxy of its own.
struct Scene {
    proxy: Harness,
    _origin: Server,
    rx: mpsc::Receiver<Seen>,
}

impl Scene {
    /// The origin does `then`; the proxy splices bodies (1 MiB pipes).
    fn new(then: Then) -> Scene {
        Scene::with_engine(then, Some(1 << 20))
    }

    /// With the body engine chosen: Some(pipe size) for splice, None for copy.
    fn with_engine(then: Then, pipe: Option<usize>) -> Scene {
        let (origin, rx) = scripted_origin(then);
        let proxy = Harness::with_engine(Some(origin.addr()), "", "", pipe);
        Scene {
            proxy,
            _origin: origin,
            rx,
        }
    }

    /// A client connection that has written `bytes`.
    fn send(&self, bytes: &[u8]) -> Client {
        let mut c = self.proxy.connect();
        c.send(bytes);
        c
    }

    /// The next connection the origin saw (waits up to 5 s).
    fn seen(&self) -> Seen {
        self.rx
            .recv_timeout(Duration::from_secs(5))
            .expect("the origin saw a connection")
    }

    /// Whether any connection reached the origin within 300 ms.
    fn reached(&self) -> bool {
        self.rx.recv_timeout(Duration::from_millis(300)).is_ok()
    }
}

/// Issue 9's bypass: an allowed request offering h2c (no rule allows an
/// upgrade to it) reached the origin with its Upgrade header; the origin's
/// 101 made a raw tunnel, and the next, denied, request rode through it.
/// Now the Upgrade is removed (RFC 9110 7.8, RFC 9113 3.1), a 101 is a 502,
/// and the denied request never reaches the origin.
#[test]
fn h2c_upgrade_is_removed_and_an_unasked_101_is_a_502() {
    let scene = Scene::new(Then::Reply(
        b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n",
    ));
    let mut c = scene.send(
        b"GET /data/1 HTTP/1.1\r\nHost: origin.test\r\nUpgrade: h2c\r\n\
          Connection: Upgrade, HTTP2-Settings\r\nHTTP2-Settings: AAMAAABkAAQAoAAAAAIAAAAA\r\n\r\n\
          GET /denied/secret HTTP/1.1\r\nHost: origin.test\r\n\r\n",
    );
    let resp = c.response();
    let why = proxy_error(&resp, 502);
    assert!(why.contains("101"), "{why}");
    assert!(resp.head.has_token("connection", "close"), "{resp}");
    assert!(c.rest().is_empty(), "nothing after the 502");
    let conn = scene.seen();
    assert!(
        conn.request
            .starts_with("GET /data/1 HTTP/1.1\r\nHost: origin.test\r\n"),
        "{conn}"
    );
    let lower = conn.request.to_ascii_lowercase();
    assert!(
        !lower.contains("upgrade") && !lower.contains("http2-settings"),
        "{conn}"
    );
    assert!(
        !String::from_utf8_lossy(&conn.after).contains("denied"),
        "the denied request reached the origin: {:?}",
        String::from_utf8_lossy(&conn.after)
    );
    let line = scene.proxy.log_line_with_status(502);
    let flags = flags(&line);
    assert!(flags.contains(&"UPR") && flags.contains(&"UPE"), "{line}");
}

/// An upgrade the rule lists (`upgrade: [echo, websocket]` on /data/.*) is
/// forwarded, the 101 to it tunnels; h2c offered beside it is still removed.
#[test]
fn an_allowed_upgrade_tunnels_and_h2c_beside_it_is_removed() {
    let scene = Scene::new(Then::ReplyThenEcho(
        b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
    ));
    let mut c = scene.send(
        b"GET /data/ws HTTP/1.1\r\nHost: origin.test\r\nUpgrade: h2c, websocket\r\n\
          Connection: Upgrade\r\nSec-WebSocket-Key: k\r\n\r\n",
    );
    let resp = c.read_response(true);
    assert_eq!(resp.status, 101, "{resp}");
    assert_eq!(resp.head.field("upgrade"), Some("websocket"), "{resp}");
    c.send(b"ping over the tunnel");
    let mut echoed = [0u8; 20];
    c.r.read_exact(&mut echoed)
        .expect("echo through the tunnel");
    assert_eq!(&echoed, b"ping over the tunnel");
    c.w.shutdown(Shutdown::Write)
        .expect("half-close the tunnel");
    let req = scene.seen().request;
    assert!(
        req.contains("\r\nUpgrade: websocket\r\nConnection: upgrade\r\n"),
        "{req}"
    );
    assert!(
        !req.contains("h2c") && req.contains("Sec-WebSocket-Key: k\r\n"),
        "{req}"
    );
}

/// A 101 to a protocol the client did not offer is a 502 (RFC 9110 15.2.2).
#[test]
fn a_101_to_another_protocol_is_a_502() {
    let scene = Scene::new(Then::Reply(
        b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n",
    ));
    let resp = scene
        .send(b"GET /data/ws HTTP/1.1\r\nHost: o\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
        .response();
    assert_eq!(resp.status, 502, "{resp}");
    assert!(resp.head.has_token("connection", "close"), "{resp}");
}

/// RFC 9112 3.2.2: a proxy replaces Host with the absolute-form target's
/// authority; the origin gets origin-form.
#[test]
fn absolute_form_is_forwarded_in_origin_form_with_its_host() {
    let scene = Scene::new(Then::Reply(
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
    ));
    let resp = scene
        .send(
            b"GET http://allowed.example:8080/data/a/../b?q=1 HTTP/1.1\r\nHost: decoy.example\r\n\r\n",
        )
        .response();
    assert_eq!(resp.status, 200, "{resp}");
    let req = scene.seen().request;
    let want = "GET /data/b?q=1 HTTP/1.1\r\nHost: allowed.example:8080\r\n";
    assert!(req.starts_with(want) && !req.contains("decoy"), "{req}");
}

/// RFC 3986 5.2.4: dot segments are resolved before the policy judges the
/// path, so `/data/../secret` is `/secret`, which no rule allows.
#[test]
fn dot_segments_cannot_walk_out_of_an_allowed_prefix() {
    let scene = Scene::new(Then::Reply(
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
    ));
    for target in [
        "/data/../secret",
        "/data/%2e%2e/secret",
        "/data/.%2E/secret",
    ] {
        let mut c = scene.send(
            format!("GET {target} HTTP/1.1\r\nHost: o\r\nConnection: close\r\n\r\n").as_bytes(),
        );
        let resp = c.response();
        assert_eq!(resp.status, 403, "{target}: {resp}");
    }
    for target in [
        "/data%2f..%2fsecret",
        "/data/..;/secret",
        "/data\\..\\secret",
    ] {
        let mut c = scene.send(format!("GET {target} HTTP/1.1\r\nHost: o\r\n\r\n").as_bytes());
        let resp = c.response();
        assert_eq!(resp.status, 400, "{target}: {resp}");
    }
    assert!(!scene.reached(), "nothing reached the origin");
}

/// RFC 9112 7.1: chunk framing leaves canonical (size lines without
/// leading zeros or extensions), and trailer fields that must not be
/// trailers are dropped (RFC 9110 6.5.1); Content-Length leaves canonical.
#[test]
fn request_framing_leaves_canonical() {
    let scene = Scene::new(Then::Reply(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"));
    let mut c = scene.send(
        b"POST /echo HTTP/1.1\r\nHost: o\r\nTransfer-Encoding: Chunked\r\n\r\n\
          005;name=\"v;1\"\r\nhello\r\n0\r\nContent-Length: 5\r\nHost: evil\r\nX-Checksum: 1\r\n\r\n",
    );
    let resp = c.response();
    assert_eq!(resp.status, 200, "{resp}");
    let conn = scene.seen();
    assert_eq!(
        conn.request,
        "POST /echo HTTP/1.1\r\nHost: o\r\nTransfer-Encoding: chunked\r\n\r\n\
         5\r\nhello\r\n0\r\nX-Checksum: 1\r\n\r\n"
    );

    let scene = Scene::new(Then::Reply(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"));
    let mut c =
        scene.send(b"POST /echo HTTP/1.1\r\nHost: o\r\nContent-Length: 010\r\n\r\n0123456789");
    assert_eq!(c.response().status, 200);
    assert_eq!(
        scene.seen().request,
        "POST /echo HTTP/1.1\r\nHost: o\r\nContent-Length: 10\r\n\r\n0123456789"
    );
}

/// Bytes past a response's framing (here a body on a HEAD response that
/// looks like a second response) are never read as the next response: the
/// upstream connection is closed, and the next request gets its own.
#[test]
fn bytes_after_a_response_are_never_the_next_response() {
    let scene = Scene::new(Then::Reply(
        b"HTTP/1.1 200 OK\r\nContent-Length: 46\r\n\r\n\
              HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nsmuggled",
    ));
    let mut c = scene.send(b"HEAD /data/1 HTTP/1.1\r\nHost: o\r\n\r\n");
    let head = c.read_response(true);
    assert_eq!(head.status, 200, "{head}");
    assert!(head.body.is_empty());
    c.send(b"GET /data/2 HTTP/1.1\r\nHost: o\r\n\r\n");
    let next = c.response();
    assert_ne!(
        next.body, b"smuggled",
        "the smuggled response was delivered"
    );
    assert!(scene.seen().request.starts_with("HEAD /data/1 "));
    assert!(
        scene.seen().request.starts_with("GET /data/2 "),
        "the GET went out on a new upstream connection"
    );
}

/// RFC 9112 6.1: no Transfer-Encoding to an HTTP/1.0 client. A chunked
/// response (from an origin that should not have sent one) reaches it
/// decoded and delimited by the close, under both engines.
#[test]
fn an_http10_client_gets_a_chunked_body_decoded() {
    for pipe in [None, Some(1 << 20)] {
        let scene = Scene::with_engine(
            Then::Reply(
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\
                  5;x=y\r\nhello\r\n7\r\n, world\r\n0\r\nX-Trailer: t\r\n\r\n",
            ),
            pipe,
        );
        let mut c = scene.send(b"GET /data/1 HTTP/1.0\r\nHost: o\r\n\r\n");
        let got = String::from_utf8(c.rest()).expect("utf-8");
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
