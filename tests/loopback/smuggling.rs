//! The smuggling corpus (tests/corpus/) through the real proxy on loopback.
//!
//! Each request vector is written as raw bytes to a fresh proxy whose policy
//! allows `/allowed.*` (and `/hostonly.*` for host `good.test`) in front of a
//! recording origin; the responses the client gets and the requests the
//! origin reads must be exactly the manifest's. Whatever a vector expects,
//! no request for `/denied` may ever reach the origin, and the origin may
//! never read more requests than the client sent allowed ones. Response
//! vectors: an origin answers with the raw vector, and the client must get
//! the expected status and body bytes, and nothing after them.
//!
//! Expectations follow the specified behaviour (docs/operations.md,
//! "Hostile input"); every vector runs, and the test fails listing each one
//! that does not hold. `SW_CORPUS_FILTER=substring` runs only matching ids.

use std::sync::Arc;

use crate::corpus::{
    self, exchange, invariant_violations, latin1, normalize, parse_responses, run_request, Answer,
    Expect, RecordingOrigin, RequestVector, ResponseVector,
};
use crate::harness::Harness;

/// Vectors run at once (each on its own proxy and origin).
const PARALLEL: usize = 4;

fn selected<T>(all: Vec<T>, id: impl Fn(&T) -> &str) -> Vec<T> {
    let filter = std::env::var("SW_CORPUS_FILTER").unwrap_or_default();
    all.into_iter()
        .filter(|v| id(v).contains(&filter))
        .collect()
}

/// Runs `check` over `items` on [`PARALLEL`] threads; returns every failure.
fn run_all<T: Sync>(items: &[T], check: impl Fn(&T) -> Vec<String> + Sync) -> Vec<String> {
    let chunk = items.len().div_ceil(PARALLEL).max(1);
    std::thread::scope(|s| {
        let handles: Vec<_> = items
            .chunks(chunk)
            .map(|part| s.spawn(|| part.iter().flat_map(&check).collect::<Vec<_>>()))
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("vector thread panicked"))
            .collect()
    })
}

/// Every way the observation of request vector `v` differs from its manifest entry.
fn request_failures(v: &RequestVector, splice: bool) -> Vec<String> {
    let engine = if splice { "splice" } else { "copy" };
    let bytes = corpus::vector_bytes(&v.file);
    let obs = run_request(&bytes, v.expect.len(), splice);
    let mut problems = invariant_violations(&obs, v.max_forwarded);
    let want_statuses: Vec<u16> = v
        .expect
        .iter()
        .map(|e| match e {
            Expect::Forward(_) => 200,
            Expect::Reject(s) => *s,
        })
        .collect();
    let got_statuses: Vec<u16> = obs.responses.iter().map(|r| r.status).collect();
    if got_statuses != want_statuses {
        problems.push(format!(
            "client got statuses {got_statuses:?}, want {want_statuses:?}"
        ));
    }
    if !obs.leftover.is_empty() {
        problems.push(format!(
            "client got bytes that are no response: {:?}",
            latin1(&obs.leftover[..obs.leftover.len().min(200)])
        ));
    }
    let want: Vec<_> = v
        .expect
        .iter()
        .filter_map(|e| match e {
            Expect::Forward(f) => Some(normalize(f)),
            Expect::Reject(_) => None,
        })
        .collect();
    let got: Vec<_> = obs.forwarded().iter().map(|s| s.normalized()).collect();
    if got != want {
        problems.push(format!("origin read {got:?}\n      want {want:?}"));
    }
    problems
        .into_iter()
        .map(|p| format!("{} [{engine}] ({}, {}): {p}", v.id, v.class, v.rfc))
        .collect()
}

fn check_requests(splice: bool) {
    let vectors = selected(corpus::manifest().requests, |v| &v.id);
    assert!(!vectors.is_empty(), "no request vectors selected");
    let failures = run_all(&vectors, |v| request_failures(v, splice));
    let failed: std::collections::BTreeSet<&str> = failures
        .iter()
        .filter_map(|f| f.split(' ').next())
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {} request vectors failed:\n  {}\nfailed ids: {}",
        failed.len(),
        vectors.len(),
        failures.join("\n  "),
        failed.into_iter().collect::<Vec<_>>().join(" ")
    );
}

#[test]
fn request_vectors_splice_engine() {
    check_requests(true);
}

#[test]
fn request_vectors_copy_engine() {
    check_requests(false);
}

/// Every way response vector `v` differs from its manifest entry.
fn response_failures(v: &ResponseVector) -> Vec<String> {
    let raw = Arc::new(corpus::vector_bytes(&v.file));
    let origin = RecordingOrigin::start(Answer::Raw(raw));
    let proxy = Harness::with_yaml(Some(origin.addr()), corpus::POLICY_YAML, Some(1 << 20));
    let head = v.method == "HEAD";
    let request = format!(
        "{} /allowed/response HTTP/1.1\r\nHost: o.test\r\n{}\r\n",
        v.method, v.request_headers
    );
    let got = exchange(proxy.addr, request.as_bytes(), 1, head);
    // A second request, on a new client connection: may it reuse the
    // upstream connection the vector's response came on?
    let second = "GET /allowed/second HTTP/1.1\r\nHost: o.test\r\n\r\n";
    let _ = exchange(proxy.addr, second.as_bytes(), 1, false);
    drop(proxy);
    let (seen, _, _) = origin.finish();
    let (responses, leftover) = parse_responses(&got, head);
    let want = &v.expect;
    let mut problems = Vec::new();
    match responses.as_slice() {
        [] if want.status == 502 && !leftover.is_empty() => {
            // A truncated forward ended by a close is an acceptable 502:
            // the client never gets a complete wrong response.
        }
        [r] => {
            if r.status != want.status {
                problems.push(format!("status {}, want {}", r.status, want.status));
            }
            if want.status != 502 && latin1(&r.body) != want.body {
                problems.push(format!("body {:?}, want {:?}", latin1(&r.body), want.body));
            }
            for (name, value) in &want.headers {
                if r.head.field(name) != Some(value.as_str()) {
                    problems.push(format!("{name}: {:?}, want {value:?}", r.head.field(name)));
                }
            }
            for name in &want.absent {
                if r.head.field(name).is_some() {
                    problems.push(format!("{name} present"));
                }
            }
        }
        more => problems.push(format!(
            "{} responses, want 1: {:?}",
            more.len(),
            more.iter().map(|r| r.status).collect::<Vec<_>>()
        )),
    }
    if !leftover.is_empty() && !responses.is_empty() {
        problems.push(format!(
            "client got bytes after the response: {:?}",
            latin1(&leftover[..leftover.len().min(200)])
        ));
    }
    let reused = seen
        .iter()
        .any(|s| seen.iter().filter(|t| t.conn == s.conn).count() > 1);
    if want.reused.is_some_and(|w| w != reused) {
        problems.push(format!(
            "upstream connection reused: {reused}, want {}",
            !reused
        ));
    }
    problems
        .into_iter()
        .map(|p| format!("{} ({}, {}): {p}", v.id, v.class, v.rfc))
        .collect()
}

#[test]
fn response_vectors() {
    let vectors = selected(corpus::manifest().responses, |v| &v.id);
    assert!(!vectors.is_empty(), "no response vectors selected");
    let failures = run_all(&vectors, response_failures);
    assert!(
        failures.is_empty(),
        "response vectors failed:\n  {}",
        failures.join("\n  ")
    );
}

/// The invariant checker itself must catch a smuggled request: a proxy-less
/// run (client straight to the recording origin) of a CL.TE vector lets
/// the origin read a request for /denied.
#[test]
fn invariant_catches_a_request_for_denied() {
    let origin = RecordingOrigin::start(Answer::Record);
    let bytes = b"POST /allowed HTTP/1.1\r\nHost: o.test\r\nContent-Length: 0\r\n\r\nGET /denied HTTP/1.1\r\nHost: o.test\r\n\r\n";
    let _ = exchange(origin.addr(), bytes, 2, false);
    let (seen, origin_errors, _) = origin.finish();
    let obs = corpus::Observation {
        responses: Vec::new(),
        leftover: Vec::new(),
        seen,
        origin_errors,
    };
    let v = invariant_violations(&obs, 1);
    assert!(
        v.iter().any(|p| p.contains("/denied")) && v.iter().any(|p| p.contains("2 complete")),
        "{v:?}"
    );
}
