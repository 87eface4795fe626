//! Request and response header rewriting: hop-by-hop removal, `X-Forwarded-*`, request ids.
//!
//! The order on a request is fixed, and it is what keeps a client from steering the proxy's
//! own headers: first [`remove_hop_by_hop`] (what the client's `Connection` names is gone, but a
//! `Connection` token can never name a header the proxy owns), then the proxy writes its own
//! ([`RequestIds::ensure`], [`set_forwarded`], `Via`), so nothing removed later can take them away.

use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

use crate::config::{Forwarded, TrustedHeader, Underscores};

pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static X_FORWARDED_PORT: HeaderName = HeaderName::from_static("x-forwarded-port");
static X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");
static FORWARDED: HeaderName = HeaderName::from_static("forwarded");
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");

/// Headers the proxy writes itself, or needs intact to frame and route the message. A
/// `Connection` token naming one is ignored (`Connection: Host` must not leave the upstream
/// without a `Host`, nor `Connection: X-Request-Id` without the id the access log records), and
/// a client's underscore spelling of one (`X_Forwarded_For`, which CGI-style servers merge with
/// the real one) is always dropped.
const PROXY_OWNED: [&str; 12] = [
    "host",
    "content-length",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "x-forwarded-port",
    "x-real-ip",
    "forwarded",
    "x-request-id",
    "via",
    "traceparent",
    "tracestate",
];

fn is_proxy_owned(name: &[u8]) -> bool {
    PROXY_OWNED.iter().any(|owned| owned.as_bytes().eq_ignore_ascii_case(name))
}

/// What a header name with `_` would read as after CGI's `-`/`_` folding: one the proxy owns?
fn underscore_spelling_of_proxy_owned(name: &str) -> bool {
    PROXY_OWNED.iter().any(|owned| {
        owned.len() == name.len() && owned.bytes().zip(name.bytes()).all(|(o, n)| o == n || (o == b'-' && n == b'_'))
    })
}

/// Removes what describes one connection and must not be forwarded (RFC 9110 §7.6.1): the
/// fixed hop-by-hop names, every `Proxy-*` header, and whatever `Connection` names, except a
/// header the proxy owns. `Upgrade` and `Connection: upgrade` survive when `keep_upgrade` (a
/// WebSocket handshake being passed through). `underscores`, for a request, says what becomes
/// of header names with `_` (see [`Underscores`]); responses pass `None`.
pub fn remove_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool, underscores: Option<Underscores>) {
    // One pass over the names (standard names compare without hashing); most messages have
    // none of these, and the rest (a backend's `Connection: keep-alive`) only a few: only the
    // names present are removed, each removal being a hashed lookup.
    let mut present: Vec<HeaderName> = Vec::new();
    for name in headers.keys() {
        let remove = (is_hop_by_hop_name(name) && !(keep_upgrade && name == header::UPGRADE))
            || underscores.is_some_and(|rule| drops_underscored(name.as_str(), rule));
        if remove {
            present.push(name.clone());
        }
    }
    if present.is_empty() && !keep_upgrade {
        return;
    }
    if present.contains(&header::CONNECTION) {
        // Whatever `Connection` names is hop-by-hop too (`keep-alive` and `upgrade` are among
        // the fixed names); the lookup does not allocate, only a name present is made.
        let mut named: Vec<HeaderName> = Vec::new();
        for value in headers.get_all(header::CONNECTION) {
            for token in value.as_bytes().split(|&b| b == b',').map(<[u8]>::trim_ascii) {
                if token.eq_ignore_ascii_case(b"keep-alive")
                    || token.eq_ignore_ascii_case(b"upgrade")
                    || is_proxy_owned(token)
                {
                    continue;
                }
                if let Ok(name) = HeaderName::from_bytes(token)
                    && headers.contains_key(&name)
                {
                    named.push(name);
                }
            }
        }
        for name in named {
            headers.remove(&name);
        }
    }
    for name in &present {
        headers.remove(name);
    }
    if keep_upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
}

fn drops_underscored(name: &str, rule: Underscores) -> bool {
    if !name.as_bytes().contains(&b'_') {
        return false;
    }
    match rule {
        Underscores::Drop => true,
        Underscores::Keep => underscore_spelling_of_proxy_owned(name),
    }
}

fn is_hop_by_hop_name(name: &HeaderName) -> bool {
    name == header::CONNECTION
        || name == header::TE
        || name == header::TRAILER
        || name == header::TRANSFER_ENCODING
        || name == header::UPGRADE
        || name == KEEP_ALIVE
        // Includes `Proxy-Connection`.
        || name.as_str().starts_with("proxy-")
}

/// Appends this proxy to `Via` (`1.1 <pseudonym>`), after whatever earlier hops wrote.
pub fn append_via(headers: &mut HeaderMap, via: &HeaderValue) {
    headers.append(header::VIA, via.clone());
}

/// A WebSocket handshake: `Connection: upgrade` and `Upgrade: websocket` (any case).
pub fn is_websocket_upgrade(headers: &HeaderMap) -> bool {
    let connection_upgrade = headers
        .get_all(header::CONNECTION)
        .iter()
        .any(|v| v.as_bytes().split(|&b| b == b',').any(|t| t.trim_ascii().eq_ignore_ascii_case(b"upgrade")));
    connection_upgrade && headers.get(header::UPGRADE).is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"))
}

/// What the client connection says about itself, rendered once per connection.
#[derive(Debug, Clone)]
pub struct ClientFacts {
    /// The peer IP, for `X-Forwarded-For` and `X-Real-IP`.
    pub peer_ip: HeaderValue,
    /// The port the client connected to, for `X-Forwarded-Port`.
    pub local_port: HeaderValue,
}

/// A trusted hop's entry in `X-Forwarded-For` is not an address-like token: the request is
/// refused rather than forwarded without the hop's view of the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BadForwardedFor;

/// Sets `X-Forwarded-For/-Proto/-Host/-Port`, and removes `Forwarded` and `X-Real-IP`, trusting
/// of each header only what the hop in front is configured to write (`forwarded.trusted_headers`,
/// by default what an ALB writes: `X-Forwarded-For`, `-Proto` and `-Port`):
///
/// - `X-Forwarded-For`, trusted: its last `trusted_hops` entries are kept (earlier ones could
///   have been written by the client) and the peer is appended; otherwise it is the peer alone.
///   Entries are read as bytes: a client's non-UTF-8 entry before them cannot erase them, and a
///   kept entry that is not an address-like token refuses the request ([`BadForwardedFor`]).
/// - `-Proto`, `-Port`, `-Host`, `Forwarded`, `X-Real-IP`, trusted: the hop's (last) value is
///   kept; otherwise `-Proto` is `http`, `-Port` the port the client connected to, `-Host` the
///   request's `Host`, and `Forwarded` and `X-Real-IP` are removed.
pub fn set_forwarded(headers: &mut HeaderMap, client: &ClientFacts, rules: &Forwarded) -> Result<(), BadForwardedFor> {
    let hops = rules.trusted_hops;
    let trusts = |h: TrustedHeader| hops > 0 && rules.trusted_headers.contains(&h);
    // One pass over the names says which forwarding headers came: most requests bring none,
    // or only the ALB's.
    let mut seen = [false; FORWARDING.len()];
    for name in headers.keys() {
        if let Some(i) = FORWARDING.iter().position(|(n, _)| *n == name) {
            seen[i] = true;
        }
    }

    let xff = if trusts(TrustedHeader::XForwardedFor) && seen[0] {
        forwarded_for_with_trusted_hops(headers, hops, &client.peer_ip)?
    } else {
        client.peer_ip.clone()
    };
    headers.insert(&X_FORWARDED_FOR, xff);
    for (&(name, header), &present) in FORWARDING.iter().zip(&seen).skip(1) {
        if trusts(header) && present {
            let mut values = headers.get_all(name).iter();
            if values.nth(1).is_some() {
                // Several: the hop's own is the last one.
                if let Some(last) = headers.get_all(name).iter().next_back().cloned() {
                    headers.insert(name, last);
                }
            }
            continue;
        }
        let own = match header {
            TrustedHeader::XForwardedProto => Some(HeaderValue::from_static("http")),
            TrustedHeader::XForwardedPort => Some(client.local_port.clone()),
            TrustedHeader::XForwardedHost => headers.get(header::HOST).cloned(),
            _ => None,
        };
        match own {
            Some(value) => {
                headers.insert(name, value);
            }
            None if present => {
                headers.remove(name);
            }
            None => {}
        }
    }
    Ok(())
}

/// The forwarding headers, each with the name a trusted hop's is configured by;
/// `X-Forwarded-For` first.
static FORWARDING: [(&HeaderName, TrustedHeader); 6] = [
    (&X_FORWARDED_FOR, TrustedHeader::XForwardedFor),
    (&X_FORWARDED_PROTO, TrustedHeader::XForwardedProto),
    (&X_FORWARDED_PORT, TrustedHeader::XForwardedPort),
    (&X_FORWARDED_HOST, TrustedHeader::XForwardedHost),
    (&FORWARDED, TrustedHeader::Forwarded),
    (&X_REAL_IP, TrustedHeader::XRealIp),
];

/// The last `hops` entries of every `X-Forwarded-For` line, then `peer`.
fn forwarded_for_with_trusted_hops(
    headers: &HeaderMap,
    hops: usize,
    peer: &HeaderValue,
) -> Result<HeaderValue, BadForwardedFor> {
    let mut entries: Vec<&[u8]> = Vec::new();
    for value in headers.get_all(&X_FORWARDED_FOR) {
        entries.extend(value.as_bytes().split(|&b| b == b',').map(<[u8]>::trim_ascii).filter(|s| !s.is_empty()));
    }
    let kept = &entries[entries.len().saturating_sub(hops)..];
    let mut joined = Vec::with_capacity(64);
    for entry in kept {
        // An address (IPv4, IPv6, maybe bracketed with a port) or an obfuscated identifier:
        // visible ASCII without separators that could start a second entry or value.
        if !entry.iter().all(|&b| b.is_ascii_graphic() && b != b',' && b != b'"') {
            return Err(BadForwardedFor);
        }
        joined.extend_from_slice(entry);
        joined.extend_from_slice(b", ");
    }
    joined.extend_from_slice(peer.as_bytes());
    HeaderValue::from_bytes(&joined).map_err(|_| BadForwardedFor)
}

/// Request ids: the client's, when it is a sane token, else a new one.
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

    /// The request's one id: the client's first, when it is a sane token, else a fresh one.
    /// Exactly one `X-Request-Id` is left in `headers`, so the upstream, the client and the
    /// access log all see the same one.
    pub fn ensure(&self, headers: &mut HeaderMap) -> HeaderValue {
        let mut values = headers.get_all(&X_REQUEST_ID).iter();
        let first = values.next().filter(|id| is_sane_id(id)).cloned();
        let several = values.next().is_some();
        if let Some(id) = first {
            if several {
                headers.insert(&X_REQUEST_ID, id.clone());
            }
            return id;
        }
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let mut buf = [0u8; 32];
        hex(self.seed, &mut buf[..16]);
        hex(n, &mut buf[16..]);
        let id = HeaderValue::from_bytes(&buf).expect("hex digits are a valid header value");
        headers.insert(&X_REQUEST_ID, id.clone());
        id
    }
}

fn is_sane_id(id: &HeaderValue) -> bool {
    !id.is_empty() && id.len() <= 128 && id.as_bytes().iter().all(u8::is_ascii_graphic)
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

    fn map(pairs: &[(&str, &[u8])]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.append(HeaderName::from_bytes(k.as_bytes()).unwrap(), HeaderValue::from_bytes(v).unwrap());
        }
        m
    }

    fn names(h: &HeaderMap) -> Vec<&str> {
        let mut names: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
        names.sort_unstable();
        names
    }

    fn client() -> ClientFacts {
        ClientFacts { peer_ip: HeaderValue::from_static("10.0.0.9"), local_port: HeaderValue::from_static("30080") }
    }

    fn rules(trusted_hops: usize) -> Forwarded {
        Forwarded { trusted_hops, ..Forwarded::default() }
    }

    #[test]
    fn hop_by_hop_headers_and_the_ones_connection_names_are_removed() {
        let mut h = map(&[
            ("connection", b"keep-alive, x-secret"),
            ("x-secret", b"1"),
            ("keep-alive", b"timeout=5"),
            ("te", b"trailers"),
            ("upgrade", b"h2c"),
            ("proxy-authorization", b"Basic x"),
            ("x-kept", b"yes"),
        ]);
        remove_hop_by_hop(&mut h, false, Some(Underscores::Drop));
        assert_eq!(names(&h), ["x-kept"]);
    }

    #[test]
    fn a_connection_token_cannot_remove_a_header_the_proxy_owns() {
        let owned: Vec<(&str, &[u8])> = PROXY_OWNED.iter().map(|n| (*n, b"v".as_slice())).collect();
        let mut pairs = owned.clone();
        let tokens = PROXY_OWNED.join(", ").to_uppercase();
        pairs.push(("connection", tokens.as_bytes()));
        let mut h = map(&pairs);
        remove_hop_by_hop(&mut h, false, Some(Underscores::Drop));
        let mut expected = PROXY_OWNED.to_vec();
        expected.sort_unstable();
        assert_eq!(names(&h), expected);
    }

    #[test]
    fn underscore_names_are_dropped_or_kept_unless_they_spell_a_proxy_header() {
        let pairs: &[(&str, &[u8])] = &[
            ("x_forwarded_for", b"6.6.6.6"),
            ("x_request_id", b"forged"),
            ("x_forwarded_host", b"evil"),
            ("x_custom_thing", b"1"),
            ("x-normal", b"1"),
        ];
        let mut h = map(pairs);
        remove_hop_by_hop(&mut h, false, Some(Underscores::Drop));
        assert_eq!(names(&h), ["x-normal"]);
        let mut h = map(pairs);
        remove_hop_by_hop(&mut h, false, Some(Underscores::Keep));
        assert_eq!(names(&h), ["x-normal", "x_custom_thing"]);
        // Responses keep whatever names the backend chose.
        let mut h = map(pairs);
        remove_hop_by_hop(&mut h, false, None);
        assert_eq!(h.len(), pairs.len());
    }

    #[test]
    fn websocket_upgrade_keeps_upgrade_headers() {
        let mut h = map(&[("connection", b"Upgrade"), ("upgrade", b"websocket")]);
        assert!(is_websocket_upgrade(&h));
        remove_hop_by_hop(&mut h, true, Some(Underscores::Drop));
        assert_eq!(h["upgrade"], "websocket");
        assert_eq!(h["connection"], "upgrade");
    }

    #[test]
    fn forwarded_for_keeps_only_trusted_hops() {
        let mut h = map(&[("x-forwarded-for", b"1.1.1.1, 2.2.2.2"), ("x-forwarded-for", b"3.3.3.3"), ("host", b"a")]);
        set_forwarded(&mut h, &client(), &rules(1)).unwrap();
        assert_eq!(h["x-forwarded-for"], "3.3.3.3, 10.0.0.9");
        assert_eq!(h["x-forwarded-host"], "a");
        let mut h = map(&[("x-forwarded-for", b"1.1.1.1"), ("x-forwarded-proto", b"https")]);
        set_forwarded(&mut h, &client(), &rules(0)).unwrap();
        assert_eq!(h["x-forwarded-for"], "10.0.0.9");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-forwarded-port"], "30080");
    }

    #[test]
    fn a_client_byte_that_is_not_utf8_cannot_erase_the_trusted_hops_entry() {
        let mut h = map(&[("x-forwarded-for", b"6.6.\xff.6, 203.0.113.7")]);
        set_forwarded(&mut h, &client(), &rules(1)).unwrap();
        assert_eq!(h["x-forwarded-for"], "203.0.113.7, 10.0.0.9");
        // The trusted hop's own entry broken: refused, never silently replaced.
        let mut h = map(&[("x-forwarded-for", b"6.6.6.6, 203.0.\xff.7")]);
        assert_eq!(set_forwarded(&mut h, &client(), &rules(1)), Err(BadForwardedFor));
    }

    #[test]
    fn each_forwarding_header_is_trusted_only_when_the_hop_writes_it() {
        let incoming: &[(&str, &[u8])] = &[
            ("host", b"api.example.com"),
            ("x-forwarded-proto", b"https"),
            ("x-forwarded-port", b"443"),
            ("x-forwarded-host", b"evil.example.com"),
            ("forwarded", b"for=6.6.6.6"),
            ("x-real-ip", b"6.6.6.6"),
        ];
        // The ALB's set: -Proto and -Port kept, -Host rewritten, the others removed.
        let mut h = map(incoming);
        set_forwarded(&mut h, &client(), &rules(1)).unwrap();
        assert_eq!(h["x-forwarded-proto"], "https");
        assert_eq!(h["x-forwarded-port"], "443");
        assert_eq!(h["x-forwarded-host"], "api.example.com");
        assert!(!h.contains_key("forwarded") && !h.contains_key("x-real-ip"));
        // A hop that writes X-Forwarded-Host too, and sends two: its own (last) one kept.
        let mut h = map(&[("host", b"api.example.com"), ("x-forwarded-host", b"a"), ("x-forwarded-host", b"b")]);
        let mut r = rules(1);
        r.trusted_headers.push(TrustedHeader::XForwardedHost);
        set_forwarded(&mut h, &client(), &r).unwrap();
        assert_eq!(h.get_all("x-forwarded-host").iter().collect::<Vec<_>>(), ["b"]);
    }

    #[test]
    fn request_id_is_kept_or_generated_and_always_single() {
        let ids = RequestIds::new();
        let mut h = map(&[("x-request-id", b"abc")]);
        assert_eq!(ids.ensure(&mut h), "abc");
        let mut h = HeaderMap::new();
        let a = ids.ensure(&mut h);
        assert_eq!(h["x-request-id"], a);
        assert_ne!(ids.ensure(&mut HeaderMap::new()), a);
        assert_eq!(a.len(), 32);
        let mut h = map(&[("x-request-id", b"first"), ("x-request-id", b"second")]);
        assert_eq!(ids.ensure(&mut h), "first");
        assert_eq!(h.get_all("x-request-id").iter().count(), 1);
        let mut h = map(&[("x-request-id", b"has space"), ("x-request-id", b"second")]);
        let id = ids.ensure(&mut h);
        assert_eq!(id.len(), 32);
        assert_eq!(h.get_all("x-request-id").iter().collect::<Vec<_>>(), [&id]);
    }
}
