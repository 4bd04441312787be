//! parse_response_head + response_framing (for GET, HEAD and CONNECT).
#![no_main]

use libfuzzer_sys::fuzz_target;
use sockwarden::proxy::http::{
    parse_response_head, response_framing, write_response_head, ConnectionHeader, MAX_HEADERS,
};

fuzz_target!(|data: &[u8]| {
    let Ok(Some((head, n))) = parse_response_head(data) else {
        return;
    };
    assert!(n <= data.len(), "consumed {n} of {}", data.len());
    for method in ["GET", "HEAD", "CONNECT"] {
        let _ = response_framing(method, &head);
    }
    let Ok(framing) = response_framing("GET", &head) else {
        return;
    };
    // Known finding (tests/fuzz_regressions.rs): with MAX_HEADERS fields
    // the added Connection field makes the forwarded head one too many.
    if head.headers.len() >= MAX_HEADERS {
        return;
    }
    let mut out = Vec::new();
    write_response_head(&head, ConnectionHeader::KeepAlive, &mut out);
    let (again, m) = match parse_response_head(&out) {
        Ok(Some(parsed)) => parsed,
        other => panic!("forwarded head does not parse back: {other:?}\n{out:?}"),
    };
    assert_eq!(m, out.len(), "forwarded head has bytes after it");
    assert_eq!(again.status, head.status);
    assert_eq!(
        response_framing("GET", &again),
        Ok(framing),
        "framing changed when forwarded"
    );
});
