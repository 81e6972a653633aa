//! The VXLAN overlay's addressing, all derived from Node objects and this node's own
//! interfaces, so that every agent computes the same values for every node without writing
//! anything to the API (the agent only reads it) and without asking its peers:
//!
//! - **One VXLAN link per underlay family** ([`vtep_name`]): `vxlan4.palisade` sends over
//!   IPv4, `vxlan6.palisade` over IPv6, each from this node's InternalIP of that family. A
//!   pod CIDR of family X travels over the underlay of family X when both nodes have an
//!   InternalIP of that family, else over the other one (IPv6 pods on an IPv4-only network,
//!   and the other way round).
//! - **VTEP MAC** ([`vtep_mac`]): from the node's underlay address; an IPv4 address is
//!   written into the MAC as it is (unique as the address is), an IPv6 one hashed to 40 bits
//!   (a collision is detected and reported, never programmed). flannel publishes its MACs
//!   in a Node annotation instead, which needs write access to Nodes and leaves a new node
//!   unreachable until its annotation has spread.
//! - **VTEP inner address** ([`vtep_address`]): the network address of each pod CIDR, which
//!   the CNI plugin's IPAM never hands out (as in flannel). The route to a peer's pod CIDR
//!   goes `via` it, `onlink`, and a permanent neighbour entry maps it to the peer's MAC; the
//!   forwarding entry maps that MAC to the peer's underlay address. Nothing is learned or
//!   flooded: a frame for any other MAC is dropped. Each node also carries its own inner
//!   addresses on its VXLAN links, so that what the node itself sends to a remote pod leaves
//!   with an address the remote node routes back over the overlay.
//! - **MTU**: the link that carries the node's InternalIP, less 50 bytes over IPv4 (outer
//!   IPv4 20, UDP 8, VXLAN 8, inner Ethernet 14) and 70 over IPv6 (outer header 40). Pods get
//!   the smallest MTU of the overlay links that may carry their traffic ([`pod_mtu`]), so a
//!   pod never sends a packet the overlay would have to fragment.

use super::underlay::LocalUnderlay;
use ipnet::IpNet;
use palisade_kernel::rtnl::{Family, Mac};
use std::net::IpAddr;

/// Where pod traffic between nodes travels (`--overlay`, ConfigMap key `overlay`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum OverlayMode {
    /// Routes to each node's pod CIDRs via its InternalIP: the nodes share one layer-2
    /// network (kind, one switch) or a network that routes pod CIDRs.
    #[default]
    Never,
    /// VXLAN between all nodes.
    Always,
    /// VXLAN only to nodes outside this node's subnet; direct routes inside it.
    CrossSubnet,
}

impl std::fmt::Display for OverlayMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            OverlayMode::Never => "never",
            OverlayMode::Always => "always",
            OverlayMode::CrossSubnet => "cross-subnet",
        })
    }
}

/// The UDP port and VNI of the overlay (`--vxlan-port`, `--vxlan-vni`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VxlanSettings {
    pub port: u16,
    pub vni: u32,
}

impl Default for VxlanSettings {
    fn default() -> VxlanSettings {
        VxlanSettings {
            port: DEFAULT_VXLAN_PORT,
            vni: DEFAULT_VXLAN_VNI,
        }
    }
}

/// IANA's VXLAN port (the kernel's own default, 8472, predates it).
pub const DEFAULT_VXLAN_PORT: u16 = 4789;
pub const DEFAULT_VXLAN_VNI: u32 = 1;

/// The name of the VXLAN link over `underlay`. Not starting with the pod veth prefix
/// (`pal`): the agent's table treats every `pal*` interface as a pod's.
pub fn vtep_name(underlay: Family) -> &'static str {
    match underlay {
        Family::V4 => "vxlan4.palisade",
        Family::V6 => "vxlan6.palisade",
    }
}

/// What VXLAN adds to an inner IP packet over `underlay`: outer IP header, UDP (8), VXLAN
/// (8) and the inner Ethernet header (14).
pub fn overhead(underlay: Family) -> u32 {
    match underlay {
        Family::V4 => 20 + 8 + 8 + 14,
        Family::V6 => 40 + 8 + 8 + 14,
    }
}

/// The MAC address of the VXLAN link whose underlay address is `local` (locally
/// administered, unicast). IPv4: `02:50:` and the four bytes of the address. IPv6: `06:`
/// and 40 bits of a stable hash of the address.
pub fn vtep_mac(local: IpAddr) -> Mac {
    match local {
        IpAddr::V4(a) => {
            let o = a.octets();
            Mac([0x02, 0x50, o[0], o[1], o[2], o[3]])
        }
        IpAddr::V6(a) => {
            let h = palisade_common::stable_hash(&[&a.octets()]).to_be_bytes();
            Mac([0x06, h[0], h[1], h[2], h[3], h[4]])
        }
    }
}

/// The inner address of a node's VXLAN links in the family of `pod_cidr`: its network
/// address.
pub fn vtep_address(pod_cidr: IpNet) -> IpAddr {
    pod_cidr.network()
}

/// The other IP family.
pub fn other(f: Family) -> Family {
    match f {
        Family::V4 => Family::V6,
        Family::V6 => Family::V4,
    }
}

pub fn family_of_net(net: &IpNet) -> Family {
    Family::of(net.addr())
}

/// The MTU pods of this node get: with an overlay, the smallest MTU of the VXLAN links this
/// node has (any of them may carry a pod's traffic); without, the MTU of the links that
/// carry the node's InternalIPs. `None` when no InternalIP of this node is an address of
/// one of its links (nothing to measure).
pub fn pod_mtu(mode: OverlayMode, local: &LocalUnderlay) -> Option<u32> {
    local
        .families()
        .map(|(f, u)| match mode {
            OverlayMode::Never => u.mtu,
            OverlayMode::Always | OverlayMode::CrossSubnet => u.mtu.saturating_sub(overhead(f)),
        })
        .min()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vtep_names_fit_the_kernel_and_are_no_pod_veths() {
        for f in [Family::V4, Family::V6] {
            let n = vtep_name(f);
            assert!(n.len() <= 15, "{n}");
            assert!(!n.starts_with(palisade_common::HOST_VETH_PREFIX), "{n}");
        }
    }

    #[test]
    fn macs_are_local_unicast_and_follow_the_address() {
        let m = vtep_mac("192.0.2.1".parse().unwrap());
        assert_eq!(m.to_string(), "02:50:c0:00:02:01");
        let a = vtep_mac("2001:db8::1".parse().unwrap());
        let b = vtep_mac("2001:db8:2::1".parse().unwrap());
        assert_ne!(a, b);
        assert_eq!(a, vtep_mac("2001:db8::1".parse().unwrap()), "stable");
        for m in [m, a, b] {
            assert_eq!(m.0[0] & 0x03, 0x02, "{m}: locally administered unicast");
        }
        // Pinned: every agent of a cluster, whatever its release, derives the same MAC.
        assert_eq!(a.to_string(), "06:f9:71:61:b7:a3");
    }

    #[test]
    fn overhead_is_fifty_over_ipv4_and_seventy_over_ipv6() {
        assert_eq!(overhead(Family::V4), 50);
        assert_eq!(overhead(Family::V6), 70);
        assert_eq!(
            vtep_address("10.244.3.0/24".parse().unwrap()).to_string(),
            "10.244.3.0"
        );
        assert_eq!(
            vtep_address("fd00:10:244:3::/64".parse().unwrap()).to_string(),
            "fd00:10:244:3::"
        );
    }
}
