//! What the agent publishes about itself: readiness, the resourceVersions whose effect is
//! programmed, the last sync, invalid policies. Written by the sync worker, read by the HTTP
//! server and the CNI socket.

use super::drops::DropLog;
use super::metrics::Metrics;
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
    pub routes: usize,
    /// What the agent was started with (`None` only before [`super::start`] sets it).
    pub masquerade: Option<MasqueradeOptions>,
}

/// State shared by the agent's tasks.
#[derive(Debug)]
pub struct AgentShared {
    pub node: String,
    ready: AtomicBool,
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
            ready: AtomicBool::new(false),
            worker_alive: AtomicBool::new(true),
            status: Mutex::new(StatusSnapshot::default()),
            metrics: Metrics::default(),
            drops: DropLog::default(),
        }
    }

    /// The first full sync is programmed.
    pub fn ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::Release);
        self.metrics.set_ready(true);
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
            "routes": s.routes,
            "masquerade": s.masquerade.as_ref().map(|m| json!({
                "ipv4": m.ipv4,
                "ipv6": m.ipv6,
                "nonMasqueradeCIDRs": m.non_masquerade_cidrs.iter().map(|c| c.to_string()).collect::<Vec<_>>(),
                "clusterCIDRs": m.cluster_cidrs.iter().map(|c| c.to_string()).collect::<Vec<_>>(),
            })),
        })
    }
}
