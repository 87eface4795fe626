//! The provisioner library against the AWS emulator, with nodes and the proxy Service from the
//! in-memory Kubernetes API server: the API budget (counted by the SDK interceptor) and the
//! proxy Service drift. The CLI's own tests are in provisioner/tests/cli.rs.

use gatehouse_provisioner::aws::{Elb, load_sdk_config};
use gatehouse_provisioner::drift::Finding;
use gatehouse_provisioner::kube::{ServiceRef, list_nodes, proxy_service};
use gatehouse_provisioner::metrics::{ApiCalls, CallSnapshot};
use gatehouse_provisioner::sync::Session;
use gatehouse_tests::kube_api::fixtures::{node, service};
use gatehouse_tests::kube_api::{FakeApiServer, ResourceKind};
use gatehouse_tests::provisioner_support::{NODE_PORT, TargetGroupFixture};

async fn open(tg: &TargetGroupFixture) -> (Session, ApiCalls) {
    let calls = ApiCalls::default();
    let sdk = load_sdk_config(None).await;
    let elb = Elb::new(&sdk, calls.clone()).expect("region configured");
    let settings = tg.settings(None);
    (Session::open(elb, settings).await.expect("open the target group"), calls)
}

/// One sync as `sync` does it: discover, plan, apply. Returns the AWS calls it made.
async fn sync_once(session: &Session, calls: &ApiCalls, fake: &FakeApiServer) -> CallSnapshot {
    let before = calls.snapshot();
    let nodes = list_nodes(&fake.client()).await.expect("list nodes");
    let plan = session.plan(&nodes, None).await.expect("plan");
    session.apply(&plan, None).await.expect("apply");
    calls.snapshot().since(&before)
}

fn counts(s: &CallSnapshot) -> Vec<(String, u64)> {
    s.0.iter().map(|((op, outcome), n)| (format!("{op}/{outcome}"), *n)).collect()
}

fn c(op: &str, n: u64) -> (String, u64) {
    (format!("{op}/ok"), n)
}

#[tokio::test]
async fn no_op_sync_costs_one_read_and_one_node_change_one_write() {
    let tg = TargetGroupFixture::ip().await;
    let fake = FakeApiServer::start().await;
    for (name, ip) in [("node-a", "10.42.0.11"), ("node-b", "10.42.0.12"), ("node-c", "10.42.0.13")] {
        fake.apply_resource(&node(name, ip).build()).expect("apply node");
    }
    let (session, calls) = open(&tg).await;
    assert_eq!(counts(&calls.snapshot()), [c("DescribeTargetGroups", 1)], "startup reads the group once");

    // Three nodes into an empty group: one read, one batched write.
    let first = sync_once(&session, &calls, &fake).await;
    assert_eq!(counts(&first), [c("DescribeTargetHealth", 1), c("RegisterTargets", 1)]);
    assert_eq!(tg.registered().await.len(), 3);

    // Nothing to do: exactly one read call, nothing else.
    let noop = sync_once(&session, &calls, &fake).await;
    assert_eq!(counts(&noop), [c("DescribeTargetHealth", 1)]);
    assert_eq!((noop.reads(), noop.writes()), (1, 0));

    // A node joins: one read, one write.
    fake.apply_resource(&node("node-d", "10.42.0.14").build()).expect("apply node");
    let join = sync_once(&session, &calls, &fake).await;
    assert_eq!(counts(&join), [c("DescribeTargetHealth", 1), c("RegisterTargets", 1)]);

    // A node leaves: one read, one write.
    fake.delete(ResourceKind::Node, None, "node-b").expect("delete node");
    let leave = sync_once(&session, &calls, &fake).await;
    assert_eq!(counts(&leave), [c("DeregisterTargets", 1), c("DescribeTargetHealth", 1)]);
    assert_eq!(tg.registered().await.len(), 3);
    assert!(!tg.registered().await.contains(&format!("10.42.0.12:{NODE_PORT}")));
    tg.cleanup().await;
}

#[tokio::test]
async fn proxy_service_node_port_drift_is_reported() {
    let tg = TargetGroupFixture::ip().await;
    let fake = FakeApiServer::start().await;
    fake.apply_resource(&node("node-a", "10.42.0.11").build()).expect("apply node");
    let (session, _) = open(&tg).await;
    let svc: ServiceRef = "gatehouse/proxy".parse().expect("ref");
    let client = fake.client();
    let nodes = list_nodes(&client).await.expect("nodes");

    let missing = proxy_service(&client, &svc).await.expect("read service");
    let plan = session.plan(&nodes, Some(&missing)).await.expect("plan");
    assert_eq!(plan.drift, [Finding::ProxyServiceMissing { service: "gatehouse/proxy".into() }]);

    fake.apply_resource(&service("gatehouse", "proxy").service_type("NodePort").port("http", 80, Some(31999)).build())
        .expect("apply service");
    let wrong = proxy_service(&client, &svc).await.expect("read service");
    let plan = session.plan(&nodes, Some(&wrong)).await.expect("plan");
    assert_eq!(
        plan.drift,
        [Finding::ProxyNodePort { service: "gatehouse/proxy".into(), expected: NODE_PORT, found: vec![31999] }]
    );
    assert!(
        plan.render_text()
            .contains("  ! proxy Service gatehouse/proxy: expected nodePort 30080, found nodePort 31999\n")
    );

    fake.apply_resource(
        &service("gatehouse", "proxy").service_type("NodePort").port("http", 80, Some(i32::from(NODE_PORT))).build(),
    )
    .expect("apply service");
    let right = proxy_service(&client, &svc).await.expect("read service");
    let plan = session.plan(&nodes, Some(&right)).await.expect("plan");
    assert!(plan.drift.is_empty(), "{:?}", plan.drift);
    tg.cleanup().await;
}
