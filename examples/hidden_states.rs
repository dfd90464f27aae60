//! Every layer's hidden states for given token ids, written as safetensors, for
//! comparing harness with transformers on models too large for committed goldens
//! (`scripts/reference/scale_check.py`). Token ids go in directly, so no tokenizer
//! difference can hide or cause a mismatch.
//!
//! ```sh
//! cargo run --release --example hidden_states -- --model DIR --ids ids.json --out h.safetensors --dtype bf16
//! ```
//!
//! `ids.json` is a list of token id lists. The output holds, like the golden files of
//! `scripts/reference/make_goldens.py`, `hidden.{l}` for l = 0..L (`[B, T, D]`, f32,
//! rows right-padded with zeros; `hidden.{L}` before the final norm) and `final_norm`.
//! It keeps every token of every layer: meant for a few short sequences.

use std::collections::HashMap;
use std::path::PathBuf;

use anyhow::{Context, Result};
use candle_core::{DType, Device, Tensor};
use clap::Parser;
use harness::io::progress::Progress;
use harness::model::capture::{self, Batch, BatchPlan, Capture};
use harness::model::dtype::{DeviceSpec, Dtype, Engine};
use harness::model::Intervention;

#[derive(Parser)]
struct Args {
    /// Anything `--model` takes: an alias, a .gguf file, a model directory.
    #[arg(long)]
    model: String,
    /// JSON file: a list of token id lists.
    #[arg(long)]
    ids: PathBuf,
    #[arg(long)]
    out: PathBuf,
    #[arg(long, default_value = "f32")]
    dtype: Dtype,
    #[arg(long, default_value = "cpu")]
    device: DeviceSpec,
}

/// `[sequence][layer]` -> that sequence's real rows `[len, hidden]`, f32 on the host.
struct TokenStates {
    depth: usize,
    rows: Vec<Vec<Vec<f32>>>,
}

impl Capture for TokenStates {
    fn depth(&self) -> usize {
        self.depth
    }

    fn on_resid(&mut self, layer: usize, resid: &Tensor, batch: &Batch) -> Result<()> {
        let host = resid.to_device(&Device::Cpu)?.to_dtype(DType::F32)?;
        for (row, (&len, &index)) in batch.lens.iter().zip(&batch.index).enumerate() {
            let real = host.get(row)?.narrow(0, 0, len)?;
            self.rows[index][layer] = real.flatten_all()?.to_vec1()?;
        }
        Ok(())
    }
}

fn main() -> Result<()> {
    let args = Args::parse();
    let text = std::fs::read_to_string(&args.ids)
        .with_context(|| format!("reading {}", args.ids.display()))?;
    let seqs: Vec<Vec<u32>> = serde_json::from_str(&text)
        .with_context(|| format!("{}: expected a list of token id lists", args.ids.display()))?;
    let engine = Engine {
        dtype: args.dtype,
        device: args.device,
    };
    let loaded = harness::commands::load_model(&args.model, engine)?;
    let model = &loaded.model;
    let layers = model.num_layers();
    let hidden = model.config.hidden_size;
    let mut states = TokenStates {
        depth: layers,
        rows: vec![vec![Vec::new(); layers + 1]; seqs.len()],
    };
    // One padded batch, as the reference runs them.
    let plan = BatchPlan {
        max_tokens: usize::MAX,
        max_size: seqs.len().max(1),
    };
    capture::run(
        model,
        &seqs,
        loaded.tokenizer.pad_id(),
        plan,
        &Intervention::default(),
        &mut states,
        &Progress::hidden(),
    )?;

    let longest = seqs.iter().map(Vec::len).max().unwrap_or(0);
    let padded = |rows: Vec<Vec<f32>>| -> Result<Tensor> {
        let mut data = vec![0f32; seqs.len() * longest * hidden];
        for (b, r) in rows.iter().enumerate() {
            data[b * longest * hidden..][..r.len()].copy_from_slice(r);
        }
        Ok(Tensor::from_vec(
            data,
            (seqs.len(), longest, hidden),
            &Device::Cpu,
        )?)
    };
    let mut out = HashMap::new();
    for l in 0..=layers {
        let rows = states.rows.iter().map(|s| s[l].clone()).collect();
        out.insert(format!("hidden.{l}"), padded(rows)?);
    }
    let mut normed = Vec::with_capacity(seqs.len());
    for (s, seq) in states.rows.iter().zip(&seqs) {
        let last = Tensor::from_slice(&s[layers], (seq.len(), hidden), &Device::Cpu)?;
        normed.push(model.final_norm(&last)?.flatten_all()?.to_vec1()?);
    }
    out.insert("final_norm".to_string(), padded(normed)?);
    candle_core::safetensors::save(&out, &args.out)
        .with_context(|| format!("writing {}", args.out.display()))?;
    println!(
        "{}: {} sequences, layers 0..={layers}, hidden {hidden}",
        args.out.display(),
        seqs.len()
    );
    Ok(())
}
