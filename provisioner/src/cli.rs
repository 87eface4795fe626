//! The command line: argument definitions and one runner per subcommand. `main.rs` only parses,
//! sets up logging and exits with the code returned here. `plan`, `sync` and `status` share one
//! prelude ([`prepare`]): local input first (so a typo costs no network call), then the target
//! group, then the cluster.

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::builder::TypedValueParser as _;
use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::aws::{Aws, load_sdk_config};
use crate::cluster::{self, Cluster, ServiceRef};
use crate::diff::{DEFAULT_MAX_DEREGISTER_SHARE, DEFAULT_MAX_TARGETS, Policy};
use crate::drift::Expected;
use crate::lease::{Leadership, LeaseConfig};
use crate::metrics::Metrics;
use crate::model::TargetGroupArn;
use crate::nodes::{self, Selector};
use crate::plan::{self, ClusterView, NodePortSource, exit};
use crate::session::{Applied, Error, Session, Settings, TargetSource};
use crate::watch::{self, Backoff};
use crate::{drain_hook, handshake, inventory};

/// Keeps the ALB target group created by the gatehouse Terraform module in step with the
/// cluster's nodes. AWS: the default credential chain and region; AWS_ENDPOINT_URL points the
/// SDK at another endpoint (an emulator).
#[derive(Debug, Parser)]
#[command(name = "gatehouse-provisioner", version, max_term_width = 100)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Show what sync would change, and any drift; change nothing.
    /// Exit code: 0 nothing to do, 2 changes or drift pending, 1 error.
    Plan(OnceArgs),
    /// Apply the plan once: deregister, then register (and set the proxy pods' readiness gate).
    Sync(SyncArgs),
    /// Keep applying as the cluster changes (leader-elected; /healthz, /metrics).
    Watch(WatchArgs),
    /// Target health as the ALB sees it, next to each node, with why a node is not a target.
    Status(StatusArgs),
    /// The proxy pod's preStop hook: wait until the provisioner reports this pod's node target
    /// drained (its readiness-gate condition), at most --timeout.
    DrainHook(DrainHookArgs),
}

/// Where the target group comes from: exactly one of `--handshake`, `--cluster`, or
/// `--target-group-arn` with `--node-port`.
#[derive(Debug, Args)]
pub struct TargetArgs {
    /// The Terraform module's handshake: `terraform output -json` (whole root) or
    /// `terraform output -json gatehouse`.
    #[arg(long, value_name = "FILE", env = "GATEHOUSE_HANDSHAKE", required_unless_present_any = ["cluster", "target_group_arn"], conflicts_with_all = ["cluster", "target_group_arn", "node_port"])]
    pub handshake: Option<PathBuf>,
    /// The module's `cluster_name`: the target group is the one it tagged
    /// gatehouse.dev/cluster=NAME, found with DescribeTargetGroups and DescribeTags.
    #[arg(long, value_name = "NAME", env = "GATEHOUSE_CLUSTER", value_parser = cluster_name, conflicts_with_all = ["target_group_arn", "node_port"])]
    pub cluster: Option<String>,
    /// The target group, without a handshake (then its target type is taken as found).
    #[arg(long, value_name = "ARN", requires = "node_port")]
    pub target_group_arn: Option<TargetGroupArn>,
    /// The NodePort every node is registered at, without a handshake.
    #[arg(long, value_name = "PORT", requires = "target_group_arn", value_parser = clap::value_parser!(u16).range(1..))]
    pub node_port: Option<u16>,
}

/// Where the nodes come from.
#[derive(Debug, Args)]
pub struct NodeArgs {
    /// A NodeList as `kubectl get nodes -o yaml` (or json) prints it, instead of a cluster.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["kubeconfig", "proxy_service"])]
    pub nodes_from: Option<PathBuf>,
    #[command(flatten)]
    pub cluster: ClusterArgs,
    /// Only nodes matching this label selector (`a=b,c!=d,e,!f`) receive traffic.
    #[arg(long, value_name = "SELECTOR", env = "GATEHOUSE_NODE_SELECTOR", default_value = "")]
    pub node_selector: Selector,
}

/// How to reach the cluster.
#[derive(Debug, Args)]
pub struct ClusterArgs {
    /// Kubeconfig file (default: KUBECONFIG, ~/.kube/config, then in-cluster).
    #[arg(long, value_name = "FILE")]
    pub kubeconfig: Option<PathBuf>,
    /// The proxy's NodePort Service: its nodePort is checked against the handshake, and a node
    /// is a target only while its EndpointSlices list a ready proxy on it.
    #[arg(long, value_name = "NAMESPACE/NAME", env = "GATEHOUSE_PROXY_SERVICE")]
    pub proxy_service: Option<ServiceRef>,
    /// The longest one Kubernetes API call may take.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = humantime::parse_duration)]
    pub kube_timeout: Duration,
}

/// The safety policy.
#[derive(Debug, Args)]
pub struct PolicyArgs {
    /// Deregister everything when discovery finds no eligible node.
    #[arg(long)]
    pub allow_empty: bool,
    /// Largest share of the registered targets out of service at once: larger removals go in
    /// waves, and more missing nodes than this are refused.
    #[arg(long, value_name = "0..1", default_value_t = DEFAULT_MAX_DEREGISTER_SHARE, value_parser = share)]
    pub max_deregister_share: f64,
    /// No share limit: deregister everything that should go at once.
    #[arg(long)]
    pub force: bool,
    /// Also deregister foreign targets (registered at another port than the NodePort).
    #[arg(long)]
    pub remove_foreign: bool,
    /// Most targets the group may hold (AWS's targets-per-target-group quota, 1000 by default).
    #[arg(long, value_name = "N", default_value_t = DEFAULT_MAX_TARGETS, value_parser = clap::value_parser!(u32).range(1..).map(|n| n as usize))]
    pub max_targets: usize,
    /// When the handshake's NodePort and the proxy Service's disagree, which one is right
    /// (without it, nothing is written).
    #[arg(long, value_name = "SIDE", value_enum)]
    pub node_port_from: Option<NodePortSource>,
}

impl PolicyArgs {
    fn policy(&self) -> Policy {
        Policy {
            allow_empty: self.allow_empty,
            max_deregister_share: self.max_deregister_share,
            force: self.force,
            remove_foreign: self.remove_foreign,
            max_targets: self.max_targets,
        }
    }
}

/// EKS's cluster name rule, which the module's `cluster_name` follows too.
fn cluster_name(s: &str) -> Result<String, String> {
    let mut chars = s.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric());
    let rest_ok = chars.all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if first_ok && rest_ok && s.len() <= 100 {
        Ok(s.to_owned())
    } else {
        Err(format!(
            "{s:?} is not a cluster name (1-100 letters, digits, hyphens or underscores, starting with a letter or digit)"
        ))
    }
}

fn share(s: &str) -> Result<f64, String> {
    let v: f64 = s.parse().map_err(|_| format!("{s:?} is not a number"))?;
    if (0.0..=1.0).contains(&v) { Ok(v) } else { Err(format!("{v} is not between 0 and 1")) }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Text,
    Json,
}

/// `plan`.
#[derive(Debug, Args)]
pub struct OnceArgs {
    #[command(flatten)]
    pub target: TargetArgs,
    #[command(flatten)]
    pub nodes: NodeArgs,
    #[command(flatten)]
    pub policy: PolicyArgs,
    /// `text` like `terraform plan`, or the same content as `json`.
    #[arg(long, value_enum, default_value_t = Output::Text)]
    pub output: Output,
}

/// `sync`.
#[derive(Debug, Args)]
pub struct SyncArgs {
    #[command(flatten)]
    pub once: OnceArgs,
    /// Wait until deregistered targets are drained (`unused`, or the deregistration delay
    /// passed), and go on with later waves.
    #[arg(long)]
    pub wait_drain: bool,
    /// The longest --wait-drain waits before failing.
    #[arg(long, value_name = "DURATION", default_value = "10m", value_parser = humantime::parse_duration)]
    pub drain_timeout: Duration,
}

/// `status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub target: TargetArgs,
    #[command(flatten)]
    pub nodes: NodeArgs,
    /// `text` like `terraform plan`, or the same content as `json`.
    #[arg(long, value_enum, default_value_t = Output::Text)]
    pub output: Output,
}

/// `watch`.
#[derive(Debug, Args)]
pub struct WatchArgs {
    #[command(flatten)]
    pub target: TargetArgs,
    #[command(flatten)]
    pub cluster: ClusterArgs,
    /// Only nodes matching this label selector (`a=b,c!=d,e,!f`) receive traffic.
    #[arg(long, value_name = "SELECTOR", env = "GATEHOUSE_NODE_SELECTOR", default_value = "")]
    pub node_selector: Selector,
    #[command(flatten)]
    pub policy: PolicyArgs,
    /// Where /healthz and /metrics are served (the Prometheus port convention's 91xx range).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:9102")]
    pub metrics_listen: SocketAddr,
    /// Quiet period after the last event before reconciling.
    #[arg(long, value_name = "DURATION", default_value = "200ms", value_parser = humantime::parse_duration)]
    pub debounce: Duration,
    /// Full resync (target group drift + target health) at least this often.
    #[arg(long, value_name = "DURATION", default_value = "5m", value_parser = humantime::parse_duration)]
    pub resync_interval: Duration,
    /// How often target health is read while something waits on it (a readiness gate, a
    /// draining proxy pod, a later wave).
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = humantime::parse_duration)]
    pub poll_interval: Duration,
    /// First wait after a failed reconcile (doubling, with jitter, up to --max-backoff).
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = humantime::parse_duration)]
    pub min_backoff: Duration,
    /// Longest wait after failed reconciles.
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = humantime::parse_duration)]
    pub max_backoff: Duration,
    /// Namespace of the leader-election Lease (default: the client's namespace).
    #[arg(long, value_name = "NAMESPACE", env = "POD_NAMESPACE")]
    pub lease_namespace: Option<String>,
    /// Name of the leader-election Lease.
    #[arg(long, value_name = "NAME", default_value = "gatehouse-provisioner")]
    pub lease_name: String,
    /// How long a lease lasts without renewal: a standby takes over this long after the last
    /// renewal it saw.
    #[arg(long, value_name = "DURATION", default_value = "15s", value_parser = humantime::parse_duration)]
    pub lease_duration: Duration,
    /// The holder stops writing this long after its last successful renewal began (shorter than
    /// --lease-duration).
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = humantime::parse_duration)]
    pub renew_deadline: Duration,
    /// How often the holder renews and a standby tries to acquire (shorter than --renew-deadline).
    #[arg(long, value_name = "DURATION", default_value = "2s", value_parser = humantime::parse_duration)]
    pub retry_period: Duration,
    /// This replica's identity in the Lease (default: POD_NAME, else hostname and pid).
    #[arg(long, value_name = "ID", env = "POD_NAME")]
    pub identity: Option<String>,
}

/// `drain-hook`.
#[derive(Debug, Args)]
pub struct DrainHookArgs {
    /// The proxy pod (set from the downward API).
    #[arg(long, value_name = "NAME", env = "POD_NAME")]
    pub pod: String,
    /// Its namespace (set from the downward API).
    #[arg(long, value_name = "NAMESPACE", env = "POD_NAMESPACE")]
    pub namespace: String,
    /// The longest the hook holds the pod's termination (the target group's deregistration
    /// delay is the natural bound).
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
    /// How often the pod's condition is read.
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = humantime::parse_duration)]
    pub interval: Duration,
    /// Kubeconfig file (default: KUBECONFIG, ~/.kube/config, then in-cluster).
    #[arg(long, value_name = "FILE")]
    pub kubeconfig: Option<PathBuf>,
}

/// Runs a parsed command line; returns the process exit code.
pub async fn run(cli: Cli) -> u8 {
    let result = match cli.command {
        Command::Plan(args) => plan(args).await,
        Command::Sync(args) => sync(args).await,
        Command::Status(args) => status(args).await,
        Command::Watch(args) => watch(args).await,
        Command::DrainHook(args) => drain_hook::run(args).await,
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            exit::ERROR
        }
    }
}

/// Where the target group comes from and, with a handshake or an ARN, the region to fall back
/// on; with a handshake, the deregistration delay.
fn expectation(target: &TargetArgs) -> Result<(TargetSource, Option<String>, Option<Duration>), Error> {
    match (&target.handshake, &target.cluster, &target.target_group_arn, target.node_port) {
        (Some(path), _, _, _) => {
            let h = handshake::load(path)?;
            Ok((
                TargetSource::Expected(Expected::from(&h)),
                Some(h.region.clone()),
                Some(Duration::from_secs(h.deregistration_delay_seconds)),
            ))
        }
        // The region is the default chain's: the group is found where the provisioner runs.
        (None, Some(cluster), _, _) => Ok((TargetSource::Cluster(cluster.clone()), None, None)),
        (None, None, Some(arn), Some(port)) => Ok((
            TargetSource::Expected(Expected {
                target_group_arn: arn.clone(),
                target_group_name: None,
                node_port: port,
                target_type: None,
            }),
            Some(arn.region().to_owned()),
            None,
        )),
        // clap enforces one of the three forms.
        _ => unreachable!("clap requires --handshake, --cluster, or --target-group-arn with --node-port"),
    }
}

/// Everything `plan`, `sync` and `status` start from.
struct Prepared {
    session: Session,
    view: ClusterView,
    /// The cluster, when discovery read one (for the readiness gates).
    cluster: Option<Cluster>,
    metrics: Metrics,
}

/// The one prelude: the handshake and the nodes file (local, so bad input costs no network
/// call), the target group, then the cluster.
async fn prepare(
    target: &TargetArgs,
    nodes: &NodeArgs,
    policy: Policy,
    node_port_from: Option<NodePortSource>,
) -> Result<Prepared, Error> {
    let (target, region, delay) = expectation(target)?;
    let from_file = nodes.nodes_from.as_deref().map(inventory::load).transpose()?;
    let metrics = Metrics::default();
    let aws = Aws::new(&load_sdk_config(region).await, metrics.api_calls.clone())?;
    let settings =
        Settings { target, selector: nodes.node_selector.clone(), policy, deregistration_delay: delay, node_port_from };
    let session = Session::open(aws, settings).await?;
    let (listed, proxy, cluster) = match from_file {
        Some(listed) => (listed, None, None),
        None => {
            let c = &nodes.cluster;
            // Reads may take a little longer than a call: the call's own bound names the server.
            let read_timeout = c.kube_timeout + Duration::from_secs(1);
            let cluster = Cluster::connect(c.kubeconfig.as_deref(), c.kube_timeout, read_timeout).await?;
            let listed = cluster.list_nodes().await?;
            let proxy = match &c.proxy_service {
                Some(svc) => Some(cluster.proxy_view(svc).await?),
                None => None,
            };
            (listed, proxy, Some(cluster))
        }
    };
    let view = ClusterView { nodes: nodes::views(&listed, &nodes.node_selector), proxy };
    Ok(Prepared { session, view, cluster, metrics })
}

fn print(text: &str) {
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes());
    let _ = out.flush();
}

fn print_json(v: &serde_json::Value) {
    print(&format!("{}\n", serde_json::to_string_pretty(v).unwrap_or_default()));
}

async fn plan(args: OnceArgs) -> Result<u8, Error> {
    let p = prepare(&args.target, &args.nodes, args.policy.policy(), args.policy.node_port_from).await?;
    let observed = p.session.observe().await?;
    let plan = p.session.plan(&p.view, &observed);
    match args.output {
        Output::Text => print(&plan.render_text()),
        Output::Json => print_json(&plan.to_json()),
    }
    Ok(plan.exit_code())
}

async fn sync(args: SyncArgs) -> Result<u8, Error> {
    let once = &args.once;
    let p = prepare(&once.target, &once.nodes, once.policy.policy(), once.policy.node_port_from).await?;
    let observed = p.session.observe().await?;
    let plan = p.session.plan(&p.view, &observed);
    if once.output == Output::Text {
        print(&plan.render_text());
    }
    let applied = apply_waves(&p, plan.clone(), observed, &args).await;
    let calls = p.metrics.api_calls.snapshot();
    if once.output == Output::Json {
        let mut v = plan.to_json();
        v["applied"] = applied.as_ref().map_or(serde_json::Value::Null, |a| serde_json::json!(a));
        v["api_calls"] = serde_json::json!({"reads": calls.reads(), "writes": calls.writes()});
        print_json(&v);
    }
    let applied = applied?;
    if once.output == Output::Text {
        print(&format!(
            "\n{} ({} AWS read calls, {} write calls.)\n",
            applied.summary(),
            calls.reads(),
            calls.writes()
        ));
    }
    applied.into_result()?;
    Ok(exit::CLEAN)
}

/// Applies `plan`; with `--wait-drain`, waits for its deregistrations to drain and goes on with
/// the later waves, each planned anew once the last one has drained. Then sets the readiness
/// gates from the target group as it is now (a registration starts `initial`).
async fn apply_waves(
    p: &Prepared,
    mut plan: plan::Plan,
    mut observed: Vec<crate::model::ObservedTarget>,
    args: &SyncArgs,
) -> Result<Applied, Error> {
    let leadership = Leadership::always();
    let started = tokio::time::Instant::now();
    let mut wave = p.session.apply(&plan, &leadership).await?;
    let mut total = wave.clone();
    // A blocked or refused plan makes no progress by waiting.
    while args.wait_drain && plan.blocked.is_none() && plan.diff.refusal.is_none() {
        // This wave's deregistrations, or else the earlier wave the plan waits for.
        let port = plan.target_group.spec.port;
        let draining: Vec<crate::model::Target> = if wave.deregistered.is_empty() {
            plan.diff.draining.iter().filter(|c| c.target.port == port).map(|c| c.target.clone()).collect()
        } else {
            wave.deregistered.clone()
        };
        if !draining.is_empty() {
            let remaining = args.drain_timeout.saturating_sub(started.elapsed());
            total.drained = Some(p.session.wait_drained(&draining, remaining).await?);
        }
        if plan.diff.later.is_empty() || draining.is_empty() && !wave.has_writes() {
            break;
        }
        observed = p.session.observe().await?;
        plan = p.session.plan(&p.view, &observed);
        if args.once.output == Output::Text {
            print(&format!(
                "\nNext wave: {} to deregister, {} after it.\n",
                plan.diff.deregister.len(),
                plan.diff.later.len()
            ));
        }
        wave = p.session.apply(&plan, &leadership).await?;
        total = merge(&total, &wave);
    }
    if let Some(cluster) = &p.cluster {
        let after = if total.registered.is_empty() {
            plan::predicted(&observed, &plan.diff)
        } else {
            p.session.observe().await?
        };
        let updates = plan::gate_updates(&p.view, plan.target_group.spec, &after);
        for (_, result) in cluster.set_gates(&updates, &leadership).await {
            result?;
        }
    }
    Ok(total)
}

/// The waves of one `sync --wait-drain`, summed; what is held back is the last wave's.
fn merge(earlier: &Applied, next: &Applied) -> Applied {
    let mut registered = earlier.registered.clone();
    registered.extend(next.registered.iter().cloned());
    let mut deregistered = earlier.deregistered.clone();
    deregistered.extend(next.deregistered.iter().cloned());
    Applied {
        registered,
        deregistered,
        drained: earlier.drained.clone(),
        later: next.later,
        problem: next.problem.clone(),
    }
}

async fn status(args: StatusArgs) -> Result<u8, Error> {
    let p = prepare(&args.target, &args.nodes, Policy::default(), None).await?;
    let observed = p.session.observe().await?;
    let status = p.session.status(&p.view, &observed);
    match args.output {
        Output::Text => print(&status.render_text()),
        Output::Json => print_json(&status.to_json()),
    }
    Ok(exit::CLEAN)
}

async fn watch(args: WatchArgs) -> Result<u8, Error> {
    let (target, region, delay) = expectation(&args.target)?;
    let identity = args.identity.clone().unwrap_or_else(default_identity);
    let c = &args.cluster;
    let cluster = Cluster::connect(c.kubeconfig.as_deref(), c.kube_timeout, cluster::WATCH_READ_TIMEOUT).await?;
    let lease = LeaseConfig {
        namespace: args.lease_namespace.clone().unwrap_or_else(|| cluster.default_namespace().to_owned()),
        name: args.lease_name.clone(),
        identity,
        duration: args.lease_duration,
        renew_deadline: args.renew_deadline,
        retry_period: args.retry_period,
    };
    lease.validate().map_err(Error::Invalid)?;
    let metrics = Metrics::default();
    let aws = Aws::new(&load_sdk_config(region).await, metrics.api_calls.clone())?;
    let config = watch::WatchConfig {
        settings: Settings {
            target,
            selector: args.node_selector.clone(),
            policy: args.policy.policy(),
            deregistration_delay: delay,
            node_port_from: args.policy.node_port_from,
        },
        proxy_service: c.proxy_service.clone(),
        debounce: args.debounce,
        resync: args.resync_interval,
        poll: args.poll_interval,
        backoff: Backoff { min: args.min_backoff, max: args.max_backoff.max(args.min_backoff) },
        lease,
        shutdown_timeout: Duration::from_secs(10),
    };
    // Bound last: every input above has been validated by now.
    let listener = tokio::net::TcpListener::bind(args.metrics_listen)
        .await
        .map_err(|e| Error::Listen { addr: args.metrics_listen, detail: e.to_string() })?;
    tracing::info!(addr = %args.metrics_listen, "serving /healthz and /metrics");
    watch::run(aws, cluster, config, metrics, listener, shutdown_signal()).await?;
    Ok(exit::CLEAN)
}

fn default_identity() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "gatehouse-provisioner".to_owned());
    format!("{host}-{}", std::process::id())
}

/// SIGTERM (Kubernetes stopping the pod) or Ctrl-C.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
    tracing::info!("shutting down");
}
