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
use http::{HeaderMap, Method, Request, Response, StatusCode, Uri, Version};
use http_body::Body as _;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;

use crate::Shared;
use crate::body::{BodyRules, BodyStart, ExchangeEnd, Outcome, RequestBody, ResponseBody, client_fault, start_body};
use crate::client_idle::Activity;
use crate::error::{ProxyError, error_response};
use crate::headers::{ClientFacts, X_REQUEST_ID, append_via, is_websocket_upgrade, remove_hop_by_hop, set_forwarded};
use crate::metrics::UpstreamErrorKind;
use crate::request::{check_head, request_host, route_request};
use crate::table::Backend;
use crate::upstream::UpstreamError;

/// What is known about the client connection, computed once per connection.
#[derive(Debug)]
pub struct ConnInfo {
    pub peer: SocketAddr,
    pub facts: ClientFacts,
    /// Read and write activity on the connection (its write-stall flag tells the access log
    /// why a response ended early).
    pub(crate) activity: Arc<Activity>,
}

impl ConnInfo {
    pub(crate) fn new(peer: SocketAddr, local: SocketAddr, activity: Arc<Activity>) -> Self {
        let header = |text: String| HeaderValue::from_str(&text).expect("an address or port is a valid header value");
        let facts =
            ClientFacts { peer_ip: header(peer.ip().to_string()), local_port: header(local.port().to_string()) };
        Self { peer, facts, activity }
    }
}

/// Serves one request. Never fails: every error is a response, made by `error_response`.
pub async fn handle(
    shared: Arc<Shared>,
    conn: Arc<ConnInfo>,
    req: Request<Incoming>,
) -> Result<Response<ResponseBody>, std::convert::Infallible> {
    if req.uri().path() == READY_PATH {
        return Ok(readiness(&shared, &req));
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
    let status = response.status().as_u16();
    shared.metrics.record(backend.as_deref(), status, start.elapsed());
    shared.metrics.in_flight.dec();
    if shared.access_log {
        log.status = status;
        log.service = backend.map(|b| b.service_name.clone());
        log.client = Some(conn.clone());
        log.start = Some(start);
        response.body_mut().on_end(Box::new(log));
    }
    Ok(response)
}

/// The readiness path: the same head checks as every request, then 200 or 503.
fn readiness(shared: &Shared, req: &Request<Incoming>) -> Response<ResponseBody> {
    if let Err(rejection) = check_head(req.method(), req.uri(), req.headers()) {
        return error_response(rejection.into());
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return error_response(ProxyError::ReadinessMethod);
    }
    let (status, body): (StatusCode, &'static [u8]) = if shared.is_ready() {
        (StatusCode::OK, b"ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, b"not ready\n")
    };
    let body = if req.method() == Method::HEAD { ResponseBody::empty() } else { ResponseBody::local(body) };
    let mut response = Response::new(body);
    *response.status_mut() = status;
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    response
}

/// Fields for the access log line, filled in as the request progresses and written when the
/// response body has ended (so that its outcome, size and duration are the real ones).
#[derive(Debug, Default)]
struct AccessLog {
    request_id: Option<HeaderValue>,
    method: Method,
    host: Option<String>,
    path: Option<String>,
    edge: Option<String>,
    upstream: Option<SocketAddr>,
    error: Option<&'static str>,
    status: u16,
    service: Option<Arc<str>>,
    client: Option<Arc<ConnInfo>>,
    start: Option<Instant>,
}

impl ExchangeEnd for AccessLog {
    fn ended(self: Box<Self>, outcome: Outcome, body_bytes: u64) {
        let client = self.client.as_deref();
        let outcome = match outcome {
            Outcome::ClientGone if client.is_some_and(|c| c.activity.write_timed_out()) => "client_write_timeout",
            other => other.as_str(),
        };
        tracing::info!(
            target: "gatehouse::access",
            request_id = self.request_id.as_ref().and_then(|v| v.to_str().ok()).unwrap_or(""),
            client = %client.map(|c| c.peer.to_string()).unwrap_or_default(),
            method = %self.method,
            host = self.host.as_deref().unwrap_or(""),
            path = self.path.as_deref().unwrap_or(""),
            edge = self.edge.as_deref().unwrap_or(""),
            service = self.service.as_deref().unwrap_or(""),
            upstream = self.upstream.map(|a| a.to_string()).unwrap_or_default(),
            status = self.status,
            outcome,
            response_body_bytes = body_bytes,
            duration_ms = self.start.map_or(0.0, |s| s.elapsed().as_secs_f64() * 1e3),
            error = self.error.unwrap_or(""),
        );
    }
}

type Failure = (ProxyError, Option<Arc<Backend>>);

async fn forward(
    shared: &Shared,
    conn: &ConnInfo,
    mut req: Request<Incoming>,
    log: &mut AccessLog,
) -> Result<(Response<ResponseBody>, Option<Arc<Backend>>), Failure> {
    // The request id is `X-Request-Id`, which no `Connection` token can remove: it is settled
    // first, so that every answer, the proxy's own included, carries it.
    log.request_id = Some(shared.request_ids.ensure(req.headers_mut()));
    let table = shared.table.load();
    if shared.access_log {
        log.method = req.method().clone();
        log.host = request_host(req.uri(), req.headers()).ok().map(str::to_owned);
        log.path = req.uri().path_and_query().map(|p| p.as_str().to_owned());
    }
    // Routing reads the head as the client sent it (its Host, its Transfer-Encoding).
    let route =
        route_request(&table.edges, req.method(), req.uri(), req.headers()).map_err(|r| (ProxyError::from(r), None))?;
    if shared.access_log {
        log.edge = Some(route.edge.host().to_owned());
    }
    let backend = table.services.get(route.service_name.as_str()).cloned().ok_or((ProxyError::UnknownService, None))?;
    let fail = |e: ProxyError| (e, Some(backend.clone()));
    if backend.endpoints.is_empty() {
        return Err(fail(ProxyError::NoReadyEndpoint));
    }
    let path = PathAndQuery::from_maybe_shared(Bytes::copy_from_slice(route.upstream_path_and_query.as_bytes()))
        .map_err(|_| fail(ProxyError::Rejected(gatehouse_convention::Rejection::MalformedPath)))?;
    // Then hop-by-hop removal, before the proxy writes any header of its own, so that nothing
    // the client's `Connection` names can take one of them away.
    let websocket = is_websocket_upgrade(req.headers());
    remove_hop_by_hop(req.headers_mut(), websocket, Some(shared.headers.underscores));

    let limit = shared.limits.max_body_bytes;
    if let (Some(limit), Some(len)) = (limit, req.body().size_hint().exact())
        && len > limit
    {
        return Err(fail(ProxyError::BodyTooLarge));
    }

    let client_upgrade = websocket.then(|| hyper::upgrade::on(&mut req));
    let (mut parts, incoming) = req.into_parts();
    // An absolute-form target routed the request (route_request made sure Host names the same
    // host): the upstream gets that authority as Host, as RFC 9112 §3.2.2 asks of a proxy.
    if let Some(authority) = parts.uri.authority()
        && let Ok(host) = HeaderValue::from_str(authority.as_str())
    {
        parts.headers.insert(header::HOST, host);
    }
    set_forwarded(&mut parts.headers, &conn.facts, &shared.forwarded).map_err(|_| fail(ProxyError::BadForwardedFor))?;
    if let Some(via) = &shared.via {
        append_via(&mut parts.headers, via);
    }
    parts.version = Version::HTTP_11;
    parts.uri = Uri::from(path);

    // A small body is read completely before any upstream is involved (a slow client holds no
    // upstream connection, a malformed body reaches none); a larger one streams after that.
    let rules = BodyRules { limit, gap: shared.timeouts.body_read, min_rate: shared.limits.min_body_rate };
    let start = start_body(incoming, rules, shared.limits.body_buffer_bytes).await.map_err(|f| fail(f.into()))?;
    if let BodyStart::Complete(_) = &start {
        // The upstream gets the length of what was read (a chunked body becomes a sized one).
        parts.headers.remove(header::CONTENT_LENGTH);
    }
    let streams_unsized =
        matches!(&start, BodyStart::Partial { .. }) && !parts.headers.contains_key(header::CONTENT_LENGTH);
    let (body, body_sent) = RequestBody::new(start);
    let attempt = Request::from_parts(parts, body);

    let (first_index, first) = backend.pick().ok_or_else(|| fail(ProxyError::NoReadyEndpoint))?;
    if streams_unsized && shared.upstream.speaks_http10(first) {
        return Err(fail(ProxyError::LengthRequired));
    }
    // The connection is made before the request is handed over: when it cannot be made,
    // nothing was sent and the same request (body included) goes to another endpoint.
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
    // whose body was read before connecting): a long upload is bounded by the body timers.
    let request_timeout = shared.timeouts.request;
    let deadline = async move {
        let _ = body_sent.await;
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
    // A 101 is relayed only as the answer to the WebSocket handshake the client asked for;
    // anything else would turn the client's connection into a tunnel nobody routed.
    let switching = response.status() == StatusCode::SWITCHING_PROTOCOLS;
    if switching && !(websocket && is_websocket_upgrade(response.headers())) {
        response.body_mut().forget_connection();
        shared.metrics.upstream_error(UpstreamErrorKind::Protocol);
        return Err(fail(ProxyError::UpstreamProtocol));
    }
    if !response_framing_is_relayable(response.headers()) {
        response.body_mut().forget_connection();
        shared.metrics.upstream_error(UpstreamErrorKind::Protocol);
        return Err(fail(ProxyError::UpstreamProtocol));
    }
    let upstream_upgrade = switching.then(|| hyper::upgrade::on(&mut response));
    let (mut parts, upstream_body) = response.into_parts();
    // The proxy speaks its own version to the client (RFC 9110 §6.2): an HTTP/1.0 upstream must
    // not turn the client's keep-alive connection into one connection per request.
    parts.version = Version::HTTP_11;
    if parts.headers.contains_key(header::TRANSFER_ENCODING) {
        // RFC 9112 §6.3: Transfer-Encoding framed this body; a Content-Length next to it is
        // wrong and must not reach the client, which would stop reading there.
        parts.headers.remove(header::CONTENT_LENGTH);
    }
    remove_hop_by_hop(&mut parts.headers, switching, None);
    if let Some(via) = &shared.via {
        append_via(&mut parts.headers, via);
    }
    if let (Some(client_upgrade), Some(upstream_upgrade)) = (client_upgrade, upstream_upgrade) {
        let mut upstream_body = upstream_body;
        upstream_body.forget_connection();
        shared.spawn_tracked(tunnel(client_upgrade, upstream_upgrade));
        return Ok((Response::from_parts(parts, ResponseBody::empty()), Some(backend)));
    }
    Ok((Response::from_parts(parts, ResponseBody::upstream(upstream_body)), Some(backend)))
}

/// A response whose `Transfer-Encoding` is anything but a final `chunked` is read until the
/// connection closes (RFC 9112 §6.3), still encoded: relaying it as plain content would hand
/// the client bytes it cannot decode.
fn response_framing_is_relayable(headers: &HeaderMap) -> bool {
    let mut codings = headers
        .get_all(header::TRANSFER_ENCODING)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b','))
        .map(<[u8]>::trim_ascii)
        .filter(|c| !c.is_empty());
    match codings.next() {
        None => true,
        Some(first) => first.eq_ignore_ascii_case(b"chunked") && codings.next().is_none(),
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_final_chunked_coding_is_relayed() {
        let relayable = |codings: &[&'static str]| {
            let mut h = HeaderMap::new();
            for c in codings {
                h.append(header::TRANSFER_ENCODING, HeaderValue::from_static(c));
            }
            response_framing_is_relayable(&h)
        };
        assert!(relayable(&[]));
        assert!(relayable(&["chunked"]));
        assert!(relayable(&["Chunked "]));
        assert!(!relayable(&["gzip"]));
        assert!(!relayable(&["gzip, chunked"]));
        assert!(!relayable(&["chunked", "chunked"]));
    }
}
