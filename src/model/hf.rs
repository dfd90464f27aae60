//! Hugging Face model directories: `config.json`, `*.safetensors`, `tokenizer.json`.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use candle_core::safetensors::MmapedSafetensors;
use candle_nn::VarBuilder;
use serde::de::DeserializeOwned;

use super::dtype::Placement;
use super::reads::{Reads, Recording};

/// A local directory holding a model in Hugging Face's layout.
pub struct HfDir {
    pub path: PathBuf,
    config: serde_json::Value,
    /// The tensors the model's builder read.
    reads: Reads,
    /// The type and device [`HfDir::var_builder`] serves tensors in.
    placement: Placement,
}

impl HfDir {
    /// Opens `path` and reads its `config.json`.
    pub fn open(path: &Path) -> Result<Self> {
        let config_path = path.join("config.json");
        let text = std::fs::read_to_string(&config_path)
            .with_context(|| format!("cannot read {}", config_path.display()))?;
        let config = serde_json::from_str(&text)
            .with_context(|| format!("{} is not valid JSON", config_path.display()))?;
        Ok(Self {
            path: path.to_path_buf(),
            config,
            reads: Reads::default(),
            placement: Placement::default(),
        })
    }

    /// Serves the weights in the placement's type, read straight into its device's
    /// memory (a bf16 checkpoint read as bf16 is never widened).
    pub fn placed(mut self, placement: Placement) -> Self {
        self.placement = placement;
        self
    }

    /// `config.json` in the directory.
    pub fn config_path(&self) -> PathBuf {
        self.path.join("config.json")
    }

    /// The configuration's `model_type`, which names the architecture.
    pub fn model_type(&self) -> Result<String> {
        match self.config.get("model_type") {
            Some(serde_json::Value::String(s)) => Ok(s.clone()),
            _ => bail!("{} has no \"model_type\"", self.config_path().display()),
        }
    }

    /// The configuration parsed into an architecture's own config struct.
    pub fn config<T: DeserializeOwned>(&self) -> Result<T> {
        serde_json::from_value(self.config.clone())
            .map_err(|e| anyhow!("{}: {e}", self.config_path().display()))
    }

    /// The weight files: `model.safetensors`, or the shards an index lists.
    pub fn weight_files(&self) -> Result<Vec<PathBuf>> {
        let single = self.path.join("model.safetensors");
        if single.is_file() {
            return Ok(vec![single]);
        }
        let index = self.path.join("model.safetensors.index.json");
        if index.is_file() {
            let text = std::fs::read_to_string(&index)
                .with_context(|| format!("cannot read {}", index.display()))?;
            let json: serde_json::Value = serde_json::from_str(&text)
                .with_context(|| format!("{} is not valid JSON", index.display()))?;
            let map = json
                .get("weight_map")
                .and_then(|m| m.as_object())
                .ok_or_else(|| anyhow!("{} has no weight_map", index.display()))?;
            let mut files: Vec<PathBuf> = map
                .values()
                .filter_map(|v| v.as_str())
                .map(|f| self.path.join(f))
                .collect();
            files.sort();
            files.dedup();
            return Ok(files);
        }
        bail!(
            "{} has no model.safetensors or model.safetensors.index.json",
            self.path.display()
        )
    }

    /// Weights as f32, read from memory-mapped safetensors files on demand; the
    /// names read are recorded for [`HfDir::unread`].
    pub fn var_builder(&self) -> Result<VarBuilder<'static>> {
        let files = self.weight_files()?;
        for f in &files {
            if !f.is_file() {
                bail!("weight file {} is missing", f.display());
            }
        }
        // SAFETY: the files are only read; the mapping lives as long as the builder.
        let tensors = unsafe { MmapedSafetensors::multi(&files) }.map_err(|e| {
            anyhow!(
                "cannot read the weights in {} (truncated or corrupt safetensors?): {e}",
                self.path.display()
            )
        })?;
        let backend = Recording {
            inner: tensors,
            reads: self.reads.clone(),
        };
        Ok(self.placement.var_builder(Box::new(backend)))
    }

    /// The tensors of the weight files that no builder has read, sorted.
    pub fn unread(&self) -> Result<Vec<String>> {
        let names = self.tensor_dtypes()?.into_iter().map(|(name, _)| name);
        Ok(self.reads.unread(names))
    }

    /// Every tensor's name and dtype (as the header spells it, e.g. `BF16`), file by
    /// file, from the headers alone.
    pub fn tensor_dtypes(&self) -> Result<Vec<(String, String)>> {
        self.tensors(|view| format!("{:?}", view.dtype()))
    }

    /// Every tensor's name and shape, file by file, from the headers alone.
    pub fn tensor_shapes(&self) -> Result<Vec<(String, Vec<usize>)>> {
        self.tensors(|view| view.shape().to_vec())
    }

    /// `what` of every tensor's header entry, with its name.
    fn tensors<T>(
        &self,
        what: impl Fn(&safetensors::tensor::TensorView) -> T,
    ) -> Result<Vec<(String, T)>> {
        let mut tensors = Vec::new();
        for file in self.weight_files()? {
            // SAFETY: the file is only read, and only its header, while the mapping lives.
            let mapped = unsafe { MmapedSafetensors::new(&file) }.map_err(|e| {
                // The error names the file itself; once is enough.
                let e = match e {
                    candle_core::Error::WithPath { inner, .. } => *inner,
                    e => e,
                };
                anyhow!("{} is not a valid safetensors file: {e}", file.display())
            })?;
            tensors.extend(mapped.tensors().into_iter().map(|(name, view)| {
                let value = what(&view);
                (name, value)
            }));
        }
        Ok(tensors)
    }

    /// `tokenizer.json` in the directory, whether or not it exists.
    pub fn tokenizer_path(&self) -> PathBuf {
        self.path.join("tokenizer.json")
    }

    /// `tokenizer_config.json`, when the directory has one.
    pub fn tokenizer_config_path(&self) -> Option<PathBuf> {
        let p = self.path.join("tokenizer_config.json");
        p.is_file().then_some(p)
    }
}

#[cfg(test)]
mod tests {
    use super::HfDir;
    use candle_core::{DType, Device, Tensor};
    use std::collections::HashMap;

    #[test]
    fn tensor_dtypes_come_from_the_header_and_errors_name_the_file_once() {
        let dir = std::env::temp_dir().join(format!("harness-hf-dtypes-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("config.json"), "{}").unwrap();
        let file = dir.join("model.safetensors");
        let tensors = HashMap::from([
            ("a", Tensor::zeros(2, DType::BF16, &Device::Cpu).unwrap()),
            ("b", Tensor::zeros(3, DType::F32, &Device::Cpu).unwrap()),
        ]);
        candle_core::safetensors::save(&tensors, &file).unwrap();
        let hf = HfDir::open(&dir).unwrap();
        let mut dtypes = hf.tensor_dtypes().unwrap();
        dtypes.sort();
        let expected = [("a", "BF16"), ("b", "F32")].map(|(n, d)| (n.to_owned(), d.to_owned()));
        assert_eq!(dtypes, expected);

        std::fs::write(&file, b"not a safetensors file").unwrap();
        let err = format!("{:#}", hf.tensor_dtypes().unwrap_err());
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(err.contains("is not a valid safetensors file"), "{err}");
        assert_eq!(
            err.matches(&*file.display().to_string()).count(),
            1,
            "{err}"
        );
        assert!(!err.contains('\n'), "one line: {err}");
    }
}
