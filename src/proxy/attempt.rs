//! One upstream attempt of an allowed request, phase by phase: send head,
//! (await continue,) send body, await head, then deliver, or tunnel after a
//! 101. Over any transport on either side: what a head means is decided in
//! [`exchange`](super::exchange), and the bodies move through the stream
//! layer, kernel-side where both transports allow it.

use std::time::Duration;

use super::exchange::{Awaiting, Ending, FinalPlan, RequestPlan, ResponseStep};
use super::http::{
    parse_response_head, prepare_response, write_request, write_response, BodyFraming,
    ChunkedScanner, ConnectionHeader, Request, Response, ResponseHead,
};
use super::outcome::{LocalReply, Next};
use super::retry::Failure;
use super::stream::{BodyError, BufStream, Dest, HeadReadError};
use super::transport::Transport;
use super::upstream::UpConn;
use crate::accesslog::{Flag, Outcome};
use crate::config::UpstreamConfig;
use crate::metrics::{self, CloseReason, Errno};

/// An allowed request on its way upstream, with what policy allows it.
pub(super) struct Forwarding<'a, D: Transport> {
    pub down: &'a mut BufStream<D>,
    pub req: &'a Request,
    pub plan: &'a RequestPlan,
    pub settings: UpstreamConfig,
    pub out: &'a mut Outcome,
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
pub(super) struct AttemptFailure {
    pub failure: Failure,
    /// What to answer if it is not retried.
    pub reply: LocalReply,
}

/// Why an attempt stopped short of a response.
pub(super) enum Stop {
    /// Nothing reached the client: it may be retried. The upstream
    /// connection is to be closed for this reason.
    Failed(AttemptFailure, CloseReason),
    /// The upstream connection is to be closed, and the client gets the
    /// reply (or, with None, just a close).
    GiveUp(Option<LocalReply>),
    /// The client went away mid-exchange: the upstream connection is in an
    /// unknown state, so it is to be closed too.
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

/// How an attempt ended, with the upstream connection for the caller to
/// pool or close.
pub(super) enum AttemptEnd<U: Transport> {
    /// The final response went down; the connection may be reused, or Err
    /// says why it is closed.
    Delivered {
        next: Next<U>,
        conn: UpConn<U>,
        reuse: Result<(), CloseReason>,
    },
    /// A 101 went down: the connection is the client's tunnel now.
    Tunnel(BufStream<U>),
    Stopped(Stop, UpConn<U>),
}

impl<D: Transport> Forwarding<'_, D> {
    /// Runs one attempt on `conn`; `intercept_503`: a 503 is a retryable
    /// failure rather than an answer.
    pub async fn run<U: Transport>(
        &mut self,
        mut conn: UpConn<U>,
        intercept_503: bool,
    ) -> AttemptEnd<U> {
        let plan = self.plan;
        let mut wait = Awaiting::new(plan, intercept_503);
        let mut phase = Phase::SendHead;
        loop {
            let up = &mut conn;
            let next = match phase {
                Phase::SendHead => self.send_head(up, &wait).await,
                Phase::AwaitContinue => self.await_continue(up, &mut wait).await,
                Phase::SendBody => self.send_body(up, &mut wait).await,
                Phase::AwaitHead => {
                    let timeout = self.settings.request_timeout;
                    let read = up
                        .stream
                        .read_head(parse_response_head, timeout, false)
                        .await;
                    self.on_head(up, &mut wait, read).await
                }
                Phase::Deliver(fin) => return self.deliver(conn, fin).await,
                Phase::Tunnel(resp) => return self.upgrade(conn, &resp).await,
            };
            match next {
                Ok(p) => phase = p,
                Err(stop) => return AttemptEnd::Stopped(stop, conn),
            }
        }
    }

    /// Phase: send the request head; then the body, or wait.
    async fn send_head<U: Transport>(
        &mut self,
        up: &mut UpConn<U>,
        wait: &Awaiting<'_>,
    ) -> Result<Phase, Stop> {
        let mut head = Vec::with_capacity(1024);
        write_request(self.req, &self.plan.upgrades, &mut head);
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
    async fn await_continue<U: Transport>(
        &mut self,
        up: &mut UpConn<U>,
        wait: &mut Awaiting<'_>,
    ) -> Result<Phase, Stop> {
        let timeout = self.settings.request_timeout;
        let read = {
            let down = &mut *self.down;
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
        self.on_head(up, wait, read).await
    }

    /// Phase: forward the request body.
    async fn send_body<U: Transport>(
        &mut self,
        up: &mut UpConn<U>,
        wait: &mut Awaiting<'_>,
    ) -> Result<Phase, Stop> {
        let idle = self.settings.request_timeout;
        let sent = self
            .down
            .forward_body(Dest::Stream(&mut up.stream), self.plan.framing, idle)
            .await;
        match sent {
            Ok(n) => {
                metrics::forwarded(metrics::Direction::Upstream, n.copied, n.spliced);
                self.out.bytes_received += n.read;
                wait.body_sent();
                Ok(if wait.waits_for_continue() {
                    Phase::AwaitContinue
                } else {
                    Phase::AwaitHead
                })
            }
            Err(e) => Err(request_body_stop(e, self.out)),
        }
    }

    /// A response head read: judged, then the next phase.
    async fn on_head<U: Transport>(
        &mut self,
        up: &mut UpConn<U>,
        wait: &mut Awaiting<'_>,
        read: Result<Option<(ResponseHead, usize)>, HeadReadError>,
    ) -> Result<Phase, Stop> {
        let close = wait.reply_closes();
        let timeout = self.settings.request_timeout;
        let resp = response_of(read, &self.req.method, up.reused, close, timeout)?;
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
                    self.write_down(continue_).await?;
                }
                Ok(Phase::SendBody)
            }
            ResponseStep::Interim { forward } => {
                if forward {
                    let mut interim = Vec::new();
                    write_response(&resp, ConnectionHeader::None, &mut interim);
                    self.write_down(&interim).await?;
                }
                Ok(if wait.waits_for_continue() {
                    Phase::AwaitContinue
                } else {
                    Phase::AwaitHead
                })
            }
            ResponseStep::Retry503 => {
                let reason = "upstream answered 503".to_string();
                let reply = LocalReply::error(503, Flag::UC, reason, close);
                let failure = AttemptFailure {
                    failure: Failure::Status503,
                    reply,
                };
                Err(Stop::Failed(failure, CloseReason::Error))
            }
            ResponseStep::Reject(r) => {
                let reply = LocalReply::error(502, Flag::UPE, r.describe(), true);
                Err(Stop::GiveUp(Some(reply)))
            }
        }
    }

    /// Writes a head (or interim response) down; a failure means the
    /// client went away.
    async fn write_down(&mut self, bytes: &[u8]) -> Result<(), Stop> {
        self.down
            .write_all(bytes)
            .await
            .map_err(|_| Stop::ClientGone)?;
        self.out.bytes_sent += bytes.len() as u64;
        Ok(())
    }

    /// Phase: a 101 to an allowed protocol goes down; the connection
    /// becomes a tunnel.
    async fn upgrade<U: Transport>(&mut self, up: UpConn<U>, resp: &Response) -> AttemptEnd<U> {
        let mut head = Vec::new();
        write_response(resp, ConnectionHeader::Upgrade, &mut head);
        self.out.status = 101;
        match self.write_down(&head).await {
            Ok(()) => AttemptEnd::Tunnel(up.stream),
            Err(stop) => AttemptEnd::Stopped(stop, up),
        }
    }

    /// Phase: the final response goes down; then whether the upstream
    /// connection may be reused.
    async fn deliver<U: Transport>(&mut self, mut conn: UpConn<U>, fin: Final) -> AttemptEnd<U> {
        let mut resp = fin.resp;
        if fin.plan.dechunk {
            resp.strip_chunked();
        }
        let mut head = Vec::with_capacity(1024);
        write_response(&resp, fin.plan.connection, &mut head);
        self.out.status = resp.status;
        // A small body that came with the head leaves with it, in one write.
        let (rest, carried) = match resp.framing {
            BodyFraming::Length(n) if conn.stream.take_buffered(n, &mut head) => {
                (BodyFraming::None, n)
            }
            other => (other, 0),
        };
        if let Err(stop) = self.write_down(&head).await {
            return AttemptEnd::Stopped(stop, conn);
        }
        self.out.first_byte = Some(std::time::Instant::now());
        if carried > 0 {
            metrics::forwarded(metrics::Direction::Downstream, carried, 0);
        }
        let idle = self.settings.request_timeout;
        let down = Dest::Stream(&mut *self.down);
        let body = if fin.plan.dechunk {
            let dechunking = ChunkedScanner::dechunking();
            conn.stream.forward_chunked(down, dechunking, idle).await
        } else {
            conn.stream.forward_body(down, rest, idle).await
        };
        let reuse = match body {
            Ok(n) => {
                metrics::forwarded(metrics::Direction::Downstream, n.copied, n.spliced);
                self.out.bytes_sent += n.total();
                let end = Ending {
                    resp: &resp,
                    body_pending: fin.body_pending,
                    leftover: !conn.stream.buffered().is_empty(),
                };
                let max = self.settings.max_requests_per_connection;
                conn.usage.reuse(end, max)
            }
            Err(e) => {
                response_body_failed(e, self.out);
                return AttemptEnd::Delivered {
                    next: Next::Close,
                    conn,
                    reuse: Err(CloseReason::Error),
                };
            }
        };
        let next = if fin.plan.close_down {
            Next::Close
        } else {
            Next::Keep
        };
        AttemptEnd::Delivered { next, conn, reuse }
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

#[cfg(test)]
mod tests {
    //! Whole exchanges over in-memory streams: a scripted client and origin
    //! on `tokio::io::duplex` pairs, the attempt between them. No socket, no
    //! root.
    use tokio::io::{duplex, AsyncReadExt, AsyncWriteExt, DuplexStream};

    use super::*;
    use crate::proxy::exchange::{plan_request, ConnUse};
    use crate::proxy::http::{parse_request_head, prepare_request};
    use crate::proxy::stream::tunnel;

    /// One step of a scripted peer.
    #[derive(Debug, Clone, Copy)]
    enum Step {
        Send(&'static str),
        /// Read until this text has arrived.
        Expect(&'static str),
        /// Read exactly this many bytes.
        Take(usize),
        /// Half-close.
        Close,
    }

    /// Plays `steps` on `io`, then reads to EOF; returns all it read.
    async fn play(mut io: DuplexStream, steps: Vec<Step>) -> String {
        let mut seen = Vec::new();
        let mut mark = 0;
        let mut chunk = [0u8; 4096];
        for step in steps {
            match step {
                Step::Send(s) => io.write_all(s.as_bytes()).await.expect("peer send"),
                Step::Expect(s) => loop {
                    let text = String::from_utf8_lossy(&seen[mark..]).into_owned();
                    if let Some(i) = text.find(s) {
                        mark += i + s.len();
                        break;
                    }
                    let n = io.read(&mut chunk).await.expect("peer read");
                    assert!(n > 0, "EOF before {s:?}; got {text:?}");
                    seen.extend_from_slice(&chunk[..n]);
                },
                Step::Take(n) => {
                    while seen.len() < mark + n {
                        let got = io.read(&mut chunk).await.expect("peer read");
                        assert!(got > 0, "EOF before {n} bytes");
                        seen.extend_from_slice(&chunk[..got]);
                    }
                    mark += n;
                }
                Step::Close => io.shutdown().await.expect("peer shutdown"),
            }
        }
        let _ = io.read_to_end(&mut seen).await;
        String::from_utf8_lossy(&seen).into_owned()
    }

    /// How an attempt ended, in brief.
    #[derive(Debug, PartialEq, Eq)]
    enum End {
        Keep(Result<(), CloseReason>),
        Close(Result<(), CloseReason>),
        Tunnel,
        /// Retryable, with the failure's description.
        Failed(String),
        /// Answered by the proxy with this status, or just closed.
        GiveUp(Option<u16>),
        ClientGone,
    }

    fn brief<U: Transport>(end: &AttemptEnd<U>) -> End {
        match end {
            AttemptEnd::Delivered { next, reuse, .. } => match next {
                Next::Keep => End::Keep(*reuse),
                _ => End::Close(*reuse),
            },
            AttemptEnd::Tunnel(_) => End::Tunnel,
            AttemptEnd::Stopped(Stop::Failed(f, _), _) => End::Failed(f.failure.describe()),
            AttemptEnd::Stopped(Stop::GiveUp(r), _) => End::GiveUp(r.as_ref().map(|r| r.status)),
            AttemptEnd::Stopped(Stop::ClientGone, _) => End::ClientGone,
        }
    }

    /// What the client and the origin saw.
    struct Seen {
        end: End,
        client: String,
        origin: String,
    }

    const WAIT: Duration = Duration::from_secs(10);

    /// Reads `count` requests from the client, each attempted on the same
    /// upstream connection; the last attempt's end, and what each peer saw.
    async fn exchanges(
        count: usize,
        client: Vec<Step>,
        origin: Vec<Step>,
        intercept_503: bool,
    ) -> Seen {
        let (client_io, down_io) = duplex(1 << 16);
        let (up_io, origin_io) = duplex(1 << 16);
        let client = tokio::spawn(play(client_io, client));
        let origin = tokio::spawn(play(origin_io, origin));
        let end = proxy_side(count, down_io, up_io, intercept_503).await;
        // Everything the proxy held is dropped by now: both peers see EOF.
        let within = |t| tokio::time::timeout(WAIT, t);
        let client = within(client)
            .await
            .expect("client ends")
            .expect("client task");
        let origin = within(origin)
            .await
            .expect("origin ends")
            .expect("origin task");
        Seen {
            end,
            client,
            origin,
        }
    }

    /// The proxy's side of [`exchanges`]; drops both streams when done.
    async fn proxy_side(
        count: usize,
        down_io: DuplexStream,
        up_io: DuplexStream,
        intercept_503: bool,
    ) -> End {
        let mut down = BufStream::new(down_io, None);
        let mut conn = UpConn {
            id: 1,
            stream: BufStream::new(up_io, None),
            usage: ConnUse::default(),
            reused: false,
        };
        let mut end = End::GiveUp(None);
        for _ in 0..count {
            let (head, n) = down
                .read_head(parse_request_head, WAIT, false)
                .await
                .expect("request head")
                .expect("a request");
            let req = prepare_request(head).expect("acceptable request");
            let plan = plan_request(&req, req.upgrade.clone());
            let mut out = Outcome::new(n as u64);
            let mut fw = Forwarding {
                down: &mut down,
                req: &req,
                plan: &plan,
                settings: UpstreamConfig::default(),
                out: &mut out,
            };
            let ended = fw.run(conn, intercept_503).await;
            end = brief(&ended);
            match ended {
                AttemptEnd::Delivered { conn: c, .. } => conn = c,
                AttemptEnd::Tunnel(up) => {
                    tunnel(down, up, WAIT).await.end.expect("tunnel");
                    break;
                }
                AttemptEnd::Stopped(..) => break,
            }
        }
        end
    }

    async fn one(client: Vec<Step>, origin: Vec<Step>) -> Seen {
        exchanges(1, client, origin, false).await
    }

    use Step::{Close, Expect, Send, Take};

    const GET: &str = "GET / HTTP/1.1\r\nHost: o\r\n\r\n";
    const OK5: &str = "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello";

    #[tokio::test]
    async fn a_keep_alive_exchange() {
        let seen = one(
            vec![Send(GET), Expect("hello")],
            vec![Expect("\r\n\r\n"), Send(OK5)],
        )
        .await;
        assert_eq!(seen.end, End::Keep(Ok(())));
        assert_eq!(seen.client, OK5);
        assert_eq!(seen.origin, GET);
    }

    #[tokio::test]
    async fn pipelined_requests_on_one_upstream_connection() {
        let two = "GET /a HTTP/1.1\r\nHost: o\r\n\r\nGET /b HTTP/1.1\r\nHost: o\r\nConnection: close\r\n\r\n";
        let seen = exchanges(
            2,
            vec![Send(two), Expect("bb")],
            vec![
                Expect("\r\n\r\n"),
                Send("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\naa"),
                Expect("\r\n\r\n"),
                Send("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nbb"),
            ],
            false,
        )
        .await;
        assert_eq!(seen.end, End::Close(Ok(())));
        assert_eq!(
            seen.client,
            "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\naa\
             HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nbb"
        );
        assert_eq!(
            seen.origin,
            "GET /a HTTP/1.1\r\nHost: o\r\n\r\nGET /b HTTP/1.1\r\nHost: o\r\n\r\n"
        );
    }

    #[tokio::test]
    async fn an_http10_client_gets_a_chunked_body_decoded() {
        let req = "GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n";
        let chunked = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n";
        let seen = one(vec![Send(req)], vec![Expect("\r\n\r\n"), Send(chunked)]).await;
        // The upstream connection stays; the client's ends with the body.
        assert_eq!(seen.end, End::Close(Ok(())));
        assert_eq!(
            seen.client,
            "HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nabc"
        );
        assert_eq!(seen.origin, req);
    }

    const POST_EXPECT: &str =
        "POST / HTTP/1.1\r\nHost: o\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\n";

    #[tokio::test]
    async fn continue_answered_then_the_body() {
        let seen = one(
            vec![
                Send(POST_EXPECT),
                Expect("100 Continue\r\n\r\n"),
                Send("abc"),
                Expect("done"),
            ],
            vec![
                Expect("\r\n\r\n"),
                Send("HTTP/1.1 100 Continue\r\n\r\n"),
                Take(3),
                Send("HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\ndone"),
            ],
        )
        .await;
        assert_eq!(seen.end, End::Keep(Ok(())));
        assert_eq!(
            seen.client,
            "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\ndone"
        );
        assert!(seen.origin.ends_with("\r\n\r\nabc"), "{:?}", seen.origin);
    }

    #[tokio::test]
    async fn continue_refused_closes_both_connections() {
        let seen = one(
            vec![Send(POST_EXPECT), Expect("\r\n\r\n")],
            vec![
                Expect("\r\n\r\n"),
                Send("HTTP/1.1 417 Expectation Failed\r\nContent-Length: 0\r\n\r\n"),
            ],
        )
        .await;
        // The body never went: the origin may still wait for it.
        assert_eq!(seen.end, End::Close(Err(CloseReason::Error)));
        assert_eq!(
            seen.client,
            "HTTP/1.1 417 Expectation Failed\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        );
    }

    #[tokio::test]
    async fn a_body_sent_without_waiting_for_continue() {
        let with_body =
            "POST / HTTP/1.1\r\nHost: o\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\nabc";
        let seen = one(
            vec![Send(with_body), Expect("\r\n\r\n")],
            vec![
                Expect("\r\n\r\n"),
                Take(3),
                Send("HTTP/1.1 204 No Content\r\n\r\n"),
            ],
        )
        .await;
        assert_eq!(seen.end, End::Keep(Ok(())));
        assert_eq!(seen.client, "HTTP/1.1 204 No Content\r\n\r\n");
        assert!(seen.origin.ends_with("abc"), "{:?}", seen.origin);
    }

    #[tokio::test]
    async fn an_upgrade_becomes_a_tunnel() {
        let req = "GET / HTTP/1.1\r\nHost: o\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n";
        let switching =
            "HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n";
        // Forwarded with the proxy's own framing of the upgrade fields.
        let forwarded =
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n";
        let seen = one(
            vec![
                Send(req),
                Expect("\r\n\r\n"),
                Send("ping"),
                Expect("pong"),
                Close,
            ],
            vec![
                Expect("\r\n\r\n"),
                Send(switching),
                Take(4),
                Send("pong"),
                Close,
            ],
        )
        .await;
        assert_eq!(seen.end, End::Tunnel);
        assert_eq!(seen.client, format!("{forwarded}pong"));
        let upstream =
            "GET / HTTP/1.1\r\nHost: o\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n";
        assert_eq!(seen.origin, format!("{upstream}ping"));
    }

    #[tokio::test]
    async fn bytes_after_a_bodiless_response_close_the_upstream_connection() {
        let head = "HEAD / HTTP/1.1\r\nHost: o\r\n\r\n";
        let seen = one(
            vec![Send(head), Expect("\r\n\r\n")],
            vec![Expect("\r\n\r\n"), Send(OK5)],
        )
        .await;
        assert_eq!(seen.end, End::Keep(Err(CloseReason::UnsolicitedBytes)));
        assert_eq!(seen.client, "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n");
    }

    #[tokio::test]
    async fn failures_before_a_response_byte_are_retryable() {
        let closed = one(vec![Send(GET)], vec![Expect("\r\n\r\n"), Close]).await;
        assert_eq!(
            closed.end,
            End::Failed("upstream closed the connection before responding".into())
        );
        assert_eq!(closed.client, "", "nothing reached the client");

        let busy = "HTTP/1.1 503 Busy\r\nContent-Length: 0\r\n\r\n";
        let intercepted = exchanges(
            1,
            vec![Send(GET)],
            vec![Expect("\r\n\r\n"), Send(busy)],
            true,
        )
        .await;
        assert_eq!(intercepted.end, End::Failed("upstream answered 503".into()));
        let forwarded = one(
            vec![Send(GET), Expect("\r\n\r\n")],
            vec![Expect("\r\n\r\n"), Send(busy)],
        )
        .await;
        assert_eq!(forwarded.end, End::Keep(Ok(())));
        assert_eq!(forwarded.client, busy);
    }

    #[tokio::test]
    async fn bad_responses_are_answered_502() {
        let cases = [
            "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            "HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n",
        ];
        for bad in cases {
            let seen = one(vec![Send(GET)], vec![Expect("\r\n\r\n"), Send(bad)]).await;
            assert_eq!(seen.end, End::GiveUp(Some(502)), "{bad:?}");
            // The reply itself is written by the caller, after the upstream
            // connection is closed.
            assert_eq!(seen.client, "", "{bad:?}");
        }
    }
}
