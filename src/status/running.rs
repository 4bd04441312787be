//! What `sockwarden status` asks the running instance, through its admin
//! listener (`/metrics` and `/config_dump`): uptime, the configuration in
//! force, each policy's mode, cgroup state and counts, the upstream pool
//! and the connections in flight. The report is a pure function of the
//! two answers.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::SystemTime;

/// The running instance's answers.
#[derive(Debug, Clone)]
pub struct Running {
    /// `/metrics` (Prometheus text).
    pub metrics: String,
    /// `/config_dump`.
    pub config: serde_json::Value,
}

/// Asks the instance whose admin listener is `admin`.
pub fn fetch(admin: SocketAddr) -> Result<Running, String> {
    let get = |path: &str| match crate::reload::call(admin, "GET", path) {
        Ok((200, body)) => Ok(body),
        Ok((status, body)) => Err(format!("{path} answered {status}: {}", body.trim())),
        Err(e) => Err(e.to_string()),
    };
    let metrics = get("/metrics")?;
    let config = serde_json::from_str(&get("/config_dump")?)
        .map_err(|e| format!("/config_dump is not JSON: {e}"))?;
    Ok(Running { metrics, config })
}

/// The samples of metric `name` in Prometheus text: (labels, value).
pub fn series(text: &str, name: &str) -> Vec<(BTreeMap<String, String>, f64)> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let rest = l.strip_prefix(name)?;
            let (labels, value) = match rest.strip_prefix('{') {
                Some(r) => {
                    let (labels, value) = r.split_once('}')?;
                    (labels, value)
                }
                None if rest.starts_with(' ') => ("", rest),
                None => return None,
            };
            let labels = labels
                .split(',')
                .filter_map(|kv| {
                    let (k, v) = kv.split_once('=')?;
                    Some((k.trim().to_string(), v.trim().trim_matches('"').to_string()))
                })
                .collect();
            Some((labels, value.trim().parse().ok()?))
        })
        .collect()
}

/// The sum of metric `name` over the samples whose labels include `with`.
fn sum(text: &str, name: &str, with: &[(&str, &str)]) -> f64 {
    series(text, name)
        .into_iter()
        .filter(|(labels, _)| {
            with.iter()
                .all(|(k, v)| labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|(_, v)| v)
        .sum()
}

/// `3h 02m 05s`, `2m 05s`, `5s`.
fn uptime(secs: u64) -> String {
    let (h, m, s) = (secs / 3600, secs / 60 % 60, secs % 60);
    match (h, m) {
        (0, 0) => format!("{s}s"),
        (0, _) => format!("{m}m {s:02}s"),
        _ => format!("{h}h {m:02}m {s:02}s"),
    }
}

/// What `sockwarden status` prints of the running instance.
pub fn report(r: &Running, now: SystemTime) -> String {
    let m = r.metrics.as_str();
    let now = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    let started = sum(m, crate::metrics::START_TIME, &[]);
    let mut out = format!(
        "running: up {}, configuration generation {}, {}\n",
        uptime((now - started).max(0.0) as u64),
        r.config["generation"],
        r.config["config_hash"].as_str().unwrap_or("(no hash)")
    );
    let policies = r.config["policies"].as_array().cloned().unwrap_or_default();
    for p in &policies {
        let name = p["name"].as_str().unwrap_or("?");
        let of = |metric: &str, extra: &[(&str, &str)]| {
            let mut with = vec![("policy", name)];
            with.extend_from_slice(extra);
            sum(m, metric, &with) as u64
        };
        let present = of(crate::metrics::POLICY_CGROUP_PRESENT, &[]) > 0;
        let _ = writeln!(
            out,
            "  policy {name:?} on cgroup {} (mode {}): {}",
            p["cgroup"].as_str().unwrap_or("?"),
            p["mode"].as_str().unwrap_or("enforce"),
            if present {
                "cgroup present, enforced"
            } else {
                "cgroup missing: nothing enforced until it exists"
            }
        );
        let req = |v| of(crate::metrics::HTTP_REQUESTS, &[("verdict", v)]);
        let conn = |v| of(crate::metrics::CONNECT_DECISIONS, &[("verdict", v)]);
        let _ = writeln!(
            out,
            "    requests: {} allowed, {} denied, {} errors; connects: {} allowed, {} redirected, {} denied, {} let through by audit; redirected connections open: {} of {}",
            req("allowed"),
            req("denied"),
            req("error"),
            conn("allowed"),
            conn("redirected"),
            conn("denied"),
            of(crate::metrics::WOULD_DENY, &[("stage", "connect")]),
            of(crate::metrics::REDIRECTED_CONNECTIONS, &[]),
            of(crate::metrics::REDIRECTED_CONNECTIONS_LIMIT, &[]),
        );
    }
    let open =
        sum(m, crate::metrics::UPSTREAM_OPENED, &[]) - sum(m, crate::metrics::UPSTREAM_CLOSED, &[]);
    let _ = writeln!(
        out,
        "  upstream connections: {} open, {} idle in the pool; workload connections in flight: {}",
        open.max(0.0) as u64,
        sum(m, crate::metrics::UPSTREAM_IDLE, &[]) as u64,
        sum(m, crate::metrics::DOWNSTREAM_ACTIVE, &[]) as u64
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const METRICS: &str = "\
# HELP sockwarden_http_requests_total requests
# TYPE sockwarden_http_requests_total counter
sockwarden_http_requests_total{policy=\"a\",verdict=\"allowed\",status=\"200\"} 10
sockwarden_http_requests_total{policy=\"a\",verdict=\"allowed\",status=\"204\"} 2
sockwarden_http_requests_total{policy=\"a\",verdict=\"denied\",status=\"403\"} 3
sockwarden_http_requests_total{policy=\"b\",verdict=\"allowed\",status=\"200\"} 7
sockwarden_connect_decisions_total{policy=\"a\",verdict=\"redirected\"} 15
sockwarden_connect_decisions_total{policy=\"a\",verdict=\"denied\"} 1
sockwarden_would_deny_total{policy=\"b\",stage=\"connect\"} 4
sockwarden_redirected_connections{policy=\"a\"} 2
sockwarden_redirected_connections_limit{policy=\"a\"} 1000
sockwarden_policy_cgroup_present{policy=\"a\"} 1
sockwarden_policy_cgroup_present{policy=\"b\"} 0
sockwarden_upstream_connections_opened_total 9
sockwarden_upstream_connections_closed_total{reason=\"idle\"} 4
sockwarden_upstream_connections_closed_total{reason=\"error\"} 1
sockwarden_upstream_idle_connections 3
sockwarden_downstream_connections_active 2
sockwarden_start_time_seconds 1000
";

    #[test]
    fn series_are_read_by_name_and_labels() {
        let got = series(METRICS, "sockwarden_upstream_connections_closed_total");
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].0.get("reason").map(String::as_str), Some("idle"));
        assert_eq!(
            sum(
                METRICS,
                "sockwarden_http_requests_total",
                &[("policy", "a"), ("verdict", "allowed")]
            ),
            12.0
        );
        // A prefix of another name is not that name.
        assert_eq!(sum(METRICS, "sockwarden_redirected_connections", &[]), 2.0);
        assert_eq!(sum(METRICS, "sockwarden_nothing", &[]), 0.0);
    }

    #[test]
    fn the_report_names_each_policy_with_its_mode_state_and_counts() {
        let r = Running {
            metrics: METRICS.to_string(),
            config: serde_json::json!({
                "generation": 3, "config_hash": "sha256:abc",
                "policies": [
                    {"name": "a", "cgroup": "/apps/a", "mode": "enforce"},
                    {"name": "b", "cgroup": "/apps/b", "mode": "audit"},
                ],
            }),
        };
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1000 + 3725);
        assert_eq!(
            report(&r, now),
            "running: up 1h 02m 05s, configuration generation 3, sha256:abc\n\
             \x20 policy \"a\" on cgroup /apps/a (mode enforce): cgroup present, enforced\n\
             \x20   requests: 12 allowed, 3 denied, 0 errors; connects: 0 allowed, 15 redirected, 1 denied, 0 let through by audit; redirected connections open: 2 of 1000\n\
             \x20 policy \"b\" on cgroup /apps/b (mode audit): cgroup missing: nothing enforced until it exists\n\
             \x20   requests: 7 allowed, 0 denied, 0 errors; connects: 0 allowed, 0 redirected, 0 denied, 4 let through by audit; redirected connections open: 0 of 0\n\
             \x20 upstream connections: 4 open, 3 idle in the pool; workload connections in flight: 2\n"
        );
        assert_eq!(uptime(5), "5s");
        assert_eq!(uptime(125), "2m 05s");
    }
}
