//! The report's figures, drawn with plotters into SVG strings: per task, the score
//! against relative depth with one line per model; per model, the analyze curves
//! with the phases shaded.
//!
//! Every figure but those across training checkpoints ([`super::training`]) shares
//! one x axis, relative depth in [0, 1], so that models with different numbers of
//! blocks line up, and each model keeps one colour throughout.

use anyhow::Result;
use plotters::coord::ranged1d::ValueFormatter;
use plotters::coord::types::RangedCoordf64;
use plotters::coord::Shift;
use plotters::element::DashedPathElement;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::results::Results;
use super::text::{eval_run_label, metric_label, run_label};
use crate::results::analyze::{AnalyzeResult, LayerStats, Span};
use crate::results::eval::{file_safe, EvalResult};

/// One figure: its file name under `plots/`, a title and caption for the pages
/// that show it, and the SVG.
#[derive(Debug, Clone, PartialEq)]
pub struct Plot {
    pub file: String,
    pub title: String,
    pub caption: String,
    pub svg: String,
}

/// The folder of a report's figures, beside its pages.
pub const DIR: &str = "plots";
/// File names of score-by-depth figures start with this, then the task's name.
const TASK_PREFIX: &str = "task-";
/// File names of layer-analysis figures start with this, then the model's name.
const ANALYSIS_PREFIX: &str = "analyze-";
/// File names of figures across training checkpoints start with this.
pub(super) const TRAINING_PREFIX: &str = "training-";

/// What a figure shows, which decides its section.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A task's scores by depth.
    Task,
    /// A model's layer analysis.
    Analysis,
    /// A model's checkpoints against the training step.
    Training,
}

impl Plot {
    /// Where the figure goes, relative to the report's folder.
    pub fn path(&self) -> String {
        format!("{DIR}/{}", self.file)
    }

    /// What it shows, from its file name.
    pub fn kind(&self) -> Kind {
        if self.file.starts_with(TASK_PREFIX) {
            Kind::Task
        } else if self.file.starts_with(TRAINING_PREFIX) {
            Kind::Training
        } else {
            Kind::Analysis
        }
    }
}

/// Whether `name` is a file name this module gives a figure: a report may remove
/// such a file when it no longer draws it.
pub fn is_figure_file(name: &str) -> bool {
    [TASK_PREFIX, ANALYSIS_PREFIX, TRAINING_PREFIX]
        .iter()
        .any(|p| name.starts_with(p))
        && name.ends_with(".svg")
}

/// Tableau's ten colours: distinct, and readable on white and on the pale phases.
pub(super) const PALETTE: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

const FONT: &str = "sans-serif";
const WIDTH: u32 = 720;
const X_RANGE: std::ops::Range<f64> = -0.02..1.02;
const GRID: RGBColor = RGBColor(225, 225, 225);
const AXIS_TEXT: RGBColor = RGBColor(40, 40, 40);

/// Every figure of the report: tasks first, then analyses, each sorted by name, then
/// the figures across training checkpoints.
pub fn all(results: &Results) -> Result<Vec<Plot>> {
    let models = results.models();
    let colour = |model: &str| {
        let i = models.iter().position(|m| *m == model).unwrap_or(0);
        PALETTE[i % PALETTE.len()]
    };
    let mut plots = Vec::new();
    for task in results.tasks() {
        let runs: Vec<&EvalResult> = results
            .evals
            .iter()
            .filter(|r| r.task.name == task)
            .collect();
        plots.push(task_plot(&runs, &colour)?);
    }
    for a in &results.analyses {
        plots.push(analysis_plot(a, colour(&a.model.name))?);
    }
    plots.extend(super::training::plots(results)?);
    Ok(plots)
}

/// A line to draw, broken where values are missing.
pub(super) struct Series {
    pub label: String,
    pub colour: RGBColor,
    pub dashed: bool,
    pub segments: Vec<Vec<(f64, f64)>>,
    /// Interval around the line: (x, low, high).
    pub band: Vec<(f64, f64, f64)>,
    /// A point to mark (the peak).
    pub marker: Option<(f64, f64)>,
}

/// A stretch of depth shaded behind the lines, with its name.
pub(super) struct Shade {
    from: f64,
    to: f64,
    colour: RGBColor,
    label: &'static str,
}

pub(super) enum YAxis {
    Linear(f64, f64),
    Log(f64, f64),
}

/// What the x axis measures.
pub(super) enum XAxis {
    /// Relative depth, [`X_RANGE`].
    Depth,
    /// The training step, over this range.
    Steps(f64, f64),
}

/// One chart: an axis, its lines and the shading behind them.
pub(super) struct Panel {
    pub y_desc: String,
    pub y: YAxis,
    pub x: XAxis,
    pub series: Vec<Series>,
    pub shades: Vec<Shade>,
    /// Only the bottom panel of a stack labels the shared x axis.
    pub x_axis: bool,
    /// Only the top panel of a stack names the shaded phases.
    pub shade_labels: bool,
}

/// Splits `points` where the value is missing or cannot be drawn on the axis.
pub(super) fn segments(
    points: impl Iterator<Item = (f64, Option<f64>)>,
    log: bool,
) -> Vec<Vec<(f64, f64)>> {
    let mut out: Vec<Vec<(f64, f64)>> = vec![Vec::new()];
    for (x, y) in points {
        match y.filter(|y| y.is_finite() && (!log || *y > 0.0)) {
            Some(y) => out.last_mut().expect("never empty").push((x, y)),
            None if out.last().is_some_and(|s| !s.is_empty()) => out.push(Vec::new()),
            None => {}
        }
    }
    out.retain(|s| !s.is_empty());
    out
}

/// An axis that holds `values` with a little room: logarithmic when they are all
/// positive and span more than two orders of magnitude (perplexities, norms).
pub(super) fn y_axis(values: impl Iterator<Item = f64>) -> YAxis {
    let values: Vec<f64> = values.filter(|v| v.is_finite()).collect();
    let lo = values.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if values.is_empty() {
        return YAxis::Linear(0.0, 1.0);
    }
    if lo > 0.0 && hi / lo > 100.0 {
        return YAxis::Log(lo / 1.5, hi * 1.5);
    }
    let pad = ((hi - lo) * 0.06).max(hi.abs().max(1e-3) * 0.02);
    YAxis::Linear(lo - pad, hi + pad)
}

/// A tick label: a few digits, powers of ten beyond them.
pub(super) fn tick(v: f64) -> String {
    let v = v + 0.0; // no "-0"
    if v != 0.0 && !(0.01..10_000.0).contains(&v.abs()) {
        format!("{v:.0e}")
    } else {
        let s = format!("{v:.2}");
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    }
}

/// Draws a figure of `height` pixels: a title, panels stacked on a shared depth axis
/// and a legend of every labelled line below them.
pub(super) fn figure(title: &str, height: u32, panels: &[Panel]) -> Result<String> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (WIDTH, height)).into_drawing_area();
        root.fill(&WHITE)?;
        let body = root.titled(title, (FONT, 24).into_font().color(&AXIS_TEXT))?;
        let legend: Vec<&Series> = panels[0].series.iter().collect();
        let rows = legend_rows(&legend);
        let legend_height = 14 + 26 * rows.len() as u32;
        let body_height = body.dim_in_pixel().1.saturating_sub(legend_height);
        let (charts, legend_area) = body.split_vertically(body_height);
        let areas = charts.split_evenly((panels.len(), 1));
        for (panel, area) in panels.iter().zip(&areas) {
            draw_panel(area, panel)?;
        }
        draw_legend(&legend_area, &rows)?;
        root.present()?;
    }
    Ok(svg)
}

/// Estimated width of `text` at `size` (plotters' SVG backend cannot measure
/// text; the browser draws it).
fn text_width(text: &str, size: f64) -> i32 {
    (0.56 * size * text.chars().count() as f64).round() as i32
}

const LEGEND_FONT: f64 = 18.0;
const LEGEND_SAMPLE: i32 = 28;

/// Legend entries laid out left to right, wrapping at the figure's width.
fn legend_rows<'a>(series: &[&'a Series]) -> Vec<Vec<(i32, &'a Series)>> {
    let mut rows: Vec<Vec<(i32, &Series)>> = Vec::new();
    let mut x = 0;
    for s in series {
        let w = LEGEND_SAMPLE + 8 + text_width(&s.label, LEGEND_FONT) + 24;
        if rows.is_empty() || x + w > WIDTH as i32 - 16 {
            rows.push(Vec::new());
            x = 80;
        }
        rows.last_mut().expect("pushed above").push((x, s));
        x += w;
    }
    rows
}

fn draw_legend(
    area: &DrawingArea<SVGBackend<'_>, Shift>,
    rows: &[Vec<(i32, &Series)>],
) -> Result<()> {
    let font = (FONT, LEGEND_FONT)
        .into_font()
        .color(&AXIS_TEXT)
        .pos(Pos::new(HPos::Left, VPos::Center));
    for (i, row) in rows.iter().enumerate() {
        let y = 14 + 26 * i as i32;
        for (x, s) in row {
            let line = vec![(*x, y), (x + LEGEND_SAMPLE, y)];
            let style = s.colour.stroke_width(3);
            if s.dashed {
                area.draw(&DashedPathElement::new(line, 7, 4, style))?;
            } else {
                area.draw(&PathElement::new(line, style))?;
            }
            area.draw(&Text::new(
                s.label.clone(),
                (x + LEGEND_SAMPLE + 8, y),
                font.clone(),
            ))?;
        }
    }
    Ok(())
}

fn draw_panel(area: &DrawingArea<SVGBackend<'_>, Shift>, panel: &Panel) -> Result<()> {
    let mut builder = ChartBuilder::on(area);
    builder
        .margin_top(if panel.shade_labels { 26 } else { 8 })
        .margin_right(22)
        .x_label_area_size(if panel.x_axis { 52 } else { 8 })
        .y_label_area_size(84);
    let x = match panel.x {
        XAxis::Depth => X_RANGE,
        XAxis::Steps(lo, hi) => lo..hi,
    };
    match panel.y {
        YAxis::Linear(lo, hi) => fill_panel(builder.build_cartesian_2d(x, lo..hi)?, panel, hi),
        YAxis::Log(lo, hi) => fill_panel(
            builder.build_cartesian_2d(x, (lo..hi).log_scale())?,
            panel,
            hi,
        ),
    }
}

/// Draws a panel's mesh, shading, bands, lines and markers, in that order so that
/// lines stay on top.
fn fill_panel<Y>(
    mut chart: ChartContext<'_, SVGBackend<'_>, Cartesian2d<RangedCoordf64, Y>>,
    panel: &Panel,
    top: f64,
) -> Result<()>
where
    Y: Ranged<ValueType = f64> + ValueFormatter<f64>,
{
    let (y_lo, y_hi) = {
        let r = chart.y_range();
        (r.start, r.end)
    };
    for s in &panel.shades {
        chart.draw_series(std::iter::once(Rectangle::new(
            [(s.from, y_lo), (s.to, y_hi)],
            s.colour.filled(),
        )))?;
    }
    let no_label = |_: &f64| String::new();
    let x_label = |x: &f64| match panel.x {
        XAxis::Depth => format!("{x:.1}"),
        XAxis::Steps(..) => tick(x.round()),
    };
    let y_label = |y: &f64| tick(*y);
    let mut mesh = chart.configure_mesh();
    mesh.light_line_style(WHITE.mix(0.0))
        .bold_line_style(GRID)
        .axis_style(AXIS_TEXT)
        .label_style((FONT, 17).into_font().color(&AXIS_TEXT))
        .axis_desc_style((FONT, 18).into_font().color(&AXIS_TEXT))
        .x_labels(match panel.x {
            XAxis::Depth => 11,
            XAxis::Steps(..) => 6,
        })
        .y_labels(6)
        .y_desc(panel.y_desc.as_str())
        .y_label_formatter(&y_label);
    if panel.x_axis {
        mesh.x_desc(match panel.x {
            XAxis::Depth => "relative depth (layer / blocks)",
            XAxis::Steps(..) => "training step (from the revision's name)",
        })
        .x_label_formatter(&x_label);
    } else {
        mesh.x_label_formatter(&no_label);
    }
    mesh.draw()?;
    if panel.shade_labels {
        // Above the plotting area (in the panel's top margin), clear of the lines.
        let font = (FONT, 17)
            .into_font()
            .color(&AXIS_TEXT)
            .pos(Pos::new(HPos::Center, VPos::Bottom));
        for s in &panel.shades {
            chart.draw_series(std::iter::once(Text::new(
                s.label,
                ((s.from + s.to) / 2.0, top),
                font.clone(),
            )))?;
        }
    }
    for s in &panel.series {
        if s.band.len() > 1 {
            let points: Vec<(f64, f64)> = s
                .band
                .iter()
                .map(|&(x, _, hi)| (x, hi.clamp(y_lo, y_hi)))
                .chain(
                    s.band
                        .iter()
                        .rev()
                        .map(|&(x, lo, _)| (x, lo.clamp(y_lo, y_hi))),
                )
                .collect();
            chart.draw_series(std::iter::once(Polygon::new(
                points,
                s.colour.mix(0.14).filled(),
            )))?;
        }
    }
    for s in &panel.series {
        let style = s.colour.stroke_width(2);
        for seg in &s.segments {
            if s.dashed {
                chart.draw_series(DashedLineSeries::new(seg.iter().copied(), 7, 4, style))?;
            } else {
                chart.draw_series(LineSeries::new(seg.iter().copied(), style))?;
            }
        }
        if let Some(p) = s.marker {
            chart.draw_series(std::iter::once(Circle::new(p, 5, s.colour.filled())))?;
            chart.draw_series(std::iter::once(Circle::new(p, 5, WHITE.stroke_width(1))))?;
        }
    }
    Ok(())
}

/// Score against depth for one task, one line per model and run.
fn task_plot(runs: &[&EvalResult], colour: &dyn Fn(&str) -> RGBColor) -> Result<Plot> {
    let first = runs[0];
    let axis = y_axis(
        runs.iter()
            .flat_map(|r| r.layers.iter().flat_map(|l| [l.score, l.ci_low, l.ci_high])),
    );
    let log = matches!(axis, YAxis::Log(..));
    let series = runs
        .iter()
        .map(|r| {
            let run = eval_run_label(&r.settings);
            let label = if run == run_label(&[]) {
                r.model.name.clone()
            } else {
                format!("{}, {run}", r.model.name)
            };
            Series {
                label,
                colour: colour(&r.model.name),
                dashed: !r.settings.ablate.is_empty(),
                segments: segments(
                    r.layers.iter().map(|l| (l.relative_depth, Some(l.score))),
                    log,
                ),
                band: r
                    .layers
                    .iter()
                    .map(|l| (l.relative_depth, l.ci_low, l.ci_high))
                    .collect(),
                marker: Some((r.peak.relative_depth, r.peak.score)),
            }
        })
        .collect();
    let title = format!(
        "{} ({}): {} by depth",
        first.task.name, first.task.kind, first.task.metric
    );
    let panel = Panel {
        y_desc: format!("{}{}", metric_label(first), if log { " (log)" } else { "" }),
        y: axis,
        x: XAxis::Depth,
        series,
        shades: Vec::new(),
        x_axis: true,
        shade_labels: false,
    };
    let svg = figure(&title, 480, std::slice::from_ref(&panel))?;
    let caption = format!(
        "{}: {} at every layer against relative depth{}, one line per model (dashed: ablated run), \
         with its 95% bootstrap interval as a band; the dot marks the peak. {}",
        first.task.name,
        metric_label(first),
        if log { " on a log scale" } else { "" },
        first.task.description
    );
    Ok(Plot {
        file: format!("{TASK_PREFIX}{}.svg", file_safe(&first.task.name)),
        title,
        caption,
        svg,
    })
}

/// Pale backgrounds for Mix, Compress and Refine.
const PHASE_COLOURS: [RGBColor; 3] = [
    RGBColor(226, 236, 247),
    RGBColor(253, 234, 214),
    RGBColor(228, 243, 224),
];

/// The phases as shaded stretches of depth; each layer owns the half-layer either
/// side of it, so neighbouring phases meet without a gap.
fn phase_shades(a: &AnalyzeResult) -> Vec<Shade> {
    let p = &a.phases;
    [
        (p.mix, "Mix", PHASE_COLOURS[0]),
        (Some(p.compress), "Compress", PHASE_COLOURS[1]),
        (p.refine, "Refine", PHASE_COLOURS[2]),
    ]
    .into_iter()
    .filter_map(|(span, label, colour)| {
        span.map(|Span { first, last }| Shade {
            from: (a.depth(first) - 0.5 * a.depth(1)).max(X_RANGE.start),
            to: (a.depth(last) + 0.5 * a.depth(1)).min(X_RANGE.end),
            colour,
            label,
        })
    })
    .collect()
}

/// The analyze curves of one model: first-token norm, normalised entropy and sink
/// rate, the ablated run dashed beside the baseline.
fn analysis_plot(a: &AnalyzeResult, colour: RGBColor) -> Result<Plot> {
    let ablation = a.ablation.as_ref();
    let mut runs: Vec<(String, bool, &[LayerStats])> = vec![("baseline".into(), false, &a.layers)];
    if let Some(ab) = ablation {
        runs.push((
            format!(
                "first-token MLP {} (loss {:+.3} nats)",
                run_label(&ab.layers_ablated),
                ab.loss_change
            ),
            true,
            &ab.layers,
        ));
    }
    let panel = |metric: &str, y_desc: &str, log: bool, x_axis: bool, shade_labels: bool| {
        let values = runs
            .iter()
            .flat_map(|(_, _, layers)| layers.iter().filter_map(|l| l.mean(metric)));
        Panel {
            y_desc: y_desc.into(),
            y: if log {
                y_axis(values.filter(|v| *v > 0.0))
            } else {
                YAxis::Linear(-0.03, 1.03)
            },
            x: XAxis::Depth,
            series: runs
                .iter()
                .map(|(label, dashed, layers)| Series {
                    label: label.clone(),
                    colour,
                    dashed: *dashed,
                    segments: segments(
                        layers.iter().map(|l| (a.depth(l.layer), l.mean(metric))),
                        log,
                    ),
                    band: Vec::new(),
                    marker: None,
                })
                .collect(),
            shades: phase_shades(a),
            x_axis,
            shade_labels,
        }
    };
    let panels = [
        panel("first_norm", "first-token norm (log)", true, false, true),
        panel(
            "entropy_normalized",
            "normalised entropy",
            false,
            false,
            false,
        ),
        panel("sink_rate", "sink rate (τ = 0.3)", false, true, false),
    ];
    let title = format!(
        "{}: first token, compression and sinks by depth",
        a.model.name
    );
    let svg = figure(&title, 760, &panels)?;
    let ablated = match ablation {
        Some(ab) => format!(
            " Dashed: the first token's MLP output {}; next-token loss {:.3} → {:.3} nats ({:+.3}).",
            run_label(&ab.layers_ablated),
            ab.loss_baseline,
            ab.loss_ablated,
            ab.loss_change
        ),
        None => String::new(),
    };
    let caption = format!(
        "{}: the first token's residual norm (log scale), the normalised matrix entropy of the \
         token representations and the fraction of attention heads that sink on the first token, \
         at every layer ({} blocks), means over {} prompts; the phases Mix, Compress and Refine shaded.{ablated}",
        a.model.name, a.model.config.num_layers, a.settings.prompts
    );
    Ok(Plot {
        file: format!("{ANALYSIS_PREFIX}{}.svg", file_safe(&a.model.name)),
        title,
        caption,
        svg,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::tests::fixture_results;

    #[test]
    fn lines_break_where_values_are_missing_or_off_a_log_axis() {
        let points = [
            (0.0, Some(1.0)),
            (0.1, None),
            (0.2, Some(2.0)),
            (0.3, Some(0.0)),
        ];
        assert_eq!(segments(points.into_iter(), false).len(), 2);
        assert_eq!(
            segments(points.into_iter(), true),
            [vec![(0.0, 1.0)], vec![(0.2, 2.0)]]
        );
    }

    #[test]
    fn axes_go_logarithmic_only_over_two_decades() {
        assert!(
            matches!(y_axis([0.5, 0.9].into_iter()), YAxis::Linear(lo, hi) if lo < 0.5 && hi > 0.9)
        );
        assert!(matches!(y_axis([58.0, 1e48].into_iter()), YAxis::Log(..)));
        assert!(matches!(
            y_axis([-1.0, 1e48].into_iter()),
            YAxis::Linear(..)
        ));
        assert!(matches!(
            y_axis(std::iter::empty()),
            YAxis::Linear(0.0, 1.0)
        ));
    }

    #[test]
    fn ticks_are_short() {
        assert_eq!(tick(-0.0), "0");
        assert_eq!(tick(0.5), "0.5");
        assert_eq!(tick(1e48), "1e48");
    }

    #[test]
    fn every_task_and_analysis_gets_a_plot_drawn_the_same_each_time() {
        let r = fixture_results();
        let plots = all(&r).unwrap();
        let files: Vec<&str> = plots.iter().map(|p| p.file.as_str()).collect();
        assert_eq!(
            files,
            [
                "task-austen.svg",
                "task-boolq-retrieval.svg",
                "task-lee-sts.svg",
                "task-mr.svg",
                "analyze-gemma3.svg",
                "analyze-smollm2.svg"
            ]
        );
        // The ablated run is dashed beside the baseline.
        let mr = &plots[3].svg;
        assert!(mr.contains("smollm2, ablated in block 12"));
        assert_eq!(plots, all(&r).unwrap());
    }
}
