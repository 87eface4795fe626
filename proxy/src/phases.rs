//! The phases a request meets, in order, each a short function with one reason, and the
//! per-request context they fill in ([`Exchange`]) instead of passing values back up:
//!
//! 1. [`request_filter`]: the head checks every request meets, the readiness path, the
//!    convention's route and its backend; any failure is answered by the proxy itself;
//! 2. [`upstream_request_filter`]: the head the upstream gets (hop-by-hop removal, the
//!    proxy's own headers, the convention's path);
//! 3. request body (`forward.rs`): small bodies read whole first, large ones streamed;
//! 4. [`upstream_peer`]: the endpoint, round robin, and another one after a failed connect;
//! 5. response (`forward.rs`): the upstream's head and body, relayed with the head the client
//!    gets written by `headers::write_client_head`;
//! 6. fail to proxy: a failure becomes one row of {status, body, close} in
//!    [`crate::error::ProxyError::answer`];
//! 7. [`logging`]: the metrics and the access log line, once the response body has ended.

use std::net::SocketAddr;
use std::sync::Arc;

use gatehouse_convention::READY_PATH;
use tokio::time::Instant;

use crate::Shared;
use crate::error::ProxyError;
use crate::h1::Framing;
use crate::h1::request::RequestHead;
use crate::headers::{
    BadForwardedFor, ClientFacts, OutFraming, RequestId, UpstreamHead, is_websocket_upgrade, write_upstream_head,
};
use crate::request::{HeadParts, check_head, request_host, route_request};
use crate::table::Backend;

/// How an exchange ended, for the access log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Every byte reached the client's connection.
    Complete,
    /// The upstream paused longer than `timeouts.upstream_read` in the middle of its body.
    UpstreamReadTimeout,
    /// The upstream's body failed (reset, cut short, malformed framing).
    UpstreamFailed,
    /// A write to the client stalled past `timeouts.client_write`.
    ClientWriteTimeout,
    /// The client connection ended first.
    ClientGone,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Complete => "complete",
            Self::UpstreamReadTimeout => "upstream_read_timeout",
            Self::UpstreamFailed => "upstream_failed",
            Self::ClientWriteTimeout => "client_write_timeout",
            Self::ClientGone => "client_gone",
        }
    }
}

/// One request's context: what the access log and the metrics need, filled in by the phases.
#[derive(Debug)]
pub struct Exchange {
    pub started: Instant,
    pub request_id: RequestId,
    /// Method, host and target as the client sent them (only when the access log is on).
    pub method: String,
    pub host: String,
    pub target: String,
    pub edge: Option<String>,
    pub backend: Option<Arc<Backend>>,
    pub upstream: Option<SocketAddr>,
    pub status: u16,
    pub outcome: Outcome,
    pub error: Option<ProxyError>,
    pub response_body_bytes: u64,
    /// When the response head went to the client: the request duration metric ends there.
    pub head_sent: Option<Instant>,
}

impl Exchange {
    pub fn new(request_id: RequestId) -> Self {
        Self {
            started: Instant::now(),
            request_id,
            method: String::new(),
            host: String::new(),
            target: String::new(),
            edge: None,
            backend: None,
            upstream: None,
            status: 0,
            outcome: Outcome::Complete,
            error: None,
            response_body_bytes: 0,
            head_sent: None,
        }
    }
}

/// What the request filter decided.
#[derive(Debug)]
pub enum Decision {
    /// The proxy answers: the readiness path (200 or 503).
    Ready(bool),
    /// The proxy answers with this failure.
    Fail(ProxyError),
    /// To the backend, with the path the upstream sees.
    Forward { backend: Arc<Backend>, path_and_query: std::ops::Range<usize>, upstream_path: Option<String> },
}

/// Phase 1: everything decided by the head alone.
pub fn request_filter(shared: &Shared, buf: &[u8], head: &RequestHead, x: &mut Exchange) -> Decision {
    let parts = HeadParts::from_h1(buf, head);
    if shared.settings.access_log {
        x.method = parts.method.to_owned();
        x.host = request_host(&parts).map(str::to_owned).unwrap_or_default();
        x.target = String::from_utf8_lossy(head.path_and_query.get(buf)).into_owned();
    }
    if parts.path_and_query == READY_PATH {
        return match check_head(&parts) {
            Err(rejection) => Decision::Fail(rejection.into()),
            Ok(_) if parts.method != "GET" && parts.method != "HEAD" => Decision::Fail(ProxyError::ReadinessMethod),
            Ok(_) => Decision::Ready(shared.is_ready()),
        };
    }
    let table = shared.table.load();
    let route = match route_request(&table.edges, &parts) {
        Ok(route) => route,
        Err(rejection) => return Decision::Fail(rejection.into()),
    };
    if shared.settings.access_log {
        x.edge = Some(route.edge.host().to_owned());
    }
    let Some(backend) = table.services.get(route.service_name.as_str()).cloned() else {
        return Decision::Fail(ProxyError::UnknownService);
    };
    x.backend = Some(backend.clone());
    if backend.endpoints.is_empty() {
        return Decision::Fail(ProxyError::NoReadyEndpoint);
    }
    if let (Some(limit), Framing::Length(len)) = (shared.settings.limits.max_body_bytes, head.framing)
        && len > limit
    {
        return Decision::Fail(ProxyError::BodyTooLarge);
    }
    // The upstream path is a slice of the target, except when the convention had to add a `/`.
    match locate(buf, &route.upstream_path_and_query) {
        Some(range) => Decision::Forward { backend, path_and_query: range, upstream_path: None },
        None => Decision::Forward {
            backend,
            path_and_query: 0..0,
            upstream_path: Some(route.upstream_path_and_query.into_owned()),
        },
    }
}

/// Where `part` lies in `buf`, if it is a slice of it.
fn locate(buf: &[u8], part: &str) -> Option<std::ops::Range<usize>> {
    let (start, base) = (part.as_ptr() as usize, buf.as_ptr() as usize);
    (start >= base && start + part.len() <= base + buf.len()).then(|| start - base..start - base + part.len())
}

/// Phase 2: the upstream's request head, written into `out` without its framing header and
/// final blank line (the framing is known once the body has started: [`finish_upstream_head`]).
pub fn upstream_request_filter(
    shared: &Shared,
    out: &mut Vec<u8>,
    buf: &[u8],
    head: &RequestHead,
    path_and_query: &[u8],
    request_id: &RequestId,
    client: &ClientFacts,
) -> Result<bool, BadForwardedFor> {
    let websocket = head.wants_upgrade && is_websocket_upgrade(buf, &head.headers);
    let parts = HeadParts::from_h1(buf, head);
    // An absolute-form target routed the request (the head checks made sure Host names the same
    // host): the upstream gets that authority as Host, as RFC 9112 §3.2.2 asks of a proxy.
    let host = match (parts.authority, parts.host) {
        (Some(authority), _) => authority.as_bytes(),
        (None, crate::request::HostHeader::One(host)) => host,
        _ => b"",
    };
    let up = UpstreamHead {
        method: head.method.get(buf),
        path_and_query,
        host,
        request_id: request_id.as_bytes(),
        client,
        forwarded: &shared.settings.forwarded,
        underscores: shared.settings.headers.underscores,
        via: shared.settings.via.as_deref(),
        framing: OutFraming::None,
        websocket,
    };
    write_upstream_head(out, buf, &head.headers, &up)?;
    // Drop the framing-less head's blank line; the framing and the blank line come later.
    out.truncate(out.len() - 2);
    Ok(websocket)
}

/// Ends the upstream head written by [`upstream_request_filter`] with its framing.
pub fn finish_upstream_head(out: &mut Vec<u8>, framing: OutFraming) {
    match framing {
        OutFraming::None => {}
        OutFraming::Length(n) => {
            out.extend_from_slice(b"content-length: ");
            crate::headers::write_decimal(out, n);
            out.extend_from_slice(b"\r\n");
        }
        OutFraming::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
    }
    out.extend_from_slice(b"\r\n");
}

/// Phase 4: the endpoint for the next attempt, and the index to skip on a retry.
pub fn upstream_peer(backend: &Backend) -> Option<(usize, SocketAddr)> {
    backend.pick()
}

/// Phase 4, again: another endpoint after the connection to `failed` could not be made.
pub fn upstream_peer_after_failure(backend: &Backend, failed: usize) -> Option<SocketAddr> {
    backend.pick_other(failed)
}

/// Phase 7: the metrics and the access log line, when the response has ended.
pub fn logging(shared: &Shared, x: &Exchange, peer: SocketAddr) {
    let to_head = x.head_sent.unwrap_or_else(Instant::now).duration_since(x.started);
    shared.metrics.record(x.backend.as_deref(), x.status, to_head);
    if !shared.settings.access_log {
        return;
    }
    tracing::info!(
        target: "gatehouse::access",
        request_id = x.request_id.as_str(),
        client = %peer,
        method = %x.method,
        host = %x.host,
        path = %x.target,
        edge = x.edge.as_deref().unwrap_or(""),
        service = x.backend.as_ref().map_or("", |b| &*b.service_name),
        upstream = x.upstream.map(|a| a.to_string()).unwrap_or_default(),
        status = x.status,
        outcome = x.outcome.as_str(),
        response_body_bytes = x.response_body_bytes,
        duration_ms = x.started.elapsed().as_secs_f64() * 1e3,
        error = x.error.map_or("", ProxyError::reason),
    );
}
