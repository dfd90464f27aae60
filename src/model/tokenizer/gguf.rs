//! The tokenizer a GGUF file describes in its `tokenizer.ggml.*` metadata (llama.cpp's
//! vocabulary, merges and token kinds), rebuilt the way transformers does when it loads a GGUF
//! (`transformers/integrations/gguf/gguf_tokenizer_mapping.py`).

use std::collections::HashSet;

use anyhow::{anyhow, bail, Context, Result};
use candle_core::quantized::gguf_file::Content;
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

use super::{decide_add_bos, TextTokenizer};
use crate::model::gguf::Metadata;

impl TextTokenizer {
    /// Rebuilds the tokenizer a GGUF file describes in its `tokenizer.ggml.*` metadata.
    ///
    /// `tokenizer.ggml.model` `gpt2` is byte-level BPE, split by the pre-tokenizer that
    /// `tokenizer.ggml.pre` names; `llama` is a SentencePiece vocabulary run as BPE with byte
    /// fallback, merges derived from the vocabulary. Tokens the file marks as control or
    /// user-defined are matched whole in the text.
    pub fn from_gguf(content: &Content) -> Result<Self> {
        let meta = Metadata::new(&content.metadata);
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
            match meta.token_id(key)? {
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
        let add_bos = decide_add_bos(
            meta.bool("tokenizer.ggml.add_bos_token")?,
            add_bos_when_unset,
            bos,
            || {
                "GGUF sets tokenizer.ggml.add_bos_token but has no tokenizer.ggml.bos_token_id"
                    .to_owned()
            },
        )?;
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
        .token_id("tokenizer.ggml.unknown_token_id")?
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
mod tests;
