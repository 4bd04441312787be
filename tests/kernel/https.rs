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
        "tls:\n  ca: {{ cert: {:?}, key: {:?} }}\n  upstream_roots: {:?}\n  ktls: true\n\
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
    // TLS 1.2 with the workload (kTLS takes 1.2 too where there is one).
    let tls12 = ["--tls-max", "1.2", "-o", "/dev/null", "-w", "%{http_code}"];
    let o = curl(
        &topo,
        &cg,
        &node_ca,
        "https://origin.test/data/70000",
        &tls12,
    );
    assert_eq!(
        stdout(&o),
        "200",
        "TLS 1.2: {}",
        String::from_utf8_lossy(&o.stderr)
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
    assert_eq!(origin.requests(), 5, "the allowed requests, and only those");
    assert_eq!(
        sw.metric(r#"sockwarden_tls_handshakes_total{side="downstream",result="ok"}"#),
        7.0
    );
    assert_eq!(
        sw.metric(
            r#"sockwarden_tls_handshake_duration_seconds_count{side="downstream",result="ok"}"#
        ),
        7.0,
        "each handshake timed"
    );
    let tls12_line =
        |log: &Vec<serde_json::Value>| log.iter().find(|l| l["tls_version"] == "TLSv1_2").cloned();
    let log = wait_for(
        std::time::Duration::from_secs(5),
        || sw.access_log(),
        |l| tls12_line(l).is_some(),
    );
    let line = tls12_line(&log).expect("a TLS 1.2 line");
    assert_eq!(line["ktls"], ktls_expected(), "{line}");
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
        "tls:\n  upstream_roots: {roots:?}\n  ktls: true\n\
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
    assert_eq!(
        sw.metric(
            r#"sockwarden_tls_handshake_duration_seconds_count{side="upstream",result="failed"}"#
        ),
        1.0
    );
}

/// Whether this kernel must take the TLS record layer. The VM matrix says
/// so (`SW_EXPECT_KTLS=1` from vmtests/guest.sh: Debian's kernels build the
/// `tls` module), and a guest without it fails here, loudly. Elsewhere the
/// kernel tells, once sockwarden has run (TCP_ULP "tls" loads the module
/// where there is one); this host's kernel has none, so here the copy path
/// is what is tested.
fn ktls_expected() -> bool {
    let ulps = std::fs::read_to_string("/proc/sys/net/ipv4/tcp_available_ulp").unwrap_or_default();
    let present = ulps.split_whitespace().any(|u| u == "tls");
    if std::env::var("SW_EXPECT_KTLS").as_deref() == Ok("1") {
        assert!(
            present,
            "SW_EXPECT_KTLS=1 but this kernel has no tls ULP (tcp_available_ulp: {ulps:?})"
        );
    }
    present
}

/// Intercepting on 443 and originating from 80, both to the TLS origin.
fn both_policy(cgroup: &str, pki: &Pki, ktls: bool) -> String {
    format!(
        "tls:\n  ca: {{ cert: {:?}, key: {:?} }}\n  upstream_roots: {:?}\n  ktls: {ktls}\n\
         policies:\n  - name: https\n    cgroup: {cgroup}\n    egress:\n\
         \x20     - to: [\"10.77.1.0/24\"]\n        ports: [443]\n\
         \x20       tls: {{ intercept: true }}\n\
         \x20       http: [{{ method: GET, path: \"/data/.*\" }}]\n\
         \x20     - to: [\"10.77.1.0/24\"]\n        ports: [80]\n\
         \x20       upstream: {{ tls: true }}\n\
         \x20       http: [{{ method: GET }}]\n",
        pki.path("node-ca.crt"),
        pki.path("node-ca.key"),
        pki.path("origin-ca.pem"),
    )
}

/// `sockwarden_ktls_connections_total` for one side, path and reason.
fn ktls_connections(sw: &Sockwarden, side: &str, path: &str, reason: &str) -> f64 {
    sw.metric(&format!(
        r#"sockwarden_ktls_connections_total{{side="{side}",path="{path}",reason="{reason}"}}"#
    ))
}

/// 64 MiB intercepted (TLS both sides) and 64 MiB originated (plain to the
/// workload, TLS to the origin), both intact. With kTLS, the bodies move
/// kernel-side (splice from the kTLS socket the kernel decrypts); without
/// it, through userspace, and the counters and the log say which.
#[test]
fn intercepted_and_originated_64_mib_bodies_take_the_kernel_path_where_there_is_ktls() {
    let (tag, topo, cg) = bare_scene("tlsktls", "pod");
    let pki = Pki::new(&tag);
    let _origin = tls_origin(&topo, &pki);
    ca_init(&pki);
    let sw = Sockwarden::start(&topo.node, &tag, &both_policy(cg.rel(), &pki, true));
    let want = hex(Sha256::digest(pattern(BIG)));
    let node_ca = pki.path("node-ca.crt");
    let intercepted = format!("https://origin.test/data/{BIG}");
    let plain = format!(
        "curl -sS --max-time 120 --resolve origin.test:80:10.77.1.10 http://origin.test/data/{BIG}"
    );
    for cmd in [
        format!("curl {}", curl_args(&node_ca, &intercepted, &[]).join(" ")),
        plain,
    ] {
        let o = workload(
            &topo.pod,
            &cg,
            "bash",
            &["-c", &format!("{cmd} | sha256sum")],
        );
        assert!(
            stdout(&o).starts_with(&want),
            "{cmd}: {} vs {want}: {}",
            stdout(&o),
            String::from_utf8_lossy(&o.stderr)
        );
    }
    let ktls = ktls_expected();
    let series = |engine: &str| {
        sw.metric(&format!(
            r#"sockwarden_forwarded_bytes_total{{direction="downstream",engine="{engine}"}}"#
        ))
    };
    let (spliced, copied) = (series("splice"), series("copy"));
    eprintln!("kTLS {ktls}: {spliced} bytes spliced down, {copied} copied");
    let (path, reason) = if ktls {
        ("ktls", "none")
    } else {
        ("copy", "kernel")
    };
    assert_eq!(ktls_connections(&sw, "downstream", path, reason), 1.0);
    assert!(ktls_connections(&sw, "upstream", path, reason) >= 1.0);
    // The origin's TLS 1.3 tickets came after the handshake: under kTLS the
    // kernel delivered them apart, and rustls kept them for resumption.
    let tickets = sw.metric(
        r#"sockwarden_ktls_records_total{side="upstream",record="session_ticket",result="ok"}"#,
    );
    assert_eq!(
        tickets >= 1.0,
        ktls,
        "{tickets} tickets taken from kTLS sockets"
    );
    let (kernel_side, userspace) = if ktls {
        (spliced, copied)
    } else {
        (copied, spliced)
    };
    // Body bytes that came in the same read as the response head (at most
    // one read buffer a transfer, as the emulated guest's timing allows)
    // are copied with it; the rest is on the path.
    assert!(
        kernel_side + userspace >= 2.0 * BIG as f64,
        "{kernel_side} bytes on the {path} path and {userspace} beside it: both bodies whole"
    );
    assert!(
        userspace <= 0.01 * kernel_side,
        "{userspace} bytes took the other path"
    );
    let log = wait_for(
        std::time::Duration::from_secs(5),
        || sw.access_log(),
        |l| l.len() == 2,
    );
    assert_eq!(
        (&log[0]["tls"], &log[0]["ktls"], &log[0]["upstream_ktls"]),
        (&"intercept".into(), &ktls.into(), &ktls.into()),
        "{log:?}"
    );
    assert_eq!(log[1]["upstream_ktls"], ktls, "{log:?}");
    assert!(log[1].get("tls").is_none(), "{log:?}");
}

/// `tls.ktls: false` (the default) keeps TLS in rustls on any kernel:
/// counted with its reason, and the log says so.
#[test]
fn with_ktls_off_tls_stays_in_userspace_counted() {
    let (tag, topo, cg) = bare_scene("tlsnoktls", "pod");
    let pki = Pki::new(&tag);
    let origin = tls_origin(&topo, &pki);
    ca_init(&pki);
    let sw = Sockwarden::start(&topo.node, &tag, &both_policy(cg.rel(), &pki, false));
    let node_ca = pki.path("node-ca.crt");
    let status = ["-o", "/dev/null", "-w", "%{http_code}"];
    let code = stdout(&curl(
        &topo,
        &cg,
        &node_ca,
        "https://origin.test/data/100000",
        &status,
    ));
    assert_eq!(code, "200");
    assert_eq!(origin.requests(), 1);
    assert_eq!(ktls_connections(&sw, "downstream", "copy", "disabled"), 1.0);
    assert_eq!(ktls_connections(&sw, "upstream", "copy", "disabled"), 1.0);
    assert_eq!(ktls_connections(&sw, "downstream", "ktls", "none"), 0.0);
    let log = wait_for(
        std::time::Duration::from_secs(5),
        || sw.access_log(),
        |l| !l.is_empty(),
    );
    assert_eq!(
        (&log[0]["ktls"], &log[0]["upstream_ktls"]),
        (&false.into(), &false.into())
    );
}

/// The origin at 10.77.1.10:443 whose responses carry a key update
/// after `half` bytes.
fn key_updating_origin(topo: &Topology, pki: &Pki, half: usize) -> Origin {
    let ca = TestCa::new("origin CA");
    ca.write_pem(&pki.path("origin-ca.pem"));
    Origin::serve_key_update(
        listener_in(&topo.origin, "10.77.1.10:443"),
        ca.server_config(&["origin.test"], Validity::Good),
        half,
    )
}

/// An origin's key update in the middle of an intercepted body. rustls
/// (the copy path) takes it in its stride. With kTLS, rustls derives the
/// new keys and the kernel is given them: a kernel with kTLS rekey goes on,
/// intact; one without (Debian 12's 6.1) refuses the second TLS_RX, and
/// the response is cut there, counted and named, never corrupted.
#[test]
fn a_key_update_mid_body_is_taken_or_ends_the_response_named() {
    let (tag, topo, cg) = bare_scene("tlskeyupd", "pod");
    let pki = Pki::new(&tag);
    let half = 1 << 20;
    let _origin = key_updating_origin(&topo, &pki, half);
    ca_init(&pki);
    let sw = Sockwarden::start(&topo.node, &tag, &intercept_policy(cg.rel(), &pki));
    let url = format!("https://origin.test/data/{}", 2 * half);
    let cmd = format!(
        "curl {} | sha256sum; echo curl=${{PIPESTATUS[0]}}",
        curl_args(&pki.path("node-ca.crt"), &url, &[]).join(" ")
    );
    let o = workload(&topo.pod, &cg, "bash", &["-c", &cmd]);
    let out = stdout(&o);
    let intact = out.starts_with(&hex(Sha256::digest(pattern(2 * half))));
    let records = |result: &str| {
        sw.metric(&format!(
            r#"sockwarden_ktls_records_total{{side="upstream",record="key_update",result="{result}"}}"#
        ))
    };
    let (ok, failed) = (records("ok"), records("failed"));
    let ktls = ktls_expected();
    eprintln!("kTLS {ktls}: intact {intact}, key updates ok {ok}, failed {failed}: {out}");
    if !ktls {
        assert!(
            intact && out.contains("curl=0"),
            "{out}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        assert_eq!((ok, failed), (0.0, 0.0));
        return;
    }
    if intact {
        assert!(out.contains("curl=0"), "{out}");
        assert_eq!((ok, failed), (1.0, 0.0));
        return;
    }
    // Cut short: curl reports the missing bytes (18), never other bytes.
    assert!(
        out.contains("curl=18"),
        "{out}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!((ok, failed), (0.0, 1.0));
    let log = wait_for(
        std::time::Duration::from_secs(5),
        || sw.access_log(),
        |l| !l.is_empty(),
    );
    let reason = log[0]["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("cannot rekey"), "{log:?}");
}
