//! The VXLAN overlay on the netns cluster's two-subnets topology, beyond what scenario files
//! can say: pods get the overlay's MTU from the conflist, a large TCP transfer and UDP
//! datagrams just over the pod MTU behave as the kernel makes them, and the agent's
//! denied-packet log names the real pods on both ends of a connection that crossed the
//! router inside VXLAN.
//!
//! Needs root and the `palisade` and `palisade-agent` binaries (or `PALISADE_BIN_DIR`).

use palisade_integration::cluster::topology::Topology;
use palisade_integration::cluster::{Binaries, Cluster, ClusterConfig};
use palisade_integration::matrix::Matrix;
use palisade_integration::scenario::{
    ContainerKind, Destination, Family, Labels, PodRef, PodSpec, PortSpec, Protocol,
};
use palisade_policy::agent::routes::overlay::OverlayMode;
use serde_json::json;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

fn bins() -> Binaries {
    Binaries::for_tests(env!("CARGO_BIN_EXE_palisade-testpod"))
}

fn pod(name: &str, node: usize) -> PodSpec {
    PodSpec {
        namespace: "x".into(),
        name: name.into(),
        node: Some(node),
        labels: [("app".to_string(), name.to_string())].into(),
        ports: vec![PortSpec {
            name: Some("http".into()),
            port: 80,
            protocol: Protocol::Tcp,
            container: ContainerKind::Main,
        }],
    }
}

/// A two-subnets cluster with `overlay`, pod `x/a` on node 1 and `x/b` on node 2 (the other
/// subnet).
fn cluster(overlay: OverlayMode) -> Cluster {
    let mut config = ClusterConfig::new(2, bins());
    config.topology = Topology::TwoSubnets;
    config.overlay = overlay;
    let mut c = Cluster::start(config).expect("start the cluster");
    let w = c.create_namespace("x", &Labels::new()).unwrap();
    c.wait_programmed(w).unwrap();
    for (name, node) in [("a", 1), ("b", 2)] {
        let w = c.create_pod(&pod(name, node), node).unwrap();
        c.wait_programmed(w).unwrap();
    }
    c
}

fn key(s: &str) -> PodRef {
    PodRef::parse(s).unwrap()
}

#[test]
fn pods_get_the_overlay_mtu_and_large_transfers_and_datagrams_behave() {
    if !palisade_testutil::kernel_tests_enabled() {
        return;
    }
    let c = cluster(OverlayMode::Always);
    // Both underlays are in use (the nodes have IPv4 and IPv6 InternalIPs): IPv6's 70 bytes.
    assert_eq!(c.nodes[0].conflist["plugins"][0]["mtu"], 1430);
    let (a, b) = (&c.pods[&key("x/a")], &c.pods[&key("x/b")]);
    let link = a.netns.ip(&["link", "show", "eth0"]).unwrap();
    assert!(link.contains("mtu 1430"), "{link}");
    for family in [Family::V4, Family::V6] {
        let dst = b.ip(family).unwrap();
        // 16 MiB pod to pod across the router, checked byte for byte.
        let listener = b
            .netns
            .run_inside(|| Ok(TcpListener::bind(("::", 7200))?))
            .unwrap();
        let len = 16usize << 20;
        let reader = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let mut got = Vec::with_capacity(len);
            s.read_to_end(&mut got).unwrap();
            got
        });
        let mut client = a
            .netns
            .run_inside(move || {
                Ok(TcpStream::connect_timeout(
                    &SocketAddr::new(dst, 7200),
                    Duration::from_secs(2),
                )?)
            })
            .unwrap();
        let data: Vec<u8> = (0..len).map(|k| (k % 251) as u8).collect();
        client.write_all(&data).unwrap();
        drop(client);
        assert!(
            reader.join().unwrap() == data,
            "{family}: the transfer arrived intact"
        );

        // UDP: the largest datagram that fits 1430 arrives with DF; one byte more is
        // fragmented by the pod's kernel and arrives whole, or refused with DF.
        let header = if family == Family::V4 { 28 } else { 48 };
        let fits = 1430 - header;
        for (payload, dont_fragment, expect) in [
            (fits, true, Ok(true)),
            (fits + 1, false, Ok(true)),
            (fits + 1, true, Err(libc::EMSGSIZE)),
        ] {
            let got = datagram(
                &c,
                "x/a",
                "x/b",
                SocketAddr::new(dst, 7300),
                payload,
                dont_fragment,
            );
            assert_eq!(
                got.map_err(|e| e.raw_os_error().unwrap_or(0)),
                expect,
                "{family}: {payload} bytes, DF {dont_fragment}"
            );
        }
    }
}

/// A UDP datagram of `payload` bytes from pod `from` to `to` (in pod `to_pod`): `Err` with
/// the send's error, or whether it arrived whole.
fn datagram(
    c: &Cluster,
    from: &str,
    to_pod: &str,
    to: SocketAddr,
    payload: usize,
    dont_fragment: bool,
) -> std::io::Result<bool> {
    let rx = c.pods[&key(to_pod)]
        .netns
        .run_inside(move || Ok(UdpSocket::bind(("::", to.port()))?))
        .unwrap();
    // Every caller expects the datagram to arrive (or the send to fail): a generous wait
    // costs nothing when it does, and a loaded machine may take more than a second.
    rx.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let tx = c.pods[&key(from)]
        .netns
        .run_inside(move || {
            Ok(UdpSocket::bind(if to.is_ipv4() {
                "0.0.0.0:0"
            } else {
                "[::]:0"
            })?)
        })
        .unwrap();
    if dont_fragment {
        palisade_testutil::set_dont_fragment(&tx, to.is_ipv6());
    }
    tx.send_to(&vec![0x5au8; payload], to)?;
    let mut buf = vec![0u8; payload + 1];
    Ok(matches!(rx.recv_from(&mut buf), Ok((n, _)) if n == payload))
}

#[test]
fn deny_logs_name_the_pods_on_both_ends_of_the_overlay() {
    if !palisade_testutil::kernel_tests_enabled() {
        return;
    }
    let mut c = cluster(OverlayMode::CrossSubnet);
    let (_, w) = c
        .apply_policy(json!({
            "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"namespace": "x", "name": "deny-to-a"},
            "spec": {"podSelector": {"matchLabels": {"app": "a"}}, "policyTypes": ["Ingress"]},
        }))
        .unwrap()
        .expect("the API accepts the policy");
    c.wait_programmed(w).unwrap();
    // The allowed cell is probed again if its first SYN is lost (neighbour resolution), as
    // the scenario runner does; the denied one never is.
    let mut expected = Matrix::default();
    expected.set("x/b", "x/a", false);
    expected.set("x/a", "x/b", true);
    for family in [Family::V4, Family::V6] {
        let m = c
            .probe(
                Protocol::Tcp,
                80,
                family,
                &[
                    (key("x/b"), Destination::Pod(key("x/a"))),
                    (key("x/a"), Destination::Pod(key("x/b"))),
                ],
                Some(&expected),
                2,
            )
            .unwrap();
        assert_eq!(m.get("x/b", "x/a"), Some(false), "{family}: denied");
        assert_eq!(m.get("x/a", "x/b"), Some(true), "{family}: allowed");
        // Ingress is enforced on a's node (node 1): its log names b, from b's own address.
        let (src, dst) = (
            c.pod_ip(&key("x/b"), family).unwrap(),
            c.pod_ip(&key("x/a"), family).unwrap(),
        );
        let want = |l: &str| {
            l.contains("denied connection attempt")
                && l.contains("src_pod=\"x/b\"")
                && l.contains(&format!("src_ip={src}"))
                && l.contains("dst_pod=\"x/a\"")
                && l.contains(&format!("dst_ip={dst}"))
                && l.contains("policies=x/deny-to-a")
        };
        // NFLOG → agent → log file, on a loaded machine: a condition, not a hope.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let log = std::fs::read_to_string(&c.nodes[0].agent_log).unwrap_or_default();
            if log.lines().any(want) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{family}: no deny line for x/b ({src}) -> x/a ({dst}) in node-1's log:\n{}",
                c.agent_log_tail(1, 30)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}
