use std::os::unix::fs::MetadataExt as _;

use sha2::Digest as _;

use super::*;

const DAY: Duration = Duration::from_secs(86_400);

/// A directory of its own under the system's temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(what: &str) -> TempDir {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let dir =
            std::env::temp_dir().join(format!("sockwarden-{what}-{}-{nanos}", std::process::id()));
        fs::create_dir_all(&dir).expect("temp dir");
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn opts(dir: &Path) -> CaInit {
    CaInit {
        cert: dir.join("etc/sockwarden/ca.crt"),
        key: dir.join("etc/sockwarden/ca.key"),
        force: false,
        name: default_name("node-1"),
        days: DEFAULT_DAYS,
    }
}

fn mode(path: &Path) -> u32 {
    fs::metadata(path).expect("metadata").mode() & 0o777
}

fn files() -> Files<'static> {
    Files {
        cert: Path::new("/etc/sockwarden/ca.crt"),
        key: Path::new("/etc/sockwarden/ca.key"),
    }
}

fn load_at(g: &Generated, now: SystemTime) -> Result<Ca, CaError> {
    Ca::from_pem(files(), g.cert_pem.as_bytes(), g.key_pem.as_bytes(), now)
}

#[test]
fn init_writes_modes_and_loads_back() {
    let dir = TempDir::new("ca-init");
    let opts = opts(&dir.0);
    let written = init(&opts, SystemTime::now()).expect("init");
    assert_eq!((mode(&opts.cert), mode(&opts.key)), (0o644, 0o600));
    let ca = Ca::load(&opts.cert, &opts.key).expect("load");
    let digest = sha2::Sha256::digest(ca.cert_der().as_ref());
    let hex: Vec<String> = digest.iter().map(|b| format!("{b:02X}")).collect();
    assert_eq!(written.fingerprint, hex.join(":"));
    let report = init_report(&opts, &written);
    assert!(
        report.contains(&written.fingerprint) && report.contains("CURL_CA_BUNDLE"),
        "{report}"
    );
    let left: Vec<_> = fs::read_dir(opts.cert.parent().expect("dir"))
        .expect("dir")
        .collect();
    assert_eq!(left.len(), 2, "temporary files left: {left:?}");
}

#[test]
fn init_refuses_to_overwrite_without_force() {
    let dir = TempDir::new("ca-force");
    let mut opts = opts(&dir.0);
    init(&opts, SystemTime::now()).expect("init");
    let before = fs::read(&opts.key).expect("key");
    let err = init(&opts, SystemTime::now()).err().expect("refused");
    assert_eq!(
        err.to_string(),
        format!(
            "{}: already exists; pass --force to replace it",
            opts.cert.display()
        )
    );
    fs::remove_file(&opts.cert).expect("rm cert");
    let err = init(&opts, SystemTime::now()).err().expect("refused");
    assert!(
        matches!(err, CaError::Exists { ref path } if *path == opts.key),
        "{err}"
    );
    assert_eq!(fs::read(&opts.key).expect("key"), before);
    opts.force = true;
    // A key left readable by an earlier tool is replaced by a 0600 one.
    fs::set_permissions(&opts.key, fs::Permissions::from_mode(0o644)).expect("chmod");
    init(&opts, SystemTime::now()).expect("forced");
    assert_ne!(fs::read(&opts.key).expect("key"), before);
    assert_eq!(mode(&opts.key), 0o600);
    Ca::load(&opts.cert, &opts.key).expect("load");
}

#[test]
fn mismatched_key_is_refused() {
    let dir = TempDir::new("ca-mismatch");
    let a = opts(&dir.0);
    let b = CaInit {
        cert: dir.0.join("b.crt"),
        key: dir.0.join("b.key"),
        ..a.clone()
    };
    init(&a, SystemTime::now()).expect("a");
    init(&b, SystemTime::now()).expect("b");
    let err = Ca::load(&a.cert, &b.key).err().expect("refused");
    let want = format!(
        "{}: the key does not match the certificate {}",
        b.key.display(),
        a.cert.display()
    );
    assert_eq!(err.to_string(), want);
}

#[test]
fn missing_files_are_named() {
    let err = Ca::load(
        Path::new("/nonexistent/ca.crt"),
        Path::new("/nonexistent/ca.key"),
    )
    .err()
    .expect("missing");
    assert!(
        err.to_string().starts_with("/nonexistent/ca.crt: "),
        "{err}"
    );
}

#[test]
fn load_checks_table() {
    let now = SystemTime::now();
    let good = generate("test CA", now, 30).expect("ca");
    let old = generate("old CA", now - 40 * DAY, 30).expect("old");
    let future = generate("future CA", now + 2 * DAY, 30).expect("future");
    let leaf = rcgen::generate_simple_self_signed(vec!["leaf.test".to_owned()]).expect("leaf");
    let not_ca = Generated {
        cert_pem: leaf.cert.pem(),
        key_pem: leaf.signing_key.serialize_pem(),
        fingerprint: String::new(),
    };
    let garbage_key = Generated {
        key_pem: "-----BEGIN PRIVATE KEY-----\nAAEC\n-----END PRIVATE KEY-----\n".to_owned(),
        ..generate("x", now, 30).expect("x")
    };
    let no_pem = Generated {
        cert_pem: "hello".to_owned(),
        ..generate("x", now, 30).expect("x")
    };
    let cases: Vec<(&Generated, &str)> = vec![
        (
            &old,
            "/etc/sockwarden/ca.crt: the CA certificate expired at ",
        ),
        (
            &future,
            "/etc/sockwarden/ca.crt: the CA certificate is not valid before ",
        ),
        (&not_ca, "/etc/sockwarden/ca.crt: not a CA certificate"),
        (
            &garbage_key,
            "/etc/sockwarden/ca.key: not a private key sockwarden can sign with",
        ),
        (
            &no_pem,
            "/etc/sockwarden/ca.crt: no PEM CERTIFICATE block in it",
        ),
    ];
    for (g, want) in cases {
        let err = load_at(g, now).err().expect("refused").to_string();
        assert!(err.starts_with(want), "{err}");
    }
    let ca = load_at(&good, now).expect("good");
    assert!(ca.not_after() > now + 29 * DAY && ca.not_after() <= now + 30 * DAY);
}

#[test]
fn ca_certificate_fields() {
    let now = SystemTime::now();
    let g = generate(&default_name("node-1"), now, DEFAULT_DAYS).expect("ca");
    let ca = load_at(&g, now).expect("load");
    let (_, x509) = x509_parser::parse_x509_certificate(ca.cert_der()).expect("parse");
    let bc = x509.basic_constraints().expect("bc").expect("bc present");
    assert!(bc.value.ca && bc.critical);
    assert_eq!(bc.value.path_len_constraint, Some(0));
    let ku = x509.key_usage().expect("ku").expect("ku present");
    assert!(ku.value.key_cert_sign() && ku.value.crl_sign() && !ku.value.digital_signature());
    assert_eq!(common_names(&x509), ["sockwarden CA node-1"]);
    let years = x509.validity().not_after.timestamp() - x509.validity().not_before.timestamp();
    assert_eq!(years, i64::from(DEFAULT_DAYS) * 86_400 + 3600);
}

#[test]
fn default_name_is_bounded() {
    assert_eq!(default_name("n"), "sockwarden CA n");
    assert_eq!(
        default_name(&"h".repeat(100)).chars().count(),
        MAX_COMMON_NAME
    );
}
