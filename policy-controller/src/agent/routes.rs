//! Routes to the other nodes' pod CIDRs (`podCIDR via InternalIP`) in this node's network
//! namespace (DESIGN.md "Cross-node": nodes share an L2 segment, as in kind), programmed
//! in-process over rtnetlink (`palisade_kernel::rtnl`; the image carries no `ip`).
//!
//! The agent only ever touches routes it owns, recognised by their routing protocol number
//! ([`ROUTE_PROTOCOL`], `proto 180` in `ip route`): kernel, DHCP and operator routes carry
//! other numbers. Routes are added, replaced or deleted one request per changed route (there
//! are as many as nodes, and they change when nodes come and go). A new route is added
//! exclusively: the kernel's replace matches on destination and metric, not on the owner, so
//! replacing would overwrite an operator's route to the same CIDR. Only a route that is
//! already ours is replaced (its node moved to another address).

use crate::model::NodeInfo;
use anyhow::{bail, Result};
use ipnet::IpNet;
use palisade_kernel::rtnl::{Route, RouteMode, Rtnl};
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

/// The `rtm_protocol` that marks Palisade's routes (0xb4; unassigned in
/// `/etc/iproute2/rt_protos`).
pub const ROUTE_PROTOCOL: u8 = 180;

/// One route the agent owns.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct NodeRoute {
    pub cidr: IpNet,
    pub via: IpAddr,
}

impl NodeRoute {
    fn kernel(&self) -> Route {
        Route::via(self.cidr, self.via, ROUTE_PROTOCOL)
    }
}

#[derive(Debug, Clone)]
pub struct NodeRoutes {
    own_node: String,
}

impl NodeRoutes {
    pub fn new(own_node: impl Into<String>) -> NodeRoutes {
        NodeRoutes {
            own_node: own_node.into(),
        }
    }

    /// Routes for every other node that has pod CIDRs and an InternalIP of the same family.
    pub fn desired(&self, nodes: &BTreeMap<String, NodeInfo>) -> BTreeSet<NodeRoute> {
        let mut routes = BTreeSet::new();
        for node in nodes.values().filter(|n| n.name != self.own_node) {
            for cidr in &node.pod_cidrs {
                let via = node
                    .internal_ips
                    .iter()
                    .find(|ip| ip.is_ipv4() == matches!(cidr, IpNet::V4(_)));
                if let Some(via) = via {
                    routes.insert(NodeRoute {
                        cidr: cidr.trunc(),
                        via: *via,
                    });
                }
            }
        }
        routes
    }

    /// The routes with our protocol number now in the main table of the calling thread's
    /// network namespace.
    pub fn current(&self) -> Result<BTreeSet<NodeRoute>> {
        Ok(current(&mut Rtnl::open()?)?)
    }

    /// Make our routes in the calling thread's network namespace equal `desired`:
    /// add/replace what is missing or different, delete what is ours and no longer wanted.
    /// Keeps going after a failure and reports them all.
    pub fn reconcile(&self, desired: &BTreeSet<NodeRoute>) -> Result<()> {
        let mut rtnl = Rtnl::open()?;
        let current = current(&mut rtnl)?;
        let mut errors = Vec::new();
        for r in current.difference(desired) {
            // A CIDR that stays (via another gateway) is replaced below instead.
            if desired.iter().any(|d| d.cidr == r.cidr) {
                continue;
            }
            match rtnl.delete_route(&r.kernel()) {
                Err(e) => errors.push(e.to_string()),
                Ok(_) => tracing::info!(cidr = %r.cidr, via = %r.via, "removed node route"),
            }
        }
        for r in desired.difference(&current) {
            let mode = if current.iter().any(|c| c.cidr == r.cidr) {
                RouteMode::Replace
            } else {
                RouteMode::Exclusive
            };
            match rtnl.add_route(&r.kernel(), mode) {
                Err(e) => errors.push(e.to_string()),
                Ok(()) => tracing::info!(cidr = %r.cidr, via = %r.via, "node route in place"),
            }
        }
        if !errors.is_empty() {
            bail!("{}", errors.join("; "));
        }
        Ok(())
    }
}

fn current(rtnl: &mut Rtnl) -> palisade_kernel::netlink::Result<BTreeSet<NodeRoute>> {
    Ok(rtnl
        .routes(None, Some(ROUTE_PROTOCOL))?
        .into_iter()
        .filter_map(|r| {
            Some(NodeRoute {
                cidr: r.dst,
                via: r.gateway?,
            })
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, ips: &[&str], cidrs: &[&str]) -> (String, NodeInfo) {
        (
            name.into(),
            NodeInfo {
                name: name.into(),
                internal_ips: ips.iter().map(|s| s.parse().unwrap()).collect(),
                pod_cidrs: cidrs.iter().map(|s| s.parse().unwrap()).collect(),
                ..NodeInfo::default()
            },
        )
    }

    #[test]
    fn routes_go_to_other_nodes_by_family() {
        let nodes: BTreeMap<_, _> = [
            node("n1", &["192.168.0.1"], &["10.244.1.0/24"]),
            node(
                "n2",
                &["192.168.0.2", "fd00::2"],
                &["10.244.2.0/24", "fd10:2::/64"],
            ),
            node("n3", &["192.168.0.3"], &["fd10:3::/64"]),
            node("n4", &[], &["10.244.4.0/24"]),
        ]
        .into_iter()
        .collect();
        let got: Vec<String> = NodeRoutes::new("n1")
            .desired(&nodes)
            .iter()
            .map(|r| format!("{} via {}", r.cidr, r.via))
            .collect();
        assert_eq!(
            got,
            vec!["10.244.2.0/24 via 192.168.0.2", "fd10:2::/64 via fd00::2"]
        );
    }

    /// In a namespace of its own with a segment to a peer: routes are added, a gateway
    /// change replaces the route, a node that goes away loses its route, a route whose
    /// gateway is unreachable is reported without stopping the others, and routes of other
    /// owners (same CIDR included) are never touched.
    #[test]
    fn routes_follow_the_desired_set_and_leave_foreign_routes_alone() {
        if !palisade_testutil::kernel_tests_enabled() {
            return;
        }
        let node = palisade_testutil::TestNetns::new("routes-node").unwrap();
        let peer = palisade_testutil::TestNetns::new("routes-peer").unwrap();
        node.veth_to("seg0", &peer, "seg1").unwrap();
        node.sh(
            "ip addr add 192.0.2.1/24 dev seg0 && ip -6 addr add 2001:db8::1/64 dev seg0 nodad && \
             ip route add 198.51.100.0/24 via 192.0.2.9 && \
             ip route add 10.244.9.0/24 via 192.0.2.9 proto static",
        )
        .unwrap();
        let foreign = || {
            let mut lines: Vec<String> = node
                .sh("ip -4 route show; ip -6 route show")
                .unwrap()
                .lines()
                .filter(|l| !l.contains("proto 180"))
                .map(str::to_string)
                .collect();
            lines.sort();
            lines
        };
        // `ip route show proto 180` leaves the filter out of its lines.
        let ours = || {
            node.sh("ip -4 route show proto 180; ip -6 route show proto 180")
                .unwrap()
                .lines()
                .map(|l| l.trim().to_string())
                .collect::<Vec<_>>()
        };
        let before = foreign();
        let routes = NodeRoutes::new("n1");
        let route = |cidr: &str, via: &str| NodeRoute {
            cidr: cidr.parse().unwrap(),
            via: via.parse().unwrap(),
        };
        let reconcile = |desired: &BTreeSet<NodeRoute>| node.run(|| routes.reconcile(desired));

        // A route to a CIDR that an operator routes already is reported, not taken over;
        // the others are programmed all the same.
        let desired: BTreeSet<_> = [
            route("10.244.2.0/24", "192.0.2.2"),
            route("10.244.9.0/24", "192.0.2.3"),
            route("fd10:2::/64", "2001:db8::2"),
        ]
        .into();
        let err = reconcile(&desired).unwrap_err().to_string();
        assert!(
            err.contains("add route 10.244.9.0/24 via 192.0.2.3 proto 180: File exists"),
            "{err}"
        );
        assert_eq!(
            ours(),
            vec![
                "10.244.2.0/24 via 192.0.2.2 dev seg0",
                "fd10:2::/64 via 2001:db8::2 dev seg0 metric 1024 pref medium",
            ]
        );
        assert_eq!(foreign(), before);
        let desired: BTreeSet<_> = [
            route("10.244.2.0/24", "192.0.2.2"),
            route("fd10:2::/64", "2001:db8::2"),
        ]
        .into();
        reconcile(&desired).unwrap();
        assert_eq!(node.run(|| routes.current()).unwrap(), desired);

        // node-2 moved to another address: the route is replaced, not duplicated.
        let moved: BTreeSet<_> = [
            route("10.244.2.0/24", "192.0.2.4"),
            route("fd10:2::/64", "2001:db8::4"),
        ]
        .into();
        reconcile(&moved).unwrap();
        assert_eq!(
            ours(),
            vec![
                "10.244.2.0/24 via 192.0.2.4 dev seg0",
                "fd10:2::/64 via 2001:db8::4 dev seg0 metric 1024 pref medium",
            ]
        );

        // A gateway no link reaches: reported with the kernel's own words, and the other
        // change is made.
        let partly: BTreeSet<_> = [
            route("10.244.3.0/24", "203.0.113.7"),
            route("10.244.4.0/24", "192.0.2.5"),
        ]
        .into();
        let err = reconcile(&partly).unwrap_err().to_string();
        assert!(
            err.contains("add route 10.244.3.0/24 via 203.0.113.7 proto 180")
                && err.contains("(Nexthop has invalid gateway)"),
            "{err}"
        );
        assert_eq!(ours(), vec!["10.244.4.0/24 via 192.0.2.5 dev seg0"]);

        // Every node gone: none of ours left, and everything else as it was.
        reconcile(&BTreeSet::new()).unwrap();
        assert!(ours().is_empty(), "{:?}", ours());
        assert_eq!(foreign(), before);
    }
}
