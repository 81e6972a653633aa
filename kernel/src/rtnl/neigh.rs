//! Neighbour entries (ARP / NDP cache).

use super::message::RtnlMessage;
use super::{address_family, Family, Link, Mac, Rtnl};
use crate::netlink::{Context, Result};
use netlink_packet_core::{NLM_F_CREATE, NLM_F_REPLACE};
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourMessage, NeighbourState,
};
use std::net::IpAddr;

/// A neighbour entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Neighbour {
    pub ip: IpAddr,
    pub mac: Option<Mac>,
    pub index: u32,
    /// `NUD_PERMANENT`: a static entry, never resolved or expired.
    pub permanent: bool,
    /// The kernel's state name (`permanent`, `reachable`, `stale`, ...), for messages.
    pub state: String,
}

impl Rtnl {
    /// A PERMANENT neighbour entry `ip lladdr mac dev link`: resolves a gateway without
    /// ARP/NDP and without proxy-ARP on the other side.
    pub fn replace_permanent_neighbour(&mut self, link: &Link, ip: IpAddr, mac: Mac) -> Result<()> {
        let mut m = NeighbourMessage::default();
        m.header.family = address_family(ip);
        m.header.ifindex = link.index;
        m.header.state = NeighbourState::Permanent;
        m.attributes.push(NeighbourAttribute::Destination(match ip {
            IpAddr::V4(a) => NeighbourAddress::Inet(a),
            IpAddr::V6(a) => NeighbourAddress::Inet6(a),
        }));
        m.attributes
            .push(NeighbourAttribute::LinkLayerAddress(mac.0.to_vec()));
        self.sock
            .execute(RtnlMessage::NewNeighbour(m), NLM_F_CREATE | NLM_F_REPLACE)
            .context(|| format!("add neighbour {ip} lladdr {mac} dev {}", link.name))
    }

    /// The neighbour entries of one family.
    pub fn neighbours(&mut self, family: Family) -> Result<Vec<Neighbour>> {
        let mut m = NeighbourMessage::default();
        m.header.family = family.address_family();
        let replies = self
            .sock
            .dump(RtnlMessage::GetNeighbour(m))
            .context(|| "list neighbours".to_string())?;
        let mut out = Vec::new();
        for r in &replies {
            let RtnlMessage::NewNeighbour(m) = r else {
                continue;
            };
            let mut ip = None;
            let mut mac = None;
            for a in &m.attributes {
                match a {
                    NeighbourAttribute::Destination(NeighbourAddress::Inet(a)) => {
                        ip = Some(IpAddr::V4(*a))
                    }
                    NeighbourAttribute::Destination(NeighbourAddress::Inet6(a)) => {
                        ip = Some(IpAddr::V6(*a))
                    }
                    NeighbourAttribute::LinkLayerAddress(b) => {
                        mac = b.as_slice().try_into().ok().map(Mac)
                    }
                    _ => {}
                }
            }
            if let Some(ip) = ip {
                out.push(Neighbour {
                    ip,
                    mac,
                    index: m.header.ifindex,
                    permanent: m.header.state == NeighbourState::Permanent,
                    state: m.header.state.to_string(),
                });
            }
        }
        Ok(out)
    }
}
