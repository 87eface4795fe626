//! The header rules, and the heads the proxy writes: the request it sends upstream and the
//! response it sends the client, each in one pass over the parsed header lines, straight into a
//! reused buffer.
//!
//! The order on a request is what keeps a client from steering the proxy's own headers:
//! hop-by-hop headers (and what `Connection` names, except a header the proxy owns) are never
//! copied, and the proxy's own (`X-Forwarded-*`, `X-Request-Id`, `Via`, the framing) are written
//! by the proxy alone, after the copied ones.

use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::config::{Forwarded, TrustedHeader, Underscores};
use crate::h1::{HeaderSpan, lists_token};

/// What the proxy knows a header name as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Name {
    Host,
    ContentLength,
    TransferEncoding,
    Connection,
    KeepAlive,
    Te,
    Trailer,
    Upgrade,
    /// `Proxy-*`, `Proxy-Connection` included.
    ProxyAny,
    Expect,
    XForwardedFor,
    XForwardedProto,
    XForwardedPort,
    XForwardedHost,
    Forwarded,
    XRealIp,
    XRequestId,
    Via,
    Traceparent,
    Tracestate,
    Date,
    Other,
}

/// Names a header line, in any case.
pub fn classify(name: &[u8]) -> Name {
    let is = |known: &[u8]| name.eq_ignore_ascii_case(known);
    // By length first: most names are none of these, and compare no further.
    match name.len() {
        2 if is(b"te") => Name::Te,
        3 if is(b"via") => Name::Via,
        4 if is(b"host") => Name::Host,
        4 if is(b"date") => Name::Date,
        6 if is(b"expect") => Name::Expect,
        7 if is(b"trailer") => Name::Trailer,
        7 if is(b"upgrade") => Name::Upgrade,
        9 if is(b"x-real-ip") => Name::XRealIp,
        9 if is(b"forwarded") => Name::Forwarded,
        10 if is(b"connection") => Name::Connection,
        10 if is(b"keep-alive") => Name::KeepAlive,
        10 if is(b"tracestate") => Name::Tracestate,
        11 if is(b"traceparent") => Name::Traceparent,
        12 if is(b"x-request-id") => Name::XRequestId,
        14 if is(b"content-length") => Name::ContentLength,
        15 if is(b"x-forwarded-for") => Name::XForwardedFor,
        16 if is(b"x-forwarded-host") => Name::XForwardedHost,
        16 if is(b"x-forwarded-port") => Name::XForwardedPort,
        17 if is(b"transfer-encoding") => Name::TransferEncoding,
        17 if is(b"x-forwarded-proto") => Name::XForwardedProto,
        n if n >= 6 && name[..6].eq_ignore_ascii_case(b"proxy-") => Name::ProxyAny,
        _ => Name::Other,
    }
}

impl Name {
    /// Headers the proxy writes itself, or needs intact to frame and route the message: a
    /// `Connection` token naming one is ignored, and a client's underscore spelling of one
    /// (`X_Forwarded_For`, which CGI-style servers merge with the real one) is always dropped.
    pub fn is_proxy_owned(self) -> bool {
        matches!(
            self,
            Self::Host
                | Self::ContentLength
                | Self::XForwardedFor
                | Self::XForwardedProto
                | Self::XForwardedHost
                | Self::XForwardedPort
                | Self::XRealIp
                | Self::Forwarded
                | Self::XRequestId
                | Self::Via
                | Self::Traceparent
                | Self::Tracestate
        )
    }

    /// Headers that describe one connection and are never forwarded (RFC 9110 §7.6.1).
    fn is_hop_by_hop(self) -> bool {
        matches!(
            self,
            Self::Connection
                | Self::KeepAlive
                | Self::Te
                | Self::Trailer
                | Self::TransferEncoding
                | Self::Upgrade
                | Self::ProxyAny
        )
    }

    /// The forwarding header a trusted hop writes, if this is one.
    fn trusted_as(self) -> Option<TrustedHeader> {
        Some(match self {
            Self::XForwardedFor => TrustedHeader::XForwardedFor,
            Self::XForwardedProto => TrustedHeader::XForwardedProto,
            Self::XForwardedPort => TrustedHeader::XForwardedPort,
            Self::XForwardedHost => TrustedHeader::XForwardedHost,
            Self::Forwarded => TrustedHeader::Forwarded,
            Self::XRealIp => TrustedHeader::XRealIp,
            _ => return None,
        })
    }
}

/// Whether a header name with `_` is dropped from a request.
fn drops_underscored(name: &[u8], rule: Underscores) -> bool {
    if !name.contains(&b'_') {
        return false;
    }
    match rule {
        Underscores::Drop => true,
        Underscores::Keep => {
            let folded: Vec<u8> = name.iter().map(|&b| if b == b'_' { b'-' } else { b }).collect();
            classify(&folded).is_proxy_owned()
        }
    }
}

/// A WebSocket handshake: `Connection: upgrade` and `Upgrade: websocket` (any case).
pub fn is_websocket_upgrade(buf: &[u8], headers: &[HeaderSpan]) -> bool {
    let (mut connection_upgrade, mut upgrade_websocket) = (false, false);
    for h in headers {
        match classify(h.name.get(buf)) {
            Name::Connection => connection_upgrade |= lists_token(h.value.get(buf), b"upgrade"),
            Name::Upgrade => upgrade_websocket = h.value.get(buf).eq_ignore_ascii_case(b"websocket"),
            _ => {}
        }
    }
    connection_upgrade && upgrade_websocket
}

/// Whether `name` is listed by one of the `Connection` lines (and so is hop-by-hop).
fn named_by_connection(buf: &[u8], connection: &[HeaderSpan], name: &[u8]) -> bool {
    connection.iter().any(|c| lists_token(c.value.get(buf), name))
}

/// What the client connection says about itself, rendered once per connection.
#[derive(Debug, Clone)]
pub struct ClientFacts {
    /// The peer IP, for `X-Forwarded-For`.
    pub peer_ip: Vec<u8>,
    /// The port the client connected to, for `X-Forwarded-Port`.
    pub local_port: Vec<u8>,
}

/// A trusted hop's entry in `X-Forwarded-For` is not an address-like token: the request is
/// refused rather than forwarded without the hop's view of the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BadForwardedFor;

/// How the body the proxy sends is framed, in the head it writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutFraming {
    /// No body, and no framing header.
    None,
    /// `Content-Length: n` (also `0` when the client framed an empty body).
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
}

/// What the upstream request head is made of, beyond the client's header lines.
#[derive(Debug)]
pub struct UpstreamHead<'a> {
    pub method: &'a [u8],
    /// The path the upstream sees (the convention's: the service segment removed).
    pub path_and_query: &'a [u8],
    /// The `Host` to send: the client's, or an absolute-form target's authority.
    pub host: &'a [u8],
    pub request_id: &'a [u8],
    pub client: &'a ClientFacts,
    pub forwarded: &'a Forwarded,
    pub underscores: Underscores,
    /// `1.1 <pseudonym>`, when configured.
    pub via: Option<&'a [u8]>,
    pub framing: OutFraming,
    /// A WebSocket handshake passed through: `Connection: upgrade` and `Upgrade` kept.
    pub websocket: bool,
}

/// Writes the request head the upstream gets into `out`: the request line, every client
/// header that may pass, then the proxy's own. Forwarding headers follow
/// `forwarded.trusted_headers`: of a trusted hop's the last value is kept (of
/// `X-Forwarded-For`, the last `trusted_hops` entries, read as bytes, then the peer); an
/// untrusted one is replaced (`-Proto` `http`, `-Port` the client connection's port, `-Host`
/// the `Host`) or removed (`Forwarded`, `X-Real-IP`).
pub fn write_upstream_head(
    out: &mut Vec<u8>,
    buf: &[u8],
    headers: &[HeaderSpan],
    head: &UpstreamHead<'_>,
) -> Result<(), BadForwardedFor> {
    out.clear();
    out.extend_from_slice(head.method);
    out.push(b' ');
    out.extend_from_slice(head.path_and_query);
    out.extend_from_slice(b" HTTP/1.1\r\nhost: ");
    out.extend_from_slice(head.host);
    out.extend_from_slice(b"\r\n");

    let hops = head.forwarded.trusted_hops;
    let trusts = |h: TrustedHeader| hops > 0 && head.forwarded.trusted_headers.contains(&h);
    // The `Connection` lines, for the names they make hop-by-hop; most requests have none.
    let (connection, connection_lines) = connection_lines(buf, headers);
    let connection = &connection[..connection_lines];
    // The trusted hops' forwarding headers seen, by their last line.
    let mut trusted_last: [Option<HeaderSpan>; 6] = [None; 6];
    let mut xff_lines = 0;

    for h in headers {
        let name = h.name.get(buf);
        let class = classify(name);
        match class {
            Name::Upgrade if head.websocket => {
                append_header(out, name, h.value.get(buf));
                continue;
            }
            _ if class.is_hop_by_hop() => continue,
            Name::Host | Name::ContentLength | Name::XRequestId => continue,
            // The body is already here: the upstream is not asked whether it wants it.
            Name::Expect => continue,
            _ => {}
        }
        if let Some(trusted) = class.trusted_as() {
            if trusts(trusted) {
                trusted_last[trusted as usize] = Some(*h);
                if class == Name::XForwardedFor {
                    xff_lines += 1;
                }
            }
            continue;
        }
        if drops_underscored(name, head.underscores) {
            continue;
        }
        if !connection.is_empty() && !class.is_proxy_owned() && named_by_connection(buf, connection, name) {
            continue;
        }
        append_header(out, name, h.value.get(buf));
    }

    out.extend_from_slice(b"x-request-id: ");
    out.extend_from_slice(head.request_id);
    out.extend_from_slice(b"\r\nx-forwarded-for: ");
    if xff_lines > 0 {
        write_trusted_forwarded_for(out, buf, headers, hops)?;
    }
    out.extend_from_slice(&head.client.peer_ip);
    out.extend_from_slice(b"\r\n");
    for (trusted, name) in [
        (TrustedHeader::XForwardedProto, &b"x-forwarded-proto"[..]),
        (TrustedHeader::XForwardedPort, b"x-forwarded-port"),
        (TrustedHeader::XForwardedHost, b"x-forwarded-host"),
        (TrustedHeader::Forwarded, b"forwarded"),
        (TrustedHeader::XRealIp, b"x-real-ip"),
    ] {
        let own: Option<&[u8]> = match trusted {
            TrustedHeader::XForwardedProto => Some(b"http"),
            TrustedHeader::XForwardedPort => Some(&head.client.local_port),
            TrustedHeader::XForwardedHost => Some(head.host),
            _ => None,
        };
        match (trusted_last[trusted as usize], own) {
            (Some(last), _) => append_header(out, name, last.value.get(buf)),
            (None, Some(own)) => append_header(out, name, own),
            (None, None) => {}
        }
    }
    if let Some(via) = head.via {
        append_header(out, b"via", via);
    }
    if head.websocket {
        out.extend_from_slice(b"connection: upgrade\r\n");
    }
    write_framing(out, head.framing);
    out.extend_from_slice(b"\r\n");
    Ok(())
}

/// The last `hops` entries of every `X-Forwarded-For` line and `, `: entries are read as bytes,
/// so that a client's broken entry before them is dropped without taking theirs with it.
fn write_trusted_forwarded_for(
    out: &mut Vec<u8>,
    buf: &[u8],
    headers: &[HeaderSpan],
    hops: usize,
) -> Result<(), BadForwardedFor> {
    let lines = headers.iter().filter(|h| classify(h.name.get(buf)) == Name::XForwardedFor);
    let entries = || {
        lines
            .clone()
            .flat_map(|h| h.value.get(buf).split(|&b| b == b','))
            .map(<[u8]>::trim_ascii)
            .filter(|e| !e.is_empty())
    };
    let skip = entries().count().saturating_sub(hops);
    for entry in entries().skip(skip) {
        // An address (IPv4, IPv6, maybe bracketed with a port) or an obfuscated identifier:
        // visible ASCII without separators that could start a second entry or value.
        if !entry.iter().all(|&b| b.is_ascii_graphic() && b != b',' && b != b'"') {
            return Err(BadForwardedFor);
        }
        out.extend_from_slice(entry);
        out.extend_from_slice(b", ");
    }
    Ok(())
}

fn append_header(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

fn write_framing(out: &mut Vec<u8>, framing: OutFraming) {
    match framing {
        OutFraming::None => {}
        OutFraming::Length(n) => {
            out.extend_from_slice(b"content-length: ");
            write_decimal(out, n);
            out.extend_from_slice(b"\r\n");
        }
        OutFraming::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
    }
}

/// Appends `n` in decimal.
pub fn write_decimal(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[at..]);
}

/// What the client response head is made of, beyond the upstream's header lines.
#[derive(Debug, Clone, Copy)]
pub struct ClientHead<'a> {
    /// `HTTP/1.1`, or `HTTP/1.0` for an HTTP/1.0 client.
    pub version: &'a [u8],
    pub status: u16,
    pub request_id: &'a [u8],
    pub via: Option<&'a [u8]>,
    pub framing: OutFraming,
    /// The client connection closes after this response: `Connection: close`.
    pub close: bool,
    /// An HTTP/1.0 client asked to keep the connection: `Connection: keep-alive`.
    pub keep_alive_header: bool,
    /// A 101 to a WebSocket handshake: `Connection: upgrade` and `Upgrade` kept.
    pub upgrade: bool,
}

/// The first four `Connection` lines of a head (no message needs more), and how many there are.
fn connection_lines(buf: &[u8], headers: &[HeaderSpan]) -> ([HeaderSpan; 4], usize) {
    let mut lines: [HeaderSpan; 4] = Default::default();
    let mut count = 0;
    for h in headers {
        if classify(h.name.get(buf)) == Name::Connection && count < lines.len() {
            lines[count] = *h;
            count += 1;
        }
    }
    (lines, count)
}

/// Writes the response head the client gets: the status line (with the status's canonical
/// reason), every upstream header that may pass (hop-by-hop, what `Connection` names, and the
/// upstream's framing never do), then the proxy's own: framing, `X-Request-Id`, `Via`, a `Date`
/// if the upstream sent none, and the connection's fate.
pub fn write_client_head(out: &mut Vec<u8>, buf: &[u8], headers: &[HeaderSpan], head: &ClientHead<'_>) {
    out.clear();
    write_status_line(out, head.version, head.status);
    let (connection, connection_lines) = connection_lines(buf, headers);
    let connection = &connection[..connection_lines];
    let mut dated = false;
    for h in headers {
        let name = h.name.get(buf);
        let class = classify(name);
        match class {
            Name::Upgrade if head.upgrade => {
                append_header(out, name, h.value.get(buf));
                continue;
            }
            _ if class.is_hop_by_hop() => continue,
            Name::ContentLength | Name::XRequestId => continue,
            Name::Date => dated = true,
            _ => {}
        }
        if !connection.is_empty() && !class.is_proxy_owned() && named_by_connection(buf, connection, name) {
            continue;
        }
        append_header(out, name, h.value.get(buf));
    }
    write_own_response_headers(out, head, dated);
}

/// The proxy's own response headers and the blank line.
fn write_own_response_headers(out: &mut Vec<u8>, head: &ClientHead<'_>, dated: bool) {
    write_framing(out, head.framing);
    out.extend_from_slice(b"x-request-id: ");
    out.extend_from_slice(head.request_id);
    out.extend_from_slice(b"\r\n");
    if let Some(via) = head.via {
        append_header(out, b"via", via);
    }
    if !dated {
        out.extend_from_slice(b"date: ");
        crate::h1::date::append(out);
        out.extend_from_slice(b"\r\n");
    }
    if head.upgrade {
        out.extend_from_slice(b"connection: upgrade\r\n");
    } else if head.close {
        out.extend_from_slice(b"connection: close\r\n");
    } else if head.keep_alive_header {
        out.extend_from_slice(b"connection: keep-alive\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// Writes a response the proxy answers itself: status, `content-type`, extra headers, body.
pub fn write_local_answer(
    out: &mut Vec<u8>,
    head: &ClientHead<'_>,
    content_type: &[u8],
    extra: Option<(&[u8], &[u8])>,
    body: &[u8],
    with_body: bool,
) {
    out.clear();
    write_status_line(out, head.version, head.status);
    append_header(out, b"content-type", content_type);
    if let Some((name, value)) = extra {
        append_header(out, name, value);
    }
    write_own_response_headers(out, &ClientHead { framing: OutFraming::Length(body.len() as u64), ..*head }, false);
    if with_body {
        out.extend_from_slice(body);
    }
}

fn write_status_line(out: &mut Vec<u8>, version: &[u8], status: u16) {
    out.extend_from_slice(version);
    out.push(b' ');
    let digits = [b'0' + (status / 100 % 10) as u8, b'0' + (status / 10 % 10) as u8, b'0' + (status % 10) as u8];
    out.extend_from_slice(&digits);
    out.push(b' ');
    let reason = http::StatusCode::from_u16(status).ok().and_then(|s| s.canonical_reason()).unwrap_or("");
    out.extend_from_slice(reason.as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// A request id: the client's, when it is a sane token, else a new one.
#[derive(Debug, Clone, Copy)]
pub struct RequestId {
    bytes: [u8; 128],
    len: u8,
}

impl RequestId {
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }

    pub fn as_str(&self) -> &str {
        std::str::from_utf8(self.as_bytes()).unwrap_or("")
    }
}

/// Makes request ids.
#[derive(Debug)]
pub struct RequestIds {
    seed: u64,
    counter: AtomicU64,
}

impl RequestIds {
    pub fn new() -> Self {
        // A per-process random seed (std's hasher keys are random) keeps ids from two proxy
        // processes apart; the counter keeps them unique within one.
        let seed = std::collections::hash_map::RandomState::new().build_hasher().finish();
        Self { seed, counter: AtomicU64::new(0) }
    }

    /// The request's one id: the client's first `X-Request-Id`, when it is a sane token, else
    /// a fresh one. Only this one is forwarded, so that the upstream, the client and the access
    /// log see the same one.
    pub fn for_request(&self, buf: &[u8], headers: &[HeaderSpan]) -> RequestId {
        let first = headers.iter().find(|h| classify(h.name.get(buf)) == Name::XRequestId).map(|h| h.value.get(buf));
        if let Some(id) = first
            && !id.is_empty()
            && id.len() <= 128
            && id.iter().all(u8::is_ascii_graphic)
        {
            let mut bytes = [0u8; 128];
            bytes[..id.len()].copy_from_slice(id);
            return RequestId { bytes, len: id.len() as u8 };
        }
        self.fresh()
    }

    /// A new id: 32 hex digits, the process seed then a counter.
    pub fn fresh(&self) -> RequestId {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let mut bytes = [0u8; 128];
        hex(self.seed, &mut bytes[..16]);
        hex(n, &mut bytes[16..32]);
        RequestId { bytes, len: 32 }
    }
}

impl Default for RequestIds {
    fn default() -> Self {
        Self::new()
    }
}

fn hex(mut v: u64, out: &mut [u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for slot in out.iter_mut().rev() {
        *slot = DIGITS[(v & 0xf) as usize];
        v >>= 4;
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;
    use crate::h1::request::{RequestHead, parse};

    fn client() -> ClientFacts {
        ClientFacts { peer_ip: b"10.0.0.9".to_vec(), local_port: b"30080".to_vec() }
    }

    fn rules(trusted_hops: usize) -> Forwarded {
        Forwarded { trusted_hops, ..Forwarded::default() }
    }

    /// The upstream head for a request with these header lines, as (name, value) pairs.
    fn upstream(
        lines: &str,
        forwarded: &Forwarded,
        underscores: Underscores,
    ) -> Result<Vec<(String, String)>, BadForwardedFor> {
        let buf = format!("GET /foo/x HTTP/1.1\r\n{lines}\r\n").into_bytes();
        upstream_bytes(&buf, forwarded, underscores)
    }

    fn upstream_bytes(
        buf: &[u8],
        forwarded: &Forwarded,
        underscores: Underscores,
    ) -> Result<Vec<(String, String)>, BadForwardedFor> {
        let mut head = RequestHead::default();
        assert_eq!(parse(buf, 16 * 1024, &mut head), Ok(true));
        let websocket = is_websocket_upgrade(buf, &head.headers);
        let client = client();
        let up = UpstreamHead {
            method: b"GET",
            path_and_query: b"/x",
            host: b"api.example.com",
            request_id: b"id-1",
            client: &client,
            forwarded,
            underscores,
            via: Some(b"1.1 node-a"),
            framing: OutFraming::None,
            websocket,
        };
        let mut out = Vec::new();
        write_upstream_head(&mut out, buf, &head.headers, &up)?;
        let mut written = RequestHead::default();
        assert_eq!(parse(&out, 64 * 1024, &mut written), Ok(true), "{}", String::from_utf8_lossy(&out));
        assert_eq!(written.len, out.len());
        Ok(written
            .headers
            .iter()
            .map(|h| {
                (
                    String::from_utf8_lossy(h.name.get(&out)).into_owned(),
                    String::from_utf8_lossy(h.value.get(&out)).into_owned(),
                )
            })
            .collect())
    }

    fn value<'a>(headers: &'a [(String, String)], name: &str) -> Vec<&'a str> {
        headers.iter().filter(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str()).collect()
    }

    #[test]
    fn hop_by_hop_headers_and_the_ones_connection_names_are_not_forwarded() {
        let lines = "Host: api.example.com\r\nConnection: keep-alive, x-secret\r\nX-Secret: 1\r\nKeep-Alive: timeout=5\r\nTE: trailers\r\nUpgrade: h2c\r\nProxy-Authorization: Basic x\r\nX-Kept: yes\r\n";
        let got = upstream(lines, &rules(0), Underscores::Drop).unwrap();
        for gone in ["connection", "x-secret", "keep-alive", "te", "upgrade", "proxy-authorization"] {
            assert!(value(&got, gone).is_empty(), "{gone} forwarded: {got:?}");
        }
        assert_eq!(value(&got, "x-kept"), ["yes"]);
    }

    #[test]
    fn a_connection_token_cannot_remove_a_header_the_proxy_owns() {
        let lines = "Host: api.example.com\r\nConnection: Host, X-Request-Id, X-Forwarded-For, X-Forwarded-Host, Via, Traceparent\r\nTraceparent: 00-abc-def-01\r\n";
        let got = upstream(lines, &rules(0), Underscores::Drop).unwrap();
        assert_eq!(value(&got, "host"), ["api.example.com"]);
        assert_eq!(value(&got, "x-request-id"), ["id-1"]);
        assert_eq!(value(&got, "x-forwarded-for"), ["10.0.0.9"]);
        assert_eq!(value(&got, "x-forwarded-host"), ["api.example.com"]);
        assert_eq!(value(&got, "via"), ["1.1 node-a"]);
        assert_eq!(value(&got, "traceparent"), ["00-abc-def-01"]);
    }

    #[test]
    fn underscore_names_are_dropped_or_kept_unless_they_spell_a_proxy_header() {
        let lines = "X_Forwarded_For: 6.6.6.6\r\nX_Request_Id: forged\r\nX_Forwarded_Host: evil\r\nX_Custom_Thing: 1\r\nX-Normal: 1\r\n";
        let got = upstream(lines, &rules(0), Underscores::Drop).unwrap();
        assert!(got.iter().all(|(n, _)| !n.contains('_')), "{got:?}");
        let got = upstream(lines, &rules(0), Underscores::Keep).unwrap();
        let underscored: Vec<&str> = got.iter().map(|(n, _)| n.as_str()).filter(|n| n.contains('_')).collect();
        assert_eq!(underscored, ["X_Custom_Thing"]);
    }

    #[test]
    fn websocket_upgrade_keeps_upgrade_headers() {
        let got = upstream("Connection: Upgrade\r\nUpgrade: websocket\r\n", &rules(0), Underscores::Drop).unwrap();
        assert_eq!(value(&got, "upgrade"), ["websocket"]);
        assert_eq!(value(&got, "connection"), ["upgrade"]);
    }

    #[test]
    fn forwarded_for_keeps_only_trusted_hops() {
        let lines = "X-Forwarded-For: 1.1.1.1, 2.2.2.2\r\nX-Forwarded-For: 3.3.3.3\r\nX-Forwarded-Proto: https\r\n";
        let got = upstream(lines, &rules(1), Underscores::Drop).unwrap();
        assert_eq!(value(&got, "x-forwarded-for"), ["3.3.3.3, 10.0.0.9"]);
        assert_eq!(value(&got, "x-forwarded-proto"), ["https"]);
        let got = upstream(lines, &rules(0), Underscores::Drop).unwrap();
        assert_eq!(value(&got, "x-forwarded-for"), ["10.0.0.9"]);
        assert_eq!(value(&got, "x-forwarded-proto"), ["http"]);
        assert_eq!(value(&got, "x-forwarded-port"), ["30080"]);
    }

    #[test]
    fn a_client_byte_that_is_not_utf8_cannot_erase_the_trusted_hops_entry() {
        let buf = b"GET /foo/x HTTP/1.1\r\nX-Forwarded-For: 6.6.\xff.6, 203.0.113.7\r\n\r\n";
        let got = upstream_bytes(buf, &rules(1), Underscores::Drop).unwrap();
        assert_eq!(value(&got, "x-forwarded-for"), ["203.0.113.7, 10.0.0.9"]);
        let buf = b"GET /foo/x HTTP/1.1\r\nX-Forwarded-For: 6.6.6.6, 203.0.\xff.7\r\n\r\n";
        assert_eq!(upstream_bytes(buf, &rules(1), Underscores::Drop), Err(BadForwardedFor));
    }

    #[test]
    fn each_forwarding_header_is_trusted_only_when_the_hop_writes_it() {
        let lines = "X-Forwarded-Proto: https\r\nX-Forwarded-Port: 443\r\nX-Forwarded-Host: evil.example.com\r\nForwarded: for=6.6.6.6\r\nX-Real-IP: 6.6.6.6\r\n";
        let got = upstream(lines, &rules(1), Underscores::Drop).unwrap();
        assert_eq!(value(&got, "x-forwarded-proto"), ["https"]);
        assert_eq!(value(&got, "x-forwarded-port"), ["443"]);
        assert_eq!(value(&got, "x-forwarded-host"), ["api.example.com"]);
        assert!(value(&got, "forwarded").is_empty() && value(&got, "x-real-ip").is_empty());
        let mut r = rules(1);
        r.trusted_headers.push(TrustedHeader::XForwardedHost);
        let got = upstream("X-Forwarded-Host: a\r\nX-Forwarded-Host: b\r\n", &r, Underscores::Drop).unwrap();
        assert_eq!(value(&got, "x-forwarded-host"), ["b"]);
    }

    #[test]
    fn request_id_is_kept_or_generated() {
        let ids = RequestIds::new();
        let buf = b"GET / HTTP/1.1\r\nX-Request-Id: first\r\nX-Request-Id: second\r\n\r\n";
        let mut head = RequestHead::default();
        parse(buf, 1024, &mut head).unwrap();
        assert_eq!(ids.for_request(buf, &head.headers).as_str(), "first");
        let buf = b"GET / HTTP/1.1\r\nX-Request-Id: has space\r\n\r\n";
        parse(buf, 1024, &mut head).unwrap();
        let fresh = ids.for_request(buf, &head.headers);
        assert_eq!(fresh.as_bytes().len(), 32);
        assert_ne!(ids.fresh().as_str(), fresh.as_str());
    }

    #[test]
    fn response_heads_drop_hop_by_hop_and_the_upstreams_framing() {
        let buf = b"HTTP/1.1 200 OK\r\nConnection: keep-alive, x-internal\r\nX-Internal: 1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\nX-Request-Id: theirs\r\nDate: Mon, 01 Jan 2001 00:00:00 GMT\r\nX-App: 1\r\n\r\n";
        let mut resp = crate::h1::response::ResponseHead::default();
        assert_eq!(crate::h1::response::parse(buf, crate::h1::response::RequestKind::Other, &mut resp), Ok(true));
        let head = ClientHead {
            version: b"HTTP/1.1",
            status: 200,
            request_id: b"ours",
            via: None,
            framing: OutFraming::Chunked,
            close: false,
            keep_alive_header: false,
            upgrade: false,
        };
        let mut out = Vec::new();
        write_client_head(&mut out, buf, &resp.headers, &head);
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
        for gone in ["Connection", "X-Internal", "Content-Length", "theirs"] {
            assert!(!text.contains(gone), "{gone} in {text}");
        }
        assert!(text.contains("transfer-encoding: chunked\r\n") && text.contains("x-request-id: ours\r\n"), "{text}");
        assert_eq!(text.matches("ate: ").count(), 1, "one Date: {text}");
        assert!(text.ends_with("\r\n\r\n"));
    }
}
