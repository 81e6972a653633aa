//! `policy.networking.k8s.io/v1alpha2` ClusterNetworkPolicy → [`Policy`] in the Admin or
//! Baseline tier.
//!
//! - The subject is `subject.namespaces` (every pod of the matching namespaces) or
//!   `subject.pods` (pods matching `podSelector` in namespaces matching `namespaceSelector`).
//! - A direction with no rules (absent or empty list) is not affected by the policy.
//! - Peers: `namespaces` and `pods` are pod selections; `networks` one address block per
//!   CIDR (its network: host bits are ignored); `nodes` the nodes' addresses.
//! - Protocols: absent is every protocol and port; `tcp`/`udp`/`sctp` without
//!   `destinationPort` the whole protocol (the upstream schema asks for a port there; the
//!   shared scenario samples write `tcp: {}`, so Palisade's CRD accepts it with this
//!   meaning); a `range` is inclusive; `destinationNamedPort` names a port of the destination
//!   pod in whichever protocol the pod declares it.
//!
//! Objects that fail validation are never translated by the agent; for the few fields whose
//! absence would leave no meaning (`tier`, `priority`, `subject`) the translator gives `None`.

use super::network_policy::except_list;
use super::{Action, Peer, Policy, PolicyRef, PortMatch, Rule, Tier};
use crate::model::api::{
    ClusterNetworkPolicy, ClusterNetworkPolicyPeer, ClusterNetworkPolicyProtocol,
    ClusterNetworkPolicyRule, ClusterNetworkPolicySubject, CnpPort, LabelSelector, NamespacedPod,
    ProtocolPort,
};
use crate::model::selector::{canonical_selector, NamespaceScope, PodSelection};
use crate::model::Protocol;
use ipnet::IpNet;

pub fn from_cluster_network_policy(policy: &ClusterNetworkPolicy) -> Option<Policy> {
    let spec = &policy.spec;
    let tier = match spec.tier.as_deref()? {
        "Admin" => Tier::Admin,
        "Baseline" => Tier::Baseline,
        _ => return None,
    };
    let priority = u32::try_from(spec.priority?).ok()?;
    let subject = subject_of(spec.subject.as_ref()?)?;
    let rules = |rules: &Option<Vec<ClusterNetworkPolicyRule>>, ingress: bool| {
        let rules = rules.as_ref().filter(|r| !r.is_empty())?;
        Some(
            rules
                .iter()
                .map(|r| rule_of(r, ingress))
                .collect::<Vec<Rule>>(),
        )
    };
    Some(Policy {
        id: PolicyRef::cluster(policy.metadata.name.as_str()),
        tier,
        priority,
        subject,
        ingress: rules(&spec.ingress, true),
        egress: rules(&spec.egress, false),
    })
}

fn subject_of(subject: &ClusterNetworkPolicySubject) -> Option<PodSelection> {
    match (&subject.namespaces, &subject.pods) {
        (Some(namespaces), None) => Some(namespaces_selection(namespaces)),
        (None, Some(pods)) => Some(pods_selection(pods)),
        _ => None,
    }
}

fn namespaces_selection(namespaces: &LabelSelector) -> PodSelection {
    PodSelection {
        namespaces: NamespaceScope::Matching(canonical_selector(namespaces)),
        pods: LabelSelector::default(),
    }
}

fn pods_selection(pods: &NamespacedPod) -> PodSelection {
    PodSelection {
        namespaces: NamespaceScope::Matching(
            pods.namespace_selector
                .as_ref()
                .map(canonical_selector)
                .unwrap_or_default(),
        ),
        pods: pods
            .pod_selector
            .as_ref()
            .map(canonical_selector)
            .unwrap_or_default(),
    }
}

fn rule_of(rule: &ClusterNetworkPolicyRule, ingress: bool) -> Rule {
    let mut action = match rule.action.as_deref() {
        Some("Accept") => Action::Accept,
        Some("Pass") => Action::Pass,
        // Deny, and (never validated) anything else: fail closed.
        _ => Action::Deny,
    };
    let written = if ingress { &rule.from } else { &rule.to };
    let mut peers = Vec::new();
    let mut empty_peer = false;
    for peer in written.iter().flatten() {
        let before = peers.len();
        peers_of(peer, ingress, &mut peers);
        empty_peer |= peers.len() == before && peer_is_empty(peer, ingress);
    }
    let mut peers = Some(peers);
    if empty_peer && action != Action::Accept {
        // The API's "fail closed" for a peer with no field set (an unknown peer kind): an
        // Accept rule matches nothing through it, a Deny or Pass rule denies everything.
        action = Action::Deny;
        peers = None;
    }
    Rule {
        name: rule.name.clone().filter(|n| !n.is_empty()),
        action,
        peers,
        ports: rule
            .protocols
            .as_ref()
            .map(|p| p.iter().flat_map(ports_of).collect()),
    }
}

fn peer_is_empty(peer: &ClusterNetworkPolicyPeer, ingress: bool) -> bool {
    peer.namespaces.is_none()
        && peer.pods.is_none()
        && (ingress || (peer.nodes.is_none() && peer.networks.is_none()))
}

fn peers_of(peer: &ClusterNetworkPolicyPeer, ingress: bool, out: &mut Vec<Peer>) {
    if let Some(namespaces) = &peer.namespaces {
        out.push(Peer::Pods(namespaces_selection(namespaces)));
    }
    if let Some(pods) = &peer.pods {
        out.push(Peer::Pods(pods_selection(pods)));
    }
    if ingress {
        // Ingress peers are pods only (the schema prunes anything else).
        return;
    }
    if let Some(nodes) = &peer.nodes {
        out.push(Peer::Nodes(canonical_selector(nodes)));
    }
    for network in peer.networks.iter().flatten() {
        // An unparsable CIDR (validation rejects it) matches nothing.
        if let Ok(cidr) = network.parse::<IpNet>() {
            let cidr = cidr.trunc();
            out.push(Peer::Network {
                except: except_list(&cidr, std::iter::empty()),
                cidr,
            });
        }
    }
}

fn ports_of(protocol: &ClusterNetworkPolicyProtocol) -> Vec<PortMatch> {
    let numbered = |p: Protocol, port: &ProtocolPort| {
        let (first, last) = match &port.destination_port {
            None => Some((0, u16::MAX)),
            Some(CnpPort {
                number: Some(n), ..
            }) => u16::try_from(*n).ok().map(|n| (n, n)),
            Some(CnpPort { range: Some(r), .. }) => match (r.start, r.end) {
                (Some(a), Some(b)) => u16::try_from(a).ok().zip(u16::try_from(b).ok()),
                _ => None,
            },
            Some(_) => None,
        }
        .filter(|(a, b)| a <= b)?;
        Some(PortMatch::Ports {
            protocol: p,
            first,
            last,
        })
    };
    let mut out = Vec::new();
    for (p, port) in [
        (Protocol::Tcp, &protocol.tcp),
        (Protocol::Udp, &protocol.udp),
        (Protocol::Sctp, &protocol.sctp),
    ] {
        out.extend(port.as_ref().and_then(|port| numbered(p, port)));
    }
    if let Some(name) = &protocol.destination_named_port {
        out.extend(
            Protocol::all()
                .into_iter()
                .map(|protocol| PortMatch::Named {
                    name: name.clone(),
                    protocol,
                }),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::policy::Direction;

    fn policy(spec: serde_json::Value) -> Option<Policy> {
        let p: ClusterNetworkPolicy = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "c"}, "spec": spec
        }))
        .unwrap();
        from_cluster_network_policy(&p)
    }

    #[test]
    fn tiers_subjects_and_directions() {
        let p = policy(serde_json::json!({
            "tier": "Admin", "priority": 7,
            "subject": {"namespaces": {"matchLabels": {"team": "a"}}},
            "ingress": [{"action": "Pass", "from": [{"namespaces": {}}]}],
            "egress": [],
        }))
        .unwrap();
        assert_eq!((p.tier, p.priority), (Tier::Admin, 7));
        assert_eq!(p.id.to_string(), "ClusterNetworkPolicy/c");
        assert_eq!(p.rules(Direction::Egress), None, "no rules: not affected");
        assert_eq!(p.rules(Direction::Ingress).unwrap()[0].action, Action::Pass);
        assert!(p.subject.matches(
            "y",
            Some(&[("team".into(), "a".into())].into()),
            &Default::default()
        ));
        let b = policy(serde_json::json!({
            "tier": "Baseline", "priority": 0,
            "subject": {"pods": {"podSelector": {"matchLabels": {"app": "web"}}}},
        }))
        .unwrap();
        assert_eq!(b.tier, Tier::Baseline);
        assert!(b
            .subject
            .matches("any", None, &[("app".into(), "web".into())].into()));
        assert!(policy(
            serde_json::json!({"tier": "Other", "priority": 1, "subject": {"namespaces": {}}})
        )
        .is_none());
    }

    #[test]
    fn peers_and_protocols() {
        let p = policy(serde_json::json!({
            "tier": "Admin", "priority": 1, "subject": {"namespaces": {}},
            "egress": [{"action": "Deny",
                "to": [{"networks": ["10.0.0.9/8", "fd00::/64", "bad"]}, {"nodes": {}}, {"pods": {"podSelector": {}}}],
                "protocols": [{"tcp": {"destinationPort": {"number": 80}}},
                              {"udp": {"destinationPort": {"range": {"start": 53, "end": 54}}}},
                              {"sctp": {}},
                              {"destinationNamedPort": "web"}]}],
        }))
        .unwrap();
        let rule = &p.rules(Direction::Egress).unwrap()[0];
        let peers = rule.peers.as_ref().unwrap();
        assert_eq!(peers.len(), 4);
        assert_eq!(
            peers[0],
            Peer::Network {
                cidr: "10.0.0.0/8".parse().unwrap(),
                except: vec![]
            }
        );
        assert_eq!(peers[2], Peer::Nodes(LabelSelector::default()));
        let ports = rule.ports.as_ref().unwrap();
        assert_eq!(
            ports[0],
            PortMatch::Ports {
                protocol: Protocol::Tcp,
                first: 80,
                last: 80
            }
        );
        assert_eq!(
            ports[1],
            PortMatch::Ports {
                protocol: Protocol::Udp,
                first: 53,
                last: 54
            }
        );
        assert_eq!(
            ports[2],
            PortMatch::Ports {
                protocol: Protocol::Sctp,
                first: 0,
                last: 65535
            }
        );
        assert_eq!(ports.len(), 6, "a named port in each protocol");
    }

    #[test]
    fn an_empty_peer_fails_closed() {
        let rules = |action: &str| {
            policy(serde_json::json!({
                "tier": "Admin", "priority": 1, "subject": {"namespaces": {}},
                "ingress": [{"action": action, "from": [{}]}],
            }))
            .unwrap()
            .ingress
            .unwrap()
        };
        assert_eq!(rules("Accept")[0].peers, Some(vec![]));
        for action in ["Deny", "Pass"] {
            let r = &rules(action)[0];
            assert_eq!((r.action, &r.peers), (Action::Deny, &None));
        }
    }
}
