//! `palisadectl reach -o dot|svg`: the reachability matrix as a picture of who reaches whom.
//!
//! A 500-pod matrix has 250,000 cells, but a cluster has few distinct roles: pods with the
//! same row (what they reach) and the same column (what reaches them), over every port asked
//! about, are one box of the graph. By construction every cell between two boxes is the
//! same, so one arrow says "every pod of this box reaches every pod of that one" on the
//! ports it is labelled with; an arrow from a box to itself says its pods reach one another.
//! A pod alone in its box gets no such loop (a pod reaching itself tells nothing).

use super::reach::{PortMatrix, Verdict};
use crate::model::{ClusterState, Labels, ObjectKey};
use anyhow::{bail, Context, Result};
use std::collections::HashMap;
use std::fmt::Write;
use std::path::PathBuf;

/// Pods with the same reachability, over every port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    /// `g1`, `g2`, ... in the order of the first member.
    pub id: String,
    pub pods: Vec<ObjectKey>,
    /// Labels every member carries (the role, usually).
    pub common_labels: Labels,
}

/// The ports (`80/TCP`) on which every pod of `from` reaches every pod of `to`, and those
/// without an answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Edge {
    pub from: String,
    pub to: String,
    pub allowed: Vec<String>,
    pub unknown: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Graph {
    /// The ports asked about (`80/TCP`).
    pub ports: Vec<String>,
    pub groups: Vec<Group>,
    pub edges: Vec<Edge>,
}

fn cell(m: &PortMatrix, src: &ObjectKey, dst: &ObjectKey) -> u8 {
    match m.cells.get(&(src.clone(), dst.clone())) {
        Some(Verdict::Allowed) => 1,
        Some(Verdict::Denied) => 0,
        _ => 2,
    }
}

/// Group the pods of `matrices` (all with the same pods) and draw the arrows between groups.
pub fn group(matrices: &[PortMatrix], state: &ClusterState) -> Graph {
    let pods: &[ObjectKey] = matrices.first().map_or(&[], |m| &m.pods);
    // A pod's signature: its row then its column, over every matrix.
    let mut by_signature: HashMap<Vec<u8>, usize> = HashMap::new();
    let mut members: Vec<Vec<ObjectKey>> = Vec::new();
    for p in pods {
        let mut signature = Vec::with_capacity(2 * pods.len() * matrices.len());
        for m in matrices {
            signature.extend(pods.iter().map(|q| cell(m, p, q)));
            signature.extend(pods.iter().map(|q| cell(m, q, p)));
        }
        let next = members.len();
        let index = *by_signature.entry(signature).or_insert(next);
        if index == next {
            members.push(Vec::new());
        }
        members[index].push(p.clone());
    }
    let groups: Vec<Group> = members
        .into_iter()
        .enumerate()
        .map(|(i, pods)| {
            let mut common: Option<Labels> = None;
            for p in &pods {
                let labels = state.pods.get(p).map(|p| &p.labels);
                common = Some(match (common, labels) {
                    (None, Some(l)) => l.clone(),
                    (Some(c), Some(l)) => {
                        c.into_iter().filter(|(k, v)| l.get(k) == Some(v)).collect()
                    }
                    (_, None) => Labels::new(),
                });
            }
            Group {
                id: format!("g{}", i + 1),
                pods,
                common_labels: common.unwrap_or_default(),
            }
        })
        .collect();
    let mut edges = Vec::new();
    for a in &groups {
        for b in &groups {
            if a.id == b.id && a.pods.len() == 1 {
                continue;
            }
            let (src, dst) = (&a.pods[0], &b.pods[0]);
            let mut edge = Edge {
                from: a.id.clone(),
                to: b.id.clone(),
                allowed: Vec::new(),
                unknown: Vec::new(),
            };
            for m in matrices {
                match cell(m, src, dst) {
                    1 => edge.allowed.push(m.label()),
                    2 => edge.unknown.push(m.label()),
                    _ => {}
                }
            }
            if !edge.allowed.is_empty() || !edge.unknown.is_empty() {
                edges.push(edge);
            }
        }
    }
    Graph {
        ports: matrices.iter().map(PortMatrix::label).collect(),
        groups,
        edges,
    }
}

/// A DOT string literal; a line break is DOT's `\n` (a centred line).
fn quote(s: &str) -> String {
    let escaped = s
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n");
    format!("\"{escaped}\"")
}

/// How many member names a box lists before "+N more".
const NAMES_SHOWN: usize = 4;

/// The box's text: its namespace(s) and size, the labels its pods share, a few names.
pub fn group_label(g: &Group) -> String {
    let mut namespaces: Vec<&str> = g.pods.iter().map(|p| p.namespace.as_str()).collect();
    namespaces.dedup();
    namespaces.sort_unstable();
    namespaces.dedup();
    let size = match g.pods.len() {
        1 => "1 pod".to_string(),
        n => format!("{n} pods"),
    };
    let mut lines = vec![format!("{}: {size}", namespaces.join(", "))];
    if !g.common_labels.is_empty() {
        let labels: Vec<String> = g
            .common_labels
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        lines.push(labels.join(" "));
    }
    let names: Vec<String> = g
        .pods
        .iter()
        .take(NAMES_SHOWN)
        .map(|p| {
            if namespaces.len() == 1 {
                p.name.to_string()
            } else {
                p.to_string()
            }
        })
        .collect();
    let more = g.pods.len().saturating_sub(NAMES_SHOWN);
    lines.push(if more > 0 {
        format!("{} +{more} more", names.join(", "))
    } else {
        names.join(", ")
    });
    lines.join("\n")
}

/// The graph in Graphviz' DOT language.
pub fn to_dot(g: &Graph) -> String {
    let mut out = String::new();
    let title = format!(
        "palisadectl reach {}: an arrow means every pod of one box reaches every pod of the other",
        g.ports.join(", ")
    );
    let _ = writeln!(out, "digraph reach {{");
    let _ = writeln!(
        out,
        "  graph [rankdir=LR, labelloc=t, fontname=\"sans-serif\", label={}];",
        quote(&title)
    );
    let _ = writeln!(
        out,
        "  node [shape=box, style=\"rounded,filled\", fillcolor=\"#eef3fb\", fontname=\"sans-serif\"];"
    );
    let _ = writeln!(out, "  edge [color=\"#2e7d32\", fontname=\"sans-serif\"];");
    for group in &g.groups {
        let _ = writeln!(
            out,
            "  {} [label={}];",
            group.id,
            quote(&group_label(group))
        );
    }
    let one_port = g.ports.len() == 1;
    for e in &g.edges {
        let mut attrs = Vec::new();
        if !e.allowed.is_empty() && !one_port {
            let ports = if e.allowed.len() == g.ports.len() {
                "all ports".to_string()
            } else {
                e.allowed.join(", ")
            };
            attrs.push(format!("label={}", quote(&ports)));
        }
        if e.allowed.is_empty() {
            // Only unknown cells: a dashed grey arrow, the ports without an answer.
            attrs.push(format!(
                "label={}, style=dashed, color=\"#9e9e9e\"",
                quote(&format!("? {}", e.unknown.join(", ")))
            ));
        }
        let attrs = if attrs.is_empty() {
            String::new()
        } else {
            format!(" [{}]", attrs.join(", "))
        };
        let _ = writeln!(out, "  {} -> {}{attrs};", e.from, e.to);
    }
    let _ = writeln!(out, "}}");
    out
}

/// Graphviz' `dot` on the PATH.
pub fn find_dot() -> Result<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path) {
        let candidate = dir.join("dot");
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    bail!("-o svg needs Graphviz' dot on the PATH (Debian: apt-get install graphviz); -o dot prints the graph for rendering elsewhere")
}

/// Render DOT text to SVG with `dot -Tsvg`.
pub fn render_svg(dot_text: &str) -> Result<Vec<u8>> {
    use std::io::Write as _;
    let dot = find_dot()?;
    let mut child = std::process::Command::new(&dot)
        .arg("-Tsvg")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .with_context(|| format!("run {}", dot.display()))?;
    // A writer thread: dot may fill its stdout pipe before it has read all of stdin.
    let mut stdin = child.stdin.take().context("dot's stdin")?;
    let text = dot_text.to_string();
    let writer = std::thread::spawn(move || stdin.write_all(text.as_bytes()));
    let out = child.wait_with_output().context("wait for dot")?;
    writer
        .join()
        .map_err(|_| anyhow::anyhow!("writing to dot panicked"))?
        .context("write the graph to dot")?;
    if !out.status.success() {
        bail!(
            "dot -Tsvg failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(out.stdout)
}
