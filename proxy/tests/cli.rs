//! The binary: config errors exit 2 before binding, `check` prints the route table, SIGTERM
//! drains. std only (threads and blocking sockets), every wait bounded.
#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_gatehouse-proxy");

fn write_config(name: &str, text: &str) -> PathBuf {
    let path = std::env::temp_dir().join(format!("gatehouse-cli-{}-{name}.yaml", std::process::id()));
    std::fs::write(&path, text).expect("write config");
    path
}

fn run(args: &[&str]) -> Output {
    Command::new(BIN).args(args).output().expect("run gatehouse-proxy")
}

fn config(listen: &str, upstream: &str, extra: &str) -> String {
    format!(
        "listen: {listen}\nadmin_listen: 127.0.0.1:0\naccess_log: false\nedges:\n  - host: api.example.com\n    prefix: service.api\ndiscovery:\n  static:\n    service.api.foo: [\"{upstream}\"]\n{extra}"
    )
}

#[test]
fn unknown_key_exits_2_naming_file_key_and_line_before_binding() {
    // The port is taken by us: had the proxy tried to bind first, the error would be EADDRINUSE.
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let path =
        write_config("typo", &config(&taken.local_addr().unwrap().to_string(), "127.0.0.1:9", "acess_log: true\n"));
    let out = run(&["--config", path.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(path.to_str().unwrap()) && stderr.contains("acess_log") && stderr.contains("line"),
        "{stderr}"
    );
    assert_eq!(stderr.lines().count(), 1, "one clear message: {stderr}");
}

#[test]
fn static_key_no_edge_reaches_exits_2_naming_the_key() {
    let text = config("127.0.0.1:0", "127.0.0.1:9", "").replace("service.api.foo", "service.other.foo");
    let path = write_config("unreachable", &text);
    let out = run(&["--config", path.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("discovery.static.\"service.other.foo\""), "{stderr}");
}

#[test]
fn missing_file_exits_2() {
    let out = run(&["--config", "/nonexistent/gatehouse.yaml"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/gatehouse.yaml"));
}

#[test]
fn check_prints_the_route_table_and_binds_nothing() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let path = write_config("check", &config(&taken.local_addr().unwrap().to_string(), "127.0.0.1:9001", ""));
    let out = run(&["check", "--config", path.to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("/foo/ -> service.api.foo (service-api-foo) [127.0.0.1:9001]"), "{stdout}");
}

#[test]
fn example_config_is_valid() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/gatehouse-proxy.example.yaml");
    let out = run(&["check", "--config", example]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

/// Reads the "listening on ADDR" line the binary prints on stderr.
fn listening_addr(child: &mut Child) -> SocketAddr {
    let stderr = child.stderr.take().expect("piped stderr");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(rest) = line.strip_prefix("gatehouse-proxy listening on ") {
                let addr = rest.split_whitespace().next().unwrap_or("").parse::<SocketAddr>();
                let _ = tx.send(addr);
            }
        }
    });
    rx.recv_timeout(Duration::from_secs(10)).expect("listening line within 10 s").expect("an address")
}

fn http_get(addr: SocketAddr, path: &str) -> String {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(stream, "GET {path} HTTP/1.1\r\nHost: api.example.com\r\nConnection: close\r\n\r\n").unwrap();
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    response
}

#[test]
fn sigterm_fails_readiness_and_finishes_the_request_in_flight() {
    // A backend that holds its one request until told to answer.
    let backend = TcpListener::bind("127.0.0.1:0").unwrap();
    let backend_addr = backend.local_addr().unwrap();
    let (got_request, request_arrived) = mpsc::channel();
    let (release, released) = mpsc::channel::<()>();
    std::thread::spawn(move || {
        let (mut conn, _) = backend.accept().unwrap();
        let mut buf = [0u8; 4096];
        let _ = conn.read(&mut buf);
        got_request.send(()).unwrap();
        let _ = released.recv_timeout(Duration::from_secs(20));
        let _ = conn.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\ndone");
    });

    let path = write_config(
        "sigterm",
        &config("127.0.0.1:0", &backend_addr.to_string(), "timeouts: { drain: 1s, shutdown: 10s }\n"),
    );
    let mut child = Command::new(BIN)
        .args(["--config", path.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let addr = listening_addr(&mut child);
    assert!(http_get(addr, "/_gatehouse/ready").starts_with("HTTP/1.1 200"));

    let client = std::thread::spawn(move || http_get(addr, "/foo/x"));
    request_arrived.recv_timeout(Duration::from_secs(10)).expect("the request reaches the backend");

    let killed = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(killed.success());
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if http_get(addr, "/_gatehouse/ready").starts_with("HTTP/1.1 503") {
            break;
        }
        assert!(Instant::now() < deadline, "readiness still passes after SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    }

    release.send(()).unwrap();
    let response = client.join().unwrap();
    assert!(response.starts_with("HTTP/1.1 200") && response.ends_with("done"), "{response}");

    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the proxy did not exit after the drain");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status:?}");
}

#[test]
fn kubernetes_discovery_over_https_starts_and_stays_unready_while_the_api_is_unreachable() {
    // Built with the provisioner (the image, `cargo test --workspace`), rustls links two crypto
    // providers; building a TLS kube client without choosing one used to panic at startup.
    let unreachable = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let kubeconfig = write_config(
        "kubeconfig",
        &format!(
            "apiVersion: v1\nkind: Config\nclusters: [{{name: c, cluster: {{server: \"https://{unreachable}\", insecure-skip-tls-verify: true}}}}]\nusers: [{{name: u, user: {{token: t}}}}]\ncontexts: [{{name: x, context: {{cluster: c, user: u}}}}]\ncurrent-context: x\n"
        ),
    );
    let path = write_config(
        "kubernetes-https",
        &format!(
            "listen: 127.0.0.1:0\nadmin_listen: 127.0.0.1:0\nedges: [{{host: api.example.com, prefix: service.api}}]\ndiscovery: {{kubernetes: {{namespaces: [default], kubeconfig: {}}}}}\n",
            kubeconfig.display()
        ),
    );
    let mut child = Command::new(BIN)
        .args(["--config", path.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the proxy");
    let addr = listening_addr(&mut child);
    let ready = http_get(addr, "/_gatehouse/ready");
    assert!(ready.starts_with("HTTP/1.1 503"), "not ready before discovery has synced: {ready}");
    assert!(child.try_wait().unwrap().is_none(), "still running");
    child.kill().unwrap();
    child.wait().unwrap();
}
