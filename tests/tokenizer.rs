//! harness's tokenizers against the reference, transformers.
//!
//! `tests/golden/tokenizer.json` holds the ids transformers gives for a varied set of texts with
//! the GGUF tokenizers of the real models (and of variants of them that reach other code
//! paths), plus digests of the vocabulary, merges and added tokens it builds. It is written by
//! `scripts/reference/tokenizer_golden.py`. The models themselves come from
//! `scripts/fetch_assets.py`; a missing model fails these tests rather than skipping them.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use candle_core::quantized::gguf_file::{Content, Value};
use harness::model::tokenizer::{BosPolicy, TextTokenizer};
use serde::Deserialize;
use sha2::{Digest as _, Sha256};

#[derive(Deserialize)]
struct Golden {
    models: BTreeMap<String, ModelGolden>,
}

#[derive(Deserialize)]
struct ModelGolden {
    gguf: String,
    metadata_overrides: BTreeMap<String, String>,
    metadata_removed: Vec<String>,
    vocab_size: usize,
    bos_id: Option<u32>,
    eos_id: Option<u32>,
    pad_id: Option<u32>,
    backend: BTreeMap<String, Digest>,
    cases: Vec<Case>,
}

#[derive(Deserialize, Debug, PartialEq)]
struct Digest {
    count: usize,
    sha256: String,
}

#[derive(Deserialize)]
struct Case {
    text: String,
    ids: Vec<u32>,
    ids_no_special: Vec<u32>,
    decoded: String,
}

fn golden() -> &'static Golden {
    static GOLDEN: OnceLock<Golden> = OnceLock::new();
    GOLDEN.get_or_init(|| {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/tokenizer.json");
        let text = fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    })
}

fn model(alias: &str) -> &'static ModelGolden {
    golden()
        .models
        .get(alias)
        .unwrap_or_else(|| panic!("tests/golden/tokenizer.json has no model {alias:?}"))
}

fn harness_home() -> PathBuf {
    match std::env::var_os("HARNESS_HOME") {
        Some(home) => PathBuf::from(home),
        None => {
            PathBuf::from(std::env::var_os("HOME").expect("HOME is set")).join(".cache/harness")
        }
    }
}

/// The GGUF metadata of a golden entry, with the entry's changes applied.
fn content(entry: &ModelGolden) -> Content {
    let path = harness_home().join(&entry.gguf);
    let mut file = fs::File::open(&path).unwrap_or_else(|e| {
        panic!(
            "model file {} is missing ({e}); run scripts/fetch_assets.py to download it",
            path.display()
        )
    });
    let mut content =
        Content::read(&mut file).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    for (key, value) in &entry.metadata_overrides {
        content
            .metadata
            .insert(key.clone(), Value::String(value.clone()));
    }
    for key in &entry.metadata_removed {
        content.metadata.remove(key);
    }
    content
}

fn tokenizer(alias: &str) -> TextTokenizer {
    TextTokenizer::from_gguf(&content(model(alias))).expect("GGUF tokenizer builds")
}

/// Texts whose ids differ from the reference under `BosPolicy::Auto`.
fn mismatches(tok: &TextTokenizer, entry: &ModelGolden) -> Vec<String> {
    entry
        .cases
        .iter()
        .filter_map(|case| {
            let got = tok.encode(&case.text, BosPolicy::Auto).expect("encodes");
            (got != case.ids).then(|| format!("{:?}: got {got:?}, want {:?}", case.text, case.ids))
        })
        .collect()
}

fn check_against_golden(alias: &str) {
    let entry = model(alias);
    let tok = tokenizer(alias);
    assert_eq!(tok.vocab_size(), entry.vocab_size, "{alias}: vocab size");
    assert_eq!(tok.bos_id(), entry.bos_id, "{alias}: BOS id");
    assert_eq!(tok.eos_id(), entry.eos_id, "{alias}: EOS id");
    assert_eq!(Some(tok.pad_id()), entry.pad_id, "{alias}: pad id");

    let mut failures = mismatches(&tok, entry);
    for case in &entry.cases {
        let never = tok.encode(&case.text, BosPolicy::Never).expect("encodes");
        if never != case.ids_no_special {
            failures.push(format!(
                "{:?} without BOS: got {never:?}, want {:?}",
                case.text, case.ids_no_special
            ));
        }
        let always = tok.encode(&case.text, BosPolicy::Always).expect("encodes");
        let bos = tok.bos_id().expect("both models have a BOS token");
        if always.first() != Some(&bos) || always[1..] != case.ids_no_special[..] {
            failures.push(format!("{:?} with BOS always: got {always:?}", case.text));
        }
        let decoded = tok.decode(&case.ids_no_special).expect("decodes");
        if decoded != case.decoded {
            failures.push(format!("decode of {:?}: got {decoded:?}", case.text));
        }
    }
    assert!(
        failures.is_empty(),
        "{alias}: {} of {} cases differ from transformers:\n{}",
        failures.len(),
        entry.cases.len(),
        failures.join("\n")
    );

    let texts: Vec<&str> = entry.cases.iter().map(|c| c.text.as_str()).collect();
    let batch = tok
        .encode_batch(&texts, BosPolicy::Auto)
        .expect("batch encodes");
    let want: Vec<&Vec<u32>> = entry.cases.iter().map(|c| &c.ids).collect();
    assert!(
        batch.iter().eq(want),
        "{alias}: encode_batch differs from encode"
    );

    assert_eq!(
        &backend_digests(&tok),
        &entry.backend,
        "{alias}: vocabulary, merges or added tokens differ"
    );
}

fn digest<I: IntoIterator<Item = String>>(items: I) -> Digest {
    let mut hasher = Sha256::new();
    let mut count = 0;
    for item in items {
        hasher.update(format!("{}:", item.len()));
        hasher.update(item.as_bytes());
        count += 1;
    }
    let sha256 = hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    Digest { count, sha256 }
}

/// The same digests the golden script takes of transformers' tokenizer.
fn backend_digests(tok: &TextTokenizer) -> BTreeMap<String, Digest> {
    let json: serde_json::Value = serde_json::from_str(&tok.to_json().unwrap()).unwrap();
    let str_of = |v: &serde_json::Value| v.as_str().unwrap().to_owned();

    let mut vocab: Vec<(u64, String)> = json["model"]["vocab"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(token, id)| (id.as_u64().unwrap(), token.clone()))
        .collect();
    vocab.sort();
    let merges = json["model"]["merges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|pair| format!("{}\u{0}{}", str_of(&pair[0]), str_of(&pair[1])));
    let mut added: Vec<&serde_json::Value> =
        json["added_tokens"].as_array().unwrap().iter().collect();
    added.sort_by_key(|t| t["id"].as_u64().unwrap());
    let flag = |t: &serde_json::Value, key: &str| u8::from(t[key].as_bool().unwrap());
    let added = added.into_iter().map(|t| {
        format!(
            "{}:{}{}{}{}{}:{}",
            t["id"],
            flag(t, "special"),
            flag(t, "normalized"),
            flag(t, "lstrip"),
            flag(t, "rstrip"),
            flag(t, "single_word"),
            str_of(&t["content"])
        )
    });
    BTreeMap::from([
        (
            "vocab".to_owned(),
            digest(vocab.into_iter().map(|(id, t)| format!("{id}:{t}"))),
        ),
        ("merges".to_owned(), digest(merges)),
        ("added_tokens".to_owned(), digest(added)),
    ])
}

#[test]
fn smollm2_matches_transformers() {
    check_against_golden("smollm2");
}

#[test]
fn gemma3_matches_transformers() {
    check_against_golden("gemma3");
}

#[test]
fn llama3_pre_tokenizer_matches_transformers() {
    check_against_golden("smollm2+llama-bpe");
}

#[test]
fn qwen2_pre_tokenizer_matches_transformers() {
    check_against_golden("smollm2+qwen2");
}

#[test]
fn generic_sentencepiece_matches_transformers() {
    check_against_golden("gemma3+llama");
}

#[test]
fn model_defaults_follow_the_gguf() {
    let smollm = tokenizer("smollm2");
    assert!(!smollm.add_bos_default());
    assert_eq!(smollm.token_to_id("<|im_start|>"), Some(1));
    assert_eq!(
        smollm.encode("<|im_start|>", BosPolicy::Never).unwrap(),
        [1]
    );
    assert_eq!(
        smollm.encode("Hello", BosPolicy::Always).unwrap(),
        [1, 19556],
        "Always prepends BOS even where the model adds none"
    );
    let gemma = tokenizer("gemma3");
    assert!(gemma.add_bos_default());
    assert_eq!(gemma.encode("", BosPolicy::Auto).unwrap(), [2]);
    assert_eq!(
        gemma.encode("", BosPolicy::Never).unwrap(),
        Vec::<u32>::new()
    );
}

#[test]
fn decode_round_trips() {
    let texts = [
        "Hello world, this is  a test\n😀 123",
        "  \n \t\n",
        "family 👨\u{200d}👩\u{200d}👧\u{200d}👦 flags 🇫🇷🇯🇵",
        "<|im_start|>user\nHi<|im_end|>",
        "<start_of_turn>model\nकैसे<end_of_turn>",
    ];
    for alias in ["smollm2", "gemma3"] {
        let tok = tokenizer(alias);
        for text in texts {
            let ids = tok.encode(text, BosPolicy::Never).unwrap();
            assert_eq!(tok.decode(&ids).unwrap(), text, "{alias}");
        }
    }
}

/// The golden texts must catch a wrong pre-tokenizer, not only a wrong vocabulary.
#[test]
fn golden_texts_catch_pre_tokenizer_mistakes() {
    // The SmolLM2 vocabulary split the llama-3 way.
    let wrong = tokenizer("smollm2+llama-bpe");
    assert!(!mismatches(&wrong, model("smollm2")).is_empty());

    // A space prepended to the text, the mistake candle's own GGUF tokenizer makes for SmolLM2.
    let tok = tokenizer("smollm2");
    let json = tok
        .to_json()
        .unwrap()
        .replace(r#""add_prefix_space":false"#, r#""add_prefix_space":true"#);
    let path = scratch("smollm2-prefix-space.json");
    fs::write(&path, json).unwrap();
    let wrong = TextTokenizer::from_file(&path, None).unwrap();
    assert!(!mismatches(&wrong, model("smollm2")).is_empty());

    // Gemma 3 with the SentencePiece prefix space it must not have.
    let mut gemma = content(model("gemma3"));
    gemma
        .metadata
        .insert("tokenizer.ggml.add_space_prefix".into(), Value::Bool(true));
    let wrong = TextTokenizer::from_gguf(&gemma).unwrap();
    assert!(!mismatches(&wrong, model("gemma3")).is_empty());
}

fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("tokenizer-tests");
    fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

/// A GGUF tokenizer saved as tokenizer.json loads back with the same ids and BOS default.
#[test]
fn gguf_tokenizer_round_trips_through_json() {
    for alias in ["smollm2", "gemma3"] {
        let tok = tokenizer(alias);
        let path = scratch(&format!("{alias}.json"));
        fs::write(&path, tok.to_json().unwrap()).unwrap();
        let back = TextTokenizer::from_file(&path, None).unwrap();
        assert_eq!(back.add_bos_default(), tok.add_bos_default(), "{alias}");
        assert_eq!(
            back.bos_id(),
            tok.add_bos_default().then(|| tok.bos_id().unwrap())
        );
        assert!(mismatches(&back, model(alias)).is_empty(), "{alias}");
    }
}

#[test]
fn gemma3_builds_quickly() {
    let content = content(model("gemma3"));
    let start = std::time::Instant::now();
    TextTokenizer::from_gguf(&content).unwrap();
    let elapsed = start.elapsed();
    eprintln!("gemma3 tokenizer built in {elapsed:?}");
    // Generous for slow CI machines; it takes well under a second on a laptop core.
    assert!(
        elapsed.as_secs() < 10,
        "building the Gemma 3 tokenizer took {elapsed:?}"
    );
}

/// A four-token vocabulary with `<s>` and `</s>`, and the given post-processor.
fn tiny_tokenizer_json(post_processor: serde_json::Value) -> String {
    serde_json::json!({
        "version": "1.0",
        "truncation": {"direction": "Right", "max_length": 2, "strategy": "LongestFirst", "stride": 0},
        "padding": null,
        "added_tokens": [
            {"id": 0, "content": "<s>", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true},
            {"id": 1, "content": "</s>", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true},
        ],
        "normalizer": null,
        "pre_tokenizer": {"type": "Whitespace"},
        "post_processor": post_processor,
        "decoder": null,
        "model": {"type": "WordLevel", "vocab": {"<s>": 0, "</s>": 1, "hello": 2, "world": 3, "<unk>": 4}, "unk_token": "<unk>"},
    })
    .to_string()
}

fn bos_eos_template() -> serde_json::Value {
    serde_json::json!({
        "type": "TemplateProcessing",
        "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                   {"SpecialToken": {"id": "</s>", "type_id": 0}}],
        "pair": [{"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
        "special_tokens": {
            "<s>": {"id": "<s>", "ids": [0], "tokens": ["<s>"]},
            "</s>": {"id": "</s>", "ids": [1], "tokens": ["</s>"]},
        },
    })
}

fn write_scratch(name: &str, text: &str) -> PathBuf {
    let path = scratch(name);
    fs::write(&path, text).unwrap();
    path
}

#[test]
fn tokenizer_json_bos_from_post_processor() {
    let path = write_scratch(
        "tiny-template.json",
        &tiny_tokenizer_json(bos_eos_template()),
    );
    let tok = TextTokenizer::from_file(&path, None).unwrap();
    assert!(tok.add_bos_default());
    assert_eq!(tok.bos_id(), Some(0));
    assert_eq!(tok.eos_id(), Some(1));
    assert_eq!(tok.pad_id(), 1, "pad falls back to EOS");
    // The post-processor's EOS is not added, and the file's truncation to 2 is ignored.
    assert_eq!(
        tok.encode("hello world hello", BosPolicy::Auto).unwrap(),
        [0, 2, 3, 2]
    );
    assert_eq!(
        tok.encode("hello <s>world", BosPolicy::Never).unwrap(),
        [2, 0, 3]
    );
    assert_eq!(
        tok.encode_batch(&["world", "hello"], BosPolicy::Auto)
            .unwrap(),
        [vec![0, 3], vec![0, 2]]
    );
    assert_eq!(tok.vocab_size(), 5);
    assert_eq!(tok.decode(&[2, 3]).unwrap(), "hello world");
    assert!(tok
        .decode(&[7])
        .unwrap_err()
        .to_string()
        .contains("token id 7"));

    let plain = write_scratch(
        "tiny-plain.json",
        &tiny_tokenizer_json(serde_json::Value::Null),
    );
    let tok = TextTokenizer::from_file(&plain, None).unwrap();
    assert!(!tok.add_bos_default());
    assert_eq!((tok.bos_id(), tok.eos_id(), tok.pad_id()), (None, None, 0));
    assert_eq!(tok.encode("hello", BosPolicy::Auto).unwrap(), [2]);
    let err = tok.encode("hello", BosPolicy::Always).unwrap_err();
    assert!(err.to_string().contains("no BOS token"), "{err}");
}

#[test]
fn tokenizer_config_overrides_the_post_processor() {
    let template = write_scratch(
        "tiny-config-template.json",
        &tiny_tokenizer_json(bos_eos_template()),
    );
    let plain = write_scratch(
        "tiny-config-plain.json",
        &tiny_tokenizer_json(serde_json::Value::Null),
    );

    let no_bos = write_scratch(
        "no-bos.config.json",
        r#"{"add_bos_token": false, "eos_token": "</s>"}"#,
    );
    let tok = TextTokenizer::from_file(&template, Some(&no_bos)).unwrap();
    assert!(!tok.add_bos_default());
    assert_eq!(tok.encode("hello", BosPolicy::Auto).unwrap(), [2]);
    assert_eq!(tok.encode("hello", BosPolicy::Always).unwrap(), [0, 2]);

    // Special tokens written as AddedToken objects, as transformers saves them.
    let with_bos = write_scratch(
        "with-bos.config.json",
        r#"{"add_bos_token": true, "bos_token": {"content": "<s>", "special": true},
            "eos_token": "</s>", "pad_token": "<unk>"}"#,
    );
    let tok = TextTokenizer::from_file(&plain, Some(&with_bos)).unwrap();
    assert!(tok.add_bos_default());
    assert_eq!(
        (tok.bos_id(), tok.eos_id(), tok.pad_id()),
        (Some(0), Some(1), 4)
    );
    assert_eq!(tok.encode("world", BosPolicy::Auto).unwrap(), [0, 3]);

    // Without add_bos_token, BOS is added when the post-processor adds the named BOS token.
    let names_only = write_scratch("names-only.config.json", r#"{"bos_token": "<s>"}"#);
    assert!(TextTokenizer::from_file(&template, Some(&names_only))
        .unwrap()
        .add_bos_default());
    assert!(!TextTokenizer::from_file(&plain, Some(&names_only))
        .unwrap()
        .add_bos_default());
}

#[test]
fn tokenizer_json_errors_are_clear() {
    let err_of = |tokenizer: &Path, config: Option<&Path>| {
        format!(
            "{:#}",
            TextTokenizer::from_file(tokenizer, config).unwrap_err()
        )
    };
    let corrupt = write_scratch("corrupt.json", "{\"model\": ");
    let err = err_of(&corrupt, None);
    assert!(err.contains("corrupt.json"), "{err}");

    let missing = scratch("does-not-exist.json");
    assert!(err_of(&missing, None).contains("does-not-exist.json"));

    let plain = write_scratch(
        "tiny-errors.json",
        &tiny_tokenizer_json(serde_json::Value::Null),
    );
    let unknown = write_scratch("unknown-bos.config.json", r#"{"bos_token": "<bos>"}"#);
    let err = err_of(&plain, Some(&unknown));
    assert!(
        err.contains("\"<bos>\"") && err.contains("not in the vocabulary"),
        "{err}"
    );

    let no_name = write_scratch("add-without-bos.config.json", r#"{"add_bos_token": true}"#);
    assert!(err_of(&plain, Some(&no_name)).contains("add_bos_token"));

    let bad_type = write_scratch("bad-type.config.json", r#"{"add_bos_token": "yes"}"#);
    let err = err_of(&plain, Some(&bad_type));
    assert!(
        err.contains("bad-type.config.json") && err.contains("not a boolean"),
        "{err}"
    );

    let bad_json = write_scratch("bad-json.config.json", "{");
    assert!(err_of(&plain, Some(&bad_json)).contains("invalid JSON"));
}

#[test]
fn bos_policy_parses() {
    assert_eq!("auto".parse::<BosPolicy>().unwrap(), BosPolicy::Auto);
    assert_eq!("Always".parse::<BosPolicy>().unwrap(), BosPolicy::Always);
    assert_eq!("NEVER".parse::<BosPolicy>().unwrap(), BosPolicy::Never);
    assert_eq!(BosPolicy::default(), BosPolicy::Auto);
    assert_eq!(BosPolicy::Always.to_string(), "always");
    let err = "sometimes".parse::<BosPolicy>().unwrap_err().to_string();
    assert!(
        err.contains("sometimes") && err.contains("auto, always or never"),
        "{err}"
    );
}
