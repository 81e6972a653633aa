//! The canonical form of a ruleset: the model exactly as nft 1.0.6 lists it back.
//!
//! The dataplane diffs canonical models only, so that a table read back from the kernel
//! (adoption after a restart) compares equal to the desired model it was programmed from.
//! Every normalisation here mirrors something nft does on its own (checked on 1.0.6):
//!
//! - Interval sets with one key component: nft refuses overlapping intervals ("interval
//!   overlaps with an existing one") and lists a range that is exactly a CIDR as a prefix and
//!   a one-address range as the address. We merge overlapping and adjacent intervals (the set
//!   means their union either way) and spell each merged interval the way nft lists it.
//! - Concatenated interval sets: components are spelled canonically (`10.0.0.1/32` is
//!   `10.0.0.1`, `80-80` is `80`), but elements are not merged: overlapping concatenated
//!   elements are rejected by the kernel (pipapo) and must not be produced by the compiler.
//! - Prefixes with host bits set are truncated (`10.0.0.5/24` is `10.0.0.0/24`).
//! - Set and map comments are dropped: nft 1.0.6's JSON input ignores them (its text input
//!   and its listing support them). They still appear in [`super::render_full`].
//! - Rule comments longer than nft's 128-byte limit are cut (at a char boundary).
//! - `meta nfproto ipv4` followed later in the rule by an `ip` field (or `ipv6` / `ip6`) is
//!   dropped: nft inserts that dependency itself in an `inet` table and hides it when listing.

use crate::ruleset::{
    Chain, CmpOp, Family, Field, Match, Rule, RuleVerdict, Ruleset, Set, Value, VerdictMap,
};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// nft's limit for a rule comment (NFTNL_UDATA_COMMENT_MAXLEN).
pub const MAX_COMMENT_LEN: usize = 128;

/// The canonical form of `rs` (see the module docs).
pub fn canonicalize(rs: &Ruleset) -> Ruleset {
    Ruleset {
        sets: rs
            .sets
            .iter()
            .map(|(n, s)| (n.clone(), canonical_set(s)))
            .collect(),
        maps: rs
            .maps
            .iter()
            .map(|(n, m)| (n.clone(), canonical_map(m)))
            .collect(),
        chains: rs
            .chains
            .iter()
            .map(|(n, c)| (n.clone(), canonical_chain(c)))
            .collect(),
    }
}

/// The canonical form of one set.
pub fn canonical_set(set: &Set) -> Set {
    Set {
        key: set.key.clone(),
        interval: set.interval,
        elements: canonical_elements(set.interval, set.key.len(), set.elements.iter().cloned()),
        comment: None,
    }
}

/// The canonical form of one verdict map.
pub fn canonical_map(map: &VerdictMap) -> VerdictMap {
    VerdictMap {
        key: map.key.clone(),
        interval: map.interval,
        elements: map
            .elements
            .iter()
            .map(|(k, v)| (canonical_key(map.interval, k), v.clone()))
            .collect(),
        comment: None,
    }
}

/// The canonical form of one chain.
pub fn canonical_chain(chain: &Chain) -> Chain {
    let mut c = chain.clone();
    for r in &mut c.rules {
        canonicalize_rule(r);
    }
    c
}

fn canonicalize_rule(r: &mut Rule) {
    if let Some(c) = &mut r.comment {
        truncate_utf8(c, MAX_COMMENT_LEN);
    }
    for m in &mut r.matches {
        if let Match::Cmp { value, .. } = m {
            *value = canonical_value(value.clone(), false);
        }
    }
    // nft's own dependency: drop `meta nfproto F` when a later field of family F follows.
    let mut i = 0;
    while i < r.matches.len() {
        let fam = match &r.matches[i] {
            Match::Cmp {
                field: Field::NfProto,
                op: CmpOp::Eq,
                value: Value::NfProto(f),
            } => Some(*f),
            _ => None,
        };
        if let Some(f) = fam {
            let later_fields = r.matches[i + 1..]
                .iter()
                .flat_map(match_fields)
                .chain(vmap_fields(&r.verdict));
            if later_fields
                .into_iter()
                .any(|fld| field_family(fld) == Some(f))
            {
                r.matches.remove(i);
                continue;
            }
        }
        i += 1;
    }
}

fn match_fields(m: &Match) -> Vec<Field> {
    match m {
        Match::Cmp { field, .. } => vec![*field],
        Match::Lookup { fields, .. } => fields.clone(),
        Match::CtState(_) => vec![],
    }
}

fn vmap_fields(v: &Option<RuleVerdict>) -> Vec<Field> {
    match v {
        Some(RuleVerdict::Vmap { fields, .. }) => fields.clone(),
        _ => vec![],
    }
}

fn field_family(f: Field) -> Option<Family> {
    match f {
        Field::SrcAddr(fam) | Field::DstAddr(fam) => Some(fam),
        _ => None,
    }
}

fn truncate_utf8(s: &mut String, max: usize) {
    if s.len() <= max {
        return;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s.truncate(end);
}

/// One value spelled the way nft lists it back. `in_set`: inside an interval set element,
/// where an address range that is exactly a CIDR is listed as the prefix.
pub(crate) fn canonical_value(v: Value, in_set: bool) -> Value {
    match v {
        Value::Prefix(net) => {
            let net = net.trunc();
            if net.prefix_len() == net.max_prefix_len() {
                Value::Addr(net.addr())
            } else {
                Value::Prefix(net)
            }
        }
        Value::AddrRange(a, b) if a == b => Value::Addr(a),
        Value::AddrRange(a, b) if in_set => match as_prefix(a, b) {
            Some(net) => canonical_value(Value::Prefix(net), in_set),
            None => Value::AddrRange(a, b),
        },
        Value::PortRange(a, b) if in_set && a == b => Value::Port(a),
        other => other,
    }
}

pub(crate) fn canonical_key(interval: bool, key: &[Value]) -> Vec<Value> {
    key.iter()
        .map(|v| canonical_value(v.clone(), interval))
        .collect()
}

/// The canonical elements of a set.
fn canonical_elements(
    interval: bool,
    arity: usize,
    elements: impl Iterator<Item = Vec<Value>>,
) -> BTreeSet<Vec<Value>> {
    if !interval {
        return elements.collect();
    }
    if arity != 1 {
        return elements.map(|e| canonical_key(true, &e)).collect();
    }
    // One component: merge into disjoint, non-adjacent intervals per value kind.
    let mut v4: Vec<(u128, u128)> = Vec::new();
    let mut v6: Vec<(u128, u128)> = Vec::new();
    let mut ports: Vec<(u128, u128)> = Vec::new();
    let mut names: BTreeSet<Vec<Value>> = BTreeSet::new();
    for e in elements {
        let Some(v) = e.first() else { continue };
        match interval_of(v) {
            Some((Kind::V4, lo, hi)) => v4.push((lo, hi)),
            Some((Kind::V6, lo, hi)) => v6.push((lo, hi)),
            Some((Kind::Port, lo, hi)) => ports.push((lo, hi)),
            None => {
                names.insert(e);
            }
        }
    }
    let mut out = canonical_names(names);
    for (lo, hi) in merge(v4) {
        out.insert(vec![addr_interval_value(
            IpAddr::V4(Ipv4Addr::from(lo as u32)),
            IpAddr::V4(Ipv4Addr::from(hi as u32)),
        )]);
    }
    for (lo, hi) in merge(v6) {
        out.insert(vec![addr_interval_value(
            IpAddr::V6(Ipv6Addr::from(lo)),
            IpAddr::V6(Ipv6Addr::from(hi)),
        )]);
    }
    for (lo, hi) in merge(ports) {
        out.insert(vec![if lo == hi {
            Value::Port(lo as u16)
        } else {
            Value::PortRange(lo as u16, hi as u16)
        }]);
    }
    out
}

/// Interface names in an interval set: a name or wildcard covered by a shorter wildcard
/// overlaps it, which nft refuses; keep only the covering wildcard.
fn canonical_names(names: BTreeSet<Vec<Value>>) -> BTreeSet<Vec<Value>> {
    let prefixes: Vec<String> = names
        .iter()
        .filter_map(|e| match e.first() {
            Some(Value::IfPrefix(p)) => Some(p.clone()),
            _ => None,
        })
        .collect();
    names
        .into_iter()
        .filter(|e| match e.first() {
            Some(Value::IfName(n)) => !prefixes.iter().any(|p| n.starts_with(p.as_str())),
            Some(Value::IfPrefix(n)) => !prefixes
                .iter()
                .any(|p| p.len() < n.len() && n.starts_with(p.as_str())),
            _ => true,
        })
        .collect()
}

#[derive(Clone, Copy)]
enum Kind {
    V4,
    V6,
    Port,
}

fn ip_u128(a: IpAddr) -> (Kind, u128) {
    match a {
        IpAddr::V4(a) => (Kind::V4, u128::from(u32::from(a))),
        IpAddr::V6(a) => (Kind::V6, u128::from(a)),
    }
}

fn interval_of(v: &Value) -> Option<(Kind, u128, u128)> {
    match v {
        Value::Addr(a) => {
            let (k, x) = ip_u128(*a);
            Some((k, x, x))
        }
        Value::Prefix(net) => {
            let net = net.trunc();
            let (k, lo) = ip_u128(net.network());
            let (_, hi) = ip_u128(net.broadcast());
            Some((k, lo, hi))
        }
        Value::AddrRange(a, b) if a.is_ipv4() == b.is_ipv4() => {
            let (k, lo) = ip_u128(*a);
            let (_, hi) = ip_u128(*b);
            Some((k, lo.min(hi), lo.max(hi)))
        }
        Value::Port(p) => Some((Kind::Port, u128::from(*p), u128::from(*p))),
        Value::PortRange(a, b) => Some((Kind::Port, u128::from(*a.min(b)), u128::from(*a.max(b)))),
        _ => None,
    }
}

fn merge(mut v: Vec<(u128, u128)>) -> Vec<(u128, u128)> {
    v.sort_unstable();
    let mut out: Vec<(u128, u128)> = Vec::with_capacity(v.len());
    for (lo, hi) in v {
        if let Some(last) = out.last_mut() {
            if lo <= last.1.saturating_add(1) {
                last.1 = last.1.max(hi);
                continue;
            }
        }
        out.push((lo, hi));
    }
    out
}

fn addr_interval_value(lo: IpAddr, hi: IpAddr) -> Value {
    if lo == hi {
        return Value::Addr(lo);
    }
    match as_prefix(lo, hi) {
        Some(net) => Value::Prefix(net),
        None => Value::AddrRange(lo, hi),
    }
}

/// The CIDR whose first and last addresses are `lo` and `hi`, if there is one.
fn as_prefix(lo: IpAddr, hi: IpAddr) -> Option<IpNet> {
    let (bits, a, b) = match (lo, hi) {
        (IpAddr::V4(a), IpAddr::V4(b)) => {
            (32u32, u128::from(u32::from(a)), u128::from(u32::from(b)))
        }
        (IpAddr::V6(a), IpAddr::V6(b)) => (128u32, u128::from(a), u128::from(b)),
        _ => return None,
    };
    if a > b {
        return None;
    }
    // host bits: the positions where lo has zeros and hi has ones, forming a low suffix.
    let diff = a ^ b;
    let host_bits = 128 - diff.leading_zeros();
    let mask = if host_bits == 128 {
        u128::MAX
    } else {
        (1u128 << host_bits) - 1
    };
    if a & mask != 0 || b & mask != mask {
        return None;
    }
    let len = (bits - host_bits) as u8;
    match lo {
        IpAddr::V4(a) => Ipv4Net::new(a, len).ok().map(IpNet::V4),
        IpAddr::V6(a) => Ipv6Net::new(a, len).ok().map(IpNet::V6),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ruleset::{KeyType, Set};

    fn v(s: &str) -> Value {
        if let Some((a, b)) = s.split_once('-') {
            if let (Ok(a), Ok(b)) = (a.parse(), b.parse()) {
                return Value::AddrRange(a, b);
            }
            return Value::PortRange(a.parse().unwrap(), b.parse().unwrap());
        }
        if s.contains('/') {
            return Value::Prefix(s.parse().unwrap());
        }
        match s.parse::<IpAddr>() {
            Ok(a) => Value::Addr(a),
            Err(_) => Value::Port(s.parse().unwrap()),
        }
    }

    fn interval_set(elems: &[&str]) -> BTreeSet<Vec<Value>> {
        let mut rs = Ruleset::default();
        rs.sets.insert(
            "s".into(),
            Set {
                key: vec![KeyType::Ipv4Addr],
                interval: true,
                elements: elems.iter().map(|e| vec![v(e)]).collect(),
                comment: Some("dropped".into()),
            },
        );
        canonicalize(&rs).sets["s"].elements.clone()
    }

    #[test]
    fn interval_sets_merge_like_nft_lists_them() {
        assert_eq!(
            interval_set(&["10.0.0.0/25", "10.0.0.128/25", "10.0.0.7"]),
            interval_set(&["10.0.0.0/24"])
        );
        assert_eq!(
            interval_set(&["10.0.0.0-10.0.0.255"]),
            [vec![v("10.0.0.0/24")]].into_iter().collect()
        );
        assert_eq!(
            interval_set(&["10.0.0.1/32", "10.0.0.3-10.0.0.3"]),
            [vec![v("10.0.0.1")], vec![v("10.0.0.3")]]
                .into_iter()
                .collect()
        );
        assert_eq!(
            interval_set(&["10.0.0.1-10.0.0.5", "10.0.0.5/24"]),
            [vec![v("10.0.0.0/24")]].into_iter().collect()
        );
        assert_eq!(
            interval_set(&["80", "81-90", "100-100"]),
            [vec![v("80-90")], vec![v("100")]].into_iter().collect()
        );
        assert_eq!(
            interval_set(&["::/0"]),
            [vec![v("::/0")]].into_iter().collect()
        );
    }

    #[test]
    fn prefix_detection() {
        let p = |a: &str, b: &str| as_prefix(a.parse().unwrap(), b.parse().unwrap());
        assert_eq!(
            p("10.0.0.0", "10.0.0.255"),
            Some("10.0.0.0/24".parse().unwrap())
        );
        assert_eq!(p("10.0.0.0", "10.0.1.127"), None);
        assert_eq!(
            p("0.0.0.0", "255.255.255.255"),
            Some("0.0.0.0/0".parse().unwrap())
        );
        assert_eq!(
            p("fd00::", "fd00::ffff"),
            Some("fd00::/112".parse().unwrap())
        );
    }

    #[test]
    fn nfproto_dependency_is_dropped_only_before_a_field_of_its_family() {
        let nf = |f| Match::Cmp {
            field: Field::NfProto,
            op: CmpOp::Eq,
            value: Value::NfProto(f),
        };
        let saddr = Match::Cmp {
            field: Field::SrcAddr(Family::Ipv4),
            op: CmpOp::Eq,
            value: v("10.0.0.1/32"),
        };
        let mut r = Rule::new(
            vec![nf(Family::Ipv4), saddr.clone()],
            crate::ruleset::Verdict::Accept,
        );
        canonicalize_rule(&mut r);
        assert_eq!(r.matches.len(), 1);
        assert_eq!(
            r.matches[0],
            Match::Cmp {
                field: Field::SrcAddr(Family::Ipv4),
                op: CmpOp::Eq,
                value: v("10.0.0.1")
            }
        );
        let mut r = Rule::new(
            vec![saddr, nf(Family::Ipv4)],
            crate::ruleset::Verdict::Accept,
        );
        canonicalize_rule(&mut r);
        assert_eq!(r.matches.len(), 2);
        let mut r = Rule::new(vec![nf(Family::Ipv6)], crate::ruleset::Verdict::Accept);
        canonicalize_rule(&mut r);
        assert_eq!(r.matches.len(), 1);
    }
}
