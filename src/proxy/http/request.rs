//! A request as sockwarden forwards it: one reading of its target, Host and
//! framing, judged by policy and written to the origin in that same form.
//!
//! RFC 9112 3.2 (request-target forms and Host), 6 (framing), RFC 9110 7.2
//! (Host), 7.8 (Upgrade), 10.1.1 (Expect), RFC 3986 5.2.4 and 6.2.2 (path
//! equivalence). Whatever could be read two ways is refused; whatever is
//! unambiguous is rewritten canonically, so the origin sees exactly what the
//! policy judged.

use super::response::{write_connection, ConnectionHeader};
use super::{
    connection_tokens, exceeds_head_limits, is_framing_lookalike, is_hop_by_hop, is_token,
    list_elements, request_framing, trim_ows, wants_close, BodyFraming, HeadError, Header,
    RequestHead, Version,
};

/// A request as it will be forwarded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// The method, as received (methods are case-sensitive).
    pub method: String,
    /// The target in origin-form (normalized path, then the query as
    /// received), or `*`.
    pub target: String,
    /// The normalized path without the query: what `path` rules judge.
    pub path: String,
    /// What goes into Host (an absolute-form target's authority, else the
    /// Host field); `None` only for an HTTP/1.0 request without Host.
    pub host: Option<String>,
    pub version: Version,
    pub framing: BodyFraming,
    /// End-to-end fields as received: no Host, Content-Length,
    /// Transfer-Encoding or hop-by-hop field (the writer adds its own).
    pub headers: Vec<Header>,
    /// The client asked to close the connection after this exchange.
    pub close: bool,
    /// HTTP/1.1 with `Expect: 100-continue`.
    pub expect_continue: bool,
    /// The protocols an HTTP/1.1 client offered in Upgrade (with `upgrade`
    /// among its Connection tokens), as received: `websocket`, `h2c`, ...
    pub upgrade: Vec<String>,
}

impl Request {
    /// Whether a body follows the head.
    pub fn has_body(&self) -> bool {
        self.framing != BodyFraming::None
    }

    /// The fields as (name, value) pairs, for policy header rules.
    pub fn fields(&self) -> Vec<(&str, &[u8])> {
        self.headers
            .iter()
            .map(|h| (h.name.as_str(), h.value.as_slice()))
            .collect()
    }
}

/// The Host value of a head as received (lossy UTF-8), for logs.
pub fn raw_host(head: &RequestHead) -> Option<String> {
    head.header("host")
        .map(|v| String::from_utf8_lossy(trim_ows(v)).into_owned())
}

/// Checks a parsed request head and returns it as it will be forwarded.
///
/// - CONNECT → ConnectUnsupported (501).
/// - Fields named like framing fields with `_` → FramingLookalike.
/// - Target: origin-form (`/…`, path normalized), absolute-form
///   (`http://authority/…`: forwarded in origin-form, its authority
///   replaces Host), `*` with OPTIONS only; anything else → InvalidTarget.
/// - Host: required in HTTP/1.1 (MissingHost); must be `uri-host [":"
///   port]` (InvalidHost); empty is allowed.
/// - Framing by [`request_framing`]; Expect other than 100-continue →
///   UnsupportedExpectation (417); Upgrade values must be protocols.
pub fn prepare_request(head: RequestHead) -> Result<Request, HeadError> {
    if head.method == "CONNECT" {
        return Err(HeadError::ConnectUnsupported);
    }
    if let Some(h) = head.headers.iter().find(|h| is_framing_lookalike(&h.name)) {
        return Err(HeadError::FramingLookalike(h.name.clone()));
    }
    let framing = request_framing(&head)?;
    let field_host = match head.header("host") {
        Some(v) => Some(authority(trim_ows(v))?),
        None if head.version == Version::Http11 => return Err(HeadError::MissingHost),
        None => None,
    };
    let (target, path, target_host) = parse_target(&head.method, &head.target)?;
    for e in list_elements(&head.headers, "expect") {
        if !e.eq_ignore_ascii_case(b"100-continue") {
            return Err(HeadError::UnsupportedExpectation(
                String::from_utf8_lossy(e).into_owned(),
            ));
        }
    }
    let expect_continue =
        head.version == Version::Http11 && list_elements(&head.headers, "expect").next().is_some();
    let tokens = connection_tokens(&head.headers);
    let upgrade = if head.version == Version::Http11 && tokens.iter().any(|t| t == "upgrade") {
        upgrade_protocols(&head.headers)?
    } else {
        // RFC 9110 7.8: an Upgrade in HTTP/1.0, or without the Connection
        // token, is ignored (and, being hop-by-hop, not forwarded).
        Vec::new()
    };
    let close = wants_close(head.version, &head.headers);
    let kept = head
        .headers
        .into_iter()
        .filter(|h| {
            !is_hop_by_hop(&h.name, &tokens)
                && !["host", "content-length", "transfer-encoding"]
                    .iter()
                    .any(|n| h.name.eq_ignore_ascii_case(n))
        })
        .collect();
    let req = Request {
        method: head.method,
        target,
        path,
        host: target_host.or(field_host),
        version: head.version,
        framing,
        headers: kept,
        close,
        expect_continue,
        upgrade,
    };
    // What the proxy adds (Host, its Connection header, a space after each
    // colon) must not make the forwarded head one it would itself refuse.
    let mut forwarded = Vec::with_capacity(1024);
    write_request(&req, &req.upgrade, &mut forwarded);
    if exceeds_head_limits(&forwarded) {
        return Err(HeadError::TooLarge);
    }
    Ok(req)
}

/// The protocols of all Upgrade fields: `protocol-name ["/" protocol-version]`
/// (RFC 9110 7.8), as received.
fn upgrade_protocols(headers: &[Header]) -> Result<Vec<String>, HeadError> {
    let protocols: Vec<String> = list_elements(headers, "upgrade")
        .map(|p| String::from_utf8_lossy(p).into_owned())
        .collect();
    let valid = |p: &str| p.splitn(2, '/').all(is_token);
    match protocols.iter().find(|p| !valid(p)) {
        Some(bad) => Err(HeadError::InvalidUpgrade(bad.clone())),
        None if protocols.is_empty() => Err(HeadError::InvalidUpgrade(String::new())),
        None => Ok(protocols),
    }
}

/// Splits and checks a request-target: (origin-form target, normalized
/// path, the authority of an absolute-form target).
fn parse_target(method: &str, target: &str) -> Result<(String, String, Option<String>), HeadError> {
    let invalid = |why: &str| HeadError::InvalidTarget(format!("{why}: {target:?}"));
    if target == "*" {
        return if method == "OPTIONS" {
            Ok(("*".into(), "*".into(), None))
        } else {
            Err(invalid("asterisk-form is for OPTIONS only"))
        };
    }
    if target.contains('#') {
        return Err(invalid("a fragment is not part of a request target"));
    }
    let (host, rest) = if target.starts_with('/') {
        (None, target)
    } else {
        let Some((scheme, after)) = target.split_once("://") else {
            return Err(invalid("neither origin-form nor absolute-form"));
        };
        if !scheme.eq_ignore_ascii_case("http") {
            return Err(invalid("only http absolute-form targets are forwarded"));
        }
        let end = after.find(['/', '?']).unwrap_or(after.len());
        let (auth, rest) = after.split_at(end);
        if auth.contains('@') {
            return Err(invalid("userinfo in the target"));
        }
        if auth.is_empty() {
            return Err(invalid("an http target needs a host"));
        }
        (Some(authority(auth.as_bytes())?), rest)
    };
    let (raw_path, query) = match rest.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (rest, None),
    };
    let raw_path = if raw_path.is_empty() { "/" } else { raw_path };
    let path = normalize_path(raw_path).map_err(invalid)?;
    let target = match query {
        Some(q) => format!("{path}?{q}"),
        None => path.clone(),
    };
    Ok((target, path, host))
}

/// Checks `uri-host [":" port]` (RFC 9110 7.2, RFC 3986 3.2.2), stricter
/// than the grammar: a reg-name may hold only letters, digits, `-`, `.`, `_`
/// and `~` (no sub-delims such as `,`, no percent-encoding: no DNS name has
/// them, and lists are how two readings start); a port is 1–5 digits up to
/// 65535. Empty is allowed. Returns the value as text.
fn authority(value: &[u8]) -> Result<String, HeadError> {
    let text = std::str::from_utf8(value)
        .map_err(|_| HeadError::InvalidHost(String::from_utf8_lossy(value).into_owned()))?;
    let bad = || HeadError::InvalidHost(text.to_string());
    if text.is_empty() {
        return Ok(String::new());
    }
    let (host, port) = if let Some(rest) = text.strip_prefix('[') {
        let (literal, after) = rest.split_once(']').ok_or_else(bad)?;
        literal.parse::<std::net::Ipv6Addr>().map_err(|_| bad())?;
        match after {
            "" => (literal, None),
            p => (literal, Some(p.strip_prefix(':').ok_or_else(bad)?)),
        }
    } else {
        let (host, port) = match text.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (text, None),
        };
        let reg_name = |b: u8| b.is_ascii_alphanumeric() || b"-._~".contains(&b);
        if host.is_empty() || !host.bytes().all(reg_name) {
            return Err(bad());
        }
        (host, port)
    };
    if let Some(p) = port {
        let digits = !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit());
        if !digits || p.parse::<u32>().map_or(true, |n| n > 65535) {
            return Err(bad());
        }
    }
    debug_assert!(!host.is_empty());
    Ok(text.to_string())
}

/// Normalizes an origin-form path (RFC 3986 6.2.2): percent-encoded
/// unreserved characters decoded, other percent-encodings upper-cased, dot
/// segments removed (5.2.4). Refused, since servers disagree on them: an
/// encoded `/`, `\` or NUL, a raw `\`, a bad percent-encoding, and `.` or
/// `..` segments carrying parameters (`..;x`).
fn normalize_path(path: &str) -> Result<String, &'static str> {
    // Nothing to decode and no dot segment: already normal (most paths).
    if !path.contains(['%', '\\']) && !path.contains("/.") {
        return Ok(path.to_string());
    }
    let bytes = path.as_bytes();
    let mut decoded = String::with_capacity(path.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' => return Err("a backslash in the path"),
            b'%' => {
                let hex = bytes.get(i + 1..i + 3).ok_or("a bad percent-encoding")?;
                let value = std::str::from_utf8(hex)
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .filter(|_| hex.iter().all(u8::is_ascii_hexdigit))
                    .ok_or("a bad percent-encoding")?;
                if matches!(value, b'/' | b'\\' | 0) {
                    return Err("an encoded '/', '\\' or NUL in the path");
                }
                if value.is_ascii_alphanumeric() || b"-._~".contains(&value) {
                    decoded.push(char::from(value));
                } else {
                    decoded.push_str(&format!("%{value:02X}"));
                }
                i += 3;
            }
            _ => {
                // Non-ASCII bytes cannot come from httparse's target check;
                // push them through as they are.
                let len = utf8_len(bytes[i]);
                decoded.push_str(path.get(i..i + len).ok_or("a bad byte in the path")?);
                i += len;
            }
        }
    }
    let mut out: Vec<&str> = Vec::new();
    let segments: Vec<&str> = decoded.split('/').skip(1).collect();
    let last = segments.len().saturating_sub(1);
    for (n, seg) in segments.iter().enumerate() {
        let dots = seg.split(';').next().unwrap_or("");
        if (dots == "." || dots == "..") && dots.len() != seg.len() {
            return Err("a dot segment with parameters");
        }
        match *seg {
            "." | ".." => {
                if *seg == ".." {
                    out.pop();
                }
                // A trailing dot segment leaves a directory: "/a/." is "/a/".
                if n == last {
                    out.push("");
                }
            }
            s => out.push(s),
        }
    }
    Ok(format!("/{}", out.join("/")))
}

/// The length of the UTF-8 sequence that starts with `b` (1 for ASCII and
/// for bytes that cannot start one).
fn utf8_len(b: u8) -> usize {
    match b {
        0xc0..=0xdf => 2,
        0xe0..=0xef => 3,
        0xf0..=0xf7 => 4,
        _ => 1,
    }
}

/// The `Connection` header a request is forwarded with: `upgrade` (with
/// `Upgrade`) for the allowed protocols in `upgrade`, else `keep-alive` for
/// HTTP/1.0 (whose default is to close), else none.
pub fn request_connection(version: Version, upgrade: &[String]) -> ConnectionHeader {
    if !upgrade.is_empty() {
        ConnectionHeader::Upgrade
    } else if version == Version::Http10 {
        ConnectionHeader::KeepAlive
    } else {
        ConnectionHeader::None
    }
}

/// Serializes a prepared request for the origin: the request line, Host
/// first (RFC 9110 7.2), the end-to-end fields as received, the framing
/// field (`Content-Length: n` or `Transfer-Encoding: chunked`), the
/// Connection header of [`request_connection`] (with `Upgrade` for the
/// protocols in `upgrade`), and the final CRLF.
pub fn write_request(req: &Request, upgrade: &[String], out: &mut Vec<u8>) {
    out.extend_from_slice(req.method.as_bytes());
    out.push(b' ');
    out.extend_from_slice(req.target.as_bytes());
    out.push(b' ');
    out.extend_from_slice(req.version.as_str().as_bytes());
    out.extend_from_slice(b"\r\n");
    if let Some(host) = &req.host {
        out.extend_from_slice(b"Host: ");
        out.extend_from_slice(host.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    for h in &req.headers {
        h.write(out);
    }
    write_framing(req.framing, out);
    write_connection(request_connection(req.version, upgrade), upgrade, out);
    out.extend_from_slice(b"\r\n");
}

/// Writes the one framing field a message is forwarded with.
pub(super) fn write_framing(framing: BodyFraming, out: &mut Vec<u8>) {
    match framing {
        BodyFraming::Length(n) => {
            out.extend_from_slice(format!("Content-Length: {n}\r\n").as_bytes())
        }
        BodyFraming::Chunked => out.extend_from_slice(b"Transfer-Encoding: chunked\r\n"),
        BodyFraming::None | BodyFraming::UntilClose => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::http::{parse_request_head, values_named};

    /// Whether any field called `name` is present.
    fn has(headers: &[Header], name: &str) -> bool {
        values_named(headers, name).next().is_some()
    }

    fn prepare(raw: &str) -> Result<Request, HeadError> {
        let (head, _) = parse_request_head(raw.as_bytes())
            .expect("parses")
            .expect("complete");
        prepare_request(head)
    }

    fn forwarded(raw: &str) -> String {
        let req = prepare(raw).unwrap_or_else(|e| panic!("{raw:?}: {e}"));
        let mut out = Vec::new();
        write_request(&req, &[], &mut out);
        String::from_utf8(out).expect("utf-8")
    }

    /// RFC 9112 3.2 (Host), RFC 9110 7.2 (its syntax): what is refused with 400.
    #[test]
    fn host_table() {
        let cases: &[(&str, Result<Option<&str>, u16>)] = &[
            (
                "GET / HTTP/1.1\r\nHost: a.example\r\n\r\n",
                Ok(Some("a.example")),
            ),
            (
                "GET / HTTP/1.1\r\nHost: a.example:8080\r\n\r\n",
                Ok(Some("a.example:8080")),
            ),
            (
                "GET / HTTP/1.1\r\nHost: 10.0.0.1\r\n\r\n",
                Ok(Some("10.0.0.1")),
            ),
            (
                "GET / HTTP/1.1\r\nHost: [2001:db8::1]:80\r\n\r\n",
                Ok(Some("[2001:db8::1]:80")),
            ),
            ("GET / HTTP/1.1\r\nHost: [::1]\r\n\r\n", Ok(Some("[::1]"))),
            ("GET / HTTP/1.1\r\nHost:\r\n\r\n", Ok(Some(""))),
            ("GET / HTTP/1.0\r\n\r\n", Ok(None)),
            ("GET / HTTP/1.1\r\n\r\n", Err(400)),
            ("GET / HTTP/1.1\r\nHost: a.example/evil\r\n\r\n", Err(400)),
            ("GET / HTTP/1.1\r\nHost: user@a.example\r\n\r\n", Err(400)),
            (
                "GET / HTTP/1.1\r\nHost: a.example, b.example\r\n\r\n",
                Err(400),
            ),
            (
                "GET / HTTP/1.1\r\nHost: a.example,b.example\r\n\r\n",
                Err(400),
            ),
            ("GET / HTTP/1.1\r\nHost: a example\r\n\r\n", Err(400)),
            ("GET / HTTP/1.1\r\nHost: a.example:\r\n\r\n", Err(400)),
            ("GET / HTTP/1.1\r\nHost: a.example:65536\r\n\r\n", Err(400)),
            ("GET / HTTP/1.1\r\nHost: a.example:80:80\r\n\r\n", Err(400)),
            ("GET / HTTP/1.1\r\nHost: a.example:8x\r\n\r\n", Err(400)),
            ("GET / HTTP/1.1\r\nHost: [::1\r\n\r\n", Err(400)),
            ("GET / HTTP/1.1\r\nHost: [zz::1]\r\n\r\n", Err(400)),
            ("GET / HTTP/1.1\r\nHost: a%2eexample\r\n\r\n", Err(400)),
            ("GET / HTTP/1.1\r\nHost: :80\r\n\r\n", Err(400)),
            // Absolute-form: the target's authority replaces Host (3.2.2).
            (
                "GET http://a.example/x HTTP/1.1\r\nHost: b.example\r\n\r\n",
                Ok(Some("a.example")),
            ),
            (
                "GET HTTP://A.example:81 HTTP/1.1\r\nHost: b.example\r\n\r\n",
                Ok(Some("A.example:81")),
            ),
            ("GET http://a.example/x HTTP/1.1\r\n\r\n", Err(400)),
            (
                "GET http://u:p@a.example/x HTTP/1.1\r\nHost: a\r\n\r\n",
                Err(400),
            ),
            (
                "GET https://a.example/x HTTP/1.1\r\nHost: a\r\n\r\n",
                Err(400),
            ),
            ("GET http:///x HTTP/1.1\r\nHost: a\r\n\r\n", Err(400)),
            (
                "GET http://a.example,b/x HTTP/1.1\r\nHost: a\r\n\r\n",
                Err(400),
            ),
        ];
        for (raw, want) in cases {
            let got = prepare(raw).map(|r| r.host).map_err(|e| e.request_status());
            let want = want.map(|h| h.map(str::to_string));
            assert_eq!(got, want.clone(), "{raw:?}");
        }
    }

    /// RFC 9112 3.2.1–3.2.4 (target forms), RFC 3986 5.2.4 and 6.2.2 (path
    /// equivalence): the target forwarded and the path judged.
    #[test]
    fn target_table() {
        // (method, target, Ok((forwarded target, judged path)) or Err(status))
        type Case = (
            &'static str,
            &'static str,
            Result<(&'static str, &'static str), u16>,
        );
        let cases: &[Case] = &[
            ("GET", "/a/b?x=1", Ok(("/a/b?x=1", "/a/b"))),
            ("GET", "/", Ok(("/", "/"))),
            ("GET", "/a/./b/../c", Ok(("/a/c", "/a/c"))),
            ("GET", "/data/../admin", Ok(("/admin", "/admin"))),
            ("GET", "/data/%2e%2e/admin", Ok(("/admin", "/admin"))),
            ("GET", "/data/.%2E/admin", Ok(("/admin", "/admin"))),
            ("GET", "/../../etc", Ok(("/etc", "/etc"))),
            ("GET", "/a/..", Ok(("/", "/"))),
            ("GET", "/a/b/.", Ok(("/a/b/", "/a/b/"))),
            ("GET", "/a//../b", Ok(("/a/b", "/a/b"))),
            ("GET", "/%7Euser/%41", Ok(("/~user/A", "/~user/A"))),
            ("GET", "/a%20b%3f", Ok(("/a%20b%3F", "/a%20b%3F"))),
            ("GET", "/a?q=/../x#", Err(400)),
            ("GET", "/a?q=/../x", Ok(("/a?q=/../x", "/a"))),
            ("GET", "/a%2Fb", Err(400)),
            ("GET", "/a%2fb", Err(400)),
            ("GET", "/a%5cb", Err(400)),
            ("GET", "/a%00", Err(400)),
            ("GET", "/a%zz", Err(400)),
            ("GET", "/a%2", Err(400)),
            ("GET", "/public/..;/admin", Err(400)),
            ("GET", "/public/.;x/admin", Err(400)),
            ("GET", "/a;b/c", Ok(("/a;b/c", "/a;b/c"))),
            ("GET", "http://h/x/../y?q", Ok(("/y?q", "/y"))),
            ("GET", "http://h", Ok(("/", "/"))),
            ("GET", "http://h?q", Ok(("/?q", "/"))),
            ("OPTIONS", "*", Ok(("*", "*"))),
            ("GET", "*", Err(400)),
            ("GET", "a/b", Err(400)),
            ("GET", "h:80", Err(400)),
            ("CONNECT", "h:443", Err(501)),
            ("GET", "ftp://h/x", Err(400)),
        ];
        for (method, target, want) in cases {
            let raw = format!("{method} {target} HTTP/1.1\r\nHost: h\r\n\r\n");
            let got = match parse_request_head(raw.as_bytes()) {
                Ok(Some((head, _))) => prepare_request(head)
                    .map(|r| (r.target, r.path))
                    .map_err(|e| e.request_status()),
                // httparse refuses some targets itself.
                Err(e) => Err(e.request_status()),
                Ok(None) => panic!("incomplete {raw:?}"),
            };
            let want = want.map(|(t, p)| (t.to_string(), p.to_string()));
            assert_eq!(got, want, "{method} {target}");
        }
    }

    /// RFC 9112 6.1–6.3 and RFC 9110 8.6: the one framing field forwarded.
    #[test]
    fn framing_is_forwarded_canonically() {
        let cases: &[(&str, Result<&str, u16>)] = &[
            ("Content-Length: 010\r\n", Ok("Content-Length: 10\r\n")),
            ("Content-Length: 5, 5\r\n", Ok("Content-Length: 5\r\n")),
            (
                "content-length: 5\r\nContent-Length: 5\r\n",
                Ok("Content-Length: 5\r\n"),
            ),
            (
                "Transfer-Encoding: Chunked\r\n",
                Ok("Transfer-Encoding: chunked\r\n"),
            ),
            (
                "Transfer-Encoding: chunked\r\n",
                Ok("Transfer-Encoding: chunked\r\n"),
            ),
            ("Content-Length: 5, 6\r\n", Err(400)),
            ("Content-Length: +5\r\n", Err(400)),
            ("Content-Length: -5\r\n", Err(400)),
            ("Content-Length: 5 5\r\n", Err(400)),
            ("Content-Length: 0x5\r\n", Err(400)),
            ("Content-Length: 99999999999999999999\r\n", Err(400)),
            ("Content-Length: \r\n", Err(400)),
            (
                "Transfer-Encoding: chunked\r\nContent-Length: 5\r\n",
                Err(400),
            ),
            ("Transfer-Encoding: chunked, chunked\r\n", Err(501)),
            (
                "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n",
                Err(501),
            ),
            ("Transfer-Encoding: gzip, chunked\r\n", Err(501)),
            ("Transfer-Encoding: identity\r\n", Err(501)),
            ("Transfer-Encoding: \r\n", Err(400)),
            ("Transfer_Encoding: chunked\r\n", Err(400)),
            ("Content_Length: 5\r\n", Err(400)),
            ("X_Custom: 1\r\n", Ok("X_Custom: 1\r\n")),
        ];
        for (fields, want) in cases {
            let raw = format!("POST /u HTTP/1.1\r\nHost: h\r\n{fields}\r\n");
            let got = prepare(&raw).map_err(|e| e.request_status()).map(|r| {
                let mut out = Vec::new();
                write_request(&r, &[], &mut out);
                String::from_utf8(out).expect("utf-8")
            });
            match (got, want) {
                (Ok(out), Ok(line)) => {
                    assert_eq!(
                        out,
                        format!("POST /u HTTP/1.1\r\nHost: h\r\n{line}\r\n"),
                        "{fields:?}"
                    )
                }
                (got, want) => assert_eq!(got.map(|_| ()), want.map(|_| ()), "{fields:?}"),
            }
        }
        // Transfer-Encoding in HTTP/1.0 (RFC 9112 6.1).
        let raw = "POST /u HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert_eq!(prepare(raw).map_err(|e| e.request_status()), Err(400));
    }

    /// RFC 9110 7.6.1: Connection, its tokens and hop-by-hop fields are not
    /// forwarded; tokens naming framing or routing fields do not remove them.
    #[test]
    fn hop_by_hop_and_connection_tokens() {
        let out = forwarded(
            "POST /u HTTP/1.1\r\nHost: h\r\nConnection: close, Content-Length, Host, X-Secret\r\n\
             X-Secret: s\r\nKeep-Alive: 5\r\nTE: trailers\r\nProxy-Connection: x\r\nContent-Length: 3\r\nX-Keep: k\r\n\r\n",
        );
        assert_eq!(
            out,
            "POST /u HTTP/1.1\r\nHost: h\r\nX-Keep: k\r\nContent-Length: 3\r\n\r\n"
        );
        let req = prepare("GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n").unwrap();
        assert!(req.close);
        let req = prepare("GET / HTTP/1.0\r\n\r\n").unwrap();
        assert!(req.close);
        assert_eq!(
            forwarded("GET / HTTP/1.0\r\n\r\n"),
            "GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"
        );
    }

    /// RFC 9110 10.1.1.
    #[test]
    fn expect_table() {
        let cases: &[(&str, &str, Result<bool, u16>)] = &[
            ("HTTP/1.1", "Expect: 100-continue\r\n", Ok(true)),
            ("HTTP/1.1", "Expect: 100-Continue\r\n", Ok(true)),
            ("HTTP/1.0", "Expect: 100-continue\r\n", Ok(false)),
            ("HTTP/1.1", "", Ok(false)),
            (
                "HTTP/1.1",
                "Expect: 100-continue, 100-continue\r\n",
                Ok(true),
            ),
            ("HTTP/1.1", "Expect: 200-ok\r\n", Err(417)),
            ("HTTP/1.1", "Expect: 100-continue, x\r\n", Err(417)),
            ("HTTP/1.0", "Expect: x\r\n", Err(417)),
        ];
        for (version, field, want) in cases {
            let raw = format!("POST /u {version}\r\nHost: h\r\nContent-Length: 1\r\n{field}\r\n");
            let got = prepare(&raw)
                .map(|r| r.expect_continue)
                .map_err(|e| e.request_status());
            assert_eq!(got, *want, "{version} {field:?}");
        }
    }

    /// RFC 9110 7.8: Upgrade counts only in HTTP/1.1 with the Connection token.
    #[test]
    fn upgrade_table() {
        // (version, fields, Ok(offered protocols) or Err(status))
        type Case = (
            &'static str,
            &'static str,
            Result<&'static [&'static str], u16>,
        );
        let cases: &[Case] = &[
            ("HTTP/1.1", "Upgrade: websocket\r\nConnection: Upgrade\r\n", Ok(&["websocket"])),
            (
                "HTTP/1.1",
                "Upgrade: h2c, websocket/13\r\nConnection: Upgrade, HTTP2-Settings\r\nHTTP2-Settings: x\r\n",
                Ok(&["h2c", "websocket/13"]),
            ),
            ("HTTP/1.1", "Upgrade: websocket\r\n", Ok(&[])),
            ("HTTP/1.0", "Upgrade: websocket\r\nConnection: upgrade\r\n", Ok(&[])),
            ("HTTP/1.1", "Connection: upgrade\r\n", Err(400)),
            ("HTTP/1.1", "Upgrade: web socket\r\nConnection: upgrade\r\n", Err(400)),
            ("HTTP/1.1", "Upgrade: a/\r\nConnection: upgrade\r\n", Err(400)),
        ];
        for (version, fields, want) in cases {
            let raw = format!("GET / {version}\r\nHost: h\r\n{fields}\r\n");
            let got = prepare(&raw).map_err(|e| e.request_status()).map(|r| {
                assert!(!has(&r.headers, "upgrade") && !has(&r.headers, "http2-settings"));
                r.upgrade
            });
            let want = want.map(|w| w.iter().map(|s| s.to_string()).collect::<Vec<_>>());
            assert_eq!(got, want, "{version} {fields:?}");
        }
        let req = prepare(
            "GET / HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
        )
        .unwrap();
        let mut out = Vec::new();
        write_request(&req, &req.upgrade, &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "GET / HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n"
        );
    }

    /// RFC 9112 2.2: a bare LF ends a line in a head (a MAY); the request
    /// leaves with CRLF only, so no later reader sees the difference.
    #[test]
    fn bare_lf_heads_leave_with_crlf() {
        assert_eq!(
            forwarded("GET /a HTTP/1.1\nHost: h\nX: 1\n\n"),
            "GET /a HTTP/1.1\r\nHost: h\r\nX: 1\r\n\r\n"
        );
    }

    #[test]
    fn raw_host_is_for_logs() {
        let (head, _) = parse_request_head(b"GET / HTTP/1.1\r\nHost:  a, b \r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(raw_host(&head).as_deref(), Some("a, b"));
    }
}
