//! What the report reads from `harness.analyze/1` files (`harness analyze`).
//!
//! These are the report's own views, read by field name, rather than the analyze
//! command's types: those only serialise, the report needs a few curves and the
//! phases, and it must keep reading files when the writer gains fields.

use std::collections::BTreeMap;

use serde::Deserialize;

/// One `analyze.json`: per-layer diagnostics of one model, its phases and, when the
/// run had `--ablate`, the ablated run beside it.
#[derive(Debug, Clone, Deserialize)]
pub struct Analysis {
    pub model: AnalysisModel,
    pub settings: AnalysisSettings,
    pub layers: Vec<LayerStats>,
    pub phases: Phases,
    #[serde(default)]
    pub ablation: Option<Ablation>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct AnalysisModel {
    pub name: String,
    /// Transformer blocks; layer `num_layers` is the last block's output.
    pub num_layers: usize,
}

#[derive(Debug, Clone, Deserialize)]
pub struct AnalysisSettings {
    pub prompts: usize,
    pub tokens: usize,
}

/// One layer's metrics (means over prompts, and `<name>_std` beside them), by name.
/// `null` (attention metrics at layer 0, non-finite values) reads as `None`.
#[derive(Debug, Clone, Deserialize)]
pub struct LayerStats {
    pub layer: usize,
    #[serde(flatten)]
    pub metrics: BTreeMap<String, serde_json::Value>,
}

impl LayerStats {
    /// Metric `name` at this layer, when it is a finite number.
    pub fn get(&self, name: &str) -> Option<f64> {
        self.metrics
            .get(name)
            .and_then(serde_json::Value::as_f64)
            .filter(|v| v.is_finite())
    }
}

/// A run of layers, both ends included.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub struct Span {
    pub first: usize,
    pub last: usize,
}

/// Mix / Compress / Refine as `harness analyze` read them off the entropy curve.
#[derive(Debug, Clone, Deserialize)]
pub struct Phases {
    pub mix: Option<Span>,
    pub compress: Span,
    pub refine: Option<Span>,
}

/// The run with the first token's MLP output removed in some blocks.
#[derive(Debug, Clone, Deserialize)]
pub struct Ablation {
    pub layers_ablated: Vec<usize>,
    pub layers: Vec<LayerStats>,
    pub loss_baseline: f64,
    pub loss_ablated: f64,
    pub loss_change: f64,
}

impl Analysis {
    /// Layer `layer`'s depth as a fraction of the model's blocks.
    pub fn depth(&self, layer: usize) -> f64 {
        layer as f64 / self.model.num_layers.max(1) as f64
    }
}
