//! The `harness` command line: parses arguments and calls the library.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::{Args, Parser, Subcommand};

use harness::analyze::{self, Ablate, AnalyzeOptions};
use harness::capture::{BatchPlan, Pool};
use harness::embed::{self, Encoding};
use harness::models::Intervention;
use harness::progress::Progress;
use harness::tokenizer::BosPolicy;

#[derive(Parser)]
#[command(
    name = "harness",
    version,
    about = "Measure what every layer of a language model is good for"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// No progress bars.
    #[arg(long, global = true)]
    quiet: bool,
}

#[derive(Subcommand)]
enum Command {
    /// Print a model's architecture and shapes.
    Inspect {
        /// Alias (smollm2, llama, gemma3), .gguf file, Hugging Face directory or hf:org/name[@rev].
        #[arg(long)]
        model: String,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Pooled embeddings of every text at every layer, written as safetensors.
    Embed(EmbedArgs),
    /// Per-layer diagnostics (first-token norm, massive activations, matrix entropy,
    /// attention sinks, mixing), the Mix/Compress/Refine phases and the first-token
    /// MLP ablation, written to DIR/<model>/analyze.json.
    Analyze(AnalyzeArgs),
}

#[derive(Args)]
struct AnalyzeArgs {
    #[arg(long)]
    model: String,
    /// Prompts, one per line (default: Jane Austen paragraphs from $HARNESS_HOME).
    #[arg(long)]
    input: Option<PathBuf>,
    /// Use at most this many prompts (default: every line of --input, or 64 paragraphs).
    #[arg(long)]
    limit: Option<usize>,
    /// Cut every prompt to this many tokens, BOS included.
    #[arg(long, default_value_t = 128)]
    max_tokens: usize,
    /// Also run with the MLP output at position 0 zeroed in these blocks: auto (where the
    /// first-token norm grows most) or block numbers such as 3 or 3,5.
    #[arg(long)]
    ablate: Option<String>,
    #[command(flatten)]
    run: RunArgs,
    /// Results go to DIR/<model>/analyze.json.
    #[arg(long, default_value = "results")]
    out: PathBuf,
}

#[derive(Args)]
struct EmbedArgs {
    #[arg(long)]
    model: String,
    /// Text file, one text per line.
    #[arg(long)]
    input: PathBuf,
    /// How token vectors become one vector per text.
    #[arg(long, default_value = "mean")]
    pool: Pool,
    #[command(flatten)]
    run: RunArgs,
    /// Output file: tensor `embeddings` of shape [texts, layers + 1, hidden], f32.
    #[arg(long)]
    out: PathBuf,
}

/// Settings shared by every command that runs a model.
#[derive(Args)]
struct RunArgs {
    /// Prepend the BOS token: auto follows the model's own setting.
    #[arg(long, default_value = "auto")]
    bos: BosPolicy,
    /// Sequences per batch (default: as many as fit 4096 padded tokens, at most 64).
    #[arg(long)]
    batch_size: Option<usize>,
    /// Cut texts longer than the model's context instead of refusing them.
    #[arg(long)]
    truncate: bool,
}

impl RunArgs {
    fn plan(&self) -> BatchPlan {
        match self.batch_size {
            Some(n) => BatchPlan {
                max_tokens: usize::MAX,
                max_size: n.max(1),
            },
            None => BatchPlan::default(),
        }
    }

    fn encoding(&self) -> Encoding {
        Encoding {
            bos: self.bos,
            truncate: self.truncate,
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", one_line(&e));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes on one line.
fn one_line(e: &anyhow::Error) -> String {
    format!("{e:#}").replace('\n', " ")
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Inspect { model, json } => {
            let loaded = harness::loader::load(&model)?;
            let info = loaded.info();
            if json {
                println!("{}", serde_json::to_string_pretty(&info)?);
            } else {
                print!("{}", harness::report::inspect_table(&info));
            }
        }
        Command::Embed(args) => {
            let loaded = harness::loader::load(&args.model)?;
            let texts = harness::datasets::read_lines(&args.input)?;
            let progress = Progress::new("embed", "tokens", cli.quiet);
            let out = embed::embed_texts(
                &loaded,
                &texts,
                args.pool,
                args.run.encoding(),
                args.run.plan(),
                &Intervention::default(),
                &progress,
            )?;
            if out.truncated > 0 {
                eprintln!(
                    "warning: {} text(s) were cut to the model's context of {} tokens",
                    out.truncated, loaded.model.config.context_length
                );
            }
            eprintln!(
                "embedded {} texts ({} tokens) at {} layers in {:.1}s ({:.0} tokens/s), pool {}",
                out.n,
                out.tokens,
                out.layers,
                out.seconds,
                out.tokens as f64 / out.seconds,
                out.pool
            );
            let metadata = HashMap::from([
                ("model".to_string(), loaded.source.name.clone()),
                ("bos".to_string(), args.run.bos.to_string()),
                ("input".to_string(), args.input.display().to_string()),
            ]);
            out.save(&args.out, metadata)?;
        }
        Command::Analyze(args) => {
            // Parsed here rather than by clap, so a bad value is one line like every error.
            let ablate = args
                .ablate
                .as_deref()
                .map(str::parse::<Ablate>)
                .transpose()?;
            let (prompts, source) = match &args.input {
                Some(path) => analyze::file_prompts(path, args.limit)?,
                None => analyze::austen_prompts(
                    args.limit.unwrap_or(analyze::DEFAULT_PROMPTS),
                    args.max_tokens,
                )?,
            };
            let loaded = harness::loader::load(&args.model)?;
            let opts = AnalyzeOptions {
                encoding: args.run.encoding(),
                max_tokens: args.max_tokens,
                plan: args.run.plan(),
                ablate,
                source,
            };
            let progress = Progress::new("analyze", "tokens", cli.quiet);
            let result = analyze::run(&loaded, &prompts, &opts, &progress)?;
            let path = result.save(&args.out)?;
            print!("{}", harness::report::analyze_table(&result));
            eprintln!("wrote {} ({:.1}s)", path.display(), result.settings.seconds);
        }
    }
    Ok(())
}
