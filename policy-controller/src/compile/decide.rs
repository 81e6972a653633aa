//! Deciding a new connection ahead of time: the analysis behind the flat compiled form.
//!
//! For one direction of this node's pods, the compiler computes here, from the normalized
//! policies ([`crate::model::policy`]), everything a new connection's verdict can depend on,
//! so that the datapath decides it with a fixed number of lookups whatever the number of
//! policies:
//!
//! - **Atoms**: the distinct peer conditions of the rules that apply to some local pod in
//!   this direction (a pod selection, an address block, a node selector) and, for egress, the
//!   named ports those rules name (a named port of egress is a port of the destination pod).
//! - **Peer classes**: addresses grouped by the atoms they satisfy (Cilium's identities,
//!   computed by the compiler). Every pod or node address some atom holds is classified on
//!   its own (an exact element); other addresses by the address blocks they fall in (interval
//!   elements); an address in nothing is in the "world" class.
//! - **Subject groups**: local pods grouped by the policies of each tier that select them
//!   and (ingress) what the named ports of those policies resolve to on them.
//! - **Outcomes**: per subject group and peer class, the tiers evaluated for every protocol
//!   and destination port segment: the first Admin rule that matches, else NetworkPolicy
//!   isolation and its union of allows, else the first Baseline rule, else allowed. Only what
//!   differs from the group's default (what happens when no rule matches: denied by
//!   isolation, or allowed) becomes an element.
//!
//! Pure: no nft, no I/O. [`super::flat`] turns the result into chains and maps.

use super::intervals::{addr_u128, block_ranges, RangeSet};
use super::{enforced, selectable, PodsByLabels, StateIndex};
use crate::model::api::LabelSelector;
use crate::model::policy::{Action, Direction, Peer, PolicyRef, PortMatch, RuleRef, Tier};
use crate::model::selector::selector_matches;
use crate::model::{ClusterState, ObjectKey, Protocol};
use ipnet::IpNet;
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;

/// The protocols whose packets carry ports (`th dport`).
pub const PORT_PROTOCOLS: [Protocol; 3] = [Protocol::Tcp, Protocol::Udp, Protocol::Sctp];

/// What decides one new connection in one direction.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum Outcome {
    /// Allowed by this rule (an Admin or Baseline `Accept`, or a NetworkPolicy `Allow`: the
    /// first that allows, in policy order), or by default (`None`: no tier decided).
    Allow(Option<RuleRef>),
    /// Denied by this ClusterNetworkPolicy `Deny` rule.
    Deny(RuleRef),
    /// Denied by NetworkPolicy isolation: these policies select the pod and none allows it.
    Isolated(Vec<PolicyRef>),
}

/// One peer condition.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum Atom {
    Pods(crate::model::selector::PodSelection),
    Network { cidr: IpNet, except: Vec<IpNet> },
    Nodes(LabelSelector),
}

impl Atom {
    /// The atom of one peer of a rule.
    fn of(peer: &Peer) -> Atom {
        match peer {
            Peer::Pods(s) => Atom::Pods(s.clone()),
            Peer::Network { cidr, except } => Atom::Network {
                cidr: *cidr,
                except: except.clone(),
            },
            Peer::Nodes(s) => Atom::Nodes(s.clone()),
        }
    }
}

/// The class of a peer address: the atoms it satisfies, and (egress) the numbers the named
/// ports of the rules resolve to on the pod(s) at that address.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct PeerClass {
    /// Indices into [`Direction`]'s atom list, sorted.
    pub atoms: Vec<usize>,
    /// `(name, protocol)` → port numbers, sorted; only names some rule uses.
    pub named: Vec<((String, Protocol), Vec<u16>)>,
}

/// The policies of each tier that select a local pod in one direction, in evaluation order,
/// and (ingress) the named ports of their rules resolved on it.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SubjectGroup {
    pub tiers: [Vec<PolicyRef>; 3],
    pub named: Vec<((String, Protocol), Vec<u16>)>,
}

impl SubjectGroup {
    /// What happens to a connection no rule matches.
    pub fn default_outcome(&self) -> Outcome {
        match self.tiers[1].is_empty() {
            true => Outcome::Allow(None),
            false => Outcome::Isolated(self.tiers[1].clone()),
        }
    }
}

/// Outcomes that differ from the group's default, for one subject group and peer class.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Decisions {
    /// `(protocol, first port, last port)` → outcome; disjoint, adjacent equal ones merged.
    pub ports: Vec<(Protocol, u16, u16, Outcome)>,
    /// Packets of protocols without ports (ICMP, ...): only rules without ports apply.
    pub portless: Option<Outcome>,
}

/// Everything decided for one direction.
#[derive(Debug, Clone, Default)]
pub struct DirectionPlan {
    pub direction: Option<Direction>,
    /// The policies that select some local pod in this direction: their rules' peers are
    /// the atoms.
    used: BTreeSet<PolicyRef>,
    pub atoms: Vec<Atom>,
    atom_ids: HashMap<Atom, usize>,
    /// Egress: the named ports the rules name.
    egress_names: BTreeSet<(String, Protocol)>,
    /// The address blocks among the atoms: (atom, IPv4?, its ranges).
    blocks: Vec<(usize, bool, RangeSet)>,
    /// Local pods selected by some policy in this direction, by subject group (a group no
    /// pod is in any more stays, empty).
    pub groups: Vec<(SubjectGroup, Vec<ObjectKey>)>,
    group_ids: HashMap<SubjectGroup, usize>,
    /// Per group: the classes where something is not its default.
    pub group_classes: Vec<Vec<usize>>,
    /// The local pods in a group: their group and the addresses they were planned with.
    pub local: HashMap<ObjectKey, (usize, Vec<IpAddr>)>,
    /// Peer classes ever used since the plan was made; index 0 is the world class (no atoms,
    /// no named ports). A class no address is in any more stays here, unused
    /// ([`DirectionPlan::in_use`]).
    pub classes: Vec<PeerClass>,
    class_ids: HashMap<PeerClass, usize>,
    /// Per class: how many exact addresses and ranges are in it.
    refs: Vec<usize>,
    /// Addresses classified on their own → class index.
    pub exact: BTreeMap<IpAddr, usize>,
    /// Address ranges (inclusive, disjoint, per family) → class index, for addresses that are
    /// not in `exact`.
    pub ranges: Vec<(IpAddr, IpAddr, usize)>,
    /// Per class: (group index, what is not the group's default), for the groups where
    /// something is.
    pub decisions: Vec<Vec<(usize, Decisions)>>,
}

/// How the classes changed when addresses were classified again ([`DirectionPlan::reclassify`]).
#[derive(Debug, Default)]
pub struct Reclassified {
    /// Addresses whose exact element changed: `None`, it has none now.
    pub exact: Vec<(IpAddr, Option<usize>)>,
    /// Classes that came into use / went out of use.
    pub new_classes: Vec<usize>,
    pub gone_classes: Vec<usize>,
}

impl DirectionPlan {
    /// Whether some address or range is in class `c` (the world class always is).
    pub fn in_use(&self, c: usize) -> bool {
        c == 0 || self.refs[c] > 0
    }

    fn class_index(&mut self, class: PeerClass, index: &StateIndex) -> usize {
        if let Some(&c) = self.class_ids.get(&class) {
            return c;
        }
        let c = self.classes.len();
        self.class_ids.insert(class.clone(), c);
        self.classes.push(class);
        self.refs.push(0);
        let direction = self.direction.expect("a made plan");
        let mut per_group = Vec::new();
        for (gi, (group, _)) in self.groups.iter().enumerate() {
            let d = decide(index, direction, &self.atom_ids, group, &self.classes[c]);
            if d != Decisions::default() {
                per_group.push((gi, d));
                self.group_classes[gi].push(c);
            }
        }
        self.decisions.push(per_group);
        c
    }

    /// The group of `group`'s pods, made (with its decisions against every class) if new.
    pub fn group_index(&mut self, group: SubjectGroup, index: &StateIndex) -> usize {
        if let Some(&g) = self.group_ids.get(&group) {
            return g;
        }
        let gi = self.groups.len();
        let direction = self.direction.expect("a made plan");
        let mut classes = Vec::new();
        for (c, class) in self.classes.iter().enumerate() {
            let d = decide(index, direction, &self.atom_ids, &group, class);
            if d != Decisions::default() {
                // Group indices only grow: each class's list stays sorted by group.
                self.decisions[c].push((gi, d));
                classes.push(c);
            }
        }
        self.group_classes.push(classes);
        self.group_ids.insert(group.clone(), gi);
        self.groups.push((group, Vec::new()));
        gi
    }

    /// Whether moving `keys` (this node's pods) to their groups now keeps the policies in
    /// use (so the atoms, classes and names of the plan stay those a rebuild would make).
    pub fn keeps_policies(
        &self,
        state: &ClusterState,
        index: &StateIndex,
        keys: &BTreeSet<ObjectKey>,
    ) -> bool {
        let direction = self.direction.expect("a made plan");
        let mut delta: HashMap<usize, isize> = HashMap::new();
        let mut used: BTreeSet<&PolicyRef> = BTreeSet::new();
        let mut new_groups = Vec::new();
        for key in keys {
            if let Some((gi, _)) = self.local.get(key) {
                *delta.entry(*gi).or_default() -= 1;
            }
            if let Some(group) = DirectionPlan::group_of(state, index, key, direction) {
                match self.group_ids.get(&group) {
                    Some(gi) => *delta.entry(*gi).or_default() += 1,
                    None => new_groups.push(group),
                }
            }
        }
        for (gi, (group, pods)) in self.groups.iter().enumerate() {
            if pods.len() as isize + delta.get(&gi).copied().unwrap_or(0) > 0 {
                used.extend(group.tiers.iter().flatten());
            }
        }
        used.extend(new_groups.iter().flat_map(|g| g.tiers.iter().flatten()));
        used.len() == self.used.len() && used.into_iter().eq(self.used.iter())
    }

    /// What group `gi` decides against class `c` that is not its default.
    pub fn decision(&self, gi: usize, c: usize) -> Option<&Decisions> {
        let list = &self.decisions[c];
        list.binary_search_by_key(&gi, |(g, _)| *g)
            .ok()
            .map(|i| &list[i].1)
    }

    /// The subject group of local pod `key` now (`None`: not enforced or selected by
    /// nothing in this direction).
    pub fn group_of(
        state: &ClusterState,
        index: &StateIndex,
        key: &ObjectKey,
        direction: Direction,
    ) -> Option<SubjectGroup> {
        let pod = state.pods.get(key)?;
        if !index.local_pods.contains(key) || !enforced(pod) {
            return None;
        }
        let tiers = selecting(state, index, key, direction);
        if tiers.iter().all(Vec::is_empty) {
            return None;
        }
        let mut group = SubjectGroup {
            tiers,
            named: Vec::new(),
        };
        if direction == Direction::Ingress {
            let names: BTreeSet<(String, Protocol)> = group
                .tiers
                .iter()
                .flatten()
                .flat_map(|p| {
                    named_ports_of(index.policies[p].rules(direction).unwrap_or_default())
                })
                .collect();
            group.named = resolve(state, &[key], &names);
        }
        Some(group)
    }

    fn blocks_at(&self, ip: &IpAddr) -> Vec<usize> {
        let x = addr_u128(ip);
        self.blocks
            .iter()
            .filter(|(_, v4, r)| *v4 == ip.is_ipv4() && r.contains(x))
            .map(|(i, _, _)| *i)
            .collect()
    }

    /// The class of an address given the pod and node atoms it is in (`None`: it needs no
    /// exact element).
    fn exact_class(
        &self,
        state: &ClusterState,
        index: &StateIndex,
        ip: &IpAddr,
        held: BTreeSet<usize>,
    ) -> Option<PeerClass> {
        let pods: Vec<&ObjectKey> = index
            .pods_by_ip
            .get(ip)
            .into_iter()
            .flatten()
            .filter(|k| selectable(&state.pods[*k]))
            .collect();
        let named = if self.egress_names.is_empty() {
            Vec::new()
        } else {
            resolve(state, &pods, &self.egress_names)
        };
        if held.is_empty() && named.is_empty() {
            return None;
        }
        let mut atoms: Vec<usize> = held.into_iter().chain(self.blocks_at(ip)).collect();
        atoms.sort_unstable();
        atoms.dedup();
        Some(PeerClass { atoms, named })
    }

    /// Classify `addrs` again after pods on other nodes changed (policies, namespaces, nodes
    /// and this node's pods did not: those rebuild the plan).
    pub fn reclassify(
        &mut self,
        state: &ClusterState,
        index: &StateIndex,
        addrs: &BTreeSet<IpAddr>,
    ) -> Reclassified {
        let mut out = Reclassified::default();
        for ip in addrs {
            let mut held = BTreeSet::new();
            for key in index.pods_by_ip.get(ip).into_iter().flatten() {
                let pod = &state.pods[key];
                if !selectable(pod) {
                    continue;
                }
                let ns = key.namespace.as_str();
                let ns_labels = state.namespaces.get(ns);
                for (i, atom) in self.atoms.iter().enumerate() {
                    if let Atom::Pods(selection) = atom {
                        if selection.matches(ns, ns_labels, &pod.labels) {
                            held.insert(i);
                        }
                    }
                }
            }
            for (i, atom) in self.atoms.iter().enumerate() {
                if let Atom::Nodes(selector) = atom {
                    if state
                        .nodes
                        .values()
                        .any(|n| n.addresses.contains(ip) && selector_matches(selector, &n.labels))
                    {
                        held.insert(i);
                    }
                }
            }
            let new = self
                .exact_class(state, index, ip, held)
                .map(|class| self.class_index(class, index));
            let old = self.exact.get(ip).copied();
            if old == new {
                continue;
            }
            if let Some(c) = new {
                if self.refs[c] == 0 && c != 0 {
                    out.new_classes.push(c);
                }
                self.refs[c] += 1;
                self.exact.insert(*ip, c);
            } else {
                self.exact.remove(ip);
            }
            if let Some(c) = old {
                self.refs[c] -= 1;
                if self.refs[c] == 0 && c != 0 {
                    out.gone_classes.push(c);
                }
            }
            out.exact.push((*ip, new));
        }
        // A class can come and go within one batch.
        let (new, gone) = (out.new_classes.clone(), out.gone_classes.clone());
        out.new_classes
            .retain(|c| self.in_use(*c) && !gone.contains(c));
        out.gone_classes
            .retain(|c| !self.in_use(*c) && !new.contains(c));
        out
    }
}

const fn tier_slot(tier: Tier) -> usize {
    match tier {
        Tier::Admin => 0,
        Tier::NetworkPolicy => 1,
        Tier::Baseline => 2,
    }
}

/// The policies of every tier that select `pod` in `direction`, in evaluation order.
pub(crate) fn selecting(
    state: &ClusterState,
    index: &StateIndex,
    pod: &ObjectKey,
    direction: Direction,
) -> [Vec<PolicyRef>; 3] {
    let info = &state.pods[pod];
    let ns = pod.namespace.as_str();
    let ns_labels = state.namespaces.get(ns);
    let mut out: [Vec<PolicyRef>; 3] = Default::default();
    let candidates = index
        .policies_by_ns
        .get(ns)
        .into_iter()
        .flatten()
        .chain(&index.cluster_policies);
    for id in candidates {
        let policy = &index.policies[id];
        if policy.rules(direction).is_some() && policy.subject.matches(ns, ns_labels, &info.labels)
        {
            out[tier_slot(policy.tier)].push(id.clone());
        }
    }
    for list in &mut out {
        list.sort_by(|a, b| index.policies[a].order().cmp(&index.policies[b].order()));
    }
    out
}

fn named_ports_of(
    rules: &[crate::model::policy::Rule],
) -> impl Iterator<Item = (String, Protocol)> + '_ {
    rules
        .iter()
        .flat_map(|r| r.ports.iter().flatten())
        .filter_map(|p| match p {
            PortMatch::Named { name, protocol } => Some((name.clone(), *protocol)),
            PortMatch::Ports { .. } => None,
        })
}

/// Resolve `names` on the pods at one address (their union), keeping names that resolve.
fn resolve(
    state: &ClusterState,
    pods: &[&ObjectKey],
    names: &BTreeSet<(String, Protocol)>,
) -> Vec<((String, Protocol), Vec<u16>)> {
    let mut out = Vec::new();
    for (name, proto) in names {
        let mut ports: Vec<u16> = pods
            .iter()
            .flat_map(|k| state.pods[*k].named_port_numbers(name, *proto))
            .collect();
        if ports.is_empty() {
            continue;
        }
        ports.sort_unstable();
        ports.dedup();
        out.push(((name.clone(), *proto), ports));
    }
    out
}

/// Plan one direction for this node's pods.
pub(crate) fn plan(
    state: &ClusterState,
    index: &StateIndex,
    pods: &PodsByLabels<'_>,
    direction: Direction,
) -> DirectionPlan {
    let mut out = DirectionPlan {
        direction: Some(direction),
        ..DirectionPlan::default()
    };
    // Subject groups, and the policies that matter here.
    let mut used: BTreeSet<PolicyRef> = BTreeSet::new();
    let mut groups: BTreeMap<SubjectGroup, Vec<ObjectKey>> = BTreeMap::new();
    for key in &index.local_pods {
        let Some(group) = DirectionPlan::group_of(state, index, key, direction) else {
            continue;
        };
        used.extend(group.tiers.iter().flatten().cloned());
        groups.entry(group).or_default().push(key.clone());
    }
    out.groups = groups.into_iter().collect();
    out.used = used.clone();
    for (gi, (group, pods)) in out.groups.iter().enumerate() {
        out.group_ids.insert(group.clone(), gi);
        for key in pods {
            out.local
                .insert(key.clone(), (gi, state.pods[key].ips.clone()));
        }
    }
    out.group_classes = vec![Vec::new(); out.groups.len()];
    // Atoms and (egress) the named ports the rules name.
    let mut atom_ids: HashMap<Atom, usize> = HashMap::new();
    let mut egress_names: BTreeSet<(String, Protocol)> = BTreeSet::new();
    for id in &used {
        let rules = index.policies[id].rules(direction).unwrap_or_default();
        for rule in rules {
            for peer in rule.peers.iter().flatten() {
                let atom = Atom::of(peer);
                if !atom_ids.contains_key(&atom) {
                    atom_ids.insert(atom.clone(), out.atoms.len());
                    out.atoms.push(atom);
                }
            }
        }
        if direction == Direction::Egress {
            egress_names.extend(named_ports_of(rules));
        }
    }
    // Exact addresses: what pod and node atoms hold, and (egress) pods on which a named port
    // of the rules resolves.
    let mut exact_atoms: BTreeMap<IpAddr, BTreeSet<usize>> = BTreeMap::new();
    for (i, atom) in out.atoms.iter().enumerate() {
        match atom {
            Atom::Pods(selection) => {
                for key in pods.select(state, selection) {
                    for ip in &state.pods[key].ips {
                        exact_atoms.entry(*ip).or_default().insert(i);
                    }
                }
            }
            Atom::Nodes(selector) => {
                for node in state.nodes.values() {
                    if selector_matches(selector, &node.labels) {
                        for ip in &node.addresses {
                            exact_atoms.entry(*ip).or_default().insert(i);
                        }
                    }
                }
            }
            Atom::Network { .. } => {}
        }
    }
    if !egress_names.is_empty() {
        for pod in state.pods.values() {
            if selectable(pod)
                && egress_names
                    .iter()
                    .any(|(n, p)| pod.named_port_numbers(n, *p).next().is_some())
            {
                for ip in &pod.ips {
                    exact_atoms.entry(*ip).or_default();
                }
            }
        }
    }
    out.blocks = out
        .atoms
        .iter()
        .enumerate()
        .filter_map(|(i, a)| match a {
            Atom::Network { cidr, except } => {
                Some((i, cidr.addr().is_ipv4(), block_ranges(cidr, except)))
            }
            _ => None,
        })
        .collect();
    out.atom_ids = atom_ids;
    out.egress_names = egress_names;
    let world = out.class_index(PeerClass::default(), index);
    debug_assert_eq!(world, 0);
    for (ip, held) in exact_atoms {
        if let Some(class) = out.exact_class(state, index, &ip, held) {
            let c = out.class_index(class, index);
            out.refs[c] += 1;
            out.exact.insert(ip, c);
        }
    }
    // Address blocks: elementary ranges per family, each with the blocks holding it.
    for v4 in [true, false] {
        let mut cuts: BTreeSet<u128> = BTreeSet::new();
        for (_, bv4, r) in &out.blocks {
            if *bv4 != v4 {
                continue;
            }
            for &(lo, hi) in r.ranges() {
                cuts.insert(lo);
                if let Some(next) = hi.checked_add(1) {
                    cuts.insert(next);
                }
            }
        }
        let top: u128 = if v4 { u128::from(u32::MAX) } else { u128::MAX };
        let cuts: Vec<u128> = cuts.into_iter().filter(|c| *c <= top).collect();
        let mut pieces: Vec<(u128, u128, Vec<usize>)> = Vec::new();
        for (i, &lo) in cuts.iter().enumerate() {
            let hi = cuts.get(i + 1).map_or(top, |n| n - 1);
            let atoms: Vec<usize> = out
                .blocks
                .iter()
                .filter(|(_, bv4, r)| *bv4 == v4 && r.contains(lo))
                .map(|(i, _, _)| *i)
                .collect();
            match pieces.last_mut() {
                Some(last) if last.2 == atoms && last.1 + 1 == lo => last.1 = hi,
                _ => pieces.push((lo, hi, atoms)),
            }
        }
        for (lo, hi, atoms) in pieces {
            if atoms.is_empty() {
                continue;
            }
            let c = out.class_index(
                PeerClass {
                    atoms,
                    named: Vec::new(),
                },
                index,
            );
            out.refs[c] += 1;
            out.ranges.push((ip_of(lo, v4), ip_of(hi, v4), c));
        }
    }
    out
}

fn ip_of(x: u128, v4: bool) -> IpAddr {
    if v4 {
        IpAddr::V4(std::net::Ipv4Addr::from(x as u32))
    } else {
        IpAddr::V6(std::net::Ipv6Addr::from(x))
    }
}

/// The outcomes of one subject group against one peer class.
fn decide(
    index: &StateIndex,
    direction: Direction,
    atom_ids: &HashMap<Atom, usize>,
    group: &SubjectGroup,
    class: &PeerClass,
) -> Decisions {
    let default = group.default_outcome();
    let named = match direction {
        Direction::Ingress => &group.named,
        Direction::Egress => &class.named,
    };
    let resolved = |name: &str, proto: Protocol| -> &[u16] {
        named
            .iter()
            .find(|((n, p), _)| n == name && *p == proto)
            .map_or(&[], |(_, ports)| ports.as_slice())
    };
    // The rules that can match this class, in evaluation order per tier, with their refs.
    let peer_matches = |rule: &crate::model::policy::Rule| -> bool {
        match &rule.peers {
            None => true,
            Some(peers) => peers.iter().any(|peer| {
                atom_ids
                    .get(&Atom::of(peer))
                    .is_some_and(|id| class.atoms.binary_search(id).is_ok())
            }),
        }
    };
    let mut tiers: [Vec<(RuleRef, &crate::model::policy::Rule)>; 3] = Default::default();
    for (slot, policies) in group.tiers.iter().enumerate() {
        for id in policies {
            let rules = index.policies[id].rules(direction).unwrap_or_default();
            for (i, rule) in rules.iter().enumerate() {
                if peer_matches(rule) {
                    let r = RuleRef {
                        policy: id.clone(),
                        direction,
                        index: i,
                    };
                    tiers[slot].push((r, rule));
                }
            }
        }
    }
    // `port == None`: a packet without ports.
    let port_matches = |rule: &crate::model::policy::Rule, proto: Option<Protocol>, port: u16| {
        let Some(ports) = &rule.ports else {
            return true;
        };
        let Some(proto) = proto else {
            return false;
        };
        ports.iter().any(|p| match p {
            PortMatch::Ports {
                protocol,
                first,
                last,
            } => *protocol == proto && *first <= port && port <= *last,
            PortMatch::Named { name, protocol } => {
                *protocol == proto && resolved(name, *protocol).contains(&port)
            }
        })
    };
    let evaluate = |proto: Option<Protocol>, port: u16| -> Outcome {
        for slot in [0, 1, 2] {
            if slot == 1 {
                if group.tiers[1].is_empty() {
                    continue;
                }
                return match tiers[1].iter().find(|(_, r)| port_matches(r, proto, port)) {
                    Some((rr, _)) => Outcome::Allow(Some(rr.clone())),
                    None => Outcome::Isolated(group.tiers[1].clone()),
                };
            }
            for (rr, rule) in &tiers[slot] {
                if !port_matches(rule, proto, port) {
                    continue;
                }
                match rule.action {
                    Action::Accept | Action::Allow => return Outcome::Allow(Some(rr.clone())),
                    Action::Deny => return Outcome::Deny(rr.clone()),
                    Action::Pass => break,
                }
            }
        }
        Outcome::Allow(None)
    };
    let mut out = Decisions::default();
    if tiers.iter().all(Vec::is_empty) {
        return out;
    }
    let portless = evaluate(None, 0);
    if portless != default {
        out.portless = Some(portless);
    }
    for proto in PORT_PROTOCOLS {
        // Segment boundaries: every port condition of the rules for this protocol.
        let mut cuts: BTreeSet<u32> = BTreeSet::from([0]);
        for (_, rule) in tiers.iter().flatten() {
            for p in rule.ports.iter().flatten() {
                match p {
                    PortMatch::Ports {
                        protocol,
                        first,
                        last,
                    } if *protocol == proto => {
                        cuts.insert(u32::from(*first));
                        cuts.insert(u32::from(*last) + 1);
                    }
                    PortMatch::Named { name, protocol } if *protocol == proto => {
                        for port in resolved(name, *protocol) {
                            cuts.insert(u32::from(*port));
                            cuts.insert(u32::from(*port) + 1);
                        }
                    }
                    _ => {}
                }
            }
        }
        let cuts: Vec<u32> = cuts.into_iter().filter(|c| *c <= 65535).collect();
        let mut segments: Vec<(u16, u16, Outcome)> = Vec::new();
        for (i, &lo) in cuts.iter().enumerate() {
            let hi = cuts.get(i + 1).map_or(65535, |n| n - 1);
            let outcome = evaluate(Some(proto), lo as u16);
            match segments.last_mut() {
                Some(last) if last.2 == outcome => last.1 = hi as u16,
                _ => segments.push((lo as u16, hi as u16, outcome)),
            }
        }
        out.ports.extend(
            segments
                .into_iter()
                .filter(|(_, _, o)| *o != default)
                .map(|(a, b, o)| (proto, a, b, o)),
        );
    }
    out
}
