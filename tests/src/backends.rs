//! Real HTTP backends on loopback for the proxy tests, and small helpers to drive the proxy.
//!
//! A [`Backend`] records every request it receives (path, headers) and answers by path:
//! - `/slow`: waits 10 s before answering (the proxy's request timeout should fire first);
//! - `/stream`: sends `first\n`, then waits for [`Backend::release`] before `last\n`;
//! - `/echo-body`: streams the request body back;
//! - `/ws`: a WebSocket echo server;
//! - anything else: reads the request body to its end, then 200 with
//!   `{"backend": name, "path": path_and_query}`.
//!
//! A request is recorded as soon as its head arrives (so that a request whose body never
//! completes still counts as contacting the backend); its body is filled in once read.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use http::{HeaderMap, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;

/// What a backend saw of one request.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: http::Method,
    pub path_and_query: String,
    pub headers: HeaderMap,
    /// The body, once read to its end (only the default answer reads it); `None` while it
    /// is being read, when reading it failed (the request was aborted), or for the special
    /// paths.
    pub body: Option<Bytes>,
    /// Reading the body failed: the request was aborted on its way (default answer only).
    pub body_failed: bool,
    /// Arrival order at this backend, from 0.
    pub seq: u64,
}

#[derive(Debug)]
struct BackendState {
    name: String,
    requests: Mutex<Vec<Recorded>>,
    arrived: std::sync::atomic::AtomicU64,
    release: Notify,
}

/// A recording HTTP/1.1 backend on `127.0.0.1:0`; stops when dropped.
#[derive(Debug)]
pub struct Backend {
    pub addr: SocketAddr,
    state: Arc<BackendState>,
    task: JoinHandle<()>,
}

impl Backend {
    pub async fn start(name: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind backend");
        let addr = listener.local_addr().expect("backend addr");
        let state = Arc::new(BackendState {
            name: name.to_owned(),
            requests: Mutex::new(Vec::new()),
            arrived: std::sync::atomic::AtomicU64::new(0),
            release: Notify::new(),
        });
        let app = Router::new().fallback(answer).with_state(state.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { addr, state, task }
    }

    /// Every request received so far.
    pub fn requests(&self) -> Vec<Recorded> {
        self.state.requests.lock().expect("lock").clone()
    }

    pub fn request_count(&self) -> usize {
        self.state.requests.lock().expect("lock").len()
    }

    /// Every request received so far, forgetting them: the next call sees only newer ones.
    pub fn take_requests(&self) -> Vec<Recorded> {
        std::mem::take(&mut *self.state.requests.lock().expect("lock"))
    }

    /// Lets a pending `/stream` response send its last chunk.
    pub fn release(&self) {
        self.state.release.notify_one();
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn answer(State(state): State<Arc<BackendState>>, mut req: Request) -> Response {
    let path_and_query = req.uri().path_and_query().map_or("/", |p| p.as_str()).to_owned();
    let seq = state.arrived.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    state.requests.lock().expect("lock").push(Recorded {
        method: req.method().clone(),
        path_and_query: path_and_query.clone(),
        headers: req.headers().clone(),
        body: None,
        body_failed: false,
        seq,
    });
    match req.uri().path() {
        "/slow" => {
            tokio::time::sleep(Duration::from_secs(10)).await;
            "slow".into_response()
        }
        "/stream" => {
            let stream = futures::stream::unfold(0u8, move |step| {
                let state = state.clone();
                async move {
                    match step {
                        0 => Some((Ok::<_, Infallible>(Bytes::from_static(b"first\n")), 1)),
                        1 => {
                            state.release.notified().await;
                            Some((Ok(Bytes::from_static(b"last\n")), 2))
                        }
                        _ => None,
                    }
                }
            });
            Response::new(Body::from_stream(stream))
        }
        "/echo-body" => Response::new(Body::new(req.into_body())),
        "/ws" => {
            let Some(key) = req.headers().get("sec-websocket-key").cloned() else {
                return StatusCode::BAD_REQUEST.into_response();
            };
            let on_upgrade = hyper::upgrade::on(&mut req);
            tokio::spawn(async move {
                let Ok(upgraded) = on_upgrade.await else { return };
                let mut ws =
                    tokio_tungstenite::WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None)
                        .await;
                while let Some(Ok(msg)) = ws.next().await {
                    if msg.is_text() || msg.is_binary() {
                        if ws.send(msg).await.is_err() {
                            break;
                        }
                    } else if msg.is_close() {
                        break;
                    }
                }
            });
            Response::builder()
                .status(StatusCode::SWITCHING_PROTOCOLS)
                .header(header::CONNECTION, "upgrade")
                .header(header::UPGRADE, "websocket")
                .header("sec-websocket-accept", derive_accept_key(key.as_bytes()))
                .body(Body::empty())
                .expect("valid response")
        }
        _ => {
            let body = req.into_body().collect().await.map(http_body_util::Collected::to_bytes);
            // `take_requests` may have taken it meanwhile: then there is nothing to fill in.
            if let Some(recorded) = state.requests.lock().expect("lock").iter_mut().find(|r| r.seq == seq) {
                match &body {
                    Ok(bytes) => recorded.body = Some(bytes.clone()),
                    Err(_) => recorded.body_failed = true,
                }
            }
            if body.is_err() {
                return StatusCode::BAD_REQUEST.into_response();
            }
            axum::Json(serde_json::json!({ "backend": state.name, "path": path_and_query })).into_response()
        }
    }
}

/// An address where nothing listens: connecting to it is refused.
pub async fn refused_addr() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    drop(listener);
    addr
}

/// Starts the proxy in-process from YAML (listen and admin_listen default to port 0).
pub async fn start_proxy(yaml: &str) -> gatehouse_proxy::ProxyHandle {
    let settings = gatehouse_proxy::Config::parse(yaml, std::path::Path::new("test.yaml")).expect("valid config");
    gatehouse_proxy::Proxy::bind(settings).await.expect("proxy starts")
}

/// A config with one edge `api.example.com` -> `service.api`, static discovery from
/// `services` (`("foo", [addr, ...])` becomes `service.api.foo`), and `extra` YAML appended.
pub fn config(services: &[(&str, Vec<SocketAddr>)], extra: &str) -> String {
    let mut yaml = String::from(
        "listen: 127.0.0.1:0\nadmin_listen: 127.0.0.1:0\nedges:\n  - host: api.example.com\n    prefix: service.api\naccess_log: false\ndiscovery:\n  static:\n",
    );
    for (segment, addrs) in services {
        let list: Vec<String> = addrs.iter().map(|a| format!("\"{a}\"")).collect();
        yaml.push_str(&format!("    service.api.{segment}: [{}]\n", list.join(", ")));
    }
    if services.is_empty() {
        yaml.push_str("    {}\n");
    }
    yaml.push_str(extra);
    yaml
}

/// A response read in full.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: String,
}

impl Answer {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
}

/// A plain HTTP/1.1 client (no pool reuse surprises across tests: one per call site is fine).
pub fn client() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build(HttpConnector::new())
}

/// `GET http://{addr}{path}` with the given `Host` and extra headers.
pub async fn get(addr: SocketAddr, host: &str, path: &str, headers: &[(&str, &str)]) -> Answer {
    send(addr, http::Method::GET, host, path, headers, Bytes::new()).await
}

pub async fn send(
    addr: SocketAddr,
    method: http::Method,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Bytes,
) -> Answer {
    let mut builder = http::Request::builder().method(method).uri(format!("http://{addr}{path}")).header("host", host);
    for (k, v) in headers {
        builder = builder.header(*k, *v);
    }
    let req = builder.body(Full::new(body)).expect("valid request");
    let response = tokio::time::timeout(Duration::from_secs(20), client().request(req))
        .await
        .expect("answer within 20 s")
        .expect("request succeeds");
    let (parts, body) = response.into_parts();
    let body = body.collect().await.expect("body").to_bytes();
    Answer { status: parts.status, headers: parts.headers, body: String::from_utf8_lossy(&body).into_owned() }
}

/// Polls `condition` every 20 ms until it holds or `timeout` passes; panics with `what`.
pub async fn eventually<F, Fut>(timeout: Duration, what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if condition().await {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "timed out after {timeout:?} waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// One response read off a raw connection by [`RawConn::response`].
#[derive(Debug, Clone)]
pub struct RawResponse {
    /// `HTTP/1.1` or `HTTP/1.0`, as on the status line.
    pub version: String,
    pub status: u16,
    /// Header names lower-cased, in the order received.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RawResponse {
    /// The first value of a header (name in lower case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }
}

/// Why no (further) response could be read from a raw connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RawEnd {
    /// The peer closed (or reset) the connection; `pending` is what it sent after the last
    /// complete response, if anything.
    Closed { pending: Vec<u8> },
    /// Nothing complete arrived within the time given.
    TimedOut { pending: Vec<u8> },
    /// Bytes that are not an HTTP/1.1 response.
    Malformed(String),
}

/// How a response body ended, as [`RawConn::read_response`] read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BodyEnd {
    /// Complete by its framing (a body without a length: the connection ended after it).
    Complete,
    /// The connection ended (closed or reset) before its framing said the body was complete.
    CutShort,
    /// Nothing more arrived within the time given, and the body was not complete.
    Stalled,
    /// Framing that does not parse (a chunk size line, a `Content-Length`).
    Malformed(String),
}

/// A response as far as it arrived ([`RawConn::read_response`]): its head, the body bytes that
/// came (chunked framing removed), and how the body ended.
#[derive(Debug, Clone)]
pub struct PartialResponse {
    pub response: RawResponse,
    pub end: BodyEnd,
}

/// A TCP connection that sends exactly the bytes it is given and parses what comes back by
/// hand: for requests no well-behaved client would send.
#[derive(Debug)]
pub struct RawConn {
    pub stream: tokio::net::TcpStream,
    buf: Vec<u8>,
    eof: bool,
}

impl RawConn {
    pub async fn connect(addr: SocketAddr) -> Self {
        let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
        Self { stream, buf: Vec::new(), eof: false }
    }

    /// Writes `bytes`; `false` when the peer has already closed the connection.
    pub async fn send(&mut self, bytes: &[u8]) -> bool {
        use tokio::io::AsyncWriteExt;
        self.stream.write_all(bytes).await.is_ok() && self.stream.flush().await.is_ok()
    }

    /// Reads more bytes into the buffer, until `deadline`; `false` at the end of the stream.
    async fn fill(&mut self, deadline: tokio::time::Instant) -> Result<bool, RawEnd> {
        use tokio::io::AsyncReadExt;
        if self.eof {
            return Ok(false);
        }
        let mut chunk = [0u8; 8192];
        match tokio::time::timeout_at(deadline, self.stream.read(&mut chunk)).await {
            Err(_) => Err(RawEnd::TimedOut { pending: self.buf.clone() }),
            Ok(Ok(0) | Err(_)) => {
                self.eof = true;
                Ok(false)
            }
            Ok(Ok(n)) => {
                self.buf.extend_from_slice(&chunk[..n]);
                Ok(true)
            }
        }
    }

    /// Reads one complete response (framed by `Content-Length`, chunked, or the end of the
    /// stream), within `timeout`. (Not for the answer to a HEAD, which has no body: see
    /// [`RawConn::read_response`].)
    pub async fn response(&mut self, timeout: Duration) -> Result<RawResponse, RawEnd> {
        let read = self.read_response(timeout, false).await?;
        match read.end {
            BodyEnd::Complete => Ok(read.response),
            BodyEnd::CutShort => Err(RawEnd::Malformed("body cut short".into())),
            BodyEnd::Stalled => Err(RawEnd::TimedOut { pending: read.response.body }),
            BodyEnd::Malformed(why) => Err(RawEnd::Malformed(why)),
        }
    }

    /// Reads one response head and as much of its body as arrives within `timeout`, and says
    /// how the body ended: for responses that may end short. `to_head`: the request was a HEAD,
    /// so the response has no body whatever its headers say. A 1xx is returned like any other
    /// response (with no body); the final one follows it.
    pub async fn read_response(&mut self, timeout: Duration, to_head: bool) -> Result<PartialResponse, RawEnd> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut response = self.read_head(deadline).await?;
        let end = self.read_body(&mut response, to_head, deadline).await;
        Ok(PartialResponse { response, end })
    }

    async fn read_head(&mut self, deadline: tokio::time::Instant) -> Result<RawResponse, RawEnd> {
        let head_end = loop {
            if let Some(at) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break at;
            }
            if !self.fill(deadline).await? {
                return Err(RawEnd::Closed { pending: std::mem::take(&mut self.buf) });
            }
        };
        let head = String::from_utf8_lossy(&self.buf[..head_end]).into_owned();
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap_or_default();
        let status = status_line
            .strip_prefix("HTTP/1.1 ")
            .or_else(|| status_line.strip_prefix("HTTP/1.0 "))
            .and_then(|rest| rest.get(..3))
            .and_then(|code| code.parse::<u16>().ok())
            .ok_or_else(|| RawEnd::Malformed(head.clone()))?;
        let mut headers = Vec::new();
        for line in lines {
            let (name, value) = line.split_once(':').ok_or_else(|| RawEnd::Malformed(head.clone()))?;
            headers.push((name.trim().to_ascii_lowercase(), value.trim().to_owned()));
        }
        self.buf.drain(..head_end + 4);
        let version = status_line.get(..8).unwrap_or_default().to_owned();
        Ok(RawResponse { version, status, headers, body: Vec::new() })
    }

    /// Reads the body of `response` into it, by its framing, until it is complete, the
    /// connection ends, or `deadline` passes.
    async fn read_body(
        &mut self,
        response: &mut RawResponse,
        to_head: bool,
        deadline: tokio::time::Instant,
    ) -> BodyEnd {
        let status = response.status;
        if to_head || (100..200).contains(&status) || status == 204 || status == 304 {
            // No body, whatever the headers say.
            return BodyEnd::Complete;
        }
        let chunked = response.header("transfer-encoding").is_some_and(|te| te.eq_ignore_ascii_case("chunked"));
        let ended = |filled: Result<bool, RawEnd>| match filled {
            Ok(true) => None,
            Ok(false) => Some(BodyEnd::CutShort),
            Err(_) => Some(BodyEnd::Stalled),
        };
        if chunked {
            loop {
                let line_end = loop {
                    if let Some(at) = self.buf.windows(2).position(|w| w == b"\r\n") {
                        break at;
                    }
                    if let Some(end) = ended(self.fill(deadline).await) {
                        return end;
                    }
                };
                let size_text = String::from_utf8_lossy(&self.buf[..line_end]).into_owned();
                let Ok(size) = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16) else {
                    return BodyEnd::Malformed(format!("chunk size {size_text:?}"));
                };
                self.buf.drain(..line_end + 2);
                if size == 0 {
                    // The trailer section, up to its empty line.
                    loop {
                        if let Some(at) = self.buf.windows(2).position(|w| w == b"\r\n") {
                            self.buf.drain(..at + 2);
                            if at == 0 {
                                return BodyEnd::Complete;
                            }
                            continue;
                        }
                        if let Some(end) = ended(self.fill(deadline).await) {
                            return end;
                        }
                    }
                }
                while self.buf.len() < size + 2 {
                    if let Some(end) = ended(self.fill(deadline).await) {
                        // What arrived of the chunk is part of what the client got.
                        let got = self.buf.len().min(size);
                        response.body.extend(self.buf.drain(..got));
                        return end;
                    }
                }
                response.body.extend_from_slice(&self.buf[..size]);
                self.buf.drain(..size + 2);
            }
        } else if let Some(length) = response.header("content-length") {
            let Ok(length) = length.parse::<usize>() else {
                return BodyEnd::Malformed(format!("Content-Length {length}"));
            };
            while self.buf.len() < length {
                if let Some(end) = ended(self.fill(deadline).await) {
                    response.body = std::mem::take(&mut self.buf);
                    return end;
                }
            }
            response.body = self.buf.drain(..length).collect();
            BodyEnd::Complete
        } else {
            // Delimited by the end of the connection.
            loop {
                match self.fill(deadline).await {
                    Ok(true) => {}
                    Ok(false) => {
                        response.body = std::mem::take(&mut self.buf);
                        return BodyEnd::Complete;
                    }
                    Err(_) => {
                        response.body = std::mem::take(&mut self.buf);
                        return BodyEnd::Stalled;
                    }
                }
            }
        }
    }

    /// Waits up to `timeout` for the peer to close the connection; `Ok` with whatever it sent
    /// first (nothing, normally), `Err` with what arrived when it is still open.
    pub async fn closed_within(&mut self, timeout: Duration) -> Result<Vec<u8>, Vec<u8>> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match self.fill(deadline).await {
                Ok(true) => {}
                Ok(false) => return Ok(std::mem::take(&mut self.buf)),
                Err(_) => return Err(std::mem::take(&mut self.buf)),
            }
        }
    }
}
