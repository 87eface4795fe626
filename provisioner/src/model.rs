//! The domain types every other module shares: targets, the target group's facts, what was
//! observed in it, and the proxy as Kubernetes reports it. Pure: no I/O. The AWS adapter
//! ([`crate::aws`]) and the Kubernetes adapter ([`crate::cluster`]) translate into these; the
//! pure core ([`crate::nodes`], [`crate::proxy`], [`crate::diff`], [`crate::drift`],
//! [`crate::plan`]) computes on them.

use std::collections::BTreeSet;
use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use serde::Serialize;

/// How the target group addresses its targets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TargetType {
    /// Targets are EC2 instance ids (`i-...`), taken from the node's `providerID`.
    Instance,
    /// Targets are IP addresses, taken from the node's InternalIP.
    Ip,
}

impl TargetType {
    /// Parses the target type as AWS and the handshake spell it; `None` for types the
    /// provisioner cannot register nodes as (`lambda`, `alb`).
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "instance" => Some(Self::Instance),
            "ip" => Some(Self::Ip),
            _ => None,
        }
    }

    /// The spelling AWS and the handshake use.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Instance => "instance",
            Self::Ip => "ip",
        }
    }
}

impl fmt::Display for TargetType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The address family of an `ip` target group (its `IpAddressType`): every target in it must be
/// of this family, or AWS refuses the whole RegisterTargets call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum IpFamily {
    V4,
    V6,
}

impl IpFamily {
    /// From the target group's `IpAddressType`; AWS defaults to `ipv4` when it says nothing.
    pub fn from_ip_address_type(value: Option<&str>) -> Self {
        match value {
            Some("ipv6") => Self::V6,
            _ => Self::V4,
        }
    }

    /// Whether `ip` is of this family.
    pub fn contains(self, ip: &IpAddr) -> bool {
        matches!((self, ip), (Self::V4, IpAddr::V4(_)) | (Self::V6, IpAddr::V6(_)))
    }

    /// As AWS spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::V4 => "ipv4",
            Self::V6 => "ipv6",
        }
    }
}

impl fmt::Display for IpFamily {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A registration: target id (instance id or IP) and port.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct Target {
    pub id: String,
    pub port: u16,
}

impl fmt::Display for Target {
    /// `10.0.0.1:30080`, `i-0abc:30080`, and `[fd00::e]:30080` for IPv6 (as in a URL).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.id.contains(':') {
            write!(f, "[{}]:{}", self.id, self.port)
        } else {
            write!(f, "{}:{}", self.id, self.port)
        }
    }
}

/// What every desired target shares: the group's type and family, and the port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct TargetSpec {
    pub target_type: TargetType,
    pub family: IpFamily,
    pub port: u16,
}

/// A target group ARN, checked locally so a typo never costs an AWS call:
/// `arn:<partition>:elasticloadbalancing:<region>:<account>:targetgroup/<name>/<id>`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct TargetGroupArn(String);

impl TargetGroupArn {
    /// The ARN as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The region the ARN names.
    pub fn region(&self) -> &str {
        self.0.split(':').nth(3).unwrap_or_default()
    }
}

impl FromStr for TargetGroupArn {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let parts: Vec<&str> = s.splitn(6, ':').collect();
        let [arn, partition, service, region, account, resource] = parts[..] else {
            return Err(format!(
                "{s:?} is not an ARN (arn:aws:elasticloadbalancing:REGION:ACCOUNT:targetgroup/NAME/ID)"
            ));
        };
        if arn != "arn" || !partition.starts_with("aws") {
            return Err(format!(
                "{s:?} is not an ARN (arn:aws:elasticloadbalancing:REGION:ACCOUNT:targetgroup/NAME/ID)"
            ));
        }
        if service != "elasticloadbalancing" {
            return Err(format!("{s:?} is an ARN of {service}, not of an Elastic Load Balancing target group"));
        }
        let kind = resource.split('/').next().unwrap_or_default();
        if kind != "targetgroup" {
            return Err(format!("{s:?} names a {kind}, not a target group (…:targetgroup/NAME/ID)"));
        }
        let segments: Vec<&str> = resource.split('/').collect();
        let well_formed = segments.len() == 3
            && segments[1..].iter().all(|p| !p.is_empty())
            && !region.is_empty()
            && account.len() == 12
            && account.chars().all(|c| c.is_ascii_digit());
        if !well_formed {
            return Err(format!(
                "{s:?} is not a target group ARN (arn:aws:elasticloadbalancing:REGION:ACCOUNT:targetgroup/NAME/ID)"
            ));
        }
        Ok(Self(s.to_owned()))
    }
}

impl fmt::Display for TargetGroupArn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
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
    pub family: IpFamily,
    pub protocol: Option<String>,
    pub health_check_path: Option<String>,
    pub vpc_id: Option<String>,
}

/// The CIDR blocks of the target group's VPC: an `ip` target outside them must be registered
/// with `AvailabilityZone=all`, and one inside them must not be.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct VpcCidrs(Vec<Cidr>);

impl VpcCidrs {
    /// From CIDR texts (`10.0.0.0/16`, `2600:1f18::/56`); unparsable entries are skipped.
    pub fn parse<'a>(blocks: impl IntoIterator<Item = &'a str>) -> Self {
        Self(blocks.into_iter().filter_map(|b| b.parse().ok()).collect())
    }

    /// Whether `ip` lies in one of the blocks.
    pub fn contains(&self, ip: &IpAddr) -> bool {
        self.0.iter().any(|c| c.contains(ip))
    }

    /// Whether no block is known.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// One CIDR block.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Whether `ip` is inside the block.
    pub fn contains(&self, ip: &IpAddr) -> bool {
        match (self.network, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => prefix_match(&net.octets(), &ip.octets(), self.prefix),
            (IpAddr::V6(net), IpAddr::V6(ip)) => prefix_match(&net.octets(), &ip.octets(), self.prefix),
            _ => false,
        }
    }
}

fn prefix_match(net: &[u8], ip: &[u8], prefix: u8) -> bool {
    let full = usize::from(prefix / 8);
    let rest = prefix % 8;
    if net[..full] != ip[..full] {
        return false;
    }
    rest == 0 || {
        let mask = 0xffu8 << (8 - rest);
        (net[full] & mask) == (ip[full] & mask)
    }
}

impl FromStr for Cidr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (addr, prefix) = s.split_once('/').ok_or_else(|| format!("{s:?} is not a CIDR block"))?;
        let network: IpAddr = addr.parse().map_err(|_| format!("{s:?} is not a CIDR block"))?;
        let prefix: u8 = prefix.parse().map_err(|_| format!("{s:?} is not a CIDR block"))?;
        let max = if network.is_ipv4() { 32 } else { 128 };
        if prefix > max {
            return Err(format!("{s:?} is not a CIDR block"));
        }
        Ok(Self { network, prefix })
    }
}

/// The AvailabilityZone a registration must carry: `all` for an `ip` target outside the VPC
/// (AWS refuses it without), nothing otherwise (AWS refuses `all` for an address inside the VPC).
/// Without known VPC blocks nothing is added, which is what AWS expects of targets in the VPC.
pub fn availability_zone(target: &Target, spec: TargetSpec, vpc: &VpcCidrs) -> Option<&'static str> {
    if spec.target_type != TargetType::Ip || vpc.is_empty() {
        return None;
    }
    let ip: IpAddr = target.id.parse().ok()?;
    (!vpc.contains(&ip)).then_some("all")
}

/// A target as DescribeTargetHealth reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ObservedTarget {
    pub target: Target,
    /// The ALB's state: initial, healthy, unhealthy, unhealthy.draining, unused, draining,
    /// unavailable.
    pub state: String,
    /// The ALB's reason code, e.g. `Target.DeregistrationInProgress`.
    pub reason: Option<String>,
}

impl ObservedTarget {
    /// A draining target is deregistered already; it only lingers for the deregistration delay.
    /// `unhealthy.draining` is draining too (unhealthy while it drains).
    pub fn is_draining(&self) -> bool {
        self.state == "draining" || self.state == "unhealthy.draining"
    }

    /// Whether the ALB sends it traffic and its health checks pass.
    pub fn is_healthy(&self) -> bool {
        self.state == "healthy"
    }
}

/// The proxy Service as Kubernetes reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProxyService {
    /// `namespace/name`.
    pub name: String,
    /// The Service's ports with a nodePort; `None` when the Service does not exist.
    pub node_ports: Option<Vec<ServiceNodePort>>,
}

/// One port of the proxy Service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ServiceNodePort {
    pub name: Option<String>,
    pub node_port: u16,
}

impl ProxyService {
    /// The nodePorts, in the Service's order.
    pub fn ports(&self) -> Vec<u16> {
        self.node_ports.iter().flatten().map(|p| p.node_port).collect()
    }

    /// The nodePort traffic goes to: the port named `http`, else the only one.
    pub fn traffic_node_port(&self) -> Option<u16> {
        let ports = self.node_ports.as_ref()?;
        ports
            .iter()
            .find(|p| p.name.as_deref() == Some("http"))
            .or_else(|| if ports.len() == 1 { ports.first() } else { None })
            .map(|p| p.node_port)
    }
}

/// The condition type of the readiness gate the provisioner keeps on every proxy pod.
pub const TARGET_HEALTHY_CONDITION: &str = "gatehouse.dev/target-healthy";

/// One endpoint of the proxy Service, from its EndpointSlices.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct ProxyEndpoint {
    /// `nodeName`.
    pub node: Option<String>,
    /// `targetRef` when it is a Pod: its name (the namespace is the Service's).
    pub pod: Option<String>,
    pub ready: bool,
    pub serving: bool,
    pub terminating: bool,
}

/// A proxy pod, as far as the provisioner cares.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProxyPod {
    pub namespace: String,
    pub name: String,
    pub node: Option<String>,
    /// `ContainersReady=True`: the proxy's own readiness, before readiness gates.
    pub containers_ready: bool,
    /// The pod is being deleted.
    pub terminating: bool,
    /// Whether the pod declares the [`TARGET_HEALTHY_CONDITION`] readiness gate.
    pub has_gate: bool,
    /// The gate condition as it stands, if set.
    pub gate: Option<GateCondition>,
}

/// The value of the readiness-gate condition on a pod.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GateCondition {
    pub status: bool,
    pub reason: String,
}

/// Node names, sorted.
pub type NodeNames = BTreeSet<String>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_targets_print_in_brackets() {
        assert_eq!(Target { id: "fd00::e".into(), port: 30080 }.to_string(), "[fd00::e]:30080");
        assert_eq!(Target { id: "10.0.0.1".into(), port: 30080 }.to_string(), "10.0.0.1:30080");
        assert_eq!(Target { id: "i-0abc".into(), port: 1 }.to_string(), "i-0abc:1");
    }

    #[test]
    fn target_group_arns_are_checked_locally() {
        let ok = "arn:aws:elasticloadbalancing:us-east-1:123456789012:targetgroup/gh/0123456789abcdef";
        assert_eq!(ok.parse::<TargetGroupArn>().map(|a| a.region().to_owned()), Ok("us-east-1".into()));
        assert!(
            "arn:aws-us-gov:elasticloadbalancing:us-gov-west-1:123456789012:targetgroup/a/b"
                .parse::<TargetGroupArn>()
                .is_ok()
        );
        let refused = [
            ("hello", "is not an ARN"),
            ("arn:aws:elasticloadbalancing:us-east-1:123456789012:loadbalancer/app/gh/1", "names a loadbalancer"),
            ("arn:aws:ec2:us-east-1:123456789012:vpc/vpc-1", "is an ARN of ec2"),
            ("arn:aws:elasticloadbalancing:us-east-1:1234:targetgroup/gh/1", "is not a target group ARN"),
            ("arn:aws:elasticloadbalancing:us-east-1:123456789012:targetgroup/gh", "is not a target group ARN"),
        ];
        for (text, why) in refused {
            let err = text.parse::<TargetGroupArn>().expect_err(text);
            assert!(err.contains(why), "{text}: {err}");
        }
    }

    #[test]
    fn cidrs_contain_their_addresses_only() {
        let vpc = VpcCidrs::parse(["10.42.0.0/16", "100.64.0.0/10", "2600:1f18:aa00::/56", "garbage"]);
        let ip = |s: &str| s.parse::<IpAddr>().expect("ip");
        assert!(vpc.contains(&ip("10.42.255.1")));
        assert!(!vpc.contains(&ip("10.43.0.1")));
        assert!(vpc.contains(&ip("100.127.0.1")) && !vpc.contains(&ip("100.128.0.1")));
        assert!(vpc.contains(&ip("2600:1f18:aa00:ff::1")) && !vpc.contains(&ip("2600:1f18:aa01::1")));
        assert!(!VpcCidrs::default().contains(&ip("10.0.0.1")));
        assert!(VpcCidrs::parse(["0.0.0.0/0"]).contains(&ip("1.2.3.4")));
    }

    #[test]
    fn only_ip_targets_outside_the_vpc_get_availability_zone_all() {
        let vpc = VpcCidrs::parse(["10.42.0.0/16"]);
        let ip = TargetSpec { target_type: TargetType::Ip, family: IpFamily::V4, port: 30080 };
        let t = |id: &str| Target { id: id.into(), port: 30080 };
        assert_eq!(availability_zone(&t("10.42.0.5"), ip, &vpc), None);
        assert_eq!(availability_zone(&t("192.168.1.5"), ip, &vpc), Some("all"));
        assert_eq!(
            availability_zone(&t("192.168.1.5"), ip, &VpcCidrs::default()),
            None,
            "unknown VPC: as AWS defaults"
        );
        let instance = TargetSpec { target_type: TargetType::Instance, ..ip };
        assert_eq!(availability_zone(&t("i-0abc"), instance, &vpc), None);
    }

    #[test]
    fn unhealthy_draining_is_draining() {
        let o = |state: &str| ObservedTarget {
            target: Target { id: "x".into(), port: 1 },
            state: state.into(),
            reason: None,
        };
        assert!(o("draining").is_draining() && o("unhealthy.draining").is_draining());
        assert!(!o("unhealthy").is_draining() && !o("healthy").is_draining());
    }

    #[test]
    fn the_traffic_node_port_is_the_http_port_or_the_only_one() {
        let svc = |ports: Vec<(Option<&str>, u16)>| ProxyService {
            name: "gatehouse/proxy".into(),
            node_ports: Some(
                ports.into_iter().map(|(n, p)| ServiceNodePort { name: n.map(Into::into), node_port: p }).collect(),
            ),
        };
        assert_eq!(svc(vec![(Some("admin"), 31000), (Some("http"), 30080)]).traffic_node_port(), Some(30080));
        assert_eq!(svc(vec![(None, 30080)]).traffic_node_port(), Some(30080));
        assert_eq!(svc(vec![(Some("a"), 1), (Some("b"), 2)]).traffic_node_port(), None);
        assert_eq!(ProxyService { name: "x".into(), node_ports: None }.traffic_node_port(), None);
    }
}
