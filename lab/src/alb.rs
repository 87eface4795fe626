//! Requests through the emulated ALB. MiniStack's data plane forwards
//! `http://<emulator>/_alb/<lb-name>/<path>` through the load balancer's listener to one of the
//! target group's registered targets (chosen at random), with the client's Host header, as AWS
//! forwards it to an `ip` target.

use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

/// A client for one load balancer on the emulator.
#[derive(Debug, Clone)]
pub struct AlbClient {
    endpoint: String,
    load_balancer_name: String,
    client: Client<HttpConnector, Empty<Bytes>>,
}

/// One response, whole.
#[derive(Debug, Clone)]
pub struct AlbResponse {
    pub status: StatusCode,
    pub body: Bytes,
}

impl AlbClient {
    /// `endpoint` is the emulator's URL (`AWS_ENDPOINT_URL`, e.g. `http://127.0.0.1:4566`).
    pub fn new(endpoint: &str, load_balancer_name: &str) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(Duration::from_secs(2)));
        Self {
            endpoint: endpoint.trim_end_matches('/').to_owned(),
            load_balancer_name: load_balancer_name.to_owned(),
            client: Client::builder(TokioExecutor::new()).build(connector),
        }
    }

    /// `GET <path>` with `Host: <host>`, as a client of the ALB would send it; at most 10 s.
    pub async fn get(&self, host: &str, path: &str) -> anyhow::Result<AlbResponse> {
        let uri = format!("{}/_alb/{}{path}", self.endpoint, self.load_balancer_name);
        let request = Request::get(&uri).header(http::header::HOST, host).body(Empty::new())?;
        exchange(&self.client, request).await
    }

    /// A plain `GET url` (a proxy's readiness or admin endpoint), on a fresh client.
    pub async fn plain_get(url: &str) -> anyhow::Result<AlbResponse> {
        let client = Client::builder(TokioExecutor::new()).build(HttpConnector::new());
        exchange(&client, Request::get(url).body(Empty::new())?).await
    }
}

async fn exchange(
    client: &Client<HttpConnector, Empty<Bytes>>,
    request: Request<Empty<Bytes>>,
) -> anyhow::Result<AlbResponse> {
    let uri = request.uri().to_string();
    let exchange = async {
        let response = client.request(request).await?;
        let status = response.status();
        let body = response.into_body().collect().await?.to_bytes();
        anyhow::Ok(AlbResponse { status, body })
    };
    tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .with_context(|| format!("GET {uri} took longer than 10 s"))?
        .with_context(|| format!("GET {uri} failed"))
}
