//! The proxy's configuration file: parsed, then validated in full before anything is bound.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Duration;

use gatehouse_convention::{Edge, Edges};
use serde::Deserialize;

/// The configuration file as written (see `gatehouse-proxy.example.yaml`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Traffic listener, e.g. `0.0.0.0:30080`.
    pub listen: SocketAddr,
    /// Admin listener (`/healthz`, `/metrics`, `/routes`), e.g. `127.0.0.1:9090`.
    pub admin_listen: SocketAddr,
    /// Host -> service prefix.
    pub edges: Vec<EdgeConfig>,
    /// The edge that answers hosts no edge claims; unset means such hosts get 404.
    #[serde(default)]
    pub default_edge: Option<String>,
    /// Where endpoints come from.
    pub discovery: DiscoveryConfig,
    #[serde(default)]
    pub timeouts: Timeouts,
    #[serde(default)]
    pub limits: Limits,
    #[serde(default)]
    pub forwarded: Forwarded,
    #[serde(default)]
    pub headers: Headers,
    #[serde(default)]
    pub pool: Pool,
    /// One JSON line per request on stdout.
    #[serde(default = "default_true")]
    pub access_log: bool,
    /// This proxy's pseudonym in `Via` (RFC 9110 7.6.3), e.g. the node name: added to every
    /// forwarded request and response as `Via: 1.1 <via>`. Unset: no `Via` is added.
    #[serde(default)]
    pub via: Option<String>,
}

/// One edge as written in the file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EdgeConfig {
    pub host: String,
    pub prefix: String,
}

/// Endpoint discovery: a static map (the embedded default) or Kubernetes; exactly one.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiscoveryConfig {
    /// Logical service name (`service.api.foo`) -> `host:port` endpoints.
    #[serde(rename = "static", default)]
    pub static_services: Option<BTreeMap<String, Vec<String>>>,
    #[serde(default)]
    pub kubernetes: Option<KubernetesConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KubernetesConfig {
    /// Namespaces watched for Services and EndpointSlices; earlier ones win on a name clash.
    pub namespaces: Vec<String>,
    /// A kubeconfig file; unset means in-cluster config, else `KUBECONFIG` / `~/.kube/config`.
    #[serde(default)]
    pub kubeconfig: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Timeouts {
    /// TCP connect to an upstream endpoint.
    #[serde(with = "humantime_serde")]
    pub connect: Duration,
    /// From the end of the request (its last body byte passed upstream) to the response head,
    /// as Envoy counts its route timeout: an upload of any length is bounded by `body_read`
    /// between its pieces, not cut off by this.
    #[serde(with = "humantime_serde")]
    pub request: Duration,
    /// A client must deliver a complete request head within this time of its first byte.
    #[serde(with = "humantime_serde")]
    pub header_read: Duration,
    /// A client sending a request body may pause this long between two pieces of it; beyond
    /// it the upstream request is aborted and the client gets 408 (if no response has begun)
    /// and the connection is closed.
    #[serde(with = "humantime_serde")]
    pub body_read: Duration,
    /// A client connection waiting for its next request (or its first) is closed after this
    /// long without a byte. Behind an ALB it must exceed the ALB's idle timeout (60 s by
    /// default), so that the ALB, never the proxy, closes idle connections: a request the ALB
    /// sends just as the proxy closes would otherwise become a 502.
    #[serde(with = "humantime_serde")]
    pub client_idle: Duration,
    /// Once the upstream's response head has arrived: the longest gap between two pieces of
    /// its body (nginx's `proxy_read_timeout`). Beyond it the response is cut off: the client
    /// sees a body that ends short and a closed connection, never a complete-looking answer.
    #[serde(with = "humantime_serde")]
    pub upstream_read: Duration,
    /// The longest a client may leave response bytes unread (nginx's `send_timeout`): beyond
    /// it the exchange is cut off and both connections closed.
    #[serde(with = "humantime_serde")]
    pub client_write: Duration,
    /// Idle time after which pooled upstream connections are closed.
    #[serde(with = "humantime_serde")]
    pub idle: Duration,
    /// After SIGTERM: readiness fails at once, traffic is still served for this long.
    #[serde(with = "humantime_serde")]
    pub drain: Duration,
    /// After the drain: how long in-flight requests may take before they are cut.
    #[serde(with = "humantime_serde")]
    pub shutdown: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            connect: Duration::from_secs(2),
            request: Duration::from_secs(30),
            header_read: Duration::from_secs(10),
            body_read: Duration::from_secs(10),
            // nginx's keepalive_timeout default; 15 s above the ALB's default idle timeout.
            client_idle: Duration::from_secs(75),
            upstream_read: Duration::from_secs(60),
            client_write: Duration::from_secs(60),
            idle: Duration::from_secs(60),
            drain: Duration::from_secs(15),
            shutdown: Duration::from_secs(30),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Largest request head (request line + headers); beyond it: 431.
    pub max_header_bytes: usize,
    /// Largest request body; beyond it: 413. Unset: no limit.
    pub max_body_bytes: Option<u64>,
    /// Request bodies up to this size are read completely before an upstream is chosen, as
    /// nginx does: a slow client holds no upstream connection, a malformed body never reaches
    /// one, and the upstream gets a `Content-Length`. Larger bodies stream. 0: always stream.
    pub body_buffer_bytes: usize,
    /// A request body must arrive at this average rate, in bytes per second, after a grace of
    /// `timeouts.body_read` (Apache's `mod_reqtimeout` rule: the allowance grows by one second
    /// per `min_body_rate` bytes received); beyond it: 408 and close. 0: no rate is required.
    pub min_body_rate: u64,
    /// Open client connections; beyond it a new connection is answered 503 and closed.
    pub max_connections: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_header_bytes: 16 * 1024,
            max_body_bytes: None,
            body_buffer_bytes: 64 * 1024,
            min_body_rate: 500,
            max_connections: 10_000,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Forwarded {
    /// How many proxies in front of this one are trusted to write `X-Forwarded-*` (1 behind
    /// an ALB). The last `trusted_hops` entries of an incoming `X-Forwarded-For` are kept,
    /// anything before them (which the client could have written) is dropped; with 0 the
    /// incoming `X-Forwarded-*` headers are replaced entirely.
    pub trusted_hops: usize,
    /// Which forwarding headers those hops write, and so may be kept from them. The default is
    /// what an ALB writes (its documentation: `X-Forwarded-For`, `-Proto`, `-Port`); every other
    /// one the client sent is replaced (`X-Forwarded-Host` from `Host`) or removed (`Forwarded`,
    /// `X-Real-IP`).
    pub trusted_headers: Vec<TrustedHeader>,
}

impl Default for Forwarded {
    fn default() -> Self {
        Self {
            trusted_hops: 0,
            trusted_headers: vec![
                TrustedHeader::XForwardedFor,
                TrustedHeader::XForwardedProto,
                TrustedHeader::XForwardedPort,
            ],
        }
    }
}

/// A forwarding header a trusted hop may write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum TrustedHeader {
    #[serde(rename = "x-forwarded-for")]
    XForwardedFor,
    #[serde(rename = "x-forwarded-proto")]
    XForwardedProto,
    #[serde(rename = "x-forwarded-port")]
    XForwardedPort,
    #[serde(rename = "x-forwarded-host")]
    XForwardedHost,
    #[serde(rename = "forwarded")]
    Forwarded,
    #[serde(rename = "x-real-ip")]
    XRealIp,
}

/// The upstream connection pool.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Pool {
    /// What becomes of a connection that carried a request body, once its exchange is over.
    pub after_body: AfterBody,
}

/// A connection that carried a request body, once the exchange is complete.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AfterBody {
    /// Reused by the pool's rules: the body went out whole before the response head came, and
    /// the answer was not an error (see the README's reliability section).
    #[default]
    Reuse,
    /// Closed: for upstreams that may answer 2xx without reading a body (the "CL.0" desync
    /// class), at the price of a new connection per request with a body.
    Close,
}

/// Rules for the request headers the proxy forwards.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Headers {
    /// What becomes of request header names with `_`.
    pub underscores: Underscores,
}

/// Request header names with `_`: CGI-style servers (WSGI, Rack, PHP) fold `-` and `_`
/// together, so `X_Forwarded_For` would merge with the proxy's own `X-Forwarded-For`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Underscores {
    /// Every name with `_` is dropped (nginx's default, `underscores_in_headers off`).
    #[default]
    Drop,
    /// Kept, except a name that folds to one the proxy owns (`X_Forwarded_For`, `X_Request_Id`,
    /// ...), which is always dropped.
    Keep,
}

fn default_true() -> bool {
    true
}

/// A configuration problem: which file, which key, what is wrong.
#[derive(Debug, thiserror::Error)]
pub struct ConfigError {
    pub file: PathBuf,
    /// A dotted key path such as `discovery.static."service.api.foo"`, or empty.
    pub key: String,
    pub problem: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key.is_empty() {
            write!(f, "{}: {}", self.file.display(), self.problem)
        } else {
            write!(f, "{}: {}: {}", self.file.display(), self.key, self.problem)
        }
    }
}

/// A validated configuration: what the proxy runs from.
#[derive(Debug, Clone)]
pub struct Settings {
    pub config: Config,
    pub edges: Edges,
    /// Static discovery resolved: Kubernetes Service name -> endpoints.
    pub static_services: Option<BTreeMap<String, Vec<SocketAddr>>>,
}

impl Config {
    /// Reads and validates a file. Every problem names the file and the key.
    pub fn load(path: &Path) -> Result<Settings, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: path.to_owned(),
            key: String::new(),
            problem: format!("cannot read: {e}"),
        })?;
        Self::parse(&text, path)
    }

    /// Parses and validates YAML text; `path` is only used in messages.
    pub fn parse(text: &str, path: &Path) -> Result<Settings, ConfigError> {
        let config: Config = serde_yaml::from_str(text).map_err(|e| {
            // serde_yaml's message names the key path and, when it has one, the line and column.
            let message = e.to_string();
            let location = match e.location() {
                Some(l) if !message.contains("line") => format!(" at line {} column {}", l.line(), l.column()),
                _ => String::new(),
            };
            ConfigError { file: path.to_owned(), key: String::new(), problem: format!("{message}{location}") }
        })?;
        config.validate(path)
    }

    /// Checks everything serde cannot: edges, static keys, limits, durations.
    pub fn validate(self, path: &Path) -> Result<Settings, ConfigError> {
        let err = |key: String, problem: String| ConfigError { file: path.to_owned(), key, problem };
        if self.edges.is_empty() {
            return Err(err("edges".into(), "at least one edge is needed".into()));
        }
        let mut edges = Vec::with_capacity(self.edges.len());
        for (i, e) in self.edges.iter().enumerate() {
            edges.push(Edge::new(&e.host, &e.prefix).map_err(|x| err(format!("edges[{i}]"), x.to_string()))?);
        }
        let edges = Edges::new(edges, self.default_edge.as_deref()).map_err(|x| err("edges".into(), x.to_string()))?;

        if let Some(via) = &self.via
            && (via.is_empty() || !via.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._~".contains(&b)))
        {
            return Err(err("via".into(), format!("{via:?} is not a token (letters, digits, '-', '.', '_', '~')")));
        }
        if self.limits.max_header_bytes < 1024 {
            return Err(err("limits.max_header_bytes".into(), "must be at least 1024".into()));
        }
        if self.limits.max_connections == 0 {
            return Err(err("limits.max_connections".into(), "must be at least 1".into()));
        }
        for (name, d) in [
            ("connect", self.timeouts.connect),
            ("request", self.timeouts.request),
            ("header_read", self.timeouts.header_read),
            ("body_read", self.timeouts.body_read),
            ("client_idle", self.timeouts.client_idle),
            ("upstream_read", self.timeouts.upstream_read),
            ("client_write", self.timeouts.client_write),
            ("idle", self.timeouts.idle),
        ] {
            if d.is_zero() {
                return Err(err(format!("timeouts.{name}"), "must be greater than zero".into()));
            }
        }

        let static_services = match (&self.discovery.static_services, &self.discovery.kubernetes) {
            (Some(_), Some(_)) | (None, None) => {
                return Err(err("discovery".into(), "set exactly one of `static` and `kubernetes`".into()));
            }
            (None, Some(k)) => {
                if k.namespaces.is_empty() {
                    return Err(err(
                        "discovery.kubernetes.namespaces".into(),
                        "at least one namespace is needed".into(),
                    ));
                }
                None
            }
            (Some(map), None) => {
                let mut out = BTreeMap::new();
                for (logical, endpoints) in map {
                    let key = format!("discovery.static.{logical:?}");
                    let service = gatehouse_convention::service_name(logical);
                    // Exactly `<edge prefix>.<segment>`: `service.api.foo.bar` would map to the
                    // same Service name as `service.api.foo-bar` and is refused, not guessed.
                    let reachable = edges.iter().any(|e| {
                        logical
                            .strip_prefix(e.prefix())
                            .and_then(|rest| rest.strip_prefix('.'))
                            .is_some_and(|segment| e.segment_for_service(&service) == Some(segment))
                    });
                    if !reachable {
                        let prefixes: Vec<&str> = edges.iter().map(Edge::prefix).collect();
                        return Err(err(
                            key,
                            format!(
                                "no edge reaches this service: it must be <prefix>.<segment> for one of the edge prefixes {prefixes:?}"
                            ),
                        ));
                    }
                    let mut addrs = Vec::with_capacity(endpoints.len());
                    for (i, ep) in endpoints.iter().enumerate() {
                        addrs.push(resolve(ep).map_err(|p| err(format!("{key}[{i}]"), p))?);
                    }
                    out.insert(service, addrs);
                }
                Some(out)
            }
        };
        Ok(Settings { config: self, edges, static_services })
    }
}

/// `ip:port`, or `name:port` resolved once at startup.
fn resolve(endpoint: &str) -> Result<SocketAddr, String> {
    if let Ok(addr) = endpoint.parse() {
        return Ok(addr);
    }
    let (_, port) = endpoint.rsplit_once(':').ok_or_else(|| format!("{endpoint:?} is not host:port"))?;
    port.parse::<u16>().map_err(|_| format!("{endpoint:?} has no valid port"))?;
    endpoint
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {endpoint:?}: {e}"))?
        .next()
        .ok_or_else(|| format!("{endpoint:?} resolves to no address"))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;

    const GOOD: &str = r#"
listen: 127.0.0.1:0
admin_listen: 127.0.0.1:0
edges:
  - host: api.example.com
    prefix: service.api
discovery:
  static:
    service.api.foo: ["127.0.0.1:9001", "127.0.0.1:9002"]
timeouts: { connect: 1s, drain: 0s }
access_log: false
"#;

    fn parse(text: &str) -> Result<Settings, ConfigError> {
        Config::parse(text, Path::new("test.yaml"))
    }

    #[test]
    fn good_config_resolves_static_services_to_kubernetes_names() {
        let s = parse(GOOD).expect("valid");
        let services = s.static_services.expect("static");
        assert_eq!(services["service-api-foo"].len(), 2);
        assert_eq!(s.config.timeouts.connect, Duration::from_secs(1));
        assert!(!s.config.access_log);
    }

    #[test]
    fn unknown_key_is_named_with_its_location() {
        let e = parse(&GOOD.replace("access_log", "acess_log")).expect_err("typo");
        let msg = e.to_string();
        assert!(msg.contains("test.yaml") && msg.contains("acess_log") && msg.contains("line"), "{msg}");
    }

    #[test]
    fn static_key_no_edge_reaches_is_refused_by_name() {
        let e = parse(&GOOD.replace("service.api.foo", "service.web.foo")).expect_err("unreachable");
        assert_eq!(e.key, "discovery.static.\"service.web.foo\"");
    }

    #[test]
    fn static_key_with_a_dotted_segment_is_refused() {
        let e = parse(&GOOD.replace("service.api.foo", "service.api.foo.bar")).expect_err("dotted segment");
        assert_eq!(e.key, "discovery.static.\"service.api.foo.bar\"");
    }

    #[test]
    fn bad_endpoint_is_named_with_its_index() {
        let e = parse(&GOOD.replace("127.0.0.1:9002", "nowhere")).expect_err("bad endpoint");
        assert_eq!(e.key, "discovery.static.\"service.api.foo\"[1]");
    }

    #[test]
    fn bad_edge_prefix_is_named() {
        let e = parse(&GOOD.replace("prefix: service.api", "prefix: Service.API")).expect_err("bad prefix");
        assert_eq!(e.key, "edges[0]");
    }

    #[test]
    fn client_idle_defaults_above_the_alb_idle_timeout_and_is_configurable() {
        let s = parse(GOOD).expect("valid");
        assert!(s.config.timeouts.client_idle > Duration::from_secs(60));
        let s = parse(&GOOD.replace("connect: 1s", "connect: 1s, client_idle: 350s")).expect("valid");
        assert_eq!(s.config.timeouts.client_idle, Duration::from_secs(350));
        let e = parse(&GOOD.replace("connect: 1s", "connect: 1s, client_idle: 0s")).expect_err("zero");
        assert_eq!(e.key, "timeouts.client_idle");
    }

    #[test]
    fn body_read_defaults_to_ten_seconds_and_is_configurable() {
        let s = parse(GOOD).expect("valid");
        assert_eq!(s.config.timeouts.body_read, Duration::from_secs(10));
        let s = parse(&GOOD.replace("connect: 1s", "connect: 1s, body_read: 750ms")).expect("valid");
        assert_eq!(s.config.timeouts.body_read, Duration::from_millis(750));
        let e = parse(&GOOD.replace("connect: 1s", "connect: 1s, body_read: 0s")).expect_err("zero");
        assert_eq!(e.key, "timeouts.body_read");
    }

    #[test]
    fn bad_duration_is_reported() {
        let e = parse(&GOOD.replace("connect: 1s", "connect: soon")).expect_err("bad duration");
        assert!(e.to_string().contains("timeouts"), "{e}");
    }
}
