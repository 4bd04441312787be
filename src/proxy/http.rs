//! The pure HTTP/1.1 core of the proxy: request and response heads are parsed
//! with `httparse`, message framing follows RFC 9112 (section 6 for bodies,
//! section 7.1 for chunked transfer coding), and heads are serialized back
//! for forwarding. Nothing in this module does I/O: every function works on
//! byte slices and owned values only, so it can be tested exhaustively.

use std::time::Duration;

/// Largest accepted head (start line + header fields + final CRLFCRLF), in bytes.
/// A head larger than this is rejected with [`HeadError::TooLarge`].
pub const MAX_HEAD_BYTES: usize = 64 * 1024;

/// Largest accepted number of header fields in one head; more is treated as
/// [`HeadError::TooLarge`] (431 for a request).
pub const MAX_HEADERS: usize = 128;

/// Longest accepted chunk-size line (excluding its CRLF), in bytes.
const MAX_CHUNK_SIZE_LINE: usize = 4096;

/// Longest accepted trailer section (all field lines and the final CRLF), in bytes.
const MAX_TRAILER_BYTES: usize = 65536;

/// Largest accepted chunk size (2^62).
const MAX_CHUNK_SIZE: u64 = 1 << 62;

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

    /// The host the request is for.
    ///
    /// If the target is in absolute-form (`scheme://authority/path`) its
    /// authority wins (any `userinfo@` part stripped, since a Host never
    /// carries one); for a `CONNECT` request the authority-form target wins.
    /// Otherwise the first Host header value, trimmed, decoded as lossy UTF-8.
    pub fn host(&self) -> Option<String> {
        if let Some((authority, _)) = split_absolute_form(&self.target) {
            if !authority.is_empty() {
                return Some(authority.to_string());
            }
        } else if self.method == "CONNECT" && !self.target.is_empty() {
            return Some(self.target.clone());
        }
        self.header("host")
            .map(|v| String::from_utf8_lossy(trim_ows(v)).into_owned())
    }

    /// The path of the target without the query (and without a fragment).
    ///
    /// For absolute-form, the path part (`"/"` if empty); for `"*"`, `"*"`.
    pub fn path(&self) -> String {
        if self.target == "*" {
            return "*".to_string();
        }
        let (absolute, rest) = match split_absolute_form(&self.target) {
            Some((_, rest)) => (true, rest),
            None => (false, self.target.as_str()),
        };
        let path = rest.split(['?', '#']).next().unwrap_or("");
        if path.is_empty() && absolute {
            "/".to_string()
        } else {
            path.to_string()
        }
    }

    /// Whether the request carries `Expect: 100-continue` (case-insensitive);
    /// only honoured for HTTP/1.1 requests.
    pub fn expects_continue(&self) -> bool {
        self.version == Version::Http11
            && list_elements(&self.headers, "expect")
                .any(|e| e.eq_ignore_ascii_case(b"100-continue"))
    }

    /// The Upgrade header value, if present and `upgrade` is a Connection token.
    pub fn upgrade(&self) -> Option<&[u8]> {
        let value = self.header("upgrade")?;
        connection_tokens(&self.headers)
            .iter()
            .any(|t| t == "upgrade")
            .then_some(value)
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

/// Splits an absolute-form target `scheme://authority[/path...]` into the
/// authority (without userinfo) and the rest (starting with `/`, `?`, `#`,
/// or empty). `None` if the target is not absolute-form.
fn split_absolute_form(target: &str) -> Option<(&str, &str)> {
    let (scheme, after) = target.split_once("://")?;
    let mut chars = scheme.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphabetic());
    if !first_ok || !chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.')) {
        return None;
    }
    let end = after.find(['/', '?', '#']).unwrap_or(after.len());
    let (authority, rest) = after.split_at(end);
    let authority = match authority.rsplit_once('@') {
        Some((_, host)) => host,
        None => authority,
    };
    Some((authority, rest))
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
    /// A protocol version other than HTTP/1.0 or HTTP/1.1.
    #[error("unsupported HTTP version")]
    UnsupportedVersion,
}

impl HeadError {
    /// The status a server answers a *request* with this error: TooLarge → 431,
    /// UnsupportedTransferEncoding → 501, everything else → 400.
    pub fn request_status(&self) -> u16 {
        match self {
            HeadError::TooLarge => 431,
            HeadError::UnsupportedTransferEncoding(_) => 501,
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
            let version = first_line(window).rsplit(|&b| b == b' ').next();
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
        let mut codings = list_elements(headers, "transfer-encoding");
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

/// RFC 9112 6.3 for a response to a request with `request_method`.
///
/// HEAD request, 1xx, 204, 304 → None; 2xx to CONNECT → UntilClose;
/// Transfer-Encoding with Content-Length → ContentLengthWithTransferEncoding;
/// Transfer-Encoding whose final coding is chunked → Chunked, other
/// Transfer-Encoding → UntilClose; valid Content-Length → Length; invalid or
/// conflicting Content-Length → error; neither → UntilClose.
pub fn response_framing(
    request_method: &str,
    head: &ResponseHead,
) -> Result<BodyFraming, HeadError> {
    let status = head.status;
    if request_method == "HEAD" || (100..200).contains(&status) || status == 204 || status == 304 {
        return Ok(BodyFraming::None);
    }
    if request_method == "CONNECT" && (200..300).contains(&status) {
        return Ok(BodyFraming::UntilClose);
    }
    let headers = &head.headers;
    if has_transfer_encoding(headers) {
        if has_content_length(headers) {
            return Err(HeadError::ContentLengthWithTransferEncoding);
        }
        let last = list_elements(headers, "transfer-encoding").last();
        return Ok(
            if last.is_some_and(|c| c.eq_ignore_ascii_case(b"chunked")) {
                BodyFraming::Chunked
            } else {
                BodyFraming::UntilClose
            },
        );
    }
    Ok(match content_length(headers)? {
        Some(n) => BodyFraming::Length(n),
        None => BodyFraming::UntilClose,
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

/// How the proxy will treat the downstream (client) connection after a
/// response; decides the Connection header it writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectionHeader {
    /// Write no Connection header.
    None,
    /// Write `Connection: keep-alive`.
    KeepAlive,
    /// Write `Connection: close`.
    Close,
    /// Write `Upgrade: <original value>` and `Connection: upgrade`.
    Upgrade,
}

/// Writes every non-hop-by-hop header as received.
fn write_end_to_end_headers(headers: &[Header], out: &mut Vec<u8>) {
    let tokens = connection_tokens(headers);
    for h in headers.iter().filter(|h| !is_hop_by_hop(&h.name, &tokens)) {
        out.extend_from_slice(h.name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(&h.value);
        out.extend_from_slice(b"\r\n");
    }
}

/// Writes the Connection (and for Upgrade, the Upgrade) header. For
/// `ConnectionHeader::Upgrade` without any Upgrade field in `headers`, nothing
/// is written (a `Connection: upgrade` without Upgrade would be invalid).
fn write_connection_header(connection: ConnectionHeader, headers: &[Header], out: &mut Vec<u8>) {
    match connection {
        ConnectionHeader::None => {}
        ConnectionHeader::KeepAlive => out.extend_from_slice(b"Connection: keep-alive\r\n"),
        ConnectionHeader::Close => out.extend_from_slice(b"Connection: close\r\n"),
        ConnectionHeader::Upgrade => {
            let values: Vec<&[u8]> = values_named(headers, "upgrade").collect();
            if !values.is_empty() {
                out.extend_from_slice(b"Upgrade: ");
                out.extend_from_slice(&values.join(&b", "[..]));
                out.extend_from_slice(b"\r\nConnection: upgrade\r\n");
            }
        }
    }
}

/// Serializes a request head for the upstream: `METHOD TARGET VERSION\r\n`,
/// every non-hop-by-hop header as received (name and value bytes untouched),
/// then the `connection` header (None: nothing; KeepAlive: `Connection:
/// keep-alive`; Close: `Connection: close`; Upgrade: `Upgrade: <original
/// value>` and `Connection: upgrade`), then `\r\n`.
pub fn write_request_head(head: &RequestHead, connection: ConnectionHeader, out: &mut Vec<u8>) {
    out.extend_from_slice(head.method.as_bytes());
    out.push(b' ');
    out.extend_from_slice(head.target.as_bytes());
    out.push(b' ');
    out.extend_from_slice(head.version.as_str().as_bytes());
    out.extend_from_slice(b"\r\n");
    write_end_to_end_headers(&head.headers, out);
    write_connection_header(connection, &head.headers, out);
    out.extend_from_slice(b"\r\n");
}

/// Serializes a response head for the client: `HTTP/1.1 STATUS REASON\r\n`
/// (always HTTP/1.1: a proxy sends its own version), non-hop-by-hop headers
/// as received, then the Connection header as in [`write_request_head`]
/// (Upgrade keeps the response's Upgrade value), then `\r\n`.
pub fn write_response_head(head: &ResponseHead, connection: ConnectionHeader, out: &mut Vec<u8>) {
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(format!("{:03}", head.status).as_bytes());
    out.push(b' ');
    out.extend_from_slice(head.reason.as_bytes());
    out.extend_from_slice(b"\r\n");
    write_end_to_end_headers(&head.headers, out);
    write_connection_header(connection, &head.headers, out);
    out.extend_from_slice(b"\r\n");
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

/// Why a chunked body is invalid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChunkError {
    /// The chunk-size line is not `1*HEXDIG [ chunk-ext ] CRLF`.
    #[error("invalid chunk size line")]
    BadSize,
    /// The chunk size exceeds 2^62.
    #[error("chunk size too large")]
    SizeOverflow,
    /// Chunk data not followed by CRLF; also a trailer line not ended by CRLF
    /// (bare CR or bare LF).
    #[error("missing CRLF after chunk data")]
    MissingCrlf,
    /// A chunk-size line over 4096 bytes, or a trailer section over 65536 bytes.
    #[error("chunk size line or trailer section too long")]
    TooLong,
}

/// Where a chunk-size line scan is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SizePhase {
    /// Reading hex digits.
    Digits,
    /// After the digits, in whitespace before `;` or CR.
    Space,
    /// In the chunk extensions (ignored).
    Ext,
    /// Saw CR, expecting LF.
    Lf,
}

/// The state of a [`ChunkedScanner`].
#[derive(Debug, Clone, PartialEq, Eq)]
enum ScanState {
    /// In a chunk-size line.
    Size {
        phase: SizePhase,
        value: u64,
        digits: usize,
        len: usize,
    },
    /// In chunk data; `remaining > 0`.
    Data { remaining: u64 },
    /// After chunk data, expecting CR.
    DataCr,
    /// After chunk data and CR, expecting LF.
    DataLf,
    /// In the trailer section.
    Trailer {
        line_len: usize,
        cr: bool,
        total: usize,
    },
    /// The body ended.
    Done,
    /// An error was found; it is returned again on every feed.
    Failed(ChunkError),
}

impl ScanState {
    fn size_line() -> Self {
        ScanState::Size {
            phase: SizePhase::Digits,
            value: 0,
            digits: 0,
            len: 0,
        }
    }
}

/// Incremental scanner for a chunked body (RFC 9112 7.1), used to forward the
/// body verbatim while finding its end. It never consumes bytes past the end
/// of the body (the final CRLF after the last-chunk and trailer section).
#[derive(Debug, Clone)]
pub struct ChunkedScanner {
    state: ScanState,
}

impl Default for ChunkedScanner {
    fn default() -> Self {
        Self::new()
    }
}

impl ChunkedScanner {
    /// A scanner positioned at the start of a chunked body.
    pub fn new() -> Self {
        ChunkedScanner {
            state: ScanState::size_line(),
        }
    }

    /// Consumes a prefix of `input` that belongs to the body and returns its
    /// length (0 ≤ n ≤ input.len()), stopping exactly at the end of the body.
    /// Accepts only CRLF line endings; a size line over 4096 bytes → TooLong;
    /// a size over 2^62 → SizeOverflow; a trailer section over 65536 bytes →
    /// TooLong. Any split of the input works. After an error, every later
    /// call returns the same error.
    pub fn feed(&mut self, input: &[u8]) -> Result<usize, ChunkError> {
        if let ScanState::Failed(e) = &self.state {
            return Err(e.clone());
        }
        match self.scan(input) {
            Ok(n) => Ok(n),
            Err(e) => {
                self.state = ScanState::Failed(e.clone());
                Err(e)
            }
        }
    }

    /// The scanning loop behind [`ChunkedScanner::feed`].
    fn scan(&mut self, input: &[u8]) -> Result<usize, ChunkError> {
        let mut i = 0;
        while i < input.len() {
            match &mut self.state {
                ScanState::Done | ScanState::Failed(_) => break,
                ScanState::Data { remaining } => {
                    let avail = (input.len() - i) as u64;
                    let take = (*remaining).min(avail);
                    *remaining -= take;
                    // `take <= avail`, which came from a usize.
                    i += take as usize;
                    if *remaining == 0 {
                        self.state = ScanState::DataCr;
                    }
                }
                ScanState::DataCr => {
                    if input[i] != b'\r' {
                        return Err(ChunkError::MissingCrlf);
                    }
                    i += 1;
                    self.state = ScanState::DataLf;
                }
                ScanState::DataLf => {
                    if input[i] != b'\n' {
                        return Err(ChunkError::MissingCrlf);
                    }
                    i += 1;
                    self.state = ScanState::size_line();
                }
                ScanState::Size {
                    phase,
                    value,
                    digits,
                    len,
                } => {
                    let b = input[i];
                    i += 1;
                    if *phase == SizePhase::Lf {
                        if b != b'\n' {
                            return Err(ChunkError::BadSize);
                        }
                        self.state = if *value == 0 {
                            ScanState::Trailer {
                                line_len: 0,
                                cr: false,
                                total: 0,
                            }
                        } else {
                            ScanState::Data { remaining: *value }
                        };
                        continue;
                    }
                    if b == b'\r' {
                        if *digits == 0 {
                            return Err(ChunkError::BadSize);
                        }
                        *phase = SizePhase::Lf;
                        continue;
                    }
                    *len += 1;
                    if *len > MAX_CHUNK_SIZE_LINE {
                        return Err(ChunkError::TooLong);
                    }
                    match (*phase, b) {
                        (SizePhase::Digits, _) if b.is_ascii_hexdigit() => {
                            *digits += 1;
                            let digit = match b {
                                b'0'..=b'9' => b - b'0',
                                _ => (b | 0x20) - b'a' + 10,
                            };
                            if *value > MAX_CHUNK_SIZE >> 4 {
                                return Err(ChunkError::SizeOverflow);
                            }
                            *value = (*value << 4) | u64::from(digit);
                            if *value > MAX_CHUNK_SIZE {
                                return Err(ChunkError::SizeOverflow);
                            }
                        }
                        (SizePhase::Digits | SizePhase::Space, b' ' | b'\t') if *digits > 0 => {
                            *phase = SizePhase::Space;
                        }
                        (SizePhase::Digits | SizePhase::Space, b';') if *digits > 0 => {
                            *phase = SizePhase::Ext;
                        }
                        (SizePhase::Ext, _) if b == b'\t' || (b >= 0x20 && b != 0x7f) => {}
                        _ => return Err(ChunkError::BadSize),
                    }
                }
                ScanState::Trailer {
                    line_len,
                    cr,
                    total,
                } => {
                    let b = input[i];
                    i += 1;
                    *total += 1;
                    if *total > MAX_TRAILER_BYTES {
                        return Err(ChunkError::TooLong);
                    }
                    if *cr {
                        if b != b'\n' {
                            return Err(ChunkError::MissingCrlf);
                        }
                        if *line_len == 0 {
                            self.state = ScanState::Done;
                        } else {
                            *line_len = 0;
                            *cr = false;
                        }
                    } else if b == b'\r' {
                        *cr = true;
                    } else if b == b'\n' {
                        return Err(ChunkError::MissingCrlf);
                    } else {
                        *line_len += 1;
                    }
                }
            }
        }
        Ok(i)
    }

    /// Whether the whole body (through the final CRLF) has been consumed.
    pub fn is_done(&self) -> bool {
        self.state == ScanState::Done
    }

    /// When positioned inside chunk data, how many data bytes of the current
    /// chunk remain (so a caller can move them without feeding them); otherwise 0.
    pub fn data_remaining(&self) -> u64 {
        match self.state {
            ScanState::Data { remaining } => remaining,
            _ => 0,
        }
    }

    /// Records that `n` (≤ [`ChunkedScanner::data_remaining`]) chunk-data
    /// bytes were forwarded without being fed. A larger `n` is clamped to
    /// `data_remaining()`; outside chunk data this does nothing.
    pub fn skip_data(&mut self, n: u64) {
        if let ScanState::Data { remaining } = &mut self.state {
            *remaining -= n.min(*remaining);
            if *remaining == 0 {
                self.state = ScanState::DataCr;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A list of header fields as (name, value) pairs.
    type Fields = &'static [(&'static str, &'static str)];
    /// An expected framing result.
    type Framed = Result<BodyFraming, HeadError>;
    /// (method, target, Host header, expected host, expected path).
    type HostPathCase = (
        &'static str,
        &'static str,
        Option<&'static str>,
        Option<&'static str>,
        &'static str,
    );

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

    fn resp(status: u16, list: &[(&str, &str)]) -> ResponseHead {
        ResponseHead {
            version: Version::Http11,
            status,
            reason: "Whatever".to_string(),
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
        assert_eq!(head.host().as_deref(), Some("example.com"));
        assert_eq!(head.path(), "/index.html");
    }

    #[test]
    fn parses_http10_request() {
        let (head, _) = parse_req("GET / HTTP/1.0\r\n\r\n");
        assert_eq!(head.version, Version::Http10);
        assert!(head.headers.is_empty());
        assert_eq!(head.host(), None);
    }

    #[test]
    fn host_and_path_table() {
        // (method, target, Host header, expected host, expected path)
        let cases: &[HostPathCase] = &[
            (
                "GET",
                "/a/b?q=1",
                Some("h.example"),
                Some("h.example"),
                "/a/b",
            ),
            (
                "GET",
                "/",
                Some("  padded.example:8080 "),
                Some("padded.example:8080"),
                "/",
            ),
            ("GET", "/nohost", None, None, "/nohost"),
            (
                "GET",
                "http://abs.example/p/q?x",
                Some("other.example"),
                Some("abs.example"),
                "/p/q",
            ),
            (
                "GET",
                "http://abs.example:81",
                Some("other.example"),
                Some("abs.example:81"),
                "/",
            ),
            (
                "GET",
                "http://abs.example?x=1",
                None,
                Some("abs.example"),
                "/",
            ),
            (
                "GET",
                "HTTP://Upper.Example/x",
                None,
                Some("Upper.Example"),
                "/x",
            ),
            (
                "GET",
                "https://s.example/sec",
                None,
                Some("s.example"),
                "/sec",
            ),
            (
                "GET",
                "http://user:pw@u.example/x",
                None,
                Some("u.example"),
                "/x",
            ),
            (
                "GET",
                "http:///empty",
                Some("fallback.example"),
                Some("fallback.example"),
                "/empty",
            ),
            (
                "OPTIONS",
                "*",
                Some("star.example"),
                Some("star.example"),
                "*",
            ),
            (
                "CONNECT",
                "tunnel.example:443",
                Some("ignored.example"),
                Some("tunnel.example:443"),
                "tunnel.example:443",
            ),
            ("GET", "/path#frag", Some("h"), Some("h"), "/path"),
        ];
        for &(method, target, host, want_host, want_path) in cases {
            let head = RequestHead {
                method: method.to_string(),
                target: target.to_string(),
                version: Version::Http11,
                headers: host.map(|h| hdrs(&[("Host", h)])).unwrap_or_default(),
            };
            assert_eq!(head.host().as_deref(), want_host, "host of {target}");
            assert_eq!(head.path(), want_path, "path of {target}");
        }
    }

    #[test]
    fn absolute_form_parsed_from_wire() {
        let (head, _) =
            parse_req("GET http://wire.example:8080/x/y?z HTTP/1.1\r\nHost: decoy.example\r\n\r\n");
        assert_eq!(head.host().as_deref(), Some("wire.example:8080"));
        assert_eq!(head.path(), "/x/y");
        assert_eq!(head.target, "http://wire.example:8080/x/y?z");
    }

    #[test]
    fn host_header_lossy_utf8() {
        let head = RequestHead {
            method: "GET".into(),
            target: "/".into(),
            version: Version::Http11,
            headers: vec![Header {
                name: "Host".into(),
                value: b"bad\xffhost".to_vec(),
            }],
        };
        assert_eq!(head.host().as_deref(), Some("bad\u{fffd}host"));
    }

    #[test]
    fn tolerates_leading_empty_lines() {
        let raw = "\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n";
        let (head, n) = parse_req(raw);
        assert_eq!(n, raw.len());
        assert_eq!(head.method, "GET");
        assert_eq!(head.host().as_deref(), Some("a"));
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
    fn malformed_requests() {
        let cases: &[&[u8]] = &[
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

    #[test]
    fn expects_continue_table() {
        let cases: &[(Version, Fields, bool)] = &[
            (Version::Http11, &[("Expect", "100-continue")], true),
            (Version::Http11, &[("expect", "100-Continue")], true),
            (Version::Http11, &[("Expect", " 100-CONTINUE ")], true),
            (Version::Http10, &[("Expect", "100-continue")], false),
            (Version::Http11, &[], false),
            (Version::Http11, &[("Expect", "something-else")], false),
        ];
        for (version, list, want) in cases {
            assert_eq!(
                req(*version, list).expects_continue(),
                *want,
                "{version:?} {list:?}"
            );
        }
    }

    #[test]
    fn upgrade_table() {
        let cases: &[(Fields, Option<&str>)] = &[
            (
                &[("Upgrade", "websocket"), ("Connection", "Upgrade")],
                Some("websocket"),
            ),
            (
                &[
                    ("Upgrade", "websocket"),
                    ("Connection", "keep-alive, upgrade"),
                ],
                Some("websocket"),
            ),
            (&[("Upgrade", "websocket")], None),
            (&[("Connection", "upgrade")], None),
            (&[("Upgrade", "h2c"), ("Connection", "close")], None),
        ];
        for (list, want) in cases {
            let head = req(Version::Http11, list);
            assert_eq!(head.upgrade(), want.map(str::as_bytes), "{list:?}");
        }
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
                Err(E::UnsupportedTransferEncoding("".into())),
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
            (E::UnsupportedVersion, 400),
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

    #[test]
    fn response_framing_table() {
        use BodyFraming as F;
        use HeadError as E;
        let cl = &[("Content-Length", "10")][..];
        let te = &[("Transfer-Encoding", "chunked")][..];
        let cases: Vec<(&str, u16, Fields, Framed)> = vec![
            ("HEAD", 200, cl, Ok(F::None)),
            ("HEAD", 200, te, Ok(F::None)),
            ("HEAD", 404, &[], Ok(F::None)),
            ("GET", 204, cl, Ok(F::None)),
            ("GET", 304, cl, Ok(F::None)),
            ("GET", 100, &[], Ok(F::None)),
            ("GET", 101, &[("Upgrade", "websocket")], Ok(F::None)),
            ("GET", 103, cl, Ok(F::None)),
            ("CONNECT", 200, cl, Ok(F::UntilClose)),
            ("CONNECT", 299, &[], Ok(F::UntilClose)),
            ("CONNECT", 407, cl, Ok(F::Length(10))),
            ("GET", 200, te, Ok(F::Chunked)),
            (
                "GET",
                200,
                &[("Transfer-Encoding", "gzip, Chunked")],
                Ok(F::Chunked),
            ),
            (
                "GET",
                200,
                &[
                    ("Transfer-Encoding", "gzip"),
                    ("Transfer-Encoding", "chunked"),
                ],
                Ok(F::Chunked),
            ),
            (
                "GET",
                200,
                &[("Transfer-Encoding", "chunked, gzip")],
                Ok(F::UntilClose),
            ),
            (
                "GET",
                200,
                &[("Transfer-Encoding", "identity")],
                Ok(F::UntilClose),
            ),
            (
                "GET",
                200,
                &[("Transfer-Encoding", "chunked"), ("Content-Length", "3")],
                Err(E::ContentLengthWithTransferEncoding),
            ),
            ("GET", 200, cl, Ok(F::Length(10))),
            ("POST", 500, &[("Content-Length", "0")], Ok(F::Length(0))),
            ("GET", 200, &[("Content-Length", "3, 3")], Ok(F::Length(3))),
            (
                "GET",
                200,
                &[("Content-Length", "3, 4")],
                Err(E::ConflictingContentLength),
            ),
            (
                "GET",
                200,
                &[("Content-Length", "abc")],
                Err(E::InvalidContentLength),
            ),
            ("GET", 200, &[], Ok(F::UntilClose)),
            ("GET", 404, &[("Connection", "close")], Ok(F::UntilClose)),
        ];
        for (method, status, list, want) in cases {
            assert_eq!(
                response_framing(method, &resp(status, list)),
                want,
                "{method} {status} {list:?}"
            );
        }
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
    fn write_request_head_variants() {
        let head = RequestHead {
            method: "GET".into(),
            target: "http://up.example/x?y".into(),
            version: Version::Http11,
            headers: hdrs(&[
                ("Host", "up.example"),
                ("Connection", "keep-alive, X-Drop, Upgrade"),
                ("X-Drop", "secret"),
                ("Keep-Alive", "timeout=5"),
                ("Proxy-Connection", "keep-alive"),
                ("TE", "trailers"),
                ("Upgrade", "websocket"),
                ("Transfer-Encoding", "chunked"),
                ("x-CaSe", "  Value With Spaces"),
            ]),
        };
        let base = "GET http://up.example/x?y HTTP/1.1\r\nHost: up.example\r\nTransfer-Encoding: chunked\r\nx-CaSe:   Value With Spaces\r\n";
        let cases = [
            (ConnectionHeader::None, format!("{base}\r\n")),
            (
                ConnectionHeader::KeepAlive,
                format!("{base}Connection: keep-alive\r\n\r\n"),
            ),
            (
                ConnectionHeader::Close,
                format!("{base}Connection: close\r\n\r\n"),
            ),
            (
                ConnectionHeader::Upgrade,
                format!("{base}Upgrade: websocket\r\nConnection: upgrade\r\n\r\n"),
            ),
        ];
        for (conn, want) in cases {
            let mut out = b"prefix:".to_vec();
            write_request_head(&head, conn, &mut out);
            assert_eq!(
                String::from_utf8(out).unwrap(),
                format!("prefix:{want}"),
                "{conn:?}"
            );
        }
    }

    #[test]
    fn write_request_head_keeps_raw_bytes_and_version() {
        let head = RequestHead {
            method: "PUT".into(),
            target: "/r".into(),
            version: Version::Http10,
            headers: vec![Header {
                name: "X-Bin".into(),
                value: b"\xff\xfe obs".to_vec(),
            }],
        };
        let mut out = Vec::new();
        write_request_head(&head, ConnectionHeader::None, &mut out);
        assert_eq!(out, b"PUT /r HTTP/1.0\r\nX-Bin: \xff\xfe obs\r\n\r\n");

        // Upgrade requested but nothing to upgrade to: no Connection header at all.
        let mut out = Vec::new();
        write_request_head(&head, ConnectionHeader::Upgrade, &mut out);
        assert_eq!(out, b"PUT /r HTTP/1.0\r\nX-Bin: \xff\xfe obs\r\n\r\n");
    }

    #[test]
    fn parse_then_write_round_trip() {
        let raw =
            "POST /submit HTTP/1.1\r\nHost: h\r\nConnection: close\r\nContent-Length: 2\r\n\r\n";
        let (head, _) = parse_req(raw);
        let mut out = Vec::new();
        write_request_head(&head, ConnectionHeader::KeepAlive, &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "POST /submit HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\nConnection: keep-alive\r\n\r\n"
        );
    }

    #[test]
    fn write_response_head_variants() {
        let head = ResponseHead {
            version: Version::Http10,
            status: 101,
            reason: "Switching Protocols".into(),
            headers: hdrs(&[
                ("Upgrade", "websocket"),
                ("Connection", "Upgrade, X-Hop"),
                ("X-Hop", "1"),
                ("Sec-WebSocket-Accept", "abc="),
                ("keep-alive", "timeout=1"),
            ]),
        };
        let base = "HTTP/1.1 101 Switching Protocols\r\nSec-WebSocket-Accept: abc=\r\n";
        let cases = [
            (ConnectionHeader::None, format!("{base}\r\n")),
            (
                ConnectionHeader::KeepAlive,
                format!("{base}Connection: keep-alive\r\n\r\n"),
            ),
            (
                ConnectionHeader::Close,
                format!("{base}Connection: close\r\n\r\n"),
            ),
            (
                ConnectionHeader::Upgrade,
                format!("{base}Upgrade: websocket\r\nConnection: upgrade\r\n\r\n"),
            ),
        ];
        for (conn, want) in cases {
            let mut out = Vec::new();
            write_response_head(&head, conn, &mut out);
            assert_eq!(String::from_utf8(out).unwrap(), want, "{conn:?}");
        }

        let (parsed, _) = parse_response_head(b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n")
            .unwrap()
            .unwrap();
        let mut out = Vec::new();
        write_response_head(&parsed, ConnectionHeader::Close, &mut out);
        assert_eq!(
            out,
            b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        );

        let empty_reason = resp(204, &[]);
        let empty_reason = ResponseHead {
            reason: String::new(),
            ..empty_reason
        };
        let mut out = Vec::new();
        write_response_head(&empty_reason, ConnectionHeader::None, &mut out);
        assert_eq!(out, b"HTTP/1.1 204 \r\n\r\n");
    }

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

    // -------------------------------------------------------------- chunked

    const BODY: &[u8] =
        b"4;ext=1\r\nWiki\r\n5 ; a=\"q;x\" ; b\r\npedia\r\nE\r\n in\r\n\r\nchunks.\r\n\
        10\r\n0123456789abcdef\r\n0;last\r\nExpires: never\r\nX-Trailer: y\r\n\r\n";
    const NEXT: &[u8] = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n";

    fn body_then_next() -> Vec<u8> {
        let mut v = BODY.to_vec();
        v.extend_from_slice(NEXT);
        v
    }

    /// Feeds `input` split at the given piece lengths (cycled); returns how
    /// many bytes were consumed in total, checking that a short consume only
    /// happens at the end of the body.
    fn feed_in_pieces(
        input: &[u8],
        mut next_len: impl FnMut() -> usize,
    ) -> Result<usize, ChunkError> {
        let mut scanner = ChunkedScanner::new();
        let mut off = 0;
        while off < input.len() {
            let end = (off + next_len().max(1)).min(input.len());
            let piece = &input[off..end];
            let n = scanner.feed(piece)?;
            assert!(n <= piece.len());
            off += n;
            if n < piece.len() {
                assert!(scanner.is_done(), "short consume before the end");
                break;
            }
            if scanner.is_done() {
                break;
            }
        }
        assert!(scanner.is_done(), "body not finished");
        assert_eq!(scanner.feed(&input[off..]), Ok(0), "consumed past the end");
        Ok(off)
    }

    #[test]
    fn chunked_whole() {
        let input = body_then_next();
        let mut scanner = ChunkedScanner::new();
        assert!(!scanner.is_done());
        assert_eq!(scanner.feed(&input), Ok(BODY.len()));
        assert!(scanner.is_done());
        assert_eq!(&input[BODY.len()..], NEXT);
        assert_eq!(scanner.feed(NEXT), Ok(0));
        assert_eq!(scanner.feed(b""), Ok(0));
        assert_eq!(scanner.data_remaining(), 0);
    }

    #[test]
    fn chunked_byte_by_byte() {
        let input = body_then_next();
        assert_eq!(feed_in_pieces(&input, || 1), Ok(BODY.len()));
    }

    #[test]
    fn chunked_pseudo_random_splits() {
        let input = body_then_next();
        for seed in 0..200u64 {
            let mut state = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let next = || {
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((state >> 33) % 13) as usize + 1
            };
            assert_eq!(feed_in_pieces(&input, next), Ok(BODY.len()), "seed {seed}");
        }
    }

    #[test]
    fn chunked_every_two_way_split() {
        let input = body_then_next();
        for cut in 0..=input.len() {
            let mut scanner = ChunkedScanner::new();
            let a = scanner.feed(&input[..cut]).unwrap();
            let b = scanner.feed(&input[a..]).unwrap();
            assert_eq!(a + b, BODY.len(), "cut {cut}");
            assert!(scanner.is_done());
        }
    }

    #[test]
    fn chunked_minimal_bodies() {
        let cases: &[&[u8]] = &[
            b"0\r\n\r\n",
            b"000\r\n\r\n",
            b"0;x=y\r\n\r\n",
            b"0\r\nA: b\r\n\r\n",
            b"1\r\nx\r\n0\r\n\r\n",
            b"A\r\n0123456789\r\n0\r\n\r\n",
            b"a\r\n0123456789\r\n0\r\n\r\n",
            b"1\t;\tq\r\nx\r\n0\r\n\r\n",
        ];
        for body in cases {
            let mut input = body.to_vec();
            input.extend_from_slice(b"\r\nleftover");
            let mut scanner = ChunkedScanner::default();
            assert_eq!(
                scanner.feed(&input),
                Ok(body.len()),
                "{:?}",
                String::from_utf8_lossy(body)
            );
            assert!(scanner.is_done());
        }
    }

    #[test]
    fn chunked_incomplete_is_not_done() {
        let mut scanner = ChunkedScanner::new();
        assert_eq!(scanner.feed(&BODY[..BODY.len() - 1]), Ok(BODY.len() - 1));
        assert!(!scanner.is_done());
        assert_eq!(scanner.feed(b"\nGET"), Ok(1));
        assert!(scanner.is_done());
    }

    #[test]
    fn chunked_data_remaining_and_skip() {
        let mut scanner = ChunkedScanner::new();
        assert_eq!(scanner.data_remaining(), 0);
        assert_eq!(scanner.feed(b"1A;e=1\r\n"), Ok(8));
        assert_eq!(scanner.data_remaining(), 26);
        assert_eq!(scanner.feed(b"abc"), Ok(3));
        assert_eq!(scanner.data_remaining(), 23);
        scanner.skip_data(20);
        assert_eq!(scanner.data_remaining(), 3);
        scanner.skip_data(3);
        assert_eq!(scanner.data_remaining(), 0);
        assert!(!scanner.is_done());
        // Next must be the CRLF after the data.
        assert_eq!(scanner.feed(b"\r\n1000\r\n"), Ok(8));
        assert_eq!(scanner.data_remaining(), 0x1000);
        scanner.skip_data(0x1000);
        assert_eq!(scanner.feed(b"\r\n0\r\n\r\nrest"), Ok(7));
        assert!(scanner.is_done());
        // skip_data outside data is a no-op.
        scanner.skip_data(5);
        assert!(scanner.is_done());
    }

    #[test]
    fn chunked_large_chunk_skipped_without_feeding() {
        let mut scanner = ChunkedScanner::new();
        assert_eq!(scanner.feed(b"4000000000000000\r\n"), Ok(18));
        assert_eq!(scanner.data_remaining(), 1 << 62);
        scanner.skip_data(1 << 61);
        assert_eq!(scanner.feed(&[0u8; 10]), Ok(10));
        assert_eq!(scanner.data_remaining(), (1 << 61) - 10);
    }

    #[test]
    fn chunked_errors_table() {
        let long_ext = format!("5;{}\r\nhello\r\n0\r\n\r\n", "a".repeat(5000));
        let long_digits = format!("{}1\r\nx\r\n0\r\n\r\n", "0".repeat(4096));
        let ok_digits = format!("{}1\r\nx\r\n0\r\n\r\n", "0".repeat(4095));
        let big_trailer = format!("0\r\nX: {}\r\n\r\n", "t".repeat(MAX_TRAILER_BYTES));
        let many_trailers = format!("0\r\n{}\r\n", "A: b\r\n".repeat(MAX_TRAILER_BYTES / 6 + 1));
        let trailer_at_limit = format!("0\r\nX: {}\r\n\r\n", "t".repeat(MAX_TRAILER_BYTES - 7));
        let cases: Vec<(&[u8], Result<(), ChunkError>)> = vec![
            (b"zz\r\n", Err(ChunkError::BadSize)),
            (b"\r\n", Err(ChunkError::BadSize)),
            (b";ext\r\n", Err(ChunkError::BadSize)),
            (b" 5\r\n", Err(ChunkError::BadSize)),
            (b"0x5\r\n", Err(ChunkError::BadSize)),
            (b"-1\r\n", Err(ChunkError::BadSize)),
            (b"5\n", Err(ChunkError::BadSize)),
            (b"5\rx", Err(ChunkError::BadSize)),
            (b"5 x\r\n", Err(ChunkError::BadSize)),
            (b"5;a\nb\r\n", Err(ChunkError::BadSize)),
            (b"5;a\x00\r\n", Err(ChunkError::BadSize)),
            (b"5 \r\nhello\r\n0\r\n\r\n", Ok(())),
            (b"5\r\nhelloX", Err(ChunkError::MissingCrlf)),
            (b"5\r\nhello\rX", Err(ChunkError::MissingCrlf)),
            (b"5\r\nhello\n0\r\n\r\n", Err(ChunkError::MissingCrlf)),
            (b"5\r\nhello world\r\n", Err(ChunkError::MissingCrlf)),
            (b"0\r\nA: b\n\r\n", Err(ChunkError::MissingCrlf)),
            (b"0\r\n\n", Err(ChunkError::MissingCrlf)),
            (b"0\r\n\rX", Err(ChunkError::MissingCrlf)),
            (b"4000000000000000\r\n", Ok(())),
            (b"4000000000000001\r\n", Err(ChunkError::SizeOverflow)),
            (b"10000000000000000\r\n", Err(ChunkError::SizeOverflow)),
            (
                b"ffffffffffffffffffffffff\r\n",
                Err(ChunkError::SizeOverflow),
            ),
            (long_ext.as_bytes(), Err(ChunkError::TooLong)),
            (long_digits.as_bytes(), Err(ChunkError::TooLong)),
            (ok_digits.as_bytes(), Ok(())),
            (big_trailer.as_bytes(), Err(ChunkError::TooLong)),
            (many_trailers.as_bytes(), Err(ChunkError::TooLong)),
            (trailer_at_limit.as_bytes(), Ok(())),
        ];
        for (input, want) in cases {
            let label = String::from_utf8_lossy(&input[..input.len().min(40)]).into_owned();
            let whole = ChunkedScanner::new().feed(input).map(|_| ());
            assert_eq!(whole, want, "whole: {label:?}");
            // Byte by byte must agree.
            let mut scanner = ChunkedScanner::new();
            let mut bytewise = Ok(());
            for b in input {
                if let Err(e) = scanner.feed(std::slice::from_ref(b)) {
                    bytewise = Err(e);
                    break;
                }
            }
            assert_eq!(bytewise, want, "bytewise: {label:?}");
        }
    }

    #[test]
    fn chunked_trailer_limit_is_exact() {
        // A trailer section of exactly MAX_TRAILER_BYTES (field line + final CRLF).
        let field = format!("X: {}\r\n", "t".repeat(MAX_TRAILER_BYTES - 7));
        assert_eq!(field.len() + 2, MAX_TRAILER_BYTES);
        let body = format!("0\r\n{field}\r\n");
        let mut scanner = ChunkedScanner::new();
        assert_eq!(scanner.feed(body.as_bytes()), Ok(body.len()));
        assert!(scanner.is_done());
    }

    #[test]
    fn chunked_error_is_sticky() {
        let mut scanner = ChunkedScanner::new();
        assert_eq!(scanner.feed(b"zz"), Err(ChunkError::BadSize));
        assert_eq!(scanner.feed(b"0\r\n\r\n"), Err(ChunkError::BadSize));
        assert_eq!(scanner.feed(b""), Err(ChunkError::BadSize));
        assert!(!scanner.is_done());
    }

    #[test]
    fn chunk_error_messages() {
        assert_eq!(ChunkError::BadSize.to_string(), "invalid chunk size line");
        assert_eq!(
            ChunkError::TooLong.to_string(),
            "chunk size line or trailer section too long"
        );
    }
}
