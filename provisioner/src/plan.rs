//! A plan: what discovery found, the diff against the target group, the NodePort decision, drift
//! and the readiness-gate conditions to set, rendered as text in the style of `terraform plan`
//! or as JSON. Pure: the AWS and Kubernetes reads happen before, the writes after.

use std::collections::BTreeMap;
use std::fmt::{self, Write as _};

use serde::Serialize;
use serde_json::{Value, json};

use crate::diff::{self, Change, Cluster, Diff, Policy};
use crate::drift::{self, Expected, Finding};
use crate::model::{
    ObservedTarget, ProxyPod, Target, TargetGroupFacts, TargetSpec, TargetType, VpcCidrs, availability_zone,
};
use crate::nodes::NodeView;
use crate::proxy::{self, GateTarget, ProxyView};

/// What discovery found: the nodes, and with a proxy Service what it says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ClusterView {
    pub nodes: Vec<NodeView>,
    pub proxy: Option<ProxyView>,
}

/// Which side wins when the handshake's NodePort and the proxy Service's disagree.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum NodePortSource {
    /// Register at the handshake's NodePort (the Service will be fixed).
    Handshake,
    /// Register at the proxy Service's nodePort (the handshake, i.e. Terraform, will be fixed).
    Service,
}

/// Why a plan writes nothing at all.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Blocked {
    /// Registering at either port would send traffic where no proxy listens.
    NodePortMismatch { service: String, handshake: u16, found: Vec<u16> },
    /// `--node-port-from service`, but the Service has no single traffic port.
    NoServicePort { service: String, found: Vec<u16> },
}

impl fmt::Display for Blocked {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ports = |found: &[u16]| {
            if found.is_empty() {
                "no nodePort".to_owned()
            } else {
                format!("nodePort {}", found.iter().map(ToString::to_string).collect::<Vec<_>>().join(", "))
            }
        };
        match self {
            Self::NodePortMismatch { service, handshake, found } => write!(
                f,
                "refusing to write: the handshake's NodePort is {handshake} but the proxy Service {service} has {}; every health check would fail at the wrong one (pass --node-port-from handshake or --node-port-from service to say which is right)",
                ports(found)
            ),
            Self::NoServicePort { service, found } => write!(
                f,
                "refusing to write: --node-port-from service, but the proxy Service {service} has {} and none named http",
                ports(found)
            ),
        }
    }
}

/// Which target group the plan is for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TargetGroupRef {
    pub arn: String,
    pub name: String,
    pub spec: TargetSpec,
}

/// A readiness-gate condition to set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GateUpdate {
    pub pod: ProxyPod,
    pub gate: GateTarget,
}

/// Everything one run found and intends to do.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Plan {
    pub target_group: TargetGroupRef,
    pub diff: Diff,
    /// Eligible nodes without a target id (`(node, reason)`).
    pub unmappable: Vec<(String, String)>,
    pub drift: Vec<Finding>,
    pub blocked: Option<Blocked>,
    /// The AvailabilityZone of each registration that needs one (`all`: outside the VPC).
    pub availability_zones: BTreeMap<Target, &'static str>,
    /// Proxy pods whose readiness-gate condition changes once this plan is applied.
    pub gates: Vec<GateUpdate>,
}

/// Exit codes, as `terraform plan -detailed-exitcode`.
pub mod exit {
    /// Nothing to do.
    pub const CLEAN: u8 = 0;
    /// Error (including a safety refusal).
    pub const ERROR: u8 = 1;
    /// Changes pending, or drift found.
    pub const PENDING: u8 = 2;
}

/// The inputs of one plan.
#[derive(Debug, Clone, Copy)]
pub struct Inputs<'a> {
    pub expected: &'a Expected,
    pub target_group: &'a TargetGroupFacts,
    pub target_type: TargetType,
    pub vpc: &'a VpcCidrs,
    /// Drift of the target group, found when it was read.
    pub target_group_drift: &'a [Finding],
    pub policy: &'a Policy,
    pub node_port_from: Option<NodePortSource>,
    pub cluster: &'a ClusterView,
    pub observed: &'a [ObservedTarget],
}

/// Plans one run.
pub fn plan(inputs: Inputs<'_>) -> Plan {
    let mut drift = inputs.target_group_drift.to_vec();
    let service = inputs.cluster.proxy.as_ref().map(|p| &p.service);
    drift.extend(service.and_then(|s| drift::check_proxy_service(inputs.expected.node_port, s)));
    let (port, blocked) = node_port(inputs.expected.node_port, service, inputs.node_port_from);
    let spec = TargetSpec { target_type: inputs.target_type, family: inputs.target_group.family, port };
    let ready = inputs.cluster.proxy.as_ref().map(ProxyView::ready_nodes);
    let cluster = Cluster { nodes: &inputs.cluster.nodes, ready_proxy_nodes: ready.as_ref() };
    let diff = diff::diff(cluster, inputs.observed, spec, inputs.policy);
    let unmappable = inputs
        .cluster
        .nodes
        .iter()
        .filter(|n| cluster.eligibility(n).is_ok())
        .filter_map(|n| n.target_id(spec.target_type, spec.family).err().map(|e| (n.name.clone(), e.to_string())))
        .collect();
    let availability_zones = diff
        .register
        .iter()
        .filter_map(|c| availability_zone(&c.target, spec, inputs.vpc).map(|az| (c.target.clone(), az)))
        .collect();
    let after = if blocked.is_some() { inputs.observed.to_vec() } else { predicted(inputs.observed, &diff) };
    let gates = gate_updates(inputs.cluster, spec, &after);
    Plan {
        target_group: TargetGroupRef {
            arn: inputs.target_group.arn.clone(),
            name: inputs.target_group.name.clone(),
            spec,
        },
        diff,
        unmappable,
        drift,
        blocked,
        availability_zones,
        gates,
    }
}

/// The port to register at, or why nothing may be written.
fn node_port(
    handshake: u16,
    service: Option<&crate::model::ProxyService>,
    from: Option<NodePortSource>,
) -> (u16, Option<Blocked>) {
    let Some(service) = service.filter(|s| s.node_ports.is_some()) else {
        // No Service to compare with (or it is missing, which the drift and the missing
        // endpoints report): the handshake's port.
        return (handshake, None);
    };
    let found = service.ports();
    if found.contains(&handshake) {
        return (handshake, None);
    }
    match from {
        Some(NodePortSource::Handshake) => (handshake, None),
        Some(NodePortSource::Service) => match service.traffic_node_port() {
            Some(port) => (port, None),
            None => (handshake, Some(Blocked::NoServicePort { service: service.name.clone(), found })),
        },
        None => (handshake, Some(Blocked::NodePortMismatch { service: service.name.clone(), handshake, found })),
    }
}

/// What DescribeTargetHealth will say right after `diff` is applied: registrations `initial`,
/// deregistrations `draining`.
pub fn predicted(observed: &[ObservedTarget], diff: &Diff) -> Vec<ObservedTarget> {
    let mut by_target: BTreeMap<Target, ObservedTarget> =
        observed.iter().map(|o| (o.target.clone(), o.clone())).collect();
    for c in &diff.deregister {
        by_target.insert(
            c.target.clone(),
            ObservedTarget {
                target: c.target.clone(),
                state: "draining".into(),
                reason: Some("Target.DeregistrationInProgress".into()),
            },
        );
    }
    for c in &diff.register {
        by_target.insert(
            c.target.clone(),
            ObservedTarget {
                target: c.target.clone(),
                state: "initial".into(),
                reason: Some("Elb.RegistrationInProgress".into()),
            },
        );
    }
    by_target.into_values().collect()
}

/// The proxy pods whose gate condition differs from what `observed` says it should be.
pub fn gate_updates(cluster: &ClusterView, spec: TargetSpec, observed: &[ObservedTarget]) -> Vec<GateUpdate> {
    let Some(proxy) = &cluster.proxy else { return Vec::new() };
    let ready = proxy.ready_nodes();
    let by_id: BTreeMap<&str, &ObservedTarget> =
        observed.iter().filter(|o| o.target.port == spec.port).map(|o| (o.target.id.as_str(), o)).collect();
    let nodes: BTreeMap<&str, &NodeView> = cluster.nodes.iter().map(|n| (n.name.as_str(), n)).collect();
    proxy
        .proxy_pods()
        .into_iter()
        .filter(|p| p.has_gate)
        .filter_map(|pod| {
            let node = pod.node.as_deref().and_then(|n| nodes.get(n).copied());
            let gate = proxy::gate_target(pod, node, spec, &ready, &by_id);
            (!proxy::gate_is_current(pod, &gate)).then(|| GateUpdate { pod: pod.clone(), gate })
        })
        .collect()
}

impl Plan {
    /// The `plan` exit code: a refusal, a block or targets over the quota are errors; pending
    /// changes or drift are 2.
    pub fn exit_code(&self) -> u8 {
        if self.blocked.is_some() || self.diff.refusal.is_some() || !self.diff.over_quota.is_empty() {
            exit::ERROR
        } else if self.diff.has_changes() || !self.drift.is_empty() {
            exit::PENDING
        } else {
            exit::CLEAN
        }
    }

    /// Why applying this plan cannot reach the desired state, as one sentence.
    pub fn problem(&self) -> Option<String> {
        if let Some(blocked) = &self.blocked {
            return Some(blocked.to_string());
        }
        if let Some(refusal) = &self.diff.refusal {
            return Some(refusal.to_string());
        }
        (!self.diff.over_quota.is_empty()).then(|| self.quota_message())
    }

    fn quota_message(&self) -> String {
        let n = self.diff.over_quota.len();
        format!(
            "{n} eligible node{} not registered: the target group may hold at most {} targets (--max-targets; AWS's quota), draining ones included; they are added in node-name order as places free up",
            if n == 1 { " is" } else { "s are" },
            self.diff.max_targets
        )
    }

    /// The plan as text, like `terraform plan`.
    pub fn render_text(&self) -> String {
        let tg = &self.target_group;
        let d = &self.diff;
        let mut out = String::new();
        let spec = tg.spec;
        let family = if spec.target_type == TargetType::Ip { format!(" ({})", spec.family) } else { String::new() };
        let _ = writeln!(
            out,
            "Target group {} ({}), target type {}{family}, NodePort {}",
            tg.name, tg.arn, spec.target_type, spec.port
        );
        let _ = writeln!(out);
        if d.has_writes() {
            let header = if self.blocked.is_some() {
                "gatehouse-provisioner would perform the following actions, but refuses to write (see the error below):"
            } else {
                "gatehouse-provisioner will perform the following actions:"
            };
            let _ = writeln!(out, "{header}");
            let _ = writeln!(out);
            // Deregistrations first: that is the order they are applied in.
            for c in &d.deregister {
                line(&mut out, "-", "deregister", c, Some(&c.why.to_string()));
            }
            for c in &d.register {
                let note =
                    self.availability_zones.get(&c.target).map(|az| format!("outside the VPC: AvailabilityZone {az}"));
                line(&mut out, "+", "register", c, note.as_deref());
            }
            let _ = writeln!(out);
        }
        if !d.later.is_empty() || !d.refused.is_empty() || !d.over_quota.is_empty() {
            let _ = writeln!(out, "Held back (nothing is written for these this run):");
            let _ = writeln!(out);
            for c in &d.later {
                line(
                    &mut out,
                    "~",
                    "later",
                    c,
                    Some(&format!("{}; in a later wave, once this one has drained", c.why)),
                );
            }
            for c in &d.refused {
                line(&mut out, "x", "refused", c, Some(&format!("{}; refused, see the error below", c.why)));
            }
            for c in &d.over_quota {
                line(
                    &mut out,
                    "?",
                    "over quota",
                    c,
                    Some(&format!("the group may hold at most {} targets", d.max_targets)),
                );
            }
            let _ = writeln!(out);
        }
        if !d.foreign.is_empty() || !d.draining.is_empty() {
            for c in &d.foreign {
                line(
                    &mut out,
                    "!",
                    "foreign",
                    c,
                    Some("not at the NodePort; kept, pass --remove-foreign to deregister"),
                );
            }
            for c in &d.draining {
                line(&mut out, "~", "draining", c, Some("already deregistered, the ALB is draining it"));
            }
            let _ = writeln!(out);
        }
        if !self.unmappable.is_empty() {
            let _ = writeln!(out, "Eligible nodes that cannot be registered:");
            for (node, reason) in &self.unmappable {
                let _ = writeln!(out, "  ? {node}: {reason}");
            }
            let _ = writeln!(out);
        }
        if !self.drift.is_empty() {
            let _ = writeln!(out, "Drift (owned by Terraform or the proxy's manifest; reported, not changed):");
            for f in &self.drift {
                let _ = writeln!(out, "  ! {f}");
            }
            let _ = writeln!(out);
        }
        if let Some(problem) = self.problem() {
            let _ = writeln!(out, "Error: {problem}.");
            let _ = writeln!(out);
        }
        if d.has_changes() {
            let mut summary = format!(
                "Plan: {} to register, {} to deregister, {} unchanged",
                d.register.len(),
                d.deregister.len(),
                d.unchanged.len()
            );
            for (n, what) in
                [(d.later.len(), "in later waves"), (d.refused.len(), "refused"), (d.over_quota.len(), "over quota")]
            {
                if n > 0 {
                    let _ = write!(summary, "; {n} {what}");
                }
            }
            let _ = writeln!(out, "{summary}.");
        } else {
            let _ = writeln!(
                out,
                "No changes. The target group is in step with the cluster ({} target{} registered).",
                d.unchanged.len(),
                if d.unchanged.len() == 1 { "" } else { "s" }
            );
        }
        out
    }

    /// The plan as JSON: the same content as the text.
    pub fn to_json(&self) -> Value {
        let d = &self.diff;
        let spec = self.target_group.spec;
        json!({
            "target_group": {
                "arn": self.target_group.arn,
                "name": self.target_group.name,
                "target_type": spec.target_type,
                "ip_address_type": spec.family.as_str(),
                "node_port": spec.port,
            },
            "register": d.register.iter().map(|c| {
                let mut v = change(c);
                v["availability_zone"] = json!(self.availability_zones.get(&c.target));
                v
            }).collect::<Vec<_>>(),
            "deregister": changes(&d.deregister),
            "later": changes(&d.later),
            "refused": changes(&d.refused),
            "over_quota": changes(&d.over_quota),
            "unchanged": changes(&d.unchanged),
            "foreign": changes(&d.foreign),
            "draining": changes(&d.draining),
            "unmappable": self.unmappable.iter().map(|(n, r)| json!({"node": n, "reason": r})).collect::<Vec<_>>(),
            "drift": self.drift.iter().map(|f| {
                let mut v = serde_json::to_value(f).unwrap_or(Value::Null);
                if let Some(o) = v.as_object_mut() { o.insert("message".into(), f.to_string().into()); }
                v
            }).collect::<Vec<_>>(),
            "refusal": d.refusal.as_ref().map(|r| json!({"detail": r, "message": r.to_string()})),
            "blocked": self.blocked.as_ref().map(|b| json!({"detail": b, "message": b.to_string()})),
            "gates": self.gates.iter().map(|g| json!({
                "pod": format!("{}/{}", g.pod.namespace, g.pod.name), "status": g.gate.status, "reason": g.gate.reason,
            })).collect::<Vec<_>>(),
            "summary": {
                "register": d.register.len(),
                "deregister": d.deregister.len(),
                "later": d.later.len(),
                "refused": d.refused.len(),
                "over_quota": d.over_quota.len(),
                "unchanged": d.unchanged.len(),
                "foreign": d.foreign.len(),
                "draining": d.draining.len(),
                "drift": self.drift.len(),
                "changes_pending": d.has_changes(),
            },
        })
    }
}

fn line(out: &mut String, sign: &str, verb: &str, c: &Change, note: Option<&str>) {
    let node = c.node.as_deref().map_or_else(|| "no known node".to_owned(), |n| format!("node {n}"));
    let _ = match note {
        Some(note) => writeln!(out, "  {sign} {verb:<10} {:<24} {node} ({note})", c.target.to_string()),
        None => writeln!(out, "  {sign} {verb:<10} {:<24} {node}", c.target.to_string()),
    };
}

fn change(c: &Change) -> Value {
    json!({"id": c.target.id, "port": c.target.port, "node": c.node, "reason": c.why.to_string()})
}

fn changes(cs: &[Change]) -> Vec<Value> {
    cs.iter().map(change).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{IpFamily, ServiceNodePort};
    use crate::nodes::fixtures::*;
    use k8s_openapi::api::core::v1::Node;

    use crate::drift::fixtures::expected;

    fn tg() -> TargetGroupFacts {
        crate::drift::fixtures::target_group("gh")
    }

    fn obs(id: &str, port: u16) -> ObservedTarget {
        ObservedTarget { target: Target { id: id.into(), port }, state: "healthy".into(), reason: None }
    }

    struct Case {
        nodes: Vec<Node>,
        observed: Vec<ObservedTarget>,
        drift: Vec<Finding>,
        proxy: Option<ProxyView>,
        policy: Policy,
        from: Option<NodePortSource>,
        vpc: VpcCidrs,
    }

    impl Case {
        fn new(nodes: Vec<Node>, observed: Vec<ObservedTarget>) -> Self {
            Self {
                nodes,
                observed,
                drift: vec![],
                proxy: None,
                policy: Policy::default(),
                from: None,
                vpc: VpcCidrs::parse(["10.0.0.0/16"]),
            }
        }

        fn plan(&self) -> Plan {
            let cluster = ClusterView { nodes: views_of(&self.nodes), proxy: self.proxy.clone() };
            plan(Inputs {
                expected: &expected(),
                target_group: &tg(),
                target_type: TargetType::Ip,
                vpc: &self.vpc,
                target_group_drift: &self.drift,
                policy: &self.policy,
                node_port_from: self.from,
                cluster: &cluster,
                observed: &self.observed,
            })
        }
    }

    fn proxy_with_port(port: u16) -> ProxyView {
        ProxyView {
            service: crate::model::ProxyService {
                name: "gatehouse/proxy".into(),
                node_ports: Some(vec![ServiceNodePort { name: Some("http".into()), node_port: port }]),
            },
            endpoints: vec![crate::model::ProxyEndpoint {
                node: Some("n1".into()),
                pod: None,
                ready: true,
                serving: true,
                terminating: false,
            }],
            pods: BTreeMap::new(),
        }
    }

    #[test]
    fn changes_render_like_terraform_plan_with_node_names() {
        let nodes =
            vec![node("n1", "10.0.0.1", "i-1"), node("n2", "10.0.0.2", "i-2"), cordoned(node("n3", "10.0.0.3", "i-3"))];
        let p = Case::new(nodes, vec![obs("10.0.0.1", 30080), obs("10.0.0.3", 30080)]).plan();
        let text = p.render_text();
        assert!(text.starts_with("Target group gh (arn:aws:elasticloadbalancing:us-east-1:123456789012:targetgroup/gh/1), target type ip (ipv4), NodePort 30080\n"), "{text}");
        assert!(
            text.contains(&format!("  - deregister {:<24} node n3 (node is cordoned)", "10.0.0.3:30080")),
            "{text}"
        );
        assert!(text.contains(&format!("  + register   {:<24} node n2\n", "10.0.0.2:30080")), "{text}");
        assert!(text.find("- deregister").expect("dereg") < text.find("+ register").expect("reg"));
        assert!(text.ends_with("Plan: 1 to register, 1 to deregister, 1 unchanged.\n"), "{text}");
        assert_eq!(p.exit_code(), exit::PENDING);
    }

    #[test]
    fn no_changes_says_so_and_exits_zero() {
        let p = Case::new(vec![node("n1", "10.0.0.1", "i-1")], vec![obs("10.0.0.1", 30080)]).plan();
        assert!(
            p.render_text().contains("No changes. The target group is in step with the cluster (1 target registered).")
        );
        assert_eq!(p.exit_code(), exit::CLEAN);
    }

    #[test]
    fn drift_alone_is_pending_and_listed() {
        let mut case = Case::new(vec![node("n1", "10.0.0.1", "i-1")], vec![obs("10.0.0.1", 30080)]);
        case.drift = vec![Finding::Port { expected: 30080, found: Some(80) }];
        let p = case.plan();
        assert!(p.render_text().contains("  ! target group port: expected 30080 (the NodePort), found 80\n"));
        assert_eq!(p.exit_code(), exit::PENDING);
    }

    #[test]
    fn refused_deregistrations_are_not_listed_as_actions() {
        let p = Case::new(vec![], vec![obs("10.0.0.1", 30080)]).plan();
        let text = p.render_text();
        assert!(!text.contains("will perform"), "{text}");
        assert!(
            text.contains(&format!(
                "  x refused    {:<24} no known node (no such node; refused, see the error below)",
                "10.0.0.1:30080"
            )),
            "{text}"
        );
        assert!(text.contains("Error: refusing to deregister: discovery found no eligible node"), "{text}");
        assert!(text.ends_with("Plan: 0 to register, 0 to deregister, 0 unchanged; 1 refused.\n"), "{text}");
        assert_eq!(p.exit_code(), exit::ERROR);
    }

    #[test]
    fn later_waves_are_pending_not_an_error() {
        let mut nodes: Vec<Node> = (1..=4).map(|i| node(&format!("n{i}"), &format!("10.0.0.{i}"), "i-1")).collect();
        nodes[2] = cordoned(nodes[2].clone());
        nodes[3] = cordoned(nodes[3].clone());
        let observed = (1..=4).map(|i| obs(&format!("10.0.0.{i}"), 30080)).collect();
        let mut case = Case::new(nodes, observed);
        case.policy.max_deregister_share = 0.25;
        let p = case.plan();
        let text = p.render_text();
        assert!(text.contains("  ~ later      10.0.0.4:30080           node n4 (node is cordoned; in a later wave, once this one has drained)"), "{text}");
        assert_eq!(p.exit_code(), exit::PENDING);
    }

    #[test]
    fn outside_the_vpc_registrations_carry_availability_zone_all() {
        let nodes = vec![node("n1", "10.0.0.1", "i-1"), node("n2", "192.168.7.2", "i-2")];
        let p = Case::new(nodes, vec![]).plan();
        assert_eq!(p.availability_zones.len(), 1);
        let text = p.render_text();
        assert!(text.contains("node n2 (outside the VPC: AvailabilityZone all)"), "{text}");
        assert_eq!(p.to_json()["register"][1]["availability_zone"], "all");
        assert_eq!(p.to_json()["register"][0]["availability_zone"], Value::Null);
    }

    #[test]
    fn ipv6_targets_render_in_brackets() {
        let mut case = Case::new(vec![with_internal_ips(node("n1", "x", "i-1"), &["fd00::e"])], vec![]);
        case.vpc = VpcCidrs::default();
        let mut plan = case.plan();
        assert!(plan.unmappable[0].1.contains("no ipv4 InternalIP"), "{:?}", plan.unmappable);
        // The same node against an ipv6 group.
        let mut group = tg();
        group.family = IpFamily::V6;
        let cluster = ClusterView { nodes: views_of(&case.nodes), proxy: None };
        plan = super::plan(Inputs {
            expected: &expected(),
            target_group: &group,
            target_type: TargetType::Ip,
            vpc: &VpcCidrs::default(),
            target_group_drift: &[],
            policy: &Policy::default(),
            node_port_from: None,
            cluster: &cluster,
            observed: &[],
        });
        assert!(
            plan.render_text().contains("  + register   [fd00::e]:30080          node n1\n"),
            "{}",
            plan.render_text()
        );
    }

    #[test]
    fn a_node_port_mismatch_blocks_every_write_unless_a_side_is_chosen() {
        let mut case = Case::new(vec![node("n1", "10.0.0.1", "i-1")], vec![]);
        case.proxy = Some(proxy_with_port(31999));
        let p = case.plan();
        assert_eq!(
            p.blocked,
            Some(Blocked::NodePortMismatch { service: "gatehouse/proxy".into(), handshake: 30080, found: vec![31999] })
        );
        let message = p.problem().expect("problem");
        assert!(
            message.contains("NodePort is 30080 but the proxy Service gatehouse/proxy has nodePort 31999"),
            "{message}"
        );
        assert!(p.render_text().contains("would perform the following actions, but refuses to write"));
        assert_eq!(p.exit_code(), exit::ERROR);

        case.from = Some(NodePortSource::Service);
        let p = case.plan();
        assert_eq!((p.blocked.clone(), p.target_group.spec.port), (None, 31999));
        assert_eq!(p.diff.register[0].target.to_string(), "10.0.0.1:31999");
        case.from = Some(NodePortSource::Handshake);
        let p = case.plan();
        assert_eq!((p.blocked.clone(), p.target_group.spec.port), (None, 30080));
        assert_eq!(p.exit_code(), exit::PENDING, "the Service's drift is still reported");
    }

    #[test]
    fn over_quota_is_an_error_before_any_write() {
        let nodes: Vec<Node> = (1..=3).map(|i| node(&format!("n{i}"), &format!("10.0.0.{i}"), "i-1")).collect();
        let mut case = Case::new(nodes, vec![]);
        case.policy.max_targets = 2;
        let p = case.plan();
        assert_eq!(p.exit_code(), exit::ERROR);
        let text = p.render_text();
        assert!(
            text.contains("  ? over quota 10.0.0.3:30080           node n3 (the group may hold at most 2 targets)"),
            "{text}"
        );
        assert!(
            text.contains("Error: 1 eligible node is not registered: the target group may hold at most 2 targets"),
            "{text}"
        );
    }

    #[test]
    fn json_carries_the_same_content() {
        let mut case = Case::new(vec![node("n1", "10.0.0.1", "i-1")], vec![obs("10.0.0.9", 30080), obs("10.0.0.9", 1)]);
        case.drift = vec![Finding::ProxyServiceMissing { service: "a/b".into() }];
        let v = case.plan().to_json();
        assert_eq!(
            v["register"][0],
            json!({"id": "10.0.0.1", "port": 30080, "node": "n1", "reason": "node is eligible", "availability_zone": null})
        );
        assert_eq!(v["deregister"][0]["reason"], "no such node");
        assert_eq!(v["foreign"][0]["port"], 1);
        assert_eq!(v["drift"][0]["field"], "proxy_service_missing");
        assert_eq!(v["drift"][0]["message"], "proxy Service a/b does not exist");
        assert_eq!(v["summary"]["changes_pending"], true);
        assert_eq!(v["target_group"]["node_port"], 30080);
        assert_eq!(v["target_group"]["ip_address_type"], "ipv4");
        assert_eq!(v["refusal"], Value::Null);
    }
}
