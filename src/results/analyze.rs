//! `harness.analyze/1` files (`analyze.json`): the types `harness analyze` writes, and
//! where they go.

use std::path::{Path, PathBuf};

use anyhow::Result;
use serde::{Deserialize, Serialize};

pub use crate::diagnostics::layers::{metric_names, LayerStats, Phase, Phases, Span, Stat};
use crate::io::output::{write_bytes_atomic, WriteLock};
use crate::model::source::ModelInfo;

/// The `schema` field of `analyze.json`.
pub const SCHEMA: &str = "harness.analyze/1";

/// How a run was set up.
#[derive(Debug, Clone, Serialize, Deserialize)]
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
    pub svd: String,
    pub summary: String,
    pub harness_version: String,
    /// The type the weights were held in; files written before it was recorded were f32.
    #[serde(default = "crate::results::eval::default_dtype")]
    pub dtype: String,
    /// The device the model ran on; before it was recorded, the CPU.
    #[serde(default = "crate::results::eval::default_device")]
    pub device: String,
    pub seconds: f64,
}

/// The ablated run next to the baseline.
#[derive(Debug, Clone, Serialize, Deserialize)]
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
#[derive(Debug, Serialize, Deserialize)]
pub struct AnalyzeResult {
    pub schema: String,
    pub model: ModelInfo,
    pub settings: Settings,
    pub layers: Vec<LayerStats>,
    pub phases: Phases,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ablation: Option<AblationResult>,
}

impl AnalyzeResult {
    /// Layer `layer`'s depth as a fraction of the model's blocks.
    pub fn depth(&self, layer: usize) -> f64 {
        layer as f64 / self.model.config.num_layers.max(1) as f64
    }

    /// Writes `dir/<model>/analyze.json` atomically and returns its path.
    pub fn save(&self, dir: &Path) -> Result<PathBuf> {
        let path = result_path(dir, &self.model.name);
        let mut bytes = serde_json::to_vec_pretty(self)?;
        bytes.push(b'\n');
        write_bytes_atomic(&path, &bytes)?;
        Ok(path)
    }
}

/// Where the analysis of `model` goes: `DIR/<model>/analyze.json`, the model's
/// directory named as its eval results' are.
pub fn result_path(dir: &Path, model: &str) -> PathBuf {
    dir.join(crate::results::eval::file_safe(model))
        .join("analyze.json")
}

/// Claims `model`'s analysis file under `dir` before the work starts, so a second
/// run on it fails at once instead of overwriting (or being overwritten by) this one.
pub fn lock_result(dir: &Path, model: &str) -> Result<WriteLock> {
    super::lock_result(&result_path(dir, model))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The committed analyses, written by an earlier version of `harness analyze`.
    fn fixtures() -> Vec<PathBuf> {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/results");
        ["gemma3", "smollm2"]
            .iter()
            .map(|m| result_path(&dir, m))
            .collect()
    }

    #[test]
    fn committed_files_read_back_and_write_the_same_json() {
        for path in fixtures() {
            let text = std::fs::read_to_string(&path).unwrap();
            let r: AnalyzeResult = serde_json::from_str(&text).unwrap();
            assert_eq!(r.schema, SCHEMA);
            assert_eq!(r.layers.len(), r.model.config.num_layers + 1);
            assert!(r
                .layers
                .iter()
                .all(|l| l.metrics.len() == metric_names().count()));
            // Attention metrics are null at layer 0 and read as missing.
            assert_eq!(r.layers[0].mean("sink_rate"), None);
            assert!(r.layers[1].std("sink_rate").is_some());
            let mut written: serde_json::Value = serde_json::to_value(&r).unwrap();
            let read: serde_json::Value = serde_json::from_str(&text).unwrap();
            // Files from before dtype and device were recorded read as f32 on the CPU
            // and gain the two fields when written again; nothing else may change.
            for key in ["dtype", "device"] {
                if read["settings"].get(key).is_none() {
                    let settings = written["settings"].as_object_mut().unwrap();
                    let default = settings.remove(key).unwrap();
                    assert_eq!(default, if key == "dtype" { "f32" } else { "cpu" });
                }
            }
            assert_eq!(written, read, "{}", path.display());
        }
    }

    #[test]
    fn unknown_metrics_are_left_out_and_layer_is_required() {
        let l: LayerStats = serde_json::from_str(
            r#"{"layer": 3, "first_norm": 2.0, "future_metric": 1.0, "first_norm_std": null}"#,
        )
        .unwrap();
        assert_eq!(l.layer, 3);
        assert_eq!(l.metrics.len(), 1);
        assert_eq!(
            (l.mean("first_norm"), l.std("first_norm")),
            (Some(2.0), None)
        );
        assert!(serde_json::from_str::<LayerStats>(r#"{"first_norm": 2.0}"#).is_err());
    }

    #[test]
    fn phases_follow_the_compress_span() {
        let text = std::fs::read_to_string(&fixtures()[1]).unwrap();
        let a: AnalyzeResult = serde_json::from_str(&text).unwrap();
        let (p, c) = (&a.phases, a.phases.compress);
        assert_eq!(p.of(c.first), Phase::Compress);
        assert_eq!(p.of(c.last), Phase::Compress);
        assert_eq!(p.of(0), Phase::Mix);
        assert_eq!(p.of(a.model.config.num_layers), Phase::Refine);
        assert_eq!(Phase::Compress.name(), "compress");
    }
}
