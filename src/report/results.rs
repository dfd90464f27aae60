//! Finding and reading every result file under a results directory.
//!
//! Files are recognised by their `schema` field, not their path, so results may be
//! arranged in any folders; ablated eval runs (`<task>.ablate-12.json`) are told
//! from the baseline by `settings.ablate`.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::results::analyze;
use crate::results::analyze::AnalyzeResult;
use crate::results::eval::{self, EvalResult};

/// Every usable result under a directory, in report order, and a line for each file
/// that was left out.
#[derive(Debug)]
pub struct Results {
    pub dir: PathBuf,
    /// Sorted by task, then model, then ablation (the baseline first).
    pub evals: Vec<EvalResult>,
    /// Sorted by model.
    pub analyses: Vec<AnalyzeResult>,
    /// Files left out and why, one line each, naming the file.
    pub warnings: Vec<String>,
}

impl Results {
    /// Every model with a result of either kind, sorted by name; a model's position
    /// here picks its colour in every plot.
    pub fn models(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self
            .evals
            .iter()
            .map(|r| r.model.name.as_str())
            .chain(self.analyses.iter().map(|a| a.model.name.as_str()))
            .collect();
        names.sort_unstable();
        names.dedup();
        names
    }

    /// Task names, sorted.
    pub fn tasks(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.evals.iter().map(|r| r.task.name.as_str()).collect();
        names.dedup();
        names
    }
}

/// Reads every `harness.eval/1` and `harness.analyze/1` file under `dir`. Files of
/// another schema, or that do not parse, become warnings; a missing directory is an
/// error. Finding nothing usable is not an error here, so that the caller can show
/// the warnings first.
pub fn load(dir: &Path) -> Result<Results> {
    if !dir.exists() {
        bail!(
            "results directory {} does not exist (run harness eval or harness analyze first, or give --results)",
            dir.display()
        );
    }
    if !dir.is_dir() {
        bail!("{} is not a directory", dir.display());
    }
    let mut files = Vec::new();
    walk(dir, &mut files)?;
    files.sort();
    let mut evals: Vec<(PathBuf, EvalResult)> = Vec::new();
    let mut analyses: Vec<(PathBuf, AnalyzeResult)> = Vec::new();
    let mut warnings = Vec::new();
    for path in files {
        match parse(&path) {
            Ok(Parsed::Eval(r)) => evals.push((path, *r)),
            Ok(Parsed::Analysis(a)) => analyses.push((path, *a)),
            Err(why) => warnings.push(format!("skipping {}: {why}", path.display())),
        }
    }
    // Stable sorts on top of the path order, so that duplicates meet in path order.
    evals.sort_by(|(_, a), (_, b)| eval_key(a).cmp(&eval_key(b)));
    analyses.sort_by(|(_, a), (_, b)| a.model.name.cmp(&b.model.name));
    let evals = dedup(evals, &mut warnings, |(pa, a), (pb, b)| {
        if eval_key(a) != eval_key(b) {
            return None;
        }
        // The newer run wins; ISO 8601 timestamps sort as text.
        let keep_b = b.created >= a.created;
        let (kept, dropped) = if keep_b { (pb, pa) } else { (pa, pb) };
        Some((
            keep_b,
            format!(
                "{} and {} are both {} on {} ({}); using {}, the newer",
                dropped.display(),
                kept.display(),
                a.model.name,
                a.task.name,
                super::text::eval_run_label(&a.settings),
                kept.display()
            ),
        ))
    });
    let analyses = dedup(analyses, &mut warnings, |(pa, a), (pb, b)| {
        (a.model.name == b.model.name).then(|| {
            (
                false,
                format!(
                    "{} and {} are both analyses of {}; using {}",
                    pa.display(),
                    pb.display(),
                    a.model.name,
                    pa.display()
                ),
            )
        })
    });
    Ok(Results {
        dir: dir.to_path_buf(),
        evals,
        analyses,
        warnings,
    })
}

/// Report order of eval results, which is also their identity: one result per task,
/// model and ablation.
fn eval_key(r: &EvalResult) -> (&str, &str, &[usize], &str, &str) {
    let s = &r.settings;
    (&r.task.name, &r.model.name, &s.ablate, &s.dtype, &s.device)
}

/// Drops neighbours that `same` says are duplicates: it returns whether to keep the
/// second instead of the first, and the warning to give.
fn dedup<T>(
    items: Vec<(PathBuf, T)>,
    warnings: &mut Vec<String>,
    same: impl Fn(&(PathBuf, T), &(PathBuf, T)) -> Option<(bool, String)>,
) -> Vec<T> {
    let mut kept: Vec<(PathBuf, T)> = Vec::new();
    for item in items {
        if let Some(last) = kept.last_mut() {
            if let Some((keep_new, warning)) = same(last, &item) {
                warnings.push(warning);
                if keep_new {
                    *last = item;
                }
                continue;
            }
        }
        kept.push(item);
    }
    kept.into_iter().map(|(_, t)| t).collect()
}

/// Collects `*.json` files under `dir`, leaving out hidden files and directories
/// (an interrupted atomic write leaves a hidden `.name.partial-PID`).
fn walk(dir: &Path, files: &mut Vec<PathBuf>) -> Result<()> {
    let entries =
        std::fs::read_dir(dir).with_context(|| format!("cannot read {}", dir.display()))?;
    for entry in entries {
        let entry = entry.with_context(|| format!("cannot read {}", dir.display()))?;
        let path = entry.path();
        if entry.file_name().to_string_lossy().starts_with('.') {
            continue;
        }
        // Not following links into directories keeps a link loop from recursing forever.
        if entry.file_type()?.is_dir() {
            walk(&path, files)?;
        } else if path.extension().is_some_and(|e| e == "json") {
            files.push(path);
        }
    }
    Ok(())
}

/// Why an eval result cannot be drawn, if it cannot: every plot and table indexes
/// its layers by number and trusts the peak and final layer to be among them.
fn consistent(r: &EvalResult) -> std::result::Result<(), String> {
    let n = r.layers.len();
    if n == 0 {
        return Err("it has no layers".into());
    }
    if let Some((i, l)) = r.layers.iter().enumerate().find(|(i, l)| l.layer != *i) {
        return Err(format!(
            "it lists layer {} where layer {i} belongs",
            l.layer
        ));
    }
    if n != r.model.num_layers + 1 {
        return Err(format!(
            "it has {n} layers, but its model has {} blocks (and the embeddings)",
            r.model.num_layers
        ));
    }
    for (what, point) in [("peak", &r.peak), ("final", &r.last)] {
        if point.layer >= n {
            return Err(format!(
                "its {what} layer {} is outside its layers 0..={}",
                point.layer,
                n - 1
            ));
        }
    }
    if r.last.layer != n - 1 {
        return Err(format!(
            "its final layer {} is not its last layer {}",
            r.last.layer,
            n - 1
        ));
    }
    Ok(())
}

enum Parsed {
    Eval(Box<EvalResult>),
    Analysis(Box<AnalyzeResult>),
}

/// One file as a result, or why it is not one.
fn parse(path: &Path) -> std::result::Result<Parsed, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read it ({e})"))?;
    let value: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| format!("not valid JSON ({e})"))?;
    let schema = value
        .get("schema")
        .and_then(|s| s.as_str())
        .unwrap_or_default()
        .to_string();
    let invalid = |e: serde_json::Error| format!("not a valid {schema} file ({e})");
    match schema.as_str() {
        eval::SCHEMA => {
            let r: EvalResult = serde_json::from_value(value).map_err(invalid)?;
            consistent(&r)?;
            Ok(Parsed::Eval(Box::new(r)))
        }
        analyze::SCHEMA => serde_json::from_value(value)
            .map(|a| Parsed::Analysis(Box::new(a)))
            .map_err(invalid),
        "" => Err("no schema field, so not a harness result".into()),
        other => Err(format!(
            "schema {other} is not one this report reads ({}, {})",
            eval::SCHEMA,
            analyze::SCHEMA
        )),
    }
}
