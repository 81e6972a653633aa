//! The reference evaluator: NetworkPolicy (`networking.k8s.io/v1`) semantics written down
//! directly over [`ClusterState`], with no sets, chains or caches. It is the oracle the
//! compiled ruleset is tested against (property tests, scenario files), and it explains its
//! answers (`palisadectl explain`).
//!
//! The rules, from the API reference and the upstream conformance suite:
//! - A pod is isolated for ingress (egress) iff some policy of its namespace selects it and has
//!   `Ingress` (`Egress`) among its effective `policyTypes`. An isolated pod accepts (sends)
//!   only what the union of the rules of those policies allows; a pod that is not isolated
//!   allows everything in that direction.
//! - A connection passes iff the source's egress AND the destination's ingress allow it.
//!   Replies of allowed connections pass (conntrack), which is not modelled here: this
//!   evaluates the first packet.
//! - A rule allows a packet when one of its peers matches the other end (no peers: everyone,
//!   inside or outside the cluster) and one of its ports matches (no ports: everything).
//! - Selector peers match pods only: not host-network pods (their IP is the node's), not
//!   terminating ones, not pods without IPs. `ipBlock` matches any IP, pod IPs included.
//! - A named port resolves against the destination pod: for ingress the policy's target, for
//!   egress the destination peer. An egress named port needs the destination to be a pod some
//!   selector peer of the same rule selects (or the rule has no peers); it never matches
//!   through an `ipBlock` peer, which names addresses, not pods with ports.
//!
//! Where Palisade enforces (and so where this model says "not enforced"): only on pods with a
//! node and an IP that are neither host-network nor terminating; ingress on the destination's
//! node, egress on the source's node. Traffic a host-network pod sends to a pod of its own node
//! comes from the node itself (kubelet probes and the like) and is always allowed.

use crate::model::api::{
    IntOrString, NetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort, NetworkPolicySpec,
};
use crate::model::selector::PodSelection;
use crate::model::{ClusterState, ObjectKey, PodInfo, Protocol};
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

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Direction {
    Ingress,
    Egress,
}

impl std::fmt::Display for Direction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Direction::Ingress => "ingress",
            Direction::Egress => "egress",
        })
    }
}

/// `ns/name ingress[2]`: one rule of one policy.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct RuleRef {
    pub policy: ObjectKey,
    pub direction: Direction,
    pub index: usize,
}

impl std::fmt::Display for RuleRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}[{}]", self.policy, self.direction, self.index)
    }
}

/// The answer for one direction (the source's egress or the destination's ingress).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum DirectionVerdict {
    /// Palisade enforces nothing on this end (why: external address, host-network pod, ...).
    NotEnforced { reason: String },
    /// A pod no policy isolates in this direction.
    NotIsolated,
    /// Isolated, and these rules allow the packet (all of them, for explanations).
    Allowed {
        isolated_by: Vec<ObjectKey>,
        allowed_by: Vec<RuleRef>,
    },
    /// Isolated, and no rule of the isolating policies allows the packet.
    Denied { isolated_by: Vec<ObjectKey> },
}

impl DirectionVerdict {
    pub fn allows(&self) -> bool {
        !matches!(self, DirectionVerdict::Denied { .. })
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

/// Whether a pod can be selected by policy at all (as a target or a selector peer).
pub fn is_policy_pod(pod: &PodInfo) -> bool {
    !pod.host_network && !pod.terminating && !pod.ips.is_empty()
}

/// Whether policy is enforced on this pod (it has a node to enforce it on).
pub fn is_enforced_pod(pod: &PodInfo) -> bool {
    is_policy_pod(pod) && pod.node.is_some()
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

/// [`explain`] for one address family (dual-stack pods have one answer per family: ipBlocks
/// are per family).
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
    let flow = Flow {
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
        Some(p) => {
            if is_enforced_pod(p) {
                direction_verdict(state, p, Direction::Egress, &flow)
            } else {
                not_enforced_reason(p)
            }
        }
    };
    let from_own_node = src_pod.is_some_and(|s| {
        s.host_network && s.node.is_some() && dst_pod.is_some_and(|d| d.node == s.node)
    });
    let ingress = match dst_pod {
        None => DirectionVerdict::NotEnforced {
            reason: "destination is not a pod".into(),
        },
        Some(_) if from_own_node => DirectionVerdict::NotEnforced {
            reason: "traffic from the destination's own node is always allowed".into(),
        },
        Some(p) => {
            if is_enforced_pod(p) {
                direction_verdict(state, p, Direction::Ingress, &flow)
            } else {
                not_enforced_reason(p)
            }
        }
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

fn not_enforced_reason(p: &PodInfo) -> DirectionVerdict {
    let reason = if p.host_network {
        "host-network pod"
    } else if p.terminating {
        "terminating pod"
    } else if p.ips.is_empty() {
        "pod without IP"
    } else {
        "pod not scheduled on a node"
    };
    DirectionVerdict::NotEnforced {
        reason: reason.into(),
    }
}

/// A packet with both ends resolved. `*_pod` is the pod at that address, if any (also
/// host-network and terminating pods: enforcement decides what to do with them).
struct Flow<'a> {
    src_ip: IpAddr,
    src_pod: Option<&'a PodInfo>,
    dst_ip: IpAddr,
    dst_pod: Option<&'a PodInfo>,
    proto: Protocol,
    port: u16,
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
            Ok((*ip, pod_by_ip(state, ip)))
        }
    }
}

/// The pod that policy sees at `ip`: a live, non-host-network pod holding it.
pub fn pod_by_ip<'a>(state: &'a ClusterState, ip: &IpAddr) -> Option<&'a PodInfo> {
    state
        .pods
        .values()
        .find(|p| is_policy_pod(p) && p.ips.contains(ip))
}

/// A policy's effective `policyTypes` as (ingress, egress), with the API server's defaulting
/// when the field is absent or empty: `Ingress` always, `Egress` iff the policy has a
/// NON-EMPTY `egress` list (`SetDefaults_NetworkPolicySpec` tests `len(spec.Egress) != 0`, so
/// `egress: []` alone does not make a policy egress-isolating).
pub fn policy_types(spec: &NetworkPolicySpec) -> (bool, bool) {
    match &spec.policy_types {
        Some(types) if !types.is_empty() => (
            types.iter().any(|t| t == "Ingress"),
            types.iter().any(|t| t == "Egress"),
        ),
        _ => (true, spec.egress.as_ref().is_some_and(|e| !e.is_empty())),
    }
}

/// The policies that isolate `pod` in `direction`.
pub fn isolating_policies<'a>(
    state: &'a ClusterState,
    pod: &PodInfo,
    direction: Direction,
) -> Vec<(&'a ObjectKey, &'a NetworkPolicy)> {
    let ns_labels = state.namespaces.get(pod.key.namespace.as_str());
    state
        .policies
        .iter()
        .filter(|(key, policy)| {
            key.namespace == pod.key.namespace && {
                let (ingress, egress) = policy_types(&policy.spec);
                let has = match direction {
                    Direction::Ingress => ingress,
                    Direction::Egress => egress,
                };
                has && PodSelection::targets(&key.namespace, &policy.spec.pod_selector).matches(
                    &pod.key.namespace,
                    ns_labels,
                    &pod.labels,
                )
            }
        })
        .collect()
}

fn direction_verdict(
    state: &ClusterState,
    pod: &PodInfo,
    direction: Direction,
    flow: &Flow<'_>,
) -> DirectionVerdict {
    let policies = isolating_policies(state, pod, direction);
    if policies.is_empty() {
        return DirectionVerdict::NotIsolated;
    }
    let mut allowed_by = Vec::new();
    for (key, policy) in &policies {
        match direction {
            Direction::Ingress => {
                for (i, rule) in policy.spec.ingress.iter().flatten().enumerate() {
                    if rule_allows(
                        state,
                        key,
                        direction,
                        rule.from.as_deref(),
                        rule.ports.as_deref(),
                        flow,
                    ) {
                        allowed_by.push(RuleRef {
                            policy: (*key).clone(),
                            direction,
                            index: i,
                        });
                    }
                }
            }
            Direction::Egress => {
                for (i, rule) in policy.spec.egress.iter().flatten().enumerate() {
                    if rule_allows(
                        state,
                        key,
                        direction,
                        rule.to.as_deref(),
                        rule.ports.as_deref(),
                        flow,
                    ) {
                        allowed_by.push(RuleRef {
                            policy: (*key).clone(),
                            direction,
                            index: i,
                        });
                    }
                }
            }
        }
    }
    let isolated_by = policies.iter().map(|(k, _)| (*k).clone()).collect();
    if allowed_by.is_empty() {
        DirectionVerdict::Denied { isolated_by }
    } else {
        DirectionVerdict::Allowed {
            isolated_by,
            allowed_by,
        }
    }
}

fn rule_allows(
    state: &ClusterState,
    policy: &ObjectKey,
    direction: Direction,
    peers: Option<&[NetworkPolicyPeer]>,
    ports: Option<&[NetworkPolicyPort]>,
    flow: &Flow<'_>,
) -> bool {
    // The far end: the source for ingress, the destination for egress.
    let (peer_ip, peer_pod) = match direction {
        Direction::Ingress => (flow.src_ip, flow.src_pod),
        Direction::Egress => (flow.dst_ip, flow.dst_pod),
    };
    let peer_pod = peer_pod.filter(|p| is_policy_pod(p));
    let peers = peers.filter(|p| !p.is_empty());
    let peer_ok = match peers {
        None => true,
        Some(peers) => peers
            .iter()
            .any(|peer| peer_matches(state, policy, peer, peer_ip, peer_pod)),
    };
    if !peer_ok {
        return false;
    }
    let ports = match ports.filter(|p| !p.is_empty()) {
        None => return true,
        Some(p) => p,
    };
    ports.iter().any(|p| {
        if Protocol::parse_api(p.protocol.as_deref()) != Some(flow.proto) {
            return false;
        }
        match &p.port {
            None => true,
            Some(IntOrString::Int(n)) => {
                let end = p.end_port.unwrap_or(*n);
                i64::from(*n) <= i64::from(flow.port) && i64::from(flow.port) <= i64::from(end)
            }
            Some(IntOrString::String(name)) => {
                // The pod that declares the port: the destination in both directions.
                let owner = match direction {
                    Direction::Ingress => flow.dst_pod,
                    Direction::Egress => {
                        // Only through a selector peer (or no peers at all).
                        let through_selector = match peers {
                            None => true,
                            Some(peers) => peers.iter().any(|peer| {
                                peer.ip_block.is_none()
                                    && peer_matches(state, policy, peer, peer_ip, peer_pod)
                            }),
                        };
                        peer_pod.filter(|_| through_selector)
                    }
                };
                owner.is_some_and(|pod| pod.resolve_named_port(name, flow.proto) == Some(flow.port))
            }
        }
    })
}

fn peer_matches(
    state: &ClusterState,
    policy: &ObjectKey,
    peer: &NetworkPolicyPeer,
    ip: IpAddr,
    pod: Option<&PodInfo>,
) -> bool {
    if let Some(block) = &peer.ip_block {
        return ip_block_contains(&block.cidr, block.except.as_deref().unwrap_or(&[]), ip);
    }
    let Some(selection) = PodSelection::of_peer(&policy.namespace, peer) else {
        return false;
    };
    pod.is_some_and(|p| {
        selection.matches(
            &p.key.namespace,
            state.namespaces.get(p.key.namespace.as_str()),
            &p.labels,
        )
    })
}

/// `ip` is inside `cidr` and outside every `except`. Unparsable CIDRs (rejected by
/// validation) contain nothing. A CIDR with host bits set (`10.0.0.5/8`) means its network.
pub fn ip_block_contains(cidr: &str, except: &[String], ip: IpAddr) -> bool {
    let Ok(net) = cidr.parse::<ipnet::IpNet>() else {
        return false;
    };
    net.trunc().contains(&ip)
        && !except.iter().any(|e| {
            e.parse::<ipnet::IpNet>()
                .is_ok_and(|n| n.trunc().contains(&ip))
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::api::{
        IpBlock, LabelSelector, NetworkPolicyEgressRule, NetworkPolicyPeer, NetworkPolicyPort,
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
        s.policies.insert(
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

    fn a_to_b(s: &ClusterState, port: u16) -> Explanation {
        explain(
            s,
            &Endpoint::Pod(ObjectKey::new("x", "a")),
            &Endpoint::Pod(ObjectKey::new("x", "b")),
            Protocol::Tcp,
            port,
        )
        .unwrap()
    }

    /// Upstream defaulting adds Egress only for a non-empty `egress` list (found by the
    /// scenario `policytypes-empty-egress-list`; `effective_policy_types` gets it wrong).
    #[test]
    fn empty_egress_list_without_policy_types_is_ingress_only() {
        let s = state(NetworkPolicySpec {
            egress: Some(vec![]),
            ..Default::default()
        });
        let e = a_to_b(&s, 80);
        assert_eq!(e.egress, DirectionVerdict::NotIsolated);
        assert!(matches!(e.ingress, DirectionVerdict::Denied { .. }));
        assert_eq!(
            policy_types(&s.policies[&ObjectKey::new("x", "p")].spec),
            (true, false)
        );
    }

    #[test]
    fn egress_named_port_needs_a_selector_peer() {
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
        assert!(!a_to_b(&by_block, 8080).allowed());
        let by_selector = state(rule(NetworkPolicyPeer {
            pod_selector: Some(LabelSelector::default()),
            ..Default::default()
        }));
        assert!(a_to_b(&by_selector, 8080).allowed());
        assert!(!a_to_b(&by_selector, 80).allowed());
    }

    #[test]
    fn ip_block_uses_the_network_of_a_cidr_with_host_bits() {
        assert!(ip_block_contains(
            "10.0.0.5/8",
            &[],
            "10.9.9.9".parse().unwrap()
        ));
        assert!(!ip_block_contains(
            "10.0.0.0/8",
            &["10.9.0.0/16".into()],
            "10.9.9.9".parse().unwrap()
        ));
        assert!(!ip_block_contains(
            "10.0.0.0/8",
            &[],
            "fd00::1".parse().unwrap()
        ));
        assert!(!ip_block_contains(
            "bogus",
            &[],
            "10.0.0.1".parse().unwrap()
        ));
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
