//! One downstream connection: requests in order (keep-alive and pipelining),
//! each judged by policy and forwarded, every outcome logged.
//!
//! What a head means is decided in [`exchange`](super::exchange); an
//! allowed request's upstream attempt runs phase by phase in
//! [`attempt`](super::attempt), over whatever transport each side has.
//! Here: the policy's verdict, retries, and the upstream connection taken
//! from the pool or opened (its source chosen), then pooled or closed. Each
//! request's [`Outcome`] becomes its access-log line in one place.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio::net::TcpStream;

use super::attempt::{AttemptEnd, AttemptFailure, Forwarding, Stop};
use super::exchange::{denied_body, plan_request, route, Arrival, DeniedBody, Route};
use super::http::{
    parse_request_head, prepare_request, raw_host, BodyFraming, Request, RequestHead,
};
use super::outcome::{record, write_reply, LocalReply, Next, ReplyKind};
use super::retry::{self, Failure, RequestFacts, RetryReason};
use super::stream::{tunnel, BufStream, Dest, HeadReadError, HeadWait, Tunneled};
use super::tls::Opening;
use super::transport::{Transport, UpStream};
use super::upstream::{self, bind_for, retire, Bind, ConnectError, PoolKey, SourceKey};
use super::Proxy;
use crate::accesslog::{Flag, Outcome, Record};
use crate::bpf::OrigDst;
use crate::config::SourceMode;
use crate::metrics::{self, CloseReason, Errno, Verdict};
use crate::policy::{host_fits_tls, Channel, CompiledRule, Decision, RequestView};
use crate::tls::client::HandshakeError;
use rustls::pki_types::ServerName;

/// How far the bytes read from a workload may run ahead of what the kernel
/// was told (sockmap engine): a quarter of the kernel's unread limit, so
/// that a connection of small exchanges keeps its redirect, while one that
/// sends more than the proxy reads turns to TCP.
const CONSUMED_REPORT_STEP: u64 = crate::bpf::limits::MSG_UNREAD_LIMIT / 4;

pub(super) struct Target {
    pub orig: OrigDst,
    /// The workload's address as the listener saw it.
    pub client: SocketAddr,
    /// The proxy address it reached.
    pub local: SocketAddr,
    /// The name of the policy that governs it, looked up once.
    pub policy: String,
    /// Set when the proxy terminated the workload's TLS.
    pub tls: Option<Terminated>,
}

/// A workload TLS connection the proxy terminated.
pub(super) struct Terminated {
    /// The ClientHello's server name (None: the client sent none).
    pub sni: Option<String>,
}

impl Target {
    /// The rules its requests are judged by.
    fn channel(&self) -> Channel<'_> {
        match &self.tls {
            None => Channel::Plain,
            Some(t) => Channel::Intercepted {
                sni: t.sni.as_deref(),
            },
        }
    }

    /// How its requests arrived, under a rule originating TLS to
    /// `originate`.
    fn arrival(&self, originate: Option<u16>) -> Arrival<'_> {
        match &self.tls {
            None => Arrival::Plain { originate },
            Some(t) => Arrival::Intercepted {
                sni: t.sni.as_deref(),
            },
        }
    }
}

/// Settings of one upstream attempt.
struct AttemptCtx<'a> {
    /// A retry: fresh connection and fresh source tuple, never the pool.
    fresh: bool,
    /// Treat a 503 as a retryable failure instead of forwarding it.
    intercept_503: bool,
    route: &'a Route,
}

/// An upstream connection and the pool it returns to.
struct Leg {
    conn: upstream::UpConn,
    key: PoolKey,
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

/// Counts what a tunnel from the workload to its origin forwarded.
pub(super) fn count_tunneled(t: &Tunneled) {
    use metrics::Direction::{Downstream, Upstream};
    metrics::forwarded(Upstream, t.forth.copied, t.forth.spliced);
    metrics::forwarded(Downstream, t.back.copied, t.back.spliced);
}

/// The pool key of an upstream connection for `target` on `route` under
/// `mode`.
pub(super) fn pool_key(target: &Target, mode: SourceMode, route: &Route) -> PoolKey {
    let client = target.client;
    let dst = route.dst;
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
        tls: route.tls.clone(),
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
        let base = Record {
            downstream_id: id,
            client: peer.to_string(),
            ..Record::default()
        };
        let Some(orig) = self.kernel.take_orig_dst(peer, local) else {
            metrics::orig_dst_missing();
            let mut down = BufStream::new(stream, self.settings.pipes.requests);
            self.refuse_unredirected(&mut down, &base).await;
            down.shutdown().await;
            metrics::downstream_closed();
            return;
        };
        let policies = self.policies();
        let policy = policies.get(orig.policy_id);
        let base = Record {
            policy: Some(policy.map_or_else(|| "(unknown)".to_string(), |p| p.name.clone())),
            cgroup: policy.map(|p| p.cgroup.to_string()),
            cgroup_id: Some(orig.cgroup_id),
            original_dst: Some(orig.dst.to_string()),
            ..base
        };
        let target = Target {
            orig,
            client: peer,
            local,
            policy: base.policy.clone().unwrap_or_default(),
            tls: None,
        };
        let opening = self.opening(&stream).await;
        tracing::debug!(
            downstream_id = base.downstream_id,
            policy = %target.policy,
            original_dst = %target.orig.dst,
            opening = opening.kind(),
            "classified a redirected connection"
        );
        match opening {
            Opening::Nothing => {}
            Opening::Plain => self.serve_plain(stream, &target, base).await,
            tls => self.serve_tls(stream, &target, base, tls).await,
        }
        metrics::downstream_closed();
    }

    /// Serves a connection of plain HTTP.
    async fn serve_plain(&self, stream: TcpStream, target: &Target, base: Record) {
        let engine = |pipe: Option<usize>| if pipe.is_some() { "splice" } else { "copy" };
        tracing::debug!(
            downstream_id = base.downstream_id,
            request_bodies = engine(self.settings.pipes.requests),
            response_bodies = engine(self.settings.pipes.responses),
            sockmap = self.settings.sockmap,
            "body engine"
        );
        let mut down = BufStream::new(stream, self.settings.pipes.requests);
        if self.settings.sockmap {
            down = down.linked();
        }
        self.serve_stream(down, target, base).await;
        if self.settings.sockmap {
            self.kernel.forget_consumed(target.client, target.local);
        }
    }

    /// Serves the requests of a connection, then the tunnel of an upgrade.
    pub(super) async fn serve_stream<D: Transport>(
        &self,
        mut down: BufStream<D>,
        target: &Target,
        base: Record,
    ) {
        let id = base.downstream_id;
        let upgraded = self.serve_requests(&mut down, target, base).await;
        match upgraded {
            Some(up) => {
                let t = tunnel(down, up, self.settings.client_idle_timeout).await;
                count_tunneled(&t);
                let (sent, received) = (t.forth.total(), t.back.total());
                match t.end {
                    Ok(()) => tracing::debug!(id, sent, received, "upgraded connection closed"),
                    Err(e) => tracing::debug!(id, error = %e, "upgraded connection failed"),
                }
                metrics::upstream_closed(CloseReason::ServerClose);
            }
            None => down.shutdown().await,
        }
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
        write_reply::<_, UpStream>(down, &mut out, reply).await;
        self.log.write(record(base, out, time, started.elapsed()));
    }

    /// Serves requests until the connection ends; returns the upstream side
    /// of an upgraded connection, for the caller to tunnel to.
    async fn serve_requests<D: Transport>(
        &self,
        down: &mut BufStream<D>,
        target: &Target,
        base: Record,
    ) -> Option<BufStream<UpStream>> {
        let mut requests = metrics::RequestCounter::new(&target.policy);
        let mut reported = 0;
        let mut served = 0u64;
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
                // Draining: a kept-alive connection between requests is
                // closed (its client retries on a new connection, as after
                // any keep-alive race); one whose head has begun, or a new
                // one that has not sent its first request yet (accepted
                // just before the drain: an upgrade's last ones), is read
                // and answered (and closes).
                () = self.tasks.draining() => {
                    if served > 0 && down.buffered().is_empty() {
                        return None;
                    }
                    down.read_head_within(parse_request_head, wait).await
                }
            };
            served += 1;
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
                    let next = write_reply::<_, UpStream>(down, &mut out, reply).await;
                    (next, out)
                }
            };
            requests.record(out.verdict, out.status);
            metrics::request_duration(&target.policy, out.verdict, started.elapsed());
            if let Some(at) = out.first_byte {
                metrics::first_byte(&target.policy, at.duration_since(started));
            }
            self.log.write(record(&base, out, time, started.elapsed()));
            match next {
                Next::Keep if !self.tasks.is_draining() => {}
                Next::Keep | Next::Close => return None,
                Next::Tunnel(up) => return Some(up),
            }
        }
    }

    /// One request: checked and normalized, judged, then denied or forwarded.
    async fn serve_request<D: Transport>(
        &self,
        down: &mut BufStream<D>,
        head: RequestHead,
        target: &Target,
        out: &mut Outcome,
    ) -> Next<UpStream> {
        out.method = Some(head.method.clone());
        out.host = raw_host(&head);
        out.path = head.target.split('?').next().map(str::to_string);
        let mut req = match prepare_request(head) {
            Ok(r) => r,
            Err(e) => {
                metrics::http_rejected(metrics::Side::Request, e.kind());
                let reply = LocalReply::error(e.request_status(), Flag::DPE, e.to_string(), true);
                return write_reply(down, out, reply).await;
            }
        };
        // Draining: this exchange is the connection's last, and its
        // response says so (`Connection: close`), as if the client had asked.
        req.close |= self.tasks.is_draining();
        out.host = req.host.clone();
        out.path = Some(req.path.clone());
        let fields = req.fields();
        let view = RequestView {
            method: &req.method,
            path: &req.path,
            host: req.host.as_deref(),
            headers: &fields,
        };
        if let Some(tls) = &target.tls {
            let sni = tls.sni.as_deref();
            if !host_fits_tls(req.host.as_deref(), sni, target.orig.dst.ip()) {
                let reason = format!(
                    "Host {:?} is not this TLS connection's server ({}): a request for another name needs its own connection (SNI/Host fronting is refused)",
                    req.host.as_deref().unwrap_or(""),
                    sni.map_or_else(|| target.orig.dst.ip().to_string(), str::to_string),
                );
                return self.deny(down, &req, target, out, (421, reason)).await;
            }
        }
        // One snapshot of the policies judges the whole request; a reload
        // meanwhile judges the next one.
        let policies = self.policies();
        let policy_id = target.orig.policy_id;
        let decision = policies.evaluate(policy_id, target.orig.dst, target.channel(), &view);
        tracing::debug!(
            policy = %target.policy,
            method = %req.method,
            path = %req.path,
            decision = ?decision,
            "judged a request"
        );
        match decision {
            Decision::Deny { reason } => match policies.audited(policy_id, target.orig.dst) {
                // mode: audit: through, reported with what would deny it.
                Some(rule) => {
                    metrics::would_deny(&target.policy, metrics::AuditStage::Http);
                    out.flags.push(Flag::AUD);
                    out.would_deny = Some(reason.describe().to_string());
                    self.forward_allowed(down, &req, target, (rule, Vec::new()), out)
                        .await
                }
                None => {
                    let why = (403, reason.describe().to_string());
                    self.deny(down, &req, target, out, why).await
                }
            },
            Decision::Allow { rule, entry } => {
                let upgrades = policies.allowed_upgrades(policy_id, rule, entry, &req.upgrade);
                let rule = policies.rule(policy_id, rule);
                self.forward_allowed(down, &req, target, (rule, upgrades), out)
                    .await
            }
        }
    }

    /// Answers a request policy refuses with `status` and `reason`.
    async fn deny<D: Transport>(
        &self,
        down: &mut BufStream<D>,
        req: &Request,
        target: &Target,
        out: &mut Outcome,
        (status, reason): (u16, String),
    ) -> Next<UpStream> {
        let drained = self.drain_denied_body(down, req, out).await;
        let reply = LocalReply {
            status,
            kind: ReplyKind::Denied {
                policy: target.policy.clone(),
                reason,
            },
            close: req.close || !drained || status == 421,
        };
        write_reply(down, out, reply).await
    }

    /// Forwards a request that `rule` allows, offering upstream the
    /// Upgrade protocols `upgrades` that it allows.
    async fn forward_allowed<D: Transport>(
        &self,
        down: &mut BufStream<D>,
        req: &Request,
        target: &Target,
        (rule, upgrades): (Option<&CompiledRule>, Vec<String>),
        out: &mut Outcome,
    ) -> Next<UpStream> {
        out.verdict = Verdict::Allowed;
        if upgrades.len() < req.upgrade.len() {
            metrics::upgrade_removed(&target.policy);
            out.flags.push(Flag::UPR);
        }
        let settings = rule.map(|r| r.upstream).unwrap_or_default();
        let arrival = target.arrival(rule.and_then(|r| r.originate));
        let plan = plan_request(req, upgrades);
        let route = match route(target.orig.dst, arrival, req.host.as_deref()) {
            Ok(r) => r,
            Err(reason) => {
                let close = plan.closes_after_reply(plan.has_body());
                let reply = LocalReply::error(502, Flag::UF, reason, close);
                return write_reply(down, out, reply).await;
            }
        };
        let mut fw = Forwarding {
            down,
            req,
            plan: &plan,
            settings,
            out,
        };
        self.forward(&mut fw, target, &route).await
    }

    /// Reads and drops a denied request's body when that is cheap; returns
    /// whether the connection is still in a known state.
    async fn drain_denied_body<D: Transport>(
        &self,
        down: &mut BufStream<D>,
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
    async fn forward<D: Transport>(
        &self,
        fw: &mut Forwarding<'_, D>,
        target: &Target,
        route: &Route,
    ) -> Next<UpStream> {
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
                route,
            };
            let failed = match self.attempt(fw, target, &ctx).await {
                Ok(next) => return next,
                Err(f) => f,
            };
            failures.push(failed.failure.describe());
            let decision = decide(&failed.failure);
            let permit = decision.and_then(|_| self.budget.try_retry());
            tracing::debug!(
                failure = %failures.last().map_or("", String::as_str),
                retry = ?decision,
                budget = permit.is_some(),
                retries,
                "upstream attempt failed"
            );
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
    async fn fail_after_attempts<D: Transport>(
        &self,
        fw: &mut Forwarding<'_, D>,
        mut reply: LocalReply,
        failures: &[String],
    ) -> Next<UpStream> {
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
        write_reply(fw.down, fw.out, reply).await
    }

    /// One upstream attempt (see [`Forwarding::run`]) on a pooled or new
    /// connection, which then returns to the pool or is closed. Err: it
    /// failed before anything reached the client, and may be retried.
    async fn attempt<D: Transport>(
        &self,
        fw: &mut Forwarding<'_, D>,
        target: &Target,
        ctx: &AttemptCtx<'_>,
    ) -> Result<Next<UpStream>, AttemptFailure> {
        fw.out.upstream_attempts += 1;
        let Leg { conn, key } = self.upstream_leg(fw, target, ctx).await?;
        fw.out.upstream_ktls = conn.stream.get_ref().ktls();
        fw.out.upstream_id = Some(conn.id);
        match fw.run(conn, ctx.intercept_503).await {
            AttemptEnd::Delivered { next, conn, reuse } => {
                match reuse {
                    Ok(()) => self.pool.checkin(key, conn, fw.settings.idle_timeout),
                    Err(why) => retire(conn, why),
                }
                Ok(next)
            }
            AttemptEnd::Tunnel(stream) => Ok(Next::Tunnel(stream)),
            AttemptEnd::Stopped(Stop::Failed(failure, why), conn) => {
                retire(conn, why);
                Err(failure)
            }
            AttemptEnd::Stopped(Stop::GiveUp(answer), conn) => {
                retire(conn, CloseReason::Error);
                Ok(match answer {
                    Some(r) => write_reply(fw.down, fw.out, r).await,
                    None => Next::Close,
                })
            }
            AttemptEnd::Stopped(Stop::ClientGone, conn) => {
                fw.out.flags.push(Flag::DC);
                retire(conn, CloseReason::Error);
                Ok(Next::Close)
            }
        }
    }

    /// A pooled connection, or a new one from the source policy chooses
    /// (over TLS where the route says).
    async fn upstream_leg<D: Transport>(
        &self,
        fw: &mut Forwarding<'_, D>,
        target: &Target,
        ctx: &AttemptCtx<'_>,
    ) -> Result<Leg, AttemptFailure> {
        let key = pool_key(target, fw.settings.source, ctx.route);
        fw.out.upstream_sni = ctx.route.tls.as_ref().map(|n| n.to_str().into_owned());
        if !ctx.fresh {
            if let Some(conn) = self.pool.checkout(key.clone()) {
                tracing::debug!(upstream_id = conn.id, dst = %key.dst, "reusing a pooled upstream connection");
                return Ok(Leg { conn, key });
            }
        }
        tracing::debug!(dst = %key.dst, fresh = ctx.fresh, "opening a new upstream connection");
        let wait = fw.settings.connect_timeout;
        let closes = fw.plan.closes_after_reply(fw.plan.has_body());
        let conn = match self.new_upstream(&key, ctx.fresh, wait, fw.out).await {
            Ok(conn) => conn,
            Err(e) => {
                return Err(AttemptFailure {
                    failure: Failure::Connect(e.errno()),
                    reply: LocalReply::error(503, Flag::UF, e.to_string(), closes),
                })
            }
        };
        let Some(name) = &ctx.route.tls else {
            return Ok(Leg { conn, key });
        };
        match self.upstream_tls(conn, name.clone()).await {
            Ok(conn) => Ok(Leg { conn, key }),
            Err(e) => {
                let (status, flag) = match e {
                    HandshakeError::Timeout(_) => (504, Flag::UT),
                    HandshakeError::Failed { .. } | HandshakeError::Io(_) => (502, Flag::UF),
                };
                Err(AttemptFailure {
                    failure: Failure::Tls(e.to_string()),
                    reply: LocalReply::error(status, flag, e.to_string(), closes),
                })
            }
        }
    }

    /// The TLS handshake on a new upstream connection, for `name`: its
    /// record layer then goes to the kernel where kTLS is on.
    async fn upstream_tls(
        &self,
        conn: upstream::UpConn,
        name: ServerName<'static>,
    ) -> Result<upstream::UpConn, HandshakeError> {
        let Some(tls) = self.tls.upstream.as_ref() else {
            let cause = "the upstream TLS client is not set up".to_string();
            return Err(HandshakeError::Failed { cause });
        };
        let (UpStream::Plain(tcp), _) = conn.stream.into_parts() else {
            let cause = "the connection is TLS already".to_string();
            return Err(HandshakeError::Failed { cause });
        };
        let within = self.settings.handshake_timeout;
        let began = Instant::now();
        let path = self.ktls_path(&tcp);
        let stream = match path {
            Ok(()) => tls
                .connect_kernel(tcp, name, within)
                .await
                .map(|k| (UpStream::Ktls(Box::new(k)), self.settings.pipes.responses)),
            Err(_) => tls
                .connect(tcp, name, within)
                .await
                .map(|t| (UpStream::Tls(Box::new(t)), None)),
        };
        let result = metrics::Handshake::of(&stream);
        metrics::tls_handshake(metrics::TlsSide::Upstream, result, began.elapsed());
        let (stream, pipe) = stream?;
        metrics::ktls_connection(metrics::TlsSide::Upstream, path);
        Ok(upstream::UpConn {
            stream: BufStream::new(stream, pipe),
            ..conn
        })
    }

    /// A new upstream connection for `key`, from the source its policy
    /// chooses (a fresh tuple when `fresh`), within `wait`.
    pub(super) async fn new_upstream(
        &self,
        key: &PoolKey,
        fresh: bool,
        wait: Duration,
        out: &mut Outcome,
    ) -> Result<upstream::UpConn, ConnectError> {
        let held = |client| {
            !self.settings.skip_tuple_check
                && self.kernel.tuple_in_use(self.netns_cookie, client, key.dst)
        };
        let held = match key.source {
            SourceKey::IpPort(client) if !fresh => held(client),
            _ => false,
        };
        let (bind, fallback) = bind_for(key.source, fresh, held);
        tracing::debug!(source = ?key.source, held, bind = ?bind, fallback, "chose the upstream source");
        let conn = self.open(key.dst, bind, wait, out).await?;
        if fallback {
            metrics::source_port_fallback();
        }
        Ok(conn)
    }

    /// Opens an upstream connection; an EADDRNOTAVAIL on an exact port is
    /// tried once more on a kernel-picked port (never the same 4-tuple).
    async fn open(
        &self,
        dst: SocketAddr,
        bind: Bind,
        wait: Duration,
        out: &mut Outcome,
    ) -> Result<upstream::UpConn, ConnectError> {
        let kernel = self.kernel.as_ref();
        let pipe = self.settings.pipes.responses;
        match upstream::connect(dst, bind, wait, kernel, pipe).await {
            Err(e) if e.errno() == Errno::EADDRNOTAVAIL => {
                let Bind::IpPort(addr) = bind else {
                    return Err(e);
                };
                out.upstream_attempts += 1;
                upstream::connect(dst, Bind::Ip(addr.ip()), wait, kernel, pipe).await
            }
            other => other,
        }
    }
}
