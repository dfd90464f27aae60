//! `harness inspect`: a model's architecture and shapes, as a table or JSON, and
//! (in the table) the memory a run with the default batches needs in f32 and bf16.

use anyhow::Result;

use crate::commands::load_model;
use crate::model::capture::BatchPlan;
use crate::model::dtype::{DeviceSpec, Dtype, Engine};
use crate::model::memory::{Footprint, Workload};

/// Prints the model's description: JSON when `json`, else a table.
pub fn run(model: &str, json: bool) -> Result<()> {
    let loaded = load_model(model, Engine::default())?;
    let info = loaded.info();
    if json {
        println!("{}", serde_json::to_string_pretty(&info)?);
        return Ok(());
    }
    print!("{}", crate::report::inspect_table(&info));
    let work = Workload::pass(BatchPlan::default());
    for dtype in [Dtype::F32, Dtype::Bf16] {
        let estimate =
            Footprint::read(&loaded.source, dtype)?.estimate(dtype, DeviceSpec::Cpu, &work);
        println!(
            "memory to run in {dtype} (default batches, before kept outputs): about {estimate}"
        );
    }
    Ok(())
}
