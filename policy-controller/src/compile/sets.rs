//! The compiler's sets: what each stands for ([`SetSpec`], whose hash is the set's name, so
//! equal specs share one set), the cached pod memberships of the selections they use (kept
//! exact per pod and per namespace change), and their elements.

use super::intervals::{block_ranges, range_to_prefixes};
use super::names::{fam, hash_of};
use super::{select_pods, selectable, CompileOptions, StateIndex};
use crate::model::api::LabelSelector;
use crate::model::selector::{describe_selector, selector_matches, NamespaceScope, PodSelection};
use crate::model::{ClusterState, ObjectKey, PodInfo, Protocol};
use crate::ruleset::{ElementDelta, Family, KeyType, Set, Value};
use ipnet::IpNet;
use serde::Serialize;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;

/// What a set stands for. Its name is a hash of this, so equal specs share one set.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub(crate) enum SetSpec {
    /// Addresses of the pods a selection holds.
    PodAddrs {
        selection: PodSelection,
        family: Family,
    },
    /// `addr . proto . port` of named ports resolved on the pods of a selection (only those
    /// on this node when `local_only`: ingress resolves on the policy's local subjects).
    NamedPorts {
        selection: PodSelection,
        local_only: bool,
        ports: Vec<(String, Protocol)>,
        family: Family,
    },
    /// An address block: the CIDR minus its excepts.
    Block { cidr: IpNet, except: Vec<IpNet> },
    /// The addresses of the nodes a (canonical) selector matches.
    NodeAddrs {
        selector: LabelSelector,
        family: Family,
    },
    /// Numeric ports: (protocol, first, last), merged.
    Ports(Vec<(Protocol, u16, u16)>),
    /// Addresses of the pods of this node that the agent knows (fail-closed guard).
    LocalPods(Family),
}

impl SetSpec {
    pub fn selection(&self) -> Option<&PodSelection> {
        match self {
            SetSpec::PodAddrs { selection, .. } | SetSpec::NamedPorts { selection, .. } => {
                Some(selection)
            }
            _ => None,
        }
    }

    pub fn name(&self) -> String {
        match self {
            SetSpec::PodAddrs { selection, family } => {
                format!("pods{}-{}", fam(*family), hash_of(selection))
            }
            SetSpec::NamedPorts { family, .. } => {
                format!("named{}-{}", fam(*family), hash_of(self))
            }
            SetSpec::Block { cidr, .. } => {
                format!("block{}-{}", fam(family_of_net(cidr)), hash_of(self))
            }
            SetSpec::NodeAddrs { family, .. } => format!("nodes{}-{}", fam(*family), hash_of(self)),
            SetSpec::Ports(_) => format!("ports-{}", hash_of(self)),
            SetSpec::LocalPods(family) => format!("local{}", fam(*family)),
        }
    }

    /// Elements follow something other than a selection: always rebuilt with the structure
    /// (the local pods) or when nodes change.
    pub fn follows_nodes(&self) -> bool {
        matches!(self, SetSpec::NodeAddrs { .. })
    }
}

pub(crate) fn family_of_net(net: &IpNet) -> Family {
    Family::of(&net.addr())
}

pub(crate) fn addr_key(f: Family) -> KeyType {
    match f {
        Family::Ipv4 => KeyType::Ipv4Addr,
        Family::Ipv6 => KeyType::Ipv6Addr,
    }
}

/// Which pods each selection in use holds, and what changed since their sets were last
/// brought up to date.
#[derive(Debug, Default)]
pub(crate) struct Memberships {
    members: HashMap<PodSelection, BTreeSet<ObjectKey>, Fast>,
    /// Selections whose sets must be materialised again (a namespace's labels changed).
    pub dirty: HashSet<PodSelection, Fast>,
    /// Per selection, the pods that joined, left or changed addresses, named ports or node
    /// since its sets were last brought up to date, each as it was then (`None`: not a
    /// member then). Their sets change by these pods' elements only ([`Memberships::update`]).
    pub pending: HashMap<PodSelection, HashMap<ObjectKey, Option<Arc<PodInfo>>>, Fast>,
}

/// A fast hasher for the compiler's name-, key- and selection-indexed caches (looked up
/// thousands of times per structural rebuild; their keys are not attacker-chosen beyond what
/// the API server admits, and foldhash seeds per process).
pub(crate) type Fast = foldhash::fast::RandomState;

impl Memberships {
    /// A pod was added, changed or removed: keep memberships exact and mark what changed.
    pub fn pod_changed(
        &mut self,
        state: &ClusterState,
        key: &ObjectKey,
        old: Option<&PodInfo>,
        new: Option<&PodInfo>,
    ) {
        let ns_labels = state.namespaces.get(key.namespace.as_str());
        let content_changed = match (old, new) {
            (Some(o), Some(n)) => {
                o.ips != n.ips || o.named_ports != n.named_ports || o.node != n.node
            }
            _ => true,
        };
        // One copy of the old version for every selection that records it.
        let mut old_copy: Option<Arc<PodInfo>> = None;
        for (selection, members) in self.members.iter_mut() {
            let was = members.contains(key);
            let now = new.is_some_and(|p| {
                selectable(p) && selection.matches(&key.namespace, ns_labels, &p.labels)
            });
            if was == now && !(now && content_changed) {
                continue;
            }
            if was != now {
                if now {
                    members.insert(key.clone());
                } else {
                    members.remove(key);
                }
            }
            // The first change since the last update holds the version the sets still show.
            let pods = self.pending.entry(selection.clone()).or_default();
            if !pods.contains_key(key) {
                let then = match (was, old) {
                    (true, Some(o)) => {
                        Some(old_copy.get_or_insert_with(|| Arc::new(o.clone())).clone())
                    }
                    _ => None,
                };
                pods.insert(key.clone(), then);
            }
        }
    }

    /// Whether the sets of `selection` changed by some pods' elements only (see
    /// [`Memberships::pending`]) and not in full.
    pub fn has_pending(&self, selection: &PodSelection) -> bool {
        !self.pending.is_empty()
            && !self.dirty.contains(selection)
            && self.pending.contains_key(selection)
    }

    /// Bring the elements of `set` (the set of `spec`, as last materialised or updated) up
    /// to date with the pending pod changes of its selection, recording each element that
    /// came or went in `delta`. Only the elements of the changed pods are looked at: an
    /// element goes when no member pod (with that address, [`StateIndex::pods_by_ip`])
    /// still gives it, and comes when one does.
    pub fn update(
        &self,
        state: &ClusterState,
        index: &StateIndex,
        opts: &CompileOptions,
        spec: &SetSpec,
        set: &mut Set,
        mut delta: Option<&mut ElementDelta>,
    ) {
        let Some(selection) = spec.selection() else {
            return;
        };
        let (Some(pods), Some(members)) =
            (self.pending.get(selection), self.members.get(selection))
        else {
            return;
        };
        let mut candidates: BTreeSet<Vec<Value>> = BTreeSet::new();
        for (key, then) in pods {
            if let Some(then) = then {
                candidates.extend(pod_elements(spec, then, opts));
            }
            if members.contains(key) {
                candidates.extend(pod_elements(spec, &state.pods[key], opts));
            }
        }
        for e in candidates {
            let Some(Value::Addr(ip)) = e.first() else {
                continue;
            };
            let present = index.pods_by_ip.get(ip).into_iter().flatten().any(|k| {
                members.contains(k) && pod_elements(spec, &state.pods[k], opts).contains(&e)
            });
            if present {
                if !set.elements.contains(&e) {
                    set.elements.insert(e.clone());
                    if let Some(d) = delta.as_deref_mut() {
                        d.add(e);
                    }
                }
            } else if set.elements.remove(&e) {
                if let Some(d) = delta.as_deref_mut() {
                    d.remove(e);
                }
            }
        }
    }

    /// A namespace's labels changed (or it went away): re-test its pods against the
    /// selections that look at namespace labels.
    pub fn namespace_changed(&mut self, state: &ClusterState, index: &StateIndex, ns: &str) {
        let ns_labels = state.namespaces.get(ns);
        let pods: Vec<&ObjectKey> = index.pods_by_ns.get(ns).into_iter().flatten().collect();
        for (selection, members) in self.members.iter_mut() {
            if !matches!(selection.namespaces, NamespaceScope::Matching(_)) {
                continue;
            }
            for key in &pods {
                let pod = &state.pods[*key];
                let now = selectable(pod) && selection.matches(ns, ns_labels, &pod.labels);
                let changed = if now {
                    members.insert((*key).clone())
                } else {
                    members.remove(*key)
                };
                if changed {
                    self.dirty.insert(selection.clone());
                }
            }
        }
    }

    fn members(
        &mut self,
        state: &ClusterState,
        index: &StateIndex,
        selection: &PodSelection,
    ) -> &BTreeSet<ObjectKey> {
        if !self.members.contains_key(selection) {
            let pods = select_pods(state, index, selection);
            self.members.insert(selection.clone(), pods);
        }
        &self.members[selection]
    }

    /// Forget selections no set uses any more, so per-pod bookkeeping stays proportional to
    /// what is in force.
    pub fn retain_used(&mut self, used: &HashSet<&PodSelection, Fast>) {
        self.members.retain(|s, _| used.contains(s));
        self.dirty.clear();
        self.pending.clear();
    }

    /// The elements of the set `spec` stands for.
    pub fn materialise(
        &mut self,
        state: &ClusterState,
        index: &StateIndex,
        opts: &CompileOptions,
        spec: &SetSpec,
    ) -> Set {
        let mut set = Set {
            comment: Some(set_comment(spec)),
            ..Default::default()
        };
        match spec {
            SetSpec::PodAddrs { selection, family } => {
                set.key = vec![addr_key(*family)];
                for key in self.members(state, index, selection) {
                    set.elements
                        .extend(pod_elements(spec, &state.pods[key], opts));
                }
            }
            SetSpec::NamedPorts {
                selection, family, ..
            } => {
                set.key = vec![addr_key(*family), KeyType::InetProto, KeyType::InetService];
                for key in self.members(state, index, selection) {
                    set.elements
                        .extend(pod_elements(spec, &state.pods[key], opts));
                }
            }
            SetSpec::Block { cidr, except } => {
                let v4 = cidr.addr().is_ipv4();
                set.key = vec![addr_key(family_of_net(cidr))];
                set.interval = true;
                for &(lo, hi) in block_ranges(cidr, except).ranges() {
                    for p in range_to_prefixes(lo, hi, v4) {
                        set.elements.insert(vec![Value::Prefix(p)]);
                    }
                }
            }
            SetSpec::NodeAddrs { selector, family } => {
                set.key = vec![addr_key(*family)];
                for node in state.nodes.values() {
                    if !selector_matches(selector, &node.labels) {
                        continue;
                    }
                    for ip in node.addresses.iter().filter(|ip| Family::of(ip) == *family) {
                        set.elements.insert(vec![Value::Addr(*ip)]);
                    }
                }
            }
            SetSpec::Ports(ranges) => {
                set.key = vec![KeyType::InetProto, KeyType::InetService];
                set.interval = true;
                for &(proto, lo, hi) in ranges {
                    let port = if lo == hi {
                        Value::Port(lo)
                    } else {
                        Value::PortRange(lo, hi)
                    };
                    set.elements
                        .insert(vec![Value::Proto(proto.number()), port]);
                }
            }
            SetSpec::LocalPods(family) => {
                set.key = vec![addr_key(*family)];
                for key in &index.local_pods {
                    let pod = &state.pods[key];
                    // Every local pod the agent knows, terminating ones included: the guard
                    // is for pods the agent has not seen, not for pods policy ignores.
                    if pod.host_network {
                        continue;
                    }
                    for ip in pod.ips.iter().filter(|ip| Family::of(ip) == *family) {
                        set.elements.insert(vec![Value::Addr(*ip)]);
                    }
                }
            }
        }
        set
    }
}

/// The elements one member pod gives the set of `spec` (a selection's set).
fn pod_elements(spec: &SetSpec, pod: &PodInfo, opts: &CompileOptions) -> Vec<Vec<Value>> {
    let mut out = Vec::new();
    match spec {
        SetSpec::PodAddrs { family, .. } => {
            for ip in pod.ips.iter().filter(|ip| Family::of(ip) == *family) {
                out.push(vec![Value::Addr(*ip)]);
            }
        }
        SetSpec::NamedPorts {
            local_only,
            ports,
            family,
            ..
        } => {
            if *local_only && pod.node.as_deref() != Some(opts.node.as_str()) {
                return out;
            }
            for (name, proto) in ports {
                for port in pod.named_port_numbers(name, *proto) {
                    for ip in pod.ips.iter().filter(|ip| Family::of(ip) == *family) {
                        out.push(vec![
                            Value::Addr(*ip),
                            Value::Proto(proto.number()),
                            Value::Port(port),
                        ]);
                    }
                }
            }
        }
        _ => {}
    }
    out
}

fn set_comment(spec: &SetSpec) -> String {
    let text = match spec {
        SetSpec::PodAddrs { selection, .. } => format!("pods {}", selection.describe()),
        SetSpec::NamedPorts {
            selection, ports, ..
        } => {
            let names: Vec<String> = ports.iter().map(|(n, p)| format!("{p}/{n}")).collect();
            format!(
                "named ports {} on {}",
                names.join(","),
                selection.describe()
            )
        }
        SetSpec::Block { cidr, except } => {
            let ex: Vec<String> = except.iter().map(|e| e.to_string()).collect();
            if ex.is_empty() {
                format!("addresses {cidr}")
            } else {
                format!("addresses {cidr} except {}", ex.join(","))
            }
        }
        SetSpec::NodeAddrs { selector, .. } => {
            format!("addresses of nodes {}", describe_selector(selector))
        }
        SetSpec::Ports(ranges) => {
            let r: Vec<String> = ranges
                .iter()
                .map(|(p, a, b)| {
                    if a == b {
                        format!("{p}/{a}")
                    } else {
                        format!("{p}/{a}-{b}")
                    }
                })
                .collect();
            format!("ports {}", r.join(","))
        }
        SetSpec::LocalPods(_) => "pods of this node known to the agent".to_string(),
    };
    truncate(text, 120)
}

fn truncate(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut cut = max - 3;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push_str("...");
    }
    s
}
