//! GGUF files: the one typed metadata reader (for the model's configuration and the
//! tokenizer rebuild alike) and weights dequantized to f32 on demand, under Hugging
//! Face tensor names so architecture files load both formats the same way.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::{anyhow, bail, Context, Result};
use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::VarBuilder;

use super::dtype::Placement;
use super::reads::Reads;
use super::ModelConfig;

/// An open GGUF file.
pub struct GgufFile {
    pub path: PathBuf,
    pub content: Content,
    reader: Mutex<BufReader<File>>,
    /// GGUF names of the tensors the model's builder read.
    reads: Reads,
    /// The type and device [`GgufFile::var_builder`] serves tensors in.
    placement: Placement,
}

/// How one family names its tensors in GGUF (`blk.N.<gguf>`) and in Hugging Face
/// checkpoints (`model.layers.N.<hf>`); top-level names map whole.
pub struct GgufNames {
    pub top: &'static [(&'static str, &'static str)],
    pub layer: &'static [(&'static str, &'static str)],
}

impl GgufFile {
    /// Opens `path` and reads its metadata and tensor index (not the weights).
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
            placement: Placement::default(),
        })
    }

    /// Serves the (dequantized) weights in the placement's type, read straight into its device's
    /// memory (a bf16 checkpoint read as bf16 is never widened).
    pub fn placed(mut self, placement: Placement) -> Self {
        self.placement = placement;
        self
    }

    /// The model's shape from the metadata keys every architecture uses; the
    /// architecture files add what is their own.
    pub fn model_config(&self) -> Result<ModelConfig> {
        let hidden = self.arch_size("embedding_length")?;
        let heads = self.arch_size("attention.head_count")?;
        Ok(ModelConfig {
            architecture: self.architecture().to_string(),
            num_layers: self.arch_size("block_count")?,
            hidden_size: hidden,
            num_heads: heads,
            num_kv_heads: self.arch_size_or("attention.head_count_kv", heads)?,
            head_dim: self.arch_size_or("attention.key_length", hidden / heads)?,
            intermediate_size: self.arch_size("feed_forward_length")?,
            vocab_size: self.vocab_size()?,
            context_length: self.arch_size("context_length")?,
        })
    }

    /// The file's metadata, typed.
    pub(crate) fn metadata(&self) -> Metadata<'_> {
        Metadata::new(&self.content.metadata)
    }

    /// `general.architecture`, or "" when absent or not a string.
    pub fn architecture(&self) -> &str {
        self.metadata()
            .string("general.architecture")
            .ok()
            .flatten()
            .unwrap_or("")
    }

    /// The value at `key`, read by `read`; its absence is an error naming the file.
    fn required<'a, T>(
        &'a self,
        key: &str,
        read: impl FnOnce(&Metadata<'a>, &str) -> Result<Option<T>>,
    ) -> Result<T> {
        read(&self.metadata(), key)?
            .ok_or_else(|| anyhow!("{} has no metadata key '{key}'", self.path.display()))
    }

    fn arch_key(&self, key: &str) -> String {
        format!("{}.{key}", self.architecture())
    }

    /// An integer under `<architecture>.<key>`.
    pub fn arch_usize(&self, key: &str) -> Result<usize> {
        self.required(&self.arch_key(key), Metadata::size)
    }

    /// A size under `<architecture>.<key>`, refused when 0: shapes are computed
    /// from it (a zero head count would divide by zero).
    pub fn arch_size(&self, key: &str) -> Result<usize> {
        match self.arch_usize(key)? {
            0 => bail!(
                "{}: metadata '{}' is 0; it must be at least 1",
                self.path.display(),
                self.arch_key(key)
            ),
            n => Ok(n),
        }
    }

    /// [`arch_size`](Self::arch_size), or `default` when the key is absent.
    pub fn arch_size_or(&self, key: &str, default: usize) -> Result<usize> {
        if self.has_arch_key(key) {
            self.arch_size(key)
        } else {
            Ok(default)
        }
    }

    /// A float under `<architecture>.<key>`.
    pub fn arch_f64(&self, key: &str) -> Result<f64> {
        self.required(&self.arch_key(key), Metadata::float)
    }

    /// [`arch_f64`](Self::arch_f64), or `default` when the key is absent.
    pub fn arch_f64_or(&self, key: &str, default: f64) -> Result<f64> {
        if self.has_arch_key(key) {
            self.arch_f64(key)
        } else {
            Ok(default)
        }
    }

    /// Whether the file has `<architecture>.<key>`.
    pub fn has_arch_key(&self, key: &str) -> bool {
        self.content.metadata.contains_key(&self.arch_key(key))
    }

    /// Whether the file has a tensor of this GGUF name.
    pub fn has_tensor(&self, gguf_name: &str) -> bool {
        self.content.tensor_infos.contains_key(gguf_name)
    }

    /// The number of tokens in the vocabulary, from the tokenizer when the
    /// architecture does not state it.
    pub fn vocab_size(&self) -> Result<usize> {
        if self.has_arch_key("vocab_size") {
            return self.arch_usize("vocab_size");
        }
        self.required("tokenizer.ggml.tokens", |m, key| {
            Ok(m.array(key)?.map(<[Value]>::len))
        })
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
    /// (to the file's dtype) when asked for, so the whole model never sits in memory twice.
    pub fn var_builder(&self, names: &'static GgufNames) -> VarBuilder<'_> {
        self.placement
            .var_builder(Box::new(GgufBackend { file: self, names }))
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

/// Typed access to GGUF metadata, where a key of the wrong type is an error, not an
/// absence: every `Ok(None)` means the key is missing.
#[derive(Clone, Copy)]
pub(crate) struct Metadata<'a>(&'a HashMap<String, Value>);

impl<'a> Metadata<'a> {
    pub(crate) fn new(metadata: &'a HashMap<String, Value>) -> Self {
        Self(metadata)
    }

    /// The value at `key` if present, read by `read`, which returns `None` when the
    /// value is not `what`.
    fn typed<T>(
        &self,
        key: &str,
        what: &str,
        read: impl FnOnce(&'a Value) -> Option<T>,
    ) -> Result<Option<T>> {
        self.0
            .get(key)
            .map(|v| {
                read(v).ok_or_else(|| anyhow!("GGUF {key} should be {what}, found {}", describe(v)))
            })
            .transpose()
    }

    pub(crate) fn string(&self, key: &str) -> Result<Option<&'a str>> {
        self.typed(key, "a string", |v| match v {
            Value::String(s) => Some(s.as_str()),
            _ => None,
        })
    }

    pub(crate) fn bool(&self, key: &str) -> Result<Option<bool>> {
        self.typed(key, "a bool", |v| match v {
            Value::Bool(b) => Some(*b),
            _ => None,
        })
    }

    pub(crate) fn token_id(&self, key: &str) -> Result<Option<u32>> {
        self.typed(key, "a token id", |v| {
            integer(v).and_then(|i| u32::try_from(i).ok())
        })
    }

    pub(crate) fn size(&self, key: &str) -> Result<Option<usize>> {
        self.typed(key, "a non-negative integer", |v| {
            integer(v).and_then(|i| usize::try_from(i).ok())
        })
    }

    pub(crate) fn float(&self, key: &str) -> Result<Option<f64>> {
        self.typed(key, "a float", float)
    }

    pub(crate) fn array(&self, key: &str) -> Result<Option<&'a [Value]>> {
        self.typed(key, "an array", |v| match v {
            Value::Array(items) => Some(items.as_slice()),
            _ => None,
        })
    }

    pub(crate) fn strings(&self, key: &str) -> Result<Option<Vec<&'a str>>> {
        self.typed_array(key, "string", |v| match v {
            Value::String(s) => Some(s.as_str()),
            _ => None,
        })
    }

    pub(crate) fn ints(&self, key: &str) -> Result<Option<Vec<i64>>> {
        self.typed_array(key, "integer", integer)
    }

    pub(crate) fn floats(&self, key: &str) -> Result<Option<Vec<f64>>> {
        self.typed_array(key, "float", float)
    }

    fn typed_array<T>(
        &self,
        key: &str,
        kind: &str,
        convert: impl Fn(&'a Value) -> Option<T>,
    ) -> Result<Option<Vec<T>>> {
        let Some(items) = self.array(key)? else {
            return Ok(None);
        };
        items
            .iter()
            .enumerate()
            .map(|(i, v)| {
                convert(v).ok_or_else(|| {
                    anyhow!("GGUF {key}[{i}] should be a {kind}, found {}", type_name(v))
                })
            })
            .collect::<Result<_>>()
            .map(Some)
    }
}

fn integer(value: &Value) -> Option<i64> {
    match *value {
        Value::U8(x) => Some(x.into()),
        Value::I8(x) => Some(x.into()),
        Value::U16(x) => Some(x.into()),
        Value::I16(x) => Some(x.into()),
        Value::U32(x) => Some(x.into()),
        Value::I32(x) => Some(x.into()),
        Value::U64(x) => i64::try_from(x).ok(),
        Value::I64(x) => Some(x),
        _ => None,
    }
}

fn float(value: &Value) -> Option<f64> {
    match *value {
        Value::F32(x) => Some(f64::from(x)),
        Value::F64(x) => Some(x),
        _ => None,
    }
}

fn type_name(value: &Value) -> &'static str {
    match value {
        Value::U8(_) => "u8",
        Value::I8(_) => "i8",
        Value::U16(_) => "u16",
        Value::I16(_) => "i16",
        Value::U32(_) => "u32",
        Value::I32(_) => "i32",
        Value::U64(_) => "u64",
        Value::I64(_) => "i64",
        Value::F32(_) => "f32",
        Value::F64(_) => "f64",
        Value::Bool(_) => "bool",
        Value::String(_) => "string",
        Value::Array(_) => "array",
    }
}

fn describe(value: &Value) -> String {
    match integer(value) {
        Some(i) => format!("{} {i}", type_name(value)),
        None => type_name(value).to_owned(),
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

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        let gguf = self.gguf_name(name)?;
        if !self.file.has_tensor(&gguf) {
            return Err(candle_core::Error::Msg(format!(
                "{} has no tensor {gguf} ({name})",
                self.file.path.display()
            )));
        }
        self.file
            .read_f32(&gguf)
            .and_then(|t| Ok(t.to_dtype(dtype)?.to_device(dev)?))
            .map_err(|e| candle_core::Error::Msg(format!("{e:#}")))
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.names
            .to_gguf(name)
            .is_some_and(|g| self.file.has_tensor(&g))
    }
}
