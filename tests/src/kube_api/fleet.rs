//! A proxy DaemonSet's pods in the fake API server, kept the way the kubelet and the
//! EndpointSlice controller keep them in a cluster: one pod per node; each pod's `Ready`
//! condition computed from its containers' readiness and its readiness gates' conditions (the
//! kubelet's rule); the Service's EndpointSlices listing every pod with its `nodeName`, a
//! `targetRef` and `ready`/`serving`/`terminating` (the EndpointSlice controller's rule, 100
//! endpoints a slice).
//!
//! It changes nothing by itself: the test moves the proxies (`start`, `set_containers_ready`,
//! `terminate`, `finish`) and calls [`ProxyFleet::sync`], or runs it in the background with
//! [`ProxyFleet::run`], the way those controllers react within a short delay.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};

use super::fixtures::{self, SliceEndpoint};
use super::{ApiError, FakeApiServer, ObjectKey, ResourceKind, Shared, UpdateMode};

/// The endpoints one EndpointSlice holds (the controller's default `--max-endpoints-per-slice`).
const ENDPOINTS_PER_SLICE: usize = 100;

/// The proxy pods of one Service.
#[derive(Debug, Clone)]
pub struct ProxyFleet {
    shared: Arc<Shared>,
    namespace: String,
    service: String,
    gate: Option<String>,
}

impl ProxyFleet {
    /// The pods of `namespace/service`; `gate` is the readiness gate every pod declares, if any.
    pub fn new(fake: &FakeApiServer, namespace: &str, service: &str, gate: Option<&str>) -> Self {
        Self {
            shared: fake.shared.clone(),
            namespace: namespace.to_owned(),
            service: service.to_owned(),
            gate: gate.map(str::to_owned),
        }
    }

    /// The name of the pod on `node`.
    pub fn pod_name(&self, node: &str) -> String {
        format!("{}-{node}", self.service)
    }

    /// A new pod on `node` whose containers pass their readiness probe (none of the gate's
    /// condition set yet, as for a freshly created pod).
    pub fn start(&self, node: &str, ip: &str) -> Result<(), ApiError> {
        let mut builder = fixtures::pod(&self.namespace, &self.pod_name(node), node)
            .ip(ip)
            .label("app.kubernetes.io/name", &self.service);
        if let Some(gate) = &self.gate {
            builder = builder.readiness_gate(gate);
        }
        let pod = serde_json::to_value(builder.build()).map_err(|e| ApiError::bad_request(e.to_string()))?;
        self.shared.mutate(|store| {
            store.update(ResourceKind::Pod, Some(&self.namespace), &self.pod_name(node), pod, UpdateMode::Full)
        })?;
        Ok(())
    }

    /// The proxy's readiness probe on `node` starts passing or failing (`ContainersReady`).
    pub fn set_containers_ready(&self, node: &str, ready: bool) -> Result<(), ApiError> {
        let name = self.pod_name(node);
        self.shared.mutate(|store| {
            let key = ObjectKey { kind: ResourceKind::Pod, namespace: self.namespace.clone(), name: name.clone() };
            let mut pod =
                store.objects.get(&key).cloned().ok_or_else(|| ApiError::not_found(ResourceKind::Pod, &name))?;
            set_condition(&mut pod, "ContainersReady", ready, None);
            store.update(ResourceKind::Pod, Some(&self.namespace), &name, pod, UpdateMode::Full).map(drop)
        })
    }

    /// The pod on `node` is deleted (a rollout, an eviction): it gets its `deletionTimestamp`
    /// and keeps running through its grace period.
    pub fn terminate(&self, node: &str) -> Result<(), ApiError> {
        let key = ObjectKey { kind: ResourceKind::Pod, namespace: self.namespace.clone(), name: self.pod_name(node) };
        self.shared.mutate(|store| store.delete(&key, None)).map(drop)
    }

    /// The pod on `node` has stopped: the kubelet's final delete removes it.
    pub fn finish(&self, node: &str) -> Result<(), ApiError> {
        let key = ObjectKey { kind: ResourceKind::Pod, namespace: self.namespace.clone(), name: self.pod_name(node) };
        self.shared.mutate(|store| store.delete(&key, Some(&json!({ "gracePeriodSeconds": 0 })))).map(drop)
    }

    /// One pass of the kubelet (each pod's `Ready`) and the EndpointSlice controller (the
    /// Service's slices), writing only what changed.
    pub fn sync(&self) -> Result<(), ApiError> {
        self.shared.mutate(|store| {
            let pods: Vec<(ObjectKey, Value)> = store
                .objects
                .iter()
                .filter(|(k, _)| k.kind == ResourceKind::Pod && k.namespace == self.namespace && self.owns(&k.name))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            let mut endpoints = Vec::new();
            for (key, mut pod) in pods {
                let ready = condition(&pod, "ContainersReady") && self.gate.as_ref().is_none_or(|g| condition(&pod, g));
                if condition(&pod, "Ready") != ready {
                    let reason = (!ready).then_some(if condition(&pod, "ContainersReady") {
                        "ReadinessGatesNotReady"
                    } else {
                        "ContainersNotReady"
                    });
                    set_condition(&mut pod, "Ready", ready, reason);
                    pod = store.update(ResourceKind::Pod, Some(&self.namespace), &key.name, pod, UpdateMode::Full)?.0;
                }
                let node = pod.pointer("/spec/nodeName").and_then(Value::as_str).unwrap_or_default().to_owned();
                let ip = pod.pointer("/status/podIP").and_then(Value::as_str).unwrap_or("10.1.0.1").to_owned();
                let terminating = pod.pointer("/metadata/deletionTimestamp").is_some();
                endpoints.push((ip, node, key.name.clone(), ready, terminating));
            }
            let wanted = self.slices(&endpoints)?;
            let existing: Vec<String> = store
                .objects
                .keys()
                .filter(|k| {
                    k.kind == ResourceKind::EndpointSlice
                        && k.namespace == self.namespace
                        && k.name.starts_with(&format!("{}-fleet-", self.service))
                })
                .map(|k| k.name.clone())
                .collect();
            for name in existing.iter().filter(|n| !wanted.contains_key(*n)) {
                let key = ObjectKey {
                    kind: ResourceKind::EndpointSlice,
                    namespace: self.namespace.clone(),
                    name: name.clone(),
                };
                store.delete(&key, None)?;
            }
            for (name, slice) in wanted {
                store.update(ResourceKind::EndpointSlice, Some(&self.namespace), &name, slice, UpdateMode::Full)?;
            }
            Ok(())
        })
    }

    /// Runs [`ProxyFleet::sync`] every `every` until the returned task is aborted (or the test
    /// ends), as the controllers react in a cluster.
    pub fn run(&self, every: Duration) -> tokio::task::JoinHandle<()> {
        let fleet = self.clone();
        tokio::spawn(async move {
            loop {
                if let Err(e) = fleet.sync() {
                    eprintln!("proxy fleet: sync failed: {e}");
                }
                tokio::time::sleep(every).await;
            }
        })
    }

    fn owns(&self, pod: &str) -> bool {
        pod.starts_with(&format!("{}-", self.service))
    }

    fn slices(&self, endpoints: &[(String, String, String, bool, bool)]) -> Result<BTreeMap<String, Value>, ApiError> {
        let mut out = BTreeMap::new();
        for (n, chunk) in endpoints.chunks(ENDPOINTS_PER_SLICE).enumerate() {
            let name = format!("{}-fleet-{n}", self.service);
            let list: Vec<SliceEndpoint<'_>> = chunk
                .iter()
                .map(|(ip, node, pod, ready, terminating)| SliceEndpoint {
                    ip,
                    node,
                    pod,
                    ready: *ready,
                    terminating: *terminating,
                })
                .collect();
            let slice = fixtures::proxy_endpoint_slice(&self.namespace, &self.service, &name, 8080, &list);
            out.insert(name, serde_json::to_value(slice).map_err(|e| ApiError::bad_request(e.to_string()))?);
        }
        Ok(out)
    }
}

fn condition(pod: &Value, type_: &str) -> bool {
    pod.pointer("/status/conditions")
        .and_then(Value::as_array)
        .and_then(|cs| cs.iter().find(|c| c.get("type").and_then(Value::as_str) == Some(type_)))
        .is_some_and(|c| c.get("status").and_then(Value::as_str) == Some("True"))
}

fn set_condition(pod: &mut Value, type_: &str, status: bool, reason: Option<&str>) {
    let value = json!({"type": type_, "status": if status { "True" } else { "False" }, "reason": reason});
    let conditions = pod.pointer_mut("/status/conditions").and_then(Value::as_array_mut);
    match conditions {
        Some(list) => match list.iter_mut().find(|c| c.get("type").and_then(Value::as_str) == Some(type_)) {
            Some(existing) => *existing = value,
            None => list.push(value),
        },
        None => pod["status"]["conditions"] = json!([value]),
    }
}
