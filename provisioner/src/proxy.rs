//! The proxy as the provisioner sees it: which nodes run a ready proxy (from the proxy
//! Service's EndpointSlices and the pods they point at), and which readiness-gate condition each
//! proxy pod should carry. Pure: no I/O.
//!
//! A node is a target only while a proxy on it can take traffic. The EndpointSlice says so with
//! `ready`, except for a pod that declares the [`TARGET_HEALTHY_CONDITION`] readiness gate: its
//! `ready` waits for the gate, and the gate waits for the ALB to see the node healthy, which it
//! only does once the node is registered. For such a pod the proxy's own readiness counts
//! (`ContainersReady`), as the AWS Load Balancer Controller does for its pod readiness gates.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::model::{NodeNames, ObservedTarget, ProxyEndpoint, ProxyPod, ProxyService, TargetSpec};
use crate::nodes::NodeView;

/// The proxy Service and what its EndpointSlices and pods say.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProxyView {
    pub service: ProxyService,
    /// Every endpoint of every EndpointSlice of the Service.
    pub endpoints: Vec<ProxyEndpoint>,
    /// The pods of the Service's namespace, by name.
    pub pods: BTreeMap<String, ProxyPod>,
}

impl ProxyView {
    /// The nodes on which a proxy can take traffic now.
    pub fn ready_nodes(&self) -> NodeNames {
        self.endpoints
            .iter()
            .filter(|e| !e.terminating && self.can_take_traffic(e))
            .filter_map(|e| e.node.clone())
            .collect()
    }

    fn can_take_traffic(&self, endpoint: &ProxyEndpoint) -> bool {
        if endpoint.ready {
            return true;
        }
        let pod = endpoint.pod.as_ref().and_then(|name| self.pods.get(name));
        pod.is_some_and(|p| p.has_gate && p.containers_ready && !p.terminating)
    }

    /// The proxy pods the EndpointSlices point at, by name.
    pub fn proxy_pods(&self) -> Vec<&ProxyPod> {
        let mut names: Vec<&String> = self.endpoints.iter().filter_map(|e| e.pod.as_ref()).collect();
        names.sort();
        names.dedup();
        names.into_iter().filter_map(|n| self.pods.get(n)).collect()
    }
}

/// The readiness-gate condition a proxy pod should carry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GateTarget {
    pub status: bool,
    /// CamelCase, as Kubernetes condition reasons are.
    pub reason: &'static str,
    pub message: String,
}

/// Reasons of the [`TARGET_HEALTHY_CONDITION`] condition.
pub mod reason {
    /// The ALB reports the node's target healthy.
    pub const HEALTHY: &str = "TargetHealthy";
    /// Registered, but not healthy (yet).
    pub const NOT_HEALTHY: &str = "TargetNotHealthy";
    /// The node should be a target and is not registered (yet, or over the quota).
    pub const NOT_REGISTERED: &str = "TargetNotRegistered";
    /// The node is not a target by design (cordoned, excluded, no target id...): the gate does
    /// not hold the pod back.
    pub const NODE_NOT_A_TARGET: &str = "NodeNotATarget";
    /// The pod is terminating and its node's target is still registered or draining.
    pub const DRAINING: &str = "TargetDraining";
    /// The pod is terminating and the ALB no longer sends to it: the drain hook may let go.
    pub const DRAINED: &str = "TargetDrained";
}

/// What the gate of `pod` should say, given its node's view, the desired targets and what the
/// target group holds.
pub fn gate_target(
    pod: &ProxyPod,
    node: Option<&NodeView>,
    spec: TargetSpec,
    ready_nodes: &NodeNames,
    observed: &BTreeMap<&str, &ObservedTarget>,
) -> GateTarget {
    let node_name = pod.node.as_deref().unwrap_or("?");
    let gate = |status, reason, message: String| GateTarget { status, reason, message };
    let target_id = node.map(|n| (n, n.target_id(spec.target_type, spec.family)));
    let observed_here =
        target_id.as_ref().and_then(|(_, id)| id.as_ref().ok()).and_then(|id| observed.get(id.as_str()));
    if pod.terminating {
        if ready_nodes.contains(node_name) {
            return gate(false, reason::DRAINED, format!("another ready proxy pod serves node {node_name}'s target"));
        }
        return match observed_here {
            Some(o) if o.state != "unused" => gate(
                false,
                reason::DRAINING,
                format!("the ALB still reports node {node_name}'s target {} as {}", o.target, o.state),
            ),
            _ => gate(false, reason::DRAINED, format!("the ALB no longer sends to node {node_name}")),
        };
    }
    let Some((view, id)) = target_id else {
        return gate(true, reason::NODE_NOT_A_TARGET, format!("node {node_name} is not known"));
    };
    if let Err(reasons) = &view.eligibility {
        let text: Vec<String> = reasons.iter().map(ToString::to_string).collect();
        return gate(true, reason::NODE_NOT_A_TARGET, text.join(", "));
    }
    if let Err(unmappable) = &id {
        return gate(true, reason::NODE_NOT_A_TARGET, unmappable.to_string());
    }
    match observed_here {
        Some(o) if o.is_healthy() => {
            gate(true, reason::HEALTHY, format!("the ALB reports target {} healthy", o.target))
        }
        Some(o) => {
            let why = o.reason.as_deref().map(|r| format!(" ({r})")).unwrap_or_default();
            gate(false, reason::NOT_HEALTHY, format!("the ALB reports target {} {}{why}", o.target, o.state))
        }
        None => gate(false, reason::NOT_REGISTERED, format!("node {node_name}'s target is not registered")),
    }
}

/// Whether `pod` already carries `want`.
pub fn gate_is_current(pod: &ProxyPod, want: &GateTarget) -> bool {
    pod.gate.as_ref().is_some_and(|g| g.status == want.status && g.reason == want.reason)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{GateCondition, IpFamily, Target, TargetType};
    use crate::nodes::fixtures::*;

    fn endpoint(node: &str, pod: &str, ready: bool, terminating: bool) -> ProxyEndpoint {
        ProxyEndpoint { node: Some(node.into()), pod: Some(pod.into()), ready, serving: ready, terminating }
    }

    fn pod(name: &str, node: &str, containers_ready: bool, terminating: bool) -> ProxyPod {
        ProxyPod {
            namespace: "gatehouse".into(),
            name: name.into(),
            node: Some(node.into()),
            containers_ready,
            terminating,
            has_gate: true,
            gate: None,
        }
    }

    fn view(endpoints: Vec<ProxyEndpoint>, pods: Vec<ProxyPod>) -> ProxyView {
        ProxyView {
            service: ProxyService { name: "gatehouse/proxy".into(), node_ports: None },
            endpoints,
            pods: pods.into_iter().map(|p| (p.name.clone(), p)).collect(),
        }
    }

    fn names(n: &[&str]) -> NodeNames {
        n.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn a_node_is_ready_when_an_endpoint_on_it_is_ready_and_not_terminating() {
        let v = view(
            vec![
                endpoint("a", "p-a", true, false),
                endpoint("b", "p-b", false, false),
                endpoint("c", "p-c", true, true),
                ProxyEndpoint { node: None, pod: None, ready: true, serving: true, terminating: false },
            ],
            vec![],
        );
        assert_eq!(v.ready_nodes(), names(&["a"]));
    }

    #[test]
    fn a_pod_held_back_only_by_our_gate_counts_by_its_containers() {
        let mut plain = pod("p-c", "c", true, false);
        plain.has_gate = false;
        let v = view(
            vec![
                endpoint("a", "p-a", false, false),
                endpoint("b", "p-b", false, false),
                endpoint("c", "p-c", false, false),
                endpoint("d", "p-d", false, false),
            ],
            vec![pod("p-a", "a", true, false), pod("p-b", "b", false, false), plain, pod("p-d", "d", true, true)],
        );
        // a: gate pending, containers ready. b: the proxy itself is not ready. c: no gate, so not
        // ready means not ready. d: being deleted.
        assert_eq!(v.ready_nodes(), names(&["a"]));
    }

    const SPEC: TargetSpec = TargetSpec { target_type: TargetType::Ip, family: IpFamily::V4, port: 30080 };

    fn obs(ip: &str, state: &str) -> ObservedTarget {
        ObservedTarget { target: Target { id: ip.into(), port: 30080 }, state: state.into(), reason: None }
    }

    fn gate_of(
        p: &ProxyPod,
        n: Option<&NodeView>,
        ready: &[&str],
        observed: &[ObservedTarget],
    ) -> (bool, &'static str) {
        let by_id: BTreeMap<&str, &ObservedTarget> = observed.iter().map(|o| (o.target.id.as_str(), o)).collect();
        let g = gate_target(p, n, SPEC, &names(ready), &by_id);
        (g.status, g.reason)
    }

    #[test]
    fn the_gate_follows_the_targets_health() {
        let n = view_of(&node("a", "10.0.0.1", "i-1"));
        let p = pod("p-a", "a", true, false);
        assert_eq!(gate_of(&p, Some(&n), &["a"], &[]), (false, reason::NOT_REGISTERED));
        assert_eq!(gate_of(&p, Some(&n), &["a"], &[obs("10.0.0.1", "initial")]), (false, reason::NOT_HEALTHY));
        assert_eq!(gate_of(&p, Some(&n), &["a"], &[obs("10.0.0.1", "healthy")]), (true, reason::HEALTHY));
        assert_eq!(gate_of(&p, Some(&n), &["a"], &[obs("10.0.0.1", "unhealthy")]), (false, reason::NOT_HEALTHY));
    }

    #[test]
    fn the_gate_never_holds_back_a_pod_on_a_node_that_is_not_a_target_by_design() {
        let p = pod("p-a", "a", true, false);
        let cordoned = view_of(&cordoned(node("a", "10.0.0.1", "i-1")));
        assert_eq!(gate_of(&p, Some(&cordoned), &["a"], &[]), (true, reason::NODE_NOT_A_TARGET));
        let mut unmapped = node("a", "10.0.0.1", "i-1");
        unmapped.status.get_or_insert_default().addresses = Some(vec![]);
        assert_eq!(gate_of(&p, Some(&view_of(&unmapped)), &["a"], &[]), (true, reason::NODE_NOT_A_TARGET));
    }

    #[test]
    fn a_terminating_pod_is_drained_once_the_alb_no_longer_sends_to_its_node() {
        let n = view_of(&node("a", "10.0.0.1", "i-1"));
        let p = pod("p-a", "a", true, true);
        assert_eq!(gate_of(&p, Some(&n), &[], &[obs("10.0.0.1", "healthy")]), (false, reason::DRAINING));
        assert_eq!(gate_of(&p, Some(&n), &[], &[obs("10.0.0.1", "draining")]), (false, reason::DRAINING));
        assert_eq!(gate_of(&p, Some(&n), &[], &[obs("10.0.0.1", "unused")]), (false, reason::DRAINED));
        assert_eq!(gate_of(&p, Some(&n), &[], &[]), (false, reason::DRAINED));
        // A surge pod on the same node serves the target: nothing to wait for.
        assert_eq!(gate_of(&p, Some(&n), &["a"], &[obs("10.0.0.1", "healthy")]), (false, reason::DRAINED));
    }

    #[test]
    fn a_gate_is_current_when_status_and_reason_match() {
        let mut p = pod("p-a", "a", true, false);
        let want = GateTarget { status: true, reason: reason::HEALTHY, message: "m".into() };
        assert!(!gate_is_current(&p, &want));
        p.gate = Some(GateCondition { status: true, reason: reason::HEALTHY.into() });
        assert!(gate_is_current(&p, &want));
        p.gate = Some(GateCondition { status: false, reason: reason::HEALTHY.into() });
        assert!(!gate_is_current(&p, &want));
    }
}
