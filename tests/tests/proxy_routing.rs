//! The proxy routes by the convention, answers what it must itself, and maps upstream
//! failures to the right status. Real backends on loopback, the proxy in-process on port 0.
#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::time::Duration;

use bytes::Bytes;
use gatehouse_tests::backends::{Backend, config, eventually, get, refused_addr, send, start_proxy};
use http::{Method, StatusCode};

const HOST: &str = "api.example.com";

#[tokio::test]
async fn routes_by_host_and_first_segment_and_strips_the_prefix_keeping_the_query() {
    let foo = Backend::start("foo").await;
    let bar = Backend::start("bar").await;
    let proxy = start_proxy(&config(&[("foo", vec![foo.addr]), ("bar", vec![bar.addr])], "")).await;
    let cases = [
        ("/foo/something?x=1&y=2", "foo", "/something?x=1&y=2"),
        ("/foo", "foo", "/"),
        ("/foo/", "foo", "/"),
        ("/foo?q=1", "foo", "/?q=1"),
        ("/bar/a/b/c", "bar", "/a/b/c"),
    ];
    for (path, backend, upstream_path) in cases {
        let answer = get(proxy.traffic_addr(), HOST, path, &[]).await;
        assert_eq!(answer.status, StatusCode::OK, "{path}: {}", answer.body);
        let json = answer.json();
        assert_eq!(json["backend"], backend, "{path}");
        assert_eq!(json["path"], upstream_path, "{path}");
    }
}

#[tokio::test]
async fn host_matching_ignores_case_and_port() {
    let foo = Backend::start("foo").await;
    let proxy = start_proxy(&config(&[("foo", vec![foo.addr])], "")).await;
    for host in ["API.Example.COM", "api.example.com:30080", "api.example.com."] {
        let answer = get(proxy.traffic_addr(), host, "/foo/x", &[]).await;
        assert_eq!(answer.status, StatusCode::OK, "{host}");
    }
}

#[tokio::test]
async fn unknown_host_or_service_gets_404_without_contacting_any_upstream() {
    let foo = Backend::start("foo").await;
    let proxy = start_proxy(&config(&[("foo", vec![foo.addr])], "")).await;
    for (host, path) in [
        ("other.example.com", "/foo/x"),
        (HOST, "/nope/x"),
        (HOST, "/"),
        (HOST, "/Foo/x"),
        (HOST, "/foo_bar/x"),
        (HOST, "/%66oo/x"),
    ] {
        let answer = get(proxy.traffic_addr(), host, path, &[]).await;
        assert_eq!(answer.status, StatusCode::NOT_FOUND, "{host}{path}");
        assert!(!answer.body.contains("service-api"), "no internals in {:?}", answer.body);
    }
    assert_eq!(foo.request_count(), 0);
}

#[tokio::test]
async fn traversal_attempts_get_400_and_never_reach_an_upstream() {
    let foo = Backend::start("foo").await;
    let bar = Backend::start("bar").await;
    let proxy = start_proxy(&config(&[("foo", vec![foo.addr]), ("bar", vec![bar.addr])], "")).await;
    for path in [
        "/foo/../bar/x",
        "/foo/%2e%2e/bar",
        "/foo/%2E%2e/bar",
        "/foo/%252e%252e/bar",
        "/foo/..%5cbar",
        "/foo/./x",
        "/foo/x%00",
    ] {
        let answer = get(proxy.traffic_addr(), HOST, path, &[]).await;
        assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{path}");
    }
    assert_eq!(foo.request_count() + bar.request_count(), 0);
}

#[tokio::test]
async fn default_edge_answers_unknown_hosts() {
    let foo = Backend::start("foo").await;
    let proxy = start_proxy(&config(&[("foo", vec![foo.addr])], "default_edge: api.example.com\n")).await;
    let answer = get(proxy.traffic_addr(), "whatever.test", "/foo/x", &[]).await;
    assert_eq!(answer.status, StatusCode::OK);
}

#[tokio::test]
async fn refused_connection_is_502() {
    let proxy = start_proxy(&config(&[("foo", vec![refused_addr().await])], "")).await;
    let answer = get(proxy.traffic_addr(), HOST, "/foo/x", &[]).await;
    assert_eq!(answer.status, StatusCode::BAD_GATEWAY);
    assert!(!answer.body.contains("127.0.0.1"), "no internals in {:?}", answer.body);
}

#[tokio::test]
async fn service_without_endpoints_is_503() {
    let proxy = start_proxy(&config(&[("foo", vec![])], "")).await;
    let answer = get(proxy.traffic_addr(), HOST, "/foo/x", &[]).await;
    assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE);
}

#[tokio::test]
async fn slow_backend_is_504_after_the_request_timeout() {
    let foo = Backend::start("foo").await;
    let proxy = start_proxy(&config(&[("foo", vec![foo.addr])], "timeouts: { request: 300ms }\n")).await;
    let started = std::time::Instant::now();
    let answer = get(proxy.traffic_addr(), HOST, "/foo/slow", &[]).await;
    assert_eq!(answer.status, StatusCode::GATEWAY_TIMEOUT);
    assert!(started.elapsed() < Duration::from_secs(5), "took {:?}", started.elapsed());
}

#[tokio::test]
async fn refused_connection_is_retried_on_the_healthy_endpoint() {
    let healthy = Backend::start("healthy").await;
    let dead = refused_addr().await;
    let proxy = start_proxy(&config(&[("foo", vec![dead, healthy.addr])], "")).await;
    for i in 0..6 {
        let answer = get(proxy.traffic_addr(), HOST, "/foo/x", &[]).await;
        assert_eq!(answer.status, StatusCode::OK, "request {i}");
        // A body that was never sent is retried too.
        let answer =
            send(proxy.traffic_addr(), Method::POST, HOST, "/foo/echo-body", &[], Bytes::from_static(b"payload")).await;
        assert_eq!((answer.status, answer.body.as_str()), (StatusCode::OK, "payload"), "post {i}");
    }
    assert_eq!(healthy.request_count(), 12);
}

#[tokio::test]
async fn load_is_spread_over_all_endpoints() {
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    let proxy = start_proxy(&config(&[("foo", vec![a.addr, b.addr])], "")).await;
    for _ in 0..10 {
        assert_eq!(get(proxy.traffic_addr(), HOST, "/foo/x", &[]).await.status, StatusCode::OK);
    }
    assert_eq!((a.request_count(), b.request_count()), (5, 5));
}

#[tokio::test]
async fn body_over_the_limit_is_413() {
    let foo = Backend::start("foo").await;
    let proxy = start_proxy(&config(&[("foo", vec![foo.addr])], "limits: { max_body_bytes: 10 }\n")).await;
    let small =
        send(proxy.traffic_addr(), Method::POST, HOST, "/foo/echo-body", &[], Bytes::from_static(b"0123456789")).await;
    assert_eq!((small.status, small.body.as_str()), (StatusCode::OK, "0123456789"));
    let big =
        send(proxy.traffic_addr(), Method::POST, HOST, "/foo/echo-body", &[], Bytes::from_static(b"01234567890")).await;
    assert_eq!(big.status, StatusCode::PAYLOAD_TOO_LARGE);
}

#[tokio::test]
async fn readiness_is_answered_by_the_proxy_itself() {
    let proxy = start_proxy(&config(&[], "")).await;
    let answer = get(proxy.traffic_addr(), "anything", "/_gatehouse/ready", &[]).await;
    assert_eq!(answer.status, StatusCode::OK);
}

#[tokio::test]
async fn admin_serves_healthz_metrics_and_the_route_table() {
    let foo = Backend::start("foo").await;
    let proxy = start_proxy(&config(&[("foo", vec![foo.addr]), ("empty", vec![])], "")).await;
    assert_eq!(get(proxy.traffic_addr(), HOST, "/foo/x", &[]).await.status, StatusCode::OK);
    assert_eq!(get(proxy.traffic_addr(), HOST, "/nope/x", &[]).await.status, StatusCode::NOT_FOUND);

    assert_eq!(get(proxy.admin_addr(), "admin", "/healthz", &[]).await.status, StatusCode::OK);
    let routes = get(proxy.admin_addr(), "admin", "/routes", &[]).await.json();
    let edge = &routes["edges"][0];
    assert_eq!(edge["host"], HOST);
    let services: Vec<&str> =
        edge["services"].as_array().unwrap().iter().map(|s| s["service"].as_str().unwrap()).collect();
    assert_eq!(services, ["service-api-empty", "service-api-foo"]);
    assert_eq!(edge["services"][1]["logical_service"], "service.api.foo");
    assert_eq!(edge["services"][1]["endpoints"][0], foo.addr.to_string());

    let metrics = get(proxy.admin_addr(), "admin", "/metrics", &[]).await.body;
    for needle in [
        "gatehouse_requests_total{service=\"service-api-foo\",class=\"2xx\"} 1",
        "gatehouse_requests_total{service=\"\",class=\"4xx\"} 1",
        "gatehouse_routes 2",
        "gatehouse_request_duration_seconds_count 2",
        "gatehouse_in_flight_requests 0",
    ] {
        assert!(metrics.contains(needle), "missing {needle:?} in\n{metrics}");
    }
}

#[tokio::test]
async fn connections_beyond_the_limit_get_503() {
    let foo = Backend::start("foo").await;
    let proxy = start_proxy(&config(&[("foo", vec![foo.addr])], "limits: { max_connections: 1 }\n")).await;
    // Hold the one allowed connection open with a raw socket that has sent nothing.
    let held = tokio::net::TcpStream::connect(proxy.traffic_addr()).await.unwrap();
    let shared = proxy.shared().clone();
    eventually(Duration::from_secs(5), "the held connection is counted", || {
        let shared = shared.clone();
        async move { shared.metrics.encode().contains("gatehouse_open_connections 1") }
    })
    .await;
    let answer = get(proxy.traffic_addr(), HOST, "/foo/x", &[]).await;
    assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE);
    drop(held);
    eventually(Duration::from_secs(5), "a connection is accepted again", || async {
        get(proxy.traffic_addr(), HOST, "/foo/x", &[]).await.status == StatusCode::OK
    })
    .await;
}
