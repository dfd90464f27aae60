//! What is read off the per-layer curves: the Mix/Compress/Refine phases from the
//! entropy, and the block whose first-token norm grows most, which `--ablate auto`
//! ablates.

use super::layers::{LayerStats, Phases, Span};

/// The block `l` maximising `||x_0^(l)|| / ||x_0^(l-1)||` (mean first-token norms), and
/// that ratio.
pub fn largest_first_norm_growth(layers: &[LayerStats]) -> (usize, f64) {
    let norm = |l: usize| layers[l].mean("first_norm").unwrap_or(f64::NAN);
    (1..layers.len())
        .map(|l| (l, norm(l) / norm(l - 1)))
        .filter(|(_, g)| g.is_finite())
        .fold((1, f64::NEG_INFINITY), |best, cur| {
            if cur.1 > best.1 {
                cur
            } else {
                best
            }
        })
}

/// The blocks `--ablate auto` chooses from the baseline's `layers`, and the rule that
/// chose them as recorded in the output.
pub fn auto_rule(layers: &[LayerStats]) -> (Vec<usize>, String) {
    let (block, growth) = largest_first_norm_growth(layers);
    let rule = format!("auto: the block whose output's first-token norm grows most over its input's (block {block}, x{growth:.1})");
    (vec![block], rule)
}

/// The phase rule: compression spans from the first to the last layer whose normalised
/// entropy is at or below the geometric mean of the curve's minimum and maximum (half
/// way between them on a log scale, the minimum floored at 1e-6); mixing is before it,
/// refinement after.
pub fn phases(layers: &[LayerStats]) -> Phases {
    let h: Vec<f64> = layers
        .iter()
        .map(|l| l.mean("entropy_normalized").unwrap_or(f64::NAN))
        .collect();
    let finite = || h.iter().copied().filter(|v| v.is_finite());
    let lo = finite().fold(f64::INFINITY, f64::min).max(1e-6);
    let hi = finite().fold(f64::NEG_INFINITY, f64::max);
    let threshold = (lo * hi).sqrt();
    let low: Vec<usize> = (0..h.len()).filter(|&l| h[l] <= threshold).collect();
    // The layer at the minimum is always at or below the threshold.
    let (first, last) = match (low.first(), low.last()) {
        (Some(&f), Some(&l)) => (f, l),
        _ => (0, h.len() - 1),
    };
    let depth = (h.len() - 1).max(1) as f64;
    Phases {
        rule: "compress = first..last layer with entropy_normalized <= sqrt(min * max) of the curve (min floored at 1e-6); mix before, refine after".into(),
        threshold,
        mix: (first > 0).then_some(Span {
            first: 0,
            last: first - 1,
        }),
        compress: Span { first, last },
        refine: (last + 1 < h.len()).then_some(Span {
            first: last + 1,
            last: h.len() - 1,
        }),
        compress_depth: [first as f64 / depth, last as f64 / depth],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diagnostics::layers::Stat;

    fn layers_with(name: &'static str, values: &[f64]) -> Vec<LayerStats> {
        values
            .iter()
            .enumerate()
            .map(|(layer, &v)| LayerStats {
                layer,
                metrics: vec![Stat {
                    name,
                    mean: Some(v),
                    std: Some(0.0),
                }],
            })
            .collect()
    }

    #[test]
    fn phases_follow_the_entropy_valley() {
        // A valley over layers 3..=6 with a shallow dip at 1 that stays above threshold.
        let h = [0.8, 0.3, 0.6, 0.01, 0.005, 0.02, 0.05, 0.4, 0.7];
        let p = phases(&layers_with("entropy_normalized", &h));
        assert!((p.threshold - (0.005f64 * 0.8).sqrt()).abs() < 1e-15);
        assert_eq!(p.mix, Some(Span { first: 0, last: 2 }));
        assert_eq!(p.compress, Span { first: 3, last: 6 });
        assert_eq!(p.refine, Some(Span { first: 7, last: 8 }));
        assert_eq!(p.compress_depth, [3.0 / 8.0, 6.0 / 8.0]);
        // Compression reaching the last layer leaves no refinement.
        let p = phases(&layers_with("entropy_normalized", &[0.9, 0.01, 0.02]));
        assert_eq!(p.compress, Span { first: 1, last: 2 });
        assert_eq!(p.refine, None);
    }

    #[test]
    fn auto_ablation_picks_the_largest_norm_growth() {
        let norms = [2.0, 50.0, 60.0, 9000.0, 9100.0, 100.0];
        let (block, growth) = largest_first_norm_growth(&layers_with("first_norm", &norms));
        assert_eq!(block, 3);
        assert!((growth - 150.0).abs() < 1e-12);
    }
}
