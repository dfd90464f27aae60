//! `harness sweep plan|run|emit`: a sweep file's units, running a shard of them, and
//! the scheduler's job that runs them all. Here rather than in `commands/`, whose
//! eval and analyze drivers the units run.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use super::emit;
use super::run::{run_shard, select_shard, Shard};
use super::Sweep;
use crate::io::output::write_bytes_atomic;

/// `harness sweep plan`: one line per unit, in the order shards take them, and the
/// files each writes.
pub fn plan(path: &Path) -> Result<()> {
    let sweep = Sweep::load(path)?;
    let units = sweep.plan()?;
    println!(
        "{}: {} unit(s) x {} task(s) ({}){}; results in {}",
        path.display(),
        units.len(),
        sweep.tasks.len(),
        sweep.task_names.join(", "),
        if sweep.analyze.is_some() {
            " + analyze"
        } else {
            ""
        },
        sweep.results.display()
    );
    for unit in &units {
        println!("{:>4}  {}  (--model {})", unit.index, unit.name, unit.model);
        for output in unit.outputs.iter().chain(&unit.analysis) {
            println!("        {}", output.display());
        }
    }
    Ok(())
}

/// `harness sweep run`: the shard's units that are not complete; an error naming the
/// failed units when any failed.
pub fn run(path: &Path, shard: Option<Shard>, shards: Option<usize>, quiet: bool) -> Result<()> {
    let sweep = Sweep::load(path)?;
    let units = sweep.plan()?;
    let shard = select_shard(shard, shards, units.len(), |v| std::env::var(v).ok())?;
    let outcome = run_shard(&sweep, &units, shard, quiet);
    println!(
        "shard {}/{}: {} ran, {} complete before, {} failed",
        shard.index,
        shard.count,
        outcome.ran.len(),
        outcome.skipped.len(),
        outcome.failed.len()
    );
    if !outcome.failed.is_empty() {
        let failed: Vec<String> = outcome
            .failed
            .iter()
            .map(|(i, e)| format!("unit {i} ({}): {e}", units[*i].name))
            .collect();
        bail!(
            "{} of the shard's units failed: {}",
            outcome.failed.len(),
            failed.join("; ")
        );
    }
    Ok(())
}

/// Which scheduler `emit` writes for.
#[derive(Debug, Clone)]
pub enum Target {
    Slurm(emit::Slurm),
    Kubernetes(emit::Kubernetes),
}

/// `harness sweep emit`: the job file for `sweep`, to `out` or standard output.
pub fn emit(sweep: &Sweep, target: Target, out: Option<PathBuf>) -> Result<()> {
    let units = sweep.plan()?.len();
    let text = match &target {
        Target::Slurm(opts) => {
            let text = emit::slurm(sweep, units, opts)?;
            // Slurm does not create the log directory, and a task whose log cannot be
            // opened fails without a word.
            std::fs::create_dir_all(&opts.logs)
                .with_context(|| format!("cannot create {}", opts.logs.display()))?;
            text
        }
        Target::Kubernetes(opts) => emit::kubernetes(sweep, units, opts)?,
    };
    match out {
        Some(out) => {
            write_bytes_atomic(&out, text.as_bytes())?;
            eprintln!("wrote {} ({units} unit(s))", out.display());
        }
        None => print!("{text}"),
    }
    Ok(())
}
