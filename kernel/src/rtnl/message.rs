//! The rtnetlink messages this crate sends and reads, as `netlink-packet-route`'s message
//! types: links, addresses, routes, neighbours.
//!
//! Why not the crate's `RouteNetlinkMessage`: its parser and emitter cover every rtnetlink
//! family (traffic control, rules, statistics, address labels, ...), and all of that code
//! ends up in any binary that reads one reply. In the CNI plugin, whose start-up is part of
//! every ADD and DEL, that was a quarter of its size. This enum dispatches on the message
//! type to the crate's own parser and emitter of the four families used here; it decodes
//! nothing itself.

use netlink_packet_core::{
    DecodeError, Emitable, NetlinkDeserializable, NetlinkHeader, NetlinkPayload,
    NetlinkSerializable, Parseable,
};
use netlink_packet_route::address::AddressMessage;
use netlink_packet_route::link::LinkMessage;
use netlink_packet_route::neighbour::NeighbourMessage;
use netlink_packet_route::route::RouteMessage;

// linux/rtnetlink.h
const RTM_NEWLINK: u16 = 16;
const RTM_DELLINK: u16 = 17;
const RTM_GETLINK: u16 = 18;
const RTM_NEWADDR: u16 = 20;
const RTM_GETADDR: u16 = 22;
const RTM_NEWROUTE: u16 = 24;
const RTM_DELROUTE: u16 = 25;
const RTM_GETROUTE: u16 = 26;
const RTM_NEWNEIGH: u16 = 28;
const RTM_GETNEIGH: u16 = 30;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RtnlMessage {
    NewLink(LinkMessage),
    DelLink(LinkMessage),
    GetLink(LinkMessage),
    NewAddress(AddressMessage),
    GetAddress(AddressMessage),
    NewRoute(RouteMessage),
    DelRoute(RouteMessage),
    GetRoute(RouteMessage),
    NewNeighbour(NeighbourMessage),
    GetNeighbour(NeighbourMessage),
}

use RtnlMessage::*;

impl RtnlMessage {
    fn body(&self) -> &dyn Emitable {
        match self {
            NewLink(m) | DelLink(m) | GetLink(m) => m,
            NewAddress(m) | GetAddress(m) => m,
            NewRoute(m) | DelRoute(m) | GetRoute(m) => m,
            NewNeighbour(m) | GetNeighbour(m) => m,
        }
    }
}

impl NetlinkSerializable for RtnlMessage {
    fn message_type(&self) -> u16 {
        match self {
            NewLink(_) => RTM_NEWLINK,
            DelLink(_) => RTM_DELLINK,
            GetLink(_) => RTM_GETLINK,
            NewAddress(_) => RTM_NEWADDR,
            GetAddress(_) => RTM_GETADDR,
            NewRoute(_) => RTM_NEWROUTE,
            DelRoute(_) => RTM_DELROUTE,
            GetRoute(_) => RTM_GETROUTE,
            NewNeighbour(_) => RTM_NEWNEIGH,
            GetNeighbour(_) => RTM_GETNEIGH,
        }
    }

    fn buffer_len(&self) -> usize {
        self.body().buffer_len()
    }

    fn serialize(&self, buffer: &mut [u8]) {
        self.body().emit(buffer)
    }
}

impl NetlinkDeserializable for RtnlMessage {
    type Error = DecodeError;

    /// The kernel answers requests and dumps with `RTM_NEW*` messages only.
    fn deserialize(header: &NetlinkHeader, payload: &[u8]) -> Result<Self, DecodeError> {
        Ok(match header.message_type {
            RTM_NEWLINK => NewLink(LinkMessage::parse(payload)?),
            RTM_NEWADDR => NewAddress(AddressMessage::parse(payload)?),
            RTM_NEWROUTE => NewRoute(RouteMessage::parse(payload)?),
            RTM_NEWNEIGH => NewNeighbour(NeighbourMessage::parse(payload)?),
            other => return Err(format!("unexpected rtnetlink message type {other}").into()),
        })
    }
}

impl From<RtnlMessage> for NetlinkPayload<RtnlMessage> {
    fn from(m: RtnlMessage) -> Self {
        NetlinkPayload::InnerMessage(m)
    }
}
