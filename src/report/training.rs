//! Figures across training checkpoints, the way the paper's training-dynamics results
//! are read: results of one model at several revisions (named `model@step1000` by
//! `harness sweep` and `hf:org/name@rev`) against the training step, per task its peak
//! layer and peak score, and per model the analyze diagnostics.
//!
//! The step is the number a revision ends with (`step1000`, `global_step500`, `1000`);
//! a model whose revisions do not all end with one, or that has fewer than two, gets
//! no such figure.

use std::collections::BTreeMap;

use anyhow::Result;

use super::plots::{
    figure, segments, y_axis, Panel, Plot, Series, XAxis, YAxis, PALETTE, TRAINING_PREFIX,
};
use super::results::Results;
use super::text::{eval_run_label, metric_label, run_label};
use crate::results::analyze::AnalyzeResult;
use crate::results::eval::{file_safe, EvalResult};

/// A model name's base and training step: `pythia-70m@step1000` is step 1000 of
/// `pythia-70m`.
pub fn checkpoint(name: &str) -> Option<(&str, u64)> {
    let (base, revision) = name.rsplit_once('@')?;
    let digits = revision.len()
        - revision
            .trim_end_matches(|c: char| c.is_ascii_digit())
            .len();
    revision[revision.len() - digits..]
        .parse()
        .ok()
        .filter(|_| !base.is_empty())
        .map(|step| (base, step))
}

/// Items of the same base model, ordered by step; only bases with at least two steps
/// where every revision names one.
fn by_base<'a, T: Copy>(items: &[(&'a str, T)]) -> BTreeMap<&'a str, Vec<(u64, T)>> {
    let mut groups: BTreeMap<&str, Vec<(u64, T)>> = BTreeMap::new();
    let mut unnumbered = Vec::new();
    for &(name, item) in items {
        match checkpoint(name) {
            Some((base, step)) => groups.entry(base).or_default().push((step, item)),
            None => unnumbered.extend(name.rsplit_once('@').map(|(base, _)| base)),
        }
    }
    groups.retain(|base, points| {
        points.sort_by_key(|(step, _)| *step);
        let steps = points
            .iter()
            .map(|(s, _)| s)
            .collect::<std::collections::BTreeSet<_>>();
        steps.len() >= 2 && !unnumbered.contains(base)
    });
    groups
}

/// The x axis over `steps`, with a little room either side.
fn steps_axis(steps: impl Iterator<Item = u64>) -> XAxis {
    let steps: Vec<f64> = steps.map(|s| s as f64).collect();
    let lo = steps.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = steps.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let pad = ((hi - lo) * 0.03).max(0.5);
    XAxis::Steps(lo - pad, hi + pad)
}

/// Every figure across checkpoints: per base model and task, then per base model's
/// analyses.
pub fn plots(results: &Results) -> Result<Vec<Plot>> {
    let mut plots = Vec::new();
    let evals: Vec<(&str, &EvalResult)> = results
        .evals
        .iter()
        .map(|r| (r.model.name.as_str(), r))
        .collect();
    for (base, points) in by_base(&evals) {
        let mut tasks: Vec<&str> = points.iter().map(|(_, r)| r.task.name.as_str()).collect();
        tasks.sort();
        tasks.dedup();
        for task in tasks {
            let runs: Vec<(u64, &EvalResult)> = points
                .iter()
                .filter(|(_, r)| r.task.name == task)
                .copied()
                .collect();
            plots.push(task_plot(base, &runs)?);
        }
    }
    let analyses: Vec<(&str, &AnalyzeResult)> = results
        .analyses
        .iter()
        .map(|a| (a.model.name.as_str(), a))
        .collect();
    for (base, points) in by_base(&analyses) {
        plots.push(analysis_plot(base, &points)?);
    }
    Ok(plots)
}

/// One task on one model's checkpoints: the peak's relative depth and the peak's
/// score with its interval, one line per run (dashed: ablated).
fn task_plot(base: &str, runs: &[(u64, &EvalResult)]) -> Result<Plot> {
    let first = runs[0].1;
    let mut by_run: BTreeMap<String, Vec<(u64, &EvalResult)>> = BTreeMap::new();
    for &(step, r) in runs {
        by_run
            .entry(eval_run_label(&r.settings))
            .or_default()
            .push((step, r));
    }
    let x = || steps_axis(runs.iter().map(|(s, _)| *s));
    let series = |value: &dyn Fn(&EvalResult) -> f64, band: bool| {
        by_run
            .iter()
            .enumerate()
            .map(|(i, (run, points))| Series {
                label: run.clone(),
                colour: PALETTE[i % PALETTE.len()],
                dashed: run != &run_label(&[]),
                segments: segments(
                    points.iter().map(|(s, r)| (*s as f64, Some(value(r)))),
                    false,
                ),
                band: match band {
                    true => points
                        .iter()
                        .map(|(s, r)| (*s as f64, r.peak.ci_low, r.peak.ci_high))
                        .collect(),
                    false => Vec::new(),
                },
                marker: None,
            })
            .collect()
    };
    let scores = runs
        .iter()
        .flat_map(|(_, r)| [r.peak.score, r.peak.ci_low, r.peak.ci_high]);
    let panels = [
        Panel {
            y_desc: "peak layer (relative depth)".into(),
            y: YAxis::Linear(-0.03, 1.03),
            x: x(),
            series: series(&|r| r.peak.relative_depth, false),
            shades: Vec::new(),
            x_axis: false,
            shade_labels: false,
        },
        Panel {
            y_desc: format!("peak {}", metric_label(first)),
            y: y_axis(scores),
            x: x(),
            series: series(&|r| r.peak.score, true),
            shades: Vec::new(),
            x_axis: true,
            shade_labels: false,
        },
    ];
    let title = format!("{base}, {}: the peak across training", first.task.name);
    let caption = format!(
        "{}: on {} checkpoints of {base}, the layer where {} peaks (as a fraction of depth) and the \
         peak score with its 95% bootstrap interval, against the training step the revision names.",
        first.task.name,
        runs.len(),
        metric_label(first)
    );
    Ok(Plot {
        file: format!(
            "{TRAINING_PREFIX}{}-{}.svg",
            file_safe(base),
            file_safe(&first.task.name)
        ),
        title: title.clone(),
        caption,
        svg: figure(&title, 620, &panels)?,
    })
}

/// One model's analyses across checkpoints: where the Compress phase lies, the
/// first token's largest norm and the lowest normalised entropy.
fn analysis_plot(base: &str, points: &[(u64, &AnalyzeResult)]) -> Result<Plot> {
    let x = || steps_axis(points.iter().map(|(s, _)| *s));
    let line = |label: &str, i: usize, value: &dyn Fn(&AnalyzeResult) -> Option<f64>, log| Series {
        label: label.into(),
        colour: PALETTE[i],
        dashed: false,
        segments: segments(points.iter().map(|(s, a)| (*s as f64, value(a))), log),
        band: Vec::new(),
        marker: None,
    };
    let extreme = |a: &AnalyzeResult, metric: &str, max: bool| {
        let values = a.layers.iter().filter_map(|l| l.mean(metric));
        match max {
            true => values.reduce(f64::max),
            false => values.reduce(f64::min),
        }
    };
    let norms: Vec<f64> = points
        .iter()
        .filter_map(|(_, a)| extreme(a, "first_norm", true))
        .filter(|v| *v > 0.0)
        .collect();
    // Logarithmic, as the analysis figures draw norms, from one power of ten to another
    // so that the axis has ticks however close the norms are.
    let lo = norms.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = norms.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let norm_axis = match norms.is_empty() {
        true => YAxis::Log(0.1, 10.0),
        false => {
            let (lo, hi) = (lo.log10().floor(), hi.log10().ceil());
            YAxis::Log(10f64.powf(lo), 10f64.powf(hi.max(lo + 1.0)))
        }
    };
    let panels = [
        Panel {
            y_desc: "Compress (relative depth)".into(),
            y: YAxis::Linear(-0.03, 1.03),
            x: x(),
            // The figure's legend is the first panel's: the lower panels' lines are
            // named here without points of their own.
            series: vec![
                line(
                    "Compress starts",
                    0,
                    &|a| Some(a.depth(a.phases.compress.first)),
                    false,
                ),
                line(
                    "Compress ends",
                    1,
                    &|a| Some(a.depth(a.phases.compress.last)),
                    false,
                ),
                line("largest first-token norm", 2, &|_| None, false),
                line("lowest normalised entropy", 3, &|_| None, false),
            ],
            shades: Vec::new(),
            x_axis: false,
            shade_labels: false,
        },
        Panel {
            y_desc: "first-token norm, max (log)".into(),
            y: norm_axis,
            x: x(),
            series: vec![line("", 2, &|a| extreme(a, "first_norm", true), true)],
            shades: Vec::new(),
            x_axis: false,
            shade_labels: false,
        },
        Panel {
            y_desc: "normalised entropy, min".into(),
            y: YAxis::Linear(-0.03, 1.03),
            x: x(),
            series: vec![line(
                "",
                3,
                &|a| extreme(a, "entropy_normalized", false),
                false,
            )],
            shades: Vec::new(),
            x_axis: true,
            shade_labels: false,
        },
    ];
    let title = format!("{base}: compression across training");
    let caption = format!(
        "{base}, {} checkpoints: the span of the Compress phase (as fractions of depth), the largest \
         first-token norm over layers (log scale) and the lowest normalised matrix entropy over layers, \
         from `harness analyze`, against the training step the revision names.",
        points.len()
    );
    Ok(Plot {
        file: format!("{TRAINING_PREFIX}{}-analyze.svg", file_safe(base)),
        title: title.clone(),
        caption,
        svg: figure(&title, 760, &panels)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_come_from_the_revision_name() {
        assert_eq!(checkpoint("pythia@step1000"), Some(("pythia", 1000)));
        assert_eq!(
            checkpoint("EleutherAI--pythia-70m@global_step5"),
            Some(("EleutherAI--pythia-70m", 5))
        );
        assert_eq!(checkpoint("tiny@12"), Some(("tiny", 12)));
        assert_eq!(checkpoint("tiny@main"), None);
        assert_eq!(checkpoint("smollm2"), None);
        assert_eq!(checkpoint("@5"), None);
    }

    #[test]
    fn groups_need_two_numbered_steps() {
        let items = [
            ("a@step20", 2),
            ("a@step3", 1),
            ("b@step1", 3),
            ("c@step1", 4),
            ("c@step2", 5),
            ("c@last", 6),
            ("d", 7),
        ];
        let groups = by_base(&items);
        assert_eq!(groups.len(), 1, "{groups:?}");
        assert_eq!(groups["a"], [(3, 1), (20, 2)]);
    }
}
