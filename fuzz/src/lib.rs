//! What the fuzz targets share: the edge tables they route against, and oracles written from
//! the convention's rules (README, DESIGN.md), not from its code, that every route must satisfy.
//!
//! A failed check panics with the input spelt out, which libFuzzer reports as a crash and saves
//! under `fuzz/artifacts/<target>/`.

pub mod hyper_peer;

use gatehouse_convention::{Edge, Edges, Rejection, Route};

/// The edges every input is routed against: (host as configured, prefix).
pub const EDGES: &[(&str, &str)] = &[
    ("api.example.com", "service.api"),
    // Looks like an extension of `service.api`, is not: `service-apis-` does not start with
    // `service-api-`.
    ("apis.example.com", "service.apis"),
    // Two spellings of one Service prefix (`svc-a-b-`) on two hosts: allowed, same Services.
    ("x.example.com", "svc.a-b"),
    ("y.example.com", "svc.a.b"),
    // Configured in mixed case with a trailing dot; matched case-insensitively.
    ("Admin.Example.com.", "service.admin"),
    // 57 characters of prefix: segments longer than 6 characters make names over 63.
    ("long.example.com", "a-rather-long-prefix.for-the-sixty-three-character.limit"),
    // The default edge in the table that has one.
    ("www.example.com", "web"),
];

/// The default edge's host in [`Table::with_default`].
pub const DEFAULT_HOST: &str = "www.example.com";

/// One edge table, with or without a default edge.
#[derive(Debug)]
pub struct Table {
    pub edges: Edges,
    /// The default edge's host, lower case.
    pub default: Option<&'static str>,
}

impl Table {
    fn build(default: Option<&'static str>) -> Self {
        let edges = EDGES
            .iter()
            .map(|(host, prefix)| Edge::new(host, prefix).unwrap_or_else(|e| panic!("fuzz edge {host}: {e}")))
            .collect();
        let edges = Edges::new(edges, default).unwrap_or_else(|e| panic!("fuzz edges: {e}"));
        Self { edges, default }
    }

    pub fn without_default() -> Self {
        Self::build(None)
    }

    pub fn with_default() -> Self {
        Self::build(Some(DEFAULT_HOST))
    }

    /// The configured edge that a host names, by the rules alone: the edge's host in any
    /// case, then any trailing dots, then nothing or a `:port`.
    pub fn named_edge(&self, host: &str) -> Option<&Edge> {
        self.edges.iter().find(|edge| host_names(host, edge.host()))
    }
}

/// Whether `host` (a `Host` header or an authority) names `edge_host`: `edge_host` in any
/// case, then dots, then nothing or `:` and a port. The port's spelling is not judged here.
pub fn host_names(host: &str, edge_host: &str) -> bool {
    let (host, edge_host) = (host.as_bytes(), edge_host.as_bytes());
    if host.len() < edge_host.len() || !host[..edge_host.len()].eq_ignore_ascii_case(edge_host) {
        return false;
    }
    let rest = &host[edge_host.len()..];
    let rest = &rest[rest.iter().take_while(|&&b| b == b'.').count()..];
    match rest.split_first() {
        None => true,
        Some((b':', port)) => !port.contains(&b':'),
        Some(_) => false,
    }
}

/// Whether a `Host` value (or an authority) has the shape an ALB's host rules read: a name of
/// non-empty labels with at most one trailing dot, or a bracketed IPv6 literal, then nothing or
/// `:` and a port of 1-5 digits up to 65535. Nothing else may route: `a.example.com:b.example.com`
/// or `a.example.com..` would be read as different hosts by different hops.
pub fn is_well_formed_host(host: &str) -> bool {
    let (name_ok, port) = if let Some(rest) = host.strip_prefix('[') {
        let Some((literal, after)) = rest.split_once(']') else { return false };
        let port = match after {
            "" => None,
            _ => match after.strip_prefix(':') {
                Some(port) => Some(port),
                None => return false,
            },
        };
        (!literal.is_empty() && literal.chars().all(|c| c.is_ascii_hexdigit() || c == ':' || c == '.'), port)
    } else {
        let (name, port) = match host.rsplit_once(':') {
            Some((name, port)) => (name, Some(port)),
            None => (host, None),
        };
        let name = name.strip_suffix('.').unwrap_or(name);
        let label_ok = |l: &str| !l.is_empty() && l.chars().all(|c| c.is_ascii_alphanumeric() || "-_~".contains(c));
        (!name.is_empty() && name.split('.').all(label_ok), port)
    };
    name_ok
        && port.is_none_or(|p| {
            (1..=5).contains(&p.len())
                && p.chars().all(|c| c.is_ascii_digit())
                && p.parse::<u32>().is_ok_and(|n| n <= 65535)
        })
}

/// The path part of an origin-form target and its query (from the first `?`, `?` included).
pub fn split_query(path_and_query: &str) -> (&str, &str) {
    path_and_query.split_at(path_and_query.find('?').unwrap_or(path_and_query.len()))
}

/// The first segment of a path: `/foo/bar` -> `foo`.
pub fn first_segment(path: &str) -> Option<&str> {
    path.split('/').nth(1)
}

/// `[a-z]([-a-z0-9]*[a-z0-9])?`, at most 63 characters: what Kubernetes accepts as a Service
/// name (RFC 1035 label).
pub fn is_dns1035_label(name: &str) -> bool {
    let b = name.as_bytes();
    let inner = |c: &u8| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-';
    !b.is_empty()
        && b.len() <= 63
        && b[0].is_ascii_lowercase()
        && (b[b.len() - 1].is_ascii_lowercase() || b[b.len() - 1].is_ascii_digit())
        && b.iter().all(inner)
}

/// How many layers of percent-encoding are looked through for dot segments.
pub const DECODE_DEPTH: usize = 3;

/// Whether a `.` or `..` segment (separated by `/` or `\`) appears in `path` as it is or after
/// percent-decoding it up to [`DECODE_DEPTH`] times. The decoding is lenient: a `%` that does
/// not start an escape stays as it is.
pub fn has_dot_segment_any_depth(path: &str) -> bool {
    let mut current = path.as_bytes().to_vec();
    for depth in 0..=DECODE_DEPTH {
        if current.split(|&b| b == b'/' || b == b'\\').any(|s| s == b"." || s == b"..") {
            return true;
        }
        if depth < DECODE_DEPTH {
            current = percent_decode_lenient(&current);
        }
    }
    false
}

fn percent_decode_lenient(input: &[u8]) -> Vec<u8> {
    let hex = |c: u8| (c as char).to_digit(16);
    let mut out = Vec::with_capacity(input.len());
    let mut i = 0;
    while i < input.len() {
        if input[i] == b'%'
            && let (Some(hi), Some(lo)) =
                (input.get(i + 1).and_then(|&c| hex(c)), input.get(i + 2).and_then(|&c| hex(c)))
        {
            out.push((hi * 16 + lo) as u8);
            i += 3;
            continue;
        }
        out.push(input[i]);
        i += 1;
    }
    out
}

/// Every check on one result of the convention for (`host`, `path_and_query`) routed against
/// `table`.
pub fn check_route(table: &Table, host: &str, path_and_query: &str, result: &Result<Route<'_, '_>, Rejection>) {
    let (path, query) = split_query(path_and_query);
    // Spelt out only when a check fails (assert! evaluates its message lazily).
    let what = || format!("host {host:?}, target {path_and_query:?}, default edge {:?}", table.default);
    if has_dot_segment_any_depth(path) {
        // Checked before the host: a hostile path is a 400 whatever the host.
        assert!(
            matches!(result, Err(r) if r.status_code() == 400),
            "a dot segment was not refused with 400: {}: {result:?}",
            what()
        );
    }
    let route = match result {
        Err(rejection) => {
            let status = rejection.status_code();
            assert!(status == 400 || status == 404, "status {status} for {rejection:?}: {}", what());
            if table.default.is_some() {
                assert_ne!(*rejection, Rejection::UnknownHost, "unknown host with a default edge: {}", what());
            }
            return;
        }
        Ok(route) => route,
    };

    // The edge: the one the host names, else the default edge, else no route at all.
    assert!(table.edges.iter().any(|e| std::ptr::eq(e, route.edge)), "an edge from elsewhere: {}", what());
    match table.named_edge(host) {
        Some(named) => {
            assert_eq!(route.edge.host(), named.host(), "the host names another edge: {}", what())
        }
        None => {
            assert_eq!(Some(route.edge.host()), table.default, "an unknown host routed, not to the default: {}", what())
        }
    }

    // The Service: the edge's prefix, then the first path segment; a valid Service name.
    let segment = first_segment(path);
    assert_eq!(Some(route.segment), segment, "segment is not the first path segment: {}", what());
    let service = route.service_name.as_str();
    let service_prefix = format!("{}-", route.edge.prefix().replace('.', "-"));
    assert!(service.starts_with(&service_prefix), "Service {service:?} outside the edge's prefix: {}", what());
    assert_eq!(
        service.strip_prefix(&service_prefix),
        Some(route.segment),
        "Service is not prefix + segment: {}",
        what()
    );
    assert!(is_dns1035_label(service), "Service {service:?} is not a DNS-1035 label of at most 63: {}", what());
    assert_eq!(
        route.edge.segment_for_service(service),
        Some(route.segment),
        "the provisioner's view differs: {}",
        what()
    );
    let logical = route.logical_service();
    assert_eq!(logical.strip_prefix(route.edge.prefix()), Some(&*format!(".{}", route.segment)), "{}", what());

    // The upstream's target: the rest of the path (at least `/`), the query byte for byte.
    let upstream = &*route.upstream_path_and_query;
    let (upstream_path, upstream_query) = split_query(upstream);
    assert!(upstream_path.starts_with('/'), "upstream path {upstream_path:?} does not start with '/': {}", what());
    assert_eq!(upstream_query, query, "query changed on the way: {}", what());
    let rest = &path[1 + route.segment.len()..];
    assert_eq!(upstream_path, if rest.is_empty() { "/" } else { rest }, "upstream path is not the rest: {}", what());
    assert!(!has_dot_segment_any_depth(upstream_path), "dot segment reaches the upstream: {}", what());
    assert!(
        path.bytes().all(|b| b.is_ascii_graphic()),
        "a path with a space, control or non-ASCII byte routed: {}",
        what()
    );
}

/// Checks the oracles themselves on known answers; the targets call it once at start-up, so
/// that a broken oracle fails the run instead of passing everything.
pub fn self_test() {
    assert!(host_names("API.example.com.:8443", "api.example.com"));
    assert!(!host_names("api.example.com.evil", "api.example.com"));
    assert!(!host_names("api.example.com:1:2", "api.example.com"));
    assert!(is_well_formed_host("api.example.com.:8443") && is_well_formed_host("[::1]:80"));
    assert!(!is_well_formed_host("a.example.com:b.example.com") && !is_well_formed_host("a.example.com.."));
    assert!(
        !is_well_formed_host("a.example.com:65536") && !is_well_formed_host("a..b") && !is_well_formed_host("[::1]x")
    );
    assert!(has_dot_segment_any_depth("/a/%25252e%25252E/b"));
    assert!(!has_dot_segment_any_depth("/a/%2525252e%2525252e/b"));
    assert!(has_dot_segment_any_depth("/a\\..\\b"));
    assert!(has_dot_segment_any_depth("/a/."));
    assert!(!has_dot_segment_any_depth("/a/.../b/.x"));
    assert!(is_dns1035_label("service-api-x1"));
    assert!(!is_dns1035_label("1service") && !is_dns1035_label("a-") && !is_dns1035_label(&"a".repeat(64)));
    assert_eq!(split_query("/a?b?c"), ("/a", "?b?c"));
    assert_eq!(first_segment("/foo/bar"), Some("foo"));
}

/// A route result reduced to what can be compared across tables: Service and upstream target,
/// or the rejection.
pub fn outcome(result: &Result<Route<'_, '_>, Rejection>) -> Result<(String, String), Rejection> {
    result.as_ref().map(|r| (r.service_name.to_string(), r.upstream_path_and_query.to_string())).map_err(|e| *e)
}
