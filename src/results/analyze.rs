//! `harness.analyze/1` files (`analyze.json`): the types `harness analyze` writes, and
//! where they go.

use std::path::{Path, PathBuf};

use anyhow::Result;
use serde::ser::SerializeMap;
use serde::{Serialize, Serializer};

use crate::io::output::{write_bytes_atomic, WriteLock};
use crate::model::source::ModelInfo;

/// The `schema` field of `analyze.json`.
pub const SCHEMA: &str = "harness.analyze/1";

/// A metric's mean and standard deviation over prompts; `None` where a layer has no
/// such metric (attention at layer 0) or the value is not finite.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Stat {
    pub name: &'static str,
    pub mean: Option<f64>,
    pub std: Option<f64>,
}

/// Every metric of one layer, summarised over prompts. Serialised flat: `name` holds
/// the mean and `name_std` the standard deviation.
#[derive(Debug, Clone, PartialEq)]
pub struct LayerStats {
    pub layer: usize,
    pub metrics: Vec<Stat>,
}

impl LayerStats {
    /// The mean of metric `name` at this layer.
    pub fn mean(&self, name: &str) -> Option<f64> {
        self.stat(name).and_then(|s| s.mean)
    }

    /// The standard deviation over prompts of metric `name` at this layer.
    pub fn std(&self, name: &str) -> Option<f64> {
        self.stat(name).and_then(|s| s.std)
    }

    fn stat(&self, name: &str) -> Option<&Stat> {
        self.metrics.iter().find(|s| s.name == name)
    }
}

impl Serialize for LayerStats {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(1 + 2 * self.metrics.len()))?;
        map.serialize_entry("layer", &self.layer)?;
        for m in &self.metrics {
            map.serialize_entry(m.name, &m.mean)?;
        }
        for m in &self.metrics {
            map.serialize_entry(&format!("{}_std", m.name), &m.std)?;
        }
        map.end()
    }
}

/// A run of layers, both ends included.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Span {
    pub first: usize,
    pub last: usize,
}

/// Mix / Compress / Refine boundaries read off the normalised entropy curve.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Phases {
    pub rule: &'static str,
    /// The normalised entropy at or below which a layer counts as compressed.
    pub threshold: f64,
    pub mix: Option<Span>,
    pub compress: Span,
    pub refine: Option<Span>,
    /// Where compression begins and ends as fractions of depth (layer / L).
    pub compress_depth: [f64; 2],
}

/// How a run was set up.
#[derive(Debug, Clone, Serialize)]
pub struct Settings {
    pub prompts_source: String,
    pub prompts: usize,
    pub tokens: usize,
    pub tokens_min: usize,
    pub tokens_max: usize,
    pub max_tokens: usize,
    pub bos: String,
    /// Whether every prompt starts with the model's BOS token.
    pub first_token_is_bos: bool,
    pub svd: &'static str,
    pub summary: &'static str,
    pub harness_version: &'static str,
    pub seconds: f64,
}

/// The ablated run next to the baseline.
#[derive(Debug, Clone, Serialize)]
pub struct AblationResult {
    /// The blocks whose MLP output at position 0 was zeroed.
    pub layers_ablated: Vec<usize>,
    /// Why these blocks.
    pub rule: String,
    pub layers: Vec<LayerStats>,
    /// Mean over prompts of the mean next-token negative log-likelihood (nats) through
    /// the final norm and unembedding.
    pub loss_baseline: f64,
    pub loss_ablated: f64,
    pub loss_change: f64,
}

/// Everything `analyze.json` holds.
#[derive(Debug, Serialize)]
pub struct AnalyzeResult {
    pub schema: &'static str,
    pub model: ModelInfo,
    pub settings: Settings,
    pub layers: Vec<LayerStats>,
    pub phases: Phases,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ablation: Option<AblationResult>,
}

impl AnalyzeResult {
    /// Writes `dir/<model>/analyze.json` atomically and returns its path.
    pub fn save(&self, dir: &Path) -> Result<PathBuf> {
        let path = result_path(dir, &self.model.name);
        let mut bytes = serde_json::to_vec_pretty(self)?;
        bytes.push(b'\n');
        write_bytes_atomic(&path, &bytes)?;
        Ok(path)
    }
}

/// Where the analysis of `model` goes: `DIR/<model>/analyze.json`.
pub fn result_path(dir: &Path, model: &str) -> PathBuf {
    dir.join(model).join("analyze.json")
}

/// Claims `model`'s analysis file under `dir` before the work starts, so a second
/// run on it fails at once instead of overwriting (or being overwritten by) this one.
pub fn lock_result(dir: &Path, model: &str) -> Result<WriteLock> {
    super::lock_result(&result_path(dir, model))
}
