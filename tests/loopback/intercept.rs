//! Loopback tests of TLS the proxy terminates or originates: interception
//! (a leaf from the node CA for the client's SNI or IP, http rules on the
//! requests inside, Host bound to the SNI, ALPN), origination (plain HTTP
//! from the workload, verified TLS to the origin), and upstream
//! certificate failures named in 502s. No root: the kernel stand-in sends
//! every connection to the test's TLS origin.

use std::path::PathBuf;
use std::time::SystemTime;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use rustls::AlertDescription;

use crate::common::origin::{pattern, Origin, OriginConfig};
use crate::common::tls::{TestCa, Validity};
use crate::harness::{flags, loopback_listener, proxy_error, temp_log_path, Client, Harness};
use crate::tls_client::{client_config, TlsClient};

/// The node CA, written where the configuration names it; removed on drop.
struct NodeCa {
    cert: PathBuf,
    key: PathBuf,
    der: CertificateDer<'static>,
}

impl NodeCa {
    fn new() -> NodeCa {
        let g = sockwarden::tls::ca::generate("loopback node CA", SystemTime::now(), 30)
            .expect("node CA");
        let base = temp_log_path();
        let (cert, key) = (base.with_extension("ca.crt"), base.with_extension("ca.key"));
        std::fs::write(&cert, &g.cert_pem).expect("write CA cert");
        std::fs::write(&key, &g.key_pem).expect("write CA key");
        let der = CertificateDer::from_pem_slice(g.cert_pem.as_bytes()).expect("CA PEM");
        NodeCa { cert, key, der }
    }
}

impl Drop for NodeCa {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.cert);
        let _ = std::fs::remove_file(&self.key);
    }
}

/// The origin's CA, its PEM written for `tls.upstream_roots`.
struct OriginSide {
    roots: PathBuf,
    origin: Origin,
}

impl Drop for OriginSide {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.roots);
    }
}

/// A TLS origin whose certificate is for `names`, valid or not.
fn origin(names: &[&str], validity: Validity) -> OriginSide {
    let ca = TestCa::new("origin CA");
    let roots = temp_log_path().with_extension("roots.pem");
    ca.write_pem(&roots);
    let origin = Origin::serve_tls(
        loopback_listener(),
        OriginConfig::default(),
        ca.server_config(names, validity),
    );
    OriginSide { roots, origin }
}

/// A proxy sending everything to `o`, with `rule` (one egress rule's
/// fields after `to` and `ports`) and the node CA.
fn proxy(o: &OriginSide, node: &NodeCa, rule: &str) -> Harness {
    let port = o.origin.addr().port();
    let yaml = format!(
        "proxy: {{ listen: \"127.0.0.1:15001\" }}\n\
         tls: {{ ca: {{ cert: {:?}, key: {:?} }}, upstream_roots: {:?} }}\n\
         policies:\n  - name: tls\n    cgroup: /t\n    egress:\n\
         \x20     - to: [\"127.0.0.0/8\"]\n        ports: [{port}]\n{}",
        node.cert,
        node.key,
        o.roots,
        rule.replace("PORT", &port.to_string())
    );
    Harness::with_yaml(Some(o.origin.addr()), &yaml, Some(1 << 20))
}

const INTERCEPT: &str = "        tls: { intercept: true, server_names: [origin.test] }\n        http:\n          - { method: GET, path: \"/data/.*\" }\n          - { path: /ok }\n";

fn http11(node: &NodeCa) -> std::sync::Arc<rustls::ClientConfig> {
    client_config(&node.der, &[b"http/1.1"])
}

#[test]
fn intercepted_requests_are_judged_by_http_rules() {
    let (node, o) = (NodeCa::new(), origin(&["origin.test"], Validity::Good));
    let proxy = proxy(&o, &node, INTERCEPT);
    // The client trusts only the node CA: the handshake is the proxy's.
    let mut c = TlsClient::connect(proxy.addr, "origin.test", http11(&node)).expect("handshake");
    assert_eq!(c.alpn().as_deref(), Some(&b"http/1.1"[..]));
    let n = 1 << 20;
    let r = c
        .get(&format!("/data/{n}"), "origin.test")
        .expect("allowed");
    assert_eq!((r.status, r.body == pattern(n)), (200, true), "{r}");
    let r = c.get("/secret", "origin.test").expect("denied");
    assert_eq!(r.status, 403, "{r}");
    assert_eq!(r.head.field("sockwarden-denied"), Some("tls"));
    let r = c
        .get("/ok", "origin.test")
        .expect("after a denial, same connection");
    assert_eq!(r.status, 200, "{r}");
    let lines = proxy.wait_log_lines(3);
    let first = &lines[0];
    assert_eq!(first["tls"], "intercept", "{first}");
    assert_eq!(first["sni"], "origin.test", "{first}");
    assert_eq!(first["tls_version"], "TLSv1_3", "{first}");
    assert_eq!(first["alpn"], "http/1.1", "{first}");
    assert_eq!(first["upstream_sni"], "origin.test", "{first}");
    assert_eq!(lines[1]["verdict"], "denied", "{}", lines[1]);
    // Pooled upstream TLS: one origin connection for both allowed requests.
    assert_eq!(o.origin.connections(), 1);
}

#[test]
fn a_host_other_than_the_sni_is_misdirected() {
    let (node, o) = (NodeCa::new(), origin(&["origin.test"], Validity::Good));
    let proxy = proxy(&o, &node, INTERCEPT);
    let mut c = TlsClient::connect(proxy.addr, "origin.test", http11(&node)).expect("handshake");
    let r = c.get("/ok", "elsewhere.test").expect("response");
    assert_eq!(r.status, 421, "{r}");
    assert!(
        r.head.field("sockwarden-denied").is_some(),
        "a policy refusal names its policy: {r}"
    );
    let line = proxy.wait_log_lines(1).remove(0);
    assert!(
        line["reason"].as_str().unwrap().contains("fronting"),
        "{line}"
    );
    assert_eq!(o.origin.requests(), 0);
}

#[test]
fn a_client_without_sni_gets_a_leaf_for_the_destination_ip() {
    let (node, o) = (NodeCa::new(), origin(&["127.0.0.1"], Validity::Good));
    let rule = "        tls: { intercept: true }\n        http: [{ path: \"/.*\" }]\n";
    let proxy = proxy(&o, &node, rule);
    // An IP server name: rustls sends no SNI and checks an IP SAN.
    let mut c = TlsClient::connect(proxy.addr, "127.0.0.1", http11(&node)).expect("handshake");
    assert_eq!(c.get("/x", "127.0.0.1").expect("by IP").status, 200);
    assert_eq!(c.get("/x", "origin.test").expect("by name").status, 421);
}

#[test]
fn an_h2_only_client_gets_no_application_protocol() {
    let (node, o) = (NodeCa::new(), origin(&["origin.test"], Validity::Good));
    let proxy = proxy(&o, &node, INTERCEPT);
    let h2 = client_config(&node.der, &[b"h2"]);
    match TlsClient::connect(proxy.addr, "origin.test", h2) {
        Err(rustls::Error::AlertReceived(a)) => {
            assert_eq!(a, AlertDescription::NoApplicationProtocol)
        }
        Err(e) => panic!("expected no_application_protocol, got {e}"),
        Ok(_) => panic!("an h2-only client was served"),
    }
    let line = proxy.wait_log_lines(1).remove(0);
    assert!(
        line["reason"]
            .as_str()
            .unwrap()
            .contains("HTTP/2 is not built"),
        "{line}"
    );
    // Offering both is fine: http/1.1 is chosen.
    let both = client_config(&node.der, &[b"h2", b"http/1.1"]);
    let c = TlsClient::connect(proxy.addr, "origin.test", both).expect("h2 and http/1.1");
    assert_eq!(c.alpn().as_deref(), Some(&b"http/1.1"[..]));
}

#[test]
fn origination_speaks_verified_tls_to_the_origin() {
    let (node, o) = (NodeCa::new(), origin(&["origin.test"], Validity::Good));
    let rule = "        upstream: { tls: true, port: PORT }\n        http: [{ method: GET }]\n";
    let proxy = proxy(&o, &node, rule);
    let mut c = Client::connect(proxy.addr);
    let r = c.get("/data/1000");
    assert_eq!((r.status, r.body.len()), (200, 1000), "{r}");
    let r = c.get("/data/10");
    assert_eq!(r.head.field("x-origin-request-count"), Some("2"), "pooled");
    let line = proxy.wait_log_lines(1).remove(0);
    assert_eq!(line["upstream_sni"], "origin.test", "{line}");
    assert!(
        line.get("tls").is_none(),
        "the workload spoke plain HTTP: {line}"
    );
}

/// Each upstream certificate failure is a 502 naming its cause, and the
/// request never reaches the origin's HTTP layer.
#[test]
fn upstream_certificate_failures_name_their_cause() {
    let node = NodeCa::new();
    let originate =
        "        upstream: { tls: true, port: PORT }\n        http: [{ method: GET }]\n";
    let cases = [
        (
            &["origin.test"][..],
            Validity::Expired,
            originate,
            "certificate expired",
        ),
        (
            &["other.test"][..],
            Validity::Good,
            originate,
            "name mismatch",
        ),
        (
            &["origin.test"][..],
            Validity::Expired,
            INTERCEPT,
            "certificate expired",
        ),
    ];
    for (names, validity, rule, cause) in cases {
        let o = origin(names, validity);
        let proxy = proxy(&o, &node, rule);
        let r = if rule == INTERCEPT {
            let mut c =
                TlsClient::connect(proxy.addr, "origin.test", http11(&node)).expect("handshake");
            c.get("/ok", "origin.test").expect("response")
        } else {
            Client::connect(proxy.addr).get("/data/1")
        };
        assert_eq!(r.status, 502, "{cause}: {r}");
        let err = proxy_error(&r, 502);
        assert!(
            err.starts_with("upstream TLS: ") && err.contains(cause),
            "{cause}: {err}"
        );
        let line = proxy.wait_log_lines(1).remove(0);
        assert_eq!(flags(&line), ["UF"], "{line}");
        assert_eq!(o.origin.requests(), 0);
    }
}

/// An origin whose CA the proxy does not trust: unknown issuer.
#[test]
fn an_untrusted_origin_is_an_unknown_issuer() {
    let node = NodeCa::new();
    let o = origin(&["origin.test"], Validity::Good);
    let stranger = TestCa::new("a CA nobody trusts");
    stranger.write_pem(&o.roots);
    let rule = "        upstream: { tls: true, port: PORT }\n        http: [{ method: GET }]\n";
    let proxy = proxy(&o, &node, rule);
    let r = Client::connect(proxy.addr).get("/data/1");
    assert!(proxy_error(&r, 502).contains("unknown issuer"), "{r}");
}

/// An origin that accepts and never answers the handshake: 504 at
/// tls.handshake_timeout, naming it; a closed port: 503 naming the errno.
#[test]
fn a_silent_or_absent_origin_is_a_timeout_or_a_refused_connect() {
    let silent = crate::common::Server::start(loopback_listener(), |_s, stop| {
        let until = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while !stop.load(std::sync::atomic::Ordering::SeqCst) && std::time::Instant::now() < until {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    });
    // Its roots file (removed on drop); the origin itself goes unused.
    let unused = origin(&["origin.test"], Validity::Good);
    let roots = &unused.roots;
    for (dst, status, fragment) in [
        (
            silent.addr(),
            504,
            "upstream TLS handshake timed out after 300ms",
        ),
        (crate::harness::closed_port(), 503, "ECONNREFUSED"),
    ] {
        let yaml = format!(
            "proxy: {{ listen: \"127.0.0.1:15001\" }}\n\
             tls: {{ upstream_roots: {roots:?}, handshake_timeout: 300ms }}\n\
             policies:\n  - name: tls\n    cgroup: /t\n    egress:\n\
             \x20     - to: [\"127.0.0.0/8\"]\n        ports: [{port}]\n\
             \x20       upstream: {{ tls: true, port: {port} }}\n        http: [{{ method: GET }}]\n",
            port = dst.port()
        );
        let proxy = Harness::with_yaml(Some(dst), &yaml, Some(1 << 20));
        let r = Client::connect(proxy.addr).get("/data/1");
        assert!(proxy_error(&r, status).contains(fragment), "{r}");
    }
}

/// An origin's TLS 1.3 key update in the middle of an originated body is
/// taken by the upstream TLS (rustls here: the loopback tier copies), and
/// the body arrives intact. The kernel tier runs the same origin under kTLS.
#[test]
fn a_key_update_mid_body_is_taken() {
    let node = NodeCa::new();
    let ca = TestCa::new("origin CA");
    let roots = temp_log_path().with_extension("roots.pem");
    ca.write_pem(&roots);
    let half = 256 << 10;
    let config = ca.server_config(&["origin.test"], Validity::Good);
    let o = OriginSide {
        roots,
        origin: Origin::serve_key_update(loopback_listener(), config, half),
    };
    let rule = "        upstream: { tls: true, port: PORT }\n        http: [{ method: GET }]\n";
    let proxy = proxy(&o, &node, rule);
    let mut c = Client::connect(proxy.addr);
    let r = c.get("/data/key-update");
    assert_eq!(r.status, 200, "{r}");
    assert!(
        r.body == pattern(2 * half),
        "{} bytes, not the pattern",
        r.body.len()
    );
    assert_eq!(o.origin.requests(), 1);
}
