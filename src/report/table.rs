//! The report's tables as data: cells that know how they sort, under column titles.
//! Builders fill them (the `evals`, `analyses` and `data` modules); renderers write them.

/// A table cell: what it shows and, for numbers, the value it sorts by.
#[derive(Debug, Clone, PartialEq)]
pub struct Cell {
    pub text: String,
    pub sort: Option<f64>,
    /// A score that is no better than chance: greyed out in HTML (the text says so
    /// too, for Markdown and CSV readers).
    pub no_signal: bool,
}

impl Cell {
    /// A cell of text, sorting as text.
    pub fn text(text: impl Into<String>) -> Self {
        Self {
            text: text.into(),
            sort: None,
            no_signal: false,
        }
    }

    /// A number shown as `text`, sorting by `value` (as text where it is not finite).
    pub fn number(text: impl Into<String>, value: f64) -> Self {
        Self {
            text: text.into(),
            sort: value.is_finite().then_some(value),
            no_signal: false,
        }
    }
}

/// Rows of cells under column titles.
#[derive(Debug, Clone, PartialEq)]
pub struct Table {
    pub columns: Vec<String>,
    pub rows: Vec<Vec<Cell>>,
}

impl Table {
    /// A table of `rows` under the titles `columns`.
    pub fn new(columns: &[&str], rows: Vec<Vec<Cell>>) -> Self {
        Self {
            columns: columns.iter().map(|c| c.to_string()).collect(),
            rows,
        }
    }

    /// Whether column `i` holds numbers (right-aligned, sorted numerically).
    pub fn numeric(&self, i: usize) -> bool {
        !self.rows.is_empty() && self.rows.iter().all(|r| r[i].sort.is_some())
    }
}
