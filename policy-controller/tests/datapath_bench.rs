//! Datapath benchmark (printed, not asserted):
//! `cargo test -p palisade-policy --release --test datapath_bench -- --ignored --nocapture`.
//!
//! Two pods behind a node namespace. New-connection rate (a loop of TCP connects, closed
//! with RST so no TIME_WAIT piles up) and bulk TCP throughput (iperf3 -t 5), with the
//! 10k-pods/1k-policies ruleset loaded in the node namespace versus no table at all,
//! alternating rounds in the same run. The allowed connection walks the whole path: conntrack,
//! fail-closed check, dispatch map, a class chain jumping through 9 policy chains, the last of
//! which accepts.

// `pub`: the support module is shared by several test binaries, each using a part of it.
pub mod nft_support;

use nft_support::netns::*;
use nft_support::*;
use palisade_policy::nft::Dataplane;
use palisade_policy::ruleset::*;
use palisade_testutil::kernel_tests_enabled;
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

const CONNECT_SECONDS: f64 = 3.0;
const ROUNDS: usize = 3;

fn bench_ruleset() -> Ruleset {
    let mut rs = synthetic(10_000, 1_000, 110, 15, 20_000);
    // Pod B is isolated: its class chain jumps through 8 policies that do not match A, then
    // one that does.
    let b: Value = addr(B4);
    rs.sets
        .get_mut("local4")
        .unwrap()
        .elements
        .insert(vec![b.clone()]);
    rs.sets.insert(
        "peers4-bench".into(),
        set(
            &[KeyType::Ipv4Addr],
            false,
            vec![vec![addr(A4)], vec![Value::Addr(pod_ip(1))]],
        ),
    );
    rs.sets.insert(
        "ports-bench".into(),
        set(
            &[KeyType::InetProto, KeyType::InetService],
            true,
            vec![
                vec![Value::Proto(6), Value::PortRange(5201, 5201)],
                vec![Value::Proto(6), Value::Port(9000)],
            ],
        ),
    );
    rs.chains.insert(
        "pi-bench".into(),
        Chain {
            base: None,
            rules: vec![Rule::new(
                vec![
                    lookup(&[Field::SrcAddr(Family::Ipv4)], "peers4-bench"),
                    lookup(&[Field::L4Proto, Field::DstPort], "ports-bench"),
                ],
                Verdict::Accept,
            )],
        },
    );
    let mut rules: Vec<Rule> = (0..8)
        .map(|p| Rule::new(vec![], Verdict::Jump(format!("pi-{:04}", p * 97))))
        .collect();
    rules.push(Rule::new(vec![], Verdict::Jump("pi-bench".into())));
    rules.push(Rule::new(vec![], Verdict::Drop));
    rs.chains
        .insert("in-bench".into(), Chain { base: None, rules });
    rs.maps
        .get_mut("ingress4")
        .unwrap()
        .elements
        .insert(vec![b], Verdict::Jump("in-bench".into()));
    rs
}

fn connection_rate(t: &Topology, to: SocketAddr) -> f64 {
    t.a.run(|| {
        let start = Instant::now();
        let (mut n, mut failed) = (0u64, 0u64);
        let mut first_error = None;
        while start.elapsed().as_secs_f64() < CONNECT_SECONDS {
            match TcpStream::connect_timeout(&to, Duration::from_secs(1)) {
                Ok(s) => {
                    rst_on_close(&s);
                    n += 1;
                }
                Err(e) => {
                    failed += 1;
                    first_error.get_or_insert(e);
                }
            }
        }
        if failed > 0 {
            println!("  ({failed} connects failed, first: {first_error:?})");
        }
        n as f64 / start.elapsed().as_secs_f64()
    })
}

fn throughput_gbit(t: &Topology) -> f64 {
    let out =
        t.a.exec("iperf3", &["-c", B4, "-p", "5201", "-t", "5", "-J"])
            .expect("iperf3 client");
    assert!(
        out.status.success(),
        "iperf3: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("iperf3 JSON");
    v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .expect("bits_per_second")
        / 1e9
}

#[test]
#[ignore]
fn datapath_with_and_without_the_ruleset() {
    if !kernel_tests_enabled() {
        return;
    }
    let t = Topology::new("dp-bench");
    let mut dp = t.dataplane(&format!("palt-{}", std::process::id()));
    let ruleset = bench_ruleset();
    let to: SocketAddr = format!("{B4}:9000").parse().unwrap();
    tcp_server(&t.b, 9000);
    let mut iperf =
        t.b.spawn("iperf3", &["-s", "-p", "5201"])
            .expect("iperf3 server");
    std::thread::sleep(Duration::from_millis(300));

    let (mut conn_base, mut conn_rules, mut tput_base, mut tput_rules) =
        (vec![], vec![], vec![], vec![]);
    for round in 0..ROUNDS {
        for with_rules in [false, true] {
            if with_rules {
                dp.apply(&ruleset).unwrap();
            } else {
                dp.delete_table().unwrap();
            }
            // Start every measurement from the same conntrack state.
            let _ = t.node.sh("conntrack -F 2>/dev/null");
            let c = connection_rate(&t, to);
            let g = throughput_gbit(&t);
            println!(
                "round {round} {}: {c:.0} connections/s, {g:.2} Gbit/s",
                if with_rules { "ruleset " } else { "no table" }
            );
            if with_rules {
                conn_rules.push(c);
                tput_rules.push(g);
            } else {
                conn_base.push(c);
                tput_base.push(g);
            }
        }
    }
    let _ = iperf.kill();
    let _ = iperf.wait();
    dp.delete_table().unwrap();
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    println!(
        "connection rate: ruleset {:.0}/s vs none {:.0}/s = {:.3}x (target >= 0.95x)",
        mean(&conn_rules),
        mean(&conn_base),
        mean(&conn_rules) / mean(&conn_base)
    );
    println!(
        "throughput: ruleset {:.2} vs none {:.2} Gbit/s = {:.3}x (target >= 0.97x)",
        mean(&tput_rules),
        mean(&tput_base),
        mean(&tput_rules) / mean(&tput_base)
    );
}
