//! Retry decisions: pure functions of what failed, the request, and the
//! policy; and the budget that keeps retries from amplifying an outage.
//!
//! A request is retried only when it provably did not reach the server (the
//! connect failed), or when its method is idempotent and it has no body (a
//! body has already been streamed and cannot be replayed). Each retry goes
//! to a fresh connection with a fresh source tuple, after a jittered
//! exponential backoff, and only while the budget allows: concurrent retries
//! (backoff included) stay at or below max(3, 20% of active upstream
//! requests).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use crate::config::{RetryOn, RetryPolicy};
use crate::metrics::Errno;

/// What went wrong with one upstream attempt, before anything reached the
/// client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// connect() failed (errno name); the request never left.
    Connect(Errno),
    /// The connection closed or reset before any response byte. `reused`:
    /// it came from the pool (the idle-close race).
    ResetBeforeResponse { reused: bool, detail: String },
    /// The upstream answered 503.
    Status503,
    /// The upstream TLS handshake failed or timed out: never retried (a
    /// certificate does not heal, and the deadline was the patience).
    Tls(String),
}

impl Failure {
    /// One line for the `sockwarden-error` header and the log.
    pub fn describe(&self) -> String {
        match self {
            Failure::Connect(errno) => format!("connect failed: {errno}"),
            Failure::ResetBeforeResponse { detail, .. } => detail.clone(),
            Failure::Status503 => "upstream answered 503".into(),
            Failure::Tls(why) => why.clone(),
        }
    }
}

/// Why a request is retried (the `reason` label of the retries metric).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryReason {
    ConnectFailure,
    ResetBeforeResponse,
    Status503,
    /// A pooled connection the server closed as the request went out.
    IdleRace,
}

impl RetryReason {
    pub fn as_str(self) -> &'static str {
        match self {
            RetryReason::ConnectFailure => "connect_failure",
            RetryReason::ResetBeforeResponse => "reset_before_response",
            RetryReason::Status503 => "status_503",
            RetryReason::IdleRace => "idle_race",
        }
    }
}

/// RFC 9110 9.2.2 idempotent methods.
pub fn is_idempotent(method: &str) -> bool {
    matches!(
        method,
        "GET" | "HEAD" | "OPTIONS" | "TRACE" | "PUT" | "DELETE"
    )
}

/// What a request allows: whether it could be sent again unchanged.
#[derive(Debug, Clone, Copy)]
pub struct RequestFacts<'a> {
    pub method: &'a str,
    pub has_body: bool,
}

impl RequestFacts<'_> {
    fn replayable(&self) -> bool {
        is_idempotent(self.method) && !self.has_body
    }
}

/// Whether to try again after `failure`, given `retries_done` policy
/// retries and whether the one free idle-race retry was used.
pub fn decide(
    policy: &RetryPolicy,
    failure: &Failure,
    req: RequestFacts<'_>,
    retries_done: u32,
    idle_race_used: bool,
) -> Option<RetryReason> {
    let policy_allows = |on: RetryOn| policy.on.contains(on) && retries_done < policy.attempts;
    match failure {
        // The request never left: safe for every method, even with a body
        // (the body is read from the client only after a connect).
        Failure::Connect(_) => {
            policy_allows(RetryOn::ConnectFailure).then_some(RetryReason::ConnectFailure)
        }
        // A pooled connection the server closed as we wrote to it: one free
        // retry on a fresh connection, which cannot itself be an idle race.
        Failure::ResetBeforeResponse { reused: true, .. }
            if req.replayable() && !idle_race_used =>
        {
            Some(RetryReason::IdleRace)
        }
        Failure::ResetBeforeResponse { .. } => (req.replayable()
            && policy_allows(RetryOn::ResetBeforeResponse))
        .then_some(RetryReason::ResetBeforeResponse),
        Failure::Status503 => (req.replayable() && policy_allows(RetryOn::Status503))
            .then_some(RetryReason::Status503),
        Failure::Tls(_) => None,
    }
}

/// Jittered exponential backoff before retry number `n` (0-based):
/// base × 2^n × a factor in [0.5, 1.5), capped at 64 × base. `jitter` is a
/// uniform sample in [0, 1).
pub fn backoff(base: Duration, n: u32, jitter: f64) -> Duration {
    let exp = base.saturating_mul(1u32 << n.min(6));
    exp.mul_f64(0.5 + jitter.clamp(0.0, 1.0))
}

/// Concurrency budget shared by all connections.
#[derive(Debug, Default)]
pub struct Budget {
    active_requests: AtomicUsize,
    active_retries: AtomicUsize,
}

/// Counts one upstream request as active while alive.
pub struct ActiveRequest<'a>(&'a Budget);

impl Drop for ActiveRequest<'_> {
    fn drop(&mut self) {
        self.0.active_requests.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One retry in progress (backoff and attempt); frees its slot on drop.
pub struct RetryPermit<'a>(&'a Budget);

impl Drop for RetryPermit<'_> {
    fn drop(&mut self) {
        self.0.active_retries.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Retries allowed at once with `active` upstream requests.
pub fn retry_limit(active: usize) -> usize {
    (active / 5).max(3)
}

impl Budget {
    pub fn request(&self) -> ActiveRequest<'_> {
        self.active_requests.fetch_add(1, Ordering::Relaxed);
        ActiveRequest(self)
    }

    /// A retry slot, if the budget has one.
    pub fn try_retry(&self) -> Option<RetryPermit<'_>> {
        let limit = retry_limit(self.active_requests.load(Ordering::Relaxed));
        self.active_retries
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |n| {
                (n < limit).then_some(n + 1)
            })
            .ok()
            .map(|_| RetryPermit(self))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RetryOnSet;

    fn policy(attempts: u32, on: RetryOnSet) -> RetryPolicy {
        RetryPolicy {
            attempts,
            on,
            backoff: Duration::from_millis(10),
        }
    }

    const ALL: RetryOnSet = RetryOnSet {
        connect_failure: true,
        reset_before_response: true,
        status_503: true,
    };

    /// (name, policy, failure, request, retries done, idle race used, want)
    type Case<'a> = (
        &'a str,
        &'a RetryPolicy,
        Failure,
        RequestFacts<'a>,
        u32,
        bool,
        Option<RetryReason>,
    );

    #[test]
    fn decisions() {
        let get = RequestFacts {
            method: "GET",
            has_body: false,
        };
        let post = RequestFacts {
            method: "POST",
            has_body: true,
        };
        let put_body = RequestFacts {
            method: "PUT",
            has_body: true,
        };
        let reset = |reused| Failure::ResetBeforeResponse {
            reused,
            detail: "x".into(),
        };
        let p3 = policy(3, ALL);
        let none = policy(0, ALL);
        let no_connect = policy(
            3,
            RetryOnSet {
                connect_failure: false,
                ..ALL
            },
        );
        let no_reset = policy(
            3,
            RetryOnSet {
                reset_before_response: false,
                ..ALL
            },
        );
        let no_503 = policy(
            3,
            RetryOnSet {
                status_503: false,
                ..ALL
            },
        );
        let cases: Vec<Case<'_>> = vec![
            (
                "connect, any method",
                &p3,
                Failure::Connect(Errno::ECONNREFUSED),
                post,
                0,
                false,
                Some(RetryReason::ConnectFailure),
            ),
            (
                "connect, attempts used",
                &p3,
                Failure::Connect(Errno::ECONNREFUSED),
                get,
                3,
                false,
                None,
            ),
            (
                "connect, retries off",
                &none,
                Failure::Connect(Errno::ECONNREFUSED),
                get,
                0,
                false,
                None,
            ),
            (
                "connect, condition off",
                &no_connect,
                Failure::Connect(Errno::ETIMEDOUT),
                get,
                0,
                false,
                None,
            ),
            (
                "idle race, retries off",
                &none,
                reset(true),
                get,
                0,
                false,
                Some(RetryReason::IdleRace),
            ),
            (
                "idle race used once",
                &none,
                reset(true),
                get,
                0,
                true,
                None,
            ),
            (
                "idle race used, policy",
                &p3,
                reset(true),
                get,
                0,
                true,
                Some(RetryReason::ResetBeforeResponse),
            ),
            ("idle race, POST", &p3, reset(true), post, 0, false, None),
            (
                "idle race, PUT with body",
                &p3,
                reset(true),
                put_body,
                0,
                false,
                None,
            ),
            (
                "reset on fresh conn",
                &p3,
                reset(false),
                get,
                1,
                true,
                Some(RetryReason::ResetBeforeResponse),
            ),
            (
                "reset, condition off",
                &no_reset,
                reset(false),
                get,
                0,
                false,
                None,
            ),
            (
                "503 GET",
                &p3,
                Failure::Status503,
                get,
                0,
                false,
                Some(RetryReason::Status503),
            ),
            ("503 POST", &p3, Failure::Status503, post, 0, false, None),
            (
                "503 condition off",
                &no_503,
                Failure::Status503,
                get,
                0,
                false,
                None,
            ),
        ];
        for (name, p, failure, req, done, used, want) in cases {
            assert_eq!(decide(p, &failure, req, done, used), want, "{name}");
        }
    }

    #[test]
    fn backoff_grows_with_jitter_and_a_cap() {
        let base = Duration::from_millis(10);
        assert_eq!(backoff(base, 0, 0.0), Duration::from_millis(5));
        assert_eq!(backoff(base, 0, 0.5), Duration::from_millis(10));
        assert_eq!(backoff(base, 2, 0.5), Duration::from_millis(40));
        assert_eq!(backoff(base, 30, 0.5), Duration::from_millis(640));
        assert!(backoff(base, 1, 0.999) < Duration::from_millis(30));
    }

    #[test]
    fn budget_allows_max_of_3_and_a_fifth_of_active_requests() {
        let b = Budget::default();
        let reqs: Vec<_> = (0..10).map(|_| b.request()).collect();
        let permits: Vec<_> = (0..3).filter_map(|_| b.try_retry()).collect();
        assert_eq!(permits.len(), 3);
        assert!(b.try_retry().is_none(), "10 active requests: 3 retries");
        drop(permits);
        let more: Vec<_> = (0..40).map(|_| b.request()).collect();
        let permits: Vec<_> = (0..20).filter_map(|_| b.try_retry()).collect();
        assert_eq!(permits.len(), 10, "50 active requests: 10 retries");
        drop((reqs, more, permits));
        assert_eq!(retry_limit(0), 3);
    }
}
