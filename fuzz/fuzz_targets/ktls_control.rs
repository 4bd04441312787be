//! tls::ktls::control on arbitrary records, as a peer could send them after
//! the handshake: it never panics, what it keeps pending stays within
//! MAX_HANDSHAKE_MESSAGE, and handshake bytes give the same messages
//! whether they come in one record or split in two at any point (a message
//! may span records), unless the split is what crosses the bound.
//! Input: a version byte (even: TLS 1.3, odd: TLS 1.2), a content type, a
//! split point, then the payload.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rustls::ProtocolVersion;
use sockwarden::tls::ktls::{control, Control, HANDSHAKE, MAX_HANDSHAKE_MESSAGE};

/// The messages found over `records`, or None at the first refusal.
fn messages(version: ProtocolVersion, typ: u8, records: &[&[u8]]) -> Option<Vec<String>> {
    let mut pending = Vec::new();
    let mut found = Vec::new();
    for r in records {
        match control(version, typ, r, &mut pending) {
            Control::Messages(m) => found.extend(m.iter().map(|m| format!("{m:?}"))),
            Control::Fatal(why) => {
                assert!(!why.is_empty());
                return None;
            }
            other => found.push(format!("{other:?}")),
        }
        assert!(pending.len() <= MAX_HANDSHAKE_MESSAGE, "{} pending", pending.len());
    }
    Some(found)
}

fuzz_target!(|data: &[u8]| {
    let [v, typ, cut, payload @ ..] = data else {
        return;
    };
    let version = if v % 2 == 0 {
        ProtocolVersion::TLSv1_3
    } else {
        ProtocolVersion::TLSv1_2
    };
    let whole = messages(version, *typ, &[payload]);
    if *typ != HANDSHAKE {
        return;
    }
    let at = usize::from(*cut) * payload.len() / 255;
    let split = messages(version, *typ, &[&payload[..at], &payload[at..]]);
    if let (Some(w), Some(s)) = (&whole, &split) {
        // An Ignore (a HelloRequest) is reported per record: compare the
        // messages only.
        let only = |v: &[String]| -> Vec<String> {
            v.iter().filter(|m| !m.starts_with("Ignore")).cloned().collect()
        };
        assert_eq!(only(w), only(s), "split at {at}");
    }
});
