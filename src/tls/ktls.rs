//! kTLS: the kernel takes a session's record layer after sockwarden's own
//! handshake, so bodies of intercepted and originated connections move with
//! the splice engine, decrypted and encrypted in the kernel.
//!
//! The handshake runs on rustls's unbuffered API ([`handshake`]), reading
//! the socket one TLS record at a time: when it ends, every byte after the
//! last handshake record is still in the socket, for the kernel to decrypt.
//! rustls then hands over the traffic secrets and keeps a
//! [`KernelConnection`](rustls::kernel::KernelConnection) for what only it
//! can do after the handshake: take TLS 1.3 session tickets (so upstream
//! sessions still resume) and derive the keys of a key update.
//!
//! After the handoff the kernel delivers records that are not application
//! data (alerts, tickets, key updates) apart: a read fails with EIO and a
//! splice with EINVAL while one is at the head of the queue. [`stream`]
//! takes it with recvmsg and a control message, acts on it, and the read or
//! splice goes on. This module holds the decisions, free of sockets.

use nix::sys::socket::sockopt::TlsCryptoInfo;
use rustls::{ConnectionTrafficSecrets, ProtocolVersion};

pub mod handshake;
pub mod stream;

/// The most a handshake record from the peer may carry after the
/// handshake: tickets and key updates are small, and this bounds what one
/// reassembled message can hold.
pub const MAX_HANDSHAKE_MESSAGE: usize = 64 << 10;

/// TLS record content types (RFC 8446 5.1).
pub const CHANGE_CIPHER_SPEC: u8 = 20;
pub const ALERT: u8 = 21;
pub const HANDSHAKE: u8 = 22;
pub const APPLICATION_DATA: u8 = 23;

/// Handshake message types that may follow the handshake.
const HELLO_REQUEST: u8 = 0;
const NEW_SESSION_TICKET: u8 = 4;
const KEY_UPDATE: u8 = 24;

/// Why a TLS connection's record layer stayed in userspace (bodies copied).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CopyReason {
    /// `tls.ktls: false`.
    Disabled,
    /// The kernel has no `tls` upper-layer protocol.
    Kernel,
    /// The kernel refused TCP_ULP "tls" on this socket.
    Socket,
}

impl CopyReason {
    pub fn as_str(self) -> &'static str {
        match self {
            CopyReason::Disabled => "disabled",
            CopyReason::Kernel => "kernel",
            CopyReason::Socket => "socket",
        }
    }
}

/// What the proxy knows of kTLS at start-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ktls {
    /// The kernel has it and the configuration wants it.
    On,
    /// Every TLS connection copies, for this reason.
    Off(CopyReason),
}

/// Nothing terminates or originates TLS.
impl Default for Ktls {
    fn default() -> Self {
        Ktls::Off(CopyReason::Disabled)
    }
}

impl Ktls {
    /// From `tls.ktls` and the kernel's answer (`features::ktls_available`).
    pub fn decide(wanted: bool, kernel: &Result<bool, String>) -> Ktls {
        match (wanted, kernel) {
            (false, _) => Ktls::Off(CopyReason::Disabled),
            (true, Ok(true)) => Ktls::On,
            (true, Ok(false) | Err(_)) => Ktls::Off(CopyReason::Kernel),
        }
    }
}

/// The cipher suite's secrets as the kernel takes them (TLS_TX / TLS_RX),
/// for `version` at record sequence number `seq`. None: a cipher the
/// kernel's kTLS does not know (rustls's ring provider has none such).
pub fn crypto_info(
    version: ProtocolVersion,
    seq: u64,
    secrets: &ConnectionTrafficSecrets,
) -> Option<TlsCryptoInfo> {
    let version = match version {
        ProtocolVersion::TLSv1_3 => libc::TLS_1_3_VERSION,
        ProtocolVersion::TLSv1_2 => libc::TLS_1_2_VERSION,
        _ => return None,
    };
    let rec_seq = seq.to_be_bytes();
    let info = |cipher_type| libc::tls_crypto_info {
        version,
        cipher_type,
    };
    match secrets {
        // rustls reports TLS 1.2's AES-256-GCM as Aes128Gcm with a 32-byte
        // key: the key's length tells.
        ConnectionTrafficSecrets::Aes128Gcm { key, iv }
        | ConnectionTrafficSecrets::Aes256Gcm { key, iv } => {
            let (salt, iv) = iv.as_ref().split_at_checked(4)?;
            match key.as_ref().len() {
                16 => Some(TlsCryptoInfo::Aes128Gcm(
                    libc::tls12_crypto_info_aes_gcm_128 {
                        info: info(libc::TLS_CIPHER_AES_GCM_128),
                        iv: iv.try_into().ok()?,
                        key: key.as_ref().try_into().ok()?,
                        salt: salt.try_into().ok()?,
                        rec_seq,
                    },
                )),
                32 => Some(TlsCryptoInfo::Aes256Gcm(
                    libc::tls12_crypto_info_aes_gcm_256 {
                        info: info(libc::TLS_CIPHER_AES_GCM_256),
                        iv: iv.try_into().ok()?,
                        key: key.as_ref().try_into().ok()?,
                        salt: salt.try_into().ok()?,
                        rec_seq,
                    },
                )),
                _ => None,
            }
        }
        ConnectionTrafficSecrets::Chacha20Poly1305 { key, iv } => Some(
            TlsCryptoInfo::Chacha20Poly1305(libc::tls12_crypto_info_chacha20_poly1305 {
                info: info(libc::TLS_CIPHER_CHACHA20_POLY1305),
                iv: iv.as_ref().try_into().ok()?,
                key: key.as_ref().try_into().ok()?,
                salt: [],
                rec_seq,
            }),
        ),
        _ => None,
    }
}

/// What a record the kernel delivered apart asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Control {
    /// close_notify: the peer sends no more (end of stream).
    CloseNotify,
    /// A warning the connection goes on after (TLS 1.2 warnings, TLS 1.3
    /// user_canceled, a TLS 1.2 HelloRequest, which is declined by
    /// ignoring it as RFC 5246 7.4.1.1 allows).
    Ignore(Kind),
    /// Handshake messages to act on, in order.
    Messages(Vec<Message>),
    /// The connection cannot go on.
    Fatal(String),
}

/// A post-handshake handshake message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// NewSessionTicket's body, for rustls.
    Ticket(Vec<u8>),
    /// KeyUpdate; true: the peer asks for ours too.
    KeyUpdate { requested: bool },
}

/// What kind of record it was (for `sockwarden_ktls_records_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    SessionTicket,
    KeyUpdate,
    CloseNotify,
    Alert,
    Other,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::SessionTicket => "session_ticket",
            Kind::KeyUpdate => "key_update",
            Kind::CloseNotify => "close_notify",
            Kind::Alert => "alert",
            Kind::Other => "other",
        }
    }
}

/// Judges a record of `content_type` with `payload` on a connection of
/// `version`. Handshake bytes join `pending` (a message may span records);
/// the complete messages are returned.
pub fn control(
    version: ProtocolVersion,
    content_type: u8,
    payload: &[u8],
    pending: &mut Vec<u8>,
) -> Control {
    match content_type {
        ALERT => alert(version, payload),
        HANDSHAKE => {
            if pending.len() + payload.len() > MAX_HANDSHAKE_MESSAGE {
                return Control::Fatal(format!(
                    "a post-handshake message over {MAX_HANDSHAKE_MESSAGE} bytes"
                ));
            }
            pending.extend_from_slice(payload);
            messages(version, pending)
        }
        CHANGE_CIPHER_SPEC => Control::Fatal("change_cipher_spec after the handshake".into()),
        APPLICATION_DATA => Control::Fatal("application data where a control record was".into()),
        other => Control::Fatal(format!("a record of unknown content type {other}")),
    }
}

/// An alert: close_notify ends the stream; TLS 1.3's user_canceled and
/// TLS 1.2's warnings are passed over; anything else is fatal (RFC 8446 6).
fn alert(version: ProtocolVersion, payload: &[u8]) -> Control {
    let &[level, description] = payload else {
        return Control::Fatal(format!("an alert of {} bytes", payload.len()));
    };
    const WARNING: u8 = 1;
    const CLOSE_NOTIFY: u8 = 0;
    const USER_CANCELED: u8 = 90;
    match (level, description) {
        (_, CLOSE_NOTIFY) => Control::CloseNotify,
        (_, USER_CANCELED) if version == ProtocolVersion::TLSv1_3 => Control::Ignore(Kind::Alert),
        (WARNING, _) if version == ProtocolVersion::TLSv1_2 => Control::Ignore(Kind::Alert),
        _ => {
            let name = rustls::AlertDescription::from(description);
            Control::Fatal(format!("alert {name:?} from the peer"))
        }
    }
}

/// Takes the complete handshake messages off the front of `pending`.
fn messages(version: ProtocolVersion, pending: &mut Vec<u8>) -> Control {
    let mut found = Vec::new();
    let mut at = 0;
    let mut hello_requests = 0;
    while let Some(&[typ, a, b, c]) = pending.get(at..at + 4) {
        let len = u32::from_be_bytes([0, a, b, c]) as usize;
        let Some(body) = pending.get(at + 4..at + 4 + len) else {
            break;
        };
        match (version, typ, body) {
            (ProtocolVersion::TLSv1_3, NEW_SESSION_TICKET, _) => {
                found.push(Message::Ticket(body.to_vec()));
            }
            (ProtocolVersion::TLSv1_3, KEY_UPDATE, &[r @ (0 | 1)]) => {
                found.push(Message::KeyUpdate { requested: r == 1 });
            }
            (ProtocolVersion::TLSv1_2, HELLO_REQUEST, []) => hello_requests += 1,
            (_, typ, _) => {
                return Control::Fatal(format!(
                    "handshake message {typ} ({len} bytes) after the handshake"
                ))
            }
        }
        at += 4 + len;
    }
    pending.drain(..at);
    if found.is_empty() && hello_requests > 0 {
        return Control::Ignore(Kind::Other);
    }
    Control::Messages(found)
}

#[cfg(test)]
mod tests;
