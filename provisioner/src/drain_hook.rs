//! `drain-hook`: the proxy pod's preStop hook. It holds the pod's termination until the
//! provisioner reports, through the pod's own readiness-gate condition, that the ALB no longer
//! sends to its node ([`crate::proxy::reason::DRAINED`]), so a drainer that waits for pods to go
//! (Karpenter, `kubectl drain`) does not terminate the node while the ALB still drains it.
//! Runs with the proxy pod's service account (it only reads its own pod) and never touches AWS.
//!
//! It gives up, exiting 1 with one line, after `--timeout`; the kubelet then goes on with the
//! termination as it would without a hook.

use std::time::Duration;

use tokio::time::Instant;

use crate::cli::DrainHookArgs;
use crate::cluster::{Cluster, DEFAULT_TIMEOUT};
use crate::model::TARGET_HEALTHY_CONDITION;
use crate::plan::exit;
use crate::proxy::reason;
use crate::session::Error;

/// Waits; returns the exit code.
pub async fn run(args: DrainHookArgs) -> Result<u8, Error> {
    let started = Instant::now();
    let call_timeout = DEFAULT_TIMEOUT.min(args.timeout);
    let cluster =
        Cluster::connect(args.kubeconfig.as_deref(), call_timeout, call_timeout + Duration::from_secs(1)).await?;
    loop {
        let last = match cluster.pod(&args.namespace, &args.pod).await {
            Ok(None) => return done(started, "the pod is gone"),
            Ok(Some(pod)) if !pod.has_gate => {
                return done(started, "the pod has no readiness gate: nothing to wait for");
            }
            Ok(Some(pod)) => match pod.gate {
                Some(gate) if gate.reason == reason::DRAINED => {
                    return done(started, "the ALB no longer sends to its node");
                }
                Some(gate) => format!(
                    "{TARGET_HEALTHY_CONDITION} is {} ({})",
                    if gate.status { "True" } else { "False" },
                    gate.reason
                ),
                None => format!("{TARGET_HEALTHY_CONDITION} is not set"),
            },
            Err(e) => e.to_string(),
        };
        if started.elapsed() >= args.timeout {
            eprintln!(
                "error: drain-hook: gave up on {}/{} after {}: the provisioner did not report its node drained (last: {last})",
                args.namespace,
                args.pod,
                humantime::format_duration(round(started.elapsed()))
            );
            return Ok(exit::ERROR);
        }
        tokio::time::sleep(args.interval.min(args.timeout.saturating_sub(started.elapsed()))).await;
    }
}

fn done(started: Instant, why: &str) -> Result<u8, Error> {
    println!("drain-hook: done after {}: {why}", humantime::format_duration(round(started.elapsed())));
    Ok(exit::CLEAN)
}

fn round(d: Duration) -> Duration {
    Duration::from_millis(d.as_millis().try_into().unwrap_or(u64::MAX) / 100 * 100)
}
