//! The benchmark cluster shared by `compile_bench` and `sync_bench`: pods in namespaces over
//! nodes (110 pods on the compiled node, `node-0`), NetworkPolicies with pod, namespace and
//! named-port peers, and optionally 100 ClusterNetworkPolicies (Admin and Baseline, every peer
//! kind). Two sizes: 10k pods / 1k policies and 50k pods / 5k policies, 100 pods per
//! namespace and 110 per node in both.

use palisade_policy::model::api::{
    ClusterNetworkPolicy, IntOrString, LabelSelector, LabelSelectorRequirement, NetworkPolicy,
    NetworkPolicyEgressRule, NetworkPolicyIngressRule, NetworkPolicyPeer, NetworkPolicyPort,
    NetworkPolicySpec, ObjectMeta,
};
use palisade_policy::model::{
    ClusterState, Labels, NamedPort, NodeInfo, ObjectKey, PodInfo, Protocol,
};
use serde_json::json;
use std::time::Duration;

pub const LOCAL_PODS: usize = 110;
const APPS: usize = 20;
pub const CLUSTER_POLICIES: usize = 100;

/// How big a benchmark cluster is.
#[derive(Debug, Clone, Copy)]
pub struct Size {
    pub pods: usize,
    pub policies: usize,
}

pub const SIZES: [Size; 2] = [
    Size {
        pods: 10_000,
        policies: 1_000,
    },
    Size {
        pods: 50_000,
        policies: 5_000,
    },
];

impl Size {
    pub fn namespaces(self) -> usize {
        self.pods / 100
    }

    /// `node-0` (this node) and the others, about `LOCAL_PODS` pods each.
    pub fn nodes(self) -> usize {
        self.pods / LOCAL_PODS + 1
    }
}

pub fn labels(pairs: &[(&str, String)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect()
}

pub fn pod(size: Size, i: usize) -> PodInfo {
    // The first LOCAL_PODS pods are on node-0, the rest spread over the other nodes.
    let node = if i < LOCAL_PODS {
        0
    } else {
        1 + (i % (size.nodes() - 1))
    };
    PodInfo {
        key: ObjectKey::new(format!("ns{}", i % size.namespaces()), format!("pod{i}")),
        node: Some(format!("node-{node}")),
        labels: labels(&[
            ("app", format!("app{}", i % APPS)),
            ("tier", format!("t{}", i % 3)),
        ]),
        ips: vec![
            format!("10.{}.{}.{}", i / 65536, (i / 256) % 256, i % 256)
                .parse()
                .unwrap(),
            format!("fd00::{:x}", i + 1).parse().unwrap(),
        ],
        host_network: false,
        terminating: false,
        named_ports: vec![NamedPort {
            name: "http".into(),
            port: 8000 + (i % 5) as u16,
            protocol: Protocol::Tcp,
        }],
    }
}

fn sel(k: &str, v: String) -> LabelSelector {
    LabelSelector {
        match_labels: Some(labels(&[(k, v)])),
        match_expressions: None,
    }
}

pub fn policy(size: Size, i: usize) -> NetworkPolicy {
    let ns = format!("ns{}", i % size.namespaces());
    let port = |p: IntOrString| NetworkPolicyPort {
        protocol: None,
        port: Some(p),
        end_port: None,
    };
    let peer_pods = NetworkPolicyPeer {
        pod_selector: Some(sel("app", format!("app{}", (i * 7) % APPS))),
        ..Default::default()
    };
    let peer_ns = NetworkPolicyPeer {
        namespace_selector: Some(sel("team", format!("team{}", i % 10))),
        pod_selector: Some(LabelSelector {
            match_labels: None,
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: "tier".into(),
                operator: "In".into(),
                values: Some(vec![format!("t{}", i % 3)]),
            }]),
        }),
        ..Default::default()
    };
    NetworkPolicy {
        metadata: ObjectMeta {
            namespace: ns,
            name: format!("policy{i}"),
            ..Default::default()
        },
        spec: NetworkPolicySpec {
            pod_selector: sel("app", format!("app{}", i % APPS)),
            policy_types: Some(vec!["Ingress".into(), "Egress".into()]),
            ingress: Some(vec![NetworkPolicyIngressRule {
                from: Some(vec![peer_pods, peer_ns.clone()]),
                ports: Some(vec![
                    port(IntOrString::Int(80)),
                    port(IntOrString::String("http".into())),
                ]),
            }]),
            egress: Some(vec![NetworkPolicyEgressRule {
                to: Some(vec![peer_ns]),
                ports: Some(vec![
                    NetworkPolicyPort {
                        protocol: Some("UDP".into()),
                        port: Some(IntOrString::Int(53)),
                        end_port: Some(60),
                    },
                    port(IntOrString::String("http".into())),
                ]),
            }]),
        },
        ..Default::default()
    }
}

/// One of the 100 ClusterNetworkPolicies: tiers alternate, priorities tie in pairs, subjects
/// by namespace or by pods, rules with every action and peer kind, numbered, ranged and
/// named ports.
pub fn cluster_policy(j: usize) -> ClusterNetworkPolicy {
    let team = json!({"matchLabels": {"team": format!("team{}", j % 10)}});
    let app = json!({"matchLabels": {"app": format!("app{}", (j * 3) % APPS)}});
    let subject = if j.is_multiple_of(3) {
        json!({"namespaces": team})
    } else {
        json!({"pods": {"namespaceSelector": team, "podSelector": app}})
    };
    let action = ["Pass", "Deny", "Accept"][j % 3];
    serde_json::from_value(json!({
        "metadata": {"name": format!("cnp{j}")},
        "spec": {
            "tier": if j.is_multiple_of(2) { "Admin" } else { "Baseline" },
            "priority": j / 2,
            "subject": subject,
            "ingress": [
                {"action": action, "from": [{"namespaces": {"matchLabels": {"team": format!("team{}", (j + 1) % 10)}}}],
                 "protocols": [{"tcp": {"destinationPort": {"number": 80}}}]},
                {"action": "Accept", "from": [{"pods": {"namespaceSelector": {}, "podSelector": app}}],
                 "protocols": [{"destinationNamedPort": "http"}]},
            ],
            "egress": [
                {"action": "Deny", "to": [{"networks": [format!("203.0.113.{}/32", j % 256), "2001:db8::/64"]}]},
                {"action": action, "to": [{"namespaces": team}],
                 "protocols": [{"udp": {"destinationPort": {"range": {"start": 53, "end": 60}}}}]},
                {"action": "Pass", "to": [{"nodes": {"matchLabels": {"role": format!("r{}", j % 4)}}}]},
            ],
        },
    }))
    .unwrap()
}

/// The cluster of `size` with its nodes (labelled, for `nodes` peers) and,
/// with `cluster_policies`, the 100 ClusterNetworkPolicies.
pub fn cluster_with(size: Size, cluster_policies: bool) -> ClusterState {
    let mut s = cluster(size);
    for n in 0..size.nodes() {
        let node = NodeInfo {
            name: format!("node-{n}"),
            internal_ips: vec![format!("192.168.{}.{}", n / 250, n % 250 + 1)
                .parse()
                .unwrap()],
            pod_cidrs: Vec::new(),
            labels: labels(&[("role", format!("r{}", n % 4))]),
            addresses: vec![format!("192.168.{}.{}", n / 250, n % 250 + 1)
                .parse()
                .unwrap()],
        };
        s.nodes.insert(node.name.clone(), node);
    }
    if cluster_policies {
        for j in 0..CLUSTER_POLICIES {
            let p = cluster_policy(j);
            s.cluster_network_policies
                .insert(p.metadata.name.clone(), p);
        }
    }
    s
}

fn cluster(size: Size) -> ClusterState {
    let mut s = ClusterState::default();
    for n in 0..size.namespaces() {
        s.upsert_namespace(
            &format!("ns{n}"),
            labels(&[("team", format!("team{}", n % 10))]),
        );
    }
    for i in 0..size.pods {
        let p = pod(size, i);
        s.pods.insert(p.key.clone(), p);
    }
    for i in 0..size.policies {
        let p = policy(size, i);
        s.network_policies
            .insert(ObjectKey::new(&p.metadata.namespace, &p.metadata.name), p);
    }
    s
}

pub fn heading(size: Size, cluster_policies: bool) {
    println!(
        "\n=== {} pods, {} policies, {}",
        size.pods,
        size.policies,
        if cluster_policies {
            "with 100 ClusterNetworkPolicies"
        } else {
            "NetworkPolicies only"
        }
    );
}

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// The size of the "peer class" form the lead's design sketch for issue 16 proposes (Cilium's
/// identities in nftables), computed from the normalized policies of `state` for the pods of
/// `node`: not what the compiler emits today, an estimate to decide on that form with.
///
/// Per direction: the rules of every policy selecting a local pod; their distinct peers; a
/// cluster address's class is the set of those peers it matches (and, for egress, what the
/// named ports of those rules resolve to on the pod at that address, since egress named ports
/// resolve on the destination). Elements: one address → class element per classified pod or
/// node address, the disjoint intervals the network peers cut the address space into, and per
/// (enforced local pod, class) the distinct port entries of the rules that apply
/// (`local pod . l4proto . dport`, one "any port" entry for a rule without ports).
#[derive(Debug, Default)]
pub struct PeerClassEstimate {
    pub enforced_local_pods: usize,
    pub peers: usize,
    pub classes: usize,
    pub address_elements: usize,
    pub network_intervals: usize,
    pub verdict_elements: usize,
}

pub fn peer_class_estimate(
    state: &ClusterState,
    node: &str,
    direction: palisade_policy::model::policy::Direction,
) -> PeerClassEstimate {
    use palisade_policy::model::policy::{
        from_cluster_network_policy, from_network_policy, Direction, Peer, PortMatch,
    };
    use std::collections::{BTreeMap, BTreeSet, HashMap};
    let policies: Vec<_> = state
        .network_policies
        .values()
        .map(from_network_policy)
        .chain(
            state
                .cluster_network_policies
                .values()
                .filter_map(from_cluster_network_policy),
        )
        .collect();
    let ns_labels = |ns: &str| state.namespaces.get(ns);
    let live = |p: &&PodInfo| !p.ips.is_empty() && !p.host_network && !p.terminating;
    // Per enforced local pod, the rules (of every tier) that apply to it in this direction.
    let mut local: Vec<(&PodInfo, Vec<&palisade_policy::model::policy::Rule>)> = Vec::new();
    for pod in state.pods.values().filter(live) {
        if pod.node.as_deref() != Some(node) {
            continue;
        }
        let rules: Vec<_> = policies
            .iter()
            .filter(|p| p.rules(direction).is_some())
            .filter(|p| {
                p.subject.matches(
                    &pod.key.namespace,
                    ns_labels(&pod.key.namespace),
                    &pod.labels,
                )
            })
            .flat_map(|p| p.rules(direction).unwrap_or_default())
            .collect();
        if !rules.is_empty() {
            local.push((pod, rules));
        }
    }
    let mut peers: BTreeMap<&Peer, usize> = BTreeMap::new();
    let mut named: BTreeSet<(&str, Protocol)> = BTreeSet::new();
    for (_, rules) in &local {
        for r in rules {
            for p in r.peers.iter().flatten() {
                let n = peers.len();
                peers.entry(p).or_insert(n);
            }
            for pm in r.ports.iter().flatten() {
                if let (PortMatch::Named { name, protocol }, Direction::Egress) = (pm, direction) {
                    named.insert((name, *protocol));
                }
            }
        }
    }
    // Class key: matched peers, and the named ports' values on the pod at the address.
    type Key = (Vec<usize>, Vec<Option<u16>>);
    let mut classes: HashMap<Key, usize> = HashMap::new();
    let mut address_elements = 0;
    let mut by_labels: HashMap<(&str, &Labels), Vec<usize>> = HashMap::new();
    for pod in state.pods.values().filter(live) {
        let selected = by_labels
            .entry((&pod.key.namespace, &pod.labels))
            .or_insert_with(|| {
                peers
                    .iter()
                    .filter(|(p, _)| match p {
                        Peer::Pods(sel) => sel.matches(
                            &pod.key.namespace,
                            ns_labels(&pod.key.namespace),
                            &pod.labels,
                        ),
                        _ => false,
                    })
                    .map(|(_, i)| *i)
                    .collect()
            })
            .clone();
        let ports: Vec<Option<u16>> = named
            .iter()
            .map(|(name, proto)| {
                pod.named_ports
                    .iter()
                    .find(|np| np.name == *name && np.protocol == *proto)
                    .map(|np| np.port)
            })
            .collect();
        for ip in &pod.ips {
            let mut key = selected.clone();
            for (p, i) in &peers {
                if matches!(p, Peer::Network { cidr, except }
                    if cidr.contains(ip) && !except.iter().any(|e| e.contains(ip)))
                {
                    key.push(*i);
                }
            }
            key.sort_unstable();
            if key.is_empty() && ports.iter().all(Option::is_none) {
                continue;
            }
            address_elements += 1;
            let n = classes.len();
            classes.entry((key, ports.clone())).or_insert(n);
        }
    }
    for n in state.nodes.values() {
        for ip in &n.addresses {
            let key: Vec<usize> = peers
                .iter()
                .filter(|(p, _)| match p {
                    Peer::Nodes(sel) => {
                        palisade_policy::model::selector::selector_matches(sel, &n.labels)
                    }
                    Peer::Network { cidr, except } => {
                        cidr.contains(ip) && !except.iter().any(|e| e.contains(ip))
                    }
                    Peer::Pods(_) => false,
                })
                .map(|(_, i)| *i)
                .collect();
            if !key.is_empty() {
                address_elements += 1;
                let n = classes.len();
                classes.entry((key, vec![None; named.len()])).or_insert(n);
            }
        }
    }
    let mut bounds: BTreeSet<(bool, u128)> = BTreeSet::new();
    for p in peers.keys() {
        if let Peer::Network { cidr, except } = p {
            for net in std::iter::once(cidr).chain(except) {
                let v6 = matches!(net, ipnet::IpNet::V6(_));
                let (lo, hi) = match net {
                    ipnet::IpNet::V4(n) => (
                        u128::from(u32::from(n.network())),
                        u128::from(u32::from(n.broadcast())),
                    ),
                    ipnet::IpNet::V6(n) => (u128::from(n.network()), u128::from(n.broadcast())),
                };
                bounds.insert((v6, lo));
                bounds.insert((v6, hi.saturating_add(1)));
            }
        }
    }
    let network_intervals = bounds.len().saturating_sub(2);
    // Per (local pod, class): the distinct port entries of the rules whose peers match.
    let mut verdict_elements = 0;
    for (pod, rules) in &local {
        for (key, ports) in classes.keys() {
            let mut entries: BTreeSet<Option<(Protocol, u16, u16)>> = BTreeSet::new();
            for r in rules {
                let applies = match &r.peers {
                    None => true,
                    Some(ps) => ps.iter().any(|p| key.binary_search(&peers[p]).is_ok()),
                };
                if !applies {
                    continue;
                }
                let Some(pms) = &r.ports else {
                    entries.insert(None);
                    continue;
                };
                for pm in pms {
                    match pm {
                        PortMatch::Ports {
                            protocol,
                            first,
                            last,
                        } => {
                            entries.insert(Some((*protocol, *first, *last)));
                        }
                        PortMatch::Named { name, protocol } => {
                            let port = match direction {
                                Direction::Ingress => pod
                                    .named_ports
                                    .iter()
                                    .find(|np| np.name == *name && np.protocol == *protocol)
                                    .map(|np| np.port),
                                Direction::Egress => named
                                    .iter()
                                    .position(|n| *n == (name.as_str(), *protocol))
                                    .and_then(|i| ports[i]),
                            };
                            if let Some(port) = port {
                                entries.insert(Some((*protocol, port, port)));
                            }
                        }
                    }
                }
            }
            verdict_elements += entries.len();
        }
    }
    PeerClassEstimate {
        enforced_local_pods: local.len(),
        peers: peers.len(),
        classes: classes.len(),
        address_elements,
        network_intervals,
        verdict_elements,
    }
}
