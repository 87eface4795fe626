//! `gatehouse-provisioner`: parse, set up logging, run, exit with the command's code.

use clap::Parser;
use gatehouse_provisioner::cli::{Cli, Command, run};

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            // clap exits 2 on usage errors, which `plan` reserves for "changes pending".
            return std::process::ExitCode::from(if e.use_stderr() { 1 } else { 0 });
        }
    };
    // One-shot commands print their result on stdout and an error as one sentence; logs stay
    // quiet unless asked (RUST_LOG). kube's HTTP trace layer logs every 5xx and connection error
    // at ERROR, which would only repeat that sentence.
    let default =
        if matches!(cli.command, Command::Watch(_)) { "info" } else { "warn,kube_client::client::builder=off" };
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default)),
        )
        .init();
    std::process::ExitCode::from(run(cli).await)
}
