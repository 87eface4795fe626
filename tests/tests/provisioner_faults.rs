//! The provisioner against the AWS emulator through a fault-injecting proxy
//! (`gatehouse_tests::fault_proxy`): throttling, 500s, slow answers and dropped connections on
//! chosen ELBv2 actions. `sync` converges within the SDK's retry budget; a fault never
//! deregisters a healthy node; persistent faults end in exit 1 with one sentence that names the
//! operation and the cause, and leave nothing wrong behind; two syncs at once do not flap.
//! `watch` under faults (Kubernetes API errors, watch disconnects, an empty node list, AWS faults
//! mid-reconcile, two replicas across an involuntary lease loss) is in provisioner_watch.rs.
//!
//! Every group starts with node-a (10.42.0.11) registered and 10.42.0.19 registered for a node
//! that left; the cluster is node-a, node-b and node-c. So a sync deregisters one target (half
//! the group: within the default share) and registers two.
//!
//! The CLI tests run the `gatehouse-provisioner` binary built next to this test (`cargo build
//! --workspace --all-targets` does; see `provisioner_replica::provisioner_binary`).

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use gatehouse_provisioner::aws::{Aws, load_sdk_config};
use gatehouse_provisioner::lease::Leadership;
use gatehouse_provisioner::metrics::ApiCalls;
use gatehouse_provisioner::nodes;
use gatehouse_provisioner::plan::ClusterView;
use gatehouse_provisioner::session::Session;
use gatehouse_tests::fault_proxy::{Call, Fault, FaultProxy, On, When, sdk_via};
use gatehouse_tests::kube_api::{FakeApiServer, ResourceKind, fixtures};
use gatehouse_tests::provisioner_support::{NODE_PORT, TargetGroupFixture, endpoint, node};

const NODES: [(&str, &str); 3] = [("node-a", "10.42.0.11"), ("node-b", "10.42.0.12"), ("node-c", "10.42.0.13")];
const LEFT: &str = "10.42.0.19";

fn t(ip: &str) -> String {
    format!("{ip}:{NODE_PORT}")
}

fn set(ips: &[&str]) -> BTreeSet<String> {
    ips.iter().map(|ip| t(ip)).collect()
}

/// What a converged group holds.
fn desired() -> BTreeSet<String> {
    set(&["10.42.0.11", "10.42.0.12", "10.42.0.13"])
}

/// A fresh group holding node-a and the target of a node that left, and a proxy in front of the
/// emulator.
async fn group() -> (TargetGroupFixture, FaultProxy) {
    let tg = TargetGroupFixture::ip().await;
    tg.register_directly("10.42.0.11", NODE_PORT).await;
    tg.register_directly(LEFT, NODE_PORT).await;
    (tg, FaultProxy::start(&endpoint()).await)
}

/// One `sync` as the CLI does it, through the proxy, with the library: open, plan, apply.
async fn sync_via(proxy: &FaultProxy, tg: &TargetGroupFixture) -> (Result<(), String>, ApiCalls) {
    let calls = ApiCalls::default();
    let sdk = sdk_via(&load_sdk_config(None).await, &proxy.url());
    let aws = Aws::new(&sdk, calls.clone()).expect("region configured");
    let settings = tg.settings(Some(Duration::ZERO));
    let listed: Vec<_> = NODES.iter().map(|(name, ip)| fixtures::node(name, ip).build()).collect();
    let view = ClusterView { nodes: nodes::views(&listed, &nodes::Selector::default()), proxy: None };
    let result = async {
        let session = Session::open(aws, settings).await?;
        let observed = session.observe().await?;
        let plan = session.plan(&view, &observed);
        session.apply(&plan, &Leadership::always()).await?.into_result()
    }
    .await;
    (result.map(drop).map_err(|e| e.to_string()), calls)
}

/// The one safety property every scenario shares: a write only ever carries the target of the
/// node that left (deregister) or of an eligible node (register).
fn assert_no_wrong_write(calls: &[Call]) {
    for c in calls {
        match c.action.as_str() {
            "DeregisterTargets" => assert_eq!(c.targets(), [t(LEFT)], "deregistered a healthy node: {c:?}"),
            "RegisterTargets" => {
                assert!(c.targets().iter().all(|x| desired().contains(x)), "registered a wrong target: {c:?}")
            }
            _ => {}
        }
    }
}

/// The requests for `action` that the emulator answered with success, and all of them.
fn attempts(calls: &[Call], action: &str) -> (usize, usize) {
    let of: Vec<&Call> = calls.iter().filter(|c| c.action == action).collect();
    (of.iter().filter(|c| c.succeeded()).count(), of.len())
}

/// Fault rules for a proxy: which requests, which of them, what happens.
type Rules = Vec<(On, When, Fault)>;

#[tokio::test]
async fn sync_converges_through_throttling_errors_slow_answers_and_dropped_connections() {
    let each = |when: When, fault: Fault| -> Rules {
        ["DescribeTargetGroups", "DescribeTargetHealth", "DeregisterTargets", "RegisterTargets"]
            .into_iter()
            .map(|a| (On::action(a), when, fault))
            .collect()
    };
    let patterns: Vec<(&str, Rules)> = vec![
        ("throttled twice", each(When::First(2), Fault::Throttle)),
        ("500 twice", each(When::First(2), Fault::InternalFailure)),
        ("slow (1 s)", each(When::Always, Fault::Delay(Duration::from_secs(1)))),
        ("dropped before reaching the emulator", each(When::First(2), Fault::Drop)),
        ("dropped after the emulator acted", each(When::Nth(1), Fault::DropAfterForward)),
        ("every call fails for 200 ms", vec![(On::Any, When::For(Duration::from_millis(200)), Fault::InternalFailure)]),
        (
            "the whole retry budget: 4 failures, the 5th attempt answered",
            vec![(On::action("DescribeTargetHealth"), When::First(4), Fault::Throttle)],
        ),
    ];
    for (name, rules) in patterns {
        let (tg, proxy) = group().await;
        for (on, when, fault) in rules {
            proxy.inject(on, when, fault);
        }
        let started = Instant::now();
        let (result, counted) = sync_via(&proxy, &tg).await;
        let took = started.elapsed();
        let calls = proxy.calls();
        assert!(calls.iter().any(|c| c.fault.is_some()), "{name}: no fault was applied");
        assert_eq!(result, Ok(()), "{name}: sync failed; requests: {calls:#?}");
        assert_eq!(tg.registered().await, desired(), "{name}");
        assert_no_wrong_write(&calls);
        // A repeated deregistration (its first attempt acted, its answer was lost) finds the target
        // gone: MiniStack answers 200, moto InvalidTarget, after which the provisioner reads the
        // target back (one DescribeTargetHealth naming it) and is done.
        let read_back = calls.iter().filter(|c| c.action == "DescribeTargetHealth" && !c.targets().is_empty()).count();
        // Retries stay inside each operation: the provisioner counts one of each...
        let ops: Vec<(String, u64)> =
            counted.snapshot().0.into_iter().map(|((op, outcome), n)| (format!("{op}/{outcome}"), n)).collect();
        let ok = |op: &str, n| (format!("{op}/ok"), n);
        let dereg =
            if read_back == 0 { ok("DeregisterTargets", 1) } else { ("DeregisterTargets/service_error".into(), 1) };
        let want = [
            dereg,
            ok("DescribeTargetGroups", 1),
            ok("DescribeTargetHealth", 1 + read_back as u64),
            ok("DescribeVpcs", 1),
            ok("RegisterTargets", 1),
        ];
        assert_eq!(ops, want, "{name}: {calls:#?}");
        // ...and retried it only because of a fault: one final answer, after the faulted attempts.
        for action in ["DescribeTargetGroups", "DescribeTargetHealth", "DeregisterTargets", "RegisterTargets"] {
            let of: Vec<&Call> = calls
                .iter()
                .filter(|c| c.action == action && (action != "DescribeTargetHealth" || c.targets().is_empty()))
                .collect();
            let faulted = of.iter().filter(|c| c.fault.is_some_and(|f| !matches!(f, Fault::Delay(_)))).count();
            assert_eq!(of.len(), faulted + 1, "{name}: {action}: {calls:#?}");
            let last = of.last().expect("attempted");
            let gone = action == "DeregisterTargets" && last.status == Some(400) && read_back == 1;
            assert!(last.succeeded() || gone, "{name}: {action}: {calls:#?}");
        }
        assert!(took < Duration::from_secs(10), "{name}: took {took:?}");
        eprintln!("{name}: {} requests for 4 operations, {took:.2?}", calls.len());
        tg.cleanup().await;
    }
}

/// How one run of the binary ended.
#[derive(Debug)]
struct Run {
    code: i32,
    #[allow(dead_code)] // shown when an assertion fails
    stdout: String,
    stderr: String,
    took: Duration,
}

/// Runs the binary with the AWS endpoint at `aws` and the logging a user gets by default;
/// killed (by its handle) if it has not finished within 60 s.
async fn cli<S: AsRef<std::ffi::OsStr>>(aws: &str, args: &[S]) -> Run {
    let started = Instant::now();
    let child = tokio::process::Command::new(gatehouse_tests::provisioner_replica::provisioner_binary())
        .args(args)
        .env("AWS_ENDPOINT_URL", aws)
        .env_remove("RUST_LOG")
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(60), child)
        .await
        .expect("gatehouse-provisioner finishes within 60 s")
        .expect("run gatehouse-provisioner");
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        took: started.elapsed(),
    }
}

fn p(path: &Path) -> &str {
    path.to_str().expect("utf-8 path")
}

/// `sync --handshake .. --nodes-from ..` arguments for the fixture's group and cluster.
fn sync_args(tg: &TargetGroupFixture) -> Vec<String> {
    let handshake = tg.write_handshake(&tg.handshake());
    let nodes = tg.write_nodes(&NODES.map(|(name, ip)| node(name, ip)));
    ["sync", "--handshake", p(&handshake), "--nodes-from", p(&nodes)].map(str::to_owned).to_vec()
}

/// Exit 1 and exactly `expected` on stderr: one line, no panic, no Debug dump.
fn assert_one_sentence(run: &Run, expected: &str) {
    assert_eq!((run.code, run.stderr.as_str()), (1, format!("{expected}\n").as_str()), "{run:#?}");
    assert!(!run.stderr.contains("panicked") && !run.stderr.contains(" { ") && !run.stderr.contains("Some("));
}

#[tokio::test]
async fn persistent_faults_end_in_exit_1_naming_the_operation_and_cause_with_nothing_wrong_left() {
    let throttling = "was refused: Throttling: Rate exceeded";
    let internal = "was refused: InternalFailure: The request processing has failed because of an unknown error, exception or failure.";
    let dropped = "failed: connection closed before message completed";
    let before = set(&["10.42.0.11", LEFT]);
    // (operation, fault, the rest of "error: AWS <operation> at <endpoint> ...", what the group
    // holds after the failed run)
    let cases = [
        ("DescribeTargetGroups", Fault::Throttle, throttling, before.clone()),
        ("DescribeTargetHealth", Fault::InternalFailure, internal, before.clone()),
        ("DeregisterTargets", Fault::Drop, dropped, before.clone()),
        // The node that left is gone; node-a keeps its registration; node-b and node-c wait.
        ("RegisterTargets", Fault::Throttle, throttling, set(&["10.42.0.11"])),
        // Applied, but never confirmed: the run must still say it failed.
        ("RegisterTargets", Fault::DropAfterForward, dropped, desired()),
    ];
    for (op, fault, message, after) in cases {
        let (tg, proxy) = group().await;
        proxy.inject(On::action(op), When::Always, fault);
        let sync = sync_args(&tg);
        let run = cli(&proxy.url(), &sync).await;
        assert_one_sentence(&run, &format!("error: AWS {op} at {} {message}", proxy.url()));
        let calls = proxy.calls();
        assert_eq!(attempts(&calls, op), (0, 5), "{op} {fault:?}: 5 attempts, none answered: {calls:#?}");
        assert_eq!(tg.registered().await, after, "{op} {fault:?}");
        assert_no_wrong_write(&calls);
        assert!(run.took < Duration::from_secs(10), "{op} {fault:?}: gave up after {:?}", run.took);
        eprintln!("{op} {fault:?}: exit 1 after {:.2?}, {} requests", run.took, calls.len());

        // Nothing left behind needs more than the next run: it converges.
        proxy.clear();
        let again = cli(&proxy.url(), &sync).await;
        assert_eq!(again.code, 0, "{again:#?}");
        assert_eq!(tg.registered().await, desired());
        assert_no_wrong_write(&proxy.calls());
        tg.cleanup().await;
    }
}

#[tokio::test]
async fn kubernetes_errors_an_empty_node_list_and_a_failed_read_mid_run_never_deregister_a_healthy_node() {
    let (tg, proxy) = group().await;
    let fake = FakeApiServer::start().await;
    for (name, ip) in NODES {
        fake.apply_resource(&fixtures::node(name, ip).build()).expect("node");
    }
    let kubeconfig = tg.dir.path().join("kubeconfig");
    fake.write_kubeconfig(&kubeconfig).expect("kubeconfig");
    let handshake = tg.write_handshake(&tg.handshake());
    let sync = ["sync", "--handshake", p(&handshake), "--kubeconfig", p(&kubeconfig)];
    let before = set(&["10.42.0.11", LEFT]);
    let writes = |calls: &[Call]| calls.iter().filter(|c| c.action.ends_with("Targets")).count();

    // The Node list fails: nothing is planned, nothing written.
    fake.inject_error(ResourceKind::Node, 500, 1);
    let run = cli(&proxy.url(), &sync).await;
    assert_one_sentence(
        &run,
        "error: cannot list Nodes from the Kubernetes API: injected fault: InternalError (500) (500 InternalError)",
    );
    assert_eq!(writes(&proxy.calls()), 0);
    assert_eq!(tg.registered().await, before);

    // The Node list is empty: the deregistrations are refused.
    for (name, _) in NODES {
        fake.delete(ResourceKind::Node, None, name).expect("delete node");
    }
    let run = cli(&proxy.url(), &sync).await;
    assert_one_sentence(
        &run,
        "error: refusing to deregister: discovery found no eligible node while 2 target(s) are registered (pass --allow-empty if the group really should be empty)",
    );
    assert_eq!(writes(&proxy.calls()), 0);
    assert_eq!(tg.registered().await, before);

    // The nodes are back; the read after the writes (--wait-drain's) fails for good.
    for (name, ip) in NODES {
        fake.apply_resource(&fixtures::node(name, ip).build()).expect("node");
    }
    proxy.inject(On::action("DescribeTargetHealth"), When::From(2), Fault::InternalFailure);
    let run = cli(&proxy.url(), &[&sync[..], &["--wait-drain", "--drain-timeout", "5s"]].concat()).await;
    assert_one_sentence(
        &run,
        &format!(
            "error: AWS DescribeTargetHealth at {} was refused: InternalFailure: The request processing has failed because of an unknown error, exception or failure.",
            proxy.url()
        ),
    );
    assert_eq!(tg.registered().await, desired(), "the writes before the failed read stand");
    assert_no_wrong_write(&proxy.calls());

    // Transient API errors the kube client retries itself (503) do not fail the run.
    proxy.clear();
    proxy.forget();
    fake.inject_error(ResourceKind::Node, 503, 2);
    let run = cli(&proxy.url(), &sync).await;
    assert_eq!(run.code, 0, "{run:#?}");
    assert_eq!(writes(&proxy.calls()), 0, "already in step");
    assert_eq!(tg.registered().await, desired());
    tg.cleanup().await;
}

#[tokio::test]
async fn two_syncs_at_once_converge_without_flapping() {
    let (tg, proxy) = group().await;
    // Both runs read the group before either writes (each read is answered a second late, as
    // of when it arrived); each write direction is throttled once.
    proxy.inject(On::action("DescribeTargetHealth"), When::Always, Fault::SlowAnswer(Duration::from_secs(1)));
    proxy.inject(On::action("DeregisterTargets"), When::Nth(1), Fault::Throttle);
    proxy.inject(On::action("RegisterTargets"), When::Nth(1), Fault::Throttle);
    let (sync, url) = (sync_args(&tg), proxy.url());
    let (one, two) = tokio::join!(cli(&url, &sync), cli(&url, &sync));
    assert_eq!((one.code, two.code), (0, 0), "{one:#?}\n{two:#?}");
    assert_eq!(tg.registered().await, desired());
    let calls = proxy.calls();
    assert_no_wrong_write(&calls);
    let plans: Vec<&Call> =
        calls.iter().filter(|c| c.action == "DescribeTargetHealth" && c.targets().is_empty()).collect();
    let first_write = calls.iter().filter(|c| c.action.ends_with("Targets")).map(|c| c.at).min().expect("writes");
    assert!(
        plans.len() == 2 && plans.iter().all(|r| r.at < first_write),
        "both planned before either wrote: {calls:#?}"
    );
    // Each run wrote its plan once, and retried the throttled call: no target went back and forth.
    // (The second deregistration of 10.42.0.19 finds it gone: 200 from MiniStack, InvalidTarget
    // and a read-back from moto.)
    for action in ["DeregisterTargets", "RegisterTargets"] {
        let of: Vec<&Call> = calls.iter().filter(|c| c.action == action).collect();
        let reached = of.iter().filter(|c| c.reached_upstream).count();
        assert_eq!((of.len(), reached), (3, 2), "{action}: {calls:#?}");
    }
    eprintln!("two syncs at once: {} requests, {:.2?} and {:.2?}", calls.len(), one.took, two.took);

    // In step: two more runs at once write nothing.
    proxy.forget();
    let (one, two) = tokio::join!(cli(&url, &sync), cli(&url, &sync));
    assert_eq!((one.code, two.code), (0, 0), "{one:#?}\n{two:#?}");
    let actions: Vec<String> = proxy.calls().into_iter().map(|c| c.action).collect();
    assert!(actions.iter().all(|a| a.starts_with("Describe")), "{actions:?}");
    assert_eq!(tg.registered().await, desired());
    tg.cleanup().await;
}
