//! Real HTTP backends on loopback for the proxy tests, and small helpers to drive the proxy.
//!
//! A [`Backend`] records every request it receives (path, headers) and answers by path:
//! - `/slow`: waits 10 s before answering (the proxy's request timeout should fire first);
//! - `/stream`: sends `first\n`, then waits for [`Backend::release`] before `last\n`;
//! - `/echo-body`: streams the request body back;
//! - `/ws`: a WebSocket echo server;
//! - anything else: 200 with `{"backend": name, "path": path_and_query}`.

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
}

#[derive(Debug)]
struct BackendState {
    name: String,
    requests: Mutex<Vec<Recorded>>,
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
        let state =
            Arc::new(BackendState { name: name.to_owned(), requests: Mutex::new(Vec::new()), release: Notify::new() });
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
    state.requests.lock().expect("lock").push(Recorded {
        method: req.method().clone(),
        path_and_query: path_and_query.clone(),
        headers: req.headers().clone(),
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
        _ => axum::Json(serde_json::json!({ "backend": state.name, "path": path_and_query })).into_response(),
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
