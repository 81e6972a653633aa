//! Links: veth pairs born with one end in another namespace, up/down, `ifalias`, lookups and
//! deletion by name or index. VXLAN links are in [`super::vxlan`].

use super::message::RtnlMessage;
use super::Rtnl;
use crate::netlink::{Context, Result};
use crate::netns::Netns;
use netlink_packet_core::{NLM_F_CREATE, NLM_F_EXCL};
use netlink_packet_route::link::{
    InfoData, InfoKind, InfoVeth, LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
};
use std::fmt;
use std::os::fd::AsRawFd;

/// An Ethernet address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Mac(pub [u8; 6]);

impl Mac {
    /// A random locally administered unicast address. Chosen by the caller rather than the
    /// kernel so that whoever creates a pair knows both ends' addresses without asking again.
    pub fn random() -> Mac {
        let mut b = [0u8; 6];
        // SAFETY: b is valid for 6 bytes. getrandom never fails for <= 256 bytes once the pool
        // is initialised; on failure we fall back to a time-seeded value below.
        let n = unsafe { libc::getrandom(b.as_mut_ptr().cast(), b.len(), 0) };
        if n != 6 {
            let t = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or_default()
                ^ u128::from(std::process::id()) << 64;
            b.copy_from_slice(&t.to_le_bytes()[..6]);
        }
        b[0] = (b[0] & 0xfe) | 0x02; // unicast, locally administered
        Mac(b)
    }

    pub fn parse(s: &str) -> Option<Mac> {
        let mut b = [0u8; 6];
        let mut parts = s.split(':');
        for byte in &mut b {
            *byte = u8::from_str_radix(parts.next()?, 16).ok()?;
        }
        parts.next().is_none().then_some(Mac(b))
    }

    fn from_bytes(b: &[u8]) -> Option<Mac> {
        b.try_into().ok().map(Mac)
    }
}

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

/// What we need to know about a link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    pub mac: Option<Mac>,
    pub mtu: u32,
    pub up: bool,
    pub kind: Option<String>,
    /// For a veth: the peer's ifindex (in the peer's namespace).
    pub peer_index: Option<u32>,
    pub alias: Option<String>,
    /// For a VXLAN link: its settings.
    pub vxlan: Option<super::Vxlan>,
}

/// One end of a veth pair to create.
pub struct VethEnd<'a> {
    pub name: &'a str,
    pub mac: Mac,
    pub mtu: u32,
}

pub(super) fn parse(m: &LinkMessage) -> Link {
    let mut link = Link {
        index: m.header.index,
        name: String::new(),
        mac: None,
        mtu: 0,
        up: m.header.flags.contains(LinkFlags::Up),
        kind: None,
        peer_index: None,
        alias: None,
        vxlan: None,
    };
    for a in &m.attributes {
        match a {
            LinkAttribute::IfName(n) => link.name = n.clone(),
            LinkAttribute::Address(b) => link.mac = Mac::from_bytes(b),
            LinkAttribute::Mtu(mtu) => link.mtu = *mtu,
            LinkAttribute::Link(peer) => link.peer_index = Some(*peer),
            LinkAttribute::IfAlias(alias) => link.alias = Some(alias.clone()),
            LinkAttribute::LinkInfo(infos) => {
                for info in infos {
                    match info {
                        LinkInfo::Kind(kind) => link.kind = Some(kind.to_string()),
                        LinkInfo::Data(InfoData::Vxlan(v)) => {
                            link.vxlan = Some(super::vxlan::parse(v))
                        }
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    link
}

/// A request about the link with this index (0: named by an attribute instead).
fn by_index(index: u32) -> LinkMessage {
    let mut m = LinkMessage::default();
    m.header.index = index;
    m
}

fn by_name(name: &str) -> LinkMessage {
    let mut m = LinkMessage::default();
    m.attributes.push(LinkAttribute::IfName(name.to_string()));
    m
}

/// One end's attributes: name, MTU, address.
fn end(m: &mut LinkMessage, e: &VethEnd) {
    m.attributes.push(LinkAttribute::IfName(e.name.to_string()));
    m.attributes.push(LinkAttribute::Mtu(e.mtu));
    m.attributes.push(LinkAttribute::Address(e.mac.0.to_vec()));
}

impl Rtnl {
    /// Create a veth pair whose `peer` end is born inside `peer_netns` with its final name
    /// (host end up), in ONE request: the peer's `ifinfomsg`, name and IFLA_NET_NS_FD travel
    /// inside IFLA_LINKINFO/IFLA_INFO_DATA/VETH_INFO_PEER. Creating the pair here and moving
    /// an end afterwards takes the rtnl lock twice more and costs tens of milliseconds under
    /// load (`machine.md`).
    pub fn create_veth(
        &mut self,
        host: &VethEnd,
        peer: &VethEnd,
        peer_netns: &Netns,
    ) -> Result<()> {
        // Not IFF_UP on the peer: the kernel opens the peer before the pair is linked, and
        // veth_open refuses that with ENOTCONN. The caller brings the pod end up afterwards.
        let mut p = LinkMessage::default();
        end(&mut p, peer);
        p.attributes
            .push(LinkAttribute::NetNsFd(peer_netns.file().as_raw_fd()));
        let mut m = LinkMessage::default();
        m.header.flags = LinkFlags::Up;
        m.header.change_mask = LinkFlags::Up;
        end(&mut m, host);
        m.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::Kind(InfoKind::Veth),
            LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(p))),
        ]));
        self.sock
            .execute(RtnlMessage::NewLink(m), NLM_F_CREATE | NLM_F_EXCL)
            .context(|| {
                format!(
                    "create veth {} (peer {} in {})",
                    host.name,
                    peer.name,
                    peer_netns.path().display()
                )
            })
    }

    /// The link named `name`; `None` if there is none.
    pub fn link(&mut self, name: &str) -> Result<Option<Link>> {
        match self.sock.get(RtnlMessage::GetLink(by_name(name)), 0) {
            Ok(Some(RtnlMessage::NewLink(m))) => Ok(Some(parse(&m))),
            Ok(_) => Ok(None),
            Err(e) if e.errno() == Some(libc::ENODEV) => Ok(None),
            Err(e) => Err(e).context(|| format!("get link {name}")),
        }
    }

    /// Every link of the socket's namespace.
    pub fn links(&mut self) -> Result<Vec<Link>> {
        let replies = self
            .sock
            .dump(RtnlMessage::GetLink(LinkMessage::default()))
            .context(|| "list links".to_string())?;
        Ok(replies
            .iter()
            .filter_map(|r| match r {
                RtnlMessage::NewLink(m) => Some(parse(m)),
                _ => None,
            })
            .collect())
    }

    /// Delete a link by name. `Ok(false)` when it did not exist. Deleting one end of a veth
    /// deletes the pair, and with them every route through them.
    pub fn delete_link(&mut self, name: &str) -> Result<bool> {
        self.delete(by_name(name), || format!("delete link {name}"))
    }

    /// Delete the link with this index; `Ok(false)` when there is none. Unlike a name, an
    /// index is not handed to another link soon (the kernel allocates them cyclically), so
    /// this cannot hit a pair that someone created later under the same name.
    pub fn delete_link_index(&mut self, index: u32) -> Result<bool> {
        self.delete(by_index(index), || format!("delete link index {index}"))
    }

    fn delete(&mut self, m: LinkMessage, what: impl FnOnce() -> String) -> Result<bool> {
        match self.sock.execute(RtnlMessage::DelLink(m), 0) {
            Ok(()) => Ok(true),
            Err(e) if e.errno() == Some(libc::ENODEV) => Ok(false),
            Err(e) => Err(e).context(what),
        }
    }

    /// Bring a link up (a no-op when it is).
    pub fn set_up(&mut self, link: &Link) -> Result<()> {
        let mut m = by_index(link.index);
        m.header.flags = LinkFlags::Up;
        m.header.change_mask = LinkFlags::Up;
        self.sock
            .execute(RtnlMessage::NewLink(m), 0)
            .context(|| format!("set link {} up", link.name))
    }

    /// Take a link down and set its `ifalias`, in one request. For a veth this stops the pair
    /// at once: the peer loses its carrier and whatever it sends is dropped. The kernel
    /// removes every IPv4 and IPv6 route through a link that goes down, in the same step
    /// (and its IPv6 addresses).
    pub fn set_down(&mut self, link: &Link, alias: &str) -> Result<()> {
        let mut m = by_index(link.index);
        m.header.change_mask = LinkFlags::Up;
        m.attributes.push(LinkAttribute::IfAlias(alias.to_string()));
        self.sock
            .execute(RtnlMessage::NewLink(m), 0)
            .context(|| format!("set link {} down", link.name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use netlink_packet_core::{Emitable, Parseable};

    #[test]
    fn random_macs_are_local_unicast() {
        for _ in 0..32 {
            let m = Mac::random();
            assert_eq!(m.0[0] & 0x01, 0);
            assert_eq!(m.0[0] & 0x02, 0x02);
        }
        assert_ne!(Mac::random(), Mac::random());
    }

    #[test]
    fn macs_round_trip_through_text() {
        let m = Mac([0x02, 0xab, 0, 1, 0xff, 0x10]);
        assert_eq!(m.to_string(), "02:ab:00:01:ff:10");
        assert_eq!(Mac::parse(&m.to_string()), Some(m));
        assert_eq!(Mac::parse("02:ab:00:01:ff"), None);
        assert_eq!(Mac::parse("02:ab:00:01:ff:10:00"), None);
    }

    #[test]
    fn link_replies_are_read_into_links() {
        let mut m = by_index(7);
        m.header.flags = LinkFlags::Up;
        end(
            &mut m,
            &VethEnd {
                name: "pal0",
                mac: Mac([2, 0, 0, 0, 0, 1]),
                mtu: 1400,
            },
        );
        m.attributes.push(LinkAttribute::Link(3));
        m.attributes
            .push(LinkAttribute::LinkInfo(vec![LinkInfo::Kind(
                InfoKind::Veth,
            )]));
        let mut buf = vec![0; m.buffer_len()];
        m.emit(&mut buf);
        let back = LinkMessage::parse(&buf[..]).unwrap();
        let l = parse(&back);
        assert_eq!(l.index, 7);
        assert_eq!(l.name, "pal0");
        assert_eq!(l.mtu, 1400);
        assert!(l.up);
        assert_eq!(l.kind.as_deref(), Some("veth"));
        assert_eq!(l.peer_index, Some(3));
        assert_eq!(l.mac, Some(Mac([2, 0, 0, 0, 0, 1])));
    }
}
