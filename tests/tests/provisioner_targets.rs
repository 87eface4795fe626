//! Targets AWS accepts, and refusals that protect traffic, through the `gatehouse-provisioner`
//! binary (and `watch` in-process) against the AWS emulator: an `ip` target outside the VPC is
//! registered with `AvailabilityZone=all`; the node's address is taken from the target group's
//! address family; desired targets beyond the quota are reported before any write and a
//! deterministic subset registered; a large legitimate removal goes in waves, each after the last
//! one drained; a NodePort mismatch between the handshake and the proxy Service writes nothing.
//!
//! The emulators accept what AWS refuses (a target outside the VPC without an Availability Zone,
//! an IPv6 address in an IPv4 group) and model no deregistration delay; the fault proxy in front
//! of them refuses and drains as AWS does ([`AwsModel`]).

use std::path::Path;
use std::time::Duration;

use gatehouse_provisioner::diff::Policy;
use gatehouse_tests::fault_proxy::{AwsModel, Call, FaultProxy};
use gatehouse_tests::kube_api::FakeApiServer;
use gatehouse_tests::kube_api::fixtures::service;
use gatehouse_tests::kube_api::fleet::ProxyFleet;
use gatehouse_tests::provisioner_replica::{Replica, ReplicaSpec, eventually, provisioner_binary, wait_for};
use gatehouse_tests::provisioner_support::{NODE_PORT, TargetGroupFixture, cordoned, endpoint, node};
use serde_json::{Value, json};

/// How one run of the binary ended.
#[derive(Debug)]
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

async fn cli(aws: &str, args: &[&str]) -> Run {
    let child = tokio::process::Command::new(provisioner_binary())
        .args(args)
        .env("AWS_ENDPOINT_URL", aws)
        .env_remove("RUST_LOG")
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(60), child).await.expect("finishes within 60 s").expect("run");
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn p(path: &Path) -> &str {
    path.to_str().expect("utf-8 path")
}

fn t(ip: &str) -> String {
    format!("{ip}:{NODE_PORT}")
}

/// Registrations that reached the emulator.
fn registrations(aws: &FaultProxy) -> Vec<Call> {
    aws.calls().into_iter().filter(|c| c.action == "RegisterTargets" && c.reached_upstream).collect()
}

fn param<'a>(call: &'a Call, key: &str) -> Option<&'a str> {
    call.params.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}

#[tokio::test]
async fn ip_targets_outside_the_vpc_are_registered_with_availability_zone_all() {
    let tg = TargetGroupFixture::ip().await;
    let aws = FaultProxy::start(&endpoint()).await;
    aws.model(AwsModel { vpc_cidrs: Some(vec!["10.42.0.0/16".into()]), ..AwsModel::default() });
    let handshake = tg.write_handshake(&tg.handshake());
    // node-b is in a peered network, outside the group's VPC (10.42.0.0/16).
    let nodes = tg.write_nodes(&[node("node-a", "10.42.0.11"), node("node-b", "192.168.7.12")]);
    let args = ["sync", "--handshake", p(&handshake), "--nodes-from", p(&nodes)];
    let run = cli(&aws.url(), &args).await;
    assert_eq!(run.code, 0, "{run:#?}");
    assert!(
        run.stdout.contains(&format!(
            "  + register   {:<24} node node-b (outside the VPC: AvailabilityZone all)",
            t("192.168.7.12")
        )),
        "{}",
        run.stdout
    );
    let calls = registrations(&aws);
    assert_eq!(calls.len(), 1, "{calls:#?}");
    let zone_of = |id: &str| {
        let n = (1..).find(|n| param(&calls[0], &format!("Targets.member.{n}.Id")) == Some(id)).expect("target");
        param(&calls[0], &format!("Targets.member.{n}.AvailabilityZone")).map(str::to_owned)
    };
    assert_eq!(zone_of("10.42.0.11"), None, "inside the VPC: AWS infers the zone and refuses 'all'");
    assert_eq!(zone_of("192.168.7.12").as_deref(), Some("all"));
    assert_eq!(tg.registered().await, [t("10.42.0.11"), t("192.168.7.12")].into());
    tg.cleanup().await;
}

#[tokio::test]
async fn the_node_address_follows_the_target_groups_address_family() {
    let tg = TargetGroupFixture::ip().await;
    let aws = FaultProxy::start(&endpoint()).await;
    aws.model(AwsModel { ipv4_only: true, vpc_cidrs: Some(vec!["10.42.0.0/16".into()]), ..AwsModel::default() });
    let handshake = tg.write_handshake(&tg.handshake());
    // Dual stack with the IPv6 address listed first, and an IPv6-only node.
    let mut dual = node("node-a", "10.42.0.11");
    dual["status"]["addresses"] =
        json!([{"type": "InternalIP", "address": "fd00::a"}, {"type": "InternalIP", "address": "10.42.0.11"}]);
    let mut v6 = node("node-b", "10.42.0.12");
    v6["status"]["addresses"] = json!([{"type": "InternalIP", "address": "fd00::b"}]);
    let nodes = tg.write_nodes(&[dual.clone(), v6.clone()]);
    let run = cli(&aws.url(), &["sync", "--handshake", p(&handshake), "--nodes-from", p(&nodes)]).await;
    assert_eq!(run.code, 0, "{run:#?}");
    assert!(
        run.stdout.contains("  ? node-b: node has no ipv4 InternalIP, the target group's IP address type"),
        "{}",
        run.stdout
    );
    assert_eq!(tg.registered().await, [t("10.42.0.11")].into());

    // The same nodes against a group whose IpAddressType is ipv6.
    let tg6 = TargetGroupFixture::ip().await;
    let aws6 = FaultProxy::start(&endpoint()).await;
    aws6.model(AwsModel { ip_address_type: Some("ipv6".into()), ..AwsModel::default() });
    let handshake = tg6.write_handshake(&tg6.handshake());
    let nodes = tg6.write_nodes(&[dual, v6]);
    let run = cli(&aws6.url(), &["plan", "--handshake", p(&handshake), "--nodes-from", p(&nodes)]).await;
    assert_eq!(run.code, 2, "{run:#?}");
    assert!(run.stdout.contains("target type ip (ipv6), NodePort 30080"), "{}", run.stdout);
    assert!(run.stdout.contains("  + register   [fd00::a]:30080          node node-a"), "{}", run.stdout);
    assert!(run.stdout.contains("  + register   [fd00::b]:30080          node node-b"), "{}", run.stdout);
    tg.cleanup().await;
    tg6.cleanup().await;
}

#[tokio::test]
async fn targets_beyond_the_quota_are_reported_before_any_write_and_a_subset_registered() {
    let tg = TargetGroupFixture::ip().await;
    let aws = FaultProxy::start(&endpoint()).await;
    let handshake = tg.write_handshake(&tg.handshake());
    let five: Vec<Value> = (1..=5).map(|i| node(&format!("node-{i}"), &format!("10.42.0.{i}"))).collect();
    let nodes = tg.write_nodes(&five);
    let args = ["--handshake", p(&handshake), "--nodes-from", p(&nodes), "--max-targets", "3"];

    let plan = cli(&aws.url(), &[&["plan"], &args[..]].concat()).await;
    assert_eq!(plan.code, 1, "{plan:#?}");
    assert!(
        plan.stdout.contains(&format!(
            "  ? over quota {:<24} node node-4 (the group may hold at most 3 targets)",
            t("10.42.0.4")
        )),
        "{}",
        plan.stdout
    );
    assert!(
        plan.stdout.contains("Error: 2 eligible nodes are not registered: the target group may hold at most 3 targets"),
        "{}",
        plan.stdout
    );
    assert!(registrations(&aws).is_empty(), "plan writes nothing");

    let sync = cli(&aws.url(), &[&["sync"], &args[..]].concat()).await;
    assert_eq!(sync.code, 1, "{sync:#?}");
    assert_eq!(sync.stderr.lines().count(), 1, "{}", sync.stderr);
    assert!(sync.stderr.starts_with("error: 2 eligible nodes are not registered"), "{}", sync.stderr);
    assert_eq!(tg.registered().await, [t("10.42.0.1"), t("10.42.0.2"), t("10.42.0.3")].into(), "node-name order");

    // Run again: nothing to write, the same report (no call retried in a loop).
    aws.forget();
    let again = cli(&aws.url(), &[&["sync"], &args[..]].concat()).await;
    assert_eq!(again.code, 1);
    assert!(registrations(&aws).is_empty());

    // `watch` at the quota: the subset stands, and nothing is retried.
    let fake = FakeApiServer::start().await;
    let fleet = proxy_cluster(&fake, 5);
    aws.forget();
    let spec = ReplicaSpec { policy: Policy { max_targets: 3, ..Policy::default() }, ..ReplicaSpec::new("replica-1") };
    let replica = Replica::start_via(spec, &tg, &fake.url(), Some(&aws)).await;
    eventually(Duration::from_secs(15), "a reconcile", || replica.reconciles("held_back") >= 1).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let calls = aws.calls().len();
    assert!(calls <= 4, "open + one read + a poll at most: {:#?}", aws.calls());
    assert_eq!(replica.metrics.targets_over_quota.get(), 2);
    assert!(registrations(&aws).is_empty());
    drop(fleet);
    replica.shutdown().await;
    tg.cleanup().await;
}

/// The proxy Service and `n` Ready nodes with a ready proxy each.
fn proxy_cluster(fake: &FakeApiServer, n: u8) -> ProxyFleet {
    fake.apply_resource(
        &service("gatehouse", "proxy").service_type("NodePort").port("http", 80, Some(i32::from(NODE_PORT))).build(),
    )
    .expect("service");
    let fleet = ProxyFleet::new(fake, "gatehouse", "proxy", None);
    for i in 1..=n {
        let name = format!("node-{i}");
        fake.apply_resource(&gatehouse_tests::kube_api::fixtures::node(&name, &format!("10.42.0.{i}")).build())
            .expect("node");
        fleet.start(&name, "10.1.0.1").expect("pod");
    }
    fleet.sync().expect("fleet");
    fleet
}

#[tokio::test]
async fn a_large_legitimate_removal_proceeds_in_waves_each_after_the_last_drained() {
    let tg = TargetGroupFixture::ip().await;
    let aws = FaultProxy::start(&endpoint()).await;
    let drain = Duration::from_millis(1500);
    aws.model(AwsModel { drain_for: Some(drain), ..AwsModel::default() });
    let mut h = tg.handshake();
    // Longer than the modelled drain: --wait-drain waits for the ALB to report the targets gone.
    h["deregistration_delay_seconds"] = json!(5);
    let handshake = tg.write_handshake(&h);
    let mut ten: Vec<Value> = (1..=10).map(|i| node(&format!("node-{i:02}"), &format!("10.42.0.{i}"))).collect();
    assert_eq!(
        cli(&aws.url(), &["sync", "--handshake", p(&handshake), "--nodes-from", p(&tg.write_nodes(&ten))]).await.code,
        0
    );

    // A cluster upgrade cordons 8 of the 10 nodes.
    for n in ten.iter_mut().skip(2) {
        *n = cordoned(n.clone());
    }
    let nodes = tg.write_nodes(&ten);
    let args = ["--handshake", p(&handshake), "--nodes-from", p(&nodes)];
    let plan = cli(&aws.url(), &[&["plan"], &args[..]].concat()).await;
    assert_eq!(plan.code, 2, "waves are pending, not an error: {plan:#?}");
    assert!(
        plan.stdout.ends_with("Plan: 0 to register, 5 to deregister, 2 unchanged; 3 in later waves.\n"),
        "{}",
        plan.stdout
    );

    // Without --wait-drain: the first wave, and a word about the rest.
    let one = cli(&aws.url(), &[&["sync"], &args[..]].concat()).await;
    assert_eq!(one.code, 0, "{one:#?}");
    assert!(
        one.stdout.contains("Apply complete: 0 registered, 5 deregistered. 3 more to deregister in later waves"),
        "{}",
        one.stdout
    );
    assert_eq!(tg.registered().await.len(), 5);
    // While it drains, the next run holds the rest back.
    let held = cli(&aws.url(), &[&["sync"], &args[..]].concat()).await;
    assert!(held.stdout.contains("Apply complete: 0 registered, 0 deregistered. 3 more"), "{}", held.stdout);

    // With --wait-drain: each wave once the previous one has drained, to the end.
    let all = cli(&aws.url(), &[&["sync", "--wait-drain", "--drain-timeout", "60s"], &args[..]].concat()).await;
    assert_eq!(all.code, 0, "{all:#?}");
    assert_eq!(tg.registered().await, [t("10.42.0.1"), t("10.42.0.2")].into());
    let waves: Vec<Call> = aws.calls_of("DeregisterTargets");
    let sizes: Vec<usize> = waves.iter().map(|c| c.targets().len()).collect();
    assert_eq!(sizes, [5, 2, 1], "{waves:#?}");
    for pair in waves.windows(2) {
        assert!(pair[1].at >= pair[0].at + drain, "a wave began before the last one drained: {waves:#?}");
    }
    tg.cleanup().await;
}

#[tokio::test]
async fn a_node_port_mismatch_writes_nothing_unless_a_side_is_chosen() {
    let tg = TargetGroupFixture::ip().await;
    let aws = FaultProxy::start(&endpoint()).await;
    let fake = FakeApiServer::start().await;
    fake.apply_resource(&service("gatehouse", "proxy").service_type("NodePort").port("http", 80, Some(31999)).build())
        .expect("service");
    let fleet = ProxyFleet::new(&fake, "gatehouse", "proxy", None);
    for (name, ip) in [("node-a", "10.42.0.11"), ("node-b", "10.42.0.12")] {
        fake.apply_resource(&gatehouse_tests::kube_api::fixtures::node(name, ip).build()).expect("node");
        fleet.start(name, "10.1.0.1").expect("pod");
    }
    fleet.sync().expect("fleet");
    let kubeconfig = tg.dir.path().join("kubeconfig");
    fake.write_kubeconfig(&kubeconfig).expect("kubeconfig");
    let handshake = tg.write_handshake(&tg.handshake());
    let args =
        ["sync", "--handshake", p(&handshake), "--kubeconfig", p(&kubeconfig), "--proxy-service", "gatehouse/proxy"];

    let run = cli(&aws.url(), &args).await;
    assert_eq!(run.code, 1, "{run:#?}");
    assert_eq!(
        run.stderr,
        "error: refusing to write: the handshake's NodePort is 30080 but the proxy Service gatehouse/proxy has nodePort 31999; every health check would fail at the wrong one (pass --node-port-from handshake or --node-port-from service to say which is right)\n"
    );
    assert!(run.stdout.contains("would perform the following actions, but refuses to write"), "{}", run.stdout);
    assert!(aws.calls().iter().all(|c| c.action.starts_with("Describe")), "{:#?}", aws.calls());

    let service_wins = cli(&aws.url(), &[&args[..], &["--node-port-from", "service"]].concat()).await;
    assert_eq!(service_wins.code, 0, "{service_wins:#?}");
    assert_eq!(tg.registered().await, ["10.42.0.11:31999".to_owned(), "10.42.0.12:31999".to_owned()].into());

    // `watch` refuses too, and does not retry what a retry cannot fix. (A group of its own: both
    // emulators key a target by its id alone, so they cannot hold 10.42.0.11 at two ports.)
    let fresh = TargetGroupFixture::ip().await;
    aws.forget();
    let replica = Replica::start_via(ReplicaSpec::new("replica-1"), &fresh, &fake.url(), Some(&aws)).await;
    eventually(Duration::from_secs(15), "a refused reconcile", || replica.reconciles("held_back") >= 1).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(replica.writes(), 0);
    assert_eq!(replica.reconciles("error"), 0);
    assert!(aws.calls().len() <= 3, "open and one read: {:#?}", aws.calls());
    // The Service is fixed: the next event reconciles, now in step at the handshake's port.
    fake.apply_resource(
        &service("gatehouse", "proxy").service_type("NodePort").port("http", 80, Some(i32::from(NODE_PORT))).build(),
    )
    .expect("service");
    wait_for(&fresh, Duration::from_secs(10), "registered at 30080", |r| r.len() == 2).await;
    assert_eq!(fresh.registered().await, [t("10.42.0.11"), t("10.42.0.12")].into());
    replica.shutdown().await;
    tg.cleanup().await;
    fresh.cleanup().await;
}
