//! The `harness` command line: parses arguments and calls the library.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::{Args, Parser, Subcommand};

use harness::commands::analyze::{self, Ablate, AnalyzeOptions};
use harness::commands::eval::EvalOptions;
use harness::embeddings::encode::{self, Encoding};
use harness::embeddings::pool::Pool;
use harness::io::progress::Progress;
use harness::model::capture::BatchPlan;
use harness::model::tokenizer::BosPolicy;
use harness::model::Intervention;

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
    /// Score tasks at every layer and report where each peaks.
    Eval(EvalArgs),
    /// Leaderboard, depth curves and layer analyses of every result, as Markdown, HTML, CSV and SVG.
    Report {
        /// Directory searched (recursively) for eval and analyze results.
        #[arg(long, default_value = "results")]
        results: PathBuf,
        /// Where leaderboard.md, index.html, the CSV files and plots/ go.
        #[arg(long, default_value = "reports")]
        out: PathBuf,
    },
    /// Per-layer diagnostics (first-token norm, massive activations, matrix entropy,
    /// attention sinks, mixing), the Mix/Compress/Refine phases and the first-token
    /// MLP ablation, written to DIR/<model>/analyze.json.
    Analyze(AnalyzeArgs),
}

#[derive(Args)]
struct EvalArgs {
    /// Task names (see --list) or paths to task TOML files; repeat or separate with commas.
    #[arg(long, value_delimiter = ',', required_unless_present = "list")]
    task: Vec<String>,
    #[arg(long, required_unless_present = "list")]
    model: Option<String>,
    /// At most this many examples per task (a seeded subset).
    #[arg(long)]
    limit: Option<usize>,
    /// Seed of subsets, folds and bootstrap resamples.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Pooling for every embedding task (default: each task's own).
    #[arg(long)]
    pool: Option<Pool>,
    /// Centre embeddings (subtract each layer's mean) before cosine similarity.
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    center: Option<bool>,
    /// Cross-validation folds for probes, at least 2 (default: each task's own, else 5).
    #[arg(long)]
    folds: Option<usize>,
    /// Bootstrap resamples for confidence intervals and the peak test (at least 20).
    #[arg(long, default_value_t = 1000)]
    resamples: usize,
    /// Zero the MLP output at position 0 in these blocks: auto (the block where the
    /// first-token norm grows most, found as `analyze` does) or numbers such as 3 or 3,5.
    #[arg(long)]
    ablate: Option<String>,
    /// Recompute embeddings instead of reading the cache.
    #[arg(long)]
    no_cache: bool,
    /// Results directory: writes DIR/<model>/<task>.json.
    #[arg(long, default_value = "results")]
    out: PathBuf,
    /// List the shipped tasks and exit.
    #[arg(long)]
    list: bool,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Args)]
struct AnalyzeArgs {
    #[arg(long)]
    model: String,
    /// Prompts, one per line (default: Jane Austen paragraphs from $HARNESS_HOME).
    #[arg(long)]
    input: Option<PathBuf>,
    /// Prompts from a task's texts (a shipped task name or a task TOML file).
    #[arg(long, conflicts_with = "input")]
    task: Option<String>,
    /// Use at most this many prompts (default: every line of --input, or 64 paragraphs).
    #[arg(long)]
    limit: Option<usize>,
    /// Cut every prompt to this many tokens, BOS included.
    #[arg(long, default_value_t = analyze::DEFAULT_MAX_TOKENS)]
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
        BatchPlan::with_batch_size(self.batch_size)
    }

    fn encoding(&self) -> Encoding {
        Encoding {
            bos: self.bos,
            truncate: self.truncate,
        }
    }
}

fn main() -> ExitCode {
    // candle attaches a backtrace to its errors when RUST_BACKTRACE is set; errors
    // here are one line for the user, so only panics keep their backtraces.
    std::env::set_var("RUST_LIB_BACKTRACE", "0");
    let cli = Cli::parse();
    harness::hub::set_quiet(cli.quiet);
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
            let loaded = load_model(&model)?;
            let info = loaded.info();
            if json {
                println!("{}", serde_json::to_string_pretty(&info)?);
            } else {
                print!("{}", harness::report::inspect_table(&info));
            }
        }
        Command::Embed(args) => {
            harness::io::output::check_destination(&args.out)?;
            let loaded = load_model(&args.model)?;
            let texts = harness::datasets::read_lines(&args.input)?;
            let progress = Progress::new("embed", "tokens", cli.quiet);
            let out = encode::embed_texts(
                &loaded,
                &texts,
                args.pool,
                args.run.encoding(),
                args.run.plan(),
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
                ("bos".to_string(), args.run.bos.to_string()),
                ("input".to_string(), args.input.display().to_string()),
            ]);
            out.save(&args.out, metadata)?;
        }
        Command::Eval(args) => eval(args, cli.quiet)?,
        Command::Report { results, out } => {
            let loaded = harness::report::load(&results)?;
            for warning in &loaded.warnings {
                eprintln!("warning: {warning}");
            }
            for path in harness::report::write_report(&loaded, &out)? {
                println!("wrote {}", path.display());
            }
        }
        Command::Analyze(args) => analyze(args, cli.quiet)?,
    }
    Ok(())
}

fn eval(args: EvalArgs, quiet: bool) -> Result<()> {
    if args.list {
        for name in harness::tasks::shipped_names() {
            let task = harness::tasks::describe(name)?;
            println!(
                "{name:<16} {:<15} {}",
                format!("{:?}", task.kind).to_lowercase(),
                task.description
            );
        }
        return Ok(());
    }
    // Tasks and their data first: a bad task file fails before the model loads.
    let tasks = args
        .task
        .iter()
        .map(|t| harness::tasks::load(t))
        .collect::<Result<Vec<_>>>()?;
    let ablate = parse_ablate(args.ablate.as_deref())?;
    let mut opts = EvalOptions {
        limit: args.limit,
        seed: args.seed,
        pool: args.pool,
        center: args.center,
        encoding: args.run.encoding(),
        plan: args.run.plan(),
        intervention: Intervention::default(),
        use_cache: !args.no_cache,
        resamples: args.resamples,
        folds: args.folds,
        quiet,
    };
    // Settings that cannot give a result fail before the model loads.
    opts.check()?;
    let model = load_model(args.model.as_deref().unwrap_or_default())?;
    if let Some(a) = &ablate {
        let progress = Progress::new("ablation", "tokens", quiet);
        let (blocks, rule) =
            analyze::ablation_blocks(&model, a, opts.encoding, opts.plan, &progress)?;
        eprintln!("ablating the first token's MLP output in block(s) {blocks:?} ({rule})");
        opts.intervention = Intervention {
            ablate_first_mlp: blocks,
        };
    }
    let _locks = harness::commands::eval::lock_results(&args.out, &model, &tasks, &opts)?;
    let results = harness::commands::eval::evaluate(&model, &tasks, &opts)?;
    for result in &results {
        let task = format!("task {}: ", result.task.name);
        warn_truncated(&task, result.truncated(), &model);
        let path = harness::results::eval::write_result(&args.out, result)?;
        print!("{}", harness::report::eval_table(result));
        println!("wrote {}\n", path.display());
    }
    if results.len() > 1 {
        print!("{}", harness::report::eval_summary(&results));
    }
    Ok(())
}

fn analyze(args: AnalyzeArgs, quiet: bool) -> Result<()> {
    // Parsed here rather than by clap, so a bad value is one line like every error.
    let ablate = parse_ablate(args.ablate.as_deref())?;
    let (prompts, source) = match (&args.input, &args.task) {
        (Some(path), _) => analyze::file_prompts(path, args.limit)?,
        (None, Some(task)) => analyze::task_prompts(&harness::tasks::load(task)?, args.limit)?,
        (None, None) => analyze::austen_prompts(
            args.limit.unwrap_or(analyze::DEFAULT_PROMPTS),
            args.max_tokens,
        )?,
    };
    let loaded = load_model(&args.model)?;
    let _lock = harness::results::analyze::lock_result(&args.out, &loaded.source.name)?;
    let opts = AnalyzeOptions {
        encoding: args.run.encoding(),
        max_tokens: args.max_tokens,
        plan: args.run.plan(),
        ablate,
        source,
    };
    let progress = Progress::new("analyze", "tokens", quiet);
    let result = analyze::run(&loaded, &prompts, &opts, &progress)?;
    let path = result.save(&args.out)?;
    print!("{}", harness::report::analyze_table(&result));
    eprintln!("wrote {} ({:.1}s)", path.display(), result.settings.seconds);
    Ok(())
}

/// Loads a model, passing on what the loader has to say about its checkpoint.
fn load_model(spec: &str) -> Result<harness::model::source::LoadedModel> {
    let loaded = harness::model::source::load(spec)?;
    for warning in &loaded.warnings {
        eprintln!("warning: {warning}");
    }
    Ok(loaded)
}

/// The warning `--truncate` owes when it cut texts; `what` says whose.
fn warn_truncated(what: &str, count: usize, model: &harness::model::source::LoadedModel) {
    if count > 0 {
        eprintln!(
            "warning: {what}{count} text(s) were cut to the model's context of {} tokens",
            model.model.config.context_length
        );
    }
}

fn parse_ablate(value: Option<&str>) -> Result<Option<Ablate>> {
    value.map(str::parse::<Ablate>).transpose()
}
