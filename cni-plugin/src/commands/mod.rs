//! The CNI commands, each a small function over the validated environment and config.

pub mod add;
pub mod check;
pub mod del;
pub mod gc;
pub mod status;

use crate::error::{CniError, Result};
use palisade_kernel::rtnl::{Link, Rtnl};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// The pod's IPv4 gateway: link-local, resolved through a permanent neighbour entry.
pub const GATEWAY_V4: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);
/// The pod's IPv6 gateway, configured `nodad` on the host veth.
pub const GATEWAY_V6: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1);

/// Environment variable naming an ADD step at which to `abort()` (tests of crash safety).
pub const CRASH_ENV: &str = "PALISADE_TEST_CRASH_AT";

/// The named ADD steps, in order (documented in README.md, "Testing hooks").
pub const ADD_STEPS: [&str; 8] = [
    "ipam-reserved",
    "veth-created",
    "host-sysctls",
    "pod-addresses",
    "pod-routes",
    "host-routes",
    "hostport",
    "agent",
];

/// The one DEL step: in the detached process of `teardown`, before it deletes the pair (as
/// if it were killed before doing its work).
pub const TEARDOWN_STEP: &str = "veth-teardown";

/// Abort the process, exactly like a `kill -9` would stop it, if the tests asked for a crash
/// right after `step`.
pub fn crash_point(step: &str) {
    debug_assert!(
        ADD_STEPS.contains(&step) || step == TEARDOWN_STEP,
        "undocumented crash step {step}"
    );
    if std::env::var_os(CRASH_ENV).is_some_and(|v| v == step) {
        eprintln!("palisade: {CRASH_ENV}={step}: aborting");
        std::process::abort();
    }
}

/// The pod's addresses as (address/32 or /128).
pub fn host_prefix(ip: IpAddr) -> ipnet::IpNet {
    ipnet::IpNet::new(ip, if ip.is_ipv4() { 32 } else { 128 }).expect("valid prefix")
}

/// Look up a link that must exist.
pub fn require_link(sock: &mut Rtnl, name: &str, where_: &str) -> Result<Link> {
    sock.link(name)?.ok_or_else(|| {
        CniError::LinkConflict(format!("link {name} vanished from the {where_} netns"))
    })
}

/// Log a non-fatal problem (stderr is free-form per the spec).
pub fn warn(msg: impl std::fmt::Display) {
    eprintln!("palisade: {msg}");
}
