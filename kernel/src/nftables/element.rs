//! Set and map elements as types: what a key or a value is made of ([`Field`]), a key or a
//! value ([`Data`]: one field or a concatenation), a key of an interval set ([`Interval`]:
//! every key from one to another, field by field), what a map maps to ([`MapData`]), and
//! their encoding in nf_tables' register layout, which is what the kernel compares (the
//! bytes `nft -f` sends for the same element, checked with strace).

use netlink_packet_netfilter::nftables::{DataAttribute, Verdict as NftVerdict, VerdictAttribute};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// One field of a key or value, by its nft type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Field {
    /// `ipv4_addr`: network order.
    Ipv4(Ipv4Addr),
    /// `ipv6_addr`: network order.
    Ipv6(Ipv6Addr),
    /// `inet_proto`: one byte (the IANA number).
    Proto(u8),
    /// `inet_service`: a port, network order.
    Port(u16),
    /// `mark`: a 32-bit number in host order (nft's `meta mark` layout).
    Mark(u32),
}

impl From<IpAddr> for Field {
    fn from(ip: IpAddr) -> Field {
        match ip {
            IpAddr::V4(a) => Field::Ipv4(a),
            IpAddr::V6(a) => Field::Ipv6(a),
        }
    }
}

impl Field {
    fn push(&self, out: &mut Vec<u8>) {
        match self {
            Field::Ipv4(a) => out.extend_from_slice(&a.octets()),
            Field::Ipv6(a) => out.extend_from_slice(&a.octets()),
            Field::Proto(p) => out.push(*p),
            Field::Port(p) => out.extend_from_slice(&p.to_be_bytes()),
            Field::Mark(m) => out.extend_from_slice(&m.to_ne_bytes()),
        }
    }
}

impl Field {
    /// The next value of the same type (what nft sends as the key of an interval's end
    /// element: the first key past the interval), `None` at the top of the key space.
    /// Marks are host-order numbers, which an interval set compares as bytes: no successor
    /// here (see [`Interval::new`]).
    fn successor(&self) -> Option<Field> {
        match self {
            Field::Ipv4(a) => u32::from(*a).checked_add(1).map(|n| Field::Ipv4(n.into())),
            Field::Ipv6(a) => u128::from(*a).checked_add(1).map(|n| Field::Ipv6(n.into())),
            Field::Proto(p) => p.checked_add(1).map(Field::Proto),
            Field::Port(p) => p.checked_add(1).map(Field::Port),
            Field::Mark(_) => None,
        }
    }

    fn same_type(&self, other: &Field) -> bool {
        std::mem::discriminant(self) == std::mem::discriminant(other)
    }
}

impl fmt::Display for Field {
    /// nft's own text for the field (numbers for protocols, as `nft -p` prints them).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Field::Ipv4(a) => write!(f, "{a}"),
            Field::Ipv6(a) => write!(f, "{a}"),
            Field::Proto(p) => write!(f, "{p}"),
            Field::Port(p) => write!(f, "{p}"),
            Field::Mark(m) => write!(f, "{m}"),
        }
    }
}

/// A set key or a map value: one field, or a concatenation (`a . b . c`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Data(pub Vec<Field>);

impl Data {
    pub fn one(field: Field) -> Data {
        Data(vec![field])
    }

    /// The register layout: a single field as it is; in a concatenation every field padded
    /// to 4 bytes (each field takes whole 32-bit registers). The kernel checks the length
    /// against the set's key or data length, so a single 2-byte port must not be padded.
    pub fn bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(4 * self.0.len().max(1) + 12);
        for f in &self.0 {
            f.push(&mut out);
            if self.0.len() > 1 {
                out.resize((out.len() + 3) & !3, 0);
            }
        }
        out
    }
}

impl fmt::Display for Data {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, field) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(" . ")?;
            }
            write!(f, "{field}")?;
        }
        Ok(())
    }
}

/// The key of an interval set or map element: every key from `first` to `last`, both
/// included, field by field (a concatenation matches when each field is in its range).
/// One value is the interval from it to itself: an interval set holds nothing else.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Interval {
    first: Data,
    last: Data,
}

impl Interval {
    /// `None` unless `first` and `last` have the same fields, each of `first` at most the
    /// one of `last`, and none a mark (host order: the kernel would compare its bytes in the
    /// wrong order).
    pub fn new(first: Data, last: Data) -> Option<Interval> {
        let fits = first.0.len() == last.0.len()
            && !first.0.is_empty()
            && first
                .0
                .iter()
                .zip(&last.0)
                .all(|(a, b)| a.same_type(b) && a <= b && !matches!(a, Field::Mark(_)));
        fits.then_some(Interval { first, last })
    }

    /// The interval of one key.
    pub fn one(key: Data) -> Option<Interval> {
        Interval::new(key.clone(), key)
    }

    pub fn first(&self) -> &Data {
        &self.first
    }

    pub fn last(&self) -> &Data {
        &self.last
    }

    /// A concatenation (the kernel's pipapo sets): one element with both ends as keys.
    /// Otherwise (rbtree sets) a start element and an end element.
    pub(crate) fn concatenated(&self) -> bool {
        self.first.0.len() > 1
    }

    /// The key of the end element of a single-field interval: the first key past it;
    /// `None` when the interval runs to the top of the key space (nft then sends no end
    /// element and marks the start as open).
    pub(crate) fn end_key(&self) -> Option<Data> {
        match self.last.0.as_slice() {
            [f] => f.successor().map(Data::one),
            _ => None,
        }
    }
}

impl fmt::Display for Interval {
    /// nft's text: `a-b` for a field whose ends differ, `a` otherwise.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (a, b)) in self.first.0.iter().zip(&self.last.0).enumerate() {
            if i > 0 {
                f.write_str(" . ")?;
            }
            if a == b {
                write!(f, "{a}")?;
            } else {
                write!(f, "{a}-{b}")?;
            }
        }
        Ok(())
    }
}

/// A verdict, as a verdict map's value.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Verdict {
    Accept,
    Drop,
    Return,
    Jump(String),
    Goto(String),
}

/// `NF_DROP` / `NF_ACCEPT` (linux/netfilter.h): plain netfilter verdicts, which the crate's
/// `Verdict` carries as `Other`.
const NF_DROP: u32 = 0;
const NF_ACCEPT: u32 = 1;

impl Verdict {
    fn attributes(&self) -> Vec<VerdictAttribute> {
        let (code, chain) = match self {
            Verdict::Accept => (NftVerdict::Other(NF_ACCEPT), None),
            Verdict::Drop => (NftVerdict::Other(NF_DROP), None),
            Verdict::Return => (NftVerdict::Return, None),
            Verdict::Jump(c) => (NftVerdict::Jump, Some(c)),
            Verdict::Goto(c) => (NftVerdict::Goto, Some(c)),
        };
        let mut a = vec![VerdictAttribute::Code(code)];
        a.extend(chain.map(|c| VerdictAttribute::Chain(c.clone())));
        a
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Verdict::Accept => f.write_str("accept"),
            Verdict::Drop => f.write_str("drop"),
            Verdict::Return => f.write_str("return"),
            Verdict::Jump(c) => write!(f, "jump {c}"),
            Verdict::Goto(c) => write!(f, "goto {c}"),
        }
    }
}

/// What a map element maps to.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum MapData {
    Value(Data),
    Verdict(Verdict),
}

impl MapData {
    pub(crate) fn attribute(&self) -> DataAttribute {
        match self {
            MapData::Value(v) => DataAttribute::Value(v.bytes()),
            MapData::Verdict(v) => DataAttribute::Verdict(v.attributes()),
        }
    }
}

impl fmt::Display for MapData {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MapData::Value(v) => write!(f, "{v}"),
            MapData::Verdict(v) => write!(f, "{v}"),
        }
    }
}

/// One element: a set's key, or a map's key and what it maps to. The key is a [`Data`], or
/// an [`Interval`] in a set or map with `flags interval`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Element<K = Data> {
    pub key: K,
    pub data: Option<MapData>,
}

impl<K> Element<K> {
    pub fn set(key: K) -> Element<K> {
        Element { key, data: None }
    }

    pub fn map(key: K, value: MapData) -> Element<K> {
        Element {
            key,
            data: Some(value),
        }
    }
}

impl<K: fmt::Display> fmt::Display for Element<K> {
    /// nft's text for the element: `key` or `key : value`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.data {
            Some(d) => write!(f, "{} : {d}", self.key),
            None => write!(f, "{}", self.key),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> Field {
        Field::from(s.parse::<IpAddr>().unwrap())
    }

    #[test]
    fn keys_and_values_follow_nfts_register_layout() {
        // From `strace nft -f` of `add element inet palisade-hostport ports4
        // { 6 . 20002 : 10.50.0.2 . 80 }`.
        assert_eq!(
            Data(vec![Field::Proto(6), Field::Port(20002)]).bytes(),
            vec![6, 0, 0, 0, 0x4e, 0x22, 0, 0]
        );
        assert_eq!(
            Data(vec![ip("10.50.0.2"), Field::Port(80)]).bytes(),
            vec![10, 50, 0, 2, 0, 80, 0, 0]
        );
        assert_eq!(
            Data(vec![ip("192.0.2.1"), Field::Proto(17), Field::Port(53)]).bytes(),
            vec![192, 0, 2, 1, 17, 0, 0, 0, 0, 53, 0, 0]
        );
        let v6 = Data(vec![ip("fd00::1"), Field::Proto(132), Field::Port(9)]).bytes();
        assert_eq!(v6.len(), 24);
        assert_eq!(&v6[16..], &[132, 0, 0, 0, 0, 9, 0, 0]);
        // Single fields are not padded: the kernel checks the key length.
        assert_eq!(Data::one(ip("10.1.2.3")).bytes(), vec![10, 1, 2, 3]);
        assert_eq!(Data::one(Field::Port(8080)).bytes(), vec![0x1f, 0x90]);
        assert_eq!(
            Data::one(Field::Mark(1)).bytes(),
            1u32.to_ne_bytes().to_vec()
        );
    }

    #[test]
    fn elements_print_as_nft_writes_them() {
        let e = Element::map(
            Data(vec![Field::Proto(6), Field::Port(8080)]),
            MapData::Value(Data(vec![ip("10.244.1.5"), Field::Port(80)])),
        );
        assert_eq!(e.to_string(), "6 . 8080 : 10.244.1.5 . 80");
        let v = Element::map(
            Data::one(ip("10.0.0.2")),
            MapData::Verdict(Verdict::Jump("in-0001".into())),
        );
        assert_eq!(v.to_string(), "10.0.0.2 : jump in-0001");
        let i = Element::map(
            Interval::new(
                Data(vec![ip("10.244.1.5"), Field::Proto(6), Field::Port(80)]),
                Data(vec![ip("10.244.1.5"), Field::Proto(6), Field::Port(90)]),
            )
            .unwrap(),
            MapData::Verdict(Verdict::Goto("some-chain".into())),
        );
        assert_eq!(i.to_string(), "10.244.1.5 . 6 . 80-90 : goto some-chain");
    }

    #[test]
    fn intervals_are_ordered_fields_of_one_shape() {
        let one = |f| Data::one(f);
        assert!(Interval::new(one(ip("10.0.0.9")), one(ip("10.0.0.1"))).is_none());
        assert!(Interval::new(one(ip("10.0.0.1")), one(ip("::1"))).is_none());
        assert!(Interval::new(one(Field::Port(1)), Data(vec![Field::Port(1); 2])).is_none());
        assert!(Interval::one(one(Field::Mark(1))).is_none());
        let top = Interval::new(one(ip("255.255.255.0")), one(ip("255.255.255.255"))).unwrap();
        assert_eq!(top.end_key(), None);
        let v6 = Interval::one(one(ip("fd00::ffff"))).unwrap();
        assert_eq!(v6.end_key(), Some(one(ip("fd00::1:0"))));
        assert_eq!(
            Interval::one(one(Field::Port(65534))).unwrap().end_key(),
            Some(one(Field::Port(65535)))
        );
        assert_eq!(
            Interval::one(one(Field::Port(65535))).unwrap().end_key(),
            None
        );
    }
}
