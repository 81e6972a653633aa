//! Reachability matrices: `matrix[source pod][destination pod] = allowed?`, their comparison
//! and their rendering as the tables scenario files show (`.` allowed, `X` blocked).
//!
//! Pure: no I/O, so the runner, the demo and `palisadectl` print matrices the same way.

use std::collections::HashMap;
use std::fmt::Write as _;

/// A matrix over pods named `ns/pod`. Rows and columns keep the order of first insertion; a
/// cell may be absent (not listed in a scenario, or not probed).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Matrix {
    sources: Vec<String>,
    destinations: Vec<String>,
    cells: HashMap<(String, String), bool>,
}

impl Matrix {
    pub fn set(&mut self, src: &str, dst: &str, allowed: bool) {
        if !self.sources.iter().any(|s| s == src) {
            self.sources.push(src.to_string());
        }
        if !self.destinations.iter().any(|d| d == dst) {
            self.destinations.push(dst.to_string());
        }
        self.cells
            .insert((src.to_string(), dst.to_string()), allowed);
    }

    pub fn get(&self, src: &str, dst: &str) -> Option<bool> {
        self.cells.get(&(src.to_string(), dst.to_string())).copied()
    }

    pub fn sources(&self) -> &[String] {
        &self.sources
    }

    pub fn destinations(&self) -> &[String] {
        &self.destinations
    }

    /// Every listed cell as `(source, destination, allowed)`, rows in order.
    pub fn cells(&self) -> Vec<(&str, &str, bool)> {
        let mut out = Vec::new();
        for s in &self.sources {
            for d in &self.destinations {
                if let Some(v) = self.cells.get(&(s.clone(), d.clone())) {
                    out.push((s.as_str(), d.as_str(), *v));
                }
            }
        }
        out
    }

    pub fn len(&self) -> usize {
        self.cells.len()
    }

    pub fn is_empty(&self) -> bool {
        self.cells.is_empty()
    }

    /// A matrix with the same rows and columns order as `self` (for printing an observed
    /// matrix in the expected one's layout).
    pub fn with_layout_of(&self, layout: &Matrix) -> Matrix {
        let mut out = Matrix {
            sources: layout.sources.clone(),
            destinations: layout.destinations.clone(),
            cells: HashMap::new(),
        };
        for (s, d, v) in self.cells() {
            out.set(s, d, v);
        }
        out
    }
}

/// One cell where the observation differs from the expectation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Difference {
    pub src: String,
    pub dst: String,
    pub expected: bool,
    /// `None`: the cell was not probed.
    pub observed: Option<bool>,
    /// A pod → itself cell of a scenario with `ignore_loopback`: reported, never a failure.
    pub ignored: bool,
}

impl Difference {
    pub fn describe(&self) -> String {
        let word = |b: bool| if b { "allowed" } else { "blocked" };
        format!(
            "{} -> {}: expected {}, observed {}{}",
            self.src,
            self.dst,
            word(self.expected),
            self.observed.map_or("nothing (not probed)", word),
            if self.ignored {
                " (loopback, ignored)"
            } else {
                ""
            }
        )
    }
}

/// Compare only the cells `expected` lists.
pub fn compare(expected: &Matrix, observed: &Matrix, ignore_loopback: bool) -> Vec<Difference> {
    expected
        .cells()
        .into_iter()
        .filter_map(|(s, d, want)| {
            let got = observed.get(s, d);
            (got != Some(want)).then(|| Difference {
                src: s.to_string(),
                dst: d.to_string(),
                expected: want,
                observed: got,
                ignored: ignore_loopback && s == d,
            })
        })
        .collect()
}

/// How a cell is highlighted when printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mark {
    Plain,
    /// Differs from the expectation: `!` after the symbol, red on a terminal.
    Differs,
    /// Differs, but is an ignored loopback cell: `~`, dim on a terminal.
    Ignored,
    /// Changed since the previous matrix (the demo): `*`, yellow on a terminal.
    Changed,
}

/// Render a matrix as a table: rows = sources, columns = destinations; `.` allowed, `X`
/// blocked, blank for cells not in the matrix. `mark` highlights cells; `colour` uses ANSI
/// colours (only on a terminal) in addition to the marker characters.
pub fn render(m: &Matrix, mark: &dyn Fn(&str, &str) -> Mark, colour: bool) -> String {
    let row_w = m
        .sources
        .iter()
        .map(|s| s.chars().count())
        .max()
        .unwrap_or(1)
        .max(1);
    let widths: Vec<usize> = m
        .destinations
        .iter()
        .map(|d| d.chars().count().max(3))
        .collect();
    let mut out = String::new();
    let _ = write!(out, "{:<row_w$}", "-");
    for (d, w) in m.destinations.iter().zip(&widths) {
        let _ = write!(out, " {d:<w$}");
    }
    out.push('\n');
    for s in &m.sources {
        let _ = write!(out, "{s:<row_w$}");
        for (d, w) in m.destinations.iter().zip(&widths) {
            let symbol = match m.get(s, d) {
                Some(true) => ".",
                Some(false) => "X",
                None => " ",
            };
            let k = mark(s, d);
            let marker = match k {
                Mark::Plain => " ",
                Mark::Differs => "!",
                Mark::Ignored => "~",
                Mark::Changed => "*",
            };
            // Column text: the symbol under the name's second character, like the tables
            // in the scenario files, then the marker.
            let cell = format!(" {symbol}{marker}");
            let padded = format!("{cell:<w$}");
            out.push(' ');
            if colour && k != Mark::Plain {
                let code = match k {
                    Mark::Differs => "1;31",
                    Mark::Ignored => "2",
                    Mark::Changed => "1;33",
                    Mark::Plain => unreachable!(),
                };
                let _ = write!(out, "\x1b[{code}m{padded}\x1b[0m");
            } else {
                out.push_str(&padded);
            }
        }
        // No trailing blanks: easier to diff and to paste into scenario files.
        while out.ends_with(' ') {
            out.pop();
        }
        out.push('\n');
    }
    out
}

/// Render `expected` and `observed` one below the other, the differing cells marked in the
/// observed one, followed by one line per difference.
pub fn render_comparison(
    expected: &Matrix,
    observed: &Matrix,
    ignore_loopback: bool,
    colour: bool,
) -> String {
    let diffs = compare(expected, observed, ignore_loopback);
    let lookup = |s: &str, d: &str| {
        diffs
            .iter()
            .find(|x| x.src == s && x.dst == d)
            .map_or(Mark::Plain, |x| {
                if x.ignored {
                    Mark::Ignored
                } else {
                    Mark::Differs
                }
            })
    };
    let observed = observed.with_layout_of(expected);
    let mut out = String::new();
    out.push_str("expected:\n");
    out.push_str(&indent(&render(expected, &|_, _| Mark::Plain, colour)));
    out.push_str("observed (! = differs from expected, ~ = ignored loopback):\n");
    out.push_str(&indent(&render(&observed, &lookup, colour)));
    for d in &diffs {
        let _ = writeln!(out, "  {}", d.describe());
    }
    out
}

fn indent(s: &str) -> String {
    s.lines().map(|l| format!("  {l}\n")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(cells: &[(&str, &str, bool)]) -> Matrix {
        let mut m = Matrix::default();
        for (s, d, v) in cells {
            m.set(s, d, *v);
        }
        m
    }

    #[test]
    fn compares_only_listed_cells_and_flags_ignored_loopback() {
        let expected = m(&[("x/a", "x/a", false), ("x/a", "x/b", true)]);
        let observed = m(&[
            ("x/a", "x/a", true),
            ("x/a", "x/b", true),
            ("x/b", "x/a", false),
        ]);
        let d = compare(&expected, &observed, true);
        assert_eq!(d.len(), 1);
        assert!(d[0].ignored);
        let d = compare(&expected, &observed, false);
        assert!(!d[0].ignored);
        let d = compare(&expected, &m(&[]), false);
        assert_eq!(d.len(), 2);
        assert_eq!(d[0].observed, None);
    }

    #[test]
    fn renders_like_the_scenario_tables() {
        let expected = m(&[
            ("x/a", "x/a", true),
            ("x/a", "y/b", false),
            ("y/b", "x/a", true),
            ("y/b", "y/b", true),
        ]);
        let text = render(&expected, &|_, _| Mark::Plain, false);
        assert_eq!(text, "-   x/a y/b\nx/a  .   X\ny/b  .   .\n");
        let observed = m(&[
            ("y/b", "y/b", true),
            ("y/b", "x/a", true),
            ("x/a", "y/b", true),
            ("x/a", "x/a", true),
        ]);
        let text = render_comparison(&expected, &observed, false, false);
        assert!(text.contains("x/a  .   .!"), "{text}");
        assert!(text.contains("x/a -> y/b: expected blocked, observed allowed"));
        let coloured = render_comparison(&expected, &observed, false, true);
        assert!(coloured.contains("\x1b[1;31m"));
    }
}
