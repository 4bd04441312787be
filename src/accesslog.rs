//! One JSON line per request, and one per connect() or UDP send the kernel
//! denied (`"kind":"connect_denied"`, [`DeniedConnect`]), written off the
//! data path by a dedicated thread. When the writer falls behind, lines are
//! dropped and counted (`sockwarden_access_log_dropped_total`); requests
//! never wait for the log.

use std::io::Write;
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::time::SystemTime;

use serde::Serialize;

use crate::metrics::{self, Verdict};

/// Lines that may wait for the writer.
const QUEUE: usize = 16 * 1024;

/// Envoy-style response flags, written by name (`"UF"`, ...).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Flag {
    /// Upstream connection failure.
    UF,
    /// Upstream request timeout.
    UT,
    /// Upstream retry limit exceeded (retries were made and all failed).
    URX,
    /// Upstream connection termination (closed or reset mid-exchange).
    UC,
    /// Downstream connection termination.
    DC,
    /// Downstream protocol error (bad request).
    DPE,
    /// Upstream protocol error (bad response).
    UPE,
    /// Denied by policy (Envoy's RBAC flag).
    RBAC,
    /// No original destination (connection not redirected by sockwarden).
    NR,
    /// An Upgrade the policy does not allow was removed from the request.
    UPR,
    /// Request head timeout: a started head did not finish within
    /// `proxy.request_head_timeout` (answered 408).
    HT,
    /// Stream idle timeout (Envoy's SI): a body made no progress for the
    /// body timeout and was cut; DC or UC beside it says whose.
    SI,
    /// Audit: a policy in `mode: audit` let through what enforce mode would
    /// have denied (`would_deny` says what would have).
    AUD,
}

/// One access-log line: the connection's fields, then what the request
/// came to.
#[derive(Debug, Clone, Serialize)]
pub struct Record {
    /// When the request head was read; formatted (RFC 3339, UTC) by the
    /// writer thread, off the data path.
    #[serde(serialize_with = "rfc3339")]
    pub time: SystemTime,
    pub downstream_id: u64,
    pub policy: Option<String>,
    pub cgroup: Option<String>,
    pub cgroup_id: Option<u64>,
    pub client: String,
    pub original_dst: Option<String>,
    /// Connections that opened with a ClientHello.
    #[serde(flatten)]
    pub tls: Option<TlsFields>,
    #[serde(flatten)]
    pub outcome: Outcome,
    pub duration_ms: f64,
}

/// What the access log says of a connection that opened with TLS.
#[derive(Debug, Clone, Serialize)]
pub struct TlsFields {
    pub tls: TlsMode,
    /// The ClientHello's server name.
    pub sni: Option<String>,
    /// The version negotiated with the workload (`TLSv1_3`); absent where
    /// the proxy did not terminate it.
    pub tls_version: Option<String>,
    /// The protocol negotiated with the workload (ALPN).
    pub alpn: Option<String>,
    /// Whether the kernel did the TLS record layer (kTLS).
    pub ktls: bool,
}

/// What the proxy did with a TLS connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TlsMode {
    /// Spliced whole to the origin: the proxy read only the ClientHello.
    Passthrough,
    /// Terminated with a leaf of the node CA; requests judged inside.
    Intercept,
    /// Answered with a TLS alert and closed.
    Refused,
}

/// What one request came to: the access-log line's own fields, filled in
/// as the exchange goes.
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    pub method: Option<String>,
    pub host: Option<String>,
    pub path: Option<String>,
    pub status: u16,
    pub verdict: Verdict,
    pub flags: Vec<Flag>,
    /// Why the proxy answered for itself, when it did.
    pub reason: Option<String>,
    /// When the response head went to the workload (forwarded requests),
    /// for `sockwarden_first_byte_seconds`; not logged.
    #[serde(skip)]
    pub first_byte: Option<std::time::Instant>,
    /// Under `mode: audit`, what would have denied this in enforce mode.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub would_deny: Option<String>,
    pub upstream_id: Option<u64>,
    pub upstream_attempts: u32,
    /// The name the proxy's TLS to the origin was for (interception and
    /// origination); absent for plain upstreams.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstream_sni: Option<String>,
    /// Whether the kernel did the record layer of the proxy's TLS to the
    /// origin (kTLS) on the connection this request used; absent for
    /// plain upstreams.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstream_ktls: Option<bool>,
    /// Bytes received from the client for this request (head and body).
    pub bytes_received: u64,
    /// Bytes sent to the client for this request (head and body).
    pub bytes_sent: u64,
}

impl Outcome {
    /// A request whose head was `head_len` bytes, before anything else.
    pub fn new(head_len: u64) -> Outcome {
        Outcome {
            method: None,
            host: None,
            path: None,
            status: 0,
            verdict: Verdict::Error,
            flags: Vec::new(),
            reason: None,
            first_byte: None,
            would_deny: None,
            upstream_id: None,
            upstream_attempts: 0,
            upstream_sni: None,
            upstream_ktls: None,
            bytes_received: head_len,
            bytes_sent: 0,
        }
    }
}

/// A connect() (or UDP sendto()/sendmsg()) the kernel refused with EPERM
/// because no rule allows its destination, as the kernel reported it
/// (rate-limited per policy: `sockwarden_kernel_events_dropped_total`
/// counts what it did not report).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeniedConnect {
    /// When userspace read the event (RFC 3339, UTC).
    #[serde(serialize_with = "rfc3339")]
    pub time: SystemTime,
    /// `connect_denied`, or `connect_would_deny` (a policy in `mode: audit`
    /// let through a connect no egress rule allows): what tells these lines
    /// from requests.
    pub kind: &'static str,
    /// `connect` or `sendmsg`.
    pub call: &'static str,
    /// The enforcing policy (null for an id the configuration does not have).
    pub policy: Option<String>,
    /// The policy's cgroup, as configured.
    pub cgroup: Option<String>,
    /// The calling task's own cgroup id.
    pub cgroup_id: u64,
    pub pid: u32,
    pub comm: String,
    /// `tcp` or `udp`.
    pub protocol: &'static str,
    /// The destination address the workload asked for.
    pub destination: String,
    pub port: u16,
    pub netns_cookie: u64,
}

/// One line of the log.
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
enum Line {
    /// Boxed: a request line is twice the size of a denied one.
    Request(Box<Record>),
    Denied(DeniedConnect),
}

#[derive(Clone)]
pub struct AccessLog {
    tx: Option<SyncSender<Line>>,
}

impl AccessLog {
    /// `stdout` (default), `off`, or a file path (appended to).
    pub fn open(target: Option<&str>) -> std::io::Result<AccessLog> {
        let sink: Box<dyn Write + Send> = match target.unwrap_or("stdout") {
            "off" => return Ok(AccessLog { tx: None }),
            "stdout" => Box::new(std::io::stdout()),
            path => Box::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)?,
            ),
        };
        let (tx, rx) = sync_channel::<Line>(QUEUE);
        std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || {
                let mut out = std::io::BufWriter::new(sink);
                while let Ok(first) = rx.recv() {
                    let mut next = Some(first);
                    while let Some(rec) = next {
                        if serde_json::to_writer(&mut out, &rec).is_ok() {
                            let _ = out.write_all(b"\n");
                        }
                        next = rx.try_recv().ok();
                    }
                    let _ = out.flush();
                }
            })?;
        Ok(AccessLog { tx: Some(tx) })
    }

    pub fn write(&self, rec: Record) {
        self.send(Line::Request(Box::new(rec)));
    }

    /// Writes a denied connect's line.
    pub fn write_denied(&self, denied: DeniedConnect) {
        self.send(Line::Denied(denied));
    }

    fn send(&self, line: Line) {
        if let Some(tx) = &self.tx {
            match tx.try_send(line) {
                Ok(()) | Err(TrySendError::Disconnected(_)) => {}
                Err(TrySendError::Full(_)) => metrics::access_log_dropped(),
            }
        }
    }
}

impl Default for Record {
    fn default() -> Self {
        Record {
            time: SystemTime::now(),
            downstream_id: 0,
            policy: None,
            cgroup: None,
            cgroup_id: None,
            client: String::new(),
            original_dst: None,
            tls: None,
            outcome: Outcome::new(0),
            duration_ms: 0.0,
        }
    }
}

fn rfc3339<S: serde::Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&humantime::format_rfc3339_millis(*t))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_is_serialized_as_rfc3339() {
        let rec = Record::default();
        let v = serde_json::to_value(&rec).expect("serializes");
        let t = v["time"].as_str().expect("a string");
        assert_eq!(t.len(), 24, "{t}");
        assert!(t.starts_with("20"), "{t}");
        assert!(t.ends_with('Z'));
        assert_eq!(&t[10..11], "T");
    }

    #[test]
    fn flags_and_verdicts_are_written_by_name() {
        let mut rec = Record::default();
        rec.outcome.verdict = Verdict::Denied;
        rec.outcome.flags = vec![Flag::RBAC, Flag::URX];
        let v = serde_json::to_value(&rec).expect("serializes");
        assert_eq!(v["verdict"], "denied");
        assert_eq!(v["flags"], serde_json::json!(["RBAC", "URX"]));
    }
}
