//! Policy compilation: cluster state + this node → the ruleset model. Pure: no kube client,
//! no nft, no I/O.
//!
//! # The compiled shape
//!
//! ```text
//! chain forward            hook forward priority 0 (filter), policy accept
//!   ct state established,related accept
//!   ct state invalid drop
//!   oifname "pal*" ip daddr != @local4 drop         only with fail_closed_new_pods
//!   oifname "pal*" ip6 daddr != @local6 drop        (a pod veth whose IP is not programmed)
//!   ip saddr vmap @egress4                          egress-isolated local pod → its class chain
//!   ip6 saddr vmap @egress6
//!   goto ingress-dispatch
//! chain input              hook input priority 0 (filter), policy accept
//!   ct state established,related accept
//!   iifname != "pal*" accept                        only traffic from local pods is checked
//!   ip6 daddr fe80::/10 accept                      neighbour discovery and other link plumbing
//!   ip6 daddr ff00::/8 accept
//!   ip saddr vmap @egress4                          a pod talking to its own node: egress policy
//!   ip6 saddr vmap @egress6
//! chain ingress-dispatch
//!   ip daddr vmap @ingress4                         ingress-isolated local pod → its class chain
//!   ip6 daddr vmap @ingress6
//!   accept
//! chain eg-<hash>          one per distinct set of policies isolating local pods for egress
//!   jump pe-<policy hash>  ... one per policy, comment "ns/name"
//!   log group G prefix "palisade drop egress eg-<hash>"   (only with nflog_group)
//!   drop
//! chain pe-<policy hash>   one per policy that isolates a local pod for egress
//!   ip daddr @pods4-<h> meta l4proto . th dport @ports-<h> goto ingress-dispatch
//!   ip daddr . meta l4proto . th dport @named4-<h> goto ingress-dispatch   (named ports)
//!   ...                    comment "ns/name egress[i]"
//! chain in-<hash> / pi-<policy hash>: the same for ingress, `ip saddr`, verdict accept.
//! chain pod-masquerade     hook postrouting priority 100 (nat): outbound masquerade of this
//!                          node's pods, see [`masquerade`] (from options and Nodes only)
//! ```
//!
//! Why this shape:
//! - **Hooks and priorities.** Everything Palisade filters between pods is forwarded: pods
//!   are routed veths without a bridge, so even two pods of one node meet in `forward`. The
//!   forward chain sits at priority 0 (`filter`). kube-proxy (iptables and nftables modes)
//!   DNATs Service traffic in `prerouting` (priority -100, `dstnat`), so `forward` sees the
//!   backend pod's IP; masquerading happens later in `postrouting` (100), so it also sees the
//!   original source. kube-proxy's own forward chains sit near priority 0 too; their order
//!   against ours does not matter: a packet must be accepted by every base chain on the hook
//!   and our `accept` ends only our chain. Traffic the node itself sends to its pods (kubelet
//!   probes, host-network pods) leaves through `output`, which we never filter, so it stays
//!   allowed; the replies come back through `input` as `established` and are accepted first.
//!   A pod talking to its own node (a host-network pod, the node IP) is not forwarded but
//!   delivered locally, so egress policy is also enforced in an `input` chain for packets
//!   from pod veths (`iifname "pal*"`); link-local and multicast IPv6 destinations pass
//!   there, or an egress-isolated pod could not even resolve its gateway.
//! - **Replies** are accepted by conntrack (`established,related`), so only the first packet of
//!   a connection walks the policy chains; `invalid` is dropped before anything else.
//! - **Egress, then ingress.** The source's egress class chain is reached through `egress4/6`
//!   when the source is an egress-isolated local pod. A rule that allows jumps with `goto` to
//!   `ingress-dispatch`, which always ends in a verdict (the destination's ingress class chain
//!   accepts or drops; a destination without one is accepted): `goto` rather than `return`
//!   because the allowing rule sits in a per-policy chain below the class chain, and a
//!   `return` would only get back to the class chain. Nothing matches → the class chain
//!   drops. A packet whose source is not egress-isolated goes to `ingress-dispatch` directly.
//! - **Per-packet cost** is a fixed number of hash lookups for pods no policy isolates, and for
//!   an isolated pod grows with the policies that select it only (its class chain jumps to
//!   exactly those), never with the number of policies in the cluster.
//! - **Data lives in sets and maps.** Per-policy chains match on named sets: pod IPs of a
//!   selector (`pods4/6-<h>`, shared by every rule using an equal selector in the same scope),
//!   ipBlocks (`block4/6-<h>`, interval: the CIDR minus its excepts), numeric ports
//!   (`ports-<h>`: `meta l4proto . th dport`, interval for endPort) and named ports resolved
//!   per pod (`named4/6-<h>`: `ip daddr . meta l4proto . th dport`). A pod coming, going or
//!   changing labels on another node changes set elements only; a local pod can add or
//!   remove a class chain (and the chains of policies that start or stop selecting a local
//!   pod), and changes map elements.
//! - **Names** are short and deterministic: a prefix and 16 hex digits of a stable hash of
//!   what the object stands for (the policy's namespace/name, the canonical selector, the
//!   list of policies), so every agent and every restart computes the same names and the
//!   dataplane's diff stays minimal. All names are ≤ 31 characters, the limit of old kernels.
//! - **Denied packets** are logged (NFLOG, rate-limited, in a rule of their own so that the
//!   limit never skips the drop) with the prefix `palisade drop <direction> <class chain>`;
//!   [`describe_chain`] maps the chain back to its policies, the packet's address to the pod.
//!
//! # Semantics
//! Exactly those of [`crate::eval::reference`], which property tests hold this compiler to.

pub mod intervals;
pub mod masquerade;
mod plan;

pub use masquerade::{MasqueradeOptions, MASQUERADE_CHAIN};
pub use plan::{
    describe_chain, parse_log_prefix, parse_rule_comment, ChainDescription, ChainRole,
    FILTER_PRIORITY, FORWARD_CHAIN, INGRESS_DISPATCH_CHAIN, INPUT_CHAIN, LOG_PREFIX,
};

use crate::model::api::NetworkPolicy;
use crate::model::selector::{NamespaceScope, PodSelection};
use crate::model::Labels;
use crate::model::{ClusterState, Name, NodeInfo, ObjectKey, PodInfo};
use crate::ruleset::{Ruleset, Touched};
use std::collections::{BTreeSet, HashMap};

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
    /// Outbound masquerade of this node's pods ([`masquerade`]).
    pub masquerade: MasqueradeOptions,
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
///
/// Caches: which pods each selector in use selects (kept up to date per pod and per namespace
/// change by testing only the changed object against the selectors in use), the materialised
/// sets (rebuilt only when a pod they hold changed), and the last ruleset. A change that
/// touches no local pod and no policy never rebuilds chains; it re-materialises the sets of
/// the selections that changed.
#[derive(Debug)]
pub struct Compiler {
    opts: CompileOptions,
    state: ClusterState,
    index: StateIndex,
    cache: plan::Cache,
    /// Chains, maps or the set list must be rebuilt (a local pod, a policy changed).
    structure_dirty: bool,
    output: Ruleset,
    /// The objects of `output` rebuilt since [`Compiler::take_touched`] was last called.
    touched: Touched,
    /// The masquerade objects that `output` holds (they follow options and Nodes only).
    masquerade: Ruleset,
    /// A Node's pod CIDRs changed since the masquerade objects were computed.
    nodes_dirty: bool,
}

/// Lookup structures over [`ClusterState`], maintained per change.
#[derive(Debug, Default, Clone)]
pub(crate) struct StateIndex {
    pub pods_by_ns: HashMap<Name, BTreeSet<ObjectKey>>,
    pub policies_by_ns: HashMap<Name, BTreeSet<ObjectKey>>,
    /// Pods on this node (whatever their state).
    pub local_pods: BTreeSet<ObjectKey>,
}

impl StateIndex {
    pub fn build(state: &ClusterState, node: &str) -> StateIndex {
        let mut index = StateIndex::default();
        for (key, pod) in &state.pods {
            index.add_pod(key, pod, node);
        }
        for key in state.policies.keys() {
            index
                .policies_by_ns
                .entry(key.namespace.clone())
                .or_default()
                .insert(key.clone());
        }
        index
    }

    fn add_pod(&mut self, key: &ObjectKey, pod: &PodInfo, node: &str) {
        self.pods_by_ns
            .entry(key.namespace.clone())
            .or_default()
            .insert(key.clone());
        if pod.node.as_deref() == Some(node) {
            self.local_pods.insert(key.clone());
        }
    }

    fn remove_pod(&mut self, key: &ObjectKey) {
        if let Some(pods) = self.pods_by_ns.get_mut(key.namespace.as_str()) {
            pods.remove(key);
            if pods.is_empty() {
                self.pods_by_ns.remove(key.namespace.as_str());
            }
        }
        self.local_pods.remove(key);
    }
}

impl Compiler {
    pub fn new(opts: CompileOptions) -> Compiler {
        Compiler::with_state(opts, ClusterState::default())
    }

    /// A compiler starting from a whole cluster state (the agent's initial list).
    pub fn with_state(opts: CompileOptions, state: ClusterState) -> Compiler {
        let index = StateIndex::build(&state, &opts.node);
        Compiler {
            opts,
            state,
            index,
            cache: plan::Cache::default(),
            structure_dirty: true,
            output: Ruleset::default(),
            touched: Touched::all(),
            masquerade: Ruleset::default(),
            nodes_dirty: true,
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
        match change {
            Change::UpsertPod(pod) => {
                let key = pod.key.clone();
                let new_local = pod.node.as_deref() == Some(self.opts.node.as_str());
                let old = self.state.pods.insert(key.clone(), pod);
                let old_local = old
                    .as_ref()
                    .is_some_and(|o| o.node.as_deref() == Some(self.opts.node.as_str()));
                self.index.remove_pod(&key);
                let new = &self.state.pods[&key];
                self.index.add_pod(&key, new, &self.opts.node);
                if new_local || old_local {
                    self.structure_dirty = true;
                }
                self.cache
                    .pod_changed(&self.state, &key, old.as_ref(), Some(new));
            }
            Change::DeletePod(key) => {
                if let Some(old) = self.state.pods.remove(&key) {
                    self.index.remove_pod(&key);
                    if old.node.as_deref() == Some(self.opts.node.as_str()) {
                        self.structure_dirty = true;
                    }
                    self.cache.pod_changed(&self.state, &key, Some(&old), None);
                }
            }
            Change::UpsertNamespace { name, labels } => {
                self.state.upsert_namespace(&name, labels);
                self.cache
                    .namespace_changed(&self.state, &self.index, &name);
            }
            Change::DeleteNamespace(name) => {
                if self.state.namespaces.remove(&name).is_some() {
                    self.cache
                        .namespace_changed(&self.state, &self.index, &name);
                }
            }
            Change::UpsertPolicy(policy) => {
                let key = ObjectKey::new(&policy.metadata.namespace, &policy.metadata.name);
                if self.state.policies.get(&key) != Some(&*policy) {
                    self.cache.forget_policy(&key);
                    self.index
                        .policies_by_ns
                        .entry(key.namespace.clone())
                        .or_default()
                        .insert(key.clone());
                    self.state.policies.insert(key, *policy);
                    self.structure_dirty = true;
                }
            }
            Change::DeletePolicy(key) => {
                if self.state.policies.remove(&key).is_some() {
                    self.cache.forget_policy(&key);
                    if let Some(set) = self.index.policies_by_ns.get_mut(key.namespace.as_str()) {
                        set.remove(&key);
                        if set.is_empty() {
                            self.index.policies_by_ns.remove(key.namespace.as_str());
                        }
                    }
                    self.structure_dirty = true;
                }
            }
            // Nodes enter the ruleset only through their pod CIDRs (masquerade); routes to
            // other nodes are the agent's business.
            Change::UpsertNode(node) => {
                let cidrs_changed = self
                    .state
                    .nodes
                    .get(&node.name)
                    .is_none_or(|old| old.pod_cidrs != node.pod_cidrs);
                self.state.nodes.insert(node.name.clone(), node);
                if cidrs_changed {
                    self.nodes_dirty = true;
                }
            }
            Change::DeleteNode(name) => {
                if self.state.nodes.remove(&name).is_some() {
                    self.nodes_dirty = true;
                }
            }
        }
    }

    /// The ruleset for the current state.
    pub fn ruleset(&mut self) -> Ruleset {
        self.refresh();
        self.output.clone()
    }

    /// Bring the cached ruleset up to date and borrow it (no copy).
    pub fn ruleset_ref(&mut self) -> &Ruleset {
        self.refresh();
        &self.output
    }

    /// The current ruleset, and which of its objects were rebuilt since the last call (all of
    /// them the first time): what the dataplane needs to look at, see [`Touched`].
    pub fn ruleset_and_touched(&mut self) -> (&Ruleset, Touched) {
        self.refresh();
        let touched = std::mem::replace(&mut self.touched, Touched::none());
        (&self.output, touched)
    }

    fn refresh(&mut self) {
        let rebuilt = self.structure_dirty;
        if self.structure_dirty {
            let previous = std::mem::take(&mut self.output);
            self.output = self.cache.rebuild(
                &self.state,
                &self.index,
                &self.opts,
                previous,
                &mut self.touched,
            );
            self.structure_dirty = false;
        } else {
            self.cache.refresh_sets(
                &self.state,
                &self.index,
                &self.opts,
                &mut self.output,
                &mut self.touched,
            );
        }
        // A rebuild starts the output afresh: the masquerade objects go back in (unchanged
        // ones are not touched, the rebuild compared only what it built).
        if rebuilt || self.nodes_dirty {
            let new = masquerade::masquerade_objects(&self.state, &self.opts.masquerade);
            let old = if rebuilt {
                let mut old = std::mem::take(&mut self.masquerade);
                // Nothing of it is in the output: install everything, touch what changed.
                old.chains.retain(|name, _| new.chains.contains_key(name));
                old.sets.retain(|name, _| new.sets.contains_key(name));
                old
            } else {
                std::mem::take(&mut self.masquerade)
            };
            masquerade::install(&mut self.output, &old, &new, &mut self.touched);
            self.masquerade = new;
            self.nodes_dirty = false;
        }
    }
}

/// Full compile from scratch.
pub fn compile(state: &ClusterState, opts: &CompileOptions) -> Ruleset {
    let index = StateIndex::build(state, &opts.node);
    let mut out = plan::Cache::default().rebuild(
        state,
        &index,
        opts,
        Ruleset::default(),
        &mut Touched::all(),
    );
    let objects = masquerade::masquerade_objects(state, &opts.masquerade);
    masquerade::install(&mut out, &Ruleset::default(), &objects, &mut Touched::all());
    out
}

/// The pods a selection holds: live, non-host-network pods with IPs (anywhere in the cluster)
/// whose namespace and labels match.
pub(crate) fn select_pods(
    state: &ClusterState,
    index: &StateIndex,
    selection: &PodSelection,
) -> BTreeSet<ObjectKey> {
    let mut out = BTreeSet::new();
    let mut scan = |ns: &str| {
        let ns_labels = state.namespaces.get(ns);
        if !selection.namespace_matches(ns, ns_labels) {
            return;
        }
        for key in index.pods_by_ns.get(ns).into_iter().flatten() {
            let pod = &state.pods[key];
            if crate::eval::reference::is_policy_pod(pod)
                && crate::model::selector::selector_matches(&selection.pods, &pod.labels)
            {
                out.insert(key.clone());
            }
        }
    };
    match &selection.namespaces {
        NamespaceScope::Named(ns) => scan(ns),
        NamespaceScope::Matching(_) => {
            for ns in index.pods_by_ns.keys() {
                scan(ns);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests;
