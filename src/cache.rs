//! A cache of pooled embeddings, so re-running probes or another metric on the same
//! texts costs no forward pass. Entries are keyed by everything that changes the
//! vectors: the model's weights, the texts, the pooling, the BOS policy, truncation
//! and any ablation. Entries are written atomically; an unreadable entry is a miss.

use std::collections::HashMap;
use std::path::PathBuf;

use anyhow::{Context, Result};
use candle_core::{Device, Tensor};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::assets::harness_home;
use crate::capture::{Pool, Pooled};
use crate::output::write_atomic;

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
        let root = match std::env::var_os("HARNESS_CACHE") {
            Some(dir) if !dir.is_empty() => PathBuf::from(dir),
            _ => harness_home()?.join("cache"),
        };
        Ok(Self {
            dir: root.join("embeddings"),
        })
    }

    fn path(&self, digest: &str) -> PathBuf {
        self.dir.join(format!("{digest}.safetensors"))
    }

    /// The entry for `digest`, if present and readable with the expected shape.
    pub fn load(&self, digest: &str, n: usize) -> Option<Pooled> {
        let tensors = candle_core::safetensors::load(self.path(digest), &Device::Cpu).ok()?;
        let t = tensors.get("embeddings")?;
        let (rows, layers, hidden) = t.dims3().ok()?;
        if rows != n {
            return None;
        }
        let data = t.flatten_all().ok()?.to_vec1::<f32>().ok()?;
        Some(Pooled {
            data,
            n,
            layers,
            hidden,
        })
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
