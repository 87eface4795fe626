//! The hot path: route by the convention, pick an endpoint, forward, stream back.

use std::error::Error as _;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use gatehouse_convention::READY_PATH;
use http::header::{self, HeaderValue};
use http::uri::PathAndQuery;
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body::Body as _;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;

use crate::Shared;
use crate::body::{RequestBody, ResponseBody, client_fault};
use crate::error::{ProxyError, error_response};
use crate::headers::{X_REQUEST_ID, append_via, is_websocket_upgrade, remove_hop_by_hop, set_forwarded};
use crate::metrics::UpstreamErrorKind;
use crate::request::{request_host, route_request};
use crate::table::Backend;
use crate::upstream::UpstreamError;

/// What is known about the client connection, computed once per connection.
#[derive(Debug)]
pub struct ConnInfo {
    pub peer: SocketAddr,
    /// The peer IP as a header value, for `X-Forwarded-For`.
    pub peer_ip: HeaderValue,
}

impl ConnInfo {
    pub fn new(peer: SocketAddr) -> Self {
        let peer_ip = HeaderValue::from_str(&peer.ip().to_string()).expect("an IP address is a valid header value");
        Self { peer, peer_ip }
    }
}

/// Serves one request. Never fails: every error is a response, made by `error_response`.
pub async fn handle(
    shared: Arc<Shared>,
    conn: Arc<ConnInfo>,
    req: Request<Incoming>,
) -> Result<Response<ResponseBody>, std::convert::Infallible> {
    if req.uri().path() == READY_PATH {
        return Ok(readiness(&shared, req.method()));
    }
    let start = Instant::now();
    shared.metrics.in_flight.inc();
    let mut log = AccessLog::default();
    let result = forward(&shared, &conn, req, &mut log).await;
    let (mut response, backend) = match result {
        Ok(ok) => ok,
        Err((error, backend)) => {
            log.error = Some(error.reason());
            (error_response(error), backend)
        }
    };
    if let Some(id) = log.request_id.clone() {
        response.headers_mut().insert(&X_REQUEST_ID, id);
    }
    let elapsed = start.elapsed();
    let status = response.status().as_u16();
    shared.metrics.record(backend.as_deref(), status, elapsed);
    shared.metrics.in_flight.dec();
    if shared.access_log {
        tracing::info!(
            target: "gatehouse::access",
            request_id = log.request_id.as_ref().and_then(|v| v.to_str().ok()).unwrap_or(""),
            client = %conn.peer,
            method = %log.method,
            host = log.host.as_deref().unwrap_or(""),
            path = log.path.as_deref().unwrap_or(""),
            edge = log.edge.as_deref().unwrap_or(""),
            service = backend.as_ref().map_or("", |b| &*b.service_name),
            upstream = log.upstream.map(|a| a.to_string()).unwrap_or_default(),
            status,
            duration_ms = elapsed.as_secs_f64() * 1e3,
            error = log.error.unwrap_or(""),
        );
    }
    Ok(response)
}

fn readiness(shared: &Shared, method: &Method) -> Response<ResponseBody> {
    let (status, body): (StatusCode, &'static [u8]) = if shared.is_ready() {
        (StatusCode::OK, b"ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, b"not ready\n")
    };
    let body = if method == Method::HEAD { ResponseBody::Local(None) } else { ResponseBody::local(body) };
    let mut response = Response::new(body);
    *response.status_mut() = status;
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    response
}

/// Fields for the access log line, filled in as the request progresses.
#[derive(Default)]
struct AccessLog {
    request_id: Option<HeaderValue>,
    method: Method,
    host: Option<String>,
    path: Option<String>,
    edge: Option<String>,
    upstream: Option<SocketAddr>,
    error: Option<&'static str>,
}

type Failure = (ProxyError, Option<Arc<Backend>>);

async fn forward(
    shared: &Shared,
    conn: &ConnInfo,
    mut req: Request<Incoming>,
    log: &mut AccessLog,
) -> Result<(Response<ResponseBody>, Option<Arc<Backend>>), Failure> {
    log.request_id = Some(shared.request_ids.ensure(req.headers_mut()));
    let table = shared.table.load();
    if shared.access_log {
        log.method = req.method().clone();
        log.host = request_host(req.uri(), req.headers()).ok().map(str::to_owned);
        log.path = req.uri().path_and_query().map(|p| p.as_str().to_owned());
    }
    let route =
        route_request(&table.edges, req.method(), req.uri(), req.headers()).map_err(|r| (ProxyError::from(r), None))?;
    if shared.access_log {
        log.edge = Some(route.edge.host().to_owned());
    }
    let backend = table.services.get(route.service_name.as_str()).cloned().ok_or((ProxyError::UnknownService, None))?;
    let fail = |e: ProxyError| (e, Some(backend.clone()));
    let (first_index, first) = backend.pick().ok_or_else(|| fail(ProxyError::NoReadyEndpoint))?;
    let path = PathAndQuery::from_maybe_shared(Bytes::copy_from_slice(route.upstream_path_and_query.as_bytes()))
        .map_err(|_| fail(ProxyError::Rejected(gatehouse_convention::Rejection::MalformedPath)))?;

    let limit = shared.limits.max_body_bytes;
    if let (Some(limit), Some(len)) = (limit, req.body().size_hint().exact())
        && len > limit
    {
        return Err(fail(ProxyError::BodyTooLarge));
    }

    let websocket = is_websocket_upgrade(req.headers());
    let client_upgrade = websocket.then(|| hyper::upgrade::on(&mut req));
    let (mut parts, incoming) = req.into_parts();
    // An absolute-form target routed the request (route_request made sure Host names the same
    // host): the upstream gets that authority as Host, as RFC 9112 §3.2.2 asks of a proxy.
    if let Some(authority) = parts.uri.authority()
        && let Ok(host) = HeaderValue::from_str(authority.as_str())
    {
        parts.headers.insert(header::HOST, host);
    }
    remove_hop_by_hop(&mut parts.headers, websocket);
    set_forwarded(&mut parts.headers, &conn.peer_ip, shared.forwarded.trusted_hops);
    if let Some(via) = &shared.via {
        append_via(&mut parts.headers, via);
    }
    parts.version = Version::HTTP_11;

    // The connection is made before the request is handed over: when it cannot be made,
    // nothing was sent and the same request (body included) goes to another endpoint.
    let (body, body_sent) = if incoming.is_end_stream() {
        (RequestBody::empty(), None)
    } else {
        let (body, sent) = RequestBody::new(incoming, limit, shared.timeouts.body_read);
        (body, Some(sent))
    };
    parts.uri = Uri::from(path);
    let attempt = Request::from_parts(parts, body);

    let exchange = async {
        log.upstream = Some(first);
        let conn = match shared.upstream.connection(first).await {
            Ok(conn) => conn,
            Err(e) => {
                let first_error = upstream_error(shared, &e);
                let Some(second) = backend.pick_other(first_index) else { return Err(first_error) };
                log.upstream = Some(second);
                shared.upstream.connection(second).await.map_err(|e| upstream_error(shared, &e))?
            }
        };
        shared.upstream.send(conn, attempt).await.map_err(|e| upstream_error(shared, &e))
    };
    // The request timeout runs from the end of the request body (at once for most requests,
    // which have none): a long upload is bounded by `body_read` between pieces instead.
    let request_timeout = shared.timeouts.request;
    let deadline = async move {
        if let Some(sent) = body_sent {
            let _ = sent.await;
        }
        tokio::time::sleep(request_timeout).await;
    };
    let mut response = tokio::select! {
        biased;
        exchanged = exchange => match exchanged {
            Ok(response) => response,
            Err(error) => return Err(fail(error)),
        },
        () = deadline => {
            shared.metrics.upstream_error(UpstreamErrorKind::Timeout);
            return Err(fail(ProxyError::UpstreamTimeout));
        }
    };
    let upgraded = response.status() == StatusCode::SWITCHING_PROTOCOLS && websocket;
    let upstream_upgrade = upgraded.then(|| hyper::upgrade::on(&mut response));
    let (mut parts, upstream_body) = response.into_parts();
    // The proxy speaks its own version to the client (RFC 9110 §6.2): an HTTP/1.0 upstream must
    // not turn the client's keep-alive connection into one connection per request.
    parts.version = Version::HTTP_11;
    remove_hop_by_hop(&mut parts.headers, upgraded);
    if let Some(via) = &shared.via {
        append_via(&mut parts.headers, via);
    }
    if let (Some(client_upgrade), Some(upstream_upgrade)) = (client_upgrade, upstream_upgrade) {
        let mut upstream_body = upstream_body;
        upstream_body.forget_connection();
        shared.spawn_tracked(tunnel(client_upgrade, upstream_upgrade));
        return Ok((Response::from_parts(parts, ResponseBody::Local(None)), Some(backend)));
    }
    Ok((Response::from_parts(parts, ResponseBody::Upstream(upstream_body)), Some(backend)))
}

/// Counts an upstream failure and says what the client gets for it.
fn upstream_error(shared: &Shared, e: &UpstreamError) -> ProxyError {
    let kind = match e {
        UpstreamError::Connect(io) if io.kind() == io::ErrorKind::TimedOut => UpstreamErrorKind::ConnectTimeout,
        UpstreamError::Connect(_) => UpstreamErrorKind::ConnectRefused,
        UpstreamError::Request(e) => {
            let mut io_kind = None;
            let mut source = e.source();
            while let Some(s) = source {
                if let Some(error) = client_fault(s) {
                    return error;
                }
                if let Some(io) = s.downcast_ref::<io::Error>() {
                    io_kind = Some(io.kind());
                }
                source = s.source();
            }
            match io_kind {
                Some(io::ErrorKind::TimedOut) => UpstreamErrorKind::Timeout,
                Some(io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe | io::ErrorKind::UnexpectedEof) => {
                    UpstreamErrorKind::Reset
                }
                _ => UpstreamErrorKind::Other,
            }
        }
    };
    shared.metrics.upstream_error(kind);
    match kind {
        UpstreamErrorKind::ConnectTimeout | UpstreamErrorKind::Timeout => ProxyError::UpstreamTimeout,
        _ => ProxyError::UpstreamUnavailable,
    }
}

/// Copies bytes both ways between an upgraded client connection and upstream connection.
async fn tunnel(client: hyper::upgrade::OnUpgrade, upstream: hyper::upgrade::OnUpgrade) {
    let (client, upstream) = match tokio::try_join!(client, upstream) {
        Ok(pair) => pair,
        Err(e) => {
            tracing::debug!(error = %e, "upgrade failed");
            return;
        }
    };
    let mut client = TokioIo::new(client);
    let mut upstream = TokioIo::new(upstream);
    if let Err(e) = tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
        tracing::debug!(error = %e, "upgraded connection ended with an error");
    }
}
