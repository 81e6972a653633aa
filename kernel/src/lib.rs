//! Palisade's one kernel layer, used by the CNI plugin and the node agent alike:
//!
//! - [`netns`]: the one handle on a network namespace, and the one way to run work inside
//!   one (a scoped thread that entered it);
//! - [`netlink`]: the one synchronous netlink socket, carrying `netlink-packet-*` messages,
//!   with the kernel's extended-ack text kept in errors;
//! - [`rtnl`]: links (veth born in the pod namespace), addresses, routes, neighbours.
//!
//! No async runtime: the plugin's start-up time matters, and the agent calls in from a
//! blocking section.

pub mod netlink;
pub mod netns;
pub mod rtnl;

pub use netlink::Error;
pub use netns::{Netns, NetnsError};
