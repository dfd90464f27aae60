//! The report's tables, built once and written as Markdown (`leaderboard.md`), HTML
//! (`index.html`) and CSV (`results.csv`, `analyze.csv`).

use std::collections::BTreeMap;
use std::fmt::Write;

use anyhow::Result;

use super::analyze_view::{Analysis, LayerStats, Span};
use super::plots::Plot;
use super::results::Results;
use super::{blocks, chance_cell as chance_text, fmt_score, run_label, short, verdict};
use crate::diagnostics::{AttentionMetrics, ResidMetrics};
use crate::results::eval::EvalResult;

/// A table cell: what it shows and, for numbers, the value it sorts by.
#[derive(Debug, Clone, PartialEq)]
pub struct Cell {
    pub text: String,
    pub sort: Option<f64>,
    /// A score that is no better than chance: greyed out in HTML (the text says so
    /// too, for Markdown and CSV readers).
    pub no_signal: bool,
}

impl Cell {
    fn text(text: impl Into<String>) -> Self {
        Self {
            text: text.into(),
            sort: None,
            no_signal: false,
        }
    }

    fn number(text: impl Into<String>, value: f64) -> Self {
        Self {
            text: text.into(),
            sort: value.is_finite().then_some(value),
            no_signal: false,
        }
    }

    /// The result's peak score cell, marked "no signal" where it is not above chance.
    fn peak(r: &EvalResult, text: String) -> Self {
        let no_signal = r.signal == Some(false);
        Self {
            text: if no_signal {
                format!("{text} — no signal")
            } else {
                text
            },
            no_signal,
            ..Self::number("", r.peak.score)
        }
    }
}

/// Rows of cells under column titles.
#[derive(Debug, Clone, PartialEq)]
pub struct Table {
    pub columns: Vec<String>,
    pub rows: Vec<Vec<Cell>>,
}

impl Table {
    /// Whether column `i` holds numbers (right-aligned, sorted numerically).
    pub fn numeric(&self, i: usize) -> bool {
        !self.rows.is_empty() && self.rows.iter().all(|r| r[i].sort.is_some())
    }

    /// The table as GitHub Markdown.
    pub fn markdown(&self) -> String {
        let mut out = format!("| {} |\n|", self.columns.join(" | "));
        for i in 0..self.columns.len() {
            out.push_str(if self.numeric(i) { "---:|" } else { "---|" });
        }
        out.push('\n');
        for row in &self.rows {
            let cells: Vec<String> = row.iter().map(|c| c.text.replace('|', "\\|")).collect();
            let _ = writeln!(out, "| {} |", cells.join(" | "));
        }
        out
    }
}

fn names(columns: &[&str]) -> Vec<String> {
    columns.iter().map(|c| c.to_string()).collect()
}

/// The leaderboard proper: models across, tasks (and ablated runs) down; each cell
/// the peak score, its layer and relative depth, and the final layer's score, sorting
/// by the peak score.
pub fn grid_table(evals: &[EvalResult]) -> Table {
    let mut models: Vec<&str> = evals.iter().map(|r| r.model.name.as_str()).collect();
    models.sort_unstable();
    models.dedup();
    // Keyed so that each task's baseline comes before its ablated runs.
    let mut rows: BTreeMap<(&str, bool, String), (String, Vec<Cell>)> = BTreeMap::new();
    for r in evals {
        let run = run_label(&r.settings.ablate);
        let (_, cells) = rows
            .entry((r.task.name.as_str(), !r.settings.ablate.is_empty(), run))
            .or_insert_with(|| (metric_label(r), vec![Cell::text("–"); models.len()]));
        let column = models
            .binary_search(&r.model.name.as_str())
            .expect("listed above");
        cells[column] = Cell::peak(
            r,
            format!(
                "{} @ {} ({:.2}); final {}",
                fmt_score(r.peak.score),
                r.peak.layer,
                r.peak.relative_depth,
                fmt_score(r.last.score)
            ),
        );
    }
    let mut columns = names(&["task", "metric", "run"]);
    columns.extend(models.iter().map(|m| m.to_string()));
    let rows = rows
        .into_iter()
        .map(|((task, _, run), (metric, cells))| {
            let mut row = vec![Cell::text(task), Cell::text(metric), Cell::text(run)];
            row.extend(cells);
            row
        })
        .collect();
    Table { columns, rows }
}

/// What the grid's cells say.
pub const GRID_NOTE: &str = "Models across, tasks down. Each cell: the best score over layers @ its layer \
(its relative depth, layer over blocks); then the final layer's score. \"no signal\" (greyed in HTML) marks a \
best score that is not significantly above the task's chance level: no layer beats a guess, so there is no peak. \
Intervals, gains, chance levels and tests are in the table below.";

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
fn pooling(r: &EvalResult) -> String {
    match (r.task.pool, r.task.center) {
        (Some(p), Some(true)) => format!("{p}, centred"),
        (Some(p), _) => p.to_string(),
        (None, _) => "n/a".into(),
    }
}

fn with_ci(score: f64, low: f64, high: f64) -> String {
    format!(
        "{} [{}, {}]",
        fmt_score(score),
        fmt_score(low),
        fmt_score(high)
    )
}

/// The chance level, sorting by its value where it has one.
fn chance_cell(r: &EvalResult) -> Cell {
    match r.chance().and_then(|c| c.score) {
        Some(score) => Cell::number(chance_text(r), score),
        None => Cell::text(chance_text(r)),
    }
}

fn kind(r: &EvalResult) -> String {
    format!("{:?}", r.task.kind).to_lowercase()
}

/// Every result as one row: where it peaks, how good the peak is, and how it
/// compares with the final layer.
pub fn scores_table(evals: &[EvalResult]) -> Table {
    let rows = evals
        .iter()
        .map(|r| {
            let c = &r.peak_vs_final;
            vec![
                Cell::text(&r.task.name),
                Cell::text(kind(r)),
                Cell::text(metric_label(r)),
                Cell::text(pooling(r)),
                Cell::text(&r.model.name),
                Cell::text(run_label(&r.settings.ablate)),
                Cell::number(
                    format!("{} / {}", r.peak.layer, r.last.layer),
                    r.peak.layer as f64,
                ),
                Cell::number(
                    format!("{:.2}", r.peak.relative_depth),
                    r.peak.relative_depth,
                ),
                Cell::peak(r, with_ci(r.peak.score, r.peak.ci_low, r.peak.ci_high)),
                chance_cell(r),
                Cell::number(
                    with_ci(r.last.score, r.last.ci_low, r.last.ci_high),
                    r.last.score,
                ),
                Cell::number(with_ci(c.gain, c.ci_low, c.ci_high), c.gain),
                Cell::number(format!("{:.3}", c.p_value), c.p_value),
                Cell::text(format!("{}: {}", r.prediction.expected, verdict(r))),
            ]
        })
        .collect();
    Table {
        columns: names(&[
            "task",
            "kind",
            "metric",
            "pooling",
            "model",
            "run",
            "peak layer",
            "peak depth",
            "peak score [95% CI]",
            "chance",
            "final layer [95% CI]",
            "peak − final [95% CI]",
            "p",
            "prediction",
        ]),
        rows,
    }
}

/// How many of one model's tasks behave as the paper predicts, in one kind of run.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    pub model: String,
    /// Blocks ablated in these runs (empty: the unmodified model).
    pub ablate: Vec<usize>,
    pub tasks: usize,
    pub agree: usize,
    /// One line per task where the prediction does not hold.
    pub disagreements: Vec<String>,
}

/// Verdicts per model and run, from each result's `prediction.holds`; the baseline
/// before ablated runs.
pub fn verdicts(evals: &[EvalResult]) -> Vec<Verdict> {
    let mut groups: BTreeMap<(&str, &[usize]), Vec<&EvalResult>> = BTreeMap::new();
    for r in evals {
        groups
            .entry((&r.model.name, &r.settings.ablate))
            .or_default()
            .push(r);
    }
    groups
        .into_iter()
        .map(|((model, ablate), runs)| Verdict {
            model: model.into(),
            ablate: ablate.to_vec(),
            tasks: runs.len(),
            agree: runs.iter().filter(|r| r.prediction.holds).count(),
            disagreements: runs
                .iter()
                .filter(|r| !r.prediction.holds)
                .map(|r| disagreement(r))
                .collect(),
        })
        .collect()
}

/// Why one result goes against the prediction, in the result's own numbers.
fn disagreement(r: &EvalResult) -> String {
    let c = &r.peak_vs_final;
    if r.signal == Some(false) {
        return format!(
            "{} ({}, expected {}): no signal; the best layer, {} of {}, scores {} [{}, {}], not significantly above chance ({})",
            r.task.name,
            kind(r),
            r.prediction.expected,
            r.peak.layer,
            r.last.layer,
            fmt_score(r.peak.score),
            fmt_score(r.peak.ci_low),
            fmt_score(r.peak.ci_high),
            chance_text(r)
        );
    }
    format!(
        "{} ({}, expected {}): peak at layer {} of {} (depth {:.2}), {} over the final layer [{}, {}], p = {:.3}{}",
        r.task.name,
        kind(r),
        r.prediction.expected,
        r.peak.layer,
        r.last.layer,
        r.peak.relative_depth,
        fmt_score(c.gain),
        fmt_score(c.ci_low),
        fmt_score(c.ci_high),
        c.p_value,
        if c.significant {
            ", significant"
        } else {
            ", not significant"
        }
    )
}

/// The verdicts as a table.
pub fn verdict_table(verdicts: &[Verdict]) -> Table {
    let rows = verdicts
        .iter()
        .map(|v| {
            vec![
                Cell::text(&v.model),
                Cell::text(run_label(&v.ablate)),
                Cell::number(v.tasks.to_string(), v.tasks as f64),
                Cell::number(v.agree.to_string(), v.agree as f64),
                Cell::number((v.tasks - v.agree).to_string(), (v.tasks - v.agree) as f64),
                Cell::text(format!("holds on {} of {} tasks", v.agree, v.tasks)),
            ]
        })
        .collect();
    Table {
        columns: names(&["model", "run", "tasks", "agree", "disagree", "verdict"]),
        rows,
    }
}

/// A phase as layers, and for Compress, as depth too (the paper's comparison
/// across models).
fn span(s: Option<Span>, a: Option<&Analysis>) -> String {
    let Some(s) = s else {
        return "none".into();
    };
    let layers = if s.first == s.last {
        s.first.to_string()
    } else {
        format!("{}–{}", s.first, s.last)
    };
    match a {
        Some(a) => format!("{layers} ({:.2}–{:.2})", a.depth(s.first), a.depth(s.last)),
        None => layers,
    }
}

/// The layer where `metric` is extreme (`max` or min), with its value.
fn extreme(layers: &[LayerStats], metric: &str, max: bool) -> Option<(usize, f64)> {
    layers
        .iter()
        .filter_map(|l| l.get(metric).map(|v| (l.layer, v)))
        .reduce(|best, x| {
            let better = if max { x.1 > best.1 } else { x.1 < best.1 };
            if better {
                x
            } else {
                best
            }
        })
}

fn extreme_cell(layers: &[LayerStats], metric: &str, max: bool) -> Cell {
    match extreme(layers, metric, max) {
        Some((layer, v)) => Cell::number(format!("{} (layer {layer})", short(Some(v))), v),
        None => Cell::text("n/a"),
    }
}

/// Mean of `metric` over the layers inside (or outside) the Compress phase.
fn mean_in(a: &Analysis, metric: &str, inside: bool) -> Option<f64> {
    let c = a.phases.compress;
    let values: Vec<f64> = a
        .layers
        .iter()
        .filter(|l| (c.first..=c.last).contains(&l.layer) == inside)
        .filter_map(|l| l.get(metric))
        .collect();
    (!values.is_empty()).then(|| values.iter().sum::<f64>() / values.len() as f64)
}

/// One row per analysed model: its phases, the extremes of the curves the paper
/// reads them from, and the ablation's effect on the loss.
pub fn phases_table(analyses: &[Analysis]) -> Table {
    let rows = analyses
        .iter()
        .map(|a| {
            let sinks = match (
                mean_in(a, "sink_rate", true),
                mean_in(a, "sink_rate", false),
            ) {
                (Some(inside), Some(outside)) => Cell::number(
                    format!("{} ({} outside)", short(Some(inside)), short(Some(outside))),
                    inside,
                ),
                (Some(inside), None) => Cell::number(short(Some(inside)), inside),
                _ => Cell::text("n/a"),
            };
            let ablation = match &a.ablation {
                Some(ab) => Cell::number(
                    format!(
                        "{}: {:.3} → {:.3} ({:+.3})",
                        blocks(&ab.layers_ablated),
                        ab.loss_baseline,
                        ab.loss_ablated,
                        ab.loss_change
                    ),
                    ab.loss_change,
                ),
                None => Cell::text("not run"),
            };
            vec![
                Cell::text(&a.model.name),
                Cell::number(a.model.num_layers.to_string(), a.model.num_layers as f64),
                Cell::number(
                    format!("{} / {}", a.settings.prompts, a.settings.tokens),
                    a.settings.prompts as f64,
                ),
                Cell::text(span(a.phases.mix, None)),
                Cell::text(span(Some(a.phases.compress), Some(a))),
                Cell::text(span(a.phases.refine, None)),
                extreme_cell(&a.layers, "first_norm", true),
                extreme_cell(&a.layers, "entropy_normalized", false),
                sinks,
                ablation,
            ]
        })
        .collect();
    Table {
        columns: names(&[
            "model",
            "blocks",
            "prompts / tokens",
            "Mix",
            "Compress (depth)",
            "Refine",
            "max first-token norm",
            "min normalised entropy",
            "sink rate in Compress",
            "ablation: loss (nats)",
        ]),
        rows,
    }
}

/// What the scores table's columns mean.
pub const SCORES_NOTE: &str = "One row per model, task and run. The peak is the layer with the best score; \
depth is its layer over the number of blocks. Intervals are 95% percentile bootstrap intervals over the task's items. \
Chance is the score of a model that knows nothing (see docs/tasks.md); a peak whose whole interval is not on the better \
side of it is marked \"no signal\"; \"none\" is a metric without a chance level, \"not recorded\" a result older than \
chance levels. Peak − final is the peak's score minus the final layer's on the same items, signed so that positive is better \
(for ↓ metrics, lower), with a paired bootstrap interval and one-sided p. Pooling says how token vectors became \
one vector per text, and whether each layer's mean was subtracted (centred) before cosine similarity. \
Ablated runs had the first token's MLP output zeroed in the blocks named.";

/// What the prediction is and how it is counted.
pub const VERDICT_NOTE: &str = "The paper predicts that embedding tasks (classification, retrieval, similarity) \
peak at intermediate depth, significantly above the final layer, and that generation needs the full depth. \
Each result's own verdict (`prediction.holds`) is counted per model and run; a result with no signal above chance \
never counts as agreeing.";

/// How the phases are read.
pub const PHASES_NOTE: &str = "From `harness analyze`: Compress spans the layers whose normalised matrix entropy \
is at or below the geometric mean of the curve's minimum and maximum; Mix comes before it and Refine after. \
Spans are layers; Compress also as fractions of depth. The sink rate is the fraction of heads whose first-token sink score \
is at least 0.3. The ablation zeroes the first token's MLP output in the blocks named; the loss is the \
next-token negative log-likelihood.";

/// The one line that holds every timestamp of the report, starting `generated:`: the
/// only line that differs between two reports of the same results.
pub fn generated(results: &Results, now: &str) -> String {
    let created = results.evals.iter().map(|r| r.created.as_str());
    let runs = match (created.clone().min(), created.max()) {
        (Some(first), Some(last)) => {
            format!("from eval results created between {first} and {last}")
        }
        _ => "from analyze results, which record no time".into(),
    };
    format!("generated: {now} by harness report {runs}")
}

/// The whole of `leaderboard.md`.
pub fn markdown(results: &Results, plots: &[Plot], generated: &str) -> String {
    let mut out = String::from("# What every layer is good for\n\n");
    let _ = writeln!(out, "{}\n", overview(results));
    if !results.evals.is_empty() {
        let _ = writeln!(out, "## Leaderboard\n\n{GRID_NOTE}\n");
        out.push_str(&grid_table(&results.evals).markdown());
        out.push('\n');
        let _ = writeln!(out, "## Scores by layer\n\n{SCORES_NOTE}\n");
        out.push_str(&scores_table(&results.evals).markdown());
        out.push('\n');
        let v = verdicts(&results.evals);
        let _ = writeln!(out, "## The paper's prediction\n\n{VERDICT_NOTE}\n");
        out.push_str(&verdict_table(&v).markdown());
        out.push('\n');
        for v in &v {
            let _ = writeln!(
                out,
                "Where it does not hold for {}, {}:\n",
                v.model,
                run_label(&v.ablate)
            );
            if v.disagreements.is_empty() {
                out.push_str("- nowhere\n");
            }
            for d in &v.disagreements {
                let _ = writeln!(out, "- {d}");
            }
            out.push('\n');
        }
    }
    if !results.analyses.is_empty() {
        let _ = writeln!(out, "## Mix, Compress, Refine\n\n{PHASES_NOTE}\n");
        out.push_str(&phases_table(&results.analyses).markdown());
        out.push('\n');
    }
    if !plots.is_empty() {
        out.push_str("## Plots\n\n");
        for p in plots {
            let _ = writeln!(out, "![{}](plots/{})\n\n{}\n", p.title, p.file, p.caption);
        }
    }
    let _ = writeln!(
        out,
        "---\n\nWritten by `harness report`; run it again to regenerate every file from the results.\n\n{generated}"
    );
    out
}

/// One sentence saying what the report covers.
pub fn overview(results: &Results) -> String {
    format!(
        "{} eval result(s) on {} task(s) and {} layer analysis(es), over {} model(s): {}.",
        results.evals.len(),
        results.tasks().len(),
        results.analyses.len(),
        results.models().len(),
        results.models().join(", ")
    )
}

/// A float for the CSV files: the shortest form that reads back to the same value,
/// with an exponent where plain digits would run long (perplexities near layer 0).
fn csv_number(x: f64) -> String {
    if x != 0.0 && !(1e-5..1e16).contains(&x.abs()) {
        format!("{x:e}")
    } else {
        x.to_string()
    }
}

/// `results.csv`: one row per model, task, run and layer.
pub fn results_csv(evals: &[EvalResult]) -> Result<String> {
    let mut w = csv::Writer::from_writer(Vec::new());
    w.write_record([
        "model",
        "task",
        "kind",
        "metric",
        "higher_is_better",
        "pooling",
        "ablated",
        "ablated_blocks",
        "layer",
        "relative_depth",
        "score",
        "ci_low",
        "ci_high",
        "chance",
        "above_chance",
    ])?;
    for r in evals {
        let blocks: Vec<String> = r.settings.ablate.iter().map(usize::to_string).collect();
        // Empty where there is no chance level or none was recorded.
        let chance = r
            .chance()
            .and_then(|c| c.score)
            .map(csv_number)
            .unwrap_or_default();
        for l in &r.layers {
            w.write_record([
                r.model.name.clone(),
                r.task.name.clone(),
                kind(r),
                r.task.metric.clone(),
                r.task.higher_is_better.to_string(),
                pooling(r),
                (!r.settings.ablate.is_empty()).to_string(),
                blocks.join(" "),
                l.layer.to_string(),
                csv_number(l.relative_depth),
                csv_number(l.score),
                csv_number(l.ci_low),
                csv_number(l.ci_high),
                chance.clone(),
                l.above_chance.map(|a| a.to_string()).unwrap_or_default(),
            ])?;
        }
    }
    Ok(String::from_utf8(w.into_inner()?)?)
}

/// The analyze metrics `analyze.csv` carries (means over prompts): all of them, in
/// `analyze.json`'s order.
fn analyze_columns() -> impl Iterator<Item = &'static str> + Clone {
    ResidMetrics::NAMES
        .into_iter()
        .chain(AttentionMetrics::NAMES)
}

/// `analyze.csv`: one row per model, run (baseline or ablated) and layer; a metric
/// a layer does not have is an empty cell.
pub fn analyze_csv(analyses: &[Analysis]) -> Result<String> {
    let mut w = csv::Writer::from_writer(Vec::new());
    let mut header = vec![
        "model",
        "ablated",
        "ablated_blocks",
        "layer",
        "relative_depth",
        "phase",
    ];
    header.extend(analyze_columns());
    w.write_record(&header)?;
    for a in analyses {
        let mut runs = vec![(&a.layers, String::new())];
        if let Some(ab) = &a.ablation {
            let blocks: Vec<String> = ab.layers_ablated.iter().map(usize::to_string).collect();
            runs.push((&ab.layers, blocks.join(" ")));
        }
        for (layers, blocks) in runs {
            for l in layers {
                let mut record = vec![
                    a.model.name.clone(),
                    (!blocks.is_empty()).to_string(),
                    blocks.clone(),
                    l.layer.to_string(),
                    csv_number(a.depth(l.layer)),
                    phase(a, l.layer).into(),
                ];
                record.extend(
                    analyze_columns().map(|m| l.get(m).map(csv_number).unwrap_or_default()),
                );
                w.write_record(&record)?;
            }
        }
    }
    Ok(String::from_utf8(w.into_inner()?)?)
}

/// The phase `layer` is in.
pub fn phase(a: &Analysis, layer: usize) -> &'static str {
    let c = a.phases.compress;
    if layer < c.first {
        "mix"
    } else if layer <= c.last {
        "compress"
    } else {
        "refine"
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::report::tests::fixture_results;

    #[test]
    fn the_grid_has_a_column_per_model_and_a_row_per_task_and_run() {
        let t = grid_table(&fixture_results().evals);
        assert_eq!(t.columns, ["task", "metric", "run", "gemma3", "smollm2"]);
        let rows: Vec<(&str, &str)> = t
            .rows
            .iter()
            .map(|r| (r[0].text.as_str(), r[2].text.as_str()))
            .collect();
        assert_eq!(
            rows,
            [
                ("austen", "baseline"),
                ("austen", "ablated in block 12"),
                ("boolq-retrieval", "baseline"),
                ("lee-sts", "baseline"),
                ("mr", "baseline"),
                ("mr", "ablated in block 12"),
            ]
        );
        // gemma3 has no ablated runs; smollm2's mr peak is its best layer.
        assert_eq!(t.rows[1][3].text, "–");
        let mr = fixture_results()
            .evals
            .into_iter()
            .find(|r| {
                r.model.name == "smollm2" && r.task.name == "mr" && r.settings.ablate.is_empty()
            })
            .unwrap();
        assert_eq!(t.rows[4][4].sort, Some(mr.peak.score));
        assert!(t.rows[4][4].text.starts_with(&format!(
            "{} @ {} ",
            fmt_score(mr.peak.score),
            mr.peak.layer
        )));
    }

    #[test]
    fn verdicts_count_each_model_and_run_apart() {
        let mut evals = fixture_results().evals;
        let v = verdicts(&evals);
        let runs: Vec<(&str, &[usize], usize)> = v
            .iter()
            .map(|v| (v.model.as_str(), &v.ablate[..], v.tasks))
            .collect();
        assert_eq!(
            runs,
            [
                ("gemma3", &[][..], 4),
                ("smollm2", &[][..], 4),
                ("smollm2", &[12][..], 2)
            ]
        );
        for v in &v {
            assert_eq!(v.agree + v.disagreements.len(), v.tasks);
        }
        for r in &mut evals {
            r.prediction.holds = r.task.name != "mr";
        }
        let v = verdicts(&evals);
        assert!(v.iter().all(|v| v.disagreements.len() == 1));
        assert!(v[0].disagreements[0].starts_with("mr (classification, expected intermediate)"));
    }

    #[test]
    fn lower_is_better_metrics_peak_at_their_minimum() {
        let evals = fixture_results().evals;
        let perplexity = evals
            .iter()
            .find(|r| r.task.metric == "perplexity")
            .unwrap();
        assert!(!perplexity.task.higher_is_better);
        assert_eq!(metric_label(perplexity), "perplexity ↓");
        let lowest = perplexity
            .layers
            .iter()
            .map(|l| l.score)
            .fold(f64::INFINITY, f64::min);
        assert_eq!(perplexity.peak.score, lowest);
        // Gains are signed so that positive is better whatever the direction.
        assert!(evals.iter().all(|r| r.peak_vs_final.gain >= 0.0));
    }

    #[test]
    fn tables_sort_numbers_by_value_and_text_as_text() {
        let t = scores_table(&fixture_results().evals);
        assert_eq!(t.columns.len(), t.rows[0].len());
        let col = |name: &str| t.columns.iter().position(|c| *c == name).unwrap();
        assert!(t.numeric(col("peak depth")));
        assert!(t.numeric(col("peak score [95% CI]")));
        assert!(!t.numeric(col("model")));
        // The peak layer shows "11 / 30" but sorts as 11.
        let peak = &t.rows[0][col("peak layer")];
        assert!(peak.text.starts_with(&format!("{} / ", peak.sort.unwrap())));
        let md = t.markdown();
        assert_eq!(md.lines().count(), 2 + t.rows.len());
        assert!(md.lines().nth(1).unwrap().contains("---:|"));
    }

    #[test]
    fn csv_has_one_row_per_layer_and_exact_numbers() {
        let r = fixture_results();
        let csv = results_csv(&r.evals).unwrap();
        let layers: usize = r.evals.iter().map(|e| e.layers.len()).sum();
        assert_eq!(csv.lines().count(), 1 + layers);
        let mut reader = csv::Reader::from_reader(csv.as_bytes());
        let first = reader.records().next().unwrap().unwrap();
        let score: f64 = first[10].parse().unwrap();
        assert_eq!(score, r.evals[0].layers[0].score);
        let analyses = analyze_csv(&r.analyses).unwrap();
        let rows: usize = r
            .analyses
            .iter()
            .map(|a| a.layers.len() + a.ablation.as_ref().map_or(0, |b| b.layers.len()))
            .sum();
        assert_eq!(analyses.lines().count(), 1 + rows);
    }

    /// The fixtures with chance levels as a current run records them: smollm2's `mr`
    /// baseline shows no signal (its peak's interval reaches down to chance), perplexity
    /// has no chance level, every other result a signal.
    pub(crate) fn with_chance_levels() -> Vec<EvalResult> {
        let mut evals = fixture_results().evals;
        for r in &mut evals {
            let silent =
                r.model.name == "smollm2" && r.task.name == "mr" && r.settings.ablate.is_empty();
            let chance = match (silent, r.task.higher_is_better) {
                (true, _) => Some(r.peak.ci_low),
                (false, true) => Some(-1.0),
                (false, false) => None,
            };
            r.info.insert(
                "chance".into(),
                serde_json::json!({"score": chance, "rule": "made up for the test"}),
            );
            for l in &mut r.layers {
                l.above_chance = chance.map(|c| l.ci_low > c);
            }
            r.peak.above_chance = chance.map(|c| r.peak.ci_low > c);
            r.signal = r.peak.above_chance;
            r.prediction.holds &= !silent;
        }
        evals
    }

    #[test]
    fn no_signal_is_marked_in_every_table_and_missing_chance_said_so() {
        let old = scores_table(&fixture_results().evals);
        let chance = old.columns.iter().position(|c| c == "chance").unwrap();
        assert!(old.rows.iter().all(|r| r[chance].text == "not recorded"));
        assert!(old.rows.iter().flatten().all(|c| !c.no_signal));

        let evals = with_chance_levels();
        let silent = evals.iter().position(|r| r.signal == Some(false)).unwrap();
        let grid = grid_table(&evals);
        let marked: Vec<&Cell> = grid.rows.iter().flatten().filter(|c| c.no_signal).collect();
        assert_eq!(marked.len(), 1);
        assert!(
            marked[0].text.ends_with("— no signal"),
            "{}",
            marked[0].text
        );
        assert_eq!(marked[0].sort, Some(evals[silent].peak.score));

        let t = scores_table(&evals);
        let row = &t.rows[silent];
        assert_eq!(row[chance].text, fmt_score(evals[silent].peak.ci_low));
        assert!(row
            .iter()
            .any(|c| c.no_signal && c.text.contains("no signal")));
        assert!(row.last().unwrap().text.ends_with(": no signal"));
        assert_eq!(row[chance].sort, Some(evals[silent].peak.ci_low));
        let perplexity = evals
            .iter()
            .position(|r| r.task.metric == "perplexity")
            .unwrap();
        assert_eq!(t.rows[perplexity][chance].text, "none");

        let v = verdicts(&evals);
        let smollm2 = v
            .iter()
            .find(|v| v.model == "smollm2" && v.ablate.is_empty())
            .unwrap();
        assert!(smollm2
            .disagreements
            .iter()
            .any(|d| d.starts_with("mr (classification, expected intermediate): no signal")));

        let csv = results_csv(&evals).unwrap();
        let mut reader = csv::Reader::from_reader(csv.as_bytes());
        let header = reader.headers().unwrap().clone();
        assert_eq!(&header[13], "chance");
        assert_eq!(&header[14], "above_chance");
        for (record, l) in reader.records().zip(evals.iter().flat_map(|r| &r.layers)) {
            let record = record.unwrap();
            let above = l.above_chance.map(|a| a.to_string()).unwrap_or_default();
            assert_eq!(record[14], above);
        }
        let old_csv = results_csv(&fixture_results().evals).unwrap();
        assert!(old_csv.lines().nth(1).unwrap().ends_with(",,"));
    }

    #[test]
    fn csv_numbers_round_trip_and_stay_short() {
        for (x, text) in [
            (0.0, "0"),
            (0.75, "0.75"),
            (58.84, "58.84"),
            (1.5e218, "1.5e218"),
            (2.5e-7, "2.5e-7"),
        ] {
            assert_eq!(csv_number(x), text);
            assert_eq!(text.parse::<f64>().unwrap(), x);
        }
    }

    #[test]
    fn the_generated_line_holds_every_timestamp() {
        let r = fixture_results();
        let line = generated(&r, "2030-01-01T00:00:00Z");
        assert!(line.starts_with("generated: 2030-01-01T00:00:00Z "));
        let first = r.evals.iter().map(|e| e.created.as_str()).min().unwrap();
        assert!(line.contains(first));
        let md = markdown(&r, &[], &line);
        assert_eq!(md.matches("2030-01-01").count(), 1);
        assert_eq!(
            md.lines().filter(|l| l.starts_with("generated:")).count(),
            1
        );
    }

    #[test]
    fn phases_follow_the_compress_span() {
        let r = fixture_results();
        let a = &r.analyses[1];
        let c = a.phases.compress;
        assert_eq!(phase(a, c.first), "compress");
        assert_eq!(phase(a, c.last), "compress");
        assert_eq!(phase(a, 0), "mix");
        assert_eq!(phase(a, a.model.num_layers), "refine");
    }
}
