//! Body types: the request body sent upstream (length-limited)
//! and the response body (the upstream's, streamed, or a short local answer).

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use crate::upstream::PooledBody;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The request body grew past `limits.max_body_bytes`.
#[derive(Debug, thiserror::Error)]
#[error("request body is larger than the configured limit")]
pub struct BodyTooLarge;

/// A client's request body on its way upstream.
///
/// Streams without buffering. Counts bytes against the body limit (a chunked body has no
/// length to check up front).
#[derive(Debug)]
pub struct RequestBody {
    inner: Option<Incoming>,
    remaining: u64,
}

impl RequestBody {
    /// An empty body (GET and friends).
    pub fn empty() -> Self {
        Self { inner: None, remaining: u64::MAX }
    }

    pub fn new(inner: Incoming, limit: Option<u64>) -> Self {
        Self { inner: Some(inner), remaining: limit.unwrap_or(u64::MAX) }
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let Some(inner) = this.inner.as_mut() else { return Poll::Ready(None) };
        match Pin::new(inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    let len = data.len() as u64;
                    if len > this.remaining {
                        return Poll::Ready(Some(Err(Box::new(BodyTooLarge))));
                    }
                    this.remaining -= len;
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(Box::new(e)))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
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
