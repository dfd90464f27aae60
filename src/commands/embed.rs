//! `harness embed`: pooled vectors of every text of a file at every layer, written
//! as safetensors.

use std::collections::HashMap;
use std::path::PathBuf;

use anyhow::Result;

use crate::commands::{load_to_run, warn_truncated};
use crate::embeddings::encode::{self, Encoding};
use crate::embeddings::pool::Pool;
use crate::io::progress::Progress;
use crate::model::capture::BatchPlan;
use crate::model::dtype::Engine;
use crate::model::memory::Workload;
use crate::model::Intervention;

/// What `harness embed` was asked to do.
#[derive(Debug, Clone)]
pub struct EmbedCommand {
    pub model: String,
    /// Text file, one text per line.
    pub input: PathBuf,
    pub pool: Pool,
    pub encoding: Encoding,
    pub plan: BatchPlan,
    pub engine: Engine,
    /// The safetensors file written.
    pub out: PathBuf,
    /// No progress bar.
    pub quiet: bool,
}

/// Embeds the texts, says how fast, and writes the vectors with their provenance.
pub fn run(cmd: &EmbedCommand) -> Result<()> {
    crate::io::output::check_destination(&cmd.out)?;
    let texts = crate::datasets::read_lines(&cmd.input)?;
    let work = Workload {
        texts: texts.len(),
        ..Workload::pass(cmd.plan)
    };
    let loaded = load_to_run(&cmd.model, cmd.engine, &work)?;
    let progress = Progress::new("embed", "tokens", cmd.quiet);
    let out = encode::embed_texts(
        &loaded,
        &texts,
        cmd.pool,
        cmd.encoding,
        cmd.plan,
        &Intervention::default(),
        &progress,
    )?;
    warn_truncated("", out.truncated, &loaded);
    eprintln!(
        "embedded {} texts ({} tokens) at {} layers in {:.1}s ({:.0} tokens/s), pool {}",
        out.pooled.n,
        out.tokens,
        out.pooled.layers,
        out.seconds,
        out.tokens as f64 / out.seconds,
        out.pool
    );
    let metadata = HashMap::from([
        ("model".to_string(), loaded.source.name.clone()),
        ("bos".to_string(), cmd.encoding.bos.to_string()),
        ("input".to_string(), cmd.input.display().to_string()),
        ("dtype".to_string(), loaded.model.dtype().to_string()),
        ("device".to_string(), loaded.model.device().to_string()),
    ]);
    out.save(&cmd.out, metadata)
}
