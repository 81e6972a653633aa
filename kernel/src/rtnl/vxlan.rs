//! VXLAN links for an overlay with static forwarding: no multicast group, no default remote
//! (so nothing is flooded), no learning. Whoever creates one fills its forwarding database
//! ([`super::fdb`]) and its neighbour table itself.

use super::message::RtnlMessage;
use super::{Link, Mac, Rtnl};
use crate::netlink::{Context, Result};
use netlink_packet_core::{NLM_F_CREATE, NLM_F_EXCL};
use netlink_packet_route::link::{
    AfSpecInet6, AfSpecUnspec, In6AddrGenMode, InfoData, InfoKind, InfoVxlan, LinkAttribute,
    LinkInfo, LinkMessage,
};
use std::net::IpAddr;

/// The settings of a VXLAN link that decide which packets it sends and accepts. A link whose
/// settings differ from the wanted ones is not changed in place but replaced (the kernel
/// refuses to change most of them on a live link).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vxlan {
    /// VXLAN network identifier (24 bits).
    pub vni: u32,
    /// UDP destination port (4789 is IANA's).
    pub port: u16,
    /// The underlay source address; its family is the underlay's.
    pub local: Option<IpAddr>,
    /// Source-MAC learning from received packets.
    pub learning: bool,
}

/// A VXLAN link to create.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VxlanLink {
    pub name: String,
    pub mac: Mac,
    pub mtu: u32,
    pub vxlan: Vxlan,
}

/// The VXLAN settings of a link's `IFLA_INFO_DATA`.
pub(super) fn parse(infos: &[InfoVxlan]) -> Vxlan {
    let mut v = Vxlan {
        vni: 0,
        port: 0,
        local: None,
        learning: false,
    };
    for i in infos {
        match i {
            InfoVxlan::Id(id) => v.vni = *id,
            InfoVxlan::Port(p) => v.port = *p,
            InfoVxlan::Local(a) => v.local = Some(IpAddr::V4(*a)),
            InfoVxlan::Local6(a) => v.local = Some(IpAddr::V6(*a)),
            InfoVxlan::Learning(l) => v.learning = *l,
            _ => {}
        }
    }
    v
}

fn data(v: &Vxlan) -> Vec<InfoVxlan> {
    let mut out = vec![
        InfoVxlan::Id(v.vni),
        InfoVxlan::Port(v.port),
        InfoVxlan::Learning(v.learning),
        // A miss is not reported to user space (nobody listens): the packet is dropped.
        InfoVxlan::L2Miss(false),
        InfoVxlan::L3Miss(false),
    ];
    match v.local {
        Some(IpAddr::V4(a)) => out.push(InfoVxlan::Local(a)),
        Some(IpAddr::V6(a)) => out.push(InfoVxlan::Local6(a)),
        None => {}
    }
    out
}

impl Rtnl {
    /// Create a VXLAN link, up, with its MAC address and MTU (`ip link add NAME address MAC
    /// mtu MTU type vxlan id VNI local LOCAL dstport PORT nolearning addrgenmode none`). It has
    /// no group and no remote: it sends a frame only to a MAC address its forwarding database
    /// names.
    pub fn create_vxlan(&mut self, link: &VxlanLink) -> Result<Link> {
        let what = || {
            format!(
                "create vxlan {} (id {}, dstport {}, local {})",
                link.name,
                link.vxlan.vni,
                link.vxlan.port,
                link.vxlan
                    .local
                    .map_or_else(|| "any".to_string(), |a| a.to_string())
            )
        };
        let mut m = LinkMessage::default();
        m.attributes.push(LinkAttribute::IfName(link.name.clone()));
        m.attributes.push(LinkAttribute::Mtu(link.mtu));
        m.attributes
            .push(LinkAttribute::Address(link.mac.0.to_vec()));
        m.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::Kind(InfoKind::Vxlan),
            LinkInfo::Data(InfoData::Vxlan(data(&link.vxlan))),
        ]));
        self.sock
            .execute(RtnlMessage::NewLink(m), NLM_F_CREATE | NLM_F_EXCL)
            .context(what)?;
        let created = self.link(&link.name)?.ok_or_else(|| {
            crate::netlink::Error::new(what(), std::io::ErrorKind::NotFound.into())
        })?;
        // No IPv6 link-local address: the link's peers are reached through static entries
        // only, so router solicitations, MLD reports and DAD probes would have nowhere to go
        // (nothing is flooded) and only count as drops. The mode is set while the link is
        // still down (the kernel generates the address when it comes up) and cannot travel
        // in the creating request (the link's IPv6 state does not exist yet: EAFNOSUPPORT).
        let mut m = LinkMessage::default();
        m.header.index = created.index;
        m.attributes
            .push(LinkAttribute::AfSpecUnspec(vec![AfSpecUnspec::Inet6(
                vec![AfSpecInet6::AddrGenMode(In6AddrGenMode::None)],
            )]));
        self.sock
            .execute(RtnlMessage::NewLink(m), 0)
            .context(|| format!("set link {} addrgenmode none", link.name))?;
        self.set_up(&created)?;
        Ok(Link {
            up: true,
            ..created
        })
    }

    /// Set a link's MTU.
    pub fn set_mtu(&mut self, link: &Link, mtu: u32) -> Result<()> {
        let mut m = LinkMessage::default();
        m.header.index = link.index;
        m.attributes.push(LinkAttribute::Mtu(mtu));
        self.sock
            .execute(RtnlMessage::NewLink(m), 0)
            .context(|| format!("set link {} mtu {mtu}", link.name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_survive_their_encoding() {
        for local in ["192.0.2.1", "2001:db8::1"] {
            let v = Vxlan {
                vni: 4096,
                port: 4789,
                local: Some(local.parse().unwrap()),
                learning: false,
            };
            assert_eq!(parse(&data(&v)), v);
        }
    }
}
