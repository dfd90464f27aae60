//! `harness analyze` as a command: gathers the prompts, runs the analysis of
//! [`analyze`] and writes its result.

use std::path::PathBuf;

use anyhow::Result;

use crate::commands::analyze::{self, AnalyzeOptions};
use crate::commands::{load_model, parse_ablate};
use crate::embeddings::encode::Encoding;
use crate::io::progress::Progress;
use crate::model::capture::BatchPlan;

/// What `harness analyze` was asked to do.
#[derive(Debug, Clone)]
pub struct AnalyzeCommand {
    pub model: String,
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
    /// Results directory.
    pub out: PathBuf,
    /// No progress bars.
    pub quiet: bool,
}

/// Analyzes the prompts (the default Austen paragraphs unless a file or task is
/// given), writes `analyze.json` and prints its table.
pub fn run(cmd: AnalyzeCommand) -> Result<()> {
    let ablate = parse_ablate(cmd.ablate.as_deref())?;
    let (prompts, source) = match (&cmd.input, &cmd.task) {
        (Some(path), _) => analyze::file_prompts(path, cmd.limit)?,
        (None, Some(task)) => analyze::task_prompts(&crate::tasks::load(task)?, cmd.limit)?,
        (None, None) => analyze::austen_prompts(
            cmd.limit.unwrap_or(analyze::DEFAULT_PROMPTS),
            cmd.max_tokens,
        )?,
    };
    let loaded = load_model(&cmd.model)?;
    let _lock = crate::results::analyze::lock_result(&cmd.out, &loaded.source.name)?;
    let opts = AnalyzeOptions {
        encoding: cmd.encoding,
        max_tokens: cmd.max_tokens,
        plan: cmd.plan,
        ablate,
        source,
    };
    let progress = Progress::new("analyze", "tokens", cmd.quiet);
    let result = analyze::run(&loaded, &prompts, &opts, &progress)?;
    let path = result.save(&cmd.out)?;
    print!("{}", crate::report::analyze_table(&result));
    eprintln!("wrote {} ({:.1}s)", path.display(), result.settings.seconds);
    Ok(())
}
