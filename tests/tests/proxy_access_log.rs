//! The access log says how an exchange really ended: written when the response body has
//! ended, with its outcome, its size and its whole duration, not when the head went out.
#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use gatehouse_tests::backends::{RawConn, config, eventually, start_proxy};
use gatehouse_tests::raw_backend::{Reply, ScriptedBackend, SeenRequest, Then};

/// Every line the process's tracing subscriber wrote, for this test binary.
fn log_lines() -> Arc<Mutex<Vec<u8>>> {
    static LINES: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LINES
        .get_or_init(|| {
            let lines = Arc::new(Mutex::new(Vec::new()));
            let sink = lines.clone();
            let subscriber = tracing_subscriber::fmt()
                .json()
                .flatten_event(true)
                .with_writer(move || Sink(sink.clone()))
                .with_max_level(tracing::Level::INFO)
                .finish();
            tracing::subscriber::set_global_default(subscriber).unwrap();
            lines
        })
        .clone()
}

struct Sink(Arc<Mutex<Vec<u8>>>);

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn access_lines(lines: &Mutex<Vec<u8>>) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(&lines.lock().unwrap())
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["target"] == "gatehouse::access")
        .collect()
}

#[tokio::test]
async fn a_response_cut_off_by_upstream_read_is_logged_with_its_real_outcome_size_and_duration() {
    let lines = log_lines();
    let backend = ScriptedBackend::start(|r: &SeenRequest| {
        if r.path == "/stall" {
            Reply::raw("HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nfive!", Then::Stall(Duration::from_secs(30)))
        } else {
            Reply::ok(200, "whole")
        }
    })
    .await;
    let yaml = config(&[("foo", vec![backend.addr])], "timeouts: { upstream_read: 500ms }\n")
        .replace("access_log: false", "access_log: true");
    let proxy = start_proxy(&yaml).await;
    let mut conn = RawConn::connect(proxy.traffic_addr()).await;
    assert!(conn.send(b"GET /foo/whole HTTP/1.1\r\nHost: api.example.com\r\nX-Request-Id: whole-1\r\n\r\n").await);
    conn.response(Duration::from_secs(5)).await.unwrap();
    assert!(conn.send(b"GET /foo/stall HTTP/1.1\r\nHost: api.example.com\r\nX-Request-Id: stall-1\r\n\r\n").await);
    let _ = conn.response(Duration::from_secs(5)).await;
    eventually(Duration::from_secs(5), "both access log lines", || {
        let n = access_lines(&lines)
            .iter()
            .filter(|l| l["request_id"] == "whole-1" || l["request_id"] == "stall-1")
            .count();
        async move { n == 2 }
    })
    .await;
    let logged = access_lines(&lines);
    let whole = logged.iter().find(|l| l["request_id"] == "whole-1").unwrap();
    assert_eq!((whole["status"].as_u64(), whole["outcome"].as_str()), (Some(200), Some("complete")));
    assert_eq!(whole["response_body_bytes"].as_u64(), Some(5));
    let stall = logged.iter().find(|l| l["request_id"] == "stall-1").unwrap();
    assert_eq!((stall["status"].as_u64(), stall["outcome"].as_str()), (Some(200), Some("upstream_read_timeout")));
    assert_eq!(stall["response_body_bytes"].as_u64(), Some(5));
    let duration = stall["duration_ms"].as_f64().unwrap();
    assert!(duration >= 450.0, "logged {duration} ms: the time of the head, not of the exchange");
}
