//! A fault-injecting HTTP proxy for the provisioner's fault tests: it sits on 127.0.0.1 (port 0)
//! between a client (the AWS SDK, or a kube client) and its server (the AWS emulator, the fake
//! Kubernetes API server), forwards every request, and answers some of them with a fault instead,
//! by rules the test installs:
//!
//! ```no_run
//! # async fn demo() {
//! use std::time::Duration;
//! use gatehouse_tests::fault_proxy::{FaultProxy, Fault, On, When};
//! let proxy = FaultProxy::start("http://127.0.0.1:4566").await;
//! // The first two DescribeTargetHealth calls are throttled, every RegisterTargets for 3 s fails.
//! proxy.inject(On::action("DescribeTargetHealth"), When::First(2), Fault::Throttle);
//! proxy.inject(On::action("RegisterTargets"), When::For(Duration::from_secs(3)), Fault::InternalFailure);
//! // ... point the client at proxy.url(), run, then assert on what reached the emulator:
//! assert!(proxy.calls().iter().all(|c| !(c.action == "DeregisterTargets" && c.reached_upstream)));
//! # }
//! ```
//!
//! It also plays what the emulators do not model of AWS (see [`AwsModel`]): RegisterTargets
//! refused as AWS refuses it (an `ip` target outside the VPC without `AvailabilityZone=all`, one
//! inside with it, an IPv6 address in an IPv4 group), target health states other than the
//! emulators' constant `healthy`, and the deregistration delay during which a deregistered target
//! is `draining`.
//!
//! A request is named by its ELBv2 `Action` (from the form-encoded body of the query protocol),
//! else by `METHOD /path`. Every request is recorded with its parameters and what the proxy did.
//! Only loopback: it binds 127.0.0.1 and forwards only to the upstream it was given. Dropping the
//! proxy stops it and every connection it holds.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode, Uri, header};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};

/// What the proxy does instead of (or on top of) forwarding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// 400 with the ELBv2 query-protocol error `Throttling` ("Rate exceeded"), as AWS answers when
    /// the account's request rate is exceeded. Not forwarded.
    Throttle,
    /// 500 with the query-protocol error `InternalFailure`. Not forwarded.
    InternalFailure,
    /// Waits this long, then forwards.
    Delay(Duration),
    /// Forwards at once (the server acts, and answers from what it holds, on arrival), then
    /// holds the answer this long: what a reader sees is as of when it asked.
    SlowAnswer(Duration),
    /// Closes the connection without answering. Not forwarded.
    Drop,
    /// Forwards (the server acts on the request), then closes the connection instead of
    /// answering: the client cannot know whether its call happened.
    DropAfterForward,
    /// Accepts the request and never answers (a hung server); not forwarded.
    Hang,
}

/// What AWS does and the emulators do not, played on top of them. Every part is off until set.
#[derive(Clone, Debug, Default)]
pub struct AwsModel {
    /// The VPC's CIDR blocks: RegisterTargets of an `ip` target outside them without
    /// `AvailabilityZone=all`, or inside them with it, is refused with AWS's ValidationError.
    pub vpc_cidrs: Option<Vec<String>>,
    /// An IPv4 target group: RegisterTargets of an IPv6 address is refused as AWS refuses it.
    pub ipv4_only: bool,
    /// Target health states by `id:port`, answered instead of the emulator's.
    pub health: BTreeMap<String, (String, Option<String>)>,
    /// How long a target deregistered through the proxy stays `draining` (the deregistration
    /// delay); `None`: gone at once, as in the emulators.
    pub drain_for: Option<Duration>,
    /// The `IpAddressType` DescribeTargetGroups reports for every group (MiniStack reports
    /// none, which AWS would only do for an IPv4 group).
    pub ip_address_type: Option<String>,
    /// How long a target registered through the proxy stays `initial` before it turns
    /// `healthy` (the health checks' healthy threshold times their interval); `None`: healthy
    /// at once, as in the emulators.
    pub healthy_after: Option<Duration>,
}

/// Which requests a rule looks at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum On {
    /// Every request.
    Any,
    /// ELBv2 requests with this `Action`.
    Action(String),
    /// Requests whose path contains this, e.g. `/leases/`.
    Path(String),
}

impl On {
    /// ELBv2 requests with this `Action`, e.g. `DescribeTargetHealth`.
    pub fn action(action: &str) -> Self {
        Self::Action(action.to_owned())
    }

    /// Requests whose path contains `part`.
    pub fn path(part: &str) -> Self {
        Self::Path(part.to_owned())
    }

    fn matches(&self, action: &str, path: &str) -> bool {
        match self {
            Self::Any => true,
            Self::Action(a) => a == action,
            Self::Path(p) => path.contains(p.as_str()),
        }
    }
}

/// Which of the matching requests (counted from 1, since the rule was installed) get the fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum When {
    /// Only the nth.
    Nth(u32),
    /// The first n.
    First(u32),
    /// The nth and every one after it.
    From(u32),
    /// Every one.
    Always,
    /// Every one for this long after the rule was installed.
    For(Duration),
}

#[derive(Debug)]
struct Rule {
    on: On,
    when: When,
    fault: Fault,
    installed: Instant,
    seen: u32,
}

impl Rule {
    /// Counts a matching request; whether it gets the fault.
    fn fires(&mut self, now: Instant) -> bool {
        self.seen += 1;
        match self.when {
            When::Nth(n) => self.seen == n,
            When::First(n) => self.seen <= n,
            When::From(n) => self.seen >= n,
            When::Always => true,
            When::For(d) => now.duration_since(self.installed) < d,
        }
    }
}

/// One request the proxy saw, and what it did with it.
#[derive(Clone, Debug)]
pub struct Call {
    /// When it arrived (comparable across proxies of one test process).
    pub at: Instant,
    /// The ELBv2 `Action`, else `METHOD /path`.
    pub action: String,
    /// The decoded form parameters (ELBv2), else empty.
    pub params: Vec<(String, String)>,
    /// The fault applied, if any.
    pub fault: Option<Fault>,
    /// Whether the request was forwarded to the upstream server.
    pub reached_upstream: bool,
    /// The status the client received; `None` when the connection was closed instead.
    pub status: Option<u16>,
}

impl Call {
    /// The targets of a RegisterTargets/DeregisterTargets/DescribeTargetHealth call, as `id:port`.
    pub fn targets(&self) -> Vec<String> {
        let param = |key: String| self.params.iter().find(|(k, _)| *k == key).map(|(_, v)| v.clone());
        (1..)
            .map_while(|n| {
                let id = param(format!("Targets.member.{n}.Id"))?;
                let port = param(format!("Targets.member.{n}.Port")).unwrap_or_default();
                Some(format!("{id}:{port}"))
            })
            .collect()
    }

    /// Whether the upstream answered it with 2xx.
    pub fn succeeded(&self) -> bool {
        self.status.is_some_and(|s| (200..300).contains(&s))
    }
}

#[derive(Debug, Default)]
struct State {
    rules: Vec<Rule>,
    calls: Vec<Call>,
    model: AwsModel,
    /// Targets deregistered through the proxy (`id:port`), and when.
    deregistered: BTreeMap<String, Instant>,
    /// Targets registered through the proxy (`id:port`), and when.
    registered: BTreeMap<String, Instant>,
}

/// A running fault proxy. Dropping it stops the listener and every open connection.
#[derive(Debug)]
pub struct FaultProxy {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    task: JoinHandle<()>,
}

type ProxyBody = BoxBody<Bytes, hyper::Error>;

struct Shared {
    upstream: Uri,
    client: Client<HttpConnector, Full<Bytes>>,
    state: Arc<Mutex<State>>,
}

impl FaultProxy {
    /// Starts a proxy on 127.0.0.1 and a free port, forwarding to `upstream` (`http://host:port`,
    /// a loopback address).
    ///
    /// # Panics
    /// If `upstream` is not a loopback `http://` URL or no loopback port can be bound.
    pub async fn start(upstream: &str) -> Self {
        let upstream: Uri = upstream.trim_end_matches('/').parse().expect("upstream URL");
        let host = upstream.host().unwrap_or_default();
        assert!(
            upstream.scheme_str() == Some("http") && (host == "localhost" || host.starts_with("127.")),
            "the fault proxy forwards only to loopback http:// servers, not {upstream}"
        );
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind the fault proxy on 127.0.0.1");
        let addr = listener.local_addr().expect("local addr");
        let state = Arc::new(Mutex::new(State::default()));
        let shared = Arc::new(Shared {
            upstream,
            client: Client::builder(TokioExecutor::new()).build_http(),
            state: state.clone(),
        });
        let task = tokio::spawn(async move {
            // Owned by this task: aborting it (Drop) drops the set, which aborts every connection.
            let mut connections = JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    // Out of file descriptors, say: wait instead of spinning.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                };
                let shared = shared.clone();
                connections.spawn(async move {
                    let service = service_fn(move |req| handle(shared.clone(), req));
                    // An error here is mostly a connection the proxy closed on purpose (Fault::Drop).
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .with_upgrades()
                        .await;
                });
                while connections.try_join_next().is_some() {}
            }
        });
        Self { addr, state, task }
    }

    /// `http://127.0.0.1:<port>`: what the client should use as its endpoint.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Installs a rule. Rules are tried in the order installed; the first whose `when` holds
    /// decides (each rule counts every request it matches, whether or not it fires).
    pub fn inject(&self, on: On, when: When, fault: Fault) {
        self.lock().rules.push(Rule { on, when, fault, installed: Instant::now(), seen: 0 });
    }

    /// Removes every rule: from now on everything is forwarded.
    pub fn clear(&self) {
        self.lock().rules.clear();
    }

    /// Every request so far, oldest first.
    pub fn calls(&self) -> Vec<Call> {
        self.lock().calls.clone()
    }

    /// The requests with this action, oldest first.
    pub fn calls_of(&self, action: &str) -> Vec<Call> {
        self.lock().calls.iter().filter(|c| c.action == action).cloned().collect()
    }

    /// Forgets the recorded requests (rules stay).
    pub fn forget(&self) {
        self.lock().calls.clear();
    }

    /// Plays `model` from now on (see [`AwsModel`]).
    pub fn model(&self, model: AwsModel) {
        self.lock().model = model;
    }

    /// Answers `state` (with an optional reason code) for target `id:port` in DescribeTargetHealth,
    /// as the ALB's health checks would; `None` goes back to the emulator's answer.
    pub fn set_health(&self, target: &str, state: Option<(&str, Option<&str>)>) {
        let mut s = self.lock();
        match state {
            Some((state, reason)) => {
                s.model.health.insert(target.to_owned(), (state.to_owned(), reason.map(str::to_owned)));
            }
            None => {
                s.model.health.remove(target);
            }
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// `sdk` with its endpoint set to `url` (a [`FaultProxy::url`]). Setting the endpoint on a copy
/// of a loaded config is not enough: a service client re-reads `AWS_ENDPOINT_URL` unless the
/// endpoint was set in code, which is what this records.
pub fn sdk_via(sdk: &aws_config::SdkConfig, url: &str) -> aws_config::SdkConfig {
    let mut builder = sdk.to_builder().endpoint_url(url);
    builder.insert_origin("endpoint_url", aws_types::origin::Origin::shared_config());
    builder.build()
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Handles one request: name it, pick a fault, forward or not, record.
async fn handle(shared: Arc<Shared>, req: Request<Incoming>) -> Result<Response<ProxyBody>, std::io::Error> {
    let (parts, body) = req.into_parts();
    let body = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    let path = parts.uri.path().to_owned();
    let params = if is_form(&parts.headers) { parse_form(&body) } else { Vec::new() };
    let action = params
        .iter()
        .find(|(k, _)| k == "Action")
        .map_or_else(|| format!("{} {path}", parts.method), |(_, v)| v.clone());
    let now = Instant::now();
    let fault = {
        let mut state = shared.state.lock().unwrap_or_else(|p| p.into_inner());
        let mut chosen = None;
        for rule in state.rules.iter_mut().filter(|r| r.on.matches(&action, &path)) {
            if rule.fires(now) && chosen.is_none() {
                chosen = Some(rule.fault);
            }
        }
        chosen
    };
    let refusal = if fault.is_none() && action == "RegisterTargets" {
        let state = shared.state.lock().unwrap_or_else(|p| p.into_inner());
        aws_refusal(&state.model, &params)
    } else {
        None
    };
    let mut call =
        Call { at: now, action: action.clone(), params: params.clone(), fault, reached_upstream: false, status: None };
    if let Some(message) = refusal {
        let response = query_error(StatusCode::BAD_REQUEST, "Sender", "ValidationError", &message);
        call.status = Some(response.status().as_u16());
        shared.state.lock().unwrap_or_else(|p| p.into_inner()).calls.push(call);
        return Ok(response);
    }

    let result = match fault {
        Some(Fault::Throttle) => Ok(query_error(StatusCode::BAD_REQUEST, "Sender", "Throttling", "Rate exceeded")),
        Some(Fault::InternalFailure) => Ok(query_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "Receiver",
            "InternalFailure",
            "The request processing has failed because of an unknown error, exception or failure.",
        )),
        Some(Fault::Drop) => Err(std::io::Error::other("fault proxy: connection dropped")),
        Some(Fault::Hang) => {
            shared.state.lock().unwrap_or_else(|p| p.into_inner()).calls.push(call);
            std::future::pending::<()>().await;
            unreachable!("a hung request never completes")
        }
        Some(Fault::Delay(d)) => {
            tokio::time::sleep(d).await;
            call.reached_upstream = true;
            let response = forward(&shared, parts, body).await;
            Ok(model_response(&shared, &action, &params, response).await)
        }
        Some(Fault::SlowAnswer(d)) => {
            call.reached_upstream = true;
            let response = forward(&shared, parts, body).await;
            let response = model_response(&shared, &action, &params, response).await;
            tokio::time::sleep(d).await;
            Ok(response)
        }
        Some(Fault::DropAfterForward) => {
            call.reached_upstream = true;
            let response = forward(&shared, parts, body).await;
            // Let the upstream finish (a watch would never end: do not wait for one).
            let _ = tokio::time::timeout(Duration::from_secs(5), response.into_body().collect()).await;
            Err(std::io::Error::other("fault proxy: connection dropped after forwarding"))
        }
        None => {
            call.reached_upstream = true;
            let response = forward(&shared, parts, body).await;
            Ok(model_response(&shared, &action, &params, response).await)
        }
    };
    call.status = result.as_ref().ok().map(|r| r.status().as_u16());
    shared.state.lock().unwrap_or_else(|p| p.into_inner()).calls.push(call);
    result
}

/// The ValidationError AWS answers a RegisterTargets with, if the model says it would.
fn aws_refusal(model: &AwsModel, params: &[(String, String)]) -> Option<String> {
    let param = |key: String| params.iter().find(|(k, _)| *k == key).map(|(_, v)| v.clone());
    for n in 1.. {
        let Some(id) = param(format!("Targets.member.{n}.Id")) else { break };
        let Ok(ip) = id.parse::<std::net::IpAddr>() else { continue };
        let zone = param(format!("Targets.member.{n}.AvailabilityZone"));
        if model.ipv4_only && ip.is_ipv6() {
            return Some(format!("The IP address '{id}' is not a valid IPv4 address"));
        }
        if let Some(cidrs) = &model.vpc_cidrs {
            let inside = cidrs.iter().any(|c| cidr_contains(c, &ip));
            match (inside, zone.as_deref()) {
                (false, Some("all")) | (true, None) => {}
                (false, _) => {
                    return Some(format!(
                        "You must specify a valid Availability Zone or select 'all' for all enabled Availability zones, since the IP address '{id}' is outside the VPC"
                    ));
                }
                (true, Some(_)) => {
                    return Some(format!(
                        "The IP address '{id}' is within the VPC, and cannot have its Availability Zone overridden to 'all' from 'us-east-1a'"
                    ));
                }
            }
        }
    }
    None
}

fn cidr_contains(cidr: &str, ip: &std::net::IpAddr) -> bool {
    let Some((net, prefix)) = cidr.split_once('/') else { return false };
    let (Ok(net), Ok(prefix)) = (net.parse::<std::net::IpAddr>(), prefix.parse::<u32>()) else { return false };
    match (net, ip) {
        (std::net::IpAddr::V4(n), std::net::IpAddr::V4(i)) => {
            let mask = if prefix == 0 { 0 } else { u32::MAX << (32 - prefix.min(32)) };
            u32::from(n) & mask == u32::from(*i) & mask
        }
        (std::net::IpAddr::V6(n), std::net::IpAddr::V6(i)) => {
            let mask = if prefix == 0 { 0 } else { u128::MAX << (128 - prefix.min(128)) };
            u128::from(n) & mask == u128::from(*i) & mask
        }
        _ => false,
    }
}

/// Applies the model to an answer from the emulator: remembers deregistrations, and rewrites
/// DescribeTargetHealth's states (set health, draining targets).
async fn model_response(
    shared: &Shared,
    action: &str,
    params: &[(String, String)],
    response: Response<ProxyBody>,
) -> Response<ProxyBody> {
    if !response.status().is_success() {
        return response;
    }
    if action == "DescribeTargetGroups" {
        let address_type = shared.state.lock().unwrap_or_else(|p| p.into_inner()).model.ip_address_type.clone();
        let Some(address_type) = address_type else { return response };
        let (mut parts, body) = response.into_parts();
        let Ok(bytes) = body.collect().await.map(|b| b.to_bytes()) else {
            return plain(StatusCode::BAD_GATEWAY, "fault proxy: the upstream body broke off");
        };
        parts.headers.remove(header::CONTENT_LENGTH);
        return Response::from_parts(
            parts,
            full(with_ip_address_type(&String::from_utf8_lossy(&bytes), &address_type)),
        );
    }
    if !matches!(action, "DeregisterTargets" | "RegisterTargets" | "DescribeTargetHealth") {
        return response;
    }
    let targets: Vec<String> = Call {
        at: Instant::now(),
        action: action.to_owned(),
        params: params.to_vec(),
        fault: None,
        reached_upstream: true,
        status: None,
    }
    .targets();
    let now = Instant::now();
    if action != "DescribeTargetHealth" {
        let mut state = shared.state.lock().unwrap_or_else(|p| p.into_inner());
        for t in targets {
            if action == "DeregisterTargets" {
                state.registered.remove(&t);
                if state.model.drain_for.is_some() {
                    state.deregistered.insert(t, now);
                }
            } else {
                state.deregistered.remove(&t);
                if state.model.healthy_after.is_some() {
                    state.registered.insert(t, now);
                }
            }
        }
        return response;
    }
    let (mut model, draining) = {
        let mut state = shared.state.lock().unwrap_or_else(|p| p.into_inner());
        let (drain_for, healthy_after) = (state.model.drain_for, state.model.healthy_after);
        state.deregistered.retain(|_, at| drain_for.is_some_and(|d| now.duration_since(*at) < d));
        state.registered.retain(|_, at| healthy_after.is_some_and(|d| now.duration_since(*at) < d));
        let mut model = state.model.clone();
        for t in state.registered.keys() {
            model
                .health
                .entry(t.clone())
                .or_insert_with(|| ("initial".into(), Some("Elb.RegistrationInProgress".into())));
        }
        (model, state.deregistered.keys().cloned().collect::<Vec<_>>())
    };
    model.health.retain(|t, _| !draining.contains(t));
    if model.health.is_empty() && draining.is_empty() {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let Ok(bytes) = body.collect().await.map(|b| b.to_bytes()) else {
        return plain(StatusCode::BAD_GATEWAY, "fault proxy: the upstream body broke off");
    };
    let asked: Vec<String> = targets;
    let xml = rewrite_health(&String::from_utf8_lossy(&bytes), &model.health, &draining, &asked);
    parts.headers.remove(header::CONTENT_LENGTH);
    Response::from_parts(parts, full(xml))
}

/// DescribeTargetHealth's XML with the modelled states: a target with a set health answers it; a
/// target deregistered within the drain time is listed as `draining` (when the request asked for
/// all targets, or for it).
fn rewrite_health(
    xml: &str,
    health: &BTreeMap<String, (String, Option<String>)>,
    draining: &[String],
    asked: &[String],
) -> String {
    let mut out = String::new();
    let mut rest = xml;
    let mut listed = Vec::new();
    while let Some(start) = rest.find("<member>") {
        let Some(len) = rest[start..].find("</member>") else { break };
        let end = start + len + "</member>".len();
        out.push_str(&rest[..start]);
        let member = &rest[start..end];
        let id = between(member, "<Id>", "</Id>").unwrap_or_default();
        let port = between(member, "<Port>", "</Port>").unwrap_or_default();
        let key = format!("{id}:{port}");
        listed.push(key.clone());
        let state = if draining.contains(&key) {
            Some(("draining".to_owned(), Some("Target.DeregistrationInProgress".to_owned())))
        } else {
            health.get(&key).cloned()
        };
        match (state, member.find("<TargetHealth>"), member.find("</TargetHealth>")) {
            (Some((state, reason)), Some(a), Some(b)) => {
                out.push_str(&member[..a]);
                out.push_str(&health_xml(&state, reason.as_deref()));
                out.push_str(&member[b + "</TargetHealth>".len()..]);
            }
            _ => out.push_str(member),
        }
        rest = &rest[end..];
    }
    out.push_str(rest);
    let missing: String = draining
        .iter()
        .filter(|t| !listed.contains(t) && (asked.is_empty() || asked.contains(t)))
        .filter_map(|t| {
            let (id, port) = t.rsplit_once(':')?;
            Some(format!(
                "<member><Target><Id>{id}</Id><Port>{port}</Port></Target><HealthCheckPort>traffic-port</HealthCheckPort>{}</member>",
                health_xml("draining", Some("Target.DeregistrationInProgress"))
            ))
        })
        .collect();
    if missing.is_empty() {
        return out;
    }
    if out.contains("<TargetHealthDescriptions/>") {
        return out.replacen(
            "<TargetHealthDescriptions/>",
            &format!("<TargetHealthDescriptions>{missing}</TargetHealthDescriptions>"),
            1,
        );
    }
    out.replacen("</TargetHealthDescriptions>", &format!("{missing}</TargetHealthDescriptions>"), 1)
}

/// DescribeTargetGroups' XML with every group's `IpAddressType` set to `address_type`: replaced
/// where the emulator reports one, else added after each group's ARN.
fn with_ip_address_type(xml: &str, address_type: &str) -> String {
    let element = format!("<IpAddressType>{address_type}</IpAddressType>");
    let mut out = String::new();
    let mut rest = xml;
    let (open, close) = if xml.contains("<IpAddressType>") {
        ("<IpAddressType>", "</IpAddressType>")
    } else {
        ("", "</TargetGroupArn>")
    };
    while let Some(at) = rest.find(close) {
        let end = at + close.len();
        if open.is_empty() {
            out.push_str(&rest[..end]);
            out.push_str(&element);
        } else {
            let start = rest[..at].rfind(open).unwrap_or(at);
            out.push_str(&rest[..start]);
            out.push_str(&element);
        }
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}

fn health_xml(state: &str, reason: Option<&str>) -> String {
    let reason = reason.map(|r| format!("<Reason>{r}</Reason>")).unwrap_or_default();
    format!("<TargetHealth><State>{state}</State>{reason}</TargetHealth>")
}

fn between<'a>(text: &'a str, open: &str, close: &str) -> Option<&'a str> {
    let start = text.find(open)? + open.len();
    let len = text[start..].find(close)?;
    Some(&text[start..start + len])
}

/// Forwards to the upstream: same method, path, query, headers and body. A failure to reach it is
/// a 502 to the client.
async fn forward(shared: &Shared, mut parts: http::request::Parts, body: Bytes) -> Response<ProxyBody> {
    let path_and_query = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let uri = format!("{}{path_and_query}", shared.upstream);
    parts.uri = match uri.parse() {
        Ok(uri) => uri,
        Err(_) => return plain(StatusCode::BAD_GATEWAY, "fault proxy: bad upstream URI"),
    };
    strip_hop_by_hop(&mut parts.headers);
    match shared.client.request(Request::from_parts(parts, Full::new(body))).await {
        Ok(response) => {
            let (mut parts, body) = response.into_parts();
            strip_hop_by_hop(&mut parts.headers);
            Response::from_parts(parts, body.boxed())
        }
        Err(e) => plain(StatusCode::BAD_GATEWAY, &format!("fault proxy: upstream unreachable: {e}")),
    }
}

fn strip_hop_by_hop(headers: &mut HeaderMap) {
    for name in
        [header::CONNECTION, header::TRANSFER_ENCODING, header::TE, header::UPGRADE, header::PROXY_AUTHORIZATION]
    {
        headers.remove(name);
    }
    headers.remove("keep-alive");
}

/// An error as the ELBv2 query protocol sends it.
fn query_error(status: StatusCode, kind: &str, code: &str, message: &str) -> Response<ProxyBody> {
    let xml = format!(
        "<ErrorResponse xmlns=\"http://elasticloadbalancing.amazonaws.com/doc/2015-12-01/\">\n  \
         <Error>\n    <Type>{kind}</Type>\n    <Code>{code}</Code>\n    <Message>{message}</Message>\n  \
         </Error>\n  <RequestId>00000000-0000-4000-8000-fa0170000000</RequestId>\n</ErrorResponse>\n"
    );
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "text/xml")
        .header("x-amzn-requestid", "00000000-0000-4000-8000-fa0170000000")
        .body(full(xml))
        .unwrap_or_else(|_| Response::new(full(String::new())))
}

fn plain(status: StatusCode, text: &str) -> Response<ProxyBody> {
    let mut response = Response::new(full(text.to_owned()));
    *response.status_mut() = status;
    response
}

fn full(text: String) -> ProxyBody {
    Full::new(Bytes::from(text)).map_err(|never: Infallible| match never {}).boxed()
}

fn is_form(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"))
}

/// `a=b&c=d%2Fe` -> [("a", "b"), ("c", "d/e")].
fn parse_form(body: &[u8]) -> Vec<(String, String)> {
    body.split(|&b| b == b'&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let mut kv = pair.splitn(2, |&b| b == b'=');
            let key = decode(kv.next().unwrap_or_default());
            (key, decode(kv.next().unwrap_or_default()))
        })
        .collect()
}

fn decode(s: &[u8]) -> String {
    let hex = |b: u8| char::from(b).to_digit(16).and_then(|d| u8::try_from(d).ok());
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        let byte = match (s[i], s.get(i + 1).copied().and_then(hex), s.get(i + 2).copied().and_then(hex)) {
            (b'%', Some(hi), Some(lo)) => {
                i += 2;
                hi * 16 + lo
            }
            (b'+', _, _) => b' ',
            (b, _, _) => b,
        };
        out.push(byte);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_bodies_decode() {
        let form = parse_form(b"Action=RegisterTargets&TargetGroupArn=arn%3Aaws%3Ax&Targets.member.1.Id=10.0.0.1&Targets.member.1.Port=30080&x=a+b%2");
        assert_eq!(form[0], ("Action".into(), "RegisterTargets".into()));
        assert_eq!(form[1].1, "arn:aws:x");
        assert_eq!(form[4].1, "a b%2");
        let call = Call {
            at: Instant::now(),
            action: "RegisterTargets".into(),
            params: form,
            fault: None,
            reached_upstream: true,
            status: Some(200),
        };
        assert_eq!(call.targets(), ["10.0.0.1:30080"]);
    }

    fn register(targets: &[(&str, Option<&str>)]) -> Vec<(String, String)> {
        let mut params = vec![("Action".to_owned(), "RegisterTargets".to_owned())];
        for (n, (id, zone)) in targets.iter().enumerate() {
            params.push((format!("Targets.member.{}.Id", n + 1), (*id).to_owned()));
            if let Some(zone) = zone {
                params.push((format!("Targets.member.{}.AvailabilityZone", n + 1), (*zone).to_owned()));
            }
        }
        params
    }

    #[test]
    fn the_model_refuses_registrations_as_aws_does() {
        let model = AwsModel { vpc_cidrs: Some(vec!["10.42.0.0/16".into()]), ipv4_only: true, ..AwsModel::default() };
        assert_eq!(aws_refusal(&model, &register(&[("10.42.0.5", None), ("192.168.1.5", Some("all"))])), None);
        let outside = aws_refusal(&model, &register(&[("192.168.1.5", None)])).expect("refused");
        assert!(outside.contains("since the IP address '192.168.1.5' is outside the VPC"), "{outside}");
        let inside = aws_refusal(&model, &register(&[("10.42.0.5", Some("all"))])).expect("refused");
        assert!(inside.contains("is within the VPC"), "{inside}");
        let v6 = aws_refusal(&model, &register(&[("fd00::e", None)])).expect("refused");
        assert_eq!(v6, "The IP address 'fd00::e' is not a valid IPv4 address");
        assert_eq!(aws_refusal(&AwsModel::default(), &register(&[("fd00::e", None)])), None, "off until set");
    }

    #[test]
    fn health_answers_are_rewritten_and_draining_targets_listed() {
        let xml = "<R><TargetHealthDescriptions><member><Target><Id>10.0.0.1</Id><Port>30080</Port></Target><TargetHealth><State>healthy</State></TargetHealth></member></TargetHealthDescriptions></R>";
        let health = BTreeMap::from([(
            "10.0.0.1:30080".to_owned(),
            ("initial".to_owned(), Some("Elb.RegistrationInProgress".to_owned())),
        )]);
        let out = rewrite_health(xml, &health, &["10.0.0.9:30080".to_owned()], &[]);
        assert!(out.contains("<Id>10.0.0.1</Id><Port>30080</Port></Target><TargetHealth><State>initial</State><Reason>Elb.RegistrationInProgress</Reason></TargetHealth>"), "{out}");
        assert!(out.contains("<Id>10.0.0.9</Id><Port>30080</Port></Target><HealthCheckPort>traffic-port</HealthCheckPort><TargetHealth><State>draining</State>"), "{out}");
        let empty = rewrite_health(
            "<R><TargetHealthDescriptions/></R>",
            &BTreeMap::new(),
            &["10.0.0.9:30080".to_owned()],
            &["10.0.0.1:30080".to_owned()],
        );
        assert_eq!(empty, "<R><TargetHealthDescriptions/></R>", "only the asked-for targets are listed");
        assert!(
            cidr_contains("fd00::/8", &"fd00::e".parse().expect("ip"))
                && !cidr_contains("10.0.0.0/8", &"11.0.0.1".parse().expect("ip"))
        );
        let groups = "<TargetGroups><member><TargetGroupArn>a</TargetGroupArn><LoadBalancerArns><member>lb</member></LoadBalancerArns></member></TargetGroups>";
        assert_eq!(
            with_ip_address_type(groups, "ipv6"),
            "<TargetGroups><member><TargetGroupArn>a</TargetGroupArn><IpAddressType>ipv6</IpAddressType><LoadBalancerArns><member>lb</member></LoadBalancerArns></member></TargetGroups>"
        );
        assert_eq!(
            with_ip_address_type("<a><IpAddressType>ipv4</IpAddressType></a>", "ipv6"),
            "<a><IpAddressType>ipv6</IpAddressType></a>"
        );
    }

    #[test]
    fn rules_count_matching_requests_from_one() {
        let now = Instant::now();
        let mut nth = Rule { on: On::Any, when: When::Nth(2), fault: Fault::Drop, installed: now, seen: 0 };
        assert_eq!([nth.fires(now), nth.fires(now), nth.fires(now)], [false, true, false]);
        let mut first = Rule { on: On::Any, when: When::First(2), fault: Fault::Drop, installed: now, seen: 0 };
        assert_eq!([first.fires(now), first.fires(now), first.fires(now)], [true, true, false]);
        let mut from = Rule { on: On::Any, when: When::From(2), fault: Fault::Drop, installed: now, seen: 0 };
        assert_eq!([from.fires(now), from.fires(now), from.fires(now)], [false, true, true]);
        let mut timed =
            Rule { on: On::Any, when: When::For(Duration::from_secs(1)), fault: Fault::Drop, installed: now, seen: 0 };
        assert!(timed.fires(now) && !timed.fires(now + Duration::from_secs(2)));
        assert!(On::action("RegisterTargets").matches("RegisterTargets", "/"));
        assert!(!On::action("RegisterTargets").matches("DeregisterTargets", "/"));
        assert!(On::path("/leases/").matches("GET /x/leases/y", "/x/leases/y"));
    }
}
