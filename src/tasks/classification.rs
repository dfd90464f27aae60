//! Classification: a pooled embedding per text and a linear probe per layer, scored
//! by cross-validated accuracy (and macro-F1).

use std::collections::{BTreeMap, HashMap};

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

use super::{LoadedTask, Settings};
use crate::embeddings::pool::Pool;
use crate::embeddings::session::Session;
use crate::probe::{self, ProbeConfig};
use crate::stats::metrics;
use crate::stats::sampling::subset;
use crate::stats::scores::Scored;

/// `[labels]`: where the text and the label are, and how labels become classes.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LabelSpec {
    /// Column holding the text.
    pub text: String,
    /// Column holding the label.
    pub column: String,
    /// For numeric labels: values above become the second class, values below the
    /// first; rows equal to the threshold are dropped.
    pub threshold: Option<f64>,
    /// Class names: with `threshold`, `[below, above]`; otherwise the label values
    /// to keep, in this order (rows with other values are dropped and counted).
    pub classes: Option<Vec<String>>,
    /// Label value -> class name, for renaming or merging values.
    pub map: Option<BTreeMap<String, String>>,
    /// Drop repeated texts (and texts that appear with different labels).
    #[serde(default)]
    pub dedupe: bool,
}

/// `[probe]`: how the per-layer probe is trained.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ProbeSpec {
    /// Cross-validation folds (default 5).
    pub folds: Option<usize>,
    /// Inverse regularisation strengths to choose from (scikit-learn's C).
    pub c_grid: Option<Vec<f64>>,
}

/// Texts with class indices.
pub struct Examples {
    pub texts: Vec<String>,
    pub labels: Vec<usize>,
    pub classes: Vec<String>,
    /// Rows dropped by the threshold, by `classes` or by deduplication.
    pub dropped: usize,
    /// Rows dropped because `classes` does not list their label, per label value.
    pub dropped_labels: BTreeMap<String, usize>,
}

/// A probe task's examples and probe, ready to run.
pub struct Prepared {
    /// The examples left once the classes too rare for the folds are dropped.
    pub examples: Examples,
    /// The texts before those classes were dropped: what `--truncate` counts over.
    pub texts: Vec<String>,
    /// The classes dropped as too rare.
    pub rare: Vec<String>,
    pub probe: ProbeConfig,
}

/// Reads texts and classes from the task's table, takes the seeded subset and drops
/// classes too rare for the cross-validation folds (`folds` from the command line).
pub fn prepare(
    task: &LoadedTask,
    spec: &LabelSpec,
    probe: Option<&ProbeSpec>,
    settings: &Settings,
    folds: Option<usize>,
) -> Result<Prepared> {
    let mut examples = labelled(task, spec, settings)?;
    let probe = probe_config(task, probe, settings.seed, folds)?;
    let texts = examples.texts.clone();
    let rare = examples.drop_rare_classes(min_class_size(&probe))?;
    Ok(Prepared {
        examples,
        texts,
        rare,
        probe,
    })
}

/// The labelled, seeded subset, before the rare classes that cross-validation cannot
/// use are dropped.
pub fn labelled(task: &LoadedTask, spec: &LabelSpec, settings: &Settings) -> Result<Examples> {
    let (limit, seed) = (settings.limit, settings.seed);
    let table = &task.table;
    table.require(&spec.text)?;
    table.require(&spec.column)?;
    let mut texts = Vec::new();
    let mut raw = Vec::new();
    let mut dropped = 0;
    let mut dropped_labels = BTreeMap::new();
    let keep_only = spec.classes.as_ref().filter(|_| spec.threshold.is_none());
    for row in 0..table.len() {
        let value = match spec.threshold {
            Some(t) => {
                let x = table.number(row, &spec.column)?;
                if x == t {
                    dropped += 1;
                    continue;
                }
                if x > t { "1" } else { "0" }.to_string()
            }
            None => table.text(row, &spec.column)?,
        };
        let value = match (&spec.map, spec.threshold) {
            (Some(map), None) => match map.get(&value) {
                Some(v) => v.clone(),
                None => bail!(
                    "{} row {}: label '{value}' is not in the task's [labels] map",
                    table.origin,
                    row + 1
                ),
            },
            _ => value,
        };
        if keep_only.is_some_and(|names| !names.contains(&value)) {
            *dropped_labels.entry(value).or_insert(0) += 1;
            continue;
        }
        texts.push(table.text(row, &spec.text)?);
        raw.push(value);
    }
    let classes: Vec<String> = match (spec.threshold, &spec.classes) {
        (Some(_), Some(names)) if names.len() == 2 => names.clone(),
        (Some(_), Some(names)) => bail!(
            "a threshold makes two classes, but `classes` lists {}",
            names.len()
        ),
        (Some(_), None) => vec!["below".into(), "above".into()],
        (None, Some(names)) => names.clone(),
        (None, None) => {
            let mut v: Vec<String> = raw.clone();
            v.sort();
            v.dedup();
            v
        }
    };
    let labels: Vec<usize> = match spec.threshold {
        Some(_) => raw.iter().map(|r| usize::from(r == "1")).collect(),
        None => raw
            .iter()
            .map(|r| {
                classes
                    .iter()
                    .position(|c| c == r)
                    .expect("rows with a value outside `classes` were dropped")
            })
            .collect(),
    };
    let (texts, labels, removed) = if spec.dedupe {
        dedupe(texts, labels)
    } else {
        (texts, labels, 0)
    };
    let keep = subset(texts.len(), limit, seed);
    let texts: Vec<String> = keep.iter().map(|&i| texts[i].clone()).collect();
    let labels: Vec<usize> = keep.iter().map(|&i| labels[i]).collect();
    if texts.is_empty() {
        bail!("{}: no examples left to classify", table.origin);
    }
    let mut counts = vec![0usize; classes.len()];
    labels.iter().for_each(|&l| counts[l] += 1);
    if counts.iter().filter(|&&c| c > 0).count() < 2 {
        bail!(
            "{}: label column '{}' has one class ({}) among {} examples; a probe needs at least two",
            table.origin,
            spec.column,
            classes[labels[0]],
            texts.len()
        );
    }
    Ok(Examples {
        texts,
        labels,
        classes,
        dropped: dropped + dropped_labels.values().sum::<usize>() + removed,
        dropped_labels,
    })
}

impl Examples {
    /// Drops classes with fewer than `min` examples (what the folds need), renumbering
    /// the rest; returns the names of the classes dropped.
    pub fn drop_rare_classes(&mut self, min: usize) -> Result<Vec<String>> {
        let mut counts = vec![0usize; self.classes.len()];
        self.labels.iter().for_each(|&l| counts[l] += 1);
        let rare: Vec<usize> = (0..counts.len())
            .filter(|&c| counts[c] > 0 && counts[c] < min)
            .collect();
        if rare.is_empty() {
            return Ok(Vec::new());
        }
        let kept: Vec<usize> = (0..counts.len()).filter(|&c| counts[c] >= min).collect();
        if kept.len() < 2 {
            bail!(
                "fewer than two classes have the {min} examples cross-validation needs; use more examples or fewer folds"
            );
        }
        let keep_rows: Vec<usize> = (0..self.labels.len())
            .filter(|&i| !rare.contains(&self.labels[i]))
            .collect();
        self.dropped += self.labels.len() - keep_rows.len();
        self.texts = keep_rows.iter().map(|&i| self.texts[i].clone()).collect();
        self.labels = keep_rows
            .iter()
            .map(|&i| {
                kept.iter()
                    .position(|&c| c == self.labels[i])
                    .expect("kept class")
            })
            .collect();
        let dropped = rare.iter().map(|&c| self.classes[c].clone()).collect();
        self.classes = kept.iter().map(|&c| self.classes[c].clone()).collect();
        Ok(dropped)
    }
}

/// Keeps the first occurrence of each text; a text seen with two labels is dropped.
fn dedupe(texts: Vec<String>, labels: Vec<usize>) -> (Vec<String>, Vec<usize>, usize) {
    let mut first: HashMap<&str, (usize, bool)> = HashMap::new();
    for (i, t) in texts.iter().enumerate() {
        let e = first.entry(t.as_str()).or_insert((i, true));
        if labels[e.0] != labels[i] {
            e.1 = false;
        }
    }
    let keep: Vec<usize> = (0..texts.len())
        .filter(|&i| first[texts[i].as_str()] == (i, true))
        .collect();
    let removed = texts.len() - keep.len();
    (
        keep.iter().map(|&i| texts[i].clone()).collect(),
        keep.iter().map(|&i| labels[i]).collect(),
        removed,
    )
}

/// The fewest examples a class needs: one per outer fold, and enough left in every
/// training fold for the inner folds that choose C.
fn min_class_size(cfg: &ProbeConfig) -> usize {
    let inner = if cfg.c_grid.len() > 1 {
        cfg.inner_folds
    } else {
        0
    };
    (cfg.folds..)
        .find(|&c| c - c.div_ceil(cfg.folds.max(1)) >= inner)
        .unwrap_or(cfg.folds)
}

/// The probe settings for this task and run: `--folds` over the task's `[probe]`.
fn probe_config(
    task: &LoadedTask,
    spec: Option<&ProbeSpec>,
    seed: u64,
    folds: Option<usize>,
) -> Result<ProbeConfig> {
    let mut cfg = ProbeConfig {
        seed,
        ..ProbeConfig::default()
    };
    if let Some(p) = spec {
        if let Some(folds) = p.folds {
            cfg.folds = folds;
        }
        if let Some(grid) = &p.c_grid {
            cfg.c_grid = grid.clone();
        }
    }
    if let Some(folds) = folds {
        cfg.folds = folds;
    }
    // Checked here, before anything is sized by it: with fewer than two folds no
    // example is ever held out, and no class size satisfies `min_class_size`.
    if cfg.folds < 2 {
        let given = match folds {
            Some(_) => "--folds".to_string(),
            None => format!("[probe] folds in {}", task.origin),
        };
        bail!(
            "{given} is {}: cross-validation needs at least 2 folds",
            cfg.folds
        );
    }
    Ok(cfg)
}

/// Fits and scores a probe at every layer of the examples' embeddings.
pub fn run(prepared: &Prepared, pool: Pool, session: &mut Session) -> Result<Scored> {
    let Prepared {
        examples: ex,
        rare,
        probe: cfg,
        ..
    } = prepared;
    let pooled = session.embeddings(&ex.texts, pool)?;
    let classes = ex.classes.len();
    let progress = crate::io::progress::Progress::new("probe", "layers", session.opts.quiet);
    progress.set_length(pooled.layers as u64);
    let mut correct = Vec::with_capacity(pooled.layers);
    let mut extra = Vec::with_capacity(pooled.layers);
    let mut unconverged = 0;
    for l in 0..pooled.layers {
        let outcome = probe::evaluate(pooled.layer(l), &ex.labels, classes, cfg)?;
        unconverged += outcome.convergence.hit_max_iter;
        correct.push(
            outcome
                .predictions
                .iter()
                .zip(&ex.labels)
                .map(|(p, g)| f64::from(u8::from(p == g)))
                .collect(),
        );
        extra.push(BTreeMap::from([(
            "macro_f1".to_string(),
            metrics::macro_f1(&outcome.predictions, &ex.labels, classes),
        )]));
        progress.inc(1);
    }
    progress.finish();
    let mut counts = vec![0usize; classes];
    ex.labels.iter().for_each(|&l| counts[l] += 1);
    let info = BTreeMap::from([
        ("classes".to_string(), serde_json::json!(ex.classes)),
        ("class_counts".to_string(), serde_json::json!(counts)),
        ("dropped_rows".to_string(), serde_json::json!(ex.dropped)),
        (
            "dropped_labels".to_string(),
            serde_json::json!(ex.dropped_labels),
        ),
        ("dropped_classes".to_string(), serde_json::json!(rare)),
        ("folds".to_string(), serde_json::json!(cfg.folds)),
        ("c_grid".to_string(), serde_json::json!(cfg.c_grid)),
        ("unconverged_fits".to_string(), serde_json::json!(unconverged)),
        (
            "probe".to_string(),
            serde_json::json!(
                "logistic regression on standardised features, C chosen by inner cross-validation on each training fold; out-of-fold predictions"
            ),
        ),
    ]);
    Ok(Scored::accuracy(correct, &counts, extra, info))
}
