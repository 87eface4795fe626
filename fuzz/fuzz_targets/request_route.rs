//! From raw bytes to a route, the way the proxy does it: the bytes are parsed as an HTTP/1
//! request head as hyper 1's server parses one (httparse, the same limits, the same checks),
//! then `gatehouse_proxy::request::route_request` picks the route, as on the hot path.
//!
//! Checked, for an edge table without and one with a default edge:
//! - the route is the convention's for the resolved host (the absolute-form target's
//!   authority, else the one `Host` header) and the path, and passes every convention check;
//! - an absolute-form target whose host (as `http::Uri` reads it) no edge names reaches only
//!   the default edge, and nothing without one; several `Host` headers never route, nor does
//!   `CONNECT`, `TRACE`, a method that is not upper case, nor an origin-form target without a
//!   `Host`; what routes has a `Host` (and authority) of the shape an ALB's host rules read.
//!
//! Refusing a head is always allowed here (which heads the proxy refuses beyond the
//! convention, e.g. a `Host` that is not a plain host, is `route_request`'s own table test):
//! only what routes is held to the rules.
#![no_main]

use std::sync::LazyLock;

use bytes::Bytes;
use gatehouse_convention::route;
use gatehouse_fuzz::{Table, check_route, host_names, is_well_formed_host, outcome, self_test};
use gatehouse_proxy::request::{HeadRejection, route_request};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Uri};
use libfuzzer_sys::fuzz_target;

/// hyper 1's limits (`proto/h1/role.rs`: `DEFAULT_MAX_HEADERS`, `MAX_URI_LEN`) and the proxy's
/// default `limits.max_header_bytes`, which it gives hyper as `max_header_size`.
const MAX_HEADERS: usize = 100;
const MAX_URI_LEN: usize = u16::MAX as usize - 1;
const MAX_HEADER_BYTES: usize = 16 * 1024;

static TABLES: LazyLock<[Table; 2]> = LazyLock::new(|| [Table::without_default(), Table::with_default()]);

#[derive(Debug)]
struct Head {
    method: Method,
    uri: Uri,
    headers: HeaderMap,
}

/// A request head as hyper 1's server builds it (`Server::parse`), or `None` where hyper
/// answers by itself (400, 414, 431) or waits for more bytes.
fn parse_like_hyper(data: &[u8]) -> Option<Head> {
    let mut parsed_headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut parsed_headers);
    let len = match httparse::ParserConfig::default().parse_request(&mut req, data) {
        Ok(httparse::Status::Complete(len)) => len,
        _ => return None,
    };
    if len > MAX_HEADER_BYTES {
        return None;
    }
    let target = req.path?;
    if target.len() > MAX_URI_LEN {
        return None;
    }
    let method = Method::from_bytes(req.method?.as_bytes()).ok()?;
    let is_http_11 = req.version? == 1;
    let uri = Uri::from_maybe_shared(Bytes::copy_from_slice(target.as_bytes())).ok()?;

    // hyper's framing checks (RFC 9112 §6.3), and what they leave in the map: with
    // Transfer-Encoding, no Content-Length; of several equal Content-Lengths, the first.
    let mut headers = HeaderMap::with_capacity(req.headers.len());
    let (mut content_length, mut is_te, mut is_te_chunked) = (None, false, false);
    for h in req.headers.iter() {
        // hyper panics (debug) or answers 400 (release) where httparse and http disagree.
        let name = HeaderName::from_bytes(h.name.as_bytes()).ok()?;
        // hyper takes the value unchecked; checked here, and skipped where http would refuse it.
        let value = HeaderValue::from_bytes(h.value).ok()?;
        if name == header::TRANSFER_ENCODING {
            if !is_http_11 {
                return None;
            }
            is_te = true;
            if content_length.take().is_some() {
                headers.remove(header::CONTENT_LENGTH);
            }
            is_te_chunked = value
                .to_str()
                .ok()
                .and_then(|s| s.rsplit(',').next())
                .is_some_and(|last| last.trim().eq_ignore_ascii_case("chunked"));
        } else if name == header::CONTENT_LENGTH {
            if is_te {
                continue;
            }
            let len = digits(value.as_bytes()).filter(|&len| len <= u64::MAX - 2)?;
            match content_length {
                Some(prev) if prev != len => return None,
                Some(_) => continue,
                None => content_length = Some(len),
            }
        }
        headers.append(name, value);
    }
    if is_te && !is_te_chunked {
        return None;
    }
    Some(Head { method, uri, headers })
}

/// hyper's `from_digits`: a non-empty run of ASCII digits that fits a u64 (no sign, no spaces).
fn digits(bytes: &[u8]) -> Option<u64> {
    if bytes.is_empty() {
        return None;
    }
    bytes.iter().try_fold(0u64, |n, &b| {
        if b.is_ascii_digit() { n.checked_mul(10)?.checked_add(u64::from(b - b'0')) } else { None }
    })
}

fn check(table: &Table, head: &Head) {
    let result = route_request(&table.edges, &head.method, &head.uri, &head.headers);
    let what = || format!("{head:?}, default edge {:?}", table.default);
    // Refusing a head is always safe: only what routes is held to the rules.
    let hosts = head.headers.get_all(header::HOST).iter().count();
    assert!(hosts <= 1 || result.is_err(), "several Host headers routed: {}", what());
    assert!(head.method != Method::CONNECT || result.is_err(), "CONNECT routed: {}", what());
    assert!(hosts == 1 || head.uri.authority().is_some() || result.is_err(), "no host at all, routed: {}", what());
    if result.is_ok() {
        let method = head.method.as_str();
        assert!(
            method.bytes().all(|b| b.is_ascii_uppercase() || b == b'-' || b == b'_'),
            "method {method:?} routed: {}",
            what()
        );
        assert_ne!(head.method, Method::TRACE, "TRACE routed: {}", what());
        let header_host = head.headers.get(header::HOST).and_then(|v| v.to_str().ok()).unwrap_or("");
        assert!(is_well_formed_host(header_host), "Host {header_host:?} routed: {}", what());
        if let Some(authority) = head.uri.authority() {
            assert!(is_well_formed_host(authority.as_str()), "authority {authority} routed: {}", what());
        }
    }

    // The host the request is for: the absolute-form target's authority (RFC 9112 §3.2.2),
    // else the Host header; the route must be the convention's for it and the path.
    let host = match (head.uri.authority(), head.headers.get(header::HOST)) {
        (Some(authority), _) => authority.as_str(),
        (None, Some(value)) => match std::str::from_utf8(value.as_bytes()) {
            Ok(host) => host,
            Err(_) => {
                assert!(result.is_err(), "a Host header that is not text routed: {}", what());
                return;
            }
        },
        (None, None) => return,
    };
    let path_and_query = head.uri.path_and_query().map_or("/", |p| p.as_str());
    let by_convention = route(&table.edges, host, path_and_query);
    match (&result, &by_convention) {
        (Ok(r), Ok(_)) => assert_eq!(outcome(&Ok(r.clone())), outcome(&by_convention), "{}", what()),
        (Ok(r), Err(rejection)) => {
            panic!("routed to {} where the convention says {rejection:?}: {}", r.service_name, what())
        }
        (Err(HeadRejection::Convention(rejection)), expected) => {
            assert_eq!(Err(*rejection), outcome(expected), "not the convention's rejection: {}", what())
        }
        (Err(_), _) => {}
    }
    if let Ok(r) = &result {
        check_route(table, host, path_and_query, &Ok(r.clone()));
    }

    // An absolute-form target is for the host that `http::Uri` reads in it; only an edge that
    // names that host, or the default edge, may take it.
    if let (Ok(r), Some(uri_host)) = (&result, head.uri.host()) {
        let edge = r.edge.host();
        let named = host_names(uri_host, edge);
        let known = table.named_edge(uri_host).is_some();
        assert!(
            named || (!known && table.default == Some(edge)),
            "absolute-form target for {uri_host:?} routed to the edge {edge:?}: {}",
            what()
        );
    }
}

fuzz_target!(
    init: {
        self_test();
        LazyLock::force(&TABLES);
    },
    |data: &[u8]| {
        let Some(head) = parse_like_hyper(data) else { return };
        for table in TABLES.iter() {
            check(table, &head);
        }
    }
);
