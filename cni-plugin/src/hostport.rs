//! hostPort: DNAT from the node to pods, in the plugin's own nftables table
//! `inet palisade-hostport` (see DESIGN.md "hostPort"). Owned by the hostport helper.

use std::net::IpAddr;
use std::path::Path;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Proto {
    Tcp,
    Udp,
    Sctp,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PortMapping {
    pub host_port: u16,
    pub container_port: u16,
    pub protocol: Proto,
    pub host_ip: Option<IpAddr>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPortError {
    pub msg: String,
    pub details: String,
}

impl std::fmt::Display for HostPortError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.msg, self.details)
    }
}

/// Parse `runtimeConfig.portMappings` (libcni's lower-case keys or CRI's capitalised ones).
pub fn parse_port_mappings(_v: &serde_json::Value) -> Result<Vec<PortMapping>, HostPortError> {
    Err(unimplemented_err())
}

/// Program the mappings of one attachment (idempotent: replaces what it had).
pub fn add(
    _data_dir: &Path,
    _container_id: &str,
    _ifname: &str,
    _pod_ips: &[IpAddr],
    _mappings: &[PortMapping],
) -> Result<(), HostPortError> {
    Err(unimplemented_err())
}

/// Remove every mapping of one attachment (idempotent).
pub fn del(_data_dir: &Path, _container_id: &str, _ifname: &str) -> Result<(), HostPortError> {
    Err(unimplemented_err())
}

/// Verify the mappings of one attachment are programmed as given.
pub fn check(
    _data_dir: &Path,
    _container_id: &str,
    _ifname: &str,
    _pod_ips: &[IpAddr],
    _mappings: &[PortMapping],
) -> Result<(), HostPortError> {
    Err(unimplemented_err())
}

/// Remove the mappings of every attachment of this network not in `valid`
/// ((container ID, ifname) pairs).
pub fn gc(_data_dir: &Path, _valid: &[(String, String)]) -> Result<(), HostPortError> {
    Err(unimplemented_err())
}

fn unimplemented_err() -> HostPortError {
    HostPortError { msg: "hostPort not implemented yet".into(), details: String::new() }
}
