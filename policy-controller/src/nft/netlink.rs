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
//! Elements of sets and maps with `flags interval` go the same way, as nft sends them (see
//! `palisade_kernel::nftables::Batch::add_intervals`): the model's interval elements are
//! disjoint (the diff deletes before it adds, and single-field sets are merged by
//! [`super::canon`] exactly as they are sent), so what the kernel holds is exactly the
//! model's elements and a deletion names intervals the kernel has. Any command that is not an
//! element command, or any key this file cannot encode (interface names, a v6 address in a
//! v4 set), makes [`encode`] return `None` and the transaction goes through nft.

use super::plan::Op;
use crate::ruleset::{KeyType, Ruleset, Value, Verdict};
use palisade_kernel::nftables::{self as nf, Batch, Data, Element, Interval, MapData, Nfnl};
use std::net::IpAddr;
use std::path::Path;

pub use palisade_kernel::nftables::BatchError;

/// Larger transactions go through nft: they are rare (start, big policy changes) and nft's
/// cost is then small next to the transaction itself.
const MAX_BATCH: usize = 256 * 1024;

/// The most bytes of a batch of [`encode_additions`]: the default socket send buffer is 208
/// KiB, and batches that fit it need no raised buffer (the kernel crate raises it for a
/// larger one, charging the socket that memory).
const ADDITIONS_BATCH: usize = 160 * 1024;

/// One key type's encoder: a value as a field of the kernel crate, or `None` when the value
/// does not fit the type.
type FieldEncoder = fn(&Value) -> Option<nf::Field>;

/// How values of key type `t` are encoded, or `None` for a type the kernel crate has no
/// field for (interface names: such sets go through nft). The one list of the key types
/// the fast path takes: [`field`] encodes with it and [`element_additions`] asks it, so a
/// new key type is encodable in both or in neither (the match has no catch-all).
fn field_encoder(t: KeyType) -> Option<FieldEncoder> {
    match t {
        KeyType::Ipv4Addr => Some(|v| match v {
            Value::Addr(a @ IpAddr::V4(_)) => Some(nf::Field::from(*a)),
            _ => None,
        }),
        KeyType::Ipv6Addr => Some(|v| match v {
            Value::Addr(a @ IpAddr::V6(_)) => Some(nf::Field::from(*a)),
            _ => None,
        }),
        KeyType::InetProto => Some(|v| match v {
            Value::Proto(p) => Some(nf::Field::Proto(*p)),
            _ => None,
        }),
        KeyType::InetService => Some(|v| match v {
            Value::Port(p) => Some(nf::Field::Port(*p)),
            _ => None,
        }),
        KeyType::IfName => None,
    }
}

/// One field of an exact key; `None` when the value does not fit the key type.
fn field(t: &KeyType, v: &Value) -> Option<nf::Field> {
    field_encoder(*t)?(v)
}

/// One field of an interval key: its first and last value. An exact value is the interval
/// of one; prefixes and ranges only appear in interval sets.
fn field_bounds(t: &KeyType, v: &Value) -> Option<(nf::Field, nf::Field)> {
    let family = |a: &IpAddr| field(t, &Value::Addr(*a));
    match v {
        Value::Prefix(net) => {
            let net = net.trunc();
            Some((family(&net.network())?, family(&net.broadcast())?))
        }
        Value::AddrRange(a, b) => Some((family(a)?, family(b)?)),
        Value::PortRange(a, b) if *t == KeyType::InetService => {
            Some((nf::Field::Port(*a), nf::Field::Port(*b)))
        }
        exact => field(t, exact).map(|f| (f, f)),
    }
}

/// A key in the kernel crate's types; `None` when a value does not fit its key type.
fn key(types: &[KeyType], values: &[Value]) -> Option<Data> {
    if types.len() != values.len() {
        return None;
    }
    let fields = types.iter().zip(values).map(|(t, v)| field(t, v));
    Some(Data(fields.collect::<Option<_>>()?))
}

/// A key of an interval set; `None` when a value does not fit its key type or a range is
/// reversed.
fn interval(types: &[KeyType], values: &[Value]) -> Option<Interval> {
    if types.len() != values.len() {
        return None;
    }
    let (first, last) = types
        .iter()
        .zip(values)
        .map(|(t, v)| field_bounds(t, v))
        .collect::<Option<(Vec<_>, Vec<_>)>>()?;
    Interval::new(Data(first), Data(last))
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

/// The type of a set or map whose elements can go in a batch: its key and whether it has
/// `flags interval`.
#[derive(Clone, Copy)]
struct SetType<'m> {
    key: &'m [KeyType],
    interval: bool,
}

/// The type of set `name` of `model`, if it exists.
fn set_type<'m>(model: &'m Ruleset, name: &str) -> Option<SetType<'m>> {
    model.sets.get(name).map(|s| SetType {
        key: &s.key,
        interval: s.interval,
    })
}

/// [`set_type`] for a verdict map.
fn map_type<'m>(model: &'m Ruleset, name: &str) -> Option<SetType<'m>> {
    model.maps.get(name).map(|m| SetType {
        key: &m.key,
        interval: m.interval,
    })
}

/// Elements to add to one set or map, encoded for its type.
enum Additions {
    Exact(Vec<Element>),
    Intervals(Vec<Element<Interval>>),
}

impl Additions {
    /// `None` if a key cannot be encoded.
    fn new<'v>(
        ty: SetType,
        elements: impl IntoIterator<Item = (&'v [Value], Option<&'v Verdict>)>,
    ) -> Option<Additions> {
        // Every element with its key encoded by `encode`; `None` if one cannot be.
        fn all<'v, K>(
            elements: impl Iterator<Item = (&'v [Value], Option<&'v Verdict>)>,
            encode: impl Fn(&[Value]) -> Option<K>,
        ) -> Option<Vec<Element<K>>> {
            elements
                .map(|(k, v)| {
                    Some(Element {
                        key: encode(k)?,
                        data: v.map(|v| MapData::Verdict(verdict(v))),
                    })
                })
                .collect()
        }
        let elements = elements.into_iter();
        Some(if ty.interval {
            Additions::Intervals(all(elements, |k| interval(ty.key, k))?)
        } else {
            Additions::Exact(all(elements, |k| key(ty.key, k))?)
        })
    }

    fn add_to(&self, batch: &mut Batch, set: &str) {
        match self {
            Additions::Exact(e) => batch.add(set, e),
            Additions::Intervals(e) => batch.add_intervals(set, e),
        }
    }
}

/// An addition command's set or map, its type and its elements (keys, and verdicts for a
/// map); `None` for any other command or a set or map `model` lacks.
#[allow(clippy::type_complexity)]
fn addition<'o>(
    model: &'o Ruleset,
    op: &'o Op,
) -> Option<(
    &'o str,
    SetType<'o>,
    Vec<(&'o [Value], Option<&'o Verdict>)>,
)> {
    match op {
        Op::AddElements { set, elements } => Some((
            set,
            set_type(model, set)?,
            elements.iter().map(|k| (k.as_slice(), None)).collect(),
        )),
        Op::AddMapElements { map, elements } => Some((
            map,
            map_type(model, map)?,
            elements
                .iter()
                .map(|(k, v)| (k.as_slice(), Some(v)))
                .collect(),
        )),
        _ => None,
    }
}

/// `delete element` of `keys` from a set or map of type `ty`; `None` if a key cannot be
/// encoded.
fn delete(batch: &mut Batch, set: &str, ty: SetType, keys: &[Vec<Value>]) -> Option<()> {
    if ty.interval {
        let intervals = keys.iter().map(|k| interval(ty.key, k));
        batch.delete_intervals(set, &intervals.collect::<Option<Vec<_>>>()?);
    } else {
        let exact = keys.iter().map(|k| key(ty.key, k));
        batch.delete(set, &exact.collect::<Option<Vec<_>>>()?);
    }
    Some(())
}

/// The batch for `ops` against the sets and maps of `model` (the desired model: element
/// commands of a diff only ever name sets and maps that exist in it), or `None` when some
/// command is not an element command of a set or map of known key types.
pub fn encode(table: &str, model: &Ruleset, ops: &[Op]) -> Option<Batch> {
    let mut batch = Batch::new(table);
    for op in ops {
        match op {
            Op::AddElements { .. } | Op::AddMapElements { .. } => {
                let (name, ty, elements) = addition(model, op)?;
                Additions::new(ty, elements)?.add_to(&mut batch, name)
            }
            Op::DeleteElements { set, elements } => {
                delete(&mut batch, set, set_type(model, set)?, elements)?
            }
            Op::DeleteMapElements { map, keys } => {
                delete(&mut batch, map, map_type(model, map)?, keys)?
            }
            _ => return None,
        }
        if batch.len() > MAX_BATCH {
            return None;
        }
    }
    Some(batch)
}

/// How many elements `op` adds to a set or map of `model` whose key types this file
/// encodes (what [`encode_additions`] carries; a value that does not fit its type still
/// makes it return `None`).
pub fn element_additions(model: &Ruleset, op: &Op) -> Option<usize> {
    let (ty, n) = match op {
        Op::AddElements { set, elements } => (set_type(model, set)?, elements.len()),
        Op::AddMapElements { map, elements } => (map_type(model, map)?, elements.len()),
        _ => return None,
    };
    ty.key
        .iter()
        .all(|t| field_encoder(*t).is_some())
        .then_some(n)
}

/// The element additions of `ops` for the sets and maps of `model` as batches of at most
/// [`ADDITIONS_BATCH`] bytes each (the kernel crate's [`nf::Batches`]), for filling the sets
/// of a table nothing uses yet (see `kernel`'s staged cold start): each batch is a
/// transaction of its own. `None` when some command is not such an addition or a key cannot
/// be encoded.
pub fn encode_additions(table: &str, model: &Ruleset, ops: &[Op]) -> Option<Vec<Batch>> {
    // Every command is encoded before any is added: `None` leaves nothing half-built.
    let additions = ops
        .iter()
        .map(|op| {
            let (name, ty, elements) = addition(model, op)?;
            Some((name, Additions::new(ty, elements)?))
        })
        .collect::<Option<Vec<_>>>()?;
    let mut batches = nf::Batches::new(table, ADDITIONS_BATCH);
    for (name, a) in additions {
        match a {
            Additions::Exact(e) => batches.add(name, &e),
            Additions::Intervals(e) => batches.add_intervals(name, &e),
        }
    }
    Some(batches.finish())
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
        rs.sets.insert(
            "ifaces".into(),
            Set {
                key: vec![KeyType::IfName],
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
        rs.maps.insert(
            "ports6".into(),
            VerdictMap {
                key: vec![KeyType::Ipv6Addr, KeyType::InetProto, KeyType::InetService],
                interval: true,
                ..VerdictMap::default()
            },
        );
        rs
    }

    fn v(s: &str) -> Value {
        if let Some((a, b)) = s.split_once('-') {
            return match (a.parse(), b.parse()) {
                (Ok(a), Ok(b)) => Value::AddrRange(a, b),
                _ => Value::PortRange(a.parse().unwrap(), b.parse().unwrap()),
            };
        }
        if s.contains('/') {
            return Value::Prefix(s.parse().unwrap());
        }
        match s.parse() {
            Ok(a) => Value::Addr(a),
            Err(_) => Value::Port(s.parse().unwrap()),
        }
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
    fn interval_keys_are_their_first_and_last_values() {
        let iv = |t: &[KeyType], k: &[Value]| {
            interval(t, k).map(|i| (i.first().bytes(), i.last().bytes()))
        };
        let v4 = [KeyType::Ipv4Addr];
        // Host bits of a prefix do not count, as in nft.
        assert_eq!(
            iv(&v4, &[v("10.1.2.3/24")]),
            Some((vec![10, 1, 2, 0], vec![10, 1, 2, 255]))
        );
        assert_eq!(
            iv(&v4, &[v("10.0.0.1-10.0.0.9")]),
            Some((vec![10, 0, 0, 1], vec![10, 0, 0, 9]))
        );
        assert_eq!(
            iv(&v4, &[v("10.0.0.7")]),
            Some((vec![10, 0, 0, 7], vec![10, 0, 0, 7]))
        );
        let concat = iv(
            &[KeyType::Ipv6Addr, KeyType::InetProto, KeyType::InetService],
            &[v("fd00::/64"), Value::Proto(6), v("80-90")],
        )
        .unwrap();
        assert_eq!(&concat.0[..8], &[0xfd, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(&concat.1[8..16], &[0xff; 8]);
        assert_eq!(&concat.0[16..], &[6, 0, 0, 0, 0, 80, 0, 0]);
        assert_eq!(&concat.1[16..], &[6, 0, 0, 0, 0, 90, 0, 0]);
        // Wrong family, reversed ranges, names and a missing field are not encodable.
        assert_eq!(iv(&v4, &[v("fd00::/64")]), None);
        assert_eq!(iv(&v4, &[v("10.0.0.9-10.0.0.1")]), None);
        assert_eq!(iv(&[KeyType::InetService], &[v("90-80")]), None);
        assert_eq!(iv(&v4, &[v("80-90")]), None);
        assert_eq!(
            iv(&[KeyType::IfName], &[Value::IfName("eth0".into())]),
            None
        );
        assert_eq!(
            iv(&[KeyType::Ipv4Addr, KeyType::InetProto], &[v("10.0.0.1")]),
            None
        );
    }

    #[test]
    fn only_element_commands_of_encodable_sets_take_the_fast_path() {
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

        // Interval sets and maps: additions and deletions, single field and concatenated.
        let intervals = [
            Op::DeleteElements {
                set: "block".into(),
                elements: vec![vec![v("10.0.0.0/24")]],
            },
            Op::AddElements {
                set: "block".into(),
                elements: vec![vec![v("10.0.0.0/23")], vec![v("10.0.9.1-10.0.9.3")]],
            },
            Op::DeleteMapElements {
                map: "ports6".into(),
                keys: vec![vec![v("fd00::5"), Value::Proto(6), v("80")]],
            },
            Op::AddMapElements {
                map: "ports6".into(),
                elements: vec![(
                    vec![v("fd00::5"), Value::Proto(6), v("80-90")],
                    Verdict::Goto("in-0002".into()),
                )],
            },
        ];
        let batch = encode("palisade", &rs, &intervals).unwrap();
        let counts: Vec<_> = batch
            .commands()
            .iter()
            .map(|c| match c {
                Command::AddElements { set, count } => (set.as_str(), "add", *count),
                Command::DeleteElements { set, count } => (set.as_str(), "delete", *count),
                Command::DeleteTable => ("", "delete table", 0),
            })
            .collect();
        assert_eq!(
            counts,
            [
                ("block", "delete", 1),
                ("block", "add", 2),
                ("ports6", "delete", 1),
                ("ports6", "add", 1)
            ]
        );
        // Keys that cannot be encoded: the whole transaction goes through nft.
        let names = [Op::AddElements {
            set: "ifaces".into(),
            elements: vec![vec![Value::IfName("eth0".into())]],
        }];
        assert!(encode("palisade", &rs, &names).is_none());
        let reversed = [Op::AddElements {
            set: "block".into(),
            elements: vec![vec![v("10.0.0.9-10.0.0.1")]],
        }];
        assert!(encode("palisade", &rs, &reversed).is_none());
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
        // Element counts per set or map, over all batches (each at most ADDITIONS_BATCH).
        let added = |batches: &[Batch]| {
            let mut out = std::collections::BTreeMap::new();
            for b in batches {
                assert!(b.len() < ADDITIONS_BATCH, "a batch of {} bytes", b.len());
                for c in b.commands() {
                    match c {
                        Command::AddElements { set, count } => {
                            *out.entry(set.clone()).or_insert(0) += count
                        }
                        other => panic!("{other:?}"),
                    }
                }
            }
            out
        };
        let batches = encode_additions("palisade", &rs, &ops).unwrap();
        assert!(batches.len() > 1, "{} batches", batches.len());
        assert_eq!(
            added(&batches),
            [("ingress4".to_string(), 1), ("named6".to_string(), 10_000)].into()
        );
        let intervals = [Op::AddMapElements {
            map: "ports6".into(),
            elements: (0..2_000)
                .map(|i| {
                    let mut k = v6(i);
                    k[2] = Value::PortRange(80, 90);
                    (k, Verdict::Goto("in-0001".into()))
                })
                .collect(),
        }];
        let batches = encode_additions("palisade", &rs, &intervals).unwrap();
        assert_eq!(added(&batches), [("ports6".to_string(), 2_000)].into());
        // Only additions, of keys that can be encoded.
        let names = [Op::AddElements {
            set: "ifaces".into(),
            elements: vec![vec![Value::IfName("eth0".into())]],
        }];
        assert!(encode_additions("palisade", &rs, &names).is_none());
        // The staged cold start leaves such a set with the structure.
        assert_eq!(element_additions(&rs, &names[0]), None);
        assert_eq!(element_additions(&rs, &intervals[0]), Some(2_000));
        let delete = [Op::DeleteElements {
            set: "peers".into(),
            elements: vec![vec![Value::Addr("10.0.0.1".parse().unwrap())]],
        }];
        assert!(encode_additions("palisade", &rs, &delete).is_none());
    }
}
