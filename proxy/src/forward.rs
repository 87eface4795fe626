//! Forwarding a routed request, in the client connection's own task: the request body's start
//! (small bodies read whole, large ones streamed), the upstream connection, the exchange, the
//! response relayed, and whether each connection may carry another exchange.

use std::net::SocketAddr;
use std::ops::Range;
use std::sync::Arc;

use http::StatusCode;
use tokio::io::AsyncWriteExt;
use tokio::time::Instant;

use crate::Shared;
use crate::body::{BodyFault, ClientBody};
use crate::client::{ClientConn, client_outcome, version_bytes};
use crate::error::ProxyError;
use crate::h1::chunked::{ChunkedDecoder, LAST_CHUNK, write_chunk, write_chunk_size};
use crate::h1::response::{RequestKind, ResponseError, ResponseHead, parse as parse_response};
use crate::h1::{Framing, Version};
use crate::headers::{ClientHead, OutFraming, is_websocket_upgrade, write_client_head};
use crate::io::{IoFault, deadline_in, write_all};
use crate::metrics::UpstreamErrorKind;
use crate::phases::{
    Exchange, Outcome, finish_upstream_head, upstream_peer, upstream_peer_after_failure, upstream_request_filter,
};
use crate::table::Backend;
use crate::upstream::{Reuse, UpstreamConn};

/// Response body bytes sent together with the head when they came with it; beyond this they
/// go in a second write rather than being copied.
const COPY_WITH_HEAD: usize = 16 * 1024;

/// How sending the request ended.
enum Sent {
    /// All of it, before any answer.
    Complete,
    /// The upstream began to answer while the client's body was still coming: the rest of the
    /// body is not forwarded, and neither connection carries another exchange.
    Early,
}

/// Why sending the request failed.
enum SendError {
    /// The client's body broke a rule (the client gets its 4xx).
    Body(BodyFault),
    /// The client went away in the middle of its body.
    ClientGone,
    /// The upstream did not take the bytes (closed, reset, or stalled past `upstream_read`).
    Upstream(IoFault),
}

/// Why no response head could be read.
enum HeadFault {
    /// No byte came within the request timeout.
    Timeout,
    /// The connection ended (or was reset) before a single byte of an answer.
    ClosedBeforeAnswer,
    /// The connection ended in the middle of a head.
    Closed,
    /// The bytes are not an answer the proxy can relay.
    Protocol(ResponseError),
}

/// Forwards the request whose head is parsed in `conn.head`; whether the client connection may
/// carry another request.
pub(crate) async fn forward(
    conn: &mut ClientConn,
    x: &mut Exchange,
    backend: Arc<Backend>,
    path_range: Range<usize>,
    upstream_path: Option<String>,
) -> bool {
    let shared = conn.shared.clone();
    // Phase 2: the upstream's request head.
    let websocket = {
        let buf = conn.buf.readable();
        let path = upstream_path.as_deref().map_or(&buf[path_range], str::as_bytes);
        match upstream_request_filter(&shared, &mut conn.up_head, buf, &conn.head, path, &x.request_id, &conn.facts) {
            Ok(websocket) => websocket,
            Err(_) => return conn.fail(x, ProxyError::BadForwardedFor).await,
        }
    };
    let version = conn.head.version;
    let method = conn.head.method.get(conn.buf.readable());
    let request_kind = if method == b"HEAD" { RequestKind::Head } else { RequestKind::Other };
    let idempotent = is_idempotent(method);
    let keep_alive_request = conn.head.keep_alive;
    let framed_body = conn.head.framed_body;
    let expect_continue = conn.head.expect_continue;
    let framing = conn.head.framing;
    let head_len = conn.head.len;
    conn.buf.consume(head_len);

    // Phase 3: the body's start. A small body is read whole before any upstream is involved (a
    // slow client holds no upstream connection, a malformed body reaches none, the upstream
    // gets a Content-Length); a larger one streams after what was read.
    conn.body.clear();
    let mut body = ClientBody::new(framing, conn.body_rules(), shared.settings.limits.max_header_bytes);
    if let Err(fault) = read_body_start(conn, &mut body, expect_continue).await {
        return match fault {
            Some(fault) => fail_closed(conn, x, version, request_kind, fault.into()).await,
            None => false,
        };
    }
    let streaming = !body.is_done();
    let out_framing = match (streaming, body.remaining_length()) {
        (true, Some(rest)) => OutFraming::Length(conn.body.len() as u64 + rest),
        (true, None) => OutFraming::Chunked,
        (false, _) if conn.body.is_empty() && !framed_body => OutFraming::None,
        (false, _) => OutFraming::Length(conn.body.len() as u64),
    };
    finish_upstream_head(&mut conn.up_head, out_framing);
    if out_framing == OutFraming::Chunked && !conn.body.is_empty() {
        // A streamed chunked body's first piece goes with the head, as a chunk of its own.
        write_chunk_size(&mut conn.up_head, conn.body.len());
        conn.up_head.extend_from_slice(&conn.body);
        conn.up_head.extend_from_slice(b"\r\n");
        conn.body.clear();
    }

    // Phase 4: the endpoint, and the connection to it.
    let Some((index, addr)) = upstream_peer(&backend) else {
        return fail_closed(conn, x, version, request_kind, ProxyError::NoReadyEndpoint).await;
    };
    if out_framing == OutFraming::Chunked && shared.upstream.speaks_http10(addr) {
        return fail_closed(conn, x, version, request_kind, ProxyError::LengthRequired).await;
    }
    let mut up = match connect(&shared, &backend, index, addr, x).await {
        Ok(up) => up,
        Err(error) if streaming => return fail_closed(conn, x, version, request_kind, error).await,
        Err(error) => {
            let keep = upstream_failed(conn, x, version, request_kind, error).await;
            return keep && keep_alive_request;
        }
    };

    // The exchange. A pooled connection that turns out closed before any answer gets the
    // request again on a new connection, once, if the whole request is still in hand and its
    // method is idempotent: the upstream may have acted on a POST before it closed (RFC 9110
    // §9.2.2; nginx's `proxy_next_upstream` default does the same).
    let mut resp = ResponseHead::default();
    let mut retried = false;
    let sent = loop {
        let attempt = exchange(conn, &mut up, &mut body, out_framing, &mut resp, request_kind, &shared).await;
        match attempt {
            Ok(sent) => break sent,
            Err(Failed::Head(HeadFault::ClosedBeforeAnswer) | Failed::Send(SendError::Upstream(_)))
                if up.reused && idempotent && !streaming && !retried =>
            {
                retried = true;
                match shared.upstream.connect(addr).await {
                    Ok(fresh) => up = fresh,
                    Err(e) => return upstream_failed(conn, x, version, request_kind, connect_error(&shared, &e)).await,
                }
            }
            Err(Failed::Send(SendError::Body(fault))) => {
                up.reset();
                return fail_closed(conn, x, version, request_kind, fault.into()).await;
            }
            Err(Failed::Send(SendError::ClientGone)) => {
                up.reset();
                x.outcome = Outcome::ClientGone;
                return false;
            }
            Err(Failed::Send(SendError::Upstream(fault))) => {
                let error = io_error(&shared, &fault);
                return upstream_failed(conn, x, version, request_kind, error).await;
            }
            Err(Failed::Head(fault)) => {
                let error = match fault {
                    HeadFault::Timeout => {
                        shared.metrics.upstream_error(UpstreamErrorKind::Timeout);
                        ProxyError::UpstreamTimeout
                    }
                    HeadFault::Protocol(e) => {
                        tracing::debug!(error = ?e, upstream = %addr, "the upstream's answer is not a relayable HTTP/1 head");
                        shared.metrics.upstream_error(UpstreamErrorKind::Protocol);
                        ProxyError::UpstreamUnavailable
                    }
                    HeadFault::ClosedBeforeAnswer | HeadFault::Closed => {
                        shared.metrics.upstream_error(UpstreamErrorKind::Reset);
                        ProxyError::UpstreamUnavailable
                    }
                };
                let keep = !streaming && keep_alive_request;
                let answered = upstream_failed(conn, x, version, request_kind, error).await;
                return answered && keep;
            }
        }
    };
    if resp.version == Version::Http10 {
        shared.upstream.learned_http10(addr);
    }

    // A 101 is relayed only as the answer to the WebSocket handshake the client asked for;
    // anything else would turn the client's connection into a tunnel nobody routed. A transfer
    // coding other than chunked would reach the client still encoded.
    let switching = resp.status == 101;
    let upstream_buf = up.buf.readable();
    if (switching && !(websocket && is_websocket_upgrade(upstream_buf, &resp.headers))) || resp.unrelayable_coding {
        shared.metrics.upstream_error(UpstreamErrorKind::Protocol);
        let keep = matches!(sent, Sent::Complete) && keep_alive_request;
        let answered = upstream_failed(conn, x, version, request_kind, ProxyError::UpstreamProtocol).await;
        return answered && keep;
    }
    if switching {
        tunnel(conn, x, up, &resp).await;
        return false;
    }

    // Phase 5: the response.
    let keep = keep_alive_request && matches!(sent, Sent::Complete);
    let relayed = relay(conn, x, &mut up, &resp, (version, request_kind), keep, &shared).await;
    if relayed.unanswered {
        // The body broke before any byte reached the client: it gets a 502 instead.
        shared.metrics.upstream_error(UpstreamErrorKind::Protocol);
        x.head_sent = None;
        x.outcome = Outcome::Complete;
        let error = ProxyError::UpstreamProtocol;
        upstream_failed(conn, x, version, request_kind, error).await;
        return false;
    }
    let reuse = Reuse {
        request_sent_first: matches!(sent, Sent::Complete),
        response_complete: relayed.upstream_clean,
        keep_alive: resp.keep_alive && resp.version == Version::Http11,
        error_to_a_body: (framed_body || streaming) && resp.status >= 400,
        body_closes: (framed_body || streaming) && shared.upstream.closes_after_body(),
    };
    if reuse.allowed() {
        shared.upstream.put_back(up);
    }
    relayed.client_keep
}

enum Failed {
    Send(SendError),
    Head(HeadFault),
}

/// Sends the request (the rest of a streamed body too) and reads the response head.
async fn exchange(
    conn: &mut ClientConn,
    up: &mut UpstreamConn,
    body: &mut ClientBody,
    framing: OutFraming,
    resp: &mut ResponseHead,
    kind: RequestKind,
    shared: &Shared,
) -> Result<Sent, Failed> {
    let stall = shared.settings.timeouts.upstream_read;
    let second: &[u8] = if framing == OutFraming::Chunked { b"" } else { &conn.body };
    write_all(&mut up.stream, &conn.up_head, second, &mut up.timer, stall)
        .await
        .map_err(|f| Failed::Send(SendError::Upstream(f)))?;
    let sent = if body.is_done() {
        Sent::Complete
    } else {
        stream_body(conn, up, body, framing, shared).await.map_err(Failed::Send)?
    };
    // The request timeout runs from the end of the request (Envoy counts its route timeout so):
    // a long upload is bounded by the body timers instead.
    let deadline = deadline_in(shared.settings.timeouts.request);
    read_response_head(up, resp, kind, deadline).await.map_err(Failed::Head)?;
    Ok(sent)
}

/// The rest of a streamed body, as it arrives, coalesced per read; stops early when the
/// upstream begins to answer.
async fn stream_body(
    conn: &mut ClientConn,
    up: &mut UpstreamConn,
    body: &mut ClientBody,
    framing: OutFraming,
    shared: &Shared,
) -> Result<Sent, SendError> {
    let stall = shared.settings.timeouts.upstream_read;
    let chunked = framing == OutFraming::Chunked;
    loop {
        conn.body.clear();
        let consumed = body.take(conn.buf.readable(), &mut conn.body).map_err(SendError::Body)?;
        conn.buf.consume(consumed);
        if !conn.body.is_empty() || body.is_done() {
            conn.out.clear();
            if chunked {
                write_chunk(&mut conn.out, &conn.body);
                if body.is_done() {
                    conn.out.extend_from_slice(LAST_CHUNK);
                }
            } else {
                conn.out.extend_from_slice(&conn.body);
            }
            write_all(&mut up.stream, &conn.out, b"", &mut up.timer, stall).await.map_err(SendError::Upstream)?;
        }
        if body.is_done() {
            return Ok(Sent::Complete);
        }
        let (deadline, fault) = body.deadline();
        tokio::select! {
            biased;
            ready = up.stream.readable() => {
                // An answer (or the end of the connection) before the body was done.
                let _ = ready;
                return Ok(Sent::Early);
            }
            read = conn.buf.read_from(&mut conn.stream, &mut conn.timer, deadline) => match read {
                Ok(0) | Err(IoFault::Closed | IoFault::Io(_)) => return Err(SendError::ClientGone),
                Err(IoFault::Timeout) => return Err(SendError::Body(fault)),
                Ok(_) => {}
            },
        }
    }
}

/// Reads the request body into `conn.body` until it is complete or `body_buffer_bytes` are
/// in hand; `Err(Some(fault))` for a body that breaks a rule, `Err(None)` when the client went
/// away.
async fn read_body_start(
    conn: &mut ClientConn,
    body: &mut ClientBody,
    expect_continue: bool,
) -> Result<(), Option<BodyFault>> {
    let buffer = conn.shared.settings.limits.body_buffer_bytes;
    let mut continued = false;
    loop {
        // No more than the room left, even when more has arrived: decoded data is never longer
        // than its encoding, so the buffered body stays within `body_buffer_bytes`.
        let readable = conn.buf.readable();
        let room = buffer.saturating_sub(conn.body.len()).min(readable.len());
        let consumed = body.take(&readable[..room], &mut conn.body).map_err(Some)?;
        conn.buf.consume(consumed);
        if body.is_done() || conn.body.len() >= buffer || buffer == 0 {
            return Ok(());
        }
        if !conn.buf.readable().is_empty() {
            continue;
        }
        if expect_continue && !continued {
            // The client waits to be told to send its body: the proxy wants it.
            continued = true;
            let stall = conn.shared.settings.timeouts.client_write;
            write_all(&mut conn.stream, b"HTTP/1.1 100 Continue\r\n\r\n", b"", &mut conn.timer, stall)
                .await
                .map_err(|_| None)?;
        }
        let (deadline, fault) = body.deadline();
        match conn.buf.read_from(&mut conn.stream, &mut conn.timer, deadline).await {
            Ok(0) | Err(IoFault::Closed | IoFault::Io(_)) => return Err(Some(BodyFault::Malformed)),
            Err(IoFault::Timeout) => return Err(Some(fault)),
            Ok(_) => {}
        }
    }
}

/// A connection to `addr`, or, when it cannot be made, to another endpoint once.
async fn connect(
    shared: &Shared,
    backend: &Backend,
    index: usize,
    addr: SocketAddr,
    x: &mut Exchange,
) -> Result<UpstreamConn, ProxyError> {
    x.upstream = Some(addr);
    let first = match shared.upstream.connection(addr).await {
        Ok(conn) => return Ok(conn),
        Err(e) => connect_error(shared, &e),
    };
    let Some(second) = upstream_peer_after_failure(backend, index) else { return Err(first) };
    x.upstream = Some(second);
    shared.upstream.connection(second).await.map_err(|e| connect_error(shared, &e))
}

/// Counts a connect failure and says what the client gets for it.
fn connect_error(shared: &Shared, e: &std::io::Error) -> ProxyError {
    if e.kind() == std::io::ErrorKind::TimedOut {
        shared.metrics.upstream_error(UpstreamErrorKind::ConnectTimeout);
        ProxyError::UpstreamTimeout
    } else {
        shared.metrics.upstream_error(UpstreamErrorKind::ConnectRefused);
        ProxyError::UpstreamUnavailable
    }
}

/// Counts an I/O failure on an established upstream connection.
fn io_error(shared: &Shared, fault: &IoFault) -> ProxyError {
    match fault {
        IoFault::Timeout => {
            shared.metrics.upstream_error(UpstreamErrorKind::Timeout);
            ProxyError::UpstreamTimeout
        }
        IoFault::Io(e) => {
            tracing::debug!(error = %e, "upstream connection failed");
            shared.metrics.upstream_error(UpstreamErrorKind::Reset);
            ProxyError::UpstreamUnavailable
        }
        IoFault::Closed => {
            shared.metrics.upstream_error(UpstreamErrorKind::Reset);
            ProxyError::UpstreamUnavailable
        }
    }
}

/// The client gets its answer and the connection closes (what it still sends is not read).
async fn fail_closed(
    conn: &mut ClientConn,
    x: &mut Exchange,
    version: Version,
    kind: RequestKind,
    error: ProxyError,
) -> bool {
    upstream_failed(conn, x, version, kind, error).await;
    false
}

/// A failure before any upstream answered: the client gets the failure's answer; whether its
/// connection may carry another request.
async fn upstream_failed(
    conn: &mut ClientConn,
    x: &mut Exchange,
    version: Version,
    kind: RequestKind,
    error: ProxyError,
) -> bool {
    conn.answer(x, error.answer(), version, kind == RequestKind::Head, Some(error)).await
}

/// Reads a response head into `resp`, skipping informational ones (except 101, which ends
/// the exchange as an upgrade).
async fn read_response_head(
    up: &mut UpstreamConn,
    resp: &mut ResponseHead,
    kind: RequestKind,
    deadline: Instant,
) -> Result<(), HeadFault> {
    let mut any_byte = false;
    loop {
        if !up.buf.is_empty() {
            any_byte = true;
            match parse_response(up.buf.readable(), kind, resp) {
                Ok(true) if (100..200).contains(&resp.status) && resp.status != 101 => {
                    up.buf.consume(resp.len);
                    continue;
                }
                Ok(true) => return Ok(()),
                Ok(false) => {}
                Err(e) => return Err(HeadFault::Protocol(e)),
            }
        }
        match up.buf.read_from(&mut up.stream, &mut up.timer, deadline).await {
            Ok(0) | Err(IoFault::Closed | IoFault::Io(_)) if !any_byte => return Err(HeadFault::ClosedBeforeAnswer),
            Ok(0) | Err(IoFault::Closed | IoFault::Io(_)) => return Err(HeadFault::Closed),
            Err(IoFault::Timeout) => return Err(HeadFault::Timeout),
            Ok(_) => {}
        }
    }
}

/// How relaying a response ended.
struct Relayed {
    /// The client connection may carry another request.
    client_keep: bool,
    /// The response was read to its end and nothing came after it.
    upstream_clean: bool,
    /// The upstream's body broke before anything was written to the client.
    unanswered: bool,
}

/// Phase 5: the response head the client gets, then its body, as it arrives.
async fn relay(
    conn: &mut ClientConn,
    x: &mut Exchange,
    up: &mut UpstreamConn,
    resp: &ResponseHead,
    (version, kind): (Version, RequestKind),
    keep_alive: bool,
    shared: &Shared,
) -> Relayed {
    let http10_client = version == Version::Http10;
    let bodiless_with_length = head_like(resp, kind);
    // How the client's copy is framed: a length stays a length; chunked, or until close, becomes
    // chunked (HTTP/1.1) so that the connection can be kept, or until close (HTTP/1.0).
    let to_client = match resp.framing {
        Framing::Length(n) => OutFraming::Length(n),
        Framing::Empty if bodiless_with_length || resp.status == 204 || resp.status < 200 => OutFraming::None,
        Framing::Empty => OutFraming::Length(0),
        Framing::Chunked | Framing::UntilClose if http10_client => OutFraming::None,
        Framing::Chunked | Framing::UntilClose => OutFraming::Chunked,
    };
    let close_delimited = http10_client && matches!(resp.framing, Framing::Chunked | Framing::UntilClose);
    let client_close = !keep_alive || close_delimited;
    let via = shared.settings.via.as_deref();
    let head = ClientHead {
        version: version_bytes(version),
        status: resp.status,
        request_id: x.request_id.as_bytes(),
        via,
        framing: to_client,
        close: client_close,
        keep_alive_header: !client_close && http10_client,
        upgrade: false,
    };
    write_client_head(&mut conn.out, up.buf.readable(), &resp.headers, &head);
    if bodiless_with_length {
        // A HEAD's answer, or a 304: the length the upstream gave is the resource's.
        append_upstream_length(&mut conn.out, up.buf.readable(), resp);
    }
    up.buf.consume(resp.len);
    x.status = resp.status;
    x.head_sent = Some(Instant::now());

    let upstream_stall = shared.settings.timeouts.upstream_read;
    let client_stall = shared.settings.timeouts.client_write;
    let mut sent = 0u64;
    let mut result = Relayed { client_keep: !client_close, upstream_clean: false, unanswered: false };
    let mut head_pending = true;
    let outcome = match resp.framing {
        Framing::Empty => {
            result.upstream_clean = up.buf.is_empty();
            write_all(&mut conn.stream, &conn.out, b"", &mut conn.timer, client_stall)
                .await
                .err()
                .map(|f| client_outcome(&f))
        }
        Framing::Length(total) => {
            let mut left = total;
            loop {
                let take = usize::try_from(left).unwrap_or(usize::MAX).min(up.buf.len());
                let (first, second): (&[u8], &[u8]) = if head_pending && take <= COPY_WITH_HEAD {
                    conn.out.extend_from_slice(&up.buf.readable()[..take]);
                    (&conn.out, b"")
                } else if head_pending {
                    (&conn.out, &up.buf.readable()[..take])
                } else {
                    (b"", &up.buf.readable()[..take])
                };
                if let Err(f) = write_all(&mut conn.stream, first, second, &mut conn.timer, client_stall).await {
                    break Some(client_outcome(&f));
                }
                head_pending = false;
                up.buf.consume(take);
                left -= take as u64;
                sent += take as u64;
                if left == 0 {
                    result.upstream_clean = up.buf.is_empty();
                    break None;
                }
                match up.buf.read_from(&mut up.stream, &mut up.timer, deadline_in(upstream_stall)).await {
                    Ok(0) | Err(IoFault::Closed | IoFault::Io(_)) => break Some(Outcome::UpstreamFailed),
                    Err(IoFault::Timeout) => break Some(Outcome::UpstreamReadTimeout),
                    Ok(_) => {}
                }
            }
        }
        Framing::Chunked | Framing::UntilClose => {
            let mut decoder =
                (resp.framing == Framing::Chunked).then(|| ChunkedDecoder::new(crate::h1::response::MAX_RESPONSE_HEAD));
            let mut ended = false;
            loop {
                if !head_pending {
                    conn.out.clear();
                }
                let piece_start = conn.out.len();
                let input = up.buf.readable();
                let consumed = match &mut decoder {
                    Some(decoder) => {
                        // Every data run of this read goes into one chunk: coalesced.
                        let mut data = std::mem::take(&mut conn.body);
                        data.clear();
                        let decoded = decoder.decode(input, |d| data.extend_from_slice(d));
                        let consumed = match decoded {
                            Ok(d) => {
                                ended = d.done;
                                d.consumed
                            }
                            Err(_) => {
                                conn.body = data;
                                result.unanswered = head_pending;
                                break Some(Outcome::UpstreamFailed);
                            }
                        };
                        frame(&mut conn.out, &data, http10_client);
                        sent += data.len() as u64;
                        conn.body = data;
                        consumed
                    }
                    None => {
                        frame(&mut conn.out, input, http10_client);
                        sent += input.len() as u64;
                        input.len()
                    }
                };
                up.buf.consume(consumed);
                if ended && !http10_client {
                    conn.out.extend_from_slice(LAST_CHUNK);
                }
                if conn.out.len() > piece_start || head_pending || ended {
                    if let Err(f) = write_all(&mut conn.stream, &conn.out, b"", &mut conn.timer, client_stall).await {
                        break Some(client_outcome(&f));
                    }
                    head_pending = false;
                }
                if ended {
                    result.upstream_clean = up.buf.is_empty();
                    break None;
                }
                match up.buf.read_from(&mut up.stream, &mut up.timer, deadline_in(upstream_stall)).await {
                    Ok(0) if decoder.is_none() => {
                        // Until close: the end of the stream is the end of the body.
                        if !http10_client {
                            conn.out.clear();
                            conn.out.extend_from_slice(LAST_CHUNK);
                            if let Err(f) =
                                write_all(&mut conn.stream, &conn.out, b"", &mut conn.timer, client_stall).await
                            {
                                break Some(client_outcome(&f));
                            }
                        }
                        break None;
                    }
                    Ok(0) | Err(IoFault::Closed | IoFault::Io(_)) => break Some(Outcome::UpstreamFailed),
                    Err(IoFault::Timeout) => break Some(Outcome::UpstreamReadTimeout),
                    Ok(_) => {}
                }
            }
        }
    };
    x.response_body_bytes = sent;
    if let Some(outcome) = outcome {
        x.outcome = outcome;
        result.client_keep = false;
        result.upstream_clean = false;
    }
    result
}

/// Methods a request may be sent again with (RFC 9110 §9.2.2): the safe ones, PUT and DELETE.
fn is_idempotent(method: &[u8]) -> bool {
    matches!(method, b"GET" | b"HEAD" | b"OPTIONS" | b"PUT" | b"DELETE")
}

/// Answers that carry no body although their head may give a length: to a HEAD, and a 304
/// (RFC 9110 §9.3.2, §15.4.5).
fn head_like(resp: &ResponseHead, kind: RequestKind) -> bool {
    resp.framing == Framing::Empty && (kind == RequestKind::Head || resp.status == 304)
}

/// Copies the upstream's own `Content-Length` (of a HEAD or 304 answer) into the client head,
/// just before its final blank line.
fn append_upstream_length(out: &mut Vec<u8>, buf: &[u8], resp: &ResponseHead) {
    let Some(length) = resp.headers.iter().find(|h| h.name.get(buf).eq_ignore_ascii_case(b"content-length")) else {
        return;
    };
    let value = length.value.get(buf);
    if crate::h1::parse_digits(value).is_none() {
        return;
    }
    out.truncate(out.len() - 2);
    out.extend_from_slice(b"content-length: ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n\r\n");
}

/// Appends a piece of body as the client's framing has it: a chunk, or as it is.
fn frame(out: &mut Vec<u8>, data: &[u8], raw: bool) {
    if raw {
        out.extend_from_slice(data);
    } else {
        write_chunk(out, data);
    }
}

/// A WebSocket upgrade: the 101 goes to the client, then bytes flow both ways until either side
/// closes. Bytes that came with either head are passed on first.
async fn tunnel(conn: &mut ClientConn, x: &mut Exchange, mut up: UpstreamConn, resp: &ResponseHead) {
    let head = ClientHead {
        version: b"HTTP/1.1",
        status: StatusCode::SWITCHING_PROTOCOLS.as_u16(),
        request_id: x.request_id.as_bytes(),
        via: conn.shared.settings.via.as_deref(),
        framing: OutFraming::None,
        close: false,
        keep_alive_header: false,
        upgrade: true,
    };
    write_client_head(&mut conn.out, up.buf.readable(), &resp.headers, &head);
    up.buf.consume(resp.len);
    x.status = 101;
    x.head_sent = Some(Instant::now());
    let stall = conn.shared.settings.timeouts.client_write;
    if write_all(&mut conn.stream, &conn.out, up.buf.readable(), &mut conn.timer, stall).await.is_err() {
        return;
    }
    if !conn.buf.is_empty() && write_all(&mut up.stream, conn.buf.readable(), b"", &mut up.timer, stall).await.is_err()
    {
        return;
    }
    conn.buf.clear();
    if let Err(e) = tokio::io::copy_bidirectional(&mut conn.stream, &mut up.stream).await {
        tracing::debug!(error = %e, "upgraded connection ended with an error");
    }
    let _ = up.stream.shutdown().await;
}
