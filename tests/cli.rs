//! The `harness` binary end to end: `inspect` and `embed` on the shipped models, and
//! every kind of bad input giving one clear line, a non-zero exit and no output file.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn harness(args: &[&str]) -> Output {
    // With RUST_BACKTRACE set, libraries attach backtraces to errors; the message
    // must still be one line.
    Command::new(env!("CARGO_BIN_EXE_harness"))
        .args(args)
        .env("RUST_BACKTRACE", "1")
        .output()
        .expect("run harness")
}

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// A fresh scratch directory per test.
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("harness-cli-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Asserts a clean failure: non-zero exit, one `error:` line naming `needle`.
fn assert_fails_with(out: &Output, needle: &str) {
    let err = stderr(out);
    assert!(
        !out.status.success(),
        "expected failure, got success: {err}"
    );
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 1, "expected one line, got: {err}");
    assert!(lines[0].starts_with("error: "), "{err}");
    assert!(err.contains(needle), "expected '{needle}' in: {err}");
    assert!(!err.contains("panicked"), "{err}");
}

fn inspect_json(model: &str) -> serde_json::Value {
    let out = harness(&["inspect", "--model", model, "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn inspect_reports_the_shipped_models() {
    for (alias, arch, layers, hidden, heads, kv, vocab, bos, add_bos) in [
        ("smollm2", "llama", 30, 576, 9, 3, 49152, 1, false),
        ("llama", "llama", 30, 576, 9, 3, 49152, 1, false),
        ("gemma3", "gemma3", 18, 640, 4, 1, 262144, 2, true),
    ] {
        let info = inspect_json(alias);
        assert_eq!(info["architecture"], arch, "{alias}");
        assert_eq!(info["num_layers"], layers, "{alias}");
        assert_eq!(info["hidden_size"], hidden, "{alias}");
        assert_eq!(info["num_heads"], heads, "{alias}");
        assert_eq!(info["num_kv_heads"], kv, "{alias}");
        assert_eq!(info["vocab_size"], vocab, "{alias}");
        assert_eq!(info["bos_token_id"], bos, "{alias}");
        assert_eq!(info["add_bos_token"], add_bos, "{alias}");
        assert_eq!(info["format"], "gguf");
        assert!(info["weight_types"].as_object().unwrap().len() >= 2);
    }
    let info = inspect_json(fixture("tiny-gpt_neox").to_str().unwrap());
    assert_eq!(info["architecture"], "gpt_neox");
    assert_eq!(info["format"], "safetensors");
    assert!(info["weight_types"]["F32"].as_u64().unwrap() > 0);
}

fn read_embeddings(path: &Path) -> (Vec<usize>, Vec<f32>) {
    let t = candle_core::safetensors::load(path, &candle_core::Device::Cpu).unwrap();
    let e = &t["embeddings"];
    (
        e.dims().to_vec(),
        e.flatten_all().unwrap().to_vec1().unwrap(),
    )
}

#[test]
fn embed_writes_every_layer_in_input_order() {
    let dir = scratch("embed");
    let texts = [
        "A short one.",
        "This sentence is quite a bit longer than the first, so batches get padding.",
        "Middle length text here.",
    ];
    std::fs::write(dir.join("in.txt"), texts.join("\n") + "\n").unwrap();
    let out_path = dir.join("out.safetensors");
    let out = harness(&[
        "embed",
        "--model",
        "smollm2",
        "--input",
        dir.join("in.txt").to_str().unwrap(),
        "--pool",
        "mean-skip-first",
        "--out",
        out_path.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let (dims, all) = read_embeddings(&out_path);
    assert_eq!(dims, vec![3, 31, 576]);

    // Each row must equal the text embedded alone: batching and sorting by length
    // may not reorder or mix rows.
    for (i, text) in texts.iter().enumerate() {
        std::fs::write(dir.join("one.txt"), text).unwrap();
        let one_path = dir.join("one.safetensors");
        let out = harness(&[
            "embed",
            "--model",
            "smollm2",
            "--input",
            dir.join("one.txt").to_str().unwrap(),
            "--pool",
            "mean-skip-first",
            "--out",
            one_path.to_str().unwrap(),
        ]);
        assert!(out.status.success(), "{}", stderr(&out));
        let (dims, one) = read_embeddings(&one_path);
        assert_eq!(dims, vec![1, 31, 576]);
        let row = &all[i * 31 * 576..(i + 1) * 31 * 576];
        for (l, (a, b)) in row.chunks(576).zip(one.chunks(576)).enumerate() {
            let diff: f32 = a
                .iter()
                .zip(b)
                .map(|(x, y)| (x - y) * (x - y))
                .sum::<f32>()
                .sqrt();
            let norm: f32 = b.iter().map(|y| y * y).sum::<f32>().sqrt();
            assert!(
                diff <= 1e-4 * norm,
                "text {i} layer {l}: {diff} vs norm {norm}"
            );
        }
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `harness embed` of the lines of `input` into `out_path`, with `extra` arguments.
fn embed(model: &str, input: &Path, out_path: &Path, extra: &[&str]) -> Output {
    let mut args = vec![
        "embed",
        "--model",
        model,
        "--input",
        input.to_str().unwrap(),
        "--out",
        out_path.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    harness(&args)
}

/// Runs `embed` expecting a clean failure naming `needle`, with no output written.
fn embed_fails(model: &str, input: &Path, extra: &[&str], needle: &str) {
    let dir = input.parent().unwrap();
    let out_path = dir.join("never.safetensors");
    let out = embed(model, input, &out_path, extra);
    assert_fails_with(&out, needle);
    assert!(
        !out_path.exists(),
        "a failed run left {}",
        out_path.display()
    );
    let leftovers: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains("partial"))
        .collect();
    assert!(leftovers.is_empty(), "partial files left behind");
}

/// A copy of a tiny fixture model with `edit` applied to its config.
fn tiny_copy(dir: &Path, name: &str, edit: impl FnOnce(&mut serde_json::Value)) -> PathBuf {
    let src = fixture(name);
    let dst = dir.join(name);
    std::fs::create_dir_all(&dst).unwrap();
    for f in [
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
    ] {
        std::fs::copy(src.join(f), dst.join(f)).unwrap();
    }
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("config.json")).unwrap()).unwrap();
    edit(&mut config);
    std::fs::write(dst.join("config.json"), config.to_string()).unwrap();
    dst
}

/// A minimal GGUF file whose one tensor has quantization type 16 (IQ2_XXS).
fn gguf_with_unsupported_type(path: &Path) {
    let mut b = Vec::new();
    let string = |b: &mut Vec<u8>, s: &str| {
        b.extend((s.len() as u64).to_le_bytes());
        b.extend(s.as_bytes());
    };
    b.extend(b"GGUF");
    b.extend(3u32.to_le_bytes());
    b.extend(1u64.to_le_bytes()); // tensors
    b.extend(1u64.to_le_bytes()); // metadata entries
    string(&mut b, "general.architecture");
    b.extend(8u32.to_le_bytes()); // string value
    string(&mut b, "llama");
    string(&mut b, "token_embd.weight");
    b.extend(2u32.to_le_bytes());
    b.extend(256u64.to_le_bytes());
    b.extend(4u64.to_le_bytes());
    b.extend(16u32.to_le_bytes());
    b.extend(0u64.to_le_bytes());
    b.resize(b.len().div_ceil(32) * 32 + 1024, 0);
    std::fs::write(path, b).unwrap();
}

#[test]
fn bad_inputs_fail_with_one_clear_line() {
    let dir = scratch("bad");
    let good = dir.join("good.txt");
    std::fs::write(&good, "Hello there.\nAnother text.\n").unwrap();

    // Missing and empty input files.
    embed_fails("smollm2", &dir.join("missing.txt"), &[], "cannot read");
    let empty = dir.join("empty.txt");
    std::fs::write(&empty, "").unwrap();
    embed_fails("smollm2", &empty, &[], "is empty");
    let blank = dir.join("blank.txt");
    std::fs::write(&blank, "one\n\nthree\n").unwrap();
    embed_fails("smollm2", &blank, &[], "line 2 is empty");

    // Missing, truncated and corrupt model files.
    embed_fails(
        dir.join("nope.gguf").to_str().unwrap(),
        &good,
        &[],
        "does not exist",
    );
    embed_fails("no-such-alias", &good, &[], "unknown model");
    let real = harness_home().join("models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf");
    let bytes = std::fs::read(&real).unwrap();
    let truncated = dir.join("truncated.gguf");
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    embed_fails(truncated.to_str().unwrap(), &good, &[], "remaining in file");
    let garbage = dir.join("garbage.gguf");
    std::fs::write(&garbage, b"this is not a gguf file at all").unwrap();
    embed_fails(
        garbage.to_str().unwrap(),
        &good,
        &[],
        "not a readable GGUF file",
    );
    let iq = dir.join("iq2.gguf");
    gguf_with_unsupported_type(&iq);
    embed_fails(
        iq.to_str().unwrap(),
        &good,
        &[],
        "unsupported quantization type",
    );

    // Unknown architecture, and a config that disagrees with the weights.
    let unknown = tiny_copy(&dir, "tiny-llama", |c| c["model_type"] = "mamba".into());
    embed_fails(
        unknown.to_str().unwrap(),
        &good,
        &[],
        "unsupported model_type 'mamba'",
    );
    let _ = std::fs::remove_dir_all(&unknown);
    let wrong = tiny_copy(&dir, "tiny-llama", |c| c["intermediate_size"] = 96.into());
    embed_fails(wrong.to_str().unwrap(), &good, &[], "shape mismatch");
    let _ = std::fs::remove_dir_all(&wrong);
    let broken = tiny_copy(&dir, "tiny-gpt2", |_| {});
    let weights = std::fs::read(broken.join("model.safetensors")).unwrap();
    std::fs::write(
        broken.join("model.safetensors"),
        &weights[..weights.len() / 3],
    )
    .unwrap();
    embed_fails(
        broken.to_str().unwrap(),
        &good,
        &[],
        "truncated or corrupt safetensors",
    );
    let _ = std::fs::remove_dir_all(&broken);

    // A text longer than the context: refused, or cut with a warning when asked.
    let long = dir.join("long.txt");
    std::fs::write(&long, "word ".repeat(200)).unwrap();
    let gpt2 = fixture("tiny-gpt2");
    embed_fails(
        gpt2.to_str().unwrap(),
        &long,
        &[],
        "more than the model's context of 64",
    );
    let out_path = dir.join("cut.safetensors");
    let out = harness(&[
        "embed",
        "--model",
        gpt2.to_str().unwrap(),
        "--input",
        long.to_str().unwrap(),
        "--truncate",
        "--out",
        out_path.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("warning: 1 text(s) were cut"));
    assert_eq!(read_embeddings(&out_path).0, vec![1, 4, 64]);
    std::fs::remove_dir_all(&dir).unwrap();
}

fn harness_home() -> PathBuf {
    match std::env::var_os("HARNESS_HOME") {
        Some(h) => PathBuf::from(h),
        None => PathBuf::from(std::env::var_os("HOME").unwrap()).join(".cache/harness"),
    }
}

#[test]
fn config_sizes_of_zero_are_refused_for_every_architecture() {
    let dir = scratch("zero");
    for (fixture, key) in [
        ("tiny-llama", "num_attention_heads"),
        ("tiny-mistral", "num_key_value_heads"),
        ("tiny-qwen2", "hidden_size"),
        ("tiny-gemma3", "num_attention_heads"),
        ("tiny-gemma3", "sliding_window_pattern"),
        ("tiny-gpt_neox", "num_attention_heads"),
        ("tiny-gpt2", "n_head"),
        ("tiny-gpt2", "n_positions"),
        ("tiny-llama", "vocab_size"),
        ("tiny-llama", "num_hidden_layers"),
        ("tiny-llama", "intermediate_size"),
    ] {
        let model = tiny_copy(&dir, fixture, |c| {
            c[key] = 0.into();
            // The pattern only counts when no layer list is given.
            if key == "sliding_window_pattern" {
                c.as_object_mut().unwrap().remove("layer_types");
            }
        });
        let out = harness(&["inspect", "--model", model.to_str().unwrap()]);
        assert_fails_with(&out, &format!("{key} is 0"));
        std::fs::remove_dir_all(&model).unwrap();
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn weights_the_config_leaves_unused_are_an_error_naming_them() {
    let dir = scratch("unused");
    for (fixture, key, unused) in [
        ("tiny-llama", "num_hidden_layers", "model.layers.2."),
        ("tiny-gpt2", "n_layer", "transformer.h.2."),
        ("tiny-gpt_neox", "num_hidden_layers", "gpt_neox.layers.2."),
    ] {
        let model = tiny_copy(&dir, fixture, |c| c[key] = 2.into());
        let out = harness(&["inspect", "--model", model.to_str().unwrap()]);
        assert_fails_with(&out, "not used by the model");
        assert!(stderr(&out).contains(unused), "{}", stderr(&out));
        std::fs::remove_dir_all(&model).unwrap();
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn input_errors_name_the_line_and_the_destination_is_checked_first() {
    let dir = scratch("input");
    let latin1 = dir.join("latin1.txt");
    std::fs::write(&latin1, b"first line\ncaf\xe9 au lait\nthird\n").unwrap();
    embed_fails("smollm2", &latin1, &[], "line 2 is not valid UTF-8");
    // A directory as --out is refused before the model is even looked up.
    let good = dir.join("good.txt");
    std::fs::write(&good, "Hello there.\n").unwrap();
    let out = harness(&[
        "embed",
        "--model",
        "no-such-model",
        "--input",
        good.to_str().unwrap(),
        "--out",
        dir.to_str().unwrap(),
    ]);
    assert_fails_with(&out, "is a directory");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn eval_list_names_every_shipped_task_with_its_kind() {
    let out = harness(&["eval", "--list"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    let names = harness::tasks::shipped_names();
    assert_eq!(lines.len(), names.len(), "{stdout}");
    for (line, name) in lines.iter().zip(&names) {
        let task = harness::tasks::describe(name).unwrap();
        let words: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(words[0], *name, "{line}");
        assert_eq!(words[1], task.kind().to_string(), "{line}");
        assert!(line.ends_with(&task.description), "{line}");
    }
}

#[test]
fn plain_inspect_prints_the_json_fields_as_a_table() {
    let model = fixture("tiny-qwen2");
    let model = model.to_str().unwrap();
    let out = harness(&["inspect", "--model", model]);
    assert!(out.status.success(), "{}", stderr(&out));
    let table = String::from_utf8_lossy(&out.stdout).into_owned();
    let info = inspect_json(model);
    let row = |key: &str| -> String {
        let line = table
            .lines()
            .find(|l| l.split_whitespace().next() == Some(key))
            .unwrap_or_else(|| panic!("no {key} row in:\n{table}"));
        line[key.len()..].trim().to_string()
    };
    assert_eq!(row("architecture"), "qwen2");
    for key in [
        "num_layers",
        "hidden_size",
        "num_heads",
        "num_kv_heads",
        "head_dim",
        "intermediate_size",
        "vocab_size",
        "context_length",
    ] {
        assert_eq!(row(key), info[key].to_string(), "{key}");
    }
    assert_eq!(row("format"), "safetensors");
    assert_eq!(row("bos_token_id"), "1 (added by default: false)");
}

/// Runs `embed` on `texts` with `extra` arguments and returns `[texts, layers, hidden]`.
fn embed_with(dir: &Path, model: &Path, texts: &[&str], extra: &[&str]) -> (Vec<usize>, Vec<f32>) {
    let input = dir.join("texts.txt");
    std::fs::write(&input, texts.join("\n") + "\n").unwrap();
    let out_path = dir.join("embedded.safetensors");
    let out = embed(model.to_str().unwrap(), &input, &out_path, extra);
    assert!(out.status.success(), "{}", stderr(&out));
    read_embeddings(&out_path)
}

/// Relative L2 distance between two vectors.
fn rel_err(a: &[f32], b: &[f32]) -> f32 {
    let diff: f32 = a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum();
    let norm: f32 = b.iter().map(|y| y * y).sum();
    (diff / norm.max(1e-30)).sqrt()
}

/// `embed --pool first|last|mean` against transformers' hidden states of the same
/// prompts (tests/golden/tiny-qwen2.*): the first token's row, the last real token's
/// row and the mean over the real tokens, at every layer.
#[test]
fn embed_pools_equal_transformers_token_rows() {
    let dir = scratch("pools");
    let golden_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(golden_dir.join("tiny-qwen2.json")).unwrap())
            .unwrap();
    let prompts: Vec<&str> = meta["prompts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap())
        .collect();
    let lens: Vec<usize> = meta["num_tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_u64().unwrap() as usize)
        .collect();
    let golden = candle_core::safetensors::load(
        golden_dir.join("tiny-qwen2.safetensors"),
        &candle_core::Device::Cpu,
    )
    .unwrap();
    let layers = meta["num_layers"].as_u64().unwrap() as usize + 1;
    let hidden: Vec<Vec<f32>> = (0..layers)
        .map(|l| {
            golden[&format!("hidden.{l}")]
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap()
        })
        .collect();
    let (t, d) = (lens.iter().copied().max().unwrap(), 64);
    let token = |l: usize, b: usize, p: usize| &hidden[l][(b * t + p) * d..][..d];
    let mean = |l: usize, b: usize| -> Vec<f32> {
        let mut m = vec![0f32; d];
        for p in 0..lens[b] {
            m.iter_mut().zip(token(l, b, p)).for_each(|(m, x)| *m += x);
        }
        m.iter().map(|x| x / lens[b] as f32).collect()
    };
    let model = fixture("tiny-qwen2");
    for pool in ["first", "last", "mean"] {
        let (dims, ours) = embed_with(&dir, &model, &prompts, &["--pool", pool]);
        assert_eq!(dims, vec![prompts.len(), layers, d]);
        for b in 0..prompts.len() {
            for l in 0..layers {
                let expected = match pool {
                    "first" => token(l, b, 0).to_vec(),
                    "last" => token(l, b, lens[b] - 1).to_vec(),
                    _ => mean(l, b),
                };
                let row = &ours[(b * layers + l) * d..][..d];
                let err = rel_err(row, &expected);
                assert!(err < 1e-4, "--pool {pool}, text {b}, layer {l}: {err:.2e}");
            }
        }
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `--batch-size` and `--max-batch-tokens` change how texts are grouped, never their
/// vectors: 1, 2, token budgets and the default batch (which pads the shorter texts)
/// all give each text's vectors alone.
#[test]
fn batch_size_leaves_the_vectors_as_they_are() {
    let dir = scratch("batch");
    let model = fixture("tiny-llama");
    let (dims, one_by_one) = embed_with(&dir, &model, &BATCH_TEXTS, &["--batch-size", "1"]);
    let (_, batched) = embed_with(&dir, &model, &BATCH_TEXTS, &[]);
    let (_, in_pairs) = embed_with(&dir, &model, &BATCH_TEXTS, &["--batch-size", "2"]);
    // A budget of 16 tokens splits these texts by length; 1 runs each alone.
    let (_, budget) = embed_with(&dir, &model, &BATCH_TEXTS, &["--max-batch-tokens", "16"]);
    let (_, tiny) = embed_with(&dir, &model, &BATCH_TEXTS, &["--max-batch-tokens", "1"]);
    let width = dims[1] * dims[2];
    for (i, text) in BATCH_TEXTS.iter().enumerate() {
        let (_, alone) = embed_with(&dir, &model, &[text], &[]);
        for (all, size) in [
            (&one_by_one, "1"),
            (&batched, "default"),
            (&in_pairs, "2"),
            (&budget, "16 tokens"),
            (&tiny, "1 token"),
        ] {
            let err = rel_err(&all[i * width..(i + 1) * width], &alone);
            assert!(err < 1e-5, "text {i}, batch size {size}: {err:.2e}");
        }
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

const BATCH_TEXTS: [&str; 5] = [
    "Hi.",
    "The cat sat on the mat and looked out of the window.",
    "A middle sized sentence here.",
    "Rain again today",
    "One more.",
];

/// Records the rows of every batch a forward pass is given.
struct BatchLog(Vec<Vec<usize>>);

impl harness::model::capture::Capture for BatchLog {
    fn depth(&self) -> usize {
        0
    }

    fn on_resid(
        &mut self,
        _: usize,
        _: &candle_core::Tensor,
        batch: &harness::model::capture::Batch,
    ) -> anyhow::Result<()> {
        self.0.push(batch.index.clone());
        Ok(())
    }
}

/// A run that will not fit is refused before the model loads: one line with the
/// estimate and the memory available, a non-zero exit and no output; with room the
/// same run succeeds. `HARNESS_MEMORY_LIMIT` stands in for a small machine.
#[test]
fn a_run_that_will_not_fit_is_refused_with_the_figures() {
    let dir = scratch("memory");
    let input = dir.join("in.txt");
    std::fs::write(&input, "one text\nanother one\n").unwrap();
    let model = fixture("tiny-llama");
    let out_path = dir.join("never.safetensors");
    let results = dir.join("results");
    let run = |command: &str, limit: &str| {
        let mut args = vec![command, "--model", model.to_str().unwrap()];
        args.extend(["--input", input.to_str().unwrap(), "--out"]);
        args.push(match command {
            "embed" => out_path.to_str().unwrap(),
            _ => results.to_str().unwrap(),
        });
        Command::new(env!("CARGO_BIN_EXE_harness"))
            .args(&args)
            .args(["--quiet", "--max-batch-tokens", "512"])
            .env("HARNESS_MEMORY_LIMIT", limit)
            .output()
            .expect("run harness")
    };
    for command in ["embed", "analyze"] {
        let out = run(command, "64K");
        assert_fails_with(&out, "tiny-llama in f32 needs about");
        for needle in [
            "at 512 tokens per batch",
            "but 64 KiB is allowed by HARNESS_MEMORY_LIMIT",
            "try --dtype bf16 or a smaller --max-batch-tokens",
        ] {
            assert!(
                stderr(&out).contains(needle),
                "{command}: {needle}: {}",
                stderr(&out)
            );
        }
        assert!(
            !out_path.exists() && !results.exists(),
            "{command} wrote output"
        );
    }
    assert_fails_with(&run("embed", "lots"), "HARNESS_MEMORY_LIMIT=lots");
    let out = run("embed", "1G");
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(out_path.exists());
    std::fs::remove_dir_all(&dir).unwrap();
}

/// What `--batch-size N` asks of the forward pass: batches of at most N texts that
/// together hold every text once; without it, these short texts share one batch.
#[test]
fn batch_size_sets_the_texts_per_batch() {
    use harness::model::capture::{self, BatchPlan};
    let model = harness::model::source::load(fixture("tiny-llama").to_str().unwrap()).unwrap();
    let seqs: Vec<Vec<u32>> = BATCH_TEXTS
        .iter()
        .map(|t| {
            model
                .tokenizer
                .encode(t, harness::model::tokenizer::BosPolicy::Auto)
                .unwrap()
        })
        .collect();
    let batches = |size: Option<usize>| -> Vec<Vec<usize>> {
        let mut log = BatchLog(Vec::new());
        capture::run(
            &model.model,
            &seqs,
            model.tokenizer.pad_id(),
            BatchPlan::new(size, None),
            &harness::model::Intervention::default(),
            &mut log,
            &harness::io::progress::Progress::hidden(),
        )
        .unwrap();
        log.0
    };
    for size in [1, 2, 3] {
        let got = batches(Some(size));
        assert_eq!(
            got.len(),
            BATCH_TEXTS.len().div_ceil(size),
            "size {size}: {got:?}"
        );
        assert!(got.iter().all(|b| b.len() <= size), "size {size}: {got:?}");
        let mut rows: Vec<usize> = got.concat();
        rows.sort();
        assert_eq!(rows, (0..BATCH_TEXTS.len()).collect::<Vec<_>>());
    }
    assert_eq!(batches(None).len(), 1);
    assert_eq!(
        batches(Some(0)),
        batches(Some(1)),
        "a size of 0 means one at a time"
    );
}

/// Every command that runs a model takes `--device`; a device this build or this
/// machine cannot use is one line naming what is missing, before anything loads.
/// (Where a CUDA build runs on a GPU, the device opens: nothing to check here.)
#[test]
fn a_device_this_build_cannot_use_is_one_line() {
    if cfg!(feature = "cuda") && harness::model::dtype::DeviceSpec::Cuda(0).open().is_ok() {
        eprintln!("skipped: this machine has a GPU the build can use");
        return;
    }
    let dir = scratch("device");
    let input = dir.join("in.txt");
    std::fs::write(&input, "one text\n").unwrap();
    let needle = if cfg!(feature = "cuda") {
        "--device cuda: cannot open the GPU"
    } else {
        "--device cuda needs a build with the `cuda` feature (scripts/build_cuda.sh)"
    };
    let model = fixture("tiny-llama");
    let model = model.to_str().unwrap();
    embed_fails(model, &input, &["--device", "cuda"], needle);
    let out_dir = dir.join("results");
    let out_dir = out_dir.to_str().unwrap();
    for args in [
        &[
            "eval", "--task", "mr", "--model", model, "--device", "cuda:0", "--out", out_dir,
        ][..],
        &[
            "analyze",
            "--model",
            model,
            "--input",
            input.to_str().unwrap(),
            "--device",
            "cuda",
            "--out",
            out_dir,
        ],
    ] {
        assert_fails_with(&harness(args), needle);
    }
    let out = embed(
        model,
        &input,
        &dir.join("x.safetensors"),
        &["--device", "tpu"],
    );
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("expected cpu, cuda or cuda:N"),
        "{}",
        stderr(&out)
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `--dtype bf16` holds the weights in bf16: the vectors are close to f32's but not
/// the same, and the file says which type made them.
#[test]
fn embed_in_bf16_records_its_dtype_and_stays_close_to_f32() {
    let dir = scratch("dtype");
    let input = dir.join("in.txt");
    std::fs::write(
        &input,
        "A short one.\nA somewhat longer sentence for the tiny model.\n",
    )
    .unwrap();
    let model = fixture("tiny-llama");
    let (f32_path, bf16_path) = (dir.join("f32.safetensors"), dir.join("bf16.safetensors"));
    for (path, dtype) in [(&f32_path, "f32"), (&bf16_path, "bf16")] {
        let out = embed(model.to_str().unwrap(), &input, path, &["--dtype", dtype]);
        assert!(out.status.success(), "{}", stderr(&out));
        let bytes = std::fs::read(path).unwrap();
        let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
        let meta = meta.metadata().clone().unwrap();
        assert_eq!(meta["dtype"], dtype);
        assert_eq!(meta["device"], "cpu");
    }
    let (_, a) = read_embeddings(&f32_path);
    let (_, b) = read_embeddings(&bf16_path);
    let err = rel_err(&b, &a);
    assert!(err > 0.0 && err < 5e-2, "bf16 vs f32 relative error {err}");
    std::fs::remove_dir_all(&dir).unwrap();
}
