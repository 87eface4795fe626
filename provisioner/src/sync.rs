//! One run: desired (nodes) -> observed (DescribeTargetHealth) -> diff -> actions.
//!
//! API budget: [`Session::open`] makes one DescribeTargetGroups call (cached for the session);
//! each [`Session::plan`] then costs exactly one DescribeTargetHealth; [`Session::apply`] costs one
//! write per direction per 200 targets.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::Node;
use serde::Serialize;
use serde_json::{Value, json};

use crate::aws::{AwsError, Elb};
use crate::diff::{self, Policy, Target};
use crate::drift::{self, Expected, Finding, ProxyService, TargetGroupFacts};
use crate::handshake::{HandshakeError, TargetType};
use crate::inventory::InventoryError;
use crate::kube::KubeError;
use crate::nodes::{self, Selector};
use crate::plan::{Plan, TargetGroupRef};

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
    #[error("{0}")]
    TargetGroup(Finding),
    #[error(
        "target group {arn} has target type {found}; the provisioner registers nodes only as instance or ip targets"
    )]
    UnsupportedTargetType { arn: String, found: String },
    #[error("{0}")]
    Refused(diff::Refusal),
    #[error("cannot serve /healthz and /metrics on {addr}: {detail}")]
    Listen { addr: std::net::SocketAddr, detail: String },
    #[error("{count} deregistered target(s) were still draining after --drain-timeout {}: {targets}", humantime::format_duration(*timeout))]
    DrainTimeout { count: usize, timeout: Duration, targets: String },
}

/// What stays the same for every run of a session.
#[derive(Debug, Clone)]
pub struct Settings {
    pub expected: Expected,
    pub selector: Selector,
    pub policy: Policy,
    /// From the handshake; read from the target group when needed and unknown.
    pub deregistration_delay: Option<Duration>,
}

/// A target group opened for planning and applying.
#[derive(Debug, Clone)]
pub struct Session {
    elb: Elb,
    settings: Settings,
    target_group: TargetGroupFacts,
    target_type: TargetType,
    /// Target-group drift found at open (proxy drift is per plan).
    drift: Vec<Finding>,
}

impl Session {
    /// Reads the target group once (DescribeTargetGroups) and checks it against the expectation.
    /// A missing or replaced target group is an error: there is nothing to register into.
    pub async fn open(elb: Elb, settings: Settings) -> Result<Self, Error> {
        let arn = &settings.expected.target_group_arn;
        let live = elb.target_group(arn).await?;
        let Some(target_group) = live else {
            let same_name = match &settings.expected.target_group_name {
                Some(name) => elb.target_group_named(name).await?,
                None => None,
            };
            let findings = drift::check(&settings.expected, None, same_name.as_ref(), None);
            let finding = findings.into_iter().next().unwrap_or(Finding::TargetGroupMissing { arn: arn.clone() });
            return Err(Error::TargetGroup(finding));
        };
        // Targets are mapped by the group's own type: with a type drift, registering the
        // handshake's type would only be refused by AWS.
        let target_type = TargetType::parse(&target_group.target_type).ok_or_else(|| Error::UnsupportedTargetType {
            arn: arn.clone(),
            found: target_group.target_type.clone(),
        })?;
        let drift = drift::check(&settings.expected, Some(&target_group), None, None);
        Ok(Self { elb, settings, target_group, target_type, drift })
    }

    /// The ELBv2 adapter (and its call counters).
    pub fn elb(&self) -> &Elb {
        &self.elb
    }

    /// The live target group as read at open.
    pub fn target_group(&self) -> &TargetGroupFacts {
        &self.target_group
    }

    /// The settings this session was opened with.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// Plans one run: one DescribeTargetHealth.
    pub async fn plan(&self, nodes: &[Node], proxy: Option<&ProxyService>) -> Result<Plan, Error> {
        let port = self.settings.expected.node_port;
        let observed = self.elb.target_health(&self.target_group.arn, port).await?;
        let entries = nodes::classify(nodes, &self.settings.selector, self.target_type);
        let d = diff::diff(&entries, &observed, port, &self.settings.policy);
        let mut drift = self.drift.clone();
        if let Some(proxy) = proxy {
            drift.extend(
                drift::check(&self.settings.expected, Some(&self.target_group), None, Some(proxy))
                    .into_iter()
                    .filter(|f| matches!(f, Finding::ProxyNodePort { .. } | Finding::ProxyServiceMissing { .. })),
            );
        }
        let tg = TargetGroupRef {
            arn: self.target_group.arn.clone(),
            name: self.target_group.name.clone(),
            target_type: self.target_type.to_string(),
            node_port: port,
        };
        Ok(Plan::new(tg, &entries, d, drift))
    }

    /// Applies a plan: deregistrations the policy allows, then registrations. A refusal still
    /// lets the registrations through (adding capacity is always safe) and is reported in
    /// [`Applied::refused`]; see [`Applied::into_result`]. With `wait_drain`, waits until the deregistered targets
    /// are `unused` or the deregistration delay has passed, at most `wait_drain`.
    pub async fn apply(&self, plan: &Plan, wait_drain: Option<Duration>) -> Result<Applied, Error> {
        let arn = &self.target_group.arn;
        let deregister: Vec<Target> = plan.diff.allowed_deregistrations().iter().map(|c| c.target.clone()).collect();
        let register: Vec<Target> = plan.diff.register.iter().map(|c| c.target.clone()).collect();
        // Deregister first: a node that is going away starts draining as early as possible, and
        // if registering fails, traffic has still stopped going to nodes that must not get it.
        if !deregister.is_empty() {
            self.elb.deregister(arn, &deregister).await?;
        }
        if !register.is_empty() {
            self.elb.register(arn, &register).await?;
        }
        let mut applied = Applied {
            registered: register,
            deregistered: deregister,
            drained: None,
            refused: plan.diff.refusal.clone(),
        };
        if let Some(timeout) = wait_drain
            && !applied.deregistered.is_empty()
        {
            applied.drained = Some(self.wait_drained(&applied.deregistered, timeout).await?);
        }
        Ok(applied)
    }

    /// Polls the deregistered targets until the ALB reports them `unused` (or no longer lists
    /// them), or the deregistration delay has passed; bounded by `timeout`.
    async fn wait_drained(&self, targets: &[Target], timeout: Duration) -> Result<Drained, Error> {
        let started = tokio::time::Instant::now();
        let delay = match self.settings.deregistration_delay {
            Some(d) => Some(d),
            None => self.elb.deregistration_delay(&self.target_group.arn).await?.map(Duration::from_secs),
        };
        let port = self.settings.expected.node_port;
        loop {
            let observed = self.elb.target_health_of(&self.target_group.arn, port, targets).await?;
            let still: Vec<String> = observed
                .iter()
                .filter(|o| o.state == "draining" && targets.contains(&o.target))
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

    /// Target health next to each node: one DescribeTargetHealth.
    pub async fn status(&self, nodes: &[Node]) -> Result<Status, Error> {
        let port = self.settings.expected.node_port;
        let observed = self.elb.target_health(&self.target_group.arn, port).await?;
        let entries = nodes::classify(nodes, &self.settings.selector, self.target_type);
        let by_id = nodes::by_target_id(&entries);
        let mut rows: Vec<StatusRow> = observed
            .iter()
            .map(|o| StatusRow {
                node: by_id.get(o.target.id.as_str()).map(|n| n.name.clone()),
                target: Some(o.target.to_string()),
                state: o.state.clone(),
                reason: o.reason.clone(),
                eligible: by_id.get(o.target.id.as_str()).map(|n| n.eligibility.is_ok()),
            })
            .collect();
        let registered: BTreeMap<&str, ()> = observed.iter().map(|o| (o.target.id.as_str(), ())).collect();
        for e in &entries {
            let id = e.target_id.as_deref().ok();
            if id.is_none_or(|id| !registered.contains_key(id)) {
                rows.push(StatusRow {
                    node: Some(e.name.clone()),
                    target: id.map(|id| Target { id: id.to_owned(), port }.to_string()),
                    state: "not registered".into(),
                    reason: e.target_id.as_ref().err().map(ToString::to_string),
                    eligible: Some(e.eligibility.is_ok()),
                });
            }
        }
        rows.sort_by(|a, b| (&a.node, &a.target).cmp(&(&b.node, &b.target)));
        Ok(Status { target_group: self.target_group.clone(), rows })
    }
}

/// What [`Session::apply`] did.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Applied {
    pub registered: Vec<Target>,
    pub deregistered: Vec<Target>,
    pub drained: Option<Drained>,
    /// Set when the policy held the deregistrations back.
    pub refused: Option<diff::Refusal>,
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

impl Applied {
    /// One line for humans.
    pub fn summary(&self) -> String {
        let mut s =
            format!("Apply complete: {} registered, {} deregistered.", self.registered.len(), self.deregistered.len());
        if let Some(d) = &self.drained {
            s.push_str(&format!(" Drained in {:.1}s ({}).", d.waited.as_secs_f64(), d.by));
        }
        if self.refused.is_some() {
            s.push_str(" Deregistrations were refused.");
        }
        s
    }

    /// A refusal as an error (the run did not reach the desired state), otherwise `self`.
    pub fn into_result(self) -> Result<Self, Error> {
        match self.refused {
            Some(r) => Err(Error::Refused(r)),
            None => Ok(self),
        }
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
