//! The workload's TLS ClientHello, read without consuming a byte.
//!
//! [`parse`] is pure: given the bytes at the head of a connection, it says
//! whether they are a whole ClientHello (and what it offers), could still
//! become one, are not TLS at all (plain HTTP on the same port), or are a
//! malformed hello, with the precise reason. [`peek`] runs it over
//! `MSG_PEEK` on a tokio `TcpStream` until it decides, so a connection that
//! is spliced, intercepted or refused afterwards still holds every byte.
//!
//! Records are reassembled here: a ClientHello may span several handshake
//! records (RFC 8446 5.1) and a record may arrive in pieces. Record and
//! handshake headers are judged as soon as their bytes arrive; the hello's
//! body, once all of it is there, is decoded with `tls-parser`, and then
//! checked strictly where a second reading could differ from ours (one
//! host name, no duplicate extension, list lengths that match their
//! entries). See docs/tls.md.

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::os::fd::AsRawFd;
use std::time::Duration;

use nix::sys::socket::{recv, MsgFlags};
use tls_parser::{parse_tls_client_hello_extension, parse_tls_handshake_client_hello};
use tls_parser::{SNIType, TlsExtension};
use tokio::io::Interest;
use tokio::net::TcpStream;

/// The most bytes [`parse`] looks at and [`peek`] holds: all the records
/// that carry one ClientHello, headers included (32 KiB).
///
/// Real hellos are well under 4 KiB (the largest, with post-quantum key
/// shares, GREASE ECH and session tickets, about 2–3 KiB); 32 KiB holds a
/// hello that needs two full records (up to 32,758 bytes of handshake), or a
/// 5 KiB hello cut into one-byte records. It also stays under what Linux
/// lets a peer send into a socket nobody reads (the receive window of a
/// default 128 KiB `tcp_rmem` buffer is about 64 KiB): a peek never opens
/// the window, so a larger bound could wait for bytes that cannot arrive.
pub const MAX_CLIENT_HELLO: usize = 32 * 1024;

/// Longest host name accepted in server_name: 253 characters, the text form
/// of the 255-octet limit on a DNS name (RFC 1035 2.3.4).
pub const MAX_SERVER_NAME: usize = 253;

/// Largest plaintext record payload (RFC 8446 5.1: 2^14).
const MAX_RECORD: usize = 1 << 14;
/// A record header: content type, version, length.
const RECORD_HEADER: usize = 5;
/// A handshake header: type, 24-bit length.
const HANDSHAKE_HEADER: usize = 4;
const CONTENT_HANDSHAKE: u8 = 0x16;
const HANDSHAKE_CLIENT_HELLO: u8 = 1;
/// encrypted_client_hello (draft-ietf-tls-esni, IANA TLS ExtensionType).
pub const EXT_ECH: u16 = 0xfe0d;
const TLS12: u16 = 0x0303;
const TLS13: u16 = 0x0304;

/// What a ClientHello offers, as far as the proxy decides on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientHello {
    /// host_name from server_name, ASCII-lowercased; None if absent.
    pub sni: Option<String>,
    /// Offered application protocols, in order; empty without ALPN.
    pub alpn: Vec<Vec<u8>>,
    /// encrypted_client_hello (0xfe0d) is present: this is an outer hello,
    /// and `sni` is its public name, not the name the client wants.
    pub ech: bool,
    /// Which of TLS 1.3 and 1.2 the client offers.
    pub versions: TlsVersions,
    /// Bytes of the records that hold the hello (what a splice must still
    /// carry; what interception hands to rustls first).
    pub len: usize,
}

/// The protocol versions a ClientHello offers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TlsVersions {
    /// supported_versions lists 0x0304.
    pub tls13: bool,
    /// supported_versions lists 0x0303, or (without it) legacy_version is
    /// 0x0303 or above.
    pub tls12: bool,
}

/// The answer of [`parse`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parse {
    /// A whole, well-formed ClientHello.
    Complete(ClientHello),
    /// A proper prefix of something that can still be a ClientHello within
    /// [`MAX_CLIENT_HELLO`]: more bytes are needed.
    Incomplete,
    /// Not a TLS handshake record: the first byte is not 0x16, or the
    /// record version is not 0x03xx. Go on as plain HTTP.
    NotTls,
    /// TLS, but not a well-formed ClientHello.
    Malformed(Malformed),
}

/// Why bytes that start as TLS are not a well-formed ClientHello. Records
/// are counted from 1.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Malformed {
    #[error("record length 0 (record {0})")]
    EmptyRecord(usize),
    #[error("record length {len} over 16384 (record {record}, RFC 8446 5.1)")]
    RecordTooLong { record: usize, len: usize },
    /// Only the major byte is named: it decides, and the answer must not
    /// change when the minor byte arrives.
    #[error("record version 0x{major:02x}xx is not 0x03xx (record {record})")]
    RecordVersion { record: usize, major: u8 },
    #[error("a non-handshake record (content type {content_type}, record {record}) before the ClientHello ended")]
    NotHandshake { record: usize, content_type: u8 },
    #[error("handshake type {0} is not a ClientHello")]
    NotClientHello(u8),
    #[error("ClientHello over {MAX_CLIENT_HELLO} bytes (with its record headers)")]
    TooLarge,
    #[error("{0} bytes after the ClientHello in its last record")]
    TrailingBytes(usize),
    #[error("the ClientHello's fixed fields (version, random, session id, cipher suites, compression methods) do not decode")]
    Body,
    #[error("the extensions block's length does not match the ClientHello's")]
    ExtensionsLength,
    #[error("extension 0x{0:04x} does not decode")]
    Extension(u16),
    #[error("extension 0x{0:04x} appears twice (RFC 8446 4.2)")]
    DuplicateExtension(u16),
    #[error("server_name list length does not match its entries")]
    ServerNameEncoding,
    #[error("server_name lists no name")]
    ServerNameNone,
    #[error("server_name lists two host names")]
    ServerNameTwice,
    #[error("server_name entry of name type {0} is not host_name (0)")]
    ServerNameType(u8),
    #[error("server_name host_name is empty")]
    ServerNameEmpty,
    #[error("server_name is {0} bytes, over {MAX_SERVER_NAME}")]
    ServerNameTooLong(usize),
    #[error("server_name is not ASCII")]
    ServerNameNotAscii,
    #[error("server_name is an IP address literal (RFC 6066 3)")]
    ServerNameIp,
    #[error("server_name ends with a dot (RFC 6066 3)")]
    ServerNameTrailingDot,
    #[error("server_name holds {0:?}: only letters, digits, '-', '_' and '.' are allowed")]
    ServerNameChar(char),
    #[error("server_name has an empty label or a label over 63 bytes")]
    ServerNameLabel,
    #[error("ALPN list length does not match its entries")]
    AlpnEncoding,
    #[error("ALPN lists no protocol (RFC 7301 3.1)")]
    AlpnNone,
    #[error("ALPN lists an empty protocol name (RFC 7301 3.1)")]
    AlpnEmptyName,
    #[error("supported_versions list length does not match its entries")]
    SupportedVersions,
}

/// Reads `buf` as the first bytes of a TLS connection. Pure; never panics;
/// allocates at most about [`MAX_CLIENT_HELLO`] bytes plus the decoded
/// lists of a hello of that size, whatever `buf` holds.
pub fn parse(buf: &[u8]) -> Parse {
    match read(buf) {
        Read::Done(p) => p,
        Read::Need(_) => Parse::Incomplete,
    }
}

/// [`parse`], with the number of bytes needed when incomplete.
enum Read {
    Done(Parse),
    /// `buf` must grow to at least this many bytes (> its length, ≤
    /// [`MAX_CLIENT_HELLO`]) before the answer can change.
    Need(usize),
}

fn read(buf: &[u8]) -> Read {
    match frame(buf) {
        Framing::NotTls => Read::Done(Parse::NotTls),
        Framing::Need(n) => Read::Need(n),
        Framing::Bad(m) => Read::Done(Parse::Malformed(m)),
        Framing::Whole { end, hs_len } => {
            let hs = reassemble(&buf[..end], hs_len);
            Read::Done(match decode(&hs[HANDSHAKE_HEADER..]) {
                Ok(mut hello) => {
                    hello.len = end;
                    Parse::Complete(hello)
                }
                Err(m) => Parse::Malformed(m),
            })
        }
    }
}

/// Where the records holding the hello end, from their headers alone.
#[derive(Debug, PartialEq, Eq)]
enum Framing {
    NotTls,
    Need(usize),
    Bad(Malformed),
    /// The hello's records are `buf[..end]`; its handshake message
    /// (header included) is `hs_len` bytes.
    Whole {
        end: usize,
        hs_len: usize,
    },
}

/// The walk over record headers: how far it got.
#[derive(Default)]
struct Walk {
    /// Offset of the next record header.
    at: usize,
    /// Records seen.
    records: usize,
    /// Handshake bytes in the records before `at`.
    hs_got: usize,
    /// The handshake header, as far as it has arrived.
    hs_header: [u8; HANDSHAKE_HEADER],
    /// 4 + the handshake length, once its header is whole.
    hs_len: Option<usize>,
}

fn frame(buf: &[u8]) -> Framing {
    match buf {
        [] => return Framing::Need(1),
        [t, ..] if *t != CONTENT_HANDSHAKE => return Framing::NotTls,
        [_, v, ..] if *v != 3 => return Framing::NotTls,
        _ => {}
    }
    let mut w = Walk::default();
    // Each record takes at least 6 bytes of `buf`, so this ends.
    loop {
        match w.record(buf) {
            Ok(Some(end)) => {
                return Framing::Whole {
                    end,
                    hs_len: w.hs_len.unwrap_or(0),
                }
            }
            Ok(None) => {}
            Err(f) => return f,
        }
    }
}

impl Walk {
    /// Judges the record at `self.at`: Ok(Some(end)) when it completes the
    /// hello, Ok(None) to go on with the next record.
    fn record(&mut self, buf: &[u8]) -> Result<Option<usize>, Framing> {
        self.records += 1;
        let rest = &buf[self.at..];
        let len = self.header(rest)?;
        let payload = &rest[RECORD_HEADER..];
        let payload = &payload[..payload.len().min(len)];
        self.handshake_header(payload)?;
        self.bounds(len)?;
        let end = self.at + RECORD_HEADER + len;
        if buf.len() < end {
            return Err(Framing::Need(end));
        }
        self.at = end;
        self.hs_got += len;
        Ok((Some(self.hs_got) == self.hs_len).then_some(end))
    }

    /// The record's length, from its header (checked as far as it has
    /// arrived; Need while it is partial).
    fn header(&self, rest: &[u8]) -> Result<usize, Framing> {
        let record = self.records;
        if let Some(&t) = rest.first() {
            if t != CONTENT_HANDSHAKE {
                return Err(bad(Malformed::NotHandshake {
                    record,
                    content_type: t,
                }));
            }
        }
        if let Some(&major) = rest.get(1) {
            if major != 3 {
                return Err(bad(Malformed::RecordVersion { record, major }));
            }
        }
        // The rest of the hello needs at least this record's header and
        // one byte, or what the handshake header says is left. (Judged
        // before the length, as it is while the header is partial, so a
        // prefix never answers otherwise than the whole.)
        let more = self.hs_len.map_or(1, |n| n - self.hs_got);
        self.fits(RECORD_HEADER + more)?;
        let Some(h) = rest.get(..RECORD_HEADER) else {
            return Err(Framing::Need(self.at + RECORD_HEADER));
        };
        match usize::from(u16::from_be_bytes([h[3], h[4]])) {
            0 => Err(bad(Malformed::EmptyRecord(record))),
            len if len > MAX_RECORD => Err(bad(Malformed::RecordTooLong { record, len })),
            len => Ok(len),
        }
    }

    /// Takes the handshake header's bytes from this record's payload (as
    /// much of it as has arrived) and judges it as soon as it can.
    fn handshake_header(&mut self, payload: &[u8]) -> Result<(), Framing> {
        let have = self.hs_got.min(HANDSHAKE_HEADER);
        let take = (HANDSHAKE_HEADER - have).min(payload.len());
        self.hs_header[have..have + take].copy_from_slice(&payload[..take]);
        let got = have + take;
        if got >= 1 && self.hs_header[0] != HANDSHAKE_CLIENT_HELLO {
            return Err(bad(Malformed::NotClientHello(self.hs_header[0])));
        }
        if got == HANDSHAKE_HEADER && self.hs_len.is_none() {
            let [_, a, b, c] = self.hs_header;
            let body = u32::from_be_bytes([0, a, b, c]) as usize;
            self.hs_len = Some(HANDSHAKE_HEADER + body);
        }
        Ok(())
    }

    /// Whether a record of `len` payload bytes at `self.at` can still be
    /// part of a hello within the bound.
    /// (The record itself is judged first: it is, whether or not its
    /// payload has shown the handshake header yet.)
    fn bounds(&self, len: usize) -> Result<(), Framing> {
        self.fits(RECORD_HEADER + len)?;
        let Some(hs_len) = self.hs_len else {
            return Ok(());
        };
        match (self.hs_got + len).checked_sub(hs_len) {
            Some(extra) if extra > 0 => Err(bad(Malformed::TrailingBytes(extra))),
            // The hello ends in this record.
            Some(_) => Ok(()),
            // At least one more record, of the rest of the hello.
            None => self.fits(2 * RECORD_HEADER + hs_len - self.hs_got),
        }
    }

    /// Whether `more` bytes from `self.at` stay within the bound.
    fn fits(&self, more: usize) -> Result<(), Framing> {
        if self.at + more > MAX_CLIENT_HELLO {
            return Err(bad(Malformed::TooLarge));
        }
        Ok(())
    }
}

fn bad(m: Malformed) -> Framing {
    Framing::Bad(m)
}

/// The handshake bytes of `records` (whole handshake records, as
/// [`frame`] found them), `hs_len` of them.
fn reassemble(mut records: &[u8], hs_len: usize) -> Vec<u8> {
    let mut hs = Vec::with_capacity(hs_len);
    while let Some(h) = records.get(..RECORD_HEADER) {
        let len = usize::from(u16::from_be_bytes([h[3], h[4]]));
        let end = (RECORD_HEADER + len).min(records.len());
        hs.extend_from_slice(&records[RECORD_HEADER..end]);
        records = &records[end..];
    }
    hs
}

/// What the extensions say, before `len` is known.
#[derive(Default)]
struct Offer {
    sni: Option<String>,
    alpn: Vec<Vec<u8>>,
    ech: bool,
    supported: Option<Vec<u16>>,
}

/// Decodes a whole ClientHello body (after its handshake header).
fn decode(body: &[u8]) -> Result<ClientHello, Malformed> {
    let (rest, ch) = parse_tls_handshake_client_hello(body).map_err(|_| Malformed::Body)?;
    if !rest.is_empty() {
        return Err(Malformed::ExtensionsLength);
    }
    let offer = extensions(ch.ext.unwrap_or_default())?;
    let versions = match &offer.supported {
        Some(v) => TlsVersions {
            tls13: v.contains(&TLS13),
            tls12: v.contains(&TLS12),
        },
        None => TlsVersions {
            tls13: false,
            tls12: ch.version.0 >= TLS12,
        },
    };
    Ok(ClientHello {
        sni: offer.sni,
        alpn: offer.alpn,
        ech: offer.ech,
        versions,
        len: 0,
    })
}

/// Walks the extensions block one extension at a time (so a bad one is
/// named) and refuses any type that appears twice.
fn extensions(mut block: &[u8]) -> Result<Offer, Malformed> {
    let mut offer = Offer::default();
    let mut seen = Vec::new();
    while !block.is_empty() {
        let ty = match block {
            [a, b, _, _, ..] => u16::from_be_bytes([*a, *b]),
            _ => return Err(Malformed::ExtensionsLength),
        };
        let (rest, ext) =
            parse_tls_client_hello_extension(block).map_err(|_| Malformed::Extension(ty))?;
        let data = &block[4..block.len() - rest.len()];
        offer.take(ext, ty, data)?;
        seen.push(ty);
        block = rest;
    }
    seen.sort_unstable();
    match seen.windows(2).find(|w| w[0] == w[1]) {
        Some(w) => Err(Malformed::DuplicateExtension(w[0])),
        None => Ok(offer),
    }
}

impl Offer {
    /// Records one extension of type `ty`, decoded as `ext` from `data`.
    /// tls-parser does not check every length field against what follows
    /// (supported_versions' length byte, trailing bytes after a list), so
    /// the entries are counted against `data` here.
    fn take(&mut self, ext: TlsExtension<'_>, ty: u16, data: &[u8]) -> Result<(), Malformed> {
        match ext {
            TlsExtension::SNI(names) => self.sni = Some(server_name(&names, data.len())?),
            TlsExtension::ALPN(protocols) => self.alpn = alpn(&protocols, data.len())?,
            TlsExtension::SupportedVersions(v) => {
                let listed = data.first().map(|&n| usize::from(n));
                if v.is_empty() || listed != Some(2 * v.len()) || data.len() != 1 + 2 * v.len() {
                    return Err(Malformed::SupportedVersions);
                }
                self.supported = Some(v.iter().map(|v| v.0).collect());
            }
            _ if ty == EXT_ECH => self.ech = true,
            _ => {}
        }
        Ok(())
    }
}

/// The one host_name of a server_name extension of `data_len` bytes,
/// checked and lowercased.
fn server_name(names: &[(SNIType, &[u8])], data_len: usize) -> Result<String, Malformed> {
    let entries: usize = names.iter().map(|(_, n)| 3 + n.len()).sum();
    if names.is_empty() {
        return Err(Malformed::ServerNameNone);
    }
    if data_len != 2 + entries {
        return Err(Malformed::ServerNameEncoding);
    }
    if let Some((t, _)) = names.iter().find(|(t, _)| *t != SNIType::HostName) {
        return Err(Malformed::ServerNameType(t.0));
    }
    match names {
        [(_, name)] => host_name(name),
        _ => Err(Malformed::ServerNameTwice),
    }
}

/// A host_name as a DNS name in ASCII without a trailing dot (RFC 6066 3):
/// letters, digits, '-' and '_' in labels of 1 to 63 bytes, at most
/// [`MAX_SERVER_NAME`] bytes, not an IP address. Lowercased.
fn host_name(name: &[u8]) -> Result<String, Malformed> {
    if name.is_empty() {
        return Err(Malformed::ServerNameEmpty);
    }
    if name.len() > MAX_SERVER_NAME {
        return Err(Malformed::ServerNameTooLong(name.len()));
    }
    let name = std::str::from_utf8(name)
        .ok()
        .filter(|s| s.is_ascii())
        .ok_or(Malformed::ServerNameNotAscii)?;
    if is_ip_literal(name) {
        return Err(Malformed::ServerNameIp);
    }
    if name.ends_with('.') {
        return Err(Malformed::ServerNameTrailingDot);
    }
    let odd = |c: &char| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if let Some(c) = name.chars().find(odd) {
        return Err(Malformed::ServerNameChar(c));
    }
    if name.split('.').any(|l| l.is_empty() || l.len() > 63) {
        return Err(Malformed::ServerNameLabel);
    }
    Ok(name.to_ascii_lowercase())
}

/// An IPv4 or IPv6 literal, also the short and numeric forms
/// `inet_aton` reads as IPv4 ("127.1", "2130706433"): any name whose last
/// label is all digits (no top-level domain is).
fn is_ip_literal(name: &str) -> bool {
    let last = name.rsplit('.').next().unwrap_or(name);
    name.parse::<Ipv4Addr>().is_ok()
        || name.parse::<Ipv6Addr>().is_ok()
        || name.trim_matches(['[', ']']).parse::<Ipv6Addr>().is_ok()
        || (!last.is_empty() && last.bytes().all(|b| b.is_ascii_digit()))
}

/// The ALPN protocol list of an extension of `data_len` bytes.
fn alpn(protocols: &[&[u8]], data_len: usize) -> Result<Vec<Vec<u8>>, Malformed> {
    let entries: usize = protocols.iter().map(|p| 1 + p.len()).sum();
    if data_len != 2 + entries {
        return Err(Malformed::AlpnEncoding);
    }
    if protocols.is_empty() {
        return Err(Malformed::AlpnNone);
    }
    if protocols.iter().any(|p| p.is_empty()) {
        return Err(Malformed::AlpnEmptyName);
    }
    Ok(protocols.iter().map(|p| p.to_vec()).collect())
}

/// Why [`peek`] could not read a ClientHello.
#[derive(Debug, thiserror::Error)]
pub enum PeekError {
    #[error("not TLS: the first bytes are not a TLS handshake record")]
    NotTls,
    #[error("malformed ClientHello: {0}")]
    Malformed(Malformed),
    #[error("no whole ClientHello within {0:?}")]
    Timeout(Duration),
    #[error("the client closed the connection before its ClientHello was whole")]
    Closed,
    #[error("reading the ClientHello: {0}")]
    Io(io::Error),
}

/// Reads the ClientHello at the head of `stream` with `MSG_PEEK`, within
/// `within` for the whole hello, consuming nothing: after it, the stream
/// still returns the hello's bytes first.
///
/// Peeks only when readiness says bytes arrived, and only up to the bytes
/// the parse needs next (the end of the current record); a peek short of
/// that clears readiness (WouldBlock from `try_io`), so the next wait is for
/// new bytes, never a busy loop. The buffer never exceeds
/// [`MAX_CLIENT_HELLO`]. `FIONREAD` is not used: it does not count the bytes
/// sockmap redirects into a linked socket, which a peek does return.
pub async fn peek(stream: &TcpStream, within: Duration) -> Result<ClientHello, PeekError> {
    match tokio::time::timeout(within, peek_loop(stream)).await {
        Ok(done) => done,
        Err(_) => Err(PeekError::Timeout(within)),
    }
}

async fn peek_loop(stream: &TcpStream) -> Result<ClientHello, PeekError> {
    let mut buf = Vec::new();
    let mut need = 1;
    // Each pass waits for readiness, so the deadline in `peek` bounds it.
    loop {
        let ready = stream
            .ready(Interest::READABLE)
            .await
            .map_err(PeekError::Io)?;
        let closed = ready.is_read_closed();
        match stream.try_io(Interest::READABLE, || {
            peek_once(stream, &mut buf, &mut need)
        }) {
            Ok(p) => return outcome(p),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock && closed => {
                return Err(PeekError::Closed)
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(PeekError::Io(e)),
        }
    }
}

/// Peeks up to `need` bytes and parses them, growing `need` while each
/// peek fills the buffer; WouldBlock when the bytes there are not enough.
fn peek_once(stream: &TcpStream, buf: &mut Vec<u8>, need: &mut usize) -> io::Result<Parse> {
    // `need` grows strictly each pass and is at most MAX_CLIENT_HELLO.
    loop {
        buf.resize(*need, 0);
        let n = recv(
            stream.as_raw_fd(),
            &mut buf[..],
            MsgFlags::MSG_PEEK | MsgFlags::MSG_DONTWAIT,
        )?;
        if n == 0 {
            // EOF with nothing queued.
            return Ok(Parse::Incomplete);
        }
        if n < *need {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        match read(&buf[..n]) {
            Read::Done(p) => return Ok(p),
            Read::Need(more) => *need = more,
        }
    }
}

fn outcome(p: Parse) -> Result<ClientHello, PeekError> {
    match p {
        Parse::Complete(hello) => Ok(hello),
        Parse::Incomplete => Err(PeekError::Closed),
        Parse::NotTls => Err(PeekError::NotTls),
        Parse::Malformed(m) => Err(PeekError::Malformed(m)),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use rustls::pki_types::ServerName;
    use rustls::{ClientConfig, ClientConnection, RootCertStore, SupportedProtocolVersion};
    use std::sync::Arc;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    const V13: &[&SupportedProtocolVersion] = &[&rustls::version::TLS13];
    const V12: &[&SupportedProtocolVersion] = &[&rustls::version::TLS12];
    const BOTH: &[&SupportedProtocolVersion] = &[&rustls::version::TLS13, &rustls::version::TLS12];

    /// A rustls client (ring provider, no roots) for `name`.
    pub(crate) fn rustls_client(
        name: &str,
        alpn: &[&[u8]],
        versions: &[&'static SupportedProtocolVersion],
    ) -> ClientConnection {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(versions)
            .expect("versions")
            .with_root_certificates(RootCertStore::empty())
            .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        let name = ServerName::try_from(name.to_owned()).expect("server name");
        ClientConnection::new(Arc::new(config), name).expect("client")
    }

    /// The first flight of a rustls client: its ClientHello.
    fn rustls_hello(
        name: &str,
        alpn: &[&[u8]],
        versions: &[&'static SupportedProtocolVersion],
    ) -> Vec<u8> {
        let mut conn = rustls_client(name, alpn, versions);
        let mut out = Vec::new();
        while conn.wants_write() {
            conn.write_tls(&mut out).expect("write_tls");
        }
        out
    }

    /// `hs` (handshake bytes) cut into handshake records of `chunk` bytes.
    fn records(hs: &[u8], chunk: usize) -> Vec<u8> {
        let mut out = Vec::new();
        for piece in hs.chunks(chunk) {
            out.extend_from_slice(&[0x16, 0x03, 0x01]);
            out.extend_from_slice(&(piece.len() as u16).to_be_bytes());
            out.extend_from_slice(piece);
        }
        out
    }

    /// The handshake bytes of a hello that is one record.
    fn handshake_of(record: &[u8]) -> &[u8] {
        &record[RECORD_HEADER..]
    }

    /// A ClientHello handshake message with these extensions.
    fn crafted_handshake(exts: &[(u16, Vec<u8>)]) -> Vec<u8> {
        let mut block = Vec::new();
        for (ty, data) in exts {
            block.extend_from_slice(&ty.to_be_bytes());
            block.extend_from_slice(&(data.len() as u16).to_be_bytes());
            block.extend_from_slice(data);
        }
        let mut body = vec![0x03, 0x03];
        body.extend_from_slice(&[7; 32]); // random
        body.extend_from_slice(&[0, 0, 2, 0x13, 0x01, 1, 0]); // sid, suites, compression
        body.extend_from_slice(&(block.len() as u16).to_be_bytes());
        body.extend_from_slice(&block);
        let mut hs = vec![HANDSHAKE_CLIENT_HELLO];
        hs.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
        hs.extend_from_slice(&body);
        hs
    }

    /// [`crafted_handshake`] in records of at most 16384 bytes.
    fn crafted(exts: &[(u16, Vec<u8>)]) -> Vec<u8> {
        records(&crafted_handshake(exts), MAX_RECORD)
    }

    /// server_name data listing these (type, name) entries.
    fn sni(names: &[(u8, &[u8])]) -> (u16, Vec<u8>) {
        let mut list = Vec::new();
        for (t, n) in names {
            list.push(*t);
            list.extend_from_slice(&(n.len() as u16).to_be_bytes());
            list.extend_from_slice(n);
        }
        let mut data = (list.len() as u16).to_be_bytes().to_vec();
        data.extend_from_slice(&list);
        (0, data)
    }

    fn host(name: &str) -> (u16, Vec<u8>) {
        sni(&[(0, name.as_bytes())])
    }

    fn complete(buf: &[u8]) -> ClientHello {
        match parse(buf) {
            Parse::Complete(h) => h,
            other => panic!("not complete: {other:?}"),
        }
    }

    fn malformed(buf: &[u8]) -> Malformed {
        match parse(buf) {
            Parse::Malformed(m) => m,
            other => panic!("not malformed: {other:?}"),
        }
    }

    #[test]
    fn rustls_hellos() {
        let h2: &[u8] = b"h2";
        let h11: &[u8] = b"http/1.1";
        // (server name, ALPN, versions) → (sni, tls13, tls12)
        type Case<'a> = (
            &'a str,
            &'a [&'a [u8]],
            &'a [&'static SupportedProtocolVersion],
        );
        let cases: &[(Case, Option<&str>, bool, bool)] = &[
            (("origin.test", &[], BOTH), Some("origin.test"), true, true),
            (
                ("Bucket.S3.AmazonAWS.com", &[h11], V13),
                Some("bucket.s3.amazonaws.com"),
                true,
                false,
            ),
            (
                ("origin.test", &[h2, h11], V12),
                Some("origin.test"),
                false,
                true,
            ),
            (("10.1.2.3", &[h11], BOTH), None, true, true),
            (("2001:db8::1", &[], V13), None, true, false),
        ];
        for ((name, alpn, versions), sni, tls13, tls12) in cases {
            let bytes = rustls_hello(name, alpn, versions);
            let hello = complete(&bytes);
            assert_eq!(hello.sni.as_deref(), *sni, "{name}");
            let want: Vec<Vec<u8>> = alpn.iter().map(|p| p.to_vec()).collect();
            assert_eq!(hello.alpn, want, "{name}");
            assert_eq!(
                hello.versions,
                TlsVersions {
                    tls13: *tls13,
                    tls12: *tls12
                },
                "{name}"
            );
            assert!(!hello.ech, "{name}");
            assert_eq!(hello.len, bytes.len(), "{name}");
        }
    }

    #[test]
    fn curl_and_openssl_hellos() {
        let corpus = |f: &str| {
            let path = format!(
                "{}/fuzz/corpus/client_hello/{f}",
                env!("CARGO_MANIFEST_DIR")
            );
            std::fs::read(&path).expect(&path)
        };
        let curl = complete(&corpus("curl-origin-test"));
        assert_eq!(curl.sni.as_deref(), Some("origin.test"));
        assert_eq!(curl.alpn, [b"h2".to_vec(), b"http/1.1".to_vec()]);
        assert_eq!(
            curl.versions,
            TlsVersions {
                tls13: true,
                tls12: true
            }
        );
        assert_eq!(curl.len, 517);
        let openssl = complete(&corpus("openssl-alpn-h2-http11"));
        assert_eq!(openssl.sni.as_deref(), Some("bucket.s3.amazonaws.com"));
        assert_eq!(openssl.alpn, [b"h2".to_vec(), b"http/1.1".to_vec()]);
        let tls12 = complete(&corpus("openssl-tls12-nosni"));
        assert_eq!(tls12.sni, None);
        assert_eq!(
            tls12.versions,
            TlsVersions {
                tls13: false,
                tls12: true
            }
        );
    }

    /// Every proper prefix is Incomplete (and asks for more than it has,
    /// within the bound); the whole is Complete.
    fn every_split(bytes: &[u8]) -> ClientHello {
        for cut in 0..bytes.len() {
            match read(&bytes[..cut]) {
                Read::Need(n) => assert!(n > cut && n <= MAX_CLIENT_HELLO, "{cut}: need {n}"),
                Read::Done(p) => panic!("prefix of {cut} bytes: {p:?}"),
            }
        }
        complete(bytes)
    }

    #[test]
    fn every_prefix_is_incomplete() {
        let bytes = rustls_hello("origin.test", &[b"http/1.1"], BOTH);
        let hello = every_split(&bytes);
        assert_eq!(hello.sni.as_deref(), Some("origin.test"));
    }

    #[test]
    fn refragmented_hellos() {
        let bytes = rustls_hello("origin.test", &[b"http/1.1"], BOTH);
        let whole = complete(&bytes);
        let hs = handshake_of(&bytes);
        for chunk in 1..=hs.len() {
            let many = records(hs, chunk);
            let hello = complete(&many);
            assert_eq!(hello.len, many.len(), "chunk {chunk}");
            assert_eq!(
                ClientHello {
                    len: whole.len,
                    ..hello
                },
                whole,
                "chunk {chunk}"
            );
        }
        for chunk in [1, 3, 4, 5, 100] {
            every_split(&records(hs, chunk));
        }
    }

    #[test]
    fn bytes_after_the_hello_records_are_not_counted() {
        let mut bytes = rustls_hello("origin.test", &[], V13);
        let len = bytes.len();
        // Middlebox-compatibility ChangeCipherSpec, then early data.
        bytes.extend_from_slice(&[0x14, 0x03, 0x03, 0x00, 0x01, 0x01, 0x17, 0x03, 0x03]);
        assert_eq!(complete(&bytes).len, len);
    }

    /// A hello whose handshake message is `hs_len` bytes, padded.
    fn padded(hs_len: usize) -> Vec<u8> {
        let base = crafted_handshake(&[host("big.test"), (21, Vec::new())]).len();
        crafted(&[host("big.test"), (21, vec![0; hs_len - base])])
    }

    #[test]
    fn hellos_larger_than_one_record() {
        let two = padded(20_000);
        let hello = complete(&two);
        assert_eq!(
            (hello.sni.as_deref(), hello.len),
            (Some("big.test"), 20_010)
        );
        // The largest that fits: two records, headers included.
        let largest = padded(MAX_CLIENT_HELLO - 2 * RECORD_HEADER);
        assert_eq!(complete(&largest).len, MAX_CLIENT_HELLO);
        let over = padded(MAX_CLIENT_HELLO - 2 * RECORD_HEADER + 1);
        assert_eq!(malformed(&over), Malformed::TooLarge);
        // Known too large from the first record's headers alone.
        assert_eq!(malformed(&over[..RECORD_HEADER + 4]), Malformed::TooLarge);
        // Small records: the bound counts their headers.
        let hs = crafted_handshake(&[host("big.test"), (21, vec![0; 6000])]);
        assert_eq!(malformed(&records(&hs, 1)), Malformed::TooLarge);
        assert_eq!(
            complete(&records(&hs, 1000)).sni.as_deref(),
            Some("big.test")
        );
    }

    #[test]
    fn encrypted_client_hello() {
        let bytes = crafted(&[host("public.example"), (EXT_ECH, vec![0; 40])]);
        let hello = complete(&bytes);
        assert!(hello.ech);
        assert_eq!(hello.sni.as_deref(), Some("public.example"));
        assert!(!complete(&crafted(&[host("public.example")])).ech);
    }

    #[test]
    fn not_tls() {
        let cases: &[&[u8]] = &[
            b"GET / HTTP/1.1\r\n",
            b"G",
            &[0x16, 0x02],
            &[0x16, 0x00, 0x01, 0x00],
            &[0x80, 0x2e, 0x01, 0x03, 0x01], // SSL 2.0 compatible hello
            &[0x17, 0x03, 0x03, 0x00, 0x10],
        ];
        for c in cases {
            assert_eq!(parse(c), Parse::NotTls, "{c:?}");
        }
        for c in [&[][..], &[0x16], &[0x16, 0x03], &[0x16, 0x03, 0x01, 0x00]] {
            assert_eq!(parse(c), Parse::Incomplete, "{c:?}");
        }
    }

    #[test]
    fn malformed_framing() {
        let good = rustls_hello("origin.test", &[], V13);
        let hs = handshake_of(&good).to_vec();
        let two = records(&hs, 50);
        let second = 55; // offset of the second record's header
        let with = |at: usize, bytes: &[u8]| {
            let mut b = two.clone();
            b[at..at + bytes.len()].copy_from_slice(bytes);
            b
        };
        let mut trailing = hs.clone();
        trailing.extend_from_slice(&[0x14, 0, 0, 0]);
        let cases: Vec<(Vec<u8>, Malformed)> = vec![
            (
                vec![0x16, 0x03, 0x01, 0x00, 0x00],
                Malformed::EmptyRecord(1),
            ),
            (
                vec![0x16, 0x03, 0x01, 0x40, 0x01],
                Malformed::RecordTooLong {
                    record: 1,
                    len: 16385,
                },
            ),
            (
                vec![0x16, 0x03, 0x03, 0x00, 0x04, 0x02],
                Malformed::NotClientHello(2),
            ),
            (
                with(second, &[0x16, 0x03, 0x01, 0x00, 0x00]),
                Malformed::EmptyRecord(2),
            ),
            (
                with(second, &[0x16, 0x02, 0x00]),
                Malformed::RecordVersion {
                    record: 2,
                    major: 2,
                },
            ),
            (
                with(second, &[0x17]),
                Malformed::NotHandshake {
                    record: 2,
                    content_type: 0x17,
                },
            ),
            (
                with(second, &[0x15, 0x03, 0x03, 0x00, 0x02]),
                Malformed::NotHandshake {
                    record: 2,
                    content_type: 0x15,
                },
            ),
            (records(&trailing, MAX_RECORD), Malformed::TrailingBytes(4)),
            (
                vec![0x16, 0x03, 0x01, 0x00, 0x04, 1, 0, 0, 0],
                Malformed::Body,
            ),
        ];
        for (bytes, want) in cases {
            assert_eq!(malformed(&bytes), want, "{bytes:?}");
            assert!(!want.to_string().is_empty());
            // A prefix is undecided or decided the same way (the minor
            // version byte arriving must not change the reason).
            for cut in 0..bytes.len() {
                let p = parse(&bytes[..cut]);
                assert!(
                    p == Parse::Incomplete || p == Parse::Malformed(want.clone()),
                    "{cut}"
                );
            }
        }
        // Trailing bytes are known from the last record's header.
        let t = records(&trailing, MAX_RECORD);
        assert_eq!(
            malformed(&t[..RECORD_HEADER + 4]),
            Malformed::TrailingBytes(4)
        );
    }

    #[test]
    fn malformed_body_and_extensions() {
        let hs = crafted_handshake(&[host("a.test")]);
        let mut ext_len_off = hs.clone();
        let at = HANDSHAKE_HEADER + 2 + 32 + 1 + 4 + 2; // extensions length
        ext_len_off[at + 1] += 1;
        let mut extra = hs.clone();
        extra.push(0);
        let body_len = (extra.len() - HANDSHAKE_HEADER) as u32;
        extra[1..4].copy_from_slice(&body_len.to_be_bytes()[1..]);
        let alpn = |list: &[&[u8]]| {
            let mut l = Vec::new();
            for p in list {
                l.push(p.len() as u8);
                l.extend_from_slice(p);
            }
            let mut d = (l.len() as u16).to_be_bytes().to_vec();
            d.extend_from_slice(&l);
            (16, d)
        };
        let mut sni_extra = host("a.test");
        sni_extra.1.push(0);
        let mut alpn_extra = alpn(&[b"h2"]);
        alpn_extra.1.push(0);
        let long = "a.".repeat(126) + "bc"; // 254 bytes
        let cases: Vec<(Vec<u8>, Malformed)> = vec![
            (
                records(&ext_len_off, MAX_RECORD),
                Malformed::ExtensionsLength,
            ),
            (records(&extra, MAX_RECORD), Malformed::ExtensionsLength),
            (crafted(&[(16, vec![0, 9, 2])]), Malformed::Extension(16)),
            (
                crafted(&[host("a.test"), host("b.test")]),
                Malformed::DuplicateExtension(0),
            ),
            (crafted(&[(0, vec![])]), Malformed::ServerNameNone),
            (crafted(&[sni(&[])]), Malformed::ServerNameNone),
            (crafted(&[sni_extra]), Malformed::ServerNameEncoding),
            (
                crafted(&[sni(&[(0, b"a.test"), (0, b"b.test")])]),
                Malformed::ServerNameTwice,
            ),
            (
                crafted(&[sni(&[(1, b"a.test")])]),
                Malformed::ServerNameType(1),
            ),
            (crafted(&[host("")]), Malformed::ServerNameEmpty),
            (crafted(&[host(&long)]), Malformed::ServerNameTooLong(254)),
            (
                crafted(&[sni(&[(0, "bücher.test".as_bytes())])]),
                Malformed::ServerNameNotAscii,
            ),
            (
                crafted(&[sni(&[(0, b"a\xff.test")])]),
                Malformed::ServerNameNotAscii,
            ),
            (
                crafted(&[host("origin.test.")]),
                Malformed::ServerNameTrailingDot,
            ),
            (
                crafted(&[host("*.s3.amazonaws.com")]),
                Malformed::ServerNameChar('*'),
            ),
            (
                crafted(&[host("a.test\0.evil")]),
                Malformed::ServerNameChar('\0'),
            ),
            (crafted(&[host("a..test")]), Malformed::ServerNameLabel),
            (
                crafted(&[host(&("a".repeat(64) + ".test"))]),
                Malformed::ServerNameLabel,
            ),
            (crafted(&[alpn_extra]), Malformed::AlpnEncoding),
            (crafted(&[alpn(&[])]), Malformed::AlpnNone),
            (crafted(&[alpn(&[b"h2", b""])]), Malformed::AlpnEmptyName),
            (crafted(&[(43, vec![3, 3, 4, 3])]), Malformed::Extension(43)),
            (crafted(&[(43, vec![0])]), Malformed::SupportedVersions),
            (crafted(&[(43, vec![2, 3])]), Malformed::SupportedVersions),
            (
                crafted(&[(43, vec![2, 3, 4, 3, 3])]),
                Malformed::SupportedVersions,
            ),
        ];
        for (bytes, want) in cases {
            assert_eq!(malformed(&bytes), want, "{want}");
        }
    }

    #[test]
    fn server_name_decisions() {
        let long = "a.".repeat(125) + "abc"; // 253 bytes
        let ok = [
            ("Origin.TEST", "origin.test"),
            ("xn--bcher-kva.example", "xn--bcher-kva.example"),
            ("_acme.my_host.test", "_acme.my_host.test"),
            ("localhost", "localhost"),
            ("1a.test", "1a.test"),
            (long.as_str(), long.as_str()),
        ];
        for (name, want) in ok {
            assert_eq!(host_name(name.as_bytes()).as_deref(), Ok(want), "{name}");
        }
        for ip in ["10.1.2.3", "127.1", "2130706433", "::1", "[::1]", "a.b.123"] {
            assert_eq!(
                host_name(ip.as_bytes()),
                Err(Malformed::ServerNameIp),
                "{ip}"
            );
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        // A cheap stand-in for the fuzz target: every single-byte change
        // of a real hello parses to something, Complete only within it.
        let bytes = rustls_hello("origin.test", &[b"http/1.1"], BOTH);
        for at in 0..bytes.len() {
            for v in [0x00, 0x01, 0x7f, 0xff] {
                let mut b = bytes.clone();
                b[at] = v;
                if let Parse::Complete(h) = parse(&b) {
                    assert!(h.len <= b.len());
                }
            }
        }
    }

    /// A connected loopback pair: (client, the proxy's accepted side).
    pub(crate) async fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let client = TcpStream::connect(addr).await.expect("connect");
        let (server, _) = listener.accept().await.expect("accept");
        (client, server)
    }

    const PATIENCE: Duration = Duration::from_secs(10);

    #[tokio::test]
    async fn peek_a_hello_written_byte_by_byte() {
        let bytes = rustls_hello("origin.test", &[b"http/1.1"], BOTH);
        let (mut client, mut server) = pair().await;
        client.set_nodelay(true).expect("nodelay");
        let sent = bytes.clone();
        let writer = tokio::spawn(async move {
            for b in sent.chunks(1) {
                client.write_all(b).await.expect("write");
                tokio::time::sleep(Duration::from_micros(200)).await;
            }
            client
        });
        let hello = peek(&server, PATIENCE).await.expect("peek");
        assert_eq!(hello.sni.as_deref(), Some("origin.test"));
        assert_eq!(hello.len, bytes.len());
        let _client = writer.await.expect("writer");
        // Nothing consumed: a plain read returns the hello first.
        let mut read = vec![0; bytes.len()];
        server.read_exact(&mut read).await.expect("read");
        assert_eq!(read, bytes);
    }

    #[tokio::test]
    async fn peek_plain_http_is_not_tls() {
        let (mut client, mut server) = pair().await;
        client
            .write_all(b"GET / HTTP/1.1\r\n\r\n")
            .await
            .expect("write");
        let got = peek(&server, PATIENCE).await;
        assert!(matches!(got, Err(PeekError::NotTls)), "{got:?}");
        let mut read = [0; 5];
        server.read_exact(&mut read).await.expect("read");
        assert_eq!(&read, b"GET /");
    }

    #[tokio::test]
    async fn peek_a_malformed_hello() {
        let (mut client, server) = pair().await;
        client
            .write_all(&[0x16, 0x03, 0x01, 0x00, 0x00])
            .await
            .expect("write");
        let got = peek(&server, PATIENCE).await;
        assert!(
            matches!(got, Err(PeekError::Malformed(Malformed::EmptyRecord(1)))),
            "{got:?}"
        );
    }

    #[tokio::test]
    async fn peek_half_a_hello_then_silence_times_out() {
        let bytes = rustls_hello("origin.test", &[], BOTH);
        let (mut client, server) = pair().await;
        client
            .write_all(&bytes[..bytes.len() / 2])
            .await
            .expect("write");
        let within = Duration::from_millis(200);
        let start = tokio::time::Instant::now();
        let got = peek(&server, within).await;
        assert!(
            matches!(got, Err(PeekError::Timeout(d)) if d == within),
            "{got:?}"
        );
        assert!(start.elapsed() < PATIENCE);
    }

    #[tokio::test]
    async fn peek_half_a_hello_then_close() {
        let bytes = rustls_hello("origin.test", &[], BOTH);
        for half in [0, bytes.len() / 2] {
            let (mut client, server) = pair().await;
            client.write_all(&bytes[..half]).await.expect("write");
            drop(client);
            let got = peek(&server, PATIENCE).await;
            assert!(matches!(got, Err(PeekError::Closed)), "{half}: {got:?}");
        }
    }

    #[tokio::test]
    async fn peek_waits_without_spinning() {
        // The hello's second half comes after a pause: the peek waits for
        // it (readiness cleared, not a loop of empty peeks) and completes.
        let bytes = rustls_hello("origin.test", &[], BOTH);
        let (mut client, server) = pair().await;
        client.write_all(&bytes[..10]).await.expect("write");
        let rest = bytes[10..].to_vec();
        let writer = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            client.write_all(&rest).await.expect("write");
            client
        });
        let started = std::time::Instant::now();
        let cpu = cpu_time();
        let hello = peek(&server, PATIENCE).await.expect("peek");
        assert_eq!(hello.len, bytes.len());
        assert!(started.elapsed() >= Duration::from_millis(250));
        assert!(cpu_time() - cpu < Duration::from_millis(150), "busy loop");
        drop(writer.await);
    }

    /// This thread's CPU time.
    fn cpu_time() -> Duration {
        let t =
            nix::time::clock_gettime(nix::time::ClockId::CLOCK_THREAD_CPUTIME_ID).expect("clock");
        Duration::new(t.tv_sec() as u64, t.tv_nsec() as u32)
    }
}
