//! `gatehouse-provisioner watch` run in-process against the in-memory Kubernetes API server and
//! the AWS emulator (optionally through fault proxies on either side), as one replica of the
//! Deployment: its metrics, its /healthz and /metrics, a SIGTERM-like stop.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

use gatehouse_provisioner::cluster::{Cluster, ServiceRef};
use gatehouse_provisioner::lease::LeaseConfig;
use gatehouse_provisioner::metrics::Metrics;
use gatehouse_provisioner::watch::{self, Backoff, WatchConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::fault_proxy::{FaultProxy, sdk_via};
use crate::kube_api::FakeApiServer;
use crate::provisioner_support::TargetGroupFixture;

/// The Lease the replicas share.
pub const LEASE: &str = "gatehouse-provisioner";

/// How a replica is started; [`ReplicaSpec::new`] gives short timings fit for tests.
#[derive(Debug, Clone)]
pub struct ReplicaSpec {
    pub identity: String,
    pub proxy_service: Option<ServiceRef>,
    pub resync: Duration,
    pub poll: Duration,
    pub debounce: Duration,
    pub backoff: Backoff,
    pub lease_duration: Duration,
    pub renew_deadline: Duration,
    pub retry_period: Duration,
    /// Attempts per AWS operation (the SDK's retries); `None`: the provisioner's own setting.
    pub sdk_attempts: Option<u32>,
    pub policy: gatehouse_provisioner::diff::Policy,
    /// `--cluster NAME`: the target group is found by its tags, not given.
    pub cluster: Option<String>,
}

impl ReplicaSpec {
    /// Resync every 5 minutes, poll every 200 ms, a 3 s lease renewed within 2 s every 500 ms.
    pub fn new(identity: &str) -> Self {
        Self {
            identity: identity.to_owned(),
            proxy_service: Some(ServiceRef { namespace: "gatehouse".into(), name: "proxy".into() }),
            resync: Duration::from_secs(300),
            poll: Duration::from_millis(200),
            debounce: Duration::from_millis(100),
            backoff: Backoff::DEFAULT,
            lease_duration: Duration::from_secs(3),
            renew_deadline: Duration::from_secs(2),
            retry_period: Duration::from_millis(500),
            sdk_attempts: None,
            policy: gatehouse_provisioner::diff::Policy::default(),
            cluster: None,
        }
    }
}

/// One running `watch` replica.
#[derive(Debug)]
pub struct Replica {
    pub metrics: Metrics,
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), gatehouse_provisioner::session::Error>>>,
}

impl Replica {
    /// A replica talking to `fake` and the emulator directly.
    pub async fn start(spec: ReplicaSpec, tg: &TargetGroupFixture, fake: &FakeApiServer) -> Self {
        Self::start_via(spec, tg, &fake.url(), None).await
    }

    /// A replica reaching the Kubernetes API at `kube_url` (the fake, or a fault proxy in front
    /// of it) and AWS through `aws` when given.
    pub async fn start_via(
        spec: ReplicaSpec,
        tg: &TargetGroupFixture,
        kube_url: &str,
        aws: Option<&FaultProxy>,
    ) -> Self {
        let metrics = Metrics::default();
        let sdk = gatehouse_provisioner::aws::load_sdk_config(None).await;
        let sdk = match aws {
            Some(proxy) => sdk_via(&sdk, &proxy.url()),
            None => sdk,
        };
        let sdk = match spec.sdk_attempts {
            Some(n) => {
                sdk.to_builder().retry_config(aws_config::retry::RetryConfig::standard().with_max_attempts(n)).build()
            }
            None => sdk,
        };
        let aws = gatehouse_provisioner::aws::Aws::new(&sdk, metrics.api_calls.clone()).expect("region configured");
        let mut config = kube::Config::new(kube_url.parse().expect("url"));
        config.read_timeout = Some(gatehouse_provisioner::cluster::WATCH_READ_TIMEOUT);
        let client = kube::Client::try_from(config).expect("kube client");
        let cluster = Cluster::new(client, kube_url.to_owned(), Duration::from_secs(5));
        let mut settings = tg.settings(Some(Duration::ZERO));
        settings.policy = spec.policy;
        if let Some(cluster) = &spec.cluster {
            settings.target = gatehouse_provisioner::session::TargetSource::Cluster(cluster.clone());
        }
        let config = WatchConfig {
            settings,
            proxy_service: spec.proxy_service.clone(),
            debounce: spec.debounce,
            resync: spec.resync,
            poll: spec.poll,
            backoff: spec.backoff,
            lease: LeaseConfig {
                namespace: "gatehouse".into(),
                name: LEASE.into(),
                identity: spec.identity.clone(),
                duration: spec.lease_duration,
                renew_deadline: spec.renew_deadline,
                retry_period: spec.retry_period,
            },
            shutdown_timeout: Duration::from_secs(5),
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind metrics");
        let addr = listener.local_addr().expect("addr");
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(watch::run(aws, cluster, config, metrics.clone(), listener, async move {
            let _ = stopped.await;
        }));
        Self { metrics, addr, stop: Some(stop), task: Some(task) }
    }

    /// RegisterTargets and DeregisterTargets calls made so far.
    pub fn writes(&self) -> u64 {
        self.metrics.api_calls.snapshot().writes()
    }

    /// Whether this replica leads now (its `leader` gauge).
    pub fn leads(&self) -> bool {
        self.metrics.leader.get() == 1
    }

    /// `gatehouse_provisioner_reconciles_total` with this result, any work.
    pub fn reconciles(&self, result: &str) -> u64 {
        self.count(&format!("gatehouse_provisioner_reconciles_total{{result=\"{result}\","))
    }

    /// `gatehouse_provisioner_reconciles_total` of this work, any result.
    pub fn reconciles_of(&self, work: &str) -> u64 {
        let needle = format!("work=\"{work}\"}} ");
        self.metrics
            .encode()
            .lines()
            .filter(|l| l.starts_with("gatehouse_provisioner_reconciles_total{") && l.contains(&needle))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum()
    }

    fn count(&self, prefix: &str) -> u64 {
        self.metrics
            .encode()
            .lines()
            .filter(|l| l.starts_with(prefix))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum()
    }

    /// Stops like SIGTERM does; the run must end cleanly and in bounded time.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let task = self.task.take().expect("running");
        let result = tokio::time::timeout(Duration::from_secs(15), task).await.expect("watch stops within 15s");
        result.expect("task").expect("watch ends without error");
    }

    /// A GET on the replica's HTTP listener, the whole response as text.
    pub async fn get(&self, path: &str) -> String {
        let mut stream = tokio::net::TcpStream::connect(self.addr).await.expect("connect");
        stream
            .write_all(format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n").as_bytes())
            .await
            .expect("request");
        let mut response = String::new();
        stream.read_to_string(&mut response).await.expect("response");
        response
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        // A test that failed midway must not leave a writer behind.
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

/// The `gatehouse-provisioner` binary built next to the tests, refused when it is older than the
/// provisioner's source (a test in this package cannot make cargo build another package's
/// binary; `cargo build --workspace --all-targets` builds it).
pub fn provisioner_binary() -> std::path::PathBuf {
    let bin = gatehouse_lab::process::workspace_binary("gatehouse-provisioner")
        .unwrap_or_else(|e| panic!("{e:#} (cargo build -p gatehouse-provisioner --bins)"));
    let modified = |p: &std::path::Path| std::fs::metadata(p).and_then(|m| m.modified()).expect("mtime");
    let built = modified(&bin);
    let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../provisioner/src");
    let mut dirs = vec![src];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).expect("provisioner/src") {
            let path = entry.expect("dir entry").path();
            if path.is_dir() {
                dirs.push(path);
                continue;
            }
            assert!(
                modified(&path) <= built,
                "{} is older than {}: rebuild it (cargo build -p gatehouse-provisioner --bins)",
                bin.display(),
                path.display()
            );
        }
    }
    bin
}

/// Polls the target group until `want` holds, at most `within`; returns how long that took.
pub async fn wait_for(
    tg: &TargetGroupFixture,
    within: Duration,
    what: &str,
    want: impl Fn(&BTreeSet<String>) -> bool,
) -> Duration {
    let started = Instant::now();
    loop {
        let now = tg.registered().await;
        if want(&now) {
            return started.elapsed();
        }
        assert!(started.elapsed() < within, "{what} did not happen within {within:?}; registered: {now:?}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Polls `check` until it holds, at most `within`; returns how long that took.
pub async fn eventually(within: Duration, what: &str, mut check: impl FnMut() -> bool) -> Duration {
    let started = Instant::now();
    while !check() {
        assert!(started.elapsed() < within, "{what} did not happen within {within:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    started.elapsed()
}
