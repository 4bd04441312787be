//! Connections that open with a TLS ClientHello. The hello is read with
//! MSG_PEEK, so no byte is consumed, and judged by its server name
//! ([`PolicySet::tls_verdict`](crate::policy::PolicySet::tls_verdict)):
//! passed through whole (both directions spliced for the connection's
//! life), intercepted, or refused with a TLS alert. Anything else is plain
//! HTTP and goes on as before.

use std::os::fd::AsFd;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use rustls::AlertDescription;
use tokio::net::TcpStream;

use super::conn::{count_tunneled, pool_key, Target, Terminated};
use super::exchange::Route;
use super::outcome::record;
use super::stream::{tunnel, BufStream};
use super::Proxy;
use crate::accesslog::{Flag, Outcome, Record, TlsFields, TlsMode};
use crate::metrics::{self, CloseReason, Handshake, TlsRefusal, TlsSide, Verdict};
use crate::policy::{canonical_ip, HelloView, TlsDenial, TlsVerdict};
use crate::tls::alert::{alert_record, send_alert};
use crate::tls::hello::{self, ClientHello, PeekError};
use crate::tls::ktls::handshake;
use crate::tls::ktls::stream::KtlsStream;
use crate::tls::ktls::{CopyReason, Ktls};
use crate::tls::leaf::LeafName;
use crate::tls::server::{alpn_acceptable, intercept_config};

/// How a connection opens.
pub(super) enum Opening {
    /// Nothing came (closed, idle, or the proxy is draining).
    Nothing,
    /// Not TLS: plain HTTP.
    Plain,
    Hello(ClientHello),
    /// A ClientHello that does not parse.
    Malformed(hello::Malformed),
    /// A ClientHello that did not complete in time.
    Timeout,
}

impl Opening {
    /// What it is, for the debug log (not the hello's contents).
    pub(super) fn kind(&self) -> &'static str {
        match self {
            Opening::Nothing => "nothing",
            Opening::Plain => "plain HTTP",
            Opening::Hello(_) => "TLS ClientHello",
            Opening::Malformed(_) => "malformed ClientHello",
            Opening::Timeout => "ClientHello timeout",
        }
    }
}

impl Proxy {
    /// Waits for the connection's first bytes (as long as an idle
    /// connection may wait), then peeks its ClientHello, if it is one.
    /// Draining ends either wait: no new request is taken.
    pub(super) async fn opening(&self, stream: &TcpStream) -> Opening {
        let mut byte = [0u8; 1];
        let first = tokio::time::timeout(self.settings.client_idle_timeout, stream.peek(&mut byte));
        let peeked = async {
            match first.await {
                Ok(Ok(n)) if n > 0 => {
                    Some(hello::peek(stream, self.settings.handshake_timeout).await)
                }
                _ => None,
            }
        };
        // Not cut short by a drain: a connection accepted just before it
        // (an upgrade's last ones) is served, its first bytes awaited; the
        // drain deadline bounds the wait.
        match peeked.await {
            None => Opening::Nothing,
            Some(Ok(h)) => Opening::Hello(h),
            Some(Err(PeekError::NotTls)) => Opening::Plain,
            Some(Err(PeekError::Malformed(m))) => Opening::Malformed(m),
            Some(Err(PeekError::Timeout(_))) => Opening::Timeout,
            Some(Err(PeekError::Closed | PeekError::Io(_))) => Opening::Nothing,
        }
    }

    /// Serves a connection that opened with TLS (or failed to).
    pub(super) async fn serve_tls(
        &self,
        stream: TcpStream,
        target: &Target,
        base: Record,
        opening: Opening,
    ) {
        let (time, started) = (SystemTime::now(), Instant::now());
        let hello = match opening {
            Opening::Hello(h) => h,
            Opening::Malformed(m) => {
                let why = TlsRefusal::DecodeError;
                let out = self.refuse(stream, target, why, m.to_string()).await;
                let base = Record {
                    tls: Some(tls_fields(TlsMode::Refused, None)),
                    ..base
                };
                self.log.write(record(&base, out, time, started.elapsed()));
                return;
            }
            Opening::Timeout => {
                metrics::timeout(metrics::Timeout::ClientHello);
                let mut out = Outcome::new(0);
                out.flags.push(Flag::HT);
                out.reason = Some(format!(
                    "TLS ClientHello not complete within {:?}",
                    self.settings.handshake_timeout
                ));
                self.log.write(record(&base, out, time, started.elapsed()));
                return;
            }
            Opening::Nothing | Opening::Plain => return,
        };
        let view = HelloView {
            sni: hello.sni.as_deref(),
            ech: hello.ech,
        };
        let fields = |tls| tls_fields(tls, hello.sni.as_ref());
        let orig = &target.orig;
        let policies = self.policies();
        let out = match policies.tls_verdict(orig.policy_id, orig.dst, view) {
            TlsVerdict::PassThrough { rule } => {
                let base = Record {
                    tls: Some(fields(TlsMode::Passthrough)),
                    ..base
                };
                let settings = policies
                    .rule(orig.policy_id, rule)
                    .map(|r| r.upstream)
                    .unwrap_or_default();
                let out = self.pass_through(stream, target, settings).await;
                self.log.write(record(&base, out, time, started.elapsed()));
                return;
            }
            TlsVerdict::Intercept => {
                let at = (time, started);
                return self.intercept(stream, target, base, hello, at).await;
            }
            TlsVerdict::Refuse(denial) => match policies.audited(orig.policy_id, orig.dst) {
                // mode: audit: passed through whole, reported.
                Some(rule) => {
                    metrics::would_deny(&target.policy, metrics::AuditStage::Tls);
                    let base = Record {
                        tls: Some(fields(TlsMode::Passthrough)),
                        ..base
                    };
                    let settings = rule.map(|r| r.upstream).unwrap_or_default();
                    let mut out = self.pass_through(stream, target, settings).await;
                    out.flags.push(Flag::AUD);
                    out.would_deny = Some(denial.describe().to_string());
                    self.log.write(record(&base, out, time, started.elapsed()));
                    return;
                }
                None => {
                    let why = denial.describe().to_string();
                    self.refuse(stream, target, TlsRefusal::Denied(denial), why)
                        .await
                }
            },
        };
        let base = Record {
            tls: Some(fields(TlsMode::Refused)),
            ..base
        };
        self.log.write(record(&base, out, time, started.elapsed()));
    }

    /// The handshake with the workload, on the kTLS path where it can take
    /// it: the terminated connection, or the error (None: the deadline
    /// `within` passed).
    async fn accept_workload(
        &self,
        stream: TcpStream,
        config: Arc<rustls::ServerConfig>,
        within: Duration,
    ) -> Result<Accepted, Option<std::io::Error>> {
        match self.ktls_path(&stream) {
            Ok(()) => handshake::accept(stream, config, within)
                .await
                .map(|k| Accepted::Kernel(Box::new(k)))
                .map_err(|e| match e {
                    handshake::Error::Timeout(_) => None,
                    e => Some(std::io::Error::other(e.to_string())),
                }),
            Err(why) => {
                let accept = tokio_rustls::TlsAcceptor::from(config).accept(stream);
                match tokio::time::timeout(within, accept).await {
                    Ok(Ok(tls)) => Ok(Accepted::Rustls(Box::new(tls), why)),
                    Ok(Err(e)) => Err(Some(e)),
                    Err(_) => Err(None),
                }
            }
        }
    }

    /// Terminates the workload's TLS with a leaf for its SNI (or, without
    /// one, its destination IP), then serves the requests inside, judged
    /// by the interception rules.
    async fn intercept(
        &self,
        stream: TcpStream,
        target: &Target,
        base: Record,
        hello: ClientHello,
        (time, started): (SystemTime, Instant),
    ) {
        let refused = Record {
            tls: Some(tls_fields(TlsMode::Refused, hello.sni.as_ref())),
            ..base.clone()
        };
        let config = match self.intercept_config(&hello, target) {
            Ok(c) => c,
            Err((why, reason)) => {
                let out = self.refuse(stream, target, why, reason).await;
                self.log
                    .write(record(&refused, out, time, started.elapsed()));
                return;
            }
        };
        let within = self.settings.handshake_timeout;
        let began = Instant::now();
        let accepted = match self.accept_workload(stream, config, within).await {
            Ok(a) => a,
            Err(e) => {
                let out = handshake_failed(e, (within, began.elapsed()));
                self.log
                    .write(record(&refused, out, time, started.elapsed()));
                return;
            }
        };
        metrics::tls_handshake(TlsSide::Downstream, Handshake::Ok, began.elapsed());
        let mut fields = tls_fields(TlsMode::Intercept, hello.sni.as_ref());
        let target = Target {
            tls: Some(Terminated { sni: hello.sni }),
            policy: target.policy.clone(),
            ..*target
        };
        let path = match &accepted {
            Accepted::Kernel(k) => {
                describe(
                    &mut fields,
                    Some(k.info().version),
                    k.info().alpn.as_deref(),
                );
                Ok(())
            }
            Accepted::Rustls(tls, why) => {
                let conn = tls.get_ref().1;
                describe(&mut fields, conn.protocol_version(), conn.alpn_protocol());
                Err(*why)
            }
        };
        metrics::ktls_connection(TlsSide::Downstream, path);
        fields.ktls = path.is_ok();
        let base = Record {
            tls: Some(fields),
            ..base
        };
        match accepted {
            Accepted::Kernel(k) => {
                let down = BufStream::new(*k, self.settings.pipes.requests);
                self.serve_stream(down, &target, base).await;
            }
            Accepted::Rustls(tls, _) => {
                self.serve_stream(BufStream::new(*tls, None), &target, base)
                    .await;
            }
        }
    }

    /// Whether a connection's TLS goes to the kernel after the handshake
    /// (TCP_ULP "tls" is set on `tcp` now); Err: why it stays in rustls.
    pub(super) fn ktls_path(&self, tcp: &TcpStream) -> Result<(), CopyReason> {
        match self.tls.ktls {
            Ktls::Off(why) => Err(why),
            Ktls::On => handshake::prepare(tcp).map_err(|_| CopyReason::Socket),
        }
    }

    /// The server configuration for this hello: its leaf, made or cached.
    /// Err: the refusal to answer with.
    fn intercept_config(
        &self,
        hello: &ClientHello,
        target: &Target,
    ) -> Result<Arc<rustls::ServerConfig>, (TlsRefusal, String)> {
        if !alpn_acceptable(&hello.alpn) {
            let offered: Vec<String> = hello
                .alpn
                .iter()
                .map(|p| String::from_utf8_lossy(p).into_owned())
                .collect();
            let reason = format!(
                "the client offers only {} by ALPN; the proxy speaks http/1.1 (HTTP/2 is not built)",
                offered.join(", ")
            );
            return Err((TlsRefusal::NoApplicationProtocol, reason));
        }
        let Some(ic) = self.tls.intercept.as_ref() else {
            let reason = "interception is not set up (tls.ca)".to_string();
            return Err((TlsRefusal::Unavailable, reason));
        };
        let name = match &hello.sni {
            Some(sni) => LeafName::Dns(sni.clone()),
            None => LeafName::Ip(canonical_ip(target.orig.dst.ip())),
        };
        let leaf = ic.leaves.get(&name);
        metrics::tls_leaves(ic.leaves.len(), ic.leaves.issued());
        match leaf {
            Ok(leaf) => Ok(intercept_config(leaf, &ic.shared)),
            Err(e) => Err((TlsRefusal::Unavailable, format!("no leaf certificate: {e}"))),
        }
    }

    /// Answers the ClientHello with the alert `why` calls for, and closes.
    async fn refuse(
        &self,
        mut stream: TcpStream,
        target: &Target,
        why: TlsRefusal,
        reason: String,
    ) -> Outcome {
        metrics::tls_refused(&target.policy, why);
        let mut out = Outcome::new(0);
        let (verdict, flag, alert) = match why {
            TlsRefusal::Denied(d) => (Verdict::Denied, Flag::RBAC, alert_for(d)),
            TlsRefusal::DecodeError => (Verdict::Error, Flag::DPE, AlertDescription::DecodeError),
            TlsRefusal::NoApplicationProtocol => (
                Verdict::Error,
                Flag::DPE,
                AlertDescription::NoApplicationProtocol,
            ),
            TlsRefusal::Unavailable => (Verdict::Error, Flag::DPE, AlertDescription::InternalError),
        };
        out.verdict = verdict;
        out.flags.push(flag);
        out.reason = Some(format!("TLS: {reason} (alert {alert:?})"));
        match send_alert(&mut stream, alert).await {
            Ok(()) => out.bytes_sent = alert_record(alert).len() as u64,
            Err(_) => out.flags.push(Flag::DC),
        }
        out
    }

    /// Splices the connection, ClientHello included, to its original
    /// destination until both sides have closed.
    async fn pass_through(
        &self,
        stream: TcpStream,
        target: &Target,
        settings: crate::config::UpstreamConfig,
    ) -> Outcome {
        let direct = Route {
            dst: target.orig.dst,
            tls: None,
        };
        let key = pool_key(target, settings.source, &direct);
        let mut out = Outcome::new(0);
        out.upstream_attempts = 1;
        let conn = match self
            .new_upstream(&key, false, settings.connect_timeout, &mut out)
            .await
        {
            Ok(c) => c,
            Err(e) => {
                // The workload sees what a direct connection to a dead
                // origin would show once connected: a reset.
                reset(&stream);
                out.flags.push(Flag::UF);
                out.reason = Some(e.to_string());
                return out;
            }
        };
        metrics::tls_passthrough(&target.policy);
        out.verdict = Verdict::Allowed;
        out.upstream_id = Some(conn.id);
        let down = BufStream::new(stream, self.settings.pipes.requests);
        let t = tunnel(down, conn.stream, self.settings.client_idle_timeout).await;
        count_tunneled(&t);
        metrics::upstream_closed(CloseReason::ServerClose);
        out.bytes_received = t.forth.total();
        out.bytes_sent = t.back.total();
        if let Err(e) = t.end {
            out.flags.push(Flag::UC);
            out.reason = Some(format!("pass-through ended: {e}"));
        }
        out
    }
}

/// A workload's TLS, terminated.
enum Accepted {
    Kernel(Box<KtlsStream>),
    /// In rustls, for this reason.
    Rustls(Box<tokio_rustls::server::TlsStream<TcpStream>>, CopyReason),
}

/// Fills in the negotiated version and protocol.
fn describe(fields: &mut TlsFields, version: Option<rustls::ProtocolVersion>, alpn: Option<&[u8]>) {
    fields.tls_version = version.map(|v| format!("{v:?}"));
    fields.alpn = alpn.map(|p| String::from_utf8_lossy(p).into_owned());
}

/// The access log's TLS fields of a connection whose ClientHello named
/// `sni`.
fn tls_fields(tls: TlsMode, sni: Option<&String>) -> TlsFields {
    TlsFields {
        tls,
        sni: sni.cloned(),
        tls_version: None,
        alpn: None,
        ktls: false,
    }
}

/// Counts and describes a handshake with the workload that did not finish
/// after `took`: it failed with `error`, or (None) its deadline `within`
/// passed.
fn handshake_failed(
    error: Option<std::io::Error>,
    (within, took): (Duration, Duration),
) -> Outcome {
    let mut out = Outcome::new(0);
    let (result, flag, reason) = match error {
        None => (
            Handshake::Timeout,
            Flag::HT,
            format!("TLS handshake with the workload not done within {within:?}"),
        ),
        Some(e) => (
            Handshake::Failed,
            Flag::DPE,
            format!("TLS handshake with the workload failed: {e}"),
        ),
    };
    metrics::tls_handshake(TlsSide::Downstream, result, took);
    out.flags.push(flag);
    out.reason = Some(reason);
    out
}

/// The alert a refusal sends: a missing name is `unrecognized_name`
/// (RFC 6066 3), the rest `access_denied`.
fn alert_for(d: TlsDenial) -> AlertDescription {
    match d {
        TlsDenial::NoServerName => AlertDescription::UnrecognisedName,
        TlsDenial::NoTlsRule | TlsDenial::NameNotAllowed | TlsDenial::Encrypted => {
            AlertDescription::AccessDenied
        }
    }
}

/// Closes with a reset rather than a FIN (SO_LINGER 0).
fn reset(stream: &TcpStream) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    let _ =
        nix::sys::socket::setsockopt(&stream.as_fd(), nix::sys::socket::sockopt::Linger, &linger);
}
