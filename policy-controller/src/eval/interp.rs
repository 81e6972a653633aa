//! The interpreter: classifies a packet by walking a compiled [`Ruleset`] the way nftables
//! would, and answers pod-to-pod reachability by compiling each node's ruleset and walking
//! the packet through the nodes it crosses.
//!
//! # Packet model
//! A [`Packet`] is the first packet of a connection as one hook of one node sees it: source
//! and destination address, L4 protocol and destination port, input and output interface
//! names and its conntrack state. nftables semantics that matter here and are modelled:
//! - `ip saddr` / `ip6 saddr` in an `inet` table carry an implicit `meta nfproto` dependency:
//!   on a packet of the other family the match is false, also when negated (`!=`) or in a
//!   lookup;
//! - lookups in interval sets match prefixes and ranges per component of a concatenation;
//! - `jump` returns to the caller when the chain ends or `return`s; `goto` does not come back
//!   to the chain that went, so falling off the end returns to the last `jump`; a base chain
//!   that falls off applies its policy; every base chain on the hook must accept.
//!
//! # Path model (for [`Reachability`])
//! - Pods are routed veths: a pod's packets enter its node from its host veth (named with
//!   `HOST_VETH_PREFIX`; the exact name does not matter, only the prefix) and are forwarded;
//!   a packet to another node leaves by `eth0` and is forwarded again there (hook `forward`
//!   on both nodes, unless it is for the node itself: hook `input`).
//! - A host-network pod is the node itself: what it sends leaves through `output`, which the
//!   ruleset never filters; what it receives comes in through `input`.
//! - A node's address (from `status.addresses`) that no host-network pod holds is that node's
//!   own stack too.
//! - An external address is beyond `eth0` of whatever node the packet crosses.
//! - A pod sending to its own address is modelled like any other pair (really it goes over
//!   loopback and is never filtered; scenario probes skip those cells).

use super::reference::{Endpoint, EndpointError};
use crate::compile::{compile, CompileOptions};
use crate::model::{ClusterState, ObjectKey, PodInfo, Protocol};
use crate::ruleset::{
    ChainPolicy, ChainType, CmpOp, CtState, Family, Field, Hook, KeyType, Match, RuleVerdict,
    Ruleset, Statement, Value, Verdict,
};
use serde::Serialize;
use std::collections::HashMap;
use std::net::IpAddr;

/// One packet at one hook of one node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Packet {
    pub src: IpAddr,
    pub dst: IpAddr,
    /// IANA protocol number (`meta l4proto`).
    pub proto: u8,
    pub dport: u16,
    pub iifname: String,
    pub oifname: String,
    pub ct_state: CtState,
}

/// A rule that matched, in walk order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Hit {
    pub chain: String,
    pub rule: usize,
    pub comment: Option<String>,
    /// NFLOG prefix, when the rule logged.
    pub logged: Option<String>,
}

/// What a hook decided, and the rules that matched on the way.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Outcome {
    pub accepted: bool,
    pub trace: Vec<Hit>,
    /// A `masquerade` statement ended the walk (nat chains): the connection's source becomes
    /// the address of the interface it leaves by.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub masqueraded: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InterpError {
    #[error("no chain {0}")]
    MissingChain(String),
    #[error("no set {0}")]
    MissingSet(String),
    #[error("no map {0}")]
    MissingMap(String),
    #[error("{0}: lookup key {1:?} does not match the set's key {2:?}")]
    KeyMismatch(String, Vec<KeyType>, Vec<KeyType>),
    #[error("{0}: value {1:?} cannot be compared with field {2:?}")]
    BadValue(String, Value, Field),
    #[error("chain nesting deeper than {0} (a loop?)")]
    TooDeep(usize),
}

const MAX_DEPTH: usize = 32;

/// Walk `packet` through every base chain of `hook` in priority order.
pub fn classify(ruleset: &Ruleset, hook: Hook, packet: &Packet) -> Result<Outcome, InterpError> {
    let mut bases: Vec<(&String, i32, ChainPolicy)> = ruleset
        .chains
        .iter()
        .filter_map(|(name, c)| {
            c.base
                .as_ref()
                .filter(|b| b.hook == hook)
                .map(|b| (name, b.priority, b.policy))
        })
        .collect();
    bases.sort_by_key(|(name, prio, _)| (*prio, (*name).clone()));
    let mut walker = Walker {
        ruleset,
        packet,
        trace: Vec::new(),
    };
    let mut masqueraded = false;
    for (name, _, policy) in bases {
        let verdict = walker.run(name, 0)?;
        let accepted = match verdict {
            Some(Terminal::Accept) => true,
            Some(Terminal::Masquerade) => {
                masqueraded = true;
                true
            }
            Some(Terminal::Drop) => false,
            None => policy == ChainPolicy::Accept,
        };
        if !accepted {
            return Ok(Outcome {
                accepted: false,
                trace: walker.trace,
                masqueraded,
            });
        }
    }
    Ok(Outcome {
        accepted: true,
        trace: walker.trace,
        masqueraded,
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Terminal {
    Accept,
    Drop,
    /// `masquerade` sets the verdict itself (accept, with the source rewritten).
    Masquerade,
}

struct Walker<'a> {
    ruleset: &'a Ruleset,
    packet: &'a Packet,
    trace: Vec<Hit>,
}

impl Walker<'_> {
    /// Run a chain; `None` when it returns (or falls off) without a final verdict.
    fn run(&mut self, chain_name: &str, depth: usize) -> Result<Option<Terminal>, InterpError> {
        if depth > MAX_DEPTH {
            return Err(InterpError::TooDeep(MAX_DEPTH));
        }
        let chain = self
            .ruleset
            .chains
            .get(chain_name)
            .ok_or_else(|| InterpError::MissingChain(chain_name.to_string()))?;
        for (i, rule) in chain.rules.iter().enumerate() {
            let mut all = true;
            for m in &rule.matches {
                if !self.matches(m)? {
                    all = false;
                    break;
                }
            }
            if !all {
                continue;
            }
            let verdict = match &rule.verdict {
                None => None,
                Some(RuleVerdict::Verdict(v)) => Some(v.clone()),
                Some(RuleVerdict::Vmap { fields, map }) => {
                    let m = self
                        .ruleset
                        .maps
                        .get(map)
                        .ok_or_else(|| InterpError::MissingMap(map.clone()))?;
                    check_key(map, fields, &m.key)?;
                    match self.key(fields) {
                        None => None,
                        Some(key) => {
                            if m.interval {
                                m.elements
                                    .iter()
                                    .find(|(e, _)| element_contains(e, &key))
                                    .map(|(_, v)| v.clone())
                            } else {
                                m.elements.get(&key).cloned()
                            }
                        }
                    }
                }
            };
            // A vmap without a matching element is not a hit: evaluation just continues.
            if matches!(rule.verdict, Some(RuleVerdict::Vmap { .. })) && verdict.is_none() {
                continue;
            }
            let logged = rule.statements.iter().find_map(|s| match s {
                Statement::Log { prefix, .. } => Some(prefix.clone()),
                Statement::Counter | Statement::Masquerade => None,
            });
            self.trace.push(Hit {
                chain: chain_name.to_string(),
                rule: i,
                comment: rule.comment.clone(),
                logged,
            });
            if rule.statements.contains(&Statement::Masquerade) {
                return Ok(Some(Terminal::Masquerade));
            }
            match verdict {
                None => continue,
                Some(Verdict::Accept) => return Ok(Some(Terminal::Accept)),
                Some(Verdict::Drop) => return Ok(Some(Terminal::Drop)),
                Some(Verdict::Return) => return Ok(None),
                Some(Verdict::Jump(target)) => {
                    if let Some(t) = self.run(&target, depth + 1)? {
                        return Ok(Some(t));
                    }
                }
                Some(Verdict::Goto(target)) => return self.run(&target, depth + 1),
            }
        }
        Ok(None)
    }

    fn field(&self, field: Field) -> Option<Value> {
        let p = self.packet;
        match field {
            Field::SrcAddr(f) => (Family::of(&p.src) == f).then_some(Value::Addr(p.src)),
            Field::DstAddr(f) => (Family::of(&p.dst) == f).then_some(Value::Addr(p.dst)),
            Field::L4Proto => Some(Value::Proto(p.proto)),
            Field::DstPort => Some(Value::Port(p.dport)),
            Field::IifName => Some(Value::IfName(p.iifname.clone())),
            Field::OifName => Some(Value::IfName(p.oifname.clone())),
            Field::NfProto => Some(Value::NfProto(Family::of(&p.src))),
        }
    }

    /// The packet's key for a lookup; `None` when an address field's family dependency fails.
    fn key(&self, fields: &[Field]) -> Option<Vec<Value>> {
        fields.iter().map(|f| self.field(*f)).collect()
    }

    fn matches(&self, m: &Match) -> Result<bool, InterpError> {
        match m {
            Match::CtState(states) => Ok(states.contains(&self.packet.ct_state)),
            Match::Cmp { field, op, value } => {
                let Some(actual) = self.field(*field) else {
                    return Ok(false);
                };
                if !comparable(*field, value) {
                    return Err(InterpError::BadValue("cmp".into(), value.clone(), *field));
                }
                let inside = value_contains(value, &actual);
                Ok(match op {
                    CmpOp::Eq => inside,
                    CmpOp::Ne => !inside,
                })
            }
            Match::Lookup {
                fields,
                set,
                negate,
            } => {
                let s = self
                    .ruleset
                    .sets
                    .get(set)
                    .ok_or_else(|| InterpError::MissingSet(set.clone()))?;
                check_key(set, fields, &s.key)?;
                let Some(key) = self.key(fields) else {
                    return Ok(false);
                };
                let found = if s.interval {
                    s.elements.iter().any(|e| element_contains(e, &key))
                } else {
                    s.elements.contains(&key)
                };
                Ok(found != *negate)
            }
        }
    }
}

fn check_key(name: &str, fields: &[Field], key: &[KeyType]) -> Result<(), InterpError> {
    let types: Vec<KeyType> = fields.iter().map(|f| f.key_type()).collect();
    if types != key {
        return Err(InterpError::KeyMismatch(
            name.to_string(),
            types,
            key.to_vec(),
        ));
    }
    Ok(())
}

fn comparable(field: Field, value: &Value) -> bool {
    matches!(
        (field.key_type(), value),
        (KeyType::Ipv4Addr, Value::Addr(std::net::IpAddr::V4(_)))
            | (KeyType::Ipv6Addr, Value::Addr(std::net::IpAddr::V6(_)))
            | (KeyType::Ipv4Addr, Value::Prefix(ipnet::IpNet::V4(_)))
            | (KeyType::Ipv6Addr, Value::Prefix(ipnet::IpNet::V6(_)))
            | (KeyType::Ipv4Addr | KeyType::Ipv6Addr, Value::AddrRange(..))
            | (KeyType::InetProto, Value::Proto(_) | Value::NfProto(_))
            | (KeyType::InetService, Value::Port(_) | Value::PortRange(..))
            | (KeyType::IfName, Value::IfName(_) | Value::IfPrefix(_))
    )
}

/// Whether an element (one value per key component) contains the packet's key.
fn element_contains(element: &[Value], key: &[Value]) -> bool {
    element.len() == key.len() && element.iter().zip(key).all(|(e, k)| value_contains(e, k))
}

/// Whether set value / compared value `v` contains the packet value `x`.
fn value_contains(v: &Value, x: &Value) -> bool {
    match (v, x) {
        (Value::Prefix(net), Value::Addr(ip)) => net.contains(ip),
        (Value::AddrRange(lo, hi), Value::Addr(ip)) => {
            Family::of(lo) == Family::of(ip) && lo <= ip && ip <= hi
        }
        (Value::PortRange(lo, hi), Value::Port(p)) => lo <= p && p <= hi,
        (Value::IfPrefix(prefix), Value::IfName(name)) => name.starts_with(prefix.as_str()),
        _ => v == x,
    }
}

/// Problems that would make nft refuse the ruleset or the dataplane misrender it: dangling
/// references, key type mismatches, overlapping interval elements, ranges in non-interval
/// sets, names too long. Empty when fine.
pub fn check_ruleset(ruleset: &Ruleset) -> Vec<String> {
    let mut problems = Vec::new();
    let long = |kind: &str, name: &str, problems: &mut Vec<String>| {
        if name.len() > 31 {
            problems.push(format!("{kind} name {name} longer than 31"));
        }
    };
    for (name, set) in &ruleset.sets {
        long("set", name, &mut problems);
        check_elements(
            name,
            &set.key,
            set.interval,
            set.elements.iter(),
            &mut problems,
        );
    }
    for (name, map) in &ruleset.maps {
        long("map", name, &mut problems);
        check_elements(
            name,
            &map.key,
            map.interval,
            map.elements.keys(),
            &mut problems,
        );
        for v in map.elements.values() {
            if let Verdict::Jump(c) | Verdict::Goto(c) = v {
                if !ruleset.chains.contains_key(c) {
                    problems.push(format!("map {name}: element jumps to missing chain {c}"));
                }
            }
        }
    }
    for (name, chain) in &ruleset.chains {
        long("chain", name, &mut problems);
        for (i, rule) in chain.rules.iter().enumerate() {
            let at = format!("{name}[{i}]");
            for m in &rule.matches {
                match m {
                    Match::Lookup { fields, set, .. } => match ruleset.sets.get(set) {
                        None => problems.push(format!("{at}: missing set {set}")),
                        Some(s) => {
                            if let Err(e) = check_key(set, fields, &s.key) {
                                problems.push(format!("{at}: {e}"));
                            }
                        }
                    },
                    Match::Cmp { field, value, .. } => {
                        if !comparable(*field, value) {
                            problems.push(format!("{at}: {value:?} vs {field:?}"));
                        }
                    }
                    Match::CtState(_) => {}
                }
            }
            for s in &rule.statements {
                if let Statement::Log { prefix, .. } = s {
                    if prefix.len() > 127 {
                        problems.push(format!("{at}: log prefix longer than 127"));
                    }
                }
            }
            let nat_postrouting = chain
                .base
                .as_ref()
                .is_some_and(|b| b.chain_type == ChainType::Nat && b.hook == Hook::Postrouting);
            if rule.statements.contains(&Statement::Masquerade) && !nat_postrouting {
                problems.push(format!(
                    "{at}: masquerade outside a nat chain at postrouting"
                ));
            }
            match &rule.verdict {
                Some(RuleVerdict::Verdict(Verdict::Jump(c) | Verdict::Goto(c)))
                    if !ruleset.chains.contains_key(c) =>
                {
                    problems.push(format!("{at}: jump to missing chain {c}"));
                }
                Some(RuleVerdict::Vmap { fields, map }) => match ruleset.maps.get(map) {
                    None => problems.push(format!("{at}: missing map {map}")),
                    Some(m) => {
                        if let Err(e) = check_key(map, fields, &m.key) {
                            problems.push(format!("{at}: {e}"));
                        }
                    }
                },
                _ => {}
            }
        }
    }
    problems
}

fn check_elements<'a>(
    name: &str,
    key: &[KeyType],
    interval: bool,
    elements: impl Iterator<Item = &'a Vec<Value>>,
    problems: &mut Vec<String>,
) {
    let elements: Vec<&Vec<Value>> = elements.collect();
    for e in &elements {
        if e.len() != key.len() {
            problems.push(format!("{name}: element {e:?} has the wrong arity"));
            continue;
        }
        for (v, t) in e.iter().zip(key) {
            let field = match t {
                KeyType::Ipv4Addr => Field::SrcAddr(Family::Ipv4),
                KeyType::Ipv6Addr => Field::SrcAddr(Family::Ipv6),
                KeyType::InetProto => Field::L4Proto,
                KeyType::InetService => Field::DstPort,
                KeyType::IfName => Field::IifName,
            };
            if !comparable(field, v) {
                problems.push(format!("{name}: {v:?} is not a {t:?}"));
            }
            let ranged = matches!(
                v,
                Value::Prefix(_) | Value::AddrRange(..) | Value::PortRange(..) | Value::IfPrefix(_)
            );
            if ranged && !interval {
                problems.push(format!("{name}: {v:?} in a set without flags interval"));
            }
        }
    }
    if interval && elements.len() <= 4096 {
        for (i, a) in elements.iter().enumerate() {
            for b in &elements[i + 1..] {
                if a.iter().zip(b.iter()).all(|(x, y)| overlaps(x, y)) {
                    problems.push(format!("{name}: elements {a:?} and {b:?} overlap"));
                }
            }
        }
    }
}

fn bounds(v: &Value) -> Option<(u128, u128)> {
    use crate::compile::intervals::{addr_u128, net_range};
    match v {
        Value::Addr(ip) => Some((addr_u128(ip), addr_u128(ip))),
        Value::Prefix(n) => Some(net_range(n)),
        Value::AddrRange(a, b) => Some((addr_u128(a), addr_u128(b))),
        Value::Port(p) => Some((u128::from(*p), u128::from(*p))),
        Value::PortRange(a, b) => Some((u128::from(*a), u128::from(*b))),
        Value::Proto(p) => Some((u128::from(*p), u128::from(*p))),
        _ => None,
    }
}

fn overlaps(a: &Value, b: &Value) -> bool {
    match (bounds(a), bounds(b)) {
        (Some((a0, a1)), Some((b0, b1))) => a0 <= b1 && b0 <= a1,
        _ => a == b,
    }
}

/// The name of the uplink in the path model.
pub const UPLINK: &str = "eth0";

/// One hook a packet crossed on its way.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HopResult {
    pub node: String,
    pub hook: Hook,
    pub packet: Packet,
    pub outcome: Outcome,
}

/// The answer for a packet from one endpoint to another: allowed iff every hop accepts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PathVerdict {
    pub allowed: bool,
    pub hops: Vec<HopResult>,
}

#[derive(Debug, thiserror::Error)]
pub enum PathError {
    #[error(transparent)]
    Endpoint(#[from] EndpointError),
    #[error("pod {0} is not scheduled on a node")]
    Unscheduled(ObjectKey),
    #[error("node {node}: {source}")]
    Interp { node: String, source: InterpError },
}

/// Where an endpoint is in the path model.
enum Place<'a> {
    /// A pod behind its veth on `node`.
    Pod { node: &'a str, veth: String },
    /// The node's own stack (a host-network pod).
    Node(&'a str),
    /// Beyond the uplink.
    External,
}

/// Compiles each node's ruleset once and walks packets through them.
pub struct Reachability<'a> {
    state: &'a ClusterState,
    template: CompileOptions,
    rulesets: HashMap<String, Ruleset>,
}

impl<'a> Reachability<'a> {
    /// `template` gives the options every node's agent runs with (its `node` is replaced).
    pub fn new(state: &'a ClusterState, template: CompileOptions) -> Reachability<'a> {
        Reachability {
            state,
            template,
            rulesets: HashMap::new(),
        }
    }

    /// With the agent's default options: fail-closed, no logging.
    pub fn with_defaults(state: &'a ClusterState) -> Reachability<'a> {
        Reachability::new(
            state,
            CompileOptions {
                node: String::new(),
                fail_closed_new_pods: true,
                nflog_group: None,
                masquerade: crate::compile::MasqueradeOptions::enabled(),
            },
        )
    }

    /// The compiled ruleset of a node.
    pub fn ruleset(&mut self, node: &str) -> &Ruleset {
        if !self.rulesets.contains_key(node) {
            let mut opts = self.template.clone();
            opts.node = node.to_string();
            self.rulesets
                .insert(node.to_string(), compile(self.state, &opts));
        }
        &self.rulesets[node]
    }

    /// [`Reachability::check_in_family`] in the first family both ends have (IPv4 first).
    pub fn check(
        &mut self,
        src: &Endpoint,
        dst: &Endpoint,
        proto: Protocol,
        port: u16,
    ) -> Result<PathVerdict, PathError> {
        let mut last = None;
        for family in [Family::Ipv4, Family::Ipv6] {
            match self.check_in_family(src, dst, proto, port, family) {
                Err(PathError::Endpoint(e @ EndpointError::NoCommonFamily { .. })) => {
                    last = Some(PathError::Endpoint(e))
                }
                other => return other,
            }
        }
        Err(last.expect("two families tried"))
    }

    /// Walk the first packet of a `proto`/`port` connection from `src` to `dst` over every hook
    /// it crosses.
    pub fn check_in_family(
        &mut self,
        src: &Endpoint,
        dst: &Endpoint,
        proto: Protocol,
        port: u16,
        family: Family,
    ) -> Result<PathVerdict, PathError> {
        let state = self.state;
        let (src_ip, src_place) = locate(state, src, family)?;
        let (dst_ip, dst_place) = locate(state, dst, family)?;
        let packet = |src: IpAddr, iif: &str, oif: &str| Packet {
            src,
            dst: dst_ip,
            proto: proto.number(),
            dport: port,
            iifname: iif.to_string(),
            oifname: oif.to_string(),
            ct_state: CtState::New,
        };
        let mut walk = Walk {
            hops: Vec::new(),
            allowed: true,
        };
        match (&src_place, &dst_place) {
            (Place::Pod { node: a, veth: sv }, Place::Pod { node: b, veth: dv }) if a == b => {
                self.hop(&mut walk, a, Hook::Forward, packet(src_ip, sv, dv))?;
            }
            (Place::Pod { node: a, veth: sv }, Place::Node(b)) if a == b => {
                self.hop(&mut walk, a, Hook::Input, packet(src_ip, sv, ""))?;
            }
            (Place::Pod { node: a, veth: sv }, _) => {
                self.hop(&mut walk, a, Hook::Forward, packet(src_ip, sv, UPLINK))?;
                // Leaving by the uplink: the nat chains at postrouting may masquerade, and the
                // far end then sees the node's address. Shown as a hop only when they did.
                let leaving = packet(src_ip, sv, UPLINK);
                let nat =
                    classify(self.ruleset(a), Hook::Postrouting, &leaving).map_err(|source| {
                        PathError::Interp {
                            node: a.to_string(),
                            source,
                        }
                    })?;
                let mut far_src = src_ip;
                if nat.masqueraded {
                    far_src = node_address(state, a, family).unwrap_or(src_ip);
                    walk.allowed &= nat.accepted;
                    walk.hops.push(HopResult {
                        node: a.to_string(),
                        hook: Hook::Postrouting,
                        packet: leaving,
                        outcome: nat,
                    });
                }
                self.far_end(&mut walk, &dst_place, &|iif, oif| packet(far_src, iif, oif))?;
            }
            // The node itself sends through `output` (never filtered): to its own pods and
            // itself nothing more happens.
            (Place::Node(a), Place::Pod { node: b, .. } | Place::Node(b)) if a == b => {}
            (Place::Node(_) | Place::External, _) => {
                self.far_end(&mut walk, &dst_place, &|iif, oif| packet(src_ip, iif, oif))?
            }
        }
        Ok(PathVerdict {
            allowed: walk.allowed,
            hops: walk.hops,
        })
    }

    /// Walk one hook of one node and record it.
    fn hop(
        &mut self,
        walk: &mut Walk,
        node: &str,
        hook: Hook,
        packet: Packet,
    ) -> Result<(), PathError> {
        let outcome =
            classify(self.ruleset(node), hook, &packet).map_err(|source| PathError::Interp {
                node: node.to_string(),
                source,
            })?;
        walk.allowed &= outcome.accepted;
        walk.hops.push(HopResult {
            node: node.to_string(),
            hook,
            packet,
            outcome,
        });
        Ok(())
    }

    /// The hook of the destination's node, for a packet arriving over the uplink.
    fn far_end(
        &mut self,
        walk: &mut Walk,
        dst: &Place<'_>,
        packet: &dyn Fn(&str, &str) -> Packet,
    ) -> Result<(), PathError> {
        match dst {
            Place::Pod { node, veth } => self.hop(walk, node, Hook::Forward, packet(UPLINK, veth)),
            Place::Node(node) => self.hop(walk, node, Hook::Input, packet(UPLINK, "")),
            Place::External => Ok(()),
        }
    }
}

/// The hooks walked so far and whether all accepted.
struct Walk {
    hops: Vec<HopResult>,
    allowed: bool,
}

/// The InternalIP of `node` in `family`: the address a masqueraded packet leaves with.
fn node_address(state: &ClusterState, node: &str, family: Family) -> Option<IpAddr> {
    state
        .nodes
        .get(node)?
        .internal_ips
        .iter()
        .copied()
        .find(|ip| Family::of(ip) == family)
}

fn locate<'a>(
    state: &'a ClusterState,
    ep: &Endpoint,
    family: Family,
) -> Result<(IpAddr, Place<'a>), PathError> {
    let pod: Option<&PodInfo> = match ep {
        Endpoint::Pod(key) => Some(
            state
                .pods
                .get(key)
                .ok_or_else(|| EndpointError::UnknownPod(key.clone()))?,
        ),
        // Any pod with that address that has a veth (terminating ones too).
        Endpoint::Ip(ip) => state
            .pods
            .values()
            .filter(|p| !p.host_network && p.ips.contains(ip))
            .min_by_key(|p| p.terminating),
    };
    let ip = match (ep, pod) {
        (Endpoint::Ip(ip), _) => *ip,
        (Endpoint::Pod(key), Some(p)) => {
            if p.ips.is_empty() {
                return Err(EndpointError::NoAddress(key.clone()).into());
            }
            *p.ips
                .iter()
                .find(|ip| Family::of(ip) == family)
                .ok_or_else(|| EndpointError::NoCommonFamily {
                    src: key.to_string(),
                    dst: format!("{family:?}"),
                })?
        }
        (Endpoint::Pod(_), None) => unreachable!("looked up above"),
    };
    if Family::of(&ip) != family {
        return Err(EndpointError::NoCommonFamily {
            src: ip.to_string(),
            dst: format!("{family:?}"),
        }
        .into());
    }
    let place = match pod {
        None => match state.nodes.values().find(|n| n.addresses.contains(&ip)) {
            Some(node) => Place::Node(&node.name),
            None => Place::External,
        },
        Some(p) => {
            let node = p
                .node
                .as_deref()
                .ok_or_else(|| PathError::Unscheduled(p.key.clone()))?;
            if p.host_network {
                Place::Node(node)
            } else {
                Place::Pod {
                    node,
                    veth: palisade_common::host_veth_name(&p.key.to_string(), "eth0"),
                }
            }
        }
    };
    Ok((ip, place))
}

/// Is `proto`/`port` from `src` to `dst` allowed by the compiled rulesets of the nodes on the
/// way (compiled here with the agent's default options)? `false` on any error.
pub fn reachable(
    state: &ClusterState,
    src: &Endpoint,
    dst: &Endpoint,
    proto: Protocol,
    port: u16,
) -> bool {
    Reachability::with_defaults(state)
        .check(src, dst, proto, port)
        .is_ok_and(|v| v.allowed)
}
