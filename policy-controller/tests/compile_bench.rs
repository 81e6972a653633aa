//! Compiler benchmark (ignored by default; run with
//! `cargo test --release -p palisade-policy --test compile_bench -- --ignored --nocapture`).
//!
//! A cluster of 10k pods in 100 namespaces over 91 nodes (110 pods on the compiled node),
//! 1k policies. Prints the cold full compile, then incremental compiles for single changes,
//! each beside the full compile of the same state and the ratio incremental / full. Nothing is
//! asserted about time (numbers are noisy on shared machines); the incremental results are
//! checked equal to full compiles, so the figures are of correct work.

use palisade_policy::compile::{compile, Change, CompileOptions, Compiler};
use palisade_policy::model::api::{
    IntOrString, LabelSelector, LabelSelectorRequirement, NetworkPolicy, NetworkPolicyEgressRule,
    NetworkPolicyIngressRule, NetworkPolicyPeer, NetworkPolicyPort, NetworkPolicySpec, ObjectMeta,
};
use palisade_policy::model::{ClusterState, Labels, NamedPort, ObjectKey, PodInfo, Protocol};
use std::time::{Duration, Instant};

const PODS: usize = 10_000;
const NAMESPACES: usize = 100;
const POLICIES: usize = 1_000;
const LOCAL_PODS: usize = 110;
const APPS: usize = 20;

fn labels(pairs: &[(&str, String)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect()
}

fn pod(i: usize) -> PodInfo {
    // The first LOCAL_PODS pods are on node-0, the rest spread over 90 other nodes.
    let node = if i < LOCAL_PODS { 0 } else { 1 + (i % 90) };
    PodInfo {
        key: ObjectKey::new(format!("ns{}", i % NAMESPACES), format!("pod{i}")),
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

fn policy(i: usize) -> NetworkPolicy {
    let ns = format!("ns{}", i % NAMESPACES);
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

fn cluster() -> ClusterState {
    let mut s = ClusterState::default();
    for n in 0..NAMESPACES {
        s.upsert_namespace(
            &format!("ns{n}"),
            labels(&[("team", format!("team{}", n % 10))]),
        );
    }
    for i in 0..PODS {
        let p = pod(i);
        s.pods.insert(p.key.clone(), p);
    }
    for i in 0..POLICIES {
        let p = policy(i);
        s.policies
            .insert(ObjectKey::new(&p.metadata.namespace, &p.metadata.name), p);
    }
    s
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[test]
#[ignore = "benchmark: run with --ignored --nocapture, preferably --release"]
fn compile_benchmark() {
    let opts = CompileOptions {
        node: "node-0".into(),
        fail_closed_new_pods: true,
        nflog_group: Some(1),
        masquerade: palisade_policy::compile::MasqueradeOptions::enabled(),
    };
    let state = cluster();

    let t = Instant::now();
    let full = compile(&state, &opts);
    let cold = t.elapsed();
    let elements: usize = full.sets.values().map(|s| s.elements.len()).sum();
    println!(
        "cluster: {PODS} pods, {POLICIES} policies, {LOCAL_PODS} local pods -> {} chains, {} sets ({elements} elements), {} map elements",
        full.chains.len(),
        full.sets.len(),
        full.maps.values().map(|m| m.elements.len()).sum::<usize>()
    );
    println!("cold full compile: {:.1} ms", ms(cold));

    let mut compiler = Compiler::with_state(opts.clone(), state.clone());
    let t = Instant::now();
    let first = compiler.ruleset();
    println!(
        "Compiler first ruleset (cold, builds caches): {:.1} ms",
        ms(t.elapsed())
    );
    assert_eq!(first, full);

    let mut remote = pod(PODS + 1);
    remote.node = Some("node-5".into());
    let mut local = pod(PODS + 2);
    local.node = Some("node-0".into());
    let mut relabelled = pod(500);
    relabelled.labels.insert("app".into(), "app3".into());
    let mut changed_policy = policy(3);
    changed_policy.spec.ingress.as_mut().unwrap()[0].ports = None;

    let steps: Vec<(&str, Change)> = vec![
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
        "medians of 21: local pod add {:.2} ms, local pod remove {:.2} ms, remote pod add {:.2} ms, remote pod remove {:.2} ms",
        median(local_add),
        median(local_del),
        median(remote_add),
        median(remote_del)
    );
}

/// The whole path the agent takes for one change, on the real kernel in a test namespace:
/// incremental compile of the same 10k-pod cluster, then diff and program the table (element
/// changes as a netlink batch). Prints the cold full sync and medians of 21 rounds per change.
#[test]
#[ignore = "benchmark: run with --ignored --nocapture, preferably --release (root)"]
fn pod_change_compiled_and_applied() {
    use palisade_policy::nft::{Dataplane, NftDataplane, NftOptions};
    if !palisade_testutil::kernel_tests_enabled() {
        return;
    }
    let ns = palisade_testutil::TestNetns::new("e2e-bench").unwrap();
    let mut dp = NftDataplane::new(NftOptions {
        table: format!("palt-{}", std::process::id()),
        netns: Some(ns.path().to_path_buf()),
        ..NftOptions::default()
    });
    let opts = CompileOptions {
        node: "node-0".into(),
        fail_closed_new_pods: true,
        nflog_group: Some(1),
        masquerade: palisade_policy::compile::MasqueradeOptions::enabled(),
    };
    let mut compiler = Compiler::with_state(opts, cluster());
    let t = Instant::now();
    let (rs, touched) = compiler.ruleset_and_touched();
    dp.apply_touched(rs, &touched).unwrap();
    let last = dp.last_apply();
    println!(
        "cold full sync (compile + apply): {:.1} ms (target <= 1000 ms): in process {:.1} ms, \
         listing {:.1} ms, nft {:.1} ms, {} KiB sent",
        ms(t.elapsed()),
        ms(last.cpu_time),
        ms(last.list_time),
        ms(last.nft_time),
        last.bytes / 1024
    );

    let mut remote = pod(PODS + 1);
    remote.node = Some("node-5".into());
    let mut local = pod(PODS + 2);
    local.node = Some("node-0".into());
    let mut round = |change: Change| {
        let t = Instant::now();
        compiler.apply(change);
        // As the agent does: the dataplane looks only at what the compiler rebuilt.
        let (rs, touched) = compiler.ruleset_and_touched();
        let compiled = t.elapsed();
        dp.apply_touched(rs, &touched).unwrap();
        let last = dp.last_apply();
        (
            compiled,
            t.elapsed(),
            last.via_netlink,
            last.cpu_time,
            last.nft_time,
        )
    };
    // Per change: (compile time, compile + apply time, sent as a netlink batch, dataplane
    // time in process, time sending to the kernel).
    type Sample = (Duration, Duration, bool, Duration, Duration);
    let mut rows: Vec<(&str, Vec<Sample>)> = vec![
        ("local pod add", Vec::new()),
        ("local pod remove", Vec::new()),
        ("remote pod add", Vec::new()),
        ("remote pod remove", Vec::new()),
    ];
    for _ in 0..21 {
        rows[0].1.push(round(Change::UpsertPod(local.clone())));
        rows[1].1.push(round(Change::DeletePod(local.key.clone())));
        rows[2].1.push(round(Change::UpsertPod(remote.clone())));
        rows[3].1.push(round(Change::DeletePod(remote.key.clone())));
    }
    let median = |mut v: Vec<Duration>| {
        v.sort();
        ms(v[v.len() / 2])
    };
    println!("one pod change, compiled and applied (medians of 21; target <= 20 ms):");
    for (what, samples) in rows {
        let netlink = samples.iter().filter(|s| s.2).count();
        println!(
            "  {what:<18} total {:>6.2} ms  (compile {:>6.2} ms, dataplane in process {:>6.2} ms, \
             send {:>6.2} ms)  netlink batch in {netlink}/21",
            median(samples.iter().map(|s| s.1).collect()),
            median(samples.iter().map(|s| s.0).collect()),
            median(samples.iter().map(|s| s.3).collect()),
            median(samples.iter().map(|s| s.4).collect()),
        );
    }
    dp.delete_table().unwrap();
}
