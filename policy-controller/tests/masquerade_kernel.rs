//! Outbound masquerade against the real kernel (root, in test namespaces only): two nodes and
//! an external host on one segment, a pod on each node, each node programmed with its
//! compiled ruleset. What the external host and the other pod see as the source address
//! tells whether a packet was masqueraded.
//!
//! ```text
//!   seg: bridge br0 (no address, no forwarding)
//!     ├─ n1 eth0 192.0.2.1   2001:db8::1   ─ pala ─ pod a 10.70.1.2  fd70:1::2
//!     ├─ n2 eth0 192.0.2.2   2001:db8::2   ─ palc ─ pod c 10.70.2.2  fd70:2::2
//!     └─ ext eth0 192.0.2.253 2001:db8::fd  (no route to any pod CIDR)
//! ```

// `pub`: the support module is shared by several test binaries, each using a part of it.
pub mod nft_support;

use nft_support::netns::{
    attempts, probe_payload, recv_payload, tcp_blocked, tcp_open, tcp_server, udp_source, Expect,
};
use palisade_policy::compile::{compile, CompileOptions, MasqueradeOptions};
use palisade_policy::model::api::NetworkPolicy;
use palisade_policy::model::{ClusterState, NodeInfo, ObjectKey, PodInfo};
use palisade_policy::nft::{Dataplane, NftDataplane, NftOptions};
use palisade_testutil::{kernel_tests_enabled, TestNetns};
use serde_json::json;
use std::net::{IpAddr, SocketAddr, UdpSocket};

const EXT4: &str = "192.0.2.253";
const EXT6: &str = "2001:db8::fd";

struct Cluster {
    _seg: TestNetns,
    n1: TestNetns,
    n2: TestNetns,
    a: TestNetns,
    c: TestNetns,
    ext: TestNetns,
    state: ClusterState,
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

impl Cluster {
    fn new(tag: &str) -> Cluster {
        let seg = TestNetns::new(&format!("{tag}-seg")).unwrap();
        let n1 = TestNetns::new(&format!("{tag}-n1")).unwrap();
        let n2 = TestNetns::new(&format!("{tag}-n2")).unwrap();
        let a = TestNetns::new(&format!("{tag}-a")).unwrap();
        let c = TestNetns::new(&format!("{tag}-c")).unwrap();
        let ext = TestNetns::new(&format!("{tag}-ext")).unwrap();
        for ns in [&seg, &n1, &n2, &a, &c, &ext] {
            ns.sh("sysctl -qw net.ipv6.conf.all.accept_dad=0 net.ipv6.conf.default.accept_dad=0")
                .unwrap();
        }
        seg.sh("ip link add br0 type bridge && ip link set br0 up")
            .unwrap();
        for (veth, ns, addr4, addr6) in [
            ("s1", &n1, "192.0.2.1", "2001:db8::1"),
            ("s2", &n2, "192.0.2.2", "2001:db8::2"),
            ("sx", &ext, EXT4, EXT6),
        ] {
            seg.veth_to(veth, ns, "eth0").unwrap();
            seg.sh(&format!("ip link set {veth} master br0")).unwrap();
            ns.sh(&format!(
                "ip addr add {addr4}/24 dev eth0 && ip -6 addr add {addr6}/64 dev eth0 nodad"
            ))
            .unwrap();
        }
        for (node, veth, pod, n, peer) in [(&n1, "pala", &a, 1, 2), (&n2, "palc", &c, 2, 1)] {
            node.veth_to(veth, pod, "eth0").unwrap();
            node.sh(&format!(
                "sysctl -qw net.ipv4.ip_forward=1 net.ipv6.conf.all.forwarding=1 && \
                 ip addr add 10.70.{n}.1/24 dev {veth} && ip -6 addr add fd70:{n}::1/64 dev {veth} nodad && \
                 ip route add 10.70.{peer}.0/24 via 192.0.2.{peer} && \
                 ip -6 route add fd70:{peer}::/64 via 2001:db8::{peer}"
            ))
            .unwrap();
            pod.sh(&format!(
                "ip addr add 10.70.{n}.2/24 dev eth0 && ip route add default via 10.70.{n}.1 && \
                 ip -6 addr add fd70:{n}::2/64 dev eth0 nodad && ip -6 route add default via fd70:{n}::1"
            ))
            .unwrap();
        }
        let mut state = ClusterState::default();
        state.upsert_namespace("x", Default::default());
        for (n, pod) in [(1, "a"), (2, "c")] {
            let name = format!("n{n}");
            state.nodes.insert(
                name.clone(),
                NodeInfo {
                    name: name.clone(),
                    internal_ips: vec![ip(&format!("192.0.2.{n}")), ip(&format!("2001:db8::{n}"))],
                    pod_cidrs: vec![
                        format!("10.70.{n}.0/24").parse().unwrap(),
                        format!("fd70:{n}::/64").parse().unwrap(),
                    ],
                    ..NodeInfo::default()
                },
            );
            let key = ObjectKey::new("x", pod);
            state.pods.insert(
                key.clone(),
                PodInfo {
                    key,
                    node: Some(name),
                    labels: [("pod".to_string(), pod.to_string())].into_iter().collect(),
                    ips: vec![ip(&format!("10.70.{n}.2")), ip(&format!("fd70:{n}::2"))],
                    host_network: false,
                    terminating: false,
                    named_ports: vec![],
                },
            );
        }
        Cluster {
            _seg: seg,
            n1,
            n2,
            a,
            c,
            ext,
            state,
        }
    }

    /// Compile and program both nodes (table `palt-<pid>`).
    fn program(&self, masquerade: &MasqueradeOptions) {
        for (node, ns) in [("n1", &self.n1), ("n2", &self.n2)] {
            let rs = compile(
                &self.state,
                &CompileOptions {
                    node: node.into(),
                    fail_closed_new_pods: true,
                    nflog_group: None,
                    masquerade: masquerade.clone(),
                },
            );
            let mut dp = NftDataplane::new(NftOptions {
                table: format!("palt-{}", std::process::id()),
                netns: Some(ns.path().to_path_buf()),
                ..NftOptions::default()
            });
            dp.apply(&rs)
                .unwrap_or_else(|e| panic!("program {node}: {e}"));
        }
    }

    fn policy(&mut self, name: &str, spec: serde_json::Value) {
        let p: NetworkPolicy = serde_json::from_value(json!({
            "metadata": {"namespace": "x", "name": name},
            "spec": spec,
        }))
        .unwrap();
        self.state
            .network_policies
            .insert(ObjectKey::new("x", name), p);
    }
}

/// A UDP echo server in `ns` on `port` (dual-stack), for reply-path checks.
fn udp_echo(ns: &TestNetns, port: u16) {
    let s = ns.run(|| UdpSocket::bind(("::", port)).expect("bind echo"));
    std::thread::spawn(move || {
        let mut buf = [0u8; 64];
        while let Ok((n, from)) = s.recv_from(&mut buf) {
            let _ = s.send_to(&buf[..n], from);
        }
    });
}

/// Whether a UDP request from `from` to `to` gets its echo back: a path expected open,
/// asked again until `OPEN_DEADLINE`.
fn udp_answered(from: &TestNetns, to: SocketAddr) -> bool {
    let s =
        from.run(|| UdpSocket::bind(if to.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }).unwrap());
    let request = probe_payload(0);
    let what = format!("UDP echo {} -> {to}", from.name());
    attempts(Expect::Open, &what, |timeout| {
        s.send_to(&request, to)?;
        recv_payload(&s, &request, timeout)
    })
    .is_ok()
}

fn at(addr: &str, port: u16) -> SocketAddr {
    SocketAddr::new(ip(addr), port)
}

#[test]
fn masquerade_rewrites_only_pod_traffic_leaving_the_pod_network() {
    if !kernel_tests_enabled() {
        return;
    }
    let cl = Cluster::new("masq");
    cl.program(&MasqueradeOptions::enabled());
    tcp_server(&cl.ext, 80);
    for (ext, node, pod_a, pod_c) in [
        (EXT4, "192.0.2.1", "10.70.1.2", "10.70.2.2"),
        (EXT6, "2001:db8::1", "fd70:1::2", "fd70:2::2"),
    ] {
        // To the external host: the node's address, and the connection completes (the
        // external host has no route to pod addresses).
        assert_eq!(
            udp_source(&cl.a, &cl.ext, at(ext, 5353), None),
            Some(ip(node)),
            "pod a -> {ext}"
        );
        assert!(tcp_open(&cl.a, at(ext, 80)), "TCP pod a -> {ext}");
        // To a pod on the other node: the pod's own address.
        assert_eq!(
            udp_source(&cl.a, &cl.c, at(pod_c, 5353), None),
            Some(ip(pod_a)),
            "pod a -> pod c keeps its source"
        );
        // The node's own traffic (host network) is not touched, even from an address in the
        // pod network.
        let node_pod_side = if ext == EXT4 {
            "10.70.1.1"
        } else {
            "fd70:1::1"
        };
        assert_eq!(
            udp_source(&cl.n1, &cl.ext, at(ext, 5353), Some(ip(node_pod_side))),
            Some(ip(node_pod_side)),
            "node 1 itself -> {ext}"
        );
    }

    // nonMasqueradeCIDRs: the external host is reached with the pod's address (and, having
    // no route back, cannot answer).
    let mut except_ext = MasqueradeOptions::enabled();
    except_ext.non_masquerade_cidrs = vec!["192.0.2.253/32".parse().unwrap()];
    cl.program(&except_ext);
    assert_eq!(
        udp_source(&cl.a, &cl.ext, at(EXT4, 5353), None),
        Some(ip("10.70.1.2"))
    );
    assert!(tcp_blocked(&cl.a, at(EXT4, 80)));
    assert_eq!(
        udp_source(&cl.a, &cl.ext, at(EXT6, 5353), None),
        Some(ip("2001:db8::1")),
        "IPv6 still masqueraded: the entry is IPv4"
    );

    // Per family: IPv6 off, IPv4 on.
    let mut v4_only = MasqueradeOptions::enabled();
    v4_only.ipv6 = false;
    cl.program(&v4_only);
    assert_eq!(
        udp_source(&cl.a, &cl.ext, at(EXT4, 5353), None),
        Some(ip("192.0.2.1"))
    );
    assert_eq!(
        udp_source(&cl.a, &cl.ext, at(EXT6, 5353), None),
        Some(ip("fd70:1::2"))
    );
    assert!(tcp_blocked(&cl.a, at(EXT6, 80)));

    // Off: nothing rewritten, nothing reachable outside.
    cl.program(&MasqueradeOptions::disabled());
    for (ext, pod_a) in [(EXT4, "10.70.1.2"), (EXT6, "fd70:1::2")] {
        assert_eq!(
            udp_source(&cl.a, &cl.ext, at(ext, 5353), None),
            Some(ip(pod_a))
        );
        assert!(tcp_blocked(&cl.a, at(ext, 80)), "{ext} with masquerade off");
    }
}

#[test]
fn replies_to_masqueraded_connections_pass_the_policy_table() {
    if !kernel_tests_enabled() {
        return;
    }
    let mut cl = Cluster::new("masqpol");
    tcp_server(&cl.ext, 80);
    tcp_server(&cl.ext, 81);
    udp_echo(&cl.ext, 53);
    // Pod a accepts nothing (ingress default deny) and may only send to the external host on
    // TCP 80 and UDP 53: the external host's answers come back to an ingress-isolated pod
    // through the fail-closed guard, as replies.
    cl.policy(
        "deny-ingress",
        json!({"podSelector": {}, "policyTypes": ["Ingress"]}),
    );
    cl.policy(
        "egress-to-external",
        json!({
            "podSelector": {"matchLabels": {"pod": "a"}},
            "policyTypes": ["Egress"],
            "egress": [{
                "to": [{"ipBlock": {"cidr": "192.0.2.253/32"}}, {"ipBlock": {"cidr": "2001:db8::fd/128"}}],
                "ports": [{"protocol": "TCP", "port": 80}, {"protocol": "UDP", "port": 53}],
            }],
        }),
    );
    cl.program(&MasqueradeOptions::enabled());
    for ext in [EXT4, EXT6] {
        assert!(tcp_open(&cl.a, at(ext, 80)), "TCP reply from {ext}");
        assert!(udp_answered(&cl.a, at(ext, 53)), "UDP reply from {ext}");
        // The egress policy still decides, masquerade or not: port 81 is not allowed.
        assert!(tcp_blocked(&cl.a, at(ext, 81)), "TCP {ext}:81 allowed");
    }
    // And the ingress default deny still holds for new connections towards pod a.
    tcp_server(&cl.a, 8080);
    assert!(tcp_blocked(&cl.c, at("10.70.1.2", 8080)));
}
