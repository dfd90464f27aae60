//! `harness.eval/1` result files: the types that write them and read them back, and
//! where they go.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::embeddings::pool::Pool;
use crate::io::output::write_bytes_atomic;
use crate::stats::scores::Chance;

/// The schema of result files.
pub const SCHEMA: &str = "harness.eval/1";

/// One layer's score.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LayerScore {
    pub layer: usize,
    pub relative_depth: f64,
    pub score: f64,
    pub ci_low: f64,
    pub ci_high: f64,
    /// Whether the score is significantly better than `info.chance` (see
    /// [`Chance::beaten_by`]); `null` where the task has no chance level, absent in
    /// files written before chance was recorded.
    #[serde(default)]
    pub above_chance: Option<bool>,
    /// Other metrics on all items.
    #[serde(flatten)]
    pub metrics: BTreeMap<String, f64>,
}

/// A notable layer (the peak, or the last layer).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Point {
    pub layer: usize,
    pub relative_depth: f64,
    pub score: f64,
    pub ci_low: f64,
    pub ci_high: f64,
    /// As in [`LayerScore::above_chance`].
    #[serde(default)]
    pub above_chance: Option<bool>,
}

/// The peak against the last layer on the same items.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Comparison {
    /// How much better the peak is (in the metric's own units, positive = better).
    pub gain: f64,
    pub ci_low: f64,
    pub ci_high: f64,
    /// One-sided: the chance of a gain this large if the peak were no better.
    pub p_value: f64,
    pub significant: bool,
}

/// Whether this task behaves as the paper predicts.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Prediction {
    /// "intermediate" for embedding tasks, "full depth" for generation.
    pub expected: String,
    pub holds: bool,
    pub rule: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ModelSummary {
    pub name: String,
    pub architecture: String,
    pub num_layers: usize,
    pub hidden_size: usize,
    pub fingerprint: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TaskSummary {
    pub name: String,
    pub kind: crate::tasks::Kind,
    pub metric: String,
    pub higher_is_better: bool,
    pub description: String,
    pub license: String,
    /// Where the data came from.
    pub source: String,
    /// What the bootstrap resamples, and how many there are.
    pub items: String,
    pub n_items: usize,
    /// Pooling of embedding tasks (`null` for generation).
    pub pool: Option<Pool>,
    /// Whether embeddings were centred before cosine similarity.
    pub center: Option<bool>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Settings {
    pub seed: u64,
    pub limit: Option<usize>,
    pub bos: String,
    pub truncate: bool,
    /// Blocks whose MLP output at position 0 was dropped.
    pub ablate: Vec<usize>,
    /// The type the weights were held in (`f32`, `bf16`, `f16`); files written
    /// before it was recorded were f32.
    #[serde(default = "default_dtype")]
    pub dtype: String,
    /// The device the model ran on; files written before it was recorded ran on the CPU.
    #[serde(default = "default_device")]
    pub device: String,
    pub resamples: usize,
    pub confidence_interval: String,
}

/// The dtype of results written before it was recorded.
pub fn default_dtype() -> String {
    "f32".into()
}

/// The device of results written before it was recorded.
pub fn default_device() -> String {
    "cpu".into()
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Timings {
    /// The forward pass shared by all embedding tasks of the run.
    pub shared_forward_s: f64,
    /// This task's own forward passes (the logit lens).
    pub forward_s: f64,
    pub score_s: f64,
    pub total_s: f64,
    pub tokens: usize,
    pub cache_hits: usize,
}

/// A `harness.eval/1` result file.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EvalResult {
    pub schema: String,
    pub model: ModelSummary,
    pub task: TaskSummary,
    pub settings: Settings,
    pub layers: Vec<LayerScore>,
    pub peak: Point,
    #[serde(rename = "final")]
    pub last: Point,
    pub peak_vs_final: Comparison,
    /// Whether the peak is significantly above chance; `false` is "no signal": the
    /// best layer is indistinguishable from a guess, so it is no peak. `null` where
    /// the task has no chance level or the file predates chance levels.
    #[serde(default)]
    pub signal: Option<bool>,
    pub prediction: Prediction,
    /// Task-specific facts: class counts, corpus size, tokens scored, and `chance`
    /// (a [`Chance`])...
    pub info: BTreeMap<String, serde_json::Value>,
    pub version: String,
    pub timings: Timings,
    /// When the run finished (UTC, ISO 8601).
    pub created: String,
}

impl EvalResult {
    /// The chance level the run recorded; `None` for files written before chance
    /// levels were (a task without one records a [`Chance`] whose score is `None`).
    pub fn chance(&self) -> Option<Chance> {
        serde_json::from_value(self.info.get("chance")?.clone()).ok()
    }
}

impl EvalResult {
    /// Texts `--truncate` cut to the model's context (0 without it).
    pub fn truncated(&self) -> usize {
        self.info
            .get("truncated")
            .and_then(serde_json::Value::as_u64)
            .unwrap_or(0) as usize
    }
}

/// Where a result goes: `DIR/<model>/<task>.json`, or `<task>.ablate-<blocks>.json`
/// for a run with the ablation, and `.<dtype>` before `.json` for a run not in f32,
/// so that each sits next to the f32 baseline instead of replacing it.
pub fn result_path(dir: &Path, result: &EvalResult) -> PathBuf {
    result_file(
        dir,
        &result.model.name,
        &result.task.name,
        &result.settings.ablate,
        &result.settings.dtype,
    )
}

pub(crate) fn result_file(
    dir: &Path,
    model: &str,
    task: &str,
    ablate: &[usize],
    dtype: &str,
) -> PathBuf {
    let mut suffix = String::new();
    if !ablate.is_empty() {
        let blocks: Vec<String> = ablate.iter().map(usize::to_string).collect();
        suffix = format!(".ablate-{}", blocks.join("-"));
    }
    if dtype != default_dtype() {
        suffix = format!("{suffix}.{}", file_safe(dtype));
    }
    dir.join(file_safe(model))
        .join(format!("{}{suffix}.json", file_safe(task)))
}

/// Writes a result file atomically.
pub fn write_result(dir: &Path, result: &EvalResult) -> Result<PathBuf> {
    let path = result_path(dir, result);
    let json = serde_json::to_string_pretty(result).context("serialising the result")?;
    write_bytes_atomic(&path, format!("{json}\n").as_bytes())?;
    Ok(path)
}

/// A name safe as one path component.
pub fn file_safe(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// The current time as `YYYY-MM-DDTHH:MM:SSZ`.
pub fn now_utc() -> String {
    let t = time::OffsetDateTime::now_utc();
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}
