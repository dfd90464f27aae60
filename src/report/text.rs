//! Numbers and phrases that every view of the report writes the same way: scores,
//! short numbers, runs, verdicts and chance levels.

use crate::results::eval::{default_device, default_dtype, EvalResult, Settings};
use crate::stats::scores::Chance;

/// Scores near 1 with four decimals; large ones (perplexities) with fewer.
pub fn fmt_score(x: f64) -> String {
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

/// A number in at most eight characters with about three significant digits.
pub fn short(v: Option<f64>) -> String {
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

/// Blocks a run ablated, as "block 12" or "blocks 1, 2".
pub fn blocks(ablate: &[usize]) -> String {
    let list: Vec<String> = ablate.iter().map(usize::to_string).collect();
    let noun = if list.len() == 1 { "block" } else { "blocks" };
    format!("{noun} {}", list.join(", "))
}

/// How a run changed the model: "baseline", or the blocks whose first-token MLP
/// output was zeroed.
pub fn run_label(ablate: &[usize]) -> String {
    if ablate.is_empty() {
        "baseline".into()
    } else {
        format!("ablated in {}", blocks(ablate))
    }
}

/// "bf16 on cpu" for a run not in the exact f32-on-CPU default; `None` for one in it,
/// so that reports of f32 runs read as they always did.
pub fn precision(s: &Settings) -> Option<String> {
    if s.dtype == default_dtype() && s.device == default_device() {
        None
    } else {
        Some(format!("{} on {}", s.dtype, s.device))
    }
}

/// An eval run's label: [`run_label`], then its [`precision`] where it has one.
pub fn eval_run_label(s: &Settings) -> String {
    let run = run_label(&s.ablate);
    match precision(s) {
        Some(p) => format!("{run}, {p}"),
        None => run,
    }
}

/// The paper's prediction in a word: "holds", "does not hold", or "no signal" where
/// the peak is not above chance and so cannot be judged.
pub fn verdict(r: &EvalResult) -> &'static str {
    if r.signal == Some(false) {
        "no signal"
    } else if r.prediction.holds {
        "holds"
    } else {
        "does not hold"
    }
}

/// How many of a set of tasks agree with the prediction.
pub fn holds_on(agree: usize, tasks: usize) -> String {
    format!("holds on {agree} of {tasks} tasks")
}

/// The chance level as a short cell: its score, "none", or "not recorded".
pub fn chance_text(r: &EvalResult) -> String {
    match r.chance() {
        Some(Chance {
            score: Some(score), ..
        }) => fmt_score(score),
        Some(_) => "none".into(),
        None => "not recorded".into(),
    }
}

/// The metric's name with the direction that is better.
pub fn metric_label(r: &EvalResult) -> String {
    let arrow = if r.task.higher_is_better {
        "↑"
    } else {
        "↓"
    };
    format!("{} {arrow}", r.task.metric)
}

/// How an embedding task turned token vectors into one vector per text.
pub fn pooling(r: &EvalResult) -> String {
    match (r.task.pool, r.task.center) {
        (Some(p), Some(true)) => format!("{p}, centred"),
        (Some(p), _) => p.to_string(),
        (None, _) => "n/a".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
