//! Upstream HTTP/1.1 connections: a small keep-alive pool of our own on
//! `hyper::client::conn::http1`.
//!
//! hyper-util's legacy `Client` costs a SipHash of the pool key twice per request, a
//! `Checkout` future racing a connect future, and a spawned task per request that waits for
//! the connection to be ready again before returning it to the pool. Here a connection is
//! taken from a per-endpoint stack (checked with `SendRequest::is_ready`), and is put back when
//! the response body has been read to its end (the body's drop, see [`PooledBody`]).
//!
//! The connection is made before the request is handed to hyper, so a failed connect leaves
//! the whole request, body included, in our hands: it is retried on another endpoint
//! (`proxy::forward`) without ever having been sent.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::body::RequestBody;

type Sender = SendRequest<RequestBody>;

/// Why an upstream exchange failed.
#[derive(Debug)]
pub enum UpstreamError {
    /// No connection could be made (refused, unreachable, timed out): nothing was sent.
    Connect(io::Error),
    /// The connection was made, then the exchange failed.
    Request(hyper::Error),
}

/// The pool of idle upstream connections, per endpoint address.
#[derive(Debug)]
pub(crate) struct Upstream {
    inner: Arc<Pool>,
}

#[derive(Debug)]
struct Pool {
    idle: Mutex<HashMap<SocketAddr, Vec<Idle>>>,
    connect_timeout: Duration,
    idle_timeout: Duration,
}

#[derive(Debug)]
struct Idle {
    sender: Sender,
    since: Instant,
}

/// A connection checked out of the pool (or new) for one exchange.
#[derive(Debug)]
pub(crate) struct Conn {
    sender: Sender,
    addr: SocketAddr,
    reused: bool,
}

impl Upstream {
    pub(crate) fn new(connect_timeout: Duration, idle_timeout: Duration) -> Self {
        Self { inner: Arc::new(Pool { idle: Mutex::new(HashMap::new()), connect_timeout, idle_timeout }) }
    }

    /// Closes connections idle longer than the idle timeout, every half of it, until the
    /// pool is dropped.
    pub(crate) fn spawn_evictor(&self) {
        let pool = Arc::downgrade(&self.inner);
        let period = (self.inner.idle_timeout / 2).max(Duration::from_millis(100));
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(pool) = pool.upgrade() else { return };
                let now = Instant::now();
                let mut idle = pool.idle.lock().unwrap_or_else(PoisonError::into_inner);
                idle.retain(|_, list| {
                    list.retain(|c| !c.sender.is_closed() && now.duration_since(c.since) < pool.idle_timeout);
                    !list.is_empty()
                });
            }
        });
    }

    /// An idle connection to `addr`, or a new one.
    pub(crate) async fn connection(&self, addr: SocketAddr) -> Result<Conn, UpstreamError> {
        if let Some(sender) = self.checkout(addr) {
            return Ok(Conn { sender, addr, reused: true });
        }
        self.connect(addr).await
    }

    fn checkout(&self, addr: SocketAddr) -> Option<Sender> {
        let mut idle = self.inner.idle.lock().unwrap_or_else(PoisonError::into_inner);
        let list = idle.get_mut(&addr)?;
        let now = Instant::now();
        // Most recently returned first: the warmest connection, and expired ones sit at the
        // bottom of the stack.
        while let Some(c) = list.pop() {
            if now.duration_since(c.since) >= self.inner.idle_timeout {
                // Everything below is older still.
                list.clear();
                return None;
            }
            // Not yet ready is fine: it has just finished a response and its task will be
            // wanting the next request in a moment (`send` waits for that).
            if !c.sender.is_closed() {
                return Some(c.sender);
            }
        }
        None
    }

    async fn connect(&self, addr: SocketAddr) -> Result<Conn, UpstreamError> {
        let stream = match tokio::time::timeout(self.inner.connect_timeout, TcpStream::connect(addr)).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => return Err(UpstreamError::Connect(e)),
            Err(_elapsed) => return Err(UpstreamError::Connect(io::ErrorKind::TimedOut.into())),
        };
        let _ = stream.set_nodelay(true);
        let (sender, connection) =
            http1::Builder::new().handshake(TokioIo::new(stream)).await.map_err(UpstreamError::Request)?;
        tokio::spawn(async move {
            if let Err(e) = connection.with_upgrades().await {
                tracing::debug!(error = %e, "upstream connection ended with an error");
            }
        });
        Ok(Conn { sender, addr, reused: false })
    }

    /// Sends `req` on `conn`. A reused connection that turns out to be closed before the
    /// request was written is replaced by a new one once.
    pub(crate) async fn send(
        &self,
        conn: Conn,
        req: Request<RequestBody>,
    ) -> Result<Response<PooledBody>, UpstreamError> {
        let Conn { mut sender, addr, reused } = conn;
        if sender.ready().await.is_err() {
            // Closed since it was pooled: nothing was sent, use a new connection.
            sender = self.connect(addr).await?.sender;
        }
        let response = match sender.try_send_request(req).await {
            Ok(response) => response,
            Err(mut e) => match e.take_message() {
                Some(req) if reused => {
                    let Conn { sender: mut fresh, .. } = self.connect(addr).await?;
                    let response = fresh.send_request(req).await.map_err(UpstreamError::Request)?;
                    sender = fresh;
                    response
                }
                _ => return Err(UpstreamError::Request(e.into_error())),
            },
        };
        let keep = Returner { pool: self.inner.clone(), addr, sender: Some(sender) };
        Ok(response.map(|body| PooledBody { body, done: false, keep }))
    }
}

/// Puts a connection back in its endpoint's stack.
#[derive(Debug)]
struct Returner {
    pool: Arc<Pool>,
    addr: SocketAddr,
    sender: Option<Sender>,
}

impl Returner {
    fn put_back(&mut self) {
        let Some(sender) = self.sender.take() else { return };
        if sender.is_closed() {
            return;
        }
        let mut idle = self.pool.idle.lock().unwrap_or_else(PoisonError::into_inner);
        idle.entry(self.addr).or_default().push(Idle { sender, since: Instant::now() });
    }
}

/// An upstream response body; when it has been read to its end, its connection goes back to
/// the pool. Dropped earlier (client gone, upgrade), the connection is closed with it.
#[derive(Debug)]
pub struct PooledBody {
    body: Incoming,
    done: bool,
    keep: Returner,
}

impl PooledBody {
    /// The connection will not be reused (it was upgraded to another protocol).
    pub(crate) fn forget_connection(&mut self) {
        self.keep.sender = None;
    }
}

impl Body for PooledBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.body).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => this.done = true,
            Poll::Ready(Some(Err(_))) => this.keep.sender = None,
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.done || self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl Drop for PooledBody {
    fn drop(&mut self) {
        if self.done || self.body.is_end_stream() {
            self.keep.put_back();
        }
    }
}
