//! The client side of a connection: its socket, the buffers its requests reuse, the answers
//! the proxy gives itself, and the unforwarded body it skips or the close. Used by the
//! connection loop (`connection.rs`) and by forwarding (`forward.rs`).

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};

use crate::Shared;
use crate::body::{BodyRules, ClientBody};
use crate::error::{Answer, ProxyError};
use crate::h1::Version;
use crate::h1::request::RequestHead;
use crate::headers::{ClientFacts, ClientHead, OutFraming, write_local_answer};
use crate::io::{Buffer, IoFault, deadline_in, idle_timer, write_all};
use crate::phases::Exchange;

/// The client read buffer's starting size; it grows to what the head limit needs.
const BUFFER: usize = 16 * 1024;

/// The most of an unforwarded request's body (a refused request's) read and thrown away to
/// keep the connection; a longer one closes it.
const DRAIN_LIMIT: u64 = 64 * 1024;

/// A client connection and the buffers its requests reuse.
pub(crate) struct ClientConn {
    pub shared: Arc<Shared>,
    pub stream: TcpStream,
    pub peer: SocketAddr,
    pub facts: ClientFacts,
    pub buf: Buffer,
    pub head: RequestHead,
    /// Bytes for the client: response heads, local answers, framed body pieces.
    pub out: Vec<u8>,
    /// Bytes for the upstream: the request head, and a buffered body.
    pub up_head: Vec<u8>,
    /// The decoded request body read so far.
    pub body: Vec<u8>,
    pub timer: Pin<Box<Sleep>>,
}

impl ClientConn {
    pub(crate) fn new(shared: Arc<Shared>, stream: TcpStream, peer: SocketAddr) -> Self {
        let local = stream.local_addr().unwrap_or(peer);
        let facts = ClientFacts {
            peer_ip: peer.ip().to_string().into_bytes(),
            local_port: local.port().to_string().into_bytes(),
        };
        Self {
            shared,
            stream,
            peer,
            facts,
            buf: Buffer::new(BUFFER),
            head: RequestHead::default(),
            out: Vec::with_capacity(1024),
            up_head: Vec::with_capacity(1024),
            body: Vec::new(),
            timer: idle_timer(),
        }
    }

    /// Answers a request with a failure the proxy decided before forwarding anything, then
    /// skips the request's body if the connection may be kept.
    pub(crate) async fn fail(&mut self, x: &mut Exchange, error: ProxyError) -> bool {
        let answer = error.answer();
        let keep = self
            .answer(x, answer, self.head.version, self.head.method.get(self.buf.readable()) == b"HEAD", Some(error))
            .await;
        keep && self.skip_body().await
    }

    pub(crate) async fn answer_plain(&mut self, x: &mut Exchange, answer: Answer, content_type: &[u8]) -> bool {
        let head_request = self.head.method.get(self.buf.readable()) == b"HEAD";
        self.write_answer(x, answer, content_type, self.head.version, head_request, None).await
    }

    /// Writes a JSON failure answer; whether the connection may be kept.
    pub(crate) async fn answer(
        &mut self,
        x: &mut Exchange,
        answer: Answer,
        version: Version,
        head_request: bool,
        error: Option<ProxyError>,
    ) -> bool {
        x.error = error;
        self.write_answer(x, answer, b"application/json", version, head_request, error).await
    }

    async fn write_answer(
        &mut self,
        x: &mut Exchange,
        answer: Answer,
        content_type: &[u8],
        version: Version,
        head_request: bool,
        error: Option<ProxyError>,
    ) -> bool {
        let close = answer.close || !self.head.keep_alive;
        let head = ClientHead {
            version: version_bytes(version),
            status: answer.status.as_u16(),
            request_id: x.request_id.as_bytes(),
            via: None,
            framing: OutFraming::Length(answer.body.len() as u64),
            close,
            keep_alive_header: !close && version == Version::Http10,
            upgrade: false,
        };
        let extra = answer.allow.map(|allow| (&b"allow"[..], allow.as_bytes()));
        write_local_answer(&mut self.out, &head, content_type, extra, answer.body, !head_request);
        x.status = answer.status.as_u16();
        x.error = x.error.or(error);
        x.head_sent = Some(Instant::now());
        let written =
            write_all(&mut self.stream, &self.out, b"", &mut self.timer, self.shared.settings.timeouts.client_write)
                .await;
        x.response_body_bytes = if head_request { 0 } else { answer.body.len() as u64 };
        match written {
            Ok(()) => !close,
            Err(fault) => {
                x.outcome = client_outcome(&fault);
                false
            }
        }
    }

    /// The body of a request that was answered without being forwarded: read and thrown away
    /// when it is short, so that the connection can carry the next request; otherwise the
    /// connection closes. Whether the connection may be kept.
    pub(crate) async fn skip_body(&mut self) -> bool {
        let head_len = self.head.len;
        self.buf.consume(head_len);
        let rules = self.body_rules();
        let mut body = ClientBody::new(self.head.framing, rules, self.shared.settings.limits.max_header_bytes);
        if body.is_done() {
            return true;
        }
        // A client waiting for `100 Continue` may or may not send its body now.
        if self.head.expect_continue {
            return false;
        }
        let mut scratch = std::mem::take(&mut self.body);
        let mut skipped = 0u64;
        let kept = loop {
            scratch.clear();
            match body.take(self.buf.readable(), &mut scratch) {
                Ok(consumed) => self.buf.consume(consumed),
                Err(_) => break false,
            }
            skipped += scratch.len() as u64;
            if body.is_done() {
                break true;
            }
            if skipped > DRAIN_LIMIT {
                break false;
            }
            let (deadline, _) = body.deadline();
            match self.buf.read_from(&mut self.stream, &mut self.timer, deadline).await {
                Ok(0) | Err(_) => break false,
                Ok(_) => {}
            }
        };
        scratch.clear();
        self.body = scratch;
        kept
    }

    pub(crate) fn body_rules(&self) -> BodyRules {
        BodyRules {
            limit: self.shared.settings.limits.max_body_bytes,
            gap: self.shared.settings.timeouts.body_read,
            min_rate: self.shared.settings.limits.min_body_rate,
        }
    }

    /// Closes the connection: our side first (FIN), then a short lingering read so that bytes
    /// the client is still sending do not turn the close into a reset that could destroy the
    /// answer it has not read yet (what nginx's `lingering_close` is for).
    pub(crate) async fn close(&mut self) {
        let _ = self.stream.shutdown().await;
        let deadline = deadline_in(std::time::Duration::from_secs(1));
        let mut drained = 0;
        while drained < DRAIN_LIMIT as usize {
            self.buf.clear();
            match self.buf.read_from(&mut self.stream, &mut self.timer, deadline).await {
                Ok(0) | Err(_) => return,
                Ok(n) => drained += n,
            }
        }
    }
}

/// What a failed write to the client says about how the exchange ended.
pub(crate) fn client_outcome(fault: &IoFault) -> crate::phases::Outcome {
    match fault {
        IoFault::Timeout => crate::phases::Outcome::ClientWriteTimeout,
        _ => crate::phases::Outcome::ClientGone,
    }
}

pub(crate) fn version_bytes(version: Version) -> &'static [u8] {
    match version {
        Version::Http10 => b"HTTP/1.0",
        Version::Http11 => b"HTTP/1.1",
    }
}
