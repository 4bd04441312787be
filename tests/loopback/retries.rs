//! Retries on loopback: the idle-close race, connect failures retried, and
//! the retry budget that keeps a down origin from being hammered. The
//! kernel tier has the same behaviours through the real binary
//! (kernel/incident.rs); here the proxy runs in-process, so the access log
//! of each test is its own and the exact attempts of every request are
//! known. The metrics recorder is global to this process (tests run at
//! once), so metric deltas are checked as lower bounds only.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use metrics_exporter_prometheus::PrometheusHandle;

use crate::common::metric_value;
use crate::common::origin::{pattern, OriginConfig};
use crate::harness::{assert_flags, closed_port, flags, origin_and_proxy, Harness};

/// The process's metrics, installed once.
fn metrics() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| sockwarden::metrics::install().expect("install the metrics recorder"))
}

/// The value of one series in the rendered metrics (0 when absent).
fn metric(series: &str) -> f64 {
    metric_value(&metrics().render(), series)
}

/// The attempts the access-log line records.
fn attempts(line: &serde_json::Value) -> u64 {
    line["upstream_attempts"]
        .as_u64()
        .unwrap_or_else(|| panic!("no upstream_attempts in {line}"))
}

/// The origin closes a connection that was idle 200 ms instead of
/// answering: a request on a pooled upstream idle longer than that is lost
/// on the wire, and the proxy retries it once on a fresh connection. Each
/// request comes on a new client connection, after a pause of 100 ms (no
/// race) or 300 ms (a race every time).
#[test]
fn idle_race_costs_the_client_nothing() {
    const REQUESTS: usize = 20;
    let series = r#"sockwarden_upstream_retries_total{reason="idle_race"}"#;
    let before = metric(series);
    let (origin, proxy) = origin_and_proxy(OriginConfig {
        idle_timeout: Some(Duration::from_millis(200)),
        ..OriginConfig::default()
    });
    let mut long_pauses = 0;
    for i in 0..REQUESTS {
        if i > 0 {
            let long = i % 2 == 0;
            long_pauses += usize::from(long);
            std::thread::sleep(Duration::from_millis(if long { 300 } else { 100 }));
        }
        let resp = proxy.connect().get("/data/8");
        assert_eq!(resp.status, 200, "request {i}: {resp}");
        assert_eq!(resp.body, pattern(8), "request {i}");
    }
    assert_eq!(origin.requests(), REQUESTS as u64, "each answered once");
    let log = proxy.wait_log_lines(REQUESTS);
    assert_eq!(log.len(), REQUESTS, "{log:?}");
    let races = log.iter().filter(|l| attempts(l) == 2).count();
    for line in &log {
        assert!(attempts(line) <= 2, "one free retry at most: {line}");
        assert_eq!(line["status"], 200, "{line}");
        assert_flags(line, &[]);
    }
    // Every long pause lost its request once; a short one may too on a
    // loaded machine.
    assert!(
        races >= long_pauses,
        "{races} idle races for {long_pauses} long pauses: {log:?}"
    );
    assert_eq!(origin.connections(), 1 + races as u64, "{log:?}");
    assert!(
        metric(series) - before >= races as f64,
        "{series} grew by {}, the log shows {races} races",
        metric(series) - before
    );
}

/// Nothing listens at the destination: every connect is refused. With 3
/// retries on connect failures and 8 clients at once, the budget (at most
/// max(3, 20% of active requests) retries at a time) refuses most retries:
/// far fewer than (1 + 3) × the requests reach the network.
#[test]
fn a_down_origin_stays_within_the_retry_budget() {
    const CLIENTS: usize = 8;
    const PER_CLIENT: usize = 25;
    let exhausted_series = "sockwarden_upstream_retry_budget_exhausted_total";
    let exhausted_before = metric(exhausted_series);
    let proxy = Harness::with_config(
        Some(closed_port()),
        "{ retries: { attempts: 3, on: [connect-failure], backoff: 50ms } }",
        "",
    );
    let started = Instant::now();
    let errors: Vec<String> = std::thread::scope(|s| {
        let clients: Vec<_> = (0..CLIENTS)
            .map(|_| {
                s.spawn(|| {
                    let mut c = proxy.connect();
                    (0..PER_CLIENT)
                        .map(|_| {
                            let resp = c.get("/data/8");
                            assert_eq!(resp.status, 503, "{resp}");
                            let err = resp.head.field("sockwarden-error").unwrap_or_default();
                            err.to_string()
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        clients
            .into_iter()
            .flat_map(|c| c.join().expect("client thread"))
            .collect()
    });
    let took = started.elapsed();
    let n = CLIENTS * PER_CLIENT;
    for e in &errors {
        assert!(e.contains("ECONNREFUSED"), "{e}");
    }
    // A retried request's 503 names every attempt.
    assert!(
        errors
            .iter()
            .any(|e| e
                .contains("attempts: connect failed: ECONNREFUSED; connect failed: ECONNREFUSED")),
        "{errors:?}"
    );
    let log = proxy.wait_log_lines(n);
    assert_eq!(log.len(), n, "{log:?}");
    let total: u64 = log.iter().map(attempts).sum();
    let retries = total - n as u64;
    // Every attempt fails, so a request that stopped short of 4 attempts
    // was refused a retry by the budget.
    let cut = log.iter().filter(|l| attempts(l) < 4).count();
    eprintln!(
        "down origin: {n} requests, {total} connect attempts, {cut} cut by the budget, in {took:?}"
    );
    assert!(total < 2 * n as u64, "{total} attempts for {n} requests");
    assert!(cut > 0, "the budget refused retries");
    for line in &log {
        assert_eq!(line["status"], 503, "{line}");
        // UF on every request; URX on exactly the retried ones.
        let mut got = flags(line);
        got.sort_unstable();
        let want: &[&str] = if attempts(line) > 1 {
            &["UF", "URX"]
        } else {
            &["UF"]
        };
        assert_eq!(got, want, "{line}");
    }
    // At most 3 retries at a time, each holding its slot for at least half
    // the 50 ms base backoff.
    let bound = 3.0 * took.as_secs_f64() / 0.025 + 3.0;
    assert!(
        retries as f64 <= bound,
        "{retries} retries in {took:?} exceed the budget's {bound}"
    );
    assert!(
        metric(exhausted_series) - exhausted_before >= cut as f64,
        "{exhausted_series} grew by less than the {cut} requests the budget cut"
    );
}
