//! `harness inspect`: a model's architecture and shapes, as a table or JSON.

use anyhow::Result;

use crate::commands::load_model;

/// Prints the model's description: JSON when `json`, else a table.
pub fn run(model: &str, json: bool) -> Result<()> {
    let info = load_model(model)?.info();
    if json {
        println!("{}", serde_json::to_string_pretty(&info)?);
    } else {
        print!("{}", crate::report::inspect_table(&info));
    }
    Ok(())
}
