//! One client connection: request heads read one after another (pipelined ones too), each
//! taken through the phases (`phases.rs`); the client timers; keep-alive and the close.
//!
//! Client timers, all counted from the last byte, never as a total: a connection waiting for
//! a request is closed after `client_idle`; a request head must be complete within
//! `header_read` of its first byte (slowloris); the body timers are `body.rs`'s; a write the
//! client does not take for `client_write` ends the connection.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

use crate::Shared;
use crate::client::ClientConn;
use crate::error::{Answer, ProxyError};
use crate::h1::Version;
use crate::h1::request::{HeadError, parse};
use crate::phases::{Decision, Exchange, logging, request_filter};

/// What comes of waiting for the next request head.
enum Next {
    Head,
    /// Close without a word: end of stream, idle or head timeout, shutdown, HTTP/2 preface.
    Close,
    /// Answer this, then close.
    Refuse(ProxyError),
}

/// Serves one accepted connection until it closes.
pub(crate) async fn serve(shared: Arc<Shared>, stream: TcpStream, peer: SocketAddr, closing: CancellationToken) {
    let mut conn = ClientConn::new(shared, stream, peer);
    let waiting = closing.clone().cancelled_owned();
    tokio::pin!(waiting);
    conn.run(&closing, waiting).await;
}

/// A connection over `max_connections`: its first request is answered 503, and it closes.
pub(crate) async fn refuse_overloaded(shared: Arc<Shared>, stream: TcpStream, peer: SocketAddr) {
    let mut conn = ClientConn::new(shared, stream, peer);
    let never = CancellationToken::new().cancelled_owned();
    tokio::pin!(never);
    if let Next::Head = conn.next_head(never, Instant::now()).await {
        let mut x = Exchange::new(conn.shared.request_ids.for_request(conn.buf.readable(), &conn.head.headers));
        let error = ProxyError::Overloaded;
        conn.answer(&mut x, error.answer(), conn.head.version, false, Some(error)).await;
        logging(&conn.shared, &x, conn.peer);
    }
    conn.close().await;
}

impl ClientConn {
    async fn run(&mut self, token: &CancellationToken, mut closing: Pin<&mut WaitForCancellationFutureOwned>) {
        let mut idle_since = Instant::now();
        loop {
            match self.next_head(closing.as_mut(), idle_since).await {
                Next::Head => {}
                Next::Close => return,
                Next::Refuse(error) => {
                    let mut x = Exchange::new(self.shared.request_ids.fresh());
                    self.answer(&mut x, error.answer(), Version::Http11, false, Some(error)).await;
                    logging(&self.shared, &x, self.peer);
                    self.close().await;
                    return;
                }
            }
            let keep = self.serve_request().await;
            if !keep {
                self.close().await;
                return;
            }
            // Draining: the request in progress was finished; the connection closes now.
            if token.is_cancelled() {
                return;
            }
            idle_since = Instant::now();
        }
    }

    /// Waits for a complete request head: `client_idle` until its first byte, `header_read`
    /// from it.
    async fn next_head(&mut self, mut closing: Pin<&mut WaitForCancellationFutureOwned>, idle_since: Instant) -> Next {
        let max = self.shared.settings.limits.max_header_bytes;
        let mut head_started = (!self.buf.is_empty()).then(Instant::now);
        loop {
            if !self.buf.is_empty() {
                match parse(self.buf.readable(), max, &mut self.head) {
                    Ok(true) => return Next::Head,
                    Ok(false) => {}
                    Err(HeadError::Http2Preface) => return Next::Close,
                    Err(error) => return Next::Refuse(error.into()),
                }
            }
            let deadline = match head_started {
                None => idle_since
                    .checked_add(self.shared.settings.timeouts.client_idle)
                    .unwrap_or_else(crate::io::far_future),
                Some(started) => {
                    started.checked_add(self.shared.settings.timeouts.header_read).unwrap_or_else(crate::io::far_future)
                }
            };
            let read = tokio::select! {
                biased;
                read = self.buf.read_from(&mut self.stream, &mut self.timer, deadline) => read,
                // Draining: an idle connection closes (it is never polled after this).
                () = closing.as_mut(), if head_started.is_none() => return Next::Close,
            };
            match read {
                Ok(0) | Err(_) => return Next::Close,
                Ok(_) => head_started = head_started.or_else(|| Some(Instant::now())),
            }
        }
    }

    /// Serves the request whose head is parsed; whether the connection may carry another.
    async fn serve_request(&mut self) -> bool {
        let request_id = self.shared.request_ids.for_request(self.buf.readable(), &self.head.headers);
        let mut x = Exchange::new(request_id);
        self.shared.metrics.in_flight.inc();
        let decision = request_filter(&self.shared, self.buf.readable(), &self.head, &mut x);
        let keep = match decision {
            Decision::Ready(ready) => {
                let answer = Answer {
                    status: if ready { http::StatusCode::OK } else { http::StatusCode::SERVICE_UNAVAILABLE },
                    body: if ready { b"ready\n" } else { b"not ready\n" },
                    close: false,
                    allow: None,
                };
                self.answer_plain(&mut x, answer, b"text/plain").await && self.skip_body().await
            }
            Decision::Fail(error) => self.fail(&mut x, error).await,
            Decision::Forward { backend, path_and_query, upstream_path } => {
                crate::forward::forward(self, &mut x, backend, path_and_query, upstream_path).await
            }
        };
        self.shared.metrics.in_flight.dec();
        logging(&self.shared, &x, self.peer);
        keep
    }
}
