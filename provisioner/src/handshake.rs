//! The Terraform module's handshake, parsed and validated, in either of its two forms:
//!
//! - its output `gatehouse`, as a file ([`load`]): both shapes Terraform prints are accepted,
//!   `terraform output -json` for the whole root
//!   (`{"gatehouse": {"sensitive": false, "type": [...], "value": {...}}, ...}`) and
//!   `terraform output -json gatehouse` (the bare object); unknown fields are ignored;
//! - the tags it puts on the target group when given a `cluster_name` ([`from_tags`]), by which
//!   `--cluster NAME` finds the group: [`CLUSTER_TAG`], [`VERSION_TAG`], [`NODE_PORT_TAG`].
//!   Everything else the provisioner needs is the group's own (type, address family, VPC, health
//!   check, deregistration delay).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde_json::{Map, Value};

use crate::drift::Expected;
use crate::model::{TargetGroupArn, TargetGroupFacts, TargetType};

/// The only handshake schema this provisioner understands.
pub const SCHEMA_VERSION: u64 = 1;

/// The name of the Terraform output that carries the handshake.
pub const OUTPUT_NAME: &str = "gatehouse";

/// The handshake as the Terraform module writes it (schema version 1).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Handshake {
    pub region: String,
    pub load_balancer_arn: String,
    pub load_balancer_name: String,
    pub load_balancer_dns_name: String,
    pub target_group_arn: TargetGroupArn,
    pub target_group_name: String,
    pub target_type: TargetType,
    pub node_port: u16,
    pub protocol: String,
    pub health_check_path: String,
    pub health_check_port: String,
    pub deregistration_delay_seconds: u64,
    pub vpc_id: String,
}

impl From<&Handshake> for Expected {
    fn from(h: &Handshake) -> Self {
        Self {
            target_group_arn: h.target_group_arn.clone(),
            target_group_name: Some(h.target_group_name.clone()),
            node_port: h.node_port,
            target_type: Some(h.target_type),
        }
    }
}

/// Why a handshake file could not be used. Every variant names the file.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    #[error("cannot read the handshake file {}: {source}", path.display())]
    Read { path: PathBuf, source: std::io::Error },
    #[error("the handshake file {} is not valid JSON (line {line}, column {column}): expected `terraform output -json` or `terraform output -json gatehouse`", path.display())]
    NotJson { path: PathBuf, line: usize, column: usize },
    #[error("the handshake file {} has no `gatehouse` output and is not a bare handshake object", path.display())]
    NoHandshake { path: PathBuf },
    #[error("the handshake file {} is missing the required field `{field}`", path.display())]
    Missing { path: PathBuf, field: &'static str },
    #[error("the handshake file {} has an invalid `{field}`: {reason}", path.display())]
    Invalid { path: PathBuf, field: &'static str, reason: String },
    #[error("the handshake file {} has schema_version {found}; this provisioner understands only schema_version {SCHEMA_VERSION}", path.display())]
    SchemaVersion { path: PathBuf, found: String },
}

/// Reads and validates a handshake file.
pub fn load(path: &Path) -> Result<Handshake, HandshakeError> {
    let text =
        std::fs::read_to_string(path).map_err(|source| HandshakeError::Read { path: path.to_owned(), source })?;
    parse(&text, path)
}

/// Parses handshake text; `path` is only used to name the source in errors.
pub fn parse(text: &str, path: &Path) -> Result<Handshake, HandshakeError> {
    let root: Value = serde_json::from_str(text).map_err(|e| HandshakeError::NotJson {
        path: path.to_owned(),
        line: e.line(),
        column: e.column(),
    })?;
    let object = locate(&root).ok_or_else(|| HandshakeError::NoHandshake { path: path.to_owned() })?;
    let fields = Fields { object, path };

    // The version decides how everything else is read, so it is checked first.
    let version = fields.required("schema_version")?;
    if version.as_u64() != Some(SCHEMA_VERSION) {
        return Err(HandshakeError::SchemaVersion { path: path.to_owned(), found: version.to_string() });
    }

    let target_type_text = fields.string("target_type")?;
    let target_type = TargetType::parse(&target_type_text).ok_or_else(|| {
        fields.invalid("target_type", format!("{target_type_text:?} is neither \"instance\" nor \"ip\""))
    })?;
    let node_port = fields.number("node_port")?;
    let node_port = u16::try_from(node_port)
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| fields.invalid("node_port", format!("{node_port} is not a port number")))?;

    Ok(Handshake {
        region: fields.string("region")?,
        load_balancer_arn: fields.string("load_balancer_arn")?,
        load_balancer_name: fields.string("load_balancer_name")?,
        load_balancer_dns_name: fields.string("load_balancer_dns_name")?,
        target_group_arn: fields.arn("target_group_arn")?,
        target_group_name: fields.string("target_group_name")?,
        target_type,
        node_port,
        protocol: fields.string("protocol")?,
        health_check_path: fields.string("health_check_path")?,
        health_check_port: fields.string("health_check_port")?,
        deregistration_delay_seconds: fields.number("deregistration_delay_seconds")?,
        vpc_id: fields.string("vpc_id")?,
    })
}

/// The tag naming the cluster a target group serves (the module's `cluster_name`).
pub const CLUSTER_TAG: &str = "gatehouse.dev/cluster";
/// The tag carrying the handshake's schema version, [`SCHEMA_VERSION`].
pub const VERSION_TAG: &str = "gatehouse.dev/handshake-version";
/// The tag carrying the NodePort the module meant.
pub const NODE_PORT_TAG: &str = "gatehouse.dev/node-port";

/// A target group and its tags.
pub type Tagged = (TargetGroupFacts, BTreeMap<String, String>);

/// Why `--cluster` found no single target group to work on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TagError {
    #[error(
        "no target group at {endpoint} is tagged {CLUSTER_TAG}={cluster}: apply the gatehouse Terraform module with cluster_name = \"{cluster}\" (or pass --handshake FILE)"
    )]
    NotFound { cluster: String, endpoint: String },
    #[error(
        "{} target groups at {endpoint} are tagged {CLUSTER_TAG}={cluster} ({}): one cluster has one gatehouse target group",
        names.len(),
        names.join(", ")
    )]
    Several { cluster: String, endpoint: String, names: Vec<String> },
    #[error("target group {name} is tagged {CLUSTER_TAG}={cluster}, but its {tag} is {found}: {why}")]
    Invalid { cluster: String, name: String, tag: &'static str, found: String, why: String },
}

/// The expectation from the one target group tagged for `cluster`, among `tagged` (every group
/// the account lists in the region, with its tags); `endpoint` only names where they were
/// looked up. Pure.
pub fn from_tags(cluster: &str, tagged: &[Tagged], endpoint: &str) -> Result<Expected, TagError> {
    let matching: Vec<&Tagged> =
        tagged.iter().filter(|(_, tags)| tags.get(CLUSTER_TAG).is_some_and(|c| c == cluster)).collect();
    let (group, tags) = match matching[..] {
        [one] => one,
        [] => return Err(TagError::NotFound { cluster: cluster.to_owned(), endpoint: endpoint.to_owned() }),
        _ => {
            let mut names: Vec<String> = matching.iter().map(|(g, _)| g.name.clone()).collect();
            names.sort();
            return Err(TagError::Several { cluster: cluster.to_owned(), endpoint: endpoint.to_owned(), names });
        }
    };
    let invalid = |tag: &'static str, found: Option<&String>, why: &str| TagError::Invalid {
        cluster: cluster.to_owned(),
        name: group.name.clone(),
        tag,
        found: found.map_or_else(|| "missing".to_owned(), |v| format!("{v:?}")),
        why: why.to_owned(),
    };
    let version = tags.get(VERSION_TAG);
    if version.map(String::as_str) != Some(SCHEMA_VERSION.to_string().as_str()) {
        return Err(invalid(
            VERSION_TAG,
            version,
            &format!("this provisioner understands only handshake version {SCHEMA_VERSION}"),
        ));
    }
    let port = tags.get(NODE_PORT_TAG);
    let node_port = port
        .and_then(|p| p.parse::<u16>().ok())
        .filter(|p| *p != 0)
        .ok_or_else(|| invalid(NODE_PORT_TAG, port, "not a port number"))?;
    let target_group_arn = group.arn.parse().map_err(|why: String| TagError::Invalid {
        cluster: cluster.to_owned(),
        name: group.name.clone(),
        tag: CLUSTER_TAG,
        found: format!("{cluster:?}"),
        why,
    })?;
    Ok(Expected {
        target_group_arn,
        target_group_name: Some(group.name.clone()),
        node_port,
        // The group's own type is what the provisioner registers by: nothing to compare it with.
        target_type: None,
    })
}

/// Finds the handshake object in either output shape.
fn locate(root: &Value) -> Option<&Map<String, Value>> {
    let object = root.as_object()?;
    match object.get(OUTPUT_NAME) {
        // Whole-root `terraform output -json`: every output is wrapped in {sensitive, type, value}.
        Some(output) => output.get("value")?.as_object(),
        None if object.contains_key("schema_version") => Some(object),
        None => None,
    }
}

struct Fields<'a> {
    object: &'a Map<String, Value>,
    path: &'a Path,
}

impl Fields<'_> {
    fn required(&self, field: &'static str) -> Result<&Value, HandshakeError> {
        match self.object.get(field) {
            Some(Value::Null) | None => Err(HandshakeError::Missing { path: self.path.to_owned(), field }),
            Some(v) => Ok(v),
        }
    }

    fn string(&self, field: &'static str) -> Result<String, HandshakeError> {
        match self.required(field)? {
            Value::String(s) if !s.is_empty() => Ok(s.clone()),
            Value::String(_) => Err(self.invalid(field, "it is empty".into())),
            other => Err(self.invalid(field, format!("expected a string, found {other}"))),
        }
    }

    /// Terraform prints numbers as JSON numbers; a string holding digits is accepted too,
    /// because module authors sometimes `tostring()` their outputs.
    fn number(&self, field: &'static str) -> Result<u64, HandshakeError> {
        let value = self.required(field)?;
        value
            .as_u64()
            .or_else(|| value.as_str().and_then(|s| s.parse().ok()))
            .ok_or_else(|| self.invalid(field, format!("expected a non-negative whole number, found {value}")))
    }

    fn arn(&self, field: &'static str) -> Result<TargetGroupArn, HandshakeError> {
        self.string(field)?.parse().map_err(|reason| self.invalid(field, reason))
    }

    fn invalid(&self, field: &'static str, reason: String) -> HandshakeError {
        HandshakeError::Invalid { path: self.path.to_owned(), field, reason }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn bare() -> Value {
        json!({
            "schema_version": 1,
            "region": "us-east-1",
            "load_balancer_arn": "arn:aws:elasticloadbalancing:us-east-1:000000000000:loadbalancer/app/gh/1",
            "load_balancer_name": "gh",
            "load_balancer_dns_name": "gh.elb.localhost",
            "target_group_arn": "arn:aws:elasticloadbalancing:us-east-1:000000000000:targetgroup/gh/2",
            "target_group_name": "gh",
            "target_type": "ip",
            "node_port": 30080,
            "protocol": "HTTP",
            "health_check_path": "/_gatehouse/ready",
            "health_check_port": "traffic-port",
            "deregistration_delay_seconds": 30,
            "vpc_id": "vpc-1"
        })
    }

    fn parse_value(v: &Value) -> Result<Handshake, HandshakeError> {
        parse(&v.to_string(), Path::new("out.json"))
    }

    #[test]
    fn bare_output_of_one_terraform_output_is_accepted() {
        let h = parse_value(&bare()).expect("valid handshake");
        assert_eq!(h.target_type, TargetType::Ip);
        assert_eq!(h.node_port, 30080);
        assert_eq!(h.deregistration_delay_seconds, 30);
        assert_eq!(h.target_group_name, "gh");
    }

    #[test]
    fn whole_root_terraform_output_is_accepted_and_other_outputs_ignored() {
        let root = json!({
            "alb_dns": {"sensitive": false, "type": "string", "value": "x"},
            "gatehouse": {"sensitive": false, "type": ["object", {}], "value": bare()},
        });
        assert_eq!(parse_value(&root).expect("valid"), parse_value(&bare()).expect("valid"));
    }

    #[test]
    fn unknown_extra_fields_are_ignored() {
        let mut v = bare();
        v["listener_arn"] = json!("arn:...");
        assert!(parse_value(&v).is_ok());
    }

    #[test]
    fn missing_field_is_named_with_the_file() {
        let mut v = bare();
        v.as_object_mut().expect("object").remove("target_group_arn");
        let msg = parse_value(&v).expect_err("missing").to_string();
        assert_eq!(msg, "the handshake file out.json is missing the required field `target_group_arn`");
    }

    #[test]
    fn null_field_counts_as_missing() {
        let mut v = bare();
        v["node_port"] = Value::Null;
        assert!(matches!(parse_value(&v), Err(HandshakeError::Missing { field: "node_port", .. })));
    }

    #[test]
    fn other_schema_versions_are_refused() {
        let mut v = bare();
        v["schema_version"] = json!(2);
        let msg = parse_value(&v).expect_err("v2").to_string();
        assert!(msg.contains("schema_version 2"), "{msg}");
        v.as_object_mut().expect("object").remove("schema_version");
        // Without a version the bare object is not recognisable as a handshake at all.
        assert!(matches!(parse_value(&v), Err(HandshakeError::NoHandshake { .. })));
    }

    #[test]
    fn root_output_without_version_names_the_field() {
        let mut inner = bare();
        inner.as_object_mut().expect("object").remove("schema_version");
        let root = json!({"gatehouse": {"value": inner}});
        assert!(matches!(parse_value(&root), Err(HandshakeError::Missing { field: "schema_version", .. })));
    }

    #[test]
    fn invalid_target_type_and_port_are_explained() {
        let mut v = bare();
        v["target_type"] = json!("lambda");
        assert!(matches!(parse_value(&v), Err(HandshakeError::Invalid { field: "target_type", .. })));
        let mut v = bare();
        v["node_port"] = json!(70000);
        assert!(matches!(parse_value(&v), Err(HandshakeError::Invalid { field: "node_port", .. })));
        let mut v = bare();
        v["node_port"] = json!("30080");
        assert_eq!(parse_value(&v).expect("stringly port").node_port, 30080);
    }

    #[test]
    fn a_malformed_target_group_arn_is_refused_locally() {
        for bad in ["hello", "arn:aws:elasticloadbalancing:us-east-1:000000000000:loadbalancer/app/gh/1"] {
            let mut v = bare();
            v["target_group_arn"] = json!(bad);
            let msg = parse_value(&v).expect_err(bad).to_string();
            assert!(msg.starts_with("the handshake file out.json has an invalid `target_group_arn`: "), "{msg}");
        }
    }

    #[test]
    fn non_json_and_unrelated_json_are_clear_errors() {
        let err = parse("gatehouse = {", Path::new("h.tf")).expect_err("not json");
        assert!(err.to_string().starts_with("the handshake file h.tf is not valid JSON"), "{err}");
        let err = parse(r#"{"other": {"value": 1}}"#, Path::new("h.json")).expect_err("no output");
        assert!(matches!(err, HandshakeError::NoHandshake { .. }));
    }

    fn group(name: &str, tags: &[(&str, &str)]) -> Tagged {
        let facts = crate::drift::fixtures::target_group(name);
        (facts, tags.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect())
    }

    fn handshake_tags(cluster: &str) -> Vec<(&str, &str)> {
        vec![(CLUSTER_TAG, cluster), (VERSION_TAG, "1"), (NODE_PORT_TAG, "30090")]
    }

    #[test]
    fn the_one_target_group_tagged_for_the_cluster_is_the_expectation() {
        let groups = [
            group("other", &handshake_tags("staging")),
            group("untagged", &[("team", "edge")]),
            group("gh-prod", &handshake_tags("prod")),
        ];
        let e = from_tags("prod", &groups, "https://elb").expect("found");
        assert_eq!(e.target_group_arn.as_str(), groups[2].0.arn);
        assert_eq!((e.target_group_name.as_deref(), e.node_port, e.target_type), (Some("gh-prod"), 30090, None));
    }

    #[test]
    fn no_or_several_tagged_target_groups_are_one_clear_error() {
        let none = from_tags("prod", &[group("other", &handshake_tags("staging"))], "https://elb").expect_err("none");
        assert_eq!(
            none.to_string(),
            "no target group at https://elb is tagged gatehouse.dev/cluster=prod: apply the gatehouse Terraform module with cluster_name = \"prod\" (or pass --handshake FILE)"
        );
        let two = [group("gh-b", &handshake_tags("prod")), group("gh-a", &handshake_tags("prod"))];
        assert_eq!(
            from_tags("prod", &two, "https://elb").expect_err("two").to_string(),
            "2 target groups at https://elb are tagged gatehouse.dev/cluster=prod (gh-a, gh-b): one cluster has one gatehouse target group"
        );
        // The cluster name is matched exactly, not as a prefix or case-insensitively.
        assert!(from_tags("Prod", &two, "https://elb").is_err());
    }

    #[test]
    fn a_tagged_group_without_a_valid_version_or_node_port_is_refused_by_tag() {
        let cases = [
            (vec![(CLUSTER_TAG, "prod"), (NODE_PORT_TAG, "30080")], "gatehouse.dev/handshake-version is missing"),
            (
                vec![(CLUSTER_TAG, "prod"), (VERSION_TAG, "2"), (NODE_PORT_TAG, "30080")],
                "gatehouse.dev/handshake-version is \"2\": this provisioner understands only handshake version 1",
            ),
            (vec![(CLUSTER_TAG, "prod"), (VERSION_TAG, "1")], "gatehouse.dev/node-port is missing: not a port number"),
            (
                vec![(CLUSTER_TAG, "prod"), (VERSION_TAG, "1"), (NODE_PORT_TAG, "70000")],
                "gatehouse.dev/node-port is \"70000\": not a port number",
            ),
        ];
        for (tags, why) in cases {
            let err = from_tags("prod", &[group("gh", &tags)], "https://elb").expect_err(why).to_string();
            assert!(err.starts_with("target group gh is tagged gatehouse.dev/cluster=prod, but its "), "{err}");
            assert!(err.contains(why), "{err}");
        }
    }

    #[test]
    fn missing_file_is_named() {
        let err = load(Path::new("/nonexistent/handshake.json")).expect_err("missing");
        assert!(err.to_string().starts_with("cannot read the handshake file /nonexistent/handshake.json"));
    }
}
