//! The Kubernetes adapter: the client (kubeconfig or in-cluster), Nodes, the proxy Service, its
//! EndpointSlices and pods, and the readiness-gate condition on those pods. Every call is bounded
//! by a timeout, and a server that does not answer is named in the error. Translates Kubernetes
//! objects into [`crate::model`] types; the decisions are made elsewhere.

use std::fmt;
use std::future::Future;
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{ListParams, Patch, PatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config};
use serde_json::json;

use futures::StreamExt as _;

use crate::lease::Leadership;
use crate::model::{GateCondition, ProxyEndpoint, ProxyPod, ProxyService, ServiceNodePort, TARGET_HEALTHY_CONDITION};
use crate::plan::GateUpdate;
use crate::proxy::{GateTarget, ProxyView};
use crate::session::Error;

/// The label that ties an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// The default bound on one Kubernetes call of a one-shot command.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a watch connection may stay silent. Watches are asked to end well before it
/// ([`WATCH_SERVER_TIMEOUT`]), so a healthy but quiet watch never trips it, while a server that
/// accepts a list or a watch and never answers is noticed, and the watch retried.
pub const WATCH_READ_TIMEOUT: Duration = Duration::from_secs(60);

/// The `timeoutSeconds` of every watch request.
pub const WATCH_SERVER_TIMEOUT: u32 = 50;

/// Why the cluster could not be read or written, in one sentence.
#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    #[error("cannot load the Kubernetes client configuration{}: {detail}", from.as_ref().map(|f| format!(" from {f}")).unwrap_or_default())]
    Config { from: Option<String>, detail: String },
    #[error("cannot {action} from the Kubernetes API: {detail}")]
    Api { action: String, detail: String },
    #[error("the Kubernetes API at {server} did not answer within {} ({action})", humantime::format_duration(*after))]
    Timeout { server: String, action: String, after: Duration },
}

/// `NAMESPACE/NAME` of the proxy Service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceRef {
    pub namespace: String,
    pub name: String,
}

impl FromStr for ServiceRef {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.split_once('/') {
            Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => {
                Ok(Self { namespace: ns.to_owned(), name: name.to_owned() })
            }
            _ => Err(format!("{s:?} is not NAMESPACE/NAME")),
        }
    }
}

impl fmt::Display for ServiceRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// A client and the server it talks to, every call bounded by `timeout`.
#[derive(Clone)]
pub struct Cluster {
    client: Client,
    server: String,
    timeout: Duration,
}

impl fmt::Debug for Cluster {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cluster").field("server", &self.server).field("timeout", &self.timeout).finish()
    }
}

impl Cluster {
    /// A client from `kubeconfig` when given, else the default chain (KUBECONFIG,
    /// ~/.kube/config, in-cluster). Each call is bounded by `timeout`, and no read on a
    /// connection waits longer than `read_timeout` (the watches' bound).
    pub async fn connect(
        kubeconfig: Option<&Path>,
        timeout: Duration,
        read_timeout: Duration,
    ) -> Result<Self, KubeError> {
        let from = kubeconfig.map(|p| p.display().to_string());
        let err = |e: &dyn fmt::Display| KubeError::Config { from: from.clone(), detail: e.to_string() };
        let mut config = match kubeconfig {
            Some(path) => {
                let kc = Kubeconfig::read_from(path).map_err(|e| err(&e))?;
                Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default()).await.map_err(|e| err(&e))?
            }
            None => Config::infer().await.map_err(|e| err(&e))?,
        };
        config.read_timeout = Some(read_timeout);
        // Count the read timeout from each request, not from when a pooled connection went idle.
        config.reset_reader_on_write = true;
        config.connect_timeout = Some(timeout.min(Duration::from_secs(10)));
        Ok(Self::new(Client::try_from(config.clone()).map_err(|e| err(&e))?, config.cluster_url.to_string(), timeout))
    }

    /// Wraps an existing client (tests point one at any server).
    pub fn new(client: Client, server: String, timeout: Duration) -> Self {
        Self { client, server: server.trim_end_matches('/').to_owned(), timeout }
    }

    /// The client, for watchers.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The namespace the client configuration names (for the Lease when none is given).
    pub fn default_namespace(&self) -> &str {
        self.client.default_namespace()
    }

    /// Runs one call within the timeout.
    async fn call<T>(&self, action: &str, call: impl Future<Output = Result<T, kube::Error>>) -> Result<T, KubeError> {
        match tokio::time::timeout(self.timeout, call).await {
            Ok(result) => result.map_err(|e| api_error(action, &e)),
            Err(_) => {
                Err(KubeError::Timeout { server: self.server.clone(), action: action.to_owned(), after: self.timeout })
            }
        }
    }

    /// Every Node (the selector is applied by [`crate::nodes`], the same way for the inventory).
    pub async fn list_nodes(&self) -> Result<Vec<Node>, KubeError> {
        let api = Api::<Node>::all(self.client.clone());
        Ok(self.call("list Nodes", api.list(&ListParams::default())).await?.items)
    }

    /// The proxy Service, its EndpointSlices and the pods of its namespace.
    pub async fn proxy_view(&self, service: &ServiceRef) -> Result<ProxyView, KubeError> {
        let services = Api::<Service>::namespaced(self.client.clone(), &service.namespace);
        let found = self.call(&format!("read Service {service}"), services.get_opt(&service.name)).await?;
        let slices = Api::<EndpointSlice>::namespaced(self.client.clone(), &service.namespace);
        let selector = format!("{SERVICE_NAME_LABEL}={}", service.name);
        let slices = self
            .call(
                &format!("list the EndpointSlices of {service}"),
                slices.list(&ListParams::default().labels(&selector)),
            )
            .await?;
        let pods = Api::<Pod>::namespaced(self.client.clone(), &service.namespace);
        let pods = self.call(&format!("list Pods in {}", service.namespace), pods.list(&ListParams::default())).await?;
        Ok(ProxyView {
            service: proxy_service_facts(service, found.as_ref()),
            endpoints: slices.items.iter().flat_map(endpoints_of).collect(),
            pods: pods.items.iter().map(proxy_pod).map(|p| (p.name.clone(), p)).collect(),
        })
    }

    /// One pod, `None` when it does not exist.
    pub async fn pod(&self, namespace: &str, name: &str) -> Result<Option<ProxyPod>, KubeError> {
        let api = Api::<Pod>::namespaced(self.client.clone(), namespace);
        Ok(self.call(&format!("read Pod {namespace}/{name}"), api.get_opt(name)).await?.as_ref().map(proxy_pod))
    }

    /// Sets the readiness-gate condition on `pod`, as a strategic merge patch of its status (the
    /// conditions list merges by `type`, so no other condition is touched). The transition time
    /// moves only when the status does.
    async fn set_gate(&self, pod: &ProxyPod, gate: &GateTarget) -> Result<(), KubeError> {
        let mut condition = json!({
            "type": TARGET_HEALTHY_CONDITION,
            "status": if gate.status { "True" } else { "False" },
            "reason": gate.reason,
            "message": gate.message,
        });
        if pod.gate.as_ref().is_none_or(|g| g.status != gate.status) {
            let now = k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(k8s_openapi::jiff::Timestamp::now());
            condition["lastTransitionTime"] = serde_json::to_value(now).unwrap_or_default();
        }
        let patch = json!({"status": {"conditions": [condition]}});
        let api = Api::<Pod>::namespaced(self.client.clone(), &pod.namespace);
        let action = format!("set the {TARGET_HEALTHY_CONDITION} condition of Pod {}/{}", pod.namespace, pod.name);
        self.call(&action, api.patch_status(&pod.name, &PatchParams::default(), &Patch::Strategic(patch))).await?;
        Ok(())
    }
}

/// Readiness-gate writes in flight at once (a new install sets one per node).
const GATE_WRITES_AT_ONCE: usize = 8;

impl Cluster {
    /// Sets each gate condition, a few at a time, each only while `leadership` holds; returns
    /// the outcome of each.
    pub async fn set_gates<'a>(
        &self,
        updates: &'a [GateUpdate],
        leadership: &Leadership,
    ) -> Vec<(&'a GateUpdate, Result<(), Error>)> {
        // The futures are made first, from a named async fn: a closure inside the stream would
        // make the caller's future lose `Send` (its lifetimes become higher-ranked).
        let writes: Vec<_> = updates.iter().map(|update| self.set_gate_while_leading(update, leadership)).collect();
        futures::stream::iter(writes).buffer_unordered(GATE_WRITES_AT_ONCE).collect().await
    }

    async fn set_gate_while_leading<'a>(
        &self,
        update: &'a GateUpdate,
        leadership: &Leadership,
    ) -> (&'a GateUpdate, Result<(), Error>) {
        let result = match leadership.check() {
            Ok(()) => self.set_gate(&update.pod, &update.gate).await.map_err(Error::from),
            Err(e) => Err(e.into()),
        };
        (update, result)
    }
}

/// The proxy Service's nodePorts (`None` when the Service does not exist).
pub fn proxy_service_facts(service: &ServiceRef, found: Option<&Service>) -> ProxyService {
    ProxyService {
        name: service.to_string(),
        node_ports: found.map(|s| {
            s.spec
                .as_ref()
                .and_then(|spec| spec.ports.as_ref())
                .map(|ports| {
                    ports
                        .iter()
                        .filter_map(|p| {
                            let node_port = u16::try_from(p.node_port?).ok()?;
                            Some(ServiceNodePort { name: p.name.clone(), node_port })
                        })
                        .collect()
                })
                .unwrap_or_default()
        }),
    }
}

/// The endpoints of one EndpointSlice. Conditions follow the API's rules for unset values:
/// `ready` and `serving` unknown count as true, `terminating` unknown as false.
pub fn endpoints_of(slice: &EndpointSlice) -> Vec<ProxyEndpoint> {
    slice
        .endpoints
        .iter()
        .map(|e| {
            let conditions = e.conditions.as_ref();
            ProxyEndpoint {
                node: e.node_name.clone(),
                pod: e.target_ref.as_ref().filter(|r| r.kind.as_deref() == Some("Pod")).and_then(|r| r.name.clone()),
                ready: conditions.and_then(|c| c.ready).unwrap_or(true),
                serving: conditions.and_then(|c| c.serving.or(c.ready)).unwrap_or(true),
                terminating: conditions.and_then(|c| c.terminating).unwrap_or(false),
            }
        })
        .collect()
}

/// What the provisioner reads from a pod.
pub fn proxy_pod(pod: &Pod) -> ProxyPod {
    let conditions = pod.status.as_ref().and_then(|s| s.conditions.as_deref()).unwrap_or_default();
    let condition = |type_: &str| conditions.iter().find(|c| c.type_ == type_);
    ProxyPod {
        namespace: pod.metadata.namespace.clone().unwrap_or_default(),
        name: pod.metadata.name.clone().unwrap_or_default(),
        node: pod.spec.as_ref().and_then(|s| s.node_name.clone()),
        containers_ready: condition("ContainersReady").is_some_and(|c| c.status == "True"),
        terminating: pod.metadata.deletion_timestamp.is_some(),
        has_gate: pod
            .spec
            .as_ref()
            .and_then(|s| s.readiness_gates.as_ref())
            .is_some_and(|gates| gates.iter().any(|g| g.condition_type == TARGET_HEALTHY_CONDITION)),
        gate: condition(TARGET_HEALTHY_CONDITION)
            .map(|c| GateCondition { status: c.status == "True", reason: c.reason.clone().unwrap_or_default() }),
    }
}

/// One sentence for a kube error: the API's own message, not a Debug dump.
pub fn api_error(action: &str, e: &kube::Error) -> KubeError {
    let detail = match e {
        kube::Error::Api(status) => format!("{} ({} {})", status.message, status.code, status.reason),
        other => root_cause(other),
    };
    KubeError::Api { action: action.to_owned(), detail }
}

fn root_cause(err: &(dyn std::error::Error + 'static)) -> String {
    let mut current = err;
    while let Some(next) = current.source() {
        current = next;
    }
    current.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{Request, Response};
    use kube::client::Body;
    use serde_json::json;

    type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

    fn mock() -> (Cluster, Handle) {
        let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        (Cluster::new(Client::new(service, "default"), "https://k8s.test".into(), Duration::from_secs(5)), handle)
    }

    async fn respond(handle: &mut Handle, expect_path: &str, status: u16, body: serde_json::Value) {
        let (request, send) = handle.next_request().await.expect("a request");
        assert_eq!(request.uri().path(), expect_path);
        let response = Response::builder()
            .status(status)
            .body(Body::from(serde_json::to_vec(&body).expect("json")))
            .expect("response");
        send.send_response(response);
    }

    fn svc_ref() -> ServiceRef {
        "gatehouse/proxy".parse().expect("ref")
    }

    fn list(kind: &str, items: serde_json::Value) -> serde_json::Value {
        json!({"kind": kind, "apiVersion": "v1", "metadata": {"resourceVersion": "1"}, "items": items})
    }

    #[tokio::test]
    async fn the_proxy_view_reads_the_service_its_slices_and_pods() {
        let (cluster, mut handle) = mock();
        let server = tokio::spawn(async move {
            let body = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "proxy", "namespace": "gatehouse"},
                "spec": {"type": "NodePort", "ports": [{"name": "http", "port": 80, "nodePort": 30080}]}});
            respond(&mut handle, "/api/v1/namespaces/gatehouse/services/proxy", 200, body).await;
            let slice = json!({"metadata": {"name": "proxy-abc", "labels": {"kubernetes.io/service-name": "proxy"}}, "addressType": "IPv4",
                "endpoints": [{"addresses": ["10.1.0.5"], "nodeName": "n1", "targetRef": {"kind": "Pod", "name": "proxy-x"}, "conditions": {"ready": false, "serving": false, "terminating": false}}]});
            respond(
                &mut handle,
                "/apis/discovery.k8s.io/v1/namespaces/gatehouse/endpointslices",
                200,
                list("EndpointSliceList", json!([slice])),
            )
            .await;
            let pod = json!({"metadata": {"name": "proxy-x", "namespace": "gatehouse"},
                "spec": {"nodeName": "n1", "containers": [], "readinessGates": [{"conditionType": "gatehouse.dev/target-healthy"}]},
                "status": {"conditions": [{"type": "ContainersReady", "status": "True"}, {"type": "gatehouse.dev/target-healthy", "status": "False", "reason": "TargetNotRegistered"}]}});
            respond(&mut handle, "/api/v1/namespaces/gatehouse/pods", 200, list("PodList", json!([pod]))).await;
        });
        let view = cluster.proxy_view(&svc_ref()).await.expect("read");
        assert_eq!(view.service.ports(), [30080]);
        assert_eq!(view.endpoints[0].pod.as_deref(), Some("proxy-x"));
        let pod = &view.pods["proxy-x"];
        assert!(pod.has_gate && pod.containers_ready && !pod.terminating);
        assert_eq!(pod.gate, Some(GateCondition { status: false, reason: "TargetNotRegistered".into() }));
        assert_eq!(view.ready_nodes().into_iter().collect::<Vec<_>>(), ["n1"]);
        server.await.expect("server");
    }

    #[tokio::test]
    async fn missing_proxy_service_is_reported_not_an_error() {
        let (cluster, mut handle) = mock();
        let server = tokio::spawn(async move {
            let status = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "message": "services \"proxy\" not found", "reason": "NotFound", "code": 404});
            respond(&mut handle, "/api/v1/namespaces/gatehouse/services/proxy", 404, status).await;
            respond(
                &mut handle,
                "/apis/discovery.k8s.io/v1/namespaces/gatehouse/endpointslices",
                200,
                list("EndpointSliceList", json!([])),
            )
            .await;
            respond(&mut handle, "/api/v1/namespaces/gatehouse/pods", 200, list("PodList", json!([]))).await;
        });
        let view = cluster.proxy_view(&svc_ref()).await.expect("read");
        assert_eq!(view.service.node_ports, None);
        server.await.expect("server");
    }

    #[tokio::test]
    async fn forbidden_node_list_is_one_sentence() {
        let (cluster, mut handle) = mock();
        let server = tokio::spawn(async move {
            let status = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "message": "nodes is forbidden: User \"x\" cannot list resource \"nodes\"", "reason": "Forbidden", "code": 403});
            respond(&mut handle, "/api/v1/nodes", 403, status).await;
        });
        let msg = cluster.list_nodes().await.expect_err("forbidden").to_string();
        assert_eq!(
            msg,
            "cannot list Nodes from the Kubernetes API: nodes is forbidden: User \"x\" cannot list resource \"nodes\" (403 Forbidden)"
        );
        server.await.expect("server");
    }

    #[tokio::test(start_paused = true)]
    async fn a_server_that_never_answers_is_named_after_the_timeout() {
        let (cluster, mut handle) = mock();
        // The request arrives and is never answered.
        let server = tokio::spawn(async move {
            let (_request, send) = handle.next_request().await.expect("a request");
            std::future::pending::<()>().await;
            drop(send);
        });
        let msg = cluster.list_nodes().await.expect_err("timeout").to_string();
        assert_eq!(msg, "the Kubernetes API at https://k8s.test did not answer within 5s (list Nodes)");
        server.abort();
    }

    #[test]
    fn endpoint_conditions_default_as_the_api_documents() {
        let slice: EndpointSlice = serde_json::from_value(json!({"metadata": {"name": "s"}, "addressType": "IPv4",
            "endpoints": [{"addresses": ["10.0.0.1"]}, {"addresses": ["10.0.0.2"], "conditions": {"ready": false, "terminating": true}}]}))
        .expect("slice");
        let e = endpoints_of(&slice);
        assert!(e[0].ready && e[0].serving && !e[0].terminating && e[0].node.is_none());
        assert!(!e[1].ready && !e[1].serving && e[1].terminating);
    }

    #[test]
    fn service_ref_needs_namespace_and_name() {
        assert_eq!(svc_ref().to_string(), "gatehouse/proxy");
        assert!("proxy".parse::<ServiceRef>().is_err());
        assert!("a/b/c".parse::<ServiceRef>().is_err());
        assert!("/b".parse::<ServiceRef>().is_err());
    }
}
