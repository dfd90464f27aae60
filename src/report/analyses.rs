//! The table of layer analyses: each model's phases, the extremes of the curves they
//! are read from, and what the first-token ablation did to the loss.

use super::table::{Cell, Table};
use super::text::{blocks, short};
use crate::results::analyze::{AnalyzeResult, LayerStats, Phase, Span};

/// A phase as layers, and for Compress, as depth too (the paper's comparison
/// across models).
fn span(s: Option<Span>, a: Option<&AnalyzeResult>) -> String {
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
        .filter_map(|l| l.mean(metric).map(|v| (l.layer, v)))
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
fn mean_in(a: &AnalyzeResult, metric: &str, inside: bool) -> Option<f64> {
    let values: Vec<f64> = a
        .layers
        .iter()
        .filter(|l| (a.phases.of(l.layer) == Phase::Compress) == inside)
        .filter_map(|l| l.mean(metric))
        .collect();
    (!values.is_empty()).then(|| values.iter().sum::<f64>() / values.len() as f64)
}

/// One row per analysed model: its phases, the extremes of the curves the paper
/// reads them from, and the ablation's effect on the loss.
pub fn phases_table(analyses: &[AnalyzeResult]) -> Table {
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
                Cell::number(
                    a.model.config.num_layers.to_string(),
                    a.model.config.num_layers as f64,
                ),
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
    Table::new(
        &[
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
        ],
        rows,
    )
}
