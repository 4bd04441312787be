//! ChunkedScanner over one input fed whole, byte by byte, at fuzzer-chosen
//! split points, and with chunk data skipped (skip_data) instead of fed:
//! every way gives the same consumed length and result, no feed consumes
//! more than it was given, and a feed that consumes less has reached the
//! end of the body (so the scanner stops exactly there).
//!
//! Input: the first 8 bytes seed the split points, the rest is the body.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sockwarden::proxy::http::{ChunkError, ChunkedScanner};

/// What a scan found: bytes consumed, and Ok(done) or the error.
type Outcome = (usize, Result<bool, ChunkError>);

/// Feeds `body` in pieces of the lengths `cuts` yields (0 → 1), or skips
/// chunk data where possible when `skip`.
fn scan(body: &[u8], mut cuts: impl FnMut() -> usize, skip: bool) -> Outcome {
    let mut s = ChunkedScanner::new();
    let mut at = 0;
    while at < body.len() {
        if skip && s.data_remaining() > 0 {
            let n = s.data_remaining().min((body.len() - at) as u64);
            s.skip_data(n);
            at += n as usize;
            continue;
        }
        let len = cuts().max(1).min(body.len() - at);
        let piece = &body[at..at + len];
        match s.feed(piece) {
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
                assert_eq!(s.feed(b"0\r\n\r\n"), Err(e.clone()), "error not sticky");
                return (at, Err(e));
            }
        }
    }
    if s.is_done() {
        assert_eq!(s.feed(b"x"), Ok(0), "consumed after the end");
    }
    (at, Ok(s.is_done()))
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
        Ok(_) => (Some(o.0), o.1.clone()),
        Err(_) => (None, o.1.clone()),
    };
    assert_eq!(key(&whole), key(&bytewise), "whole vs byte by byte");
    assert_eq!(key(&whole), key(&split), "whole vs random splits");
    assert_eq!(key(&whole), key(&skipped), "whole vs skip_data");
});
