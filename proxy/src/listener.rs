//! The traffic listener: accept, the connection cap, one task per connection, graceful close.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::Shared;
use crate::connection;

/// Accepts until `closing` is cancelled; each connection then finishes its current request
/// and closes.
pub(crate) async fn serve(shared: Arc<Shared>, listener: TcpListener, closing: CancellationToken) {
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
        let open = shared.runtime.open_connections.fetch_add(1, Ordering::AcqRel);
        if open >= shared.settings.limits.max_connections {
            shared.runtime.open_connections.fetch_sub(1, Ordering::AcqRel);
            shared.metrics.rejected_connections.inc();
            let task_shared = shared.clone();
            shared.spawn_tracked(async move { connection::refuse_overloaded(task_shared, stream, peer).await });
            continue;
        }
        shared.metrics.connections.inc();
        let task_shared = shared.clone();
        let closing = closing.clone();
        shared.spawn_tracked(async move {
            connection::serve(task_shared.clone(), stream, peer, closing).await;
            task_shared.runtime.open_connections.fetch_sub(1, Ordering::AcqRel);
            task_shared.metrics.connections.dec();
        });
    }
    // Dropping the listener here closes the port.
}
