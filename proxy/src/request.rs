//! From a request head to a route: which host the request is for, then the convention.
//!
//! Pure, so that it can be tested row by row and fuzzed (`fuzz/`): the hot path calls
//! [`route_request`] and nothing else decides where a request goes. It reads a request head
//! through [`HeadParts`], which the HTTP/1 codec fills from the bytes it parsed
//! ([`HeadParts::from_h1`]).

use gatehouse_convention::{Edges, Rejection, Route, route};

use crate::h1::request::{RequestHead, TargetForm};

/// Why a request head cannot be routed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeadRejection {
    /// The convention refused the host or path.
    Convention(Rejection),
    /// No `Host` header: nothing says which edge is meant, and HTTP/1.1 requires one even
    /// with an absolute-form target (RFC 9112 §3.2).
    MissingHost,
    /// Several `Host` headers, or one (or an absolute-form authority) that is not a plain
    /// `host[:port]`: a request that different hops could read differently is refused
    /// (RFC 9112 §3.2).
    InvalidHost,
    /// `CONNECT` asks for a tunnel; an edge proxy routes requests, it does not open tunnels.
    Connect,
    /// `TRACE` would echo the request, credentials included, back to whoever sent it (405, as
    /// nginx answers it).
    Trace,
    /// A method that is not upper-case letters, `-` or `_` (`get`): methods are case-sensitive,
    /// and an upstream that upper-cases it would act on a request the edge did not see (400,
    /// as nginx answers it).
    BadMethod,
    /// A transfer coding other than `chunked` (the parser has already refused one that does
    /// not end in `chunked`): the proxy would forward the coded content as if it were plain.
    UnsupportedTransferCoding,
    /// `chunked` more than once (RFC 9112 §6.1: a sender must not): the body's framing
    /// cannot be trusted.
    BadFraming,
}

/// The `Host` header lines of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostHeader<'a> {
    None,
    One(&'a [u8]),
    Several,
}

/// What routing reads of a request head.
#[derive(Debug, Clone, Copy)]
pub struct HeadParts<'a> {
    pub method: &'a str,
    pub form: TargetForm,
    /// The authority of an absolute-form (or authority-form) target.
    pub authority: Option<&'a str>,
    /// The origin-form path and query (`/` when an absolute-form target has none).
    pub path_and_query: &'a str,
    pub host: HostHeader<'a>,
    /// What the `Transfer-Encoding` lines say, by [`transfer_coding`].
    pub coding: Result<(), HeadRejection>,
}

impl<'a> HeadParts<'a> {
    /// The parts of a request head the HTTP/1 codec parsed from `buf`.
    pub fn from_h1(buf: &'a [u8], head: &RequestHead) -> Self {
        let mut host = HostHeader::None;
        let mut te_lines = head.headers.iter().filter(|h| h.name.get(buf).eq_ignore_ascii_case(b"transfer-encoding"));
        for h in &head.headers {
            if h.name.get(buf).eq_ignore_ascii_case(b"host") {
                host = match host {
                    HostHeader::None => HostHeader::One(h.value.get(buf)),
                    _ => HostHeader::Several,
                };
            }
        }
        let coding = transfer_coding(&mut te_lines.by_ref().map(|h| h.value.get(buf)));
        let path_and_query = match head.path_and_query(buf) {
            "" if head.form == TargetForm::Absolute => "/",
            path => path,
        };
        Self { method: head.method(buf), form: head.form, authority: head.authority(buf), path_and_query, host, coding }
    }
}

/// Routes a request head. The host is the authority of an absolute-form target when there is
/// one (RFC 9112 §3.2.2: the `Host` header is then ignored), else the single `Host` header.
pub fn route_request<'e, 'r>(edges: &'e Edges, head: &HeadParts<'r>) -> Result<Route<'e, 'r>, HeadRejection> {
    let host = check_head(head)?;
    route(edges, host, head.path_and_query).map_err(HeadRejection::Convention)
}

/// Everything about a request head that does not depend on the route: the method, the one
/// host, the transfer coding. Every request meets it, the readiness path's included; returns
/// the host the request is for.
pub fn check_head<'r>(head: &HeadParts<'r>) -> Result<&'r str, HeadRejection> {
    if head.method == "CONNECT" {
        return Err(HeadRejection::Connect);
    }
    if !head.method.bytes().all(|b| b.is_ascii_uppercase() || b == b'-' || b == b'_') {
        return Err(HeadRejection::BadMethod);
    }
    if head.method == "TRACE" {
        return Err(HeadRejection::Trace);
    }
    let host = request_host(head)?;
    head.coding?;
    Ok(host)
}

/// The host a request is for, without deciding whether any edge serves it.
///
/// There must be exactly one `Host` header, and it must be a host (RFC 9112 §3.2: 400 for
/// none on HTTP/1.1, several, or an invalid one), also when an absolute-form target says
/// which host is meant; that authority must be a host too (no userinfo, RFC 9110 §4.2.4).
pub fn request_host<'r>(head: &HeadParts<'r>) -> Result<&'r str, HeadRejection> {
    let header_host = match head.host {
        HostHeader::None => return Err(HeadRejection::MissingHost),
        HostHeader::Several => return Err(HeadRejection::InvalidHost),
        HostHeader::One(value) => std::str::from_utf8(value).map_err(|_| HeadRejection::InvalidHost)?,
    };
    if !is_host(header_host.as_bytes()) {
        return Err(HeadRejection::InvalidHost);
    }
    let Some(host) = head.authority else { return Ok(header_host) };
    // An absolute-form target and a Host that disagree: the ALB's host-based rules, the WAF
    // and the access log read `Host`, the router would read the target. No client has a
    // reason to send both differently, so the request is refused rather than routed by either.
    if !is_host(host.as_bytes()) || !host_name(host).eq_ignore_ascii_case(host_name(header_host)) {
        return Err(HeadRejection::InvalidHost);
    }
    Ok(host)
}

/// The name in a `host[:port]` value (already checked by [`is_host`]), without the port or
/// the trailing dot.
fn host_name(host: &str) -> &str {
    let name = match host.rfind([':', ']']) {
        Some(at) if host.as_bytes()[at] == b':' => &host[..at],
        _ => host,
    };
    name.strip_suffix('.').unwrap_or(name)
}

/// `host[:port]` as an ALB's host rules would read it, strictly: a name of non-empty labels
/// (letters, digits, `-`, `_`, `~`) with at most one trailing dot, an IPv4 address, or a
/// bracketed IPv6 literal; then nothing or `:` and 1-5 digits up to 65535. No userinfo (`@`),
/// path, percent-encoding, space or control byte, which an upstream building URLs from `Host`
/// could be fooled by; no second colon (`internal.example.com:api.example.com`), empty label
/// (`api..example.com`) or second trailing dot (`api.example.com..`), which different hops
/// could resolve to different names.
fn is_host(host: &[u8]) -> bool {
    let (name, port) = if host.first() == Some(&b'[') {
        let Some(end) = host.iter().position(|&b| b == b']') else { return false };
        let literal = &host[1..end];
        if literal.is_empty() || !literal.iter().all(|&b| b.is_ascii_hexdigit() || b == b':' || b == b'.') {
            return false;
        }
        match &host[end + 1..] {
            [] => return true,
            [b':', port @ ..] => (None, Some(port)),
            _ => return false,
        }
    } else {
        match host.iter().rposition(|&b| b == b':') {
            Some(at) => (Some(&host[..at]), Some(&host[at + 1..])),
            None => (Some(host), None),
        }
    };
    if let Some(port) = port
        && !(matches!(port.len(), 1..=5)
            && port.iter().all(u8::is_ascii_digit)
            && port.iter().fold(0u32, |n, &d| n * 10 + u32::from(d - b'0')) <= 65535)
    {
        return false;
    }
    match name {
        None => true,
        Some(name) => {
            let name = name.strip_suffix(b".").unwrap_or(name);
            !name.is_empty()
                && name.split(|&b| b == b'.').all(|label| {
                    !label.is_empty() && label.iter().all(|&b| b.is_ascii_alphanumeric() || b"-_~".contains(&b))
                })
        }
    }
}

/// `Transfer-Encoding`, when present, must be `chunked` and nothing else: the codec decodes the
/// chunked framing, and whatever coding came before it would reach the upstream as if the
/// content were plain (RFC 9112 §6.1: 501 for a coding not understood; `chunked` twice is a
/// framing error).
pub fn transfer_coding(lines: &mut dyn Iterator<Item = &[u8]>) -> Result<(), HeadRejection> {
    let mut chunked = 0;
    for value in lines {
        for coding in value.split(|&b| b == b',') {
            let coding = coding.trim_ascii();
            if coding.is_empty() {
                continue;
            }
            if !coding.eq_ignore_ascii_case(b"chunked") {
                return Err(HeadRejection::UnsupportedTransferCoding);
            }
            chunked += 1;
        }
    }
    if chunked > 1 {
        return Err(HeadRejection::BadFraming);
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;
    use gatehouse_convention::Edge;

    fn edges() -> Edges {
        Edges::new(vec![Edge::new("api.example.com", "service.api").unwrap()], None).unwrap()
    }

    /// The request head bytes for a method, a target and Host lines, and extra header lines.
    fn bytes(method: &str, target: &str, hosts: &[&[u8]], extra: &[&[u8]]) -> Vec<u8> {
        let mut out = format!("{method} {target} HTTP/1.1\r\n").into_bytes();
        for line in hosts.iter().map(|h| [b"Host: ".as_slice(), h].concat()).chain(extra.iter().map(|l| l.to_vec())) {
            out.extend_from_slice(&line);
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"\r\n");
        out
    }

    fn routed(edges: &Edges, buf: &[u8]) -> Result<String, HeadRejection> {
        let mut head = RequestHead::default();
        assert_eq!(crate::h1::request::parse(buf, 16 * 1024, &mut head), Ok(true), "{}", String::from_utf8_lossy(buf));
        route_request(edges, &HeadParts::from_h1(buf, &head)).map(|r| r.service_name.to_string())
    }

    /// (method, target, Host headers, expected Service or rejection)
    type Row = (&'static str, &'static str, &'static [&'static [u8]], Result<&'static str, HeadRejection>);

    #[test]
    fn each_head_shape_routes_or_is_refused_as_expected() {
        let edges = edges();
        let rows: &[Row] = &[
            ("GET", "/foo/x", &[b"api.example.com"], Ok("service-api-foo")),
            ("GET", "/foo/x", &[b"API.example.com:443"], Ok("service-api-foo")),
            // absolute form: routed by the target, which must name the same host as Host
            ("GET", "http://api.example.com/foo/x", &[b"api.example.com"], Ok("service-api-foo")),
            ("GET", "http://API.example.com:443/foo/x", &[b"api.example.com."], Ok("service-api-foo")),
            ("GET", "http://[::1]:80/foo/x", &[b"[::1]"], Err(HeadRejection::Convention(Rejection::UnknownHost))),
            ("GET", "http://api.example.com/foo/x", &[b"evil.example.com"], Err(HeadRejection::InvalidHost)),
            ("GET", "http://evil.example.com/foo/x", &[b"api.example.com"], Err(HeadRejection::InvalidHost)),
            ("GET", "/foo/x", &[], Err(HeadRejection::MissingHost)),
            ("GET", "/foo/x", &[b"api.example.com", b"api.example.com"], Err(HeadRejection::InvalidHost)),
            ("GET", "/foo/x", &[b"api.example.com", b"evil.example.com"], Err(HeadRejection::InvalidHost)),
            ("GET", "/foo/x", &[b""], Err(HeadRejection::InvalidHost)),
            ("GET", "/foo/x", &[b"api.example.com\xff"], Err(HeadRejection::InvalidHost)),
            ("GET", "/foo/x", &[b"api.example.com x"], Err(HeadRejection::InvalidHost)),
            ("GET", "/foo/x", &[b"evil.example.com@api.example.com"], Err(HeadRejection::InvalidHost)),
            ("GET", "/foo/x", &[b"api.example.com/../x"], Err(HeadRejection::InvalidHost)),
            ("GET", "/foo/x", &[b"api.example.com\\x"], Err(HeadRejection::InvalidHost)),
            ("GET", "/foo/x", &[b"api%2eexample.com"], Err(HeadRejection::InvalidHost)),
            ("GET", "/foo/x", &[b"[::1]:8080"], Err(HeadRejection::Convention(Rejection::UnknownHost))),
            // The name before the last `:` is not what routes: a port is digits, or nothing.
            ("GET", "/foo/x", &[b"internal.example.com:api.example.com"], Err(HeadRejection::InvalidHost)),
            ("GET", "/foo/x", &[b"api.example.com:http"], Err(HeadRejection::InvalidHost)),
            ("GET", "/foo/x", &[b"api.example.com:"], Err(HeadRejection::InvalidHost)),
            ("GET", "/foo/x", &[b"api.example.com:65536"], Err(HeadRejection::InvalidHost)),
            ("GET", "/foo/x", &[b"api.example.com:123456"], Err(HeadRejection::InvalidHost)),
            ("GET", "/foo/x", &[b"api.example.com:80:80"], Err(HeadRejection::InvalidHost)),
            ("GET", "/foo/x", &[b"api.example.com:65535"], Ok("service-api-foo")),
            ("GET", "/foo/x", &[b"api.example.com."], Ok("service-api-foo")),
            ("GET", "/foo/x", &[b"api.example.com.:443"], Ok("service-api-foo")),
            ("GET", "/foo/x", &[b"api.example.com.."], Err(HeadRejection::InvalidHost)),
            ("GET", "/foo/x", &[b"api..example.com"], Err(HeadRejection::InvalidHost)),
            ("GET", "/foo/x", &[b".api.example.com"], Err(HeadRejection::InvalidHost)),
            ("GET", "/foo/x", &[b"[::1"], Err(HeadRejection::InvalidHost)),
            ("GET", "/foo/x", &[b"[::1]x"], Err(HeadRejection::InvalidHost)),
            ("GET", "/foo/x", &[b"[]"], Err(HeadRejection::InvalidHost)),
            // absolute form: Host is still required and checked; the authority has no userinfo
            ("GET", "http://api.example.com/foo/x", &[], Err(HeadRejection::MissingHost)),
            ("GET", "http://api.example.com/foo/x", &[b"a b"], Err(HeadRejection::InvalidHost)),
            ("GET", "http://evil@api.example.com/foo/x", &[b"api.example.com"], Err(HeadRejection::InvalidHost)),
            ("CONNECT", "api.example.com:443", &[b"api.example.com"], Err(HeadRejection::Connect)),
            ("TRACE", "/foo/x", &[b"api.example.com"], Err(HeadRejection::Trace)),
            ("get", "/foo/x", &[b"api.example.com"], Err(HeadRejection::BadMethod)),
            ("PROPFIND", "/foo/x", &[b"api.example.com"], Ok("service-api-foo")),
            ("M-SEARCH", "/foo/x", &[b"api.example.com"], Ok("service-api-foo")),
            ("OPTIONS", "*", &[b"api.example.com"], Err(HeadRejection::Convention(Rejection::MalformedPath))),
        ];
        for (method, target, hosts, expected) in rows {
            let got = routed(&edges, &bytes(method, target, hosts, &[]));
            assert_eq!(
                got.as_deref().map_err(|e| *e),
                expected.as_ref().map(|s| *s).map_err(|e| *e),
                "{method} {target} {hosts:?}"
            );
        }
    }

    #[test]
    fn transfer_coding_other_than_one_chunked_is_refused() {
        let edges = edges();
        // (Transfer-Encoding lines, expected)
        type CodingRow = (&'static [&'static [u8]], Result<(), HeadRejection>);
        let rows: &[CodingRow] = &[
            (&[], Ok(())),
            (&[b"chunked"], Ok(())),
            (&[b"CHUNKED"], Ok(())),
            (&[b" chunked "], Ok(())),
            (&[b"gzip, chunked"], Err(HeadRejection::UnsupportedTransferCoding)),
            (&[b"identity, chunked"], Err(HeadRejection::UnsupportedTransferCoding)),
            (&[b"gzip", b"chunked"], Err(HeadRejection::UnsupportedTransferCoding)),
            (&[b"chunked, chunked"], Err(HeadRejection::BadFraming)),
            (&[b"chunked", b"chunked"], Err(HeadRejection::BadFraming)),
        ];
        for (codings, expected) in rows {
            let lines: Vec<Vec<u8>> = codings.iter().map(|c| [b"Transfer-Encoding: ".as_slice(), c].concat()).collect();
            let lines: Vec<&[u8]> = lines.iter().map(Vec::as_slice).collect();
            let got = routed(&edges, &bytes("POST", "/foo/x", &[b"api.example.com"], &lines)).map(|_| ());
            assert_eq!(got, *expected, "{codings:?}");
        }
    }
}
