//! `watch` at 1,000 nodes, against the in-memory Kubernetes API server and the AWS emulator
//! (through a fault proxy that records every request): ten minutes' worth of Node heartbeats cost
//! no AWS call and wake no reconcile, an eligibility change costs one read and one write (and a
//! proxy pod going not ready takes its node out within a second), an idle resync three reads,
//! and under persistent throttling the reconciles follow the backoff whatever
//! events arrive.
//!
//! Heartbeats are driven fast, not in real time: a kubelet updates its Node's status about every
//! 5 minutes when nothing changes (`nodeStatusReportFrequency`), so 1,000 nodes send about 3.3
//! updates a second, 2,000 in 10 minutes; the test sends those 2,000 updates, each changing only
//! `lastHeartbeatTime`, as fast as the fake API server takes them. They go through the real watch
//! stream, and a cordon sent after them (ordered behind them on the same watch) shows they were
//! all read.

use std::time::Duration;

use gatehouse_provisioner::metrics::CallSnapshot;
use gatehouse_provisioner::model::TARGET_HEALTHY_CONDITION;
use gatehouse_provisioner::watch::Backoff;
use gatehouse_tests::fault_proxy::{Call, Fault, FaultProxy, On, When};
use gatehouse_tests::kube_api::fixtures::{node, service};
use gatehouse_tests::kube_api::fleet::ProxyFleet;
use gatehouse_tests::kube_api::{FakeApiServer, ResourceKind};
use gatehouse_tests::provisioner_replica::{Replica, ReplicaSpec, eventually, wait_for};
use gatehouse_tests::provisioner_support::{
    NODE_PORT, TargetGroupFixture, endpoint, nth_node_ip as ip, nth_node_name as name, nth_node_target as target,
};
use k8s_openapi::api::core::v1::Node;
use tokio::time::Instant;

const NODES: usize = 1000;

/// The resync interval of the replica: longer than the throttled window below, so that at most
/// one resync falls into it.
const RESYNC: Duration = Duration::from_secs(25);

/// A kubelet's status update with nothing changed but the heartbeat time.
fn heartbeat(i: usize, beat: u64) -> Node {
    let mut n = node(&name(i), &ip(i)).build();
    let at = k8s_openapi::jiff::Timestamp::from_second(1_800_000_000 + i64::try_from(beat).unwrap_or(0)).expect("time");
    for c in n.status.get_or_insert_default().conditions.get_or_insert_default() {
        c.last_heartbeat_time = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(at));
    }
    n
}

/// What a node's eligibility change costs: one DescribeTargetHealth, one DeregisterTargets.
fn one_read_one_write() -> CallSnapshot {
    CallSnapshot(
        [
            (("DescribeTargetHealth".to_owned(), "ok".to_owned()), 1),
            (("DeregisterTargets".to_owned(), "ok".to_owned()), 1),
        ]
        .into(),
    )
}

fn counts(s: &CallSnapshot) -> Vec<(String, u64)> {
    s.0.iter().map(|((op, outcome), n)| (format!("{op}/{outcome}"), *n)).collect()
}

#[tokio::test]
async fn at_1000_nodes_heartbeats_cost_no_aws_call_a_change_one_write_and_throttling_follows_the_backoff() {
    let started = Instant::now();
    let tg = TargetGroupFixture::ip().await;
    let fake = FakeApiServer::start().await;
    fake.apply_resource(
        &service("gatehouse", "proxy").service_type("NodePort").port("http", 80, Some(i32::from(NODE_PORT))).build(),
    )
    .expect("service");
    let fleet = ProxyFleet::new(&fake, "gatehouse", "proxy", Some(TARGET_HEALTHY_CONDITION));
    for i in 0..NODES {
        fake.apply_resource(&heartbeat(i, 0)).expect("node");
        fleet.start(&name(i), "10.1.0.1").expect("pod");
    }
    fleet.sync().expect("fleet");
    let aws = FaultProxy::start(&endpoint()).await;
    let spec = ReplicaSpec {
        resync: RESYNC,
        // One attempt per AWS call: each failed reconcile is then exactly one request, so the
        // requests are the controller's schedule (the provisioner's own SDK setting makes each
        // failed reconcile 5 requests, within about 3 s).
        sdk_attempts: Some(1),
        backoff: Backoff::DEFAULT,
        ..ReplicaSpec::new("replica-1")
    };
    let replica = Replica::start_via(spec, &tg, &fake.url(), Some(&aws)).await;
    wait_for(&tg, Duration::from_secs(60), "1,000 nodes registered", |r| r.len() == NODES).await;
    eprintln!("1,000 nodes registered {:.1?} after the start", started.elapsed());
    eventually(Duration::from_secs(60), "every readiness gate True", || {
        fake.list(ResourceKind::Pod).iter().all(|p| {
            p.pointer("/status/conditions")
                .and_then(|c| c.as_array())
                .is_some_and(|cs| cs.iter().any(|c| c["type"] == TARGET_HEALTHY_CONDITION && c["status"] == "True"))
        })
    })
    .await;
    eprintln!("1,000 nodes registered and gated {:.1?} after the start", started.elapsed());
    // The kubelets see the gates True: every pod Ready, every endpoint ready (1,000 pod updates
    // and the EndpointSlices; the plan's inputs do not change, so this costs no AWS call).
    fleet.sync().expect("fleet");

    // The measurements below start right after a resync, so that none falls inside them (they
    // take a few seconds; the next resync is RESYNC away) and every call is accounted for.
    let full = || replica.reconciles_of("full");
    let full_before = full();
    eventually(RESYNC + Duration::from_secs(10), "a resync", || full() > full_before).await;

    // --- 10 minutes of heartbeats: no AWS call, no reconcile.
    let calls = &replica.metrics.api_calls;
    let (before, full_before, cluster_before) = (calls.snapshot(), full(), replica.reconciles_of("cluster"));
    let beats = Instant::now();
    for beat in 1..=2 {
        for i in 0..NODES {
            fake.apply_resource(&heartbeat(i, beat)).expect("heartbeat");
        }
    }
    let sent = beats.elapsed();
    // Behind them on the watch: a real change, proof that the heartbeats were all read. It costs
    // one read and one write.
    fake.apply_resource(&node(&name(1), &ip(1)).unschedulable(true).build()).expect("cordon");
    wait_for(&tg, Duration::from_secs(10), "the cordoned node deregistered", |r| {
        !r.contains(&format!("{}:{NODE_PORT}", ip(1)))
    })
    .await;
    let during = calls.snapshot().since(&before);
    assert_eq!(full(), full_before, "no resync during the heartbeats (they took {sent:.1?})");
    assert_eq!(during, one_read_one_write(), "2,000 heartbeats in {sent:.1?}, then a cordon: {:?}", counts(&during));
    // The reconcile is counted once it has also set the cordoned node's gate: wait for that.
    eventually(Duration::from_secs(10), "the cordon's reconcile counted", || {
        replica.reconciles_of("cluster") > cluster_before
    })
    .await;
    assert_eq!(
        replica.reconciles_of("cluster") - cluster_before,
        1,
        "only the cordon woke the controller:\n{}",
        replica.metrics.encode()
    );
    eprintln!("2,000 heartbeats in {sent:.1?}: 0 AWS calls; the cordon behind them: {:?}", counts(&during));

    // --- An eligibility change alone: one read, one write.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = calls.snapshot();
    fake.apply_resource(&node(&name(2), &ip(2)).unschedulable(true).build()).expect("cordon");
    wait_for(&tg, Duration::from_secs(10), "node-0002 deregistered", |r| {
        !r.contains(&format!("{}:{NODE_PORT}", ip(2)))
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let change = calls.snapshot().since(&before);
    assert_eq!(full(), full_before, "no resync during the change");
    assert_eq!(change, one_read_one_write(), "{:?}", counts(&change));

    // --- A proxy pod fails its readiness probe: its node is out within a second. Timed by the
    // DeregisterTargets reaching the emulator (the fault proxy records it), without reading the
    // whole group meanwhile: parsing 1,000 targets in this debug build would take the CPU the
    // provisioner needs.
    let before = calls.snapshot();
    fleet.set_containers_ready(&name(4), false).expect("not ready");
    fleet.sync().expect("fleet");
    // From when the EndpointSlice says so (the fake kubelet's pass over 1,000 pods above blocks
    // this single-threaded test for a few hundred ms; a real kubelet is not the provisioner).
    let changed_at = std::time::Instant::now();
    let deregistered = |c: &Call| c.at > changed_at && c.succeeded() && c.targets().contains(&target(4));
    eventually(Duration::from_secs(10), "node-0004 deregistered", || {
        aws.calls_of("DeregisterTargets").iter().any(deregistered)
    })
    .await;
    let took = aws.calls_of("DeregisterTargets").iter().find(|c| deregistered(c)).map(|c| c.at - changed_at);
    let took = took.expect("the deregistration");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!tg.registered().await.contains(&target(4)));
    let not_ready = calls.snapshot().since(&before);
    assert_eq!(full(), full_before, "no resync during the change");
    assert_eq!(not_ready, one_read_one_write(), "{:?}", counts(&not_ready));
    assert!(took < Duration::from_secs(1), "node-0004 deregistered {took:?} after its proxy went not ready");
    eprintln!("a proxy pod went not ready: its node deregistered {took:.2?} later, {:?}", counts(&not_ready));

    // --- Idle until the next resync: it reads the target group, its VPC and its health, and
    // nothing else happens.
    let (before, full_before) = (calls.snapshot(), full());
    let idle = Instant::now();
    eventually(RESYNC + Duration::from_secs(10), "the next resync", || full() > full_before).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let resync = calls.snapshot().since(&before);
    let reads = |ops: &[&str]| CallSnapshot(ops.iter().map(|op| (((*op).to_owned(), "ok".to_owned()), 1)).collect());
    assert_eq!(
        resync,
        reads(&["DescribeTargetGroups", "DescribeVpcs", "DescribeTargetHealth"]),
        "{:?}",
        counts(&resync)
    );
    eprintln!("idle for {:.1?} up to and through a resync: {:?}", idle.elapsed(), counts(&resync));

    // --- Persistent throttling of DescribeTargetHealth, and a change every 250 ms meanwhile.
    aws.forget();
    aws.inject(On::action("DescribeTargetHealth"), When::Always, Fault::Throttle);
    let groups_before = calls.snapshot().of("DescribeTargetGroups");
    let throttled_from = std::time::Instant::now();
    let window = Duration::from_secs(20);
    let mut toggle = 0;
    while throttled_from.elapsed() < window {
        toggle += 1;
        let cordoned = toggle % 2 == 1;
        fake.apply_resource(&node(&name(3), &ip(3)).unschedulable(cordoned).build()).expect("churn");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let attempts: Vec<std::time::Instant> = aws.calls_of("DescribeTargetHealth").iter().map(|c| c.at).collect();
    let gaps: Vec<Duration> = attempts.windows(2).map(|w| w[1] - w[0]).collect();
    eprintln!(
        "throttled for {window:?} with a change every 250 ms: {} DescribeTargetHealth attempts, gaps {gaps:.2?}",
        attempts.len()
    );
    // Equal jitter from 1 s: the n-th wait is between 2^(n-1)/2 and 2^(n-1) seconds (plus the
    // time a reconcile takes), and new events never cut it short. Resyncs fold into the next
    // attempt too.
    for (n, gap) in gaps.iter().enumerate() {
        let full = Duration::from_secs(1 << n.min(5)).min(Duration::from_secs(60));
        assert!(
            *gap >= full / 2 - Duration::from_millis(20),
            "wait {} was {gap:?}, below {:?}: {gaps:?}",
            n + 1,
            full / 2
        );
        assert!(*gap <= full + Duration::from_millis(700), "wait {} was {gap:?}, above {full:?}: {gaps:?}", n + 1);
    }
    assert!((5..=6).contains(&attempts.len()), "{} attempts in {window:?}: {gaps:?}", attempts.len());
    // The session survives the failures: the target group is read again only by a resync (at
    // most one falls into the window), never because a call failed.
    let resync_reads = calls.snapshot().of("DescribeTargetGroups") - groups_before;
    assert!(resync_reads <= 1, "{resync_reads} DescribeTargetGroups during the throttling");

    // The throttling ends: the next attempt converges.
    aws.clear();
    fake.apply_resource(&node(&name(3), &ip(3)).unschedulable(true).build()).expect("cordon");
    wait_for(&tg, Duration::from_secs(90), "converged after the throttling", |r| {
        !r.contains(&format!("{}:{NODE_PORT}", ip(3)))
    })
    .await;
    replica.shutdown().await;
    tg.cleanup().await;
    eprintln!("the 1,000-node test took {:.1?}", started.elapsed());
}
