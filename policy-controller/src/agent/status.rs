//! What the agent publishes about itself: readiness, the resourceVersions whose effect is
//! programmed, the last sync, invalid policies. Written by the sync worker, read by the HTTP
//! server and the CNI socket.

use super::drops::DropLog;
use super::metrics::Metrics;
use super::routes::overlay::OverlayMode;
use super::routes::Programmed;
use crate::compile::MasqueradeOptions;
use crate::kube::index::InvalidPolicy;
use crate::kube::ResourceKind;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

#[derive(Debug, Clone, Default, PartialEq)]
pub struct LastSync {
    pub duration_ms: f64,
    pub commands: usize,
    pub full: bool,
}

#[derive(Debug, Clone, Default)]
pub struct StatusSnapshot {
    /// Per kind (index = `ResourceKind::index`), the newest resourceVersion whose effect is
    /// programmed in nftables.
    pub programmed_resource_versions: [u64; ResourceKind::COUNT],
    pub last_sync: Option<LastSync>,
    pub last_error: Option<String>,
    pub invalid_policies: Vec<InvalidPolicy>,
    /// `(kind, namespace/name, error)` of objects that do not decode.
    pub malformed_objects: Vec<(ResourceKind, String, String)>,
    pub pods: usize,
    /// The node routes (and VXLAN links) last programmed.
    pub routes: Programmed,
    /// What the agent was started with (`None` only before [`super::start`] sets it).
    pub masquerade: Option<MasqueradeOptions>,
    /// `--overlay` (`None` when the agent does not manage routes).
    pub overlay: Option<OverlayMode>,
}

/// How `/readyz` and `/status`' `notReadyReason` begin when the node routes are not in place.
pub const ROUTES_NOT_IN_PLACE: &str = "node routes not in place";

/// State shared by the agent's tasks.
#[derive(Debug)]
pub struct AgentShared {
    pub node: String,
    /// The first full sync is programmed.
    programmed: AtomicBool,
    /// Why the node routes (and the overlay) are not in place: the last reconcile's error,
    /// or "not reconciled yet". `None` once they are, or when the agent does not manage
    /// routes. A node whose pods cannot reach the other nodes' pods is not ready: a rolling
    /// update with a broken image stops there instead of spreading.
    routes_problem: Mutex<Option<String>>,
    worker_alive: AtomicBool,
    status: Mutex<StatusSnapshot>,
    pub metrics: Metrics,
    /// Denied packets, for `GET /drops`.
    pub drops: DropLog,
}

impl AgentShared {
    pub fn new(node: impl Into<String>) -> AgentShared {
        AgentShared {
            node: node.into(),
            programmed: AtomicBool::new(false),
            routes_problem: Mutex::new(None),
            worker_alive: AtomicBool::new(true),
            status: Mutex::new(StatusSnapshot::default()),
            metrics: Metrics::default(),
            drops: DropLog::default(),
        }
    }

    /// The first full sync is programmed and the node routes are in place (`/readyz`).
    pub fn ready(&self) -> bool {
        self.not_ready_reason().is_none()
    }

    /// What `/readyz` answers when the agent is not ready.
    pub fn not_ready_reason(&self) -> Option<String> {
        if !self.programmed.load(Ordering::Acquire) {
            return Some("first full sync not programmed yet".into());
        }
        self.routes_problem()
            .map(|e| format!("{ROUTES_NOT_IN_PLACE}: {e}"))
    }

    fn routes_problem(&self) -> Option<String> {
        self.routes_problem
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn set_programmed(&self) {
        self.programmed.store(true, Ordering::Release);
        self.metrics.set_ready(self.ready());
    }

    /// The outcome of the last route reconcile: `None` when the routes are in place.
    pub fn set_routes_problem(&self, problem: Option<String>) {
        *self
            .routes_problem
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = problem;
        self.metrics.set_ready(self.ready());
    }

    /// The sync worker runs (`/healthz`).
    pub fn healthy(&self) -> bool {
        self.worker_alive.load(Ordering::Acquire)
    }

    pub fn set_worker_stopped(&self) {
        self.worker_alive.store(false, Ordering::Release);
    }

    pub fn update(&self, f: impl FnOnce(&mut StatusSnapshot)) {
        f(&mut self.status.lock().unwrap_or_else(|e| e.into_inner()));
    }

    pub fn snapshot(&self) -> StatusSnapshot {
        self.status
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The `/status` document.
    pub fn status_json(&self) -> Value {
        let s = self.snapshot();
        let mut rvs = serde_json::Map::new();
        for kind in ResourceKind::ALL {
            rvs.insert(
                kind.plural().into(),
                Value::String(s.programmed_resource_versions[kind.index()].to_string()),
            );
        }
        json!({
            "ready": self.ready(),
            "notReadyReason": self.not_ready_reason(),
            "node": self.node,
            "programmedResourceVersions": rvs,
            "lastSync": s.last_sync.as_ref().map(|l| json!({
                "durationMs": l.duration_ms,
                "commands": l.commands,
                "full": l.full,
            })),
            "lastError": s.last_error,
            "invalidPolicies": s.invalid_policies.iter().map(|p| json!({
                "kind": format!("{:?}", p.policy.kind),
                "namespace": p.policy.namespace,
                "name": p.policy.name,
                "errors": p.errors,
            })).collect::<Vec<_>>(),
            "malformedObjects": s.malformed_objects.iter().map(|(kind, key, error)| json!({
                "kind": kind.plural(),
                "key": key,
                "error": error,
            })).collect::<Vec<_>>(),
            "pods": s.pods,
            "routes": s.routes.routes,
            "overlay": s.overlay.map(|mode| json!({
                "mode": mode,
                "routes": s.routes.overlay_routes,
                "vxlan": s.routes.vteps,
            })),
            "masquerade": s.masquerade.as_ref().map(|m| json!({
                "ipv4": m.ipv4,
                "ipv6": m.ipv6,
                "nonMasqueradeCIDRs": m.non_masquerade_cidrs.iter().map(|c| c.to_string()).collect::<Vec<_>>(),
                "clusterCIDRs": m.cluster_cidrs.iter().map(|c| c.to_string()).collect::<Vec<_>>(),
            })),
        })
    }
}
