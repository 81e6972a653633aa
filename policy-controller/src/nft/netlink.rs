//! The element fast path: a transaction made only of set and verdict-map element additions
//! and deletions (what pod churn produces: a pod IP joining or leaving peer sets, the local
//! set and the dispatch maps) is sent as one nf_tables netlink batch on a socket of our own,
//! instead of through an `nft` process. That skips nft's start-up and its cache fetch of the
//! whole table, which dominate the cost of a one-element change on a large table.
//!
//! The batch is what `nft -f` itself sends for `add element` / `delete element` (linux/
//! netfilter/nf_tables.h): NEWSETELEM / DELSETELEM messages, one per command, between
//! BATCH_BEGIN and BATCH_END, all atomic together. The kernel processes a batch inside
//! `sendmsg` and queues an error message for each refused command, so the outcome is read
//! back without blocking.
//!
//! Only elements of sets and maps without `flags interval` are encoded here (interval sets
//! need start/end element pairs; nft computes those); anything else, or any key type this
//! file does not know, makes [`encode`] return `None` and the transaction goes through nft.

use super::plan::Op;
use crate::ruleset::{KeyType, Ruleset, Value, Verdict};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

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
/// Verdict codes (linux/netfilter.h, nf_tables.h).
const NF_DROP: i32 = 0;
const NF_ACCEPT: i32 = 1;
const NFT_JUMP: i32 = -3;
const NFT_GOTO: i32 = -4;
const NFT_RETURN: i32 = -5;
/// Larger transactions go through nft: they are rare (start, big policy changes) and nft's
/// cost is then small next to the transaction itself.
const MAX_BATCH: usize = 256 * 1024;

#[derive(Debug)]
pub enum BatchError {
    /// Netlink could not be used at all (socket, netns, send): use nft instead.
    Unavailable(io::Error),
    /// The kernel refused the batch; nothing changed.
    Refused(io::Error),
}

impl std::fmt::Display for BatchError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BatchError::Unavailable(e) => write!(f, "netlink unavailable: {e}"),
            BatchError::Refused(e) => write!(f, "the kernel refused the element batch: {e}"),
        }
    }
}

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

/// A key in nft's register layout: a single field as is; in a concatenation every field
/// padded to 4 bytes. Addresses and ports in network order, a protocol as one byte.
fn key_bytes(types: &[KeyType], values: &[Value]) -> Option<Vec<u8>> {
    if types.len() != values.len() {
        return None;
    }
    let mut out = Vec::with_capacity(20);
    for (t, v) in types.iter().zip(values) {
        match (t, v) {
            (KeyType::Ipv4Addr, Value::Addr(std::net::IpAddr::V4(a))) => {
                out.extend_from_slice(&a.octets())
            }
            (KeyType::Ipv6Addr, Value::Addr(std::net::IpAddr::V6(a))) => {
                out.extend_from_slice(&a.octets())
            }
            (KeyType::InetProto, Value::Proto(p)) => out.push(*p),
            (KeyType::InetService, Value::Port(p)) => out.extend_from_slice(&p.to_be_bytes()),
            _ => return None,
        }
        if types.len() > 1 {
            out.resize((out.len() + 3) & !3, 0);
        }
    }
    Some(out)
}

fn verdict_attr(v: &Verdict) -> Vec<u8> {
    let (code, chain) = match v {
        Verdict::Accept => (NF_ACCEPT, None),
        Verdict::Drop => (NF_DROP, None),
        Verdict::Return => (NFT_RETURN, None),
        Verdict::Jump(c) => (NFT_JUMP, Some(c)),
        Verdict::Goto(c) => (NFT_GOTO, Some(c)),
    };
    let mut inner = Vec::new();
    attr(&mut inner, NFTA_VERDICT_CODE, &code.to_be_bytes());
    if let Some(c) = chain {
        attr(&mut inner, NFTA_VERDICT_CHAIN, &cstr(c));
    }
    let mut data = Vec::new();
    attr(&mut data, NFTA_DATA_VERDICT | NLA_F_NESTED, &inner);
    data
}

fn header(out: &mut Vec<u8>, kind: u16, flags: u16, seq: u32, family: u8, res_id: u16) -> usize {
    let start = out.len();
    out.extend_from_slice(&0u32.to_ne_bytes()); // length, patched by `finish_msg`
    out.extend_from_slice(&kind.to_ne_bytes());
    out.extend_from_slice(&flags.to_ne_bytes());
    out.extend_from_slice(&seq.to_ne_bytes());
    out.extend_from_slice(&0u32.to_ne_bytes());
    out.extend_from_slice(&[family, 0]);
    out.extend_from_slice(&res_id.to_be_bytes());
    start
}

fn finish_msg(out: &mut [u8], start: usize) {
    let len = (out.len() - start) as u32;
    out[start..start + 4].copy_from_slice(&len.to_ne_bytes());
}

/// The element list of one command: `(key, data)` pairs already encoded.
fn setelem_msg(
    out: &mut Vec<u8>,
    seq: u32,
    msg: u16,
    table: &str,
    set: &str,
    elements: &[(Vec<u8>, Option<Vec<u8>>)],
) {
    let flags = NLM_F_REQUEST
        | if msg == NFT_MSG_NEWSETELEM {
            NLM_F_CREATE
        } else {
            0
        };
    let start = header(
        out,
        (NFNL_SUBSYS_NFTABLES << 8) | msg,
        flags,
        seq,
        NFPROTO_INET,
        0,
    );
    attr(out, NFTA_SET_ELEM_LIST_TABLE, &cstr(table));
    attr(out, NFTA_SET_ELEM_LIST_SET, &cstr(set));
    let mut list = Vec::new();
    for (key, data) in elements {
        let mut elem = Vec::new();
        let mut k = Vec::new();
        attr(&mut k, NFTA_DATA_VALUE, key);
        attr(&mut elem, NFTA_SET_ELEM_KEY | NLA_F_NESTED, &k);
        if let Some(d) = data {
            attr(&mut elem, NFTA_SET_ELEM_DATA | NLA_F_NESTED, d);
        }
        attr(&mut list, NFTA_LIST_ELEM | NLA_F_NESTED, &elem);
    }
    attr(out, NFTA_SET_ELEM_LIST_ELEMENTS | NLA_F_NESTED, &list);
    finish_msg(out, start);
}

/// The batch for `ops` against the sets and maps of `model` (the desired model: element
/// commands of a diff only ever name sets and maps that exist in it), or `None` when some
/// command is not an element command of a non-interval set or map of known key types.
pub fn encode(table: &str, model: &Ruleset, ops: &[Op]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    let mut seq = 0u32;
    let start = header(
        &mut out,
        NFNL_MSG_BATCH_BEGIN,
        NLM_F_REQUEST,
        seq,
        0,
        NFNL_SUBSYS_NFTABLES,
    );
    finish_msg(&mut out, start);
    for op in ops {
        seq += 1;
        let (msg, set, elements) = match op {
            Op::AddElements { set, elements } | Op::DeleteElements { set, elements } => {
                let s = model.sets.get(set).filter(|s| !s.interval)?;
                let keys = elements
                    .iter()
                    .map(|e| key_bytes(&s.key, e).map(|k| (k, None)))
                    .collect::<Option<Vec<_>>>()?;
                let msg = if matches!(op, Op::AddElements { .. }) {
                    NFT_MSG_NEWSETELEM
                } else {
                    NFT_MSG_DELSETELEM
                };
                (msg, set, keys)
            }
            Op::AddMapElements { map, elements } => {
                let m = model.maps.get(map).filter(|m| !m.interval)?;
                let elems = elements
                    .iter()
                    .map(|(k, v)| key_bytes(&m.key, k).map(|k| (k, Some(verdict_attr(v)))))
                    .collect::<Option<Vec<_>>>()?;
                (NFT_MSG_NEWSETELEM, map, elems)
            }
            Op::DeleteMapElements { map, keys } => {
                let m = model.maps.get(map).filter(|m| !m.interval)?;
                let elems = keys
                    .iter()
                    .map(|k| key_bytes(&m.key, k).map(|k| (k, None)))
                    .collect::<Option<Vec<_>>>()?;
                (NFT_MSG_DELSETELEM, map, elems)
            }
            _ => return None,
        };
        setelem_msg(&mut out, seq, msg, table, set, &elements);
        if out.len() > MAX_BATCH {
            return None;
        }
    }
    seq += 1;
    let start = header(
        &mut out,
        NFNL_MSG_BATCH_END,
        NLM_F_REQUEST,
        seq,
        0,
        NFNL_SUBSYS_NFTABLES,
    );
    finish_msg(&mut out, start);
    Some(out)
}

/// A NETLINK_NETFILTER socket, in the network namespace at `netns` when given (created from
/// a short-lived thread that enters it: a socket stays in the namespace it was made in).
fn socket(netns: Option<&Path>) -> io::Result<OwnedFd> {
    fn open() -> io::Result<OwnedFd> {
        // SAFETY: plain socket(2); the fd is owned by the returned OwnedFd.
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
        // SAFETY: fd is fresh and owned from here on.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    }
    let Some(path) = netns else {
        return open();
    };
    let ns = std::fs::File::open(path)?;
    std::thread::scope(|s| {
        s.spawn(|| {
            // SAFETY: setns on this thread only; the thread ends right after.
            if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(io::Error::last_os_error());
            }
            open()
        })
        .join()
        .unwrap_or_else(|_| Err(io::Error::other("netns thread panicked")))
    })
}

/// Sends one batch and reports the kernel's verdict.
pub fn send(netns: Option<&Path>, batch: &[u8]) -> Result<(), BatchError> {
    let sock = socket(netns).map_err(BatchError::Unavailable)?;
    let fd = sock.as_raw_fd();
    // SAFETY: sockaddr_nl is plain data; zeroed (pid 0 = the kernel) is valid.
    let mut kernel: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    kernel.nl_family = libc::AF_NETLINK as libc::sa_family_t;
    // SAFETY: valid fd, buffer and address of the stated sizes.
    let n = unsafe {
        libc::sendto(
            fd,
            batch.as_ptr().cast(),
            batch.len(),
            0,
            (&kernel as *const libc::sockaddr_nl).cast(),
            std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
        )
    };
    if n < 0 {
        return Err(BatchError::Unavailable(io::Error::last_os_error()));
    }
    // The batch was processed inside sendto: errors, if any, are queued. Read them all.
    let mut buf = vec![0u8; 1 << 16];
    let mut first_error = None;
    loop {
        // SAFETY: valid fd and buffer.
        let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT) };
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
        Some(e) => Err(BatchError::Refused(e)),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ruleset::{Set, VerdictMap};

    fn model() -> Ruleset {
        let mut rs = Ruleset::default();
        rs.sets.insert(
            "peers".into(),
            Set {
                key: vec![KeyType::Ipv4Addr],
                ..Set::default()
            },
        );
        rs.sets.insert(
            "named6".into(),
            Set {
                key: vec![KeyType::Ipv6Addr, KeyType::InetProto, KeyType::InetService],
                ..Set::default()
            },
        );
        rs.sets.insert(
            "block".into(),
            Set {
                key: vec![KeyType::Ipv4Addr],
                interval: true,
                ..Set::default()
            },
        );
        rs.maps.insert(
            "ingress4".into(),
            VerdictMap {
                key: vec![KeyType::Ipv4Addr],
                ..VerdictMap::default()
            },
        );
        rs
    }

    #[test]
    fn keys_follow_the_register_layout() {
        let v4 = key_bytes(
            &[KeyType::Ipv4Addr],
            &[Value::Addr("10.1.2.3".parse().unwrap())],
        );
        assert_eq!(v4, Some(vec![10, 1, 2, 3]));
        let concat = key_bytes(
            &[KeyType::Ipv4Addr, KeyType::InetProto, KeyType::InetService],
            &[
                Value::Addr("10.1.2.3".parse().unwrap()),
                Value::Proto(6),
                Value::Port(8080),
            ],
        )
        .unwrap();
        assert_eq!(concat, vec![10, 1, 2, 3, 6, 0, 0, 0, 0x1f, 0x90, 0, 0]);
        // A v6 address in a v4 set, or a range, is not encodable here.
        assert_eq!(
            key_bytes(&[KeyType::Ipv4Addr], &[Value::Addr("::1".parse().unwrap())]),
            None
        );
        assert_eq!(
            key_bytes(&[KeyType::InetService], &[Value::PortRange(1, 2)]),
            None
        );
    }

    #[test]
    fn only_element_commands_of_plain_sets_take_the_fast_path() {
        let rs = model();
        let ip = |s: &str| vec![Value::Addr(s.parse().unwrap())];
        let ok = [
            Op::DeleteElements {
                set: "peers".into(),
                elements: vec![ip("10.0.0.1")],
            },
            Op::AddMapElements {
                map: "ingress4".into(),
                elements: vec![(ip("10.0.0.2"), Verdict::Jump("in-0001".into()))],
            },
        ];
        let batch = encode("palisade", &rs, &ok).unwrap();
        // BATCH_BEGIN, two commands, BATCH_END; every message's length adds up.
        let mut at = 0;
        let mut kinds = Vec::new();
        while at < batch.len() {
            let len = u32::from_ne_bytes(batch[at..at + 4].try_into().unwrap()) as usize;
            kinds.push(u16::from_ne_bytes([batch[at + 4], batch[at + 5]]));
            at += len;
        }
        assert_eq!(at, batch.len());
        assert_eq!(
            kinds,
            vec![
                NFNL_MSG_BATCH_BEGIN,
                (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_DELSETELEM,
                (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWSETELEM,
                NFNL_MSG_BATCH_END
            ]
        );
        // The jump target is in the batch.
        assert!(batch.windows(8).any(|w| w == b"in-0001\0"));

        let interval = [Op::AddElements {
            set: "block".into(),
            elements: vec![ip("10.0.0.1")],
        }];
        assert!(encode("palisade", &rs, &interval).is_none());
        let chain = [Op::FlushChain { name: "x".into() }];
        assert!(encode("palisade", &rs, &chain).is_none());
        let unknown = [Op::AddElements {
            set: "nope".into(),
            elements: vec![ip("10.0.0.1")],
        }];
        assert!(encode("palisade", &rs, &unknown).is_none());
    }
}
