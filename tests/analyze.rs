//! `harness analyze` against the Python reference (`scripts/reference/analyze_reference.py`:
//! transformers with eager attention, numpy SVD in f64) on the two shipped models, and
//! the command line's handling of bad input.

use std::path::{Path, PathBuf};
use std::process::Command;

use harness::commands::analyze::{self, Ablate, AnalyzeOptions};
use harness::embeddings::encode::Encoding;
use harness::io::progress::Progress;
use harness::model::capture::BatchPlan;
use harness::model::tokenizer::BosPolicy;
use harness::results::analyze::LayerStats;
use serde_json::Value;

/// Largest relative difference allowed from the reference, per metric and layer.
const TOLERANCE: f64 = 1e-3;
/// Magnitude below which differences count as absolute: quantities that are 0 in one
/// run can come out as 1e-11 in the other (a standard deviation over identical values).
const FLOOR: f64 = 1e-6;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn golden(model: &str) -> Value {
    let path = root().join(format!("tests/golden/analyze_{model}.json"));
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// Every mean and standard deviation of `ours` against the reference `layers`; returns
/// the differences over tolerance, and prints the worst relative error per metric.
fn compare(label: &str, ours: &[LayerStats], reference: &Value) -> Vec<String> {
    let reference = reference.as_array().unwrap();
    assert_eq!(ours.len(), reference.len(), "{label}: layer count");
    let mut failures = Vec::new();
    let mut worst: Vec<(String, f64)> = Vec::new();
    for (layer, want) in ours.iter().zip(reference) {
        for stat in &layer.metrics {
            for (key, got) in [
                (stat.name.to_string(), stat.mean),
                (format!("{}_std", stat.name), stat.std),
            ] {
                let want = want[&key].as_f64();
                let (got, want) = match (got, want) {
                    (None, None) => continue,
                    (Some(g), Some(w)) => (g, w),
                    _ => {
                        failures.push(format!(
                            "{label} layer {} {key}: {got:?} vs {want:?}",
                            layer.layer
                        ));
                        continue;
                    }
                };
                let err = (got - want).abs() / want.abs().max(FLOOR);
                match worst.iter_mut().find(|(k, _)| *k == key) {
                    Some(w) => w.1 = w.1.max(err),
                    None => worst.push((key.clone(), err)),
                }
                if err > TOLERANCE {
                    failures.push(format!(
                        "{label} layer {} {key}: {got} vs reference {want} (relative {err:.1e})",
                        layer.layer
                    ));
                }
            }
        }
    }
    worst.sort_by(|a, b| b.1.total_cmp(&a.1));
    let worst: Vec<String> = worst
        .iter()
        .take(6)
        .map(|(k, e)| format!("{k} {e:.1e}"))
        .collect();
    eprintln!("{label}: worst relative differences {}", worst.join(", "));
    failures
}

fn check_golden(model: &str) {
    let g = golden(model);
    let prompts: Vec<String> = g["prompts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap().to_string())
        .collect();
    let loaded = harness::model::source::load(model)
        .unwrap_or_else(|e| panic!("{e:#} (run scripts/fetch_assets.py)"));
    let opts = AnalyzeOptions {
        encoding: Encoding {
            bos: BosPolicy::Auto,
            truncate: false,
        },
        max_tokens: g["max_tokens"].as_u64().unwrap() as usize,
        plan: BatchPlan::default(),
        ablate: Some(Ablate::Auto),
        source: "golden".into(),
    };
    let r = analyze::run(&loaded, &prompts, &opts, &Progress::hidden()).unwrap();
    let tokens: Vec<u64> = g["num_tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect();
    assert_eq!(r.settings.tokens as u64, tokens.iter().sum::<u64>());

    let mut failures = compare(model, &r.layers, &g["layers"]);
    let ablation = r.ablation.as_ref().unwrap();
    let want = &g["ablation"];
    let blocks: Vec<usize> = want["layers_ablated"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b.as_u64().unwrap() as usize)
        .collect();
    assert_eq!(ablation.layers_ablated, blocks, "automatic ablation choice");
    failures.extend(compare(
        &format!("{model} ablated"),
        &ablation.layers,
        &want["layers"],
    ));
    for (key, got) in [
        ("loss_baseline", ablation.loss_baseline),
        ("loss_ablated", ablation.loss_ablated),
        ("loss_change", ablation.loss_change),
    ] {
        let want = want[key].as_f64().unwrap();
        let err = (got - want).abs() / want.abs().max(FLOOR);
        eprintln!("{model}: {key} {got:.6} vs reference {want:.6} (relative {err:.1e})");
        if err > TOLERANCE {
            failures.push(format!("{model} {key}: {got} vs reference {want}"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} differences:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn smollm2_matches_the_reference() {
    check_golden("smollm2");
}

#[test]
fn gemma3_matches_the_reference() {
    check_golden("gemma3");
}

/// A scratch directory of this test's own.
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("harness-analyze-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn harness(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_harness"))
        .args(args)
        .arg("--quiet")
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn write_prompts(dir: &Path, text: &str) -> String {
    let path = dir.join("prompts.txt");
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

#[test]
fn bad_input_fails_with_one_line_and_writes_nothing() {
    let dir = scratch("bad");
    let out = dir.join("results");
    let out_arg = out.display().to_string();
    let prompts = write_prompts(&dir, "The first prompt here.\nAnd a second one.\n");
    let empty = dir.join("empty.txt");
    std::fs::write(&empty, "").unwrap();
    let missing = dir.join("missing.txt").display().to_string();
    let empty = empty.display().to_string();
    let cases: [(&[&str], &str); 6] = [
        (&["--input", &missing], "cannot read"),
        (&["--input", &empty], "is empty"),
        (
            &["--input", &prompts, "--ablate", "0"],
            "blocks are numbered from 1",
        ),
        (
            &["--input", &prompts, "--ablate", "31"],
            "cannot ablate block 31",
        ),
        (
            &["--input", &prompts, "--ablate", "3;5"],
            "invalid --ablate '3;5'",
        ),
        (&["--input", &prompts, "--max-tokens", "1"], "at least 2"),
    ];
    for (extra, expect) in cases {
        let mut args = vec!["analyze", "--model", "smollm2", "--out", &out_arg];
        args.extend_from_slice(extra);
        let (ok, stdout, stderr) = harness(&args);
        assert!(!ok, "{extra:?} succeeded");
        assert!(stdout.is_empty(), "{extra:?}: {stdout}");
        assert_eq!(stderr.trim_end().lines().count(), 1, "{extra:?}: {stderr}");
        assert!(
            stderr.starts_with("error: ") && stderr.contains(expect),
            "{extra:?}: {stderr}"
        );
        assert!(!out.exists(), "{extra:?} left {}", out.display());
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn writes_the_schema_and_a_table() {
    let dir = scratch("run");
    let prompts = write_prompts(
        &dir,
        "It was the best of times, it was the worst of times, it was the age of wisdom.\nCall me Ishmael. Some years ago, never mind how long precisely, I went to sea.\nA third prompt, to have more than two.\n",
    );
    let out = dir.join("results");
    let (ok, stdout, stderr) = harness(&[
        "analyze",
        "--model",
        "smollm2",
        "--input",
        &prompts,
        "--limit",
        "2",
        "--max-tokens",
        "12",
        "--ablate",
        "3,12",
        "--out",
        &out.display().to_string(),
    ]);
    assert!(ok, "{stderr}");
    assert!(
        stdout.contains("phases: mix") && stdout.contains("next-token loss"),
        "{stdout}"
    );
    let json: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("smollm2/analyze.json")).unwrap())
            .unwrap();
    assert_eq!(json["schema"], "harness.analyze/1");
    assert_eq!(json["model"]["name"], "smollm2");
    assert_eq!(json["model"]["num_layers"], 30);
    let s = &json["settings"];
    assert_eq!(
        (s["prompts"].as_u64(), s["tokens"].as_u64()),
        (Some(2), Some(24))
    );
    assert_eq!(s["max_tokens"], 12);
    assert_eq!(s["bos"], "auto");
    assert!(s["prompts_source"].as_str().unwrap().starts_with("file: "));
    assert!(s["svd"].as_str().unwrap().contains("Gram"));
    let layers = json["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 31);
    let names = [
        "first_norm",
        "norm_ratio",
        "first_over_median",
        "massive_count",
        "anisotropy",
        "dominance",
        "entropy_bits",
        "entropy_normalized",
        "entropy_centered_bits",
        "entropy_bound_bits",
        "anisotropy_bound",
        "bound_holds",
        "sink_rate",
        "sink_rate_gu",
        "mixing",
        "colsum",
    ];
    for (l, layer) in layers.iter().enumerate() {
        assert_eq!(layer["layer"], l);
        for name in names {
            let std = format!("{name}_std");
            let attention = name.starts_with("sink") || name == "mixing" || name == "colsum";
            if l == 0 && attention {
                assert!(layer[name].is_null() && layer[&std].is_null());
            } else {
                assert!(
                    layer[name].is_f64() && layer[&std].is_f64(),
                    "layer {l} {name}"
                );
            }
        }
    }
    let phases = &json["phases"];
    let (first, last) = (&phases["compress"]["first"], &phases["compress"]["last"]);
    assert!(first.as_u64().unwrap() <= last.as_u64().unwrap());
    let ablation = &json["ablation"];
    assert_eq!(ablation["layers_ablated"], serde_json::json!([3, 12]));
    assert_eq!(ablation["layers"].as_array().unwrap().len(), 31);
    let change =
        ablation["loss_ablated"].as_f64().unwrap() - ablation["loss_baseline"].as_f64().unwrap();
    assert!((ablation["loss_change"].as_f64().unwrap() - change).abs() < 1e-12);
    // Nothing but the result is left in the output directory.
    let entries: Vec<_> = std::fs::read_dir(out.join("smollm2")).unwrap().collect();
    assert_eq!(entries.len(), 1);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `--task` takes its prompts from a task's texts, and `eval --ablate auto` removes the
/// block that `analyze --ablate auto` chooses, writing next to the baseline.
#[test]
fn task_prompts_and_the_auto_ablation_in_eval() {
    let dir = scratch("task");
    let out = dir.join("results");
    let out_arg = out.display().to_string();
    let (ok, _, stderr) = harness(&[
        "analyze",
        "--model",
        "smollm2",
        "--task",
        "mr",
        "--limit",
        "4",
        "--max-tokens",
        "16",
        "--ablate",
        "auto",
        "--out",
        &out_arg,
    ]);
    assert!(ok, "{stderr}");
    let json: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("smollm2/analyze.json")).unwrap())
            .unwrap();
    assert!(json["settings"]["prompts_source"]
        .as_str()
        .unwrap()
        .starts_with("task: mr (4 texts"));
    let (ok, _, stderr) = harness(&[
        "eval",
        "--task",
        "mr",
        "--model",
        "smollm2",
        "--limit",
        "40",
        "--folds",
        "2",
        "--resamples",
        "50",
        "--ablate",
        "auto",
        "--no-cache",
        "--out",
        &out_arg,
    ]);
    assert!(ok, "{stderr}");
    // The auto block is found on the default prompts; SmolLM2's jump is at block 12.
    assert!(stderr.contains("block(s) [12]"), "{stderr}");
    let json: Value = serde_json::from_str(
        &std::fs::read_to_string(out.join("smollm2/mr.ablate-12.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(json["settings"]["ablate"], serde_json::json!([12]));
    assert!(!out.join("smollm2/mr.json").exists());
    let (ok, _, stderr) = harness(&[
        "analyze", "--model", "smollm2", "--task", "mr", "--input", "x.txt",
    ]);
    assert!(!ok && stderr.contains("cannot be used with"), "{stderr}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_second_run_on_the_same_analysis_is_refused() {
    let dir = scratch("lock");
    let prompts = write_prompts(&dir, "One prompt that is long enough.\nAnd another.\n");
    let (out, cache) = (dir.join("results"), dir.join("cache"));
    // What a first run holds while it works: the lock on its analyze.json.
    let held = harness::io::output::lock_for_writing(
        &harness::results::analyze::result_path(&out, "smollm2"),
        &cache.join("locks"),
    )
    .unwrap();
    let run = || {
        Command::new(env!("CARGO_BIN_EXE_harness"))
            .args(["analyze", "--model", "smollm2", "--input", &prompts])
            .args(["--max-tokens", "8", "--quiet", "--out"])
            .arg(&out)
            .env("HARNESS_CACHE", &cache)
            .output()
            .unwrap()
    };
    let second = run();
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(!second.status.success());
    assert!(
        stderr.starts_with("error: another harness run") && stderr.lines().count() == 1,
        "{stderr}"
    );
    drop(held);
    let third = run();
    assert!(
        third.status.success(),
        "{}",
        String::from_utf8_lossy(&third.stderr)
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
