//! From raw bytes to a route, the way the proxy does it: the bytes are parsed by the proxy's
//! own HTTP/1 codec (`gatehouse_proxy::h1::request::parse`, with the proxy's default head
//! limit), then `gatehouse_proxy::request::route_request` picks the route, as on the hot path.
//! (That the codec reads heads as hyper does is the `h1_request` target's job.)
//!
//! Checked, for an edge table without and one with a default edge:
//! - the route is the convention's for the resolved host (the absolute-form target's
//!   authority, else the one `Host` header) and the path, and passes every convention check;
//! - an absolute-form target whose host no edge names reaches only the default edge, and
//!   nothing without one; several `Host` headers never route, nor does `CONNECT`, `TRACE`, a
//!   method that is not upper case, nor an origin-form target without a `Host`; what routes has
//!   a `Host` (and authority) of the shape an ALB's host rules read.
//!
//! Refusing a head is always allowed here (which heads the proxy refuses beyond the
//! convention, e.g. a `Host` that is not a plain host, is `route_request`'s own table test):
//! only what routes is held to the rules.
#![no_main]

use std::sync::LazyLock;

use gatehouse_convention::route;
use gatehouse_fuzz::{Table, check_route, host_names, is_well_formed_host, outcome, self_test};
use gatehouse_proxy::h1::request::{RequestHead, TargetForm, parse};
use gatehouse_proxy::request::{HeadParts, HeadRejection, HostHeader, route_request};
use libfuzzer_sys::fuzz_target;

/// The proxy's default `limits.max_header_bytes`.
const MAX_HEADER_BYTES: usize = 16 * 1024;

static TABLES: LazyLock<[Table; 2]> = LazyLock::new(|| [Table::without_default(), Table::with_default()]);

fn check(table: &Table, buf: &[u8], head: &RequestHead) {
    let parts = HeadParts::from_h1(buf, head);
    let result = route_request(&table.edges, &parts);
    let what = || format!("{:?}, default edge {:?}", String::from_utf8_lossy(&buf[..head.len]), table.default);
    // Refusing a head is always safe: only what routes is held to the rules.
    let hosts = head.headers.iter().filter(|h| h.name.get(buf).eq_ignore_ascii_case(b"host")).count();
    assert!(hosts <= 1 || result.is_err(), "several Host headers routed: {}", what());
    assert!(parts.method != "CONNECT" || result.is_err(), "CONNECT routed: {}", what());
    assert!(hosts == 1 || parts.authority.is_some() || result.is_err(), "no host at all, routed: {}", what());
    if result.is_ok() {
        let method = parts.method;
        assert!(
            method.bytes().all(|b| b.is_ascii_uppercase() || b == b'-' || b == b'_'),
            "method {method:?} routed: {}",
            what()
        );
        assert_ne!(method, "TRACE", "TRACE routed: {}", what());
        let header_host = match parts.host {
            HostHeader::One(value) => std::str::from_utf8(value).unwrap_or(""),
            _ => "",
        };
        assert!(is_well_formed_host(header_host), "Host {header_host:?} routed: {}", what());
        if let Some(authority) = parts.authority {
            assert!(is_well_formed_host(authority), "authority {authority} routed: {}", what());
        }
    }

    // The host the request is for: the absolute-form target's authority (RFC 9112 §3.2.2),
    // else the Host header; the route must be the convention's for it and the path.
    let host = match (parts.authority, parts.host) {
        (Some(authority), _) => authority,
        (None, HostHeader::One(value)) => match std::str::from_utf8(value) {
            Ok(host) => host,
            Err(_) => {
                assert!(result.is_err(), "a Host header that is not text routed: {}", what());
                return;
            }
        },
        (None, _) => return,
    };
    let path_and_query = parts.path_and_query;
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

    // An absolute-form target is for the host it names; only an edge that names that host, or
    // the default edge, may take it.
    if let (Ok(r), TargetForm::Absolute, Some(authority)) = (&result, head.form, parts.authority) {
        let uri_host = authority_host(authority);
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

/// The host of an authority (`http::Uri::host` reads it so): without userinfo and port.
fn authority_host(authority: &str) -> &str {
    let after_userinfo = authority.rsplit_once('@').map_or(authority, |(_, rest)| rest);
    match after_userinfo.rfind([':', ']']) {
        Some(at) if after_userinfo.as_bytes()[at] == b':' => &after_userinfo[..at],
        _ => after_userinfo,
    }
}

fuzz_target!(
    init: {
        self_test();
        LazyLock::force(&TABLES);
    },
    |data: &[u8]| {
        let mut head = RequestHead::default();
        if parse(data, MAX_HEADER_BYTES, &mut head) != Ok(true) {
            return;
        }
        for table in TABLES.iter() {
            check(table, data, &head);
        }
    }
);
