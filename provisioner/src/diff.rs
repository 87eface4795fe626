//! The product: (desired, observed) -> what to register, deregister and leave alone, with the
//! safety policy applied. Pure: no I/O, exhaustively unit-tested.
//!
//! Ownership rule: the provisioner owns every registration at the handshake's NodePort. A target
//! at that port whose id is no longer a known node belonged to a node that left, and is removed.
//! A target at any other port was put there by someone else: it is *foreign*, reported, and only
//! removed with `--remove-foreign`.

use std::collections::BTreeSet;
use std::fmt;

use serde::Serialize;

use crate::nodes::{self, Ineligible, NodeEntry};

/// A registration: target id (instance id or IP) and port.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct Target {
    pub id: String,
    pub port: u16,
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.id, self.port)
    }
}

/// A target as DescribeTargetHealth reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ObservedTarget {
    pub target: Target,
    /// The ALB's state: initial, healthy, unhealthy, unused, draining, unavailable.
    pub state: String,
    /// The ALB's reason code, e.g. `Target.DeregistrationInProgress`.
    pub reason: Option<String>,
}

impl ObservedTarget {
    /// A draining target is already deregistered; it only lingers for the deregistration delay.
    pub fn is_draining(&self) -> bool {
        self.state == "draining"
    }
}

/// What the safety policy allows in one run.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Policy {
    /// Allow deregistering everything when discovery found no eligible node.
    pub allow_empty: bool,
    /// Largest share (0..=1) of registered targets one run may deregister without `force`.
    pub max_deregister_share: f64,
    /// Deregister beyond `max_deregister_share`.
    pub force: bool,
    /// Deregister foreign targets too.
    pub remove_foreign: bool,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            allow_empty: false,
            max_deregister_share: DEFAULT_MAX_DEREGISTER_SHARE,
            force: false,
            remove_foreign: false,
        }
    }
}

/// Half the group: a rolling node replacement never needs more in one run, a broken discovery
/// (wrong selector, wrong cluster) usually does.
pub const DEFAULT_MAX_DEREGISTER_SHARE: f64 = 0.5;

/// Why a target is in a given list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "kind", content = "detail")]
pub enum Why {
    /// Eligible node, not registered (or draining) yet.
    NodeEligible,
    /// Registered and eligible.
    InSync,
    /// The node exists but must not receive traffic.
    NodeIneligible(Vec<Ineligible>),
    /// No known node has this target id: the node left.
    NoSuchNode,
    /// Not at the NodePort: someone else's registration.
    Foreign,
    /// Already deregistered by someone; the ALB is draining it.
    Draining,
}

impl fmt::Display for Why {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NodeEligible => f.write_str("node is eligible"),
            Self::InSync => f.write_str("registered"),
            Self::NodeIneligible(reasons) => {
                let text: Vec<String> = reasons.iter().map(ToString::to_string).collect();
                f.write_str(&text.join(", "))
            }
            Self::NoSuchNode => f.write_str("no such node"),
            Self::Foreign => f.write_str("foreign: not at the NodePort"),
            Self::Draining => f.write_str("draining"),
        }
    }
}

/// One line of the diff.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Change {
    pub target: Target,
    /// The node the target belongs to, when one is known.
    pub node: Option<String>,
    pub why: Why,
}

/// Why the run must not deregister anything.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Refusal {
    /// Discovery returned no eligible node while targets are registered.
    NoEligibleNodes { registered: usize },
    /// More than the allowed share would be deregistered.
    TooManyDeregistrations { deregister: usize, registered: usize, max_share: f64 },
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoEligibleNodes { registered } => write!(
                f,
                "refusing to deregister: discovery found no eligible node while {registered} target(s) are registered (pass --allow-empty if the group really should be empty)"
            ),
            Self::TooManyDeregistrations { deregister, registered, max_share } => write!(
                f,
                "refusing to deregister {deregister} of {registered} registered targets: more than --max-deregister-share {max_share} (pass --force to do it anyway)"
            ),
        }
    }
}

/// The diff, with the policy's verdict.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Diff {
    pub register: Vec<Change>,
    pub deregister: Vec<Change>,
    pub unchanged: Vec<Change>,
    /// Foreign targets left in place (without `--remove-foreign`).
    pub foreign: Vec<Change>,
    /// Targets the ALB is already draining and nobody wants back.
    pub draining: Vec<Change>,
    /// Set when the deregistrations must not be applied.
    pub refusal: Option<Refusal>,
}

impl Diff {
    /// Whether applying would change anything (a refused deregistration still counts as pending).
    pub fn has_changes(&self) -> bool {
        !self.register.is_empty() || !self.deregister.is_empty()
    }

    /// The deregistrations the policy lets through.
    pub fn allowed_deregistrations(&self) -> &[Change] {
        if self.refusal.is_some() { &[] } else { &self.deregister }
    }
}

/// Computes the diff. `nodes` are all known nodes (eligible or not), `observed` is the target
/// group's DescribeTargetHealth, `node_port` the port every node target uses.
pub fn diff(nodes: &[NodeEntry], observed: &[ObservedTarget], node_port: u16, policy: &Policy) -> Diff {
    let by_id = nodes::by_target_id(nodes);
    let desired: BTreeSet<Target> = nodes
        .iter()
        .filter(|n| n.eligibility.is_ok())
        .filter_map(|n| n.target_id.as_ref().ok())
        .map(|id| Target { id: id.clone(), port: node_port })
        .collect();
    let node_of = |id: &str| by_id.get(id).map(|n| n.name.clone());

    let mut out = Diff {
        register: Vec::new(),
        deregister: Vec::new(),
        unchanged: Vec::new(),
        foreign: Vec::new(),
        draining: Vec::new(),
        refusal: None,
    };
    let mut seen = BTreeSet::new();
    let mut observed: Vec<&ObservedTarget> = observed.iter().collect();
    observed.sort_by(|a, b| a.target.cmp(&b.target));
    observed.dedup_by(|a, b| a.target == b.target);

    for o in &observed {
        let t = &o.target;
        let node = node_of(&t.id);
        if desired.contains(t) {
            seen.insert(t.clone());
            // A draining target that is wanted again is registered again (this cancels the drain).
            let change =
                Change { target: t.clone(), node, why: if o.is_draining() { Why::NodeEligible } else { Why::InSync } };
            if o.is_draining() { out.register.push(change) } else { out.unchanged.push(change) }
        } else if o.is_draining() {
            out.draining.push(Change { target: t.clone(), node, why: Why::Draining });
        } else if t.port != node_port {
            let change = Change { target: t.clone(), node, why: Why::Foreign };
            if policy.remove_foreign { out.deregister.push(change) } else { out.foreign.push(change) }
        } else {
            let why = match by_id.get(t.id.as_str()) {
                Some(entry) => Why::NodeIneligible(entry.eligibility.clone().err().unwrap_or_default()),
                None => Why::NoSuchNode,
            };
            out.deregister.push(Change { target: t.clone(), node, why });
        }
    }
    for t in desired.difference(&seen) {
        out.register.push(Change { target: t.clone(), node: node_of(&t.id), why: Why::NodeEligible });
    }
    out.register.sort_by(|a, b| a.target.cmp(&b.target));

    let registered = observed.iter().filter(|o| !o.is_draining()).count();
    let owned_registered = observed.iter().filter(|o| !o.is_draining() && o.target.port == node_port).count();
    if !out.deregister.is_empty() {
        if desired.is_empty() && owned_registered > 0 {
            // `--allow-empty` says "empty is right": then emptying the group is the point, and
            // the share limit does not apply.
            if !policy.allow_empty {
                out.refusal = Some(Refusal::NoEligibleNodes { registered: owned_registered });
            }
        } else if !policy.force
            && registered > 0
            && out.deregister.len() as f64 / registered as f64 > policy.max_deregister_share
        {
            out.refusal = Some(Refusal::TooManyDeregistrations {
                deregister: out.deregister.len(),
                registered,
                max_share: policy.max_deregister_share,
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::handshake::TargetType;
    use crate::nodes::fixtures::*;
    use crate::nodes::{Selector, classify};
    use k8s_openapi::api::core::v1::Node;

    const PORT: u16 = 30080;

    fn entries(nodes: &[Node]) -> Vec<NodeEntry> {
        classify(nodes, &Selector::default(), TargetType::Ip)
    }

    fn obs(id: &str, port: u16, state: &str) -> ObservedTarget {
        ObservedTarget { target: Target { id: id.into(), port }, state: state.into(), reason: None }
    }

    fn ids(changes: &[Change]) -> Vec<String> {
        changes.iter().map(|c| c.target.to_string()).collect()
    }

    fn three() -> Vec<Node> {
        vec![node("n1", "10.0.0.1", "i-1"), node("n2", "10.0.0.2", "i-2"), node("n3", "10.0.0.3", "i-3")]
    }

    #[test]
    fn empty_group_registers_every_eligible_node() {
        let d = diff(&entries(&three()), &[], PORT, &Policy::default());
        assert_eq!(ids(&d.register), ["10.0.0.1:30080", "10.0.0.2:30080", "10.0.0.3:30080"]);
        assert_eq!(d.register[0].node.as_deref(), Some("n1"));
        assert!(d.deregister.is_empty() && d.unchanged.is_empty() && d.refusal.is_none());
        assert!(d.has_changes());
    }

    #[test]
    fn in_sync_group_has_no_changes_whatever_the_health() {
        let observed =
            [obs("10.0.0.1", PORT, "healthy"), obs("10.0.0.2", PORT, "unhealthy"), obs("10.0.0.3", PORT, "initial")];
        let d = diff(&entries(&three()), &observed, PORT, &Policy::default());
        assert!(!d.has_changes());
        assert_eq!(d.unchanged.len(), 3);
        assert_eq!(d.unchanged[1].why, Why::InSync);
    }

    #[test]
    fn ineligible_node_is_deregistered_with_its_reason() {
        let nodes =
            vec![node("n1", "10.0.0.1", "i-1"), node("n2", "10.0.0.2", "i-2"), cordoned(node("n3", "10.0.0.3", "i-3"))];
        let observed =
            [obs("10.0.0.1", PORT, "healthy"), obs("10.0.0.2", PORT, "healthy"), obs("10.0.0.3", PORT, "healthy")];
        let d = diff(&entries(&nodes), &observed, PORT, &Policy::default());
        assert_eq!(ids(&d.deregister), ["10.0.0.3:30080"]);
        assert_eq!(d.deregister[0].why, Why::NodeIneligible(vec![Ineligible::Cordoned]));
        assert_eq!(d.deregister[0].node.as_deref(), Some("n3"));
        assert!(d.register.is_empty());
        assert_eq!(d.allowed_deregistrations().len(), 1);
    }

    #[test]
    fn target_of_a_node_that_left_is_deregistered() {
        let observed = [
            obs("10.0.0.1", PORT, "healthy"),
            obs("10.0.0.2", PORT, "healthy"),
            obs("10.0.0.3", PORT, "healthy"),
            obs("10.0.0.9", PORT, "healthy"),
        ];
        let d = diff(&entries(&three()), &observed, PORT, &Policy::default());
        assert_eq!(ids(&d.deregister), ["10.0.0.9:30080"]);
        assert_eq!(d.deregister[0].why, Why::NoSuchNode);
        assert_eq!(d.deregister[0].node, None);
    }

    #[test]
    fn target_at_another_port_is_foreign_and_kept_unless_asked() {
        let observed = [
            obs("10.0.0.1", PORT, "healthy"),
            obs("10.0.0.2", PORT, "healthy"),
            obs("10.0.0.3", PORT, "healthy"),
            obs("10.0.0.1", 8080, "healthy"),
        ];
        let d = diff(&entries(&three()), &observed, PORT, &Policy::default());
        assert!(!d.has_changes());
        assert_eq!(ids(&d.foreign), ["10.0.0.1:8080"]);
        assert_eq!(d.foreign[0].node.as_deref(), Some("n1"), "the node is named when known");

        let policy = Policy { remove_foreign: true, ..Policy::default() };
        let d = diff(&entries(&three()), &observed, PORT, &policy);
        assert_eq!(ids(&d.deregister), ["10.0.0.1:8080"]);
        assert_eq!(d.deregister[0].why, Why::Foreign);
        assert!(d.foreign.is_empty());
    }

    #[test]
    fn draining_targets_are_neither_deregistered_again_nor_counted_as_registered() {
        let observed = [
            obs("10.0.0.1", PORT, "healthy"),
            obs("10.0.0.2", PORT, "healthy"),
            obs("10.0.0.3", PORT, "healthy"),
            obs("10.0.0.9", PORT, "draining"),
        ];
        let d = diff(&entries(&three()), &observed, PORT, &Policy::default());
        assert!(!d.has_changes());
        assert_eq!(ids(&d.draining), ["10.0.0.9:30080"]);
    }

    #[test]
    fn draining_target_of_an_eligible_node_is_registered_again() {
        let observed =
            [obs("10.0.0.1", PORT, "draining"), obs("10.0.0.2", PORT, "healthy"), obs("10.0.0.3", PORT, "healthy")];
        let d = diff(&entries(&three()), &observed, PORT, &Policy::default());
        assert_eq!(ids(&d.register), ["10.0.0.1:30080"]);
        assert!(d.draining.is_empty());
    }

    #[test]
    fn node_port_change_registers_new_port_and_keeps_old_as_foreign() {
        let observed = [obs("10.0.0.1", 30000, "healthy")];
        let nodes = vec![node("n1", "10.0.0.1", "i-1")];
        let d = diff(&entries(&nodes), &observed, PORT, &Policy::default());
        assert_eq!(ids(&d.register), ["10.0.0.1:30080"]);
        assert_eq!(ids(&d.foreign), ["10.0.0.1:30000"]);
    }

    #[test]
    fn unmappable_nodes_are_not_registered() {
        let mut n = node("n1", "10.0.0.1", "i-1");
        n.status.get_or_insert_default().addresses = None;
        let d = diff(&entries(&[n, node("n2", "10.0.0.2", "i-2")]), &[], PORT, &Policy::default());
        assert_eq!(ids(&d.register), ["10.0.0.2:30080"]);
    }

    #[test]
    fn no_eligible_nodes_while_registered_is_refused() {
        let nodes = vec![cordoned(node("n1", "10.0.0.1", "i-1"))];
        let observed = [obs("10.0.0.1", PORT, "healthy"), obs("10.0.0.2", PORT, "healthy")];
        let d = diff(&entries(&nodes), &observed, PORT, &Policy::default());
        assert_eq!(d.refusal, Some(Refusal::NoEligibleNodes { registered: 2 }));
        assert!(d.allowed_deregistrations().is_empty());
        assert!(d.has_changes(), "a refused deregistration is still pending");

        // Empty discovery (no nodes at all) is the same refusal; --force does not override it.
        let d = diff(&[], &observed, PORT, &Policy { force: true, ..Policy::default() });
        assert_eq!(d.refusal, Some(Refusal::NoEligibleNodes { registered: 2 }));

        let d = diff(&[], &observed, PORT, &Policy { allow_empty: true, ..Policy::default() });
        assert_eq!(d.refusal, None, "--allow-empty alone empties the group");
        assert_eq!(d.allowed_deregistrations().len(), 2);
    }

    #[test]
    fn empty_discovery_with_only_foreign_targets_is_not_a_refusal() {
        let observed = [obs("10.0.0.1", 8080, "healthy")];
        let d = diff(&[], &observed, PORT, &Policy::default());
        assert_eq!(d.refusal, None);
        assert!(!d.has_changes());
    }

    #[test]
    fn deregistering_more_than_the_share_is_refused_unless_forced() {
        let nodes = vec![node("n1", "10.0.0.1", "i-1")];
        let observed =
            [obs("10.0.0.1", PORT, "healthy"), obs("10.0.0.2", PORT, "healthy"), obs("10.0.0.3", PORT, "healthy")];
        let d = diff(&entries(&nodes), &observed, PORT, &Policy::default());
        assert_eq!(d.refusal, Some(Refusal::TooManyDeregistrations { deregister: 2, registered: 3, max_share: 0.5 }));
        assert!(d.allowed_deregistrations().is_empty());

        let d = diff(&entries(&nodes), &observed, PORT, &Policy { force: true, ..Policy::default() });
        assert_eq!(d.refusal, None);
        assert_eq!(d.allowed_deregistrations().len(), 2);

        let d = diff(&entries(&nodes), &observed, PORT, &Policy { max_deregister_share: 0.7, ..Policy::default() });
        assert_eq!(d.refusal, None);
    }

    #[test]
    fn exactly_the_share_is_allowed() {
        let nodes = vec![node("n1", "10.0.0.1", "i-1"), cordoned(node("n2", "10.0.0.2", "i-2"))];
        let observed = [obs("10.0.0.1", PORT, "healthy"), obs("10.0.0.2", PORT, "healthy")];
        let d = diff(&entries(&nodes), &observed, PORT, &Policy::default());
        assert_eq!(d.refusal, None);
        assert_eq!(ids(d.allowed_deregistrations()), ["10.0.0.2:30080"]);
    }

    #[test]
    fn removed_foreign_targets_count_towards_the_share() {
        let observed = [obs("10.0.0.1", PORT, "healthy"), obs("10.0.0.1", 1, "healthy"), obs("10.0.0.1", 2, "healthy")];
        let nodes = vec![node("n1", "10.0.0.1", "i-1")];
        let policy = Policy { remove_foreign: true, ..Policy::default() };
        let d = diff(&entries(&nodes), &observed, PORT, &policy);
        assert!(matches!(d.refusal, Some(Refusal::TooManyDeregistrations { deregister: 2, registered: 3, .. })));
    }

    #[test]
    fn duplicate_observations_are_counted_once() {
        let observed = [obs("10.0.0.9", PORT, "healthy"), obs("10.0.0.9", PORT, "healthy")];
        let d = diff(&[], &observed, PORT, &Policy { allow_empty: true, ..Policy::default() });
        assert_eq!(d.deregister.len(), 1);
    }

    #[test]
    fn instance_targets_use_instance_ids() {
        let nodes = vec![node("n1", "10.0.0.1", "i-0a1")];
        let entries = classify(&nodes, &Selector::default(), TargetType::Instance);
        let d = diff(&entries, &[], PORT, &Policy::default());
        assert_eq!(ids(&d.register), ["i-0a1:30080"]);
    }
}
