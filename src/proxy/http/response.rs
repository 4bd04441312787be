//! A response as sockwarden forwards it to the client: framing read once
//! (RFC 9112 6.3), the framing fields written canonically, hop-by-hop fields
//! replaced by the proxy's own.

use super::request::write_framing;
use super::{
    connection_tokens, content_length, exceeds_head_limits, has_content_length,
    has_transfer_encoding, is_framing_lookalike, is_hop_by_hop, keep_alive_params, list_elements,
    wants_close, BodyFraming, HeadError, Header, KeepAlive, ResponseHead, Version,
};

/// Most interim (1xx) responses accepted before the final one; more is a
/// flood, answered 502.
pub const MAX_INTERIM_RESPONSES: usize = 16;

/// A response as it will be forwarded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub reason: String,
    pub version: Version,
    /// How its body is delimited on the upstream connection.
    pub framing: BodyFraming,
    /// Content-Length to write: the body's length, or for HEAD and 304 the
    /// length of the representation (no body follows).
    content_length: Option<u64>,
    /// Transfer-Encoding to write: the codings as received, joined.
    transfer_coding: Option<String>,
    /// End-to-end fields as received: no framing or hop-by-hop field.
    pub headers: Vec<Header>,
    /// The server will close the connection after this response.
    pub close: bool,
    /// The server's Keep-Alive parameters.
    pub keep_alive: KeepAlive,
    /// For a 101: the protocols it switches to, as received.
    pub upgrade: Vec<String>,
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
    /// Write `Upgrade: <the 101's protocols>` and `Connection: upgrade`.
    Upgrade,
}

/// Checks a response head to a request with `request_method` (RFC 9112 6.3).
///
/// - Fields named like framing fields with `_` → FramingLookalike.
/// - Transfer-Encoding with Content-Length, an empty Transfer-Encoding, an
///   invalid or conflicting Content-Length → error, whatever the status.
/// - HEAD, 1xx, 204, 304 → no body; 1xx and 204 lose any framing field
///   (RFC 9110 8.6, RFC 9112 6.1: they must not have one).
/// - Transfer-Encoding whose final coding is chunked → Chunked; another
///   final coding → until close; Content-Length → Length; neither → until
///   close.
pub fn prepare_response(request_method: &str, head: ResponseHead) -> Result<Response, HeadError> {
    if let Some(h) = head.headers.iter().find(|h| is_framing_lookalike(&h.name)) {
        return Err(HeadError::FramingLookalike(h.name.clone()));
    }
    let headers = &head.headers;
    let codings: Vec<String> = list_elements(headers, "transfer-encoding")
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .collect();
    let length = content_length(headers)?;
    if has_transfer_encoding(headers) {
        if has_content_length(headers) {
            return Err(HeadError::ContentLengthWithTransferEncoding);
        }
        if codings.is_empty() {
            return Err(HeadError::Malformed("empty Transfer-Encoding".to_string()));
        }
    }
    let status = head.status;
    let framing = response_framing(request_method, status, &codings, length);
    let bodiless_status = (100..200).contains(&status) || status == 204;
    let (content_length, transfer_coding) = if bodiless_status {
        (None, None)
    } else {
        let joined = (!codings.is_empty()).then(|| codings.join(", "));
        (length, joined)
    };
    let upgrade = if status == 101 {
        list_elements(headers, "upgrade")
            .map(|p| String::from_utf8_lossy(p).into_owned())
            .collect()
    } else {
        Vec::new()
    };
    let close = wants_close(head.version, headers);
    let keep_alive = keep_alive_params(headers);
    let tokens = connection_tokens(headers);
    let headers = head
        .headers
        .into_iter()
        .filter(|h| {
            !is_hop_by_hop(&h.name, &tokens)
                && !h.name.eq_ignore_ascii_case("content-length")
                && !h.name.eq_ignore_ascii_case("transfer-encoding")
        })
        .collect();
    let resp = Response {
        status,
        reason: head.reason,
        version: head.version,
        framing,
        content_length,
        transfer_coding,
        headers,
        close,
        keep_alive,
        upgrade,
    };
    // The proxy's own Connection header must not make the forwarded head
    // one it would itself refuse.
    let connection = if status == 101 {
        ConnectionHeader::Upgrade
    } else {
        ConnectionHeader::Close
    };
    let mut forwarded = Vec::with_capacity(1024);
    write_response(&resp, connection, &mut forwarded);
    if exceeds_head_limits(&forwarded) {
        return Err(HeadError::TooLarge);
    }
    Ok(resp)
}

/// How a response's body is delimited (RFC 9112 6.3), from the request's
/// method, the status, the transfer codings and the Content-Length.
fn response_framing(
    request_method: &str,
    status: u16,
    codings: &[String],
    length: Option<u64>,
) -> BodyFraming {
    let no_body =
        request_method == "HEAD" || (100..200).contains(&status) || status == 204 || status == 304;
    if no_body {
        BodyFraming::None
    } else if let Some(last) = codings.last() {
        if last.eq_ignore_ascii_case("chunked") {
            BodyFraming::Chunked
        } else {
            BodyFraming::UntilClose
        }
    } else {
        length.map_or(BodyFraming::UntilClose, BodyFraming::Length)
    }
}

impl Response {
    /// Whether this is an interim (1xx) response other than 101.
    pub fn is_interim(&self) -> bool {
        (100..200).contains(&self.status) && self.status != 101
    }

    /// Whether the body's only coding is chunked: an HTTP/1.0 client, which
    /// cannot read the chunked coding (RFC 9112 6.1: no Transfer-Encoding
    /// to HTTP/1.0), can then get it decoded, delimited by closing the
    /// connection.
    pub fn is_only_chunked(&self) -> bool {
        self.framing == BodyFraming::Chunked
            && self
                .transfer_coding
                .as_deref()
                .is_some_and(|c| c.eq_ignore_ascii_case("chunked"))
    }

    /// Drops the chunked coding from the head written down: the body is
    /// de-chunked on its way (see [`Response::is_only_chunked`]).
    pub fn strip_chunked(&mut self) {
        self.transfer_coding = None;
    }

    /// Whether a 101 switches to protocols the proxy offered: every protocol
    /// it names is among `offered` (names compared case-insensitively), and
    /// it names at least one (RFC 9110 7.8: a 101 must send Upgrade).
    pub fn upgrade_matches(&self, offered: &[String]) -> bool {
        !self.upgrade.is_empty()
            && self
                .upgrade
                .iter()
                .all(|p| offered.iter().any(|o| o.eq_ignore_ascii_case(p)))
    }
}

/// Serializes a response for the client: `HTTP/1.1 STATUS REASON` (a proxy
/// sends its own version), the end-to-end fields as received, the framing
/// field (Content-Length normalized, or Transfer-Encoding), the Connection
/// header `connection` asks for, and the final CRLF.
pub fn write_response(resp: &Response, connection: ConnectionHeader, out: &mut Vec<u8>) {
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(format!("{:03}", resp.status).as_bytes());
    out.push(b' ');
    out.extend_from_slice(resp.reason.as_bytes());
    out.extend_from_slice(b"\r\n");
    for h in &resp.headers {
        h.write(out);
    }
    match (&resp.transfer_coding, resp.content_length) {
        (Some(codings), _) => {
            out.extend_from_slice(b"Transfer-Encoding: ");
            out.extend_from_slice(codings.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        (None, Some(n)) => write_framing(BodyFraming::Length(n), out),
        (None, None) => {}
    }
    write_connection(connection, &resp.upgrade, out);
    out.extend_from_slice(b"\r\n");
}

/// Writes the Connection header `connection` asks for; `Upgrade` names
/// `protocols`.
pub(super) fn write_connection(
    connection: ConnectionHeader,
    protocols: &[String],
    out: &mut Vec<u8>,
) {
    match connection {
        ConnectionHeader::None => {}
        ConnectionHeader::KeepAlive => out.extend_from_slice(b"Connection: keep-alive\r\n"),
        ConnectionHeader::Close => out.extend_from_slice(b"Connection: close\r\n"),
        ConnectionHeader::Upgrade => {
            out.extend_from_slice(b"Upgrade: ");
            out.extend_from_slice(protocols.join(", ").as_bytes());
            out.extend_from_slice(b"\r\nConnection: upgrade\r\n");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::http::parse_response_head;

    fn prepare(method: &str, raw: &str) -> Result<Response, HeadError> {
        // httparse's own refusals count as rejections too.
        let (head, _) = parse_response_head(raw.as_bytes())?.expect("complete");
        prepare_response(method, head)
    }

    fn written(method: &str, raw: &str, connection: ConnectionHeader) -> String {
        let resp = prepare(method, raw).unwrap_or_else(|e| panic!("{raw:?}: {e}"));
        let mut out = Vec::new();
        write_response(&resp, connection, &mut out);
        String::from_utf8(out).expect("utf-8")
    }

    /// RFC 9112 6.3: framing by request method, status and fields; what is
    /// refused (502 to the client).
    #[test]
    fn response_framing_table() {
        use BodyFraming::*;
        let cases: &[(&str, &str, Result<BodyFraming, ()>)] = &[
            (
                "GET",
                "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n",
                Ok(Length(5)),
            ),
            (
                "GET",
                "HTTP/1.1 200 OK\r\nContent-Length: 05\r\n\r\n",
                Ok(Length(5)),
            ),
            (
                "GET",
                "HTTP/1.1 200 OK\r\nContent-Length: 5, 5\r\n\r\n",
                Ok(Length(5)),
            ),
            ("GET", "HTTP/1.1 200 OK\r\n\r\n", Ok(UntilClose)),
            (
                "GET",
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
                Ok(Chunked),
            ),
            (
                "GET",
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, CHUNKED\r\n\r\n",
                Ok(Chunked),
            ),
            (
                "GET",
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
                Ok(UntilClose),
            ),
            (
                "HEAD",
                "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n",
                Ok(None),
            ),
            (
                "GET",
                "HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n",
                Ok(None),
            ),
            (
                "GET",
                "HTTP/1.1 304 Not Modified\r\nContent-Length: 5\r\n\r\n",
                Ok(None),
            ),
            ("GET", "HTTP/1.1 100 Continue\r\n\r\n", Ok(None)),
            (
                "GET",
                "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
                Err(()),
            ),
            (
                "HEAD",
                "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
                Err(()),
            ),
            (
                "GET",
                "HTTP/1.1 200 OK\r\nContent-Length: 5, 6\r\n\r\n",
                Err(()),
            ),
            (
                "GET",
                "HTTP/1.1 304 Not Modified\r\nContent-Length: x\r\n\r\n",
                Err(()),
            ),
            (
                "GET",
                "HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
                Err(()),
            ),
            (
                "GET",
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: \r\n\r\n",
                Err(()),
            ),
            (
                "GET",
                "HTTP/1.1 200 OK\r\nContent_Length: 5\r\n\r\n",
                Err(()),
            ),
            (
                "GET",
                "HTTP/1.1 200 OK\r\nTransfer_Encoding: chunked\r\n\r\n",
                Err(()),
            ),
            // httparse: obs-fold, space before the colon, control characters.
            (
                "GET",
                "HTTP/1.1 200 OK\r\nA: b\r\n c\r\nContent-Length: 0\r\n\r\n",
                Err(()),
            ),
            (
                "GET",
                "HTTP/1.1 200 OK\r\nContent-Length : 0\r\n\r\n",
                Err(()),
            ),
            (
                "GET",
                "HTTP/1.1 200 OK\r\nA: \x01\r\nContent-Length: 0\r\n\r\n",
                Err(()),
            ),
            (
                "GET",
                "HTTP/1.1 200 OK\r\nA: b\rContent-Length: 0\r\n\r\n",
                Err(()),
            ),
        ];
        for (method, raw, want) in cases {
            let got = prepare(method, raw).map(|r| r.framing).map_err(|_| ());
            assert_eq!(got, *want, "{method} {raw:?}");
        }
    }

    /// RFC 9110 8.6, RFC 9112 6.1: what framing fields the client sees.
    #[test]
    fn framing_fields_written() {
        let cases: &[(&str, &str, &str)] = &[
            (
                "GET",
                "HTTP/1.1 200 OK\r\nContent-Length: 007\r\n\r\n",
                "Content-Length: 7\r\n",
            ),
            (
                "GET",
                "HTTP/1.1 200 OK\r\ncontent-length: 7\r\nContent-Length: 7\r\n\r\n",
                "Content-Length: 7\r\n",
            ),
            (
                "HEAD",
                "HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\n",
                "Content-Length: 7\r\n",
            ),
            (
                "GET",
                "HTTP/1.1 304 Not Modified\r\nContent-Length: 7\r\n\r\n",
                "Content-Length: 7\r\n",
            ),
            (
                "GET",
                "HTTP/1.1 204 No Content\r\nContent-Length: 7\r\n\r\n",
                "",
            ),
            (
                "GET",
                "HTTP/1.1 204 No Content\r\nTransfer-Encoding: chunked\r\n\r\n",
                "",
            ),
            (
                "GET",
                "HTTP/1.1 200 OK\r\ntransfer-encoding: Chunked\r\n\r\n",
                "Transfer-Encoding: Chunked\r\n",
            ),
            (
                "GET",
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n",
                "Transfer-Encoding: gzip, chunked\r\n",
            ),
            ("GET", "HTTP/1.1 200 OK\r\n\r\n", ""),
        ];
        for (method, raw, want) in cases {
            let status_line = raw.split("\r\n").next().unwrap();
            let out = written(method, raw, ConnectionHeader::None);
            assert_eq!(
                out,
                format!("{status_line}\r\n{want}\r\n"),
                "{method} {raw:?}"
            );
        }
    }

    /// RFC 9110 7.6.1: hop-by-hop fields go; the proxy writes its own
    /// Connection header.
    #[test]
    fn connection_headers() {
        let raw = "HTTP/1.0 200 OK\r\nConnection: keep-alive, X-Hop\r\nKeep-Alive: timeout=5, max=3\r\nX-Hop: 1\r\nX-End: 2\r\nContent-Length: 0\r\n\r\n";
        let resp = prepare("GET", raw).unwrap();
        assert!(!resp.close);
        assert_eq!(resp.keep_alive.max, Some(3));
        let cases = [
            (ConnectionHeader::None, ""),
            (ConnectionHeader::KeepAlive, "Connection: keep-alive\r\n"),
            (ConnectionHeader::Close, "Connection: close\r\n"),
        ];
        for (connection, line) in cases {
            assert_eq!(
                written("GET", raw, connection),
                format!("HTTP/1.1 200 OK\r\nX-End: 2\r\nContent-Length: 0\r\n{line}\r\n")
            );
        }
        assert!(prepare("GET", "HTTP/1.0 200 OK\r\n\r\n").unwrap().close);
        assert!(
            prepare("GET", "HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n")
                .unwrap()
                .close
        );
        let switch = "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: k\r\n\r\n";
        assert_eq!(
            written("GET", switch, ConnectionHeader::Upgrade),
            "HTTP/1.1 101 Switching Protocols\r\nSec-WebSocket-Accept: k\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n"
        );
    }

    /// RFC 9110 7.8 and 15.2.2: a 101 must switch to a protocol offered.
    #[test]
    fn upgrade_matches_table() {
        let offered = ["websocket".to_string()];
        let cases: &[(&str, &[String], bool)] = &[
            ("Upgrade: websocket\r\n", &offered, true),
            ("Upgrade: WebSocket\r\n", &offered, true),
            ("Upgrade: h2c\r\n", &offered, false),
            ("Upgrade: websocket, h2c\r\n", &offered, false),
            ("", &offered, false),
            ("Upgrade: websocket\r\n", &[], false),
        ];
        for (field, offered, want) in cases {
            let raw =
                format!("HTTP/1.1 101 Switching Protocols\r\n{field}Connection: upgrade\r\n\r\n");
            let resp = prepare("GET", &raw).unwrap();
            assert_eq!(
                resp.upgrade_matches(offered),
                *want,
                "{field:?} {offered:?}"
            );
        }
    }

    #[test]
    fn only_chunked_bodies_are_decoded_for_http10() {
        let cases = [
            ("Transfer-Encoding: chunked\r\n", "GET", true, ""),
            ("Transfer-Encoding: Chunked\r\n", "GET", true, ""),
            // Another coding cannot be undone here: left as it is.
            (
                "Transfer-Encoding: gzip, chunked\r\n",
                "GET",
                false,
                "Transfer-Encoding: gzip, chunked\r\n",
            ),
            (
                "Content-Length: 3\r\n",
                "GET",
                false,
                "Content-Length: 3\r\n",
            ),
            // No body to decode.
            (
                "Transfer-Encoding: chunked\r\n",
                "HEAD",
                false,
                "Transfer-Encoding: chunked\r\n",
            ),
        ];
        for (field, method, want, left) in cases {
            let raw = format!("HTTP/1.1 200 OK\r\n{field}\r\n");
            let mut resp = prepare(method, &raw).unwrap();
            assert_eq!(resp.is_only_chunked(), want, "{field:?} {method}");
            if want {
                resp.strip_chunked();
            }
            let mut out = Vec::new();
            write_response(&resp, ConnectionHeader::Close, &mut out);
            assert_eq!(
                String::from_utf8(out).unwrap(),
                format!("HTTP/1.1 200 OK\r\n{left}Connection: close\r\n\r\n"),
                "{field:?} {method}"
            );
        }
    }

    #[test]
    fn interim_responses() {
        for (status, interim) in [
            (100, true),
            (102, true),
            (103, true),
            (101, false),
            (200, false),
        ] {
            let raw = format!("HTTP/1.1 {status} X\r\n\r\n");
            assert_eq!(
                prepare("GET", &raw).unwrap().is_interim(),
                interim,
                "{status}"
            );
        }
    }
}
