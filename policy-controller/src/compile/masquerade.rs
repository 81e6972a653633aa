//! Outbound masquerade (DESIGN.md "Outbound"): pod traffic that leaves the pod network leaves
//! the node with the node's address, so that a pod reaches hosts that have no route back to
//! pod CIDRs (package mirrors, external APIs: on kind and on every cloud VPC).
//!
//! ```text
//! set pod-cidrs4   { type ipv4_addr; flags interval }   every Node's spec.podCIDRs (+ clusterCIDRs)
//! set non-masq4    { type ipv4_addr; flags interval }   nonMasqueradeCIDRs (only when configured)
//! chain pod-masquerade   type nat hook postrouting priority srcnat (100)
//!   iifname "pal*" ip daddr != @pod-cidrs4 ip daddr != @non-masq4 masquerade fully-random
//!   iifname "pal*" ip6 daddr != @pod-cidrs6 ip6 daddr != @non-masq6 masquerade fully-random
//! ```
//!
//! Why this shape:
//! - **Only pods of this node.** `iifname "pal*"` (the node side of a pod veth) is true
//!   exactly for packets a local pod sent, whatever its address or IPAM: the node's own
//!   traffic and host-network pods leave through `output` with no input interface, and
//!   traffic forwarded from other nodes or the uplink comes in on another interface. Calico
//!   and kindnet match the source address against the pod CIDRs instead; for a routed-veth
//!   plugin the interface says the same without data.
//! - **Never pod to pod.** Destinations in any node's pod CIDR keep the pod's source
//!   address, on this node and across nodes, so NetworkPolicy on the far side (ingress is
//!   enforced on the destination's node) sees the real peer. The set follows the Node objects:
//!   a node coming or going is an element change. If a family has no pod CIDR at all, its rule
//!   is left out: without the set, pod-to-pod traffic could not be told from the rest, and not
//!   masquerading is the safe side (no pod of that family can exist then anyway).
//! - **Policy still sees the pod.** `postrouting` runs after `forward` (priority 0), where
//!   egress policy matched the original source, and the NAT hook sees only a connection's
//!   first packet: conntrack rewrites the rest, and replies come back to the pod as
//!   `established` before the forward chain's fail-closed guard (see `plan::base_chains`).
//! - **Per family**, because IPv6 pod addresses are often globally routable: an operator turns
//!   off IPv6 masquerade alone and keeps IPv4's.
//!
//! Kept apart from the policy compiler ([`super::plan`]): it depends on options and Node
//! objects only, never on pods or policies, and is computed whole (a handful of objects).

use super::intervals::{net_range, range_to_prefixes, RangeSet};
use crate::model::ClusterState;
use crate::ruleset::{
    BaseChain, Chain, ChainPolicy, ChainType, CmpOp, Family, Field, Hook, KeyType, Match, Rule,
    Ruleset, Set, Statement, Touched, Value,
};
use ipnet::IpNet;
use palisade_common::HOST_VETH_PREFIX;

/// The nat chain that masquerades pod traffic leaving the pod network.
pub const MASQUERADE_CHAIN: &str = "pod-masquerade";
/// `srcnat`: after kube-proxy's and everyone's filter chains, where source NAT belongs.
pub const SRCNAT_PRIORITY: i32 = 100;

/// The agent's masquerade settings (ConfigMap keys `masquerade-ipv4`, `masquerade-ipv6`,
/// `non-masquerade-cidrs`, `cluster-cidrs`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MasqueradeOptions {
    pub ipv4: bool,
    pub ipv6: bool,
    /// Destinations reached with the pod's own address besides the pod CIDRs (networks that
    /// route pod CIDRs back, e.g. a VPC with routes to the nodes).
    pub non_masquerade_cidrs: Vec<IpNet>,
    /// The cluster's pod CIDRs besides every Node's `spec.podCIDRs` (e.g. the whole cluster
    /// range when some nodes get their pod CIDR late).
    pub cluster_cidrs: Vec<IpNet>,
}

impl MasqueradeOptions {
    /// Both families masqueraded, nothing else configured: the agent's default.
    pub fn enabled() -> MasqueradeOptions {
        MasqueradeOptions {
            ipv4: true,
            ipv6: true,
            non_masquerade_cidrs: Vec::new(),
            cluster_cidrs: Vec::new(),
        }
    }

    /// No masquerade in either family.
    pub fn disabled() -> MasqueradeOptions {
        MasqueradeOptions {
            ipv4: false,
            ipv6: false,
            ..MasqueradeOptions::enabled()
        }
    }

    pub fn on_for(&self, family: Family) -> bool {
        match family {
            Family::Ipv4 => self.ipv4,
            Family::Ipv6 => self.ipv6,
        }
    }
}

fn suffix(family: Family) -> &'static str {
    match family {
        Family::Ipv4 => "4",
        Family::Ipv6 => "6",
    }
}

/// Name of the set of the cluster's pod CIDRs of one family.
pub fn pod_cidrs_set(family: Family) -> String {
    format!("pod-cidrs{}", suffix(family))
}

/// Name of the set of `nonMasqueradeCIDRs` of one family.
pub fn non_masquerade_set(family: Family) -> String {
    format!("non-masq{}", suffix(family))
}

/// An interval set holding the union of `nets` (overlaps and adjacent ranges merged, as nft
/// requires of an interval set).
fn cidr_set(family: Family, nets: &[IpNet], comment: String) -> Set {
    let v4 = family == Family::Ipv4;
    let mut ranges = RangeSet::new();
    for net in nets.iter().filter(|n| Family::of(&n.addr()) == family) {
        let (lo, hi) = net_range(&net.trunc());
        ranges.add(lo, hi);
    }
    let mut set = Set {
        key: vec![match family {
            Family::Ipv4 => KeyType::Ipv4Addr,
            Family::Ipv6 => KeyType::Ipv6Addr,
        }],
        interval: true,
        comment: Some(comment),
        ..Set::default()
    };
    for &(lo, hi) in ranges.ranges() {
        for p in range_to_prefixes(lo, hi, v4) {
            set.elements.insert(vec![Value::Prefix(p)]);
        }
    }
    set
}

/// The masquerade chain and its sets for `state` (empty when masquerade is off, or when no
/// family has pod CIDRs yet).
pub fn masquerade_objects(state: &ClusterState, opts: &MasqueradeOptions) -> Ruleset {
    let mut out = Ruleset::default();
    let mut rules = Vec::new();
    for family in [Family::Ipv4, Family::Ipv6] {
        if !opts.on_for(family) {
            continue;
        }
        let mut pod_nets: Vec<IpNet> = state
            .nodes
            .values()
            .flat_map(|n| n.pod_cidrs.iter().copied())
            .collect();
        pod_nets.extend(opts.cluster_cidrs.iter().copied());
        let pods = cidr_set(family, &pod_nets, "pod CIDRs of the cluster".into());
        if pods.elements.is_empty() {
            continue;
        }
        let set = pod_cidrs_set(family);
        out.sets.insert(set.clone(), pods);
        let mut matches = vec![
            Match::Cmp {
                field: Field::IifName,
                op: CmpOp::Eq,
                value: Value::IfPrefix(HOST_VETH_PREFIX.to_string()),
            },
            Match::Lookup {
                fields: vec![Field::DstAddr(family)],
                set,
                negate: true,
            },
        ];
        let others = cidr_set(
            family,
            &opts.non_masquerade_cidrs,
            "nonMasqueradeCIDRs".into(),
        );
        if !others.elements.is_empty() {
            let set = non_masquerade_set(family);
            out.sets.insert(set.clone(), others);
            matches.push(Match::Lookup {
                fields: vec![Field::DstAddr(family)],
                set,
                negate: true,
            });
        }
        let name = match family {
            Family::Ipv4 => "IPv4",
            Family::Ipv6 => "IPv6",
        };
        rules.push(Rule {
            matches,
            statements: vec![Statement::Masquerade],
            verdict: None,
            comment: Some(format!(
                "{name} from a local pod to outside the pod network: the node's address"
            )),
        });
    }
    if !rules.is_empty() {
        out.chains.insert(
            MASQUERADE_CHAIN.to_string(),
            Chain {
                base: Some(BaseChain {
                    chain_type: ChainType::Nat,
                    hook: Hook::Postrouting,
                    priority: SRCNAT_PRIORITY,
                    policy: ChainPolicy::Accept,
                }),
                rules,
            },
        );
    }
    out
}

/// Replace the masquerade objects `old` (what `out` holds of them) with `new` in `out`,
/// recording in `touched` what differs.
pub(crate) fn install(out: &mut Ruleset, old: &Ruleset, new: &Ruleset, touched: &mut Touched) {
    for name in old.chains.keys() {
        if !new.chains.contains_key(name) {
            out.chains.remove(name);
            touched.chain(name);
        }
    }
    for name in old.sets.keys() {
        if !new.sets.contains_key(name) {
            out.sets.remove(name);
            touched.set(name);
        }
    }
    for (name, chain) in &new.chains {
        if old.chains.get(name) != Some(chain) {
            touched.chain(name);
        }
        out.chains.insert(name.clone(), chain.clone());
    }
    for (name, set) in &new.sets {
        if old.sets.get(name) != Some(set) {
            touched.set(name);
        }
        out.sets.insert(name.clone(), set.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::NodeInfo;

    fn state(nodes: &[(&str, &[&str])]) -> ClusterState {
        let mut s = ClusterState::default();
        for (name, cidrs) in nodes {
            s.nodes.insert(
                name.to_string(),
                NodeInfo {
                    name: name.to_string(),
                    internal_ips: vec![],
                    pod_cidrs: cidrs.iter().map(|c| c.parse().unwrap()).collect(),
                    ..NodeInfo::default()
                },
            );
        }
        s
    }

    fn prefixes(rs: &Ruleset, set: &str) -> Vec<String> {
        rs.sets[set]
            .elements
            .iter()
            .map(|e| match &e[0] {
                Value::Prefix(p) => p.to_string(),
                other => panic!("{other:?}"),
            })
            .collect()
    }

    #[test]
    fn pod_cidrs_of_every_node_and_the_configured_ones_merged() {
        let s = state(&[
            ("n1", &["10.244.1.0/24", "fd00:10:244:1::/64"]),
            ("n2", &["10.244.0.0/24", "fd00:10:244:2::/64"]),
        ]);
        let mut opts = MasqueradeOptions::enabled();
        opts.cluster_cidrs = vec!["10.244.0.0/23".parse().unwrap()];
        opts.non_masquerade_cidrs = vec![
            "192.0.2.0/25".parse().unwrap(),
            "192.0.2.128/25".parse().unwrap(),
        ];
        let rs = masquerade_objects(&s, &opts);
        // 10.244.0.0/23 holds both /24s: one element, as nft would list it.
        assert_eq!(prefixes(&rs, "pod-cidrs4"), ["10.244.0.0/23"]);
        assert_eq!(
            prefixes(&rs, "pod-cidrs6"),
            ["fd00:10:244:1::/64", "fd00:10:244:2::/64"]
        );
        assert_eq!(prefixes(&rs, "non-masq4"), ["192.0.2.0/24"]);
        assert!(
            !rs.sets.contains_key("non-masq6"),
            "no IPv6 entry configured"
        );
        let chain = &rs.chains[MASQUERADE_CHAIN];
        let base = chain.base.as_ref().unwrap();
        assert_eq!(
            (base.chain_type, base.hook, base.priority),
            (ChainType::Nat, Hook::Postrouting, 100)
        );
        let text = crate::nft::render_full(&rs);
        assert!(
            text.contains(
                "iifname \"pal*\" ip daddr != @pod-cidrs4 ip daddr != @non-masq4 masquerade fully-random"
            ),
            "{text}"
        );
        assert!(
            text.contains("iifname \"pal*\" ip6 daddr != @pod-cidrs6 masquerade fully-random"),
            "{text}"
        );
        assert!(crate::eval::interp::check_ruleset(&rs).is_empty());
    }

    #[test]
    fn a_node_coming_or_going_changes_set_elements_only() {
        use crate::compile::{Change, CompileOptions, Compiler};
        let node = |name: &str, n: u8| NodeInfo {
            name: name.into(),
            internal_ips: vec![format!("192.0.2.{n}").parse().unwrap()],
            pod_cidrs: vec![
                format!("10.244.{n}.0/24").parse().unwrap(),
                format!("fd00:10:244:{n}::/64").parse().unwrap(),
            ],
            ..NodeInfo::default()
        };
        let mut c = Compiler::with_state(
            CompileOptions {
                node: "n1".into(),
                fail_closed_new_pods: true,
                nflog_group: None,
                masquerade: MasqueradeOptions::enabled(),
            },
            state(&[("n1", &["10.244.1.0/24", "fd00:10:244:1::/64"])]),
        );
        let (first, touched) = c.ruleset_and_touched();
        assert!(touched.all && first.chains.contains_key(MASQUERADE_CHAIN));
        let sets = |names: &[&str]| names.iter().map(|n| n.to_string()).collect();

        c.apply(Change::UpsertNode(node("n2", 2)));
        let (rs, touched) = c.ruleset_and_touched();
        assert!(!touched.all && touched.chains.is_empty() && touched.maps.is_empty());
        assert_eq!(touched.sets, sets(&["pod-cidrs4", "pod-cidrs6"]));
        assert_eq!(
            prefixes(rs, "pod-cidrs4"),
            ["10.244.1.0/24", "10.244.2.0/24"]
        );

        // A Node update that leaves its pod CIDRs alone (a new address, a heartbeat) changes
        // nothing.
        let mut moved = node("n2", 2);
        moved.internal_ips = vec!["192.0.2.99".parse().unwrap()];
        c.apply(Change::UpsertNode(moved));
        let (_, touched) = c.ruleset_and_touched();
        assert!(touched.sets.is_empty() && touched.chains.is_empty());

        c.apply(Change::DeleteNode("n2".into()));
        let (rs, touched) = c.ruleset_and_touched();
        assert_eq!(touched.sets, sets(&["pod-cidrs4", "pod-cidrs6"]));
        assert_eq!(prefixes(rs, "pod-cidrs4"), ["10.244.1.0/24"]);
        assert_eq!(c.ruleset(), crate::compile::compile(c.state(), c.options()));
    }

    #[test]
    fn per_family_switch_and_nothing_without_pod_cidrs() {
        let s = state(&[("n1", &["10.244.1.0/24", "fd00:10:244:1::/64"])]);
        let mut v4_only = MasqueradeOptions::enabled();
        v4_only.ipv6 = false;
        let rs = masquerade_objects(&s, &v4_only);
        assert_eq!(rs.chains[MASQUERADE_CHAIN].rules.len(), 1);
        assert!(rs.sets.contains_key("pod-cidrs4") && !rs.sets.contains_key("pod-cidrs6"));

        assert_eq!(
            masquerade_objects(&s, &MasqueradeOptions::disabled()),
            Ruleset::default()
        );
        // A family without any pod CIDR gets no rule: pod destinations could not be told.
        let v4_nodes = state(&[("n1", &["10.244.1.0/24"])]);
        let rs = masquerade_objects(&v4_nodes, &MasqueradeOptions::enabled());
        assert_eq!(rs.chains[MASQUERADE_CHAIN].rules.len(), 1);
        assert!(!rs.sets.contains_key("pod-cidrs6"));
        assert_eq!(
            masquerade_objects(&state(&[]), &MasqueradeOptions::enabled()),
            Ruleset::default()
        );
    }
}
