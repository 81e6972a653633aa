//! Routes to the other nodes' pod CIDRs (`podCIDR via InternalIP`) in this node's network
//! namespace (DESIGN.md "Cross-node": nodes share an L2 segment, as in kind).
//!
//! The agent only ever touches routes it owns, recognised by their routing protocol number
//! ([`ROUTE_PROTOCOL`], `proto 180` in `ip route`): kernel, DHCP and operator routes carry
//! other numbers. Routes are changed with `ip route replace/del` (idempotent, one command per
//! changed route; there are as many as nodes, and they change when nodes come and go).

use crate::model::NodeInfo;
use anyhow::{bail, Context, Result};
use ipnet::IpNet;
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::process::Command;

/// The `rtm_protocol` that marks Palisade's routes (0xb4; unassigned in
/// `/etc/iproute2/rt_protos`).
pub const ROUTE_PROTOCOL: u8 = 180;

/// One route the agent owns.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct NodeRoute {
    pub cidr: IpNet,
    pub via: IpAddr,
}

#[derive(Debug, Clone)]
pub struct NodeRoutes {
    own_node: String,
    ip: String,
}

impl NodeRoutes {
    pub fn new(own_node: impl Into<String>) -> NodeRoutes {
        NodeRoutes {
            own_node: own_node.into(),
            ip: "ip".into(),
        }
    }

    /// Routes for every other node that has pod CIDRs and an InternalIP of the same family.
    pub fn desired(&self, nodes: &BTreeMap<String, NodeInfo>) -> BTreeSet<NodeRoute> {
        let mut routes = BTreeSet::new();
        for node in nodes.values().filter(|n| n.name != self.own_node) {
            for cidr in &node.pod_cidrs {
                let via = node
                    .internal_ips
                    .iter()
                    .find(|ip| ip.is_ipv4() == matches!(cidr, IpNet::V4(_)));
                if let Some(via) = via {
                    routes.insert(NodeRoute {
                        cidr: cidr.trunc(),
                        via: *via,
                    });
                }
            }
        }
        routes
    }

    fn run(&self, args: &[&str]) -> Result<String> {
        let out = Command::new(&self.ip)
            .args(args)
            .output()
            .with_context(|| format!("run {} {}", self.ip, args.join(" ")))?;
        if !out.status.success() {
            bail!(
                "{} {}: {}",
                self.ip,
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The routes with our protocol number now in the main table.
    pub fn current(&self) -> Result<BTreeSet<NodeRoute>> {
        let proto = ROUTE_PROTOCOL.to_string();
        let mut routes = BTreeSet::new();
        for family in ["-4", "-6"] {
            let json = self.run(&["-j", family, "route", "show", "proto", &proto])?;
            let parsed: serde_json::Value =
                serde_json::from_str(json.trim()).unwrap_or(serde_json::Value::Null);
            for r in parsed.as_array().into_iter().flatten() {
                let (Some(dst), Some(gw)) = (r["dst"].as_str(), r["gateway"].as_str()) else {
                    continue;
                };
                let cidr = match dst.parse::<IpNet>() {
                    Ok(c) => c,
                    // `ip` prints host routes without the prefix length.
                    Err(_) => match dst.parse::<IpAddr>() {
                        Ok(a) => IpNet::from(a),
                        Err(_) => continue,
                    },
                };
                if let Ok(via) = gw.parse() {
                    routes.insert(NodeRoute { cidr, via });
                }
            }
        }
        Ok(routes)
    }

    /// Make our routes equal `desired`: add/replace what is missing or different, delete
    /// what is ours and no longer wanted. Keeps going after a failure and reports them all.
    pub fn reconcile(&self, desired: &BTreeSet<NodeRoute>) -> Result<()> {
        let current = self.current()?;
        let proto = ROUTE_PROTOCOL.to_string();
        let mut errors = Vec::new();
        for r in current.difference(desired) {
            // A CIDR that stays (via another gateway) is replaced below instead.
            if desired.iter().any(|d| d.cidr == r.cidr) {
                continue;
            }
            if let Err(e) = self.run(&["route", "del", &r.cidr.to_string(), "proto", &proto]) {
                errors.push(format!("{e:#}"));
            } else {
                tracing::info!(cidr = %r.cidr, via = %r.via, "removed node route");
            }
        }
        for r in desired.difference(&current) {
            let args = [
                "route",
                "replace",
                &r.cidr.to_string(),
                "via",
                &r.via.to_string(),
                "proto",
                &proto,
            ];
            if let Err(e) = self.run(&args) {
                errors.push(format!("{e:#}"));
            } else {
                tracing::info!(cidr = %r.cidr, via = %r.via, "node route in place");
            }
        }
        if !errors.is_empty() {
            bail!("{}", errors.join("; "));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, ips: &[&str], cidrs: &[&str]) -> (String, NodeInfo) {
        (
            name.into(),
            NodeInfo {
                name: name.into(),
                internal_ips: ips.iter().map(|s| s.parse().unwrap()).collect(),
                pod_cidrs: cidrs.iter().map(|s| s.parse().unwrap()).collect(),
                ..NodeInfo::default()
            },
        )
    }

    #[test]
    fn routes_go_to_other_nodes_by_family() {
        let nodes: BTreeMap<_, _> = [
            node("n1", &["192.168.0.1"], &["10.244.1.0/24"]),
            node(
                "n2",
                &["192.168.0.2", "fd00::2"],
                &["10.244.2.0/24", "fd10:2::/64"],
            ),
            node("n3", &["192.168.0.3"], &["fd10:3::/64"]),
            node("n4", &[], &["10.244.4.0/24"]),
        ]
        .into_iter()
        .collect();
        let got: Vec<String> = NodeRoutes::new("n1")
            .desired(&nodes)
            .iter()
            .map(|r| format!("{} via {}", r.cidr, r.via))
            .collect();
        assert_eq!(
            got,
            vec!["10.244.2.0/24 via 192.168.0.2", "fd10:2::/64 via fd00::2"]
        );
    }
}
