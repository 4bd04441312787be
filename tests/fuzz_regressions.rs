//! Inputs the fuzz targets (fuzz/) found, as tests of the public functions.

use sockwarden::proxy::http::{
    parse_request_head, parse_response_head, request_framing, write_request_head,
    write_response_head, ConnectionHeader, HeadError, MAX_HEADERS,
};

/// A head with exactly `MAX_HEADERS` fields after the start line.
fn full_head(start: &str) -> Vec<u8> {
    let mut head = format!("{start}\r\nHost: o.test\r\n");
    for i in 1..MAX_HEADERS {
        head.push_str(&format!("X-F{i}: v\r\n"));
    }
    head.push_str("\r\n");
    head.into_bytes()
}

/// The forwarded head must stay within the limits the proxy itself enforces.
fn assert_not_too_large<T: std::fmt::Debug>(reparsed: &Result<T, HeadError>) {
    assert!(
        !matches!(reparsed, Err(HeadError::TooLarge)),
        "the proxy forwards a head it would itself refuse: {reparsed:?}"
    );
}

/// fuzz target request_head (crash-e3c14e84…, 2 846 bytes, found in a
/// 300 s run): a request with MAX_HEADERS fields is accepted, but
/// write_request_head adds its Connection field, and the forwarded head has
/// MAX_HEADERS + 1 fields, which parse_request_head (and so a next
/// sockwarden) refuses as TooLarge (431).
#[test]
fn forwarded_request_head_with_max_fields_parses_back() {
    let input = full_head("GET /allowed HTTP/1.1");
    let (head, _) = parse_request_head(&input)
        .expect("accepted")
        .expect("complete");
    assert_eq!(head.headers.len(), MAX_HEADERS);
    let framing = request_framing(&head).expect("framing");
    let mut out = Vec::new();
    write_request_head(&head, ConnectionHeader::KeepAlive, &mut out);
    let reparsed = parse_request_head(&out);
    assert_not_too_large(&reparsed);
    let (again, _) = reparsed.expect("parses").expect("complete");
    assert_eq!(request_framing(&again), Ok(framing));
}

/// fuzz target response_head (crash-cb2a0137…, 2 398 bytes): the same
/// with write_response_head and parse_response_head.
#[test]
fn forwarded_response_head_with_max_fields_parses_back() {
    let input = full_head("HTTP/1.1 200 OK");
    let (head, _) = parse_response_head(&input)
        .expect("accepted")
        .expect("complete");
    let mut out = Vec::new();
    write_response_head(&head, ConnectionHeader::KeepAlive, &mut out);
    assert_not_too_large(&parse_response_head(&out));
}
