//! Routes to the other nodes' pod CIDRs in this node's network namespace, programmed
//! in-process over rtnetlink (`palisade_kernel::rtnl`; the image carries no `ip`), directly
//! or over a VXLAN overlay ([`OverlayMode`], DESIGN.md "Cross-node"):
//!
//! - **direct**: `podCIDR via InternalIP`, for nodes on one layer-2 network (kind, one
//!   switch): mode `never`, and `cross-subnet` inside this node's subnet;
//! - **overlay**: `podCIDR via <peer VTEP address> dev vxlan4.palisade onlink`, with a
//!   permanent neighbour entry for the VTEP address and a forwarding entry for the peer's
//!   MAC, all derived from the Node objects ([`overlay`]): mode `always`, and `cross-subnet`
//!   outside this node's subnet ([`underlay`]).
//!
//! One reconciler owns all of it and converges on what it finds, which makes a restart
//! blip-free: what is already right is not touched (no entry is removed and added again).
//! The agent only ever touches what it owns: routes with its routing protocol number
//! ([`ROUTE_PROTOCOL`], `proto 180` in `ip route`; kernel, DHCP and operator routes carry
//! other numbers) and its VXLAN links (by name; everything on them is its own). A new route
//! is added exclusively: the kernel's replace matches on destination and metric, not on the
//! owner, so replacing would overwrite an operator's route to the same CIDR. Only a route
//! that is already ours is replaced (its node moved to another address, or to or from the
//! overlay). Changes are ordered so that no packet meets a half-made path: links, addresses,
//! forwarding and neighbour entries before the routes that use them; routes before the
//! entries and links that are no longer used. Errors do not stop the rest; all are reported.

pub mod overlay;
pub mod underlay;

use crate::model::NodeInfo;
use anyhow::{bail, Result};
use ipnet::IpNet;
use overlay::{
    family_of_net, other, vtep_address, vtep_mac, vtep_name, OverlayMode, VxlanSettings,
};
use palisade_kernel::rtnl::{
    Family, FdbEntry, Link, Mac, Route, RouteMode, Rtnl, Vxlan, VxlanLink,
};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;
use underlay::LocalUnderlay;

/// The `rtm_protocol` that marks Palisade's routes (0xb4; unassigned in
/// `/etc/iproute2/rt_protos`).
pub const ROUTE_PROTOCOL: u8 = 180;

/// One route the agent owns.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct NodeRoute {
    pub cidr: IpNet,
    pub via: IpAddr,
    /// Over the VXLAN link of this underlay family (`onlink`); `None`: direct.
    pub overlay: Option<Family>,
}

impl fmt::Display for NodeRoute {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} via {}", self.cidr, self.via)?;
        if let Some(u) = self.overlay {
            write!(f, " dev {} onlink", vtep_name(u))?;
        }
        Ok(())
    }
}

/// One VXLAN link the agent wants, with everything on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vtep {
    pub link: VxlanLink,
    /// This node's own inner addresses (`/32`, `/128`).
    pub addresses: BTreeSet<IpNet>,
    /// Peer MAC → the peer's underlay address.
    pub fdb: BTreeSet<FdbEntry>,
    /// Peer inner address → the peer's MAC (permanent neighbour entries).
    pub neighbours: BTreeMap<IpAddr, Mac>,
}

/// What the node should have: routes, VXLAN links, and why some node gets no route.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Desired {
    pub routes: BTreeSet<NodeRoute>,
    pub vteps: BTreeMap<Family, Vtep>,
    /// Nodes (or pod CIDRs) that cannot be reached, and why.
    pub problems: Vec<String>,
}

/// What a reconcile left in place (for `/status` and metrics).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Programmed {
    pub routes: usize,
    /// Of `routes`, those over the overlay.
    pub overlay_routes: usize,
    pub vteps: Vec<VtepStatus>,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct VtepStatus {
    pub name: String,
    pub local: IpAddr,
    pub mtu: u32,
    pub peers: usize,
}

/// The reconciler of this node's routes to other nodes.
#[derive(Debug, Clone)]
pub struct NodeRoutes {
    own_node: String,
    mode: OverlayMode,
    vxlan: VxlanSettings,
}

impl NodeRoutes {
    /// Direct routes only (`--overlay never`).
    pub fn new(own_node: impl Into<String>) -> NodeRoutes {
        NodeRoutes::with_overlay(own_node, OverlayMode::Never, VxlanSettings::default())
    }

    pub fn with_overlay(
        own_node: impl Into<String>,
        mode: OverlayMode,
        vxlan: VxlanSettings,
    ) -> NodeRoutes {
        NodeRoutes {
            own_node: own_node.into(),
            mode,
            vxlan,
        }
    }

    pub fn mode(&self) -> OverlayMode {
        self.mode
    }

    /// This node's InternalIPs (none while its Node object is not known).
    fn own_ips<'a>(&self, nodes: &'a BTreeMap<String, NodeInfo>) -> &'a [IpAddr] {
        nodes
            .get(&self.own_node)
            .map_or(&[][..], |n| &n.internal_ips[..])
    }

    /// Everything the node should have, given the Nodes and this node's underlay. Pure.
    pub fn desired(&self, nodes: &BTreeMap<String, NodeInfo>, local: &LocalUnderlay) -> Desired {
        let mut d = Desired::default();
        if self.mode != OverlayMode::Never {
            let own = nodes.get(&self.own_node);
            for (f, u) in local.families() {
                d.vteps.insert(
                    f,
                    Vtep {
                        link: VxlanLink {
                            name: vtep_name(f).to_string(),
                            mac: vtep_mac(u.local.addr()),
                            mtu: u.mtu.saturating_sub(overlay::overhead(f)),
                            vxlan: Vxlan {
                                vni: self.vxlan.vni,
                                port: self.vxlan.port,
                                local: Some(u.local.addr()),
                                learning: false,
                            },
                        },
                        addresses: own
                            .into_iter()
                            .flat_map(|n| &n.pod_cidrs)
                            .map(|c| IpNet::from(vtep_address(*c)))
                            .collect(),
                        fdb: BTreeSet::new(),
                        neighbours: BTreeMap::new(),
                    },
                );
            }
            if own.is_none() {
                d.problems.push(format!(
                    "node {}: no Node object (yet): its underlay addresses are unknown",
                    self.own_node
                ));
            }
        }
        // Which node each VTEP MAC was given to, per VXLAN link.
        let mut owners = BTreeMap::new();
        for node in nodes.values().filter(|n| n.name != self.own_node) {
            let ip_of = |f: Family| {
                node.internal_ips
                    .iter()
                    .copied()
                    .find(|ip| Family::of(*ip) == f)
            };
            for cidr in &node.pod_cidrs {
                let cidr = cidr.trunc();
                let x = family_of_net(&cidr);
                let direct = ip_of(x).map(|via| NodeRoute {
                    cidr,
                    via,
                    overlay: None,
                });
                let inside_subnet = ip_of(x)
                    .zip(local.get(x))
                    .is_some_and(|(ip, u)| u.local.contains(&ip));
                let route = match self.mode {
                    OverlayMode::Never => direct,
                    OverlayMode::CrossSubnet if inside_subnet => direct,
                    OverlayMode::Always | OverlayMode::CrossSubnet => {
                        let families = [x, other(x)];
                        overlay_route(&mut d, &mut owners, node, cidr, families, &ip_of)
                    }
                };
                if let Some(r) = route {
                    d.routes.insert(r);
                }
            }
        }
        d
    }

    /// Make this node's routes and VXLAN links in the calling thread's network namespace
    /// what the Nodes say. Keeps going after a failure and reports them all at the end.
    pub fn reconcile(&self, nodes: &BTreeMap<String, NodeInfo>) -> Result<Programmed> {
        let mut rtnl = Rtnl::open()?;
        let links = rtnl.links()?;
        let local = LocalUnderlay::read(&mut rtnl, &links, self.own_ips(nodes))?;
        let desired = self.desired(nodes, &local);
        let mut errors = desired.problems.clone();
        let programmed = apply(&mut rtnl, &links, &desired, &mut errors);
        if !errors.is_empty() {
            bail!("{}", errors.join("; "));
        }
        Ok(programmed)
    }

    /// The routes with our protocol number now in the main table of the calling thread's
    /// network namespace.
    pub fn current(&self) -> Result<BTreeSet<NodeRoute>> {
        let mut rtnl = Rtnl::open()?;
        let links = rtnl.links()?;
        Ok(current_routes(&mut rtnl, &vtep_links(&links))?)
    }
}

/// The overlay route to `cidr` of `node` over the first underlay family in `families` that
/// both nodes have, with its neighbour and forwarding entries added to `d`. `owners` keeps
/// which node each MAC went to: two nodes with one MAC (one underlay address claimed twice,
/// or a hash collision) would take each other's traffic, so the second is refused.
fn overlay_route(
    d: &mut Desired,
    owners: &mut BTreeMap<(Family, Mac), String>,
    node: &NodeInfo,
    cidr: IpNet,
    families: [Family; 2],
    ip_of: &dyn Fn(Family) -> Option<IpAddr>,
) -> Option<NodeRoute> {
    let Some((u, remote)) = families
        .into_iter()
        .find_map(|f| Some((f, ip_of(f)?)).filter(|(f, _)| d.vteps.contains_key(f)))
    else {
        d.problems.push(format!(
            "node {}: pod CIDR {cidr} has no overlay path (no InternalIP of a family this node \
             has an underlay address of)",
            node.name
        ));
        return None;
    };
    let vtep = d.vteps.get_mut(&u)?;
    let mac = vtep_mac(remote);
    let owner = owners.entry((u, mac)).or_insert_with(|| node.name.clone());
    if mac == vtep.link.mac || *owner != node.name {
        d.problems.push(format!(
            "node {}: its VTEP MAC {mac} (from {remote}) is taken by {} on {}",
            node.name,
            if mac == vtep.link.mac {
                "this node"
            } else {
                owner.as_str()
            },
            vtep_name(u)
        ));
        return None;
    }
    let via = vtep_address(cidr);
    vtep.fdb.insert(FdbEntry { mac, dst: remote });
    vtep.neighbours.insert(via, mac);
    Some(NodeRoute {
        cidr,
        via,
        overlay: Some(u),
    })
}

/// Our VXLAN links among `links`, by underlay family.
fn vtep_links(links: &[Link]) -> BTreeMap<Family, Link> {
    [Family::V4, Family::V6]
        .into_iter()
        .filter_map(|f| Some((f, links.iter().find(|l| l.name == vtep_name(f))?.clone())))
        .collect()
}

fn current_routes(
    rtnl: &mut Rtnl,
    vteps: &BTreeMap<Family, Link>,
) -> palisade_kernel::netlink::Result<BTreeSet<NodeRoute>> {
    Ok(rtnl
        .routes(None, Some(ROUTE_PROTOCOL))?
        .into_iter()
        .filter_map(|r| {
            let overlay = vteps
                .iter()
                .find(|(_, l)| r.onlink && r.oif == Some(l.index))
                .map(|(f, _)| *f);
            Some(NodeRoute {
                cidr: r.dst,
                via: r.gateway?,
                overlay,
            })
        })
        .collect())
}

/// Whether an existing link is the VXLAN link `want` describes (settings and MAC; the MTU
/// is changed in place).
fn is_wanted(have: &Link, want: &VxlanLink) -> bool {
    have.vxlan.as_ref() == Some(&want.vxlan) && have.mac == Some(want.mac)
}

/// Program `desired` (see the module doc for the order); failures go to `errors`.
fn apply(
    rtnl: &mut Rtnl,
    links: &[Link],
    desired: &Desired,
    errors: &mut Vec<String>,
) -> Programmed {
    let existing = vtep_links(links);
    // 1. VXLAN links, their addresses, forwarding and neighbour entries (additions).
    let mut vteps: BTreeMap<Family, Link> = BTreeMap::new();
    for (f, want) in &desired.vteps {
        let link = match existing.get(f) {
            Some(have) if have.kind.as_deref() != Some("vxlan") => {
                errors.push(format!(
                    "link {} exists and is no VXLAN link (kind {}): not touched",
                    have.name,
                    have.kind.as_deref().unwrap_or("none")
                ));
                continue;
            }
            Some(have) if is_wanted(have, &want.link) => {
                if have.mtu != want.link.mtu {
                    match rtnl.set_mtu(have, want.link.mtu) {
                        Ok(()) => {
                            tracing::info!(link = %have.name, mtu = want.link.mtu, "VXLAN link MTU changed")
                        }
                        Err(e) => errors.push(e.to_string()),
                    }
                }
                if !have.up {
                    if let Err(e) = rtnl.set_up(have) {
                        errors.push(e.to_string());
                    }
                }
                have.clone()
            }
            other => {
                if let Some(have) = other {
                    // Another VNI, port, underlay address or MAC: the kernel changes none of
                    // these on a live link. Deleting it takes its routes and entries along;
                    // they are made again below.
                    tracing::info!(link = %have.name, have = ?have.vxlan, want = ?want.link.vxlan, "VXLAN link settings changed; replacing it");
                    if let Err(e) = rtnl.delete_link_index(have.index) {
                        errors.push(e.to_string());
                        continue;
                    }
                }
                match rtnl.create_vxlan(&want.link) {
                    Ok(l) => {
                        tracing::info!(link = %l.name, vni = want.link.vxlan.vni, port = want.link.vxlan.port, mtu = l.mtu, "VXLAN link created");
                        l
                    }
                    Err(e) => {
                        errors.push(e.to_string());
                        continue;
                    }
                }
            }
        };
        add_entries(rtnl, &link, want, errors);
        vteps.insert(*f, link);
    }

    // 2. Routes.
    let current = match current_routes(rtnl, &vteps) {
        Ok(c) => c,
        Err(e) => {
            errors.push(e.to_string());
            return Programmed::default();
        }
    };
    let kernel_route = |r: &NodeRoute| -> Option<Route> {
        match r.overlay {
            None => Some(Route::via(r.cidr, r.via, ROUTE_PROTOCOL)),
            Some(f) => Some(Route::onlink_via(
                r.cidr,
                r.via,
                vteps.get(&f)?.index,
                ROUTE_PROTOCOL,
            )),
        }
    };
    let wanted = &desired.routes;
    for r in current.difference(wanted) {
        // A CIDR that stays on the same kind of path (direct, or over the same VXLAN link)
        // is replaced below instead. One that moves to another link is deleted first: the
        // kernel checks an IPv6 onlink gateway against the routes in place, finds the old
        // route to that very CIDR on the other link and refuses the replacement ("Nexthop has
        // invalid gateway or device mismatch").
        if wanted
            .iter()
            .any(|d| d.cidr == r.cidr && d.overlay == r.overlay)
        {
            continue;
        }
        // The kernel matches a deletion on what it names: destination, gateway, protocol.
        match rtnl.delete_route(&Route::via(r.cidr, r.via, ROUTE_PROTOCOL)) {
            Err(e) => errors.push(e.to_string()),
            Ok(_) => tracing::info!(route = %r, "removed node route"),
        }
    }
    let mut programmed = Programmed::default();
    for r in wanted {
        let Some(route) = kernel_route(r) else {
            // Its VXLAN link could not be made (reported above).
            continue;
        };
        if !current.contains(r) {
            let mode = if current
                .iter()
                .any(|c| c.cidr == r.cidr && c.overlay == r.overlay)
            {
                RouteMode::Replace
            } else {
                RouteMode::Exclusive
            };
            if let Err(e) = rtnl.add_route(&route, mode) {
                errors.push(e.to_string());
                continue;
            }
            tracing::info!(route = %r, "node route in place");
        }
        programmed.routes += 1;
        programmed.overlay_routes += usize::from(r.overlay.is_some());
    }

    // 3. What is no longer used: entries, then links.
    for (f, link) in &vteps {
        if let Some(want) = desired.vteps.get(f) {
            remove_stale_entries(rtnl, link, want, errors);
            programmed.vteps.push(VtepStatus {
                name: link.name.clone(),
                local: want.link.vxlan.local.unwrap_or(IpAddr::from([0, 0, 0, 0])),
                mtu: want.link.mtu,
                peers: want.fdb.len(),
            });
        }
    }
    for (f, have) in &existing {
        if desired.vteps.contains_key(f) || have.kind.as_deref() != Some("vxlan") {
            continue;
        }
        match rtnl.delete_link_index(have.index) {
            Ok(_) => tracing::info!(link = %have.name, "VXLAN link removed (no longer used)"),
            Err(e) => errors.push(e.to_string()),
        }
    }
    programmed
}

/// Add what `want` has and `link` lacks: addresses, forwarding entries, neighbours.
fn add_entries(rtnl: &mut Rtnl, link: &Link, want: &Vtep, errors: &mut Vec<String>) {
    let result = (|| -> palisade_kernel::netlink::Result<()> {
        let have = rtnl.addresses(link.index)?;
        for a in want.addresses.iter().filter(|a| !have.contains(a)) {
            match rtnl.add_address(link, *a, true) {
                Ok(()) => tracing::info!(link = %link.name, address = %a, "VTEP address added"),
                Err(e) => errors.push(e.to_string()),
            }
        }
        let have = rtnl.fdb(link)?;
        for e in want.fdb.iter().filter(|e| !have.contains(e)) {
            match rtnl.replace_fdb(link, e) {
                Ok(()) => {
                    tracing::info!(link = %link.name, entry = %e, "forwarding entry in place")
                }
                Err(e) => errors.push(e.to_string()),
            }
        }
        let have = permanent_neighbours(rtnl, link)?;
        for (ip, mac) in want
            .neighbours
            .iter()
            .filter(|(ip, mac)| have.get(ip) != Some(mac))
        {
            match rtnl.replace_permanent_neighbour(link, *ip, *mac) {
                Ok(()) => tracing::info!(link = %link.name, %ip, %mac, "VTEP neighbour in place"),
                Err(e) => errors.push(e.to_string()),
            }
        }
        Ok(())
    })();
    if let Err(e) = result {
        errors.push(e.to_string());
    }
}

/// Remove what `link` has and `want` does not: neighbours, forwarding entries, addresses.
fn remove_stale_entries(rtnl: &mut Rtnl, link: &Link, want: &Vtep, errors: &mut Vec<String>) {
    let result = (|| -> palisade_kernel::netlink::Result<()> {
        for (ip, _) in permanent_neighbours(rtnl, link)?
            .iter()
            .filter(|(ip, _)| !want.neighbours.contains_key(ip))
        {
            match rtnl.delete_neighbour(link, *ip) {
                Ok(_) => tracing::info!(link = %link.name, %ip, "VTEP neighbour removed"),
                Err(e) => errors.push(e.to_string()),
            }
        }
        let macs: BTreeSet<Mac> = want.fdb.iter().map(|e| e.mac).collect();
        for e in rtnl.fdb(link)?.iter().filter(|e| !macs.contains(&e.mac)) {
            match rtnl.delete_fdb(link, e) {
                Ok(_) => tracing::info!(link = %link.name, entry = %e, "forwarding entry removed"),
                Err(e) => errors.push(e.to_string()),
            }
        }
        for a in rtnl.addresses(link.index)?.iter().filter(|a| {
            !want.addresses.contains(a)
                && !matches!(a, IpNet::V6(n) if n.addr().is_unicast_link_local())
        }) {
            match rtnl.delete_address(link, *a) {
                Ok(_) => tracing::info!(link = %link.name, address = %a, "VTEP address removed"),
                Err(e) => errors.push(e.to_string()),
            }
        }
        Ok(())
    })();
    if let Err(e) = result {
        errors.push(e.to_string());
    }
}

/// The permanent neighbour entries on `link` (both families): ours, on our own link. The
/// kernel's own (incomplete, failed) entries are left to it.
fn permanent_neighbours(
    rtnl: &mut Rtnl,
    link: &Link,
) -> palisade_kernel::netlink::Result<BTreeMap<IpAddr, Mac>> {
    let mut out = BTreeMap::new();
    for f in [Family::V4, Family::V6] {
        for n in rtnl.neighbours_on(link, f)? {
            if let (true, Some(mac)) = (n.permanent, n.mac) {
                out.insert(n.ip, mac);
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::underlay::Underlay;
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

    fn nodes(list: Vec<(String, NodeInfo)>) -> BTreeMap<String, NodeInfo> {
        list.into_iter().collect()
    }

    /// This node's underlay: `(address/prefix, mtu)` per family.
    fn underlay(list: &[(&str, u32)]) -> LocalUnderlay {
        let mut u = LocalUnderlay::default();
        for (net, mtu) in list {
            let local: IpNet = net.parse().unwrap();
            u.insert(
                Family::of(local.addr()),
                Underlay {
                    local,
                    mtu: *mtu,
                    link: "eth0".into(),
                },
            );
        }
        u
    }

    fn lines(d: &Desired) -> Vec<String> {
        d.routes.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn routes_go_to_other_nodes_by_family() {
        let nodes = nodes(vec![
            node("n1", &["192.168.0.1"], &["10.244.1.0/24"]),
            node(
                "n2",
                &["192.168.0.2", "fd00::2"],
                &["10.244.2.0/24", "fd10:2::/64"],
            ),
            node("n3", &["192.168.0.3"], &["fd10:3::/64"]),
            node("n4", &[], &["10.244.4.0/24"]),
        ]);
        let d = NodeRoutes::new("n1").desired(&nodes, &underlay(&[("192.168.0.1/24", 1500)]));
        assert_eq!(
            lines(&d),
            vec!["10.244.2.0/24 via 192.168.0.2", "fd10:2::/64 via fd00::2"]
        );
        assert!(d.vteps.is_empty() && d.problems.is_empty(), "{d:?}");
    }

    fn two_subnets() -> BTreeMap<String, NodeInfo> {
        nodes(vec![
            node(
                "n1",
                &["192.0.2.1", "2001:db8::1"],
                &["10.244.1.0/24", "fd00:10:244:1::/64"],
            ),
            node(
                "n2",
                &["198.51.100.2", "2001:db8:2::2"],
                &["10.244.2.0/24", "fd00:10:244:2::/64"],
            ),
            node(
                "n3",
                &["192.0.2.3", "2001:db8::3"],
                &["10.244.3.0/24", "fd00:10:244:3::/64"],
            ),
        ])
    }

    fn overlay(mode: OverlayMode) -> NodeRoutes {
        NodeRoutes::with_overlay("n1", mode, VxlanSettings::default())
    }

    #[test]
    fn always_carries_every_pod_cidr_over_the_underlay_of_its_family() {
        let local = underlay(&[("192.0.2.1/24", 1500), ("2001:db8::1/64", 9000)]);
        let d = overlay(OverlayMode::Always).desired(&two_subnets(), &local);
        assert_eq!(
            lines(&d),
            vec![
                "10.244.2.0/24 via 10.244.2.0 dev vxlan4.palisade onlink",
                "10.244.3.0/24 via 10.244.3.0 dev vxlan4.palisade onlink",
                "fd00:10:244:2::/64 via fd00:10:244:2:: dev vxlan6.palisade onlink",
                "fd00:10:244:3::/64 via fd00:10:244:3:: dev vxlan6.palisade onlink",
            ]
        );
        let v4 = &d.vteps[&Family::V4];
        assert_eq!(v4.link.name, "vxlan4.palisade");
        assert_eq!(v4.link.mtu, 1450);
        assert_eq!(v4.link.mac, vtep_mac("192.0.2.1".parse().unwrap()));
        assert_eq!(v4.link.vxlan.local, Some("192.0.2.1".parse().unwrap()));
        assert_eq!((v4.link.vxlan.port, v4.link.vxlan.vni), (4789, 1));
        assert!(!v4.link.vxlan.learning);
        let fdb: Vec<String> = v4.fdb.iter().map(ToString::to_string).collect();
        assert_eq!(
            fdb,
            vec![
                "02:50:c0:00:02:03 dst 192.0.2.3",
                "02:50:c6:33:64:02 dst 198.51.100.2"
            ]
        );
        let neigh: Vec<String> = v4
            .neighbours
            .iter()
            .map(|(ip, mac)| format!("{ip} {mac}"))
            .collect();
        assert_eq!(
            neigh,
            vec![
                "10.244.2.0 02:50:c6:33:64:02",
                "10.244.3.0 02:50:c0:00:02:03"
            ]
        );
        // The node's own inner addresses sit on every VXLAN link.
        let own: Vec<String> = v4.addresses.iter().map(ToString::to_string).collect();
        assert_eq!(own, vec!["10.244.1.0/32", "fd00:10:244:1::/128"]);
        let v6 = &d.vteps[&Family::V6];
        assert_eq!(v6.link.mtu, 9000 - 70);
        assert_eq!(v6.addresses, v4.addresses);
        assert!(d.problems.is_empty(), "{:?}", d.problems);
    }

    #[test]
    fn cross_subnet_routes_directly_inside_this_nodes_subnet_only() {
        let local = underlay(&[("192.0.2.1/24", 1500), ("2001:db8::1/64", 1500)]);
        let d = overlay(OverlayMode::CrossSubnet).desired(&two_subnets(), &local);
        assert_eq!(
            lines(&d),
            vec![
                "10.244.2.0/24 via 10.244.2.0 dev vxlan4.palisade onlink",
                "10.244.3.0/24 via 192.0.2.3",
                "fd00:10:244:2::/64 via fd00:10:244:2:: dev vxlan6.palisade onlink",
                "fd00:10:244:3::/64 via 2001:db8::3",
            ]
        );
        // Only the peer outside the subnet has entries.
        assert_eq!(d.vteps[&Family::V4].fdb.len(), 1);
        assert_eq!(d.vteps[&Family::V6].neighbours.len(), 1);
        // A narrower subnet puts n3 outside it too.
        let local = underlay(&[("192.0.2.1/31", 1500), ("2001:db8::1/127", 1500)]);
        let d = overlay(OverlayMode::CrossSubnet).desired(&two_subnets(), &local);
        assert_eq!(d.routes.iter().filter(|r| r.overlay.is_some()).count(), 4);
        // never: today's routes, no VXLAN link (even across subnets: the kernel will say
        // that the gateway is not on a link).
        let d = overlay(OverlayMode::Never).desired(&two_subnets(), &local);
        assert!(d.vteps.is_empty());
        assert!(lines(&d).contains(&"10.244.2.0/24 via 198.51.100.2".to_string()));
    }

    #[test]
    fn a_pod_family_the_underlay_lacks_rides_the_other_one() {
        // IPv4-only nodes with dual-stack pods: IPv6 pods over IPv4.
        let nodes = nodes(vec![
            node(
                "n1",
                &["192.0.2.1"],
                &["10.244.1.0/24", "fd00:10:244:1::/64"],
            ),
            node(
                "n2",
                &["198.51.100.2"],
                &["10.244.2.0/24", "fd00:10:244:2::/64"],
            ),
            // IPv6-only peer: no common underlay family.
            node("n5", &["2001:db8:5::5"], &["10.244.5.0/24"]),
        ]);
        let local = underlay(&[("192.0.2.1/24", 1500)]);
        let d = overlay(OverlayMode::Always).desired(&nodes, &local);
        assert_eq!(
            lines(&d),
            vec![
                "10.244.2.0/24 via 10.244.2.0 dev vxlan4.palisade onlink",
                "fd00:10:244:2::/64 via fd00:10:244:2:: dev vxlan4.palisade onlink",
            ]
        );
        assert_eq!(d.vteps.len(), 1);
        assert_eq!(d.vteps[&Family::V4].fdb.len(), 1, "one peer, one entry");
        assert_eq!(d.vteps[&Family::V4].neighbours.len(), 2, "one per pod CIDR");
        assert_eq!(d.problems.len(), 1, "{:?}", d.problems);
        assert!(d.problems[0].contains("node n5: pod CIDR 10.244.5.0/24 has no overlay path"));
        // IPv6-only underlay: IPv4 pods over IPv6.
        let nodes = self::nodes(vec![
            node("n1", &["2001:db8::1"], &["10.244.1.0/24"]),
            node("n2", &["2001:db8:2::2"], &["10.244.2.0/24"]),
        ]);
        let local = underlay(&[("2001:db8::1/64", 1500)]);
        let d = overlay(OverlayMode::CrossSubnet).desired(&nodes, &local);
        assert_eq!(
            lines(&d),
            vec!["10.244.2.0/24 via 10.244.2.0 dev vxlan6.palisade onlink"]
        );
        assert_eq!(
            overlay::pod_mtu(OverlayMode::CrossSubnet, &local),
            Some(1430)
        );
    }

    #[test]
    fn peers_whose_mac_would_collide_are_reported_not_programmed() {
        // Two nodes claiming one underlay address would share a MAC: the first keeps it.
        let nodes = nodes(vec![
            node("n1", &["192.0.2.1"], &["10.244.1.0/24"]),
            node("n2", &["192.0.2.2"], &["10.244.2.0/24"]),
            node("n3", &["192.0.2.2"], &["10.244.3.0/24"]),
            node("n4", &["192.0.2.1"], &["10.244.4.0/24"]),
        ]);
        let d = overlay(OverlayMode::Always).desired(&nodes, &underlay(&[("192.0.2.1/24", 1500)]));
        assert_eq!(
            lines(&d),
            vec!["10.244.2.0/24 via 10.244.2.0 dev vxlan4.palisade onlink"]
        );
        assert_eq!(d.problems.len(), 2, "{:?}", d.problems);
        assert!(d.problems[0].contains("node n3: its VTEP MAC 02:50:c0:00:02:02"));
        assert!(d.problems[1].contains("node n4"));
    }

    #[test]
    fn without_its_own_node_the_overlay_has_no_addresses_and_says_why() {
        let nodes = nodes(vec![node("n2", &["192.0.2.2"], &["10.244.2.0/24"])]);
        let local = underlay(&[("192.0.2.1/24", 1500)]);
        let d = overlay(OverlayMode::Always).desired(&nodes, &local);
        assert!(d.vteps[&Family::V4].addresses.is_empty());
        assert!(d.problems[0].contains("no Node object"), "{:?}", d.problems);
        assert_eq!(overlay::pod_mtu(OverlayMode::Never, &local), Some(1500));
        assert_eq!(
            overlay::pod_mtu(OverlayMode::Always, &LocalUnderlay::default()),
            None
        );
    }

    /// In a namespace of its own with a segment to a peer: routes are added, a gateway
    /// change replaces the route, a node that goes away loses its route, a route whose
    /// gateway is unreachable is reported without stopping the others, and routes of other
    /// owners (same CIDR included) are never touched.
    #[test]
    fn routes_follow_the_nodes_and_leave_foreign_routes_alone() {
        if !palisade_testutil::kernel_tests_enabled() {
            return;
        }
        let node_ns = palisade_testutil::TestNetns::new("routes-node").unwrap();
        let peer = palisade_testutil::TestNetns::new("routes-peer").unwrap();
        node_ns.veth_to("seg0", &peer, "seg1").unwrap();
        node_ns
            .sh(
                "ip addr add 192.0.2.1/24 dev seg0 && ip -6 addr add 2001:db8::1/64 dev seg0 nodad && \
                 ip route add 198.51.100.0/24 via 192.0.2.9 && \
                 ip route add 10.244.9.0/24 via 192.0.2.9 proto static",
            )
            .unwrap();
        let foreign = || {
            let mut lines: Vec<String> = node_ns
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
            node_ns
                .sh("ip -4 route show proto 180; ip -6 route show proto 180")
                .unwrap()
                .lines()
                .map(|l| l.trim().to_string())
                .collect::<Vec<_>>()
        };
        let before = foreign();
        let routes = NodeRoutes::new("n1");
        let n1 = || node("n1", &["192.0.2.1", "2001:db8::1"], &["10.244.1.0/24"]);
        let reconcile = |list: Vec<(String, NodeInfo)>| {
            let nodes = nodes(list);
            node_ns.run(|| routes.reconcile(&nodes))
        };

        // A route to a CIDR that an operator routes already is reported, not taken over;
        // the others are programmed all the same.
        let err = reconcile(vec![
            n1(),
            node(
                "n2",
                &["192.0.2.2", "2001:db8::2"],
                &["10.244.2.0/24", "fd10:2::/64"],
            ),
            node("n9", &["192.0.2.3"], &["10.244.9.0/24"]),
        ])
        .unwrap_err()
        .to_string();
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
        let programmed = reconcile(vec![
            n1(),
            node(
                "n2",
                &["192.0.2.2", "2001:db8::2"],
                &["10.244.2.0/24", "fd10:2::/64"],
            ),
        ])
        .unwrap();
        assert_eq!((programmed.routes, programmed.overlay_routes), (2, 0));
        let current: Vec<String> = node_ns
            .run(|| routes.current())
            .unwrap()
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            current,
            vec!["10.244.2.0/24 via 192.0.2.2", "fd10:2::/64 via 2001:db8::2"]
        );

        // node-2 moved to another address: the route is replaced, not duplicated.
        reconcile(vec![
            n1(),
            node(
                "n2",
                &["192.0.2.4", "2001:db8::4"],
                &["10.244.2.0/24", "fd10:2::/64"],
            ),
        ])
        .unwrap();
        assert_eq!(
            ours(),
            vec![
                "10.244.2.0/24 via 192.0.2.4 dev seg0",
                "fd10:2::/64 via 2001:db8::4 dev seg0 metric 1024 pref medium",
            ]
        );

        // A gateway no link reaches: reported with the kernel's own words, and the other
        // change is made.
        let err = reconcile(vec![
            n1(),
            node("n3", &["203.0.113.7"], &["10.244.3.0/24"]),
            node("n4", &["192.0.2.5"], &["10.244.4.0/24"]),
        ])
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("add route 10.244.3.0/24 via 203.0.113.7 proto 180")
                && err.contains("(Nexthop has invalid gateway)"),
            "{err}"
        );
        assert_eq!(ours(), vec!["10.244.4.0/24 via 192.0.2.5 dev seg0"]);

        // Every other node gone: none of ours left, and everything else as it was.
        reconcile(vec![n1()]).unwrap();
        assert!(ours().is_empty(), "{:?}", ours());
        assert_eq!(foreign(), before);
    }
}
