//! `harness inspect`: a model's architecture and shapes, as a table or JSON, and
//! (in the table) the memory a run with the default batches needs in f32 and bf16
//! and the matrix-product kernel this CPU runs for each weight type.

use anyhow::Result;
use candle_core::DType;

use crate::commands::load_model;
use crate::model::capture::BatchPlan;
use crate::model::dtype::{DeviceSpec, Dtype, Engine};
use crate::model::kernels::gemm::Kernel;
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
    let kernels = [
        ("f32", DType::F32),
        ("bf16", DType::BF16),
        ("f16", DType::F16),
    ]
    .map(|(name, dtype)| Ok(format!("{name} {}", Kernel::detect(dtype)?)))
    .into_iter()
    .collect::<Result<Vec<_>>>()?;
    println!("{:<18} {}", "matrix_kernels", kernels.join(", "));
    Ok(())
}
