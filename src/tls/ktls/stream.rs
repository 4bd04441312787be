//! A TCP socket whose kernel does the TLS record layer: read and written
//! as plaintext, spliced like any TCP socket, with the records that are not
//! application data taken apart ([`Session::take`]).

use std::io::{self, IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, RawFd};
use std::pin::Pin;
use std::sync::Mutex;
use std::task::{ready, Context, Poll};

use nix::sys::socket::{
    recvmsg, setsockopt, sockopt, ControlMessageOwned, MsgFlags, TlsGetRecordType,
};
use rustls::client::ClientConnectionData;
use rustls::kernel::KernelConnection;
use rustls::server::ServerConnectionData;
use rustls::ProtocolVersion;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use super::handshake::Info;
use super::{control, crypto_info, Control, Kind, Message, ALERT, HANDSHAKE};
use crate::metrics::{self, TlsSide};

/// rustls's side of the session after the handoff.
pub enum Peer {
    /// sockwarden is the client (upstream): tickets are kept for resumption.
    Client(KernelConnection<ClientConnectionData>),
    /// sockwarden is the server (the workload's side).
    Server(KernelConnection<ServerConnectionData>),
}

/// What the kernel does not do alone: tickets, key updates, the end.
pub struct Session {
    side: TlsSide,
    version: ProtocolVersion,
    state: Mutex<State>,
}

struct State {
    peer: Peer,
    /// Handshake bytes of a message not yet whole.
    pending: Vec<u8>,
    /// close_notify came: reads see the end of the stream.
    read_closed: bool,
}

/// After a record was taken: go on reading, or the stream has ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Taken {
    More,
    End,
}

impl Session {
    /// Takes the record at the head of `tcp`'s queue, which the kernel
    /// would not read or splice because it is not application data, and
    /// acts on it. Err: the connection cannot go on.
    pub fn take(&self, tcp: &TcpStream) -> io::Result<Taken> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if state.read_closed {
            return Ok(Taken::End);
        }
        let fd = tcp.as_raw_fd();
        let mut buf = vec![0u8; super::MAX_HANDSHAKE_MESSAGE.min(1 << 15)];
        let (content_type, len) = recv_record(fd, &mut buf)?;
        let judged = control(self.version, content_type, &buf[..len], &mut state.pending);
        let side = self.side;
        match judged {
            Control::CloseNotify => {
                metrics::ktls_record(side, Kind::CloseNotify, true);
                state.read_closed = true;
                Ok(Taken::End)
            }
            Control::Ignore(kind) => {
                metrics::ktls_record(side, kind, true);
                Ok(Taken::More)
            }
            Control::Messages(messages) => {
                for m in messages {
                    self.act(fd, &mut state.peer, m)?;
                }
                Ok(Taken::More)
            }
            Control::Fatal(why) => {
                let kind = if content_type == ALERT {
                    Kind::Alert
                } else {
                    Kind::Other
                };
                metrics::ktls_record(side, kind, false);
                Err(io::Error::new(
                    io::ErrorKind::ConnectionAborted,
                    format!("kTLS: {why}"),
                ))
            }
        }
    }

    fn act(&self, fd: RawFd, peer: &mut Peer, message: Message) -> io::Result<()> {
        let (kind, done) = match message {
            Message::Ticket(body) => (Kind::SessionTicket, ticket(peer, &body)),
            Message::KeyUpdate { requested } => {
                (Kind::KeyUpdate, self.key_update(fd, peer, requested))
            }
        };
        metrics::ktls_record(self.side, kind, done.is_ok());
        done
    }

    /// The peer's new keys for reading, and, when it asks, ours for
    /// writing (announced under the old ones). A kernel without kTLS rekey
    /// refuses the second TLS_RX: the connection then ends.
    fn key_update(&self, fd: RawFd, peer: &mut Peer, requested: bool) -> io::Result<()> {
        self.rekey(fd, peer, Direction::Receive)?;
        if !requested {
            return Ok(());
        }
        // KeyUpdate(update_not_requested), then the new sending keys.
        send_record(fd, HANDSHAKE, &[24, 0, 0, 1, 0])
            .map_err(|e| rekey_failed("sending ours", &e))?;
        self.rekey(fd, peer, Direction::Transmit)
    }

    /// rustls's next secret for one direction, given to the kernel.
    fn rekey(&self, fd: RawFd, peer: &mut Peer, direction: Direction) -> io::Result<()> {
        let next = match (peer, direction) {
            (Peer::Client(k), Direction::Receive) => k.update_rx_secret(),
            (Peer::Server(k), Direction::Receive) => k.update_rx_secret(),
            (Peer::Client(k), Direction::Transmit) => k.update_tx_secret(),
            (Peer::Server(k), Direction::Transmit) => k.update_tx_secret(),
        };
        let (seq, secrets) = next.map_err(|e| rekey_failed("rustls", &e))?;
        let info = crypto_info(self.version, seq, &secrets)
            .ok_or_else(|| rekey_failed("cipher", &"not one kTLS knows"))?;
        let tcp = borrowed(fd);
        let set = match direction {
            Direction::Receive => setsockopt(&tcp, sockopt::TcpTlsRx, &info),
            Direction::Transmit => setsockopt(&tcp, sockopt::TcpTlsTx, &info),
        };
        set.map_err(|e| rekey_failed(direction.cannot(), &e))
    }
}

#[derive(Debug, Clone, Copy)]
enum Direction {
    Receive,
    Transmit,
}

impl Direction {
    fn cannot(self) -> &'static str {
        match self {
            Direction::Receive => "this kernel cannot rekey TLS_RX",
            Direction::Transmit => "this kernel cannot rekey TLS_TX",
        }
    }
}

fn rekey_failed(what: &str, e: &dyn std::fmt::Display) -> io::Error {
    io::Error::new(
        io::ErrorKind::ConnectionAborted,
        format!("kTLS key update: {what}: {e}"),
    )
}

/// A TLS 1.3 ticket from an origin goes to rustls's session store; a
/// workload sends none.
fn ticket(peer: &mut Peer, body: &[u8]) -> io::Result<()> {
    match peer {
        Peer::Client(k) => k.handle_new_session_ticket(body).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("kTLS: session ticket: {e}"),
            )
        }),
        Peer::Server(_) => Err(io::Error::new(
            io::ErrorKind::ConnectionAborted,
            "kTLS: a session ticket from the client",
        )),
    }
}

/// `fd` as a BorrowedFd for nix's setsockopt.
fn borrowed(fd: RawFd) -> std::os::fd::BorrowedFd<'static> {
    // SAFETY: only used within `Session::take`, while the caller's
    // TcpStream (which owns `fd`) is borrowed and so open.
    unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) }
}

/// One record from the head of `fd`'s queue with its content type (the
/// kernel returns records of one type per call). Non-blocking.
fn recv_record(fd: RawFd, buf: &mut [u8]) -> io::Result<(u8, usize)> {
    let mut cmsg = nix::cmsg_space!(u8);
    let mut iov = [IoSliceMut::new(buf)];
    let msg = recvmsg::<()>(fd, &mut iov, Some(&mut cmsg), MsgFlags::MSG_DONTWAIT)
        .map_err(io::Error::from)?;
    let mut content_type = None;
    for c in msg.cmsgs().map_err(io::Error::from)? {
        if let ControlMessageOwned::TlsGetRecordType(t) = c {
            content_type = Some(record_type_byte(t));
        }
    }
    let len = msg.bytes;
    match content_type {
        Some(t) => Ok((t, len)),
        None if len == 0 => Ok((ALERT, 0)),
        None => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "kTLS: a record without its content type",
        )),
    }
}

fn record_type_byte(t: TlsGetRecordType) -> u8 {
    match t {
        TlsGetRecordType::ChangeCipherSpec => super::CHANGE_CIPHER_SPEC,
        TlsGetRecordType::Alert => ALERT,
        TlsGetRecordType::Handshake => HANDSHAKE,
        TlsGetRecordType::ApplicationData => super::APPLICATION_DATA,
        TlsGetRecordType::Unknown(t) => t,
        _ => 0,
    }
}

/// Writes one record of `content_type` (SOL_TLS TLS_SET_RECORD_TYPE): the
/// kernel encrypts it with the session's keys.
fn send_record(fd: RawFd, content_type: u8, payload: &[u8]) -> io::Result<()> {
    let iov = [IoSlice::new(payload)];
    // SAFETY: CMSG_SPACE of a u8 is a small constant.
    let space = unsafe { libc::CMSG_SPACE(1) } as usize;
    // u64 words: the control buffer is aligned for cmsghdr.
    let mut control = vec![0u64; space.div_ceil(8)];
    let mut msg: libc::msghdr = unsafe {
        // SAFETY: msghdr is plain data; all-zero is a valid empty header.
        std::mem::zeroed()
    };
    msg.msg_iov = iov.as_ptr() as *mut libc::iovec;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = space as _;
    // SAFETY: msg_control points to `space` bytes, room for one cmsghdr
    // with one byte of data, so CMSG_FIRSTHDR is non-null and its data
    // byte is inside the buffer.
    unsafe {
        let c = libc::CMSG_FIRSTHDR(&msg);
        (*c).cmsg_level = libc::SOL_TLS;
        (*c).cmsg_type = libc::TLS_SET_RECORD_TYPE;
        (*c).cmsg_len = libc::CMSG_LEN(1) as _;
        *libc::CMSG_DATA(c) = content_type;
    }
    // SAFETY: msg refers to live buffers: the iovec (payload) and control.
    let rc = unsafe { libc::sendmsg(fd, &msg, libc::MSG_DONTWAIT) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// A kTLS socket as a transport.
pub struct KtlsStream {
    tcp: TcpStream,
    session: Session,
    info: Info,
    write_closed: bool,
}

impl KtlsStream {
    pub(super) fn new(tcp: TcpStream, peer: Peer, side: TlsSide, info: Info) -> KtlsStream {
        KtlsStream {
            tcp,
            session: Session {
                side,
                version: info.version,
                state: Mutex::new(State {
                    peer,
                    pending: Vec::new(),
                    read_closed: false,
                }),
            },
            info,
            write_closed: false,
        }
    }

    pub fn tcp(&self) -> &TcpStream {
        &self.tcp
    }

    pub fn session(&self) -> &Session {
        &self.session
    }

    /// The negotiated version and protocol.
    pub fn info(&self) -> &Info {
        &self.info
    }
}

/// EIO from a read of a kTLS socket: a record that is not data is first.
pub fn is_control_stop(e: &io::Error) -> bool {
    e.raw_os_error() == Some(libc::EIO)
}

impl AsyncRead for KtlsStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        // Bounded: each turn reads data, takes one record, or waits.
        loop {
            ready!(this.tcp.poll_read_ready(cx))?;
            match this.tcp.try_read(buf.initialize_unfilled()) {
                Ok(n) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) if is_control_stop(&e) => match this.session.take(&this.tcp) {
                    Ok(Taken::More) => {}
                    Ok(Taken::End) => return Poll::Ready(Ok(())),
                    Err(e) => return Poll::Ready(Err(e)),
                },
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl AsyncWrite for KtlsStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().tcp).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_flush(cx)
    }

    /// close_notify, then the TCP FIN.
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.write_closed {
            this.write_closed = true;
            const WARNING: u8 = 1;
            const CLOSE_NOTIFY: u8 = 0;
            // Best effort, as a userspace TLS stack's: a peer that is gone
            // gets the FIN or the reset either way.
            let _ = send_record(this.tcp.as_raw_fd(), ALERT, &[WARNING, CLOSE_NOTIFY]);
        }
        Pin::new(&mut this.tcp).poll_shutdown(cx)
    }
}
