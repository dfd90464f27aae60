//! `harness sweep` end to end on tiny fixture models: units run once and are skipped
//! when complete, a half-written or mismatching result is run again, a failing unit
//! does not stop the others, shards split the units, revisions stay apart, and the
//! emitted jobs are refused for bad settings. The real scheduler is exercised by
//! scripts/slurm_check.sh.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn harness(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_harness"))
        .args(args)
        .env_remove("SLURM_ARRAY_TASK_ID")
        .env_remove("JOB_COMPLETION_INDEX")
        .output()
        .expect("run harness")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("harness-sweep-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A copy of a tiny fixture model at `to`.
fn copy_model(fixture: &str, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(root().join("tests/fixtures").join(fixture)).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
}

fn write_sweep(dir: &Path, models: &str) -> PathBuf {
    let path = dir.join("sweep.toml");
    let text = format!(
        "tasks = [\"mr\", \"tweets\"]\n\n[settings]\nlimit = 30\ntruncate = true\nresamples = 100\n\n{models}"
    );
    std::fs::write(&path, text).unwrap();
    path
}

fn run(sweep: &Path, extra: &[&str]) -> Output {
    let mut args = vec!["--quiet", "sweep", "run", sweep.to_str().unwrap()];
    args.extend_from_slice(extra);
    harness(&args)
}

fn model_name(path: &Path) -> String {
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    v["model"]["name"].as_str().unwrap().to_string()
}

#[test]
fn units_run_once_and_only_what_is_missing_or_stale_runs_again() {
    let dir = scratch("resume");
    copy_model("tiny-llama", &dir.join("tiny-llama"));
    let qwen = root().join("tests/fixtures/tiny-qwen2");
    let sweep = write_sweep(
        &dir,
        &format!(
            "[[models]]\nmodel = \"tiny-llama\"\n\n[[models]]\nmodel = \"{}\"\n\n[[models]]\nmodel = \"missing-model\"\n",
            qwen.display()
        ),
    );
    let results = dir.join("results");
    let (llama, qwen) = (results.join("tiny-llama"), results.join("tiny-qwen2"));

    // The missing model fails; the others run all the same, and the exit code says so.
    let out = run(&sweep, &[]);
    assert!(!out.status.success());
    let text = stdout(&out);
    assert!(
        text.contains("shard 0/1: 2 ran, 0 complete before, 1 failed"),
        "{text}"
    );
    assert!(text.contains("unit 2 (missing-model): failed: "), "{text}");
    let err = stderr(&out);
    assert!(
        err.contains("error: 1 of the shard's units failed: unit 2 (missing-model)"),
        "{err}"
    );
    assert_eq!(
        err.lines().filter(|l| l.starts_with("error:")).count(),
        1,
        "{err}"
    );
    for task in ["mr", "tweets"] {
        assert_eq!(
            model_name(&llama.join(format!("{task}.json"))),
            "tiny-llama"
        );
        assert!(qwen.join(format!("{task}.json")).is_file());
    }
    std::fs::remove_file(dir.join("sweep.toml")).unwrap();
    let sweep = write_sweep(
        &dir,
        &format!(
            "[[models]]\nmodel = \"tiny-llama\"\n\n[[models]]\nmodel = \"{}\"\n",
            root().join("tests/fixtures/tiny-qwen2").display()
        ),
    );
    let out = run(&sweep, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("0 ran, 2 complete before, 0 failed"),
        "{}",
        stdout(&out)
    );

    // A half-written file runs its task again, and only it.
    let mr = std::fs::read(llama.join("mr.json")).unwrap();
    let tweets = std::fs::read_to_string(llama.join("tweets.json")).unwrap();
    std::fs::write(llama.join("tweets.json"), &tweets[..tweets.len() / 2]).unwrap();
    let out = run(&sweep, &[]);
    let text = stdout(&out);
    assert!(text.contains("tweets.json is not a result"), "{text}");
    assert!(text.contains("1 ran, 1 complete before"), "{text}");
    assert_eq!(std::fs::read(llama.join("mr.json")).unwrap(), mr);
    assert_eq!(model_name(&llama.join("tweets.json")), "tiny-llama");

    // A file run with other settings runs again.
    let edited = std::fs::read_to_string(qwen.join("mr.json"))
        .unwrap()
        .replace("\"seed\": 0", "\"seed\": 7");
    std::fs::write(qwen.join("mr.json"), edited).unwrap();
    let text = stdout(&run(&sweep, &[]));
    assert!(text.contains("mr.json was run with another seed"), "{text}");
    // Pooling the sweep leaves to the task is the task's own (mean for a probe).
    let edited = std::fs::read_to_string(qwen.join("tweets.json"))
        .unwrap()
        .replace("\"pool\": \"mean\"", "\"pool\": \"last\"");
    std::fs::write(qwen.join("tweets.json"), edited).unwrap();
    let text = stdout(&run(&sweep, &[]));
    assert!(
        text.contains("tweets.json was run with another pool"),
        "{text}"
    );

    // Other model files (a changed tokenizer config) run every task again.
    let config = dir.join("tiny-llama/tokenizer_config.json");
    let mut bytes = std::fs::read(&config).unwrap();
    bytes.push(b'\n');
    std::fs::write(&config, bytes).unwrap();
    let text = stdout(&run(&sweep, &[]));
    assert!(
        text.contains("the results of tiny-llama come from other model files"),
        "{text}"
    );
    assert!(text.contains("1 ran, 1 complete before"), "{text}");
    assert!(stdout(&run(&sweep, &[])).contains("0 ran, 2 complete before"));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn shards_split_the_units_and_revisions_stay_apart() {
    let dir = scratch("shards");
    for rev in ["step1", "step2", "step3"] {
        copy_model("tiny-llama", &dir.join("ckpts").join(rev));
    }
    let sweep = write_sweep(
        &dir,
        "[analyze]\nlimit = 4\nmax_tokens = 32\n\n[[models]]\nname = \"tiny\"\nmodel = \"ckpts/{revision}\"\nrevisions = [\"step1\", \"step2\", \"step3\"]\n",
    );
    let plan = stdout(&harness(&["sweep", "plan", sweep.to_str().unwrap()]));
    assert!(
        plan.contains("3 unit(s) x 2 task(s) (mr, tweets)"),
        "{plan}"
    );
    assert!(plan.contains("   1  tiny@step2  (--model "), "{plan}");
    assert!(plan.contains("results/tiny_step2/tweets.json"), "{plan}");
    assert!(plan.contains("results/tiny_step2/analyze.json"), "{plan}");

    let out = run(&sweep, &["--shard", "1/2"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let results = dir.join("results");
    assert!(!results.join("tiny_step1").exists());
    assert!(!results.join("tiny_step3").exists());
    assert_eq!(
        model_name(&results.join("tiny_step2/mr.json")),
        "tiny@step2"
    );

    // Slurm's index and count from the environment.
    let out = Command::new(env!("CARGO_BIN_EXE_harness"))
        .args(["--quiet", "sweep", "run", sweep.to_str().unwrap()])
        .env("SLURM_ARRAY_TASK_ID", "0")
        .env("SLURM_ARRAY_TASK_COUNT", "2")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("shard 0/2: 2 ran"),
        "{}",
        stdout(&out)
    );
    assert_eq!(
        model_name(&results.join("tiny_step3/tweets.json")),
        "tiny@step3"
    );
    assert_eq!(
        model_name(&results.join("tiny_step1/analyze.json")),
        "tiny@step1"
    );

    // The report reads the checkpoints as one model across training.
    let report = dir.join("report");
    let out = harness(&[
        "report",
        "--results",
        results.to_str().unwrap(),
        "--out",
        report.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    for figure in [
        "training-tiny-mr.svg",
        "training-tiny-tweets.svg",
        "training-tiny-analyze.svg",
    ] {
        let svg = std::fs::read_to_string(report.join("plots").join(figure)).unwrap();
        assert!(svg.contains("training step"), "{figure}");
    }
    let page = std::fs::read_to_string(report.join("index.html")).unwrap();
    assert!(page.contains("Across training checkpoints"));
    assert!(page.contains("tiny@step3"));

    let out = harness(&["sweep", "run", sweep.to_str().unwrap(), "--shard", "2/2"]);
    assert!(!out.status.success());
    assert_eq!(
        stderr(&out).trim(),
        "error: --shard 2/2: shard index 2 is not below the count 2"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn emit_writes_the_job_and_refuses_bad_settings() {
    let dir = scratch("emit");
    let sweep = write_sweep(
        &dir,
        "[[models]]\nmodel = \"smollm2\"\n[[models]]\nmodel = \"gemma3\"\n",
    );
    let sweep = sweep.to_str().unwrap();
    let job = dir.join("job.sbatch");
    let out = harness(&[
        "sweep",
        "emit",
        "slurm",
        sweep,
        "--out",
        job.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let script = std::fs::read_to_string(&job).unwrap();
    assert!(script.contains("#SBATCH --array=0-1\n"), "{script}");
    assert!(
        dir.join("results/logs").is_dir(),
        "Slurm needs the log directory"
    );
    let out = harness(&[
        "sweep",
        "emit",
        "k8s",
        sweep,
        "--image",
        "h:1",
        "--max-parallel",
        "1",
    ]);
    let manifest: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(manifest["spec"]["parallelism"], 1);

    for (args, needle) in [
        (
            vec!["slurm", sweep, "--shards", "3"],
            "--shards 3: the sweep has 2 unit(s)",
        ),
        (vec!["k8s", sweep, "--image", " "], "--image is empty"),
        (vec!["k8s", sweep], "emit k8s needs --image"),
        (
            vec!["slurm", "/nonexistent/sweep.toml"],
            "cannot read sweep file",
        ),
    ] {
        let mut all = vec!["sweep", "emit"];
        all.extend(args);
        let out = harness(&all);
        assert!(!out.status.success());
        let err = stderr(&out);
        assert!(err.contains(needle), "{err}");
        assert_eq!(err.lines().count(), 1, "{err}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
