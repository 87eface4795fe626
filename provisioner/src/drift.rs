//! Drift between the handshake and what is live: the target group Terraform owns and the proxy
//! Service's nodePort. Pure; findings are reported field by field, never fixed. Each check is its
//! own function, run once: the target group's at session open, the proxy Service's per plan.

use std::fmt;

use serde::Serialize;

use crate::model::{ProxyService, TargetGroupArn, TargetGroupFacts, TargetType};

/// What the provisioner expects to find live. From the handshake (a file or the target group's
/// tags), or from `--target-group-arn` + `--node-port` (then what the flags cannot say is `None`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Expected {
    pub target_group_arn: TargetGroupArn,
    pub target_group_name: Option<String>,
    pub node_port: u16,
    pub target_type: Option<TargetType>,
}

/// One field that disagrees.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "field")]
pub enum Finding {
    /// No target group with the expected ARN.
    TargetGroupMissing {
        arn: String,
    },
    /// The expected ARN is gone but a target group with the handshake's name exists: it was
    /// replaced outside Terraform's knowledge (or the handshake is stale).
    TargetGroupReplaced {
        expected_arn: String,
        found_arn: String,
        name: String,
    },
    Port {
        expected: u16,
        found: Option<u16>,
    },
    TargetType {
        expected: String,
        found: String,
    },
    HealthCheckPath {
        expected: String,
        found: Option<String>,
    },
    ProxyServiceMissing {
        service: String,
    },
    ProxyNodePort {
        service: String,
        expected: u16,
        found: Vec<u16>,
    },
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::TargetGroupMissing { arn } => write!(f, "target group: {arn} does not exist"),
            Self::TargetGroupReplaced { expected_arn, found_arn, name } => write!(
                f,
                "target group: {expected_arn} does not exist, but a target group named {name} does ({found_arn}): it was replaced, re-read the handshake"
            ),
            Self::Port { expected, found } => {
                write!(f, "target group port: expected {expected} (the NodePort), found {}", opt(found))
            }
            Self::TargetType { expected, found } => {
                write!(f, "target group target type: expected {expected}, found {found}")
            }
            Self::HealthCheckPath { expected, found } => write!(
                f,
                "target group health check path: expected {expected} (the proxy's ready path), found {}",
                opt(found)
            ),
            Self::ProxyServiceMissing { service } => write!(f, "proxy Service {service} does not exist"),
            Self::ProxyNodePort { service, expected, found } => {
                let found: Vec<String> = found.iter().map(ToString::to_string).collect();
                let found =
                    if found.is_empty() { "no nodePort".to_owned() } else { format!("nodePort {}", found.join(", ")) };
                write!(f, "proxy Service {service}: expected nodePort {expected}, found {found}")
            }
        }
    }
}

fn opt<T: fmt::Display>(v: &Option<T>) -> String {
    v.as_ref().map_or_else(|| "none".to_owned(), ToString::to_string)
}

/// Why the expected target group is not there: replaced (another group has its name) or gone.
pub fn missing(expected: &Expected, same_name: Option<&TargetGroupFacts>) -> Finding {
    match (same_name, &expected.target_group_name) {
        (Some(other), Some(name)) => Finding::TargetGroupReplaced {
            expected_arn: expected.target_group_arn.to_string(),
            found_arn: other.arn.clone(),
            name: name.clone(),
        },
        _ => Finding::TargetGroupMissing { arn: expected.target_group_arn.to_string() },
    }
}

/// The live target group against the expectation, field by field.
pub fn check_target_group(expected: &Expected, live: &TargetGroupFacts) -> Vec<Finding> {
    let mut findings = Vec::new();
    if live.port != Some(expected.node_port) {
        findings.push(Finding::Port { expected: expected.node_port, found: live.port });
    }
    if let Some(tt) = expected.target_type
        && live.target_type != tt.as_str()
    {
        findings.push(Finding::TargetType { expected: tt.to_string(), found: live.target_type.clone() });
    }
    if live.health_check_path.as_deref() != Some(gatehouse_convention::READY_PATH) {
        findings.push(Finding::HealthCheckPath {
            expected: gatehouse_convention::READY_PATH.to_owned(),
            found: live.health_check_path.clone(),
        });
    }
    findings
}

/// The proxy Service against the expected NodePort.
pub fn check_proxy_service(expected_node_port: u16, proxy: &ProxyService) -> Option<Finding> {
    match &proxy.node_ports {
        None => Some(Finding::ProxyServiceMissing { service: proxy.name.clone() }),
        Some(_) if !proxy.ports().contains(&expected_node_port) => Some(Finding::ProxyNodePort {
            service: proxy.name.clone(),
            expected: expected_node_port,
            found: proxy.ports(),
        }),
        Some(_) => None,
    }
}

/// What the unit tests of the pure core plan against: the `ip` group `gh` at 30080 with the
/// proxy's ready path, and the handshake that describes it.
#[cfg(test)]
pub(crate) mod fixtures {
    use super::Expected;
    use crate::model::{IpFamily, TargetGroupFacts, TargetType};

    /// The live group `name`, as DescribeTargetGroups reports it.
    pub fn target_group(name: &str) -> TargetGroupFacts {
        TargetGroupFacts {
            arn: format!("arn:aws:elasticloadbalancing:us-east-1:123456789012:targetgroup/{name}/1"),
            name: name.into(),
            port: Some(30080),
            target_type: "ip".into(),
            family: IpFamily::V4,
            protocol: Some("HTTP".into()),
            health_check_path: Some("/_gatehouse/ready".into()),
            vpc_id: Some("vpc-1".into()),
        }
    }

    /// The handshake's expectation of the group `gh`.
    pub fn expected() -> Expected {
        Expected {
            target_group_arn: target_group("gh").arn.parse().expect("arn"),
            target_group_name: Some("gh".into()),
            node_port: 30080,
            target_type: Some(TargetType::Ip),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fixtures::expected;
    use super::*;
    use crate::model::ServiceNodePort;

    fn live() -> TargetGroupFacts {
        fixtures::target_group("gh")
    }

    fn proxy(ports: Option<Vec<u16>>) -> ProxyService {
        ProxyService {
            name: "gatehouse/proxy".into(),
            node_ports: ports.map(|ps| ps.into_iter().map(|p| ServiceNodePort { name: None, node_port: p }).collect()),
        }
    }

    #[test]
    fn matching_target_group_and_service_have_no_findings() {
        assert!(check_target_group(&expected(), &live()).is_empty());
        assert_eq!(check_proxy_service(30080, &proxy(Some(vec![30080, 30443]))), None);
    }

    #[test]
    fn missing_target_group_is_named() {
        assert_eq!(
            missing(&expected(), None),
            Finding::TargetGroupMissing {
                arn: "arn:aws:elasticloadbalancing:us-east-1:123456789012:targetgroup/gh/1".into()
            }
        );
    }

    #[test]
    fn replaced_target_group_names_both_arns() {
        let other = TargetGroupFacts { arn: "arn:tg/gh/2".into(), ..live() };
        let f = missing(&expected(), Some(&other));
        assert!(matches!(&f, Finding::TargetGroupReplaced { found_arn, .. } if found_arn == "arn:tg/gh/2"));
        assert!(f.to_string().contains("replaced"));
        let nameless = Expected { target_group_name: None, ..expected() };
        assert!(matches!(missing(&nameless, Some(&other)), Finding::TargetGroupMissing { .. }));
    }

    #[test]
    fn each_field_is_reported_on_its_own() {
        let port = check_target_group(&expected(), &TargetGroupFacts { port: Some(80), ..live() });
        assert_eq!(port, [Finding::Port { expected: 30080, found: Some(80) }]);
        assert_eq!(port[0].to_string(), "target group port: expected 30080 (the NodePort), found 80");

        let tt = check_target_group(&expected(), &TargetGroupFacts { target_type: "instance".into(), ..live() });
        assert_eq!(tt, [Finding::TargetType { expected: "ip".into(), found: "instance".into() }]);

        let hc = check_target_group(&expected(), &TargetGroupFacts { health_check_path: Some("/".into()), ..live() });
        assert_eq!(hc, [Finding::HealthCheckPath { expected: "/_gatehouse/ready".into(), found: Some("/".into()) }]);

        let svc = check_proxy_service(30080, &proxy(Some(vec![31000]))).expect("finding");
        assert_eq!(svc.to_string(), "proxy Service gatehouse/proxy: expected nodePort 30080, found nodePort 31000");
        assert_eq!(
            check_proxy_service(30080, &proxy(None)),
            Some(Finding::ProxyServiceMissing { service: "gatehouse/proxy".into() })
        );
        let none = check_proxy_service(30080, &proxy(Some(vec![]))).expect("finding");
        assert_eq!(none.to_string(), "proxy Service gatehouse/proxy: expected nodePort 30080, found no nodePort");
    }

    #[test]
    fn several_fields_are_all_reported() {
        let tg = TargetGroupFacts { port: None, target_type: "instance".into(), health_check_path: None, ..live() };
        assert_eq!(check_target_group(&expected(), &tg).len(), 3);
    }

    #[test]
    fn without_a_handshake_the_target_type_is_not_checked() {
        let e = Expected { target_type: None, target_group_name: None, ..expected() };
        assert!(check_target_group(&e, &TargetGroupFacts { target_type: "instance".into(), ..live() }).is_empty());
    }
}
