//! Kernel tier: live reload (SIGHUP and `sockwarden reload`). Under load,
//! 50 reloads alternating two policies: every connect and every request gets
//! the verdict of exactly one of them, no connection is dropped, no request
//! fails. An invalid or refused configuration leaves the one in force
//! whole (its hash unchanged); a request in flight finishes under the
//! policy that accepted it, the next one on its connection is judged anew.

use std::process::Output;
use std::time::Duration;

use crate::common::origin::OriginConfig;
use crate::common::wait_for;
use crate::support::command_in;
use crate::sw::{
    background_workload, finish_load, origin_at, origin_get, scene, tcp_connect, Sockwarden,
};

/// Policy `flip`: GET of /data/<flavour>… through the proxy, L4 to port
/// 9000 + flavour - 1. Nothing allows /data/3… or port 9002.
fn policy(cgroup: &str, flavour: u8) -> String {
    format!(
        "policies:\n  - name: flip\n    cgroup: {cgroup}\n    egress:\n\
         \x20     - {{ to: [\"10.77.1.0/24\"], ports: [80], http: [{{ method: GET, path: \"/data/{flavour}.*\" }}] }}\n\
         \x20     - {{ to: [\"10.77.1.10/32\"], ports: [{}] }}\n",
        9000 + u16::from(flavour) - 1
    )
}

fn out(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// `/config_dump`'s (generation, config_hash).
fn dumped(sw: &Sockwarden) -> (u64, String) {
    let (status, body) = sw.admin_get("/config_dump").expect("config_dump");
    assert_eq!(status, 200);
    let v: serde_json::Value = serde_json::from_str(&body).expect("config_dump JSON");
    (
        v["generation"].as_u64().expect("generation"),
        v["config_hash"].as_str().expect("config_hash").to_string(),
    )
}

/// Load from the workload until `stop` exists (at most 300 s): one HTTP
/// connection kept alive and one new connection per round, each asking for
/// /data/1, /data/2, /data/3; and connects to ports 9000, 9001, 9002. Prints
/// the outcome counts and every failure as JSON.
const LOAD: &str = r#"
import errno, http.client, json, os, socket, sys, time
stop, deadline = sys.argv[1], time.time() + 300
counts, errors = {}, []
def count(k):
    counts[k] = counts.get(k, 0) + 1
kept = http.client.HTTPConnection("10.77.1.10", 80, timeout=10)
kept.connect()
kept_sock = kept.sock
while time.time() < deadline and not os.path.exists(stop):
    for path in ("/data/1", "/data/2", "/data/3"):
        try:
            kept.request("GET", path)
            r = kept.getresponse()
            r.read()
            count(f"kept {path} {r.status}")
            if kept.sock is not kept_sock:
                errors.append(f"kept-alive connection replaced at {path}")
                kept_sock = kept.sock
        except Exception as e:
            errors.append(f"kept {path}: {e!r}")
            kept = http.client.HTTPConnection("10.77.1.10", 80, timeout=10)
            kept.connect()
            kept_sock = kept.sock
        try:
            c = http.client.HTTPConnection("10.77.1.10", 80, timeout=10)
            c.request("GET", path, headers={"Connection": "close"})
            r = c.getresponse()
            r.read()
            c.close()
            count(f"new {path} {r.status}")
        except Exception as e:
            errors.append(f"new {path}: {e!r}")
    for port in (9000, 9001, 9002):
        s = socket.socket()
        s.settimeout(5)
        try:
            s.connect(("10.77.1.10", port))
            count(f"tcp {port} ok")
        except OSError as e:
            count(f"tcp {port} " + errno.errorcode.get(e.errno, str(e.errno)))
        finally:
            s.close()
print(json.dumps({"counts": counts, "errors": errors}))
"#;

#[test]
fn fifty_reloads_under_load_judge_everything_by_one_policy_or_the_other() {
    let (tag, topo, _origin, cg) = scene("reload-flip", "app", OriginConfig::default());
    let _l4 = [9000, 9001, 9002]
        .map(|p| origin_at(&topo, &format!("10.77.1.10:{p}"), OriginConfig::default()));
    let sw = Sockwarden::start(&topo.node, &tag, &policy(cg.rel(), 1));
    let stop = sw.dir.join("load.stop");
    let load = background_workload(&topo.node, &cg, LOAD, &stop);
    std::thread::sleep(Duration::from_millis(300));
    const RELOADS: u64 = 50;
    for i in 0..RELOADS {
        let flavour = if i % 2 == 0 { 2 } else { 1 };
        sw.rewrite(&tag, &policy(cg.rel(), flavour));
        let o = sw.reload();
        assert!(o.status.success(), "reload {i}: {}", out(&o));
        assert!(
            out(&o).starts_with(&format!("reloaded: generation {}, sha256:", i + 2)),
            "reload {i}: {}",
            out(&o)
        );
        std::thread::sleep(Duration::from_millis(40));
    }
    let counts = &finish_load(load, &stop);
    let n = |k: &str| counts.get(k).and_then(|v| v.as_u64()).unwrap_or(0);
    for key in counts.keys() {
        let allowed = [
            "1 200",
            "1 403",
            "2 200",
            "2 403",
            "3 403",
            "9000 ok",
            "9000 EPERM",
            "9001 ok",
            "9001 EPERM",
            "9002 EPERM",
        ];
        let tail = key
            .split_once(' ')
            .map_or("", |(_, t)| t)
            .trim_start_matches("/data/");
        assert!(
            allowed.contains(&tail),
            "an outcome neither policy gives: {key} in {counts:?}"
        );
    }
    // Both policies were seen at work, on both kinds of connection.
    for side in ["kept", "new"] {
        for flavour in ["1", "2"] {
            for status in ["200", "403"] {
                let k = format!("{side} /data/{flavour} {status}");
                assert!(n(&k) > 0, "{k} never seen: {counts:?}");
            }
        }
    }
    for port in ["9000", "9001"] {
        assert!(
            n(&format!("tcp {port} ok")) > 0 && n(&format!("tcp {port} EPERM")) > 0,
            "{counts:?}"
        );
    }
    assert_eq!(
        sw.metric("sockwarden_config_reloads_total{result=\"ok\"}"),
        RELOADS as f64
    );
    assert_eq!(dumped(&sw).0, RELOADS + 1);
}

#[test]
fn a_bad_configuration_leaves_the_one_in_force_and_in_flight_requests_finish() {
    let (tag, topo, _origin, cg) = scene("reload-bad", "app", OriginConfig::default());
    let mut sw = Sockwarden::start(&topo.node, &tag, &policy(cg.rel(), 1));
    let get = |path: &str| origin_get(&topo.node, &cg, path);
    assert_eq!(get("/data/1"), "200");
    let (generation, hash) = dumped(&sw);
    assert_eq!(generation, 1);

    // Invalid: the error names file, line and column; nothing changes.
    let broken = policy(cg.rel(), 2).replace("ports: [80]", "ports: [eighty]");
    sw.rewrite(&tag, &broken);
    let o = sw.reload();
    assert_eq!(o.status.code(), Some(1), "{}", out(&o));
    let text = out(&o);
    assert!(
        text.starts_with("reload invalid: ")
            && text.contains("sockwarden.yaml:")
            && text.contains("the configuration in force is unchanged"),
        "{text}"
    );
    assert_eq!(dumped(&sw), (1, hash.clone()));
    assert_eq!(get("/data/1"), "200", "the old policy, whole");
    assert_eq!(get("/data/2"), "403");

    // Rejected: what only a restart can change.
    let moved = format!("  client_idle_timeout: 30s\n{}", policy(cg.rel(), 2));
    sw.rewrite(&tag, &moved);
    let o = sw.reload();
    assert_eq!(o.status.code(), Some(1), "{}", out(&o));
    assert!(
        out(&o).starts_with("reload rejected: proxy cannot change without a restart"),
        "{}",
        out(&o)
    );
    assert_eq!(dumped(&sw), (1, hash.clone()));

    // A slow download that policy 1 allows is in flight when policy 2
    // (which denies it) is put in force: it finishes whole.
    let (ns, cgroup) = (topo.node.path(), cg.path().to_path_buf());
    let download = std::thread::spawn(move || {
        command_in(Some(&ns), Some(&cgroup), "curl")
            .args([
                "-s",
                "-o",
                "/dev/null",
                "--max-time",
                "60",
                "--limit-rate",
                "2M",
            ])
            .args([
                "-w",
                "%{http_code} %{size_download}",
                "http://10.77.1.10/data/10000000",
            ])
            .output()
            .expect("curl")
    });
    std::thread::sleep(Duration::from_millis(1500));
    sw.rewrite(&tag, &policy(cg.rel(), 2));
    let o = sw.reload();
    assert!(o.status.success(), "{}", out(&o));
    let finished = download.join().expect("download thread");
    assert_eq!(
        String::from_utf8_lossy(&finished.stdout),
        "200 10000000",
        "the request in flight finished under the policy that accepted it"
    );
    assert_eq!(
        get("/data/1"),
        "403",
        "the next request is judged by the new policy"
    );
    assert_eq!(get("/data/2"), "200");
    let (generation, new_hash) = dumped(&sw);
    assert_eq!(generation, 2);
    assert_ne!(new_hash, hash);
    assert!(
        tcp_connect(&topo.node, Some(&cg), "10.77.1.10", 9000).contains("Operation not permitted")
    );

    // SIGHUP does the same (what systemctl reload sends).
    sw.rewrite(&tag, &policy(cg.rel(), 1));
    let pid = nix::unistd::Pid::from_raw(sw.pid() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGHUP).expect("SIGHUP");
    let generation = wait_for(Duration::from_secs(10), || dumped(&sw).0, |g| *g == 3);
    assert_eq!(generation, 3, "{}", sw.stderr());
    assert_eq!(get("/data/1"), "200");
    assert!(
        sw.stderr()
            .contains("configuration reloaded trigger=\"SIGHUP\""),
        "{}",
        sw.stderr()
    );
    assert_eq!(
        dumped(&sw).1,
        hash,
        "the first configuration again, the same hash"
    );
    sw.assert_metrics(&[
        ("sockwarden_config_reloads_total{result=\"ok\"}", 2.0),
        ("sockwarden_config_reloads_total{result=\"invalid\"}", 1.0),
        ("sockwarden_config_reloads_total{result=\"rejected\"}", 1.0),
        ("sockwarden_config_reloads_total{result=\"failed\"}", 0.0),
    ]);
    let status = sw.stop();
    assert!(status.success(), "{}", sw.stderr());
}
