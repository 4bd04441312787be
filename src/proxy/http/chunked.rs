//! The chunked transfer coding (RFC 9112 7.1), read strictly and written
//! canonically.
//!
//! [`ChunkedScanner`] consumes a chunked body from any split of its bytes and
//! appends the body as sockwarden forwards it: chunk data verbatim, every
//! chunk-size line rewritten as lowercase hex without leading zeros or
//! extensions, and the trailer section with the fields that must not be
//! trailers removed. So the next hop never sees a framing line it could read
//! differently: `5 `, `5;`, `005;x="y"` all arrive as `5`, or the body is
//! rejected.

use super::{is_framing_lookalike, tchar, Header};

/// Longest accepted chunk-size line (excluding its CRLF), in bytes.
pub(super) const MAX_CHUNK_SIZE_LINE: usize = 4096;

/// Longest accepted trailer section (all field lines and the final CRLF), in bytes.
pub(super) const MAX_TRAILER_BYTES: usize = 65536;

/// Largest accepted chunk size (2^62).
const MAX_CHUNK_SIZE: u64 = 1 << 62;

/// Most trailer fields accepted in one trailer section.
const MAX_TRAILER_FIELDS: usize = 128;

/// Fields that must not be sent as trailers (RFC 9110 6.5.1): framing,
/// routing, hop-by-hop, authentication, request modifiers, response control
/// and content metadata. A recipient may not merge them into the header
/// section, and some would; they are dropped, the rest forwarded.
const NOT_TRAILERS: [&str; 30] = [
    "age",
    "authorization",
    "cache-control",
    "connection",
    "content-encoding",
    "content-length",
    "content-range",
    "content-type",
    "cookie",
    "date",
    "expect",
    "expires",
    "host",
    "keep-alive",
    "location",
    "max-forwards",
    "pragma",
    "proxy-authenticate",
    "proxy-authorization",
    "proxy-connection",
    "range",
    "retry-after",
    "set-cookie",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "vary",
    "warning",
    "www-authenticate",
];

/// Why a chunked body is invalid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChunkError {
    /// The chunk-size line is not `1*HEXDIG [ chunk-ext ] CRLF` (RFC 9112 7.1).
    #[error("invalid chunk size line")]
    BadSize,
    /// A chunk extension that is not `BWS ";" BWS token [ BWS "=" BWS ( token /
    /// quoted-string ) ]` (RFC 9112 7.1.1).
    #[error("invalid chunk extension")]
    BadExtension,
    /// The chunk size exceeds 2^62.
    #[error("chunk size too large")]
    SizeOverflow,
    /// Chunk data not followed by CRLF; also a trailer line not ended by CRLF
    /// (bare CR or bare LF).
    #[error("missing CRLF after chunk data")]
    MissingCrlf,
    /// A trailer field line that is not a valid field line (RFC 9112 7.1.2).
    #[error("invalid trailer field")]
    BadTrailer,
    /// A chunk-size line over 4096 bytes, or a trailer section over 65536
    /// bytes or 128 fields.
    #[error("chunk size line or trailer section too long")]
    TooLong,
}

/// Where in a chunk-size line the scanner is (RFC 9112 7.1 and 7.1.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Line {
    /// In the hex digits.
    Digits,
    /// After the digits, in BWS that must be followed by `;`.
    SizeWs,
    /// After `;`, in BWS before an extension name.
    NameStart,
    /// In an extension name.
    Name,
    /// BWS after a name: `=` or `;` must follow.
    NameWs,
    /// After `=`, in BWS before the value.
    ValueStart,
    /// In a token value.
    Token,
    /// In a quoted-string value.
    Quoted,
    /// After a backslash in a quoted string.
    Escape,
    /// Right after a value: CR, `;` or BWS.
    AfterValue,
    /// BWS after a value: `;` must follow.
    ValueWs,
    /// Saw CR, expecting LF.
    Lf,
}

impl Line {
    /// The state after byte `b`; `Ok(None)` when `b` is the CR ending the line.
    fn next(self, b: u8) -> Result<Option<Line>, ChunkError> {
        let ws = b == b' ' || b == b'\t';
        let next = match (self, b) {
            (Line::Digits, _) if b.is_ascii_hexdigit() => Line::Digits,
            (Line::Digits, b'\r') => return Ok(None),
            (Line::Digits | Line::SizeWs, _) if ws => Line::SizeWs,
            (Line::Digits | Line::SizeWs, b';') => Line::NameStart,
            (Line::Digits | Line::SizeWs, _) => return Err(ChunkError::BadSize),
            (Line::NameStart, _) if ws => Line::NameStart,
            (Line::NameStart | Line::Name, _) if tchar(b) => Line::Name,
            (Line::Name | Line::AfterValue | Line::Token, b'\r') => return Ok(None),
            (Line::Name | Line::NameWs, _) if ws => Line::NameWs,
            (Line::Name | Line::NameWs | Line::Token | Line::AfterValue | Line::ValueWs, b';') => {
                Line::NameStart
            }
            (Line::Name | Line::NameWs, b'=') => Line::ValueStart,
            (Line::ValueStart, _) if ws => Line::ValueStart,
            (Line::ValueStart, b'"') => Line::Quoted,
            (Line::ValueStart | Line::Token, _) if tchar(b) => Line::Token,
            (Line::Token | Line::AfterValue | Line::ValueWs, _) if ws => Line::ValueWs,
            (Line::Quoted, b'"') => Line::AfterValue,
            (Line::Quoted, b'\\') => Line::Escape,
            (Line::Quoted, _) if qdtext(b) => Line::Quoted,
            (Line::Escape, _) if b == b'\t' || b == b' ' || visible_or_obs(b) => Line::Quoted,
            _ => return Err(ChunkError::BadExtension),
        };
        Ok(Some(next))
    }
}

/// VCHAR or obs-text.
fn visible_or_obs(b: u8) -> bool {
    (0x21..=0x7e).contains(&b) || b >= 0x80
}

/// qdtext (RFC 9110 5.6.4): HTAB, SP, VCHAR except `"` and `\`, obs-text.
fn qdtext(b: u8) -> bool {
    b == b'\t' || b == b' ' || (visible_or_obs(b) && b != b'"' && b != b'\\')
}

/// The state of a [`ChunkedScanner`].
#[derive(Debug, Clone, PartialEq, Eq)]
enum ScanState {
    /// In a chunk-size line.
    Size {
        line: Line,
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
    /// In the trailer section (its bytes so far are in the scanner's buffer).
    Trailer { line_len: usize, cr: bool },
    /// The body ended.
    Done,
    /// An error was found; it is returned again on every feed.
    Failed(ChunkError),
}

impl ScanState {
    fn size_line() -> Self {
        ScanState::Size {
            line: Line::Digits,
            value: 0,
            digits: 0,
            len: 0,
        }
    }
}

/// Incremental reader of a chunked body (RFC 9112 7.1) that writes the body
/// in canonical form as it goes. It never consumes bytes past the end of the
/// body (the final CRLF after the last-chunk and trailer section).
#[derive(Debug, Clone)]
pub struct ChunkedScanner {
    state: ScanState,
    /// The trailer section read so far (at most [`MAX_TRAILER_BYTES`]).
    trailer: Vec<u8>,
    /// Write the framing (canonical lines); false: write the chunk data only.
    framing: bool,
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
            trailer: Vec::new(),
            framing: true,
        }
    }

    /// A scanner that reads the body as strictly but writes only its chunk
    /// data: the body decoded, for a recipient that cannot read chunked
    /// (an HTTP/1.0 client, RFC 9112 6.1). Trailers are dropped.
    pub fn dechunking() -> Self {
        ChunkedScanner {
            framing: false,
            ..ChunkedScanner::new()
        }
    }

    /// Consumes a prefix of `input` that belongs to the body and returns its
    /// length (0 ≤ n ≤ input.len()), stopping exactly at the end of the body.
    /// Appends to `out` the canonical form of what it consumed: chunk data as
    /// is, each framing line once it is complete. Any split of the input
    /// gives the same output. After an error, every later call returns the
    /// same error.
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<usize, ChunkError> {
        if let ScanState::Failed(e) = &self.state {
            return Err(e.clone());
        }
        match self.scan(input, out) {
            Ok(n) => Ok(n),
            Err(e) => {
                self.state = ScanState::Failed(e.clone());
                Err(e)
            }
        }
    }

    /// The scanning loop behind [`ChunkedScanner::feed`].
    fn scan(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<usize, ChunkError> {
        let mut i = 0;
        while i < input.len() {
            match &mut self.state {
                ScanState::Done | ScanState::Failed(_) => break,
                ScanState::Data { remaining } => {
                    let avail = (input.len() - i) as u64;
                    // `take <= avail`, which came from a usize.
                    let take = (*remaining).min(avail) as usize;
                    out.extend_from_slice(&input[i..i + take]);
                    i += take;
                    self.skip_data(take as u64);
                }
                ScanState::DataCr | ScanState::DataLf => {
                    let (want, next) = if self.state == ScanState::DataCr {
                        (b'\r', ScanState::DataLf)
                    } else {
                        (b'\n', ScanState::size_line())
                    };
                    if input[i] != want {
                        return Err(ChunkError::MissingCrlf);
                    }
                    i += 1;
                    if want == b'\n' && self.framing {
                        out.extend_from_slice(b"\r\n");
                    }
                    self.state = next;
                }
                ScanState::Size { .. } => {
                    i += 1;
                    self.size_byte(input[i - 1], out)?;
                }
                ScanState::Trailer { .. } => {
                    i += 1;
                    self.trailer_byte(input[i - 1], out)?;
                }
            }
        }
        Ok(i)
    }

    /// One byte of a chunk-size line.
    fn size_byte(&mut self, b: u8, out: &mut Vec<u8>) -> Result<(), ChunkError> {
        let ScanState::Size {
            line,
            value,
            digits,
            len,
        } = &mut self.state
        else {
            return Ok(());
        };
        if *line == Line::Lf {
            if b != b'\n' {
                return Err(ChunkError::BadSize);
            }
            if self.framing {
                out.extend_from_slice(format!("{value:x}\r\n").as_bytes());
            }
            self.state = if *value == 0 {
                ScanState::Trailer {
                    line_len: 0,
                    cr: false,
                }
            } else {
                ScanState::Data { remaining: *value }
            };
            return Ok(());
        }
        let was_digits = *line == Line::Digits;
        match line.next(b)? {
            None if *digits == 0 => return Err(ChunkError::BadSize),
            None => *line = Line::Lf,
            Some(next) => {
                if was_digits && next != Line::Digits && *digits == 0 {
                    return Err(ChunkError::BadSize);
                }
                *len += 1;
                if *len > MAX_CHUNK_SIZE_LINE {
                    return Err(ChunkError::TooLong);
                }
                if next == Line::Digits {
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
                *line = next;
            }
        }
        Ok(())
    }

    /// One byte of the trailer section; at its end, the kept fields and the
    /// final CRLF go to `out`.
    fn trailer_byte(&mut self, b: u8, out: &mut Vec<u8>) -> Result<(), ChunkError> {
        let ScanState::Trailer { line_len, cr } = &mut self.state else {
            return Ok(());
        };
        if self.trailer.len() >= MAX_TRAILER_BYTES {
            return Err(ChunkError::TooLong);
        }
        self.trailer.push(b);
        if *cr {
            if b != b'\n' {
                return Err(ChunkError::MissingCrlf);
            }
            if *line_len > 0 {
                *line_len = 0;
                *cr = false;
                return Ok(());
            }
            let mut kept = Vec::new();
            write_trailers(&self.trailer, &mut kept)?;
            if self.framing {
                out.extend_from_slice(&kept);
            }
            self.trailer = Vec::new();
            self.state = ScanState::Done;
        } else if b == b'\r' {
            *cr = true;
        } else if b == b'\n' {
            return Err(ChunkError::MissingCrlf);
        } else {
            *line_len += 1;
        }
        Ok(())
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

/// Parses a complete trailer section (field lines, each CRLF-terminated, then
/// CRLF) and appends the fields that may be trailers, then the final CRLF.
fn write_trailers(section: &[u8], out: &mut Vec<u8>) -> Result<(), ChunkError> {
    let mut storage = [httparse::EMPTY_HEADER; MAX_TRAILER_FIELDS];
    let fields = match httparse::parse_headers(section, &mut storage) {
        Ok(httparse::Status::Complete((n, fields))) if n == section.len() => fields,
        Err(httparse::Error::TooManyHeaders) => return Err(ChunkError::TooLong),
        _ => return Err(ChunkError::BadTrailer),
    };
    for field in fields.iter() {
        let header = Header {
            name: field.name.to_string(),
            value: field.value.to_vec(),
        };
        let banned = NOT_TRAILERS
            .iter()
            .any(|n| header.name.eq_ignore_ascii_case(n))
            || is_framing_lookalike(&header.name);
        if !banned {
            header.write(out);
        }
    }
    out.extend_from_slice(b"\r\n");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const BODY: &[u8] =
        b"4;ext=1\r\nWiki\r\n5 ; a=\"q;x\" ; b\r\npedia\r\nE\r\n in\r\n\r\nchunks.\r\n\
        010\r\n0123456789abcdef\r\n0;last\r\nExpires: never\r\nX-Trailer: y\r\n\r\n";
    /// BODY as sockwarden forwards it (RFC 9112 7.1: canonical size lines,
    /// extensions dropped; RFC 9110 6.5.1: Expires is no trailer).
    const CANONICAL: &[u8] = b"4\r\nWiki\r\n5\r\npedia\r\ne\r\n in\r\n\r\nchunks.\r\n\
        10\r\n0123456789abcdef\r\n0\r\nX-Trailer: y\r\n\r\n";
    const NEXT: &[u8] = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n";

    fn body_then_next() -> Vec<u8> {
        let mut v = BODY.to_vec();
        v.extend_from_slice(NEXT);
        v
    }

    /// Feeds `input` split at the given piece lengths; returns how many bytes
    /// were consumed in total and the output, checking that a short consume
    /// only happens at the end of the body.
    fn feed_in_pieces(
        input: &[u8],
        mut next_len: impl FnMut() -> usize,
    ) -> Result<(usize, Vec<u8>), ChunkError> {
        let mut scanner = ChunkedScanner::new();
        let mut out = Vec::new();
        let mut off = 0;
        while off < input.len() {
            let end = (off + next_len().max(1)).min(input.len());
            let piece = &input[off..end];
            let n = scanner.feed(piece, &mut out)?;
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
        let mut more = Vec::new();
        assert_eq!(
            scanner.feed(&input[off..], &mut more),
            Ok(0),
            "past the end"
        );
        assert!(more.is_empty());
        Ok((off, out))
    }

    /// The whole input at once: (consumed, output) or the error.
    fn whole(input: &[u8]) -> Result<(usize, Vec<u8>), ChunkError> {
        let mut out = Vec::new();
        let n = ChunkedScanner::new().feed(input, &mut out)?;
        Ok((n, out))
    }

    #[test]
    fn chunked_whole_is_canonical() {
        let input = body_then_next();
        let mut scanner = ChunkedScanner::new();
        let mut out = Vec::new();
        assert!(!scanner.is_done());
        assert_eq!(scanner.feed(&input, &mut out), Ok(BODY.len()));
        assert!(scanner.is_done());
        assert_eq!(
            String::from_utf8_lossy(&out),
            String::from_utf8_lossy(CANONICAL)
        );
        assert_eq!(&input[BODY.len()..], NEXT);
        assert_eq!(scanner.feed(NEXT, &mut out), Ok(0));
        assert_eq!(scanner.data_remaining(), 0);
    }

    #[test]
    fn chunked_byte_by_byte() {
        let input = body_then_next();
        let (n, out) = feed_in_pieces(&input, || 1).unwrap();
        assert_eq!((n, out.as_slice()), (BODY.len(), CANONICAL));
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
            let (n, out) = feed_in_pieces(&input, next).unwrap();
            assert_eq!((n, out.as_slice()), (BODY.len(), CANONICAL), "seed {seed}");
        }
    }

    #[test]
    fn chunked_every_two_way_split() {
        let input = body_then_next();
        for cut in 0..=input.len() {
            let mut scanner = ChunkedScanner::new();
            let mut out = Vec::new();
            let a = scanner.feed(&input[..cut], &mut out).unwrap();
            let b = scanner.feed(&input[a..], &mut out).unwrap();
            assert_eq!(a + b, BODY.len(), "cut {cut}");
            assert_eq!(out, CANONICAL, "cut {cut}");
            assert!(scanner.is_done());
        }
    }

    /// RFC 9112 7.1, 7.1.1, 7.1.2: accepted forms and their canonical output.
    #[test]
    fn chunked_canonical_forms() {
        let cases: &[(&[u8], &[u8])] = &[
            (b"0\r\n\r\n", b"0\r\n\r\n"),
            (b"000\r\n\r\n", b"0\r\n\r\n"),
            (b"0;x=y\r\n\r\n", b"0\r\n\r\n"),
            (b"0\r\nA: b\r\n\r\n", b"0\r\nA: b\r\n\r\n"),
            (b"0\r\nA:b  \r\n\r\n", b"0\r\nA: b\r\n\r\n"),
            (b"1\r\nx\r\n0\r\n\r\n", b"1\r\nx\r\n0\r\n\r\n"),
            (
                b"A\r\n0123456789\r\n0\r\n\r\n",
                b"a\r\n0123456789\r\n0\r\n\r\n",
            ),
            (
                b"00a\r\n0123456789\r\n0\r\n\r\n",
                b"a\r\n0123456789\r\n0\r\n\r\n",
            ),
            (b"1\t;\tq\r\nx\r\n0\r\n\r\n", b"1\r\nx\r\n0\r\n\r\n"),
            (b"1;a=\"\\\"\"\r\nx\r\n0\r\n\r\n", b"1\r\nx\r\n0\r\n\r\n"),
            (b"1;a = b;c\r\nx\r\n0\r\n\r\n", b"1\r\nx\r\n0\r\n\r\n"),
            // RFC 9110 6.5.1: framing and routing fields are no trailers.
            (
                b"0\r\nContent-Length: 5\r\nHost: evil\r\nTransfer_Encoding: x\r\nOK: 1\r\n\r\n",
                b"0\r\nOK: 1\r\n\r\n",
            ),
            (b"0\r\nTE: trailers\r\nTrailer: a\r\n\r\n", b"0\r\n\r\n"),
        ];
        for (body, want) in cases {
            let mut input = body.to_vec();
            input.extend_from_slice(b"\r\nleftover");
            let label = String::from_utf8_lossy(body).into_owned();
            let (n, out) = whole(&input).unwrap_or_else(|e| panic!("{label:?}: {e}"));
            assert_eq!(n, body.len(), "{label:?}");
            assert_eq!(
                String::from_utf8_lossy(&out),
                String::from_utf8_lossy(want),
                "{label:?}"
            );
        }
    }

    /// RFC 9112 6.1, 7.1.3: for an HTTP/1.0 recipient the body is decoded;
    /// it is read as strictly, whatever the split.
    #[test]
    fn dechunking_writes_the_data_only() {
        let input = body_then_next();
        for cut in 0..=input.len() {
            let mut scanner = ChunkedScanner::dechunking();
            let mut out = Vec::new();
            let a = scanner.feed(&input[..cut], &mut out).unwrap();
            let b = scanner.feed(&input[a..], &mut out).unwrap();
            assert_eq!(a + b, BODY.len(), "cut {cut}");
            assert!(scanner.is_done());
            assert_eq!(
                out, b"Wikipedia in\r\n\r\nchunks.0123456789abcdef",
                "cut {cut}"
            );
        }
        let mut out = Vec::new();
        let bad = ChunkedScanner::dechunking().feed(b"5 \r\nhello\r\n", &mut out);
        assert_eq!(bad, Err(ChunkError::BadSize));
    }

    #[test]
    fn chunked_incomplete_is_not_done() {
        let mut scanner = ChunkedScanner::new();
        let mut out = Vec::new();
        assert_eq!(
            scanner.feed(&BODY[..BODY.len() - 1], &mut out),
            Ok(BODY.len() - 1)
        );
        assert!(!scanner.is_done());
        assert_eq!(scanner.feed(b"\nGET", &mut out), Ok(1));
        assert!(scanner.is_done());
        assert_eq!(out, CANONICAL);
    }

    #[test]
    fn chunked_data_remaining_and_skip() {
        let mut scanner = ChunkedScanner::new();
        let mut out = Vec::new();
        assert_eq!(scanner.data_remaining(), 0);
        assert_eq!(scanner.feed(b"1A;e=1\r\n", &mut out), Ok(8));
        assert_eq!(out, b"1a\r\n");
        assert_eq!(scanner.data_remaining(), 26);
        assert_eq!(scanner.feed(b"abc", &mut out), Ok(3));
        assert_eq!(scanner.data_remaining(), 23);
        scanner.skip_data(20);
        assert_eq!(scanner.data_remaining(), 3);
        scanner.skip_data(3);
        assert_eq!(scanner.data_remaining(), 0);
        assert!(!scanner.is_done());
        // Next must be the CRLF after the data.
        assert_eq!(scanner.feed(b"\r\n1000\r\n", &mut out), Ok(8));
        assert_eq!(scanner.data_remaining(), 0x1000);
        scanner.skip_data(0x1000);
        assert_eq!(scanner.feed(b"\r\n0\r\n\r\nrest", &mut out), Ok(7));
        assert!(scanner.is_done());
        assert_eq!(out, b"1a\r\nabc\r\n1000\r\n\r\n0\r\n\r\n");
        // skip_data outside data is a no-op.
        scanner.skip_data(5);
        assert!(scanner.is_done());
    }

    #[test]
    fn chunked_large_chunk_skipped_without_feeding() {
        let mut scanner = ChunkedScanner::new();
        let mut out = Vec::new();
        assert_eq!(scanner.feed(b"4000000000000000\r\n", &mut out), Ok(18));
        assert_eq!(scanner.data_remaining(), 1 << 62);
        scanner.skip_data(1 << 61);
        assert_eq!(scanner.feed(&[0u8; 10], &mut out), Ok(10));
        assert_eq!(scanner.data_remaining(), (1 << 61) - 10);
    }

    /// RFC 9112 7.1 (size), 7.1.1 (extensions), 7.1.2 (trailers), 2.2 (CRLF):
    /// what is rejected, whole and byte by byte alike.
    #[test]
    fn chunked_errors_table() {
        let long_ext = format!("5;{}\r\nhello\r\n0\r\n\r\n", "a".repeat(5000));
        let long_digits = format!("{}1\r\nx\r\n0\r\n\r\n", "0".repeat(4096));
        let ok_digits = format!("{}1\r\nx\r\n0\r\n\r\n", "0".repeat(4095));
        let big_trailer = format!("0\r\nX: {}\r\n\r\n", "t".repeat(MAX_TRAILER_BYTES));
        let many_trailers = format!("0\r\n{}\r\n", "A: b\r\n".repeat(MAX_TRAILER_FIELDS + 1));
        let trailer_at_limit = format!("0\r\nX: {}\r\n\r\n", "t".repeat(MAX_TRAILER_BYTES - 7));
        let cases: Vec<(&[u8], Result<(), ChunkError>)> = vec![
            (b"zz\r\n", Err(ChunkError::BadSize)),
            (b"\r\n", Err(ChunkError::BadSize)),
            (b";ext\r\n", Err(ChunkError::BadSize)),
            (b" 5\r\n", Err(ChunkError::BadSize)),
            (b"0x5\r\n", Err(ChunkError::BadSize)),
            (b"-1\r\n", Err(ChunkError::BadSize)),
            (b"+1\r\n", Err(ChunkError::BadSize)),
            (b"5\n", Err(ChunkError::BadSize)),
            (b"5\rx", Err(ChunkError::BadSize)),
            (b"5 x\r\n", Err(ChunkError::BadSize)),
            // Trailing whitespace is BWS only before ";" (7.1.1).
            (b"5 \r\nhello\r\n0\r\n\r\n", Err(ChunkError::BadSize)),
            (b"5\t\r\n", Err(ChunkError::BadSize)),
            (b"5;\r\n", Err(ChunkError::BadExtension)),
            (b"5;;a\r\n", Err(ChunkError::BadExtension)),
            (b"5;a \r\n", Err(ChunkError::BadExtension)),
            (b"5;a=\r\n", Err(ChunkError::BadExtension)),
            (b"5;a=b \r\n", Err(ChunkError::BadExtension)),
            (b"5;a=\"b\r\n", Err(ChunkError::BadExtension)),
            (b"5;a=\"b\"c\r\n", Err(ChunkError::BadExtension)),
            (b"5;a\nb\r\n", Err(ChunkError::BadExtension)),
            (b"5;a\x00\r\n", Err(ChunkError::BadExtension)),
            (b"5;a=b\x7f\r\n", Err(ChunkError::BadExtension)),
            (b"5;a\rb\r\n", Err(ChunkError::BadSize)),
            (b"5\r\nhelloX", Err(ChunkError::MissingCrlf)),
            (b"5\r\nhello\rX", Err(ChunkError::MissingCrlf)),
            (b"5\r\nhello\n0\r\n\r\n", Err(ChunkError::MissingCrlf)),
            (b"5\r\nhello world\r\n", Err(ChunkError::MissingCrlf)),
            (b"0\r\nA: b\n\r\n", Err(ChunkError::MissingCrlf)),
            (b"0\r\n\n", Err(ChunkError::MissingCrlf)),
            (b"0\r\n\rX", Err(ChunkError::MissingCrlf)),
            (b"0\r\nno colon\r\n\r\n", Err(ChunkError::BadTrailer)),
            (b"0\r\nA : b\r\n\r\n", Err(ChunkError::BadTrailer)),
            (b"0\r\nA: b\r\n c\r\n\r\n", Err(ChunkError::BadTrailer)),
            (b"0\r\nA: b\x01\r\n\r\n", Err(ChunkError::BadTrailer)),
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
            let got = whole(input).map(|_| ());
            assert_eq!(got, want, "whole: {label:?}");
            // Byte by byte must agree.
            let mut scanner = ChunkedScanner::new();
            let mut out = Vec::new();
            let mut bytewise = Ok(());
            for b in input {
                if let Err(e) = scanner.feed(std::slice::from_ref(b), &mut out) {
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
        let (n, out) = whole(body.as_bytes()).unwrap();
        assert_eq!(n, body.len());
        assert_eq!(out, body.as_bytes());
    }

    #[test]
    fn chunked_error_is_sticky() {
        let mut scanner = ChunkedScanner::new();
        let mut out = Vec::new();
        assert_eq!(scanner.feed(b"zz", &mut out), Err(ChunkError::BadSize));
        assert_eq!(
            scanner.feed(b"0\r\n\r\n", &mut out),
            Err(ChunkError::BadSize)
        );
        assert_eq!(scanner.feed(b"", &mut out), Err(ChunkError::BadSize));
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
