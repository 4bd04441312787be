//! Leaf certificates for intercepted connections, made on the fly for the
//! client's SNI (or the original destination IP) and signed by the node CA,
//! kept in a bounded LRU cache and renewed before they expire.

use std::net::IpAddr;
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime};

use lru::LruCache;
use rcgen::{
    CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose, SanType, PKCS_ECDSA_P256_SHA256,
};
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::sign::CertifiedKey;

use super::ca::{Ca, CLOCK_SKEW, MAX_COMMON_NAME};

/// The longest DNS name a leaf is made for (RFC 1035's 253 octets).
pub const MAX_DNS_NAME: usize = 253;

/// What a leaf certifies: the client's SNI, or, when it sent none, the
/// original destination IP (as an IP SAN).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum LeafName {
    Dns(String),
    Ip(IpAddr),
}

impl std::fmt::Display for LeafName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LeafName::Dns(name) => f.write_str(name),
            LeafName::Ip(ip) => ip.fmt(f),
        }
    }
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum LeafError {
    #[error("no leaf certificate for {name:?}: {cause}")]
    InvalidName { name: String, cause: &'static str },
    #[error("issuing the leaf certificate for {name}: {cause}")]
    Issue { name: String, cause: String },
    #[error("leaf settings: renew_before ({renew_before:?}) must be shorter than the lifetime ({lifetime:?})")]
    Settings {
        lifetime: Duration,
        renew_before: Duration,
    },
}

/// The cache's bounds and the leaves' lifetimes.
#[derive(Debug, Clone, Copy)]
pub struct LeafSettings {
    /// Most leaves kept; the least recently used goes first.
    pub capacity: NonZeroUsize,
    /// A leaf's validity from its issue (capped at the CA's expiry).
    pub lifetime: Duration,
    /// A leaf is reissued this long before it expires.
    pub renew_before: Duration,
}

impl Default for LeafSettings {
    /// 10,000 leaves, 7 days each, renewed a day before they expire.
    fn default() -> Self {
        LeafSettings {
            capacity: NonZeroUsize::new(10_000).unwrap_or(NonZeroUsize::MIN),
            lifetime: Duration::from_secs(7 * 86_400),
            renew_before: Duration::from_secs(86_400),
        }
    }
}

/// An issued leaf and when it expires.
#[derive(Debug)]
struct Leaf {
    key: Arc<CertifiedKey>,
    not_after: SystemTime,
}

/// Whether a leaf expiring at `not_after` is reissued at `now`.
pub fn needs_renewal(now: SystemTime, not_after: SystemTime, renew_before: Duration) -> bool {
    now.checked_add(renew_before).is_none_or(|t| t >= not_after)
}

/// One name's leaf, issued once: concurrent callers for the same name wait
/// on the cell while one of them signs; other names do not wait.
type Slot = Arc<OnceLock<Result<Arc<Leaf>, LeafError>>>;

/// The bounded leaf cache, shared by every connection task.
pub struct LeafCache {
    ca: Arc<Ca>,
    settings: LeafSettings,
    slots: Mutex<LruCache<LeafName, Slot>>,
    issued: AtomicU64,
}

impl LeafCache {
    pub fn new(ca: Arc<Ca>, settings: LeafSettings) -> Result<LeafCache, LeafError> {
        if settings.renew_before >= settings.lifetime {
            return Err(LeafError::Settings {
                lifetime: settings.lifetime,
                renew_before: settings.renew_before,
            });
        }
        Ok(LeafCache {
            ca,
            slots: Mutex::new(LruCache::new(settings.capacity)),
            settings,
            issued: AtomicU64::new(0),
        })
    }

    /// The leaf for `name` (DNS names compared case-insensitively), issued
    /// now if there is none or it is due for renewal. Signing takes about a
    /// millisecond, outside the cache's lock.
    pub fn get(&self, name: &LeafName) -> Result<Arc<CertifiedKey>, LeafError> {
        self.get_at(name, SystemTime::now())
            .map(|leaf| leaf.key.clone())
    }

    fn get_at(&self, name: &LeafName, now: SystemTime) -> Result<Arc<Leaf>, LeafError> {
        let name = normalize(name)?;
        let slot = self.slot(&name, now);
        let result = slot.get_or_init(|| {
            let leaf = issue(&self.ca, &name, now, self.settings.lifetime)?;
            self.issued.fetch_add(1, Ordering::Relaxed);
            Ok(Arc::new(leaf))
        });
        if result.is_err() {
            // Not kept: the next caller tries again.
            let mut slots = self.lock();
            if slots.peek(&name).is_some_and(|s| Arc::ptr_eq(s, &slot)) {
                slots.pop(&name);
            }
        }
        result.clone()
    }

    /// The slot for `name`: the cached one unless it is due for renewal,
    /// else a new empty one put in its place.
    fn slot(&self, name: &LeafName, now: SystemTime) -> Slot {
        let mut slots = self.lock();
        let fresh = slots.get(name).filter(|slot| match slot.get() {
            None => true, // being issued
            Some(Ok(leaf)) => !needs_renewal(now, leaf.not_after, self.settings.renew_before),
            Some(Err(_)) => false,
        });
        if let Some(slot) = fresh {
            return slot.clone();
        }
        let slot = Slot::default();
        slots.put(name.clone(), slot.clone());
        slot
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LruCache<LeafName, Slot>> {
        // A panic while holding the lock leaves a consistent LRU: go on.
        self.slots
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Leaves in the cache (the leaf cache size gauge).
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Leaves issued since the cache was made, renewals included.
    pub fn issued(&self) -> u64 {
        self.issued.load(Ordering::Relaxed)
    }
}

/// The cache key: a DNS name lower-cased without a trailing dot, checked
/// to be a name a certificate can carry.
fn normalize(name: &LeafName) -> Result<LeafName, LeafError> {
    let LeafName::Dns(dns) = name else {
        return Ok(name.clone());
    };
    let invalid = |cause| LeafError::InvalidName {
        name: dns.chars().take(MAX_DNS_NAME).collect(),
        cause,
    };
    let lower = dns.strip_suffix('.').unwrap_or(dns).to_ascii_lowercase();
    if lower.is_empty() || lower.len() > MAX_DNS_NAME {
        return Err(invalid("empty or longer than 253 octets"));
    }
    if rustls::pki_types::DnsName::try_from(lower.as_str()).is_err()
        || lower.parse::<IpAddr>().is_ok()
    {
        return Err(invalid("not a DNS name"));
    }
    Ok(LeafName::Dns(lower))
}

/// The leaf's parameters: SAN and CN the name (CN left out past 64
/// characters), serverAuth, valid from `now` − [`CLOCK_SKEW`] to `not_after`.
fn leaf_params(
    name: &LeafName,
    now: SystemTime,
    not_after: SystemTime,
) -> Result<CertificateParams, String> {
    let mut params = CertificateParams::default();
    let text = name.to_string();
    params.subject_alt_names = vec![match name {
        LeafName::Dns(dns) => SanType::DnsName(dns.clone().try_into().map_err(|e| format!("{e}"))?),
        LeafName::Ip(ip) => SanType::IpAddress(*ip),
    }];
    let mut dn = DistinguishedName::new();
    if text.len() <= MAX_COMMON_NAME {
        dn.push(DnType::CommonName, text);
    }
    params.distinguished_name = dn;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.use_authority_key_identifier_extension = true;
    params.not_before = (now - CLOCK_SKEW).into();
    params.not_after = not_after.into();
    Ok(params)
}

/// Makes one leaf: a new P-256 key, the certificate signed by the CA, the
/// chain leaf + CA.
fn issue(ca: &Ca, name: &LeafName, now: SystemTime, lifetime: Duration) -> Result<Leaf, LeafError> {
    let failed = |cause: String| LeafError::Issue {
        name: name.to_string(),
        cause,
    };
    let not_after = now
        .checked_add(lifetime)
        .map_or(ca.not_after(), |t| t.min(ca.not_after()));
    let params = leaf_params(name, now, not_after).map_err(failed)?;
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(|e| failed(e.to_string()))?;
    let cert = params
        .signed_by(&key, ca.issuer())
        .map_err(|e| failed(e.to_string()))?;
    let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    let signing =
        rustls::crypto::ring::sign::any_ecdsa_type(&der).map_err(|e| failed(e.to_string()))?;
    let chain = vec![cert.der().clone(), ca.cert_der().clone()];
    Ok(Leaf {
        key: Arc::new(CertifiedKey::new(chain, signing)),
        not_after,
    })
}

#[cfg(test)]
mod tests;
