//! nf_tables set-element batches over netlink, shared by the CNI plugin (hostPort map
//! elements) and the agent (pod churn in its sets and dispatch maps): both change elements of
//! their own table far more often than anything else, and an `nft` process per change costs
//! its start-up and a fetch of the whole table.
//!
//! A batch is what `nft -f` itself sends for `add element` / `delete element`
//! (linux/netfilter/nf_tables.h): NEWSETELEM / DELSETELEM messages between BATCH_BEGIN and
//! BATCH_END, applied atomically. The kernel processes a batch inside `sendmsg` and queues
//! an error message for each refused command, so [`send`] reads the outcome back without
//! blocking.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

const NETLINK_NETFILTER: i32 = 12;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_CREATE: u16 = 0x400;
const NLMSG_ERROR: u16 = 2;
const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
const NFNL_MSG_BATCH_END: u16 = 0x11;
const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFT_MSG_NEWSETELEM: u16 = 12;
const NFT_MSG_DELSETELEM: u16 = 14;
const NFPROTO_INET: u8 = 1;
const NFTA_SET_ELEM_LIST_TABLE: u16 = 1;
const NFTA_SET_ELEM_LIST_SET: u16 = 2;
const NFTA_SET_ELEM_LIST_ELEMENTS: u16 = 3;
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_SET_ELEM_KEY: u16 = 1;
const NFTA_SET_ELEM_DATA: u16 = 2;
const NFTA_DATA_VALUE: u16 = 1;
const NFTA_DATA_VERDICT: u16 = 2;
const NFTA_VERDICT_CODE: u16 = 1;
const NFTA_VERDICT_CHAIN: u16 = 2;
const NLA_F_NESTED: u16 = 0x8000;

/// What a map element maps to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ElementData<'a> {
    /// A value in register layout (a `ip . port` DNAT target, ...).
    Value(Vec<u8>),
    /// A verdict: code (`NF_ACCEPT` 1, `NF_DROP` 0, jump -3, goto -4, return -5) and, for
    /// jump and goto, the chain.
    Verdict(i32, Option<&'a str>),
}

/// Verdict codes (linux/netfilter.h, nf_tables.h).
pub const NF_DROP: i32 = 0;
pub const NF_ACCEPT: i32 = 1;
pub const NFT_JUMP: i32 = -3;
pub const NFT_GOTO: i32 = -4;
pub const NFT_RETURN: i32 = -5;

fn attr(out: &mut Vec<u8>, kind: u16, payload: &[u8]) {
    out.extend_from_slice(&((4 + payload.len()) as u16).to_ne_bytes());
    out.extend_from_slice(&kind.to_ne_bytes());
    out.extend_from_slice(payload);
    out.resize((out.len() + 3) & !3, 0);
}

fn cstr(s: &str) -> Vec<u8> {
    let mut v = s.as_bytes().to_vec();
    v.push(0);
    v
}

/// A batch of element commands for one `inet` table, built command by command.
#[derive(Debug)]
pub struct ElementBatch {
    buf: Vec<u8>,
    seq: u32,
    table: String,
}

impl ElementBatch {
    pub fn new(table: &str) -> ElementBatch {
        let mut b = ElementBatch {
            buf: Vec::with_capacity(512),
            seq: 0,
            table: table.to_string(),
        };
        let start = b.header(NFNL_MSG_BATCH_BEGIN, NLM_F_REQUEST, 0, NFNL_SUBSYS_NFTABLES);
        b.finish(start);
        b
    }

    fn header(&mut self, kind: u16, flags: u16, family: u8, res_id: u16) -> usize {
        let start = self.buf.len();
        self.buf.extend_from_slice(&0u32.to_ne_bytes()); // length, set by `finish`
        self.buf.extend_from_slice(&kind.to_ne_bytes());
        self.buf.extend_from_slice(&flags.to_ne_bytes());
        self.buf.extend_from_slice(&self.seq.to_ne_bytes());
        self.buf.extend_from_slice(&0u32.to_ne_bytes());
        self.buf.extend_from_slice(&[family, 0]);
        self.buf.extend_from_slice(&res_id.to_be_bytes());
        self.seq += 1;
        start
    }

    fn finish(&mut self, start: usize) {
        let len = (self.buf.len() - start) as u32;
        self.buf[start..start + 4].copy_from_slice(&len.to_ne_bytes());
    }

    fn command(&mut self, msg: u16, set: &str, elements: &[(Vec<u8>, Option<ElementData<'_>>)]) {
        let flags = NLM_F_REQUEST
            | if msg == NFT_MSG_NEWSETELEM {
                NLM_F_CREATE
            } else {
                0
            };
        let start = self.header((NFNL_SUBSYS_NFTABLES << 8) | msg, flags, NFPROTO_INET, 0);
        attr(&mut self.buf, NFTA_SET_ELEM_LIST_TABLE, &cstr(&self.table));
        attr(&mut self.buf, NFTA_SET_ELEM_LIST_SET, &cstr(set));
        let mut list = Vec::new();
        for (key, data) in elements {
            let mut elem = Vec::new();
            let mut k = Vec::new();
            attr(&mut k, NFTA_DATA_VALUE, key);
            attr(&mut elem, NFTA_SET_ELEM_KEY | NLA_F_NESTED, &k);
            let mut d = Vec::new();
            match data {
                None => {}
                Some(ElementData::Value(v)) => attr(&mut d, NFTA_DATA_VALUE, v),
                Some(ElementData::Verdict(code, chain)) => {
                    let mut inner = Vec::new();
                    attr(&mut inner, NFTA_VERDICT_CODE, &code.to_be_bytes());
                    if let Some(c) = chain {
                        attr(&mut inner, NFTA_VERDICT_CHAIN, &cstr(c));
                    }
                    attr(&mut d, NFTA_DATA_VERDICT | NLA_F_NESTED, &inner);
                }
            }
            if !d.is_empty() {
                attr(&mut elem, NFTA_SET_ELEM_DATA | NLA_F_NESTED, &d);
            }
            attr(&mut list, NFTA_LIST_ELEM | NLA_F_NESTED, &elem);
        }
        attr(
            &mut self.buf,
            NFTA_SET_ELEM_LIST_ELEMENTS | NLA_F_NESTED,
            &list,
        );
        self.finish(start);
    }

    /// `add element <table> <set> { ... }`: keys in register layout, with map data.
    pub fn add(&mut self, set: &str, elements: &[(Vec<u8>, Option<ElementData<'_>>)]) {
        self.command(NFT_MSG_NEWSETELEM, set, elements);
    }

    /// `delete element <table> <set> { ... }`.
    pub fn delete(&mut self, set: &str, keys: &[Vec<u8>]) {
        let elements: Vec<(Vec<u8>, Option<ElementData<'_>>)> =
            keys.iter().map(|k| (k.clone(), None)).collect();
        self.command(NFT_MSG_DELSETELEM, set, &elements);
    }

    /// Size so far, in bytes.
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    pub fn is_empty(&self) -> bool {
        self.seq <= 1
    }

    /// The finished batch.
    pub fn finish_batch(mut self) -> Vec<u8> {
        let start = self.header(NFNL_MSG_BATCH_END, NLM_F_REQUEST, 0, NFNL_SUBSYS_NFTABLES);
        self.finish(start);
        self.buf
    }
}

/// Why a batch did not apply.
#[derive(Debug)]
pub enum SendError {
    /// Netlink could not be used at all (socket, send): another way (nft) may work.
    Unavailable(io::Error),
    /// The kernel refused the batch; nothing changed.
    Refused(io::Error),
}

impl std::fmt::Display for SendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SendError::Unavailable(e) => write!(f, "netlink unavailable: {e}"),
            SendError::Refused(e) => write!(f, "the kernel refused the element batch: {e}"),
        }
    }
}

/// Sends a finished batch on a fresh NETLINK_NETFILTER socket of the calling thread's network
/// namespace and reports the kernel's verdict.
pub fn send(batch: &[u8]) -> Result<(), SendError> {
    let sock = socket().map_err(SendError::Unavailable)?;
    send_on(&sock, batch)
}

/// A fresh NETLINK_NETFILTER socket of the calling thread's network namespace, for
/// [`send_on`].
///
/// Why a caller may want to hold on to it: closing a socket that has sent nf_tables commands
/// waits (under the nf_tables commit mutex of its namespace) until objects deleted by recent
/// transactions are freed, which happens one RCU grace period after their commit, about
/// 10 ms. A caller with other slow kernel work to do can send, do that work, and close the
/// socket afterwards: by then the grace period has passed and closing costs nothing.
pub fn socket() -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2); the fd is owned by the returned OwnedFd from here on.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            NETLINK_NETFILTER,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is fresh and owned here.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Sends a finished batch on `sock` (from [`socket`], used for nothing else) and reports the
/// kernel's verdict.
pub fn send_on(sock: &OwnedFd, batch: &[u8]) -> Result<(), SendError> {
    // SAFETY: sockaddr_nl is plain data; zeroed (pid 0 = the kernel) is valid.
    let mut kernel: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    kernel.nl_family = libc::AF_NETLINK as libc::sa_family_t;
    // SAFETY: valid fd, buffer and address of the stated sizes.
    let n = unsafe {
        libc::sendto(
            sock.as_raw_fd(),
            batch.as_ptr().cast(),
            batch.len(),
            0,
            (&kernel as *const libc::sockaddr_nl).cast(),
            std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
        )
    };
    if n < 0 {
        return Err(SendError::Unavailable(io::Error::last_os_error()));
    }
    // The batch was processed inside sendto: errors, if any, are queued. Read them all.
    let mut buf = vec![0u8; 1 << 16];
    let mut first_error = None;
    loop {
        // SAFETY: valid fd and buffer.
        let n = unsafe {
            libc::recv(
                sock.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                libc::MSG_DONTWAIT,
            )
        };
        if n <= 0 {
            break;
        }
        let mut msgs = &buf[..n as usize];
        while msgs.len() >= 20 {
            let len = u32::from_ne_bytes([msgs[0], msgs[1], msgs[2], msgs[3]]) as usize;
            let kind = u16::from_ne_bytes([msgs[4], msgs[5]]);
            if kind == NLMSG_ERROR {
                let code = i32::from_ne_bytes([msgs[16], msgs[17], msgs[18], msgs[19]]);
                if code != 0 && first_error.is_none() {
                    first_error = Some(io::Error::from_raw_os_error(-code));
                }
            }
            if len < 16 || len > msgs.len() {
                break;
            }
            msgs = &msgs[((len + 3) & !3).min(msgs.len())..];
        }
    }
    match first_error {
        Some(e) => Err(SendError::Refused(e)),
        None => Ok(()),
    }
}

/// The message types of a batch, in order (`None` if the message lengths do not add up to
/// the batch): for tests and logs.
pub fn message_kinds(batch: &[u8]) -> Option<Vec<u16>> {
    let mut at = 0;
    let mut kinds = Vec::new();
    while at + 16 <= batch.len() {
        let len = u32::from_ne_bytes(batch[at..at + 4].try_into().ok()?) as usize;
        if len < 16 {
            return None;
        }
        kinds.push(u16::from_ne_bytes([batch[at + 4], batch[at + 5]]));
        at += len;
    }
    (at == batch.len()).then_some(kinds)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds(batch: &[u8]) -> Vec<u16> {
        message_kinds(batch).expect("message lengths add up")
    }

    #[test]
    fn a_batch_is_begin_commands_end_with_sequence_numbers() {
        let mut b = ElementBatch::new("palisade");
        assert!(b.is_empty());
        b.delete("peers4", &[vec![10, 0, 0, 1]]);
        b.add(
            "ingress4",
            &[(
                vec![10, 0, 0, 2],
                Some(ElementData::Verdict(NFT_JUMP, Some("in-0001"))),
            )],
        );
        assert!(!b.is_empty());
        let batch = b.finish_batch();
        assert_eq!(
            kinds(&batch),
            vec![
                NFNL_MSG_BATCH_BEGIN,
                (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_DELSETELEM,
                (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWSETELEM,
                NFNL_MSG_BATCH_END
            ]
        );
        assert!(batch.windows(8).any(|w| w == b"in-0001\0"));
        assert!(batch.windows(9).any(|w| w == b"palisade\0"));
        // The jump code in network order.
        assert!(batch.windows(4).any(|w| w == NFT_JUMP.to_be_bytes()));
    }
}
