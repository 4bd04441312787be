//! What a request came to, and the replies the proxy makes itself.

use std::time::{Duration, SystemTime};

use super::http::local_response;
use super::stream::BufStream;
use super::transport::Transport;
use crate::accesslog::{Flag, Record};
use crate::metrics::Verdict;

/// What happens to the downstream connection after a request.
pub(super) enum Next<U: Transport> {
    Keep,
    Close,
    /// Protocol upgraded: join the client to this upstream connection.
    Tunnel(BufStream<U>),
}

/// What one request came to: the access-log line's own fields.
pub(super) struct Outcome {
    pub method: Option<String>,
    pub host: Option<String>,
    pub path: Option<String>,
    pub status: u16,
    pub verdict: Verdict,
    pub flags: Vec<Flag>,
    pub reason: Option<String>,
    pub upstream_id: Option<u64>,
    pub upstream_attempts: u32,
    pub bytes_received: u64,
    pub bytes_sent: u64,
}

impl Outcome {
    pub fn new(head_len: u64) -> Outcome {
        Outcome {
            method: None,
            host: None,
            path: None,
            status: 0,
            verdict: Verdict::Error,
            flags: Vec::new(),
            reason: None,
            upstream_id: None,
            upstream_attempts: 0,
            bytes_received: head_len,
            bytes_sent: 0,
        }
    }

    /// The access-log line: the connection's fields from `base`, this
    /// request's from the outcome.
    pub fn record(self, base: &Record, time: SystemTime, took: Duration) -> Record {
        Record {
            time,
            method: self.method,
            host: self.host,
            path: self.path,
            status: self.status,
            verdict: self.verdict,
            flags: self.flags,
            reason: self.reason,
            upstream_id: self.upstream_id,
            upstream_attempts: self.upstream_attempts,
            bytes_received: self.bytes_received,
            bytes_sent: self.bytes_sent,
            duration_ms: took.as_secs_f64() * 1e3,
            ..base.clone()
        }
    }
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
