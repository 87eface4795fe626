//! `watch` against the in-memory Kubernetes API server and the AWS emulator: a node that joins
//! is registered within a second, a cordoned node is deregistered, only the lease holder writes,
//! the standby takes over when the holder releases the lease, and /healthz and /metrics answer.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

use gatehouse_provisioner::aws::{Elb, load_sdk_config};
use gatehouse_provisioner::diff::Policy;
use gatehouse_provisioner::drift::Expected;
use gatehouse_provisioner::handshake::TargetType;
use gatehouse_provisioner::kube::ServiceRef;
use gatehouse_provisioner::lease::LeaseConfig;
use gatehouse_provisioner::metrics::Metrics;
use gatehouse_provisioner::nodes::Selector;
use gatehouse_provisioner::sync::Settings;
use gatehouse_provisioner::watch::{self, WatchConfig};
use gatehouse_tests::kube_api::FakeApiServer;
use gatehouse_tests::kube_api::fixtures::{node, service};
use gatehouse_tests::provisioner_support::{NODE_PORT, TargetGroupFixture};
use k8s_openapi::api::coordination::v1::Lease;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::Instant;

const LEASE: &str = "gatehouse-provisioner";

/// One running `watch` replica.
struct Replica {
    metrics: Metrics,
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), gatehouse_provisioner::sync::Error>>,
}

impl Replica {
    async fn start(identity: &str, tg: &TargetGroupFixture, fake: &FakeApiServer) -> Self {
        Self::start_with(identity, tg, fake, Duration::from_secs(300)).await
    }

    async fn start_with(identity: &str, tg: &TargetGroupFixture, fake: &FakeApiServer, resync: Duration) -> Self {
        let metrics = Metrics::default();
        let sdk = load_sdk_config(None).await;
        let elb = Elb::new(&sdk, metrics.api_calls.clone()).expect("region configured");
        let config = WatchConfig {
            settings: Settings {
                expected: Expected {
                    target_group_arn: tg.arn.clone(),
                    target_group_name: Some(tg.name.clone()),
                    node_port: NODE_PORT,
                    target_type: Some(TargetType::Ip),
                },
                selector: Selector::default(),
                policy: Policy::default(),
                deregistration_delay: Some(Duration::ZERO),
            },
            proxy_service: Some(ServiceRef { namespace: "gatehouse".into(), name: "proxy".into() }),
            debounce: Duration::from_millis(100),
            resync,
            lease: LeaseConfig {
                namespace: "gatehouse".into(),
                name: LEASE.into(),
                identity: identity.into(),
                duration: Duration::from_secs(3),
            },
            shutdown_timeout: Duration::from_secs(5),
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind metrics");
        let addr = listener.local_addr().expect("addr");
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(watch::run(elb, fake.client(), config, metrics.clone(), listener, async move {
            let _ = stopped.await;
        }));
        Self { metrics, addr, stop: Some(stop), task }
    }

    fn writes(&self) -> u64 {
        self.metrics.api_calls.snapshot().writes()
    }

    /// Stops like SIGTERM does; the run must end cleanly and in bounded time.
    async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let result = tokio::time::timeout(Duration::from_secs(10), self.task).await.expect("watch stops within 10s");
        result.expect("task").expect("watch ends without error");
    }

    async fn get(&self, path: &str) -> String {
        let mut stream = tokio::net::TcpStream::connect(self.addr).await.expect("connect");
        stream
            .write_all(format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n").as_bytes())
            .await
            .expect("request");
        let mut response = String::new();
        stream.read_to_string(&mut response).await.expect("response");
        response
    }
}

/// Polls the target group until `want` holds; bounded.
async fn wait_for(
    tg: &TargetGroupFixture,
    within: Duration,
    what: &str,
    want: impl Fn(&BTreeSet<String>) -> bool,
) -> Duration {
    let started = Instant::now();
    loop {
        let now = tg.registered().await;
        if want(&now) {
            return started.elapsed();
        }
        assert!(started.elapsed() < within, "{what} did not happen within {within:?}; registered: {now:?}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

fn target(ip: &str) -> String {
    format!("{ip}:{NODE_PORT}")
}

fn proxy_service() -> k8s_openapi::api::core::v1::Service {
    service("gatehouse", "proxy").service_type("NodePort").port("http", 80, Some(i32::from(NODE_PORT))).build()
}

#[tokio::test]
async fn joined_node_is_registered_within_a_second_and_cordoned_node_deregistered() {
    let tg = TargetGroupFixture::ip().await;
    let fake = FakeApiServer::start().await;
    fake.apply_resource(&proxy_service()).expect("service");
    fake.apply_resource(&node("node-a", "10.42.0.11").build()).expect("node");
    fake.apply_resource(&node("node-b", "10.42.0.12").build()).expect("node");
    let replica = Replica::start("replica-1", &tg, &fake).await;

    wait_for(&tg, Duration::from_secs(15), "initial sync", |r| r.len() == 2).await;

    fake.apply_resource(&node("node-c", "10.42.0.13").build()).expect("node");
    let took = wait_for(&tg, Duration::from_secs(5), "registering node-c", |r| r.contains(&target("10.42.0.13"))).await;
    assert!(took < Duration::from_secs(1), "node-c registered after {took:?}, not within a second");

    fake.apply_resource(&node("node-a", "10.42.0.11").unschedulable(true).build()).expect("cordon");
    wait_for(&tg, Duration::from_secs(5), "deregistering cordoned node-a", |r| !r.contains(&target("10.42.0.11")))
        .await;
    assert_eq!(tg.registered().await.len(), 2);

    let health = replica.get("/healthz").await;
    assert!(health.starts_with("HTTP/1.1 200") && health.contains("ok (leader)"), "{health}");
    let metrics = replica.get("/metrics").await;
    for needle in [
        r#"gatehouse_provisioner_aws_api_calls_total{operation="RegisterTargets",outcome="ok"}"#,
        r#"gatehouse_provisioner_aws_api_calls_total{operation="DeregisterTargets",outcome="ok"} 1"#,
        r#"gatehouse_provisioner_reconciles_total{result="ok"}"#,
        "gatehouse_provisioner_targets_registered 2",
        "gatehouse_provisioner_leader 1",
        "gatehouse_provisioner_drift_findings 0",
    ] {
        assert!(metrics.contains(needle), "missing {needle} in\n{metrics}");
    }

    replica.shutdown().await;
    let lease: Lease = fake.get_resource(Some("gatehouse"), LEASE).expect("lease exists");
    let holder = lease.spec.and_then(|s| s.holder_identity);
    assert_eq!(holder, None, "the lease is released on shutdown");
    tg.cleanup().await;
}

#[tokio::test]
async fn of_two_replicas_only_the_lease_holder_writes_and_the_standby_takes_over() {
    let tg = TargetGroupFixture::ip().await;
    let fake = FakeApiServer::start().await;
    fake.apply_resource(&proxy_service()).expect("service");
    fake.apply_resource(&node("node-a", "10.42.0.11").build()).expect("node");
    fake.apply_resource(&node("node-b", "10.42.0.12").build()).expect("node");
    let one = Replica::start("replica-1", &tg, &fake).await;
    let two = Replica::start("replica-2", &tg, &fake).await;

    wait_for(&tg, Duration::from_secs(15), "initial sync", |r| r.len() == 2).await;
    fake.apply_resource(&node("node-c", "10.42.0.13").build()).expect("node");
    wait_for(&tg, Duration::from_secs(5), "registering node-c", |r| r.len() == 3).await;

    let lease: Lease = fake.get_resource(Some("gatehouse"), LEASE).expect("lease");
    let holder = lease.spec.and_then(|s| s.holder_identity).expect("held");
    let (leader, standby) = if holder == "replica-1" { (one, two) } else { (two, one) };
    assert!(leader.writes() >= 2, "the holder registered the nodes: {:?}", leader.metrics.api_calls.snapshot());
    assert_eq!(standby.writes(), 0, "the standby never writes: {:?}", standby.metrics.api_calls.snapshot());
    assert_eq!((leader.metrics.leader.get(), standby.metrics.leader.get()), (1, 0));
    assert!(standby.get("/healthz").await.contains("ok (standby)"));

    // The holder stops (SIGTERM) and releases the lease: the standby takes over at its next
    // round (a third of the 3s duration) and handles the next change.
    leader.shutdown().await;
    fake.apply_resource(&node("node-d", "10.42.0.14").build()).expect("node");
    wait_for(&tg, Duration::from_secs(5), "registering node-d after failover", |r| r.contains(&target("10.42.0.14")))
        .await;
    assert!(standby.writes() >= 1);
    standby.shutdown().await;
    tg.cleanup().await;
}

#[tokio::test]
async fn periodic_resync_reports_target_group_drift_without_any_cluster_event() {
    let tg = TargetGroupFixture::ip().await;
    let fake = FakeApiServer::start().await;
    fake.apply_resource(&proxy_service()).expect("service");
    fake.apply_resource(&node("node-a", "10.42.0.11").build()).expect("node");
    let replica = Replica::start_with("replica-1", &tg, &fake, Duration::from_millis(500)).await;
    wait_for(&tg, Duration::from_secs(15), "initial sync", |r| r.len() == 1).await;
    assert_eq!(replica.metrics.drift_findings.get(), 0);

    // Terraform (or a human) changes the health check; nothing happens in the cluster.
    tg.elb
        .modify_target_group()
        .target_group_arn(&tg.arn)
        .health_check_path("/healthz")
        .send()
        .await
        .expect("ModifyTargetGroup");
    let started = Instant::now();
    while replica.metrics.drift_findings.get() != 1 {
        assert!(started.elapsed() < Duration::from_secs(5), "drift not reported by a resync within 5s");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(replica.get("/metrics").await.contains("gatehouse_provisioner_drift_findings 1"));
    assert_eq!(replica.writes(), 1, "drift is reported, never fixed; the only write was the initial registration");
    replica.shutdown().await;
    tg.cleanup().await;
}
