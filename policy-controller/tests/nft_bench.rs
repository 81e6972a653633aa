//! Control-plane benchmark of the nft dataplane (printed, not asserted):
//! `cargo test -p palisade-policy --release --test nft_bench -- --ignored --nocapture`.
//!
//! A synthetic ruleset the size of "10k cluster pods, 1k policies, 110 local pods": ~1k
//! per-policy chains with peer sets (~15k elements in all), port sets, 110 class chains and
//! dispatch elements. Measures a cold full apply, one element added/removed, one chain
//! changed, and a restart (adoption of the full table), each with its transaction size.
//!
//! `nft_interval_bench`: interval sets and maps by netlink against the nft process, side by
//! side in one run: one element added and deleted in a 10k-element interval verdict map
//! (issue 16's `ipv4_addr . inet_proto . inet_service : verdict`), and a cold start that
//! fills a 100k-element interval set.

// `pub`: the support module is shared by several test binaries, each using a part of it.
pub mod nft_support;

use nft_support::*;
use palisade_policy::nft::{
    canonicalize, plan, transaction_json, transaction_script, validate, Dataplane, NftDataplane,
    NftOptions, Programmed,
};
use palisade_policy::ruleset::*;
use palisade_testutil::{kernel_tests_enabled, TestNetns};
use std::time::{Duration, Instant};

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// A dataplane for table `palt-<pid><suffix>` in `ns`, with the netlink fast path on or off.
fn dataplane(ns: &TestNetns, suffix: &str, netlink: bool) -> NftDataplane {
    NftDataplane::new(NftOptions {
        table: format!("palt-{}{suffix}", std::process::id()),
        netns: Some(ns.path().to_path_buf()),
        netlink_elements: netlink,
        ..NftOptions::default()
    })
}

#[test]
#[ignore]
fn nft_apply_bench() {
    if !kernel_tests_enabled() {
        return;
    }
    let ns = TestNetns::new("nft-bench").unwrap();
    let mut dp = dataplane(&ns, "", true);
    let big = synthetic(10_000, 1_000, 110, 15, 20_000);
    println!(
        "ruleset: {} chains, {} sets, {} maps, {} elements",
        big.chains.len(),
        big.sets.len(),
        big.maps.len(),
        element_count(&big)
    );

    let t = Instant::now();
    let s = dp.apply(&big).unwrap();
    let cold = t.elapsed();
    let last = dp.last_apply();
    println!(
        "cold full apply: {:?} ({} commands, {} KiB sent, {}{}; in-process {:?}, nft and netlink {:?})",
        cold,
        s.commands,
        last.bytes / 1024,
        if last.script { "nft syntax" } else { "JSON" },
        if last.staged { ", in three steps" } else { "" },
        last.cpu_time,
        last.nft_time
    );

    // One pod appears in a peer set and goes again: one element command each.
    let mut adds = Vec::new();
    let mut bytes = 0;
    let (mut cpu, mut nft) = (Vec::new(), Vec::new());
    for i in 0..21u32 {
        let mut rs = big.clone();
        rs.sets
            .get_mut("peers4-0007")
            .unwrap()
            .elements
            .insert(vec![Value::Addr(pod_ip(50_000 + i))]);
        let t = Instant::now();
        let s = dp.apply(&rs).unwrap();
        adds.push(t.elapsed());
        cpu.push(dp.last_apply().cpu_time);
        nft.push(dp.last_apply().nft_time);
        assert_eq!(s.commands, 1);
        bytes = dp.last_apply().bytes;
        let t = Instant::now();
        dp.apply(&big).unwrap();
        adds.push(t.elapsed());
    }
    let one = median(adds);
    println!(
        "one element added/removed: median {one:?} (1 command, {bytes} bytes sent; of which in-process median {:?}, sending median {:?})",
        median(cpu),
        median(nft)
    );

    // A new local pod: dispatch element + local4 element + a class chain.
    let mut pod = big.clone();
    let ip = Value::Addr(pod_ip(30_000));
    pod.maps
        .get_mut("ingress4")
        .unwrap()
        .elements
        .insert(vec![ip.clone()], Verdict::Jump("in-0003".into()));
    pod.sets
        .get_mut("local4")
        .unwrap()
        .elements
        .insert(vec![ip]);
    let mut pods = Vec::new();
    for _ in 0..11 {
        let t = Instant::now();
        dp.apply(&pod).unwrap();
        pods.push(t.elapsed());
        dp.apply(&big).unwrap();
    }
    let pod_change = median(pods);
    println!("one local pod added (map + set element): median {pod_change:?}");

    // One chain's rules change.
    let mut chain = big.clone();
    chain.chains.get_mut("pi-0500").unwrap().rules.insert(
        0,
        Rule::new(vec![], Verdict::Accept).with_comment("changed"),
    );
    let mut chains = Vec::new();
    for _ in 0..11 {
        let t = Instant::now();
        let s = dp.apply(&chain).unwrap();
        chains.push(t.elapsed());
        assert_eq!(s.commands, 3);
        dp.apply(&big).unwrap();
    }
    let chain_change = median(chains);
    println!("one chain changed (flush + 2 rules): median {chain_change:?}");

    // Restart: adopt the full table, nothing to change.
    dp.invalidate();
    let t = Instant::now();
    let s = dp.apply(&big).unwrap();
    let adopt = t.elapsed();
    println!(
        "restart (list + parse + diff, {} commands): {adopt:?} (list {:?})",
        s.commands,
        dp.last_apply().list_time
    );

    println!(
        "ratios: one element / cold = {:.4}, one pod / cold = {:.4}, one chain / cold = {:.4}, adopt / cold = {:.3}",
        one.as_secs_f64() / cold.as_secs_f64(),
        pod_change.as_secs_f64() / cold.as_secs_f64(),
        chain_change.as_secs_f64() / cold.as_secs_f64(),
        adopt.as_secs_f64() / cold.as_secs_f64()
    );
    println!("targets: cold full <= 1 s, one pod change <= 20 ms median");

    // The same one-pod change with the netlink fast path off (every transaction through
    // nft), side by side, to show what the fast path buys.
    let mut plain = dataplane(&ns, "-n", false);
    plain.apply(&big).unwrap();
    let (mut fast, mut slow) = (Vec::new(), Vec::new());
    for _ in 0..11 {
        let t = Instant::now();
        dp.apply(&pod).unwrap();
        fast.push(t.elapsed());
        assert!(dp.last_apply().via_netlink);
        dp.apply(&big).unwrap();
        let t = Instant::now();
        plain.apply(&pod).unwrap();
        slow.push(t.elapsed());
        plain.apply(&big).unwrap();
    }
    let (fast, slow) = (median(fast), median(slow));
    println!(
        "one local pod added, side by side: netlink batch {fast:?} vs nft process {slow:?} (ratio {:.3})",
        fast.as_secs_f64() / slow.as_secs_f64()
    );
    plain.delete_table().unwrap();

    // The same cold start as one nft transaction (what it was before the three steps), in
    // nft's syntax and as JSON (a table name with no hyphen makes the dataplane use JSON),
    // side by side in the same namespace.
    for (what, table) in [
        (
            "one transaction, nft syntax",
            format!("palt-{}-one", std::process::id()),
        ),
        (
            "one transaction, JSON",
            format!("paltj{}", std::process::id()),
        ),
    ] {
        let mut other = NftDataplane::new(NftOptions {
            table,
            netns: Some(ns.path().to_path_buf()),
            staged_min_elements: usize::MAX,
            ..NftOptions::default()
        });
        let t = Instant::now();
        other.apply(&big).unwrap();
        let took = t.elapsed();
        let last = other.last_apply();
        println!(
            "cold full apply as {what}: {took:?} ({} KiB; in-process {:?}, nft {:?}); three steps / this = {:.3}",
            last.bytes / 1024,
            last.cpu_time,
            last.nft_time,
            cold.as_secs_f64() / took.as_secs_f64()
        );
        other.delete_table().unwrap();
    }

    // Where the in-process time goes (median of 5), without nft.
    let stage = |f: &dyn Fn()| {
        median(
            (0..5)
                .map(|_| {
                    let t = Instant::now();
                    f();
                    t.elapsed()
                })
                .collect(),
        )
    };
    let canon = canonicalize(&big);
    let programmed = Programmed::exact(canon.clone());
    let cold_ops = plan(None, &canon);
    println!(
        "in-process stages: validate {:?}, canonicalize {:?}, plan(no change) {:?}, plan(cold) {:?}, JSON(cold) {:?}, nft syntax(cold) {:?}, clone+drop of the model {:?}",
        stage(&|| validate(&big).unwrap()),
        stage(&|| drop(canonicalize(&big))),
        stage(&|| drop(plan(Some(&programmed), &canon))),
        stage(&|| drop(plan(None, &canon))),
        stage(&|| drop(transaction_json("t", &cold_ops))),
        stage(&|| drop(transaction_script("t-1", &cold_ops))),
        stage(&|| drop(big.clone())),
    );
}

/// Medians of `rounds` times `f(round)`.
fn timed(rounds: u32, mut f: impl FnMut(u32) -> Duration) -> Duration {
    median((0..rounds).map(&mut f).collect())
}

#[test]
#[ignore]
fn nft_interval_bench() {
    if !kernel_tests_enabled() {
        return;
    }
    let ns = TestNetns::new("nft-ibench").unwrap();
    let dataplane = |suffix: &str, netlink| dataplane(&ns, &format!("-{suffix}"), netlink);
    println!("load average: {}", palisade_testutil::load_average());

    // A 10k-element interval verdict map with concatenated keys, as issue 16 compiles pod
    // ports: `pod . proto . port-range : goto class-chain`.
    let mut map_model = Ruleset::default();
    for c in 0..100 {
        map_model
            .chains
            .insert(format!("cls-{c:03}"), Chain::default());
    }
    let key = |i: u32| {
        vec![
            Value::Addr(pod_ip(i)),
            Value::Proto([6, 17][i as usize % 2]),
            Value::PortRange(8000 + (i % 50) as u16, 8100 + (i % 50) as u16),
        ]
    };
    map_model.maps.insert(
        "pod-ports".into(),
        VerdictMap {
            key: vec![KeyType::Ipv4Addr, KeyType::InetProto, KeyType::InetService],
            interval: true,
            elements: (0..10_000)
                .map(|i| (key(i), Verdict::Goto(format!("cls-{:03}", i % 100))))
                .collect(),
            comment: None,
        },
    );
    let mut one_more = map_model.clone();
    one_more
        .maps
        .get_mut("pod-ports")
        .unwrap()
        .elements
        .insert(key(20_000), Verdict::Goto("cls-007".into()));
    let (mut fast, mut slow) = (dataplane("inl", true), dataplane("int", false));
    fast.apply(&map_model).unwrap();
    slow.apply(&map_model).unwrap();
    let (mut add_fast, mut del_fast, mut add_slow, mut del_slow) = (vec![], vec![], vec![], vec![]);
    // In-process and sending time of the netlink deletions.
    let (mut del_cpu, mut del_send) = (vec![], vec![]);
    for _ in 0..11 {
        for (dp, add, del) in [
            (&mut fast, &mut add_fast, &mut del_fast),
            (&mut slow, &mut add_slow, &mut del_slow),
        ] {
            let t = Instant::now();
            assert_eq!(dp.apply(&one_more).unwrap().commands, 1);
            add.push(t.elapsed());
            let t = Instant::now();
            assert_eq!(dp.apply(&map_model).unwrap().commands, 1);
            del.push(t.elapsed());
        }
        assert!(fast.last_apply().via_netlink && !slow.last_apply().via_netlink);
        del_cpu.push(fast.last_apply().cpu_time);
        del_send.push(fast.last_apply().nft_time);
    }
    let ratio = |a: Duration, b: Duration| a.as_secs_f64() / b.as_secs_f64();
    let (af, df, as_, ds) = (
        median(add_fast),
        median(del_fast),
        median(add_slow),
        median(del_slow),
    );
    println!(
        "10k-element interval map, one element: added {af:?} by netlink vs {as_:?} through nft (ratio {:.3}); deleted {df:?} vs {ds:?} (ratio {:.3})",
        ratio(af, as_),
        ratio(df, ds)
    );
    println!(
        "  netlink deletion: in-process median {:?}, batch sent and acknowledged median {:?}",
        median(del_cpu),
        median(del_send)
    );
    fast.delete_table().unwrap();
    slow.delete_table().unwrap();

    // A cold start filling a 100k-element interval set (disjoint /31s, a base chain looking
    // them up): in three steps with the elements by netlink, against one nft transaction.
    let mut set_model = Ruleset::default();
    set_model.sets.insert(
        "blocks".into(),
        set(
            &[KeyType::Ipv4Addr],
            true,
            (0..100_000u32)
                .map(|i| {
                    let a = std::net::Ipv4Addr::from(0x0a00_0000 + 4 * i);
                    vec![Value::Prefix(ipnet::IpNet::new(a.into(), 31).unwrap())]
                })
                .collect(),
        ),
    );
    set_model.chains.insert(
        "input".into(),
        Chain {
            base: base(Hook::Input, ChainPolicy::Accept),
            rules: vec![Rule::new(
                vec![lookup(&[Field::SrcAddr(Family::Ipv4)], "blocks")],
                Verdict::Drop,
            )],
        },
    );
    let mut cold = Vec::new();
    for (what, netlink) in [
        ("three steps, elements by netlink", true),
        ("one nft transaction", false),
    ] {
        let took = timed(3, |round| {
            let mut dp = dataplane(&format!("cold{round}"), netlink);
            let t = Instant::now();
            dp.apply(&set_model).unwrap();
            let took = t.elapsed();
            assert_eq!(dp.last_apply().staged, netlink, "{what}");
            if round == 0 {
                let last = dp.last_apply();
                println!(
                    "cold start of a 100k-element interval set, {what}: {took:?} ({} KiB sent; in-process {:?}, nft and netlink {:?}, steps {:?})",
                    last.bytes / 1024,
                    last.cpu_time,
                    last.nft_time,
                    last.staged_steps
                );
            }
            dp.delete_table().unwrap();
            took
        });
        cold.push(took);
    }
    println!(
        "cold start of a 100k-element interval set, median of 3: {:?} by netlink vs {:?} through nft (ratio {:.3})",
        cold[0],
        cold[1],
        ratio(cold[0], cold[1])
    );
}
