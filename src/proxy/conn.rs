//! One downstream connection: requests in order (keep-alive and pipelining),
//! each checked against policy and forwarded, every outcome logged.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use tokio::net::TcpStream;

use super::http::{
    local_response, parse_request_head, parse_response_head, prepare_request, prepare_response,
    raw_host, write_request, write_response, BodyFraming, ChunkedScanner, ConnectionHeader,
    Request, RequestHead, Response, Version, MAX_INTERIM_RESPONSES,
};
use super::retry::{self, Failure, RequestFacts, RetryReason};
use super::stream::{tunnel, BufStream, Dest, HeadReadError, HeadWait};
use super::upstream::{self, retire, Bind, ConnectError, PoolKey, SourceKey};
use super::Proxy;
use crate::accesslog::{flags, Record};
use crate::bpf::OrigDst;
use crate::config::{SourceMode, UpstreamConfig};
use crate::metrics::{self, CloseReason};
use crate::policy::{Decision, RequestView};

/// Largest body of a denied request that is read and dropped to keep the
/// connection; larger (or chunked, or expected-100) bodies close it.
const DENIED_BODY_DRAIN_LIMIT: u64 = 1024 * 1024;

/// What happens to the downstream connection after a request.
enum Next {
    Keep,
    Close,
    /// Protocol upgraded: splice the client to this upstream connection.
    Tunnel(BufStream),
}

/// The client went away mid-exchange: the upstream connection is in an
/// unknown state, so it is closed too.
fn client_gone(rec: &mut Record, up: upstream::UpConn) -> Next {
    rec.flags.push(flags::DC);
    retire(up, CloseReason::Error);
    Next::Close
}

/// Where a request goes, and from whom.
/// How far the bytes read from a workload may run ahead of what the kernel
/// was told (sockmap engine): well under SW_MSG_UNREAD_LIMIT (256 KiB), so
/// that a connection of small exchanges keeps its redirect, while one that
/// sends more than the proxy reads turns to TCP.
const CONSUMED_REPORT_STEP: u64 = 64 * 1024;

pub(super) struct Target {
    pub orig: OrigDst,
    /// The workload's address as the listener saw it.
    pub client: SocketAddr,
    /// The proxy address it reached.
    pub local: SocketAddr,
}

/// An allowed request, with what policy allows it to do.
struct Allowed<'a> {
    req: &'a Request,
    /// The offered Upgrade protocols the rule allows (forwarded).
    upgrades: &'a [String],
    settings: UpstreamConfig,
}

/// Settings of one upstream attempt.
struct AttemptCtx {
    settings: UpstreamConfig,
    /// A retry: fresh connection and fresh source tuple, never the pool.
    fresh: bool,
    /// Treat a 503 as a retryable failure instead of forwarding it.
    intercept_503: bool,
}

/// An attempt that failed before anything reached the client.
struct AttemptFailure {
    failure: Failure,
    /// What to answer if it is not retried.
    reply: LocalReply,
}

/// The upstream connection ended before any response byte: closes it and
/// describes the failure (retryable as reset-before-response).
fn reset_failure(
    up: upstream::UpConn,
    why: CloseReason,
    detail: String,
    close: bool,
) -> AttemptFailure {
    let reused = up.reused;
    retire(up, why);
    AttemptFailure {
        failure: Failure::ResetBeforeResponse {
            reused,
            detail: detail.clone(),
        },
        reply: LocalReply::error(503, flags::UC, detail, close),
    }
}

/// What a failed response-head read means: Ok(the final answer), or
/// Err(detail) when the connection died before a response byte.
fn head_error_reply(
    e: HeadReadError,
    timeout: std::time::Duration,
    close: bool,
) -> Result<LocalReply, String> {
    match e {
        HeadReadError::Io(e) => Err(format!(
            "upstream connection failed: {}",
            metrics::errno_name(&e)
        )),
        HeadReadError::Timeout => Ok(LocalReply::error(
            504,
            flags::UT,
            format!("upstream request timeout: no response within {timeout:?}"),
            close,
        )),
        HeadReadError::Head(e) => Ok({
            metrics::http_rejected(metrics::Side::Response, e.kind());
            LocalReply::error(
                502,
                flags::UPE,
                format!("bad upstream response: {e}"),
                close,
            )
        }),
        HeadReadError::Truncated => Ok(LocalReply::error(
            502,
            flags::UPE,
            "bad upstream response: connection closed inside the response head".into(),
            close,
        )),
    }
}

/// A response the proxy writes itself.
struct LocalReply {
    status: u16,
    flag: &'static str,
    verdict: &'static str,
    header: (&'static str, String),
    body: String,
    /// Close the downstream connection after it.
    close: bool,
}

impl LocalReply {
    fn error(status: u16, flag: &'static str, reason: String, close: bool) -> LocalReply {
        LocalReply {
            status,
            flag,
            verdict: "error",
            body: format!("sockwarden: {reason}\n"),
            header: ("sockwarden-error", reason),
            close,
        }
    }
}

impl Proxy {
    pub(super) async fn handle(
        self: Arc<Self>,
        id: u64,
        stream: TcpStream,
        peer: SocketAddr,
        local: SocketAddr,
    ) {
        metrics::downstream_accepted();
        let mut down = BufStream::new(stream, self.settings.pipes.requests);
        if self.settings.sockmap {
            down = down.linked();
        }
        let mut rec = Record {
            downstream_id: id,
            client: peer.to_string(),
            ..Record::default()
        };
        match self.kernel.take_orig_dst(peer, local) {
            Some(orig) => {
                let target = Target {
                    orig,
                    client: peer,
                    local,
                };
                let upgraded = self.serve_requests(&mut down, &target, rec).await;
                if self.settings.sockmap {
                    self.kernel.forget_consumed(peer, local);
                }
                if let Some(up) = upgraded {
                    match tunnel(down, up, self.settings.client_idle_timeout).await {
                        Ok((sent, received)) => {
                            tracing::debug!(id, sent, received, "upgraded connection closed")
                        }
                        Err(e) => tracing::debug!(id, error = %e, "upgraded connection failed"),
                    }
                    metrics::upstream_closed(CloseReason::ServerClose);
                    metrics::downstream_closed();
                    return;
                }
            }
            None => {
                metrics::orig_dst_missing();
                rec.time = std::time::SystemTime::now();
                let reply = LocalReply::error(
                    421,
                    flags::NR,
                    "no original destination: this connection was not redirected by sockwarden"
                        .into(),
                    true,
                );
                let started = Instant::now();
                self.reply(&mut down, &mut rec, reply).await;
                rec.duration_ms = started.elapsed().as_secs_f64() * 1e3;
                self.log.write(rec);
            }
        }
        down.shutdown().await;
        metrics::downstream_closed();
    }

    /// Serves requests until the connection ends; returns the upstream side
    /// of an upgraded connection, for the caller to tunnel to.
    async fn serve_requests(
        &self,
        down: &mut BufStream,
        target: &Target,
        base: Record,
    ) -> Option<BufStream> {
        let orig = &target.orig;
        let policy = self.policies.get(orig.policy_id);
        let policy_name = policy.map_or_else(|| "(unknown)".to_string(), |p| p.name.clone());
        let mut requests = metrics::RequestCounter::new(&policy_name);
        let base = Record {
            policy: Some(policy_name.clone()),
            cgroup: policy.map(|p| p.cgroup.to_string()),
            cgroup_id: Some(orig.cgroup_id),
            original_dst: Some(orig.dst.to_string()),
            ..base
        };
        let mut reported = 0;
        loop {
            if self.settings.sockmap && down.read_total() - reported >= CONSUMED_REPORT_STEP {
                reported = down.read_total();
                self.kernel
                    .report_consumed(target.client, target.local, reported);
            }
            let wait = HeadWait {
                idle: self.settings.client_idle_timeout,
                idle_is_eof: true,
                head: Some(self.settings.request_head_timeout),
            };
            let read = down.read_head_within(parse_request_head, wait).await;
            let started = Instant::now();
            let mut rec = Record {
                time: std::time::SystemTime::now(),
                ..base.clone()
            };
            let next = match read {
                Ok(None) => return None,
                Ok(Some((head, head_len))) => {
                    rec.bytes_received = head_len as u64;
                    self.exchange(down, head, target, &policy_name, &mut rec)
                        .await
                }
                Err(HeadReadError::Head(e)) => {
                    metrics::http_rejected(metrics::Side::Request, e.kind());
                    let reply =
                        LocalReply::error(e.request_status(), flags::DPE, e.to_string(), true);
                    self.reply(down, &mut rec, reply).await
                }
                Err(HeadReadError::Timeout) => {
                    metrics::timeout(metrics::Timeout::RequestHead);
                    let reason = format!(
                        "request head timeout: head not complete within {:?}",
                        self.settings.request_head_timeout
                    );
                    let reply = LocalReply::error(408, flags::HT, reason, true);
                    self.reply(down, &mut rec, reply).await
                }
                Err(HeadReadError::Truncated | HeadReadError::Io(_)) => return None,
            };
            rec.duration_ms = started.elapsed().as_secs_f64() * 1e3;
            requests.record(rec.verdict, rec.status);
            self.log.write(rec);
            match next {
                Next::Keep => {}
                Next::Close => return None,
                Next::Tunnel(up) => return Some(up),
            }
        }
    }

    /// Writes a local reply.
    async fn reply(&self, down: &mut BufStream, rec: &mut Record, r: LocalReply) -> Next {
        let bytes = local_response(r.status, &[(r.header.0, &r.header.1)], &r.body, r.close);
        rec.status = r.status;
        rec.verdict = r.verdict;
        rec.flags.push(r.flag);
        if r.header.0 == "sockwarden-error" {
            rec.reason = Some(r.header.1);
        }
        match down.write_all(&bytes).await {
            Ok(()) if !r.close => {
                rec.bytes_sent += bytes.len() as u64;
                Next::Keep
            }
            Ok(()) => {
                rec.bytes_sent += bytes.len() as u64;
                Next::Close
            }
            Err(_) => {
                rec.flags.push(flags::DC);
                Next::Close
            }
        }
    }

    /// One request: checked and normalized, judged, then denied or forwarded.
    async fn exchange(
        &self,
        down: &mut BufStream,
        head: RequestHead,
        target: &Target,
        policy_name: &str,
        rec: &mut Record,
    ) -> Next {
        let orig = &target.orig;
        rec.method = Some(head.method.clone());
        rec.host = raw_host(&head);
        rec.path = head.target.split('?').next().map(str::to_string);
        let req = match prepare_request(head) {
            Ok(r) => r,
            Err(e) => {
                metrics::http_rejected(metrics::Side::Request, e.kind());
                let reply = LocalReply::error(e.request_status(), flags::DPE, e.to_string(), true);
                return self.reply(down, rec, reply).await;
            }
        };
        rec.host = req.host.clone();
        rec.path = Some(req.path.clone());
        let fields = req.fields();
        let view = RequestView {
            method: &req.method,
            path: &req.path,
            host: req.host.as_deref(),
            headers: &fields,
        };
        match self.policies.evaluate(orig.policy_id, orig.dst, &view) {
            Decision::Deny { reason } => {
                let drained = self.drain_denied_body(down, &req, rec).await;
                let reply = LocalReply {
                    status: 403,
                    flag: flags::RBAC,
                    verdict: "denied",
                    header: ("sockwarden-denied", policy_name.to_string()),
                    body: format!(
                        "sockwarden: request denied by policy {policy_name:?}: {}\n",
                        reason.describe()
                    ),
                    close: req.close || !drained,
                };
                rec.reason = Some(reason.describe().to_string());
                self.reply(down, rec, reply).await
            }
            Decision::Allow { rule, entry } => {
                let upgrades =
                    self.policies
                        .allowed_upgrades(orig.policy_id, rule, entry, &req.upgrade);
                if upgrades.len() < req.upgrade.len() {
                    metrics::upgrade_removed(policy_name);
                    rec.flags.push(flags::UPR);
                }
                let settings = self
                    .policies
                    .get(orig.policy_id)
                    .and_then(|p| p.rules.get(rule))
                    .map(|r| r.upstream)
                    .unwrap_or_default();
                let allowed = Allowed {
                    req: &req,
                    upgrades: &upgrades,
                    settings,
                };
                self.forward(down, &allowed, target, rec).await
            }
        }
    }

    /// Reads and drops a denied request's body when that is cheap; returns
    /// whether the connection is still in a known state.
    async fn drain_denied_body(
        &self,
        down: &mut BufStream,
        req: &Request,
        rec: &mut Record,
    ) -> bool {
        let framing = req.framing;
        match framing {
            BodyFraming::None => true,
            BodyFraming::Length(n) if n <= DENIED_BODY_DRAIN_LIMIT && !req.expect_continue => {
                match down
                    .forward_body(Dest::Discard, framing, self.settings.request_head_timeout)
                    .await
                {
                    Ok(n) => {
                        rec.bytes_received += n.read;
                        true
                    }
                    Err(_) => false,
                }
            }
            _ => false,
        }
    }

    /// Forwards an allowed request and its response, retrying what is safe
    /// to retry while the budget allows.
    async fn forward(
        &self,
        down: &mut BufStream,
        allowed: &Allowed<'_>,
        target: &Target,
        rec: &mut Record,
    ) -> Next {
        let _active = self.budget.request();
        let settings = allowed.settings;
        let facts = RequestFacts {
            method: &allowed.req.method,
            has_body: allowed.req.has_body(),
        };
        let mut failures: Vec<String> = Vec::new();
        let mut retries = 0u32;
        let mut idle_race_used = false;
        let mut _permit = None;
        let mut fresh = false;
        loop {
            let ctx = AttemptCtx {
                settings,
                fresh,
                intercept_503: retry::decide(
                    &settings.retries,
                    &Failure::Status503,
                    facts,
                    retries,
                    idle_race_used,
                )
                .is_some(),
            };
            let failed = match self.attempt(down, allowed, target, &ctx, rec).await {
                Ok(next) => return next,
                Err(f) => f,
            };
            failures.push(failed.failure.describe());
            let decision = retry::decide(
                &settings.retries,
                &failed.failure,
                facts,
                retries,
                idle_race_used,
            );
            let permit = decision.and_then(|_| self.budget.try_retry());
            let (Some(reason), Some(permit)) = (decision, permit) else {
                if decision.is_some() {
                    metrics::retry_budget_exhausted();
                    failures.push("retry budget exhausted".into());
                }
                return self
                    .fail_after_attempts(down, rec, failed.reply, &failures)
                    .await;
            };
            _permit = Some(permit);
            metrics::upstream_retry(reason.as_str());
            if reason == RetryReason::IdleRace {
                idle_race_used = true;
            } else {
                let jitter: f64 = rand::random();
                tokio::time::sleep(retry::backoff(settings.retries.backoff, retries, jitter)).await;
                retries += 1;
            }
            fresh = true;
        }
    }

    /// The final answer after failed attempts: the last failure's reply,
    /// naming every attempt when there was more than one (flag URX).
    async fn fail_after_attempts(
        &self,
        down: &mut BufStream,
        rec: &mut Record,
        mut reply: LocalReply,
        failures: &[String],
    ) -> Next {
        if rec.upstream_attempts > 1 {
            rec.flags.push(flags::URX);
            let summary = format!(
                "{} (after {} attempts: {})",
                reply.header.1,
                rec.upstream_attempts,
                failures.join("; ")
            );
            reply.body = format!("sockwarden: {summary}\n");
            reply.header.1 = summary;
        }
        self.reply(down, rec, reply).await
    }

    /// Chooses the source of an upstream connection and its pool key.
    fn source_for(&self, target: &Target, mode: SourceMode, fresh: bool) -> (PoolKey, Bind) {
        let client = target.client;
        let dst = target.orig.dst;
        let key = |source| PoolKey {
            dst,
            policy: target.orig.policy_id,
            source,
        };
        // A workload address of the other family cannot be preserved.
        let mode = if client.is_ipv4() == dst.is_ipv4() {
            mode
        } else {
            SourceMode::Node
        };
        match mode {
            SourceMode::Node => (key(SourceKey::Node), Bind::Node),
            SourceMode::PreserveIp => (key(SourceKey::Ip(client.ip())), Bind::Ip(client.ip())),
            SourceMode::PreserveIpPort => {
                let taken = !fresh
                    && !self.settings.skip_tuple_check
                    && self.kernel.tuple_in_use(self.netns_cookie, client, dst);
                if taken {
                    metrics::source_port_fallback();
                }
                let bind = if fresh || taken {
                    Bind::Ip(client.ip())
                } else {
                    Bind::IpPort(client)
                };
                (key(SourceKey::IpPort(client)), bind)
            }
        }
    }

    /// Opens an upstream connection; an EADDRNOTAVAIL on an exact port is
    /// tried once more on a kernel-picked port (never the same 4-tuple).
    async fn open(
        &self,
        dst: SocketAddr,
        bind: Bind,
        settings: &UpstreamConfig,
        rec: &mut Record,
    ) -> Result<upstream::UpConn, ConnectError> {
        let kernel = self.kernel.as_ref();
        let pipe = self.settings.pipes.responses;
        match upstream::connect(dst, bind, settings.connect_timeout, kernel, pipe).await {
            Err(e) if e.errno() == "EADDRNOTAVAIL" => {
                let Bind::IpPort(addr) = bind else {
                    return Err(e);
                };
                rec.upstream_attempts += 1;
                let bind = Bind::Ip(addr.ip());
                upstream::connect(dst, bind, settings.connect_timeout, kernel, pipe).await
            }
            other => other,
        }
    }

    /// One upstream attempt. Err: it failed before anything reached the
    /// client, and may be retried.
    async fn attempt(
        &self,
        down: &mut BufStream,
        allowed: &Allowed<'_>,
        target: &Target,
        ctx: &AttemptCtx,
        rec: &mut Record,
    ) -> Result<Next, AttemptFailure> {
        let req = allowed.req;
        let settings = &ctx.settings;
        let has_body = req.has_body();
        rec.upstream_attempts += 1;
        let (key, bind) = self.source_for(target, settings.source, ctx.fresh);
        let pooled = if ctx.fresh {
            None
        } else {
            self.pool.checkout(key)
        };
        let mut up = match pooled {
            Some(c) => c,
            None => self
                .open(target.orig.dst, bind, settings, rec)
                .await
                .map_err(|e| AttemptFailure {
                    failure: Failure::Connect(e.errno()),
                    reply: LocalReply::error(503, flags::UF, e.to_string(), req.close || has_body),
                })?,
        };
        rec.upstream_id = Some(up.id);

        let mut out = Vec::with_capacity(1024);
        write_request(req, allowed.upgrades, &mut out);
        if let Err(e) = up.stream.write_all(&out).await {
            let detail = format!(
                "upstream connection failed while sending the request: {}",
                metrics::errno_name(&e)
            );
            return Err(reset_failure(
                up,
                CloseReason::Error,
                detail,
                req.close || has_body,
            ));
        }

        let expect = has_body && req.expect_continue;
        let mut body_sent = !has_body;
        if has_body && !expect {
            if let Err(reply) = self
                .send_request_body(down, &mut up, req.framing, *settings, rec)
                .await
            {
                return Ok(self.give_up(down, rec, up, reply).await);
            }
            body_sent = true;
        }

        // Interim responses, then the final head. A client that expects 100
        // may send its body without waiting (RFC 9110 10.1.1), or leave:
        // either shows as the downstream socket turning readable, and the
        // body is then forwarded (or found truncated) at once.
        let mut interim = 0;
        let resp = loop {
            let wait_head =
                up.stream
                    .read_head(parse_response_head, settings.request_timeout, false);
            let read = if expect && !body_sent {
                let client_moved = async {
                    if down.buffered().is_empty() {
                        let _ = down.get_ref().readable().await;
                    }
                };
                tokio::select! {
                    read = wait_head => read,
                    () = client_moved => {
                        if let Err(reply) = self
                            .send_request_body(down, &mut up, req.framing, *settings, rec)
                            .await
                        {
                            return Ok(self.give_up(down, rec, up, reply).await);
                        }
                        body_sent = true;
                        continue;
                    }
                }
            } else {
                wait_head.await
            };
            let close = req.close || !body_sent;
            let head = match read {
                Ok(Some((head, _))) => head,
                Ok(None) => {
                    let detail = "upstream closed the connection before responding".to_string();
                    return Err(reset_failure(up, CloseReason::ServerClose, detail, close));
                }
                Err(e) => match head_error_reply(e, settings.request_timeout, close) {
                    Ok(reply) => return Ok(self.give_up(down, rec, up, Some(reply)).await),
                    Err(detail) => {
                        return Err(reset_failure(up, CloseReason::Error, detail, close))
                    }
                },
            };
            let resp = match prepare_response(&req.method, head) {
                Ok(r) => r,
                Err(e) => {
                    metrics::http_rejected(metrics::Side::Response, e.kind());
                    let reply = LocalReply::error(
                        502,
                        flags::UPE,
                        format!("bad upstream response: {e}"),
                        true,
                    );
                    return Ok(self.give_up(down, rec, up, Some(reply)).await);
                }
            };
            if resp.is_interim() {
                interim += 1;
                if interim > MAX_INTERIM_RESPONSES {
                    let reason = format!(
                        "bad upstream response: more than {MAX_INTERIM_RESPONSES} interim responses"
                    );
                    let reply = LocalReply::error(502, flags::UPE, reason, true);
                    return Ok(self.give_up(down, rec, up, Some(reply)).await);
                }
            }
            match resp.status {
                503 if ctx.intercept_503 => {
                    retire(up, CloseReason::Error);
                    return Err(AttemptFailure {
                        failure: Failure::Status503,
                        reply: LocalReply::error(
                            503,
                            flags::UC,
                            "upstream answered 503".into(),
                            close,
                        ),
                    });
                }
                101 if resp.upgrade_matches(allowed.upgrades) => {
                    let mut out = Vec::new();
                    write_response(&resp, ConnectionHeader::Upgrade, &mut out);
                    rec.status = 101;
                    rec.verdict = "allowed";
                    if down.write_all(&out).await.is_err() {
                        return Ok(client_gone(rec, up));
                    }
                    rec.bytes_sent += out.len() as u64;
                    return Ok(Next::Tunnel(up.stream));
                }
                101 => {
                    let reason = if allowed.upgrades.is_empty() {
                        "bad upstream response: 101 without an allowed Upgrade request".to_string()
                    } else {
                        "bad upstream response: 101 to a protocol that was not offered".to_string()
                    };
                    let reply = LocalReply::error(502, flags::UPE, reason, true);
                    return Ok(self.give_up(down, rec, up, Some(reply)).await);
                }
                100 if expect && !body_sent => {
                    if req.version == Version::Http11
                        && down
                            .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
                            .await
                            .is_err()
                    {
                        return Ok(client_gone(rec, up));
                    }
                    if let Err(reply) = self
                        .send_request_body(down, &mut up, req.framing, *settings, rec)
                        .await
                    {
                        return Ok(self.give_up(down, rec, up, reply).await);
                    }
                    body_sent = true;
                }
                _ if resp.is_interim() => {
                    // Interim responses go to HTTP/1.1 clients only.
                    if req.version == Version::Http11 {
                        let mut out = Vec::new();
                        write_response(&resp, ConnectionHeader::None, &mut out);
                        if down.write_all(&out).await.is_err() {
                            return Ok(client_gone(rec, up));
                        }
                    }
                }
                _ => break resp,
            }
        };

        Ok(self
            .deliver(down, req, up, key, resp, body_sent, settings, rec)
            .await)
    }

    /// Sends the final response to the client and decides what happens to
    /// the upstream connection.
    #[allow(clippy::too_many_arguments)]
    async fn deliver(
        &self,
        down: &mut BufStream,
        req: &Request,
        mut up: upstream::UpConn,
        key: PoolKey,
        mut resp: Response,
        body_sent: bool,
        settings: &UpstreamConfig,
        rec: &mut Record,
    ) -> Next {
        let resp_framing = resp.framing;
        // An HTTP/1.0 client gets a chunked body decoded, delimited by the
        // close (RFC 9112 6.1).
        let dechunk = req.version == Version::Http10 && resp.dechunk_for_http10();
        // Without 100-continue the client may or may not send the body
        // now: the connection's framing is unknown, so it ends here.
        let close_down =
            req.close || !body_sent || resp_framing == BodyFraming::UntilClose || dechunk;
        let conn_header = if close_down {
            ConnectionHeader::Close
        } else if req.version == Version::Http10 {
            ConnectionHeader::KeepAlive
        } else {
            ConnectionHeader::None
        };
        let mut out = Vec::with_capacity(1024);
        write_response(&resp, conn_header, &mut out);
        rec.status = resp.status;
        rec.verdict = "allowed";
        // A small body that came with the head leaves with it, in one write.
        let (rest, carried) = match resp_framing {
            BodyFraming::Length(n) if up.stream.take_buffered(n, &mut out) => {
                (BodyFraming::None, n)
            }
            other => (other, 0),
        };
        if down.write_all(&out).await.is_err() {
            return client_gone(rec, up);
        }
        rec.bytes_sent += out.len() as u64;
        if carried > 0 {
            metrics::forwarded(metrics::Direction::Downstream, carried, 0);
        }
        let idle = settings.request_timeout;
        let forwarded = if dechunk {
            let dechunking = ChunkedScanner::dechunking();
            up.stream
                .forward_chunked(Dest::Stream(down), dechunking, idle)
                .await
        } else {
            up.stream.forward_body(Dest::Stream(down), rest, idle).await
        };
        match forwarded {
            Ok(n) => {
                metrics::forwarded(metrics::Direction::Downstream, n.copied, n.spliced);
                rec.bytes_sent += n.total();
            }
            Err(e) => {
                if e.is_stall() {
                    rec.flags.push(flags::SI);
                    metrics::timeout(metrics::Timeout::ResponseBody);
                }
                if e.is_source_side() {
                    rec.flags.push(flags::UC);
                    rec.reason = Some(format!("upstream response body: {e}"));
                } else {
                    rec.flags.push(flags::DC);
                }
                retire(up, CloseReason::Error);
                return Next::Close;
            }
        }

        let close_reason = if resp_framing == BodyFraming::UntilClose {
            Some(CloseReason::ServerClose)
        } else if resp.close {
            Some(CloseReason::ConnectionCloseHeader)
        } else if !body_sent {
            // The server may still be waiting for the body we never sent.
            Some(CloseReason::Error)
        } else if !up.stream.buffered().is_empty() {
            // Bytes past the response's framing (a body on a HEAD, 204 or
            // 304, or more than its Content-Length): never read as the next
            // response.
            Some(CloseReason::UnsolicitedBytes)
        } else {
            up.complete(resp.keep_alive, settings.max_requests_per_connection)
                .err()
        };
        match close_reason {
            Some(r) => retire(up, r),
            None => self.pool.checkin(key, up, settings.idle_timeout),
        }
        if close_down {
            Next::Close
        } else {
            Next::Keep
        }
    }

    /// Gives up on an exchange whose upstream connection cannot be kept:
    /// closes it and answers the client with `reply`, or just closes.
    async fn give_up(
        &self,
        down: &mut BufStream,
        rec: &mut Record,
        up: upstream::UpConn,
        reply: Option<LocalReply>,
    ) -> Next {
        retire(up, CloseReason::Error);
        match reply {
            Some(r) => self.reply(down, rec, r).await,
            None => Next::Close,
        }
    }

    /// Sends the request body upstream. Err(None): the client broke off
    /// (nothing to answer); Err(Some(reply)): the upstream failed.
    async fn send_request_body(
        &self,
        down: &mut BufStream,
        up: &mut upstream::UpConn,
        framing: BodyFraming,
        settings: UpstreamConfig,
        rec: &mut Record,
    ) -> Result<(), Option<LocalReply>> {
        match down
            .forward_body(
                Dest::Stream(&mut up.stream),
                framing,
                settings.request_timeout,
            )
            .await
        {
            Ok(n) => {
                metrics::forwarded(metrics::Direction::Upstream, n.copied, n.spliced);
                rec.bytes_received += n.read;
                Ok(())
            }
            Err(e) if e.is_source_side() => {
                if e.is_stall() {
                    rec.flags.push(flags::SI);
                    metrics::timeout(metrics::Timeout::RequestBody);
                }
                rec.flags.push(flags::DC);
                rec.reason = Some(format!("request body: {e}"));
                if let super::stream::BodyError::Chunk(_) = e {
                    // A malformed chunked body is the client's protocol error.
                    return Err(Some(LocalReply::error(
                        400,
                        flags::DPE,
                        e.to_string(),
                        true,
                    )));
                }
                Err(None)
            }
            Err(e) => Err(Some(LocalReply::error(
                503,
                flags::UC,
                format!("upstream connection failed while sending the request body: {e}"),
                true,
            ))),
        }
    }
}
