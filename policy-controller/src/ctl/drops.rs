//! `palisadectl drops [-f]`: the denied connections this node's agent saw (its last ones,
//! then, with `-f`, each one as it happens), from `GET /drops` on its debug socket. The agent
//! filters (by namespace, pod, direction), so a quiet pod's drops are not buried under a busy
//! one's in its ring of recent drops.

use super::style::{table, Cell, Colour, Style};
use super::{exit, live, DropsArgs, DropsOutput};
use crate::agent::drops::{DropEvent, DropFilter};
use crate::agent::http::{DropLine, DropsQuery};
use anyhow::{Context, Result};
use std::io::{BufRead, Write};

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
    let mut body = live::agent_get(&a.agent, &format!("/drops?{}", query.to_query()))?;
    let wide = a.output == DropsOutput::Wide;
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let mut rows: Vec<Vec<Cell>> = vec![header(wide)];
    if a.follow && a.output != DropsOutput::Json {
        writeln!(out, "{}", fixed_width(&header(wide), style))?;
        out.flush()?;
    }
    let mut line = String::new();
    loop {
        line.clear();
        let n = body
            .read_line(&mut line)
            .with_context(|| format!("read drops from {}", a.agent.display()))?;
        if n == 0 {
            break;
        }
        let event = match serde_json::from_str::<DropLine>(line.trim_end()) {
            Ok(DropLine::Drop(e)) => e,
            Ok(DropLine::Lost { lost }) => {
                eprintln!("note: the agent skipped {lost} drops (this reader did not keep up)");
                continue;
            }
            Err(e) => {
                eprintln!("warning: not a drop ({e}): {}", line.trim_end());
                continue;
            }
        };
        match a.output {
            DropsOutput::Json => writeln!(out, "{}", serde_json::to_string(&event)?)?,
            // Followed rows cannot be aligned in advance: each is printed as it comes, on
            // the header's fixed column widths.
            _ if a.follow => writeln!(out, "{}", fixed_width(&row(&event, wide), style))?,
            _ => rows.push(row(&event, wide)),
        }
        out.flush()?;
    }
    if !a.follow && a.output != DropsOutput::Json {
        write!(out, "{}", table(&rows, style))?;
    }
    Ok(exit::OK)
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
