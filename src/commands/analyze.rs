//! `harness analyze`: its options, the prompts it reads, and the run that assembles
//! `analyze.json` from the per-layer diagnostics of the Mix-Compress-Refine account
//! ([`crate::diagnostics`]: first-token norms, massive activations, matrix entropy and
//! its Theorem 1 bound, attention sinks, mixing), the phases read off them, and the
//! first-token MLP ablation. `docs/analyze.md` describes the output and every rule.
//!
//! Prompt gathering ([`austen_prompts`], [`file_prompts`]) is kept apart from the
//! analysis ([`run`]), which takes any list of texts; [`run_command`] is the command
//! that joins them and writes the result.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use serde::Deserialize;

use crate::commands::{load_to_run, parse_ablate, renamed};
use crate::diagnostics::capture::{pass, LOSS_ROWS};
use crate::diagnostics::phases::{auto_rule, phases};
use crate::diagnostics::summary::{mean, summarize};
use crate::embeddings::encode::{self, Encoding};
use crate::io::progress::Progress;
use crate::model::capture::BatchPlan;
use crate::model::dtype::Engine;
use crate::model::memory::Workload;
use crate::model::source::LoadedModel;
use crate::model::Intervention;
use crate::results::analyze::{AblationResult, AnalyzeResult, Settings, SCHEMA};
use crate::tasks::{LoadedTask, TaskOptions};

/// Prompts taken from the Austen paragraphs when none are given.
pub const DEFAULT_PROMPTS: usize = 64;
/// Tokens per default prompt.
pub const DEFAULT_MAX_TOKENS: usize = 128;

/// Characters asked of a default prompt per wanted token: English runs at about four
/// characters per token in both shipped tokenizers, so twice that leaves every chosen
/// paragraph longer than `--max-tokens` after tokenisation.
const CHARS_PER_TOKEN: usize = 8;

/// How singular values are obtained, as recorded in the output.
const SVD_METHOD: &str = "eigenvalues of the T x T Gram matrix X X^T in f64 (nalgebra SymmetricEigen: Householder tridiagonalisation + implicit QR); sigma_j^2 = lambda_j";

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
/// `CHARS_PER_TOKEN` characters per wanted token, evenly spaced through the file
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
                    opts.plan,
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
        opts.plan,
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
            let ablated = pass(model, &seqs, opts.plan, &intervention, true, progress)?;
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
        dtype: model.model.dtype().to_string(),
        device: model.model.device().to_string(),
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

/// What `harness analyze` was asked to do.
#[derive(Debug, Clone)]
pub struct AnalyzeCommand {
    pub model: String,
    /// The name the result is filed under instead of the model's own (`--name`).
    pub name: Option<String>,
    /// Prompts, one per line.
    pub input: Option<PathBuf>,
    /// Prompts from a task's texts (a shipped task name or a task file).
    pub task: Option<String>,
    /// At most this many prompts.
    pub limit: Option<usize>,
    /// Each prompt is cut to this many tokens, BOS included.
    pub max_tokens: usize,
    /// `--ablate` as given: `auto` or block numbers.
    pub ablate: Option<String>,
    pub encoding: Encoding,
    pub plan: BatchPlan,
    pub engine: Engine,
    /// Results directory.
    pub out: PathBuf,
    /// No progress bars.
    pub quiet: bool,
}

/// Analyzes the prompts (the default Austen paragraphs unless a file or task is
/// given), writes `analyze.json` and prints its table.
pub fn run_command(cmd: AnalyzeCommand) -> Result<()> {
    let ablate = parse_ablate(cmd.ablate.as_deref())?;
    let (prompts, source) = match (&cmd.input, &cmd.task) {
        (Some(path), _) => file_prompts(path, cmd.limit)?,
        (None, Some(task)) => task_prompts(&crate::tasks::load(task)?, cmd.limit)?,
        (None, None) => austen_prompts(cmd.limit.unwrap_or(DEFAULT_PROMPTS), cmd.max_tokens)?,
    };
    let work = Workload {
        longest: Some(cmd.max_tokens),
        attention: true,
        logit_rows: LOSS_ROWS,
        ..Workload::pass(cmd.plan)
    };
    let loaded = renamed(load_to_run(&cmd.model, cmd.engine, &work)?, cmd.name)?;
    let _lock = crate::results::analyze::lock_result(&cmd.out, &loaded.source.name)?;
    let opts = AnalyzeOptions {
        encoding: cmd.encoding,
        max_tokens: cmd.max_tokens,
        plan: cmd.plan,
        ablate,
        source,
    };
    let progress = Progress::new("analyze", "tokens", cmd.quiet);
    let result = run(&loaded, &prompts, &opts, &progress)?;
    let path = result.save(&cmd.out)?;
    print!("{}", crate::report::analyze_table(&result));
    eprintln!("wrote {} ({:.1}s)", path.display(), result.settings.seconds);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
