//! Sync benchmark on the real kernel (ignored by default; run as root with
//! `cargo test --release -p palisade-policy --test sync_bench -- --ignored --nocapture`).
//!
//! The benchmark clusters of `bench_cluster`, compiled and programmed into a table in a test
//! namespace exactly as the agent does it: the cold full sync, then single pod changes
//! (incremental compile, diff, element changes as a netlink batch), medians of 21 rounds.
//! A binary of its own, so that `compile_bench` never runs beside it.
//! `SYNC_BENCH_PODS=10000` runs only the clusters of that size (both kinds); unset, all.

// `pub`: the support module is shared by several test binaries.
pub mod bench_cluster;

use bench_cluster::*;
use palisade_policy::compile::{Change, CompileOptions, Compiler};
use palisade_policy::model::ClusterState;
use palisade_testutil::load_average;
use std::time::{Duration, Instant};

/// The whole path the agent takes for one change, on the real kernel in a test namespace:
/// incremental compile of the same 10k-pod cluster, then diff and program the table (element
/// changes as a netlink batch). Prints the cold full sync and medians of 21 rounds per change.
#[test]
#[ignore = "benchmark: run with --ignored --nocapture, preferably --release (root)"]
fn pod_change_compiled_and_applied() {
    if !palisade_testutil::kernel_tests_enabled() {
        return;
    }
    println!("load average at start: {}", load_average());
    let only: Option<usize> = std::env::var("SYNC_BENCH_PODS")
        .ok()
        .map(|v| v.parse().expect("SYNC_BENCH_PODS: a number of pods"));
    for size in SIZES
        .into_iter()
        .filter(|s| only.is_none_or(|n| n == s.pods))
    {
        for cluster_policies in [false, true] {
            heading(size, cluster_policies);
            pod_change_compiled_and_applied_in(size, cluster_with(size, cluster_policies));
            println!("load average: {}", load_average());
        }
    }
}

/// What the compiled form holds: objects, and elements by the kind of map (the names of
/// `compile::flat`: stage, peer and block maps, the per-class decision maps, defaults).
fn print_shape(rs: &palisade_policy::ruleset::Ruleset) {
    let mut kinds: std::collections::BTreeMap<&str, (usize, usize)> = Default::default();
    for (name, map) in &rs.maps {
        let kind = if name.contains("-peer") {
            "peer addresses"
        } else if name.contains("-net") {
            "peer blocks"
        } else if name.contains("-default") {
            "isolated pods"
        } else if name.starts_with("egress") || name.starts_with("ingress") {
            "selected pods"
        } else {
            match name.chars().nth(name.len() - 2) {
                Some('x') => "decisions: single ports",
                Some('p') => "decisions: port ranges",
                Some('a') => "decisions: whole protocol",
                Some('n') => "decisions: no ports",
                _ => "other maps",
            }
        };
        let e = kinds.entry(kind).or_default();
        e.0 += 1;
        e.1 += map.elements.len();
    }
    let set_elements: usize = rs.sets.values().map(|s| s.elements.len()).sum();
    let map_elements: usize = rs.maps.values().map(|m| m.elements.len()).sum();
    println!(
        "compiled form: {} chains, {} rules, {} maps with {} elements, {} sets with {} elements",
        rs.chains.len(),
        rs.chains.values().map(|c| c.rules.len()).sum::<usize>(),
        rs.maps.len(),
        map_elements,
        rs.sets.len(),
        set_elements
    );
    for (kind, (maps, elements)) in kinds {
        println!("  {kind:<26} {maps:>6} maps {elements:>8} elements");
    }
}

fn pod_change_compiled_and_applied_in(size: Size, state: ClusterState) {
    use palisade_policy::nft::{Dataplane, NftDataplane, NftOptions};
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
    let mut compiler = Compiler::with_state(opts, state);
    let t = Instant::now();
    let (rs, touched) = compiler.ruleset_and_touched();
    let compiled = t.elapsed();
    dp.apply_touched(rs, &touched).unwrap();
    let last = dp.last_apply();
    let total = t.elapsed();
    let [structure, elements, hooks] = last.staged_steps;
    println!(
        "cold full sync (compile + apply): {:.1} ms (target {}): compile {:.1} ms, \
         dataplane in process {:.1} ms, listing {:.1} ms, nft {:.1} ms (staged: structure \
         {:.1} ms, element batches {:.1} ms, base chains {:.1} ms), {} KiB sent",
        ms(total),
        if size.pods <= 10_000 {
            "<= 1000 ms, issue 16: <= 500 ms"
        } else {
            "issue 16: <= 2000 ms"
        },
        ms(compiled),
        ms(last.cpu_time),
        ms(last.list_time),
        ms(last.nft_time),
        ms(structure),
        ms(elements),
        ms(hooks),
        last.bytes / 1024
    );
    print_shape(rs);

    let mut remote = pod(size, size.pods + 1);
    remote.node = Some("node-5".into());
    let mut local = pod(size, size.pods + 2);
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
    println!(
        "one pod change, compiled and applied (medians of 21; target at 10k pods <= 20 ms local; \
         issue 16: <= 10 ms local, <= 3 ms remote):"
    );
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
