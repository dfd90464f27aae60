//! Sweeps: many models (and checkpoints of one model) times many tasks, as one list
//! of independent units that a cluster's own scheduler runs in parallel (Slurm job
//! arrays, Kubernetes Indexed Jobs; `docs/sweeps.md`).
//!
//! A sweep file ([`SweepFile`], TOML) names the models, the tasks and the settings
//! they share; [`Sweep::load`] checks it and [`Sweep::plan`] turns it into
//! [`Unit`]s, one per model and revision with every task, so that each model is
//! loaded once and texts that several tasks embed are embedded once. Units write
//! where `harness eval --out` would, so `harness report` merges a sweep's results
//! with everything else. [`run`] executes a shard of the units, skipping those
//! already complete; [`emit`] writes the scheduler's job; [`command`] is what the
//! `harness sweep` subcommands print.

pub mod command;
pub mod emit;
pub mod run;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::Deserialize;

use crate::commands::analyze::{Ablate, DEFAULT_MAX_TOKENS};
use crate::commands::eval::EvalOptions;
use crate::embeddings::pool::Pool;
use crate::model::capture::BatchPlan;
use crate::model::dtype::{DeviceSpec, Dtype};
use crate::results::eval::{file_safe, result_file};
use crate::tasks;

/// Where a model's path names its revision, for checkpoints stored as directories
/// or files (`ckpts/{revision}`).
pub const REVISION_PLACEHOLDER: &str = "{revision}";

/// A sweep file as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SweepFile {
    /// Results directory, relative to the sweep file (default `results`).
    #[serde(default)]
    pub results: Option<String>,
    /// Shipped task names or task TOML files (relative to the sweep file).
    pub tasks: Vec<String>,
    #[serde(default)]
    pub settings: SettingsFile,
    /// Also run `harness analyze` on every model and revision.
    #[serde(default)]
    pub analyze: Option<AnalyzeFile>,
    #[serde(default)]
    pub models: Vec<ModelFile>,
}

/// One `[[models]]` entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelFile {
    /// An alias, a `.gguf` file, a Hugging Face directory or `hf:org/name`; a local
    /// path with revisions holds `{revision}`.
    pub model: String,
    /// The name results are filed under (default: the model's own; required for a
    /// local path with revisions). Revisions add `@<revision>`.
    #[serde(default)]
    pub name: Option<String>,
    /// Checkpoints of this model: hub revisions (`step1000`) or what replaces
    /// `{revision}` in a local path.
    #[serde(default)]
    pub revisions: Vec<String>,
}

/// `[settings]`: what every unit shares, as `harness eval` takes them.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SettingsFile {
    pub limit: Option<usize>,
    #[serde(default)]
    pub seed: u64,
    pub pool: Option<String>,
    pub dtype: Option<String>,
    pub device: Option<String>,
    pub ablate: Option<String>,
    #[serde(default)]
    pub truncate: bool,
    pub resamples: Option<usize>,
}

/// `[analyze]`: `harness analyze` on every unit's model.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AnalyzeFile {
    /// At most this many prompts.
    pub limit: Option<usize>,
    /// Prompts from this task's texts instead of the Austen paragraphs.
    pub task: Option<String>,
    pub max_tokens: Option<usize>,
}

/// The settings every unit runs with, checked.
#[derive(Debug, Clone)]
pub struct Settings {
    pub limit: Option<usize>,
    pub seed: u64,
    pub pool: Option<Pool>,
    pub dtype: Dtype,
    pub device: DeviceSpec,
    /// As written (`auto` or blocks), for the eval and analyze drivers.
    pub ablate: Option<String>,
    pub ablate_parsed: Option<Ablate>,
    pub truncate: bool,
    pub resamples: usize,
}

/// What `[analyze]` asks, checked.
#[derive(Debug, Clone)]
pub struct AnalyzeSettings {
    pub limit: Option<usize>,
    pub task: Option<String>,
    pub max_tokens: usize,
}

/// A checked sweep file.
#[derive(Debug, Clone)]
pub struct Sweep {
    /// The sweep file, as given.
    pub path: PathBuf,
    pub results: PathBuf,
    /// Task arguments for `harness eval`, paths resolved against the sweep file.
    pub tasks: Vec<String>,
    /// The tasks' own names, which name their result files.
    pub task_names: Vec<String>,
    /// Each task's settings under the sweep's (limit, seed, pooling, centring), as
    /// its results record them.
    pub task_settings: Vec<tasks::Settings>,
    pub settings: Settings,
    pub analyze: Option<AnalyzeSettings>,
    pub models: Vec<ModelFile>,
    /// The sweep file's directory, against which its relative paths are read.
    base: PathBuf,
}

/// One model at one revision with every task: what one array task runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unit {
    pub index: usize,
    /// The `--model` argument.
    pub model: String,
    /// The name results are filed under.
    pub name: String,
    pub revision: Option<String>,
    /// One result file per task; with `ablate = "auto"`, a pattern with `*` for the
    /// blocks, found when the unit runs.
    pub outputs: Vec<PathBuf>,
    /// `analyze.json`, when the sweep asks for it.
    pub analysis: Option<PathBuf>,
}

impl Sweep {
    /// Reads and checks a sweep file; every error is one line naming the file.
    pub fn load(path: &Path) -> Result<Sweep> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read sweep file {}", path.display()))?;
        Self::parse(&text, path).with_context(|| format!("sweep file {}", path.display()))
    }

    /// Checks the text of a sweep file read from `path`.
    pub fn parse(text: &str, path: &Path) -> Result<Sweep> {
        let file: SweepFile = toml::from_str(text).map_err(|e| {
            let line = e.span().map(|s| {
                1 + text.as_bytes()[..s.start.min(text.len())]
                    .iter()
                    .filter(|&&b| b == b'\n')
                    .count()
            });
            let message = e.message().trim().replace('\n', " ");
            match line {
                Some(l) => anyhow::anyhow!("line {l}: {message}"),
                None => anyhow::anyhow!("{message}"),
            }
        })?;
        let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
        let settings = settings(&file.settings)?;
        if file.tasks.is_empty() {
            bail!("`tasks` is empty; name at least one task");
        }
        let mut tasks = Vec::new();
        let task_opts = tasks::TaskOptions {
            limit: settings.limit,
            seed: settings.seed,
            pool: settings.pool,
            ..Default::default()
        };
        let (mut task_names, mut task_settings) = (Vec::new(), Vec::new());
        for task in &file.tasks {
            let (arg, spec) = task_arg(task, &base)?;
            if task_names.contains(&spec.name) {
                bail!("task {} is listed twice", spec.name);
            }
            tasks.push(arg);
            task_settings.push(spec.settings(&task_opts));
            task_names.push(spec.name);
        }
        if file.models.is_empty() {
            bail!("no [[models]]; name at least one model");
        }
        let analyze = file
            .analyze
            .as_ref()
            .map(|a| {
                if a.limit == Some(0) {
                    bail!("[analyze] limit = 0 leaves no prompts; give at least 1");
                }
                let task = a.task.as_deref().map(|t| task_arg(t, &base)).transpose()?;
                Ok(AnalyzeSettings {
                    limit: a.limit,
                    task: task.map(|(arg, _)| arg),
                    max_tokens: a.max_tokens.unwrap_or(DEFAULT_MAX_TOKENS),
                })
            })
            .transpose()?;
        let sweep = Sweep {
            path: path.to_path_buf(),
            results: base.join(file.results.as_deref().unwrap_or("results")),
            tasks,
            task_names,
            task_settings,
            settings,
            analyze,
            models: file.models,
            base,
        };
        // Every model entry and the uniqueness of result names are checked here, so
        // that a plan that loads is a plan that runs.
        sweep.plan()?;
        Ok(sweep)
    }

    /// The units, in a stable order: models as listed, each model's revisions as
    /// listed; unit `i` is run by shard `i mod N`.
    pub fn plan(&self) -> Result<Vec<Unit>> {
        let mut units: Vec<Unit> = Vec::new();
        for entry in &self.models {
            for (model, name, revision) in self.checkpoints(entry)? {
                // Names that differ only where a path cannot hold them share a folder.
                if let Some(other) = units
                    .iter()
                    .find(|u| file_safe(&u.name) == file_safe(&name))
                {
                    bail!(
                        "models {} and {model} would both write results as {name}; give one a `name`",
                        other.model
                    );
                }
                units.push(Unit {
                    index: units.len(),
                    outputs: self.outputs(&name),
                    analysis: self
                        .analyze
                        .as_ref()
                        .map(|_| crate::results::analyze::result_path(&self.results, &name)),
                    model,
                    name,
                    revision,
                });
            }
        }
        Ok(units)
    }

    /// A model entry's (model argument, result name, revision), one per revision.
    fn checkpoints(&self, entry: &ModelFile) -> Result<Vec<(String, String, Option<String>)>> {
        let spec = entry.model.trim();
        if spec.is_empty() {
            bail!("a [[models]] entry has an empty `model`");
        }
        if let Some(name) = &entry.name {
            if name.is_empty() || file_safe(name) != *name {
                bail!("model name {name:?} must be letters, digits, `-`, `_` and `.`");
            }
        }
        let hub = spec.starts_with("hf:");
        let templated = spec.contains(REVISION_PLACEHOLDER);
        let mut seen = BTreeSet::new();
        for r in &entry.revisions {
            if r.is_empty() || r.contains(['/', '\\']) || r.contains("..") || !seen.insert(r) {
                bail!("model {spec}: revision {r:?} is empty, repeated or not one path segment");
            }
        }
        if entry.revisions.is_empty() {
            if templated {
                bail!("model {spec} holds {REVISION_PLACEHOLDER} but lists no `revisions`");
            }
            let model = self.model_arg(spec)?;
            let name = match &entry.name {
                Some(n) => n.clone(),
                None => crate::model::source::output_name(&model)?,
            };
            return Ok(vec![(model, name, None)]);
        }
        if hub && spec.contains('@') {
            bail!("model {spec} names a revision and lists `revisions`; give one or the other");
        }
        if !hub && !templated {
            bail!("model {spec} lists `revisions` but its path holds no {REVISION_PLACEHOLDER}");
        }
        if !hub && entry.name.is_none() {
            bail!("model {spec} has revisions in its path; give it a `name`");
        }
        entry
            .revisions
            .iter()
            .map(|r| {
                let model = match hub {
                    true => format!("{spec}@{r}"),
                    false => self.model_arg(&spec.replace(REVISION_PLACEHOLDER, r))?,
                };
                let name = match &entry.name {
                    Some(n) => format!("{n}@{r}"),
                    None => crate::model::source::output_name(&model)?,
                };
                Ok((model, name, Some(r.clone())))
            })
            .collect()
    }

    /// A model argument with a relative path read against the sweep file.
    fn model_arg(&self, spec: &str) -> Result<String> {
        if spec.starts_with("hf:") || crate::io::assets::find_model(spec)?.is_some() {
            return Ok(spec.to_string());
        }
        Ok(self.base.join(spec).to_string_lossy().into_owned())
    }

    /// The result files of a unit whose results are named `name`.
    fn outputs(&self, name: &str) -> Vec<PathBuf> {
        let ablate = match &self.settings.ablate_parsed {
            None => Vec::new(),
            Some(Ablate::Blocks(b)) => b.clone(),
            // The blocks are found when the unit runs: `*` stands for them.
            Some(Ablate::Auto) => vec![0],
        };
        let dtype = self.settings.dtype.to_string();
        self.task_names
            .iter()
            .map(|task| {
                let path = result_file(&self.results, name, task, &ablate, &dtype);
                match self.settings.ablate_parsed {
                    Some(Ablate::Auto) => {
                        PathBuf::from(path.to_string_lossy().replace(".ablate-0", ".ablate-*"))
                    }
                    _ => path,
                }
            })
            .collect()
    }

    /// What `harness eval` takes from the sweep's settings.
    pub fn eval_options(&self, quiet: bool) -> EvalOptions {
        let s = &self.settings;
        EvalOptions {
            limit: s.limit,
            seed: s.seed,
            pool: s.pool,
            encoding: crate::embeddings::encode::Encoding {
                truncate: s.truncate,
                ..Default::default()
            },
            resamples: s.resamples,
            quiet,
            plan: BatchPlan::on(s.device, None, None),
            ..EvalOptions::default()
        }
    }
}

/// `[settings]` checked, each bad value one line.
fn settings(file: &SettingsFile) -> Result<Settings> {
    let device: DeviceSpec = match &file.device {
        Some(d) => d.parse().context("[settings] device")?,
        None => DeviceSpec::Cpu,
    };
    let dtype = match &file.dtype {
        Some(d) => d.parse().context("[settings] dtype")?,
        None => device.default_dtype(),
    };
    let pool = file
        .pool
        .as_deref()
        .map(str::parse::<Pool>)
        .transpose()
        .context("[settings] pool")?;
    let ablate_parsed = crate::commands::parse_ablate(file.ablate.as_deref())?;
    let settings = Settings {
        limit: file.limit,
        seed: file.seed,
        pool,
        dtype,
        device,
        ablate: file.ablate.clone(),
        ablate_parsed,
        truncate: file.truncate,
        resamples: file.resamples.unwrap_or(EvalOptions::default().resamples),
    };
    EvalOptions {
        limit: settings.limit,
        resamples: settings.resamples,
        ..EvalOptions::default()
    }
    .check()
    .context("[settings]")?;
    Ok(settings)
}

/// A task entry as `harness eval` takes it (a TOML path read against the sweep
/// file) and the task's definition, whose name names its result files. A task file
/// is parsed here, so that a bad one fails the plan, not every unit.
fn task_arg(task: &str, base: &Path) -> Result<(String, tasks::TaskSpec)> {
    if tasks::shipped_names().contains(&task) {
        return Ok((task.to_string(), tasks::describe(task)?));
    }
    if !task.ends_with(".toml") {
        bail!(
            "unknown task '{task}' (known: {}; or give a path to a .toml task file)",
            tasks::shipped_names().join(", ")
        );
    }
    let path = base.join(task);
    let text = crate::datasets::read_text(&path)?;
    let spec = tasks::parse(&text, &path.to_string_lossy())?;
    Ok((path.to_string_lossy().into_owned(), spec))
}

#[cfg(test)]
mod tests;
