//! Text to token ids for every model harness loads, identical to the Python reference.
//!
//! A Hugging Face model directory ships a `tokenizer.json`, which the `tokenizers` crate reads
//! as is. A GGUF file ships only metadata, from which [`TextTokenizer::from_gguf`] rebuilds the
//! tokenizer the way transformers does. The ids must be the ones the model saw in training, and transformers is
//! the reference they are checked against (`scripts/reference/tokenizer_golden.py` writes the
//! expected ids, `tests/tokenizer.rs` compares).
//!
//! Whether a sequence starts with the beginning-of-sequence token is decided here, not by the
//! tokenizer's post-processor, so that it can be overridden per run with [`BosPolicy`].

mod gguf;

use std::fmt;
use std::path::Path;
use std::str::FromStr;

use anyhow::{anyhow, bail, Context, Result};
use tokenizers::Tokenizer;

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
        let add_bos = decide_add_bos(
            config.add_bos_token,
            prefix.is_some() && prefix == bos,
            bos,
            || {
                format!(
                    "the tokenizer config sets add_bos_token but names no bos_token, and {} adds none",
                    tokenizer_json.display()
                )
            },
        )?;
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

/// Whether [`BosPolicy::Auto`] prepends BOS: the model's own `setting` when it states one,
/// else `default`, and never without a BOS token. A setting that asks for a BOS token the
/// model lacks is an error, worded by `missing` in the terms of the model's files.
fn decide_add_bos(
    setting: Option<bool>,
    default: bool,
    bos: Option<u32>,
    missing: impl FnOnce() -> String,
) -> Result<bool> {
    match setting {
        Some(true) if bos.is_none() => bail!(missing()),
        Some(add) => Ok(add),
        None => Ok(default && bos.is_some()),
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
