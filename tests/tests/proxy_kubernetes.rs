//! Kubernetes discovery against the in-memory API server: Services and EndpointSlices that
//! appear become routable without a restart, deleted ones stop being routable.
#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::time::Duration;

use gatehouse_tests::backends::{Backend, eventually, get};
use gatehouse_tests::kube_api::fixtures::{endpoint_slice, service};
use gatehouse_tests::kube_api::{FakeApiServer, ResourceKind};
use http::StatusCode;

const HOST: &str = "api.example.com";
const CONFIG: &str = "listen: 127.0.0.1:0\nadmin_listen: 127.0.0.1:0\naccess_log: false\nedges:\n  - host: api.example.com\n    prefix: service.api\ndiscovery:\n  kubernetes:\n    namespaces: [gatehouse]\n";

async fn start(fake: &FakeApiServer) -> gatehouse_proxy::ProxyHandle {
    let settings = gatehouse_proxy::Config::parse(CONFIG, std::path::Path::new("test.yaml")).unwrap();
    gatehouse_proxy::Proxy::bind_with(settings, Some(fake.client())).await.unwrap()
}

#[tokio::test]
async fn service_that_appears_becomes_routable_and_a_deleted_one_gets_404() {
    let fake = FakeApiServer::start().await;
    let foo = Backend::start("foo").await;
    let port = i32::from(foo.addr.port());
    let proxy = start(&fake).await;
    let addr = proxy.traffic_addr();

    eventually(Duration::from_secs(10), "ready once the watches have listed", || async {
        get(addr, "x", "/_gatehouse/ready", &[]).await.status == StatusCode::OK
    })
    .await;
    assert_eq!(get(addr, HOST, "/foo/x", &[]).await.status, StatusCode::NOT_FOUND);

    fake.apply_resource(&service("gatehouse", "service-api-foo").port("http", 80, None).target_port(port).build())
        .unwrap();
    fake.apply_resource(&endpoint_slice("gatehouse", "service-api-foo", [("127.0.0.1", port, true)], "http")).unwrap();
    eventually(Duration::from_secs(10), "service-api-foo is routable", || async {
        get(addr, HOST, "/foo/x", &[]).await.status == StatusCode::OK
    })
    .await;
    assert_eq!(foo.requests().last().unwrap().path_and_query, "/x");

    fake.delete(ResourceKind::Service, Some("gatehouse"), "service-api-foo").unwrap();
    eventually(Duration::from_secs(10), "service-api-foo is gone", || async {
        get(addr, HOST, "/foo/x", &[]).await.status == StatusCode::NOT_FOUND
    })
    .await;
}

#[tokio::test]
async fn unusable_and_invisible_services_are_handled_without_crashing() {
    let fake = FakeApiServer::start().await;
    // Two ports, none named http: listed with a reason, not routed.
    fake.apply_resource(&service("gatehouse", "service-api-two").port("a", 80, None).port("b", 81, None).build())
        .unwrap();
    // Not under any edge prefix: invisible.
    fake.apply_resource(&service("gatehouse", "internal-db").port("sql", 5432, None).build()).unwrap();
    // Known, but no ready endpoint: 503.
    fake.apply_resource(&service("gatehouse", "service-api-idle").port("http", 80, None).build()).unwrap();
    fake.apply_resource(&endpoint_slice("gatehouse", "service-api-idle", [("127.0.0.1", 1, false)], "http")).unwrap();
    let proxy = start(&fake).await;
    let admin = proxy.admin_addr();

    eventually(Duration::from_secs(10), "the table lists the unusable service", || async {
        get(admin, "admin", "/routes", &[]).await.body.contains("service-api-two")
    })
    .await;
    let routes = get(admin, "admin", "/routes", &[]).await.json();
    let edge = &routes["edges"][0];
    assert_eq!(edge["unusable"][0]["service"], "service-api-two");
    assert!(edge["unusable"][0]["reason"].as_str().unwrap().contains("http"));
    assert!(!routes.to_string().contains("internal-db"));
    assert_eq!(edge["services"][0]["service"], "service-api-idle");

    let addr = proxy.traffic_addr();
    assert_eq!(get(addr, HOST, "/two/x", &[]).await.status, StatusCode::NOT_FOUND);
    assert_eq!(get(addr, HOST, "/idle/x", &[]).await.status, StatusCode::SERVICE_UNAVAILABLE);
}
