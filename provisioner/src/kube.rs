//! The Kubernetes adapter: the client (kubeconfig or in-cluster), Nodes, the proxy Service.

use std::fmt;
use std::path::Path;
use std::str::FromStr;

use k8s_openapi::api::core::v1::{Node, Service};
use kube::api::ListParams;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config};

use crate::drift::ProxyService;

/// Why the cluster could not be read, in one sentence.
#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    #[error("cannot load the Kubernetes client configuration{}: {detail}", from.as_ref().map(|f| format!(" from {f}")).unwrap_or_default())]
    Config { from: Option<String>, detail: String },
    #[error("cannot {action} from the Kubernetes API: {detail}")]
    Api { action: String, detail: String },
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

/// A client from `kubeconfig` when given, else the default chain (KUBECONFIG, ~/.kube/config,
/// in-cluster).
pub async fn client(kubeconfig: Option<&Path>) -> Result<Client, KubeError> {
    let from = kubeconfig.map(|p| p.display().to_string());
    let err = |e: &dyn fmt::Display| KubeError::Config { from: from.clone(), detail: e.to_string() };
    let config = match kubeconfig {
        Some(path) => {
            let kc = Kubeconfig::read_from(path).map_err(|e| err(&e))?;
            Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default()).await.map_err(|e| err(&e))?
        }
        None => Config::infer().await.map_err(|e| err(&e))?,
    };
    Client::try_from(config).map_err(|e| err(&e))
}

/// Every Node (the selector is applied by [`crate::nodes`], the same way for the inventory).
pub async fn list_nodes(client: &Client) -> Result<Vec<Node>, KubeError> {
    let nodes =
        Api::<Node>::all(client.clone()).list(&ListParams::default()).await.map_err(|e| api_error("list Nodes", &e))?;
    Ok(nodes.items)
}

/// The proxy Service's nodePorts (`None` when the Service does not exist).
pub async fn proxy_service(client: &Client, service: &ServiceRef) -> Result<ProxyService, KubeError> {
    let found = Api::<Service>::namespaced(client.clone(), &service.namespace)
        .get_opt(&service.name)
        .await
        .map_err(|e| api_error(&format!("read Service {service}"), &e))?;
    Ok(proxy_facts(service, found.as_ref()))
}

/// The drift-relevant facts of the proxy Service.
pub fn proxy_facts(service: &ServiceRef, found: Option<&Service>) -> ProxyService {
    ProxyService {
        name: service.to_string(),
        node_ports: found.map(|s| {
            s.spec
                .as_ref()
                .and_then(|spec| spec.ports.as_ref())
                .map(|ports| ports.iter().filter_map(|p| p.node_port).filter_map(|p| u16::try_from(p).ok()).collect())
                .unwrap_or_default()
        }),
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

    fn mock() -> (Client, Handle) {
        let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        (Client::new(service, "default"), handle)
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

    #[tokio::test]
    async fn proxy_service_node_ports_are_read() {
        let (client, mut handle) = mock();
        let server = tokio::spawn(async move {
            let body = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "proxy", "namespace": "gatehouse"},
                "spec": {"type": "NodePort", "ports": [{"name": "http", "port": 80, "nodePort": 30080}]}});
            respond(&mut handle, "/api/v1/namespaces/gatehouse/services/proxy", 200, body).await;
        });
        let facts = proxy_service(&client, &svc_ref()).await.expect("read");
        assert_eq!(facts.node_ports, Some(vec![30080]));
        server.await.expect("server");
    }

    #[tokio::test]
    async fn missing_proxy_service_is_reported_not_an_error() {
        let (client, mut handle) = mock();
        let server = tokio::spawn(async move {
            let status = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "message": "services \"proxy\" not found", "reason": "NotFound", "code": 404});
            respond(&mut handle, "/api/v1/namespaces/gatehouse/services/proxy", 404, status).await;
        });
        let facts = proxy_service(&client, &svc_ref()).await.expect("read");
        assert_eq!(facts.node_ports, None);
        server.await.expect("server");
    }

    #[tokio::test]
    async fn forbidden_node_list_is_one_sentence() {
        let (client, mut handle) = mock();
        let server = tokio::spawn(async move {
            let status = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "message": "nodes is forbidden: User \"x\" cannot list resource \"nodes\"", "reason": "Forbidden", "code": 403});
            respond(&mut handle, "/api/v1/nodes", 403, status).await;
        });
        let msg = list_nodes(&client).await.expect_err("forbidden").to_string();
        assert_eq!(
            msg,
            "cannot list Nodes from the Kubernetes API: nodes is forbidden: User \"x\" cannot list resource \"nodes\" (403 Forbidden)"
        );
        server.await.expect("server");
    }

    #[test]
    fn service_ref_needs_namespace_and_name() {
        assert_eq!(svc_ref().to_string(), "gatehouse/proxy");
        assert!("proxy".parse::<ServiceRef>().is_err());
        assert!("a/b/c".parse::<ServiceRef>().is_err());
        assert!("/b".parse::<ServiceRef>().is_err());
    }
}
