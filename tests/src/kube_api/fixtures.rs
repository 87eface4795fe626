//! Builders for the objects tests put into the fake API server, shaped like what a real
//! cluster holds (a kubelet-reported Node, a NodePort Service, a controller-made EndpointSlice).
//!
//! ```
//! use gatehouse_tests::kube_api::fixtures::{endpoint_slice, node, pod, service};
//! let n = node("ip-10-0-1-11", "127.0.0.11").ready(true).provider_id("aws:///us-east-1a/i-0abc").build();
//! let s = service("gatehouse", "service-api-foo").port("http", 80, Some(30080)).build();
//! let e = endpoint_slice("gatehouse", "service-api-foo", [("127.0.0.1", 9001, true)], "http");
//! let p = pod("gatehouse", "proxy-x1", "ip-10-0-1-11").readiness_gate("gatehouse.dev/target-healthy").build();
//! # let _ = (n, s, e, p);
//! ```

use std::collections::BTreeMap;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::{
    Container, Node, NodeAddress, NodeCondition, NodeSpec, NodeStatus, ObjectReference, Pod, PodCondition,
    PodReadinessGate, PodSpec, PodStatus, Service, ServicePort, ServiceSpec, Taint,
};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

/// The label that ties an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// Starts a Node with one `InternalIP` address and a `Ready=True` condition.
pub fn node(name: &str, internal_ip: &str) -> NodeBuilder {
    NodeBuilder {
        name: name.to_string(),
        internal_ip: internal_ip.to_string(),
        ready: true,
        unschedulable: false,
        provider_id: None,
        labels: BTreeMap::new(),
        taints: Vec::new(),
    }
}

/// Builder for a [`Node`]; see [`node`].
#[derive(Clone, Debug)]
pub struct NodeBuilder {
    name: String,
    internal_ip: String,
    ready: bool,
    unschedulable: bool,
    provider_id: Option<String>,
    labels: BTreeMap<String, String>,
    taints: Vec<Taint>,
}

impl NodeBuilder {
    /// Sets the `Ready` condition to `True` or `False`.
    pub fn ready(mut self, ready: bool) -> Self {
        self.ready = ready;
        self
    }

    /// Sets `spec.unschedulable` (a cordoned node).
    pub fn unschedulable(mut self, unschedulable: bool) -> Self {
        self.unschedulable = unschedulable;
        self
    }

    /// Sets `spec.providerID`, e.g. `aws:///us-east-1a/i-0abc`.
    pub fn provider_id(mut self, provider_id: &str) -> Self {
        self.provider_id = Some(provider_id.to_string());
        self
    }

    /// Adds a label.
    pub fn label(mut self, key: &str, value: &str) -> Self {
        self.labels.insert(key.to_string(), value.to_string());
        self
    }

    /// Adds a taint, e.g. `("node.kubernetes.io/unschedulable", "NoSchedule")`.
    pub fn taint(mut self, key: &str, effect: &str) -> Self {
        self.taints.push(Taint { key: key.to_string(), effect: effect.to_string(), ..Default::default() });
        self
    }

    /// The finished Node.
    pub fn build(self) -> Node {
        let mut labels = self.labels;
        labels.entry("kubernetes.io/hostname".into()).or_insert_with(|| self.name.clone());
        labels.entry("kubernetes.io/os".into()).or_insert_with(|| "linux".into());
        Node {
            metadata: ObjectMeta { name: Some(self.name.clone()), labels: Some(labels), ..Default::default() },
            spec: Some(NodeSpec {
                provider_id: self.provider_id,
                unschedulable: self.unschedulable.then_some(true),
                taints: (!self.taints.is_empty()).then_some(self.taints),
                ..Default::default()
            }),
            status: Some(NodeStatus {
                addresses: Some(vec![
                    NodeAddress { type_: "InternalIP".into(), address: self.internal_ip },
                    NodeAddress { type_: "Hostname".into(), address: self.name },
                ]),
                conditions: Some(vec![NodeCondition {
                    type_: "Ready".into(),
                    status: if self.ready { "True" } else { "False" }.into(),
                    reason: Some(if self.ready { "KubeletReady" } else { "KubeletNotReady" }.into()),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
        }
    }
}

impl From<NodeBuilder> for Node {
    fn from(builder: NodeBuilder) -> Self {
        builder.build()
    }
}

/// Starts a ClusterIP Service; it becomes `NodePort` once a port has a node port.
pub fn service(namespace: &str, name: &str) -> ServiceBuilder {
    ServiceBuilder {
        namespace: namespace.to_string(),
        name: name.to_string(),
        ports: Vec::new(),
        selector: BTreeMap::new(),
        labels: BTreeMap::new(),
        service_type: None,
    }
}

/// Builder for a [`Service`]; see [`service`].
#[derive(Clone, Debug)]
pub struct ServiceBuilder {
    namespace: String,
    name: String,
    ports: Vec<ServicePort>,
    selector: BTreeMap<String, String>,
    labels: BTreeMap<String, String>,
    service_type: Option<String>,
}

impl ServiceBuilder {
    /// Adds a TCP port; `node_port` makes the Service a `NodePort` one.
    pub fn port(mut self, name: &str, port: i32, node_port: Option<i32>) -> Self {
        self.ports.push(ServicePort {
            name: Some(name.to_string()),
            port,
            node_port,
            protocol: Some("TCP".into()),
            target_port: Some(IntOrString::Int(port)),
            ..Default::default()
        });
        self
    }

    /// Sets the target port of the last added port.
    pub fn target_port(mut self, target_port: i32) -> Self {
        if let Some(last) = self.ports.last_mut() {
            last.target_port = Some(IntOrString::Int(target_port));
        }
        self
    }

    /// Adds a pod selector entry.
    pub fn selector(mut self, key: &str, value: &str) -> Self {
        self.selector.insert(key.to_string(), value.to_string());
        self
    }

    /// Adds a label.
    pub fn label(mut self, key: &str, value: &str) -> Self {
        self.labels.insert(key.to_string(), value.to_string());
        self
    }

    /// Forces `spec.type` (`ClusterIP`, `NodePort`, `LoadBalancer`).
    pub fn service_type(mut self, service_type: &str) -> Self {
        self.service_type = Some(service_type.to_string());
        self
    }

    /// The finished Service.
    pub fn build(self) -> Service {
        let node_port = self.ports.iter().any(|p| p.node_port.is_some());
        let service_type = self.service_type.unwrap_or_else(|| if node_port { "NodePort" } else { "ClusterIP" }.into());
        Service {
            metadata: ObjectMeta {
                name: Some(self.name),
                namespace: Some(self.namespace),
                labels: (!self.labels.is_empty()).then_some(self.labels),
                ..Default::default()
            },
            spec: Some(ServiceSpec {
                type_: Some(service_type),
                ports: Some(self.ports),
                selector: (!self.selector.is_empty()).then_some(self.selector),
                ..Default::default()
            }),
            status: None,
        }
    }
}

impl From<ServiceBuilder> for Service {
    fn from(builder: ServiceBuilder) -> Self {
        builder.build()
    }
}

/// One EndpointSlice for `service` in `namespace`, named `<service>-<port>`, with the
/// `kubernetes.io/service-name` label. `endpoints` are `(ip, port, ready)`; a slice has a
/// single port list, so the first endpoint's port is used for all (see [`endpoint_slices`]
/// for endpoints on different ports).
pub fn endpoint_slice<'a>(
    namespace: &str,
    service: &str,
    endpoints: impl IntoIterator<Item = (&'a str, i32, bool)>,
    port_name: &str,
) -> EndpointSlice {
    let endpoints: Vec<(&str, i32, bool)> = endpoints.into_iter().collect();
    let port = endpoints.first().map(|(_, port, _)| *port).unwrap_or(80);
    slice_for_port(namespace, service, port, endpoints.iter().map(|(ip, _, ready)| (*ip, *ready)), port_name)
}

/// One EndpointSlice per distinct port, as the EndpointSlice controller splits them.
pub fn endpoint_slices<'a>(
    namespace: &str,
    service: &str,
    endpoints: impl IntoIterator<Item = (&'a str, i32, bool)>,
    port_name: &str,
) -> Vec<EndpointSlice> {
    let mut by_port: BTreeMap<i32, Vec<(&str, bool)>> = BTreeMap::new();
    for (ip, port, ready) in endpoints {
        by_port.entry(port).or_default().push((ip, ready));
    }
    by_port
        .into_iter()
        .map(|(port, endpoints)| slice_for_port(namespace, service, port, endpoints, port_name))
        .collect()
}

fn slice_for_port<'a>(
    namespace: &str,
    service: &str,
    port: i32,
    endpoints: impl IntoIterator<Item = (&'a str, bool)>,
    port_name: &str,
) -> EndpointSlice {
    let labels = BTreeMap::from([
        (SERVICE_NAME_LABEL.to_string(), service.to_string()),
        ("endpointslice.kubernetes.io/managed-by".to_string(), "endpointslice-controller.k8s.io".to_string()),
    ]);
    EndpointSlice {
        metadata: ObjectMeta {
            name: Some(format!("{service}-{port}")),
            namespace: Some(namespace.to_string()),
            labels: Some(labels),
            ..Default::default()
        },
        address_type: "IPv4".into(),
        endpoints: endpoints
            .into_iter()
            .map(|(ip, ready)| Endpoint {
                addresses: vec![ip.to_string()],
                conditions: Some(EndpointConditions {
                    ready: Some(ready),
                    serving: Some(ready),
                    terminating: Some(false),
                }),
                ..Default::default()
            })
            .collect(),
        ports: Some(vec![EndpointPort {
            name: Some(port_name.to_string()),
            port: Some(port),
            protocol: Some("TCP".into()),
            app_protocol: None,
        }]),
    }
}

/// A Lease held by `holder` for `duration_seconds` (no acquire/renew times).
pub fn lease(namespace: &str, name: &str, holder: Option<&str>, duration_seconds: i32) -> Lease {
    Lease {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            namespace: Some(namespace.to_string()),
            ..Default::default()
        },
        spec: Some(LeaseSpec {
            holder_identity: holder.map(str::to_string),
            lease_duration_seconds: Some(duration_seconds),
            ..Default::default()
        }),
    }
}

/// Starts a pod bound to `node` with one container, Running, its containers ready.
pub fn pod(namespace: &str, name: &str, node: &str) -> PodBuilder {
    PodBuilder {
        namespace: namespace.to_string(),
        name: name.to_string(),
        node: node.to_string(),
        ip: None,
        labels: BTreeMap::new(),
        containers_ready: true,
        gates: Vec::new(),
        conditions: Vec::new(),
    }
}

/// Builder for a [`Pod`]; see [`pod`].
#[derive(Clone, Debug)]
pub struct PodBuilder {
    namespace: String,
    name: String,
    node: String,
    ip: Option<String>,
    labels: BTreeMap<String, String>,
    containers_ready: bool,
    gates: Vec<String>,
    conditions: Vec<(String, bool, String)>,
}

impl PodBuilder {
    /// Sets the pod IP.
    pub fn ip(mut self, ip: &str) -> Self {
        self.ip = Some(ip.to_string());
        self
    }

    /// Adds a label.
    pub fn label(mut self, key: &str, value: &str) -> Self {
        self.labels.insert(key.to_string(), value.to_string());
        self
    }

    /// Whether every container passes its readiness probe (`ContainersReady`).
    pub fn containers_ready(mut self, ready: bool) -> Self {
        self.containers_ready = ready;
        self
    }

    /// Declares a readiness gate (`spec.readinessGates`).
    pub fn readiness_gate(mut self, condition_type: &str) -> Self {
        self.gates.push(condition_type.to_string());
        self
    }

    /// Sets a condition of any type, e.g. a readiness gate's, with its reason.
    pub fn condition(mut self, condition_type: &str, status: bool, reason: &str) -> Self {
        self.conditions.push((condition_type.to_string(), status, reason.to_string()));
        self
    }

    /// The finished Pod. `Ready` is what the kubelet computes: containers ready and every
    /// readiness gate's condition True.
    pub fn build(self) -> Pod {
        let status = |b: bool| if b { "True" } else { "False" }.to_string();
        let gate_true = |gate: &String| self.conditions.iter().any(|(t, s, _)| t == gate && *s);
        let ready = self.containers_ready && self.gates.iter().all(gate_true);
        let mut conditions = vec![
            PodCondition { type_: "PodScheduled".into(), status: "True".into(), ..Default::default() },
            PodCondition { type_: "Initialized".into(), status: "True".into(), ..Default::default() },
            PodCondition {
                type_: "ContainersReady".into(),
                status: status(self.containers_ready),
                ..Default::default()
            },
            PodCondition {
                type_: "Ready".into(),
                status: status(ready),
                reason: (!ready).then(|| {
                    if self.containers_ready { "ReadinessGatesNotReady" } else { "ContainersNotReady" }.into()
                }),
                ..Default::default()
            },
        ];
        conditions.extend(self.conditions.iter().map(|(t, s, r)| PodCondition {
            type_: t.clone(),
            status: status(*s),
            reason: Some(r.clone()),
            ..Default::default()
        }));
        Pod {
            metadata: ObjectMeta {
                name: Some(self.name),
                namespace: Some(self.namespace),
                labels: (!self.labels.is_empty()).then_some(self.labels),
                ..Default::default()
            },
            spec: Some(PodSpec {
                node_name: Some(self.node),
                containers: vec![Container {
                    name: "proxy".into(),
                    image: Some("gatehouse:dev".into()),
                    ..Default::default()
                }],
                readiness_gates: (!self.gates.is_empty()).then(|| {
                    self.gates.into_iter().map(|condition_type| PodReadinessGate { condition_type }).collect()
                }),
                ..Default::default()
            }),
            status: Some(PodStatus {
                phase: Some("Running".into()),
                pod_ip: self.ip,
                conditions: Some(conditions),
                ..Default::default()
            }),
        }
    }
}

/// One endpoint of a proxy Service: the pod behind it, its node and its conditions.
#[derive(Clone, Debug)]
pub struct SliceEndpoint<'a> {
    pub ip: &'a str,
    pub node: &'a str,
    pub pod: &'a str,
    pub ready: bool,
    pub terminating: bool,
}

/// An EndpointSlice of `service` as the EndpointSlice controller writes it for pods: each
/// endpoint with its `nodeName`, a `targetRef` to its Pod, and `ready`/`serving`/`terminating`
/// (a terminating pod is not `ready`; it stays `serving` while it passes its readiness probe).
pub fn proxy_endpoint_slice(
    namespace: &str,
    service: &str,
    name: &str,
    port: i32,
    endpoints: &[SliceEndpoint<'_>],
) -> EndpointSlice {
    let mut slice = slice_for_port(namespace, service, port, std::iter::empty(), "http");
    slice.metadata.name = Some(name.to_string());
    slice.endpoints = endpoints
        .iter()
        .map(|e| Endpoint {
            addresses: vec![e.ip.to_string()],
            node_name: Some(e.node.to_string()),
            target_ref: Some(ObjectReference {
                kind: Some("Pod".into()),
                namespace: Some(namespace.to_string()),
                name: Some(e.pod.to_string()),
                ..Default::default()
            }),
            conditions: Some(EndpointConditions {
                ready: Some(e.ready && !e.terminating),
                serving: Some(e.ready),
                terminating: Some(e.terminating),
            }),
            ..Default::default()
        })
        .collect();
    slice
}
