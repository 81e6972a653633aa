//! Terminal output: colour only when asked for or when stdout is a terminal, and aligned
//! tables whose columns are padded on the plain text (escape codes never count as width).

use std::io::IsTerminal;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Default)]
pub enum ColorChoice {
    #[default]
    Auto,
    Always,
    Never,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Colour {
    Green,
    Red,
    Yellow,
    Bold,
}

impl Colour {
    fn code(self) -> &'static str {
        match self {
            Colour::Green => "32",
            Colour::Red => "31",
            Colour::Yellow => "33",
            Colour::Bold => "1",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Style {
    pub colour: bool,
}

impl Style {
    /// `auto`: colour iff the stream is a terminal and `NO_COLOR` is unset (no-color.org).
    pub fn for_stream(choice: ColorChoice, is_terminal: bool) -> Style {
        let colour = match choice {
            ColorChoice::Always => true,
            ColorChoice::Never => false,
            ColorChoice::Auto => is_terminal && std::env::var_os("NO_COLOR").is_none(),
        };
        Style { colour }
    }

    pub fn stdout(choice: ColorChoice) -> Style {
        Style::for_stream(choice, std::io::stdout().is_terminal())
    }

    pub fn stderr(choice: ColorChoice) -> Style {
        Style::for_stream(choice, std::io::stderr().is_terminal())
    }

    pub fn paint(&self, colour: Colour, text: &str) -> String {
        if self.colour {
            format!("\x1b[{}m{text}\x1b[0m", colour.code())
        } else {
            text.to_string()
        }
    }
}

/// One table cell: its text and an optional colour.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cell {
    pub text: String,
    pub colour: Option<Colour>,
}

impl Cell {
    pub fn plain(text: impl Into<String>) -> Cell {
        Cell {
            text: text.into(),
            colour: None,
        }
    }

    pub fn coloured(text: impl Into<String>, colour: Colour) -> Cell {
        Cell {
            text: text.into(),
            colour: Some(colour),
        }
    }
}

fn width(s: &str) -> usize {
    s.chars().count()
}

/// Rows of cells, columns left-aligned and separated by two spaces, no trailing blanks.
pub fn table(rows: &[Vec<Cell>], style: Style) -> String {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let mut widths = vec![0; columns];
    for row in rows {
        for (i, c) in row.iter().enumerate() {
            widths[i] = widths[i].max(width(&c.text));
        }
    }
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (i, c) in row.iter().enumerate() {
            let text = match c.colour {
                Some(colour) => style.paint(colour, &c.text),
                None => c.text.clone(),
            };
            line.push_str(&text);
            if i + 1 < row.len() {
                line.push_str(&" ".repeat(widths[i] - width(&c.text) + 2));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_align_on_text_width_not_escape_codes() {
        let rows = vec![
            vec![
                Cell::plain("FROM\\TO"),
                Cell::plain("x/a"),
                Cell::plain("x/bb"),
            ],
            vec![
                Cell::plain("x/a"),
                Cell::coloured("✓", Colour::Green),
                Cell::plain("✗"),
            ],
        ];
        assert_eq!(
            table(&rows, Style { colour: false }),
            "FROM\\TO  x/a  x/bb\nx/a      ✓    ✗\n"
        );
        let coloured = table(&rows, Style { colour: true });
        assert!(coloured.contains("\x1b[32m✓\x1b[0m    ✗"), "{coloured:?}");
    }

    #[test]
    fn colour_choice() {
        assert!(!Style::for_stream(ColorChoice::Auto, false).colour);
        assert!(Style::for_stream(ColorChoice::Always, false).colour);
        assert!(!Style::for_stream(ColorChoice::Never, true).colour);
    }
}
