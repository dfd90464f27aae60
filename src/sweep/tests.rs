//! Tests of sweep files, plans, shards and the emitted jobs.

use std::path::{Path, PathBuf};

use super::emit::{self, Kubernetes, Resources, Slurm};
use super::run::{select_shard, Shard};
use super::*;

fn sweep(text: &str) -> Result<Sweep> {
    Sweep::parse(text, Path::new("runs/sweep.toml"))
}

fn error(text: &str) -> String {
    format!("{:#}", sweep(text).unwrap_err())
}

const MODELS: &str = r#"
tasks = ["mr", "lee-sts"]

[[models]]
model = "smollm2"

[[models]]
model = "hf:EleutherAI/pythia-70m"
revisions = ["step1000", "step2000", "step143000"]

[[models]]
model = "ckpts/{revision}"
name = "tiny"
revisions = ["a", "b"]
"#;

#[test]
fn the_plan_is_models_then_revisions_in_file_order() {
    let s = sweep(MODELS).unwrap();
    let units = s.plan().unwrap();
    let names: Vec<&str> = units.iter().map(|u| u.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "smollm2",
            "EleutherAI--pythia-70m@step1000",
            "EleutherAI--pythia-70m@step2000",
            "EleutherAI--pythia-70m@step143000",
            "tiny@a",
            "tiny@b",
        ]
    );
    assert!(units.iter().enumerate().all(|(i, u)| u.index == i));
    assert_eq!(units[1].model, "hf:EleutherAI/pythia-70m@step1000");
    assert_eq!(units[1].revision.as_deref(), Some("step1000"));
    assert_eq!(units[4].model, "runs/ckpts/a");
    assert_eq!(units[0].model, "smollm2", "an alias is not a path");
    assert_eq!(
        units[1].outputs,
        [
            PathBuf::from("runs/results/EleutherAI--pythia-70m_step1000/mr.json"),
            PathBuf::from("runs/results/EleutherAI--pythia-70m_step1000/lee-sts.json"),
        ]
    );
    assert_eq!(units[0].analysis, None);
    // The same file, the same plan.
    assert_eq!(sweep(MODELS).unwrap().plan().unwrap(), units);
}

#[test]
fn outputs_follow_dtype_ablation_and_analyze() {
    let with = |settings: &str| {
        let text = format!(
            "tasks = [\"mr\"]\nresults = \"out\"\n[settings]\n{settings}\n[analyze]\nlimit = 4\n[[models]]\nmodel = \"smollm2\"\n"
        );
        sweep(&text).unwrap().plan().unwrap().remove(0)
    };
    let unit = with("dtype = \"bf16\"\nablate = \"12\"");
    assert_eq!(
        unit.outputs,
        [PathBuf::from("runs/out/smollm2/mr.ablate-12.bf16.json")]
    );
    assert_eq!(
        unit.analysis,
        Some(PathBuf::from("runs/out/smollm2/analyze.json"))
    );
    let unit = with("ablate = \"auto\"");
    assert_eq!(
        unit.outputs,
        [PathBuf::from("runs/out/smollm2/mr.ablate-*.json")]
    );
    // CUDA defaults to bf16, as `harness eval` does.
    let unit = with("device = \"cuda\"");
    assert_eq!(
        unit.outputs,
        [PathBuf::from("runs/out/smollm2/mr.bf16.json")]
    );
}

#[test]
fn bad_sweep_files_are_one_line_errors() {
    let model = "[[models]]\nmodel = \"smollm2\"\n";
    let cases = [
        (format!("tasks = [\"mr\"]\n{model}colour = 1\n"), "line 4"),
        (
            format!("tasks = [\"mr\"]\n[settings]\nlimt = 3\n{model}"),
            "unknown field `limt`",
        ),
        (model.to_string(), "missing field `tasks`"),
        (format!("tasks = []\n{model}"), "`tasks` is empty"),
        ("tasks = [\"mr\"]\n".to_string(), "no [[models]]"),
        (
            format!("tasks = [\"nope\"]\n{model}"),
            "unknown task 'nope'",
        ),
        (format!("tasks = [\"mr\", \"mr\"]\n{model}"), "listed twice"),
        (
            format!("tasks = [\"missing.toml\"]\n{model}"),
            "missing.toml",
        ),
        (
            format!("tasks = [\"mr\"]\n[settings]\ndtype = \"f8\"\n{model}"),
            "dtype",
        ),
        (
            format!("tasks = [\"mr\"]\n[settings]\nablate = \"0\"\n{model}"),
            "invalid --ablate",
        ),
        (
            format!("tasks = [\"mr\"]\n[settings]\nlimit = 0\n{model}"),
            "--limit 0",
        ),
        (
            format!("tasks = [\"mr\"]\n[settings]\nresamples = 3\n{model}"),
            "--resamples 3",
        ),
        (
            format!("tasks = [\"mr\"]\n[settings]\nlimit = -1\n{model}"),
            "line 3",
        ),
        (
            format!("tasks = [\"mr\"]\n[analyze]\nlimit = 0\n{model}"),
            "no prompts",
        ),
        (
            "tasks = [\"mr\"]\n[[models]]\nmodel = \"a/b.gguf\"\nrevisions = [\"x\"]\n".into(),
            "holds no {revision}",
        ),
        (
            "tasks = [\"mr\"]\n[[models]]\nmodel = \"c/{revision}\"\n".into(),
            "lists no `revisions`",
        ),
        (
            "tasks = [\"mr\"]\n[[models]]\nmodel = \"c/{revision}\"\nrevisions = [\"x\"]\n".into(),
            "give it a `name`",
        ),
        (
            "tasks = [\"mr\"]\n[[models]]\nmodel = \"hf:a/b@main\"\nrevisions = [\"x\"]\n".into(),
            "one or the other",
        ),
        (
            "tasks = [\"mr\"]\n[[models]]\nmodel = \"hf:a/b\"\nrevisions = [\"x\", \"x\"]\n".into(),
            "repeated",
        ),
        (
            "tasks = [\"mr\"]\n[[models]]\nmodel = \"hf:a/b\"\nrevisions = [\"../x\"]\n".into(),
            "one path segment",
        ),
        (
            "tasks = [\"mr\"]\n[[models]]\nmodel = \"hf:a/b\"\nname = \"a b\"\n".into(),
            "model name \"a b\"",
        ),
        (
            format!("tasks = [\"mr\"]\n{model}{model}"),
            "would both write results as smollm2",
        ),
        (
            "tasks = [\"mr\"]\n[[models]]\nmodel = \"smollm2\"\n[[models]]\nmodel = \"llama\"\n"
                .into(),
            "give one a `name`",
        ),
        (
            "tasks = [\"mr\"]\n[[models]]\nmodel = \"hf:a/b@c\"\n[[models]]\nmodel = \"d/a--b_c.gguf\"\n"
                .into(),
            "would both write results as a--b_c",
        ),
        ("tasks = [\"mr\"\n".into(), "line 1"),
    ];
    for (text, needle) in cases {
        let e = error(&text);
        assert!(e.contains(needle), "{text:?}: {e}");
        assert!(!e.contains('\n'), "{text:?}: not one line: {e}");
    }
}

#[test]
fn shards_come_from_the_flag_slurm_or_kubernetes() {
    let env = |vars: &'static [(&'static str, &'static str)]| {
        move |name: &str| {
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.to_string())
        }
    };
    let shard = |index, count| Shard { index, count };
    let slurm = env(&[
        ("SLURM_ARRAY_TASK_ID", "2"),
        ("SLURM_ARRAY_TASK_COUNT", "5"),
    ]);
    assert_eq!(select_shard(None, None, 9, slurm).unwrap(), shard(2, 5));
    assert_eq!(select_shard(None, Some(3), 9, slurm).unwrap(), shard(2, 3));
    let explicit = "1/4".parse().unwrap();
    assert_eq!(
        select_shard(Some(explicit), None, 9, slurm).unwrap(),
        shard(1, 4)
    );
    let k8s = env(&[("JOB_COMPLETION_INDEX", "4")]);
    assert_eq!(select_shard(None, None, 6, k8s).unwrap(), shard(4, 6));
    assert_eq!(select_shard(None, Some(8), 6, k8s).unwrap(), shard(4, 8));
    assert_eq!(select_shard(None, None, 6, env(&[])).unwrap(), Shard::ALL);

    let few = env(&[
        ("SLURM_ARRAY_TASK_ID", "5"),
        ("SLURM_ARRAY_TASK_COUNT", "5"),
    ]);
    let bad = [
        (
            select_shard(None, None, 3, env(&[("SLURM_ARRAY_TASK_ID", "x")])),
            "SLURM_ARRAY_TASK_ID=\"x\" is not a whole number",
        ),
        (
            select_shard(None, None, 3, env(&[("SLURM_ARRAY_TASK_ID", "1")])),
            "SLURM_ARRAY_TASK_COUNT is not",
        ),
        (
            select_shard(None, None, 9, few),
            "index 5 is not below the count 5",
        ),
        (
            select_shard(None, None, 3, env(&[("JOB_COMPLETION_INDEX", "3")])),
            "index 3 is not below the count 3",
        ),
        (
            select_shard(None, None, 3, env(&[("JOB_COMPLETION_INDEX", "-1")])),
            "not a whole number",
        ),
        (
            select_shard(None, Some(2), 3, env(&[])),
            "--shards needs an index",
        ),
    ];
    for (result, needle) in bad {
        let e = result.unwrap_err().to_string();
        assert!(e.contains(needle), "{needle}: {e}");
    }
    for (text, needle) in [
        ("3", "expected INDEX/COUNT"),
        ("a/2", "\"a\" is not a whole number"),
        ("2/2", "not below the count 2"),
        ("0/0", "at least 1"),
    ] {
        let e = text.parse::<Shard>().unwrap_err().to_string();
        assert!(e.contains(needle), "{text}: {e}");
    }
}

#[test]
fn every_unit_is_in_exactly_one_shard() {
    let units = sweep(MODELS).unwrap().plan().unwrap();
    for count in 1..=units.len() + 1 {
        for unit in &units {
            let owners: Vec<usize> = (0..count)
                .filter(|&index| Shard { index, count }.runs(unit))
                .collect();
            assert_eq!(owners, [unit.index % count]);
        }
    }
}

/// A sweep file with `device = "cuda"`.
fn on_cuda(text: &str) -> String {
    text.replacen(
        "[[models]]",
        "[settings]\ndevice = \"cuda\"\n\n[[models]]",
        1,
    )
}

fn resources(shards: Option<usize>, max_parallel: Option<usize>) -> Resources {
    Resources {
        shards,
        max_parallel,
        cpus: 4,
        mem_gib: 16,
    }
}

fn slurm_script(text: &str, r: Resources) -> Result<String> {
    let s = sweep(text)?;
    let units = s.plan()?.len();
    emit::slurm(
        &s,
        units,
        &Slurm {
            resources: r,
            time: Some("02:00:00".into()),
            partition: None,
            logs: PathBuf::from("/logs"),
            harness: PathBuf::from("/bin/harness"),
        },
    )
}

#[test]
fn the_slurm_script_is_a_job_array_of_the_shards() {
    let script = slurm_script(MODELS, resources(None, None)).unwrap();
    let lines: Vec<&str> = script.lines().collect();
    assert_eq!(lines[0], "#!/bin/bash");
    for line in [
        "#SBATCH --array=0-5",
        "#SBATCH --cpus-per-task=4",
        "#SBATCH --mem=16G",
        "#SBATCH --time=02:00:00",
        "#SBATCH --output=/logs/%x-%A_%a.log",
        "#SBATCH --job-name=harness-sweep-sweep",
    ] {
        assert!(lines.contains(&line), "{line} missing from\n{script}");
    }
    assert!(!script.contains("--gres"), "{script}");
    assert!(!script.contains("--partition"), "{script}");
    let run = lines.last().unwrap();
    assert!(run.starts_with("exec '/bin/harness' sweep run '/"), "{run}");
    assert!(run.ends_with("runs/sweep.toml' --shards 6"), "{run}");

    let script = slurm_script(MODELS, resources(Some(2), Some(1))).unwrap();
    assert!(script.contains("#SBATCH --array=0-1%1\n"), "{script}");
    assert!(script.contains("--shards 2\n"), "{script}");

    let script = slurm_script(&on_cuda(MODELS), resources(None, None)).unwrap();
    assert!(script.contains("#SBATCH --gres=gpu:1\n"), "{script}");

    for (r, needle) in [
        (
            resources(Some(7), None),
            "--shards 7: the sweep has 6 unit(s)",
        ),
        (resources(Some(0), None), "--shards 0"),
        (resources(None, Some(0)), "--max-parallel 0"),
    ] {
        let e = slurm_script(MODELS, r).unwrap_err().to_string();
        assert!(e.contains(needle), "{e}");
    }
}

#[test]
fn the_kubernetes_manifest_is_an_indexed_job() {
    let manifest = |text: &str, r: Resources| {
        let s = sweep(text).unwrap();
        let units = s.plan().unwrap().len();
        let opts = Kubernetes {
            resources: r,
            image: "registry.example/harness:1".into(),
            claim: "sweep-data".into(),
            mount: "/data".into(),
        };
        let text = emit::kubernetes(&s, units, &opts).unwrap();
        serde_json::from_str::<serde_json::Value>(&text).unwrap()
    };
    let m = manifest(MODELS, resources(None, Some(2)));
    assert_eq!(m["apiVersion"], "batch/v1");
    assert_eq!(m["kind"], "Job");
    assert_eq!(m["metadata"]["name"], "harness-sweep-sweep");
    let spec = &m["spec"];
    assert_eq!(spec["completionMode"], "Indexed");
    assert_eq!(spec["completions"], 6);
    assert_eq!(spec["parallelism"], 2);
    let pod = &spec["template"]["spec"];
    assert_eq!(pod["restartPolicy"], "Never");
    let c = &pod["containers"][0];
    assert_eq!(c["image"], "registry.example/harness:1");
    assert_eq!(c["workingDir"], "/data");
    assert_eq!(
        c["command"],
        serde_json::json!([
            "harness",
            "sweep",
            "run",
            "runs/sweep.toml",
            "--shards",
            "6"
        ])
    );
    assert_eq!(c["volumeMounts"][0]["mountPath"], "/data");
    assert_eq!(c["volumeMounts"][0]["name"], pod["volumes"][0]["name"]);
    assert_eq!(
        pod["volumes"][0]["persistentVolumeClaim"]["claimName"],
        "sweep-data"
    );
    assert_eq!(c["resources"]["requests"]["cpu"], "4");
    assert_eq!(c["resources"]["limits"]["memory"], "16Gi");
    assert!(c["resources"]["limits"].get("nvidia.com/gpu").is_none());

    let m = manifest(&on_cuda(MODELS), resources(Some(3), None));
    assert_eq!(m["spec"]["completions"], 3);
    assert_eq!(m["spec"]["parallelism"], 3);
    let limits = &m["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"];
    assert_eq!(limits["nvidia.com/gpu"], 1);
}
