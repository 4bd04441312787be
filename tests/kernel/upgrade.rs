//! Kernel tier: upgrades that refuse nothing. While a workload keeps
//! opening new connections and keeps slow downloads in flight, sockwarden
//! is upgraded 10 times (`run --take-over`): every connection succeeds,
//! every request completes, each old process hands over, drains and exits
//! 0, and enforcement never lapses (a denied connect stays denied).

use std::time::Duration;

use crate::common::origin::OriginConfig;
use crate::common::wait_for;
use crate::sw::{background_workload, finish_load, origin_at, scene, Sockwarden};

/// GET through the proxy to 10.77.1.0/24:80; nothing allows port 9001.
fn policy(cgroup: &str) -> String {
    format!(
        "policies:\n  - name: up\n    cgroup: {cgroup}\n    egress:\n\
         \x20     - {{ to: [\"10.77.1.0/24\"], ports: [80], http: [{{ method: GET }}] }}\n"
    )
}

/// Until `stop` exists (at most 300 s): a new connection for each GET of
/// /data/1000, a download of /data/4000000 read slowly (in flight across
/// the upgrades) in a thread, and a connect to the denied port 9001. Prints
/// the outcome counts and every failure as JSON.
const LOAD: &str = r#"
import errno, http.client, json, os, socket, sys, threading, time
stop, deadline = sys.argv[1], time.time() + 300
counts, errors, lock = {}, [], threading.Lock()
def count(k):
    with lock:
        counts[k] = counts.get(k, 0) + 1
def running():
    return time.time() < deadline and not os.path.exists(stop)
def slow():
    while running():
        try:
            c = http.client.HTTPConnection("10.77.1.10", 80, timeout=30)
            c.request("GET", "/data/4000000")
            r = c.getresponse()
            n = 0
            while True:
                b = r.read(65536)
                if not b:
                    break
                n += len(b)
                time.sleep(0.01)
            c.close()
            count(f"slow {r.status} {'whole' if n == 4000000 else 'short'}")
        except Exception as e:
            with lock:
                errors.append(f"slow: {e!r}")
t = threading.Thread(target=slow)
t.start()
while running():
    try:
        c = http.client.HTTPConnection("10.77.1.10", 80, timeout=30)
        c.request("GET", "/data/1000", headers={"Connection": "close"})
        r = c.getresponse()
        body = r.read()
        c.close()
        count(f"new {r.status} {len(body)}")
    except Exception as e:
        with lock:
            errors.append(f"new: {e!r}")
    s = socket.socket()
    s.settimeout(5)
    try:
        s.connect(("10.77.1.10", 9001))
        count("denied connect ok")
    except OSError as e:
        count("denied connect " + errno.errorcode.get(e.errno, str(e.errno)))
    finally:
        s.close()
    time.sleep(0.005)
t.join()
print(json.dumps({"counts": counts, "errors": errors}))
"#;

#[test]
fn ten_upgrades_under_load_refuse_no_connection() {
    let (tag, topo, _origin, cg) = scene("upgrade", "app", OriginConfig::default());
    let _denied = origin_at(&topo, "10.77.1.10:9001", OriginConfig::default());
    let body = policy(cg.rel());
    let mut current = Sockwarden::start(&topo.node, &tag, &body);
    let stop = current.dir.join("load.stop");
    let load = background_workload(&topo.node, &cg, LOAD, &stop);
    std::thread::sleep(Duration::from_millis(500));
    let mut old = Vec::new();
    let mut windows = Vec::new();
    const UPGRADES: usize = 10;
    for i in 1..=UPGRADES {
        let next = Sockwarden::spawn_taking_over(&topo.node, &tag, &format!("{tag}-{i}"), &body);
        next.wait_ready();
        let status = current.wait_exit(Duration::from_secs(20));
        assert!(
            status.success(),
            "upgrade {i}: the old one's exit: {status}\n{}",
            current.stderr()
        );
        assert!(
            current
                .stderr()
                .contains("handed over: the new sockwarden enforces and accepts"),
            "{}",
            current.stderr()
        );
        assert!(
            next.stderr().contains("handed over its listening sockets"),
            "{}",
            next.stderr()
        );
        let window = |log: &String| -> Option<u64> {
            log.lines().find_map(|l| {
                l.split("window_ms=")
                    .nth(1)?
                    .split_whitespace()
                    .next()?
                    .parse()
                    .ok()
            })
        };
        let log = wait_for(
            Duration::from_secs(5),
            || next.stderr(),
            |l| window(l).is_some(),
        );
        windows.push(window(&log).expect("the window is logged"));
        current.handed_over();
        old.push(std::mem::replace(&mut current, next));
        std::thread::sleep(Duration::from_millis(300));
    }
    let counts = &finish_load(load, &stop);
    eprintln!("load during the upgrades: {counts:?}; accept windows (ms): {windows:?}");
    let mut keys: Vec<&String> = counts.keys().collect();
    keys.sort();
    assert_eq!(
        keys,
        ["denied connect EPERM", "new 200 1000", "slow 200 whole"],
        "every request whole, every denied connect denied: {counts:?}"
    );
    assert!(
        counts["new 200 1000"].as_u64().unwrap_or(0) > 50,
        "{counts:?}"
    );
    drop(old);
    let status = current.stop();
    assert!(status.success(), "{}", current.stderr());
}
