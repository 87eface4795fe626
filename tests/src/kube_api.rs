//! An in-memory Kubernetes API server for integration tests.
//!
//! No kube-apiserver can run on the test machines, so this module serves the subset of the
//! real API that gatehouse uses — core/v1 Nodes, Services and Pods, discovery.k8s.io/v1
//! EndpointSlices and coordination.k8s.io/v1 Leases — over real HTTP/1.1 on loopback, with
//! the real JSON shapes: `Status` errors, one global `resourceVersion` counter (as etcd
//! has), optimistic concurrency on PUT, the `status` subresource, JSON merge and strategic
//! merge patches (lists merged by their API merge key, e.g. a pod's conditions by `type`),
//! deletion that waits for finalizers and a pod's grace period, and chunked newline-delimited
//! watch streams with bookmarks and `410 Expired` once events of the watched kind after a
//! resourceVersion have left the bounded event history.
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! use gatehouse_tests::kube_api::{FakeApiServer, fixtures::node};
//! let fake = FakeApiServer::start().await;
//! fake.apply_resource(&node("ip-10-0-1-11", "127.0.0.11").ready(true).build())?;
//! let nodes: kube::Api<k8s_openapi::api::core::v1::Node> = kube::Api::all(fake.client());
//! assert_eq!(nodes.list(&Default::default()).await?.items.len(), 1);
//! # Ok(()) }
//! ```

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::convert::Infallible;
use std::fmt;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use http::{HeaderMap, Method, StatusCode, Uri, header};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value, json};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

pub mod fixtures;
pub mod fleet;

/// The resource types the fake server knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ResourceKind {
    /// core/v1 Node (cluster-scoped).
    Node,
    /// core/v1 Service (namespaced).
    Service,
    /// core/v1 Pod (namespaced).
    Pod,
    /// discovery.k8s.io/v1 EndpointSlice (namespaced).
    EndpointSlice,
    /// coordination.k8s.io/v1 Lease (namespaced).
    Lease,
}

impl ResourceKind {
    /// Every kind served.
    pub const ALL: [ResourceKind; 5] = [Self::Node, Self::Service, Self::Pod, Self::EndpointSlice, Self::Lease];

    /// The `kind` field value, e.g. `Node`.
    pub fn kind(self) -> &'static str {
        match self {
            Self::Node => "Node",
            Self::Service => "Service",
            Self::Pod => "Pod",
            Self::EndpointSlice => "EndpointSlice",
            Self::Lease => "Lease",
        }
    }

    /// The API group, empty for the core group.
    pub fn group(self) -> &'static str {
        match self {
            Self::Node | Self::Service | Self::Pod => "",
            Self::EndpointSlice => "discovery.k8s.io",
            Self::Lease => "coordination.k8s.io",
        }
    }

    /// The `apiVersion` field value, e.g. `discovery.k8s.io/v1`.
    pub fn api_version(self) -> &'static str {
        match self {
            Self::Node | Self::Service | Self::Pod => "v1",
            Self::EndpointSlice => "discovery.k8s.io/v1",
            Self::Lease => "coordination.k8s.io/v1",
        }
    }

    /// The plural resource name used in URLs, e.g. `endpointslices`.
    pub fn plural(self) -> &'static str {
        match self {
            Self::Node => "nodes",
            Self::Service => "services",
            Self::Pod => "pods",
            Self::EndpointSlice => "endpointslices",
            Self::Lease => "leases",
        }
    }

    /// Whether objects live in a namespace.
    pub fn namespaced(self) -> bool {
        !matches!(self, Self::Node)
    }

    /// Parses a `kind` field value.
    pub fn from_kind(kind: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.kind() == kind)
    }

    /// `nodes` or `leases.coordination.k8s.io`, as the real server names resources in messages.
    fn qualified_resource(self) -> String {
        if self.group().is_empty() { self.plural().to_string() } else { format!("{}.{}", self.plural(), self.group()) }
    }

    /// Nodes, Services and Pods have a `status` subresource: the main endpoint ignores status
    /// changes.
    fn has_status_subresource(self) -> bool {
        matches!(self, Self::Node | Self::Service | Self::Pod)
    }

    /// Mirrors the real registry strategies' `AllowCreateOnUpdate`.
    fn allows_create_on_update(self) -> bool {
        matches!(self, Self::EndpointSlice | Self::Lease)
    }

    fn from_path(group: &str, version: &str, plural: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.group() == group && version == "v1" && k.plural() == plural)
    }
}

impl fmt::Display for ResourceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.kind())
    }
}

/// Tunables of the fake server.
#[derive(Clone, Debug)]
pub struct FakeApiOptions {
    /// How many watch events are kept (across all kinds, like etcd's compaction window). A
    /// watch from a resourceVersion gets `410 Expired` once an event of its own kind after it
    /// has left this window (the real server watches from a cache per resource).
    pub history_size: usize,
    /// Interval between BOOKMARK events on watches with `allowWatchBookmarks=true`
    /// (one is always sent right after the watch has caught up).
    pub bookmark_interval: Duration,
}

impl Default for FakeApiOptions {
    fn default() -> Self {
        Self { history_size: 1000, bookmark_interval: Duration::from_secs(5) }
    }
}

/// An error in the shape of a Kubernetes `Status` object.
#[derive(Clone, Debug, PartialEq)]
pub struct ApiError {
    /// HTTP status code, also the Status `code`.
    pub code: u16,
    /// Machine-readable Status `reason`, e.g. `NotFound`.
    pub reason: String,
    /// Human-readable Status `message`.
    pub message: String,
    /// Status `details`, if any.
    pub details: Option<Value>,
}

impl ApiError {
    fn new(code: u16, reason: &str, message: impl Into<String>) -> Self {
        Self { code, reason: reason.to_string(), message: message.into(), details: None }
    }

    fn resource_details(kind: ResourceKind, name: &str) -> Value {
        let mut details = json!({ "name": name, "kind": kind.plural() });
        if !kind.group().is_empty() {
            details["group"] = json!(kind.group());
        }
        details
    }

    fn not_found(kind: ResourceKind, name: &str) -> Self {
        let message = format!("{} \"{name}\" not found", kind.qualified_resource());
        Self { details: Some(Self::resource_details(kind, name)), ..Self::new(404, "NotFound", message) }
    }

    fn already_exists(kind: ResourceKind, name: &str) -> Self {
        let message = format!("{} \"{name}\" already exists", kind.qualified_resource());
        Self { details: Some(Self::resource_details(kind, name)), ..Self::new(409, "AlreadyExists", message) }
    }

    fn conflict(kind: ResourceKind, name: &str, why: &str) -> Self {
        let message = format!("Operation cannot be fulfilled on {} \"{name}\": {why}", kind.qualified_resource());
        Self { details: Some(Self::resource_details(kind, name)), ..Self::new(409, "Conflict", message) }
    }

    fn stale(kind: ResourceKind, name: &str) -> Self {
        Self::conflict(
            kind,
            name,
            "the object has been modified; please apply your changes to the latest version and try again",
        )
    }

    fn invalid(kind: ResourceKind, name: &str, field: &str, value: &Value, why: &str) -> Self {
        let message = format!("{} \"{name}\" is invalid: {field}: Invalid value: {value}: {why}", kind.kind());
        let mut details = json!({
            "name": name,
            "kind": kind.kind(),
            "causes": [{ "reason": "FieldValueInvalid", "message": format!("Invalid value: {value}: {why}"), "field": field }],
        });
        if !kind.group().is_empty() {
            details["group"] = json!(kind.group());
        }
        Self { details: Some(details), ..Self::new(422, "Invalid", message) }
    }

    fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, "BadRequest", message)
    }

    fn expired(message: impl Into<String>) -> Self {
        Self::new(410, "Expired", message)
    }

    fn unknown_path() -> Self {
        Self {
            details: Some(json!({})),
            ..Self::new(404, "NotFound", "the server could not find the requested resource")
        }
    }

    fn method_not_allowed(method: &Method) -> Self {
        Self::new(
            405,
            "MethodNotAllowed",
            format!("the server does not allow this method on the requested resource ({method})"),
        )
    }

    /// A Status for an arbitrary code, as the fault hooks produce.
    fn injected(code: u16) -> Self {
        let reason = match code {
            400 => "BadRequest",
            401 => "Unauthorized",
            403 => "Forbidden",
            404 => "NotFound",
            409 => "Conflict",
            410 => "Expired",
            422 => "Invalid",
            429 => "TooManyRequests",
            503 => "ServiceUnavailable",
            504 => "Timeout",
            _ => "InternalError",
        };
        Self::new(code, reason, format!("injected fault: {reason} ({code})"))
    }

    /// The error as a `Status` JSON object.
    pub fn to_status(&self) -> Value {
        let mut status = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        });
        if let Some(details) = &self.details {
            status["details"] = details.clone();
        }
        status
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({}): {}", self.code, self.reason, self.message)
    }
}

impl std::error::Error for ApiError {}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let code = StatusCode::from_u16(self.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        json_response(code, &self.to_status())
    }
}

fn json_response(code: StatusCode, body: &Value) -> Response {
    (code, [(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response()
}

/// Where an object is stored; the BTreeMap order is etcd's key order within a kind.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct ObjectKey {
    kind: ResourceKind,
    namespace: String,
    name: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum EventType {
    Added,
    Modified,
    Deleted,
}

impl EventType {
    fn as_str(self) -> &'static str {
        match self {
            Self::Added => "ADDED",
            Self::Modified => "MODIFIED",
            Self::Deleted => "DELETED",
        }
    }
}

#[derive(Clone, Debug)]
struct HistoryEvent {
    resource_version: u64,
    key: ObjectKey,
    event_type: EventType,
    object: Value,
    /// The object before this change, so that label-filtered watches can turn a MODIFIED
    /// that leaves or enters the selection into DELETED or ADDED, as the real server does.
    previous: Option<Value>,
}

/// How an update treats the `status` stanza.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum UpdateMode {
    /// The main resource endpoint: status changes are ignored for kinds with a status subresource.
    Main,
    /// The `/status` subresource: only status changes are kept.
    Status,
    /// Test-side writes: take the whole object, as a controller plus kubectl would leave it.
    Full,
}

#[derive(Debug)]
struct Store {
    objects: BTreeMap<ObjectKey, Value>,
    resource_version: u64,
    history: VecDeque<HistoryEvent>,
    /// Events up to and including this resourceVersion are gone from the history.
    compacted_through: u64,
    /// Per kind, the resourceVersion of the last event of that kind dropped from the history:
    /// the real API server serves watches from a cache per resource, so a flood of Node updates
    /// does not expire a watch on Pods.
    compacted_by_kind: HashMap<ResourceKind, u64>,
    /// Set by a full compaction ([`FakeApiServer::compact_history`]): every kind's events up to
    /// here are gone.
    compacted_all: u64,
    history_size: usize,
    injected_errors: HashMap<ResourceKind, VecDeque<u16>>,
    watch_requests: HashMap<ResourceKind, u64>,
    open_watches: HashMap<ResourceKind, usize>,
    request_log: VecDeque<String>,
    id_counter: u64,
    next_cluster_ip: u32,
}

const REQUEST_LOG_SIZE: usize = 1000;

impl Store {
    fn new(history_size: usize) -> Self {
        Self {
            objects: BTreeMap::new(),
            resource_version: 1,
            history: VecDeque::new(),
            compacted_through: 0,
            compacted_by_kind: HashMap::new(),
            compacted_all: 0,
            history_size: history_size.max(1),
            injected_errors: HashMap::new(),
            watch_requests: HashMap::new(),
            open_watches: HashMap::new(),
            request_log: VecDeque::new(),
            id_counter: 0,
            next_cluster_ip: 10,
        }
    }

    fn next_id(&mut self) -> u64 {
        self.id_counter += 1;
        self.id_counter
    }

    /// Writes one change: bumps the global resourceVersion and records the watch event.
    fn commit(&mut self, key: ObjectKey, event_type: EventType, mut object: Value) -> Value {
        self.resource_version += 1;
        let resource_version = self.resource_version;
        set_metadata_field(&mut object, "resourceVersion", json!(resource_version.to_string()));
        let previous = match event_type {
            EventType::Deleted => self.objects.remove(&key),
            EventType::Added | EventType::Modified => self.objects.insert(key.clone(), object.clone()),
        };
        self.history.push_back(HistoryEvent { resource_version, key, event_type, object: object.clone(), previous });
        while self.history.len() > self.history_size {
            if let Some(dropped) = self.history.pop_front() {
                self.compacted_through = dropped.resource_version;
                self.compacted_by_kind.insert(dropped.key.kind, dropped.resource_version);
            }
        }
        object
    }

    fn compact(&mut self) {
        self.history.clear();
        self.compacted_through = self.resource_version;
        self.compacted_all = self.resource_version;
    }

    /// A watch of `kind` from a resourceVersion below this has missed events: 410 Expired.
    fn watch_expired_below(&self, kind: ResourceKind) -> u64 {
        self.compacted_by_kind.get(&kind).copied().unwrap_or(0).max(self.compacted_all)
    }

    fn create(
        &mut self,
        kind: ResourceKind,
        url_namespace: Option<&str>,
        mut object: Value,
        mode: UpdateMode,
    ) -> Result<Value, ApiError> {
        check_type_meta(kind, &mut object)?;
        let namespace = resolve_namespace(kind, url_namespace, &mut object)?;
        let mut name = metadata_str(&object, "name").to_string();
        if name.is_empty() {
            let prefix = metadata_str(&object, "generateName").to_string();
            if prefix.is_empty() {
                return Err(ApiError::invalid(
                    kind,
                    "",
                    "metadata.name",
                    &json!(""),
                    "name or generateName is required",
                ));
            }
            let id = self.next_id();
            name = format!("{prefix}{}", random_suffix(id));
            set_metadata_field(&mut object, "name", json!(name));
        }
        validate_name(kind, &name)?;
        if mode != UpdateMode::Full && !metadata_str(&object, "resourceVersion").is_empty() {
            return Err(ApiError::new(
                500,
                "InternalError",
                "resourceVersion should not be set on objects to be created",
            ));
        }
        let key = ObjectKey { kind, namespace, name: name.clone() };
        if self.objects.contains_key(&key) {
            return Err(ApiError::already_exists(kind, &name));
        }
        let id = self.next_id();
        set_metadata_field(&mut object, "uid", json!(new_uid(id)));
        set_metadata_field(&mut object, "creationTimestamp", json!(rfc3339_now()));
        set_metadata_field(&mut object, "generation", json!(1));
        remove_metadata_field(&mut object, "deletionTimestamp");
        remove_metadata_field(&mut object, "deletionGracePeriodSeconds");
        if kind == ResourceKind::Service {
            if mode != UpdateMode::Full {
                object["status"] = json!({ "loadBalancer": {} });
            }
            self.allocate_service_addresses(&key, &mut object, None)?;
        }
        Ok(self.commit(key, EventType::Added, object))
    }

    fn update(
        &mut self,
        kind: ResourceKind,
        namespace: Option<&str>,
        name: &str,
        mut object: Value,
        mode: UpdateMode,
    ) -> Result<(Value, bool), ApiError> {
        check_type_meta(kind, &mut object)?;
        let namespace = resolve_namespace(kind, namespace, &mut object)?;
        let body_name = metadata_str(&object, "name");
        if body_name != name {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({body_name}) does not match the name on the URL ({name})"
            )));
        }
        let key = ObjectKey { kind, namespace: namespace.clone(), name: name.to_string() };
        let Some(current) = self.objects.get(&key).cloned() else {
            if mode == UpdateMode::Full || (mode == UpdateMode::Main && kind.allows_create_on_update()) {
                remove_metadata_field(&mut object, "resourceVersion");
                let ns = kind.namespaced().then_some(namespace.as_str());
                return self.create(kind, ns, object, mode).map(|created| (created, true));
            }
            return Err(ApiError::not_found(kind, name));
        };
        if mode != UpdateMode::Full {
            let body_version = metadata_str(&object, "resourceVersion");
            if !body_version.is_empty() && body_version != metadata_str(&current, "resourceVersion") {
                return Err(ApiError::stale(kind, name));
            }
            let body_uid = metadata_str(&object, "uid");
            if !body_uid.is_empty() && body_uid != metadata_str(&current, "uid") {
                return Err(ApiError::conflict(
                    kind,
                    name,
                    &format!(
                        "Precondition failed: UID in precondition: {}, UID in object meta: {body_uid}",
                        metadata_str(&current, "uid")
                    ),
                ));
            }
        }
        let mut next = match mode {
            UpdateMode::Status => {
                let mut next = current.clone();
                match object.get("status") {
                    Some(status) => next["status"] = status.clone(),
                    None => remove_field(&mut next, "status"),
                }
                next
            }
            UpdateMode::Main if kind.has_status_subresource() => {
                match current.get("status") {
                    Some(status) => object["status"] = status.clone(),
                    None => remove_field(&mut object, "status"),
                }
                object
            }
            UpdateMode::Main | UpdateMode::Full => object,
        };
        // Server-owned metadata survives whatever the client sent.
        for field in [
            "uid",
            "creationTimestamp",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "generation",
            "resourceVersion",
        ] {
            match current.get("metadata").and_then(|m| m.get(field)) {
                Some(value) => set_metadata_field(&mut next, field, value.clone()),
                None => remove_metadata_field(&mut next, field),
            }
        }
        if kind == ResourceKind::Service {
            self.allocate_service_addresses(&key, &mut next, Some(&current))?;
        }
        if without_metadata_and_status(&next) != without_metadata_and_status(&current) {
            let generation = current.pointer("/metadata/generation").and_then(Value::as_i64).unwrap_or(0);
            set_metadata_field(&mut next, "generation", json!(generation + 1));
        }
        // The real server skips the write (and the event) when nothing changed.
        if next == current {
            return Ok((current, false));
        }
        // Removing the last finalizer of an object being deleted completes the deletion (a pod
        // also needs its grace period to have been cut to 0, by the kubelet's final delete).
        if deletion_can_complete(&next) && has_finalizers(&current) {
            return Ok((self.commit(key, EventType::Deleted, next), false));
        }
        Ok((self.commit(key, EventType::Modified, next), false))
    }

    fn patch(
        &mut self,
        kind: ResourceKind,
        namespace: Option<&str>,
        name: &str,
        patch: &Value,
        patch_kind: PatchKind,
        mode: UpdateMode,
    ) -> Result<(Value, bool), ApiError> {
        let is_apply = patch_kind == PatchKind::Apply;
        if !patch.is_object() {
            return Err(ApiError::bad_request("the patch must be a JSON object"));
        }
        let key = object_key(kind, namespace, name);
        let Some(current) = self.objects.get(&key).cloned() else {
            if is_apply && mode == UpdateMode::Main {
                // Server-side apply creates what does not exist yet.
                let mut object = json!({});
                merge_patch(&mut object, patch);
                set_metadata_field(&mut object, "name", json!(name));
                return self.create(kind, namespace, object, mode).map(|created| (created, true));
            }
            return Err(ApiError::not_found(kind, name));
        };
        let current_version = metadata_str(&current, "resourceVersion").to_string();
        // A patch is unconditional unless it carries a resourceVersion itself.
        if let Some(patch_version) = patch.pointer("/metadata/resourceVersion").and_then(Value::as_str)
            && patch_version != current_version
        {
            return Err(ApiError::stale(kind, name));
        }
        let mut merged = current;
        match patch_kind {
            PatchKind::Strategic => strategic_merge(&mut merged, patch, kind, "")?,
            PatchKind::Merge | PatchKind::Apply => merge_patch(&mut merged, patch),
        }
        set_metadata_field(&mut merged, "resourceVersion", json!(current_version));
        self.update(kind, namespace, name, merged, mode)
    }

    /// DELETE, as the real registry does it: an object with finalizers, or a pod bound to a
    /// node with a grace period, only gets its `deletionTimestamp` (MODIFIED) and goes once its
    /// finalizers are gone and, for a pod, a delete with grace period 0 has come (the kubelet's).
    fn delete(&mut self, key: &ObjectKey, options: Option<&Value>) -> Result<Value, ApiError> {
        let Some(mut current) = self.objects.get(key).cloned() else {
            return Err(ApiError::not_found(key.kind, &key.name));
        };
        let preconditions = options.and_then(|o| o.get("preconditions"));
        if let Some(preconditions) = preconditions {
            for (field, what) in [("resourceVersion", "ResourceVersion"), ("uid", "UID")] {
                if let Some(expected) = preconditions.get(field).and_then(Value::as_str) {
                    let actual = metadata_str(&current, field);
                    if expected != actual {
                        return Err(ApiError::conflict(
                            key.kind,
                            &key.name,
                            &format!(
                                "Precondition failed: {what} in precondition: {expected}, {what} in object meta: {actual}"
                            ),
                        ));
                    }
                }
            }
        }
        let requested_grace = options.and_then(|o| o.get("gracePeriodSeconds")).and_then(Value::as_i64);
        let bound = current.pointer("/spec/nodeName").and_then(Value::as_str).is_some_and(|n| !n.is_empty());
        let grace = if key.kind == ResourceKind::Pod && bound {
            requested_grace
                .or_else(|| current.pointer("/spec/terminationGracePeriodSeconds").and_then(Value::as_i64))
                .unwrap_or(30)
                .max(0)
        } else {
            0
        };
        let terminating = current.pointer("/metadata/deletionTimestamp").is_some();
        if terminating {
            let shorter = current
                .pointer("/metadata/deletionGracePeriodSeconds")
                .and_then(Value::as_i64)
                .is_some_and(|g| grace < g);
            if !shorter {
                return Ok(current);
            }
        }
        if grace == 0 && !has_finalizers(&current) {
            return Ok(self.commit(key.clone(), EventType::Deleted, current));
        }
        let at = SystemTime::now() + Duration::from_secs(grace.unsigned_abs());
        set_metadata_field(&mut current, "deletionTimestamp", json!(rfc3339(at)));
        set_metadata_field(&mut current, "deletionGracePeriodSeconds", json!(grace));
        Ok(self.commit(key.clone(), EventType::Modified, current))
    }

    /// Gives a Service a clusterIP and its NodePort/LoadBalancer ports a nodePort, and
    /// refuses a nodePort another Service already holds, as the real allocators do.
    fn allocate_service_addresses(
        &mut self,
        key: &ObjectKey,
        service: &mut Value,
        previous: Option<&Value>,
    ) -> Result<(), ApiError> {
        let Some(spec) = service.get_mut("spec").and_then(Value::as_object_mut) else {
            return Ok(());
        };
        let service_type = spec.get("type").and_then(Value::as_str).unwrap_or("ClusterIP").to_string();
        if !spec.contains_key("type") {
            spec.insert("type".into(), json!("ClusterIP"));
        }
        if service_type != "ExternalName" && spec.get("clusterIP").and_then(Value::as_str).unwrap_or("").is_empty() {
            let previous_ip = previous.and_then(|p| p.pointer("/spec/clusterIP")).and_then(Value::as_str);
            let ip = match previous_ip {
                Some(ip) => ip.to_string(),
                None => {
                    self.next_cluster_ip += 1;
                    format!("10.96.{}.{}", self.next_cluster_ip / 250, self.next_cluster_ip % 250 + 1)
                }
            };
            spec.insert("clusterIP".into(), json!(ip));
            spec.insert("clusterIPs".into(), json!([ip]));
        }
        if service_type != "NodePort" && service_type != "LoadBalancer" {
            return Ok(());
        }
        let taken: HashSet<i64> = self
            .objects
            .iter()
            .filter(|(k, _)| k.kind == ResourceKind::Service && *k != key)
            .flat_map(|(_, s)| node_ports(s))
            .collect();
        let previous_ports: Vec<Value> =
            previous.and_then(|p| p.pointer("/spec/ports")).and_then(Value::as_array).cloned().unwrap_or_default();
        let Some(ports) = spec.get_mut("ports").and_then(Value::as_array_mut) else {
            return Ok(());
        };
        let mut in_use = taken.clone();
        for (index, port) in ports.iter_mut().enumerate() {
            let Some(port) = port.as_object_mut() else {
                continue;
            };
            match port.get("nodePort").and_then(Value::as_i64) {
                Some(node_port) if node_port != 0 => {
                    if taken.contains(&node_port) || !(30000..=32767).contains(&node_port) {
                        let why = if taken.contains(&node_port) {
                            "provided port is already allocated"
                        } else {
                            "provided port is not in the valid range. The range of valid ports is 30000-32767"
                        };
                        return Err(ApiError::invalid(
                            ResourceKind::Service,
                            &key.name,
                            &format!("spec.ports[{index}].nodePort"),
                            &json!(node_port),
                            why,
                        ));
                    }
                    in_use.insert(node_port);
                }
                _ => {
                    let same_port = previous_ports.iter().find(|p| p.get("port") == port.get("port"));
                    let kept = same_port.and_then(|p| p.get("nodePort")).and_then(Value::as_i64);
                    let node_port =
                        kept.unwrap_or_else(|| (30000..=32767).find(|p| !in_use.contains(p)).unwrap_or(32767));
                    in_use.insert(node_port);
                    port.insert("nodePort".into(), json!(node_port));
                }
            }
        }
        Ok(())
    }
}

fn node_ports(service: &Value) -> Vec<i64> {
    service
        .pointer("/spec/ports")
        .and_then(Value::as_array)
        .map(|ports| ports.iter().filter_map(|p| p.get("nodePort").and_then(Value::as_i64)).collect())
        .unwrap_or_default()
}

fn object_key(kind: ResourceKind, namespace: Option<&str>, name: &str) -> ObjectKey {
    let namespace = if kind.namespaced() { namespace.unwrap_or("default") } else { "" };
    ObjectKey { kind, namespace: namespace.to_string(), name: name.to_string() }
}

/// Checks the body's apiVersion/kind against the URL and fills them in when missing.
fn check_type_meta(kind: ResourceKind, object: &mut Value) -> Result<(), ApiError> {
    let Some(fields) = object.as_object_mut() else {
        return Err(ApiError::bad_request("the request body must be a JSON object"));
    };
    for (field, expected) in [("kind", kind.kind()), ("apiVersion", kind.api_version())] {
        match fields.get(field).and_then(Value::as_str) {
            None | Some("") => {
                fields.insert(field.into(), json!(expected));
            }
            Some(actual) if actual != expected => {
                return Err(ApiError::bad_request(format!(
                    "the API version in the data ({}) does not match the expected API version ({}) or kind ({actual}) does not match {expected}",
                    fields.get("apiVersion").and_then(Value::as_str).unwrap_or(""),
                    kind.api_version(),
                )));
            }
            Some(_) => {}
        }
    }
    if !fields.get("metadata").is_none_or(Value::is_object) {
        return Err(ApiError::bad_request("metadata must be an object"));
    }
    Ok(())
}

/// Returns the object's namespace ("" for cluster-scoped kinds) after checking it against the URL.
fn resolve_namespace(kind: ResourceKind, url_namespace: Option<&str>, object: &mut Value) -> Result<String, ApiError> {
    if !kind.namespaced() {
        remove_metadata_field(object, "namespace");
        return Ok(String::new());
    }
    let body_namespace = metadata_str(object, "namespace").to_string();
    let namespace = match (url_namespace, body_namespace.as_str()) {
        (Some(url), "") => url.to_string(),
        (Some(url), body) if body != url => {
            return Err(ApiError::bad_request(
                "the namespace of the provided object does not match the namespace sent on the request",
            ));
        }
        (_, "") => "default".to_string(),
        (_, body) => body.to_string(),
    };
    set_metadata_field(object, "namespace", json!(namespace));
    Ok(namespace)
}

fn validate_name(kind: ResourceKind, name: &str) -> Result<(), ApiError> {
    let alnum = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
    let ends_ok = name.chars().next().is_some_and(alnum) && name.chars().last().is_some_and(alnum);
    let (ok, why) = if kind == ResourceKind::Service {
        (
            name.len() <= 63
                && name.chars().next().is_some_and(|c| c.is_ascii_lowercase())
                && ends_ok
                && name.chars().all(|c| alnum(c) || c == '-'),
            "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic character, and end with an alphanumeric character (e.g. 'my-name',  or 'abc-123', regex used for validation is '[a-z]([-a-z0-9]*[a-z0-9])?')",
        )
    } else {
        (
            name.len() <= 253
                && ends_ok
                && name.chars().all(|c| alnum(c) || c == '-' || c == '.')
                && name
                    .split('.')
                    .all(|part| part.chars().next().is_some_and(alnum) && part.chars().last().is_some_and(alnum)),
            "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')",
        )
    };
    if ok { Ok(()) } else { Err(ApiError::invalid(kind, name, "metadata.name", &json!(name), why)) }
}

fn metadata_str<'a>(object: &'a Value, field: &str) -> &'a str {
    object.get("metadata").and_then(|m| m.get(field)).and_then(Value::as_str).unwrap_or("")
}

fn set_metadata_field(object: &mut Value, field: &str, value: Value) {
    let Some(fields) = object.as_object_mut() else {
        return;
    };
    let metadata = fields.entry("metadata").or_insert_with(|| json!({}));
    if !metadata.is_object() {
        *metadata = json!({});
    }
    if let Some(metadata) = metadata.as_object_mut() {
        metadata.insert(field.to_string(), value);
    }
}

fn remove_metadata_field(object: &mut Value, field: &str) {
    if let Some(metadata) = object.get_mut("metadata").and_then(Value::as_object_mut) {
        metadata.remove(field);
    }
}

fn remove_field(object: &mut Value, field: &str) {
    if let Some(fields) = object.as_object_mut() {
        fields.remove(field);
    }
}

/// What a generation bump looks at: everything but metadata and status.
fn without_metadata_and_status(object: &Value) -> Value {
    let mut copy = object.clone();
    remove_field(&mut copy, "metadata");
    remove_field(&mut copy, "status");
    copy
}

fn has_finalizers(object: &Value) -> bool {
    object.pointer("/metadata/finalizers").and_then(Value::as_array).is_some_and(|f| !f.is_empty())
}

/// An object being deleted whose deletion nothing holds any longer.
fn deletion_can_complete(object: &Value) -> bool {
    object.pointer("/metadata/deletionTimestamp").is_some()
        && !has_finalizers(object)
        && object.pointer("/metadata/deletionGracePeriodSeconds").and_then(Value::as_i64).unwrap_or(0) == 0
}

/// Which patch a PATCH request carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PatchKind {
    /// `application/merge-patch+json`: RFC 7386.
    Merge,
    /// `application/strategic-merge-patch+json`.
    Strategic,
    /// `application/apply-patch+yaml`, approximated by a merge patch.
    Apply,
}

/// How a strategic merge patch merges a list, from the API types' `patchStrategy` and
/// `patchMergeKey` tags (only the fields of the kinds served here).
enum ListMerge {
    /// Elements with the same value of this field are merged; others are added.
    ByKey(&'static str),
    /// A set of scalars: the patch's values are added.
    Union,
}

fn list_merge(kind: ResourceKind, path: &str) -> Option<ListMerge> {
    use ResourceKind::{Node, Pod, Service};
    match (kind, path) {
        (_, "/metadata/finalizers") => Some(ListMerge::Union),
        (_, "/metadata/ownerReferences") => Some(ListMerge::ByKey("uid")),
        (Pod | Node, "/status/conditions") | (Node, "/status/addresses") => Some(ListMerge::ByKey("type")),
        (Pod, "/spec/containers" | "/spec/initContainers" | "/spec/volumes" | "/spec/containers[]/env") => {
            Some(ListMerge::ByKey("name"))
        }
        (Pod, "/spec/containers[]/ports") => Some(ListMerge::ByKey("containerPort")),
        (Service, "/spec/ports") => Some(ListMerge::ByKey("port")),
        _ => None,
    }
}

/// A strategic merge patch: maps merge as in a JSON merge patch, lists with a merge key merge
/// element by element (`$patch: delete` on an element removes it), other lists are replaced.
/// `$setElementOrder` directives (ordering only) are accepted and ignored; other directives are
/// refused rather than half-honoured.
fn strategic_merge(target: &mut Value, patch: &Value, kind: ResourceKind, path: &str) -> Result<(), ApiError> {
    let Value::Object(patch_fields) = patch else {
        *target = patch.clone();
        return Ok(());
    };
    if patch_fields.get("$patch").and_then(Value::as_str) == Some("replace") {
        let mut replacement = patch.clone();
        remove_field(&mut replacement, "$patch");
        *target = replacement;
        return Ok(());
    }
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let Value::Object(target_fields) = target else { return Ok(()) };
    for (key, value) in patch_fields {
        if key.starts_with("$setElementOrder/") {
            continue;
        }
        if key.starts_with('$') {
            return Err(ApiError::bad_request(format!(
                "the fake API server does not support the strategic merge directive {key:?}"
            )));
        }
        let child = format!("{path}/{key}");
        if value.is_null() {
            target_fields.remove(key);
            continue;
        }
        match (list_merge(kind, &child), value) {
            (Some(ListMerge::ByKey(merge_key)), Value::Array(items)) => {
                let slot = target_fields.entry(key.clone()).or_insert_with(|| json!([]));
                if !slot.is_array() {
                    *slot = json!([]);
                }
                let Value::Array(existing) = slot else { continue };
                for item in items {
                    let id = item.get(merge_key).cloned();
                    let position =
                        id.as_ref().and_then(|id| existing.iter().position(|e| e.get(merge_key) == Some(id)));
                    let delete = item.get("$patch").and_then(Value::as_str) == Some("delete");
                    match (position, delete) {
                        (Some(at), true) => {
                            existing.remove(at);
                        }
                        (None, true) => {}
                        (Some(at), false) => strategic_merge(&mut existing[at], item, kind, &format!("{child}[]"))?,
                        (None, false) => {
                            let mut added = json!({});
                            strategic_merge(&mut added, item, kind, &format!("{child}[]"))?;
                            existing.push(added);
                        }
                    }
                }
            }
            (Some(ListMerge::Union), Value::Array(items)) => {
                let slot = target_fields.entry(key.clone()).or_insert_with(|| json!([]));
                if !slot.is_array() {
                    *slot = json!([]);
                }
                if let Value::Array(existing) = slot {
                    for item in items {
                        if !existing.contains(item) {
                            existing.push(item.clone());
                        }
                    }
                }
            }
            (_, Value::Object(_)) => {
                strategic_merge(target_fields.entry(key.clone()).or_insert(Value::Null), value, kind, &child)?;
            }
            _ => {
                target_fields.insert(key.clone(), value.clone());
            }
        }
    }
    Ok(())
}

/// RFC 7386 JSON merge patch (server-side apply patches are approximated by it);
/// `$patch`-style directives are dropped rather than stored.
fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(patch_fields) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    if let Value::Object(target_fields) = target {
        for (key, value) in patch_fields {
            if key.starts_with('$') {
                continue;
            }
            if value.is_null() {
                target_fields.remove(key);
            } else {
                merge_patch(target_fields.entry(key.clone()).or_insert(Value::Null), value);
            }
        }
    }
}

fn rfc3339_now() -> String {
    rfc3339(SystemTime::now())
}

fn rfc3339(at: SystemTime) -> String {
    let secs = at.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

fn random_bits(seed: u64) -> u128 {
    use std::hash::{BuildHasher, Hasher};
    let state = std::collections::hash_map::RandomState::new();
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    let mut high = state.build_hasher();
    high.write_u64(seed);
    high.write_u128(nanos);
    let mut low = state.build_hasher();
    low.write_u64(!seed);
    low.write_u128(nanos);
    (u128::from(high.finish()) << 64) | u128::from(low.finish())
}

fn new_uid(seed: u64) -> String {
    let bits = random_bits(seed);
    // Version 4, RFC 4122 variant, like the real server's UUIDs.
    let bits = (bits & !(0xF << 76)) | (0x4 << 76);
    let bits = (bits & !(0x3 << 62)) | (0x2 << 62);
    let hex = format!("{bits:032x}");
    format!("{}-{}-{}-{}-{}", &hex[0..8], &hex[8..12], &hex[12..16], &hex[16..20], &hex[20..32])
}

/// Five characters from the alphabet the real generateName uses.
fn random_suffix(seed: u64) -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut bits = random_bits(seed);
    (0..5)
        .map(|_| {
            let c = ALPHABET[(bits % ALPHABET.len() as u128) as usize] as char;
            bits /= ALPHABET.len() as u128;
            c
        })
        .collect()
}

// ---------------------------------------------------------------------------------------
// Selectors

#[derive(Clone, Debug, PartialEq)]
enum LabelRequirement {
    Equals(String, String),
    NotEquals(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    NotExists(String),
}

#[derive(Clone, Debug, PartialEq)]
struct FieldRequirement {
    field: String,
    value: String,
    equals: bool,
}

/// The namespace, label selector and field selector of a list or watch.
#[derive(Clone, Debug, Default)]
struct ObjectFilter {
    namespace: Option<String>,
    labels: Vec<LabelRequirement>,
    fields: Vec<FieldRequirement>,
}

/// Splits on commas outside parentheses (`a in (x,y),b`).
fn split_terms(selector: &str) -> Vec<String> {
    let mut terms = Vec::new();
    let mut depth = 0usize;
    let mut current = String::new();
    for c in selector.chars() {
        match c {
            '(' => depth += 1,
            ')' => depth = depth.saturating_sub(1),
            ',' if depth == 0 => {
                terms.push(std::mem::take(&mut current));
                continue;
            }
            _ => {}
        }
        current.push(c);
    }
    terms.push(current);
    terms.into_iter().map(|t| t.trim().to_string()).filter(|t| !t.is_empty()).collect()
}

fn parse_label_selector(selector: &str) -> Result<Vec<LabelRequirement>, ApiError> {
    let invalid = |term: &str| {
        ApiError::bad_request(format!("unable to parse requirement: invalid label selector term {term:?}"))
    };
    let valid_key = |key: &str| !key.is_empty() && key.chars().all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c));
    split_terms(selector)
        .into_iter()
        .map(|term| {
            if let Some(open) = term.find('(') {
                let close = term.rfind(')').filter(|&close| close > open).ok_or_else(|| invalid(&term))?;
                let head: Vec<&str> = term[..open].split_whitespace().collect();
                let values: Vec<String> =
                    term[open + 1..close].split(',').map(|v| v.trim().to_string()).filter(|v| !v.is_empty()).collect();
                return match head.as_slice() {
                    [key, "in"] if valid_key(key) => Ok(LabelRequirement::In(key.to_string(), values)),
                    [key, "notin"] if valid_key(key) => Ok(LabelRequirement::NotIn(key.to_string(), values)),
                    _ => Err(invalid(&term)),
                };
            }
            let requirement = if let Some(key) = term.strip_prefix('!') {
                LabelRequirement::NotExists(key.trim().to_string())
            } else if let Some((key, value)) = term.split_once("!=") {
                LabelRequirement::NotEquals(key.trim().to_string(), value.trim().to_string())
            } else if let Some((key, value)) = term.split_once("==").or_else(|| term.split_once('=')) {
                LabelRequirement::Equals(key.trim().to_string(), value.trim().to_string())
            } else if term.contains(['<', '>']) {
                return Err(invalid(&term));
            } else {
                LabelRequirement::Exists(term.clone())
            };
            let key = match &requirement {
                LabelRequirement::Equals(k, _)
                | LabelRequirement::NotEquals(k, _)
                | LabelRequirement::Exists(k)
                | LabelRequirement::NotExists(k)
                | LabelRequirement::In(k, _)
                | LabelRequirement::NotIn(k, _) => k,
            };
            if valid_key(key) { Ok(requirement) } else { Err(invalid(&term)) }
        })
        .collect()
}

fn parse_field_selector(kind: ResourceKind, selector: &str) -> Result<Vec<FieldRequirement>, ApiError> {
    split_terms(selector)
        .into_iter()
        .map(|term| {
            let (field, value, equals) = if let Some((f, v)) = term.split_once("!=") {
                (f, v, false)
            } else if let Some((f, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
                (f, v, true)
            } else {
                return Err(ApiError::bad_request(format!("invalid selector: '{term}'; can't understand '{term}'")));
            };
            let field = field.trim();
            let supported = matches!(field, "metadata.name" | "metadata.namespace")
                || (kind == ResourceKind::Node && field == "spec.unschedulable")
                || (kind == ResourceKind::Pod && matches!(field, "spec.nodeName" | "status.phase"));
            if !supported {
                return Err(ApiError::bad_request(format!("field label not supported: {field}")));
            }
            Ok(FieldRequirement { field: field.to_string(), value: value.trim().to_string(), equals })
        })
        .collect()
}

impl ObjectFilter {
    fn from_params(
        kind: ResourceKind,
        namespace: Option<&str>,
        params: &HashMap<String, String>,
    ) -> Result<Self, ApiError> {
        Ok(Self {
            namespace: namespace.map(str::to_string),
            labels: params.get("labelSelector").map(|s| parse_label_selector(s)).transpose()?.unwrap_or_default(),
            fields: params.get("fieldSelector").map(|s| parse_field_selector(kind, s)).transpose()?.unwrap_or_default(),
        })
    }

    fn matches(&self, key: &ObjectKey, object: &Value) -> bool {
        if self.namespace.as_ref().is_some_and(|ns| *ns != key.namespace) {
            return false;
        }
        let labels = object.pointer("/metadata/labels").and_then(Value::as_object);
        let label = |k: &str| labels.and_then(|l| l.get(k)).and_then(Value::as_str);
        let labels_ok = self.labels.iter().all(|requirement| match requirement {
            LabelRequirement::Equals(k, v) => label(k) == Some(v.as_str()),
            LabelRequirement::NotEquals(k, v) => label(k) != Some(v.as_str()),
            LabelRequirement::In(k, vs) => label(k).is_some_and(|l| vs.iter().any(|v| v == l)),
            LabelRequirement::NotIn(k, vs) => label(k).is_none_or(|l| vs.iter().all(|v| v != l)),
            LabelRequirement::Exists(k) => label(k).is_some(),
            LabelRequirement::NotExists(k) => label(k).is_none(),
        });
        labels_ok
            && self.fields.iter().all(|requirement| {
                let actual = match requirement.field.as_str() {
                    "metadata.name" => key.name.clone(),
                    "metadata.namespace" => key.namespace.clone(),
                    "spec.nodeName" => {
                        object.pointer("/spec/nodeName").and_then(Value::as_str).unwrap_or("").to_owned()
                    }
                    "status.phase" => object.pointer("/status/phase").and_then(Value::as_str).unwrap_or("").to_owned(),
                    _ => object.pointer("/spec/unschedulable").and_then(Value::as_bool).unwrap_or(false).to_string(),
                };
                (actual == requirement.value) == requirement.equals
            })
    }
}

// ---------------------------------------------------------------------------------------
// Shared state and the public handle

#[derive(Debug)]
struct Shared {
    store: Mutex<Store>,
    options: FakeApiOptions,
    /// Carries the latest resourceVersion so that watch sessions wake on every commit.
    version_tx: watch::Sender<u64>,
    /// Bumped by `break_watches`.
    break_tx: watch::Sender<u64>,
    shutdown_tx: watch::Sender<bool>,
    /// Bumped whenever a watch opens or closes, for `wait_for_open_watches`.
    activity_tx: watch::Sender<u64>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Store> {
        // A panicking test thread must not take the server down with it.
        self.store.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Runs a mutation and wakes the watchers afterwards.
    fn mutate<T>(&self, change: impl FnOnce(&mut Store) -> T) -> T {
        let (result, version) = {
            let mut store = self.lock();
            let result = change(&mut store);
            (result, store.resource_version)
        };
        self.version_tx.send_if_modified(|current| {
            let changed = *current != version;
            *current = version;
            changed
        });
        result
    }

    fn bump_activity(&self) {
        self.activity_tx.send_modify(|n| *n += 1);
    }
}

/// A running fake API server. Dropping it (or calling [`FakeApiServer::shutdown`]) stops it.
#[derive(Debug)]
pub struct FakeApiServer {
    shared: Arc<Shared>,
    addr: SocketAddr,
    server_task: Option<JoinHandle<()>>,
}

impl FakeApiServer {
    /// Starts a server with default options on 127.0.0.1 and a free port.
    ///
    /// # Panics
    /// If no loopback port can be bound (a broken test machine).
    pub async fn start() -> Self {
        Self::start_with(FakeApiOptions::default()).await
    }

    /// Starts a server with the given options.
    ///
    /// # Panics
    /// If no loopback port can be bound (a broken test machine).
    pub async fn start_with(options: FakeApiOptions) -> Self {
        match Self::try_start_with(options).await {
            Ok(server) => server,
            Err(error) => {
                panic!("cannot start the fake Kubernetes API server on 127.0.0.1: {error}")
            }
        }
    }

    /// Starts a server with the given options, reporting bind failures.
    pub async fn try_start_with(options: FakeApiOptions) -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            store: Mutex::new(Store::new(options.history_size)),
            options,
            version_tx: watch::Sender::new(1),
            break_tx: watch::Sender::new(0),
            shutdown_tx: watch::Sender::new(false),
            activity_tx: watch::Sender::new(0),
        });
        let router = Router::new().fallback(handle_request).with_state(shared.clone());
        let mut shutdown_rx = shared.shutdown_tx.subscribe();
        let server_task = tokio::spawn(async move {
            let serve = axum::serve(listener, router).with_graceful_shutdown(async move {
                let _ = shutdown_rx.wait_for(|stopped| *stopped).await;
            });
            if let Err(error) = serve.await {
                eprintln!("fake Kubernetes API server stopped with an error: {error}");
            }
        });
        Ok(Self { shared, addr, server_task: Some(server_task) })
    }

    /// The base URL, e.g. `http://127.0.0.1:41234`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The socket address the server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// A kube client configuration pointing at this server, default namespace `default`.
    pub fn config(&self) -> kube::Config {
        let uri: Uri = self.url().parse().unwrap_or_else(|_| Uri::from_static("http://127.0.0.1"));
        kube::Config::new(uri)
    }

    /// A kube client for this server (no kubeconfig needed).
    ///
    /// # Panics
    /// If kube cannot build a plain-HTTP client, which would be a kube-rs regression.
    pub fn client(&self) -> kube::Client {
        match kube::Client::try_from(self.config()) {
            Ok(client) => client,
            Err(error) => panic!("cannot build a kube client for the fake API server: {error}"),
        }
    }

    /// A kubeconfig (YAML) pointing at this server over plain HTTP, without credentials.
    pub fn kubeconfig_yaml(&self) -> String {
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: gatehouse-fake\n  cluster:\n    server: {url}\ncontexts:\n- name: gatehouse-fake\n  context:\n    cluster: gatehouse-fake\n    user: gatehouse-fake\n    namespace: default\ncurrent-context: gatehouse-fake\nusers:\n- name: gatehouse-fake\n  user: {{}}\npreferences: {{}}\n",
            url = self.url()
        )
    }

    /// Writes [`FakeApiServer::kubeconfig_yaml`] to `path`, for subprocesses started with `KUBECONFIG=path`.
    pub fn write_kubeconfig(&self, path: impl AsRef<Path>) -> std::io::Result<()> {
        std::fs::write(path, self.kubeconfig_yaml())
    }

    /// Stops the server: open watches end, then the listener closes.
    pub async fn shutdown(mut self) {
        self.shared.shutdown_tx.send_replace(true);
        if let Some(task) = self.server_task.take() {
            let abort = task.abort_handle();
            if tokio::time::timeout(Duration::from_secs(5), task).await.is_err() {
                abort.abort();
            }
        }
    }

    /// Creates or replaces an object as `kubectl apply` would (status included), bumping its
    /// resourceVersion and emitting ADDED or MODIFIED. `kind`/`apiVersion` select the type;
    /// a namespaced object without a namespace goes to `default`. A stale
    /// `metadata.resourceVersion` in `object` is ignored. Returns the stored object.
    pub fn apply(&self, object: Value) -> Result<Value, ApiError> {
        let kind_name = object.get("kind").and_then(Value::as_str).unwrap_or("");
        let Some(kind) = ResourceKind::from_kind(kind_name) else {
            return Err(ApiError::bad_request(format!("the fake API server does not serve kind {kind_name:?}")));
        };
        let name = metadata_str(&object, "name").to_string();
        let namespace = metadata_str(&object, "namespace").to_string();
        let namespace = kind.namespaced().then(|| if namespace.is_empty() { "default".to_string() } else { namespace });
        self.shared
            .mutate(|store| store.update(kind, namespace.as_deref(), &name, object, UpdateMode::Full))
            .map(|(stored, _)| stored)
    }

    /// [`FakeApiServer::apply`] for a typed object, e.g. a `k8s_openapi` Node.
    pub fn apply_resource<K>(&self, object: &K) -> Result<K, ApiError>
    where
        K: Serialize + DeserializeOwned,
    {
        let value = serde_json::to_value(object).map_err(|e| ApiError::bad_request(e.to_string()))?;
        let stored = self.apply(value)?;
        serde_json::from_value(stored).map_err(|e| ApiError::bad_request(e.to_string()))
    }

    /// Deletes an object as a client's DELETE does: at once (DELETED with its last state), or,
    /// for an object with finalizers or a pod bound to a node, by setting its
    /// `deletionTimestamp` (MODIFIED). `namespace` is ignored for Nodes.
    pub fn delete(&self, kind: ResourceKind, namespace: Option<&str>, name: &str) -> Result<Value, ApiError> {
        let key = object_key(kind, namespace, name);
        self.shared.mutate(|store| store.delete(&key, None))
    }

    /// A DELETE with `gracePeriodSeconds`: `Some(0)` for a pod is the kubelet's final delete once
    /// its containers have stopped.
    pub fn delete_with_grace(
        &self,
        kind: ResourceKind,
        namespace: Option<&str>,
        name: &str,
        grace_seconds: i64,
    ) -> Result<Value, ApiError> {
        let key = object_key(kind, namespace, name);
        self.shared.mutate(|store| store.delete(&key, Some(&json!({ "gracePeriodSeconds": grace_seconds }))))
    }

    /// The stored object, if any. `namespace` is ignored for Nodes; `None` means `default` otherwise.
    pub fn get(&self, kind: ResourceKind, namespace: Option<&str>, name: &str) -> Option<Value> {
        self.shared.lock().objects.get(&object_key(kind, namespace, name)).cloned()
    }

    /// [`FakeApiServer::get`] for a typed object.
    pub fn get_resource<K>(&self, namespace: Option<&str>, name: &str) -> Option<K>
    where
        K: kube::Resource<DynamicType = ()> + DeserializeOwned,
    {
        let kind = ResourceKind::from_kind(&K::kind(&()))?;
        serde_json::from_value(self.get(kind, namespace, name)?).ok()
    }

    /// Every stored object of a kind, all namespaces, in key order.
    pub fn list(&self, kind: ResourceKind) -> Vec<Value> {
        self.shared.lock().objects.iter().filter(|(k, _)| k.kind == kind).map(|(_, v)| v.clone()).collect()
    }

    /// The current global resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.shared.lock().resource_version
    }

    /// Makes the next `times` requests of any verb (watch included) for `kind` fail with a
    /// `Status` of `status_code`. Note that kube's client retries 429, 503 and 504 itself.
    pub fn inject_error(&self, kind: ResourceKind, status_code: u16, times: usize) {
        let mut store = self.shared.lock();
        let queue = store.injected_errors.entry(kind).or_default();
        queue.extend(std::iter::repeat_n(status_code, times));
    }

    /// Ends every open watch stream (cleanly, as an apiserver restart or a load balancer
    /// would); clients are expected to re-watch from their last resourceVersion.
    pub fn break_watches(&self) {
        self.shared.break_tx.send_modify(|n| *n += 1);
    }

    /// Forgets the whole event history (like an etcd compaction): every watch or continue
    /// token from an older resourceVersion now gets `410 Expired`.
    pub fn compact_history(&self) {
        self.shared.lock().compact();
    }

    /// How many watch requests for `kind` have been accepted so far.
    pub fn watch_requests(&self, kind: ResourceKind) -> u64 {
        self.shared.lock().watch_requests.get(&kind).copied().unwrap_or(0)
    }

    /// How many watch streams for `kind` are open right now.
    pub fn open_watches(&self, kind: ResourceKind) -> usize {
        self.shared.lock().open_watches.get(&kind).copied().unwrap_or(0)
    }

    /// Waits until at least `count` watch streams for `kind` are open. Wrap in a timeout.
    pub async fn wait_for_open_watches(&self, kind: ResourceKind, count: usize) {
        let mut activity = self.shared.activity_tx.subscribe();
        while self.open_watches(kind) < count {
            if activity.changed().await.is_err() {
                return;
            }
        }
    }

    /// The last requests served, as `METHOD /path?query`, oldest first.
    pub fn request_log(&self) -> Vec<String> {
        self.shared.lock().request_log.iter().cloned().collect()
    }
}

impl Drop for FakeApiServer {
    fn drop(&mut self) {
        self.shared.shutdown_tx.send_replace(true);
    }
}

// ---------------------------------------------------------------------------------------
// HTTP

/// A parsed resource URL.
#[derive(Debug)]
struct Route {
    kind: ResourceKind,
    namespace: Option<String>,
    name: Option<String>,
    status_subresource: bool,
}

fn parse_route(path: &str) -> Option<Route> {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, version, rest) = match segments.as_slice() {
        ["api", version, rest @ ..] => ("", *version, rest),
        ["apis", group, version, rest @ ..] => (*group, *version, rest),
        _ => return None,
    };
    let (namespace, rest) = match rest {
        ["namespaces", namespace, rest @ ..] if !rest.is_empty() => (Some(namespace.to_string()), rest),
        _ => (None, rest),
    };
    let (plural, name, subresource) = match rest {
        [plural] => (*plural, None, None),
        [plural, name] => (*plural, Some(name.to_string()), None),
        [plural, name, subresource] => (*plural, Some(name.to_string()), Some(*subresource)),
        _ => return None,
    };
    let kind = ResourceKind::from_path(group, version, plural)?;
    // Cluster-scoped kinds have no namespaced URLs; a namespaced object needs its namespace.
    let shape_ok = !matches!((kind.namespaced(), &namespace, &name), (false, Some(_), _) | (true, None, Some(_)));
    let status_subresource = match subresource {
        None => false,
        Some("status") if kind.has_status_subresource() => true,
        Some(_) => return None,
    };
    shape_ok.then_some(Route { kind, namespace, name, status_subresource })
}

fn query_params(uri: &Uri) -> Result<HashMap<String, String>, ApiError> {
    Query::<HashMap<String, String>>::try_from_uri(uri)
        .map(|Query(params)| params)
        .map_err(|e| ApiError::bad_request(format!("invalid query: {e}")))
}

fn flag(params: &HashMap<String, String>, name: &str) -> bool {
    params.get(name).is_some_and(|v| v == "1" || v.eq_ignore_ascii_case("true"))
}

fn parse_json_body(body: &Bytes) -> Result<Value, ApiError> {
    serde_json::from_slice(body).map_err(|e| ApiError::bad_request(format!("the request body is not valid JSON: {e}")))
}

/// `application/json;as=PartialObjectMetadata...` asks for metadata-only objects.
fn wants_metadata_only(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|accept| accept.contains("as=PartialObjectMetadata"))
}

fn as_partial_metadata(object: &Value) -> Value {
    json!({
        "kind": "PartialObjectMetadata",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": object.get("metadata").cloned().unwrap_or_else(|| json!({})),
    })
}

async fn handle_request(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    {
        let mut store = shared.lock();
        if store.request_log.len() >= REQUEST_LOG_SIZE {
            store.request_log.pop_front();
        }
        let target = uri.path_and_query().map(|pq| pq.as_str()).unwrap_or("/");
        store.request_log.push_back(format!("{method} {target}"));
    }
    match uri.path() {
        "/version" => return json_response(StatusCode::OK, &version_info()),
        "/healthz" | "/livez" | "/readyz" => return (StatusCode::OK, "ok").into_response(),
        _ => {}
    }
    match serve_resource(&shared, &method, &uri, &headers, &body) {
        Ok(response) => response,
        Err(error) => error.into_response(),
    }
}

fn version_info() -> Value {
    json!({
        "major": "1", "minor": "33", "gitVersion": "v1.33.0-gatehouse-fake", "gitCommit": "", "gitTreeState": "clean",
        "buildDate": "2025-01-01T00:00:00Z", "goVersion": "go1.24", "compiler": "gc", "platform": "linux/amd64",
    })
}

fn serve_resource(
    shared: &Arc<Shared>,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<Response, ApiError> {
    let route = parse_route(uri.path()).ok_or_else(ApiError::unknown_path)?;
    let params = query_params(uri)?;
    if let Some(code) = shared.lock().injected_errors.get_mut(&route.kind).and_then(VecDeque::pop_front) {
        return Err(ApiError::injected(code));
    }
    let kind = route.kind;
    let namespace = route.namespace.as_deref();
    let metadata_only = wants_metadata_only(headers);
    let render = |object: &Value| {
        if metadata_only { as_partial_metadata(object) } else { object.clone() }
    };
    let mode = if route.status_subresource { UpdateMode::Status } else { UpdateMode::Main };
    let Some(name) = route.name.as_deref() else {
        return match *method {
            Method::GET if flag(&params, "watch") => {
                let filter = ObjectFilter::from_params(kind, namespace, &params)?;
                start_watch(shared, kind, filter, &params, metadata_only)
            }
            Method::GET => {
                let filter = ObjectFilter::from_params(kind, namespace, &params)?;
                let list = list_objects(&shared.lock(), kind, &filter, &params, metadata_only)?;
                Ok(json_response(StatusCode::OK, &list))
            }
            Method::POST if kind.namespaced() && namespace.is_none() => Err(ApiError::method_not_allowed(method)),
            Method::POST => {
                let object = parse_json_body(body)?;
                let created = shared.mutate(|store| store.create(kind, namespace, object, UpdateMode::Main))?;
                Ok(json_response(StatusCode::CREATED, &render(&created)))
            }
            _ => Err(ApiError::method_not_allowed(method)),
        };
    };
    let key = object_key(kind, namespace, name);
    match *method {
        Method::GET => {
            let store = shared.lock();
            let object = store.objects.get(&key).ok_or_else(|| ApiError::not_found(kind, name))?;
            Ok(json_response(StatusCode::OK, &render(object)))
        }
        Method::PUT => {
            let object = parse_json_body(body)?;
            let (stored, created) = shared.mutate(|store| store.update(kind, namespace, name, object, mode))?;
            let code = if created { StatusCode::CREATED } else { StatusCode::OK };
            Ok(json_response(code, &render(&stored)))
        }
        Method::PATCH => {
            let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
            let content_type = content_type.split(';').next().unwrap_or("").trim();
            let (patch, patch_kind) = match content_type {
                "application/merge-patch+json" => (parse_json_body(body)?, PatchKind::Merge),
                "application/strategic-merge-patch+json" => (parse_json_body(body)?, PatchKind::Strategic),
                "application/apply-patch+yaml" => {
                    let patch: Value = serde_saphyr::from_slice(body)
                        .map_err(|e| ApiError::bad_request(format!("the apply patch is not valid YAML: {e}")))?;
                    (patch, PatchKind::Apply)
                }
                other => {
                    return Err(ApiError::new(
                        415,
                        "UnsupportedMediaType",
                        format!("the fake API server does not support the patch type {other:?}"),
                    ));
                }
            };
            let (stored, created) =
                shared.mutate(|store| store.patch(kind, namespace, name, &patch, patch_kind, mode))?;
            let code = if created { StatusCode::CREATED } else { StatusCode::OK };
            Ok(json_response(code, &render(&stored)))
        }
        Method::DELETE if !route.status_subresource => {
            let mut options = if body.is_empty() { None } else { Some(parse_json_body(body)?) };
            // kube sends DeleteParams in the body; kubectl may put gracePeriodSeconds in the query.
            if let Some(grace) = params.get("gracePeriodSeconds").and_then(|g| g.parse::<i64>().ok()) {
                options.get_or_insert_with(|| json!({}))["gracePeriodSeconds"] = json!(grace);
            }
            let deleted = shared.mutate(|store| store.delete(&key, options.as_ref()))?;
            Ok(json_response(StatusCode::OK, &render(&deleted)))
        }
        _ => Err(ApiError::method_not_allowed(method)),
    }
}

/// Continue tokens are opaque to clients: hex of `resourceVersion/namespace/name`.
fn encode_continue(resource_version: u64, key: &ObjectKey) -> String {
    format!("{resource_version}/{}/{}", key.namespace, key.name).bytes().map(|b| format!("{b:02x}")).collect()
}

fn decode_continue(token: &str) -> Option<(u64, String, String)> {
    if !token.len().is_multiple_of(2) || !token.is_ascii() {
        return None;
    }
    let bytes: Option<Vec<u8>> =
        (0..token.len()).step_by(2).map(|i| u8::from_str_radix(&token[i..i + 2], 16).ok()).collect();
    let text = String::from_utf8(bytes?).ok()?;
    let mut parts = text.splitn(3, '/');
    let version = parts.next()?.parse().ok()?;
    Some((version, parts.next()?.to_string(), parts.next()?.to_string()))
}

fn list_objects(
    store: &Store,
    kind: ResourceKind,
    filter: &ObjectFilter,
    params: &HashMap<String, String>,
    metadata_only: bool,
) -> Result<Value, ApiError> {
    let limit = match params.get("limit").map(|l| l.parse::<usize>()) {
        None => None,
        Some(Ok(0)) => None,
        Some(Ok(limit)) => Some(limit),
        Some(Err(_)) => {
            return Err(ApiError::bad_request("limit must be a non-negative integer"));
        }
    };
    let (list_version, after) = match params.get("continue").filter(|t| !t.is_empty()) {
        None => (store.resource_version, None),
        Some(token) => {
            let (version, namespace, name) =
                decode_continue(token).ok_or_else(|| ApiError::bad_request("continue key is not valid"))?;
            if version < store.compacted_through {
                return Err(ApiError::expired(
                    "The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter.",
                ));
            }
            (version, Some(ObjectKey { kind, namespace, name }))
        }
    };
    let mut matching = store
        .objects
        .iter()
        .filter(|(key, _)| key.kind == kind && after.as_ref().is_none_or(|after| *key > after))
        .filter(|(key, object)| filter.matches(key, object));
    let mut items = Vec::new();
    let mut last_key = None;
    for (key, object) in matching.by_ref() {
        if limit.is_some_and(|limit| items.len() >= limit) {
            break;
        }
        // Like the real server, list items carry no apiVersion/kind of their own.
        let mut item = if metadata_only { as_partial_metadata(object) } else { object.clone() };
        if !metadata_only {
            remove_field(&mut item, "apiVersion");
            remove_field(&mut item, "kind");
        }
        items.push(item);
        last_key = Some(key);
    }
    let mut metadata = json!({ "resourceVersion": list_version.to_string() });
    if let (Some(limit), Some(last_key)) = (limit, last_key)
        && items.len() == limit
    {
        let remaining = store
            .objects
            .iter()
            .filter(|(key, object)| key.kind == kind && *key > last_key && filter.matches(key, object))
            .count();
        if remaining > 0 {
            metadata["continue"] = json!(encode_continue(list_version, last_key));
            metadata["remainingItemCount"] = json!(remaining);
        }
    }
    let (list_kind, api_version) = if metadata_only {
        ("PartialObjectMetadataList".to_string(), "meta.k8s.io/v1")
    } else {
        (format!("{}List", kind.kind()), kind.api_version())
    };
    Ok(json!({ "kind": list_kind, "apiVersion": api_version, "metadata": metadata, "items": items }))
}

// ---------------------------------------------------------------------------------------
// Watch

/// One open watch stream: replays the history after its cursor, then follows new commits.
#[derive(Debug)]
struct WatchSession {
    shared: Arc<Shared>,
    kind: ResourceKind,
    filter: ObjectFilter,
    metadata_only: bool,
    /// Every change up to here has been looked at (and sent if it matched).
    cursor: u64,
    queue: VecDeque<Bytes>,
    finished: bool,
    deadline: Instant,
    next_bookmark: Option<Instant>,
    version_rx: watch::Receiver<u64>,
    break_rx: watch::Receiver<u64>,
    shutdown_rx: watch::Receiver<bool>,
}

fn event_line(event_type: &str, object: &Value) -> Bytes {
    let mut line = json!({ "type": event_type, "object": object }).to_string();
    line.push('\n');
    Bytes::from(line)
}

fn start_watch(
    shared: &Arc<Shared>,
    kind: ResourceKind,
    filter: ObjectFilter,
    params: &HashMap<String, String>,
    metadata_only: bool,
) -> Result<Response, ApiError> {
    let timeout = match params.get("timeoutSeconds").map(|t| t.parse::<u64>()) {
        None => Duration::from_secs(1800),
        Some(Ok(seconds)) => Duration::from_secs(seconds),
        Some(Err(_)) => {
            return Err(ApiError::bad_request("timeoutSeconds must be a non-negative integer"));
        }
    };
    let from_version = match params.get("resourceVersion").map(String::as_str) {
        None | Some("") | Some("0") => None,
        Some(version) => Some(version.parse::<u64>().map_err(|_| {
            ApiError::bad_request(format!("resourceVersion: Invalid value: {version:?}: must be an unsigned integer"))
        })?),
    };
    let bookmarks = flag(params, "allowWatchBookmarks");
    let send_initial_events = flag(params, "sendInitialEvents");
    if send_initial_events && !bookmarks {
        return Err(ApiError::invalid(
            kind,
            "",
            "allowWatchBookmarks",
            &json!(false),
            "allowWatchBookmarks must be set to true when sendInitialEvents is set",
        ));
    }
    // Subscribe before reading the store so that no commit can slip between the two.
    let version_rx = shared.version_tx.subscribe();
    let break_rx = shared.break_tx.subscribe();
    let shutdown_rx = shared.shutdown_tx.subscribe();
    let mut session = WatchSession {
        shared: shared.clone(),
        kind,
        filter,
        metadata_only,
        cursor: 0,
        queue: VecDeque::new(),
        finished: false,
        deadline: Instant::now() + timeout,
        next_bookmark: bookmarks.then(Instant::now),
        version_rx,
        break_rx,
        shutdown_rx,
    };
    {
        let mut store = shared.lock();
        *store.watch_requests.entry(kind).or_default() += 1;
        *store.open_watches.entry(kind).or_default() += 1;
        match from_version {
            Some(version) if !send_initial_events => {
                let expired_below = store.watch_expired_below(kind);
                if version < expired_below {
                    // Like the real server: 200, then one ERROR event, then the end.
                    let gone =
                        ApiError::expired(format!("too old resource version: {version} ({})", expired_below + 1));
                    session.queue.push_back(event_line("ERROR", &gone.to_status()));
                    session.finished = true;
                }
                session.cursor = version;
            }
            _ => {
                // No resourceVersion (or "0"): the current state as synthetic ADDED events.
                for (key, object) in store.objects.iter().filter(|(key, _)| key.kind == kind) {
                    if session.filter.matches(key, object) {
                        let line = event_line("ADDED", &session.render(object));
                        session.queue.push_back(line);
                    }
                }
                session.cursor = store.resource_version;
                if send_initial_events {
                    let end_of_initial_events = session.bookmark_line(true);
                    session.queue.push_back(end_of_initial_events);
                }
            }
        }
    }
    shared.bump_activity();
    let stream = futures::stream::unfold(session, |mut session| async move {
        session.next_chunk().await.map(|chunk| (Ok::<_, Infallible>(chunk), session))
    });
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from_stream(stream))
        .map_err(|e| ApiError::new(500, "InternalError", e.to_string()))
}

impl WatchSession {
    fn render(&self, object: &Value) -> Value {
        if self.metadata_only { as_partial_metadata(object) } else { object.clone() }
    }

    fn bookmark_line(&self, initial_events_end: bool) -> Bytes {
        let (kind, api_version) = if self.metadata_only {
            ("PartialObjectMetadata", "meta.k8s.io/v1")
        } else {
            (self.kind.kind(), self.kind.api_version())
        };
        let mut metadata = json!({ "resourceVersion": self.cursor.to_string() });
        if initial_events_end {
            metadata["annotations"] = json!({ "k8s.io/initial-events-end": "true" });
        }
        event_line("BOOKMARK", &json!({ "kind": kind, "apiVersion": api_version, "metadata": metadata }))
    }

    /// Queues every matching change after the cursor.
    fn collect_pending(&mut self) {
        self.version_rx.borrow_and_update();
        let shared = self.shared.clone();
        let store = shared.lock();
        let expired_below = store.watch_expired_below(self.kind);
        if self.cursor < expired_below {
            // This watcher fell behind the history window of its kind.
            let gone = ApiError::expired(format!("too old resource version: {} ({})", self.cursor, expired_below + 1));
            self.queue.push_back(event_line("ERROR", &gone.to_status()));
            self.finished = true;
            return;
        }
        let start = store.history.partition_point(|event| event.resource_version <= self.cursor);
        for event in store.history.range(start..) {
            if event.key.kind != self.kind {
                continue;
            }
            let now_matches = self.filter.matches(&event.key, &event.object);
            let before_matched = event.previous.as_ref().is_some_and(|p| self.filter.matches(&event.key, p));
            let event_type = match (event.event_type, before_matched, now_matches) {
                (EventType::Deleted, true, _) => EventType::Deleted,
                (EventType::Deleted, false, _) => continue,
                (_, false, true) => EventType::Added,
                (_, true, true) => EventType::Modified,
                (_, true, false) => EventType::Deleted,
                (_, false, false) => continue,
            };
            self.queue.push_back(event_line(event_type.as_str(), &self.render(&event.object)));
        }
        self.cursor = self.cursor.max(store.resource_version);
    }

    async fn next_chunk(&mut self) -> Option<Bytes> {
        loop {
            if let Some(chunk) = self.queue.pop_front() {
                return Some(chunk);
            }
            if self.finished {
                return None;
            }
            self.collect_pending();
            if !self.queue.is_empty() || self.finished {
                continue;
            }
            let bookmark_at = self.next_bookmark.unwrap_or(self.deadline);
            tokio::select! {
                biased;
                _ = self.shutdown_rx.changed() => self.finished = true,
                _ = self.break_rx.changed() => self.finished = true,
                _ = tokio::time::sleep_until(self.deadline) => self.finished = true,
                _ = tokio::time::sleep_until(bookmark_at), if self.next_bookmark.is_some() => {
                    let bookmark = self.bookmark_line(false);
                    self.queue.push_back(bookmark);
                    self.next_bookmark = Some(Instant::now() + self.shared.options.bookmark_interval);
                }
                changed = self.version_rx.changed() => {
                    if changed.is_err() {
                        self.finished = true;
                    }
                }
            }
        }
    }
}

impl Drop for WatchSession {
    fn drop(&mut self) {
        {
            let mut store = self.shared.lock();
            if let Some(open) = store.open_watches.get_mut(&self.kind) {
                *open = open.saturating_sub(1);
            }
        }
        self.shared.bump_activity();
    }
}
