//! `watch`: keep the target group in step as the cluster changes.
//!
//! kube-rs watchers on Nodes and the proxy Service feed in-memory stores (so a reconcile reads
//! no Kubernetes API); every event marks the state dirty, a short quiet period debounces bursts,
//! and a periodic full resync re-reads the target group (drift) too. Only the lease holder
//! reconciles. A failed reconcile is logged, counted and retried with backoff.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, Service};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::aws::Elb;
use crate::kube::{ServiceRef, proxy_facts};
use crate::lease::{Elector, LeaseConfig};
use crate::metrics::Metrics;
use crate::sync::{Error, Session, Settings};

/// How `watch` runs.
#[derive(Debug, Clone)]
pub struct WatchConfig {
    pub settings: Settings,
    pub proxy_service: Option<ServiceRef>,
    /// Quiet period after the last event before reconciling.
    pub debounce: Duration,
    /// Full resync (target group + health) at least this often.
    pub resync: Duration,
    pub lease: LeaseConfig,
    /// Graceful shutdown of the metrics server is bounded by this.
    pub shutdown_timeout: Duration,
}

/// Longest a burst of events can postpone a reconcile.
const MAX_DEBOUNCE: Duration = Duration::from_secs(2);
const MIN_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// Runs until `shutdown` completes; then stops reconciling, releases the lease and stops the
/// metrics server (bounded by `shutdown_timeout`). `listener` serves `/healthz` and `/metrics`.
pub async fn run(
    elb: Elb,
    client: Client,
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
    let dirty = Arc::new(Notify::new());
    let leader = Arc::new(AtomicBool::new(false));

    let server = tokio::spawn(serve(listener, metrics.clone(), leader.clone(), cancel.clone()));

    // Nodes: every event marks dirty; the store is what a reconcile reads.
    let (nodes, node_writer) = reflector::store::<Node>();
    let node_stream =
        reflector::reflector(node_writer, watcher(Api::<Node>::all(client.clone()), watcher::Config::default()))
            .default_backoff();
    let watchers = tokio::spawn(drive(node_stream, dirty.clone(), cancel.clone(), "Nodes"));

    // The proxy Service: watched in its namespace (not by field selector, which not every API
    // server honours), looked up by name in the store.
    let services = config.proxy_service.as_ref().map(|svc| {
        let (store, writer) = reflector::store::<Service>();
        let api = Api::<Service>::namespaced(client.clone(), &svc.namespace);
        let stream = reflector::reflector(writer, watcher(api, watcher::Config::default())).default_backoff();
        tokio::spawn(drive(stream, dirty.clone(), cancel.clone(), "Services"));
        store
    });

    let elector = Elector::new(client.clone(), config.lease.clone());
    let lease_task = tokio::spawn(hold_lease(elector, leader.clone(), dirty.clone(), metrics.clone(), cancel.clone()));

    let ready = async {
        nodes.wait_until_ready().await.ok();
        if let Some(s) = &services {
            s.wait_until_ready().await.ok();
        }
    };
    tokio::select! {
        () = ready => {}
        () = cancel.cancelled() => {}
    }

    let mut looper = Loop { elb, config, metrics, nodes, services, session: None, backoff: MIN_BACKOFF };
    let mut resync = tokio::time::interval(looper.config.resync);
    resync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut retry_at: Option<tokio::time::Instant> = None;
    while !cancel.is_cancelled() {
        let full = tokio::select! {
            biased;
            () = cancel.cancelled() => break,
            _ = resync.tick() => true,
            () = dirty.notified() => {
                debounce(&dirty, looper.config.debounce, &cancel).await;
                false
            }
            () = sleep_until(retry_at) => true,
        };
        if !leader.load(Ordering::SeqCst) {
            retry_at = None;
            continue;
        }
        retry_at = looper.reconcile(full).await;
    }

    lease_task.await.ok();
    watchers.abort();
    let timeout = looper.config.shutdown_timeout;
    if tokio::time::timeout(timeout, server).await.is_err() {
        tracing::warn!(?timeout, "metrics server did not stop in time");
    }
    Ok(())
}

async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Waits until no event arrived for `quiet`, at most [`MAX_DEBOUNCE`].
async fn debounce(dirty: &Notify, quiet: Duration, cancel: &CancellationToken) {
    let deadline = tokio::time::Instant::now() + MAX_DEBOUNCE;
    loop {
        tokio::select! {
            () = tokio::time::sleep(quiet) => return,
            () = tokio::time::sleep_until(deadline) => return,
            () = cancel.cancelled() => return,
            () = dirty.notified() => {}
        }
    }
}

async fn drive<S, T>(stream: S, dirty: Arc<Notify>, cancel: CancellationToken, what: &'static str)
where
    S: futures::Stream<Item = Result<watcher::Event<T>, watcher::Error>> + Send,
{
    let mut stream = std::pin::pin!(stream);
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            item = stream.next() => match item {
                Some(Ok(watcher::Event::Apply(_) | watcher::Event::Delete(_) | watcher::Event::InitDone)) => dirty.notify_one(),
                Some(Ok(_)) => {}
                Some(Err(e)) => tracing::warn!(what, error = %e, "watch failed; retrying with backoff"),
                None => return,
            }
        }
    }
}

/// Acquires and renews the lease; flips `leader`; releases the lease on shutdown.
async fn hold_lease(
    mut elector: Elector,
    leader: Arc<AtomicBool>,
    dirty: Arc<Notify>,
    metrics: Metrics,
    cancel: CancellationToken,
) {
    let period = elector.config().retry_period();
    let deadline = elector.config().renew_deadline();
    let mut last_renewed: Option<tokio::time::Instant> = None;
    loop {
        let was = leader.load(Ordering::SeqCst);
        let now_leader = match elector.try_acquire_or_renew().await {
            Ok(true) => {
                last_renewed = Some(tokio::time::Instant::now());
                true
            }
            Ok(false) => false,
            Err(e) => {
                tracing::warn!(error = %crate::kube::api_error("renew the lease", &e), "lease round failed");
                // Keep writing only while the last renewal is recent enough that nobody else
                // can have taken over.
                was && last_renewed.is_some_and(|t| t.elapsed() < deadline)
            }
        };
        if now_leader != was {
            leader.store(now_leader, Ordering::SeqCst);
            metrics.leader.set(i64::from(now_leader));
            tracing::info!(identity = %elector.config().identity, leader = now_leader, "leadership changed");
            if now_leader {
                // A new leader starts with a full reconcile.
                dirty.notify_one();
            }
        }
        tokio::select! {
            () = cancel.cancelled() => break,
            () = tokio::time::sleep(period) => {}
        }
    }
    if leader.swap(false, Ordering::SeqCst) {
        metrics.leader.set(0);
        if let Err(e) = elector.release().await {
            tracing::warn!(error = %crate::kube::api_error("release the lease", &e), "could not release the lease");
        }
    }
}

struct Loop {
    elb: Elb,
    config: WatchConfig,
    metrics: Metrics,
    nodes: Store<Node>,
    services: Option<Store<Service>>,
    session: Option<Session>,
    backoff: Duration,
}

impl Loop {
    /// One reconcile; returns when to retry after a failure.
    async fn reconcile(&mut self, full: bool) -> Option<tokio::time::Instant> {
        match self.try_reconcile(full).await {
            Ok(result) => {
                self.metrics.reconciled(result);
                self.backoff = MIN_BACKOFF;
                None
            }
            Err(e) => {
                if matches!(e, Error::Refused(_)) {
                    // Retrying changes nothing: the next event or resync looks again.
                    self.metrics.reconciled("refused");
                    tracing::warn!(error = %e, "reconcile refused");
                    return None;
                }
                self.metrics.reconciled("error");
                tracing::warn!(error = %e, retry_in = ?self.backoff, "reconcile failed");
                // The target group may have been replaced or deleted: re-read it next time.
                self.session = None;
                let at = tokio::time::Instant::now() + self.backoff;
                self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
                Some(at)
            }
        }
    }

    async fn try_reconcile(&mut self, full: bool) -> Result<&'static str, Error> {
        if full || self.session.is_none() {
            self.session = Some(Session::open(self.elb.clone(), self.config.settings.clone()).await?);
        }
        let Some(session) = &self.session else { return Ok("ok") };
        let nodes: Vec<Node> = self.nodes.state().iter().map(|n| (**n).clone()).collect();
        let proxy = match (&self.config.proxy_service, &self.services) {
            (Some(svc), Some(store)) => {
                let found = store.get(&ObjectRef::new(&svc.name).within(&svc.namespace));
                Some(proxy_facts(svc, found.as_deref()))
            }
            _ => None,
        };
        let plan = session.plan(&nodes, proxy.as_ref()).await?;
        self.metrics.drift_findings.set(i64::try_from(plan.drift.len()).unwrap_or(i64::MAX));
        for f in &plan.drift {
            tracing::warn!(finding = %f, "drift");
        }
        for (node, reason) in &plan.unmappable {
            tracing::warn!(node, reason, "eligible node cannot be registered");
        }
        let registered = plan.diff.unchanged.len() + plan.diff.register.len();
        if plan.diff.has_changes() {
            for c in plan.diff.allowed_deregistrations() {
                tracing::info!(target = %c.target, node = c.node.as_deref().unwrap_or("-"), why = %c.why, "deregister");
            }
            for c in &plan.diff.register {
                tracing::info!(target = %c.target, node = c.node.as_deref().unwrap_or("-"), "register");
            }
            session.apply(&plan, None).await?.into_result()?;
        }
        self.metrics.targets_registered.set(i64::try_from(registered).unwrap_or(i64::MAX));
        Ok("ok")
    }
}

#[derive(Clone)]
struct ServerState {
    metrics: Metrics,
    leader: Arc<AtomicBool>,
}

async fn serve(listener: TcpListener, metrics: Metrics, leader: Arc<AtomicBool>, cancel: CancellationToken) {
    let app = Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics_text))
        .with_state(ServerState { metrics, leader });
    if let Err(e) = axum::serve(listener, app).with_graceful_shutdown(cancel.cancelled_owned()).await {
        tracing::warn!(error = %e, "metrics server failed");
    }
}

async fn healthz(State(s): State<ServerState>) -> impl IntoResponse {
    let role = if s.leader.load(Ordering::SeqCst) { "leader" } else { "standby" };
    (StatusCode::OK, format!("ok ({role})\n"))
}

async fn metrics_text(State(s): State<ServerState>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], s.metrics.encode())
}
