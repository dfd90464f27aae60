//! The offline assets: where they live (`$HARNESS_HOME`) and the manifest that
//! `scripts/fetch_assets.py` fetches from.

use std::path::PathBuf;

use anyhow::{anyhow, bail, Context, Result};
use serde::Deserialize;

/// The manifest, compiled in so the binary resolves aliases from any directory.
const MANIFEST: &str = include_str!("../../assets.toml");

#[derive(Debug, Deserialize)]
struct Manifest {
    #[serde(default)]
    model: Vec<ModelAsset>,
}

/// A model the project ships as a registry-packaged asset.
#[derive(Debug, Clone, Deserialize)]
pub struct ModelAsset {
    pub alias: String,
    #[serde(default)]
    pub aliases: Vec<String>,
    pub description: String,
    /// Path under `$HARNESS_HOME`.
    pub file: String,
    pub sha256: String,
}

/// `$HARNESS_HOME`, default `~/.cache/harness`.
pub fn harness_home() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os("HARNESS_HOME") {
        return Ok(PathBuf::from(dir));
    }
    let home =
        std::env::var_os("HOME").ok_or_else(|| anyhow!("neither HARNESS_HOME nor HOME is set"))?;
    Ok(PathBuf::from(home).join(".cache").join("harness"))
}

/// Every model in the manifest.
pub fn models() -> Result<Vec<ModelAsset>> {
    let m: Manifest = toml::from_str(MANIFEST).context("the built-in assets.toml is invalid")?;
    Ok(m.model)
}

/// The model an alias names, if any.
pub fn find_model(alias: &str) -> Result<Option<ModelAsset>> {
    Ok(models()?
        .into_iter()
        .find(|m| m.alias == alias || m.aliases.iter().any(|a| a == alias)))
}

impl ModelAsset {
    /// The fetched file; an error telling how to fetch it when it is missing.
    pub fn path(&self) -> Result<PathBuf> {
        let path = harness_home()?.join(&self.file);
        if !path.is_file() {
            bail!(
                "model '{}' is not fetched ({} is missing); run scripts/fetch_assets.py",
                self.alias,
                path.display()
            );
        }
        Ok(path)
    }
}

/// `$HARNESS_CACHE`, by default `$HARNESS_HOME/cache`: what can be recomputed.
pub fn cache_root() -> Result<PathBuf> {
    Ok(match std::env::var_os("HARNESS_CACHE") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => harness_home()?.join("cache"),
    })
}
