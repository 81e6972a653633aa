//! The end-of-run checks on every node: what the pods that no longer exist left behind, and
//! the programmed table against a fresh compile of the final cluster state.
//!
//! "Live" is what the harness knows exists at the end: the pods in [`Cluster::pods`] (their
//! container IDs, node, addresses) and, for the table, the objects in the API stand-in.

use crate::apiserver::{ApiServer, Kind};
use crate::cluster::{Cluster, Node};
use anyhow::{anyhow, Context, Result};
use ipnet::IpNet;
use palisade_policy::compile::{compile, CompileOptions, MasqueradeOptions};
use palisade_policy::ctl::live::{objects_from_debug_state, read_table};
use palisade_policy::ctl::manifests::build_state;
use palisade_policy::model::ClusterState;
use palisade_policy::nft::canon::canonicalize;
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::net::IpAddr;
use std::path::Path;

/// The pod CIDRs of the netns cluster (every node's is inside).
const POD_SUPERNETS: [&str; 2] = ["10.244.0.0/16", "fd00:10:244::/48"];
/// The agents' NFLOG group (their default, which the cluster does not change).
const AGENT_NFLOG_GROUP: u16 = 100;

/// Leftovers found, one line each, per kind.
#[derive(Debug, Default)]
pub struct Leaks {
    pub addresses: Vec<String>,
    pub links: Vec<String>,
    pub routes: Vec<String>,
    pub elements: Vec<String>,
    pub host_port_records: Vec<String>,
}

impl Leaks {
    /// Each kind with its name as printed.
    pub fn kinds(&self) -> [(&'static str, &Vec<String>); 5] {
        [
            ("leaked addresses", &self.addresses),
            ("leaked links", &self.links),
            ("leaked routes", &self.routes),
            ("leaked set/map elements", &self.elements),
            ("leaked hostPort records", &self.host_port_records),
        ]
    }
}

/// The cluster state the API stand-in holds, as the agents would build it from their
/// watches (invalid policies skipped, as they skip them).
pub fn api_state(api: &ApiServer) -> Result<ClusterState> {
    let list = |k| Value::Array(api.list(k, None));
    let doc = json!({
        "namespaces": list(Kind::Namespace),
        "pods": list(Kind::Pod),
        "networkpolicies": list(Kind::NetworkPolicy),
        "nodes": list(Kind::Node),
        "clusternetworkpolicies": list(Kind::ClusterNetworkPolicy),
    });
    let objects = objects_from_debug_state("API stand-in", &doc).map_err(|e| anyhow!("{e}"))?;
    Ok(build_state(&objects).state)
}

/// Every leak check on every node.
pub fn find_leaks(cluster: &Cluster) -> Result<Leaks> {
    let mut leaks = Leaks::default();
    let live_ips: BTreeSet<IpAddr> = cluster.pods.values().flat_map(|p| p.ips.clone()).collect();
    for node in &cluster.nodes {
        let live_ids: BTreeSet<&str> = cluster
            .pods
            .values()
            .filter(|p| p.node == node.index)
            .map(|p| p.container_id.as_str())
            .collect();
        let local_ips: BTreeSet<IpAddr> = cluster
            .pods
            .values()
            .filter(|p| p.node == node.index)
            .flat_map(|p| p.ips.clone())
            .collect();
        let live_links = check_ipam(node, &live_ids, &mut leaks)?;
        check_links(node, &live_links, &mut leaks)?;
        check_routes(node, &local_ips, &live_links, &mut leaks)?;
        for table in ["palisade", "palisade-hostport"] {
            check_elements(node, table, &live_ips, &mut leaks)?;
        }
        check_host_port_records(node, &live_ids, &mut leaks)?;
    }
    Ok(leaks)
}

/// IPAM attachments of pods that are gone. Returns the host veths of the live ones.
fn check_ipam(
    node: &Node,
    live_ids: &BTreeSet<&str>,
    leaks: &mut Leaks,
) -> Result<BTreeSet<String>> {
    let path = node.dir.join("ipam").join("palisade").join("ipam.json");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("read {}", path.display()))?;
    let state: Value =
        serde_json::from_str(&text).with_context(|| format!("parse {}", path.display()))?;
    let mut live_links = BTreeSet::new();
    for a in state["attachments"].as_array().into_iter().flatten() {
        let id = a["containerId"].as_str().unwrap_or_default();
        if live_ids.contains(id) {
            if let Some(link) = a["hostIfname"].as_str() {
                live_links.insert(link.to_string());
            }
        } else {
            leaks.addresses.push(format!(
                "{}: IPAM holds {} for container {id}",
                node.name, a["ips"]
            ));
        }
    }
    Ok(live_links)
}

/// Pod veths (the plugin's prefix) that belong to no live pod.
fn check_links(node: &Node, live_links: &BTreeSet<String>, leaks: &mut Leaks) -> Result<()> {
    let out = node.netns.ip(&["-j", "link", "show"])?;
    let links: Value = serde_json::from_str(&out).context("parse ip -j link")?;
    for l in links.as_array().into_iter().flatten() {
        let name = l["ifname"].as_str().unwrap_or_default();
        if name.starts_with(palisade_common::HOST_VETH_PREFIX) && !live_links.contains(name) {
            leaks.links.push(format!("{}: link {name}", node.name));
        }
    }
    Ok(())
}

/// Routes through a pod veth of no live pod, or to a pod address of this node's CIDRs that
/// no live pod of this node has.
fn check_routes(
    node: &Node,
    local_ips: &BTreeSet<IpAddr>,
    live_links: &BTreeSet<String>,
    leaks: &mut Leaks,
) -> Result<()> {
    let cidrs: Vec<IpNet> = [&node.pod_cidr_v4, &node.pod_cidr_v6]
        .iter()
        .filter_map(|c| c.parse().ok())
        .collect();
    for family in ["-4", "-6"] {
        let out = node.netns.ip(&[family, "-j", "route", "show"])?;
        let routes: Value = serde_json::from_str(&out).context("parse ip -j route")?;
        for r in routes.as_array().into_iter().flatten() {
            let dst = r["dst"].as_str().unwrap_or_default();
            let dev = r["dev"].as_str().unwrap_or_default();
            let pod_dev = dev.starts_with(palisade_common::HOST_VETH_PREFIX);
            let host: Option<IpAddr> = dst.split('/').next().and_then(|a| a.parse().ok());
            let to_local_pod = host.is_some_and(|ip| {
                !dst.contains('/')
                    && cidrs.iter().any(|c| c.contains(&ip))
                    && !local_ips.contains(&ip)
            });
            if (pod_dev && !live_links.contains(dev)) || to_local_pod {
                leaks
                    .routes
                    .push(format!("{}: route {dst} dev {dev}", node.name));
            }
        }
    }
    Ok(())
}

/// Elements of `table` naming a pod address no live pod has. Interval sets are left out:
/// their ranges (an `ipBlock` with its `except`s) hold addresses of no pod by design.
fn check_elements(
    node: &Node,
    table: &str,
    live_ips: &BTreeSet<IpAddr>,
    leaks: &mut Leaks,
) -> Result<()> {
    let out = node
        .netns
        .command("nft")
        .args(["-j", "list", "table", "inet", table])
        .output()
        .context("run nft")?;
    if !out.status.success() {
        // The hostPort table exists only once a pod published a hostPort on this node.
        if table == "palisade-hostport" {
            return Ok(());
        }
        return Err(anyhow!(
            "{}: nft list table inet {table}: {}",
            node.name,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let listing: Value = serde_json::from_slice(&out.stdout).context("parse nft -j")?;
    let supernets: Vec<IpNet> = POD_SUPERNETS
        .iter()
        .filter_map(|c| c.parse().ok())
        .collect();
    for item in listing["nftables"].as_array().into_iter().flatten() {
        let Some(set) = item.get("set").or_else(|| item.get("map")) else {
            continue;
        };
        let interval = set["flags"]
            .as_array()
            .is_some_and(|f| f.iter().any(|x| x == "interval"));
        if interval {
            continue;
        }
        for elem in set["elem"].as_array().into_iter().flatten() {
            let mut found = Vec::new();
            addresses_in(elem, &mut found);
            // One line per element, whatever it names (a hairpin element holds one address
            // twice).
            let dead: BTreeSet<IpAddr> = found
                .into_iter()
                .filter(|ip| supernets.iter().any(|n| n.contains(ip)) && !live_ips.contains(ip))
                .collect();
            if !dead.is_empty() {
                let dead: Vec<String> = dead.iter().map(IpAddr::to_string).collect();
                leaks.elements.push(format!(
                    "{}: {table} {} element naming {}",
                    node.name,
                    set["name"].as_str().unwrap_or("?"),
                    dead.join(", ")
                ));
            }
        }
    }
    Ok(())
}

/// Every single address in an nft JSON element (keys and values, concatenations included).
fn addresses_in(v: &Value, out: &mut Vec<IpAddr>) {
    match v {
        Value::String(s) => {
            if let Ok(ip) = s.parse() {
                out.push(ip);
            }
        }
        Value::Array(items) => items.iter().for_each(|i| addresses_in(i, out)),
        Value::Object(o) => {
            for (k, v) in o {
                if k != "range" && k != "prefix" {
                    addresses_in(v, out);
                }
            }
        }
        _ => {}
    }
}

/// hostPort records (`<dataDir>/hostport/*.json`) of containers that are gone.
fn check_host_port_records(
    node: &Node,
    live_ids: &BTreeSet<&str>,
    leaks: &mut Leaks,
) -> Result<()> {
    let dir = node.dir.join("ipam").join("hostport");
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Ok(());
    };
    for e in entries {
        let path = e?.path();
        if path.extension().is_none_or(|x| x != "json") {
            continue;
        }
        let record: Value = match std::fs::read_to_string(&path)
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
        {
            Some(r) => r,
            None => {
                leaks.host_port_records.push(format!(
                    "{}: unreadable record {}",
                    node.name,
                    path.display()
                ));
                continue;
            }
        };
        let id = record["containerId"].as_str().unwrap_or_default();
        if !live_ids.contains(id) {
            leaks.host_port_records.push(format!(
                "{}: record {} of container {id}",
                node.name,
                file_name(&path)
            ));
        }
    }
    Ok(())
}

fn file_name(p: &Path) -> String {
    p.file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// The chains, sets and maps in which node `node`'s programmed table differs from a fresh
/// compile of `state` with the agents' options (empty: identical in canonical form).
pub fn table_differences(
    cluster: &Cluster,
    node: &Node,
    state: &ClusterState,
) -> Result<Vec<String>> {
    let opts = CompileOptions {
        node: node.name.clone(),
        fail_closed_new_pods: true,
        nflog_group: Some(AGENT_NFLOG_GROUP),
        masquerade: if cluster.config.masquerade {
            MasqueradeOptions::enabled()
        } else {
            MasqueradeOptions {
                ipv4: false,
                ipv6: false,
                ..MasqueradeOptions::enabled()
            }
        },
    };
    let desired = canonicalize(&compile(state, &opts));
    let listing = read_table(Some(node.netns.path().to_path_buf()))?
        .ok_or_else(|| anyhow!("{}: no table inet palisade", node.name))?;
    let programmed = &listing.programmed;
    let mut diffs = Vec::new();
    for name in &programmed.stale_chains {
        diffs.push(format!("{}: chain {name} unreadable", node.name));
    }
    for name in &programmed.stale_sets {
        diffs.push(format!("{}: set {name} unreadable", node.name));
    }
    let got = &programmed.model;
    compare_named(
        &node.name,
        "chain",
        &got.chains,
        &desired.chains,
        &mut diffs,
    );
    compare_named(&node.name, "set", &got.sets, &desired.sets, &mut diffs);
    compare_named(&node.name, "map", &got.maps, &desired.maps, &mut diffs);
    Ok(diffs)
}

fn compare_named<T: PartialEq + std::fmt::Debug>(
    node: &str,
    what: &str,
    got: &std::collections::BTreeMap<String, T>,
    want: &std::collections::BTreeMap<String, T>,
    diffs: &mut Vec<String>,
) {
    for (name, w) in want {
        match got.get(name) {
            None => diffs.push(format!("{node}: {what} {name} missing")),
            Some(g) if g != w => diffs.push(format!(
                "{node}: {what} {name} differs: programmed {g:?}, compiled {w:?}"
            )),
            Some(_) => {}
        }
    }
    for name in got.keys().filter(|n| !want.contains_key(*n)) {
        diffs.push(format!("{node}: {what} {name} not in the compiled table"));
    }
}
