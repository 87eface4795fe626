//! The product: (desired, observed) -> what to register, deregister and leave alone, with the
//! safety policy applied. Pure: no I/O, exhaustively unit-tested.
//!
//! Ownership rule: the provisioner owns every registration at the NodePort. A target at that
//! port whose id is no longer a known node belonged to a node that left, and is removed. A
//! target at any other port was put there by someone else: it is *foreign*, reported, and only
//! removed with `--remove-foreign`.
//!
//! Safety, in this order:
//! - **Empty discovery** (no desired node while owned targets are registered) removes nothing
//!   (unless `--allow-empty`).
//! - **Missing nodes** (targets whose node discovery did not find, or that `--node-selector` now
//!   leaves out) beyond `--max-deregister-share` of the owned targets are refused as a whole:
//!   that is what a wrong cluster or selector looks like (unless `--force`).
//! - **Waves**: everything else leaves in waves: at most the share of the owned registered targets
//!   is out of service (deregistered this run, or still draining) at any time, so a cluster
//!   upgrade that cordons most nodes proceeds, a wave at a time, each after the last one drained.
//! - **Quota**: the group never holds more than `--max-targets` targets (draining ones count);
//!   registered targets keep their place and new ones are added in node-name order.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::Serialize;

use crate::model::{NodeNames, ObservedTarget, Target, TargetSpec};
use crate::nodes::{self, Ineligible, NodeView};

/// What the safety policy allows in one run.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Policy {
    /// Allow deregistering everything when discovery found no eligible node.
    pub allow_empty: bool,
    /// Largest share (0..=1) of owned registered targets out of service at once without `force`.
    pub max_deregister_share: f64,
    /// No share limit at all.
    pub force: bool,
    /// Deregister foreign targets too.
    pub remove_foreign: bool,
    /// Most targets the group may hold: AWS's "targets per target group" quota.
    pub max_targets: usize,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            allow_empty: false,
            max_deregister_share: DEFAULT_MAX_DEREGISTER_SHARE,
            force: false,
            remove_foreign: false,
            max_targets: DEFAULT_MAX_TARGETS,
        }
    }
}

/// Half the group: a rolling node replacement never needs more at once, a broken discovery
/// (wrong selector, wrong cluster) usually does.
pub const DEFAULT_MAX_DEREGISTER_SHARE: f64 = 0.5;

/// AWS's default quota of targets per Application Load Balancer target group.
pub const DEFAULT_MAX_TARGETS: usize = 1000;

/// What discovery found.
#[derive(Debug, Clone, Copy)]
pub struct Cluster<'a> {
    /// Every known node, eligible or not.
    pub nodes: &'a [NodeView],
    /// With a proxy Service: the nodes on which a proxy can take traffic. `None`: not known
    /// (a nodes file), so every eligible node counts.
    pub ready_proxy_nodes: Option<&'a NodeNames>,
}

impl Cluster<'_> {
    /// A node's eligibility, the proxy's readiness included.
    pub fn eligibility(&self, node: &NodeView) -> Result<(), Vec<Ineligible>> {
        let no_proxy = self.ready_proxy_nodes.is_some_and(|ready| !ready.contains(&node.name));
        match (&node.eligibility, no_proxy) {
            (Ok(()), false) => Ok(()),
            (Ok(()), true) => Err(vec![Ineligible::NoReadyProxy]),
            (Err(reasons), no_proxy) => {
                let mut reasons = reasons.clone();
                if no_proxy {
                    reasons.push(Ineligible::NoReadyProxy);
                }
                Err(reasons)
            }
        }
    }

    /// The targets that should be registered, with their node.
    pub fn desired(&self, spec: TargetSpec) -> BTreeMap<Target, String> {
        self.nodes
            .iter()
            .filter(|n| self.eligibility(n).is_ok())
            .filter_map(|n| n.target_id(spec.target_type, spec.family).ok().map(|id| (id, n)))
            .map(|(id, n)| (Target { id, port: spec.port }, n.name.clone()))
            .collect()
    }
}

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

impl Why {
    /// Whether the removal rests on what discovery did *not* see (a missing node, a selector
    /// that leaves the node out), the kind the share guard caps.
    fn is_missing(&self) -> bool {
        match self {
            Self::NoSuchNode => true,
            Self::NodeIneligible(reasons) => !reasons.iter().any(|r| r.is_affirmative()),
            _ => false,
        }
    }

    /// Deregistration order inside a wave: gone and leaving nodes first.
    fn urgency(&self) -> u8 {
        match self {
            Self::NoSuchNode => 0,
            Self::NodeIneligible(reasons) => reasons.iter().map(|r| r.urgency()).min().unwrap_or(3),
            _ => 4,
        }
    }
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
    /// More targets of missing nodes than the share allows.
    TooManyMissing { missing: usize, registered: usize, max_share: f64 },
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoEligibleNodes { registered } => write!(
                f,
                "refusing to deregister: discovery found no eligible node while {registered} target(s) are registered (pass --allow-empty if the group really should be empty)"
            ),
            Self::TooManyMissing { missing, registered, max_share } => write!(
                f,
                "refusing to deregister {missing} of {registered} registered targets whose nodes discovery did not find (or the node selector leaves out): more than --max-deregister-share {max_share} (pass --force to do it anyway)"
            ),
        }
    }
}

/// The diff, with the policy's verdict.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Diff {
    /// Registered this run.
    pub register: Vec<Change>,
    /// Should be registered, but the group is at `--max-targets`.
    pub over_quota: Vec<Change>,
    /// Deregistered this run.
    pub deregister: Vec<Change>,
    /// Should be deregistered, in a later wave (after this one has drained).
    pub later: Vec<Change>,
    /// Should be deregistered, refused by the safety policy ([`Diff::refusal`] says why).
    pub refused: Vec<Change>,
    pub unchanged: Vec<Change>,
    /// Foreign targets left in place (without `--remove-foreign`).
    pub foreign: Vec<Change>,
    /// Targets the ALB is already draining and nobody wants back.
    pub draining: Vec<Change>,
    pub refusal: Option<Refusal>,
    /// The quota the diff was computed with, for messages.
    pub max_targets: usize,
}

impl Diff {
    /// Whether the target group differs from the desired state (anything held back included).
    pub fn has_changes(&self) -> bool {
        [&self.register, &self.over_quota, &self.deregister, &self.later, &self.refused].iter().any(|l| !l.is_empty())
    }

    /// Whether this run writes anything.
    pub fn has_writes(&self) -> bool {
        !self.register.is_empty() || !self.deregister.is_empty()
    }
}

/// Computes the diff. `observed` is the target group's DescribeTargetHealth.
pub fn diff(cluster: Cluster<'_>, observed: &[ObservedTarget], spec: TargetSpec, policy: &Policy) -> Diff {
    let desired = cluster.desired(spec);
    let index = nodes::by_target_id(cluster.nodes, spec.target_type, spec.family);
    let node_of = |id: &str| index.get(id).map(|n| n.name.clone());

    let mut observed: Vec<&ObservedTarget> = observed.iter().collect();
    observed.sort_by(|a, b| a.target.cmp(&b.target));
    observed.dedup_by(|a, b| a.target == b.target);

    let mut out = Diff {
        register: Vec::new(),
        over_quota: Vec::new(),
        deregister: Vec::new(),
        later: Vec::new(),
        refused: Vec::new(),
        unchanged: Vec::new(),
        foreign: Vec::new(),
        draining: Vec::new(),
        refusal: None,
        max_targets: policy.max_targets,
    };
    let mut seen = BTreeSet::new();
    let mut leaving = Vec::new();
    for o in &observed {
        let t = &o.target;
        let node = node_of(&t.id);
        if desired.contains_key(t) {
            seen.insert(t.clone());
            // A draining target that is wanted again is registered again (this cancels the drain,
            // and it already has its place in the quota).
            let why = if o.is_draining() { Why::NodeEligible } else { Why::InSync };
            let change = Change { target: t.clone(), node, why };
            if o.is_draining() { out.register.push(change) } else { out.unchanged.push(change) }
        } else if o.is_draining() {
            out.draining.push(Change { target: t.clone(), node, why: Why::Draining });
        } else if t.port != spec.port {
            let change = Change { target: t.clone(), node, why: Why::Foreign };
            if policy.remove_foreign { out.deregister.push(change) } else { out.foreign.push(change) }
        } else {
            let why = match index.get(t.id.as_str()) {
                Some(view) => Why::NodeIneligible(cluster.eligibility(view).err().unwrap_or_default()),
                None => Why::NoSuchNode,
            };
            leaving.push(Change { target: t.clone(), node, why });
        }
    }

    // New registrations within the quota, in node-name order.
    let mut new: Vec<Change> = desired
        .iter()
        .filter(|(t, _)| !seen.contains(*t))
        .map(|(t, node)| Change { target: t.clone(), node: Some(node.clone()), why: Why::NodeEligible })
        .collect();
    new.sort_by(|a, b| (&a.node, &a.target).cmp(&(&b.node, &b.target)));
    let free = policy.max_targets.saturating_sub(observed.len());
    if new.len() > free {
        out.over_quota = new.split_off(free);
    }
    out.register.extend(new);
    out.register.sort_by(|a, b| a.target.cmp(&b.target));

    apply_removal_policy(&mut out, leaving, &observed, desired.is_empty(), spec, policy);
    out
}

/// Splits the owned targets that should leave into this wave, later waves and refused.
fn apply_removal_policy(
    out: &mut Diff,
    mut leaving: Vec<Change>,
    observed: &[&ObservedTarget],
    nothing_desired: bool,
    spec: TargetSpec,
    policy: &Policy,
) {
    if leaving.is_empty() {
        return;
    }
    let owned_registered = observed.iter().filter(|o| !o.is_draining() && o.target.port == spec.port).count();
    if nothing_desired {
        // `--allow-empty` says "empty is right": then emptying the group is the point, and
        // neither the share nor waves apply.
        if policy.allow_empty {
            out.deregister.append(&mut leaving);
        } else {
            out.refusal = Some(Refusal::NoEligibleNodes { registered: owned_registered });
            out.refused = leaving;
        }
        return;
    }
    if policy.force {
        out.deregister.append(&mut leaving);
        return;
    }
    // At least one, so a small group still makes progress; the share of what is registered now,
    // so each wave is a share of what the last one left.
    let budget = ((policy.max_deregister_share * owned_registered as f64).floor() as usize).max(1);
    let missing = leaving.iter().filter(|c| c.why.is_missing()).count();
    if missing > budget {
        out.refusal = Some(Refusal::TooManyMissing {
            missing,
            registered: owned_registered,
            max_share: policy.max_deregister_share,
        });
        out.refused = leaving;
        return;
    }
    // Owned targets still draining are out of service already: they use up the wave.
    let draining_owned = out.draining.iter().filter(|c| c.target.port == spec.port).count();
    let room = budget.saturating_sub(draining_owned);
    leaving.sort_by(|a, b| (a.why.urgency(), &a.target).cmp(&(b.why.urgency(), &b.target)));
    out.later = leaving.split_off(room.min(leaving.len()));
    out.deregister.append(&mut leaving);
    out.deregister.sort_by(|a, b| a.target.cmp(&b.target));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{IpFamily, TargetType};
    use crate::nodes::fixtures::*;
    use k8s_openapi::api::core::v1::Node;

    const PORT: u16 = 30080;
    const SPEC: TargetSpec = TargetSpec { target_type: TargetType::Ip, family: IpFamily::V4, port: PORT };

    fn run(nodes: &[Node], observed: &[ObservedTarget], policy: &Policy) -> Diff {
        let views = views_of(nodes);
        diff(Cluster { nodes: &views, ready_proxy_nodes: None }, observed, SPEC, policy)
    }

    fn obs(id: &str, port: u16, state: &str) -> ObservedTarget {
        ObservedTarget { target: Target { id: id.into(), port }, state: state.into(), reason: None }
    }

    fn healthy(ids: &[&str]) -> Vec<ObservedTarget> {
        ids.iter().map(|id| obs(id, PORT, "healthy")).collect()
    }

    fn ids(changes: &[Change]) -> Vec<String> {
        changes.iter().map(|c| c.target.to_string()).collect()
    }

    fn n(i: u8) -> Node {
        node(&format!("n{i}"), &format!("10.0.0.{i}"), &format!("i-{i}"))
    }

    fn three() -> Vec<Node> {
        vec![n(1), n(2), n(3)]
    }

    #[test]
    fn empty_group_registers_every_eligible_node() {
        let d = run(&three(), &[], &Policy::default());
        assert_eq!(ids(&d.register), ["10.0.0.1:30080", "10.0.0.2:30080", "10.0.0.3:30080"]);
        assert_eq!(d.register[0].node.as_deref(), Some("n1"));
        assert!(d.deregister.is_empty() && d.unchanged.is_empty() && d.refusal.is_none());
        assert!(d.has_changes() && d.has_writes());
    }

    #[test]
    fn in_sync_group_has_no_changes_whatever_the_health() {
        let observed =
            [obs("10.0.0.1", PORT, "healthy"), obs("10.0.0.2", PORT, "unhealthy"), obs("10.0.0.3", PORT, "initial")];
        let d = run(&three(), &observed, &Policy::default());
        assert!(!d.has_changes());
        assert_eq!(d.unchanged.len(), 3);
        assert_eq!(d.unchanged[1].why, Why::InSync);
    }

    #[test]
    fn ineligible_node_is_deregistered_with_its_reason() {
        let nodes = vec![n(1), n(2), cordoned(n(3))];
        let d = run(&nodes, &healthy(&["10.0.0.1", "10.0.0.2", "10.0.0.3"]), &Policy::default());
        assert_eq!(ids(&d.deregister), ["10.0.0.3:30080"]);
        assert_eq!(d.deregister[0].why, Why::NodeIneligible(vec![Ineligible::Cordoned]));
        assert_eq!(d.deregister[0].node.as_deref(), Some("n3"));
        assert!(d.register.is_empty() && d.later.is_empty());
    }

    #[test]
    fn target_of_a_node_that_left_is_deregistered() {
        let d = run(&three(), &healthy(&["10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.9"]), &Policy::default());
        assert_eq!(ids(&d.deregister), ["10.0.0.9:30080"]);
        assert_eq!(d.deregister[0].why, Why::NoSuchNode);
        assert_eq!(d.deregister[0].node, None);
    }

    #[test]
    fn target_at_another_port_is_foreign_and_kept_unless_asked() {
        let mut observed = healthy(&["10.0.0.1", "10.0.0.2", "10.0.0.3"]);
        observed.push(obs("10.0.0.1", 8080, "healthy"));
        let d = run(&three(), &observed, &Policy::default());
        assert!(!d.has_changes());
        assert_eq!(ids(&d.foreign), ["10.0.0.1:8080"]);
        assert_eq!(d.foreign[0].node.as_deref(), Some("n1"), "the node is named when known");

        let d = run(&three(), &observed, &Policy { remove_foreign: true, ..Policy::default() });
        assert_eq!(ids(&d.deregister), ["10.0.0.1:8080"]);
        assert_eq!(d.deregister[0].why, Why::Foreign);
        assert!(d.foreign.is_empty());
    }

    #[test]
    fn draining_targets_are_neither_deregistered_again_nor_counted_as_registered() {
        let mut observed = healthy(&["10.0.0.1", "10.0.0.2", "10.0.0.3"]);
        observed.push(obs("10.0.0.9", PORT, "draining"));
        observed.push(obs("10.0.0.8", PORT, "unhealthy.draining"));
        let d = run(&three(), &observed, &Policy::default());
        assert!(!d.has_changes());
        assert_eq!(ids(&d.draining), ["10.0.0.8:30080", "10.0.0.9:30080"]);
    }

    #[test]
    fn draining_target_of_an_eligible_node_is_registered_again() {
        for state in ["draining", "unhealthy.draining"] {
            let observed =
                [obs("10.0.0.1", PORT, state), obs("10.0.0.2", PORT, "healthy"), obs("10.0.0.3", PORT, "healthy")];
            let d = run(&three(), &observed, &Policy::default());
            assert_eq!(ids(&d.register), ["10.0.0.1:30080"], "{state}");
            assert!(d.draining.is_empty());
        }
    }

    #[test]
    fn node_port_change_registers_new_port_and_keeps_old_as_foreign() {
        let d = run(&[n(1)], &[obs("10.0.0.1", 30000, "healthy")], &Policy::default());
        assert_eq!(ids(&d.register), ["10.0.0.1:30080"]);
        assert_eq!(ids(&d.foreign), ["10.0.0.1:30000"]);
    }

    #[test]
    fn unmappable_nodes_are_not_registered() {
        let mut bad = n(1);
        bad.status.get_or_insert_default().addresses = None;
        let d = run(&[bad, n(2)], &[], &Policy::default());
        assert_eq!(ids(&d.register), ["10.0.0.2:30080"]);
    }

    #[test]
    fn no_eligible_nodes_while_registered_is_refused() {
        let observed = healthy(&["10.0.0.1", "10.0.0.2"]);
        let d = run(&[cordoned(n(1))], &observed, &Policy::default());
        assert_eq!(d.refusal, Some(Refusal::NoEligibleNodes { registered: 2 }));
        assert!(d.deregister.is_empty());
        assert_eq!(ids(&d.refused), ["10.0.0.1:30080", "10.0.0.2:30080"]);
        assert!(d.has_changes() && !d.has_writes(), "a refused deregistration is still pending");

        // Empty discovery (no nodes at all) is the same refusal; --force does not override it.
        let d = run(&[], &observed, &Policy { force: true, ..Policy::default() });
        assert_eq!(d.refusal, Some(Refusal::NoEligibleNodes { registered: 2 }));

        let d = run(&[], &observed, &Policy { allow_empty: true, ..Policy::default() });
        assert_eq!(d.refusal, None, "--allow-empty alone empties the group");
        assert_eq!(d.deregister.len(), 2);
    }

    #[test]
    fn empty_discovery_with_only_foreign_targets_is_not_a_refusal() {
        let d = run(&[], &[obs("10.0.0.1", 8080, "healthy")], &Policy::default());
        assert_eq!(d.refusal, None);
        assert!(!d.has_changes());
    }

    #[test]
    fn missing_nodes_beyond_the_share_are_refused_unless_forced() {
        let observed = healthy(&["10.0.0.1", "10.0.0.2", "10.0.0.3"]);
        let d = run(&[n(1)], &observed, &Policy::default());
        assert_eq!(d.refusal, Some(Refusal::TooManyMissing { missing: 2, registered: 3, max_share: 0.5 }));
        assert!(d.deregister.is_empty() && d.later.is_empty());
        assert_eq!(d.refused.len(), 2);

        let d = run(&[n(1)], &observed, &Policy { force: true, ..Policy::default() });
        assert_eq!((d.refusal, d.deregister.len()), (None, 2));

        let d = run(&[n(1)], &observed, &Policy { max_deregister_share: 0.7, ..Policy::default() });
        assert_eq!((d.refusal, d.deregister.len()), (None, 2));
    }

    #[test]
    fn a_selector_that_leaves_most_nodes_out_counts_as_missing() {
        let nodes = [n(1), labelled(n(2), "pool", "batch"), labelled(n(3), "pool", "batch")];
        let views = crate::nodes::views(&nodes, &"pool!=batch".parse().expect("selector"));
        let d = diff(
            Cluster { nodes: &views, ready_proxy_nodes: None },
            &healthy(&["10.0.0.1", "10.0.0.2", "10.0.0.3"]),
            SPEC,
            &Policy::default(),
        );
        assert!(matches!(d.refusal, Some(Refusal::TooManyMissing { missing: 2, .. })), "{:?}", d.refusal);
    }

    #[test]
    fn the_share_counts_owned_targets_only() {
        // Six foreign targets no longer dilute the share: removing all four owned ones is the
        // empty-discovery refusal, and three missing of four are refused.
        let mut observed = healthy(&["10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4"]);
        observed.extend((1..=6).map(|i| obs(&format!("10.9.9.{i}"), 8080, "healthy")));
        let d = run(&[], &observed, &Policy::default());
        assert_eq!(d.refusal, Some(Refusal::NoEligibleNodes { registered: 4 }));
        let d = run(&[n(1)], &observed, &Policy::default());
        assert_eq!(d.refusal, Some(Refusal::TooManyMissing { missing: 3, registered: 4, max_share: 0.5 }));
        // Removing foreign targets on request is explicit, not capped.
        let d = run(&[n(1), n(2), n(3), n(4)], &observed, &Policy { remove_foreign: true, ..Policy::default() });
        assert_eq!((d.refusal, d.deregister.len()), (None, 6));
    }

    #[test]
    fn a_large_legitimate_removal_proceeds_in_waves_of_the_share() {
        // An upgrade cordons 8 of 10 nodes: 5 leave now (the share of 10), 3 later.
        let mut nodes: Vec<Node> = (1..=10).map(n).collect();
        for node in nodes.iter_mut().skip(2) {
            *node = cordoned(node.clone());
        }
        let all: Vec<String> = (1..=10).map(|i| format!("10.0.0.{i}")).collect();
        let all: Vec<&str> = all.iter().map(String::as_str).collect();
        let d = run(&nodes, &healthy(&all), &Policy::default());
        assert_eq!(d.refusal, None);
        assert_eq!((d.deregister.len(), d.later.len()), (5, 3));

        // While the first wave drains, nothing more leaves.
        let mut observed = healthy(&all[..2]);
        observed.extend(healthy(&all[7..]));
        observed.extend(all[2..7].iter().map(|id| obs(id, PORT, "draining")));
        let d = run(&nodes, &observed, &Policy::default());
        assert_eq!((d.deregister.len(), d.later.len()), (0, 3));
        assert!(d.has_changes() && !d.has_writes());

        // Drained: the next wave is the share of the 5 still registered (2), then the last one.
        let mut observed = healthy(&all[..2]);
        observed.extend(healthy(&all[7..]));
        let d = run(&nodes, &observed, &Policy::default());
        assert_eq!((d.deregister.len(), d.later.len()), (2, 1));
        let d = run(&nodes, &healthy(&[all[0], all[1], all[9]]), &Policy::default());
        assert_eq!((d.deregister.len(), d.later.len()), (1, 0));
    }

    #[test]
    fn a_small_removal_is_not_held_by_an_earlier_one_still_draining() {
        let nodes = vec![n(1), n(2), n(3), cordoned(n(4)), n(5), n(6)];
        let mut observed = healthy(&["10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4", "10.0.0.5"]);
        observed.push(obs("10.0.0.9", PORT, "draining"));
        let d = run(&nodes, &observed, &Policy::default());
        assert_eq!(ids(&d.deregister), ["10.0.0.4:30080"]);
        assert_eq!(ids(&d.register), ["10.0.0.6:30080"]);
    }

    #[test]
    fn leaving_nodes_go_in_the_first_wave() {
        let nodes = vec![n(1), n(2), cordoned(n(3)), tainted(n(4), nodes::CA_TO_BE_DELETED_TAINT)];
        let d =
            run(&nodes, &healthy(&["10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4", "10.0.0.9"]), &Policy::default());
        // Share of 5 is 2: the gone node's target and the one being removed, the cordoned later.
        assert_eq!(ids(&d.deregister), ["10.0.0.4:30080", "10.0.0.9:30080"]);
        assert_eq!(ids(&d.later), ["10.0.0.3:30080"]);
    }

    #[test]
    fn a_one_node_group_still_makes_progress() {
        let d = run(
            &[n(1), cordoned(n(2))],
            &healthy(&["10.0.0.2"]),
            &Policy { max_deregister_share: 0.1, ..Policy::default() },
        );
        assert_eq!(ids(&d.deregister), ["10.0.0.2:30080"]);
        assert_eq!(ids(&d.register), ["10.0.0.1:30080"]);
    }

    #[test]
    fn registrations_stop_at_the_quota_in_node_name_order() {
        let nodes: Vec<Node> = (1..=5).map(n).collect();
        let policy = Policy { max_targets: 3, ..Policy::default() };
        let d = run(&nodes, &[obs("10.0.0.5", PORT, "healthy")], &policy);
        assert_eq!(ids(&d.register), ["10.0.0.1:30080", "10.0.0.2:30080"], "the registered one keeps its place");
        assert_eq!(ids(&d.over_quota), ["10.0.0.3:30080", "10.0.0.4:30080"]);
        // Draining and foreign targets take places too.
        let d = run(&nodes, &[obs("10.9.9.9", 8080, "healthy"), obs("10.0.0.8", PORT, "draining")], &policy);
        assert_eq!(ids(&d.register), ["10.0.0.1:30080"]);
        // In step at the quota: nothing to do but report the rest.
        let full = healthy(&["10.0.0.1", "10.0.0.2", "10.0.0.3"]);
        let d = run(&nodes, &full, &policy);
        assert!(d.register.is_empty() && !d.has_writes());
        assert_eq!(ids(&d.over_quota), ["10.0.0.4:30080", "10.0.0.5:30080"]);
    }

    #[test]
    fn a_node_without_a_ready_proxy_is_not_desired() {
        let views = views_of(&three());
        let ready: NodeNames = ["n1".to_owned(), "n3".to_owned()].into();
        let d = diff(
            Cluster { nodes: &views, ready_proxy_nodes: Some(&ready) },
            &healthy(&["10.0.0.1", "10.0.0.2"]),
            SPEC,
            &Policy::default(),
        );
        assert_eq!(ids(&d.deregister), ["10.0.0.2:30080"]);
        assert_eq!(d.deregister[0].why, Why::NodeIneligible(vec![Ineligible::NoReadyProxy]));
        assert_eq!(ids(&d.register), ["10.0.0.3:30080"]);
        // No proxy ready anywhere (the DaemonSet was deleted): the empty-discovery refusal.
        let none = NodeNames::new();
        let d = diff(
            Cluster { nodes: &views, ready_proxy_nodes: Some(&none) },
            &healthy(&["10.0.0.1", "10.0.0.2"]),
            SPEC,
            &Policy::default(),
        );
        assert!(matches!(d.refusal, Some(Refusal::NoEligibleNodes { .. })));
    }

    #[test]
    fn duplicate_observations_are_counted_once() {
        let observed = [obs("10.0.0.9", PORT, "healthy"), obs("10.0.0.9", PORT, "healthy")];
        let d = run(&[], &observed, &Policy { allow_empty: true, ..Policy::default() });
        assert_eq!(d.deregister.len(), 1);
    }

    #[test]
    fn instance_targets_use_instance_ids() {
        let views = views_of(&[node("n1", "10.0.0.1", "i-0a1")]);
        let spec = TargetSpec { target_type: TargetType::Instance, ..SPEC };
        let d = diff(Cluster { nodes: &views, ready_proxy_nodes: None }, &[], spec, &Policy::default());
        assert_eq!(ids(&d.register), ["i-0a1:30080"]);
    }
}
