//! `harness inspect`: a model's architecture and shapes, as a table or JSON, and (in
//! the table) the matrix-product kernel this CPU runs for each weight type.

use anyhow::Result;
use candle_core::DType;

use crate::commands::load_model;
use crate::model::dtype::Engine;
use crate::model::kernels::gemm::Kernel;

/// Prints the model's description: JSON when `json`, else a table.
pub fn run(model: &str, json: bool) -> Result<()> {
    let info = load_model(model, Engine::default())?.info();
    if json {
        println!("{}", serde_json::to_string_pretty(&info)?);
    } else {
        print!("{}", crate::report::inspect_table(&info));
        let kernels = [
            ("f32", DType::F32),
            ("bf16", DType::BF16),
            ("f16", DType::F16),
        ]
        .map(|(name, dtype)| Ok(format!("{name} {}", Kernel::detect(dtype)?)))
        .into_iter()
        .collect::<Result<Vec<_>>>()?;
        println!("{:<18} {}", "matrix_kernels", kernels.join(", "));
    }
    Ok(())
}
