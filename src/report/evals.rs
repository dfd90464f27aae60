//! The tables of eval results: the leaderboard grid, every result's scores, and the
//! verdicts on the paper's prediction.

use std::collections::BTreeMap;

use super::table::{Cell, Table};
use super::text::{
    chance_text, eval_run_label, fmt_score, holds_on, metric_label, pooling, verdict,
};
use crate::results::eval::EvalResult;

/// The result's peak score cell, marked "no signal" where it is not above chance:
/// greyed out in HTML, and the text says so too for Markdown and CSV readers.
fn peak_cell(r: &EvalResult, text: String) -> Cell {
    let no_signal = r.signal == Some(false);
    Cell {
        text: if no_signal {
            format!("{text} — no signal")
        } else {
            text
        },
        no_signal,
        ..Cell::number("", r.peak.score)
    }
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
        let run = eval_run_label(&r.settings);
        let (_, cells) = rows
            .entry((r.task.name.as_str(), !r.settings.ablate.is_empty(), run))
            .or_insert_with(|| (metric_label(r), vec![Cell::text("–"); models.len()]));
        let column = models
            .binary_search(&r.model.name.as_str())
            .expect("listed above");
        cells[column] = peak_cell(
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
    let mut columns: Vec<String> = ["task", "metric", "run"].map(String::from).into();
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

/// A score with its interval.
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

/// Every result as one row: where it peaks, how good the peak is, and how it
/// compares with the final layer.
pub fn scores_table(evals: &[EvalResult]) -> Table {
    let rows = evals
        .iter()
        .map(|r| {
            let c = &r.peak_vs_final;
            vec![
                Cell::text(&r.task.name),
                Cell::text(r.task.kind.to_string()),
                Cell::text(metric_label(r)),
                Cell::text(pooling(r)),
                Cell::text(&r.model.name),
                Cell::text(eval_run_label(&r.settings)),
                Cell::number(
                    format!("{} / {}", r.peak.layer, r.last.layer),
                    r.peak.layer as f64,
                ),
                Cell::number(
                    format!("{:.2}", r.peak.relative_depth),
                    r.peak.relative_depth,
                ),
                peak_cell(r, with_ci(r.peak.score, r.peak.ci_low, r.peak.ci_high)),
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
    Table::new(
        &[
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
        ],
        rows,
    )
}

/// How many of one model's tasks behave as the paper predicts, in one kind of run.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    pub model: String,
    /// Blocks ablated in these runs (empty: the unmodified model).
    pub ablate: Vec<usize>,
    /// The runs' label: the ablation, and the dtype and device where not f32 on the CPU.
    pub run: String,
    pub tasks: usize,
    pub agree: usize,
    /// One line per task where the prediction does not hold.
    pub disagreements: Vec<String>,
}

/// Verdicts per model and run, from each result's `prediction.holds`; the baseline
/// before ablated runs.
pub fn verdicts(evals: &[EvalResult]) -> Vec<Verdict> {
    type Group<'a> = (&'a str, &'a [usize], &'a str, &'a str);
    let mut groups: BTreeMap<Group, Vec<&EvalResult>> = BTreeMap::new();
    for r in evals {
        let s = &r.settings;
        groups
            .entry((&r.model.name, &s.ablate, &s.dtype, &s.device))
            .or_default()
            .push(r);
    }
    groups
        .into_iter()
        .map(|((model, ablate, _, _), runs)| Verdict {
            model: model.into(),
            ablate: ablate.to_vec(),
            run: eval_run_label(&runs[0].settings),
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
            r.task.kind,
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
        r.task.kind,
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
                Cell::text(&v.run),
                Cell::number(v.tasks.to_string(), v.tasks as f64),
                Cell::number(v.agree.to_string(), v.agree as f64),
                Cell::number((v.tasks - v.agree).to_string(), (v.tasks - v.agree) as f64),
                Cell::text(holds_on(v.agree, v.tasks)),
            ]
        })
        .collect();
    Table::new(
        &["model", "run", "tasks", "agree", "disagree", "verdict"],
        rows,
    )
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::report::tests::fixture_results;

    /// `results.csv` of `evals`, as the report writes it.
    fn results_csv(evals: &[EvalResult]) -> anyhow::Result<String> {
        crate::report::csv_file::render(&crate::report::data::results_layers(evals))
    }

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
        let md = crate::report::markdown::table(&t);
        assert_eq!(md.lines().count(), 2 + t.rows.len());
        assert!(md.lines().nth(1).unwrap().contains("---:|"));
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
}
