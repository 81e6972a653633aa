//! Policy compilation: cluster state + this node → the ruleset model. Pure: no kube client,
//! no nft, no I/O.

use crate::model::api::NetworkPolicy;
use crate::model::Labels;
use crate::model::{ClusterState, NodeInfo, ObjectKey, PodInfo};
use crate::ruleset::Ruleset;

/// What the compiler needs to know besides cluster state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompileOptions {
    /// The node whose pods' ingress and egress this ruleset enforces.
    pub node: String,
    /// Drop forwarded traffic towards a pod veth (`HOST_VETH_PREFIX`) whose IP is not
    /// programmed yet (fail-closed for new pods). `false`: fail-open.
    pub fail_closed_new_pods: bool,
    /// NFLOG group for denied packets; `None`: no logging.
    pub nflog_group: Option<u16>,
}

/// One change to cluster state. The compiler's bookkeeping per change is proportional to
/// what changed, not to cluster size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    UpsertPod(PodInfo),
    DeletePod(ObjectKey),
    UpsertNamespace { name: String, labels: Labels },
    DeleteNamespace(String),
    UpsertPolicy(Box<NetworkPolicy>),
    DeletePolicy(ObjectKey),
    UpsertNode(NodeInfo),
    DeleteNode(String),
}

/// An incremental compiler: holds cluster state and whatever caches make a one-pod change
/// cheap.
#[derive(Debug)]
pub struct Compiler {
    opts: CompileOptions,
    state: ClusterState,
}

impl Compiler {
    pub fn new(opts: CompileOptions) -> Compiler {
        Compiler {
            opts,
            state: ClusterState::default(),
        }
    }

    pub fn options(&self) -> &CompileOptions {
        &self.opts
    }

    pub fn state(&self) -> &ClusterState {
        &self.state
    }

    /// Record one change.
    pub fn apply(&mut self, change: Change) {
        let _ = change; // TODO(compiler helper)
    }

    /// The ruleset for the current state.
    pub fn ruleset(&mut self) -> Ruleset {
        compile(&self.state, &self.opts)
    }
}

/// Full compile from scratch.
pub fn compile(_state: &ClusterState, _opts: &CompileOptions) -> Ruleset {
    Ruleset::default() // TODO(compiler helper)
}
