//! The diagnostics of a forward pass over many prompts: every metric is computed as the
//! pass goes, batch by batch and layer by layer, so no layer's activations or attention
//! outlive the call that hands them over.

use anyhow::{Context, Result};
use candle_core::Tensor;
use rayon::prelude::*;

use super::attention::{attention_metrics, AttentionMetrics};
use super::residual::{resid_metrics, ResidMetrics};
use crate::io::progress::Progress;
use crate::model::capture::{self, Batch, BatchPlan, Capture};
use crate::model::kernels::with_f32;
use crate::model::source::LoadedModel;
use crate::model::{Intervention, Transformer};

/// Rows of logits computed at once for the loss: Gemma's 262k-entry vocabulary makes
/// each row a megabyte.
pub const LOSS_ROWS: usize = 256;

/// One prompt's metrics at every layer; layer 0 has no attention.
pub type PromptLayers = Vec<(ResidMetrics, Option<AttentionMetrics>)>;

/// What one forward pass over all prompts yields.
pub struct PassOutput {
    /// `[prompt][layer]`.
    pub per_prompt: Vec<PromptLayers>,
    /// Per-prompt mean next-token NLL when asked for, else NaN.
    pub nll: Vec<f64>,
}

/// Runs `model` over the token sequences `seqs` under `intervention` and returns every
/// prompt's metrics at every layer, with each prompt's next-token loss if `want_loss`.
pub fn pass(
    model: &LoadedModel,
    seqs: &[Vec<u32>],
    plan: BatchPlan,
    intervention: &Intervention,
    want_loss: bool,
    progress: &Progress,
) -> Result<PassOutput> {
    let depth = model.model.num_layers();
    let mut cap = DiagnosticsCapture {
        model: &model.model,
        depth,
        want_loss,
        resid: vec![vec![None; depth + 1]; seqs.len()],
        attn: vec![vec![None; depth + 1]; seqs.len()],
        nll: vec![f64::NAN; seqs.len()],
    };
    capture::run(
        &model.model,
        seqs,
        model.tokenizer.pad_id(),
        plan,
        intervention,
        &mut cap,
        progress,
    )?;
    let per_prompt = cap
        .resid
        .into_iter()
        .zip(cap.attn)
        .map(|(resid, attn)| {
            resid
                .into_iter()
                .zip(attn)
                .map(|(r, a)| Ok((r.context("a layer was not captured")?, a)))
                .collect::<Result<PromptLayers>>()
        })
        .collect::<Result<_>>()?;
    Ok(PassOutput {
        per_prompt,
        nll: cap.nll,
    })
}

/// The metrics gathered so far, filled in as the pass hands over each batch and layer.
struct DiagnosticsCapture<'a> {
    model: &'a Transformer,
    depth: usize,
    want_loss: bool,
    /// `[prompt][layer]`.
    resid: Vec<Vec<Option<ResidMetrics>>>,
    /// `[prompt][layer]`, `None` at layer 0.
    attn: Vec<Vec<Option<AttentionMetrics>>>,
    nll: Vec<f64>,
}

impl Capture for DiagnosticsCapture<'_> {
    fn depth(&self) -> usize {
        self.depth
    }

    fn wants_attention(&self, _layer: usize) -> bool {
        true
    }

    fn on_resid(&mut self, layer: usize, resid: &Tensor, batch: &Batch) -> Result<()> {
        let (d, t) = (resid.dim(2)?, batch.len);
        let metrics: Vec<ResidMetrics> = with_f32(resid, |h| {
            batch
                .lens
                .par_iter()
                .enumerate()
                .map(|(row, &n)| resid_metrics(&h[row * t * d..][..n * d], n, d))
                .collect()
        })?;
        for (m, &i) in metrics.into_iter().zip(&batch.index) {
            self.resid[i][layer] = Some(m);
        }
        if layer == self.depth && self.want_loss {
            for (row, &i) in batch.index.iter().enumerate() {
                self.nll[i] = next_token_nll(self.model, &resid.get(row)?, &batch.tokens[row])?;
            }
        }
        Ok(())
    }

    fn on_attention(&mut self, layer: usize, probs: &Tensor, batch: &Batch) -> Result<()> {
        let (_, heads, t, _) = probs.dims4()?;
        // Sliding windows are not exposed by the engine; every layer is treated as fully
        // causal, which is exact while prompts are no longer than the window.
        let metrics: Vec<AttentionMetrics> = with_f32(probs, |p| {
            batch
                .lens
                .par_iter()
                .enumerate()
                .map(|(row, &n)| attention_metrics(&p[row * heads * t * t..], heads, n, t, None))
                .collect()
        })?;
        for (m, &i) in metrics.into_iter().zip(&batch.index) {
            self.attn[i][layer] = Some(m);
        }
        Ok(())
    }
}

/// Mean negative log-likelihood of `tokens[1..]` given the last layer's rows `h`
/// (`[padded len, hidden]`) at the positions before them.
fn next_token_nll(model: &Transformer, h: &Tensor, tokens: &[u32]) -> Result<f64> {
    let n = tokens.len() - 1;
    let mut total = 0f64;
    for start in (0..n).step_by(LOSS_ROWS) {
        let len = LOSS_ROWS.min(n - start);
        let rows = h.narrow(0, start, len)?;
        let logp = model.target_logprobs(&rows, &tokens[start + 1..start + 1 + len])?;
        total -= logp
            .to_vec1::<f32>()?
            .iter()
            .map(|&v| v as f64)
            .sum::<f64>();
    }
    Ok(total / n as f64)
}
