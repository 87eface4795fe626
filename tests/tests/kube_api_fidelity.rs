//! The fake Kubernetes API server must look like a real one to kube-rs: its client, its
//! watcher and its reflector run against it unmodified.

use std::time::Duration;

use futures::{Stream, StreamExt};
use gatehouse_tests::kube_api::fixtures::{endpoint_slice, lease, node, pod, service};
use gatehouse_tests::kube_api::{FakeApiOptions, FakeApiServer, ResourceKind};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams};
use kube::runtime::{WatchStreamExt, reflector, watcher};
use kube::{Resource, ResourceExt};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Bound for anything that should happen "immediately" on loopback.
const STEP: Duration = Duration::from_secs(10);

async fn within<T>(what: &str, future: impl std::future::Future<Output = T>) -> T {
    match tokio::time::timeout(STEP, future).await {
        Ok(value) => value,
        Err(_) => panic!("timed out waiting for {what}"),
    }
}

/// Next item of a stream, failing the test if none arrives in time.
async fn next<S: Stream + Unpin>(stream: &mut S, what: &str) -> S::Item {
    within(what, stream.next()).await.unwrap_or_else(|| panic!("stream ended while waiting for {what}"))
}

/// A raw HTTP/1.1 request, to check the bytes on the wire rather than kube's reading of them.
async fn raw_get(fake: &FakeApiServer, path: &str) -> (u16, Value) {
    let mut stream = within("connect", tokio::net::TcpStream::connect(fake.addr())).await.expect("connect");
    let request = format!("GET {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n", fake.addr());
    stream.write_all(request.as_bytes()).await.expect("write request");
    let mut response = Vec::new();
    within("response", stream.read_to_end(&mut response)).await.expect("read response");
    let response = String::from_utf8(response).expect("utf-8 response");
    let (head, body) = response.split_once("\r\n\r\n").expect("HTTP head");
    let code = head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).expect("status code");
    (code, serde_json::from_str(body).expect("JSON body"))
}

fn api_status(error: kube::Error) -> Box<kube::core::Status> {
    match error {
        kube::Error::Api(status) => status,
        other => panic!("expected kube::Error::Api, got {other:?}"),
    }
}

#[tokio::test]
async fn crud_through_the_kube_client() {
    let fake = FakeApiServer::start().await;
    let nodes: Api<Node> = Api::all(fake.client());

    let created = nodes.create(&PostParams::default(), &node("n1", "127.0.0.11").build()).await.expect("create");
    assert!(created.uid().is_some_and(|uid| uid.len() == 36));
    assert!(created.creation_timestamp().is_some());
    assert_eq!(created.meta().generation, Some(1));
    let first_version: u64 = created.resource_version().expect("rv").parse().expect("numeric rv");

    let duplicate = nodes.create(&PostParams::default(), &node("n1", "127.0.0.11").build()).await;
    let status = api_status(duplicate.expect_err("duplicate create"));
    assert_eq!((status.code, status.reason.as_str()), (409, "AlreadyExists"));

    let listed = nodes.list(&ListParams::default()).await.expect("list");
    assert_eq!(listed.items.iter().map(|n| n.name_any()).collect::<Vec<_>>(), ["n1"]);
    assert_eq!(listed.metadata.resource_version.as_deref(), Some(first_version.to_string().as_str()));

    let mut fetched = nodes.get("n1").await.expect("get");
    fetched.labels_mut().insert("zone".into(), "a".into());
    let replaced = nodes.replace("n1", &PostParams::default(), &fetched).await.expect("replace");
    let second_version: u64 = replaced.resource_version().expect("rv").parse().expect("numeric rv");
    assert!(second_version > first_version);

    // `fetched` still carries the first resourceVersion: optimistic concurrency refuses it.
    let stale = nodes.replace("n1", &PostParams::default(), &fetched).await;
    let status = api_status(stale.expect_err("stale replace"));
    assert_eq!((status.code, status.reason.as_str()), (409, "Conflict"));

    let patched = nodes
        .patch("n1", &PatchParams::default(), &Patch::Merge(json!({ "spec": { "unschedulable": true } })))
        .await
        .expect("merge patch");
    assert_eq!(patched.spec.as_ref().and_then(|s| s.unschedulable), Some(true));
    assert_eq!(patched.labels().get("zone").map(String::as_str), Some("a"));
    assert_eq!(patched.meta().generation, Some(2), "a spec change bumps the generation");

    // A no-op write changes nothing, not even the resourceVersion (no watch event either).
    let unchanged = nodes.replace("n1", &PostParams::default(), &patched).await.expect("no-op replace");
    assert_eq!(unchanged.resource_version(), patched.resource_version());

    let deleted = nodes.delete("n1", &DeleteParams::default()).await.expect("delete");
    assert!(deleted.left().is_some_and(|n| n.name_any() == "n1"));
    let missing = nodes.get("n1").await;
    let status = api_status(missing.expect_err("get after delete"));
    assert_eq!((status.code, status.reason.as_str()), (404, "NotFound"));
    assert_eq!(status.details.as_ref().map(|d| d.name.as_str()), Some("n1"));
    assert_eq!(status.details.as_ref().map(|d| d.kind.as_str()), Some("nodes"));
}

#[tokio::test]
async fn wire_format_matches_the_real_api() {
    let fake = FakeApiServer::start().await;
    fake.apply_resource(&node("n1", "127.0.0.11").build()).expect("apply");

    let (code, status) = raw_get(&fake, "/api/v1/nodes/missing").await;
    assert_eq!(code, 404);
    assert_eq!(status["kind"], "Status");
    assert_eq!(status["apiVersion"], "v1");
    assert_eq!(status["status"], "Failure");
    assert_eq!(status["reason"], "NotFound");
    assert_eq!(status["code"], 404);
    assert_eq!(status["message"], "nodes \"missing\" not found");
    assert_eq!(status["details"], json!({ "name": "missing", "kind": "nodes" }));

    let (code, list) = raw_get(&fake, "/api/v1/nodes").await;
    assert_eq!(code, 200);
    assert_eq!((list["kind"].as_str(), list["apiVersion"].as_str()), (Some("NodeList"), Some("v1")));
    assert_eq!(list["metadata"]["resourceVersion"], fake.resource_version().to_string());
    assert_eq!(list["items"][0]["metadata"]["name"], "n1");

    for (path, kind, api_version) in [
        ("/api/v1/services", "ServiceList", "v1"),
        ("/api/v1/namespaces/a/services", "ServiceList", "v1"),
        ("/apis/discovery.k8s.io/v1/endpointslices", "EndpointSliceList", "discovery.k8s.io/v1"),
        ("/api/v1/namespaces/a/pods", "PodList", "v1"),
        ("/apis/coordination.k8s.io/v1/namespaces/a/leases", "LeaseList", "coordination.k8s.io/v1"),
    ] {
        let (code, list) = raw_get(&fake, path).await;
        assert_eq!(
            (code, list["kind"].as_str(), list["apiVersion"].as_str()),
            (200, Some(kind), Some(api_version)),
            "{path}"
        );
    }

    let (code, status) = raw_get(&fake, "/api/v1/nodes?labelSelector=in%20in").await;
    assert_eq!((code, status["reason"].as_str()), (400, Some("BadRequest")));
    let (code, status) = raw_get(&fake, "/api/v1/configmaps").await;
    assert_eq!((code, status["kind"].as_str()), (404, Some("Status")));

    // Bad input is a Status, never a crash.
    let services: Api<Service> = Api::namespaced(fake.client(), "a");
    let invalid =
        services.create(&PostParams::default(), &service("a", "Not_A_Label").port("http", 80, None).build()).await;
    let status = api_status(invalid.expect_err("invalid name"));
    assert_eq!((status.code, status.reason.as_str()), (422, "Invalid"));
}

#[tokio::test]
async fn selectors_and_pagination() {
    let fake = FakeApiServer::start().await;
    for (name, pool) in [("n1", "edge"), ("n2", "edge"), ("n3", "batch"), ("n4", "edge")] {
        fake.apply_resource(&node(name, "127.0.0.11").label("pool", pool).build()).expect("apply");
    }
    fake.apply_resource(&node("n5", "127.0.0.15").build()).expect("apply");
    let nodes: Api<Node> = Api::all(fake.client());
    let names = |list: kube::core::ObjectList<Node>| list.items.iter().map(|n| n.name_any()).collect::<Vec<_>>();

    let cases = [
        ("pool=edge", vec!["n1", "n2", "n4"]),
        ("pool!=edge", vec!["n3", "n5"]),
        ("pool in (batch, other)", vec!["n3"]),
        ("pool notin (edge)", vec!["n3", "n5"]),
        ("pool", vec!["n1", "n2", "n3", "n4"]),
        ("!pool", vec!["n5"]),
        ("pool=edge,kubernetes.io/os=linux", vec!["n1", "n2", "n4"]),
    ];
    for (selector, expected) in cases {
        let listed = nodes.list(&ListParams::default().labels(selector)).await.expect("list");
        assert_eq!(names(listed), expected, "labelSelector {selector}");
    }
    let by_name = nodes.list(&ListParams::default().fields("metadata.name=n3")).await.expect("list");
    assert_eq!(names(by_name), ["n3"]);

    let mut seen = Vec::new();
    let mut params = ListParams::default().limit(2);
    let mut pages = 0;
    loop {
        let page = nodes.list(&params).await.expect("page");
        pages += 1;
        let token = page.metadata.continue_.clone().filter(|t| !t.is_empty());
        seen.extend(names(page));
        match token {
            Some(token) => params = ListParams::default().limit(2).continue_token(&token),
            None => break,
        }
    }
    assert_eq!((pages, seen), (3, vec!["n1", "n2", "n3", "n4", "n5"].into_iter().map(String::from).collect()));
}

/// What a watcher event says, reduced to comparable text.
fn describe<K: Resource>(event: &watcher::Event<K>) -> String {
    match event {
        watcher::Event::Init => "init".into(),
        watcher::Event::InitApply(n) => format!("init-apply {}", n.name_any()),
        watcher::Event::InitDone => "init-done".into(),
        watcher::Event::Apply(n) => {
            format!("apply {} {}", n.name_any(), n.labels().get("v").cloned().unwrap_or_default())
        }
        watcher::Event::Delete(n) => format!("delete {}", n.name_any()),
    }
}

#[tokio::test]
async fn watcher_sees_initial_added_modified_deleted_in_order() {
    let fake = FakeApiServer::start().await;
    fake.apply_resource(&node("n1", "127.0.0.11").build()).expect("apply");
    fake.apply_resource(&node("n2", "127.0.0.12").build()).expect("apply");
    let mut events = watcher(Api::<Node>::all(fake.client()), watcher::Config::default()).boxed();

    let mut initial = Vec::new();
    for _ in 0..4 {
        initial.push(describe(&next(&mut events, "initial list").await.expect("watcher event")));
    }
    assert_eq!(initial, ["init", "init-apply n1", "init-apply n2", "init-done"]);

    fake.apply_resource(&node("n3", "127.0.0.13").build()).expect("add");
    fake.apply_resource(&node("n1", "127.0.0.11").label("v", "2").build()).expect("modify");
    fake.delete(ResourceKind::Node, None, "n2").expect("delete");
    let mut changes = Vec::new();
    for _ in 0..3 {
        changes.push(describe(&next(&mut events, "changes").await.expect("watcher event")));
    }
    assert_eq!(changes, ["apply n3 ", "apply n1 2", "delete n2"]);
}

#[tokio::test]
async fn watcher_resumes_from_its_resource_version_after_a_disconnect() {
    let fake = FakeApiServer::start().await;
    fake.apply_resource(&node("n1", "127.0.0.11").build()).expect("apply");
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let stream = watcher(Api::<Node>::all(fake.client()), watcher::Config::default());
    let pump = tokio::spawn(async move {
        let mut stream = stream.boxed();
        while let Some(event) = stream.next().await {
            if tx.send(event.map(|e| describe(&e)).map_err(|e| e.to_string())).is_err() {
                break;
            }
        }
    });
    for expected in ["init", "init-apply n1", "init-done"] {
        assert_eq!(next_received(&mut rx).await, Ok(expected.to_string()));
    }
    within("the watch to open", fake.wait_for_open_watches(ResourceKind::Node, 1)).await;
    assert_eq!(fake.watch_requests(ResourceKind::Node), 1);

    fake.break_watches();
    fake.apply_resource(&node("n2", "127.0.0.12").build()).expect("apply during the disconnect");
    fake.apply_resource(&node("n1", "127.0.0.11").label("v", "2").build()).expect("modify");
    assert_eq!(next_received(&mut rx).await, Ok("apply n2 ".to_string()));
    assert_eq!(next_received(&mut rx).await, Ok("apply n1 2".to_string()));
    assert_eq!(fake.watch_requests(ResourceKind::Node), 2, "the watcher re-watched instead of re-listing");
    assert!(
        fake.request_log().iter().filter(|r| r.starts_with("GET /api/v1/nodes?") && !r.contains("watch")).count() == 1,
        "no second list: {:?}",
        fake.request_log()
    );
    pump.abort();
}

async fn next_received<T>(rx: &mut tokio::sync::mpsc::UnboundedReceiver<T>) -> T {
    within("a watcher event", rx.recv()).await.expect("watcher task ended")
}

#[tokio::test]
async fn expired_resource_version_makes_the_watcher_relist() {
    let fake = FakeApiServer::start_with(FakeApiOptions { history_size: 2, ..Default::default() }).await;
    fake.apply_resource(&node("n1", "127.0.0.11").build()).expect("apply");
    let mut events = watcher(Api::<Node>::all(fake.client()), watcher::Config::default()).boxed();
    for expected in ["init", "init-apply n1", "init-done"] {
        assert_eq!(describe(&next(&mut events, "initial list").await.expect("event")), expected);
    }
    // The watcher is lazy: its watch starts on the next poll, by which time three changes
    // have pushed its resourceVersion out of the two-event history.
    for name in ["n2", "n3", "n4"] {
        fake.apply_resource(&node(name, "127.0.0.12").build()).expect("apply");
    }
    match next(&mut events, "the 410").await {
        Err(watcher::Error::WatchError(status)) => {
            assert_eq!((status.code, status.reason.as_str()), (410, "Expired"))
        }
        other => panic!("expected a 410 watch error, got {:?}", other.map(|e| describe(&e))),
    }
    let mut relisted = Vec::new();
    for _ in 0..6 {
        relisted.push(describe(&next(&mut events, "the re-list").await.expect("event")));
    }
    assert_eq!(relisted, ["init", "init-apply n1", "init-apply n2", "init-apply n3", "init-apply n4", "init-done"]);
    fake.apply_resource(&node("n5", "127.0.0.15").build()).expect("apply");
    assert_eq!(describe(&next(&mut events, "a change after the re-list").await.expect("event")), "apply n5 ");
}

#[tokio::test]
async fn a_flood_of_one_kind_does_not_expire_the_watches_of_another() {
    // The real API server serves watches from a cache per resource: Node heartbeats do not push
    // a Service watch out of its window.
    let fake = FakeApiServer::start_with(FakeApiOptions { history_size: 2, ..Default::default() }).await;
    fake.apply_resource(&service("default", "a").build()).expect("apply");
    let mut events = watcher(Api::<Service>::all(fake.client()), watcher::Config::default()).boxed();
    for expected in ["init", "init-apply a", "init-done"] {
        assert_eq!(describe(&next(&mut events, "initial list").await.expect("event")), expected);
    }
    for name in ["n1", "n2", "n3", "n4"] {
        fake.apply_resource(&node(name, "127.0.0.12").build()).expect("apply");
    }
    fake.apply_resource(&service("default", "b").build()).expect("apply");
    assert_eq!(describe(&next(&mut events, "the next Service").await.expect("event")), "apply b ");
    assert_eq!(fake.watch_requests(ResourceKind::Service), 1, "watched on, no 410 and no re-list");
}

#[tokio::test]
async fn raw_watch_bookmarks_timeouts_and_gone() {
    let fake = FakeApiServer::start().await;
    let nodes: Api<Node> = Api::all(fake.client());
    let start = fake.resource_version().to_string();

    let mut stream = nodes.watch(&WatchParams::default().timeout(1), &start).await.expect("watch").boxed();
    match next(&mut stream, "a bookmark").await.expect("event") {
        WatchEvent::Bookmark(bookmark) => assert_eq!(bookmark.metadata.resource_version, start),
        other => panic!("expected a bookmark first, got {other:?}"),
    }
    fake.apply_resource(&node("n1", "127.0.0.11").build()).expect("apply");
    assert!(matches!(next(&mut stream, "ADDED").await, Ok(WatchEvent::Added(n)) if n.name_any() == "n1"));
    // timeoutSeconds=1 ends the stream.
    while let Some(event) = within("the watch timeout", stream.next()).await {
        assert!(matches!(event, Ok(WatchEvent::Bookmark(_))), "only bookmarks may follow: {event:?}");
    }

    // resourceVersion=0: synthetic ADDED for what exists.
    let mut stream =
        nodes.watch(&WatchParams::default().disable_bookmarks().timeout(5), "0").await.expect("watch").boxed();
    assert!(matches!(next(&mut stream, "synthetic ADDED").await, Ok(WatchEvent::Added(n)) if n.name_any() == "n1"));

    fake.compact_history();
    let mut stream = nodes.watch(&WatchParams::default(), &start).await.expect("watch").boxed();
    match next(&mut stream, "ERROR 410").await.expect("event") {
        WatchEvent::Error(status) => {
            assert_eq!((status.code, status.reason.as_str()), (410, "Expired"))
        }
        other => panic!("expected ERROR 410, got {other:?}"),
    }
    assert!(within("end after ERROR", stream.next()).await.is_none());
}

#[tokio::test]
async fn reflectors_over_services_and_endpoint_slices_stay_in_step() {
    let fake = FakeApiServer::start().await;
    let client = fake.client();
    let (services, services_writer) = reflector::store::<Service>();
    let (slices, slices_writer) = reflector::store::<EndpointSlice>();
    let (changed_tx, mut changed) = tokio::sync::mpsc::unbounded_channel();
    let services_stream =
        reflector(services_writer, watcher(Api::<Service>::all(client.clone()), watcher::Config::default()));
    let slices_stream =
        reflector(slices_writer, watcher(Api::<EndpointSlice>::all(client), watcher::Config::default()));
    let pump = tokio::spawn(async move {
        let mut merged = futures::stream::select(
            services_stream.map(|e| e.is_ok()).boxed(),
            slices_stream.map(|e| e.is_ok()).boxed(),
        );
        while let Some(ok) = merged.next().await {
            if changed_tx.send(ok).is_err() {
                break;
            }
        }
    });
    let snapshot = || {
        let mut s: Vec<String> = services
            .state()
            .iter()
            .map(|s| format!("svc {}/{}", s.namespace().unwrap_or_default(), s.name_any()))
            .collect();
        s.extend(slices.state().iter().map(|e| {
            let ready =
                e.endpoints.iter().filter(|p| p.conditions.as_ref().and_then(|c| c.ready) == Some(true)).count();
            format!("slice {}/{} ready={ready}", e.namespace().unwrap_or_default(), e.name_any())
        }));
        s.sort();
        s
    };
    let mut wait_for = async |expected: Vec<&str>| {
        within(&format!("stores to hold {expected:?}"), async {
            while snapshot() != expected {
                assert!(changed.recv().await.is_some(), "reflector task ended");
            }
        })
        .await;
    };

    fake.apply_resource(&service("team-a", "service-api-foo").port("http", 80, Some(30080)).build()).expect("apply");
    fake.apply_resource(&endpoint_slice("team-a", "service-api-foo", [("127.0.0.1", 9001, true)], "http"))
        .expect("apply");
    fake.apply_resource(&service("team-b", "service-api-bar").port("http", 80, None).build()).expect("apply");
    fake.apply_resource(&endpoint_slice(
        "team-b",
        "service-api-bar",
        [("127.0.0.1", 9002, true), ("127.0.0.2", 9002, false)],
        "http",
    ))
    .expect("apply");
    wait_for(vec![
        "slice team-a/service-api-foo-9001 ready=1",
        "slice team-b/service-api-bar-9002 ready=1",
        "svc team-a/service-api-foo",
        "svc team-b/service-api-bar",
    ])
    .await;

    fake.apply_resource(&endpoint_slice(
        "team-b",
        "service-api-bar",
        [("127.0.0.1", 9002, true), ("127.0.0.2", 9002, true)],
        "http",
    ))
    .expect("apply");
    fake.delete(ResourceKind::EndpointSlice, Some("team-a"), "service-api-foo-9001").expect("delete");
    fake.delete(ResourceKind::Service, Some("team-a"), "service-api-foo").expect("delete");
    wait_for(vec!["slice team-b/service-api-bar-9002 ready=2", "svc team-b/service-api-bar"]).await;
    pump.abort();

    // The real allocators' work is visible: a clusterIP and the requested nodePort.
    let stored: Service = fake.get_resource(Some("team-b"), "service-api-bar").expect("stored service");
    assert!(stored.spec.and_then(|s| s.cluster_ip).is_some_and(|ip| ip.starts_with("10.96.")));
}

#[tokio::test]
async fn lease_replace_race_has_exactly_one_winner() {
    let fake = FakeApiServer::start().await;
    let leases: Api<Lease> = Api::namespaced(fake.client(), "gatehouse");
    let created =
        leases.create(&PostParams::default(), &lease("gatehouse", "provisioner", None, 15)).await.expect("create");

    let claim = |holder: &str| {
        let mut lease = created.clone();
        if let Some(spec) = lease.spec.as_mut() {
            spec.holder_identity = Some(holder.to_string());
        }
        lease
    };
    let (a, b) = (claim("replica-a"), claim("replica-b"));
    let post = PostParams::default();
    let (first, second) =
        tokio::join!(leases.replace("provisioner", &post, &a), leases.replace("provisioner", &post, &b));
    let outcomes = [first, second];
    let winners: Vec<_> = outcomes.iter().filter_map(|r| r.as_ref().ok()).collect();
    assert_eq!(winners.len(), 1, "exactly one replace wins");
    let conflicts: Vec<_> = outcomes
        .iter()
        .filter_map(|r| match r {
            Err(kube::Error::Api(status)) if status.code == 409 && status.reason == "Conflict" => Some(status),
            _ => None,
        })
        .collect();
    assert_eq!(conflicts.len(), 1, "the other gets 409 Conflict");
    let holder = leases.get("provisioner").await.expect("get").spec.and_then(|s| s.holder_identity);
    assert_eq!(holder, winners[0].spec.as_ref().and_then(|s| s.holder_identity.clone()));
}

#[tokio::test]
async fn status_subresource_and_apply_patches() {
    let fake = FakeApiServer::start().await;
    let nodes: Api<Node> = Api::all(fake.client());
    fake.apply_resource(&node("n1", "127.0.0.11").ready(true).build()).expect("apply");
    let not_ready = json!({ "status": { "conditions": [{ "type": "Ready", "status": "False" }] } });

    // Through the main endpoint a status change is ignored, as on a real server.
    let patched = nodes.patch("n1", &PatchParams::default(), &Patch::Merge(&not_ready)).await.expect("patch");
    let ready = |n: &Node| {
        n.status.as_ref().and_then(|s| s.conditions.as_ref()).and_then(|c| c.first()).map(|c| c.status.clone())
    };
    assert_eq!(ready(&patched).as_deref(), Some("True"));
    let patched =
        nodes.patch_status("n1", &PatchParams::default(), &Patch::Merge(&not_ready)).await.expect("patch status");
    assert_eq!(ready(&patched).as_deref(), Some("False"));

    let leases: Api<Lease> = Api::namespaced(fake.client(), "gatehouse");
    let applied = leases
        .patch(
            "leader",
            &PatchParams::apply("gatehouse-test"),
            &Patch::Apply(
                json!({ "apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "spec": { "holderIdentity": "me" } }),
            ),
        )
        .await
        .expect("server-side apply creates");
    assert_eq!(applied.spec.and_then(|s| s.holder_identity).as_deref(), Some("me"));
}

#[tokio::test]
async fn fault_hooks_and_kubeconfig() {
    let fake = FakeApiServer::start().await;
    let nodes: Api<Node> = Api::all(fake.client());
    fake.inject_error(ResourceKind::Node, 500, 1);
    let status = api_status(nodes.list(&ListParams::default()).await.expect_err("injected 500"));
    assert_eq!((status.code, status.reason.as_str()), (500, "InternalError"));
    assert!(nodes.list(&ListParams::default()).await.is_ok(), "only one failure was injected");

    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("kubeconfig");
    fake.write_kubeconfig(&path).expect("write kubeconfig");
    let kubeconfig = kube::config::Kubeconfig::read_from(&path).expect("read kubeconfig");
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default()).await.expect("config");
    assert_eq!(config.default_namespace, "default");
    let client = kube::Client::try_from(config).expect("client");
    fake.apply_resource(&node("n1", "127.0.0.11").build()).expect("apply");
    let listed = Api::<Node>::all(client).list(&ListParams::default()).await.expect("list via kubeconfig");
    assert_eq!(listed.items.len(), 1);

    fake.shutdown().await;
    assert!(nodes.list(&ListParams::default()).await.is_err(), "nothing answers after shutdown");
}

fn conditions(pod: &Pod) -> Vec<(String, String, Option<String>)> {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.clone())
        .unwrap_or_default()
        .into_iter()
        .map(|c| (c.type_, c.status, c.reason))
        .collect()
}

#[tokio::test]
async fn pod_status_patches_merge_conditions_by_type_as_the_real_api_does() {
    let fake = FakeApiServer::start().await;
    let pods: Api<Pod> = Api::namespaced(fake.client(), "gatehouse");
    let created = pods
        .create(
            &PostParams::default(),
            &pod("gatehouse", "proxy-a", "n1").readiness_gate("gatehouse.dev/target-healthy").build(),
        )
        .await
        .expect("create");
    assert_eq!(conditions(&created).len(), 4, "the kubelet's four conditions");
    let mut watch = std::pin::pin!(watcher(pods.clone(), watcher::Config::default()).applied_objects());
    next(&mut watch, "the pod").await.expect("pod");

    // Strategic merge on /status: the conditions merge by `type`; the others stay.
    let gate = |status: &str, reason: &str| json!({"status": {"conditions": [{"type": "gatehouse.dev/target-healthy", "status": status, "reason": reason}]}});
    let patched = pods
        .patch_status("proxy-a", &PatchParams::default(), &Patch::Strategic(gate("False", "TargetNotHealthy")))
        .await
        .expect("patch");
    assert_eq!(conditions(&patched).len(), 5, "{:?}", conditions(&patched));
    let patched = pods
        .patch_status("proxy-a", &PatchParams::default(), &Patch::Strategic(gate("True", "TargetHealthy")))
        .await
        .expect("patch");
    let gates: Vec<_> = conditions(&patched).into_iter().filter(|c| c.0 == "gatehouse.dev/target-healthy").collect();
    assert_eq!(gates, [("gatehouse.dev/target-healthy".into(), "True".into(), Some("TargetHealthy".into()))]);
    assert!(conditions(&patched).iter().any(|c| c.0 == "ContainersReady" && c.1 == "True"));
    // The watch sees the change, as MODIFIED.
    let seen = next(&mut watch, "the patched pod").await.expect("pod");
    assert!(conditions(&seen).len() >= 5);

    // `$patch: delete` removes one element; `$setElementOrder` (ordering only) is accepted.
    let delete = json!({"status": {"$setElementOrder/conditions": [{"type": "Ready"}], "conditions": [{"type": "gatehouse.dev/target-healthy", "$patch": "delete"}]}});
    let patched =
        pods.patch_status("proxy-a", &PatchParams::default(), &Patch::Strategic(delete)).await.expect("patch");
    assert_eq!(conditions(&patched).len(), 4);
    // A JSON merge patch replaces the whole list, as RFC 7386 says.
    let patched = pods
        .patch_status("proxy-a", &PatchParams::default(), &Patch::Merge(gate("True", "TargetHealthy")))
        .await
        .expect("patch");
    assert_eq!(conditions(&patched).len(), 1);
    // The main endpoint ignores status; directives it does not know are refused, not half-done.
    let main =
        pods.patch("proxy-a", &PatchParams::default(), &Patch::Strategic(gate("False", "X"))).await.expect("patch");
    assert_eq!(conditions(&main), conditions(&patched));
    let unknown = json!({"status": {"$retainKeys": ["conditions"]}});
    let status = api_status(
        pods.patch_status("proxy-a", &PatchParams::default(), &Patch::Strategic(unknown)).await.expect_err("refused"),
    );
    assert_eq!((status.code, status.reason.as_str()), (400, "BadRequest"));
    let missing = pods.patch_status("nope", &PatchParams::default(), &Patch::Strategic(gate("True", "X"))).await;
    assert_eq!(api_status(missing.expect_err("missing")).code, 404);
    // A Service's ports merge by `port`.
    let services: Api<Service> = Api::namespaced(fake.client(), "gatehouse");
    services
        .create(&PostParams::default(), &service("gatehouse", "proxy").port("http", 80, None).build())
        .await
        .expect("service");
    let add = json!({"spec": {"ports": [{"name": "https", "port": 443, "protocol": "TCP"}]}});
    let merged = services.patch("proxy", &PatchParams::default(), &Patch::Strategic(add)).await.expect("patch");
    assert_eq!(merged.spec.and_then(|s| s.ports).map(|p| p.len()), Some(2));
}

#[tokio::test]
async fn deletion_waits_for_finalizers_and_a_pods_grace_period() {
    let fake = FakeApiServer::start().await;
    let nodes: Api<Node> = Api::all(fake.client());
    let mut held = node("n1", "127.0.0.11").build();
    held.metadata.finalizers = Some(vec!["karpenter.sh/termination".into()]);
    nodes.create(&PostParams::default(), &held).await.expect("create");
    let mut watch = std::pin::pin!(watcher(nodes.clone(), watcher::Config::default()));
    assert_eq!(describe(&next(&mut watch, "init").await.expect("event")), "init");
    next(&mut watch, "n1").await.expect("event");
    next(&mut watch, "init done").await.expect("event");

    // A finalizer holds the object: DELETE only sets its deletionTimestamp (MODIFIED).
    nodes.delete("n1", &DeleteParams::default()).await.expect("delete");
    let deleting = nodes.get("n1").await.expect("still there");
    assert!(deleting.metadata.deletion_timestamp.is_some());
    assert_eq!(describe(&next(&mut watch, "modified").await.expect("event")), "apply n1 ");
    // Removing the last finalizer completes the deletion (DELETED).
    nodes
        .patch("n1", &PatchParams::default(), &Patch::Merge(json!({"metadata": {"finalizers": null}})))
        .await
        .expect("patch");
    assert_eq!(describe(&next(&mut watch, "deleted").await.expect("event")), "delete n1");
    assert_eq!(api_status(nodes.get("n1").await.expect_err("gone")).code, 404);

    // A pod bound to a node terminates through its grace period; the kubelet's delete with
    // grace period 0 removes it. An unbound pod goes at once.
    let pods: Api<Pod> = Api::namespaced(fake.client(), "gatehouse");
    let mut bound = pod("gatehouse", "bound", "n1").build();
    bound.spec.get_or_insert_default().termination_grace_period_seconds = Some(45);
    pods.create(&PostParams::default(), &bound).await.expect("create");
    pods.delete("bound", &DeleteParams::default()).await.expect("delete");
    let terminating = pods.get("bound").await.expect("terminating");
    assert!(terminating.metadata.deletion_timestamp.is_some());
    assert_eq!(terminating.metadata.deletion_grace_period_seconds, Some(45));
    pods.delete("bound", &DeleteParams::default()).await.expect("again");
    assert!(
        pods.get_opt("bound").await.expect("get").is_some(),
        "a second delete without a shorter grace changes nothing"
    );
    pods.delete("bound", &DeleteParams { grace_period_seconds: Some(0), ..DeleteParams::default() })
        .await
        .expect("kubelet");
    assert!(pods.get_opt("bound").await.expect("get").is_none());
    let mut unbound = pod("gatehouse", "unbound", "n1").build();
    unbound.spec.get_or_insert_default().node_name = None;
    pods.create(&PostParams::default(), &unbound).await.expect("create");
    pods.delete("unbound", &DeleteParams::default()).await.expect("delete");
    assert!(pods.get_opt("unbound").await.expect("get").is_none());

    // Pods by node, the field selector kubectl and Karpenter use.
    pods.create(&PostParams::default(), &pod("gatehouse", "on-n2", "n2").build()).await.expect("create");
    let on_n2 = pods.list(&ListParams::default().fields("spec.nodeName=n2")).await.expect("list");
    assert_eq!(on_n2.items.iter().map(|p| p.name_any()).collect::<Vec<_>>(), ["on-n2"]);
}
