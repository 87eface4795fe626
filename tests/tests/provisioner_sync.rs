//! The provisioner library against the AWS emulator, with nodes and the proxy Service from the
//! in-memory Kubernetes API server: the API budget (counted by the SDK interceptor), the proxy
//! Service's drift and the NodePort refusal. The CLI's own tests are in provisioner/tests/cli.rs.

use std::time::Duration;

use gatehouse_provisioner::cluster::{Cluster, ServiceRef};
use gatehouse_provisioner::drift::Finding;
use gatehouse_provisioner::lease::Leadership;
use gatehouse_provisioner::metrics::{ApiCalls, CallSnapshot};
use gatehouse_provisioner::nodes;
use gatehouse_provisioner::plan::{Blocked, ClusterView};
use gatehouse_provisioner::session::Session;
use gatehouse_tests::kube_api::fixtures::{node, service};
use gatehouse_tests::kube_api::{FakeApiServer, ResourceKind};
use gatehouse_tests::provisioner_support::{NODE_PORT, TargetGroupFixture, aws};

async fn open(tg: &TargetGroupFixture) -> (Session, ApiCalls) {
    let calls = ApiCalls::default();
    (Session::open(aws(&calls).await, tg.settings(None)).await.expect("open the target group"), calls)
}

fn cluster(fake: &FakeApiServer) -> Cluster {
    Cluster::new(fake.client(), fake.url(), Duration::from_secs(10))
}

/// One sync as `sync` does it: discover, plan, apply. Returns the AWS calls it made.
async fn sync_once(session: &Session, calls: &ApiCalls, fake: &FakeApiServer) -> CallSnapshot {
    let before = calls.snapshot();
    let listed = cluster(fake).list_nodes().await.expect("list nodes");
    let view = ClusterView { nodes: nodes::views(&listed, &nodes::Selector::default()), proxy: None };
    let observed = session.observe().await.expect("observe");
    let plan = session.plan(&view, &observed);
    session.apply(&plan, &Leadership::always()).await.expect("apply");
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
    assert_eq!(
        counts(&calls.snapshot()),
        [c("DescribeTargetGroups", 1), c("DescribeVpcs", 1)],
        "startup reads the group, and for an ip group its VPC's CIDR blocks, once"
    );

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
async fn a_proxy_service_node_port_mismatch_is_drift_and_blocks_every_write() {
    let tg = TargetGroupFixture::ip().await;
    let fake = FakeApiServer::start().await;
    fake.apply_resource(&node("node-a", "10.42.0.11").build()).expect("apply node");
    let (session, calls) = open(&tg).await;
    let svc: ServiceRef = "gatehouse/proxy".parse().expect("ref");
    let cluster = cluster(&fake);
    let listed = cluster.list_nodes().await.expect("nodes");
    let views = nodes::views(&listed, &nodes::Selector::default());
    let plan_with = |proxy| ClusterView { nodes: views.clone(), proxy: Some(proxy) };

    let missing = cluster.proxy_view(&svc).await.expect("read service");
    let observed = session.observe().await.expect("observe");
    let plan = session.plan(&plan_with(missing), &observed);
    assert_eq!(plan.drift, [Finding::ProxyServiceMissing { service: "gatehouse/proxy".into() }]);

    fake.apply_resource(&service("gatehouse", "proxy").service_type("NodePort").port("http", 80, Some(31999)).build())
        .expect("apply service");
    let wrong = cluster.proxy_view(&svc).await.expect("read service");
    let plan = session.plan(&plan_with(wrong), &observed);
    assert_eq!(
        plan.drift,
        [Finding::ProxyNodePort { service: "gatehouse/proxy".into(), expected: NODE_PORT, found: vec![31999] }]
    );
    assert!(matches!(plan.blocked, Some(Blocked::NodePortMismatch { handshake: 30080, .. })));
    let text = plan.render_text();
    assert!(
        text.contains("  ! proxy Service gatehouse/proxy: expected nodePort 30080, found nodePort 31999\n"),
        "{text}"
    );
    let before = calls.snapshot();
    let applied = session.apply(&plan, &Leadership::always()).await.expect("apply");
    assert_eq!(calls.snapshot().since(&before).writes(), 0, "a blocked plan writes nothing");
    let message = applied.into_result().expect_err("blocked").to_string();
    assert!(
        message.starts_with("refusing to write: the handshake's NodePort is 30080 but the proxy Service gatehouse/proxy has nodePort 31999"),
        "{message}"
    );

    fake.apply_resource(
        &service("gatehouse", "proxy").service_type("NodePort").port("http", 80, Some(i32::from(NODE_PORT))).build(),
    )
    .expect("apply service");
    let right = cluster.proxy_view(&svc).await.expect("read service");
    let plan = session.plan(&plan_with(right), &observed);
    assert!(plan.drift.is_empty() && plan.blocked.is_none(), "{:?} {:?}", plan.drift, plan.blocked);
    tg.cleanup().await;
}
