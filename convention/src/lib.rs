//! The gatehouse naming convention: which in-cluster Service a request reaches.
//!
//! An [`Edge`] maps a request host to a service prefix (`api.example.com` -> `service.api`).
//! `GET /foo/bar?x=1` on that host goes to the logical service `service.api.foo`, which is the
//! Kubernetes Service `service-api-foo`, with the path `/bar?x=1`.
//!
//! This crate is pure (no I/O, no async) so that the proxy and the provisioner share one
//! definition and it can be tested exhaustively. It is also the security boundary: only a
//! Service whose name the convention produces from a known edge is reachable from outside,
//! and a request path can never choose a different service than its first segment names.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;

/// The proxy's readiness path on the traffic port; the ALB health check calls it.
/// The underscore keeps it from ever colliding with a service segment (not a DNS label).
pub const READY_PATH: &str = "/_gatehouse/ready";

/// Kubernetes Service names are DNS-1035 labels: at most 63 characters.
pub const MAX_SERVICE_NAME_LEN: usize = 63;

/// How many times a path is percent-decoded when looking for dot segments. Two layers of
/// encoding (`%252e`) are enough to fool a naive upstream; three covers a decoding proxy in
/// between, and a path still encoded after that is rejected as too deep.
const MAX_DECODE_DEPTH: usize = 3;

/// One edge: requests for `host` reach the services named `<prefix>.<segment>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Edge {
    host: String,
    prefix: String,
    /// `prefix` with dots replaced by hyphens, plus the trailing hyphen: `service-api-`.
    service_name_prefix: String,
}

/// Why an edge definition is not acceptable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EdgeError {
    /// The host is not a DNS name (letters, digits, hyphens, dots; no port, no scheme).
    InvalidHost { host: String },
    /// The prefix is not a dot-separated list of DNS labels.
    InvalidPrefix { prefix: String },
    /// The prefix leaves no room for a service segment within 63 characters.
    PrefixTooLong { prefix: String },
    /// Two edges claim the same host.
    DuplicateHost { host: String },
    /// The default edge names a host that is not among the edges.
    UnknownDefault { host: String },
    /// One prefix's Services are a subset of another's names (`service.api` and
    /// `service.api.internal`, or `service.api-internal`): the shorter prefix's edge would
    /// reach the longer one's Services, which may be meant for a different audience.
    OverlappingPrefixes { prefix: String, within: String },
}

impl fmt::Display for EdgeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::InvalidHost { host } => write!(
                f,
                "host {host:?} is not a DNS name (lower-case letters, digits, '-' and '.', no port or scheme)"
            ),
            Self::InvalidPrefix { prefix } => {
                write!(f, "prefix {prefix:?} is not a dot-separated list of DNS labels such as \"service.api\"")
            }
            Self::PrefixTooLong { prefix } => write!(
                f,
                "prefix {prefix:?} leaves no room for a service segment within {MAX_SERVICE_NAME_LEN} characters"
            ),
            Self::DuplicateHost { host } => write!(f, "host {host:?} is defined by more than one edge"),
            Self::UnknownDefault { host } => {
                write!(f, "default edge {host:?} is not one of the configured edge hosts")
            }
            Self::OverlappingPrefixes { prefix, within } => write!(
                f,
                "prefix {prefix:?} overlaps prefix {within:?}: every Service named for {prefix:?} is also reachable through the edge of {within:?}; use prefixes that do not extend one another"
            ),
        }
    }
}

impl std::error::Error for EdgeError {}

impl Edge {
    /// Validates and normalises an edge. The host is matched case-insensitively, so it is
    /// stored lower-cased; the prefix must already be lower case, like the Services it names.
    pub fn new(host: &str, prefix: &str) -> Result<Self, EdgeError> {
        let host_lower = host.trim_end_matches('.').to_ascii_lowercase();
        if host_lower.is_empty() || !host_lower.split('.').all(is_dns_label) {
            return Err(EdgeError::InvalidHost { host: host.to_owned() });
        }
        if prefix.is_empty() || !prefix.split('.').all(is_dns_label) {
            return Err(EdgeError::InvalidPrefix { prefix: prefix.to_owned() });
        }
        let service_name_prefix = format!("{}-", prefix.replace('.', "-"));
        // The shortest service segment is one character.
        if service_name_prefix.len() + 1 > MAX_SERVICE_NAME_LEN {
            return Err(EdgeError::PrefixTooLong { prefix: prefix.to_owned() });
        }
        Ok(Self { host: host_lower, prefix: prefix.to_owned(), service_name_prefix })
    }

    /// The host this edge answers, lower case.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The logical-name prefix, e.g. `service.api`.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The segment a Kubernetes Service is reachable at through this edge, if any:
    /// `service-api-foo` -> `Some("foo")` for prefix `service.api`. Used to list what an edge
    /// exposes; everything for which this is `None` is invisible to the edge.
    pub fn segment_for_service<'s>(&self, service_name: &'s str) -> Option<&'s str> {
        let segment = service_name.strip_prefix(&self.service_name_prefix)?;
        (is_dns_label(segment) && service_name.len() <= MAX_SERVICE_NAME_LEN).then_some(segment)
    }
}

/// The configured edges, looked up by request host.
#[derive(Debug, Clone, Default)]
pub struct Edges {
    edges: Vec<Edge>,
    by_host: HashMap<String, usize>,
    default: Option<usize>,
}

impl Edges {
    /// Builds the edge table. `default_host`, when set, names the edge that answers requests
    /// for any host that no edge claims.
    pub fn new(edges: Vec<Edge>, default_host: Option<&str>) -> Result<Self, EdgeError> {
        let mut by_host = HashMap::with_capacity(edges.len());
        for (index, edge) in edges.iter().enumerate() {
            if by_host.insert(edge.host.clone(), index).is_some() {
                return Err(EdgeError::DuplicateHost { host: edge.host.clone() });
            }
        }
        // Service names, not prefixes, are what must not overlap: `service-api-` also starts
        // `service-api-internal-`, whether that came from `service.api.internal` or
        // `service.api-internal`. Equal prefixes on two hosts expose the same Services: fine.
        for longer in &edges {
            for shorter in &edges {
                let (long, short) = (&longer.service_name_prefix, &shorter.service_name_prefix);
                if long.len() > short.len() && long.starts_with(short.as_str()) {
                    return Err(EdgeError::OverlappingPrefixes {
                        prefix: longer.prefix.clone(),
                        within: shorter.prefix.clone(),
                    });
                }
            }
        }
        let default = match default_host {
            None => None,
            Some(host) => Some(
                *by_host
                    .get(&host.trim_end_matches('.').to_ascii_lowercase())
                    .ok_or_else(|| EdgeError::UnknownDefault { host: host.to_owned() })?,
            ),
        };
        Ok(Self { edges, by_host, default })
    }

    /// All edges, in configuration order.
    pub fn iter(&self) -> impl Iterator<Item = &Edge> {
        self.edges.iter()
    }

    /// The edge for a `Host` header value (or URI authority): case and port are ignored.
    pub fn find(&self, host: &str) -> Option<&Edge> {
        let host = normalise_host(host);
        self.by_host.get(host.as_ref()).or(self.default.as_ref()).map(|&index| &self.edges[index])
    }
}

/// Where a request goes, by the convention. Borrows from the edge table and the request, so
/// routing allocates nothing except when the upstream path must gain a `/` (`/foo?x` -> `/?x`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route<'e, 'r> {
    /// The edge that matched the host.
    pub edge: &'e Edge,
    /// The first path segment, e.g. `foo`.
    pub segment: &'r str,
    /// The Kubernetes Service, e.g. `service-api-foo`.
    pub service_name: ServiceName,
    /// What the upstream sees: the path without its first segment, query kept: `/bar?x=1`.
    pub upstream_path_and_query: Cow<'r, str>,
}

impl Route<'_, '_> {
    /// The logical service, e.g. `service.api.foo`.
    pub fn logical_service(&self) -> String {
        format!("{}.{}", self.edge.prefix, self.segment)
    }
}

/// A Kubernetes Service name (at most 63 ASCII bytes), held inline so that routing a request
/// needs no heap allocation to look its Service up.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct ServiceName {
    len: u8,
    bytes: [u8; MAX_SERVICE_NAME_LEN],
}

impl ServiceName {
    /// `prefix` followed by `segment`, or `None` when that is longer than 63 bytes.
    fn join(prefix: &str, segment: &str) -> Option<Self> {
        let len = prefix.len() + segment.len();
        if len > MAX_SERVICE_NAME_LEN {
            return None;
        }
        let mut bytes = [0; MAX_SERVICE_NAME_LEN];
        bytes[..prefix.len()].copy_from_slice(prefix.as_bytes());
        bytes[prefix.len()..len].copy_from_slice(segment.as_bytes());
        Some(Self { len: len as u8, bytes })
    }

    pub fn as_str(&self) -> &str {
        // Built only from an edge's ASCII prefix and a DNS label.
        std::str::from_utf8(&self.bytes[..usize::from(self.len)]).unwrap_or_default()
    }
}

impl std::ops::Deref for ServiceName {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl fmt::Debug for ServiceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for ServiceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl PartialEq<&str> for ServiceName {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl PartialEq<String> for ServiceName {
    fn eq(&self, other: &String) -> bool {
        self.as_str() == other
    }
}

/// Why a request is answered by the proxy itself instead of reaching an upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    /// No edge claims the host (and there is no default edge).
    UnknownHost,
    /// The path has no service segment (`/`, or it starts with `//`).
    NoServiceSegment,
    /// The first segment cannot name a Service: not a DNS label (upper case, underscore,
    /// percent-encoded characters, ...) or the resulting name is longer than 63 characters.
    InvalidServiceSegment,
    /// A `.` or `..` segment, raw or percent-encoded (any case, any depth, `/` or `\`).
    DotSegment,
    /// Not an origin-form path, a control or non-ASCII byte, or broken percent-encoding.
    MalformedPath,
}

impl Rejection {
    /// The HTTP status the proxy answers with. Hostile shapes are 400; names that simply do
    /// not exist here are 404, as for any other unknown resource.
    pub fn status_code(self) -> u16 {
        match self {
            Self::UnknownHost | Self::NoServiceSegment | Self::InvalidServiceSegment => 404,
            Self::DotSegment | Self::MalformedPath => 400,
        }
    }

    /// A short, stable reason for logs and metrics.
    pub fn reason(self) -> &'static str {
        match self {
            Self::UnknownHost => "unknown_host",
            Self::NoServiceSegment => "no_service_segment",
            Self::InvalidServiceSegment => "invalid_service_segment",
            Self::DotSegment => "dot_segment",
            Self::MalformedPath => "malformed_path",
        }
    }
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::UnknownHost => "no edge is configured for this host",
            Self::NoServiceSegment => "the path does not name a service",
            Self::InvalidServiceSegment => "the first path segment is not a valid service name",
            Self::DotSegment => "dot segments are not allowed in the path",
            Self::MalformedPath => "the request path is malformed",
        })
    }
}

/// Routes a request by the convention. `host` is the `Host` header (or the URI authority),
/// `path_and_query` the origin-form request target, exactly as received.
pub fn route<'e, 'r>(edges: &'e Edges, host: &str, path_and_query: &'r str) -> Result<Route<'e, 'r>, Rejection> {
    let (path, query) = match path_and_query.find('?') {
        Some(at) => path_and_query.split_at(at),
        None => (path_and_query, ""),
    };
    check_path(path)?;
    // Checked before the host so that a hostile path is always a 400, whatever the host.
    let edge = edges.find(host).ok_or(Rejection::UnknownHost)?;

    let after_slash = &path[1..];
    let (segment, rest) = match after_slash.find('/') {
        Some(at) => after_slash.split_at(at),
        None => (after_slash, ""),
    };
    if segment.is_empty() {
        return Err(Rejection::NoServiceSegment);
    }
    if !is_dns_label(segment) {
        return Err(Rejection::InvalidServiceSegment);
    }
    let service_name = ServiceName::join(&edge.service_name_prefix, segment).ok_or(Rejection::InvalidServiceSegment)?;

    // The rest of the path and the query are one slice of the target; only an empty rest
    // (`/foo` or `/foo?x=1`) needs a new string, to give the upstream a `/`.
    let after_segment = &path_and_query[1 + segment.len()..];
    let upstream_path_and_query =
        if rest.is_empty() { Cow::Owned(format!("/{query}")) } else { Cow::Borrowed(after_segment) };
    Ok(Route { edge, segment, service_name, upstream_path_and_query })
}

/// The Kubernetes Service name for a logical service: dots become hyphens.
pub fn service_name(logical_service: &str) -> String {
    logical_service.replace('.', "-")
}

/// `[a-z0-9]([-a-z0-9]*[a-z0-9])?`, at most 63 characters (RFC 1123 label, lower case).
pub fn is_dns_label(s: &str) -> bool {
    let bytes = s.as_bytes();
    let alnum = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    match (bytes.first(), bytes.last()) {
        (Some(first), Some(last)) => {
            bytes.len() <= 63 && alnum(first) && alnum(last) && bytes.iter().all(|b| alnum(b) || *b == b'-')
        }
        _ => false,
    }
}

/// Lower-cases a host and strips its port (and a trailing dot), borrowing when it can.
fn normalise_host(host: &str) -> Cow<'_, str> {
    let without_port = if let Some(bracketed) = host.strip_prefix('[') {
        // IPv6 literal: "[::1]:8080" -> "[::1]"
        match bracketed.find(']') {
            Some(end) => &host[..end + 2],
            None => host,
        }
    } else {
        host.rsplit_once(':').map_or(host, |(name, _port)| name)
    };
    let trimmed = without_port.trim_end_matches('.');
    if trimmed.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(trimmed.to_ascii_lowercase())
    } else {
        Cow::Borrowed(trimmed)
    }
}

/// Rejects anything that is not a plain origin-form path, and every dot segment however it
/// is spelt. A dot segment is refused rather than resolved: resolving `/foo/../bar` to
/// `/bar` would make the route and the upstream's view disagree, which is how traversal
/// attacks on convention routers work.
fn check_path(path: &str) -> Result<(), Rejection> {
    if !path.starts_with('/') || path.bytes().any(|b| !b.is_ascii_graphic()) {
        return Err(Rejection::MalformedPath);
    }
    // What arrived on the wire must be well-formed; deeper layers are only ever decoded to
    // look for hidden dot segments, so a literal '%' there (a file called "100%") is fine.
    let mut current = Cow::Borrowed(path);
    let mut strict = true;
    for _ in 0..=MAX_DECODE_DEPTH {
        if has_dot_segment(&current) {
            return Err(Rejection::DotSegment);
        }
        match percent_decode(&current, strict)? {
            None => return Ok(()),
            Some(decoded) => current = Cow::Owned(decoded),
        }
        strict = false;
    }
    // Still encoded after every layer we look at: nobody sends that by accident.
    Err(Rejection::MalformedPath)
}

/// Whether any `/`- or `\`-separated segment is `.` or `..` (backslash because some
/// upstream servers treat it as a separator), also with path parameters after it (`..;x`):
/// Tomcat and Spring drop everything from a `;` in a segment, leaving a dot segment.
fn has_dot_segment(path: &str) -> bool {
    // Most paths have no dot at all: one scan instead of splitting.
    if !path.contains('.') {
        return false;
    }
    path.split(['/', '\\']).any(|segment| {
        let name = segment.split(';').next().unwrap_or(segment);
        name == "." || name == ".."
    })
}

/// One layer of percent-decoding, or `None` when there is nothing to decode. A decoded
/// control byte (NUL, CR, LF, ...) is always malformed, and so is overlong UTF-8 (`%c0%ae`
/// spells `.` the long way; decoders that accept it, old IIS and Tomcat among them, see a
/// dot segment); a broken escape is malformed when `strict`, and kept as it is otherwise.
/// Bytes above ASCII decode to the Latin-1 character of the same value: the result is only
/// inspected, never forwarded.
fn percent_decode(s: &str, strict: bool) -> Result<Option<String>, Rejection> {
    let bytes = s.as_bytes();
    // Most paths have no escape at all: nothing to decode, and nothing to allocate.
    if !bytes.contains(&b'%') {
        return Ok(None);
    }
    let mut out = String::with_capacity(bytes.len());
    let mut decoded_any = false;
    // The byte decoded by the escape just before this one, if the previous item was one.
    let mut previous: Option<u8> = None;
    let mut i = 0;
    while i < bytes.len() {
        let escape = (bytes[i] == b'%')
            .then(|| bytes.get(i + 1..i + 3))
            .flatten()
            .filter(|hex| hex.iter().all(u8::is_ascii_hexdigit));
        match escape {
            Some(hex) => {
                let value = (hex_value(hex[0]) << 4) | hex_value(hex[1]);
                if value.is_ascii_control() || is_overlong_utf8(previous, value) {
                    return Err(Rejection::MalformedPath);
                }
                out.push(char::from(value));
                decoded_any = true;
                previous = Some(value);
                i += 3;
            }
            None if bytes[i] == b'%' && strict => return Err(Rejection::MalformedPath),
            None => {
                out.push(char::from(bytes[i]));
                previous = None;
                i += 1;
            }
        }
    }
    Ok(decoded_any.then_some(out))
}

/// Bytes that only ever start an overlong UTF-8 sequence: `C0` and `C1` (two bytes for
/// what fits in one), `E0` followed by `80`-`9F` and `F0` followed by `80`-`8F` (three or
/// four bytes for what fits in fewer). Never part of valid UTF-8.
fn is_overlong_utf8(previous: Option<u8>, value: u8) -> bool {
    matches!(value, 0xC0 | 0xC1) || matches!((previous, value), (Some(0xE0), 0x80..=0x9F) | (Some(0xF0), 0x80..=0x8F))
}

fn hex_value(digit: u8) -> u8 {
    match digit {
        b'0'..=b'9' => digit - b'0',
        b'a'..=b'f' => digit - b'a' + 10,
        _ => digit - b'A' + 10,
    }
}

#[cfg(test)]
mod tests;
