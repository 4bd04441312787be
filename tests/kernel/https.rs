//! Kernel tier: HTTPS through the real binary. A TLS origin in the origin
//! namespace (its certificate made in the test), curl and Python in the
//! pod's cgroup, unchanged apart from trusting a CA:
//! - pass-through by SNI: a 64 MiB download intact and spliced (no byte
//!   through userspace), names refused with their alert, an aborted
//!   transfer leaving nothing behind;
//! - interception with the node CA (`sockwarden ca init`): http rules on
//!   HTTPS, by name and by IP, with curl and Python's urllib.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::cgroup::TestCgroup;
use crate::common::origin::{pattern, Origin, OriginConfig};
use crate::common::tls::{TestCa, Validity};
use crate::common::wait_for;
use crate::netns::{listener_in, Topology};
use crate::sw::{assert_nothing_left, bare_scene, stdout, workload, Sockwarden, BIN};

const BIG: usize = 64 << 20;

/// A directory of the test's certificates, removed on drop.
struct Pki {
    dir: PathBuf,
}

impl Pki {
    fn new(tag: &str) -> Pki {
        let dir = PathBuf::from(format!("/tmp/sw-test-{tag}-pki"));
        std::fs::create_dir_all(&dir).expect("pki dir");
        Pki { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The HTTPS origin at 10.77.1.10:443, for origin.test and its IP; its
/// CA's PEM at `pki/origin-ca.pem`.
fn tls_origin(topo: &Topology, pki: &Pki) -> Origin {
    let ca = TestCa::new("origin CA");
    ca.write_pem(&pki.path("origin-ca.pem"));
    Origin::serve_tls(
        listener_in(&topo.origin, "10.77.1.10:443"),
        OriginConfig::default(),
        ca.server_config(&["origin.test", "10.77.1.10"], Validity::Good),
    )
}

/// curl in the pod's cgroup against origin.test (resolved to the
/// origin), trusting `ca`; `args` before the URL.
fn curl_args(ca: &Path, url: &str, extra: &[&str]) -> Vec<String> {
    // 120 s: a 64 MiB body encrypted and decrypted under emulation (the
    // kernel matrix runs under TCG).
    let mut args: Vec<String> = [
        "-sS",
        "--max-time",
        "120",
        "--resolve",
        "origin.test:443:10.77.1.10",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.push("--cacert".into());
    args.push(ca.display().to_string());
    args.extend(extra.iter().map(|s| s.to_string()));
    args.push(url.into());
    args
}

/// curl in the pod's cgroup (see [`curl_args`]).
fn curl(
    topo: &Topology,
    cg: &TestCgroup,
    ca: &Path,
    url: &str,
    extra: &[&str],
) -> std::process::Output {
    let args = curl_args(ca, url, extra);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    workload(&topo.pod, cg, "curl", &args)
}

fn pass_through_policy(cgroup: &str) -> String {
    format!(
        "policies:\n  - name: https\n    cgroup: {cgroup}\n    egress:\n\
         \x20     - to: [\"10.77.1.0/24\"]\n        ports: [443]\n\
         \x20       tls: {{ server_names: [origin.test] }}\n"
    )
}

fn hex(d: impl AsRef<[u8]>) -> String {
    d.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn a_64_mib_download_passes_through_spliced_and_intact() {
    let (tag, topo, cg) = bare_scene("tlspass", "pod");
    let pki = Pki::new(&tag);
    let _origin = tls_origin(&topo, &pki);
    let sw = Sockwarden::start(&topo.node, &tag, &pass_through_policy(cg.rel()));
    let ca = pki.path("origin-ca.pem");
    let url = format!("https://origin.test/data/{BIG}");
    let cmd = format!("curl {} | sha256sum", curl_args(&ca, &url, &[]).join(" "));
    let o = workload(&topo.pod, &cg, "bash", &["-c", &cmd]);
    let want = hex(Sha256::digest(pattern(BIG)));
    assert!(
        stdout(&o).starts_with(&want),
        "{} vs {want}: {}",
        stdout(&o),
        String::from_utf8_lossy(&o.stderr)
    );
    let series = |dir: &str, engine: &str| {
        sw.metric(&format!(
            r#"sockwarden_forwarded_bytes_total{{direction="{dir}",engine="{engine}"}}"#
        ))
    };
    let (spliced, copied) = (series("downstream", "splice"), series("downstream", "copy"));
    let up_copied = series("upstream", "copy");
    eprintln!(
        "pass-through 64 MiB: {spliced} bytes spliced down, {copied} copied, {up_copied} copied up"
    );
    // TLS records carry the 64 MiB and their own overhead.
    assert!(spliced >= BIG as f64, "only {spliced} bytes kernel-side");
    assert!(
        copied + up_copied <= 0.01 * spliced,
        "{copied} + {up_copied} bytes went through userspace"
    );
    let line = wait_for(
        std::time::Duration::from_secs(5),
        || sw.access_log(),
        |l| !l.is_empty(),
    )
    .remove(0);
    assert_eq!(
        (&line["tls"], &line["sni"]),
        (&"passthrough".into(), &"origin.test".into()),
        "{line}"
    );
}

#[test]
fn names_not_allowed_are_refused_at_the_client_hello() {
    let (tag, topo, cg) = bare_scene("tlsdeny", "pod");
    let pki = Pki::new(&tag);
    let origin = tls_origin(&topo, &pki);
    let sw = Sockwarden::start(&topo.node, &tag, &pass_through_policy(cg.rel()));
    let ca = pki.path("origin-ca.pem");
    // Another name (the origin's certificate would not fit it anyway: the
    // client is refused before that, by the proxy's alert).
    let other = ["--resolve", "other.test:443:10.77.1.10"];
    let o = curl(&topo, &cg, &ca, "https://other.test/", &other);
    let err = String::from_utf8_lossy(&o.stderr).to_lowercase();
    assert!(
        !o.status.success() && err.contains("access denied"),
        "{err}"
    );
    // No SNI (an IP literal): unrecognized_name.
    let o = curl(&topo, &cg, &ca, "https://10.77.1.10/", &[]);
    let err = String::from_utf8_lossy(&o.stderr).to_lowercase();
    assert!(
        !o.status.success() && err.contains("unrecognized name"),
        "{err}"
    );
    assert_eq!(
        origin.connections(),
        0,
        "nothing refused reached the origin"
    );
    assert_eq!(
        sw.metric(r#"sockwarden_tls_denied_total{policy="https",reason="name_not_allowed"}"#),
        1.0
    );
    assert_eq!(
        sw.metric(r#"sockwarden_tls_denied_total{policy="https",reason="no_sni"}"#),
        1.0
    );
}

/// A client that stops reading mid-download and is killed: the
/// connection goes, with nothing left behind.
#[test]
fn an_aborted_pass_through_leaves_nothing_behind() {
    let (tag, topo, cg) = bare_scene("tlsabort", "pod");
    let pki = Pki::new(&tag);
    let _origin = tls_origin(&topo, &pki);
    let sw = Sockwarden::start(&topo.node, &tag, &pass_through_policy(cg.rel()));
    let ca = pki.path("origin-ca.pem");
    let url = format!("https://origin.test/data/{}", 256 << 20);
    // The client gives up half a second into a slow download (the last
    // --max-time is the one curl takes).
    let slow = ["--limit-rate", "1M", "-o", "/dev/null", "--max-time", "0.5"];
    let o = curl(&topo, &cg, &ca, &url, &slow);
    assert!(!o.status.success(), "curl should have timed out");
    assert_nothing_left(&topo.node, &sw);
    let log = sw.access_log();
    assert_eq!(log.len(), 1, "{log:?}");
    assert_eq!(log[0]["tls"], "passthrough", "{log:?}");
}

fn intercept_policy(cgroup: &str, pki: &Pki) -> String {
    format!(
        "tls:\n  ca: {{ cert: {:?}, key: {:?} }}\n  upstream_roots: {:?}\n\
         policies:\n  - name: https\n    cgroup: {cgroup}\n    egress:\n\
         \x20     - to: [\"10.77.1.0/24\"]\n        ports: [443]\n\
         \x20       tls: {{ intercept: true }}\n\
         \x20       http:\n          - {{ method: GET, path: \"/data/.*\" }}\n",
        pki.path("node-ca.crt"),
        pki.path("node-ca.key"),
        pki.path("origin-ca.pem"),
    )
}

/// `sockwarden ca init` writes the node CA the configuration names.
fn ca_init(pki: &Pki) {
    let o = std::process::Command::new(BIN)
        .args(["ca", "init", "--cert"])
        .arg(pki.path("node-ca.crt"))
        .arg("--key")
        .arg(pki.path("node-ca.key"))
        .output()
        .expect("ca init");
    assert!(
        o.status.success(),
        "ca init: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

#[test]
fn interception_applies_http_rules_to_https_for_curl_and_python() {
    let (tag, topo, cg) = bare_scene("tlsmitm", "pod");
    let pki = Pki::new(&tag);
    let origin = tls_origin(&topo, &pki);
    ca_init(&pki);
    let sw = Sockwarden::start(&topo.node, &tag, &intercept_policy(cg.rel(), &pki));
    let node_ca = pki.path("node-ca.crt");
    let code = |url: &str| {
        let status = ["-o", "/dev/null", "-w", "%{http_code}"];
        stdout(&curl(&topo, &cg, &node_ca, url, &status))
    };
    // curl trusts only the node CA: what it verified is the proxy's leaf.
    assert_eq!(code("https://origin.test/data/1000"), "200", "curl by name");
    assert_eq!(
        code("https://10.77.1.10/data/1000"),
        "200",
        "curl by IP (no SNI)"
    );
    assert_eq!(
        code("https://origin.test/secret"),
        "403",
        "denied inside TLS"
    );
    // Python's urllib, told of the CA by SSL_CERT_FILE; the name maps to
    // the origin's address in the script (the pod has no DNS).
    let script = "import socket, sys, urllib.request\n\
        real = socket.getaddrinfo\n\
        socket.getaddrinfo = lambda h, *a, **k: real('10.77.1.10' if h == 'origin.test' else h, *a, **k)\n\
        for url in sys.argv[1:]:\n\
        \x20   try:\n\
        \x20       r = urllib.request.urlopen(url, timeout=30)\n\
        \x20       print(r.status, len(r.read()))\n\
        \x20   except urllib.error.HTTPError as e:\n\
        \x20       print(e.code, 0)\n";
    let cmd = format!(
        "SSL_CERT_FILE={} python3 -c \"$0\" https://origin.test/data/5000 https://10.77.1.10/data/7000 https://origin.test/secret",
        node_ca.display()
    );
    let o = workload(&topo.pod, &cg, "bash", &["-c", &cmd, script]);
    assert_eq!(
        stdout(&o),
        "200 5000\n200 7000\n403 0\n",
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(origin.requests(), 4, "the allowed requests, and only those");
    assert_eq!(
        sw.metric(r#"sockwarden_tls_handshakes_total{side="downstream",result="ok"}"#),
        6.0
    );
    assert!(sw.metric("sockwarden_tls_leaf_certificates") >= 2.0);
}

/// The workload speaks plain HTTP to port 80; sockwarden speaks verified
/// TLS to the origin's 443, named by Host. An origin whose certificate
/// expired is a 502 naming it.
#[test]
fn origination_speaks_verified_tls_for_plain_http_workloads() {
    let (tag, topo, cg) = bare_scene("tlsorig", "pod");
    let pki = Pki::new(&tag);
    let origin = tls_origin(&topo, &pki);
    let ca = TestCa::new("origin CA of the expired");
    topo.origin
        .run(&["addr", "add", "10.77.1.11/24", "dev", "eth0"]);
    let _expired = Origin::serve_tls(
        listener_in(&topo.origin, "10.77.1.11:443"),
        OriginConfig::default(),
        ca.server_config(&["expired.test"], Validity::Expired),
    );
    let roots = pki.path("origin-ca.pem");
    let both = format!(
        "{}{}",
        std::fs::read_to_string(&roots).expect("roots"),
        ca.pem()
    );
    std::fs::write(&roots, both).expect("roots bundle");
    let policy = format!(
        "tls:\n  upstream_roots: {roots:?}\n\
         policies:\n  - name: https\n    cgroup: {}\n    egress:\n\
         \x20     - to: [\"10.77.1.0/24\"]\n        ports: [80]\n\
         \x20       upstream: {{ tls: true }}\n\
         \x20       http: [{{ method: GET }}]\n",
        cg.rel()
    );
    let sw = Sockwarden::start(&topo.node, &tag, &policy);
    let curl = |host: &str, ip: &str| {
        let resolve = format!("{host}:80:{ip}");
        let url = format!("http://{host}/data/1000");
        let args = [
            "-sS",
            "--max-time",
            "30",
            "--resolve",
            &resolve,
            "-D",
            "-",
            "-o",
            "/dev/null",
            &url,
        ];
        stdout(&workload(&topo.pod, &cg, "curl", &args))
    };
    let ok = curl("origin.test", "10.77.1.10");
    assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
    let expired = curl("expired.test", "10.77.1.11").to_lowercase();
    assert!(
        expired.starts_with("http/1.1 502")
            && expired.contains("sockwarden-error: upstream tls: certificate expired"),
        "{expired}"
    );
    assert_eq!(origin.requests(), 1);
    assert_eq!(
        sw.metric(r#"sockwarden_tls_handshakes_total{side="upstream",result="failed"}"#),
        1.0
    );
}
