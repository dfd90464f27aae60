//! A cache of pooled embeddings, so re-running probes or another metric on the same
//! texts costs no forward pass. Entries are keyed by everything that changes the
//! vectors: the model's weights, the texts, the pooling, the BOS policy, truncation
//! and any ablation. Entries are written atomically; an unreadable entry, or one of another shape
//! or dtype, is a miss.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::embeddings::pool::{Pool, Pooled};
use crate::io::assets::cache_root;
use crate::io::output::write_atomic;
use crate::io::warnings::warn;
use crate::model::dtype::Dtype;

/// Bumped whenever what the cache stores changes meaning.
const FORMAT: u32 = 1;

/// What identifies a set of pooled embeddings.
#[derive(Debug, Serialize)]
pub struct CacheKey<'a> {
    pub model: &'a str,
    pub pool: Pool,
    pub bos: String,
    pub truncate: bool,
    pub ablate: &'a [usize],
    /// The type the weights were held in: a bf16 run must not reuse f32 vectors.
    pub dtype: Dtype,
    pub texts: &'a [String],
}

impl CacheKey<'_> {
    /// A hex digest of the key.
    pub fn digest(&self) -> String {
        let mut h = Sha256::new();
        h.update(FORMAT.to_le_bytes());
        h.update(
            serde_json::to_vec(&(self.model, self.pool, &self.bos, self.truncate, self.ablate))
                .unwrap_or_default(),
        );
        // f32 adds nothing, so that caches written before the type joined the key
        // stay valid.
        if self.dtype != Dtype::F32 {
            h.update(self.dtype.to_string().as_bytes());
        }
        for t in self.texts {
            h.update((t.len() as u64).to_le_bytes());
            h.update(t.as_bytes());
        }
        format!("{:x}", h.finalize())
    }
}

/// The cache folder: `$HARNESS_CACHE/embeddings`, by default under
/// `$HARNESS_HOME/cache`.
pub struct EmbeddingCache {
    dir: PathBuf,
}

impl EmbeddingCache {
    pub fn open() -> Result<Self> {
        Ok(Self {
            dir: cache_root()?.join("embeddings"),
        })
    }

    fn path(&self, digest: &str) -> PathBuf {
        self.dir.join(format!("{digest}.safetensors"))
    }

    /// The entry for `digest` if it holds f32 vectors of exactly `shape`
    /// (`[texts, layers, hidden]`). Anything else is a miss: silent when there is no
    /// entry, with a warning when there is one that cannot be used.
    pub fn load(&self, digest: &str, shape: [usize; 3]) -> Option<Pooled> {
        let path = self.path(digest);
        if !path.is_file() {
            return None;
        }
        match read_entry(&path, shape) {
            Ok(pooled) => Some(pooled),
            Err(e) => {
                warn(&format!(
                    "ignoring the cache entry {}: {e:#}; computing it again",
                    path.display()
                ));
                None
            }
        }
    }

    /// Stores an entry, whole or not at all.
    pub fn store(&self, digest: &str, pooled: &Pooled) -> Result<()> {
        let t = Tensor::from_slice(
            &pooled.data,
            (pooled.n, pooled.layers, pooled.hidden),
            &Device::Cpu,
        )?;
        let path = self.path(digest);
        write_atomic(&path, |tmp| {
            let map = HashMap::from([("embeddings".to_string(), t)]);
            candle_core::safetensors::save(&map, tmp)
                .with_context(|| format!("cannot write the cache entry {}", tmp.display()))
        })
    }
}

/// Reads an entry, refusing one of another dtype or shape.
fn read_entry(path: &Path, shape: [usize; 3]) -> Result<Pooled> {
    let tensors = candle_core::safetensors::load(path, &Device::Cpu)?;
    let t = tensors
        .get("embeddings")
        .context("it has no tensor 'embeddings'")?;
    if t.dtype() != DType::F32 || t.dims() != shape {
        bail!(
            "it holds {:?} {:?}, expected F32 {shape:?}",
            t.dtype(),
            t.dims()
        );
    }
    let [n, layers, hidden] = shape;
    Ok(Pooled {
        data: t.flatten_all()?.to_vec1::<f32>()?,
        n,
        layers,
        hidden,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_of_another_shape_or_dtype_are_misses() {
        let dir = std::env::temp_dir().join(format!("harness-cache-{}", std::process::id()));
        let cache = EmbeddingCache { dir: dir.clone() };
        let pooled = Pooled {
            data: (0..12).map(|i| i as f32).collect(),
            n: 2,
            layers: 2,
            hidden: 3,
        };
        cache.store("k", &pooled).unwrap();
        assert_eq!(cache.load("k", [2, 2, 3]).unwrap().data, pooled.data);
        // Same rows, the layers of a 31-layer model: another model's entry.
        assert!(cache.load("k", [2, 31, 576]).is_none());
        assert!(cache.load("k", [3, 2, 3]).is_none());
        let f64s = Tensor::zeros((2, 2, 3), DType::F64, &Device::Cpu).unwrap();
        let map = HashMap::from([("embeddings".to_string(), f64s)]);
        candle_core::safetensors::save(&map, cache.path("k")).unwrap();
        assert!(cache.load("k", [2, 2, 3]).is_none());
        assert!(cache.load("absent", [2, 2, 3]).is_none());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
