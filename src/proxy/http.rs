//! The pure HTTP/1.1 core of the proxy: request and response heads are parsed
//! with `httparse`, message framing follows RFC 9112 (section 6 for bodies,
//! section 7.1 for chunked transfer coding), and heads are serialized back
//! for forwarding. Nothing in this module does I/O: every function works on
//! byte slices and owned values only, so it can be tested exhaustively.

use std::time::Duration;

mod chunked;
mod request;
mod response;

pub use chunked::{ChunkError, ChunkedScanner};
pub use request::{prepare_request, raw_host, request_connection, write_request, Request};
pub use response::{
    prepare_response, write_response, ConnectionHeader, Response, MAX_INTERIM_RESPONSES,
};

/// Largest accepted head (start line + header fields + final CRLFCRLF), in bytes.
/// A head larger than this is rejected with [`HeadError::TooLarge`].
pub const MAX_HEAD_BYTES: usize = 64 * 1024;

/// Largest accepted number of header fields in one head; more is treated as
/// [`HeadError::TooLarge`] (431 for a request).
pub const MAX_HEADERS: usize = 128;

/// The HTTP versions this proxy speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// HTTP/1.0
    Http10,
    /// HTTP/1.1
    Http11,
}

impl Version {
    /// The version as written on the start line: `"HTTP/1.0"` or `"HTTP/1.1"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Version::Http10 => "HTTP/1.0",
            Version::Http11 => "HTTP/1.1",
        }
    }

    /// Maps httparse's minor version number.
    fn from_minor(minor: Option<u8>) -> Result<Self, HeadError> {
        match minor {
            Some(0) => Ok(Version::Http10),
            Some(1) => Ok(Version::Http11),
            _ => Err(HeadError::UnsupportedVersion),
        }
    }
}

/// One header field, exactly as received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// The field name, with the case it was received in.
    pub name: String,
    /// The field value bytes (httparse strips surrounding whitespace).
    pub value: Vec<u8>,
}

impl Header {
    /// Appends `name: value\r\n`.
    pub(crate) fn write(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self.name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(&self.value);
        out.extend_from_slice(b"\r\n");
    }
}

/// Whether a byte is a `tchar` (RFC 9110 5.6.2), the characters of a token.
pub(crate) fn tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Whether `s` is a `token` (RFC 9110 5.6.2): one or more tchars.
pub fn is_token(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(tchar)
}

/// Fields whose meaning decides framing, routing or the connection.
const FRAMING_FIELDS: [&str; 10] = [
    "connection",
    "content-length",
    "expect",
    "host",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Whether `name` is spelled with `_` where one of [`FRAMING_FIELDS`] has
/// `-` (`Transfer_Encoding`): servers that map `_` to `-` would read a field
/// this proxy does not.
pub(crate) fn is_framing_lookalike(name: &str) -> bool {
    name.contains('_')
        && FRAMING_FIELDS.iter().any(|f| {
            f.len() == name.len()
                && f.bytes()
                    .zip(name.bytes())
                    .all(|(f, n)| f == n.to_ascii_lowercase() || (f == b'-' && n == b'_'))
        })
}

/// A parsed request head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHead {
    /// The request method, e.g. `GET` (case-sensitive, as received).
    pub method: String,
    /// The request target as received (origin-, absolute-, authority- or asterisk-form).
    pub target: String,
    /// The protocol version of the request line.
    pub version: Version,
    /// All header fields in order of arrival.
    pub headers: Vec<Header>,
}

/// A parsed response head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponseHead {
    /// The protocol version of the status line.
    pub version: Version,
    /// The three-digit status code.
    pub status: u16,
    /// The reason phrase (empty if absent or not valid UTF-8).
    pub reason: String,
    /// All header fields in order of arrival.
    pub headers: Vec<Header>,
}

/// All values of the fields called `name` (ASCII case-insensitive), in order.
fn values_named<'a, 'n>(
    headers: &'a [Header],
    name: &'n str,
) -> impl Iterator<Item = &'a [u8]> + use<'a, 'n> {
    headers
        .iter()
        .filter(move |h| h.name.eq_ignore_ascii_case(name))
        .map(|h| h.value.as_slice())
}

/// Whether a byte is optional whitespace (SP / HTAB).
fn is_ows(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

/// Strips leading and trailing SP / HTAB.
fn trim_ows(mut s: &[u8]) -> &[u8] {
    while let [first, rest @ ..] = s {
        if !is_ows(*first) {
            break;
        }
        s = rest;
    }
    while let [rest @ .., last] = s {
        if !is_ows(*last) {
            break;
        }
        s = rest;
    }
    s
}

/// The non-empty, whitespace-trimmed elements of every value of the fields
/// called `name`, split on commas (RFC 9110 5.6.1 list syntax).
fn list_elements<'a>(headers: &'a [Header], name: &'a str) -> impl Iterator<Item = &'a [u8]> + 'a {
    values_named(headers, name)
        .flat_map(|v| v.split(|&b| b == b','))
        .map(trim_ows)
        .filter(|e| !e.is_empty())
}

/// Parses `1*DIGIT` into a u64; `None` for anything else (signs, spaces, overflow).
fn parse_digits(s: &[u8]) -> Option<u64> {
    if s.is_empty() {
        return None;
    }
    s.iter().try_fold(0u64, |acc, &b| {
        if b.is_ascii_digit() {
            acc.checked_mul(10)?.checked_add(u64::from(b - b'0'))
        } else {
            None
        }
    })
}

impl RequestHead {
    /// The first value of the header `name` (matched ASCII case-insensitively).
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        values_named(&self.headers, name).next()
    }

    /// All values of the header `name` (matched ASCII case-insensitively), in order.
    pub fn headers_named<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a [u8]> + 'a {
        values_named(&self.headers, name)
    }
}

impl ResponseHead {
    /// The first value of the header `name` (matched ASCII case-insensitively).
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        values_named(&self.headers, name).next()
    }

    /// All values of the header `name` (matched ASCII case-insensitively), in order.
    pub fn headers_named<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a [u8]> + 'a {
        values_named(&self.headers, name)
    }
}

/// Why a head could not be accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeadError {
    /// A syntax problem (httparse's error text, or another description).
    #[error("malformed head: {0}")]
    Malformed(String),
    /// The head exceeds [`MAX_HEAD_BYTES`] or has more than [`MAX_HEADERS`] fields.
    #[error("head larger than 65536 bytes or more than 128 header fields")]
    TooLarge,
    /// Both Content-Length and Transfer-Encoding are present.
    #[error("Content-Length together with Transfer-Encoding")]
    ContentLengthWithTransferEncoding,
    /// Several Content-Length values that differ.
    #[error("conflicting Content-Length values")]
    ConflictingContentLength,
    /// A Content-Length value that is not `1*DIGIT` fitting a u64.
    #[error("invalid Content-Length")]
    InvalidContentLength,
    /// A Transfer-Encoding other than exactly `chunked` (carries the full list text).
    #[error("unsupported Transfer-Encoding: {0}")]
    UnsupportedTransferEncoding(String),
    /// Transfer-Encoding in an HTTP/1.0 request (RFC 9112 6.1).
    #[error("Transfer-Encoding in an HTTP/1.0 request")]
    TransferEncodingInHttp10,
    /// A protocol version other than HTTP/1.0 or HTTP/1.1 (RFC 9110 15.6.6: 505).
    #[error("unsupported HTTP version")]
    UnsupportedVersion,
    /// An HTTP/1.1 request without a Host field (RFC 9112 3.2).
    #[error("no Host header field")]
    MissingHost,
    /// A Host (or absolute-form authority) that is not `uri-host [":" port]`.
    #[error("invalid Host: {0}")]
    InvalidHost(String),
    /// A request-target that is not a form this proxy forwards (RFC 9112 3.2).
    #[error("invalid request target: {0}")]
    InvalidTarget(String),
    /// CONNECT: the tunnel could not be judged by HTTP rules.
    #[error("CONNECT is not supported: a tunnel cannot be judged by HTTP rules")]
    ConnectUnsupported,
    /// An expectation other than 100-continue (RFC 9110 10.1.1: 417).
    #[error("unsupported expectation: {0}")]
    UnsupportedExpectation(String),
    /// A field name that reads as a framing or routing field once `_` is
    /// taken for `-` (some servers do): its meaning is ambiguous.
    #[error("ambiguous header field name {0:?}")]
    FramingLookalike(String),
    /// An Upgrade value that is not a list of `protocol-name ["/" version]`.
    #[error("invalid Upgrade: {0}")]
    InvalidUpgrade(String),
}

impl HeadError {
    /// A fixed name for metrics labels.
    pub fn kind(&self) -> &'static str {
        match self {
            HeadError::Malformed(_) => "malformed",
            HeadError::TooLarge => "too_large",
            HeadError::ContentLengthWithTransferEncoding => "content_length_with_transfer_encoding",
            HeadError::ConflictingContentLength => "conflicting_content_length",
            HeadError::InvalidContentLength => "invalid_content_length",
            HeadError::UnsupportedTransferEncoding(_) => "unsupported_transfer_encoding",
            HeadError::TransferEncodingInHttp10 => "transfer_encoding_in_http10",
            HeadError::UnsupportedVersion => "unsupported_version",
            HeadError::MissingHost => "missing_host",
            HeadError::InvalidHost(_) => "invalid_host",
            HeadError::InvalidTarget(_) => "invalid_target",
            HeadError::ConnectUnsupported => "connect",
            HeadError::UnsupportedExpectation(_) => "unsupported_expectation",
            HeadError::FramingLookalike(_) => "framing_lookalike",
            HeadError::InvalidUpgrade(_) => "invalid_upgrade",
        }
    }

    /// The status a server answers a *request* with this error: TooLarge → 431,
    /// UnsupportedTransferEncoding and CONNECT → 501, UnsupportedVersion →
    /// 505, UnsupportedExpectation → 417, everything else → 400.
    pub fn request_status(&self) -> u16 {
        match self {
            HeadError::TooLarge => 431,
            HeadError::UnsupportedTransferEncoding(_) | HeadError::ConnectUnsupported => 501,
            HeadError::UnsupportedVersion => 505,
            HeadError::UnsupportedExpectation(_) => 417,
            _ => 400,
        }
    }
}

/// Whether `token` looks like `HTTP/DIGIT.DIGIT` (a well-formed but possibly
/// unsupported version), as opposed to garbage.
fn looks_like_version(token: &[u8]) -> bool {
    matches!(token, [b'H', b'T', b'T', b'P', b'/', major, b'.', minor]
        if major.is_ascii_digit() && minor.is_ascii_digit())
}

/// Maps an httparse error. `version_token` is the text where the version
/// should be, used to tell an unsupported version from a malformed line.
fn map_httparse_error(err: httparse::Error, version_token: Option<&[u8]>) -> HeadError {
    match err {
        httparse::Error::TooManyHeaders => HeadError::TooLarge,
        httparse::Error::Version if version_token.is_some_and(looks_like_version) => {
            HeadError::UnsupportedVersion
        }
        other => HeadError::Malformed(other.to_string()),
    }
}

/// The first line of `buf` after any leading empty lines, without its line ending.
fn first_line(buf: &[u8]) -> &[u8] {
    let start = buf
        .iter()
        .position(|&b| b != b'\r' && b != b'\n')
        .unwrap_or(buf.len());
    let rest = &buf[start..];
    let end = rest
        .iter()
        .position(|&b| b == b'\r' || b == b'\n')
        .unwrap_or(rest.len());
    &rest[..end]
}

/// Whether a serialized head (start line, fields, final CRLF) is over
/// [`MAX_HEAD_BYTES`] or [`MAX_HEADERS`] fields: what the proxy forwards must
/// be what it would itself accept.
fn exceeds_head_limits(head: &[u8]) -> bool {
    let lines = head.windows(2).filter(|w| w == b"\r\n").count();
    head.len() > MAX_HEAD_BYTES || lines.saturating_sub(2) > MAX_HEADERS
}

/// Converts httparse headers into owned [`Header`]s.
fn owned_headers(headers: &[httparse::Header<'_>]) -> Vec<Header> {
    headers
        .iter()
        .map(|h| Header {
            name: h.name.to_string(),
            value: h.value.to_vec(),
        })
        .collect()
}

/// Parses a request head from the start of `buf`.
///
/// Ok(None): incomplete and `buf.len() < MAX_HEAD_BYTES`. Err(TooLarge):
/// incomplete with `buf.len() >= MAX_HEAD_BYTES`, a complete head longer than
/// [`MAX_HEAD_BYTES`], or more than [`MAX_HEADERS`] fields. Ok(Some((head, n))):
/// `n` is the length of the head including the final CRLFCRLF (and any leading
/// empty lines, which are tolerated per RFC 9112 2.2). Versions other than 1.0
/// and 1.1 (`HTTP/2.0`, `HTTP/1.2`) → UnsupportedVersion; other syntax errors,
/// and more than one Host field (RFC 9112 3.2), → Malformed.
pub fn parse_request_head(buf: &[u8]) -> Result<Option<(RequestHead, usize)>, HeadError> {
    let window = &buf[..buf.len().min(MAX_HEAD_BYTES)];
    let mut storage = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut storage);
    let n = match req.parse(window) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => {
            return if buf.len() >= MAX_HEAD_BYTES {
                Err(HeadError::TooLarge)
            } else {
                Ok(None)
            };
        }
        Err(e) => {
            // The version is the third of exactly three tokens: in
            // `GET /a /b HTTP/1.1` the line is malformed, not its version.
            let tokens: Vec<&[u8]> = first_line(window).split(|&b| b == b' ').collect();
            let version = match tokens.as_slice() {
                [_, _, version] => Some(*version),
                _ => None,
            };
            return Err(map_httparse_error(e, version));
        }
    };
    let missing = || HeadError::Malformed("incomplete request line".to_string());
    let method = req.method.ok_or_else(missing)?.to_string();
    let target = req.path.ok_or_else(missing)?.to_string();
    let version = Version::from_minor(req.version)?;
    let headers = owned_headers(req.headers);
    if values_named(&headers, "host").nth(1).is_some() {
        return Err(HeadError::Malformed(
            "multiple Host header fields".to_string(),
        ));
    }
    Ok(Some((
        RequestHead {
            method,
            target,
            version,
            headers,
        },
        n,
    )))
}

/// Parses a response head from the start of `buf`; same contract as
/// [`parse_request_head`] (without the Host check).
pub fn parse_response_head(buf: &[u8]) -> Result<Option<(ResponseHead, usize)>, HeadError> {
    let window = &buf[..buf.len().min(MAX_HEAD_BYTES)];
    let mut storage = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut storage);
    let n = match resp.parse(window) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => {
            return if buf.len() >= MAX_HEAD_BYTES {
                Err(HeadError::TooLarge)
            } else {
                Ok(None)
            };
        }
        Err(e) => {
            let version = first_line(window).split(|&b| b == b' ').next();
            return Err(map_httparse_error(e, version));
        }
    };
    let version = Version::from_minor(resp.version)?;
    let status = resp
        .code
        .ok_or_else(|| HeadError::Malformed("incomplete status line".to_string()))?;
    Ok(Some((
        ResponseHead {
            version,
            status,
            reason: resp.reason.unwrap_or("").to_string(),
            headers: owned_headers(resp.headers),
        },
        n,
    )))
}

/// How the body of a message is delimited (RFC 9112 6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFraming {
    /// No body.
    None,
    /// Exactly this many bytes.
    Length(u64),
    /// Chunked transfer coding; scan it with [`ChunkedScanner`].
    Chunked,
    /// Everything until the sender closes the connection (responses only).
    UntilClose,
}

/// The single Content-Length of a message, if any. Every element of every
/// Content-Length field must be `1*DIGIT` (else InvalidContentLength); the
/// elements must all be equal (else ConflictingContentLength).
fn content_length(headers: &[Header]) -> Result<Option<u64>, HeadError> {
    let mut found: Option<u64> = None;
    let mut conflict = false;
    for value in values_named(headers, "content-length") {
        for element in value.split(|&b| b == b',') {
            let n = parse_digits(trim_ows(element)).ok_or(HeadError::InvalidContentLength)?;
            match found {
                Some(prev) if prev != n => conflict = true,
                _ => found = Some(n),
            }
        }
    }
    if conflict {
        Err(HeadError::ConflictingContentLength)
    } else {
        Ok(found)
    }
}

/// Whether any Transfer-Encoding field is present.
fn has_transfer_encoding(headers: &[Header]) -> bool {
    values_named(headers, "transfer-encoding").next().is_some()
}

/// Whether any Content-Length field is present.
fn has_content_length(headers: &[Header]) -> bool {
    values_named(headers, "content-length").next().is_some()
}

/// The full text of all Transfer-Encoding fields, joined with ", ".
fn transfer_encoding_text(headers: &[Header]) -> String {
    values_named(headers, "transfer-encoding")
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .collect::<Vec<_>>()
        .join(", ")
}

/// RFC 9112 6.3 for requests.
///
/// Transfer-Encoding together with Content-Length → ContentLengthWithTransferEncoding;
/// Transfer-Encoding in an HTTP/1.0 request → TransferEncodingInHttp10; the
/// transfer-coding list (all fields, case-insensitive) must be exactly
/// `["chunked"]`, else UnsupportedTransferEncoding(full list text). Content-Length
/// values must be valid and agree. Neither field → `BodyFraming::None`.
pub fn request_framing(head: &RequestHead) -> Result<BodyFraming, HeadError> {
    let headers = &head.headers;
    if has_transfer_encoding(headers) {
        if has_content_length(headers) {
            return Err(HeadError::ContentLengthWithTransferEncoding);
        }
        if head.version == Version::Http10 {
            return Err(HeadError::TransferEncodingInHttp10);
        }
        let mut codings = list_elements(headers, "transfer-encoding").peekable();
        if codings.peek().is_none() {
            return Err(HeadError::Malformed("empty Transfer-Encoding".to_string()));
        }
        let only_chunked = codings
            .next()
            .is_some_and(|c| c.eq_ignore_ascii_case(b"chunked"))
            && codings.next().is_none();
        return if only_chunked {
            Ok(BodyFraming::Chunked)
        } else {
            Err(HeadError::UnsupportedTransferEncoding(
                transfer_encoding_text(headers),
            ))
        };
    }
    Ok(match content_length(headers)? {
        Some(n) => BodyFraming::Length(n),
        None => BodyFraming::None,
    })
}

/// Lowercased tokens of all Connection header fields (empty elements skipped).
pub fn connection_tokens(headers: &[Header]) -> Vec<String> {
    list_elements(headers, "connection")
        .map(|t| String::from_utf8_lossy(t).to_ascii_lowercase())
        .collect()
}

/// Whether the sender of a message with this version and headers wants the
/// connection closed after it: HTTP/1.1 → a `close` token is present;
/// HTTP/1.0 → no `keep-alive` token is present (or a `close` token is, which
/// always wins).
pub fn wants_close(version: Version, headers: &[Header]) -> bool {
    let tokens = connection_tokens(headers);
    let has = |t: &str| tokens.iter().any(|x| x == t);
    match version {
        Version::Http11 => has("close"),
        Version::Http10 => has("close") || !has("keep-alive"),
    }
}

/// Parameters of a `Keep-Alive` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct KeepAlive {
    /// `timeout=N`: how long the sender keeps an idle connection open.
    pub timeout: Option<Duration>,
    /// `max=N`: how many more requests the sender allows on the connection.
    pub max: Option<u32>,
}

/// Parses `Keep-Alive: timeout=5, max=100` (case-insensitive parameter names,
/// optional quotes around values; unknown or garbage parameters are ignored;
/// the first valid occurrence of each parameter wins).
pub fn keep_alive_params(headers: &[Header]) -> KeepAlive {
    let mut ka = KeepAlive::default();
    let params = values_named(headers, "keep-alive")
        .flat_map(|v| v.split(|&b| b == b',' || b == b';'))
        .filter_map(|p| {
            let eq = p.iter().position(|&b| b == b'=')?;
            let name = trim_ows(&p[..eq]);
            let mut value = trim_ows(&p[eq + 1..]);
            if let [b'"', inner @ .., b'"'] = value {
                value = inner;
            }
            Some((name, parse_digits(value)?))
        });
    for (name, n) in params {
        if name.eq_ignore_ascii_case(b"timeout") && ka.timeout.is_none() {
            ka.timeout = Some(Duration::from_secs(n));
        } else if name.eq_ignore_ascii_case(b"max") && ka.max.is_none() {
            ka.max = u32::try_from(n).ok();
        }
    }
    ka
}

/// Header fields that are always hop-by-hop (RFC 9110 7.6.1).
const HOP_BY_HOP: [&str; 5] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "upgrade",
];

/// Fields that decide framing or routing: never treated as hop-by-hop even
/// when a Connection header lists them, so a client cannot make the proxy
/// drop them (which would desynchronize framing with the upstream).
const NEVER_HOP_BY_HOP: [&str; 3] = ["content-length", "transfer-encoding", "host"];

/// Whether the field `name` is hop-by-hop per RFC 9110 7.6.1: connection,
/// keep-alive, proxy-connection, te, upgrade, and any name in
/// `connection_tokens` — except Content-Length, Transfer-Encoding and Host,
/// which are kept even if listed (they carry framing and routing). Transfer-Encoding
/// is not hop-by-hop here: chunked bodies are forwarded verbatim.
pub fn is_hop_by_hop(name: &str, connection_tokens: &[String]) -> bool {
    if HOP_BY_HOP.iter().any(|h| name.eq_ignore_ascii_case(h)) {
        return true;
    }
    if NEVER_HOP_BY_HOP
        .iter()
        .any(|h| name.eq_ignore_ascii_case(h))
    {
        return false;
    }
    connection_tokens
        .iter()
        .any(|t| name.eq_ignore_ascii_case(t))
}

/// Replaces CR and LF with a space so text can go into a header line.
fn sanitize_header_text(s: &str) -> String {
    s.replace(['\r', '\n'], " ")
}

/// A complete response the proxy generates itself: status line, `content-type:
/// text/plain; charset=utf-8`, `content-length`, each of `extra_headers` (CR and
/// LF in names and values replaced by a space), `connection: close` if `close`,
/// the blank line, then `body`.
pub fn local_response(
    status: u16,
    extra_headers: &[(&str, &str)],
    body: &str,
    close: bool,
) -> Vec<u8> {
    let mut head = format!(
        "HTTP/1.1 {status} {}\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: {}\r\n",
        reason_phrase(status),
        body.len()
    );
    for (name, value) in extra_headers {
        head.push_str(&sanitize_header_text(name));
        head.push_str(": ");
        head.push_str(&sanitize_header_text(value));
        head.push_str("\r\n");
    }
    if close {
        head.push_str("connection: close\r\n");
    }
    head.push_str("\r\n");
    let mut out = head.into_bytes();
    out.extend_from_slice(body.as_bytes());
    out
}

/// The reason phrase the proxy uses for `status` (RFC 9110 names), `"Unknown"`
/// for statuses it does not generate.
pub fn reason_phrase(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        407 => "Proxy Authentication Required",
        408 => "Request Timeout",
        413 => "Content Too Large",
        421 => "Misdirected Request",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        505 => "HTTP Version Not Supported",
        _ => "Unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A list of header fields as (name, value) pairs.
    type Fields = &'static [(&'static str, &'static str)];
    /// An expected framing result.
    type Framed = Result<BodyFraming, HeadError>;
    fn hdrs(list: &[(&str, &str)]) -> Vec<Header> {
        list.iter()
            .map(|(n, v)| Header {
                name: n.to_string(),
                value: v.as_bytes().to_vec(),
            })
            .collect()
    }

    fn req(version: Version, list: &[(&str, &str)]) -> RequestHead {
        RequestHead {
            method: "POST".to_string(),
            target: "/upload".to_string(),
            version,
            headers: hdrs(list),
        }
    }

    fn parse_req(raw: &str) -> (RequestHead, usize) {
        parse_request_head(raw.as_bytes())
            .expect("parse ok")
            .expect("complete")
    }

    // ---------------------------------------------------------------- parsing

    #[test]
    fn version_as_str() {
        assert_eq!(Version::Http10.as_str(), "HTTP/1.0");
        assert_eq!(Version::Http11.as_str(), "HTTP/1.1");
    }

    #[test]
    fn parses_simple_get() {
        let raw = "GET /index.html?x=1 HTTP/1.1\r\nHost: example.com\r\nX-Mixed-Case: a b \r\nAccept: */*\r\n\r\nBODY";
        let (head, n) = parse_req(raw);
        assert_eq!(n, raw.len() - 4);
        assert_eq!(head.method, "GET");
        assert_eq!(head.target, "/index.html?x=1");
        assert_eq!(head.version, Version::Http11);
        assert_eq!(head.headers.len(), 3);
        assert_eq!(head.headers[1].name, "X-Mixed-Case");
        assert_eq!(head.header("x-mixed-case"), Some(&b"a b"[..]));
        assert_eq!(head.header("HOST"), Some(&b"example.com"[..]));
        assert_eq!(head.header("missing"), None);
    }

    #[test]
    fn parses_http10_request() {
        let (head, _) = parse_req("GET / HTTP/1.0\r\n\r\n");
        assert_eq!(head.version, Version::Http10);
        assert!(head.headers.is_empty());
    }

    #[test]
    fn tolerates_leading_empty_lines() {
        let raw = "\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n";
        let (head, n) = parse_req(raw);
        assert_eq!(n, raw.len());
        assert_eq!(head.method, "GET");
    }

    #[test]
    fn incomplete_request_is_none() {
        let cases = [
            "",
            "\r\n",
            "G",
            "GET",
            "GET / HTTP/1.",
            "GET / HTTP/1.1",
            "GET / HTTP/1.1\r\n",
            "GET / HTTP/1.1\r\nHost: a",
            "GET / HTTP/1.1\r\nHost: a\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\n\r",
        ];
        for raw in cases {
            assert_eq!(parse_request_head(raw.as_bytes()), Ok(None), "{raw:?}");
        }
    }

    #[test]
    fn every_prefix_of_a_head_is_incomplete() {
        let raw = b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\n";
        for cut in 0..raw.len() {
            assert_eq!(parse_request_head(&raw[..cut]), Ok(None), "cut {cut}");
        }
        let (_, n) = parse_request_head(raw).unwrap().unwrap();
        assert_eq!(n, raw.len());
    }

    fn head_with_filler(filler_len: usize, complete: bool) -> Vec<u8> {
        let mut raw = b"GET / HTTP/1.1\r\nX-Fill: ".to_vec();
        raw.extend(std::iter::repeat_n(b'a', filler_len));
        raw.extend_from_slice(b"\r\n");
        if complete {
            raw.extend_from_slice(b"\r\n");
        }
        raw
    }

    #[test]
    fn size_limits() {
        let prefix = b"GET / HTTP/1.1\r\nX-Fill: ".len();
        // Filler such that the complete head is exactly MAX_HEAD_BYTES long.
        let exact = MAX_HEAD_BYTES - prefix - 4;

        let at_limit = head_with_filler(exact, true);
        assert_eq!(at_limit.len(), MAX_HEAD_BYTES);
        let (_, n) = parse_request_head(&at_limit).unwrap().unwrap();
        assert_eq!(n, MAX_HEAD_BYTES);

        let over = head_with_filler(exact + 1, true);
        assert!(matches!(
            parse_request_head(&over),
            Err(HeadError::TooLarge)
        ));

        let big_incomplete = head_with_filler(70_000, false);
        assert!(big_incomplete.len() > MAX_HEAD_BYTES);
        assert!(matches!(
            parse_request_head(&big_incomplete),
            Err(HeadError::TooLarge)
        ));

        // An incomplete head: below the limit it is just incomplete, at the limit too large.
        let incomplete = head_with_filler(exact + 10, false);
        assert!(matches!(
            parse_request_head(&incomplete[..MAX_HEAD_BYTES - 1]),
            Ok(None)
        ));
        assert!(matches!(
            parse_request_head(&incomplete[..MAX_HEAD_BYTES]),
            Err(HeadError::TooLarge)
        ));

        // A small head followed by lots of body bytes is fine.
        let mut with_body = b"POST / HTTP/1.1\r\nContent-Length: 100000\r\n\r\n".to_vec();
        let head_len = with_body.len();
        with_body.extend(std::iter::repeat_n(b'b', 100_000));
        let (_, n) = parse_request_head(&with_body).unwrap().unwrap();
        assert_eq!(n, head_len);
    }

    fn head_with_fields(count: usize) -> String {
        let mut raw = String::from("GET / HTTP/1.1\r\n");
        for i in 0..count {
            raw.push_str(&format!("X-H{i}: v\r\n"));
        }
        raw.push_str("\r\n");
        raw
    }

    #[test]
    fn header_count_limit() {
        let ok = head_with_fields(MAX_HEADERS);
        let (head, _) = parse_req(&ok);
        assert_eq!(head.headers.len(), MAX_HEADERS);
        let too_many = head_with_fields(MAX_HEADERS + 1);
        assert_eq!(
            parse_request_head(too_many.as_bytes()),
            Err(HeadError::TooLarge)
        );
        let resp_too_many = too_many.replacen("GET / HTTP/1.1", "HTTP/1.1 200 OK", 1);
        assert_eq!(
            parse_response_head(resp_too_many.as_bytes()),
            Err(HeadError::TooLarge)
        );
    }

    #[test]
    /// RFC 9112 2.2 (bare CR), 5.1 (no whitespace before the colon), 5.2
    /// (obs-fold), RFC 9110 5.5 (control characters), 3.2 (one Host).
    fn malformed_requests() {
        let cases: &[&[u8]] = &[
            b"GET / HTTP/1.1\r\nHost : a\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost\t: a\r\n\r\n",
            b"GET / HTTP/1.1\r\nX\x01: a\r\n\r\n",
            b"GET / HTTP/1.1\r\n X: a\r\n\r\n",
            b"GET / HTTP/1.1\rHost: a\r\n\r\n",
            b"G(T / HTTP/1.1\r\n\r\n",
            b"GET\t/ HTTP/1.1\r\n\r\n",
            b"GET / HTTP/1.1\r\nBad Name: x\r\n\r\n",
            b"GET / HTTP/1.1\r\nNo-Colon\r\n\r\n",
            b"GET / HTTP/1.1\r\n: empty-name\r\n\r\n",
            b"GET / HTTP/1.1\r\nX: a\x00b\r\n\r\n",
            b"GET / HTTP/1.1\r\nX: a\x7fb\r\n\r\n",
            b"GET / HTTP/1.1\r\nX: a\rb\r\n\r\n",
            b"GET / HTTP/1.1\r\nX: a\r\n folded\r\n\r\n",
            b"GET /a\xff HTTP/1.1\r\n\r\n",
            b"GET / FOO/1.1\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nhost: a\r\n\r\n",
        ];
        for raw in cases {
            let res = parse_request_head(raw);
            assert!(
                matches!(res, Err(HeadError::Malformed(_))),
                "{:?} gave {res:?}",
                String::from_utf8_lossy(raw)
            );
            assert_eq!(res.unwrap_err().request_status(), 400);
        }
    }

    #[test]
    fn malformed_carries_httparse_text() {
        let err = parse_request_head(b"GET / HTTP/1.1\r\nBad Name: x\r\n\r\n").unwrap_err();
        assert_eq!(err, HeadError::Malformed("invalid header name".into()));
        assert_eq!(err.to_string(), "malformed head: invalid header name");
    }

    #[test]
    fn unsupported_versions() {
        // A well-formed version in the wrong place is a malformed line (400).
        let res = parse_request_head(b"GET /a /b HTTP/1.1\r\nHost: h\r\n\r\n");
        assert!(matches!(res, Err(HeadError::Malformed(_))), "{res:?}");
        for raw in [
            "GET / HTTP/2.0\r\n\r\n",
            "GET / HTTP/1.2\r\n\r\n",
            "GET / HTTP/0.9\r\n\r\n",
            "GET / HTTP/3.0\r\nHost: a\r\n\r\n",
        ] {
            let res = parse_request_head(raw.as_bytes());
            assert_eq!(res, Err(HeadError::UnsupportedVersion), "{raw:?}");
        }
        for raw in ["HTTP/2.0 200 OK\r\n\r\n", "HTTP/1.2 200 OK\r\n\r\n"] {
            let res = parse_response_head(raw.as_bytes());
            assert_eq!(res, Err(HeadError::UnsupportedVersion), "{raw:?}");
        }
    }

    #[test]
    fn parses_responses() {
        let raw = b"HTTP/1.0 404 Not Found\r\nContent-Length: 3\r\nX-A: 1\r\nx-a: 2\r\n\r\nabc";
        let (head, n) = parse_response_head(raw).unwrap().unwrap();
        assert_eq!(n, raw.len() - 3);
        assert_eq!(head.version, Version::Http10);
        assert_eq!(head.status, 404);
        assert_eq!(head.reason, "Not Found");
        assert_eq!(head.header("content-length"), Some(&b"3"[..]));
        let all: Vec<&[u8]> = head.headers_named("X-A").collect();
        assert_eq!(all, vec![&b"1"[..], &b"2"[..]]);

        let (empty_reason, _) = parse_response_head(b"HTTP/1.1 204 \r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(empty_reason.status, 204);
        assert_eq!(empty_reason.reason, "");

        assert_eq!(
            parse_response_head(b"HTTP/1.1 200 OK\r\nA: b\r\n"),
            Ok(None)
        );
        assert_eq!(parse_response_head(b""), Ok(None));
        for bad in [
            &b"HTTP/1.1 2x0 OK\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\nBad Name: 1\r\n\r\n",
        ] {
            assert!(matches!(
                parse_response_head(bad),
                Err(HeadError::Malformed(_))
            ));
        }
        let mut big = b"HTTP/1.1 200 OK\r\nX: ".to_vec();
        big.extend(std::iter::repeat_n(b'a', MAX_HEAD_BYTES));
        assert_eq!(parse_response_head(&big), Err(HeadError::TooLarge));
    }

    #[test]
    fn headers_named_request() {
        let head = req(
            Version::Http11,
            &[("Via", "a"), ("VIA", "b"), ("Other", "c"), ("via", "d")],
        );
        let vias: Vec<&[u8]> = head.headers_named("via").collect();
        assert_eq!(vias, vec![&b"a"[..], &b"b"[..], &b"d"[..]]);
        assert_eq!(head.header("vIa"), Some(&b"a"[..]));
        assert_eq!(head.headers_named("nope").count(), 0);
    }

    // ---------------------------------------------------------------- framing

    #[test]
    fn request_framing_table() {
        use BodyFraming as F;
        use HeadError as E;
        let v11 = Version::Http11;
        let v10 = Version::Http10;
        let cases: Vec<(Version, Fields, Framed)> = vec![
            (v11, &[], Ok(F::None)),
            (v10, &[], Ok(F::None)),
            (v11, &[("Content-Length", "0")], Ok(F::Length(0))),
            (v11, &[("Content-Length", "5")], Ok(F::Length(5))),
            (v11, &[("content-length", "007")], Ok(F::Length(7))),
            (v10, &[("Content-Length", "12")], Ok(F::Length(12))),
            (v11, &[("Content-Length", "5, 5")], Ok(F::Length(5))),
            (
                v11,
                &[("Content-Length", "5"), ("Content-Length", "5")],
                Ok(F::Length(5)),
            ),
            (
                v11,
                &[("Content-Length", "18446744073709551615")],
                Ok(F::Length(u64::MAX)),
            ),
            (
                v11,
                &[("Content-Length", "5, 6")],
                Err(E::ConflictingContentLength),
            ),
            (
                v11,
                &[("Content-Length", "5"), ("Content-Length", "6")],
                Err(E::ConflictingContentLength),
            ),
            (
                v11,
                &[("Content-Length", "+5")],
                Err(E::InvalidContentLength),
            ),
            (
                v11,
                &[("Content-Length", "-1")],
                Err(E::InvalidContentLength),
            ),
            (
                v11,
                &[("Content-Length", "5a")],
                Err(E::InvalidContentLength),
            ),
            (
                v11,
                &[("Content-Length", "0x5")],
                Err(E::InvalidContentLength),
            ),
            (
                v11,
                &[("Content-Length", " ")],
                Err(E::InvalidContentLength),
            ),
            (v11, &[("Content-Length", "")], Err(E::InvalidContentLength)),
            (
                v11,
                &[("Content-Length", "5 5")],
                Err(E::InvalidContentLength),
            ),
            (
                v11,
                &[("Content-Length", "5,")],
                Err(E::InvalidContentLength),
            ),
            (
                v11,
                &[("Content-Length", "18446744073709551616")],
                Err(E::InvalidContentLength),
            ),
            (
                v11,
                &[("Content-Length", "99999999999999999999999")],
                Err(E::InvalidContentLength),
            ),
            (
                v11,
                &[("Content-Length", "5"), ("Content-Length", "x")],
                Err(E::InvalidContentLength),
            ),
            (
                v11,
                &[("Content-Length", "5"), ("Transfer-Encoding", "chunked")],
                Err(E::ContentLengthWithTransferEncoding),
            ),
            (
                v10,
                &[("Content-Length", "5"), ("Transfer-Encoding", "chunked")],
                Err(E::ContentLengthWithTransferEncoding),
            ),
            (v11, &[("Transfer-Encoding", "chunked")], Ok(F::Chunked)),
            (v11, &[("Transfer-Encoding", "Chunked")], Ok(F::Chunked)),
            (v11, &[("transfer-encoding", " CHUNKED ")], Ok(F::Chunked)),
            (
                v11,
                &[("Transfer-Encoding", "gzip, chunked")],
                Err(E::UnsupportedTransferEncoding("gzip, chunked".into())),
            ),
            (
                v11,
                &[
                    ("Transfer-Encoding", "gzip"),
                    ("Transfer-Encoding", "chunked"),
                ],
                Err(E::UnsupportedTransferEncoding("gzip, chunked".into())),
            ),
            (
                v11,
                &[("Transfer-Encoding", "chunked, chunked")],
                Err(E::UnsupportedTransferEncoding("chunked, chunked".into())),
            ),
            (
                v11,
                &[
                    ("Transfer-Encoding", "chunked"),
                    ("Transfer-Encoding", "chunked"),
                ],
                Err(E::UnsupportedTransferEncoding("chunked, chunked".into())),
            ),
            (
                v11,
                &[("Transfer-Encoding", "identity")],
                Err(E::UnsupportedTransferEncoding("identity".into())),
            ),
            (
                v11,
                &[("Transfer-Encoding", "chunked;q=1")],
                Err(E::UnsupportedTransferEncoding("chunked;q=1".into())),
            ),
            (
                v11,
                &[("Transfer-Encoding", "")],
                Err(E::Malformed("empty Transfer-Encoding".into())),
            ),
            (
                v10,
                &[("Transfer-Encoding", "chunked")],
                Err(E::TransferEncodingInHttp10),
            ),
        ];
        for (version, list, want) in cases {
            let got = request_framing(&req(version, list));
            assert_eq!(got, want, "{version:?} {list:?}");
        }
    }

    #[test]
    fn framing_error_statuses() {
        let status =
            |v, list: &[(&str, &str)]| request_framing(&req(v, list)).unwrap_err().request_status();
        assert_eq!(
            status(Version::Http11, &[("Transfer-Encoding", "gzip, chunked")]),
            501
        );
        assert_eq!(
            status(Version::Http10, &[("Transfer-Encoding", "chunked")]),
            400
        );
        assert_eq!(status(Version::Http11, &[("Content-Length", "1, 2")]), 400);
        assert_eq!(status(Version::Http11, &[("Content-Length", "-1")]), 400);
        assert_eq!(
            status(
                Version::Http11,
                &[("Content-Length", "1"), ("Transfer-Encoding", "chunked")]
            ),
            400
        );
    }

    #[test]
    fn request_status_mapping() {
        use HeadError as E;
        let cases = [
            (E::Malformed("x".into()), 400),
            (E::TooLarge, 431),
            (E::ContentLengthWithTransferEncoding, 400),
            (E::ConflictingContentLength, 400),
            (E::InvalidContentLength, 400),
            (E::UnsupportedTransferEncoding("gzip".into()), 501),
            (E::TransferEncodingInHttp10, 400),
            (E::UnsupportedVersion, 505),
            (E::MissingHost, 400),
            (E::InvalidHost("a,b".into()), 400),
            (E::InvalidTarget("x".into()), 400),
            (E::ConnectUnsupported, 501),
            (E::UnsupportedExpectation("x".into()), 417),
            (E::FramingLookalike("Content_Length".into()), 400),
            (E::InvalidUpgrade("a b".into()), 400),
        ];
        for (err, status) in cases {
            assert_eq!(err.request_status(), status, "{err:?}");
        }
    }

    #[test]
    fn head_error_messages() {
        assert_eq!(
            HeadError::TooLarge.to_string(),
            "head larger than 65536 bytes or more than 128 header fields"
        );
        assert_eq!(
            HeadError::UnsupportedTransferEncoding("gzip".into()).to_string(),
            "unsupported Transfer-Encoding: gzip"
        );
    }

    // ------------------------------------------------------ connection mgmt

    #[test]
    fn connection_tokens_collects_all_fields() {
        let headers = hdrs(&[
            ("Connection", "Keep-Alive, X-Foo"),
            ("Other", "close"),
            ("connection", " ,Upgrade ,, "),
        ]);
        assert_eq!(
            connection_tokens(&headers),
            vec!["keep-alive", "x-foo", "upgrade"]
        );
        assert!(connection_tokens(&[]).is_empty());
    }

    #[test]
    fn wants_close_table() {
        let cases: &[(Version, Fields, bool)] = &[
            (Version::Http10, &[], true),
            (Version::Http10, &[("Connection", "close")], true),
            (Version::Http10, &[("Connection", "keep-alive")], false),
            (
                Version::Http10,
                &[("Connection", "Keep-Alive, Upgrade")],
                false,
            ),
            (
                Version::Http10,
                &[("Connection", "keep-alive, close")],
                true,
            ),
            (Version::Http11, &[], false),
            (Version::Http11, &[("Connection", "close")], true),
            (Version::Http11, &[("Connection", "CLOSE")], true),
            (Version::Http11, &[("Connection", "keep-alive")], false),
            (
                Version::Http11,
                &[("Connection", "Keep-Alive, Upgrade")],
                false,
            ),
            (
                Version::Http11,
                &[("Connection", "upgrade"), ("Connection", "close")],
                true,
            ),
        ];
        for (version, list, want) in cases {
            assert_eq!(
                wants_close(*version, &hdrs(list)),
                *want,
                "{version:?} {list:?}"
            );
        }
    }

    #[test]
    fn keep_alive_table() {
        let secs = |s| Some(Duration::from_secs(s));
        let cases: &[(&[(&str, &str)], KeepAlive)] = &[
            (&[], KeepAlive::default()),
            (
                &[("Keep-Alive", "timeout=5, max=100")],
                KeepAlive {
                    timeout: secs(5),
                    max: Some(100),
                },
            ),
            (
                &[("keep-alive", "TIMEOUT=7")],
                KeepAlive {
                    timeout: secs(7),
                    max: None,
                },
            ),
            (
                &[("Keep-Alive", " Max = 3 ")],
                KeepAlive {
                    timeout: None,
                    max: Some(3),
                },
            ),
            (
                &[("Keep-Alive", "timeout=\"9\"")],
                KeepAlive {
                    timeout: secs(9),
                    max: None,
                },
            ),
            (
                &[("Keep-Alive", "timeout=5; max=2")],
                KeepAlive {
                    timeout: secs(5),
                    max: Some(2),
                },
            ),
            (
                &[(
                    "Keep-Alive",
                    "foo=bar, timeout=abc, max=-1, garbage, =, timeout=",
                )],
                KeepAlive::default(),
            ),
            (&[("Keep-Alive", "max=99999999999")], KeepAlive::default()),
            (
                &[("Keep-Alive", "timeout=x, timeout=4")],
                KeepAlive {
                    timeout: secs(4),
                    max: None,
                },
            ),
            (
                &[
                    ("Keep-Alive", "timeout=1"),
                    ("Keep-Alive", "timeout=2, max=8"),
                ],
                KeepAlive {
                    timeout: secs(1),
                    max: Some(8),
                },
            ),
            (&[("Other", "timeout=5")], KeepAlive::default()),
        ];
        for (list, want) in cases {
            assert_eq!(keep_alive_params(&hdrs(list)), *want, "{list:?}");
        }
    }

    #[test]
    fn hop_by_hop_table() {
        let tokens = vec![
            "x-secret".to_string(),
            "content-length".to_string(),
            "Close".to_lowercase(),
        ];
        let cases = [
            ("Connection", true),
            ("keep-alive", true),
            ("Proxy-Connection", true),
            ("TE", true),
            ("Upgrade", true),
            ("X-Secret", true),
            ("close", true),
            ("Transfer-Encoding", false),
            ("Content-Length", false),
            ("Host", false),
            ("Trailer", false),
            ("Content-Type", false),
            ("X-Other", false),
        ];
        for (name, want) in cases {
            assert_eq!(is_hop_by_hop(name, &tokens), want, "{name}");
        }
        assert!(!is_hop_by_hop("X-Secret", &[]));
        // Even listed in Connection, framing/routing fields are kept.
        let evil = connection_tokens(&hdrs(&[(
            "Connection",
            "Host, Transfer-Encoding, Content-Length",
        )]));
        for name in ["host", "transfer-encoding", "content-length"] {
            assert!(!is_hop_by_hop(name, &evil), "{name}");
        }
    }

    // ---------------------------------------------------------- serializing

    #[test]
    fn local_response_exact_bytes() {
        let got = local_response(
            403,
            &[("x-sockwarden-reason", "denied")],
            "blocked\n",
            false,
        );
        assert_eq!(
            String::from_utf8(got).unwrap(),
            "HTTP/1.1 403 Forbidden\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: 8\r\nx-sockwarden-reason: denied\r\n\r\nblocked\n"
        );
        let got = local_response(502, &[], "", true);
        assert_eq!(
            String::from_utf8(got).unwrap(),
            "HTTP/1.1 502 Bad Gateway\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
        );
        // Byte length, not char count.
        let got = local_response(599, &[], "é", false);
        assert!(String::from_utf8(got)
            .unwrap()
            .starts_with("HTTP/1.1 599 Unknown\r\n"));
        let got = local_response(400, &[], "é", false);
        assert!(String::from_utf8(got)
            .unwrap()
            .contains("content-length: 2\r\n"));
    }

    #[test]
    fn local_response_sanitizes_cr_lf() {
        let got = local_response(
            400,
            &[("x-error", "bad\r\nSet-Cookie: evil=1"), ("x-a\nb", "v\rw")],
            "x",
            true,
        );
        assert_eq!(
            String::from_utf8(got).unwrap(),
            "HTTP/1.1 400 Bad Request\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: 1\r\nx-error: bad  Set-Cookie: evil=1\r\nx-a b: v w\r\nconnection: close\r\n\r\nx"
        );
    }

    #[test]
    fn reason_phrase_table() {
        let cases = [
            (400, "Bad Request"),
            (403, "Forbidden"),
            (404, "Not Found"),
            (408, "Request Timeout"),
            (413, "Content Too Large"),
            (421, "Misdirected Request"),
            (431, "Request Header Fields Too Large"),
            (500, "Internal Server Error"),
            (501, "Not Implemented"),
            (502, "Bad Gateway"),
            (503, "Service Unavailable"),
            (504, "Gateway Timeout"),
            (418, "Unknown"),
            (0, "Unknown"),
        ];
        for (status, want) in cases {
            assert_eq!(reason_phrase(status), want, "{status}");
        }
    }
}
