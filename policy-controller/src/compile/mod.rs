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
//!   goto egress
//! chain input              hook input priority 0 (filter), policy accept
//!   ct state established,related accept
//!   iifname != "pal*" accept                        only traffic from local pods is checked
//!   ip6 daddr fe80::/10 accept                      neighbour discovery and other link plumbing
//!   ip6 daddr ff00::/8 accept
//!   goto egress                                     a pod talking to its own node
//!
//! Per direction (egress shown; ingress swaps saddr and daddr, and allowed is `accept`):
//! chain egress             ip saddr vmap @egress4 ...    pods some policy selects → egress-peers
//!                          goto ingress                  the others: allowed
//! chain egress-peers       ip daddr vmap @egress-peer4   pod and node addresses → their class
//!                          ip daddr vmap @egress-net4    address blocks (interval) → their class
//!                          goto eg-<world>               the rest
//! chain eg-<class>         ip saddr . meta l4proto . th dport vmap @eg-<class>-x4   single ports
//!                          ip saddr . meta l4proto . th dport vmap @eg-<class>-p4   ranges (interval)
//!                          ip saddr . meta l4proto vmap @eg-<class>-a4   the protocol's background
//!                          meta l4proto @l4ports goto egress-default
//!                          ip saddr vmap @eg-<class>-n4  protocols without ports
//!                          goto egress-default
//! chain egress-default     ip saddr vmap @egress-default4   isolated pods → their eg-iso-...
//!                          goto ingress                     allowed
//! The decisions the maps jump to, each naming what decided:
//! chain eg-ok-<rule>       goto ingress  comment "ns/name egress[0]"
//! chain eg-deny-<rule>     log; counter drop  comment "ClusterNetworkPolicy/x egress[1] Deny"
//! chain eg-iso-<policies>  log; counter drop; then (never reached) a rule naming each policy
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
//! - **Decided ahead of time** ([`decide`]). The compiler groups peer addresses into *peer
//!   classes* (the addresses that the same peer conditions of the rules in force here hold,
//!   and for egress what the rules' named ports resolve to on the pod there) and this node's
//!   pods into *subject groups* (the policies of each tier that select them), and evaluates
//!   the tiers (Admin first match, NetworkPolicy isolation and union, Baseline first match,
//!   allowed) for every group, class, protocol and port segment. Only what differs from the
//!   pod's default becomes an element; the default (isolated: denied; else allowed) is one
//!   element per isolated pod.
//! - **Per-packet cost** of a new connection, per direction: the stage lookup, and for a pod
//!   some policy selects the exact and interval peer lookups, the class's verdict lookups
//!   (port, port range, protocol; no ports) and on a miss the default lookup: a fixed number
//!   whatever the number of policies. `Pass` and
//!   first-match order cost nothing per packet: they were evaluated by the compiler.
//! - **Protocols without ports** (ICMP, ...): `th dport` would read other header bytes, so the
//!   port maps hold only TCP, UDP and SCTP keys, and `@l4ports` keeps those protocols from
//!   falling through to the port-less map, where only rules without ports decide.
//! - **Ports as exceptions over a background.** Per subject group, class and protocol, the
//!   outcome covering the most ports is the background (`-a`, keyed by pod and protocol; none
//!   when it is the pod's default) and every other port segment an exception looked up first:
//!   single ports in a hash map (`-x`), ranges in an interval map (`-p`). "Allow all but deny
//!   80" is then two hash elements, not three intervals. Why: the kernel's concatenated
//!   interval sets (pipapo) rebuild their lookup tables on every change, so deleting one
//!   element of a large one cost tens of milliseconds; hash maps change in microseconds.
//! - **Churn.** A pod on another node coming, going or changing labels moves its address to
//!   another class (one peer-map element) unless its combination of labels is new (a new
//!   class: a chain and its maps). A local pod moves its stage, default and verdict-map
//!   elements to its new subject group (a new group is decided against every class). Both
//!   are reported as exact element changes ([`Touched::map_elements`]); a decision chain goes
//!   with the last element naming it (counted, not searched for). A policy, namespace
//!   or node change, or a local pod change that changes which policies are in use, rebuilds
//!   the form and reports the objects that differ.
//! - **Names** are short and deterministic ([`names`]): a prefix and 16 hex digits of a stable
//!   hash of what the object stands for (the peer conditions of a class, the rule, the list of
//!   isolating policies), so every agent and every restart computes the same names and the
//!   dataplane's diff stays minimal. All names are ≤ 31 characters, the limit of old kernels.
//! - **Denied packets** are logged (NFLOG, rate-limited, in a rule of their own so that the
//!   limit never skips the drop) with the prefix `palisade drop <direction> <chain>`, the
//!   isolation or deny chain; [`describe_chain`] maps the chain back to its policies or rule,
//!   the packet's address to the pod.
//!
//! # Semantics
//! Those of the normalized model ([`crate::model::policy`]: tiers, first match, isolation),
//! which must equal the API semantics that [`crate::eval::reference`] implements on its own
//! from the API objects; property tests hold the two together.

mod decide;
mod flat;
pub mod intervals;
pub mod masquerade;
pub mod names;

pub use masquerade::{MasqueradeOptions, MASQUERADE_CHAIN};
pub use names::{
    describe_chain, dispatch_map_name, first_stage, parse_log_prefix, parse_rule_comment,
    ChainDescription, ChainRole, LogPrefix, FILTER_PRIORITY, FORWARD_CHAIN, INPUT_CHAIN,
    LOG_PREFIX,
};

use crate::model::api::{ClusterNetworkPolicy, NetworkPolicy};
use crate::model::policy::{
    from_cluster_network_policy, from_network_policy, Policy, PolicyKind, PolicyRef,
};
use crate::model::selector::{NamespaceScope, PodSelection};
use crate::model::Labels;
use crate::model::{ClusterState, Name, NodeInfo, ObjectKey, PodInfo};
use crate::ruleset::{Ruleset, Touched};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;

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
    UpsertNamespace {
        name: String,
        labels: Labels,
    },
    DeleteNamespace(String),
    UpsertPolicy(Box<NetworkPolicy>),
    DeletePolicy(ObjectKey),
    UpsertClusterPolicy(Box<ClusterNetworkPolicy>),
    /// By name.
    DeleteClusterPolicy(String),
    UpsertNode(NodeInfo),
    DeleteNode(String),
}

/// An incremental compiler: holds cluster state and whatever caches make a one-pod change
/// cheap.
///
/// Caches: which pods each selector in use selects (kept up to date per pod and per namespace
/// change by testing only the changed object against the selectors in use), the materialised
/// sets, and the last ruleset. A change that touches no local pod and no policy never
/// rebuilds chains. A pod change updates the sets of the selections it joined, left or was
/// changed in by that pod's elements only (reported as element changes, [`Touched::elements`]),
/// never by rebuilding or comparing the sets' other elements; a namespace relabelling
/// re-materialises the sets of the selections that look at namespace labels.
#[derive(Debug)]
pub struct Compiler {
    opts: CompileOptions,
    state: ClusterState,
    index: StateIndex,
    /// Chains, maps or the set list must be rebuilt (a local pod, a policy, a namespace or a
    /// node changed).
    structure_dirty: bool,
    /// What the last rebuild keeps for the incremental paths, kept up to date by them.
    plans: Option<flat::Kept>,
    /// Addresses of pods that changed since the last refresh (as peers).
    remote_addrs: BTreeSet<IpAddr>,
    /// This node's pods that changed since the last refresh (as subjects).
    local_changed: BTreeSet<ObjectKey>,
    output: Ruleset,
    /// The objects of `output` rebuilt since [`Compiler::take_touched`] was last called.
    touched: Touched,
    /// The masquerade objects that `output` holds (they follow options and Nodes only).
    masquerade: Ruleset,
    /// A Node's pod CIDRs changed since the masquerade objects were computed.
    nodes_dirty: bool,
}

/// Lookup structures over [`ClusterState`], maintained per change, and the normalized
/// policies: the only form of policy the compiler reads.
#[derive(Debug, Default, Clone)]
pub(crate) struct StateIndex {
    pub pods_by_ns: HashMap<Name, BTreeSet<ObjectKey>>,
    /// Pods by address (usually one each; more while an address moves between pods): which
    /// pods may give a set element of that address.
    pub pods_by_ip: HashMap<IpAddr, Vec<ObjectKey>>,
    /// Pods on this node (whatever their state).
    pub local_pods: BTreeSet<ObjectKey>,
    /// Every policy of every kind, translated.
    pub policies: BTreeMap<PolicyRef, Policy>,
    /// NetworkPolicies by namespace (their subjects never leave it).
    pub policies_by_ns: HashMap<Name, BTreeSet<PolicyRef>>,
    /// ClusterNetworkPolicies (their subjects may be in any namespace).
    pub cluster_policies: BTreeSet<PolicyRef>,
}

impl StateIndex {
    pub fn build(state: &ClusterState, node: &str) -> StateIndex {
        let mut index = StateIndex::default();
        for (key, pod) in &state.pods {
            index.add_pod(key, pod, node);
        }
        for policy in state.network_policies.values() {
            index.insert_policy(from_network_policy(policy));
        }
        for policy in state.cluster_network_policies.values() {
            if let Some(policy) = from_cluster_network_policy(policy) {
                index.insert_policy(policy);
            }
        }
        index
    }

    fn add_pod(&mut self, key: &ObjectKey, pod: &PodInfo, node: &str) {
        self.pods_by_ns
            .entry(key.namespace.clone())
            .or_default()
            .insert(key.clone());
        for ip in &pod.ips {
            let pods = self.pods_by_ip.entry(*ip).or_default();
            if !pods.contains(key) {
                pods.push(key.clone());
            }
        }
        if pod.node.as_deref() == Some(node) {
            self.local_pods.insert(key.clone());
        }
    }

    /// `pod`: the version being removed.
    fn remove_pod(&mut self, key: &ObjectKey, pod: &PodInfo) {
        for ip in &pod.ips {
            if let Some(pods) = self.pods_by_ip.get_mut(ip) {
                pods.retain(|k| k != key);
                if pods.is_empty() {
                    self.pods_by_ip.remove(ip);
                }
            }
        }
        if let Some(pods) = self.pods_by_ns.get_mut(key.namespace.as_str()) {
            pods.remove(key);
            if pods.is_empty() {
                self.pods_by_ns.remove(key.namespace.as_str());
            }
        }
        self.local_pods.remove(key);
    }

    fn insert_policy(&mut self, policy: Policy) {
        let id = policy.id.clone();
        match id.kind {
            PolicyKind::NetworkPolicy => {
                self.policies_by_ns
                    .entry(id.namespace.clone())
                    .or_default()
                    .insert(id.clone());
            }
            PolicyKind::ClusterNetworkPolicy => {
                self.cluster_policies.insert(id.clone());
            }
        }
        self.policies.insert(id, policy);
    }

    fn remove_policy(&mut self, id: &PolicyRef) {
        self.policies.remove(id);
        self.cluster_policies.remove(id);
        if let Some(set) = self.policies_by_ns.get_mut(id.namespace.as_str()) {
            set.remove(id);
            if set.is_empty() {
                self.policies_by_ns.remove(id.namespace.as_str());
            }
        }
    }
}

/// Whether policy can select a pod at all (as a subject or a peer): not host-network (its
/// address is the node's), not terminating, with an address.
pub(crate) fn selectable(pod: &PodInfo) -> bool {
    !pod.host_network && !pod.terminating && !pod.ips.is_empty()
}

/// Whether policy is enforced on a pod: selectable and on a node (which enforces it).
pub(crate) fn enforced(pod: &PodInfo) -> bool {
    selectable(pod) && pod.node.is_some()
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
            structure_dirty: true,
            plans: None,
            remote_addrs: BTreeSet::new(),
            local_changed: BTreeSet::new(),
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
                if let Some(old) = &old {
                    self.index.remove_pod(&key, old);
                }
                self.index
                    .add_pod(&key, &self.state.pods[&key], &self.opts.node);
                if new_local || old_local {
                    self.local_changed.insert(key.clone());
                }
                let new_ips = &self.state.pods[&key].ips;
                self.remote_addrs
                    .extend(old.iter().flat_map(|o| &o.ips).chain(new_ips));
            }
            Change::DeletePod(key) => {
                if let Some(old) = self.state.pods.remove(&key) {
                    self.index.remove_pod(&key, &old);
                    if old.node.as_deref() == Some(self.opts.node.as_str()) {
                        self.local_changed.insert(key.clone());
                    }
                    self.remote_addrs.extend(&old.ips);
                }
            }
            Change::UpsertNamespace { name, labels } => {
                self.state.upsert_namespace(&name, labels);
                self.namespace_changed(&name);
            }
            Change::DeleteNamespace(name) => {
                if self.state.namespaces.remove(&name).is_some() {
                    self.namespace_changed(&name);
                }
            }
            Change::UpsertPolicy(policy) => {
                let key = ObjectKey::new(&policy.metadata.namespace, &policy.metadata.name);
                if self.state.network_policies.get(&key) != Some(&*policy) {
                    self.set_policy(PolicyRef::network(&key), Some(from_network_policy(&policy)));
                    self.state.network_policies.insert(key, *policy);
                }
            }
            Change::DeletePolicy(key) => {
                if self.state.network_policies.remove(&key).is_some() {
                    self.set_policy(PolicyRef::network(&key), None);
                }
            }
            Change::UpsertClusterPolicy(policy) => {
                let name = policy.metadata.name.clone();
                if self.state.cluster_network_policies.get(&name) != Some(&*policy) {
                    self.set_policy(
                        PolicyRef::cluster(name.as_str()),
                        from_cluster_network_policy(&policy),
                    );
                    self.state.cluster_network_policies.insert(name, *policy);
                }
            }
            Change::DeleteClusterPolicy(name) => {
                if self.state.cluster_network_policies.remove(&name).is_some() {
                    self.set_policy(PolicyRef::cluster(name.as_str()), None);
                }
            }
            // Nodes enter the ruleset through their pod CIDRs (masquerade) and as the
            // addresses of `nodes` peers; routes to other nodes are the agent's business.
            Change::UpsertNode(node) => {
                let old = self.state.nodes.get(&node.name);
                if old != Some(&node) {
                    if old.is_none_or(|old| old.pod_cidrs != node.pod_cidrs) {
                        self.nodes_dirty = true;
                    }
                    // Node addresses are peers (`nodes`) of ClusterNetworkPolicy rules.
                    self.structure_dirty = true;
                    self.state.nodes.insert(node.name.clone(), node);
                }
            }
            Change::DeleteNode(name) => {
                if self.state.nodes.remove(&name).is_some() {
                    self.nodes_dirty = true;
                    self.structure_dirty = true;
                }
            }
        }
    }

    /// A policy's normalized form changed (`None`: it went away, or does not translate).
    fn set_policy(&mut self, id: PolicyRef, policy: Option<Policy>) {
        self.index.remove_policy(&id);
        if let Some(policy) = policy {
            self.index.insert_policy(policy);
        }
        self.structure_dirty = true;
    }

    /// A namespace's labels changed: the pods namespace selectors hold, and the policies
    /// selecting this node's pods in it, may differ: rebuilt (relabelling is rare).
    fn namespace_changed(&mut self, _name: &str) {
        self.structure_dirty = true;
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
        // A structural change rebuilds the flat form and reports the objects that differ; a
        // pod change moves that pod's subject elements (this node's pods) and classifies its
        // addresses as a peer again.
        if !self.structure_dirty && !self.local_changed.is_empty() {
            if let Some(plans) = self.plans.as_mut() {
                let inputs = flat::Inputs {
                    state: &self.state,
                    index: &self.index,
                    opts: &self.opts,
                };
                self.structure_dirty = !flat::local_pods_changed(
                    &inputs,
                    plans,
                    &self.local_changed,
                    &self.remote_addrs,
                    &mut self.output,
                    &mut self.touched,
                );
            }
        }
        self.local_changed.clear();
        let rebuilt = self.structure_dirty || self.plans.is_none();
        if rebuilt {
            let mut previous = std::mem::take(&mut self.output);
            // The masquerade objects go back in below (and are touched there if they changed).
            previous
                .chains
                .retain(|n, _| !self.masquerade.chains.contains_key(n));
            previous
                .sets
                .retain(|n, _| !self.masquerade.sets.contains_key(n));
            let (new, plans) = flat::build(&self.state, &self.index, &self.opts);
            diff_touched(&previous, &new, &mut self.touched);
            self.output = new;
            self.plans = Some(plans);
            self.structure_dirty = false;
        } else if let Some(plans) = self.plans.as_mut() {
            if !self.remote_addrs.is_empty() {
                let inputs = flat::Inputs {
                    state: &self.state,
                    index: &self.index,
                    opts: &self.opts,
                };
                flat::remote_pods_changed(
                    &inputs,
                    plans,
                    &self.remote_addrs,
                    &mut self.output,
                    &mut self.touched,
                );
            }
        }
        self.remote_addrs.clear();
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

/// Record in `touched` every object of `new` that differs from `previous` (or is new).
fn diff_touched(previous: &Ruleset, new: &Ruleset, touched: &mut Touched) {
    if touched.all {
        return;
    }
    for (name, c) in &new.chains {
        if previous.chains.get(name) != Some(c) {
            touched.chain(name);
        }
    }
    for (name, m) in &new.maps {
        if previous.maps.get(name) != Some(m) {
            touched.map(name);
        }
    }
    for (name, set) in &new.sets {
        if previous.sets.get(name) != Some(set) {
            touched.set(name);
        }
    }
    // What went: element changes recorded for it earlier (not reported yet) no longer apply.
    for name in previous
        .chains
        .keys()
        .filter(|n| !new.chains.contains_key(*n))
    {
        touched.chain(name);
    }
    for name in previous.maps.keys().filter(|n| !new.maps.contains_key(*n)) {
        touched.map(name);
    }
    for name in previous.sets.keys().filter(|n| !new.sets.contains_key(*n)) {
        touched.set(name);
    }
}

/// Full compile from scratch.
pub fn compile(state: &ClusterState, opts: &CompileOptions) -> Ruleset {
    let index = StateIndex::build(state, &opts.node);
    let (mut out, _) = flat::build(state, &index, opts);
    let objects = masquerade::masquerade_objects(state, &opts.masquerade);
    masquerade::install(&mut out, &Ruleset::default(), &objects, &mut Touched::all());
    out
}

/// The selectable pods of each namespace grouped by their labels, for selecting with many
/// selectors at once: replicas share their labels, so a selector is matched once per distinct
/// label set instead of once per pod. Built per compile (not kept: it would cost memory per
/// pod between compiles).
pub(crate) struct PodsByLabels<'a> {
    by_ns: HashMap<&'a str, Vec<(&'a Labels, Vec<&'a ObjectKey>)>>,
}

impl<'a> PodsByLabels<'a> {
    pub fn new(state: &'a ClusterState, index: &'a StateIndex) -> Self {
        let mut by_ns = HashMap::new();
        for (ns, keys) in &index.pods_by_ns {
            let mut groups: HashMap<&Labels, Vec<&ObjectKey>> = HashMap::new();
            for key in keys {
                let pod = &state.pods[key];
                if selectable(pod) {
                    groups.entry(&pod.labels).or_default().push(key);
                }
            }
            by_ns.insert(ns.as_str(), groups.into_iter().collect());
        }
        PodsByLabels { by_ns }
    }

    /// Every pod `selection` selects, each once (in no particular order).
    pub fn select(&self, state: &ClusterState, selection: &PodSelection) -> Vec<&'a ObjectKey> {
        let mut out = Vec::new();
        // A named namespace is one lookup; a namespace selector is matched per namespace.
        let namespaces: Vec<&Vec<_>> = match &selection.namespaces {
            NamespaceScope::Named(ns) => self.by_ns.get(ns.as_str()).into_iter().collect(),
            NamespaceScope::Matching(_) => self
                .by_ns
                .iter()
                .filter(|(ns, _)| selection.namespace_matches(ns, state.namespaces.get(**ns)))
                .map(|(_, groups)| groups)
                .collect(),
        };
        for groups in namespaces {
            for (labels, keys) in groups {
                if crate::model::selector::selector_matches(&selection.pods, labels) {
                    out.extend(keys.iter().copied());
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests;
