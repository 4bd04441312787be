//! Table tests of the tests' own HTTP/1.1 codec (common/h1.rs): every test
//! origin judges what reached it through it, so it must refuse what could
//! be read two ways, and read every split of a valid message the same.

use std::io::{self, BufReader, Read};

use crate::common::h1::{self, Framing, HeadWriter, RequestLine};

/// A reader that hands out at most `step` bytes per read.
struct Trickle<'a> {
    data: &'a [u8],
    step: usize,
}

impl Read for Trickle<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.step.min(buf.len()).min(self.data.len());
        buf[..n].copy_from_slice(&self.data[..n]);
        self.data = &self.data[n..];
        Ok(n)
    }
}

/// Header fields as a table writes them.
type Fields<'a> = &'a [(&'a str, &'a str)];

/// The body `framing` reads out of `wire`, read `step` bytes at a time.
fn body(wire: &[u8], framing: Framing, step: usize) -> io::Result<Vec<u8>> {
    let mut r = BufReader::with_capacity(step.max(1), Trickle { data: wire, step });
    let mut out = Vec::new();
    h1::read_body(&mut r, framing, 1 << 20, |d| out.extend_from_slice(d))?;
    Ok(out)
}

#[test]
fn heads_are_read_strictly() {
    let ok: &[(&[u8], &str, Fields)] = &[
        (b"GET / HTTP/1.1\r\n\r\n", "GET / HTTP/1.1", &[]),
        (
            b"GET /a HTTP/1.1\r\nHost:  h \r\nX-E:\r\n\r\n",
            "GET /a HTTP/1.1",
            &[("Host", "h"), ("X-E", "")],
        ),
        // RFC 9112 2.2: empty lines before the start line are skipped.
        (b"\r\n\r\nHTTP/1.1 200 OK\r\n\r\n", "HTTP/1.1 200 OK", &[]),
        // obs-text is a value byte (read as latin-1).
        (
            b"HTTP/1.1 200 OK\r\nX-L: caf\xe9\r\n\r\n",
            "HTTP/1.1 200 OK",
            &[("X-L", "caf\u{e9}")],
        ),
    ];
    for (wire, start, fields) in ok {
        let (head, used) = h1::parse_head(wire)
            .unwrap_or_else(|e| panic!("{wire:?}: {e}"))
            .unwrap_or_else(|| panic!("{wire:?}: incomplete"));
        assert_eq!(used, wire.len(), "{wire:?}");
        assert_eq!(head.start, *start, "{wire:?}");
        let want: Vec<(String, String)> = fields
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        assert_eq!(head.fields, want, "{wire:?}");
    }
    let bad: &[(&str, &[u8])] = &[
        ("bare LF", b"GET / HTTP/1.1\nHost: h\r\n\r\n"),
        ("bare LF at the end", b"GET / HTTP/1.1\r\nHost: h\n\n"),
        ("bare CR in a value", b"GET / HTTP/1.1\r\nX: a\rb\r\n\r\n"),
        (
            "space before the colon",
            b"GET / HTTP/1.1\r\nHost : h\r\n\r\n",
        ),
        (
            "obsolete line folding",
            b"GET / HTTP/1.1\r\nX: a\r\n b\r\n\r\n",
        ),
        ("no colon", b"GET / HTTP/1.1\r\nBad Header\r\n\r\n"),
        ("empty name", b"GET / HTTP/1.1\r\n: v\r\n\r\n"),
        (
            "control byte in a value",
            b"GET / HTTP/1.1\r\nX: a\x01\r\n\r\n",
        ),
        (
            "control byte in the start line",
            b"GET /\x00 HTTP/1.1\r\n\r\n",
        ),
    ];
    for (what, wire) in bad {
        let err = h1::parse_head(wire).expect_err(what);
        assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{what}");
    }
    // Incomplete: more bytes may still come.
    for cut in [0, 5, 16, 24] {
        let wire = b"GET / HTTP/1.1\r\nHost: h\r\n\r\n";
        assert_eq!(h1::parse_head(&wire[..cut]).ok(), Some(None), "{cut}");
    }
}

#[test]
fn start_lines() {
    let head = |start: &str| h1::Head {
        start: start.into(),
        fields: Vec::new(),
    };
    let line = |method: &str, target: &str, minor| RequestLine {
        method: method.into(),
        target: target.into(),
        minor,
    };
    assert_eq!(
        head("GET /x?y HTTP/1.1").request_line().ok(),
        Some(line("GET", "/x?y", 1))
    );
    assert_eq!(
        head("POST * HTTP/1.0").request_line().ok(),
        Some(line("POST", "*", 0))
    );
    for bad in [
        "GET  / HTTP/1.1",
        "GET / HTTP/2",
        "GET /",
        "G(T / HTTP/1.1",
        "GET / HTTP/1.1 x",
    ] {
        assert!(head(bad).request_line().is_err(), "{bad:?}");
    }
    assert_eq!(head("HTTP/1.1 204 No Content").status().ok(), Some(204));
    assert_eq!(head("HTTP/1.0 200").status().ok(), Some(200));
    for bad in [
        "HTTP/1.1 20 OK",
        "HTTP/1.1 2000 OK",
        "HTTP/3 200 OK",
        "200 OK",
    ] {
        assert!(head(bad).status().is_err(), "{bad:?}");
    }
}

#[test]
fn framing_is_one_reading_or_an_error() {
    let with = |start: &str, fields: &[(&str, &str)]| h1::Head {
        start: start.into(),
        fields: fields
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    };
    let req = "POST / HTTP/1.1";
    let requests: &[(Fields, Option<Framing>)] = &[
        (&[], Some(Framing::None)),
        (&[("Content-Length", "5")], Some(Framing::Length(5))),
        (&[("transfer-encoding", "Chunked")], Some(Framing::Chunked)),
        (&[("Content-Length", "5"), ("Content-Length", "5")], None),
        (&[("Content-Length", "+5")], None),
        (&[("Content-Length", "")], None),
        (&[("Content-Length", "99999999999999999999999")], None),
        (&[("Transfer-Encoding", "gzip, chunked")], None),
        (
            &[("Transfer-Encoding", "chunked"), ("Content-Length", "5")],
            None,
        ),
    ];
    for (fields, want) in requests {
        assert_eq!(
            with(req, fields).request_framing().ok(),
            *want,
            "{fields:?}"
        );
    }
    let responses: &[(&str, bool, Fields, Framing)] = &[
        ("HTTP/1.1 200 OK", false, &[], Framing::UntilClose),
        (
            "HTTP/1.1 200 OK",
            true,
            &[("Content-Length", "9")],
            Framing::None,
        ),
        ("HTTP/1.1 204 No Content", false, &[], Framing::None),
        (
            "HTTP/1.1 304 Not Modified",
            false,
            &[("Content-Length", "9")],
            Framing::None,
        ),
        (
            "HTTP/1.1 101 Switching Protocols",
            false,
            &[],
            Framing::None,
        ),
        (
            "HTTP/1.1 200 OK",
            false,
            &[("Content-Length", "9")],
            Framing::Length(9),
        ),
        (
            "HTTP/1.1 200 OK",
            false,
            &[("Transfer-Encoding", "chunked")],
            Framing::Chunked,
        ),
        (
            "HTTP/1.1 200 OK",
            false,
            &[("Transfer-Encoding", "gzip, chunked")],
            Framing::Chunked,
        ),
        (
            "HTTP/1.1 200 OK",
            false,
            &[("Transfer-Encoding", "gzip")],
            Framing::UntilClose,
        ),
    ];
    for (start, head_request, fields, want) in responses {
        assert_eq!(
            with(start, fields).response_framing(*head_request).ok(),
            Some(*want),
            "{start} {fields:?}"
        );
    }
    for fields in [
        &[("Transfer-Encoding", "chunked"), ("Content-Length", "5")][..],
        &[("Content-Length", "5"), ("Content-Length", "6")],
    ] {
        let framing = with("HTTP/1.1 200 OK", fields).response_framing(false);
        assert!(framing.is_err(), "{fields:?}: {framing:?}");
    }
}

#[test]
fn chunked_bodies_read_the_same_in_every_split() {
    let wire: &[u8] =
        b"5;ext=\"a;b\"\r\nhello\r\n1 ; x\r\n,\r\n006\r\n world\r\n0\r\nT: v\r\n\r\nNEXT";
    let want = b"hello, world";
    for step in 1..wire.len() {
        let mut r = BufReader::with_capacity(step, Trickle { data: wire, step });
        let mut out = Vec::new();
        h1::read_body(&mut r, Framing::Chunked, 1 << 20, |d| {
            out.extend_from_slice(d)
        })
        .unwrap_or_else(|e| panic!("step {step}: {e}"));
        assert_eq!(out, want, "step {step}");
        let mut rest = Vec::new();
        r.read_to_end(&mut rest).expect("rest");
        assert_eq!(
            rest, b"NEXT",
            "step {step}: the body ends where its framing does"
        );
    }
    let bad: &[(&str, &[u8])] = &[
        ("no size", b"\r\nhello\r\n0\r\n\r\n"),
        ("junk after the size", b"5 x\r\nhello\r\n0\r\n\r\n"),
        ("bare LF", b"5\nhello\r\n0\r\n\r\n"),
        ("data longer than its size", b"4\r\nhello\r\n0\r\n\r\n"),
        ("a size that overflows", b"fffffffffffffffff\r\n"),
        ("over the limit", b"200001\r\n"),
    ];
    for (what, wire) in bad {
        let err = body(wire, Framing::Chunked, 64).expect_err(what);
        assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{what}: {err}");
    }
    let err = body(b"5\r\nhel", Framing::Chunked, 64).expect_err("cut short");
    assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
}

#[test]
fn lengths_and_close_delimited_bodies() {
    assert_eq!(
        body(b"abcdef", Framing::Length(4), 3).ok(),
        Some(b"abcd".to_vec())
    );
    assert_eq!(
        body(b"abc", Framing::UntilClose, 2).ok(),
        Some(b"abc".to_vec())
    );
    assert_eq!(body(b"abc", Framing::None, 2).ok(), Some(Vec::new()));
    let err = body(b"ab", Framing::Length(4), 3).expect_err("short");
    assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
    let err = body(b"", Framing::Length(2 << 20), 3).expect_err("over the limit");
    assert_eq!(err.kind(), io::ErrorKind::InvalidData);
}

/// What the writer writes, the reader reads back.
#[test]
fn written_messages_read_back() {
    let mut wire = HeadWriter::response(1, 200)
        .field("Transfer-Encoding", "chunked")
        .field("X-N", 7)
        .finish();
    for piece in [&b"ab"[..], b"", b"cde"] {
        h1::write_chunk(&mut wire, piece).expect("write to a Vec");
    }
    h1::write_last_chunk(&mut wire).expect("write to a Vec");
    let resp = h1::read_response(&mut &wire[..], false).expect("reads back");
    assert_eq!(resp.status, 200);
    assert_eq!(resp.head.field("x-n"), Some("7"));
    assert_eq!(resp.body, b"abcde");
    let req = HeadWriter::request("GET", "/p").field("Host", "h").finish();
    assert_eq!(req, b"GET /p HTTP/1.1\r\nHost: h\r\n\r\n");
    let head = h1::read_head(&mut &req[..])
        .expect("reads")
        .expect("a head");
    assert_eq!(head.to_string().into_bytes(), req[..req.len() - 2]);
    assert_eq!(h1::read_head(&mut &b""[..]).ok(), Some(None), "clean EOF");
}
