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
        let ip = addr.addr();
        let mut m = AddressMessage::default();
        m.header.family = address_family(ip);
        m.header.prefix_len = addr.prefix_len();
        m.header.index = link.index;
        m.attributes.push(AddressAttribute::Local(ip));
        m.attributes.push(AddressAttribute::Address(ip));
        if nodad {
            m.attributes
                .push(AddressAttribute::Flags(AddressFlags::Nodad));
        }
        self.sock
            .execute(RtnlMessage::NewAddress(m), NLM_F_CREATE | NLM_F_REPLACE)
            .context(|| format!("add address {addr} dev {}", link.name))
    }

    /// Addresses (with prefix length) of the link with index `index`.
    pub fn addresses(&mut self, index: u32) -> Result<Vec<IpNet>> {
        let mut m = AddressMessage::default();
        // Under strict checking the kernel dumps only this link's addresses.
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
            if m.header.index != index {
                continue;
            }
            let mut local = None;
            let mut address = None;
            for a in &m.attributes {
                match a {
                    AddressAttribute::Local(ip) => local = Some(*ip),
                    AddressAttribute::Address(ip) => address = Some(*ip),
                    _ => {}
                }
            }
            if let Some(ip) = local.or(address) {
                if let Ok(net) = IpNet::new(ip, m.header.prefix_len) {
                    out.push(net);
                }
            }
        }
        Ok(out)
    }
}
