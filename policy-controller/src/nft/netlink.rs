//! The element fast path: a transaction made only of set and verdict-map element additions
//! and deletions (what pod churn produces: a pod IP joining or leaving peer sets, the local
//! set and the dispatch maps) is sent as one nf_tables netlink batch on a socket of our own,
//! instead of through an `nft` process. That skips nft's start-up and its cache fetch of the
//! whole table, which dominate the cost of a one-element change on a large table.
//!
//! The batch itself (what `nft -f` sends for `add element` / `delete element`, atomic as a
//! whole) is built and sent by `palisade_common::nfnetlink`, which the CNI plugin's hostPort
//! map uses too; this file encodes the model's keys and verdicts into it.
//!
//! Only elements of sets and maps without `flags interval` are encoded here (interval sets
//! need start/end element pairs; nft computes those); anything else, or any key type this
//! file does not know, makes [`encode`] return `None` and the transaction goes through nft.

use super::plan::Op;
use crate::ruleset::{KeyType, Ruleset, Value, Verdict};
use palisade_common::nfnetlink::{self, ElementBatch, ElementData};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;

pub use palisade_common::nfnetlink::SendError as BatchError;

/// Larger transactions go through nft: they are rare (start, big policy changes) and nft's
/// cost is then small next to the transaction itself.
const MAX_BATCH: usize = 256 * 1024;

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

fn verdict_data(v: &Verdict) -> ElementData<'_> {
    match v {
        Verdict::Accept => ElementData::Verdict(nfnetlink::NF_ACCEPT, None),
        Verdict::Drop => ElementData::Verdict(nfnetlink::NF_DROP, None),
        Verdict::Return => ElementData::Verdict(nfnetlink::NFT_RETURN, None),
        Verdict::Jump(c) => ElementData::Verdict(nfnetlink::NFT_JUMP, Some(c)),
        Verdict::Goto(c) => ElementData::Verdict(nfnetlink::NFT_GOTO, Some(c)),
    }
}

/// The batch for `ops` against the sets and maps of `model` (the desired model: element
/// commands of a diff only ever name sets and maps that exist in it), or `None` when some
/// command is not an element command of a non-interval set or map of known key types.
pub fn encode(table: &str, model: &Ruleset, ops: &[Op]) -> Option<Vec<u8>> {
    let mut batch = ElementBatch::new(table);
    for op in ops {
        match op {
            Op::AddElements { set, elements } | Op::DeleteElements { set, elements } => {
                let s = model.sets.get(set).filter(|s| !s.interval)?;
                let keys = elements
                    .iter()
                    .map(|e| key_bytes(&s.key, e))
                    .collect::<Option<Vec<_>>>()?;
                if matches!(op, Op::AddElements { .. }) {
                    let elems: Vec<_> = keys.into_iter().map(|k| (k, None)).collect();
                    batch.add(set, &elems);
                } else {
                    batch.delete(set, &keys);
                }
            }
            Op::AddMapElements { map, elements } => {
                let m = model.maps.get(map).filter(|m| !m.interval)?;
                let elems = elements
                    .iter()
                    .map(|(k, v)| key_bytes(&m.key, k).map(|k| (k, Some(verdict_data(v)))))
                    .collect::<Option<Vec<_>>>()?;
                batch.add(map, &elems);
            }
            Op::DeleteMapElements { map, keys } => {
                let m = model.maps.get(map).filter(|m| !m.interval)?;
                let keys = keys
                    .iter()
                    .map(|k| key_bytes(&m.key, k))
                    .collect::<Option<Vec<_>>>()?;
                batch.delete(map, &keys);
            }
            _ => return None,
        }
        if batch.len() > MAX_BATCH {
            return None;
        }
    }
    Some(batch.finish_batch())
}

/// The element additions of `ops` for the non-interval sets and maps of `model` as
/// batches of at most about 160 KiB each (a netlink message must fit the socket's send
/// buffer, 208 KiB by default), for filling the sets of a table nothing uses yet (see `kernel`'s staged cold
/// start): each batch is a transaction of its own. `None` when some command is not such an
/// addition.
pub fn encode_additions(table: &str, model: &Ruleset, ops: &[Op]) -> Option<Vec<Vec<u8>>> {
    /// Elements per command (at most about 64 bytes each) and the size from which a batch
    /// is sent: together at most about 160 KiB.
    const CHUNK: usize = 1024;
    const FULL: usize = 96 * 1024;
    let mut batches = Vec::new();
    let mut batch = ElementBatch::new(table);
    let mut flush = |batch: &mut ElementBatch, force: bool| {
        if !batch.is_empty() && (force || batch.len() > FULL) {
            let full = std::mem::replace(batch, ElementBatch::new(table));
            batches.push(full.finish_batch());
        }
    };
    for op in ops {
        match op {
            Op::AddElements { set, elements } => {
                let s = model.sets.get(set).filter(|s| !s.interval)?;
                for chunk in elements.chunks(CHUNK) {
                    let elems = chunk
                        .iter()
                        .map(|e| key_bytes(&s.key, e).map(|k| (k, None)))
                        .collect::<Option<Vec<_>>>()?;
                    batch.add(set, &elems);
                    flush(&mut batch, false);
                }
            }
            Op::AddMapElements { map, elements } => {
                let m = model.maps.get(map).filter(|m| !m.interval)?;
                for chunk in elements.chunks(CHUNK) {
                    let elems = chunk
                        .iter()
                        .map(|(k, v)| key_bytes(&m.key, k).map(|k| (k, Some(verdict_data(v)))))
                        .collect::<Option<Vec<_>>>()?;
                    batch.add(map, &elems);
                    flush(&mut batch, false);
                }
            }
            _ => return None,
        }
    }
    flush(&mut batch, true);
    Some(batches)
}

/// A NETLINK_NETFILTER socket of the network namespace at `netns` (made on a short-lived
/// thread that enters it; a socket stays in the namespace it was made in), or of this
/// process's namespace. The dataplane keeps it open across batches: closing a socket that
/// deleted elements waits for an RCU grace period (about 10 ms) under the nf_tables mutex.
pub fn socket(netns: Option<&Path>) -> Result<OwnedFd, BatchError> {
    let Some(path) = netns else {
        return nfnetlink::socket().map_err(BatchError::Unavailable);
    };
    let ns = std::fs::File::open(path).map_err(BatchError::Unavailable)?;
    std::thread::scope(|s| {
        s.spawn(|| {
            // SAFETY: setns on this thread only; the thread ends right after.
            if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(BatchError::Unavailable(io::Error::last_os_error()));
            }
            nfnetlink::socket().map_err(BatchError::Unavailable)
        })
        .join()
        .unwrap_or_else(|_| {
            Err(BatchError::Unavailable(io::Error::other(
                "netns thread panicked",
            )))
        })
    })
}

/// Sends one batch on a socket from [`socket`] and reports the kernel's verdict.
pub fn send(sock: &OwnedFd, batch: &[u8]) -> Result<(), BatchError> {
    nfnetlink::send_on(sock, batch)
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
        let kinds = nfnetlink::message_kinds(&batch).unwrap();
        // BATCH_BEGIN 0x10, DELSETELEM and NEWSETELEM of nf_tables (subsystem 10), BATCH_END.
        assert_eq!(kinds, vec![0x10, (10 << 8) | 14, (10 << 8) | 12, 0x11]);
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
