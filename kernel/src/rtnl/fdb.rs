//! The forwarding database of a VXLAN link: which remote endpoint (underlay address) a frame
//! for an inner MAC address is sent to (`bridge fdb ... dev vx dst REMOTE self permanent`).
//!
//! These are neighbour messages of the `AF_BRIDGE` family with `NTF_SELF` (the link's own
//! table, not a bridge master's): `NDA_LLADDR` is the inner MAC, `NDA_DST` the remote's IP.
//! The trap in reading them back: `netlink-packet-route` parses `NDA_DST` by the message's
//! family, and `AF_BRIDGE` is neither IPv4 nor IPv6, so the address arrives as raw bytes
//! whose length (4 or 16) says its family.

use super::message::RtnlMessage;
use super::{Link, Mac, Rtnl};
use crate::netlink::{Context, Result};
use netlink_packet_core::{NLM_F_CREATE, NLM_F_REPLACE};
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use netlink_packet_route::AddressFamily;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// A forwarding entry with a remote: frames for `mac` go to the VXLAN endpoint at `dst`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FdbEntry {
    pub mac: Mac,
    pub dst: IpAddr,
}

impl fmt::Display for FdbEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} dst {}", self.mac, self.dst)
    }
}

fn message(link: &Link, entry: &FdbEntry) -> NeighbourMessage {
    let mut m = NeighbourMessage::default();
    m.header.family = AddressFamily::Bridge;
    m.header.ifindex = link.index;
    m.header.state = NeighbourState::Permanent;
    m.header.flags = NeighbourFlags::Own;
    m.attributes
        .push(NeighbourAttribute::LinkLayerAddress(entry.mac.0.to_vec()));
    m.attributes
        .push(NeighbourAttribute::Destination(NeighbourAddress::from(
            entry.dst,
        )));
    m
}

/// The remote address of an `AF_BRIDGE` neighbour message (see the module doc).
fn remote(a: &NeighbourAddress) -> Option<IpAddr> {
    match a {
        NeighbourAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        NeighbourAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        NeighbourAddress::Other(b) => match b.len() {
            4 => Some(IpAddr::V4(Ipv4Addr::from(
                <[u8; 4]>::try_from(&b[..]).ok()?,
            ))),
            16 => Some(IpAddr::V6(Ipv6Addr::from(
                <[u8; 16]>::try_from(&b[..]).ok()?,
            ))),
            _ => None,
        },
        _ => None,
    }
}

/// The permanent entry with a remote that a dump reply describes; `None` for anything else
/// (entries without a remote, learned ones, other links').
pub(super) fn parse(m: &NeighbourMessage, index: u32) -> Option<FdbEntry> {
    if m.header.ifindex != index || m.header.state != NeighbourState::Permanent {
        return None;
    }
    let mut mac = None;
    let mut dst = None;
    for a in &m.attributes {
        match a {
            NeighbourAttribute::LinkLayerAddress(b) => mac = b.as_slice().try_into().ok().map(Mac),
            NeighbourAttribute::Destination(d) => dst = remote(d),
            _ => {}
        }
    }
    Some(FdbEntry {
        mac: mac?,
        dst: dst?,
    })
}

impl Rtnl {
    /// Point frames for `entry.mac` at `entry.dst`, replacing the entry's remote if the MAC
    /// has one already (`bridge fdb replace ... self permanent`).
    pub fn replace_fdb(&mut self, link: &Link, entry: &FdbEntry) -> Result<()> {
        self.sock
            .execute(
                RtnlMessage::NewNeighbour(message(link, entry)),
                NLM_F_CREATE | NLM_F_REPLACE,
            )
            .context(|| format!("replace fdb {entry} dev {}", link.name))
    }

    /// Delete one forwarding entry; `Ok(false)` when there was none.
    pub fn delete_fdb(&mut self, link: &Link, entry: &FdbEntry) -> Result<bool> {
        match self
            .sock
            .execute(RtnlMessage::DelNeighbour(message(link, entry)), 0)
        {
            Ok(()) => Ok(true),
            Err(e) if e.errno() == Some(libc::ENOENT) => Ok(false),
            Err(e) => Err(e).context(|| format!("delete fdb {entry} dev {}", link.name)),
        }
    }

    /// The permanent forwarding entries with a remote of `link`.
    pub fn fdb(&mut self, link: &Link) -> Result<Vec<FdbEntry>> {
        let mut m = NeighbourMessage::default();
        m.header.family = AddressFamily::Bridge;
        // Under strict checking the kernel dumps only the table of this (bridge port or
        // VXLAN) link.
        m.header.ifindex = link.index;
        let replies = self
            .sock
            .dump(RtnlMessage::GetNeighbour(m))
            .context(|| format!("list fdb dev {}", link.name))?;
        Ok(replies
            .iter()
            .filter_map(|r| match r {
                RtnlMessage::NewNeighbour(m) => parse(m, link.index),
                _ => None,
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use netlink_packet_core::{Emitable, Parseable};

    #[test]
    fn entries_survive_their_encoding_in_the_bridge_family() {
        let link = Link {
            index: 5,
            name: "vx".into(),
            mac: None,
            mtu: 1450,
            up: true,
            kind: Some("vxlan".into()),
            peer_index: None,
            alias: None,
            vxlan: None,
        };
        for dst in ["198.51.100.2", "2001:db8:2::2"] {
            let e = FdbEntry {
                mac: Mac([2, 0x50, 1, 2, 3, 4]),
                dst: dst.parse().unwrap(),
            };
            let m = message(&link, &e);
            let mut buf = vec![0; m.buffer_len()];
            m.emit(&mut buf);
            // Parsed as the kernel's reply is: NDA_DST by the AF_BRIDGE family.
            let back = NeighbourMessage::parse(&buf[..]).unwrap();
            assert!(back.attributes.iter().any(|a| matches!(
                a,
                NeighbourAttribute::Destination(NeighbourAddress::Other(_))
            )));
            assert_eq!(parse(&back, 5), Some(e));
            assert_eq!(parse(&back, 6), None, "another link's entry");
        }
    }
}
