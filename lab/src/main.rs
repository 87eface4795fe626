//! `gatehouse-lab`: runs the quickstart (see ../quickstart, which starts the emulator first).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use gatehouse_lab::quickstart;

/// The whole ingress path on this machine: emulated ALB (Terraform) -> loopback nodes running
/// gatehouse-proxy -> demo services, with gatehouse-provisioner keeping the target group in step.
/// Needs AWS_ENDPOINT_URL pointing at a MiniStack emulator (./quickstart sets it up).
#[derive(Debug, Parser)]
#[command(name = "gatehouse-lab", version)]
struct Cli {
    /// Stop everything after the demo requests instead of waiting for Ctrl-C.
    #[arg(long)]
    once: bool,
    /// Where configs, the handshake, the node inventory and logs go.
    #[arg(long, default_value = ".run/quickstart")]
    workdir: PathBuf,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match quickstart::run(&cli.workdir, cli.once).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("gatehouse-lab: {error:#}");
            ExitCode::FAILURE
        }
    }
}
