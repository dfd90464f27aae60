//! An embedding session: one model, its fingerprint, the embedding cache and the
//! forward passes of one run, shared by every task so that texts several tasks embed
//! run through the model once.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Result;

use crate::embeddings::cache::{CacheKey, EmbeddingCache};
use crate::embeddings::encode::{self, Encoding};
use crate::embeddings::pool::{Pool, Pooled, PooledCapture};
use crate::io::progress::Progress;
use crate::model::capture::{self, BatchPlan, Capture};
use crate::model::source::LoadedModel;
use crate::model::tokenizer::BosPolicy;
use crate::model::Intervention;

/// How a session runs the model.
#[derive(Debug, Clone)]
pub struct SessionOptions {
    pub encoding: Encoding,
    pub plan: BatchPlan,
    pub intervention: Intervention,
    /// Read and write the embedding cache.
    pub use_cache: bool,
    /// No progress bars.
    pub quiet: bool,
}

impl Default for SessionOptions {
    fn default() -> Self {
        Self {
            encoding: Encoding {
                bos: BosPolicy::Auto,
                truncate: false,
            },
            plan: BatchPlan::default(),
            intervention: Intervention::default(),
            use_cache: true,
            quiet: false,
        }
    }
}

/// What tasks may use while they run: the model, cached embeddings and forward passes.
pub struct Session<'a> {
    pub model: &'a LoadedModel,
    pub opts: SessionOptions,
    cache: Option<EmbeddingCache>,
    fingerprint: String,
    memo: HashMap<String, Arc<Pooled>>,
    /// Seconds spent in forward passes.
    pub forward_seconds: f64,
    /// Tokens run through the model.
    pub tokens: usize,
    /// Embedding sets served from the cache.
    pub cache_hits: usize,
}

impl<'a> Session<'a> {
    /// Opens the cache (unless turned off) and fingerprints the model, once per run.
    pub fn new(model: &'a LoadedModel, opts: SessionOptions) -> Result<Self> {
        Ok(Self {
            model,
            cache: if opts.use_cache {
                Some(EmbeddingCache::open()?)
            } else {
                None
            },
            fingerprint: model.fingerprint(opts.use_cache)?,
            opts,
            memo: HashMap::new(),
            forward_seconds: 0.0,
            tokens: 0,
            cache_hits: 0,
        })
    }

    /// The digest of the model's files, as results record it.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    fn key(&self, texts: &[String], pool: Pool) -> String {
        CacheKey {
            model: &self.fingerprint,
            pool,
            bos: self.opts.encoding.bos.to_string(),
            truncate: self.opts.encoding.truncate,
            ablate: &self.opts.intervention.ablate_first_mlp,
            dtype: self.model.model.dtype(),
            texts,
        }
        .digest()
    }

    /// Makes sure every request is embedded, running one shared forward pass over
    /// the union of the texts that are not cached yet.
    pub fn prefetch(&mut self, requests: &[(&[String], Pool)]) -> Result<()> {
        let mut missing: Vec<(String, &[String], Pool)> = Vec::new();
        for &(texts, pool) in requests {
            let key = self.key(texts, pool);
            if self.memo.contains_key(&key) || missing.iter().any(|(k, _, _)| *k == key) {
                continue;
            }
            let cfg = &self.model.model.config;
            let shape = [texts.len(), cfg.num_layers + 1, cfg.hidden_size];
            if let Some(hit) = self.cache.as_ref().and_then(|c| c.load(&key, shape)) {
                self.cache_hits += 1;
                self.memo.insert(key, Arc::new(hit));
            } else {
                missing.push((key, texts, pool));
            }
        }
        if missing.is_empty() {
            return Ok(());
        }
        let mut index: HashMap<&str, usize> = HashMap::new();
        let mut union: Vec<String> = Vec::new();
        let mut gather = Vec::with_capacity(missing.len());
        for (_, texts, pool) in &missing {
            let rows = texts
                .iter()
                .map(|t| {
                    *index.entry(t.as_str()).or_insert_with(|| {
                        union.push(t.clone());
                        union.len() - 1
                    })
                })
                .collect();
            gather.push((*pool, rows));
        }
        // Tokenize before the vectors are allocated, so the tokenizer's transient
        // buffers do not add to the run's peak.
        let seqs = self.encode(&union)?;
        let cfg = &self.model.model.config;
        let mut cap = PooledCapture::gather(gather, union.len(), cfg.num_layers, cfg.hidden_size);
        self.run_capture(&seqs, &mut cap, "embed")?;
        for ((key, _, _), (_, pooled)) in missing.into_iter().zip(cap.into_pooled()) {
            if let Some(cache) = &self.cache {
                cache.store(&key, &pooled)?;
            }
            self.memo.insert(key, Arc::new(pooled));
        }
        Ok(())
    }

    /// Pooled embeddings `[texts, layers, hidden]` of `texts`.
    pub fn embeddings(&mut self, texts: &[String], pool: Pool) -> Result<Arc<Pooled>> {
        let key = self.key(texts, pool);
        if !self.memo.contains_key(&key) {
            self.prefetch(&[(texts, pool)])?;
        }
        Ok(self.memo[&key].clone())
    }

    /// Tokenizes with the run's BOS policy, refusing or cutting over-long texts.
    pub fn encode(&self, texts: &[String]) -> Result<Vec<Vec<u32>>> {
        Ok(encode::encode(self.model, texts, self.opts.encoding)?.seqs)
    }

    /// Runs a forward pass over `seqs` with the run's batching and intervention.
    pub fn run_capture(
        &mut self,
        seqs: &[Vec<u32>],
        capture: &mut dyn Capture,
        label: &str,
    ) -> Result<()> {
        let start = Instant::now();
        let progress = Progress::new(label, "tokens", self.opts.quiet);
        capture::run(
            &self.model.model,
            seqs,
            self.model.tokenizer.pad_id(),
            self.opts.plan,
            &self.opts.intervention,
            capture,
            &progress,
        )?;
        self.forward_seconds += start.elapsed().as_secs_f64();
        self.tokens += seqs.iter().map(Vec::len).sum::<usize>();
        Ok(())
    }
}
