//! Applies `terraform/examples/local` against the AWS emulator, reads the `gatehouse` handshake
//! output, and checks through the AWS SDK that what Terraform created is what the handshake says,
//! the handshake's tags on the target group included; then `gatehouse-provisioner --cluster`
//! finds that target group by its tags alone, plans and syncs into it.
//!
//! Needs the emulator (`eval "$(localstack/up)"`, or the project's test script; the example's
//! endpoint follows AWS_ENDPOINT_URL) and terraform, and the provisioner binary built
//! (`cargo build --workspace --all-targets`).

use std::collections::BTreeMap;
use std::process::Command;

use anyhow::{Context, ensure};
use aws_sdk_elasticloadbalancingv2::types::{ActionTypeEnum, ProtocolEnum, TargetTypeEnum};
use gatehouse_tests::provisioner_replica::provisioner_binary;
use gatehouse_tests::{aws, terraform::Example};
use serde_json::Value;

const NODE_PORT: u16 = 30080;

#[tokio::test]
async fn local_example_creates_the_target_group_its_handshake_describes() -> anyhow::Result<()> {
    let endpoint = aws::endpoint_url()?;
    // Unique per run: emulators are shared between test runs and other tests.
    let name = format!("gh-tf-{}", std::process::id());

    let mut example = Example::copy("local")?
        .var("aws_endpoint", &endpoint)
        .var("name", &name)
        .var("cluster_name", &name)
        .var("node_port", NODE_PORT.to_string());
    example.init()?;
    example.apply()?;
    let handshake = example.output_json("gatehouse")?;

    let checked = async {
        check_live_resources(&handshake, &name).await?;
        the_provisioner_finds_the_target_group_by_its_tags(&handshake, &name).await
    }
    .await;
    // Destroy before reporting, so a failed check does not leave the stack behind (Drop would
    // also destroy, but its errors can only be printed).
    let destroyed = example.destroy();
    checked.with_context(|| format!("handshake: {handshake:#}"))?;
    destroyed
}

async fn check_live_resources(handshake: &Value, name: &str) -> anyhow::Result<()> {
    let field = |key: &str| handshake.get(key).with_context(|| format!("handshake has no field {key}"));
    let text = |key: &str| -> anyhow::Result<String> {
        field(key)?.as_str().map(str::to_owned).with_context(|| format!("handshake field {key} is not a string"))
    };
    let expect = |key: &str, expected: Value| -> anyhow::Result<()> {
        let actual = field(key)?;
        ensure!(*actual == expected, "handshake field {key} is {actual}, expected {expected}");
        Ok(())
    };

    expect("schema_version", 1.into())?;
    expect("region", "us-east-1".into())?;
    expect("target_type", "ip".into())?;
    expect("node_port", NODE_PORT.into())?;
    expect("protocol", "HTTP".into())?;
    expect("health_check_path", "/_gatehouse/ready".into())?;
    expect("health_check_port", "traffic-port".into())?;
    expect("deregistration_delay_seconds", 30.into())?;
    expect("load_balancer_name", name.into())?;
    expect("target_group_name", name.into())?;
    expect("cluster_name", name.into())?;
    let tg_arn = text("target_group_arn")?;
    let lb_arn = text("load_balancer_arn")?;

    let elb = aws::elbv2_client().await?;

    let tgs = elb.describe_target_groups().target_group_arns(&tg_arn).send().await?;
    let [tg] = tgs.target_groups() else {
        anyhow::bail!("expected exactly one target group {tg_arn}, got {:?}", tgs.target_groups());
    };
    ensure!(tg.port() == Some(i32::from(NODE_PORT)), "target group port: {:?}", tg.port());
    ensure!(tg.protocol() == Some(&ProtocolEnum::Http), "target group protocol: {:?}", tg.protocol());
    ensure!(tg.target_type() == Some(&TargetTypeEnum::Ip), "target type: {:?}", tg.target_type());
    ensure!(tg.health_check_path() == Some("/_gatehouse/ready"), "health check path: {:?}", tg.health_check_path());
    ensure!(tg.vpc_id() == Some(text("vpc_id")?.as_str()), "vpc: {:?}", tg.vpc_id());
    ensure!(
        tg.load_balancer_arns() == [lb_arn.clone()],
        "target group's load balancers: {:?}",
        tg.load_balancer_arns()
    );

    let described = elb.describe_tags().resource_arns(&tg_arn).send().await?;
    let tags: BTreeMap<&str, &str> = described
        .tag_descriptions()
        .iter()
        .flat_map(|d| d.tags())
        .filter_map(|t| Some((t.key()?, t.value()?)))
        .filter(|(k, _)| k.starts_with("gatehouse.dev/"))
        .collect();
    let port = NODE_PORT.to_string();
    let want = BTreeMap::from([
        ("gatehouse.dev/cluster", name),
        ("gatehouse.dev/handshake-version", "1"),
        ("gatehouse.dev/node-port", port.as_str()),
    ]);
    ensure!(tags == want, "the target group's handshake tags: {tags:?}, expected {want:?}");

    let attributes = elb.describe_target_group_attributes().target_group_arn(&tg_arn).send().await?;
    let delay = attributes
        .attributes()
        .iter()
        .find(|a| a.key() == Some("deregistration_delay.timeout_seconds"))
        .and_then(|a| a.value());
    ensure!(delay == Some("30"), "deregistration delay: {delay:?}");

    let lbs = elb.describe_load_balancers().names(name).send().await?;
    let [lb] = lbs.load_balancers() else {
        anyhow::bail!("expected exactly one load balancer {name}, got {:?}", lbs.load_balancers());
    };
    ensure!(lb.load_balancer_arn() == Some(lb_arn.as_str()), "load balancer arn: {:?}", lb.load_balancer_arn());

    let listeners = elb.describe_listeners().load_balancer_arn(&lb_arn).send().await?;
    let http = listeners
        .listeners()
        .iter()
        .find(|l| l.port() == Some(80))
        .with_context(|| format!("no listener on port 80: {:?}", listeners.listeners()))?;
    ensure!(http.protocol() == Some(&ProtocolEnum::Http), "listener protocol: {:?}", http.protocol());
    let forwards_to_tg = http.default_actions().iter().any(|a| {
        a.r#type() == Some(&ActionTypeEnum::Forward)
            && (a.target_group_arn() == Some(tg_arn.as_str())
                || a.forward_config()
                    .is_some_and(|f| f.target_groups().iter().any(|t| t.target_group_arn() == Some(tg_arn.as_str()))))
    });
    ensure!(forwards_to_tg, "listener 80 does not forward to {tg_arn}: {:?}", http.default_actions());
    Ok(())
}

/// `plan`, `sync` and `plan` with `--cluster` and nothing else about the target group: the plan
/// names the group the handshake names, and the node lands in it.
async fn the_provisioner_finds_the_target_group_by_its_tags(handshake: &Value, cluster: &str) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let nodes = dir.path().join("nodes.yaml");
    std::fs::write(
        &nodes,
        serde_json::to_string(&serde_json::json!({"apiVersion": "v1", "kind": "List", "items": [{
            "kind": "Node", "metadata": {"name": "node-a"},
            "status": {"addresses": [{"type": "InternalIP", "address": "10.0.1.11"}],
                       "conditions": [{"type": "Ready", "status": "True"}]},
        }]}))?,
    )?;
    let run = |command: &str| -> anyhow::Result<(i32, String)> {
        let out = Command::new(provisioner_binary())
            .args([command, "--cluster", cluster, "--nodes-from"])
            .arg(&nodes)
            .env("RUST_LOG", "off")
            .output()?;
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr);
        Ok((out.status.code().unwrap_or(-1), format!("{stdout}{stderr}")))
    };
    let arn = handshake["target_group_arn"].as_str().context("target_group_arn")?;
    let (code, out) = run("plan")?;
    ensure!(code == 2, "plan --cluster {cluster} exited {code}: {out}");
    ensure!(
        out.starts_with(&format!("Target group {cluster} ({arn}), target type ip (ipv4), NodePort {NODE_PORT}\n")),
        "{out}"
    );
    ensure!(out.contains(&format!("+ register   10.0.1.11:{NODE_PORT}")), "{out}");
    let (code, out) = run("sync")?;
    ensure!(code == 0, "sync --cluster {cluster} exited {code}: {out}");
    let (code, out) = run("plan")?;
    ensure!(code == 0, "plan after sync exited {code}: {out}");
    Ok(())
}
