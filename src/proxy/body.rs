//! Body framing as a pure cursor: where a body ends, and what an engine
//! does next to forward it. No I/O here.
//!
//! One [`BodyCursor`] per body: Content-Length, chunked (through
//! [`ChunkedScanner`], which validates the framing and writes it
//! canonically, or drops it when de-chunking) or until close. Asked with
//! what is buffered, and whether the engine has a kernel path (see
//! [`BodyCursor::next`]), it answers one [`Step`]; told what happened, it
//! advances. Its answers keep the engines' guarantees by construction:
//! buffered bytes (those that came with a head) are written before anything
//! moves kernel-side; nothing is consumed past the body's last byte; with a
//! kernel path, framing lines are read one at a time, so chunk data stays
//! in the kernel.

use super::http::{BodyFraming, ChunkError, ChunkedScanner};

/// Body bytes forwarded, by engine, and read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Forwarded {
    /// Written through the proxy's buffer (bytes that came with a head,
    /// framing lines, or everything with the copy engine).
    pub copied: u64,
    /// Moved kernel-side with splice(2).
    pub spliced: u64,
    /// Read from the source: the same as written, except for a chunked
    /// body, whose framing lines are written in canonical form.
    pub read: u64,
}

impl Forwarded {
    pub fn total(&self) -> u64 {
        self.copied + self.spliced
    }
}

/// Why a body cannot be forwarded, as its framing tells.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FramingError {
    /// The source reached EOF before the body's end; `missing`: the bytes
    /// of the body (Content-Length) or of the current chunk's data still
    /// owed, 0 when EOF came in a framing line.
    #[error("body ended early: connection closed with {missing} bytes missing")]
    Truncated { missing: u64 },
    #[error("bad chunked body: {0}")]
    Chunk(#[from] ChunkError),
}

/// What the engine does next. `K` is the engine's kernel path, as it was
/// handed to [`BodyCursor::next`]: steps that need one carry it, so they
/// cannot be asked of an engine that has none.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step<'a, K> {
    /// Write `bytes`, then consume the first `consume` buffered bytes and
    /// tell [`BodyCursor::written`]. `bytes` is those buffered bytes
    /// themselves, or (chunked) their canonical form, possibly empty while
    /// a framing line is incomplete.
    Write { consume: usize, bytes: &'a [u8] },
    /// Move up to `limit` bytes (None: until EOF) from the source to the
    /// destination through `via`, then tell [`BodyCursor::moved`]. The
    /// engine moves fewer than `limit` only when the source reached EOF.
    Move { via: K, limit: Option<u64> },
    /// Read at most one line (through its LF) into the buffer, leaving
    /// what follows in the source; tell [`BodyCursor::read`].
    ReadLine(K),
    /// Read more bytes into the buffer; tell [`BodyCursor::read`].
    Fill,
    /// The body is complete; [`BodyCursor::forwarded`] has its counts.
    Done,
}

#[derive(Debug)]
enum Framing {
    /// Content-Length: the bytes left.
    Length(u64),
    /// Chunked: the scanner, and the canonical form of what it consumed
    /// last (the bytes of a pending [`Step::Write`]).
    Chunked {
        scanner: ChunkedScanner,
        out: Vec<u8>,
    },
    UntilClose,
}

/// The framing state of one body being forwarded.
#[derive(Debug)]
pub struct BodyCursor {
    framing: Framing,
    /// The buffered bytes a [`Step::Write`] asked to consume, until it is
    /// reported written: asking again returns the same step.
    pending: Option<usize>,
    /// The source reached EOF.
    eof: bool,
    forwarded: Forwarded,
}

impl BodyCursor {
    /// A cursor for a body framed by `framing`, at its first byte.
    pub fn new(framing: BodyFraming) -> Self {
        match framing {
            BodyFraming::None => Self::with(Framing::Length(0)),
            BodyFraming::Length(n) => Self::with(Framing::Length(n)),
            BodyFraming::Chunked => Self::chunked(ChunkedScanner::new()),
            BodyFraming::UntilClose => Self::with(Framing::UntilClose),
        }
    }

    /// A cursor for a chunked body read through `scanner` (which decides
    /// what is written of its framing: see [`ChunkedScanner::dechunking`]).
    pub fn chunked(scanner: ChunkedScanner) -> Self {
        Self::with(Framing::Chunked {
            scanner,
            out: Vec::new(),
        })
    }

    fn with(framing: Framing) -> Self {
        BodyCursor {
            framing,
            pending: None,
            eof: false,
            forwarded: Forwarded::default(),
        }
    }

    /// What to do next, given the unconsumed `buffered` bytes and the
    /// engine's kernel path, if it has one (a splice pipe between two TCP
    /// sockets): with one, bytes not yet buffered are moved, and framing
    /// lines read one at a time. Asking again before telling what happened
    /// returns the same step.
    pub fn next<'a, K: Copy>(
        &'a mut self,
        buffered: &'a [u8],
        kernel: Option<K>,
    ) -> Result<Step<'a, K>, FramingError> {
        let consume = match self.pending {
            Some(consume) => consume,
            None => match self.plan(buffered, kernel)? {
                Plan::Write(consume) => consume,
                Plan::Step(step) => return Ok(step),
            },
        };
        self.pending = Some(consume);
        let bytes = match &self.framing {
            Framing::Chunked { out, .. } => out.as_slice(),
            Framing::Length(_) | Framing::UntilClose => &buffered[..consume.min(buffered.len())],
        };
        Ok(Step::Write { consume, bytes })
    }

    /// The next step, a write's bytes left to [`BodyCursor::next`].
    fn plan<K>(&mut self, buffered: &[u8], kernel: Option<K>) -> Result<Plan<K>, FramingError> {
        let step = match &mut self.framing {
            Framing::Length(0) => Step::Done,
            Framing::Length(left) if !buffered.is_empty() => {
                let n = usize::try_from(*left).map_or(buffered.len(), |l| l.min(buffered.len()));
                return Ok(Plan::Write(n));
            }
            Framing::Length(left) if self.eof => {
                return Err(FramingError::Truncated { missing: *left })
            }
            Framing::Length(left) => match kernel {
                Some(via) => Step::Move {
                    via,
                    limit: Some(*left),
                },
                None => Step::Fill,
            },
            Framing::Chunked { scanner, .. } if scanner.is_done() => Step::Done,
            Framing::Chunked { scanner, out } if !buffered.is_empty() => {
                out.clear();
                return Ok(Plan::Write(scanner.feed(buffered, out)?));
            }
            Framing::Chunked { scanner, .. } if self.eof => {
                let missing = scanner.data_remaining();
                return Err(FramingError::Truncated { missing });
            }
            Framing::Chunked { scanner, .. } => match (kernel, scanner.data_remaining()) {
                (Some(via), 0) => Step::ReadLine(via),
                (Some(via), data) => Step::Move {
                    via,
                    limit: Some(data),
                },
                (None, _) => Step::Fill,
            },
            Framing::UntilClose if !buffered.is_empty() => return Ok(Plan::Write(buffered.len())),
            Framing::UntilClose if self.eof => Step::Done,
            Framing::UntilClose => match kernel {
                Some(via) => Step::Move { via, limit: None },
                None => Step::Fill,
            },
        };
        Ok(Plan::Step(step))
    }

    /// The last [`Step::Write`] was written (or dropped, for a discarded
    /// body) and its buffered bytes consumed.
    pub fn written(&mut self) {
        let Some(consume) = self.pending.take() else {
            return;
        };
        let written = match &mut self.framing {
            Framing::Length(left) => {
                *left -= consume as u64;
                consume
            }
            Framing::Chunked { out, .. } => {
                let n = out.len();
                out.clear();
                n
            }
            Framing::UntilClose => consume,
        };
        self.forwarded.read += consume as u64;
        self.forwarded.copied += written as u64;
    }

    /// A [`Step::Move`] moved `n` bytes; fewer than its limit means the
    /// source reached EOF.
    pub fn moved(&mut self, n: u64) {
        let short = match &mut self.framing {
            Framing::Length(left) => {
                let short = n < *left;
                *left -= n.min(*left);
                short
            }
            Framing::Chunked { scanner, .. } => {
                let short = n < scanner.data_remaining();
                scanner.skip_data(n);
                short
            }
            Framing::UntilClose => true,
        };
        self.eof |= short;
        self.forwarded.spliced += n;
        self.forwarded.read += n;
    }

    /// A [`Step::Fill`] or [`Step::ReadLine`] read `n` bytes into the
    /// buffer; 0 means the source reached EOF.
    pub fn read(&mut self, n: usize) {
        self.eof |= n == 0;
    }

    /// The body's bytes so far, by engine.
    pub fn forwarded(&self) -> Forwarded {
        self.forwarded
    }
}

/// What [`BodyCursor::plan`] decided.
enum Plan<K> {
    /// Write the next `n` buffered bytes (or their canonical form).
    Write(usize),
    /// Any other step (none borrows).
    Step(Step<'static, K>),
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use super::*;

    /// A source as an engine sees it: bytes that came with the head, then
    /// pieces arriving one per read, then EOF.
    struct Source {
        buffered: Vec<u8>,
        arriving: VecDeque<Vec<u8>>,
    }

    /// What driving a cursor over a [`Source`] gave.
    #[derive(Debug, PartialEq, Eq)]
    struct Run {
        result: Result<Forwarded, FramingError>,
        /// Bytes the destination received.
        out: Vec<u8>,
        /// Bytes left unconsumed: in the buffer, then in the source.
        rest: Vec<u8>,
    }

    impl Source {
        /// `input` with its first `buffered` bytes already buffered and
        /// the rest arriving in pieces of `piece` bytes.
        fn new(input: &[u8], buffered: usize, piece: usize) -> Self {
            let (head, tail) = input.split_at(buffered);
            Source {
                buffered: head.to_vec(),
                arriving: tail.chunks(piece.max(1)).map(<[u8]>::to_vec).collect(),
            }
        }

        /// `input` arriving in two reads, cut at `cut`.
        fn cut(input: &[u8], cut: usize) -> Self {
            let (a, b) = input.split_at(cut);
            Source {
                buffered: Vec::new(),
                arriving: [a, b]
                    .into_iter()
                    .filter(|p| !p.is_empty())
                    .map(<[u8]>::to_vec)
                    .collect(),
            }
        }

        /// One read: the next piece, or 0 at EOF.
        fn fill(&mut self) -> usize {
            let piece = self.arriving.pop_front().unwrap_or_default();
            self.buffered.extend_from_slice(&piece);
            piece.len()
        }

        /// A line read: through the first LF of what has arrived (the
        /// next piece), leaving the rest in the source.
        fn read_line(&mut self) -> usize {
            let Some(piece) = self.arriving.front_mut() else {
                return 0;
            };
            let n = piece
                .iter()
                .position(|&b| b == b'\n')
                .map_or(piece.len(), |i| i + 1);
            self.buffered.extend(piece.drain(..n));
            if piece.is_empty() {
                self.arriving.pop_front();
            }
            n
        }

        /// A splice: up to `limit` bytes, across reads, until EOF.
        fn splice(&mut self, limit: Option<u64>, out: &mut Vec<u8>) -> u64 {
            let mut left = limit.unwrap_or(u64::MAX);
            while left > 0 {
                let Some(piece) = self.arriving.front_mut() else {
                    break;
                };
                let n = piece.len().min(usize::try_from(left).unwrap_or(usize::MAX));
                out.extend(piece.drain(..n));
                left -= n as u64;
                if piece.is_empty() {
                    self.arriving.pop_front();
                }
            }
            limit.map_or(u64::MAX - left, |l| l - left)
        }

        /// Runs `cursor` to its end, as an engine with a kernel path
        /// (`kernel`) or without would.
        fn drive(mut self, mut cursor: BodyCursor, kernel: bool) -> Run {
            let mut out = Vec::new();
            let path = kernel.then_some(());
            let mut result = Err(FramingError::Truncated { missing: u64::MAX });
            for _ in 0..100_000 {
                match cursor.next(&self.buffered, path) {
                    Err(e) => {
                        result = Err(e);
                        break;
                    }
                    Ok(Step::Done) => {
                        result = Ok(cursor.forwarded());
                        break;
                    }
                    Ok(Step::Write { consume, bytes }) => {
                        out.extend_from_slice(bytes);
                        self.buffered.drain(..consume);
                        cursor.written();
                    }
                    Ok(Step::Move { via: (), limit }) => {
                        assert!(self.buffered.is_empty(), "moved past buffered bytes");
                        let n = self.splice(limit, &mut out);
                        cursor.moved(n);
                    }
                    Ok(Step::ReadLine(())) => cursor.read(self.read_line()),
                    Ok(Step::Fill) => cursor.read(self.fill()),
                }
            }
            let mut rest = self.buffered;
            rest.extend(self.arriving.into_iter().flatten());
            Run { result, out, rest }
        }
    }

    /// Every way the input can arrive: every cut into two reads, every
    /// amount already buffered with the head (the rest in one read, and
    /// byte at a time), and all byte at a time.
    fn arrivals(input: &[u8]) -> Vec<(String, Source)> {
        let mut all = vec![("bytewise".to_string(), Source::new(input, 0, 1))];
        for cut in 1..input.len() {
            all.push((format!("cut {cut}"), Source::cut(input, cut)));
        }
        for buffered in 0..=input.len() {
            let rest = input.len().max(1);
            all.push((
                format!("buffered {buffered}"),
                Source::new(input, buffered, rest),
            ));
            all.push((
                format!("buffered {buffered}, then bytewise"),
                Source::new(input, buffered, 1),
            ));
        }
        all
    }

    const NEXT: &[u8] = b"GET /next HTTP/1.1\r\nHost: a\r\n\r\n";

    /// A chunked body with extensions, odd sizes and trailers (RFC 9112
    /// 7.1), and its chunk data.
    const CHUNKED: &[u8] = b"4;ext=1\r\nWiki\r\n5 ; a=\"q;x\"\r\npedia\r\n\
        E\r\n in\r\n\r\nchunks.\r\n0;last\r\nExpires: never\r\nX-Trailer: y\r\n\r\n";
    /// CHUNKED as forwarded: size lines canonical, extensions dropped,
    /// Expires (no trailer, RFC 9110 6.5.1) dropped.
    const CANONICAL: &[u8] =
        b"4\r\nWiki\r\n5\r\npedia\r\ne\r\n in\r\n\r\nchunks.\r\n0\r\nX-Trailer: y\r\n\r\n";
    const DATA: &[u8] = b"Wikipedia in\r\n\r\nchunks.";
    /// Where CHUNKED's chunk data lies.
    const DATA_RANGES: [(usize, usize); 3] = [(9, 13), (28, 33), (38, 52)];

    #[test]
    fn data_ranges_are_the_data() {
        let data: Vec<u8> = DATA_RANGES
            .iter()
            .flat_map(|&(a, b)| CHUNKED[a..b].to_vec())
            .collect();
        assert_eq!(data, DATA);
    }

    fn with_next(body: &[u8]) -> Vec<u8> {
        [body, NEXT].concat()
    }

    /// A body that ends, and how it is forwarded.
    struct Complete {
        name: &'static str,
        cursor: fn() -> BodyCursor,
        body: &'static [u8],
        /// What the destination gets.
        want: &'static [u8],
        /// The body's bytes that can be moved kernel-side.
        movable: usize,
    }

    const COMPLETE: [Complete; 4] = [
        Complete {
            name: "content-length",
            cursor: || BodyCursor::new(BodyFraming::Length(11)),
            body: b"hello world",
            want: b"hello world",
            movable: 11,
        },
        Complete {
            name: "chunked",
            cursor: || BodyCursor::new(BodyFraming::Chunked),
            body: CHUNKED,
            want: CANONICAL,
            movable: DATA.len(),
        },
        Complete {
            name: "dechunked",
            cursor: || BodyCursor::chunked(ChunkedScanner::dechunking()),
            body: CHUNKED,
            want: DATA,
            movable: DATA.len(),
        },
        Complete {
            name: "no body",
            cursor: || BodyCursor::new(BodyFraming::None),
            body: b"",
            want: b"",
            movable: 0,
        },
    ];

    /// A body ends exactly at its last byte, whatever the split and the
    /// engine: the next head is left intact; every byte is counted once.
    #[test]
    fn complete_bodies_end_at_their_last_byte() {
        for Complete {
            name,
            cursor,
            body,
            want,
            movable,
        } in COMPLETE
        {
            let input = with_next(body);
            for kernel in [false, true] {
                for (how, source) in arrivals(&input) {
                    let label = format!("{name}, kernel {kernel}, {how}");
                    let buffered = source.buffered.len();
                    let run = source.drive(cursor(), kernel);
                    assert_eq!(run.out, want, "{label}");
                    assert_eq!(run.rest, NEXT, "{label}");
                    let done = run.result.unwrap_or_else(|e| panic!("{label}: {e}"));
                    assert_eq!(done.read, body.len() as u64, "{label}");
                    assert_eq!(done.total(), want.len() as u64, "{label}");
                    if !kernel {
                        assert_eq!(done.spliced, 0, "{label}");
                    } else if buffered == 0 {
                        // Nothing came with the head: all chunk data stays
                        // in the kernel, only framing lines are read.
                        assert_eq!(done.spliced, movable as u64, "{label}");
                    }
                }
            }
        }
    }

    /// A close-delimited body is everything until EOF.
    #[test]
    fn until_close_takes_everything() {
        let input = with_next(b"all of it");
        for kernel in [false, true] {
            for (how, source) in arrivals(&input) {
                let label = format!("kernel {kernel}, {how}");
                let buffered = source.buffered.len() as u64;
                let run = source.drive(BodyCursor::new(BodyFraming::UntilClose), kernel);
                assert_eq!(run.out, input, "{label}");
                assert!(run.rest.is_empty(), "{label}");
                let done = run.result.unwrap_or_else(|e| panic!("{label}: {e}"));
                let spliced = if kernel {
                    input.len() as u64 - buffered
                } else {
                    0
                };
                assert_eq!(
                    (done.copied, done.spliced, done.read),
                    (input.len() as u64 - spliced, spliced, input.len() as u64),
                    "{label}"
                );
            }
        }
    }

    /// EOF before the end: truncated, with the bytes still owed.
    #[test]
    fn truncation_reports_what_is_missing() {
        for len in 0..11u64 {
            let body = &b"hello world"[..len as usize];
            for kernel in [false, true] {
                for (how, source) in arrivals(body) {
                    let run = source.drive(BodyCursor::new(BodyFraming::Length(11)), kernel);
                    let label = format!("{len} of 11, kernel {kernel}, {how}");
                    let missing = 11 - len;
                    assert_eq!(
                        run.result,
                        Err(FramingError::Truncated { missing }),
                        "{label}"
                    );
                    assert_eq!(run.out, body, "{label}");
                }
            }
        }
        for cut in 0..CHUNKED.len() {
            // In chunk data, the rest of that chunk is owed; in a framing
            // line, nothing is known to be.
            let missing = DATA_RANGES
                .iter()
                .find(|(start, end)| (*start..*end).contains(&cut))
                .map_or(0, |(_, end)| (end - cut) as u64);
            for scanner in [ChunkedScanner::new(), ChunkedScanner::dechunking()] {
                for kernel in [false, true] {
                    for (how, source) in arrivals(&CHUNKED[..cut]) {
                        let run = source.drive(BodyCursor::chunked(scanner.clone()), kernel);
                        let label = format!("cut {cut}, kernel {kernel}, {how}");
                        assert_eq!(
                            run.result,
                            Err(FramingError::Truncated { missing }),
                            "{label}"
                        );
                    }
                }
            }
        }
    }

    /// A bad chunked body is rejected whatever the split and engine
    /// (the scanner's own table covers every error; these are one per
    /// position: size line, data CRLF, trailer).
    #[test]
    fn chunk_errors_surface() {
        let cases: [(&[u8], ChunkError); 4] = [
            (b"5 \r\nhello\r\n0\r\n\r\n", ChunkError::BadSize),
            (b"5\r\nhelloX\r\n0\r\n\r\n", ChunkError::MissingCrlf),
            (
                b"5\r\nhello\r\n0\r\nno colon\r\n\r\n",
                ChunkError::BadTrailer,
            ),
            (b"zz\r\n", ChunkError::BadSize),
        ];
        for (input, want) in cases {
            for kernel in [false, true] {
                for (how, source) in arrivals(input) {
                    let run = source.drive(BodyCursor::new(BodyFraming::Chunked), kernel);
                    let label = format!(
                        "{:?}, kernel {kernel}, {how}",
                        String::from_utf8_lossy(input)
                    );
                    assert_eq!(
                        run.result,
                        Err(FramingError::Chunk(want.clone())),
                        "{label}"
                    );
                }
            }
        }
    }

    /// A kernel path, and none.
    const K: Option<()> = Some(());
    const NO: Option<()> = None;

    fn mv(limit: Option<u64>) -> Result<Step<'static, ()>, FramingError> {
        Ok(Step::Move { via: (), limit })
    }

    fn write(consume: usize, bytes: &[u8]) -> Result<Step<'_, ()>, FramingError> {
        Ok(Step::Write { consume, bytes })
    }

    fn counts(copied: u64, spliced: u64, read: u64) -> Forwarded {
        Forwarded {
            copied,
            spliced,
            read,
        }
    }

    /// The answers themselves, step by step: Content-Length.
    #[test]
    fn length_steps() {
        let mut c = BodyCursor::new(BodyFraming::Length(5));
        assert_eq!(c.next(b"", NO), Ok(Step::Fill));
        assert_eq!(c.next(b"", K), mv(Some(5)));
        // Buffered bytes go first, even with a kernel path.
        assert_eq!(c.next(b"abcdefg", K), write(5, b"abcde"));
        c.written();
        assert_eq!(c.next(b"fg", K), Ok(Step::Done));
        assert_eq!(c.forwarded(), counts(5, 0, 5));

        // Moved fewer than asked: the source is at EOF.
        let mut c = BodyCursor::new(BodyFraming::Length(5));
        assert_eq!(c.next(b"", K), mv(Some(5)));
        c.moved(2);
        let truncated = Err(FramingError::Truncated { missing: 3 });
        assert_eq!(c.next(b"", K), truncated);
        assert_eq!(c.forwarded(), counts(0, 2, 2));
    }

    /// Chunked: lines read one at a time, data moved, framing rewritten.
    #[test]
    fn chunked_steps() {
        let mut c = BodyCursor::new(BodyFraming::Chunked);
        assert_eq!(c.next(b"", K), Ok(Step::ReadLine(())));
        assert_eq!(c.next(b"00a\r\n", K), write(5, b"a\r\n"));
        // Asked again before being told: the same answer, not fed twice.
        assert_eq!(c.next(b"00a\r\n", K), write(5, b"a\r\n"));
        c.written();
        assert_eq!(c.next(b"", K), mv(Some(10)));
        assert_eq!(c.next(b"", NO), Ok(Step::Fill));
        c.moved(10);
        assert_eq!(c.next(b"", K), Ok(Step::ReadLine(())));
        assert_eq!(c.next(b"\r\n0\r\n\r\nX", K), write(7, b"\r\n0\r\n\r\n"));
        c.written();
        assert_eq!(c.next(b"X", K), Ok(Step::Done));
        assert_eq!(c.forwarded(), counts(10, 10, 22));
    }

    /// Until close: everything, until EOF however it is seen.
    #[test]
    fn until_close_steps() {
        let mut c = BodyCursor::new(BodyFraming::UntilClose);
        assert_eq!(c.next(b"", K), mv(None));
        c.moved(100);
        assert_eq!(c.next(b"", K), Ok(Step::Done));
        assert_eq!(c.forwarded(), counts(0, 100, 100));
        let mut c = BodyCursor::new(BodyFraming::UntilClose);
        c.read(3);
        assert_eq!(c.next(b"abc", NO), write(3, b"abc"));
        c.written();
        assert_eq!(c.next(b"", NO), Ok(Step::Fill));
        c.read(0);
        assert_eq!(c.next(b"", NO), Ok(Step::Done));
        assert_eq!(c.forwarded(), counts(3, 0, 3));
    }
}
