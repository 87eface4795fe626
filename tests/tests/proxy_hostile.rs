//! Hostile requests, sent as raw bytes over TCP to an in-process proxy in front of recording
//! backends: one per Service, and decoys that no row may reach (`bar`, which every traversal
//! names, and `panel` behind a second edge, reachable only by naming its host).
//!
//! One table, one row per request shape: the bytes, the statuses expected in order, whether
//! the connection must stay usable or be closed, and exactly what each backend received. After
//! every row a well-formed request on a fresh connection must still be served (by `canary`).
//!
//! What decides each answer (RFC 9110/9112, and what hyper's parser and nginx do):
//! - the request head is parsed by hyper (httparse): a malformed line, bare CR, obs-fold,
//!   whitespace before a colon, a bad `Content-Length`, `Transfer-Encoding` not ending in
//!   `chunked` or on HTTP/1.0, an unknown version: 400 and close; a head over the limit: 431
//!   and close; the HTTP/2 preface: closed without an answer;
//! - `Content-Length` with `Transfer-Encoding`: hyper frames by `Transfer-Encoding` alone and
//!   closes the connection after the answer (RFC 9112 §6.1 allows that or a 400), so nothing
//!   that follows the chunked body is ever read as a request;
//! - the proxy itself (`gatehouse_proxy::request`, the convention): host and path rules, 400 for
//!   dot segments in any spelling, 404 for what names no Service, 405 for CONNECT, 501 for a
//!   transfer coding other than `chunked`.
#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::time::Duration;

use gatehouse_tests::backends::{Backend, RawConn, Recorded, start_proxy};

const ANSWER_WITHIN: Duration = Duration::from_secs(5);
/// How long a connection that must be closed may take to close.
const CLOSE_WITHIN: Duration = Duration::from_secs(3);

/// What must become of the connection after the expected answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum After {
    /// Still usable: a well-formed request on it is served.
    Open,
    /// Closed by the proxy, with nothing more written.
    Closed,
    /// Either is correct.
    Either,
}

/// One request a backend must have received.
#[derive(Debug, Clone)]
struct Seen {
    backend: &'static str,
    method: &'static str,
    path: String,
    /// The body exactly, when checked.
    body: Option<Vec<u8>>,
}

#[derive(Debug, Clone)]
struct Row {
    name: String,
    request: Vec<u8>,
    statuses: Vec<u16>,
    after: After,
    seen: Vec<Seen>,
    /// Checked on the first request a backend received: (header, value or absent).
    headers: Vec<(&'static str, Option<&'static str>)>,
}

impl Row {
    fn seen(mut self, backend: &'static str, method: &'static str, path: &str) -> Self {
        self.seen.push(Seen { backend, method, path: path.to_owned(), body: None });
        self
    }

    fn seen_body(mut self, backend: &'static str, method: &'static str, path: &str, body: &[u8]) -> Self {
        self.seen.push(Seen { backend, method, path: path.to_owned(), body: Some(body.to_vec()) });
        self
    }

    fn header(mut self, name: &'static str, value: Option<&'static str>) -> Self {
        self.headers.push((name, value));
        self
    }
}

fn row(name: impl Into<String>, request: impl AsRef<[u8]>, statuses: &[u16], after: After) -> Row {
    Row {
        name: name.into(),
        request: request.as_ref().to_vec(),
        statuses: statuses.to_vec(),
        after,
        seen: Vec::new(),
        headers: Vec::new(),
    }
}

const HOST: &str = "Host: api.example.com\r\n";

/// `GET <target>` on the API host.
fn get(target: &str) -> Vec<u8> {
    format!("GET {target} HTTP/1.1\r\n{HOST}\r\n").into_bytes()
}

/// A request line (with its version), `headers` (each ending in CRLF) and `body`, verbatim.
fn raw(line: &[u8], headers: &[u8], body: &[u8]) -> Vec<u8> {
    [line, b"\r\n", headers, b"\r\n", body].concat()
}

/// A request smuggled inside a body: if anything ever parsed it as a request, `bar` (a decoy)
/// would receive it.
const SMUGGLED: &[u8] = b"GET /bar/smuggled HTTP/1.1\r\nHost: api.example.com\r\n\r\n";

fn chunked(data: &[u8]) -> Vec<u8> {
    [format!("{:x}\r\n", data.len()).as_bytes(), data, b"\r\n0\r\n\r\n"].concat()
}

fn traversal_rows() -> Vec<Row> {
    let paths = [
        "/foo/../bar/x",
        "/foo/..",
        "/foo/./x",
        "/foo/x/../../bar/y",
        "/foo/%2e%2e/bar/x",
        "/foo/%2E%2e/bar/",
        "/foo/%2e%2E/bar",
        "/foo/%2E%2E/bar",
        "/foo/.%2e/bar/x",
        "/foo/%2e./bar/x",
        "/foo/%2e/x",
        "/foo/..%2fbar/x",
        "/foo/%2e%2e%2fbar/x",
        "/foo%2f..%2fbar/x",
        "/foo\\..\\bar\\x",
        "/foo/..\\bar",
        "/foo/%5c..%5cbar",
        "/foo/..%5Cbar",
        "/foo/%5C%2e%2e%5Cbar",
        "/foo/%252e%252e/bar",
        "/foo/%252E%252e%252fbar",
        "/foo/%25252e%25252e/bar",
        // Four layers: still encoded after every layer looked through, refused as such.
        "/foo/%2525252e%2525252e/bar",
        // Overlong UTF-8 for '.', '/' and '\' (decoded as dots by old IIS and Tomcat).
        "/foo/%c0%ae%c0%ae/bar",
        "/foo/%C0%AE%C0%AE%C0%AFbar",
        "/foo/%e0%80%ae%e0%80%ae/bar",
        "/foo/..%c0%afbar",
        "/foo/..%c1%9cbar",
        // IIS's %u escapes: not percent-encoding at all.
        "/foo/%u002e%u002e/bar",
        // Path parameters: Tomcat and Spring drop `;...` from a segment, leaving `..`.
        "/foo/..;/bar",
        "/foo/..;jsessionid=1/bar",
        "/foo/%2e%2e;x/bar",
        "/foo/.;/x",
    ];
    paths.iter().map(|p| row(format!("traversal {p}"), get(p), &[400], After::Open)).collect()
}

fn service_segment_rows() -> Vec<Row> {
    let mut rows: Vec<Row> = [
        "/foo%2fbar/x",
        "/foo%2Fbar",
        "/foo%5cbar/x",
        "/%66oo/x",
        "/Foo/x",
        "/FOO/x",
        "/foo;x=1/y",
        "/foo.bar/x",
        "/-foo/x",
        "//bar/x",
        "///bar/x",
        "/",
        "/bar%2f/x",
    ]
    .iter()
    .map(|p| row(format!("service segment {p}"), get(p), &[404], After::Open))
    .collect();
    rows.push(row("service segment with a NUL", get("/foo%00/x"), &[400], After::Open));
    rows
}

fn absolute_form_rows() -> Vec<Row> {
    vec![
        // The target and Host must name the same host: otherwise ALB rules, WAF and logs (which
        // read Host) and the router (which reads the target) would disagree. 400 either way.
        row(
            "absolute form for an unknown host, good Host",
            raw(b"GET http://evil.example.com/foo/x HTTP/1.1", HOST.as_bytes(), b""),
            &[400],
            After::Open,
        ),
        row(
            "absolute form for the API host, hostile Host",
            raw(b"GET http://api.example.com/foo/x HTTP/1.1", b"Host: evil.example.com\r\n", b""),
            &[400],
            After::Open,
        ),
        row(
            "absolute form naming the second edge, API Host",
            raw(b"GET http://admin.example.com/panel/x HTTP/1.1", HOST.as_bytes(), b""),
            &[400],
            After::Open,
        ),
        // RFC 9112 §3.2.2: routed by the target, and the proxy sends a Host made from it.
        row(
            "absolute form agreeing with Host",
            raw(b"GET http://api.example.com/foo/x HTTP/1.1", HOST.as_bytes(), b""),
            &[200],
            After::Open,
        )
        .seen("foo", "GET", "/x")
        .header("host", Some("api.example.com"))
        .header("x-forwarded-host", Some("api.example.com")),
        row(
            "absolute form with a port and upper case, Host without",
            raw(b"GET https://API.example.com:443/foo/x?q=1 HTTP/1.1", HOST.as_bytes(), b""),
            &[200],
            After::Open,
        )
        .seen("foo", "GET", "/x?q=1")
        .header("host", Some("API.example.com:443")),
        row(
            "absolute form without Host (HTTP/1.1 requires one)",
            raw(b"GET http://api.example.com/foo/x HTTP/1.1", b"", b""),
            &[400],
            After::Open,
        ),
        row(
            "absolute form with userinfo",
            raw(b"GET http://evil.example.com@api.example.com/foo/x HTTP/1.1", HOST.as_bytes(), b""),
            &[400],
            After::Open,
        ),
        row(
            "absolute form with a traversal",
            raw(b"GET http://api.example.com/foo/%2e%2e/bar/x HTTP/1.1", HOST.as_bytes(), b""),
            &[400],
            After::Open,
        ),
        row(
            "absolute form with two Hosts",
            raw(b"GET http://api.example.com/foo/x HTTP/1.1", b"Host: api.example.com\r\nHost: evil\r\n", b""),
            &[400],
            After::Open,
        ),
    ]
}

/// CONNECT is refused, and the connection closed: a client may already be sending what it
/// meant for the tunnel, which must never be read as requests.
fn connect_rows() -> Vec<Row> {
    vec![
        row(
            "CONNECT to the API host",
            raw(b"CONNECT api.example.com:443 HTTP/1.1", b"Host: api.example.com:443\r\n", b""),
            &[405],
            After::Closed,
        ),
        row(
            "CONNECT to a loopback port",
            raw(b"CONNECT 127.0.0.1:22 HTTP/1.1", b"Host: 127.0.0.1:22\r\n", b"SSH-2.0-x\r\n"),
            &[405],
            After::Closed,
        ),
        row(
            "CONNECT with an origin-form target",
            raw(b"CONNECT /foo/x HTTP/1.1", HOST.as_bytes(), b""),
            &[405],
            After::Closed,
        ),
        row(
            "CONNECT followed by a request as tunnel data",
            [raw(b"CONNECT api.example.com:443 HTTP/1.1", HOST.as_bytes(), b""), get("/foo/tunnelled")].concat(),
            &[405],
            After::Closed,
        ),
    ]
}

fn post(headers: &str, body: &[u8]) -> Vec<u8> {
    raw(b"POST /foo/x HTTP/1.1", format!("{HOST}{headers}").as_bytes(), body)
}

fn framing_rows() -> Vec<Row> {
    let hello_chunked = chunked(b"hello");
    let mut rows = vec![
        // Content-Length with Transfer-Encoding: framed by Transfer-Encoding, then closed. The
        // client's Content-Length never reaches the upstream: the body is read whole (it is
        // small) and sent with its real length.
        row(
            "Content-Length then Transfer-Encoding",
            post("Content-Length: 3\r\nTransfer-Encoding: chunked\r\n", &hello_chunked),
            &[200],
            After::Closed,
        )
        .seen_body("foo", "POST", "/x", b"hello")
        .header("content-length", Some("5")),
        row(
            "Transfer-Encoding then Content-Length",
            post("Transfer-Encoding: chunked\r\nContent-Length: 3\r\n", &hello_chunked),
            &[200],
            After::Closed,
        )
        .seen_body("foo", "POST", "/x", b"hello")
        .header("content-length", Some("5")),
        // CL.TE: a front end reading Content-Length would pass the tail as this body.
        row(
            "CL.TE smuggling",
            post(
                &format!("Content-Length: {}\r\nTransfer-Encoding: chunked\r\n", 5 + SMUGGLED.len()),
                &[b"0\r\n\r\n", SMUGGLED].concat(),
            ),
            &[200],
            After::Closed,
        )
        .seen_body("foo", "POST", "/x", b""),
        // TE.CL: a back end reading Content-Length would see the chunk's content as a request.
        row(
            "TE.CL smuggling",
            post("Transfer-Encoding: chunked\r\nContent-Length: 4\r\n", &chunked(SMUGGLED)),
            &[200],
            After::Closed,
        )
        .seen_body("foo", "POST", "/x", SMUGGLED),
        row(
            "two equal Content-Length lines",
            post("Content-Length: 5\r\nContent-Length: 5\r\n", b"hello"),
            &[200],
            After::Open,
        )
        .seen_body("foo", "POST", "/x", b"hello")
        .header("content-length", Some("5")),
        row(
            "two different Content-Length lines",
            post("Content-Length: 5\r\nContent-Length: 6\r\n", b"hello!"),
            &[400],
            After::Closed,
        ),
        row("Content-Length over the body limit", post("Content-Length: 1000000000\r\n", b"x"), &[413], After::Either),
        // A length hyper cannot represent (it keeps two values for itself): its 431, and close.
        row("Content-Length 2^64-1", post("Content-Length: 18446744073709551615\r\n", b"x"), &[431], After::Closed),
        row(
            "Transfer-Encoding chunked, identity",
            post("Transfer-Encoding: chunked, identity\r\n", &hello_chunked),
            &[400],
            After::Closed,
        ),
        row(
            "Transfer-Encoding xchunked",
            post("Transfer-Encoding: xchunked\r\n", &hello_chunked),
            &[400],
            After::Closed,
        ),
        row(
            "Transfer-Encoding chunkedx",
            post("Transfer-Encoding: chunkedx\r\n", &hello_chunked),
            &[400],
            After::Closed,
        ),
        row(
            "Transfer-Encoding chunked then identity lines",
            post("Transfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n", &hello_chunked),
            &[400],
            After::Closed,
        ),
        row(
            "Transfer-Encoding: with a space before the colon",
            post("Transfer-Encoding : chunked\r\n", &hello_chunked),
            &[400],
            After::Closed,
        ),
        row(
            "Transfer-Encoding with a vertical tab",
            post("Transfer-Encoding: \x0bchunked\r\n", &hello_chunked),
            &[400],
            After::Closed,
        ),
        row(
            "Transfer-Encoding on HTTP/1.0",
            raw(b"POST /foo/x HTTP/1.0", format!("{HOST}Transfer-Encoding: chunked\r\n").as_bytes(), &hello_chunked),
            &[400],
            After::Closed,
        ),
        row(
            "Transfer-Encoding and Content-Length on HTTP/1.0",
            raw(
                b"POST /foo/x HTTP/1.0",
                format!("{HOST}Content-Length: 5\r\nTransfer-Encoding: chunked\r\n").as_bytes(),
                b"hello",
            ),
            &[400],
            After::Closed,
        ),
        // Codings the proxy does not implement before the final chunked: it would forward their
        // content as if it were plain (RFC 9112 §6.1: 501).
        row(
            "Transfer-Encoding identity, chunked",
            post("Transfer-Encoding: identity, chunked\r\n", &hello_chunked),
            &[501],
            After::Either,
        ),
        row(
            "Transfer-Encoding gzip, chunked",
            post("Transfer-Encoding: gzip, chunked\r\n", &hello_chunked),
            &[501],
            After::Either,
        ),
        row(
            "Transfer-Encoding gzip then chunked lines",
            post("Transfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n", &hello_chunked),
            &[501],
            After::Either,
        ),
        // Chunked applied twice is forbidden (RFC 9112 §6.1): the content would still be framed.
        row(
            "Transfer-Encoding chunked, chunked",
            post("Transfer-Encoding: chunked, chunked\r\n", &hello_chunked),
            &[400],
            After::Either,
        ),
        // Whitespace around the value is optional whitespace; the case of a coding is not significant.
        row(
            "Transfer-Encoding with spaces around the value",
            post("Transfer-Encoding:   chunked   \r\n", &hello_chunked),
            &[200],
            After::Open,
        )
        .seen_body("foo", "POST", "/x", b"hello"),
        row(
            "Transfer-Encoding after a tab",
            post("Transfer-Encoding:\tchunked\r\n", &hello_chunked),
            &[200],
            After::Open,
        )
        .seen_body("foo", "POST", "/x", b"hello"),
        row("Transfer-Encoding CHUNKED", post("Transfer-Encoding: CHUNKED\r\n", &hello_chunked), &[200], After::Open)
            .seen_body("foo", "POST", "/x", b"hello"),
        row(
            "chunk extension",
            post("Transfer-Encoding: chunked\r\n", b"5;ext=\"1\"\r\nhello\r\n0\r\n\r\n"),
            &[200],
            After::Open,
        )
        .seen_body("foo", "POST", "/x", b"hello"),
        row(
            "chunked trailer",
            post("Transfer-Encoding: chunked\r\n", b"5\r\nhello\r\n0\r\nX-Trailer: injected\r\n\r\n"),
            &[200],
            After::Open,
        )
        .seen_body("foo", "POST", "/x", b"hello")
        .header("x-trailer", None),
        // A malformed chunked body is the client's fault: 400, not 502, and close. The body
        // streams, so the upstream request is aborted; here the bad chunk comes with the head,
        // and the upstream connection is dropped before the head was even flushed.
        row(
            "chunk size not hex",
            post("Transfer-Encoding: chunked\r\n", b"zz\r\nhello\r\n0\r\n\r\n"),
            &[400],
            After::Closed,
        ),
        row(
            "chunk size overflowing 64 bits",
            post("Transfer-Encoding: chunked\r\n", b"10000000000000000\r\nhello\r\n0\r\n\r\n"),
            &[400],
            After::Closed,
        ),
        // GET with a Content-Length body: forwarded as such.
        row(
            "GET with a body holding a request",
            raw(b"GET /foo/x HTTP/1.1", format!("{HOST}Content-Length: {}\r\n", SMUGGLED.len()).as_bytes(), SMUGGLED),
            &[200],
            After::Open,
        )
        .seen_body("foo", "GET", "/x", SMUGGLED),
    ];
    for value in ["1, 2", "5, 5", "+5", "-1", "0x5", "5a", "5 5", "", "99999999999999999999999"] {
        rows.push(row(
            format!("Content-Length {value:?}"),
            post(&format!("Content-Length: {value}\r\n"), b"hello"),
            &[400],
            After::Closed,
        ));
    }
    rows
}

fn head_rows() -> Vec<Row> {
    let many_headers: String = (0..60).map(|i| format!("X-Filler-{i:02}: {}\r\n", "v".repeat(60))).collect();
    let too_many_headers: String = (0..101).map(|i| format!("X-{i}: 1\r\n")).collect();
    vec![
        row(
            "obs-fold in a header",
            raw(b"GET /foo/x HTTP/1.1", format!("{HOST}X-Folded: a\r\n b\r\n").as_bytes(), b""),
            &[400],
            After::Closed,
        ),
        row(
            "obs-fold in Host",
            raw(b"GET /foo/x HTTP/1.1", b"Host: evil.example.com\r\n api.example.com\r\n", b""),
            &[400],
            After::Closed,
        ),
        row(
            "whitespace before the first header",
            raw(b"GET /foo/x HTTP/1.1", b" Host: api.example.com\r\n", b""),
            &[400],
            After::Closed,
        ),
        row(
            "head over max_header_bytes",
            raw(b"GET /foo/x HTTP/1.1", format!("{HOST}{many_headers}").as_bytes(), b""),
            &[431],
            After::Closed,
        ),
        row(
            "one header line over max_header_bytes",
            raw(b"GET /foo/x HTTP/1.1", format!("{HOST}X-Big: {}\r\n", "a".repeat(5000)).as_bytes(), b""),
            &[431],
            After::Closed,
        ),
        row("request line over max_header_bytes", get(&format!("/foo/{}", "a".repeat(5000))), &[431], After::Closed),
        row(
            "more than 100 headers",
            raw(b"GET /foo/x HTTP/1.1", format!("{HOST}{too_many_headers}").as_bytes(), b""),
            &[431],
            After::Closed,
        ),
        row(
            "a head that never ends, over the buffer",
            [b"GET /foo/x HTTP/1.1\r\nHost: api.example.com\r\nX-Endless: ".as_slice(), "a".repeat(20_000).as_bytes()]
                .concat(),
            &[431],
            After::Closed,
        ),
        row(
            "header name with a space",
            raw(b"GET /foo/x HTTP/1.1", format!("{HOST}X Bad: 1\r\n").as_bytes(), b""),
            &[400],
            After::Closed,
        ),
        row(
            "header name with a control byte",
            raw(b"GET /foo/x HTTP/1.1", format!("{HOST}X-Bad\x01: 1\r\n").as_bytes(), b""),
            &[400],
            After::Closed,
        ),
        row(
            "header value with a bare CR",
            raw(b"GET /foo/x HTTP/1.1", format!("{HOST}X-Bad: a\rb\r\n").as_bytes(), b""),
            &[400],
            After::Closed,
        ),
        row(
            "header value with a NUL",
            raw(b"GET /foo/x HTTP/1.1", format!("{HOST}X-Bad: a\0b\r\n").as_bytes(), b""),
            &[400],
            After::Closed,
        ),
        row(
            "header line without a colon",
            raw(b"GET /foo/x HTTP/1.1", format!("{HOST}X-Bad\r\n").as_bytes(), b""),
            &[400],
            After::Closed,
        ),
    ]
}

fn byte_rows() -> Vec<Row> {
    vec![
        row("UTF-8 in the path", get("/foo/caf\u{e9}"), &[400], After::Either),
        row("DEL in the path", raw(b"GET /foo/a\x7fb HTTP/1.1", HOST.as_bytes(), b""), &[400], After::Either),
        row("NUL in the path", raw(b"GET /foo/a\0b HTTP/1.1", HOST.as_bytes(), b""), &[400], After::Either),
        row("tab in the path", raw(b"GET /foo/a\tb HTTP/1.1", HOST.as_bytes(), b""), &[400], After::Either),
        row("Latin-1 byte in the path", raw(b"GET /foo/caf\xe9 HTTP/1.1", HOST.as_bytes(), b""), &[400], After::Either),
        row("encoded NUL in the path", get("/foo/a%00b"), &[400], After::Open),
        row("encoded CRLF in the path", get("/foo/x%0d%0aSet-Cookie:%20a=1"), &[400], After::Open),
        row("encoded DEL in the path", get("/foo/a%7fb"), &[400], After::Open),
        row("broken escape in the path", get("/foo/a%zzb"), &[400], After::Open),
        row(
            "control byte in Host",
            raw(b"GET /foo/x HTTP/1.1", b"Host: api.example.com\x01\r\n", b""),
            &[400],
            After::Closed,
        ),
        row("NUL in Host", raw(b"GET /foo/x HTTP/1.1", b"Host: api.example.com\0\r\n", b""), &[400], After::Closed),
        row(
            "UTF-8 in Host",
            raw(b"GET /foo/x HTTP/1.1", "Host: api.ex\u{e4}mple.com\r\n".as_bytes(), b""),
            &[400],
            After::Open,
        ),
        row(
            "Latin-1 byte in Host",
            raw(b"GET /foo/x HTTP/1.1", b"Host: api.ex\xe4mple.com\r\n", b""),
            &[400],
            After::Open,
        ),
        row(
            "space inside Host",
            raw(b"GET /foo/x HTTP/1.1", b"Host: api.example.com evil\r\n", b""),
            &[400],
            After::Open,
        ),
        row(
            "userinfo in Host",
            raw(b"GET /foo/x HTTP/1.1", b"Host: evil.example.com@api.example.com\r\n", b""),
            &[400],
            After::Open,
        ),
        row(
            "path in Host",
            raw(b"GET /foo/x HTTP/1.1", b"Host: api.example.com/../admin\r\n", b""),
            &[400],
            After::Open,
        ),
        row(
            "backslash in Host",
            raw(b"GET /foo/x HTTP/1.1", b"Host: api.example.com\\evil\r\n", b""),
            &[400],
            After::Open,
        ),
        row(
            "percent-encoding in Host",
            raw(b"GET /foo/x HTTP/1.1", b"Host: api%2eexample.com\r\n", b""),
            &[400],
            After::Open,
        ),
        // Optional whitespace after the value is not part of it.
        row(
            "Host followed by a tab",
            raw(b"GET /foo/x HTTP/1.1", b"Host: api.example.com\t\r\n", b""),
            &[200],
            After::Open,
        )
        .seen("foo", "GET", "/x")
        .header("host", Some("api.example.com")),
    ]
}

fn host_rows() -> Vec<Row> {
    vec![
        row("no Host on HTTP/1.1", raw(b"GET /foo/x HTTP/1.1", b"", b""), &[400], After::Open),
        row("no Host on HTTP/1.0", raw(b"GET /foo/x HTTP/1.0", b"", b""), &[400], After::Either),
        row(
            "two equal Hosts",
            raw(b"GET /foo/x HTTP/1.1", b"Host: api.example.com\r\nHost: api.example.com\r\n", b""),
            &[400],
            After::Open,
        ),
        row(
            "two different Hosts",
            raw(b"GET /foo/x HTTP/1.1", b"Host: evil.example.com\r\nHost: api.example.com\r\n", b""),
            &[400],
            After::Open,
        ),
        row("empty Host", raw(b"GET /foo/x HTTP/1.1", b"Host: \r\n", b""), &[400], After::Open),
        row("Host without a space", raw(b"GET /foo/x HTTP/1.1", b"Host:api.example.com\r\n", b""), &[200], After::Open)
            .seen("foo", "GET", "/x"),
        row(
            "Host in odd case with a port",
            raw(b"GET /foo/x HTTP/1.1", b"hOsT: API.Example.Com:30080\r\n", b""),
            &[200],
            After::Open,
        )
        .seen("foo", "GET", "/x")
        .header("host", Some("API.Example.Com:30080")),
        row("unknown Host", raw(b"GET /foo/x HTTP/1.1", b"Host: evil.example.com\r\n", b""), &[404], After::Open),
        // A port is digits: the name before the last `:` must not be what routes.
        row(
            "an edge name in the port of Host",
            raw(b"GET /panel/x HTTP/1.1", b"Host: admin.example.com:api.example.com\r\n", b""),
            &[400],
            After::Open,
        ),
        row(
            "an edge name in the port of Host, the other way round",
            raw(b"GET /foo/x HTTP/1.1", b"Host: internal.example.com:api.example.com\r\n", b""),
            &[400],
            After::Open,
        ),
        row(
            "a named port in Host",
            raw(b"GET /foo/x HTTP/1.1", b"Host: api.example.com:http\r\n", b""),
            &[400],
            After::Open,
        ),
        row(
            "a port over 65535 in Host",
            raw(b"GET /foo/x HTTP/1.1", b"Host: api.example.com:65536\r\n", b""),
            &[400],
            After::Open,
        ),
        row(
            "two trailing dots in Host",
            raw(b"GET /foo/x HTTP/1.1", b"Host: api.example.com..\r\n", b""),
            &[400],
            After::Open,
        ),
        row(
            "an empty label in Host",
            raw(b"GET /foo/x HTTP/1.1", b"Host: api..example.com\r\n", b""),
            &[400],
            After::Open,
        ),
        row(
            "one trailing dot in Host",
            raw(b"GET /foo/x HTTP/1.1", b"Host: api.example.com.\r\n", b""),
            &[200],
            After::Open,
        )
        .seen("foo", "GET", "/x"),
        row(
            "internal edge Host with an API path",
            raw(b"GET /foo/x HTTP/1.1", b"Host: admin.example.com\r\n", b""),
            &[404],
            After::Open,
        ),
    ]
}

fn upgrade_rows() -> Vec<Row> {
    let upgrade = |name: &str, headers: &str| {
        row(name, raw(b"GET /foo/x HTTP/1.1", format!("{HOST}{headers}").as_bytes(), b""), &[200], After::Open)
            .seen("foo", "GET", "/x")
            .header("upgrade", None)
            .header("connection", None)
    };
    vec![
        upgrade(
            "Upgrade: h2c",
            "Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n",
        )
        .header("http2-settings", None),
        upgrade("Upgrade: foo", "Connection: upgrade\r\nUpgrade: foo\r\n"),
        upgrade("Upgrade: websocket, h2c", "Connection: upgrade\r\nUpgrade: websocket, h2c\r\n"),
        upgrade("Upgrade without Connection: upgrade", "Upgrade: websocket\r\n"),
        upgrade("Upgrade: TLS/1.2", "Connection: Upgrade\r\nUpgrade: TLS/1.2\r\n"),
    ]
}

fn pipelining_rows() -> Vec<Row> {
    let post_smuggled = |target: &str| {
        raw(
            format!("POST {target} HTTP/1.1").as_bytes(),
            format!("{HOST}Content-Length: {}\r\n", SMUGGLED.len()).as_bytes(),
            SMUGGLED,
        )
    };
    let post_smuggled_chunked = |target: &str| {
        raw(
            format!("POST {target} HTTP/1.1").as_bytes(),
            format!("{HOST}Transfer-Encoding: chunked\r\n").as_bytes(),
            &chunked(SMUGGLED),
        )
    };
    vec![
        row("two requests in one write", [get("/foo/one"), get("/foo/two")].concat(), &[200, 200], After::Open)
            .seen("foo", "GET", "/one")
            .seen("foo", "GET", "/two"),
        row(
            "five requests in one write, some refused",
            [
                get("/foo/one"),
                get("/foo/../bar/x"),
                raw(b"GET /bar/x HTTP/1.1", b"Host: evil.example.com\r\n", b""),
                get("/nope/x"),
                get("/foo/two"),
            ]
            .concat(),
            &[200, 400, 404, 404, 200],
            After::Open,
        )
        .seen("foo", "GET", "/one")
        .seen("foo", "GET", "/two"),
        row(
            "a request hidden in a body",
            [post_smuggled("/foo/upload"), get("/foo/after")].concat(),
            &[200, 200],
            After::Open,
        )
        .seen_body("foo", "POST", "/upload", SMUGGLED)
        .seen("foo", "GET", "/after"),
        row(
            "a request hidden in a chunked body",
            [post_smuggled_chunked("/foo/upload"), get("/foo/after")].concat(),
            &[200, 200],
            After::Open,
        )
        .seen_body("foo", "POST", "/upload", SMUGGLED)
        .seen("foo", "GET", "/after"),
        // Refused without reading the body: the body must still be skipped, never parsed.
        row(
            "a request hidden in the body of a refused request",
            [post_smuggled("/foo/../bar"), get("/foo/after")].concat(),
            &[400, 200],
            After::Open,
        )
        .seen("foo", "GET", "/after"),
        row(
            "a request hidden in the chunked body of a refused request",
            [post_smuggled_chunked("/nope/x"), get("/foo/after")].concat(),
            &[404, 200],
            After::Open,
        )
        .seen("foo", "GET", "/after"),
        row(
            "a request hidden in the body of a CONNECT",
            [
                raw(
                    b"CONNECT api.example.com:443 HTTP/1.1",
                    format!("{HOST}Content-Length: {}\r\n", SMUGGLED.len()).as_bytes(),
                    SMUGGLED,
                ),
                get("/foo/after"),
            ]
            .concat(),
            &[405],
            After::Closed,
        ),
        row(
            "a malformed request in a pipeline ends it",
            [
                get("/foo/one"),
                raw(b"GET /foo/x HTTP/1.1", format!("{HOST}Bad Header\r\n").as_bytes(), b""),
                get("/foo/three"),
            ]
            .concat(),
            &[200, 400],
            After::Closed,
        )
        .seen("foo", "GET", "/one"),
    ]
}

fn line_rows() -> Vec<Row> {
    vec![
        // RFC 9112 §2.2: a recipient MAY take a bare LF as a line terminator.
        row("bare LF line ends", b"GET /foo/x HTTP/1.1\nHost: api.example.com\n\n".as_slice(), &[200], After::Open)
            .seen("foo", "GET", "/x"),
        row("mixed line ends", b"GET /foo/x HTTP/1.1\r\nHost: api.example.com\n\r\n".as_slice(), &[200], After::Open)
            .seen("foo", "GET", "/x"),
        // ... and must reject a bare CR (or replace it by SP; it may not treat it as a line end).
        row(
            "bare CR after the request line",
            b"GET /foo/x HTTP/1.1\rHost: api.example.com\r\n\r\n".as_slice(),
            &[400],
            After::Closed,
        ),
        row("bare CR line ends", b"GET /foo/x HTTP/1.1\rHost: api.example.com\r\r".as_slice(), &[400], After::Closed),
        // RFC 9112 §2.2: empty lines before a request line SHOULD be ignored.
        row("empty lines before the request", [b"\r\n\r\n".as_slice(), &get("/foo/x")].concat(), &[200], After::Open)
            .seen("foo", "GET", "/x"),
        row("two spaces after the method", raw(b"GET  /foo/x HTTP/1.1", HOST.as_bytes(), b""), &[400], After::Closed),
        row("lower-case version", raw(b"GET /foo/x http/1.1", HOST.as_bytes(), b""), &[400], After::Closed),
        row("control byte in the method", raw(b"G\x01T /foo/x HTTP/1.1", HOST.as_bytes(), b""), &[400], After::Closed),
        row("no request target", raw(b"GET HTTP/1.1", HOST.as_bytes(), b""), &[400], After::Closed),
        row("asterisk form", raw(b"OPTIONS * HTTP/1.1", HOST.as_bytes(), b""), &[400], After::Open),
        row("a fragment is not forwarded", get("/foo/x#/../../bar"), &[200], After::Open).seen("foo", "GET", "/x"),
        row("dots in the query are the upstream's business", get("/foo/x?next=../../bar"), &[200], After::Open).seen(
            "foo",
            "GET",
            "/x?next=../../bar",
        ),
    ]
}

fn version_rows() -> Vec<Row> {
    vec![
        row("HTTP/0.9 request line", b"GET /foo/x\r\n".as_slice(), &[400], After::Closed),
        row(
            "HTTP/0.9 request line and headers",
            b"GET /foo/x\r\nHost: api.example.com\r\n\r\n".as_slice(),
            &[400],
            After::Closed,
        ),
        row("HTTP/1.2", raw(b"GET /foo/x HTTP/1.2", HOST.as_bytes(), b""), &[400], After::Closed),
        row("HTTP/2.0 request line", raw(b"GET /foo/x HTTP/2.0", HOST.as_bytes(), b""), &[400], After::Closed),
        row("HTTP/2 preface", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".as_slice(), &[], After::Closed),
        row(
            "HTTP/2 preface and SETTINGS",
            [b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".as_slice(), b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"].concat(),
            &[],
            After::Closed,
        ),
        row(
            "HTTP/1.0 is served, then closed",
            raw(b"GET /foo/x HTTP/1.0", HOST.as_bytes(), b""),
            &[200],
            After::Closed,
        )
        .seen("foo", "GET", "/x"),
    ]
}

fn method_rows() -> Vec<Row> {
    vec![
        // Methods are case-sensitive: `get` is not GET, and an upstream that upper-cases it would
        // act on a request the edge never saw.
        row("a lower-case method", raw(b"get /foo/x HTTP/1.1", HOST.as_bytes(), b""), &[400], After::Open),
        row(
            "a mixed-case method",
            raw(b"Post /foo/x HTTP/1.1", format!("{HOST}Content-Length: 0\r\n").as_bytes(), b""),
            &[400],
            After::Open,
        ),
        // TRACE would echo the request (cookies, credentials) back: 405, as nginx answers.
        row("TRACE", raw(b"TRACE /foo/x HTTP/1.1", HOST.as_bytes(), b""), &[405], After::Open),
        // Extension methods in upper case are the upstream's business.
        row("an extension method", raw(b"PROPFIND /foo/x HTTP/1.1", HOST.as_bytes(), b""), &[200], After::Open)
            .seen("foo", "PROPFIND", "/x"),
    ]
}

/// The readiness path is answered by the proxy, after the same head checks as any request.
fn readiness_rows() -> Vec<Row> {
    let ready = |line: &[u8], headers: &str, body: &[u8]| raw(line, format!("{HOST}{headers}").as_bytes(), body);
    vec![
        row("readiness", ready(b"GET /_gatehouse/ready HTTP/1.1", "", b""), &[200], After::Open),
        row(
            "readiness with an absolute-form target",
            ready(b"GET http://api.example.com/_gatehouse/ready HTTP/1.1", "", b""),
            &[200],
            After::Open,
        ),
        row(
            "CONNECT to the readiness path",
            ready(b"CONNECT /_gatehouse/ready HTTP/1.1", "", b""),
            &[405],
            After::Closed,
        ),
        row(
            "readiness with Transfer-Encoding identity, chunked",
            ready(b"POST /_gatehouse/ready HTTP/1.1", "Transfer-Encoding: identity, chunked\r\n", &chunked(b"x")),
            &[501],
            After::Closed,
        ),
        row(
            "POST to the readiness path",
            ready(b"POST /_gatehouse/ready HTTP/1.1", "Content-Length: 0\r\n", b""),
            &[405],
            After::Open,
        ),
        row("TRACE to the readiness path", ready(b"TRACE /_gatehouse/ready HTTP/1.1", "", b""), &[405], After::Open),
        row(
            "readiness with two Hosts",
            raw(b"GET /_gatehouse/ready HTTP/1.1", b"Host: a.example.com\r\nHost: b.example.com\r\n", b""),
            &[400],
            After::Open,
        ),
    ]
}

fn all_rows() -> Vec<Row> {
    [
        traversal_rows(),
        service_segment_rows(),
        absolute_form_rows(),
        connect_rows(),
        framing_rows(),
        head_rows(),
        byte_rows(),
        host_rows(),
        upgrade_rows(),
        pipelining_rows(),
        line_rows(),
        version_rows(),
        method_rows(),
        readiness_rows(),
    ]
    .concat()
}

struct World {
    proxy: gatehouse_proxy::ProxyHandle,
    backends: Vec<(&'static str, Backend)>,
}

impl World {
    async fn start() -> Self {
        let mut backends = Vec::new();
        for name in ["foo", "bar", "panel", "canary"] {
            backends.push((name, Backend::start(name).await));
        }
        let addr = |name: &str| backends.iter().find(|(n, _)| *n == name).map(|(_, b)| b.addr).unwrap();
        let yaml = format!(
            "listen: 127.0.0.1:0
admin_listen: 127.0.0.1:0
access_log: false
edges:
  - host: api.example.com
    prefix: service.api
  - host: admin.example.com
    prefix: service.admin
discovery:
  static:
    service.api.foo: [\"{}\"]
    service.api.bar: [\"{}\"]
    service.api.canary: [\"{}\"]
    service.admin.panel: [\"{}\"]
limits: {{ max_header_bytes: 4096, max_body_bytes: 65536 }}
timeouts: {{ header_read: 2s, body_read: 2s, request: 5s }}
",
            addr("foo"),
            addr("bar"),
            addr("canary"),
            addr("panel"),
        );
        Self { proxy: start_proxy(&yaml).await, backends }
    }

    fn take_all(&self) -> Vec<(&'static str, Vec<Recorded>)> {
        self.backends.iter().map(|(name, b)| (*name, b.take_requests())).collect()
    }

    /// A well-formed request to `canary`, on `conn`; a description of what went wrong, if anything.
    async fn canary(conn: &mut RawConn, path: &str) -> Result<(), String> {
        if !conn.send(&get(&format!("/canary{path}"))).await {
            return Err("could not send".into());
        }
        match conn.response(ANSWER_WITHIN).await {
            Ok(r) if r.status == 200 => Ok(()),
            other => Err(format!("{other:?}")),
        }
    }
}

/// Runs one row; every failed expectation is returned as a line, not panicked on, so that one
/// run reports every row that fails.
async fn run(world: &World, row: &Row) -> Vec<String> {
    let mut problems = Vec::new();
    world.take_all();
    let mut conn = RawConn::connect(world.proxy.traffic_addr()).await;
    // The proxy may close before everything is written (a head it refused): not a failure.
    let _ = conn.send(&row.request).await;
    let mut statuses = Vec::new();
    for _ in &row.statuses {
        match conn.response(ANSWER_WITHIN).await {
            Ok(response) => statuses.push(response.status),
            Err(end) => {
                problems.push(format!("after statuses {statuses:?}: {end:?}"));
                break;
            }
        }
    }
    if problems.is_empty() && statuses != row.statuses {
        problems.push(format!("statuses {statuses:?}, expected {:?}", row.statuses));
    }
    let mut same_connection_canary = false;
    if problems.is_empty() {
        match row.after {
            After::Open => {
                same_connection_canary = true;
                if let Err(e) = World::canary(&mut conn, "/same").await {
                    problems.push(format!("connection not usable afterwards: {e}"));
                }
            }
            After::Closed => match conn.closed_within(CLOSE_WITHIN).await {
                Ok(rest) if rest.is_empty() => {}
                Ok(rest) => problems.push(format!("closed after more bytes: {:?}", String::from_utf8_lossy(&rest))),
                Err(rest) => {
                    problems.push(format!("still open after {CLOSE_WITHIN:?}: {:?}", String::from_utf8_lossy(&rest)))
                }
            },
            After::Either => {}
        }
    }
    drop(conn);
    // The proxy still serves a well-formed request on a fresh connection.
    let mut fresh = RawConn::connect(world.proxy.traffic_addr()).await;
    if let Err(e) = World::canary(&mut fresh, "/fresh").await {
        problems.push(format!("a fresh connection is not served afterwards: {e}"));
    }
    drop(fresh);
    // Whatever the hostile connection could still have set off has happened by now.
    tokio::time::sleep(Duration::from_millis(20)).await;

    for (name, received) in world.take_all() {
        let got: Vec<(String, String)> =
            received.iter().map(|r| (r.method.to_string(), r.path_and_query.clone())).collect();
        if name == "canary" {
            let paths: Vec<&str> = got.iter().map(|(_, p)| p.as_str()).collect();
            let expected: &[&str] = if same_connection_canary { &["/same", "/fresh"] } else { &["/fresh"] };
            if row.after != After::Either && paths != expected {
                problems.push(format!("canary received {paths:?}, expected {expected:?}"));
            }
            continue;
        }
        let expected: Vec<&Seen> = row.seen.iter().filter(|s| s.backend == name).collect();
        let expected_pairs: Vec<(String, String)> =
            expected.iter().map(|s| (s.method.to_owned(), s.path.clone())).collect();
        if got != expected_pairs {
            problems.push(format!("{name} received {got:?}, expected {expected_pairs:?}"));
            continue;
        }
        for (seen, recorded) in expected.iter().zip(&received) {
            if let Some(body) = &seen.body
                && recorded.body.as_deref() != Some(body.as_slice())
            {
                problems.push(format!(
                    "{name} {}: body {:?}, expected {:?}",
                    seen.path,
                    recorded.body.as_deref().map(String::from_utf8_lossy),
                    String::from_utf8_lossy(body)
                ));
            }
        }
        if let Some(first) = received.first() {
            for (header, value) in &row.headers {
                let got = first.headers.get(*header).map(|v| v.to_str().unwrap_or("<not text>"));
                if got != *value {
                    problems.push(format!("{name} saw {header}: {got:?}, expected {value:?}"));
                }
            }
        }
    }
    problems
}

#[tokio::test]
async fn every_hostile_request_gets_its_answer_and_reaches_only_its_service() {
    let world = World::start().await;
    let rows = all_rows();
    let started = std::time::Instant::now();
    let mut failures = Vec::new();
    for row in &rows {
        let problems = tokio::time::timeout(Duration::from_secs(30), run(&world, row))
            .await
            .unwrap_or_else(|_| vec!["row took more than 30 s".into()]);
        for problem in problems {
            failures.push(format!("{}: {problem}", row.name));
        }
    }
    assert!(failures.is_empty(), "{} of {} rows failed:\n{}", failures.len(), rows.len(), failures.join("\n"));
    eprintln!("hostile requests: {} rows, 0 failed, in {:.1} s", rows.len(), started.elapsed().as_secs_f64());
}

#[test]
fn the_table_has_a_row_per_hostile_shape() {
    let rows = all_rows();
    let mut names: Vec<&str> = rows.iter().map(|r| r.name.as_str()).collect();
    names.sort_unstable();
    let before = names.len();
    names.dedup();
    assert_eq!(names.len(), before, "row names are unique");
    assert!(rows.len() >= 100, "{} rows", rows.len());
    // The decoys are never expected to be reached, except `panel` by naming its own host.
    for row in &rows {
        for seen in &row.seen {
            assert_ne!(seen.backend, "bar", "{}", row.name);
            assert!(seen.backend != "panel" || row.name.contains("second edge"), "{}", row.name);
        }
    }
}

/// With a default edge every host routes somewhere, so only the syntax check keeps a Host
/// that an upstream could be fooled by (userinfo, a path, escapes) from reaching it.
#[tokio::test]
async fn with_a_default_edge_a_malformed_host_is_still_refused() {
    let foo = Backend::start("foo").await;
    let yaml = gatehouse_tests::backends::config(&[("foo", vec![foo.addr])], "default_edge: api.example.com\n");
    let proxy = start_proxy(&yaml).await;
    for host in ["evil.example.com@api.example.com", "evil.example.com/x", "evil%2eexample.com", "a\\b", "a,b"] {
        let mut conn = RawConn::connect(proxy.traffic_addr()).await;
        assert!(conn.send(format!("GET /foo/x HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes()).await);
        assert_eq!(conn.response(ANSWER_WITHIN).await.map(|r| r.status), Ok(400), "{host}");
    }
    assert_eq!(foo.request_count(), 0);
    // A well-formed host no edge claims still goes to the default edge.
    let mut conn = RawConn::connect(proxy.traffic_addr()).await;
    assert!(conn.send(b"GET /foo/x HTTP/1.1\r\nHost: other.example.com:8080\r\n\r\n").await);
    assert_eq!(conn.response(ANSWER_WITHIN).await.map(|r| r.status), Ok(200));
    assert_eq!(foo.requests()[0].headers["host"], "other.example.com:8080");
}
