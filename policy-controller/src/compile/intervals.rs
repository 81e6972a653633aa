//! Interval arithmetic for interval sets. nftables refuses (or silently merges) overlapping
//! elements in a `flags interval` set and the dataplane renders elements as given, so the
//! compiler hands it disjoint, normalised elements: an `ipBlock` with `except` becomes the
//! CIDR minus the exceptions as a list of prefixes, and port ranges are merged per protocol.

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Inclusive ranges over u128, sorted and disjoint (adjacent ranges merged).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RangeSet {
    ranges: Vec<(u128, u128)>,
}

impl RangeSet {
    pub fn new() -> RangeSet {
        RangeSet::default()
    }

    pub fn ranges(&self) -> &[(u128, u128)] {
        &self.ranges
    }

    /// Add `[lo, hi]`, merging with overlapping or adjacent ranges.
    pub fn add(&mut self, lo: u128, hi: u128) {
        debug_assert!(lo <= hi);
        let mut out = Vec::with_capacity(self.ranges.len() + 1);
        let (mut lo, mut hi) = (lo, hi);
        let mut placed = false;
        for &(a, b) in &self.ranges {
            if b.saturating_add(1) < lo {
                out.push((a, b));
            } else if hi.saturating_add(1) < a {
                if !placed {
                    out.push((lo, hi));
                    placed = true;
                }
                out.push((a, b));
            } else {
                lo = lo.min(a);
                hi = hi.max(b);
            }
        }
        if !placed {
            out.push((lo, hi));
        }
        out.sort_unstable();
        self.ranges = out;
    }

    /// Remove `[lo, hi]`.
    pub fn remove(&mut self, lo: u128, hi: u128) {
        let mut out = Vec::with_capacity(self.ranges.len() + 1);
        for &(a, b) in &self.ranges {
            if b < lo || a > hi {
                out.push((a, b));
                continue;
            }
            if a < lo {
                out.push((a, lo - 1));
            }
            if b > hi {
                out.push((hi + 1, b));
            }
        }
        self.ranges = out;
    }

    pub fn contains(&self, x: u128) -> bool {
        self.ranges.iter().any(|&(a, b)| a <= x && x <= b)
    }
}

/// The address range a network covers (host bits ignored), as integers of its family.
pub fn net_range(net: &IpNet) -> (u128, u128) {
    let net = net.trunc();
    match net {
        IpNet::V4(n) => (
            u128::from(u32::from(n.network())),
            u128::from(u32::from(n.broadcast())),
        ),
        IpNet::V6(n) => (u128::from(n.network()), u128::from(n.broadcast())),
    }
}

/// `cidr` minus every `except` of the same family, as disjoint ranges.
pub fn block_ranges(cidr: &IpNet, except: &[IpNet]) -> RangeSet {
    let mut set = RangeSet::new();
    let (lo, hi) = net_range(cidr);
    set.add(lo, hi);
    for e in except {
        if e.addr().is_ipv4() == cidr.addr().is_ipv4() {
            let (lo, hi) = net_range(e);
            set.remove(lo, hi);
        }
    }
    set
}

/// Split a range into the fewest CIDR prefixes covering exactly it.
pub fn range_to_prefixes(lo: u128, hi: u128, v4: bool) -> Vec<IpNet> {
    let bits: u32 = if v4 { 32 } else { 128 };
    let mut out = Vec::new();
    let mut cur = lo;
    loop {
        // Largest aligned block starting at `cur` that does not pass `hi`.
        let align = if cur == 0 {
            bits
        } else {
            cur.trailing_zeros().min(bits)
        };
        let mut size_bits = align;
        while size_bits > 0 {
            let last = if size_bits == 128 {
                u128::MAX
            } else {
                cur + ((1u128 << size_bits) - 1)
            };
            if last <= hi && (size_bits < 128 || cur == 0) {
                break;
            }
            size_bits -= 1;
        }
        let prefix_len = (bits - size_bits) as u8;
        out.push(if v4 {
            IpNet::V4(Ipv4Net::new(Ipv4Addr::from(cur as u32), prefix_len).expect("prefix"))
        } else {
            IpNet::V6(Ipv6Net::new(Ipv6Addr::from(cur), prefix_len).expect("prefix"))
        });
        let last = if size_bits == 128 {
            u128::MAX
        } else {
            cur + ((1u128 << size_bits) - 1)
        };
        if last >= hi {
            break;
        }
        cur = last + 1;
    }
    out
}

/// The integer of an address in its family.
pub fn addr_u128(ip: &IpAddr) -> u128 {
    match ip {
        IpAddr::V4(a) => u128::from(u32::from(*a)),
        IpAddr::V6(a) => u128::from(*a),
    }
}

/// Merge inclusive port ranges into disjoint, sorted ones.
pub fn merge_port_ranges(mut ranges: Vec<(u16, u16)>) -> Vec<(u16, u16)> {
    ranges.sort_unstable();
    let mut out: Vec<(u16, u16)> = Vec::with_capacity(ranges.len());
    for (a, b) in ranges {
        match out.last_mut() {
            Some(last) if u32::from(a) <= u32::from(last.1) + 1 => last.1 = last.1.max(b),
            _ => out.push((a, b)),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nets(s: &[&str]) -> Vec<IpNet> {
        s.iter().map(|x| x.parse().unwrap()).collect()
    }

    #[test]
    fn cidr_minus_excepts() {
        let cidr: IpNet = "10.0.0.0/24".parse().unwrap();
        let r = block_ranges(
            &cidr,
            &nets(&["10.0.0.128/25", "10.0.0.5/32", "192.168.0.0/16"]),
        );
        let mut prefixes = Vec::new();
        for &(lo, hi) in r.ranges() {
            prefixes.extend(range_to_prefixes(lo, hi, true));
        }
        assert_eq!(
            prefixes,
            nets(&[
                "10.0.0.0/30",
                "10.0.0.4/32",
                "10.0.0.6/31",
                "10.0.0.8/29",
                "10.0.0.16/28",
                "10.0.0.32/27",
                "10.0.0.64/26"
            ])
        );
    }

    #[test]
    fn whole_space_and_overlapping_excepts() {
        let all4: IpNet = "0.0.0.0/0".parse().unwrap();
        let r = block_ranges(&all4, &nets(&["10.0.0.0/8", "10.1.0.0/16"]));
        assert_eq!(r.ranges().len(), 2);
        assert!(!r.contains(u128::from(u32::from(Ipv4Addr::new(10, 1, 2, 3)))));
        assert!(r.contains(u128::from(u32::from(Ipv4Addr::new(11, 0, 0, 0)))));
        let all6: IpNet = "::/0".parse().unwrap();
        let r = block_ranges(&all6, &[]);
        assert_eq!(
            range_to_prefixes(r.ranges()[0].0, r.ranges()[0].1, false),
            vec![all6]
        );
        assert_eq!(
            range_to_prefixes(0, u128::from(u32::MAX), true),
            vec!["0.0.0.0/0".parse::<IpNet>().unwrap()]
        );
    }

    #[test]
    fn prefixes_cover_exactly_the_range() {
        for (lo, hi) in [
            (1u128, 1u128),
            (3, 17),
            (0, 255),
            (255, 256),
            (7, 4_000_000),
        ] {
            let ps = range_to_prefixes(lo, hi, true);
            let mut covered = RangeSet::new();
            for p in &ps {
                let (a, b) = net_range(p);
                covered.add(a, b);
            }
            assert_eq!(covered.ranges(), &[(lo, hi)], "{ps:?}");
        }
    }

    #[test]
    fn port_ranges_merge() {
        assert_eq!(
            merge_port_ranges(vec![(80, 80), (81, 90), (85, 100), (200, 300), (1, 2)]),
            vec![(1, 2), (80, 100), (200, 300)]
        );
        assert_eq!(
            merge_port_ranges(vec![(0, 65535), (5, 6)]),
            vec![(0, 65535)]
        );
    }
}
