//! Upstreams that misbehave, and what the proxy makes of them: one client's bytes never reach
//! another client's exchange over a pooled connection, a body reaches an HTTP/1.0 peer framed
//! the way it can read, a response is relayed with the framing it really has, a stalled
//! response or a client that never reads is cut off, a malformed body never leaves a partial
//! request upstream. The backends are [`ScriptedBackend`]s speaking raw bytes; the clients are
//! raw TCP connections; the proxy runs in-process on port 0.
#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::time::{Duration, Instant};

use futures::future::join_all;
use gatehouse_tests::backends::{RawConn, RawEnd, config, eventually, start_proxy};
use gatehouse_tests::raw_backend::{ConnEnd, Reply, ScriptedBackend, SeenRequest, Then};

const ANSWER_WITHIN: Duration = Duration::from_secs(5);

/// Which client a request came from, by its `X-Client` header (or "body" for a request the
/// backend parsed out of another request's body).
fn client_of(request: &SeenRequest) -> String {
    request.header("x-client").unwrap_or("body").to_owned()
}

/// The start of a request head that, parsed out of a body, would be answered with
/// `/stolen for smuggled`.
const SMUGGLED_HEAD: &str = "GET /stolen HTTP/1.1\r\nHost: x\r\nX-Client: smuggled\r\nX-Pad: ";

/// A body of `len` bytes that a careless backend reads as the head of a request: complete (its
/// padding line ends the head) or left open, so that whatever follows it on the connection
/// (the next client's request) finishes that head.
fn smuggling_body(len: usize, complete: bool) -> Vec<u8> {
    let end = if complete { "\r\n\r\n" } else { "" };
    let pad = len - SMUGGLED_HEAD.len() - end.len();
    [SMUGGLED_HEAD.as_bytes(), &vec![b'a'; pad], end.as_bytes()].concat()
}

/// Answers `/early` from the head alone, with the status in `X-Early-Status` (the body is left
/// in the buffer, as a careless server does) and everything else, after reading its body, with
/// `<path> for <client>`.
fn careless(request: &SeenRequest) -> Reply {
    if request.path == "/early" {
        let status = request.header("x-early-status").and_then(|s| s.parse().ok()).unwrap_or(200);
        Reply::early(status, &format!("early for {}", client_of(request)))
    } else {
        Reply::ok(200, &format!("{} for {}", request.path, client_of(request)))
    }
}

async fn get_as(conn: &mut RawConn, path: &str, client: &str) -> Result<(u16, String), RawEnd> {
    let request = format!("GET {path} HTTP/1.1\r\nHost: api.example.com\r\nX-Client: {client}\r\n\r\n");
    assert!(conn.send(request.as_bytes()).await);
    conn.response(ANSWER_WITHIN).await.map(|r| (r.status, String::from_utf8_lossy(&r.body).into_owned()))
}

/// Client A's POST to `/early` with `body`, of which `first` bytes are sent before A waits
/// for its early answer; then B's GET, and the rest of A's body. Before the fix, B's request
/// was queued behind A's body on A's upstream connection and B got the answer to the request
/// the backend parsed out of A's body.
async fn early_answer_round(
    proxy: std::net::SocketAddr,
    (a, b): (&str, &str),
    early_status: u16,
    body: Vec<u8>,
    first: usize,
) -> Vec<String> {
    let mut problems = Vec::new();
    let len = body.len();
    let mut conn_a = RawConn::connect(proxy).await;
    let head = format!(
        "POST /foo/early HTTP/1.1\r\nHost: api.example.com\r\nX-Client: {a}\r\nX-Early-Status: {early_status}\r\nContent-Length: {len}\r\n\r\n"
    );
    assert!(conn_a.send(&[head.as_bytes(), &body[..first]].concat()).await);
    match conn_a.response(ANSWER_WITHIN).await {
        Ok(r) if String::from_utf8_lossy(&r.body) == format!("early for {a}") => {}
        other => problems.push(format!("{a} got {other:?}")),
    }
    let mut conn_b = RawConn::connect(proxy).await;
    let b_answer = tokio::spawn({
        let b = b.to_owned();
        async move { get_as(&mut conn_b, "/foo/mine", &b).await }
    });
    // Give B's request every chance to be queued on A's upstream connection, then let A's body go.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let _ = conn_a.send(&body[first..]).await;
    match b_answer.await.unwrap() {
        Ok((200, body)) if body == format!("/mine for {b}") => {}
        other => problems.push(format!("{b} got {other:?}, expected its own answer")),
    }
    problems
}

/// A streamed body: 100 KiB, more than the proxy buffers (64 KiB), so that the upstream
/// answers (200, as a streaming endpoint does) while 30 KiB of it are still with the client.
async fn streamed_round(proxy: std::net::SocketAddr, a: &str, b: &str) -> Vec<String> {
    early_answer_round(proxy, (a, b), 200, smuggling_body(100 * 1024, true), 70 * 1024).await
}

/// A small body, sent whole before the upstream answers `status` from the headers alone (an
/// auth check's 401); the head it holds is left open for the next request on the connection
/// to finish.
async fn buffered_round(proxy: std::net::SocketAddr, a: &str, b: &str, status: u16) -> Vec<String> {
    let body = smuggling_body(200, false);
    let len = body.len();
    early_answer_round(proxy, (a, b), status, body, len).await
}

#[tokio::test]
async fn an_early_answer_to_a_streamed_body_never_hands_the_next_client_the_bodys_answers() {
    let backend = ScriptedBackend::start(careless).await;
    let proxy = start_proxy(&config(&[("foo", vec![backend.addr])], "")).await;
    let problems = streamed_round(proxy.traffic_addr(), "A", "B").await;
    assert!(problems.is_empty(), "{problems:?}");
    let b = backend.requests().into_iter().find(|r| client_of(r) == "B").unwrap();
    let a = backend.requests().into_iter().find(|r| client_of(r) == "A").unwrap();
    assert_ne!(a.conn, b.conn, "B's request went over A's upstream connection");
}

#[tokio::test]
async fn an_early_error_to_a_buffered_body_never_hands_the_next_client_the_bodys_answer() {
    // The whole (small) body is sent before the upstream answers 401 from the headers alone;
    // the unread body would be the next request on that connection.
    let backend = ScriptedBackend::start(careless).await;
    let proxy = start_proxy(&config(&[("foo", vec![backend.addr])], "")).await;
    let problems = buffered_round(proxy.traffic_addr(), "A", "B", 401).await;
    assert!(problems.is_empty(), "{problems:?}");
    let b = backend.requests().into_iter().find(|r| client_of(r) == "B").unwrap();
    let a = backend.requests().into_iter().find(|r| client_of(r) == "A").unwrap();
    assert_ne!(a.conn, b.conn, "B's request went over the connection that still held A's unread body");
}

#[tokio::test]
async fn under_concurrency_every_client_gets_exactly_its_own_answer_behind_an_early_answerer() {
    let backend = ScriptedBackend::start(careless).await;
    let proxy = start_proxy(&config(&[("foo", vec![backend.addr])], "")).await;
    let addr = proxy.traffic_addr();
    let started = Instant::now();
    let mut problems = Vec::new();
    for round in 0..10 {
        let pairs = (0..8).map(|i| {
            let (a, b) = (format!("A{round}-{i}"), format!("B{round}-{i}"));
            async move {
                if i % 2 == 0 { streamed_round(addr, &a, &b).await } else { buffered_round(addr, &a, &b, 401).await }
            }
        });
        problems.extend(join_all(pairs).await.into_iter().flatten());
    }
    assert!(problems.is_empty(), "{} problems in 80 pairs:\n{}", problems.len(), problems.join("\n"));
    eprintln!(
        "80 pairs of clients behind an early answerer in {:.1} s, each got its own answer",
        started.elapsed().as_secs_f64()
    );
}

/// A backend that answers 2xx without reading a body it was sent whole breaks HTTP (the
/// "CL.0" desync class); no proxy can see that it did. `pool: { after_body: close }` is the
/// defence for such a backend: a connection that carried a request body is never reused.
#[tokio::test]
async fn with_after_body_close_a_2xx_that_ignored_the_body_cannot_reach_the_next_client() {
    let backend = ScriptedBackend::start(careless).await;
    let proxy = start_proxy(&config(&[("foo", vec![backend.addr])], "pool: { after_body: close }\n")).await;
    let problems = buffered_round(proxy.traffic_addr(), "A", "B", 200).await;
    assert!(problems.is_empty(), "{problems:?}");
    // And the default is what it says: the same exchange reuses the connection.
    let backend = ScriptedBackend::start(careless).await;
    let proxy = start_proxy(&config(&[("foo", vec![backend.addr])], "")).await;
    let problems = buffered_round(proxy.traffic_addr(), "A", "B", 200).await;
    assert_eq!(problems.len(), 1, "the default reuses a connection after a 2xx to a whole body: {problems:?}");
}

/// An HTTP/1.0 server that keeps connections alive when asked: reads bodies by
/// Content-Length only (it knows nothing of chunked), answers `<client> sent <n> bytes: <body>`.
fn http10_server(request: &SeenRequest) -> Reply {
    let body = request.body.clone().unwrap_or_default();
    let text = format!("{} sent {} bytes: {}", client_of(request), body.len(), String::from_utf8_lossy(&body));
    let bytes = format!("HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: {}\r\n\r\n{text}", text.len());
    Reply::raw(bytes, Then::KeepAlive)
}

fn chunked_post(client: &str, body: &str) -> Vec<u8> {
    let chunks: String =
        body.as_bytes().chunks(4).map(|c| format!("{:x}\r\n{}\r\n", c.len(), String::from_utf8_lossy(c))).collect();
    format!("POST /old/upload HTTP/1.1\r\nHost: api.example.com\r\nX-Client: {client}\r\nTransfer-Encoding: chunked\r\n\r\n{chunks}0\r\n\r\n").into_bytes()
}

#[tokio::test]
async fn a_chunked_upload_reaches_an_http_1_0_upstream_with_a_content_length() {
    let backend = ScriptedBackend::start(http10_server).await;
    let proxy = start_proxy(&config(&[("old", vec![backend.addr])], "")).await;
    let mut first = RawConn::connect(proxy.traffic_addr()).await;
    assert_eq!(get_as(&mut first, "/old/x", "first").await.unwrap().0, 200);
    let mut conn = RawConn::connect(proxy.traffic_addr()).await;
    assert!(conn.send(&chunked_post("second", "hello world")).await);
    let response = conn.response(ANSWER_WITHIN).await.unwrap();
    assert_eq!(String::from_utf8_lossy(&response.body), "second sent 11 bytes: hello world");
    let upload = backend.requests().into_iter().find(|r| client_of(r) == "second").unwrap();
    assert_eq!(upload.header("content-length"), Some("11"));
    assert_eq!(upload.header("transfer-encoding"), None);
}

#[tokio::test]
async fn under_concurrency_uploads_to_an_http_1_0_upstream_all_arrive_whole() {
    let backend = ScriptedBackend::start(http10_server).await;
    let proxy = start_proxy(&config(&[("old", vec![backend.addr])], "")).await;
    let addr = proxy.traffic_addr();
    let mut problems = Vec::new();
    for round in 0..10 {
        let clients = (0..10).map(|i| async move {
            let client = format!("c{round}-{i}");
            let mut conn = RawConn::connect(addr).await;
            if i % 2 == 0 {
                match get_as(&mut conn, "/old/x", &client).await {
                    Ok((200, body)) if body == format!("{client} sent 0 bytes: ") => None,
                    other => Some(format!("{client} GET got {other:?}")),
                }
            } else {
                let body = format!("upload of {client}");
                assert!(conn.send(&chunked_post(&client, &body)).await);
                match conn.response(ANSWER_WITHIN).await {
                    Ok(r)
                        if String::from_utf8_lossy(&r.body)
                            == format!("{client} sent {} bytes: {body}", body.len()) =>
                    {
                        None
                    }
                    other => Some(format!("{client} POST got {other:?}")),
                }
            }
        });
        problems.extend(join_all(clients).await.into_iter().flatten());
    }
    assert!(problems.is_empty(), "{} of 100 clients:\n{}", problems.len(), problems.join("\n"));
}

#[tokio::test]
async fn a_chunked_body_too_large_to_buffer_is_refused_411_for_a_known_http_1_0_upstream() {
    let backend = ScriptedBackend::start(http10_server).await;
    let proxy = start_proxy(&config(&[("old", vec![backend.addr])], "limits: { body_buffer_bytes: 1024 }\n")).await;
    let mut conn = RawConn::connect(proxy.traffic_addr()).await;
    assert_eq!(get_as(&mut conn, "/old/x", "first").await.unwrap().0, 200);
    let mut conn = RawConn::connect(proxy.traffic_addr()).await;
    assert!(conn.send(&chunked_post("big", &"x".repeat(4096))).await);
    let response = conn.response(ANSWER_WITHIN).await.unwrap();
    assert_eq!(response.status, 411);
    assert!(backend.requests().iter().all(|r| client_of(r) != "big"), "the upload reached the HTTP/1.0 upstream");
}

#[tokio::test]
async fn a_response_with_content_length_and_chunked_is_relayed_by_its_chunks_without_the_length() {
    let chunked_90 = format!("5a\r\n{}\r\n0\r\n\r\n", "n".repeat(90));
    let chunked_5 = "5\r\nfives\r\n0\r\n\r\n".to_owned();
    let backend = ScriptedBackend::start(move |r: &SeenRequest| {
        let (length, body) = if r.path == "/ninety" { (5, &chunked_90) } else { (50, &chunked_5) };
        Reply::raw(
            format!("HTTP/1.1 200 OK\r\nContent-Length: {length}\r\nTransfer-Encoding: chunked\r\n\r\n{body}"),
            Then::KeepAlive,
        )
    })
    .await;
    let proxy = start_proxy(&config(&[("foo", vec![backend.addr])], "")).await;
    let mut conn = RawConn::connect(proxy.traffic_addr()).await;
    for (path, expected) in [("/foo/ninety", "n".repeat(90)), ("/foo/five", "fives".to_owned())] {
        assert!(conn.send(format!("GET {path} HTTP/1.1\r\nHost: api.example.com\r\n\r\n").as_bytes()).await);
        let response = conn.response(ANSWER_WITHIN).await.unwrap();
        assert_eq!(String::from_utf8_lossy(&response.body), expected, "{path}");
        assert_eq!(response.header("content-length"), None, "{path}");
        assert_eq!(response.header("transfer-encoding"), Some("chunked"), "{path}");
    }
}

#[tokio::test]
async fn a_response_that_stalls_half_way_is_cut_off_after_upstream_read() {
    let backend = ScriptedBackend::start(|_: &SeenRequest| {
        Reply::raw("HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nfive!", Then::Stall(Duration::from_secs(30)))
    })
    .await;
    let proxy = start_proxy(&config(&[("foo", vec![backend.addr])], "timeouts: { upstream_read: 500ms }\n")).await;
    let mut conn = RawConn::connect(proxy.traffic_addr()).await;
    assert!(conn.send(b"GET /foo/x HTTP/1.1\r\nHost: api.example.com\r\n\r\n").await);
    let started = Instant::now();
    // The head and five bytes arrive; then the proxy closes, and the body is visibly short.
    match conn.response(Duration::from_secs(10)).await {
        Err(RawEnd::Malformed(why)) => assert_eq!(why, "body cut short"),
        other => panic!("expected a body cut short, got {other:?}"),
    }
    let waited = started.elapsed();
    assert!(waited >= Duration::from_millis(450) && waited < Duration::from_secs(3), "cut after {waited:?}");
    eventually(Duration::from_secs(3), "the upstream connection is closed too", || async {
        backend.conns()[0].end != ConnEnd::Open
    })
    .await;
}

#[tokio::test]
async fn a_client_that_never_reads_is_cut_off_after_client_write_and_frees_the_upstream() {
    let big = vec![b'z'; 8 * 1024 * 1024];
    let backend = ScriptedBackend::start(move |_: &SeenRequest| {
        let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", big.len());
        Reply::raw([head.as_bytes(), &big].concat(), Then::KeepAlive)
    })
    .await;
    let proxy = start_proxy(&config(&[("foo", vec![backend.addr])], "timeouts: { client_write: 500ms }\n")).await;
    let mut conn = RawConn::connect(proxy.traffic_addr()).await;
    assert!(conn.send(b"GET /foo/big HTTP/1.1\r\nHost: api.example.com\r\n\r\n").await);
    // The client reads nothing. Within a few seconds both connections must be gone.
    eventually(Duration::from_secs(5), "the upstream connection is released", || async {
        backend.accepted() == 1 && backend.open() == 0
    })
    .await;
    eventually(Duration::from_secs(5), "the client connection is closed", || async {
        proxy.shared().metrics.connections.get() == 0
    })
    .await;
    drop(conn);
}

#[tokio::test]
async fn a_101_nobody_asked_for_is_a_502_and_the_connection_is_not_kept() {
    let backend = ScriptedBackend::start(|_: &SeenRequest| {
        Reply::raw("HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: foo\r\n\r\n", Then::KeepAlive)
    })
    .await;
    let proxy = start_proxy(&config(&[("foo", vec![backend.addr])], "")).await;
    let mut conn = RawConn::connect(proxy.traffic_addr()).await;
    for i in 0..2 {
        assert_eq!(get_as(&mut conn, "/foo/x", "c").await.unwrap().0, 502, "request {i}");
    }
    // Each answer came over its own upstream connection, closed after it.
    eventually(Duration::from_secs(3), "both upstream connections closed", || async {
        backend.accepted() == 2 && backend.open() == 0
    })
    .await;
    // A WebSocket handshake answered with another protocol is not relayed either.
    let mut conn = RawConn::connect(proxy.traffic_addr()).await;
    let handshake = "GET /foo/ws HTTP/1.1\r\nHost: api.example.com\r\nConnection: upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";
    assert!(conn.send(handshake.as_bytes()).await);
    assert_eq!(conn.response(ANSWER_WITHIN).await.unwrap().status, 502);
}

#[tokio::test]
async fn a_transfer_coding_other_than_chunked_in_a_response_is_a_502() {
    let backend = ScriptedBackend::start(|_: &SeenRequest| {
        Reply::raw("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nnot really gzip", Then::Close)
    })
    .await;
    let proxy = start_proxy(&config(&[("foo", vec![backend.addr])], "")).await;
    let mut conn = RawConn::connect(proxy.traffic_addr()).await;
    assert_eq!(get_as(&mut conn, "/foo/x", "c").await.unwrap().0, 502);
}

/// The malformed chunked bodies of the audit: each one, small enough to be buffered, must
/// reach no upstream at all.
const MALFORMED_CHUNKED: &[(&str, &str)] = &[
    ("chunk data longer than its size line", "5\r\nhelloEXTRA\r\n0\r\n\r\n"),
    ("bare LF after the chunk data", "5\r\nhello\n0\r\n\r\n"),
    ("no CRLF after the chunk data", "5\r\nhello0\r\n\r\n"),
    ("CRLF inside a quoted chunk extension", "5;ext=\"a\r\nb\"\r\nhello\r\n0\r\n\r\n"),
    ("a request glued into the trailer section", "5\r\nhello\r\n0\r\nGET /bar/smuggled HTTP/1.1\r\n\r\n"),
    ("chunk size not hex", "zz\r\nhello\r\n0\r\n\r\n"),
];

#[tokio::test]
async fn a_malformed_chunked_body_small_enough_to_buffer_reaches_no_upstream() {
    let backend = ScriptedBackend::start(|r: &SeenRequest| Reply::ok(200, &r.path)).await;
    let proxy = start_proxy(&config(&[("foo", vec![backend.addr])], "")).await;
    for (shape, body) in MALFORMED_CHUNKED {
        let mut conn = RawConn::connect(proxy.traffic_addr()).await;
        let request =
            format!("POST /foo/x HTTP/1.1\r\nHost: api.example.com\r\nTransfer-Encoding: chunked\r\n\r\n{body}");
        assert!(conn.send(request.as_bytes()).await, "{shape}");
        let response = conn.response(ANSWER_WITHIN).await.unwrap_or_else(|e| panic!("{shape}: {e:?}"));
        assert_eq!(response.status, 400, "{shape}");
        assert_eq!(conn.closed_within(Duration::from_secs(3)).await, Ok(Vec::new()), "{shape}: closed after the 400");
    }
    assert_eq!(backend.accepted(), 0, "an upstream connection was made for a malformed body");
}

#[tokio::test]
async fn a_malformed_chunk_in_a_streamed_body_resets_the_upstream_request() {
    let backend = ScriptedBackend::start(|r: &SeenRequest| Reply::ok(200, &r.path)).await;
    let proxy = start_proxy(&config(&[("foo", vec![backend.addr])], "limits: { body_buffer_bytes: 1024 }\n")).await;
    let good = format!("800\r\n{}\r\n", "g".repeat(0x800));
    let mut conn = RawConn::connect(proxy.traffic_addr()).await;
    let head = "POST /foo/x HTTP/1.1\r\nHost: api.example.com\r\nTransfer-Encoding: chunked\r\n\r\n";
    assert!(conn.send(format!("{head}{good}{good}").as_bytes()).await);
    // The body streams by now; the next chunk is malformed.
    eventually(Duration::from_secs(3), "the upstream got the head", || async { backend.accepted() == 1 }).await;
    assert!(conn.send(b"5\r\nhelloEXTRA\r\n0\r\n\r\n").await);
    assert_eq!(conn.response(ANSWER_WITHIN).await.unwrap().status, 400);
    eventually(Duration::from_secs(3), "the upstream connection ends", || async {
        backend.conns()[0].end != ConnEnd::Open
    })
    .await;
    let upstream = &backend.conns()[0];
    assert_eq!(upstream.end, ConnEnd::Reset, "ended cleanly: the backend could mistake it for a complete request");
    assert!(!upstream.received.ends_with(b"0\r\n\r\n"), "the upstream saw a complete chunked body");
}

#[tokio::test]
async fn one_byte_chunks_are_coalesced_on_the_way_through() {
    let backend = ScriptedBackend::start(|r: &SeenRequest| Reply::ok(200, &format!("{} chunks", r.chunks))).await;
    let proxy = start_proxy(&config(&[("foo", vec![backend.addr])], "limits: { body_buffer_bytes: 0 }\n")).await;
    let chunks = 50_000;
    let body: Vec<u8> = std::iter::repeat_n(b"1\r\nx\r\n".as_slice(), chunks).flatten().copied().collect();
    let mut conn = RawConn::connect(proxy.traffic_addr()).await;
    let head = "POST /foo/x HTTP/1.1\r\nHost: api.example.com\r\nTransfer-Encoding: chunked\r\n\r\n";
    assert!(conn.send(&[head.as_bytes(), &body, b"0\r\n\r\n"].concat()).await);
    let response = conn.response(Duration::from_secs(30)).await.unwrap();
    assert_eq!(response.status, 200);
    let received = backend.requests()[0].clone();
    assert_eq!(received.body.as_deref().map(<[u8]>::len), Some(chunks));
    let forwarded: usize = String::from_utf8_lossy(&response.body).split(' ').next().unwrap().parse().unwrap();
    // One-for-one would be 50,000; in a debug build about 1 in 70 remain (a release build
    // coalesces far more: proxy/benches/tiny_chunks.sh).
    assert!(forwarded < chunks / 20, "{chunks} one-byte chunks went upstream as {forwarded} chunks");
    eprintln!("{chunks} one-byte chunks went upstream as {forwarded} chunks");
}

#[tokio::test]
async fn slow_uploads_hold_no_upstream_connection_and_are_cut_below_the_minimum_rate() {
    let backend = ScriptedBackend::start(|r: &SeenRequest| Reply::ok(200, &r.path)).await;
    // Gaps of 300 ms stay under body_read (1 s); 30 bytes a second is under min_body_rate.
    let extra = "timeouts: { body_read: 1s }\nlimits: { min_body_rate: 500 }\n";
    let proxy = start_proxy(&config(&[("foo", vec![backend.addr])], extra)).await;
    let addr = proxy.traffic_addr();
    let started = Instant::now();
    let clients = (0..50).map(|_| async move {
        let mut conn = RawConn::connect(addr).await;
        assert!(conn.send(b"POST /foo/x HTTP/1.1\r\nHost: api.example.com\r\nContent-Length: 10000\r\n\r\n").await);
        for _ in 0..20 {
            if !conn.send(b"0123456789").await {
                break;
            }
            match conn.response(Duration::from_millis(300)).await {
                Err(RawEnd::TimedOut { .. }) => {}
                answered => return answered.map(|r| r.status),
            }
        }
        conn.response(ANSWER_WITHIN).await.map(|r| r.status)
    });
    let statuses = join_all(clients).await;
    assert!(statuses.iter().all(|s| *s == Ok(408)), "{statuses:?}");
    assert!(started.elapsed() < Duration::from_secs(10), "took {:?}", started.elapsed());
    assert_eq!(backend.max_open(), 0, "a slow upload held an upstream connection");
}
