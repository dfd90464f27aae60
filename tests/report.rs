//! `harness report` end to end on the committed results (tests/fixtures/results,
//! real small runs of smollm2 and gemma3): every file written, the same bytes on a
//! second run but for the one `generated:` line, bad files skipped with a warning
//! naming them, and an empty or missing results directory an error that writes nothing.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn report(results: &Path, out: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_harness"))
        .args(["report", "--results"])
        .arg(results)
        .arg("--out")
        .arg(out)
        .env("RUST_BACKTRACE", "1")
        .output()
        .expect("run harness")
}

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/results")
}

/// A fresh scratch directory per test.
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("harness-report-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Every file under `dir`, relative to it, sorted.
fn files(dir: &Path) -> Vec<PathBuf> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(root, &path, out);
            } else {
                out.push(path.strip_prefix(root).unwrap().to_path_buf());
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

/// Copies the fixture results into a scratch directory, to add bad files to.
fn copy_fixtures(to: &Path) {
    for file in files(&fixtures()) {
        let target = to.join(&file);
        std::fs::create_dir_all(target.parent().unwrap()).unwrap();
        std::fs::copy(fixtures().join(&file), target).unwrap();
    }
}

const EXPECTED: [&str; 10] = [
    "analyze.csv",
    "index.html",
    "leaderboard.md",
    "plots/analyze-gemma3.svg",
    "plots/analyze-smollm2.svg",
    "plots/task-austen.svg",
    "plots/task-boolq-retrieval.svg",
    "plots/task-lee-sts.svg",
    "plots/task-mr.svg",
    "results.csv",
];

fn assert_full_report(out: &Path) {
    let written: Vec<PathBuf> = files(out);
    let expected: Vec<PathBuf> = EXPECTED.iter().map(PathBuf::from).collect();
    assert_eq!(written, expected);
}

#[test]
fn report_on_the_fixtures_writes_every_file() {
    let out = scratch("all").join("report");
    let run = report(&fixtures(), &out);
    assert!(run.status.success(), "{}", stderr(&run));
    assert_eq!(stderr(&run), "", "the fixtures should give no warnings");
    assert_full_report(&out);
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert_eq!(stdout.lines().count(), EXPECTED.len());

    let md = std::fs::read_to_string(out.join("leaderboard.md")).unwrap();
    assert!(
        md.contains("| mr | classification | accuracy ↑ | mean | smollm2 | ablated in block 12 |")
    );
    assert!(md.contains("| smollm2 | baseline | 4 |"));
    let html = std::fs::read_to_string(out.join("index.html")).unwrap();
    assert!(!html.contains("http"), "index.html must load nothing");
    assert_eq!(html.matches("<svg").count(), 6);
    for svg in EXPECTED.iter().filter(|f| f.ends_with(".svg")) {
        let text = std::fs::read_to_string(out.join(svg)).unwrap();
        assert!(
            text.starts_with("<svg") && text.contains("<polyline"),
            "{svg}"
        );
    }
}

#[test]
fn results_csv_has_one_row_per_model_task_run_and_layer() {
    let out = scratch("csv");
    let run = report(&fixtures(), &out);
    assert!(run.status.success(), "{}", stderr(&run));
    let mut layers = 0;
    for file in files(&fixtures()) {
        let json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(fixtures().join(&file)).unwrap())
                .unwrap();
        if json["schema"] == "harness.eval/1" {
            layers += json["layers"].as_array().unwrap().len();
        }
    }
    let csv = std::fs::read_to_string(out.join("results.csv")).unwrap();
    assert_eq!(csv.lines().count(), 1 + layers);
}

/// A file's lines without the one that holds the timestamps.
fn without_generated(text: &str) -> Vec<&str> {
    text.lines()
        .filter(|l| !l.starts_with("generated: ") && !l.starts_with("<p id=\"generated\">"))
        .collect()
}

#[test]
fn a_second_run_differs_only_in_the_generated_line() {
    let dir = scratch("twice");
    let (first, second) = (dir.join("first"), dir.join("second"));
    for out in [&first, &second] {
        let run = report(&fixtures(), out);
        assert!(run.status.success(), "{}", stderr(&run));
    }
    for file in files(&first) {
        let a = std::fs::read_to_string(first.join(&file)).unwrap();
        let b = std::fs::read_to_string(second.join(&file)).unwrap();
        if file.ends_with("leaderboard.md") || file.ends_with("index.html") {
            assert_eq!(
                a.lines().count() - without_generated(&a).len(),
                1,
                "{file:?}"
            );
            assert_eq!(without_generated(&a), without_generated(&b), "{file:?}");
        } else {
            assert!(a == b, "{file:?} differs between runs");
        }
    }
}

#[test]
fn bad_files_are_skipped_with_a_warning_naming_them() {
    let dir = scratch("bad");
    let results = dir.join("results");
    copy_fixtures(&results);
    let corrupt = results.join("smollm2/corrupt.json");
    std::fs::write(&corrupt, "{\"schema\": \"harness.eval/1\", \"model\": ").unwrap();
    let mr = std::fs::read_to_string(results.join("gemma3/mr.json")).unwrap();
    let future = results.join("gemma3/future.json");
    std::fs::write(&future, mr.replace("harness.eval/1", "harness.eval/2")).unwrap();
    let out = dir.join("report");

    let run = report(&results, &out);
    assert!(run.status.success(), "{}", stderr(&run));
    let err = stderr(&run);
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 2, "{err}");
    assert!(lines[0].starts_with(&format!("warning: skipping {}: ", future.display())));
    assert!(lines[0].contains("harness.eval/2"), "{err}");
    assert!(lines[1].starts_with(&format!("warning: skipping {}: ", corrupt.display())));
    assert!(lines[1].contains("not valid JSON"), "{err}");
    assert_full_report(&out);
}

/// Asserts a clean failure: non-zero exit, the last stderr line one `error:` line
/// naming `needle`, and nothing written.
fn assert_fails_with(run: &Output, needle: &str, out: &Path) {
    let err = stderr(run);
    assert!(!run.status.success(), "expected failure: {err}");
    let last = err.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("error: ") && last.contains(needle),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
    assert!(!out.exists(), "nothing may be written on failure");
}

#[test]
fn an_empty_or_missing_results_directory_is_an_error_that_writes_nothing() {
    let dir = scratch("empty");
    let empty = dir.join("results");
    std::fs::create_dir_all(&empty).unwrap();
    let out = dir.join("report");

    let run = report(&empty, &out);
    assert_fails_with(&run, "no harness.eval/1 or harness.analyze/1 results", &out);
    assert_eq!(stderr(&run).lines().count(), 1);

    let run = report(&dir.join("missing"), &out);
    assert_fails_with(&run, "does not exist", &out);
    assert_eq!(stderr(&run).lines().count(), 1);

    std::fs::write(empty.join("broken.json"), "not json").unwrap();
    let run = report(&empty, &out);
    assert_fails_with(&run, "no harness.eval/1 or harness.analyze/1 results", &out);
    assert!(stderr(&run).starts_with("warning: skipping "));
}

#[test]
fn results_that_contradict_themselves_are_skipped_by_name() {
    let dir = scratch("invalid");
    let results = dir.join("results");
    copy_fixtures(&results);
    let mr: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(results.join("gemma3/mr.json")).unwrap())
            .unwrap();
    let bad = |name: &str, edit: &dyn Fn(&mut serde_json::Value)| {
        let mut r = mr.clone();
        edit(&mut r);
        let path = results.join(format!("gemma3/{name}.json"));
        std::fs::write(&path, r.to_string()).unwrap();
        path
    };
    let bad_files = [
        (
            bad("a-peak", &|r| r["peak"]["layer"] = 99.into()),
            "peak layer 99",
        ),
        (
            bad("b-empty", &|r| r["layers"] = serde_json::json!([])),
            "no layers",
        ),
        (
            bad("c-gap", &|r| {
                r["layers"].as_array_mut().unwrap().remove(3);
            }),
            "layer 4 where layer 3",
        ),
    ];
    let out = dir.join("report");
    let run = report(&results, &out);
    assert!(run.status.success(), "{}", stderr(&run));
    let err = stderr(&run);
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), bad_files.len(), "{err}");
    for ((path, why), line) in bad_files.iter().zip(&lines) {
        assert!(
            line.starts_with(&format!("warning: skipping {}: ", path.display())),
            "{err}"
        );
        assert!(line.contains(why), "expected '{why}' in: {line}");
    }
    assert_full_report(&out);
    std::fs::remove_dir_all(&dir).unwrap();
}
