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
use harness::model::{Intervention, Transformer};

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

/// `[sequence][layer]` -> that sequence's real rows `[len, hidden]`, f32 on the host;
/// layer L + 1 holds the final norm of layer L, applied where the model runs.
struct TokenStates<'a> {
    model: &'a Transformer,
    rows: Vec<Vec<Vec<f32>>>,
}

impl TokenStates<'_> {
    fn keep(&mut self, layer: usize, states: &Tensor, batch: &Batch) -> Result<()> {
        let host = states.to_device(&Device::Cpu)?.to_dtype(DType::F32)?;
        for (row, (&len, &index)) in batch.lens.iter().zip(&batch.index).enumerate() {
            let real = host.get(row)?.narrow(0, 0, len)?;
            self.rows[index][layer] = real.flatten_all()?.to_vec1()?;
        }
        Ok(())
    }
}

impl Capture for TokenStates<'_> {
    fn depth(&self) -> usize {
        self.model.num_layers()
    }

    fn on_resid(&mut self, layer: usize, resid: &Tensor, batch: &Batch) -> Result<()> {
        self.keep(layer, resid, batch)?;
        if layer == self.depth() {
            self.keep(layer + 1, &self.model.final_norm(resid)?, batch)?;
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
        model,
        rows: vec![vec![Vec::new(); layers + 2]; seqs.len()],
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
    for l in 0..=layers + 1 {
        let rows = states.rows.iter().map(|s| s[l].clone()).collect();
        let name = match l {
            l if l <= layers => format!("hidden.{l}"),
            _ => "final_norm".to_string(),
        };
        out.insert(name, padded(rows)?);
    }
    candle_core::safetensors::save(&out, &args.out)
        .with_context(|| format!("writing {}", args.out.display()))?;
    println!(
        "{}: {} sequences, layers 0..={layers}, hidden {hidden}",
        args.out.display(),
        seqs.len()
    );
    Ok(())
}
