//! The traffic listener: accept, connection limit, hyper HTTP/1.1 with upgrades, graceful close.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use crate::Shared;
use crate::client_idle::{Activity, ActivityStream, ConnTimer};
use crate::error::{ProxyError, error_response};
use crate::proxy::{ConnInfo, handle};

/// Accepts until `closing` is cancelled, then tells every open connection to finish its
/// current request and close.
pub(crate) async fn serve(shared: Arc<Shared>, listener: TcpListener, closing: CancellationToken) {
    let mut builder = http1::Builder::new();
    builder
        // Slowloris: a client that does not finish its request head in time is cut off. Each
        // connection gets its own timer (below), which makes this the idle keep-alive timeout
        // (`timeouts.client_idle`) until the first byte of the next head arrives.
        .header_read_timeout(shared.timeouts.header_read)
        // Request head over the limit: 431, from hyper itself.
        .max_header_size(shared.limits.max_header_bytes)
        .max_buf_size((shared.limits.max_header_bytes * 2).max(8192));
    let builder = Arc::new(builder);
    let mut overloaded_builder = http1::Builder::new();
    overloaded_builder.timer(TokioTimer::new()).header_read_timeout(shared.timeouts.header_read).keep_alive(false);
    let overloaded_builder = Arc::new(overloaded_builder);

    loop {
        let (stream, peer) = tokio::select! {
            biased;
            () = closing.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let open = shared.open_connections.fetch_add(1, Ordering::AcqRel);
        if open >= shared.limits.max_connections {
            shared.open_connections.fetch_sub(1, Ordering::AcqRel);
            shared.metrics.rejected_connections.inc();
            shared.spawn_tracked(reject(overloaded_builder.clone(), stream));
            continue;
        }
        shared.metrics.connections.inc();
        let local = stream.local_addr().unwrap_or(peer);
        let activity = Arc::new(Activity::default());
        let conn = Arc::new(ConnInfo::new(peer, local, activity.clone()));
        let task_shared = shared.clone();
        let mut builder = (*builder).clone();
        builder.timer(ConnTimer::new(activity.clone(), shared.timeouts.header_read, shared.timeouts.client_idle));
        let closing = closing.clone();
        shared.spawn_tracked(async move {
            let svc_shared = task_shared.clone();
            let svc = service_fn(move |req| handle(svc_shared.clone(), conn.clone(), req));
            let io = TokioIo::new(ActivityStream::new(stream, activity, task_shared.timeouts.client_write));
            let connection = builder.serve_connection(io, svc).with_upgrades();
            tokio::pin!(connection);
            let result = tokio::select! {
                result = connection.as_mut() => result,
                () = closing.cancelled() => {
                    connection.as_mut().graceful_shutdown();
                    connection.await
                }
            };
            if let Err(e) = result {
                tracing::debug!(error = %e, "client connection ended with an error");
            }
            task_shared.open_connections.fetch_sub(1, Ordering::AcqRel);
            task_shared.metrics.connections.dec();
        });
    }
    // Dropping the listener here closes the port.
}

/// Answers a connection over `max_connections` with 503 and closes it.
async fn reject(builder: Arc<http1::Builder>, stream: TcpStream) {
    let svc = service_fn(|_req| async { Ok::<_, std::convert::Infallible>(error_response(ProxyError::Overloaded)) });
    let _ = builder.serve_connection(TokioIo::new(stream), svc).await;
}
