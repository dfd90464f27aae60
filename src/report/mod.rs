//! Reports: everything the harness shows a person, as text tables (and, for the
//! leaderboard, Markdown and HTML).

use std::fmt::Write;

use crate::loader::ModelInfo;

/// `harness inspect` as aligned `key  value` lines.
pub fn inspect_table(info: &ModelInfo) -> String {
    let types: Vec<String> = info
        .weight_types
        .iter()
        .map(|(t, n)| format!("{t} x{n}"))
        .collect();
    let bos = match info.bos_token_id {
        Some(id) => format!("{id} (added by default: {})", info.add_bos_token),
        None => "none".into(),
    };
    let rows = [
        ("name", info.name.clone()),
        ("architecture", info.architecture.clone()),
        ("num_layers", info.num_layers.to_string()),
        ("hidden_size", info.hidden_size.to_string()),
        ("num_heads", info.num_heads.to_string()),
        ("num_kv_heads", info.num_kv_heads.to_string()),
        ("head_dim", info.head_dim.to_string()),
        ("intermediate_size", info.intermediate_size.to_string()),
        ("vocab_size", info.vocab_size.to_string()),
        ("context_length", info.context_length.to_string()),
        ("bos_token_id", bos),
        ("format", format!("{:?}", info.format).to_lowercase()),
        ("source", info.source.clone()),
        ("weight_types", types.join(", ")),
    ];
    let mut out = String::new();
    for (k, v) in rows {
        let _ = writeln!(out, "{k:<18} {v}");
    }
    out
}
