//! Steady-state throughput of the capture engine on the benchmark workload: every
//! layer of every sequence mean-pooled and copied to the host, token ids read from a
//! file so transformers (`scripts/bench/throughput.py`) runs the very same inputs.
//!
//! ```sh
//! cargo run --release --example throughput -- --model DIR --ids ids.json --dtype bf16
//! ```
//!
//! One untimed warm-up pass, then `--passes` timed passes; prints one JSON line with
//! the best tokens/s and every pass's (real tokens, padding not counted). `--out FILE
//! --out-rows N` also writes the pooled vectors of N sequences spread over the input
//! (rows `i * n / N`; `pooled`, `[N, L+1, D]`, f32) for the agreement check.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};
use clap::Parser;
use harness::embeddings::pool::PooledCapture;
use harness::io::progress::Progress;
use harness::model::capture::{self, BatchPlan};
use harness::model::dtype::{DeviceSpec, Dtype, Engine};
use harness::model::Intervention;
use harness::Pool;

#[derive(Parser)]
struct Args {
    /// Anything `--model` takes: an alias, a .gguf file, a model directory.
    #[arg(long)]
    model: String,
    /// JSON file: a list of token id lists.
    #[arg(long)]
    ids: PathBuf,
    #[arg(long, default_value = "f32")]
    dtype: Dtype,
    #[arg(long, default_value = "cpu")]
    device: DeviceSpec,
    /// Most padded tokens per batch (default: the library's plan).
    #[arg(long)]
    max_batch_tokens: Option<usize>,
    /// Most sequences per batch (default: the library's plan).
    #[arg(long)]
    max_batch_size: Option<usize>,
    /// Timed passes after the warm-up.
    #[arg(long, default_value_t = 2)]
    passes: usize,
    /// Where to write `--out-rows` sequences' pooled vectors.
    #[arg(long)]
    out: Option<PathBuf>,
    #[arg(long, default_value_t = 64)]
    out_rows: usize,
}

fn main() -> Result<()> {
    let args = Args::parse();
    if args.passes == 0 {
        bail!("--passes must be at least 1");
    }
    let text = std::fs::read_to_string(&args.ids)
        .with_context(|| format!("reading {}", args.ids.display()))?;
    let seqs: Vec<Vec<u32>> = serde_json::from_str(&text)
        .with_context(|| format!("{}: expected a list of token id lists", args.ids.display()))?;
    let tokens: usize = seqs.iter().map(Vec::len).sum();
    let engine = Engine {
        dtype: args.dtype,
        device: args.device,
    };
    let start = Instant::now();
    let loaded = harness::commands::load_model(&args.model, engine)?;
    let load_s = start.elapsed().as_secs_f64();
    let model = &loaded.model;
    let layers = model.num_layers();
    let hidden = model.config.hidden_size;
    let default = BatchPlan::default();
    let plan = BatchPlan {
        max_tokens: args.max_batch_tokens.unwrap_or(default.max_tokens),
        max_size: args.max_batch_size.unwrap_or(default.max_size),
    };

    let pass = || -> Result<(f64, PooledCapture)> {
        let mut pooled = PooledCapture::new(&[Pool::Mean], seqs.len(), layers, hidden);
        let start = Instant::now();
        capture::run(
            model,
            &seqs,
            loaded.tokenizer.pad_id(),
            plan,
            &Intervention::default(),
            &mut pooled,
            &Progress::hidden(),
        )?;
        Ok((tokens as f64 / start.elapsed().as_secs_f64(), pooled))
    };
    let (warmup, pooled) = pass()?;
    let mut rates = Vec::with_capacity(args.passes);
    for _ in 0..args.passes {
        rates.push(pass()?.0);
    }

    if let Some(out) = &args.out {
        let (_, vectors) = pooled.into_pooled().remove(0);
        let n = seqs.len();
        let rows: Vec<usize> = (0..args.out_rows.min(n))
            .map(|i| i * n / args.out_rows.min(n))
            .collect();
        let subset = vectors.select(&rows);
        let t = Tensor::from_vec(
            subset.data,
            (subset.n, subset.layers, subset.hidden),
            &Device::Cpu,
        )?;
        candle_core::safetensors::save(&HashMap::from([("pooled", t)]), out)
            .with_context(|| format!("writing {}", out.display()))?;
    }
    let line = serde_json::json!({
        "side": "harness",
        "model": args.model,
        "dtype": args.dtype.to_string(),
        "device": args.device.to_string(),
        "sequences": seqs.len(),
        "tokens": tokens,
        "layers": layers + 1,
        "max_batch_tokens": plan.max_tokens,
        "max_batch_size": plan.max_size,
        "load_s": load_s,
        "warmup_tokens_per_s": warmup,
        "tokens_per_s": rates.iter().copied().fold(0.0, f64::max),
        "passes_tokens_per_s": rates,
        "threads": rayon::current_num_threads(),
    });
    println!("{line}");
    Ok(())
}
