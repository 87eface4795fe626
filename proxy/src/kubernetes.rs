//! Kubernetes discovery: watch Services and EndpointSlices, rebuild the route table on change.
//!
//! Desired state is whatever the API server says; after every burst of watch events the
//! whole table is rebuilt from the reflector stores (a pure function, [`build_table`]) and
//! swapped in atomically, so a request always sees one consistent snapshot.

use std::collections::{BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use futures::{Stream, StreamExt};
use gatehouse_convention::Edges;
use k8s_openapi::api::core::v1::{Service, ServicePort};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::Api;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};

use crate::table::{Backend, RouteTable, Unusable};
use crate::{Shared, StartError};

/// The label that ties an EndpointSlice to its Service.
const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// Watch events arriving closer together than this are folded into one rebuild.
const QUIET: Duration = Duration::from_millis(20);
/// ... but a steady trickle of events still gets a rebuild this often.
const MAX_BATCH: Duration = Duration::from_millis(250);

/// A client from a kubeconfig file, or the in-cluster / `KUBECONFIG` default.
pub async fn client(kubeconfig: Option<&Path>) -> Result<kube::Client, StartError> {
    let err = |e: &dyn std::fmt::Display| StartError::Kubernetes(e.to_string());
    let config = match kubeconfig {
        Some(path) => {
            let kc = Kubeconfig::read_from(path).map_err(|e| err(&format!("{}: {e}", path.display())))?;
            kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default()).await.map_err(|e| err(&e))?
        }
        None => kube::Config::infer().await.map_err(|e| err(&e))?,
    };
    kube::Client::try_from(config).map_err(|e| err(&e))
}

/// Watches until aborted. Readiness stays false until every watch has listed once.
pub async fn run(shared: Arc<Shared>, client: kube::Client, edges: Edges, namespaces: Vec<String>) {
    let mut service_stores = Vec::new();
    let mut slice_stores = Vec::new();
    let mut streams = Vec::new();
    for ns in &namespaces {
        let (store, writer) = reflector::store::<Service>();
        service_stores.push(store);
        streams.push(signal(reflector::reflector(
            writer,
            watcher(Api::<Service>::namespaced(client.clone(), ns), watcher::Config::default()).default_backoff(),
        )));
        let (store, writer) = reflector::store::<EndpointSlice>();
        slice_stores.push(store);
        streams.push(signal(reflector::reflector(
            writer,
            watcher(Api::<EndpointSlice>::namespaced(client.clone(), ns), watcher::Config::default()).default_backoff(),
        )));
    }
    let pending_lists = streams.len();
    let mut events = futures::stream::select_all(streams.into_iter().enumerate().map(|(i, s)| s.map(move |e| (i, e))));
    let mut listed = vec![false; pending_lists];

    loop {
        let Some(first) = events.next().await else { return };
        let mut batch = vec![first];
        let deadline = tokio::time::Instant::now() + MAX_BATCH;
        while let Ok(Some(next)) =
            tokio::time::timeout_at(deadline.min(tokio::time::Instant::now() + QUIET), events.next()).await
        {
            batch.push(next);
        }
        for (i, signal) in batch {
            match signal {
                Signal::Listed => listed[i] = true,
                Signal::Changed => {}
                Signal::Error(e) => tracing::warn!(error = %e, "Kubernetes watch failed; retrying with backoff"),
            }
        }
        if listed.iter().all(|l| *l) {
            let services: Vec<(&str, Vec<Arc<Service>>)> =
                namespaces.iter().map(String::as_str).zip(service_stores.iter().map(Store::state)).collect();
            let slices: Vec<Arc<EndpointSlice>> = slice_stores.iter().flat_map(Store::state).collect();
            let table = build_table(edges.clone(), &services, &slices);
            tracing::info!(services = table.services.len(), unusable = table.unusable.len(), "route table updated");
            shared.set_table(table);
        }
    }
}

enum Signal {
    Listed,
    Changed,
    Error(watcher::Error),
}

fn signal<K>(
    s: impl Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send + 'static,
) -> futures::stream::BoxStream<'static, Signal> {
    s.map(|e| match e {
        Ok(watcher::Event::InitDone) => Signal::Listed,
        Ok(_) => Signal::Changed,
        Err(e) => Signal::Error(e),
    })
    .boxed()
}

/// The route table for a set of Services (per namespace, in configured order: the first
/// namespace wins a name clash) and EndpointSlices. Pure, so it is unit-tested directly.
pub fn build_table(edges: Edges, services: &[(&str, Vec<Arc<Service>>)], slices: &[Arc<EndpointSlice>]) -> RouteTable {
    let mut slices_by_service: HashMap<(&str, &str), Vec<&EndpointSlice>> = HashMap::new();
    for slice in slices {
        let ns = slice.metadata.namespace.as_deref().unwrap_or("");
        if let Some(svc) = slice.metadata.labels.as_ref().and_then(|l| l.get(SERVICE_NAME_LABEL)) {
            slices_by_service.entry((ns, svc.as_str())).or_default().push(slice);
        }
    }
    let mut backends = Vec::new();
    let mut unusable = Vec::new();
    let mut seen: HashMap<String, String> = HashMap::new();
    for (ns, list) in services {
        for svc in list {
            let Some(name) = svc.metadata.name.as_deref() else { continue };
            if !edges.iter().any(|e| e.segment_for_service(name).is_some()) {
                continue; // invisible to every edge: the convention is the security boundary
            }
            let mut refuse = |reason: String| {
                unusable.push(Unusable { namespace: Some((*ns).to_owned()), service: name.to_owned(), reason })
            };
            if let Some(first) = seen.get(name) {
                refuse(format!("a Service of the same name in namespace {first:?} takes precedence"));
                continue;
            }
            seen.insert(name.to_owned(), (*ns).to_owned());
            let spec = svc.spec.as_ref();
            if spec.and_then(|s| s.type_.as_deref()) == Some("ExternalName") {
                refuse("ExternalName Services have no endpoints".into());
                continue;
            }
            let ports = spec.and_then(|s| s.ports.as_deref()).unwrap_or(&[]);
            let port = match target_port(ports) {
                Ok(port) => port,
                Err(reason) => {
                    refuse(reason);
                    continue;
                }
            };
            let port_name = port.name.as_deref().unwrap_or("");
            let mut endpoints = BTreeSet::new();
            for slice in slices_by_service.get(&(*ns, name)).into_iter().flatten() {
                if !matches!(slice.address_type.as_str(), "IPv4" | "IPv6") {
                    continue;
                }
                let Some(number) = slice
                    .ports
                    .as_deref()
                    .unwrap_or(&[])
                    .iter()
                    .find(|p| p.name.as_deref().unwrap_or("") == port_name)
                    .and_then(|p| p.port)
                    .and_then(|p| u16::try_from(p).ok())
                else {
                    continue;
                };
                for ep in &slice.endpoints {
                    // A missing `ready` means ready (EndpointSlice API contract).
                    if ep.conditions.as_ref().and_then(|c| c.ready) == Some(false) {
                        continue;
                    }
                    for address in &ep.addresses {
                        if let Ok(ip) = address.parse::<IpAddr>() {
                            endpoints.insert(SocketAddr::new(ip, number));
                        }
                    }
                }
            }
            backends.push(Backend::new(name, Some((*ns).to_owned()), endpoints.into_iter().collect()));
        }
    }
    RouteTable::new(edges, backends, unusable)
}

/// The port named `http`, else the only port.
fn target_port(ports: &[ServicePort]) -> Result<&ServicePort, String> {
    if let Some(http) = ports.iter().find(|p| p.name.as_deref() == Some("http")) {
        return Ok(http);
    }
    match ports {
        [only] => Ok(only),
        [] => Err("the Service has no ports".into()),
        _ => Err(format!("no port is named \"http\" and the Service has {} ports", ports.len())),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;
    use gatehouse_convention::Edge;

    fn edges() -> Edges {
        Edges::new(vec![Edge::new("api.example.com", "service.api").unwrap()], None).unwrap()
    }

    fn service(name: &str, ports: serde_json::Value) -> Arc<Service> {
        Arc::new(
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": name, "namespace": "default"},
                "spec": {"ports": ports}
            }))
            .unwrap(),
        )
    }

    fn slice(service: &str, port_name: Option<&str>, port: i32, ready: &[(&str, Option<bool>)]) -> Arc<EndpointSlice> {
        let endpoints: Vec<_> =
            ready.iter().map(|(ip, r)| serde_json::json!({"addresses": [ip], "conditions": {"ready": r}})).collect();
        Arc::new(
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": format!("{service}-abc"), "namespace": "default",
                             "labels": {SERVICE_NAME_LABEL: service}},
                "addressType": "IPv4",
                "ports": [{"name": port_name, "port": port}],
                "endpoints": endpoints
            }))
            .unwrap(),
        )
    }

    #[test]
    fn ready_endpoints_of_the_http_port_are_routed() {
        let services = [(
            "default",
            vec![service(
                "service-api-foo",
                serde_json::json!([{"name": "metrics", "port": 9090}, {"name": "http", "port": 80}]),
            )],
        )];
        let slices = [
            slice(
                "service-api-foo",
                Some("http"),
                8080,
                &[("10.0.0.1", Some(true)), ("10.0.0.2", Some(false)), ("10.0.0.3", None)],
            ),
            slice("service-api-foo", Some("metrics"), 9090, &[("10.0.0.9", Some(true))]),
        ];
        let table = build_table(edges(), &services, &slices);
        let eps: Vec<String> = table.services["service-api-foo"].endpoints.iter().map(ToString::to_string).collect();
        assert_eq!(eps, ["10.0.0.1:8080", "10.0.0.3:8080"]);
    }

    #[test]
    fn the_only_unnamed_port_is_used() {
        let services = [("default", vec![service("service-api-foo", serde_json::json!([{"port": 80}]))])];
        let slices = [slice("service-api-foo", None, 8080, &[("10.0.0.1", Some(true))])];
        let table = build_table(edges(), &services, &slices);
        assert_eq!(table.services["service-api-foo"].endpoints.len(), 1);
    }

    #[test]
    fn ambiguous_ports_are_listed_with_a_reason_and_not_routed() {
        let services = [(
            "default",
            vec![service("service-api-foo", serde_json::json!([{"name": "a", "port": 80}, {"name": "b", "port": 81}]))],
        )];
        let table = build_table(edges(), &services, &[]);
        assert!(table.services.is_empty());
        assert!(table.unusable[0].reason.contains("http"), "{:?}", table.unusable);
    }

    #[test]
    fn services_no_edge_reaches_are_invisible() {
        let services = [("default", vec![service("internal-db", serde_json::json!([{"port": 5432}]))])];
        let table = build_table(edges(), &services, &[]);
        assert!(table.services.is_empty() && table.unusable.is_empty());
    }

    #[test]
    fn first_namespace_wins_a_name_clash() {
        let services = [
            ("a", vec![service("service-api-foo", serde_json::json!([{"port": 80}]))]),
            ("b", vec![service("service-api-foo", serde_json::json!([{"port": 80}]))]),
        ];
        let table = build_table(edges(), &services, &[]);
        assert_eq!(table.services["service-api-foo"].namespace.as_deref(), Some("a"));
        assert_eq!(table.unusable.len(), 1);
    }
}
