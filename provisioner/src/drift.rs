//! Drift between the handshake and what is live: the target group Terraform owns and the proxy
//! Service's nodePort. Pure; findings are reported field by field, never fixed.

use std::fmt;

use serde::Serialize;

use crate::handshake::{Handshake, TargetType};

/// What the provisioner expects to find live. From the handshake, or from
/// `--target-group-arn` + `--node-port` (then fields the flags cannot say are `None`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Expected {
    pub target_group_arn: String,
    pub target_group_name: Option<String>,
    pub node_port: u16,
    pub target_type: Option<TargetType>,
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

/// The target group as DescribeTargetGroups reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TargetGroupFacts {
    pub arn: String,
    pub name: String,
    pub port: Option<u16>,
    /// As AWS spells it (`instance`, `ip`, `lambda`, `alb`).
    pub target_type: String,
    pub protocol: Option<String>,
    pub health_check_path: Option<String>,
}

/// The proxy Service as Kubernetes reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProxyService {
    /// `namespace/name`.
    pub name: String,
    /// The Service's nodePorts; `None` when the Service does not exist.
    pub node_ports: Option<Vec<u16>>,
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

impl Finding {
    /// Whether the provisioner cannot go on at all (nothing to register into).
    pub fn is_fatal(&self) -> bool {
        matches!(self, Self::TargetGroupMissing { .. } | Self::TargetGroupReplaced { .. })
    }
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
            Self::HealthCheckPath { expected, found } => {
                write!(
                    f,
                    "target group health check path: expected {expected} (the proxy's ready path), found {}",
                    opt(found)
                )
            }
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

/// Compares the expectation with the live target group (`None`: the ARN was not found;
/// `same_name` is then the target group found under the handshake's name, if any) and the proxy
/// Service (`None`: not checked).
pub fn check(
    expected: &Expected,
    live: Option<&TargetGroupFacts>,
    same_name: Option<&TargetGroupFacts>,
    proxy: Option<&ProxyService>,
) -> Vec<Finding> {
    let mut findings = Vec::new();
    match live {
        None => findings.push(match (same_name, &expected.target_group_name) {
            (Some(other), Some(name)) => Finding::TargetGroupReplaced {
                expected_arn: expected.target_group_arn.clone(),
                found_arn: other.arn.clone(),
                name: name.clone(),
            },
            _ => Finding::TargetGroupMissing { arn: expected.target_group_arn.clone() },
        }),
        Some(tg) => {
            if tg.port != Some(expected.node_port) {
                findings.push(Finding::Port { expected: expected.node_port, found: tg.port });
            }
            if let Some(tt) = expected.target_type
                && tg.target_type != tt.as_str()
            {
                findings.push(Finding::TargetType { expected: tt.to_string(), found: tg.target_type.clone() });
            }
            if tg.health_check_path.as_deref() != Some(gatehouse_convention::READY_PATH) {
                findings.push(Finding::HealthCheckPath {
                    expected: gatehouse_convention::READY_PATH.to_owned(),
                    found: tg.health_check_path.clone(),
                });
            }
        }
    }
    if let Some(proxy) = proxy {
        match &proxy.node_ports {
            None => findings.push(Finding::ProxyServiceMissing { service: proxy.name.clone() }),
            Some(ports) if !ports.contains(&expected.node_port) => findings.push(Finding::ProxyNodePort {
                service: proxy.name.clone(),
                expected: expected.node_port,
                found: ports.clone(),
            }),
            Some(_) => {}
        }
    }
    findings
}

#[cfg(test)]
mod tests {
    use super::*;

    fn expected() -> Expected {
        Expected {
            target_group_arn: "arn:tg/gh/1".into(),
            target_group_name: Some("gh".into()),
            node_port: 30080,
            target_type: Some(TargetType::Ip),
        }
    }

    fn live() -> TargetGroupFacts {
        TargetGroupFacts {
            arn: "arn:tg/gh/1".into(),
            name: "gh".into(),
            port: Some(30080),
            target_type: "ip".into(),
            protocol: Some("HTTP".into()),
            health_check_path: Some("/_gatehouse/ready".into()),
        }
    }

    fn proxy(ports: Option<Vec<u16>>) -> ProxyService {
        ProxyService { name: "gatehouse/proxy".into(), node_ports: ports }
    }

    #[test]
    fn matching_target_group_and_service_have_no_findings() {
        assert!(check(&expected(), Some(&live()), None, Some(&proxy(Some(vec![30080, 30443])))).is_empty());
        assert!(check(&expected(), Some(&live()), None, None).is_empty());
    }

    #[test]
    fn missing_target_group_is_fatal() {
        let f = check(&expected(), None, None, None);
        assert_eq!(f, [Finding::TargetGroupMissing { arn: "arn:tg/gh/1".into() }]);
        assert!(f[0].is_fatal());
    }

    #[test]
    fn replaced_target_group_names_both_arns() {
        let other = TargetGroupFacts { arn: "arn:tg/gh/2".into(), ..live() };
        let f = check(&expected(), None, Some(&other), None);
        assert!(matches!(&f[0], Finding::TargetGroupReplaced { found_arn, .. } if found_arn == "arn:tg/gh/2"));
        assert!(f[0].is_fatal());
        assert!(f[0].to_string().contains("replaced"));
    }

    #[test]
    fn each_field_is_reported_on_its_own() {
        let port = check(&expected(), Some(&TargetGroupFacts { port: Some(80), ..live() }), None, None);
        assert_eq!(port, [Finding::Port { expected: 30080, found: Some(80) }]);
        assert_eq!(port[0].to_string(), "target group port: expected 30080 (the NodePort), found 80");

        let tt = check(&expected(), Some(&TargetGroupFacts { target_type: "instance".into(), ..live() }), None, None);
        assert_eq!(tt, [Finding::TargetType { expected: "ip".into(), found: "instance".into() }]);

        let hc =
            check(&expected(), Some(&TargetGroupFacts { health_check_path: Some("/".into()), ..live() }), None, None);
        assert_eq!(hc, [Finding::HealthCheckPath { expected: "/_gatehouse/ready".into(), found: Some("/".into()) }]);

        let svc = check(&expected(), Some(&live()), None, Some(&proxy(Some(vec![31000]))));
        assert_eq!(svc[0].to_string(), "proxy Service gatehouse/proxy: expected nodePort 30080, found nodePort 31000");

        let gone = check(&expected(), Some(&live()), None, Some(&proxy(None)));
        assert_eq!(gone, [Finding::ProxyServiceMissing { service: "gatehouse/proxy".into() }]);
        assert!(!gone[0].is_fatal());
    }

    #[test]
    fn several_fields_are_all_reported() {
        let tg = TargetGroupFacts { port: None, target_type: "instance".into(), health_check_path: None, ..live() };
        assert_eq!(check(&expected(), Some(&tg), None, Some(&proxy(Some(vec![])))).len(), 4);
    }

    #[test]
    fn without_a_handshake_the_target_type_is_not_checked() {
        let e = Expected { target_type: None, target_group_name: None, ..expected() };
        let tg = TargetGroupFacts { target_type: "instance".into(), ..live() };
        assert!(check(&e, Some(&tg), None, None).is_empty());
    }
}
