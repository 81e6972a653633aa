//! Overlay benchmark (printed, not asserted):
//! `cargo test -p palisade-policy --release --test overlay_bench -- --ignored --nocapture --test-threads=1`.
//!
//! Pod to pod across two nodes of one subnet (`overlay_support`'s n1 and n3): bulk TCP
//! throughput (iperf3 -t 5) and the new-connection rate (a loop of TCP connects, closed with
//! RST), over the VXLAN overlay (`--overlay always`) versus direct routing (`never`), in
//! alternating rounds of the same run; the agent's reconciler switches the nodes between the
//! two, and each mode's pods get that mode's MTU (what the plugin would get from the
//! conflist). The Nodes have IPv4 InternalIPs only, so the overlay is VXLAN over IPv4 (pod
//! MTU 1450 against 1500). Targets: throughput >= 0.85x, connection rate >= 0.9x. The load
//! average is printed: the machine is shared, and the numbers move with it.

// `pub`: the support modules are shared by several test binaries, each using a part of them.
pub mod nft_support;
pub mod overlay_support;

use nft_support::netns::rst_on_close;
use overlay_support::*;
use palisade_policy::agent::routes::overlay::OverlayMode;
use palisade_testutil::kernel_tests_enabled;
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

const CONNECT_SECONDS: f64 = 3.0;
const ROUNDS: usize = 5;

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

fn connection_rate(from: &Node, to: SocketAddr) -> f64 {
    from.pod.run(|| {
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

fn throughput_gbit(from: &Node, to: &Node) -> f64 {
    let out = from
        .pod
        .exec(
            "iperf3",
            &[
                "-c",
                &to.pod4.to_string(),
                "-p",
                "5201",
                "-t",
                "5",
                "--connect-timeout",
                "2000",
                "-J",
            ],
        )
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
fn overlay_against_direct_routing() {
    if !kernel_tests_enabled() {
        return;
    }
    println!("load average at start: {}", load_average());
    let s = Subnets::new("ovb");
    let objects = s.objects(|n| vec![n.ipv4]);
    let (a, b) = (s.node(1), s.node(3));
    let to = at(b.pod4, 7000);
    let mut iperf = b
        .pod
        .spawn("iperf3", &["-s", "-p", "5201"])
        .expect("iperf3 server");
    std::thread::sleep(Duration::from_millis(300));

    let (mut conn, mut tput) = (
        [Vec::new(), Vec::new()], // [direct, overlay]
        [Vec::new(), Vec::new()],
    );
    for round in 0..ROUNDS {
        for (k, mode) in [OverlayMode::Never, OverlayMode::Always]
            .into_iter()
            .enumerate()
        {
            // Under `never` the routes to the node behind the router fail (and are reported);
            // n1 and n3 share a subnet and are routed either way, as the check below says.
            let _ = s.reconcile(mode, &objects);
            let mtu = s.set_pod_mtus(mode, &objects);
            let route = a.ns.sh(&format!("ip route get {}", b.pod4)).unwrap();
            assert_eq!(
                route.contains("vxlan4.palisade"),
                mode == OverlayMode::Always,
                "{route}"
            );
            let c = connection_rate(a, to);
            let g = throughput_gbit(a, b);
            println!(
                "round {round} {:8} (pod mtu {mtu}): {c:.0} connections/s, {g:.2} Gbit/s",
                if mode == OverlayMode::Always {
                    "overlay"
                } else {
                    "direct"
                }
            );
            conn[k].push(c);
            tput[k].push(g);
        }
    }
    let _ = iperf.kill();
    let _ = iperf.wait();
    // Medians: on a shared machine one round that another process's burst hit would move a
    // mean by itself.
    let median = |v: &[f64]| {
        let mut v = v.to_vec();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    println!(
        "connection rate (median of {ROUNDS}): overlay {:.0}/s vs direct {:.0}/s = {:.3}x (target >= 0.9x)",
        median(&conn[1]),
        median(&conn[0]),
        median(&conn[1]) / median(&conn[0])
    );
    println!(
        "throughput (median of {ROUNDS}): overlay {:.2} vs direct {:.2} Gbit/s = {:.3}x (target >= 0.85x)",
        median(&tput[1]),
        median(&tput[0]),
        median(&tput[1]) / median(&tput[0])
    );
    println!("load average at end: {}", load_average());
}
