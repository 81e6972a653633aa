//! `palisadectl reach`: the pod × pod reachability matrix for a port and protocol, from the
//! compiled rulesets (the agent's code path: [`crate::eval::interp::Reachability`] compiles
//! each node's ruleset and walks the first packet through the hooks it crosses). Every cell
//! is also asked of the reference evaluator; a disagreement is a bug in the compiler or the
//! evaluator and is reported loudly.

use super::style::{table, Cell, Colour, Style};
use crate::eval::interp::Reachability;
use crate::eval::reference::{self, Endpoint};
use crate::model::{ClusterState, ObjectKey, Protocol};
use serde_json::{Map, Value};
use std::collections::BTreeMap;

/// One cell's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Allowed,
    Denied,
    /// The question has no answer (no common address family, ...).
    Unknown(String),
}

/// The matrix for one port and protocol. Rows (sources) and columns (destinations) are the
/// same pods.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortMatrix {
    pub port: u16,
    pub protocol: Protocol,
    pub pods: Vec<ObjectKey>,
    pub cells: BTreeMap<(ObjectKey, ObjectKey), Verdict>,
}

impl PortMatrix {
    /// `80/TCP`
    pub fn label(&self) -> String {
        format!("{}/{}", self.port, self.protocol)
    }
}

/// A cell where the compiled path and the reference evaluator disagree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disagreement {
    pub port: u16,
    pub protocol: Protocol,
    pub src: ObjectKey,
    pub dst: ObjectKey,
    pub compiled: bool,
    pub reference: bool,
}

impl std::fmt::Display for Disagreement {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let word = |b: bool| if b { "allowed" } else { "denied" };
        write!(
            f,
            "{}/{} {} -> {}: compiled ruleset says {}, reference evaluator says {}",
            self.port,
            self.protocol,
            self.src,
            self.dst,
            word(self.compiled),
            word(self.reference)
        )
    }
}

/// The pods of the matrix: pods with an address, in `namespace` if given, sorted.
pub fn matrix_pods(state: &ClusterState, namespace: Option<&str>) -> Vec<ObjectKey> {
    state
        .pods
        .values()
        .filter(|p| !p.ips.is_empty())
        .filter(|p| namespace.is_none_or(|ns| p.key.namespace == ns))
        .map(|p| p.key.clone())
        .collect()
}

/// Compute the matrices for every `(port, protocol)`.
pub fn compute(
    state: &ClusterState,
    pods: &[ObjectKey],
    targets: &[(u16, Protocol)],
) -> (Vec<PortMatrix>, Vec<Disagreement>) {
    let mut reach = Reachability::with_defaults(state);
    let mut matrices = Vec::new();
    let mut disagreements = Vec::new();
    for &(port, protocol) in targets {
        let mut cells = BTreeMap::new();
        for src in pods {
            for dst in pods {
                let (s, d) = (Endpoint::Pod(src.clone()), Endpoint::Pod(dst.clone()));
                let verdict = match reach.check(&s, &d, protocol, port) {
                    Ok(v) => {
                        let by_reference = reference::allowed(state, &s, &d, protocol, port);
                        if by_reference != v.allowed {
                            disagreements.push(Disagreement {
                                port,
                                protocol,
                                src: src.clone(),
                                dst: dst.clone(),
                                compiled: v.allowed,
                                reference: by_reference,
                            });
                        }
                        if v.allowed {
                            Verdict::Allowed
                        } else {
                            Verdict::Denied
                        }
                    }
                    Err(e) => Verdict::Unknown(e.to_string()),
                };
                cells.insert((src.clone(), dst.clone()), verdict);
            }
        }
        matrices.push(PortMatrix {
            port,
            protocol,
            pods: pods.to_vec(),
            cells,
        });
    }
    (matrices, disagreements)
}

pub const LEGEND: &str = "✓ allowed  ✗ denied  ? no answer (see stderr); rows: from, columns: to";

/// The tables, one per port, then the legend. With `wide` (the state), each row also names
/// the pod's node and addresses.
pub fn render_table(matrices: &[PortMatrix], wide: Option<&ClusterState>, style: Style) -> String {
    let mut out = String::new();
    for m in matrices {
        out.push_str(&style.paint(Colour::Bold, &format!("PORT {}", m.label())));
        out.push('\n');
        if m.pods.is_empty() {
            out.push_str("(no pods)\n\n");
            continue;
        }
        let mut rows = Vec::new();
        let mut header = vec![Cell::plain("FROM\\TO")];
        if wide.is_some() {
            header.extend([Cell::plain("NODE"), Cell::plain("IP")]);
        }
        header.extend(m.pods.iter().map(|p| Cell::plain(p.to_string())));
        rows.push(header);
        for src in &m.pods {
            let mut row = vec![Cell::plain(src.to_string())];
            if let Some(state) = wide {
                let pod = state.pods.get(src);
                row.push(Cell::plain(
                    pod.and_then(|p| p.node.clone())
                        .unwrap_or_else(|| "-".into()),
                ));
                row.push(Cell::plain(pod.map_or_else(String::new, |p| {
                    p.ips
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join(",")
                })));
            }
            for dst in &m.pods {
                row.push(match m.cells.get(&(src.clone(), dst.clone())) {
                    Some(Verdict::Allowed) => Cell::coloured("✓", Colour::Green),
                    Some(Verdict::Denied) => Cell::coloured("✗", Colour::Red),
                    _ => Cell::coloured("?", Colour::Yellow),
                });
            }
            rows.push(row);
        }
        out.push_str(&table(&rows, style));
        out.push('\n');
    }
    out.push_str(LEGEND);
    out.push('\n');
    out
}

/// `{"80/TCP": {"x/a": {"x/b": true}}}`; cells without an answer are left out.
pub fn to_json(matrices: &[PortMatrix]) -> Value {
    let mut top = Map::new();
    for m in matrices {
        let mut rows = Map::new();
        for src in &m.pods {
            let mut row = Map::new();
            for dst in &m.pods {
                match m.cells.get(&(src.clone(), dst.clone())) {
                    Some(Verdict::Allowed) => row.insert(dst.to_string(), Value::Bool(true)),
                    Some(Verdict::Denied) => row.insert(dst.to_string(), Value::Bool(false)),
                    _ => None,
                };
            }
            rows.insert(src.to_string(), Value::Object(row));
        }
        top.insert(m.label(), Value::Object(rows));
    }
    Value::Object(top)
}

/// The cells without an answer, for stderr.
pub fn unknown_cells(matrices: &[PortMatrix]) -> Vec<String> {
    let mut out = Vec::new();
    for m in matrices {
        for ((s, d), v) in &m.cells {
            if let Verdict::Unknown(why) = v {
                out.push(format!("{} {s} -> {d}: {why}", m.label()));
            }
        }
    }
    out
}
