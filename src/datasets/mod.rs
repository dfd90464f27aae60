//! Datasets: reading texts and labelled examples from local files.

use std::path::Path;

use anyhow::{bail, Context, Result};

/// One text per line. A trailing newline is fine; an empty file or an empty line in
/// the middle is an error, since an empty text has no tokens to represent.
pub fn read_lines(path: &Path) -> Result<Vec<String>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
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
