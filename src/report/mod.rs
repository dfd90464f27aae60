//! Reports: everything the harness shows a person, as text tables (and, for the
//! leaderboard, Markdown and HTML).
//!
//! `harness report` ([`load`], then [`write_report`]) turns a results directory into
//! `leaderboard.md`, `index.html`, CSV files and SVG plots; `docs/report.md` describes
//! them.

pub mod analyze_view;
pub mod html;
pub mod leaderboard;
pub mod plots;
pub mod results;

use std::fmt::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

pub use results::{load, Results};

use crate::io::output::write_bytes_atomic;

use crate::model::source::ModelInfo;
use crate::results::analyze::AnalyzeResult;
use crate::results::eval::EvalResult;
use crate::stats::scores::Chance;

/// `harness inspect` as aligned `key  value` lines.
pub fn inspect_table(info: &ModelInfo) -> String {
    let types: Vec<String> = info
        .weight_types
        .iter()
        .map(|(t, n)| format!("{t} x{n}"))
        .collect();
    let bos = match info.bos_token_id {
        Some(id) => format!("{id} (added by default: {})", info.add_bos_token),
        None => "none".into(),
    };
    let rows = [
        ("name", info.name.clone()),
        ("architecture", info.config.architecture.clone()),
        ("num_layers", info.config.num_layers.to_string()),
        ("hidden_size", info.config.hidden_size.to_string()),
        ("num_heads", info.config.num_heads.to_string()),
        ("num_kv_heads", info.config.num_kv_heads.to_string()),
        ("head_dim", info.config.head_dim.to_string()),
        (
            "intermediate_size",
            info.config.intermediate_size.to_string(),
        ),
        ("vocab_size", info.config.vocab_size.to_string()),
        ("context_length", info.config.context_length.to_string()),
        ("bos_token_id", bos),
        ("format", format!("{:?}", info.format).to_lowercase()),
        ("source", info.source.clone()),
        ("weight_types", types.join(", ")),
    ];
    let mut out = String::new();
    for (k, v) in rows {
        let _ = writeln!(out, "{k:<18} {v}");
    }
    out
}

/// A result's per-layer curve, its peak and the verdict, as a text table.
pub fn eval_table(r: &EvalResult) -> String {
    let mut out = String::new();
    let pool = match (r.task.pool, r.task.center) {
        (Some(p), Some(true)) => format!(", pool {p}, centred"),
        (Some(p), _) => format!(", pool {p}"),
        (None, _) => String::new(),
    };
    let _ = writeln!(
        out,
        "{} on {}: {} by layer ({:?}{pool}; {})",
        r.task.name, r.model.name, r.task.metric, r.task.kind, r.settings.confidence_interval
    );
    let _ = writeln!(out, "{}", chance_line(r));
    let extra: Vec<&String> = r
        .layers
        .first()
        .map(|l| l.metrics.keys().collect())
        .unwrap_or_default();
    let mut header = format!(
        "{:>5} {:>6} {:>10} {:>21} {:>7}",
        "layer", "depth", r.task.metric, "95% CI", ">chance"
    );
    for k in &extra {
        let _ = write!(header, " {k:>14}");
    }
    let _ = writeln!(out, "{header}");
    for l in &r.layers {
        let mark = match (l.layer == r.peak.layer, r.signal) {
            (false, _) => "",
            (true, Some(false)) => " <- best, but no signal",
            (true, _) => " <- peak",
        };
        let above = match l.above_chance {
            Some(true) => "yes",
            Some(false) => "no",
            None => "-",
        };
        let mut line = format!(
            "{:>5} {:>6.2} {:>10} {:>21} {above:>7}",
            l.layer,
            l.relative_depth,
            fmt_score(l.score),
            format!("[{}, {}]", fmt_score(l.ci_low), fmt_score(l.ci_high))
        );
        for k in &extra {
            let _ = write!(line, " {:>14}", fmt_score(l.metrics[*k]));
        }
        let _ = writeln!(out, "{line}{mark}");
    }
    let c = &r.peak_vs_final;
    let _ = writeln!(
        out,
        "peak: layer {} (depth {:.2}) {}; final layer {}: {}; gain {} [{}, {}], p = {:.3}{}",
        r.peak.layer,
        r.peak.relative_depth,
        fmt_score(r.peak.score),
        r.last.layer,
        fmt_score(r.last.score),
        fmt_score(c.gain),
        fmt_score(c.ci_low),
        fmt_score(c.ci_high),
        c.p_value,
        if c.significant { " (significant)" } else { "" }
    );
    if r.signal == Some(false) {
        let _ = writeln!(
            out,
            "no signal: not even the best layer is significantly above chance, so there is no peak"
        );
    }
    let _ = writeln!(
        out,
        "paper's prediction ({}): {}",
        r.prediction.expected,
        verdict(r)
    );
    out
}

/// The result's chance level and how it was set, or why there is none.
fn chance_line(r: &EvalResult) -> String {
    match r.chance() {
        Some(c) => match c.score {
            Some(score) => format!(
                "chance: {} ({}); a layer is above chance when its whole 95% CI is better",
                fmt_score(score),
                c.rule
            ),
            None => format!("chance: {}", c.rule),
        },
        None => "chance: not recorded (the result predates chance levels)".into(),
    }
}

/// The chance level as a short cell: its score, "none", or "not recorded".
fn chance_cell(r: &EvalResult) -> String {
    match r.chance() {
        Some(Chance {
            score: Some(score), ..
        }) => fmt_score(score),
        Some(_) => "none".into(),
        None => "not recorded".into(),
    }
}

/// The paper's prediction in a word: "holds", "does not hold", or "no signal" where
/// the peak is not above chance and so cannot be judged.
fn verdict(r: &EvalResult) -> &'static str {
    if r.signal == Some(false) {
        "no signal"
    } else if r.prediction.holds {
        "holds"
    } else {
        "does not hold"
    }
}

/// One line per task and how many agree with the paper's prediction.
pub fn eval_summary(results: &[EvalResult]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<18} {:<15} {:<12} {:>5} {:>6} {:>10} {:>10} {:>12}  prediction",
        "task", "kind", "metric", "peak", "depth", "at peak", "final", "chance"
    );
    for r in results {
        let _ = writeln!(
            out,
            "{:<18} {:<15} {:<12} {:>5} {:>6.2} {:>10} {:>10} {:>12}  {} {}",
            r.task.name,
            format!("{:?}", r.task.kind).to_lowercase(),
            r.task.metric,
            r.peak.layer,
            r.peak.relative_depth,
            fmt_score(r.peak.score),
            fmt_score(r.last.score),
            chance_cell(r),
            r.prediction.expected,
            verdict(r)
        );
    }
    let holds = results.iter().filter(|r| r.prediction.holds).count();
    let silent = results.iter().filter(|r| r.signal == Some(false)).count();
    let _ = writeln!(
        out,
        "the paper's prediction holds on {holds} of {} tasks (embedding tasks peak mid-depth, generation at full depth){}",
        results.len(),
        if silent > 0 {
            format!("; {silent} show no signal above chance")
        } else {
            String::new()
        }
    );
    out
}

/// Scores near 1 with three decimals; large ones (perplexities) with fewer.
fn fmt_score(x: f64) -> String {
    if !x.is_finite() {
        "nan".into()
    } else if x.abs() >= 1000.0 {
        format!("{x:.0}")
    } else if x.abs() >= 10.0 {
        format!("{x:.2}")
    } else {
        format!("{x:.4}")
    }
}

/// Blocks a run ablated, as "block 12" or "blocks 1, 2".
fn blocks(ablate: &[usize]) -> String {
    let list: Vec<String> = ablate.iter().map(usize::to_string).collect();
    let noun = if list.len() == 1 { "block" } else { "blocks" };
    format!("{noun} {}", list.join(", "))
}

/// How a run changed the model: "baseline", or the blocks whose first-token MLP
/// output was zeroed.
fn run_label(ablate: &[usize]) -> String {
    if ablate.is_empty() {
        "baseline".into()
    } else {
        format!("ablated in {}", blocks(ablate))
    }
}

/// Writes the report of `results` into `out` and returns the files written. Every
/// file is computed before the first is written, and each is written atomically.
/// Plots of tasks or models that are no longer in the results are removed, so that
/// `out` holds exactly one report.
pub fn write_report(results: &Results, out: &Path) -> Result<Vec<PathBuf>> {
    if results.evals.is_empty() && results.analyses.is_empty() {
        bail!(
            "no {} or {} results under {}",
            crate::results::eval::SCHEMA,
            crate::results::analyze::SCHEMA,
            results.dir.display()
        );
    }
    let plots = plots::all(results)?;
    let generated = leaderboard::generated(results, &crate::results::eval::now_utc());
    let mut files = vec![
        (
            out.join("leaderboard.md"),
            leaderboard::markdown(results, &plots, &generated),
        ),
        (
            out.join("index.html"),
            html::page(results, &plots, &generated),
        ),
        (
            out.join("results.csv"),
            leaderboard::results_csv(&results.evals)?,
        ),
        (
            out.join("analyze.csv"),
            leaderboard::analyze_csv(&results.analyses)?,
        ),
    ];
    let plot_dir = out.join("plots");
    for p in &plots {
        files.push((plot_dir.join(&p.file), p.svg.clone()));
    }
    remove_stale_plots(&plot_dir, &plots)?;
    for (path, text) in &files {
        write_bytes_atomic(path, text.as_bytes())?;
    }
    Ok(files.into_iter().map(|(path, _)| path).collect())
}

/// Removes plot files a previous report wrote that this one does not.
fn remove_stale_plots(dir: &Path, plots: &[plots::Plot]) -> Result<()> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(());
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let ours =
            (name.starts_with("task-") || name.starts_with("analyze-")) && name.ends_with(".svg");
        if ours && !plots.iter().any(|p| p.file == name) {
            std::fs::remove_file(entry.path())
                .with_context(|| format!("cannot remove {}", entry.path().display()))?;
        }
    }
    Ok(())
}

/// A number in at most eight characters with about three significant digits.
fn short(v: Option<f64>) -> String {
    match v {
        None => "-".into(),
        Some(0.0) => "0".into(),
        Some(v) if (0.01..10_000.0).contains(&v.abs()) => {
            let decimals = (2 - v.abs().log10().floor() as i32).max(0) as usize;
            format!("{v:.decimals$}")
        }
        Some(v) => format!("{v:.2e}"),
    }
}

/// `harness analyze` as a per-layer table of means over prompts, with the phase of
/// each layer, and the ablated run beside the baseline when there is one.
pub fn analyze_table(r: &AnalyzeResult) -> String {
    let s = &r.settings;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{} ({}, {} layers, d={}): {} prompts, {}-{} tokens, first token {}",
        r.model.name,
        r.model.config.architecture,
        r.model.config.num_layers,
        r.model.config.hidden_size,
        s.prompts,
        s.tokens_min,
        s.tokens_max,
        if s.first_token_is_bos {
            "BOS"
        } else {
            "not BOS"
        }
    );
    let _ = writeln!(
        out,
        "means over prompts (standard deviations in analyze.json); singular values from the Gram matrix's eigenvalues in f64"
    );
    let columns = [
        ("|x0|", "first_norm"),
        ("c=M/R", "norm_ratio"),
        ("x0/med", "first_over_median"),
        ("massive", "massive_count"),
        ("p1", "anisotropy"),
        ("H bits", "entropy_bits"),
        ("H/logN", "entropy_normalized"),
        ("Hc bits", "entropy_centered_bits"),
        ("bound", "entropy_bound_bits"),
        ("holds", "bound_holds"),
        ("sink", "sink_rate"),
        ("mixing", "mixing"),
        ("colsum", "colsum"),
    ];
    let _ = write!(out, "{:>5} {:>5}", "layer", "phase");
    for (title, _) in columns {
        let _ = write!(out, " {title:>8}");
    }
    out.push('\n');
    let p = &r.phases;
    for l in &r.layers {
        let phase = if l.layer < p.compress.first {
            "mix"
        } else if l.layer <= p.compress.last {
            "comp"
        } else {
            "ref"
        };
        let _ = write!(out, "{:>5} {phase:>5}", l.layer);
        for (_, name) in columns {
            let _ = write!(out, " {:>8}", short(l.mean(name)));
        }
        out.push('\n');
    }
    let _ = writeln!(
        out,
        "phases: mix {}, compress {}-{} ({:.0}-{:.0}% of depth), refine {} (normalised entropy <= {:.3})",
        p.mix.map_or("none".into(), |m| format!("{}-{}", m.first, m.last)),
        p.compress.first,
        p.compress.last,
        100.0 * p.compress_depth[0],
        100.0 * p.compress_depth[1],
        p.refine.map_or("none".into(), |m| format!("{}-{}", m.first, m.last)),
        p.threshold
    );
    if let Some(a) = &r.ablation {
        let blocks: Vec<String> = a.layers_ablated.iter().map(|b| b.to_string()).collect();
        let _ = writeln!(
            out,
            "\nablation of the MLP output at position 0 in block(s) {} ({})",
            blocks.join(","),
            a.rule
        );
        let compared = [
            ("|x0|", "first_norm"),
            ("c=M/R", "norm_ratio"),
            ("H/logN", "entropy_normalized"),
            ("sink", "sink_rate"),
            ("mixing", "mixing"),
        ];
        let _ = write!(out, "{:>5}", "layer");
        for (title, _) in compared {
            let _ = write!(out, " {:>8} {:>8}", title, "ablated");
        }
        out.push('\n');
        for (b, l) in r.layers.iter().zip(&a.layers) {
            let _ = write!(out, "{:>5}", l.layer);
            for (_, name) in compared {
                let _ = write!(
                    out,
                    " {:>8} {:>8}",
                    short(b.mean(name)),
                    short(l.mean(name))
                );
            }
            out.push('\n');
        }
        let _ = writeln!(
            out,
            "next-token loss (nats): {:.4} baseline, {:.4} ablated, change {:+.4}",
            a.loss_baseline, a.loss_ablated, a.loss_change
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The committed results: real runs of both shipped models, small.
    pub(super) fn fixture_results() -> Results {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/results");
        load(&dir).expect("fixture results load")
    }

    #[test]
    fn fixtures_load_in_report_order_without_warnings() {
        let r = fixture_results();
        assert!(r.warnings.is_empty(), "{:?}", r.warnings);
        let keys: Vec<(&str, &str, &[usize])> = r
            .evals
            .iter()
            .map(|e| {
                (
                    e.task.name.as_str(),
                    e.model.name.as_str(),
                    &e.settings.ablate[..],
                )
            })
            .collect();
        let mut sorted = keys.clone();
        sorted.sort();
        assert_eq!(keys, sorted);
        assert!(keys.contains(&("mr", "smollm2", &[12][..])));
        assert_eq!(r.models(), ["gemma3", "smollm2"]);
        assert_eq!(r.tasks(), ["austen", "boolq-retrieval", "lee-sts", "mr"]);
        assert_eq!(r.analyses.len(), 2);
    }

    #[test]
    fn run_labels_name_the_ablated_blocks() {
        assert_eq!(run_label(&[]), "baseline");
        assert_eq!(run_label(&[12]), "ablated in block 12");
        assert_eq!(run_label(&[1, 2]), "ablated in blocks 1, 2");
    }

    #[test]
    fn short_numbers_keep_three_digits() {
        assert_eq!(short(None), "-");
        assert_eq!(short(Some(0.0)), "0");
        assert_eq!(short(Some(0.12345)), "0.123");
        assert_eq!(short(Some(123.45)), "123");
        assert_eq!(short(Some(24_000.0)), "2.40e4");
    }
}
