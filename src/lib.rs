//! harness: measure what every layer of a large language model is good for.
//!
//! It loads decoder models (GGUF files, Hugging Face safetensors directories, the hub),
//! captures every layer in one forward pass, numerically equal to Python
//! `transformers`, and scores each layer on tasks defined in TOML: linear probes,
//! retrieval, similarity against human ratings and the logit lens. The `harness`
//! binary only parses arguments; everything it does is here.
//!
//! # In ten lines
//!
//! Load a model, pool every layer of some texts, and score a shipped task at every
//! layer (SmolLM2-135M and `mr` after `scripts/fetch_assets.py`; `load_model` takes
//! whatever `--model` takes: an alias, a `.gguf` file, a directory, `hf:org/name`):
//!
//! ```
//! use harness::{embed_texts, evaluate, load_model, load_task, EvalOptions, Pool};
//!
//! let model = load_model("smollm2")?;
//! let texts = ["A gripping, beautifully acted film.", "Dull and far too long."];
//! let texts: Vec<String> = texts.map(String::from).into();
//! let vectors = embed_texts(&model, &texts, Pool::MeanSkipFirst, Default::default())?;
//! assert_eq!(vectors.layer(0).dim(), (2, model.model.config.hidden_size));
//!
//! let opts = EvalOptions { limit: Some(100), use_cache: false, quiet: true, ..Default::default() };
//! let result = &evaluate(&model, &[load_task("mr")?], &opts)?[0];
//! println!("best layer {} of {}", result.peak.layer, result.layers.len() - 1);
//! # anyhow::Ok(())
//! ```
//!
//! # Where things are
//!
//! - [`model`]: where a model comes from, the two formats, one file per architecture
//!   over shared blocks and kernels, the tokenizer, and the capture interface.
//! - [`embeddings`]: pooling, the embedding cache, and the session tasks draw on.
//! - [`tasks`] and [`datasets`]: TOML task files and the data they read.
//! - [`probe`], [`stats`]: linear probes (linfa estimators), metrics, bootstrap
//!   intervals and chance levels.
//! - [`diagnostics`]: the paper's per-layer metrics and phases.
//! - [`commands`]: what each `harness` command does; [`results`]: the files they
//!   write; [`report`]: leaderboards, plots and terminal tables.
//! - [`hub`]: Hugging Face downloads; [`io`]: atomic writes, locks, progress.
//! - [`sweep`]: models x tasks as units a cluster's scheduler (Slurm, Kubernetes) runs.

pub mod commands;
pub mod datasets;
pub mod diagnostics;
pub mod embeddings;
pub mod hub;
pub mod io;
pub mod model;
pub mod probe;
pub mod report;
pub mod results;
pub mod stats;
pub mod sweep;
pub mod tasks;

pub use commands::eval::{evaluate, EvalOptions};
pub use embeddings::pool::{Pool, Pooled};
pub use model::source::{load as load_model, LoadedModel};
pub use results::eval::EvalResult;
pub use tasks::{load as load_task, LoadedTask};

/// Pooled vectors `[texts, layers + 1, hidden]` of `texts` at every layer of `model`,
/// with the default batching and no progress bar; [`embeddings::encode::embed_texts`]
/// takes every setting.
pub fn embed_texts(
    model: &LoadedModel,
    texts: &[String],
    pool: Pool,
    encoding: embeddings::encode::Encoding,
) -> anyhow::Result<Pooled> {
    Ok(embeddings::encode::embed_texts(
        model,
        texts,
        pool,
        encoding,
        model::capture::BatchPlan::default(),
        &model::Intervention::default(),
        &io::progress::Progress::hidden(),
    )?
    .pooled)
}
