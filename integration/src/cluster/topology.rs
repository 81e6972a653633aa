//! Where the nodes of a netns cluster sit: on one segment (the default, like kind or one
//! switch), or on two subnets joined by a router that forwards between them and knows
//! nothing of pod CIDRs (like nodes in two cloud subnets): there, pods on nodes of different
//! subnets reach each other only over the overlay.
//!
//! ```text
//!   single:       P-seg: br0 192.0.2.254/24 2001:db8::fe/64 ── every node, the external host
//!   two-subnets:  P-seg (the router, forwarding):
//!                   br0 192.0.2.254/24    2001:db8::fe/64    ── odd nodes, the external host
//!                   br1 198.51.100.254/24 2001:db8:2::fe/64  ── even nodes
//! ```
//!
//! The API stand-in listens on `192.0.2.254` either way; nodes and the external host route
//! to the other subnet through the router.

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};

/// The nodes' network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Topology {
    /// One segment (a bridge) for every node.
    #[default]
    Single,
    /// Two subnets joined by a router without routes to pod CIDRs; node i sits in the first
    /// subnet when i is odd, in the second when it is even.
    TwoSubnets,
}

impl fmt::Display for Topology {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Topology::Single => "single",
            Topology::TwoSubnets => "two-subnets",
        })
    }
}

impl std::str::FromStr for Topology {
    type Err = String;
    fn from_str(s: &str) -> Result<Topology, String> {
        match s {
            "single" => Ok(Topology::Single),
            "two-subnets" => Ok(Topology::TwoSubnets),
            other => Err(format!(
                "unknown topology {other:?} (single or two-subnets)"
            )),
        }
    }
}

/// One subnet of the nodes' network: a bridge in the segment namespace, whose addresses are
/// the router's (and, on the first, the API stand-in's).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subnet {
    pub bridge: &'static str,
    /// The first three bytes of the /24.
    pub v4: [u8; 3],
    /// The first three groups of the /64.
    pub v6: [u16; 3],
}

/// The first subnet: where every node of the single topology, and the external host, sit.
pub const SUBNET_A: Subnet = Subnet {
    bridge: "br0",
    v4: [192, 0, 2],
    v6: [0x2001, 0xdb8, 0],
};

/// The second subnet of `two-subnets` (documentation ranges, like the first).
pub const SUBNET_B: Subnet = Subnet {
    bridge: "br1",
    v4: [198, 51, 100],
    v6: [0x2001, 0xdb8, 2],
};

/// The router's (the segment namespace's) host number in each subnet.
const ROUTER_HOST: u8 = 254;

impl Subnet {
    /// Host `n` of the subnet in both families (`192.0.2.n`, `2001:db8::n`).
    pub fn host(&self, n: u8) -> (Ipv4Addr, Ipv6Addr) {
        let [a, b, c] = self.v4;
        let [x, y, z] = self.v6;
        (
            Ipv4Addr::new(a, b, c, n),
            Ipv6Addr::new(x, y, z, 0, 0, 0, 0, u16::from(n)),
        )
    }

    /// The router's addresses in this subnet.
    pub fn router(&self) -> (Ipv4Addr, Ipv6Addr) {
        self.host(ROUTER_HOST)
    }

    /// `192.0.2.0/24` and `2001:db8::/64`.
    pub fn cidrs(&self) -> (String, String) {
        let (v4, v6) = self.host(0);
        (format!("{v4}/24"), format!("{v6}/64"))
    }
}

impl Topology {
    pub fn subnets(self) -> &'static [Subnet] {
        match self {
            Topology::Single => &[SUBNET_A],
            Topology::TwoSubnets => &[SUBNET_A, SUBNET_B],
        }
    }

    /// The subnet of node `i` (1-based).
    pub fn subnet_of(self, node: usize) -> Subnet {
        match self {
            Topology::TwoSubnets if node.is_multiple_of(2) => SUBNET_B,
            _ => SUBNET_A,
        }
    }

    /// The other subnets, which a host of `subnet` reaches through the router.
    pub fn beyond(self, subnet: Subnet) -> impl Iterator<Item = Subnet> {
        self.subnets().iter().copied().filter(move |s| *s != subnet)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nodes_alternate_between_the_subnets() {
        let t = Topology::TwoSubnets;
        assert_eq!(t.subnet_of(1), SUBNET_A);
        assert_eq!(t.subnet_of(2), SUBNET_B);
        assert_eq!(t.subnet_of(3), SUBNET_A);
        assert_eq!(Topology::Single.subnet_of(2), SUBNET_A);
        assert_eq!(
            SUBNET_B.host(2),
            (
                "198.51.100.2".parse().unwrap(),
                "2001:db8:2::2".parse().unwrap()
            )
        );
        assert_eq!(
            SUBNET_A.router(),
            (
                "192.0.2.254".parse().unwrap(),
                "2001:db8::fe".parse().unwrap()
            )
        );
        assert_eq!(
            SUBNET_B.cidrs(),
            ("198.51.100.0/24".to_string(), "2001:db8:2::/64".to_string())
        );
        assert_eq!(t.beyond(SUBNET_A).collect::<Vec<_>>(), vec![SUBNET_B]);
        assert_eq!(Topology::Single.beyond(SUBNET_A).count(), 0);
        assert_eq!("two-subnets".parse::<Topology>().unwrap(), t);
    }
}
