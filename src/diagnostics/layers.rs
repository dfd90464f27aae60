//! What the diagnostics yield: each layer's metrics summarised over prompts, and the
//! Mix / Compress / Refine phases read off them, in the flat form `analyze.json` stores.

use std::fmt;

use serde::de::{MapAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::{AttentionMetrics, ResidMetrics};

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
