//! Model loading: from `--model` (an alias, a `.gguf` file, a Hugging Face directory
//! or `hf:org/name[@revision]`) to a ready [`Transformer`] and its tokenizer.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use super::dtype::{DeviceSpec, Dtype, Engine, Placement};
use super::fingerprint::Snapshot;

use crate::hub::{Hub, HubRepo};
use crate::io::assets;
use crate::io::warnings::warn;
use crate::model::gguf;
use crate::model::hf;
use crate::model::tokenizer::TextTokenizer;
use crate::model::{self as models, ModelConfig, Transformer};

/// Where a model's weights are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    Gguf,
    Safetensors,
}

/// The format's name as result files write it.
impl std::fmt::Display for Format {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.pad(match self {
            Format::Gguf => "gguf",
            Format::Safetensors => "safetensors",
        })
    }
}

/// A `--model` argument, resolved to files on disk.
#[derive(Debug, Clone)]
pub struct ModelSource {
    /// A short name for outputs: the alias, the file stem or the hub id.
    pub name: String,
    /// The `.gguf` file or the model directory.
    pub path: PathBuf,
    pub format: Format,
    /// The registry's checksum of the weights (aliases), to warn when the file on
    /// disk is another one; never a cache key, which comes from the bytes loaded.
    registry_sha256: Option<String>,
}

/// A loaded model with its tokenizer.
pub struct LoadedModel {
    pub source: ModelSource,
    pub model: Transformer,
    pub tokenizer: TextTokenizer,
    /// Tensor counts per storage type.
    pub weight_types: BTreeMap<String, usize>,
    /// What the user should know about the checkpoint, one line each.
    pub warnings: Vec<String>,
    /// The files the weights came from, as they were while loading.
    files: Snapshot,
}

/// What `harness inspect` reports.
#[derive(Debug, Serialize, Deserialize)]
pub struct ModelInfo {
    pub name: String,
    /// Inline, so that the JSON lists the shape beside the name.
    #[serde(flatten)]
    pub config: ModelConfig,
    pub bos_token_id: Option<u32>,
    pub add_bos_token: bool,
    pub source: String,
    pub format: Format,
    pub weight_types: BTreeMap<String, usize>,
}

/// The name results of a `--model` argument are filed under, without reading or
/// downloading anything: the alias (an alternative alias gives the model's own), the
/// hub id with `--` for `/` and `@revision` unless the revision is `main` (so that
/// checkpoints of one model sit side by side), or the file or directory's stem.
pub fn output_name(spec: &str) -> Result<String> {
    if let Some(repo) = spec.strip_prefix("hf:") {
        return Ok(hub_name(&HubRepo::parse(repo)?));
    }
    if let Some(asset) = assets::find_model(spec)? {
        return Ok(asset.alias);
    }
    Ok(path_stem(Path::new(spec)).unwrap_or_else(|| spec.to_string()))
}

fn hub_name(repo: &HubRepo) -> String {
    let name = repo.repo_id.replace('/', "--");
    match repo.revision.as_str() {
        "main" => name,
        revision => format!("{name}@{revision}"),
    }
}

fn path_stem(path: &Path) -> Option<String> {
    path.file_stem()
        .or_else(|| path.file_name())
        .map(|s| s.to_string_lossy().into_owned())
}

/// Resolves a `--model` argument without loading anything.
pub fn resolve(spec: &str) -> Result<ModelSource> {
    if let Some(repo) = spec.strip_prefix("hf:") {
        let repo = HubRepo::parse(repo)?;
        let dir = Hub::from_env()?.download_model_dir(&repo)?;
        return Ok(ModelSource {
            name: hub_name(&repo),
            path: dir,
            format: Format::Safetensors,
            registry_sha256: None,
        });
    }
    if let Some(asset) = assets::find_model(spec)? {
        return Ok(ModelSource {
            name: asset.alias.clone(),
            path: asset.path()?,
            format: Format::Gguf,
            registry_sha256: Some(asset.sha256),
        });
    }
    let path = Path::new(spec);
    let stem = || path_stem(path).unwrap_or_else(|| spec.to_string());
    if path.is_dir() {
        if !path.join("config.json").is_file() {
            bail!("{spec} is a directory without config.json (expected a Hugging Face model directory)");
        }
        return Ok(ModelSource {
            name: stem(),
            path: path.to_path_buf(),
            format: Format::Safetensors,
            registry_sha256: None,
        });
    }
    if path.extension().is_some_and(|e| e == "gguf") {
        if !path.is_file() {
            bail!("model file {spec} does not exist");
        }
        return Ok(ModelSource {
            name: stem(),
            path: path.to_path_buf(),
            format: Format::Gguf,
            registry_sha256: None,
        });
    }
    let known: Vec<String> = assets::models()?
        .into_iter()
        .flat_map(|m| std::iter::once(m.alias).chain(m.aliases))
        .collect();
    bail!(
        "unknown model '{spec}': expected an alias ({}), a .gguf file, a Hugging Face model directory or hf:org/name[@revision]",
        known.join(", ")
    )
}

/// Resolves and loads a model with its tokenizer, in f32.
pub fn load(spec: &str) -> Result<LoadedModel> {
    load_as(spec, Dtype::F32)
}

/// Resolves and loads a model with its tokenizer, its weights held in `dtype`, on
/// the CPU.
pub fn load_as(spec: &str, dtype: Dtype) -> Result<LoadedModel> {
    load_on(
        spec,
        Engine {
            dtype,
            device: DeviceSpec::Cpu,
        },
    )
}

/// Resolves and loads a model with its tokenizer, its weights held in the engine's
/// type on its device.
pub fn load_on(spec: &str, engine: Engine) -> Result<LoadedModel> {
    load_source(resolve(spec)?, engine)
}

/// Loads a resolved model with its tokenizer, its weights held in the engine's type
/// on its device.
pub fn load_source(source: ModelSource, engine: Engine) -> Result<LoadedModel> {
    let device = engine.device.open()?;
    let files = Snapshot::take(source.files()?)?;
    let placement = Placement {
        dtype: engine.dtype,
        device,
    };
    let loaded = load_files(source, files, placement)?;
    // A file replaced while it was read would give weights no digest describes.
    loaded.files.check_unchanged()?;
    Ok(loaded)
}

fn load_files(source: ModelSource, files: Snapshot, placement: Placement) -> Result<LoadedModel> {
    match source.format {
        Format::Gguf => {
            let file = gguf::GgufFile::open(&source.path)?.placed(placement);
            let tokenizer = TextTokenizer::from_gguf(&file.content)
                .with_context(|| format!("building the tokenizer of {}", source.path.display()))?;
            let model = models::from_gguf(&file)
                .with_context(|| format!("loading {}", source.path.display()))?;
            let warnings = super::reads::check_unread(&source.path, file.unread())?;
            Ok(LoadedModel {
                weight_types: file.weight_types(),
                warnings,
                source,
                model,
                tokenizer,
                files,
            })
        }
        Format::Safetensors => {
            let dir = hf::HfDir::open(&source.path)?.placed(placement);
            let tokenizer_path = dir.tokenizer_path();
            if !tokenizer_path.is_file() {
                bail!("{} has no tokenizer.json", source.path.display());
            }
            let tokenizer =
                TextTokenizer::from_file(&tokenizer_path, dir.tokenizer_config_path().as_deref())?;
            let model = models::from_hf(&dir)?;
            let warnings = super::reads::check_unread(&source.path, dir.unread()?)?;
            let mut weight_types = BTreeMap::new();
            for (_, dtype) in dir.tensor_dtypes()? {
                *weight_types.entry(dtype).or_insert(0) += 1;
            }
            Ok(LoadedModel {
                source,
                model,
                tokenizer,
                weight_types,
                warnings,
                files,
            })
        }
    }
}

impl LoadedModel {
    /// What `harness inspect` reports about this model.
    pub fn info(&self) -> ModelInfo {
        ModelInfo {
            name: self.source.name.clone(),
            config: self.model.config.clone(),
            bos_token_id: self.tokenizer.bos_id(),
            add_bos_token: self.tokenizer.add_bos_default(),
            source: self.source.path.display().to_string(),
            format: self.source.format,
            weight_types: self.weight_types.clone(),
        }
    }

    /// A digest of the bytes this model was loaded from, for cache keys and results;
    /// computed once per run, and an error when a file has changed since loading
    /// and was not hashed before, since its digest would describe other bytes.
    /// `remember`: look up and store file digests in the cache (not with `--no-cache`).
    pub fn fingerprint(&self, remember: bool) -> Result<String> {
        let digest = self.files.digest(remember)?;
        if let Some(expected) = self.source.registry_sha256.as_deref() {
            if expected != digest {
                warn(&format!(
                    "{} is not the file the registry names for '{}' (sha256 {digest}, expected {expected}); using it as it is",
                    self.source.path.display(),
                    self.source.name
                ));
            }
        }
        Ok(digest)
    }
}

impl ModelSource {
    /// The digest [`LoadedModel::fingerprint`] gives once this model is loaded,
    /// computed (or remembered) from its files without loading it.
    pub fn fingerprint(&self) -> Result<String> {
        Snapshot::take(self.files()?)?.digest(true)
    }

    /// Every file whose bytes shape the loaded model.
    fn files(&self) -> Result<Vec<PathBuf>> {
        if self.format == Format::Gguf {
            return Ok(vec![self.path.clone()]);
        }
        let dir = hf::HfDir::open(&self.path)?;
        let mut files = dir.weight_files()?;
        files.push(dir.config_path());
        // Loading says, in its own words, when the tokenizer is missing.
        files.extend(Some(dir.tokenizer_path()).filter(|p| p.is_file()));
        files.extend(dir.tokenizer_config_path());
        Ok(files)
    }
}
