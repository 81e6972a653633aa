//! This node's underlay, per IP family: which of its links carries its InternalIP, that
//! address's subnet (who is "inside this node's subnet" for `cross-subnet`) and the link's
//! MTU (what the overlay may use of it). Read from the node's own interfaces, not from the
//! API: the Node object has addresses but neither prefix lengths nor MTUs.

use ipnet::IpNet;
use palisade_kernel::rtnl::{Family, Link, Rtnl};
use std::collections::BTreeMap;
use std::net::IpAddr;

/// The node's underlay in one family.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Underlay {
    /// The node's InternalIP with the prefix length it has on its link.
    pub local: IpNet,
    /// The MTU of that link.
    pub mtu: u32,
    pub link: String,
}

/// This node's underlay per family (absent: no InternalIP of that family is an address of
/// one of its links).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LocalUnderlay(BTreeMap<Family, Underlay>);

impl LocalUnderlay {
    pub fn get(&self, f: Family) -> Option<&Underlay> {
        self.0.get(&f)
    }

    pub fn families(&self) -> impl Iterator<Item = (Family, &Underlay)> {
        self.0.iter().map(|(f, u)| (*f, u))
    }

    pub fn insert(&mut self, f: Family, u: Underlay) {
        self.0.insert(f, u);
    }

    /// Find `internal_ips` (the node's, from its Node object) among the addresses of the
    /// links in `links`; the first address of each family that is found counts.
    pub fn read(rtnl: &mut Rtnl, links: &[Link], internal_ips: &[IpAddr]) -> anyhow::Result<Self> {
        let addresses = rtnl.all_addresses()?;
        let mut out = LocalUnderlay::default();
        for ip in internal_ips {
            let f = Family::of(*ip);
            if out.0.contains_key(&f) {
                continue;
            }
            let found = addresses.iter().find(|(_, net)| net.addr() == *ip);
            let link = found.and_then(|(index, _)| links.iter().find(|l| l.index == *index));
            if let (Some((_, net)), Some(link)) = (found, link) {
                out.0.insert(
                    f,
                    Underlay {
                        local: *net,
                        mtu: link.mtu,
                        link: link.name.clone(),
                    },
                );
            }
        }
        Ok(out)
    }
}
