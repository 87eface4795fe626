//! Upstream connections: plain TCP streams with a read buffer each, kept in a per-endpoint
//! stack of idle ones. The connection task of the client drives them itself; no task, channel
//! or codec of another library sits between the two sockets.
//!
//! A connection carries one exchange at a time, and goes back to the pool only when the next
//! client's bytes cannot meet anything of this exchange ([`Reuse`]): the request was sent
//! completely before the response head arrived, the response was read to its end and nothing
//! followed it, it was HTTP/1.1 without `Connection: close`, and it is not an error answer to a
//! request with a body (a server answering from the headers alone may never read that body, and
//! would parse it as the next request). Anything else closes it.

use std::collections::{HashMap, HashSet};
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use tokio::net::TcpStream;
use tokio::time::Sleep;

use crate::config::{AfterBody, Pool as PoolConfig, Timeouts};
use crate::io::{Buffer, idle_timer};

/// Read buffer of an upstream connection.
const BUFFER: usize = 16 * 1024;

/// One upstream TCP connection and what has been read from it.
#[derive(Debug)]
pub(crate) struct UpstreamConn {
    pub stream: TcpStream,
    pub buf: Buffer,
    pub addr: SocketAddr,
    /// Taken from the pool (it has carried an exchange before).
    pub reused: bool,
    pub timer: Pin<Box<Sleep>>,
}

impl UpstreamConn {
    /// Closes with a TCP reset: the exchange was aborted half-way, and the upstream must not
    /// mistake what it received for a complete request.
    pub fn reset(self) {
        let _ = self.stream.set_zero_linger();
    }
}

/// What decides, at the end of an exchange, whether its connection may carry another.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Reuse {
    /// The whole request had been sent before the response head arrived. Otherwise the
    /// upstream answered early, and what the client still sends would reach the upstream as the
    /// start of the next exchange.
    pub request_sent_first: bool,
    /// The response was read to its end, and no byte came after it.
    pub response_complete: bool,
    /// HTTP/1.1 without `Connection: close` (an HTTP/1.0 peer's keep-alive is not trusted).
    pub keep_alive: bool,
    /// A 4xx/5xx to a request with a body: the upstream may have answered from the headers
    /// alone without reading the body (an auth check's 401, a 413), and would read it as the
    /// next request.
    pub error_to_a_body: bool,
    /// The request had a body and `pool.after_body` is `close`.
    pub body_closes: bool,
}

impl Reuse {
    pub fn allowed(self) -> bool {
        self.request_sent_first
            && self.response_complete
            && self.keep_alive
            && !self.error_to_a_body
            && !self.body_closes
    }
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
    close_after_body: bool,
}

#[derive(Debug)]
struct Idle {
    conn: UpstreamConn,
    since: Instant,
}

impl Upstream {
    pub(crate) fn new(timeouts: &Timeouts, pool: &PoolConfig) -> Self {
        Self {
            inner: Arc::new(Pool {
                idle: Mutex::new(HashMap::new()),
                http10: Mutex::new(HashSet::new()),
                connect_timeout: timeouts.connect,
                idle_timeout: timeouts.idle,
                close_after_body: pool.after_body == AfterBody::Close,
            }),
        }
    }

    /// `pool.after_body: close`.
    pub(crate) fn closes_after_body(&self) -> bool {
        self.inner.close_after_body
    }

    /// Whether `addr` has answered as HTTP/1.0: it cannot read a chunked body.
    pub(crate) fn speaks_http10(&self, addr: SocketAddr) -> bool {
        self.inner.http10.lock().unwrap_or_else(PoisonError::into_inner).contains(&addr)
    }

    /// `addr` answered as HTTP/1.0.
    pub(crate) fn learned_http10(&self, addr: SocketAddr) {
        self.inner.http10.lock().unwrap_or_else(PoisonError::into_inner).insert(addr);
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
                    list.retain(|c| now.duration_since(c.since) < pool.idle_timeout && is_quiet(&c.conn.stream));
                    !list.is_empty()
                });
            }
        });
    }

    /// An idle connection to `addr` that is still open, or a new one.
    pub(crate) async fn connection(&self, addr: SocketAddr) -> io::Result<UpstreamConn> {
        if let Some(conn) = self.checkout(addr) {
            return Ok(conn);
        }
        self.connect(addr).await
    }

    /// A new connection to `addr`, never a pooled one.
    pub(crate) async fn connect(&self, addr: SocketAddr) -> io::Result<UpstreamConn> {
        let stream = match tokio::time::timeout(self.inner.connect_timeout, TcpStream::connect(addr)).await {
            Ok(connected) => connected?,
            Err(_elapsed) => return Err(io::ErrorKind::TimedOut.into()),
        };
        let _ = stream.set_nodelay(true);
        Ok(UpstreamConn { stream, buf: Buffer::new(BUFFER), addr, reused: false, timer: idle_timer() })
    }

    fn checkout(&self, addr: SocketAddr) -> Option<UpstreamConn> {
        let mut idle = self.inner.idle.lock().unwrap_or_else(PoisonError::into_inner);
        let list = idle.get_mut(&addr)?;
        let now = Instant::now();
        // Most recently returned first: the warmest connection; expired ones sit at the bottom.
        while let Some(c) = list.pop() {
            if now.duration_since(c.since) >= self.inner.idle_timeout {
                list.clear();
                return None;
            }
            if is_quiet(&c.conn.stream) {
                let mut conn = c.conn;
                conn.reused = true;
                return Some(conn);
            }
        }
        None
    }

    /// Keeps `conn` for the next exchange to its endpoint.
    pub(crate) fn put_back(&self, mut conn: UpstreamConn) {
        conn.buf.clear();
        let mut idle = self.inner.idle.lock().unwrap_or_else(PoisonError::into_inner);
        idle.entry(conn.addr).or_default().push(Idle { conn, since: Instant::now() });
    }
}

/// An idle connection is usable only while nothing has arrived on it: neither bytes (which
/// would be read as the next response) nor the end of the stream. The reactor's readiness says
/// so without a system call; only when it reports something is the socket asked.
fn is_quiet(stream: &TcpStream) -> bool {
    let mut cx = Context::from_waker(Waker::noop());
    match stream.poll_read_ready(&mut cx) {
        Poll::Pending => true,
        Poll::Ready(Err(_)) => false,
        Poll::Ready(Ok(())) => {
            let mut byte = [0u8; 1];
            matches!(stream.try_read(&mut byte), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
        }
    }
}
