//! Demo services that stand in for a team's microservices: each answers every request with a
//! JSON line saying who it is and what it received, so a response shows which service was
//! reached, with which path, through which proxy.

use std::net::SocketAddr;

use axum::Json;
use axum::Router;
use axum::extract::{Request, State};
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// What a demo service answers.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct DemoReply {
    /// The logical service name, e.g. `service.api.hello`.
    pub service: String,
    pub method: String,
    /// The path and query the service received (the convention strips the first segment).
    pub path: String,
    /// `Via` as the proxy set it: names the node whose proxy forwarded the request.
    pub via: Option<String>,
    pub x_forwarded_for: Option<String>,
    pub x_request_id: Option<String>,
}

/// A demo service on loopback; stops when dropped.
#[derive(Debug)]
pub struct DemoService {
    pub logical_name: String,
    pub addr: SocketAddr,
    task: JoinHandle<()>,
}

impl DemoService {
    /// Binds `127.0.0.1:0` and serves until dropped.
    pub async fn start(logical_name: &str) -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let app = Router::new().fallback(reply).with_state(logical_name.to_owned());
        let task = tokio::spawn(async move {
            // An accept error here ends the demo service; the lab notices through failed requests.
            let _ = axum::serve(listener, app).await;
        });
        Ok(Self { logical_name: logical_name.to_owned(), addr, task })
    }
}

impl Drop for DemoService {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn reply(State(service): State<String>, request: Request) -> Json<DemoReply> {
    let header = |name: &str| request.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
    Json(DemoReply {
        service,
        method: request.method().to_string(),
        path: request.uri().path_and_query().map_or_else(|| "/".to_owned(), ToString::to_string),
        via: header("via"),
        x_forwarded_for: header("x-forwarded-for"),
        x_request_id: header("x-request-id"),
    })
}
