//! `palisadectl drops [-f]`: the denied connections the node agents saw (their last ones,
//! then, with `-f`, each one as it happens), from `GET /drops` on each agent's debug socket
//! (this node's, or several: `--agent` again for each, e.g. sockets forwarded from other
//! nodes). The agents filter (by namespace, pod, direction), so a quiet pod's drops are not
//! buried under a busy one's in an agent's ring of recent drops.

use super::style::{table, Cell, Colour, Style};
use super::{exit, live, DropsArgs, DropsOutput};
use crate::agent::drops::{DropEvent, DropFilter};
use crate::agent::http::{DropLine, DropsQuery};
use anyhow::{anyhow, Result};
use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::sync::mpsc;

const COLUMNS: [&str; 7] = [
    "TIME",
    "NODE",
    "DIRECTION",
    "FROM",
    "TO",
    "PORT",
    "POLICIES",
];
const WIDE_COLUMNS: [&str; 4] = ["SRC-IP", "DST-IP", "SRC-PORT", "RULE"];

/// What a reader thread hands over: a line of one agent's stream, or the end of it.
enum Received {
    Line(PathBuf, DropLine),
    Failed(PathBuf, anyhow::Error),
    End,
}

/// Read one agent's `/drops` stream on a thread of its own.
fn spawn_reader(socket: PathBuf, target: String, tx: mpsc::Sender<Received>) {
    std::thread::spawn(move || {
        let body = match live::agent_get(&socket, &target) {
            Ok(b) => b,
            Err(e) => {
                let _ = tx.send(Received::Failed(socket, e));
                return;
            }
        };
        for line in body.lines() {
            let line = match line {
                Ok(l) => l,
                Err(e) => {
                    let _ = tx.send(Received::Failed(socket.clone(), e.into()));
                    return;
                }
            };
            match serde_json::from_str::<DropLine>(&line) {
                Ok(d) => {
                    if tx.send(Received::Line(socket.clone(), d)).is_err() {
                        return;
                    }
                }
                Err(e) => eprintln!("warning: {}: not a drop ({e}): {line}", socket.display()),
            }
        }
        let _ = tx.send(Received::End);
    });
}

pub fn drops_cmd(a: &DropsArgs, style: Style) -> Result<u8> {
    let query = DropsQuery {
        follow: a.follow,
        last: Some(a.last),
        filter: DropFilter {
            namespace: a.namespace.clone(),
            pod: a.pod.clone(),
            direction: a.direction.clone(),
        },
    };
    let target = format!("/drops?{}", query.to_query());
    let (tx, rx) = mpsc::channel();
    for socket in &a.agent {
        spawn_reader(socket.clone(), target.clone(), tx.clone());
    }
    drop(tx);
    let wide = a.output == DropsOutput::Wide;
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    if a.follow && a.output != DropsOutput::Json {
        writeln!(out, "{}", fixed_width(&header(wide), style))?;
        out.flush()?;
    }
    let mut collected: Vec<DropEvent> = Vec::new();
    let mut failures = Vec::new();
    let mut open = a.agent.len();
    while open > 0 {
        let Ok(received) = rx.recv() else { break };
        let event = match received {
            Received::Line(_, DropLine::Drop(e)) => *e,
            Received::Line(socket, DropLine::Lost { lost }) => {
                eprintln!(
                    "note: {} skipped {lost} drops (this reader did not keep up)",
                    socket.display()
                );
                continue;
            }
            Received::Failed(socket, e) => {
                eprintln!("error: {}: {e:#}", socket.display());
                failures.push(e);
                open -= 1;
                continue;
            }
            Received::End => {
                open -= 1;
                continue;
            }
        };
        if !a.follow {
            collected.push(event);
            continue;
        }
        match a.output {
            DropsOutput::Json => writeln!(out, "{}", serde_json::to_string(&event)?)?,
            // Followed rows cannot be aligned in advance: each is printed as it comes, on
            // the header's fixed column widths.
            _ => writeln!(out, "{}", fixed_width(&row(&event, wide), style))?,
        }
        out.flush()?;
    }
    if failures.len() == a.agent.len() {
        // Nothing answered: that is an error, not an empty list.
        let e = failures.pop().expect("at least one agent");
        return Err(if a.agent.len() == 1 {
            e
        } else {
            anyhow!("no agent answered; the last: {e:#}")
        });
    }
    if !a.follow {
        // Several agents: their last drops merged in time order, the last --last of them.
        collected.sort_by(|x, y| x.time.cmp(&y.time));
        collected.drain(..collected.len().saturating_sub(a.last));
        match a.output {
            DropsOutput::Json => {
                for e in &collected {
                    writeln!(out, "{}", serde_json::to_string(e)?)?;
                }
            }
            _ => {
                let mut rows = vec![header(wide)];
                rows.extend(collected.iter().map(|e| row(e, wide)));
                write!(out, "{}", table(&rows, style))?;
            }
        }
    }
    Ok(if failures.is_empty() {
        exit::OK
    } else {
        exit::ERROR
    })
}

fn header(wide: bool) -> Vec<Cell> {
    let mut h: Vec<Cell> = COLUMNS.iter().map(|c| Cell::plain(*c)).collect();
    if wide {
        h.extend(WIDE_COLUMNS.iter().map(|c| Cell::plain(*c)));
    }
    h
}

/// One drop as a table row.
pub fn row(e: &DropEvent, wide: bool) -> Vec<Cell> {
    let endpoint = |pod: &Option<String>, ip: &str| pod.clone().unwrap_or_else(|| ip.to_string());
    // `2026-12-07T08:00:00.123456789Z` → `08:00:00.123`
    let time = e.time.get(11..23).unwrap_or(&e.time).to_string();
    let mut cells = vec![
        Cell::plain(time),
        Cell::plain(e.node.clone()),
        Cell::coloured(e.direction.clone(), Colour::Red),
        Cell::plain(endpoint(&e.src_pod, &e.src_ip)),
        Cell::plain(endpoint(&e.dst_pod, &e.dst_ip)),
        Cell::plain(match e.dst_port {
            Some(p) => format!("{p}/{}", e.protocol),
            None => e.protocol.clone(),
        }),
        Cell::plain(if e.policies.is_empty() {
            "-".to_string()
        } else {
            e.policies.join(",")
        }),
    ];
    if wide {
        cells.extend([
            Cell::plain(e.src_ip.clone()),
            Cell::plain(e.dst_ip.clone()),
            Cell::plain(e.src_port.map_or_else(|| "-".into(), |p| p.to_string())),
            Cell::plain(e.prefix.clone()),
        ]);
    }
    cells
}

/// Widths of the followed columns (a longer value pushes the rest of its line right).
const FIXED_WIDTHS: [usize; 11] = [12, 10, 9, 28, 28, 9, 24, 15, 15, 8, 0];

fn fixed_width(cells: &[Cell], style: Style) -> String {
    let mut line = String::new();
    for (i, c) in cells.iter().enumerate() {
        let text = match c.colour {
            Some(colour) => style.paint(colour, &c.text),
            None => c.text.clone(),
        };
        line.push_str(&text);
        if i + 1 < cells.len() {
            let pad = FIXED_WIDTHS[i].saturating_sub(c.text.chars().count()) + 2;
            line.push_str(&" ".repeat(pad));
        }
    }
    line
}
