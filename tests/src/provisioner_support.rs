//! Provisioner test support: a fresh VPC and target group in the AWS emulator per test (unique
//! names, no clean emulator assumed), handshake and nodes files, and a way to read the group's
//! registrations back with the SDK.
//!
//! Shared with the provisioner's own CLI tests (`provisioner/tests/cli.rs` includes this file by
//! path, because only that package's tests get a freshly built `gatehouse-provisioner` binary),
//! so it uses only crates both packages have.

#![allow(dead_code)]

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};

use aws_config::{BehaviorVersion, SdkConfig};
use aws_sdk_elasticloadbalancingv2::types::{ProtocolEnum, TargetDescription, TargetTypeEnum};
use serde_json::{Value, json};

/// The NodePort the fixtures' target groups and handshakes use.
pub const NODE_PORT: u16 = 30080;
/// The proxy's ready path (gatehouse-convention's READY_PATH).
pub const READY_PATH: &str = "/_gatehouse/ready";

/// The emulator endpoint; fails the test with instructions when it is not set, so a test run
/// without an emulator never passes silently.
pub fn endpoint() -> String {
    match std::env::var("AWS_ENDPOINT_URL") {
        Ok(url) if !url.is_empty() => url,
        _ => panic!(
            "AWS_ENDPOINT_URL is not set: the provisioner integration tests need the AWS emulator. \
             Run them through the project's test script, or `eval \"$(localstack/up)\"` first \
             (GATEHOUSE_EMULATOR=moto GATEHOUSE_EMULATOR_PORT=4567 for moto)."
        ),
    }
}

/// The SDK config the tests use for their own fixture calls (the code under test loads its own).
pub async fn sdk() -> SdkConfig {
    endpoint();
    aws_config::defaults(BehaviorVersion::latest()).http_client(gatehouse_provisioner::aws::https_client()).load().await
}

/// The provisioner's AWS adapter, as the binary builds it (the SDK reads AWS_ENDPOINT_URL),
/// counting its calls into `calls`.
pub async fn aws(calls: &gatehouse_provisioner::metrics::ApiCalls) -> gatehouse_provisioner::aws::Aws {
    endpoint();
    let sdk = gatehouse_provisioner::aws::load_sdk_config(None).await;
    gatehouse_provisioner::aws::Aws::new(&sdk, calls.clone()).expect("a region is configured")
}

/// A name unique across test processes and runs: `gh-<pid>-<n>-<time>` (target group names
/// are at most 32 characters).
pub fn unique_name(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let n = N.fetch_add(1, Ordering::SeqCst);
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
    let name = format!("{prefix}-{}-{n}-{:x}", std::process::id() % 100_000, t % 0xfffff);
    name.chars().take(32).collect()
}

/// A VPC and a target group created for one test, and a temp dir for its files.
#[derive(Debug)]
pub struct TargetGroupFixture {
    pub elb: aws_sdk_elasticloadbalancingv2::Client,
    pub ec2: aws_sdk_ec2::Client,
    pub vpc_id: String,
    pub arn: String,
    pub name: String,
    pub target_type: String,
    pub dir: tempfile::TempDir,
}

impl TargetGroupFixture {
    /// An `ip` target group at [`NODE_PORT`] with the proxy's ready path as health check.
    pub async fn ip() -> Self {
        Self::create("ip", NODE_PORT, READY_PATH).await
    }

    /// A target group as Terraform would create it, with the given type, port and health path.
    pub async fn create(target_type: &str, port: u16, health_check_path: &str) -> Self {
        let sdk = sdk().await;
        let elb = aws_sdk_elasticloadbalancingv2::Client::new(&sdk);
        let ec2 = aws_sdk_ec2::Client::new(&sdk);
        let vpc = ec2.create_vpc().cidr_block("10.42.0.0/16").send().await.expect("CreateVpc in the emulator");
        let vpc_id = vpc.vpc().and_then(|v| v.vpc_id()).expect("vpc id").to_owned();
        let name = unique_name("gh");
        let out = elb
            .create_target_group()
            .name(&name)
            .protocol(ProtocolEnum::Http)
            .port(i32::from(port))
            .vpc_id(&vpc_id)
            .target_type(TargetTypeEnum::from(target_type))
            .health_check_path(health_check_path)
            .health_check_port("traffic-port")
            .send()
            .await
            .expect("CreateTargetGroup in the emulator");
        let arn = out.target_groups()[0].target_group_arn().expect("arn").to_owned();
        let dir = tempfile::tempdir().expect("temp dir");
        Self { elb, ec2, vpc_id, arn, name, target_type: target_type.to_owned(), dir }
    }

    /// What the provisioner is run with for this group: an `ip` group at [`NODE_PORT`], every
    /// node eligible, the default safety policy.
    pub fn settings(
        &self,
        deregistration_delay: Option<std::time::Duration>,
    ) -> gatehouse_provisioner::session::Settings {
        gatehouse_provisioner::session::Settings {
            target: gatehouse_provisioner::session::TargetSource::Expected(gatehouse_provisioner::drift::Expected {
                target_group_arn: self.arn.parse().expect("the emulator's target group ARN"),
                target_group_name: Some(self.name.clone()),
                node_port: NODE_PORT,
                target_type: Some(gatehouse_provisioner::model::TargetType::Ip),
            }),
            selector: gatehouse_provisioner::nodes::Selector::default(),
            policy: gatehouse_provisioner::diff::Policy::default(),
            deregistration_delay,
            node_port_from: None,
        }
    }

    /// The handshake the Terraform module would output for this group, as the bare object.
    pub fn handshake(&self) -> Value {
        json!({
            "schema_version": 1,
            "region": "us-east-1",
            "load_balancer_arn": format!("arn:aws:elasticloadbalancing:us-east-1:000000000000:loadbalancer/app/{}/0", self.name),
            "load_balancer_name": self.name,
            "load_balancer_dns_name": format!("{}.alb.localhost", self.name),
            "target_group_arn": self.arn,
            "target_group_name": self.name,
            "target_type": self.target_type,
            "node_port": NODE_PORT,
            "protocol": "HTTP",
            "health_check_path": READY_PATH,
            "health_check_port": "traffic-port",
            "deregistration_delay_seconds": 0,
            "vpc_id": self.vpc_id,
        })
    }

    /// Writes the handshake as `terraform output -json` of the whole root prints it.
    pub fn write_handshake(&self, handshake: &Value) -> PathBuf {
        let root = json!({
            "gatehouse": {"sensitive": false, "type": ["object", {}], "value": handshake},
            "load_balancer_dns_name": {"sensitive": false, "type": "string", "value": handshake["load_balancer_dns_name"]},
        });
        let path = self.dir.path().join("handshake.json");
        std::fs::write(&path, serde_json::to_vec_pretty(&root).expect("json")).expect("write handshake");
        path
    }

    /// Writes the nodes as `kubectl get nodes -o yaml` prints them.
    pub fn write_nodes(&self, nodes: &[Value]) -> PathBuf {
        let list = json!({"apiVersion": "v1", "kind": "List", "metadata": {"resourceVersion": ""}, "items": nodes});
        let path = self.dir.path().join("nodes.yaml");
        std::fs::write(&path, serde_saphyr::to_string(&list).expect("yaml")).expect("write nodes");
        path
    }

    /// The registrations that are not draining, as `id:port`.
    pub async fn registered(&self) -> BTreeSet<String> {
        let out =
            self.elb.describe_target_health().target_group_arn(&self.arn).send().await.expect("DescribeTargetHealth");
        out.target_health_descriptions()
            .iter()
            .filter(|d| d.target_health().and_then(|h| h.state()).is_none_or(|s| s.as_str() != "draining"))
            .filter_map(|d| d.target())
            .map(|t| format!("{}:{}", t.id().unwrap_or_default(), t.port().unwrap_or_default()))
            .collect()
    }

    /// Tags the group as the Terraform module does with `cluster_name = cluster`.
    pub async fn tag_for_cluster(&self, cluster: &str) {
        self.tag(&[
            ("gatehouse.dev/cluster", cluster),
            ("gatehouse.dev/handshake-version", "1"),
            ("gatehouse.dev/node-port", &NODE_PORT.to_string()),
        ])
        .await;
    }

    /// Adds tags to the group.
    pub async fn tag(&self, tags: &[(&str, &str)]) {
        let tags =
            tags.iter().map(|(k, v)| aws_sdk_elasticloadbalancingv2::types::Tag::builder().key(*k).value(*v).build());
        self.elb.add_tags().resource_arns(&self.arn).set_tags(Some(tags.collect())).send().await.expect("AddTags");
    }

    /// Registers a target behind the provisioner's back (another tool, a human).
    pub async fn register_directly(&self, id: &str, port: u16) {
        self.elb
            .register_targets()
            .target_group_arn(&self.arn)
            .targets(TargetDescription::builder().id(id).port(i32::from(port)).build())
            .send()
            .await
            .expect("RegisterTargets");
    }

    /// Deletes the target group and the VPC (best effort: a failed test leaves them behind,
    /// which no test depends on).
    pub async fn cleanup(self) {
        let _ = self.elb.delete_target_group().target_group_arn(&self.arn).send().await;
        let _ = self.ec2.delete_vpc().vpc_id(&self.vpc_id).send().await;
    }
}

/// The name of the i-th node of a large test cluster: `node-0042`.
pub fn nth_node_name(i: usize) -> String {
    format!("node-{i:04}")
}

/// The InternalIP of the i-th node: 10.42.x.y, 250 nodes to a /24.
pub fn nth_node_ip(i: usize) -> String {
    format!("10.42.{}.{}", i / 250, i % 250 + 1)
}

/// The i-th node's target at [`NODE_PORT`], as `id:port`.
pub fn nth_node_target(i: usize) -> String {
    format!("{}:{NODE_PORT}", nth_node_ip(i))
}

/// A Node as `kubectl get nodes -o json` prints it: Ready, schedulable, with an InternalIP.
pub fn node(name: &str, ip: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
        "spec": {"providerID": format!("aws:///us-east-1a/i-{:0>8x}", ip.bytes().map(u32::from).sum::<u32>())},
        "status": {
            "addresses": [{"type": "InternalIP", "address": ip}, {"type": "Hostname", "address": name}],
            "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady", "message": "kubelet is posting ready status",
                            "lastHeartbeatTime": "2026-11-26T20:00:00Z", "lastTransitionTime": "2026-11-26T20:00:00Z"}],
        },
    })
}

/// The same node, cordoned.
pub fn cordoned(mut node: Value) -> Value {
    node["spec"]["unschedulable"] = json!(true);
    node
}
