//! The whole ingress path, end to end, all traffic entering through the emulated ALB listener:
//! Terraform example applied against MiniStack -> target group kept by gatehouse-provisioner ->
//! gatehouse-proxy on three loopback "nodes" -> demo services. The same lab runs the quickstart.
//!
//! One lab, one apply (about a minute), four acts in order: the path works through every node;
//! a node removed from the inventory is deregistered and the rest still serve; a proxy drained
//! with SIGTERM while requests flow loses none of them; and under steady load through two node
//! targets, each proxy restarted in turn and a node removed and re-added lose none either.
//!
//! What stands in for the ALB's health check. MiniStack's data plane (1.5.33,
//! `ministack/services/alb.py`, `_forward_to_tg`) sends each request to `random.choice` of the
//! target group's registered targets, over a new connection, and answers 502 when that connect
//! fails. It never health-checks (DescribeTargetHealth reports every target `healthy`) and it
//! has no deregistration delay: a DeregisterTargets call takes the target out of the choice for
//! the next request, while requests already sent to it finish. On AWS the target group's health
//! check (`/_gatehouse/ready` at the NodePort) sees a draining proxy's 503 and stops new requests
//! to it while the proxy keeps serving for its drain time, and sees a new proxy's 200 before
//! sending to it again. Here the test plays that checker ([`Lab::health_check`]: the same
//! readiness URL, the module's thresholds of 2 answers in a row, every [`CHECK_INTERVAL`]), and
//! acts on what it sees through the provisioner, which is the only thing that can change the
//! emulator's routing: a node whose proxy is unhealthy is cordoned and synced (deregistered)
//! well within the drain time; a node whose new proxy is healthy is uncordoned and synced
//! (registered). A proxy that is registered is therefore always ready, as on AWS.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gatehouse_lab::demo::DemoReply;
use gatehouse_lab::files::LabNode;
use gatehouse_lab::quickstart::node_of;
use gatehouse_lab::{Lab, LabSpec, Progress};
use http::StatusCode;
use tokio::task::JoinHandle;

/// The interval of the stand-in health check (see above): with 2 checks in a row, a draining
/// node is out of rotation about half a second after SIGTERM, well within the 5 s drain.
const CHECK_INTERVAL: Duration = Duration::from_millis(250);

fn spec() -> LabSpec {
    let node = |name: &str, octet: u8| LabNode::new(name, IpAddr::from([127, 0, 0, octet]));
    LabSpec {
        name: format!("gh-e2e-{}", std::process::id()),
        edge_host: "api.example.com".into(),
        edge_prefix: "service.api".into(),
        services: vec!["service.api.hello".into(), "service.api.echo".into()],
        // Addresses of their own, so the quickstart (127.0.0.11-12) can run beside the tests.
        nodes: vec![node("node-a", 21), node("node-b", 22), node("node-c", 23)],
        node_port: 30080,
        drain_seconds: 5,
    }
}

/// Sends `count` requests through the ALB and returns, per node, the replies it forwarded.
/// Any non-200 or non-demo answer fails the test, naming the request.
async fn spread(lab: &Lab, path: &str, count: usize) -> BTreeMap<String, Vec<DemoReply>> {
    let mut by_node: BTreeMap<String, Vec<DemoReply>> = BTreeMap::new();
    for i in 0..count {
        let response = lab.get(path).await.unwrap_or_else(|e| panic!("request {i} to {path}: {e:#}"));
        assert_eq!(
            response.status,
            StatusCode::OK,
            "request {i} to {path}: {}",
            String::from_utf8_lossy(&response.body)
        );
        let reply: DemoReply = serde_json::from_slice(&response.body).expect("a demo service answered");
        by_node.entry(node_of(&reply)).or_default().push(reply);
    }
    by_node
}

fn stdout(output: &std::process::Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr))
}

/// Whether the provisioner's output has a change line (`- deregister` / `+ register`) for the
/// node's target at the NodePort.
fn names_change(output: &std::process::Output, change: &str, node: &LabNode) -> bool {
    let target = format!("{}:30080", node.ip);
    stdout(output).lines().any(|line| line.contains(change) && line.contains(&target))
}

/// The node as `kubectl cordon` leaves it.
fn cordoned(node: &LabNode) -> LabNode {
    LabNode { unschedulable: true, ..node.clone() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_travel_alb_to_node_proxy_to_the_named_service_and_survive_node_changes() {
    let workdir = tempfile::tempdir().expect("temp dir");
    let progress: Progress = Box::new(|line| println!("lab: {line}"));
    let mut lab = Lab::start(spec(), workdir.path(), &progress).await.expect("lab starts");
    let [a, b, c] = [0, 1, 2].map(|i| lab.spec.nodes[i].clone());

    // ---- act 1: plan, sync, and traffic through every node to the right service ------------
    let plan = lab.provisioner("plan", &[]).await.expect("plan runs");
    let text = stdout(&plan);
    assert_eq!(plan.status.code(), Some(2), "plan with pending registrations exits 2:\n{text}");
    for node in [&a, &b, &c] {
        assert!(text.contains(&format!("{}:30080", node.ip)), "plan registers {} at the NodePort:\n{text}", node.ip);
    }
    let sync = lab.provisioner("sync", &[]).await.expect("sync runs");
    assert!(sync.status.success(), "sync succeeds:\n{}", stdout(&sync));
    let again = lab.provisioner("plan", &[]).await.expect("plan runs");
    assert_eq!(again.status.code(), Some(0), "nothing left to do after sync:\n{}", stdout(&again));

    let hello = lab.get("/hello/greet?name=e2e").await.expect("hello answers");
    assert_eq!(hello.status, StatusCode::OK);
    let reply: DemoReply = serde_json::from_slice(&hello.body).expect("demo reply");
    assert_eq!(reply.service, "service.api.hello");
    assert_eq!(reply.path, "/greet?name=e2e", "the prefix is stripped, the query kept");
    assert!(reply.x_request_id.is_some(), "the proxy passes a request id on");

    let echo = spread(&lab, "/echo/orders/42", 60).await;
    for (node, replies) in &echo {
        for reply in replies {
            assert_eq!(reply.service, "service.api.echo", "{node} routed /echo to the wrong service");
            assert_eq!(reply.path, "/orders/42");
        }
    }
    let nodes: Vec<&String> = echo.keys().collect();
    assert_eq!(nodes, ["node-a", "node-b", "node-c"], "every registered node serves (60 random picks)");

    let unknown = lab.get("/nope/x").await.expect("answers");
    assert_eq!(unknown.status, StatusCode::NOT_FOUND, "a service nobody deployed is 404");
    let traversal = lab.get("/echo/%2e%2e/hello").await.expect("answers");
    assert_eq!(traversal.status, StatusCode::BAD_REQUEST, "a dot segment never escapes its service");

    // ---- act 2: a node leaves the inventory; sync deregisters it; the rest still serve ------
    lab.write_inventory(&[a.clone(), b.clone()]).expect("inventory");
    let sync = lab.provisioner("sync", &[]).await.expect("sync runs");
    let text = stdout(&sync);
    assert!(sync.status.success(), "sync succeeds:\n{text}");
    assert!(text.contains(&c.ip.to_string()), "sync names the deregistered node-c target:\n{text}");
    let after = spread(&lab, "/hello/", 40).await;
    assert!(!after.contains_key("node-c"), "a deregistered node receives nothing: {:?}", after.keys());
    assert_eq!(after.len(), 2, "node-a and node-b still serve: {:?}", after.keys());

    // ---- act 3: drain node-b under load: readiness fails, the provisioner deregisters it,
    // the proxy exits; no request fails ----------------------------------------------------
    let load = Load::start(&lab, 2, Duration::from_secs(60), 5_000);
    tokio::time::sleep(Duration::from_millis(500)).await;

    let drained_at = Instant::now();
    lab.proxy_mut("node-b").expect("node-b proxy").signal_term().expect("SIGTERM");
    // Readiness fails at once (the signal is handled asynchronously: allow it 2 s) while the
    // proxy is still listening: what the ALB health check sees.
    lab.wait_readiness(&b, StatusCode::SERVICE_UNAVAILABLE, Duration::from_secs(2))
        .await
        .expect("a draining proxy reports not ready");

    // What takes the node out: it is cordoned, and the provisioner deregisters it.
    let sync = lab.sync_inventory(&[a.clone(), cordoned(&b)]).await.expect("sync deregisters the cordoned node");
    assert!(names_change(&sync, "- deregister", &b), "sync deregisters node-b:\n{}", stdout(&sync));
    assert!(
        drained_at.elapsed() < Duration::from_secs(5),
        "deregistered within the drain time ({:?})",
        drained_at.elapsed()
    );

    let exit = lab.proxy_mut("node-b").expect("node-b proxy").wait_exit(Duration::from_secs(20)).await;
    let exit = exit.expect("the drained proxy exits by itself");
    assert!(exit.success(), "the drained proxy exits cleanly: {exit:?}");

    // Keep the load on past the proxy's exit, then stop it.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let samples = load.finish().await;
    let all = Tally::of(&samples, Duration::ZERO, Duration::MAX);
    println!("drain under load: {} ok, {} failed, by node {:?}", all.ok(), all.failed.len(), all.by_node);
    all.assert_none_failed("the drain of node-b");
    assert!(all.served_by("node-b") > 0, "node-b served until it was deregistered: {:?}", all.by_node);
    assert!(all.ok() >= 20, "the load kept flowing ({} requests)", all.ok());

    // ---- act 4: rollouts under steady load through two node targets -----------------------
    rollout_under_load(&mut lab, &a, &b).await;

    lab.shutdown().await.expect("clean shutdown");
}

// ---- act 4 ---------------------------------------------------------------------------------

/// Act 4, rollouts: under steady load through node-a and node-b, restart each proxy in turn as
/// designed, then remove node-b from the inventory and add it back; no request may fail, and
/// traffic must visibly move (both nodes serve in every phase; a node out of rotation serves
/// nothing; a restarted or re-added node serves again before the next step).
async fn rollout_under_load(lab: &mut Lab, a: &LabNode, b: &LabNode) {
    // Two node targets again: node-b gets a proxy back (act 3 drained it) and is uncordoned.
    lab.start_proxy(b).await.expect("node-b's proxy starts again");
    let sync = lab.sync_inventory(&[a.clone(), b.clone()]).await.expect("sync");
    assert!(names_change(&sync, "+ register", b), "sync registers node-b again:\n{}", stdout(&sync));

    // Bounded whatever happens: 3 minutes, 60,000 requests (the act takes about 17 s).
    let load = Load::start(lab, 3, Duration::from_secs(180), 60_000);
    let mut phases: Vec<(String, Duration)> = vec![("steady, node-a and node-b".into(), Duration::ZERO)];
    hold(&load, Duration::ZERO, Duration::from_secs(2), &[a, b], 50).await;

    // One node at a time, as the DaemonSet's rolling update (maxUnavailable 1); the other node
    // carries the traffic meanwhile (checked below, from the samples).
    let mut restarts = Vec::new();
    for node in [a, b] {
        phases.push((format!("restart {}'s proxy", node.name), load.at()));
        restarts.push(restart_proxy(lab, &load, node, &[a, b]).await);
    }

    // A node leaves (kubectl delete node): sync deregisters it; its proxy keeps running, as
    // the instance would until it is terminated. Then it comes back and sync registers it.
    phases.push((format!("remove {} and re-add it", b.name), load.at()));
    let remove_started = load.at();
    let sync = lab.sync_inventory(std::slice::from_ref(a)).await.expect("sync");
    let removed = load.at();
    assert!(names_change(&sync, "- deregister", b), "sync deregisters the removed node:\n{}", stdout(&sync));
    // Out for a while: node-a alone carries the load.
    hold(&load, removed, Duration::from_millis(1500), &[a], 100).await;
    let readd_started = load.at();
    let sync = lab.sync_inventory(&[a.clone(), b.clone()]).await.expect("sync");
    let readded = load.at();
    assert!(names_change(&sync, "+ register", b), "sync registers the re-added node:\n{}", stdout(&sync));
    let back = load.wait_served(&b.name, readded, 1, Duration::from_secs(10)).await.expect("node-b serves again");

    phases.push(("steady again, node-a and node-b".into(), load.at()));
    hold(&load, load.at(), Duration::from_secs(2), &[a, b], 50).await;
    let cut_short = load.cut_short();
    let samples = load.finish().await;

    // ---- the numbers -------------------------------------------------------------------
    let end = samples.iter().map(|s| s.started).max().unwrap_or_default() + Duration::from_millis(1);
    let all = Tally::of(&samples, Duration::ZERO, end);
    eprintln!(
        "rollout under load: {} requests, {} failed, in {:.1} s ({:.0} req/s, 3 loops); by node {:?}",
        all.requests,
        all.failed.len(),
        end.as_secs_f64(),
        all.requests as f64 / end.as_secs_f64(),
        all.by_node
    );
    eprintln!("  {:<34} {:>8} {:>9} {:>7} {:>7} {:>7}", "phase", "duration", "requests", a.name, b.name, "failed");
    let mut tallies = Vec::new();
    for (i, (name, from)) in phases.iter().enumerate() {
        let to = phases.get(i + 1).map_or(end, |(_, t)| *t);
        let tally = Tally::of(&samples, *from, to);
        eprintln!(
            "  {:<34} {:>6.1} s {:>9} {:>7} {:>7} {:>7}",
            name,
            (to - *from).as_secs_f64(),
            tally.requests,
            tally.served_by(&a.name),
            tally.served_by(&b.name),
            tally.failed.len()
        );
        tallies.push((name, tally));
    }
    for r in &restarts {
        eprintln!(
            "  {}: SIGTERM -> readiness 503 in {}, unhealthy in {}, deregistered in {} (drain {} s), \
             old proxy exited at {}; new proxy ready {} later, healthy {} later, registered {} later, \
             serving {} later; out of rotation {}",
            r.node,
            ms(r.unready - r.term),
            ms(r.unhealthy - r.term),
            ms(r.deregistered - r.term),
            lab.spec.drain_seconds,
            ms(r.exited - r.term),
            ms(r.ready - r.exited),
            ms(r.healthy - r.ready),
            ms(r.registered - r.healthy),
            ms(r.serving - r.registered),
            ms(r.registered - r.deregistered),
        );
    }
    eprintln!(
        "  {} removed: deregistered in {}, out for {}, registered again in {}, serving {} later",
        b.name,
        ms(removed - remove_started),
        ms(readded - removed),
        ms(readded - readd_started),
        ms(back - readded)
    );

    // ---- the assertions ----------------------------------------------------------------
    all.assert_none_failed("the rollout");
    assert!(!cut_short, "the load hit its bounds before the rollout ended: {} requests", all.requests);
    assert!(all.requests >= 500, "steady load: at least 500 requests ({})", all.requests);
    for (name, tally) in &tallies {
        assert!(tally.requests >= 20, "phase {name:?} saw at least 20 requests: {}", tally.requests);
        for node in [a, b] {
            assert!(tally.served_by(&node.name) > 0, "{} served during phase {name:?}: {:?}", node.name, tally.by_node);
        }
    }
    for r in &restarts {
        let drain = Duration::from_secs(lab.spec.drain_seconds);
        assert!(
            r.deregistered - r.term < drain,
            "{} was deregistered within its drain time ({:?} after SIGTERM, drain {drain:?})",
            r.node,
            r.deregistered - r.term
        );
        let draining = Tally::of(&samples, r.term, r.deregistered);
        assert!(
            draining.served_by(&r.node) > 0,
            "{}'s proxy kept serving between SIGTERM and deregistration: {:?}",
            r.node,
            draining.by_node
        );
        let out = served_within(&samples, &r.node, r.deregistered, r.register_started);
        assert_eq!(out, 0, "{} served {out} requests sent while it was deregistered", r.node);
    }
    let out = served_within(&samples, &b.name, removed, readd_started);
    assert_eq!(out, 0, "{} served {out} requests sent while it was out of the inventory", b.name);
}

/// What one proxy restart took, as offsets from the start of the load.
#[derive(Debug)]
struct Restart {
    node: String,
    term: Duration,
    /// Its readiness first answered 503.
    unready: Duration,
    /// The stand-in health check marked it unhealthy.
    unhealthy: Duration,
    deregistered: Duration,
    exited: Duration,
    /// The new proxy first answered 200.
    ready: Duration,
    /// The stand-in health check marked it healthy.
    healthy: Duration,
    register_started: Duration,
    registered: Duration,
    serving: Duration,
}

/// Restarts one node's proxy as a DaemonSet rollout does, with the ALB health check played by
/// this test (see the module comment): SIGTERM; readiness fails at once while the proxy keeps
/// serving; the checker marks it unhealthy and the node is taken out (cordon + sync deregisters
/// it) well within the drain time; the old proxy finishes its drain and exits by itself; a new
/// proxy starts and the checker marks it healthy; the node is put back (uncordon + sync
/// registers it); and it serves again before the rollout moves on.
async fn restart_proxy(lab: &mut Lab, load: &Load, node: &LabNode, nodes: &[&LabNode]) -> Restart {
    let drain = Duration::from_secs(lab.spec.drain_seconds);
    let inventory = |cordon: bool| -> Vec<LabNode> {
        nodes.iter().map(|n| if cordon && n.name == node.name { cordoned(n) } else { (*n).clone() }).collect()
    };

    let term = load.at();
    lab.proxy_mut(&node.name).expect("proxy").signal_term().expect("SIGTERM");
    lab.wait_readiness(node, StatusCode::SERVICE_UNAVAILABLE, Duration::from_secs(2))
        .await
        .unwrap_or_else(|e| panic!("{}'s draining proxy reports not ready: {e:#}", node.name));
    let unready = load.at();
    lab.health_check(node, StatusCode::SERVICE_UNAVAILABLE, 2, CHECK_INTERVAL, Duration::from_secs(2))
        .await
        .unwrap_or_else(|e| panic!("{} is marked unhealthy: {e:#}", node.name));
    let unhealthy = load.at();

    let sync = lab.sync_inventory(&inventory(true)).await.expect("sync");
    let deregistered = load.at();
    assert!(names_change(&sync, "- deregister", node), "sync deregisters {}:\n{}", node.name, stdout(&sync));

    let grace = drain + Duration::from_secs(15);
    let exit = lab.proxy_mut(&node.name).expect("proxy").wait_exit(grace).await;
    let exit = exit.unwrap_or_else(|e| panic!("{}'s drained proxy exits by itself: {e:#}", node.name));
    assert!(exit.success(), "{}'s drained proxy exits cleanly: {exit:?}", node.name);
    let exited = load.at();

    lab.start_proxy(node).await.unwrap_or_else(|e| panic!("{}'s new proxy starts: {e:#}", node.name));
    let ready = load.at();
    lab.health_check(node, StatusCode::OK, 2, CHECK_INTERVAL, Duration::from_secs(5))
        .await
        .unwrap_or_else(|e| panic!("{}'s new proxy is marked healthy: {e:#}", node.name));
    let healthy = load.at();

    let register_started = load.at();
    let sync = lab.sync_inventory(&inventory(false)).await.expect("sync");
    let registered = load.at();
    assert!(names_change(&sync, "+ register", node), "sync registers {} again:\n{}", node.name, stdout(&sync));

    let serving = load
        .wait_served(&node.name, registered, 1, Duration::from_secs(10))
        .await
        .unwrap_or_else(|e| panic!("{}'s new proxy serves: {e:#}", node.name));
    Restart {
        node: node.name.clone(),
        term,
        unready,
        unhealthy,
        deregistered,
        exited,
        ready,
        healthy,
        register_started,
        registered,
        serving,
    }
}

/// Keeps a phase going for at least `min` from `from`, and until each of `nodes` has served
/// `count` requests sent since `from`.
async fn hold(load: &Load, from: Duration, min: Duration, nodes: &[&LabNode], count: usize) {
    for node in nodes {
        load.wait_served(&node.name, from, count, Duration::from_secs(30))
            .await
            .unwrap_or_else(|e| panic!("steady load through {}: {e:#}", node.name));
    }
    if let Some(rest) = (from + min).checked_sub(load.at()) {
        tokio::time::sleep(rest).await;
    }
}

fn ms(d: Duration) -> String {
    format!("{} ms", d.as_millis())
}

// ---- load --------------------------------------------------------------------------------

/// One request of the load: when it was sent and when its answer was complete (offsets from
/// the start of the load), and which node served it or what went wrong.
#[derive(Debug, Clone)]
struct Sample {
    started: Duration,
    ended: Duration,
    outcome: Result<String, String>,
}

/// Request loops through the emulated ALB (`GET /echo/load`), each recording every response
/// until stopped. Bounded: each loop ends after `limit`, and all together after `max_requests`.
struct Load {
    t0: Instant,
    stop: Arc<AtomicBool>,
    cut_short: Arc<AtomicBool>,
    samples: Arc<Mutex<Vec<Sample>>>,
    workers: Vec<JoinHandle<()>>,
}

impl Load {
    fn start(lab: &Lab, loops: usize, limit: Duration, max_requests: usize) -> Self {
        let t0 = Instant::now();
        let stop = Arc::new(AtomicBool::new(false));
        let cut_short = Arc::new(AtomicBool::new(false));
        let samples = Arc::new(Mutex::new(Vec::new()));
        let sent = Arc::new(AtomicUsize::new(0));
        let workers = (0..loops)
            .map(|_| {
                let (alb, host) = (lab.alb(), lab.spec.edge_host.clone());
                let (stop, cut_short, samples, sent) =
                    (Arc::clone(&stop), Arc::clone(&cut_short), Arc::clone(&samples), Arc::clone(&sent));
                tokio::spawn(async move {
                    while !stop.load(Ordering::Relaxed) {
                        if t0.elapsed() > limit || sent.fetch_add(1, Ordering::Relaxed) >= max_requests {
                            cut_short.store(true, Ordering::Relaxed);
                            break;
                        }
                        let started = t0.elapsed();
                        let outcome = match alb.get(&host, "/echo/load?n=1").await {
                            Ok(response) => check_echo(response.status, &response.body),
                            Err(e) => Err(format!("{e:#}")),
                        };
                        let sample = Sample { started, ended: t0.elapsed(), outcome };
                        samples.lock().expect("samples").push(sample);
                    }
                })
            })
            .collect();
        Self { t0, stop, cut_short, samples, workers }
    }

    /// Now, as an offset from the start of the load: a phase marker.
    fn at(&self) -> Duration {
        self.t0.elapsed()
    }

    /// Whether a loop stopped at its bounds rather than when told.
    fn cut_short(&self) -> bool {
        self.cut_short.load(Ordering::Relaxed)
    }

    /// Waits until `count` requests sent at or after `since` were served by `node`; returns when.
    async fn wait_served(
        &self,
        node: &str,
        since: Duration,
        count: usize,
        within: Duration,
    ) -> anyhow::Result<Duration> {
        let deadline = Instant::now() + within;
        loop {
            let served = {
                let samples = self.samples.lock().expect("samples");
                samples.iter().filter(|s| s.started >= since && s.outcome.as_deref() == Ok(node)).count()
            };
            if served >= count {
                return Ok(self.at());
            }
            anyhow::ensure!(!self.cut_short(), "the load stopped at its bounds");
            anyhow::ensure!(
                Instant::now() < deadline,
                "{node} served {served} of {count} requests sent since {since:?} within {within:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stops the loops, waits for their last requests, and returns every sample by start time.
    async fn finish(self) -> Vec<Sample> {
        self.stop.store(true, Ordering::Relaxed);
        for worker in self.workers {
            worker.await.expect("load loop");
        }
        let mut samples = std::mem::take(&mut *self.samples.lock().expect("samples"));
        samples.sort_by_key(|s| s.started);
        samples
    }
}

/// A 200 from service.api.echo with the path the convention leaves it: the node that served it;
/// anything else is a failed request.
fn check_echo(status: StatusCode, body: &[u8]) -> Result<String, String> {
    let text = || String::from_utf8_lossy(body).chars().take(200).collect::<String>();
    if status != StatusCode::OK {
        return Err(format!("{status} {}", text()));
    }
    let reply: DemoReply =
        serde_json::from_slice(body).map_err(|e| format!("200 but not a demo reply ({e}): {}", text()))?;
    if reply.service != "service.api.echo" || reply.path != "/load?n=1" {
        return Err(format!("200 from the wrong place: {} saw {}", reply.service, reply.path));
    }
    match node_of(&reply) {
        node if node == "?" => Err(format!("200 without a node in Via: {:?}", reply.via)),
        node => Ok(node),
    }
}

/// Requests sent in `[from, to)`: how many, which node served each, and what failed.
#[derive(Debug, Default)]
struct Tally {
    requests: usize,
    by_node: BTreeMap<String, usize>,
    failed: Vec<String>,
}

impl Tally {
    fn of(samples: &[Sample], from: Duration, to: Duration) -> Self {
        let mut tally = Self::default();
        for sample in samples.iter().filter(|s| s.started >= from && s.started < to) {
            tally.requests += 1;
            match &sample.outcome {
                Ok(node) => *tally.by_node.entry(node.clone()).or_default() += 1,
                Err(e) => tally.failed.push(format!("at {:?}: {e}", sample.started)),
            }
        }
        tally
    }

    fn ok(&self) -> usize {
        self.requests - self.failed.len()
    }

    fn served_by(&self, node: &str) -> usize {
        self.by_node.get(node).copied().unwrap_or(0)
    }

    fn assert_none_failed(&self, during: &str) {
        assert!(
            self.failed.is_empty(),
            "{} of {} requests failed during {during}; the first: {:#?}",
            self.failed.len(),
            self.requests,
            &self.failed[..self.failed.len().min(5)]
        );
    }
}

/// Requests served by `node` that were sent at or after `from` and complete before `to`: while
/// the node was out of the target group, there must be none.
fn served_within(samples: &[Sample], node: &str, from: Duration, to: Duration) -> usize {
    samples.iter().filter(|s| s.started >= from && s.ended <= to && s.outcome.as_deref() == Ok(node)).count()
}
