//! Upstream connections and their pool.
//!
//! Pooled per (original destination, policy). A connection goes back to the
//! pool only when the server allowed it (no `Connection: close`, HTTP/1.1 or
//! keep-alive, body framed by length or chunks), it has served fewer than its
//! request limit, and nothing is left unread. Idle connections expire after
//! the configured idle timeout, or sooner when the server announced a shorter
//! `Keep-Alive: timeout`; one the server closed while idle is noticed by a
//! non-blocking peek before it is handed out (after 50 ms of idleness;
//! sooner than that, the idle-close race retry covers it).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use nix::errno::Errno as NixErrno;
use nix::sys::socket::{recv, setsockopt, sockopt, MsgFlags};
use tokio::net::TcpSocket;

use super::exchange::ConnUse;
use super::stream::BufStream;
use super::transport::{Transport, UpStream};
use super::KernelState;
use crate::metrics::{self, CloseReason, Errno};
use crate::policy::PolicyId;
use crate::tls::ktls::stream::Taken;

static NEXT_UPSTREAM_ID: AtomicU64 = AtomicU64::new(1);

/// The source identity a pooled connection was opened with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SourceKey {
    Node,
    Ip(IpAddr),
    IpPort(SocketAddr),
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PoolKey {
    pub dst: SocketAddr,
    pub policy: PolicyId,
    pub source: SourceKey,
    /// The name a TLS connection was verified for; None: plain TCP.
    pub tls: Option<rustls::pki_types::ServerName<'static>>,
}

/// The local address an upstream socket binds before connect().
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bind {
    /// The node's address and a kernel-picked port.
    Node,
    /// A (possibly non-local) IP; the kernel picks a port unique for the
    /// 4-tuple at connect time (IP_BIND_ADDRESS_NO_PORT).
    Ip(IpAddr),
    /// A (possibly non-local) IP and exactly this port, with SO_REUSEADDR.
    IpPort(SocketAddr),
}

/// How a new connection from `source` binds: `fresh` (a retry) and `held`
/// (the in-use tuple map holds the workload's 4-tuple) turn an exact port
/// into a kernel-picked one. Returns the bind and whether it is a fallback
/// from the workload's own port.
pub fn bind_for(source: SourceKey, fresh: bool, held: bool) -> (Bind, bool) {
    match source {
        SourceKey::Node => (Bind::Node, false),
        SourceKey::Ip(ip) => (Bind::Ip(ip), false),
        SourceKey::IpPort(addr) if fresh => (Bind::Ip(addr.ip()), false),
        SourceKey::IpPort(addr) if held => (Bind::Ip(addr.ip()), true),
        SourceKey::IpPort(addr) => (Bind::IpPort(addr), false),
    }
}

const SO_NETNS_COOKIE: libc::c_int = 71;

/// The cookie of the network namespace `socket` lives in (SO_NETNS_COOKIE,
/// Linux 5.14+), as bpf_get_netns_cookie() reports it.
pub fn netns_cookie(socket: BorrowedFd<'_>) -> std::io::Result<u64> {
    let mut cookie: u64 = 0;
    let mut len = size_of::<u64>() as libc::socklen_t;
    // SAFETY: valid fd, and a u64 out-buffer whose size is passed in len.
    let rc = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_NETNS_COOKIE,
            (&mut cookie as *mut u64).cast(),
            &mut len,
        )
    };
    if rc == 0 {
        Ok(cookie)
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// The cookie of this process's network namespace (0 if unknown: the tuple
/// map then never matches, and preserve-ip-port relies on its fallback).
pub fn own_netns_cookie() -> u64 {
    use nix::sys::socket::{socket, AddressFamily, SockFlag, SockType};
    socket(
        AddressFamily::Inet,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .and_then(|fd| {
        netns_cookie(fd.as_fd()).map_err(|e| nix::Error::from_raw(e.raw_os_error().unwrap_or(0)))
    })
    .unwrap_or_else(|e| {
        tracing::warn!(error = %e, "reading this namespace's cookie (SO_NETNS_COOKIE)");
        0
    })
}

/// IP_TRANSPARENT (IPv4) or IPV6_TRANSPARENT: lets the socket bind and use a
/// non-local address. Needs CAP_NET_ADMIN.
fn set_transparent(socket: &TcpSocket, v6: bool) -> std::io::Result<()> {
    if !v6 {
        return setsockopt(socket, sockopt::IpTransparent, &true).map_err(std::io::Error::from);
    }
    let on: libc::c_int = 1;
    // SAFETY: valid fd, and a c_int option value whose size is passed.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_IPV6,
            libc::IPV6_TRANSPARENT,
            (&on as *const libc::c_int).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// A socket for `dst`, bound as `bind` says.
fn prepare(dst: SocketAddr, bind: Bind) -> std::io::Result<TcpSocket> {
    let socket = if dst.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    match bind {
        Bind::Node => {}
        Bind::Ip(ip) => {
            set_transparent(&socket, dst.is_ipv6())?;
            if dst.is_ipv4() {
                setsockopt(&socket, sockopt::IpBindAddressNoPort, &true)?;
            }
            socket.bind(SocketAddr::new(ip, 0))?;
        }
        Bind::IpPort(addr) => {
            set_transparent(&socket, dst.is_ipv6())?;
            socket.set_reuseaddr(true)?;
            socket.bind(addr)?;
        }
    }
    Ok(socket)
}

/// An upstream connection over transport `T`.
pub struct UpConn<T: Transport = UpStream> {
    pub id: u64,
    pub stream: BufStream<T>,
    /// What it has carried, and what its server allows.
    pub usage: ConnUse,
    /// Whether this connection came from the pool.
    pub reused: bool,
}

/// Why a connection attempt failed.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("upstream connect failed: {errno}")]
    Io {
        errno: Errno,
        #[source]
        source: std::io::Error,
    },
    #[error("upstream connect failed: ETIMEDOUT (no answer within {0:?})")]
    Timeout(Duration),
}

impl ConnectError {
    pub fn errno(&self) -> Errno {
        match self {
            ConnectError::Io { errno, .. } => *errno,
            ConnectError::Timeout(_) => Errno::ETIMEDOUT,
        }
    }
}

/// Opens an upstream connection from `bind` to `dst`; the socket is marked
/// as an upstream in `kernel` before connect(), so its tuple is tracked
/// from the SYN on.
pub async fn connect(
    dst: SocketAddr,
    bind: Bind,
    wait: Duration,
    kernel: &dyn KernelState,
    pipe_size: Option<usize>,
) -> Result<UpConn, ConnectError> {
    let io_err = |source: std::io::Error| ConnectError::Io {
        errno: Errno::of(&source),
        source,
    };
    let began = std::time::Instant::now();
    let result = match prepare(dst, bind) {
        Err(e) => Err(io_err(e)),
        Ok(socket) => {
            kernel.mark_upstream(socket.as_fd());
            match tokio::time::timeout(wait, socket.connect(dst)).await {
                Err(_) => Err(ConnectError::Timeout(wait)),
                Ok(Err(source)) => Err(io_err(source)),
                Ok(Ok(s)) => Ok(s),
            }
        }
    };
    match result {
        Ok(stream) => {
            let _ = stream.set_nodelay(true);
            metrics::upstream_opened(began.elapsed());
            Ok(UpConn {
                id: NEXT_UPSTREAM_ID.fetch_add(1, Ordering::Relaxed),
                stream: BufStream::new(UpStream::Plain(stream), pipe_size),
                usage: ConnUse::default(),
                reused: false,
            })
        }
        Err(e) => {
            metrics::upstream_connect_failure(e.errno());
            Err(e)
        }
    }
}

impl UpConn {
    /// Whether the server has closed (or written to) the idle connection.
    /// A kTLS connection's records that are not data (an origin's TLS 1.3
    /// session tickets, sent after the handshake) are taken first: they
    /// are not unsolicited bytes, and the ticket is kept for resumption.
    fn peek_closed(&self) -> Option<CloseReason> {
        let up = self.stream.get_ref();
        let tcp = up.socket();
        let mut byte = [0u8; 1];
        // Bounded: a few records, then the connection is given up.
        for _ in 0..MAX_IDLE_RECORDS {
            match recv(
                tcp.as_raw_fd(),
                &mut byte,
                MsgFlags::MSG_PEEK | MsgFlags::MSG_DONTWAIT,
            ) {
                Err(NixErrno::EAGAIN) => return None,
                Err(NixErrno::EIO) => match up.kernel_tls().map(|s| s.take(tcp)) {
                    Some(Ok(Taken::More)) => continue,
                    _ => return Some(CloseReason::ServerClose),
                },
                Ok(0) => return Some(CloseReason::ServerClose),
                // Unsolicited bytes (e.g. a 408) or a reset: unusable.
                Ok(_) | Err(_) => return Some(CloseReason::ServerClose),
            }
        }
        Some(CloseReason::ServerClose)
    }
}

/// Records that are not data an idle kTLS connection may hold before the
/// liveness peek gives it up.
const MAX_IDLE_RECORDS: usize = 8;

struct Idle {
    conn: UpConn,
    since: Instant,
    expires: Instant,
}

/// A connection idle for less than this is handed out without a liveness
/// peek: a server closing it within that instant is the idle-close race,
/// which the request path retries anyway, and the peek would cost every
/// back-to-back request a system call.
const PEEK_AFTER_IDLE: Duration = Duration::from_millis(50);

#[derive(Default)]
pub struct Pool {
    idle: Mutex<HashMap<PoolKey, Vec<Idle>>>,
}

/// Closes a connection, counting why.
pub fn retire(conn: UpConn, reason: CloseReason) {
    metrics::upstream_closed(reason);
    drop(conn);
}

impl Pool {
    /// A live idle connection for `key`, most recently used first.
    pub fn checkout(&self, key: PoolKey) -> Option<UpConn> {
        let now = Instant::now();
        loop {
            let idle = {
                let mut map = self.idle.lock().unwrap_or_else(|p| p.into_inner());
                let list = map.get_mut(&key)?;
                let idle = list.pop();
                if list.is_empty() {
                    map.remove(&key);
                }
                idle?
            };
            if idle.expires <= now {
                retire(idle.conn, CloseReason::IdleTimeout);
                continue;
            }
            if now.duration_since(idle.since) >= PEEK_AFTER_IDLE {
                if let Some(reason) = idle.conn.peek_closed() {
                    retire(idle.conn, reason);
                    continue;
                }
            }
            let mut conn = idle.conn;
            conn.reused = true;
            return Some(conn);
        }
    }

    /// Returns a reusable connection to the pool.
    pub fn checkin(&self, key: PoolKey, conn: UpConn, idle_timeout: Duration) {
        let since = Instant::now();
        let expires = since + conn.usage.idle_limit(idle_timeout);
        let mut map = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        map.entry(key).or_default().push(Idle {
            conn,
            since,
            expires,
        });
    }

    /// Closes expired idle connections and ones the server closed.
    pub fn sweep(&self) {
        let now = Instant::now();
        let mut closed = Vec::new();
        {
            let mut map = self.idle.lock().unwrap_or_else(|p| p.into_inner());
            for list in map.values_mut() {
                let mut i = 0;
                while i < list.len() {
                    let reason = if list[i].expires <= now {
                        Some(CloseReason::IdleTimeout)
                    } else {
                        list[i].conn.peek_closed()
                    };
                    match reason {
                        Some(r) => closed.push((list.swap_remove(i).conn, r)),
                        None => i += 1,
                    }
                }
            }
            map.retain(|_, l| !l.is_empty());
        }
        for (conn, reason) in closed {
            retire(conn, reason);
        }
    }

    /// Idle connections held now.
    pub fn idle_count(&self) -> usize {
        let map = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        map.values().map(Vec::len).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn how_a_new_connection_binds() {
        let ip: IpAddr = "10.77.2.2".parse().unwrap();
        let addr = SocketAddr::new(ip, 40000);
        // (source, fresh, held, bind, fallback)
        let cases = [
            (SourceKey::Node, false, true, Bind::Node, false),
            (SourceKey::Ip(ip), false, true, Bind::Ip(ip), false),
            (
                SourceKey::IpPort(addr),
                false,
                false,
                Bind::IpPort(addr),
                false,
            ),
            // The workload's tuple is still held: another port, counted.
            (SourceKey::IpPort(addr), false, true, Bind::Ip(ip), true),
            // A retry always takes a fresh tuple: not a fallback.
            (SourceKey::IpPort(addr), true, false, Bind::Ip(ip), false),
            (SourceKey::IpPort(addr), true, true, Bind::Ip(ip), false),
        ];
        for (source, fresh, held, bind, fallback) in cases {
            assert_eq!(
                bind_for(source, fresh, held),
                (bind, fallback),
                "{source:?} fresh {fresh} held {held}"
            );
        }
    }
}
