//! The commands' drivers: what `harness inspect`, `embed`, `eval`, `analyze` and
//! `report` do between parsed arguments and written results (`sweep`'s, which runs
//! these, is in the `sweep` folder).

pub mod analyze;
pub mod embed;
pub mod eval;
pub mod inspect;
pub mod report;

use anyhow::Result;

use crate::io::warnings::warn;
use crate::model::dtype::Engine;
use crate::model::memory::{self, Workload};
use crate::model::source::{self, LoadedModel};
use analyze::Ablate;

/// Loads a model for `engine`, passing on what the loader has to say about its
/// checkpoint. A device this build cannot run on fails before anything is read.
pub fn load_model(spec: &str, engine: Engine) -> Result<LoadedModel> {
    loaded(source::load_on(spec, engine)?)
}

/// [`load_model`] for a command that will run `work` on the model: a run whose
/// estimated memory will not fit fails, with the figures, before any weight is read.
pub fn load_to_run(spec: &str, engine: Engine, work: &Workload) -> Result<LoadedModel> {
    engine.device.check_supported()?;
    let source = source::resolve(spec)?;
    memory::check_source(&source, engine.dtype, engine.device, work)?;
    loaded(source::load_source(source, engine)?)
}

/// `model` filed under `name` (`--name`) instead of its own: checkpoints of one model
/// that would share a name (directories `step1000/`, `step2000/`) stay apart.
pub fn renamed(mut model: LoadedModel, name: Option<String>) -> Result<LoadedModel> {
    if let Some(name) = name {
        if name.trim().is_empty() {
            anyhow::bail!("--name is empty; give the name results are filed under");
        }
        model.source.name = name;
    }
    Ok(model)
}

/// Passes on the loader's warnings.
fn loaded(loaded: LoadedModel) -> Result<LoadedModel> {
    for warning in &loaded.warnings {
        warn(warning);
    }
    Ok(loaded)
}

/// The warning `--truncate` owes when it cut texts; `what` says whose.
pub fn warn_truncated(what: &str, count: usize, model: &LoadedModel) {
    if count > 0 {
        warn(&format!(
            "{what}{count} text(s) were cut to the model's context of {} tokens",
            model.model.config.context_length
        ));
    }
}

/// `--ablate` as given; parsed by the drivers rather than by clap, so that a bad
/// value is one line like every error, in its place among the others.
pub fn parse_ablate(value: Option<&str>) -> Result<Option<Ablate>> {
    value.map(str::parse::<Ablate>).transpose()
}
