//! What the commands print on a terminal: `harness inspect`, `harness eval` (one table
//! per result and a summary) and `harness analyze`, as aligned text.

use std::fmt::Write;

use super::text::{chance_text, fmt_score, holds_on, pooling, precision, short, verdict};
use crate::model::source::ModelInfo;
use crate::results::analyze::AnalyzeResult;
use crate::results::eval::EvalResult;

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
        ("format", info.format.to_string()),
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
    let pool = match r.task.pool {
        Some(_) => format!(", pool {}", pooling(r)),
        None => String::new(),
    };
    let s = &r.settings;
    let precision = precision(s).map(|p| format!(", {p}")).unwrap_or_default();
    let _ = writeln!(
        out,
        "{} on {}: {} by layer ({:?}{pool}{precision}; {})",
        r.task.name, r.model.name, r.task.metric, r.task.kind, s.confidence_interval
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
            r.task.kind,
            r.task.metric,
            r.peak.layer,
            r.peak.relative_depth,
            fmt_score(r.peak.score),
            fmt_score(r.last.score),
            chance_text(r),
            r.prediction.expected,
            verdict(r)
        );
    }
    let holds = results.iter().filter(|r| r.prediction.holds).count();
    let silent = results.iter().filter(|r| r.signal == Some(false)).count();
    let _ = writeln!(
        out,
        "the paper's prediction {} (embedding tasks peak mid-depth, generation at full depth){}",
        holds_on(holds, results.len()),
        if silent > 0 {
            format!("; {silent} show no signal above chance")
        } else {
            String::new()
        }
    );
    out
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
        let _ = write!(out, "{:>5} {:>5}", l.layer, p.of(l.layer).abbreviation());
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
