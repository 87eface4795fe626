//! The static inventory: a NodeList file as `kubectl get nodes -o yaml` (or `-o json`) prints it.
//! The embedded default without a cluster, and how a user plans offline.

use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::{Node, NodeCondition};
use serde_json::Value;

/// Why an inventory file could not be used. Every variant names the file.
#[derive(Debug, thiserror::Error)]
pub enum InventoryError {
    #[error("cannot read the nodes file {}: {source}", path.display())]
    Read { path: PathBuf, source: std::io::Error },
    #[error("the nodes file {} is not valid YAML or JSON{}: {message}", path.display(), at(*line, *column))]
    Syntax { path: PathBuf, line: Option<u64>, column: Option<u64>, message: String },
    #[error("the nodes file {} is not a NodeList (expected `kind: List` or `kind: NodeList` with `items`, as `kubectl get nodes -o yaml` prints, or a single Node)", path.display())]
    NotANodeList { path: PathBuf },
    /// Nothing proceeds with an unreadable Node: its target could be one that must stay, and a
    /// partial registration would be a half-applied change.
    #[error("the nodes file {} has {} invalid Node{}, so nothing was planned: {}", path.display(), items.len(), if items.len() == 1 { "" } else { "s" }, items.join("; "))]
    BadItems { path: PathBuf, items: Vec<String> },
}

fn at(line: Option<u64>, column: Option<u64>) -> String {
    match (line, column) {
        (Some(l), Some(c)) => format!(" (line {l}, column {c})"),
        _ => String::new(),
    }
}

/// Reads and parses a nodes file.
pub fn load(path: &Path) -> Result<Vec<Node>, InventoryError> {
    let text =
        std::fs::read_to_string(path).map_err(|source| InventoryError::Read { path: path.to_owned(), source })?;
    parse(&text, path)
}

/// Parses nodes-file text (YAML, or JSON which is YAML too); `path` only names the source.
/// Only the fields the provisioner reads are parsed, so an oddity anywhere else in a Node (a
/// field a newer Kubernetes added, a quantity in an unusual form) does not matter.
pub fn parse(text: &str, path: &Path) -> Result<Vec<Node>, InventoryError> {
    let doc: Value = serde_saphyr::from_str(text).map_err(|e| InventoryError::Syntax {
        path: path.to_owned(),
        line: e.location().map(|l| l.line()),
        column: e.location().map(|l| l.column()),
        message: e.without_snippet().to_string().split(" at line ").next().unwrap_or_default().to_owned(),
    })?;
    let not_a_list = || InventoryError::NotANodeList { path: path.to_owned() };
    let kind = doc.get("kind").and_then(Value::as_str);
    let items: Vec<Value> = match (kind, doc.get("items")) {
        (Some("Node"), _) => vec![doc.clone()],
        (Some("List" | "NodeList") | None, Some(Value::Array(items))) => items.clone(),
        (Some("List" | "NodeList") | None, Some(Value::Null)) => Vec::new(),
        _ => return Err(not_a_list()),
    };
    let mut nodes = Vec::new();
    let mut bad = Vec::new();
    for (index, item) in items.iter().enumerate() {
        match node_from_item(item) {
            Ok(node) => nodes.push(node),
            Err(message) => {
                let name = item.get("metadata").and_then(|m| m.get("name")).and_then(Value::as_str);
                bad.push(format!("items[{index}]{}: {message}", name.map(|n| format!(" ({n})")).unwrap_or_default()));
            }
        }
    }
    if bad.is_empty() { Ok(nodes) } else { Err(InventoryError::BadItems { path: path.to_owned(), items: bad }) }
}

/// The fields of a Node the provisioner reads, each checked on its own.
fn node_from_item(item: &Value) -> Result<Node, String> {
    match item.get("kind").and_then(Value::as_str) {
        Some("Node") | None => {}
        Some(other) => return Err(format!("kind is {other}, not Node")),
    }
    let name = item
        .get("metadata")
        .and_then(|m| m.get("name"))
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
        .ok_or("metadata.name is missing")?;
    let mut node = Node::default();
    node.metadata.name = Some(name.to_owned());
    node.metadata.labels = field(item, &["metadata", "labels"])?;
    node.metadata.deletion_timestamp = field(item, &["metadata", "deletionTimestamp"])?;
    let spec = node.spec.get_or_insert_default();
    spec.unschedulable = field(item, &["spec", "unschedulable"])?;
    spec.taints = field(item, &["spec", "taints"])?;
    spec.provider_id = field(item, &["spec", "providerID"])?;
    let status = node.status.get_or_insert_default();
    status.addresses = field(item, &["status", "addresses"])?;
    // Of a condition only type and status matter; its times may be anything.
    let conditions: Option<Vec<ConditionFields>> = field(item, &["status", "conditions"])?;
    status.conditions = conditions.map(|cs| {
        cs.into_iter().map(|c| NodeCondition { type_: c.type_, status: c.status, ..Default::default() }).collect()
    });
    Ok(node)
}

#[derive(serde::Deserialize)]
struct ConditionFields {
    #[serde(rename = "type")]
    type_: String,
    status: String,
}

/// The value at `path`, if present, as `T`; a wrong type names the path.
fn field<T: serde::de::DeserializeOwned>(item: &Value, path: &[&str]) -> Result<Option<T>, String> {
    let mut value = item;
    for key in path {
        match value.get(key) {
            Some(v) => value = v,
            None => return Ok(None),
        }
    }
    if value.is_null() {
        return Ok(None);
    }
    serde_json::from_value(value.clone()).map(Some).map_err(|e| format!("{}: {e}", path.join(".")))
}

#[cfg(test)]
mod tests {
    use super::*;

    const KUBECTL_YAML: &str = r#"
apiVersion: v1
kind: List
metadata:
  resourceVersion: ""
items:
- apiVersion: v1
  kind: Node
  metadata:
    name: n1
    labels:
      kubernetes.io/hostname: n1
  spec:
    providerID: aws:///us-east-1a/i-0aaa
  status:
    addresses:
    - type: InternalIP
      address: 127.0.0.11
    conditions:
    - type: Ready
      status: "True"
      lastHeartbeatTime: "2026-11-26T20:00:00Z"
      lastTransitionTime: "2026-11-26T20:00:00Z"
      reason: KubeletReady
      message: kubelet is posting ready status
    capacity:
      cpu: "2"
      memory: 4Gi
- apiVersion: v1
  kind: Node
  metadata:
    name: n2
  spec:
    unschedulable: true
"#;

    #[test]
    fn kubectl_get_nodes_yaml_is_read() {
        let nodes = parse(KUBECTL_YAML, Path::new("nodes.yaml")).expect("valid");
        assert_eq!(nodes.len(), 2);
        assert_eq!(nodes[0].metadata.name.as_deref(), Some("n1"));
        assert_eq!(nodes[1].spec.as_ref().and_then(|s| s.unschedulable), Some(true));
    }

    #[test]
    fn json_node_list_and_single_node_are_read() {
        let json = r#"{"apiVersion":"v1","kind":"NodeList","items":[{"metadata":{"name":"a"}}]}"#;
        assert_eq!(parse(json, Path::new("n.json")).expect("json").len(), 1);
        let single = "apiVersion: v1\nkind: Node\nmetadata:\n  name: solo\n";
        assert_eq!(parse(single, Path::new("n.yaml")).expect("single")[0].metadata.name.as_deref(), Some("solo"));
        let empty = "apiVersion: v1\nkind: List\nitems: []\n";
        assert!(parse(empty, Path::new("n.yaml")).expect("empty").is_empty());
    }

    #[test]
    fn malformed_yaml_names_file_and_line() {
        let err = parse("items:\n  - metadata: {name: a\n", Path::new("bad.yaml")).expect_err("bad");
        let msg = err.to_string();
        assert!(msg.starts_with("the nodes file bad.yaml is not valid YAML or JSON (line "), "{msg}");
    }

    #[test]
    fn other_kinds_are_refused_with_a_reason() {
        let svc = "apiVersion: v1\nkind: Service\nmetadata:\n  name: x\n";
        assert!(matches!(parse(svc, Path::new("s.yaml")), Err(InventoryError::NotANodeList { .. })));
        let mixed = "kind: List\nitems:\n- kind: Pod\n  metadata: {name: p}\n";
        let msg = parse(mixed, Path::new("m.yaml")).expect_err("pod").to_string();
        assert_eq!(
            msg,
            "the nodes file m.yaml has 1 invalid Node, so nothing was planned: items[0] (p): kind is Pod, not Node"
        );
    }

    #[test]
    fn every_invalid_node_is_named_in_one_line() {
        let text = "kind: List\nitems:\n- metadata: {name: q}\n  spec: {unschedulable: maybe}\n- metadata: {name: ok}\n- metadata: {}\n";
        let msg = parse(text, Path::new("t.yaml")).expect_err("bad items").to_string();
        assert!(
            msg.starts_with(
                "the nodes file t.yaml has 2 invalid Nodes, so nothing was planned: items[0] (q): spec.unschedulable: "
            ),
            "{msg}"
        );
        assert!(msg.ends_with("; items[2]: metadata.name is missing"), "{msg}");
        assert_eq!(msg.lines().count(), 1);
    }

    #[test]
    fn oddities_in_fields_the_provisioner_does_not_read_do_not_matter() {
        let text = r#"
kind: List
items:
- metadata: {name: n1, annotations: {a: 1}}
  spec: {podCIDR: [not, a, string]}
  status:
    capacity: {cpu: {odd: true}}
    conditions: [{type: Ready, status: "True", lastHeartbeatTime: yesterday}]
    addresses: [{type: InternalIP, address: 10.0.0.1}]
"#;
        let nodes = parse(text, Path::new("n.yaml")).expect("lenient");
        let view = crate::nodes::view(&nodes[0], &crate::nodes::Selector::default());
        assert_eq!(view.eligibility, Ok(()));
        assert_eq!(view.internal_ips, ["10.0.0.1".parse::<std::net::IpAddr>().expect("ip")]);
    }

    #[test]
    fn missing_file_is_named() {
        let msg = load(Path::new("/nonexistent/nodes.yaml")).expect_err("missing").to_string();
        assert!(msg.starts_with("cannot read the nodes file /nonexistent/nodes.yaml: "), "{msg}");
    }
}
