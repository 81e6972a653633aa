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
        m.attributes
            .push(NeighbourAttribute::Destination(ip.into()));
        m.attributes
            .push(NeighbourAttribute::LinkLayerAddress(mac.0.to_vec()));
        self.sock
            .execute(RtnlMessage::NewNeighbour(m), NLM_F_CREATE | NLM_F_REPLACE)
            .context(|| format!("add neighbour {ip} lladdr {mac} dev {}", link.name))
    }

    /// Delete the neighbour entry for `ip` on `link`; `Ok(false)` when there was none.
    pub fn delete_neighbour(&mut self, link: &Link, ip: IpAddr) -> Result<bool> {
        let mut m = NeighbourMessage::default();
        m.header.family = address_family(ip);
        m.header.ifindex = link.index;
        m.attributes
            .push(NeighbourAttribute::Destination(ip.into()));
        match self.sock.execute(RtnlMessage::DelNeighbour(m), 0) {
            Ok(()) => Ok(true),
            Err(e) if e.errno() == Some(libc::ENOENT) => Ok(false),
            Err(e) => Err(e).context(|| format!("delete neighbour {ip} dev {}", link.name)),
        }
    }

    /// The neighbour entries of one family.
    pub fn neighbours(&mut self, family: Family) -> Result<Vec<Neighbour>> {
        self.dump_neighbours(family, None)
    }

    /// The neighbour entries of one family on one link.
    pub fn neighbours_on(&mut self, link: &Link, family: Family) -> Result<Vec<Neighbour>> {
        self.dump_neighbours(family, Some(link.index))
    }

    fn dump_neighbours(&mut self, family: Family, index: Option<u32>) -> Result<Vec<Neighbour>> {
        let mut m = NeighbourMessage::default();
        m.header.family = family.address_family();
        // Under strict checking the kernel filters by NDA_IFINDEX (the header's index must
        // stay 0 in a dump request).
        if let Some(index) = index {
            m.attributes.push(NeighbourAttribute::IfIndex(index));
        }
        let replies = self
            .sock
            .dump(RtnlMessage::GetNeighbour(m))
            .context(|| "list neighbours".to_string())?;
        let mut out = Vec::new();
        for r in &replies {
            let RtnlMessage::NewNeighbour(m) = r else {
                continue;
            };
            if index.is_some_and(|i| i != m.header.ifindex) {
                continue;
            }
            out.extend(parse(m));
        }
        Ok(out)
    }
}

/// The IP neighbour entry of an `RTM_NEWNEIGH` (none without an IP destination).
pub(super) fn parse(m: &NeighbourMessage) -> Option<Neighbour> {
    let mut ip = None;
    let mut mac = None;
    for a in &m.attributes {
        match a {
            NeighbourAttribute::Destination(NeighbourAddress::Inet(a)) => ip = Some(IpAddr::V4(*a)),
            NeighbourAttribute::Destination(NeighbourAddress::Inet6(a)) => {
                ip = Some(IpAddr::V6(*a))
            }
            NeighbourAttribute::LinkLayerAddress(b) => mac = b.as_slice().try_into().ok().map(Mac),
            _ => {}
        }
    }
    Some(Neighbour {
        ip: ip?,
        mac,
        index: m.header.ifindex,
        permanent: m.header.state == NeighbourState::Permanent,
        state: m.header.state.to_string(),
    })
}
