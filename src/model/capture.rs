//! The forward/capture engine: batches token sequences, runs the model and hands
//! every layer to a [`Capture`], at the points [`CapturePoint`] names.

use std::fmt;
use std::str::FromStr;

use anyhow::{anyhow, bail, Result};
use candle_core::{Device, Tensor};

use crate::io::progress::Progress;
use crate::model::dtype::DeviceSpec;
use crate::model::{memory, Intervention, Transformer};

/// One padded batch. Sequences are right-padded, so every sequence starts at
/// position 0 and its positions are the same as when run alone.
pub struct Batch {
    /// Token ids `[b, len]`.
    pub ids: Tensor,
    /// Real (unpadded) length of each row.
    pub lens: Vec<usize>,
    /// Padded length.
    pub len: usize,
    /// Index of each row in the caller's input order.
    pub index: Vec<usize>,
    /// The real tokens of each row.
    pub tokens: Vec<Vec<u32>>,
}

impl Batch {
    /// Pads `(index, tokens)` rows to the longest with `pad_id`; no row may be empty.
    pub fn new(seqs: Vec<(usize, Vec<u32>)>, pad_id: u32) -> Result<Self> {
        let len = seqs.iter().map(|(_, s)| s.len()).max().unwrap_or(0);
        if len == 0 {
            bail!("cannot run an empty sequence: every input needs at least one token");
        }
        let mut ids = Vec::with_capacity(seqs.len() * len);
        for (_, s) in &seqs {
            if s.is_empty() {
                bail!("cannot run an empty sequence: every input needs at least one token");
            }
            ids.extend_from_slice(s);
            ids.extend(std::iter::repeat_n(pad_id, len - s.len()));
        }
        let b = seqs.len();
        Ok(Self {
            ids: Tensor::from_vec(ids, (b, len), &Device::Cpu)?,
            lens: seqs.iter().map(|(_, s)| s.len()).collect(),
            len,
            index: seqs.iter().map(|(i, _)| *i).collect(),
            tokens: seqs.into_iter().map(|(_, s)| s).collect(),
        })
    }

    /// The number of rows.
    pub fn size(&self) -> usize {
        self.lens.len()
    }
}

/// A place in the forward pass whose values a [`Capture`] receives. Its text form
/// (`resid.{l}`, `attn.{l}.pattern`) is the one vocabulary of code, docs and outputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CapturePoint {
    /// `resid.{l}`: the residual stream after layer `l`, `[b, t, hidden]`. `resid.0` is
    /// the embeddings after any scaling, `resid.{L}` the last block's output before the
    /// final norm.
    Resid(usize),
    /// `attn.{l}.pattern`: the attention probabilities of block `l` (from 1),
    /// `[b, heads, t, t]`.
    AttnPattern(usize),
}

impl fmt::Display for CapturePoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Resid(l) => write!(f, "resid.{l}"),
            Self::AttnPattern(l) => write!(f, "attn.{l}.pattern"),
        }
    }
}

impl FromStr for CapturePoint {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Self> {
        // Only the canonical spelling: `resid.+1` or `resid.01` would name a point twice.
        let layer = |l: &str| l.parse::<usize>().ok().filter(|n| n.to_string() == l);
        let point = if let Some(l) = s.strip_prefix("resid.") {
            layer(l).map(Self::Resid)
        } else if let Some(l) = s
            .strip_prefix("attn.")
            .and_then(|r| r.strip_suffix(".pattern"))
        {
            // Blocks are numbered from 1; layer 0 has no attention.
            layer(l).filter(|&n| n > 0).map(Self::AttnPattern)
        } else {
            None
        };
        point.ok_or_else(|| {
            anyhow!("unknown capture point '{s}' (expected resid.{{l}} or attn.{{l}}.pattern)")
        })
    }
}

/// Receives what a forward pass computes, layer by layer, batch by batch.
pub trait Capture {
    /// The deepest layer whose residual stream is needed: the pass stops there.
    fn depth(&self) -> usize;

    /// Whether [`CapturePoint::AttnPattern`]`(layer)` is wanted.
    fn wants_attention(&self, _layer: usize) -> bool {
        false
    }

    /// [`CapturePoint::Resid`]`(layer)`: `[b, t, hidden]`, padded positions included.
    fn on_resid(&mut self, layer: usize, resid: &Tensor, batch: &Batch) -> Result<()>;

    /// [`CapturePoint::AttnPattern`]`(layer)`: `[b, heads, t, t]`.
    fn on_attention(&mut self, _layer: usize, _probs: &Tensor, _batch: &Batch) -> Result<()> {
        Ok(())
    }
}

/// How sequences are grouped into batches: by a token budget and a row cap, both
/// applying, over sequences sorted longest first, so that short texts fill a batch
/// and one long text cannot make a batch of many long rows. Results do not depend
/// on the plan (each row is computed as if alone); memory and speed do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchPlan {
    /// Most padded tokens in one batch (rows x padded length). A sequence longer
    /// than this runs alone.
    pub max_tokens: usize,
    /// Most sequences in one batch.
    pub max_size: usize,
}

impl Default for BatchPlan {
    fn default() -> Self {
        Self {
            max_tokens: DEFAULT_MAX_TOKENS,
            max_size: DEFAULT_MAX_SIZE,
        }
    }
}

/// `--max-batch-tokens` when it is not given, on the CPU: a batch's widest
/// activation (SmolLM2's gate and up, 12 MiB) then stays below glibc's 32 MiB mmap
/// ceiling and is reused rather than mapped afresh, and closer to the caches; 1024
/// ran SmolLM2 16-23% faster than 4096 (docs/benchmarks.md).
pub const DEFAULT_MAX_TOKENS: usize = 1024;
/// `--max-batch-tokens` when it is not given, on a GPU, which bigger batches keep busy.
pub const DEFAULT_MAX_TOKENS_GPU: usize = 4096;
/// `--batch-size` when it is not given.
pub const DEFAULT_MAX_SIZE: usize = 64;

impl BatchPlan {
    /// The plan for `--batch-size` and `--max-batch-tokens`: each limit is its
    /// default when not given, and at least 1 (0 runs one sequence at a time).
    pub fn new(batch_size: Option<usize>, max_tokens: Option<usize>) -> Self {
        Self::on(DeviceSpec::Cpu, batch_size, max_tokens)
    }

    /// [`BatchPlan::new`] with the token budget's default for `device`.
    pub fn on(device: DeviceSpec, batch_size: Option<usize>, max_tokens: Option<usize>) -> Self {
        let default_tokens = match device {
            DeviceSpec::Cpu => DEFAULT_MAX_TOKENS,
            DeviceSpec::Cuda(_) => DEFAULT_MAX_TOKENS_GPU,
        };
        Self {
            max_tokens: max_tokens.unwrap_or(default_tokens).max(1),
            max_size: batch_size.unwrap_or(DEFAULT_MAX_SIZE).max(1),
        }
    }

    /// How many of the sequences of `lens` (sorted longest first) the next batch
    /// takes: as many as fit the budget at the first one's length, at least one.
    fn rows(&self, lens: &[usize]) -> usize {
        let len = lens.first().copied().unwrap_or(0).max(1);
        (self.max_tokens / len)
            .clamp(1, self.max_size)
            .min(lens.len())
    }
}

/// Runs `seqs` through `model` in length-sorted batches, so padding stays small,
/// handing every batch to `capture`. Rows carry their index in `seqs`.
pub fn run(
    model: &Transformer,
    seqs: &[Vec<u32>],
    pad_id: u32,
    plan: BatchPlan,
    intervention: &Intervention,
    capture: &mut dyn Capture,
    progress: &Progress,
) -> Result<()> {
    let context = model.config.context_length;
    if let Some((i, s)) = seqs.iter().enumerate().find(|(_, s)| s.len() > context) {
        bail!(
            "input {} has {} tokens, more than the model's context of {context}",
            i + 1,
            s.len()
        );
    }
    let mut order: Vec<usize> = (0..seqs.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(seqs[i].len()));
    let total: usize = seqs.iter().map(|s| s.len()).sum();
    progress.set_length(total as u64);
    let lens: Vec<usize> = order.iter().map(|&i| seqs[i].len()).collect();
    let attention = (1..=capture.depth()).any(|l| capture.wants_attention(l));
    let mut start = 0;
    while start < order.len() {
        // Sorted longest first, so the first row sets the padded length.
        let end = start + plan.rows(&lens[start..]);
        if lens[start] > plan.max_tokens {
            // The pre-load check counted batches within the budget; this one is not.
            let long = memory::LongBatch {
                config: &model.config,
                dtype: model.dtype(),
                device: model.device(),
                plan: &plan,
                input: order[start] + 1,
                tokens: lens[start],
                attention,
            };
            memory::check_long_batch(&long, &memory::available_on(model.device())?)?;
        }
        let rows: Vec<(usize, Vec<u32>)> = order[start..end]
            .iter()
            .map(|&i| (i, seqs[i].clone()))
            .collect();
        let batch = Batch::new(rows, pad_id)?;
        model.forward(&batch, intervention, capture)?;
        if start == 0 {
            crate::io::faults::pause_at("forward", "");
        }
        progress.inc(batch.lens.iter().sum::<usize>() as u64);
        start = end;
    }
    progress.finish();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{BatchPlan, CapturePoint, DeviceSpec, DEFAULT_MAX_TOKENS, DEFAULT_MAX_TOKENS_GPU};

    /// Splits sequences of `lens` (sorted longest first) as `run` does.
    fn batches(plan: BatchPlan, lens: &[usize]) -> Vec<Vec<usize>> {
        let mut out = Vec::new();
        let mut start = 0;
        while start < lens.len() {
            let end = start + plan.rows(&lens[start..]);
            out.push(lens[start..end].to_vec());
            start = end;
        }
        out
    }

    #[test]
    fn batches_fill_the_token_budget_under_the_row_cap() {
        let lens = [300, 100, 90, 50, 10, 10, 10, 10];
        // 300 runs alone past a budget of 256; then rows x padded length <= 256.
        let plan = BatchPlan::new(None, Some(256));
        assert_eq!(
            batches(plan, &lens),
            [vec![300], vec![100, 90], vec![50, 10, 10, 10, 10]]
        );
        for b in batches(plan, &lens).iter().skip(1) {
            assert!(b.len() * b[0] <= 256, "{b:?}");
        }
        // Both limits apply: at most 2 rows however short.
        let two = BatchPlan::new(Some(2), Some(256));
        assert!(batches(two, &lens).iter().all(|b| b.len() <= 2));
        assert_eq!(batches(two, &lens).concat(), lens);
        // The defaults, and 0 meaning one at a time.
        assert_eq!(BatchPlan::new(None, None), BatchPlan::default());
        let one = BatchPlan::new(Some(0), Some(0));
        assert_eq!(batches(one, &lens).len(), lens.len());
        assert_eq!(batches(BatchPlan::new(None, Some(4096)), &lens).len(), 1);
        // The default budget depends on the device.
        let gpu = BatchPlan::on(DeviceSpec::Cuda(0), None, None);
        assert_eq!(gpu.max_tokens, DEFAULT_MAX_TOKENS_GPU);
        assert_eq!(BatchPlan::default().max_tokens, DEFAULT_MAX_TOKENS);
    }

    #[test]
    fn capture_points_round_trip_their_names() {
        for (point, name) in [
            (CapturePoint::Resid(0), "resid.0"),
            (CapturePoint::Resid(30), "resid.30"),
            (CapturePoint::AttnPattern(1), "attn.1.pattern"),
        ] {
            assert_eq!(point.to_string(), name);
            assert_eq!(name.parse::<CapturePoint>().unwrap(), point);
        }
        for bad in [
            "resid",
            "resid.",
            "resid.-1",
            "resid.01",
            "attn.0.pattern",
            "attn.3",
            "mlp.3.out",
        ] {
            let err = bad.parse::<CapturePoint>().unwrap_err().to_string();
            assert!(
                err.contains(bad) && err.contains("attn.{l}.pattern"),
                "{err}"
            );
        }
    }
}
