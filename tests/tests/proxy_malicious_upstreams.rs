//! Upstreams that mean harm, and what the proxy makes of what they send: the safety net for
//! the proxy's HTTP/1 codec. Whatever an upstream writes, no byte of it may become another
//! exchange's response, a response that ended short must look short to the client, and a
//! connection that carried anything doubtful is never reused.
//!
//! One table, one row per upstream behaviour. For each row a fresh [`ScriptedBackend`] answers
//! the row's request (`/svc/row`) with exactly the row's bytes, and a fresh proxy stands in
//! front of it. The row says:
//! - what the client receives: the upstream's response complete (status, body bytes exactly,
//!   the headers that matter), a head and then a body that ends short with the connection
//!   closed, or an answer of the proxy's own (502, 504) carrying nothing of the upstream's;
//!   which 1xx responses may be relayed before it;
//! - what becomes of the client connection (still usable, closed, either);
//! - what becomes of the upstream connection: reused for the next request, or closed;
//! - and then probes, each carrying a token the backend echoes: the same client's next request
//!   (when its connection stays usable) and another client's, which must get exactly their own
//!   answers, each probe's body reaching the backend once.
//!
//! Every failed expectation of every row is collected and printed together.
//!
//! The expectations come from RFC 9112 §6.3 (message body length), §6.1 (Transfer-Encoding),
//! §5 (field syntax), §4 (status line), §9 (connections), RFC 9110 §15.2 (1xx) and §8.6
//! (Content-Length). Where those leave a choice, the row takes the choices at least as strict
//! as hyper's today (issue 14: the rewrite must be at least as strict): where hyper refuses, the
//! row requires a refusal; where hyper accepts what the RFC lets a recipient refuse, the row
//! accepts either. `GATEHOUSE_MALICIOUS_AGAINST=nginx` runs the same table
//! against nginx (on PATH) configured to route the same way, with upstream keepalive: the rows
//! it fails are where nginx 1.22 behaves otherwise (printed with nginx's error log).
//! `GATEHOUSE_MALICIOUS_ROWS=<part of a row name>` runs only the rows whose name contains it.
//!
//! Then a cross-client check: many clients through one proxy to one backend that misbehaves in
//! every way it can without racing the proxy, many rounds; every client receives only its own
//! token.
#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::future::join_all;
use gatehouse_tests::backends::{BodyEnd, PartialResponse, RawConn, RawEnd, RawResponse, config, start_proxy};
use gatehouse_tests::raw_backend::{ConnEnd, Reply, ScriptedBackend, SeenRequest, Then};

const ANSWER_WITHIN: Duration = Duration::from_secs(6);
/// How long a connection that must be closed may take to close.
const CLOSE_WITHIN: Duration = Duration::from_secs(3);
/// Time for the proxy to take in what followed a response, when nothing observable says it has.
const SETTLE: Duration = Duration::from_millis(150);
/// The proxy's `upstream_read` (1 s) cuts stalled bodies; `request` (3 s) a head that never comes.
const PROXY_SETTINGS: &str = "timeouts: { upstream_read: 1s, request: 3s, drain: 0s }\n";

/// A complete response an upstream may send after its real one: a client that ever received
/// it would read `stolen`.
const SMUGGLED: &str = "HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nstolen";
/// What the upstreams of the table send as content; none of it may appear in an answer of the
/// proxy's own.
const UPSTREAM_WORDS: [&str; 3] = ["hello", "world", "stolen"];

/// What the client must receive as the final response.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Gets {
    /// The upstream's response, complete by its framing: this status and exactly this body.
    Complete(u16, Vec<u8>),
    /// A head with this status, then a body that ends short: the connection ends before the
    /// framing says the body is complete, after a prefix of these bytes (what the upstream sent
    /// of it; a proxy that buffers or checks a chunk before relaying it relays less).
    CutShort(u16, Vec<u8>),
    /// An answer of the proxy's own with this status, complete, with nothing of the upstream's
    /// content in it.
    Refused(u16),
}

impl std::fmt::Display for Gets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Complete(status, body) => write!(f, "{status} {:?} complete", String::from_utf8_lossy(body)),
            Self::CutShort(status, sent) => {
                write!(f, "{status} with the body cut short after a prefix of {:?}", String::from_utf8_lossy(sent))
            }
            Self::Refused(status) => write!(f, "the proxy's {status}"),
        }
    }
}

fn complete(status: u16, body: &str) -> Gets {
    Gets::Complete(status, body.as_bytes().to_vec())
}

fn cut_short(status: u16, prefix: &str) -> Gets {
    Gets::CutShort(status, prefix.as_bytes().to_vec())
}

/// What must become of the client's connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum After {
    /// Still usable: the same client's next request gets its own answer.
    Open,
    /// Closed by the proxy, with nothing more written.
    Closed,
    /// Either is correct.
    Either,
}

/// What must become of the upstream connection that carried the row's exchange.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Upstream {
    /// It carries the next request.
    Reused,
    /// It is closed (by either side), and no later request goes over it.
    Discarded,
    /// Either is safe: reuse is allowed but not required.
    EitherWay,
}

/// The requests sent after the row, each with a token the backend echoes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Probe {
    Get,
    /// With a body, which must reach the backend exactly once.
    Post,
}

#[derive(Debug, Clone)]
struct Row {
    name: String,
    /// The bytes the client sends.
    request: Vec<u8>,
    /// Sent once the response has been read: the rest of a body the upstream answered early.
    rest: Vec<u8>,
    /// The request is a HEAD: its response has no body.
    head: bool,
    /// What the backend does with the row's request.
    reply: Reply,
    /// What the backend does with a later request on the row's connection (by default it
    /// answers it well).
    on_reuse: Option<Reply>,
    gets: Gets,
    /// Checked on the final response: (header, value or absent).
    headers: Vec<(&'static str, Option<String>)>,
    /// The 1xx responses the upstream sent before its final one: the client gets all of them,
    /// in order, or none.
    informational: Vec<u16>,
    client: After,
    upstream: Upstream,
    probe: Probe,
    /// The first probe meets what the upstream does on reuse: instead of its own answer it
    /// gets the proxy's, with this status.
    first_probe_refused: Option<u16>,
    /// Where the RFC lets a recipient refuse what hyper accepts: instead of `gets`, the proxy
    /// may answer with its own response of this status, and then closes the upstream
    /// connection (RFC 9112 §6.3 item 5).
    or_refused: Option<u16>,
}

const HOST: &str = "Host: api.example.com\r\n";

fn row(name: impl Into<String>, reply: Reply, gets: Gets, client: After, upstream: Upstream) -> Row {
    Row {
        name: name.into(),
        request: format!("GET /svc/row HTTP/1.1\r\n{HOST}\r\n").into_bytes(),
        rest: Vec::new(),
        head: false,
        reply,
        on_reuse: None,
        gets,
        headers: Vec::new(),
        informational: Vec::new(),
        client,
        upstream,
        probe: Probe::Get,
        first_probe_refused: None,
        or_refused: None,
    }
}

impl Row {
    fn request(mut self, bytes: impl Into<Vec<u8>>) -> Self {
        self.request = bytes.into();
        self
    }

    fn head_request(mut self) -> Self {
        self.request = format!("HEAD /svc/row HTTP/1.1\r\n{HOST}\r\n").into_bytes();
        self.head = true;
        self
    }

    fn rest(mut self, bytes: impl Into<Vec<u8>>) -> Self {
        self.rest = bytes.into();
        self
    }

    fn header(mut self, name: &'static str, value: Option<&str>) -> Self {
        self.headers.push((name, value.map(str::to_owned)));
        self
    }

    fn informational(mut self, statuses: &[u16]) -> Self {
        self.informational = statuses.to_vec();
        self
    }

    fn on_reuse(mut self, reply: Reply) -> Self {
        self.on_reuse = Some(reply);
        self
    }

    fn probe(mut self, probe: Probe) -> Self {
        self.probe = probe;
        self
    }

    fn first_probe_refused(mut self, status: u16) -> Self {
        self.first_probe_refused = Some(status);
        self
    }

    fn or_refused(mut self, status: u16) -> Self {
        self.or_refused = Some(status);
        self
    }

    /// The row's expectations for the client's `read`: those of the refusal when the row
    /// allows one and the proxy chose it, else the row's own.
    fn expecting(&self, read: &Result<PartialResponse, RawEnd>) -> Self {
        match (self.or_refused, read) {
            (Some(status), Ok(read)) if read.response.status == status => Self {
                gets: Gets::Refused(status),
                headers: Vec::new(),
                upstream: Upstream::Discarded,
                or_refused: None,
                ..self.clone()
            },
            _ => self.clone(),
        }
    }
}

/// A reply of exactly these bytes; the connection then waits for the next request.
fn bytes(bytes: impl Into<Vec<u8>>) -> Reply {
    Reply::raw(bytes, Then::KeepAlive)
}

/// `HTTP/1.1 200 OK`, these header lines (each ending in CRLF), the empty line, then `after`.
fn ok(headers: &str, after: &str) -> Reply {
    bytes(format!("HTTP/1.1 200 OK\r\n{headers}\r\n{after}"))
}

/// `hello` as one chunk and the last chunk.
const CHUNKED_HELLO: &str = "5\r\nhello\r\n0\r\n\r\n";
const CHUNKED: &str = "Transfer-Encoding: chunked\r\n";
const LENGTH_5: &str = "Content-Length: 5\r\n";

/// The backend closes the connection when a request arrives on it, without a byte of answer
/// and without reading its body: as when its keep-alive timer fires just as the request comes.
fn close_on_arrival() -> Reply {
    Reply::raw(Vec::new(), Then::Close).without_reading_body()
}

fn baseline_rows() -> Vec<Row> {
    use {After::*, Upstream::*};
    vec![
        row("a well-formed response", ok(LENGTH_5, "hello"), complete(200, "hello"), Open, Reused),
        row("a well-formed chunked response", ok(CHUNKED, CHUNKED_HELLO), complete(200, "hello"), Open, Reused),
        row("a well-formed 204", bytes("HTTP/1.1 204 No Content\r\n\r\n"), complete(204, ""), Open, Reused)
            .header("content-length", None),
        row("a well-formed HEAD answer", ok(LENGTH_5, ""), complete(200, ""), Open, Reused)
            .head_request()
            .header("content-length", Some("5")),
        // The proxy does not forward trailers; whether it keeps the connection after them is
        // its own affair.
        row(
            "a chunked body with a trailer section",
            ok(CHUNKED, "5\r\nhello\r\n0\r\nX-Trailer: 1\r\n\r\n"),
            complete(200, "hello"),
            Open,
            EitherWay,
        ),
        row(
            "a chunked body with chunk extensions",
            ok(CHUNKED, "5;name=value\r\nhello\r\n0;x\r\n\r\n"),
            complete(200, "hello"),
            Open,
            Reused,
        ),
        row(
            "Transfer-Encoding: Chunked in another case",
            ok("Transfer-Encoding: Chunked\r\n", CHUNKED_HELLO),
            complete(200, "hello"),
            Open,
            Reused,
        ),
    ]
}

/// RFC 9112 §6.3: "A client MUST NOT process, cache, or forward such extra data as a separate
/// response". And a connection with bytes pending after a response cannot carry another.
fn extra_bytes_rows() -> Vec<Row> {
    use {After::*, Upstream::*};
    let pause = Duration::from_millis(50);
    vec![
        row(
            "a second response glued after a Content-Length body",
            ok(LENGTH_5, &format!("hello{SMUGGLED}")),
            complete(200, "hello"),
            Open,
            Discarded,
        ),
        row(
            "a second response 50 ms after a Content-Length body",
            ok(LENGTH_5, "hello").and_after(pause, SMUGGLED),
            complete(200, "hello"),
            Open,
            Discarded,
        ),
        row(
            "a body longer than its Content-Length",
            ok(LENGTH_5, "hello world"),
            complete(200, "hello"),
            Open,
            Discarded,
        ),
        row(
            "a second response glued after a chunked body",
            ok(CHUNKED, &format!("{CHUNKED_HELLO}{SMUGGLED}")),
            complete(200, "hello"),
            Open,
            Discarded,
        ),
        row(
            "a second response 50 ms after a chunked body",
            ok(CHUNKED, CHUNKED_HELLO).and_after(pause, SMUGGLED),
            complete(200, "hello"),
            Open,
            Discarded,
        ),
        row(
            "a reset right after a complete response",
            Reply::raw(format!("HTTP/1.1 200 OK\r\n{LENGTH_5}\r\nhello"), Then::Reset),
            complete(200, "hello"),
            Open,
            Discarded,
        ),
    ]
}

/// RFC 9112 §6.3 and §8: a body that ends before its framing says is incomplete, and a proxy
/// must not make it look complete: the client sees the connection end.
fn short_body_rows() -> Vec<Row> {
    use {After::*, Upstream::*};
    let stall = Then::Stall(Duration::from_secs(10));
    let long = "HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nhello";
    let chunk_then = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n";
    let close_delimited = "HTTP/1.1 200 OK\r\n\r\nhello";
    vec![
        row(
            "a Content-Length body cut short by a close",
            Reply::raw(long, Then::Close),
            cut_short(200, "hello"),
            Closed,
            Discarded,
        ),
        row(
            "a Content-Length body cut short by a reset",
            Reply::raw(long, Then::Reset),
            cut_short(200, "hello"),
            Closed,
            Discarded,
        ),
        row("a Content-Length body that stalls", Reply::raw(long, stall), cut_short(200, "hello"), Closed, Discarded),
        row(
            "a chunked body without its last chunk, then a close",
            Reply::raw(chunk_then, Then::Close),
            cut_short(200, "hello"),
            Closed,
            Discarded,
        ),
        row(
            "a chunked body reset half-way",
            Reply::raw(chunk_then, Then::Reset),
            cut_short(200, "hello"),
            Closed,
            Discarded,
        ),
        row("a chunked body that stalls", Reply::raw(chunk_then, stall), cut_short(200, "hello"), Closed, Discarded),
        row(
            "a chunk cut short by a close",
            Reply::raw("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\na\r\nhello", Then::Close),
            cut_short(200, "hello"),
            Closed,
            Discarded,
        ),
        // Without a length the body ends with the connection: a reset is not that end.
        row(
            "a close-delimited body reset half-way",
            Reply::raw(close_delimited, Then::Reset),
            cut_short(200, "hello"),
            Closed,
            Discarded,
        ),
        row(
            "a close-delimited body that stalls",
            Reply::raw(close_delimited, stall),
            cut_short(200, "hello"),
            Closed,
            Discarded,
        ),
        row(
            "a reset in the middle of the head",
            Reply::raw("HTTP/1.1 200 OK\r\nContent-Le", Then::Reset),
            Gets::Refused(502),
            Open,
            Discarded,
        ),
        row(
            "a close in the middle of the head",
            Reply::raw("HTTP/1.1 200 OK\r\nContent-Le", Then::Close),
            Gets::Refused(502),
            Open,
            Discarded,
        ),
        row("a close without a byte", Reply::raw("", Then::Close), Gets::Refused(502), Open, Discarded),
        row("a reset without a byte", Reply::raw("", Then::Reset), Gets::Refused(502), Open, Discarded),
        // No head within `timeouts.request`.
        row(
            "a head that stalls half-way",
            Reply::raw("HTTP/1.1 200 OK\r\n", stall),
            Gets::Refused(504),
            Open,
            Discarded,
        ),
    ]
}

/// RFC 9112 §6.3 item 3: Transfer-Encoding overrides Content-Length; "such a message might
/// indicate an attempt to perform ... response splitting and ought to be handled as an error.
/// An intermediary that chooses to forward the message MUST first remove the received
/// Content-Length field". Forwarded by its chunks without the length, and, as an error, its
/// connection is not reused. §6.1: an HTTP/1.0 message with Transfer-Encoding has faulty
/// framing, and the connection is closed.
fn both_lengths_rows() -> Vec<Row> {
    use {After::*, Upstream::*};
    let ninety = "n".repeat(90);
    let chunked_90 = format!("5a\r\n{ninety}\r\n0\r\n\r\n");
    let both = |first: &str, second: &str, body: &str, gets: Gets| {
        row(
            format!("{} then {}", first.trim_end(), second.trim_end()),
            ok(&format!("{first}{second}"), body),
            gets,
            Open,
            Discarded,
        )
        .header("content-length", None)
    };
    vec![
        both("Content-Length: 5\r\n", CHUNKED, &chunked_90, complete(200, &ninety)),
        both("Content-Length: 50\r\n", CHUNKED, CHUNKED_HELLO, complete(200, "hello")),
        both(CHUNKED, "Content-Length: 5\r\n", &chunked_90, complete(200, &ninety)),
        both(CHUNKED, "Content-Length: 50\r\n", CHUNKED_HELLO, complete(200, "hello")),
        row(
            "HTTP/1.0 with Transfer-Encoding: chunked",
            bytes(format!("HTTP/1.0 200 OK\r\n{CHUNKED}\r\n{CHUNKED_HELLO}")),
            Gets::Refused(502),
            Open,
            Discarded,
        ),
        row(
            "HTTP/1.0 with Transfer-Encoding and Content-Length",
            bytes(format!("HTTP/1.0 200 OK\r\n{CHUNKED}{LENGTH_5}\r\n{CHUNKED_HELLO}")),
            Gets::Refused(502),
            Open,
            Discarded,
        ),
    ]
}

/// A chunked body that turns malformed after a good chunk (200 ms later, so that the good part
/// has been relayed): the client has the head and the good part, then the connection ends
/// without the last chunk; the upstream connection, whose framing is lost, is closed.
fn malformed_chunk_rows() -> Vec<Row> {
    use {After::*, Upstream::*};
    let pause = Duration::from_millis(200);
    let bad = |name: &str, good: &str, bad: &str, prefix: &str| {
        row(
            format!("a malformed chunked body: {name}"),
            ok(CHUNKED, &format!("5\r\nhello\r\n{good}")).and_after(pause, bad.to_owned()),
            cut_short(200, prefix),
            Closed,
            Discarded,
        )
    };
    let long_extension = format!("5;{}\r\nworld\r\n0\r\n\r\n", "e".repeat(20 * 1024));
    let long_trailers =
        format!("0\r\n{}\r\n", "X-Trailer: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n".repeat(400));
    vec![
        // Nothing good came: a 502, or the head and a body cut short; never silence, which a
        // client cannot tell from a request that was never processed (the upstream answered).
        row(
            "a malformed chunked body: a bad first chunk with the head",
            ok(CHUNKED, "zz\r\nhello\r\n0\r\n\r\n"),
            cut_short(200, ""),
            Either,
            Discarded,
        )
        .or_refused(502),
        bad("a chunk size that is not hex", "", "zz\r\nworld\r\n0\r\n\r\n", "hello"),
        bad("a negative chunk size", "", "-5\r\nworld\r\n0\r\n\r\n", "hello"),
        bad("a chunk size with garbage after it", "", "5x\r\nworld\r\n0\r\n\r\n", "hello"),
        bad("a chunk size past 64 bits", "", "10000000000000000\r\nworld\r\n0\r\n\r\n", "hello"),
        bad("a bare LF after the chunk size", "", "5\nworld\r\n0\r\n\r\n", "hello"),
        bad("chunk data longer than its size", "5\r\nworld", "EXTRA\r\n0\r\n\r\n", "helloworld"),
        bad("no CRLF after the chunk data", "5\r\nworld", "0\r\n\r\n", "helloworld"),
        bad("a bare LF after the chunk data", "5\r\nworld", "\n0\r\n\r\n", "helloworld"),
        bad("a chunk extension with a bare LF", "", "5;a\nb\r\nworld\r\n0\r\n\r\n", "hello"),
        bad("chunk extensions over 16 KiB", "", &long_extension, "hello"),
        bad("a trailer section over 16 KiB", "", &long_trailers, "hello"),
    ]
}

/// A transfer coding other than a final `chunked` (RFC 9112 §6.1): its content would reach the
/// client still encoded, and a body whose last coding is not chunked is read until the close
/// (§6.3 item 4): 502, and the connection closed.
fn transfer_coding_rows() -> Vec<Row> {
    use {After::*, Upstream::*};
    let coded = |coding: &str, body: &str| {
        row(
            format!("Transfer-Encoding: {coding}"),
            ok(&format!("Transfer-Encoding: {coding}\r\n"), body),
            Gets::Refused(502),
            Open,
            Discarded,
        )
    };
    vec![
        coded("gzip", "hello world"),
        coded("gzip, chunked", CHUNKED_HELLO),
        coded("chunked, gzip", CHUNKED_HELLO),
        coded("identity", "hello world"),
        // RFC 9112 §6.1: chunked must not be applied more than once.
        coded("chunked, chunked", "5\r\n5\r\nhello\r\n0\r\n\r\n\r\n0\r\n\r\n"),
        coded("xchunked", CHUNKED_HELLO),
    ]
}

/// RFC 9110 §15.2: a client must be able to parse 1xx responses before the final one, a proxy
/// forwards them (or, as nginx and hyper do, drops them), never to an HTTP/1.0 client; a 1xx
/// ends at its empty line whatever its headers say (RFC 9112 §6.3 item 1). A 101 is an answer
/// only to an upgrade the client asked for (RFC 9110 §15.2.2): 502, and the connection, now
/// speaking another protocol, closed.
fn informational_rows() -> Vec<Row> {
    use {After::*, Upstream::*};
    let final_hello = format!("HTTP/1.1 200 OK\r\n{LENGTH_5}\r\nhello");
    let continue_ = "HTTP/1.1 100 Continue\r\n\r\n";
    let early_hints = "HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n";
    vec![
        row("a 100 Continue before the final response", bytes(format!("{continue_}{final_hello}")), complete(200, "hello"), Open, Reused)
            .informational(&[100]),
        row("a 103 Early Hints before the final response", bytes(format!("{early_hints}{final_hello}")), complete(200, "hello"), Open, Reused)
            .informational(&[103])
            // The hints' headers are not the final response's.
            .header("link", None),
        row(
            "three 1xx in a row before the final response",
            bytes(format!("{continue_}{early_hints}{early_hints}{final_hello}")),
            complete(200, "hello"),
            Open,
            Reused,
        )
        .informational(&[100, 103, 103]),
        row(
            "a 1xx 50 ms before the final response",
            bytes(early_hints).and_after(Duration::from_millis(50), final_hello.clone()),
            complete(200, "hello"),
            Open,
            Reused,
        )
        .informational(&[103]),
        row("a 1xx to an HTTP/1.0 client", bytes(format!("{early_hints}{final_hello}")), complete(200, "hello"), Closed, Reused)
            .request(format!("GET /svc/row HTTP/1.0\r\n{HOST}\r\n")),
        row(
            "a 1xx with a Content-Length and a body",
            bytes(format!("HTTP/1.1 100 Continue\r\n{LENGTH_5}\r\nhello{final_hello}")),
            Gets::Refused(502),
            Open,
            Discarded,
        ),
        row(
            "a 101 nobody asked for",
            bytes("HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: foo\r\n\r\n"),
            Gets::Refused(502),
            Open,
            Discarded,
        ),
        row(
            "a 101 nobody asked for, then bytes of another protocol",
            bytes(format!("HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: foo\r\n\r\n{SMUGGLED}")),
            Gets::Refused(502),
            Open,
            Discarded,
        ),
        row(
            "a 101 to a WebSocket handshake, for another protocol",
            bytes("HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: foo\r\n\r\nhello"),
            Gets::Refused(502),
            Either,
            Discarded,
        )
        .request(format!(
            "GET /svc/row HTTP/1.1\r\n{HOST}Connection: upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )),
    ]
}

/// RFC 9112 §6.3 item 1: a response to HEAD, and a 1xx, 204 or 304, ends at the empty line
/// after its head whatever its headers say. What follows is not a body: it is not relayed, and
/// the connection, with those bytes pending, is not reused. RFC 9110 §8.6: no Content-Length in
/// a 204; a HEAD answer keeps the length a GET would get.
fn bodiless_rows() -> Vec<Row> {
    use {After::*, Upstream::*};
    let length = format!("Content-Length: {}\r\n", SMUGGLED.len());
    let pause = Duration::from_millis(50);
    vec![
        row(
            "a 204 with a Content-Length and a body",
            bytes(format!("HTTP/1.1 204 No Content\r\n{length}\r\n{SMUGGLED}")),
            complete(204, ""),
            Open,
            Discarded,
        )
        .header("content-length", None)
        .header("transfer-encoding", None),
        row(
            "a 204 with a chunked body",
            bytes(format!("HTTP/1.1 204 No Content\r\n{CHUNKED}\r\n{CHUNKED_HELLO}")),
            complete(204, ""),
            Open,
            Discarded,
        )
        .header("content-length", None)
        .header("transfer-encoding", None),
        row(
            "a 204 with a body and no length",
            bytes(format!("HTTP/1.1 204 No Content\r\n\r\n{SMUGGLED}")),
            complete(204, ""),
            Open,
            Discarded,
        ),
        row(
            "a 304 with a Content-Length and a body",
            bytes(format!("HTTP/1.1 304 Not Modified\r\nETag: \"v1\"\r\n{length}\r\n{SMUGGLED}")),
            complete(304, ""),
            Open,
            Discarded,
        )
        .header("etag", Some("\"v1\""))
        .header("transfer-encoding", None),
        row(
            "a 304 with a chunked body",
            bytes(format!("HTTP/1.1 304 Not Modified\r\nETag: \"v1\"\r\n{CHUNKED}\r\n{CHUNKED_HELLO}")),
            complete(304, ""),
            Open,
            Discarded,
        )
        .header("transfer-encoding", None),
        row("a HEAD answer with a Content-Length body", ok(&length, SMUGGLED), complete(200, ""), Open, Discarded)
            .head_request()
            .header("content-length", Some(&SMUGGLED.len().to_string())),
        row("a HEAD answer with a chunked body", ok(CHUNKED, CHUNKED_HELLO), complete(200, ""), Open, Discarded)
            .head_request(),
        row(
            "a HEAD answer whose body comes 50 ms later",
            ok(&length, "").and_after(pause, SMUGGLED),
            complete(200, ""),
            Open,
            Discarded,
        )
        .head_request(),
    ]
}

/// A head too large or with too many fields is refused (hyper: about 400 KiB, 100 fields;
/// nginx: `proxy_buffer_size`, 4 KiB), as 502 with the connection closed; a large but sane
/// one goes through.
fn head_size_rows() -> Vec<Row> {
    use {After::*, Upstream::*};
    let big = "b".repeat(8000);
    let fifty: String = (0..50).map(|i| format!("X-H{i}: {i}\r\n")).collect();
    let thousand: String = (0..1000).map(|i| format!("X-H{i}: {i}\r\n")).collect();
    vec![
        row(
            "a response head of 8 KB",
            ok(&format!("X-Big: {big}\r\n{LENGTH_5}"), "hello"),
            complete(200, "hello"),
            Open,
            Reused,
        )
        .header("x-big", Some(&big)),
        row(
            "a response head of 1 MiB",
            ok(&format!("X-Big: {}\r\n{LENGTH_5}", "b".repeat(1024 * 1024)), "hello"),
            Gets::Refused(502),
            Open,
            Discarded,
        ),
        row("50 response headers", ok(&format!("{fifty}{LENGTH_5}"), "hello"), complete(200, "hello"), Open, Reused)
            .header("x-h49", Some("49")),
        row(
            "1,000 response headers",
            ok(&format!("{thousand}{LENGTH_5}"), "hello"),
            Gets::Refused(502),
            Open,
            Discarded,
        ),
    ]
}

/// RFC 9112 §5 and RFC 9110 §5.5: field names are tokens; a value has no CR, LF or NUL
/// (a recipient must reject or replace them); whitespace before the colon must be rejected or
/// removed (§5.1); obs-fold in a response to a proxy is a 502 or replaced by spaces (§5.2).
/// Each of these is a parser differential waiting to happen: 502, and the connection closed.
fn field_rows() -> Vec<Row> {
    use {After::*, Upstream::*};
    let invalid = |name: &str, line: &[u8]| {
        let reply = bytes([b"HTTP/1.1 200 OK\r\n".as_slice(), line, b"\r\nContent-Length: 5\r\n\r\nhello"].concat());
        row(format!("a response header with {name}"), reply, Gets::Refused(502), Open, Discarded)
    };
    let smuggled_length = format!("Content-Length : {}\r\n", SMUGGLED.len());
    vec![
        invalid("a bare CR in its value", b"X-Bad: a\rb"),
        invalid("a NUL in its value", b"X-Bad: a\0b"),
        invalid("a DEL in its value", b"X-Bad: a\x7fb"),
        invalid("obs-fold", b"X-Folded: a\r\n b"),
        // §5.1 lets a proxy remove the whitespace instead; hyper refuses, and so must the rewrite.
        invalid("a space before the colon", b"X-Bad : b"),
        invalid("a tab before the colon", b"X-Bad\t: b"),
        invalid("no colon", b"X-Bad"),
        invalid("an empty name", b": b"),
        invalid("a space inside its name", b"X Bad: b"),
        invalid("a non-token byte in its name", b"X@Bad: b"),
        // The length a lenient parser would read is that of the glued response.
        row(
            "a space before the colon of Content-Length",
            ok(&smuggled_length, SMUGGLED),
            Gets::Refused(502),
            Open,
            Discarded,
        ),
        row(
            "a response header with an empty value",
            ok(&format!("X-Empty:\r\n{LENGTH_5}"), "hello"),
            complete(200, "hello"),
            Open,
            Reused,
        )
        .header("x-empty", Some("")),
        // RFC 9112 §2.2: a recipient may take a bare LF as a line end (hyper does), or refuse.
        row(
            "bare LF line ends in the head",
            bytes("HTTP/1.1 200 OK\nContent-Length: 5\n\nhello"),
            complete(200, "hello"),
            Open,
            Reused,
        )
        .or_refused(502),
    ]
}

/// RFC 9112 §6.3 item 5: an invalid Content-Length in a response received by a proxy: "the
/// proxy MUST close the connection to the server, discard the received response, and send a
/// 502 (Bad Gateway) response to the client". A list of one repeated valid value is the one
/// exception (RFC 9110 §8.6): it may be refused the same way, or replaced by the single value,
/// but never forwarded as it came.
fn content_length_rows() -> Vec<Row> {
    use {After::*, Upstream::*};
    let invalid = |name: &str, lines: &str| {
        row(
            format!("Content-Length {name}"),
            ok(lines, &format!("hello{SMUGGLED}")),
            Gets::Refused(502),
            Open,
            Discarded,
        )
    };
    vec![
        invalid("that is not a number", "Content-Length: abc\r\n"),
        invalid("on two lines with different values", "Content-Length: 5\r\nContent-Length: 49\r\n"),
        invalid("as a list of different values", "Content-Length: 5, 49\r\n"),
        invalid("that is negative", "Content-Length: -1\r\n"),
        invalid("with a plus sign", "Content-Length: +5\r\n"),
        invalid("past 2^64", "Content-Length: 18446744073709551616\r\n"),
        invalid("that is empty", "Content-Length: \r\n"),
        invalid("in hex", "Content-Length: 0x5\r\n"),
        row(
            "Content-Length as a list of one value twice",
            ok("Content-Length: 5, 5\r\n", "hello"),
            complete(200, "hello"),
            Open,
            Reused,
        )
        .header("content-length", Some("5"))
        .or_refused(502),
        row(
            "Content-Length on two lines with the same value",
            ok("Content-Length: 5\r\nContent-Length: 5\r\n", "hello"),
            complete(200, "hello"),
            Open,
            Reused,
        )
        .header("content-length", Some("5"))
        .or_refused(502),
        row(
            "Content-Length with leading zeros",
            ok("Content-Length: 005\r\n", "hello"),
            complete(200, "hello"),
            Open,
            Reused,
        ),
    ]
}

/// RFC 9112 §4: `HTTP-version SP 3DIGIT SP [reason]`. HTTP/1.2 would be read as 1.1 by the
/// RFC's SHOULD (§2.3); hyper refuses every version but 1.0 and 1.1, and the rewrite keeps that
/// strictness. A missing reason changes nothing of the framing and is accepted, as hyper and
/// nginx do; without the space after the status code the line is outside the grammar, and
/// may be refused too.
fn status_line_rows() -> Vec<Row> {
    use {After::*, Upstream::*};
    let invalid = |name: &str, line: &[u8]| {
        let reply = bytes([line, b"\r\nContent-Length: 5\r\n\r\nhello"].concat());
        row(format!("a status line {name}"), reply, Gets::Refused(502), Open, Discarded)
    };
    let valid = |name: &str, line: &str| {
        row(
            format!("a status line {name}"),
            bytes(format!("{line}\r\n{LENGTH_5}\r\nhello")),
            complete(200, "hello"),
            Open,
            Reused,
        )
    };
    vec![
        invalid("of HTTP/1.2", b"HTTP/1.2 200 OK"),
        invalid("of HTTP/2.0", b"HTTP/2.0 200 OK"),
        invalid("in lower case", b"http/1.1 200 OK"),
        invalid("with a two-digit status", b"HTTP/1.1 20 OK"),
        invalid("with a four-digit status", b"HTTP/1.1 2000 OK"),
        invalid("with a status below 100", b"HTTP/1.1 099 OK"),
        invalid("with a letter in the status", b"HTTP/1.1 2O0 OK"),
        invalid("with two spaces after the version", b"HTTP/1.1  200 OK"),
        invalid("with a NUL in the reason", b"HTTP/1.1 200 O\0K"),
        invalid("of another protocol", b"ICY 200 OK"),
        row(
            "no status line at all (HTTP/0.9)",
            Reply::raw("hello world", Then::Close),
            Gets::Refused(502),
            Open,
            Discarded,
        ),
        valid("without a reason or its space", "HTTP/1.1 200").or_refused(502),
        valid("with an empty reason", "HTTP/1.1 200 "),
        // RFC 9110 §15: a status outside 100..599 is invalid, but its framing is sound; hyper
        // and nginx relay it.
        row(
            "a status line with a status of 600",
            bytes(format!("HTTP/1.1 600 X\r\n{LENGTH_5}\r\nhello")),
            complete(600, "hello"),
            Open,
            Reused,
        )
        .or_refused(502),
    ]
}

/// HTTP/1.0 answers: never reused (the proxy's rule: hyper would speak HTTP/1.0 on the
/// connection afterwards), a body without a length read to the close and relayed framed, the
/// client's connection kept (the proxy speaks HTTP/1.1 to it).
fn http10_rows() -> Vec<Row> {
    use {After::*, Upstream::*};
    vec![
        row(
            "HTTP/1.0 with a Content-Length, the socket left open",
            bytes(format!("HTTP/1.0 200 OK\r\n{LENGTH_5}\r\nhello")),
            complete(200, "hello"),
            Open,
            Discarded,
        ),
        row(
            "HTTP/1.0 keep-alive with a Content-Length",
            bytes(format!("HTTP/1.0 200 OK\r\nConnection: keep-alive\r\n{LENGTH_5}\r\nhello")),
            complete(200, "hello"),
            Open,
            Discarded,
        ),
        row(
            "HTTP/1.0 with a body delimited by the close",
            Reply::raw("HTTP/1.0 200 OK\r\n\r\nhello world", Then::Close),
            complete(200, "hello world"),
            Open,
            Discarded,
        ),
        row(
            "HTTP/1.0 keep-alive without a length, delimited by the close",
            Reply::raw("HTTP/1.0 200 OK\r\nConnection: keep-alive\r\n\r\nhello world", Then::Close),
            complete(200, "hello world"),
            Open,
            Discarded,
        ),
        row(
            "HTTP/1.1 with a body delimited by the close",
            Reply::raw("HTTP/1.1 200 OK\r\n\r\nhello world", Then::Close),
            complete(200, "hello world"),
            Open,
            Discarded,
        ),
    ]
}

/// The start of a request head that, parsed out of a body, would be answered with the token
/// `smuggled`.
const SMUGGLED_HEAD: &str = "GET /stolen HTTP/1.1\r\nHost: x\r\nX-Token: smuggled\r\nX-Pad: ";

/// A body of `len` bytes that a careless backend reads as a request head: complete, or left
/// open for whatever follows on the connection (the next request) to finish.
fn smuggling_body(len: usize, complete: bool) -> Vec<u8> {
    let end = if complete { "\r\n\r\n" } else { "" };
    let pad = len - SMUGGLED_HEAD.len() - end.len();
    [SMUGGLED_HEAD.as_bytes(), &vec![b'a'; pad], end.as_bytes()].concat()
}

/// Issue 11: a response that arrives before the request body was read. What the backend has
/// not read of the body it will parse as the next request: the connection is never reused.
fn early_answer_rows() -> Vec<Row> {
    use {After::*, Upstream::*};
    let streamed = |status: u16| {
        // 100 KiB, more than the proxy buffers (64 KiB): the head and 70 KiB go before the
        // answer, the rest after it.
        let body = smuggling_body(100 * 1024, true);
        let head = format!("POST /svc/row HTTP/1.1\r\n{HOST}Content-Length: {}\r\n\r\n", body.len());
        row(
            format!("an early {status} while a streamed body is still arriving"),
            Reply::early(status, "hello"),
            complete(status, "hello"),
            Either,
            Discarded,
        )
        .request([head.as_bytes(), &body[..70 * 1024]].concat())
        .rest(body[70 * 1024..].to_vec())
    };
    let small = smuggling_body(200, false);
    let buffered_head = format!("POST /svc/row HTTP/1.1\r\n{HOST}Content-Length: {}\r\n\r\n", small.len());
    vec![
        streamed(200),
        streamed(413),
        row(
            "an early 401 to a buffered body whose unread head the next request would finish",
            Reply::early(401, "hello"),
            complete(401, "hello"),
            Open,
            Discarded,
        )
        .request([buffered_head.as_bytes(), &small].concat()),
    ]
}

/// RFC 9112 §9.6: a `close` connection option means no further request on that connection,
/// whatever the spelling; other tokens name hop-by-hop fields, removed before relaying (RFC
/// 9110 §7.6.1).
fn connection_rows() -> Vec<Row> {
    use {After::*, Upstream::*};
    let closing = |value: &str| {
        row(
            format!("Connection: {}, the socket left open", value.replace("\r\nConnection: ", " + ")),
            ok(&format!("Connection: {value}\r\n{LENGTH_5}"), "hello"),
            complete(200, "hello"),
            Open,
            Discarded,
        )
    };
    vec![
        closing("close"),
        closing("keep-alive, close"),
        closing("CLOSE"),
        closing("close\r\nConnection: keep-alive"),
        row(
            "a Connection token naming a response header",
            ok(&format!("Connection: X-Secret\r\nX-Secret: s3cret\r\n{LENGTH_5}"), "hello"),
            complete(200, "hello"),
            Open,
            Reused,
        )
        .header("x-secret", None),
        row(
            "Upgrade headers on a 200",
            ok(&format!("Connection: upgrade\r\nUpgrade: websocket\r\n{LENGTH_5}"), "hello"),
            complete(200, "hello"),
            Open,
            Reused,
        )
        .header("upgrade", None),
    ]
}

/// A pooled connection the upstream closes: noticed before it is used, a request goes on a new
/// connection and succeeds, its body sent once. When the close crosses the request (RFC 9112
/// §9.3.1: "ought to anticipate the need to recover from asynchronous close events"), an
/// idempotent request is retried on a new connection (RFC 9110 §9.2.2; nginx does), and a POST
/// is not: "A proxy MUST NOT automatically retry non-idempotent requests" (RFC 9112 §9.3.1).
fn pooled_close_rows() -> Vec<Row> {
    use {After::*, Upstream::*};
    let idle = Then::CloseIdle(Duration::from_millis(100));
    let hello = format!("HTTP/1.1 200 OK\r\n{LENGTH_5}\r\nhello");
    vec![
        row(
            "the upstream closes an idle pooled connection, then POSTs come",
            Reply::raw(hello.clone(), idle),
            complete(200, "hello"),
            Open,
            Discarded,
        )
        .probe(Probe::Post),
        row(
            "the upstream closes a pooled connection as a GET arrives on it",
            bytes(hello.clone()),
            complete(200, "hello"),
            Open,
            Reused,
        )
        .on_reuse(close_on_arrival()),
        row(
            "the upstream resets a pooled connection as a GET arrives on it",
            bytes(hello.clone()),
            complete(200, "hello"),
            Open,
            Reused,
        )
        .on_reuse(Reply::raw(Vec::new(), Then::Reset).without_reading_body()),
        row(
            "the upstream closes a pooled connection as a POST arrives on it",
            bytes(hello),
            complete(200, "hello"),
            Open,
            Reused,
        )
        .on_reuse(close_on_arrival())
        .probe(Probe::Post)
        .first_probe_refused(502),
    ]
}

fn all_rows() -> Vec<Row> {
    [
        baseline_rows(),
        extra_bytes_rows(),
        short_body_rows(),
        both_lengths_rows(),
        malformed_chunk_rows(),
        transfer_coding_rows(),
        informational_rows(),
        bodiless_rows(),
        head_size_rows(),
        field_rows(),
        content_length_rows(),
        status_line_rows(),
        http10_rows(),
        early_answer_rows(),
        connection_rows(),
        pooled_close_rows(),
    ]
    .concat()
}

/// How the backend answers a probe (or anything else that is not the row's request): its
/// token, and the body it was sent.
fn echo(request: &SeenRequest) -> Reply {
    Reply::ok(200, &echoed(request.header("x-token").unwrap_or("none"), request.body.as_deref()))
}

fn echoed(token: &str, body: Option<&[u8]>) -> String {
    match body {
        Some(body) if !body.is_empty() => format!("token={token} body={}", String::from_utf8_lossy(body)),
        _ => format!("token={token}"),
    }
}

/// The row's backend: the row's reply to `/row`, `on_reuse` to a later request on the row's
/// connection (the first one), the echo to anything else.
fn script(row: &Row) -> impl Fn(&SeenRequest) -> Reply + Send + Sync + 'static {
    let (reply, on_reuse) = (row.reply.clone(), row.on_reuse.clone());
    move |request: &SeenRequest| {
        if request.path == "/row" {
            return reply.clone();
        }
        match &on_reuse {
            Some(on_reuse) if request.conn == 0 && request.nth > 0 => on_reuse.clone(),
            _ => echo(request),
        }
    }
}

/// What the proxy under test is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Against {
    Gatehouse,
    /// nginx from PATH, for comparison (`GATEHOUSE_MALICIOUS_AGAINST=nginx`).
    Nginx,
}

fn against() -> Against {
    match std::env::var("GATEHOUSE_MALICIOUS_AGAINST").as_deref() {
        Ok("nginx") => Against::Nginx,
        Ok("gatehouse") | Err(_) => Against::Gatehouse,
        Ok(other) => panic!("GATEHOUSE_MALICIOUS_AGAINST={other}: expected gatehouse or nginx"),
    }
}

/// A proxy routing `api.example.com/svc/...` to one backend, prefix stripped.
enum Target {
    Gatehouse(gatehouse_proxy::ProxyHandle),
    Nginx { child: tokio::process::Child, dir: tempfile::TempDir, addr: SocketAddr },
}

impl Target {
    async fn start(against: Against, backend: SocketAddr) -> Self {
        match against {
            Against::Gatehouse => {
                Self::Gatehouse(start_proxy(&config(&[("svc", vec![backend])], PROXY_SETTINGS)).await)
            }
            Against::Nginx => Self::start_nginx(backend).await,
        }
    }

    /// nginx in one process (no master, so that its PID is all there is to stop), with the
    /// timeouts of the proxy under test and an upstream keepalive pool.
    async fn start_nginx(backend: SocketAddr) -> Self {
        let dir = tempfile::tempdir().unwrap();
        // A free port, handed to nginx (which cannot be given port 0 and report it).
        let addr = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        let d = dir.path().display();
        let conf = format!(
            "daemon off;\nmaster_process off;\nworker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log info;\n\
             events {{ worker_connections 256; }}\n\
             http {{\n  access_log off;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n  fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n\
             \x20 upstream backend {{ server {backend}; keepalive 16; }}\n\
             \x20 server {{\n    listen {addr};\n    location /svc/ {{\n      proxy_pass http://backend/;\n      proxy_http_version 1.1;\n      proxy_set_header Connection \"\";\n      proxy_read_timeout 1s;\n    }}\n  }}\n}}\n"
        );
        std::fs::write(dir.path().join("nginx.conf"), conf).unwrap();
        let child = tokio::process::Command::new("nginx")
            .arg("-p")
            .arg(dir.path())
            .arg("-c")
            .arg(dir.path().join("nginx.conf"))
            .arg("-e")
            .arg(dir.path().join("error.log"))
            .kill_on_drop(true)
            .spawn()
            .expect("nginx on PATH");
        let deadline = Instant::now() + Duration::from_secs(5);
        while tokio::net::TcpStream::connect(addr).await.is_err() {
            assert!(Instant::now() < deadline, "nginx did not listen on {addr}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Self::Nginx { child, dir, addr }
    }

    fn addr(&self) -> SocketAddr {
        match self {
            Self::Gatehouse(proxy) => proxy.traffic_addr(),
            Self::Nginx { addr, .. } => *addr,
        }
    }

    /// What nginx logged about the upstream, for a row that failed against it.
    fn upstream_log(&self) -> Vec<String> {
        match self {
            Self::Gatehouse(_) => Vec::new(),
            Self::Nginx { dir, .. } => std::fs::read_to_string(dir.path().join("error.log"))
                .unwrap_or_default()
                .lines()
                .filter(|l| l.contains("upstream") && !l.contains("keepalive"))
                // `<date> [level] <pid>: *<conn> <message>, client: ...`: the message.
                .map(|l| {
                    let message = l.split_once(": *").and_then(|(_, rest)| rest.split_once(' ')).map_or(l, |(_, m)| m);
                    format!("nginx: {}", message.split(", client:").next().unwrap_or(message))
                })
                .collect(),
        }
    }

    async fn stop(self) {
        match self {
            Self::Gatehouse(proxy) => proxy.start_drain(),
            Self::Nginx { mut child, .. } => {
                let _ = child.kill().await;
            }
        }
    }
}

/// Reads the 1xx responses and then the final one.
async fn final_response(conn: &mut RawConn, head: bool) -> (Vec<u16>, Result<PartialResponse, RawEnd>) {
    let mut informational = Vec::new();
    loop {
        match conn.read_response(ANSWER_WITHIN, head).await {
            Ok(read) if (100..200).contains(&read.response.status) && informational.len() < 1000 => {
                informational.push(read.response.status);
            }
            other => return (informational, other),
        }
    }
}

/// What is wrong with the final response, measured against `gets` and `headers`.
fn check_final(
    gets: &Gets,
    headers: &[(&'static str, Option<String>)],
    client_http11: bool,
    read: Result<PartialResponse, RawEnd>,
) -> Vec<String> {
    let read = match read {
        Ok(read) => read,
        Err(end) => return vec![format!("no response: {end:?}, expected {gets}")],
    };
    let PartialResponse { response, end } = read;
    let got = || format!("{} {:?} ({end:?})", response.status, String::from_utf8_lossy(&response.body));
    let mut problems = Vec::new();
    match gets {
        Gets::Complete(status, body) => {
            if end != BodyEnd::Complete || response.status != *status || response.body != *body {
                problems.push(format!("got {}, expected {gets}", got()));
            }
            // A body reaches an HTTP/1.1 client framed, so that a cut would be visible.
            let framed = response.header("content-length").is_some() || response.header("transfer-encoding").is_some();
            if client_http11 && !body.is_empty() && !framed {
                problems.push("the body reached the client delimited by the close: a cut would look complete".into());
            }
        }
        Gets::CutShort(status, sent) => {
            if end != BodyEnd::CutShort || response.status != *status || !sent.starts_with(&response.body) {
                problems.push(format!("got {}, expected {gets}", got()));
            }
        }
        Gets::Refused(status) => {
            let text = String::from_utf8_lossy(&response.body);
            if end != BodyEnd::Complete || response.status != *status {
                problems.push(format!("got {}, expected {gets}", got()));
            } else if let Some(word) = UPSTREAM_WORDS.iter().find(|w| text.contains(*w)) {
                problems.push(format!("the proxy's {status} carries the upstream's {word:?}: {text:?}"));
            }
        }
    }
    for (name, expected) in headers {
        let value = response.header(name);
        if value != expected.as_deref() {
            problems.push(format!("{name}: {value:?}, expected {expected:?}"));
        }
    }
    problems.extend(framing_problems(&response));
    if !problems.is_empty() {
        let headers: Vec<String> = response.headers.iter().map(|(n, v)| format!("{n}: {v}")).collect();
        problems.push(format!("the client got: {} {} [{}]", response.version, response.status, headers.join(", ")));
    }
    problems
}

/// What no response to a client may carry, whatever the upstream sent.
fn framing_problems(response: &RawResponse) -> Vec<String> {
    let count = |name: &str| response.headers.iter().filter(|(n, _)| n == name).count();
    let mut problems = Vec::new();
    if count("content-length") > 1 {
        problems.push("more than one Content-Length reached the client".into());
    }
    if count("content-length") > 0 && count("transfer-encoding") > 0 {
        problems.push("Content-Length and Transfer-Encoding together reached the client".into());
    }
    problems
}

/// Sends a probe with `token` on `conn`: `Ok` when it got exactly its own answer (or, with
/// `refused`, the proxy's answer with that status), else what it got.
async fn probe(conn: &mut RawConn, probe: Probe, token: &str, refused: Option<u16>) -> Result<(), String> {
    let (request, body) = match probe {
        Probe::Get => (format!("GET /svc/probe HTTP/1.1\r\n{HOST}X-Token: {token}\r\n\r\n"), None),
        Probe::Post => {
            let body = format!("upload-{token}");
            (
                format!(
                    "POST /svc/probe HTTP/1.1\r\n{HOST}X-Token: {token}\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                ),
                Some(body),
            )
        }
    };
    if !conn.send(request.as_bytes()).await {
        return Err("could not send".into());
    }
    let (_, read) = final_response(conn, false).await;
    let gets = match refused {
        Some(status) => Gets::Refused(status),
        None => Gets::Complete(200, echoed(token, body.as_deref().map(str::as_bytes)).into_bytes()),
    };
    let problems = check_final(&gets, &[], true, read);
    if problems.is_empty() { Ok(()) } else { Err(problems.join("; ")) }
}

/// Polls `condition` every 10 ms for up to `timeout`; whether it came to hold.
async fn within(timeout: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if condition() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Runs one row; every failed expectation is returned as a line, not panicked on, so that one
/// run reports every row that fails.
async fn run(row: &Row, against: Against) -> Vec<String> {
    let backend = ScriptedBackend::start(script(row)).await;
    let target = Target::start(against, backend.addr).await;
    let mut problems = Vec::new();

    let mut conn = RawConn::connect(target.addr()).await;
    // The proxy may close before everything is written: not a failure in itself.
    let _ = conn.send(&row.request).await;
    let (informational, read) = final_response(&mut conn, row.head).await;
    let row = &row.expecting(&read);
    if !row.rest.is_empty() {
        let _ = conn.send(&row.rest).await;
    }
    let client_http11 = !row.request.starts_with(b"GET /svc/row HTTP/1.0");
    // A response the client could not read to an end leaves its connection in no known state.
    let read_through = matches!(&read, Ok(r) if matches!(r.end, BodyEnd::Complete | BodyEnd::CutShort));
    problems.extend(check_final(&row.gets, &row.headers, client_http11, read));
    if !informational.is_empty() && informational != row.informational {
        problems.push(format!("1xx relayed {informational:?}, expected {:?} or none", row.informational));
    }

    // Before any further request: the backend has written everything of its reply (bytes
    // after a pause included), or the proxy hung up on it; then a moment for the proxy to take
    // in what arrived.
    let total = row.reply.all_bytes().len();
    let row_conn_settled = || backend.conns().first().is_none_or(|c| c.end != ConnEnd::Open || c.sent.len() >= total);
    within(CLOSE_WITHIN, row_conn_settled).await;
    tokio::time::sleep(SETTLE).await;

    let mut tokens = Vec::new();
    let mut refused = row.first_probe_refused;
    match row.client {
        After::Open if !read_through => {
            problems.push("(the same client's next request not sent: its response could not be read)".into());
        }
        After::Open => {
            if let Err(e) = probe(&mut conn, row.probe, "tok-same", refused.take()).await {
                problems.push(format!("the same client's next request: {e}"));
            }
            tokens.push("tok-same");
        }
        After::Closed => match conn.closed_within(CLOSE_WITHIN).await {
            Ok(rest) if rest.is_empty() => {}
            Ok(rest) => problems.push(format!("client closed after more bytes: {:?}", String::from_utf8_lossy(&rest))),
            Err(rest) => problems.push(format!(
                "client connection still open after {CLOSE_WITHIN:?}: {:?}",
                String::from_utf8_lossy(&rest)
            )),
        },
        After::Either => {}
    }
    drop(conn);
    let mut next = RawConn::connect(target.addr()).await;
    if let Err(e) = probe(&mut next, row.probe, "tok-next", refused).await {
        problems.push(format!("another client's request: {e}"));
    }
    tokens.push("tok-next");
    drop(next);

    let requests = backend.requests();
    let probes: Vec<&SeenRequest> =
        requests.iter().filter(|r| r.header("x-token").is_some_and(|t| tokens.contains(&t))).collect();
    match (requests.iter().find(|r| r.path == "/row").map(|r| r.conn), row.upstream) {
        (None, _) => problems.push("the row's request never reached the backend".into()),
        (Some(row_conn), Upstream::Reused) => {
            if probes.first().map(|p| p.conn) != Some(row_conn) {
                problems.push(format!(
                    "the upstream connection was not reused: the next request came over connection {:?}, not {row_conn}",
                    probes.first().map(|p| p.conn)
                ));
            }
        }
        (Some(_), Upstream::EitherWay) => {}
        (Some(row_conn), Upstream::Discarded) => {
            // Closed by the time the pool has had the chance to use it (at once, or when the
            // probes looked for a connection): a proxy may notice lazily, but not keep it.
            let closed = || backend.conns().get(row_conn).is_none_or(|c| c.end != ConnEnd::Open);
            if let Some(p) = probes.iter().find(|p| p.conn == row_conn) {
                problems.push(format!(
                    "request {:?} went over the row's upstream connection, which had to close",
                    p.header("x-token")
                ));
            } else if !within(CLOSE_WITHIN, closed).await {
                problems.push(format!("the row's upstream connection is still open {CLOSE_WITHIN:?} after the probes"));
            }
        }
    }
    if row.probe == Probe::Post {
        let received: Vec<u8> = backend.conns().into_iter().flat_map(|c| c.received).collect();
        for token in &tokens {
            let body = format!("upload-{token}");
            let times = received.windows(body.len()).filter(|w| *w == body.as_bytes()).count();
            if times != 1 {
                problems.push(format!("the body of {token} reached the backend {times} times"));
            }
        }
    }
    if !problems.is_empty() {
        problems.extend(target.upstream_log());
    }
    target.stop().await;
    problems
}

#[tokio::test]
async fn each_malicious_upstream_behaviour_is_contained_as_its_row_says() {
    let against = against();
    let only = std::env::var("GATEHOUSE_MALICIOUS_ROWS").unwrap_or_default();
    let rows: Vec<Row> = all_rows().into_iter().filter(|r| r.name.contains(&only)).collect();
    assert!(!rows.is_empty(), "no row name contains {only:?}");
    let started = Instant::now();
    let mut failures = Vec::new();
    let mut failed_rows = 0;
    for row in &rows {
        let problems = tokio::time::timeout(Duration::from_secs(30), run(row, against))
            .await
            .unwrap_or_else(|_| vec!["row took more than 30 s".into()]);
        failed_rows += usize::from(!problems.is_empty());
        for problem in problems {
            failures.push(format!("{}: {problem}", row.name));
        }
    }
    assert!(
        failures.is_empty(),
        "against {against:?}: {failed_rows} of {} rows failed:\n{}",
        rows.len(),
        failures.join("\n")
    );
    eprintln!("malicious upstreams: {} rows, 0 failed, in {:.1} s", rows.len(), started.elapsed().as_secs_f64());
}

#[test]
fn the_table_has_a_row_per_malicious_shape() {
    let rows = all_rows();
    let mut names: Vec<&str> = rows.iter().map(|r| r.name.as_str()).collect();
    names.sort_unstable();
    let before = names.len();
    names.dedup();
    assert_eq!(names.len(), before, "row names are unique");
    assert!(rows.len() >= 100, "{} rows", rows.len());
}

/// What the shared backend of the cross-client check does, by path. Each answer carries the
/// requester's token; each misbehaviour carries the token of the request before it (another
/// client's, most of the time), so that bytes reaching the wrong client show.
///
/// Left out on purpose: bytes that arrive after a pause, since a proxy that has sent the next
/// request on a clean-looking connection cannot tell them from its answer (the table's rows
/// send them while the connection is idle).
const CROSS_SHAPES: [&str; 10] =
    ["/glued", "/no-content", "/head", "/informational", "/both", "/close", "/old", "/early", "/ok", "/cut"];

fn cross_script(last: Arc<Mutex<String>>) -> impl Fn(&SeenRequest) -> Reply + Send + Sync + 'static {
    move |request: &SeenRequest| {
        let token = request.header("x-token").unwrap_or("none").to_owned();
        let previous = std::mem::replace(&mut *last.lock().unwrap(), token.clone());
        let own = format!("token={token}");
        let smuggled = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\ntoken={previous}", previous.len() + 6);
        let length = |body: &str| format!("Content-Length: {}\r\n", body.len());
        match request.path.as_str() {
            "/glued" => ok(&length(&own), &format!("{own}{smuggled}")),
            "/no-content" => bytes(format!("HTTP/1.1 204 No Content\r\n{}\r\n{smuggled}", length(&smuggled))),
            "/head" => ok(&length(&smuggled), &smuggled),
            "/informational" => bytes(format!(
                "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\nHTTP/1.1 200 OK\r\n{}\r\n{own}",
                length(&own)
            )),
            "/both" => {
                ok(&format!("Content-Length: 3\r\n{CHUNKED}"), &format!("{:x}\r\n{own}\r\n0\r\n\r\n", own.len()))
            }
            "/close" => ok(&format!("Connection: close\r\n{}", length(&own)), &own),
            "/old" => bytes(format!("HTTP/1.0 200 OK\r\nConnection: keep-alive\r\n{}\r\n{own}", length(&own))),
            "/early" => Reply::early(401, &own),
            "/cut" => Reply::raw(format!("HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{own}"), Then::Reset),
            _ => echo(request),
        }
    }
}

/// One client's exchanges: `rounds` requests, a shape each, over a kept connection (a new one
/// when the last was closed). What went wrong, if anything.
async fn cross_client(addr: SocketAddr, client: usize, rounds: usize) -> Vec<String> {
    let mut problems = Vec::new();
    let mut conn = RawConn::connect(addr).await;
    for round in 0..rounds {
        let shape = CROSS_SHAPES[(client * 3 + round) % CROSS_SHAPES.len()];
        let token = format!("tok-c{client}-r{round}");
        let own = format!("token={token}");
        let (method, body) = match shape {
            "/head" => ("HEAD", String::new()),
            // A small body whose request head is left open: on a reused connection, the next
            // request would finish it and be answered with this client's token.
            "/early" => ("POST", format!("GET /svc/stolen HTTP/1.1\r\nHost: x\r\nX-Token: {token}\r\nX-Pad: ")),
            _ => ("GET", String::new()),
        };
        let request = format!(
            "{method} /svc{shape} HTTP/1.1\r\n{HOST}X-Token: {token}\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        if !conn.send(request.as_bytes()).await {
            problems.push(format!("{token} {shape}: could not send"));
            conn = RawConn::connect(addr).await;
            continue;
        }
        let (_, read) = final_response(&mut conn, method == "HEAD").await;
        let expected = match shape {
            "/no-content" => complete(204, ""),
            "/head" => complete(200, ""),
            "/early" => complete(401, &own),
            "/cut" => cut_short(200, &own),
            _ => complete(200, &own),
        };
        let reconnect = matches!(&read, Ok(r) if r.end != BodyEnd::Complete || r.response.header("connection") == Some("close"))
            || read.is_err();
        for problem in check_final(&expected, &[], true, read) {
            problems.push(format!("{token} {shape}: {problem}"));
        }
        if reconnect {
            conn = RawConn::connect(addr).await;
        }
    }
    problems
}

#[tokio::test]
async fn many_clients_behind_one_misbehaving_backend_each_receive_only_their_own_token() {
    const CLIENTS: usize = 16;
    const ROUNDS: usize = 25;
    let backend = ScriptedBackend::start(cross_script(Arc::new(Mutex::new("none".into())))).await;
    let target = Target::start(against(), backend.addr).await;
    let addr = target.addr();
    let started = Instant::now();
    let problems: Vec<String> = tokio::time::timeout(
        Duration::from_secs(60),
        join_all((0..CLIENTS).map(|client| cross_client(addr, client, ROUNDS))),
    )
    .await
    .expect("every client done within 60 s")
    .into_iter()
    .flatten()
    .collect();
    let exchanges = CLIENTS * ROUNDS;
    assert!(problems.is_empty(), "{} problems in {exchanges} exchanges:\n{}", problems.len(), problems.join("\n"));
    // The pool was used (most shapes close their connection, two of ten do not): as many
    // upstream connections as exchanges would mean nothing was ever reused, and the check
    // would prove little.
    let accepted = backend.accepted();
    assert!(accepted < exchanges, "{accepted} upstream connections for {exchanges} exchanges");
    eprintln!(
        "{CLIENTS} clients x {ROUNDS} rounds: each got only its own token, over {accepted} upstream connections, in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    target.stop().await;
}
