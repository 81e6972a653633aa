//! A running node: the local agent's HTTP endpoint (`/status`, `/debug/state`) and the table
//! it programmed (`nft -j list table inet palisade`, optionally inside a network namespace).
//!
//! The HTTP client is a plain HTTP/1.0 GET over a TCP socket: the agent listens on a
//! node-local address, speaks no TLS, and an HTTP/1.0 answer ends at EOF (never chunked), so
//! a client library would add nothing.

use super::manifests::{add_document, ManifestError, Objects, Origin};
use crate::nft::{Listing, NftDataplane, NftOptions};
use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value;
use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

/// `GET base + path`; the body on 200.
pub fn http_get(base: &str, path: &str) -> Result<String> {
    let rest = base.strip_prefix("http://").ok_or_else(|| {
        anyhow!("--agent {base}: only http:// URLs (the agent's node-local endpoint)")
    })?;
    let (authority, prefix) = match rest.split_once('/') {
        Some((a, p)) => (a, format!("/{}", p.trim_end_matches('/'))),
        None => (rest, String::new()),
    };
    let target = format!("{prefix}{path}");
    let addr = authority
        .to_socket_addrs()
        .with_context(|| format!("resolve {authority}"))?
        .next()
        .ok_or_else(|| anyhow!("resolve {authority}: no address"))?;
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(3))
        .with_context(|| format!("connect to the agent at {base}"))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "GET {target} HTTP/1.0\r\nHost: {authority}\r\nAccept: application/json\r\n\r\n"
    )
    .with_context(|| format!("send GET {target} to {base}"))?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)
        .with_context(|| format!("read the answer to GET {target} from {base}"))?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| anyhow!("GET {base}{target}: malformed HTTP answer"))?;
    let code: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| anyhow!("GET {base}{target}: no status code in {head:?}"))?;
    if code != 200 {
        let hint = if code == 404 && path == "/debug/state" {
            " (this agent has no /debug/state endpoint: upgrade it)"
        } else {
            ""
        };
        bail!("GET {base}{target}: HTTP {code}: {}{hint}", body.trim());
    }
    Ok(body.to_string())
}

pub fn get_json(base: &str, path: &str) -> Result<Value> {
    let body = http_get(base, path)?;
    serde_json::from_str(&body).with_context(|| format!("GET {base}{path}: not JSON"))
}

/// The agent's cluster state (`/debug/state`): its node name and the objects, decoded through
/// the same path as manifests.
pub fn fetch_state(base: &str) -> Result<(String, Objects)> {
    let doc = get_json(base, "/debug/state")?;
    let node = doc
        .get("node")
        .and_then(Value::as_str)
        .ok_or_else(|| anyhow!("GET {base}/debug/state: no \"node\""))?
        .to_string();
    let objects = objects_from_debug_state(&format!("{base}/debug/state"), &doc)?;
    Ok((node, objects))
}

/// `{"namespaces": [...], "pods": [...], "networkpolicies": [...], "nodes": [...]}` →
/// objects. Items without `kind` get the one their list implies.
pub fn objects_from_debug_state(source: &str, doc: &Value) -> Result<Objects, ManifestError> {
    let mut objects = Objects::default();
    for (field, kind) in [
        ("namespaces", "Namespace"),
        ("pods", "Pod"),
        ("networkpolicies", "NetworkPolicy"),
        ("nodes", "Node"),
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
    agent: &str,
    status: &Value,
    table: &Result<Option<Listing>, String>,
) -> String {
    let mut rows: Vec<(String, String)> = Vec::new();
    let s = |v: &Value| match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    };
    rows.push((
        "agent".into(),
        format!("{agent} (node {})", s(&status["node"])),
    ));
    rows.push((
        "ready".into(),
        if status["ready"] == Value::Bool(true) {
            "yes"
        } else {
            "no"
        }
        .into(),
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
    if let Some(e) = status.get("lastError").filter(|v| !v.is_null()) {
        rows.push(("last error".into(), s(e)));
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

/// List Namespaces, Pods, NetworkPolicies and Nodes from the API server of `kubeconfig`,
/// once (no watch), through the same decoder as manifests.
pub fn list_from_api_server(kubeconfig: &std::path::Path) -> Result<Objects> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("start a tokio runtime")?;
    rt.block_on(async {
        let client = crate::agent::kube_client(Some(kubeconfig)).await?;
        let mut objects = Objects::default();
        for path in [
            "/api/v1/namespaces",
            "/api/v1/pods",
            "/apis/networking.k8s.io/v1/networkpolicies",
            "/api/v1/nodes",
        ] {
            let req = hyper::Request::get(path)
                .body(Vec::new())
                .with_context(|| format!("build GET {path}"))?;
            let text = client.request_text(req).await.with_context(|| {
                format!("GET {path} from the API server of {}", kubeconfig.display())
            })?;
            let doc: Value =
                serde_json::from_str(&text).with_context(|| format!("GET {path}: not JSON"))?;
            let origin = Origin {
                source: format!("GET {path}"),
                document: None,
                item: None,
            };
            add_document(origin, doc, &mut objects)?;
        }
        Ok(objects)
    })
}
