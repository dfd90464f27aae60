//! Per-layer summaries over prompts: each metric's mean and population standard
//! deviation, as `analyze.json` records them.

use super::attention::AttentionMetrics;
use super::capture::PromptLayers;
use super::layers::{LayerStats, Stat};
use super::residual::ResidMetrics;

/// The arithmetic mean of `v`.
pub fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len() as f64
}

/// Mean and population standard deviation of finite values; `None` if any is not.
pub fn mean_std(v: &[f64]) -> (Option<f64>, Option<f64>) {
    if v.iter().any(|x| !x.is_finite()) {
        return (None, None);
    }
    let m = mean(v);
    let var = v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / v.len() as f64;
    (Some(m), Some(var.sqrt()))
}

/// Per-layer means and standard deviations over prompts of `per_prompt`
/// (`[prompt][layer]`).
pub fn summarize(per_prompt: &[PromptLayers]) -> Vec<LayerStats> {
    let layers = per_prompt[0].len();
    (0..layers)
        .map(|layer| {
            let resid: Vec<[f64; 12]> = per_prompt.iter().map(|p| p[layer].0.values()).collect();
            let attn: Option<Vec<[f64; 4]>> = per_prompt
                .iter()
                .map(|p| p[layer].1.map(|a| a.values()))
                .collect();
            let mut metrics = Vec::new();
            for (k, name) in ResidMetrics::NAMES.into_iter().enumerate() {
                let (mean, std) = mean_std(&resid.iter().map(|v| v[k]).collect::<Vec<_>>());
                metrics.push(Stat { name, mean, std });
            }
            for (k, name) in AttentionMetrics::NAMES.into_iter().enumerate() {
                let (mean, std) = match &attn {
                    Some(a) => mean_std(&a.iter().map(|v| v[k]).collect::<Vec<_>>()),
                    None => (None, None),
                };
                metrics.push(Stat { name, mean, std });
            }
            LayerStats { layer, metrics }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layer_stats_serialise_flat() {
        let l = LayerStats {
            layer: 2,
            metrics: vec![
                Stat {
                    name: "first_norm",
                    mean: Some(1.5),
                    std: Some(0.5),
                },
                Stat {
                    name: "sink_rate",
                    mean: None,
                    std: None,
                },
            ],
        };
        let v = serde_json::to_value(&l).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"layer": 2, "first_norm": 1.5, "sink_rate": null,
                               "first_norm_std": 0.5, "sink_rate_std": null})
        );
    }

    #[test]
    fn mean_std_is_population_and_rejects_non_finite() {
        let (m, s) = mean_std(&[1.0, 3.0]);
        assert_eq!((m, s), (Some(2.0), Some(1.0)));
        assert_eq!(mean_std(&[1.0, f64::INFINITY]), (None, None));
    }
}
