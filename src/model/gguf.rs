//! GGUF files: metadata access and weights dequantized to f32 on demand, under
//! Hugging Face tensor names so architecture files load both formats the same way.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::{anyhow, bail, Context, Result};
use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::VarBuilder;

use super::reads::Reads;

/// An open GGUF file.
pub struct GgufFile {
    pub path: PathBuf,
    pub content: Content,
    reader: Mutex<BufReader<File>>,
    /// GGUF names of the tensors the model's builder read.
    reads: Reads,
}

/// How one family names its tensors in GGUF (`blk.N.<gguf>`) and in Hugging Face
/// checkpoints (`model.layers.N.<hf>`); top-level names map whole.
pub struct GgufNames {
    pub top: &'static [(&'static str, &'static str)],
    pub layer: &'static [(&'static str, &'static str)],
}

impl GgufFile {
    pub fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
        let mut reader = BufReader::new(file);
        let content = Content::read(&mut reader).map_err(|e| {
            anyhow!(
                "{} is not a readable GGUF file (truncated, corrupt or an unsupported quantization type): {e}",
                path.display()
            )
        })?;
        Ok(Self {
            path: path.to_path_buf(),
            content,
            reader: Mutex::new(reader),
            reads: Reads::default(),
        })
    }

    /// `general.architecture`, or "" when absent.
    pub fn architecture(&self) -> &str {
        match self.content.metadata.get("general.architecture") {
            Some(Value::String(s)) => s,
            _ => "",
        }
    }

    fn value(&self, key: &str) -> Result<&Value> {
        self.content
            .metadata
            .get(key)
            .ok_or_else(|| anyhow!("{} has no metadata key '{key}'", self.path.display()))
    }

    /// An integer under `<architecture>.<key>`.
    pub fn arch_usize(&self, key: &str) -> Result<usize> {
        let full = format!("{}.{key}", self.architecture());
        let v = self.value(&full)?;
        let n = match v {
            Value::U8(x) => *x as u64,
            Value::U16(x) => *x as u64,
            Value::U32(x) => *x as u64,
            Value::U64(x) => *x,
            Value::I32(x) if *x >= 0 => *x as u64,
            Value::I64(x) if *x >= 0 => *x as u64,
            other => bail!("metadata '{full}' should be a non-negative integer, found {other:?}"),
        };
        Ok(n as usize)
    }

    /// A size under `<architecture>.<key>`, refused when 0: shapes are computed
    /// from it (a zero head count would divide by zero).
    pub fn arch_size(&self, key: &str) -> Result<usize> {
        match self.arch_usize(key)? {
            0 => bail!(
                "{}: metadata '{}.{key}' is 0; it must be at least 1",
                self.path.display(),
                self.architecture()
            ),
            n => Ok(n),
        }
    }

    pub fn arch_size_or(&self, key: &str, default: usize) -> Result<usize> {
        if self.has_arch_key(key) {
            self.arch_size(key)
        } else {
            Ok(default)
        }
    }

    /// A float under `<architecture>.<key>`.
    pub fn arch_f64(&self, key: &str) -> Result<f64> {
        let full = format!("{}.{key}", self.architecture());
        match self.value(&full)? {
            Value::F32(x) => Ok(*x as f64),
            Value::F64(x) => Ok(*x),
            other => bail!("metadata '{full}' should be a float, found {other:?}"),
        }
    }

    pub fn arch_f64_or(&self, key: &str, default: f64) -> Result<f64> {
        if self.has_arch_key(key) {
            self.arch_f64(key)
        } else {
            Ok(default)
        }
    }

    pub fn has_arch_key(&self, key: &str) -> bool {
        let full = format!("{}.{key}", self.architecture());
        self.content.metadata.contains_key(&full)
    }

    pub fn has_tensor(&self, gguf_name: &str) -> bool {
        self.content.tensor_infos.contains_key(gguf_name)
    }

    /// The number of tokens in the vocabulary, from the tokenizer when the
    /// architecture does not state it.
    pub fn vocab_size(&self) -> Result<usize> {
        if self.has_arch_key("vocab_size") {
            return self.arch_usize("vocab_size");
        }
        match self.value("tokenizer.ggml.tokens")? {
            Value::Array(tokens) => Ok(tokens.len()),
            _ => bail!("metadata 'tokenizer.ggml.tokens' is not an array"),
        }
    }

    /// Tensor counts per storage type, e.g. `{"Q4_1": 210, "F32": 61}`.
    pub fn weight_types(&self) -> BTreeMap<String, usize> {
        let mut counts = BTreeMap::new();
        for info in self.content.tensor_infos.values() {
            *counts.entry(format!("{:?}", info.ggml_dtype)).or_insert(0) += 1;
        }
        counts
    }

    /// A builder that serves the file's tensors under Hugging Face names, dequantized
    /// to f32 when asked for, so the whole model never sits in memory twice.
    pub fn var_builder(&self, names: &'static GgufNames) -> VarBuilder<'_> {
        VarBuilder::from_backend(
            Box::new(GgufBackend { file: self, names }),
            DType::F32,
            Device::Cpu,
        )
    }

    /// The file's tensors that no builder has read, sorted.
    pub fn unread(&self) -> Vec<String> {
        self.reads.unread(self.content.tensor_infos.keys().cloned())
    }

    fn read_f32(&self, gguf_name: &str) -> Result<Tensor> {
        self.reads.mark(gguf_name);
        let mut reader = self
            .reader
            .lock()
            .map_err(|_| anyhow!("GGUF reader poisoned"))?;
        let q = self
            .content
            .tensor(&mut *reader, gguf_name, &Device::Cpu)
            .with_context(|| format!("reading tensor {gguf_name} from {}", self.path.display()))?;
        drop(reader);
        q.dequantize(&Device::Cpu)
            .with_context(|| format!("dequantizing tensor {gguf_name}"))
    }
}

impl GgufNames {
    /// Translates a Hugging Face name (`model.layers.3.self_attn.q_proj.weight`) into
    /// its GGUF name (`blk.3.attn_q.weight`).
    pub fn to_gguf(&self, hf: &str) -> Option<String> {
        let (stem, suffix) = hf.rsplit_once('.')?;
        if let Some(rest) = stem.strip_prefix("model.layers.") {
            let (layer, part) = rest.split_once('.')?;
            let gguf = self.layer.iter().find(|(_, h)| *h == part)?.0;
            return Some(format!("blk.{layer}.{gguf}.{suffix}"));
        }
        let gguf = self.top.iter().find(|(_, h)| *h == stem)?.0;
        Some(format!("{gguf}.{suffix}"))
    }
}

struct GgufBackend<'a> {
    file: &'a GgufFile,
    names: &'static GgufNames,
}

impl GgufBackend<'_> {
    fn gguf_name(&self, name: &str) -> candle_core::Result<String> {
        self.names.to_gguf(name).ok_or_else(|| {
            candle_core::Error::Msg(format!("no GGUF tensor name is known for {name}"))
        })
    }
}

impl SimpleBackend for GgufBackend<'_> {
    fn get(
        &self,
        s: Shape,
        name: &str,
        _: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        let t = self.get_unchecked(name, dtype, dev)?;
        if t.shape() != &s {
            return Err(candle_core::Error::Msg(format!(
                "the metadata and the weights disagree: {} ({name}) has shape {:?}, expected {:?}",
                self.gguf_name(name)?,
                t.dims(),
                s.dims()
            )));
        }
        Ok(t)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, _: &Device) -> candle_core::Result<Tensor> {
        let gguf = self.gguf_name(name)?;
        if !self.file.has_tensor(&gguf) {
            return Err(candle_core::Error::Msg(format!(
                "{} has no tensor {gguf} ({name})",
                self.file.path.display()
            )));
        }
        self.file
            .read_f32(&gguf)
            .and_then(|t| Ok(t.to_dtype(dtype)?))
            .map_err(|e| candle_core::Error::Msg(format!("{e:#}")))
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.names
            .to_gguf(name)
            .is_some_and(|g| self.file.has_tensor(&g))
    }
}
