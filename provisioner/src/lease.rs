//! Leader election on a `coordination.k8s.io/v1` Lease, so that two replicas never both write.
//!
//! The algorithm client-go uses, kept small: a replica holds the lease while it renews it within
//! its duration; another takes over only after it has seen the lease unchanged for a whole
//! duration *by its own clock* (so clock skew between replicas does not matter), or at once when
//! the holder released it. Every write carries the resourceVersion it read, so of two replicas
//! racing for the same lease exactly one wins (the other gets 409 Conflict).

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::PostParams;
use kube::{Api, Client};
use tokio::time::Instant;

/// Which lease, who we are, how long a lease lasts.
#[derive(Debug, Clone)]
pub struct LeaseConfig {
    pub namespace: String,
    pub name: String,
    pub identity: String,
    pub duration: Duration,
}

impl LeaseConfig {
    /// How often the holder renews, and others retry: a third of the duration, so two renewals
    /// can fail before the lease expires.
    pub fn retry_period(&self) -> Duration {
        self.duration / 3
    }

    /// A holder that has not renewed for this long stops writing, before anyone may take over.
    pub fn renew_deadline(&self) -> Duration {
        self.duration * 2 / 3
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
    pub fn new(client: Client, config: LeaseConfig) -> Self {
        Self { api: Api::namespaced(client, &config.namespace), config, observed: None }
    }

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
