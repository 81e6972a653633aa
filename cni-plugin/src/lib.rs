//! The Palisade CNI plugin (`palisade`) as a library: the binary (`main.rs`) calls
//! [`cli::run`], and the tests use the modules directly.
//!
//! - [`cli`]: env + stdin → command → result or error JSON, in one place;
//! - [`config`], [`types`], [`version`]: the network configuration, the CNI result types and
//!   version negotiation;
//! - [`commands`]: ADD, DEL, CHECK, GC, STATUS, each over the parsed config;
//! - [`ipam`]: the allocator, its on-disk store and delegation to an IPAM plugin;
//! - [`hostport`]: hostPort DNAT in the plugin's own nftables table;
//! - [`log`]: the optional log file (`logFile`, `logLevel`);
//! - [`agent`]: the unix socket to the node agent; [`sysctl`], [`teardown`]: small kernel
//!   chores. Links, addresses, routes, neighbours and namespaces are `palisade_kernel`'s.

pub mod agent;
pub mod cli;
pub mod commands;
pub mod config;
pub mod error;
pub mod hostport;
pub mod ipam;
pub mod lock;
pub mod log;
pub mod sysctl;
pub mod teardown;
pub mod types;
pub mod version;
