//! One downstream connection: requests in order (keep-alive and pipelining),
//! each judged by policy and forwarded, every outcome logged.
//!
//! Only I/O lives here: what a head means is decided in
//! [`exchange`](super::exchange). An allowed request's attempt runs through
//! explicit [`Phase`]s: send head, (await continue,) send body, await head,
//! then deliver, or tunnel after a 101. Each request's outcome is an
//! [`Outcome`], turned into its access-log line in one place.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio::net::TcpStream;

use super::exchange::{
    denied_body, plan_request, Awaiting, DeniedBody, Ending, FinalPlan, RequestPlan, ResponseStep,
};
use super::http::{
    local_response, parse_request_head, parse_response_head, prepare_request, prepare_response,
    raw_host, write_request, write_response, BodyFraming, ChunkedScanner, ConnectionHeader,
    Request, RequestHead, Response, ResponseHead,
};
use super::retry::{self, Failure, RequestFacts, RetryReason};
use super::stream::{tunnel, BodyError, BufStream, Dest, HeadReadError, HeadWait};
use super::upstream::{self, bind_for, retire, Bind, ConnectError, PoolKey, SourceKey};
use super::Proxy;
use crate::accesslog::{Flag, Record};
use crate::bpf::OrigDst;
use crate::config::{SourceMode, UpstreamConfig};
use crate::metrics::{self, CloseReason, Errno, Verdict};
use crate::policy::{Decision, RequestView};

/// How far the bytes read from a workload may run ahead of what the kernel
/// was told (sockmap engine): a quarter of the kernel's unread limit, so
/// that a connection of small exchanges keeps its redirect, while one that
/// sends more than the proxy reads turns to TCP.
const CONSUMED_REPORT_STEP: u64 = crate::bpf::limits::MSG_UNREAD_LIMIT / 4;

/// What happens to the downstream connection after a request.
enum Next {
    Keep,
    Close,
    /// Protocol upgraded: splice the client to this upstream connection.
    Tunnel(BufStream),
}

pub(super) struct Target {
    pub orig: OrigDst,
    /// The workload's address as the listener saw it.
    pub client: SocketAddr,
    /// The proxy address it reached.
    pub local: SocketAddr,
}

/// What one request came to: the access-log line's own fields.
struct Outcome {
    method: Option<String>,
    host: Option<String>,
    path: Option<String>,
    status: u16,
    verdict: Verdict,
    flags: Vec<Flag>,
    reason: Option<String>,
    upstream_id: Option<u64>,
    upstream_attempts: u32,
    bytes_received: u64,
    bytes_sent: u64,
}

impl Outcome {
    fn new(head_len: u64) -> Outcome {
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
    fn record(self, base: &Record, time: SystemTime, took: Duration) -> Record {
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
enum ReplyKind {
    /// It could not or would not forward: `sockwarden-error: <reason>`.
    Error { flag: Flag, reason: String },
    /// Policy denied the request: `sockwarden-denied: <policy>`.
    Denied { policy: String, reason: String },
}

/// A response the proxy writes itself.
struct LocalReply {
    status: u16,
    kind: ReplyKind,
    /// Close the downstream connection after it.
    close: bool,
}

impl LocalReply {
    fn error(status: u16, flag: Flag, reason: String, close: bool) -> LocalReply {
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

/// An allowed request on its way upstream, with what policy allows it.
struct Forwarding<'a> {
    down: &'a mut BufStream,
    target: &'a Target,
    req: &'a Request,
    plan: &'a RequestPlan,
    settings: UpstreamConfig,
    out: &'a mut Outcome,
}

/// Settings of one upstream attempt.
struct AttemptCtx {
    /// A retry: fresh connection and fresh source tuple, never the pool.
    fresh: bool,
    /// Treat a 503 as a retryable failure instead of forwarding it.
    intercept_503: bool,
}

/// An upstream connection and the pool it returns to.
struct Leg {
    conn: upstream::UpConn,
    key: PoolKey,
}

/// Where an attempt stands.
enum Phase {
    SendHead,
    /// The body waits for 100 Continue, or for the client to send it anyway.
    AwaitContinue,
    SendBody,
    AwaitHead,
    Deliver(Final),
    Tunnel(Response),
}

/// A final response and how it goes down.
struct Final {
    resp: Response,
    plan: FinalPlan,
    /// The request body was never forwarded.
    body_pending: bool,
}

/// An attempt that failed before anything reached the client.
struct AttemptFailure {
    failure: Failure,
    /// What to answer if it is not retried.
    reply: LocalReply,
}

/// Why an attempt stopped short of a response.
enum Stop {
    /// Nothing reached the client: it may be retried. The upstream
    /// connection is closed for `why`.
    Failed(AttemptFailure, CloseReason),
    /// The upstream connection is closed, and the client gets the reply
    /// (or, with None, just a close).
    GiveUp(Option<LocalReply>),
    /// The client went away mid-exchange: the upstream connection is in an
    /// unknown state, so it is closed too.
    ClientGone,
}

impl Stop {
    /// The connection ended before any response byte (retryable as
    /// reset-before-response).
    fn reset(reused: bool, why: CloseReason, detail: String, close: bool) -> Stop {
        let reply = LocalReply::error(503, Flag::UC, detail.clone(), close);
        let failure = Failure::ResetBeforeResponse { reused, detail };
        Stop::Failed(AttemptFailure { failure, reply }, why)
    }
}

/// A response head read: the response, or why the attempt stops. A
/// connection that died before a response byte is a retryable reset;
/// anything else is answered (`close`: the reply closes the client
/// connection).
fn response_of(
    read: Result<Option<(ResponseHead, usize)>, HeadReadError>,
    method: &str,
    reused: bool,
    close: bool,
    timeout: Duration,
) -> Result<Response, Stop> {
    let bad = |reason: String| Stop::GiveUp(Some(LocalReply::error(502, Flag::UPE, reason, close)));
    let head = match read {
        Ok(Some((head, _))) => head,
        Ok(None) => {
            let detail = "upstream closed the connection before responding".to_string();
            return Err(Stop::reset(reused, CloseReason::ServerClose, detail, close));
        }
        Err(HeadReadError::Io(e)) => {
            let detail = format!("upstream connection failed: {}", Errno::of(&e));
            return Err(Stop::reset(reused, CloseReason::Error, detail, close));
        }
        Err(HeadReadError::Timeout) => {
            let reason = format!("upstream request timeout: no response within {timeout:?}");
            return Err(Stop::GiveUp(Some(LocalReply::error(
                504,
                Flag::UT,
                reason,
                close,
            ))));
        }
        Err(HeadReadError::Head(e)) => {
            metrics::http_rejected(metrics::Side::Response, e.kind());
            return Err(bad(format!("bad upstream response: {e}")));
        }
        Err(HeadReadError::Truncated) => {
            return Err(bad(
                "bad upstream response: connection closed inside the response head".into(),
            ))
        }
    };
    prepare_response(method, head).map_err(|e| {
        metrics::http_rejected(metrics::Side::Response, e.kind());
        // The response's framing is unknown: the client connection closes.
        let reason = format!("bad upstream response: {e}");
        Stop::GiveUp(Some(LocalReply::error(502, Flag::UPE, reason, true)))
    })
}

/// What a failed request-head read is answered with; None: nothing (the
/// client closed mid-head or the connection failed).
fn request_head_reply(e: HeadReadError, head_timeout: Duration) -> Option<LocalReply> {
    match e {
        HeadReadError::Head(e) => {
            metrics::http_rejected(metrics::Side::Request, e.kind());
            Some(LocalReply::error(
                e.request_status(),
                Flag::DPE,
                e.to_string(),
                true,
            ))
        }
        HeadReadError::Timeout => {
            metrics::timeout(metrics::Timeout::RequestHead);
            let reason = format!("request head timeout: head not complete within {head_timeout:?}");
            Some(LocalReply::error(408, Flag::HT, reason, true))
        }
        HeadReadError::Truncated | HeadReadError::Io(_) => None,
    }
}

/// The pool key of an upstream connection for `target` under `mode`.
fn pool_key(target: &Target, mode: SourceMode) -> PoolKey {
    let client = target.client;
    let dst = target.orig.dst;
    // A workload address of the other family cannot be preserved.
    let mode = if client.is_ipv4() == dst.is_ipv4() {
        mode
    } else {
        SourceMode::Node
    };
    let source = match mode {
        SourceMode::Node => SourceKey::Node,
        SourceMode::PreserveIp => SourceKey::Ip(client.ip()),
        SourceMode::PreserveIpPort => SourceKey::IpPort(client),
    };
    PoolKey {
        dst,
        policy: target.orig.policy_id,
        source,
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
        let base = Record {
            downstream_id: id,
            client: peer.to_string(),
            ..Record::default()
        };
        let Some(orig) = self.kernel.take_orig_dst(peer, local) else {
            metrics::orig_dst_missing();
            self.refuse_unredirected(&mut down, &base).await;
            down.shutdown().await;
            metrics::downstream_closed();
            return;
        };
        let target = Target {
            orig,
            client: peer,
            local,
        };
        let upgraded = self.serve_requests(&mut down, &target, base).await;
        if self.settings.sockmap {
            self.kernel.forget_consumed(peer, local);
        }
        match upgraded {
            Some(up) => {
                match tunnel(down, up, self.settings.client_idle_timeout).await {
                    Ok((sent, received)) => {
                        tracing::debug!(id, sent, received, "upgraded connection closed")
                    }
                    Err(e) => tracing::debug!(id, error = %e, "upgraded connection failed"),
                }
                metrics::upstream_closed(CloseReason::ServerClose);
            }
            None => down.shutdown().await,
        }
        metrics::downstream_closed();
    }

    /// Answers a connection the kernel did not redirect (no original
    /// destination) with 421, logged.
    async fn refuse_unredirected(&self, down: &mut BufStream, base: &Record) {
        let (time, started) = (SystemTime::now(), Instant::now());
        let reply = LocalReply::error(
            421,
            Flag::NR,
            "no original destination: this connection was not redirected by sockwarden".into(),
            true,
        );
        let mut out = Outcome::new(0);
        self.reply(down, &mut out, reply).await;
        self.log.write(out.record(base, time, started.elapsed()));
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
            policy: Some(policy_name),
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
            let read = tokio::select! {
                read = down.read_head_within(parse_request_head, wait) => read,
                // Draining: no new request is taken.
                () = self.tasks.draining() => return None,
            };
            let (time, started) = (SystemTime::now(), Instant::now());
            let (next, out) = match read {
                Ok(None) => return None,
                Ok(Some((head, head_len))) => {
                    let mut out = Outcome::new(head_len as u64);
                    let next = self.serve_request(down, head, target, &mut out).await;
                    (next, out)
                }
                Err(e) => {
                    let reply = request_head_reply(e, self.settings.request_head_timeout)?;
                    let mut out = Outcome::new(0);
                    let next = self.reply(down, &mut out, reply).await;
                    (next, out)
                }
            };
            requests.record(out.verdict, out.status);
            self.log.write(out.record(&base, time, started.elapsed()));
            match next {
                Next::Keep if !self.tasks.is_draining() => {}
                Next::Keep | Next::Close => return None,
                Next::Tunnel(up) => return Some(up),
            }
        }
    }

    /// Writes a local reply.
    async fn reply(&self, down: &mut BufStream, out: &mut Outcome, r: LocalReply) -> Next {
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

    /// One request: checked and normalized, judged, then denied or forwarded.
    async fn serve_request(
        &self,
        down: &mut BufStream,
        head: RequestHead,
        target: &Target,
        out: &mut Outcome,
    ) -> Next {
        out.method = Some(head.method.clone());
        out.host = raw_host(&head);
        out.path = head.target.split('?').next().map(str::to_string);
        let req = match prepare_request(head) {
            Ok(r) => r,
            Err(e) => {
                metrics::http_rejected(metrics::Side::Request, e.kind());
                let reply = LocalReply::error(e.request_status(), Flag::DPE, e.to_string(), true);
                return self.reply(down, out, reply).await;
            }
        };
        out.host = req.host.clone();
        out.path = Some(req.path.clone());
        let fields = req.fields();
        let view = RequestView {
            method: &req.method,
            path: &req.path,
            host: req.host.as_deref(),
            headers: &fields,
        };
        let policy_id = target.orig.policy_id;
        match self.policies.evaluate(policy_id, target.orig.dst, &view) {
            Decision::Deny { reason } => {
                let drained = self.drain_denied_body(down, &req, out).await;
                let reply = LocalReply {
                    status: 403,
                    kind: ReplyKind::Denied {
                        policy: self.policy_name(target),
                        reason: reason.describe().to_string(),
                    },
                    close: req.close || !drained,
                };
                self.reply(down, out, reply).await
            }
            Decision::Allow { rule, entry } => {
                out.verdict = Verdict::Allowed;
                let upgrades = self
                    .policies
                    .allowed_upgrades(policy_id, rule, entry, &req.upgrade);
                if upgrades.len() < req.upgrade.len() {
                    metrics::upgrade_removed(&self.policy_name(target));
                    out.flags.push(Flag::UPR);
                }
                let settings = self
                    .policies
                    .get(policy_id)
                    .and_then(|p| p.rules.get(rule))
                    .map(|r| r.upstream)
                    .unwrap_or_default();
                let plan = plan_request(&req, upgrades);
                let mut fw = Forwarding {
                    down,
                    target,
                    req: &req,
                    plan: &plan,
                    settings,
                    out,
                };
                self.forward(&mut fw).await
            }
        }
    }

    fn policy_name(&self, target: &Target) -> String {
        self.policies
            .get(target.orig.policy_id)
            .map_or_else(|| "(unknown)".to_string(), |p| p.name.clone())
    }

    /// Reads and drops a denied request's body when that is cheap; returns
    /// whether the connection is still in a known state.
    async fn drain_denied_body(
        &self,
        down: &mut BufStream,
        req: &Request,
        out: &mut Outcome,
    ) -> bool {
        match denied_body(req) {
            DeniedBody::None => true,
            DeniedBody::Close => false,
            DeniedBody::Drain(n) => {
                let idle = self.settings.request_head_timeout;
                let framing = BodyFraming::Length(n);
                match down.forward_body(Dest::Discard, framing, idle).await {
                    Ok(n) => {
                        out.bytes_received += n.read;
                        true
                    }
                    Err(_) => false,
                }
            }
        }
    }

    /// Forwards an allowed request and its response, retrying what is safe
    /// to retry while the budget allows.
    async fn forward(&self, fw: &mut Forwarding<'_>) -> Next {
        let _active = self.budget.request();
        let retries_policy = fw.settings.retries;
        let facts = RequestFacts {
            method: &fw.req.method,
            has_body: fw.plan.has_body(),
        };
        let mut failures: Vec<String> = Vec::new();
        let (mut retries, mut idle_race_used) = (0u32, false);
        let mut _permit = None;
        let mut fresh = false;
        loop {
            let decide =
                |f: &Failure| retry::decide(&retries_policy, f, facts, retries, idle_race_used);
            let ctx = AttemptCtx {
                fresh,
                intercept_503: decide(&Failure::Status503).is_some(),
            };
            let failed = match self.attempt(fw, &ctx).await {
                Ok(next) => return next,
                Err(f) => f,
            };
            failures.push(failed.failure.describe());
            let decision = decide(&failed.failure);
            let permit = decision.and_then(|_| self.budget.try_retry());
            let (Some(reason), Some(permit)) = (decision, permit) else {
                if decision.is_some() {
                    metrics::retry_budget_exhausted();
                    failures.push("retry budget exhausted".into());
                }
                return self.fail_after_attempts(fw, failed.reply, &failures).await;
            };
            _permit = Some(permit);
            metrics::upstream_retry(reason);
            if reason == RetryReason::IdleRace {
                idle_race_used = true;
            } else {
                let jitter: f64 = rand::random();
                tokio::time::sleep(retry::backoff(retries_policy.backoff, retries, jitter)).await;
                retries += 1;
            }
            fresh = true;
        }
    }

    /// The final answer after failed attempts: the last failure's reply,
    /// naming every attempt when there was more than one (flag URX).
    async fn fail_after_attempts(
        &self,
        fw: &mut Forwarding<'_>,
        mut reply: LocalReply,
        failures: &[String],
    ) -> Next {
        let attempts = fw.out.upstream_attempts;
        if attempts > 1 {
            fw.out.flags.push(Flag::URX);
            if let ReplyKind::Error { reason, .. } = &mut reply.kind {
                *reason = format!(
                    "{reason} (after {attempts} attempts: {})",
                    failures.join("; ")
                );
            }
        }
        self.reply(fw.down, fw.out, reply).await
    }

    /// One upstream attempt, phase by phase. Err: it failed before anything
    /// reached the client, and may be retried.
    async fn attempt(
        &self,
        fw: &mut Forwarding<'_>,
        ctx: &AttemptCtx,
    ) -> Result<Next, AttemptFailure> {
        fw.out.upstream_attempts += 1;
        let mut leg = self.upstream_leg(fw, ctx).await?;
        fw.out.upstream_id = Some(leg.conn.id);
        let plan = fw.plan;
        let mut wait = Awaiting::new(plan, ctx.intercept_503);
        let mut phase = Phase::SendHead;
        let stop = loop {
            let up = &mut leg.conn;
            let next = match phase {
                Phase::SendHead => self.send_head(fw, up, &wait).await,
                Phase::AwaitContinue => self.await_continue(fw, up, &mut wait).await,
                Phase::SendBody => self.send_body(fw, up, &mut wait).await,
                Phase::AwaitHead => {
                    let read = up
                        .stream
                        .read_head(parse_response_head, fw.settings.request_timeout, false)
                        .await;
                    self.on_head(fw, up, &mut wait, read).await
                }
                Phase::Deliver(fin) => return Ok(self.deliver(fw, leg, fin).await),
                Phase::Tunnel(resp) => return Ok(self.upgrade(fw, leg.conn, &resp).await),
            };
            match next {
                Ok(p) => phase = p,
                Err(stop) => break stop,
            }
        };
        match stop {
            Stop::Failed(failure, why) => {
                retire(leg.conn, why);
                Err(failure)
            }
            Stop::GiveUp(reply) => {
                retire(leg.conn, CloseReason::Error);
                Ok(match reply {
                    Some(r) => self.reply(fw.down, fw.out, r).await,
                    None => Next::Close,
                })
            }
            Stop::ClientGone => {
                fw.out.flags.push(Flag::DC);
                retire(leg.conn, CloseReason::Error);
                Ok(Next::Close)
            }
        }
    }

    /// A pooled connection, or a new one from the source policy chooses.
    async fn upstream_leg(
        &self,
        fw: &mut Forwarding<'_>,
        ctx: &AttemptCtx,
    ) -> Result<Leg, AttemptFailure> {
        let key = pool_key(fw.target, fw.settings.source);
        if !ctx.fresh {
            if let Some(conn) = self.pool.checkout(key) {
                return Ok(Leg { conn, key });
            }
        }
        let held = |client| {
            !self.settings.skip_tuple_check
                && self.kernel.tuple_in_use(self.netns_cookie, client, key.dst)
        };
        let held = match key.source {
            SourceKey::IpPort(client) if !ctx.fresh => held(client),
            _ => false,
        };
        let (bind, fallback) = bind_for(key.source, ctx.fresh, held);
        match self.open(fw, key.dst, bind).await {
            Ok(conn) => {
                if fallback {
                    metrics::source_port_fallback();
                }
                Ok(Leg { conn, key })
            }
            Err(e) => Err(AttemptFailure {
                failure: Failure::Connect(e.errno()),
                reply: LocalReply::error(
                    503,
                    Flag::UF,
                    e.to_string(),
                    fw.plan.closes_after_reply(fw.plan.has_body()),
                ),
            }),
        }
    }

    /// Opens an upstream connection; an EADDRNOTAVAIL on an exact port is
    /// tried once more on a kernel-picked port (never the same 4-tuple).
    async fn open(
        &self,
        fw: &mut Forwarding<'_>,
        dst: SocketAddr,
        bind: Bind,
    ) -> Result<upstream::UpConn, ConnectError> {
        let kernel = self.kernel.as_ref();
        let pipe = self.settings.pipes.responses;
        let wait = fw.settings.connect_timeout;
        match upstream::connect(dst, bind, wait, kernel, pipe).await {
            Err(e) if e.errno() == Errno::EADDRNOTAVAIL => {
                let Bind::IpPort(addr) = bind else {
                    return Err(e);
                };
                fw.out.upstream_attempts += 1;
                upstream::connect(dst, Bind::Ip(addr.ip()), wait, kernel, pipe).await
            }
            other => other,
        }
    }

    /// Phase: send the request head; then the body, or wait.
    async fn send_head(
        &self,
        fw: &mut Forwarding<'_>,
        up: &mut upstream::UpConn,
        wait: &Awaiting<'_>,
    ) -> Result<Phase, Stop> {
        let mut head = Vec::with_capacity(1024);
        write_request(fw.req, &fw.plan.upgrades, &mut head);
        if let Err(e) = up.stream.write_all(&head).await {
            let detail = format!(
                "upstream connection failed while sending the request: {}",
                Errno::of(&e)
            );
            let close = wait.reply_closes();
            return Err(Stop::reset(up.reused, CloseReason::Error, detail, close));
        }
        Ok(if wait.waits_for_continue() {
            Phase::AwaitContinue
        } else if wait.body_pending {
            Phase::SendBody
        } else {
            Phase::AwaitHead
        })
    }

    /// Phase: the body waits for 100 Continue. A client may send it without
    /// waiting (RFC 9110 10.1.1), or leave: either shows as the downstream
    /// turning readable, and the body is then forwarded (or found
    /// truncated) at once.
    async fn await_continue(
        &self,
        fw: &mut Forwarding<'_>,
        up: &mut upstream::UpConn,
        wait: &mut Awaiting<'_>,
    ) -> Result<Phase, Stop> {
        let timeout = fw.settings.request_timeout;
        let read = {
            let down = &mut *fw.down;
            let client_moved = async {
                if down.buffered().is_empty() {
                    let _ = down.readable().await;
                }
            };
            tokio::select! {
                read = up.stream.read_head(parse_response_head, timeout, false) => read,
                () = client_moved => return Ok(Phase::SendBody),
            }
        };
        self.on_head(fw, up, wait, read).await
    }

    /// Phase: forward the request body.
    async fn send_body(
        &self,
        fw: &mut Forwarding<'_>,
        up: &mut upstream::UpConn,
        wait: &mut Awaiting<'_>,
    ) -> Result<Phase, Stop> {
        let idle = fw.settings.request_timeout;
        let sent = fw
            .down
            .forward_body(Dest::Stream(&mut up.stream), fw.plan.framing, idle)
            .await;
        match sent {
            Ok(n) => {
                metrics::forwarded(metrics::Direction::Upstream, n.copied, n.spliced);
                fw.out.bytes_received += n.read;
                wait.body_sent();
                Ok(if wait.waits_for_continue() {
                    Phase::AwaitContinue
                } else {
                    Phase::AwaitHead
                })
            }
            Err(e) => Err(request_body_stop(e, fw.out)),
        }
    }

    /// A response head read: judged, then the next phase.
    async fn on_head(
        &self,
        fw: &mut Forwarding<'_>,
        up: &mut upstream::UpConn,
        wait: &mut Awaiting<'_>,
        read: Result<Option<(ResponseHead, usize)>, HeadReadError>,
    ) -> Result<Phase, Stop> {
        let close = wait.reply_closes();
        let timeout = fw.settings.request_timeout;
        let resp = response_of(read, &fw.req.method, up.reused, close, timeout)?;
        match wait.on_response(&resp) {
            ResponseStep::Final(plan) => Ok(Phase::Deliver(Final {
                resp,
                plan,
                body_pending: wait.body_pending,
            })),
            ResponseStep::Upgrade => Ok(Phase::Tunnel(resp)),
            ResponseStep::Continue { tell_client } => {
                if tell_client {
                    let continue_ = b"HTTP/1.1 100 Continue\r\n\r\n";
                    fw.down
                        .write_all(continue_)
                        .await
                        .map_err(|_| Stop::ClientGone)?;
                }
                Ok(Phase::SendBody)
            }
            ResponseStep::Interim { forward } => {
                if forward {
                    let mut interim = Vec::new();
                    write_response(&resp, ConnectionHeader::None, &mut interim);
                    fw.down
                        .write_all(&interim)
                        .await
                        .map_err(|_| Stop::ClientGone)?;
                }
                Ok(if wait.waits_for_continue() {
                    Phase::AwaitContinue
                } else {
                    Phase::AwaitHead
                })
            }
            ResponseStep::Retry503 => {
                let reply = LocalReply::error(503, Flag::UC, "upstream answered 503".into(), close);
                let failure = AttemptFailure {
                    failure: Failure::Status503,
                    reply,
                };
                Err(Stop::Failed(failure, CloseReason::Error))
            }
            ResponseStep::Reject(r) => Err(Stop::GiveUp(Some(LocalReply::error(
                502,
                Flag::UPE,
                r.describe(),
                true,
            )))),
        }
    }

    /// Phase: a 101 to an allowed protocol goes down; the connection
    /// becomes a tunnel.
    async fn upgrade(
        &self,
        fw: &mut Forwarding<'_>,
        up: upstream::UpConn,
        resp: &Response,
    ) -> Next {
        let mut head = Vec::new();
        write_response(resp, ConnectionHeader::Upgrade, &mut head);
        fw.out.status = 101;
        if fw.down.write_all(&head).await.is_err() {
            fw.out.flags.push(Flag::DC);
            retire(up, CloseReason::Error);
            return Next::Close;
        }
        fw.out.bytes_sent += head.len() as u64;
        Next::Tunnel(up.stream)
    }

    /// Phase: the final response goes down, then the upstream connection
    /// returns to the pool or is closed.
    async fn deliver(&self, fw: &mut Forwarding<'_>, leg: Leg, fin: Final) -> Next {
        let Leg { mut conn, key } = leg;
        let mut resp = fin.resp;
        if fin.plan.dechunk {
            resp.strip_chunked();
        }
        let mut head = Vec::with_capacity(1024);
        write_response(&resp, fin.plan.connection, &mut head);
        fw.out.status = resp.status;
        // A small body that came with the head leaves with it, in one write.
        let (rest, carried) = match resp.framing {
            BodyFraming::Length(n) if conn.stream.take_buffered(n, &mut head) => {
                (BodyFraming::None, n)
            }
            other => (other, 0),
        };
        if fw.down.write_all(&head).await.is_err() {
            fw.out.flags.push(Flag::DC);
            retire(conn, CloseReason::Error);
            return Next::Close;
        }
        fw.out.bytes_sent += head.len() as u64;
        if carried > 0 {
            metrics::forwarded(metrics::Direction::Downstream, carried, 0);
        }
        let idle = fw.settings.request_timeout;
        let body = if fin.plan.dechunk {
            let dechunking = ChunkedScanner::dechunking();
            conn.stream
                .forward_chunked(Dest::Stream(fw.down), dechunking, idle)
                .await
        } else {
            conn.stream
                .forward_body(Dest::Stream(fw.down), rest, idle)
                .await
        };
        match body {
            Ok(n) => {
                metrics::forwarded(metrics::Direction::Downstream, n.copied, n.spliced);
                fw.out.bytes_sent += n.total();
            }
            Err(e) => {
                response_body_failed(e, fw.out);
                retire(conn, CloseReason::Error);
                return Next::Close;
            }
        }
        let end = Ending {
            resp: &resp,
            body_pending: fin.body_pending,
            leftover: !conn.stream.buffered().is_empty(),
        };
        match conn
            .usage
            .reuse(end, fw.settings.max_requests_per_connection)
        {
            Err(why) => retire(conn, why),
            Ok(()) => self.pool.checkin(key, conn, fw.settings.idle_timeout),
        }
        if fin.plan.close_down {
            Next::Close
        } else {
            Next::Keep
        }
    }
}

/// A request body that failed on its way up: the client broke off (no
/// answer, or 400 for a malformed chunked body), or the upstream failed
/// (503).
fn request_body_stop(e: BodyError, out: &mut Outcome) -> Stop {
    if !e.is_source_side() {
        let reason = format!("upstream connection failed while sending the request body: {e}");
        return Stop::GiveUp(Some(LocalReply::error(503, Flag::UC, reason, true)));
    }
    if e.is_stall() {
        out.flags.push(Flag::SI);
        metrics::timeout(metrics::Timeout::RequestBody);
    }
    out.flags.push(Flag::DC);
    out.reason = Some(format!("request body: {e}"));
    match e {
        // A malformed chunked body is the client's protocol error.
        BodyError::Chunk(_) => {
            Stop::GiveUp(Some(LocalReply::error(400, Flag::DPE, e.to_string(), true)))
        }
        _ => Stop::GiveUp(None),
    }
}

/// A response body that failed on its way down: flagged by whose side.
fn response_body_failed(e: BodyError, out: &mut Outcome) {
    if e.is_stall() {
        out.flags.push(Flag::SI);
        metrics::timeout(metrics::Timeout::ResponseBody);
    }
    if e.is_source_side() {
        out.flags.push(Flag::UC);
        out.reason = Some(format!("upstream response body: {e}"));
    } else {
        out.flags.push(Flag::DC);
    }
}
