//! Three nodes on two subnets joined by a router that knows no pod CIDR, one pod on each
//! node wired as the CNI plugin wires it (a `/32` and `/128` behind a routed veth, link-local
//! gateways), each node's routes and VXLAN links made by `NodeRoutes::reconcile` inside the
//! node's namespace. Shared by the overlay's kernel tests and its benchmark.
//!
//! ```text
//!   r: bridge bra 192.0.2.254/24 2001:db8::fe/64 | bridge brb 198.51.100.254/24 2001:db8:2::fe/64
//!     ├─ n1 eth0 192.0.2.1    2001:db8::1    ─ pal1 ─ p1 10.244.1.2 fd00:10:244:1::2
//!     ├─ n3 eth0 192.0.2.3    2001:db8::3    ─ pal3 ─ p3 10.244.3.2 fd00:10:244:3::2
//!     └─ n2 eth0 198.51.100.2 2001:db8:2::2  ─ pal2 ─ p2 10.244.2.2 fd00:10:244:2::2
//! ```
//! Every pod listens on TCP 7000 (accepts and closes).

use crate::nft_support::netns::tcp_server;
use palisade_policy::agent::routes::overlay::{pod_mtu, OverlayMode, VxlanSettings};
use palisade_policy::agent::routes::underlay::LocalUnderlay;
use palisade_policy::agent::routes::{NodeRoutes, Programmed};
use palisade_policy::model::NodeInfo;
use palisade_testutil::TestNetns;
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

pub struct Node {
    pub name: String,
    pub ns: TestNetns,
    pub pod: TestNetns,
    pub ipv4: IpAddr,
    pub ipv6: IpAddr,
    pub pod4: IpAddr,
    pub pod6: IpAddr,
}

pub struct Subnets {
    _router: TestNetns,
    pub nodes: Vec<Node>,
}

pub fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

pub fn at(addr: IpAddr, port: u16) -> SocketAddr {
    SocketAddr::new(addr, port)
}

const NO_DAD: &str = "sysctl -qw net.ipv6.conf.all.accept_dad=0 net.ipv6.conf.default.accept_dad=0";

impl Subnets {
    pub fn new(tag: &str) -> Subnets {
        let router = TestNetns::new(&format!("{tag}-r")).unwrap();
        router
            .sh(&format!(
                "{NO_DAD} && sysctl -qw net.ipv4.ip_forward=1 net.ipv6.conf.all.forwarding=1 && \
                 ip link add bra type bridge && ip link add brb type bridge && \
                 ip addr add 192.0.2.254/24 dev bra && ip -6 addr add 2001:db8::fe/64 dev bra nodad && \
                 ip addr add 198.51.100.254/24 dev brb && ip -6 addr add 2001:db8:2::fe/64 dev brb nodad && \
                 ip link set bra up && ip link set brb up"
            ))
            .unwrap();
        let mut nodes = Vec::new();
        for (i, bridge, v4, v6, gw4, gw6, other4, other6) in [
            (
                1,
                "bra",
                "192.0.2.1/24",
                "2001:db8::1/64",
                "192.0.2.254",
                "2001:db8::fe",
                "198.51.100.0/24",
                "2001:db8:2::/64",
            ),
            (
                2,
                "brb",
                "198.51.100.2/24",
                "2001:db8:2::2/64",
                "198.51.100.254",
                "2001:db8:2::fe",
                "192.0.2.0/24",
                "2001:db8::/64",
            ),
            (
                3,
                "bra",
                "192.0.2.3/24",
                "2001:db8::3/64",
                "192.0.2.254",
                "2001:db8::fe",
                "198.51.100.0/24",
                "2001:db8:2::/64",
            ),
        ] {
            let ns = TestNetns::new(&format!("{tag}-n{i}")).unwrap();
            let pod = TestNetns::new(&format!("{tag}-p{i}")).unwrap();
            // No DAD (before any link exists: a link takes the default of its creation), or
            // the link-local addresses stay tentative and neighbour discovery fails for a
            // second or more.
            ns.sh(NO_DAD).unwrap();
            pod.sh(NO_DAD).unwrap();
            router.veth_to(&format!("s{i}"), &ns, "eth0").unwrap();
            router
                .sh(&format!("ip link set s{i} master {bridge}"))
                .unwrap();
            // The underlay: the node's own subnet, and the other one through the router.
            ns.sh(&format!(
                "sysctl -qw net.ipv4.ip_forward=1 net.ipv6.conf.all.forwarding=1 && \
                 ip addr add {v4} dev eth0 && ip -6 addr add {v6} dev eth0 nodad && \
                 ip route add {other4} via {gw4} && ip -6 route add {other6} via {gw6}"
            ))
            .unwrap();
            // The pod, as the CNI plugin wires it.
            ns.veth_to(&format!("pal{i}"), &pod, "eth0").unwrap();
            let mac = ns
                .sh(&format!("ip -br link show pal{i} | awk '{{print $3}}'"))
                .unwrap();
            let (pod4, pod6) = (format!("10.244.{i}.2"), format!("fd00:10:244:{i}::2"));
            pod.sh(&format!(
                "ip addr add {pod4}/32 dev eth0 && ip -6 addr add {pod6}/128 dev eth0 nodad && \
                 ip route add 169.254.1.1 dev eth0 scope link && ip route add default via 169.254.1.1 && \
                 ip neigh replace 169.254.1.1 lladdr {} dev eth0 nud permanent && \
                 ip -6 route add default via fe80::1 dev eth0",
                mac.trim()
            ))
            .unwrap();
            ns.sh(&format!(
                "ip -6 addr add fe80::1/64 dev pal{i} nodad && \
                 ip route add {pod4}/32 dev pal{i} && ip -6 route add {pod6}/128 dev pal{i}"
            ))
            .unwrap();
            nodes.push(Node {
                name: format!("n{i}"),
                ns,
                pod,
                ipv4: ip(v4.split('/').next().unwrap()),
                ipv6: ip(v6.split('/').next().unwrap()),
                pod4: ip(&pod4),
                pod6: ip(&pod6),
            });
        }
        for n in &nodes {
            tcp_server(&n.pod, 7000);
        }
        Subnets {
            _router: router,
            nodes,
        }
    }

    /// The Node objects, with the InternalIPs `internal` picks of each node.
    pub fn objects(&self, internal: impl Fn(&Node) -> Vec<IpAddr>) -> BTreeMap<String, NodeInfo> {
        self.nodes
            .iter()
            .enumerate()
            .map(|(k, n)| {
                let i = k + 1;
                (
                    n.name.clone(),
                    NodeInfo {
                        name: n.name.clone(),
                        internal_ips: internal(n),
                        pod_cidrs: vec![
                            format!("10.244.{i}.0/24").parse().unwrap(),
                            format!("fd00:10:244:{i}::/64").parse().unwrap(),
                        ],
                        ..NodeInfo::default()
                    },
                )
            })
            .collect()
    }

    pub fn dual_stack(&self) -> BTreeMap<String, NodeInfo> {
        self.objects(|n| vec![n.ipv4, n.ipv6])
    }

    /// Reconcile every node with `mode`; the result per node.
    pub fn reconcile(
        &self,
        mode: OverlayMode,
        objects: &BTreeMap<String, NodeInfo>,
    ) -> Vec<anyhow::Result<Programmed>> {
        self.nodes
            .iter()
            .map(|n| {
                let routes = NodeRoutes::with_overlay(&n.name, mode, VxlanSettings::default());
                n.ns.run(|| routes.reconcile(objects))
            })
            .collect()
    }

    /// Give every pod the MTU the plugin would get from its node's conflist.
    pub fn set_pod_mtus(&self, mode: OverlayMode, objects: &BTreeMap<String, NodeInfo>) -> u32 {
        let mut last = 0;
        for (k, n) in self.nodes.iter().enumerate() {
            let ips = objects[&n.name].internal_ips.clone();
            let mtu =
                n.ns.run(|| {
                    let mut rtnl = palisade_kernel::rtnl::Rtnl::open().unwrap();
                    let links = rtnl.links().unwrap();
                    pod_mtu(mode, &LocalUnderlay::read(&mut rtnl, &links, &ips).unwrap())
                })
                .expect("an underlay");
            n.ns.sh(&format!("ip link set pal{} mtu {mtu}", k + 1))
                .unwrap();
            n.pod.sh(&format!("ip link set eth0 mtu {mtu}")).unwrap();
            last = mtu;
        }
        last
    }

    pub fn node(&self, i: usize) -> &Node {
        &self.nodes[i - 1]
    }
}

/// Routes, neighbours and addresses of nodes, for a failure's message.
pub fn diagnostics(nodes: &[&Node]) -> String {
    nodes
        .iter()
        .map(|n| {
            format!(
                "--- {}:\n{}",
                n.name,
                n.ns.sh("ip route; ip -6 route; ip neigh; ip -6 neigh; ip -br addr")
                    .unwrap_or_default()
            )
        })
        .collect()
}

pub fn errors(results: &[anyhow::Result<Programmed>]) -> Vec<String> {
    results
        .iter()
        .filter_map(|r| r.as_ref().err().map(|e| format!("{e:#}")))
        .collect()
}
