//! `harness eval`: runs tasks on a model and says, layer by layer, how good the
//! representation is for each task and at which depth it peaks.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};

use crate::commands::analyze;
use crate::commands::{load_to_run, parse_ablate, renamed, warn_truncated};
use crate::embeddings::encode::{self, Encoding};
use crate::embeddings::pool::Pool;
use crate::embeddings::session::{Session, SessionOptions};
use crate::io::output::WriteLock;
use crate::io::progress::Progress;
use crate::model::capture::BatchPlan;
use crate::model::dtype::Engine;
use crate::model::memory::Workload;
use crate::model::source::LoadedModel;
use crate::model::Intervention;
use crate::results::eval::{
    now_utc, result_file, Comparison, EvalResult, LayerScore, ModelSummary, Point, Prediction,
    Settings, TaskSummary, Timings, SCHEMA,
};
use crate::results::lock_result;
use crate::stats::bootstrap;
use crate::stats::scores::Scored;
use crate::tasks::generation::LENS_CHUNK;
use crate::tasks::{self, LoadedTask, PreparedTask, TaskOptions};

/// Peaks at or beyond this relative depth are in the paper's Refine phase (late
/// layers), not the middle.
pub const LATE_DEPTH: f64 = 0.85;

/// Significance level for "the peak is above the final layer".
pub const ALPHA: f64 = 0.05;

/// The fewest bootstrap resamples accepted: the one-sided p-value is
/// `(1 + k) / (1 + resamples)`, so fewer than 20 can never fall below [`ALPHA`], and
/// none at all gives no interval.
pub const MIN_RESAMPLES: usize = 20;

/// Settings of an evaluation run.
#[derive(Debug, Clone)]
pub struct EvalOptions {
    /// Examples per task (seeded subset); `None` uses the task's default or all.
    pub limit: Option<usize>,
    pub seed: u64,
    /// Pooling for every embedding task, overriding the tasks' own.
    pub pool: Option<Pool>,
    /// Centring for cosine tasks, overriding the tasks' own.
    pub center: Option<bool>,
    pub encoding: Encoding,
    pub plan: BatchPlan,
    pub intervention: Intervention,
    /// Read and write the embedding cache.
    pub use_cache: bool,
    /// Bootstrap resamples for confidence intervals and the peak test.
    pub resamples: usize,
    /// Cross-validation folds for probes, overriding the tasks' own.
    pub folds: Option<usize>,
    pub quiet: bool,
}

impl EvalOptions {
    /// Refuses settings that cannot give a result, before any work is done.
    pub fn check(&self) -> Result<()> {
        if self.limit == Some(0) {
            bail!("--limit 0 leaves no examples to score; give at least 1");
        }
        if self.resamples < MIN_RESAMPLES {
            bail!(
                "--resamples {} is too few for a confidence interval and the peak test; give at least {MIN_RESAMPLES}",
                self.resamples
            );
        }
        Ok(())
    }

    /// What every task takes from these settings.
    pub fn tasks(&self) -> TaskOptions {
        TaskOptions {
            limit: self.limit,
            seed: self.seed,
            pool: self.pool,
            center: self.center,
            folds: self.folds,
        }
    }

    /// How the run's session drives the model.
    pub fn session(&self) -> SessionOptions {
        SessionOptions {
            encoding: self.encoding,
            plan: self.plan,
            intervention: self.intervention.clone(),
            use_cache: self.use_cache,
            quiet: self.quiet,
        }
    }
}

impl Default for EvalOptions {
    fn default() -> Self {
        let (tasks, session) = (TaskOptions::default(), SessionOptions::default());
        Self {
            limit: tasks.limit,
            seed: tasks.seed,
            pool: tasks.pool,
            center: tasks.center,
            encoding: session.encoding,
            plan: session.plan,
            intervention: session.intervention,
            use_cache: session.use_cache,
            resamples: 1000,
            folds: tasks.folds,
            quiet: session.quiet,
        }
    }
}

/// Runs every task on `model`, sharing one forward pass over texts that several
/// tasks embed.
pub fn evaluate(
    model: &LoadedModel,
    tasks: &[LoadedTask],
    opts: &EvalOptions,
) -> Result<Vec<EvalResult>> {
    opts.check()?;
    let start = Instant::now();
    let mut session = Session::new(model, opts.session())?;
    let task_opts = opts.tasks();
    let prepared = tasks
        .iter()
        .map(|t| t.prepare(&task_opts))
        .collect::<Result<Vec<_>>>()?;
    let requests: Vec<_> = prepared
        .iter()
        .filter_map(PreparedTask::embedding_request)
        .collect();
    session.prefetch(&requests)?;
    // The shared pass serves every embedding task; each result records it.
    let shared_forward_s = session.forward_seconds;
    let mut results = Vec::new();
    for task in &prepared {
        let task_start = Instant::now();
        let forward_before = session.forward_seconds;
        let mut scored = task.run(&mut session)?;
        if opts.encoding.truncate {
            // Counted from the texts rather than during the forward pass, which a
            // cached run skips.
            let cut = encode::encode(model, task.texts(), opts.encoding)?.truncated;
            scored
                .info
                .insert("truncated".into(), serde_json::json!(cut));
        }
        let forward_s = session.forward_seconds - forward_before;
        let score_s = task_start.elapsed().as_secs_f64() - forward_s;
        let timings = Timings {
            shared_forward_s,
            forward_s,
            score_s,
            total_s: start.elapsed().as_secs_f64(),
            tokens: session.tokens,
            cache_hits: session.cache_hits,
        };
        results.push(summarize(
            model,
            session.fingerprint(),
            task,
            scored,
            opts,
            timings,
        )?);
    }
    Ok(results)
}

/// What a task's per-layer statistics say: scores with intervals, the peak, the final
/// layer, how they compare, whether the peak is above chance, and the verdict.
pub struct Curve {
    pub layers: Vec<LayerScore>,
    pub peak: Point,
    pub last: Point,
    pub peak_vs_final: Comparison,
    pub signal: Option<bool>,
    pub prediction: Prediction,
}

/// Scores every layer of `scored` (which must have items) with bootstrap intervals,
/// finds the peak and tests it against the last layer and against chance. Embedding
/// tasks are expected to peak mid-depth, generation at full depth; a peak that is not
/// above chance ("no signal") never counts as the prediction holding.
pub fn curve(scored: &Scored, embedding: bool, opts: &EvalOptions) -> Curve {
    let main = scored.main.as_ref();
    let (layers, n) = (main.layers(), main.items());
    let higher = scored.metric.higher_is_better;
    let depth = |l: usize| l as f64 / (layers - 1).max(1) as f64;
    let all: Vec<usize> = (0..n).collect();
    let mut scores = Vec::with_capacity(layers);
    for l in 0..layers {
        let (ci_low, ci_high) =
            bootstrap::bootstrap_ci(n, opts.resamples, opts.seed, |idx| main.value(l, idx));
        scores.push(LayerScore {
            layer: l,
            relative_depth: depth(l),
            score: main.value(l, &all),
            ci_low,
            ci_high,
            above_chance: scored.chance.beaten_by(ci_low, ci_high, higher),
            metrics: scored.extra.get(l).cloned().unwrap_or_default(),
        });
    }
    let better = |a: f64, b: f64| if higher { a > b } else { a < b };
    let peak = (0..layers).fold(0, |best, l| {
        if better(scores[l].score, scores[best].score) {
            l
        } else {
            best
        }
    });
    let last = layers - 1;
    let point = |l: usize| Point {
        layer: l,
        relative_depth: depth(l),
        score: scores[l].score,
        ci_low: scores[l].ci_low,
        ci_high: scores[l].ci_high,
        above_chance: scores[l].above_chance,
    };
    let (peak_point, last_point) = (point(peak), point(last));
    let sign = if higher { 1.0 } else { -1.0 };
    let cmp = bootstrap::paired_bootstrap(
        n,
        opts.resamples,
        opts.seed,
        |idx| sign * main.value(peak, idx),
        |idx| sign * main.value(last, idx),
    );
    let significant = peak != last && cmp.p_value < ALPHA;
    let signal = peak_point.above_chance;
    let no_signal = signal == Some(false);
    let prediction = if embedding {
        Prediction {
            expected: "intermediate".into(),
            holds: peak > 0 && depth(peak) < LATE_DEPTH && significant && !no_signal,
            rule: format!(
                "peak strictly inside (0, {LATE_DEPTH}) of the depth, significantly above the last layer (paired bootstrap, p < {ALPHA}) and above chance"
            ),
        }
    } else {
        Prediction {
            expected: "full depth".into(),
            holds: (depth(peak) >= LATE_DEPTH || !significant) && !no_signal,
            rule: format!(
                "peak at relative depth >= {LATE_DEPTH}, or no layer significantly better than the last (paired bootstrap, p < {ALPHA}); and the peak above chance where the metric has a chance level"
            ),
        }
    };
    Curve {
        layers: scores,
        peak: peak_point,
        last: last_point,
        peak_vs_final: Comparison {
            gain: cmp.diff,
            ci_low: cmp.ci_low,
            ci_high: cmp.ci_high,
            p_value: cmp.p_value,
            significant,
        },
        signal,
        prediction,
    }
}

/// Turns per-layer statistics into a result file: the [`curve`] and the run's facts.
fn summarize(
    model: &LoadedModel,
    fingerprint: &str,
    prepared: &PreparedTask,
    scored: Scored,
    opts: &EvalOptions,
    timings: Timings,
) -> Result<EvalResult> {
    let (task, settings) = (prepared.task, &prepared.settings);
    let kind = task.spec.kind();
    let n = scored.main.items();
    if n == 0 {
        bail!("task {} has no items to score", task.spec.name);
    }
    let curve = curve(&scored, kind.is_embedding(), opts);
    let mut info = scored.info;
    info.insert(
        "chance".into(),
        serde_json::to_value(&scored.chance).context("serialising the chance level")?,
    );
    let cfg = &model.model.config;
    Ok(EvalResult {
        schema: SCHEMA.into(),
        model: ModelSummary {
            name: model.source.name.clone(),
            architecture: cfg.architecture.clone(),
            num_layers: cfg.num_layers,
            hidden_size: cfg.hidden_size,
            fingerprint: fingerprint.to_string(),
        },
        task: TaskSummary {
            name: task.spec.name.clone(),
            kind,
            metric: scored.metric.name.into(),
            higher_is_better: scored.metric.higher_is_better,
            description: task.spec.description.clone(),
            license: task.spec.license.clone(),
            source: task.spec.data.source.clone(),
            items: scored.items.into(),
            n_items: n,
            pool: settings.pool,
            center: settings.center,
        },
        settings: Settings {
            seed: opts.seed,
            limit: settings.limit,
            bos: opts.encoding.bos.to_string(),
            truncate: opts.encoding.truncate,
            ablate: opts.intervention.ablate_first_mlp.clone(),
            dtype: model.model.dtype().to_string(),
            device: model.model.device().to_string(),
            resamples: opts.resamples,
            confidence_interval: format!(
                "95% percentile bootstrap over {}, {} resamples",
                scored.items, opts.resamples
            ),
        },
        layers: curve.layers,
        peak: curve.peak,
        last: curve.last,
        peak_vs_final: curve.peak_vs_final,
        signal: curve.signal,
        prediction: curve.prediction,
        info,
        version: env!("CARGO_PKG_VERSION").into(),
        timings,
        created: now_utc(),
    })
}

/// Claims every result file a run of `tasks` will write under `dir`, before the
/// work starts, so that a second run on the same files fails at once instead of
/// silently overwriting (or being overwritten by) this one. Hold them until written.
pub fn lock_results(
    dir: &Path,
    model: &LoadedModel,
    tasks: &[LoadedTask],
    opts: &EvalOptions,
) -> Result<Vec<WriteLock>> {
    tasks
        .iter()
        .map(|t| {
            lock_result(&result_file(
                dir,
                &model.source.name,
                &t.spec.name,
                &opts.intervention.ablate_first_mlp,
                &model.model.dtype().to_string(),
            ))
        })
        .collect()
}

/// What running `tasks` asks of the model, for the memory check: every embedding
/// task's pooled vectors are kept to the end (an upper bound where tasks share
/// texts), a generation task unembeds rows, the ablation pass reads attention.
fn workload(tasks: &[LoadedTask], opts: &EvalOptions, ablate: bool) -> Result<Workload> {
    let task_opts = opts.tasks();
    let mut texts = 0;
    for task in tasks.iter().filter(|t| t.spec.kind().is_embedding()) {
        texts += task.texts(&task_opts)?.len();
    }
    let generation = tasks.iter().any(|t| !t.spec.kind().is_embedding());
    Ok(Workload {
        texts,
        attention: ablate,
        logit_rows: if generation { LENS_CHUNK } else { 0 },
        ..Workload::pass(opts.plan)
    })
}

/// What `harness eval` was asked to do.
#[derive(Debug, Clone)]
pub struct EvalCommand {
    /// Shipped task names or paths to task files.
    pub tasks: Vec<String>,
    pub model: String,
    /// The name results are filed under instead of the model's own (`--name`).
    pub name: Option<String>,
    pub engine: Engine,
    /// `--ablate` as given: `auto` or block numbers.
    pub ablate: Option<String>,
    /// Results directory.
    pub out: PathBuf,
    /// The run's settings; its intervention is filled in from `ablate`.
    pub opts: EvalOptions,
}

/// `harness eval --list`: the shipped tasks with their kinds and descriptions.
pub fn list() -> Result<()> {
    for name in tasks::shipped_names() {
        let task = tasks::describe(name)?;
        println!("{name:<16} {:<15} {}", task.kind(), task.description);
    }
    Ok(())
}

/// `harness eval`: scores the tasks, writes one result per task and prints the tables.
pub fn run(cmd: EvalCommand) -> Result<()> {
    let EvalCommand {
        tasks,
        model,
        name,
        engine,
        ablate,
        out,
        mut opts,
    } = cmd;
    // Tasks and their data first: a bad task file fails before the model loads.
    let tasks = tasks
        .iter()
        .map(|t| tasks::load(t))
        .collect::<Result<Vec<_>>>()?;
    let ablate = parse_ablate(ablate.as_deref())?;
    // Settings that cannot give a result fail before the model loads.
    opts.check()?;
    let model = renamed(
        load_to_run(&model, engine, &workload(&tasks, &opts, ablate.is_some())?)?,
        name,
    )?;
    if let Some(a) = &ablate {
        let progress = Progress::new("ablation", "tokens", opts.quiet);
        let (blocks, rule) =
            analyze::ablation_blocks(&model, a, opts.encoding, opts.plan, &progress)?;
        eprintln!("ablating the first token's MLP output in block(s) {blocks:?} ({rule})");
        opts.intervention = Intervention {
            ablate_first_mlp: blocks,
        };
    }
    let _locks = lock_results(&out, &model, &tasks, &opts)?;
    let results = evaluate(&model, &tasks, &opts)?;
    for result in &results {
        let task = format!("task {}: ", result.task.name);
        warn_truncated(&task, result.truncated(), &model);
        let path = crate::results::eval::write_result(&out, result)?;
        print!("{}", crate::report::eval_table(result));
        println!("wrote {}\n", path.display());
    }
    if results.len() > 1 {
        print!("{}", crate::report::eval_summary(&results));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    /// Accuracy at three layers over 200 examples, 60% of which carry the majority
    /// label: `hits[l]` of them right at layer `l`.
    fn accuracy_curve(hits: [usize; 3]) -> Curve {
        let correct = hits
            .iter()
            .map(|&h| (0..200).map(|i| f64::from(u8::from(i < h))).collect())
            .collect();
        let scored = Scored::accuracy(correct, &[80, 120], Vec::new(), BTreeMap::new());
        let opts = EvalOptions {
            resamples: 500,
            ..EvalOptions::default()
        };
        curve(&scored, true, &opts)
    }

    #[test]
    fn a_peak_no_better_than_the_majority_is_no_signal() {
        // Mid-depth peak at 0.63 against 0.40 at the end: the verdict would hold, but
        // always answering the majority label already scores 0.60.
        let c = accuracy_curve([100, 126, 80]);
        assert_eq!(c.peak.layer, 1);
        assert!(c.peak_vs_final.significant);
        assert!(c.peak.ci_low < 0.6, "{}", c.peak.ci_low);
        assert_eq!(c.peak.above_chance, Some(false));
        assert_eq!(c.signal, Some(false));
        assert!(!c.prediction.holds);
        let above: Vec<Option<bool>> = c.layers.iter().map(|l| l.above_chance).collect();
        assert_eq!(above, [Some(false); 3]);
    }

    #[test]
    fn a_peak_well_above_the_majority_is_a_signal() {
        let c = accuracy_curve([100, 180, 130]);
        assert_eq!(c.peak.above_chance, Some(true));
        assert_eq!(c.signal, Some(true));
        assert!(c.prediction.holds);
        let above: Vec<Option<bool>> = c.layers.iter().map(|l| l.above_chance).collect();
        assert_eq!(above, [Some(false), Some(true), Some(false)]);
    }

    #[test]
    fn files_without_chance_levels_still_load() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/results");
        let text = std::fs::read_to_string(dir.join("smollm2/mr.json")).unwrap();
        assert!(
            !text.contains("chance"),
            "the fixture predates chance levels"
        );
        let r: EvalResult = serde_json::from_str(&text).unwrap();
        assert_eq!(r.chance(), None);
        assert_eq!((r.signal, r.peak.above_chance), (None, None));
        assert!(r.layers.iter().all(|l| l.above_chance.is_none()));
        assert!(!r.layers[0].metrics.contains_key("above_chance"));
    }
}
