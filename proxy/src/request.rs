//! From a request head to a route: which host the request is for, then the convention.
//!
//! Pure, so that it can be tested row by row and fuzzed (`fuzz/`): the hot path calls
//! [`route_request`] and nothing else decides where a request goes.

use gatehouse_convention::{Edges, Rejection, Route, route};
use http::header::{self, HeaderMap};
use http::{Method, Uri};

/// Why a request head cannot be routed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeadRejection {
    /// The convention refused the host or path.
    Convention(Rejection),
    /// No `Host` header and no absolute-form target: nothing says which edge is meant.
    MissingHost,
    /// Several `Host` headers, or one that is not visible ASCII: a request that different
    /// hops could read differently is refused (RFC 9112 §3.2).
    InvalidHost,
    /// `CONNECT` asks for a tunnel; an edge proxy routes requests, it does not open tunnels.
    Connect,
}

/// Routes a request head. The host is the authority of an absolute-form target when there is
/// one (RFC 9112 §3.2.2: the `Host` header is then ignored), else the single `Host` header.
pub fn route_request<'e, 'r>(
    edges: &'e Edges,
    method: &Method,
    uri: &'r Uri,
    headers: &'r HeaderMap,
) -> Result<Route<'e, 'r>, HeadRejection> {
    if method == Method::CONNECT {
        return Err(HeadRejection::Connect);
    }
    let host = request_host(uri, headers)?;
    let path_and_query = uri.path_and_query().map_or("/", |p| p.as_str());
    route(edges, host, path_and_query).map_err(HeadRejection::Convention)
}

/// The host a request is for, without deciding whether any edge serves it.
pub fn request_host<'r>(uri: &'r Uri, headers: &'r HeaderMap) -> Result<&'r str, HeadRejection> {
    let mut values = headers.get_all(header::HOST).iter();
    let first = values.next();
    if values.next().is_some() {
        return Err(HeadRejection::InvalidHost);
    }
    if let Some(authority) = uri.authority() {
        return Ok(authority.as_str());
    }
    let value = first.ok_or(HeadRejection::MissingHost)?;
    let host = value.to_str().map_err(|_| HeadRejection::InvalidHost)?;
    if host.is_empty() || !host.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(HeadRejection::InvalidHost);
    }
    Ok(host)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;
    use gatehouse_convention::Edge;
    use http::HeaderValue;

    fn edges() -> Edges {
        Edges::new(vec![Edge::new("api.example.com", "service.api").unwrap()], None).unwrap()
    }

    fn head(uri: &str, hosts: &[&[u8]]) -> (Uri, HeaderMap) {
        let mut headers = HeaderMap::new();
        for host in hosts {
            headers.append(header::HOST, HeaderValue::from_bytes(host).unwrap());
        }
        (uri.parse().unwrap(), headers)
    }

    /// (method, target, Host headers, expected Service or rejection)
    type Row = (Method, &'static str, &'static [&'static [u8]], Result<&'static str, HeadRejection>);

    #[test]
    fn each_head_shape_routes_or_is_refused_as_expected() {
        let edges = edges();
        let rows: &[Row] = &[
            (Method::GET, "/foo/x", &[b"api.example.com"], Ok("service-api-foo")),
            (Method::GET, "/foo/x", &[b"API.example.com:443"], Ok("service-api-foo")),
            // absolute form: the target's authority wins over Host, both ways
            (Method::GET, "http://api.example.com/foo/x", &[b"evil.example.com"], Ok("service-api-foo")),
            (
                Method::GET,
                "http://evil.example.com/foo/x",
                &[b"api.example.com"],
                Err(HeadRejection::Convention(Rejection::UnknownHost)),
            ),
            (Method::GET, "/foo/x", &[], Err(HeadRejection::MissingHost)),
            (Method::GET, "/foo/x", &[b"api.example.com", b"api.example.com"], Err(HeadRejection::InvalidHost)),
            (Method::GET, "/foo/x", &[b"api.example.com", b"evil.example.com"], Err(HeadRejection::InvalidHost)),
            (Method::GET, "/foo/x", &[b""], Err(HeadRejection::InvalidHost)),
            (Method::GET, "/foo/x", &[b"api.example.com\xff"], Err(HeadRejection::InvalidHost)),
            (Method::GET, "/foo/x", &[b"api.example.com x"], Err(HeadRejection::InvalidHost)),
            (Method::CONNECT, "api.example.com:443", &[b"api.example.com"], Err(HeadRejection::Connect)),
            (Method::OPTIONS, "*", &[b"api.example.com"], Err(HeadRejection::Convention(Rejection::MalformedPath))),
        ];
        for (method, target, hosts, expected) in rows {
            let (uri, headers) = head(target, hosts);
            let got = route_request(&edges, method, &uri, &headers).map(|r| r.service_name.to_string());
            assert_eq!(
                got.as_deref().map_err(|e| *e),
                expected.as_ref().map(|s| *s).map_err(|e| *e),
                "{method} {target} {hosts:?}"
            );
        }
    }
}
