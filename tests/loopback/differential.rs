//! Differential test: every request vector through sockwarden (the real
//! proxy on loopback, as in smuggling.rs) and through h11, an
//! independent HTTP/1 parser (tests/tools/h11_read.py, Debian's
//! python3-h11). They are compared on meaning: method, the effective host
//! and target (absolute-form split into authority and origin-form),
//! end-to-end fields, and the decoded body, for the requests the test
//! policy allows.
//!
//! A vector passes when both read the same, when sockwarden rejected
//! (whatever it forwarded before is what h11 read before), or when the
//! manifest documents the choice (`differential`). Anything else fails. A
//! summary table (agree / sockwarden-stricter / documented / disagree) is
//! printed.

use std::collections::BTreeMap;
use std::process::Command;

use serde::Deserialize;

use crate::common::h1::{self, Framing};
use crate::corpus::{self, run_request, Forwarded};

const H11: &str = "tests/tools/h11_read.py";
/// Debian's interpreter, where python3-h11 is installed.
const PYTHON: &str = "/usr/bin/python3";

#[derive(Debug, Deserialize)]
struct H11Reading {
    error: Option<String>,
    requests: Vec<Forwarded>,
}

/// A request reduced to what both parsers must agree on.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Meaning {
    method: String,
    host: Option<String>,
    target: String,
    fields: Vec<(String, String)>,
    body: Vec<u8>,
}

/// Fields a proxy rewrites or owns: compared through the other parts.
const NOT_COMPARED: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "upgrade",
    "transfer-encoding",
    "content-length",
    "host",
    "trailer",
];

/// Decodes a chunked body's wire bytes (None if it is not valid chunked).
fn dechunk(wire: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    let mut r = std::io::Cursor::new(wire);
    h1::read_body(&mut r, Framing::Chunked, u64::MAX, |d| {
        out.extend_from_slice(d)
    })
    .ok()?;
    Some(out)
}

/// `f`'s meaning; `decoded`: its body has no chunked framing any more (h11's reading).
fn meaning(f: &Forwarded, decoded: bool) -> Meaning {
    let lower: Vec<(String, String)> = f
        .headers
        .iter()
        .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
        .collect();
    let tokens: Vec<String> = lower
        .iter()
        .filter(|(k, _)| k == "connection")
        .flat_map(|(_, v)| v.split(',').map(|t| t.trim().to_ascii_lowercase()))
        .collect();
    let chunked = lower.iter().any(|(k, _)| k == "transfer-encoding");
    let body = if chunked && !decoded {
        dechunk(&f.body.chars().map(|c| c as u8).collect::<Vec<u8>>())
            .unwrap_or_else(|| b"<invalid chunked body>".to_vec())
    } else {
        f.body.chars().map(|c| c as u8).collect()
    };
    let mut host = lower
        .iter()
        .find(|(k, _)| k == "host")
        .map(|(_, v)| v.clone());
    let mut target = f.target.clone();
    if let Some((scheme, rest)) = f.target.split_once("://") {
        if scheme.eq_ignore_ascii_case("http") {
            let end = rest.find(['/', '?']).unwrap_or(rest.len());
            host = Some(rest[..end].to_string());
            target = match &rest[end..] {
                "" => "/".to_string(),
                r if r.starts_with('?') => format!("/{r}"),
                r => r.to_string(),
            };
        }
    }
    let mut fields: Vec<(String, String)> = lower
        .into_iter()
        .filter(|(k, _)| !NOT_COMPARED.contains(&k.as_str()) && !tokens.contains(k))
        .collect();
    fields.sort();
    Meaning {
        method: f.method.clone(),
        host,
        target,
        fields,
        body,
    }
}

/// Whether the test policy allows the request (tests/loopback/corpus.rs).
fn allowed(m: &Meaning) -> bool {
    let host_ok = m
        .host
        .as_deref()
        .is_some_and(|h| h == "good.test" || h.starts_with("good.test:"));
    m.target.starts_with("/allowed") || (m.target.starts_with("/hostonly") && host_ok)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Verdict {
    Agree,
    Stricter,
    Documented,
    Disagree,
}

#[test]
fn sockwarden_and_h11_agree_or_the_difference_is_a_rejection_or_documented() {
    let out = Command::new(PYTHON)
        .arg(H11)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap_or_else(|e| {
            panic!("run {PYTHON} {H11}: {e} (scripts/setup.sh installs python3-h11)")
        });
    assert!(
        out.status.success(),
        "{H11} failed (is python3-h11 installed? scripts/setup.sh): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let h11: BTreeMap<String, H11Reading> =
        serde_json::from_slice(&out.stdout).expect("h11_read.py output");
    let manifest = corpus::manifest();
    let filter = std::env::var("SW_CORPUS_FILTER").unwrap_or_default();
    let vectors: Vec<_> = manifest
        .requests
        .iter()
        .filter(|v| v.id.contains(&filter))
        .collect();
    assert!(!vectors.is_empty(), "no vectors selected");
    let mut rows = Vec::new();
    for v in &vectors {
        let reading = h11
            .get(&v.id)
            .unwrap_or_else(|| panic!("h11 has no reading of {}", v.id));
        let obs = run_request(&corpus::vector_bytes(&v.file), v.expect.len(), true);
        let ours: Vec<Meaning> = obs
            .forwarded()
            .iter()
            .map(|s| meaning(&s.normalized(), false))
            .collect();
        let theirs: Vec<Meaning> = reading
            .requests
            .iter()
            .map(|f| meaning(f, true))
            .filter(allowed)
            .collect();
        let rejected = obs.rejected();
        let verdict = if ours == theirs && rejected == reading.error.is_some() {
            Verdict::Agree
        } else if rejected && theirs.starts_with(&ours) {
            Verdict::Stricter
        } else if v.differential.is_some() {
            Verdict::Documented
        } else {
            Verdict::Disagree
        };
        let detail = if verdict == Verdict::Disagree {
            format!(
                "sockwarden {} {:?}\n      h11 {:?} {:?}",
                if rejected {
                    "rejected after forwarding"
                } else {
                    "forwarded"
                },
                ours,
                reading.error,
                theirs
            )
        } else {
            String::new()
        };
        rows.push((verdict, v.id.clone(), detail));
    }
    let count = |want: Verdict| rows.iter().filter(|(v, _, _)| *v == want).count();
    println!("differential over {} vectors:", rows.len());
    println!("  agree                {:4}", count(Verdict::Agree));
    println!("  sockwarden-stricter  {:4}", count(Verdict::Stricter));
    println!("  documented           {:4}", count(Verdict::Documented));
    println!("  disagree             {:4}", count(Verdict::Disagree));
    for (verdict, id, _) in &rows {
        println!("  {verdict:?}\t{id}");
    }
    let bad: Vec<String> = rows
        .iter()
        .filter(|(v, _, _)| *v == Verdict::Disagree)
        .map(|(_, id, d)| format!("{id}: {d}"))
        .collect();
    assert!(
        bad.is_empty(),
        "{} vectors disagree with h11 and are neither a sockwarden rejection nor documented:\n  {}",
        bad.len(),
        bad.join("\n  ")
    );
}

/// The comparison itself must catch a difference: a body h11 reads
/// differently is not "agree".
#[test]
fn meaning_tells_bodies_and_absolute_form_apart() {
    let f = |target: &str, headers: &[(&str, &str)], body: &str| Forwarded {
        method: "POST".into(),
        target: target.into(),
        headers: headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        body: body.into(),
    };
    let chunked = f(
        "/a",
        &[("Host", "h"), ("Transfer-Encoding", "chunked")],
        "005;x\r\nhello\r\n0\r\n\r\n",
    );
    let plain = f("/a", &[("host", "h"), ("Content-Length", "5")], "hello");
    let m = |f: &Forwarded| meaning(f, false);
    assert_eq!(m(&chunked), m(&plain));
    assert_ne!(m(&plain), m(&f("/a", &[("host", "h")], "hellp")));
    assert_eq!(m(&f("http://h/a", &[("host", "x")], "hello")), m(&plain));
    assert_ne!(
        m(&f("/a", &[("host", "h"), ("X-A", "1")], "hello")),
        m(&plain)
    );
}
