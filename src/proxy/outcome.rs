//! A request's access-log line, and the replies the proxy makes itself.

use std::time::{Duration, SystemTime};

use super::http::local_response;
use super::stream::BufStream;
use super::transport::Transport;
use crate::accesslog::{Flag, Outcome, Record};
use crate::metrics::Verdict;

/// What happens to the downstream connection after a request.
pub(super) enum Next<U: Transport> {
    Keep,
    Close,
    /// Protocol upgraded: join the client to this upstream connection.
    Tunnel(BufStream<U>),
}

/// The access-log line of a request: the connection's fields from `base`,
/// the request's from `outcome`.
pub(super) fn record(base: &Record, outcome: Outcome, time: SystemTime, took: Duration) -> Record {
    Record {
        time,
        outcome,
        duration_ms: millis(took),
        ..base.clone()
    }
}

/// `took` in milliseconds, to the microsecond (`1.068`, not
/// `1.0676940000000001`).
fn millis(took: Duration) -> f64 {
    took.as_micros() as f64 / 1e3
}

/// What a reply the proxy makes itself says, and so which header names
/// its cause.
pub(super) enum ReplyKind {
    /// It could not or would not forward: `sockwarden-error: <reason>`.
    Error { flag: Flag, reason: String },
    /// Policy denied the request: `sockwarden-denied: <policy>`.
    Denied { policy: String, reason: String },
}

/// A response the proxy writes itself.
pub(super) struct LocalReply {
    pub status: u16,
    pub kind: ReplyKind,
    /// Close the downstream connection after it.
    pub close: bool,
}

impl LocalReply {
    pub fn error(status: u16, flag: Flag, reason: String, close: bool) -> LocalReply {
        LocalReply {
            status,
            kind: ReplyKind::Error { flag, reason },
            close,
        }
    }

    fn bytes(&self) -> Vec<u8> {
        let (header, body) = match &self.kind {
            ReplyKind::Error { reason, .. } => (
                ("sockwarden-error", reason),
                format!("sockwarden: {reason}\n"),
            ),
            ReplyKind::Denied { policy, reason } => (
                ("sockwarden-denied", policy),
                format!("sockwarden: request denied by policy {policy:?}: {reason}\n"),
            ),
        };
        local_response(self.status, &[(header.0, header.1)], &body, self.close)
    }

    /// Writes what the reply says into the outcome.
    fn account(self, out: &mut Outcome) {
        out.status = self.status;
        let (verdict, flag, reason) = match self.kind {
            ReplyKind::Error { flag, reason } => (Verdict::Error, flag, reason),
            ReplyKind::Denied { reason, .. } => (Verdict::Denied, Flag::RBAC, reason),
        };
        out.verdict = verdict;
        out.flags.push(flag);
        out.reason = Some(reason);
    }
}

/// Writes a local reply to the client.
pub(super) async fn write_reply<D: Transport, U: Transport>(
    down: &mut BufStream<D>,
    out: &mut Outcome,
    r: LocalReply,
) -> Next<U> {
    let bytes = r.bytes();
    let close = r.close;
    r.account(out);
    match down.write_all(&bytes).await {
        Ok(()) => {
            out.bytes_sent += bytes.len() as u64;
            if close {
                Next::Close
            } else {
                Next::Keep
            }
        }
        Err(_) => {
            out.flags.push(Flag::DC);
            Next::Close
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_are_logged_to_the_microsecond() {
        let cases = [
            (Duration::from_nanos(1_067_694), "1.067"),
            (Duration::from_micros(1_500_250), "1500.25"),
            (Duration::ZERO, "0.0"),
        ];
        for (took, want) in cases {
            assert_eq!(
                serde_json::json!(millis(took)).to_string(),
                want,
                "{took:?}"
            );
        }
    }
}
