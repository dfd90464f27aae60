//! Reports: everything the harness shows a person, as text tables (and, for the
//! leaderboard, Markdown and HTML).

use std::fmt::Write;

use crate::eval::EvalResult;
use crate::loader::ModelInfo;

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
        ("architecture", info.architecture.clone()),
        ("num_layers", info.num_layers.to_string()),
        ("hidden_size", info.hidden_size.to_string()),
        ("num_heads", info.num_heads.to_string()),
        ("num_kv_heads", info.num_kv_heads.to_string()),
        ("head_dim", info.head_dim.to_string()),
        ("intermediate_size", info.intermediate_size.to_string()),
        ("vocab_size", info.vocab_size.to_string()),
        ("context_length", info.context_length.to_string()),
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
    let extra: Vec<&String> = r
        .layers
        .first()
        .map(|l| l.metrics.keys().collect())
        .unwrap_or_default();
    let mut header = format!(
        "{:>5} {:>6} {:>10} {:>21}",
        "layer", "depth", r.task.metric, "95% CI"
    );
    for k in &extra {
        let _ = write!(header, " {k:>14}");
    }
    let _ = writeln!(out, "{header}");
    for l in &r.layers {
        let mark = if l.layer == r.peak.layer {
            " <- peak"
        } else {
            ""
        };
        let mut line = format!(
            "{:>5} {:>6.2} {:>10} {:>21}",
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
    let _ = writeln!(
        out,
        "paper's prediction ({}): {}",
        r.prediction.expected,
        if r.prediction.holds {
            "holds"
        } else {
            "does not hold"
        }
    );
    out
}

/// One line per task and how many agree with the paper's prediction.
pub fn eval_summary(results: &[EvalResult]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<18} {:<15} {:<12} {:>5} {:>6} {:>10} {:>10}  prediction",
        "task", "kind", "metric", "peak", "depth", "at peak", "final"
    );
    for r in results {
        let _ = writeln!(
            out,
            "{:<18} {:<15} {:<12} {:>5} {:>6.2} {:>10} {:>10}  {} {}",
            r.task.name,
            format!("{:?}", r.task.kind).to_lowercase(),
            r.task.metric,
            r.peak.layer,
            r.peak.relative_depth,
            fmt_score(r.peak.score),
            fmt_score(r.last.score),
            r.prediction.expected,
            if r.prediction.holds {
                "holds"
            } else {
                "does not hold"
            }
        );
    }
    let holds = results.iter().filter(|r| r.prediction.holds).count();
    let _ = writeln!(
        out,
        "the paper's prediction holds on {holds} of {} tasks (embedding tasks peak mid-depth, generation at full depth)",
        results.len()
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
