//! A minimal synchronous rtnetlink socket: build a request, send it, read the ack or the
//! replies. Just what `link.rs` needs, no async runtime (startup time matters: the plugin is
//! a short-lived process run once per pod).
//!
//! A socket talks to the network namespace it was *created* in, whatever thread later uses
//! it; `netns.rs` opens one inside the pod's namespace from a short-lived thread.
//!
//! Wire format (rtnetlink(7), netlink(7)): a 16-byte `nlmsghdr`, a fixed family header
//! (`ifinfomsg`, `ifaddrmsg`, `rtmsg`, `ndmsg`), then 4-byte aligned attributes
//! (`rtattr`: u16 length, u16 type, payload), possibly nested.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

pub const NLM_F_REQUEST: u16 = 0x01;
pub const NLM_F_ACK: u16 = 0x04;
pub const NLM_F_ROOT: u16 = 0x100;
pub const NLM_F_MATCH: u16 = 0x200;
pub const NLM_F_DUMP: u16 = NLM_F_ROOT | NLM_F_MATCH;
pub const NLM_F_REPLACE: u16 = 0x100;
pub const NLM_F_EXCL: u16 = 0x200;
pub const NLM_F_CREATE: u16 = 0x400;
/// In an NLMSG_ERROR reply: extended-ack TLVs follow.
const NLM_F_ACK_TLVS: u16 = 0x200;
/// In an NLMSG_ERROR reply: the request's payload was not echoed.
const NLM_F_CAPPED: u16 = 0x100;

const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLMSGERR_ATTR_MSG: u16 = 1;
const NETLINK_CAP_ACK: libc::c_int = 10;
const NETLINK_EXT_ACK: libc::c_int = 11;
const NLA_F_NESTED: u16 = 0x8000;
const NLA_TYPE_MASK: u16 = 0x3fff;
const HDR_LEN: usize = 16;

/// A failed request: the errno and the kernel's extended-ack message, if it sent one.
#[derive(Debug)]
pub struct NlError {
    pub source: io::Error,
    pub kernel_msg: Option<String>,
}

impl NlError {
    pub fn errno(&self) -> Option<i32> {
        self.source.raw_os_error()
    }
}

impl From<io::Error> for NlError {
    fn from(source: io::Error) -> Self {
        NlError {
            source,
            kernel_msg: None,
        }
    }
}

pub type NlResult<T> = Result<T, NlError>;

/// A request under construction.
pub struct Request {
    buf: Vec<u8>,
    nests: Vec<usize>,
}

impl Request {
    pub fn new(msg_type: u16, flags: u16) -> Self {
        let mut buf = Vec::with_capacity(256);
        buf.extend_from_slice(&[0u8; HDR_LEN]);
        buf[4..6].copy_from_slice(&msg_type.to_ne_bytes());
        buf[6..8].copy_from_slice(&(flags | NLM_F_REQUEST).to_ne_bytes());
        Request {
            buf,
            nests: Vec::new(),
        }
    }

    /// Append raw bytes (a family header), padded to 4 bytes.
    pub fn bytes(&mut self, b: &[u8]) -> &mut Self {
        self.buf.extend_from_slice(b);
        self.pad();
        self
    }

    pub fn attr(&mut self, ty: u16, data: &[u8]) -> &mut Self {
        let len = 4 + data.len();
        self.buf.extend_from_slice(&(len as u16).to_ne_bytes());
        self.buf.extend_from_slice(&ty.to_ne_bytes());
        self.buf.extend_from_slice(data);
        self.pad();
        self
    }

    pub fn attr_u32(&mut self, ty: u16, v: u32) -> &mut Self {
        self.attr(ty, &v.to_ne_bytes())
    }

    /// A NUL-terminated string attribute (IFLA_IFNAME, IFLA_INFO_KIND).
    pub fn attr_str(&mut self, ty: u16, s: &str) -> &mut Self {
        let mut v = Vec::with_capacity(s.len() + 1);
        v.extend_from_slice(s.as_bytes());
        v.push(0);
        self.attr(ty, &v)
    }

    pub fn begin_nest(&mut self, ty: u16) -> &mut Self {
        self.nests.push(self.buf.len());
        self.buf.extend_from_slice(&[0, 0]);
        self.buf
            .extend_from_slice(&(ty | NLA_F_NESTED).to_ne_bytes());
        self
    }

    pub fn end_nest(&mut self) -> &mut Self {
        let start = self.nests.pop().expect("end_nest without begin_nest");
        let len = (self.buf.len() - start) as u16;
        self.buf[start..start + 2].copy_from_slice(&len.to_ne_bytes());
        self
    }

    fn pad(&mut self) {
        while !self.buf.len().is_multiple_of(4) {
            self.buf.push(0);
        }
    }

    pub(crate) fn finish(&mut self, seq: u32) -> &[u8] {
        assert!(self.nests.is_empty(), "unclosed nest");
        let len = self.buf.len() as u32;
        self.buf[0..4].copy_from_slice(&len.to_ne_bytes());
        self.buf[8..12].copy_from_slice(&seq.to_ne_bytes());
        &self.buf
    }
}

/// One reply message: its payload (family header + attributes).
#[derive(Debug, Clone)]
pub struct Reply {
    pub payload: Vec<u8>,
}

pub struct Socket {
    fd: OwnedFd,
    seq: u32,
}

impl Socket {
    /// A NETLINK_ROUTE socket in the calling thread's network namespace.
    pub fn open() -> io::Result<Self> {
        // SAFETY: plain socket(2) call; the returned fd is owned below.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::NETLINK_ROUTE,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd is a fresh, valid descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let one: libc::c_int = 1;
        for opt in [NETLINK_EXT_ACK, NETLINK_CAP_ACK] {
            // Best effort: both only make error replies more useful/smaller.
            // SAFETY: valid fd, pointer to a c_int that lives across the call.
            unsafe {
                libc::setsockopt(
                    fd.as_raw_fd(),
                    libc::SOL_NETLINK,
                    opt,
                    (&one as *const libc::c_int).cast(),
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                );
            }
        }
        // SAFETY: zeroed sockaddr_nl is valid; nl_pid 0 lets the kernel pick the port id.
        let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        addr.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        // SAFETY: addr is a properly sized sockaddr_nl.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&addr as *const libc::sockaddr_nl).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        // Sequence numbers only need to be unique per socket.
        Ok(Socket { fd, seq: 1 })
    }

    fn send(&mut self, req: &mut Request) -> io::Result<u32> {
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        let buf = req.finish(seq);
        // SAFETY: buf is a valid slice for the duration of the call.
        let n = unsafe { libc::send(self.fd.as_raw_fd(), buf.as_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(seq)
    }

    /// Receive one datagram, sized exactly (MSG_PEEK|MSG_TRUNC tells its length first), so
    /// large dumps are never truncated.
    fn recv(&mut self) -> io::Result<Vec<u8>> {
        loop {
            let mut probe = [0u8; 1];
            // SAFETY: probe is valid for 1 byte; MSG_TRUNC makes recv return the real length.
            let n = unsafe {
                libc::recv(
                    self.fd.as_raw_fd(),
                    probe.as_mut_ptr().cast(),
                    1,
                    libc::MSG_PEEK | libc::MSG_TRUNC,
                )
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            let mut buf = vec![0u8; (n as usize).max(HDR_LEN)];
            // SAFETY: buf is valid for buf.len() bytes.
            let n =
                unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            buf.truncate(n as usize);
            return Ok(buf);
        }
    }

    /// Read replies to `seq` until an ack/error (non-dump) or NLMSG_DONE (dump).
    fn collect(&mut self, seq: u32, dump: bool) -> NlResult<Vec<Reply>> {
        let mut out = Vec::new();
        loop {
            let buf = self.recv()?;
            let mut off = 0;
            while off + HDR_LEN <= buf.len() {
                let len = u32::from_ne_bytes(buf[off..off + 4].try_into().unwrap()) as usize;
                let ty = u16::from_ne_bytes(buf[off + 4..off + 6].try_into().unwrap());
                let flags = u16::from_ne_bytes(buf[off + 6..off + 8].try_into().unwrap());
                let mseq = u32::from_ne_bytes(buf[off + 8..off + 12].try_into().unwrap());
                if len < HDR_LEN || off + len > buf.len() {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "malformed netlink reply",
                    )
                    .into());
                }
                let payload = &buf[off + HDR_LEN..off + len];
                off += align(len);
                if mseq != seq {
                    continue; // a stale reply to an earlier request
                }
                match ty {
                    NLMSG_ERROR => {
                        let errno = i32::from_ne_bytes(payload[0..4].try_into().unwrap());
                        if errno == 0 {
                            return Ok(out); // ack
                        }
                        return Err(NlError {
                            source: io::Error::from_raw_os_error(-errno),
                            kernel_msg: ext_ack_msg(payload, flags),
                        });
                    }
                    NLMSG_DONE => return Ok(out),
                    _ => {
                        out.push(Reply {
                            payload: payload.to_vec(),
                        });
                        if !dump {
                            return Ok(out);
                        }
                    }
                }
            }
        }
    }

    /// Send a change request and wait for the kernel's ack.
    pub fn execute(&mut self, mut req: Request) -> NlResult<()> {
        let flags = u16::from_ne_bytes(req.buf[6..8].try_into().unwrap()) | NLM_F_ACK;
        req.buf[6..8].copy_from_slice(&flags.to_ne_bytes());
        let seq = self.send(&mut req)?;
        self.collect(seq, false).map(|_| ())
    }

    /// Send a get request expecting one reply (e.g. RTM_GETLINK by name).
    pub fn get(&mut self, mut req: Request) -> NlResult<Option<Reply>> {
        let seq = self.send(&mut req)?;
        Ok(self.collect(seq, false)?.into_iter().next())
    }

    /// Send a dump request (NLM_F_DUMP must be set by the caller) and gather every reply.
    pub fn dump(&mut self, mut req: Request) -> NlResult<Vec<Reply>> {
        let seq = self.send(&mut req)?;
        self.collect(seq, true)
    }
}

fn align(n: usize) -> usize {
    (n + 3) & !3
}

/// The NLMSGERR_ATTR_MSG string of an extended ack, when present.
fn ext_ack_msg(payload: &[u8], flags: u16) -> Option<String> {
    if flags & NLM_F_ACK_TLVS == 0 {
        return None;
    }
    // nlmsgerr = error (4) + the original request's header (16) [+ its payload unless capped].
    let orig_len = if flags & NLM_F_CAPPED != 0 {
        HDR_LEN
    } else {
        u32::from_ne_bytes(payload.get(4..8)?.try_into().ok()?) as usize
    };
    let tlvs = payload.get(4 + align(orig_len)..)?;
    Attrs::new(tlvs)
        .find(|(t, _)| *t == NLMSGERR_ATTR_MSG)
        .map(|(_, v)| c_string(v))
}

/// Iterator over the attributes in a byte slice: (type without flag bits, payload).
pub struct Attrs<'a> {
    buf: &'a [u8],
}

impl<'a> Attrs<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Attrs { buf }
    }
}

impl<'a> Iterator for Attrs<'a> {
    type Item = (u16, &'a [u8]);
    fn next(&mut self) -> Option<Self::Item> {
        if self.buf.len() < 4 {
            return None;
        }
        let len = u16::from_ne_bytes([self.buf[0], self.buf[1]]) as usize;
        let ty = u16::from_ne_bytes([self.buf[2], self.buf[3]]) & NLA_TYPE_MASK;
        if len < 4 || len > self.buf.len() {
            return None;
        }
        let data = &self.buf[4..len];
        self.buf = self.buf.get(align(len)..).unwrap_or(&[]);
        Some((ty, data))
    }
}

pub fn c_string(b: &[u8]) -> String {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..end]).into_owned()
}

pub fn u32_of(b: &[u8]) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(0..4)?.try_into().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_aligned_and_nests_sized() {
        let mut r = Request::new(16, NLM_F_CREATE);
        r.bytes(&[1, 2, 3]);
        r.attr_str(3, "eth0");
        r.begin_nest(18).attr_str(1, "veth").end_nest();
        let buf = r.finish(7).to_vec();
        assert_eq!(buf.len() % 4, 0);
        assert_eq!(
            u32::from_ne_bytes(buf[0..4].try_into().unwrap()) as usize,
            buf.len()
        );
        assert_eq!(u32::from_ne_bytes(buf[8..12].try_into().unwrap()), 7);
        let attrs: Vec<_> = Attrs::new(&buf[20..]).collect();
        assert_eq!(attrs.len(), 2);
        assert_eq!(c_string(attrs[0].1), "eth0");
        assert_eq!(attrs[1].0, 18, "nested flag masked off");
        let inner: Vec<_> = Attrs::new(attrs[1].1).collect();
        assert_eq!(c_string(inner[0].1), "veth");
    }

    #[test]
    fn ext_ack_messages_are_extracted() {
        // error -17, capped original header, then NLMSGERR_ATTR_MSG "boom".
        let mut p = Vec::new();
        p.extend_from_slice(&(-17i32).to_ne_bytes());
        p.extend_from_slice(&[0u8; 16]);
        p.extend_from_slice(&9u16.to_ne_bytes());
        p.extend_from_slice(&NLMSGERR_ATTR_MSG.to_ne_bytes());
        p.extend_from_slice(b"boom\0\0\0\0");
        assert_eq!(
            ext_ack_msg(&p, NLM_F_ACK_TLVS | NLM_F_CAPPED).as_deref(),
            Some("boom")
        );
        assert_eq!(ext_ack_msg(&p, 0), None);
    }
}
