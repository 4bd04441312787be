//! parse_request_head + request_framing + host()/path() on success; the
//! head the proxy would forward parses back to the same request and framing.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sockwarden::proxy::http::{
    parse_request_head, request_framing, write_request_head, ConnectionHeader, MAX_HEADERS,
};

fuzz_target!(|data: &[u8]| {
    let Ok(Some((head, n))) = parse_request_head(data) else {
        return;
    };
    assert!(n <= data.len(), "consumed {n} of {}", data.len());
    let framing = request_framing(&head);
    let _ = head.host();
    let _ = head.path();
    let _ = head.upgrade();
    let _ = head.expects_continue();
    // Only a request the proxy accepts is forwarded.
    let Ok(framing) = framing else { return };
    // Known finding (tests/fuzz_regressions.rs): with MAX_HEADERS fields
    // the added Connection field makes the forwarded head one too many.
    if head.headers.len() >= MAX_HEADERS {
        return;
    }
    let mut out = Vec::new();
    write_request_head(&head, ConnectionHeader::KeepAlive, &mut out);
    let (again, m) = match parse_request_head(&out) {
        Ok(Some(parsed)) => parsed,
        other => panic!("forwarded head does not parse back: {other:?}\n{out:?}"),
    };
    assert_eq!(m, out.len(), "forwarded head has bytes after it");
    assert_eq!(
        (&again.method, &again.target, again.version),
        (&head.method, &head.target, head.version)
    );
    assert_eq!(
        request_framing(&again),
        Ok(framing),
        "framing changed when forwarded"
    );
});
