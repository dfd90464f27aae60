//! `harness embed`: pooled vectors for every text at every layer, in one pass.

use std::collections::HashMap;
use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result};
use candle_core::{Device, Tensor};

use crate::embeddings::pool::{Pool, Pooled, PooledCapture};
use crate::io::output::write_atomic;
use crate::io::progress::Progress;
use crate::model::capture::{self, BatchPlan};
use crate::model::source::LoadedModel;
use crate::model::tokenizer::BosPolicy;
use crate::model::Intervention;

/// How to turn texts into token sequences the model can take. The default adds BOS as
/// the model does and refuses texts longer than its context.
#[derive(Debug, Clone, Copy, Default)]
pub struct Encoding {
    /// Whether to prepend the BOS token.
    pub bos: BosPolicy,
    /// Cut texts longer than the context instead of refusing them.
    pub truncate: bool,
}

/// Token sequences and how many were cut to fit the context.
pub struct Encoded {
    pub seqs: Vec<Vec<u32>>,
    pub truncated: usize,
}

/// Tokenizes `texts`; texts longer than the model's context are refused, or cut to
/// it when `truncate` is set.
pub fn encode(model: &LoadedModel, texts: &[String], enc: Encoding) -> Result<Encoded> {
    let context = model.model.config.context_length;
    let mut seqs = model.tokenizer.encode_batch(texts, enc.bos)?;
    let mut truncated = 0;
    for (i, s) in seqs.iter_mut().enumerate() {
        if s.is_empty() {
            anyhow::bail!("text {} has no tokens", i + 1);
        }
        if s.len() > context {
            if !enc.truncate {
                anyhow::bail!(
                    "text {} has {} tokens, more than the model's context of {context} (use --truncate to cut it)",
                    i + 1,
                    s.len()
                );
            }
            s.truncate(context);
            truncated += 1;
        }
    }
    Ok(Encoded { seqs, truncated })
}

/// Pooled embeddings with run statistics.
pub struct Embeddings {
    pub pool: Pool,
    pub pooled: Pooled,
    pub tokens: usize,
    pub truncated: usize,
    pub seconds: f64,
}

/// Embeds `texts` at every layer with one pooling.
pub fn embed_texts(
    model: &LoadedModel,
    texts: &[String],
    pool: Pool,
    enc: Encoding,
    plan: BatchPlan,
    intervention: &Intervention,
    progress: &Progress,
) -> Result<Embeddings> {
    let start = Instant::now();
    let encoded = encode(model, texts, enc)?;
    let tokens = encoded.seqs.iter().map(|s| s.len()).sum();
    let cfg = &model.model.config;
    let mut cap = PooledCapture::new(&[pool], texts.len(), cfg.num_layers, cfg.hidden_size);
    capture::run(
        &model.model,
        &encoded.seqs,
        model.tokenizer.pad_id(),
        plan,
        intervention,
        &mut cap,
        progress,
    )?;
    let (_, pooled) = cap
        .into_pooled()
        .into_iter()
        .next()
        .context("no pooled output")?;
    Ok(Embeddings {
        pool,
        pooled,
        tokens,
        truncated: encoded.truncated,
        seconds: start.elapsed().as_secs_f64(),
    })
}

impl Embeddings {
    /// Writes tensor `embeddings` `[n, layers, hidden]` f32, with the settings as
    /// safetensors metadata, atomically.
    pub fn save(self, path: &Path, metadata: HashMap<String, String>) -> Result<()> {
        let p = self.pooled;
        let tensor = Tensor::from_vec(p.data, (p.n, p.layers, p.hidden), &Device::Cpu)?;
        let mut metadata = metadata;
        metadata.insert("pool".into(), self.pool.name().into());
        metadata.insert("layout".into(), "[text, layer, hidden]; layer 0 = embeddings, layer L = last block before the final norm".into());
        write_atomic(path, |tmp| {
            safetensors::serialize_to_file([("embeddings", &tensor)], Some(metadata), tmp)
                .with_context(|| format!("cannot write {}", tmp.display()))
        })
    }
}
