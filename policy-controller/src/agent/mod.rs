//! The node agent (`palisade-agent`): watches the API server, compiles the policies that
//! concern this node, programs them into `inet palisade`, and answers the CNI plugin.
//!
//! ```text
//!  kube::watch (×5) ──ClusterEvent──┐
//!                                   ├─► sync::SyncWorker ─► Compiler ─► Dataplane (nft)
//!  cni socket ───────CniCommand─────┘         │                          └─► routes (netlink)
//!                                             └─► status ◄── http (/metrics /status ...)
//!  nflog thread ◄── NFLOG group (denied packets), reads the compiler's state
//! ```
//!
//! Endpoints ([`http`]): on `--metrics-listen` (TCP, exposed on the node) `/metrics`
//! (Prometheus text), `/healthz` (200 while the sync worker runs), `/readyz` (200 once the
//! first full sync is programmed and the node routes are in place; 503 with the reason
//! otherwise); on `--debug-socket` (unix, root on the node only) the same
//! plus `/status` (JSON: `ready`, `notReadyReason`, `node`,
//! `programmedResourceVersions{pods,namespaces,networkpolicies,nodes,
//! clusternetworkpolicies}`,
//! `lastSync{durationMs,commands,full}`, `invalidPolicies[{kind,namespace,name,errors}]`, plus
//! `lastError`, `malformedObjects`, `pods`, `routes`,
//! `masquerade{ipv4,ipv6,nonMasqueradeCIDRs,clusterCIDRs}`,
//! `overlay{mode,routes,vxlan[{name,local,mtu,peers}]}`), `/debug/state` (the cluster state the
//! agent compiles from, as API objects, for `palisadectl --agent`) and `/drops` (denied
//! packets as JSON lines, [`drops`]; `?follow=true` streams them).

pub mod cni;
pub mod debug_state;
pub mod drops;
pub mod http;
pub mod logging;
pub mod metrics;
pub mod nflog;
pub mod routes;
pub mod status;
pub mod sync;

use crate::compile::{CompileOptions, Compiler, MasqueradeOptions};
use crate::kube::{spawn_watches, Index, WatchTuning};
use crate::nft::Dataplane;
use anyhow::{Context, Result};
pub use http::MetricsListen;
use routes::overlay::{OverlayMode, VxlanSettings};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;

pub use status::AgentShared;
pub use sync::{CniCommand, SyncTuning, SyncWorker};

/// Default path of the agent's debug socket on the node (beside the CNI socket, in the
/// directory the DaemonSet shares with the node).
pub const DEFAULT_DEBUG_SOCKET: &str = "/run/palisade/debug.sock";

/// How new pods are treated until the agent has programmed them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum NewPods {
    /// Ingress towards a pod veth whose IP is not programmed yet is dropped.
    FailClosed,
    FailOpen,
}

/// Everything `palisade-agent run` is configured with.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub node_name: String,
    pub kubeconfig: Option<PathBuf>,
    pub cni_socket: PathBuf,
    pub metrics_listen: MetricsListen,
    pub debug_socket: PathBuf,
    pub new_pods: NewPods,
    /// `None`: no denied-packet logging.
    pub nflog_group: Option<u16>,
    pub deny_log_rate: u32,
    pub manage_routes: bool,
    /// How routes reach other nodes' pods (direct or over VXLAN); with `manage_routes` only.
    pub overlay: OverlayMode,
    pub vxlan: VxlanSettings,
    pub masquerade: MasqueradeOptions,
    pub table: String,
    pub nft: PathBuf,
    pub sync: SyncTuning,
}

impl AgentConfig {
    pub fn compile_options(&self) -> CompileOptions {
        CompileOptions {
            node: self.node_name.clone(),
            fail_closed_new_pods: self.new_pods == NewPods::FailClosed,
            nflog_group: self.nflog_group,
            masquerade: self.masquerade.clone(),
        }
    }
}

/// A running agent's handles (for tests and the binary).
pub struct RunningAgent {
    pub shared: Arc<AgentShared>,
    pub compiler: Arc<Mutex<Compiler>>,
    /// Where the metrics listener is bound (a port 0 resolved).
    pub metrics_addr: SocketAddr,
    pub debug_socket: PathBuf,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl RunningAgent {
    /// Wait for the sync worker to end (it runs for the life of the process).
    pub async fn wait(mut self) {
        if let Some(worker) = self.tasks.pop() {
            let _ = worker.await;
        }
    }

    pub fn abort(&self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl Drop for RunningAgent {
    fn drop(&mut self) {
        self.abort();
    }
}

/// Start the agent on the current tokio runtime with this dataplane.
pub async fn start(
    config: AgentConfig,
    client: ::kube::Client,
    dataplane: Box<dyn Dataplane + Send>,
) -> Result<RunningAgent> {
    let shared = Arc::new(AgentShared::new(&config.node_name));
    shared.update(|s| {
        s.masquerade = Some(config.masquerade.clone());
        s.overlay = config.manage_routes.then_some(config.overlay);
    });
    let compiler = Arc::new(Mutex::new(Compiler::new(config.compile_options())));
    let metrics_listener = http::bind_metrics(config.metrics_listen).await?;
    let metrics_addr = metrics_listener
        .local_addr()
        .context("metrics listener address")?;
    let debug_listener = http::bind_debug(&config.debug_socket)?;
    let cni_listener = cni::bind(&config.cni_socket)?;

    if let Some(group) = config.nflog_group {
        // Logging is an aid: an agent that cannot bind the group still enforces policy.
        if let Err(err) = nflog::spawn(
            group,
            config.deny_log_rate,
            compiler.clone(),
            shared.clone(),
        ) {
            shared.metrics.error(metrics::error_kind::NFLOG);
            tracing::error!(error = %format!("{err:#}"), "denied-packet logging disabled");
        }
    }

    let (event_tx, event_rx) = mpsc::channel(4096);
    let (cni_tx, cni_rx) = mpsc::channel(256);
    let mut tasks = spawn_watches(client, WatchTuning::default(), event_tx);
    let endpoints = http::EndpointState {
        shared: shared.clone(),
        compiler: compiler.clone(),
    };
    tasks.push(tokio::spawn(http::serve_metrics(
        metrics_listener,
        endpoints.clone(),
    )));
    tasks.push(tokio::spawn(http::serve_debug(debug_listener, endpoints)));
    tasks.push(tokio::spawn(cni::serve(
        cni_listener,
        cni_tx,
        shared.clone(),
    )));
    let routes = config
        .manage_routes
        .then(|| routes::NodeRoutes::with_overlay(&config.node_name, config.overlay, config.vxlan));
    let worker = SyncWorker::new(
        Index::new(&config.node_name),
        compiler.clone(),
        dataplane,
        routes,
        shared.clone(),
        config.sync.clone(),
    );
    tasks.push(tokio::spawn(worker.run(event_rx, cni_rx)));
    tracing::info!(
        node = %config.node_name,
        metrics = %metrics_addr,
        debug_socket = %config.debug_socket.display(),
        cni_socket = %config.cni_socket.display(),
        table = %config.table,
        "agent started"
    );
    Ok(RunningAgent {
        shared,
        compiler,
        metrics_addr,
        debug_socket: config.debug_socket.clone(),
        tasks,
    })
}

/// Default of `--min-sync-interval-ms` / `--max-sync-interval-ms` as durations.
pub fn sync_tuning(min_ms: u64, max_ms: u64) -> SyncTuning {
    SyncTuning {
        min_interval: Duration::from_millis(min_ms),
        max_interval: Duration::from_millis(max_ms.max(min_ms)),
        ..SyncTuning::default()
    }
}
