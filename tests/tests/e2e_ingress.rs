//! The whole ingress path, end to end, all traffic entering through the emulated ALB listener:
//! Terraform example applied against MiniStack -> target group kept by gatehouse-provisioner ->
//! gatehouse-proxy on three loopback "nodes" -> demo services. The same lab runs the quickstart.
//!
//! One lab, one apply (about a minute), three acts in order: the path works through every node;
//! a node removed from the inventory is deregistered and the rest still serve; a proxy drained
//! with SIGTERM while requests flow loses none of them.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use gatehouse_lab::alb::AlbClient;
use gatehouse_lab::demo::DemoReply;
use gatehouse_lab::files::LabNode;
use gatehouse_lab::quickstart::node_of;
use gatehouse_lab::{Lab, LabSpec, Progress};
use http::StatusCode;

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
    let stop = Arc::new(AtomicBool::new(false));
    let load: Vec<_> = (0..2)
        .map(|_| {
            let (alb, host, stop) = (lab.alb(), lab.spec.edge_host.clone(), Arc::clone(&stop));
            tokio::spawn(async move {
                // Bounded: stops when told, or after 60 s / 5,000 requests whatever happens.
                let started = Instant::now();
                let (mut ok, mut failed, mut by_node) = (0usize, Vec::new(), BTreeMap::<String, usize>::new());
                while !stop.load(Ordering::Relaxed)
                    && started.elapsed() < Duration::from_secs(60)
                    && ok + failed.len() < 5_000
                {
                    match alb.get(&host, "/echo/load").await {
                        Ok(r) if r.status == StatusCode::OK => {
                            ok += 1;
                            if let Ok(reply) = serde_json::from_slice::<DemoReply>(&r.body) {
                                *by_node.entry(node_of(&reply)).or_default() += 1;
                            }
                        }
                        Ok(r) => failed.push(format!("{} {}", r.status, String::from_utf8_lossy(&r.body))),
                        Err(e) => failed.push(format!("{e:#}")),
                    }
                }
                (ok, failed, by_node)
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;

    let drained_at = Instant::now();
    lab.proxy_mut("node-b").expect("node-b proxy").signal_term().expect("SIGTERM");
    // Readiness fails at once (the signal is handled asynchronously: allow it 2 s) while the
    // proxy is still listening: what the ALB health check sees.
    let ready_url = format!("http://{}:30080/_gatehouse/ready", b.ip);
    let mut ready = AlbClient::plain_get(&ready_url).await.expect("still listening");
    while ready.status == StatusCode::OK && drained_at.elapsed() < Duration::from_secs(2) {
        tokio::time::sleep(Duration::from_millis(20)).await;
        ready = AlbClient::plain_get(&ready_url).await.expect("still listening");
    }
    assert_eq!(ready.status, StatusCode::SERVICE_UNAVAILABLE, "a draining proxy reports not ready");

    // What takes the node out: it is cordoned, and the provisioner deregisters it.
    let mut cordoned = b.clone();
    cordoned.unschedulable = true;
    lab.write_inventory(&[a.clone(), cordoned]).expect("inventory");
    let sync = lab.provisioner("sync", &[]).await.expect("sync runs");
    assert!(sync.status.success(), "sync deregisters the cordoned node:\n{}", stdout(&sync));
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
    stop.store(true, Ordering::Relaxed);
    let (mut ok, mut failed, mut by_node) = (0, Vec::new(), BTreeMap::<String, usize>::new());
    for worker in load {
        let (n, f, b) = worker.await.expect("load task");
        ok += n;
        failed.extend(f);
        for (node, count) in b {
            *by_node.entry(node).or_default() += count;
        }
    }
    println!("drain under load: {ok} ok, {} failed, by node {by_node:?}", failed.len());
    assert!(
        failed.is_empty(),
        "{} of {} requests failed during the drain: {:?}",
        failed.len(),
        ok + failed.len(),
        &failed[..failed.len().min(5)]
    );
    assert!(by_node.get("node-b").copied().unwrap_or(0) > 0, "node-b served until it was deregistered: {by_node:?}");
    assert!(ok >= 20, "the load kept flowing ({ok} requests)");

    lab.shutdown().await.expect("clean shutdown");
}
