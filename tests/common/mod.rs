//! Support code both test tiers compile (tests/README.md): the tests' own
//! HTTP/1.1 codec ([`h1`]), the threaded test origin ([`origin`]) and the
//! SHA-256 body stress workload ([`stress`]). Each tier binds their
//! listeners where it runs them (127.0.0.1 for the loopback tier, a test
//! namespace for the kernel tier) and hands them over.
//!
//! Everything here is bounded in time and stops in `Drop`, so a panicking
//! test leaves no thread or socket behind.

pub mod h1;
pub mod origin;
pub mod stress;
pub mod tls;

use std::io::{self, Read};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// A wait for something to happen, stretched by the factor in
/// `SOCKWARDEN_TEST_PATIENCE` (default 1). The kernel matrix (vmtests/) runs
/// the kernel tier under TCG emulation, many times slower than the host.
/// Only waits are stretched, never a bound that a test measures.
pub fn patience(wait: Duration) -> Duration {
    let factor = std::env::var("SOCKWARDEN_TEST_PATIENCE")
        .ok()
        .and_then(|v| v.parse::<u32>().ok())
        .filter(|&f| f >= 1)
        .unwrap_or(1);
    wait * factor
}

/// The read, write and connect timeout of the test origins' and clients'
/// blocking sockets (30 s, stretched by [`patience`]): long enough for a
/// 64 MiB body on an emulated machine, and for an idle keep-alive
/// connection that a test counts never to time out under it.
pub fn io_timeout() -> Duration {
    patience(Duration::from_secs(30))
}

/// Calls `probe` every 20 ms until `done` holds for what it returns or
/// `wait` (stretched by [`patience`]) has passed; returns its last answer.
pub fn wait_for<T>(wait: Duration, mut probe: impl FnMut() -> T, done: impl Fn(&T) -> bool) -> T {
    let deadline = Instant::now() + patience(wait);
    loop {
        let got = probe();
        if done(&got) || Instant::now() >= deadline {
            return got;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The value of `series` (name and labels, as exported) in a Prometheus
/// text exposition; 0 when absent.
pub fn metric_value(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(series)?
                .strip_prefix(' ')?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or(0.0)
}

/// Locks `m`, taking the data of a poisoned lock too (a test thread
/// panicked: the test fails anyway).
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A blocking reader that waits through read timeouts: a read that fails
/// with WouldBlock or TimedOut (a socket timeout, or the spurious EAGAIN of
/// a socket in a sockhash, which ../shared/ENVIRONMENT.md saw on every
/// kernel) is tried again until `give_up`, given the instant that read
/// began, says to stop; then the error is returned. With a short socket
/// timeout this polls a stop flag.
pub struct Patient<R, F> {
    pub inner: R,
    pub give_up: F,
}

impl<R: Read, F: Fn(Instant) -> bool> Read for Patient<R, F> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let started = Instant::now();
        loop {
            match self.inner.read(buf) {
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) && !(self.give_up)(started) => {}
                r => return r,
            }
        }
    }
}

/// Most connection threads a [`Server`] keeps alive at once; further
/// connections are closed at accept.
const MAX_LIVE_CONNS: usize = 512;
/// Longest a [`Server`] accepts (a backstop: dropping it stops it).
const MAX_SERVER_LIFETIME: Duration = Duration::from_secs(3600);

#[derive(Default)]
struct Conns {
    stop: AtomicBool,
    live: Mutex<Vec<(TcpStream, JoinHandle<()>)>>,
}

/// A threaded TCP server for tests: every connection is served by `serve`
/// on a thread of its own, given the (blocking) stream and a flag that is
/// raised when the server stops. Dropping the server stops accepting,
/// shuts every open connection down (so blocked reads return) and joins
/// every thread.
pub struct Server {
    addr: SocketAddr,
    conns: Arc<Conns>,
    accept: Option<JoinHandle<()>>,
}

impl Server {
    pub fn start<F>(listener: TcpListener, serve: F) -> Server
    where
        F: Fn(TcpStream, &AtomicBool) + Send + Sync + 'static,
    {
        listener
            .set_nonblocking(true)
            .expect("server: set_nonblocking");
        let addr = listener.local_addr().expect("server: local_addr");
        let conns = Arc::new(Conns::default());
        let (sh, serve) = (conns.clone(), Arc::new(serve));
        let accept = std::thread::Builder::new()
            .name(format!("server-{addr}"))
            .spawn(move || {
                let deadline = Instant::now() + MAX_SERVER_LIFETIME;
                while !sh.stop.load(Ordering::SeqCst) && Instant::now() < deadline {
                    let Ok((stream, _)) = listener.accept() else {
                        // WouldBlock (nothing pending) or a transient error.
                        std::thread::sleep(Duration::from_millis(5));
                        continue;
                    };
                    let mut live = lock(&sh.live);
                    live.retain(|(_, h)| !h.is_finished());
                    if live.len() >= MAX_LIVE_CONNS {
                        continue; // drops (closes) the stream
                    }
                    let (Ok(handle), Ok(())) = (stream.try_clone(), stream.set_nonblocking(false))
                    else {
                        continue;
                    };
                    let (serve, sh2) = (serve.clone(), sh.clone());
                    if let Ok(t) = std::thread::Builder::new()
                        .name(format!("server-{addr}-conn"))
                        .spawn(move || serve(stream, &sh2.stop))
                    {
                        live.push((handle, t));
                    }
                }
            })
            .expect("server: spawn accept thread");
        Server {
            addr,
            conns,
            accept: Some(accept),
        }
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.conns.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.accept.take() {
            let _ = h.join();
        }
        let live = std::mem::take(&mut *lock(&self.conns.live));
        for (s, _) in &live {
            let _ = s.shutdown(Shutdown::Both);
        }
        for (_, h) in live {
            let _ = h.join();
        }
    }
}
