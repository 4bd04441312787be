//! The stream and body paths over in-memory streams (`tokio::io::duplex`):
//! no sockets, no root. Time is paused, so timeouts take none.

use tokio::io::{duplex, AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::time::Instant;

use super::*;
use crate::proxy::http::{parse_request_head, parse_response_head};

/// Room in each in-memory pipe: whole test bodies fit.
const ROOM: usize = 1 << 20;
const IDLE: Duration = Duration::from_secs(5);
const NEXT: &[u8] = b"GET /next HTTP/1.1\r\nHost: a\r\n\r\n";

/// The proxy's end of a stream, and the peer's.
fn pair(room: usize) -> (BufStream<DuplexStream>, DuplexStream) {
    let (ours, theirs) = duplex(room);
    (BufStream::new(ours, None), theirs)
}

/// Everything the peer of `dst` received once `dst` is closed.
async fn received(dst: BufStream<DuplexStream>, mut peer: DuplexStream) -> Vec<u8> {
    drop(dst);
    let mut got = Vec::new();
    peer.read_to_end(&mut got).await.unwrap();
    got
}

/// How a body is forwarded in [`bodies_are_forwarded_exactly`].
#[derive(Debug, Clone, Copy)]
enum How {
    Framed(BodyFraming),
    Dechunked,
}

/// (name, head, body, how, what the receiver gets, followed by NEXT).
type BodyCase = (
    &'static str,
    &'static [u8],
    &'static [u8],
    How,
    &'static [u8],
    bool,
);

const BODY_CASES: [BodyCase; 5] = [
    (
        "content-length",
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 11\r\n\r\n",
        b"hello world",
        How::Framed(BodyFraming::Length(11)),
        b"hello world",
        true,
    ),
    (
        "chunked",
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"5;x=y\r\nhello\r\n006\r\n world\r\n0\r\nExpires: 0\r\nT: 1\r\n\r\n",
        How::Framed(BodyFraming::Chunked),
        b"5\r\nhello\r\n6\r\n world\r\n0\r\nT: 1\r\n\r\n",
        true,
    ),
    (
        "dechunked",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"5;x=y\r\nhello\r\n006\r\n world\r\n0\r\nT: 1\r\n\r\n",
        How::Dechunked,
        b"hello world",
        true,
    ),
    (
        "until close",
        b"HTTP/1.0 200 OK\r\n\r\n",
        b"all of it, until the end",
        How::Framed(BodyFraming::UntilClose),
        b"all of it, until the end",
        false,
    ),
    (
        "no body",
        b"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
        b"",
        How::Framed(BodyFraming::None),
        b"",
        true,
    ),
];

/// Reads a head (request or response) from `src`.
async fn head(src: &mut BufStream<DuplexStream>, request: bool) -> usize {
    let read = if request {
        src.read_head(parse_request_head, IDLE, false)
            .await
            .map(|h| h.map(|(_, n)| n))
    } else {
        src.read_head(parse_response_head, IDLE, false)
            .await
            .map(|h| h.map(|(_, n)| n))
    };
    read.unwrap().expect("a head")
}

/// Bytes that came with the head go first, then the rest of the body;
/// the body ends at its last byte and the next head is read intact.
#[tokio::test(start_paused = true)]
async fn bodies_are_forwarded_exactly() {
    for (name, head_bytes, body, how, want, next) in BODY_CASES {
        for with_head in [0, 1, body.len() / 2, body.len()].map(|n| n.min(body.len())) {
            let label = format!("{name}, {with_head} body bytes with the head");
            let (mut src, mut client) = pair(ROOM);
            let (mut dst, peer) = pair(ROOM);
            client
                .write_all(&[head_bytes, &body[..with_head]].concat())
                .await
                .unwrap();
            let request = !head_bytes.starts_with(b"HTTP/");
            assert_eq!(head(&mut src, request).await, head_bytes.len(), "{label}");
            assert_eq!(src.buffered(), &body[..with_head], "{label}");
            client.write_all(&body[with_head..]).await.unwrap();
            if next {
                client.write_all(NEXT).await.unwrap();
            } else {
                client.shutdown().await.unwrap();
            }
            let done = match how {
                How::Framed(framing) => {
                    src.forward_body(Dest::Stream(&mut dst), framing, IDLE)
                        .await
                }
                How::Dechunked => {
                    let scanner = ChunkedScanner::dechunking();
                    src.forward_chunked(Dest::Stream(&mut dst), scanner, IDLE)
                        .await
                }
            };
            let done = done.unwrap_or_else(|e| panic!("{label}: {e}"));
            let forwarded = Forwarded {
                copied: want.len() as u64,
                spliced: 0,
                read: body.len() as u64,
            };
            assert_eq!(done, forwarded, "{label}");
            assert_eq!(received(dst, peer).await, want, "{label}");
            if next {
                assert_eq!(head(&mut src, true).await, NEXT.len(), "{label}");
            }
            assert!(src.buffered().is_empty(), "{label}");
        }
    }
}

/// A denied request's body is read and dropped, up to its end only.
#[tokio::test(start_paused = true)]
async fn discarded_body_stops_at_its_end() {
    let (mut src, mut client) = pair(ROOM);
    client
        .write_all(&[b"3\r\nabc\r\n0\r\n\r\n".as_slice(), NEXT].concat())
        .await
        .unwrap();
    let done = src
        .forward_body(Dest::Discard, BodyFraming::Chunked, IDLE)
        .await
        .unwrap();
    assert_eq!(
        done,
        Forwarded {
            copied: 13,
            spliced: 0,
            read: 13
        }
    );
    assert_eq!(src.buffered(), NEXT);
}

/// EOF inside a body: truncated, with the bytes still owed.
#[tokio::test(start_paused = true)]
async fn truncated_bodies_report_what_is_missing() {
    let cases: [(&[u8], BodyFraming, u64); 4] = [
        (b"hel", BodyFraming::Length(11), 8),
        (b"", BodyFraming::Length(2), 2),
        (b"5\r\nhel", BodyFraming::Chunked, 2),
        (b"5\r\nhello\r\n0\r\n", BodyFraming::Chunked, 0),
    ];
    for (sent, framing, missing) in cases {
        let label = String::from_utf8_lossy(sent).into_owned();
        let (mut src, mut client) = pair(ROOM);
        let (mut dst, _peer) = pair(ROOM);
        client.write_all(sent).await.unwrap();
        drop(client);
        let got = src
            .forward_body(Dest::Stream(&mut dst), framing, IDLE)
            .await;
        match got {
            Err(BodyError::Truncated { missing: m }) => assert_eq!(m, missing, "{label:?}"),
            other => panic!("{label:?}: {other:?}"),
        }
    }
}

/// A source that stops sending fails after the idle time of one read.
#[tokio::test(start_paused = true)]
async fn stalled_source_times_out() {
    for framing in [
        BodyFraming::Length(11),
        BodyFraming::Chunked,
        BodyFraming::UntilClose,
    ] {
        let (mut src, mut client) = pair(ROOM);
        let (mut dst, _peer) = pair(ROOM);
        client.write_all(b"5\r\nhel").await.unwrap();
        let started = Instant::now();
        let got = src
            .forward_body(Dest::Stream(&mut dst), framing, IDLE)
            .await;
        let e = got.expect_err("a stall");
        assert!(
            matches!(e, BodyError::Timeout(d) if d == IDLE),
            "{framing:?}: {e}"
        );
        assert!(e.is_stall() && e.is_source_side(), "{framing:?}");
        assert_eq!(started.elapsed(), IDLE, "{framing:?}");
    }
}

/// A receiver that stops reading fails the body after the idle time.
#[tokio::test(start_paused = true)]
async fn stalled_receiver_times_out() {
    let (mut src, mut client) = pair(ROOM);
    let (mut dst, _peer) = pair(16);
    client.write_all(&[7u8; 1000]).await.unwrap();
    let started = Instant::now();
    let got = src
        .forward_body(Dest::Stream(&mut dst), BodyFraming::Length(1000), IDLE)
        .await;
    let e = got.expect_err("a stall");
    assert!(matches!(e, BodyError::WriteTimeout(d) if d == IDLE), "{e}");
    assert!(e.is_stall() && !e.is_source_side());
    assert_eq!(started.elapsed(), IDLE);
}

/// A bad chunked body and a receiver that left are told apart.
#[tokio::test(start_paused = true)]
async fn chunk_errors_and_gone_receivers() {
    let (mut src, mut client) = pair(ROOM);
    let (mut dst, _peer) = pair(ROOM);
    client.write_all(b"5 \r\nhello\r\n").await.unwrap();
    let got = src
        .forward_body(Dest::Stream(&mut dst), BodyFraming::Chunked, IDLE)
        .await;
    assert!(
        matches!(got, Err(BodyError::Chunk(ChunkError::BadSize))),
        "{got:?}"
    );

    let (mut src, mut client) = pair(ROOM);
    let (mut dst, peer) = pair(ROOM);
    drop(peer);
    client.write_all(b"hello").await.unwrap();
    let got = src
        .forward_body(Dest::Stream(&mut dst), BodyFraming::Length(5), IDLE)
        .await;
    let e = got.expect_err("the receiver is gone");
    assert!(
        matches!(e, BodyError::Write(_)) && !e.is_source_side(),
        "{e}"
    );
}

/// A head split anywhere is read whole, and what follows stays buffered.
#[tokio::test(start_paused = true)]
async fn split_heads_are_read_whole() {
    let head_bytes = b"GET /x HTTP/1.1\r\nHost: a\r\nX: y\r\n\r\n";
    let input = [head_bytes.as_slice(), b"body"].concat();
    for cut in 1..input.len() {
        let (mut src, mut client) = pair(ROOM);
        let rest = input[cut..].to_vec();
        client.write_all(&input[..cut]).await.unwrap();
        let late = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(1)).await;
            client.write_all(&rest).await.unwrap();
            client
        });
        let got = src.read_head(parse_request_head, IDLE, false).await;
        let (head, n) = got.unwrap().expect("a head");
        assert_eq!(
            (head.target.as_str(), n),
            ("/x", head_bytes.len()),
            "cut {cut}"
        );
        // The bytes after the head are buffered, or still to come.
        drop(late.await.unwrap());
        src.readable().await.unwrap();
        assert_eq!(src.buffered(), b"body", "cut {cut}");
    }
}

/// How a head read ends when the head does not come.
#[tokio::test(start_paused = true)]
async fn head_reads_that_end_early() {
    let partial: &[u8] = b"GET / HTTP/1.1\r\nHo";
    // (sent, then closed, idle_is_eof, what the read gives)
    let cases: [(&[u8], bool, bool, &str); 6] = [
        (b"", true, false, "none"),
        (partial, true, false, "truncated"),
        (b"", false, true, "none"),
        (b"", false, false, "timeout"),
        (partial, false, true, "timeout"),
        (
            b"GET / HTTP/1.1\r\n\x01\r\n\r\n",
            false,
            false,
            "head error",
        ),
    ];
    for (sent, close, idle_is_eof, want) in cases {
        let label = format!(
            "{:?}, closed {close}, idle is eof {idle_is_eof}",
            String::from_utf8_lossy(sent)
        );
        let (mut src, mut client) = pair(ROOM);
        client.write_all(sent).await.unwrap();
        let _open = (!close).then_some(client);
        let started = Instant::now();
        let got = match src.read_head(parse_request_head, IDLE, idle_is_eof).await {
            Ok(None) => "none",
            Ok(Some(_)) => "head",
            Err(HeadReadError::Truncated) => "truncated",
            Err(HeadReadError::Timeout) => "timeout",
            Err(HeadReadError::Head(_)) => "head error",
            Err(HeadReadError::Io(_)) => "io",
        };
        assert_eq!(got, want, "{label}");
        let waited = !close && want != "head error";
        assert_eq!(
            started.elapsed(),
            if waited { IDLE } else { Duration::ZERO },
            "{label}"
        );
    }
}

/// Once a request head has begun, it must end within the head deadline.
#[tokio::test(start_paused = true)]
async fn started_head_must_finish_in_time() {
    let (mut src, mut client) = pair(ROOM);
    let wait = HeadWait {
        idle: Duration::from_secs(300),
        idle_is_eof: true,
        head: Some(IDLE),
    };
    client.write_all(b"GET / HT").await.unwrap();
    let started = Instant::now();
    let got = src.read_head_within(parse_request_head, wait).await;
    assert!(matches!(got, Err(HeadReadError::Timeout)), "{got:?}");
    assert_eq!(started.elapsed(), IDLE);
}

/// Without a TCP socket, waiting for the peer reads into the buffer.
#[tokio::test(start_paused = true)]
async fn readable_reads_other_transports() {
    let (mut src, mut client) = pair(ROOM);
    client.write_all(b"early").await.unwrap();
    src.readable().await.unwrap();
    assert_eq!(src.buffered(), b"early");
    assert_eq!(src.read_total(), 5);
    drop(client);
    src.readable().await.unwrap();
    assert_eq!(src.buffered(), b"early");
}

/// A tunnel over other transports copies both ways, buffered bytes first.
#[tokio::test(start_paused = true)]
async fn tunnels_copy_other_transports() {
    let (mut a, mut a_peer) = pair(ROOM);
    let (mut b, mut b_peer) = pair(ROOM);
    a_peer.write_all(b"early ").await.unwrap();
    a.readable().await.unwrap();
    b_peer.write_all(b"first ").await.unwrap();
    b.readable().await.unwrap();
    let joined = tokio::spawn(tunnel(a, b, IDLE));
    a_peer.write_all(b"then more").await.unwrap();
    a_peer.shutdown().await.unwrap();
    b_peer.write_all(b"then back").await.unwrap();
    b_peer.shutdown().await.unwrap();
    let (mut at_b, mut at_a) = (Vec::new(), Vec::new());
    b_peer.read_to_end(&mut at_b).await.unwrap();
    a_peer.read_to_end(&mut at_a).await.unwrap();
    assert_eq!(at_b, b"early then more");
    assert_eq!(at_a, b"first then back");
    let t = joined.await.unwrap();
    t.end.unwrap();
    let copied = |copied| Moved { copied, spliced: 0 };
    assert_eq!((t.forth, t.back), (copied(15), copied(15)));
}

#[test]
fn which_head_deadline_applies() {
    let t0 = tokio::time::Instant::now();
    let s = Duration::from_secs;
    let request = HeadWait {
        idle: s(300),
        idle_is_eof: true,
        head: Some(s(10)),
    };
    let response = HeadWait {
        idle: s(30),
        idle_is_eof: false,
        head: None,
    };
    // (wait, first byte after t0, expected deadline after t0, quiet)
    let cases = [
        // Idle between requests: the idle timeout, then a quiet close.
        (request, None, s(300), true),
        // A head started at once must end 10 s later.
        (request, Some(s(0)), s(10), false),
        // A head started late gets its full 10 s from its first byte,
        // even past the idle deadline.
        (request, Some(s(295)), s(305), false),
        (request, Some(s(20)), s(30), false),
        // Response heads: one deadline for the whole head, a timeout.
        (response, None, s(30), false),
        (response, Some(s(29)), s(30), false),
    ];
    for (wait, first, deadline, quiet) in cases {
        let got = wait.deadline(t0, first.map(|d| t0 + d));
        assert_eq!(got, (t0 + deadline, quiet), "{wait:?} first byte {first:?}");
    }
}
