//! parse_response_head + prepare_response (for GET and HEAD): a response
//! the proxy accepts is forwarded in a form it would accept again, and
//! reading that form gives the same response.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sockwarden::proxy::http::{
    parse_response_head, prepare_response, write_response, ConnectionHeader, KeepAlive,
};

fuzz_target!(|data: &[u8]| {
    let Ok(Some((head, n))) = parse_response_head(data) else {
        return;
    };
    assert!(n <= data.len(), "consumed {n} of {}", data.len());
    for method in ["GET", "HEAD"] {
        let Ok(resp) = prepare_response(method, head.clone()) else {
            continue;
        };
        let connection = if resp.status == 101 {
            ConnectionHeader::Upgrade
        } else {
            ConnectionHeader::Close
        };
        let mut out = Vec::new();
        write_response(&resp, connection, &mut out);
        let (again, m) = match parse_response_head(&out) {
            Ok(Some(parsed)) => parsed,
            other => panic!("forwarded head does not parse back: {other:?}\n{out:?}"),
        };
        assert_eq!(m, out.len(), "forwarded head has bytes after it");
        let mut again = match prepare_response(method, again) {
            Ok(r) => r,
            Err(e) => panic!("the proxy refuses what it forwards: {e}\n{out:?}"),
        };
        // The proxy writes its own Connection header and drops Keep-Alive.
        again.close = resp.close;
        assert_eq!(again.keep_alive, KeepAlive::default());
        again.keep_alive = resp.keep_alive;
        // The proxy sends its own version.
        again.version = resp.version;
        assert_eq!(again, resp, "a second reading differs ({method})\n{out:?}");
    }
});
