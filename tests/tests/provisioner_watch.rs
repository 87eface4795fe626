//! `watch` against the in-memory Kubernetes API server and the AWS emulator: a node that joins
//! is registered within a second, a cordoned node is deregistered, only the lease holder writes,
//! the standby takes over when the holder releases the lease, and /healthz and /metrics answer.
//! The proxy runs on every node ([`ProxyFleet`]: a pod per node, listed by the proxy Service's
//! EndpointSlices), since a node is a target only while a ready proxy runs on it.
//!
//! Under faults (AWS calls through `gatehouse_tests::fault_proxy`, which records what reached the
//! emulator): Kubernetes API errors, watch disconnects, a forced re-list and an empty node list
//! never deregister a node; AWS faults mid-reconcile are retried and never deregister a healthy
//! node; a failed reconcile keeps its session, so its retries do not re-read the target group;
//! with `--cluster`, the group is found by its tags, again when the module replaced it; and when the holder loses the lease to API errors (not a release), the two replicas never
//! write at the same time nor undo each other's writes. `sync` under faults: provisioner_faults.rs.
//! At 1,000 nodes: provisioner_scale.rs; a hung leader: provisioner_leader.rs; the proxy's
//! readiness and the readiness gate: provisioner_gates.rs.

use std::collections::BTreeSet;
use std::time::Duration;

use gatehouse_tests::fault_proxy::{Call, Fault, FaultProxy, On, When};
use gatehouse_tests::kube_api::fixtures::{node, service};
use gatehouse_tests::kube_api::fleet::ProxyFleet;
use gatehouse_tests::kube_api::{FakeApiServer, ResourceKind};
use gatehouse_tests::provisioner_replica::{LEASE, Replica, ReplicaSpec, wait_for};
use gatehouse_tests::provisioner_support::{NODE_PORT, TargetGroupFixture, endpoint};
use k8s_openapi::api::coordination::v1::Lease;
use tokio::time::Instant;

fn target(ip: &str) -> String {
    format!("{ip}:{NODE_PORT}")
}

fn proxy_service() -> k8s_openapi::api::core::v1::Service {
    service("gatehouse", "proxy").service_type("NodePort").port("http", 80, Some(i32::from(NODE_PORT))).build()
}

/// The proxy Service, and a Ready node with a ready proxy pod for each `(name, ip)`.
fn cluster(fake: &FakeApiServer, nodes: &[(&str, &str)]) -> ProxyFleet {
    fake.apply_resource(&proxy_service()).expect("service");
    let fleet = ProxyFleet::new(fake, "gatehouse", "proxy", None);
    for (name, ip) in nodes {
        join(fake, &fleet, name, ip);
    }
    fleet
}

/// A node joins and its proxy pod starts, ready.
fn join(fake: &FakeApiServer, fleet: &ProxyFleet, name: &str, ip: &str) {
    fake.apply_resource(&node(name, ip).build()).expect("node");
    fleet.start(name, "10.1.0.1").expect("proxy pod");
    fleet.sync().expect("fleet");
}

#[tokio::test]
async fn joined_node_is_registered_within_a_second_and_cordoned_node_deregistered() {
    let tg = TargetGroupFixture::ip().await;
    let fake = FakeApiServer::start().await;
    let fleet = cluster(&fake, &[("node-a", "10.42.0.11"), ("node-b", "10.42.0.12")]);
    let replica = Replica::start(ReplicaSpec::new("replica-1"), &tg, &fake).await;

    wait_for(&tg, Duration::from_secs(15), "initial sync", |r| r.len() == 2).await;

    join(&fake, &fleet, "node-c", "10.42.0.13");
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
        r#"gatehouse_provisioner_reconciles_total{result="ok",work="full"}"#,
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
    let fleet = cluster(&fake, &[("node-a", "10.42.0.11"), ("node-b", "10.42.0.12")]);
    let one = Replica::start(ReplicaSpec::new("replica-1"), &tg, &fake).await;
    let two = Replica::start(ReplicaSpec::new("replica-2"), &tg, &fake).await;

    wait_for(&tg, Duration::from_secs(15), "initial sync", |r| r.len() == 2).await;
    join(&fake, &fleet, "node-c", "10.42.0.13");
    wait_for(&tg, Duration::from_secs(5), "registering node-c", |r| r.len() == 3).await;

    let lease: Lease = fake.get_resource(Some("gatehouse"), LEASE).expect("lease");
    let holder = lease.spec.and_then(|s| s.holder_identity).expect("held");
    let (leader, standby) = if holder == "replica-1" { (one, two) } else { (two, one) };
    assert!(leader.writes() >= 2, "the holder registered the nodes: {:?}", leader.metrics.api_calls.snapshot());
    assert_eq!(standby.writes(), 0, "the standby never writes: {:?}", standby.metrics.api_calls.snapshot());
    assert_eq!((leader.metrics.leader.get(), standby.metrics.leader.get()), (1, 0));
    assert!(standby.get("/healthz").await.contains("ok (standby)"));

    // The holder stops (SIGTERM) and releases the lease: the standby takes over at its next
    // round (every 500 ms) and handles the next change.
    leader.shutdown().await;
    join(&fake, &fleet, "node-d", "10.42.0.14");
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
    let _fleet = cluster(&fake, &[("node-a", "10.42.0.11")]);
    let replica =
        Replica::start(ReplicaSpec { resync: Duration::from_millis(500), ..ReplicaSpec::new("replica-1") }, &tg, &fake)
            .await;
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

fn reconciles(replica: &Replica, result: &str) -> u64 {
    replica.reconciles(result)
}

/// The RegisterTargets/DeregisterTargets requests that reached the emulator.
fn writes(proxy: &FaultProxy) -> Vec<Call> {
    proxy.calls().into_iter().filter(|c| c.action.ends_with("Targets") && c.reached_upstream).collect()
}

#[tokio::test]
async fn kubernetes_api_errors_watch_disconnects_and_an_empty_node_list_never_deregister() {
    let tg = TargetGroupFixture::ip().await;
    let aws = FaultProxy::start(&endpoint()).await;
    let fake = FakeApiServer::start().await;
    let fleet = cluster(&fake, &[("node-a", "10.42.0.11"), ("node-b", "10.42.0.12"), ("node-c", "10.42.0.13")]);
    for ip in ["10.42.0.11", "10.42.0.12", "10.42.0.13"] {
        // Registered already, as after a restart of the provisioner.
        tg.register_directly(ip, NODE_PORT).await;
    }
    let three = BTreeSet::from([target("10.42.0.11"), target("10.42.0.12"), target("10.42.0.13")]);

    // The first Node lists fail: nothing is reconciled until one succeeds.
    fake.inject_error(ResourceKind::Node, 500, 2);
    let spec = ReplicaSpec { resync: Duration::from_millis(300), ..ReplicaSpec::new("replica-1") };
    let replica = Replica::start_via(spec, &tg, &fake.url(), Some(&aws)).await;
    let started = Instant::now();
    while reconciles(&replica, "ok") < 2 {
        assert!(started.elapsed() < Duration::from_secs(15), "no reconcile after the Node list recovered");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(writes(&aws).is_empty(), "{:#?}", writes(&aws));

    // The watch breaks and cannot come back for a while (500s), then must re-list (410): the
    // periodic resyncs keep reconciling from the last known nodes, and change nothing.
    let ok_before = reconciles(&replica, "ok");
    fake.inject_error(ResourceKind::Node, 500, 2);
    fake.break_watches();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    fake.inject_error(ResourceKind::Node, 410, 1);
    fake.break_watches();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(reconciles(&replica, "ok") >= ok_before + 3, "resyncs ran during the outage");
    assert!(writes(&aws).is_empty(), "{:#?}", writes(&aws));
    assert_eq!(tg.registered().await, three);

    // The watch is back: a change is seen.
    join(&fake, &fleet, "node-d", "10.42.0.14");
    wait_for(&tg, Duration::from_secs(15), "registering node-d after the outage", |r| {
        r.contains(&target("10.42.0.14"))
    })
    .await;

    // Every node disappears from the API: the deregistrations are refused, resync after resync.
    for name in ["node-a", "node-b", "node-c", "node-d"] {
        fake.delete(ResourceKind::Node, None, name).expect("delete node");
    }
    let started = Instant::now();
    while reconciles(&replica, "held_back") < 3 {
        assert!(started.elapsed() < Duration::from_secs(5), "the empty node list was not refused");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(aws.calls_of("DeregisterTargets").is_empty(), "{:#?}", aws.calls_of("DeregisterTargets"));
    assert_eq!(tg.registered().await.len(), 4);
    replica.shutdown().await;
    tg.cleanup().await;
}

#[tokio::test]
async fn aws_faults_mid_reconcile_are_retried_and_never_deregister_a_healthy_node() {
    let tg = TargetGroupFixture::ip().await;
    let aws = FaultProxy::start(&endpoint()).await;
    let fake = FakeApiServer::start().await;
    let fleet = cluster(&fake, &[("node-a", "10.42.0.11"), ("node-b", "10.42.0.12")]);
    let replica = Replica::start_via(ReplicaSpec::new("replica-1"), &tg, &fake.url(), Some(&aws)).await;
    wait_for(&tg, Duration::from_secs(15), "initial sync", |r| r.len() == 2).await;

    // For 4 s every read fails (longer than the SDK's 5 attempts take: at most 0.2 + 0.4 + 0.8 +
    // 1.6 s of backoff, so the first reconcile fails for sure), and for 5 s every write is
    // throttled: node-c joins meanwhile and node-b is cordoned.
    let (reads_fail, writes_fail) = (Duration::from_secs(4), Duration::from_secs(5));
    aws.inject(On::action("DescribeTargetHealth"), When::For(reads_fail), Fault::InternalFailure);
    aws.inject(On::action("DescribeTargetGroups"), When::For(reads_fail), Fault::Drop);
    aws.inject(On::action("RegisterTargets"), When::For(writes_fail), Fault::Throttle);
    aws.inject(On::action("DeregisterTargets"), When::For(writes_fail), Fault::Throttle);
    let faults_from = std::time::Instant::now();
    join(&fake, &fleet, "node-c", "10.42.0.13");
    fake.apply_resource(&node("node-b", "10.42.0.12").unschedulable(true).build()).expect("cordon");
    let took = wait_for(&tg, Duration::from_secs(20), "converging after the faults", |r| {
        *r == BTreeSet::from([target("10.42.0.11"), target("10.42.0.13")])
    })
    .await;
    assert!(reconciles(&replica, "error") >= 1, "reconciles failed during the faults");
    for c in aws.calls_of("DeregisterTargets") {
        assert_eq!(c.targets(), [target("10.42.0.12")], "only the cordoned node is deregistered: {c:?}");
    }
    assert!(
        writes(&aws).iter().filter(|c| c.at >= faults_from && c.succeeded()).all(|c| c.at >= faults_from + writes_fail),
        "nothing was written while the faults lasted"
    );
    eprintln!(
        "converged {took:.2?} after the faults began; {} reconciles failed; {} AWS requests",
        reconciles(&replica, "error"),
        aws.calls().len()
    );
    replica.shutdown().await;
    tg.cleanup().await;
}

#[tokio::test]
async fn a_failed_reconcile_keeps_its_session_and_retries_read_only_target_health() {
    let tg = TargetGroupFixture::ip().await;
    let aws = FaultProxy::start(&endpoint()).await;
    let fake = FakeApiServer::start().await;
    let _fleet = cluster(&fake, &[("node-a", "10.42.0.11")]);
    // From the start every DescribeTargetHealth is throttled: the first reconcile (a full one,
    // as every term begins) opens the session and fails at the health read; so does each retry.
    aws.inject(On::action("DescribeTargetHealth"), When::Always, Fault::Throttle);
    let spec = ReplicaSpec {
        sdk_attempts: Some(1),
        backoff: gatehouse_provisioner::watch::Backoff {
            min: Duration::from_millis(200),
            max: Duration::from_millis(400),
        },
        ..ReplicaSpec::new("replica-1")
    };
    let replica = Replica::start_via(spec, &tg, &fake.url(), Some(&aws)).await;
    let started = Instant::now();
    while reconciles(&replica, "error") < 5 {
        assert!(started.elapsed() < Duration::from_secs(15), "5 failed reconciles within 15 s");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let health_reads = aws.calls_of("DescribeTargetHealth").len();
    let group_reads = aws.calls_of("DescribeTargetGroups").len();
    assert!(health_reads >= 5, "{health_reads} DescribeTargetHealth attempts");
    assert_eq!(group_reads, 1, "the target group is read once, not again with each of {health_reads} retries");

    // The throttling ends: the next retry converges, still on the same session.
    aws.clear();
    wait_for(&tg, Duration::from_secs(5), "registered after the throttling", |r| r.len() == 1).await;
    assert_eq!(aws.calls_of("DescribeTargetGroups").len(), 1);
    replica.shutdown().await;
    tg.cleanup().await;
}

#[tokio::test]
async fn with_cluster_watch_finds_the_tagged_group_and_follows_it_when_the_module_replaces_it() {
    let old = TargetGroupFixture::ip().await;
    let name = gatehouse_tests::provisioner_support::unique_name("prod");
    old.tag_for_cluster(&name).await;
    let fake = FakeApiServer::start().await;
    let _fleet = cluster(&fake, &[("node-a", "10.42.0.11"), ("node-b", "10.42.0.12")]);
    let spec = ReplicaSpec {
        cluster: Some(name.clone()),
        resync: Duration::from_millis(500),
        ..ReplicaSpec::new("replica-1")
    };
    let replica = Replica::start(spec, &old, &fake).await;
    wait_for(&old, Duration::from_secs(15), "registered in the tagged group", |r| r.len() == 2).await;

    // Terraform replaces the group (a changed port, say): the new one carries the tags, the old
    // one goes. The next resync finds the old one gone and the new one by its tags.
    let new = TargetGroupFixture::ip().await;
    new.tag_for_cluster(&name).await;
    old.elb.delete_target_group().target_group_arn(&old.arn).send().await.expect("DeleteTargetGroup");
    let took = wait_for(&new, Duration::from_secs(15), "registered in the new group", |r| r.len() == 2).await;
    eprintln!("the replaced target group was found by its tags and filled {took:.2?} after the old one went");
    replica.shutdown().await;
    old.cleanup().await;
    new.cleanup().await;
}

#[tokio::test]
async fn when_the_holder_loses_the_lease_to_api_errors_the_replicas_never_write_at_once() {
    let tg = TargetGroupFixture::ip().await;
    let fake = FakeApiServer::start().await;
    let fleet = cluster(&fake, &[("node-a", "10.42.0.11"), ("node-b", "10.42.0.12")]);
    let (aws_one, aws_two) = (FaultProxy::start(&endpoint()).await, FaultProxy::start(&endpoint()).await);
    // replica-1 reaches the Kubernetes API through a proxy, to lose its Lease calls alone.
    let kube_one = FaultProxy::start(&fake.url()).await;
    let one = Replica::start_via(ReplicaSpec::new("replica-1"), &tg, &kube_one.url(), Some(&aws_one)).await;
    wait_for(&tg, Duration::from_secs(15), "initial sync", |r| r.len() == 2).await;
    assert_eq!(one.metrics.leader.get(), 1);
    let two = Replica::start_via(ReplicaSpec::new("replica-2"), &tg, &fake.url(), Some(&aws_two)).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    join(&fake, &fleet, "node-c", "10.42.0.13");
    wait_for(&tg, Duration::from_secs(5), "registering node-c", |r| r.len() == 3).await;

    // replica-1's Lease calls fail from now on (its watches still work); node-d joins.
    kube_one.inject(On::path("/leases/"), When::Always, Fault::Drop);
    join(&fake, &fleet, "node-d", "10.42.0.14");
    // Sampled every 20 ms: never two leaders; replica-2 takes over within a lease duration and
    // a renew period or two.
    let cut = Instant::now();
    let takeover = loop {
        let leaders = (one.metrics.leader.get(), two.metrics.leader.get());
        assert_ne!(leaders, (1, 1), "two leaders at once, {:?} after the cut", cut.elapsed());
        if leaders == (0, 1) {
            break std::time::Instant::now();
        }
        assert!(cut.elapsed() < Duration::from_secs(10), "no takeover within 10s: {leaders:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    eprintln!("replica-2 took over {:.2?} after replica-1's Lease calls began to fail", cut.elapsed());
    wait_for(&tg, Duration::from_secs(5), "node-d registered", |r| r.contains(&target("10.42.0.14"))).await;

    // The new holder handles the next changes; replica-1, whose Lease calls work again, stays
    // standby.
    fake.apply_resource(&node("node-a", "10.42.0.11").unschedulable(true).build()).expect("cordon");
    wait_for(&tg, Duration::from_secs(5), "deregistering node-a", |r| !r.contains(&target("10.42.0.11"))).await;
    kube_one.clear();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    join(&fake, &fleet, "node-e", "10.42.0.15");
    wait_for(&tg, Duration::from_secs(5), "registering node-e", |r| r.contains(&target("10.42.0.15"))).await;
    assert_eq!(one.metrics.leader.get(), 0, "replica-1 stays standby");
    let want: BTreeSet<String> = ["10.42.0.12", "10.42.0.13", "10.42.0.14", "10.42.0.15"].map(target).into();
    assert_eq!(tg.registered().await, want);

    // From the recorded writes: every write of replica-1 came before every write of replica-2
    // (replica-1's before the takeover), and no target went back and forth (each registered once;
    // only node-a deregistered, once).
    let (w1, w2) = (writes(&aws_one), writes(&aws_two));
    let last_one = w1.iter().map(|c| c.at).max().expect("replica-1 wrote");
    assert!(last_one < takeover && w2.iter().all(|c| c.at > last_one), "{w1:#?}\n{w2:#?}");
    let all: Vec<&Call> = w1.iter().chain(&w2).collect();
    let mut registered: Vec<String> =
        all.iter().filter(|c| c.action == "RegisterTargets").flat_map(|c| c.targets()).collect();
    registered.sort();
    let once: Vec<String> = ["10.42.0.11", "10.42.0.12", "10.42.0.13", "10.42.0.14", "10.42.0.15"].map(target).into();
    assert_eq!(registered, once, "{all:#?}");
    let deregistered: Vec<String> =
        all.iter().filter(|c| c.action == "DeregisterTargets").flat_map(|c| c.targets()).collect();
    assert_eq!(deregistered, [target("10.42.0.11")], "{all:#?}");
    one.shutdown().await;
    two.shutdown().await;
    tg.cleanup().await;
}
