//! The `harness` command line: parses arguments and calls the library.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Result;
use clap::{Args, Parser, Subcommand};

use harness::commands::analyze::AnalyzeCommand;
use harness::commands::embed::EmbedCommand;
use harness::commands::eval::{EvalCommand, EvalOptions};
use harness::commands::{self, analyze};
use harness::embeddings::encode::Encoding;
use harness::embeddings::pool::Pool;
use harness::model::capture::BatchPlan;
use harness::model::dtype::{DeviceSpec, Dtype, Engine};
use harness::model::tokenizer::BosPolicy;
use harness::model::Intervention;
use harness::sweep::emit;

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
    /// Models x tasks as units for a cluster's scheduler: plan them, run a shard of
    /// them (skipping complete ones), or write the Slurm or Kubernetes job.
    #[command(subcommand)]
    Sweep(SweepCommand),
}

#[derive(Subcommand)]
enum SweepCommand {
    /// Print the units (one per model and revision, with every task) and their files.
    Plan {
        /// The sweep file (TOML; see docs/sweeps.md).
        sweep: PathBuf,
    },
    /// Run the units of one shard whose results are missing or stale.
    Run {
        sweep: PathBuf,
        /// This shard: INDEX/COUNT runs the units whose index is INDEX mod COUNT
        /// (default: from SLURM_ARRAY_TASK_ID or JOB_COMPLETION_INDEX, else all).
        #[arg(long)]
        shard: Option<String>,
        /// The shard count for an index taken from the scheduler's environment
        /// (default: SLURM_ARRAY_TASK_COUNT, or one shard per unit).
        #[arg(long)]
        shards: Option<usize>,
    },
    /// Write the scheduler's job: an sbatch job array or a Kubernetes Indexed Job.
    Emit(Box<EmitArgs>),
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Scheduler {
    Slurm,
    K8s,
}

#[derive(Args)]
struct EmitArgs {
    scheduler: Scheduler,
    sweep: PathBuf,
    /// Write the job here instead of to standard output.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Array tasks (completion indices), each running every COUNT-th unit [default:
    /// one per unit].
    #[arg(long)]
    shards: Option<usize>,
    /// At most this many at once (Slurm's %K, the Job's parallelism).
    #[arg(long)]
    max_parallel: Option<usize>,
    /// CPUs per task.
    #[arg(long, default_value_t = 2)]
    cpus: usize,
    /// Memory per task, GiB.
    #[arg(long, default_value_t = 8)]
    mem_gb: usize,
    /// Slurm: the time limit (--time).
    #[arg(long)]
    time: Option<String>,
    /// Slurm: the partition.
    #[arg(long)]
    partition: Option<String>,
    /// Slurm: where the tasks' logs go [default: RESULTS/logs].
    #[arg(long)]
    logs: Option<PathBuf>,
    /// Slurm: the harness binary the tasks run [default: this one].
    #[arg(long)]
    harness: Option<PathBuf>,
    /// Kubernetes: the container image holding harness (required there).
    #[arg(long)]
    image: Option<String>,
    /// Kubernetes: the PersistentVolumeClaim with the sweep file and its results.
    #[arg(long, default_value = "harness-results")]
    claim: String,
    /// Kubernetes: where the claim is mounted; the sweep file's path is read from there.
    #[arg(long, default_value = "/work")]
    mount: String,
}

impl EmitArgs {
    fn target(self, results: &Path) -> Result<harness::sweep::command::Target> {
        let resources = emit::Resources {
            shards: self.shards,
            max_parallel: self.max_parallel,
            cpus: self.cpus,
            mem_gib: self.mem_gb,
        };
        Ok(match self.scheduler {
            Scheduler::Slurm => harness::sweep::command::Target::Slurm(emit::Slurm {
                resources,
                time: self.time,
                partition: self.partition,
                logs: self.logs.unwrap_or_else(|| results.join("logs")),
                harness: match self.harness {
                    Some(h) => h,
                    None => std::env::current_exe()?,
                },
            }),
            Scheduler::K8s => harness::sweep::command::Target::Kubernetes(emit::Kubernetes {
                resources,
                image: self.image.ok_or_else(|| {
                    anyhow::anyhow!("emit k8s needs --image, the container image holding harness")
                })?,
                claim: self.claim,
                mount: self.mount,
            }),
        })
    }
}

#[derive(Args)]
struct EvalArgs {
    /// Task names (see --list) or paths to task TOML files; repeat or separate with commas.
    #[arg(long, value_delimiter = ',', required_unless_present = "list")]
    task: Vec<String>,
    #[arg(long, required_unless_present = "list")]
    model: Option<String>,
    /// File results under this model name instead of the model's own.
    #[arg(long)]
    name: Option<String>,
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
    /// File the result under this model name instead of the model's own.
    #[arg(long)]
    name: Option<String>,
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
    /// Most sequences per batch [default: 64]. --max-batch-tokens applies too.
    #[arg(long)]
    batch_size: Option<usize>,
    /// Most padded tokens per batch (rows x longest row) [default: 1024 on the CPU,
    /// 4096 on a GPU]; texts are
    /// sorted by length, so short ones fill a batch. A text longer than this runs
    /// alone. Sets memory and speed, never results.
    #[arg(long, value_name = "N")]
    max_batch_tokens: Option<usize>,
    /// Cut texts longer than the model's context instead of refusing them.
    #[arg(long)]
    truncate: bool,
    /// The type weights are held in and activations rounded to: f32 (exact), bf16 or
    /// f16 (default: f32 on the CPU, bf16 on a GPU).
    #[arg(long)]
    dtype: Option<Dtype>,
    /// Where the model runs: cpu, or cuda / cuda:N in a build with the `cuda` feature.
    #[arg(long, default_value = "cpu")]
    device: DeviceSpec,
}

impl RunArgs {
    fn plan(&self) -> BatchPlan {
        BatchPlan::on(self.device, self.batch_size, self.max_batch_tokens)
    }

    fn engine(&self) -> Engine {
        Engine {
            dtype: self.dtype.unwrap_or(self.device.default_dtype()),
            device: self.device,
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
    // candle attaches a backtrace to its errors when RUST_BACKTRACE is set; errors
    // here are one line for the user, so only panics keep their backtraces.
    std::env::set_var("RUST_LIB_BACKTRACE", "0");
    harness::model::memory::keep_freed_memory();
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
    let quiet = cli.quiet;
    match cli.command {
        Command::Inspect { model, json } => commands::inspect::run(&model, json),
        Command::Embed(args) => commands::embed::run(&EmbedCommand {
            model: args.model,
            input: args.input,
            pool: args.pool,
            encoding: args.run.encoding(),
            plan: args.run.plan(),
            engine: args.run.engine(),
            out: args.out,
            quiet,
        }),
        Command::Eval(args) if args.list => commands::eval::list(),
        Command::Eval(args) => commands::eval::run(EvalCommand {
            opts: EvalOptions {
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
            },
            tasks: args.task,
            model: args.model.unwrap_or_default(),
            name: args.name,
            engine: args.run.engine(),
            ablate: args.ablate,
            out: args.out,
        }),
        Command::Report { results, out } => commands::report::run(&results, &out),
        Command::Sweep(SweepCommand::Plan { sweep }) => harness::sweep::command::plan(&sweep),
        Command::Sweep(SweepCommand::Run {
            sweep,
            shard,
            shards,
        }) => harness::sweep::command::run(
            &sweep,
            shard.as_deref().map(str::parse).transpose()?,
            shards,
            quiet,
        ),
        Command::Sweep(SweepCommand::Emit(args)) => {
            let sweep = harness::sweep::Sweep::load(&args.sweep)?;
            let out = args.out.clone();
            let target = (*args).target(&sweep.results)?;
            harness::sweep::command::emit(&sweep, target, out)
        }
        Command::Analyze(args) => commands::analyze::run_command(AnalyzeCommand {
            model: args.model,
            name: args.name,
            input: args.input,
            task: args.task,
            limit: args.limit,
            max_tokens: args.max_tokens,
            ablate: args.ablate,
            encoding: args.run.encoding(),
            plan: args.run.plan(),
            engine: args.run.engine(),
            out: args.out,
            quiet,
        }),
    }
}
