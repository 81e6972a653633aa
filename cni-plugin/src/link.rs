//! Links, addresses, routes and neighbours over rtnetlink: the kernel objects of a routed
//! veth attachment. Every function works on the namespace of the socket it is given.

use crate::error::CniError;
use crate::netlink::{
    self, Attrs, NlError, Request, Socket, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_REPLACE,
};
use ipnet::IpNet;
use std::fmt;
use std::net::IpAddr;
use std::os::fd::RawFd;

const RTM_NEWLINK: u16 = 16;
const RTM_DELLINK: u16 = 17;
const RTM_GETLINK: u16 = 18;
const RTM_NEWADDR: u16 = 20;
const RTM_GETADDR: u16 = 22;
const RTM_NEWROUTE: u16 = 24;
const RTM_GETROUTE: u16 = 26;
const RTM_NEWNEIGH: u16 = 28;
const RTM_GETNEIGH: u16 = 30;

const IFLA_ADDRESS: u16 = 1;
const IFLA_IFNAME: u16 = 3;
const IFLA_MTU: u16 = 4;
const IFLA_LINK: u16 = 5;
const IFLA_IFALIAS: u16 = 20;
const IFLA_LINKINFO: u16 = 18;
const IFLA_NET_NS_FD: u16 = 28;
const IFLA_INFO_KIND: u16 = 1;
const IFLA_INFO_DATA: u16 = 2;
const VETH_INFO_PEER: u16 = 1;

const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;
const IFA_FLAGS: u16 = 8;
const IFA_F_NODAD: u32 = 0x02;

const RTA_DST: u16 = 1;
const RTA_OIF: u16 = 4;
const RTA_GATEWAY: u16 = 5;
const RTA_TABLE: u16 = 15;
const RT_TABLE_MAIN: u8 = 254;
const RTPROT_BOOT: u8 = 3;
const RTN_UNICAST: u8 = 1;
pub const RT_SCOPE_UNIVERSE: u8 = 0;
pub const RT_SCOPE_LINK: u8 = 253;

const NDA_DST: u16 = 1;
const NDA_LLADDR: u16 = 2;
pub const NUD_PERMANENT: u16 = 0x80;

const IFF_UP: u32 = libc::IFF_UP as u32;

/// An Ethernet address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mac(pub [u8; 6]);

impl Mac {
    /// A random locally administered unicast address. Chosen by us rather than the kernel so
    /// ADD knows both ends' addresses without asking again.
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
    /// `ifalias` (DEL marks the pairs it takes down: `commands/del.rs`).
    pub alias: Option<String>,
}

/// One end of a veth pair to create.
pub struct VethEnd<'a> {
    pub name: &'a str,
    pub mac: Mac,
    pub mtu: u32,
}

fn nl_err(context: impl Into<String>) -> impl FnOnce(NlError) -> CniError {
    move |e| CniError::Netlink {
        context: context.into(),
        source: e.source,
        kernel_msg: e.kernel_msg,
    }
}

/// `struct ifinfomsg`: family, pad, type, index, flags, change.
fn ifinfomsg(index: i32, flags: u32, change: u32) -> [u8; 16] {
    let mut b = [0u8; 16];
    b[0] = libc::AF_UNSPEC as u8;
    b[4..8].copy_from_slice(&index.to_ne_bytes());
    b[8..12].copy_from_slice(&flags.to_ne_bytes());
    b[12..16].copy_from_slice(&change.to_ne_bytes());
    b
}

/// Create a veth pair whose `peer` end is born inside the namespace `peer_netns` with its final
/// name (host end up), in ONE request: the peer's `ifinfomsg` + IFLA_IFNAME + IFLA_NET_NS_FD
/// travel inside IFLA_LINKINFO/IFLA_INFO_DATA/VETH_INFO_PEER. Creating in the node namespace
/// and moving it afterwards takes the rtnl lock twice more and costs tens of milliseconds
/// under load (`machine.md`).
pub fn create_veth(
    sock: &mut Socket,
    host: &VethEnd,
    peer: &VethEnd,
    peer_netns: RawFd,
) -> Result<(), CniError> {
    let mut r = Request::new(RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL);
    r.bytes(&ifinfomsg(0, IFF_UP, IFF_UP))
        .attr_str(IFLA_IFNAME, host.name)
        .attr_u32(IFLA_MTU, host.mtu)
        .attr(IFLA_ADDRESS, &host.mac.0)
        .begin_nest(IFLA_LINKINFO)
        .attr_str(IFLA_INFO_KIND, "veth")
        .begin_nest(IFLA_INFO_DATA)
        .begin_nest(VETH_INFO_PEER)
        // Not IFF_UP: the kernel opens the peer before the pair is linked, and veth_open
        // refuses that with ENOTCONN. The caller brings the pod end up afterwards.
        .bytes(&ifinfomsg(0, 0, 0))
        .attr_str(IFLA_IFNAME, peer.name)
        .attr_u32(IFLA_MTU, peer.mtu)
        .attr(IFLA_ADDRESS, &peer.mac.0)
        .attr_u32(IFLA_NET_NS_FD, peer_netns as u32)
        .end_nest()
        .end_nest()
        .end_nest();
    sock.execute(r).map_err(nl_err(format!(
        "create veth {} (peer {} in pod netns)",
        host.name, peer.name
    )))
}

/// Look a link up by name; `None` if there is none.
pub fn get_link(sock: &mut Socket, name: &str) -> Result<Option<Link>, CniError> {
    let mut r = Request::new(RTM_GETLINK, 0);
    r.bytes(&ifinfomsg(0, 0, 0)).attr_str(IFLA_IFNAME, name);
    match sock.get(r) {
        Ok(Some(reply)) => Ok(parse_link(&reply.payload)),
        Ok(None) => Ok(None),
        Err(e) if e.errno() == Some(libc::ENODEV) => Ok(None),
        Err(e) => Err(nl_err(format!("get link {name}"))(e)),
    }
}

fn parse_link(p: &[u8]) -> Option<Link> {
    let index = u32::from_ne_bytes(p.get(4..8)?.try_into().ok()?);
    let flags = u32::from_ne_bytes(p.get(8..12)?.try_into().ok()?);
    let mut link = Link {
        index,
        name: String::new(),
        mac: None,
        mtu: 0,
        up: flags & IFF_UP != 0,
        kind: None,
        peer_index: None,
        alias: None,
    };
    for (ty, data) in Attrs::new(p.get(16..)?) {
        match ty {
            IFLA_IFNAME => link.name = netlink::c_string(data),
            IFLA_ADDRESS if data.len() == 6 => link.mac = Some(Mac(data.try_into().ok()?)),
            IFLA_MTU => link.mtu = netlink::u32_of(data).unwrap_or(0),
            IFLA_LINK => link.peer_index = netlink::u32_of(data),
            IFLA_IFALIAS => link.alias = Some(netlink::c_string(data)),
            IFLA_LINKINFO => {
                for (t, d) in Attrs::new(data) {
                    if t == IFLA_INFO_KIND {
                        link.kind = Some(netlink::c_string(d));
                    }
                }
            }
            _ => {}
        }
    }
    Some(link)
}

/// Delete a link by name. `Ok(false)` when it did not exist (DEL is idempotent). Deleting
/// one end of a veth deletes the pair, and with them every route through them.
pub fn delete_link(sock: &mut Socket, name: &str) -> Result<bool, CniError> {
    let mut r = Request::new(RTM_DELLINK, 0);
    r.bytes(&ifinfomsg(0, 0, 0)).attr_str(IFLA_IFNAME, name);
    execute_delete(sock, r, format!("delete link {name}"))
}

/// Delete the link with this index; `Ok(false)` when there is none. Unlike a name, an index
/// is never handed to another link soon (the kernel allocates them cyclically), so this
/// cannot hit a pair that a later ADD created under the same name.
pub fn delete_link_index(sock: &mut Socket, index: u32) -> Result<bool, CniError> {
    let mut r = Request::new(RTM_DELLINK, 0);
    r.bytes(&ifinfomsg(index as i32, 0, 0));
    execute_delete(sock, r, format!("delete link index {index}"))
}

/// Run an RTM_DELLINK: `Ok(false)` when the link does not exist.
fn execute_delete(sock: &mut Socket, r: Request, what: String) -> Result<bool, CniError> {
    match sock.execute(r) {
        Ok(()) => Ok(true),
        Err(e) if e.errno() == Some(libc::ENODEV) => Ok(false),
        Err(e) => Err(nl_err(what)(e)),
    }
}

/// Take a link down and set its `ifalias`, in one request. For a veth this stops the pair
/// at once: the peer loses its carrier and whatever it sends is dropped. The kernel removes
/// every IPv4 and IPv6 route through a link that goes down, in the same step (and its IPv6
/// addresses, `fe80::1` here).
pub fn set_down(sock: &mut Socket, link: &Link, alias: &str) -> Result<(), CniError> {
    let mut r = Request::new(RTM_NEWLINK, 0);
    r.bytes(&ifinfomsg(link.index as i32, 0, IFF_UP))
        .attr_str(IFLA_IFALIAS, alias);
    sock.execute(r)
        .map_err(nl_err(format!("set link {} down", link.name)))
}

/// Every link of the socket's namespace.
pub fn list_links(sock: &mut Socket) -> Result<Vec<Link>, CniError> {
    let mut r = Request::new(RTM_GETLINK, NLM_F_DUMP);
    r.bytes(&ifinfomsg(0, 0, 0));
    let replies = sock.dump(r).map_err(nl_err("list links"))?;
    Ok(replies
        .iter()
        .filter_map(|r| parse_link(&r.payload))
        .collect())
}

/// Bring a link up (a no-op when it is).
pub fn set_up(sock: &mut Socket, link: &Link) -> Result<(), CniError> {
    let mut r = Request::new(RTM_NEWLINK, 0);
    r.bytes(&ifinfomsg(link.index as i32, IFF_UP, IFF_UP));
    sock.execute(r)
        .map_err(nl_err(format!("set link {} up", link.name)))
}

fn ip_bytes(ip: IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

fn family(ip: IpAddr) -> u8 {
    if ip.is_ipv4() {
        libc::AF_INET as u8
    } else {
        libc::AF_INET6 as u8
    }
}

fn ip_from(data: &[u8]) -> Option<IpAddr> {
    match data.len() {
        4 => Some(IpAddr::from(<[u8; 4]>::try_from(data).ok()?)),
        16 => Some(IpAddr::from(<[u8; 16]>::try_from(data).ok()?)),
        _ => None,
    }
}

/// Add (or refresh) `addr` on a link. `nodad` skips IPv6 duplicate address detection, which
/// would otherwise keep the address tentative (unusable) for about a second.
pub fn add_address(
    sock: &mut Socket,
    link: &Link,
    addr: IpNet,
    nodad: bool,
) -> Result<(), CniError> {
    let ip = addr.addr();
    let mut hdr = [0u8; 8];
    hdr[0] = family(ip);
    hdr[1] = addr.prefix_len();
    hdr[4..8].copy_from_slice(&link.index.to_ne_bytes());
    let mut r = Request::new(RTM_NEWADDR, NLM_F_CREATE | NLM_F_REPLACE);
    r.bytes(&hdr)
        .attr(IFA_LOCAL, &ip_bytes(ip))
        .attr(IFA_ADDRESS, &ip_bytes(ip));
    if nodad {
        r.attr_u32(IFA_FLAGS, IFA_F_NODAD);
    }
    sock.execute(r)
        .map_err(nl_err(format!("add address {addr} dev {}", link.name)))
}

/// Addresses (with prefix length) on the link with index `index`.
pub fn list_addresses(sock: &mut Socket, index: u32) -> Result<Vec<IpNet>, CniError> {
    let mut r = Request::new(RTM_GETADDR, NLM_F_DUMP);
    r.bytes(&[0u8; 8]);
    let replies = sock.dump(r).map_err(nl_err("list addresses"))?;
    let mut out = Vec::new();
    for reply in replies {
        let p = &reply.payload;
        if p.len() < 8 || u32::from_ne_bytes(p[4..8].try_into().unwrap()) != index {
            continue;
        }
        let prefix = p[1];
        let mut local = None;
        let mut address = None;
        for (ty, data) in Attrs::new(&p[8..]) {
            match ty {
                IFA_LOCAL => local = ip_from(data),
                IFA_ADDRESS => address = ip_from(data),
                _ => {}
            }
        }
        if let Some(ip) = local.or(address) {
            if let Ok(net) = IpNet::new(ip, prefix) {
                out.push(net);
            }
        }
    }
    Ok(out)
}

/// A route in the main table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteSpec {
    pub dst: IpNet,
    pub gateway: Option<IpAddr>,
    pub oif: u32,
    pub scope: u8,
}

/// How [`add_route`] treats a route that already exists for the same destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteMode {
    /// `ip route replace`: ours wins (routes to a pod IP: only one attachment owns it).
    Replace,
    /// Keep whatever route already exists for the destination (EEXIST is success). A pod's
    /// default route belongs to its first attachment: a second interface of the same pod
    /// (`net1`) must not steal it, or deleting `net1` would leave the pod without one.
    KeepExisting,
}

/// Add a route to the main table.
pub fn add_route(
    sock: &mut Socket,
    route: &RouteSpec,
    dev_name: &str,
    mode: RouteMode,
) -> Result<(), CniError> {
    let mut hdr = [0u8; 12];
    hdr[0] = family(route.dst.addr());
    hdr[1] = route.dst.prefix_len();
    hdr[4] = RT_TABLE_MAIN;
    hdr[5] = RTPROT_BOOT;
    hdr[6] = route.scope;
    hdr[7] = RTN_UNICAST;
    let flags = match mode {
        RouteMode::Replace => NLM_F_CREATE | NLM_F_REPLACE,
        RouteMode::KeepExisting => NLM_F_CREATE | NLM_F_EXCL,
    };
    let mut r = Request::new(RTM_NEWROUTE, flags);
    r.bytes(&hdr);
    if route.dst.prefix_len() > 0 {
        r.attr(RTA_DST, &ip_bytes(route.dst.network()));
    }
    if let Some(gw) = route.gateway {
        r.attr(RTA_GATEWAY, &ip_bytes(gw));
    }
    r.attr_u32(RTA_OIF, route.oif);
    let what = match route.gateway {
        Some(gw) => format!("add route {} via {gw} dev {dev_name}", route.dst),
        None => format!("add route {} dev {dev_name}", route.dst),
    };
    match sock.execute(r) {
        Err(e) if mode == RouteMode::KeepExisting && e.errno() == Some(libc::EEXIST) => Ok(()),
        other => other.map_err(nl_err(what)),
    }
}

/// Routes of the main table for one family (`v4`), as (dst, gateway, oif).
pub fn list_routes(sock: &mut Socket, v4: bool) -> Result<Vec<RouteSpec>, CniError> {
    let mut hdr = [0u8; 12];
    hdr[0] = if v4 {
        libc::AF_INET as u8
    } else {
        libc::AF_INET6 as u8
    };
    let mut r = Request::new(RTM_GETROUTE, NLM_F_DUMP);
    r.bytes(&hdr);
    let replies = sock.dump(r).map_err(nl_err("list routes"))?;
    let mut out = Vec::new();
    for reply in replies {
        let p = &reply.payload;
        if p.len() < 12 {
            continue;
        }
        let dst_len = p[1];
        let mut table = u32::from(p[4]);
        let scope = p[6];
        let mut dst = None;
        let mut gateway = None;
        let mut oif = 0;
        for (ty, data) in Attrs::new(&p[12..]) {
            match ty {
                RTA_DST => dst = ip_from(data),
                RTA_GATEWAY => gateway = ip_from(data),
                RTA_OIF => oif = netlink::u32_of(data).unwrap_or(0),
                RTA_TABLE => table = netlink::u32_of(data).unwrap_or(table),
                _ => {}
            }
        }
        if table != u32::from(RT_TABLE_MAIN) {
            continue;
        }
        let unspecified: IpAddr = if v4 {
            std::net::Ipv4Addr::UNSPECIFIED.into()
        } else {
            std::net::Ipv6Addr::UNSPECIFIED.into()
        };
        if let Ok(dst) = IpNet::new(dst.unwrap_or(unspecified), dst_len) {
            out.push(RouteSpec {
                dst,
                gateway,
                oif,
                scope,
            });
        }
    }
    Ok(out)
}

/// A neighbour entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Neighbour {
    pub ip: IpAddr,
    pub mac: Option<Mac>,
    pub index: u32,
    pub state: u16,
}

fn ndmsg(fam: u8, index: u32, state: u16) -> [u8; 12] {
    let mut b = [0u8; 12];
    b[0] = fam;
    b[4..8].copy_from_slice(&index.to_ne_bytes());
    b[8..10].copy_from_slice(&state.to_ne_bytes());
    b
}

/// A PERMANENT neighbour entry `ip lladdr mac dev link`: the pod resolves its link-local
/// gateway without ARP/NDP and without proxy-ARP on the node.
pub fn replace_permanent_neighbour(
    sock: &mut Socket,
    link: &Link,
    ip: IpAddr,
    mac: Mac,
) -> Result<(), CniError> {
    let mut r = Request::new(RTM_NEWNEIGH, NLM_F_CREATE | NLM_F_REPLACE);
    r.bytes(&ndmsg(family(ip), link.index, NUD_PERMANENT))
        .attr(NDA_DST, &ip_bytes(ip))
        .attr(NDA_LLADDR, &mac.0);
    sock.execute(r).map_err(nl_err(format!(
        "add neighbour {ip} lladdr {mac} dev {}",
        link.name
    )))
}

pub fn list_neighbours(sock: &mut Socket, v4: bool) -> Result<Vec<Neighbour>, CniError> {
    let fam = if v4 {
        libc::AF_INET as u8
    } else {
        libc::AF_INET6 as u8
    };
    let mut r = Request::new(RTM_GETNEIGH, NLM_F_DUMP);
    r.bytes(&ndmsg(fam, 0, 0));
    let replies = sock.dump(r).map_err(nl_err("list neighbours"))?;
    let mut out = Vec::new();
    for reply in replies {
        let p = &reply.payload;
        if p.len() < 12 {
            continue;
        }
        let index = u32::from_ne_bytes(p[4..8].try_into().unwrap());
        let state = u16::from_ne_bytes(p[8..10].try_into().unwrap());
        let mut ip = None;
        let mut mac = None;
        for (ty, data) in Attrs::new(&p[12..]) {
            match ty {
                NDA_DST => ip = ip_from(data),
                NDA_LLADDR if data.len() == 6 => mac = data.try_into().ok().map(Mac),
                _ => {}
            }
        }
        if let Some(ip) = ip {
            out.push(Neighbour {
                ip,
                mac,
                index,
                state,
            });
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn link_replies_are_parsed() {
        let mut r = Request::new(RTM_NEWLINK, 0);
        r.bytes(&ifinfomsg(7, IFF_UP, 0))
            .attr_str(IFLA_IFNAME, "pal0")
            .attr_u32(IFLA_MTU, 1400)
            .attr(IFLA_ADDRESS, &[2, 0, 0, 0, 0, 1])
            .attr_u32(IFLA_LINK, 3)
            .begin_nest(IFLA_LINKINFO)
            .attr_str(IFLA_INFO_KIND, "veth")
            .end_nest();
        let buf = r.finish(1).to_vec();
        let l = parse_link(&buf[16..]).unwrap();
        assert_eq!(l.index, 7);
        assert_eq!(l.name, "pal0");
        assert_eq!(l.mtu, 1400);
        assert!(l.up);
        assert_eq!(l.kind.as_deref(), Some("veth"));
        assert_eq!(l.peer_index, Some(3));
        assert_eq!(l.mac, Some(Mac([2, 0, 0, 0, 0, 1])));
    }
}
