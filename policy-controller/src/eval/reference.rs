//! The reference evaluator: the policy APIs' semantics written down directly over the API
//! objects in [`ClusterState`], with no sets, chains, caches or normalized model. It is the
//! oracle the compiled ruleset is tested against (property tests, scenario files), and it
//! explains its answers (`palisadectl explain`).
//!
//! Independent on purpose: it reads `NetworkPolicy` and `ClusterNetworkPolicy` as written and
//! shares no helper with the compiler or its translators (label selector matching,
//! `policyTypes` defaulting, peer and port semantics, the pod behind an address are all done
//! here again, from the API text), so that a mistake in one cannot hide in the property
//! tests that hold the two together. It shares only vocabulary types ([`Direction`],
//! [`Tier`], [`PolicyRef`], [`RuleRef`]) and the cluster objects themselves ([`PodInfo`]).
//!
//! # The rules
//!
//! Per direction (the source pod's egress, the destination pod's ingress), tiers in order
//! (`ClusterNetworkPolicy` API reference, `spec.tier`, `spec.priority`, rule `action`):
//! 1. **Admin** ClusterNetworkPolicies whose subject selects the pod and that have rules for
//!    the direction, by priority (lower first; equal priorities by name, Palisade's choice
//!    where the API leaves the order open), rules in written order: the first rule that
//!    matches decides. `Accept` and `Deny` are final for the direction; `Pass` skips the rest
//!    of the tier.
//! 2. **NetworkPolicy** (`networking.k8s.io/v1`): a pod is isolated in a direction iff some
//!    policy of its namespace selects it with that direction among its effective
//!    `policyTypes`; then the direction is allowed iff a rule of those policies allows it, and
//!    denied otherwise. Not isolated: on to Baseline.
//! 3. **Baseline** ClusterNetworkPolicies, as Admin (a `Pass` there skips to the default).
//! 4. Otherwise allowed.
//!
//! A connection passes iff the source's egress AND the destination's ingress allow it; an
//! egress `Accept` does not bypass the destination's ingress. Replies are allowed by
//! conntrack, not modelled here: this evaluates the first packet.
//!
//! Peers: selectors (NetworkPolicy `podSelector`/`namespaceSelector`, ClusterNetworkPolicy
//! `namespaces`/`pods`) match pods only, and only pods policy can select (not host-network,
//! whose address is the node's; not terminating; with an address). NetworkPolicy `ipBlock`
//! and ClusterNetworkPolicy `networks` match any address in the CIDR (except the excepts), pod
//! addresses included; `nodes` the addresses in `status.addresses` of matching nodes. A
//! NetworkPolicy rule without peers matches every peer, inside or outside the cluster.
//!
//! Ports: a named port is a port of the destination pod, in the packet's protocol. For
//! ingress that is the pod the policy protects; for egress the pod at the destination
//! address, whichever peer matched it (an `ipBlock` holding a pod's address included), and
//! nothing when the address is no pod's. ClusterNetworkPolicy `tcp`/`udp`/`sctp` without a
//! destination port match the whole protocol.
//!
//! Where Palisade enforces (and so where this model says "not enforced"): only on pods with a
//! node and an IP that are neither host-network nor terminating; ingress on the destination's
//! node, egress on the source's node. Traffic a host-network pod sends to a pod of its own node
//! comes from the node itself (kubelet probes and the like) and is always allowed.

use crate::model::api::{
    ClusterNetworkPolicy, ClusterNetworkPolicyPeer, ClusterNetworkPolicyRule, IntOrString,
    LabelSelector, NamespacedPod, NetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort,
};
use crate::model::policy::{Direction, PolicyRef, RuleRef, Tier};
use crate::model::{ClusterState, Labels, ObjectKey, PodInfo, Protocol};
use crate::ruleset::Family;
use serde::{Deserialize, Serialize};
use std::net::IpAddr;

/// One end of a packet.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Endpoint {
    Pod(ObjectKey),
    /// An address; when it belongs to a pod that policy can select, it stands for that pod.
    Ip(IpAddr),
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Endpoint::Pod(k) => write!(f, "{k}"),
            Endpoint::Ip(ip) => write!(f, "{ip}"),
        }
    }
}

/// The answer for one direction (the source's egress or the destination's ingress).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum DirectionVerdict {
    /// Palisade enforces nothing on this end (why: external address, host-network pod, ...).
    NotEnforced { reason: String },
    /// No tier decided: allowed. `passed`: the `Pass` rules that sent evaluation on.
    NotIsolated { passed: Vec<RuleRef> },
    /// NetworkPolicy isolation, and these rules allow the packet (all of them).
    Allowed {
        isolated_by: Vec<PolicyRef>,
        allowed_by: Vec<RuleRef>,
        passed: Vec<RuleRef>,
    },
    /// NetworkPolicy isolation, and no rule of the isolating policies allows the packet.
    Denied {
        isolated_by: Vec<PolicyRef>,
        passed: Vec<RuleRef>,
    },
    /// An Admin or Baseline ClusterNetworkPolicy rule accepted (`accepted`) or denied it.
    Decided {
        tier: Tier,
        rule: RuleRef,
        accepted: bool,
        passed: Vec<RuleRef>,
    },
}

impl DirectionVerdict {
    pub fn allows(&self) -> bool {
        match self {
            DirectionVerdict::Denied { .. } => false,
            DirectionVerdict::Decided { accepted, .. } => *accepted,
            _ => true,
        }
    }

    /// The `Pass` rules on the way to the decision.
    pub fn passed(&self) -> &[RuleRef] {
        match self {
            DirectionVerdict::NotEnforced { .. } => &[],
            DirectionVerdict::NotIsolated { passed }
            | DirectionVerdict::Allowed { passed, .. }
            | DirectionVerdict::Denied { passed, .. }
            | DirectionVerdict::Decided { passed, .. } => passed,
        }
    }
}

/// Why a packet is allowed or not.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Explanation {
    pub src: Endpoint,
    pub src_ip: IpAddr,
    pub dst: Endpoint,
    pub dst_ip: IpAddr,
    pub protocol: Protocol,
    pub port: u16,
    /// The source pod's egress.
    pub egress: DirectionVerdict,
    /// The destination pod's ingress.
    pub ingress: DirectionVerdict,
}

impl Explanation {
    pub fn allowed(&self) -> bool {
        self.egress.allows() && self.ingress.allows()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EndpointError {
    #[error("no pod {0}")]
    UnknownPod(ObjectKey),
    #[error("pod {0} has no IP address")]
    NoAddress(ObjectKey),
    #[error("{src} and {dst} have no address family in common")]
    NoCommonFamily { src: String, dst: String },
}

/// Is `proto` to `port` allowed from `src` to `dst`? Picks the address family both ends have
/// (IPv4 first); `false` when they have none in common or a pod is unknown or has no IP.
pub fn allowed(
    state: &ClusterState,
    src: &Endpoint,
    dst: &Endpoint,
    proto: Protocol,
    port: u16,
) -> bool {
    explain(state, src, dst, proto, port).is_ok_and(|e| e.allowed())
}

/// [`allowed`] with the reasons, in the first family both ends have.
pub fn explain(
    state: &ClusterState,
    src: &Endpoint,
    dst: &Endpoint,
    proto: Protocol,
    port: u16,
) -> Result<Explanation, EndpointError> {
    let mut last_err = None;
    for family in [Family::Ipv4, Family::Ipv6] {
        match explain_in_family(state, src, dst, proto, port, family) {
            Ok(e) => return Ok(e),
            Err(e @ EndpointError::UnknownPod(_)) => return Err(e),
            Err(e) => last_err = Some(e),
        }
    }
    Err(last_err.unwrap_or_else(|| EndpointError::NoCommonFamily {
        src: src.to_string(),
        dst: dst.to_string(),
    }))
}

/// [`explain`] for one address family (dual-stack pods have one answer per family: address
/// blocks are per family).
pub fn explain_in_family(
    state: &ClusterState,
    src: &Endpoint,
    dst: &Endpoint,
    proto: Protocol,
    port: u16,
    family: Family,
) -> Result<Explanation, EndpointError> {
    let (src_ip, src_pod) = resolve(state, src, family)?;
    let (dst_ip, dst_pod) = resolve(state, dst, family)?;
    let packet = Packet {
        state,
        src_ip,
        src_pod,
        dst_ip,
        dst_pod,
        proto,
        port,
    };
    let egress = match src_pod {
        None => DirectionVerdict::NotEnforced {
            reason: "source is not a pod".into(),
        },
        Some(p) => match not_enforced(p) {
            Some(reason) => DirectionVerdict::NotEnforced { reason },
            None => packet.verdict(p, Direction::Egress),
        },
    };
    // The node itself (its own address, or a host-network pod, which has it) talking to its
    // pods: kubelet probes and the like, never filtered.
    let from_own_node = dst_pod.and_then(|d| d.node.as_deref()).is_some_and(|node| {
        src_pod.is_some_and(|s| s.host_network && s.node.as_deref() == Some(node))
            || state
                .nodes
                .get(node)
                .is_some_and(|n| n.addresses.contains(&src_ip))
    });
    let ingress = match dst_pod {
        None => DirectionVerdict::NotEnforced {
            reason: "destination is not a pod".into(),
        },
        Some(_) if from_own_node => DirectionVerdict::NotEnforced {
            reason: "traffic from the destination's own node is always allowed".into(),
        },
        Some(p) => match not_enforced(p) {
            Some(reason) => DirectionVerdict::NotEnforced { reason },
            None => packet.verdict(p, Direction::Ingress),
        },
    };
    Ok(Explanation {
        src: src.clone(),
        src_ip,
        dst: dst.clone(),
        dst_ip,
        protocol: proto,
        port,
        egress,
        ingress,
    })
}

/// Whether policy can select this pod at all: it has an address of its own (not the node's,
/// as a host-network pod has) and is not going away.
fn is_policy_pod(pod: &PodInfo) -> bool {
    !pod.host_network && !pod.terminating && !pod.ips.is_empty()
}

/// Why Palisade enforces nothing on this pod, if it does not.
fn not_enforced(p: &PodInfo) -> Option<String> {
    let reason = if p.host_network {
        "host-network pod"
    } else if p.terminating {
        "terminating pod"
    } else if p.ips.is_empty() {
        "pod without IP"
    } else if p.node.is_none() {
        "pod not scheduled on a node"
    } else {
        return None;
    };
    Some(reason.into())
}

fn resolve<'a>(
    state: &'a ClusterState,
    ep: &Endpoint,
    family: Family,
) -> Result<(IpAddr, Option<&'a PodInfo>), EndpointError> {
    match ep {
        Endpoint::Pod(key) => {
            let pod = state
                .pods
                .get(key)
                .ok_or_else(|| EndpointError::UnknownPod(key.clone()))?;
            if pod.ips.is_empty() {
                return Err(EndpointError::NoAddress(key.clone()));
            }
            let ip = pod
                .ips
                .iter()
                .find(|ip| Family::of(ip) == family)
                .ok_or_else(|| EndpointError::NoCommonFamily {
                    src: key.to_string(),
                    dst: format!("{family:?}"),
                })?;
            Ok((*ip, Some(pod)))
        }
        Endpoint::Ip(ip) => {
            if Family::of(ip) != family {
                return Err(EndpointError::NoCommonFamily {
                    src: ip.to_string(),
                    dst: format!("{family:?}"),
                });
            }
            Ok((*ip, pod_at(state, ip)))
        }
    }
}

/// The pod that policy sees at `ip`: a pod policy can select holding it.
fn pod_at<'a>(state: &'a ClusterState, ip: &IpAddr) -> Option<&'a PodInfo> {
    state
        .pods
        .values()
        .find(|p| is_policy_pod(p) && p.ips.contains(ip))
}

// ---- label selectors (k8s.io/apimachinery/pkg/labels), written out again ----

/// `matchLabels` and `matchExpressions` all hold; an empty selector selects everything; an
/// unknown operator selects nothing.
fn selects(selector: &LabelSelector, labels: &Labels) -> bool {
    let labels_hold = selector
        .match_labels
        .iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v));
    let expressions_hold = selector.match_expressions.iter().flatten().all(|e| {
        let have = labels.get(&e.key);
        let values = e.values.clone().unwrap_or_default();
        match e.operator.as_str() {
            "In" => have.is_some_and(|v| values.contains(v)),
            "NotIn" => match have {
                None => true,
                Some(v) => !values.contains(v),
            },
            "Exists" => have.is_some(),
            "DoesNotExist" => have.is_none(),
            _ => false,
        }
    });
    labels_hold && expressions_hold
}

/// The labels of a namespace; one never seen has none (an empty selector still selects it).
fn namespace_labels<'a>(state: &'a ClusterState, ns: &str) -> Option<&'a Labels> {
    state.namespaces.get(ns)
}

fn namespace_selected(state: &ClusterState, selector: &LabelSelector, ns: &str) -> bool {
    match namespace_labels(state, ns) {
        Some(labels) => selects(selector, labels),
        // A namespace not seen (yet) has no labels one could match: only a selector of
        // everything includes it.
        None => is_empty(selector),
    }
}

fn is_empty(selector: &LabelSelector) -> bool {
    selector.match_labels.as_ref().is_none_or(|m| m.is_empty())
        && selector
            .match_expressions
            .as_ref()
            .is_none_or(|e| e.is_empty())
}

/// A NetworkPolicy rule's peers and ports.
type NpRule<'a> = (
    Option<&'a [NetworkPolicyPeer]>,
    Option<&'a [NetworkPolicyPort]>,
);

/// A packet with both ends resolved. `*_pod` is the pod at that address, if any (also
/// host-network and terminating pods: enforcement decides what to do with them).
struct Packet<'a> {
    state: &'a ClusterState,
    src_ip: IpAddr,
    src_pod: Option<&'a PodInfo>,
    dst_ip: IpAddr,
    dst_pod: Option<&'a PodInfo>,
    proto: Protocol,
    port: u16,
}

/// The first matching rule of a tier: which, and its action.
enum TierOutcome {
    Accept(RuleRef),
    Deny(RuleRef),
    Pass(RuleRef),
    NoMatch,
}

impl Packet<'_> {
    /// The far end of a rule: the source for ingress, the destination for egress, and the
    /// pod policy sees there.
    fn far(&self, direction: Direction) -> (IpAddr, Option<&PodInfo>) {
        let (ip, pod) = match direction {
            Direction::Ingress => (self.src_ip, self.src_pod),
            Direction::Egress => (self.dst_ip, self.dst_pod),
        };
        (ip, pod.filter(|p| is_policy_pod(p)))
    }

    /// The pod whose named ports a rule's named port refers to: the destination (for
    /// ingress, the protected pod; for egress the pod at the destination address).
    fn port_owner(&self) -> Option<&PodInfo> {
        self.dst_pod.filter(|p| is_policy_pod(p))
    }

    fn named_port_matches(&self, name: &str) -> bool {
        self.port_owner().is_some_and(|pod| {
            pod.named_ports
                .iter()
                .any(|np| np.name == name && np.protocol == self.proto && np.port == self.port)
        })
    }

    fn verdict(&self, pod: &PodInfo, direction: Direction) -> DirectionVerdict {
        let mut passed = Vec::new();
        match self.cluster_tier(pod, direction, "Admin") {
            TierOutcome::Accept(rule) => {
                return DirectionVerdict::Decided {
                    tier: Tier::Admin,
                    rule,
                    accepted: true,
                    passed,
                }
            }
            TierOutcome::Deny(rule) => {
                return DirectionVerdict::Decided {
                    tier: Tier::Admin,
                    rule,
                    accepted: false,
                    passed,
                }
            }
            TierOutcome::Pass(rule) => passed.push(rule),
            TierOutcome::NoMatch => {}
        }
        let isolated_by = self.isolating(pod, direction);
        if !isolated_by.is_empty() {
            let allowed_by = self.network_policy_allows(&isolated_by, direction);
            let isolated_by = isolated_by
                .iter()
                .map(|(key, _)| PolicyRef::network(key))
                .collect();
            return if allowed_by.is_empty() {
                DirectionVerdict::Denied {
                    isolated_by,
                    passed,
                }
            } else {
                DirectionVerdict::Allowed {
                    isolated_by,
                    allowed_by,
                    passed,
                }
            };
        }
        match self.cluster_tier(pod, direction, "Baseline") {
            TierOutcome::Accept(rule) => DirectionVerdict::Decided {
                tier: Tier::Baseline,
                rule,
                accepted: true,
                passed,
            },
            TierOutcome::Deny(rule) => DirectionVerdict::Decided {
                tier: Tier::Baseline,
                rule,
                accepted: false,
                passed,
            },
            TierOutcome::Pass(rule) => {
                passed.push(rule);
                DirectionVerdict::NotIsolated { passed }
            }
            TierOutcome::NoMatch => DirectionVerdict::NotIsolated { passed },
        }
    }

    // ---- ClusterNetworkPolicy ----

    fn cluster_tier(&self, pod: &PodInfo, direction: Direction, tier: &str) -> TierOutcome {
        let mut policies: Vec<&ClusterNetworkPolicy> = self
            .state
            .cluster_network_policies
            .values()
            .filter(|p| p.spec.tier.as_deref() == Some(tier))
            .filter(|p| cnp_rules(p, direction).is_some_and(|r| !r.is_empty()))
            .filter(|p| self.subject_selects(p, pod))
            .collect();
        policies.sort_by(|a, b| {
            (a.spec.priority, &a.metadata.name).cmp(&(b.spec.priority, &b.metadata.name))
        });
        for policy in policies {
            for (index, rule) in cnp_rules(policy, direction)
                .into_iter()
                .flatten()
                .enumerate()
            {
                let Some(deny_all) = self.cnp_rule_matches(rule, direction) else {
                    continue;
                };
                let rule_ref = RuleRef {
                    policy: PolicyRef::cluster(policy.metadata.name.as_str()),
                    direction,
                    index,
                };
                return match (rule.action.as_deref(), deny_all) {
                    (Some("Accept"), false) => TierOutcome::Accept(rule_ref),
                    (Some("Pass"), false) => TierOutcome::Pass(rule_ref),
                    _ => TierOutcome::Deny(rule_ref),
                };
            }
        }
        TierOutcome::NoMatch
    }

    fn subject_selects(&self, policy: &ClusterNetworkPolicy, pod: &PodInfo) -> bool {
        let ns = pod.key.namespace.as_str();
        match &policy.spec.subject {
            Some(subject) => match (&subject.namespaces, &subject.pods) {
                (Some(namespaces), None) => namespace_selected(self.state, namespaces, ns),
                (None, Some(pods)) => self.namespaced_pod_selects(pods, pod),
                _ => false,
            },
            None => false,
        }
    }

    fn namespaced_pod_selects(&self, sel: &NamespacedPod, pod: &PodInfo) -> bool {
        let all = LabelSelector::default();
        namespace_selected(
            self.state,
            sel.namespace_selector.as_ref().unwrap_or(&all),
            &pod.key.namespace,
        ) && selects(sel.pod_selector.as_ref().unwrap_or(&all), &pod.labels)
    }

    /// `Some(false)`: the rule matches; `Some(true)`: it matches as "deny everything" (a peer
    /// with no field set, the API's fail-closed reading for Deny and Pass); `None`: no match.
    fn cnp_rule_matches(
        &self,
        rule: &ClusterNetworkPolicyRule,
        direction: Direction,
    ) -> Option<bool> {
        let peers = match direction {
            Direction::Ingress => rule.from.as_deref(),
            Direction::Egress => rule.to.as_deref(),
        }
        .unwrap_or_default();
        let accept = rule.action.as_deref() == Some("Accept");
        if !accept && peers.iter().any(|p| cnp_peer_is_empty(p, direction)) {
            return Some(true);
        }
        let peer_ok = peers.iter().any(|p| self.cnp_peer_matches(p, direction));
        let ports_ok = match &rule.protocols {
            None => true,
            Some(protocols) => protocols.iter().any(|p| {
                let numbered = |proto: Protocol, port: &Option<crate::model::api::ProtocolPort>| {
                    let Some(port) = port else { return false };
                    if proto != self.proto {
                        return false;
                    }
                    let n = i64::from(self.port);
                    match &port.destination_port {
                        None => true,
                        Some(d) => {
                            d.number == Some(n)
                                || d.range.as_ref().is_some_and(|r| {
                                    r.start.is_some_and(|s| s <= n) && r.end.is_some_and(|e| n <= e)
                                })
                        }
                    }
                };
                numbered(Protocol::Tcp, &p.tcp)
                    || numbered(Protocol::Udp, &p.udp)
                    || numbered(Protocol::Sctp, &p.sctp)
                    || p.destination_named_port
                        .as_deref()
                        .is_some_and(|name| self.named_port_matches(name))
            }),
        };
        (peer_ok && ports_ok).then_some(false)
    }

    fn cnp_peer_matches(&self, peer: &ClusterNetworkPolicyPeer, direction: Direction) -> bool {
        let (ip, pod) = self.far(direction);
        let by_namespaces = peer.namespaces.as_ref().is_some_and(|sel| {
            pod.is_some_and(|p| namespace_selected(self.state, sel, &p.key.namespace))
        });
        let by_pods = peer
            .pods
            .as_ref()
            .is_some_and(|sel| pod.is_some_and(|p| self.namespaced_pod_selects(sel, p)));
        if direction == Direction::Ingress {
            // Ingress peers are pods only.
            return by_namespaces || by_pods;
        }
        let by_nodes = peer.nodes.as_ref().is_some_and(|sel| {
            self.state
                .nodes
                .values()
                .any(|n| selects(sel, &n.labels) && n.addresses.contains(&ip))
        });
        let by_networks = peer.networks.iter().flatten().any(|cidr| {
            cidr.parse::<ipnet::IpNet>()
                .is_ok_and(|net| net.trunc().contains(&ip))
        });
        by_namespaces || by_pods || by_nodes || by_networks
    }

    // ---- NetworkPolicy ----

    /// The NetworkPolicies that isolate `pod` in `direction`.
    fn isolating(&self, pod: &PodInfo, direction: Direction) -> Vec<(&ObjectKey, &NetworkPolicy)> {
        self.state
            .network_policies
            .iter()
            .filter(|(key, policy)| {
                key.namespace == pod.key.namespace
                    && has_policy_type(policy, direction)
                    && selects(&policy.spec.pod_selector, &pod.labels)
            })
            .collect()
    }

    /// Every rule of `policies` that allows the packet.
    fn network_policy_allows(
        &self,
        policies: &[(&ObjectKey, &NetworkPolicy)],
        direction: Direction,
    ) -> Vec<RuleRef> {
        let mut out = Vec::new();
        for (key, policy) in policies {
            let spec = &policy.spec;
            // A rule as (peers, ports): `from` or `to`.
            let rules: Vec<NpRule> = match direction {
                Direction::Ingress => spec
                    .ingress
                    .iter()
                    .flatten()
                    .map(|r| (r.from.as_deref(), r.ports.as_deref()))
                    .collect(),
                Direction::Egress => spec
                    .egress
                    .iter()
                    .flatten()
                    .map(|r| (r.to.as_deref(), r.ports.as_deref()))
                    .collect(),
            };
            for (index, (peers, ports)) in rules.into_iter().enumerate() {
                if self.np_peers_match(key, peers, direction) && self.np_ports_match(ports) {
                    out.push(RuleRef {
                        policy: PolicyRef::network(key),
                        direction,
                        index,
                    });
                }
            }
        }
        out
    }

    fn np_peers_match(
        &self,
        policy: &ObjectKey,
        peers: Option<&[NetworkPolicyPeer]>,
        direction: Direction,
    ) -> bool {
        let peers = match peers {
            None | Some([]) => return true,
            Some(p) => p,
        };
        let (ip, pod) = self.far(direction);
        peers.iter().any(|peer| {
            if let Some(block) = &peer.ip_block {
                let inside = |cidr: &str| {
                    cidr.parse::<ipnet::IpNet>()
                        .is_ok_and(|net| net.trunc().contains(&ip))
                };
                return inside(&block.cidr) && !block.except.iter().flatten().any(|e| inside(e));
            }
            let Some(pod) = pod else { return false };
            let ns = pod.key.namespace.as_str();
            match (&peer.pod_selector, &peer.namespace_selector) {
                (None, None) => false,
                // podSelector alone: pods of the policy's own namespace.
                (Some(pods), None) => ns == policy.namespace && selects(pods, &pod.labels),
                (pods, Some(namespaces)) => {
                    namespace_selected(self.state, namespaces, ns)
                        && pods.as_ref().is_none_or(|s| selects(s, &pod.labels))
                }
            }
        })
    }

    fn np_ports_match(&self, ports: Option<&[NetworkPolicyPort]>) -> bool {
        let ports = match ports {
            None | Some([]) => return true,
            Some(p) => p,
        };
        ports.iter().any(|p| {
            let proto = match p.protocol.as_deref() {
                None | Some("TCP") => Protocol::Tcp,
                Some("UDP") => Protocol::Udp,
                Some("SCTP") => Protocol::Sctp,
                Some(_) => return false,
            };
            if proto != self.proto {
                return false;
            }
            match &p.port {
                None => true,
                Some(IntOrString::Int(n)) => {
                    let end = p.end_port.unwrap_or(*n);
                    i64::from(*n) <= i64::from(self.port) && i64::from(self.port) <= i64::from(end)
                }
                Some(IntOrString::String(name)) => self.named_port_matches(name),
            }
        })
    }
}

fn cnp_rules(
    policy: &ClusterNetworkPolicy,
    direction: Direction,
) -> Option<&[ClusterNetworkPolicyRule]> {
    match direction {
        Direction::Ingress => policy.spec.ingress.as_deref(),
        Direction::Egress => policy.spec.egress.as_deref(),
    }
}

fn cnp_peer_is_empty(peer: &ClusterNetworkPolicyPeer, direction: Direction) -> bool {
    let pods = peer.namespaces.is_none() && peer.pods.is_none();
    match direction {
        Direction::Ingress => pods,
        Direction::Egress => pods && peer.nodes.is_none() && peer.networks.is_none(),
    }
}

/// `policyTypes` as the API server defaults it (`SetDefaults_NetworkPolicySpec`): when the
/// field is absent or empty, `Ingress` always and `Egress` iff the policy has a NON-EMPTY
/// `egress` list (`len(spec.Egress) != 0`: `egress: []` alone does not add Egress).
fn has_policy_type(policy: &NetworkPolicy, direction: Direction) -> bool {
    let wanted = match direction {
        Direction::Ingress => "Ingress",
        Direction::Egress => "Egress",
    };
    match policy.spec.policy_types.as_deref() {
        Some(types) if !types.is_empty() => types.iter().any(|t| t == wanted),
        _ => match direction {
            Direction::Ingress => true,
            Direction::Egress => policy.spec.egress.as_ref().is_some_and(|e| !e.is_empty()),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::api::{
        IpBlock, NetworkPolicyEgressRule, NetworkPolicyPeer, NetworkPolicyPort, NetworkPolicySpec,
        ObjectMeta,
    };
    use crate::model::{Labels, NamedPort};

    fn pod(ns: &str, name: &str, node: &str, ip: &str) -> PodInfo {
        PodInfo {
            key: ObjectKey::new(ns, name),
            node: Some(node.into()),
            labels: Labels::new(),
            ips: vec![ip.parse().unwrap()],
            host_network: false,
            terminating: false,
            named_ports: vec![NamedPort {
                name: "http".into(),
                port: 8080,
                protocol: Protocol::Tcp,
            }],
        }
    }

    fn state(spec: NetworkPolicySpec) -> ClusterState {
        let mut s = ClusterState::default();
        s.upsert_namespace("x", Labels::new());
        for p in [
            pod("x", "a", "n1", "10.0.0.1"),
            pod("x", "b", "n2", "10.0.0.2"),
        ] {
            s.pods.insert(p.key.clone(), p);
        }
        s.network_policies.insert(
            ObjectKey::new("x", "p"),
            NetworkPolicy {
                metadata: ObjectMeta {
                    namespace: "x".into(),
                    name: "p".into(),
                    ..Default::default()
                },
                spec,
                ..Default::default()
            },
        );
        s
    }

    fn a_to(s: &ClusterState, dst: Endpoint, port: u16) -> Explanation {
        explain(
            s,
            &Endpoint::Pod(ObjectKey::new("x", "a")),
            &dst,
            Protocol::Tcp,
            port,
        )
        .unwrap()
    }

    fn a_to_b(s: &ClusterState, port: u16) -> Explanation {
        a_to(s, Endpoint::Pod(ObjectKey::new("x", "b")), port)
    }

    fn cnp(s: &mut ClusterState, name: &str, spec: serde_json::Value) {
        let p: ClusterNetworkPolicy =
            serde_json::from_value(serde_json::json!({"metadata": {"name": name}, "spec": spec}))
                .unwrap();
        s.cluster_network_policies.insert(name.into(), p);
    }

    /// Upstream defaulting adds Egress only for a non-empty `egress` list (found by the
    /// scenario `policytypes-empty-egress-list`).
    #[test]
    fn empty_egress_list_without_policy_types_is_ingress_only() {
        let s = state(NetworkPolicySpec {
            egress: Some(vec![]),
            ..Default::default()
        });
        let e = a_to_b(&s, 80);
        assert_eq!(e.egress, DirectionVerdict::NotIsolated { passed: vec![] });
        assert!(matches!(e.ingress, DirectionVerdict::Denied { .. }));
    }

    /// A named port is the destination pod's port, also through an ipBlock that holds the
    /// pod's address; an address that is no pod's has no named ports.
    #[test]
    fn egress_named_port_resolves_on_the_pod_at_the_address() {
        let rule = |peer: NetworkPolicyPeer| NetworkPolicySpec {
            policy_types: Some(vec!["Egress".into()]),
            egress: Some(vec![NetworkPolicyEgressRule {
                to: Some(vec![peer]),
                ports: Some(vec![NetworkPolicyPort {
                    protocol: None,
                    port: Some(IntOrString::String("http".into())),
                    end_port: None,
                }]),
            }]),
            ..Default::default()
        };
        let by_block = state(rule(NetworkPolicyPeer {
            ip_block: Some(IpBlock {
                cidr: "10.0.0.0/8".into(),
                except: None,
            }),
            ..Default::default()
        }));
        assert!(a_to_b(&by_block, 8080).allowed());
        assert!(!a_to_b(&by_block, 80).allowed());
        let nobody = Endpoint::Ip("10.0.0.99".parse().unwrap());
        assert!(!a_to(&by_block, nobody, 8080).allowed());
        let by_selector = state(rule(NetworkPolicyPeer {
            pod_selector: Some(LabelSelector::default()),
            ..Default::default()
        }));
        assert!(a_to_b(&by_selector, 8080).allowed());
        assert!(!a_to_b(&by_selector, 80).allowed());
    }

    #[test]
    fn tiers_in_order_with_pass() {
        // x/b isolated for ingress by NetworkPolicy (allows nothing).
        let mut s = state(NetworkPolicySpec::default());
        assert!(!a_to_b(&s, 80).allowed());
        // Admin Accept overrides NetworkPolicy isolation.
        cnp(
            &mut s,
            "admin-accept",
            serde_json::json!({"tier": "Admin", "priority": 20,
            "subject": {"namespaces": {}},
            "ingress": [{"action": "Accept", "from": [{"namespaces": {}}]}]}),
        );
        let e = a_to_b(&s, 80);
        assert!(e.allowed());
        assert!(matches!(
            e.ingress,
            DirectionVerdict::Decided {
                tier: Tier::Admin,
                accepted: true,
                ..
            }
        ));
        // A Pass of lower priority value comes first and sends it back to NetworkPolicy.
        cnp(
            &mut s,
            "admin-pass",
            serde_json::json!({"tier": "Admin", "priority": 10,
            "subject": {"pods": {"podSelector": {}}},
            "ingress": [{"action": "Pass", "from": [{"pods": {"podSelector": {}}}],
                         "protocols": [{"tcp": {"destinationPort": {"number": 80}}}]}]}),
        );
        let e = a_to_b(&s, 80);
        assert!(!e.allowed());
        assert_eq!(e.ingress.passed().len(), 1);
        assert!(
            a_to_b(&s, 81).allowed(),
            "port 81: the Pass does not match, Accept does"
        );
        // Without NetworkPolicy, Baseline decides after the Pass.
        s.network_policies.clear();
        cnp(
            &mut s,
            "baseline-deny",
            serde_json::json!({"tier": "Baseline", "priority": 0,
            "subject": {"namespaces": {}},
            "ingress": [{"action": "Deny", "from": [{"namespaces": {}}]}]}),
        );
        let e = a_to_b(&s, 80);
        assert!(
            matches!(
                e.ingress,
                DirectionVerdict::Decided {
                    tier: Tier::Baseline,
                    accepted: false,
                    ..
                }
            ),
            "{e:?}"
        );
    }

    #[test]
    fn equal_priorities_go_by_name() {
        let mut s = state(NetworkPolicySpec {
            policy_types: Some(vec![]),
            ..Default::default()
        });
        s.network_policies.clear();
        for (name, action) in [("b-accept", "Accept"), ("a-deny", "Deny")] {
            cnp(
                &mut s,
                name,
                serde_json::json!({"tier": "Admin", "priority": 5,
                "subject": {"namespaces": {}},
                "egress": [{"action": action, "to": [{"networks": ["10.0.0.0/8"]}]}]}),
            );
        }
        assert!(!a_to_b(&s, 80).allowed());
    }

    #[test]
    fn nodes_peers_match_node_addresses() {
        let mut s = state(NetworkPolicySpec::default());
        s.network_policies.clear();
        s.nodes.insert(
            "n1".into(),
            crate::model::NodeInfo {
                name: "n1".into(),
                labels: [("role".to_string(), "db".to_string())].into(),
                addresses: vec!["192.168.0.1".parse().unwrap()],
                ..Default::default()
            },
        );
        cnp(
            &mut s,
            "no-db-nodes",
            serde_json::json!({"tier": "Admin", "priority": 1,
            "subject": {"namespaces": {}},
            "egress": [{"action": "Deny", "to": [{"nodes": {"matchLabels": {"role": "db"}}}]}]}),
        );
        assert!(!a_to(&s, Endpoint::Ip("192.168.0.1".parse().unwrap()), 22).allowed());
        assert!(a_to(&s, Endpoint::Ip("192.168.0.2".parse().unwrap()), 22).allowed());
        assert!(a_to_b(&s, 22).allowed());
    }

    #[test]
    fn host_network_pod_reaches_pods_of_its_own_node() {
        let mut s = state(NetworkPolicySpec::default()); // deny all ingress in x
        let mut host = pod("kube-system", "agent", "n2", "192.168.0.2");
        host.host_network = true;
        s.pods.insert(host.key.clone(), host.clone());
        let to_b = |s: &ClusterState| {
            explain(
                s,
                &Endpoint::Pod(host.key.clone()),
                &Endpoint::Pod(ObjectKey::new("x", "b")),
                Protocol::Tcp,
                80,
            )
            .unwrap()
        };
        assert!(to_b(&s).allowed(), "same node: from the node itself");
        let mut other = host.clone();
        other.node = Some("n1".into());
        s.pods.insert(other.key.clone(), other);
        assert!(
            !to_b(&s).allowed(),
            "another node: isolated ingress applies"
        );
    }
}
