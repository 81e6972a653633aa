//! Compiled rulesets on the real kernel (root; inside test namespaces), for what scenario
//! probes between pods cannot show: a named port behind an address block towards an address
//! that is no pod's (issue 15), and ClusterNetworkPolicy `nodes` peers, which match the
//! node's own addresses (traffic a pod sends to its node goes through `input`). IPv4 and
//! IPv6 each time.

pub mod nft_support;

use nft_support::netns::*;
use palisade_policy::compile::{compile, CompileOptions};
use palisade_policy::model::api::{self, ClusterNetworkPolicy, NetworkPolicy};
use palisade_policy::model::{ClusterState, NodeInfo, PodInfo};
use palisade_policy::nft::Dataplane;
use palisade_testutil::kernel_tests_enabled;
use serde_json::{json, Value};
use std::net::SocketAddr;

/// A second address on pod B's interface that no pod of the cluster state has.
const STRAY4: &str = "10.70.2.3";
const STRAY6: &str = "fd70:2::3";

fn table_name() -> String {
    format!("palc-{}", std::process::id())
}

fn pod(name: &str, ips: [&str; 2], containers: Value, init_containers: Value) -> PodInfo {
    let pod: api::Pod = serde_json::from_value(json!({
        "metadata": {"namespace": "x", "name": name, "labels": {"pod": name}},
        "spec": {"nodeName": "n", "containers": containers, "initContainers": init_containers},
        "status": {"phase": "Running", "podIPs": [{"ip": ips[0]}, {"ip": ips[1]}]},
    }))
    .unwrap();
    PodInfo::from_api(&pod)
}

/// x/a and x/b on node `n` (B names 9090 `metrics` on its container and 9191 `probe` on a
/// sidecar), and the node with the addresses it has on the pods' links.
fn state(node_labels: Value) -> ClusterState {
    let mut s = ClusterState::default();
    s.upsert_namespace("x", Default::default());
    for p in [
        pod("a", [A4, A6], json!([{"name": "main"}]), json!([])),
        pod(
            "b",
            [B4, B6],
            json!([{"name": "main", "ports": [{"name": "metrics", "containerPort": 9090}]}]),
            json!([{"name": "sidecar", "restartPolicy": "Always",
                    "ports": [{"name": "probe", "containerPort": 9191}]}]),
        ),
    ] {
        s.pods.insert(p.key.clone(), p);
    }
    let node: api::Node = serde_json::from_value(json!({
        "metadata": {"name": "n", "labels": node_labels},
        "spec": {"podCIDRs": ["10.70.0.0/16", "fd70::/16"]},
        "status": {"addresses": [
            {"type": "InternalIP", "address": "10.70.1.1"},
            {"type": "InternalIP", "address": "fd70:1::1"},
            {"type": "ExternalIP", "address": "10.70.2.1"},
            {"type": "ExternalIP", "address": "fd70:2::1"},
        ]},
    }))
    .unwrap();
    s.nodes.insert("n".into(), NodeInfo::from_api(&node));
    s
}

fn options() -> CompileOptions {
    CompileOptions {
        node: "n".into(),
        // Off: the address that is no pod's must be refused by policy, not by the guard
        // for pods the agent does not know yet.
        fail_closed_new_pods: false,
        nflog_group: None,
        masquerade: palisade_policy::compile::MasqueradeOptions::enabled(),
    }
}

fn at(ip: &str, port: u16) -> SocketAddr {
    SocketAddr::new(ip.parse().unwrap(), port)
}

/// Issue 15: egress to `10.0.0.0/8` / `fd00::/8` on the named ports `metrics` and `probe`
/// reaches B's container port and B's sidecar port; a port B does not name, and the named
/// port on an address in the block that is no pod's, stay closed; a numeric port of the same
/// rule to that address is open (so the path itself works).
#[test]
fn a_named_port_behind_an_address_block_is_the_destination_pods_port() {
    if !kernel_tests_enabled() {
        return;
    }
    let t = Topology::new("cmp-named");
    t.b.sh(&format!(
        "ip addr add {STRAY4}/24 dev eth0 && ip -6 addr add {STRAY6}/64 dev eth0 nodad"
    ))
    .unwrap();
    for port in [9090, 9191, 8080, 7070] {
        tcp_server(&t.b, port);
    }
    let mut s = state(json!({}));
    let policy: NetworkPolicy = serde_json::from_value(json!({
        "metadata": {"namespace": "x", "name": "metrics-out"},
        "spec": {"podSelector": {"matchLabels": {"pod": "a"}}, "policyTypes": ["Egress"],
                 "egress": [{"to": [{"ipBlock": {"cidr": "10.0.0.0/8"}}, {"ipBlock": {"cidr": "fd00::/8"}}],
                             "ports": [{"port": "metrics"}, {"port": "probe"}, {"port": 7070}]}]},
    }))
    .unwrap();
    s.network_policies.insert(
        palisade_policy::model::ObjectKey::new("x", "metrics-out"),
        policy,
    );
    let mut dp = t.dataplane(&table_name());
    dp.apply(&compile(&s, &options())).unwrap();
    for (b, stray) in [(B4, STRAY4), (B6, STRAY6)] {
        assert!(tcp_open(&t.a, at(b, 9090)), "{b}: container port `metrics`");
        assert!(tcp_open(&t.a, at(b, 9191)), "{b}: sidecar port `probe`");
        assert!(
            tcp_blocked(&t.a, at(b, 8080)),
            "{b}: a port B does not name"
        );
        assert!(
            tcp_open(&t.a, at(stray, 7070)),
            "{stray}: numeric port of the rule"
        );
        assert!(
            tcp_blocked(&t.a, at(stray, 9090)),
            "{stray}: no pod has this address, so it has no port named `metrics`"
        );
        assert!(tcp_blocked(&t.a, at(stray, 9191)), "{stray}: nor `probe`");
    }
}

fn cluster_policy(name: &str, spec: Value) -> (String, ClusterNetworkPolicy) {
    let p = serde_json::from_value(json!({"metadata": {"name": name}, "spec": spec})).unwrap();
    (name.to_string(), p)
}

/// `nodes` peers: the addresses of the matching nodes, here the node A talks to through
/// `input`. A Deny towards nodes labelled role=gateway closes the node and leaves pod B
/// alone; relabelled, the node is open again; an Accept towards the nodes before a Baseline
/// Deny of all pods keeps the node open and closes B.
#[test]
fn nodes_peers_match_the_nodes_addresses() {
    if !kernel_tests_enabled() {
        return;
    }
    let t = Topology::new("cmp-nodes");
    tcp_server(&t.node, 2222);
    tcp_server(&t.b, 2222);
    let mut dp = t.dataplane(&table_name());
    let deny_gateways = cluster_policy(
        "deny-gateways",
        json!({"tier": "Admin", "priority": 10, "subject": {"namespaces": {}},
               "egress": [{"action": "Deny", "to": [{"nodes": {"matchLabels": {"role": "gateway"}}}]}]}),
    );
    let mut s = state(json!({"role": "gateway"}));
    s.cluster_network_policies.extend([deny_gateways.clone()]);
    dp.apply(&compile(&s, &options())).unwrap();
    for (node, b) in [("10.70.1.1", B4), ("fd70:1::1", B6)] {
        assert!(tcp_blocked(&t.a, at(node, 2222)), "{node}: a gateway node");
        assert!(tcp_open(&t.a, at(b, 2222)), "{b}: a pod, not a node");
    }
    // The node's other (external) address is one of its addresses too.
    assert!(tcp_blocked(&t.a, at("10.70.2.1", 2222)));

    let mut s = state(json!({"role": "worker"}));
    s.cluster_network_policies.extend([deny_gateways]);
    dp.apply(&compile(&s, &options())).unwrap();
    for node in ["10.70.1.1", "fd70:1::1"] {
        assert!(tcp_open(&t.a, at(node, 2222)), "{node}: no longer selected");
    }

    let mut s = state(json!({"role": "worker"}));
    s.cluster_network_policies.extend([
        cluster_policy(
            "accept-nodes",
            json!({"tier": "Admin", "priority": 10, "subject": {"namespaces": {}},
                   "egress": [{"action": "Accept", "to": [{"nodes": {}}]}]}),
        ),
        cluster_policy(
            "deny-pods",
            json!({"tier": "Baseline", "priority": 10, "subject": {"namespaces": {}},
                   "egress": [{"action": "Deny", "to": [{"namespaces": {}}]}]}),
        ),
    ]);
    dp.apply(&compile(&s, &options())).unwrap();
    for (node, b) in [("10.70.1.1", B4), ("fd70:1::1", B6)] {
        assert!(tcp_open(&t.a, at(node, 2222)), "{node}: accepted");
        assert!(tcp_blocked(&t.a, at(b, 2222)), "{b}: denied by Baseline");
    }
}
