//! What the watchers have seen, reduced as it arrives to what the plan depends on: a
//! [`NodeView`] per Node, the proxy Service's nodePorts, the endpoints of each EndpointSlice and
//! a [`ProxyPod`] per pod. Applying an event answers whether anything the plan reads changed, so
//! a Node heartbeat (or any update that changes nothing here) wakes nothing.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::watcher::Event;

use crate::cluster::{self, ServiceRef};
use crate::model::{ProxyEndpoint, ProxyPod, ServiceNodePort};
use crate::nodes::{self, NodeView, Selector};
use crate::plan::ClusterView;
use crate::proxy::ProxyView;

/// What an event changed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Changed {
    /// Something the desired target set depends on: the plan must be made against AWS again.
    pub targets: bool,
    /// Only a pod's readiness-gate condition: the gates are recomputed, AWS is not read.
    pub gates: bool,
}

impl Changed {
    const TARGETS: Self = Self { targets: true, gates: false };
    const GATES: Self = Self { targets: false, gates: true };
    const NOTHING: Self = Self { targets: false, gates: false };

    /// Both changes together.
    pub fn or(self, other: Self) -> Self {
        Self { targets: self.targets || other.targets, gates: self.gates || other.gates }
    }

    /// Whether anything changed.
    pub fn any(self) -> bool {
        self.targets || self.gates
    }
}

/// The objects of one watch, by name, with the watcher's relist protocol: between `Init` and
/// `InitDone` the new list is buffered and then replaces the old one at once.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Source<V> {
    items: BTreeMap<String, V>,
    relisting: Option<BTreeMap<String, V>>,
    synced: bool,
}

impl<V> Default for Source<V> {
    fn default() -> Self {
        Self { items: BTreeMap::new(), relisting: None, synced: false }
    }
}

impl<V: PartialEq> Source<V> {
    /// Applies one event, the object already reduced to `V` (`None`: not one we keep); returns
    /// the old and new value of the key it touched when they differ, or the whole relist.
    fn apply(&mut self, event: Event<(String, Option<V>)>) -> Diffed<'_, V> {
        match event {
            Event::Init => {
                self.relisting = Some(BTreeMap::new());
                Diffed::Same
            }
            Event::InitApply((key, value)) => {
                if let (Some(buffer), Some(value)) = (self.relisting.as_mut(), value) {
                    buffer.insert(key, value);
                }
                Diffed::Same
            }
            Event::InitDone => {
                let listed = self.relisting.take().unwrap_or_default();
                let first = !self.synced;
                self.synced = true;
                if first || listed != self.items {
                    self.items = listed;
                    Diffed::Relisted
                } else {
                    Diffed::Same
                }
            }
            Event::Apply((key, Some(value))) => {
                if self.items.get(&key) == Some(&value) {
                    return Diffed::Same;
                }
                let old = self.items.insert(key.clone(), value);
                Diffed::Key(old, self.items.get(&key))
            }
            Event::Apply((key, None)) | Event::Delete((key, _)) => match self.items.remove(&key) {
                Some(old) => Diffed::Key(Some(old), None),
                None => Diffed::Same,
            },
        }
    }
}

enum Diffed<'a, V> {
    Same,
    Relisted,
    Key(Option<V>, Option<&'a V>),
}

/// The reduced cluster.
#[derive(Debug, Clone)]
pub struct ClusterState {
    selector: Selector,
    proxy_service: Option<ServiceRef>,
    nodes: Source<NodeView>,
    services: Source<Vec<ServiceNodePort>>,
    slices: Source<Vec<ProxyEndpoint>>,
    pods: Source<ProxyPod>,
}

impl ClusterState {
    /// Nothing seen yet.
    pub fn new(selector: Selector, proxy_service: Option<ServiceRef>) -> Self {
        Self {
            selector,
            proxy_service,
            nodes: Source::default(),
            services: Source::default(),
            slices: Source::default(),
            pods: Source::default(),
        }
    }

    /// Whether every watch has listed once: before that, a plan would see a partial cluster.
    pub fn synced(&self) -> bool {
        self.nodes.synced
            && (self.proxy_service.is_none() || (self.services.synced && self.slices.synced && self.pods.synced))
    }

    /// A Node event.
    pub fn node(&mut self, event: Event<Node>) -> Changed {
        let selector = &self.selector;
        let reduced = map_event(event, |n: Node| {
            let v = nodes::view(&n, selector);
            (v.name.clone(), Some(v))
        });
        match self.nodes.apply(reduced) {
            Diffed::Same => Changed::NOTHING,
            Diffed::Relisted | Diffed::Key(..) => Changed::TARGETS,
        }
    }

    /// A Service event in the proxy Service's namespace (other Services are ignored).
    pub fn service(&mut self, event: Event<Service>) -> Changed {
        let Some(wanted) = self.proxy_service.clone() else { return Changed::NOTHING };
        let reduced = map_event(event, |s: Service| {
            let name = s.metadata.name.clone().unwrap_or_default();
            let keep = (name == wanted.name)
                .then(|| cluster::proxy_service_facts(&wanted, Some(&s)).node_ports.unwrap_or_default());
            (name, keep)
        });
        match self.services.apply(reduced) {
            Diffed::Same => Changed::NOTHING,
            Diffed::Relisted | Diffed::Key(..) => Changed::TARGETS,
        }
    }

    /// An EndpointSlice event (the watch selects the proxy Service's slices).
    pub fn slice(&mut self, event: Event<EndpointSlice>) -> Changed {
        let reduced = map_event(event, |s: EndpointSlice| {
            let mut endpoints = cluster::endpoints_of(&s);
            endpoints.sort();
            (s.metadata.name.clone().unwrap_or_default(), Some(endpoints))
        });
        match self.slices.apply(reduced) {
            Diffed::Same => Changed::NOTHING,
            Diffed::Relisted | Diffed::Key(..) => Changed::TARGETS,
        }
    }

    /// A Pod event in the proxy Service's namespace. A change of the readiness-gate condition
    /// alone (what the provisioner writes itself) changes only the gates.
    pub fn pod(&mut self, event: Event<Pod>) -> Changed {
        let reduced = map_event(event, |p: Pod| {
            let pod = cluster::proxy_pod(&p);
            (pod.name.clone(), Some(pod))
        });
        match self.pods.apply(reduced) {
            Diffed::Same => Changed::NOTHING,
            Diffed::Relisted => Changed::TARGETS,
            Diffed::Key(Some(old), Some(new)) if ProxyPod { gate: new.gate.clone(), ..old.clone() } == *new => {
                Changed::GATES
            }
            Diffed::Key(..) => Changed::TARGETS,
        }
    }

    /// The cluster as a plan reads it.
    pub fn view(&self) -> ClusterView {
        let proxy = self.proxy_service.as_ref().map(|svc| ProxyView {
            service: crate::model::ProxyService {
                name: svc.to_string(),
                node_ports: self.services.items.get(&svc.name).cloned(),
            },
            endpoints: self.slices.items.values().flatten().cloned().collect(),
            pods: self.pods.items.clone(),
        });
        ClusterView { nodes: self.nodes.items.values().cloned().collect(), proxy }
    }
}

/// Reduces the object of an event to `(key, value)`.
fn map_event<K, V>(event: Event<K>, reduce: impl Fn(K) -> (String, Option<V>)) -> Event<(String, Option<V>)> {
    match event {
        Event::Apply(k) => Event::Apply(reduce(k)),
        Event::Delete(k) => Event::Delete(reduce(k)),
        Event::Init => Event::Init,
        Event::InitApply(k) => Event::InitApply(reduce(k)),
        Event::InitDone => Event::InitDone,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{NodeAddress, NodeCondition, NodeSpec, NodeStatus, PodCondition, PodStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};

    fn node(name: &str, heartbeat: i64, cordoned: bool) -> Node {
        Node {
            metadata: ObjectMeta {
                name: Some(name.into()),
                resource_version: Some(heartbeat.to_string()),
                ..Default::default()
            },
            spec: Some(NodeSpec { unschedulable: Some(cordoned), ..Default::default() }),
            status: Some(NodeStatus {
                addresses: Some(vec![NodeAddress { type_: "InternalIP".into(), address: "10.0.0.1".into() }]),
                conditions: Some(vec![NodeCondition {
                    type_: "Ready".into(),
                    status: "True".into(),
                    last_heartbeat_time: Some(Time(
                        k8s_openapi::jiff::Timestamp::from_second(heartbeat).expect("time"),
                    )),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
        }
    }

    fn listed(state: &mut ClusterState, nodes: Vec<Node>) -> Changed {
        let mut changed = state.node(Event::Init);
        for n in nodes {
            changed = changed.or(state.node(Event::InitApply(n)));
        }
        changed.or(state.node(Event::InitDone))
    }

    #[test]
    fn a_heartbeat_changes_nothing_and_a_cordon_changes_the_targets() {
        let mut state = ClusterState::new(Selector::default(), None);
        assert!(!state.synced());
        assert_eq!(listed(&mut state, vec![node("a", 1, false)]), Changed::TARGETS, "the first list is a change");
        assert!(state.synced());
        assert_eq!(state.node(Event::Apply(node("a", 2, false))), Changed::NOTHING);
        assert_eq!(state.node(Event::Apply(node("a", 3, true))), Changed::TARGETS);
        assert_eq!(state.node(Event::Delete(node("a", 4, true))), Changed::TARGETS);
        assert_eq!(state.node(Event::Delete(node("a", 4, true))), Changed::NOTHING, "already gone");
    }

    #[test]
    fn a_relist_that_finds_the_same_nodes_changes_nothing() {
        let mut state = ClusterState::new(Selector::default(), None);
        listed(&mut state, vec![node("a", 1, false), node("b", 1, false)]);
        assert_eq!(listed(&mut state, vec![node("b", 9, false), node("a", 9, false)]), Changed::NOTHING);
        assert_eq!(listed(&mut state, vec![node("a", 9, false)]), Changed::TARGETS);
        assert_eq!(state.view().nodes.len(), 1);
    }

    fn pod(ready: bool, gate: Option<&str>) -> Pod {
        let mut conditions = vec![PodCondition {
            type_: "ContainersReady".into(),
            status: if ready { "True" } else { "False" }.into(),
            ..Default::default()
        }];
        if let Some(reason) = gate {
            conditions.push(PodCondition {
                type_: crate::model::TARGET_HEALTHY_CONDITION.into(),
                status: "True".into(),
                reason: Some(reason.into()),
                ..Default::default()
            });
        }
        Pod {
            metadata: ObjectMeta {
                name: Some("proxy-x".into()),
                namespace: Some("gatehouse".into()),
                ..Default::default()
            },
            spec: None,
            status: Some(PodStatus { conditions: Some(conditions), ..Default::default() }),
        }
    }

    #[test]
    fn only_the_gate_changing_on_a_pod_changes_only_the_gates() {
        let mut state = ClusterState::new(Selector::default(), Some("gatehouse/proxy".parse().expect("ref")));
        assert_eq!(state.pod(Event::Apply(pod(true, None))), Changed::TARGETS);
        assert_eq!(state.pod(Event::Apply(pod(true, Some("TargetHealthy")))), Changed::GATES);
        assert_eq!(state.pod(Event::Apply(pod(false, Some("TargetHealthy")))), Changed::TARGETS);
        assert!(!state.synced(), "the proxy's watches have not listed yet");
    }

    #[test]
    fn other_services_of_the_namespace_are_ignored() {
        let mut state = ClusterState::new(Selector::default(), Some("gatehouse/proxy".parse().expect("ref")));
        let svc = |name: &str| Service {
            metadata: ObjectMeta { name: Some(name.into()), ..Default::default() },
            ..Default::default()
        };
        assert_eq!(state.service(Event::Apply(svc("other"))), Changed::NOTHING);
        assert_eq!(state.service(Event::Apply(svc("proxy"))), Changed::TARGETS);
        let view = state.view();
        assert_eq!(view.proxy.expect("proxy").service.node_ports, Some(vec![]));
    }
}
