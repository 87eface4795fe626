//! The lab: the whole ingress path on one machine. The Terraform example applied against the
//! emulator, demo services on loopback, one `gatehouse-proxy` per "node" (a loopback address
//! such as 127.0.0.11, at the NodePort), a node inventory, and `gatehouse-provisioner` run
//! from the Terraform handshake. The quickstart and the end-to-end tests both drive this.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tokio::process::Command;

use crate::alb::{AlbClient, AlbResponse};
use crate::demo::DemoService;
use crate::files::{LabNode, ProxyConfig, node_inventory_yaml, proxy_config_yaml};
use crate::process::{Managed, workspace_binary};
use crate::terraform::Example;

/// The admin port of every node's proxy (each node has its own address, so they do not clash).
const ADMIN_PORT: u16 = 9901;

/// What to build.
#[derive(Debug, Clone)]
pub struct LabSpec {
    /// Name of the load balancer and target group (the Terraform example's `name`).
    pub name: String,
    pub edge_host: String,
    pub edge_prefix: String,
    /// Logical names of the demo services, e.g. `service.api.hello`.
    pub services: Vec<String>,
    pub nodes: Vec<LabNode>,
    pub node_port: u16,
    pub drain_seconds: u64,
}

impl LabSpec {
    /// Two nodes and two demo services behind `api.example.com`, as in the quickstart.
    /// `first_ip` is the last octet of the first node's loopback address.
    pub fn two_nodes(name: &str, first_ip: u8) -> Self {
        let node = |letter: &str, octet: u8| LabNode::new(&format!("node-{letter}"), IpAddr::from([127, 0, 0, octet]));
        Self {
            name: name.to_owned(),
            edge_host: "api.example.com".to_owned(),
            edge_prefix: "service.api".to_owned(),
            services: vec!["service.api.hello".to_owned(), "service.api.echo".to_owned()],
            nodes: vec![node("a", first_ip), node("b", first_ip + 1)],
            node_port: 30080,
            drain_seconds: 3,
        }
    }
}

/// Reports progress of the long steps.
pub type Progress = Box<dyn Fn(&str) + Send + Sync>;

/// A running lab. Dropping it stops every process it started and destroys what Terraform
/// created; [`Lab::shutdown`] does the same and reports errors.
#[derive(Debug)]
pub struct Lab {
    pub spec: LabSpec,
    workdir: PathBuf,
    endpoint: String,
    example: Example,
    handshake_path: PathBuf,
    /// The Terraform module's `gatehouse` output.
    pub handshake: serde_json::Value,
    services: Vec<DemoService>,
    proxies: BTreeMap<String, Managed>,
    /// How many proxies each node has had: a restarted proxy logs to a file of its own.
    proxy_starts: BTreeMap<String, u32>,
    alb: AlbClient,
}

impl Lab {
    /// Builds the whole path; `workdir` receives configs, the handshake and logs.
    pub async fn start(spec: LabSpec, workdir: &Path, progress: &Progress) -> anyhow::Result<Self> {
        let endpoint = std::env::var("AWS_ENDPOINT_URL").context(
            "AWS_ENDPOINT_URL is not set: start the emulator first (eval \"$(localstack/up)\"), or run ./quickstart or ./run-tests",
        )?;
        std::fs::create_dir_all(workdir)?;

        progress(&format!("terraform: applying terraform/examples/local as {:?} (about a minute)", spec.name));
        let started = Instant::now();
        let mut example = Example::copy("local")?
            .var("name", &spec.name)
            .var("node_port", spec.node_port.to_string())
            .var("aws_endpoint", &endpoint);
        example.init()?;
        example.apply_with_progress(|line| progress(&format!("terraform: {line}")))?;
        let handshake = example.output_json("gatehouse")?;
        let handshake_path = workdir.join("handshake.json");
        std::fs::write(&handshake_path, serde_json::to_vec_pretty(&handshake)?)?;
        progress(&format!(
            "terraform: applied in {:.0?}; handshake in {}",
            started.elapsed(),
            handshake_path.display()
        ));

        let load_balancer = handshake["load_balancer_name"].as_str().context("handshake has no load_balancer_name")?;
        let alb = AlbClient::new(&endpoint, load_balancer);

        let mut services = Vec::new();
        for name in &spec.services {
            services.push(DemoService::start(name).await?);
        }
        let mut lab = Self {
            workdir: workdir.to_owned(),
            endpoint,
            example,
            handshake_path,
            handshake,
            services,
            proxies: BTreeMap::new(),
            proxy_starts: BTreeMap::new(),
            alb,
            spec,
        };
        for node in lab.spec.nodes.clone() {
            lab.start_proxy(&node).await?;
            progress(&format!(
                "node {} ({}): gatehouse-proxy ready on {}:{}",
                node.name, node.ip, node.ip, lab.spec.node_port
            ));
        }
        lab.write_inventory(&lab.spec.nodes.clone())?;
        Ok(lab)
    }

    /// Logical service name -> where its demo service listens.
    pub fn service_addrs(&self) -> BTreeMap<String, SocketAddr> {
        self.services.iter().map(|s| (s.logical_name.clone(), s.addr)).collect()
    }

    /// The file the provisioner reads the target group from.
    pub fn handshake_path(&self) -> &Path {
        &self.handshake_path
    }

    /// The node inventory the provisioner reads.
    pub fn inventory_path(&self) -> PathBuf {
        self.workdir.join("nodes.yaml")
    }

    /// Rewrites the node inventory: what `kubectl get nodes -o yaml` would print now.
    pub fn write_inventory(&self, nodes: &[LabNode]) -> anyhow::Result<()> {
        std::fs::write(self.inventory_path(), node_inventory_yaml(nodes)?)?;
        Ok(())
    }

    /// Rewrites the node inventory and runs `gatehouse-provisioner sync` on it; an error (with
    /// the provisioner's output) unless the sync succeeds.
    pub async fn sync_inventory(&self, nodes: &[LabNode]) -> anyhow::Result<Output> {
        self.write_inventory(nodes)?;
        let output = self.provisioner("sync", &[]).await?;
        if !output.status.success() {
            bail!(
                "gatehouse-provisioner sync failed ({}):\n{}{}",
                output.status,
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Ok(output)
    }

    /// Starts the proxy of one node, or a new one after the previous has exited (a restart:
    /// the new proxy logs to `proxy-<node>.<n>.log`), and waits until it reports ready.
    pub async fn start_proxy(&mut self, node: &LabNode) -> anyhow::Result<()> {
        if let Some(previous) = self.proxies.get_mut(&node.name)
            && !previous.has_exited()
        {
            bail!("{} is still running: stop it (or let it drain) before starting another", previous.name());
        }
        let services = self.service_addrs();
        let config = ProxyConfig {
            node,
            node_port: self.spec.node_port,
            admin: SocketAddr::new(node.ip, ADMIN_PORT),
            edge_host: &self.spec.edge_host,
            edge_prefix: &self.spec.edge_prefix,
            services: &services,
            drain_seconds: self.spec.drain_seconds,
        };
        let config_path = self.workdir.join(format!("proxy-{}.yaml", node.name));
        std::fs::write(&config_path, proxy_config_yaml(&config)?)?;
        let mut command = Command::new(workspace_binary("gatehouse-proxy")?);
        command.arg("--config").arg(&config_path);
        let starts = self.proxy_starts.entry(node.name.clone()).or_default();
        *starts += 1;
        let log = match *starts {
            1 => self.workdir.join(format!("proxy-{}.log", node.name)),
            n => self.workdir.join(format!("proxy-{}.{n}.log", node.name)),
        };
        let mut proxy = Managed::spawn(&format!("gatehouse-proxy on {}", node.name), command, &log)?;
        if let Err(error) = wait_until_ok(&self.ready_url(node), Duration::from_secs(15), &mut proxy).await {
            bail!("{error}\n--- {} ---\n{}", log.display(), proxy.log_tail(20));
        }
        self.proxies.insert(node.name.clone(), proxy);
        Ok(())
    }

    /// The readiness URL of a node's proxy, at the NodePort: the path the target group's
    /// health check requests.
    pub fn ready_url(&self, node: &LabNode) -> String {
        format!("http://{}:{}/_gatehouse/ready", node.ip, self.spec.node_port)
    }

    /// Polls a node's readiness until it answers `want` (at most `within`); returns how long
    /// that took. A connection error counts as not `want`.
    pub async fn wait_readiness(
        &self,
        node: &LabNode,
        want: http::StatusCode,
        within: Duration,
    ) -> anyhow::Result<Duration> {
        self.health_check(node, want, 1, Duration::from_millis(20), within).await
    }

    /// Plays the target group's health check against a node's proxy: requests its readiness
    /// URL every `interval` until `threshold` answers in a row are `want` (the ALB's healthy or
    /// unhealthy threshold), at most `within`; returns how long that took. A connection error
    /// counts as not `want`.
    pub async fn health_check(
        &self,
        node: &LabNode,
        want: http::StatusCode,
        threshold: u32,
        interval: Duration,
        within: Duration,
    ) -> anyhow::Result<Duration> {
        let url = self.ready_url(node);
        let started = Instant::now();
        let mut in_a_row = 0;
        loop {
            let seen = AlbClient::plain_get(&url).await.map(|r| r.status);
            in_a_row = if matches!(seen, Ok(status) if status == want) { in_a_row + 1 } else { 0 };
            if in_a_row >= threshold {
                return Ok(started.elapsed());
            }
            if started.elapsed() > within {
                bail!("{url} did not answer {want} {threshold} time(s) in a row within {within:?} (last: {seen:?})");
            }
            tokio::time::sleep(interval).await;
        }
    }

    /// The proxy process of a node, to signal or wait on.
    pub fn proxy_mut(&mut self, node_name: &str) -> anyhow::Result<&mut Managed> {
        self.proxies.get_mut(node_name).with_context(|| format!("no proxy runs on node {node_name}"))
    }

    /// `/routes` from a node's proxy admin listener.
    pub async fn routes(&self, node: &LabNode) -> anyhow::Result<serde_json::Value> {
        let url = format!("http://{}:{ADMIN_PORT}/routes", node.ip);
        let body = AlbClient::plain_get(&url).await?;
        serde_json::from_slice(&body.body).with_context(|| format!("{url} did not answer JSON"))
    }

    /// Runs `gatehouse-provisioner <subcommand> --handshake .. --nodes-from .. <extra>` to the end.
    pub async fn provisioner(&self, subcommand: &str, extra: &[&str]) -> anyhow::Result<Output> {
        let mut command = Command::new(workspace_binary("gatehouse-provisioner")?);
        command
            .arg(subcommand)
            .arg("--handshake")
            .arg(&self.handshake_path)
            .arg("--nodes-from")
            .arg(self.inventory_path())
            .args(extra)
            .env("AWS_ENDPOINT_URL", &self.endpoint)
            .kill_on_drop(true);
        let output = tokio::time::timeout(Duration::from_secs(120), command.output())
            .await
            .with_context(|| format!("gatehouse-provisioner {subcommand} did not finish within 120 s"))??;
        Ok(output)
    }

    /// A client for the emulated ALB, for load that runs beside the lab's own calls.
    pub fn alb(&self) -> AlbClient {
        self.alb.clone()
    }

    /// `GET <path>` through the emulated ALB, with the edge's Host.
    pub async fn get(&self, path: &str) -> anyhow::Result<AlbResponse> {
        self.alb.get(&self.spec.edge_host, path).await
    }

    /// Stops every proxy (SIGTERM to all at once, so that they drain side by side, then SIGKILL
    /// to any still running after the drain time and a margin) and destroys what Terraform
    /// created.
    pub async fn shutdown(mut self) -> anyhow::Result<()> {
        let grace = Duration::from_secs(self.spec.drain_seconds + 15);
        for proxy in self.proxies.values_mut() {
            if !proxy.has_exited() {
                let _ = proxy.signal_term();
            }
        }
        for proxy in self.proxies.values_mut() {
            if proxy.wait_exit(grace).await.is_err() {
                proxy.kill().await;
            }
        }
        self.example.destroy()
    }
}

/// Polls `url` until it answers 200, the process exits, or `within` passes.
async fn wait_until_ok(url: &str, within: Duration, process: &mut Managed) -> anyhow::Result<()> {
    let deadline = Instant::now() + within;
    loop {
        if let Ok(response) = AlbClient::plain_get(url).await
            && response.status == http::StatusCode::OK
        {
            return Ok(());
        }
        if process.has_exited() {
            bail!("{} exited before it was ready", process.name());
        }
        if Instant::now() > deadline {
            bail!("{} was not ready at {url} within {within:?}", process.name());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
