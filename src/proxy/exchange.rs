//! One exchange, decided from heads alone: no sockets and no access-log
//! record. [`conn`](super::conn) does the I/O these answers call for.
//!
//! Three questions, each a pure function of heads and counters:
//! - what a request needs ([`plan_request`]): its framing, whether the
//!   client asked to close, whether it waits for 100 Continue, the allowed
//!   Upgrade protocols, and the `Connection` header sent upstream;
//! - what a response means ([`Awaiting::on_response`]): interim, continue,
//!   upgrade, final (framing, the header sent down, whether the client
//!   connection closes), a 503 taken for a retry, or a rejection and why;
//! - whether the upstream connection can carry another request
//!   ([`ConnUse::reuse`]), and if not the close reason that is counted.

use std::net::SocketAddr;
use std::time::Duration;

use rustls::pki_types::ServerName;

use super::http::{
    request_connection, BodyFraming, ConnectionHeader, Request, Response, Version,
    MAX_INTERIM_RESPONSES,
};
use crate::metrics::CloseReason;
use crate::policy::{authority_host, canonical_ip};

/// What a request needs, from its head and what policy allows of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestPlan {
    pub version: Version,
    /// The request body's framing.
    pub framing: BodyFraming,
    /// The client asked to close after this exchange (`Connection: close`,
    /// or HTTP/1.0 without keep-alive).
    pub client_close: bool,
    /// A body follows and the client waits for 100 Continue before it.
    pub expect_continue: bool,
    /// The offered Upgrade protocols the rule allows: forwarded upstream.
    pub upgrades: Vec<String>,
    /// The `Connection` header written upstream.
    pub upstream_connection: ConnectionHeader,
}

/// The plan of `req`, given the Upgrade protocols policy allows of it.
pub fn plan_request(req: &Request, upgrades: Vec<String>) -> RequestPlan {
    RequestPlan {
        version: req.version,
        framing: req.framing,
        client_close: req.close,
        expect_continue: req.has_body() && req.expect_continue,
        upstream_connection: request_connection(req.version, &upgrades),
        upgrades,
    }
}

impl RequestPlan {
    pub fn has_body(&self) -> bool {
        self.framing != BodyFraming::None
    }

    /// Whether the client connection closes after a reply the proxy makes
    /// itself while the request body is (`body_pending`) or is not still
    /// unread: an unread body leaves the connection's framing unknown.
    pub fn closes_after_reply(&self, body_pending: bool) -> bool {
        self.client_close || body_pending
    }
}

/// Largest body of a denied request that is read and dropped to keep the
/// connection; larger (or chunked, or expected-100) bodies close it.
pub const DENIED_BODY_DRAIN_LIMIT: u64 = 1024 * 1024;

/// What becomes of a denied request's body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeniedBody {
    /// There is none: the connection stays as it is.
    None,
    /// Read and dropped (this many bytes), so the connection can be kept.
    Drain(u64),
    /// Too large, chunked, or waiting for a 100 that will not come: the
    /// connection closes after the 403.
    Close,
}

/// Where an allowed request goes, and over what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub dst: SocketAddr,
    /// The name the origin's certificate is verified for (and the SNI),
    /// when the proxy speaks TLS upstream.
    pub tls: Option<ServerName<'static>>,
}

/// How a request's connection reached the proxy, for its [`route`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arrival<'a> {
    /// Plain HTTP; `originate`: the rule's TLS origination port.
    Plain { originate: Option<u16> },
    /// Inside intercepted TLS, with the client's SNI (if any).
    Intercepted { sni: Option<&'a str> },
}

/// The upstream route of a request to `dst`: intercepted TLS goes on to
/// the original destination over TLS for the client's SNI (or its IP, for
/// a client that sent none); originated TLS to the rule's port, named by
/// the request's Host; plain HTTP to the original destination.
pub fn route(dst: SocketAddr, arrival: Arrival<'_>, host: Option<&str>) -> Result<Route, String> {
    let name = |n: &str| {
        ServerName::try_from(n.to_string())
            .map_err(|_| format!("upstream TLS: {n:?} cannot name a server"))
    };
    Ok(match arrival {
        Arrival::Plain { originate: None } => Route { dst, tls: None },
        Arrival::Plain {
            originate: Some(port),
        } => {
            let host = host
                .map(authority_host)
                .ok_or("upstream TLS: the request has no Host to name the origin")?;
            Route {
                dst: SocketAddr::new(dst.ip(), port),
                tls: Some(name(host)?),
            }
        }
        Arrival::Intercepted { sni } => Route {
            dst,
            tls: Some(match sni {
                Some(n) => name(n)?,
                None => ServerName::IpAddress(canonical_ip(dst.ip()).into()),
            }),
        },
    })
}

/// What to do with the body of a request that policy denied.
pub fn denied_body(req: &Request) -> DeniedBody {
    match req.framing {
        BodyFraming::None => DeniedBody::None,
        BodyFraming::Length(n) if n <= DENIED_BODY_DRAIN_LIMIT && !req.expect_continue => {
            DeniedBody::Drain(n)
        }
        _ => DeniedBody::Close,
    }
}

/// Why a response is refused (answered 502).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reject {
    /// More than [`MAX_INTERIM_RESPONSES`] interim responses.
    TooManyInterim,
    /// A 101 to a request that asked for no allowed Upgrade.
    UpgradeNotRequested,
    /// A 101 to a protocol that was not offered.
    UpgradeNotOffered,
}

impl Reject {
    pub fn describe(self) -> String {
        match self {
            Reject::TooManyInterim => {
                format!(
                    "bad upstream response: more than {MAX_INTERIM_RESPONSES} interim responses"
                )
            }
            Reject::UpgradeNotRequested => {
                "bad upstream response: 101 without an allowed Upgrade request".into()
            }
            Reject::UpgradeNotOffered => {
                "bad upstream response: 101 to a protocol that was not offered".into()
            }
        }
    }
}

/// How a final response is delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FinalPlan {
    /// An HTTP/1.0 client gets a chunked body decoded, delimited by the
    /// close (RFC 9112 6.1).
    pub dechunk: bool,
    /// The `Connection` header written down.
    pub connection: ConnectionHeader,
    /// The client connection closes after this response.
    pub close_down: bool,
}

/// What a response head means for the exchange.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResponseStep {
    /// 100 Continue while the body waits for it: tell the client when it
    /// speaks HTTP/1.1, then send the body.
    Continue {
        tell_client: bool,
    },
    /// Another interim response: forwarded to HTTP/1.1 clients only.
    Interim {
        forward: bool,
    },
    /// A 101 to an offered, allowed protocol: forward it, then tunnel.
    Upgrade,
    /// A 503 that the retry policy takes as a failed attempt.
    Retry503,
    Final(FinalPlan),
    Reject(Reject),
}

/// The wait for a response head: what the exchange has sent so far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Awaiting<'a> {
    plan: &'a RequestPlan,
    /// The request body has not been forwarded yet.
    pub body_pending: bool,
    /// Interim responses seen.
    interim: usize,
    /// A 503 is a retryable failure rather than an answer.
    intercept_503: bool,
}

impl<'a> Awaiting<'a> {
    pub fn new(plan: &'a RequestPlan, intercept_503: bool) -> Awaiting<'a> {
        Awaiting {
            plan,
            body_pending: plan.has_body(),
            interim: 0,
            intercept_503,
        }
    }

    /// The body is withheld until 100 Continue (or until the client sends
    /// it anyway, RFC 9110 10.1.1).
    pub fn waits_for_continue(&self) -> bool {
        self.plan.expect_continue && self.body_pending
    }

    /// The body has been forwarded.
    pub fn body_sent(&mut self) {
        self.body_pending = false;
    }

    /// Whether a local reply made now closes the client connection.
    pub fn reply_closes(&self) -> bool {
        self.plan.closes_after_reply(self.body_pending)
    }

    /// What the response head `resp` means now.
    pub fn on_response(&mut self, resp: &Response) -> ResponseStep {
        let http11 = self.plan.version == Version::Http11;
        if resp.is_interim() {
            self.interim += 1;
            if self.interim > MAX_INTERIM_RESPONSES {
                return ResponseStep::Reject(Reject::TooManyInterim);
            }
        }
        match resp.status {
            503 if self.intercept_503 => ResponseStep::Retry503,
            101 if resp.upgrade_matches(&self.plan.upgrades) => ResponseStep::Upgrade,
            101 if self.plan.upgrades.is_empty() => {
                ResponseStep::Reject(Reject::UpgradeNotRequested)
            }
            101 => ResponseStep::Reject(Reject::UpgradeNotOffered),
            100 if self.waits_for_continue() => ResponseStep::Continue {
                tell_client: http11,
            },
            _ if resp.is_interim() => ResponseStep::Interim { forward: http11 },
            _ => ResponseStep::Final(self.final_plan(resp)),
        }
    }

    fn final_plan(&self, resp: &Response) -> FinalPlan {
        let dechunk = self.plan.version == Version::Http10 && resp.is_only_chunked();
        // Without 100-continue the client may or may not send the body
        // now: the connection's framing is unknown, so it ends here.
        let close_down = self.plan.client_close
            || self.body_pending
            || resp.framing == BodyFraming::UntilClose
            || dechunk;
        let connection = if close_down {
            ConnectionHeader::Close
        } else if self.plan.version == Version::Http10 {
            ConnectionHeader::KeepAlive
        } else {
            ConnectionHeader::None
        };
        FinalPlan {
            dechunk,
            connection,
            close_down,
        }
    }
}

/// What an upstream connection has carried and what its server allows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConnUse {
    /// Requests whose responses completed on this connection.
    pub served: u32,
    /// Further requests the server allows (`Keep-Alive: max=`), if it said.
    server_remaining: Option<u32>,
    /// The server's announced idle timeout (`Keep-Alive: timeout=`), if any.
    server_idle: Option<Duration>,
}

/// How a final response ended on the upstream connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ending<'a> {
    pub resp: &'a Response,
    /// The request body was never forwarded (a final answer to a request
    /// that waited for 100 Continue).
    pub body_pending: bool,
    /// Bytes past the response's framing are buffered.
    pub leftover: bool,
}

impl ConnUse {
    /// Records a delivered response and decides whether the connection may
    /// carry another request (`max_requests`: 0 for no limit); Err says why
    /// not.
    pub fn reuse(&mut self, end: Ending<'_>, max_requests: u32) -> Result<(), CloseReason> {
        if end.resp.framing == BodyFraming::UntilClose {
            return Err(CloseReason::ServerClose);
        }
        if end.resp.close {
            return Err(CloseReason::ConnectionCloseHeader);
        }
        if end.body_pending {
            // The server may still be waiting for the body never sent.
            return Err(CloseReason::Error);
        }
        if end.leftover {
            // A body on a HEAD, 204 or 304, or more than its Content-Length:
            // never read as the next response.
            return Err(CloseReason::UnsolicitedBytes);
        }
        self.served += 1;
        let keep_alive = end.resp.keep_alive;
        self.server_idle = keep_alive.timeout.or(self.server_idle);
        self.server_remaining = keep_alive
            .max
            .or(self.server_remaining.map(|r| r.saturating_sub(1)));
        if max_requests > 0 && self.served >= max_requests {
            return Err(CloseReason::MaxRequests);
        }
        if self.server_remaining == Some(0) {
            return Err(CloseReason::MaxRequests);
        }
        Ok(())
    }

    /// How long the connection may stay idle in the pool: `configured`, or
    /// less than the server's announced timeout (by half of it, at most 1 s
    /// less), so the proxy never hands out a connection the server is
    /// closing.
    pub fn idle_limit(&self, configured: Duration) -> Duration {
        match self.server_idle {
            Some(server) => {
                configured.min(server.saturating_sub(server.min(Duration::from_secs(1)) / 2))
            }
            None => configured,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_by_arrival() {
        let dst: SocketAddr = "10.77.5.1:80".parse().unwrap();
        let name = |n: &str| Some(ServerName::try_from(n.to_string()).unwrap());
        let at = |a: &str| a.parse::<SocketAddr>().unwrap();
        let plain = Arrival::Plain { originate: None };
        let originate = Arrival::Plain {
            originate: Some(443),
        };
        let cases: &[(Arrival<'_>, Option<&str>, Result<Route, &str>)] = &[
            (plain, Some("origin.test"), Ok(Route { dst, tls: None })),
            (
                originate,
                Some("origin.test:80"),
                Ok(Route {
                    dst: at("10.77.5.1:443"),
                    tls: name("origin.test"),
                }),
            ),
            (
                originate,
                Some("10.77.5.1"),
                Ok(Route {
                    dst: at("10.77.5.1:443"),
                    tls: name("10.77.5.1"),
                }),
            ),
            (
                originate,
                None,
                Err("upstream TLS: the request has no Host to name the origin"),
            ),
            (
                originate,
                Some("bad_name!"),
                Err("upstream TLS: \"bad_name!\" cannot name a server"),
            ),
            (
                Arrival::Intercepted {
                    sni: Some("origin.test"),
                },
                Some("origin.test"),
                Ok(Route {
                    dst,
                    tls: name("origin.test"),
                }),
            ),
            (
                Arrival::Intercepted { sni: None },
                Some("10.77.5.1"),
                Ok(Route {
                    dst,
                    tls: name("10.77.5.1"),
                }),
            ),
        ];
        for (arrival, host, want) in cases {
            let got = route(dst, *arrival, *host);
            assert_eq!(
                got,
                want.clone().map_err(str::to_string),
                "{arrival:?} {host:?}"
            );
        }
    }
    use crate::proxy::http::{
        parse_request_head, parse_response_head, prepare_request, prepare_response,
    };

    fn request(raw: &str) -> Request {
        let (head, _) = parse_request_head(raw.as_bytes())
            .expect("valid head")
            .expect("complete head");
        prepare_request(head).expect("acceptable request")
    }

    fn response(method: &str, raw: &str) -> Response {
        let (head, _) = parse_response_head(raw.as_bytes())
            .expect("valid head")
            .expect("complete head");
        prepare_response(method, head).expect("acceptable response")
    }

    fn plan(raw: &str) -> RequestPlan {
        let req = request(raw);
        let offered = req.upgrade.clone();
        plan_request(&req, offered)
    }

    const GET11: &str = "GET / HTTP/1.1\r\nHost: o\r\n\r\n";
    const GET10: &str = "GET / HTTP/1.0\r\n\r\n";
    const GET10_KA: &str = "GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n";
    const GET11_CLOSE: &str = "GET / HTTP/1.1\r\nHost: o\r\nConnection: close\r\n\r\n";
    const POST: &str = "POST / HTTP/1.1\r\nHost: o\r\nContent-Length: 3\r\n\r\n";
    const POST_EXPECT: &str =
        "POST / HTTP/1.1\r\nHost: o\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\n";
    const UPGRADE: &str =
        "GET / HTTP/1.1\r\nHost: o\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n";

    #[test]
    fn what_becomes_of_a_denied_body() {
        let limit = DENIED_BODY_DRAIN_LIMIT;
        let post = |field: String| request(&format!("POST / HTTP/1.1\r\nHost: o\r\n{field}\r\n"));
        let cases = [
            (request(GET11), DeniedBody::None),
            (post("Content-Length: 3\r\n".into()), DeniedBody::Drain(3)),
            (
                post(format!("Content-Length: {limit}\r\n")),
                DeniedBody::Drain(limit),
            ),
            (
                post(format!("Content-Length: {}\r\n", limit + 1)),
                DeniedBody::Close,
            ),
            (
                post("Transfer-Encoding: chunked\r\n".into()),
                DeniedBody::Close,
            ),
            (request(POST_EXPECT), DeniedBody::Close),
        ];
        for (req, want) in cases {
            assert_eq!(
                denied_body(&req),
                want,
                "{:?} {:?}",
                req.framing,
                req.expect_continue
            );
        }
    }

    #[test]
    fn what_a_request_needs() {
        use ConnectionHeader as C;
        // (request, client_close, expect_continue, upgrades, upstream Connection)
        let cases: [(&str, bool, bool, &[&str], C); 8] = [
            (GET11, false, false, &[], C::None),
            // HTTP/1.0 closes unless it asks for keep-alive; upstream, the
            // proxy asks to keep its own connection.
            (GET10, true, false, &[], C::KeepAlive),
            (GET10_KA, false, false, &[], C::KeepAlive),
            (GET11_CLOSE, true, false, &[], C::None),
            (POST, false, false, &[], C::None),
            (POST_EXPECT, false, true, &[], C::None),
            // Expect without a body waits for nothing.
            (
                "GET / HTTP/1.1\r\nHost: o\r\nExpect: 100-continue\r\n\r\n",
                false,
                false,
                &[],
                C::None,
            ),
            (UPGRADE, false, false, &["websocket"], C::Upgrade),
        ];
        for (raw, close, expect, upgrades, connection) in cases {
            let p = plan(raw);
            assert_eq!(p.client_close, close, "{raw:?}");
            assert_eq!(p.expect_continue, expect, "{raw:?}");
            assert_eq!(p.upgrades, upgrades, "{raw:?}");
            assert_eq!(p.upstream_connection, connection, "{raw:?}");
        }
        // An Upgrade the rule does not allow is not forwarded.
        let p = plan_request(&request(UPGRADE), Vec::new());
        assert_eq!(p.upstream_connection, C::None);
    }

    /// Feeds `responses` to a fresh wait for `raw`'s response; `sent_at`:
    /// after how many responses the body goes out on its own (the client
    /// sent it without waiting for 100).
    fn steps(raw: &str, responses: &[&str], sent_at: Option<usize>) -> Vec<ResponseStep> {
        let req = request(raw);
        let p = plan_request(&req, req.upgrade.clone());
        let mut wait = Awaiting::new(&p, false);
        if !p.expect_continue {
            wait.body_sent();
        }
        let mut out = Vec::new();
        for (i, r) in responses.iter().enumerate() {
            if sent_at == Some(i) {
                wait.body_sent();
            }
            let step = wait.on_response(&response(&req.method, r));
            if let ResponseStep::Continue { .. } = step {
                wait.body_sent();
            }
            out.push(step);
        }
        out
    }

    const R100: &str = "HTTP/1.1 100 Continue\r\n\r\n";
    const R103: &str = "HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n";
    const R200: &str = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n";
    const R200_CLOSE: &str = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\n";
    const R200_EOF: &str = "HTTP/1.1 200 OK\r\n\r\n";
    const R200_CHUNKED: &str = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n";
    const R101: &str =
        "HTTP/1.1 101 Switching\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n";
    const R101_H2C: &str = "HTTP/1.1 101 Switching\r\nConnection: upgrade\r\nUpgrade: h2c\r\n\r\n";
    const R417: &str = "HTTP/1.1 417 Expectation Failed\r\nContent-Length: 0\r\n\r\n";

    fn fin(dechunk: bool, connection: ConnectionHeader, close_down: bool) -> ResponseStep {
        ResponseStep::Final(FinalPlan {
            dechunk,
            connection,
            close_down,
        })
    }

    #[test]
    fn what_a_response_means() {
        use ConnectionHeader as C;
        use ResponseStep as S;
        let keep = fin(false, C::None, false);
        let close = fin(false, C::Close, true);
        #[allow(clippy::type_complexity)]
        let cases: [(&str, &[&str], Option<usize>, &[ResponseStep]); 17] = [
            (GET11, &[R200], None, &[keep]),
            // HTTP/1.0: keep-alive is said explicitly, or the connection closes.
            (GET10_KA, &[R200], None, &[fin(false, C::KeepAlive, false)]),
            (GET10, &[R200], None, &[close]),
            (GET11_CLOSE, &[R200], None, &[close]),
            // The server's close ends the upstream connection only.
            (GET11, &[R200_CLOSE], None, &[keep]),
            // A close-delimited body can only end with the client's
            // connection too.
            (GET11, &[R200_EOF], None, &[close]),
            // Chunked to HTTP/1.0 is decoded and delimited by the close.
            (
                GET10_KA,
                &[R200_CHUNKED],
                None,
                &[fin(true, C::Close, true)],
            ),
            (GET11, &[R200_CHUNKED], None, &[keep]),
            // Interim responses go to HTTP/1.1 clients only.
            (
                GET11,
                &[R103, R200],
                None,
                &[S::Interim { forward: true }, keep],
            ),
            (
                GET10_KA,
                &[R103, R200],
                None,
                &[
                    S::Interim { forward: false },
                    fin(false, C::KeepAlive, false),
                ],
            ),
            // 100-continue answered: the client is told, the body follows.
            (
                POST_EXPECT,
                &[R100, R200],
                None,
                &[S::Continue { tell_client: true }, keep],
            ),
            // Not answered: a final answer while the body is unsent closes
            // the client connection, whose framing is now unknown.
            (POST_EXPECT, &[R417], None, &[close]),
            // The client sent its body without waiting: a late 100 is just
            // an interim response.
            (
                POST_EXPECT,
                &[R100, R200],
                Some(0),
                &[S::Interim { forward: true }, keep],
            ),
            // A 100 to a request that did not ask is an interim response.
            (
                POST,
                &[R100, R200],
                None,
                &[S::Interim { forward: true }, keep],
            ),
            (UPGRADE, &[R101], None, &[S::Upgrade]),
            (
                UPGRADE,
                &[R101_H2C],
                None,
                &[S::Reject(Reject::UpgradeNotOffered)],
            ),
            (
                GET11,
                &[R101],
                None,
                &[S::Reject(Reject::UpgradeNotRequested)],
            ),
        ];
        for (raw, responses, sent_at, want) in cases {
            assert_eq!(
                steps(raw, responses, sent_at),
                want,
                "{raw:?} {responses:?}"
            );
        }
    }

    #[test]
    fn interim_floods_and_intercepted_503s() {
        let flood = vec![R103; MAX_INTERIM_RESPONSES + 1];
        let got = steps(GET11, &flood, None);
        assert_eq!(
            got[MAX_INTERIM_RESPONSES - 1],
            ResponseStep::Interim { forward: true }
        );
        assert_eq!(
            got[MAX_INTERIM_RESPONSES],
            ResponseStep::Reject(Reject::TooManyInterim)
        );

        let p = plan(GET11);
        let r503 = response("GET", "HTTP/1.1 503 Busy\r\nContent-Length: 0\r\n\r\n");
        assert_eq!(
            Awaiting::new(&p, true).on_response(&r503),
            ResponseStep::Retry503
        );
        assert!(matches!(
            Awaiting::new(&p, false).on_response(&r503),
            ResponseStep::Final(_)
        ));
    }

    #[test]
    fn local_replies_close_while_a_body_is_unread() {
        // (request, body forwarded, reply closes)
        let cases = [
            (GET11, false, false),
            (GET11_CLOSE, false, true),
            (POST, false, true),
            (POST, true, false),
            (POST_EXPECT, false, true),
        ];
        for (raw, sent, closes) in cases {
            let p = plan(raw);
            let mut wait = Awaiting::new(&p, false);
            if sent {
                wait.body_sent();
            }
            assert_eq!(wait.reply_closes(), closes, "{raw:?} sent {sent}");
        }
    }

    #[test]
    fn heads_without_bodies() {
        // HEAD, 204 and 304 carry no body whatever their framing fields say:
        // the connection stays, and bytes after them are not a response.
        let cases = [
            ("HEAD", "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n"),
            ("GET", "HTTP/1.1 204 No Content\r\n\r\n"),
            (
                "GET",
                "HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\n\r\n",
            ),
        ];
        for (method, raw) in cases {
            let resp = response(method, raw);
            assert_eq!(resp.framing, BodyFraming::None, "{method} {raw:?}");
            let p = plan(&format!("{method} / HTTP/1.1\r\nHost: o\r\n\r\n"));
            let mut wait = Awaiting::new(&p, false);
            assert_eq!(
                wait.on_response(&resp),
                fin(false, ConnectionHeader::None, false),
                "{method} {raw:?}"
            );
            let end = |leftover| Ending {
                resp: &resp,
                body_pending: false,
                leftover,
            };
            assert_eq!(ConnUse::default().reuse(end(false), 0), Ok(()));
            assert_eq!(
                ConnUse::default().reuse(end(true), 0),
                Err(CloseReason::UnsolicitedBytes)
            );
        }
    }

    #[test]
    fn whether_an_upstream_connection_is_reused() {
        use CloseReason as R;
        // (response, body pending, leftover, max_requests, served before, result)
        let cases = [
            (R200, false, false, 0, 0, Ok(())),
            (R200, false, false, 100, 98, Ok(())),
            // The 100th response of a connection limited to 100 closes it.
            (R200, false, false, 100, 99, Err(R::MaxRequests)),
            (
                R200_CLOSE,
                false,
                false,
                0,
                0,
                Err(R::ConnectionCloseHeader),
            ),
            (R200_EOF, false, false, 0, 0, Err(R::ServerClose)),
            (R417, true, false, 0, 0, Err(R::Error)),
            (R200, false, true, 0, 0, Err(R::UnsolicitedBytes)),
            // HTTP/1.0 servers close unless they say keep-alive.
            (
                "HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\n",
                false,
                false,
                0,
                0,
                Err(R::ConnectionCloseHeader),
            ),
            (
                "HTTP/1.0 200 OK\r\nContent-Length: 2\r\nConnection: keep-alive\r\n\r\n",
                false,
                false,
                0,
                0,
                Ok(()),
            ),
            (
                "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nKeep-Alive: max=0\r\n\r\n",
                false,
                false,
                0,
                0,
                Err(R::MaxRequests),
            ),
        ];
        for (raw, body_pending, leftover, max, served, want) in cases {
            let resp = response("GET", raw);
            let mut conn = ConnUse {
                served,
                ..ConnUse::default()
            };
            let end = Ending {
                resp: &resp,
                body_pending,
                leftover,
            };
            assert_eq!(conn.reuse(end, max), want, "{raw:?} served {served}");
        }
    }

    #[test]
    fn keep_alive_max_counts_down_across_responses() {
        let first = response(
            "GET",
            "HTTP/1.1 200 OK\r\nContent-Length: 0\r\nKeep-Alive: timeout=4, max=3\r\n\r\n",
        );
        let plain = response("GET", "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
        let end = |resp| Ending {
            resp,
            body_pending: false,
            leftover: false,
        };
        let mut conn = ConnUse::default();
        // max=3 after the first response: three more, then closed.
        assert_eq!(conn.reuse(end(&first), 0), Ok(()));
        assert_eq!(conn.reuse(end(&plain), 0), Ok(()));
        assert_eq!(conn.reuse(end(&plain), 0), Ok(()));
        assert_eq!(conn.reuse(end(&plain), 0), Err(CloseReason::MaxRequests));
        assert_eq!(conn.served, 4);
        // Kept idle for less than the server's 4 s.
        let s = Duration::from_secs;
        assert_eq!(conn.idle_limit(s(60)), Duration::from_millis(3500));
        assert_eq!(conn.idle_limit(s(2)), s(2));
        assert_eq!(ConnUse::default().idle_limit(s(60)), s(60));
    }

    #[test]
    fn pipelined_requests_are_planned_one_at_a_time() {
        // Two requests in one buffer: each head is read and planned alone,
        // and the second starts where the first's framing ends.
        let raw = format!("{POST}abc{GET11_CLOSE}");
        let (first, n) = parse_request_head(raw.as_bytes()).unwrap().unwrap();
        let first = plan_request(&prepare_request(first).unwrap(), Vec::new());
        assert_eq!(first.framing, BodyFraming::Length(3));
        assert!(!first.client_close);
        let rest = &raw.as_bytes()[n + 3..];
        let (second, _) = parse_request_head(rest).unwrap().unwrap();
        let second = plan_request(&prepare_request(second).unwrap(), Vec::new());
        assert_eq!(second.framing, BodyFraming::None);
        assert!(second.client_close);
    }
}
