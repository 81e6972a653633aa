//! rtnetlink: datagrams of dump replies (links, addresses, routes, neighbours, forwarding
//! entries), decoded as the plugin's and the agent's dumps decode them
//! (`palisade_kernel::rtnl::decode_datagram`: the socket's framing, then
//! `netlink-packet-route`, then our conversions).
//!
//! Input: one datagram (seeds: dump replies captured from the kernel in a test netns with
//! veths, a VXLAN device, addresses, routes and neighbours).
//!
//! Properties: no panic; a decoded address's prefix fits its family.

#![no_main]

use libfuzzer_sys::fuzz_target;
use palisade_kernel::rtnl::{decode_datagram, Decoded};

fuzz_target!(|data: &[u8]| {
    let Ok(decoded) = decode_datagram(data) else {
        return;
    };
    for d in decoded {
        if let Decoded::Address(_, net) = d {
            assert!(net.prefix_len() <= net.max_prefix_len());
        }
    }
});
