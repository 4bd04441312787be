//! parse_request_head + prepare_request: a request the proxy accepts is
//! forwarded in a form it would accept again, and reading that form gives
//! the same request (normalizing is idempotent: one reading).
#![no_main]

use libfuzzer_sys::fuzz_target;
use sockwarden::proxy::http::{parse_request_head, prepare_request, write_request};

fuzz_target!(|data: &[u8]| {
    let Ok(Some((head, n))) = parse_request_head(data) else {
        return;
    };
    assert!(n <= data.len(), "consumed {n} of {}", data.len());
    // Only a request the proxy accepts is forwarded.
    let Ok(req) = prepare_request(head) else {
        return;
    };
    let mut out = Vec::new();
    write_request(&req, &req.upgrade, &mut out);
    let (again, m) = match parse_request_head(&out) {
        Ok(Some(parsed)) => parsed,
        other => panic!("forwarded head does not parse back: {other:?}\n{out:?}"),
    };
    assert_eq!(m, out.len(), "forwarded head has bytes after it");
    let mut again = match prepare_request(again) {
        Ok(r) => r,
        Err(e) => panic!("the proxy refuses what it forwards: {e}\n{out:?}"),
    };
    // An HTTP/1.0 request leaves with `Connection: keep-alive` (the proxy
    // keeps its upstream), so only whether the client asked to close differs.
    again.close = req.close;
    assert_eq!(again, req, "a second reading differs\n{out:?}");
});
