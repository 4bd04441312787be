//! Inputs the fuzz targets (fuzz/) found, as tests of the public functions.

use sockwarden::proxy::http::{
    parse_request_head, parse_response_head, prepare_request, prepare_response, write_request,
    write_response, ConnectionHeader, HeadError, MAX_HEADERS,
};

/// A head with exactly `fields` fields after the start line, Host first.
fn head_with(start: &str, fields: usize) -> Vec<u8> {
    let mut head = format!("{start}\r\nHost: o.test\r\n");
    for i in 1..fields {
        head.push_str(&format!("X-F{i}:v\r\n"));
    }
    head.push_str("\r\n");
    head.into_bytes()
}

/// fuzz target request_head (crash-e3c14e84…, 2 846 bytes, found in a
/// 300 s run): a request with MAX_HEADERS fields was accepted, then
/// forwarded with the proxy's own Connection field added: MAX_HEADERS + 1
/// fields, which the proxy itself (and so a next sockwarden) refuses. Now
/// a request is accepted only if its forwarded form is within the limits.
#[test]
fn a_request_is_accepted_only_if_its_forwarded_form_fits() {
    // HTTP/1.1 with Host + 127 fields: forwarded as is (the proxy adds no field).
    let (head, _) = parse_request_head(&head_with("GET /allowed HTTP/1.1", MAX_HEADERS))
        .expect("accepted")
        .expect("complete");
    let req = prepare_request(head).expect("forwardable");
    let mut out = Vec::new();
    write_request(&req, &req.upgrade, &mut out);
    let (again, _) = parse_request_head(&out)
        .expect("the forwarded head parses back")
        .expect("complete");
    assert_eq!(prepare_request(again).expect("and is accepted again"), req);
    // HTTP/1.0 leaves with `Connection: keep-alive`: one field more than it
    // came with, so 128 fields cannot be forwarded (431).
    let (head, _) = parse_request_head(&head_with("GET /allowed HTTP/1.0", MAX_HEADERS))
        .expect("accepted")
        .expect("complete");
    assert_eq!(prepare_request(head), Err(HeadError::TooLarge));
}

/// fuzz target response_head (crash-cb2a0137…, 2 398 bytes): the same for
/// a response, which gets the proxy's Connection header.
#[test]
fn a_response_is_accepted_only_if_its_forwarded_form_fits() {
    let full = head_with("HTTP/1.1 200 OK", MAX_HEADERS);
    let (head, _) = parse_response_head(&full)
        .expect("parses")
        .expect("complete");
    assert_eq!(prepare_response("GET", head), Err(HeadError::TooLarge));
    let fits = head_with("HTTP/1.1 200 OK", MAX_HEADERS - 1);
    let (head, _) = parse_response_head(&fits)
        .expect("parses")
        .expect("complete");
    let resp = prepare_response("GET", head).expect("forwardable");
    let mut out = Vec::new();
    write_response(&resp, ConnectionHeader::Close, &mut out);
    assert!(
        matches!(parse_response_head(&out), Ok(Some(_))),
        "parses back"
    );
}
