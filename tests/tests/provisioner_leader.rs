//! Leader election at 1,000 nodes when the holder's API server hangs (accepts its Lease requests
//! and never answers): the holder stops writing at its renew deadline, a reconcile it has in
//! flight then is cancelled before its next write, and the standby takes over and writes; sampled
//! every 20 ms, there are never two leaders, and every write of the old holder reached AWS before
//! its deadline. (Lease calls that fail fast rather than hang: provisioner_watch.rs.)

use std::time::Duration;

use gatehouse_tests::fault_proxy::{Call, Fault, FaultProxy, On, When};
use gatehouse_tests::kube_api::FakeApiServer;
use gatehouse_tests::kube_api::fixtures::{node, service};
use gatehouse_tests::kube_api::fleet::ProxyFleet;
use gatehouse_tests::provisioner_replica::{Replica, ReplicaSpec, wait_for};
use gatehouse_tests::provisioner_support::{
    NODE_PORT, TargetGroupFixture, endpoint, nth_node_ip as ip, nth_node_name as name, nth_node_target as target,
};
use tokio::time::Instant;

/// As many nodes as the budget tests use: the hung leader's reconcile in flight plans them all.
const NODES: usize = 1000;

/// The RegisterTargets/DeregisterTargets requests that reached the emulator.
fn writes(proxy: &FaultProxy) -> Vec<Call> {
    proxy.calls().into_iter().filter(|c| c.action.ends_with("Targets") && c.reached_upstream).collect()
}

#[tokio::test]
async fn a_hung_leader_never_writes_after_its_renew_deadline_while_the_standby_writes() {
    let tg = TargetGroupFixture::ip().await;
    let fake = FakeApiServer::start().await;
    fake.apply_resource(
        &service("gatehouse", "proxy").service_type("NodePort").port("http", 80, Some(i32::from(NODE_PORT))).build(),
    )
    .expect("service");
    let fleet = ProxyFleet::new(&fake, "gatehouse", "proxy", None);
    for i in 0..NODES {
        fake.apply_resource(&node(&name(i), &ip(i)).build()).expect("node");
        fleet.start(&name(i), "10.1.0.1").expect("pod");
    }
    fleet.sync().expect("fleet");
    let (aws_one, aws_two) = (FaultProxy::start(&endpoint()).await, FaultProxy::start(&endpoint()).await);
    let kube_one = FaultProxy::start(&fake.url()).await;
    let one = Replica::start_via(ReplicaSpec::new("replica-1"), &tg, &kube_one.url(), Some(&aws_one)).await;
    wait_for(&tg, Duration::from_secs(30), "initial sync", |r| r.len() == NODES).await;
    assert!(one.leads());
    let two = Replica::start_via(ReplicaSpec::new("replica-2"), &tg, &fake.url(), Some(&aws_two)).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(!two.leads());

    // replica-1's API server hangs on its Lease calls, and its AWS reads take 5 s: a change now
    // starts a reconcile that is still reading when the term ends.
    kube_one.inject(On::path("/leases/"), When::Always, Fault::Hang);
    aws_one.inject(On::action("DescribeTargetHealth"), When::Always, Fault::Delay(Duration::from_secs(5)));
    let cut = Instant::now();
    fake.apply_resource(&node(&name(3), &ip(3)).unschedulable(true).build()).expect("cordon");

    // More changes every 300 ms while the lease moves: each needs a write from whoever leads.
    let mut samples = 0;
    let mut toggles = 0;
    let mut next_change = Instant::now();
    let takeover = loop {
        let leaders = (one.leads(), two.leads());
        assert_ne!(leaders, (true, true), "two leaders at once, {:?} after the cut", cut.elapsed());
        samples += 1;
        if leaders == (false, true) {
            break Instant::now();
        }
        assert!(cut.elapsed() < Duration::from_secs(15), "no takeover within 15 s: {leaders:?}");
        if Instant::now() >= next_change {
            toggles += 1;
            fake.apply_resource(&node(&name(2), &ip(2)).unschedulable(toggles % 2 == 1).build()).expect("churn");
            next_change += Duration::from_millis(300);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    // The standby writes what is pending: node-0002 as it stands now, node-0003 out.
    fake.apply_resource(&node(&name(2), &ip(2)).build()).expect("uncordon");
    wait_for(&tg, Duration::from_secs(10), "the standby converges", |r| {
        r.len() == NODES - 1 && r.contains(&target(2)) && !r.contains(&target(3))
    })
    .await;
    for _ in 0..25 {
        assert_ne!((one.leads(), two.leads()), (true, true));
        tokio::time::sleep(Duration::from_millis(20)).await;
        samples += 1;
    }

    // Past the 5 s that replica-1's last read was held: a write it made after that would be in.
    tokio::time::sleep_until(cut + Duration::from_secs(6)).await;

    // replica-1's deadline: 2 s after the start of its last renewal that succeeded, which began
    // with a GET of the Lease that the proxy saw answered (every later one hung).
    let lease_calls = kube_one.calls();
    let renewals: Vec<&Call> = lease_calls
        .iter()
        .filter(|c| c.action.starts_with("GET ") && c.action.contains("/leases/") && c.status == Some(200))
        .collect();
    let last_renewal = renewals.last().map(|c| c.at);
    let deadline = last_renewal.map_or(cut.into_std(), |at| at.max(cut.into_std() - Duration::from_secs(1)))
        + Duration::from_secs(2);
    let (w1, w2) = (writes(&aws_one), writes(&aws_two));
    assert!(w1.iter().all(|c| c.at < deadline), "replica-1 wrote after its renew deadline: {w1:#?}");
    assert!(
        w1.iter().all(|c| c.at < cut.into_std()),
        "replica-1's in-flight reconcile was cancelled before its write: {w1:#?}"
    );
    assert!(!w2.is_empty() && w2.iter().all(|c| c.at > deadline), "the standby wrote, after the deadline: {w2:#?}");
    assert!(one.reconciles("cancelled") >= 1, "the reconcile in flight was cancelled:\n{}", one.metrics.encode());
    let took = takeover - cut;
    eprintln!(
        "replica-1 stopped leading at its renew deadline; replica-2 took over {took:.2?} after the API server hung; {samples} samples, never two leaders"
    );
    // The standby could only take over a whole lease duration after it last saw a renewal.
    assert!(took >= Duration::from_secs(2), "takeover after {took:?}");

    two.shutdown().await;
    kube_one.clear();
    aws_one.clear();
    one.shutdown().await;
    tg.cleanup().await;
}
