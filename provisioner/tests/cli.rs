//! The command line against the AWS emulator: exit codes, the rendered plan, the safety
//! refusals, drift, and one-sentence errors. Drives the real binary.
//!
//! These tests live in the provisioner package because only its tests get
//! `CARGO_BIN_EXE_gatehouse-provisioner`, a binary cargo has just built from this source (a
//! test in another package would have to guess a path under the target dir and could run a
//! stale binary). The emulator fixtures are shared with `tests/tests/provisioner_*.rs`.
//!
//! Needs AWS_ENDPOINT_URL (MiniStack or moto); see `support::endpoint`.

#[path = "../../tests/src/provisioner_support.rs"]
mod support;

use std::path::Path;
use std::process::{Command, Output};

use serde_json::{Value, json};
use support::{NODE_PORT, TargetGroupFixture, cordoned, node};

const BIN: &str = env!("CARGO_BIN_EXE_gatehouse-provisioner");

fn run(args: &[&str]) -> Output {
    support::endpoint();
    Command::new(BIN).args(args).env("RUST_LOG", "off").output().expect("run gatehouse-provisioner")
}

fn text(o: &Output) -> (i32, String, String) {
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

fn p(path: &Path) -> &str {
    path.to_str().expect("utf-8 path")
}

/// One line on stderr, `error: ...`, no panic, no Debug dump.
fn assert_one_sentence(stderr: &str) {
    assert_eq!(stderr.lines().count(), 1, "one line expected: {stderr}");
    assert!(stderr.starts_with("error: "), "{stderr}");
    assert!(!stderr.contains("panicked") && !stderr.contains(" { ") && !stderr.contains("Some("), "{stderr}");
}

fn three_nodes() -> Vec<Value> {
    vec![node("node-a", "10.42.0.11"), node("node-b", "10.42.0.12"), node("node-c", "10.42.0.13")]
}

#[tokio::test]
async fn plan_on_an_empty_group_shows_every_node_and_exits_2() {
    let tg = TargetGroupFixture::ip().await;
    let handshake = tg.write_handshake(&tg.handshake());
    let nodes = tg.write_nodes(&three_nodes());
    let (code, out, err) = text(&run(&["plan", "--handshake", p(&handshake), "--nodes-from", p(&nodes)]));
    assert_eq!(code, 2, "{out}{err}");
    for (name, ip) in [("node-a", "10.42.0.11"), ("node-b", "10.42.0.12"), ("node-c", "10.42.0.13")] {
        let line = format!("  + register   {:<24} node {name}\n", format!("{ip}:{NODE_PORT}"));
        assert!(out.contains(&line), "missing {line:?} in\n{out}");
    }
    assert!(out.ends_with("Plan: 3 to register, 0 to deregister, 0 unchanged.\n"), "{out}");
    assert!(tg.registered().await.is_empty(), "plan must not change anything");

    let (code, out, _) =
        text(&run(&["plan", "--handshake", p(&handshake), "--nodes-from", p(&nodes), "--output", "json"]));
    assert_eq!(code, 2);
    let v: Value = serde_json::from_str(&out).expect("json plan");
    assert_eq!(v["summary"]["register"], 3);
    assert_eq!(
        v["register"][0],
        json!({"id": "10.42.0.11", "port": NODE_PORT, "node": "node-a", "reason": "node is eligible", "availability_zone": null})
    );
    assert_eq!(v["target_group"]["arn"], tg.arn.as_str());
    tg.cleanup().await;
}

#[tokio::test]
async fn sync_registers_every_node_and_a_second_plan_shows_nothing() {
    let tg = TargetGroupFixture::ip().await;
    let handshake = tg.write_handshake(&tg.handshake());
    let nodes = tg.write_nodes(&three_nodes());
    let (code, out, err) = text(&run(&["sync", "--handshake", p(&handshake), "--nodes-from", p(&nodes)]));
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("Apply complete: 3 registered, 0 deregistered."), "{out}");
    assert!(
        out.contains("(3 AWS read calls, 1 write calls.)"),
        "the group, its VPC, its health; one batched write: {out}"
    );
    let expected: Vec<String> =
        ["10.42.0.11", "10.42.0.12", "10.42.0.13"].iter().map(|ip| format!("{ip}:{NODE_PORT}")).collect();
    assert_eq!(tg.registered().await.into_iter().collect::<Vec<_>>(), expected);

    let (code, out, err) = text(&run(&["plan", "--handshake", p(&handshake), "--nodes-from", p(&nodes)]));
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("No changes. The target group is in step with the cluster (3 targets registered)."), "{out}");
    assert!(!out.contains("register "), "{out}");
    tg.cleanup().await;
}

#[tokio::test]
async fn removing_a_node_from_the_inventory_deregisters_it_and_cordoning_too() {
    let tg = TargetGroupFixture::ip().await;
    let handshake = tg.write_handshake(&tg.handshake());
    let mut nodes = vec![
        node("node-a", "10.42.0.11"),
        node("node-b", "10.42.0.12"),
        node("node-c", "10.42.0.13"),
        node("node-d", "10.42.0.14"),
    ];
    let file = tg.write_nodes(&nodes);
    assert_eq!(run(&["sync", "--handshake", p(&handshake), "--nodes-from", p(&file)]).status.code(), Some(0));

    nodes.pop();
    let file = tg.write_nodes(&nodes);
    let (code, out, _) = text(&run(&["plan", "--handshake", p(&handshake), "--nodes-from", p(&file)]));
    assert_eq!(code, 2);
    let line = format!("  - deregister {:<24} no known node (no such node)", format!("10.42.0.14:{NODE_PORT}"));
    assert!(out.contains(&line), "{out}");
    assert_eq!(run(&["sync", "--handshake", p(&handshake), "--nodes-from", p(&file)]).status.code(), Some(0));
    assert!(!tg.registered().await.contains(&format!("10.42.0.14:{NODE_PORT}")));
    assert_eq!(tg.registered().await.len(), 3);

    nodes[2] = cordoned(nodes[2].clone());
    let file = tg.write_nodes(&nodes);
    let (code, out, _) = text(&run(&[
        "sync",
        "--handshake",
        p(&handshake),
        "--nodes-from",
        p(&file),
        "--wait-drain",
        "--drain-timeout",
        "30s",
    ]));
    assert_eq!(code, 0, "{out}");
    let line = format!("  - deregister {:<24} node node-c (node is cordoned)", format!("10.42.0.13:{NODE_PORT}"));
    assert!(out.contains(&line), "{out}");
    assert!(out.contains("Drained in "), "{out}");
    assert_eq!(tg.registered().await.len(), 2);
    tg.cleanup().await;
}

#[tokio::test]
async fn empty_discovery_is_refused_unless_allowed() {
    let tg = TargetGroupFixture::ip().await;
    let handshake = tg.write_handshake(&tg.handshake());
    let file = tg.write_nodes(&three_nodes());
    assert_eq!(run(&["sync", "--handshake", p(&handshake), "--nodes-from", p(&file)]).status.code(), Some(0));

    let empty = tg.write_nodes(&[]);
    let (code, out, err) = text(&run(&["sync", "--handshake", p(&handshake), "--nodes-from", p(&empty), "--force"]));
    assert_eq!(code, 1, "{out}");
    assert_one_sentence(&err);
    assert!(
        err.contains("refusing to deregister: discovery found no eligible node while 3 target(s) are registered"),
        "{err}"
    );
    assert_eq!(tg.registered().await.len(), 3, "nothing was deregistered");

    let (code, _, err) =
        text(&run(&["sync", "--handshake", p(&handshake), "--nodes-from", p(&empty), "--allow-empty"]));
    assert_eq!(code, 0, "{err}");
    assert!(tg.registered().await.is_empty());
    tg.cleanup().await;
}

#[tokio::test]
async fn deregistering_more_than_the_share_is_refused_unless_forced() {
    let tg = TargetGroupFixture::ip().await;
    let handshake = tg.write_handshake(&tg.handshake());
    let mut nodes = three_nodes();
    nodes.push(node("node-d", "10.42.0.14"));
    let file = tg.write_nodes(&nodes);
    assert_eq!(run(&["sync", "--handshake", p(&handshake), "--nodes-from", p(&file)]).status.code(), Some(0));

    let one = tg.write_nodes(&nodes[..1]);
    let (code, out, _) = text(&run(&["plan", "--handshake", p(&handshake), "--nodes-from", p(&one)]));
    assert_eq!(code, 1, "a refused plan is an error: {out}");
    assert!(
        out.contains("Error: refusing to deregister 3 of 4 registered targets whose nodes discovery did not find (or the node selector leaves out): more than --max-deregister-share 0.5"),
        "{out}"
    );
    assert!(!out.contains("will perform"), "refused deregistrations are not announced as actions: {out}");

    let (code, _, err) = text(&run(&["sync", "--handshake", p(&handshake), "--nodes-from", p(&one)]));
    assert_eq!(code, 1);
    assert_one_sentence(&err);
    assert_eq!(tg.registered().await.len(), 4, "nothing was deregistered");

    let (code, _, err) =
        text(&run(&["sync", "--handshake", p(&handshake), "--nodes-from", p(&one), "--max-deregister-share", "0.8"]));
    assert_eq!(code, 0, "{err}");
    assert_eq!(tg.registered().await.len(), 1);
    tg.cleanup().await;
}

#[tokio::test]
async fn foreign_targets_are_reported_and_only_removed_when_asked() {
    let tg = TargetGroupFixture::ip().await;
    let handshake = tg.write_handshake(&tg.handshake());
    let file = tg.write_nodes(&three_nodes());
    assert_eq!(run(&["sync", "--handshake", p(&handshake), "--nodes-from", p(&file)]).status.code(), Some(0));
    tg.register_directly("10.42.7.7", 8080).await;

    let (code, out, _) = text(&run(&["sync", "--handshake", p(&handshake), "--nodes-from", p(&file)]));
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains(&format!(
            "  ! foreign    {:<24} no known node (not at the NodePort; kept, pass --remove-foreign to deregister)",
            "10.42.7.7:8080"
        )),
        "{out}"
    );
    assert!(tg.registered().await.contains("10.42.7.7:8080"), "kept without --remove-foreign");

    let (code, out, _) =
        text(&run(&["sync", "--handshake", p(&handshake), "--nodes-from", p(&file), "--remove-foreign"]));
    assert_eq!(code, 0, "{out}");
    assert!(!tg.registered().await.contains("10.42.7.7:8080"));
    assert_eq!(tg.registered().await.len(), 3);
    tg.cleanup().await;
}

#[tokio::test]
async fn target_group_drift_is_reported_field_by_field() {
    // Terraform changed the port and the health check; the handshake still says otherwise.
    let tg = TargetGroupFixture::create("ip", 8080, "/healthz").await;
    let mut h = tg.handshake();
    h["target_type"] = json!("instance");
    let handshake = tg.write_handshake(&h);
    let file = tg.write_nodes(&three_nodes());
    let (code, out, err) = text(&run(&["plan", "--handshake", p(&handshake), "--nodes-from", p(&file)]));
    assert_eq!(code, 2, "{out}{err}");
    for line in [
        "  ! target group port: expected 30080 (the NodePort), found 8080\n",
        "  ! target group target type: expected instance, found ip\n",
        "  ! target group health check path: expected /_gatehouse/ready (the proxy's ready path), found /healthz\n",
    ] {
        assert!(out.contains(line), "missing {line:?} in\n{out}");
    }
    // Targets are still mapped by the group's own type (ip), at the handshake's NodePort.
    assert!(out.contains(&format!("+ register   {:<24} node node-a", format!("10.42.0.11:{NODE_PORT}"))), "{out}");
    tg.cleanup().await;
}

#[tokio::test]
async fn missing_and_replaced_target_groups_are_one_sentence_errors() {
    let tg = TargetGroupFixture::ip().await;
    let file = tg.write_nodes(&three_nodes());
    let mut h = tg.handshake();
    let gone = tg.arn.replace(&tg.name, &format!("{}x", &tg.name[..tg.name.len() - 1]));
    h["target_group_arn"] = json!(gone);
    h["target_group_name"] = json!("gh-no-such-group");
    let handshake = tg.write_handshake(&h);
    let (code, _, err) = text(&run(&["plan", "--handshake", p(&handshake), "--nodes-from", p(&file)]));
    assert_eq!(code, 1);
    assert_one_sentence(&err);
    assert!(err.contains(&format!("target group: {gone} does not exist")), "{err}");

    // Replaced: the handshake's ARN is gone, but its name exists with another ARN.
    let mut h = tg.handshake();
    h["target_group_arn"] = json!(gone);
    let handshake = tg.write_handshake(&h);
    let (code, _, err) = text(&run(&["plan", "--handshake", p(&handshake), "--nodes-from", p(&file)]));
    assert_eq!(code, 1);
    assert_one_sentence(&err);
    assert!(err.contains("it was replaced") && err.contains(&tg.arn), "{err}");

    let (code, _, err) =
        text(&run(&["plan", "--target-group-arn", &gone, "--node-port", "30080", "--nodes-from", p(&file)]));
    assert_eq!(code, 1);
    assert_one_sentence(&err);
    tg.cleanup().await;
}

#[tokio::test]
async fn bad_input_is_one_sentence_naming_what_and_where() {
    let tg = TargetGroupFixture::ip().await;
    let nodes = tg.write_nodes(&three_nodes());
    let handshake = tg.write_handshake(&tg.handshake());

    let mut h = tg.handshake();
    h.as_object_mut().expect("object").remove("node_port");
    let broken = tg.dir.path().join("broken-handshake.json");
    std::fs::write(&broken, h.to_string()).expect("write");
    let (code, _, err) = text(&run(&["plan", "--handshake", p(&broken), "--nodes-from", p(&nodes)]));
    assert_eq!(code, 1);
    assert_one_sentence(&err);
    assert_eq!(
        err.trim_end(),
        format!("error: the handshake file {} is missing the required field `node_port`", p(&broken))
    );

    let bad_yaml = tg.dir.path().join("bad.yaml");
    std::fs::write(&bad_yaml, "items:\n  - metadata: {name: a\n").expect("write");
    let (code, _, err) = text(&run(&["plan", "--handshake", p(&handshake), "--nodes-from", p(&bad_yaml)]));
    assert_eq!(code, 1);
    assert_one_sentence(&err);
    assert!(err.contains(&format!("the nodes file {} is not valid YAML or JSON (line", p(&bad_yaml))), "{err}");

    let (code, _, err) = text(&run(&["plan", "--handshake", "/nonexistent/out.json", "--nodes-from", p(&nodes)]));
    assert_eq!(code, 1);
    assert_one_sentence(&err);
    assert!(err.contains("cannot read the handshake file /nonexistent/out.json"), "{err}");

    // One malformed Node: every bad one is named, and nothing is planned.
    let mut bad = three_nodes();
    bad[1]["spec"]["unschedulable"] = json!("maybe");
    bad.push(json!({"kind": "Node", "metadata": {}}));
    let file = tg.write_nodes(&bad);
    let (code, out, err) = text(&run(&["sync", "--handshake", p(&handshake), "--nodes-from", p(&file)]));
    assert_eq!((code, out.as_str()), (1, ""));
    assert_one_sentence(&err);
    assert!(err.starts_with(&format!("error: the nodes file {} has 2 invalid Nodes, so nothing was planned: items[1] (node-b): spec.unschedulable: ", p(&file))), "{err}");
    assert!(err.trim_end().ends_with("; items[3]: metadata.name is missing"), "{err}");
    assert!(tg.registered().await.is_empty());
    tg.cleanup().await;
}

#[test]
fn malformed_target_group_arns_are_refused_before_any_aws_call() {
    // An endpoint nothing listens on: a call would fail differently.
    for (arn, why) in [
        ("hello", "\"hello\" is not an ARN"),
        (
            "arn:aws:elasticloadbalancing:us-east-1:123456789012:loadbalancer/app/gh/0123",
            "names a loadbalancer, not a target group",
        ),
    ] {
        let o = Command::new(BIN)
            .args(["plan", "--target-group-arn", arn, "--node-port", "30080", "--nodes-from", "/nonexistent.yaml"])
            .env("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
            .output()
            .expect("run");
        let (code, _, err) = text(&o);
        assert_eq!(code, 1, "{err}");
        assert!(err.starts_with(&format!("error: invalid value '{arn}' for '--target-group-arn <ARN>': ")), "{err}");
        assert!(err.contains(why), "{err}");
    }
}

#[tokio::test]
async fn a_kubernetes_api_that_never_answers_fails_in_bounded_time_naming_the_server() {
    let tg = TargetGroupFixture::ip().await;
    let handshake = tg.write_handshake(&tg.handshake());
    // Accepts every connection and never answers.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let server = format!("http://{}", listener.local_addr().expect("addr"));
    let hold = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    });
    let kubeconfig = tg.dir.path().join("kubeconfig");
    std::fs::write(&kubeconfig, format!("apiVersion: v1\nkind: Config\nclusters:\n- name: hung\n  cluster: {{server: {server}}}\ncontexts:\n- name: hung\n  context: {{cluster: hung, user: hung}}\ncurrent-context: hung\nusers:\n- name: hung\n  user: {{}}\n")).expect("write");
    let started = std::time::Instant::now();
    let child = tokio::process::Command::new(BIN)
        .args(["plan", "--handshake", p(&handshake), "--kubeconfig", p(&kubeconfig), "--kube-timeout", "2s"])
        .env_remove("RUST_LOG")
        .kill_on_drop(true)
        .output();
    let o = tokio::time::timeout(std::time::Duration::from_secs(30), child).await.expect("bounded").expect("run");
    let took = started.elapsed();
    let (code, _, err) = text(&o);
    assert_eq!(code, 1, "{err}");
    assert_eq!(err, format!("error: the Kubernetes API at {server} did not answer within 2s (list Nodes)\n"));
    assert!(took < std::time::Duration::from_secs(10), "took {took:?}");
    hold.abort();
    tg.cleanup().await;
}

#[tokio::test]
async fn unreachable_endpoint_and_missing_credentials_are_one_sentence() {
    let tg = TargetGroupFixture::ip().await;
    let nodes = tg.write_nodes(&three_nodes());
    let handshake = tg.write_handshake(&tg.handshake());

    // A loopback port nothing listens on: bind one, read it back, close it.
    let port = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
    let url = format!("http://127.0.0.1:{port}");
    let o = Command::new(BIN)
        .args(["plan", "--handshake", p(&handshake), "--nodes-from", p(&nodes)])
        .env("AWS_ENDPOINT_URL", &url)
        .output()
        .expect("run");
    let (code, _, err) = text(&o);
    assert_eq!(code, 1);
    assert_one_sentence(&err);
    assert!(err.starts_with(&format!("error: cannot reach the AWS endpoint {url}: ")), "{err}");

    // Empty config files: no profile anywhere, and nothing for the SDK to warn about.
    let (no_credentials, no_config) = (tg.dir.path().join("credentials"), tg.dir.path().join("config"));
    std::fs::write(&no_credentials, "").expect("write");
    std::fs::write(&no_config, "").expect("write");
    let o = Command::new(BIN)
        .args(["plan", "--handshake", p(&handshake), "--nodes-from", p(&nodes)])
        .env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .env_remove("AWS_SESSION_TOKEN")
        .env_remove("AWS_PROFILE")
        .env("AWS_SHARED_CREDENTIALS_FILE", &no_credentials)
        .env("AWS_CONFIG_FILE", &no_config)
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .output()
        .expect("run");
    let (code, _, err) = text(&o);
    assert_eq!(code, 1);
    assert_one_sentence(&err);
    assert!(err.starts_with("error: no AWS credentials found"), "{err}");

    // A profile that does not exist and no config files at all: the SDK's warnings (about 2 KB
    // of dumped structs in ANSI colours, into a file as well) stay out of the one sentence.
    let o = Command::new(BIN)
        .args(["plan", "--handshake", p(&handshake), "--nodes-from", p(&nodes)])
        .env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .env_remove("RUST_LOG")
        .env("AWS_PROFILE", "no-such-profile")
        .env("AWS_SHARED_CREDENTIALS_FILE", tg.dir.path().join("missing-credentials"))
        .env("AWS_CONFIG_FILE", tg.dir.path().join("missing-config"))
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .output()
        .expect("run");
    let (code, _, err) = text(&o);
    assert_eq!(code, 1);
    assert_one_sentence(&err);
    assert!(!err.contains('\u{1b}'), "no ANSI escapes: {err:?}");
    assert!(err.len() < 400, "{} bytes: {err}", err.len());
    tg.cleanup().await;
}

#[tokio::test]
async fn status_shows_target_health_next_to_each_node() {
    let tg = TargetGroupFixture::ip().await;
    let handshake = tg.write_handshake(&tg.handshake());
    let mut nodes = three_nodes();
    let file = tg.write_nodes(&nodes);
    assert_eq!(run(&["sync", "--handshake", p(&handshake), "--nodes-from", p(&file)]).status.code(), Some(0));
    nodes.push(node("node-new", "10.42.0.99"));
    let file = tg.write_nodes(&nodes);
    let (code, out, err) =
        text(&run(&["status", "--handshake", p(&handshake), "--nodes-from", p(&file), "--output", "json"]));
    assert_eq!(code, 0, "{err}");
    let v: Value = serde_json::from_str(&out).expect("json");
    let rows = v["rows"].as_array().expect("rows");
    assert_eq!(rows.len(), 4, "{out}");
    let a = rows.iter().find(|r| r["node"] == "node-a").expect("node-a");
    assert_eq!(a["target"], format!("10.42.0.11:{NODE_PORT}"));
    assert_ne!(a["state"], "not registered");
    let new = rows.iter().find(|r| r["node"] == "node-new").expect("node-new");
    assert_eq!(new["state"], "not registered");

    // Every node that is not a target says why, in the REASON column.
    let mut why = three_nodes();
    why[1] = cordoned(why[1].clone());
    why[2]["spec"]["taints"] = json!([{"key": "karpenter.sh/disrupted", "effect": "NoSchedule"}]);
    let file = tg.write_nodes(&why);
    let (code, out, err) = text(&run(&["status", "--handshake", p(&handshake), "--nodes-from", p(&file)]));
    assert_eq!(code, 0, "{err}");
    let line = |node: &str| out.lines().find(|l| l.starts_with(node)).unwrap_or_default().to_owned();
    assert!(line("node-b").ends_with("node is cordoned"), "{out}");
    assert!(line("node-c").ends_with("node is being disrupted by Karpenter (karpenter.sh/disrupted)"), "{out}");
    assert!(line("node-b").contains(" no "), "{out}");
    tg.cleanup().await;
}

#[tokio::test]
async fn instance_target_group_registers_the_instance_id_from_provider_id() {
    let tg = TargetGroupFixture::create("instance", NODE_PORT, support::READY_PATH).await;
    let handshake = tg.write_handshake(&tg.handshake());
    let mut no_provider = node("node-kind", "10.42.0.20");
    no_provider["spec"]["providerID"] = json!("kind://docker/kind/kind-worker");
    let file = tg.write_nodes(&[node("node-a", "10.42.0.11"), no_provider]);
    let (code, out, err) = text(&run(&["sync", "--handshake", p(&handshake), "--nodes-from", p(&file)]));
    assert_eq!(code, 0, "{out}{err}");
    let instance = node("node-a", "10.42.0.11")["spec"]["providerID"]
        .as_str()
        .and_then(|p| p.rsplit('/').next())
        .expect("id")
        .to_owned();
    assert!(out.contains(&format!("  + register   {:<24} node node-a", format!("{instance}:{NODE_PORT}"))), "{out}");
    assert!(out.contains("  ? node-kind: spec.providerID \"kind://docker/kind/kind-worker\" does not name an EC2 instance (aws:///zone/i-...)"), "{out}");
    assert_eq!(tg.registered().await.into_iter().collect::<Vec<_>>(), [format!("{instance}:{NODE_PORT}")]);
    tg.cleanup().await;
}

#[test]
fn usage_errors_exit_1_not_the_changes_pending_code() {
    // No emulator needed: clap rejects the arguments before anything runs.
    let o = Command::new(BIN)
        .args([
            "plan",
            "--handshake",
            "h.json",
            "--target-group-arn",
            "arn:aws:elasticloadbalancing:us-east-1:123456789012:targetgroup/gh/1",
            "--node-port",
            "1",
        ])
        .output()
        .expect("run");
    let (code, _, err) = text(&o);
    assert_eq!(code, 1, "{err}");
    assert!(err.starts_with("error: the argument '--handshake <FILE>' cannot be used with"), "{err}");
    let o = Command::new(BIN).args(["plan", "--help"]).output().expect("run");
    assert_eq!(o.status.code(), Some(0));
}

#[tokio::test]
async fn with_cluster_the_target_group_is_the_one_the_module_tagged() {
    let tg = TargetGroupFixture::ip().await;
    let other = TargetGroupFixture::ip().await;
    let cluster = support::unique_name("prod");
    tg.tag_for_cluster(&cluster).await;
    // Another cluster's group, in the same account and region, is not it.
    other.tag_for_cluster(&format!("{cluster}-b")).await;
    let nodes = tg.write_nodes(&three_nodes());
    let (code, out, err) = text(&run(&["plan", "--cluster", &cluster, "--nodes-from", p(&nodes)]));
    assert_eq!(code, 2, "{out}{err}");
    assert!(
        out.starts_with(&format!(
            "Target group {} ({}), target type ip (ipv4), NodePort {NODE_PORT}\n",
            tg.name, tg.arn
        )),
        "{out}"
    );
    let (code, out, err) = text(&run(&["sync", "--cluster", &cluster, "--nodes-from", p(&nodes)]));
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(tg.registered().await.len(), 3);
    assert!(other.registered().await.is_empty(), "the other cluster's group is untouched");
    // GATEHOUSE_CLUSTER says the same (the Helm chart could pass either).
    let o = Command::new(BIN)
        .args(["plan", "--nodes-from", p(&nodes)])
        .env("GATEHOUSE_CLUSTER", &cluster)
        .env("RUST_LOG", "off")
        .output()
        .expect("run");
    let (code, out, err) = text(&o);
    assert_eq!(code, 0, "in step now: {out}{err}");
    tg.cleanup().await;
    other.cleanup().await;
}

#[tokio::test]
async fn with_cluster_no_or_two_tagged_groups_are_one_sentence_errors() {
    let tg = TargetGroupFixture::ip().await;
    let nodes = tg.write_nodes(&three_nodes());
    let cluster = support::unique_name("nobody");
    let (code, out, err) = text(&run(&["plan", "--cluster", &cluster, "--nodes-from", p(&nodes)]));
    assert_eq!((code, out.as_str()), (1, ""), "{err}");
    assert_one_sentence(&err);
    assert!(
        err.contains(&format!("is tagged gatehouse.dev/cluster={cluster}: apply the gatehouse Terraform module with cluster_name = \"{cluster}\"")),
        "{err}"
    );

    let twin = TargetGroupFixture::ip().await;
    tg.tag_for_cluster(&cluster).await;
    twin.tag_for_cluster(&cluster).await;
    let (code, _, err) = text(&run(&["sync", "--cluster", &cluster, "--nodes-from", p(&nodes)]));
    assert_eq!(code, 1, "{err}");
    assert_one_sentence(&err);
    let mut names = [tg.name.clone(), twin.name.clone()];
    names.sort();
    assert!(err.contains("2 target groups at ") && err.contains(&names.join(", ")), "{err}");
    assert!(tg.registered().await.is_empty() && twin.registered().await.is_empty(), "nothing written");

    // A group tagged with a NodePort that is no port.
    twin.cleanup().await;
    tg.tag(&[("gatehouse.dev/node-port", "http")]).await;
    let (code, _, err) = text(&run(&["plan", "--cluster", &cluster, "--nodes-from", p(&nodes)]));
    assert_eq!(code, 1, "{err}");
    assert_one_sentence(&err);
    assert!(err.trim_end().ends_with("but its gatehouse.dev/node-port is \"http\": not a port number"), "{err}");
    tg.cleanup().await;
}

#[test]
fn cluster_is_one_way_to_name_the_target_group_and_checked_locally() {
    // No emulator needed: refused before anything runs.
    let o = Command::new(BIN).args(["plan", "--cluster", "prod", "--handshake", "h.json"]).output().expect("run");
    let (code, _, err) = text(&o);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.starts_with("error: the argument '--cluster <NAME>' cannot be used with '--handshake <FILE>'"),
        "{err}"
    );
    let o = Command::new(BIN).args(["plan", "--cluster", "prod/eu"]).output().expect("run");
    let (code, _, err) = text(&o);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("\"prod/eu\" is not a cluster name"), "{err}");
    let o = Command::new(BIN)
        .args(["plan"])
        .env_remove("GATEHOUSE_HANDSHAKE")
        .env_remove("GATEHOUSE_CLUSTER")
        .output()
        .expect("run");
    let (code, _, err) = text(&o);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("--handshake <FILE>"), "{err}");
}
