//! Which nodes should receive traffic, and under which target id. Pure: no I/O.
//!
//! [`view`] reduces a Node to its contribution to the desired target set ([`NodeView`]):
//! eligibility, the instance id and the InternalIPs. Everything else a Node carries (heartbeat
//! times, capacity, images) is dropped, so `watch` can tell in O(1) that an update changes
//! nothing. The rules are those of the AWS Load Balancer Controller and the Kubernetes service
//! controller, plus the removal signals of Karpenter and Cluster Autoscaler; each is a row of
//! [`tests::eligibility_table`].

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use k8s_openapi::api::core::v1::Node;
use serde::Serialize;

use crate::model::{IpFamily, TargetType};

/// The label with which Kubernetes itself keeps a node out of external load balancers
/// (kubeadm puts it on control-plane nodes; Karpenter on a node it terminates).
pub const EXCLUDE_LABEL: &str = "node.kubernetes.io/exclude-from-external-load-balancers";
/// Its alpha spelling, which the AWS Load Balancer Controller still honours.
pub const EXCLUDE_LABEL_ALPHA: &str = "alpha.service-controller.kubernetes.io/exclude-balancer";
/// Control-plane role labels (current and legacy): such nodes run no proxy pod.
pub const CONTROL_PLANE_LABELS: [&str; 2] = ["node-role.kubernetes.io/control-plane", "node-role.kubernetes.io/master"];
/// EKS labels Fargate nodes with `eks.amazonaws.com/compute-type=fargate`: no DaemonSet runs there.
pub const COMPUTE_TYPE_LABEL: &str = "eks.amazonaws.com/compute-type";

/// Cluster Autoscaler's taint on a node it is about to remove (NoSchedule).
pub const CA_TO_BE_DELETED_TAINT: &str = "ToBeDeletedByClusterAutoscaler";
/// Karpenter v1's taint on a node it disrupts (NoSchedule), set before it drains the node.
pub const KARPENTER_DISRUPTED_TAINT: &str = "karpenter.sh/disrupted";
/// The same signal in Karpenter v0.32-v0.37 (`karpenter.sh/disruption=disrupting:NoSchedule`).
pub const KARPENTER_DISRUPTION_TAINT: &str = "karpenter.sh/disruption";

/// Why a node must not receive traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Ineligible {
    /// `metadata.deletionTimestamp` is set.
    Deleting,
    /// Cluster Autoscaler's `ToBeDeletedByClusterAutoscaler` taint.
    RemovedByClusterAutoscaler,
    /// Karpenter's `karpenter.sh/disrupted:NoSchedule` (or v0.3x `karpenter.sh/disruption`) taint.
    DisruptedByKarpenter,
    /// `spec.unschedulable` (kubectl cordon, kubectl drain).
    Cordoned,
    /// The Ready condition is not True.
    NotReady,
    /// Carries [`EXCLUDE_LABEL`] (or its alpha spelling).
    Excluded,
    /// A control-plane node.
    ControlPlane,
    /// An EKS Fargate node.
    Fargate,
    /// Does not match `--node-selector`.
    NotSelected,
    /// No ready proxy pod runs on it (the proxy Service's EndpointSlices say so).
    NoReadyProxy,
}

impl Ineligible {
    /// Whether the reason is a node's own affirmative signal (it is leaving, not ready, cordoned,
    /// has no ready proxy...) rather than a consequence of what discovery did not see. The share
    /// guard caps only the second kind: a wrong selector looks like nodes going missing.
    pub fn is_affirmative(self) -> bool {
        !matches!(self, Self::NotSelected)
    }

    /// Deregistration order inside a wave: nodes that are leaving first.
    pub fn urgency(self) -> u8 {
        match self {
            Self::Deleting | Self::RemovedByClusterAutoscaler | Self::DisruptedByKarpenter => 0,
            Self::NoReadyProxy | Self::NotReady => 1,
            Self::Cordoned => 2,
            Self::Excluded | Self::ControlPlane | Self::Fargate | Self::NotSelected => 3,
        }
    }
}

impl fmt::Display for Ineligible {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Deleting => "node is being deleted",
            Self::RemovedByClusterAutoscaler => {
                "node is being removed by Cluster Autoscaler (ToBeDeletedByClusterAutoscaler)"
            }
            Self::DisruptedByKarpenter => "node is being disrupted by Karpenter (karpenter.sh/disrupted)",
            Self::Cordoned => "node is cordoned",
            Self::NotReady => "node is not Ready",
            Self::Excluded => "node is excluded from external load balancers",
            Self::ControlPlane => "node is a control-plane node",
            Self::Fargate => "node is an EKS Fargate node",
            Self::NotSelected => "node does not match the node selector",
            Self::NoReadyProxy => "no ready proxy pod on the node",
        })
    }
}

/// Why a node has no target id; reported, never guessed.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case", tag = "kind", content = "detail")]
pub enum Unmappable {
    NoProviderId,
    NotAnAwsInstance(String),
    NoInternalIp,
    /// The node has InternalIPs, none of the target group's family.
    NoInternalIpOfFamily(IpFamily),
}

impl fmt::Display for Unmappable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoProviderId => f.write_str("node has no spec.providerID, so no EC2 instance id"),
            Self::NotAnAwsInstance(p) => {
                write!(f, "spec.providerID {p:?} does not name an EC2 instance (aws:///zone/i-...)")
            }
            Self::NoInternalIp => f.write_str("node has no InternalIP address"),
            Self::NoInternalIpOfFamily(family) => {
                write!(f, "node has no {family} InternalIP, the target group's IP address type")
            }
        }
    }
}

/// One node's contribution to the desired target set: everything the provisioner reads from
/// it, nothing else. Two views are equal exactly when the node's part of the plan is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NodeView {
    pub name: String,
    /// `Ok` when the node itself may receive traffic; otherwise every reason it may not.
    pub eligibility: Result<(), Vec<Ineligible>>,
    /// From `spec.providerID`.
    pub instance_id: Result<String, Unmappable>,
    /// The InternalIP addresses, in the node's order.
    pub internal_ips: Vec<IpAddr>,
}

impl NodeView {
    /// The target id for the target group's type and address family: the instance id, or the
    /// first InternalIP of the family (a dual-stack node may list either family first).
    pub fn target_id(&self, target_type: TargetType, family: IpFamily) -> Result<String, Unmappable> {
        match target_type {
            TargetType::Instance => self.instance_id.clone(),
            TargetType::Ip => match self.internal_ips.iter().find(|ip| family.contains(ip)) {
                Some(ip) => Ok(ip.to_string()),
                None if self.internal_ips.is_empty() => Err(Unmappable::NoInternalIp),
                None => Err(Unmappable::NoInternalIpOfFamily(family)),
            },
        }
    }
}

/// Reduces every node to its view, sorted by name.
pub fn views(nodes: &[Node], selector: &Selector) -> Vec<NodeView> {
    let mut out: Vec<NodeView> = nodes.iter().map(|n| view(n, selector)).collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// Reduces a Node to what the provisioner reads from it.
pub fn view(node: &Node, selector: &Selector) -> NodeView {
    NodeView {
        name: node.metadata.name.clone().unwrap_or_default(),
        eligibility: eligibility(node, selector),
        instance_id: instance_id_of(node),
        internal_ips: internal_ips(node),
    }
}

/// The views of all nodes that have a target id, keyed by it.
pub fn by_target_id(views: &[NodeView], target_type: TargetType, family: IpFamily) -> BTreeMap<String, &NodeView> {
    views.iter().filter_map(|v| v.target_id(target_type, family).ok().map(|id| (id, v))).collect()
}

/// Whether a node may receive traffic; every reason it may not.
pub fn eligibility(node: &Node, selector: &Selector) -> Result<(), Vec<Ineligible>> {
    let mut reasons = Vec::new();
    let spec = node.spec.as_ref();
    let taints = spec.and_then(|s| s.taints.as_deref()).unwrap_or_default();
    if node.metadata.deletion_timestamp.is_some() {
        reasons.push(Ineligible::Deleting);
    }
    if taints.iter().any(|t| t.key == CA_TO_BE_DELETED_TAINT) {
        reasons.push(Ineligible::RemovedByClusterAutoscaler);
    }
    // Karpenter's taint is NoSchedule; the same key with another effect is not its signal.
    if taints.iter().any(|t| {
        (t.key == KARPENTER_DISRUPTED_TAINT || t.key == KARPENTER_DISRUPTION_TAINT) && t.effect == "NoSchedule"
    }) {
        reasons.push(Ineligible::DisruptedByKarpenter);
    }
    if spec.and_then(|s| s.unschedulable).unwrap_or(false) {
        reasons.push(Ineligible::Cordoned);
    }
    let ready = node
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == "Ready"))
        .is_some_and(|c| c.status == "True");
    if !ready {
        reasons.push(Ineligible::NotReady);
    }
    let empty = BTreeMap::new();
    let labels = node.metadata.labels.as_ref().unwrap_or(&empty);
    if labels.contains_key(EXCLUDE_LABEL) || labels.contains_key(EXCLUDE_LABEL_ALPHA) {
        reasons.push(Ineligible::Excluded);
    }
    if CONTROL_PLANE_LABELS.iter().any(|l| labels.contains_key(*l)) {
        reasons.push(Ineligible::ControlPlane);
    }
    if labels.get(COMPUTE_TYPE_LABEL).is_some_and(|v| v == "fargate") {
        reasons.push(Ineligible::Fargate);
    }
    if !selector.matches(labels) {
        reasons.push(Ineligible::NotSelected);
    }
    if reasons.is_empty() { Ok(()) } else { Err(reasons) }
}

fn instance_id_of(node: &Node) -> Result<String, Unmappable> {
    let provider_id = node
        .spec
        .as_ref()
        .and_then(|s| s.provider_id.as_deref())
        .filter(|p| !p.is_empty())
        .ok_or(Unmappable::NoProviderId)?;
    instance_id(provider_id).ok_or_else(|| Unmappable::NotAnAwsInstance(provider_id.to_owned()))
}

fn internal_ips(node: &Node) -> Vec<IpAddr> {
    node.status
        .as_ref()
        .and_then(|s| s.addresses.as_ref())
        .map(|a| a.iter().filter(|a| a.type_ == "InternalIP").filter_map(|a| a.address.parse().ok()).collect())
        .unwrap_or_default()
}

/// `aws:///us-east-1a/i-0abc` -> `i-0abc`. Anything else is not an EC2 instance.
fn instance_id(provider_id: &str) -> Option<String> {
    let rest = provider_id.strip_prefix("aws://")?;
    let id = rest.rsplit('/').next()?;
    let hex = id.strip_prefix("i-")?;
    (!hex.is_empty() && hex.chars().all(|c| c.is_ascii_hexdigit())).then(|| id.to_owned())
}

/// An equality-based label selector, as `kubectl -l` takes it: `a=b,c!=d,e,!f`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selector {
    requirements: Vec<Requirement>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Requirement {
    Equals(String, String),
    NotEquals(String, String),
    Exists(String),
    NotExists(String),
}

impl Selector {
    /// Whether the labels satisfy every requirement.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.requirements.iter().all(|r| match r {
            Requirement::Equals(k, v) => labels.get(k) == Some(v),
            Requirement::NotEquals(k, v) => labels.get(k) != Some(v),
            Requirement::Exists(k) => labels.contains_key(k),
            Requirement::NotExists(k) => !labels.contains_key(k),
        })
    }
}

impl FromStr for Selector {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut requirements = Vec::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let requirement = if let Some((k, v)) = part.split_once("!=") {
                Requirement::NotEquals(key(k)?, v.trim().to_owned())
            } else if let Some((k, v)) = part.split_once("==").or_else(|| part.split_once('=')) {
                Requirement::Equals(key(k)?, v.trim().to_owned())
            } else if let Some(k) = part.strip_prefix('!') {
                Requirement::NotExists(key(k)?)
            } else {
                Requirement::Exists(key(part)?)
            };
            requirements.push(requirement);
        }
        Ok(Self { requirements })
    }
}

fn key(k: &str) -> Result<String, String> {
    let k = k.trim();
    if k.is_empty() || k.contains(|c: char| c.is_whitespace() || "()=!".contains(c)) {
        return Err(format!("{k:?} is not a label key (set-based selectors like `in (...)` are not supported)"));
    }
    Ok(k.to_owned())
}

#[cfg(test)]
pub(crate) mod fixtures {
    use k8s_openapi::api::core::v1::{Node, NodeAddress, NodeCondition, NodeSpec, NodeStatus, Taint};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};

    use super::{NodeView, Selector, view};

    /// A Ready, schedulable node with an InternalIP and an AWS providerID.
    pub fn node(name: &str, ip: &str, instance: &str) -> Node {
        Node {
            metadata: ObjectMeta { name: Some(name.into()), ..Default::default() },
            spec: Some(NodeSpec { provider_id: Some(format!("aws:///us-east-1a/{instance}")), ..Default::default() }),
            status: Some(NodeStatus {
                addresses: Some(vec![
                    NodeAddress { type_: "Hostname".into(), address: name.into() },
                    NodeAddress { type_: "InternalIP".into(), address: ip.into() },
                ]),
                conditions: Some(vec![NodeCondition {
                    type_: "Ready".into(),
                    status: "True".into(),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
        }
    }

    /// The views of nodes, with no selector.
    pub fn views_of(nodes: &[Node]) -> Vec<NodeView> {
        super::views(nodes, &Selector::default())
    }

    /// One node's view, with no selector.
    pub fn view_of(node: &Node) -> NodeView {
        view(node, &Selector::default())
    }

    pub fn cordoned(mut n: Node) -> Node {
        n.spec.get_or_insert_default().unschedulable = Some(true);
        n
    }

    pub fn not_ready(mut n: Node) -> Node {
        for c in n.status.get_or_insert_default().conditions.get_or_insert_default() {
            c.status = "False".into();
        }
        n
    }

    pub fn labelled(mut n: Node, k: &str, v: &str) -> Node {
        n.metadata.labels.get_or_insert_default().insert(k.into(), v.into());
        n
    }

    pub fn tainted(n: Node, key: &str) -> Node {
        tainted_with(n, key, "NoSchedule")
    }

    pub fn tainted_with(mut n: Node, key: &str, effect: &str) -> Node {
        n.spec.get_or_insert_default().taints.get_or_insert_default().push(Taint {
            key: key.into(),
            effect: effect.into(),
            ..Default::default()
        });
        n
    }

    pub fn deleting(mut n: Node) -> Node {
        n.metadata.deletion_timestamp = Some(Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH));
        n
    }

    pub fn with_internal_ips(mut n: Node, ips: &[&str]) -> Node {
        let status = n.status.get_or_insert_default();
        status.addresses = Some(
            ips.iter()
                .map(|ip| NodeAddress { type_: "InternalIP".into(), address: (*ip).into() })
                .chain(std::iter::once(NodeAddress { type_: "Hostname".into(), address: "h".into() }))
                .collect(),
        );
        n
    }
}

#[cfg(test)]
mod tests {
    use super::fixtures::*;
    use super::*;

    fn sel(s: &str) -> Selector {
        s.parse().expect("selector")
    }

    /// One row per rule: the node, the reasons it is not a target (empty: it is one), and where
    /// the rule comes from. The provisioner README's eligibility table is this table.
    #[test]
    fn eligibility_table() {
        let n = || node("a", "10.0.0.1", "i-1");
        use Ineligible::*;
        let rows: Vec<(&str, Node, Vec<Ineligible>)> = vec![
            ("Ready, schedulable: a target (every tool)", n(), vec![]),
            ("Ready condition False (LBC, service controller)", not_ready(n()), vec![NotReady]),
            ("no Ready condition at all (LBC)", Node::default(), vec![NotReady]),
            ("cordoned, spec.unschedulable (LBC; kubectl drain cordons first)", cordoned(n()), vec![Cordoned]),
            (
                "exclude-from-external-load-balancers label (service controller, LBC, Karpenter)",
                labelled(n(), EXCLUDE_LABEL, "karpenter"),
                vec![Excluded],
            ),
            ("alpha exclude-balancer label (LBC)", labelled(n(), EXCLUDE_LABEL_ALPHA, ""), vec![Excluded]),
            (
                "control-plane role label (kubeadm, LBC: master)",
                labelled(n(), "node-role.kubernetes.io/control-plane", ""),
                vec![ControlPlane],
            ),
            ("legacy master role label (LBC)", labelled(n(), "node-role.kubernetes.io/master", ""), vec![ControlPlane]),
            ("EKS Fargate node (LBC)", labelled(n(), COMPUTE_TYPE_LABEL, "fargate"), vec![Fargate]),
            ("EKS EC2 compute type is fine", labelled(n(), COMPUTE_TYPE_LABEL, "ec2"), vec![]),
            (
                "ToBeDeletedByClusterAutoscaler taint (CA, LBC, service controller)",
                tainted(n(), CA_TO_BE_DELETED_TAINT),
                vec![RemovedByClusterAutoscaler],
            ),
            (
                "karpenter.sh/disrupted:NoSchedule (Karpenter v1, LBC)",
                tainted(n(), KARPENTER_DISRUPTED_TAINT),
                vec![DisruptedByKarpenter],
            ),
            (
                "karpenter.sh/disruption:NoSchedule (Karpenter v0.32-v0.37)",
                tainted(n(), KARPENTER_DISRUPTION_TAINT),
                vec![DisruptedByKarpenter],
            ),
            (
                "karpenter.sh/disrupted with another effect is not the signal",
                tainted_with(n(), KARPENTER_DISRUPTED_TAINT, "PreferNoSchedule"),
                vec![],
            ),
            (
                "DeletionCandidateOfClusterAutoscaler (PreferNoSchedule: a candidate, not a decision)",
                tainted_with(n(), "DeletionCandidateOfClusterAutoscaler", "PreferNoSchedule"),
                vec![],
            ),
            (
                "deletionTimestamp set (Karpenter's finalizer holds the node while it drains)",
                deleting(n()),
                vec![Deleting],
            ),
            ("an unrelated taint", tainted(n(), "dedicated"), vec![]),
            ("not matching --node-selector", labelled(n(), "pool", "batch"), vec![NotSelected]),
            ("several reasons at once are all reported", cordoned(not_ready(n())), vec![Cordoned, NotReady]),
        ];
        let selector = sel("pool!=batch");
        for (what, node, expected) in rows {
            let want = if expected.is_empty() { Ok(()) } else { Err(expected) };
            assert_eq!(eligibility(&node, &selector), want, "{what}");
        }
    }

    #[test]
    fn selector_supports_equality_inequality_and_existence() {
        let n = labelled(labelled(node("a", "10.0.0.1", "i-1"), "pool", "edge"), "zone", "a");
        let labels = n.metadata.labels.clone().unwrap_or_default();
        assert!(sel("pool=edge").matches(&labels));
        assert!(sel("pool==edge, zone").matches(&labels));
        assert!(sel("pool!=batch,!spot").matches(&labels));
        assert!(!sel("pool!=edge").matches(&labels));
        assert!(!sel("spot").matches(&labels));
        assert!(!sel("!zone").matches(&labels));
        assert!(sel("").matches(&labels));
        assert!("pool in (a,b)".parse::<Selector>().is_err());
    }

    #[test]
    fn instance_target_id_comes_from_provider_id() {
        let v = view_of(&node("a", "10.0.0.1", "i-0abc123"));
        assert_eq!(v.target_id(TargetType::Instance, IpFamily::V4), Ok("i-0abc123".into()));
    }

    #[test]
    fn ip_target_id_is_the_first_internal_ip_of_the_target_groups_family() {
        let v = view_of(&node("a", "10.0.0.1", "i-1"));
        assert_eq!(v.target_id(TargetType::Ip, IpFamily::V4), Ok("10.0.0.1".into()));
        // Dual stack with IPv6 listed first: an ipv4 group takes the IPv4 address, an ipv6 one the IPv6.
        let dual = view_of(&with_internal_ips(node("a", "x", "i-1"), &["fd00::e", "10.0.0.7"]));
        assert_eq!(dual.target_id(TargetType::Ip, IpFamily::V4), Ok("10.0.0.7".into()));
        assert_eq!(dual.target_id(TargetType::Ip, IpFamily::V6), Ok("fd00::e".into()));
        // IPv6-only: not a target of an ipv4 group, and said so.
        let v6 = view_of(&with_internal_ips(node("a", "x", "i-1"), &["fd00::e"]));
        assert_eq!(v6.target_id(TargetType::Ip, IpFamily::V4), Err(Unmappable::NoInternalIpOfFamily(IpFamily::V4)));
        assert_eq!(
            Unmappable::NoInternalIpOfFamily(IpFamily::V4).to_string(),
            "node has no ipv4 InternalIP, the target group's IP address type"
        );
    }

    #[test]
    fn unmappable_nodes_are_reported_not_guessed() {
        let mut n = node("a", "10.0.0.1", "i-1");
        n.spec.get_or_insert_default().provider_id = Some("kind://docker/kind/kind-worker".into());
        assert!(matches!(view_of(&n).instance_id, Err(Unmappable::NotAnAwsInstance(_))));
        n.spec.get_or_insert_default().provider_id = None;
        assert_eq!(view_of(&n).instance_id, Err(Unmappable::NoProviderId));
        n.spec.get_or_insert_default().provider_id = Some("aws:///us-east-1a/i-".into());
        assert!(matches!(view_of(&n).instance_id, Err(Unmappable::NotAnAwsInstance(_))));
        n.status.get_or_insert_default().addresses = Some(vec![]);
        assert_eq!(view_of(&n).target_id(TargetType::Ip, IpFamily::V4), Err(Unmappable::NoInternalIp));
    }

    #[test]
    fn a_heartbeat_does_not_change_the_view() {
        let before = node("a", "10.0.0.1", "i-1");
        let mut after = before.clone();
        for c in after.status.get_or_insert_default().conditions.get_or_insert_default() {
            c.last_heartbeat_time =
                Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH));
        }
        after.metadata.resource_version = Some("99".into());
        assert_ne!(before, after);
        assert_eq!(view_of(&before), view_of(&after));
        assert_ne!(view_of(&before), view_of(&cordoned(before.clone())));
    }

    #[test]
    fn views_sort_by_name_and_index_by_target_id() {
        let vs = views_of(&[node("b", "10.0.0.2", "i-2"), cordoned(node("a", "10.0.0.1", "i-1"))]);
        assert_eq!(vs[0].name, "a");
        assert_eq!(vs[0].eligibility, Err(vec![Ineligible::Cordoned]));
        let index = by_target_id(&vs, TargetType::Ip, IpFamily::V4);
        assert_eq!(index["10.0.0.2"].name, "b");
        assert_eq!(index.len(), 2);
    }
}
