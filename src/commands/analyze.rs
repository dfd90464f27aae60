//! `harness analyze`: the per-layer diagnostics of the Mix-Compress-Refine account
//! (first-token norms, massive activations, matrix entropy and its Theorem 1 bound,
//! attention sinks, mixing), the phases read off them, and the first-token MLP
//! ablation. `docs/analyze.md` describes the output and every rule.
//!
//! Prompt gathering ([`austen_prompts`], [`file_prompts`]) is kept apart from the
//! analysis ([`run`]), which takes any list of texts.

use std::path::Path;
use std::str::FromStr;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::Tensor;
use rayon::prelude::*;
use serde::Deserialize;

use crate::diagnostics::{self, AttentionMetrics, ResidMetrics};
use crate::embeddings::encode::{self, Encoding};
use crate::io::progress::Progress;
use crate::model::capture::{self, Batch, BatchPlan, Capture};
use crate::model::kernels::with_f32;
use crate::model::source::LoadedModel;
use crate::model::{Intervention, Transformer};
use crate::results::analyze::{
    AblationResult, AnalyzeResult, LayerStats, Phases, Settings, Span, Stat, SCHEMA,
};
use crate::tasks::{LoadedTask, TaskOptions};

/// Prompts taken from the Austen paragraphs when none are given.
pub const DEFAULT_PROMPTS: usize = 64;
/// Tokens per default prompt.
pub const DEFAULT_MAX_TOKENS: usize = 128;

/// Characters asked of a default prompt per wanted token: English runs at about four
/// characters per token in both shipped tokenizers, so twice that leaves every chosen
/// paragraph longer than `--max-tokens` after tokenisation.
const CHARS_PER_TOKEN: usize = 8;

/// Rows of logits computed at once for the loss: Gemma's 262k-entry vocabulary makes
/// each row a megabyte.
const LOSS_ROWS: usize = 256;

/// How singular values are obtained, as recorded in the output.
const SVD_METHOD: &str = "eigenvalues of the T x T Gram matrix X X^T in f64 (Householder tridiagonalisation + implicit QL); sigma_j^2 = lambda_j";

/// Which blocks `--ablate` zeroes the first position's MLP output in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ablate {
    /// The block whose output's first-token norm grows most over its input's.
    Auto,
    /// These blocks, numbered from 1.
    Blocks(Vec<usize>),
}

impl FromStr for Ablate {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Self> {
        if s == "auto" {
            return Ok(Self::Auto);
        }
        let mut blocks = Vec::new();
        for part in s.split(',') {
            let block: usize = part.trim().parse().map_err(|_| {
                anyhow::anyhow!(
                    "invalid --ablate '{s}': expected auto or block numbers such as 3 or 3,5"
                )
            })?;
            if block == 0 {
                bail!("invalid --ablate '{s}': blocks are numbered from 1 (layer 0 is the embeddings)");
            }
            if blocks.contains(&block) {
                bail!("invalid --ablate '{s}': block {block} is given twice");
            }
            blocks.push(block);
        }
        Ok(Self::Blocks(blocks))
    }
}

impl Ablate {
    /// Fails unless every block given exists in a model of `depth` blocks.
    pub fn check(&self, depth: usize) -> Result<()> {
        if let Self::Blocks(blocks) = self {
            crate::model::check_ablated_blocks(blocks, depth)?;
        }
        Ok(())
    }
}

/// Settings of one analysis.
#[derive(Debug, Clone)]
pub struct AnalyzeOptions {
    pub encoding: Encoding,
    /// Each prompt is cut to this many tokens (BOS included).
    pub max_tokens: usize,
    pub plan: BatchPlan,
    pub ablate: Option<Ablate>,
    /// How the prompts were chosen, recorded in the output.
    pub source: String,
}

/// The default prompts: `limit` paragraphs of the Austen novels with at least
/// [`CHARS_PER_TOKEN`] characters per wanted token, evenly spaced through the file
/// (all of them when fewer qualify). Returns the texts and a description of the choice.
pub fn austen_prompts(limit: usize, max_tokens: usize) -> Result<(Vec<String>, String)> {
    #[derive(Deserialize)]
    struct Paragraph {
        text: String,
    }
    let path = crate::io::assets::harness_home()?.join("data/austen/paragraphs.jsonl");
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "cannot read the default prompts {} (run scripts/fetch_assets.py, or give --input)",
            path.display()
        )
    })?;
    let min_chars = CHARS_PER_TOKEN * max_tokens;
    let mut long = Vec::new();
    for (i, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let p: Paragraph = serde_json::from_str(line)
            .with_context(|| format!("{} line {}", path.display(), i + 1))?;
        if p.text.chars().count() >= min_chars {
            long.push(p.text);
        }
    }
    if long.is_empty() {
        bail!("no Austen paragraph has {min_chars} characters for --max-tokens {max_tokens}; give --input");
    }
    let n = long.len();
    let chosen: Vec<String> = if n <= limit {
        long
    } else {
        (0..limit).map(|i| long[i * n / limit].clone()).collect()
    };
    let source = format!(
        "austen: {} of the {n} paragraphs of $HARNESS_HOME/data/austen/paragraphs.jsonl with at least {min_chars} characters, evenly spaced",
        chosen.len()
    );
    Ok((chosen, source))
}

/// Prompts from a file, one per line, at most `limit` of them.
pub fn file_prompts(path: &Path, limit: Option<usize>) -> Result<(Vec<String>, String)> {
    let mut texts = crate::datasets::read_lines(path)?;
    let total = texts.len();
    texts.truncate(limit.unwrap_or(total));
    let source = format!(
        "file: {} ({} of {total} lines)",
        path.display(),
        texts.len()
    );
    Ok((texts, source))
}

/// Prompts from a task's texts (its default example cap unless `limit` is given).
pub fn task_prompts(task: &LoadedTask, limit: Option<usize>) -> Result<(Vec<String>, String)> {
    let opts = TaskOptions {
        limit,
        ..TaskOptions::default()
    };
    let texts = task.texts(&opts)?;
    let source = format!(
        "task: {} ({} texts, seed {})",
        task.spec.name,
        texts.len(),
        opts.seed
    );
    Ok((texts, source))
}

/// The blocks `ablate` names and the rule that chose them. `Auto` measures the
/// first-token norms on the default prompts, the ones `harness analyze` uses, so that
/// `eval --ablate auto` removes the same write that `analyze --ablate auto` does.
pub fn ablation_blocks(
    model: &LoadedModel,
    ablate: &Ablate,
    encoding: Encoding,
    plan: BatchPlan,
    progress: &Progress,
) -> Result<(Vec<usize>, String)> {
    match ablate {
        Ablate::Blocks(blocks) => {
            ablate.check(model.model.num_layers())?;
            Ok((blocks.clone(), "given".to_string()))
        }
        Ablate::Auto => {
            let (prompts, source) = austen_prompts(DEFAULT_PROMPTS, DEFAULT_MAX_TOKENS)?;
            let opts = AnalyzeOptions {
                encoding,
                max_tokens: DEFAULT_MAX_TOKENS,
                plan,
                ablate: None,
                source,
            };
            let layers = summarize(
                &pass(
                    model,
                    &encode(model, &prompts, &opts)?,
                    &opts,
                    &Intervention::default(),
                    false,
                    progress,
                )?
                .per_prompt,
            );
            Ok(auto_rule(&layers))
        }
    }
}

fn auto_rule(layers: &[LayerStats]) -> (Vec<usize>, String) {
    let (block, growth) = largest_first_norm_growth(layers);
    let rule = format!("auto: the block whose output's first-token norm grows most over its input's (block {block}, x{growth:.1})");
    (vec![block], rule)
}

/// Runs the diagnostics on `prompts` (and, with `opts.ablate`, again with the ablation).
pub fn run(
    model: &LoadedModel,
    prompts: &[String],
    opts: &AnalyzeOptions,
    progress: &Progress,
) -> Result<AnalyzeResult> {
    let start = Instant::now();
    let depth = model.model.num_layers();
    if prompts.is_empty() {
        bail!("no prompts to analyze");
    }
    if opts.max_tokens < 2 {
        bail!(
            "--max-tokens must be at least 2: the metrics compare the first token with the others"
        );
    }
    if let Some(ablate) = &opts.ablate {
        ablate.check(depth)?;
    }
    let seqs = encode(model, prompts, opts)?;
    let want_loss = opts.ablate.is_some();
    let base = pass(
        model,
        &seqs,
        opts,
        &Intervention::default(),
        want_loss,
        progress,
    )?;
    let layers = summarize(&base.per_prompt);
    let phases = phases(&layers);
    let ablation = match &opts.ablate {
        None => None,
        Some(ablate) => {
            let (blocks, rule) = match ablate {
                Ablate::Auto => auto_rule(&layers),
                Ablate::Blocks(b) => (b.clone(), "given".to_string()),
            };
            let intervention = Intervention {
                ablate_first_mlp: blocks.clone(),
            };
            let ablated = pass(model, &seqs, opts, &intervention, true, progress)?;
            let (loss_baseline, loss_ablated) = (mean(&base.nll), mean(&ablated.nll));
            Some(AblationResult {
                layers_ablated: blocks,
                rule,
                layers: summarize(&ablated.per_prompt),
                loss_baseline,
                loss_ablated,
                loss_change: loss_ablated - loss_baseline,
            })
        }
    };
    let lens: Vec<usize> = seqs.iter().map(Vec::len).collect();
    let bos = model.tokenizer.bos_id();
    let settings = Settings {
        prompts_source: opts.source.clone(),
        prompts: seqs.len(),
        tokens: lens.iter().sum(),
        tokens_min: lens.iter().copied().min().unwrap_or(0),
        tokens_max: lens.iter().copied().max().unwrap_or(0),
        max_tokens: opts.max_tokens,
        bos: opts.encoding.bos.to_string(),
        first_token_is_bos: bos.is_some() && seqs.iter().all(|s| s.first().copied() == bos),
        svd: SVD_METHOD.into(),
        summary: "per prompt on its real tokens, then mean and population standard deviation (ddof 0) over prompts".into(),
        harness_version: env!("CARGO_PKG_VERSION").into(),
        seconds: start.elapsed().as_secs_f64(),
    };
    Ok(AnalyzeResult {
        schema: SCHEMA.into(),
        model: model.info(),
        settings,
        layers,
        phases,
        ablation,
    })
}

/// Token ids of every prompt, cut to `max_tokens`.
fn encode(model: &LoadedModel, prompts: &[String], opts: &AnalyzeOptions) -> Result<Vec<Vec<u32>>> {
    // Cutting to max_tokens makes the context check moot unless max_tokens exceeds it.
    let context = model.model.config.context_length;
    let enc = Encoding {
        truncate: opts.encoding.truncate || opts.max_tokens <= context,
        ..opts.encoding
    };
    let mut seqs = encode::encode(model, prompts, enc)?.seqs;
    for (i, s) in seqs.iter_mut().enumerate() {
        s.truncate(opts.max_tokens);
        if s.len() < 2 {
            bail!(
                "prompt {} has {} token(s); analyze needs at least 2 (the first token and another)",
                i + 1,
                s.len()
            );
        }
    }
    Ok(seqs)
}

/// One prompt's metrics at every layer; layer 0 has no attention.
type PromptLayers = Vec<(ResidMetrics, Option<AttentionMetrics>)>;

/// What one forward pass over all prompts yields.
struct PassOutput {
    /// `[prompt][layer]`.
    per_prompt: Vec<PromptLayers>,
    /// Per-prompt mean next-token NLL, when asked for.
    nll: Vec<f64>,
}

fn pass(
    model: &LoadedModel,
    seqs: &[Vec<u32>],
    opts: &AnalyzeOptions,
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
        opts.plan,
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

/// Computes every metric as the forward pass goes, batch by batch and layer by layer,
/// so no layer's activations or attention outlive the call that hands them over.
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
                .map(|(row, &n)| diagnostics::resid_metrics(&h[row * t * d..][..n * d], n, d))
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
                .map(|(row, &n)| {
                    diagnostics::attention_metrics(&p[row * heads * t * t..], heads, n, t, None)
                })
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

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len() as f64
}

/// Mean and population standard deviation of finite values; `None` if any is not.
fn mean_std(v: &[f64]) -> (Option<f64>, Option<f64>) {
    if v.iter().any(|x| !x.is_finite()) {
        return (None, None);
    }
    let m = mean(v);
    let var = v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / v.len() as f64;
    (Some(m), Some(var.sqrt()))
}

/// Per-layer means and standard deviations over prompts.
fn summarize(per_prompt: &[PromptLayers]) -> Vec<LayerStats> {
    let layers = per_prompt[0].len();
    (0..layers)
        .map(|layer| {
            let resid: Vec<[f64; 12]> = per_prompt.iter().map(|p| p[layer].0.values()).collect();
            let attn: Option<Vec<[f64; 4]>> = per_prompt
                .iter()
                .map(|p| p[layer].1.map(|a| a.values()))
                .collect();
            let mut metrics = Vec::new();
            for (k, name) in ResidMetrics::NAMES.into_iter().enumerate() {
                let (mean, std) = mean_std(&resid.iter().map(|v| v[k]).collect::<Vec<_>>());
                metrics.push(Stat { name, mean, std });
            }
            for (k, name) in AttentionMetrics::NAMES.into_iter().enumerate() {
                let (mean, std) = match &attn {
                    Some(a) => mean_std(&a.iter().map(|v| v[k]).collect::<Vec<_>>()),
                    None => (None, None),
                };
                metrics.push(Stat { name, mean, std });
            }
            LayerStats { layer, metrics }
        })
        .collect()
}

/// The block `l` maximising `||x_0^(l)|| / ||x_0^(l-1)||` (mean first-token norms), and
/// that ratio.
pub fn largest_first_norm_growth(layers: &[LayerStats]) -> (usize, f64) {
    let norm = |l: usize| layers[l].mean("first_norm").unwrap_or(f64::NAN);
    (1..layers.len())
        .map(|l| (l, norm(l) / norm(l - 1)))
        .filter(|(_, g)| g.is_finite())
        .fold((1, f64::NEG_INFINITY), |best, cur| {
            if cur.1 > best.1 {
                cur
            } else {
                best
            }
        })
}

/// The phase rule: compression spans from the first to the last layer whose normalised
/// entropy is at or below the geometric mean of the curve's minimum and maximum (half
/// way between them on a log scale, the minimum floored at 1e-6); mixing is before it,
/// refinement after.
pub fn phases(layers: &[LayerStats]) -> Phases {
    let h: Vec<f64> = layers
        .iter()
        .map(|l| l.mean("entropy_normalized").unwrap_or(f64::NAN))
        .collect();
    let finite = || h.iter().copied().filter(|v| v.is_finite());
    let lo = finite().fold(f64::INFINITY, f64::min).max(1e-6);
    let hi = finite().fold(f64::NEG_INFINITY, f64::max);
    let threshold = (lo * hi).sqrt();
    let low: Vec<usize> = (0..h.len()).filter(|&l| h[l] <= threshold).collect();
    // The layer at the minimum is always at or below the threshold.
    let (first, last) = match (low.first(), low.last()) {
        (Some(&f), Some(&l)) => (f, l),
        _ => (0, h.len() - 1),
    };
    let depth = (h.len() - 1).max(1) as f64;
    Phases {
        rule: "compress = first..last layer with entropy_normalized <= sqrt(min * max) of the curve (min floored at 1e-6); mix before, refine after".into(),
        threshold,
        mix: (first > 0).then_some(Span {
            first: 0,
            last: first - 1,
        }),
        compress: Span { first, last },
        refine: (last + 1 < h.len()).then_some(Span {
            first: last + 1,
            last: h.len() - 1,
        }),
        compress_depth: [first as f64 / depth, last as f64 / depth],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layers_with(name: &'static str, values: &[f64]) -> Vec<LayerStats> {
        values
            .iter()
            .enumerate()
            .map(|(layer, &v)| LayerStats {
                layer,
                metrics: vec![Stat {
                    name,
                    mean: Some(v),
                    std: Some(0.0),
                }],
            })
            .collect()
    }

    #[test]
    fn ablate_parses_auto_and_lists() {
        assert_eq!("auto".parse::<Ablate>().unwrap(), Ablate::Auto);
        assert_eq!(
            "3, 5".parse::<Ablate>().unwrap(),
            Ablate::Blocks(vec![3, 5])
        );
        for bad in ["0", "", "3,", "x", "-1", "2,2", "1.5"] {
            let err = bad.parse::<Ablate>().unwrap_err().to_string();
            assert!(err.starts_with("invalid --ablate"), "{bad}: {err}");
        }
    }

    #[test]
    fn phases_follow_the_entropy_valley() {
        // A valley over layers 3..=6 with a shallow dip at 1 that stays above threshold.
        let h = [0.8, 0.3, 0.6, 0.01, 0.005, 0.02, 0.05, 0.4, 0.7];
        let p = phases(&layers_with("entropy_normalized", &h));
        assert!((p.threshold - (0.005f64 * 0.8).sqrt()).abs() < 1e-15);
        assert_eq!(p.mix, Some(Span { first: 0, last: 2 }));
        assert_eq!(p.compress, Span { first: 3, last: 6 });
        assert_eq!(p.refine, Some(Span { first: 7, last: 8 }));
        assert_eq!(p.compress_depth, [3.0 / 8.0, 6.0 / 8.0]);
        // Compression reaching the last layer leaves no refinement.
        let p = phases(&layers_with("entropy_normalized", &[0.9, 0.01, 0.02]));
        assert_eq!(p.compress, Span { first: 1, last: 2 });
        assert_eq!(p.refine, None);
    }

    #[test]
    fn auto_ablation_picks_the_largest_norm_growth() {
        let norms = [2.0, 50.0, 60.0, 9000.0, 9100.0, 100.0];
        let (block, growth) = largest_first_norm_growth(&layers_with("first_norm", &norms));
        assert_eq!(block, 3);
        assert!((growth - 150.0).abs() < 1e-12);
    }

    #[test]
    fn layer_stats_serialise_flat() {
        let l = LayerStats {
            layer: 2,
            metrics: vec![
                Stat {
                    name: "first_norm",
                    mean: Some(1.5),
                    std: Some(0.5),
                },
                Stat {
                    name: "sink_rate",
                    mean: None,
                    std: None,
                },
            ],
        };
        let v = serde_json::to_value(&l).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"layer": 2, "first_norm": 1.5, "sink_rate": null,
                               "first_norm_std": 0.5, "sink_rate_std": null})
        );
    }

    #[test]
    fn mean_std_is_population_and_rejects_non_finite() {
        let (m, s) = mean_std(&[1.0, 3.0]);
        assert_eq!((m, s), (Some(2.0), Some(1.0)));
        assert_eq!(mean_std(&[1.0, f64::INFINITY]), (None, None));
    }
}
