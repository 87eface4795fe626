//! `watch`: keep the target group in step as the cluster changes.
//!
//! Watchers on Nodes (and, with a proxy Service, on the Service, its EndpointSlices and the pods
//! of its namespace) reduce each object as it arrives to what the plan depends on
//! ([`state::ClusterState`]); an event that changes nothing there wakes nothing, so Node
//! heartbeats cost no reconcile and no AWS call. A change is debounced, then reconciled in the
//! shape of kube-rs's controllers: [`Controller::reconcile`] returns what to do next, and a
//! failure goes through the error policy, an exponential backoff with jitter that new events do
//! not cut short ([`schedule`]). AWS is read on a change of the plan's inputs, while something
//! waits on the ALB (a readiness gate, a draining pod, a later wave), and at the periodic resync.
//!
//! Only the lease holder reconciles; a reconcile in flight when the term ends is cancelled, and
//! every write checks the term right before it goes out ([`crate::lease`]).

mod schedule;
mod state;

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Api;
use kube::runtime::{WatchStreamExt, watcher};
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

pub use schedule::{Backoff, Work};
use schedule::{Schedule, random_unit};
use state::{Changed, ClusterState};

use crate::aws::Aws;
use crate::cluster::{Cluster, SERVICE_NAME_LABEL, ServiceRef, WATCH_SERVER_TIMEOUT};
use crate::lease::{self, Elector, Leadership, LeaseConfig};
use crate::metrics::Metrics;
use crate::model::{ObservedTarget, ServiceNodePort, TargetSpec};
use crate::nodes::NodeView;
use crate::plan::{self, ClusterView, Plan};
use crate::proxy::{self, reason};
use crate::session::{Error, Session, Settings};

/// How `watch` runs.
#[derive(Debug, Clone)]
pub struct WatchConfig {
    pub settings: Settings,
    pub proxy_service: Option<ServiceRef>,
    /// Quiet period after the last event before reconciling.
    pub debounce: Duration,
    /// Full resync (target group drift + target health) at least this often.
    pub resync: Duration,
    /// How often target health is read while something waits on the ALB.
    pub poll: Duration,
    pub backoff: Backoff,
    pub lease: LeaseConfig,
    /// Bounds a reconcile in flight at shutdown, and the metrics server's graceful shutdown.
    pub shutdown_timeout: Duration,
}

/// Runs until `shutdown` completes; then lets the reconcile in flight finish (within
/// `shutdown_timeout`), releases the lease and stops the metrics server. `listener` serves
/// `/healthz` and `/metrics`.
pub async fn run(
    aws: Aws,
    cluster: Cluster,
    config: WatchConfig,
    metrics: Metrics,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    let cancel = CancellationToken::new();
    {
        let cancel = cancel.clone();
        tokio::spawn(async move {
            shutdown.await;
            cancel.cancel();
        });
    }
    let leadership = Leadership::standby();
    let server = tokio::spawn(serve(listener, metrics.clone(), leadership.clone(), cancel.clone()));

    let shared = Arc::new(Shared {
        state: Mutex::new(ClusterState::new(config.settings.selector.clone(), config.proxy_service.clone())),
        changed: Mutex::new(Changed::default()),
        notify: Notify::new(),
    });
    let watchers = spawn_watchers(&cluster, config.proxy_service.as_ref(), &shared, &cancel);

    let lease_stop = CancellationToken::new();
    let elector = Elector::new(cluster.client().clone(), config.lease.clone());
    let lease_task = tokio::spawn(lease::hold(elector, leadership.clone(), metrics.clone(), lease_stop.clone()));

    let mut controller = Controller {
        aws,
        cluster,
        config: config.clone(),
        metrics,
        leadership: leadership.clone(),
        session: None,
        observed: None,
        last_inputs: None,
    };
    controller.run(&shared, &cancel).await;

    // Writes have stopped: only now may another replica take over.
    lease_stop.cancel();
    lease_task.await.ok();
    for w in watchers {
        w.abort();
    }
    if tokio::time::timeout(config.shutdown_timeout, server).await.is_err() {
        tracing::warn!(timeout = ?config.shutdown_timeout, "metrics server did not stop in time");
    }
    Ok(())
}

/// What the watchers and the controller share.
#[derive(Debug)]
struct Shared {
    state: Mutex<ClusterState>,
    /// What changed since the controller last looked.
    changed: Mutex<Changed>,
    notify: Notify,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, ClusterState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn take_changed(&self) -> Changed {
        std::mem::take(&mut *self.changed.lock().unwrap_or_else(|p| p.into_inner()))
    }

    fn record(&self, changed: Changed) {
        if changed.any() {
            let mut pending = self.changed.lock().unwrap_or_else(|p| p.into_inner());
            *pending = pending.or(changed);
            drop(pending);
            self.notify.notify_one();
        }
    }
}

fn spawn_watchers(
    cluster: &Cluster,
    proxy: Option<&ServiceRef>,
    shared: &Arc<Shared>,
    cancel: &CancellationToken,
) -> Vec<tokio::task::JoinHandle<()>> {
    let client = cluster.client().clone();
    let config = || watcher::Config::default().timeout(WATCH_SERVER_TIMEOUT);
    let mut tasks = Vec::new();
    let nodes = watcher(Api::<Node>::all(client.clone()), config()).default_backoff();
    tasks.push(tokio::spawn(drive(nodes, shared.clone(), cancel.clone(), "Nodes", |s, e| s.node(e))));
    if let Some(svc) = proxy {
        // The Service is watched in its namespace (not by field selector, which not every API
        // server honours) and picked by name.
        let services = watcher(Api::<Service>::namespaced(client.clone(), &svc.namespace), config()).default_backoff();
        tasks.push(tokio::spawn(drive(services, shared.clone(), cancel.clone(), "Services", |s, e| s.service(e))));
        let selector = format!("{SERVICE_NAME_LABEL}={}", svc.name);
        let slices =
            watcher(Api::<EndpointSlice>::namespaced(client.clone(), &svc.namespace), config().labels(&selector))
                .default_backoff();
        tasks.push(tokio::spawn(drive(slices, shared.clone(), cancel.clone(), "EndpointSlices", |s, e| s.slice(e))));
        let pods = watcher(Api::<Pod>::namespaced(client, &svc.namespace), config()).default_backoff();
        tasks.push(tokio::spawn(drive(pods, shared.clone(), cancel.clone(), "Pods", |s, e| s.pod(e))));
    }
    tasks
}

async fn drive<S, K>(
    stream: S,
    shared: Arc<Shared>,
    cancel: CancellationToken,
    what: &'static str,
    apply: impl Fn(&mut ClusterState, watcher::Event<K>) -> Changed,
) where
    S: futures::Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send,
{
    let mut stream = std::pin::pin!(stream);
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            item = stream.next() => match item {
                Some(Ok(event)) => {
                    let changed = apply(&mut shared.state(), event);
                    shared.record(changed);
                }
                Some(Err(e)) => tracing::warn!(what, error = %e, "watch failed; retrying with backoff"),
                None => return,
            }
        }
    }
}

/// The reconciler and what it keeps between reconciles.
struct Controller {
    aws: Aws,
    cluster: Cluster,
    config: WatchConfig,
    metrics: Metrics,
    leadership: Leadership,
    session: Option<Session>,
    /// The target group as last observed, with this process's writes since applied.
    observed: Option<Vec<ObservedTarget>>,
    /// The plan's cluster inputs at the last successful reconcile.
    last_inputs: Option<TargetInputs>,
}

/// What the desired target set depends on: if it is unchanged, so is the plan against an
/// unchanged target group.
#[derive(Debug, Clone, PartialEq, Eq)]
struct TargetInputs {
    nodes: Vec<NodeView>,
    ready_proxy_nodes: Option<crate::model::NodeNames>,
    service_ports: Option<Option<Vec<ServiceNodePort>>>,
}

impl TargetInputs {
    fn of(view: &ClusterView) -> Self {
        Self {
            nodes: view.nodes.clone(),
            ready_proxy_nodes: view.proxy.as_ref().map(proxy::ProxyView::ready_nodes),
            service_ports: view.proxy.as_ref().map(|p| p.service.node_ports.clone()),
        }
    }
}

/// How a reconcile ended.
enum Outcome {
    Done(Result<Reconciled, Error>),
    Cancelled,
}

/// What a successful reconcile asks for next.
#[derive(Debug, Clone, Copy)]
struct Reconciled {
    /// Read the ALB again after this long: something waits on it.
    requeue_after: Option<Duration>,
    /// The plan held something back (a refusal, a NodePort mismatch, the quota).
    held_back: bool,
}

impl Controller {
    async fn run(&mut self, shared: &Shared, cancel: &CancellationToken) {
        let mut schedule = Schedule::new();
        let mut resync = tokio::time::interval_at(Instant::now() + self.config.resync, self.config.resync);
        resync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let leader = self.leadership.is_leader();
            let due = if leader { schedule.due() } else { None };
            tokio::select! {
                biased;
                () = cancel.cancelled() => return,
                // A new term starts with a full reconcile.
                () = self.leadership.gained(), if !leader => schedule.now(Work::Full, Instant::now()),
                () = shared.notify.notified() => {
                    let changed = shared.take_changed();
                    let work = if changed.targets { Work::Cluster } else { Work::Gates };
                    schedule.event(work, Instant::now(), self.config.debounce);
                }
                _ = resync.tick() => schedule.now(Work::Full, Instant::now()),
                () = sleep_until(due) => {
                    let Some(work) = schedule.take() else { continue };
                    if !shared.state().synced() {
                        // The first lists are not complete: a plan now would see a partial
                        // cluster. Their InitDone is a change that schedules this again.
                        schedule.cancelled(work);
                        continue;
                    }
                    self.run_one(work, shared, &mut schedule, cancel).await;
                }
            }
        }
    }

    async fn run_one(&mut self, work: Work, shared: &Shared, schedule: &mut Schedule, cancel: &CancellationToken) {
        let lost = self.leadership.lost();
        let timeout = self.config.shutdown_timeout;
        let stopping = async {
            cancel.cancelled().await;
            tokio::time::sleep(timeout).await;
        };
        let mut left = work;
        let outcome = tokio::select! {
            biased;
            () = lost => Outcome::Cancelled,
            () = stopping => Outcome::Cancelled,
            result = self.reconcile(&mut left, shared) => Outcome::Done(result),
        };
        let result = match outcome {
            Outcome::Done(Err(Error::NotLeader(_))) | Outcome::Cancelled => {
                // Writes stopped with the term; whatever was pending waits for the next one.
                schedule.cancelled(work);
                self.observed = None;
                self.metrics.reconciled("cancelled", work.as_str());
                tracing::info!(work = work.as_str(), "reconcile cancelled: no longer the leader");
                return;
            }
            Outcome::Done(result) => result,
        };
        match result {
            Ok(done) => {
                schedule.succeeded();
                self.metrics.reconciled(if done.held_back { "held_back" } else { "ok" }, work.as_str());
                if let Some(after) = done.requeue_after {
                    schedule.requeue(Work::Alb, Instant::now() + after);
                }
            }
            Err(e) => {
                if e.needs_new_session() {
                    self.session = None;
                }
                self.observed = None;
                // What is left of the work is retried: a resync whose session opened has re-read
                // the target group, so its retries read only the ALB.
                let wait = schedule.failed(left, Instant::now(), &self.config.backoff, random_unit());
                self.metrics.reconciled("error", work.as_str());
                tracing::warn!(error = %e, retry_in = ?wait, "reconcile failed");
            }
        }
    }

    /// One reconcile: (re)open the session if asked, read target health unless nothing the plan
    /// depends on changed, apply the plan's writes, set the readiness gates. Returns when to
    /// look again. `left` starts as the work to do and says, should the reconcile fail, what is
    /// left of it: once the session is open, no more than [`Work::Alb`].
    async fn reconcile(&mut self, left: &mut Work, shared: &Shared) -> Result<Reconciled, Error> {
        let view = shared.state().view();
        let mut work = *left;
        if work == Work::Full || self.session.is_none() {
            // A resync re-reads the group the session has; only a session that is gone (or
            // never was) finds the group anew, which with --cluster means by its tags.
            let opened = match &self.session {
                Some(session) => session.reopen().await?,
                None => Session::open(self.aws.clone(), self.config.settings.clone()).await?,
            };
            self.session = Some(opened);
            work = Work::Full;
            if *left == Work::Full {
                *left = Work::Alb;
            }
        }
        let inputs = TargetInputs::of(&view);
        let unchanged = self.last_inputs.as_ref() == Some(&inputs) && self.observed.is_some();
        if work == Work::Cluster && unchanged {
            work = Work::Gates;
        }
        let Some(session) = self.session.clone() else {
            return Ok(Reconciled { requeue_after: None, held_back: false });
        };
        let observed = match (&self.observed, work) {
            (Some(cached), Work::Gates) => cached.clone(),
            _ => session.observe().await?,
        };
        let plan = session.plan(&view, &observed);
        self.report(&plan, work);
        let after = if work == Work::Gates {
            observed
        } else {
            let applied = session.apply(&plan, &self.leadership).await?;
            for c in &plan.diff.deregister {
                tracing::info!(target = %c.target, node = c.node.as_deref().unwrap_or("-"), why = %c.why, "deregistered");
            }
            for c in &plan.diff.register {
                tracing::info!(target = %c.target, node = c.node.as_deref().unwrap_or("-"), "registered");
            }
            if applied.registered.is_empty() && applied.deregistered.is_empty() {
                observed
            } else {
                plan::predicted(&observed, &plan.diff)
            }
        };
        let spec = plan.target_group.spec;
        let gates_failed = self.set_gates(&view, spec, &after).await?;
        self.observed = Some(after.clone());
        self.last_inputs = Some(inputs);
        let waits = gates_failed || waits_on_alb(&plan, &view, spec, &after);
        Ok(Reconciled { requeue_after: waits.then_some(self.config.poll), held_back: plan.problem().is_some() })
    }

    /// Logs what a plan found and exports it.
    fn report(&self, plan: &Plan, work: Work) {
        let d = &plan.diff;
        self.metrics.drift_findings.set(gauge(plan.drift.len()));
        self.metrics.targets_registered.set(gauge(d.unchanged.len() + d.register.len()));
        self.metrics.targets_over_quota.set(gauge(d.over_quota.len()));
        self.metrics.deregistrations_held.set(gauge(d.later.len() + d.refused.len()));
        if work == Work::Full {
            for f in &plan.drift {
                tracing::warn!(finding = %f, "drift");
            }
            for (node, reason) in &plan.unmappable {
                tracing::warn!(node, reason, "eligible node cannot be registered");
            }
        }
        if work != Work::Gates
            && let Some(problem) = plan.problem()
        {
            tracing::warn!(problem, "changes held back");
        }
    }

    /// Sets every gate condition that differs from what `observed` says, each only while
    /// leading. Returns whether some could not be set (then the reconcile looks again soon).
    async fn set_gates(
        &self,
        view: &ClusterView,
        spec: TargetSpec,
        observed: &[ObservedTarget],
    ) -> Result<bool, Error> {
        let updates = plan::gate_updates(view, spec, observed);
        let mut failed = false;
        for (update, result) in self.cluster.set_gates(&updates, &self.leadership).await {
            match result {
                Ok(()) => {
                    self.metrics.gate_updated(update.gate.reason);
                    tracing::info!(pod = %update.pod.name, status = update.gate.status, reason = update.gate.reason, "readiness gate set");
                }
                Err(Error::NotLeader(e)) => return Err(e.into()),
                Err(e) => {
                    failed = true;
                    tracing::warn!(pod = %update.pod.name, error = %e, "could not set the readiness gate");
                }
            }
        }
        Ok(failed)
    }
}

/// Whether something waits on the ALB's view, so its health must be read again soon: a later
/// wave (after the current one drains), a terminating pod whose target drains, a pod whose gate
/// waits for its target to turn healthy, or targets over the quota while places free up.
fn waits_on_alb(plan: &Plan, view: &ClusterView, spec: TargetSpec, observed: &[ObservedTarget]) -> bool {
    let d = &plan.diff;
    if !d.later.is_empty() || (!d.over_quota.is_empty() && !d.draining.is_empty()) {
        return true;
    }
    let Some(proxy) = &view.proxy else { return false };
    let ready = proxy.ready_nodes();
    let by_id: BTreeMap<&str, &ObservedTarget> =
        observed.iter().filter(|o| o.target.port == spec.port).map(|o| (o.target.id.as_str(), o)).collect();
    let nodes: BTreeMap<&str, &NodeView> = view.nodes.iter().map(|n| (n.name.as_str(), n)).collect();
    let over_quota = |pod: &crate::model::ProxyPod| d.over_quota.iter().any(|c| c.node == pod.node);
    proxy.proxy_pods().into_iter().filter(|p| p.has_gate).any(|pod| {
        let node = pod.node.as_deref().and_then(|n| nodes.get(n).copied());
        let gate = proxy::gate_target(pod, node, spec, &ready, &by_id);
        match gate.reason {
            reason::DRAINING => true,
            reason::NOT_HEALTHY => pod.containers_ready,
            reason::NOT_REGISTERED => pod.containers_ready && !over_quota(pod),
            _ => false,
        }
    })
}

fn gauge(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[derive(Clone)]
struct ServerState {
    metrics: Metrics,
    leadership: Leadership,
}

async fn serve(listener: TcpListener, metrics: Metrics, leadership: Leadership, cancel: CancellationToken) {
    let app = Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics_text))
        .with_state(ServerState { metrics, leadership });
    if let Err(e) = axum::serve(listener, app).with_graceful_shutdown(cancel.cancelled_owned()).await {
        tracing::warn!(error = %e, "metrics server failed");
    }
}

async fn healthz(State(s): State<ServerState>) -> impl IntoResponse {
    let role = if s.leadership.is_leader() { "leader" } else { "standby" };
    (StatusCode::OK, format!("ok ({role})\n"))
}

async fn metrics_text(State(s): State<ServerState>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], s.metrics.encode())
}
