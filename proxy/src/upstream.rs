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
//!
//! A connection carries one exchange at a time, and goes back to the pool only when the next
//! client's bytes cannot meet anything of this exchange (see [`Reuse`]): the request was handed
//! over completely before the response head arrived, the response was read to its end, it was
//! HTTP/1.1 without `Connection: close`, and it is not an error answer to a request with a body
//! (a server answering from the headers alone may never read that body, and would parse it as
//! the next request). Anything else closes it.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Request, Response, Version, header};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::body::{AbortFlag, BoxError, RequestBody};
use crate::config::{AfterBody, Pool as PoolConfig, Timeouts};

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
    /// Endpoints that answered as HTTP/1.0: a body they get must have a `Content-Length`.
    http10: Mutex<HashSet<SocketAddr>>,
    connect_timeout: Duration,
    idle_timeout: Duration,
    /// `timeouts.upstream_read`: the longest gap between two pieces of a response body.
    read_timeout: Duration,
    /// `pool.after_body: close`: a connection that carried a request body is not reused.
    close_after_body: bool,
}

#[derive(Debug)]
struct Idle {
    sender: Sender,
    abort: AbortFlag,
    since: Instant,
}

/// A connection checked out of the pool (or new) for one exchange.
#[derive(Debug)]
pub(crate) struct Conn {
    sender: Sender,
    addr: SocketAddr,
    reused: bool,
    /// Set to reset the TCP connection when it closes (a request aborted half-way).
    abort: AbortFlag,
}

/// The upstream's response body paused longer than `timeouts.upstream_read`.
#[derive(Debug, thiserror::Error)]
#[error("the upstream sent no response body data within timeouts.upstream_read")]
pub struct UpstreamReadTimeout;

impl Upstream {
    pub(crate) fn new(timeouts: &Timeouts, pool: &PoolConfig) -> Self {
        Self {
            inner: Arc::new(Pool {
                idle: Mutex::new(HashMap::new()),
                http10: Mutex::new(HashSet::new()),
                connect_timeout: timeouts.connect,
                idle_timeout: timeouts.idle,
                read_timeout: timeouts.upstream_read,
                close_after_body: pool.after_body == AfterBody::Close,
            }),
        }
    }

    /// Whether `addr` has answered as HTTP/1.0: it cannot frame a chunked body.
    pub(crate) fn speaks_http10(&self, addr: SocketAddr) -> bool {
        self.inner.http10.lock().unwrap_or_else(PoisonError::into_inner).contains(&addr)
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
        if let Some(idle) = self.checkout(addr) {
            return Ok(Conn { sender: idle.sender, addr, reused: true, abort: idle.abort });
        }
        self.connect(addr).await
    }

    fn checkout(&self, addr: SocketAddr) -> Option<Idle> {
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
                return Some(c);
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
        let abort = AbortFlag::default();
        let io = UpstreamIo { stream, abort: abort.clone() };
        let (sender, connection) =
            http1::Builder::new().handshake(TokioIo::new(io)).await.map_err(UpstreamError::Request)?;
        tokio::spawn(async move {
            if let Err(e) = connection.with_upgrades().await {
                tracing::debug!(error = %e, "upstream connection ended with an error");
            }
        });
        Ok(Conn { sender, addr, reused: false, abort })
    }

    /// Sends `req` on `conn`. A reused connection that turns out to be closed before the
    /// request was written is replaced by a new one once.
    pub(crate) async fn send(
        &self,
        conn: Conn,
        mut req: Request<RequestBody>,
    ) -> Result<Response<PooledBody>, UpstreamError> {
        let Conn { mut sender, addr, reused, mut abort } = conn;
        if sender.ready().await.is_err() {
            // Closed since it was pooled: nothing was sent, use a new connection.
            let fresh = self.connect(addr).await?;
            (sender, abort) = (fresh.sender, fresh.abort);
        }
        let done = req.body().done_flag();
        let had_body = !req.body().is_end_stream();
        req.body_mut().set_abort_flag(abort.clone());
        let response = match sender.try_send_request(req).await {
            Ok(response) => response,
            Err(mut e) => match e.take_message() {
                Some(mut req) if reused => {
                    let fresh = self.connect(addr).await?;
                    req.body_mut().set_abort_flag(fresh.abort.clone());
                    let mut fresh_sender = fresh.sender;
                    let response = fresh_sender.send_request(req).await.map_err(UpstreamError::Request)?;
                    (sender, abort) = (fresh_sender, fresh.abort);
                    response
                }
                _ => return Err(UpstreamError::Request(e.into_error())),
            },
        };
        if response.version() == Version::HTTP_10 {
            self.inner.http10.lock().unwrap_or_else(PoisonError::into_inner).insert(addr);
        }
        let reuse = Reuse {
            request_sent_first: done.is_set(),
            http11: response.version() == Version::HTTP_11,
            close_asked: asks_to_close(response.headers()),
            error_to_a_body: had_body && response.status().as_u16() >= 400,
            body_closes: had_body && self.inner.close_after_body,
        };
        let keep = Returner { pool: self.inner.clone(), addr, sender: reuse.allowed().then_some(sender), abort };
        let read_timeout = self.inner.read_timeout;
        Ok(response.map(|body| PooledBody { body, done: false, keep, read_timeout, stall: None, waiting: false }))
    }
}

/// What decides, at the response head, whether a connection may carry another exchange.
#[derive(Debug, Clone, Copy)]
struct Reuse {
    /// The whole request had been handed over before the response head arrived. Otherwise
    /// the upstream answered early, and what the client still sends would reach the upstream
    /// as the start of the next exchange.
    request_sent_first: bool,
    /// HTTP/1.1: an HTTP/1.0 peer's keep-alive would make hyper send the next request as
    /// HTTP/1.0, which cannot carry a chunked body.
    http11: bool,
    /// The upstream said `Connection: close`.
    close_asked: bool,
    /// A 4xx/5xx to a request with a body: the upstream may have answered from the headers
    /// alone without reading the body (an auth check's 401, a 413), and would read it as the
    /// next request.
    error_to_a_body: bool,
    /// The request had a body and `pool.after_body` is `close`.
    body_closes: bool,
}

impl Reuse {
    fn allowed(self) -> bool {
        self.request_sent_first && self.http11 && !self.close_asked && !self.error_to_a_body && !self.body_closes
    }
}

fn asks_to_close(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .any(|v| v.as_bytes().split(|&b| b == b',').any(|t| t.trim_ascii().eq_ignore_ascii_case(b"close")))
}

/// The upstream TCP stream; reset (RST) instead of closed when its exchange was aborted.
#[derive(Debug)]
struct UpstreamIo {
    stream: TcpStream,
    abort: AbortFlag,
}

impl Drop for UpstreamIo {
    fn drop(&mut self) {
        if self.abort.is_set() {
            let _ = self.stream.set_zero_linger();
        }
    }
}

impl AsyncRead for UpstreamIo {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for UpstreamIo {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

/// Puts a connection back in its endpoint's stack.
#[derive(Debug)]
struct Returner {
    pool: Arc<Pool>,
    addr: SocketAddr,
    /// `None` once the connection may not be reused: dropping it closes the connection
    /// after the exchange in progress.
    sender: Option<Sender>,
    abort: AbortFlag,
}

impl Returner {
    fn put_back(&mut self) {
        let Some(sender) = self.sender.take() else { return };
        if sender.is_closed() {
            return;
        }
        let mut idle = self.pool.idle.lock().unwrap_or_else(PoisonError::into_inner);
        idle.entry(self.addr).or_default().push(Idle { sender, abort: self.abort.clone(), since: Instant::now() });
    }
}

/// An upstream response body; when it has been read to its end, its connection goes back to
/// the pool (if [`Reuse`] allowed it). Dropped earlier (client gone, upgrade), the connection
/// is closed with it. A pause of more than `timeouts.upstream_read` in the middle of it ends
/// the body with [`UpstreamReadTimeout`].
#[derive(Debug)]
pub struct PooledBody {
    body: Incoming,
    done: bool,
    keep: Returner,
    read_timeout: Duration,
    stall: Option<Pin<Box<tokio::time::Sleep>>>,
    waiting: bool,
}

impl PooledBody {
    /// The connection will not be reused (it was upgraded to another protocol).
    pub(crate) fn forget_connection(&mut self) {
        self.keep.sender = None;
    }
}

impl Body for PooledBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.body).poll_frame(cx);
        match polled {
            Poll::Pending => {
                if !this.waiting {
                    this.waiting = true;
                    let deadline = tokio::time::Instant::now() + this.read_timeout;
                    match &mut this.stall {
                        Some(stall) => stall.as_mut().reset(deadline),
                        None => this.stall = Some(Box::pin(tokio::time::sleep_until(deadline))),
                    }
                }
                if let Some(stall) = &mut this.stall
                    && stall.as_mut().poll(cx).is_ready()
                {
                    this.keep.sender = None;
                    return Poll::Ready(Some(Err(Box::new(UpstreamReadTimeout))));
                }
                Poll::Pending
            }
            Poll::Ready(None) => {
                this.done = true;
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(e))) => {
                this.keep.sender = None;
                Poll::Ready(Some(Err(Box::new(e))))
            }
            Poll::Ready(Some(Ok(frame))) => {
                this.waiting = false;
                Poll::Ready(Some(Ok(frame)))
            }
        }
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
