//! rtnetlink: links, addresses, routes and neighbours, as `netlink-packet-route` messages on
//! one synchronous [`Socket`]. Every call works on the network namespace the socket was
//! opened in ([`Rtnl::open`] here, [`Rtnl::open_in`] inside another one).

mod addr;
mod link;
mod message;
mod neigh;
mod route;

pub use link::{Link, Mac, VethEnd};
pub use neigh::Neighbour;
pub use route::{Route, RouteMode, Scope, PROTOCOL_BOOT};

use crate::netlink::{Result, Socket};
use crate::netns::Netns;
use message::RtnlMessage;
use std::net::IpAddr;

/// An rtnetlink socket.
pub struct Rtnl {
    sock: Socket<RtnlMessage>,
}

impl Rtnl {
    /// A socket in the calling thread's network namespace.
    pub fn open() -> Result<Rtnl> {
        let sock = Socket::open(netlink_sys::protocols::NETLINK_ROUTE)?;
        // Strict checking makes the kernel apply a dump's filters (a route dump's protocol
        // and table) itself instead of sending everything.
        let _ = sock.raw().set_netlink_get_strict_chk(true);
        Ok(Rtnl { sock })
    }

    /// A socket in `netns`, opened on a thread that entered it; usable from any thread.
    pub fn open_in(netns: &Netns) -> Result<Rtnl> {
        netns
            .run(Rtnl::open)
            .map_err(|e| crate::netlink::Error::new("open rtnetlink socket", e.into()))?
    }
}

/// An IP family, for dumps of one family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub fn of(ip: IpAddr) -> Family {
        if ip.is_ipv4() {
            Family::V4
        } else {
            Family::V6
        }
    }

    fn address_family(self) -> netlink_packet_route::AddressFamily {
        match self {
            Family::V4 => netlink_packet_route::AddressFamily::Inet,
            Family::V6 => netlink_packet_route::AddressFamily::Inet6,
        }
    }
}

fn address_family(ip: IpAddr) -> netlink_packet_route::AddressFamily {
    Family::of(ip).address_family()
}
