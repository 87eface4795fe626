//! Which nodes should receive traffic, and under which target id. Pure: no I/O.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use k8s_openapi::api::core::v1::Node;
use serde::Serialize;

use crate::handshake::TargetType;

/// The label with which Kubernetes itself keeps a node out of external load balancers.
pub const EXCLUDE_LABEL: &str = "node.kubernetes.io/exclude-from-external-load-balancers";

/// The taint cluster-autoscaler (and Karpenter's compatibility mode) puts on a node it is about
/// to remove: the node is going away, so it is drained from the ALB first.
pub const TO_BE_DELETED_TAINT: &str = "ToBeDeletedByClusterAutoscaler";

/// Why a node must not receive traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Ineligible {
    /// The node is being deleted or is tainted for removal.
    GoingAway,
    /// `spec.unschedulable` (kubectl cordon).
    Cordoned,
    /// The Ready condition is not True.
    NotReady,
    /// Carries [`EXCLUDE_LABEL`].
    Excluded,
    /// Does not match `--node-selector`.
    NotSelected,
}

impl fmt::Display for Ineligible {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::GoingAway => "node is going away",
            Self::Cordoned => "node is cordoned",
            Self::NotReady => "node is not Ready",
            Self::Excluded => "node is excluded from external load balancers",
            Self::NotSelected => "node does not match the node selector",
        })
    }
}

/// Why a node has no target id; reported, never guessed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "kind", content = "detail")]
pub enum Unmappable {
    NoProviderId,
    NotAnAwsInstance(String),
    NoInternalIp,
}

impl fmt::Display for Unmappable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoProviderId => f.write_str("node has no spec.providerID, so no EC2 instance id"),
            Self::NotAnAwsInstance(p) => {
                write!(f, "spec.providerID {p:?} does not name an EC2 instance (aws:///zone/i-...)")
            }
            Self::NoInternalIp => f.write_str("node has no InternalIP address"),
        }
    }
}

/// One node as the provisioner sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NodeEntry {
    pub name: String,
    /// The target id for the target group's type, or why there is none.
    pub target_id: Result<String, Unmappable>,
    /// `Ok` when the node should receive traffic; otherwise every reason it should not.
    pub eligibility: Result<(), Vec<Ineligible>>,
}

/// Classifies every node: eligibility and target id.
pub fn classify(nodes: &[Node], selector: &Selector, target_type: TargetType) -> Vec<NodeEntry> {
    let mut entries: Vec<NodeEntry> = nodes
        .iter()
        .map(|node| NodeEntry {
            name: node.metadata.name.clone().unwrap_or_default(),
            target_id: target_id(node, target_type),
            eligibility: eligibility(node, selector),
        })
        .collect();
    entries.sort_by(|a, b| a.name.cmp(&b.name));
    entries
}

/// The target ids of all classified nodes, eligible or not, keyed by id.
pub fn by_target_id(entries: &[NodeEntry]) -> BTreeMap<&str, &NodeEntry> {
    entries.iter().filter_map(|e| e.target_id.as_deref().ok().map(|id| (id, e))).collect()
}

/// Whether a node should receive traffic now.
pub fn eligibility(node: &Node, selector: &Selector) -> Result<(), Vec<Ineligible>> {
    let mut reasons = Vec::new();
    let spec = node.spec.as_ref();
    let tainted_for_removal =
        spec.and_then(|s| s.taints.as_ref()).is_some_and(|ts| ts.iter().any(|t| t.key == TO_BE_DELETED_TAINT));
    if node.metadata.deletion_timestamp.is_some() || tainted_for_removal {
        reasons.push(Ineligible::GoingAway);
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
    let labels = node.metadata.labels.clone().unwrap_or_default();
    if labels.contains_key(EXCLUDE_LABEL) {
        reasons.push(Ineligible::Excluded);
    }
    if !selector.matches(&labels) {
        reasons.push(Ineligible::NotSelected);
    }
    if reasons.is_empty() { Ok(()) } else { Err(reasons) }
}

/// The node's target id for the target group's type.
pub fn target_id(node: &Node, target_type: TargetType) -> Result<String, Unmappable> {
    match target_type {
        TargetType::Instance => {
            let provider_id = node
                .spec
                .as_ref()
                .and_then(|s| s.provider_id.as_deref())
                .filter(|p| !p.is_empty())
                .ok_or(Unmappable::NoProviderId)?;
            instance_id(provider_id).ok_or_else(|| Unmappable::NotAnAwsInstance(provider_id.to_owned()))
        }
        TargetType::Ip => node
            .status
            .as_ref()
            .and_then(|s| s.addresses.as_ref())
            .and_then(|a| a.iter().find(|a| a.type_ == "InternalIP"))
            .map(|a| a.address.clone())
            .filter(|a| a.parse::<std::net::IpAddr>().is_ok())
            .ok_or(Unmappable::NoInternalIp),
    }
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

    pub fn tainted(mut n: Node, key: &str) -> Node {
        n.spec.get_or_insert_default().taints.get_or_insert_default().push(Taint {
            key: key.into(),
            effect: "NoSchedule".into(),
            ..Default::default()
        });
        n
    }

    pub fn deleting(mut n: Node) -> Node {
        n.metadata.deletion_timestamp = Some(Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH));
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

    #[test]
    fn ready_schedulable_node_is_eligible() {
        assert_eq!(eligibility(&node("a", "10.0.0.1", "i-1"), &Selector::default()), Ok(()));
    }

    #[test]
    fn each_reason_makes_a_node_ineligible() {
        let n = || node("a", "10.0.0.1", "i-1");
        let none = Selector::default();
        assert_eq!(eligibility(&cordoned(n()), &none), Err(vec![Ineligible::Cordoned]));
        assert_eq!(eligibility(&not_ready(n()), &none), Err(vec![Ineligible::NotReady]));
        assert_eq!(eligibility(&labelled(n(), EXCLUDE_LABEL, ""), &none), Err(vec![Ineligible::Excluded]));
        assert_eq!(eligibility(&tainted(n(), TO_BE_DELETED_TAINT), &none), Err(vec![Ineligible::GoingAway]));
        assert_eq!(eligibility(&deleting(n()), &none), Err(vec![Ineligible::GoingAway]));
        assert_eq!(eligibility(&n(), &sel("pool=edge")), Err(vec![Ineligible::NotSelected]));
    }

    #[test]
    fn unrelated_taints_do_not_matter() {
        let n = tainted(node("a", "10.0.0.1", "i-1"), "dedicated");
        assert_eq!(eligibility(&n, &Selector::default()), Ok(()));
    }

    #[test]
    fn reasons_accumulate() {
        let n = cordoned(not_ready(node("a", "10.0.0.1", "i-1")));
        assert_eq!(eligibility(&n, &Selector::default()), Err(vec![Ineligible::Cordoned, Ineligible::NotReady]));
    }

    #[test]
    fn node_without_any_status_is_not_ready() {
        let n = Node::default();
        assert_eq!(eligibility(&n, &Selector::default()), Err(vec![Ineligible::NotReady]));
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
        let n = node("a", "10.0.0.1", "i-0abc123");
        assert_eq!(target_id(&n, TargetType::Instance), Ok("i-0abc123".into()));
    }

    #[test]
    fn ip_target_id_is_the_internal_ip() {
        let n = node("a", "10.0.0.1", "i-1");
        assert_eq!(target_id(&n, TargetType::Ip), Ok("10.0.0.1".into()));
    }

    #[test]
    fn unmappable_nodes_are_reported_not_guessed() {
        let mut n = node("a", "10.0.0.1", "i-1");
        n.spec.get_or_insert_default().provider_id = Some("kind://docker/kind/kind-worker".into());
        assert!(matches!(target_id(&n, TargetType::Instance), Err(Unmappable::NotAnAwsInstance(_))));
        n.spec.get_or_insert_default().provider_id = None;
        assert_eq!(target_id(&n, TargetType::Instance), Err(Unmappable::NoProviderId));
        n.spec.get_or_insert_default().provider_id = Some("aws:///us-east-1a/i-".into());
        assert!(matches!(target_id(&n, TargetType::Instance), Err(Unmappable::NotAnAwsInstance(_))));
        n.status.get_or_insert_default().addresses = Some(vec![]);
        assert_eq!(target_id(&n, TargetType::Ip), Err(Unmappable::NoInternalIp));
    }

    #[test]
    fn classify_sorts_by_name_and_indexes_by_target_id() {
        let nodes = vec![node("b", "10.0.0.2", "i-2"), cordoned(node("a", "10.0.0.1", "i-1"))];
        let entries = classify(&nodes, &Selector::default(), TargetType::Ip);
        assert_eq!(entries[0].name, "a");
        assert_eq!(entries[0].eligibility, Err(vec![Ineligible::Cordoned]));
        let index = by_target_id(&entries);
        assert_eq!(index["10.0.0.2"].name, "b");
        assert_eq!(index.len(), 2);
    }
}
