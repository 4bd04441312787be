//! The SHA-256 stress workload shared by the forwarding tiers: a
//! deterministic noise source for bodies, an origin that serves and hashes
//! them, and a client that runs random exchanges (sizes 0 B to 64 MiB with
//! page, pipe and socket-buffer edges, random write splits, pipelining,
//! keep-alive) and verifies every body end to end.

use std::io::{BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::OnceLock;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sha2::{Digest, Sha256};

use super::h1::{self, HeadWriter};
use super::{io_timeout, Patient, Server};

pub const NOISE_LEN: usize = 1 << 20;

pub const MIB: usize = 1 << 20;

/// 1 MiB of deterministic pseudo-random bytes; body (seed, len) is the
/// window starting at `seed % NOISE_LEN`, wrapping around.
pub fn noise() -> &'static [u8] {
    static NOISE: OnceLock<Vec<u8>> = OnceLock::new();
    NOISE.get_or_init(|| {
        let mut rng = StdRng::seed_from_u64(0x5357);
        (0..NOISE_LEN).map(|_| rng.random()).collect()
    })
}

/// Calls `f` with consecutive slices of body (seed, len), each at most `max`.
fn for_body_slices(
    seed: u64,
    len: usize,
    mut cut: impl FnMut() -> usize,
    mut f: impl FnMut(&[u8]),
) {
    let noise = noise();
    let mut off = (seed as usize) % NOISE_LEN;
    let mut left = len;
    while left > 0 {
        let n = cut().clamp(1, left).min(NOISE_LEN - off);
        f(&noise[off..off + n]);
        off = (off + n) % NOISE_LEN;
        left -= n;
    }
}

pub fn body_sha(seed: u64, len: usize) -> [u8; 32] {
    let mut h = Sha256::new();
    for_body_slices(seed, len, || NOISE_LEN, |s| h.update(s));
    h.finalize().into()
}

pub fn hex(d: &[u8]) -> String {
    d.iter().map(|b| format!("{b:02x}")).collect()
}

/// Random write sizes: mostly small and odd, sometimes large.
pub fn split(rng: &mut StdRng) -> usize {
    match rng.random_range(0..10) {
        0..=3 => rng.random_range(1..64),
        4..=7 => rng.random_range(64..16 * 1024),
        _ => rng.random_range(16 * 1024..512 * 1024),
    }
}

/// Body sizes: small, edges of pipe/socket-buffer/page sizes, medium, large.
fn body_size(rng: &mut StdRng) -> usize {
    const EDGES: [usize; 8] = [4096, 65536, 131072, 212992, 262144, 425984, MIB, 2 * MIB];
    match rng.random_range(0..100) {
        0..=39 => rng.random_range(0..4096),
        40..=69 => {
            let e = EDGES[rng.random_range(0..EDGES.len())];
            (e + rng.random_range(0..3)).saturating_sub(1)
        }
        70..=97 => {
            let exp = rng.random_range(12.0..20.0f64);
            2f64.powf(exp) as usize
        }
        _ => {
            let exp = rng.random_range(20.0..26.0f64);
            (2f64.powf(exp) as usize).min(64 * MIB)
        }
    }
}

/// Writes body (seed, len), chunked or not, in random splits.
fn write_body(
    w: &mut impl Write,
    seed: u64,
    len: usize,
    chunked: bool,
    rng: &mut StdRng,
) -> std::io::Result<()> {
    let mut err = Ok(());
    for_body_slices(
        seed,
        len,
        || split(rng),
        |s| {
            if err.is_ok() {
                err = if chunked {
                    h1::write_chunk(w, s)
                } else {
                    w.write_all(s)
                };
            }
        },
    );
    err?;
    if chunked {
        h1::write_last_chunk(w)?;
    }
    w.flush()
}

/// The stress origin: `GET /data/echo` with an Upgrade header switches
/// protocols (101) and echoes every byte until EOF;
/// `GET /data/blob/<seed>/<len>/<c|k>` answers body
/// (seed, len) with Content-Length (c) or chunked (k); `POST /data/upload`
/// answers the hex SHA-256 of what it received; `GET /data/abort/<len>`
/// sends half of a `len`-byte body and resets the connection.
pub struct StressOrigin {
    server: Server,
}

impl StressOrigin {
    /// Serves on `listener` (bound by the caller, in whatever namespace).
    pub fn serve(listener: TcpListener) -> StressOrigin {
        StressOrigin {
            server: Server::start(listener, |s, _| serve(s)),
        }
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.server.addr()
    }
}

/// The head and framing of a response with a body of `len` bytes.
fn blob_head(len: usize, chunked: bool) -> Vec<u8> {
    let h = HeadWriter::response(1, 200);
    if chunked {
        h.field("Transfer-Encoding", "chunked").finish()
    } else {
        h.field("Content-Length", len).finish()
    }
}

fn serve(stream: TcpStream) {
    let _ = stream.set_read_timeout(Some(io_timeout()));
    let _ = stream.set_write_timeout(Some(io_timeout()));
    let Ok(read_half) = stream.try_clone() else {
        return;
    };
    let mut r = BufReader::new(read_half);
    let mut w = stream;
    let mut rng = StdRng::seed_from_u64(u64::from(w.local_addr().map_or(0, |a| a.port())));
    // Bounded: a connection serves at most 10,000 requests.
    for _ in 0..10_000 {
        let Ok(Some(head)) = h1::read_head(&mut r) else {
            return;
        };
        let Ok(req) = head.request_line() else {
            return;
        };
        let parts: Vec<&str> = req.target.trim_start_matches('/').split('/').collect();
        let result = match parts.as_slice() {
            ["data", "blob", seed, len, mode] => {
                let (seed, len) = (seed.parse().unwrap_or(0), len.parse().unwrap_or(0));
                let chunked = *mode == "k";
                w.write_all(&blob_head(len, chunked))
                    .and_then(|()| write_body(&mut w, seed, len, chunked, &mut rng))
            }
            ["data", "upload"] => {
                let mut h = Sha256::new();
                head.request_framing()
                    .and_then(|framing| h1::read_body(&mut r, framing, u64::MAX, |s| h.update(s)))
                    .and_then(|()| {
                        let digest = hex(&h.finalize());
                        let head = HeadWriter::response(1, 200)
                            .field("Content-Length", digest.len())
                            .finish();
                        w.write_all(&head)
                            .and_then(|()| w.write_all(digest.as_bytes()))
                    })
            }
            ["data", "echo"] => {
                // 101, then every byte back until the client's EOF.
                let head = HeadWriter::response(1, 101)
                    .field("Connection", "Upgrade")
                    .field("Upgrade", "echo")
                    .finish();
                let _ = w.write_all(&head);
                let _ = std::io::copy(&mut r, &mut w);
                let _ = w.shutdown(std::net::Shutdown::Write);
                return;
            }
            ["data", "abort", len] => {
                let len: usize = len.parse().unwrap_or(0);
                let _ = w.write_all(&blob_head(len, false));
                let _ = write_body(&mut w, 1, len / 2, false, &mut rng);
                let _ = nix::sys::socket::setsockopt(
                    &w,
                    nix::sys::socket::sockopt::Linger,
                    &libc::linger {
                        l_onoff: 1,
                        l_linger: 0,
                    },
                );
                return;
            }
            _ => w.write_all(
                &HeadWriter::response(1, 404)
                    .field("Content-Length", 0)
                    .finish(),
            ),
        };
        if result.is_err() {
            return;
        }
    }
}

/// Reads a response of `r` and hands its body to `f`; panics unless it is
/// a 200.
fn read_ok<R: std::io::BufRead>(r: &mut R, f: impl FnMut(&[u8])) -> std::io::Result<()> {
    let head = h1::read_head(r)?.ok_or(std::io::ErrorKind::UnexpectedEof)?;
    assert_eq!(head.status()?, 200, "{head}");
    h1::read_body(r, head.response_framing(false)?, u64::MAX, f)
}

/// One client connection's worth of exchanges; returns how many it verified.
fn client(proxy: SocketAddr, seed: u64, exchanges: usize) -> usize {
    let mut rng = StdRng::seed_from_u64(seed);
    let stream = TcpStream::connect_timeout(&proxy, io_timeout()).expect("connect proxy");
    stream
        .set_read_timeout(Some(io_timeout()))
        .expect("timeout");
    stream
        .set_write_timeout(Some(io_timeout()))
        .expect("timeout");
    let mut w = stream.try_clone().expect("clone");
    // A socket the sockmap engine links may fail a blocking read with
    // EAGAIN before its timeout: wait the whole timeout out.
    let patient = Patient {
        inner: stream,
        give_up: |started: std::time::Instant| started.elapsed() >= io_timeout(),
    };
    let mut r = BufReader::with_capacity(rng.random_range(1..65536), patient);
    let mut done = 0;
    while done < exchanges {
        // Sometimes pipeline up to 3 GETs: all requests first, then the responses.
        let batch = if rng.random_range(0..10) == 0 {
            rng.random_range(2..=3).min(exchanges - done)
        } else {
            1
        };
        if batch > 1 || rng.random_range(0..2) == 0 {
            let wanted: Vec<(u64, usize, bool)> = (0..batch)
                .map(|_| (rng.random(), body_size(&mut rng), rng.random()))
                .collect();
            let mut reqs = Vec::new();
            for (s, len, chunked) in &wanted {
                let mode = if *chunked { "k" } else { "c" };
                let target = format!("/data/blob/{s}/{len}/{mode}");
                reqs.extend(
                    HeadWriter::request("GET", &target)
                        .field("Host", "origin.test")
                        .finish(),
                );
            }
            let mut off = 0;
            while off < reqs.len() {
                let n = split(&mut rng).min(reqs.len() - off);
                w.write_all(&reqs[off..off + n]).expect("write request");
                off += n;
            }
            for (s, len, _) in wanted {
                let mut h = Sha256::new();
                let mut got = 0usize;
                read_ok(&mut r, |b| {
                    got += b.len();
                    h.update(b);
                })
                .unwrap_or_else(|e| panic!("GET body of {len} bytes: {e} after {got}"));
                assert_eq!(got, len);
                assert_eq!(
                    <[u8; 32]>::from(h.finalize()),
                    body_sha(s, len),
                    "GET {s}/{len} corrupted"
                );
            }
            done += batch;
        } else {
            let (s, len, chunked) = (
                rng.random::<u64>(),
                body_size(&mut rng),
                rng.random::<bool>(),
            );
            let h = HeadWriter::request("POST", "/data/upload").field("Host", "origin.test");
            let head = if chunked {
                h.field("Transfer-Encoding", "chunked")
            } else {
                h.field("Content-Length", len)
            };
            w.write_all(&head.finish()).expect("write head");
            write_body(&mut w, s, len, chunked, &mut rng).expect("write body");
            let mut digest = Vec::new();
            read_ok(&mut r, |b| digest.extend_from_slice(b)).expect("digest");
            assert_eq!(
                String::from_utf8_lossy(&digest),
                hex(&body_sha(s, len)),
                "POST {len} bytes corrupted"
            );
            done += 1;
        }
    }
    done
}

/// `threads` concurrent stress clients against `addr`, each running 5
/// connections of 100 exchanges (seeds from `seed`); returns how many
/// exchanges were verified.
pub fn clients(addr: SocketAddr, threads: u64, seed: u64) -> usize {
    let workers: Vec<_> = (0..threads)
        .map(|t| {
            std::thread::spawn(move || {
                (0..5u64)
                    .map(|c| client(addr, seed + t * 1000 + c, 100))
                    .sum::<usize>()
            })
        })
        .collect();
    workers
        .into_iter()
        .map(|w| w.join().expect("client thread"))
        .sum()
}
