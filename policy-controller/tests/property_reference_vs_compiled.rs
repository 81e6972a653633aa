//! Property: for random clusters, policies and packets, the compiled rulesets walked by the
//! interpreter give exactly the reference evaluator's answer.
//!
//! Generation works like Hypothesis: proptest draws a byte string and a small "choice reader"
//! turns it into a cluster; every choice reads one byte, and 0 (also what an exhausted string
//! gives) is always the simplest option. Shrinking the bytes therefore shrinks the cluster, and
//! a failing case is just its bytes (kept in `proptest-regressions/` and as explicit tests
//! below).
//!
//! What is covered: 2-3 nodes; 2-4 namespaces with labels from a small alphabet; 3-10 pods with
//! labels, IPv4 and (often) IPv6 addresses, named ports on containers, sidecar init containers
//! and plain init containers (which must not count), host-network, terminating and IP-less
//! pods; NetworkPolicies with every selector operator, empty selectors, `podSelector` /
//! `namespaceSelector` / both / `ipBlock` (with `except`, both families) peers, missing vs
//! empty peer and port lists, numeric / named / `endPort` / protocol-only ports over TCP, UDP
//! and SCTP, `policyTypes` present or absent; ClusterNetworkPolicies in both tiers with
//! priorities that often tie, both subject forms, Accept / Deny / Pass rules over
//! `namespaces`, `pods`, `networks` and `nodes` peers, `tcp`/`udp`/`sctp` with a number, a
//! range or no port, and `destinationNamedPort`; packets pod→pod, pod→external,
//! external→pod, pod→node and to/from host-network pods, in both families.

use palisade_policy::compile::{CompileOptions, MasqueradeOptions};
use palisade_policy::eval::interp::{check_ruleset, PathError, Reachability};
use palisade_policy::eval::reference::{self, Endpoint};
use palisade_policy::model::api::{self, ClusterNetworkPolicy, NetworkPolicy};
use palisade_policy::model::policy::{Direction, PolicyKind, RuleRef, Tier};
use palisade_policy::model::{ClusterState, NodeInfo, ObjectKey, PodInfo, Protocol};
use palisade_policy::ruleset::Family;
use proptest::prelude::*;
use serde_json::{json, Value};
use std::net::IpAddr;

/// Reads choices from the drawn bytes; 0 when they run out.
struct Choices<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Choices<'_> {
    fn byte(&mut self) -> u8 {
        let b = self.bytes.get(self.at).copied().unwrap_or(0);
        self.at += 1;
        b
    }
    /// A number in `0..n`.
    fn below(&mut self, n: usize) -> usize {
        usize::from(self.byte()) % n
    }
    /// `true` with probability about `percent`/100 (0 bytes give `false`).
    fn chance(&mut self, percent: u8) -> bool {
        let b = self.byte();
        b != 0 && u32::from(b) * 100 < u32::from(percent) * 256
    }
    fn pick<'b, T>(&mut self, items: &'b [T]) -> &'b T {
        &items[self.below(items.len())]
    }
}

const NS_NAMES: [&str; 4] = ["x", "y", "z", "w"];
const LABEL_KEYS: [&str; 3] = ["app", "team", "tier"];
const LABEL_VALUES: [&str; 2] = ["a", "b"];
const PORT_NAMES: [&str; 2] = ["http", "dns"];
const PORTS: [u16; 5] = [80, 81, 53, 8080, 9090];
const PROBE_PORTS: [u16; 9] = [80, 81, 82, 53, 54, 8080, 8085, 9090, 443];
const PROTOCOLS: [&str; 3] = ["TCP", "UDP", "SCTP"];

fn labels(c: &mut Choices<'_>) -> serde_json::Map<String, Value> {
    let mut m = serde_json::Map::new();
    for k in LABEL_KEYS {
        if c.chance(55) {
            m.insert(k.into(), json!(c.pick(&LABEL_VALUES)));
        }
    }
    m
}

fn selector(c: &mut Choices<'_>) -> Value {
    let mut sel = serde_json::Map::new();
    if c.chance(50) {
        let k = *c.pick(&LABEL_KEYS);
        sel.insert("matchLabels".into(), json!({ k: c.pick(&LABEL_VALUES) }));
    }
    let n = c.below(3);
    if n > 0 {
        let mut exprs = Vec::new();
        for _ in 0..n {
            let key = *c.pick(&LABEL_KEYS);
            let op = *c.pick(&["In", "NotIn", "Exists", "DoesNotExist"]);
            let mut e = json!({"key": key, "operator": op});
            if op == "In" || op == "NotIn" {
                let vals: Vec<&str> = if c.chance(30) {
                    LABEL_VALUES.to_vec()
                } else {
                    vec![*c.pick(&LABEL_VALUES)]
                };
                e["values"] = json!(vals);
            }
            exprs.push(e);
        }
        sel.insert("matchExpressions".into(), json!(exprs));
    } else if c.chance(10) {
        sel.insert("matchExpressions".into(), json!([]));
    }
    Value::Object(sel)
}

struct Gen {
    state: ClusterState,
    /// Pod addresses, to aim ipBlocks and packets at.
    pod_ips: Vec<IpAddr>,
}

fn gen_cluster(c: &mut Choices<'_>) -> Gen {
    let mut state = ClusterState::default();
    let nodes = 2 + c.below(2);
    for n in 0..nodes {
        state.nodes.insert(
            format!("n{n}"),
            NodeInfo {
                name: format!("n{n}"),
                internal_ips: vec![
                    format!("192.168.0.{}", n + 1).parse().unwrap(),
                    format!("fd00:ffff::{}", n + 1).parse().unwrap(),
                ],
                pod_cidrs: vec![
                    format!("10.{n}.0.0/16").parse().unwrap(),
                    format!("fd00:{n}::/64").parse().unwrap(),
                ],
                ..NodeInfo::default()
            },
        );
    }
    let namespaces = 2 + c.below(3);
    for ns in NS_NAMES.iter().take(namespaces) {
        let l = labels(c);
        state.upsert_namespace(
            ns,
            l.into_iter()
                .map(|(k, v)| (k, v.as_str().unwrap().to_string()))
                .collect(),
        );
    }
    let pods = 3 + c.below(8);
    let mut pod_ips = Vec::new();
    for i in 0..pods {
        let ns = NS_NAMES[c.below(namespaces)];
        let node = c.below(nodes);
        let host_network = c.chance(8);
        let terminating = c.chance(8);
        let no_ip = c.chance(4);
        let dual = !c.chance(25);
        let mut ips: Vec<String> = Vec::new();
        if !no_ip {
            if host_network {
                ips.push(format!("192.168.0.{}", node + 1));
                ips.push(format!("fd00:ffff::{}", node + 1));
            } else {
                ips.push(format!("10.{node}.{}.{}", i / 4, 10 + i));
                if dual {
                    ips.push(format!("fd00:{node}::{:x}", 0x10 + i));
                }
            }
        }
        let ports = |c: &mut Choices<'_>| {
            let mut v = Vec::new();
            for _ in 0..c.below(3) {
                let protocol = if c.chance(50) {
                    "TCP"
                } else {
                    *c.pick(&PROTOCOLS)
                };
                v.push(json!({
                    "name": c.pick(&PORT_NAMES),
                    "containerPort": c.pick(&PORTS),
                    "protocol": protocol,
                }));
            }
            v
        };
        let main = ports(c);
        let sidecar = ports(c);
        let plain_init = ports(c);
        let pod: api::Pod = serde_json::from_value(json!({
            "metadata": {
                "namespace": ns, "name": format!("p{i}"), "labels": labels(c),
                "deletionTimestamp": if terminating { json!("2026-01-01T00:00:00Z") } else { Value::Null },
            },
            "spec": {
                "nodeName": format!("n{node}"),
                "hostNetwork": host_network,
                "containers": [{"name": "main", "ports": main}],
                "initContainers": [
                    {"name": "sidecar", "restartPolicy": "Always", "ports": sidecar},
                    {"name": "setup", "ports": plain_init},
                ],
            },
            "status": {"phase": "Running", "podIPs": ips.iter().map(|ip| json!({"ip": ip})).collect::<Vec<_>>()},
        }))
        .unwrap();
        let mut info = PodInfo::from_api(&pod);
        // Set directly: `model::api::PodStatus` spells the field `podIps` where the API says
        // `podIPs`, so the JSON above does not reach `ips`.
        info.ips = ips.iter().map(|ip| ip.parse().unwrap()).collect();
        if !host_network {
            pod_ips.extend(info.ips.iter().copied());
        }
        state.pods.insert(info.key.clone(), info);
    }
    let policies = c.below(6);
    for i in 0..policies {
        let ns = NS_NAMES[c.below(namespaces)];
        let policy = gen_policy(c, &pod_ips);
        let mut policy: NetworkPolicy = serde_json::from_value(policy).unwrap();
        policy.metadata.namespace = ns.into();
        policy.metadata.name = format!("pol{i}");
        state
            .network_policies
            .insert(ObjectKey::new(ns, format!("pol{i}")), policy);
    }
    // Drawn last, so that the cases above keep their bytes.
    if c.chance(50) {
        // Issue 15's shape, often: egress to an address block by a named port, which must
        // resolve on the pod found at the destination address.
        let ns = NS_NAMES[c.below(namespaces)];
        let (cidr, _) = gen_cidr(c, &pod_ips);
        let pods = if c.chance(50) { json!({}) } else { selector(c) };
        let protocol = if c.chance(60) {
            "TCP"
        } else {
            *c.pick(&PROTOCOLS)
        };
        let mut policy: NetworkPolicy = serde_json::from_value(json!({
            "metadata": {"namespace": ns, "name": "named-by-block"},
            "spec": {"podSelector": pods, "policyTypes": ["Egress"],
                     "egress": [{"to": [{"ipBlock": {"cidr": cidr}}],
                                 "ports": [{"port": c.pick(&PORT_NAMES), "protocol": protocol}]}]},
        }))
        .unwrap();
        policy.metadata.namespace = ns.into();
        state
            .network_policies
            .insert(ObjectKey::new(ns, "named-by-block"), policy);
    }
    for (i, node) in state.nodes.values_mut().enumerate() {
        node.addresses = node.internal_ips.clone();
        if c.chance(30) {
            // An external address of its own.
            node.addresses
                .push(format!("198.51.100.{}", 10 + i).parse().unwrap());
        }
        node.labels = labels(c)
            .into_iter()
            .map(|(k, v)| (k, v.as_str().unwrap().to_string()))
            .collect();
    }
    let cluster_policies = c.below(5);
    for i in 0..cluster_policies {
        let policy = gen_cluster_policy(c, &pod_ips);
        let mut policy: ClusterNetworkPolicy = serde_json::from_value(policy).unwrap();
        policy.metadata.name = format!("cnp{i}");
        state
            .cluster_network_policies
            .insert(format!("cnp{i}"), policy);
    }
    Gen { state, pod_ips }
}

fn gen_cnp_pods(c: &mut Choices<'_>) -> Value {
    let mut pods = json!({"podSelector": selector(c)});
    if c.chance(70) {
        pods["namespaceSelector"] = selector(c);
    }
    pods
}

fn gen_cnp_peer(c: &mut Choices<'_>, pod_ips: &[IpAddr], egress: bool) -> Value {
    match c.below(if egress { 5 } else { 2 }) {
        0 => json!({"namespaces": selector(c)}),
        1 => json!({"pods": gen_cnp_pods(c)}),
        2 | 3 => {
            let n = 1 + c.below(2);
            json!({"networks": (0..n).map(|_| gen_cidr(c, pod_ips).0).collect::<Vec<_>>()})
        }
        _ => json!({"nodes": selector(c)}),
    }
}

fn gen_cnp_protocol(c: &mut Choices<'_>, named: bool) -> Value {
    if named && c.chance(30) {
        return json!({"destinationNamedPort": c.pick(&PORT_NAMES)});
    }
    let proto = *c.pick(&["tcp", "udp", "sctp"]);
    let port = match c.below(4) {
        0 => json!({}),
        1 => json!({"destinationPort": {"number": c.pick(&PORTS)}}),
        _ => {
            let start = *c.pick(&PORTS);
            json!({"destinationPort": {"range": {"start": start, "end": start + 1 + c.below(6) as u16}}})
        }
    };
    json!({ proto: port })
}

fn gen_cnp_rules(c: &mut Choices<'_>, pod_ips: &[IpAddr], egress: bool) -> Value {
    let mut rules = Vec::new();
    for _ in 0..c.below(4) {
        let action = *c.pick(&["Accept", "Deny", "Pass"]);
        let peers: Vec<Value> = (0..1 + c.below(2))
            .map(|_| gen_cnp_peer(c, pod_ips, egress))
            .collect();
        // The CRD's CEL rule: no named port towards networks or nodes.
        let named = !peers
            .iter()
            .any(|p| p.get("networks").is_some() || p.get("nodes").is_some());
        let mut rule = json!({"action": action, if egress { "to" } else { "from" }: peers});
        if c.chance(60) {
            let n = 1 + c.below(2);
            rule["protocols"] = json!((0..n)
                .map(|_| gen_cnp_protocol(c, named))
                .collect::<Vec<_>>());
        }
        rules.push(rule);
    }
    json!(rules)
}

fn gen_cluster_policy(c: &mut Choices<'_>, pod_ips: &[IpAddr]) -> Value {
    let tier = *c.pick(&["Admin", "Baseline"]);
    // Few priorities: ties (decided by name) are common.
    let priority = *c.pick(&[5u32, 5, 10, 0, 1000]);
    let subject = if c.chance(50) {
        json!({"namespaces": selector(c)})
    } else {
        json!({"pods": gen_cnp_pods(c)})
    };
    let mut spec = json!({"tier": tier, "priority": priority, "subject": subject});
    if c.chance(70) {
        spec["ingress"] = gen_cnp_rules(c, pod_ips, false);
    }
    if c.chance(70) {
        spec["egress"] = gen_cnp_rules(c, pod_ips, true);
    }
    json!({"metadata": {}, "spec": spec})
}

fn gen_cidr(c: &mut Choices<'_>, pod_ips: &[IpAddr]) -> (String, Option<IpAddr>) {
    let base: IpAddr = if pod_ips.is_empty() || c.chance(15) {
        *c.pick(&[
            "203.0.113.9".parse().unwrap(),
            "2001:db8::9".parse().unwrap(),
        ])
    } else {
        *c.pick(pod_ips)
    };
    let len = if base.is_ipv4() {
        *c.pick(&[32u8, 24, 16, 8, 4, 0, 31, 30])
    } else {
        *c.pick(&[128u8, 64, 48, 16, 0, 127, 120])
    };
    (
        ipnet::IpNet::new(base, len).unwrap().trunc().to_string(),
        Some(base),
    )
}

fn gen_peer(c: &mut Choices<'_>, pod_ips: &[IpAddr]) -> Value {
    match c.below(4) {
        0 => json!({"podSelector": selector(c)}),
        1 => json!({"namespaceSelector": selector(c)}),
        2 => json!({"podSelector": selector(c), "namespaceSelector": selector(c)}),
        _ => {
            let (cidr, _) = gen_cidr(c, pod_ips);
            let mut block = json!({ "cidr": cidr });
            let n = c.below(3);
            if n > 0 || c.chance(10) {
                let mut except = Vec::new();
                for _ in 0..n {
                    except.push(gen_cidr(c, pod_ips).0);
                }
                block["except"] = json!(except);
            }
            json!({ "ipBlock": block })
        }
    }
}

fn gen_port(c: &mut Choices<'_>) -> Value {
    let mut p = serde_json::Map::new();
    if c.chance(60) {
        p.insert("protocol".into(), json!(c.pick(&PROTOCOLS)));
    }
    match c.below(5) {
        0 => {
            p.insert("port".into(), json!(c.pick(&PORTS)));
        }
        1 => {
            let port = *c.pick(&PORTS);
            p.insert("port".into(), json!(port));
            p.insert("endPort".into(), json!(port + c.below(6) as u16));
        }
        2 | 3 => {
            p.insert("port".into(), json!(c.pick(&PORT_NAMES)));
        }
        _ => {} // protocol only
    }
    Value::Object(p)
}

fn gen_rules(c: &mut Choices<'_>, pod_ips: &[IpAddr], peers_key: &str) -> Value {
    let mut rules = Vec::new();
    for _ in 0..c.below(3) {
        let mut r = serde_json::Map::new();
        match c.below(3) {
            0 => {}
            1 => {
                r.insert(peers_key.into(), json!([]));
            }
            _ => {
                let n = 1 + c.below(2);
                r.insert(
                    peers_key.into(),
                    json!((0..n).map(|_| gen_peer(c, pod_ips)).collect::<Vec<_>>()),
                );
            }
        }
        match c.below(4) {
            0 => {}
            1 => {
                r.insert("ports".into(), json!([]));
            }
            _ => {
                let n = 1 + c.below(2);
                r.insert(
                    "ports".into(),
                    json!((0..n).map(|_| gen_port(c)).collect::<Vec<_>>()),
                );
            }
        }
        rules.push(Value::Object(r));
    }
    json!(rules)
}

fn gen_policy(c: &mut Choices<'_>, pod_ips: &[IpAddr]) -> Value {
    let mut spec = serde_json::Map::new();
    spec.insert("podSelector".into(), selector(c));
    if c.chance(60) {
        spec.insert("ingress".into(), gen_rules(c, pod_ips, "from"));
    }
    if c.chance(50) {
        spec.insert("egress".into(), gen_rules(c, pod_ips, "to"));
    }
    match c.below(5) {
        0 | 1 => {} // absent: defaulted
        2 => {
            spec.insert("policyTypes".into(), json!(["Ingress"]));
        }
        3 => {
            spec.insert("policyTypes".into(), json!(["Egress"]));
        }
        _ => {
            spec.insert("policyTypes".into(), json!(["Ingress", "Egress"]));
        }
    }
    json!({ "metadata": {}, "spec": spec })
}

fn gen_endpoint(c: &mut Choices<'_>, g: &Gen) -> Endpoint {
    let pods: Vec<&ObjectKey> = g.state.pods.keys().collect();
    let node_ips: Vec<IpAddr> = g
        .state
        .nodes
        .values()
        .flat_map(|n| n.addresses.iter().copied())
        .collect();
    match c.below(9) {
        8 if !node_ips.is_empty() => Endpoint::Ip(*c.pick(&node_ips)),
        0 => Endpoint::Ip(*c.pick(&[
            "203.0.113.9".parse().unwrap(),
            "198.51.100.1".parse().unwrap(),
            "2001:db8::9".parse().unwrap(),
            "10.0.7.7".parse().unwrap(),
        ])),
        1 if !g.pod_ips.is_empty() => Endpoint::Ip(*c.pick(&g.pod_ips)),
        _ => Endpoint::Pod((*c.pick(&pods)).clone()),
    }
}

/// What a case exercised (for the coverage test).
#[derive(Default, Debug)]
struct Coverage {
    compared: usize,
    /// Packets a rule with a named port (among others) allowed, per direction (ingress, egress).
    named_port_allows: (usize, usize),
    /// Same, with source and destination on different nodes.
    named_port_allows_cross_node: (usize, usize),
    /// Egress allowed by a NetworkPolicy rule with a named port and an ipBlock peer.
    named_port_through_block: usize,
    /// ClusterNetworkPolicy decisions: (Admin accept, Admin deny, Baseline accept, Baseline deny).
    cluster_decided: [usize; 4],
    /// Directions whose evaluation went through a Pass.
    passed: usize,
    /// ClusterNetworkPolicy decisions by a rule with a named port.
    cluster_named: usize,
    /// Packets to a node address a `nodes` peer decided.
    node_peer_decided: usize,
    /// Paths that left their node masqueraded.
    masqueraded: usize,
}

/// The kinds of the peers of an egress rule (`ipBlock`, `selector`; `networks`, `nodes`,
/// `namespaces`, `pods`); none for an ingress rule.
fn egress_peer_kinds(state: &ClusterState, r: &RuleRef) -> Vec<&'static str> {
    if r.direction != Direction::Egress {
        return Vec::new();
    }
    match r.policy.kind {
        PolicyKind::NetworkPolicy => state.network_policies[&r.policy.object_key().unwrap()]
            .spec
            .egress
            .as_ref()
            .and_then(|v| v[r.index].to.clone())
            .into_iter()
            .flatten()
            .map(|p| {
                if p.ip_block.is_some() {
                    "ipBlock"
                } else {
                    "selector"
                }
            })
            .collect(),
        PolicyKind::ClusterNetworkPolicy => state.cluster_network_policies[r.policy.name.as_str()]
            .spec
            .egress
            .as_ref()
            .and_then(|v| v[r.index].to.clone())
            .into_iter()
            .flatten()
            .map(|p| match p {
                _ if p.networks.is_some() => "networks",
                _ if p.nodes.is_some() => "nodes",
                _ if p.pods.is_some() => "pods",
                _ => "namespaces",
            })
            .collect(),
    }
}

fn rule_has_named_port(state: &ClusterState, r: &RuleRef) -> bool {
    if r.policy.kind == PolicyKind::ClusterNetworkPolicy {
        let spec = &state.cluster_network_policies[r.policy.name.as_str()].spec;
        let rules = match r.direction {
            Direction::Ingress => spec.ingress.as_ref(),
            Direction::Egress => spec.egress.as_ref(),
        };
        return rules
            .and_then(|v| v[r.index].protocols.clone())
            .into_iter()
            .flatten()
            .any(|p| p.destination_named_port.is_some());
    }
    let spec = &state.network_policies[&r.policy.object_key().unwrap()].spec;
    let ports = match r.direction {
        Direction::Ingress => spec.ingress.as_ref().and_then(|v| v[r.index].ports.clone()),
        Direction::Egress => spec.egress.as_ref().and_then(|v| v[r.index].ports.clone()),
    };
    ports
        .into_iter()
        .flatten()
        .any(|p| matches!(p.port, Some(api::IntOrString::String(_))))
}

fn node_of(state: &ClusterState, ep: &Endpoint) -> Option<String> {
    match ep {
        Endpoint::Pod(k) => state.pods.get(k).and_then(|p| p.node.clone()),
        Endpoint::Ip(ip) => state
            .pods
            .values()
            .find(|p| p.ips.contains(ip))
            .and_then(|p| p.node.clone()),
    }
}

/// Masquerade settings: mostly the default (both families), sometimes one family or none,
/// sometimes with nonMasqueradeCIDRs that cover an external address or a node.
fn gen_masquerade(c: &mut Choices<'_>) -> MasqueradeOptions {
    let mut m = match c.below(6) {
        0 => MasqueradeOptions::disabled(),
        1 => MasqueradeOptions {
            ipv6: false,
            ..MasqueradeOptions::enabled()
        },
        2 => MasqueradeOptions {
            ipv4: false,
            ..MasqueradeOptions::enabled()
        },
        _ => MasqueradeOptions::enabled(),
    };
    if c.chance(30) {
        m.non_masquerade_cidrs = vec![
            "203.0.113.0/24".parse().unwrap(),
            "192.168.0.0/24".parse().unwrap(),
            "2001:db8::/64".parse().unwrap(),
        ];
    }
    m
}

/// When a connection must leave its node masqueraded (DESIGN.md "Outbound"), written from
/// the design, not from the compiler: its source is a pod with a veth, it leaves the node,
/// its destination is in no Node's pod CIDR, masquerade is on for the family, and the
/// destination is not in nonMasqueradeCIDRs.
fn masquerade_expected(
    state: &ClusterState,
    m: &MasqueradeOptions,
    src: &Endpoint,
    dst: &Endpoint,
    family: Family,
) -> bool {
    let pod_at = |ep: &Endpoint| match ep {
        Endpoint::Pod(k) => state.pods.get(k),
        Endpoint::Ip(ip) => state.pods.values().find(|p| p.ips.contains(ip)),
    };
    let Some(src_pod) = pod_at(src).filter(|p| !p.host_network) else {
        return false;
    };
    let dst_pod = pod_at(dst);
    // A pod on the same node (also a host-network one: the node itself) is not left for.
    if dst_pod.is_some_and(|d| d.node == src_pod.node) {
        return false;
    }
    let dst_ip = match dst {
        Endpoint::Ip(ip) => *ip,
        Endpoint::Pod(_) => match dst_pod.and_then(|p| {
            p.ips
                .iter()
                .copied()
                .find(|ip| ip.is_ipv4() == (family == Family::Ipv4))
        }) {
            Some(ip) => ip,
            None => return false,
        },
    };
    // The pod's own node, by one of its addresses: delivered there, never leaves.
    let own_node = src_pod
        .node
        .as_ref()
        .and_then(|n| state.nodes.get(n))
        .is_some_and(|n| n.addresses.contains(&dst_ip));
    if own_node {
        return false;
    }
    let on = if dst_ip.is_ipv4() { m.ipv4 } else { m.ipv6 };
    let pod_network = state
        .nodes
        .values()
        .flat_map(|n| &n.pod_cidrs)
        .any(|n| n.contains(&dst_ip));
    let exempt = m.non_masquerade_cidrs.iter().any(|n| n.contains(&dst_ip));
    on && !pod_network && !exempt
}

/// Run one generated case; `Err` describes a disagreement.
fn check_case(bytes: &[u8]) -> Result<usize, String> {
    check_case_coverage(bytes).map(|c| c.compared)
}

fn check_case_coverage(bytes: &[u8]) -> Result<Coverage, String> {
    let mut cov = Coverage::default();
    let mut c = Choices { bytes, at: 0 };
    let g = gen_cluster(&mut c);
    let opts = CompileOptions {
        node: String::new(),
        fail_closed_new_pods: !c.chance(30),
        nflog_group: if c.chance(50) { Some(7) } else { None },
        masquerade: gen_masquerade(&mut c),
    };
    let mut reach = Reachability::new(&g.state, opts.clone());
    for node in g.state.nodes.keys() {
        let problems = check_ruleset(reach.ruleset(node));
        if !problems.is_empty() {
            return Err(format!("node {node}: malformed ruleset: {problems:?}"));
        }
    }
    let mut compared = 0;
    for _ in 0..24 {
        let src = gen_endpoint(&mut c, &g);
        let dst = gen_endpoint(&mut c, &g);
        let mut proto = *c.pick(&Protocol::all());
        let mut port = *c.pick(&PROBE_PORTS);
        // Often aim at a port the destination declares by name, or named-port rules would
        // rarely meet a packet they resolve for.
        let dst_pod = match &dst {
            Endpoint::Pod(k) => g.state.pods.get(k),
            Endpoint::Ip(ip) => g.state.pods.values().find(|p| p.ips.contains(ip)),
        };
        if let Some(pod) = dst_pod.filter(|p| !p.named_ports.is_empty()) {
            if c.chance(70) {
                let np = c.pick(&pod.named_ports);
                proto = np.protocol;
                port = np.port;
            }
        }
        let family = if c.chance(35) {
            Family::Ipv6
        } else {
            Family::Ipv4
        };
        let want = reference::explain_in_family(&g.state, &src, &dst, proto, port, family);
        let got = reach.check_in_family(&src, &dst, proto, port, family);
        match (&want, &got) {
            (Ok(w), Ok(v)) => {
                compared += 1;
                let cross = node_of(&g.state, &src) != node_of(&g.state, &dst);
                for (i, verdict) in [&w.ingress, &w.egress].into_iter().enumerate() {
                    if !verdict.passed().is_empty() {
                        cov.passed += 1;
                    }
                    if let reference::DirectionVerdict::Decided {
                        tier,
                        rule,
                        accepted,
                        ..
                    } = verdict
                    {
                        let slot = match (tier, accepted) {
                            (Tier::Admin, true) => 0,
                            (Tier::Admin, false) => 1,
                            (_, true) => 2,
                            (_, false) => 3,
                        };
                        cov.cluster_decided[slot] += 1;
                        if rule_has_named_port(&g.state, rule) {
                            cov.cluster_named += 1;
                        }
                        if egress_peer_kinds(&g.state, rule).contains(&"nodes") {
                            cov.node_peer_decided += 1;
                        }
                    }
                    if let reference::DirectionVerdict::Allowed { allowed_by, .. } = verdict {
                        if allowed_by.iter().any(|r| {
                            rule_has_named_port(&g.state, r)
                                && egress_peer_kinds(&g.state, r).contains(&"ipBlock")
                        }) {
                            cov.named_port_through_block += 1;
                        }
                        if allowed_by.iter().any(|r| rule_has_named_port(&g.state, r)) {
                            let slot =
                                |t: &mut (usize, usize)| if i == 0 { t.0 += 1 } else { t.1 += 1 };
                            slot(&mut cov.named_port_allows);
                            if cross {
                                slot(&mut cov.named_port_allows_cross_node);
                            }
                        }
                    }
                }
                let masqueraded = v.hops.iter().any(|h| h.outcome.masqueraded);
                if masqueraded
                    != masquerade_expected(&g.state, &opts.masquerade, &src, &dst, family)
                {
                    return Err(format!(
                        "{src} -> {dst} {family:?}: masqueraded {masqueraded} with {:?}\nhops: {:#?}",
                        opts.masquerade, v.hops
                    ));
                }
                cov.masqueraded += usize::from(masqueraded);
                if w.allowed() != v.allowed {
                    return Err(format!(
                        "{src} -> {dst} {proto}/{port} {family:?}: reference {} ({:?} / {:?}), compiled {}\nhops: {:#?}\nstate: {:#?}",
                        w.allowed(),
                        w.egress,
                        w.ingress,
                        v.allowed,
                        v.hops,
                        g.state
                    ));
                }
            }
            (Err(_), Err(PathError::Endpoint(_))) => {}
            _ => {
                return Err(format!(
                    "{src} -> {dst} {family:?}: reference {want:?}, compiled {got:?}"
                ))
            }
        }
    }
    cov.compared = compared;
    Ok(cov)
}

/// Failing cases go to `policy-controller/proptest-regressions/` (cargo runs tests from the
/// package root); proptest's default cannot place files for an integration test.
fn persistence() -> Option<Box<dyn proptest::test_runner::FailurePersistence>> {
    Some(Box::new(
        proptest::test_runner::FileFailurePersistence::Direct(
            "proptest-regressions/property_reference_vs_compiled.txt",
        ),
    ))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 768, failure_persistence: persistence(), ..ProptestConfig::default() })]

    #[test]
    fn compiled_rulesets_agree_with_reference(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        if let Err(e) = check_case(&bytes) {
            prop_assert!(false, "{}", e);
        }
    }
}

/// Whether `touched` names every object of `now` that differs from (or is absent in) `before`,
/// and every set it reports by element changes is exactly `before`'s with those changes.
fn touched_covers(
    before: &palisade_policy::ruleset::Ruleset,
    now: &palisade_policy::ruleset::Ruleset,
    touched: &palisade_policy::ruleset::Touched,
) -> Result<(), String> {
    use std::collections::{BTreeMap, BTreeSet};
    fn check<T: PartialEq>(
        kind: &str,
        before: &BTreeMap<String, T>,
        now: &BTreeMap<String, T>,
        named: &BTreeSet<String>,
    ) -> Result<(), String> {
        match now
            .iter()
            .find(|(n, o)| before.get(*n) != Some(*o) && !named.contains(*n))
        {
            Some((n, _)) => Err(format!("{kind} {n} changed but is not reported as touched")),
            None => Ok(()),
        }
    }
    if touched.all {
        return Ok(());
    }
    for (name, delta) in &touched.elements {
        let (Some(was), Some(is)) = (before.sets.get(name), now.sets.get(name)) else {
            return Err(format!(
                "set {name} reported by element changes is new or gone"
            ));
        };
        if was.interval
            || !delta.added.is_disjoint(&was.elements)
            || !delta.removed.is_subset(&was.elements)
        {
            return Err(format!(
                "set {name}: element changes {delta:?} do not fit what it held"
            ));
        }
        let mut updated = was.clone();
        delta.apply_to(&mut updated.elements);
        if updated != *is {
            return Err(format!(
                "set {name} differs from what its element changes say"
            ));
        }
    }
    for (name, delta) in &touched.map_elements {
        let (Some(was), Some(is)) = (before.maps.get(name), now.maps.get(name)) else {
            return Err(format!(
                "map {name} reported by element changes is new or gone"
            ));
        };
        let fits = delta
            .removed
            .iter()
            .all(|(k, v)| was.elements.get(k) == Some(v))
            && delta
                .added
                .keys()
                .all(|k| !was.elements.contains_key(k) || delta.removed.contains_key(k));
        if !fits {
            return Err(format!(
                "map {name}: element changes {delta:?} do not fit what it held"
            ));
        }
        let mut updated = was.clone();
        delta.apply_to(&mut updated.elements);
        if updated != *is {
            return Err(format!(
                "map {name} differs from what its element changes say"
            ));
        }
    }
    let named_sets: BTreeSet<String> = touched
        .sets
        .iter()
        .chain(touched.elements.keys())
        .cloned()
        .collect();
    let named_maps: BTreeSet<String> = touched
        .maps
        .iter()
        .chain(touched.map_elements.keys())
        .cloned()
        .collect();
    check("chain", &before.chains, &now.chains, &touched.chains)?;
    check("set", &before.sets, &now.sets, &named_sets)?;
    check("map", &before.maps, &now.maps, &named_maps)
}

/// What differs between two rulesets (incremental, full), for failure messages.
fn difference(
    got: &palisade_policy::ruleset::Ruleset,
    want: &palisade_policy::ruleset::Ruleset,
) -> String {
    fn names<T: PartialEq>(
        kind: &str,
        a: &std::collections::BTreeMap<String, T>,
        b: &std::collections::BTreeMap<String, T>,
    ) -> Vec<String> {
        let mut out = Vec::new();
        for (n, x) in a {
            match b.get(n) {
                None => out.push(format!("{kind} {n} only incremental")),
                Some(y) if x != y => out.push(format!("{kind} {n} differs")),
                _ => {}
            }
        }
        out.extend(
            b.keys()
                .filter(|n| !a.contains_key(*n))
                .map(|n| format!("{kind} {n} only full")),
        );
        out
    }
    let mut out = names("chain", &got.chains, &want.chains);
    for n in want.chains.keys().filter(|n| !got.chains.contains_key(*n)) {
        let users: Vec<String> = want
            .maps
            .iter()
            .filter(|(_, m)| {
                m.elements
                    .values()
                    .any(|v| matches!(v, palisade_policy::ruleset::Verdict::Goto(c) if c == n))
            })
            .map(|(m, mm)| {
                format!(
                    "{m} (incremental has it: {:?})",
                    got.maps.get(m).map(|g| g == mm)
                )
            })
            .collect();
        out.push(format!("chain {n} is used in full by {users:?}"));
    }
    out.extend(names("set", &got.sets, &want.sets));
    for (n, m) in &got.maps {
        if let Some(w) = want.maps.get(n) {
            if m != w {
                let extra: Vec<_> = m
                    .elements
                    .iter()
                    .filter(|(k, v)| w.elements.get(*k) != Some(*v))
                    .collect();
                let missing: Vec<_> = w
                    .elements
                    .iter()
                    .filter(|(k, v)| m.elements.get(*k) != Some(*v))
                    .collect();
                out.push(format!(
                    "map {n}: incremental has {extra:?}, full has {missing:?}"
                ));
            }
        }
    }
    out.extend(
        names("map", &got.maps, &want.maps)
            .into_iter()
            .filter(|l| !l.ends_with("differs")),
    );
    out.join("; ")
}

/// Morph cluster A into cluster B one change at a time; after every change the incremental
/// compiler's ruleset equals a full compile of the same state. Every compile's report of
/// what it rebuilt ([`Compiler::ruleset_and_touched`]) covers every object that changed, and
/// a fake dataplane told only that stays equal to the full compile.
fn check_incremental(bytes_a: &[u8], bytes_b: &[u8]) -> Result<(), String> {
    use palisade_policy::compile::{compile, Change, Compiler};
    use palisade_policy::nft::{canonicalize, Dataplane, FakeDataplane};
    let a = gen_cluster(&mut Choices {
        bytes: bytes_a,
        at: 0,
    })
    .state;
    let b = gen_cluster(&mut Choices {
        bytes: bytes_b,
        at: 0,
    })
    .state;
    let opts = CompileOptions {
        node: "n0".into(),
        fail_closed_new_pods: true,
        nflog_group: Some(3),
        masquerade: MasqueradeOptions {
            non_masquerade_cidrs: vec!["203.0.113.0/24".parse().unwrap()],
            ..MasqueradeOptions::enabled()
        },
    };
    let mut compiler = Compiler::with_state(opts.clone(), a.clone());
    let mut changes = Vec::new();
    for name in a.nodes.keys().filter(|n| !b.nodes.contains_key(*n)) {
        changes.push(Change::DeleteNode(name.clone()));
    }
    for node in b.nodes.values() {
        changes.push(Change::UpsertNode(node.clone()));
    }
    for (name, labels) in &b.namespaces {
        changes.push(Change::UpsertNamespace {
            name: name.clone(),
            labels: labels.clone(),
        });
    }
    for key in a.pods.keys().filter(|k| !b.pods.contains_key(*k)) {
        changes.push(Change::DeletePod(key.clone()));
    }
    for pod in b.pods.values() {
        changes.push(Change::UpsertPod(pod.clone()));
    }
    for key in a
        .network_policies
        .keys()
        .filter(|k| !b.network_policies.contains_key(*k))
    {
        changes.push(Change::DeletePolicy(key.clone()));
    }
    for policy in b.network_policies.values() {
        changes.push(Change::UpsertPolicy(Box::new(policy.clone())));
    }
    for name in a
        .cluster_network_policies
        .keys()
        .filter(|k| !b.cluster_network_policies.contains_key(*k))
    {
        changes.push(Change::DeleteClusterPolicy(name.clone()));
    }
    for policy in b.cluster_network_policies.values() {
        changes.push(Change::UpsertClusterPolicy(Box::new(policy.clone())));
    }
    for node in b.nodes.values() {
        changes.push(Change::UpsertNode(node.clone()));
    }
    for name in a
        .namespaces
        .keys()
        .filter(|n| !b.namespaces.contains_key(*n))
    {
        changes.push(Change::DeleteNamespace(name.clone()));
    }
    // Interleave: pods and policies changing in an order that is not the natural one.
    let rotation = bytes_b.first().copied().unwrap_or(0) as usize % changes.len().max(1);
    changes.rotate_left(rotation);
    let mut dp = FakeDataplane::new("palisade");
    let mut last = palisade_policy::ruleset::Ruleset::default();
    let mut first = true;
    for (i, change) in changes.into_iter().enumerate() {
        let what = format!("{change:?}");
        compiler.apply(change);
        // Compile only every other step too, so that changes also accumulate between compiles;
        // take the report of what was rebuilt every third step, so that it accumulates over
        // several compiles as well.
        if i % 2 == 0 {
            let want = compile(compiler.state(), &opts);
            let got = compiler.ruleset();
            if got != want {
                return Err(format!(
                    "after change {i} ({what}): incremental differs from full: {}",
                    difference(&got, &want)
                ));
            }
        }
        if i % 3 == 0 {
            let (now, touched) = compiler.ruleset_and_touched();
            if first && !touched.all {
                return Err("the first report must say everything".into());
            }
            first = false;
            touched_covers(&last, now, &touched)
                .map_err(|e| format!("after change {i} ({what}): {e}"))?;
            dp.apply_touched(now, &touched)
                .map_err(|e| format!("after change {i} ({what}): apply: {e}"))?;
            if dp.table() != Some(&canonicalize(now)) {
                return Err(format!(
                    "after change {i} ({what}): the fake dataplane, told what was touched, \
                     differs from the model"
                ));
            }
            last = now.clone();
        }
    }
    let want = compile(compiler.state(), &opts);
    if compiler.ruleset() != want {
        return Err("at the end: incremental differs from full".into());
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, failure_persistence: persistence(), ..ProptestConfig::default() })]

    #[test]
    fn incremental_compiler_agrees_with_full_compile(
        a in proptest::collection::vec(any::<u8>(), 0..400),
        b in proptest::collection::vec(any::<u8>(), 0..400),
    ) {
        if let Err(e) = check_incremental(&a, &b) {
            prop_assert!(false, "{}", e);
        }
    }
}

/// Every case that ever failed, run explicitly: the byte strings of the checked-in
/// regression file (`cc ... # shrinks to bytes = [...]`), so they keep running even if proptest
/// changed how it replays them. (So far both were found by deliberately broken compilers, to
/// check that the property bites; no disagreement with the real compiler was ever found.)
#[test]
fn past_failures() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/proptest-regressions/property_reference_vs_compiled.txt"
    );
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut ran = 0;
    for line in text.lines().filter(|l| l.starts_with("cc ")) {
        let Some((_, list)) = line.split_once("shrinks to bytes = [") else {
            continue;
        };
        let bytes: Vec<u8> = list
            .trim_end_matches(']')
            .split(',')
            .filter_map(|b| b.trim().parse().ok())
            .collect();
        if let Err(e) = check_case(&bytes) {
            panic!("{e}");
        }
        ran += 1;
    }
    println!("{ran} past failures replayed");
    assert!(
        ran >= 2,
        "the regression file holds at least the two cases above"
    );
}

/// The generator really produces the interesting cases (a property over degenerate inputs
/// would prove nothing): over many draws, allowed and denied answers both occur, in both
/// families, through isolated pods.
#[test]
fn generator_covers_both_outcomes() {
    let mut rng_state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut allowed = 0;
    let mut denied = 0;
    let mut compared = 0;
    let mut named = (0, 0);
    let mut named_cross = (0, 0);
    let mut through_block = 0;
    let mut cluster_decided = [0; 4];
    let mut passed = 0;
    let mut cluster_named = 0;
    let mut node_peer = 0;
    let mut masqueraded = 0;
    for _ in 0..600 {
        let bytes: Vec<u8> = (0..600)
            .map(|_| {
                rng_state ^= rng_state << 13;
                rng_state ^= rng_state >> 7;
                rng_state ^= rng_state << 17;
                (rng_state >> 24) as u8
            })
            .collect();
        let cov = check_case_coverage(&bytes).unwrap_or_else(|e| panic!("{e}"));
        compared += cov.compared;
        named.0 += cov.named_port_allows.0;
        named.1 += cov.named_port_allows.1;
        named_cross.0 += cov.named_port_allows_cross_node.0;
        named_cross.1 += cov.named_port_allows_cross_node.1;
        through_block += cov.named_port_through_block;
        for (total, n) in cluster_decided.iter_mut().zip(cov.cluster_decided) {
            *total += n;
        }
        passed += cov.passed;
        cluster_named += cov.cluster_named;
        node_peer += cov.node_peer_decided;
        masqueraded += cov.masqueraded;
        let mut c = Choices {
            bytes: &bytes,
            at: 0,
        };
        let g = gen_cluster(&mut c);
        for src in g.state.pods.keys() {
            for dst in g.state.pods.keys() {
                match reference::explain(
                    &g.state,
                    &Endpoint::Pod(src.clone()),
                    &Endpoint::Pod(dst.clone()),
                    Protocol::Tcp,
                    80,
                ) {
                    Ok(e) if e.allowed() => allowed += 1,
                    Ok(_) => denied += 1,
                    Err(_) => {}
                }
            }
        }
    }
    println!("compared {compared} packets; pod pairs: {allowed} allowed, {denied} denied");
    println!(
        "allowed by named-port rules (ingress, egress): {named:?}, across nodes {named_cross:?}"
    );
    println!(
        "egress named ports through an ipBlock: {through_block}; ClusterNetworkPolicy decisions \
         (Admin accept/deny, Baseline accept/deny): {cluster_decided:?}, by a named-port rule \
         {cluster_named}, by a nodes peer {node_peer}; through a Pass: {passed}"
    );
    assert!(
        named_cross.0 > 10 && named_cross.1 > 10,
        "named ports barely exercised"
    );
    assert!(
        through_block > 10,
        "named ports through ipBlocks barely exercised"
    );
    assert!(
        cluster_decided.iter().all(|n| *n > 50) && passed > 50 && cluster_named > 10,
        "ClusterNetworkPolicy barely exercised"
    );
    assert!(node_peer > 5, "nodes peers barely exercised");
    println!("masqueraded paths: {masqueraded}");
    assert!(masqueraded > 300, "masquerade barely exercised");
    assert!(compared > 6000);
    assert!(
        allowed > 200 && denied > 200,
        "{allowed} allowed, {denied} denied"
    );
}
