//! The static inventory: a NodeList file as `kubectl get nodes -o yaml` (or `-o json`) prints it.
//! The embedded default without a cluster, and how a user plans offline.

use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::Node;
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
    #[error("the nodes file {} has an invalid Node at items[{index}]{}: {message}", path.display(), name.as_ref().map(|n| format!(" ({n})")).unwrap_or_default())]
    BadItem { path: PathBuf, index: usize, name: Option<String>, message: String },
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
    items
        .into_iter()
        .enumerate()
        .map(|(index, item)| {
            let name = item.get("metadata").and_then(|m| m.get("name")).and_then(Value::as_str).map(str::to_owned);
            let bad =
                |message: String| InventoryError::BadItem { path: path.to_owned(), index, name: name.clone(), message };
            match item.get("kind").and_then(Value::as_str) {
                Some("Node") | None => {}
                Some(other) => return Err(bad(format!("kind is {other}, not Node"))),
            }
            if name.is_none() {
                return Err(bad("metadata.name is missing".into()));
            }
            serde_json::from_value::<Node>(item.clone()).map_err(|e| bad(e.to_string()))
        })
        .collect()
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
        assert_eq!(msg, "the nodes file m.yaml has an invalid Node at items[0] (p): kind is Pod, not Node");
        let typed = "kind: List\nitems:\n- metadata: {name: q}\n  spec: {unschedulable: maybe}\n";
        assert!(parse(typed, Path::new("t.yaml")).expect_err("type").to_string().contains("items[0] (q)"));
        let nameless = "kind: List\nitems:\n- metadata: {}\n";
        assert!(
            parse(nameless, Path::new("t.yaml")).expect_err("name").to_string().contains("metadata.name is missing")
        );
    }

    #[test]
    fn missing_file_is_named() {
        let msg = load(Path::new("/nonexistent/nodes.yaml")).expect_err("missing").to_string();
        assert!(msg.starts_with("cannot read the nodes file /nonexistent/nodes.yaml: "), "{msg}");
    }
}
