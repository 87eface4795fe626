//! Two timeouts for a client connection waiting for its next request head, on hyper's one timer.
//!
//! hyper 1.12's HTTP/1 server arms `header_read_timeout` as soon as it starts reading a request
//! head, i.e. also while a keep-alive connection sits idle between requests (and before the
//! first request). Behind an ALB that closes idle keep-alive connections after
//! `timeouts.header_read` (10 s), well before the ALB's own idle timeout (60 s): a request the
//! ALB sends on a connection we are closing at that moment becomes a 502. AWS's rule is that
//! the target's keep-alive timeout must exceed the ALB's idle timeout.
//!
//! So the connection gets a [`ConnTimer`] of its own. The sleep hyper arms for "read the next
//! head" starts out as the idle timeout (`timeouts.client_idle`, counted from when hyper
//! started waiting) and turns into the head timeout (`timeouts.header_read`, counted from the
//! first byte) once [`ActivityStream`] has seen a byte arrive: an idle connection lives for
//! `client_idle`, a slow request head (slowloris) is still cut `header_read` after it began.
//! When either fires hyper closes the connection without writing anything.
//!
//! hyper's HTTP/1 server uses its timer for nothing but the header read timeout (checked for
//! 1.12; `tests/tests/proxy_protocol.rs` covers both timeouts).
//!
//! One approximation: bytes of a pipelined next request that arrived together with the
//! previous one were read before the wait began, so a head started that way is held to
//! `client_idle`, not `header_read`.
//!
//! The same stream bounds the other direction: a write to the client that cannot make progress
//! for `timeouts.client_write` fails (a client that never reads its response must not hold a
//! connection, and the upstream connection behind it, for ever), and [`Activity`] remembers it
//! so that the access log can say why the exchange ended.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use hyper::rt::{Sleep, Timer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// Counts reads that delivered bytes on one client connection.
#[derive(Debug, Default)]
pub(crate) struct Activity {
    reads: AtomicU64,
    write_timed_out: AtomicBool,
}

impl Activity {
    fn reads(&self) -> u64 {
        self.reads.load(Ordering::Relaxed)
    }

    /// A write to the client was cut off by `timeouts.client_write`.
    pub(crate) fn write_timed_out(&self) -> bool {
        self.write_timed_out.load(Ordering::Relaxed)
    }
}

/// The client's TCP stream, counting reads that delivered bytes into [`Activity`], and failing
/// a write that makes no progress for `write_timeout`.
#[derive(Debug)]
pub(crate) struct ActivityStream {
    inner: TcpStream,
    activity: Arc<Activity>,
    write_timeout: Duration,
    /// Armed while a write waits for the client; made on the first wait and reused.
    write_stall: Option<Pin<Box<tokio::time::Sleep>>>,
    write_waiting: bool,
}

impl ActivityStream {
    pub(crate) fn new(inner: TcpStream, activity: Arc<Activity>, write_timeout: Duration) -> Self {
        Self { inner, activity, write_timeout, write_stall: None, write_waiting: false }
    }

    /// Passes a write's result through; a write still waiting after `write_timeout` fails.
    fn bound_write<T>(&mut self, cx: &mut Context<'_>, polled: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        if polled.is_ready() {
            self.write_waiting = false;
            return polled;
        }
        if !self.write_waiting {
            self.write_waiting = true;
            let deadline = tokio::time::Instant::now() + self.write_timeout;
            match &mut self.write_stall {
                Some(stall) => stall.as_mut().reset(deadline),
                None => self.write_stall = Some(Box::pin(tokio::time::sleep_until(deadline))),
            }
        }
        if let Some(stall) = &mut self.write_stall
            && stall.as_mut().poll(cx).is_ready()
        {
            self.activity.write_timed_out.store(true, Ordering::Relaxed);
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "client did not read within client_write",
            )));
        }
        Poll::Pending
    }
}

impl AsyncRead for ActivityStream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let result = Pin::new(&mut this.inner).poll_read(cx, buf);
        if buf.filled().len() != before {
            // Only this connection's task touches the counter: a relaxed add is enough.
            this.activity.reads.fetch_add(1, Ordering::Relaxed);
        }
        result
    }
}

impl AsyncWrite for ActivityStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.bound_write(cx, polled)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.bound_write(cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_flush(cx);
        this.bound_write(cx, polled)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// hyper's timer for one client connection (see the module docs).
#[derive(Debug, Clone)]
pub(crate) struct ConnTimer {
    activity: Arc<Activity>,
    header_read: Duration,
    client_idle: Duration,
}

impl ConnTimer {
    pub(crate) fn new(activity: Arc<Activity>, header_read: Duration, client_idle: Duration) -> Self {
        Self { activity, header_read, client_idle }
    }
}

impl Timer for ConnTimer {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn Sleep>> {
        self.sleep_until(Instant::now() + duration)
    }

    /// hyper asks for "now + header_read" when it starts waiting for a request head.
    fn sleep_until(&self, deadline: Instant) -> Pin<Box<dyn Sleep>> {
        Box::pin(HeadSleep {
            activity: self.activity.clone(),
            reads_at_start: self.activity.reads(),
            waiting_since: deadline.checked_sub(self.header_read).unwrap_or(deadline),
            header_read: self.header_read,
            client_idle: self.client_idle,
            head_started: false,
            sleep: None,
        })
    }

    fn reset(&self, sleep: &mut Pin<Box<dyn Sleep>>, new_deadline: Instant) {
        *sleep = self.sleep_until(new_deadline);
    }
}

/// Idle until a byte arrives (deadline `waiting_since + client_idle`), then a head read
/// (deadline: first byte seen + `header_read`).
#[derive(Debug)]
struct HeadSleep {
    activity: Arc<Activity>,
    reads_at_start: u64,
    waiting_since: Instant,
    header_read: Duration,
    client_idle: Duration,
    head_started: bool,
    /// Made on the first poll: a head already buffered never needs a timer entry.
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl Future for HeadSleep {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        if !this.head_started && this.activity.reads() != this.reads_at_start {
            // hyper polls this right after a read that left the head incomplete, so "now" is
            // when the head's first bytes came.
            this.head_started = true;
            let deadline = tokio::time::Instant::now() + this.header_read;
            match &mut this.sleep {
                Some(sleep) => sleep.as_mut().reset(deadline),
                None => this.sleep = Some(Box::pin(tokio::time::sleep_until(deadline))),
            }
        }
        let sleep = this
            .sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until((this.waiting_since + this.client_idle).into())));
        sleep.as_mut().poll(cx)
    }
}

impl Sleep for HeadSleep {}
