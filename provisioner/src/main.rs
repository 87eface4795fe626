//! `gatehouse-provisioner`: parse, set up logging, run, exit with the command's code.

use std::io::IsTerminal as _;

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
    // One-shot commands print their result on stdout and an error as one sentence, so their
    // logs are off unless asked for (RUST_LOG): the SDK's credential and region warnings, and
    // kube's HTTP trace layer (every 5xx at ERROR), would only repeat that sentence, at length.
    let default = if matches!(cli.command, Command::Watch(_)) { "info" } else { "off" };
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default)),
        )
        .init();
    std::process::ExitCode::from(run(cli).await)
}
