//! Reports: everything the harness shows a person. The terminal tables of the
//! commands ([`terminal`]), and `harness report` ([`load`], then [`write_report`]),
//! which turns a results directory into `leaderboard.md`, `index.html`, CSV files and
//! SVG plots; `docs/report.md` describes them.
//!
//! The report is one [`document::Document`] built from the results (its tables by
//! [`evals`], [`analyses`] and [`data`], its figures by [`plots`]) and written by the
//! renderers [`markdown`], [`html`] and [`csv_file`], which read only the document.

pub mod analyses;
pub mod csv_file;
pub mod data;
pub mod document;
pub mod evals;
pub mod html;
pub mod markdown;
pub mod plots;
pub mod results;
pub mod table;
pub mod terminal;
pub mod text;
pub mod training;

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

pub use results::{load, Results};
pub use terminal::{analyze_table, eval_summary, eval_table, inspect_table};

use crate::io::output::write_bytes_atomic;

/// Writes the report of `results` into `out` and returns the files written. Every
/// file is computed before the first is written, and each is written atomically.
/// Plots of tasks or models that are no longer in the results are removed, so that
/// `out` holds exactly one report.
pub fn write_report(results: &Results, out: &Path) -> Result<Vec<PathBuf>> {
    if results.evals.is_empty() && results.analyses.is_empty() {
        bail!(
            "no {} or {} results under {}",
            crate::results::eval::SCHEMA,
            crate::results::analyze::SCHEMA,
            results.dir.display()
        );
    }
    let plots = plots::all(results)?;
    let generated = document::generated(results, &crate::results::eval::now_utc());
    let doc = document::build(results, &plots, generated);
    let mut files = vec![
        (out.join("leaderboard.md"), markdown::render(&doc)),
        (out.join("index.html"), html::render(&doc)),
    ];
    for (name, table) in &doc.data {
        files.push((out.join(name), csv_file::render(table)?));
    }
    for p in &plots {
        files.push((out.join(p.path()), p.svg.clone()));
    }
    remove_stale_plots(&out.join(plots::DIR), &plots)?;
    for (path, text) in &files {
        write_bytes_atomic(path, text.as_bytes())?;
    }
    Ok(files.into_iter().map(|(path, _)| path).collect())
}

/// Removes plot files a previous report wrote that this one does not.
fn remove_stale_plots(dir: &Path, plots: &[plots::Plot]) -> Result<()> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(());
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if plots::is_figure_file(&name) && !plots.iter().any(|p| p.file == name) {
            std::fs::remove_file(entry.path())
                .with_context(|| format!("cannot remove {}", entry.path().display()))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The committed results: real runs of both shipped models, small.
    pub(super) fn fixture_results() -> Results {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/results");
        load(&dir).expect("fixture results load")
    }

    #[test]
    fn fixtures_load_in_report_order_without_warnings() {
        let r = fixture_results();
        assert!(r.warnings.is_empty(), "{:?}", r.warnings);
        let keys: Vec<(&str, &str, &[usize])> = r
            .evals
            .iter()
            .map(|e| {
                (
                    e.task.name.as_str(),
                    e.model.name.as_str(),
                    &e.settings.ablate[..],
                )
            })
            .collect();
        let mut sorted = keys.clone();
        sorted.sort();
        assert_eq!(keys, sorted);
        assert!(keys.contains(&("mr", "smollm2", &[12][..])));
        assert_eq!(r.models(), ["gemma3", "smollm2"]);
        assert_eq!(r.tasks(), ["austen", "boolq-retrieval", "lee-sts", "mr"]);
        assert_eq!(r.analyses.len(), 2);
    }
}
