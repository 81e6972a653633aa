//! Interface addresses.

use super::message::RtnlMessage;
use super::{address_family, Link, Rtnl};
use crate::netlink::{Context, Result};
use ipnet::IpNet;
use netlink_packet_core::{NLM_F_CREATE, NLM_F_REPLACE};
use netlink_packet_route::address::{AddressAttribute, AddressFlags, AddressMessage};

impl Rtnl {
    /// Add (or refresh) `addr` on a link. `nodad` skips IPv6 duplicate address detection,
    /// which would otherwise keep the address tentative (unusable) for about a second.
    pub fn add_address(&mut self, link: &Link, addr: IpNet, nodad: bool) -> Result<()> {
        let mut m = address_message(link, addr);
        m.attributes.push(AddressAttribute::Address(addr.addr()));
        if nodad {
            m.attributes
                .push(AddressAttribute::Flags(AddressFlags::Nodad));
        }
        self.sock
            .execute(RtnlMessage::NewAddress(m), NLM_F_CREATE | NLM_F_REPLACE)
            .context(|| format!("add address {addr} dev {}", link.name))
    }

    /// Remove `addr` from a link; `Ok(false)` when the link does not have it.
    pub fn delete_address(&mut self, link: &Link, addr: IpNet) -> Result<bool> {
        let m = address_message(link, addr);
        match self.sock.execute(RtnlMessage::DelAddress(m), 0) {
            Ok(()) => Ok(true),
            Err(e) if e.errno() == Some(libc::EADDRNOTAVAIL) => Ok(false),
            Err(e) => Err(e).context(|| format!("delete address {addr} dev {}", link.name)),
        }
    }

    /// Addresses (with prefix length) of the link with index `index`.
    pub fn addresses(&mut self, index: u32) -> Result<Vec<IpNet>> {
        Ok(self
            .dump_addresses(index)?
            .into_iter()
            .map(|(_, net)| net)
            .collect())
    }

    /// Every address of the namespace with the index of its link.
    pub fn all_addresses(&mut self) -> Result<Vec<(u32, IpNet)>> {
        self.dump_addresses(0)
    }

    /// Addresses of the link `index`, of every link for 0.
    fn dump_addresses(&mut self, index: u32) -> Result<Vec<(u32, IpNet)>> {
        let mut m = AddressMessage::default();
        // Under strict checking the kernel dumps only this link's addresses (0: all).
        m.header.index = index;
        let replies = self
            .sock
            .dump(RtnlMessage::GetAddress(m))
            .context(|| "list addresses".to_string())?;
        let mut out = Vec::new();
        for r in &replies {
            let RtnlMessage::NewAddress(m) = r else {
                continue;
            };
            if index != 0 && m.header.index != index {
                continue;
            }
            out.extend(parse(m));
        }
        Ok(out)
    }
}

/// The address of an `RTM_NEWADDR` (IFA_LOCAL, else IFA_ADDRESS) with its link's index.
pub(super) fn parse(m: &AddressMessage) -> Option<(u32, IpNet)> {
    let mut local = None;
    let mut address = None;
    for a in &m.attributes {
        match a {
            AddressAttribute::Local(ip) => local = Some(*ip),
            AddressAttribute::Address(ip) => address = Some(*ip),
            _ => {}
        }
    }
    let net = IpNet::new(local.or(address)?, m.header.prefix_len).ok()?;
    Some((m.header.index, net))
}

/// The message naming `addr` on `link` (IFA_LOCAL), for adding and deleting it.
fn address_message(link: &Link, addr: IpNet) -> AddressMessage {
    let ip = addr.addr();
    let mut m = AddressMessage::default();
    m.header.family = address_family(ip);
    m.header.prefix_len = addr.prefix_len();
    m.header.index = link.index;
    m.attributes.push(AddressAttribute::Local(ip));
    m
}
