//! Upgrades that refuse nothing: a new sockwarden (`run --take-over`) takes
//! over from the one running with the same pin path. Over a unix socket
//! beside the pin lock, the running one hands over its listening sockets
//! (SCM_RIGHTS) and its policy ids, stops accepting, and gives up the pin
//! lock; the new one then moves every link onto its own programs (the state
//! maps, original destinations included, are shared) and accepts from the
//! same sockets, whose backlog held the connections that arrived meanwhile.
//! The old one drains what it had in flight and exits 0.

use std::io::{BufRead, BufReader, IoSlice, IoSliceMut, Write};
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::socket::{recvmsg, sendmsg, ControlMessage, ControlMessageOwned, MsgFlags};
use serde::{Deserialize, Serialize};

use crate::policy::PolicyId;

/// What the new process asks.
const REQUEST: &[u8] = b"take-over\n";
/// What the new process says once it accepts the offer.
const GO: &[u8] = b"go\n";
/// What the old process says once it gave up the pin lock.
const RELEASED: &str = "released\n";
/// How long either side waits for the other.
const TIMEOUT: Duration = Duration::from_secs(30);
/// The largest offer header read.
const MAX_OFFER: usize = 64 * 1024;

/// The handoff socket of the instance with `pin_path`, beside its lock.
pub fn socket_path(pin_path: &Path) -> PathBuf {
    let name = pin_path.to_string_lossy().replace('/', "_");
    Path::new("/run/sockwarden").join(format!("{name}.handoff"))
}

/// What the running instance hands over, besides the descriptors (which
/// follow in this order: `listen`, `listen_v6` if any, `admin`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Offer {
    pub pid: u32,
    pub listen: SocketAddr,
    pub listen_v6: Option<SocketAddr>,
    pub admin: SocketAddr,
    /// Its policies' kernel ids, by name.
    pub policies: Vec<(String, PolicyId)>,
}

impl Offer {
    /// Why a configuration cannot take these sockets over, if it cannot:
    /// the listeners are handed over as they are.
    pub fn mismatch(
        &self,
        listen: SocketAddr,
        listen_v6: Option<SocketAddr>,
        admin: SocketAddr,
    ) -> Option<String> {
        let differs = |what: &str, theirs: String, ours: String| {
            (theirs != ours).then(|| {
                format!("{what}: the running sockwarden (pid {}) listens on {theirs}, this configuration says {ours}; a take-over keeps the listening sockets, so restart to move them", self.pid)
            })
        };
        let opt = |a: Option<SocketAddr>| a.map_or_else(|| "none".to_string(), |a| a.to_string());
        differs("proxy.listen", self.listen.to_string(), listen.to_string())
            .or_else(|| differs("proxy.listen_v6", opt(self.listen_v6), opt(listen_v6)))
            .or_else(|| differs("admin.listen", self.admin.to_string(), admin.to_string()))
    }
}

/// What a take-over receives: the offer, its listening sockets, and the
/// connection on which the old process says it gave up the lock.
#[derive(Debug)]
pub struct Inherited {
    pub offer: Offer,
    pub listen: std::net::TcpListener,
    pub listen_v6: Option<std::net::TcpListener>,
    pub admin: std::net::TcpListener,
    stream: BufReader<UnixStream>,
}

fn io_err(e: nix::Error) -> std::io::Error {
    std::io::Error::from_raw_os_error(e as i32)
}

/// Asks the instance running with `pin_path` to hand over.
pub fn request(pin_path: &Path) -> std::io::Result<Inherited> {
    let path = socket_path(pin_path);
    let mut stream = UnixStream::connect(&path).map_err(|e| {
        std::io::Error::new(
            e.kind(),
            format!(
                "connecting to {} (is a sockwarden with pin path {} running?): {e}",
                path.display(),
                pin_path.display()
            ),
        )
    })?;
    stream.set_read_timeout(Some(TIMEOUT))?;
    stream.write_all(REQUEST)?;
    let (offer, fds) = receive_offer(&stream)?;
    let want = 2 + usize::from(offer.listen_v6.is_some());
    if fds.len() != want {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!(
                "the running sockwarden handed over {} sockets, not {want}",
                fds.len()
            ),
        ));
    }
    let mut fds = fds.into_iter().map(std::net::TcpListener::from);
    let listen = fds.next().expect("counted");
    let listen_v6 = offer.listen_v6.and_then(|_| fds.next());
    let admin = fds.next().expect("counted");
    Ok(Inherited {
        offer,
        listen,
        listen_v6,
        admin,
        stream: BufReader::new(stream),
    })
}

/// The offer and the descriptors that came with it.
fn receive_offer(stream: &UnixStream) -> std::io::Result<(Offer, Vec<OwnedFd>)> {
    let mut header = vec![0u8; MAX_OFFER];
    let mut space = nix::cmsg_space!([RawFd; 3]);
    let mut iov = [IoSliceMut::new(&mut header)];
    let msg = recvmsg::<()>(
        stream.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )
    .map_err(io_err)?;
    let mut fds = Vec::new();
    for c in msg.cmsgs().map_err(io_err)? {
        if let ControlMessageOwned::ScmRights(r) = c {
            // SAFETY: the kernel just installed these descriptors in this
            // process for us; nothing else owns them.
            fds.extend(r.into_iter().map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }));
        }
    }
    let n = msg.bytes;
    let offer = serde_json::from_slice(&header[..n]).map_err(|e| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("the running sockwarden's offer: {e}"),
        )
    })?;
    Ok((offer, fds))
}

impl Inherited {
    /// Accepts the offer, then waits until the old process has stopped
    /// accepting and given up the pin lock.
    pub fn wait_released(&mut self) -> std::io::Result<()> {
        self.stream.get_mut().write_all(GO)?;
        let mut line = String::new();
        self.stream.read_line(&mut line)?;
        if line == RELEASED {
            Ok(())
        } else {
            Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("the running sockwarden did not give up its pin lock (it said {line:?})"),
            ))
        }
    }
}

/// Reads a take-over request on `stream` (false for anything else).
pub fn read_request(stream: &mut UnixStream) -> bool {
    use std::io::Read;
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let mut buf = [0u8; REQUEST.len()];
    stream.read_exact(&mut buf).is_ok() && buf == REQUEST
}

/// Hands `offer` and the descriptors `fds` (in [`Offer`]'s order) over.
pub fn send_offer(stream: &UnixStream, offer: &Offer, fds: &[RawFd]) -> std::io::Result<()> {
    let header = serde_json::to_vec(offer).map_err(std::io::Error::other)?;
    let iov = [IoSlice::new(&header)];
    let cmsg = [ControlMessage::ScmRights(fds)];
    sendmsg::<()>(stream.as_raw_fd(), &iov, &cmsg, MsgFlags::empty(), None).map_err(io_err)?;
    Ok(())
}

/// Whether the new process accepted the offer (it may refuse it, or die,
/// and then the old one goes on as if nothing happened).
pub fn accepted(mut stream: &UnixStream) -> bool {
    use std::io::Read;
    let _ = stream.set_read_timeout(Some(TIMEOUT));
    let mut buf = [0u8; GO.len()];
    stream.read_exact(&mut buf).is_ok() && buf == GO
}

/// Tells the new process the pin lock is free.
pub fn send_released(mut stream: &UnixStream) -> std::io::Result<()> {
    stream.write_all(RELEASED.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offer() -> Offer {
        Offer {
            pid: 7,
            listen: "10.0.0.1:15001".parse().unwrap(),
            listen_v6: None,
            admin: "127.0.0.1:9901".parse().unwrap(),
            policies: vec![("a".into(), 0), ("b".into(), 3)],
        }
    }

    #[test]
    fn a_take_over_keeps_the_listeners_it_is_given() {
        let o = offer();
        let (l, a) = (o.listen, o.admin);
        assert_eq!(o.mismatch(l, None, a), None);
        let moved = o.mismatch("10.0.0.2:15001".parse().unwrap(), None, a);
        assert_eq!(
            moved.as_deref(),
            Some("proxy.listen: the running sockwarden (pid 7) listens on 10.0.0.1:15001, this configuration says 10.0.0.2:15001; a take-over keeps the listening sockets, so restart to move them")
        );
        let v6 = o.mismatch(l, Some("[fd00::1]:15001".parse().unwrap()), a);
        assert!(
            v6.is_some_and(|m| m.starts_with("proxy.listen_v6: ") && m.contains("listens on none"))
        );
        assert!(o
            .mismatch(l, None, "127.0.0.1:9902".parse().unwrap())
            .is_some());
    }

    #[test]
    fn the_offer_and_its_sockets_cross_a_unix_socket() {
        let (a, mut b) = UnixStream::pair().unwrap();
        let l1 = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let l2 = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut o = offer();
        o.listen = l1.local_addr().unwrap();
        o.admin = l2.local_addr().unwrap();
        let new = std::thread::spawn(move || {
            (&a).write_all(REQUEST).unwrap();
            let (offer, fds) = receive_offer(&a).unwrap();
            (offer, fds.len())
        });
        assert!(read_request(&mut b));
        send_offer(&b, &o, &[l1.as_raw_fd(), l2.as_raw_fd()]).unwrap();
        let (got, fds) = new.join().unwrap();
        assert_eq!((got, fds), (o, 2));
    }
}
