//! Kernel tier: `mode: audit`. What enforce mode would refuse at connect()
//! or deny at layer 7 is let through, logged with what would have denied it
//! and counted in `sockwarden_would_deny_total{policy,stage}`; a reload
//! switches the policy to enforce, and the same calls are refused.

use crate::common::origin::OriginConfig;
use crate::sw::{origin_at, origin_get, scene, tcp_connect, Sockwarden};

/// GET of /data/1… through the proxy, L4 to port 9000; nothing allows
/// /data/2… or port 9001.
fn policy(cgroup: &str, mode: &str) -> String {
    format!(
        "policies:\n  - name: watch\n    cgroup: {cgroup}\n    mode: {mode}\n    egress:\n\
         \x20     - {{ to: [\"10.77.1.0/24\"], ports: [80], http: [{{ method: GET, path: \"/data/1.*\" }}] }}\n\
         \x20     - {{ to: [\"10.77.1.10/32\"], ports: [9000] }}\n"
    )
}

#[test]
fn audit_lets_through_reports_and_counts_then_a_reload_enforces() {
    let (tag, topo, origin, cg) = scene("audit", "app", OriginConfig::default());
    // Listening where no rule allows: a connect let through reaches it.
    let _denied = origin_at(&topo, "10.77.1.10:9001", OriginConfig::default());
    let sw = Sockwarden::start(&topo.node, &tag, &policy(cg.rel(), "audit"));
    let get = |path: &str| origin_get(&topo.node, &cg, path);

    // Layer 7: the request no http rule matches reaches the origin.
    assert_eq!(get("/data/1"), "200");
    assert_eq!(get("/data/22"), "200", "{}", sw.stderr());
    assert_eq!(origin.requests(), 2);
    let log = crate::common::wait_for(
        std::time::Duration::from_secs(5),
        || sw.access_log(),
        |l| l.len() >= 2,
    );
    let line = |path: &str| {
        log.iter()
            .find(|l| l["path"] == path)
            .unwrap_or_else(|| panic!("no line for {path}: {log:?}"))
            .clone()
    };
    assert_eq!(line("/data/1")["flags"], serde_json::json!([]));
    assert!(line("/data/1").get("would_deny").is_none());
    let audited = line("/data/22");
    assert_eq!(audited["verdict"], "allowed");
    assert_eq!(audited["flags"], serde_json::json!(["AUD"]));
    assert_eq!(audited["would_deny"], "no http rule matches this request");

    // connect(): the one no rule allows goes through, and is reported.
    assert_eq!(tcp_connect(&topo.node, Some(&cg), "10.77.1.10", 9001), "ok");
    let reported = crate::common::wait_for(
        std::time::Duration::from_secs(5),
        || sw.event_log("connect_would_deny"),
        |l| !l.is_empty(),
    );
    assert_eq!(reported.len(), 1, "{reported:?}");
    assert_eq!(reported[0]["port"], 9001);
    assert_eq!(reported[0]["policy"], "watch");
    assert_eq!(reported[0]["protocol"], "tcp");
    assert!(sw.event_log("connect_denied").is_empty());
    sw.assert_metrics(&[
        (
            "sockwarden_would_deny_total{policy=\"watch\",stage=\"connect\"}",
            1.0,
        ),
        (
            "sockwarden_would_deny_total{policy=\"watch\",stage=\"http\"}",
            1.0,
        ),
        ("sockwarden_connect_denied_total{policy=\"watch\"}", 0.0),
    ]);

    // A reload to enforce: the same calls are refused.
    sw.rewrite(&tag, &policy(cg.rel(), "enforce"));
    let o = sw.reload();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stdout));
    assert_eq!(get("/data/22"), "403");
    assert!(
        tcp_connect(&topo.node, Some(&cg), "10.77.1.10", 9001).contains("Operation not permitted")
    );
    assert_eq!(get("/data/1"), "200");
    sw.assert_metrics(&[
        (
            "sockwarden_would_deny_total{policy=\"watch\",stage=\"connect\"}",
            1.0,
        ),
        (
            "sockwarden_would_deny_total{policy=\"watch\",stage=\"http\"}",
            1.0,
        ),
        ("sockwarden_connect_denied_total{policy=\"watch\"}", 1.0),
    ]);
}
