//! The flat compiled form: the plans of [`super::decide`] as
//! chains, verdict maps and one set.
//!
//! ```text
//! chain egress         ip saddr vmap @egress4; ip6 saddr vmap @egress6      local pod → goto egress-peers
//!                      goto ingress                                          (selected by nothing)
//! chain egress-peers   ip daddr vmap @egress-peer4 (exact)  ip daddr vmap @egress-net4 (interval)
//!                      goto eg-<world class>                                 peer address → its class chain
//! chain eg-<class>     ip saddr . meta l4proto . th dport vmap @eg-<class>-p4   (interval)
//!                      meta l4proto @l4ports goto egress-default
//!                      ip saddr vmap @eg-<class>-n4                             (protocols without ports)
//!                      goto egress-default
//! chain egress-default ip saddr vmap @egress-default4                        isolated pods → eg-iso-...
//!                      goto ingress
//! chain eg-ok-<rule>   goto ingress   comment "ns/name egress[0]"             allowed by that rule
//! chain eg-deny-<rule> log; counter drop comment "ClusterNetworkPolicy/x egress[1] Deny"
//! chain eg-iso-<pols>  log; counter drop; then (never reached) one rule naming each policy
//! ... and the same for ingress (`ip daddr` for the pod, `ip saddr` for the peer; allowed:
//! accept).
//! ```
//!
//! A new connection costs, per direction, the dispatch lookup and, for a pod some policy
//! selects, the peer lookups (exact, then interval), the class's verdict lookup and, when that
//! misses, the pod's default: a fixed number whatever the number of policies.

use super::decide::{self, DirectionPlan, Outcome, PORT_PROTOCOLS};
use super::names::{
    dispatch_map_name, fam, hash_of, log_prefix, rule_comment, FILTER_PRIORITY, FORWARD_CHAIN,
    INPUT_CHAIN,
};
use super::{CompileOptions, PodsByLabels, StateIndex};
use crate::model::policy::{Action, Direction};
use crate::model::{ClusterState, Protocol};
use crate::ruleset::{
    BaseChain, Chain, ChainPolicy, ChainType, CmpOp, CtState, Family, Field, Hook, KeyType, Match,
    Rule, RuleVerdict, Ruleset, Set, Statement, Touched, Value, Verdict, VerdictMap,
};
use palisade_common::HOST_VETH_PREFIX;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;

/// The set of protocols with ports: their packets are decided by the port maps only.
pub const PORT_PROTOCOL_SET: &str = "l4ports";

use super::names::{
    allow_chain_name, default_chain, deny_chain_name, first_stage as stage, isolation_chain_name,
    peers_chain, short,
};

/// The address of the local pod (`far == false`) or of the peer, per direction.
fn side(direction: Direction, family: Family, far: bool) -> Field {
    match (direction, far) {
        (Direction::Egress, false) | (Direction::Ingress, true) => Field::SrcAddr(family),
        (Direction::Egress, true) | (Direction::Ingress, false) => Field::DstAddr(family),
    }
}

/// What an allowed direction does: egress goes on to the destination's ingress, ingress
/// accepts.
fn allowed(direction: Direction) -> Verdict {
    match direction {
        Direction::Egress => Verdict::Goto(stage(Direction::Ingress).into()),
        Direction::Ingress => Verdict::Accept,
    }
}

fn vmap_rule(fields: Vec<Field>, map: String, comment: &str) -> Rule {
    Rule {
        matches: vec![],
        statements: vec![],
        verdict: Some(RuleVerdict::Vmap { fields, map }),
        comment: Some(comment.to_string()),
    }
}

fn log_rule(group: u16, prefix: String) -> Rule {
    Rule {
        matches: vec![],
        statements: vec![Statement::Log {
            group,
            prefix,
            rate_per_second: Some(LOG_RATE_PER_SECOND),
        }],
        verdict: None,
        comment: Some("log denied".into()),
    }
}

fn map(key: Vec<KeyType>, interval: bool, comment: String) -> VerdictMap {
    VerdictMap {
        key,
        interval,
        elements: BTreeMap::new(),
        comment: Some(comment),
    }
}

/// NFLOG rate limit per logging rule, so a flood of denied packets cannot flood the agent.
pub const LOG_RATE_PER_SECOND: u32 = 10;

fn addr_key(f: Family) -> KeyType {
    match f {
        Family::Ipv4 => KeyType::Ipv4Addr,
        Family::Ipv6 => KeyType::Ipv6Addr,
    }
}

/// Receives one map element (the output, the map, the key, the verdict).
type Emit<'a> = dyn FnMut(&mut Ruleset, String, Vec<Value>, Verdict) + 'a;

/// What the incremental paths read: cluster state, its index and the options.
pub(crate) struct Inputs<'a> {
    pub state: &'a ClusterState,
    pub index: &'a StateIndex,
    pub opts: &'a CompileOptions,
}

/// Builds the policy part of the ruleset from the two direction plans.
struct Emitter<'a> {
    opts: &'a CompileOptions,
    out: Ruleset,
}

impl Emitter<'_> {
    /// The chain an outcome jumps to (made on first use).
    fn outcome_chain(&mut self, direction: Direction, outcome: &Outcome) -> Verdict {
        let (name, rules) = match outcome {
            Outcome::Allow(None) => return allowed(direction),
            Outcome::Allow(Some(rule)) => {
                let action = self.action_word(rule);
                let name = allow_chain_name(rule);
                let r =
                    Rule::new(vec![], allowed(direction)).with_comment(rule_comment(rule, action));
                (name, vec![r])
            }
            Outcome::Deny(rule) => {
                let name = deny_chain_name(rule);
                let mut rules = Vec::new();
                if let Some(group) = self.opts.nflog_group {
                    rules.push(log_rule(group, log_prefix(direction, &name, None)));
                }
                let mut drop = Rule::new(vec![], Verdict::Drop)
                    .with_comment(rule_comment(rule, Some(Action::Deny)));
                drop.statements.push(Statement::Counter);
                rules.push(drop);
                (name, rules)
            }
            Outcome::Isolated(policies) => {
                let name = isolation_chain_name(direction, policies);
                let mut rules = Vec::new();
                if let Some(group) = self.opts.nflog_group {
                    rules.push(log_rule(group, log_prefix(direction, &name, None)));
                }
                let mut drop = Rule::new(vec![], Verdict::Drop).with_comment(format!(
                    "{direction} denied: no rule of these policies allows it"
                ));
                drop.statements.push(Statement::Counter);
                rules.push(drop);
                // Never reached (after the drop): the policies that isolate, for people and
                // for `describe_chain`.
                for p in policies {
                    rules.push(Rule {
                        matches: vec![],
                        statements: vec![Statement::Counter],
                        verdict: None,
                        comment: Some(p.to_string()),
                    });
                }
                (name, rules)
            }
        };
        self.out
            .chains
            .entry(name.clone())
            .or_insert(Chain { base: None, rules });
        Verdict::Goto(name)
    }

    fn action_word(&self, rule: &crate::model::policy::RuleRef) -> Option<Action> {
        match rule.policy.kind {
            crate::model::policy::PolicyKind::NetworkPolicy => None,
            crate::model::policy::PolicyKind::ClusterNetworkPolicy => Some(Action::Accept),
        }
    }

    fn direction(&mut self, state: &ClusterState, direction: Direction, plan: &DirectionPlan) {
        let families = [Family::Ipv4, Family::Ipv6];
        // Dispatch: local pods some policy selects → the peer chain.
        let stage_rules: Vec<Rule> = families
            .iter()
            .map(|&f| {
                vmap_rule(
                    vec![side(direction, f, false)],
                    dispatch_map_name(direction, f),
                    &format!("{direction}: pods some policy selects"),
                )
            })
            .chain([Rule::new(vec![], allowed(direction))
                .with_comment(format!("{direction}: selected by no policy: allowed"))])
            .collect();
        self.out.chains.insert(
            stage(direction).into(),
            Chain {
                base: None,
                rules: stage_rules,
            },
        );
        for f in families {
            let m = map(
                vec![addr_key(f)],
                false,
                format!("pods of this node that some policy selects for {direction}"),
            );
            self.out.maps.insert(dispatch_map_name(direction, f), m);
        }
        // Class chains.
        let class_names: Vec<String> = (0..plan.classes.len())
            .map(|c| class_chain(plan, c))
            .collect();
        // Peers: exact addresses, then address ranges, then the world class.
        let mut peer_rules = Vec::new();
        for f in families {
            let mut exact = map(
                vec![addr_key(f)],
                false,
                format!("{direction} peers: pod and node addresses → their class"),
            );
            for (ip, class) in plan.exact.iter().filter(|(ip, _)| Family::of(ip) == f) {
                exact.elements.insert(
                    vec![Value::Addr(*ip)],
                    Verdict::Goto(class_names[*class].clone()),
                );
            }
            let mut ranges = map(
                vec![addr_key(f)],
                true,
                format!("{direction} peers: address blocks → their class"),
            );
            for (lo, hi, class) in plan.ranges.iter().filter(|(lo, _, _)| Family::of(lo) == f) {
                let key = if lo == hi {
                    Value::Addr(*lo)
                } else {
                    Value::AddrRange(*lo, *hi)
                };
                ranges
                    .elements
                    .insert(vec![key], Verdict::Goto(class_names[*class].clone()));
            }
            let exact_name = format!("{}-peer{}", stage(direction), fam(f));
            let ranges_name = format!("{}-net{}", stage(direction), fam(f));
            peer_rules.push(vmap_rule(
                vec![side(direction, f, true)],
                exact_name.clone(),
                "peer pods and nodes",
            ));
            peer_rules.push(vmap_rule(
                vec![side(direction, f, true)],
                ranges_name.clone(),
                "peer address blocks",
            ));
            self.out.maps.insert(exact_name, exact);
            self.out.maps.insert(ranges_name, ranges);
        }
        peer_rules.push(
            Rule::new(vec![], Verdict::Goto(class_names[0].clone()))
                .with_comment("peer in no block and no selection"),
        );
        self.out.chains.insert(
            peers_chain(direction),
            Chain {
                base: None,
                rules: peer_rules,
            },
        );
        let mut defaults = families.map(|f| {
            map(
                vec![addr_key(f)],
                false,
                format!("{direction}: isolated pods of this node → their default deny"),
            )
        });
        for (ci, name) in class_names.iter().enumerate() {
            if plan.in_use(ci) {
                self.class(direction, name);
            }
        }
        let mut default_rules = Vec::new();
        for (fi, f) in families.iter().enumerate() {
            let m = format!("{}-default{}", stage(direction), fam(*f));
            default_rules.push(vmap_rule(
                vec![side(direction, *f, false)],
                m.clone(),
                "isolated pods: denied",
            ));
            self.out.maps.insert(m, std::mem::take(&mut defaults[fi]));
        }
        default_rules.push(
            Rule::new(vec![], allowed(direction)).with_comment(format!("{direction}: allowed")),
        );
        self.out.chains.insert(
            default_chain(direction),
            Chain {
                base: None,
                rules: default_rules,
            },
        );
        for (gi, (_, pods)) in plan.groups.iter().enumerate() {
            for key in pods {
                let ips = &state.pods[key].ips;
                self.pod_entries(direction, plan, gi, ips, &mut |out, m, k, v| {
                    out.maps
                        .get_mut(&m)
                        .expect("made above")
                        .elements
                        .insert(k, v);
                });
            }
        }
    }

    /// One local pod's elements (of group `gi`, at `ips`) in one direction's maps: its stage
    /// entry, its default when isolated, and what its group decides in every class in use.
    /// `emit` gets each as (the output, map, key, verdict).
    fn pod_entries(
        &mut self,
        direction: Direction,
        plan: &DirectionPlan,
        gi: usize,
        ips: &[IpAddr],
        emit: &mut Emit<'_>,
    ) {
        for ip in ips {
            emit(
                &mut self.out,
                dispatch_map_name(direction, Family::of(ip)),
                vec![Value::Addr(*ip)],
                Verdict::Goto(peers_chain(direction)),
            );
        }
        let default = plan.groups[gi].0.default_outcome();
        if default != Outcome::Allow(None) {
            let v = self.outcome_chain(direction, &default);
            for ip in ips {
                emit(
                    &mut self.out,
                    format!("{}-default{}", stage(direction), fam(Family::of(ip))),
                    vec![Value::Addr(*ip)],
                    v.clone(),
                );
            }
        }
        for &c in &plan.group_classes[gi] {
            if plan.in_use(c) {
                self.class_entries(direction, plan, gi, c, ips, emit);
            }
        }
    }

    /// What group `gi` decides in class `c`, as elements of the class's maps for one pod.
    fn class_entries(
        &mut self,
        direction: Direction,
        plan: &DirectionPlan,
        gi: usize,
        c: usize,
        ips: &[IpAddr],
        emit: &mut Emit<'_>,
    ) {
        let Some(decisions) = plan.decision(gi, c) else {
            return;
        };
        let name = class_chain(plan, c);
        if let Some(o) = &decisions.portless {
            let v = self.outcome_chain(direction, o);
            for ip in ips {
                emit(
                    &mut self.out,
                    format!("{name}-n{}", fam(Family::of(ip))),
                    vec![Value::Addr(*ip)],
                    v.clone(),
                );
            }
        }
        let default = plan.groups[gi].0.default_outcome();
        for (proto, placed) in port_layout(&decisions.ports, &default) {
            for (where_, o) in placed {
                let v = match o {
                    Some(o) => self.outcome_chain(direction, o),
                    None => Verdict::Goto(default_chain(direction)),
                };
                for ip in ips {
                    let (suffix, key) = match where_ {
                        Placed::Protocol => ("a", vec![Value::Addr(*ip), Value::Proto(proto)]),
                        Placed::Port(p) => (
                            "x",
                            vec![Value::Addr(*ip), Value::Proto(proto), Value::Port(p)],
                        ),
                        Placed::Range(a, b) => (
                            "p",
                            vec![
                                Value::Addr(*ip),
                                Value::Proto(proto),
                                Value::PortRange(a, b),
                            ],
                        ),
                    };
                    emit(
                        &mut self.out,
                        format!("{name}-{suffix}{}", fam(Family::of(ip))),
                        key,
                        v.clone(),
                    );
                }
            }
        }
    }

    /// The chain of a peer class and its verdict maps, empty (the pods' entries fill them).
    fn class(&mut self, direction: Direction, name: &str) {
        let families = [Family::Ipv4, Family::Ipv6];
        let mut rules = Vec::new();
        // Ports: the exceptions first (single ports in a hash map, ranges in an interval
        // map), then the protocol's background decision.
        let port_maps = [
            ("x", true, false, "decided by pod, protocol and port"),
            ("p", true, true, "decided by pod, protocol and port range"),
            (
                "a",
                false,
                false,
                "decided by pod and protocol, whatever the port",
            ),
        ];
        for (suffix, with_port, interval, comment) in port_maps {
            let (mut key, mut fields) = (vec![KeyType::InetProto], vec![Field::L4Proto]);
            if with_port {
                key.push(KeyType::InetService);
                fields.push(Field::DstPort);
            }
            for f in families {
                let m = format!("{name}-{suffix}{}", fam(f));
                rules.push(vmap_rule(
                    [side(direction, f, false)]
                        .into_iter()
                        .chain(fields.clone())
                        .collect(),
                    m.clone(),
                    comment,
                ));
                let k = [addr_key(f)].into_iter().chain(key.clone()).collect();
                self.out.maps.insert(
                    m,
                    map(k, interval, format!("{direction}: local pod . {comment}")),
                );
            }
        }
        rules.push(
            Rule::new(
                vec![Match::Lookup {
                    fields: vec![Field::L4Proto],
                    set: PORT_PROTOCOL_SET.into(),
                    negate: false,
                }],
                Verdict::Goto(default_chain(direction)),
            )
            .with_comment("no port decision: the pod's default"),
        );
        for f in families {
            let m = format!("{name}-n{}", fam(f));
            rules.push(vmap_rule(
                vec![side(direction, f, false)],
                m.clone(),
                "protocols without ports",
            ));
            self.out.maps.insert(
                m,
                map(
                    vec![addr_key(f)],
                    false,
                    format!("{direction}: local pod → decision (protocols without ports)"),
                ),
            );
        }
        rules.push(
            Rule::new(vec![], Verdict::Goto(default_chain(direction)))
                .with_comment("the pod's default"),
        );
        self.out
            .chains
            .insert(name.to_string(), Chain { base: None, rules });
    }

    /// `forward` and `input`.
    fn base_chains(&mut self, state: &ClusterState, index: &StateIndex) {
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
                let name = format!("local{}", fam(family));
                let mut set = Set {
                    key: vec![addr_key(family)],
                    comment: Some("pods of this node known to the agent".into()),
                    ..Set::default()
                };
                for key in &index.local_pods {
                    let pod = &state.pods[key];
                    // Every local pod the agent knows, terminating ones included: the guard
                    // is for pods the agent has not seen, not for pods policy ignores.
                    if pod.host_network {
                        continue;
                    }
                    for ip in pod.ips.iter().filter(|ip| Family::of(ip) == family) {
                        set.elements.insert(vec![Value::Addr(*ip)]);
                    }
                }
                self.out.sets.insert(name.clone(), set);
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
                                set: name,
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
            Rule::new(vec![], Verdict::Goto(stage(Direction::Egress).into()))
                .with_comment("the source's egress, then the destination's ingress"),
        );
        let base = |hook| {
            Some(BaseChain {
                chain_type: ChainType::Filter,
                hook,
                priority: FILTER_PRIORITY,
                policy: ChainPolicy::Accept,
            })
        };
        self.out.chains.insert(
            FORWARD_CHAIN.into(),
            Chain {
                base: base(Hook::Forward),
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
        // A pod talking to its own node: egress policy applies (the node's address is no
        // local pod, so the ingress dispatch misses and accepts).
        input.push(
            Rule::new(vec![], Verdict::Goto(stage(Direction::Egress).into()))
                .with_comment("a pod to its node: its egress"),
        );
        self.out.chains.insert(
            INPUT_CHAIN.into(),
            Chain {
                base: base(Hook::Input),
                rules: input,
            },
        );
        let mut protos = Set {
            key: vec![KeyType::InetProto],
            comment: Some("protocols with ports".into()),
            ..Set::default()
        };
        for p in PORT_PROTOCOLS {
            protos.elements.insert(vec![Value::Proto(p.number())]);
        }
        self.out.sets.insert(PORT_PROTOCOL_SET.into(), protos);
    }
}

/// The chain name of peer class `c`: a hash of the peer conditions (and resolved named
/// ports) it stands for, so that every compile names it alike.
fn class_chain(plan: &DirectionPlan, c: usize) -> String {
    let class = &plan.classes[c];
    let atoms: Vec<&decide::Atom> = class.atoms.iter().map(|i| &plan.atoms[*i]).collect();
    let d = short(plan.direction.expect("a made plan"));
    format!("{d}-{}", hash_of(&(atoms, &class.named)))
}

/// The map names of class chain `chain`.
fn class_maps(chain: &str) -> [String; 8] {
    ["x4", "x6", "p4", "p6", "a4", "a6", "n4", "n6"].map(|m| format!("{chain}-{m}"))
}

/// One protocol's port decisions, placed: `None` is the subject's default.
pub(crate) type Layout<'a> = Vec<(Placed, Option<&'a Outcome>)>;

/// Where one port decision goes in a class's maps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Placed {
    /// The protocol's background (`-a` map): every port no exception names.
    Protocol,
    /// A single port (`-x` map, a hash: cheap to change).
    Port(u16),
    /// A port range (`-p` map, an interval map: its changes rebuild the kernel's lookup
    /// table, so only what needs a range goes there).
    Range(u16, u16),
}

/// The elements one subject group's port decisions (`ports`: disjoint segments whose outcome
/// differs from `default`) become, per protocol number: the outcome covering the most ports
/// is the background (none when that is the default: the lookup misses), and every other
/// segment an exception, looked up before it; an exception whose outcome is the default is
/// `None` (its element goes to the default chain).
pub(crate) fn port_layout<'a>(
    ports: &'a [(Protocol, u16, u16, Outcome)],
    default: &'a Outcome,
) -> Vec<(u8, Layout<'a>)> {
    let mut out = Vec::new();
    for proto in PORT_PROTOCOLS {
        let segs: Vec<(u16, u16, &Outcome)> = ports
            .iter()
            .filter(|(p, ..)| *p == proto)
            .map(|(_, a, b, o)| (*a, *b, o))
            .collect();
        if segs.is_empty() {
            continue;
        }
        // Ports per outcome, the default's being what the segments leave.
        let width = |a: u16, b: u16| u32::from(b) - u32::from(a) + 1;
        let mut cover: Vec<(&Outcome, u32)> = vec![(
            default,
            65536 - segs.iter().map(|(a, b, _)| width(*a, *b)).sum::<u32>(),
        )];
        for (a, b, o) in &segs {
            match cover.iter_mut().find(|(c, _)| c == o) {
                Some(entry) => entry.1 += width(*a, *b),
                None => cover.push((o, width(*a, *b))),
            }
        }
        // The first of the widest: the default wins a tie (no background element).
        let background = cover
            .iter()
            .fold(None::<(&Outcome, u32)>, |best, &(o, n)| match best {
                Some((_, m)) if m >= n => best,
                _ => Some((o, n)),
            })
            .expect("the default is there")
            .0;
        let mut placed = Vec::new();
        if background != default {
            placed.push((Placed::Protocol, Some(background)));
        }
        // Every port whose outcome is not the background: the segments', and (when the
        // background is no default) the gaps between them, which are the default's.
        let mut next: u32 = 0;
        let mut except = |a: u16, b: u16, o: Option<&'a Outcome>| {
            let where_ = if a == b {
                Placed::Port(a)
            } else {
                Placed::Range(a, b)
            };
            placed.push((where_, o));
        };
        for (a, b, o) in &segs {
            if background != default && u32::from(*a) > next {
                except(next as u16, a - 1, None);
            }
            if *o != background {
                except(*a, *b, Some(o));
            }
            next = u32::from(*b) + 1;
        }
        if background != default && next <= 65535 {
            except(next as u16, 65535, None);
        }
        out.push((proto.number(), placed));
    }
    out
}

/// What the incremental paths keep between compiles: the two direction plans, and how many
/// map elements name each chain (so that a decision chain no element names any more goes
/// without a scan of every map).
#[derive(Debug)]
pub(crate) struct Kept {
    pub plans: [DirectionPlan; 2],
    refs: HashMap<String, usize>,
}

impl Kept {
    /// A map element with verdict `v` came.
    fn hold(&mut self, v: &Verdict) {
        if let Verdict::Goto(c) | Verdict::Jump(c) = v {
            *self.refs.entry(c.clone()).or_default() += 1;
        }
    }

    /// A map element with verdict `v` went: its decision chain goes with the last one.
    fn release(&mut self, v: &Verdict, out: &mut Ruleset, touched: &mut Touched) {
        let (Verdict::Goto(c) | Verdict::Jump(c)) = v else {
            return;
        };
        let Some(n) = self.refs.get_mut(c) else {
            return;
        };
        *n -= 1;
        if *n == 0 {
            self.refs.remove(c);
            if is_outcome_chain(c) && out.chains.remove(c).is_some() {
                touched.chain(c);
            }
        }
    }

    /// Chains made since `before` are touched; a decision chain made only to name the
    /// verdict of an element that went (no element names it) goes again.
    fn new_chains(&self, before: &BTreeSet<String>, out: &mut Ruleset, touched: &mut Touched) {
        out.chains
            .retain(|c, _| before.contains(c) || !is_outcome_chain(c) || self.refs.contains_key(c));
        for c in out.chains.keys() {
            if !before.contains(c) {
                touched.chain(c);
            }
        }
    }
}

/// The chains of [`Emitter::outcome_chain`]: made on first use, gone with their last element.
fn is_outcome_chain(name: &str) -> bool {
    ["-ok-", "-deny-", "-iso-"].iter().any(|k| name.contains(k))
}

/// The policy part of the ruleset (everything but masquerade), compiled from scratch, and
/// what the incremental compiler keeps of it.
pub(crate) fn build(
    state: &ClusterState,
    index: &StateIndex,
    opts: &CompileOptions,
) -> (Ruleset, Kept) {
    let mut e = Emitter {
        opts,
        out: Ruleset::default(),
    };
    e.base_chains(state, index);
    // One grouping of the pods by labels serves both directions.
    let pods = PodsByLabels::new(state, index);
    let plans = Direction::BOTH.map(|direction| decide::plan(state, index, &pods, direction));
    for plan in &plans {
        e.direction(state, plan.direction.expect("a made plan"), plan);
    }
    // Local pods sharing an address: the last one's element stands, and a decision chain only
    // the others' elements named goes (the incremental paths keep exactly the chains in use).
    let mut kept = Kept {
        plans,
        refs: HashMap::new(),
    };
    for v in e.out.maps.values().flat_map(|m| m.elements.values()) {
        kept.hold(v);
    }
    kept.new_chains(&BTreeSet::new(), &mut e.out, &mut Touched::all());
    (e.out, kept)
}

/// Bring `out` up to date after this node's pods `keys` changed (added, removed, relabelled,
/// readdressed): each leaves its old subject group with its elements and joins its new one
/// (a new group is decided against every class), and the fail-closed sets follow. Their
/// addresses as peers are for [`remote_pods_changed`]; `changed_addrs` holds them. `false`: a changed pod shares an
/// address with another local pod (which of them gives an element is the full build's
/// business), or the policies that select some local pod change (their peers make the
/// classes): nothing was done, rebuild.
pub(crate) fn local_pods_changed(
    inputs: &Inputs<'_>,
    kept: &mut Kept,
    keys: &BTreeSet<crate::model::ObjectKey>,
    changed_addrs: &BTreeSet<IpAddr>,
    out: &mut Ruleset,
    touched: &mut Touched,
) -> bool {
    let Inputs { state, index, opts } = *inputs;
    // Addresses before and after (`changed_addrs`: those of every changed pod, before and
    // after the change).
    let mut addrs: BTreeSet<IpAddr> = changed_addrs.clone();
    for key in keys {
        for plan in kept.plans.iter() {
            if let Some((_, ips)) = plan.local.get(key) {
                addrs.extend(ips);
            }
        }
        if let Some(pod) = state.pods.get(key) {
            addrs.extend(&pod.ips);
        }
    }
    let shared = addrs.iter().any(|ip| {
        index.pods_by_ip.get(ip).is_some_and(|pods| {
            pods.iter()
                .filter(|k| index.local_pods.contains(*k))
                .count()
                > 1
        }) || kept.plans.iter().any(|p| {
            p.local
                .iter()
                .any(|(k, (_, ips))| !keys.contains(k) && ips.contains(ip))
        })
    });
    if shared
        || kept
            .plans
            .iter()
            .any(|p| !p.keeps_policies(state, index, keys))
    {
        return false;
    }
    let mut e = Emitter {
        opts,
        out: std::mem::take(out),
    };
    let before: BTreeSet<String> = e.out.chains.keys().cloned().collect();
    // Removals release their decision chains after the additions, so that a chain a pod
    // leaves and joins again in one change stays.
    let mut released = Vec::new();
    let Kept { plans, .. } = kept;
    let mut holds = Vec::new();
    for plan in plans.iter_mut() {
        let direction = plan.direction.expect("a made plan");
        for key in keys {
            if let Some((gi, ips)) = plan.local.remove(key) {
                plan.groups[gi].1.retain(|k| k != key);
                e.pod_entries(direction, plan, gi, &ips, &mut |out, m, k, _| {
                    let map = out.maps.get_mut(&m).expect("a map of the plan");
                    if let Some(v) = map.elements.remove(&k) {
                        released.push(v.clone());
                        if let Some(delta) = touched.map_elements(&m) {
                            delta.remove(k, v);
                        }
                    }
                });
            }
            if let Some(group) = DirectionPlan::group_of(state, index, key, direction) {
                let gi = plan.group_index(group, index);
                let ips = state.pods[key].ips.clone();
                plan.groups[gi].1.push(key.clone());
                plan.local.insert(key.clone(), (gi, ips.clone()));
                e.pod_entries(direction, plan, gi, &ips, &mut |out, m, k, v| {
                    let map = out.maps.get_mut(&m).expect("a map of the plan");
                    holds.push(v.clone());
                    if let Some(old) = map.elements.insert(k.clone(), v.clone()) {
                        released.push(old);
                    }
                    if let Some(delta) = touched.map_elements(&m) {
                        delta.add(k, v);
                    }
                });
            }
        }
    }
    for v in &holds {
        kept.hold(v);
    }
    for v in &released {
        kept.release(v, &mut e.out, touched);
    }
    // The fail-closed sets: every local pod the agent knows that is no host-network pod.
    for ip in &addrs {
        let name = format!("local{}", fam(Family::of(ip)));
        let Some(set) = e.out.sets.get_mut(&name) else {
            continue;
        };
        let known = index.pods_by_ip.get(ip).is_some_and(|pods| {
            pods.iter()
                .any(|k| index.local_pods.contains(k) && !state.pods[k].host_network)
        });
        let key = vec![Value::Addr(*ip)];
        let changed = if known {
            set.elements.insert(key.clone())
        } else {
            set.elements.remove(&key)
        };
        if changed {
            if let Some(delta) = touched.set_elements(&name) {
                if known {
                    delta.add(key);
                } else {
                    delta.remove(key);
                }
            }
        }
    }
    kept.new_chains(&before, &mut e.out, touched);
    *out = e.out;
    true
}

/// Bring `out` (made by [`build`] from `plans`, then updated by this function only) up to date
/// after pods on other nodes changed at `addrs`: their peer-map elements, and the chains and
/// maps of classes that came into or went out of use.
pub(crate) fn remote_pods_changed(
    inputs: &Inputs<'_>,
    kept: &mut Kept,
    addrs: &BTreeSet<IpAddr>,
    out: &mut Ruleset,
    touched: &mut Touched,
) {
    let Inputs { state, index, opts } = *inputs;
    let mut e = Emitter {
        opts,
        out: std::mem::take(out),
    };
    let before: BTreeSet<String> = e.out.chains.keys().cloned().collect();
    let mut holds = Vec::new();
    let mut released = Vec::new();
    let Kept { plans, .. } = kept;
    for plan in plans.iter_mut() {
        let direction = plan.direction.expect("a made plan");
        let changed = plan.reclassify(state, index, addrs);
        for c in &changed.new_classes {
            let name = class_chain(plan, *c);
            e.class(direction, &name);
            for (gi, _) in &plan.decisions[*c] {
                for key in &plan.groups[*gi].1 {
                    let ips = &plan.local[key].1;
                    e.class_entries(direction, plan, *gi, *c, ips, &mut |out, m, k, v| {
                        holds.push(v.clone());
                        out.maps
                            .get_mut(&m)
                            .expect("made above")
                            .elements
                            .insert(k, v);
                    });
                }
            }
            touched.chain(&name);
            for m in class_maps(&name) {
                touched.map(&m);
            }
        }
        for c in &changed.gone_classes {
            let name = class_chain(plan, *c);
            e.out.chains.remove(&name);
            touched.chain(&name);
            for m in class_maps(&name) {
                if let Some(gone) = e.out.maps.remove(&m) {
                    released.extend(gone.elements.into_values());
                }
                touched.map(&m);
            }
        }
        for (ip, class) in &changed.exact {
            let map = format!("{}-peer{}", stage(direction), fam(Family::of(ip)));
            let elements = &mut e.out.maps.get_mut(&map).expect("peer map").elements;
            let key = vec![Value::Addr(*ip)];
            let old = elements.remove(&key);
            let new = class.map(|c| Verdict::Goto(class_chain(plan, c)));
            if let Some(v) = &new {
                elements.insert(key.clone(), v.clone());
                holds.push(v.clone());
            }
            released.extend(old.clone());
            if let Some(delta) = touched.map_elements(&map) {
                if let Some(v) = old {
                    delta.remove(key.clone(), v);
                }
                if let Some(v) = new {
                    delta.add(key, v);
                }
            }
        }
    }
    for v in &holds {
        kept.hold(v);
    }
    for v in &released {
        kept.release(v, &mut e.out, touched);
    }
    kept.new_chains(&before, &mut e.out, touched);
    *out = e.out;
}
