//! A plan: the diff, the nodes that could not be mapped and the drift findings, rendered as text
//! in the style of `terraform plan` or as JSON. Pure.

use std::fmt::Write as _;

use serde::Serialize;
use serde_json::{Value, json};

use crate::diff::{Change, Diff};
use crate::drift::Finding;
use crate::nodes::NodeEntry;

/// Which target group the plan is for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TargetGroupRef {
    pub arn: String,
    pub name: String,
    pub target_type: String,
    pub node_port: u16,
}

/// Everything one run found and intends to do.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Plan {
    pub target_group: TargetGroupRef,
    pub diff: Diff,
    /// Eligible nodes without a target id (`(node, reason)`).
    pub unmappable: Vec<(String, String)>,
    pub drift: Vec<Finding>,
}

/// Exit codes, as `terraform plan -detailed-exitcode`.
pub mod exit {
    /// Nothing to do.
    pub const CLEAN: u8 = 0;
    /// Error (including a safety refusal).
    pub const ERROR: u8 = 1;
    /// Changes pending, or drift found.
    pub const PENDING: u8 = 2;
}

impl Plan {
    /// Builds the plan from the classified nodes, the diff and the drift findings.
    pub fn new(target_group: TargetGroupRef, nodes: &[NodeEntry], diff: Diff, drift: Vec<Finding>) -> Self {
        let unmappable = nodes
            .iter()
            .filter(|n| n.eligibility.is_ok())
            .filter_map(|n| n.target_id.as_ref().err().map(|e| (n.name.clone(), e.to_string())))
            .collect();
        Self { target_group, diff, unmappable, drift }
    }

    /// The `plan` exit code: a refusal is an error; pending changes or drift are 2.
    pub fn exit_code(&self) -> u8 {
        if self.diff.refusal.is_some() {
            exit::ERROR
        } else if self.diff.has_changes() || !self.drift.is_empty() {
            exit::PENDING
        } else {
            exit::CLEAN
        }
    }

    /// The plan as text, like `terraform plan`.
    pub fn render_text(&self) -> String {
        let tg = &self.target_group;
        let d = &self.diff;
        let mut out = String::new();
        let _ = writeln!(
            out,
            "Target group {} ({}), target type {}, NodePort {}",
            tg.name, tg.arn, tg.target_type, tg.node_port
        );
        let _ = writeln!(out);
        if d.has_changes() {
            let _ = writeln!(out, "gatehouse-provisioner will perform the following actions:");
            let _ = writeln!(out);
            // Deregistrations first: that is the order they are applied in.
            for c in &d.deregister {
                line(&mut out, "-", "deregister", c, Some(&c.why.to_string()));
            }
            for c in &d.register {
                line(&mut out, "+", "register", c, None);
            }
            let _ = writeln!(out);
        }
        if !d.foreign.is_empty() || !d.draining.is_empty() {
            for c in &d.foreign {
                line(
                    &mut out,
                    "!",
                    "foreign",
                    c,
                    Some("not at the NodePort; kept, pass --remove-foreign to deregister"),
                );
            }
            for c in &d.draining {
                line(&mut out, "~", "draining", c, Some("already deregistered, the ALB is draining it"));
            }
            let _ = writeln!(out);
        }
        if !self.unmappable.is_empty() {
            let _ = writeln!(out, "Eligible nodes that cannot be registered:");
            for (node, reason) in &self.unmappable {
                let _ = writeln!(out, "  ? {node}: {reason}");
            }
            let _ = writeln!(out);
        }
        if !self.drift.is_empty() {
            let _ = writeln!(out, "Drift (owned by Terraform or the proxy's manifest; reported, not changed):");
            for f in &self.drift {
                let _ = writeln!(out, "  ! {f}");
            }
            let _ = writeln!(out);
        }
        if let Some(refusal) = &d.refusal {
            let _ = writeln!(out, "Error: {refusal}.");
            let _ = writeln!(out);
        }
        if d.has_changes() {
            let _ = writeln!(
                out,
                "Plan: {} to register, {} to deregister, {} unchanged.",
                d.register.len(),
                d.deregister.len(),
                d.unchanged.len()
            );
        } else {
            let _ = writeln!(
                out,
                "No changes. The target group is in step with the cluster ({} target{} registered).",
                d.unchanged.len(),
                if d.unchanged.len() == 1 { "" } else { "s" }
            );
        }
        out
    }

    /// The plan as JSON: the same content as the text.
    pub fn to_json(&self) -> Value {
        let d = &self.diff;
        json!({
            "target_group": self.target_group,
            "register": changes(&d.register),
            "deregister": changes(&d.deregister),
            "unchanged": changes(&d.unchanged),
            "foreign": changes(&d.foreign),
            "draining": changes(&d.draining),
            "unmappable": self.unmappable.iter().map(|(n, r)| json!({"node": n, "reason": r})).collect::<Vec<_>>(),
            "drift": self.drift.iter().map(|f| {
                let mut v = serde_json::to_value(f).unwrap_or(Value::Null);
                if let Some(o) = v.as_object_mut() { o.insert("message".into(), f.to_string().into()); }
                v
            }).collect::<Vec<_>>(),
            "refusal": d.refusal.as_ref().map(|r| json!({"detail": r, "message": r.to_string()})),
            "summary": {
                "register": d.register.len(),
                "deregister": d.deregister.len(),
                "unchanged": d.unchanged.len(),
                "foreign": d.foreign.len(),
                "draining": d.draining.len(),
                "drift": self.drift.len(),
                "changes_pending": d.has_changes(),
            },
        })
    }
}

fn line(out: &mut String, sign: &str, verb: &str, c: &Change, note: Option<&str>) {
    let node = c.node.as_deref().map_or_else(|| "no known node".to_owned(), |n| format!("node {n}"));
    let _ = match note {
        Some(note) => writeln!(out, "  {sign} {verb:<10} {:<24} {node} ({note})", c.target.to_string()),
        None => writeln!(out, "  {sign} {verb:<10} {:<24} {node}", c.target.to_string()),
    };
}

fn changes(cs: &[Change]) -> Vec<Value> {
    cs.iter()
        .map(|c| json!({"id": c.target.id, "port": c.target.port, "node": c.node, "reason": c.why.to_string()}))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diff::{ObservedTarget, Policy, Target, diff};
    use crate::handshake::TargetType;
    use crate::nodes::fixtures::*;
    use crate::nodes::{Selector, classify};

    fn tg() -> TargetGroupRef {
        TargetGroupRef { arn: "arn:tg/gh/1".into(), name: "gh".into(), target_type: "ip".into(), node_port: 30080 }
    }

    fn obs(id: &str, port: u16) -> ObservedTarget {
        ObservedTarget { target: Target { id: id.into(), port }, state: "healthy".into(), reason: None }
    }

    fn plan_for(nodes: &[k8s_openapi::api::core::v1::Node], observed: &[ObservedTarget], drift: Vec<Finding>) -> Plan {
        let entries = classify(nodes, &Selector::default(), TargetType::Ip);
        let d = diff(&entries, observed, 30080, &Policy::default());
        Plan::new(tg(), &entries, d, drift)
    }

    #[test]
    fn changes_render_like_terraform_plan_with_node_names() {
        let nodes =
            [node("n1", "10.0.0.1", "i-1"), node("n2", "10.0.0.2", "i-2"), cordoned(node("n3", "10.0.0.3", "i-3"))];
        let p = plan_for(&nodes, &[obs("10.0.0.1", 30080), obs("10.0.0.3", 30080)], vec![]);
        let text = p.render_text();
        assert!(
            text.contains(&format!("  - deregister {:<24} node n3 (node is cordoned)", "10.0.0.3:30080")),
            "{text}"
        );
        assert!(text.contains(&format!("  + register   {:<24} node n2\n", "10.0.0.2:30080")), "{text}");
        assert!(text.find("- deregister").expect("dereg") < text.find("+ register").expect("reg"));
        assert!(text.ends_with("Plan: 1 to register, 1 to deregister, 1 unchanged.\n"), "{text}");
        assert_eq!(p.exit_code(), exit::PENDING);
    }

    #[test]
    fn no_changes_says_so_and_exits_zero() {
        let p = plan_for(&[node("n1", "10.0.0.1", "i-1")], &[obs("10.0.0.1", 30080)], vec![]);
        assert!(
            p.render_text().contains("No changes. The target group is in step with the cluster (1 target registered).")
        );
        assert_eq!(p.exit_code(), exit::CLEAN);
    }

    #[test]
    fn drift_alone_is_pending_and_listed() {
        let f = Finding::Port { expected: 30080, found: Some(80) };
        let p = plan_for(&[node("n1", "10.0.0.1", "i-1")], &[obs("10.0.0.1", 30080)], vec![f]);
        assert!(p.render_text().contains("  ! target group port: expected 30080 (the NodePort), found 80\n"));
        assert_eq!(p.exit_code(), exit::PENDING);
    }

    #[test]
    fn refusal_is_an_error_and_explained() {
        let p = plan_for(&[], &[obs("10.0.0.1", 30080)], vec![]);
        assert!(p.render_text().contains("Error: refusing to deregister: discovery found no eligible node"));
        assert_eq!(p.exit_code(), exit::ERROR);
    }

    #[test]
    fn foreign_and_unmappable_are_listed() {
        let mut bad = node("n2", "x", "i-2");
        bad.status.get_or_insert_default().addresses = None;
        let p =
            plan_for(&[node("n1", "10.0.0.1", "i-1"), bad], &[obs("10.0.0.1", 30080), obs("10.9.9.9", 8080)], vec![]);
        let text = p.render_text();
        assert!(text.contains(&format!("  ! foreign    {:<24} no known node", "10.9.9.9:8080")), "{text}");
        assert!(text.contains("  ? n2: node has no InternalIP address"), "{text}");
        assert_eq!(p.exit_code(), exit::CLEAN);
    }

    #[test]
    fn json_carries_the_same_content() {
        let nodes = [node("n1", "10.0.0.1", "i-1")];
        let p = plan_for(
            &nodes,
            &[obs("10.0.0.9", 30080), obs("10.0.0.9", 1)],
            vec![Finding::ProxyServiceMissing { service: "a/b".into() }],
        );
        let v = p.to_json();
        assert_eq!(
            v["register"][0],
            json!({"id": "10.0.0.1", "port": 30080, "node": "n1", "reason": "node is eligible"})
        );
        assert_eq!(v["deregister"][0]["reason"], "no such node");
        assert_eq!(v["foreign"][0]["port"], 1);
        assert_eq!(v["drift"][0]["field"], "proxy_service_missing");
        assert_eq!(v["drift"][0]["message"], "proxy Service a/b does not exist");
        assert_eq!(v["summary"]["changes_pending"], true);
        assert_eq!(v["target_group"]["node_port"], 30080);
        assert_eq!(v["refusal"], Value::Null);
    }
}
