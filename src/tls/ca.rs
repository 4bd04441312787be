//! The node CA: `sockwarden ca init` writes it (ECDSA P-256, PEM files with
//! fixed modes), [`Ca::load`] reads it back and checks it before the leaf
//! cache signs with it.

use std::fs;
use std::io::{self, Write as _};
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, PKCS_ECDSA_P256_SHA256,
};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// How far back a certificate's `not_before` is set, for clients whose
/// clock runs behind the node's.
pub const CLOCK_SKEW: Duration = Duration::from_secs(3600);

/// The CA's validity when `ca init` is not given `--days`: 10 years.
pub const DEFAULT_DAYS: u32 = 3650;

/// The longest common name RFC 5280 allows (ub-common-name).
pub const MAX_COMMON_NAME: usize = 64;

const CERT_MODE: u32 = 0o644;
const KEY_MODE: u32 = 0o600;

#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("{}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{}: no PEM {what} block in it ({cause})", path.display())]
    NotPem {
        path: PathBuf,
        what: &'static str,
        cause: String,
    },
    #[error("{}: not a valid X.509 certificate ({cause})", path.display())]
    BadCert { path: PathBuf, cause: String },
    #[error("{}: not a CA certificate (its basic constraints do not say CA)", path.display())]
    NotCa { path: PathBuf },
    #[error("{}: the CA certificate may not sign certificates (its key usage lacks keyCertSign)", path.display())]
    NoCertSign { path: PathBuf },
    #[error("{}: the CA certificate expired at {not_after}; make a new one with `sockwarden ca init --force`", path.display())]
    Expired { path: PathBuf, not_after: String },
    #[error("{}: the CA certificate is not valid before {not_before}; check the node's clock", path.display())]
    NotYetValid { path: PathBuf, not_before: String },
    #[error("{}: not a private key sockwarden can sign with (PKCS#8 ECDSA P-256/P-384, Ed25519 or RSA): {cause}", path.display())]
    BadKey { path: PathBuf, cause: String },
    #[error("{}: the key does not match the certificate {}", key.display(), cert.display())]
    KeyMismatch { cert: PathBuf, key: PathBuf },
    #[error("{}: already exists; pass --force to replace it", path.display())]
    Exists { path: PathBuf },
    #[error("{}: writing: {source}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("generating the CA: {0}")]
    Generate(String),
}

/// The CA's two files.
#[derive(Clone, Copy)]
struct Files<'a> {
    cert: &'a Path,
    key: &'a Path,
}

/// A loaded, checked node CA: what the leaf cache signs with.
pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    cert: CertificateDer<'static>,
    not_after: SystemTime,
}

impl Ca {
    /// Reads and checks the CA: each file must exist and hold PEM, the
    /// certificate must be a CA that may sign certificates and be valid now,
    /// and the key must be the certificate's. Every error names its file.
    pub fn load(cert: &Path, key: &Path) -> Result<Ca, CaError> {
        let cert_pem = read(cert)?;
        let key_pem = read(key)?;
        Ca::from_pem(Files { cert, key }, &cert_pem, &key_pem, SystemTime::now())
    }

    fn from_pem(
        files: Files<'_>,
        cert_pem: &[u8],
        key_pem: &[u8],
        now: SystemTime,
    ) -> Result<Ca, CaError> {
        let cert = CertificateDer::from_pem_slice(cert_pem).map_err(|e| CaError::NotPem {
            path: files.cert.into(),
            what: "CERTIFICATE",
            cause: e.to_string(),
        })?;
        let checked = check_ca(files.cert, &cert, now)?;
        let key = load_key(files.key, key_pem)?;
        if key.public_key_raw() != checked.public_key.as_slice() {
            return Err(CaError::KeyMismatch {
                cert: files.cert.into(),
                key: files.key.into(),
            });
        }
        let issuer = Issuer::from_ca_cert_der(&cert, key).map_err(|e| CaError::BadCert {
            path: files.cert.into(),
            cause: e.to_string(),
        })?;
        Ok(Ca {
            issuer,
            cert,
            not_after: checked.not_after,
        })
    }

    /// The CA certificate (DER), sent as the second certificate of every
    /// leaf's chain.
    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert
    }

    /// When the CA expires; no leaf outlives it.
    pub fn not_after(&self) -> SystemTime {
        self.not_after
    }

    pub(crate) fn issuer(&self) -> &Issuer<'static, KeyPair> {
        &self.issuer
    }
}

fn read(path: &Path) -> Result<Vec<u8>, CaError> {
    fs::read(path).map_err(|source| CaError::Read {
        path: path.into(),
        source,
    })
}

/// What the checks keep of a CA certificate.
struct Checked {
    not_after: SystemTime,
    public_key: Vec<u8>,
}

fn check_ca(path: &Path, der: &[u8], now: SystemTime) -> Result<Checked, CaError> {
    let bad = |cause: String| CaError::BadCert {
        path: path.into(),
        cause,
    };
    let (_, x509) = x509_parser::parse_x509_certificate(der).map_err(|e| bad(e.to_string()))?;
    if !x509.is_ca() {
        return Err(CaError::NotCa { path: path.into() });
    }
    let usage = x509.key_usage().map_err(|e| bad(e.to_string()))?;
    if usage.is_some_and(|u| !u.value.key_cert_sign()) {
        return Err(CaError::NoCertSign { path: path.into() });
    }
    let not_before = unix(x509.validity().not_before.timestamp());
    let not_after = unix(x509.validity().not_after.timestamp());
    if now < not_before {
        let not_before = humantime::format_rfc3339_seconds(not_before).to_string();
        return Err(CaError::NotYetValid {
            path: path.into(),
            not_before,
        });
    }
    if now > not_after {
        let not_after = humantime::format_rfc3339_seconds(not_after).to_string();
        return Err(CaError::Expired {
            path: path.into(),
            not_after,
        });
    }
    let public_key = x509.public_key().subject_public_key.data.to_vec();
    Ok(Checked {
        not_after,
        public_key,
    })
}

/// Seconds since the epoch as a time (before 1970 is clamped to 1970: no
/// certificate of ours is that old).
fn unix(seconds: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(u64::try_from(seconds).unwrap_or(0))
}

fn load_key(path: &Path, pem: &[u8]) -> Result<KeyPair, CaError> {
    let der = PrivateKeyDer::from_pem_slice(pem).map_err(|e| CaError::NotPem {
        path: path.into(),
        what: "PRIVATE KEY",
        cause: e.to_string(),
    })?;
    KeyPair::try_from(&der).map_err(|e| CaError::BadKey {
        path: path.into(),
        cause: e.to_string(),
    })
}

/// What `sockwarden ca init` was asked to do.
#[derive(Debug, Clone)]
pub struct CaInit {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Replace existing files.
    pub force: bool,
    /// The subject's common name (see [`default_name`]).
    pub name: String,
    /// Validity in days from now.
    pub days: u32,
}

/// A new CA in PEM.
pub struct Generated {
    pub cert_pem: String,
    pub key_pem: String,
    /// SHA-256 of the certificate (DER), as colon-separated hex.
    pub fingerprint: String,
}

/// The default common name: sockwarden and the host, at most
/// [`MAX_COMMON_NAME`] characters.
pub fn default_name(host: &str) -> String {
    format!("sockwarden CA {host}")
        .chars()
        .take(MAX_COMMON_NAME)
        .collect()
}

/// This node's host name, or `unknown-host` where /proc does not say.
pub fn host_name() -> String {
    fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unknown-host".to_owned())
}

/// The CA certificate's parameters: CA with path length 0, keyCertSign and
/// cRLSign, valid from `now` − [`CLOCK_SKEW`] for `days`.
fn ca_params(name: &str, now: SystemTime, days: u32) -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "sockwarden");
    dn.push(DnType::CommonName, name);
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.not_before = (now - CLOCK_SKEW).into();
    params.not_after = (now + Duration::from_secs(u64::from(days) * 86_400)).into();
    params
}

/// Makes a new CA (a fresh ECDSA P-256 key).
pub fn generate(name: &str, now: SystemTime, days: u32) -> Result<Generated, CaError> {
    let failed = |e: rcgen::Error| CaError::Generate(e.to_string());
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(failed)?;
    let cert = ca_params(name, now, days)
        .self_signed(&key)
        .map_err(failed)?;
    Ok(Generated {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
        fingerprint: fingerprint(cert.der()),
    })
}

/// SHA-256 of `der` as `AB:CD:…` (as `openssl x509 -fingerprint -sha256`).
pub fn fingerprint(der: &[u8]) -> String {
    let suite = rustls::crypto::ring::cipher_suite::TLS13_AES_128_GCM_SHA256.tls13();
    let Some(suite) = suite else {
        return "unavailable".to_owned();
    };
    let digest = suite.common.hash_provider.hash(der);
    let hex: Vec<String> = digest.as_ref().iter().map(|b| format!("{b:02X}")).collect();
    hex.join(":")
}

/// `sockwarden ca init`: refuses existing files without `force`, makes the
/// parent directories, writes the key (0600 from its creation) and the
/// certificate (0644), each through a temporary file in its directory.
pub fn init(opts: &CaInit, now: SystemTime) -> Result<Generated, CaError> {
    if !opts.force {
        for path in [&opts.cert, &opts.key] {
            if fs::symlink_metadata(path).is_ok() {
                return Err(CaError::Exists { path: path.clone() });
            }
        }
    }
    let generated = generate(&opts.name, now, opts.days)?;
    write_file(
        &opts.key,
        generated.key_pem.as_bytes(),
        KEY_MODE,
        opts.force,
    )?;
    write_file(
        &opts.cert,
        generated.cert_pem.as_bytes(),
        CERT_MODE,
        opts.force,
    )?;
    Ok(generated)
}

/// What `ca init` prints once it has written the files.
pub fn init_report(opts: &CaInit, generated: &Generated) -> String {
    let cert = opts.cert.display();
    format!(
        "wrote the CA certificate {cert} (mode 0644)\n\
         wrote the CA private key {} (mode 0600)\n\
         SHA-256 fingerprint {}\n\
         clients trust it through SSL_CERT_FILE, CURL_CA_BUNDLE or AWS_CA_BUNDLE naming a \
         bundle with {cert} in it (with the system roots appended where some TLS is not \
         intercepted); see docs/tls.md\n",
        opts.key.display(),
        generated.fingerprint
    )
}

fn write_file(path: &Path, bytes: &[u8], mode: u32, force: bool) -> Result<(), CaError> {
    let failed = |source: io::Error| match source.kind() {
        io::ErrorKind::AlreadyExists if !force => CaError::Exists { path: path.into() },
        _ => CaError::Write {
            path: path.into(),
            source,
        },
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::create_dir_all(dir).map_err(failed)?;
    }
    let mut tmp_name = path.file_name().unwrap_or_default().to_os_string();
    tmp_name.push(format!(".tmp-{}", std::process::id()));
    let tmp = path.with_file_name(tmp_name);
    let _ = fs::remove_file(&tmp);
    let placed = write_new(&tmp, bytes, mode).and_then(|()| {
        if force {
            fs::rename(&tmp, path)
        } else {
            // A hard link never replaces: a file made since the check stays.
            fs::hard_link(&tmp, path)
        }
    });
    let _ = fs::remove_file(&tmp);
    placed.map_err(failed)
}

/// Creates `path` (which must not exist) with `mode` from the start, so
/// the key is never readable by others, not even briefly.
fn write_new(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)?;
    // The umask may have taken bits off; the certificate must be 0644.
    file.set_permissions(fs::Permissions::from_mode(mode))?;
    file.write_all(bytes)?;
    file.sync_all()
}

/// A CA made in memory, for the leaf, server and client tests.
#[cfg(test)]
pub(crate) fn test_ca() -> Ca {
    let g = generate("sockwarden test CA", SystemTime::now(), 30).expect("generate");
    let files = Files {
        cert: Path::new("ca.crt"),
        key: Path::new("ca.key"),
    };
    Ca::from_pem(
        files,
        g.cert_pem.as_bytes(),
        g.key_pem.as_bytes(),
        SystemTime::now(),
    )
    .expect("load")
}

/// A certificate's subject common names, for the tests that check them.
#[cfg(test)]
pub(crate) fn common_names(x509: &x509_parser::certificate::X509Certificate<'_>) -> Vec<String> {
    let names = x509.subject().iter_common_name();
    names
        .filter_map(|c| c.as_str().ok().map(str::to_owned))
        .collect()
}

#[cfg(test)]
mod tests;
