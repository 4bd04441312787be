//! The tests' one HTTP/1.1 reader and writer, written here and independent
//! of `sockwarden::proxy::http` (and of httparse, which the proxy uses):
//! every test origin and client reads and writes messages through it.
//!
//! It reads strictly, as a recipient that must not be fooled would
//! (RFC 9112): every line ends in CRLF (a bare CR or LF is an error), field
//! names are tokens with the colon right after them, no obsolete line
//! folding, no control characters, and a body is framed by exactly one
//! `Transfer-Encoding: chunked` or one Content-Length of digits. An origin
//! that reads like this is the judge of what reached it: what the proxy
//! forwards must be unambiguous.
//!
//! The core is pure: [`parse_head`] reads a head out of bytes, and a
//! [`Head`] says how its body is framed. [`read_head`], [`read_body`] and
//! [`read_response`] drive it over a `BufRead` (blocking sockets); the soak
//! client of the kernel tier drives [`parse_head`] over tokio.

use std::fmt;
use std::io::{self, BufRead, Write};

/// Largest head read (start line, fields and the empty line).
const MAX_HEAD: usize = 1 << 20;
/// Most field lines in one head.
const MAX_FIELDS: usize = 1024;
/// Longest chunk-size or trailer line.
const MAX_CHUNK_LINE: usize = 8192;
/// Largest body [`read_response`] reads.
const MAX_BODY: u64 = 256 << 20;

fn invalid(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

/// A message head: the start line and the fields, in order, names as
/// received, values with surrounding white space removed (as latin-1: one
/// char per byte).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    pub start: String,
    pub fields: Vec<(String, String)>,
}

/// A request line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestLine {
    pub method: String,
    pub target: String,
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub minor: u8,
}

/// How a body is delimited (RFC 9112 6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body.
    None,
    Length(u64),
    Chunked,
    /// Everything until the connection ends.
    UntilClose,
}

impl Head {
    /// The value of the first field named `name` (case-insensitive).
    pub fn field<'a>(&'a self, name: &'a str) -> Option<&'a str> {
        self.named(name).next()
    }

    fn named<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.fields
            .iter()
            .filter(move |(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Whether the comma-separated fields `name` (e.g. Connection) list
    /// `token` (case-insensitive).
    pub fn has_token(&self, name: &str, token: &str) -> bool {
        self.named(name)
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    }

    /// The start line read as a request line.
    pub fn request_line(&self) -> io::Result<RequestLine> {
        let mut parts = self.start.split(' ');
        let (Some(method), Some(target), Some(version), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(invalid(format!("bad request line {:?}", self.start)));
        };
        if !method.bytes().all(is_tchar) || method.is_empty() || target.is_empty() {
            return Err(invalid(format!("bad request line {:?}", self.start)));
        }
        Ok(RequestLine {
            method: method.to_string(),
            target: target.to_string(),
            minor: minor_version(version)?,
        })
    }

    /// The status code of a status line (`HTTP/1.x NNN reason`).
    pub fn status(&self) -> io::Result<u16> {
        let mut parts = self.start.splitn(3, ' ');
        let version = parts.next().unwrap_or("");
        let code = parts.next().unwrap_or("");
        minor_version(version)?;
        if code.len() != 3 || !code.bytes().all(|b| b.is_ascii_digit()) {
            return Err(invalid(format!("bad status line {:?}", self.start)));
        }
        code.parse()
            .map_err(|_| invalid(format!("bad status line {:?}", self.start)))
    }

    /// A request's body framing: `Transfer-Encoding: chunked` alone, one
    /// Content-Length, or none. Anything else cannot be read one way only
    /// (RFC 9112 6.3: a server cannot tell where another coding ends).
    pub fn request_framing(&self) -> io::Result<Framing> {
        match self.codings()? {
            Some(codings) if codings != ["chunked"] => Err(invalid(format!(
                "request Transfer-Encoding {codings:?} is not chunked alone"
            ))),
            Some(_) => Ok(Framing::Chunked),
            None => self.content_length(),
        }
    }

    /// A response's body framing; `head_request`: it answers a HEAD. 1xx,
    /// 204, 304 and answers to HEAD have no body; a transfer coding ending
    /// in chunked is chunked, another runs until the connection ends, as a
    /// body without framing fields does (RFC 9112 6.3).
    pub fn response_framing(&self, head_request: bool) -> io::Result<Framing> {
        let status = self.status()?;
        if head_request || (100..200).contains(&status) || status == 204 || status == 304 {
            return Ok(Framing::None);
        }
        match self.codings()? {
            Some(codings) if codings.last().map(String::as_str) == Some("chunked") => {
                Ok(Framing::Chunked)
            }
            Some(_) => Ok(Framing::UntilClose),
            None => match self.content_length()? {
                Framing::None => Ok(Framing::UntilClose),
                framing => Ok(framing),
            },
        }
    }

    /// The transfer codings (lowercased), if any; with a Content-Length
    /// too the message could be read two ways.
    fn codings(&self) -> io::Result<Option<Vec<String>>> {
        let codings: Vec<String> = self
            .named("transfer-encoding")
            .flat_map(|v| v.split(','))
            .map(|c| c.trim().to_ascii_lowercase())
            .collect();
        if codings.is_empty() {
            return Ok(None);
        }
        if self.named("content-length").next().is_some() {
            return Err(invalid("both Transfer-Encoding and Content-Length"));
        }
        Ok(Some(codings))
    }

    /// One Content-Length of digits (Framing::None without one).
    fn content_length(&self) -> io::Result<Framing> {
        let cl: Vec<&str> = self.named("content-length").collect();
        match cl.as_slice() {
            [] => Ok(Framing::None),
            [one] if !one.is_empty() && one.bytes().all(|b| b.is_ascii_digit()) => one
                .parse()
                .map(Framing::Length)
                .map_err(|_| invalid(format!("Content-Length {one:?} out of range"))),
            _ => Err(invalid(format!("Content-Length {cl:?} is not one number"))),
        }
    }
}

/// The head as it would be written (start line and fields, CRLFs).
impl fmt::Display for Head {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}\r\n", self.start)?;
        for (k, v) in &self.fields {
            write!(f, "{k}: {v}\r\n")?;
        }
        Ok(())
    }
}

fn minor_version(v: &str) -> io::Result<u8> {
    match v {
        "HTTP/1.1" => Ok(1),
        "HTTP/1.0" => Ok(0),
        _ => Err(invalid(format!("unsupported HTTP version {v:?}"))),
    }
}

/// RFC 9110 5.6.2 token characters.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Field value characters (RFC 9110 5.5): visible, obs-text, SP and HTAB.
fn is_value_byte(b: u8) -> bool {
    b == b'\t' || b == b' ' || (0x21..=0x7e).contains(&b) || b >= 0x80
}

fn latin1(bytes: &[u8]) -> String {
    bytes.iter().map(|&b| char::from(b)).collect()
}

/// Reads a head out of the start of `buf`: Ok(None) while it is
/// incomplete, else the head and how many bytes it took. Empty lines
/// before the start line are skipped (RFC 9112 2.2).
pub fn parse_head(buf: &[u8]) -> io::Result<Option<(Head, usize)>> {
    let mut pos = 0;
    while buf[pos..].starts_with(b"\r\n") {
        pos += 2;
    }
    let mut lines = Vec::new();
    loop {
        let rest = &buf[pos..];
        let Some(lf) = rest.iter().position(|&b| b == b'\n') else {
            if pos + rest.len() > MAX_HEAD {
                return Err(invalid("head too large"));
            }
            return Ok(None);
        };
        if lf == 0 || rest[lf - 1] != b'\r' {
            return Err(invalid("bare LF line ending"));
        }
        let line = &rest[..lf - 1];
        pos += lf + 1;
        if pos > MAX_HEAD {
            return Err(invalid("head too large"));
        }
        if line.is_empty() {
            break;
        }
        if lines.len() > MAX_FIELDS {
            return Err(invalid("too many fields"));
        }
        lines.push(line);
    }
    let Some((start, fields)) = lines.split_first() else {
        return Err(invalid("empty head"));
    };
    if start.iter().any(|&b| b < 0x20 || b == 0x7f) {
        return Err(invalid(format!("control character in {:?}", latin1(start))));
    }
    let fields = fields
        .iter()
        .map(|line| parse_field(line))
        .collect::<io::Result<_>>()?;
    Ok(Some((
        Head {
            start: latin1(start),
            fields,
        },
        pos,
    )))
}

/// `name: value` (RFC 9112 5): a token, the colon, optional white space.
fn parse_field(line: &[u8]) -> io::Result<(String, String)> {
    let bad = || invalid(format!("bad field line {:?}", latin1(line)));
    let colon = line.iter().position(|&b| b == b':').ok_or_else(bad)?;
    let (name, value) = (&line[..colon], &line[colon + 1..]);
    if name.is_empty() || !name.iter().copied().all(is_tchar) {
        return Err(bad());
    }
    if !value.iter().copied().all(is_value_byte) {
        return Err(bad());
    }
    let value = value.trim_ascii();
    Ok((latin1(name), latin1(value)))
}

/// Reads one CRLF-terminated line of at most `max` bytes, CRLF included,
/// appended to `buf`. Ok(false) at EOF before any byte.
fn read_line<R: BufRead>(r: &mut R, buf: &mut Vec<u8>, max: usize) -> io::Result<bool> {
    let start = buf.len();
    let n = io::Read::take(&mut *r, max as u64 + 2).read_until(b'\n', buf)?;
    if n == 0 {
        return Ok(false);
    }
    if buf.last() != Some(&b'\n') {
        return Err(if n > max {
            invalid(format!("line longer than {max}"))
        } else {
            io::ErrorKind::UnexpectedEof.into()
        });
    }
    if buf.len() - start < 2 || buf[buf.len() - 2] != b'\r' {
        return Err(invalid("bare LF line ending"));
    }
    if buf[start..buf.len() - 2].contains(&b'\r') {
        return Err(invalid("bare CR"));
    }
    Ok(true)
}

/// Reads a head. Ok(None) at a clean EOF before its first byte.
pub fn read_head<R: BufRead>(r: &mut R) -> io::Result<Option<Head>> {
    let mut buf = Vec::new();
    loop {
        let left = MAX_HEAD.saturating_sub(buf.len());
        if !read_line(r, &mut buf, left)? {
            return if buf.is_empty() {
                Ok(None)
            } else {
                Err(io::ErrorKind::UnexpectedEof.into())
            };
        }
        if let Some((head, _)) = parse_head(&buf)? {
            return Ok(Some(head));
        }
    }
}

/// Reads a body framed by `framing`, at most `limit` bytes of content,
/// handing the content to `data` as it arrives (so what came before an
/// error has been handed over). Chunk extensions and trailers are read and
/// dropped.
pub fn read_body<R: BufRead>(
    r: &mut R,
    framing: Framing,
    limit: u64,
    mut data: impl FnMut(&[u8]),
) -> io::Result<()> {
    match framing {
        Framing::None => Ok(()),
        Framing::Length(n) if n > limit => Err(invalid(format!("body of {n} bytes too large"))),
        Framing::Length(n) => copy_exact(r, n, &mut data),
        Framing::UntilClose => {
            let mut got = 0u64;
            loop {
                let buf = r.fill_buf()?;
                if buf.is_empty() {
                    return Ok(());
                }
                let n = buf.len();
                got += n as u64;
                if got > limit {
                    return Err(invalid("body too large"));
                }
                data(buf);
                r.consume(n);
            }
        }
        Framing::Chunked => read_chunked(r, limit, &mut data),
    }
}

/// Hands exactly `n` bytes of `r` to `data`.
fn copy_exact<R: BufRead>(r: &mut R, mut n: u64, data: &mut impl FnMut(&[u8])) -> io::Result<()> {
    while n > 0 {
        let buf = r.fill_buf()?;
        if buf.is_empty() {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        let take = buf.len().min(usize::try_from(n).unwrap_or(usize::MAX));
        data(&buf[..take]);
        r.consume(take);
        n -= take as u64;
    }
    Ok(())
}

/// RFC 9112 7.1: `chunk-size [ BWS ";" ext ] CRLF`, data, CRLF; a last
/// chunk, trailer lines and the empty line.
fn read_chunked<R: BufRead>(r: &mut R, limit: u64, data: &mut impl FnMut(&[u8])) -> io::Result<()> {
    let mut total = 0u64;
    let mut line = Vec::new();
    loop {
        line.clear();
        if !read_line(r, &mut line, MAX_CHUNK_LINE)? {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        let size = chunk_size(&line[..line.len() - 2])?;
        if size == 0 {
            // Bounded: every trailer line is at least the CRLF.
            loop {
                line.clear();
                if !read_line(r, &mut line, MAX_CHUNK_LINE)? {
                    return Err(io::ErrorKind::UnexpectedEof.into());
                }
                if line == b"\r\n" {
                    return Ok(());
                }
            }
        }
        total = total.saturating_add(size);
        if total > limit {
            return Err(invalid("chunked body too large"));
        }
        copy_exact(r, size, data)?;
        let mut crlf = [0u8; 2];
        r.read_exact(&mut crlf)?;
        if &crlf != b"\r\n" {
            return Err(invalid("chunk data not followed by CRLF"));
        }
    }
}

fn chunk_size(line: &[u8]) -> io::Result<u64> {
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    let rest = line[digits..].trim_ascii_start();
    if digits == 0 || digits > 15 || !(rest.is_empty() || rest.starts_with(b";")) {
        return Err(invalid(format!("bad chunk line {:?}", latin1(line))));
    }
    let hex = std::str::from_utf8(&line[..digits]).map_err(|e| invalid(e.to_string()))?;
    u64::from_str_radix(hex, 16).map_err(|e| invalid(e.to_string()))
}

/// A response read by [`read_response`].
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub head: Head,
    pub body: Vec<u8>,
}

/// Shows the head (what assertion messages want).
impl fmt::Display for Response {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.head.fmt(f)
    }
}

/// Reads one response; `head_request`: it answers a HEAD. An interim 1xx
/// is returned as it is: read again for the final one.
pub fn read_response<R: BufRead>(r: &mut R, head_request: bool) -> io::Result<Response> {
    let head = read_head(r)?.ok_or(io::ErrorKind::UnexpectedEof)?;
    let status = head.status()?;
    let mut body = Vec::new();
    read_body(r, head.response_framing(head_request)?, MAX_BODY, |d| {
        body.extend_from_slice(d)
    })?;
    Ok(Response { status, head, body })
}

// ---------------------------------------------------------------------------
// Writing.

/// The reason phrase written for `code`.
fn reason(code: u16) -> &'static str {
    match code {
        100 => "Continue",
        101 => "Switching Protocols",
        200 => "OK",
        201 => "Created",
        204 => "No Content",
        301 => "Moved Permanently",
        302 => "Found",
        304 => "Not Modified",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        413 => "Content Too Large",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Status",
    }
}

/// A head being written: a start line, then fields.
#[derive(Debug, Clone)]
pub struct HeadWriter(String);

impl HeadWriter {
    /// `HTTP/1.<minor> <status> <reason>`.
    pub fn response(minor: u8, status: u16) -> HeadWriter {
        HeadWriter(format!("HTTP/1.{minor} {status} {}\r\n", reason(status)))
    }

    /// `<method> <target> HTTP/1.1`.
    pub fn request(method: &str, target: &str) -> HeadWriter {
        HeadWriter(format!("{method} {target} HTTP/1.1\r\n"))
    }

    pub fn field(mut self, name: &str, value: impl fmt::Display) -> HeadWriter {
        self.0.push_str(&format!("{name}: {value}\r\n"));
        self
    }

    /// The head's bytes, with the empty line that ends it.
    pub fn finish(mut self) -> Vec<u8> {
        self.0.push_str("\r\n");
        self.0.into_bytes()
    }
}

/// Writes one chunk (nothing for empty data: that would be the last chunk).
pub fn write_chunk<W: Write>(w: &mut W, data: &[u8]) -> io::Result<()> {
    if data.is_empty() {
        return Ok(());
    }
    write!(w, "{:x}\r\n", data.len())?;
    w.write_all(data)?;
    w.write_all(b"\r\n")
}

/// Writes the last chunk and the end of an empty trailer section.
pub fn write_last_chunk<W: Write>(w: &mut W) -> io::Result<()> {
    w.write_all(b"0\r\n\r\n")
}
