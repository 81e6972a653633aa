//! NFLOG: a socket bound to one log group, delivering the packets nftables logs there
//! (`log group N`), decoded by `netlink-packet-netfilter` (its `nflog` messages cover the
//! group configuration and every packet attribute: prefix, interfaces, payload).
//!
//! What this crate does not decode is the logged payload itself, the packet's IP and
//! transport headers: that is not netlink, and the agent reads the few fields it names
//! (addresses, protocol, ports) from it.

use crate::netlink::{Context, Result, Socket};
use netlink_packet_core::NLM_F_ACK;
use netlink_packet_netfilter::nflog::{
    ConfigCmd, ConfigMode, ConfigNla, PacketNla, Timeout, ULogMessage,
};
use netlink_packet_netfilter::{
    NetfilterHeader, NetfilterMessage, NetfilterMessageInner, NetfilterProtoFamily,
};

/// One packet as NFLOG delivers it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LoggedPacket {
    pub prefix: String,
    pub in_ifindex: Option<u32>,
    pub out_ifindex: Option<u32>,
    /// The packet from its network header on, cut at the group's copy range.
    pub payload: Vec<u8>,
}

impl LoggedPacket {
    fn from_attributes(attrs: Vec<PacketNla>) -> LoggedPacket {
        let mut p = LoggedPacket::default();
        for a in attrs {
            match a {
                PacketNla::Prefix(s) => p.prefix = s.to_string_lossy().into_owned(),
                PacketNla::IfIndexInDev(i) => p.in_ifindex = Some(i),
                PacketNla::IfIndexOutDev(i) => p.out_ifindex = Some(i),
                PacketNla::Payload(b) => p.payload = b,
                _ => {}
            }
        }
        p
    }
}

/// A NETLINK_NETFILTER socket bound to one NFLOG group, in the namespace it was opened in.
pub struct Nflog {
    sock: Socket<NetfilterMessage>,
    group: u16,
}

fn config(group: u16, nlas: Vec<ConfigNla>) -> NetfilterMessage {
    NetfilterMessage::new(
        NetfilterHeader::new(NetfilterProtoFamily::Unspec, 0, group),
        ULogMessage::Config(nlas),
    )
}

impl Nflog {
    /// Bind `group`, copying `copy_range` bytes of each packet, delivered one by one (queue
    /// threshold 1: not batched for a second). A 4 MiB receive buffer absorbs bursts; what
    /// overflows it is lost (the reader sees ENOBUFS).
    pub fn bind(group: u16, copy_range: u32) -> Result<Nflog> {
        let mut sock = Socket::open(netlink_sys::protocols::NETLINK_NETFILTER)?;
        let _ = sock.raw().set_rx_buf_sz(4usize << 20);
        sock.execute(
            config(group, vec![ConfigNla::Cmd(ConfigCmd::Bind)]),
            NLM_F_ACK,
        )
        .context(|| format!("bind NFLOG group {group}"))?;
        sock.execute(
            config(
                group,
                vec![
                    ConfigNla::Mode(ConfigMode::new_packet(copy_range)),
                    ConfigNla::QThresh(1),
                    ConfigNla::Timeout(Timeout::new(1)),
                ],
            ),
            NLM_F_ACK,
        )
        .context(|| format!("configure NFLOG group {group}"))?;
        Ok(Nflog { sock, group })
    }

    /// Wait for the next datagram and return the packets in it. An error with errno ENOBUFS
    /// means the kernel dropped messages because the buffer was full; reading can go on.
    pub fn recv(&mut self) -> Result<Vec<LoggedPacket>> {
        let group = self.group;
        let msgs = self
            .sock
            .receive()
            .context(|| format!("receive from NFLOG group {group}"))?;
        Ok(packets(msgs))
    }
}

/// The logged packets of one datagram as [`Nflog::recv`] reads them (for the fuzz targets,
/// which feed it arbitrary and captured datagrams).
pub fn decode(datagram: &[u8]) -> Result<Vec<LoggedPacket>> {
    crate::netlink::decode_datagram(datagram).map(packets)
}

/// The logged packets among `msgs` (other messages are ignored).
pub fn packets(msgs: Vec<NetfilterMessage>) -> Vec<LoggedPacket> {
    msgs.into_iter()
        .filter_map(|m| match m.inner {
            NetfilterMessageInner::ULog(ULogMessage::Packet(attrs)) => {
                Some(LoggedPacket::from_attributes(attrs))
            }
            _ => None,
        })
        .collect()
}
