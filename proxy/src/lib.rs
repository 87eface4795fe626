//! gatehouse-proxy: the edge proxy that routes by the gatehouse naming convention.
//!
//! A request for `api.example.com/foo/bar` goes to the Kubernetes Service `service-api-foo`
//! (see `gatehouse-convention`), on one of its ready endpoints, with the path `/bar`.
//!
//! One task per client connection does everything for it: it parses each request head with
//! the proxy's own HTTP/1 codec, takes it through the phases, drives the upstream connection
//! itself and relays the answer. Modules, in the order a request meets them (an arrow is a
//! use; nothing uses a module above it, so there are no cycles):
//!
//! ```text
//! listener     accept, max_connections (503 + close)            -> connection
//! connection   request heads in turn; client timers; keep-alive -> client, phases, forward, h1
//! client       the client socket's buffers, local answers, body skipping, close -> io, body
//! phases       1 request_filter: head checks, readiness, route  -> request, table, headers
//!              2 upstream_request_filter: the upstream's head    -> headers
//! forward      3 request body: small ones whole, large streamed  -> client, body, upstream, h1
//!              4 upstream_peer: endpoint, pool, one retry
//!              5 the response: head (headers::write_client_head), body relayed
//! error        6 fail to proxy: one row of {status, body, close} per failure
//! phases       7 logging: metrics and the access log line
//! ---------------------------------------------------------------------------------------
//! h1           the codec: request and response heads, chunked, Date (pure)
//! request      host and method rules, then the convention's route (pure)
//! headers      header rules and head writers (pure)
//! body         the client body's framing, limit and timers
//! upstream     the pool of upstream connections and the reuse rule
//! io           reads and writes with deadlines on reused buffers
//! table        the route table (ArcSwap snapshot), filled by kubernetes or the static config
//! admin        /healthz, /metrics, /routes (axum, on its own listener)
//! ```
//!
//! Tests run it in-process: [`Proxy::bind`] with `listen: 127.0.0.1:0`, then
//! [`ProxyHandle::traffic_addr`] / [`ProxyHandle::admin_addr`] and [`ProxyHandle::drain`].

pub mod admin;
pub mod body;
mod client;
pub mod config;
mod connection;
pub mod error;
mod forward;
pub mod h1;
pub mod headers;
mod io;
pub mod kubernetes;
mod listener;
pub mod metrics;
pub mod phases;
pub mod request;
pub mod table;
mod upstream;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use crate::config::{Config, ConfigError, Settings};
use crate::config::{Forwarded, Headers, Limits, Timeouts};
use crate::headers::RequestIds;
use crate::metrics::Metrics;
use crate::table::RouteTable;
use crate::upstream::Upstream;

/// State shared by the listener, the connections and discovery, split by what it is: the route
/// table (swapped by discovery), the validated settings the request path reads, the runtime
/// flags that change while it serves, and the services it uses (metrics, the pool, ids).
#[derive(Debug)]
pub struct Shared {
    /// The current route table; discovery swaps in a new one, requests never wait.
    pub table: ArcSwap<RouteTable>,
    pub metrics: Metrics,
    pub(crate) settings: RequestSettings,
    pub(crate) runtime: Runtime,
    pub(crate) upstream: Upstream,
    pub(crate) request_ids: RequestIds,
}

/// The validated configuration the request path reads; fixed while the proxy runs.
#[derive(Debug)]
pub(crate) struct RequestSettings {
    pub(crate) access_log: bool,
    pub(crate) limits: Limits,
    pub(crate) forwarded: Forwarded,
    pub(crate) headers: Headers,
    pub(crate) timeouts: Timeouts,
    /// `1.1 <pseudonym>` for the `Via` header, when configured.
    pub(crate) via: Option<Vec<u8>>,
}

/// What changes while the proxy serves: readiness, the open connections, the tasks shutdown
/// waits for.
#[derive(Debug, Default)]
pub(crate) struct Runtime {
    /// Set on SIGTERM: readiness fails from then on.
    draining: AtomicBool,
    /// Discovery has delivered a complete first view.
    synced: AtomicBool,
    pub(crate) open_connections: AtomicUsize,
    pub(crate) tasks: Tracker,
    /// Cancelled when the shutdown bound has passed: whatever still runs is cut.
    pub(crate) kill: CancellationToken,
}

impl Shared {
    /// Ready means: discovery has synced once and no drain has started.
    pub fn is_ready(&self) -> bool {
        self.runtime.synced.load(Ordering::Relaxed) && !self.runtime.draining.load(Ordering::Relaxed)
    }

    /// Installs a new route table.
    pub fn set_table(&self, table: RouteTable) {
        self.metrics.routes.set(table.route_count() as i64);
        self.table.store(Arc::new(table));
        self.runtime.synced.store(true, Ordering::Relaxed);
    }

    /// Runs a task that shutdown waits for (bounded) and cuts after the bound.
    pub(crate) fn spawn_tracked(&self, task: impl Future<Output = ()> + Send + 'static) {
        let guard = self.runtime.tasks.guard();
        let kill = self.runtime.kill.clone();
        tokio::spawn(async move {
            tokio::select! {
                () = task => {}
                () = kill.cancelled() => {}
            }
            drop(guard);
        });
    }
}

/// Counts running connection and tunnel tasks so that shutdown can wait for them.
#[derive(Debug, Default)]
pub(crate) struct Tracker {
    count: Arc<(AtomicUsize, Notify)>,
}

#[derive(Debug)]
pub(crate) struct TrackerGuard(Arc<(AtomicUsize, Notify)>);

impl Tracker {
    pub(crate) fn guard(&self) -> TrackerGuard {
        self.count.0.fetch_add(1, Ordering::AcqRel);
        TrackerGuard(self.count.clone())
    }

    async fn idle(&self) {
        loop {
            let notified = self.count.1.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.count.0.load(Ordering::Acquire) == 0 {
                return;
            }
            notified.await;
        }
    }
}

impl Drop for TrackerGuard {
    fn drop(&mut self) {
        if self.0.0.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.1.notify_waiters();
        }
    }
}

/// Why the proxy could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error("Kubernetes client: {0}")]
    Kubernetes(String),
}

/// Entry point for the binary and for in-process tests.
#[derive(Debug)]
pub struct Proxy;

impl Proxy {
    /// Binds both listeners and starts serving. Kubernetes discovery, if configured, builds
    /// its client from the configured kubeconfig (or in-cluster / `KUBECONFIG`).
    pub async fn bind(settings: Settings) -> Result<ProxyHandle, StartError> {
        Self::bind_with(settings, None).await
    }

    /// Like [`Proxy::bind`], with a Kubernetes client supplied by the caller (tests point it
    /// at an in-memory API server).
    pub async fn bind_with(settings: Settings, kube_client: Option<kube::Client>) -> Result<ProxyHandle, StartError> {
        let Settings { config, edges, static_services } = settings;
        // Build the Kubernetes client before binding anything: a broken kubeconfig must not
        // leave a port half-open.
        let kube = match &config.discovery.kubernetes {
            None => None,
            Some(k) => Some(match kube_client {
                Some(client) => (client, k.namespaces.clone()),
                None => (kubernetes::client(k.kubeconfig.as_deref()).await?, k.namespaces.clone()),
            }),
        };

        let traffic = TcpListener::bind(config.listen)
            .await
            .map_err(|source| StartError::Bind { addr: config.listen, source })?;
        let admin = TcpListener::bind(config.admin_listen)
            .await
            .map_err(|source| StartError::Bind { addr: config.admin_listen, source })?;
        let traffic_addr = traffic.local_addr().map_err(|source| StartError::Bind { addr: config.listen, source })?;
        let admin_addr = admin.local_addr().map_err(|source| StartError::Bind { addr: config.admin_listen, source })?;

        let upstream = Upstream::new(&config.timeouts, &config.pool);
        upstream.spawn_evictor();

        let shared = Arc::new(Shared {
            table: ArcSwap::from_pointee(RouteTable::new(edges.clone(), Vec::new(), Vec::new())),
            upstream,
            metrics: Metrics::new(),
            request_ids: RequestIds::new(),
            settings: RequestSettings {
                access_log: config.access_log,
                limits: config.limits.clone(),
                forwarded: config.forwarded.clone(),
                headers: config.headers.clone(),
                timeouts: config.timeouts.clone(),
                // Validated as a token by the config, so it is always a valid header value.
                via: config.via.as_deref().map(|name| format!("1.1 {name}").into_bytes()),
            },
            runtime: Runtime::default(),
        });

        let discovery = match (static_services, kube) {
            (Some(services), _) => {
                shared.set_table(RouteTable::from_static(edges, &services));
                None
            }
            (None, Some((client, namespaces))) => {
                Some(tokio::spawn(kubernetes::run(shared.clone(), client, edges, namespaces)))
            }
            (None, None) => unreachable!("validated config has static or Kubernetes discovery"),
        };

        let closing = CancellationToken::new();
        let accept = tokio::spawn(listener::serve(shared.clone(), traffic, closing.clone()));
        let admin_stop = CancellationToken::new();
        let admin_task = tokio::spawn(admin::serve(shared.clone(), admin, admin_stop.clone()));
        let drain = CancellationToken::new();
        let done =
            tokio::spawn(lifecycle(shared.clone(), drain.clone(), closing, accept, admin_stop, admin_task, discovery));
        tracing::info!(%traffic_addr, %admin_addr, "gatehouse-proxy listening");
        Ok(ProxyHandle { traffic_addr, admin_addr, shared, drain, done })
    }
}

/// Drain, in order: readiness fails at once; traffic is still served for `timeouts.drain`
/// (the ALB needs that long to mark this target unhealthy and stop sending); then the
/// listener closes, keep-alive connections are told to close after their current request,
/// and in-flight work gets `timeouts.shutdown` before it is cut.
async fn lifecycle(
    shared: Arc<Shared>,
    drain: CancellationToken,
    closing: CancellationToken,
    accept: JoinHandle<()>,
    admin_stop: CancellationToken,
    admin: JoinHandle<()>,
    discovery: Option<JoinHandle<()>>,
) {
    drain.cancelled().await;
    shared.runtime.draining.store(true, Ordering::Relaxed);
    tracing::info!(drain = ?shared.settings.timeouts.drain, "draining: readiness now fails");
    tokio::time::sleep(shared.settings.timeouts.drain).await;
    closing.cancel();
    let _ = accept.await;
    tracing::info!("listener closed; waiting for in-flight requests");
    if tokio::time::timeout(shared.settings.timeouts.shutdown, shared.runtime.tasks.idle()).await.is_err() {
        tracing::warn!(shutdown = ?shared.settings.timeouts.shutdown, "in-flight requests cut after the shutdown bound");
        shared.runtime.kill.cancel();
    }
    admin_stop.cancel();
    let _ = admin.await;
    if let Some(discovery) = discovery {
        discovery.abort();
    }
    tracing::info!("stopped");
}

/// A running proxy.
#[derive(Debug)]
pub struct ProxyHandle {
    traffic_addr: SocketAddr,
    admin_addr: SocketAddr,
    shared: Arc<Shared>,
    drain: CancellationToken,
    done: JoinHandle<()>,
}

impl ProxyHandle {
    /// Where the traffic listener is bound (the real port when configured with port 0).
    pub fn traffic_addr(&self) -> SocketAddr {
        self.traffic_addr
    }

    /// Where the admin listener is bound.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    /// The state shared with the request path: route table, metrics, readiness.
    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// What SIGTERM does: starts the drain and returns at once.
    pub fn start_drain(&self) {
        // Readiness flips here, synchronously, not when the lifecycle task next runs.
        self.shared.runtime.draining.store(true, Ordering::Relaxed);
        self.drain.cancel();
    }

    /// Starts the drain and waits until the proxy has stopped.
    pub async fn drain(self) {
        self.start_drain();
        self.wait().await;
    }

    /// Waits until the proxy has stopped (after a drain was started).
    pub async fn wait(self) {
        let _ = self.done.await;
    }
}
