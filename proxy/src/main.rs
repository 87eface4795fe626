//! `gatehouse-proxy`: validate the config, bind, serve, drain on SIGTERM.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use gatehouse_proxy::{Config, Proxy};

/// Edge proxy that routes by the gatehouse naming convention.
#[derive(Debug, Parser)]
#[command(version, args_conflicts_with_subcommands = true)]
struct Cli {
    /// Configuration file (YAML); see gatehouse-proxy.example.yaml.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Traffic listener address; overrides `listen` in the file.
    #[arg(long, value_name = "ADDR")]
    listen: Option<std::net::SocketAddr>,
    /// Admin listener address; overrides `admin_listen` in the file.
    #[arg(long, value_name = "ADDR")]
    admin_listen: Option<std::net::SocketAddr>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Validate the configuration and print the route table; binds nothing.
    Check {
        /// Configuration file (YAML) to validate.
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
    },
}

/// Exit code for a configuration the proxy refuses (as for a usage error).
const EXIT_CONFIG: u8 = 2;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let (path, check) = match (&cli.command, &cli.config) {
        (Some(Command::Check { config }), _) => (config.clone(), true),
        (None, Some(config)) => (config.clone(), false),
        (None, None) => {
            eprintln!("gatehouse-proxy: --config FILE is required (see --help)");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let mut settings = match Config::load(&path) {
        Ok(settings) => settings,
        Err(e) => {
            eprintln!("gatehouse-proxy: invalid configuration: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    if let Some(listen) = cli.listen {
        settings.config.listen = listen;
    }
    if let Some(admin) = cli.admin_listen {
        settings.config.admin_listen = admin;
    }
    if check {
        return print_check(&settings);
    }

    tracing_subscriber::fmt()
        .json()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stdout)
        .init();

    // One worker (TOKIO_WORKER_THREADS=1, as the benchmark and a one-core pod run it) gets
    // the current-thread scheduler: same work, no cross-thread wake-ups or work stealing.
    // Otherwise the multi-thread scheduler honours TOKIO_WORKER_THREADS itself.
    let one_worker = std::env::var("TOKIO_WORKER_THREADS").is_ok_and(|v| v.trim() == "1");
    let mut builder = if one_worker {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    };
    let runtime = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("gatehouse-proxy: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(run(settings))
}

async fn run(settings: gatehouse_proxy::Settings) -> ExitCode {
    let proxy = match Proxy::bind(settings).await {
        Ok(proxy) => proxy,
        Err(e) => {
            eprintln!("gatehouse-proxy: {e}");
            return ExitCode::FAILURE;
        }
    };
    eprintln!("gatehouse-proxy listening on {} (admin {})", proxy.traffic_addr(), proxy.admin_addr());
    // Registered once, for both signals: a listener registered after the first signal may
    // see that same signal again and take it for the second.
    let mut signals = match ShutdownSignals::install() {
        Ok(signals) => signals,
        Err(e) => {
            eprintln!("gatehouse-proxy: cannot install signal handlers: {e}");
            return ExitCode::FAILURE;
        }
    };
    signals.next().await;
    eprintln!("gatehouse-proxy draining");
    proxy.start_drain();
    // A second signal means "now": skip the rest of the drain.
    tokio::select! {
        () = proxy.wait() => {}
        () = signals.next() => eprintln!("gatehouse-proxy: second signal, exiting without finishing the drain"),
    }
    ExitCode::SUCCESS
}

/// SIGTERM and SIGINT, either of them.
struct ShutdownSignals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl ShutdownSignals {
    fn install() -> std::io::Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Self { term: signal(SignalKind::terminate())?, int: signal(SignalKind::interrupt())? })
    }

    async fn next(&mut self) {
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
        }
    }
}

fn print_check(settings: &gatehouse_proxy::Settings) -> ExitCode {
    let config = &settings.config;
    println!("configuration OK");
    println!("listen {} (admin {})", config.listen, config.admin_listen);
    for edge in settings.edges.iter() {
        println!("edge {} -> {}.*", edge.host(), edge.prefix());
        if let Some(services) = &settings.static_services {
            for (service, endpoints) in services {
                if let Some(segment) = edge.segment_for_service(service) {
                    let eps: Vec<String> = endpoints.iter().map(ToString::to_string).collect();
                    println!("  /{segment}/ -> {}.{segment} ({service}) [{}]", edge.prefix(), eps.join(", "));
                }
            }
        }
    }
    if settings.static_services.is_none() {
        println!("discovery: Kubernetes (routes appear at runtime; see /routes on the admin listener)");
    }
    ExitCode::SUCCESS
}
