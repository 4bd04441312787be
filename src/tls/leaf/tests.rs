use std::net::Ipv6Addr;

use x509_parser::extensions::GeneralName;

use super::*;
use crate::tls::ca::{common_names, test_ca};

const DAY: Duration = Duration::from_secs(86_400);
const HOUR: Duration = Duration::from_secs(3600);

fn cache(capacity: usize) -> LeafCache {
    let settings = LeafSettings {
        capacity: NonZeroUsize::new(capacity).expect("capacity"),
        ..LeafSettings::default()
    };
    LeafCache::new(Arc::new(test_ca()), settings).expect("cache")
}

fn dns(name: &str) -> LeafName {
    LeafName::Dns(name.to_owned())
}

/// Checks the leaf's subject alternative names are exactly `want`.
fn assert_san(der: &[u8], want: &[GeneralName<'_>]) {
    let (_, x509) = x509_parser::parse_x509_certificate(der).expect("parse");
    let san = x509.subject_alternative_name().expect("san");
    assert_eq!(san.expect("san present").value.general_names, want);
}

#[test]
fn renewal_decisions() {
    let t0 = SystemTime::UNIX_EPOCH + 1000 * DAY;
    let not_after = t0 + 7 * DAY;
    let cases = [
        (t0, DAY, false),
        (not_after - DAY - Duration::from_secs(1), DAY, false),
        (not_after - DAY, DAY, true),
        (not_after, DAY, true),
        (not_after + DAY, DAY, true),
        (t0, 7 * DAY, true),
        (t0, Duration::ZERO, false),
        (not_after, Duration::ZERO, true),
        (t0, Duration::MAX, true),
    ];
    for (now, renew_before, want) in cases {
        assert_eq!(
            needs_renewal(now, not_after, renew_before),
            want,
            "{now:?} {renew_before:?}"
        );
    }
}

#[test]
fn same_name_is_issued_once() {
    let cache = cache(10);
    let a = cache.get(&dns("origin.test")).expect("leaf");
    let b = cache.get(&dns("origin.test")).expect("leaf");
    let c = cache.get(&dns("Origin.TEST.")).expect("leaf");
    assert!(Arc::ptr_eq(&a, &b) && Arc::ptr_eq(&a, &c));
    assert_eq!((cache.len(), cache.issued()), (1, 1));
    let ip = cache
        .get(&LeafName::Ip(IpAddr::V6(Ipv6Addr::LOCALHOST)))
        .expect("leaf");
    assert!(!Arc::ptr_eq(&a, &ip));
    assert_eq!((cache.len(), cache.issued()), (2, 2));
}

#[test]
fn concurrent_callers_share_one_issue() {
    let cache = cache(10);
    let barrier = std::sync::Barrier::new(8);
    let keys: Vec<Arc<CertifiedKey>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..8)
            .map(|_| {
                s.spawn(|| {
                    barrier.wait();
                    cache.get(&dns("busy.test")).expect("leaf")
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("thread"))
            .collect()
    });
    assert!(keys.iter().all(|k| Arc::ptr_eq(k, &keys[0])));
    assert_eq!(cache.issued(), 1);
}

#[test]
fn renewed_before_expiry() {
    let cache = cache(10);
    let now = SystemTime::now();
    let first = cache.get_at(&dns("origin.test"), now).expect("leaf");
    assert_eq!(first.not_after, now + 7 * DAY);
    let early = cache
        .get_at(&dns("origin.test"), now + 5 * DAY)
        .expect("leaf");
    assert!(Arc::ptr_eq(&first, &early));
    let late = cache
        .get_at(&dns("origin.test"), now + 6 * DAY + HOUR)
        .expect("leaf");
    assert!(!Arc::ptr_eq(&first, &late));
    assert_eq!(late.not_after, now + 13 * DAY + HOUR);
    assert_eq!((cache.len(), cache.issued()), (1, 2));
}

#[test]
fn capacity_evicts_least_recently_used() {
    let cache = cache(2);
    let a = cache.get(&dns("a.test")).expect("leaf");
    cache.get(&dns("b.test")).expect("leaf");
    cache.get(&dns("a.test")).expect("leaf");
    cache.get(&dns("c.test")).expect("leaf");
    assert_eq!((cache.len(), cache.issued()), (2, 3));
    assert!(Arc::ptr_eq(&a, &cache.get(&dns("a.test")).expect("leaf")));
    assert_eq!(cache.issued(), 3);
    cache.get(&dns("b.test")).expect("leaf");
    assert_eq!((cache.len(), cache.issued()), (2, 4));
}

#[test]
fn hostile_names_are_refused() {
    let cache = cache(10);
    let long = format!("{}.test", "a".repeat(260));
    for name in [
        "",
        ".",
        "a..b",
        "1.2.3.4",
        "ü.test",
        "a b.test",
        "a\r\n.test",
        long.as_str(),
    ] {
        let got = cache.get(&dns(name));
        assert!(
            matches!(got, Err(LeafError::InvalidName { .. })),
            "{name:?}: {got:?}"
        );
    }
    assert_eq!((cache.len(), cache.issued()), (0, 0));
}

#[test]
fn settings_are_checked() {
    let settings = LeafSettings {
        renew_before: 7 * DAY,
        ..LeafSettings::default()
    };
    let err = LeafCache::new(Arc::new(test_ca()), settings)
        .err()
        .expect("refused");
    assert!(matches!(err, LeafError::Settings { .. }), "{err}");
}

#[test]
fn leaf_never_outlives_the_ca() {
    let ca = Arc::new(test_ca());
    let settings = LeafSettings {
        lifetime: 365 * DAY,
        ..LeafSettings::default()
    };
    let cache = LeafCache::new(ca.clone(), settings).expect("cache");
    let leaf = cache
        .get_at(&dns("origin.test"), SystemTime::now())
        .expect("leaf");
    assert_eq!(leaf.not_after, ca.not_after());
}

#[test]
fn leaf_certificate_fields() {
    let ca = Arc::new(test_ca());
    let cache = LeafCache::new(ca.clone(), LeafSettings::default()).expect("cache");
    let now = SystemTime::now();
    let leaf = cache.get_at(&dns("origin.test"), now).expect("leaf");
    assert_eq!(leaf.key.cert.len(), 2);
    assert_eq!(&leaf.key.cert[1], ca.cert_der());
    let (_, x509) = x509_parser::parse_x509_certificate(&leaf.key.cert[0]).expect("parse");
    assert_eq!(common_names(&x509), ["origin.test"]);
    assert_san(&leaf.key.cert[0], &[GeneralName::DNSName("origin.test")]);
    let eku = x509
        .extended_key_usage()
        .expect("eku")
        .expect("eku present");
    assert!(eku.value.server_auth && !eku.value.client_auth);
    assert!(!x509.is_ca());
    let secs = |t: SystemTime| {
        t.duration_since(SystemTime::UNIX_EPOCH)
            .expect("epoch")
            .as_secs()
    };
    let not_before = u64::try_from(x509.validity().not_before.timestamp()).expect("time");
    assert_eq!(not_before, secs(now - HOUR));
    let not_after = u64::try_from(x509.validity().not_after.timestamp()).expect("time");
    assert_eq!(not_after, secs(now + 7 * DAY));
    assert_eq!(
        x509.issuer(),
        x509_parser::parse_x509_certificate(ca.cert_der())
            .expect("ca")
            .1
            .subject()
    );
}

#[test]
fn ip_leaf_has_an_ip_san() {
    let cache = cache(10);
    let ip = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 7));
    let key = cache.get(&LeafName::Ip(ip)).expect("leaf");
    assert_san(&key.cert[0], &[GeneralName::IPAddress(&[192, 0, 2, 7])]);
}
