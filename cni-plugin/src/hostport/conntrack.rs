//! After ADD of a UDP mapping, the conntrack entries of earlier UDP flows to that host port
//! are forgotten.
//!
//! A client that sent to the port before the mapping existed created an entry without DNAT
//! (the packet went to the node itself); as long as it keeps sending from the same source
//! port that entry is refreshed and its packets never reach the pod. TCP does not need this
//! (a new connection is a new entry). The portmap plugin does the same. Done over ctnetlink
//! in-process (one dump for every family and port, then one delete per match): the
//! `conntrack` tool costs a process and a full table walk per port and family.

use super::entries::Entry;
use palisade_kernel::nftables::Nfnl;

/// Best effort: on failure the mapping still works for new flows.
pub fn forget_udp_flows(nf: &mut Nfnl, published: &[&Entry]) {
    let flows: Vec<_> = published.iter().filter_map(|e| e.udp_flows()).collect();
    if !flows.is_empty() {
        let _ = nf.forget_udp_flows(&flows);
    }
}
