//! `networking.k8s.io/v1` NetworkPolicy → [`Policy`] in the NetworkPolicy tier.
//!
//! - The subject is `podSelector` in the policy's namespace.
//! - A direction is in force iff it is among the effective `policyTypes` (the API server's
//!   defaulting when absent: `Ingress` always, `Egress` iff `egress` is non-empty); then the
//!   policy isolates its pods for it, and each rule is an [`Action::Allow`].
//! - Missing or empty `from`/`to`: every peer. Missing or empty `ports`: every port. A peer
//!   list whose entries all fail to parse (validation rejects those) matches nothing.
//! - A port without `port` is the whole protocol; `endPort` makes a range; a string `port` is
//!   a named port of the protocol (TCP when absent).

use super::{Action, Peer, Policy, PolicyRef, PortMatch, Rule, Tier};
use crate::model::api::{IntOrString, NetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort};
use crate::model::selector::PodSelection;
use crate::model::{ObjectKey, Protocol};
use ipnet::IpNet;

pub fn from_network_policy(policy: &NetworkPolicy) -> Policy {
    let namespace = &policy.metadata.namespace;
    let spec = &policy.spec;
    let (ingress, egress) = spec.effective_policy_types();
    Policy {
        id: PolicyRef::network(&ObjectKey::new(namespace, &policy.metadata.name)),
        tier: Tier::NetworkPolicy,
        priority: 0,
        subject: PodSelection::targets(namespace, &spec.pod_selector),
        ingress: ingress.then(|| {
            spec.ingress
                .iter()
                .flatten()
                .map(|r| rule_of(namespace, r.from.as_deref(), r.ports.as_deref()))
                .collect()
        }),
        egress: egress.then(|| {
            spec.egress
                .iter()
                .flatten()
                .map(|r| rule_of(namespace, r.to.as_deref(), r.ports.as_deref()))
                .collect()
        }),
    }
}

fn rule_of(
    namespace: &str,
    peers: Option<&[NetworkPolicyPeer]>,
    ports: Option<&[NetworkPolicyPort]>,
) -> Rule {
    Rule {
        name: None,
        action: Action::Allow,
        peers: peers.filter(|p| !p.is_empty()).map(|p| {
            p.iter()
                .filter_map(|peer| peer_of(namespace, peer))
                .collect()
        }),
        ports: ports
            .filter(|p| !p.is_empty())
            .map(|p| p.iter().filter_map(port_of).collect()),
    }
}

fn peer_of(namespace: &str, peer: &NetworkPolicyPeer) -> Option<Peer> {
    match &peer.ip_block {
        Some(block) => {
            // An unparsable CIDR (validation rejects it) matches nothing.
            let cidr = block.cidr.parse::<IpNet>().ok()?.trunc();
            Some(Peer::Network {
                cidr,
                except: except_list(&cidr, block.except.iter().flatten()),
            })
        }
        None => PodSelection::of_peer(namespace, peer).map(Peer::Pods),
    }
}

/// The parsable excepts of a block, truncated to their networks, of the block's family,
/// sorted and without repeats (equal blocks then share one set).
pub(super) fn except_list<'a>(
    cidr: &IpNet,
    except: impl Iterator<Item = &'a String>,
) -> Vec<IpNet> {
    let mut out: Vec<IpNet> = except
        .filter_map(|e| e.parse::<IpNet>().ok())
        .map(|e| e.trunc())
        .filter(|e| e.addr().is_ipv4() == cidr.addr().is_ipv4())
        .collect();
    out.sort();
    out.dedup();
    out
}

fn port_of(port: &NetworkPolicyPort) -> Option<PortMatch> {
    let protocol = Protocol::parse_api(port.protocol.as_deref())?;
    match &port.port {
        None => Some(PortMatch::Ports {
            protocol,
            first: 0,
            last: u16::MAX,
        }),
        Some(IntOrString::Int(n)) => {
            let end = port.end_port.unwrap_or(*n);
            // Out of range or reversed (validation rejects both): nothing.
            let first = u16::try_from(*n).ok()?;
            let last = u16::try_from(end).ok()?;
            (first <= last).then_some(PortMatch::Ports {
                protocol,
                first,
                last,
            })
        }
        Some(IntOrString::String(name)) => Some(PortMatch::Named {
            name: name.clone(),
            protocol,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::policy::Direction;

    fn policy(spec: serde_json::Value) -> Policy {
        let p: NetworkPolicy = serde_json::from_value(serde_json::json!({
            "metadata": {"namespace": "x", "name": "p"}, "spec": spec
        }))
        .unwrap();
        from_network_policy(&p)
    }

    #[test]
    fn policy_types_default_and_explicit() {
        let p = policy(serde_json::json!({"podSelector": {}}));
        assert_eq!(p.rules(Direction::Ingress), Some(&[][..]));
        assert_eq!(p.rules(Direction::Egress), None);
        // `egress: []` alone does not make the policy egress-isolating.
        let p = policy(serde_json::json!({"podSelector": {}, "egress": []}));
        assert_eq!(p.rules(Direction::Egress), None);
        let p = policy(serde_json::json!({"podSelector": {}, "egress": [{}]}));
        assert_eq!(p.rules(Direction::Egress).map(<[Rule]>::len), Some(1));
        let p = policy(
            serde_json::json!({"podSelector": {}, "policyTypes": ["Egress"], "ingress": [{}]}),
        );
        assert_eq!(p.rules(Direction::Ingress), None);
        assert_eq!(p.rules(Direction::Egress), Some(&[][..]));
        assert_eq!(p.tier, Tier::NetworkPolicy);
        assert_eq!(p.id.to_string(), "x/p");
    }

    #[test]
    fn peers_and_ports() {
        let p = policy(serde_json::json!({"podSelector": {}, "ingress": [
            {"from": [], "ports": []},
            {"from": [{"ipBlock": {"cidr": "10.0.0.5/8", "except": ["10.1.0.0/16", "fd00::/8", "10.1.0.0/16"]}},
                      {"podSelector": {"matchLabels": {"a": "b"}}}],
             "ports": [{"port": 80, "endPort": 90}, {"protocol": "UDP"}, {"port": "dns", "protocol": "UDP"}]},
            {"from": [{"ipBlock": {"cidr": "bogus"}}]},
        ]}));
        let rules = p.rules(Direction::Ingress).unwrap();
        assert_eq!(
            (rules[0].peers.as_ref(), rules[0].ports.as_ref()),
            (None, None)
        );
        let peers = rules[1].peers.as_ref().unwrap();
        assert_eq!(
            peers[0],
            Peer::Network {
                cidr: "10.0.0.0/8".parse().unwrap(),
                except: vec!["10.1.0.0/16".parse().unwrap()]
            }
        );
        assert!(matches!(peers[1], Peer::Pods(_)));
        assert_eq!(
            rules[1].ports.as_ref().unwrap(),
            &vec![
                PortMatch::Ports {
                    protocol: Protocol::Tcp,
                    first: 80,
                    last: 90
                },
                PortMatch::Ports {
                    protocol: Protocol::Udp,
                    first: 0,
                    last: 65535
                },
                PortMatch::Named {
                    name: "dns".into(),
                    protocol: Protocol::Udp
                },
            ]
        );
        assert_eq!(
            rules[2].peers,
            Some(vec![]),
            "an unparsable block matches nothing"
        );
        assert!(rules.iter().all(|r| r.action == Action::Allow));
    }
}
