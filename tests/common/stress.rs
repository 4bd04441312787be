//! The SHA-256 stress workload shared by the forwarding tiers: a
//! deterministic noise source for bodies, an origin that serves and hashes
//! them, and a client that runs random exchanges (sizes 0 B to 64 MiB with
//! page, pipe and socket-buffer edges, random write splits, pipelining,
//! keep-alive) and verifies every body end to end.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sha2::{Digest, Sha256};

use super::netns::in_netns;

pub const NOISE_LEN: usize = 1 << 20;

/// Socket timeouts of the stress origin and client, stretched by
/// [`super::patience`].
pub fn io_timeout() -> Duration {
    super::patience(Duration::from_secs(30))
}

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

/// Reads a head (through CRLFCRLF); None at a clean EOF.
pub fn read_head(r: &mut impl BufRead) -> std::io::Result<Option<String>> {
    let mut head = Vec::new();
    loop {
        let mut line = Vec::new();
        if r.read_until(b'\n', &mut line)? == 0 {
            return if head.is_empty() {
                Ok(None)
            } else {
                Err(std::io::ErrorKind::UnexpectedEof.into())
            };
        }
        head.extend_from_slice(&line);
        if line == b"\r\n" {
            return Ok(Some(String::from_utf8_lossy(&head).into_owned()));
        }
    }
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().skip(1).find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// Reads a body framed by `head`'s Content-Length or chunked encoding,
/// feeding it to `f`.
pub fn read_body(
    r: &mut impl BufRead,
    head: &str,
    mut f: impl FnMut(&[u8]),
) -> std::io::Result<()> {
    let mut buf = vec![0u8; 64 * 1024];
    let mut take =
        |r: &mut dyn BufRead, mut n: usize, f: &mut dyn FnMut(&[u8])| -> std::io::Result<()> {
            while n > 0 {
                let k = r.read(&mut buf[..n.min(64 * 1024)])?;
                if k == 0 {
                    return Err(std::io::ErrorKind::UnexpectedEof.into());
                }
                f(&buf[..k]);
                n -= k;
            }
            Ok(())
        };
    if header(head, "transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        loop {
            let mut line = String::new();
            r.read_line(&mut line)?;
            let size = usize::from_str_radix(line.trim(), 16)
                .map_err(|_| std::io::Error::other(format!("bad chunk size {line:?}")))?;
            if size == 0 {
                let mut end = String::new();
                r.read_line(&mut end)?;
                return Ok(());
            }
            take(r, size, &mut f)?;
            let mut crlf = [0u8; 2];
            r.read_exact(&mut crlf)?;
        }
    }
    let len: usize = header(head, "content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    take(r, len, &mut f)
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
                    write!(w, "{:x}\r\n", s.len())
                        .and_then(|()| w.write_all(s))
                        .and_then(|()| w.write_all(b"\r\n"))
                } else {
                    w.write_all(s)
                };
            }
        },
    );
    err?;
    if chunked {
        w.write_all(b"0\r\n\r\n")?;
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
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
    accept: Option<JoinHandle<()>>,
}

impl StressOrigin {
    /// On an ephemeral loopback port of this namespace.
    pub fn start() -> StressOrigin {
        Self::listen(TcpListener::bind("127.0.0.1:0").expect("bind origin"))
    }

    /// On `addr` in network namespace `netns`.
    pub fn start_in(netns: &Path, addr: SocketAddr) -> StressOrigin {
        let listener = in_netns(netns, move || TcpListener::bind(addr))
            .unwrap_or_else(|e| panic!("bind origin {addr}: {e}"));
        Self::listen(listener)
    }

    fn listen(listener: TcpListener) -> StressOrigin {
        let addr = listener.local_addr().expect("addr");
        listener.set_nonblocking(true).expect("nonblocking");
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let accept = std::thread::spawn(move || {
            let mut conns = Vec::new();
            while !flag.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((s, _)) => conns.push(std::thread::spawn(move || serve(s))),
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
            drop(conns);
        });
        StressOrigin {
            addr,
            stop,
            accept: Some(accept),
        }
    }
}

impl Drop for StressOrigin {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
    }
}

fn serve(stream: TcpStream) {
    let _ = stream.set_nonblocking(false);
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
        let Ok(Some(head)) = read_head(&mut r) else {
            return;
        };
        let target = head.split_whitespace().nth(1).unwrap_or("").to_string();
        let parts: Vec<&str> = target.trim_start_matches('/').split('/').collect();
        let result = match parts.as_slice() {
            ["data", "blob", seed, len, mode] => {
                let (seed, len) = (seed.parse().unwrap_or(0), len.parse().unwrap_or(0));
                let chunked = *mode == "k";
                let framing = if chunked {
                    "Transfer-Encoding: chunked".to_string()
                } else {
                    format!("Content-Length: {len}")
                };
                write!(w, "HTTP/1.1 200 OK\r\n{framing}\r\n\r\n")
                    .and_then(|()| write_body(&mut w, seed, len, chunked, &mut rng))
            }
            ["data", "upload"] => {
                let mut h = Sha256::new();
                read_body(&mut r, &head, |s| h.update(s)).and_then(|()| {
                    let digest = hex(&h.finalize());
                    write!(
                        w,
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{digest}",
                        digest.len()
                    )
                })
            }
            ["data", "echo"] => {
                // 101, then every byte back until the client's EOF.
                let _ = write!(
                    w,
                    "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n"
                );
                let _ = std::io::copy(&mut r, &mut w);
                let _ = w.shutdown(std::net::Shutdown::Write);
                return;
            }
            ["data", "abort", len] => {
                let len: usize = len.parse().unwrap_or(0);
                let _ = write!(w, "HTTP/1.1 200 OK\r\nContent-Length: {len}\r\n\r\n");
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
            _ => write!(w, "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"),
        };
        if result.is_err() {
            return;
        }
    }
}

/// A blocking socket whose reads wait out their whole timeout: on a socket
/// in a sockhash (the sockmap engine links the workload's), the kernel's
/// tcp_bpf_recvmsg can return EAGAIN before SO_RCVTIMEO has passed (seen on
/// 6.1; ../shared/ENVIRONMENT.md saw it on every kernel tried).
struct Patient(TcpStream);

impl std::io::Read for Patient {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let started = std::time::Instant::now();
        loop {
            match self.0.read(buf) {
                Err(e)
                    if e.kind() == std::io::ErrorKind::WouldBlock
                        && started.elapsed() < io_timeout() => {}
                r => return r,
            }
        }
    }
}

/// One client connection's worth of exchanges; returns how many it verified.
pub fn client(proxy: SocketAddr, seed: u64, exchanges: usize) -> usize {
    let mut rng = StdRng::seed_from_u64(seed);
    let stream = TcpStream::connect(proxy).expect("connect proxy");
    stream
        .set_read_timeout(Some(io_timeout()))
        .expect("timeout");
    stream
        .set_write_timeout(Some(io_timeout()))
        .expect("timeout");
    let mut w = stream.try_clone().expect("clone");
    let mut r = BufReader::with_capacity(rng.random_range(1..65536), Patient(stream));
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
                reqs.extend_from_slice(
                    format!(
                        "GET /data/blob/{s}/{len}/{mode} HTTP/1.1\r\nHost: origin.test\r\n\r\n"
                    )
                    .as_bytes(),
                );
            }
            let mut off = 0;
            while off < reqs.len() {
                let n = split(&mut rng).min(reqs.len() - off);
                w.write_all(&reqs[off..off + n]).expect("write request");
                off += n;
            }
            for (s, len, _) in wanted {
                let head = read_head(&mut r).expect("response head").expect("response");
                assert!(head.starts_with("HTTP/1.1 200"), "{head}");
                let mut h = Sha256::new();
                let mut got = 0usize;
                read_body(&mut r, &head, |b| {
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
            let framing = if chunked {
                "Transfer-Encoding: chunked".to_string()
            } else {
                format!("Content-Length: {len}")
            };
            write!(
                w,
                "POST /data/upload HTTP/1.1\r\nHost: origin.test\r\n{framing}\r\n\r\n"
            )
            .expect("write head");
            write_body(&mut w, s, len, chunked, &mut rng).expect("write body");
            let head = read_head(&mut r).expect("response head").expect("response");
            assert!(head.starts_with("HTTP/1.1 200"), "{head}");
            let mut digest = Vec::new();
            read_body(&mut r, &head, |b| digest.extend_from_slice(b)).expect("digest");
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
