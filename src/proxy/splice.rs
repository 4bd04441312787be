//! The `splice` engine: body bytes go socket → pipe → socket inside the
//! kernel, never through the proxy's memory.
//!
//! Both ends are non-blocking tokio sockets; readiness comes from tokio and
//! the moves are splice(2) with SPLICE_F_NONBLOCK. At most one pipe's worth
//! of data is in flight: the source is read only while the pipe has room,
//! and the pipe drains only as fast as the destination accepts, so a slow
//! reader holds the sender back (backpressure is TCP's own).

use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::time::Duration;

use nix::fcntl::{fcntl, splice, FcntlArg, OFlag, SpliceFFlags};
use tokio::io::Interest;
use tokio::net::TcpStream;

/// A pipe used as the in-kernel buffer of one direction.
#[derive(Debug)]
pub struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
    capacity: usize,
    /// Bytes spliced into the pipe and not yet out of it.
    pending: usize,
    /// Bytes spliced out of it, ever.
    delivered: u64,
}

impl Pipe {
    /// A non-blocking pipe of (at least) `size` bytes, if the kernel allows
    /// that size (the default is one page per slot, 64 KiB).
    pub fn new(size: usize) -> io::Result<Pipe> {
        let (read, write) = nix::unistd::pipe2(OFlag::O_NONBLOCK | OFlag::O_CLOEXEC)?;
        let requested = i32::try_from(size).unwrap_or(i32::MAX);
        let capacity = fcntl(&write, FcntlArg::F_SETPIPE_SZ(requested))
            .or_else(|_| fcntl(&write, FcntlArg::F_GETPIPE_SZ))
            .map_err(io::Error::from)?;
        Ok(Pipe {
            read,
            write,
            capacity: usize::try_from(capacity).unwrap_or(64 * 1024),
            pending: 0,
            delivered: 0,
        })
    }
}

/// Which side of a splice failed.
#[derive(Debug)]
pub enum SpliceError {
    Read(io::Error),
    Write(io::Error),
    /// No progress for the idle time; `writing`: the destination took
    /// nothing (else the source sent nothing).
    Timeout {
        writing: bool,
    },
}

fn would_block(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::WouldBlock
}

/// What one splice into a pipe gave.
enum Inflow {
    /// Some bytes came in.
    Bytes,
    /// The source has nothing now (or the pipe no free slot).
    Blocked,
    Eof,
    /// The source is a kTLS socket whose next record is not application
    /// data (EINVAL): it must be taken apart before the splice goes on.
    Control,
}

const FLAGS: SpliceFFlags = SpliceFFlags::SPLICE_F_MOVE.union(SpliceFFlags::SPLICE_F_NONBLOCK);

impl Pipe {
    /// One splice of at most `want` bytes from `src` into the pipe's room.
    fn fill_from(&mut self, src: &TcpStream, want: u64) -> Result<Inflow, SpliceError> {
        let len = (self.capacity - self.pending).min(usize::try_from(want).unwrap_or(usize::MAX));
        let fill = || {
            splice(src.as_fd(), None, self.write.as_fd(), None, len, FLAGS).map_err(io::Error::from)
        };
        // EAGAIN means "socket empty" only when the pipe is empty: a pipe
        // holding data can be out of slots (one per page fragment)
        // before it is out of bytes. Only then may tokio forget the
        // socket's readiness, or a socket full of data (and so receiving
        // no more) would never be woken for again.
        let filled = if self.pending == 0 {
            src.try_io(Interest::READABLE, fill)
        } else {
            fill()
        };
        match filled {
            Ok(0) => Ok(Inflow::Eof),
            Ok(n) => {
                self.pending += n;
                Ok(Inflow::Bytes)
            }
            Err(e) if would_block(&e) => Ok(Inflow::Blocked),
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => Ok(Inflow::Control),
            Err(e) => Err(SpliceError::Read(e)),
        }
    }

    /// One splice of what the pipe holds into `dst`; the bytes moved (0
    /// when `dst` takes none now).
    fn drain_into(&mut self, dst: &TcpStream) -> Result<usize, SpliceError> {
        let drained = dst.try_io(Interest::WRITABLE, || {
            splice(
                self.read.as_fd(),
                None,
                dst.as_fd(),
                None,
                self.pending,
                FLAGS,
            )
            .map_err(io::Error::from)
        });
        match drained {
            Ok(n) => {
                self.pending -= n;
                self.delivered += n as u64;
                Ok(n)
            }
            Err(e) if would_block(&e) => Ok(0),
            Err(e) => Err(SpliceError::Write(e)),
        }
    }
}

/// What [`splice_stream`] moved, and why it stopped short if it did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Spliced {
    pub moved: u64,
    /// It stopped at a kTLS record that is not data (see
    /// [`Inflow::Control`]); the pipe was emptied first.
    pub control: bool,
}

/// Moves `limit` bytes (or everything until EOF with None) from `src` to
/// `dst` through `pipe`. Returns the bytes moved: fewer than `limit` only
/// when `src` reached EOF or a kTLS control record. `idle` bounds every
/// wait for either side.
pub async fn splice_stream(
    src: &TcpStream,
    dst: &TcpStream,
    pipe: &mut Pipe,
    limit: Option<u64>,
    idle: Duration,
) -> Result<Spliced, SpliceError> {
    let mut moved: u64 = 0;
    let mut eof = false;
    let mut control = false;
    loop {
        // Bytes still to take in: the limit less those moved and those
        // already in the pipe.
        let want_in = match limit {
            Some(l) => l.saturating_sub(moved + pipe.pending as u64),
            None => u64::MAX,
        };
        if pipe.pending == 0 && (eof || control || want_in == 0) {
            return Ok(Spliced { moved, control });
        }
        let mut progressed = false;
        if !eof && !control && want_in > 0 && pipe.pending < pipe.capacity {
            match pipe.fill_from(src, want_in)? {
                Inflow::Bytes => progressed = true,
                Inflow::Blocked => {}
                Inflow::Eof => eof = true,
                Inflow::Control => {
                    control = true;
                    progressed = true;
                }
            }
        }
        if pipe.pending > 0 {
            let n = pipe.drain_into(dst)?;
            moved += n as u64;
            progressed |= n > 0;
        }
        if progressed {
            continue;
        }
        // Nothing moved: wait for whichever side can unblock us. With data in
        // the pipe, only the destination can (the pipe may be out of slots).
        let can_write = pipe.pending > 0;
        let can_read = !eof && !control && want_in > 0 && !can_write;
        let wait = async {
            if can_write {
                dst.writable().await.map_err(SpliceError::Write)
            } else if can_read {
                src.readable().await.map_err(SpliceError::Read)
            } else {
                Ok(())
            }
        };
        match tokio::time::timeout(idle, wait).await {
            Err(_) => return Err(SpliceError::Timeout { writing: can_write }),
            Ok(r) => r?,
        }
    }
}

/// One direction of a tunnel: splice until EOF, then pass the EOF on.
/// Tunnels join plain TCP sockets only (kTLS ones copy), so a control stop
/// is the EINVAL it came from.
async fn half_tunnel(
    src: &TcpStream,
    dst: &TcpStream,
    pipe: &mut Pipe,
    idle: Duration,
) -> Result<u64, SpliceError> {
    let r = splice_stream(src, dst, pipe, None, idle).await;
    let _ = nix::sys::socket::shutdown(dst.as_raw_fd(), nix::sys::socket::Shutdown::Write);
    match r? {
        Spliced { control: true, .. } => Err(SpliceError::Read(io::Error::from_raw_os_error(
            libc::EINVAL,
        ))),
        Spliced { moved, .. } => Ok(moved),
    }
}

/// Splices both directions of a tunnel until each side has sent EOF;
/// returns the (a→b, b→a) bytes delivered, also when it failed, and how
/// it ended.
pub async fn splice_tunnel(
    a: &TcpStream,
    b: &TcpStream,
    pipe_size: usize,
    idle: Duration,
) -> (u64, u64, io::Result<()>) {
    let (mut ab, mut ba) = match (Pipe::new(pipe_size), Pipe::new(pipe_size)) {
        (Ok(ab), Ok(ba)) => (ab, ba),
        (Err(e), _) | (_, Err(e)) => return (0, 0, Err(e)),
    };
    let (x, y) = tokio::join!(
        half_tunnel(a, b, &mut ab, idle),
        half_tunnel(b, a, &mut ba, idle)
    );
    let err = |e: SpliceError| match e {
        SpliceError::Read(e) | SpliceError::Write(e) => e,
        SpliceError::Timeout { .. } => io::Error::new(io::ErrorKind::TimedOut, "tunnel idle"),
    };
    let end = x.and(y).map(|_| ()).map_err(err);
    (ab.delivered, ba.delivered, end)
}
