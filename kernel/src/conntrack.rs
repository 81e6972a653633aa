//! Conntrack entries over ctnetlink (`netlink-packet-netfilter`'s conntrack messages): the
//! one job hostPort needs, forgetting the UDP flows to a newly published port.

use crate::netlink::{Context, Result};
use crate::nftables::Nfnl;
use netlink_packet_core::NLM_F_ACK;
use netlink_packet_netfilter::conntrack::{
    ConntrackAttribute, ConntrackMessage, IPTuple, ProtoTuple, Protocol, Tuple,
};
use netlink_packet_netfilter::{
    NetfilterHeader, NetfilterMessage, NetfilterMessageInner, NetfilterProtoFamily,
};
use std::net::IpAddr;

/// UDP traffic to a port: of one family, to one address or any.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UdpFlows {
    pub ipv6: bool,
    pub port: u16,
    /// `None`: to any address of the family.
    pub dst: Option<IpAddr>,
}

impl UdpFlows {
    fn matches(&self, tuple: &[Tuple]) -> bool {
        let mut dst = None;
        let (mut udp, mut port) = (false, None);
        for t in tuple {
            match t {
                Tuple::Ip(ip) => {
                    for a in ip {
                        if let IPTuple::DestinationAddress(d) = a {
                            dst = Some(*d);
                        }
                    }
                }
                Tuple::Proto(p) => {
                    for a in p {
                        match a {
                            ProtoTuple::Protocol(Protocol::Udp) => udp = true,
                            ProtoTuple::DestinationPort(p) => port = Some(*p),
                            _ => {}
                        }
                    }
                }
                _ => {}
            }
        }
        let Some(dst) = dst else { return false };
        udp && port == Some(self.port)
            && dst.is_ipv6() == self.ipv6
            && self.dst.is_none_or(|d| d == dst)
    }
}

fn message(family: NetfilterProtoFamily, m: ConntrackMessage) -> NetfilterMessage {
    NetfilterMessage::new(NetfilterHeader::new(family, 0, 0), m)
}

impl Nfnl {
    /// Delete the conntrack entries of UDP flows matching any of `flows`, found with one dump
    /// of the whole table (AF_UNSPEC: every family in one walk), then deleted one by one by
    /// their original tuple. Returns how many were deleted (one gone meanwhile is fine).
    pub fn forget_udp_flows(&mut self, flows: &[UdpFlows]) -> Result<usize> {
        let entries = self
            .sock
            .dump(message(
                NetfilterProtoFamily::Unspec,
                ConntrackMessage::Get(Vec::new()),
            ))
            .context(|| "list conntrack entries".to_string())?;
        let mut stale = Vec::new();
        for e in entries {
            let NetfilterMessageInner::Conntrack(ConntrackMessage::New(attrs)) = e.inner else {
                continue;
            };
            for a in attrs {
                if let ConntrackAttribute::CtaTupleOrig(tuple) = a {
                    if flows.iter().any(|f| f.matches(&tuple)) {
                        stale.push((e.header.family, tuple));
                    }
                }
            }
        }
        let mut deleted = 0;
        for (family, tuple) in stale {
            let delete = message(
                family,
                ConntrackMessage::Delete(vec![ConntrackAttribute::CtaTupleOrig(tuple)]),
            );
            match self.sock.execute(delete, NLM_F_ACK) {
                Ok(()) => deleted += 1,
                Err(e) if e.errno() == Some(libc::ENOENT) => {}
                Err(e) => return Err(e).context(|| "delete conntrack entry".to_string()),
            }
        }
        Ok(deleted)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tuple(dst: &str, proto: Protocol, dport: u16) -> Vec<Tuple> {
        vec![
            Tuple::Ip(vec![
                IPTuple::SourceAddress("192.0.2.9".parse().unwrap()),
                IPTuple::DestinationAddress(dst.parse().unwrap()),
            ]),
            Tuple::Proto(vec![
                ProtoTuple::Protocol(proto),
                ProtoTuple::SourcePort(40000),
                ProtoTuple::DestinationPort(dport),
            ]),
        ]
    }

    #[test]
    fn udp_flows_match_by_port_family_and_address() {
        let any = UdpFlows {
            ipv6: false,
            port: 53,
            dst: None,
        };
        let on = UdpFlows {
            dst: Some("10.0.0.1".parse().unwrap()),
            ..any
        };
        let v6 = UdpFlows { ipv6: true, ..any };
        assert!(any.matches(&tuple("10.0.0.1", Protocol::Udp, 53)));
        assert!(!any.matches(&tuple("10.0.0.1", Protocol::Udp, 54)));
        assert!(!any.matches(&tuple("10.0.0.1", Protocol::Tcp, 53)));
        assert!(on.matches(&tuple("10.0.0.1", Protocol::Udp, 53)));
        assert!(!on.matches(&tuple("10.0.0.2", Protocol::Udp, 53)));
        assert!(!v6.matches(&tuple("10.0.0.1", Protocol::Udp, 53)));
        assert!(v6.matches(&tuple("2001:db8::1", Protocol::Udp, 53)));
        assert!(!any.matches(&[]));
    }
}
