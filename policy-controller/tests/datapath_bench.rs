//! Datapath benchmark (printed, not asserted):
//! `cargo test -p palisade-policy --release --test datapath_bench -- --ignored --nocapture`.
//!
//! Two pods behind a node namespace, and the ruleset the compiler makes for a cluster of
//! 10k pods in which 0, 1, 10, 100 or 1000 NetworkPolicies select the destination pod B (each
//! admits a different peer label on the benchmark ports; exactly one admits pod A). Against no
//! table at all, alternating rounds in the same run: the new-connection rate (a loop of TCP
//! connects, closed with RST so no TIME_WAIT piles up) at every policy count, and bulk TCP
//! throughput (iperf3 -t 5) at 1000 policies. Every ratio printed is against the no-table
//! rounds of this run.
//!
//! Two references beside them: "conntrack only", a table whose one forward chain accepts
//! replies by conntrack state and everything else (with no table, the node namespace runs no
//! conntrack hooks at all: this is the price of being stateful), and "0 policies", the whole
//! compiled table with B selected by nothing (conntrack, the fail-closed check, the dispatch
//! map misses). What the other counts lose beyond "0 policies" is the cost of the policies
//! that select B: with the flat compiled form (`compile/flat.rs`) a fixed number of lookups
//! whatever their number.

// `pub`: the support module is shared by several test binaries, each using a part of it.
pub mod nft_support;

use nft_support::netns::*;
use palisade_policy::compile::{compile, CompileOptions, MasqueradeOptions};
use palisade_policy::model::api::{
    IntOrString, LabelSelector, NetworkPolicy, NetworkPolicyIngressRule, NetworkPolicyPeer,
    NetworkPolicyPort, NetworkPolicySpec, ObjectMeta,
};
use palisade_policy::model::{ClusterState, Labels, ObjectKey, PodInfo};
use palisade_policy::nft::Dataplane;
use palisade_policy::ruleset::{Chain, CtState, Match, Rule, Ruleset, Verdict};
use palisade_testutil::{kernel_tests_enabled, load_average};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

const CONNECT_SECONDS: f64 = 2.0;
const ROUNDS: usize = 3;
const POLICY_COUNTS: [usize; 5] = [0, 1, 10, 100, 1000];
/// The policy count whose throughput is measured against no table.
const THROUGHPUT_POLICIES: usize = 1000;
const CLUSTER_PODS: usize = 10_000;
const NAMESPACE: &str = "bench";

fn labels(pairs: &[(&str, String)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect()
}

fn pod(name: &str, node: &str, ips: &[&str], labels: Labels) -> PodInfo {
    PodInfo {
        key: ObjectKey::new(NAMESPACE, name),
        node: Some(node.into()),
        labels,
        ips: ips.iter().map(|ip| ip.parse::<IpAddr>().unwrap()).collect(),
        host_network: false,
        terminating: false,
        named_ports: Vec::new(),
    }
}

fn match_labels(k: &str, v: String) -> LabelSelector {
    LabelSelector {
        match_labels: Some(labels(&[(k, v)])),
        match_expressions: None,
    }
}

/// Policy `i` of `count`: selects B, admits pods labelled `peer=p<i>` on the benchmark ports.
/// Pod A carries `peer=p<count - 1>`, so exactly one policy admits it.
fn policy(i: usize) -> NetworkPolicy {
    let tcp = |port: i32| NetworkPolicyPort {
        protocol: None,
        port: Some(IntOrString::Int(port)),
        end_port: None,
    };
    NetworkPolicy {
        metadata: ObjectMeta {
            namespace: NAMESPACE.into(),
            name: format!("policy{i}"),
            ..Default::default()
        },
        spec: NetworkPolicySpec {
            pod_selector: match_labels("app", "server".into()),
            policy_types: Some(vec!["Ingress".into()]),
            ingress: Some(vec![NetworkPolicyIngressRule {
                from: Some(vec![NetworkPolicyPeer {
                    pod_selector: Some(match_labels("peer", format!("p{i}"))),
                    ..Default::default()
                }]),
                ports: Some(vec![tcp(9000), tcp(5201)]),
            }]),
            egress: None,
        },
        ..Default::default()
    }
}

/// The cluster: A and B on this node (`node-0`), `CLUSTER_PODS` pods on other nodes spread
/// over 1000 peer labels, `policies` policies selecting B.
fn state(policies: usize) -> ClusterState {
    let mut s = ClusterState::default();
    s.upsert_namespace(NAMESPACE, Labels::new());
    let a_label = format!("p{}", policies.saturating_sub(1));
    for p in [
        pod("a", "node-0", &[A4, A6], labels(&[("peer", a_label)])),
        pod(
            "b",
            "node-0",
            &[B4, B6],
            labels(&[("app", "server".into())]),
        ),
    ] {
        s.pods.insert(p.key.clone(), p);
    }
    for i in 0..CLUSTER_PODS {
        let ip = format!("10.{}.{}.{}", 128 + i / 65536, (i / 256) % 256, i % 256);
        let p = pod(
            &format!("pod{i}"),
            &format!("node-{}", 1 + i % 90),
            &[&ip],
            labels(&[("peer", format!("p{}", i % 1000))]),
        );
        s.pods.insert(p.key.clone(), p);
    }
    for i in 0..policies {
        let p = policy(i);
        s.network_policies
            .insert(ObjectKey::new(NAMESPACE, &p.metadata.name), p);
    }
    s
}

fn ruleset(policies: usize) -> Ruleset {
    compile(
        &state(policies),
        &CompileOptions {
            node: "node-0".into(),
            fail_closed_new_pods: true,
            nflog_group: Some(1),
            masquerade: MasqueradeOptions::disabled(),
        },
    )
}

/// One forward chain: replies accepted by conntrack state, then the chain's accept policy.
fn conntrack_only() -> Ruleset {
    let mut rs = Ruleset::default();
    rs.chains.insert(
        "forward".into(),
        Chain {
            base: nft_support::base(
                palisade_policy::ruleset::Hook::Forward,
                palisade_policy::ruleset::ChainPolicy::Accept,
            ),
            rules: vec![Rule::new(
                vec![Match::CtState(vec![CtState::Established, CtState::Related])],
                Verdict::Accept,
            )],
        },
    );
    rs
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len() as f64
}

#[test]
#[ignore = "benchmark: run with --ignored --nocapture --test-threads=1, --release (root)"]
fn datapath_with_and_without_the_ruleset() {
    if !kernel_tests_enabled() {
        return;
    }
    let t = Topology::new("dp-bench");
    let mut dp = t.dataplane(&format!("palt-{}", std::process::id()));
    let mut rulesets: Vec<(String, Ruleset)> = vec![("conntrack only".into(), conntrack_only())];
    rulesets.extend(
        POLICY_COUNTS
            .iter()
            .map(|&n| (format!("{n} policies"), ruleset(n))),
    );
    // For profiling one variant (perf record around the run): `DATAPATH_BENCH_ONLY="1000
    // policies"` keeps that one beside the no-table rounds.
    if let Ok(only) = std::env::var("DATAPATH_BENCH_ONLY") {
        rulesets.retain(|(what, _)| *what == only);
    }
    let throughput_variant = format!("{THROUGHPUT_POLICIES} policies");
    for (what, rs) in &rulesets {
        println!(
            "{what:>14}: {} chains, {} set elements, {} map elements",
            rs.chains.len(),
            rs.sets.values().map(|s| s.elements.len()).sum::<usize>(),
            rs.maps.values().map(|m| m.elements.len()).sum::<usize>()
        );
    }
    let to: SocketAddr = format!("{B4}:9000").parse().unwrap();
    tcp_server(&t.b, 9000);
    let mut iperf =
        t.b.spawn("iperf3", &["-s", "-p", "5201"])
            .expect("iperf3 server");
    std::thread::sleep(Duration::from_millis(300));
    println!("load average at start: {}", load_average());

    // Index 0: no table; then one per policy count.
    let mut rates: Vec<Vec<f64>> = vec![Vec::new(); rulesets.len() + 1];
    let (mut tput_none, mut tput_rules) = (Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        for (variant, samples) in rates.iter_mut().enumerate() {
            let label = match variant {
                0 => {
                    dp.delete_table().unwrap();
                    "no table".to_string()
                }
                v => {
                    let (what, rs) = &rulesets[v - 1];
                    dp.apply(rs).unwrap();
                    what.clone()
                }
            };
            // Start every measurement from the same conntrack state.
            let _ = t.node.sh("conntrack -F 2>/dev/null");
            let c = connection_rate(&t.a, to, CONNECT_SECONDS);
            samples.push(c);
            let mut line = format!("round {round} {label:>14}: {c:.0} connections/s");
            let throughput_here = variant == 0 || label == throughput_variant;
            if throughput_here {
                let g = iperf3_gbit(&t.a, B4);
                line += &format!(", {g:.2} Gbit/s");
                if variant == 0 {
                    tput_none.push(g);
                } else {
                    tput_rules.push(g);
                }
            }
            println!("{line}");
        }
    }
    let _ = iperf.kill();
    let _ = iperf.wait();
    dp.delete_table().unwrap();
    let none = mean(&rates[0]);
    for (v, (what, _)) in rulesets.iter().enumerate() {
        let r = mean(&rates[v + 1]);
        println!(
            "connection rate: {what:>14} {r:.0}/s vs no table {none:.0}/s = {:.3}x (target >= 0.95x)",
            r / none
        );
    }
    println!(
        "throughput: {THROUGHPUT_POLICIES} policies {:.2} vs no table {:.2} Gbit/s = {:.3}x (target >= 0.97x)",
        mean(&tput_rules),
        mean(&tput_none),
        mean(&tput_rules) / mean(&tput_none)
    );
    println!("load average at end: {}", load_average());
}
