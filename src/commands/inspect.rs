//! `harness inspect`: a model's architecture and shapes, as a table or JSON.

use anyhow::Result;

use crate::commands::load_model;
use crate::model::dtype::Engine;

/// Prints the model's description: JSON when `json`, else a table.
pub fn run(model: &str, json: bool) -> Result<()> {
    let info = load_model(model, Engine::default())?.info();
    if json {
        println!("{}", serde_json::to_string_pretty(&info)?);
    } else {
        print!("{}", crate::report::inspect_table(&info));
    }
    Ok(())
}
