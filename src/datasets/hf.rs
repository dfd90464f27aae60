//! Hugging Face datasets through the dataset viewer's rows API, cached as JSON Lines
//! under `$HARNESS_HOME/data/hf/` so a dataset is fetched once.

use std::fmt::Write as _;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use percent_encoding::utf8_percent_encode;
use serde::Deserialize;

use crate::hub::{Hub, COMPONENT};
use crate::io::output::write_bytes_atomic;

/// Rows per request; the viewer serves at most 100.
const PAGE: usize = 100;

#[derive(Deserialize)]
struct RowsPage {
    rows: Vec<RowEntry>,
    num_rows_total: usize,
}

#[derive(Deserialize)]
struct RowEntry {
    row: serde_json::Map<String, serde_json::Value>,
}

/// The viewer's address: `HF_DATASETS_SERVER`, or the public one.
fn server() -> String {
    std::env::var("HF_DATASETS_SERVER")
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "https://datasets-server.huggingface.co".into())
        .trim_end_matches('/')
        .to_string()
}

/// The local JSONL file holding `repo`'s `config`/`split`, downloading it first if
/// it is not cached yet.
pub fn fetch_rows(repo: &str, config: &str, split: &str) -> Result<PathBuf> {
    if repo.split('/').count() > 2
        || [repo, config, split]
            .iter()
            .any(|s| s.is_empty() || s.contains(".."))
    {
        bail!("invalid Hugging Face dataset reference {repo} ({config}, {split})");
    }
    let path = super::hf_cache_dir()?
        .join(repo.replace('/', "--"))
        .join(config)
        .join(format!("{split}.jsonl"));
    if path.is_file() {
        return Ok(path);
    }
    let what = format!("Hugging Face dataset {repo} ({config}, {split})");
    let hub = Hub::from_env()?;
    let mut out = String::new();
    let mut offset = 0;
    loop {
        let url = format!(
            "{}/rows?dataset={}&config={}&split={}&offset={offset}&length={PAGE}",
            server(),
            utf8_percent_encode(repo, COMPONENT),
            utf8_percent_encode(config, COMPONENT),
            utf8_percent_encode(split, COMPONENT)
        );
        let page: RowsPage = hub
            .get_json(&url)
            .with_context(|| format!("cannot fetch {what}"))?;
        if page.rows.is_empty() && offset < page.num_rows_total {
            bail!("cannot fetch {what}: the server returned no rows at offset {offset}");
        }
        for entry in &page.rows {
            let _ = writeln!(out, "{}", serde_json::Value::Object(entry.row.clone()));
        }
        offset += page.rows.len();
        if offset >= page.num_rows_total || page.rows.is_empty() {
            break;
        }
    }
    if offset == 0 {
        bail!("{what} has no rows");
    }
    write_bytes_atomic(&path, out.as_bytes())?;
    Ok(path)
}
