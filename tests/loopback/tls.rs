//! Loopback tests of connections that open with TLS: SNI pass-through
//! (the whole connection relayed untouched to a real TLS origin), and the
//! alerts that refuse a ClientHello. No root, no namespaces: the proxy's
//! kernel stand-in sends every connection to the test's TLS origin.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};

use rustls::AlertDescription;

use crate::common::io_timeout;
use crate::common::origin::{pattern, Origin, OriginConfig};
use crate::common::tls::{TestCa, Validity};
use crate::harness::{flags, loopback_listener, Client, Harness};
use crate::tls_client::{client_config, der_of, TlsClient};

/// A TLS origin for origin.test on loopback, its CA, and a proxy whose
/// connections all go to it under `rules` (YAML egress rules, indented).
fn scene(rules: &str, engine: Option<usize>) -> (TestCa, Origin, Harness) {
    scene_in(rules, "", engine)
}

/// The same with top-level YAML `top` (e.g. a `tls:` section).
fn scene_with(rules: &str, top: &str) -> (TestCa, Origin, Harness) {
    scene_in(rules, top, Some(1 << 20))
}

fn scene_in(rules: &str, top: &str, engine: Option<usize>) -> (TestCa, Origin, Harness) {
    let ca = TestCa::new("loopback test CA");
    let origin = Origin::serve_tls(
        loopback_listener(),
        OriginConfig::default(),
        ca.server_config(
            &["origin.test", "a.origin.test", "127.0.0.1"],
            Validity::Good,
        ),
    );
    let port = origin.addr().port();
    let yaml = format!(
        "proxy: {{ listen: \"127.0.0.1:15001\" }}\n{top}policies:\n  - name: tls\n    cgroup: /t\n    egress:\n{}",
        rules.replace("PORT", &port.to_string())
    );
    let proxy = Harness::with_yaml(Some(origin.addr()), &yaml, engine);
    (ca, origin, proxy)
}

const BY_NAME: &str = "      - to: [\"127.0.0.0/8\"]\n        ports: [PORT]\n        tls: { server_names: [\"origin.test\", \"*.origin.test\"] }\n";

/// The alert a refused handshake ends with, as the client saw it.
fn alert_of(e: rustls::Error) -> AlertDescription {
    match e {
        rustls::Error::AlertReceived(a) => a,
        other => panic!("expected an alert from the proxy, got {other}"),
    }
}

fn connect(proxy: &Harness, ca: &TestCa, name: &str) -> Result<TlsClient, rustls::Error> {
    TlsClient::connect(proxy.addr, name, client_config(&der_of(ca), &[b"http/1.1"]))
}

#[test]
fn an_allowed_name_is_relayed_whole_to_the_origin() {
    for engine in [Some(1 << 20), None] {
        let (ca, origin, proxy) = scene(BY_NAME, engine);
        let mut c = connect(&proxy, &ca, "origin.test").expect("handshake through the proxy");
        // The origin's own certificate and ALPN: nothing was terminated.
        assert_eq!(c.alpn().as_deref(), Some(&b"http/1.1"[..]));
        let n = 4 << 20;
        let r = c
            .get(&format!("/data/{n}"), "origin.test")
            .expect("response");
        assert_eq!((r.status, r.body.len()), (200, n), "{engine:?}");
        assert!(r.body == pattern(n), "{engine:?}: body differs");
        // A second request on the same connection.
        let r = c.get("/hello", "origin.test").expect("second response");
        assert_eq!(r.head.field("x-origin-request-count"), Some("2"));
        drop(c);
        let line = proxy.wait_log_lines(1).remove(0);
        assert_eq!(line["tls"], "passthrough", "{line}");
        assert_eq!(line["sni"], "origin.test", "{line}");
        assert_eq!(line["verdict"], "allowed", "{line}");
        assert!(
            line["bytes_sent"].as_u64().unwrap() > n as u64,
            "bytes_sent counts the connection: {line}"
        );
        assert_eq!(origin.connections(), 1);
    }
}

#[test]
fn a_client_hello_in_one_byte_pieces_is_read_whole() {
    let (ca, _origin, proxy) = scene(BY_NAME, Some(1 << 20));
    let sock = TcpStream::connect(proxy.addr).expect("connect");
    let config = client_config(&der_of(&ca), &[b"http/1.1"]);
    let mut c = TlsClient::over(sock, "a.origin.test", config, 1).expect("handshake");
    let r = c.get("/x", "a.origin.test").expect("response");
    assert_eq!(r.status, 200);
}

#[test]
fn refused_hellos_get_the_alert_of_their_cause() {
    let (ca, origin, proxy) = scene(BY_NAME, Some(1 << 20));
    let cases = [
        (
            "other.test",
            AlertDescription::AccessDenied,
            "no tls rule allows this server name",
        ),
        (
            "a.b.origin.test",
            AlertDescription::AccessDenied,
            "no tls rule allows this server name",
        ),
        // An IP address: rustls sends no SNI.
        (
            "127.0.0.1",
            AlertDescription::UnrecognisedName,
            "names no server (SNI)",
        ),
    ];
    for (i, (name, alert, reason)) in cases.iter().enumerate() {
        let e = connect(&proxy, &ca, name)
            .err()
            .unwrap_or_else(|| panic!("{name}: handshake succeeded"));
        assert_eq!(alert_of(e), *alert, "{name}");
        let line = proxy.wait_log_lines(i + 1).remove(i);
        assert_eq!(
            (&line["tls"], &line["verdict"]),
            (&"refused".into(), &"denied".into()),
            "{line}"
        );
        assert!(line["reason"].as_str().unwrap().contains(reason), "{line}");
        assert_eq!(flags(&line), ["RBAC"], "{line}");
    }
    assert_eq!(
        origin.connections(),
        0,
        "nothing refused reached the origin"
    );
}

#[test]
fn a_hello_that_does_not_parse_gets_decode_error() {
    let (_ca, origin, proxy) = scene(BY_NAME, Some(1 << 20));
    let mut s = TcpStream::connect(proxy.addr).expect("connect");
    s.set_read_timeout(Some(io_timeout())).unwrap();
    // A handshake record whose message is a ServerHello (type 2).
    s.write_all(&[0x16, 0x03, 0x01, 0x00, 0x04, 0x02, 0x00, 0x00, 0x00])
        .unwrap();
    let mut got = Vec::new();
    let _ = s.read_to_end(&mut got);
    assert_eq!(
        got,
        crate::tls_client::alert_bytes(AlertDescription::DecodeError)
    );
    let line = proxy.wait_log_lines(1).remove(0);
    assert_eq!(
        (&line["tls"], &line["verdict"]),
        (&"refused".into(), &"error".into()),
        "{line}"
    );
    assert_eq!(flags(&line), ["DPE"], "{line}");
    assert_eq!(origin.connections(), 0);
}

/// TLS where the rules are plain http: refused by alert, not a 400 the
/// TLS client cannot read; plain HTTP where the rules are tls: 403.
#[test]
fn tls_and_plain_http_are_each_judged_by_their_own_rules() {
    let http_only =
        "      - to: [\"127.0.0.0/8\"]\n        ports: [PORT]\n        http: [{ method: GET }]\n";
    let (ca, _origin, proxy) = scene(http_only, Some(1 << 20));
    let e = connect(&proxy, &ca, "origin.test").err().expect("refused");
    assert_eq!(alert_of(e), AlertDescription::AccessDenied);
    let line = proxy.wait_log_lines(1).remove(0);
    assert!(
        line["reason"]
            .as_str()
            .unwrap()
            .contains("no tls rule covers"),
        "{line}"
    );

    let (_ca, _origin, proxy) = scene(BY_NAME, Some(1 << 20));
    let r = Client::connect(proxy.addr).get("/data/1");
    assert_eq!(r.status, 403, "plain HTTP to a port of tls rules");
}

/// An L4 rule allows everything: TLS passes through without a name.
#[test]
fn an_l4_rule_passes_tls_through_without_sni() {
    let l4_and_tls = format!("{BY_NAME}      - to: [\"127.0.0.1/32\"]\n        ports: [PORT]\n");
    let (ca, _origin, proxy) = scene(&l4_and_tls, Some(1 << 20));
    let mut c = connect(&proxy, &ca, "127.0.0.1").expect("handshake by IP");
    assert_eq!(c.get("/x", "127.0.0.1").expect("response").status, 200);
}

/// The proxy cannot reach the origin: the workload's connection is reset
/// (as a dead origin's would be), and the log names the errno.
#[test]
fn an_unreachable_origin_resets_the_connection() {
    let ca = TestCa::new("loopback test CA");
    let dead: SocketAddr = crate::harness::closed_port();
    let yaml = format!(
        "proxy: {{ listen: \"127.0.0.1:15001\" }}\npolicies:\n  - name: tls\n    cgroup: /t\n    egress:\n{}",
        BY_NAME.replace("PORT", &dead.port().to_string())
    );
    let proxy = Harness::with_yaml(Some(dead), &yaml, Some(1 << 20));
    assert!(connect(&proxy, &ca, "origin.test").is_err());
    let line = proxy.wait_log_lines(1).remove(0);
    assert_eq!(flags(&line), ["UF"], "{line}");
    assert!(
        line["reason"].as_str().unwrap().contains("ECONNREFUSED"),
        "{line}"
    );
}

/// A real ClientHello for `name` (one record), with an
/// `encrypted_client_hello` extension (0xfe0d) appended: the outer hello
/// of ECH as the network sees it.
fn ech_hello(ca: &TestCa, name: &str) -> Vec<u8> {
    let server = rustls::pki_types::ServerName::try_from(name.to_string()).expect("name");
    let mut conn =
        rustls::ClientConnection::new(client_config(&der_of(ca), &[b"http/1.1"]), server)
            .expect("client");
    let mut hello = Vec::new();
    conn.write_tls(&mut hello).expect("ClientHello bytes");
    let ext = [0xfe, 0x0d, 0x00, 0x04, 0x00, 0x01, 0x02, 0x03];
    let at = |i: usize| usize::from(hello[i]) << 8 | usize::from(hello[i + 1]);
    // record(5) handshake(4) version(2) random(32) session id, suites,
    // compression, then the extensions' length.
    let mut i = 5 + 4 + 2 + 32;
    i += 1 + usize::from(hello[i]);
    i += 2 + at(i);
    i += 1 + usize::from(hello[i]);
    let grow = |bytes: &mut [u8], pos: usize, wide: usize| {
        let mut n = 0usize;
        for b in &bytes[pos..pos + wide] {
            n = n << 8 | usize::from(*b);
        }
        n += ext.len();
        for k in 0..wide {
            bytes[pos + wide - 1 - k] = (n >> (8 * k)) as u8;
        }
    };
    grow(&mut hello, 3, 2); // the record
    grow(&mut hello, 6, 3); // the handshake message
    grow(&mut hello, i, 2); // the extensions
    hello.extend_from_slice(&ext);
    hello
}

/// ECH: refused by default (`access_denied`, reason named); with
/// `ech: outer` the outer name decides, and the connection passes through.
#[test]
fn an_encrypted_client_hello_is_refused_unless_the_rule_takes_its_outer_name() {
    for (ech, passes) in [("", false), (", ech: outer", true)] {
        let rule = format!(
            "      - to: [\"127.0.0.0/8\"]\n        ports: [PORT]\n        tls: {{ server_names: [origin.test]{ech} }}\n"
        );
        let (ca, origin, proxy) = scene(&rule, Some(1 << 20));
        let mut s = TcpStream::connect(proxy.addr).expect("connect");
        s.set_read_timeout(Some(io_timeout())).unwrap();
        s.write_all(&ech_hello(&ca, "origin.test")).unwrap();
        let mut got = [0u8; 7];
        let read = s.read_exact(&mut got);
        drop(s);
        let line = proxy.wait_log_lines(1).remove(0);
        if passes {
            assert_eq!(line["tls"], "passthrough", "{line}");
            assert_eq!(origin.connections(), 1, "{line}");
        } else {
            read.expect("an alert");
            assert_eq!(
                got,
                crate::tls_client::alert_bytes(AlertDescription::AccessDenied)
            );
            assert!(
                line["reason"]
                    .as_str()
                    .unwrap()
                    .contains("encrypted ClientHello"),
                "{line}"
            );
            assert_eq!(origin.connections(), 0);
        }
    }
}

/// Half a ClientHello, then silence: closed at tls.handshake_timeout,
/// logged (HT) and counted, never forwarded.
#[test]
fn a_client_hello_that_never_completes_is_closed_at_the_handshake_timeout() {
    let (_ca, origin, proxy) = scene_with(BY_NAME, "tls: { handshake_timeout: 300ms }\n");
    let mut s = TcpStream::connect(proxy.addr).expect("connect");
    s.set_read_timeout(Some(io_timeout())).unwrap();
    s.write_all(&[0x16, 0x03, 0x01, 0x00, 0x40, 0x01, 0x00])
        .unwrap();
    let started = std::time::Instant::now();
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest);
    assert!(rest.is_empty(), "{rest:?}");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    let line = proxy.wait_log_lines(1).remove(0);
    assert_eq!(flags(&line), ["HT"], "{line}");
    assert!(line["reason"].as_str().unwrap().contains("300ms"), "{line}");
    assert_eq!(origin.connections(), 0);
}
