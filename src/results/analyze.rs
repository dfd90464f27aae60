//! `harness.analyze/1` files (`analyze.json`): the types `harness analyze` writes, and
//! where they go.

use std::fmt;
use std::path::{Path, PathBuf};

use anyhow::Result;
use serde::de::{MapAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::diagnostics::{AttentionMetrics, ResidMetrics};
use crate::io::output::{write_bytes_atomic, WriteLock};
use crate::model::source::ModelInfo;

/// The `schema` field of `analyze.json`.
pub const SCHEMA: &str = "harness.analyze/1";

/// Every metric `analyze.json` can hold, in the order it writes them.
pub fn metric_names() -> impl Iterator<Item = &'static str> + Clone {
    ResidMetrics::NAMES
        .into_iter()
        .chain(AttentionMetrics::NAMES)
}

/// A metric's mean and standard deviation over prompts; `None` where a layer has no
/// such metric (attention at layer 0) or the value is not finite. Names are those of
/// [`metric_names`], so that reading a file gives back the names the writer used.
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

/// Reads the flat form back: `layer`, then each known metric's mean under its name and
/// its standard deviation under `name_std`, `null` read as `None`. Keys that name no
/// metric of [`metric_names`] are left out, as serde leaves out unknown fields, so
/// files from a writer with more metrics still read.
impl<'de> Deserialize<'de> for LayerStats {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        d.deserialize_map(LayerStatsVisitor)
    }
}

struct LayerStatsVisitor;

impl<'de> Visitor<'de> for LayerStatsVisitor {
    type Value = LayerStats;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a layer's metrics: `layer`, then `name` and `name_std` per metric")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> std::result::Result<LayerStats, A::Error> {
        let known = |name: &str| metric_names().find(|m| *m == name);
        let mut layer = None;
        let mut metrics: Vec<Stat> = Vec::new();
        let mut stds: Vec<(&'static str, Option<f64>)> = Vec::new();
        while let Some(key) = map.next_key::<String>()? {
            if key == "layer" {
                layer = Some(map.next_value()?);
            } else if let Some(name) = known(&key) {
                let mean = map.next_value()?;
                metrics.push(Stat {
                    name,
                    mean,
                    std: None,
                });
            } else if let Some(name) = key.strip_suffix("_std").and_then(known) {
                stds.push((name, map.next_value()?));
            } else {
                map.next_value::<serde::de::IgnoredAny>()?;
            }
        }
        for (name, std) in stds {
            match metrics.iter_mut().find(|m| m.name == name) {
                Some(m) => m.std = std,
                None => metrics.push(Stat {
                    name,
                    mean: None,
                    std,
                }),
            }
        }
        let layer = layer.ok_or_else(|| serde::de::Error::missing_field("layer"))?;
        Ok(LayerStats { layer, metrics })
    }
}

/// A run of layers, both ends included.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Span {
    pub first: usize,
    pub last: usize,
}

/// Mix / Compress / Refine boundaries read off the normalised entropy curve.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Phases {
    pub rule: String,
    /// The normalised entropy at or below which a layer counts as compressed.
    pub threshold: f64,
    pub mix: Option<Span>,
    pub compress: Span,
    pub refine: Option<Span>,
    /// Where compression begins and ends as fractions of depth (layer / L).
    pub compress_depth: [f64; 2],
}

/// One of the three phases.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Before compression.
    Mix,
    /// The layers of low normalised entropy.
    Compress,
    /// After compression.
    Refine,
}

impl Phase {
    /// Its name, lower case, as `analyze.csv` writes it.
    pub fn name(self) -> &'static str {
        match self {
            Phase::Mix => "mix",
            Phase::Compress => "compress",
            Phase::Refine => "refine",
        }
    }

    /// Its name in at most four letters, for narrow terminal columns.
    pub fn abbreviation(self) -> &'static str {
        match self {
            Phase::Mix => "mix",
            Phase::Compress => "comp",
            Phase::Refine => "ref",
        }
    }
}

impl Phases {
    /// The phase `layer` is in: Compress inside its span, Mix before, Refine after.
    pub fn of(&self, layer: usize) -> Phase {
        if layer < self.compress.first {
            Phase::Mix
        } else if layer <= self.compress.last {
            Phase::Compress
        } else {
            Phase::Refine
        }
    }
}

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

/// Where the analysis of `model` goes: `DIR/<model>/analyze.json`.
pub fn result_path(dir: &Path, model: &str) -> PathBuf {
    dir.join(model).join("analyze.json")
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
            let written: serde_json::Value = serde_json::to_value(&r).unwrap();
            let read: serde_json::Value = serde_json::from_str(&text).unwrap();
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
