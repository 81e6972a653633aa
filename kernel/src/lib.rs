//! Palisade's one kernel layer, used by the CNI plugin and the node agent alike:
//!
//! - [`netns`]: the one handle on a network namespace, and the one way to run work inside
//!   one (a scoped thread that entered it);
//! - [`netlink`]: the one synchronous netlink socket, carrying `netlink-packet-*` messages,
//!   with the kernel's extended-ack text kept in errors;
//! - [`rtnl`]: links (veth born in the pod namespace), addresses, routes, neighbours;
//! - [`nftables`]: typed set and map elements and their batches, table questions;
//! - [`conntrack`]: forgetting the flows a new DNAT must catch;
//! - [`nflog`]: the packets nftables logs to a group (the agent's denied-packet log).
//!
//! No async runtime: the plugin's start-up time matters, and the agent calls in from a
//! blocking section.

pub mod conntrack;
pub mod netlink;
pub mod netns;
pub mod nflog;
pub mod nftables;
pub mod rtnl;

pub use netlink::Error;
pub use netns::{Netns, NetnsError};
