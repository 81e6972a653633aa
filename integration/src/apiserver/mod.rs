//! A local stand-in for the Kubernetes API server: enough of the REST API for Namespaces,
//! Pods, Nodes (core/v1), NetworkPolicies (networking.k8s.io/v1) and ClusterNetworkPolicies
//! (policy.networking.k8s.io/v1alpha2, a custom resource: Palisade's CRD in `conf/`) that
//! `palisade-agent` (kube-rs list/watch) and the real `kubectl` work against it. There is no Kubernetes on
//! these machines (DESIGN.md "What runs where in tests"); this is what the netns cluster
//! feeds its agents from.
//!
//! # What it serves
//!
//! Plain HTTP/1.1, no authentication; optionally also HTTPS with a bearer token
//! ([`ApiServerConfig::tls`], for in-cluster clients: [`tls`]). Paths as the API server has
//! them:
//!
//! | resource | collection paths | object path (+ `/status`) |
//! | --- | --- | --- |
//! | namespaces | `/api/v1/namespaces` | `/api/v1/namespaces/{name}` |
//! | pods | `/api/v1/pods`, `/api/v1/namespaces/{ns}/pods` | `/api/v1/namespaces/{ns}/pods/{name}` |
//! | nodes | `/api/v1/nodes` | `/api/v1/nodes/{name}` |
//! | networkpolicies | `/apis/networking.k8s.io/v1/networkpolicies`, `.../namespaces/{ns}/networkpolicies` | `.../namespaces/{ns}/networkpolicies/{name}` |
//! | clusternetworkpolicies | `/apis/policy.networking.k8s.io/v1alpha2/clusternetworkpolicies` | `.../clusternetworkpolicies/{name}` |
//!
//! Verbs: list (`labelSelector`, `fieldSelector` on `metadata.name`, `metadata.namespace`,
//! `spec.nodeName`; `limit`/`continue`), watch (`watch=1|true`, `resourceVersion`,
//! `allowWatchBookmarks`, `timeoutSeconds`, `sendInitialEvents` is not supported), get,
//! create (POST, `generateName`, 409 AlreadyExists), update (PUT, 409 Conflict on a stale
//! `metadata.resourceVersion`), patch (merge-patch; strategic-merge and JSON-patch requests
//! are applied as merge-patch / RFC 6902 respectively, which is exact for labels and
//! annotations), delete (immediate; the DELETED event carries the final object with a new
//! resourceVersion). Discovery (`/api`, `/apis`, aggregated v2), `/version`, and the
//! `meta.k8s.io/v1` Table format for `kubectl get`. Unknown query parameters are ignored.
//!
//! Semantics kept from the real server because clients depend on them:
//! - One global, strictly increasing resourceVersion (etcd revision) over all kinds. Lists
//!   carry it in `metadata.resourceVersion`; a watch from version V sends every change after V
//!   in order, then live changes. Versions start at the wall clock in milliseconds, so a
//!   restarted stand-in never reuses versions; a watch from a version older than the start
//!   or newer than the latest gets 410 (clients relist).
//! - A bounded history of changes ([`ApiServerConfig::history_limit`]); watching from a
//!   version older than the oldest retained change yields an `ERROR` event with a `Status`
//!   of code 410, reason `Expired` (kube-rs then relists). [`Faults::expire_history`] drops
//!   the whole history at once.
//! - `metadata.uid`, `metadata.creationTimestamp` and `metadata.resourceVersion` are set by the
//!   server; namespaces always carry `kubernetes.io/metadata.name=<name>` (re-added on every
//!   write, as the API server does).
//! - NetworkPolicy create/update/patch is validated with
//!   [`palisade_policy::model::validate::validate_network_policy`]: 422 with a `Status` of
//!   reason `Invalid` and `details.causes` (field, message).
//! - ClusterNetworkPolicy as a custom resource of Palisade's CRD: fields the structural schema
//!   does not know are pruned from `spec` before storing, a field of the wrong type and what
//!   the schema and CEL rules refuse
//!   ([`palisade_policy::model::validate::validate_cluster_network_policy`]) is a 422 with
//!   causes. [`ApiServerConfig::cluster_network_policy_crd`] off: a cluster without the CRD.
//! - A namespaced create in a namespace that does not exist is refused with 404 NotFound.
//! - Objects are stored as JSON as sent, so fields the stand-in does not know round-trip.
//!   Unlike the real server, a Pod's `status` given at create time is kept (the harness sets
//!   `podIP` that way) and `/status` PUT/PATCH replace/merge `status` only.
//!
//! # Library API (for the netns cluster harness)
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! use palisade_integration::apiserver::{ApiServer, Kind};
//! use serde_json::json;
//!
//! let api = ApiServer::start("127.0.0.1:0".parse()?).await?; // ephemeral port
//! println!("{}", api.url()); // http://127.0.0.1:41235
//! api.write_kubeconfig("/tmp/kubeconfig".as_ref())?; // for agents and kubectl
//! api.create(Kind::Namespace, json!({"metadata": {"name": "x", "labels": {"team": "a"}}}))?;
//! api.create(
//!     Kind::Pod,
//!     json!({"metadata": {"namespace": "x", "name": "a", "labels": {"pod": "a"}},
//!            "spec": {"nodeName": "node-1", "containers": [{"name": "main"}]},
//!            "status": {"phase": "Running", "podIP": "10.244.1.5",
//!                       "podIPs": [{"ip": "10.244.1.5"}]}}),
//! )?;
//! api.patch_labels(Kind::Pod, Some("x"), "a", &[("app", Some("web")), ("pod", None)])?;
//! api.faults().drop_watches();
//! api.shutdown().await;
//! # Ok(()) }
//! ```
//!
//! All store operations ([`ApiServer::create`], [`ApiServer::update`], [`ApiServer::apply`],
//! [`ApiServer::delete`], [`ApiServer::patch_labels`], [`ApiServer::merge_patch`],
//! [`ApiServer::get`], [`ApiServer::list`]) are synchronous (a mutex, no I/O): call them from
//! async or blocking code alike. They behave exactly like the HTTP verbs (same validation,
//! same events). Only starting and stopping the server is async; from non-async code use
//! [`ApiServer::start_in_thread`], which runs the server on its own runtime thread.
//!
//! # Fault switches
//!
//! From Rust: [`ApiServer::faults`]. Over HTTP (same port; these paths are never refused):
//!
//! | request | effect |
//! | --- | --- |
//! | `POST /_standin/drop-watches` | end every open watch stream now (the connection closes mid-stream) |
//! | `POST /_standin/refuse?seconds=N` | for N seconds close every new connection at once and end open watches |
//! | `POST /_standin/unavailable?seconds=N` | for N seconds answer every API request with 503 and end open watches |
//! | `POST /_standin/expire` | forget the change history: watching from any older version gets 410 |
//! | `GET /_standin/rv` | the current resourceVersion, as plain text |
//!
//! # The binary
//!
//! `palisade-apiserver [--listen 127.0.0.1:0] [--kubeconfig-out PATH] [--history-limit N]`
//! prints `listening on http://127.0.0.1:PORT` on stdout once it accepts connections.

mod discovery;
mod http;
mod kubeconfig;
mod patch;
mod selector;
mod store;
mod table;
pub mod tls;
mod validation;

use serde_json::Value;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

pub use kubeconfig::kubeconfig_yaml;
use store::WriteMode;
pub use store::{ApiError, Kind, StatusCause, StatusDetails, NAMESPACE_NAME_LABEL};

/// Tuning of the stand-in. `Default` is what the binary and the harness use.
#[derive(Debug, Clone)]
pub struct ApiServerConfig {
    /// How many changes (events) are kept for watches that resume from an older version.
    /// Watching from before the oldest kept change gets 410 Expired.
    pub history_limit: usize,
    /// Interval of BOOKMARK events on watches that asked for them (`allowWatchBookmarks`).
    /// The real server sends them about once a minute; shorter here so tests see them.
    pub bookmark_interval: Duration,
    /// Namespaces that exist from the start (a real cluster has `default`, where kubectl
    /// works without `-n`).
    pub builtin_namespaces: Vec<String>,
    /// Answer aggregated discovery (`apidiscovery.k8s.io/v2`) when asked. Off: only the
    /// legacy documents, as an older API server (clients fall back to them).
    pub aggregated_discovery: bool,
    /// An HTTPS listener with a bearer token, beside the plain one (what in-cluster clients
    /// need: [`tls`]).
    pub tls: Option<tls::TlsListener>,
    /// Serve ClusterNetworkPolicy, as a cluster with Palisade's CRD installed does. Off: the
    /// resource is not there (404, not in discovery), as in a cluster without the CRD.
    pub cluster_network_policy_crd: bool,
    /// Objects created before the first connection is accepted (a restarted stand-in that
    /// keeps the cluster's state: clients reconnecting never see a half-restored world). They
    /// get new uids and resourceVersions, as after a restore from backup.
    pub initial_objects: Vec<(Kind, Value)>,
}

impl ApiServerConfig {
    /// The kinds served over HTTP.
    pub fn served_kinds(&self) -> Vec<Kind> {
        Kind::ALL
            .into_iter()
            .filter(|k| *k != Kind::ClusterNetworkPolicy || self.cluster_network_policy_crd)
            .collect()
    }
}

impl Default for ApiServerConfig {
    fn default() -> Self {
        ApiServerConfig {
            history_limit: 10_000,
            bookmark_interval: Duration::from_secs(5),
            builtin_namespaces: vec!["default".to_string()],
            aggregated_discovery: true,
            tls: None,
            cluster_network_policy_crd: true,
            initial_objects: Vec::new(),
        }
    }
}

/// A running stand-in. Dropping it stops the server (like [`ApiServer::shutdown`], without
/// waiting for the connections to close).
pub struct ApiServer {
    addr: SocketAddr,
    tls_addr: Option<SocketAddr>,
    shared: Arc<http::Shared>,
    /// The accept loops (plain, HTTPS) when serving on the caller's runtime.
    server: Vec<tokio::task::JoinHandle<()>>,
    /// Set when the server runs on its own runtime thread ([`ApiServer::start_in_thread`]).
    runtime_thread: Option<RuntimeThread>,
}

struct RuntimeThread {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// Fault switches: make the stand-in misbehave the way a real API server or network can.
#[derive(Clone)]
pub struct Faults {
    shared: Arc<http::Shared>,
}

impl ApiServer {
    /// Bind `addr` (port 0: ephemeral) and serve on the current tokio runtime.
    pub async fn start(addr: SocketAddr) -> anyhow::Result<ApiServer> {
        Self::start_with(addr, ApiServerConfig::default()).await
    }

    /// [`ApiServer::start`] with explicit tuning.
    pub async fn start_with(
        addr: SocketAddr,
        config: ApiServerConfig,
    ) -> anyhow::Result<ApiServer> {
        let serving = http::serve(addr, config).await?;
        Ok(ApiServer {
            addr: serving.addr,
            tls_addr: serving.tls_addr,
            shared: serving.shared,
            server: serving.tasks,
            runtime_thread: None,
        })
    }

    /// Start the server on a dedicated thread with its own tokio runtime, for callers that are
    /// not async. The returned handle works the same; dropping it stops that runtime.
    pub fn start_in_thread(addr: SocketAddr, config: ApiServerConfig) -> anyhow::Result<ApiServer> {
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("palisade-apiserver".into())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                {
                    Ok(runtime) => runtime,
                    Err(err) => {
                        let _ = ready_tx.send(Err(anyhow::anyhow!("build tokio runtime: {err}")));
                        return;
                    }
                };
                runtime.block_on(async move {
                    match http::serve(addr, config).await {
                        Ok(serving) => {
                            let _ =
                                ready_tx.send(Ok((serving.addr, serving.tls_addr, serving.shared)));
                            let _ = stop_rx.await;
                            for task in serving.tasks {
                                task.abort();
                            }
                        }
                        Err(err) => {
                            let _ = ready_tx.send(Err(err));
                        }
                    }
                });
            })
            .map_err(|err| anyhow::anyhow!("spawn apiserver thread: {err}"))?;
        let (addr, tls_addr, shared) = ready_rx
            .recv()
            .map_err(|_| anyhow::anyhow!("apiserver thread ended before it was ready"))??;
        Ok(ApiServer {
            addr,
            tls_addr,
            shared,
            server: Vec::new(),
            runtime_thread: Some(RuntimeThread {
                stop: Some(stop_tx),
                thread: Some(thread),
            }),
        })
    }

    /// The bound address (the real port when started with port 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The HTTPS listener's bound address, when [`ApiServerConfig::tls`] asked for one.
    pub fn tls_addr(&self) -> Option<SocketAddr> {
        self.tls_addr
    }

    /// `http://127.0.0.1:PORT`, the server URL for kubeconfigs and clients.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The kubeconfig YAML pointing at this server (context `palisade-standin`).
    pub fn kubeconfig(&self) -> String {
        kubeconfig_yaml(&self.url())
    }

    /// Write [`ApiServer::kubeconfig`] to `path`.
    pub fn write_kubeconfig(&self, path: &Path) -> anyhow::Result<()> {
        kubeconfig::write_kubeconfig(path, &self.url())
    }

    /// The current (latest) resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.shared.store.resource_version()
    }

    /// Create an object, as POST does: `metadata.name` or `metadata.generateName` required,
    /// namespaced kinds need `metadata.namespace` naming an existing namespace. Returns the
    /// stored object (with uid, resourceVersion, creationTimestamp, generated name).
    pub fn create(&self, kind: Kind, object: Value) -> Result<Value, ApiError> {
        self.shared.store.create(kind, object)
    }

    /// Replace an object, as PUT does (409 when `metadata.resourceVersion` is set and stale,
    /// 404 when it does not exist).
    pub fn update(&self, kind: Kind, object: Value) -> Result<Value, ApiError> {
        self.shared.store.update(kind, object, WriteMode::Whole)
    }

    /// Create or replace (the scenario runner's `apply_policy` `mode: create|update`): PUT
    /// semantics when the object exists (its resourceVersion is ignored), else POST.
    pub fn apply(&self, kind: Kind, object: Value) -> Result<Value, ApiError> {
        self.shared.store.apply(kind, object)
    }

    /// Delete an object now; returns the final object (as the DELETED event carries it).
    pub fn delete(
        &self,
        kind: Kind,
        namespace: Option<&str>,
        name: &str,
    ) -> Result<Value, ApiError> {
        self.shared.store.delete(kind, namespace, name)
    }

    /// Change labels: `(key, Some(value))` sets, `(key, None)` removes (what `kubectl label`
    /// does through a merge patch). The namespace label `kubernetes.io/metadata.name` stays.
    pub fn patch_labels(
        &self,
        kind: Kind,
        namespace: Option<&str>,
        name: &str,
        changes: &[(&str, Option<&str>)],
    ) -> Result<Value, ApiError> {
        let mut labels = serde_json::Map::new();
        for (key, value) in changes {
            labels.insert(
                (*key).to_string(),
                value.map_or(Value::Null, |v| Value::String(v.to_string())),
            );
        }
        let patch = serde_json::json!({"metadata": {"labels": labels}});
        self.shared
            .store
            .merge_patch(kind, namespace, name, &patch, WriteMode::Whole)
    }

    /// Apply an RFC 7386 JSON merge patch to an object (PATCH with
    /// `application/merge-patch+json`).
    pub fn merge_patch(
        &self,
        kind: Kind,
        namespace: Option<&str>,
        name: &str,
        patch: &Value,
    ) -> Result<Value, ApiError> {
        self.shared
            .store
            .merge_patch(kind, namespace, name, patch, WriteMode::Whole)
    }

    /// Get one object.
    pub fn get(&self, kind: Kind, namespace: Option<&str>, name: &str) -> Option<Value> {
        self.shared.store.get(kind, namespace, name)
    }

    /// All objects of a kind (in one namespace, or all with `None`), sorted by namespace/name.
    pub fn list(&self, kind: Kind, namespace: Option<&str>) -> Vec<Value> {
        self.shared.store.list_all(kind, namespace)
    }

    /// The fault switches.
    pub fn faults(&self) -> Faults {
        Faults {
            shared: self.shared.clone(),
        }
    }

    /// Stop accepting, end every open watch and connection, and wait for the accept loop to end.
    pub async fn shutdown(mut self) {
        self.shared.shutdown();
        for server in std::mem::take(&mut self.server) {
            let _ = server.await;
        }
        self.stop_runtime_thread();
    }

    fn stop_runtime_thread(&mut self) {
        if let Some(mut rt) = self.runtime_thread.take() {
            if let Some(stop) = rt.stop.take() {
                let _ = stop.send(());
            }
            if let Some(thread) = rt.thread.take() {
                let _ = thread.join();
            }
        }
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.shared.shutdown();
        for server in self.server.drain(..) {
            server.abort();
        }
        self.stop_runtime_thread();
    }
}

impl Faults {
    /// End every open watch stream now: clients see the response end mid-stream and must
    /// re-watch from their last resourceVersion.
    pub fn drop_watches(&self) {
        self.shared.drop_watches();
    }

    /// For `duration`, close every new TCP connection right after accepting it (clients see a
    /// reset/EOF, as when the API server is down behind a load balancer), and end open
    /// watches now. Kept-alive connections that are idle are closed too.
    pub fn refuse_connections(&self, duration: Duration) {
        self.shared.refuse_connections(duration);
    }

    /// For `duration`, answer every API request with 503 ServiceUnavailable (a `Status`), and
    /// end open watches now.
    pub fn unavailable(&self, duration: Duration) {
        self.shared.unavailable(duration);
    }

    /// Forget the whole change history: any watch from a version older than the current one
    /// gets 410 Expired (as after an etcd compaction).
    pub fn expire_history(&self) {
        self.shared.store.expire_history();
    }

    /// End the refuse/unavailable windows early.
    pub fn heal(&self) {
        self.shared.heal();
    }
}
