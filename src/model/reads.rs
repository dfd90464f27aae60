//! Which tensors of a checkpoint the model read, so that weights no part of the
//! model uses are named instead of silently ignored.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::{Arc, Mutex};

use anyhow::{bail, Result};
use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;

/// The names of the tensors read so far, shared between a weight backend and the
/// file it reads from.
#[derive(Debug, Clone, Default)]
pub struct Reads(Arc<Mutex<BTreeSet<String>>>);

impl Reads {
    /// Records that `name` was read.
    pub fn mark(&self, name: &str) {
        // A poisoned lock only means another read panicked; the set is still whole.
        let mut set = self.0.lock().unwrap_or_else(|e| e.into_inner());
        set.insert(name.to_string());
    }

    /// `all` but the names read, sorted.
    pub fn unread(&self, all: impl IntoIterator<Item = String>) -> Vec<String> {
        let set = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let mut left: Vec<String> = all.into_iter().filter(|n| !set.contains(n)).collect();
        left.sort();
        left
    }
}

/// A weight backend that records every tensor it serves.
pub struct Recording<B> {
    pub inner: B,
    pub reads: Reads,
}

impl<B: SimpleBackend> SimpleBackend for Recording<B> {
    fn get(
        &self,
        s: Shape,
        name: &str,
        h: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        self.reads.mark(name);
        self.inner.get(s, name, h, dtype, dev)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        self.reads.mark(name);
        self.inner.get_unchecked(name, dtype, dev)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.inner.contains_tensor(name)
    }
}

/// Buffers some checkpoints save beside their weights (causal masks, rotary
/// frequencies): recomputed by the model, never learned, so never read.
const BUFFERS: &[&str] = &[
    ".attn.bias",
    ".attn.masked_bias",
    ".attention.bias",
    ".attention.masked_bias",
    ".rotary_emb.inv_freq",
];

/// The other modalities of multimodal checkpoints, whose text model alone is loaded.
const OTHER_MODALITIES: &[&str] = &[
    "vision_tower.",
    "vision_model.",
    "multi_modal_projector.",
    "audio_tower.",
];

/// Tensors no part of the model read: an error naming them (a `num_hidden_layers`
/// smaller than the checkpoint's, a part under an unexpected name), except buffers,
/// which are skipped, and other modalities' towers, which are a warning (returned).
pub fn check_unread(path: &Path, unread: Vec<String>) -> Result<Vec<String>> {
    let (other, weights): (Vec<String>, Vec<String>) = unread
        .into_iter()
        .filter(|n| !BUFFERS.iter().any(|b| n.ends_with(b)))
        .partition(|n| OTHER_MODALITIES.iter().any(|p| n.contains(p)));
    if !weights.is_empty() {
        bail!(
            "{}: {} tensor(s) are not used by the model: {} (does the configuration's layer count match the weights?)",
            path.display(),
            weights.len(),
            sample(&weights)
        );
    }
    Ok(if other.is_empty() {
        Vec::new()
    } else {
        vec![format!(
            "{}: {} tensor(s) of another modality are not loaded, only the text model: {}",
            path.display(),
            other.len(),
            sample(&other)
        )]
    })
}

/// The first few names, and how many more there are.
fn sample(names: &[String]) -> String {
    const SHOWN: usize = 4;
    let mut s = names[..names.len().min(SHOWN)].join(", ");
    if names.len() > SHOWN {
        s.push_str(&format!(" and {} more", names.len() - SHOWN));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_skipped_and_other_modalities_only_warned_about() {
        let path = Path::new("m");
        let unread = |names: &[&str]| names.iter().map(|n| n.to_string()).collect();
        let warnings = check_unread(
            path,
            unread(&[
                "h.0.attn.bias",
                "model.layers.0.self_attn.rotary_emb.inv_freq",
            ]),
        )
        .unwrap();
        assert!(warnings.is_empty());
        let warnings = check_unread(path, unread(&["vision_tower.a.weight"])).unwrap();
        assert!(
            warnings[0].contains("vision_tower.a.weight"),
            "{warnings:?}"
        );
        let err = check_unread(path, unread(&["a", "b", "c", "d", "e", "f"]))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("6 tensor(s)") && err.contains("a, b, c, d and 2 more"),
            "{err}"
        );
    }
}
