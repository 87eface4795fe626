//! Prometheus metrics: AWS API calls by operation and outcome, reconciles, registered targets,
//! readiness-gate updates.
//! The same counts are readable in-process ([`ApiCalls::snapshot`]) so tests can assert budgets.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ApiLabels {
    operation: String,
    outcome: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReconcileLabels {
    result: String,
    work: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: String,
}

/// Counts of AWS API operations (one per operation, retries included in it), by name and outcome.
#[derive(Debug, Clone, Default)]
pub struct ApiCalls {
    family: Family<ApiLabels, Counter>,
    counts: Arc<Mutex<BTreeMap<(String, String), u64>>>,
}

/// Read operations of the ELBv2 API, as the SDK names them.
const READS: &[&str] =
    &["DescribeTargetGroups", "DescribeTargetHealth", "DescribeTargetGroupAttributes", "DescribeTags", "DescribeVpcs"];

impl ApiCalls {
    /// Records one finished operation.
    pub fn record(&self, operation: &str, outcome: &str) {
        self.family.get_or_create(&ApiLabels { operation: operation.to_owned(), outcome: outcome.to_owned() }).inc();
        if let Ok(mut counts) = self.counts.lock() {
            *counts.entry((operation.to_owned(), outcome.to_owned())).or_default() += 1;
        }
    }

    /// All counts so far, keyed by (operation, outcome).
    pub fn snapshot(&self) -> CallSnapshot {
        CallSnapshot(self.counts.lock().map(|c| c.clone()).unwrap_or_default())
    }
}

/// A point-in-time copy of [`ApiCalls`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CallSnapshot(pub BTreeMap<(String, String), u64>);

impl CallSnapshot {
    /// Calls of one operation, any outcome.
    pub fn of(&self, operation: &str) -> u64 {
        self.0.iter().filter(|((op, _), _)| op == operation).map(|(_, n)| n).sum()
    }

    /// All calls.
    pub fn total(&self) -> u64 {
        self.0.values().sum()
    }

    /// Read calls (Describe*).
    pub fn reads(&self) -> u64 {
        self.0.iter().filter(|((op, _), _)| READS.contains(&op.as_str())).map(|(_, n)| n).sum()
    }

    /// Everything else: RegisterTargets, DeregisterTargets.
    pub fn writes(&self) -> u64 {
        self.0.iter().filter(|((op, _), _)| !READS.contains(&op.as_str())).map(|(_, n)| n).sum()
    }

    /// The calls made since `earlier`.
    pub fn since(&self, earlier: &CallSnapshot) -> CallSnapshot {
        let mut out = self.0.clone();
        for (k, n) in &earlier.0 {
            if let Some(v) = out.get_mut(k) {
                *v -= n;
            }
        }
        out.retain(|_, n| *n > 0);
        CallSnapshot(out)
    }
}

/// Every metric the provisioner exports.
#[derive(Debug, Clone, Default)]
pub struct Metrics {
    pub api_calls: ApiCalls,
    reconciles: Family<ReconcileLabels, Counter>,
    gate_updates: Family<ReasonLabels, Counter>,
    /// Targets registered at the NodePort after the last reconcile.
    pub targets_registered: Gauge,
    /// Eligible nodes left out by the target group's quota.
    pub targets_over_quota: Gauge,
    /// Deregistrations held back: later waves and refusals.
    pub deregistrations_held: Gauge,
    /// Drift findings at the last full check.
    pub drift_findings: Gauge,
    /// 1 while this replica holds the lease.
    pub leader: Gauge,
}

impl Metrics {
    /// Counts one reconcile by result (`ok`, `held_back`, `error`, `cancelled`) and by the work
    /// it did (`gates`, `cluster`, `alb`, `full`).
    pub fn reconciled(&self, result: &str, work: &str) {
        self.reconciles.get_or_create(&ReconcileLabels { result: result.to_owned(), work: work.to_owned() }).inc();
    }

    /// Counts one readiness-gate condition set, by its reason.
    pub fn gate_updated(&self, reason: &str) {
        self.gate_updates.get_or_create(&ReasonLabels { reason: reason.to_owned() }).inc();
    }

    /// A registry holding every metric, for `/metrics`.
    pub fn registry(&self) -> Registry {
        let mut r = Registry::with_prefix("gatehouse_provisioner");
        r.register("aws_api_calls", "AWS API operations by operation and outcome", self.api_calls.family.clone());
        r.register("reconciles", "Reconciles by result and work", self.reconciles.clone());
        r.register("gate_updates", "Readiness-gate conditions set on proxy pods, by reason", self.gate_updates.clone());
        r.register("targets_registered", "Targets registered at the NodePort", self.targets_registered.clone());
        r.register(
            "targets_over_quota",
            "Eligible nodes left out by the target group's quota",
            self.targets_over_quota.clone(),
        );
        r.register(
            "deregistrations_held",
            "Deregistrations held back (later waves, refusals)",
            self.deregistrations_held.clone(),
        );
        r.register("drift_findings", "Drift findings at the last check", self.drift_findings.clone());
        r.register("leader", "1 while this replica holds the lease", self.leader.clone());
        r
    }

    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry());
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calls_are_counted_by_operation_and_outcome_and_exported() {
        let m = Metrics::default();
        m.api_calls.record("DescribeTargetHealth", "ok");
        let before = m.api_calls.snapshot();
        m.api_calls.record("DescribeTargetHealth", "ok");
        m.api_calls.record("RegisterTargets", "service_error");
        let delta = m.api_calls.snapshot().since(&before);
        assert_eq!((delta.reads(), delta.writes(), delta.of("RegisterTargets")), (1, 1, 1));
        m.reconciled("ok", "full");
        let text = m.encode();
        assert!(
            text.contains(
                r#"gatehouse_provisioner_aws_api_calls_total{operation="DescribeTargetHealth",outcome="ok"} 2"#
            ),
            "{text}"
        );
        assert!(text.contains(r#"gatehouse_provisioner_reconciles_total{result="ok",work="full"} 1"#), "{text}");
    }
}
