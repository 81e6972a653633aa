//! A running node: the local agent's debug socket (`/status`, `/debug/state`, `/drops`), the
//! table it programmed (`nft -j list table inet palisade`, optionally inside a network
//! namespace), and the API server.
//!
//! The socket speaks HTTP/1.0 ([`crate::agent::http::unix_get`]): an answer ends at EOF,
//! never chunked, so a client library would add nothing.

use super::manifests::{add_document, ManifestError, Objects, Origin};
use crate::agent::http::unix_get;
use crate::kube::config::KubeconfigChoice;
use crate::nft::{Listing, NftDataplane, NftOptions};
use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value;
use std::io::Read;
use std::path::{Path, PathBuf};

/// `GET path` on the agent's debug socket, as a reader positioned at the body of a 200
/// answer. A missing or forbidden socket gets a message that says what to do.
pub fn agent_get(
    socket: &Path,
    path: &str,
) -> Result<std::io::BufReader<std::os::unix::net::UnixStream>> {
    let (code, mut body) = unix_get(socket, path).map_err(|e| {
        let hint = match e.root_cause().downcast_ref::<std::io::Error>().map(|e| e.kind()) {
            Some(std::io::ErrorKind::NotFound) => " (no agent listens here: run palisadectl on a node where palisade-agent runs, or in its container with kubectl exec, or pass --agent SOCKET)",
            Some(std::io::ErrorKind::PermissionDenied) => " (the socket is root's: run as root on the node)",
            Some(std::io::ErrorKind::ConnectionRefused) => " (the agent that made it is not running)",
            _ => "",
        };
        anyhow!("{e:#}{hint}")
    })?;
    if code != 200 {
        let mut text = String::new();
        let _ = body.read_to_string(&mut text);
        let hint = if code == 404 && path == "/debug/state" {
            " (this agent has no /debug/state endpoint: upgrade it)"
        } else {
            ""
        };
        bail!(
            "GET {path} on {}: HTTP {code}: {}{hint}",
            socket.display(),
            text.trim()
        );
    }
    Ok(body)
}

/// `GET path` on the debug socket, decoded as JSON.
pub fn agent_json(socket: &Path, path: &str) -> Result<Value> {
    let mut text = String::new();
    agent_get(socket, path)?
        .read_to_string(&mut text)
        .with_context(|| format!("read GET {path} from {}", socket.display()))?;
    serde_json::from_str(&text)
        .with_context(|| format!("GET {path} on {}: not JSON", socket.display()))
}

/// The agent's cluster state (`/debug/state`): its node name and the objects, decoded through
/// the same path as manifests.
pub fn fetch_state(socket: &Path) -> Result<(String, Objects)> {
    let doc = agent_json(socket, "/debug/state")?;
    let source = format!("{}: GET /debug/state", socket.display());
    let node = doc
        .get("node")
        .and_then(Value::as_str)
        .ok_or_else(|| anyhow!("{source}: no \"node\""))?
        .to_string();
    let objects = objects_from_debug_state(&source, &doc)?;
    Ok((node, objects))
}

/// `{"namespaces": [...], "pods": [...], "networkpolicies": [...], "nodes": [...],
/// "clusternetworkpolicies": [...]}` → objects. Items without `kind` get the one their list
/// implies.
pub fn objects_from_debug_state(source: &str, doc: &Value) -> Result<Objects, ManifestError> {
    let mut objects = Objects::default();
    for (field, kind) in [
        ("namespaces", "Namespace"),
        ("pods", "Pod"),
        ("networkpolicies", "NetworkPolicy"),
        ("nodes", "Node"),
        ("clusternetworkpolicies", "ClusterNetworkPolicy"),
    ] {
        let Some(items) = doc.get(field).and_then(Value::as_array) else {
            continue;
        };
        for (i, item) in items.iter().enumerate() {
            let mut item = item.clone();
            if let Some(obj) = item.as_object_mut() {
                obj.entry("kind")
                    .or_insert_with(|| Value::String(kind.into()));
            }
            let origin = Origin {
                source: format!("{source}: {field}[{i}]"),
                document: None,
                item: None,
            };
            add_document(origin, item, &mut objects)?;
        }
    }
    Ok(objects)
}

/// The programmed table, read with nft (inside `netns` if given); `None`: no table.
pub fn read_table(netns: Option<PathBuf>) -> Result<Option<Listing>> {
    // Checked here: nsenter's "No such file or directory" for a missing namespace would
    // otherwise read as nft's answer for a missing table.
    if let Some(ns) = &netns {
        if !ns.exists() {
            bail!("--nft-netns {}: no such network namespace", ns.display());
        }
    }
    let nft = NftDataplane::new(NftOptions {
        netns,
        ..NftOptions::default()
    });
    nft.list()
        .map_err(|e| anyhow!("read table inet {}: {e}", nft.options().table))
}

/// Chains, sets + maps, and their elements.
pub fn table_counts(listing: &Listing) -> (usize, usize, usize) {
    let m = &listing.programmed.model;
    let elements = m.sets.values().map(|s| s.elements.len()).sum::<usize>()
        + m.maps.values().map(|s| s.elements.len()).sum::<usize>();
    (m.chains.len(), m.sets.len() + m.maps.len(), elements)
}

/// `palisadectl status` in text form. `table`: the listing, or why it could not be read.
pub fn render_status(
    agent: &Path,
    status: &Value,
    table: &Result<Option<Listing>, String>,
    wide: bool,
) -> String {
    let mut rows: Vec<(String, String)> = Vec::new();
    let s = |v: &Value| match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    };
    rows.push((
        "agent".into(),
        format!("{} (node {})", agent.display(), s(&status["node"])),
    ));
    rows.push((
        "ready".into(),
        match (&status["ready"], status["notReadyReason"].as_str()) {
            (Value::Bool(true), _) => "yes".into(),
            (_, Some(why)) => format!("no: {why}"),
            _ => "no".into(),
        },
    ));
    rows.push((
        "last sync".into(),
        match status.get("lastSync") {
            Some(Value::Object(l)) => format!(
                "{} ms, {} commands{}",
                l.get("durationMs").map(s).unwrap_or_default(),
                l.get("commands").map(s).unwrap_or_default(),
                if l.get("full") == Some(&Value::Bool(true)) {
                    ", full resync"
                } else {
                    ""
                }
            ),
            _ => "none yet".into(),
        },
    ));
    if let Some(Value::Object(rvs)) = status.get("programmedResourceVersions") {
        let parts: Vec<String> = rvs.iter().map(|(k, v)| format!("{k}={}", s(v))).collect();
        rows.push(("programmed versions".into(), parts.join(" ")));
    }
    if let Some(Value::Object(m)) = status.get("masquerade") {
        rows.push(("masquerade".into(), describe_masquerade(m)));
    }
    if let Some(routes) = status.get("routes").filter(|v| !v.is_null()) {
        rows.push((
            "node routes".into(),
            match status.get("overlay") {
                Some(Value::Object(o)) => describe_overlay(&s(routes), o),
                _ => s(routes),
            },
        ));
    }
    if let Some(e) = status.get("lastError").filter(|v| !v.is_null()) {
        rows.push(("last error".into(), s(e)));
    }
    if wide {
        rows.push(("pods (cluster)".into(), s(&status["pods"])));
        rows.push(("routes".into(), s(&status["routes"])));
        let malformed = status
            .get("malformedObjects")
            .and_then(Value::as_array)
            .map_or(0, Vec::len);
        rows.push(("malformed objects".into(), malformed.to_string()));
    }
    let invalid = status
        .get("invalidPolicies")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    rows.push((
        "invalid policies".into(),
        if invalid.is_empty() {
            "none".into()
        } else {
            invalid.len().to_string()
        },
    ));
    rows.push((
        format!("table inet {}", crate::nft::NftOptions::default().table),
        match table {
            Ok(Some(l)) => {
                let (c, sets, e) = table_counts(l);
                format!("{c} chains, {sets} sets and maps, {e} elements")
            }
            Ok(None) => "absent".into(),
            Err(e) => format!("not readable: {e}"),
        },
    ));
    let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    let mut out = String::new();
    for (k, v) in rows {
        out.push_str(&format!("{k:width$}  {v}\n"));
    }
    for p in invalid {
        let errors: Vec<String> = p["errors"]
            .as_array()
            .map(|a| a.iter().map(s).collect())
            .unwrap_or_default();
        out.push_str(&format!(
            "  {}/{}: {}\n",
            s(&p["namespace"]),
            s(&p["name"]),
            errors.join("; ")
        ));
    }
    out
}

/// `IPv4 on, IPv6 off; not to 10.0.0.0/8` from the agent's `masquerade` status.
fn describe_masquerade(m: &serde_json::Map<String, Value>) -> String {
    let on = |k: &str| m.get(k) == Some(&Value::Bool(true));
    let mut text = match (on("ipv4"), on("ipv6")) {
        (false, false) => return "off".into(),
        (true, true) => "on (IPv4 and IPv6)".to_string(),
        (v4, _) => format!(
            "IPv4 {}, IPv6 {}",
            if v4 { "on" } else { "off" },
            if v4 { "off" } else { "on" }
        ),
    };
    let list = |k: &str| -> Vec<String> {
        m.get(k)
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default()
    };
    let exempt = list("nonMasqueradeCIDRs");
    if !exempt.is_empty() {
        text.push_str(&format!("; not to {}", exempt.join(", ")));
    }
    let cluster = list("clusterCIDRs");
    if !cluster.is_empty() {
        text.push_str(&format!("; cluster CIDRs {}", cluster.join(", ")));
    }
    text
}

/// `3 (2 over VXLAN, cross-subnet; vxlan4.palisade from 192.0.2.1, mtu 1450, 1 peer)` from
/// the agent's `routes` and `overlay` status.
fn describe_overlay(routes: &str, o: &serde_json::Map<String, Value>) -> String {
    let mode = o.get("mode").and_then(Value::as_str).unwrap_or("-");
    if mode == "never" {
        return format!("{routes} (direct, overlay never)");
    }
    let links: Vec<String> = o
        .get("vxlan")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|l| {
            let peers = l["peers"].as_u64().unwrap_or(0);
            format!(
                "{} from {}, mtu {}, {peers} peer{}",
                l["name"].as_str().unwrap_or("-"),
                l["local"].as_str().unwrap_or("-"),
                l["mtu"],
                if peers == 1 { "" } else { "s" }
            )
        })
        .collect();
    format!(
        "{routes} ({} over VXLAN, {mode}; {})",
        o.get("routes")
            .map_or_else(|| "-".to_string(), Value::to_string),
        if links.is_empty() {
            "no VXLAN link".to_string()
        } else {
            links.join("; ")
        }
    )
}

/// `palisadectl status -o json|yaml`: the agent's status plus the table's counts.
pub fn status_document(status: &Value, table: &Result<Option<Listing>, String>) -> Value {
    let table = match table {
        Ok(Some(l)) => {
            let (c, s, e) = table_counts(l);
            serde_json::json!({"present": true, "chains": c, "setsAndMaps": s, "elements": e})
        }
        Ok(None) => serde_json::json!({"present": false}),
        Err(e) => serde_json::json!({"error": e}),
    };
    serde_json::json!({"agent": status, "table": table})
}

const CLUSTER_POLICIES_PATH: &str =
    "/apis/policy.networking.k8s.io/v1alpha2/clusternetworkpolicies";

/// List Namespaces, Pods, NetworkPolicies, Nodes and ClusterNetworkPolicies from the API
/// server the kubeconfig names (kubectl's loading rules, [`crate::kube::config`]), once (no
/// watch), through the same decoder as manifests. Also returns the context's namespace.
pub fn list_from_api_server(kubeconfig: &KubeconfigChoice) -> Result<(Objects, String)> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("start a tokio runtime")?;
    rt.block_on(async {
        let resolved = crate::kube::config::resolve(kubeconfig).await?;
        let namespace = resolved.config.default_namespace.clone();
        let origin = format!("{} ({})", resolved.config.cluster_url, resolved.origin);
        let client = kube::Client::try_from(resolved.config).context("build kube client")?;
        let mut objects = Objects::default();
        for path in [
            "/api/v1/namespaces",
            "/api/v1/pods",
            "/apis/networking.k8s.io/v1/networkpolicies",
            "/api/v1/nodes",
            CLUSTER_POLICIES_PATH,
        ] {
            let req = hyper::Request::get(path)
                .body(Vec::new())
                .with_context(|| format!("build GET {path}"))?;
            let text = match client.request_text(req).await {
                Ok(text) => text,
                // No ClusterNetworkPolicy CRD in this cluster: none.
                Err(::kube::Error::Api(status))
                    if status.code == 404 && path == CLUSTER_POLICIES_PATH =>
                {
                    continue
                }
                Err(err) => {
                    return Err(anyhow::Error::new(err)
                        .context(format!("GET {path} from the API server {origin}")))
                }
            };
            let doc: Value =
                serde_json::from_str(&text).with_context(|| format!("GET {path}: not JSON"))?;
            let origin = Origin {
                source: format!("GET {path}"),
                document: None,
                item: None,
            };
            add_document(origin, doc, &mut objects)?;
        }
        Ok((objects, namespace))
    })
}
