//! ChunkedScanner over one input fed whole, byte by byte, at fuzzer-chosen
//! split points, and with chunk data skipped (skip_data) instead of fed:
//! every way gives the same consumed length and result, no feed consumes
//! more than it was given, and a feed that consumes less has reached the
//! end of the body (so the scanner stops exactly there). Every way writes
//! the same canonical body, and that body reads back as itself.
//!
//! Input: the first 8 bytes seed the split points, the rest is the body.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sockwarden::proxy::http::{ChunkError, ChunkedScanner};

/// What a scan found: bytes consumed, Ok(done) or the error, and the
/// canonical output.
type Outcome = (usize, Result<bool, ChunkError>, Vec<u8>);

/// Feeds `body` in pieces of the lengths `cuts` yields (0 → 1), or skips
/// chunk data where possible when `skip`.
fn scan(body: &[u8], cuts: impl FnMut() -> usize, skip: bool) -> Outcome {
    scan_with(ChunkedScanner::new(), body, cuts, skip)
}

/// [`scan`] with the scanner given (canonical or de-chunking).
fn scan_with(
    mut s: ChunkedScanner,
    body: &[u8],
    mut cuts: impl FnMut() -> usize,
    skip: bool,
) -> Outcome {
    let mut out = Vec::new();
    let mut at = 0;
    while at < body.len() {
        if skip && s.data_remaining() > 0 {
            let n = s.data_remaining().min((body.len() - at) as u64);
            s.skip_data(n);
            out.extend_from_slice(&body[at..at + n as usize]);
            at += n as usize;
            continue;
        }
        let len = cuts().max(1).min(body.len() - at);
        let piece = &body[at..at + len];
        match s.feed(piece, &mut out) {
            Ok(n) => {
                assert!(
                    n <= piece.len(),
                    "consumed {n} of a {}-byte piece",
                    piece.len()
                );
                at += n;
                if n < piece.len() {
                    assert!(
                        s.is_done(),
                        "stopped short at {at} without reaching the end"
                    );
                    break;
                }
                if s.is_done() {
                    break;
                }
            }
            Err(e) => {
                let mut more = Vec::new();
                assert_eq!(
                    s.feed(b"0\r\n\r\n", &mut more),
                    Err(e.clone()),
                    "error not sticky"
                );
                return (at, Err(e), Vec::new());
            }
        }
    }
    if s.is_done() {
        let mut more = Vec::new();
        assert_eq!(s.feed(b"x", &mut more), Ok(0), "consumed after the end");
        assert!(more.is_empty(), "wrote after the end");
    }
    (at, Ok(s.is_done()), out)
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 8 {
        return;
    }
    let (seed, body) = data.split_at(8);
    let mut state = u64::from_le_bytes(seed.try_into().unwrap_or([0; 8])) | 1;
    let mut random = move || {
        // xorshift64: deterministic split points from the seed.
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state % 17) as usize
    };
    let whole = scan(body, || body.len(), false);
    let bytewise = scan(body, || 1, false);
    let split = scan(body, &mut random, false);
    let skipped = scan(body, || body.len(), true);
    // An error's position may differ by where the scanner notices it only
    // in the consumed count reported before the error piece; compare the
    // results, and the consumed count of successful scans.
    let key = |o: &Outcome| match &o.1 {
        Ok(_) => (Some(o.0), o.1.clone(), o.2.clone()),
        Err(_) => (None, o.1.clone(), Vec::new()),
    };
    assert_eq!(key(&whole), key(&bytewise), "whole vs byte by byte");
    assert_eq!(key(&whole), key(&split), "whole vs random splits");
    assert_eq!(key(&whole), key(&skipped), "whole vs skip_data");
    // A complete canonical body reads back as itself.
    if whole.1 == Ok(true) {
        let again = scan(&whole.2, || whole.2.len(), false);
        assert_eq!(again.1, Ok(true), "canonical body refused: {:?}", whole.2);
        assert_eq!(again.0, whole.2.len());
        assert_eq!(again.2, whole.2, "canonical form is not a fixed point");
    }
    // De-chunking (for HTTP/1.0 clients) reads exactly as strictly, at any
    // split, and writes the same data whether fed the body or its
    // canonical form.
    let decoded = scan_with(ChunkedScanner::dechunking(), body, &mut random, false);
    let read = |o: &Outcome| match &o.1 {
        Ok(_) => (Some(o.0), o.1.clone()),
        Err(_) => (None, o.1.clone()),
    };
    assert_eq!(
        read(&decoded),
        read(&whole),
        "de-chunking reads differently"
    );
    if whole.1 == Ok(true) {
        let again = scan_with(ChunkedScanner::dechunking(), &whole.2, || 1, false);
        assert_eq!(
            again.2, decoded.2,
            "de-chunked data differs from the canonical body's"
        );
    }
});
