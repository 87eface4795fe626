//! Body types: the client's request body on its way upstream (buffered when small, streamed
//! and coalesced when large; length-limited; timed) and the response body (the upstream's,
//! streamed, or a short local answer), which writes the access log line when it ends.

use std::error::Error;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::error::ProxyError;
use crate::upstream::PooledBody;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The most a streamed request body hands upstream at once: one-byte chunks from the client
/// become one large chunk upstream instead of a million small ones.
const COALESCE_BYTES: usize = 64 * 1024;

/// The longest a streamed piece of a request body is held while more of it may follow.
const FLUSH_AFTER: Duration = Duration::from_millis(1);

/// Why the client's body could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BodyFault {
    /// The body grew past `limits.max_body_bytes`.
    #[error("request body is larger than the configured limit")]
    TooLarge,
    /// The client paused longer than `timeouts.body_read` between two pieces of its body.
    #[error("the client sent no request body data within the body read timeout")]
    Stalled,
    /// The body arrived slower than `limits.min_body_rate` allows.
    #[error("the client sent its request body slower than the minimum rate")]
    TooSlow,
    /// Malformed chunked framing, or the client went away in the middle of its body.
    #[error("reading the request body from the client failed")]
    Malformed,
}

impl From<BodyFault> for ProxyError {
    fn from(fault: BodyFault) -> Self {
        match fault {
            BodyFault::TooLarge => Self::BodyTooLarge,
            BodyFault::Stalled => Self::BodyReadTimeout,
            BodyFault::TooSlow => Self::BodyTooSlow,
            BodyFault::Malformed => Self::BadRequestBody,
        }
    }
}

/// When an upstream exchange failed because of the client's body (somewhere in the error's
/// source chain), what the client gets instead of a 502: the upstream is not at fault.
pub fn client_fault(error: &(dyn Error + 'static)) -> Option<ProxyError> {
    error.downcast_ref::<BodyFault>().map(|fault| ProxyError::from(*fault))
}

/// The timing rules for reading a client's body.
#[derive(Debug, Clone, Copy)]
pub struct BodyRules {
    /// `limits.max_body_bytes`.
    pub limit: Option<u64>,
    /// `timeouts.body_read`: the longest pause between two pieces, and the grace before the
    /// rate counts.
    pub gap: Duration,
    /// `limits.min_body_rate` in bytes per second; 0 for none.
    pub min_rate: u64,
}

/// Reads the client's body frame by frame, coalescing what is already there, and enforcing the
/// limit, the gap timer and the minimum rate. Trailers are dropped: the proxy does not forward
/// request trailers.
///
/// hyper hands a body over one frame (one chunk) at a time, each after a turn of the client
/// connection's task. So when a frame has arrived and the next is not there yet, the reader
/// holds what it has for at most [`FLUSH_AFTER`] while more arrives: a client streaming one-byte
/// chunks is forwarded in large pieces instead of a million small ones, at the price of that
/// delay for a piece that is followed by nothing.
#[derive(Debug)]
pub struct BodyReader {
    inner: Incoming,
    rules: BodyRules,
    started: Instant,
    received: u64,
    /// What has been read and not yet handed on: the first frame as it came (no copy for the
    /// common single-frame case), and any later ones appended to a copy of it.
    first: Option<Bytes>,
    more: BytesMut,
    /// Armed when data is held and more may follow: when it fires, what is held goes on.
    flush: Option<Pin<Box<tokio::time::Sleep>>>,
    flush_armed: bool,
    /// Armed when the client's next piece is awaited; made on the first wait and reused.
    stall: Option<Pin<Box<tokio::time::Sleep>>>,
    /// Whether the timer is armed for the current wait (a new wait re-arms it, a wait in
    /// progress must not).
    waiting: bool,
    /// Which rule the armed timer enforces.
    stall_fault: BodyFault,
    ended: bool,
}

impl BodyReader {
    pub fn new(inner: Incoming, rules: BodyRules) -> Self {
        Self {
            inner,
            rules,
            started: Instant::now(),
            received: 0,
            first: None,
            more: BytesMut::new(),
            flush: None,
            flush_armed: false,
            stall: None,
            waiting: false,
            stall_fault: BodyFault::Stalled,
            ended: false,
        }
    }

    /// Whether the client's body has ended and everything read was handed on.
    pub fn is_end(&self) -> bool {
        (self.ended || self.inner.is_end_stream()) && self.held() == 0
    }

    /// The body's exact remaining length, when its framing says.
    fn remaining_exact(&self) -> Option<u64> {
        let held = self.held() as u64;
        if self.ended { Some(held) } else { self.inner.size_hint().exact().map(|rest| rest + held) }
    }

    fn held(&self) -> usize {
        self.first.as_ref().map_or(0, Bytes::len) + self.more.len()
    }

    fn hold(&mut self, data: Bytes) {
        match &self.first {
            None if self.more.is_empty() => self.first = Some(data),
            _ => {
                if let Some(first) = self.first.take() {
                    self.more.reserve(first.len() + data.len());
                    self.more.extend_from_slice(&first);
                }
                self.more.extend_from_slice(&data);
            }
        }
    }

    fn take_held(&mut self) -> Option<Bytes> {
        self.flush_armed = false;
        match self.first.take() {
            Some(first) => Some(first),
            None if self.more.is_empty() => None,
            None => Some(self.more.split().freeze()),
        }
    }

    /// The next piece: what the client has sent, coalesced up to about `max` bytes, or `None`
    /// at the end.
    pub fn poll_chunk(&mut self, cx: &mut Context<'_>, max: usize) -> Poll<Option<Result<Bytes, BodyFault>>> {
        while !self.ended && self.held() < max {
            match Pin::new(&mut self.inner).poll_frame(cx) {
                Poll::Pending if self.held() == 0 => return self.poll_stall(cx),
                Poll::Pending => {
                    if self.flush_due(cx) {
                        break;
                    }
                    return Poll::Pending;
                }
                Poll::Ready(None) => self.ended = true,
                Poll::Ready(Some(Err(_))) => return Poll::Ready(Some(Err(BodyFault::Malformed))),
                Poll::Ready(Some(Ok(frame))) => {
                    self.waiting = false;
                    let Ok(data) = frame.into_data() else { continue };
                    self.received += data.len() as u64;
                    if self.rules.limit.is_some_and(|limit| self.received > limit) {
                        return Poll::Ready(Some(Err(BodyFault::TooLarge)));
                    }
                    self.hold(data);
                    if self.inner.is_end_stream() {
                        self.ended = true;
                    }
                }
            }
        }
        Poll::Ready(self.take_held().map(Ok))
    }

    /// Whether held data must go on now: the flush timer, armed when data was first held, has
    /// fired.
    fn flush_due(&mut self, cx: &mut Context<'_>) -> bool {
        if !self.flush_armed {
            self.flush_armed = true;
            let deadline = Instant::now() + FLUSH_AFTER;
            match &mut self.flush {
                Some(flush) => flush.as_mut().reset(deadline),
                None => self.flush = Some(Box::pin(tokio::time::sleep_until(deadline))),
            }
        }
        self.flush.as_mut().is_some_and(|flush| flush.as_mut().poll(cx).is_ready())
    }

    /// The client has nothing for us: wait, bounded by the gap and the rate.
    fn poll_stall(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Bytes, BodyFault>>> {
        if !self.waiting {
            self.waiting = true;
            let now = Instant::now();
            // A timeout of years is as good as none, and must not overflow the clock.
            let far = now + Duration::from_secs(1 << 30);
            let gap_deadline = now.checked_add(self.rules.gap).unwrap_or(far);
            let (deadline, fault) = match self.rate_deadline() {
                Some(rate) if rate < gap_deadline => (rate.max(now), BodyFault::TooSlow),
                _ => (gap_deadline, BodyFault::Stalled),
            };
            self.stall_fault = fault;
            match &mut self.stall {
                Some(stall) => stall.as_mut().reset(deadline),
                None => self.stall = Some(Box::pin(tokio::time::sleep_until(deadline))),
            }
        }
        if let Some(stall) = &mut self.stall
            && stall.as_mut().poll(cx).is_ready()
        {
            return Poll::Ready(Some(Err(self.stall_fault)));
        }
        Poll::Pending
    }

    /// When the body falls below the minimum rate: `started + gap + received / min_rate`.
    fn rate_deadline(&self) -> Option<Instant> {
        if self.rules.min_rate == 0 {
            return None;
        }
        let allowance =
            self.rules.gap.checked_add(Duration::from_secs_f64(self.received as f64 / self.rules.min_rate as f64))?;
        self.started.checked_add(allowance)
    }
}

/// How a client's body stands once the proxy has read what it buffers before connecting.
#[derive(Debug)]
pub enum BodyStart {
    /// No body at all.
    Empty,
    /// The whole body, read before an upstream was chosen.
    Complete(Bytes),
    /// The first bytes; the rest streams from the reader.
    Partial { prefix: Bytes, rest: BodyReader },
}

/// Reads up to `buffer` bytes of the client's body before any upstream is involved: a body
/// that fits is read completely (and so is validated and gets a `Content-Length` upstream);
/// a larger one streams after what was read.
pub async fn start_body(incoming: Incoming, rules: BodyRules, buffer: usize) -> Result<BodyStart, BodyFault> {
    if incoming.is_end_stream() {
        return Ok(BodyStart::Empty);
    }
    let mut reader = BodyReader::new(incoming, rules);
    if buffer == 0 {
        return Ok(BodyStart::Partial { prefix: Bytes::new(), rest: reader });
    }
    let mut buf = BytesMut::new();
    loop {
        let want = buffer.saturating_sub(buf.len()).max(1);
        match std::future::poll_fn(|cx| reader.poll_chunk(cx, want)).await {
            None => return Ok(BodyStart::Complete(buf.freeze())),
            Some(Err(fault)) => return Err(fault),
            Some(Ok(data)) => {
                if buf.is_empty() && reader.is_end() {
                    // One frame held the whole body: no copy.
                    return Ok(BodyStart::Complete(data));
                }
                buf.extend_from_slice(&data);
                if reader.is_end() {
                    return Ok(BodyStart::Complete(buf.freeze()));
                }
                if buf.len() >= buffer {
                    return Ok(BodyStart::Partial { prefix: buf.freeze(), rest: reader });
                }
            }
        }
    }
}

/// Marks an exchange's request as completely handed to the upstream connection; the pool
/// reuses a connection only if that happened before the response head arrived.
#[derive(Debug, Clone, Default)]
pub struct RequestDone(Arc<AtomicBool>);

impl RequestDone {
    pub fn set(&self) {
        self.0.store(true, Ordering::Release);
    }

    pub fn is_set(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

/// Asks the upstream connection to be reset rather than closed cleanly: a request whose body
/// turned out malformed must end in a way the backend cannot mistake for a complete request.
#[derive(Debug, Clone, Default)]
pub struct AbortFlag(Arc<AtomicBool>);

impl AbortFlag {
    pub fn set(&self) {
        self.0.store(true, Ordering::Release);
    }

    pub fn is_set(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

/// A client's request body on its way upstream.
#[derive(Debug)]
pub struct RequestBody {
    prefix: Option<Bytes>,
    rest: Option<BodyReader>,
    /// Told when the last byte has been handed upstream (or the body failed): the request
    /// timeout starts then.
    on_end: Option<oneshot::Sender<()>>,
    done: RequestDone,
    abort: AbortFlag,
}

impl RequestBody {
    /// The body to send for `start`, what resolves once it has all gone upstream (or failed;
    /// the receiver also resolves when the body is dropped), and the flags the pool reads.
    pub fn new(start: BodyStart) -> (Self, oneshot::Receiver<()>) {
        let (on_end, ended) = oneshot::channel();
        let (prefix, rest) = match start {
            BodyStart::Empty => (None, None),
            BodyStart::Complete(bytes) => ((!bytes.is_empty()).then_some(bytes), None),
            BodyStart::Partial { prefix, rest } => ((!prefix.is_empty()).then_some(prefix), Some(rest)),
        };
        let mut body =
            Self { prefix, rest, on_end: Some(on_end), done: RequestDone::default(), abort: AbortFlag::default() };
        if body.is_end_stream() {
            body.finished();
        }
        (body, ended)
    }

    pub fn done_flag(&self) -> RequestDone {
        self.done.clone()
    }

    /// Which connection to reset when this body fails half-way.
    pub fn set_abort_flag(&mut self, abort: AbortFlag) {
        self.abort = abort;
    }

    fn finished(&mut self) {
        self.done.set();
        self.ended();
    }

    fn ended(&mut self) {
        if let Some(on_end) = self.on_end.take() {
            let _ = on_end.send(());
        }
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if let Some(prefix) = this.prefix.take() {
            if this.rest.as_ref().is_none_or(BodyReader::is_end) {
                this.finished();
            }
            return Poll::Ready(Some(Ok(Frame::data(prefix))));
        }
        let Some(rest) = this.rest.as_mut() else {
            this.finished();
            return Poll::Ready(None);
        };
        match rest.poll_chunk(cx, COALESCE_BYTES) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(None) => {
                this.finished();
                Poll::Ready(None)
            }
            Poll::Ready(Some(Ok(data))) => {
                // hyper stops polling a body with a known length once it says it has ended.
                if rest.is_end() {
                    this.finished();
                }
                Poll::Ready(Some(Ok(Frame::data(data))))
            }
            Poll::Ready(Some(Err(fault))) => {
                this.abort.set();
                this.ended();
                Poll::Ready(Some(Err(Box::new(fault))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.prefix.is_none() && self.rest.as_ref().is_none_or(BodyReader::is_end)
    }

    fn size_hint(&self) -> SizeHint {
        let prefix = self.prefix.as_ref().map_or(0, |p| p.len() as u64);
        match &self.rest {
            None => SizeHint::with_exact(prefix),
            Some(rest) => match rest.remaining_exact() {
                Some(remaining) => SizeHint::with_exact(prefix + remaining),
                None => {
                    let mut hint = SizeHint::new();
                    hint.set_lower(prefix);
                    hint
                }
            },
        }
    }
}

/// How a response body ended, for the access log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Every byte reached the client's connection.
    Complete,
    /// The upstream paused longer than `timeouts.upstream_read` in the middle of its body.
    UpstreamReadTimeout,
    /// The upstream's body failed (reset, cut short, malformed framing).
    UpstreamFailed,
    /// The client connection ended first (gone, or cut off by `timeouts.client_write`).
    ClientGone,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Complete => "complete",
            Self::UpstreamReadTimeout => "upstream_read_timeout",
            Self::UpstreamFailed => "upstream_failed",
            Self::ClientGone => "client_gone",
        }
    }
}

/// Told once, when a response body has ended one way or another: the exchange's real outcome,
/// duration and size are known only then.
pub trait ExchangeEnd: Send + Sync + std::fmt::Debug {
    fn ended(self: Box<Self>, outcome: Outcome, body_bytes: u64);
}

/// What the client receives: the upstream's body as it arrives, or a short local answer; and
/// who is told how it ended.
#[derive(Debug)]
pub struct ResponseBody {
    kind: Kind,
    sent: u64,
    outcome: Option<Outcome>,
    on_end: Option<Box<dyn ExchangeEnd>>,
}

#[derive(Debug)]
enum Kind {
    Upstream(PooledBody),
    Local(Option<Bytes>),
}

impl ResponseBody {
    pub fn upstream(body: PooledBody) -> Self {
        Self { kind: Kind::Upstream(body), sent: 0, outcome: None, on_end: None }
    }

    pub fn local(bytes: &'static [u8]) -> Self {
        Self::local_bytes(Some(Bytes::from_static(bytes)))
    }

    /// No body (a HEAD answer, an upgrade).
    pub fn empty() -> Self {
        Self::local_bytes(None)
    }

    fn local_bytes(bytes: Option<Bytes>) -> Self {
        Self { kind: Kind::Local(bytes), sent: 0, outcome: None, on_end: None }
    }

    /// Tells `on_end` how this body ended, when it does.
    pub fn on_end(&mut self, on_end: Box<dyn ExchangeEnd>) {
        self.on_end = Some(on_end);
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let polled = match &mut this.kind {
            Kind::Upstream(body) => Pin::new(body).poll_frame(cx),
            Kind::Local(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
        };
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                this.sent += frame.data_ref().map_or(0, |d| d.len() as u64);
            }
            Poll::Ready(Some(Err(e))) => {
                this.outcome = Some(if e.is::<crate::upstream::UpstreamReadTimeout>() {
                    Outcome::UpstreamReadTimeout
                } else {
                    Outcome::UpstreamFailed
                });
            }
            Poll::Ready(None) => this.outcome = Some(Outcome::Complete),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Upstream(body) => body.is_end_stream(),
            Kind::Local(bytes) => bytes.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Upstream(body) => body.size_hint(),
            Kind::Local(bytes) => SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64)),
        }
    }
}

impl Drop for ResponseBody {
    fn drop(&mut self) {
        if let Some(on_end) = self.on_end.take() {
            // hyper drops a body it has written completely without polling it past its end.
            let complete = self.is_end_stream();
            let outcome = self.outcome.unwrap_or(if complete { Outcome::Complete } else { Outcome::ClientGone });
            on_end.ended(outcome, self.sent);
        }
    }
}
