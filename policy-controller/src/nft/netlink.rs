//! The element fast path: a transaction made only of set and verdict-map element additions
//! and deletions (what pod churn produces: a pod IP joining or leaving peer sets, the local
//! set and the dispatch maps) is sent as one nf_tables netlink batch on a socket of our own,
//! instead of through an `nft` process. That skips nft's start-up and its cache fetch of the
//! whole table, which dominate the cost of a one-element change on a large table.
//!
//! The batch itself (what `nft -f` sends for `add element` / `delete element`, atomic as a
//! whole) and its typed elements are `palisade_kernel::nftables`', which the CNI plugin's
//! hostPort maps use too; this file maps the model's keys and verdicts onto them.
//!
//! Only elements of sets and maps without `flags interval` are encoded here (interval sets
//! need start/end element pairs; nft computes those); anything else, or any key type this
//! file does not know, makes [`encode`] return `None` and the transaction goes through nft.

use super::plan::Op;
use crate::ruleset::{KeyType, Ruleset, Value, Verdict};
use palisade_kernel::nftables::{self as nf, Batch, Data, Element, MapData, Nfnl};
use std::path::Path;

pub use palisade_kernel::nftables::BatchError;

/// Larger transactions go through nft: they are rare (start, big policy changes) and nft's
/// cost is then small next to the transaction itself.
const MAX_BATCH: usize = 256 * 1024;

/// Elements per netlink message. A message's element list is one attribute, whose length
/// is 16 bits: a list over 64 KiB does not fit (and netlink-packet-netfilter 0.3 panics
/// emitting it instead of refusing). An element here is at most about 150 bytes (a
/// three-field key, a verdict naming a chain, the nesting), so 256 stay under 40 KiB.
const PER_MESSAGE: usize = 256;

/// A key in the kernel crate's types; `None` when a value does not fit its key type.
fn key(types: &[KeyType], values: &[Value]) -> Option<Data> {
    if types.len() != values.len() {
        return None;
    }
    let fields = types.iter().zip(values).map(|(t, v)| match (t, v) {
        (KeyType::Ipv4Addr, Value::Addr(a @ std::net::IpAddr::V4(_)))
        | (KeyType::Ipv6Addr, Value::Addr(a @ std::net::IpAddr::V6(_))) => {
            Some(nf::Field::from(*a))
        }
        (KeyType::InetProto, Value::Proto(p)) => Some(nf::Field::Proto(*p)),
        (KeyType::InetService, Value::Port(p)) => Some(nf::Field::Port(*p)),
        _ => None,
    });
    Some(Data(fields.collect::<Option<_>>()?))
}

fn verdict(v: &Verdict) -> nf::Verdict {
    match v {
        Verdict::Accept => nf::Verdict::Accept,
        Verdict::Drop => nf::Verdict::Drop,
        Verdict::Return => nf::Verdict::Return,
        Verdict::Jump(c) => nf::Verdict::Jump(c.clone()),
        Verdict::Goto(c) => nf::Verdict::Goto(c.clone()),
    }
}

/// The key types of set `name` of `model`, if its elements can go in a batch here (it
/// exists and has no `flags interval`).
fn set_key<'m>(model: &'m Ruleset, name: &str) -> Option<&'m [KeyType]> {
    model
        .sets
        .get(name)
        .filter(|s| !s.interval)
        .map(|s| s.key.as_slice())
}

/// [`set_key`] for a verdict map.
fn map_key<'m>(model: &'m Ruleset, name: &str) -> Option<&'m [KeyType]> {
    model
        .maps
        .get(name)
        .filter(|m| !m.interval)
        .map(|m| m.key.as_slice())
}

/// Keys; `None` if one cannot be encoded.
fn keys<'v>(
    types: &[KeyType],
    values: impl IntoIterator<Item = &'v Vec<Value>>,
) -> Option<Vec<Data>> {
    values.into_iter().map(|v| key(types, v)).collect()
}

/// Set elements to add; `None` if a key cannot be encoded.
fn set_additions(types: &[KeyType], elements: &[Vec<Value>]) -> Option<Vec<Element>> {
    Some(
        keys(types, elements)?
            .into_iter()
            .map(Element::set)
            .collect(),
    )
}

/// Verdict map elements to add; `None` if a key cannot be encoded.
fn map_additions(types: &[KeyType], elements: &[(Vec<Value>, Verdict)]) -> Option<Vec<Element>> {
    elements
        .iter()
        .map(|(k, v)| Some(Element::map(key(types, k)?, MapData::Verdict(verdict(v)))))
        .collect()
}

/// The batch for `ops` against the sets and maps of `model` (the desired model: element
/// commands of a diff only ever name sets and maps that exist in it), or `None` when some
/// command is not an element command of a non-interval set or map of known key types.
pub fn encode(table: &str, model: &Ruleset, ops: &[Op]) -> Option<Batch> {
    let mut batch = Batch::new(table);
    for op in ops {
        match op {
            Op::AddElements { set, elements } => {
                let types = set_key(model, set)?;
                for chunk in elements.chunks(PER_MESSAGE) {
                    batch.add(set, &set_additions(types, chunk)?);
                }
            }
            Op::DeleteElements { set, elements } => {
                let types = set_key(model, set)?;
                for chunk in elements.chunks(PER_MESSAGE) {
                    batch.delete(set, &keys(types, chunk)?);
                }
            }
            Op::AddMapElements { map, elements } => {
                let types = map_key(model, map)?;
                for chunk in elements.chunks(PER_MESSAGE) {
                    batch.add(map, &map_additions(types, chunk)?);
                }
            }
            Op::DeleteMapElements { map, keys: k } => {
                let types = map_key(model, map)?;
                for chunk in k.chunks(PER_MESSAGE) {
                    batch.delete(map, &keys(types, chunk)?);
                }
            }
            _ => return None,
        }
        if batch.len() > MAX_BATCH {
            return None;
        }
    }
    Some(batch)
}

/// How many elements `op` adds to a set or map of `model` that [`encode_additions`] can
/// carry; `None` for any other command.
pub fn plain_additions(model: &Ruleset, op: &Op) -> Option<usize> {
    match op {
        Op::AddElements { set, elements } => set_key(model, set).map(|_| elements.len()),
        Op::AddMapElements { map, elements } => map_key(model, map).map(|_| elements.len()),
        _ => None,
    }
}

/// The element additions of `ops` for the non-interval sets and maps of `model` as
/// batches of at most about 160 KiB each (a netlink message must fit the socket's send
/// buffer, 208 KiB by default), for filling the sets of a table nothing uses yet (see
/// `kernel`'s staged cold start): each batch is a transaction of its own. `None` when some
/// command is not such an addition.
pub fn encode_additions(table: &str, model: &Ruleset, ops: &[Op]) -> Option<Vec<Batch>> {
    /// Elements per command, and the size from which a batch is sent: together at most
    /// about 140 KiB.
    const CHUNK: usize = PER_MESSAGE;
    const FULL: usize = 96 * 1024;
    let mut batches = Vec::new();
    let mut batch = Batch::new(table);
    for op in ops {
        let (name, chunks): (&str, Vec<Vec<Element>>) = match op {
            Op::AddElements { set, elements } => {
                let types = set_key(model, set)?;
                let chunks = elements.chunks(CHUNK).map(|c| set_additions(types, c));
                (set, chunks.collect::<Option<_>>()?)
            }
            Op::AddMapElements { map, elements } => {
                let types = map_key(model, map)?;
                let chunks = elements.chunks(CHUNK).map(|c| map_additions(types, c));
                (map, chunks.collect::<Option<_>>()?)
            }
            _ => return None,
        };
        for chunk in chunks {
            batch.add(name, &chunk);
            if batch.len() > FULL {
                batches.push(std::mem::replace(&mut batch, Batch::new(table)));
            }
        }
    }
    if !batch.is_empty() {
        batches.push(batch);
    }
    Some(batches)
}

/// A NETLINK_NETFILTER socket of the network namespace at `netns` (opened inside it by the
/// kernel crate's namespace helper), or of this process's namespace. The dataplane keeps it
/// open across batches: closing a socket that deleted elements waits for an RCU grace
/// period (about 10 ms) under the nf_tables mutex.
pub fn socket(netns: Option<&Path>) -> Result<Nfnl, BatchError> {
    let opened = match netns {
        None => Nfnl::open(),
        Some(path) => palisade_kernel::Netns::open(path)
            .map_err(|e| palisade_kernel::Error::new(format!("open {}", path.display()), e))
            .and_then(|ns| Nfnl::open_in(&ns)),
    };
    opened.map_err(BatchError::Unavailable)
}

/// Sends one batch on a socket from [`socket`] and reports the kernel's verdict.
pub fn send(sock: &mut Nfnl, batch: &Batch) -> Result<(), BatchError> {
    sock.apply(batch)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ruleset::{Set, VerdictMap};
    use palisade_kernel::nftables::Command;

    /// Many verdict-map elements naming chains (a peer map after a policy change) go as
    /// several messages, each list well under the 64 KiB an attribute can hold.
    #[test]
    fn large_changes_are_split_into_messages_that_fit() {
        let mut rs = Ruleset::default();
        rs.maps.insert(
            "m".into(),
            VerdictMap {
                key: vec![KeyType::Ipv6Addr, KeyType::InetProto, KeyType::InetService],
                ..VerdictMap::default()
            },
        );
        let elements: Vec<(Vec<Value>, Verdict)> = (0..1500u16)
            .map(|i| {
                (
                    vec![
                        Value::Addr(format!("fd00::{i:x}").parse().unwrap()),
                        Value::Proto(6),
                        Value::Port(i),
                    ],
                    Verdict::Goto(format!("in-ok-{i:016x}")),
                )
            })
            .collect();
        let keys: Vec<Vec<Value>> = elements.iter().map(|(k, _)| k.clone()).collect();
        let ops = [
            Op::AddMapElements {
                map: "m".into(),
                elements: elements.clone(),
            },
            Op::DeleteMapElements {
                map: "m".into(),
                keys,
            },
        ];
        let batch = encode("t", &rs, &ops).expect("encodable");
        let sizes: Vec<usize> = batch
            .commands()
            .iter()
            .map(|c| match c {
                Command::AddElements { count, .. } | Command::DeleteElements { count, .. } => {
                    *count
                }
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(sizes.iter().sum::<usize>(), 3000);
        assert!(sizes.iter().all(|n| *n <= PER_MESSAGE), "{sizes:?}");
        let filled = encode_additions("t", &rs, &ops[..1]).expect("encodable");
        assert!(filled.iter().all(|b| b.len() < 200 * 1024));
    }

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
        let key_bytes = |t: &[KeyType], v: &[Value]| key(t, v).map(|d| d.bytes());
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
        assert_eq!(
            batch.commands(),
            &[
                Command::DeleteElements {
                    set: "peers".into(),
                    count: 1
                },
                Command::AddElements {
                    set: "ingress4".into(),
                    count: 1
                }
            ]
        );

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

    #[test]
    fn a_cold_start_s_additions_are_split_into_batches_that_fit_a_socket() {
        let rs = model();
        let v6 = |i: u32| {
            vec![
                Value::Addr(std::net::Ipv6Addr::from(0xfd00_u128 << 112 | u128::from(i)).into()),
                Value::Proto(6),
                Value::Port(80),
            ]
        };
        let ops = [
            Op::AddElements {
                set: "named6".into(),
                elements: (0..10_000).map(v6).collect(),
            },
            Op::AddMapElements {
                map: "ingress4".into(),
                elements: vec![(
                    vec![Value::Addr("10.0.0.2".parse().unwrap())],
                    Verdict::Jump("in-0001".into()),
                )],
            },
        ];
        let batches = encode_additions("palisade", &rs, &ops).unwrap();
        assert!(batches.len() > 1, "{} batches", batches.len());
        let mut commands = 0;
        for b in &batches {
            assert!(b.len() < 160 * 1024, "a batch of {} bytes", b.len());
            commands += b.commands().len();
        }
        // 40 commands of at most 256 elements for the set (PER_MESSAGE), one for the map.
        assert_eq!(commands, 10_000usize.div_ceil(PER_MESSAGE) + 1);
        // Only additions of plain sets and maps.
        let interval = [Op::AddElements {
            set: "block".into(),
            elements: vec![vec![Value::Addr("10.0.0.1".parse().unwrap())]],
        }];
        assert!(encode_additions("palisade", &rs, &interval).is_none());
        let delete = [Op::DeleteElements {
            set: "peers".into(),
            elements: vec![vec![Value::Addr("10.0.0.1".parse().unwrap())]],
        }];
        assert!(encode_additions("palisade", &rs, &delete).is_none());
    }
}
