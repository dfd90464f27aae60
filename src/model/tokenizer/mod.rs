//! Text to token ids for every model harness loads, identical to the Python reference.
//!
//! A Hugging Face model directory ships a `tokenizer.json`, which the `tokenizers` crate reads
//! as is. A GGUF file ships only metadata (llama.cpp's vocabulary, merges and token kinds), so
//! [`TextTokenizer::from_gguf`] rebuilds the tokenizer the way transformers does when it loads
//! a GGUF (`transformers/integrations/gguf/gguf_tokenizer_mapping.py`). The ids must be the
//! ones the model saw in training, and transformers is the reference they are checked against
//! (`scripts/reference/tokenizer_golden.py` writes the expected ids, `tests/tokenizer.rs`
//! compares).
//!
//! Whether a sequence starts with the beginning-of-sequence token is decided here, not by the
//! tokenizer's post-processor, so that it can be overridden per run with [`BosPolicy`].

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::path::Path;
use std::str::FromStr;

use anyhow::{anyhow, bail, Context, Result};
use candle_core::quantized::gguf_file::{Content, Value};
use tokenizers::decoders::byte_fallback::ByteFallback;
use tokenizers::decoders::fuse::Fuse;
use tokenizers::decoders::sequence::Sequence as DecoderSequence;
use tokenizers::decoders::strip::Strip;
use tokenizers::models::bpe::{Merges, Vocab, BPE};
use tokenizers::normalizers::Replace;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::metaspace::{Metaspace, PrependScheme};
use tokenizers::pre_tokenizers::sequence::Sequence as PreTokenizerSequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{
    AddedToken, DecoderWrapper, PostProcessorWrapper, PreTokenizerWrapper, SplitDelimiterBehavior,
    Tokenizer,
};

/// Whether [`TextTokenizer::encode`] puts the beginning-of-sequence (BOS) token first.
///
/// Parses from `auto`, `always` or `never` (any case), so it can be a command-line option.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum BosPolicy {
    /// Do what the model does by default ([`TextTokenizer::add_bos_default`]).
    #[default]
    Auto,
    /// Always prepend the BOS token; an error for a model that has none.
    Always,
    /// Never prepend it.
    Never,
}

impl FromStr for BosPolicy {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Self> {
        <Self as clap::ValueEnum>::from_str(s, true)
            .map_err(|_| anyhow!("invalid BOS policy {s:?}: expected auto, always or never"))
    }
}

impl fmt::Display for BosPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Auto => "auto",
            Self::Always => "always",
            Self::Never => "never",
        })
    }
}

/// A model's tokenizer together with its special token ids and BOS default.
#[derive(Clone)]
pub struct TextTokenizer {
    inner: Tokenizer,
    bos: Option<u32>,
    eos: Option<u32>,
    pad: Option<u32>,
    add_bos: bool,
}

impl fmt::Debug for TextTokenizer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The wrapped tokenizer's own Debug prints the whole vocabulary.
        f.debug_struct("TextTokenizer")
            .field("vocab_size", &self.vocab_size())
            .field("bos", &self.bos)
            .field("eos", &self.eos)
            .field("pad", &self.pad)
            .field("add_bos", &self.add_bos)
            .finish()
    }
}

impl TextTokenizer {
    /// Loads a Hugging Face `tokenizer.json`, with the model's `tokenizer_config.json` if it has one.
    ///
    /// The config names the BOS, EOS and pad tokens and may set `add_bos_token`; without it (or
    /// without those keys) the BOS and EOS tokens and the BOS default are read off the special
    /// tokens the `tokenizer.json` post-processor puts around a sequence.
    pub fn from_file(tokenizer_json: &Path, tokenizer_config_json: Option<&Path>) -> Result<Self> {
        let mut inner = Tokenizer::from_file(tokenizer_json)
            .map_err(|e| anyhow!("{e}"))
            .with_context(|| format!("cannot load tokenizer {}", tokenizer_json.display()))?;
        // Ids must cover the whole text and nothing else; the caller batches and pads itself.
        inner.with_padding(None);
        inner
            .with_truncation(None)
            .map_err(|e| anyhow!("{e}"))
            .context("cannot disable truncation")?;

        let config = match tokenizer_config_json {
            Some(path) => TokenizerConfig::read(path)
                .with_context(|| format!("cannot read tokenizer config {}", path.display()))?,
            None => TokenizerConfig::default(),
        };
        let (prefix, suffix) = template_special_tokens(&inner).with_context(|| {
            format!(
                "cannot run the post-processor of {}",
                tokenizer_json.display()
            )
        })?;

        let lookup = |role: &str, name: &Option<String>| -> Result<Option<u32>> {
            name.as_ref()
                .map(|token| {
                    inner.token_to_id(token).ok_or_else(|| {
                        anyhow!(
                            "{role} {token:?} named by the tokenizer config is not in the vocabulary of {}",
                            tokenizer_json.display()
                        )
                    })
                })
                .transpose()
        };
        let bos = lookup("bos_token", &config.bos_token)?.or(prefix);
        let eos = lookup("eos_token", &config.eos_token)?.or(suffix);
        let pad = lookup("pad_token", &config.pad_token)?;
        let add_bos = match config.add_bos_token {
            Some(true) if bos.is_none() => bail!(
                "the tokenizer config sets add_bos_token but names no bos_token, and {} adds none",
                tokenizer_json.display()
            ),
            Some(add) => add,
            None => prefix.is_some() && prefix == bos,
        };
        Ok(Self {
            inner,
            bos,
            eos,
            pad,
            add_bos,
        })
    }

    /// Rebuilds the tokenizer a GGUF file describes in its `tokenizer.ggml.*` metadata.
    ///
    /// `tokenizer.ggml.model` `gpt2` is byte-level BPE, split by the pre-tokenizer that
    /// `tokenizer.ggml.pre` names; `llama` is a SentencePiece vocabulary run as BPE with byte
    /// fallback, merges derived from the vocabulary. Tokens the file marks as control or
    /// user-defined are matched whole in the text.
    pub fn from_gguf(content: &Content) -> Result<Self> {
        let meta = Metadata(&content.metadata);
        let model = meta.string("tokenizer.ggml.model")?.ok_or_else(|| {
            anyhow!("the GGUF metadata has no tokenizer.ggml.model, so no tokenizer")
        })?;
        let tokens = meta
            .strings("tokenizer.ggml.tokens")?
            .ok_or_else(|| anyhow!("the GGUF metadata has no tokenizer.ggml.tokens"))?;
        let token_types = meta.ints("tokenizer.ggml.token_type")?;
        if let Some(types) = &token_types {
            if types.len() != tokens.len() {
                bail!(
                    "GGUF tokenizer.ggml.token_type has {} entries for {} tokens",
                    types.len(),
                    tokens.len()
                );
            }
        }

        let (mut inner, byte_level, add_bos_when_unset) = match model {
            "gpt2" => (byte_level_bpe(&meta, &tokens)?, true, false),
            "llama" => (sentencepiece_bpe(&meta, &tokens)?, false, true),
            other => bail!(
                "unsupported GGUF tokenizer.ggml.model {other:?}: supported are \"gpt2\" (byte-level BPE) \
                 and \"llama\" (SentencePiece)"
            ),
        };
        if let Some(types) = &token_types {
            add_marked_tokens(&mut inner, &tokens, types, byte_level)?;
        }

        let token_id = |key: &str| -> Result<Option<u32>> {
            match meta.uint(key)? {
                Some(id) if id as usize >= tokens.len() => bail!(
                    "GGUF {key} is {id}, outside the vocabulary of {} tokens",
                    tokens.len()
                ),
                id => Ok(id),
            }
        };
        let bos = token_id("tokenizer.ggml.bos_token_id")?;
        let eos = token_id("tokenizer.ggml.eos_token_id")?;
        let pad = token_id("tokenizer.ggml.padding_token_id")?;
        // Unset, llama.cpp adds BOS to SentencePiece vocabularies and not to byte-level ones.
        let add_bos = match meta.bool("tokenizer.ggml.add_bos_token")? {
            Some(true) if bos.is_none() => {
                bail!(
                    "GGUF sets tokenizer.ggml.add_bos_token but has no tokenizer.ggml.bos_token_id"
                )
            }
            Some(add) => add,
            None => add_bos_when_unset && bos.is_some(),
        };
        if let (true, Some(id)) = (add_bos, bos) {
            // Only for `to_json`: a saved tokenizer then tells `from_file` to add BOS.
            inner.with_post_processor(Some(bos_template(tokens[id as usize], id)?));
        }
        Ok(Self {
            inner,
            bos,
            eos,
            pad,
            add_bos,
        })
    }

    /// Token ids of `text`, with the BOS id first when `bos` says so.
    ///
    /// Special tokens written in the text (`<|im_start|>`, `<bos>`) become their ids; nothing
    /// else is added, so a model's EOS or template tokens never appear unless written.
    pub fn encode(&self, text: &str, bos: BosPolicy) -> Result<Vec<u32>> {
        let prefix = self.bos_prefix(bos)?;
        let encoding = self
            .inner
            .encode_fast(text, false)
            .map_err(|e| anyhow!("{e}"))
            .with_context(|| format!("cannot tokenize {:?}", preview(text)))?;
        Ok(prefix.iter().chain(encoding.get_ids()).copied().collect())
    }

    /// [`encode`](Self::encode) for many texts, spread over threads.
    pub fn encode_batch<S: AsRef<str>>(
        &self,
        texts: &[S],
        bos: BosPolicy,
    ) -> Result<Vec<Vec<u32>>> {
        let prefix = self.bos_prefix(bos)?;
        let inputs: Vec<&str> = texts.iter().map(AsRef::as_ref).collect();
        let encodings = self
            .inner
            .encode_batch_fast(inputs, false)
            .map_err(|e| anyhow!("{e}"))
            .with_context(|| format!("cannot tokenize a batch of {} texts", texts.len()))?;
        Ok(encodings
            .iter()
            .map(|e| prefix.iter().chain(e.get_ids()).copied().collect())
            .collect())
    }

    /// The text of `ids`, special tokens included, as transformers' `decode` gives it.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        let size = self.vocab_size();
        if let Some(bad) = ids.iter().find(|&&id| id as usize >= size) {
            bail!("cannot decode token id {bad}: the vocabulary has {size} tokens");
        }
        self.inner
            .decode(ids, false)
            .map_err(|e| anyhow!("{e}"))
            .context("cannot decode token ids")
    }

    /// The beginning-of-sequence token id, if the model has one.
    pub fn bos_id(&self) -> Option<u32> {
        self.bos
    }

    /// The end-of-sequence token id, if the model names one.
    pub fn eos_id(&self) -> Option<u32> {
        self.eos
    }

    /// The id to pad batches with: the model's pad token, else its EOS token, else 0.
    ///
    /// Padded positions are masked out, so any valid id works when the model names none.
    pub fn pad_id(&self) -> u32 {
        self.pad.or(self.eos).unwrap_or(0)
    }

    /// Number of ids the tokenizer can produce, added tokens included.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// Whether [`BosPolicy::Auto`] prepends the BOS token for this model.
    pub fn add_bos_default(&self) -> bool {
        self.add_bos
    }

    /// The id of a token spelled as the vocabulary spells it (`"<|im_end|>"`, `"▁the"`).
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// The tokenizer as a `tokenizer.json`, e.g. to cache a GGUF tokenizer or compare it with
    /// the reference; [`from_file`](Self::from_file) reads it back with the same BOS default.
    pub fn to_json(&self) -> Result<String> {
        self.inner
            .to_string(false)
            .map_err(|e| anyhow!("{e}"))
            .context("cannot serialize the tokenizer")
    }

    fn bos_prefix(&self, policy: BosPolicy) -> Result<Option<u32>> {
        match policy {
            BosPolicy::Never => Ok(None),
            BosPolicy::Auto => Ok(self.bos.filter(|_| self.add_bos)),
            BosPolicy::Always => self
                .bos
                .map(Some)
                .ok_or_else(|| anyhow!("BOS policy is always, but this model has no BOS token")),
        }
    }
}

/// The start of `text`, so an error about a long input stays one line.
fn preview(text: &str) -> String {
    const MAX: usize = 60;
    match text.char_indices().nth(MAX) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text.to_owned(),
    }
}

/// The keys of a `tokenizer_config.json` that matter for ids.
#[derive(Default)]
struct TokenizerConfig {
    bos_token: Option<String>,
    eos_token: Option<String>,
    pad_token: Option<String>,
    add_bos_token: Option<bool>,
}

impl TokenizerConfig {
    fn read(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)?;
        let json: serde_json::Value = serde_json::from_str(&text).context("invalid JSON")?;
        let token = |key: &str| -> Result<Option<String>> {
            // transformers writes a special token either as its text or as an AddedToken object.
            match json.get(key) {
                None | Some(serde_json::Value::Null) => Ok(None),
                Some(serde_json::Value::String(s)) => Ok(Some(s.clone())),
                Some(v) => match v.get("content") {
                    Some(serde_json::Value::String(s)) => Ok(Some(s.clone())),
                    _ => bail!("{key} is neither a string nor an object with a string \"content\""),
                },
            }
        };
        let add_bos_token = match json.get("add_bos_token") {
            None | Some(serde_json::Value::Null) => None,
            Some(serde_json::Value::Bool(b)) => Some(*b),
            Some(other) => bail!("add_bos_token is {other}, not a boolean"),
        };
        Ok(Self {
            bos_token: token("bos_token")?,
            eos_token: token("eos_token")?,
            pad_token: token("pad_token")?,
            add_bos_token,
        })
    }
}

/// The special token ids the post-processor puts before and after a one-token text.
///
/// Running the post-processor covers every kind of it (template, BERT, RoBERTa, sequences)
/// without reading each kind's configuration.
fn template_special_tokens(tokenizer: &Tokenizer) -> Result<(Option<u32>, Option<u32>)> {
    let encoding = tokenizer
        .encode_fast("a", true)
        .map_err(|e| anyhow!("{e}"))?;
    let ids = encoding.get_ids();
    let special = encoding.get_special_tokens_mask();
    if special.iter().all(|&s| s == 1) {
        // No text token to tell what comes before it from what comes after.
        return Ok((None, None));
    }
    let prefix = (special.first() == Some(&1)).then(|| ids[0]);
    let suffix = (special.last() == Some(&1)).then(|| ids[ids.len() - 1]);
    Ok((prefix, suffix))
}

/// A post-processor that prepends `token` (id `id`) to every sequence, as transformers sets it.
fn bos_template(token: &str, id: u32) -> Result<PostProcessorWrapper> {
    // Built from JSON because the template builder parses strings, which breaks on a token
    // containing ':' or ' '.
    let bos = serde_json::json!({"SpecialToken": {"id": token, "type_id": 0}});
    let json = serde_json::json!({
        "type": "TemplateProcessing",
        "single": [bos, {"Sequence": {"id": "A", "type_id": 0}}],
        "pair": [bos, {"Sequence": {"id": "A", "type_id": 0}},
                 {"SpecialToken": {"id": token, "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
        "special_tokens": {token: {"id": token, "ids": [id], "tokens": [token]}},
    });
    serde_json::from_value(json).context("cannot build the BOS post-processor")
}

/// Typed access to GGUF metadata, where a key of the wrong type is an error, not an absence.
struct Metadata<'a>(&'a HashMap<String, Value>);

impl<'a> Metadata<'a> {
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

    fn string(&self, key: &str) -> Result<Option<&'a str>> {
        self.typed(key, "a string", |v| match v {
            Value::String(s) => Some(s.as_str()),
            _ => None,
        })
    }

    fn bool(&self, key: &str) -> Result<Option<bool>> {
        self.typed(key, "a bool", |v| match v {
            Value::Bool(b) => Some(*b),
            _ => None,
        })
    }

    fn uint(&self, key: &str) -> Result<Option<u32>> {
        self.typed(key, "a token id", |v| {
            integer(v).and_then(|i| u32::try_from(i).ok())
        })
    }

    fn array(&self, key: &str) -> Result<Option<&'a [Value]>> {
        self.typed(key, "an array", |v| match v {
            Value::Array(items) => Some(items.as_slice()),
            _ => None,
        })
    }

    fn strings(&self, key: &str) -> Result<Option<Vec<&'a str>>> {
        self.typed_array(key, "string", |v| match v {
            Value::String(s) => Some(s.as_str()),
            _ => None,
        })
    }

    fn ints(&self, key: &str) -> Result<Option<Vec<i64>>> {
        self.typed_array(key, "integer", integer)
    }

    fn floats(&self, key: &str) -> Result<Option<Vec<f64>>> {
        self.typed_array(key, "float", |v| match v {
            Value::F32(x) => Some(f64::from(*x)),
            Value::F64(x) => Some(*x),
            _ => None,
        })
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

/// Regexes that split text before byte-level BPE, by `tokenizer.ggml.pre`, as transformers
/// has them (`GGUF_PRE_TOKENIZER_SPLITS`).
const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const QWEN2_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const QWEN35_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const TEKKEN_SPLIT: &str = r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const GPT4O_SPLIT: &str = r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// `tokenizer.ggml.pre` values that keep GPT-2's own split. transformers falls back to it for
/// every value it does not list; only these are known to mean it.
const GPT2_PRE: &[&str] = &["default", "gpt2", "smollm"];

const PRE_SPLITS: &[(&str, &str)] = &[
    ("llama3", LLAMA3_SPLIT),
    ("llama-v3", LLAMA3_SPLIT),
    ("llama-bpe", LLAMA3_SPLIT),
    ("falcon3", LLAMA3_SPLIT),
    ("falcon-h1", LLAMA3_SPLIT),
    ("pixtral", LLAMA3_SPLIT),
    ("midm-2.0", LLAMA3_SPLIT),
    ("lfm2", LLAMA3_SPLIT),
    ("jina-v5-nano", LLAMA3_SPLIT),
    ("dbrx", LLAMA3_SPLIT),
    ("smaug-bpe", LLAMA3_SPLIT),
    ("tekken", TEKKEN_SPLIT),
    ("qwen2", QWEN2_SPLIT),
    ("deepseek-r1-qwen", QWEN2_SPLIT),
    ("kormo", QWEN2_SPLIT),
    ("f2llmv2", QWEN2_SPLIT),
    ("megrez", QWEN2_SPLIT),
    ("qwen35", QWEN35_SPLIT),
    ("gpt-4o", GPT4O_SPLIT),
    ("llama4", GPT4O_SPLIT),
    ("kanana2", GPT4O_SPLIT),
    ("talkie", GPT4O_SPLIT),
    ("minimax-m2", GPT4O_SPLIT),
];

fn byte_level_pre_tokenizer(pre: &str) -> Result<PreTokenizerWrapper> {
    if GPT2_PRE.contains(&pre) {
        return Ok(ByteLevel::new(false, true, true).into());
    }
    let Some((_, split)) = PRE_SPLITS.iter().find(|(name, _)| *name == pre) else {
        let known: Vec<&str> = GPT2_PRE
            .iter()
            .chain(PRE_SPLITS.iter().map(|(name, _)| name))
            .copied()
            .collect();
        bail!(
            "unsupported GGUF tokenizer.ggml.pre {pre:?}; supported: {}",
            known.join(", ")
        );
    };
    let split = Split::new(
        SplitPattern::Regex((*split).to_owned()),
        SplitDelimiterBehavior::Isolated,
        false,
    )
    .map_err(|e| anyhow!("{e}"))
    .with_context(|| format!("cannot compile the {pre} pre-tokenizer regex"))?;
    Ok(PreTokenizerSequence::new(vec![
        split.into(),
        ByteLevel::new(false, true, false).into(),
    ])
    .into())
}

/// Bytes GPT-2's byte-level alphabet spells as the character of the same code.
fn printable_byte(code: u32) -> bool {
    matches!(code, 0x21..=0x7e | 0xa1..=0xac | 0xae..=0xff)
}

/// Whether `c` belongs to the byte-level alphabet: a printable byte, or one of the 68
/// characters from U+0100 that stand in for the others.
fn in_byte_alphabet(c: char) -> bool {
    let code = u32::from(c);
    printable_byte(code) || (0x100..0x144).contains(&code)
}

/// GPT-2's printable stand-in for each byte, which byte-level vocabularies are spelled in.
fn byte_alphabet() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut next = 0x100;
    for (byte, slot) in (0u32..).zip(table.iter_mut()) {
        let code = if printable_byte(byte) {
            byte
        } else {
            next += 1;
            next - 1
        };
        *slot = char::from_u32(code).expect("codes below U+0144 are chars");
    }
    table
}

fn byte_level_bpe(meta: &Metadata, tokens: &[&str]) -> Result<Tokenizer> {
    let pre = meta.string("tokenizer.ggml.pre")?.unwrap_or("default");
    let pre_tokenizer = byte_level_pre_tokenizer(pre)?;
    let merges = meta
        .strings("tokenizer.ggml.merges")?
        .ok_or_else(|| anyhow!("the GGUF byte-level tokenizer has no tokenizer.ggml.merges"))?;

    let alphabet = byte_alphabet();
    // A token outside the byte alphabet is stored as plain text; respell it as its bytes.
    let vocab: Vocab = tokens
        .iter()
        .enumerate()
        .map(|(id, token)| {
            let spelled = if token.chars().all(in_byte_alphabet) {
                (*token).to_owned()
            } else {
                token.bytes().map(|b| alphabet[b as usize]).collect()
            };
            (spelled, id as u32)
        })
        .collect();
    let merges: Merges = merges
        .iter()
        .enumerate()
        .map(|(i, merge)| match merge.split(' ').collect::<Vec<_>>()[..] {
            [a, b] => Ok((a.to_owned(), b.to_owned())),
            _ => bail!("GGUF tokenizer.ggml.merges[{i}] is {merge:?}, not two tokens separated by a space"),
        })
        .collect::<Result<_>>()?;

    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .continuing_subword_prefix(String::new())
        .end_of_word_suffix(String::new())
        .fuse_unk(false)
        .build()
        .map_err(|e| anyhow!("{e}"))
        .context("inconsistent GGUF byte-level vocabulary and merges")?;
    let mut tokenizer = Tokenizer::new(bpe);
    tokenizer.with_pre_tokenizer(Some(pre_tokenizer));
    tokenizer.with_decoder(Some(ByteLevel::default()));
    Ok(tokenizer)
}

/// Python's `str.isspace`, which decides which Gemma tokens transformers respells.
fn py_isspace(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

fn sentencepiece_bpe(meta: &Metadata, tokens: &[&str]) -> Result<Tokenizer> {
    let architecture = meta.string("general.architecture")?.unwrap_or_default();
    let gemma = matches!(architecture, "gemma" | "gemma2" | "gemma3");
    let tokens: Vec<String> = if gemma {
        // Gemma files store its whitespace-run tokens with real spaces, but text reaches the
        // model with every space turned into '▁'.
        tokens
            .iter()
            .map(|t| {
                if t.contains(' ') && t.chars().all(py_isspace) {
                    "▁".repeat(t.chars().count())
                } else {
                    (*t).to_owned()
                }
            })
            .collect()
    } else {
        tokens.iter().map(|t| (*t).to_owned()).collect()
    };
    let vocab: Vocab = tokens
        .iter()
        .enumerate()
        .map(|(id, t)| (t.clone(), id as u32))
        .collect();

    let merges = if gemma {
        // Gemma's scores do not follow its merge order; the order of the vocabulary does.
        merges_from_vocab(&tokens, &vocab, |id| -f64::from(id))
    } else {
        let scores = meta.floats("tokenizer.ggml.scores")?.ok_or_else(|| {
            anyhow!("the GGUF SentencePiece tokenizer has no tokenizer.ggml.scores")
        })?;
        if scores.len() != tokens.len() {
            bail!(
                "GGUF tokenizer.ggml.scores has {} entries for {} tokens",
                scores.len(),
                tokens.len()
            );
        }
        merges_from_vocab(&tokens, &vocab, |id| scores[id as usize])
    };

    let unk = meta
        .uint("tokenizer.ggml.unknown_token_id")?
        .and_then(|id| tokens.get(id as usize).cloned());
    let mut builder = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .fuse_unk(true)
        .byte_fallback(true);
    if let Some(unk) = unk {
        builder = builder.unk_token(unk);
    }
    let bpe = builder
        .build()
        .map_err(|e| anyhow!("{e}"))
        .context("inconsistent GGUF SentencePiece vocabulary")?;

    // transformers' Gemma tokenizer never adds a prefix space and its Llama one always does;
    // llama.cpp states it per file, and Gemma 3's files say no.
    let prefix_space = meta
        .bool("tokenizer.ggml.add_space_prefix")?
        .unwrap_or(true);
    let scheme = if prefix_space {
        PrependScheme::First
    } else {
        PrependScheme::Never
    };
    let mut decoders: Vec<DecoderWrapper> = vec![
        Replace::new("▁", " ").map_err(|e| anyhow!("{e}"))?.into(),
        ByteFallback::new().into(),
        Fuse::new().into(),
    ];
    if prefix_space {
        decoders.push(Strip::new(' ', 1, 0).into());
    }
    let mut tokenizer = Tokenizer::new(bpe);
    tokenizer.with_pre_tokenizer(Some(Metaspace::new('▁', scheme, false)));
    tokenizer.with_decoder(Some(DecoderSequence::new(decoders)));
    Ok(tokenizer)
}

/// BPE merges for a vocabulary that lists none, in transformers' `generate_merges` order.
///
/// Every split of a token into two vocabulary tokens is a merge; merges rank by the score of
/// the token they make, best first, then by longer left part, then by vocabulary order.
/// Like a Python dict, a token listed twice counts once, at its first place, with the id and
/// score of its last.
fn merges_from_vocab(tokens: &[String], vocab: &Vocab, score: impl Fn(u32) -> f64) -> Merges {
    struct Candidate {
        score: f64,
        left_chars: usize,
        right_chars: usize,
        token: usize,
        split: usize,
    }
    let mut candidates = Vec::new();
    let mut repeated: HashSet<&str> = HashSet::new();
    for (index, token) in tokens.iter().enumerate() {
        if repeated.contains(token.as_str()) {
            continue;
        }
        let id = vocab[token.as_str()];
        if id as usize != index {
            repeated.insert(token);
        }
        let total_chars = token.chars().count();
        for (left_chars, (split, _)) in token.char_indices().enumerate().skip(1) {
            if vocab.contains_key(&token[..split]) && vocab.contains_key(&token[split..]) {
                candidates.push(Candidate {
                    score: score(id),
                    left_chars,
                    right_chars: total_chars - left_chars,
                    token: index,
                    split,
                });
            }
        }
    }
    // Stable, so equal keys keep vocabulary order as Python's sort does.
    candidates.sort_by(|a, b| {
        b.score
            .partial_cmp(&a.score)
            .unwrap_or(std::cmp::Ordering::Equal)
            .then(b.left_chars.cmp(&a.left_chars))
            .then(b.right_chars.cmp(&a.right_chars))
    });
    candidates
        .into_iter()
        .map(|c| {
            let token = &tokens[c.token];
            (token[..c.split].to_owned(), token[c.split..].to_owned())
        })
        .collect()
}

/// Makes tokens the file marks as control (3) special and user-defined (4) added tokens, so
/// both match whole in the text, as transformers and llama.cpp do.
fn add_marked_tokens(
    tokenizer: &mut Tokenizer,
    tokens: &[&str],
    types: &[i64],
    byte_level: bool,
) -> Result<()> {
    const CONTROL: i64 = 3;
    const USER_DEFINED: i64 = 4;
    // In a byte-level vocabulary a control token outside the byte alphabet is a llama.cpp
    // mislabel; adding it would grow the vocabulary past the model's embedding.
    let control: Vec<AddedToken> = tokens
        .iter()
        .zip(types)
        .filter(|&(token, &kind)| {
            kind == CONTROL && (!byte_level || token.chars().all(in_byte_alphabet))
        })
        .map(|(token, _)| AddedToken::from(*token, true).normalized(false))
        .collect();
    tokenizer
        .add_special_tokens(control)
        .map_err(|e| anyhow!("{e}"))
        .context("cannot add the GGUF control tokens")?;
    let user_defined: Vec<AddedToken> = tokens
        .iter()
        .zip(types)
        .filter(|&(token, &kind)| kind == USER_DEFINED && tokenizer.token_to_id(token).is_some())
        .map(|(token, _)| AddedToken::from(*token, false).normalized(false))
        .collect();
    tokenizer
        .add_tokens(user_defined)
        .map_err(|e| anyhow!("{e}"))
        .context("cannot add the GGUF user-defined tokens")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::quantized::gguf_file::VersionedMagic;

    fn strings(items: &[&str]) -> Value {
        Value::Array(
            items
                .iter()
                .map(|s| Value::String((*s).to_owned()))
                .collect(),
        )
    }

    fn content(entries: Vec<(&str, Value)>) -> Content {
        Content {
            magic: VersionedMagic::GgufV3,
            metadata: entries
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v))
                .collect(),
            tensor_infos: HashMap::new(),
            tensor_data_offset: 0,
        }
    }

    /// A byte-level vocabulary small enough to reason about: "ab", " ab", a control and a
    /// user-defined token.
    fn byte_level() -> Vec<(&'static str, Value)> {
        vec![
            ("general.architecture", Value::String("llama".into())),
            ("tokenizer.ggml.model", Value::String("gpt2".into())),
            ("tokenizer.ggml.pre", Value::String("smollm".into())),
            (
                "tokenizer.ggml.tokens",
                strings(&["<|endoftext|>", "a", "b", "ab", "Ġ", "Ġab", "<think>"]),
            ),
            ("tokenizer.ggml.merges", strings(&["a b", "Ġ ab"])),
            (
                "tokenizer.ggml.token_type",
                Value::Array([3, 1, 1, 1, 1, 1, 4].map(Value::I32).to_vec()),
            ),
            ("tokenizer.ggml.bos_token_id", Value::U32(0)),
            ("tokenizer.ggml.eos_token_id", Value::U32(0)),
        ]
    }

    fn with(
        mut entries: Vec<(&'static str, Value)>,
        key: &'static str,
        value: Option<Value>,
    ) -> Content {
        entries.retain(|(k, _)| *k != key);
        if let Some(value) = value {
            entries.push((key, value));
        }
        content(entries)
    }

    fn error(content: &Content) -> String {
        format!("{:#}", TextTokenizer::from_gguf(content).unwrap_err())
    }

    #[test]
    fn tiny_byte_level_vocabulary() {
        let tok = TextTokenizer::from_gguf(&content(byte_level())).unwrap();
        assert_eq!(tok.vocab_size(), 7);
        assert!(
            !tok.add_bos_default(),
            "byte-level vocabularies add no BOS unless told"
        );
        assert_eq!(
            tok.encode("ab ab<|endoftext|><think>", BosPolicy::Auto)
                .unwrap(),
            [3, 5, 0, 6]
        );
        assert_eq!(tok.encode("ab", BosPolicy::Always).unwrap(), [0, 3]);
        assert_eq!(tok.decode(&[3, 5]).unwrap(), "ab ab");
    }

    #[test]
    fn unknown_pre_tokenizer_is_named() {
        let err = error(&with(
            byte_level(),
            "tokenizer.ggml.pre",
            Some(Value::String("starcoder".into())),
        ));
        assert!(
            err.contains("\"starcoder\"") && err.contains("llama-bpe"),
            "{err}"
        );
        assert!(!err.contains('\n'), "one line: {err}");
    }

    #[test]
    fn missing_or_mistyped_metadata_is_named() {
        let cases: Vec<(&str, Option<Value>, &str)> = vec![
            ("tokenizer.ggml.tokens", None, "tokenizer.ggml.tokens"),
            ("tokenizer.ggml.model", None, "tokenizer.ggml.model"),
            (
                "tokenizer.ggml.model",
                Some(Value::String("bert".into())),
                "\"bert\"",
            ),
            ("tokenizer.ggml.merges", None, "tokenizer.ggml.merges"),
            (
                "tokenizer.ggml.tokens",
                Some(Value::String("a".into())),
                "tokenizer.ggml.tokens should be an array, found string",
            ),
            (
                "tokenizer.ggml.pre",
                Some(Value::U32(1)),
                "tokenizer.ggml.pre should be a string",
            ),
            (
                "tokenizer.ggml.bos_token_id",
                Some(Value::I32(-1)),
                "tokenizer.ggml.bos_token_id should be a token id, found i32 -1",
            ),
            (
                "tokenizer.ggml.bos_token_id",
                Some(Value::U32(99)),
                "99, outside the vocabulary of 7 tokens",
            ),
            (
                "tokenizer.ggml.token_type",
                Some(Value::Array(vec![Value::I32(1)])),
                "1 entries for 7 tokens",
            ),
            (
                "tokenizer.ggml.merges",
                Some(strings(&["a b c"])),
                "merges[0]",
            ),
            (
                "tokenizer.ggml.merges",
                Some(strings(&["a x"])),
                "inconsistent",
            ),
        ];
        for (key, value, expected) in cases {
            let err = error(&with(byte_level(), key, value));
            assert!(
                err.contains(expected),
                "{key}: expected {expected:?} in {err}"
            );
        }
    }

    #[test]
    fn bos_defaults_follow_llama_cpp() {
        let explicit = with(
            byte_level(),
            "tokenizer.ggml.add_bos_token",
            Some(Value::Bool(true)),
        );
        assert!(TextTokenizer::from_gguf(&explicit)
            .unwrap()
            .add_bos_default());

        let mut no_bos = byte_level();
        no_bos.retain(|(k, _)| *k != "tokenizer.ggml.bos_token_id");
        let err = error(&with(
            no_bos.clone(),
            "tokenizer.ggml.add_bos_token",
            Some(Value::Bool(true)),
        ));
        assert!(err.contains("bos_token_id"), "{err}");
        let tok = TextTokenizer::from_gguf(&content(no_bos)).unwrap();
        assert!(tok.encode("ab", BosPolicy::Always).is_err());
        assert_eq!(tok.pad_id(), 0, "pad falls back to EOS");
    }

    /// A SentencePiece vocabulary: merges come from the scores, text gets a prefix space.
    fn sentencepiece() -> Vec<(&'static str, Value)> {
        let tokens = [
            "<unk>", "<s>", "</s>", "▁", "a", "b", "▁a", "ab", "▁ab", "<0x63>",
        ];
        let scores = [0.0, 0.0, 0.0, -1.0, -1.0, -1.0, -2.0, -3.0, -2.5, 0.0];
        let types = [2, 3, 3, 1, 1, 1, 1, 1, 1, 6];
        vec![
            ("general.architecture", Value::String("llama".into())),
            ("tokenizer.ggml.model", Value::String("llama".into())),
            ("tokenizer.ggml.tokens", strings(&tokens)),
            (
                "tokenizer.ggml.scores",
                Value::Array(scores.map(Value::F32).to_vec()),
            ),
            (
                "tokenizer.ggml.token_type",
                Value::Array(types.map(Value::I32).to_vec()),
            ),
            ("tokenizer.ggml.bos_token_id", Value::U32(1)),
            ("tokenizer.ggml.unknown_token_id", Value::U32(0)),
        ]
    }

    #[test]
    fn tiny_sentencepiece_vocabulary() {
        let tok = TextTokenizer::from_gguf(&content(sentencepiece())).unwrap();
        assert!(
            tok.add_bos_default(),
            "SentencePiece vocabularies add BOS unless told"
        );
        // "▁ab" is "▁a"+"b" (score -2.5) and "c" falls back to its byte.
        assert_eq!(tok.encode("ab c", BosPolicy::Auto).unwrap(), [1, 8, 3, 9]);
        assert_eq!(tok.decode(&[8, 3, 9]).unwrap(), "ab c");

        let no_prefix = with(
            sentencepiece(),
            "tokenizer.ggml.add_space_prefix",
            Some(Value::Bool(false)),
        );
        let tok = TextTokenizer::from_gguf(&no_prefix).unwrap();
        assert_eq!(tok.encode("ab", BosPolicy::Never).unwrap(), [7]);

        let err = error(&with(sentencepiece(), "tokenizer.ggml.scores", None));
        assert!(err.contains("tokenizer.ggml.scores"), "{err}");
    }

    /// Orders checked against transformers' `generate_merges` on the same vocabulary.
    #[test]
    fn merges_follow_transformers_order() {
        let tokens: Vec<String> = ["<unk>", "a", "b", "c", "ab", "bc", "abc", "ab", "cab", "ca"]
            .map(String::from)
            .to_vec();
        let scores = [0.0, -1.0, -1.0, -1.0, -2.0, -2.0, -3.0, -0.5, -3.0, -2.0];
        let vocab: Vocab = tokens
            .iter()
            .enumerate()
            .map(|(i, t)| (t.clone(), i as u32))
            .collect();
        let pairs = |merges: Merges| -> Vec<String> {
            merges
                .into_iter()
                .map(|(a, b)| format!("{a} {b}"))
                .collect()
        };
        assert_eq!(
            pairs(merges_from_vocab(&tokens, &vocab, |id| scores[id as usize])),
            ["a b", "b c", "c a", "ab c", "ca b", "a bc", "c ab"]
        );
        assert_eq!(
            pairs(merges_from_vocab(&tokens, &vocab, |id| -f64::from(id))),
            ["b c", "ab c", "a bc", "a b", "ca b", "c ab", "c a"]
        );
    }

    #[test]
    fn byte_alphabet_matches_gpt2() {
        let alphabet = byte_alphabet();
        assert_eq!(alphabet[b' ' as usize], 'Ġ');
        assert_eq!(alphabet[b'\n' as usize], 'Ċ');
        assert_eq!(alphabet[b'a' as usize], 'a');
        assert_eq!(alphabet[0xad], 'Ń');
        let distinct: HashSet<char> = alphabet.into_iter().collect();
        assert_eq!(distinct.len(), 256);
        let members: HashSet<char> = ('\0'..'\u{200}').filter(|&c| in_byte_alphabet(c)).collect();
        assert_eq!(members, distinct);
    }
}
