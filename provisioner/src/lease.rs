//! Leader election on a `coordination.k8s.io/v1` Lease, so that two replicas never both write.
//!
//! The algorithm client-go uses, kept small: a replica holds the lease while it renews it within
//! its duration; another takes over only after it has seen the lease unchanged for a whole
//! duration *by its own clock* (so clock skew between replicas does not matter), or at once when
//! the holder released it. Every write carries the resourceVersion it read, so of two replicas
//! racing for the same lease exactly one wins (the other gets 409 Conflict).
//!
//! Split brain is ruled out by time: a holder leads only until `renew_deadline` after the start
//! of its last successful renewal ([`Leadership`]), every renewal attempt is bounded by what is
//! left of that, and `renew_deadline < duration`. Another replica takes over no sooner than
//! `duration` after it *saw* that renewal, which is after it started; so the old holder has
//! stopped writing `duration - renew_deadline` before anyone else may start.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::PostParams;
use kube::{Api, Client};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;

/// Which lease, who we are, and the three timings of client-go's leader election.
#[derive(Debug, Clone)]
pub struct LeaseConfig {
    pub namespace: String,
    pub name: String,
    pub identity: String,
    /// How long a lease lasts without renewal: others wait this long after the last renewal
    /// they saw before taking over.
    pub duration: Duration,
    /// The holder stops writing this long after the start of its last successful renewal.
    pub renew_deadline: Duration,
    /// How often the holder renews, and others try to acquire.
    pub retry_period: Duration,
}

impl LeaseConfig {
    /// The defaults of client-go (and of the Kubernetes controllers that use it).
    pub const DEFAULT_DURATION: Duration = Duration::from_secs(15);
    pub const DEFAULT_RENEW_DEADLINE: Duration = Duration::from_secs(10);
    pub const DEFAULT_RETRY_PERIOD: Duration = Duration::from_secs(2);

    /// Checks `retry_period < renew_deadline < duration`, as client-go does.
    pub fn validate(&self) -> Result<(), String> {
        if self.renew_deadline >= self.duration {
            return Err(format!(
                "--renew-deadline {} must be shorter than --lease-duration {}",
                humantime::format_duration(self.renew_deadline),
                humantime::format_duration(self.duration)
            ));
        }
        if self.retry_period >= self.renew_deadline || self.retry_period.is_zero() {
            return Err(format!(
                "--retry-period {} must be above zero and shorter than --renew-deadline {}",
                humantime::format_duration(self.retry_period),
                humantime::format_duration(self.renew_deadline)
            ));
        }
        Ok(())
    }
}

/// Whether this process may write now. Cheap to clone; every clone sees the same state.
#[derive(Debug, Clone)]
pub struct Leadership {
    state: Arc<watch::Sender<Term>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Term {
    /// One-shot commands: no election, always allowed.
    Always,
    /// Leading until this instant.
    Until(Instant),
    Standby,
}

/// A write attempted without leadership.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("lost the leader election: not writing")]
pub struct NotLeader;

impl Leadership {
    /// For one-shot commands, which write without an election.
    pub fn always() -> Self {
        Self { state: Arc::new(watch::Sender::new(Term::Always)) }
    }

    /// For `watch`: not leading until [`hold`] acquires the lease.
    pub fn standby() -> Self {
        Self { state: Arc::new(watch::Sender::new(Term::Standby)) }
    }

    /// Whether writes are allowed now.
    pub fn is_leader(&self) -> bool {
        match *self.state.borrow() {
            Term::Always => true,
            Term::Until(until) => Instant::now() < until,
            Term::Standby => false,
        }
    }

    /// `Ok` when writes are allowed now; checked right before every write.
    pub fn check(&self) -> Result<(), NotLeader> {
        if self.is_leader() { Ok(()) } else { Err(NotLeader) }
    }

    /// Completes once writes are not allowed (at once if they are not now). Never completes for
    /// [`Leadership::always`].
    pub fn lost(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut rx = self.state.subscribe();
        async move {
            loop {
                let term = *rx.borrow_and_update();
                match term {
                    Term::Standby => return,
                    Term::Until(until) if Instant::now() >= until => return,
                    Term::Always => {
                        if rx.changed().await.is_err() {
                            std::future::pending::<()>().await;
                        }
                    }
                    Term::Until(until) => {
                        tokio::select! {
                            () = tokio::time::sleep_until(until) => {}
                            changed = rx.changed() => if changed.is_err() { tokio::time::sleep_until(until).await },
                        }
                    }
                }
            }
        }
    }

    /// Completes once writes are allowed.
    pub async fn gained(&self) {
        let mut rx = self.state.subscribe();
        loop {
            if self.is_leader() {
                return;
            }
            if rx.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }

    fn lead_until(&self, until: Instant) {
        self.state.send_replace(Term::Until(until));
    }

    fn stand_by(&self) {
        self.state.send_replace(Term::Standby);
    }

    /// When the current term ends, if leading on a lease.
    fn until(&self) -> Option<Instant> {
        match *self.state.borrow() {
            Term::Until(until) => Some(until),
            Term::Always | Term::Standby => None,
        }
    }
}

/// Acquires and renews the lease until `cancel`, keeping `leadership` and the `leader` gauge
/// true to it; releases the lease at the end (bounded by a renew deadline). Each attempt is
/// bounded: by what is left of the term while leading, by the renew deadline otherwise.
pub async fn hold(mut elector: Elector, leadership: Leadership, metrics: Metrics, cancel: CancellationToken) {
    let config = elector.config().clone();
    let mut was_leader = false;
    loop {
        let started = Instant::now();
        let term_left = leadership.until().filter(|until| *until > started).map(|until| until - started);
        let bound = term_left.unwrap_or(config.renew_deadline);
        match tokio::time::timeout(bound, elector.try_acquire_or_renew()).await {
            Ok(Ok(true)) => leadership.lead_until(started + config.renew_deadline),
            Ok(Ok(false)) => leadership.stand_by(),
            Ok(Err(e)) => {
                tracing::warn!(error = %crate::cluster::api_error("renew the lease", &e), "lease round failed");
            }
            Err(_) => tracing::warn!(timeout = ?bound, "lease round timed out; the API server did not answer"),
        }
        was_leader = note_transition(&leadership, &metrics, &config.identity, was_leader);
        // Sleep until the next round, waking at the end of the term to stop leading on time.
        let next = started + config.retry_period;
        loop {
            let expiry = leadership.until().filter(|u| *u > Instant::now());
            tokio::select! {
                () = cancel.cancelled() => {
                    release(&mut elector, &leadership, &metrics, config.renew_deadline).await;
                    return;
                }
                () = tokio::time::sleep_until(next) => break,
                () = sleep_until_opt(expiry) => {
                    was_leader = note_transition(&leadership, &metrics, &config.identity, was_leader);
                }
            }
        }
    }
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Logs and exports a change of leadership; returns the new state.
fn note_transition(leadership: &Leadership, metrics: &Metrics, identity: &str, was: bool) -> bool {
    let now = leadership.is_leader();
    metrics.leader.set(i64::from(now));
    if now != was {
        tracing::info!(identity, leader = now, "leadership changed");
    }
    now
}

async fn release(elector: &mut Elector, leadership: &Leadership, metrics: &Metrics, bound: Duration) {
    let was = leadership.is_leader();
    leadership.stand_by();
    metrics.leader.set(0);
    if !was {
        return;
    }
    match tokio::time::timeout(bound, elector.release()).await {
        Ok(Ok(())) => tracing::info!("released the lease"),
        Ok(Err(e)) => {
            tracing::warn!(error = %crate::cluster::api_error("release the lease", &e), "could not release the lease")
        }
        Err(_) => tracing::warn!("could not release the lease: the API server did not answer"),
    }
}

/// One replica's view of the lease.
#[derive(Debug)]
pub struct Elector {
    api: Api<Lease>,
    config: LeaseConfig,
    /// The last lease version seen and when (local clock) it was first seen.
    observed: Option<(String, Instant)>,
}

impl Elector {
    /// An elector for `config`'s lease.
    pub fn new(client: Client, config: LeaseConfig) -> Self {
        Self { api: Api::namespaced(client, &config.namespace), config, observed: None }
    }

    /// The lease and timings.
    pub fn config(&self) -> &LeaseConfig {
        &self.config
    }

    /// One round: acquire, renew or observe. `Ok(true)` when this replica holds the lease now.
    pub async fn try_acquire_or_renew(&mut self) -> Result<bool, kube::Error> {
        let now = Instant::now();
        let Some(current) = self.api.get_opt(&self.config.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.config.name.clone()),
                    namespace: Some(self.config.namespace.clone()),
                    ..Default::default()
                },
                spec: Some(self.spec(None, true)),
            };
            return self.write(self.api.create(&PostParams::default(), &lease).await);
        };
        let version = current.metadata.resource_version.clone().unwrap_or_default();
        if self.observed.as_ref().is_none_or(|(v, _)| *v != version) {
            self.observed = Some((version, now));
        }
        let spec = current.spec.clone().unwrap_or_default();
        let holder = spec.holder_identity.as_deref().filter(|h| !h.is_empty());
        let ours = holder == Some(self.config.identity.as_str());
        let duration = spec
            .lease_duration_seconds
            .and_then(|s| u64::try_from(s).ok())
            .map_or(self.config.duration, Duration::from_secs);
        let expired = self.observed.as_ref().is_some_and(|(_, seen)| now.duration_since(*seen) >= duration);
        if !ours && holder.is_some() && !expired {
            return Ok(false);
        }
        let mut next = current;
        next.spec = Some(self.spec(Some(&spec), !ours));
        // `next` keeps the resourceVersion we read: the write fails with 409 if anyone wrote since.
        self.write(self.api.replace(&self.config.name, &PostParams::default(), &next).await)
    }

    /// Gives the lease up (if held), so another replica takes over at once instead of after
    /// a whole duration.
    pub async fn release(&mut self) -> Result<(), kube::Error> {
        let Some(mut current) = self.api.get_opt(&self.config.name).await? else { return Ok(()) };
        let spec = current.spec.get_or_insert_default();
        if spec.holder_identity.as_deref() != Some(self.config.identity.as_str()) {
            return Ok(());
        }
        spec.holder_identity = None;
        spec.acquire_time = None;
        spec.renew_time = None;
        match self.api.replace(&self.config.name, &PostParams::default(), &current).await {
            Ok(_) => Ok(()),
            // Somebody already took it: nothing left to release.
            Err(kube::Error::Api(s)) if s.is_conflict() => Ok(()),
            Err(e) => Err(e),
        }
    }

    fn spec(&self, previous: Option<&LeaseSpec>, acquiring: bool) -> LeaseSpec {
        let now = MicroTime(Timestamp::now());
        let previous = previous.cloned().unwrap_or_default();
        LeaseSpec {
            holder_identity: Some(self.config.identity.clone()),
            lease_duration_seconds: Some(i32::try_from(self.config.duration.as_secs().max(1)).unwrap_or(i32::MAX)),
            acquire_time: if acquiring { Some(now.clone()) } else { previous.acquire_time.clone() },
            renew_time: Some(now),
            lease_transitions: Some(
                previous.lease_transitions.unwrap_or(0) + i32::from(acquiring && previous.holder_identity.is_some()),
            ),
            ..previous
        }
    }

    fn write(&mut self, result: Result<Lease, kube::Error>) -> Result<bool, kube::Error> {
        match result {
            Ok(lease) => {
                self.observed = lease.metadata.resource_version.map(|v| (v, Instant::now()));
                Ok(true)
            }
            // Lost the race: another replica wrote first.
            Err(kube::Error::Api(s)) if s.is_conflict() || s.is_already_exists() => Ok(false),
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{Method, Request, Response};
    use kube::client::Body;
    use serde_json::json;

    type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

    fn elector(identity: &str) -> (Elector, Handle) {
        let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let config = LeaseConfig {
            namespace: "gh".into(),
            name: "gp".into(),
            identity: identity.into(),
            duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        };
        (Elector::new(Client::new(service, "default"), config), handle)
    }

    async fn next(handle: &mut Handle) -> (Method, serde_json::Value, tower_test::mock::SendResponse<Response<Body>>) {
        let (request, send) = handle.next_request().await.expect("a request");
        let method = request.method().clone();
        let bytes = request.into_body().collect_bytes().await.expect("body");
        let body = if bytes.is_empty() { json!(null) } else { serde_json::from_slice(&bytes).expect("json body") };
        (method, body, send)
    }

    fn reply(send: tower_test::mock::SendResponse<Response<Body>>, status: u16, body: serde_json::Value) {
        send.send_response(
            Response::builder().status(status).body(Body::from(body.to_string().into_bytes())).expect("response"),
        );
    }

    fn not_found() -> serde_json::Value {
        json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404, "message": "not found"})
    }

    fn conflict() -> serde_json::Value {
        json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Conflict", "code": 409, "message": "the object has been modified"})
    }

    fn lease(holder: &str, rv: &str) -> serde_json::Value {
        json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": {"name": "gp", "namespace": "gh", "resourceVersion": rv},
               "spec": {"holderIdentity": holder, "leaseDurationSeconds": 15, "renewTime": "2026-11-26T20:00:00.000000Z", "leaseTransitions": 3}})
    }

    #[test]
    fn timings_must_nest_as_client_go_requires() {
        let ok = LeaseConfig {
            namespace: "gh".into(),
            name: "gp".into(),
            identity: "a".into(),
            duration: LeaseConfig::DEFAULT_DURATION,
            renew_deadline: LeaseConfig::DEFAULT_RENEW_DEADLINE,
            retry_period: LeaseConfig::DEFAULT_RETRY_PERIOD,
        };
        assert_eq!(ok.validate(), Ok(()));
        let deadline = LeaseConfig { renew_deadline: Duration::from_secs(15), ..ok.clone() };
        assert_eq!(deadline.validate(), Err("--renew-deadline 15s must be shorter than --lease-duration 15s".into()));
        let retry = LeaseConfig { retry_period: Duration::from_secs(10), ..ok };
        assert!(retry.validate().expect_err("retry").starts_with("--retry-period 10s must be"));
    }

    #[tokio::test(start_paused = true)]
    async fn a_term_ends_on_time_and_lost_wakes_then() {
        let leadership = Leadership::standby();
        assert!(!leadership.is_leader());
        let until = Instant::now() + Duration::from_secs(10);
        leadership.lead_until(until);
        assert!(leadership.is_leader() && leadership.check().is_ok());
        let lost = tokio::spawn(leadership.lost());
        tokio::time::sleep(Duration::from_secs(9)).await;
        assert!(!lost.is_finished() && leadership.is_leader());
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert!(lost.await.is_ok());
        assert_eq!(leadership.check(), Err(NotLeader));
        // A renewal moves the end; standing by ends it at once.
        leadership.lead_until(Instant::now() + Duration::from_secs(5));
        let lost = tokio::spawn(leadership.lost());
        tokio::task::yield_now().await;
        leadership.stand_by();
        assert!(lost.await.is_ok());
        assert!(Leadership::always().is_leader());
    }

    #[tokio::test]
    async fn absent_lease_is_created_with_our_identity() {
        let (mut e, mut h) = elector("a");
        let server = tokio::spawn(async move {
            let (m, _, send) = next(&mut h).await;
            assert_eq!(m, Method::GET);
            reply(send, 404, not_found());
            let (m, body, send) = next(&mut h).await;
            assert_eq!(m, Method::POST);
            assert_eq!(body["spec"]["holderIdentity"], "a");
            assert_eq!(body["spec"]["leaseDurationSeconds"], 15);
            assert!(body["spec"]["renewTime"].is_string());
            let mut created = body.clone();
            created["metadata"]["resourceVersion"] = json!("1");
            reply(send, 201, created);
        });
        assert!(e.try_acquire_or_renew().await.expect("round"));
        server.await.expect("server");
    }

    #[tokio::test]
    async fn live_lease_of_another_holder_is_left_alone() {
        let (mut e, mut h) = elector("b");
        let server = tokio::spawn(async move {
            let (_, _, send) = next(&mut h).await;
            reply(send, 200, lease("a", "7"));
        });
        assert!(!e.try_acquire_or_renew().await.expect("round"));
        server.await.expect("server");
    }

    #[tokio::test]
    async fn own_lease_is_renewed_with_the_read_resource_version() {
        let (mut e, mut h) = elector("a");
        let server = tokio::spawn(async move {
            let (_, _, send) = next(&mut h).await;
            reply(send, 200, lease("a", "7"));
            let (m, body, send) = next(&mut h).await;
            assert_eq!(m, Method::PUT);
            assert_eq!(body["metadata"]["resourceVersion"], "7");
            assert_eq!(body["spec"]["leaseTransitions"], 3, "a renewal is not a transition");
            assert_ne!(body["spec"]["renewTime"], "2026-11-26T20:00:00.000000Z");
            let mut renewed = body.clone();
            renewed["metadata"]["resourceVersion"] = json!("8");
            reply(send, 200, renewed);
        });
        assert!(e.try_acquire_or_renew().await.expect("round"));
        server.await.expect("server");
    }

    #[tokio::test]
    async fn released_lease_is_taken_at_once_and_a_lost_race_is_not_an_error() {
        let (mut e, mut h) = elector("b");
        let server = tokio::spawn(async move {
            let (_, _, send) = next(&mut h).await;
            reply(send, 200, lease("", "9"));
            let (m, body, send) = next(&mut h).await;
            assert_eq!(m, Method::PUT);
            assert_eq!(body["spec"]["holderIdentity"], "b");
            reply(send, 409, conflict());
        });
        assert!(!e.try_acquire_or_renew().await.expect("lost race is Ok(false)"));
        server.await.expect("server");
    }

    #[tokio::test]
    async fn release_clears_the_holder() {
        let (mut e, mut h) = elector("a");
        let server = tokio::spawn(async move {
            let (_, _, send) = next(&mut h).await;
            reply(send, 200, lease("a", "7"));
            let (m, body, send) = next(&mut h).await;
            assert_eq!(m, Method::PUT);
            assert!(body["spec"].get("holderIdentity").is_none_or(|h| h.is_null()));
            reply(send, 200, body);
        });
        e.release().await.expect("release");
        server.await.expect("server");
    }
}
