//! `harness eval` end to end: every shipped task on a small slice of both shipped
//! models, a task written from the documentation on a user's own file, the embedding
//! cache, Hugging Face datasets over a loopback server, bad input, concurrent runs and
//! runs killed part way.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

use harness::commands::eval::{evaluate, EvalOptions};
use harness::results::eval::EvalResult;
use harness::tasks;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("harness-eval-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn harness(args: &[&str], envs: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_harness"));
    cmd.args(args).arg("--quiet");
    for (k, v) in envs {
        cmd.env(k, v);
    }
    cmd.output().expect("run harness")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn assert_fails_with(out: &Output, needle: &str) {
    let err = stderr(out);
    assert!(!out.status.success(), "expected failure: {err}");
    assert_eq!(err.lines().count(), 1, "expected one line: {err}");
    assert!(
        err.starts_with("error: ") && err.contains(needle),
        "expected '{needle}' in: {err}"
    );
}

/// Checks the shape and sanity of a result.
fn check(r: &EvalResult, layers: usize) {
    let name = &r.task.name;
    assert_eq!(r.schema, "harness.eval/1");
    assert_eq!(r.layers.len(), layers, "{name}");
    for l in &r.layers {
        assert!(l.score.is_finite(), "{name} layer {}: {}", l.layer, l.score);
        assert!(l.ci_low <= l.ci_high, "{name} layer {}", l.layer);
    }
    let best = r.layers.iter().map(|l| l.score);
    let best = if r.task.higher_is_better {
        best.fold(f64::NEG_INFINITY, f64::max)
    } else {
        best.fold(f64::INFINITY, f64::min)
    };
    assert_eq!(r.peak.score, best, "{name}: peak is not the best layer");
    assert_eq!(r.last.layer, layers - 1);
    assert_eq!(r.task.pool.is_some(), r.task.kind.is_embedding());
    // Every layer is judged against the recorded chance level by the documented rule.
    let chance = r
        .chance()
        .expect("every new result records its chance level");
    assert_eq!(
        chance.score.is_none(),
        r.task.metric == "perplexity",
        "{name}"
    );
    for l in &r.layers {
        let above = chance.beaten_by(l.ci_low, l.ci_high, r.task.higher_is_better);
        assert_eq!(l.above_chance, above, "{name} layer {}", l.layer);
    }
    assert_eq!(r.signal, r.layers[r.peak.layer].above_chance, "{name}");
    // The file format round-trips.
    let json = serde_json::to_string(r).unwrap();
    let back: EvalResult = serde_json::from_str(&json).unwrap();
    assert_eq!(back.layers.len(), layers);
}

/// Every shipped task (but sst2, which needs the network) on a small slice.
fn shipped_tasks_run_on(model: &str) {
    let loaded = harness::model::source::load(model).unwrap();
    let layers = loaded.model.num_layers() + 1;
    let opts = |limit: usize| EvalOptions {
        limit: Some(limit),
        folds: Some(2),
        resamples: 100,
        use_cache: false,
        quiet: true,
        ..EvalOptions::default()
    };
    let load = |names: &[&str]| {
        names
            .iter()
            .map(|n| tasks::load(n).unwrap())
            .collect::<Vec<_>>()
    };
    // Slices sized so each kind has enough items: topics needs a few lines of
    // several topics for the folds; the logit lens over a large vocabulary is slow.
    let groups = [
        (
            load(&["mr", "tweets", "imdb", "lee-sts", "boolq-retrieval"]),
            48,
        ),
        (load(&["topics"]), 400),
        (load(&["boolq", "austen"]), 3),
    ];
    let mut results = Vec::new();
    for (tasks, limit) in &groups {
        let out = evaluate(&loaded, tasks, &opts(*limit)).unwrap();
        assert_eq!(out.len(), tasks.len());
        // Texts shared by several tasks are embedded in one pass before any runs.
        if tasks[0].spec.kind().is_embedding() {
            assert!(out[0].timings.shared_forward_s > 0.0);
        }
        results.extend(out);
    }
    let shipped = tasks::shipped_names().len() - 1;
    assert_eq!(results.len(), shipped, "every shipped task but sst2");
    for r in &results {
        check(r, layers);
        eprintln!(
            "{model} {}: peak layer {} {:.3}, final {:.3}",
            r.task.name, r.peak.layer, r.peak.score, r.last.score
        );
    }
    let austen = results.iter().find(|r| r.task.name == "austen").unwrap();
    assert!(!austen.task.higher_is_better);
    // Through the full model, Austen's prose is far more predictable than through
    // the embeddings alone.
    assert!(austen.last.score < austen.layers[0].score / 10.0);
}

#[test]
fn shipped_tasks_run_on_smollm2() {
    shipped_tasks_run_on("smollm2");
}

#[test]
fn shipped_tasks_run_on_gemma3() {
    shipped_tasks_run_on("gemma3");
}

/// The TOML example in docs/tasks.md, as written there.
fn documented_example() -> String {
    let doc = std::fs::read_to_string(root().join("docs/tasks.md")).unwrap();
    let from = doc.find("## A complete example").unwrap();
    let block = &doc[from..];
    let start = block.find("```toml\n").unwrap() + "```toml\n".len();
    let end = start + block[start..].find("```").unwrap();
    block[start..end].to_string()
}

/// `reviews.csv` as the documentation describes it: good, bad and neutral reviews.
fn write_reviews(path: &Path, rows: usize) {
    let good = [
        "Great value, would buy again",
        "Works perfectly and looks lovely",
        "Excellent quality for the price",
        "I love it, five stars",
    ];
    let bad = [
        "Broke after two days",
        "Terrible, it never worked",
        "Cheap plastic and awful support",
        "Waste of money, returned it",
    ];
    let mut csv = String::from("review,stars\n");
    for i in 0..rows {
        let (text, stars) = match i % 5 {
            0 | 1 => (good[i % 4], 4 + i % 2),
            2 | 3 => (bad[i % 4], 1 + i % 2),
            _ => ("It is fine I guess", 3),
        };
        csv.push_str(&format!("\"{text} (#{i})\",{stars}\n"));
    }
    std::fs::write(path, csv).unwrap();
}

/// Runs the documented example task on tiny-llama over the reviews `write_csv` writes,
/// in a scratch folder named `name`: that folder, the run's stdout and its result file.
fn eval_documented_example(name: &str, write_csv: impl Fn(&Path)) -> (PathBuf, String, PathBuf) {
    let dir = scratch(name);
    std::fs::write(dir.join("reviews.toml"), documented_example()).unwrap();
    write_csv(&dir.join("reviews.csv"));
    let out_dir = dir.join("results");
    let out = eval_tiny("tiny-llama", &dir.join("reviews.toml"), &out_dir, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    (dir, stdout, out_dir.join("tiny-llama/reviews.json"))
}

#[test]
fn a_task_written_from_the_docs_runs_on_a_users_file() {
    let (dir, stdout, result) = eval_documented_example("docs", |csv| write_reviews(csv, 60));
    assert!(
        stdout.contains("<- peak") && stdout.contains("paper's prediction"),
        "{stdout}"
    );
    let r: EvalResult = serde_json::from_str(&std::fs::read_to_string(result).unwrap()).unwrap();
    check(&r, 4);
    assert_eq!(r.task.n_items, 48, "the 12 three-star reviews are dropped");
    assert_eq!(r.info["dropped_rows"], 12);
    assert_eq!(r.info["classes"], serde_json::json!(["bad", "good"]));
    assert_eq!(r.chance().unwrap().score, Some(24.0 / 48.0));
    assert_eq!(r.signal, Some(true));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Reviews whose stars are drawn at random (seeded, 70% good), independent of the
/// text: no layer can know them, so the best one is no better than chance.
fn write_random_reviews(path: &Path, rows: usize) {
    let mut csv = String::from("review,stars\n");
    let mut state: u64 = 0x2545_f491_4f6c_dd1d;
    for i in 0..rows {
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        let stars = if (state >> 33) % 10 < 7 { 5 } else { 1 };
        csv.push_str(&format!(
            "\"Order number {i} arrived on day {}\",{stars}\n",
            i % 7
        ));
    }
    std::fs::write(path, csv).unwrap();
}

#[test]
fn labels_that_carry_no_signal_are_reported_as_no_signal() {
    let (dir, stdout, result) =
        eval_documented_example("chance", |csv| write_random_reviews(csv, 80));
    assert!(stdout.contains("no signal"), "{stdout}");
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(result).unwrap()).unwrap();
    let counts: Vec<f64> = r["info"]["class_counts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_f64().unwrap())
        .collect();
    let majority = counts.iter().cloned().fold(0.0, f64::max) / counts.iter().sum::<f64>();
    assert_eq!(r["info"]["chance"]["score"].as_f64(), Some(majority));
    assert_eq!(r["peak"]["above_chance"], false);
    assert_eq!(r["signal"], false);
    assert_eq!(r["prediction"]["holds"], false, "no verdict on no signal");
    for l in r["layers"].as_array().unwrap() {
        let above = l["ci_low"].as_f64().unwrap() > majority;
        assert_eq!(l["above_chance"], above, "layer {}", l["layer"]);
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Reviews whose class lies only in word order: "The film was good, not bad." against
/// "The film was bad, not good.", the same tokens in another order. The embeddings
/// (layer 0) pool both to the same vector, so no probe can beat chance there (SmolLM2:
/// 0.22); only blocks whose attention mixes tokens by position separate them (1.00 from
/// layer 1 on). Blocks that are skipped or attend only to their own token leave every
/// layer where layer 0 is, whereas texts that carry their class in every word are
/// separated at any layer even by random weights.
#[test]
fn only_blocks_that_mix_tokens_read_class_from_word_order() {
    let dir = scratch("order");
    std::fs::write(dir.join("reviews.toml"), documented_example()).unwrap();
    let pairs = [
        ("good", "bad"),
        ("great", "awful"),
        ("excellent", "terrible"),
        ("wonderful", "horrible"),
        ("nice", "poor"),
    ];
    let mut csv = String::from("review,stars\n");
    for subject in ["film", "meal", "hotel", "book", "phone", "concert"] {
        for (good, bad) in pairs {
            csv.push_str(&format!("\"The {subject} was {good}, not {bad}.\",5\n"));
            csv.push_str(&format!("\"The {subject} was {bad}, not {good}.\",1\n"));
        }
    }
    std::fs::write(dir.join("reviews.csv"), csv).unwrap();
    let task = tasks::load(dir.join("reviews.toml").to_str().unwrap()).unwrap();
    let model = harness::model::source::load("smollm2").unwrap();
    let opts = EvalOptions {
        resamples: 20,
        use_cache: false,
        quiet: true,
        ..EvalOptions::default()
    };
    let r = evaluate(&model, &[task], &opts).unwrap().remove(0);
    let scores: Vec<f64> = r.layers.iter().map(|l| l.score).collect();
    eprintln!("word order probe by layer: {scores:.2?}");
    assert!(
        scores[0] <= 0.55,
        "layer 0 cannot see word order: {scores:.2?}"
    );
    assert!(r.peak.score >= 0.9, "no layer read the order: {scores:.2?}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn the_cache_serves_repeat_runs_and_follows_the_settings() {
    let dir = scratch("cache");
    std::fs::write(dir.join("reviews.toml"), documented_example()).unwrap();
    write_reviews(&dir.join("reviews.csv"), 40);
    let cache = dir.join("cache");
    let (task, model, results) = (
        dir.join("reviews.toml").display().to_string(),
        root()
            .join("tests/fixtures/tiny-gpt2")
            .display()
            .to_string(),
        dir.join("results").display().to_string(),
    );
    let run = |extra: &[&str]| -> EvalResult {
        let mut args = vec![
            "eval", "--task", &task, "--model", &model, "--out", &results,
        ];
        args.extend_from_slice(extra);
        let out = harness(&args, &[("HARNESS_CACHE", cache.to_str().unwrap())]);
        assert!(out.status.success(), "{}", stderr(&out));
        serde_json::from_str(
            &std::fs::read_to_string(dir.join("results/tiny-gpt2/reviews.json")).unwrap(),
        )
        .unwrap()
    };
    let first = run(&[]);
    assert_eq!(first.timings.cache_hits, 0);
    let again = run(&[]);
    assert_eq!(again.timings.cache_hits, 1);
    assert_eq!(
        again.timings.tokens, 0,
        "a cached run needs no forward pass"
    );
    let scores = |r: &EvalResult| r.layers.iter().map(|l| l.score).collect::<Vec<_>>();
    assert_eq!(scores(&first), scores(&again));
    // Another pooling, BOS policy or ablation is another entry.
    for extra in [
        &["--pool", "last"][..],
        &["--bos", "never"],
        &["--ablate", "1"],
    ] {
        let r = run(extra);
        assert_eq!(
            r.timings.cache_hits, 0,
            "{extra:?} was served from the cache"
        );
        assert!(r.timings.tokens > 0);
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A loopback stand-in for the dataset viewer, serving `rows` in pages of `page`.
fn serve_rows(
    rows: Vec<serde_json::Value>,
    page: usize,
    requests: usize,
) -> (String, std::thread::JoinHandle<Vec<String>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = format!("http://{}", listener.local_addr().unwrap());
    let handle = std::thread::spawn(move || {
        let mut seen = Vec::new();
        for stream in listener.incoming().take(requests) {
            let mut stream = stream.unwrap();
            let mut line = String::new();
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            reader.read_line(&mut line).unwrap();
            loop {
                let mut h = String::new();
                reader.read_line(&mut h).unwrap();
                if h.trim().is_empty() {
                    break;
                }
            }
            let path = line.split_whitespace().nth(1).unwrap_or("").to_string();
            let offset: usize = path
                .split('&')
                .find_map(|kv| kv.strip_prefix("offset="))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            let chunk: Vec<serde_json::Value> = rows
                .iter()
                .skip(offset)
                .take(page)
                .enumerate()
                .map(|(i, r)| serde_json::json!({"row_idx": offset + i, "row": r, "truncated_cells": []}))
                .collect();
            let body =
                serde_json::json!({"features": [], "rows": chunk, "num_rows_total": rows.len()})
                    .to_string();
            let _ = write!(
                stream,
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            seen.push(path);
        }
        seen
    });
    (addr, handle)
}

#[test]
fn hugging_face_datasets_are_fetched_once_and_cached() {
    let dir = scratch("hf");
    let rows: Vec<serde_json::Value> = (0..150)
        .map(|i| {
            let good = i % 2 == 0;
            serde_json::json!({
                "sentence": if good { format!("a wonderful, moving film {i}") } else { format!("a dull and tiresome film {i}") },
                "label": i64::from(good),
                "idx": i,
            })
        })
        .collect();
    let (addr, server) = serve_rows(rows, 100, 2);
    std::fs::write(
        dir.join("glue.toml"),
        "name = \"glue-like\"\nkind = \"classification\"\n[data]\nsource = \"hf:someorg/glue-like\"\nconfig = \"sst2\"\nsplit = \"validation\"\n[labels]\ntext = \"sentence\"\ncolumn = \"label\"\nmap = { \"0\" = \"negative\", \"1\" = \"positive\" }\n",
    )
    .unwrap();
    let home = dir.join("home");
    let envs = [
        ("HARNESS_HOME", home.to_str().unwrap()),
        ("HF_DATASETS_SERVER", addr.as_str()),
    ];
    let (task, model, results) = (
        dir.join("glue.toml").display().to_string(),
        root()
            .join("tests/fixtures/tiny-qwen2")
            .display()
            .to_string(),
        dir.join("results").display().to_string(),
    );
    let args = [
        "eval",
        "--task",
        &task,
        "--model",
        &model,
        "--out",
        &results,
        "--resamples",
        "50",
    ];
    let out = harness(&args, &envs);
    assert!(out.status.success(), "{}", stderr(&out));
    let paths = server.join().unwrap();
    assert_eq!(paths.len(), 2, "two pages of 100 rows");
    assert!(paths[0].contains("dataset=someorg%2Fglue-like") && paths[0].contains("config=sst2"));
    let cached = home.join("data/hf/someorg--glue-like/sst2/validation.jsonl");
    assert_eq!(
        std::fs::read_to_string(&cached).unwrap().lines().count(),
        150
    );
    // The server is gone: a second run reads the cache.
    let out = harness(&args, &envs);
    assert!(out.status.success(), "{}", stderr(&out));

    // The shipped sst2 task without a reachable server names the dataset and `mr`.
    let out = harness(
        &[
            "eval",
            "--task",
            "sst2",
            "--model",
            root().join("tests/fixtures/tiny-qwen2").to_str().unwrap(),
        ],
        &[
            ("HARNESS_HOME", home.to_str().unwrap()),
            ("HF_DATASETS_SERVER", "http://127.0.0.1:9"),
        ],
    );
    assert_fails_with(&out, "nyu-mll/glue");
    assert!(
        stderr(&out).contains("task 'mr' can stand in"),
        "{}",
        stderr(&out)
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bad_tasks_and_data_fail_with_one_clear_line() {
    let dir = scratch("bad");
    let model = root().join("tests/fixtures/tiny-gpt2");
    let model = model.to_str().unwrap();
    let results = dir.join("results");
    let run = |task: &str| {
        harness(
            &[
                "eval",
                "--task",
                task,
                "--model",
                model,
                "--out",
                results.to_str().unwrap(),
            ],
            &[],
        )
    };
    let task = |name: &str, body: &str| -> String {
        let p = dir.join(format!("{name}.toml"));
        std::fs::write(&p, body).unwrap();
        p.display().to_string()
    };
    let head = "name = \"t\"\nkind = \"classification\"\n[data]\nsource = \"d.csv\"\n";
    std::fs::write(
        dir.join("d.csv"),
        "text,label\nhello there,a\ngood day,b\nnice one,a\nbad luck,b\n",
    )
    .unwrap();

    assert_fails_with(&run("no-such-task"), "known: austen, boolq");
    assert_fails_with(
        &run(&task("syntax", "name = \"t\"\nkind = classification\n")),
        "syntax.toml",
    );
    assert_fails_with(
        &run(&task(
            "unknown",
            &format!("{head}colour = 1\n[labels]\ntext = \"text\"\ncolumn = \"label\"\n"),
        )),
        "colour",
    );
    assert_fails_with(
        &run(&task(
            "type",
            "name = \"t\"\nkind = \"classification\"\nlimit = \"ten\"\n",
        )),
        "limit",
    );
    assert_fails_with(&run(&task("nolabels", head)), "needs a [labels] section");
    assert_fails_with(
        &run(&task(
            "column",
            &format!("{head}[labels]\ntext = \"body\"\ncolumn = \"label\"\n"),
        )),
        "no column 'body' (columns: text, label)",
    );
    std::fs::write(
        dir.join("one.csv"),
        "text,label\nhello,a\nthere,a\nfriend,a\n",
    )
    .unwrap();
    assert_fails_with(
        &run(&task("oneclass", "name = \"t\"\nkind = \"classification\"\n[data]\nsource = \"one.csv\"\n[labels]\ntext = \"text\"\ncolumn = \"label\"\n")),
        "has one class",
    );
    std::fs::write(dir.join("empty.csv"), "text,label\n").unwrap();
    assert_fails_with(
        &run(&task("empty", "name = \"t\"\nkind = \"classification\"\n[data]\nsource = \"empty.csv\"\n[labels]\ntext = \"text\"\ncolumn = \"label\"\n")),
        "has no rows",
    );
    let mut long = format!("text,label\n{},a\n", "word ".repeat(100));
    for i in 0..20 {
        long.push_str(&format!(
            "short text {i},{}\n",
            if i % 2 == 0 { "a" } else { "b" }
        ));
    }
    std::fs::write(dir.join("long.csv"), long).unwrap();
    assert_fails_with(
        &run(&task("long", "name = \"t\"\nkind = \"classification\"\n[data]\nsource = \"long.csv\"\n[labels]\ntext = \"text\"\ncolumn = \"label\"\n")),
        "more than the model's context of 64",
    );
    assert!(!results.exists(), "a failed run wrote results");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `eval` of the task file `task` on the tiny fixture `model`, results under `out`.
fn eval_tiny(model: &str, task: &Path, out: &Path, extra: &[&str]) -> Output {
    let model = root().join("tests/fixtures").join(model);
    let mut args = vec![
        "eval",
        "--task",
        task.to_str().unwrap(),
        "--model",
        model.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--no-cache",
    ];
    args.extend_from_slice(extra);
    harness(&args, &[])
}

fn read_result(path: &Path) -> EvalResult {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn settings_that_cannot_give_a_result_fail_at_once() {
    let dir = scratch("settings");
    let task = dir.join("reviews.toml");
    std::fs::write(&task, documented_example()).unwrap();
    write_reviews(&dir.join("reviews.csv"), 40);
    let results = dir.join("results");
    let fails = |task: &Path, extra: &[&str], needle: &str| {
        assert_fails_with(&eval_tiny("tiny-gpt2", task, &results, extra), needle);
    };
    fails(&task, &["--folds", "0"], "--folds is 0");
    fails(&task, &["--folds", "1"], "at least 2 folds");
    let one_fold = dir.join("one-fold.toml");
    let example = documented_example();
    assert!(example.contains("folds = 5"));
    std::fs::write(&one_fold, example.replace("folds = 5", "folds = 1")).unwrap();
    fails(&one_fold, &[], "[probe] folds");
    fails(&task, &["--resamples", "0"], "at least 20");
    fails(&task, &["--resamples", "19"], "at least 20");
    // Refused before the block search would print which blocks it ablates.
    fails(&task, &["--ablate", "99"], "numbered 1..=3");
    let austen = root().join("tasks/austen.toml");
    fails(&austen, &["--limit", "0"], "--limit 0");
    assert!(!results.exists(), "a failed run wrote results");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn eval_truncate_warns_and_counts_the_texts_it_cut() {
    let dir = scratch("truncate");
    let task = dir.join("reviews.toml");
    std::fs::write(&task, documented_example()).unwrap();
    write_reviews(&dir.join("reviews.csv"), 40);
    let mut csv = std::fs::read_to_string(dir.join("reviews.csv")).unwrap();
    csv.push_str(&format!("\"{}\",5\n", "great ".repeat(100)));
    std::fs::write(dir.join("reviews.csv"), csv).unwrap();
    let results = dir.join("results");
    let out = eval_tiny("tiny-gpt2", &task, &results, &["--truncate"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains(
            "warning: task reviews: 1 text(s) were cut to the model's context of 64 tokens"
        ),
        "{}",
        stderr(&out)
    );
    let r = read_result(&results.join("tiny-gpt2/reviews.json"));
    assert_eq!(r.info["truncated"], 1);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn classes_keep_the_values_they_list_and_count_the_rest() {
    let dir = scratch("classes");
    let mut csv = String::from("text,label\n");
    for i in 0..30 {
        let label = ["good", "bad", "meh"][i % 3];
        csv.push_str(&format!("{label} thing number {i},{label}\n"));
    }
    std::fs::write(dir.join("d.csv"), csv).unwrap();
    let task = dir.join("t.toml");
    std::fs::write(
        &task,
        "name = \"t\"\nkind = \"classification\"\n[data]\nsource = \"d.csv\"\n[labels]\ntext = \"text\"\ncolumn = \"label\"\nclasses = [\"bad\", \"good\"]\n",
    )
    .unwrap();
    let results = dir.join("results");
    let out = eval_tiny("tiny-gpt2", &task, &results, &["--folds", "2"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let r = read_result(&results.join("tiny-gpt2/t.json"));
    assert_eq!(r.task.n_items, 20);
    assert_eq!(r.info["classes"], serde_json::json!(["bad", "good"]));
    assert_eq!(r.info["dropped_rows"], 10);
    assert_eq!(r.info["dropped_labels"], serde_json::json!({"meh": 10}));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn an_empty_text_is_refused_by_row_with_or_without_bos() {
    let dir = scratch("empty-text");
    let mut csv = String::from("text,label\n");
    for i in 0..12 {
        let text = if i == 4 {
            String::new()
        } else {
            format!("text {i}")
        };
        csv.push_str(&format!("\"{text}\",{}\n", i % 2));
    }
    std::fs::write(dir.join("d.csv"), csv).unwrap();
    let task = dir.join("t.toml");
    std::fs::write(
        &task,
        "name = \"t\"\nkind = \"classification\"\n[data]\nsource = \"d.csv\"\n[labels]\ntext = \"text\"\ncolumn = \"label\"\n",
    )
    .unwrap();
    let results = dir.join("results");
    // tiny-llama prepends BOS, tiny-gpt2 does not: the same rule for both.
    for model in ["tiny-llama", "tiny-gpt2"] {
        let out = eval_tiny(model, &task, &results, &["--folds", "2"]);
        assert_fails_with(&out, "row 5: column 'text' is empty");
        assert!(!stderr(&out).contains("--bos"), "{}", stderr(&out));
    }
    assert!(!results.exists(), "a failed run wrote results");
    std::fs::remove_dir_all(&dir).unwrap();
}

fn fixture(name: &str) -> String {
    root()
        .join("tests/fixtures")
        .join(name)
        .display()
        .to_string()
}

/// Writes `body` as `dir/name` and returns its path as a string.
fn write(dir: &Path, name: &str, body: &str) -> String {
    let path = dir.join(name);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, body).unwrap();
    path.display().to_string()
}

/// Runs `harness eval` on one task and returns the result file.
fn eval_one(
    task: &str,
    model: &str,
    out: &Path,
    extra: &[&str],
    envs: &[(&str, &str)],
) -> EvalResult {
    let mut args = vec![
        "eval",
        "--task",
        task,
        "--model",
        model,
        "--out",
        out.to_str().unwrap(),
        "--resamples",
        "20",
    ];
    args.extend_from_slice(extra);
    let run = harness(&args, envs);
    assert!(run.status.success(), "{}", stderr(&run));
    let stem = Path::new(model)
        .file_stem()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    let name = harness::tasks::load(task).unwrap().spec.name;
    serde_json::from_str(
        &std::fs::read_to_string(out.join(stem).join(format!("{name}.json"))).unwrap(),
    )
    .unwrap()
}

fn scores(r: &EvalResult) -> Vec<f64> {
    r.layers.iter().map(|l| l.score).collect()
}

const SENTENCES: [&str; 6] = [
    "The cat sat on the mat.",
    "A dog slept by the fire.",
    "Stock prices fell sharply today.",
    "The market dropped at the close.",
    "She sang a song in the rain.",
    "Music filled the empty hall.",
];

/// Pairs of [`SENTENCES`] with made-up human scores, as a similarity task's CSV.
fn similarity_csv() -> String {
    let pairs = [
        (0, 1, 4.0),
        (2, 3, 4.5),
        (4, 5, 3.5),
        (0, 2, 0.5),
        (1, 4, 1.0),
        (3, 5, 0.0),
        (0, 5, 1.5),
        (2, 4, 2.0),
        (1, 3, 0.8),
    ];
    let mut csv = String::from("a,b,score\n");
    for (a, b, s) in pairs {
        csv.push_str(&format!("\"{}\",\"{}\",{s}\n", SENTENCES[a], SENTENCES[b]));
    }
    csv
}

/// Spearman per layer of the cosines of the pairs in `csv`, computed here from
/// `embed`'s vectors of [`SENTENCES`], centred by hand (each layer's mean over the
/// task's distinct texts) when asked.
fn hand_spearman(model: &str, csv: &Path, center: bool) -> Vec<f64> {
    let loaded = harness::model::source::load(model).unwrap();
    let texts: Vec<String> = SENTENCES.iter().map(|s| s.to_string()).collect();
    let pooled = harness::embeddings::encode::embed_texts(
        &loaded,
        &texts,
        harness::embeddings::pool::Pool::MeanSkipFirst,
        EvalOptions::default().encoding,
        harness::model::capture::BatchPlan::default(),
        &harness::model::Intervention::default(),
        &harness::io::progress::Progress::hidden(),
    )
    .unwrap()
    .pooled;
    let table = harness::datasets::read_table(csv, None, true).unwrap();
    let text_index = |row: usize, col: &str| {
        let text = table.text(row, col).unwrap();
        SENTENCES.iter().position(|s| *s == text).unwrap()
    };
    let gold: Vec<f64> = (0..table.len())
        .map(|r| table.number(r, "score").unwrap())
        .collect();
    let norm = |x: &[f64]| x.iter().map(|v| v * v).sum::<f64>().sqrt();
    (0..pooled.layers)
        .map(|l| {
            let v = pooled.layer(l).mapv(f64::from);
            let mean = v.mean_axis(ndarray::Axis(0)).unwrap();
            let rows: Vec<Vec<f64>> = v
                .rows()
                .into_iter()
                .map(|r| {
                    if center {
                        (&r - &mean).to_vec()
                    } else {
                        r.to_vec()
                    }
                })
                .collect();
            let cos: Vec<f64> = (0..table.len())
                .map(|r| {
                    let (a, b) = (&rows[text_index(r, "a")], &rows[text_index(r, "b")]);
                    let dot: f64 = a.iter().zip(b).map(|(x, y)| x * y).sum();
                    dot / (norm(a) * norm(b))
                })
                .collect();
            harness::stats::metrics::spearman(&cos, &gold)
        })
        .collect()
}

#[test]
fn center_subtracts_each_layers_mean_before_cosine() {
    let dir = scratch("center");
    let body = "name = \"pairs\"\nkind = \"similarity\"\n[data]\nsource = \"pairs.csv\"\n[similarity]\ntext_a = \"a\"\ntext_b = \"b\"\nscore = \"score\"\n";
    let plain = write(&dir, "plain/pairs.toml", body);
    write(&dir, "plain/pairs.csv", &similarity_csv());
    let centred = write(
        &dir,
        "centred/pairs.toml",
        &format!("center = true\n{body}"),
    );
    write(&dir, "centred/pairs.csv", &similarity_csv());
    let model = fixture("tiny-llama");
    let off = eval_one(&plain, &model, &dir.join("r1"), &["--no-cache"], &[]);
    let flag = eval_one(
        &plain,
        &model,
        &dir.join("r2"),
        &["--no-cache", "--center"],
        &[],
    );
    let toml = eval_one(&centred, &model, &dir.join("r3"), &["--no-cache"], &[]);
    assert_eq!(off.task.center, Some(false));
    assert_eq!(
        (flag.task.center, toml.task.center),
        (Some(true), Some(true))
    );
    assert_eq!(
        scores(&flag),
        scores(&toml),
        "--center and center = true disagree"
    );
    let close = |a: &[f64], b: &[f64]| a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-6);
    let csv = dir.join("plain/pairs.csv");
    for (r, center) in [(&off, false), (&flag, true)] {
        let by_hand = hand_spearman(&model, &csv, center);
        assert!(
            close(&scores(r), &by_hand),
            "center {center}: {:?} vs {by_hand:?}",
            scores(r)
        );
    }
    assert!(
        !close(&scores(&off), &scores(&flag)),
        "centring changed no layer's score"
    );
    // `--center false` overrides the task file.
    let undone = eval_one(
        &centred,
        &model,
        &dir.join("r4"),
        &["--no-cache", "--center", "false"],
        &[],
    );
    assert_eq!(scores(&undone), scores(&off));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn seed_chooses_the_subset_and_the_same_seed_repeats_it() {
    let dir = scratch("seed");
    let task_path = write(&dir, "reviews.toml", &documented_example());
    write_reviews(&dir.join("reviews.csv"), 60);
    let task = tasks::load(&task_path).unwrap();
    let opts = |limit: Option<usize>, seed: u64| tasks::TaskOptions {
        limit,
        seed,
        ..tasks::TaskOptions::default()
    };
    let texts = |limit, seed| task.texts(&opts(limit, seed)).unwrap();
    let all = texts(None, 0);
    assert_eq!(all.len(), 48);
    for seed in [0, 1, 7] {
        let expected: Vec<String> = harness::stats::sampling::subset(all.len(), Some(10), seed)
            .into_iter()
            .map(|i| all[i].clone())
            .collect();
        assert_eq!(texts(Some(10), seed), expected, "seed {seed}");
    }
    assert_ne!(texts(Some(10), 0), texts(Some(10), 1));

    // Through the command line: the embedding cache, keyed by the texts, is hit only
    // when the seed repeats.
    let cache = dir.join("cache");
    let envs = [("HARNESS_CACHE", cache.to_str().unwrap())];
    let model = fixture("tiny-gpt2");
    let run = |seed: &str| {
        eval_one(
            &task_path,
            &model,
            &dir.join("results"),
            &["--limit", "16", "--folds", "2", "--seed", seed],
            &envs,
        )
    };
    let first = run("1");
    assert_eq!((first.settings.seed, first.timings.cache_hits), (1, 0));
    let again = run("1");
    assert_eq!(again.timings.cache_hits, 1);
    assert_eq!(scores(&again), scores(&first));
    assert_eq!(
        run("2").timings.cache_hits,
        0,
        "seed 2 drew the same texts as seed 1"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A classification task over `source`, with extra `[data]` lines.
fn data_task(dir: &Path, name: &str, source: &str, data: &str, labels: &str) -> tasks::LoadedTask {
    let path = write(
        dir,
        &format!("{name}.toml"),
        &format!("name = \"{name}\"\nkind = \"classification\"\n[data]\nsource = \"{source}\"\n{data}[labels]\n{labels}"),
    );
    tasks::load(&path).unwrap()
}

fn column(task: &tasks::LoadedTask, col: &str) -> Vec<String> {
    (0..task.table.len())
        .map(|r| task.table.text(r, col).unwrap())
        .collect()
}

#[test]
fn tsv_header_format_and_file_sources_are_read_as_documented() {
    let dir = scratch("formats");
    let labels = "text = \"text\"\ncolumn = \"label\"\n";
    // TSV has no quoting: quotes and commas are part of the text.
    write(
        &dir,
        "sub/rows.tsv",
        "text\tlabel\nsay \"hi\", friend\ta\nplain words\tb\n",
    );
    let tsv = data_task(&dir, "tsv", "sub/rows.tsv", "", labels);
    assert_eq!(column(&tsv, "text"), ["say \"hi\", friend", "plain words"]);
    assert_eq!(column(&tsv, "label"), ["a", "b"]);
    let file = data_task(&dir, "file", "file:sub/rows.tsv", "", labels);
    assert_eq!(column(&file, "text"), column(&tsv, "text"));

    // Without a header the first line is data and the columns are numbered.
    write(
        &dir,
        "bare.tsv",
        "first text\ta\nsecond text\tb\nthird text\ta\n",
    );
    let bare = data_task(
        &dir,
        "bare",
        "bare.tsv",
        "header = false\n",
        "text = \"0\"\ncolumn = \"1\"\n",
    );
    assert_eq!(bare.table.columns, ["0", "1"]);
    assert_eq!(
        column(&bare, "0"),
        ["first text", "second text", "third text"]
    );
    let headed = data_task(&dir, "headed", "bare.tsv", "", labels);
    assert_eq!(
        headed.table.len(),
        2,
        "with the default header the first line names columns"
    );

    // `format` overrides the extension: CSV in a .dat file, JSON Lines in a .txt file
    // (which would otherwise be read as TSV).
    write(&dir, "rows.dat", "text,label\n\"a, quoted\",a\nnext,b\n");
    let dat = data_task(&dir, "dat", "rows.dat", "format = \"csv\"\n", labels);
    assert_eq!(column(&dat, "text"), ["a, quoted", "next"]);
    write(
        &dir,
        "rows.txt",
        "{\"text\": \"json one\", \"label\": \"a\"}\n{\"text\": \"json two\", \"label\": \"b\"}\n",
    );
    let jsonl = data_task(&dir, "jsonl", "rows.txt", "format = \"jsonl\"\n", labels);
    assert_eq!(column(&jsonl, "text"), ["json one", "json two"]);
    let err = format!(
        "{:#}",
        tasks::load(&write(&dir, "nofmt.toml", &format!("name = \"n\"\nkind = \"classification\"\n[data]\nsource = \"rows.dat\"\n[labels]\n{labels}"))).err().unwrap()
    );
    assert!(err.contains("set `format`"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn filter_keeps_exactly_the_matching_rows() {
    let dir = scratch("filter");
    let mut csv = String::from("text,book,chapter\n");
    for i in 0..12 {
        let book = ["Emma", "Persuasion", "Emma"][i % 3];
        csv.push_str(&format!("line {i},{book},{}\n", i % 4));
    }
    write(&dir, "lines.csv", &csv);
    let labels = "text = \"text\"\ncolumn = \"book\"\n";
    let all = data_task(&dir, "all", "lines.csv", "", labels);
    let expect = |keep: &dyn Fn(usize) -> bool| -> Vec<String> {
        (0..12)
            .filter(|&i| keep(i))
            .map(|i| format!("line {i}"))
            .collect()
    };
    assert_eq!(column(&all, "text"), expect(&|_| true));
    let book = data_task(
        &dir,
        "book",
        "lines.csv",
        "filter = { book = \"Persuasion\" }\n",
        labels,
    );
    assert_eq!(column(&book, "text"), expect(&|i| i % 3 == 1));
    // A number matches the CSV cell's text; every key must match.
    let both = data_task(
        &dir,
        "both",
        "lines.csv",
        "filter = { book = \"Emma\", chapter = 2 }\n",
        labels,
    );
    assert_eq!(column(&both, "text"), expect(&|i| i % 3 != 1 && i % 4 == 2));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn dedupe_drops_repeats_and_conflicting_texts() {
    let dir = scratch("dedupe");
    write(
        &dir,
        "rows.csv",
        "text,label\ngreat,pos\nawful,neg\ngreat,pos\nfine,pos\nfine,neg\nlovely,pos\nbad,neg\nawful,neg\n",
    );
    let labels = "text = \"text\"\ncolumn = \"label\"\n";
    let texts = |t: &tasks::LoadedTask| t.texts(&tasks::TaskOptions::default()).unwrap();
    let kept = data_task(&dir, "kept", "rows.csv", "", labels);
    assert_eq!(
        texts(&kept),
        ["great", "awful", "great", "fine", "fine", "lovely", "bad", "awful"]
    );
    let deduped = data_task(
        &dir,
        "deduped",
        "rows.csv",
        "",
        &format!("{labels}dedupe = true\n"),
    );
    assert_eq!(texts(&deduped), ["great", "awful", "lovely", "bad"]);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn answer_map_turns_answer_values_into_choices() {
    let dir = scratch("answers");
    let questions = [
        "Is the sky blue",
        "Is fire cold",
        "Can birds fly",
        "Is ice hot",
        "Do cats bark",
        "Is the sea wet",
    ];
    let (mut coded, mut direct) = (String::from("question,label\n"), String::new());
    for (i, q) in questions.iter().enumerate() {
        let yes = i % 3 != 0;
        coded.push_str(&format!("{q},{}\n", u8::from(yes)));
        direct.push_str(&format!(
            "{{\"question\": \"{q}\", \"answer\": \"{}\"}}\n",
            if yes { " yes" } else { " no" }
        ));
    }
    write(&dir, "coded.csv", &coded);
    write(&dir, "direct.jsonl", &direct);
    let task = |name: &str, source: &str, answer: &str, map: &str| {
        let path = write(
            &dir,
            &format!("{name}.toml"),
            &format!("name = \"{name}\"\nkind = \"generation\"\n[data]\nsource = \"{source}\"\n[generation]\nmode = \"choice\"\nprompt = \"Q: {{question}}? A:\"\nchoices = [\" yes\", \" no\"]\nanswer = \"{answer}\"\n{map}"),
        );
        tasks::load(&path).unwrap()
    };
    let tasks = [
        task(
            "mapped",
            "coded.csv",
            "label",
            "answer_map = { \"1\" = \" yes\", \"0\" = \" no\" }\n",
        ),
        task("direct", "direct.jsonl", "answer", ""),
        task(
            "swapped",
            "coded.csv",
            "label",
            "answer_map = { \"1\" = \" no\", \"0\" = \" yes\" }\n",
        ),
    ];
    let model = harness::model::source::load(&fixture("tiny-llama")).unwrap();
    let opts = EvalOptions {
        resamples: 20,
        use_cache: false,
        quiet: true,
        ..EvalOptions::default()
    };
    let r = evaluate(&model, &tasks, &opts).unwrap();
    assert_eq!(r[0].info["answer_counts"], serde_json::json!([4, 2]));
    assert_eq!(
        scores(&r[0]),
        scores(&r[1]),
        "the map and the written-out answers disagree"
    );
    for (mapped, swapped) in scores(&r[0]).iter().zip(scores(&r[2])) {
        assert!(
            (mapped + swapped - 1.0).abs() < 1e-12,
            "{mapped} + {swapped}"
        );
    }
    // Four answers are " yes" and two " no": accuracy is 0.5 at no layer, so the swap shows.
    assert!(scores(&r[0]).iter().all(|&s| s != 0.5));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The documented example task with `rows` reviews in `dir`; returns the task file.
fn reviews_task(dir: &Path, rows: usize) -> String {
    std::fs::write(dir.join("reviews.toml"), documented_example()).unwrap();
    write_reviews(&dir.join("reviews.csv"), rows);
    dir.join("reviews.toml").display().to_string()
}

/// A run stopped at a pause point; dropping it kills it with SIGKILL and reaps it (so
/// that it is gone from /proc), also when a test fails while it is paused.
struct Paused(Child);

impl Drop for Paused {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `harness` with `HARNESS_PAUSE_AT=point` and returns it once it has stopped
/// there.
fn paused_at(point: &str, args: &[&str], envs: &[(&str, &str)]) -> Paused {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_harness"));
    cmd.args(args)
        .arg("--quiet")
        .env("HARNESS_PAUSE_AT", point)
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("run harness");
    let mut said = String::new();
    for line in BufReader::new(child.stderr.take().unwrap()).lines() {
        let line = line.unwrap();
        if line.starts_with("paused at") {
            return Paused(child);
        }
        said.push_str(&line);
    }
    let status = child.wait().unwrap();
    panic!("harness ended ({status}) before {point}: {said}");
}

/// Temporary files of interrupted writes anywhere under `dir`.
fn partials(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            found.extend(partials(&path));
        } else if entry.file_name().to_string_lossy().contains(".partial-") {
            found.push(path);
        }
    }
    found
}

#[test]
fn a_replaced_registry_model_gets_its_own_cache_entries() {
    let dir = scratch("replaced");
    let task = reviews_task(&dir, 40);
    let (home, cache, out) = (dir.join("home"), dir.join("cache"), dir.join("out"));
    let asset = |alias: &str| harness::io::assets::find_model(alias).unwrap().unwrap();
    let installed = home.join(&asset("smollm2").file);
    std::fs::create_dir_all(installed.parent().unwrap()).unwrap();
    let run = || -> (EvalResult, String) {
        let envs = [
            ("HARNESS_HOME", home.to_str().unwrap()),
            ("HARNESS_CACHE", cache.to_str().unwrap()),
        ];
        let o = harness(
            &[
                "eval",
                "--task",
                &task,
                "--model",
                "smollm2",
                "--out",
                out.to_str().unwrap(),
            ],
            &envs,
        );
        assert!(o.status.success(), "{}", stderr(&o));
        let json = std::fs::read_to_string(out.join("smollm2/reviews.json")).unwrap();
        (serde_json::from_str(&json).unwrap(), stderr(&o))
    };
    let real = harness::io::assets::harness_home().unwrap();
    std::os::unix::fs::symlink(real.join(&asset("smollm2").file), &installed).unwrap();
    let (first, _) = run();
    assert_eq!(first.layers.len(), 31);
    // Someone puts another model where the registry's file was.
    std::fs::remove_file(&installed).unwrap();
    std::os::unix::fs::symlink(real.join(&asset("gemma3").file), &installed).unwrap();
    let (second, warning) = run();
    assert_eq!(
        second.timings.cache_hits, 0,
        "served the old model's vectors"
    );
    assert_eq!(second.model.num_layers, 18);
    assert_eq!(second.layers.len(), 19, "the old model's layers");
    assert_eq!(second.model.fingerprint, asset("gemma3").sha256);
    assert!(
        warning.contains("is not the file the registry names"),
        "{warning}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_second_run_on_the_same_results_is_refused_while_the_first_runs() {
    let dir = scratch("lock");
    let task = reviews_task(&dir, 40);
    let cache = dir.join("cache");
    let model = root()
        .join("tests/fixtures/tiny-gpt2")
        .display()
        .to_string();
    let out = dir.join("results").display().to_string();
    let args = ["eval", "--task", &task, "--model", &model, "--out", &out];
    let envs = [("HARNESS_CACHE", cache.to_str().unwrap())];
    let first = paused_at("forward", &args, &envs);
    assert_fails_with(&harness(&args, &envs), "is writing");
    drop(first);
    // The lock of a killed run is released with it.
    let again = harness(&args, &envs);
    assert!(again.status.success(), "{}", stderr(&again));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_run_killed_at_any_point_reruns_to_the_uninterrupted_result() {
    let dir = scratch("faults");
    let args = |run: &Path| -> Vec<String> {
        let out = run.join("out").display().to_string();
        [
            "eval",
            "--model",
            "smollm2",
            "--task",
            "mr",
            "--limit",
            "60",
            "--folds",
            "2",
            "--resamples",
            "50",
            "--out",
            &out,
        ]
        .map(String::from)
        .to_vec()
    };
    let eval = |run: &Path| -> serde_json::Value {
        let args = args(run);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let o = harness(
            &args,
            &[("HARNESS_CACHE", run.join("cache").to_str().unwrap())],
        );
        assert!(o.status.success(), "{}", stderr(&o));
        let json = std::fs::read_to_string(run.join("out/smollm2/mr.json")).unwrap();
        let mut v: serde_json::Value = serde_json::from_str(&json).unwrap();
        let fields = v.as_object_mut().unwrap();
        fields.remove("timings").unwrap();
        fields.remove("created").unwrap();
        v
    };
    let uninterrupted = eval(&dir.join("whole"));
    for point in ["forward", "write:.safetensors", "write:.json"] {
        let run = dir.join(point.replace([':', '.'], "-"));
        let args = args(&run);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let cache = run.join("cache");
        let child = paused_at(point, &args, &[("HARNESS_CACHE", cache.to_str().unwrap())]);
        assert_eq!(
            partials(&run).is_empty(),
            point == "forward",
            "{point}: {:?}",
            partials(&run)
        );
        drop(child);
        assert!(!run.join("out/smollm2/mr.json").exists());
        assert_eq!(eval(&run), uninterrupted, "rerun after a kill at {point}");
        assert_eq!(partials(&run), Vec::<PathBuf>::new(), "after {point}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
