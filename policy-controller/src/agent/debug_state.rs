//! `GET /debug/state`: the cluster state the agent compiles from, as API-shaped objects, so
//! that `palisadectl reach|explain --agent URL` answers from exactly what this agent sees.
//!
//! ```json
//! {"node": "node-1", "namespaces": [Namespace], "pods": [Pod],
//!  "networkpolicies": [NetworkPolicy], "nodes": [Node],
//!  "clusternetworkpolicies": [ClusterNetworkPolicy]}
//! ```
//!
//! Pure: a function of the compiler's [`ClusterState`]. What the state does not keep is not
//! invented: pods carry only their named ports (unnamed container ports do not matter to
//! policy), a terminating pod is marked with a `deletionTimestamp` (the moment is not kept),
//! and only valid policies appear (invalid ones are in `/status`).

use crate::model::api::{
    Container, ContainerPort, Namespace, Node, NodeAddress, NodeSpec, NodeStatus, ObjectMeta, Pod,
    PodIp, PodSpec, PodStatus,
};
use crate::model::{ClusterState, NodeInfo, PodInfo};
use serde_json::{json, Value};

/// Stands for "deletion requested" when the real timestamp is unknown.
pub const TERMINATING_MARK: &str = "1970-01-01T00:00:00Z";

/// The `/debug/state` document of the agent on `node`.
pub fn debug_state(node: &str, state: &ClusterState) -> Value {
    let namespaces: Vec<Value> = state
        .namespaces
        .iter()
        .map(|(name, labels)| {
            let ns = Namespace {
                metadata: ObjectMeta {
                    name: name.clone(),
                    labels: labels.clone(),
                    ..ObjectMeta::default()
                },
            };
            with_kind("v1", "Namespace", &ns)
        })
        .collect();
    let pods: Vec<Value> = state
        .pods
        .values()
        .map(|p| with_kind("v1", "Pod", &pod_object(p)))
        .collect();
    let policies: Vec<Value> = state
        .network_policies
        .values()
        .map(|p| {
            let mut p = p.clone();
            p.api_version
                .get_or_insert_with(|| "networking.k8s.io/v1".into());
            p.kind.get_or_insert_with(|| "NetworkPolicy".into());
            serde_json::to_value(&p).unwrap_or(Value::Null)
        })
        .collect();
    let cluster_policies: Vec<Value> = state
        .cluster_network_policies
        .values()
        .map(|p| {
            let mut p = p.clone();
            p.api_version
                .get_or_insert_with(|| "policy.networking.k8s.io/v1alpha2".into());
            p.kind.get_or_insert_with(|| "ClusterNetworkPolicy".into());
            serde_json::to_value(&p).unwrap_or(Value::Null)
        })
        .collect();
    let nodes: Vec<Value> = state
        .nodes
        .values()
        .map(|n| with_kind("v1", "Node", &node_object(n)))
        .collect();
    json!({
        "node": node,
        "namespaces": namespaces,
        "pods": pods,
        "networkpolicies": policies,
        "nodes": nodes,
        "clusternetworkpolicies": cluster_policies,
    })
}

/// The `/debug/state` body (pretty JSON, newline-terminated) from the agent's compiler.
pub fn debug_state_body(compiler: &std::sync::Mutex<crate::compile::Compiler>) -> String {
    let compiler = compiler.lock().unwrap_or_else(|e| e.into_inner());
    let doc = debug_state(&compiler.options().node, compiler.state());
    format!(
        "{}\n",
        serde_json::to_string_pretty(&doc).unwrap_or_default()
    )
}

fn with_kind<T: serde::Serialize>(api_version: &str, kind: &str, object: &T) -> Value {
    let mut v = serde_json::to_value(object).unwrap_or(Value::Null);
    if let Some(o) = v.as_object_mut() {
        o.insert("apiVersion".into(), api_version.into());
        o.insert("kind".into(), kind.into());
        // model::api's `rename_all = "camelCase"` spells these `podIps`, `podCidr`, ...:
        // write the API's names so that the document reads like the API server's objects.
        for (section, from, to) in [
            ("status", "podIp", "podIP"),
            ("status", "podIps", "podIPs"),
            ("spec", "podCidr", "podCIDR"),
            ("spec", "podCidrs", "podCIDRs"),
        ] {
            if let Some(sec) = o.get_mut(section).and_then(Value::as_object_mut) {
                if let Some(x) = sec.remove(from) {
                    sec.insert(to.into(), x);
                }
            }
        }
    }
    v
}

/// A pod as the API would show it, with what policy needs: labels, node, addresses, named
/// ports (all on one container: which container declares a port does not matter once it is
/// resolved, and sidecar ports are already folded in).
pub fn pod_object(p: &PodInfo) -> Pod {
    let ports = p
        .named_ports
        .iter()
        .map(|np| ContainerPort {
            name: Some(np.name.clone()),
            container_port: i32::from(np.port),
            protocol: Some(np.protocol.to_string()),
        })
        .collect();
    Pod {
        metadata: ObjectMeta {
            name: p.key.name.to_string(),
            namespace: p.key.namespace.to_string(),
            labels: p.labels.clone(),
            deletion_timestamp: p.terminating.then(|| TERMINATING_MARK.to_string()),
            ..ObjectMeta::default()
        },
        spec: PodSpec {
            node_name: p.node.clone(),
            host_network: p.host_network,
            containers: vec![Container {
                name: "main".into(),
                ports,
                restart_policy: None,
            }],
            init_containers: Vec::new(),
        },
        status: PodStatus {
            phase: None,
            pod_ip: p.ips.first().map(|ip| ip.to_string()),
            pod_ips: p
                .ips
                .iter()
                .map(|ip| PodIp { ip: ip.to_string() })
                .collect(),
        },
    }
}

pub fn node_object(n: &NodeInfo) -> Node {
    Node {
        metadata: ObjectMeta {
            name: n.name.clone(),
            labels: n.labels.clone(),
            ..ObjectMeta::default()
        },
        spec: NodeSpec {
            pod_cidr: n.pod_cidrs.first().map(|c| c.to_string()),
            pod_cidrs: n.pod_cidrs.iter().map(|c| c.to_string()).collect(),
        },
        status: NodeStatus {
            // The other addresses (which type they had is not kept) as external ones.
            addresses: n
                .internal_ips
                .iter()
                .map(|ip| NodeAddress {
                    kind: "InternalIP".into(),
                    address: ip.to_string(),
                })
                .chain(
                    n.addresses
                        .iter()
                        .filter(|ip| !n.internal_ips.contains(ip))
                        .map(|ip| NodeAddress {
                            kind: "ExternalIP".into(),
                            address: ip.to_string(),
                        }),
                )
                .collect(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{NamedPort, ObjectKey, Protocol};

    #[test]
    fn pods_and_nodes_read_back_equal() {
        let pod = PodInfo {
            key: ObjectKey::new("x", "a"),
            node: Some("node-1".into()),
            labels: [("app".to_string(), "web".to_string())].into(),
            ips: vec!["10.0.0.1".parse().unwrap(), "fd00::1".parse().unwrap()],
            host_network: false,
            terminating: true,
            named_ports: vec![NamedPort {
                name: "http".into(),
                port: 80,
                protocol: Protocol::Tcp,
            }],
        };
        assert_eq!(PodInfo::from_api(&pod_object(&pod)), pod);
        let node = NodeInfo {
            name: "node-1".into(),
            internal_ips: vec!["192.0.2.1".parse().unwrap()],
            pod_cidrs: vec!["10.244.1.0/24".parse().unwrap()],
            labels: [("zone".to_string(), "a".to_string())].into(),
            addresses: vec![
                "192.0.2.1".parse().unwrap(),
                "198.51.100.7".parse().unwrap(),
            ],
        };
        assert_eq!(NodeInfo::from_api(&node_object(&node)), node);
    }
}
