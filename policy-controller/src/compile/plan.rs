//! The compiler proper: which chains, maps and sets the current state needs (the "structure"),
//! and the elements of each set (materialised from cached selector memberships).

use super::intervals::{block_ranges, merge_port_ranges, range_to_prefixes};
use super::{select_pods, CompileOptions, StateIndex};
use crate::eval::reference::{is_enforced_pod, is_policy_pod, policy_types, Direction};
use crate::model::api::{IntOrString, NetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort};
use crate::model::selector::{selector_matches, NamespaceScope, PodSelection};
use crate::model::{ClusterState, ObjectKey, PodInfo, Protocol};
use crate::ruleset::{
    BaseChain, Chain, ChainPolicy, ChainType, CmpOp, CtState, Family, Field, Hook, KeyType, Match,
    Rule, RuleVerdict, Ruleset, Set, Statement, Touched, Value, Verdict, VerdictMap,
};
use ipnet::IpNet;
use palisade_common::HOST_VETH_PREFIX;
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::IpAddr;

/// A fast hasher for the compiler's name- and key-indexed caches (looked up thousands of times
/// per structural rebuild; their keys are not attacker-chosen beyond what the API server
/// admits, and foldhash seeds per process).
type Fast = foldhash::fast::RandomState;

pub const FORWARD_CHAIN: &str = "forward";
pub const INPUT_CHAIN: &str = "input";
pub const INGRESS_DISPATCH_CHAIN: &str = "ingress-dispatch";
/// Priority of both base chains: `filter` (0). See the module documentation of `compile`.
pub const FILTER_PRIORITY: i32 = 0;
/// NFLOG rate limit per class chain, so a flood of denied packets cannot flood the agent.
pub const LOG_RATE_PER_SECOND: u32 = 10;
/// Prefix of every NFLOG message: `palisade drop <ingress|egress> <class chain>`.
pub const LOG_PREFIX: &str = "palisade drop";

/// What a set stands for. Its name is a hash of this, so equal specs share one set.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub(crate) enum SetSpec {
    /// Addresses of the pods a selection holds.
    PodAddrs {
        selection: PodSelection,
        family: Family,
    },
    /// `addr . proto . port` of named ports resolved on the pods of a selection (only those
    /// on this node when `local_only`: ingress resolves on the policy's local targets).
    NamedPorts {
        selection: PodSelection,
        local_only: bool,
        ports: Vec<(String, Protocol)>,
        family: Family,
    },
    /// An ipBlock: the CIDR minus its excepts.
    Block { cidr: IpNet, except: Vec<IpNet> },
    /// Numeric ports: (protocol, first, last), merged.
    Ports(Vec<(Protocol, u16, u16)>),
    /// Addresses of the pods of this node that the agent knows (fail-closed guard).
    LocalPods(Family),
}

impl SetSpec {
    fn selection(&self) -> Option<&PodSelection> {
        match self {
            SetSpec::PodAddrs { selection, .. } | SetSpec::NamedPorts { selection, .. } => {
                Some(selection)
            }
            _ => None,
        }
    }

    fn name(&self) -> String {
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
            SetSpec::Ports(_) => format!("ports-{}", hash_of(self)),
            SetSpec::LocalPods(family) => format!("local{}", fam(*family)),
        }
    }
}

fn fam(f: Family) -> &'static str {
    match f {
        Family::Ipv4 => "4",
        Family::Ipv6 => "6",
    }
}

fn family_of_net(net: &IpNet) -> Family {
    Family::of(&net.addr())
}

fn addr_key(f: Family) -> KeyType {
    match f {
        Family::Ipv4 => KeyType::Ipv4Addr,
        Family::Ipv6 => KeyType::Ipv6Addr,
    }
}

/// 16 hex digits of FNV-1a 64 over the canonical JSON of `v`: stable across runs, releases
/// and machines (std's hasher is not).
pub(crate) fn hash_of<T: Serialize + ?Sized>(v: &T) -> String {
    let text = serde_json::to_string(v).expect("serialisable");
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in text.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

pub(crate) fn policy_chain_name(direction: Direction, policy: &ObjectKey) -> String {
    let prefix = match direction {
        Direction::Ingress => "pi",
        Direction::Egress => "pe",
    };
    format!("{prefix}-{}", hash_of(&(&policy.namespace, &policy.name)))
}

pub(crate) fn class_chain_name(direction: Direction, policies: &[ObjectKey]) -> String {
    let prefix = match direction {
        Direction::Ingress => "in",
        Direction::Egress => "eg",
    };
    format!("{prefix}-{}", hash_of(policies))
}

pub(crate) fn dispatch_map_name(direction: Direction, family: Family) -> String {
    let d = match direction {
        Direction::Ingress => "ingress",
        Direction::Egress => "egress",
    };
    format!("{d}{}", fam(family))
}

/// Caches kept between compiles by [`super::Compiler`]; a fresh one for a full compile.
#[derive(Debug, Default)]
pub(crate) struct Cache {
    /// Selection → the pods it holds, for every selection the current sets use.
    members: HashMap<PodSelection, BTreeSet<ObjectKey>>,
    /// Selections whose pods (or those pods' addresses or named ports) changed since their
    /// sets were last materialised.
    dirty: HashSet<PodSelection>,
    /// The sets of the current structure, by name.
    specs: HashMap<String, SetSpec, Fast>,
    /// Per-policy chains as last built, reused while the policy's spec is unchanged (they
    /// depend on nothing else: the sets they use are named by what they stand for).
    policy_chains: HashMap<(Direction, ObjectKey), CachedPolicyChain, Fast>,
    /// [`policy_chain_name`] of the policies in use (a hash of a JSON text: worth keeping).
    chain_names: HashMap<(Direction, ObjectKey), String, Fast>,
}

#[derive(Debug, Clone)]
struct CachedPolicyChain {
    spec: crate::model::api::NetworkPolicySpec,
    rules: Vec<Rule>,
    /// The sets the rules use, each once.
    sets: Vec<(String, SetSpec)>,
}

impl Cache {
    /// A policy changed or went away: its cached chains are no longer current.
    pub fn forget_policy(&mut self, key: &ObjectKey) {
        for direction in [Direction::Ingress, Direction::Egress] {
            self.policy_chains.remove(&(direction, key.clone()));
        }
    }

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
        for (selection, members) in self.members.iter_mut() {
            let was = members.contains(key);
            let now = new.is_some_and(|p| {
                is_policy_pod(p) && selection.matches(&key.namespace, ns_labels, &p.labels)
            });
            if was != now {
                if now {
                    members.insert(key.clone());
                } else {
                    members.remove(key);
                }
                self.dirty.insert(selection.clone());
            } else if now && content_changed {
                self.dirty.insert(selection.clone());
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
                let now = is_policy_pod(pod) && selection.matches(ns, ns_labels, &pod.labels);
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

    /// Only set elements may have changed: re-materialise the sets of dirty selections.
    pub fn refresh_sets(
        &mut self,
        state: &ClusterState,
        index: &StateIndex,
        opts: &CompileOptions,
        out: &mut Ruleset,
        touched: &mut Touched,
    ) {
        if self.dirty.is_empty() {
            return;
        }
        let stale: Vec<(String, SetSpec)> = self
            .specs
            .iter()
            .filter(|(_, spec)| spec.selection().is_some_and(|s| self.dirty.contains(s)))
            .map(|(n, s)| (n.clone(), s.clone()))
            .collect();
        for (name, spec) in stale {
            let set = self.materialise(state, index, opts, &spec);
            touched.set(&name);
            out.sets.insert(name, set);
        }
        self.dirty.clear();
    }

    /// Compute the whole structure, reusing (moving) the sets of `previous` that are still
    /// exact: a set's name is a hash of what it stands for, so an equal name is an equal spec,
    /// and only its elements can be stale (a dirty selection, or local pods).
    pub fn rebuild(
        &mut self,
        state: &ClusterState,
        index: &StateIndex,
        opts: &CompileOptions,
        mut previous: Ruleset,
        touched: &mut Touched,
    ) -> Ruleset {
        let mut b = Builder {
            state,
            opts,
            specs: HashMap::default(),
            chains: BTreeMap::new(),
            recording: None,
            policy_cache: std::mem::take(&mut self.policy_chains),
            chain_names: std::mem::take(&mut self.chain_names),
            used_policies: HashSet::default(),
            previous_chains: std::mem::take(&mut previous.chains),
            reused: HashSet::default(),
        };
        let maps = b.dispatch(index);
        b.base_chains();
        let Builder {
            specs,
            chains,
            mut policy_cache,
            mut chain_names,
            used_policies,
            previous_chains,
            reused,
            ..
        } = b;
        policy_cache.retain(|k, _| used_policies.contains(k));
        chain_names.retain(|k, _| used_policies.contains(k));
        self.policy_chains = policy_cache;
        self.chain_names = chain_names;
        // What differs from the previous output (what went, the dataplane sees by name).
        // Comparing costs: not when everything counts as touched anyway.
        if !touched.all {
            for (name, chain) in &chains {
                if !reused.contains(name) && previous_chains.get(name) != Some(chain) {
                    touched.chain(name);
                }
            }
            for (name, map) in &maps {
                if previous.maps.get(name) != Some(map) {
                    touched.map(name);
                }
            }
        }

        let mut sets = BTreeMap::new();
        for (name, spec) in &specs {
            // The local-pods set follows the node's pods directly. Every other set follows
            // its selection: a pod joining, leaving, or changing IPs, named ports or node
            // (which decides membership of a `local_only` set) marks the selection dirty.
            let stale = matches!(spec, SetSpec::LocalPods(_))
                || spec.selection().is_some_and(|s| self.dirty.contains(s));
            let set = match previous.sets.remove(name) {
                Some(set) if !stale => set,
                _ => {
                    touched.set(name);
                    self.materialise(state, index, opts, spec)
                }
            };
            sets.insert(name.clone(), set);
        }
        // Forget selections no set uses any more, so per-pod bookkeeping stays proportional
        // to what is in force.
        let used: HashSet<&PodSelection> = specs.values().filter_map(SetSpec::selection).collect();
        self.members.retain(|s, _| used.contains(s));
        self.dirty.clear();
        self.specs = specs;
        Ruleset { chains, sets, maps }
    }

    fn materialise(
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
                let members = self.members(state, index, selection);
                for key in members {
                    for ip in state.pods[key]
                        .ips
                        .iter()
                        .filter(|ip| Family::of(ip) == *family)
                    {
                        set.elements.insert(vec![Value::Addr(*ip)]);
                    }
                }
            }
            SetSpec::NamedPorts {
                selection,
                local_only,
                ports,
                family,
            } => {
                set.key = vec![addr_key(*family), KeyType::InetProto, KeyType::InetService];
                let members = self.members(state, index, selection);
                for key in members {
                    let pod = &state.pods[key];
                    if *local_only && pod.node.as_deref() != Some(opts.node.as_str()) {
                        continue;
                    }
                    for (name, proto) in ports {
                        let Some(port) = pod.resolve_named_port(name, *proto) else {
                            continue;
                        };
                        for ip in pod.ips.iter().filter(|ip| Family::of(ip) == *family) {
                            set.elements.insert(vec![
                                Value::Addr(*ip),
                                Value::Proto(proto.number()),
                                Value::Port(port),
                            ]);
                        }
                    }
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
                format!("ipBlock {cidr}")
            } else {
                format!("ipBlock {cidr} except {}", ex.join(","))
            }
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

/// Builds chains and maps for one compile, collecting the sets they reference.
struct Builder<'a> {
    state: &'a ClusterState,
    opts: &'a CompileOptions,
    specs: HashMap<String, SetSpec, Fast>,
    chains: BTreeMap<String, Chain>,
    /// While building one policy's chain: the sets it uses, for the cache.
    recording: Option<Vec<(String, SetSpec)>>,
    policy_cache: HashMap<(Direction, ObjectKey), CachedPolicyChain, Fast>,
    chain_names: HashMap<(Direction, ObjectKey), String, Fast>,
    used_policies: HashSet<(Direction, ObjectKey), Fast>,
    /// The chains of the previous output, reused for policy chains served from the cache.
    previous_chains: BTreeMap<String, Chain>,
    /// Chains moved unchanged from the previous output.
    reused: HashSet<String, Fast>,
}

/// One rule's peers (`from` / `to`) and ports, as written.
type RuleSection<'a> = (
    Option<&'a [NetworkPolicyPeer]>,
    Option<&'a [NetworkPolicyPort]>,
);

/// One alternative for the far end of a rule.
enum PeerAlt {
    /// No peers: everybody, in or outside the cluster.
    Any,
    Pods(PodSelection),
    Block(IpNet, Vec<IpNet>),
}

/// The ports of one rule.
struct PortAlts {
    /// No ports: everything.
    any: bool,
    numeric: Vec<(Protocol, u16, u16)>,
    named: Vec<(String, Protocol)>,
}

impl Builder<'_> {
    /// [`policy_chain_name`], remembered across compiles.
    fn policy_chain(&mut self, direction: Direction, key: &ObjectKey) -> String {
        self.chain_names
            .entry((direction, key.clone()))
            .or_insert_with(|| policy_chain_name(direction, key))
            .clone()
    }

    fn set(&mut self, spec: SetSpec) -> String {
        let name = spec.name();
        if let Some(rec) = self.recording.as_mut() {
            rec.push((name.clone(), spec.clone()));
        }
        self.specs.entry(name.clone()).or_insert(spec);
        name
    }

    /// A policy's chain rules, from the cache when its spec is unchanged.
    fn cached_policy_rules(
        &mut self,
        direction: Direction,
        key: &ObjectKey,
        name: &str,
        policy: &NetworkPolicy,
    ) -> Vec<Rule> {
        let cache_key = (direction, key.clone());
        self.used_policies.insert(cache_key.clone());
        // An entry is dropped whenever its policy changes ([`Cache::forget_policy`]), so a
        // hit is current; debug builds (every test) check that.
        if let Some(cached) = self.policy_cache.get(&cache_key) {
            debug_assert!(
                cached.spec == policy.spec,
                "stale policy chain cache: {key}"
            );
            for (name, spec) in &cached.sets {
                if !self.specs.contains_key(name) {
                    self.specs.insert(name.clone(), spec.clone());
                }
            }
            // The previous output holds exactly these rules (built from this entry): move
            // them instead of cloning.
            return match self.previous_chains.remove(name) {
                Some(chain) => {
                    debug_assert!(chain.rules == cached.rules, "previous chain of {key}");
                    self.reused.insert(name.to_string());
                    chain.rules
                }
                None => cached.rules.clone(),
            };
        }
        self.recording = Some(Vec::new());
        let rules = self.policy_rules(direction, key, policy);
        let mut sets = self.recording.take().unwrap_or_default();
        sets.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        sets.dedup_by(|a, b| a.0 == b.0);
        self.policy_cache.insert(
            cache_key,
            CachedPolicyChain {
                spec: policy.spec.clone(),
                rules: rules.clone(),
                sets,
            },
        );
        rules
    }

    /// Class chains, policy chains and the dispatch maps for the enforced pods of this node.
    fn dispatch(&mut self, index: &StateIndex) -> BTreeMap<String, VerdictMap> {
        let mut maps = BTreeMap::new();
        for direction in [Direction::Ingress, Direction::Egress] {
            for family in [Family::Ipv4, Family::Ipv6] {
                maps.insert(
                    dispatch_map_name(direction, family),
                    VerdictMap {
                        key: vec![addr_key(family)],
                        interval: false,
                        elements: BTreeMap::new(),
                        comment: Some(format!(
                            "{direction}-isolated pods of this node: address → their class chain"
                        )),
                    },
                );
            }
        }
        let mut classes: BTreeMap<(Direction, Vec<ObjectKey>), String> = BTreeMap::new();
        for key in &index.local_pods {
            let pod = &self.state.pods[key];
            if !is_enforced_pod(pod) {
                continue;
            }
            let mut ingress = Vec::new();
            let mut egress = Vec::new();
            for pkey in index
                .policies_by_ns
                .get(key.namespace.as_str())
                .into_iter()
                .flatten()
            {
                let policy = &self.state.policies[pkey];
                let (i, e) = policy_types(&policy.spec);
                if !(i || e) || !selector_matches(&policy.spec.pod_selector, &pod.labels) {
                    continue;
                }
                if i {
                    ingress.push(pkey.clone());
                }
                if e {
                    egress.push(pkey.clone());
                }
            }
            for (direction, policies) in
                [(Direction::Ingress, ingress), (Direction::Egress, egress)]
            {
                if policies.is_empty() {
                    continue;
                }
                let chain = match classes.get(&(direction, policies.clone())) {
                    Some(c) => c.clone(),
                    None => {
                        let c = class_chain_name(direction, &policies);
                        classes.insert((direction, policies), c.clone());
                        c
                    }
                };
                for ip in &pod.ips {
                    maps.get_mut(&dispatch_map_name(direction, Family::of(ip)))
                        .expect("dispatch map")
                        .elements
                        .insert(vec![Value::Addr(*ip)], Verdict::Jump(chain.clone()));
                }
            }
        }
        let mut policy_chains: BTreeSet<(Direction, ObjectKey)> = BTreeSet::new();
        for ((direction, policies), chain) in &classes {
            let mut rules: Vec<Rule> = Vec::with_capacity(policies.len() + 2);
            for p in policies {
                policy_chains.insert((*direction, p.clone()));
                rules.push(
                    Rule::new(vec![], Verdict::Jump(self.policy_chain(*direction, p)))
                        .with_comment(p.to_string()),
                );
            }
            if let Some(group) = self.opts.nflog_group {
                // A rule of its own: a rate limit that is exceeded ends the rule, and must not
                // skip the drop.
                rules.push(Rule {
                    matches: vec![],
                    statements: vec![Statement::Log {
                        group,
                        prefix: format!("{LOG_PREFIX} {direction} {chain}"),
                        rate_per_second: Some(LOG_RATE_PER_SECOND),
                    }],
                    verdict: None,
                    comment: Some(format!("log {direction} denied by default")),
                });
            }
            // Counted, so that `palisadectl explain --agent` can show how many packets this
            // default deny dropped.
            let mut drop = Rule::new(vec![], Verdict::Drop).with_comment(format!(
                "{direction} denied: no rule of these policies allows it"
            ));
            drop.statements.push(Statement::Counter);
            rules.push(drop);
            self.chains
                .insert(chain.clone(), Chain { base: None, rules });
        }
        for (direction, key) in policy_chains {
            let policy = &self.state.policies[&key];
            let name = self.policy_chain(direction, &key);
            let rules = self.cached_policy_rules(direction, &key, &name, policy);
            self.chains.insert(name, Chain { base: None, rules });
        }
        maps
    }

    fn base_chains(&mut self) {
        let est = Rule::new(
            vec![Match::CtState(vec![CtState::Established, CtState::Related])],
            Verdict::Accept,
        )
        .with_comment("replies and related traffic of allowed connections");
        let mut forward = vec![
            est.clone(),
            Rule::new(vec![Match::CtState(vec![CtState::Invalid])], Verdict::Drop)
                .with_comment("invalid conntrack state"),
        ];
        if self.opts.fail_closed_new_pods {
            for family in [Family::Ipv4, Family::Ipv6] {
                let set = self.set(SetSpec::LocalPods(family));
                forward.push(
                    Rule::new(
                        vec![
                            Match::Cmp {
                                field: Field::OifName,
                                op: CmpOp::Eq,
                                value: Value::IfPrefix(HOST_VETH_PREFIX.to_string()),
                            },
                            Match::Lookup {
                                fields: vec![Field::DstAddr(family)],
                                set,
                                negate: true,
                            },
                        ],
                        Verdict::Drop,
                    )
                    .with_comment("fail-closed: pod not programmed yet"),
                );
            }
        }
        let egress_dispatch = |family| Rule {
            matches: vec![],
            statements: vec![],
            verdict: Some(RuleVerdict::Vmap {
                fields: vec![Field::SrcAddr(family)],
                map: dispatch_map_name(Direction::Egress, family),
            }),
            comment: Some("egress-isolated source pod".into()),
        };
        forward.push(egress_dispatch(Family::Ipv4));
        forward.push(egress_dispatch(Family::Ipv6));
        forward.push(Rule::new(
            vec![],
            Verdict::Goto(INGRESS_DISPATCH_CHAIN.into()),
        ));
        self.chains.insert(
            FORWARD_CHAIN.into(),
            Chain {
                base: Some(BaseChain {
                    chain_type: ChainType::Filter,
                    hook: Hook::Forward,
                    priority: FILTER_PRIORITY,
                    policy: ChainPolicy::Accept,
                }),
                rules: forward,
            },
        );

        let mut input = vec![
            est,
            Rule::new(
                vec![Match::Cmp {
                    field: Field::IifName,
                    op: CmpOp::Ne,
                    value: Value::IfPrefix(HOST_VETH_PREFIX.to_string()),
                }],
                Verdict::Accept,
            )
            .with_comment("not from a pod"),
        ];
        for net in ["fe80::/10", "ff00::/8"] {
            input.push(
                Rule::new(
                    vec![Match::Cmp {
                        field: Field::DstAddr(Family::Ipv6),
                        op: CmpOp::Eq,
                        value: Value::Prefix(net.parse().expect("literal")),
                    }],
                    Verdict::Accept,
                )
                .with_comment("IPv6 link plumbing (neighbour discovery)"),
            );
        }
        input.push(egress_dispatch(Family::Ipv4));
        input.push(egress_dispatch(Family::Ipv6));
        self.chains.insert(
            INPUT_CHAIN.into(),
            Chain {
                base: Some(BaseChain {
                    chain_type: ChainType::Filter,
                    hook: Hook::Input,
                    priority: FILTER_PRIORITY,
                    policy: ChainPolicy::Accept,
                }),
                rules: input,
            },
        );

        let ingress_dispatch = |family| Rule {
            matches: vec![],
            statements: vec![],
            verdict: Some(RuleVerdict::Vmap {
                fields: vec![Field::DstAddr(family)],
                map: dispatch_map_name(Direction::Ingress, family),
            }),
            comment: Some("ingress-isolated destination pod".into()),
        };
        self.chains.insert(
            INGRESS_DISPATCH_CHAIN.into(),
            Chain {
                base: None,
                rules: vec![
                    ingress_dispatch(Family::Ipv4),
                    ingress_dispatch(Family::Ipv6),
                    Rule::new(vec![], Verdict::Accept)
                        .with_comment("destination not isolated for ingress"),
                ],
            },
        );
    }

    /// The rules of one policy's chain for one direction.
    fn policy_rules(
        &mut self,
        direction: Direction,
        key: &ObjectKey,
        policy: &NetworkPolicy,
    ) -> Vec<Rule> {
        let mut rules = Vec::new();
        let sections: Vec<RuleSection<'_>> = match direction {
            Direction::Ingress => policy
                .spec
                .ingress
                .iter()
                .flatten()
                .map(|r| (r.from.as_deref(), r.ports.as_deref()))
                .collect(),
            Direction::Egress => policy
                .spec
                .egress
                .iter()
                .flatten()
                .map(|r| (r.to.as_deref(), r.ports.as_deref()))
                .collect(),
        };
        let verdict = match direction {
            Direction::Ingress => Verdict::Accept,
            Direction::Egress => Verdict::Goto(INGRESS_DISPATCH_CHAIN.into()),
        };
        // The far end's address: the source for ingress, the destination for egress.
        let peer_field = |f| match direction {
            Direction::Ingress => Field::SrcAddr(f),
            Direction::Egress => Field::DstAddr(f),
        };
        for (i, (peers, ports)) in sections.into_iter().enumerate() {
            let comment = format!("{key} {direction}[{i}]");
            let peers = peer_alternatives(&key.namespace, peers);
            let ports = port_alternatives(ports);
            let numeric_set = if ports.numeric.is_empty() {
                None
            } else {
                Some(self.set(SetSpec::Ports(ports.numeric.clone())))
            };
            let mut emit = |matches: Vec<Match>| {
                rules.push(Rule::new(matches, verdict.clone()).with_comment(comment.clone()));
            };
            for peer in &peers {
                // The peer's address match, per family (`None`: no match needed).
                let peer_matches: Vec<(Option<Family>, Vec<Match>)> = match peer {
                    PeerAlt::Any => vec![(None, vec![])],
                    PeerAlt::Pods(selection) => [Family::Ipv4, Family::Ipv6]
                        .into_iter()
                        .map(|f| {
                            let set = self.set(SetSpec::PodAddrs {
                                selection: selection.clone(),
                                family: f,
                            });
                            (
                                Some(f),
                                vec![Match::Lookup {
                                    fields: vec![peer_field(f)],
                                    set,
                                    negate: false,
                                }],
                            )
                        })
                        .collect(),
                    PeerAlt::Block(cidr, except) => {
                        let f = family_of_net(cidr);
                        let set = self.set(SetSpec::Block {
                            cidr: *cidr,
                            except: except.clone(),
                        });
                        vec![(
                            Some(f),
                            vec![Match::Lookup {
                                fields: vec![peer_field(f)],
                                set,
                                negate: false,
                            }],
                        )]
                    }
                };
                if ports.any {
                    for (_, m) in &peer_matches {
                        emit(m.clone());
                    }
                    continue;
                }
                if let Some(set) = &numeric_set {
                    for (_, m) in &peer_matches {
                        let mut m = m.clone();
                        m.push(Match::Lookup {
                            fields: vec![Field::L4Proto, Field::DstPort],
                            set: set.clone(),
                            negate: false,
                        });
                        emit(m);
                    }
                }
                if ports.named.is_empty() {
                    continue;
                }
                match direction {
                    // Named ports resolve on the destination: the policy's (local) targets.
                    Direction::Ingress => {
                        let targets =
                            PodSelection::targets(&key.namespace, &policy.spec.pod_selector);
                        for (pf, m) in &peer_matches {
                            for f in [Family::Ipv4, Family::Ipv6] {
                                if pf.is_some_and(|pf| pf != f) {
                                    continue;
                                }
                                let set = self.set(SetSpec::NamedPorts {
                                    selection: targets.clone(),
                                    local_only: true,
                                    ports: ports.named.clone(),
                                    family: f,
                                });
                                let mut m = m.clone();
                                m.push(Match::Lookup {
                                    fields: vec![Field::DstAddr(f), Field::L4Proto, Field::DstPort],
                                    set,
                                    negate: false,
                                });
                                emit(m);
                            }
                        }
                    }
                    // Egress: on the destination peer pod; the set holds only pods of the
                    // peer's selection, so it matches the peer too. An ipBlock names no pod
                    // whose ports could resolve: nothing.
                    Direction::Egress => {
                        let selection = match peer {
                            PeerAlt::Any => PodSelection::everything(),
                            PeerAlt::Pods(s) => s.clone(),
                            PeerAlt::Block(..) => continue,
                        };
                        for f in [Family::Ipv4, Family::Ipv6] {
                            let set = self.set(SetSpec::NamedPorts {
                                selection: selection.clone(),
                                local_only: false,
                                ports: ports.named.clone(),
                                family: f,
                            });
                            emit(vec![Match::Lookup {
                                fields: vec![Field::DstAddr(f), Field::L4Proto, Field::DstPort],
                                set,
                                negate: false,
                            }]);
                        }
                    }
                }
            }
        }
        rules
    }
}

fn peer_alternatives(policy_ns: &str, peers: Option<&[NetworkPolicyPeer]>) -> Vec<PeerAlt> {
    let peers = match peers.filter(|p| !p.is_empty()) {
        None => return vec![PeerAlt::Any],
        Some(p) => p,
    };
    let mut out = Vec::new();
    for peer in peers {
        if let Some(block) = &peer.ip_block {
            // An unparsable CIDR (validation rejects it) matches nothing.
            let Ok(cidr) = block.cidr.parse::<IpNet>() else {
                continue;
            };
            let mut except: Vec<IpNet> = block
                .except
                .iter()
                .flatten()
                .filter_map(|e| e.parse::<IpNet>().ok())
                .map(|e| e.trunc())
                .filter(|e| e.addr().is_ipv4() == cidr.addr().is_ipv4())
                .collect();
            except.sort();
            except.dedup();
            out.push(PeerAlt::Block(cidr.trunc(), except));
        } else if let Some(selection) = PodSelection::of_peer(policy_ns, peer) {
            out.push(PeerAlt::Pods(selection));
        }
    }
    out
}

fn port_alternatives(ports: Option<&[NetworkPolicyPort]>) -> PortAlts {
    let mut alts = PortAlts {
        any: false,
        numeric: Vec::new(),
        named: Vec::new(),
    };
    let ports = match ports.filter(|p| !p.is_empty()) {
        None => {
            alts.any = true;
            return alts;
        }
        Some(p) => p,
    };
    let mut by_proto: BTreeMap<Protocol, Vec<(u16, u16)>> = BTreeMap::new();
    for p in ports {
        let Some(proto) = Protocol::parse_api(p.protocol.as_deref()) else {
            continue;
        };
        match &p.port {
            None => by_proto.entry(proto).or_default().push((0, u16::MAX)),
            Some(IntOrString::Int(n)) => {
                let end = p.end_port.unwrap_or(*n);
                let lo = (*n).clamp(0, 65535) as u16;
                let hi = end.clamp(0, 65535) as u16;
                if *n <= end && end >= 0 && *n <= 65535 {
                    by_proto.entry(proto).or_default().push((lo, hi));
                }
            }
            Some(IntOrString::String(name)) => alts.named.push((name.clone(), proto)),
        }
    }
    for (proto, ranges) in by_proto {
        for (a, b) in merge_port_ranges(ranges) {
            alts.numeric.push((proto, a, b));
        }
    }
    alts.named.sort();
    alts.named.dedup();
    alts
}

/// What a chain of a compiled ruleset is for, for logs and explanations.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum ChainRole {
    /// `forward`, `input`, `ingress-dispatch`.
    Base,
    /// The class chain of pods isolated by `policies`; `addresses` are those pods' addresses
    /// on this node (from the dispatch maps).
    Class {
        direction: Direction,
        policies: Vec<ObjectKey>,
        addresses: Vec<IpAddr>,
    },
    /// The chain of one policy's rules for one direction.
    Policy {
        direction: Direction,
        policy: ObjectKey,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChainDescription {
    pub chain: String,
    pub role: ChainRole,
}

/// Map a chain name (e.g. from an NFLOG prefix `palisade drop ingress in-…`, see
/// [`parse_log_prefix`]) back to the policies and pods it stands for, using the ruleset that
/// produced it (the names are hashes).
pub fn describe_chain(ruleset: &Ruleset, chain: &str) -> Option<ChainDescription> {
    let c = ruleset.chains.get(chain)?;
    let role = if c.base.is_some() || chain == INGRESS_DISPATCH_CHAIN {
        ChainRole::Base
    } else if let Some(rest) = chain.strip_prefix("p") {
        let direction = match rest.as_bytes().first() {
            Some(b'i') => Direction::Ingress,
            Some(b'e') => Direction::Egress,
            _ => return None,
        };
        // The class chains that jump here carry the policy's name as the jump's comment.
        let policy = ruleset
            .chains
            .values()
            .flat_map(|c| &c.rules)
            .find(|r| r.verdict == Some(RuleVerdict::Verdict(Verdict::Jump(chain.to_string()))))
            .and_then(|r| r.comment.as_deref())
            .and_then(parse_object_key)?;
        ChainRole::Policy { direction, policy }
    } else {
        let direction = if chain.starts_with("in-") {
            Direction::Ingress
        } else if chain.starts_with("eg-") {
            Direction::Egress
        } else {
            return None;
        };
        let policies = c
            .rules
            .iter()
            .filter(|r| matches!(r.verdict, Some(RuleVerdict::Verdict(Verdict::Jump(_)))))
            .filter_map(|r| r.comment.as_deref().and_then(parse_object_key))
            .collect();
        let target = Verdict::Jump(chain.to_string());
        let addresses = ruleset
            .maps
            .values()
            .flat_map(|m| &m.elements)
            .filter(|(_, v)| **v == target)
            .filter_map(|(k, _)| match k.first() {
                Some(Value::Addr(ip)) => Some(*ip),
                _ => None,
            })
            .collect();
        ChainRole::Class {
            direction,
            policies,
            addresses,
        }
    };
    Some(ChainDescription {
        chain: chain.to_string(),
        role,
    })
}

/// Parse an NFLOG prefix written by the compiled ruleset: `palisade drop <direction> <chain>`.
pub fn parse_log_prefix(prefix: &str) -> Option<(Direction, String)> {
    let rest = prefix.trim_end().strip_prefix(LOG_PREFIX)?.trim_start();
    let (direction, chain) = rest.split_once(' ')?;
    let direction = match direction {
        "ingress" => Direction::Ingress,
        "egress" => Direction::Egress,
        _ => return None,
    };
    Some((direction, chain.trim().to_string()))
}

/// `ns/name` (a rule comment may continue after a space: `ns/name ingress[0]`).
pub fn parse_object_key(s: &str) -> Option<ObjectKey> {
    let first = s.split(' ').next()?;
    let (ns, name) = first.split_once('/')?;
    Some(ObjectKey::new(ns, name))
}

/// Parse a policy rule's comment `ns/name ingress[3]` into its parts.
pub fn parse_rule_comment(s: &str) -> Option<crate::eval::reference::RuleRef> {
    let (key, rest) = s.split_once(' ')?;
    let policy = parse_object_key(key)?;
    let (dir, idx) = rest.strip_suffix(']')?.split_once('[')?;
    let direction = match dir {
        "ingress" => Direction::Ingress,
        "egress" => Direction::Egress,
        _ => return None,
    };
    Some(crate::eval::reference::RuleRef {
        policy,
        direction,
        index: idx.parse().ok()?,
    })
}
