//! `harness sweep run`: which units this process runs (its shard, from `--shard` or
//! the scheduler's environment), which of them are already complete, and running
//! the rest one by one so that a failing unit does not stop the others.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Instant;

use anyhow::{bail, Context, Result};

use super::{Sweep, Unit};
use crate::commands::analyze::{Ablate, AnalyzeCommand};
use crate::commands::eval::EvalCommand;
use crate::model::capture::BatchPlan;
use crate::model::dtype::Engine;
use crate::results::analyze::AnalyzeResult;
use crate::results::eval::EvalResult;

/// Shard `index` of `count`: the units whose index is `index` mod `count`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    pub index: usize,
    pub count: usize,
}

impl Shard {
    /// Every unit.
    pub const ALL: Shard = Shard { index: 0, count: 1 };

    fn new(index: usize, count: usize, what: &str) -> Result<Shard> {
        if count == 0 {
            bail!("{what}: the shard count must be at least 1");
        }
        if index >= count {
            bail!("{what}: shard index {index} is not below the count {count}");
        }
        Ok(Shard { index, count })
    }

    /// Whether this shard runs `unit`.
    pub fn runs(&self, unit: &Unit) -> bool {
        unit.index % self.count == self.index
    }
}

/// `I/N` as `--shard` takes it.
impl FromStr for Shard {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Shard> {
        let what = format!("--shard {s}");
        let (i, n) = s
            .split_once('/')
            .with_context(|| format!("{what}: expected INDEX/COUNT such as 0/4"))?;
        let number = |t: &str| {
            t.trim()
                .parse::<usize>()
                .with_context(|| format!("{what}: {t:?} is not a whole number"))
        };
        Shard::new(number(i)?, number(n)?, &what)
    }
}

/// Whose index this process has: `--shard I/N` first, else Slurm's array
/// (`SLURM_ARRAY_TASK_ID`, with the count from `shards` or `SLURM_ARRAY_TASK_COUNT`),
/// else a Kubernetes Indexed Job (`JOB_COMPLETION_INDEX`, with the count from
/// `shards` or the sweep's `units`), else every unit. `env` reads the environment.
pub fn select_shard(
    explicit: Option<Shard>,
    shards: Option<usize>,
    units: usize,
    env: impl Fn(&str) -> Option<String>,
) -> Result<Shard> {
    if let Some(shard) = explicit {
        return Ok(shard);
    }
    let number = |var: &str| -> Result<Option<usize>> {
        env(var)
            .map(|v| {
                v.trim()
                    .parse::<usize>()
                    .map_err(|_| anyhow::anyhow!("{var}={v:?} is not a whole number"))
            })
            .transpose()
    };
    if let Some(index) = number("SLURM_ARRAY_TASK_ID")? {
        let count = match shards {
            Some(n) => n,
            None => number("SLURM_ARRAY_TASK_COUNT")?.context(
                "SLURM_ARRAY_TASK_ID is set but SLURM_ARRAY_TASK_COUNT is not; give --shards N",
            )?,
        };
        return Shard::new(index, count, "SLURM_ARRAY_TASK_ID");
    }
    if let Some(index) = number("JOB_COMPLETION_INDEX")? {
        return Shard::new(index, shards.unwrap_or(units), "JOB_COMPLETION_INDEX");
    }
    match shards {
        Some(_) => bail!(
            "--shards needs an index: --shard I/N, SLURM_ARRAY_TASK_ID or JOB_COMPLETION_INDEX"
        ),
        None => Ok(Shard::ALL),
    }
}

/// What a unit still has to do: the tasks (as `harness eval` takes them) whose
/// results are missing or do not match the sweep, whether its analysis is, and why.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pending {
    pub tasks: Vec<String>,
    pub analyze: bool,
    pub reasons: Vec<String>,
}

impl Pending {
    pub fn is_done(&self) -> bool {
        self.tasks.is_empty() && !self.analyze
    }
}

/// Compares a unit's result files with what the sweep asks: a file counts only if
/// it parses and records the unit's model (name and, once the rest matches, the
/// fingerprint of the files the unit would load), task, limit, seed, pooling,
/// centring, dtype, device, truncation, resamples and ablation. Anything else is run
/// again.
pub fn pending(sweep: &Sweep, unit: &Unit) -> Pending {
    let mut pending = Pending::default();
    let mut fingerprints = Vec::new();
    for (i, output) in unit.outputs.iter().enumerate() {
        let found = candidates(output)
            .into_iter()
            .map(|path| eval_matches(sweep, unit, i, &path).map(|r| (path, r)))
            .collect::<Vec<_>>();
        match found.iter().find_map(|f| f.as_ref().ok()) {
            Some((_, fingerprint)) => fingerprints.push(fingerprint.clone()),
            None => {
                let why = found
                    .into_iter()
                    .find_map(|f| f.err())
                    .unwrap_or_else(|| format!("{} is missing", output.display()));
                pending.tasks.push(sweep.tasks[i].clone());
                pending.reasons.push(why);
            }
        }
    }
    if let Some(path) = &unit.analysis {
        if let Err(why) = analysis_matches(sweep, unit, path) {
            pending.analyze = true;
            pending.reasons.push(why);
        }
    }
    if !fingerprints.is_empty() {
        // Only worth resolving the model when the files match otherwise.
        let current = crate::model::source::resolve(&unit.model).and_then(|s| s.fingerprint());
        let stale = |f: &String| current.as_ref().map_or(true, |c| c != f);
        if fingerprints.iter().any(stale) {
            pending.reasons.push(match &current {
                Ok(_) => format!("the results of {} come from other model files", unit.name),
                Err(e) => format!("cannot check the model's files: {e:#}"),
            });
            pending.tasks = sweep.tasks.clone();
        }
    }
    pending
}

/// The files an output names: itself, or those matching its `*`.
fn candidates(output: &Path) -> Vec<PathBuf> {
    let name = output
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let Some((head, tail)) = name.split_once('*') else {
        return vec![output.to_path_buf()];
    };
    let dir = output.parent().unwrap_or(Path::new("."));
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.len() > head.len() + tail.len())
                .filter(|n| n.starts_with(head) && n.ends_with(tail))
                // Only block numbers in place of `*`: `mr.ablate-*.json` must not take
                // `mr.ablate-12.bf16.json`.
                .filter(|n| {
                    n[head.len()..n.len() - tail.len()]
                        .chars()
                        .all(|c| c.is_ascii_digit() || c == '-')
                })
                .map(|n| dir.join(n))
                .collect()
        })
        .unwrap_or_default();
    found.sort();
    found
}

/// The recorded fingerprint when `path` is task `i`'s result as the sweep asks it,
/// else why not.
fn eval_matches(
    sweep: &Sweep,
    unit: &Unit,
    i: usize,
    path: &Path,
) -> std::result::Result<String, String> {
    let shown = path.display();
    let text = std::fs::read_to_string(path).map_err(|_| format!("{shown} is missing"))?;
    let r: EvalResult =
        serde_json::from_str(&text).map_err(|e| format!("{shown} is not a result ({e})"))?;
    let (s, task) = (&sweep.settings, &sweep.task_settings[i]);
    let ablate_ok = match &s.ablate_parsed {
        None => r.settings.ablate.is_empty(),
        Some(Ablate::Auto) => !r.settings.ablate.is_empty(),
        Some(Ablate::Blocks(b)) => r.settings.ablate == *b,
    };
    let checks = [
        ("schema", r.schema == crate::results::eval::SCHEMA),
        ("model", r.model.name == unit.name),
        ("task", r.task.name == sweep.task_names[i]),
        ("limit", r.settings.limit == task.limit),
        ("seed", r.settings.seed == task.seed),
        ("pool", r.task.pool == task.pool),
        ("centring", r.task.center == task.center),
        ("dtype", r.settings.dtype == s.dtype.to_string()),
        ("device", r.settings.device == s.device.to_string()),
        ("truncate", r.settings.truncate == s.truncate),
        ("resamples", r.settings.resamples == s.resamples),
        ("ablate", ablate_ok),
    ];
    match checks.iter().find(|(_, ok)| !ok) {
        Some((what, _)) => Err(format!("{shown} was run with another {what}")),
        None => Ok(r.model.fingerprint),
    }
}

/// Whether `path` is the unit's analysis as the sweep asks it, else why not.
fn analysis_matches(sweep: &Sweep, unit: &Unit, path: &Path) -> std::result::Result<(), String> {
    let shown = path.display();
    let analyze = sweep.analyze.as_ref().expect("the unit has an analysis");
    let text = std::fs::read_to_string(path).map_err(|_| format!("{shown} is missing"))?;
    let r: AnalyzeResult =
        serde_json::from_str(&text).map_err(|e| format!("{shown} is not an analysis ({e})"))?;
    let s = &r.settings;
    let checks = [
        ("schema", r.schema == crate::results::analyze::SCHEMA),
        ("model", r.model.name == unit.name),
        ("dtype", s.dtype == sweep.settings.dtype.to_string()),
        ("device", s.device == sweep.settings.device.to_string()),
        ("max_tokens", s.max_tokens == analyze.max_tokens),
        ("limit", analyze.limit.is_none_or(|l| s.prompts <= l)),
        (
            "ablation",
            r.ablation.is_some() == sweep.settings.ablate.is_some(),
        ),
    ];
    match checks.iter().find(|(_, ok)| !ok) {
        Some((what, _)) => Err(format!("{shown} was run with another {what}")),
        None => Ok(()),
    }
}

/// How a shard went.
#[derive(Debug, Default)]
pub struct Outcome {
    pub ran: Vec<usize>,
    pub skipped: Vec<usize>,
    /// Unit index and its error, one line.
    pub failed: Vec<(usize, String)>,
}

/// Runs the shard's units that are not complete, each on its own; prints a line per
/// unit and returns what happened.
pub fn run_shard(sweep: &Sweep, units: &[Unit], shard: Shard, quiet: bool) -> Outcome {
    let mine: Vec<&Unit> = units.iter().filter(|u| shard.runs(u)).collect();
    println!(
        "sweep {}: shard {}/{} has {} of {} units",
        sweep.path.display(),
        shard.index,
        shard.count,
        mine.len(),
        units.len()
    );
    let mut outcome = Outcome::default();
    for unit in mine {
        let label = format!("unit {} ({})", unit.index, unit.name);
        let todo = pending(sweep, unit);
        if todo.is_done() {
            println!("{label}: complete, skipped");
            outcome.skipped.push(unit.index);
            continue;
        }
        println!("{label}: running ({})", todo.reasons.join("; "));
        let start = Instant::now();
        match run_unit(sweep, unit, &todo, quiet) {
            Ok(()) => {
                println!("{label}: done in {:.1}s", start.elapsed().as_secs_f64());
                outcome.ran.push(unit.index);
            }
            Err(e) => {
                let error = format!("{e:#}").replace('\n', " ");
                println!("{label}: failed: {error}");
                outcome.failed.push((unit.index, error));
            }
        }
    }
    outcome
}

/// Runs what a unit still has to do, as `harness eval` and `harness analyze` would.
fn run_unit(sweep: &Sweep, unit: &Unit, todo: &Pending, quiet: bool) -> Result<()> {
    let s = &sweep.settings;
    let engine = Engine {
        dtype: s.dtype,
        device: s.device,
    };
    if !todo.tasks.is_empty() {
        crate::commands::eval::run(EvalCommand {
            tasks: todo.tasks.clone(),
            model: unit.model.clone(),
            name: Some(unit.name.clone()),
            engine,
            ablate: s.ablate.clone(),
            out: sweep.results.clone(),
            opts: sweep.eval_options(quiet),
        })?;
    }
    if let (true, Some(a)) = (todo.analyze, &sweep.analyze) {
        crate::commands::analyze::run_command(AnalyzeCommand {
            model: unit.model.clone(),
            name: Some(unit.name.clone()),
            input: None,
            task: a.task.clone(),
            limit: a.limit,
            max_tokens: a.max_tokens,
            ablate: s.ablate.clone(),
            encoding: sweep.eval_options(quiet).encoding,
            plan: BatchPlan::on(engine.device, None, None),
            engine,
            out: sweep.results.clone(),
            quiet,
        })
        .context("analyze")?;
    }
    Ok(())
}
