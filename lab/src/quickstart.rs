//! The quickstart: builds the lab, runs the provisioner's plan and sync from the Terraform
//! handshake, sends requests through the emulated ALB and shows who answered each.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, bail};

use crate::demo::DemoReply;
use crate::lab::{Lab, LabSpec, Progress};

/// Demo requests: (path, what it shows).
const REQUESTS: &[&str] =
    &["/hello/greet?name=newcomer", "/echo/orders/42?expand=items", "/hello", "/echo/", "/nope/x", "/echo/../hello"];

/// At most this many requests are sent to see every node answer (targets are picked at random).
const MAX_SPREAD_REQUESTS: usize = 40;

pub async fn run(workdir: &Path, once: bool) -> anyhow::Result<()> {
    let progress: Progress = Box::new(|line| eprintln!("  {line}"));
    heading("building the ingress path");
    let lab = Lab::start(LabSpec::two_nodes("gatehouse-quickstart", 11), workdir, &progress).await?;
    let outcome = demo(&lab).await;
    if outcome.is_ok() && !once {
        let curl = format!(
            "curl -H 'Host: {}' {}/_alb/{}/echo/anything",
            lab.spec.edge_host,
            std::env::var("AWS_ENDPOINT_URL").unwrap_or_default(),
            lab.handshake["load_balancer_name"].as_str().unwrap_or_default()
        );
        heading("running; Ctrl-C stops everything");
        println!("  try: {curl}");
        println!("  logs, configs, handshake and node inventory: {}", workdir.display());
        tokio::signal::ctrl_c().await.context("cannot wait for Ctrl-C")?;
    }
    heading("stopping the proxies and destroying the Terraform example");
    let stopped = lab.shutdown().await;
    outcome.and(stopped)
}

async fn demo(lab: &Lab) -> anyhow::Result<()> {
    heading("gatehouse-provisioner plan (from the Terraform handshake and the node inventory)");
    let plan = lab.provisioner("plan", &[]).await?;
    print_output(&plan);
    if plan.status.code() != Some(2) {
        bail!("plan should report pending registrations (exit 2), got {:?}", plan.status.code());
    }

    heading("gatehouse-provisioner sync");
    let sync = lab.provisioner("sync", &[]).await?;
    print_output(&sync);
    if !sync.status.success() {
        bail!("sync failed");
    }

    heading("gatehouse-provisioner plan, again");
    let again = lab.provisioner("plan", &[]).await?;
    print_output(&again);
    if again.status.code() != Some(0) {
        bail!("plan after sync should have nothing to do (exit 0), got {:?}", again.status.code());
    }

    heading("route table of node-a (admin /routes)");
    let routes = lab.routes(&lab.spec.nodes[0]).await?;
    for edge in routes["edges"].as_array().into_iter().flatten() {
        for service in edge["services"].as_array().into_iter().flatten() {
            println!(
                "  {}{:<8} -> {:<18} Service {:<18} endpoints {}",
                edge["host"].as_str().unwrap_or_default(),
                service["path"].as_str().unwrap_or_default(),
                service["logical_service"].as_str().unwrap_or_default(),
                service["service"].as_str().unwrap_or_default(),
                service["endpoints"]
            );
        }
    }

    let load_balancer = lab.handshake["load_balancer_name"].as_str().unwrap_or_default();
    heading(&format!("requests through the emulated ALB {load_balancer}, Host: {}", lab.spec.edge_host));
    println!("  {:<32} {:>6}  {:<8} {:<20} service saw", "request", "status", "node", "service");
    for path in REQUESTS {
        let response = lab.get(path).await?;
        let reply: Option<DemoReply> = serde_json::from_slice(&response.body).ok();
        match reply {
            Some(r) => println!(
                "  {:<32} {:>6}  {:<8} {:<20} {}",
                path,
                response.status.as_u16(),
                node_of(&r),
                r.service,
                r.path
            ),
            None => println!(
                "  {:<32} {:>6}  {:<8} {:<20} {}",
                path,
                response.status.as_u16(),
                "-",
                "(answered by the proxy)",
                String::from_utf8_lossy(&response.body).trim()
            ),
        }
    }

    let mut answered: BTreeMap<String, usize> = BTreeMap::new();
    for _ in 0..MAX_SPREAD_REQUESTS {
        let response = lab.get("/hello/").await?;
        let reply: DemoReply = serde_json::from_slice(&response.body).with_context(|| {
            format!("unexpected answer {}: {}", response.status, String::from_utf8_lossy(&response.body))
        })?;
        *answered.entry(node_of(&reply)).or_default() += 1;
        if answered.len() == lab.spec.nodes.len() && answered.values().sum::<usize>() >= 10 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let spread: Vec<String> = answered.iter().map(|(node, n)| format!("{node} {n}")).collect();
    heading(&format!("GET /hello/ x{}: answered by {}", answered.values().sum::<usize>(), spread.join(", ")));
    Ok(())
}

/// The node whose proxy forwarded a request, from the `Via` it added (`1.1 node-a`).
pub fn node_of(reply: &DemoReply) -> String {
    reply
        .via
        .as_deref()
        .and_then(|via| via.rsplit(',').next())
        .and_then(|hop| hop.split_whitespace().nth(1))
        .unwrap_or("?")
        .to_owned()
}

fn heading(text: &str) {
    println!("\n==> {text}");
}

fn print_output(output: &std::process::Output) {
    print!("{}", indent(&String::from_utf8_lossy(&output.stdout)));
    let stderr = String::from_utf8_lossy(&output.stderr);
    if !stderr.trim().is_empty() {
        print!("{}", indent(&stderr));
    }
}

fn indent(text: &str) -> String {
    text.lines().map(|line| format!("  {line}\n")).collect()
}
