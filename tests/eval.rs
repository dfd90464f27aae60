//! `harness eval` end to end: every shipped task on a small slice of both shipped
//! models, a task written from the documentation on a user's own file, the embedding
//! cache, Hugging Face datasets over a loopback server, and bad input.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use harness::eval::{evaluate, EvalOptions, EvalResult};
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
    // The file format round-trips.
    let json = serde_json::to_string(r).unwrap();
    let back: EvalResult = serde_json::from_str(&json).unwrap();
    assert_eq!(back.layers.len(), layers);
}

/// Every shipped task (but sst2, which needs the network) on a small slice.
fn shipped_tasks_run_on(model: &str) {
    let loaded = harness::loader::load(model).unwrap();
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
        if tasks[0].spec.kind.is_embedding() {
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

#[test]
fn a_task_written_from_the_docs_runs_on_a_users_file() {
    let dir = scratch("docs");
    std::fs::write(dir.join("reviews.toml"), documented_example()).unwrap();
    write_reviews(&dir.join("reviews.csv"), 60);
    let out_dir = dir.join("results");
    let out = harness(
        &[
            "eval",
            "--task",
            dir.join("reviews.toml").to_str().unwrap(),
            "--model",
            root().join("tests/fixtures/tiny-llama").to_str().unwrap(),
            "--out",
            out_dir.to_str().unwrap(),
            "--no-cache",
        ],
        &[],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("<- peak") && stdout.contains("paper's prediction"),
        "{stdout}"
    );
    let r: EvalResult = serde_json::from_str(
        &std::fs::read_to_string(out_dir.join("tiny-llama/reviews.json")).unwrap(),
    )
    .unwrap();
    check(&r, 4);
    assert_eq!(r.task.n_items, 48, "the 12 three-star reviews are dropped");
    assert_eq!(r.info["dropped_rows"], 12);
    assert_eq!(r.info["classes"], serde_json::json!(["bad", "good"]));
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
    let model = harness::loader::load("smollm2").unwrap();
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
