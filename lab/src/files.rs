//! The files the lab hands to the real binaries: a node inventory (a NodeList, as
//! `kubectl get nodes -o yaml` prints it) for the provisioner, and one config per proxy.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

use serde_json::json;

/// A loopback address standing in for one Kubernetes node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabNode {
    /// The node's name, e.g. `node-a`; also its proxy's `Via` pseudonym.
    pub name: String,
    /// Its InternalIP: a loopback address such as 127.0.0.11.
    pub ip: IpAddr,
    /// Cordoned nodes stay in the inventory but must be deregistered.
    pub unschedulable: bool,
}

impl LabNode {
    pub fn new(name: &str, ip: IpAddr) -> Self {
        Self { name: name.to_owned(), ip, unschedulable: false }
    }
}

/// A `v1/NodeList` with each node Ready, addressed by its InternalIP.
pub fn node_inventory_yaml(nodes: &[LabNode]) -> anyhow::Result<String> {
    let items: Vec<_> = nodes
        .iter()
        .map(|node| {
            json!({
                "apiVersion": "v1",
                "kind": "Node",
                "metadata": {
                    "name": node.name,
                    "labels": {
                        "kubernetes.io/hostname": node.name,
                        "kubernetes.io/os": "linux",
                        "topology.kubernetes.io/zone": "us-east-1a",
                    },
                },
                "spec": { "unschedulable": node.unschedulable },
                "status": {
                    "addresses": [
                        { "type": "InternalIP", "address": node.ip.to_string() },
                        { "type": "Hostname", "address": node.name },
                    ],
                    "conditions": [
                        { "type": "Ready", "status": "True", "reason": "KubeletReady" },
                    ],
                },
            })
        })
        .collect();
    let list = json!({ "apiVersion": "v1", "kind": "NodeList", "metadata": { "resourceVersion": "" }, "items": items });
    Ok(serde_saphyr::to_string(&list)?)
}

/// What one node's proxy is configured with.
#[derive(Debug, Clone)]
pub struct ProxyConfig<'a> {
    pub node: &'a LabNode,
    pub node_port: u16,
    pub admin: SocketAddr,
    /// The edge host clients use, and its service prefix.
    pub edge_host: &'a str,
    pub edge_prefix: &'a str,
    /// Logical service name -> endpoint: the embedded static discovery.
    pub services: &'a BTreeMap<String, SocketAddr>,
    /// Time the proxy keeps serving after SIGTERM while the ALB notices it is not ready.
    pub drain_seconds: u64,
}

/// A gatehouse-proxy config file, with static discovery.
pub fn proxy_config_yaml(config: &ProxyConfig<'_>) -> anyhow::Result<String> {
    let services: BTreeMap<&String, Vec<String>> =
        config.services.iter().map(|(name, addr)| (name, vec![addr.to_string()])).collect();
    let yaml = json!({
        "listen": SocketAddr::new(config.node.ip, config.node_port).to_string(),
        "admin_listen": config.admin.to_string(),
        // Sent as `Via: 1.1 <node>`, so a response shows which node's proxy forwarded it.
        "via": config.node.name,
        "edges": [{ "host": config.edge_host, "prefix": config.edge_prefix }],
        "discovery": { "static": services },
        "forwarded": { "trusted_hops": 1 },
        "timeouts": { "drain": format!("{}s", config.drain_seconds), "shutdown": "10s" },
        "access_log": true,
    });
    Ok(serde_saphyr::to_string(&yaml)?)
}
