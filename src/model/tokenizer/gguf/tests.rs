//! The GGUF tokenizer rebuild on vocabularies small enough to reason about, and its
//! merge order and byte alphabet against transformers'.

use std::collections::HashMap;

use super::*;
use crate::model::tokenizer::BosPolicy;
use candle_core::quantized::gguf_file::{Value, VersionedMagic};

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
