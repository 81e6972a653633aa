//! Routes of the main table: add, replace, delete, and dumps filtered by routing protocol
//! (how a program recognises the routes it owns: `proto 180` in `ip route`).

use super::message::RtnlMessage;
use super::{address_family, Family, Rtnl};
use crate::netlink::{Context, Result};
use ipnet::IpNet;
use netlink_packet_core::{NLM_F_CREATE, NLM_F_EXCL, NLM_F_REPLACE};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteFlags, RouteHeader, RouteMessage, RouteProtocol, RouteScope,
    RouteType,
};
use netlink_packet_route::AddressFamily;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// `RTPROT_BOOT`: what `ip route add` marks a route with when no protocol is given.
pub const PROTOCOL_BOOT: u8 = 3;

/// How far a destination is (`rtm_scope`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Scope {
    /// Through a gateway or anywhere (`scope global`).
    Universe,
    /// Directly on the link (`scope link`).
    Link,
    /// Any other scope, as the kernel numbers it.
    Other(u8),
}

impl From<Scope> for RouteScope {
    fn from(s: Scope) -> RouteScope {
        match s {
            Scope::Universe => RouteScope::Universe,
            Scope::Link => RouteScope::Link,
            Scope::Other(n) => RouteScope::from(n),
        }
    }
}

impl From<RouteScope> for Scope {
    fn from(s: RouteScope) -> Scope {
        match s {
            RouteScope::Universe => Scope::Universe,
            RouteScope::Link => Scope::Link,
            other => Scope::Other(u8::from(other)),
        }
    }
}

/// A unicast route in the main table.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Route {
    pub dst: IpNet,
    pub gateway: Option<IpAddr>,
    /// Output interface index; `None` lets the kernel find it from the gateway.
    pub oif: Option<u32>,
    pub scope: Scope,
    /// `rtm_protocol`: who owns the route.
    pub protocol: u8,
    /// `onlink` (`RTNH_F_ONLINK`): the gateway is taken to be on `oif`'s link even though no
    /// address or route of the node says so (an overlay peer's inner address).
    pub onlink: bool,
}

impl Route {
    /// `dst via gateway`, found through the gateway (scope global).
    pub fn via(dst: IpNet, gateway: IpAddr, protocol: u8) -> Route {
        Route {
            dst: dst.trunc(),
            gateway: Some(gateway),
            oif: None,
            scope: Scope::Universe,
            protocol,
            onlink: false,
        }
    }

    /// `dst via gateway dev oif onlink`: through a gateway the kernel cannot find by itself,
    /// because nothing on the link says it is there (a VXLAN peer's inner address, resolved
    /// by a static neighbour entry).
    pub fn onlink_via(dst: IpNet, gateway: IpAddr, oif: u32, protocol: u8) -> Route {
        Route {
            oif: Some(oif),
            onlink: true,
            ..Route::via(dst, gateway, protocol)
        }
    }
}

impl fmt::Display for Route {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.dst)?;
        if let Some(gw) = self.gateway {
            write!(f, " via {gw}")?;
        }
        if let Some(oif) = self.oif {
            write!(f, " dev #{oif}")?;
        }
        if self.onlink {
            write!(f, " onlink")?;
        }
        write!(f, " proto {}", self.protocol)
    }
}

/// What [`Rtnl::add_route`] does when a route to the same destination exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteMode {
    /// `ip route replace`: ours wins.
    Replace,
    /// Keep the existing route (EEXIST is success): `ip route add` that tolerates it.
    KeepExisting,
    /// `ip route add`: an existing route to the destination is an error (EEXIST), and is
    /// left as it is. For adding next to routes of other owners.
    Exclusive,
}

/// The header and attributes that say which route `route` is (its key and its target).
fn message(route: &Route) -> RouteMessage {
    let mut m = RouteMessage::default();
    m.header.address_family = address_family(route.dst.addr());
    m.header.destination_prefix_length = route.dst.prefix_len();
    m.header.table = RouteHeader::RT_TABLE_MAIN;
    m.header.protocol = RouteProtocol::from(route.protocol);
    m.header.scope = route.scope.into();
    m.header.kind = RouteType::Unicast;
    if route.onlink {
        m.header.flags = RouteFlags::Onlink;
    }
    if route.dst.prefix_len() > 0 {
        m.attributes
            .push(RouteAttribute::Destination(route.dst.network().into()));
    }
    if let Some(gw) = route.gateway {
        m.attributes.push(RouteAttribute::Gateway(gw.into()));
    }
    if let Some(oif) = route.oif {
        m.attributes.push(RouteAttribute::Oif(oif));
    }
    m
}

fn ip_of(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        RouteAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        _ => None,
    }
}

/// The main-table unicast route a dump reply describes; `None` for anything else.
pub(super) fn parse(m: &RouteMessage) -> Option<Route> {
    let mut table = u32::from(m.header.table);
    let mut dst = None;
    let mut gateway = None;
    let mut oif = None;
    for a in &m.attributes {
        match a {
            RouteAttribute::Destination(d) => dst = ip_of(d),
            RouteAttribute::Gateway(g) => gateway = ip_of(g),
            RouteAttribute::Oif(i) => oif = Some(*i),
            RouteAttribute::Table(t) => table = *t,
            _ => {}
        }
    }
    if table != u32::from(RouteHeader::RT_TABLE_MAIN) || m.header.kind != RouteType::Unicast {
        return None;
    }
    let unspecified = match m.header.address_family {
        AddressFamily::Inet => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        AddressFamily::Inet6 => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        _ => return None,
    };
    let dst = IpNet::new(
        dst.unwrap_or(unspecified),
        m.header.destination_prefix_length,
    )
    .ok()?;
    Some(Route {
        dst,
        gateway,
        oif,
        scope: m.header.scope.into(),
        protocol: m.header.protocol.into(),
        onlink: m.header.flags.contains(RouteFlags::Onlink),
    })
}

impl Rtnl {
    /// Add `route` to the main table (see [`RouteMode`] for an existing one).
    pub fn add_route(&mut self, route: &Route, mode: RouteMode) -> Result<()> {
        let flags = match mode {
            RouteMode::Replace => NLM_F_CREATE | NLM_F_REPLACE,
            RouteMode::KeepExisting | RouteMode::Exclusive => NLM_F_CREATE | NLM_F_EXCL,
        };
        let verb = match mode {
            RouteMode::Replace => "replace",
            RouteMode::KeepExisting | RouteMode::Exclusive => "add",
        };
        match self
            .sock
            .execute(RtnlMessage::NewRoute(message(route)), flags)
        {
            Err(e) if mode == RouteMode::KeepExisting && e.errno() == Some(libc::EEXIST) => Ok(()),
            other => other.context(|| format!("{verb} route {route}")),
        }
    }

    /// Delete the route to `route.dst` with `route.protocol` (and, when set, its gateway
    /// and interface): the kernel matches only on what the request names. `Ok(false)` when
    /// there is no such route.
    pub fn delete_route(&mut self, route: &Route) -> Result<bool> {
        let mut m = message(route);
        // Any scope matches on delete (RT_SCOPE_NOWHERE), as with `ip route del`.
        m.header.scope = RouteScope::NoWhere;
        match self.sock.execute(RtnlMessage::DelRoute(m), 0) {
            Ok(()) => Ok(true),
            Err(e) if e.errno() == Some(libc::ESRCH) => Ok(false),
            Err(e) => Err(e).context(|| format!("delete route {route}")),
        }
    }

    /// The main table's unicast routes of `family` (both when `None`) whose protocol is
    /// `protocol` (any when `None`).
    pub fn routes(&mut self, family: Option<Family>, protocol: Option<u8>) -> Result<Vec<Route>> {
        let mut m = RouteMessage::default();
        m.header.address_family = family.map_or(AddressFamily::Unspec, Family::address_family);
        m.header.table = RouteHeader::RT_TABLE_MAIN;
        if let Some(p) = protocol {
            m.header.protocol = RouteProtocol::from(p);
        }
        let replies = self
            .sock
            .dump(RtnlMessage::GetRoute(m))
            .context(|| "list routes".to_string())?;
        Ok(replies
            .iter()
            .filter_map(|r| match r {
                RtnlMessage::NewRoute(m) => parse(m),
                _ => None,
            })
            // The kernel filters by protocol under strict checking; older ones send all.
            .filter(|r| protocol.is_none_or(|p| r.protocol == p))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use netlink_packet_core::{Emitable, Parseable};

    #[test]
    fn a_route_survives_its_own_encoding() {
        let r = Route {
            dst: "10.244.2.0/24".parse().unwrap(),
            gateway: Some("192.0.2.2".parse().unwrap()),
            oif: Some(7),
            scope: Scope::Universe,
            protocol: 180,
            onlink: false,
        };
        let m = message(&r);
        let mut buf = vec![0; m.buffer_len()];
        m.emit(&mut buf);
        let back = RouteMessage::parse(&buf[..]).unwrap();
        assert_eq!(parse(&back), Some(r));
        let default = Route {
            dst: "::/0".parse().unwrap(),
            gateway: Some("fe80::1".parse().unwrap()),
            oif: Some(3),
            scope: Scope::Universe,
            protocol: PROTOCOL_BOOT,
            onlink: false,
        };
        let m = message(&default);
        assert!(!m
            .attributes
            .iter()
            .any(|a| matches!(a, RouteAttribute::Destination(_))));
        let mut buf = vec![0; m.buffer_len()];
        m.emit(&mut buf);
        assert_eq!(
            parse(&RouteMessage::parse(&buf[..]).unwrap()),
            Some(default)
        );
        let overlay = Route::onlink_via(
            "fd00:10:244:2::/64".parse().unwrap(),
            "fd00:10:244:2::".parse().unwrap(),
            9,
            180,
        );
        let m = message(&overlay);
        assert!(m.header.flags.contains(RouteFlags::Onlink));
        let mut buf = vec![0; m.buffer_len()];
        m.emit(&mut buf);
        assert_eq!(
            parse(&RouteMessage::parse(&buf[..]).unwrap()),
            Some(overlay.clone())
        );
        assert_eq!(
            overlay.to_string(),
            "fd00:10:244:2::/64 via fd00:10:244:2:: dev #9 onlink proto 180"
        );
    }
}
