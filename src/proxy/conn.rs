//! One downstream connection: requests in order (keep-alive and pipelining),
//! each checked against policy and forwarded, every outcome logged.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use tokio::net::TcpStream;

use super::http::{
    keep_alive_params, local_response, parse_request_head, parse_response_head, request_framing,
    response_framing, wants_close, write_request_head, write_response_head, BodyFraming,
    ConnectionHeader, RequestHead, Version,
};
use super::stream::{tunnel, BufStream, Dest, HeadReadError};
use super::upstream::{self, retire, PoolKey};
use super::Proxy;
use crate::accesslog::{flags, now_rfc3339, Record};
use crate::bpf::OrigDst;
use crate::config::UpstreamConfig;
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
        let mut down = BufStream::new(stream);
        let mut rec = Record {
            downstream_id: id,
            client: peer.to_string(),
            ..Record::default()
        };
        match self.orig.take(peer, local) {
            Some(orig) => {
                if let Some(up) = self.serve_requests(&mut down, orig, rec).await {
                    match tunnel(down, up).await {
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
                rec.time = now_rfc3339();
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
        orig: OrigDst,
        base: Record,
    ) -> Option<BufStream> {
        let policy = self.policies.get(orig.policy_id);
        let policy_name = policy.map_or_else(|| "(unknown)".to_string(), |p| p.name.clone());
        let base = Record {
            policy: Some(policy_name.clone()),
            cgroup: policy.map(|p| p.cgroup.to_string()),
            cgroup_id: Some(orig.cgroup_id),
            original_dst: Some(orig.dst.to_string()),
            ..base
        };
        loop {
            let read = down
                .read_head(parse_request_head, self.settings.client_idle_timeout, true)
                .await;
            let started = Instant::now();
            let mut rec = Record {
                time: now_rfc3339(),
                ..base.clone()
            };
            let next = match read {
                Ok(None) => return None,
                Ok(Some((head, head_len))) => {
                    rec.method = Some(head.method.clone());
                    rec.host = head.host();
                    rec.path = Some(head.path());
                    rec.bytes_received = head_len as u64;
                    self.exchange(down, &head, &orig, &policy_name, &mut rec)
                        .await
                }
                Err(HeadReadError::Head(e)) => {
                    let reply =
                        LocalReply::error(e.request_status(), flags::DPE, e.to_string(), true);
                    self.reply(down, &mut rec, reply).await
                }
                Err(HeadReadError::Timeout) => {
                    let reply =
                        LocalReply::error(408, flags::DPE, "request head timeout".into(), true);
                    self.reply(down, &mut rec, reply).await
                }
                Err(HeadReadError::Truncated | HeadReadError::Io(_)) => return None,
            };
            rec.duration_ms = started.elapsed().as_secs_f64() * 1e3;
            metrics::http_request(&policy_name, rec.verdict, rec.status);
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

    /// One request.
    async fn exchange(
        &self,
        down: &mut BufStream,
        head: &RequestHead,
        orig: &OrigDst,
        policy_name: &str,
        rec: &mut Record,
    ) -> Next {
        let framing = match request_framing(head) {
            Ok(f) => f,
            Err(e) => {
                let reply = LocalReply::error(e.request_status(), flags::DPE, e.to_string(), true);
                return self.reply(down, rec, reply).await;
            }
        };
        let client_close = wants_close(head.version, &head.headers);
        let host = head.host();
        let path = head.path();
        let headers: Vec<(&str, &[u8])> = head
            .headers
            .iter()
            .map(|h| (h.name.as_str(), h.value.as_slice()))
            .collect();
        let view = RequestView {
            method: &head.method,
            path: &path,
            host: host.as_deref(),
            headers: &headers,
        };
        match self.policies.evaluate(orig.policy_id, orig.dst, &view) {
            Decision::Deny { reason } => {
                let drained = self.drain_denied_body(down, head, framing, rec).await;
                let reply = LocalReply {
                    status: 403,
                    flag: flags::RBAC,
                    verdict: "denied",
                    header: ("sockwarden-denied", policy_name.to_string()),
                    body: format!(
                        "sockwarden: request denied by policy {policy_name:?}: {}\n",
                        reason.describe()
                    ),
                    close: client_close || !drained,
                };
                rec.reason = Some(reason.describe().to_string());
                self.reply(down, rec, reply).await
            }
            Decision::Allow { rule } => {
                let settings = self
                    .policies
                    .get(orig.policy_id)
                    .and_then(|p| p.rules.get(rule))
                    .map(|r| r.upstream)
                    .unwrap_or_default();
                self.forward(down, head, framing, orig, settings, rec).await
            }
        }
    }

    /// Reads and drops a denied request's body when that is cheap; returns
    /// whether the connection is still in a known state.
    async fn drain_denied_body(
        &self,
        down: &mut BufStream,
        head: &RequestHead,
        framing: BodyFraming,
        rec: &mut Record,
    ) -> bool {
        match framing {
            BodyFraming::None => true,
            BodyFraming::Length(n) if n <= DENIED_BODY_DRAIN_LIMIT && !head.expects_continue() => {
                match down
                    .forward_body(Dest::Discard, framing, self.settings.client_idle_timeout)
                    .await
                {
                    Ok(n) => {
                        rec.bytes_received += n;
                        true
                    }
                    Err(_) => false,
                }
            }
            _ => false,
        }
    }

    /// Forwards an allowed request and its response.
    async fn forward(
        &self,
        down: &mut BufStream,
        head: &RequestHead,
        framing: BodyFraming,
        orig: &OrigDst,
        settings: UpstreamConfig,
        rec: &mut Record,
    ) -> Next {
        let client_close = wants_close(head.version, &head.headers);
        let has_body = framing != BodyFraming::None;
        let key = PoolKey {
            dst: orig.dst,
            policy: orig.policy_id,
        };
        rec.upstream_attempts = 1;
        let mut up = match self.pool.checkout(key) {
            Some(c) => c,
            None => match upstream::connect(orig.dst, settings.connect_timeout).await {
                Ok(c) => c,
                Err(e) => {
                    let reply =
                        LocalReply::error(503, flags::UF, e.to_string(), client_close || has_body);
                    return self.reply(down, rec, reply).await;
                }
            },
        };
        rec.upstream_id = Some(up.id);

        let upgrade = head.upgrade().is_some();
        let conn_header = if upgrade {
            ConnectionHeader::Upgrade
        } else if head.version == Version::Http10 {
            ConnectionHeader::KeepAlive
        } else {
            ConnectionHeader::None
        };
        let mut out = Vec::with_capacity(1024);
        write_request_head(head, conn_header, &mut out);
        if let Err(e) = up.stream.write_all(&out).await {
            retire(up, CloseReason::Error);
            let reason = format!(
                "upstream connection failed while sending the request: {}",
                metrics::errno_name(&e)
            );
            let reply = LocalReply::error(503, flags::UC, reason, client_close || has_body);
            return self.reply(down, rec, reply).await;
        }

        let expect = has_body && head.expects_continue();
        let mut body_sent = !has_body;
        if has_body && !expect {
            if let Err(reply) = self
                .send_request_body(down, &mut up, framing, settings, rec)
                .await
            {
                return self.give_up(down, rec, up, reply).await;
            }
            body_sent = true;
        }

        // Interim responses, then the final head.
        let resp = loop {
            let read = up
                .stream
                .read_head(parse_response_head, settings.request_timeout, false)
                .await;
            let close = client_close || !body_sent;
            let (resp, _) = match read {
                Ok(Some(r)) => r,
                Ok(None) => {
                    retire(up, CloseReason::ServerClose);
                    let reason = "upstream closed the connection before responding".to_string();
                    return self
                        .reply(down, rec, LocalReply::error(503, flags::UC, reason, close))
                        .await;
                }
                Err(e) => {
                    retire(up, CloseReason::Error);
                    let reply = match e {
                        HeadReadError::Timeout => LocalReply::error(
                            504,
                            flags::UT,
                            format!(
                                "upstream request timeout: no response within {:?}",
                                settings.request_timeout
                            ),
                            close,
                        ),
                        HeadReadError::Io(e) => LocalReply::error(
                            503,
                            flags::UC,
                            format!("upstream connection failed: {}", metrics::errno_name(&e)),
                            close,
                        ),
                        HeadReadError::Head(e) => LocalReply::error(
                            502,
                            flags::UPE,
                            format!("bad upstream response: {e}"),
                            close,
                        ),
                        HeadReadError::Truncated => LocalReply::error(
                            502,
                            flags::UPE,
                            "bad upstream response: connection closed inside the response head"
                                .into(),
                            close,
                        ),
                    };
                    return self.reply(down, rec, reply).await;
                }
            };
            match resp.status {
                101 if upgrade => {
                    let mut out = Vec::new();
                    write_response_head(&resp, ConnectionHeader::Upgrade, &mut out);
                    rec.status = 101;
                    rec.verdict = "allowed";
                    if down.write_all(&out).await.is_err() {
                        return client_gone(rec, up);
                    }
                    rec.bytes_sent += out.len() as u64;
                    return Next::Tunnel(up.stream);
                }
                101 => {
                    retire(up, CloseReason::Error);
                    let reason =
                        "bad upstream response: 101 without an Upgrade request".to_string();
                    return self
                        .reply(down, rec, LocalReply::error(502, flags::UPE, reason, true))
                        .await;
                }
                100 if expect && !body_sent => {
                    if head.version == Version::Http11
                        && down
                            .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
                            .await
                            .is_err()
                    {
                        return client_gone(rec, up);
                    }
                    if let Err(reply) = self
                        .send_request_body(down, &mut up, framing, settings, rec)
                        .await
                    {
                        return self.give_up(down, rec, up, reply).await;
                    }
                    body_sent = true;
                }
                102..=199 | 100 => {
                    // Interim responses go to HTTP/1.1 clients only.
                    if head.version == Version::Http11 {
                        let mut out = Vec::new();
                        write_response_head(&resp, ConnectionHeader::None, &mut out);
                        if down.write_all(&out).await.is_err() {
                            return client_gone(rec, up);
                        }
                    }
                }
                _ => break resp,
            }
        };

        let resp_framing = match response_framing(&head.method, &resp) {
            Ok(f) => f,
            Err(e) => {
                retire(up, CloseReason::Error);
                let reply = LocalReply::error(
                    502,
                    flags::UPE,
                    format!("bad upstream response: {e}"),
                    client_close || !body_sent,
                );
                return self.reply(down, rec, reply).await;
            }
        };
        // Without 100-continue the client may or may not send the body
        // now: the connection's framing is unknown, so it ends here.
        let close_down = client_close || !body_sent || resp_framing == BodyFraming::UntilClose;
        let conn_header = if close_down {
            ConnectionHeader::Close
        } else if head.version == Version::Http10 {
            ConnectionHeader::KeepAlive
        } else {
            ConnectionHeader::None
        };
        let mut out = Vec::with_capacity(1024);
        write_response_head(&resp, conn_header, &mut out);
        rec.status = resp.status;
        rec.verdict = "allowed";
        if down.write_all(&out).await.is_err() {
            return client_gone(rec, up);
        }
        rec.bytes_sent += out.len() as u64;
        match up
            .stream
            .forward_body(Dest::Stream(down), resp_framing, settings.request_timeout)
            .await
        {
            Ok(n) => rec.bytes_sent += n,
            Err(e) => {
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
        } else if wants_close(resp.version, &resp.headers) {
            Some(CloseReason::ConnectionCloseHeader)
        } else if !body_sent {
            // The server may still be waiting for the body we never sent.
            Some(CloseReason::Error)
        } else {
            up.complete(
                keep_alive_params(&resp.headers),
                settings.max_requests_per_connection,
            )
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
                rec.bytes_received += n;
                Ok(())
            }
            Err(e) if e.is_source_side() => {
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
