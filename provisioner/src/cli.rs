//! The command line: argument definitions and one runner per subcommand. `main.rs` only parses,
//! sets up logging and exits with the code returned here.

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::aws::{Elb, load_sdk_config};
use crate::diff::{DEFAULT_MAX_DEREGISTER_SHARE, Policy};
use crate::drift::{Expected, ProxyService};
use crate::handshake;
use crate::kube::{self as kube_adapter, ServiceRef};
use crate::lease::LeaseConfig;
use crate::metrics::Metrics;
use crate::nodes::Selector;
use crate::plan::exit;
use crate::sync::{Error, Session, Settings};
use crate::{inventory, watch};

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
    /// Apply the plan once: deregister, then register.
    Sync(SyncArgs),
    /// Keep applying as Nodes and the proxy Service change (leader-elected; /healthz, /metrics).
    Watch(WatchArgs),
    /// Target health as the ALB sees it, next to each node.
    Status(StatusArgs),
}

/// Where the target group comes from.
#[derive(Debug, Args)]
pub struct TargetArgs {
    /// The Terraform module's handshake: `terraform output -json` (whole root) or
    /// `terraform output -json gatehouse`.
    #[arg(long, value_name = "FILE", env = "GATEHOUSE_HANDSHAKE", required_unless_present = "target_group_arn", conflicts_with_all = ["target_group_arn", "node_port"])]
    pub handshake: Option<PathBuf>,
    /// The target group, without a handshake (then its target type is taken as found).
    #[arg(long, value_name = "ARN", requires = "node_port")]
    pub target_group_arn: Option<String>,
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
    /// The proxy's NodePort Service, whose nodePort is checked against the handshake.
    #[arg(long, value_name = "NAMESPACE/NAME", env = "GATEHOUSE_PROXY_SERVICE")]
    pub proxy_service: Option<ServiceRef>,
}

/// The safety policy.
#[derive(Debug, Args)]
pub struct PolicyArgs {
    /// Deregister everything when discovery finds no eligible node.
    #[arg(long)]
    pub allow_empty: bool,
    /// Largest share of registered targets one run may deregister without --force.
    #[arg(long, value_name = "0..1", default_value_t = DEFAULT_MAX_DEREGISTER_SHARE, value_parser = share)]
    pub max_deregister_share: f64,
    /// Deregister more than --max-deregister-share.
    #[arg(long)]
    pub force: bool,
    /// Also deregister foreign targets (registered at another port than the NodePort).
    #[arg(long)]
    pub remove_foreign: bool,
}

impl PolicyArgs {
    fn policy(&self) -> Policy {
        Policy {
            allow_empty: self.allow_empty,
            max_deregister_share: self.max_deregister_share,
            force: self.force,
            remove_foreign: self.remove_foreign,
        }
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
    /// Wait until deregistered targets are drained (`unused`, or the deregistration delay passed).
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
    /// Namespace of the leader-election Lease (default: the client's namespace).
    #[arg(long, value_name = "NAMESPACE", env = "POD_NAMESPACE")]
    pub lease_namespace: Option<String>,
    /// Name of the leader-election Lease.
    #[arg(long, value_name = "NAME", default_value = "gatehouse-provisioner")]
    pub lease_name: String,
    /// How long a lease lasts without renewal (renewed every third of it).
    #[arg(long, value_name = "DURATION", default_value = "15s", value_parser = humantime::parse_duration)]
    pub lease_duration: Duration,
    /// This replica's identity in the Lease (default: POD_NAME, else hostname and pid).
    #[arg(long, value_name = "ID", env = "POD_NAME")]
    pub identity: Option<String>,
}

/// Runs a parsed command line; returns the process exit code.
pub async fn run(cli: Cli) -> u8 {
    let result = match cli.command {
        Command::Plan(args) => plan(args).await,
        Command::Sync(args) => sync(args).await,
        Command::Status(args) => status(args).await,
        Command::Watch(args) => watch(args).await,
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            exit::ERROR
        }
    }
}

/// The expectation and, with a handshake, its region and deregistration delay.
fn expectation(target: &TargetArgs) -> Result<(Expected, Option<String>, Option<Duration>), Error> {
    match (&target.handshake, &target.target_group_arn, target.node_port) {
        (Some(path), _, _) => {
            let h = handshake::load(path)?;
            Ok((Expected::from(&h), Some(h.region.clone()), Some(Duration::from_secs(h.deregistration_delay_seconds))))
        }
        (None, Some(arn), Some(port)) => Ok((
            Expected { target_group_arn: arn.clone(), target_group_name: None, node_port: port, target_type: None },
            None,
            None,
        )),
        // clap enforces one of the two forms.
        _ => unreachable!("clap requires --handshake or --target-group-arn with --node-port"),
    }
}

/// Local input first (handshake, nodes file), so bad input fails before any network call.
async fn open(target: &TargetArgs, selector: &Selector, policy: Policy, metrics: &Metrics) -> Result<Session, Error> {
    let (expected, region, delay) = expectation(target)?;
    let sdk = load_sdk_config(region).await;
    let elb = Elb::new(&sdk, metrics.api_calls.clone())?;
    let settings = Settings { expected, selector: selector.clone(), policy, deregistration_delay: delay };
    Session::open(elb, settings).await
}

/// Nodes and proxy Service facts from the file (already read) or the cluster.
async fn discover(
    nodes: &NodeArgs,
    from_file: Option<Vec<k8s_openapi::api::core::v1::Node>>,
) -> Result<(Vec<k8s_openapi::api::core::v1::Node>, Option<ProxyService>), Error> {
    if let Some(listed) = from_file {
        return Ok((listed, None));
    }
    let client = kube_adapter::client(nodes.cluster.kubeconfig.as_deref()).await?;
    let listed = kube_adapter::list_nodes(&client).await?;
    let proxy = match &nodes.cluster.proxy_service {
        Some(svc) => Some(kube_adapter::proxy_service(&client, svc).await?),
        None => None,
    };
    Ok((listed, proxy))
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
    // Read the nodes file before anything else: a typo there should not cost an AWS call.
    let from_file = args.nodes.nodes_from.as_deref().map(inventory::load).transpose()?;
    let metrics = Metrics::default();
    let session = open(&args.target, &args.nodes.node_selector, args.policy.policy(), &metrics).await?;
    let (nodes, proxy) = discover(&args.nodes, from_file).await?;
    let plan = session.plan(&nodes, proxy.as_ref()).await?;
    match args.output {
        Output::Text => print(&plan.render_text()),
        Output::Json => print_json(&plan.to_json()),
    }
    Ok(plan.exit_code())
}

async fn sync(args: SyncArgs) -> Result<u8, Error> {
    let once = &args.once;
    let from_file = once.nodes.nodes_from.as_deref().map(inventory::load).transpose()?;
    let metrics = Metrics::default();
    let session = open(&once.target, &once.nodes.node_selector, once.policy.policy(), &metrics).await?;
    let (nodes, proxy) = discover(&once.nodes, from_file).await?;
    let plan = session.plan(&nodes, proxy.as_ref()).await?;
    if once.output == Output::Text {
        print(&plan.render_text());
    }
    let applied = session.apply(&plan, args.wait_drain.then_some(args.drain_timeout)).await;
    let calls = metrics.api_calls.snapshot();
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

async fn status(args: StatusArgs) -> Result<u8, Error> {
    let from_file = args.nodes.nodes_from.as_deref().map(inventory::load).transpose()?;
    let metrics = Metrics::default();
    let session = open(&args.target, &args.nodes.node_selector, Policy::default(), &metrics).await?;
    let (nodes, _) = discover(&args.nodes, from_file).await?;
    let status = session.status(&nodes).await?;
    match args.output {
        Output::Text => print(&status.render_text()),
        Output::Json => print_json(&status.to_json()),
    }
    Ok(exit::CLEAN)
}

async fn watch(args: WatchArgs) -> Result<u8, Error> {
    let (expected, region, delay) = expectation(&args.target)?;
    let client = kube_adapter::client(args.cluster.kubeconfig.as_deref()).await?;
    let sdk = load_sdk_config(region).await;
    let metrics = Metrics::default();
    let elb = Elb::new(&sdk, metrics.api_calls.clone())?;
    let identity = args.identity.clone().unwrap_or_else(default_identity);
    let lease = LeaseConfig {
        namespace: args.lease_namespace.clone().unwrap_or_else(|| client.default_namespace().to_owned()),
        name: args.lease_name.clone(),
        identity,
        duration: args.lease_duration,
    };
    let config = watch::WatchConfig {
        settings: Settings {
            expected,
            selector: args.node_selector.clone(),
            policy: args.policy.policy(),
            deregistration_delay: delay,
        },
        proxy_service: args.cluster.proxy_service.clone(),
        debounce: args.debounce,
        resync: args.resync_interval,
        lease,
        shutdown_timeout: Duration::from_secs(10),
    };
    // Bound last: every input above has been validated by now.
    let listener = tokio::net::TcpListener::bind(args.metrics_listen)
        .await
        .map_err(|e| Error::Listen { addr: args.metrics_listen, detail: e.to_string() })?;
    tracing::info!(addr = %args.metrics_listen, "serving /healthz and /metrics");
    watch::run(elb, client, config, metrics, listener, shutdown_signal()).await?;
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
