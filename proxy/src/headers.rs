//! Request and response header rewriting: hop-by-hop removal, `X-Forwarded-*`, request ids.

use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");

/// Headers that describe one connection and must not be forwarded (RFC 9110 7.6.1), plus
/// every `Proxy-*` header and whatever `Connection` names. `Upgrade` and `Connection:
/// upgrade` survive when `keep_upgrade` (a WebSocket handshake being passed through).
pub fn remove_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    // One pass over the names (standard names compare without hashing); most messages have
    // none of these, and the rest (a backend's `Connection: keep-alive`) only a few: only the
    // names present are removed, each removal being a hashed lookup.
    let mut present: Vec<HeaderName> = Vec::new();
    for name in headers.keys() {
        if is_hop_by_hop_name(name) && !(keep_upgrade && name == header::UPGRADE) {
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
            for token in value.to_str().unwrap_or("").split(',').map(str::trim) {
                if token.eq_ignore_ascii_case("keep-alive")
                    || token.eq_ignore_ascii_case("upgrade")
                    || !headers.contains_key(token)
                {
                    continue;
                }
                named.extend(HeaderName::from_bytes(token.as_bytes()).ok());
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
        .any(|v| v.to_str().is_ok_and(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case("upgrade"))));
    connection_upgrade && headers.get(header::UPGRADE).is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"))
}

/// Sets `X-Forwarded-For/-Proto/-Host`. Of an incoming `X-Forwarded-For`, only the last
/// `trusted_hops` entries (written by the trusted proxies in front, e.g. the ALB) are kept:
/// earlier entries could have been written by the client. `peer` is this connection's
/// client address, rendered once per connection.
pub fn set_forwarded(headers: &mut HeaderMap, peer: &HeaderValue, trusted_hops: usize) {
    let xff = if trusted_hops == 0 || !headers.contains_key(&X_FORWARDED_FOR) {
        peer.clone()
    } else {
        let mut entries: Vec<&str> = Vec::new();
        for value in headers.get_all(&X_FORWARDED_FOR) {
            entries.extend(value.to_str().unwrap_or("").split(',').map(str::trim).filter(|s| !s.is_empty()));
        }
        let kept = &entries[entries.len().saturating_sub(trusted_hops)..];
        let mut joined = String::with_capacity(64);
        for entry in kept {
            joined.push_str(entry);
            joined.push_str(", ");
        }
        joined.push_str(peer.to_str().unwrap_or(""));
        HeaderValue::from_str(&joined).unwrap_or_else(|_| peer.clone())
    };
    headers.insert(&X_FORWARDED_FOR, xff);

    if trusted_hops == 0 || !headers.contains_key(&X_FORWARDED_PROTO) {
        headers.insert(&X_FORWARDED_PROTO, HeaderValue::from_static("http"));
    }
    if trusted_hops == 0 || !headers.contains_key(&X_FORWARDED_HOST) {
        match headers.get(header::HOST).cloned() {
            Some(host) => headers.insert(&X_FORWARDED_HOST, host),
            None => headers.remove(&X_FORWARDED_HOST),
        };
    }
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

    /// The request's id, inserting a fresh one when it has none (or an unusable one).
    pub fn ensure(&self, headers: &mut HeaderMap) -> HeaderValue {
        if let Some(id) = headers.get(&X_REQUEST_ID)
            && !id.is_empty()
            && id.len() <= 128
            && id.as_bytes().iter().all(u8::is_ascii_graphic)
        {
            return id.clone();
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

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.append(HeaderName::from_bytes(k.as_bytes()).unwrap(), HeaderValue::from_str(v).unwrap());
        }
        m
    }

    #[test]
    fn hop_by_hop_headers_and_the_ones_connection_names_are_removed() {
        let mut h = map(&[
            ("connection", "keep-alive, x-secret"),
            ("x-secret", "1"),
            ("keep-alive", "timeout=5"),
            ("te", "trailers"),
            ("upgrade", "h2c"),
            ("proxy-authorization", "Basic x"),
            ("x-kept", "yes"),
        ]);
        remove_hop_by_hop(&mut h, false);
        let left: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
        assert_eq!(left, ["x-kept"]);
    }

    #[test]
    fn websocket_upgrade_keeps_upgrade_headers() {
        let mut h = map(&[("connection", "Upgrade"), ("upgrade", "websocket")]);
        assert!(is_websocket_upgrade(&h));
        remove_hop_by_hop(&mut h, true);
        assert_eq!(h["upgrade"], "websocket");
        assert_eq!(h["connection"], "upgrade");
    }

    #[test]
    fn forwarded_for_keeps_only_trusted_hops() {
        let peer = HeaderValue::from_static("10.0.0.9");
        let mut h = map(&[("x-forwarded-for", "1.1.1.1, 2.2.2.2"), ("x-forwarded-for", "3.3.3.3"), ("host", "a")]);
        set_forwarded(&mut h, &peer, 1);
        assert_eq!(h["x-forwarded-for"], "3.3.3.3, 10.0.0.9");
        assert_eq!(h["x-forwarded-host"], "a");
        let mut h = map(&[("x-forwarded-for", "1.1.1.1"), ("x-forwarded-proto", "https")]);
        set_forwarded(&mut h, &peer, 0);
        assert_eq!(h["x-forwarded-for"], "10.0.0.9");
        assert_eq!(h["x-forwarded-proto"], "http");
    }

    #[test]
    fn request_id_is_kept_or_generated() {
        let ids = RequestIds::new();
        let mut h = map(&[("x-request-id", "abc")]);
        assert_eq!(ids.ensure(&mut h), "abc");
        let mut h = HeaderMap::new();
        let a = ids.ensure(&mut h);
        assert_eq!(h["x-request-id"], a);
        assert_ne!(ids.ensure(&mut HeaderMap::new()), a);
        assert_eq!(a.len(), 32);
    }
}
