//! The compiler proper: which chains, maps and sets the current state needs (the
//! "structure"), built from the normalized policies ([`crate::model::policy`]), and when each
//! set's elements must be re-materialised.

use super::intervals::merge_port_ranges;
use super::names::{
    class_chain_name, dispatch_map_name, first_stage, log_prefix, policy_chain_name, rule_comment,
    stage_chain, FILTER_PRIORITY, FORWARD_CHAIN, INPUT_CHAIN,
};
use super::sets::{addr_key, family_of_net, Fast, Memberships, SetSpec};
use super::{enforced, CompileOptions, StateIndex};
use crate::model::policy::{Action, Direction, Peer, Policy, PolicyRef, PortMatch, RuleRef, Tier};
use crate::model::selector::PodSelection;
use crate::model::{ClusterState, ObjectKey, PodInfo, Protocol};
use crate::ruleset::{
    BaseChain, Chain, ChainPolicy, ChainType, CmpOp, CtState, Family, Field, Hook, Match, Rule,
    RuleVerdict, Ruleset, Statement, Touched, Value, Verdict, VerdictMap,
};
use palisade_common::HOST_VETH_PREFIX;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

/// NFLOG rate limit per logging rule, so a flood of denied packets cannot flood the agent.
pub const LOG_RATE_PER_SECOND: u32 = 10;

/// Caches kept between compiles by [`super::Compiler`]; a fresh one for a full compile.
#[derive(Debug, Default)]
pub(crate) struct Cache {
    pub memberships: Memberships,
    /// Node labels or addresses changed since the node sets were last materialised.
    node_sets_stale: bool,
    /// The sets of the current structure, by name.
    specs: HashMap<String, SetSpec, Fast>,
    /// Per-policy chains as last built, reused while the policy is unchanged (they depend on
    /// nothing else: the sets they use are named by what they stand for).
    policy_chains: HashMap<(Direction, PolicyRef), CachedPolicyChain, Fast>,
    /// [`policy_chain_name`] of the policies in use (a hash of a JSON text: worth keeping).
    chain_names: HashMap<(Direction, PolicyRef), String, Fast>,
    /// Per local pod, the policies that select it: a local pod change recomputes its own
    /// entry only (every ClusterNetworkPolicy is a candidate for every pod). Dropped for a pod
    /// that changes, for the pods of a namespace whose labels change, and entirely when a
    /// policy changes.
    selecting: HashMap<ObjectKey, Selecting, Fast>,
}

#[derive(Debug, Clone)]
struct CachedPolicyChain {
    /// What the chain was built from (debug builds check a hit against it).
    policy: Policy,
    rules: Vec<Rule>,
    /// The sets the rules use, each once.
    sets: Vec<(String, SetSpec)>,
}

impl Cache {
    /// A policy changed or went away: its cached chains are no longer current, and which
    /// policies select which pod may have changed.
    pub fn forget_policy(&mut self, policy: &PolicyRef) {
        for direction in Direction::BOTH {
            self.policy_chains.remove(&(direction, policy.clone()));
        }
        self.selecting.clear();
    }

    /// A pod changed or went away: the policies selecting it must be found again.
    pub fn forget_pod(&mut self, pod: &ObjectKey) {
        self.selecting.remove(pod);
    }

    /// A namespace's labels changed: so may the policies selecting its pods.
    pub fn forget_namespace(&mut self, namespace: &str) {
        self.selecting.retain(|k, _| k.namespace != namespace);
    }

    /// A node was added, changed or removed: the node address sets follow.
    pub fn nodes_changed(&mut self) {
        self.node_sets_stale = true;
    }

    fn stale(&self, spec: &SetSpec) -> bool {
        spec.selection().is_some_and(|s| {
            !self.memberships.dirty.is_empty() && self.memberships.dirty.contains(s)
        }) || (self.node_sets_stale && spec.follows_nodes())
    }

    /// Only set elements may have changed: re-materialise the sets of dirty selections (and
    /// the node sets after a node change); update those of selections with pending pod
    /// changes by those pods' elements.
    pub fn refresh_sets(
        &mut self,
        state: &ClusterState,
        index: &StateIndex,
        opts: &CompileOptions,
        out: &mut Ruleset,
        touched: &mut Touched,
    ) {
        if self.memberships.dirty.is_empty()
            && self.memberships.pending.is_empty()
            && !self.node_sets_stale
        {
            return;
        }
        for (name, spec) in &self.specs {
            if self.stale(spec) {
                let set = self.memberships.materialise(state, index, opts, spec);
                touched.set(name);
                out.sets.insert(name.clone(), set);
            } else if self.pending(spec) {
                if let Some(set) = out.sets.get_mut(name) {
                    let delta = touched.set_elements(name);
                    self.memberships
                        .update(state, index, opts, spec, set, delta);
                }
            }
        }
        self.memberships.dirty.clear();
        self.memberships.pending.clear();
        self.node_sets_stale = false;
    }

    /// The set of `spec` changed by the elements of some pods only.
    fn pending(&self, spec: &SetSpec) -> bool {
        spec.selection()
            .is_some_and(|s| self.memberships.has_pending(s))
    }

    /// Compute the whole structure, reusing (moving) the sets of `previous` that are still
    /// exact: a set's name is a hash of what it stands for, so an equal name is an equal spec,
    /// and only its elements can be stale (a dirty selection, nodes, or local pods).
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
            index,
            opts,
            specs: HashMap::default(),
            chains: BTreeMap::new(),
            recording: None,
            policy_cache: std::mem::take(&mut self.policy_chains),
            chain_names: std::mem::take(&mut self.chain_names),
            selecting: std::mem::take(&mut self.selecting),
            used_policies: HashSet::default(),
            previous_chains: std::mem::take(&mut previous.chains),
            reused: HashSet::default(),
        };
        let maps = b.dispatch();
        b.base_chains();
        let Builder {
            specs,
            chains,
            mut policy_cache,
            mut chain_names,
            mut selecting,
            used_policies,
            previous_chains,
            reused,
            ..
        } = b;
        selecting.retain(|k, _| index.local_pods.contains(k));
        self.selecting = selecting;
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
            let stale = matches!(spec, SetSpec::LocalPods(_)) || self.stale(spec);
            let set = match previous.sets.remove(name) {
                Some(mut set) if !stale => {
                    if self.pending(spec) {
                        let delta = touched.set_elements(name);
                        self.memberships
                            .update(state, index, opts, spec, &mut set, delta);
                    }
                    set
                }
                _ => {
                    touched.set(name);
                    self.memberships.materialise(state, index, opts, spec)
                }
            };
            sets.insert(name.clone(), set);
        }
        // Element changes recorded for a set that went since are no change to tell.
        touched.elements.retain(|name, _| sets.contains_key(name));
        let used: HashSet<&PodSelection, Fast> =
            specs.values().filter_map(SetSpec::selection).collect();
        self.memberships.retain_used(&used);
        self.node_sets_stale = false;
        self.specs = specs;
        Ruleset { chains, sets, maps }
    }
}

/// Builds chains and maps for one compile, collecting the sets they reference.
struct Builder<'a> {
    state: &'a ClusterState,
    index: &'a StateIndex,
    opts: &'a CompileOptions,
    specs: HashMap<String, SetSpec, Fast>,
    chains: BTreeMap<String, Chain>,
    /// While building one policy's chain: the sets it uses, for the cache.
    recording: Option<Vec<(String, SetSpec)>>,
    policy_cache: HashMap<(Direction, PolicyRef), CachedPolicyChain, Fast>,
    chain_names: HashMap<(Direction, PolicyRef), String, Fast>,
    selecting: HashMap<ObjectKey, Selecting, Fast>,
    used_policies: HashSet<(Direction, PolicyRef), Fast>,
    /// The chains of the previous output, reused for policy chains served from the cache.
    previous_chains: BTreeMap<String, Chain>,
    /// Chains moved unchanged from the previous output.
    reused: HashSet<String, Fast>,
}

/// The ports of one rule, in the shape the sets take.
struct PortAlts {
    /// No ports: everything.
    any: bool,
    numeric: Vec<(Protocol, u16, u16)>,
    named: Vec<(String, Protocol)>,
}

fn port_alternatives(ports: Option<&[PortMatch]>) -> PortAlts {
    let Some(ports) = ports else {
        return PortAlts {
            any: true,
            numeric: Vec::new(),
            named: Vec::new(),
        };
    };
    let mut by_proto: BTreeMap<Protocol, Vec<(u16, u16)>> = BTreeMap::new();
    let mut named = Vec::new();
    for p in ports {
        match p {
            PortMatch::Ports {
                protocol,
                first,
                last,
            } => by_proto.entry(*protocol).or_default().push((*first, *last)),
            PortMatch::Named { name, protocol } => named.push((name.clone(), *protocol)),
        }
    }
    let mut numeric = Vec::new();
    for (proto, ranges) in by_proto {
        for (a, b) in merge_port_ranges(ranges) {
            numeric.push((proto, a, b));
        }
    }
    named.sort();
    named.dedup();
    PortAlts {
        any: false,
        numeric,
        named,
    }
}

/// The pods of this node a tier's policies select in one direction, per tier, in evaluation
/// order.
type Selecting = [[Vec<PolicyRef>; 3]; 2];

fn tier_slot(tier: Tier) -> usize {
    match tier {
        Tier::Admin => 0,
        Tier::NetworkPolicy => 1,
        Tier::Baseline => 2,
    }
}

fn direction_slot(direction: Direction) -> usize {
    match direction {
        Direction::Ingress => 0,
        Direction::Egress => 1,
    }
}

impl Builder<'_> {
    /// [`policy_chain_name`], remembered across compiles.
    fn policy_chain(&mut self, direction: Direction, policy: &PolicyRef) -> String {
        self.chain_names
            .entry((direction, policy.clone()))
            .or_insert_with(|| policy_chain_name(direction, policy))
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

    /// A policy's chain rules, from the cache when the policy is unchanged.
    fn cached_policy_rules(
        &mut self,
        direction: Direction,
        name: &str,
        policy: &Policy,
    ) -> Vec<Rule> {
        let cache_key = (direction, policy.id.clone());
        self.used_policies.insert(cache_key.clone());
        // An entry is dropped whenever its policy changes ([`Cache::forget_policy`]), so a
        // hit is current; debug builds (every test) check that.
        if let Some(cached) = self.policy_cache.get(&cache_key) {
            debug_assert!(
                cached.policy == *policy,
                "stale policy chain cache: {}",
                policy.id
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
                    debug_assert!(
                        chain.rules == cached.rules,
                        "previous chain of {}",
                        policy.id
                    );
                    self.reused.insert(name.to_string());
                    chain.rules
                }
                None => cached.rules.clone(),
            };
        }
        self.recording = Some(Vec::new());
        let rules = self.policy_rules(direction, name, policy);
        let mut sets = self.recording.take().unwrap_or_default();
        sets.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        sets.dedup_by(|a, b| a.0 == b.0);
        self.policy_cache.insert(
            cache_key,
            CachedPolicyChain {
                policy: policy.clone(),
                rules: rules.clone(),
                sets,
            },
        );
        rules
    }

    /// The policies of every tier that select a local pod, per direction and tier, in
    /// evaluation order.
    fn find_selecting(&self, pod: &PodInfo) -> Selecting {
        let index = self.index;
        let ns = pod.key.namespace.as_str();
        let ns_labels = self.state.namespaces.get(ns);
        let mut out: Selecting = Default::default();
        let candidates = index
            .policies_by_ns
            .get(ns)
            .into_iter()
            .flatten()
            .chain(&index.cluster_policies);
        for id in candidates {
            let policy = &index.policies[id];
            if !policy.subject.matches(ns, ns_labels, &pod.labels) {
                continue;
            }
            for direction in Direction::BOTH {
                if policy.rules(direction).is_some() {
                    out[direction_slot(direction)][tier_slot(policy.tier)].push(id.clone());
                }
            }
        }
        for per_direction in &mut out {
            for list in per_direction.iter_mut() {
                list.sort_by(|a, b| index.policies[a].order().cmp(&index.policies[b].order()));
            }
        }
        out
    }

    /// Class chains, policy chains and the dispatch maps for the enforced pods of this node.
    fn dispatch(&mut self) -> BTreeMap<String, VerdictMap> {
        let mut maps = BTreeMap::new();
        for direction in Direction::BOTH {
            for tier in Tier::ALL {
                for family in [Family::Ipv4, Family::Ipv6] {
                    maps.insert(
                        dispatch_map_name(direction, tier, family),
                        VerdictMap {
                            key: vec![addr_key(family)],
                            interval: false,
                            elements: BTreeMap::new(),
                            comment: Some(format!(
                                "pods of this node that {tier} policies select for {direction}: address → their class chain"
                            )),
                        },
                    );
                }
            }
        }
        // Per direction and tier: the distinct lists of policies selecting local pods, and
        // their class chains.
        let mut classes: [[HashMap<Vec<PolicyRef>, String, Fast>; 3]; 2] = Default::default();
        let state = self.state;
        for key in &self.index.local_pods {
            let pod = &state.pods[key];
            if !enforced(pod) {
                continue;
            }
            let selecting = match self.selecting.remove(key) {
                Some(cached) => cached,
                None => self.find_selecting(pod),
            };
            for direction in Direction::BOTH {
                for tier in Tier::ALL {
                    let policies = &selecting[direction_slot(direction)][tier_slot(tier)];
                    if policies.is_empty() {
                        continue;
                    }
                    let known = &mut classes[direction_slot(direction)][tier_slot(tier)];
                    let chain = match known.get(policies.as_slice()) {
                        Some(chain) => chain.clone(),
                        None => {
                            let chain = class_chain_name(direction, tier, policies);
                            known.insert(policies.clone(), chain.clone());
                            chain
                        }
                    };
                    for ip in &pod.ips {
                        maps.get_mut(&dispatch_map_name(direction, tier, Family::of(ip)))
                            .expect("dispatch map")
                            .elements
                            .insert(vec![Value::Addr(*ip)], Verdict::Jump(chain.clone()));
                    }
                }
            }
            self.selecting.insert(key.clone(), selecting);
        }
        let mut policy_chains: BTreeSet<(Direction, PolicyRef)> = BTreeSet::new();
        for direction in Direction::BOTH {
            for tier in Tier::ALL {
                let tier_classes =
                    std::mem::take(&mut classes[direction_slot(direction)][tier_slot(tier)]);
                for (policies, chain) in tier_classes {
                    let rules = self.class_rules(direction, tier, &chain, &policies);
                    policy_chains.extend(policies.into_iter().map(|p| (direction, p)));
                    self.chains.insert(chain, Chain { base: None, rules });
                }
            }
        }
        for (direction, id) in policy_chains {
            let policy = &self.index.policies[&id];
            let name = self.policy_chain(direction, &id);
            let rules = self.cached_policy_rules(direction, &name, policy);
            self.chains.insert(name, Chain { base: None, rules });
        }
        maps
    }

    /// The rules of a class chain: a jump to the chain of each policy, in evaluation order.
    /// Admin and Baseline class chains fall off the end when no rule matched: the stage
    /// chain goes on with the next tier. A NetworkPolicy class is final: what no rule of its
    /// policies allows is denied.
    fn class_rules(
        &mut self,
        direction: Direction,
        tier: Tier,
        chain: &str,
        policies: &[PolicyRef],
    ) -> Vec<Rule> {
        let mut rules: Vec<Rule> = Vec::with_capacity(policies.len() + 2);
        for p in policies {
            rules.push(
                Rule::new(vec![], Verdict::Jump(self.policy_chain(direction, p)))
                    .with_comment(p.to_string()),
            );
        }
        if tier == Tier::NetworkPolicy {
            if let Some(group) = self.opts.nflog_group {
                rules.push(log_rule(vec![], group, log_prefix(direction, chain, None)));
            }
            // Counted, so that `palisadectl explain --agent` can show how many packets this
            // default deny dropped.
            let mut drop = Rule::new(vec![], Verdict::Drop).with_comment(format!(
                "{direction} denied: no rule of these policies allows it"
            ));
            drop.statements.push(Statement::Counter);
            rules.push(drop);
        }
        rules
    }

    /// `forward`, `input` and the stage chains: for each direction (egress first, then
    /// ingress) Admin → NetworkPolicy → Baseline, each dispatching by address to the pod's
    /// class chain of that tier.
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
        forward.push(
            Rule::new(vec![], Verdict::Goto(first_stage(Direction::Egress).into()))
                .with_comment("the source's egress, then the destination's ingress"),
        );
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
        // A pod talking to its own node: egress policy applies (the node's address has no
        // ingress class, so the ingress stages accept).
        input.push(
            Rule::new(vec![], Verdict::Goto(first_stage(Direction::Egress).into()))
                .with_comment("a pod to its node: its egress"),
        );
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

        for direction in Direction::BOTH {
            for (i, tier) in Tier::ALL.into_iter().enumerate() {
                let mut rules: Vec<Rule> = [Family::Ipv4, Family::Ipv6]
                    .into_iter()
                    .map(|family| Rule {
                        matches: vec![],
                        statements: vec![],
                        verdict: Some(RuleVerdict::Vmap {
                            fields: vec![far_side(direction, family, false)],
                            map: dispatch_map_name(direction, tier, family),
                        }),
                        comment: Some(format!("{direction}: pods {tier} policies select")),
                    })
                    .collect();
                rules.push(match Tier::ALL.get(i + 1) {
                    Some(next) => {
                        Rule::new(vec![], Verdict::Goto(stage_chain(direction, *next).into()))
                            .with_comment(format!("{direction}: on to the {next} tier"))
                    }
                    None => tier_done(direction)
                        .with_comment(format!("{direction}: no policy decided: allowed")),
                });
                self.chains.insert(
                    stage_chain(direction, tier).into(),
                    Chain { base: None, rules },
                );
            }
        }
    }

    /// The rules of one policy's chain for one direction: each policy rule, in written
    /// order, becomes one nft rule per alternative (peer kind × family × port form), all with
    /// the rule's verdict, so the first match of the policy decides as the API says.
    fn policy_rules(&mut self, direction: Direction, chain: &str, policy: &Policy) -> Vec<Rule> {
        let mut out = Vec::new();
        for (i, rule) in policy
            .rules(direction)
            .unwrap_or_default()
            .iter()
            .enumerate()
        {
            let rule_ref = RuleRef {
                policy: policy.id.clone(),
                direction,
                index: i,
            };
            let comment = rule_comment(
                &rule_ref,
                (policy.tier != Tier::NetworkPolicy).then_some(rule.action),
            );
            let verdict = action_verdict(direction, policy.tier, rule.action);
            let log = match (rule.action, self.opts.nflog_group) {
                (Action::Deny, Some(group)) => {
                    Some(log_prefix(direction, chain, Some(i))).map(|prefix| (group, prefix))
                }
                _ => None,
            };
            for matches in self.rule_alternatives(direction, policy, rule) {
                if let Some((group, prefix)) = &log {
                    // A rule of its own: a rate limit that is exceeded ends the rule, and
                    // must not skip the drop.
                    out.push(log_rule(matches.clone(), *group, prefix.clone()));
                }
                let mut r = Rule::new(matches, verdict.clone()).with_comment(comment.clone());
                if rule.action == Action::Deny {
                    r.statements.push(Statement::Counter);
                }
                out.push(r);
            }
        }
        out
    }

    /// The far end's address looked up in the set `spec` stands for, per family.
    fn peer_lookups(
        &mut self,
        direction: Direction,
        families: &[Family],
        spec: impl Fn(Family) -> SetSpec,
    ) -> Vec<(Option<Family>, Vec<Match>)> {
        families
            .iter()
            .map(|&f| {
                let set = self.set(spec(f));
                (Some(f), vec![lookup(far_side(direction, f, true), set)])
            })
            .collect()
    }

    /// The match lists of one rule: the packet matches the rule iff it matches one of them.
    fn rule_alternatives(
        &mut self,
        direction: Direction,
        policy: &Policy,
        rule: &crate::model::policy::Rule,
    ) -> Vec<Vec<Match>> {
        let mut out = Vec::new();
        let ports = port_alternatives(rule.ports.as_deref());
        let numeric_set =
            (!ports.numeric.is_empty()).then(|| self.set(SetSpec::Ports(ports.numeric.clone())));
        let any_peer = [None];
        let peers: Vec<Option<&Peer>> = match &rule.peers {
            None => any_peer.to_vec(),
            Some(peers) => peers.iter().map(Some).collect(),
        };
        for peer in peers {
            // The peer's address match, per family (`None`: no match needed).
            let both = [Family::Ipv4, Family::Ipv6];
            let peer_matches: Vec<(Option<Family>, Vec<Match>)> = match peer {
                None => vec![(None, vec![])],
                Some(Peer::Pods(selection)) => {
                    self.peer_lookups(direction, &both, |family| SetSpec::PodAddrs {
                        selection: selection.clone(),
                        family,
                    })
                }
                Some(Peer::Network { cidr, except }) => {
                    self.peer_lookups(direction, &[family_of_net(cidr)], |_| SetSpec::Block {
                        cidr: *cidr,
                        except: except.clone(),
                    })
                }
                Some(Peer::Nodes(selector)) => {
                    self.peer_lookups(direction, &both, |family| SetSpec::NodeAddrs {
                        selector: selector.clone(),
                        family,
                    })
                }
            };
            if ports.any {
                out.extend(peer_matches.into_iter().map(|(_, m)| m));
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
                    out.push(m);
                }
            }
            if ports.named.is_empty() {
                continue;
            }
            // A named port is a port of the destination pod. Ingress: the subject pod itself
            // (resolved on the policy's local subjects). Egress: the pod at the destination
            // address, whichever peer matched it.
            let (selection, local_only, with_peer) = match (direction, peer) {
                (Direction::Ingress, _) => (policy.subject.clone(), true, true),
                // The set holds only pods of the peer's selection: it matches the peer too.
                (Direction::Egress, Some(Peer::Pods(s))) => (s.clone(), false, false),
                (Direction::Egress, None) => (PodSelection::everything(), false, false),
                // An address block: the named port of any pod inside it.
                (Direction::Egress, Some(Peer::Network { .. })) => {
                    (PodSelection::everything(), false, true)
                }
                // Node addresses are no pods' (host-network pods are not policy pods).
                (Direction::Egress, Some(Peer::Nodes(_))) => continue,
            };
            let alternatives = if with_peer {
                peer_matches
            } else {
                vec![(None, vec![])]
            };
            for (pf, m) in alternatives {
                for f in [Family::Ipv4, Family::Ipv6] {
                    if pf.is_some_and(|pf| pf != f) {
                        continue;
                    }
                    let set = self.set(SetSpec::NamedPorts {
                        selection: selection.clone(),
                        local_only,
                        ports: ports.named.clone(),
                        family: f,
                    });
                    let mut m = m.clone();
                    m.push(Match::Lookup {
                        fields: vec![Field::DstAddr(f), Field::L4Proto, Field::DstPort],
                        set,
                        negate: false,
                    });
                    out.push(m);
                }
            }
        }
        out
    }
}

/// The address of the pod the stage dispatches on (`far == false`: the subject, the source
/// for egress and the destination for ingress), or of the far end of a rule (`far == true`).
fn far_side(direction: Direction, family: Family, far: bool) -> Field {
    match (direction, far) {
        (Direction::Egress, false) | (Direction::Ingress, true) => Field::SrcAddr(family),
        (Direction::Egress, true) | (Direction::Ingress, false) => Field::DstAddr(family),
    }
}

fn lookup(field: Field, set: String) -> Match {
    Match::Lookup {
        fields: vec![field],
        set,
        negate: false,
    }
}

/// A direction is allowed: egress goes on to the destination's ingress evaluation, ingress
/// accepts.
fn tier_done(direction: Direction) -> Rule {
    match direction {
        Direction::Egress => Rule::new(
            vec![],
            Verdict::Goto(first_stage(Direction::Ingress).into()),
        ),
        Direction::Ingress => Rule::new(vec![], Verdict::Accept),
    }
}

/// What a matching rule of a policy in `tier` does.
fn action_verdict(direction: Direction, tier: Tier, action: Action) -> Verdict {
    let allowed = || tier_done(direction).verdict;
    let verdict = match action {
        Action::Accept | Action::Allow => allowed(),
        Action::Deny => return Verdict::Drop,
        // Skip the rest of the tier: the next tier's stage (after Baseline: the default,
        // allowed). Safe as a `goto` from a jumped-to chain because every stage path ends in
        // a verdict, so nothing ever returns into the class chain left behind.
        Action::Pass => match tier {
            Tier::Admin => Some(RuleVerdict::Verdict(Verdict::Goto(
                stage_chain(direction, Tier::NetworkPolicy).into(),
            ))),
            _ => allowed(),
        },
    };
    match verdict {
        Some(RuleVerdict::Verdict(v)) => v,
        _ => unreachable!("tier_done ends in a plain verdict"),
    }
}

fn log_rule(matches: Vec<Match>, group: u16, prefix: String) -> Rule {
    Rule {
        matches,
        statements: vec![Statement::Log {
            group,
            prefix,
            rate_per_second: Some(LOG_RATE_PER_SECOND),
        }],
        verdict: None,
        comment: Some("log denied".into()),
    }
}
