//! Body types: the request body sent upstream (length-limited, with a read timeout)
//! and the response body (the upstream's, streamed, or a short local answer).

use std::error::Error;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::sync::oneshot;

use crate::error::ProxyError;
use crate::upstream::PooledBody;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The request body grew past `limits.max_body_bytes`.
#[derive(Debug, thiserror::Error)]
#[error("request body is larger than the configured limit")]
pub struct BodyTooLarge;

/// The client paused longer than `timeouts.body_read` between two pieces of its body.
#[derive(Debug, thiserror::Error)]
#[error("the client sent no request body data within the body read timeout")]
pub struct BodyReadTimeout;

/// Reading the client's body failed: malformed chunked framing, or the client went away.
#[derive(Debug, thiserror::Error)]
#[error("reading the request body from the client failed")]
pub struct ClientBodyError(#[source] hyper::Error);

/// When an upstream exchange failed because of the client's body (somewhere in the error's
/// source chain), what the client gets instead of a 502: the upstream is not at fault.
pub fn client_fault(error: &(dyn Error + 'static)) -> Option<ProxyError> {
    if error.is::<BodyTooLarge>() {
        Some(ProxyError::BodyTooLarge)
    } else if error.is::<BodyReadTimeout>() {
        Some(ProxyError::BodyReadTimeout)
    } else if error.is::<ClientBodyError>() {
        Some(ProxyError::BadRequestBody)
    } else {
        None
    }
}

/// A client's request body on its way upstream.
///
/// Streams without buffering. Counts bytes against the body limit (a chunked body has no
/// length to check up front). While it waits for the client (not while the upstream is slow
/// to take what was read), a timer runs: `read_timeout` without a byte ends the body with
/// [`BodyReadTimeout`], which aborts the upstream request.
#[derive(Debug)]
pub struct RequestBody {
    inner: Option<Incoming>,
    remaining: u64,
    read_timeout: Duration,
    /// Armed when the client's next piece is awaited; made on the first wait and reused.
    stall: Option<Pin<Box<tokio::time::Sleep>>>,
    waiting: bool,
    /// Told when the last byte has been handed upstream (or the body failed): the request
    /// timeout starts then.
    on_end: Option<oneshot::Sender<()>>,
}

impl RequestBody {
    /// An empty body (GET and friends).
    pub fn empty() -> Self {
        Self {
            inner: None,
            remaining: u64::MAX,
            read_timeout: Duration::MAX,
            stall: None,
            waiting: false,
            on_end: None,
        }
    }

    /// A client's body, and what resolves once it has all gone upstream (or failed; the
    /// receiver also resolves when the body is dropped).
    pub fn new(inner: Incoming, limit: Option<u64>, read_timeout: Duration) -> (Self, oneshot::Receiver<()>) {
        let (on_end, ended) = oneshot::channel();
        let remaining = limit.unwrap_or(u64::MAX);
        let body =
            Self { inner: Some(inner), remaining, read_timeout, stall: None, waiting: false, on_end: Some(on_end) };
        (body, ended)
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
        let Some(inner) = this.inner.as_mut() else { return Poll::Ready(None) };
        let Poll::Ready(polled) = Pin::new(inner).poll_frame(cx) else {
            if !this.waiting {
                this.waiting = true;
                let now = tokio::time::Instant::now();
                // A timeout of years is as good as none, and must not overflow the clock.
                let deadline = now.checked_add(this.read_timeout).unwrap_or(now + Duration::from_secs(1 << 30));
                match &mut this.stall {
                    Some(stall) => stall.as_mut().reset(deadline),
                    None => this.stall = Some(Box::pin(tokio::time::sleep_until(deadline))),
                }
            }
            if let Some(stall) = &mut this.stall
                && stall.as_mut().poll(cx).is_ready()
            {
                this.ended();
                return Poll::Ready(Some(Err(Box::new(BodyReadTimeout))));
            }
            return Poll::Pending;
        };
        this.waiting = false;
        let frame = match polled {
            Some(Ok(frame)) => frame,
            Some(Err(e)) => {
                this.ended();
                return Poll::Ready(Some(Err(Box::new(ClientBodyError(e)))));
            }
            None => {
                this.ended();
                return Poll::Ready(None);
            }
        };
        if let Some(data) = frame.data_ref() {
            let len = data.len() as u64;
            if len > this.remaining {
                this.ended();
                return Poll::Ready(Some(Err(Box::new(BodyTooLarge))));
            }
            this.remaining -= len;
        }
        // hyper stops polling a body with a known length once it says it has ended.
        if this.inner.as_ref().is_none_or(Body::is_end_stream) {
            this.ended();
        }
        Poll::Ready(Some(Ok(frame)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.as_ref().map_or_else(|| SizeHint::with_exact(0), Body::size_hint)
    }
}

/// What the client receives: the upstream's body as it arrives, or a short local answer.
#[derive(Debug)]
pub enum ResponseBody {
    Upstream(PooledBody),
    Local(Option<Bytes>),
}

impl ResponseBody {
    pub fn local(bytes: &'static [u8]) -> Self {
        Self::Local(Some(Bytes::from_static(bytes)))
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            Self::Upstream(body) => Pin::new(body).poll_frame(cx),
            Self::Local(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::Upstream(body) => body.is_end_stream(),
            Self::Local(bytes) => bytes.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Self::Upstream(body) => body.size_hint(),
            Self::Local(bytes) => SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64)),
        }
    }
}
