//! One target group opened for planning and applying: desired (the cluster) -> observed
//! (DescribeTargetHealth) -> plan -> writes.
//!
//! API budget: [`Session::open`] makes one DescribeTargetGroups call (and for an `ip` group one
//! DescribeVpcs), cached for the session; each [`Session::observe`] is one DescribeTargetHealth;
//! [`Session::apply`] costs one write per direction per 200 targets. A failed call does not end
//! the session: only a target group that is gone does.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;
use serde_json::{Value, json};

use crate::aws::{self, Aws, AwsError};
use crate::cluster::KubeError;
use crate::diff::{self, Policy};
use crate::drift::{self, Expected, Finding};
use crate::handshake::{self, HandshakeError, TagError};
use crate::inventory::InventoryError;
use crate::lease::{Leadership, NotLeader};
use crate::model::{ObservedTarget, Target, TargetGroupFacts, TargetType, VpcCidrs};
use crate::nodes::{self, Selector};
use crate::plan::{self, ClusterView, NodePortSource, Plan};

/// Every way a run can fail, each one sentence.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Handshake(#[from] HandshakeError),
    #[error(transparent)]
    Inventory(#[from] InventoryError),
    #[error(transparent)]
    Kube(#[from] KubeError),
    #[error(transparent)]
    Aws(#[from] AwsError),
    #[error(transparent)]
    NotLeader(#[from] NotLeader),
    #[error(transparent)]
    Tags(#[from] TagError),
    #[error("{0}")]
    TargetGroup(Finding),
    #[error(
        "target group {arn} has target type {found}; the provisioner registers nodes only as instance or ip targets"
    )]
    UnsupportedTargetType { arn: String, found: String },
    /// A plan that cannot reach the desired state: a safety refusal, a NodePort mismatch, targets
    /// over the quota. What could be written was.
    #[error("{0}")]
    Incomplete(String),
    /// Arguments that are each valid but do not fit together.
    #[error("{0}")]
    Invalid(String),
    #[error("cannot serve /healthz and /metrics on {addr}: {detail}")]
    Listen { addr: std::net::SocketAddr, detail: String },
    #[error("{count} deregistered target(s) were still draining after --drain-timeout {}: {targets}", humantime::format_duration(*timeout))]
    DrainTimeout { count: usize, timeout: Duration, targets: String },
}

impl Error {
    /// Whether the session must be opened anew (the target group itself is gone).
    pub fn needs_new_session(&self) -> bool {
        matches!(self, Self::Aws(e) if e.is_target_group_gone()) || matches!(self, Self::TargetGroup(_))
    }
}

/// Where the expectation comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TargetSource {
    /// A handshake file, or `--target-group-arn` with `--node-port`.
    Expected(Expected),
    /// `--cluster NAME`: the target group the module tagged for this cluster, looked up when a
    /// session opens anew (at the start, and after the group it had is gone).
    Cluster(String),
}

/// What stays the same for every run of a session.
#[derive(Debug, Clone)]
pub struct Settings {
    pub target: TargetSource,
    pub selector: Selector,
    pub policy: Policy,
    /// From the handshake; read from the target group when needed and unknown.
    pub deregistration_delay: Option<Duration>,
    /// Which side wins a NodePort mismatch; `None`: refuse to write.
    pub node_port_from: Option<NodePortSource>,
}

/// A target group opened for planning and applying.
#[derive(Debug, Clone)]
pub struct Session {
    aws: Aws,
    settings: Settings,
    /// What the group is checked against: the handshake's, or what its tags say.
    expected: Expected,
    target_group: TargetGroupFacts,
    target_type: TargetType,
    vpc: VpcCidrs,
    /// Target-group drift found at open (the proxy Service's is per plan).
    drift: Vec<Finding>,
}

impl Session {
    /// With `--cluster`, first finds the target group by its tags (every group's, read with
    /// DescribeTargetGroups and DescribeTags). Then reads the target group once
    /// (DescribeTargetGroups), and for an `ip` group its VPC's CIDR blocks (DescribeVpcs), and
    /// checks the group against the expectation. A missing or replaced target group is an
    /// error: there is nothing to register into.
    pub async fn open(aws: Aws, settings: Settings) -> Result<Self, Error> {
        let expected = match &settings.target {
            TargetSource::Expected(expected) => expected.clone(),
            TargetSource::Cluster(cluster) => {
                handshake::from_tags(cluster, &aws.tagged_target_groups().await?, aws.endpoint())?
            }
        };
        Self::open_expecting(aws, settings, expected).await
    }

    /// Opens the same target group again (a resync): the expectation found when this session
    /// opened stands, so `--cluster` does not look the group up by its tags again.
    pub async fn reopen(&self) -> Result<Self, Error> {
        Self::open_expecting(self.aws.clone(), self.settings.clone(), self.expected.clone()).await
    }

    async fn open_expecting(aws: Aws, settings: Settings, expected: Expected) -> Result<Self, Error> {
        let arn = expected.target_group_arn.as_str();
        let Some(target_group) = aws.target_group(arn).await? else {
            let same_name = match &expected.target_group_name {
                Some(name) => aws.target_group_named(name).await?,
                None => None,
            };
            return Err(Error::TargetGroup(drift::missing(&expected, same_name.as_ref())));
        };
        // Targets are mapped by the group's own type: with a type drift, registering the
        // handshake's type would only be refused by AWS.
        let target_type = TargetType::parse(&target_group.target_type).ok_or_else(|| Error::UnsupportedTargetType {
            arn: arn.to_owned(),
            found: target_group.target_type.clone(),
        })?;
        let vpc = match (&target_group.vpc_id, target_type) {
            (Some(vpc_id), TargetType::Ip) => aws.vpc_cidrs(vpc_id).await?,
            _ => VpcCidrs::default(),
        };
        let drift = drift::check_target_group(&expected, &target_group);
        Ok(Self { aws, settings, expected, target_group, target_type, vpc, drift })
    }

    /// The group's targets as the ALB sees them: one DescribeTargetHealth.
    pub async fn observe(&self) -> Result<Vec<ObservedTarget>, Error> {
        Ok(self.aws.target_health(&self.target_group.arn, self.expected.node_port, &[]).await?)
    }

    /// Plans one run against `observed`. Pure.
    pub fn plan(&self, cluster: &ClusterView, observed: &[ObservedTarget]) -> Plan {
        plan::plan(plan::Inputs {
            expected: &self.expected,
            target_group: &self.target_group,
            target_type: self.target_type,
            vpc: &self.vpc,
            target_group_drift: &self.drift,
            policy: &self.settings.policy,
            node_port_from: self.settings.node_port_from,
            cluster,
            observed,
        })
    }

    /// Applies a plan's writes: deregistrations, then registrations, in batches, each only while
    /// `leadership` holds. A blocked plan writes nothing. What the plan holds back (a refusal,
    /// later waves, targets over the quota) is reported in [`Applied`]; see
    /// [`Applied::into_result`].
    pub async fn apply(&self, plan: &Plan, leadership: &Leadership) -> Result<Applied, Error> {
        let mut applied = Applied::new(plan);
        if plan.blocked.is_some() {
            return Ok(applied);
        }
        let arn = &self.target_group.arn;
        let deregister: Vec<Target> = plan.diff.deregister.iter().map(|c| c.target.clone()).collect();
        let register: Vec<(Target, Option<&str>)> = plan
            .diff
            .register
            .iter()
            .map(|c| (c.target.clone(), plan.availability_zones.get(&c.target).copied()))
            .collect();
        // Deregister first: a node that is going away starts draining as early as possible, and
        // if registering fails, traffic has still stopped going to nodes that must not get it.
        for chunk in deregister.chunks(aws::BATCH) {
            leadership.check()?;
            self.aws.deregister(arn, chunk).await?;
            applied.deregistered.extend_from_slice(chunk);
        }
        for chunk in register.chunks(aws::BATCH) {
            leadership.check()?;
            self.aws.register(arn, chunk).await?;
            applied.registered.extend(chunk.iter().map(|(t, _)| t.clone()));
        }
        Ok(applied)
    }

    /// Polls the deregistered targets until the ALB reports them `unused` (or no longer lists
    /// them), or the deregistration delay has passed; bounded by `timeout`.
    pub async fn wait_drained(&self, targets: &[Target], timeout: Duration) -> Result<Drained, Error> {
        let started = tokio::time::Instant::now();
        let delay = match self.settings.deregistration_delay {
            Some(d) => Some(d),
            None => self.aws.deregistration_delay(&self.target_group.arn).await?.map(Duration::from_secs),
        };
        let port = self.expected.node_port;
        loop {
            let observed = self.aws.target_health(&self.target_group.arn, port, targets).await?;
            let still: Vec<String> = observed
                .iter()
                .filter(|o| o.is_draining() && targets.contains(&o.target))
                .map(|o| o.target.to_string())
                .collect();
            let waited = started.elapsed();
            if still.is_empty() {
                return Ok(Drained { waited, by: "unused" });
            }
            if delay.is_some_and(|d| waited >= d) {
                return Ok(Drained { waited, by: "deregistration delay passed" });
            }
            if waited >= timeout {
                return Err(Error::DrainTimeout { count: still.len(), timeout, targets: still.join(", ") });
            }
            tokio::time::sleep(Duration::from_secs(1).min(timeout.saturating_sub(waited))).await;
        }
    }

    /// Target health next to each node, with the reason each node is not a target. Pure.
    pub fn status(&self, cluster: &ClusterView, observed: &[ObservedTarget]) -> Status {
        let plan = self.plan(cluster, observed);
        let spec = plan.target_group.spec;
        let ready = cluster.proxy.as_ref().map(crate::proxy::ProxyView::ready_nodes);
        let view = diff::Cluster { nodes: &cluster.nodes, ready_proxy_nodes: ready.as_ref() };
        let index = nodes::by_target_id(&cluster.nodes, spec.target_type, spec.family);
        let why_not = |node: &nodes::NodeView| -> Option<String> {
            match (view.eligibility(node), node.target_id(spec.target_type, spec.family)) {
                (Err(reasons), _) => Some(reasons.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")),
                (Ok(()), Err(unmappable)) => Some(unmappable.to_string()),
                (Ok(()), Ok(_)) => None,
            }
        };
        let alb_reason = |o: &ObservedTarget| o.reason.as_ref().map(|r| format!("ALB: {r}"));
        let mut rows: Vec<StatusRow> = observed
            .iter()
            .map(|o| {
                let node = index.get(o.target.id.as_str()).filter(|_| o.target.port == spec.port);
                let reason: Vec<String> =
                    [node.and_then(|n| why_not(n)), alb_reason(o)].into_iter().flatten().collect();
                StatusRow {
                    node: node.map(|n| n.name.clone()),
                    target: Some(o.target.to_string()),
                    state: o.state.clone(),
                    reason: (!reason.is_empty()).then(|| reason.join("; ")),
                    eligible: node.map(|n| why_not(n).is_none()),
                }
            })
            .collect();
        let registered: BTreeMap<&str, ()> =
            observed.iter().filter(|o| o.target.port == spec.port).map(|o| (o.target.id.as_str(), ())).collect();
        for node in &cluster.nodes {
            let id = node.target_id(spec.target_type, spec.family).ok();
            if id.as_deref().is_none_or(|id| !registered.contains_key(id)) {
                let over_quota = plan.diff.over_quota.iter().any(|c| c.node.as_deref() == Some(&node.name));
                let reason = why_not(node).or_else(|| over_quota.then(|| plan.problem().unwrap_or_default()));
                rows.push(StatusRow {
                    node: Some(node.name.clone()),
                    target: id.map(|id| Target { id, port: spec.port }.to_string()),
                    state: "not registered".into(),
                    eligible: Some(why_not(node).is_none()),
                    reason,
                });
            }
        }
        rows.sort_by(|a, b| (&a.node, &a.target).cmp(&(&b.node, &b.target)));
        Status { target_group: self.target_group.clone(), rows }
    }
}

/// What [`Session::apply`] did, and what the plan held back.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Applied {
    pub registered: Vec<Target>,
    pub deregistered: Vec<Target>,
    pub drained: Option<Drained>,
    /// Deregistrations left for later waves.
    pub later: usize,
    /// Why the plan cannot reach the desired state, if it cannot.
    pub problem: Option<String>,
}

impl Applied {
    fn new(plan: &Plan) -> Self {
        Self {
            registered: Vec::new(),
            deregistered: Vec::new(),
            drained: None,
            later: plan.diff.later.len(),
            problem: plan.problem(),
        }
    }

    /// Whether anything was written.
    pub fn has_writes(&self) -> bool {
        !self.registered.is_empty() || !self.deregistered.is_empty()
    }

    /// One line for humans.
    pub fn summary(&self) -> String {
        let mut s =
            format!("Apply complete: {} registered, {} deregistered.", self.registered.len(), self.deregistered.len());
        if let Some(d) = &self.drained {
            s.push_str(&format!(" Drained in {:.1}s ({}).", d.waited.as_secs_f64(), d.by));
        }
        if self.later > 0 {
            s.push_str(&format!(
                " {} more to deregister in later waves, once these have drained: run sync again, or pass --wait-drain.",
                self.later
            ));
        }
        if self.problem.is_some() {
            s.push_str(" Some changes were held back.");
        }
        s
    }

    /// A held-back change as an error (the run did not reach the desired state), else `self`.
    pub fn into_result(self) -> Result<Self, Error> {
        match self.problem {
            Some(problem) => Err(Error::Incomplete(problem)),
            None => Ok(self),
        }
    }
}

/// How the drain wait ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Drained {
    #[serde(with = "secs")]
    pub waited: Duration,
    pub by: &'static str,
}

mod secs {
    pub fn serialize<S: serde::Serializer>(d: &std::time::Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(d.as_secs_f64())
    }
}

/// Target health as the ALB sees it, next to each node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Status {
    pub target_group: TargetGroupFacts,
    pub rows: Vec<StatusRow>,
}

/// One target or one unregistered node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StatusRow {
    pub node: Option<String>,
    pub target: Option<String>,
    pub state: String,
    /// Why the node is not a target, and the ALB's reason code for the target's state.
    pub reason: Option<String>,
    pub eligible: Option<bool>,
}

impl Status {
    /// A table for humans.
    pub fn render_text(&self) -> String {
        let mut out = format!("Target group {} ({})\n\n", self.target_group.name, self.target_group.arn);
        out.push_str(&format!("{:<24} {:<24} {:<16} {:<10} {}\n", "NODE", "TARGET", "STATE", "ELIGIBLE", "REASON"));
        for r in &self.rows {
            out.push_str(&format!(
                "{:<24} {:<24} {:<16} {:<10} {}\n",
                r.node.as_deref().unwrap_or("-"),
                r.target.as_deref().unwrap_or("-"),
                r.state,
                r.eligible.map_or("-", |e| if e { "yes" } else { "no" }),
                r.reason.as_deref().unwrap_or("")
            ));
        }
        out
    }

    /// The same as JSON.
    pub fn to_json(&self) -> Value {
        json!(self)
    }
}
