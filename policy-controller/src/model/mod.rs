//! Cluster state as the policy compiler sees it: pods, namespaces, policies and nodes,
//! normalised from the API objects in [`api`]. Pure data, no I/O.

pub mod api;
pub mod selector;
pub mod validate;

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;

pub use api::Labels;

/// L4 protocols NetworkPolicy knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Protocol {
    #[serde(rename = "TCP")]
    Tcp,
    #[serde(rename = "UDP")]
    Udp,
    #[serde(rename = "SCTP")]
    Sctp,
}

impl Protocol {
    /// IANA protocol number, as matched by `meta l4proto`.
    pub fn number(self) -> u8 {
        match self {
            Protocol::Tcp => 6,
            Protocol::Udp => 17,
            Protocol::Sctp => 132,
        }
    }

    pub fn from_number(n: u8) -> Option<Protocol> {
        match n {
            6 => Some(Protocol::Tcp),
            17 => Some(Protocol::Udp),
            132 => Some(Protocol::Sctp),
            _ => None,
        }
    }

    /// Parse the API's spelling (`TCP`, `UDP`, `SCTP`); `None` means the API default, TCP.
    pub fn parse_api(s: Option<&str>) -> Option<Protocol> {
        match s {
            None | Some("TCP") => Some(Protocol::Tcp),
            Some("UDP") => Some(Protocol::Udp),
            Some("SCTP") => Some(Protocol::Sctp),
            _ => None,
        }
    }

    pub fn all() -> [Protocol; 3] {
        [Protocol::Tcp, Protocol::Udp, Protocol::Sctp]
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
            Protocol::Sctp => "SCTP",
        })
    }
}

/// `namespace/name` of a namespaced object.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ObjectKey {
    pub namespace: String,
    pub name: String,
}

impl ObjectKey {
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        ObjectKey {
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// A port a pod declares with a name, from a container or a sidecar init container.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct NamedPort {
    pub name: String,
    pub port: u16,
    pub protocol: Protocol,
}

/// What policy needs to know of a pod.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodInfo {
    pub key: ObjectKey,
    pub node: Option<String>,
    pub labels: Labels,
    /// Empty until the pod has IPs (from the runtime via the CNI socket, or `status.podIPs`).
    pub ips: Vec<IpAddr>,
    pub host_network: bool,
    /// Deleted (deletionTimestamp set) or finished (phase Succeeded/Failed).
    pub terminating: bool,
    pub named_ports: Vec<NamedPort>,
}

impl PodInfo {
    /// Normalise an API Pod: IPs from `status.podIPs` (or `podIP`), named ports from every
    /// container and from init containers with `restartPolicy: Always` (sidecars).
    pub fn from_api(pod: &api::Pod) -> PodInfo {
        let mut ips: Vec<IpAddr> = pod
            .status
            .pod_ips
            .iter()
            .filter_map(|p| p.ip.parse().ok())
            .collect();
        if ips.is_empty() {
            if let Some(ip) = pod.status.pod_ip.as_deref().and_then(|s| s.parse().ok()) {
                ips.push(ip);
            }
        }
        let sidecars = pod
            .spec
            .init_containers
            .iter()
            .filter(|c| c.restart_policy.as_deref() == Some("Always"));
        let mut named_ports = Vec::new();
        for c in pod.spec.containers.iter().chain(sidecars) {
            for p in &c.ports {
                let (Some(name), Ok(port), Some(protocol)) = (
                    p.name.as_ref(),
                    u16::try_from(p.container_port),
                    Protocol::parse_api(p.protocol.as_deref()),
                ) else {
                    continue;
                };
                named_ports.push(NamedPort {
                    name: name.clone(),
                    port,
                    protocol,
                });
            }
        }
        let phase = pod.status.phase.as_deref();
        PodInfo {
            key: ObjectKey::new(&pod.metadata.namespace, &pod.metadata.name),
            node: pod.spec.node_name.clone(),
            labels: pod.metadata.labels.clone(),
            ips,
            host_network: pod.spec.host_network,
            terminating: pod.metadata.deletion_timestamp.is_some()
                || matches!(phase, Some("Succeeded") | Some("Failed")),
            named_ports,
        }
    }

    /// The port number a named port resolves to on this pod for a protocol, if declared.
    pub fn resolve_named_port(&self, name: &str, protocol: Protocol) -> Option<u16> {
        self.named_ports
            .iter()
            .find(|p| p.name == name && p.protocol == protocol)
            .map(|p| p.port)
    }
}

/// What policy needs to know of a node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    pub name: String,
    pub internal_ips: Vec<IpAddr>,
    pub pod_cidrs: Vec<ipnet::IpNet>,
}

impl NodeInfo {
    pub fn from_api(node: &api::Node) -> NodeInfo {
        let mut pod_cidrs: Vec<ipnet::IpNet> = node
            .spec
            .pod_cidrs
            .iter()
            .filter_map(|c| c.parse().ok())
            .collect();
        if pod_cidrs.is_empty() {
            pod_cidrs.extend(
                node.spec
                    .pod_cidr
                    .as_deref()
                    .and_then(|c| c.parse::<ipnet::IpNet>().ok()),
            );
        }
        NodeInfo {
            name: node.metadata.name.clone(),
            internal_ips: node
                .status
                .addresses
                .iter()
                .filter(|a| a.kind == "InternalIP")
                .filter_map(|a| a.address.parse().ok())
                .collect(),
            pod_cidrs,
        }
    }
}

/// Everything the compiler reads. Policies held here have passed validation
/// (`compile::validate`); invalid ones are reported and kept out by whoever fills this.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClusterState {
    /// Namespace name → its labels (always including `kubernetes.io/metadata.name`).
    pub namespaces: BTreeMap<String, Labels>,
    pub pods: BTreeMap<ObjectKey, PodInfo>,
    pub policies: BTreeMap<ObjectKey, api::NetworkPolicy>,
    pub nodes: BTreeMap<String, NodeInfo>,
}

impl ClusterState {
    /// Insert a namespace, adding the immutable `kubernetes.io/metadata.name` label as the API
    /// server does.
    pub fn upsert_namespace(&mut self, name: &str, mut labels: Labels) {
        labels.insert("kubernetes.io/metadata.name".into(), name.into());
        self.namespaces.insert(name.into(), labels);
    }
}
