//! Compiler benchmark (ignored by default; run with
//! `cargo test --release -p palisade-policy --test compile_bench -- --ignored --nocapture`).
//!
//! The benchmark clusters of `bench_cluster` (10k pods / 1k NetworkPolicies and 50k pods /
//! 5k, each without and with 100 ClusterNetworkPolicies). Prints, for each, the cold full
//! compile, then incremental compiles for single changes, each beside the full compile of the
//! same state and the ratio incremental / full. Nothing is asserted about time (numbers are
//! noisy on shared machines); the incremental results are checked equal to full compiles, so
//! the figures are of correct work. The same on the kernel (compile + apply) is `sync_bench`,
//! a binary of its own so that the two never run at the same time.

// `pub`: the support module is shared by several test binaries.
pub mod bench_cluster;

use bench_cluster::*;
use palisade_policy::compile::{compile, Change, CompileOptions, Compiler};
use palisade_policy::model::policy::Direction;
use palisade_policy::model::{ClusterState, NodeInfo, ObjectKey};
use std::time::Instant;

#[test]
#[ignore = "benchmark: run with --ignored --nocapture, preferably --release"]
fn compile_benchmark() {
    for size in SIZES {
        for cluster_policies in [false, true] {
            heading(size, cluster_policies);
            compile_benchmark_of(size, cluster_with(size, cluster_policies), cluster_policies);
        }
    }
}

fn compile_benchmark_of(size: Size, state: ClusterState, cluster_policies: bool) {
    let opts = CompileOptions {
        node: "node-0".into(),
        fail_closed_new_pods: true,
        nflog_group: Some(1),
        masquerade: palisade_policy::compile::MasqueradeOptions::enabled(),
    };

    let t = Instant::now();
    let full = compile(&state, &opts);
    let cold = t.elapsed();
    let elements: usize = full.sets.values().map(|s| s.elements.len()).sum();
    println!(
        "cluster: {} pods, {} policies, {} cluster policies, {LOCAL_PODS} local pods -> {} chains, {} sets ({elements} elements), {} map elements",
        size.pods,
        size.policies,
        state.cluster_network_policies.len(),
        full.chains.len(),
        full.sets.len(),
        full.maps.values().map(|m| m.elements.len()).sum::<usize>()
    );
    println!("cold full compile: {:.1} ms", ms(cold));
    for direction in Direction::BOTH {
        let t = Instant::now();
        let e = peer_class_estimate(&state, "node-0", direction);
        println!(
            "peer-class form (estimate, {direction}): {} enforced local pods, {} peers, {} classes, \
             {} address elements + {} network intervals, {} verdict elements ({:.0} ms to compute)",
            e.enforced_local_pods,
            e.peers,
            e.classes,
            e.address_elements,
            e.network_intervals,
            e.verdict_elements,
            ms(t.elapsed())
        );
    }

    let mut compiler = Compiler::with_state(opts.clone(), state.clone());
    let t = Instant::now();
    let first = compiler.ruleset();
    println!(
        "Compiler first ruleset (cold, builds caches): {:.1} ms",
        ms(t.elapsed())
    );
    assert_eq!(first, full);

    let mut remote = pod(size, size.pods + 1);
    remote.node = Some("node-5".into());
    let mut local = pod(size, size.pods + 2);
    local.node = Some("node-0".into());
    let mut relabelled = pod(size, 500);
    relabelled.labels.insert("app".into(), "app3".into());
    let mut changed_policy = policy(size, 3);
    changed_policy.spec.ingress.as_mut().unwrap()[0].ports = None;
    let mut changed_cluster_policy = cluster_policy(4);
    changed_cluster_policy.spec.priority = Some(7);

    let mut steps: Vec<(&str, Change)> = vec![
        ("remote pod add", Change::UpsertPod(remote.clone())),
        ("remote pod remove", Change::DeletePod(remote.key.clone())),
        ("local pod add", Change::UpsertPod(local.clone())),
        ("local pod remove", Change::DeletePod(local.key.clone())),
        ("remote pod label change", Change::UpsertPod(relabelled)),
        (
            "namespace label change",
            Change::UpsertNamespace {
                name: "ns7".into(),
                labels: labels(&[("team", "team3".into())]),
            },
        ),
        (
            "policy change",
            Change::UpsertPolicy(Box::new(changed_policy)),
        ),
        (
            "policy delete",
            Change::DeletePolicy(ObjectKey::new("ns3", "policy3")),
        ),
    ];
    if cluster_policies {
        steps.extend([
            (
                "cluster policy change",
                Change::UpsertClusterPolicy(Box::new(changed_cluster_policy)),
            ),
            (
                "cluster policy delete",
                Change::DeleteClusterPolicy("cnp4".into()),
            ),
            (
                "node label change",
                Change::UpsertNode(NodeInfo {
                    labels: labels(&[("role", "r1".into())]),
                    ..compiler.state().nodes["node-7"].clone()
                }),
            ),
        ]);
    }
    println!(
        "{:<26} {:>14} {:>16} {:>10} {:>12}",
        "change", "incremental ms", "(+clone out) ms", "full ms", "incr/full"
    );
    for (what, change) in steps {
        compiler.apply(change.clone());
        let t = Instant::now();
        compiler.ruleset_ref();
        let incremental = t.elapsed();
        let t = Instant::now();
        let got = compiler.ruleset();
        let with_clone = incremental + t.elapsed();
        let t = Instant::now();
        let want = compile(compiler.state(), &opts);
        let full = t.elapsed();
        assert_eq!(got, want, "{what}: incremental differs from full");
        println!(
            "{what:<26} {:>14.2} {:>16.2} {:>10.1} {:>12.4}",
            ms(incremental),
            ms(with_clone),
            ms(full),
            incremental.as_secs_f64() / full.as_secs_f64()
        );
    }

    // The same pod changes repeated (medians of 21 rounds; single samples above are noisy).
    let round = |compiler: &mut Compiler, change: Change| {
        compiler.apply(change);
        let t = Instant::now();
        compiler.ruleset_ref();
        t.elapsed()
    };
    let (mut local_add, mut local_del, mut remote_add, mut remote_del) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for _ in 0..21 {
        local_add.push(round(&mut compiler, Change::UpsertPod(local.clone())));
        local_del.push(round(&mut compiler, Change::DeletePod(local.key.clone())));
        remote_add.push(round(&mut compiler, Change::UpsertPod(remote.clone())));
        remote_del.push(round(&mut compiler, Change::DeletePod(remote.key.clone())));
    }
    let median = |mut v: Vec<std::time::Duration>| {
        v.sort();
        ms(v[v.len() / 2])
    };
    println!(
        "compile only, medians of 21: local pod add {:.2} ms, local pod remove {:.2} ms, remote pod add {:.2} ms, remote pod remove {:.2} ms",
        median(local_add),
        median(local_del),
        median(remote_add),
        median(remote_del)
    );
}
