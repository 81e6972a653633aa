//! The object store: objects as JSON exactly as clients sent them (plus server-set metadata),
//! one global resourceVersion like an etcd revision, and the bounded change history that
//! watches resume from.

use super::validation;
use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

/// The resources the stand-in serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    Namespace,
    Pod,
    Node,
    NetworkPolicy,
    /// `policy.networking.k8s.io/v1alpha2`, a custom resource (Palisade's CRD in `conf/`).
    ClusterNetworkPolicy,
}

impl Kind {
    pub const ALL: [Kind; 5] = [
        Kind::Namespace,
        Kind::Pod,
        Kind::Node,
        Kind::NetworkPolicy,
        Kind::ClusterNetworkPolicy,
    ];

    /// `Pod`, `NetworkPolicy`, ...
    pub fn name(self) -> &'static str {
        match self {
            Kind::Namespace => "Namespace",
            Kind::Pod => "Pod",
            Kind::Node => "Node",
            Kind::NetworkPolicy => "NetworkPolicy",
            Kind::ClusterNetworkPolicy => "ClusterNetworkPolicy",
        }
    }

    /// The resource name in URLs: `pods`, `networkpolicies`, ...
    pub fn plural(self) -> &'static str {
        match self {
            Kind::Namespace => "namespaces",
            Kind::Pod => "pods",
            Kind::Node => "nodes",
            Kind::NetworkPolicy => "networkpolicies",
            Kind::ClusterNetworkPolicy => "clusternetworkpolicies",
        }
    }

    pub fn singular(self) -> &'static str {
        match self {
            Kind::Namespace => "namespace",
            Kind::Pod => "pod",
            Kind::Node => "node",
            Kind::NetworkPolicy => "networkpolicy",
            Kind::ClusterNetworkPolicy => "clusternetworkpolicy",
        }
    }

    pub fn short_names(self) -> &'static [&'static str] {
        match self {
            Kind::Namespace => &["ns"],
            Kind::Pod => &["po"],
            Kind::Node => &["no"],
            Kind::NetworkPolicy => &["netpol"],
            Kind::ClusterNetworkPolicy => &["cnp"],
        }
    }

    /// API group (`""` for core).
    pub fn group(self) -> &'static str {
        match self {
            Kind::NetworkPolicy => "networking.k8s.io",
            Kind::ClusterNetworkPolicy => "policy.networking.k8s.io",
            _ => "",
        }
    }

    /// The served version of the group.
    pub fn version(self) -> &'static str {
        match self {
            Kind::ClusterNetworkPolicy => "v1alpha2",
            _ => "v1",
        }
    }

    /// `v1`, `networking.k8s.io/v1`, `policy.networking.k8s.io/v1alpha2`.
    pub fn api_version(self) -> &'static str {
        match self {
            Kind::NetworkPolicy => "networking.k8s.io/v1",
            Kind::ClusterNetworkPolicy => "policy.networking.k8s.io/v1alpha2",
            _ => "v1",
        }
    }

    pub fn namespaced(self) -> bool {
        matches!(self, Kind::Pod | Kind::NetworkPolicy)
    }

    /// Has a `/status` subresource whose content a main-resource write cannot change (the
    /// CRD declares one for ClusterNetworkPolicy).
    pub fn has_status(self) -> bool {
        !matches!(self, Kind::NetworkPolicy)
    }

    /// Its `metadata.generation` counts spec changes (NetworkPolicy, custom resources).
    pub fn has_generation(self) -> bool {
        matches!(self, Kind::NetworkPolicy | Kind::ClusterNetworkPolicy)
    }

    /// `pods` or `networkpolicies.networking.k8s.io`, as error messages name a resource.
    pub fn qualified_resource(self) -> String {
        match self.group() {
            "" => self.plural().to_string(),
            group => format!("{}.{group}", self.plural()),
        }
    }

    /// `Pod` or `NetworkPolicy.networking.k8s.io`, as 422 messages name a kind.
    pub fn qualified_kind(self) -> String {
        match self.group() {
            "" => self.name().to_string(),
            group => format!("{}.{group}", self.name()),
        }
    }

    pub fn from_plural(group: &str, version: &str, plural: &str) -> Option<Kind> {
        Kind::ALL
            .into_iter()
            .find(|k| k.group() == group && k.version() == version && k.plural() == plural)
    }
}

/// One `details.causes` entry of a `Status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusCause {
    /// `FieldValueInvalid`, `FieldValueRequired`, ...
    pub reason: String,
    pub field: String,
    pub message: String,
}

/// An API error as a `Status` object carries it: HTTP `code`, `reason` (`NotFound`,
/// `AlreadyExists`, `Conflict`, `Invalid`, `BadRequest`, `Expired`, ...), `message`, the
/// object it is about (`details.name/group/kind`) and the field causes of a 422.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub code: u16,
    pub reason: String,
    pub message: String,
    /// Boxed: errors travel in every `Result` here and should stay small.
    pub details: Box<StatusDetails>,
}

/// `Status.details`: the object an error is about and, for 422, the field causes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StatusDetails {
    pub name: String,
    pub group: String,
    /// The resource (`pods`) for most errors, the kind (`NetworkPolicy`) for 422.
    pub kind: String,
    pub causes: Vec<StatusCause>,
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({}): {}", self.code, self.reason, self.message)
    }
}

impl std::error::Error for ApiError {}

impl ApiError {
    pub fn new(code: u16, reason: &str, message: impl Into<String>) -> ApiError {
        ApiError {
            code,
            reason: reason.to_string(),
            message: message.into(),
            details: Box::default(),
        }
    }

    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(400, "BadRequest", message)
    }

    fn about(mut self, kind: Kind, name: &str) -> ApiError {
        self.details.name = name.to_string();
        self.details.group = kind.group().to_string();
        self.details.kind = kind.plural().to_string();
        self
    }

    pub fn not_found(kind: Kind, name: &str) -> ApiError {
        ApiError::new(
            404,
            "NotFound",
            format!("{} \"{name}\" not found", kind.qualified_resource()),
        )
        .about(kind, name)
    }

    pub fn already_exists(kind: Kind, name: &str) -> ApiError {
        ApiError::new(
            409,
            "AlreadyExists",
            format!("{} \"{name}\" already exists", kind.qualified_resource()),
        )
        .about(kind, name)
    }

    pub fn conflict(kind: Kind, name: &str) -> ApiError {
        ApiError::new(
            409,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {} \"{name}\": the object has been modified; \
                 please apply your changes to the latest version and try again",
                kind.qualified_resource()
            ),
        )
        .about(kind, name)
    }

    /// 410 Expired, as a watch from a compacted version gets it.
    pub fn expired(requested: u64, oldest: u64) -> ApiError {
        ApiError::new(
            410,
            "Expired",
            format!("too old resource version: {requested} ({oldest})"),
        )
    }

    /// 422 Invalid with one cause per field error, worded as the API server does.
    pub fn invalid(kind: Kind, name: &str, causes: Vec<StatusCause>) -> ApiError {
        let listed: Vec<String> = causes
            .iter()
            .map(|c| format!("{}: {}", c.field, c.message))
            .collect();
        let summary = if listed.len() == 1 {
            listed[0].clone()
        } else {
            format!("[{}]", listed.join(", "))
        };
        let mut err = ApiError::new(
            422,
            "Invalid",
            format!("{} \"{name}\" is invalid: {summary}", kind.qualified_kind()),
        );
        err.details.name = name.to_string();
        err.details.group = kind.group().to_string();
        err.details.kind = kind.name().to_string();
        err.details.causes = causes;
        err
    }

    /// The `Status` object (`kind: Status`, `status: Failure`).
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
        let mut details = Map::new();
        if !self.details.name.is_empty() {
            details.insert("name".into(), json!(self.details.name));
        }
        if !self.details.group.is_empty() {
            details.insert("group".into(), json!(self.details.group));
        }
        if !self.details.kind.is_empty() {
            details.insert("kind".into(), json!(self.details.kind));
        }
        if !self.details.causes.is_empty() {
            let causes: Vec<Value> = self
                .details
                .causes
                .iter()
                .map(|c| json!({"reason": c.reason, "message": c.message, "field": c.field}))
                .collect();
            details.insert("causes".into(), Value::Array(causes));
        }
        if !details.is_empty() {
            status["details"] = Value::Object(details);
        }
        status
    }
}

/// Watch event types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    Added,
    Modified,
    Deleted,
}

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Added => "ADDED",
            EventType::Modified => "MODIFIED",
            EventType::Deleted => "DELETED",
        }
    }
}

/// One committed change: what a watch replays.
#[derive(Debug)]
pub struct Change {
    pub rv: u64,
    pub kind: Kind,
    pub event: EventType,
    /// The object after the change (for DELETED: the final object, with the deletion's rv).
    pub object: Value,
    /// The object before a MODIFIED change (selector-filtered watches turn a change that
    /// leaves or enters the selection into DELETED / ADDED, as the watch cache does).
    pub previous: Option<Value>,
}

/// How a write treats `status` (the API server splits main resource and `/status`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteMode {
    /// The harness through the Rust API: the object is taken whole, status included.
    Whole,
    /// PUT/PATCH on the main resource: `status` changes are ignored (kinds with `/status`).
    Main,
    /// PUT/PATCH on `/status`: only `status` changes.
    Status,
}

type Key = (Kind, String, String);

struct Inner {
    rv: u64,
    objects: BTreeMap<Key, Value>,
    history: VecDeque<Arc<Change>>,
    /// A watch may resume from any version >= this one; older ones are gone (410).
    compacted: u64,
    history_limit: usize,
    ids: IdSource,
}

pub(crate) struct Store {
    inner: Mutex<Inner>,
    /// The latest resourceVersion, for watches waiting on changes.
    latest: tokio::sync::watch::Sender<u64>,
}

/// The label every namespace carries (set by the API server, cannot be changed).
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

impl Store {
    pub fn new(history_limit: usize) -> Store {
        // Versions start at the wall clock in milliseconds, and everything before is
        // "compacted": a client that kept a version from an earlier stand-in process (the
        // harness restarting the binary) gets 410 and relists instead of a wrong replay.
        let start = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        Store {
            inner: Mutex::new(Inner {
                rv: start,
                objects: BTreeMap::new(),
                history: VecDeque::new(),
                compacted: start,
                history_limit: history_limit.max(1),
                ids: IdSource::new(),
            }),
            latest: tokio::sync::watch::channel(start).0,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves consistent data (writes are done last).
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn resource_version(&self) -> u64 {
        self.lock().rv
    }

    /// Subscribe to "the resourceVersion moved" notifications.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.latest.subscribe()
    }

    pub fn get(&self, kind: Kind, namespace: Option<&str>, name: &str) -> Option<Value> {
        let key = (kind, namespace.unwrap_or("").to_string(), name.to_string());
        self.lock().objects.get(&key).cloned()
    }

    /// All objects of a kind (optionally in one namespace), sorted by namespace/name.
    pub fn list_all(&self, kind: Kind, namespace: Option<&str>) -> Vec<Value> {
        self.snapshot(kind, namespace).0
    }

    /// The objects and the resourceVersion they are consistent with.
    pub fn snapshot(&self, kind: Kind, namespace: Option<&str>) -> (Vec<Value>, u64) {
        let inner = self.lock();
        let items = inner
            .objects
            .iter()
            .filter(|((k, ns, _), _)| *k == kind && namespace.is_none_or(|want| want == ns))
            .map(|(_, v)| v.clone())
            .collect();
        (items, inner.rv)
    }

    /// The changes of `kind` after version `after` and the current version (which the caller
    /// has then seen everything up to), or 410 when some are no longer kept.
    pub fn changes_since(
        &self,
        kind: Kind,
        after: u64,
    ) -> Result<(Vec<Arc<Change>>, u64), ApiError> {
        let inner = self.lock();
        // Newer than anything here: a version from another stand-in instance. The real
        // server would wait and time out ("Too large resource version"); 410 makes clients
        // relist, which is what they need.
        if after < inner.compacted || after > inner.rv {
            return Err(ApiError::expired(after, inner.compacted));
        }
        // History is sorted by rv: skip to the first change after `after`.
        let start = inner.history.partition_point(|c| c.rv <= after);
        let changes = inner
            .history
            .iter()
            .skip(start)
            .filter(|c| c.kind == kind)
            .cloned()
            .collect();
        Ok((changes, inner.rv.max(after)))
    }

    /// Forget every change: watching from any version before the current one gets 410.
    pub fn expire_history(&self) {
        let mut inner = self.lock();
        inner.history.clear();
        inner.compacted = inner.rv;
    }

    pub fn create(&self, kind: Kind, object: Value) -> Result<Value, ApiError> {
        let mut inner = self.lock();
        inner.create(kind, object).map(|(v, changed)| {
            self.notify(changed, inner.rv);
            v
        })
    }

    pub fn update(&self, kind: Kind, object: Value, mode: WriteMode) -> Result<Value, ApiError> {
        let mut inner = self.lock();
        inner.update(kind, object, mode).map(|(v, changed)| {
            self.notify(changed, inner.rv);
            v
        })
    }

    /// Create or replace (ignores a stale resourceVersion).
    pub fn apply(&self, kind: Kind, mut object: Value) -> Result<Value, ApiError> {
        let mut inner = self.lock();
        let (namespace, name) = object_key_names(&object);
        let exists = inner
            .objects
            .contains_key(&(kind, ns_for(kind, &namespace), name.clone()));
        let result = if exists && !name.is_empty() {
            if let Some(meta) = object.get_mut("metadata").and_then(Value::as_object_mut) {
                meta.remove("resourceVersion");
            }
            inner.update(kind, object, WriteMode::Whole)
        } else {
            inner.create(kind, object)
        };
        result.map(|(v, changed)| {
            self.notify(changed, inner.rv);
            v
        })
    }

    /// RFC 7386 merge patch, then an update with `mode`. The patched object keeps the stored
    /// resourceVersion unless the patch sets one (then it is a precondition, as upstream).
    pub fn merge_patch(
        &self,
        kind: Kind,
        namespace: Option<&str>,
        name: &str,
        patch: &Value,
        mode: WriteMode,
    ) -> Result<Value, ApiError> {
        self.patch_with(kind, namespace, name, mode, |object| {
            super::patch::merge_patch(object, patch);
            Ok(())
        })
    }

    /// RFC 6902 JSON patch, then an update with `mode`.
    pub fn json_patch(
        &self,
        kind: Kind,
        namespace: Option<&str>,
        name: &str,
        patch: &Value,
        mode: WriteMode,
    ) -> Result<Value, ApiError> {
        self.patch_with(kind, namespace, name, mode, |object| {
            super::patch::json_patch(object, patch).map_err(ApiError::bad_request)
        })
    }

    fn patch_with(
        &self,
        kind: Kind,
        namespace: Option<&str>,
        name: &str,
        mode: WriteMode,
        apply: impl FnOnce(&mut Value) -> Result<(), ApiError>,
    ) -> Result<Value, ApiError> {
        let mut inner = self.lock();
        let key = (
            kind,
            ns_for(kind, namespace.unwrap_or("")),
            name.to_string(),
        );
        let mut object = inner
            .objects
            .get(&key)
            .cloned()
            .ok_or_else(|| ApiError::not_found(kind, name))?;
        apply(&mut object)?;
        // The name and namespace come from the URL: a patch cannot move an object.
        if let Some(meta) = object.get_mut("metadata").and_then(Value::as_object_mut) {
            meta.insert("name".into(), json!(name));
            if kind.namespaced() {
                meta.insert("namespace".into(), json!(key.1));
            }
        }
        inner.update(kind, object, mode).map(|(v, changed)| {
            self.notify(changed, inner.rv);
            v
        })
    }

    /// Delete now. Deleting a namespace deletes what is in it first (what the namespace
    /// controller does after the grace period on a real cluster).
    pub fn delete(
        &self,
        kind: Kind,
        namespace: Option<&str>,
        name: &str,
    ) -> Result<Value, ApiError> {
        let mut inner = self.lock();
        let key = (
            kind,
            ns_for(kind, namespace.unwrap_or("")),
            name.to_string(),
        );
        if !inner.objects.contains_key(&key) {
            return Err(ApiError::not_found(kind, name));
        }
        if kind == Kind::Namespace {
            let contained: Vec<Key> = inner
                .objects
                .keys()
                .filter(|(k, ns, _)| k.namespaced() && ns == name)
                .cloned()
                .collect();
            for key in contained {
                inner.remove(key);
            }
        }
        let object = inner.remove(key);
        self.notify(true, inner.rv);
        Ok(object)
    }

    fn notify(&self, changed: bool, rv: u64) {
        if changed {
            self.latest.send_replace(rv);
        }
    }
}

fn ns_for(kind: Kind, namespace: &str) -> String {
    if kind.namespaced() {
        namespace.to_string()
    } else {
        String::new()
    }
}

fn object_key_names(object: &Value) -> (String, String) {
    let meta = &object["metadata"];
    (
        meta["namespace"].as_str().unwrap_or("").to_string(),
        meta["name"].as_str().unwrap_or("").to_string(),
    )
}

impl Inner {
    fn create(&mut self, kind: Kind, mut object: Value) -> Result<(Value, bool), ApiError> {
        let Some(map) = object.as_object_mut() else {
            return Err(ApiError::bad_request("the object must be a JSON object"));
        };
        check_type(kind, map)?;
        let meta = map
            .entry("metadata")
            .or_insert_with(|| json!({}))
            .as_object_mut()
            .ok_or_else(|| ApiError::bad_request("metadata must be an object"))?;
        let namespace = if kind.namespaced() {
            let ns = meta
                .get("namespace")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string();
            if ns.is_empty() {
                return Err(ApiError::bad_request(
                    "the namespace of the provided object is required",
                ));
            }
            if !self
                .objects
                .contains_key(&(Kind::Namespace, String::new(), ns.clone()))
            {
                return Err(ApiError::not_found(Kind::Namespace, &ns));
            }
            ns
        } else {
            meta.remove("namespace");
            String::new()
        };
        let mut name = meta
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        let generate_name = meta
            .get("generateName")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        if name.is_empty() && !generate_name.is_empty() {
            // As the API server's names.SimpleNameGenerator: prefix (cut to 58) + 5 chars.
            let prefix: String = generate_name.chars().take(58).collect();
            loop {
                let candidate = format!("{prefix}{}", self.ids.name_suffix());
                if !self
                    .objects
                    .contains_key(&(kind, namespace.clone(), candidate.clone()))
                {
                    name = candidate;
                    break;
                }
            }
            meta.insert("name".into(), json!(name));
        }
        let key = (kind, namespace, name.clone());
        meta.remove("resourceVersion");
        meta.insert("uid".into(), json!(self.ids.uid()));
        meta.insert("creationTimestamp".into(), json!(rfc3339_now()));
        for server_set in [
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "selfLink",
        ] {
            meta.remove(server_set);
        }
        if kind.has_generation() {
            meta.insert("generation".into(), json!(1));
        }
        apply_defaults(kind, &mut object, &name);
        validate(kind, &mut object)?;
        if name.is_empty() {
            return Err(ApiError::invalid(
                kind,
                "",
                vec![StatusCause {
                    reason: "FieldValueRequired".into(),
                    field: "metadata.name".into(),
                    message: "Required value: name or generateName is required".into(),
                }],
            ));
        }
        if self.objects.contains_key(&key) {
            return Err(ApiError::already_exists(kind, &name));
        }
        let stored = self.commit(key, EventType::Added, object, None);
        Ok((stored, true))
    }

    fn update(
        &mut self,
        kind: Kind,
        mut object: Value,
        mode: WriteMode,
    ) -> Result<(Value, bool), ApiError> {
        let Some(map) = object.as_object_mut() else {
            return Err(ApiError::bad_request("the object must be a JSON object"));
        };
        check_type(kind, map)?;
        let (namespace, name) = object_key_names(&object);
        if name.is_empty() {
            return Err(ApiError::bad_request("the name of the object is required"));
        }
        let key = (kind, ns_for(kind, &namespace), name.clone());
        let Some(existing) = self.objects.get(&key).cloned() else {
            return Err(ApiError::not_found(kind, &name));
        };
        let given_rv = object["metadata"]["resourceVersion"]
            .as_str()
            .unwrap_or("")
            .to_string();
        if !given_rv.is_empty() && given_rv != existing["metadata"]["resourceVersion"] {
            return Err(ApiError::conflict(kind, &name));
        }
        let mut new = match mode {
            WriteMode::Whole => object,
            WriteMode::Main => {
                if kind.has_status() {
                    match existing.get("status") {
                        Some(status) => object["status"] = status.clone(),
                        None => {
                            if let Some(map) = object.as_object_mut() {
                                map.remove("status");
                            }
                        }
                    }
                }
                object
            }
            WriteMode::Status => {
                let mut new = existing.clone();
                match object.get("status") {
                    Some(status) => new["status"] = status.clone(),
                    None => {
                        if let Some(map) = new.as_object_mut() {
                            map.remove("status");
                        }
                    }
                }
                new
            }
        };
        // Server-owned metadata stays as stored.
        {
            let meta = new["metadata"]
                .as_object_mut()
                .ok_or_else(|| ApiError::bad_request("metadata must be an object"))?;
            for owned in [
                "uid",
                "creationTimestamp",
                "resourceVersion",
                "generateName",
            ] {
                match existing["metadata"].get(owned) {
                    Some(v) => meta.insert(owned.into(), v.clone()),
                    None => meta.remove(owned),
                };
            }
            if !kind.namespaced() {
                meta.remove("namespace");
            }
        }
        if kind.has_generation() {
            let generation = existing["metadata"]["generation"].as_i64().unwrap_or(1);
            let bumped = if new.get("spec") != existing.get("spec") {
                generation + 1
            } else {
                generation
            };
            new["metadata"]["generation"] = json!(bumped);
        }
        apply_defaults(kind, &mut new, &name);
        validate(kind, &mut new)?;
        if new == existing {
            // No-op writes do not bump the version nor make an event (as upstream).
            return Ok((existing, false));
        }
        let stored = self.commit(key, EventType::Modified, new, Some(existing));
        Ok((stored, true))
    }

    fn remove(&mut self, key: Key) -> Value {
        let previous = self.objects.remove(&key);
        let object = previous.clone().unwrap_or(Value::Null);
        self.commit(key, EventType::Deleted, object, previous)
    }

    /// Bump the version, stamp it on the object, store (or drop) it and record the change.
    fn commit(
        &mut self,
        key: Key,
        event: EventType,
        mut object: Value,
        previous: Option<Value>,
    ) -> Value {
        self.rv += 1;
        object["metadata"]["resourceVersion"] = json!(self.rv.to_string());
        if event == EventType::Deleted {
            self.objects.remove(&key);
        } else {
            self.objects.insert(key.clone(), object.clone());
        }
        self.history.push_back(Arc::new(Change {
            rv: self.rv,
            kind: key.0,
            event,
            object: object.clone(),
            previous: if event == EventType::Modified {
                previous
            } else {
                None
            },
        }));
        while self.history.len() > self.history_limit {
            if let Some(dropped) = self.history.pop_front() {
                self.compacted = dropped.rv;
            }
        }
        object
    }
}

/// `apiVersion`/`kind` in the body, when given, must be this resource's.
fn check_type(kind: Kind, map: &mut Map<String, Value>) -> Result<(), ApiError> {
    if let Some(given) = map.get("kind").and_then(Value::as_str) {
        if given != kind.name() {
            return Err(ApiError::bad_request(format!(
                "the object kind {given:?} does not match the resource {}",
                kind.qualified_resource()
            )));
        }
    }
    if let Some(given) = map.get("apiVersion").and_then(Value::as_str) {
        if given != kind.api_version() {
            return Err(ApiError::bad_request(format!(
                "the API version {given:?} does not match the resource {} ({})",
                kind.qualified_resource(),
                kind.api_version()
            )));
        }
    }
    map.insert("apiVersion".into(), json!(kind.api_version()));
    map.insert("kind".into(), json!(kind.name()));
    Ok(())
}

/// Defaulting the API server does for these kinds (only what clients look at).
fn apply_defaults(kind: Kind, object: &mut Value, name: &str) {
    match kind {
        Kind::Namespace => {
            // The API server sets this label on every write and it cannot be changed.
            let meta = &mut object["metadata"];
            if !meta["labels"].is_object() {
                meta["labels"] = json!({});
            }
            meta["labels"][NAMESPACE_NAME_LABEL] = json!(name);
            if !object["spec"]["finalizers"].is_array() {
                object["spec"]["finalizers"] = json!(["kubernetes"]);
            }
            if object["status"]["phase"].as_str().is_none() {
                object["status"]["phase"] = json!("Active");
            }
        }
        Kind::NetworkPolicy => {
            let spec = &mut object["spec"];
            if spec.is_null() {
                *spec = json!({});
            }
            if spec["podSelector"].is_null() {
                spec["podSelector"] = json!({});
            }
            // policyTypes defaulting (networking/v1 SetDefaults_NetworkPolicySpec).
            let absent = spec["policyTypes"]
                .as_array()
                .is_none_or(|types| types.is_empty());
            if absent {
                let mut types = vec![json!("Ingress")];
                // `len(spec.Egress) != 0` upstream: `egress: []` alone adds nothing.
                if spec["egress"].as_array().is_some_and(|e| !e.is_empty()) {
                    types.push(json!("Egress"));
                }
                spec["policyTypes"] = Value::Array(types);
            }
            // `get_mut`, not `[]`: indexing a JSON map mutably inserts `null` for a missing
            // key, and `ports: null` is not what the client sent.
            for rules in ["ingress", "egress"] {
                let Some(rules) = spec.get_mut(rules).and_then(Value::as_array_mut) else {
                    continue;
                };
                for rule in rules {
                    let Some(ports) = rule.get_mut("ports").and_then(Value::as_array_mut) else {
                        continue;
                    };
                    for port in ports.iter_mut().filter(|p| p.is_object()) {
                        if port.get("protocol").is_none_or(Value::is_null) {
                            port["protocol"] = json!("TCP");
                        }
                    }
                }
            }
        }
        Kind::Pod | Kind::Node | Kind::ClusterNetworkPolicy => {}
    }
}

/// Validate (and for a custom resource prune, as its structural schema does) an object about
/// to be stored.
fn validate(kind: Kind, object: &mut Value) -> Result<(), ApiError> {
    let name = object["metadata"]["name"]
        .as_str()
        .unwrap_or("")
        .to_string();
    let causes = match kind {
        Kind::NetworkPolicy => validation::network_policy_causes(object)?,
        Kind::ClusterNetworkPolicy => validation::cluster_network_policy_causes(object)?,
        _ => validation::object_meta_causes(kind, object),
    };
    let name = name.as_str();
    if causes.is_empty() {
        Ok(())
    } else {
        Err(ApiError::invalid(kind, name, causes))
    }
}

/// Unique ids and random name suffixes without a rand dependency (SplitMix64 seeded from the
/// clock and pid: uniqueness within one process run is what matters here).
struct IdSource {
    state: u64,
}

impl IdSource {
    fn new() -> IdSource {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        IdSource {
            state: nanos ^ (u64::from(std::process::id()) << 32),
        }
    }

    fn next(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A version-4 UUID.
    fn uid(&mut self) -> String {
        let hi = self.next();
        let lo = self.next();
        let hi = (hi & 0xffff_ffff_ffff_0fff) | 0x0000_0000_0000_4000;
        let lo = (lo & 0x3fff_ffff_ffff_ffff) | 0x8000_0000_0000_0000;
        format!(
            "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
            hi >> 32,
            (hi >> 16) & 0xffff,
            hi & 0xffff,
            lo >> 48,
            lo & 0xffff_ffff_ffff
        )
    }

    /// Five characters from the API server's alphabet (no vowels, no confusable digits).
    fn name_suffix(&mut self) -> String {
        const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
        let mut bits = self.next();
        (0..5)
            .map(|_| {
                let c = ALPHABET[(bits % ALPHABET.len() as u64) as usize] as char;
                bits /= ALPHABET.len() as u64;
                c
            })
            .collect()
    }
}

/// Now as `2026-11-26T15:58:07Z` (what `metav1.Time` serialises to).
pub fn rfc3339_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    rfc3339(secs)
}

pub fn rfc3339(unix_secs: i64) -> String {
    let days = unix_secs.div_euclid(86_400);
    let secs_of_day = unix_secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        secs_of_day / 3600,
        (secs_of_day / 60) % 60,
        secs_of_day % 60
    )
}

/// Parse `YYYY-MM-DDTHH:MM:SS[.frac](Z|±HH:MM)` to unix seconds.
pub fn parse_rfc3339(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || b[10] != b'T' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| s.get(r)?.parse::<i64>().ok();
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, se) = (num(11..13)?, num(14..16)?, num(17..19)?);
    let mut rest = &s[19..];
    if let Some(frac) = rest.strip_prefix('.') {
        rest = frac.trim_start_matches(|c: char| c.is_ascii_digit());
    }
    let offset = match rest {
        "Z" | "z" => 0,
        tz if tz.len() == 6 => {
            let sign = if tz.starts_with('-') { -1 } else { 1 };
            sign * (tz[1..3].parse::<i64>().ok()? * 3600 + tz[4..6].parse::<i64>().ok()? * 60)
        }
        _ => return None,
    };
    Some(days_from_civil(y, mo, d) * 86_400 + h * 3600 + mi * 60 + se - offset)
}

// Howard Hinnant's civil date algorithms.
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { y + 1 } else { y }, m, d)
}

fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_round_trip() {
        for secs in [0, 951_782_400, 1_795_622_287, 4_102_444_800] {
            assert_eq!(
                parse_rfc3339(&rfc3339(secs)),
                Some(secs),
                "{}",
                rfc3339(secs)
            );
        }
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(parse_rfc3339("1970-01-01T01:00:00+01:00"), Some(0));
    }

    #[test]
    fn uids_and_suffixes_are_unique() {
        let mut ids = IdSource::new();
        let uids: std::collections::BTreeSet<String> = (0..1000).map(|_| ids.uid()).collect();
        assert_eq!(uids.len(), 1000);
        let suffix = ids.name_suffix();
        assert_eq!(suffix.len(), 5);
    }

    #[test]
    fn history_limit_compacts_and_watch_from_before_gets_410() {
        let store = Store::new(2);
        let start = store.resource_version();
        for name in ["a", "b", "c"] {
            let ns = json!({"metadata": {"name": name}});
            store.create(Kind::Namespace, ns).unwrap();
        }
        let since = |rv: u64| store.changes_since(Kind::Namespace, rv);
        // Changes 2 and 3 kept: resuming after change 1 sees both, from before it not.
        assert_eq!(since(start + 1).unwrap().0.len(), 2);
        assert_eq!(since(start).unwrap_err().code, 410);
        // Versions from before this store existed, or beyond its latest: 410 too.
        assert_eq!(since(5).unwrap_err().code, 410);
        assert_eq!(since(start + 4).unwrap_err().code, 410);
        store.expire_history();
        assert_eq!(since(start + 2).unwrap_err().code, 410);
        assert!(since(start + 3).unwrap().0.is_empty());
    }
}
