//! rtnetlink: links (veth, VXLAN), addresses, routes, neighbours and VXLAN forwarding
//! entries, as `netlink-packet-route` messages on one synchronous [`Socket`]. Every call
//! works on the network namespace the socket was opened in ([`Rtnl::open`] here,
//! [`Rtnl::open_in`] inside another one).

mod addr;
mod fdb;
mod link;
mod message;
mod neigh;
mod route;
mod vxlan;

pub use fdb::FdbEntry;
pub use link::{Link, Mac, VethEnd};
pub use neigh::Neighbour;
pub use route::{Route, RouteMode, Scope, PROTOCOL_BOOT};
pub use vxlan::{Vxlan, VxlanLink};

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

/// One rtnetlink message of a dump reply, decoded as the dumps of this module decode it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decoded {
    Link(Link),
    /// An address with its link's index.
    Address(u32, ipnet::IpNet),
    Route(Route),
    /// An IP neighbour entry, or in the bridge family a forwarding entry.
    Neighbour(Option<Neighbour>, Option<FdbEntry>),
    /// A message these dumps skip (a route they cannot represent).
    Skipped,
}

/// Every message of one rtnetlink datagram, decoded as [`Rtnl::links`], `all_addresses`,
/// `routes`, `neighbours` and `fdb` decode their replies. Public for the fuzz targets
/// (`fuzz/`), which feed it arbitrary and captured datagrams.
pub fn decode_datagram(datagram: &[u8]) -> Result<Vec<Decoded>> {
    let msgs: Vec<RtnlMessage> = crate::netlink::decode_datagram(datagram)?;
    Ok(msgs
        .iter()
        .map(|m| match m {
            RtnlMessage::NewLink(m) => Decoded::Link(link::parse(m)),
            RtnlMessage::NewAddress(m) => match addr::parse(m) {
                Some((index, net)) => Decoded::Address(index, net),
                None => Decoded::Skipped,
            },
            RtnlMessage::NewRoute(m) => route::parse(m).map_or(Decoded::Skipped, Decoded::Route),
            RtnlMessage::NewNeighbour(m) => {
                Decoded::Neighbour(neigh::parse(m), fdb::parse(m, m.header.ifindex))
            }
            _ => Decoded::Skipped,
        })
        .collect())
}

/// An IP family, for dumps of one family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The kernel's refusal of a route (captured in a netns): the errno and its extended-ack
    /// text come out as the error.
    const REFUSED_ROUTE: &[u8] = &[
        0x68, 0x00, 0x00, 0x00, 0x02, 0x00, 0x00, 0x02, 0x07, 0x00, 0x00, 0x00, 0x75, 0x04, 0x00,
        0x00, 0x9b, 0xff, 0xff, 0xff, 0x34, 0x00, 0x00, 0x00, 0x18, 0x00, 0x05, 0x06, 0x07, 0x00,
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x02, 0x08, 0x00, 0x00, 0xfe, 0x04, 0x00, 0x01, 0x00,
        0x00, 0x00, 0x00, 0x08, 0x00, 0x01, 0x00, 0x0a, 0x00, 0x00, 0x00, 0x08, 0x00, 0x05, 0x00,
        0xc0, 0x00, 0x02, 0x01, 0x08, 0x00, 0x04, 0x00, 0xe7, 0x03, 0x00, 0x00, 0x20, 0x00, 0x01,
        0x00, 0x4e, 0x65, 0x78, 0x74, 0x68, 0x6f, 0x70, 0x20, 0x68, 0x61, 0x73, 0x20, 0x69, 0x6e,
        0x76, 0x61, 0x6c, 0x69, 0x64, 0x20, 0x67, 0x61, 0x74, 0x65, 0x77, 0x61, 0x79, 0x00,
    ];

    #[test]
    fn an_error_reply_is_the_kernels_errno_and_message() {
        let e = decode_datagram(REFUSED_ROUTE).unwrap_err();
        assert_eq!(e.errno(), Some(libc::ENETUNREACH));
        assert_eq!(e.kernel_msg.as_deref(), Some("Nexthop has invalid gateway"));
    }

    /// Found by the rtnetlink fuzz target (its input as it crashed): that reply mutated to
    /// error code i32::MIN, whose negation overflowed.
    const CRASH_NEGATED_MIN: &[u8] = &[
        0x68, 0x00, 0x00, 0x00, 0x02, 0x00, 0x00, 0x02, 0x07, 0x00, 0x00, 0x00, 0x08, 0x00, 0x00,
        0x00, 0x00, 0x00, 0x00, 0x80, 0x75, 0x04, 0x00, 0x00, 0x9b, 0xff, 0xff, 0xff, 0xff, 0xff,
        0xff, 0xff, 0x34, 0x00, 0x00, 0x00, 0x18, 0x00, 0x05, 0x06, 0x07, 0x00, 0x00, 0x00, 0x00,
        0x00, 0x00, 0x00, 0x02, 0x08, 0x00, 0x00, 0xfe, 0x04, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00,
        0x08, 0x00, 0x01, 0x00, 0x0a, 0x00, 0x00, 0x00, 0x08, 0x00, 0x05, 0x00, 0xc0, 0x00, 0x02,
        0x01, 0x08, 0x00, 0x04, 0x00, 0xe7, 0x03, 0x00, 0x00, 0x20, 0x00, 0x01, 0x00, 0x4e, 0x65,
        0x78, 0x74, 0x68, 0x6f, 0x70, 0x20, 0x68, 0x61, 0x73, 0x20, 0x69, 0x6e, 0x76, 0x61, 0x6c,
        0x69, 0x64, 0x20, 0x67, 0x61, 0x74, 0x65, 0x77, 0x61, 0x79, 0x00,
    ];

    /// A code that is not a negative errno (i32::MIN, positive) is a malformed reply.
    #[test]
    fn an_error_code_that_is_no_negative_errno_is_malformed() {
        let e = decode_datagram(CRASH_NEGATED_MIN).unwrap_err();
        assert_eq!(e.source.kind(), std::io::ErrorKind::InvalidData, "{e}");
        let mut reply = REFUSED_ROUTE.to_vec();
        reply[16..20].copy_from_slice(&i32::MIN.to_ne_bytes());
        let e = decode_datagram(&reply).unwrap_err();
        assert_eq!(e.source.kind(), std::io::ErrorKind::InvalidData, "{e}");
        reply[16..20].copy_from_slice(&22i32.to_ne_bytes());
        let e = decode_datagram(&reply).unwrap_err();
        assert_eq!(e.source.kind(), std::io::ErrorKind::InvalidData, "{e}");
    }
}
