//! Address allocation over an [`IpamState`]: pure, no I/O.
//!
//! One address per range set. Within a set, ranges are walked in order starting right after
//! the set's last reserved address and wrapping around (host-local's round-robin), so an
//! address freed a moment ago is not handed to the next pod at once: stale conntrack entries
//! or a peer's cached endpoint would otherwise reach the wrong pod.

use super::store::{AttachmentRecord, IpamState};
use crate::config::{ip_to_u128, u128_to_ip, Attachment, Range, RangeSet};
use crate::error::{CniError, Result};
use ipnet::IpNet;
use std::collections::HashSet;
use std::net::IpAddr;

/// Reserve one address per range set for `att`, or return the addresses it already holds
/// (a repeated ADD gets the same result). The record carries the host veth name so DEL/GC can
/// find the link even if ADD crashes right after this.
pub fn reserve(
    state: &mut IpamState,
    range_sets: &[RangeSet],
    att: &Attachment,
    host_ifname: &str,
) -> Result<Vec<IpAddr>> {
    if let Some(rec) = state.find(&att.container_id, &att.ifname) {
        return Ok(rec.ips.clone());
    }
    let mut used: HashSet<IpAddr> = state
        .attachments
        .iter()
        .flat_map(|a| a.ips.iter().copied())
        .collect();
    let mut ips = Vec::with_capacity(range_sets.len());
    for (i, set) in range_sets.iter().enumerate() {
        let key = i.to_string();
        let ip =
            next_free(set, state.last_reserved.get(&key).copied(), &used).ok_or_else(|| {
                CniError::IpamExhausted {
                    set: i,
                    ranges: describe(set),
                }
            })?;
        used.insert(ip);
        state.last_reserved.insert(key, ip);
        ips.push(ip);
    }
    state.attachments.push(AttachmentRecord {
        container_id: att.container_id.clone(),
        ifname: att.ifname.clone(),
        host_ifname: host_ifname.to_string(),
        ips: ips.clone(),
        delegated: false,
    });
    Ok(ips)
}

/// Free the addresses of `att` (nothing to do if it holds none).
pub fn release(state: &mut IpamState, att: &Attachment) -> Option<AttachmentRecord> {
    state.remove(&att.container_id, &att.ifname)
}

/// Whether some range set has no free address left (STATUS reports it).
pub fn exhausted_sets(state: &IpamState, range_sets: &[RangeSet]) -> Vec<usize> {
    let used: HashSet<IpAddr> = state
        .attachments
        .iter()
        .flat_map(|a| a.ips.iter().copied())
        .collect();
    range_sets
        .iter()
        .enumerate()
        .filter(|(i, set)| {
            next_free(set, state.last_reserved.get(&i.to_string()).copied(), &used).is_none()
        })
        .map(|(i, _)| i)
        .collect()
}

fn describe(set: &RangeSet) -> String {
    set.iter()
        .map(|r| format!("{}-{}", r.start, r.end))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Addresses a range may never hand out even inside [start, end].
fn forbidden(range: &Range, ip: IpAddr) -> bool {
    let net = range.subnet;
    ip == net.network()
        || (matches!(net, IpNet::V4(_)) && ip == net.broadcast())
        || Some(ip) == range.gateway
}

/// The first free address after `last` (or from the start when `last` is in no range),
/// walking the set's ranges in order and wrapping around once.
fn next_free(set: &RangeSet, last: Option<IpAddr>, used: &HashSet<IpAddr>) -> Option<IpAddr> {
    // Where to start: the range holding `last`, just after it.
    let (start_range, start_at) = last
        .and_then(|l| {
            let n = ip_to_u128(l);
            set.iter()
                .position(|r| {
                    ip_to_u128(r.start) <= n
                        && n <= ip_to_u128(r.end)
                        && r.start.is_ipv4() == l.is_ipv4()
                })
                .map(|i| (i, n.checked_add(1)))
        })
        .unwrap_or((0, None));
    // Walk: the tail of the start range, the other ranges in order, then the head of the
    // start range up to and including `last`.
    let k = set.len();
    for step in 0..=k {
        let idx = (start_range + step) % k;
        let r = &set[idx];
        let (lo, hi) = (ip_to_u128(r.start), ip_to_u128(r.end));
        let (from, to) = match (step, start_at) {
            (0, Some(s)) => (s, hi),
            (s, Some(first)) if s == k => (lo, first.saturating_sub(1).min(hi)),
            (s, None) if s == k => break,
            _ => (lo, hi),
        };
        let mut n = from;
        while n <= to && n >= lo {
            let ip = u128_to_ip(n, r.start.is_ipv4());
            if !forbidden(r, ip) && !used.contains(&ip) {
                return Some(ip);
            }
            match n.checked_add(1) {
                Some(x) => n = x,
                None => break,
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(subnet: &str, start: Option<&str>, end: Option<&str>, gw: Option<&str>) -> Range {
        let subnet: IpNet = subnet.parse().unwrap();
        let (first, last) = crate::config::usable_bounds(&subnet).unwrap();
        Range {
            subnet,
            start: start.map(|s| s.parse().unwrap()).unwrap_or(first),
            end: end.map(|s| s.parse().unwrap()).unwrap_or(last),
            gateway: gw.map(|s| s.parse().unwrap()),
        }
    }

    fn att(cid: &str) -> Attachment {
        Attachment {
            container_id: cid.into(),
            ifname: "eth0".into(),
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn allocates_in_order_skipping_network_and_gateway() {
        let sets = vec![vec![range("10.0.0.0/29", None, None, Some("10.0.0.1"))]];
        let mut st = IpamState::default();
        let got: Vec<_> = (0..5)
            .map(|i| reserve(&mut st, &sets, &att(&format!("c{i}")), "h").unwrap()[0])
            .collect();
        assert_eq!(
            got,
            ["10.0.0.2", "10.0.0.3", "10.0.0.4", "10.0.0.5", "10.0.0.6"].map(ip)
        );
        // .0 network, .1 gateway, .7 broadcast: exhausted now.
        let e = reserve(&mut st, &sets, &att("c9"), "h").unwrap_err();
        assert_eq!(e.code(), 101);
        assert_eq!(exhausted_sets(&st, &sets), vec![0]);
    }

    #[test]
    fn explicit_range_start_and_end_are_honoured() {
        let sets = vec![vec![range(
            "10.0.0.0/24",
            Some("10.0.0.10"),
            Some("10.0.0.11"),
            None,
        )]];
        let mut st = IpamState::default();
        assert_eq!(
            reserve(&mut st, &sets, &att("a"), "h").unwrap(),
            vec![ip("10.0.0.10")]
        );
        assert_eq!(
            reserve(&mut st, &sets, &att("b"), "h").unwrap(),
            vec![ip("10.0.0.11")]
        );
        assert!(reserve(&mut st, &sets, &att("c"), "h").is_err());
    }

    #[test]
    fn a_just_freed_address_is_not_handed_out_again_at_once() {
        let sets = vec![vec![range("10.0.0.0/28", None, None, None)]];
        let mut st = IpamState::default();
        let a = reserve(&mut st, &sets, &att("a"), "h").unwrap()[0];
        release(&mut st, &att("a")).unwrap();
        let b = reserve(&mut st, &sets, &att("b"), "h").unwrap()[0];
        assert_ne!(a, b);
        assert_eq!(b, ip("10.0.0.2"));
        // Wraps around to the freed address only after the rest is taken.
        let rest: Vec<_> = (0..13)
            .map(|i| reserve(&mut st, &sets, &att(&format!("r{i}")), "h").unwrap()[0])
            .collect();
        assert_eq!(*rest.last().unwrap(), ip("10.0.0.1"));
        assert!(!rest[..12].contains(&a));
    }

    #[test]
    fn a_repeated_add_returns_the_same_addresses() {
        let sets = vec![
            vec![range("10.0.0.0/24", None, None, None)],
            vec![range("fd00::/64", None, None, None)],
        ];
        let mut st = IpamState::default();
        let first = reserve(&mut st, &sets, &att("a"), "pal1").unwrap();
        let again = reserve(&mut st, &sets, &att("a"), "pal1").unwrap();
        assert_eq!(first, again);
        assert_eq!(st.attachments.len(), 1);
        assert_eq!(st.attachments[0].host_ifname, "pal1");
    }

    #[test]
    fn dual_stack_takes_one_address_per_set() {
        let sets = vec![
            vec![range("10.0.0.0/24", None, None, None)],
            vec![range("fd00:10::/64", None, None, None)],
        ];
        let mut st = IpamState::default();
        let ips = reserve(&mut st, &sets, &att("a"), "h").unwrap();
        assert_eq!(ips, vec![ip("10.0.0.1"), ip("fd00:10::1")]);
        let ips = reserve(&mut st, &sets, &att("b"), "h").unwrap();
        assert_eq!(ips, vec![ip("10.0.0.2"), ip("fd00:10::2")]);
    }

    #[test]
    fn several_ranges_in_a_set_are_walked_in_order() {
        let sets = vec![vec![
            range("10.0.0.0/30", None, None, None),
            range("10.0.1.0/30", None, None, None),
        ]];
        let mut st = IpamState::default();
        let got: Vec<_> = (0..4)
            .map(|i| reserve(&mut st, &sets, &att(&format!("c{i}")), "h").unwrap()[0])
            .collect();
        assert_eq!(
            got,
            ["10.0.0.1", "10.0.0.2", "10.0.1.1", "10.0.1.2"].map(ip)
        );
        assert!(reserve(&mut st, &sets, &att("x"), "h").is_err());
        release(&mut st, &att("c1"));
        assert_eq!(
            reserve(&mut st, &sets, &att("y"), "h").unwrap(),
            vec![ip("10.0.0.2")]
        );
    }

    #[test]
    fn a_last_reserved_outside_the_ranges_restarts_from_the_beginning() {
        let sets = vec![vec![range("10.0.0.0/24", None, None, None)]];
        let mut st = IpamState::default();
        st.last_reserved.insert("0".into(), ip("192.168.0.1"));
        assert_eq!(
            reserve(&mut st, &sets, &att("a"), "h").unwrap(),
            vec![ip("10.0.0.1")]
        );
    }

    #[test]
    fn a_failed_reservation_changes_nothing() {
        let sets = vec![
            vec![range("10.0.0.0/24", None, None, None)],
            vec![range("10.1.0.0/30", None, None, None)],
        ];
        let mut st = IpamState::default();
        reserve(&mut st, &sets, &att("a"), "h").unwrap();
        reserve(&mut st, &sets, &att("b"), "h").unwrap();
        let before = st.attachments.clone();
        assert!(reserve(&mut st, &sets, &att("c"), "h").is_err());
        assert_eq!(st.attachments, before);
    }
}
