//! Header handling, WebSocket, streaming, client limits and the graceful drain.
#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use gatehouse_tests::backends::{Backend, RawConn, client, config, eventually, get, send, start_proxy};
use http::StatusCode;
use http_body_util::{BodyExt, Full};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

const HOST: &str = "api.example.com";

#[tokio::test]
async fn forwarded_headers_request_id_and_hop_by_hop_are_handled() {
    let foo = Backend::start("foo").await;
    let proxy = start_proxy(&config(&[("foo", vec![foo.addr])], "forwarded: { trusted_hops: 1 }\n")).await;
    let answer = get(
        proxy.traffic_addr(),
        HOST,
        "/foo/x",
        &[
            ("x-forwarded-for", "6.6.6.6, 203.0.113.7"),
            ("x-forwarded-proto", "https"),
            ("connection", "keep-alive, x-drop-me"),
            ("x-drop-me", "1"),
            ("keep-alive", "timeout=5"),
            ("te", "trailers"),
            ("proxy-authorization", "Basic Zm9v"),
            ("x-kept", "yes"),
        ],
    )
    .await;
    assert_eq!(answer.status, StatusCode::OK);
    let seen = &foo.requests()[0].headers;
    // One trusted hop (the ALB): its entry is kept, the client-written one before it dropped.
    assert_eq!(seen["x-forwarded-for"], "203.0.113.7, 127.0.0.1");
    assert_eq!(seen["x-forwarded-proto"], "https");
    assert_eq!(seen["x-forwarded-host"], HOST);
    assert_eq!(seen["host"], HOST);
    assert_eq!(seen["x-kept"], "yes");
    for gone in ["x-drop-me", "keep-alive", "te", "proxy-authorization"] {
        assert!(!seen.contains_key(gone), "{gone} was forwarded");
    }
    let id = seen["x-request-id"].to_str().unwrap();
    assert_eq!(id.len(), 32);
    assert_eq!(answer.headers["x-request-id"], id, "the generated id is returned to the client");

    let answer = get(proxy.traffic_addr(), HOST, "/foo/x", &[("x-request-id", "abc-123")]).await;
    assert_eq!(answer.headers["x-request-id"], "abc-123");
    assert_eq!(foo.requests()[1].headers["x-request-id"], "abc-123");
}

#[tokio::test]
async fn untrusted_forwarded_headers_are_replaced() {
    let foo = Backend::start("foo").await;
    let proxy = start_proxy(&config(&[("foo", vec![foo.addr])], "")).await;
    get(proxy.traffic_addr(), HOST, "/foo/x", &[("x-forwarded-for", "6.6.6.6"), ("x-forwarded-proto", "https")]).await;
    let seen = &foo.requests()[0].headers;
    assert_eq!(seen["x-forwarded-for"], "127.0.0.1");
    assert_eq!(seen["x-forwarded-proto"], "http");
}

#[tokio::test]
async fn websocket_echo_works_end_to_end() {
    let foo = Backend::start("foo").await;
    let proxy = start_proxy(&config(&[("foo", vec![foo.addr])], "")).await;
    let mut request = format!("ws://{}/foo/ws", proxy.traffic_addr()).into_client_request().unwrap();
    request.headers_mut().insert("host", HOST.parse().unwrap());
    let (mut ws, response) =
        tokio::time::timeout(Duration::from_secs(5), tokio_tungstenite::connect_async(request)).await.unwrap().unwrap();
    assert_eq!(response.status(), StatusCode::SWITCHING_PROTOCOLS);
    for text in ["hello", "world"] {
        ws.send(Message::text(text)).await.unwrap();
        let echoed = tokio::time::timeout(Duration::from_secs(5), ws.next()).await.unwrap().unwrap().unwrap();
        assert_eq!(echoed, Message::text(text));
    }
    ws.close(None).await.unwrap();
    assert_eq!(foo.requests()[0].path_and_query, "/ws");
}

#[tokio::test]
async fn response_body_streams_without_waiting_for_the_end() {
    let foo = Backend::start("foo").await;
    let proxy = start_proxy(&config(&[("foo", vec![foo.addr])], "")).await;
    let req = http::Request::get(format!("http://{}/foo/stream", proxy.traffic_addr()))
        .header("host", HOST)
        .body(Full::new(Bytes::new()))
        .unwrap();
    let response = tokio::time::timeout(Duration::from_secs(5), client().request(req)).await.unwrap().unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let mut body = response.into_body();
    // The backend sends `last` only after release(): `first` must arrive before that.
    let first = tokio::time::timeout(Duration::from_secs(5), body.frame()).await.unwrap().unwrap().unwrap();
    assert_eq!(first.into_data().unwrap(), "first\n");
    foo.release();
    let rest = tokio::time::timeout(Duration::from_secs(5), body.collect()).await.unwrap().unwrap().to_bytes();
    assert_eq!(rest, "last\n");
}

#[tokio::test]
async fn slowloris_client_is_cut_off_after_the_header_read_timeout() {
    let foo = Backend::start("foo").await;
    let proxy = start_proxy(&config(&[("foo", vec![foo.addr])], "timeouts: { header_read: 500ms }\n")).await;
    let mut stream = TcpStream::connect(proxy.traffic_addr()).await.unwrap();
    let started = Instant::now();
    stream.write_all(b"GET /foo/x HTTP/1.1\r\nHost: api.example.com\r\n").await.unwrap();
    // Keep trickling header bytes; the proxy must close the connection anyway.
    let mut closed = false;
    for i in 0..40 {
        if stream.write_all(format!("X-Slow-{i}: a\r\n").as_bytes()).await.is_err() {
            closed = true;
            break;
        }
        let mut buf = [0u8; 1024];
        match tokio::time::timeout(Duration::from_millis(100), stream.read(&mut buf)).await {
            Ok(Ok(0) | Err(_)) => {
                closed = true;
                break;
            }
            Ok(Ok(_)) => {} // a 408 may be written before the close
            Err(_) => {}
        }
    }
    assert!(closed, "connection still open after {:?}", started.elapsed());
    assert!(started.elapsed() < Duration::from_millis(2000), "closed after {:?}", started.elapsed());
    assert_eq!(foo.request_count(), 0);
}

/// Reads one response with a `Content-Length` body from a raw connection; returns its status
/// line, or `None` when the connection was closed first.
async fn read_response(stream: &mut TcpStream) -> Option<String> {
    let mut data = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        if let Some(end) = data.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&data[..end]).to_string();
            let length: usize = head
                .lines()
                .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse().unwrap()))
                .expect("a Content-Length");
            if data.len() >= end + 4 + length {
                return Some(head.lines().next().unwrap().to_owned());
            }
        }
        let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await.expect("no answer in 5 s");
        match n {
            Ok(0) | Err(_) => return None,
            Ok(n) => data.extend_from_slice(&buf[..n]),
        }
    }
}

const KEEP_ALIVE_REQUEST: &[u8] = b"GET /foo/x HTTP/1.1\r\nHost: api.example.com\r\n\r\n";

#[tokio::test]
async fn idle_keep_alive_connection_outlives_the_header_read_timeout() {
    let foo = Backend::start("foo").await;
    let extra = "timeouts: { header_read: 300ms, client_idle: 2s }\n";
    let proxy = start_proxy(&config(&[("foo", vec![foo.addr])], extra)).await;
    let mut stream = TcpStream::connect(proxy.traffic_addr()).await.unwrap();
    stream.write_all(KEEP_ALIVE_REQUEST).await.unwrap();
    assert_eq!(read_response(&mut stream).await.as_deref(), Some("HTTP/1.1 200 OK"));
    // Idle for more than twice header_read, as an ALB keeps a connection between requests.
    tokio::time::sleep(Duration::from_millis(900)).await;
    stream.write_all(KEEP_ALIVE_REQUEST).await.unwrap();
    assert_eq!(read_response(&mut stream).await.as_deref(), Some("HTTP/1.1 200 OK"), "second request");
    // The same holds for the wait before the first request of a new connection.
    let mut fresh = TcpStream::connect(proxy.traffic_addr()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(900)).await;
    fresh.write_all(KEEP_ALIVE_REQUEST).await.unwrap();
    assert_eq!(read_response(&mut fresh).await.as_deref(), Some("HTTP/1.1 200 OK"), "first request after a wait");
    assert_eq!(foo.request_count(), 3);
}

#[tokio::test]
async fn idle_keep_alive_connection_is_closed_after_client_idle() {
    let foo = Backend::start("foo").await;
    let extra = "timeouts: { header_read: 300ms, client_idle: 1500ms }\n";
    let proxy = start_proxy(&config(&[("foo", vec![foo.addr])], extra)).await;
    let mut stream = TcpStream::connect(proxy.traffic_addr()).await.unwrap();
    stream.write_all(KEEP_ALIVE_REQUEST).await.unwrap();
    assert_eq!(read_response(&mut stream).await.as_deref(), Some("HTTP/1.1 200 OK"));
    let idle_from = Instant::now();
    // Closed silently (no 408 on an idle connection): the next read sees the end of the stream.
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await.expect("still open after 5 s");
    let idle = idle_from.elapsed();
    assert!(matches!(n, Ok(0) | Err(_)), "unexpected bytes: {n:?}");
    assert!(idle >= Duration::from_millis(1400), "closed after {idle:?}, before client_idle");
    assert!(idle < Duration::from_millis(3000), "closed after {idle:?}");
}

/// A backend that answers each connection's first request with keep-alive headers and then
/// closes the connection, as an upstream whose idle timeout is shorter than ours does.
async fn closing_backend() -> (std::net::SocketAddr, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            tokio::spawn(async move {
                let mut data = Vec::new();
                let mut buf = [0u8; 1024];
                while !data.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => data.extend_from_slice(&buf[..n]),
                    }
                }
                let _ =
                    stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: keep-alive\r\n\r\nok").await;
                tokio::time::sleep(Duration::from_millis(50)).await;
                // Dropped: closed while the proxy holds it as an idle keep-alive connection.
            });
        }
    });
    (addr, accepted)
}

#[tokio::test]
async fn pooled_upstream_connection_closed_by_the_backend_is_replaced() {
    let (backend, accepted) = closing_backend().await;
    let proxy = start_proxy(&config(&[("foo", vec![backend])], "")).await;
    for i in 0..3 {
        let answer = get(proxy.traffic_addr(), HOST, "/foo/x", &[]).await;
        assert_eq!(answer.status, StatusCode::OK, "request {i}");
        assert_eq!(answer.body, "ok");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 3);
}

#[tokio::test]
async fn oversized_request_head_is_431() {
    let foo = Backend::start("foo").await;
    let proxy = start_proxy(&config(&[("foo", vec![foo.addr])], "limits: { max_header_bytes: 2048 }\n")).await;
    let big = "a".repeat(4096);
    let mut stream = TcpStream::connect(proxy.traffic_addr()).await.unwrap();
    stream
        .write_all(format!("GET /foo/x HTTP/1.1\r\nHost: api.example.com\r\nX-Big: {big}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut response = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut response)).await;
    let response = String::from_utf8_lossy(&response);
    assert!(response.starts_with("HTTP/1.1 431"), "{response}");
    assert_eq!(foo.request_count(), 0);
}

#[tokio::test]
async fn drain_fails_readiness_at_once_and_lets_the_in_flight_request_finish() {
    let foo = Backend::start("foo").await;
    let proxy = start_proxy(&config(&[("foo", vec![foo.addr])], "timeouts: { drain: 300ms, shutdown: 5s }\n")).await;
    let addr = proxy.traffic_addr();
    assert_eq!(get(addr, "x", "/_gatehouse/ready", &[]).await.status, StatusCode::OK);

    // A request in flight when the drain starts: the backend holds it until release().
    let req = http::Request::get(format!("http://{addr}/foo/stream"))
        .header("host", HOST)
        .body(Full::new(Bytes::new()))
        .unwrap();
    let in_flight = tokio::spawn(async move {
        let response = client().request(req).await.unwrap();
        let status = response.status();
        (status, response.into_body().collect().await.unwrap().to_bytes())
    });
    eventually(Duration::from_secs(5), "the backend has the request", || async { foo.request_count() == 1 }).await;

    proxy.start_drain();
    assert!(!proxy.shared().is_ready());
    assert_eq!(get(addr, "x", "/_gatehouse/ready", &[]).await.status, StatusCode::SERVICE_UNAVAILABLE);
    // Still serving during the drain window.
    assert_eq!(get(addr, HOST, "/foo/x", &[]).await.status, StatusCode::OK);

    // After the drain window the listener closes...
    eventually(Duration::from_secs(5), "the listener closes", || async { TcpStream::connect(addr).await.is_err() })
        .await;
    // ...but the request accepted before the drain still completes.
    foo.release();
    let (status, body) = tokio::time::timeout(Duration::from_secs(5), in_flight).await.unwrap().unwrap();
    assert_eq!((status, &body[..]), (StatusCode::OK, &b"first\nlast\n"[..]));
    tokio::time::timeout(Duration::from_secs(5), proxy.wait()).await.expect("proxy stops after the drain");
}

#[tokio::test]
async fn via_names_this_proxy_on_the_request_and_the_response_after_earlier_hops() {
    let foo = Backend::start("foo").await;
    let proxy = start_proxy(&config(&[("foo", vec![foo.addr])], "via: node-a\n")).await;
    let answer = get(proxy.traffic_addr(), HOST, "/foo/x", &[("via", "1.1 edge-cdn")]).await;
    assert_eq!(answer.status, StatusCode::OK);
    let seen = &foo.requests()[0].headers;
    let via: Vec<&str> = seen.get_all("via").iter().map(|v| v.to_str().unwrap()).collect();
    assert_eq!(via, ["1.1 edge-cdn", "1.1 node-a"], "earlier hops first, then this proxy");
    let response_via: Vec<&str> = answer.headers.get_all("via").iter().map(|v| v.to_str().unwrap()).collect();
    assert_eq!(response_via, ["1.1 node-a"]);

    let plain = start_proxy(&config(&[("foo", vec![foo.addr])], "")).await;
    let answer = get(plain.traffic_addr(), HOST, "/foo/x", &[]).await;
    assert!(answer.headers.get("via").is_none(), "no Via unless configured");
}

#[test]
fn a_via_pseudonym_that_is_not_a_token_is_refused() {
    let yaml = config(&[], "via: \"node a\"\n");
    let error = gatehouse_proxy::Config::parse(&yaml, std::path::Path::new("p.yaml")).unwrap_err();
    assert_eq!(error.to_string(), "p.yaml: via: \"node a\" is not a token (letters, digits, '-', '.', '_', '~')");
}

/// The request heads (each with a body that starts and then stalls) used by the body read
/// timeout tests: Content-Length with part of the body, with none of it, and chunked.
const STALLED_BODIES: &[(&str, &[u8])] = &[
    (
        "Content-Length, part of the body",
        b"POST /foo/x HTTP/1.1\r\nHost: api.example.com\r\nContent-Length: 100\r\n\r\n0123456789",
    ),
    ("Content-Length, no body yet", b"POST /foo/x HTTP/1.1\r\nHost: api.example.com\r\nContent-Length: 100\r\n\r\n"),
    (
        "chunked, one chunk",
        b"POST /foo/x HTTP/1.1\r\nHost: api.example.com\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n",
    ),
];

#[tokio::test]
async fn a_stalled_request_body_is_answered_408_and_the_upstream_request_aborted() {
    let foo = Backend::start("foo").await;
    // `request` well above `body_read`: only the body timeout can answer in time. Streamed
    // (no buffering): the head goes upstream before the body, which then stalls.
    let extra = "timeouts: { body_read: 500ms, request: 20s }\nlimits: { body_buffer_bytes: 0, min_body_rate: 0 }\n";
    let proxy = start_proxy(&config(&[("foo", vec![foo.addr])], extra)).await;
    for (shape, bytes) in STALLED_BODIES {
        let mut conn = RawConn::connect(proxy.traffic_addr()).await;
        assert!(conn.send(bytes).await, "{shape}");
        let sent = Instant::now();
        let response = conn.response(Duration::from_secs(5)).await.unwrap_or_else(|e| panic!("{shape}: {e:?}"));
        let waited = sent.elapsed();
        assert_eq!(response.status, 408, "{shape}: {}", String::from_utf8_lossy(&response.body));
        assert_eq!(response.header("connection"), Some("close"), "{shape}");
        assert!(waited >= Duration::from_millis(450), "{shape}: answered after {waited:?}, before body_read");
        assert!(waited < Duration::from_secs(3), "{shape}: answered after {waited:?}");
        assert_eq!(conn.closed_within(Duration::from_secs(3)).await, Ok(Vec::new()), "{shape}: closed after the 408");
        // The head had gone upstream (the body streams); the upstream's request was cut short,
        // never completed with a body the client did not send.
        eventually(Duration::from_secs(5), "the backend sees the request fail", || async {
            foo.requests().last().is_some_and(|r| r.body_failed)
        })
        .await;
        let seen = foo.take_requests();
        assert_eq!(seen.len(), 1, "{shape}");
        assert_eq!((seen[0].path_and_query.as_str(), seen[0].body.is_none()), ("/x", true), "{shape}");
    }
}

#[tokio::test]
async fn a_slow_but_steady_request_body_is_not_cut_off() {
    let foo = Backend::start("foo").await;
    // 40 bytes a second: only the gap timer is under test here, not the minimum rate.
    let extra = "timeouts: { body_read: 500ms }\nlimits: { min_body_rate: 0 }\n";
    let proxy = start_proxy(&config(&[("foo", vec![foo.addr])], extra)).await;
    let mut conn = RawConn::connect(proxy.traffic_addr()).await;
    assert!(conn.send(b"POST /foo/echo-body HTTP/1.1\r\nHost: api.example.com\r\nContent-Length: 60\r\n\r\n").await);
    // 6 pieces 250 ms apart: 1.5 s in all, three times body_read, never 500 ms without a byte.
    for i in 0..6u8 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        assert!(conn.send(&[b'a' + i; 10]).await, "piece {i}");
    }
    let response = conn.response(Duration::from_secs(5)).await.unwrap();
    assert_eq!(response.status, 200);
    assert_eq!(response.body, b"aaaaaaaaaabbbbbbbbbbccccccccccddddddddddeeeeeeeeeeffffffffff");
}

#[tokio::test]
async fn the_request_timeout_starts_when_the_body_has_been_sent() {
    let foo = Backend::start("foo").await;
    // An upload three times as long as `request`, steady enough for `body_read`: the upstream
    // answers at once when the body is complete, so only a timer started too early cuts it.
    // Streamed, so that the upstream exchange is under way while the body arrives.
    let extra = "timeouts: { request: 500ms, body_read: 1s }\nlimits: { body_buffer_bytes: 0, min_body_rate: 0 }\n";
    let proxy = start_proxy(&config(&[("foo", vec![foo.addr])], extra)).await;
    let mut conn = RawConn::connect(proxy.traffic_addr()).await;
    // `/x` reads the whole body before it answers (`echo-body` would answer at once).
    assert!(conn.send(b"POST /foo/x HTTP/1.1\r\nHost: api.example.com\r\nContent-Length: 60\r\n\r\n").await);
    for i in 0..6u8 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        assert!(conn.send(&[b'a' + i; 10]).await, "piece {i}");
    }
    let response = conn.response(Duration::from_secs(5)).await.unwrap();
    assert_eq!(response.status, 200, "a steady 1.5 s upload with request: 500ms");
    let seen = foo.requests();
    assert_eq!(seen.last().and_then(|r| r.body.as_ref()).map(Bytes::len), Some(60), "the backend got the whole body");

    // And it still bounds the wait for the answer once the body is in.
    let started = Instant::now();
    let answer =
        send(proxy.traffic_addr(), http::Method::POST, "api.example.com", "/foo/slow", &[], Bytes::from_static(b"x"))
            .await;
    assert_eq!(answer.status, StatusCode::GATEWAY_TIMEOUT, "no answer 500 ms after a complete body");
    assert!(started.elapsed() < Duration::from_secs(5), "took {:?}", started.elapsed());
}

#[tokio::test]
async fn a_request_head_that_stalls_is_closed_after_header_read_without_an_answer() {
    let foo = Backend::start("foo").await;
    let extra = "timeouts: { header_read: 500ms, client_idle: 10s }\n";
    let proxy = start_proxy(&config(&[("foo", vec![foo.addr])], extra)).await;
    let mut conn = RawConn::connect(proxy.traffic_addr()).await;
    assert!(conn.send(b"GET /foo/x HTTP/1.1\r\nHost: api.ex").await);
    let sent = Instant::now();
    assert_eq!(conn.closed_within(Duration::from_secs(5)).await, Ok(Vec::new()), "closed, nothing written");
    let waited = sent.elapsed();
    assert!(waited >= Duration::from_millis(450), "closed after {waited:?}, before header_read");
    assert!(waited < Duration::from_secs(3), "closed after {waited:?}, not by header_read");
    assert_eq!(foo.request_count(), 0);
}

#[tokio::test]
async fn a_connection_over_the_cap_is_answered_503_and_closed_without_reaching_a_backend() {
    let foo = Backend::start("foo").await;
    let proxy = start_proxy(&config(&[("foo", vec![foo.addr])], "limits: { max_connections: 2 }\n")).await;
    // Two connections in use, one of them between requests.
    let mut first = RawConn::connect(proxy.traffic_addr()).await;
    assert!(first.send(KEEP_ALIVE_REQUEST).await);
    assert_eq!(first.response(Duration::from_secs(5)).await.unwrap().status, 200);
    let _second = RawConn::connect(proxy.traffic_addr()).await;
    let shared = proxy.shared().clone();
    eventually(Duration::from_secs(5), "both connections are counted", || {
        let shared = shared.clone();
        async move { shared.metrics.encode().contains("gatehouse_open_connections 2") }
    })
    .await;
    let mut third = RawConn::connect(proxy.traffic_addr()).await;
    assert!(third.send(KEEP_ALIVE_REQUEST).await);
    let response = third.response(Duration::from_secs(5)).await.unwrap();
    assert_eq!(response.status, 503);
    assert_eq!(response.header("connection"), Some("close"));
    assert_eq!(third.closed_within(Duration::from_secs(3)).await, Ok(Vec::new()));
    assert_eq!(foo.request_count(), 1, "only the first connection's request");
    // The connections within the cap are unaffected.
    assert!(first.send(KEEP_ALIVE_REQUEST).await);
    assert_eq!(first.response(Duration::from_secs(5)).await.unwrap().status, 200);
}

#[tokio::test]
async fn an_http_1_0_upstream_is_answered_as_http_1_1_and_the_client_connection_kept() {
    // An upstream that answers HTTP/1.0 and closes, as `python3 -m http.server` does.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let old = listener.local_addr().unwrap();
    let upstream = tokio::spawn(async move {
        for _ in 0..2 {
            let Ok((mut stream, _)) = listener.accept().await else { return };
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") && stream.read(&mut byte).await.is_ok_and(|n| n == 1) {
                head.push(byte[0]);
            }
            let _ = stream.write_all(b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok").await;
        }
    });
    let proxy = start_proxy(&config(&[("old", vec![old])], "")).await;
    let mut conn = RawConn::connect(proxy.traffic_addr()).await;
    for i in 0..2 {
        assert!(conn.send(b"GET /old/x HTTP/1.1\r\nHost: api.example.com\r\n\r\n").await, "request {i}");
        let response = conn.response(Duration::from_secs(5)).await.unwrap();
        assert_eq!((response.version.as_str(), response.status), ("HTTP/1.1", 200), "request {i}");
        assert_eq!(response.body, b"ok");
    }
    upstream.abort();
}

#[tokio::test]
async fn a_connection_token_cannot_strip_the_headers_the_proxy_owns() {
    let foo = Backend::start("foo").await;
    let proxy = start_proxy(&config(&[("foo", vec![foo.addr])], "via: node-a\nforwarded: { trusted_hops: 1 }\n")).await;
    let tokens = "Host, X-Request-Id, X-Forwarded-For, X-Forwarded-Host, X-Forwarded-Proto, X-Forwarded-Port, Via, Content-Length";
    let answer =
        get(proxy.traffic_addr(), HOST, "/foo/x", &[("connection", tokens), ("x-request-id", "client-id")]).await;
    assert_eq!(answer.status, StatusCode::OK);
    let seen = &foo.requests()[0].headers;
    assert_eq!(seen["host"], HOST);
    assert_eq!(seen["x-forwarded-host"], HOST);
    assert_eq!(seen["x-request-id"], "client-id");
    assert_eq!(answer.headers["x-request-id"], "client-id", "the client and the upstream see the same id");
    assert_eq!(seen["x-forwarded-for"], "127.0.0.1");
    assert_eq!(seen["x-forwarded-proto"], "http");
    assert!(seen.contains_key("x-forwarded-port"));
    assert_eq!(seen["via"], "1.1 node-a");
}

#[tokio::test]
async fn underscore_spellings_of_headers_never_reach_the_upstream() {
    let foo = Backend::start("foo").await;
    let forged = [
        ("x_forwarded_for", "6.6.6.6"),
        ("x_forwarded_host", "evil.example.com"),
        ("x_request_id", "forged"),
        ("x_custom_header", "1"),
    ];
    let proxy = start_proxy(&config(&[("foo", vec![foo.addr])], "")).await;
    get(proxy.traffic_addr(), HOST, "/foo/x", &forged).await;
    let seen = &foo.take_requests()[0].headers;
    let underscored: Vec<&str> = seen.keys().map(http::HeaderName::as_str).filter(|n| n.contains('_')).collect();
    assert!(underscored.is_empty(), "forwarded {underscored:?}");
    // `underscores: keep` passes a name of the application's own, never a spelling of the proxy's.
    let proxy = start_proxy(&config(&[("foo", vec![foo.addr])], "headers: { underscores: keep }\n")).await;
    get(proxy.traffic_addr(), HOST, "/foo/x", &forged).await;
    let seen = &foo.take_requests()[0].headers;
    let underscored: Vec<&str> = seen.keys().map(http::HeaderName::as_str).filter(|n| n.contains('_')).collect();
    assert_eq!(underscored, ["x_custom_header"]);
}

#[tokio::test]
async fn each_forwarding_header_is_kept_only_from_a_hop_that_writes_it() {
    let foo = Backend::start("foo").await;
    let client_sent = [
        ("x-forwarded-for", "203.0.113.7"),
        ("x-forwarded-proto", "https"),
        ("x-forwarded-port", "443"),
        ("x-forwarded-host", "evil.example.com"),
        ("forwarded", "for=6.6.6.6;host=evil.example.com"),
        ("x-real-ip", "6.6.6.6"),
    ];
    // Behind an ALB: it writes X-Forwarded-For, -Proto and -Port, nothing else.
    let proxy = start_proxy(&config(&[("foo", vec![foo.addr])], "forwarded: { trusted_hops: 1 }\n")).await;
    get(proxy.traffic_addr(), HOST, "/foo/x", &client_sent).await;
    let seen = &foo.take_requests()[0].headers;
    assert_eq!(seen["x-forwarded-for"], "203.0.113.7, 127.0.0.1");
    assert_eq!(seen["x-forwarded-proto"], "https");
    assert_eq!(seen["x-forwarded-port"], "443");
    assert_eq!(seen["x-forwarded-host"], HOST, "no trusted hop wrote X-Forwarded-Host");
    assert!(!seen.contains_key("forwarded") && !seen.contains_key("x-real-ip"));
    // A hop in front that is configured to write X-Forwarded-Host too.
    let extra = "forwarded: { trusted_hops: 1, trusted_headers: [x-forwarded-for, x-forwarded-host] }\n";
    let proxy = start_proxy(&config(&[("foo", vec![foo.addr])], extra)).await;
    get(proxy.traffic_addr(), HOST, "/foo/x", &client_sent).await;
    let seen = &foo.take_requests()[0].headers;
    assert_eq!(seen["x-forwarded-host"], "evil.example.com");
    assert_eq!(seen["x-forwarded-proto"], "http", "X-Forwarded-Proto is not trusted from this hop");
}

#[tokio::test]
async fn a_byte_that_is_not_text_in_x_forwarded_for_never_erases_the_trusted_entry() {
    let foo = Backend::start("foo").await;
    let proxy = start_proxy(&config(&[("foo", vec![foo.addr])], "forwarded: { trusted_hops: 1 }\n")).await;
    let mut conn = RawConn::connect(proxy.traffic_addr()).await;
    assert!(
        conn.send(b"GET /foo/x HTTP/1.1\r\nHost: api.example.com\r\nX-Forwarded-For: 6.6.\xff.6, 203.0.113.7\r\n\r\n")
            .await
    );
    assert_eq!(conn.response(Duration::from_secs(5)).await.unwrap().status, 200);
    assert_eq!(foo.take_requests()[0].headers["x-forwarded-for"], "203.0.113.7, 127.0.0.1");
    // The trusted hop's own entry broken: refused, not forwarded without it.
    assert!(
        conn.send(b"GET /foo/x HTTP/1.1\r\nHost: api.example.com\r\nX-Forwarded-For: 6.6.6.6, 203.0.\xff.7\r\n\r\n")
            .await
    );
    assert_eq!(conn.response(Duration::from_secs(5)).await.unwrap().status, 400);
    assert_eq!(foo.request_count(), 0);
}

#[tokio::test]
async fn two_request_ids_become_one_that_the_upstream_and_the_client_share() {
    let foo = Backend::start("foo").await;
    let proxy = start_proxy(&config(&[("foo", vec![foo.addr])], "")).await;
    let mut conn = RawConn::connect(proxy.traffic_addr()).await;
    assert!(
        conn.send(
            b"GET /foo/x HTTP/1.1\r\nHost: api.example.com\r\nX-Request-Id: first\r\nX-Request-Id: second\r\n\r\n"
        )
        .await
    );
    let response = conn.response(Duration::from_secs(5)).await.unwrap();
    let seen = foo.take_requests();
    let ids: Vec<&str> = seen[0].headers.get_all("x-request-id").iter().map(|v| v.to_str().unwrap()).collect();
    assert_eq!(ids, ["first"]);
    assert_eq!(response.header("x-request-id"), Some("first"));
}
