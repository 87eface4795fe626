//! Prometheus metrics: AWS API calls by operation and outcome, reconciles, registered targets.
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
struct ResultLabels {
    result: String,
}

/// Counts of AWS API operations (one per operation, retries included in it), by name and outcome.
#[derive(Debug, Clone, Default)]
pub struct ApiCalls {
    family: Family<ApiLabels, Counter>,
    counts: Arc<Mutex<BTreeMap<(String, String), u64>>>,
}

/// Read operations of the ELBv2 API, as the SDK names them.
const READS: &[&str] = &["DescribeTargetGroups", "DescribeTargetHealth", "DescribeTargetGroupAttributes"];

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
    reconciles: Family<ResultLabels, Counter>,
    /// Targets registered at the NodePort after the last reconcile.
    pub targets_registered: Gauge,
    /// Drift findings at the last full check.
    pub drift_findings: Gauge,
    /// 1 while this replica holds the lease.
    pub leader: Gauge,
}

impl Metrics {
    /// Counts one reconcile by result (`ok`, `refused`, `error`).
    pub fn reconciled(&self, result: &str) {
        self.reconciles.get_or_create(&ResultLabels { result: result.to_owned() }).inc();
    }

    /// A registry holding every metric, for `/metrics`.
    pub fn registry(&self) -> Registry {
        let mut r = Registry::with_prefix("gatehouse_provisioner");
        r.register("aws_api_calls", "AWS API operations by operation and outcome", self.api_calls.family.clone());
        r.register("reconciles", "Reconciles by result", self.reconciles.clone());
        r.register("targets_registered", "Targets registered at the NodePort", self.targets_registered.clone());
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
        m.reconciled("ok");
        let text = m.encode();
        assert!(
            text.contains(
                r#"gatehouse_provisioner_aws_api_calls_total{operation="DescribeTargetHealth",outcome="ok"} 2"#
            ),
            "{text}"
        );
        assert!(text.contains(r#"gatehouse_provisioner_reconciles_total{result="ok"} 1"#), "{text}");
    }
}
