//! The route table: an immutable snapshot swapped atomically when discovery changes.
//!
//! The convention decides *which* Service a request names; this table only answers where
//! that Service's ready endpoints are, with one hash lookup.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use gatehouse_convention::Edges;
use prometheus_client::metrics::counter::Counter;
use serde::Serialize;

/// A routable Kubernetes Service and its ready endpoints.
#[derive(Debug)]
pub struct Backend {
    /// Kubernetes Service name, e.g. `service-api-foo`.
    pub service_name: Arc<str>,
    /// Namespace, for Kubernetes discovery.
    pub namespace: Option<String>,
    pub endpoints: Vec<SocketAddr>,
    /// Round-robin cursor; relaxed ordering is enough, fairness is statistical.
    next: AtomicUsize,
    /// `requests_total{service, class}` handles, created on first use so that an idle
    /// service costs no series, then reached without touching the metric family's lock.
    pub(crate) request_counters: [OnceLock<Counter>; 5],
}

impl Backend {
    pub fn new(service_name: &str, namespace: Option<String>, endpoints: Vec<SocketAddr>) -> Self {
        Self {
            service_name: service_name.into(),
            namespace,
            endpoints,
            next: AtomicUsize::new(0),
            request_counters: Default::default(),
        }
    }

    /// The endpoint for the next attempt, and the index to skip on a retry.
    pub fn pick(&self) -> Option<(usize, SocketAddr)> {
        if self.endpoints.is_empty() {
            return None;
        }
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.endpoints.len();
        Some((i, self.endpoints[i]))
    }

    /// A different endpoint than `not`, for the one retry after a failed connect.
    pub fn pick_other(&self, not: usize) -> Option<SocketAddr> {
        if self.endpoints.len() < 2 {
            return None;
        }
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.endpoints.len();
        let i = if i == not { (i + 1) % self.endpoints.len() } else { i };
        Some(self.endpoints[i])
    }
}

/// A Service that matches an edge prefix but cannot be routed to, and why.
#[derive(Debug, Clone, Serialize)]
pub struct Unusable {
    pub namespace: Option<String>,
    pub service: String,
    pub reason: String,
}

/// The whole routing state at one instant.
#[derive(Debug)]
pub struct RouteTable {
    pub edges: Edges,
    /// Kubernetes Service name -> backend. Holds only Services some edge reaches.
    pub services: HashMap<Arc<str>, Arc<Backend>>,
    pub unusable: Vec<Unusable>,
}

impl RouteTable {
    /// Builds a table, dropping every Service no edge reaches (the security boundary).
    pub fn new(edges: Edges, backends: Vec<Backend>, unusable: Vec<Unusable>) -> Self {
        let mut services = HashMap::with_capacity(backends.len());
        for b in backends {
            if edges.iter().any(|e| e.segment_for_service(&b.service_name).is_some()) {
                services.entry(b.service_name.clone()).or_insert_with(|| Arc::new(b));
            }
        }
        let unusable = unusable
            .into_iter()
            .filter(|u| edges.iter().any(|e| e.segment_for_service(&u.service).is_some()))
            .collect();
        Self { edges, services, unusable }
    }

    /// The static-discovery table.
    pub fn from_static(edges: Edges, services: &BTreeMap<String, Vec<SocketAddr>>) -> Self {
        let backends = services.iter().map(|(name, eps)| Backend::new(name, None, eps.clone())).collect();
        Self::new(edges, backends, Vec::new())
    }

    /// How many (edge, service) pairs are routable: the `routes` gauge.
    pub fn route_count(&self) -> usize {
        self.edges.iter().map(|e| self.services.keys().filter(|s| e.segment_for_service(s).is_some()).count()).sum()
    }

    /// The `/routes` document.
    pub fn to_json(&self) -> serde_json::Value {
        #[derive(Serialize)]
        struct Service<'a> {
            logical_service: String,
            service: &'a str,
            #[serde(skip_serializing_if = "Option::is_none")]
            namespace: Option<&'a str>,
            path: String,
            endpoints: Vec<String>,
        }
        #[derive(Serialize)]
        struct EdgeDoc<'a> {
            host: &'a str,
            prefix: &'a str,
            services: Vec<Service<'a>>,
            unusable: Vec<&'a Unusable>,
        }
        let mut edges = Vec::new();
        for edge in self.edges.iter() {
            let mut services: Vec<Service<'_>> = self
                .services
                .values()
                .filter_map(|b| {
                    let segment = edge.segment_for_service(&b.service_name)?;
                    Some(Service {
                        logical_service: format!("{}.{segment}", edge.prefix()),
                        service: &b.service_name,
                        namespace: b.namespace.as_deref(),
                        path: format!("/{segment}/"),
                        endpoints: b.endpoints.iter().map(ToString::to_string).collect(),
                    })
                })
                .collect();
            services.sort_by(|a, b| a.service.cmp(b.service));
            let unusable = self.unusable.iter().filter(|u| edge.segment_for_service(&u.service).is_some()).collect();
            edges.push(EdgeDoc { host: edge.host(), prefix: edge.prefix(), services, unusable });
        }
        serde_json::json!({ "edges": edges })
    }
}
