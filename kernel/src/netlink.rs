//! One synchronous netlink socket for every protocol the kernel layer speaks, carrying the
//! typed messages of the `netlink-packet-*` crates (`RouteNetlinkMessage` for rtnetlink,
//! `NetfilterMessage` for nf_tables, conntrack and NFLOG), the way containers/netavark drives
//! them: a `netlink-sys` socket, one request at a time, replies read until the ack or the end
//! of the dump. No async runtime: the CNI plugin is a short-lived process whose start-up time
//! matters, and the agent calls this from a blocking section.
//!
//! A socket talks to the network namespace it was *created* in, whatever thread later uses
//! it; open it inside [`crate::netns::Netns::run`] to talk to another namespace.
//!
//! Error replies keep the kernel's extended-ack text (`NLMSGERR_ATTR_MSG`, e.g. "Nexthop
//! device is not up"): `netlink-packet-core` hands the bytes after the error code over
//! unparsed, so [`ext_ack_message`] reads that one attribute itself.

use netlink_packet_core::{
    NetlinkDeserializable, NetlinkHeader, NetlinkMessage, NetlinkPayload, NetlinkSerializable,
    NlasIterator, NLM_F_ACK, NLM_F_ACK_TLVS, NLM_F_CAPPED, NLM_F_DUMP, NLM_F_REQUEST,
};
use netlink_sys::SocketAddr;
use std::io;
use std::marker::PhantomData;

/// `NLMSGERR_ATTR_MSG` (linux/netlink.h): the extended ack's error text.
const NLMSGERR_ATTR_MSG: u16 = 1;
const NETLINK_HEADER_LEN: usize = 16;
/// Large enough for any datagram the kernel sends on these sockets: dumps are built in
/// skbs of at most 32 KiB, and a longer datagram is reported, not cut silently.
const RECV_BUF: usize = 64 * 1024;

/// A failed netlink request: what was asked ("add route 10.244.1.0/24 via 192.0.2.2"), the
/// errno, and the kernel's extended-ack message when it sent one.
#[derive(Debug, thiserror::Error)]
#[error("{context}: {source}{}", kernel_msg.as_deref().map(|m| format!(" ({m})")).unwrap_or_default())]
pub struct Error {
    pub context: String,
    pub source: io::Error,
    pub kernel_msg: Option<String>,
}

impl Error {
    pub fn new(context: impl Into<String>, source: io::Error) -> Error {
        Error {
            context: context.into(),
            source,
            kernel_msg: None,
        }
    }

    pub fn errno(&self) -> Option<i32> {
        self.source.raw_os_error()
    }

    fn invalid(context: impl Into<String>, what: impl std::fmt::Display) -> Error {
        Error::new(
            context,
            io::Error::new(io::ErrorKind::InvalidData, what.to_string()),
        )
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The request's context for an error from the socket layer.
pub(crate) trait Context<T> {
    fn context(self, what: impl FnOnce() -> String) -> Result<T>;
}

impl<T> Context<T> for Result<T> {
    fn context(self, what: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|mut e| {
            e.context = what();
            e
        })
    }
}

/// A netlink socket carrying messages of type `M` (one protocol).
pub struct Socket<M> {
    socket: netlink_sys::Socket,
    seq: u32,
    buf: Vec<u8>,
    _messages: PhantomData<M>,
}

impl<M> Socket<M>
where
    M: NetlinkSerializable + NetlinkDeserializable + std::fmt::Debug,
    NetlinkPayload<M>: From<M>,
{
    /// A socket of `protocol` (`netlink_sys::protocols::NETLINK_*`) in the calling thread's
    /// network namespace, with extended acks on and echoed requests capped.
    pub fn open(protocol: isize) -> Result<Socket<M>> {
        let mut socket =
            netlink_sys::Socket::new(protocol).map_err(|e| Error::new("open netlink socket", e))?;
        // Best effort: both only make error replies more useful (and smaller).
        let _ = socket.set_ext_ack(true);
        let _ = socket.set_cap_ack(true);
        socket
            .bind(&SocketAddr::new(0, 0))
            .map_err(|e| Error::new("bind netlink socket", e))?;
        Ok(Socket {
            socket,
            seq: 0,
            buf: vec![0; RECV_BUF],
            _messages: PhantomData,
        })
    }

    /// The underlying socket (for options such as group membership).
    pub fn raw(&self) -> &netlink_sys::Socket {
        &self.socket
    }

    /// Serialize `msg` with `flags` and the next sequence number.
    fn frame(&mut self, msg: M, flags: u16) -> Vec<u8> {
        self.seq = self.seq.wrapping_add(1);
        let mut out = Vec::new();
        frame(&mut out, msg, flags, self.seq);
        out
    }

    fn send(&mut self, bytes: &[u8]) -> Result<()> {
        self.socket
            .send(bytes, 0)
            .map_err(|e| Error::new("send netlink request", e))?;
        Ok(())
    }

    /// Send a change request and wait for the kernel's ack.
    pub fn execute(&mut self, msg: M, flags: u16) -> Result<()> {
        let bytes = self.frame(msg, flags | NLM_F_ACK);
        self.send(&bytes)?;
        self.replies(false).map(|_| ())
    }

    /// Send a get request expecting at most one reply.
    pub fn get(&mut self, msg: M, flags: u16) -> Result<Option<M>> {
        let bytes = self.frame(msg, flags);
        self.send(&bytes)?;
        Ok(self.replies(false)?.into_iter().next())
    }

    /// Send a dump request and gather every reply up to `NLMSG_DONE`.
    pub fn dump(&mut self, msg: M) -> Result<Vec<M>> {
        let bytes = self.frame(msg, NLM_F_DUMP);
        self.send(&bytes)?;
        self.replies(true)
    }

    /// Send an nfnetlink batch (already serialized: [`frame`] each message, between
    /// `BATCH_BEGIN` and `BATCH_END`) in one datagram, without asking for acks: the kernel
    /// applies it as a whole inside `sendmsg` and queues one error for each refused message,
    /// which [`Socket::queued_error`] reads.
    ///
    /// The kernel refuses a datagram larger than the socket's send buffer less 32 bytes
    /// (EMSGSIZE, `netlink_sendmsg`; 208 KiB by default), and a batch cannot be cut into
    /// several datagrams without becoming several transactions. So the buffer is raised to
    /// fit first, as nft does (`mnl_set_sndbuffer`): `SO_SNDBUFFORCE`, which needs
    /// CAP_NET_ADMIN (what nf_tables needs anyway) and passes over `wmem_max`, else
    /// `SO_SNDBUF`, capped by it. If neither gives room, the send reports EMSGSIZE.
    pub fn send_batch(&mut self, batch: &[u8]) -> Result<()> {
        self.make_room(batch.len());
        self.send(batch)
    }

    /// Raise the send buffer so a datagram of `len` bytes fits (best effort, see
    /// [`Socket::send_batch`]).
    fn make_room(&mut self, len: usize) {
        use std::os::fd::AsRawFd;
        let fd = self.socket.as_raw_fd();
        let int = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        let mut have: libc::c_int = 0;
        let mut size = int;
        // SAFETY: `fd` is this socket's; `have` and `size` are a c_int and its length.
        let got = unsafe {
            libc::getsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_SNDBUF,
                (&mut have as *mut libc::c_int).cast(),
                &mut size,
            )
        };
        if got == 0 && usize::try_from(have).is_ok_and(|h| len + 32 <= h) {
            return;
        }
        // The kernel doubles what it is given (for its bookkeeping): ask for the datagram
        // and the margin, which is at least that much room.
        let want = libc::c_int::try_from(len + 32).unwrap_or(libc::c_int::MAX);
        for option in [libc::SO_SNDBUFFORCE, libc::SO_SNDBUF] {
            // SAFETY: as above; `want` is a c_int.
            let set = unsafe {
                libc::setsockopt(
                    fd,
                    libc::SOL_SOCKET,
                    option,
                    (&want as *const libc::c_int).cast(),
                    int,
                )
            };
            if set == 0 {
                return;
            }
        }
    }

    /// The first error queued for the messages sent so far (read without blocking); `Ok`
    /// when there is none.
    pub fn queued_error(&mut self) -> Result<()> {
        let mut first = None;
        loop {
            let n = match self.socket.recv(&mut &mut self.buf[..], libc::MSG_DONTWAIT) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(Error::new("receive netlink reply", e)),
            };
            for msg in messages::<M>(&self.buf[..n.min(RECV_BUF)]) {
                if let Err(e) = msg.and_then(|m| check_error(&m)) {
                    first.get_or_insert(e);
                }
            }
        }
        first.map_or(Ok(()), Err)
    }

    /// Wait for the next datagram (a subscription's messages, not replies to a request) and
    /// return its messages; an error message in it is returned as the error.
    pub fn receive(&mut self) -> Result<Vec<M>> {
        let n = loop {
            match self.socket.recv(&mut &mut self.buf[..], 0) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(Error::new("receive netlink message", e)),
            }
        };
        decode_datagram(&self.buf[..n.min(RECV_BUF)])
    }

    /// Read replies to the last request until its ack or error (`dump`: until
    /// `NLMSG_DONE`). Replies to earlier requests (a get whose ack was not asked for) are
    /// skipped by sequence number.
    fn replies(&mut self, dump: bool) -> Result<Vec<M>> {
        let mut out = Vec::new();
        loop {
            let n = match self.socket.recv(&mut &mut self.buf[..], libc::MSG_TRUNC) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(Error::new("receive netlink reply", e)),
            };
            if n > RECV_BUF {
                return Err(Error::invalid(
                    "receive netlink reply",
                    format!("a {n}-byte datagram does not fit the {RECV_BUF}-byte buffer"),
                ));
            }
            for msg in messages::<M>(&self.buf[..n]) {
                let msg = msg?;
                if msg.header.sequence_number != self.seq {
                    continue;
                }
                check_error(&msg)?;
                match msg.payload {
                    NetlinkPayload::Error(_) | NetlinkPayload::Done(_) => return Ok(out),
                    NetlinkPayload::InnerMessage(m) => {
                        out.push(m);
                        if !dump {
                            return Ok(out);
                        }
                    }
                    _ => {}
                }
            }
        }
    }
}

/// Append `msg` as a netlink message with `flags` (plus `NLM_F_REQUEST`) and sequence
/// number `seq` to `out`.
pub fn frame<M>(out: &mut Vec<u8>, msg: M, flags: u16, seq: u32)
where
    M: NetlinkSerializable,
    NetlinkPayload<M>: From<M>,
{
    let mut packet = NetlinkMessage::new(NetlinkHeader::default(), NetlinkPayload::from(msg));
    packet.header.flags = NLM_F_REQUEST | flags;
    packet.header.sequence_number = seq;
    packet.finalize();
    let start = out.len();
    out.resize(start + packet.buffer_len(), 0);
    packet.serialize(&mut out[start..]);
    // The next message starts aligned (the kernel steps by NLMSG_ALIGN(nlmsg_len)).
    out.resize((out.len() + 3) & !3, 0);
}

/// The messages of one datagram received on a subscription ([`Socket::receive`]); an error
/// message in it is returned as the error. Public for the fuzz targets (`fuzz/`), which feed
/// it arbitrary datagrams.
pub fn decode_datagram<M: NetlinkDeserializable>(datagram: &[u8]) -> Result<Vec<M>> {
    let mut out = Vec::new();
    for msg in messages::<M>(datagram) {
        let msg = msg?;
        check_error(&msg)?;
        if let NetlinkPayload::InnerMessage(m) = msg.payload {
            out.push(m);
        }
    }
    Ok(out)
}

/// The messages of one datagram.
fn messages<M: NetlinkDeserializable>(
    mut buf: &[u8],
) -> impl Iterator<Item = Result<NetlinkMessage<M>>> + '_ {
    std::iter::from_fn(move || {
        if buf.len() < NETLINK_HEADER_LEN {
            return None;
        }
        let len = u32::from_ne_bytes(buf[0..4].try_into().unwrap()) as usize;
        if len < NETLINK_HEADER_LEN || len > buf.len() {
            buf = &[];
            return Some(Err(Error::invalid(
                "parse netlink reply",
                "a message length beyond the datagram",
            )));
        }
        let msg = NetlinkMessage::<M>::deserialize(&buf[..len])
            .map_err(|e| Error::invalid("parse netlink reply", e));
        buf = buf.get((len + 3) & !3..).unwrap_or(&[]);
        Some(msg)
    })
}

/// `Err` for an `NLMSG_ERROR` with a non-zero code, with its extended-ack text.
fn check_error<M>(msg: &NetlinkMessage<M>) -> Result<()> {
    if let NetlinkPayload::Error(e) = &msg.payload {
        if let Some(code) = e.code {
            // The kernel sends a negative errno. Anything else is a malformed message, not
            // an errno (negating i32::MIN overflowed: found by the rtnetlink fuzz target).
            let Some(errno) = code.get().checked_neg().filter(|e| *e > 0) else {
                return Err(Error::invalid(
                    "parse netlink reply",
                    format!("error code {code} is not a negative errno"),
                ));
            };
            return Err(Error {
                context: String::new(),
                source: io::Error::from_raw_os_error(errno),
                kernel_msg: ext_ack_message(msg.header.flags, &e.header),
            });
        }
    }
    Ok(())
}

/// The `NLMSGERR_ATTR_MSG` text of an error reply. `after_code` is what follows the error
/// code: the request's header (and, unless `NLM_F_CAPPED`, its payload), then the extended
/// ack attributes when `NLM_F_ACK_TLVS` is set.
pub fn ext_ack_message(flags: u16, after_code: &[u8]) -> Option<String> {
    if flags & NLM_F_ACK_TLVS == 0 {
        return None;
    }
    let request_len = if flags & NLM_F_CAPPED != 0 {
        NETLINK_HEADER_LEN
    } else {
        u32::from_ne_bytes(after_code.get(0..4)?.try_into().ok()?) as usize
    };
    let tlvs = after_code.get((request_len + 3) & !3..)?;
    NlasIterator::new(tlvs).flatten().find_map(|nla| {
        (nla.kind() == NLMSGERR_ATTR_MSG).then(|| {
            let v = nla.value();
            let end = v.iter().position(|&c| c == 0).unwrap_or(v.len());
            String::from_utf8_lossy(&v[..end]).into_owned()
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ext_ack_messages_are_read_after_a_capped_request() {
        // A capped request header (16 bytes), then NLMSGERR_ATTR_MSG "boom".
        let mut p = vec![0u8; 16];
        p.extend_from_slice(&9u16.to_ne_bytes());
        p.extend_from_slice(&NLMSGERR_ATTR_MSG.to_ne_bytes());
        p.extend_from_slice(b"boom\0\0\0\0");
        assert_eq!(
            ext_ack_message(NLM_F_ACK_TLVS | NLM_F_CAPPED, &p).as_deref(),
            Some("boom")
        );
        assert_eq!(ext_ack_message(0, &p), None);
        // Not capped: the echoed request says how long it is (here 20 bytes).
        let mut q = vec![0u8; 20];
        q[0..4].copy_from_slice(&20u32.to_ne_bytes());
        q.extend_from_slice(&p[16..]);
        assert_eq!(ext_ack_message(NLM_F_ACK_TLVS, &q).as_deref(), Some("boom"));
    }

    #[test]
    fn errors_name_the_request_and_keep_the_kernel_text() {
        let e = Error {
            context: "add route 10.0.0.0/24".into(),
            source: io::Error::from_raw_os_error(libc::ENETUNREACH),
            kernel_msg: Some("Nexthop has invalid gateway".into()),
        };
        assert_eq!(e.errno(), Some(libc::ENETUNREACH));
        let text = e.to_string();
        assert!(text.starts_with("add route 10.0.0.0/24: "), "{text}");
        assert!(text.ends_with(" (Nexthop has invalid gateway)"), "{text}");
    }
}
