//! Table-driven tests: one row per rule of the convention and per hostile shape.

use super::*;

fn edges() -> Edges {
    Edges::new(
        vec![
            Edge::new("api.example.com", "service.api").expect("valid edge"),
            Edge::new("Admin.Example.com", "service.admin").expect("valid edge"),
        ],
        None,
    )
    .expect("valid edges")
}

/// (host, request target, expected service name, expected upstream path)
const ROUTED: &[(&str, &str, &str, &str)] = &[
    // the first segment picks the service and is removed; the query is kept
    ("api.example.com", "/foo/something?x=1", "service-api-foo", "/something?x=1"),
    ("api.example.com", "/foo", "service-api-foo", "/"),
    ("api.example.com", "/foo/", "service-api-foo", "/"),
    ("api.example.com", "/foo?x=1&y=2", "service-api-foo", "/?x=1&y=2"),
    ("api.example.com", "/foo/?x=1", "service-api-foo", "/?x=1"),
    ("api.example.com", "/foo/a/b/c", "service-api-foo", "/a/b/c"),
    ("api.example.com", "/foo//double", "service-api-foo", "//double"),
    ("api.example.com", "/foo/a?q=/../bar", "service-api-foo", "/a?q=/../bar"),
    ("api.example.com", "/foo/a%20b", "service-api-foo", "/a%20b"),
    ("api.example.com", "/foo/100%25", "service-api-foo", "/100%25"),
    ("api.example.com", "/foo/caf%C3%A9", "service-api-foo", "/caf%C3%A9"),
    ("api.example.com", "/foo/.well-known/x", "service-api-foo", "/.well-known/x"),
    ("api.example.com", "/foo/...", "service-api-foo", "/..."),
    ("api.example.com", "/foo/a..b", "service-api-foo", "/a..b"),
    ("api.example.com", "/foo/..a;/b", "service-api-foo", "/..a;/b"),
    ("api.example.com", "/foo/a;..", "service-api-foo", "/a;.."),
    // valid UTF-8 next to what overlong sequences look like
    ("api.example.com", "/foo/%e0%a0%80%f0%90%80%80%c2%80", "service-api-foo", "/%e0%a0%80%f0%90%80%80%c2%80"),
    // service segments: DNS labels with digits and inner hyphens
    ("api.example.com", "/foo-bar/x", "service-api-foo-bar", "/x"),
    ("api.example.com", "/9lives", "service-api-9lives", "/"),
    ("api.example.com", "/a", "service-api-a", "/"),
    // host matching ignores case, port and a trailing dot
    ("API.Example.COM", "/foo", "service-api-foo", "/"),
    ("api.example.com:443", "/foo", "service-api-foo", "/"),
    ("api.example.com.", "/foo", "service-api-foo", "/"),
    ("API.EXAMPLE.COM.:8080", "/foo", "service-api-foo", "/"),
    ("admin.example.com", "/users", "service-admin-users", "/"),
];

#[test]
fn convention_routes_each_row_to_its_service_and_path() {
    let edges = edges();
    for &(host, target, service, upstream) in ROUTED {
        let route = route(&edges, host, target)
            .unwrap_or_else(|rejection| panic!("{host} {target}: rejected with {rejection:?}"));
        assert_eq!(route.service_name, service, "{host} {target}");
        assert_eq!(route.upstream_path_and_query, upstream, "{host} {target}");
        assert_eq!(route.service_name, service_name(&route.logical_service()), "{host} {target}");
    }
}

#[test]
fn logical_name_and_segment_are_reported() {
    let edges = edges();
    let route = route(&edges, "api.example.com", "/foo/x").expect("routes");
    assert_eq!(route.logical_service(), "service.api.foo");
    assert_eq!(route.segment, "foo");
    assert_eq!(route.edge.host(), "api.example.com");
    assert_eq!(route.edge.prefix(), "service.api");
}

/// (host, request target, expected rejection)
const REJECTED: &[(&str, &str, Rejection)] = &[
    // unknown host, with or without port
    ("other.example.com", "/foo", Rejection::UnknownHost),
    ("example.com", "/foo", Rejection::UnknownHost),
    ("api.example.com.evil.com", "/foo", Rejection::UnknownHost),
    ("", "/foo", Rejection::UnknownHost),
    // no service segment
    ("api.example.com", "/", Rejection::NoServiceSegment),
    ("api.example.com", "/?x=1", Rejection::NoServiceSegment),
    ("api.example.com", "//foo", Rejection::NoServiceSegment),
    // the first segment is not a DNS label
    ("api.example.com", "/Foo", Rejection::InvalidServiceSegment),
    ("api.example.com", "/FOO/x", Rejection::InvalidServiceSegment),
    ("api.example.com", "/foo_bar", Rejection::InvalidServiceSegment),
    ("api.example.com", "/-foo", Rejection::InvalidServiceSegment),
    ("api.example.com", "/foo-", Rejection::InvalidServiceSegment),
    ("api.example.com", "/foo.bar", Rejection::InvalidServiceSegment),
    ("api.example.com", "/%66oo", Rejection::InvalidServiceSegment),
    ("api.example.com", "/foo%2fbar", Rejection::InvalidServiceSegment),
    ("api.example.com", "/foo%2Fbar/x", Rejection::InvalidServiceSegment),
    ("api.example.com", "/_gatehouse/ready", Rejection::InvalidServiceSegment),
    ("api.example.com", "/foo@bar", Rejection::InvalidServiceSegment),
    ("api.example.com", "/foo;x=1", Rejection::InvalidServiceSegment),
    // "service-api-" is 12 characters: a 52-character segment makes 64
    ("api.example.com", "/abcdefghijabcdefghijabcdefghijabcdefghijabcdefghij12", Rejection::InvalidServiceSegment),
    // dot segments, raw: never resolved, never reach an upstream
    ("api.example.com", "/foo/../bar", Rejection::DotSegment),
    ("api.example.com", "/../bar", Rejection::DotSegment),
    ("api.example.com", "/..", Rejection::DotSegment),
    ("api.example.com", "/.", Rejection::DotSegment),
    ("api.example.com", "/./foo", Rejection::DotSegment),
    ("api.example.com", "/foo/.", Rejection::DotSegment),
    ("api.example.com", "/foo/./x", Rejection::DotSegment),
    ("api.example.com", "/foo/x/..", Rejection::DotSegment),
    ("api.example.com", "/foo/..?x=1", Rejection::DotSegment),
    // dot segments, percent-encoded in any case and mix
    ("api.example.com", "/foo/%2e%2e/bar", Rejection::DotSegment),
    ("api.example.com", "/foo/%2E%2E/bar", Rejection::DotSegment),
    ("api.example.com", "/foo/%2E%2e/bar", Rejection::DotSegment),
    ("api.example.com", "/foo/.%2e/bar", Rejection::DotSegment),
    ("api.example.com", "/foo/%2e./bar", Rejection::DotSegment),
    ("api.example.com", "/foo/%2e", Rejection::DotSegment),
    ("api.example.com", "/%2e%2e/bar", Rejection::DotSegment),
    // encoded slashes that hide a dot segment
    ("api.example.com", "/foo/x%2f..%2fbar", Rejection::DotSegment),
    ("api.example.com", "/foo/x%2F%2E%2E%2Fbar", Rejection::DotSegment),
    // double and triple encoding
    ("api.example.com", "/foo/%252e%252e/bar", Rejection::DotSegment),
    ("api.example.com", "/foo/%25252e%25252e/bar", Rejection::DotSegment),
    ("api.example.com", "/foo/%252E./bar", Rejection::DotSegment),
    // backslash as a separator, raw and encoded
    ("api.example.com", "/foo/..\\bar", Rejection::DotSegment),
    ("api.example.com", "/foo\\..\\bar", Rejection::DotSegment),
    ("api.example.com", "/foo/%5c..%5cbar", Rejection::DotSegment),
    ("api.example.com", "/foo/..%5Cbar", Rejection::DotSegment),
    // path parameters after a dot segment (Tomcat and Spring drop them)
    ("api.example.com", "/foo/..;/bar", Rejection::DotSegment),
    ("api.example.com", "/foo/..;jsessionid=1/bar", Rejection::DotSegment),
    ("api.example.com", "/foo/.;x/y", Rejection::DotSegment),
    ("api.example.com", "/foo/%2e%2e;x/bar", Rejection::DotSegment),
    ("api.example.com", "/foo/%252e%252e%253b/bar", Rejection::DotSegment),
    // a hostile path is 400 whatever the host
    ("unknown.example.com", "/foo/../bar", Rejection::DotSegment),
    // malformed targets: not origin-form, control or non-ASCII bytes, broken escapes
    ("api.example.com", "", Rejection::MalformedPath),
    ("api.example.com", "foo", Rejection::MalformedPath),
    ("api.example.com", "*", Rejection::MalformedPath),
    ("api.example.com", "http://other.example.com/foo", Rejection::MalformedPath),
    ("api.example.com", "/foo/a b", Rejection::MalformedPath),
    ("api.example.com", "/foo/\u{0}", Rejection::MalformedPath),
    ("api.example.com", "/foo/\r\nx", Rejection::MalformedPath),
    ("api.example.com", "/foo/\u{e9}", Rejection::MalformedPath),
    ("api.example.com", "/foo/%zz", Rejection::MalformedPath),
    ("api.example.com", "/foo/%2", Rejection::MalformedPath),
    ("api.example.com", "/foo/%+f", Rejection::MalformedPath),
    ("api.example.com", "/foo/%00", Rejection::MalformedPath),
    ("api.example.com", "/foo/%0d%0aX:1", Rejection::MalformedPath),
    ("api.example.com", "/foo/%7F", Rejection::MalformedPath),
    ("api.example.com", "/foo/%25%30%30", Rejection::MalformedPath),
    // overlong UTF-8: '.', '/' and '\' spelt the long way, at any depth
    ("api.example.com", "/foo/%c0%ae%c0%ae/bar", Rejection::MalformedPath),
    ("api.example.com", "/foo/%C0%AE%C0%AE%C0%AFbar", Rejection::MalformedPath),
    ("api.example.com", "/foo/..%c0%afbar", Rejection::MalformedPath),
    ("api.example.com", "/foo/..%c1%9cbar", Rejection::MalformedPath),
    ("api.example.com", "/foo/%e0%80%ae%e0%80%ae/bar", Rejection::MalformedPath),
    ("api.example.com", "/foo/%f0%80%80%ae", Rejection::MalformedPath),
    ("api.example.com", "/foo/%25c0%25ae%25c0%25ae/bar", Rejection::MalformedPath),
    // encoded more deeply than any legitimate client does
    ("api.example.com", "/foo/%2525252e", Rejection::MalformedPath),
];

#[test]
fn convention_rejects_each_row_with_its_reason() {
    let edges = edges();
    for &(host, target, expected) in REJECTED {
        assert_eq!(route(&edges, host, target), Err(expected), "{host:?} {target:?}");
    }
}

#[test]
fn hostile_shapes_are_400_and_unknown_names_are_404() {
    assert_eq!(Rejection::DotSegment.status_code(), 400);
    assert_eq!(Rejection::MalformedPath.status_code(), 400);
    assert_eq!(Rejection::UnknownHost.status_code(), 404);
    assert_eq!(Rejection::NoServiceSegment.status_code(), 404);
    assert_eq!(Rejection::InvalidServiceSegment.status_code(), 404);
}

#[test]
fn longest_allowed_service_name_is_63_characters() {
    let edges = edges();
    let segment = "a".repeat(MAX_SERVICE_NAME_LEN - "service-api-".len());
    let target = format!("/{segment}");
    let route = route(&edges, "api.example.com", &target).expect("63 characters fit");
    assert_eq!(route.service_name.len(), MAX_SERVICE_NAME_LEN);
}

#[test]
fn default_edge_answers_unknown_hosts() {
    let edges =
        Edges::new(vec![Edge::new("api.example.com", "service.api").expect("valid edge")], Some("API.example.com"))
            .expect("valid edges");
    let route = route(&edges, "anything.else", "/foo").expect("default edge routes");
    assert_eq!(route.service_name, "service-api-foo");
}

#[test]
fn ipv6_literal_hosts_lose_only_their_port() {
    assert_eq!(normalise_host("[::1]:8080"), "[::1]");
    assert_eq!(normalise_host("[::1]"), "[::1]");
    assert_eq!(normalise_host("Api.Example.com:80"), "api.example.com");
}

/// (host, prefix, expected error)
#[test]
fn invalid_edges_are_refused_with_a_reason() {
    let cases: &[(&str, &str, EdgeError)] = &[
        ("", "service.api", EdgeError::InvalidHost { host: String::new() }),
        ("api.example.com:443", "service.api", EdgeError::InvalidHost { host: "api.example.com:443".into() }),
        ("https://api.example.com", "service.api", EdgeError::InvalidHost { host: "https://api.example.com".into() }),
        ("api..example.com", "service.api", EdgeError::InvalidHost { host: "api..example.com".into() }),
        ("api.example.com", "", EdgeError::InvalidPrefix { prefix: String::new() }),
        ("api.example.com", "Service.api", EdgeError::InvalidPrefix { prefix: "Service.api".into() }),
        ("api.example.com", "service..api", EdgeError::InvalidPrefix { prefix: "service..api".into() }),
        ("api.example.com", "service.api.", EdgeError::InvalidPrefix { prefix: "service.api.".into() }),
        ("api.example.com", "service_api", EdgeError::InvalidPrefix { prefix: "service_api".into() }),
        (
            "api.example.com",
            "abcdefghijabcdefghijabcdefghij.abcdefghijabcdefghijabcdefghija",
            EdgeError::PrefixTooLong {
                prefix: "abcdefghijabcdefghijabcdefghij.abcdefghijabcdefghijabcdefghija".into(),
            },
        ),
    ];
    for (host, prefix, expected) in cases {
        assert_eq!(Edge::new(host, prefix).as_ref(), Err(expected), "{host:?} {prefix:?}");
    }
}

#[test]
fn duplicate_hosts_and_unknown_defaults_are_refused() {
    let twice = vec![
        Edge::new("api.example.com", "service.api").expect("valid edge"),
        Edge::new("API.example.com", "service.other").expect("valid edge"),
    ];
    assert_eq!(Edges::new(twice, None).err(), Some(EdgeError::DuplicateHost { host: "api.example.com".into() }));
    let one = vec![Edge::new("api.example.com", "service.api").expect("valid edge")];
    assert_eq!(
        Edges::new(one, Some("www.example.com")).err(),
        Some(EdgeError::UnknownDefault { host: "www.example.com".into() })
    );
}

#[test]
fn prefixes_whose_services_overlap_are_refused() {
    let edge = |host: &str, prefix: &str| Edge::new(host, prefix).expect("valid edge");
    for (public, internal) in [("service.api", "service.api.internal"), ("service.api", "service.api-internal")] {
        let edges = vec![edge("api.example.com", public), edge("internal.example.com", internal)];
        assert_eq!(
            Edges::new(edges, None).err(),
            Some(EdgeError::OverlappingPrefixes { prefix: internal.into(), within: public.into() }),
            "{public} would expose {internal}'s Services"
        );
    }
    // Neighbours that share a stem but not a name prefix, and one prefix on two hosts, are fine.
    let fine = vec![
        edge("api.example.com", "service.api"),
        edge("www.example.com", "service.api"),
        edge("apix.example.com", "service.apix"),
    ];
    assert!(Edges::new(fine, None).is_ok());
}

#[test]
fn only_services_named_by_an_edge_prefix_are_exposed() {
    let edge = Edge::new("api.example.com", "service.api").expect("valid edge");
    assert_eq!(edge.segment_for_service("service-api-foo"), Some("foo"));
    assert_eq!(edge.segment_for_service("service-api-foo-bar"), Some("foo-bar"));
    assert_eq!(edge.segment_for_service("service-api-"), None);
    assert_eq!(edge.segment_for_service("service-api--x"), None);
    assert_eq!(edge.segment_for_service("service-admin-foo"), None);
    assert_eq!(edge.segment_for_service("kube-dns"), None);
    assert_eq!(edge.segment_for_service("service-api"), None);
    assert_eq!(edge.segment_for_service("xservice-api-foo"), None);
}

#[test]
fn every_exposed_service_is_reachable_at_its_segment() {
    // The reverse mapping and the forward route must agree, or /routes would lie.
    let edges = edges();
    let edge = edges.find("api.example.com").expect("edge");
    for name in ["service-api-foo", "service-api-foo-bar", "service-api-9"] {
        let segment = edge.segment_for_service(name).expect("exposed");
        let target = format!("/{segment}/x");
        let route = route(&edges, "api.example.com", &target).expect("routes");
        assert_eq!(route.service_name, name);
    }
}

#[test]
fn dns_label_rule() {
    let valid = ["a", "0", "a-b", "a--b", "abc123", &"a".repeat(63)];
    let invalid = ["", "-", "-a", "a-", "A", "a_b", "a.b", "a b", "é", &"a".repeat(64)];
    for label in valid {
        assert!(is_dns_label(label), "{label:?} should be a DNS label");
    }
    for label in invalid {
        assert!(!is_dns_label(label), "{label:?} should not be a DNS label");
    }
}

#[test]
fn route_and_upstream_path_always_agree_for_generated_paths() {
    // A small exhaustive sweep over short paths built from the characters that matter for
    // traversal: whatever is accepted must route by its literal first segment and hand the
    // upstream exactly the rest, with no dot segment in any decoding of it.
    let edges = edges();
    let alphabet = ["a", "b", "/", ".", "%2e", "%2f", "%25", "\\", "?"];
    let mut paths = vec![String::from("/")];
    for _ in 0..4 {
        let mut next = Vec::new();
        for path in &paths {
            for piece in alphabet {
                next.push(format!("{path}{piece}"));
            }
        }
        paths.extend(next);
    }
    for path in &paths {
        if let Ok(route) = route(&edges, "api.example.com", path) {
            let first = path[1..].split(['/', '?']).next().unwrap_or_default();
            assert_eq!(route.segment, first, "{path}");
            let expected_rest = &path[1 + first.len()..];
            let expected = if expected_rest.is_empty() || expected_rest.starts_with('?') {
                format!("/{expected_rest}")
            } else {
                expected_rest.to_owned()
            };
            assert_eq!(route.upstream_path_and_query, expected, "{path}");
            let upstream_path = route.upstream_path_and_query.split('?').next().unwrap_or_default();
            assert!(check_path(upstream_path).is_ok(), "{path}: upstream path must be clean");
        }
    }
}
