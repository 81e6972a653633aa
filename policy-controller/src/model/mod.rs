//! Cluster state as the policy compiler sees it: pods, namespaces, policies and nodes,
//! normalised from the API objects in [`api`]. Pure data, no I/O.

pub mod api;
pub mod policy;
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

/// An immutable, cheaply cloned string: object keys are copied into the index, the cluster
/// state, every selection that holds the pod and the dispatch bookkeeping, and each copy of
/// a `String` would be its own allocation. Namespace names are also interned (there are few
/// of them and every pod repeats one).
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Name(std::sync::Arc<str>);

impl Name {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The shared copy of a namespace name.
    pub fn interned(s: &str) -> Name {
        use std::collections::HashSet;
        use std::sync::{Arc, Mutex};
        static POOL: Mutex<Option<HashSet<Arc<str>>>> = Mutex::new(None);
        let mut pool = POOL.lock().unwrap_or_else(|e| e.into_inner());
        let pool = pool.get_or_insert_with(HashSet::new);
        if let Some(found) = pool.get(s) {
            return Name(found.clone());
        }
        let arc: Arc<str> = Arc::from(s);
        pool.insert(arc.clone());
        Name(arc)
    }
}

impl std::ops::Deref for Name {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl std::borrow::Borrow<str> for Name {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for Name {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<&str> for Name {
    fn from(s: &str) -> Name {
        Name(s.into())
    }
}

impl From<String> for Name {
    fn from(s: String) -> Name {
        Name(s.into())
    }
}

impl From<&String> for Name {
    fn from(s: &String) -> Name {
        Name(s.as_str().into())
    }
}

impl From<Name> for String {
    fn from(n: Name) -> String {
        n.0.to_string()
    }
}

impl PartialEq<str> for Name {
    fn eq(&self, other: &str) -> bool {
        &*self.0 == other
    }
}

impl PartialEq<&str> for Name {
    fn eq(&self, other: &&str) -> bool {
        &*self.0 == *other
    }
}

impl PartialEq<String> for Name {
    fn eq(&self, other: &String) -> bool {
        &*self.0 == other.as_str()
    }
}

impl PartialEq<Name> for str {
    fn eq(&self, other: &Name) -> bool {
        self == &*other.0
    }
}

impl PartialEq<Name> for &str {
    fn eq(&self, other: &Name) -> bool {
        *self == &*other.0
    }
}

impl PartialEq<Name> for String {
    fn eq(&self, other: &Name) -> bool {
        self.as_str() == &*other.0
    }
}

impl Serialize for Name {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Name {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Name, D::Error> {
        String::deserialize(d).map(Name::from)
    }
}

/// `namespace/name` of a namespaced object.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ObjectKey {
    pub namespace: Name,
    pub name: Name,
}

impl ObjectKey {
    pub fn new(namespace: impl AsRef<str>, name: impl Into<Name>) -> Self {
        ObjectKey {
            namespace: Name::interned(namespace.as_ref()),
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

    /// The port numbers a named port resolves to on this pod for a protocol. Usually one;
    /// several when a sidecar and a container each declare the name (names are unique per
    /// container only): each of them is the named port, as in Calico and
    /// kube-network-policies.
    pub fn named_port_numbers<'a>(
        &'a self,
        name: &'a str,
        protocol: Protocol,
    ) -> impl Iterator<Item = u16> + 'a {
        self.named_ports
            .iter()
            .filter(move |p| p.name == name && p.protocol == protocol)
            .map(|p| p.port)
    }
}

/// What policy (and the agent's routes) need to know of a node.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    pub name: String,
    /// `InternalIP` addresses: where the routes to the node's pod CIDRs point.
    pub internal_ips: Vec<IpAddr>,
    pub pod_cidrs: Vec<ipnet::IpNet>,
    /// For ClusterNetworkPolicy `nodes` peers: the node's labels ...
    pub labels: Labels,
    /// ... and every IP address in `status.addresses` (internal and external), which such a
    /// peer stands for.
    pub addresses: Vec<IpAddr>,
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
        let mut addresses: Vec<IpAddr> = node
            .status
            .addresses
            .iter()
            .filter_map(|a| a.address.parse().ok())
            .collect();
        addresses.sort();
        addresses.dedup();
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
            labels: node.metadata.labels.clone(),
            addresses,
        }
    }
}

/// The cluster as the agent sees it: the objects policy depends on, policies as the API
/// objects (the compiler translates them into [`policy::Policy`]; the reference evaluator
/// reads them as written). Policies held here have passed validation
/// ([`validate`]); invalid ones are reported and kept out by whoever fills this.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClusterState {
    /// Namespace name → its labels (always including `kubernetes.io/metadata.name`).
    pub namespaces: BTreeMap<String, Labels>,
    pub pods: BTreeMap<ObjectKey, PodInfo>,
    pub network_policies: BTreeMap<ObjectKey, api::NetworkPolicy>,
    /// By name (cluster-scoped).
    pub cluster_network_policies: BTreeMap<String, api::ClusterNetworkPolicy>,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_share_their_strings_and_compare_like_strings() {
        let a = ObjectKey::new("team-a", "web-1");
        let b = ObjectKey::new(String::from("team-a"), "web-2");
        // One copy of a namespace name, however many keys name it.
        assert!(std::sync::Arc::ptr_eq(&a.namespace.0, &b.namespace.0));
        // A cloned key shares its name too.
        let c = a.clone();
        assert!(std::sync::Arc::ptr_eq(&a.name.0, &c.name.0));
        assert_eq!(a.namespace, "team-a");
        assert_eq!(a.name, String::from("web-1"));
        assert!(a < b);
        assert_eq!(a.to_string(), "team-a/web-1");
        let json = serde_json::to_string(&a).unwrap();
        assert_eq!(json, r#"{"namespace":"team-a","name":"web-1"}"#);
        assert_eq!(serde_json::from_str::<ObjectKey>(&json).unwrap(), a);
        // Borrow<str>: maps keyed by names are looked up with plain strings.
        let mut m = std::collections::HashMap::new();
        m.insert(a.namespace.clone(), 1);
        assert_eq!(m.get("team-a"), Some(&1));
    }
}
