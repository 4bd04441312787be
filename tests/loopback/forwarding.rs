//! Body forwarding, proven byte-exact for every engine that ships (splice
//! and copy), on loopback: 2,000 exchanges verified by SHA-256 end to end,
//! with random sizes from 0 B to 64 MiB (sizes around pipe, socket-buffer and
//! page sizes included), random write splits on both sides, pipelining,
//! keep-alive reuse and concurrent connections; then aborts mid-body.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::SeedableRng;
use sha2::{Digest, Sha256};

use crate::common::h1::{self, Head};
use crate::common::stress::{body_sha, clients, hex, noise, split, MIB, NOISE_LEN};
use crate::harness::{flags, stress_origin, Client, Harness};

/// Reads a response head and hands its body to `f`.
fn read(c: &mut Client, f: impl FnMut(&[u8])) -> (Head, std::io::Result<()>) {
    let head = h1::read_head(&mut c.r)
        .expect("response head")
        .expect("a response");
    let framing = head.response_framing(false).expect("framing");
    let body = h1::read_body(&mut c.r, framing, u64::MAX, f);
    (head, body)
}

/// 2,000 exchanges over 4 concurrent keep-alive connections (re-opened every
/// 100 exchanges).
fn stress(engine: Option<usize>) {
    let origin = stress_origin();
    let proxy = Harness::with_engine(Some(origin.addr()), "", "", engine);
    let started = Instant::now();
    let verified = clients(proxy.addr, 4, 0);
    assert_eq!(verified, 2_000);
    eprintln!(
        "engine {engine:?}: 2,000 verified exchanges in {:?}",
        started.elapsed()
    );
}

#[test]
fn stress_splice() {
    stress(Some(MIB));
}

#[test]
fn stress_splice_small_pipe() {
    stress(Some(64 * 1024));
}

/// A one-page pipe runs out of slots all the time: readiness must survive
/// an EAGAIN that came from the pipe, not the socket (a hang otherwise).
#[test]
fn stress_splice_one_page_pipe() {
    stress(Some(4096));
}

#[test]
fn stress_copy() {
    stress(None);
}

/// An origin that dies mid-body, and a client that leaves mid-upload and
/// mid-download: no hang, the client connection is closed, the access log
/// carries the right flag.
fn aborts(engine: Option<usize>) {
    let origin = stress_origin();
    let proxy = Harness::with_engine(Some(origin.addr()), "", "", engine);

    // Origin resets after half of a 4 MiB body: the client sees a short
    // body and a closed connection; flag UC.
    let mut c = proxy.connect();
    c.send(b"GET /data/abort/4194304 HTTP/1.1\r\nHost: o\r\n\r\n");
    let mut got = 0;
    let (head, body) = read(&mut c, |b| got += b.len());
    assert_eq!(head.field("content-length"), Some("4194304"), "{head}");
    let err = body.expect_err("short body");
    assert_eq!(err.kind(), std::io::ErrorKind::UnexpectedEof, "{err}");
    assert!(got < 4 * MIB);
    let line = proxy.log_line_with_status(200);
    assert!(flags(&line).contains(&"UC"), "{line}");

    // Client leaves mid-upload: flag DC, nothing hangs.
    let mut s = TcpStream::connect(proxy.addr).expect("connect");
    s.write_all(b"POST /data/upload HTTP/1.1\r\nHost: o\r\nContent-Length: 8388608\r\n\r\n")
        .expect("write");
    s.write_all(&noise()[..MIB]).expect("write part");
    s.shutdown(Shutdown::Both).expect("shutdown");
    drop(s);
    // Client leaves mid-download of 32 MiB.
    let mut s = TcpStream::connect(proxy.addr).expect("connect");
    s.write_all(b"GET /data/blob/7/33554432/c HTTP/1.1\r\nHost: o\r\n\r\n")
        .expect("write");
    let mut first = [0u8; 4096];
    let _ = s.read(&mut first).expect("some response bytes");
    drop(s);
    let lines = proxy.wait_log_lines(3);
    let dc = lines.iter().filter(|l| flags(l).contains(&"DC")).count();
    assert_eq!(dc, 2, "{lines:?}");
    // The proxy still serves.
    let mut c = proxy.connect();
    c.send(b"GET /data/blob/3/100000/k HTTP/1.1\r\nHost: o\r\n\r\n");
    let mut h = Sha256::new();
    read(&mut c, |b| h.update(b)).1.expect("body");
    assert_eq!(<[u8; 32]>::from(h.finalize()), body_sha(3, 100_000));
}

#[test]
fn aborts_splice() {
    aborts(Some(MIB));
}

#[test]
fn aborts_copy() {
    aborts(None);
}

/// A client that expects 100 but sends its body anyway (RFC 9110 10.1.1),
/// to an origin that never sends 100 and just waits for the body: the body
/// is forwarded as soon as it arrives, not after the upstream timeout.
#[test]
fn an_expect_100_body_sent_without_waiting_is_forwarded() {
    let origin = stress_origin();
    let proxy = Harness::with_engine(Some(origin.addr()), "", "", Some(MIB));
    let mut c = proxy.connect();
    let len = 100_000;
    c.send(
        format!(
            "POST /data/upload HTTP/1.1\r\nHost: o\r\nExpect: 100-continue\r\nContent-Length: {len}\r\n\r\n"
        )
        .as_bytes(),
    );
    std::thread::sleep(Duration::from_millis(300));
    c.send(&noise()[..len]);
    let started = Instant::now();
    let mut digest = Vec::new();
    let (head, body) = read(&mut c, |b| digest.extend_from_slice(b));
    assert_eq!(head.status().ok(), Some(200), "{head}");
    body.expect("digest");
    assert_eq!(
        String::from_utf8_lossy(&digest),
        hex(&Sha256::digest(&noise()[..len]))
    );
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
}

/// After a 101 the connection is a tunnel: 4 MiB written in random splits
/// come back intact, and each side's EOF is passed on.
fn tunnel(engine: Option<usize>) {
    let origin = stress_origin();
    let proxy = Harness::with_engine(Some(origin.addr()), "", "", engine);
    let mut c = proxy.connect();
    c.send(b"GET /data/echo HTTP/1.1\r\nHost: o\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n");
    let head = c.read_response(true);
    assert_eq!(head.status, 101, "{head}");
    let (mut w, mut r) = (c.w, c.r);
    let data: Vec<u8> = (0..4 * MIB).map(|i| noise()[i % NOISE_LEN]).collect();
    let sent = data.clone();
    let writer = std::thread::spawn(move || {
        let mut rng = StdRng::seed_from_u64(9);
        let mut off = 0;
        while off < sent.len() {
            let n = split(&mut rng).min(sent.len() - off);
            w.write_all(&sent[off..off + n]).expect("write");
            off += n;
        }
        w.shutdown(Shutdown::Write).expect("half-close");
    });
    let mut back = Vec::new();
    r.read_to_end(&mut back).expect("echo until EOF");
    writer.join().expect("writer");
    assert_eq!(back.len(), data.len());
    assert!(back == data, "tunnel corrupted the stream");
}

#[test]
fn tunnel_splice() {
    tunnel(Some(MIB));
}

#[test]
fn tunnel_copy() {
    tunnel(None);
}
