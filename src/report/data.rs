//! The per-layer tables behind `results.csv` and `analyze.csv`: every number exact,
//! for reading back into other tools.

use super::table::{Cell, Table};
use super::text::pooling;
use crate::results::analyze::{metric_names, AnalyzeResult};
use crate::results::eval::EvalResult;

/// A float for the CSV files: the shortest form that reads back to the same value,
/// with an exponent where plain digits would run long (perplexities near layer 0).
fn csv_number(x: f64) -> String {
    if x != 0.0 && !(1e-5..1e16).contains(&x.abs()) {
        format!("{x:e}")
    } else {
        x.to_string()
    }
}

/// A row of text cells: these tables are only ever written as CSV.
fn row(cells: impl IntoIterator<Item = String>) -> Vec<Cell> {
    cells.into_iter().map(Cell::text).collect()
}

/// `results.csv`: one row per model, task, run and layer.
pub fn results_layers(evals: &[EvalResult]) -> Table {
    let mut rows = Vec::new();
    for r in evals {
        let blocks: Vec<String> = r.settings.ablate.iter().map(usize::to_string).collect();
        // Empty where there is no chance level or none was recorded.
        let chance = r
            .chance()
            .and_then(|c| c.score)
            .map(csv_number)
            .unwrap_or_default();
        for l in &r.layers {
            rows.push(row([
                r.model.name.clone(),
                r.task.name.clone(),
                r.task.kind.to_string(),
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
            ]));
        }
    }
    Table::new(
        &[
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
        ],
        rows,
    )
}

/// `analyze.csv`: one row per model, run (baseline or ablated) and layer, with every
/// metric's mean over prompts in `analyze.json`'s order; a metric a layer does not
/// have is an empty cell.
pub fn analyze_layers(analyses: &[AnalyzeResult]) -> Table {
    let mut rows = Vec::new();
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
                    a.phases.of(l.layer).name().into(),
                ];
                record
                    .extend(metric_names().map(|m| l.mean(m).map(csv_number).unwrap_or_default()));
                rows.push(row(record));
            }
        }
    }
    let mut columns = vec![
        "model",
        "ablated",
        "ablated_blocks",
        "layer",
        "relative_depth",
        "phase",
    ];
    columns.extend(metric_names());
    Table::new(&columns, rows)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::csv_file::render;
    use crate::report::tests::fixture_results;

    #[test]
    fn csv_has_one_row_per_layer_and_exact_numbers() {
        let r = fixture_results();
        let csv = render(&results_layers(&r.evals)).unwrap();
        let layers: usize = r.evals.iter().map(|e| e.layers.len()).sum();
        assert_eq!(csv.lines().count(), 1 + layers);
        let mut reader = csv::Reader::from_reader(csv.as_bytes());
        let first = reader.records().next().unwrap().unwrap();
        let score: f64 = first[10].parse().unwrap();
        assert_eq!(score, r.evals[0].layers[0].score);
        let analyses = render(&analyze_layers(&r.analyses)).unwrap();
        let rows: usize = r
            .analyses
            .iter()
            .map(|a| a.layers.len() + a.ablation.as_ref().map_or(0, |b| b.layers.len()))
            .sum();
        assert_eq!(analyses.lines().count(), 1 + rows);
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
}
