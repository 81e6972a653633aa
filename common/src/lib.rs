//! What the CNI plugin (`palisade`) and the node agent (`palisade-agent`) must agree on.
//!
//! Kept tiny on purpose: names of kernel objects each side owns, default paths, and the
//! messages on the unix socket through which the plugin announces a new pod during ADD (see
//! `DESIGN.md`, "New pods are isolated before their first packet").

use serde::{Deserialize, Serialize};
use std::net::IpAddr;

/// The nftables table owned by the agent (family `inet`). Nobody else writes it.
pub const POLICY_TABLE: &str = "palisade";
/// The nftables table owned by the CNI plugin for hostPort DNAT (family `inet`).
pub const HOSTPORT_TABLE: &str = "palisade-hostport";
/// Every node-side pod veth starts with this prefix. The agent's table drops forwarded
/// traffic towards such an interface when the destination IP is not programmed yet, which
/// makes a new pod fail-closed for ingress until the agent knows it.
pub const HOST_VETH_PREFIX: &str = "pal";
/// Default path of the agent's unix socket on the node.
pub const DEFAULT_AGENT_SOCKET: &str = "/run/palisade/agent.sock";
/// Default IPAM state directory of the plugin on the node (`ipam.dataDir`).
pub const DEFAULT_IPAM_DATA_DIR: &str = "/var/lib/cni/palisade";
/// Default link-local gateway the pod routes through (IPv4).
pub const GATEWAY_V4: &str = "169.254.1.1";
/// Default link-local gateway the pod routes through (IPv6), configured on the node veth.
pub const GATEWAY_V6: &str = "fe80::1";

/// A hash of `parts` (concatenated) that every build, release and machine computes alike:
/// FNV-1a 64 (std's hasher makes no such promise). For names and addresses derived from
/// what they stand for: veth names, chain names, overlay MAC addresses.
pub fn stable_hash(parts: &[&[u8]]) -> u64 {
    use std::hash::Hasher;
    let mut h = fnv::FnvHasher::default();
    for p in parts {
        h.write(p);
    }
    h.finish()
}

/// Node-side veth name for a (container ID, ifname) attachment: the prefix followed by 11 hex
/// digits of a stable hash, 14 characters in all (the kernel allows 15).
pub fn host_veth_name(container_id: &str, ifname: &str) -> String {
    let h = stable_hash(&[container_id.as_bytes(), &[0], ifname.as_bytes()]);
    format!("{HOST_VETH_PREFIX}{:011x}", h & 0x0fff_ffff_ffff)
}

/// A request from the CNI plugin to the agent: one JSON object per line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "camelCase")]
pub enum AgentRequest {
    /// A pod got these IPs on this node (during CNI ADD). The agent answers once the pod is
    /// programmed (its policies in force), or with an error.
    #[serde(rename_all = "camelCase")]
    PodAdded {
        namespace: String,
        name: String,
        container_id: String,
        host_ifname: String,
        ips: Vec<IpAddr>,
    },
    /// The attachment is gone (CNI DEL). Informational: the watch is the source of truth.
    #[serde(rename_all = "camelCase")]
    PodDeleted {
        container_id: String,
        ips: Vec<IpAddr>,
    },
    /// Is the agent ready (first full sync programmed)? Used by CNI STATUS.
    Status,
}

/// The agent's answer to an [`AgentRequest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AgentResponse {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Whether the agent has programmed its first full sync.
    #[serde(default)]
    pub ready: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_veth_names_fit_the_kernel_and_are_stable() {
        let a = host_veth_name("abc", "eth0");
        assert_eq!(a.len(), 14);
        assert!(a.starts_with(HOST_VETH_PREFIX));
        assert_eq!(a, host_veth_name("abc", "eth0"));
        assert_ne!(a, host_veth_name("abc", "eth1"));
        assert_ne!(a, host_veth_name("abd", "eth0"));
        // Pinned: pods wired by an older plugin keep their names.
        assert_eq!(a, "palae81be81b20");
    }

    #[test]
    fn requests_round_trip_as_tagged_json() {
        let r = AgentRequest::PodAdded {
            namespace: "x".into(),
            name: "a".into(),
            container_id: "c1".into(),
            host_ifname: "pal0".into(),
            ips: vec!["10.244.1.5".parse().unwrap()],
        };
        let s = serde_json::to_string(&r).unwrap();
        assert!(s.contains(r#""op":"podAdded""#), "{s}");
        assert_eq!(serde_json::from_str::<AgentRequest>(&s).unwrap(), r);
    }
}
