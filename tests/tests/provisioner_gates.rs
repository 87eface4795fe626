//! `watch` with the proxy in the picture: a node is a target only while a ready proxy runs on it
//! (the proxy Service's EndpointSlices say so), the readiness gate on each proxy pod follows its
//! node's target health, a rolling update of the proxies never has two nodes out of the ALB at
//! once, the drain hook holds a terminating proxy until the ALB has drained its node, and the
//! removal signals of Karpenter and Cluster Autoscaler take a node out at once.
//!
//! The emulators report every target `healthy` the moment it is registered and drop a
//! deregistered one at once; the fault proxy in front of them plays the ALB's health checks
//! (`initial` for a while after registering) and its deregistration delay (`draining` for a
//! while), so these tests see the states a real ALB goes through.

use std::collections::BTreeMap;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use gatehouse_provisioner::model::TARGET_HEALTHY_CONDITION;
use gatehouse_tests::fault_proxy::{AwsModel, FaultProxy};
use gatehouse_tests::kube_api::fixtures::{node, service};
use gatehouse_tests::kube_api::fleet::ProxyFleet;
use gatehouse_tests::kube_api::{FakeApiServer, ResourceKind};
use gatehouse_tests::provisioner_replica::{Replica, ReplicaSpec, eventually, wait_for};
use gatehouse_tests::provisioner_support::{NODE_PORT, TargetGroupFixture, endpoint};
use k8s_openapi::api::core::v1::Pod;
use tokio::time::Instant;

const NODES: [(&str, &str); 3] = [("node-a", "10.42.0.11"), ("node-b", "10.42.0.12"), ("node-c", "10.42.0.13")];

fn target(ip: &str) -> String {
    format!("{ip}:{NODE_PORT}")
}

/// The proxy Service and a Ready node with a proxy pod (declaring the gate when `gate`) each.
fn cluster(fake: &FakeApiServer, gate: bool) -> ProxyFleet {
    fake.apply_resource(
        &service("gatehouse", "proxy").service_type("NodePort").port("http", 80, Some(i32::from(NODE_PORT))).build(),
    )
    .expect("service");
    let fleet = ProxyFleet::new(fake, "gatehouse", "proxy", gate.then_some(TARGET_HEALTHY_CONDITION));
    for (name, ip) in NODES {
        fake.apply_resource(&node(name, ip).build()).expect("node");
        fleet.start(name, "10.1.0.1").expect("pod");
    }
    fleet.sync().expect("fleet");
    fleet
}

/// The gate condition of the proxy pod on `node`: `(status, reason)`.
fn gate(fake: &FakeApiServer, fleet: &ProxyFleet, node: &str) -> Option<(String, String)> {
    let pod: Pod = fake.get_resource(Some("gatehouse"), &fleet.pod_name(node))?;
    let conditions = pod.status?.conditions?;
    let c = conditions.into_iter().find(|c| c.type_ == TARGET_HEALTHY_CONDITION)?;
    Some((c.status, c.reason.unwrap_or_default()))
}

fn pod_ready(fake: &FakeApiServer, fleet: &ProxyFleet, node: &str) -> bool {
    let pod: Option<Pod> = fake.get_resource(Some("gatehouse"), &fleet.pod_name(node));
    pod.and_then(|p| p.status?.conditions?.into_iter().find(|c| c.type_ == "Ready")).is_some_and(|c| c.status == "True")
}

#[tokio::test]
async fn a_proxy_pod_going_not_ready_or_draining_removes_its_node_within_a_second() {
    let tg = TargetGroupFixture::ip().await;
    let fake = FakeApiServer::start().await;
    let fleet = cluster(&fake, false);
    let replica = Replica::start(ReplicaSpec::new("replica-1"), &tg, &fake).await;
    wait_for(&tg, Duration::from_secs(15), "initial sync", |r| r.len() == 3).await;

    // The proxy on node-a fails its readiness probe: its endpoint goes not ready.
    fleet.set_containers_ready("node-a", false).expect("not ready");
    fleet.sync().expect("fleet");
    let took = wait_for(&tg, Duration::from_secs(5), "node-a out", |r| !r.contains(&target("10.42.0.11"))).await;
    assert!(took < Duration::from_secs(1), "node-a deregistered after {took:?}");

    // The proxy on node-b begins to drain (its pod is deleted): its endpoint goes terminating.
    fleet.terminate("node-b").expect("terminate");
    fleet.sync().expect("fleet");
    let took = wait_for(&tg, Duration::from_secs(5), "node-b out", |r| !r.contains(&target("10.42.0.12"))).await;
    assert!(took < Duration::from_secs(1), "node-b deregistered after {took:?}");

    // A proxy that has not started yet (no endpoint at all) keeps its node out; once ready, in.
    fake.apply_resource(&node("node-d", "10.42.0.14").build()).expect("node");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!tg.registered().await.contains(&target("10.42.0.14")), "no proxy on node-d yet");
    fleet.start("node-d", "10.1.0.4").expect("pod");
    fleet.sync().expect("fleet");
    wait_for(&tg, Duration::from_secs(5), "node-d in", |r| r.contains(&target("10.42.0.14"))).await;
    assert_eq!(tg.registered().await, [target("10.42.0.13"), target("10.42.0.14")].into());
    replica.shutdown().await;
    tg.cleanup().await;
}

#[tokio::test]
async fn the_readiness_gate_condition_follows_the_targets_health() {
    let tg = TargetGroupFixture::ip().await;
    let fake = FakeApiServer::start().await;
    let fleet = cluster(&fake, true);
    let aws = FaultProxy::start(&endpoint()).await;
    let a = target("10.42.0.11");
    aws.set_health(&a, Some(("initial", Some("Elb.RegistrationInProgress"))));
    let spec = ReplicaSpec { resync: Duration::from_secs(1), ..ReplicaSpec::new("replica-1") };
    let replica = Replica::start_via(spec, &tg, &fake.url(), Some(&aws)).await;
    wait_for(&tg, Duration::from_secs(15), "initial sync", |r| r.len() == 3).await;

    // The gate waits for the ALB, whatever the proxy's own readiness says.
    let not_yet = || gate(&fake, &fleet, "node-a") == Some(("False".into(), "TargetNotHealthy".into()));
    eventually(Duration::from_secs(5), "node-a's gate False while its target is initial", not_yet).await;
    eventually(Duration::from_secs(5), "the others' gates True", || {
        ["node-b", "node-c"].iter().all(|n| gate(&fake, &fleet, n) == Some(("True".into(), "TargetHealthy".into())))
    })
    .await;
    assert!(not_yet(), "still False");

    // The ALB's checks pass: True within a poll.
    let healthy_at = Instant::now();
    aws.set_health(&a, Some(("healthy", None)));
    eventually(Duration::from_secs(5), "node-a's gate True", || {
        gate(&fake, &fleet, "node-a") == Some(("True".into(), "TargetHealthy".into()))
    })
    .await;
    let took = healthy_at.elapsed();
    assert!(took < Duration::from_secs(1), "gate set {took:?} after the target turned healthy");

    // Later the checks fail: seen at the next resync (nothing waits on the ALB now).
    aws.set_health(&a, Some(("unhealthy", Some("Target.ResponseCodeMismatch"))));
    eventually(Duration::from_secs(5), "node-a's gate False again", || {
        gate(&fake, &fleet, "node-a") == Some(("False".into(), "TargetNotHealthy".into()))
    })
    .await;
    // The gate never deregisters: an unhealthy target stays for the ALB to route around.
    assert!(tg.registered().await.contains(&a));
    assert!(replica.metrics.encode().contains(r#"gatehouse_provisioner_gate_updates_total{reason="TargetHealthy"}"#));
    replica.shutdown().await;
    tg.cleanup().await;
}

#[tokio::test]
async fn a_rolling_update_never_takes_the_next_node_down_before_the_alb_sends_to_the_new_pod() {
    let tg = TargetGroupFixture::ip().await;
    let fake = FakeApiServer::start().await;
    let fleet = cluster(&fake, true);
    let aws = FaultProxy::start(&endpoint()).await;
    // The ALB: 1 s of health checks before a new target is healthy, 0.5 s of deregistration delay.
    aws.model(AwsModel {
        healthy_after: Some(Duration::from_secs(1)),
        drain_for: Some(Duration::from_millis(500)),
        ..AwsModel::default()
    });
    let kubelets = fleet.run(Duration::from_millis(50));
    let replica = Replica::start_via(ReplicaSpec::new("replica-1"), &tg, &fake.url(), Some(&aws)).await;
    let all_ready = || NODES.iter().all(|(n, _)| pod_ready(&fake, &fleet, n));
    eventually(Duration::from_secs(20), "every proxy pod Ready", all_ready).await;

    // A sampler of the ALB's view (through the same model): how few targets were healthy.
    let arn = tg.arn.clone();
    let ips: BTreeMap<&str, &str> = NODES.into_iter().collect();
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (stop, fake_url) = (stop.clone(), aws.url());
        tokio::spawn(async move {
            let sdk = gatehouse_tests::fault_proxy::sdk_via(
                &gatehouse_provisioner::aws::load_sdk_config(None).await,
                &fake_url,
            );
            let via_model = aws_sdk_elasticloadbalancingv2::Client::new(&sdk);
            let mut fewest = usize::MAX;
            let mut samples = 0;
            while !stop.load(Ordering::SeqCst) {
                let out = via_model
                    .describe_target_health()
                    .target_group_arn(&arn)
                    .send()
                    .await
                    .expect("DescribeTargetHealth");
                let healthy = out
                    .target_health_descriptions()
                    .iter()
                    .filter(|d| d.target_health().and_then(|h| h.state()).is_some_and(|s| s.as_str() == "healthy"))
                    .count();
                fewest = fewest.min(healthy);
                samples += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            (fewest, samples)
        })
    };

    // The DaemonSet controller, maxUnavailable 1: replace one pod at a time, the next only once
    // every pod is Ready again.
    for (name, _) in NODES {
        eventually(Duration::from_secs(20), "every pod Ready before the next", all_ready).await;
        fleet.terminate(name).expect("terminate");
        // The old proxy drains and stops (its drain hook is the next test's subject).
        tokio::time::sleep(Duration::from_millis(800)).await;
        fleet.finish(name).expect("finish");
        fleet.start(name, "10.1.0.9").expect("new pod");
        // The new pod is Ready only once the ALB sends to it.
        eventually(Duration::from_secs(20), "the new pod Ready", || pod_ready(&fake, &fleet, name)).await;
        let states = aws_states(&tg, &aws).await;
        assert_eq!(
            states.get(&target(ips[name])).map(String::as_str),
            Some("healthy"),
            "{name} Ready before the ALB sends to it: {states:?}"
        );
    }
    stop.store(true, Ordering::SeqCst);
    let (fewest, samples) = sampler.await.expect("sampler");
    assert!(samples > 20, "{samples} samples");
    assert!(fewest >= NODES.len() - 1, "{fewest} healthy targets at one point: two nodes were out at once");
    kubelets.abort();
    replica.shutdown().await;
    tg.cleanup().await;
}

/// Target states by `id:port` as the modelled ALB reports them.
async fn aws_states(tg: &TargetGroupFixture, aws: &FaultProxy) -> BTreeMap<String, String> {
    let sdk =
        gatehouse_tests::fault_proxy::sdk_via(&gatehouse_provisioner::aws::load_sdk_config(None).await, &aws.url());
    let client = aws_sdk_elasticloadbalancingv2::Client::new(&sdk);
    let out = client.describe_target_health().target_group_arn(&tg.arn).send().await.expect("DescribeTargetHealth");
    out.target_health_descriptions()
        .iter()
        .filter_map(|d| {
            let t = d.target()?;
            Some((format!("{}:{}", t.id()?, t.port()?), d.target_health()?.state()?.as_str().to_owned()))
        })
        .collect()
}

#[tokio::test]
async fn the_drain_hook_holds_a_terminating_proxy_until_its_target_has_drained() {
    let tg = TargetGroupFixture::ip().await;
    let fake = FakeApiServer::start().await;
    let fleet = cluster(&fake, true);
    let aws = FaultProxy::start(&endpoint()).await;
    let drain = Duration::from_millis(1500);
    aws.model(AwsModel { drain_for: Some(drain), ..AwsModel::default() });
    let replica = Replica::start_via(ReplicaSpec::new("replica-1"), &tg, &fake.url(), Some(&aws)).await;
    wait_for(&tg, Duration::from_secs(15), "initial sync", |r| r.len() == 3).await;
    let kubeconfig = tg.dir.path().join("kubeconfig");
    fake.write_kubeconfig(&kubeconfig).expect("kubeconfig");

    // The pod on node-a is evicted; the kubelet runs its preStop hook.
    let evicted = Instant::now();
    fleet.terminate("node-a").expect("terminate");
    fleet.sync().expect("fleet");
    let hook = tokio::process::Command::new(gatehouse_tests::provisioner_replica::provisioner_binary())
        .args(["drain-hook", "--timeout", "10s", "--interval", "100ms"])
        .env("POD_NAME", fleet.pod_name("node-a"))
        .env("POD_NAMESPACE", "gatehouse")
        .env("KUBECONFIG", &kubeconfig)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .output();
    let out =
        tokio::time::timeout(Duration::from_secs(20), hook).await.expect("the hook ends").expect("run drain-hook");
    let held = evicted.elapsed();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains(": the ALB no longer sends to its node"), "{stdout}");
    let deregistered = aws.calls_of("DeregisterTargets");
    assert_eq!(deregistered.len(), 1, "{deregistered:#?}");
    assert_eq!(deregistered[0].targets(), [target("10.42.0.11")]);
    let drained_at = deregistered[0].at + drain;
    assert!(std::time::Instant::now() >= drained_at, "the hook let go before the deregistration delay ended");
    assert!(held < drain + Duration::from_secs(3), "held {held:?}");
    assert_eq!(gate(&fake, &fleet, "node-a"), Some(("False".into(), "TargetDrained".into())));
    eprintln!("drain hook held the pod {held:.2?} (deregistration delay {drain:?})");

    // A hook with nobody to report (no provisioner) gives up after its timeout, exit 1.
    replica.shutdown().await;
    fleet.terminate("node-b").expect("terminate");
    let out = tokio::process::Command::new(gatehouse_tests::provisioner_replica::provisioner_binary())
        .args(["drain-hook", "--timeout", "1s", "--interval", "100ms"])
        .env("POD_NAME", fleet.pod_name("node-b"))
        .env("POD_NAMESPACE", "gatehouse")
        .env("KUBECONFIG", &kubeconfig)
        .kill_on_drop(true)
        .output()
        .await
        .expect("run drain-hook");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.starts_with("error: drain-hook: gave up on gatehouse/proxy-node-b after 1s: the provisioner did not report its node drained (last: gatehouse.dev/target-healthy is True (TargetHealthy))"), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    tg.cleanup().await;
}

#[tokio::test]
async fn the_removal_signals_of_karpenter_and_cluster_autoscaler_take_a_node_out_at_once() {
    let tg = TargetGroupFixture::ip().await;
    let fake = FakeApiServer::start().await;
    let fleet = cluster(&fake, false);
    for (name, ip) in [("node-d", "10.42.0.14"), ("node-e", "10.42.0.15")] {
        fake.apply_resource(&node(name, ip).build()).expect("node");
        fleet.start(name, "10.1.0.5").expect("pod");
    }
    fleet.sync().expect("fleet");
    let replica = Replica::start(ReplicaSpec::new("replica-1"), &tg, &fake).await;
    wait_for(&tg, Duration::from_secs(15), "initial sync", |r| r.len() == 5).await;

    // Karpenter v1 taints the node it disrupts before it drains it.
    fake.apply_resource(&node("node-a", "10.42.0.11").taint("karpenter.sh/disrupted", "NoSchedule").build())
        .expect("taint");
    let took = wait_for(&tg, Duration::from_secs(5), "node-a out", |r| !r.contains(&target("10.42.0.11"))).await;
    assert!(took < Duration::from_secs(1), "{took:?}");
    // Cluster Autoscaler taints the node it removes.
    fake.apply_resource(&node("node-b", "10.42.0.12").taint("ToBeDeletedByClusterAutoscaler", "NoSchedule").build())
        .expect("taint");
    let took = wait_for(&tg, Duration::from_secs(5), "node-b out", |r| !r.contains(&target("10.42.0.12"))).await;
    assert!(took < Duration::from_secs(1), "{took:?}");
    // A node deleted while a finalizer (Karpenter's termination) holds it gets a deletionTimestamp.
    let mut held = serde_json::to_value(node("node-c", "10.42.0.13").build()).expect("json");
    held["metadata"]["finalizers"] = serde_json::json!(["karpenter.sh/termination"]);
    fake.apply(held).expect("finalizer");
    fake.delete(ResourceKind::Node, None, "node-c").expect("delete");
    assert!(fake.get(ResourceKind::Node, None, "node-c").is_some(), "held by its finalizer");
    let took = wait_for(&tg, Duration::from_secs(5), "node-c out", |r| !r.contains(&target("10.42.0.13"))).await;
    assert!(took < Duration::from_secs(1), "{took:?}");
    assert_eq!(tg.registered().await, [target("10.42.0.14"), target("10.42.0.15")].into());
    replica.shutdown().await;
    tg.cleanup().await;
}
