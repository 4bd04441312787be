//! The systemd notification protocol (sd_notify(3)) without libsystemd:
//! `READY=1`, `RELOADING=1`, `STOPPING=1` and `STATUS=` as datagrams to the
//! unix socket named by `$NOTIFY_SOCKET` (a path, or `@name` in the
//! abstract namespace).
//!
//! Without the variable (not started by systemd with `Type=notify`) there
//! is no [`Notifier`] and nothing is sent. A send that fails is logged once
//! and never stops sockwarden: systemd then says the unit timed out
//! starting, which names the problem well enough.
//!
//! The messages are a pure function ([`message`]); the socket is the edge.

use std::ffi::OsStr;
use std::net::SocketAddr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};

/// The variable systemd sets for `Type=notify` services.
pub const NOTIFY_SOCKET: &str = "NOTIFY_SOCKET";

/// Where the notifications go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Path(PathBuf),
    /// An abstract socket name (the `@` of the variable taken off).
    Abstract(Vec<u8>),
}

/// `$NOTIFY_SOCKET` read: a path (absolute, as systemd passes it) or
/// `@name`; None for an empty value or another form (systemd's `vsock:`
/// addresses are not supported).
pub fn parse_target(value: &OsStr) -> Option<Target> {
    let bytes = value.as_bytes();
    match bytes.first()? {
        b'/' => Some(Target::Path(PathBuf::from(value))),
        b'@' if bytes.len() > 1 => Some(Target::Abstract(bytes[1..].to_vec())),
        _ => None,
    }
}

/// A state change for systemd.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Startup finished: programs attached, the proxy listening.
    Ready,
    /// A reload began; `MONOTONIC_USEC` is when (CLOCK_MONOTONIC), as
    /// systemd ≥ 253 requires for `Type=notify-reload` and accepts for
    /// `Type=notify`.
    Reloading {
        monotonic_usec: u64,
    },
    Stopping,
    /// Only the status line.
    Status,
}

/// One datagram: the state's assignment, then `STATUS=` with `status` on
/// one line (newlines would end the assignment: they become spaces).
pub fn message(state: State, status: &str) -> String {
    let head = match state {
        State::Ready => "READY=1\n".to_string(),
        State::Reloading { monotonic_usec } => {
            format!("RELOADING=1\nMONOTONIC_USEC={monotonic_usec}\n")
        }
        State::Stopping => "STOPPING=1\n".to_string(),
        State::Status => String::new(),
    };
    let line: String = status
        .chars()
        .map(|c| if c == '\n' || c == '\r' { ' ' } else { c })
        .collect();
    format!("{head}STATUS={line}\n")
}

/// The status line while enforcing.
pub fn enforcing(policies: usize, proxy: SocketAddr) -> String {
    let noun = if policies == 1 { "policy" } else { "policies" };
    format!("enforcing {policies} {noun}, proxy on {proxy}")
}

/// A CLOCK_MONOTONIC reading in microseconds.
fn usec(seconds: i64, nanoseconds: i64) -> u64 {
    (seconds.max(0) as u64) * 1_000_000 + (nanoseconds.max(0) as u64) / 1_000
}

/// Sends to systemd's notification socket.
#[derive(Debug)]
pub struct Notifier {
    socket: UnixDatagram,
    target: Target,
    /// A send failed and was logged: later failures are not.
    failed: AtomicBool,
}

impl Notifier {
    /// From `$NOTIFY_SOCKET`, which is removed from the environment so
    /// that no child process (`ip` for the return path) notifies in
    /// sockwarden's name. None when unset, empty or of a form not
    /// supported (logged), or when no datagram socket can be made (logged).
    ///
    /// Call it before any other thread runs: it changes the environment.
    pub fn from_env() -> Option<Notifier> {
        let value = std::env::var_os(NOTIFY_SOCKET)?;
        std::env::remove_var(NOTIFY_SOCKET);
        let Some(target) = parse_target(&value) else {
            tracing::warn!(value = ?value, "NOTIFY_SOCKET is neither a path nor @name: systemd will not be notified");
            return None;
        };
        match UnixDatagram::unbound().and_then(|s| s.set_nonblocking(true).map(|()| s)) {
            Ok(socket) => Some(Notifier {
                socket,
                target,
                failed: AtomicBool::new(false),
            }),
            Err(e) => {
                tracing::warn!(error = %e, "creating the notification socket: systemd will not be notified");
                None
            }
        }
    }

    pub fn ready(&self, status: &str) {
        self.send(State::Ready, status);
    }

    /// `RELOADING=1` with the current CLOCK_MONOTONIC time.
    pub fn reloading(&self, status: &str) {
        let now = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
            .map(|t| usec(t.tv_sec(), t.tv_nsec()))
            .unwrap_or(0);
        self.send(
            State::Reloading {
                monotonic_usec: now,
            },
            status,
        );
    }

    pub fn stopping(&self, status: &str) {
        self.send(State::Stopping, status);
    }

    pub fn status(&self, line: &str) {
        self.send(State::Status, line);
    }

    fn send(&self, state: State, status: &str) {
        let msg = message(state, status);
        let sent = match &self.target {
            Target::Path(p) => self.socket.send_to(msg.as_bytes(), p),
            Target::Abstract(name) => {
                use std::os::linux::net::SocketAddrExt;
                std::os::unix::net::SocketAddr::from_abstract_name(name)
                    .and_then(|a| self.socket.send_to_addr(msg.as_bytes(), &a))
            }
        };
        if let Err(e) = sent {
            if !self.failed.swap(true, Ordering::Relaxed) {
                tracing::warn!(target = ?self.target, error = %e, "notifying systemd failed (logged once)");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages() {
        for (state, status, want) in [
            (
                State::Ready,
                "enforcing 2 policies, proxy on 10.77.0.1:15001",
                "READY=1\nSTATUS=enforcing 2 policies, proxy on 10.77.0.1:15001\n",
            ),
            (
                State::Reloading {
                    monotonic_usec: 1_234_567,
                },
                "reloading",
                "RELOADING=1\nMONOTONIC_USEC=1234567\nSTATUS=reloading\n",
            ),
            (
                State::Stopping,
                "stopping (SIGTERM)",
                "STOPPING=1\nSTATUS=stopping (SIGTERM)\n",
            ),
            (State::Status, "x", "STATUS=x\n"),
            // One line, whatever it was given.
            (State::Status, "a\nb\r\nc", "STATUS=a b  c\n"),
            (State::Ready, "", "READY=1\nSTATUS=\n"),
        ] {
            assert_eq!(message(state, status), want, "{state:?}");
        }
    }

    #[test]
    fn targets() {
        for (value, want) in [
            (
                "/run/systemd/notify",
                Some(Target::Path("/run/systemd/notify".into())),
            ),
            ("@sw-notify", Some(Target::Abstract(b"sw-notify".to_vec()))),
            ("@", None),
            ("", None),
            ("vsock:2:1234", None),
            ("relative/path", None),
        ] {
            assert_eq!(parse_target(OsStr::new(value)), want, "{value:?}");
        }
    }

    #[test]
    fn status_lines() {
        let proxy: SocketAddr = "10.77.0.1:15001".parse().expect("addr");
        assert_eq!(
            enforcing(2, proxy),
            "enforcing 2 policies, proxy on 10.77.0.1:15001"
        );
        assert_eq!(
            enforcing(1, proxy),
            "enforcing 1 policy, proxy on 10.77.0.1:15001"
        );
        assert_eq!(
            enforcing(0, proxy),
            "enforcing 0 policies, proxy on 10.77.0.1:15001"
        );
    }

    #[test]
    fn monotonic_microseconds() {
        for (s, ns, want) in [
            (0, 0, 0),
            (1, 999, 1_000_000),
            (2, 1_500_000, 2_001_500),
            (-1, -1, 0),
        ] {
            assert_eq!(usec(s, ns), want, "{s} {ns}");
        }
    }

    fn notifier(target: Target) -> Notifier {
        Notifier {
            socket: UnixDatagram::unbound().expect("socket"),
            target,
            failed: AtomicBool::new(false),
        }
    }

    fn received(socket: &UnixDatagram) -> String {
        let mut buf = [0u8; 4096];
        let n = socket.recv(&mut buf).expect("a datagram");
        String::from_utf8(buf[..n].to_vec()).expect("utf-8")
    }

    /// Every notification, to a socket bound at a path and to one in the
    /// abstract namespace, arrives as exactly its datagram.
    #[test]
    fn datagrams_reach_a_fake_notify_socket() {
        let dir = std::env::temp_dir().join(format!("sw-notify-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("notify");
        let _ = std::fs::remove_file(&path);
        let at_path = UnixDatagram::bind(&path).expect("bind path");
        let name = format!("sw-notify-test-{}", std::process::id());
        let abstract_addr = {
            use std::os::linux::net::SocketAddrExt;
            std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).expect("name")
        };
        let abstract_socket = UnixDatagram::bind_addr(&abstract_addr).expect("bind abstract");
        for (target, socket) in [
            (Target::Path(path.clone()), &at_path),
            (
                Target::Abstract(name.clone().into_bytes()),
                &abstract_socket,
            ),
        ] {
            socket
                .set_read_timeout(Some(std::time::Duration::from_secs(5)))
                .expect("timeout");
            let n = notifier(target.clone());
            n.ready("enforcing 1 policy, proxy on 127.0.0.1:15001");
            assert_eq!(
                received(socket),
                "READY=1\nSTATUS=enforcing 1 policy, proxy on 127.0.0.1:15001\n",
                "{target:?}"
            );
            n.reloading("reloading /etc/sockwarden/config.yaml");
            let got = received(socket);
            let usec: u64 = got
                .strip_prefix("RELOADING=1\nMONOTONIC_USEC=")
                .and_then(|r| r.strip_suffix("\nSTATUS=reloading /etc/sockwarden/config.yaml\n"))
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("{got:?}"));
            let now = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).expect("now");
            let now = usec_of(now);
            assert!(usec <= now && now - usec < 5_000_000, "{usec} vs {now}");
            n.stopping("stopping (SIGTERM)");
            assert_eq!(received(socket), "STOPPING=1\nSTATUS=stopping (SIGTERM)\n");
            n.status("draining");
            assert_eq!(received(socket), "STATUS=draining\n");
            assert!(!n.failed.load(Ordering::Relaxed));
        }
        // No one listening: logged once, never fatal.
        drop(at_path);
        std::fs::remove_file(&path).expect("unlink");
        let n = notifier(Target::Path(path));
        n.ready("x");
        assert!(n.failed.load(Ordering::Relaxed));
        n.stopping("x");
        let _ = std::fs::remove_dir_all(&dir);
    }

    fn usec_of(t: nix::sys::time::TimeSpec) -> u64 {
        usec(t.tv_sec(), t.tv_nsec())
    }

    /// The variable is read once and taken out of the environment. (The
    /// only test here that touches the environment.)
    #[test]
    fn from_env_takes_the_variable() {
        std::env::set_var(NOTIFY_SOCKET, "@sw-notify-from-env");
        let n = Notifier::from_env().expect("a notifier");
        assert_eq!(n.target, Target::Abstract(b"sw-notify-from-env".to_vec()));
        assert!(std::env::var_os(NOTIFY_SOCKET).is_none());
        assert!(Notifier::from_env().is_none());
    }
}
