//! The report as one document: a title, an overview, sections (each an id, a title,
//! a note, and a table or figures) and a footer, built once from the results; plus the
//! per-layer tables behind the CSV files. The renderers (`markdown`, `html`,
//! `csv_file`) read only this; none reads another.

use super::analyses::phases_table;
use super::data::{analyze_layers, results_layers};
use super::evals::{grid_table, scores_table, verdict_table, verdicts};
use super::plots::Kind;
pub use super::plots::Plot;
use super::results::Results;
pub use super::table::{Cell, Table};

/// Everything one report shows.
#[derive(Debug)]
pub struct Document<'a> {
    /// The page's heading.
    pub title: &'static str,
    /// One sentence saying what the report covers.
    pub overview: String,
    /// In reading order; only those with something to show.
    pub sections: Vec<Section<'a>>,
    /// Said at the end of every page (Markdown code spans allowed).
    pub footer: &'static str,
    /// The line with every timestamp (see [`generated`]).
    pub generated: String,
    /// Tables written as files of their own: (file name, table).
    pub data: Vec<(&'static str, Table)>,
}

/// One part of the report.
#[derive(Debug)]
pub struct Section<'a> {
    /// Its anchor.
    pub id: &'static str,
    /// Its name in the page's navigation.
    pub nav: &'static str,
    /// Its heading.
    pub title: &'static str,
    /// What it shows and how to read it (Markdown code spans allowed).
    pub note: Option<&'static str>,
    pub content: Content<'a>,
}

/// What a section holds.
#[derive(Debug)]
pub enum Content<'a> {
    /// A table (with its anchor), and lists beneath it.
    Table {
        /// The table's own anchor.
        id: &'static str,
        table: Table,
        /// Said beneath the table.
        lists: Vec<List>,
    },
    /// Figures, in order.
    Figures(Vec<&'a Plot>),
}

/// A headed list under a table. Markdown shows an empty one as "nowhere"; the page
/// leaves it out.
#[derive(Debug)]
pub struct List {
    /// A sentence introducing the items.
    pub heading: String,
    /// One line each.
    pub items: Vec<String>,
}

/// The report of `results` with its `plots` and `generated` line.
pub fn build<'a>(results: &Results, plots: &'a [Plot], generated: String) -> Document<'a> {
    let mut sections = Vec::new();
    let table = |id, table| Content::Table {
        id,
        table,
        lists: Vec::new(),
    };
    if !results.evals.is_empty() {
        let evals = &results.evals;
        sections.push(Section {
            id: "leaderboard",
            nav: "Leaderboard",
            title: "Leaderboard",
            note: Some(GRID_NOTE),
            content: table("grid-table", grid_table(evals)),
        });
        sections.push(Section {
            id: "scores",
            nav: "Scores",
            title: "Scores by layer",
            note: Some(SCORES_NOTE),
            content: table("scores-table", scores_table(evals)),
        });
        let verdicts = verdicts(evals);
        let lists = verdicts
            .iter()
            .map(|v| List {
                heading: format!("Where it does not hold for {}, {}:", v.model, v.run),
                items: v.disagreements.clone(),
            })
            .collect();
        sections.push(Section {
            id: "prediction",
            nav: "Prediction",
            title: "The paper's prediction",
            note: Some(VERDICT_NOTE),
            content: Content::Table {
                id: "verdict-table",
                table: verdict_table(&verdicts),
                lists,
            },
        });
    }
    if !results.analyses.is_empty() {
        sections.push(Section {
            id: "phases",
            nav: "Phases",
            title: "Mix, Compress, Refine",
            note: Some(PHASES_NOTE),
            content: table("phases-table", phases_table(&results.analyses)),
        });
    }
    let of = |kind| {
        plots
            .iter()
            .filter(|p| p.kind() == kind)
            .collect::<Vec<_>>()
    };
    for (id, nav, title, figures) in [
        (
            "task-plots",
            "Depth curves",
            "Scores against depth",
            of(Kind::Task),
        ),
        (
            "analysis-plots",
            "Layer analyses",
            "Layer analyses",
            of(Kind::Analysis),
        ),
        (
            "training-plots",
            "Checkpoints",
            "Across training checkpoints",
            of(Kind::Training),
        ),
    ] {
        if !figures.is_empty() {
            sections.push(Section {
                id,
                nav,
                title,
                note: None,
                content: Content::Figures(figures),
            });
        }
    }
    Document {
        title: "What every layer is good for",
        overview: overview(results),
        sections,
        footer:
            "Written by `harness report`; run it again to regenerate every file from the results.",
        generated,
        data: vec![
            ("results.csv", results_layers(&results.evals)),
            ("analyze.csv", analyze_layers(&results.analyses)),
        ],
    }
}

/// What the grid's cells say.
pub const GRID_NOTE: &str = "Models across, tasks down. Each cell: the best score over layers @ its layer \
(its relative depth, layer over blocks); then the final layer's score. \"no signal\" (greyed in HTML) marks a \
best score that is not significantly above the task's chance level: no layer beats a guess, so there is no peak. \
Intervals, gains, chance levels and tests are in the table below.";

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

/// One sentence saying what the report covers.
fn overview(results: &Results) -> String {
    format!(
        "{} eval result(s) on {} task(s) and {} layer analysis(es), over {} model(s): {}.",
        results.evals.len(),
        results.tasks().len(),
        results.analyses.len(),
        results.models().len(),
        results.models().join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::tests::fixture_results;

    #[test]
    fn the_generated_line_holds_every_timestamp() {
        let r = fixture_results();
        let line = generated(&r, "2030-01-01T00:00:00Z");
        assert!(line.starts_with("generated: 2030-01-01T00:00:00Z "));
        let first = r.evals.iter().map(|e| e.created.as_str()).min().unwrap();
        assert!(line.contains(first));
        let md = crate::report::markdown::render(&build(&r, &[], line.clone()));
        assert_eq!(md.matches("2030-01-01").count(), 1);
        assert_eq!(
            md.lines().filter(|l| l.starts_with("generated:")).count(),
            1
        );
    }
}
