//! `harness sweep emit`: the job a cluster's own scheduler runs a sweep with, one
//! array task (Slurm) or completion index (Kubernetes) per shard, each running
//! `harness sweep run` on its shard.
//!
//! The Kubernetes manifest is written as JSON, which is YAML and which `kubectl
//! apply -f` reads, so no YAML writer is needed.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde_json::json;

use super::Sweep;
use crate::model::dtype::DeviceSpec;

/// What a scheduler gives each shard, and how many shards there are.
#[derive(Debug, Clone)]
pub struct Resources {
    /// Shards (array tasks); default one per unit.
    pub shards: Option<usize>,
    /// At most this many shards at once (`%K`, `parallelism`); default all.
    pub max_parallel: Option<usize>,
    pub cpus: usize,
    /// Memory per shard in GiB.
    pub mem_gib: usize,
}

impl Resources {
    /// The shard count for a sweep of `units` units, checked with the rest.
    fn check(&self, units: usize) -> Result<usize> {
        let shards = self.shards.unwrap_or(units);
        if shards == 0 || shards > units {
            bail!("--shards {shards}: the sweep has {units} unit(s); give 1 to {units}");
        }
        if self.max_parallel == Some(0) {
            bail!("--max-parallel 0 would run nothing; give at least 1");
        }
        if self.cpus == 0 || self.mem_gib == 0 {
            bail!("--cpus and --mem-gb must be at least 1");
        }
        Ok(shards)
    }
}

/// Slurm-only settings.
#[derive(Debug, Clone)]
pub struct Slurm {
    pub resources: Resources,
    /// `--time` as Slurm takes it (`HH:MM:SS`, `D-HH`...).
    pub time: Option<String>,
    pub partition: Option<String>,
    /// Where array tasks write their logs (created by `emit`, since Slurm does not).
    pub logs: PathBuf,
    /// The `harness` binary the tasks run.
    pub harness: PathBuf,
}

/// An `sbatch` script running the sweep at `sweep_path` (made absolute, since the
/// tasks may start elsewhere) as a job array of one task per shard.
pub fn slurm(sweep: &Sweep, units: usize, opts: &Slurm) -> Result<String> {
    let shards = opts.resources.check(units)?;
    for (flag, value) in [("--time", &opts.time), ("--partition", &opts.partition)] {
        if value
            .as_deref()
            .is_some_and(|v| v.is_empty() || v.contains(char::is_whitespace))
        {
            bail!("{flag} must be one word");
        }
    }
    let sweep_path = absolute(&sweep.path)?;
    let logs = absolute(&opts.logs)?;
    let r = &opts.resources;
    let mut array = format!("0-{}", shards - 1);
    if let Some(k) = r.max_parallel {
        array = format!("{array}%{k}");
    }
    let mut lines = vec![
        "#!/bin/bash".to_string(),
        format!(
            "# A Slurm job array for the harness sweep {}: {units} unit(s) in {shards} array task(s),",
            sweep_path.display()
        ),
        "# written by `harness sweep emit slurm`. Submit with sbatch; submitting it again runs".into(),
        "# only units whose results are missing or stale.".into(),
        format!("#SBATCH --job-name={}", job_name(&sweep.path)),
        format!("#SBATCH --array={array}"),
        format!("#SBATCH --cpus-per-task={}", r.cpus),
        format!("#SBATCH --mem={}G", r.mem_gib),
    ];
    if matches!(sweep.settings.device, DeviceSpec::Cuda(_)) {
        lines.push("#SBATCH --gres=gpu:1".into());
    }
    if let Some(t) = &opts.time {
        lines.push(format!("#SBATCH --time={t}"));
    }
    if let Some(p) = &opts.partition {
        lines.push(format!("#SBATCH --partition={p}"));
    }
    lines.push(format!(
        "#SBATCH --output={}",
        logs.join("%x-%A_%a.log").display()
    ));
    lines.extend([
        "set -euo pipefail".into(),
        "# The model's threads use the CPUs Slurm gave the task, not the whole node.".into(),
        format!(
            "export RAYON_NUM_THREADS=\"${{SLURM_CPUS_PER_TASK:-{}}}\"",
            r.cpus
        ),
        // The count is written here rather than read from SLURM_ARRAY_TASK_COUNT, so
        // that resubmitting a few indices (`sbatch --array=3,7`) keeps each unit's shard.
        format!(
            "exec {} sweep run {} --shards {shards}",
            shell_quote(&absolute(&opts.harness)?.to_string_lossy()),
            shell_quote(&sweep_path.to_string_lossy())
        ),
    ]);
    Ok(lines.join("\n") + "\n")
}

/// Kubernetes-only settings.
#[derive(Debug, Clone)]
pub struct Kubernetes {
    pub resources: Resources,
    /// The container image holding `harness` (and its assets).
    pub image: String,
    /// The PersistentVolumeClaim holding the sweep file, its tasks and its results.
    pub claim: String,
    /// Where the claim is mounted; the sweep file's path is read from there.
    pub mount: String,
}

/// An Indexed Job running the sweep at `sweep.path` (relative to the volume's mount
/// point) with one completion index per shard.
pub fn kubernetes(sweep: &Sweep, units: usize, opts: &Kubernetes) -> Result<String> {
    let shards = opts.resources.check(units)?;
    if opts.image.trim().is_empty() {
        bail!("--image is empty; give the container image that holds harness");
    }
    if !opts.mount.starts_with('/') {
        bail!("--mount {}: give an absolute path", opts.mount);
    }
    let r = &opts.resources;
    let memory = format!("{}Gi", r.mem_gib);
    let mut limits = json!({ "memory": memory });
    if matches!(sweep.settings.device, DeviceSpec::Cuda(_)) {
        limits["nvidia.com/gpu"] = json!(1);
    }
    let manifest = json!({
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": { "name": job_name(&sweep.path) },
        "spec": {
            "completionMode": "Indexed",
            "completions": shards,
            "parallelism": r.max_parallel.unwrap_or(shards).min(shards),
            // A failed unit fails its pod; the others go on, and a rerun of the
            // Job skips what is complete.
            "backoffLimit": shards,
            "template": {
                "spec": {
                    "restartPolicy": "Never",
                    "containers": [{
                        "name": "harness",
                        "image": opts.image,
                        "workingDir": opts.mount,
                        "command": [
                            "harness", "sweep", "run",
                            sweep.path.to_string_lossy(),
                            "--shards", shards.to_string(),
                        ],
                        "env": [{ "name": "RAYON_NUM_THREADS", "value": r.cpus.to_string() }],
                        "resources": {
                            "requests": { "cpu": r.cpus.to_string(), "memory": memory },
                            "limits": limits,
                        },
                        "volumeMounts": [{ "name": "results", "mountPath": opts.mount }],
                    }],
                    "volumes": [{
                        "name": "results",
                        "persistentVolumeClaim": { "claimName": opts.claim },
                    }],
                },
            },
        },
    });
    Ok(serde_json::to_string_pretty(&manifest).context("serialising the manifest")? + "\n")
}

/// `harness-sweep-<file stem>`, lowercase letters, digits and `-` as Kubernetes
/// names need (and Slurm accepts).
fn job_name(path: &Path) -> String {
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().to_lowercase())
        .unwrap_or_default();
    let stem: String = stem
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    let name = format!("harness-sweep-{}", stem.trim_matches('-'));
    name.trim_end_matches('-').chars().take(63).collect()
}

fn absolute(path: &Path) -> Result<PathBuf> {
    std::path::absolute(path).with_context(|| format!("cannot make {} absolute", path.display()))
}

/// `s` as one word for the shell.
fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}
